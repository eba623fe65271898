#!/usr/bin/env python3
"""The soak's own clients, beside loadgen's (scripts/soak.sh starts them):

  retained PORT SECONDS   updates 500 retained topics, 50 publishes a second
  slow PORT SECONDS       subscribes to `#` and never reads, 60 s per
                          connection: its socket fills within seconds, the
                          publishers it holds back wait, and the broker's
                          max_stall (10 s) cuts it off
  malformed PORT SECONDS  five connections a second of broken input

Raw MQTT 3.1.1 over sockets, so that nothing in a client library hides a
misbehaviour."""
import os, random, socket, struct, sys, time

def vint(n):
    out = b""
    while True:
        b, n = n % 128, n // 128
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out

def s(x):
    return struct.pack(">H", len(x)) + x

def pkt(first, body):
    return bytes([first]) + vint(len(body)) + body

def connect(port, cid):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(pkt(0x10, s(b"MQTT") + b"\x04\x02\x00\x00" + s(cid.encode())))
    if sock.recv(4)[:1] != b"\x20":
        raise RuntimeError("no CONNACK")
    return sock

def retained(port, until):
    sock, i = connect(port, "soak-retained"), 0
    while time.time() < until:
        topic = f"soak/retained/{i % 500}".encode()
        sock.sendall(pkt(0x31, s(topic) + f"value-{i}".encode()))
        i += 1
        time.sleep(0.02)

def slow(port, until):
    n = 0
    while time.time() < until:
        try:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(10)
            sock.connect(("127.0.0.1", port))
            sock.sendall(pkt(0x10, s(b"MQTT") + b"\x04\x02\x00\x00" + s(f"soak-slow-{n}".encode())))
            sock.sendall(pkt(0x82, b"\x00\x01" + s(b"#") + b"\x00"))
            time.sleep(min(60, max(0, until - time.time())))
            sock.close()
        except OSError:
            time.sleep(1)
        n += 1

BROKEN = [
    b"\x10\xff\xff\xff\x7f",                 # 256 MB declared
    b"\x30\x05\x00\x01a",                     # PUBLISH before CONNECT
    b"\x10\x0c\x00\x04MQTT\x09\x02\x00\x00\x00\x00",  # unknown level
    b"GET / HTTP/1.1\r\n\r\n",
]

def malformed(port, until):
    rng = random.Random(7)
    while time.time() < until:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            data = rng.choice(BROKEN) if rng.random() < 0.5 else os.urandom(rng.randint(1, 300))
            sock.sendall(data)
            sock.close()
        except OSError:
            pass
        time.sleep(0.2)

if __name__ == "__main__":
    kind, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    {"retained": retained, "slow": slow, "malformed": malformed}[kind](port, time.time() + seconds)
