"""CONNACK properties (assigned client id for an empty id, Server Keep Alive
for a keep-alive above the broker's cap, Topic Alias Maximum, Receive
Maximum), then the request/response pattern: payload format indicator,
content type, response topic, binary correlation data and several user
properties (repeated key, order kept) pass through unchanged, requester and
responder on different cores."""

from _common import *

host, port = args()

# The Rust harness starts the broker with max_keepalive = 60.
anon = Client(host, port, "")
flags, rc, p = anon.connect(keepalive=600)
assigned = getattr(p, "AssignedClientIdentifier", None)
check(assigned, f"no Assigned Client Identifier: {p}")
check(getattr(p, "ServerKeepAlive", None) == 60, f"Server Keep Alive: {p}")
check(getattr(p, "TopicAliasMaximum", 0) >= 1, f"Topic Alias Maximum: {p}")
check(getattr(p, "ReceiveMaximum", 0) >= 1, f"Receive Maximum: {p}")
anon.disconnect()

responder = Client(host, port, id_on(1, "paho-rr-server"))
responder.connect()
rcs = responder.subscribe("paho/rr/req")
check([rc.value for rc in rcs] == [1], f"responder SUBACK {rcs}")
requester = Client(host, port, id_on(0, "paho-rr-client"))
requester.connect()
reply_to = f"paho/rr/resp/{requester.id}"
requester.subscribe(reply_to)

user = [("a", "1"), ("b", "2"), ("a", "3"), ("ключ", "値 ✓")]
corr = b"\x00\xffcorr-7"
req = props(PacketTypes.PUBLISH, PayloadFormatIndicator=1, ContentType="application/json",
            ResponseTopic=reply_to, CorrelationData=corr, UserProperty=user,
            MessageExpiryInterval=30)
requester.publish("paho/rr/req", b'{"op":"ping"}', properties=req)

m = responder.recv("request")
rp = m.properties
check(m.payload == b'{"op":"ping"}', f"payload {m.payload!r}")
check(getattr(rp, "PayloadFormatIndicator", None) == 1, f"payload format: {rp}")
check(getattr(rp, "ContentType", None) == "application/json", f"content type: {rp}")
check(getattr(rp, "ResponseTopic", None) == reply_to, f"response topic: {rp}")
check(getattr(rp, "CorrelationData", None) == corr, f"correlation data: {rp}")
check(getattr(rp, "UserProperty", None) == user, f"user properties: {rp}")
expiry = getattr(rp, "MessageExpiryInterval", None)
check(expiry is not None and 28 <= expiry <= 30, f"message expiry: {rp}")

resp = props(PacketTypes.PUBLISH, CorrelationData=rp.CorrelationData,
             UserProperty=[("status", "ok")])
responder.publish(rp.ResponseTopic, b"pong", properties=resp)
r = requester.recv("response")
check(r.payload == b"pong", f"response payload {r.payload!r}")
check(getattr(r.properties, "CorrelationData", None) == corr, f"response correlation: {r.properties}")
check(getattr(r.properties, "UserProperty", None) == [("status", "ok")], f"{r.properties}")
responder.disconnect()
requester.disconnect()
ok(f"assigned id {assigned!r}, request/response properties intact")
