"""Paho over the WebSocket listeners: `transport="websockets"` on path /mqtt,
without TLS (ws://) and with it (wss://, `tls_set(ca_certs=CA)`, the
broker's certificate verified for 127.0.0.1), as MQTT 5 or 3.1.1 (VERSION is
`5` or `3.1.1`).

Over each of ws and wss:
- round trips through the broker on one connection: subscriptions at QoS
  0, 1 and 2, a publish at QoS 0, 1 and 2 to each (nine messages, each
  delivered once at the lower of the two QoS);
- across listeners: a plain-TCP Paho client's QoS 1 and 2 messages reach a
  WebSocket subscriber, and the reverse;
- a 200 KB message (WebSocket frames with a 64-bit length, TLS records of
  16 KiB) from the broker to the client; from the client to the broker over
  ws only: over TLS that is large_message.py's test
  (tests/e2e_interop.rs, `tls_listeners_take_publishes_over_16_kib`).
Each delivery set ends with a marker from the same publisher: nothing
(no second copy) may come before it.

Usage: websockets.py HOST TCP_PORT WS_PORT WSS_PORT CA VERSION"""

from _common import *

a = named_args("host", "tcp_port", "ws_port", "wss_port", "ca", "version")
host, ca, version = a["host"], a["ca"], a["version"]
protocol = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}.get(version)
check(protocol is not None, f"VERSION must be 5 or 3.1.1, not {version!r}")
tag = "v5" if protocol == mqtt.MQTTv5 else "v311"

LISTENERS = {
    "tcp": (int(a["tcp_port"]), {}),
    "ws": (int(a["ws_port"]), {"transport": "websockets"}),
    "wss": (int(a["wss_port"]), {"transport": "websockets", "ca": ca}),
}


def client(listener, role):
    port, kw = LISTENERS[listener]
    c = Client(host, port, f"paho-{tag}-{listener}-{role}", protocol=protocol, **kw)
    c.connect()
    return c


def granted(rcs, qos, what):
    check([rc.value for rc in rcs] == [qos], f"{what}: SUBACK {rcs}, expected QoS {qos}")


def deliveries(sub, n, what):
    """`n` messages as {(topic, payload, qos): count}."""
    got = {}
    for m in sub.recv_n(n, what):
        key = (m.topic, bytes(m.payload), m.qos)
        got[key] = got.get(key, 0) + 1
    return got


def round_trips(listener):
    c = client(listener, "rt")
    base = f"paho/{tag}/{listener}/rt"
    for q in (0, 1, 2):
        granted(c.subscribe(f"{base}/{q}", qos=q), q, f"{listener} subscribe at QoS {q}")
    expected = {}
    for sub_q in (0, 1, 2):
        for pub_q in (0, 1, 2):
            topic, payload = f"{base}/{sub_q}", f"pub{pub_q}-sub{sub_q}".encode()
            c.publish(topic, payload, qos=pub_q)
            expected[(topic, payload, min(sub_q, pub_q))] = 1
    got = deliveries(c, len(expected), f"{listener} round trips")
    check(got == expected, f"{listener} round trips: got {sorted(got.items())}, "
                           f"expected {sorted(expected.items())}")
    c.publish(f"{base}/2", b"rt-end", qos=2)
    c.expect_marker(b"rt-end", f"{listener} round trips: only the nine")
    if listener == "ws":
        c.publish(f"{base}/1", BIG, qos=1)
        check_big(c.recv(f"{listener} 200 KB message"), f"{base}/1", f"{listener} round trip")
    c.disconnect()


BIG = bytes(range(256)) * 800  # 200 KB


def check_big(m, topic, what):
    check(m.topic == topic and m.payload == BIG and m.qos == 1,
          f"{what}: 200 KB message: {m.topic} {len(m.payload)} bytes QoS {m.qos}")


def across(listener):
    """TCP -> `listener` and `listener` -> TCP, QoS 1 and 2."""
    plain, ws = client("tcp", f"x-{listener}"), client(listener, "x")
    base = f"paho/{tag}/x/{listener}"
    granted(ws.subscribe(f"{base}/down", qos=2), 2, f"{listener} subscriber")
    granted(plain.subscribe(f"{base}/up", qos=2), 2, "tcp subscriber")
    for pub, sub, way in ((plain, ws, "down"), (ws, plain, "up")):
        topic = f"{base}/{way}"
        for q in (1, 2):
            pub.publish(topic, f"{way}-q{q}".encode(), qos=q)
        expected = {(topic, f"{way}-q{q}".encode(), q): 1 for q in (1, 2)}
        got = deliveries(sub, 2, f"{pub.id} -> {sub.id}")
        check(got == expected, f"{pub.id} -> {sub.id}: got {got}, expected {expected}")
        pub.publish(topic, b"x-end", qos=1)
        sub.expect_marker(b"x-end", f"{pub.id} -> {sub.id}: each message once")
    plain.publish(f"{base}/down", BIG, qos=1)
    check_big(ws.recv("200 KB message"), f"{base}/down", f"tcp -> {listener}")
    plain.disconnect()
    ws.disconnect()


for listener in ("ws", "wss"):
    round_trips(listener)
    across(listener)
ok(f"Paho MQTT {version} over ws and wss: QoS 0/1/2 round trips, tcp <-> ws, tcp <-> wss, 200 KB")
