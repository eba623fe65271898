"""Will delay with Paho: a client with a will (delay 2 s) and session expiry
10 s loses its connection without DISCONNECT; the will arrives about 2 s
later. A second client with the same setup reconnects to its session within
the delay: its will is not published."""

import time

from _common import *

host, port = args()

watcher = Client(host, port, id_on(1, "paho-wd-watch"))
watcher.connect()
watcher.subscribe("paho/wd/#")


def with_will(cid, topic):
    c = Client(host, port, cid)
    c.c.will_set(topic, b"gone", qos=1,
                 properties=props(PacketTypes.WILLMESSAGE, WillDelayInterval=2))
    return c


conn = props(PacketTypes.CONNECT, SessionExpiryInterval=10)
a = with_will(id_on(0, "paho-wd-a"), "paho/wd/a")
a.connect(properties=conn)
a.kill()
dropped = time.monotonic()
m = watcher.recv("delayed will", timeout=6.0)
elapsed = time.monotonic() - dropped
check(m.topic == "paho/wd/a" and m.payload == b"gone", f"will {m.topic} {m.payload!r}")
check(elapsed >= 1.9, f"will published after {elapsed:.2f} s, before its 2 s delay")
check(elapsed <= 4.5, f"will late: {elapsed:.2f} s")

bid = id_on(0, "paho-wd-b")
b = with_will(bid, "paho/wd/b")
b.connect(properties=conn)
b.kill()
b2 = with_will(bid, "paho/wd/b")
flags, _, _ = b2.connect(clean_start=False, properties=conn)
check(flags.session_present, "reconnected to the kept session")
# Negative check: the will would be due 2 s after the drop (+ a 500 ms tick).
watcher.quiet("will of a client that reconnected within the delay", timeout=3.0)
b2.disconnect()
watcher.disconnect()
ok(f"will after {elapsed:.2f} s; cancelled by reconnect")
