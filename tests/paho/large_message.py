"""A 200 KB message from a Paho client over a TLS listener (or any other) to
a plain-TCP subscriber: acknowledged, and delivered intact. Over TLS the
client's 16 KiB records arrive several to a TCP read (the test
`tls_listeners_take_publishes_over_16_kib` in tests/e2e_interop.rs).

Usage: large_message.py HOST PLAIN_PORT PORT TRANSPORT CA
(TRANSPORT `tcp` or `websockets`, CA a CA file for TLS or `-` for none)"""

from _common import *

a = named_args("host", "plain_port", "port", "transport", "ca")
ca = None if a["ca"] == "-" else a["ca"]
sub = Client(a["host"], int(a["plain_port"]), "paho-big-sub")
sub.connect()
sub.subscribe("paho/big", qos=1)
pub = Client(a["host"], int(a["port"]), "paho-big-pub", transport=a["transport"], ca=ca)
pub.connect()
big = bytes(range(256)) * 800
pub.publish("paho/big", big, qos=1)
m = sub.recv("200 KB message")
check(m.payload == big and m.qos == 1, f"200 KB message: {len(m.payload)} bytes QoS {m.qos}")
pub.disconnect()
sub.disconnect()
ok(f"200 KB over {a['transport']}{' + TLS' if ca else ''} acknowledged and delivered")
