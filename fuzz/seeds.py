#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/: valid packets of both
protocol versions, a WebSocket frame, and the project's own config, password
and ACL examples. The journal and log seeds (corpus/journal/store, corpus/log_file/*) were
cut from the segment file of a real ringmq store after a few QoS 1/2,
retained and persistent-session exchanges with mosquitto_pub/sub; this script
leaves them alone. Run from the repository root."""
import os, struct, shutil

def vint(n):
    out = b""
    while True:
        b = n % 128; n //= 128
        out += bytes([b | (0x80 if n else 0)])
        if not n: return out

def s(x): x = x.encode() if isinstance(x, str) else x; return struct.pack(">H", len(x)) + x
def pkt(first, body): return bytes([first]) + vint(len(body)) + body
def props(p=b""): return vint(len(p)) + p

V311 = [
    pkt(0x10, s("MQTT") + b"\x04\x02\x00\x3c" + s("abc")),
    pkt(0x10, s("MQTT") + b"\x04\xee\x00\x3c" + s("dev-1") + s("will/t") + s("bye") + s("user") + s("pass")),
    pkt(0x10, s("MQIsdp") + b"\x03\x02\x00\x3c" + s("old")),
    pkt(0x10, s("MQTT") + b"\x84\x00\x00\x3c" + s("bridge")),
    pkt(0x30, s("a/b") + b"hello"),
    pkt(0x32, s("a/b") + b"\x00\x01" + b"qos1"),
    pkt(0x35, s("a/b") + b"\x00\x02" + b"qos2 retained"),
    pkt(0x40, b"\x00\x01"), pkt(0x50, b"\x00\x02"), pkt(0x62, b"\x00\x02"), pkt(0x70, b"\x00\x02"),
    pkt(0x82, b"\x00\x05" + s("a/+") + b"\x01" + s("#") + b"\x00"),
    pkt(0xa2, b"\x00\x06" + s("a/+")),
    pkt(0xc0, b""), pkt(0xe0, b""),
]
V5 = [
    pkt(0x10, s("MQTT") + b"\x05\x02\x00\x3c" + props(b"\x11\x00\x00\x0e\x10" + b"\x21\x00\x14" + b"\x22\x00\x0a") + s("v5")),
    pkt(0x10, s("MQTT") + b"\x05\xc6\x00\x3c" + props() + s("v5w") + props(b"\x18\x00\x00\x00\x05") + s("w/t") + s("gone") + s("u") + s("p")),
    pkt(0x30, s("a/b") + props(b"\x01\x01" + b"\x02\x00\x00\x00\x3c" + b"\x23\x00\x01") + b"payload"),
    pkt(0x32, s("") + b"\x00\x01" + props(b"\x23\x00\x01" + b"\x26" + s("k") + s("v")) + b"alias"),
    pkt(0x34, s("r/q") + b"\x00\x07" + props(b"\x08" + s("resp/t") + b"\x09" + s("corr")) + b"x"),
    pkt(0x40, b"\x00\x01\x10" + props(b"\x1f" + s("why"))),
    pkt(0x50, b"\x00\x07"), pkt(0x62, b"\x00\x07\x00\x00"), pkt(0x70, b"\x00\x07"),
    pkt(0x82, b"\x00\x05" + props(b"\x0b\x07") + s("$share/g/a/#") + b"\x2e" + s("x/+") + b"\x14"),
    pkt(0xa2, b"\x00\x06" + props() + s("x/+")),
    pkt(0xc0, b""),
    pkt(0xe0, b"\x04" + props(b"\x11\x00\x00\x00\x00")),
    pkt(0xf0, b"\x18" + props(b"\x15" + s("SCRAM") + b"\x16" + s("data"))),
]

def write(target, name, data):
    d = os.path.join("fuzz", "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f: f.write(data)

for i, p in enumerate(V311): write("packet_v311", f"p{i:02}", p)
write("packet_v311", "all", b"".join(V311))
for i, p in enumerate(V5): write("packet_v5", f"p{i:02}", p)
write("packet_v5", "all", b"".join(V5))
# framer: protocol bit, then cut sizes, then the stream.
write("framer", "v311", bytes([0x06]) + b"\x03\x05\x02" + b"".join(V311))
write("framer", "v5", bytes([0x07]) + b"\x01\x07\x11" + b"".join(V5))
# topics: level indexes, 0xff between strings.
write("topics", "mix", bytes([0, 1, 0xff, 4, 1, 0xff, 5, 0xff, 2, 0, 0xff, 0, 4, 5, 0xff, 3, 3]))
for target, src in [("config", "ringmq.example.toml"), ("config", "contrib/ringmq.toml")]:
    if os.path.exists(src): write(target, os.path.basename(src), open(src, "rb").read())
write("config", "bridge", b'[[bridge]]\nname = "b"\naddress = ["h:1883", "[::1]:8883"]\n'
      b'topic = ["a/# both 1 \\"\\" p/", "c in 2"]\nrestart_timeout = [1, 9]\n')
write("config", "listeners", b'port = 1883\n[[listener]]\nport = 8883\nprotocol = "mqtt"\n'
      b'certfile = "c.pem"\nkeyfile = "k.pem"\n[[listener]]\nport = 8080\nprotocol = "websockets"\n')
write("password_file", "mixed",
      b"# users\nalice:$7$101$c2FsdHNhbHRzYWx0$" + b"A" * 86 + b"==\n"
      b"bob:$6$c2FsdA==$" + b"B" * 86 + b"==\n"
      b"carol:$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$" + b"C" * 43 + b"\n")
write("acl_file", "mixed",
      b"topic read $SYS/#\npattern write dev/%c/#\npattern read cmd/%u/+\n\n"
      b"user alice\ntopic readwrite a/#\ntopic deny a/secret\ntopic write +/x\n"
      b"user bob\ntopic #\n")
# websocket: the upgrade is supplied by the target; bit 0 of the first byte
# is 0, so these are frames: a masked binary frame carrying a CONNECT, a
# ping, then a close.
def ws_frame(op, payload, mask=b"\x01\x02\x03\x04"):
    n = len(payload)
    head = bytes([0x80 | op]) + (bytes([0x80 | n]) if n < 126 else bytes([0xfe]) + struct.pack(">H", n))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
write("websocket", "frames", ws_frame(2, V5[0] + V5[2]) + ws_frame(9, b"hi") + ws_frame(8, b"\x03\xe8"))
# An upgrade request ("G" is odd: the target fuzzes the request itself).
write("websocket", "request", b"GET /mqtt HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
      b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
      b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n")
write("websocket", "split", ws_frame(2, V5[0])[:5] + ws_frame(0, b"") + ws_frame(2, V5[12]))
# session: a setup byte (bit 0: 5.0, bit 1: clean start, bit 2: a bridge),
# then steps by op % 5: 0 a client packet of op / 5 bytes, 1 a message routed
# to the client at QoS op / 5 % 3, 2 a clock step of op / 5 seconds,
# 3 a reconnect (op 128: clean), 4 a window pump.
def client(p): assert len(p) * 5 < 256; return bytes([len(p) * 5]) + p
def steps(v5):
    props = b"\x00" if v5 else b""
    return (bytes([6, 6, 11, 11, 1, 6]) + client(pkt(0x40, b"\x00\x01")) + client(pkt(0x50, b"\x00\x03"))
            + client(pkt(0x62, b"\x00\x03")) + client(pkt(0x70, b"\x00\x03"))
            + client(pkt(0x34, s("a") + b"\x00\x05" + props + b"x")) + client(pkt(0x62, b"\x00\x05"))
            + client(pkt(0x82, b"\x00\x07" + props + s("a/+") + b"\x02")) + bytes([17, 3, 4, 6])
            + client(pkt(0xc0, b"")) + bytes([128, 6, 4]))
write("session", "v311", b"\x00" + steps(False))
write("session", "v5", b"\x01" + steps(True))
write("session", "bridge", b"\x04" + steps(False))
