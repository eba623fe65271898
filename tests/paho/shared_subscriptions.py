"""Shared subscriptions with Paho: group `pg` has two 5.0 members and one
3.1.1 member spread over both cores; group `pg2` has one member. 90 QoS 1
messages: group pg gets each exactly once (every member some), pg2 gets all.
No retained message is sent on a shared subscribe (it would go out with the
SUBACK, before the stream, and show in the exact sets checked)."""

from _common import *

N = 90
host, port = args()

pub = Client(host, port, id_on(0, "paho-sh-pub"))
pub.connect()
pub.publish("paho/sh/retained", b"kept", retain=True)

members = [
    Client(host, port, id_on(0, "paho-sh-a")),
    Client(host, port, id_on(1, "paho-sh-b")),
    Client(host, port, id_on(1, "paho-sh-c"), protocol=mqtt.MQTTv311),
]
for m in members:
    m.connect()
    rcs = m.subscribe("$share/pg/paho/sh/#")
    check(len(rcs) == 1 and not rcs[0].is_failure, f"{m.id}: SUBACK {rcs}")
other = Client(host, port, id_on(1, "paho-sh-other"))
other.connect()
other.subscribe("$share/pg2/paho/sh/#")
# A plain topic for the marker, which reaches every member (a message to a
# group reaches one).
MARKER = "paho/marker"
for m in members + [other]:
    m.subscribe(MARKER)

for i in range(N):
    pub.publish("paho/sh/x", f"m-{i}".encode(), wait=False)
got = drain_all(members + [other], 2 * N, pub, MARKER)
want = sorted(f"m-{i}" for i in range(N))
group = [p for m in members for p in got[m.id]]
check(sorted(group) == want, f"group pg: {len(group)} messages, duplicates or gaps")
check(all(got[m.id] for m in members), f"a member got nothing: { {k: len(v) for k, v in got.items()} }")
check(sorted(got[other.id]) == want, "group pg2 gets every message")
for m in members + [other]:
    m.disconnect()
ok(f"pg split { {m.id: len(got[m.id]) for m in members} }, pg2 got {len(got[other.id])}")
