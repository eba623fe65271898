"""Shared helpers for the Paho (paho-mqtt 2.x) scenario scripts.

Each script takes `host port` as arguments (those for several listeners take
named positional arguments, see `named_args`), runs one scenario against a
running ringmq broker, prints one result line (`OK ...` or `FAIL ...`) and
exits 0 on success, non-zero on failure. Every wait is bounded, and a global
alarm bounds the whole script.

As in the Rust harness, scripts assert behaviour, not speed: upper bounds are
deadlines (STEP, or STEP past a broker-side timer), lower bounds read the clock
before the event starts, and "nothing else arrives" is checked with a marker
published after what must not arrive, on a path ordered with it
(`Client.expect_marker`), rather than with a quiet window.
"""

import queue
import signal
import sys
import time

try:
    import paho.mqtt
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.subscribeoptions import SubscribeOptions
except ImportError as e:  # pragma: no cover - reported by the Rust harness
    print(f"FAIL paho-mqtt is not importable: {e} (pip install 'paho-mqtt>=2,<3')")
    sys.exit(3)

if int(paho.mqtt.__version__.split(".")[0]) < 2:
    print(f"FAIL paho-mqtt {paho.mqtt.__version__} is too old; need 2.x")
    sys.exit(3)

STEP = 5.0  # longest wait for one expected event, seconds
QUIET = 0.3  # a window for something that must NOT arrive, only where no marker can be used
SCRIPT_LIMIT = 16  # whole-script bound, seconds

__all__ = [
    "mqtt", "PacketTypes", "Properties", "SubscribeOptions", "STEP", "QUIET",
    "args", "named_args", "fail", "check", "ok", "owner_core", "id_on", "Client", "props", "drain_all",
]


def fail(msg):
    print(f"FAIL {msg}", flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def ok(msg):
    print(f"OK {msg}", flush=True)
    sys.exit(0)


def _alarm(signum, frame):
    print(f"FAIL script still running after {SCRIPT_LIMIT} s", flush=True)
    sys.stdout.flush()
    import os
    os._exit(2)


def args():
    """`host port` from argv; arms the whole-script alarm."""
    if len(sys.argv) != 3:
        print(f"usage: {sys.argv[0]} HOST PORT")
        sys.exit(2)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(SCRIPT_LIMIT)
    return sys.argv[1], int(sys.argv[2])


def named_args(*names):
    """Positional arguments `names` from argv, as a dict of strings; arms the
    whole-script alarm."""
    if len(sys.argv) != 1 + len(names):
        print(f"usage: {sys.argv[0]} {' '.join(n.upper() for n in names)}")
        sys.exit(2)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(SCRIPT_LIMIT)
    return dict(zip(names, sys.argv[1:]))


def owner_core(client_id, cores):
    """ringmq::router::owner_core: FNV-1a of the client id, mixed by murmur3's
    finaliser, its high bits scaled to the core count."""
    mask = 0xFFFFFFFFFFFFFFFF
    h = 0xCBF29CE484222325
    for b in client_id.encode():
        h ^= b
        h = (h * 0x100000001B3) & mask
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & mask
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & mask
    h ^= h >> 33
    return (h * cores) >> 64


def id_on(core, prefix, cores=2):
    """The first `prefix-N` whose session lives on `core`."""
    for n in range(10000):
        cid = f"{prefix}-{n}"
        if owner_core(cid, cores) == core:
            return cid
    raise RuntimeError("no id found")


def props(packet_type, **kv):
    p = Properties(packet_type)
    for k, v in kv.items():
        setattr(p, k, v)
    return p


class Client:
    """A Paho client whose callbacks feed queues, so the script waits for
    events (CONNACK, SUBACK, messages) with a bound instead of sleeping."""

    def __init__(self, host, port, client_id, protocol=mqtt.MQTTv5, transport="tcp",
                 ca=None, ws_path="/mqtt"):
        """`transport` is "tcp" or "websockets" (upgrade on `ws_path`); `ca`, a
        CA file, turns TLS on (the broker's certificate is verified, host name
        included)."""
        self.host, self.port, self.id = host, port, client_id
        self.v5 = protocol == mqtt.MQTTv5
        kw = {} if self.v5 else {"clean_session": True}
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=protocol, transport=transport, **kw)
        if transport == "websockets":
            self.c.ws_set_options(path=ws_path)
        if ca is not None:
            self.c.tls_set(ca_certs=ca)
        self.connacks = queue.Queue()
        self.subacks = queue.Queue()
        self.messages = queue.Queue()
        self.disconnects = queue.Queue()
        self.c.on_connect = lambda c, u, flags, rc, p: self.connacks.put((flags, rc, p))
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put((mid, rcs, p))
        self.c.on_message = lambda c, u, msg: self.messages.put(msg)
        self.c.on_disconnect = lambda c, u, flags, rc, p: self.disconnects.put(rc)

    def connect(self, clean_start=True, properties=None, keepalive=60, expect_ok=True):
        """Connects and waits for the CONNACK; returns (flags, reason, properties)."""
        if self.v5:
            self.c.connect(self.host, self.port, keepalive=keepalive,
                           clean_start=clean_start, properties=properties)
        else:
            self.c.connect(self.host, self.port, keepalive=keepalive)
        self.c.loop_start()
        try:
            flags, rc, p = self.connacks.get(timeout=STEP)
        except queue.Empty:
            fail(f"{self.id}: no CONNACK within {STEP} s")
        if expect_ok:
            check(not rc.is_failure, f"{self.id}: CONNACK refused: {rc}")
        return flags, rc, p

    def subscribe(self, topic, qos=1, options=None, properties=None):
        """Subscribes and waits for the SUBACK; returns its reason codes."""
        if options is not None:
            self.c.subscribe(topic, options=options, properties=properties)
        else:
            self.c.subscribe(topic, qos=qos, properties=properties)
        try:
            _, rcs, _ = self.subacks.get(timeout=STEP)
        except queue.Empty:
            fail(f"{self.id}: no SUBACK for {topic}")
        return rcs

    def publish(self, topic, payload, qos=1, retain=False, properties=None, wait=True):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if wait and qos > 0:
            info.wait_for_publish(timeout=STEP)
            check(info.is_published(), f"{self.id}: publish to {topic!r} not acknowledged")
        return info

    def recv(self, what="message", timeout=STEP):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            fail(f"{self.id}: no {what} within {timeout} s")

    def recv_n(self, n, what="messages"):
        return [self.recv(f"{what} ({i + 1} of {n})") for i in range(n)]

    def until_marker(self, marker, what="marker"):
        """Messages received before the marker (payload `marker`, bytes), each
        within STEP of the previous one."""
        before = []
        while True:
            m = self.recv(f"{what} {marker!r}")
            if m.payload == marker:
                return before
            before.append(m)

    def expect_marker(self, marker, what):
        """Waits for the marker, which the script published after what must not
        arrive, on a path ordered with it (the same publisher; or, for retained
        messages, any publisher after the SUBACK, which they go out with), and
        fails if anything else came first."""
        before = self.until_marker(marker)
        check(not before,
              f"{self.id}: {what}: {[(m.topic, m.payload) for m in before]} before the marker")

    def quiet(self, what, timeout=QUIET):
        """Negative check: nothing arrives within `timeout`. Only where no marker
        can be ordered after what must not arrive: a window can only let a
        script pass wrongly (on a slow machine), never fail wrongly."""
        try:
            msg = self.messages.get(timeout=timeout)
        except queue.Empty:
            return
        fail(f"{self.id}: unexpected {what}: {msg.topic} {msg.payload!r}")

    def disconnect(self):
        self.c.disconnect()
        try:
            self.disconnects.get(timeout=STEP)
        except queue.Empty:
            fail(f"{self.id}: disconnect not confirmed")
        self.c.loop_stop()

    def kill(self):
        """Ends the connection without DISCONNECT (abnormal: the will fires)."""
        self.c.loop_stop()
        sock = self.c.socket()
        if sock is not None:
            sock.close()


def drain_all(clients, total, publisher, marker_topic):
    """Collects payloads from several clients until `total` arrived in all,
    each message within STEP of the previous one; returns {client id:
    [payload, ...]}. Then `publisher` (which published them all) publishes a
    marker on `marker_topic`, a plain topic every client subscribed to: a
    second copy of any message would reach its client before the marker."""
    got = {c.id: [] for c in clients}
    deadline = time.monotonic() + STEP
    n = 0
    while n < total:
        if time.monotonic() > deadline:
            fail(f"only {n} of {total} messages, none for {STEP} s: "
                 f"{ {k: len(v) for k, v in got.items()} }")
        for c in clients:
            try:
                while True:
                    m = c.messages.get(timeout=0.02)
                    got[c.id].append(m.payload.decode())
                    n += 1
                    deadline = time.monotonic() + STEP
            except queue.Empty:
                pass
    publisher.publish(marker_topic, b"drain-end")
    for c in clients:
        c.expect_marker(b"drain-end", f"no extra message after all {total}")
    return got
