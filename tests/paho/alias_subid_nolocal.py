"""Topic aliases from a Paho 5.0 publisher (set, then empty topic + alias) reach
a Paho 3.1.1 subscriber with the full topic; subscription identifiers come back
on delivery (two overlapping subscriptions -> one message with both ids); a
No Local subscription does not return the client's own publishes."""

from _common import *

host, port = args()

sub4 = Client(host, port, id_on(1, "paho-ta-sub4"), protocol=mqtt.MQTTv311)
sub4.connect()
sub4.subscribe("paho/ta/#")

pub = Client(host, port, id_on(0, "paho-ta-pub"))
_, _, cp = pub.connect()
check(getattr(cp, "TopicAliasMaximum", 0) >= 2, f"Topic Alias Maximum: {cp}")
sends = [("paho/ta/one", 1, b"a"), ("", 1, b"b"), ("paho/ta/two", 2, b"c"), ("", 2, b"d"), ("", 1, b"e")]
for topic, alias, payload in sends:
    pub.publish(topic, payload, properties=props(PacketTypes.PUBLISH, TopicAlias=alias))
got = sub4.recv_n(len(sends), "aliased messages")
topics = [m.topic for m in got]
check(topics == ["paho/ta/one", "paho/ta/one", "paho/ta/two", "paho/ta/two", "paho/ta/one"],
      f"topics at the 3.1.1 subscriber: {topics}")
check([m.payload for m in got] == [b"a", b"b", b"c", b"d", b"e"], "payloads in order")

# Subscription identifiers.
si = Client(host, port, id_on(1, "paho-si"))
si.connect()
si.subscribe("paho/si/+", properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=5))
si.subscribe("paho/si/#", properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=9))
pub.publish("paho/si/x", b"both")
m = si.recv("message for two subscriptions")
ids = sorted(getattr(m.properties, "SubscriptionIdentifier", []))
check(ids == [5, 9], f"subscription identifiers {ids}")
# The publisher's next message is the marker for "no second copy": a second
# copy of "both" would come before it.
pub.publish("paho/si/x/y", b"deep")
m = si.recv("message for one subscription")
check(m.payload == b"deep", f"second copy of {m.payload!r}")
check(getattr(m.properties, "SubscriptionIdentifier", []) == [9], f"{m.properties}")

# No Local.
nl = Client(host, port, id_on(0, "paho-nl"))
nl.connect()
nl.subscribe("paho/nl/t", options=SubscribeOptions(qos=1, noLocal=True))
nl.subscribe("paho/nl/marker")  # without No Local: where nl's own marker reaches it
watcher = Client(host, port, id_on(1, "paho-nl-watch"))
watcher.connect()
watcher.subscribe("paho/nl/t")
nl.publish("paho/nl/t", b"own")
check(watcher.recv("own publish at the other client").payload == b"own", "watcher gets it")
watcher.publish("paho/nl/t", b"other")
check(nl.recv("other's publish").payload == b"other", "no-local client gets others' messages")
# nl's own marker, published after "own" on the same path: an echo of "own"
# would come before it.
nl.publish("paho/nl/marker", b"nl-end")
nl.expect_marker(b"nl-end", "own publish echoed despite No Local")
for c in (sub4, pub, si, nl, watcher):
    c.disconnect()
ok("aliases resolved, subscription ids [5, 9] / [9], no local honoured")
