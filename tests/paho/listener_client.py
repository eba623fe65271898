"""One Paho client of the test with a subscriber and a publisher on every
listener (tests/e2e_interop.rs), over TCP or WebSocket, with or without TLS.

  listener_client.py sub HOST PORT TRANSPORT CA VERSION ID FILTER PUBLISHERS
    subscribes to FILTER at QoS 2, prints `READY`, then one line
    `MSG <topic> <qos> <payload>` per message, until it has the marker
    `end-<P>` of every publisher P of PUBLISHERS (comma-separated ids);
  listener_client.py pub HOST PORT TRANSPORT CA VERSION ID TOPIC QOS:COUNT
    publishes COUNT messages `<ID>-<i>` (i from 0) at QOS to TOPIC, each
    acknowledged, then its marker `end-<ID>`.

TRANSPORT is `tcp` or `websockets` (path /mqtt), CA a CA file for TLS or `-`
for none, VERSION `5` or `3.1.1`. Prints `OK ...` last on success. The
harness decides what the MSG lines must hold."""

from _common import *

a = named_args("role", "host", "port", "transport", "ca", "version", "id", "topic", "arg")
protocol = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}.get(a["version"])
check(protocol is not None, f"VERSION must be 5 or 3.1.1, not {a['version']!r}")
check(a["transport"] in ("tcp", "websockets"), f"bad TRANSPORT {a['transport']!r}")
ca = None if a["ca"] == "-" else a["ca"]
c = Client(a["host"], int(a["port"]), a["id"], protocol=protocol,
           transport=a["transport"], ca=ca)
c.connect()

if a["role"] == "sub":
    rcs = c.subscribe(a["topic"], qos=2)
    check([rc.value for rc in rcs] == [2], f"SUBACK {rcs}")
    print("READY", flush=True)
    waiting = {f"end-{p}".encode() for p in a["arg"].split(",")}
    n = 0
    while waiting:
        m = c.recv("message or marker")
        print(f"MSG {m.topic} {m.qos} {m.payload.decode()}", flush=True)
        waiting.discard(m.payload)
        n += 1
    c.disconnect()
    ok(f"{a['id']}: {n} messages, every marker")
elif a["role"] == "pub":
    qos, count = (int(x) for x in a["arg"].split(":"))
    for i in range(count):
        c.publish(a["topic"], f"{a['id']}-{i}".encode(), qos=qos)
    c.publish(a["topic"], f"end-{a['id']}".encode(), qos=qos)
    c.disconnect()
    ok(f"{a['id']}: {count} messages at QoS {qos} and the marker")
else:
    fail(f"ROLE must be sub or pub, not {a['role']!r}")
