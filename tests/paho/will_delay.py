"""Will delay with Paho: a client with a will (delay STEP) and session expiry
60 s loses its connection without DISCONNECT and reconnects to its session
within the delay: that will is not published, nor the new connection's after
its normal DISCONNECT. Another client with a will (delay 2 s) loses its
connection: the will arrives 2 s later, not before.

The first part is checked with a marker, not a quiet window: a third client
on the same core (so on the same timer tick) then drops with a will whose
delay is 1 s longer. Anything the first client's session could wrongly
publish is due earlier, so the watcher must get the 2 s will and then the
marker will, nothing else. (The timers overlap to keep the script short.)
(Another session, because a session holds one pending will: a marker will on
the same session would replace a wrongly kept one.)"""

import time

from _common import *

host, port = args()

watcher = Client(host, port, id_on(1, "paho-wd-watch"))
watcher.connect()
watcher.subscribe("paho/wd/#")


def with_will(cid, topic, delay):
    c = Client(host, port, cid)
    c.c.will_set(topic, b"gone", qos=1,
                 properties=props(PacketTypes.WILLMESSAGE, WillDelayInterval=delay))
    return c


conn = props(PacketTypes.CONNECT, SessionExpiryInterval=60)

# A will that must not be published: b reconnects within the delay (which is
# STEP, so "within" is a deadline of the harness's kind), then disconnects
# normally.
delay = int(STEP)
bid = id_on(0, "paho-wd-b")
b = with_will(bid, "paho/wd/b", delay)
b.connect(properties=conn)
dropped_b = time.monotonic()
b.kill()
b2 = with_will(bid, "paho/wd/b", delay)
flags, _, _ = b2.connect(clean_start=False, properties=conn)
back = time.monotonic() - dropped_b
check(back < delay, f"reconnecting took {back:.2f} s, not within the {delay} s (STEP) will delay")
check(flags.session_present, "reconnected to the kept session")
b2.disconnect()  # normal: discards this connection's will

# A will that must be published 2 s after the drop, not before.
a = with_will(id_on(0, "paho-wd-a"), "paho/wd/a", 2)
a.connect(properties=conn)
# Before the drop, so that the broker's delay starts after it: the lower bound
# below cannot fail because the script was slow.
dropped_a = time.monotonic()
a.kill()

# The marker will, due after anything b's session could wrongly publish.
marker = with_will(id_on(0, "paho-wd-marker"), "paho/wd/marker", delay + 1)
marker.connect(properties=conn)
marker.kill()

# Each will at all: a deadline of STEP past its delay, not a claim about how
# promptly after it.
m = watcher.recv("delayed will", timeout=2 + STEP)
elapsed = time.monotonic() - dropped_a
check(m.topic == "paho/wd/a" and m.payload == b"gone", f"will {m.topic} {m.payload!r}")
check(elapsed >= 1.9, f"will published after {elapsed:.2f} s, before its 2 s delay")
m = watcher.recv("marker will", timeout=delay + 1 + STEP)
check(m.topic == "paho/wd/marker",
      f"a will cancelled by the reconnect or discarded by DISCONNECT was published: {m.topic}")
watcher.disconnect()
ok(f"will after {elapsed:.2f} s; cancelled by reconnect")
