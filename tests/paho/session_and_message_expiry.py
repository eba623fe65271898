"""Session expiry and message expiry with Paho: a client with session expiry
30 s and clean start off disconnects; QoS 1 messages published meanwhile are
queued, one of them with a 1 s message expiry. Reconnecting after 2 s finds
the session (session present) and gets the unexpired messages only, the one
with an expiry carrying the remaining interval. A clean-start reconnect then
finds no session."""

import time

from _common import *

host, port = args()

sid = id_on(1, "paho-se-sub")
sub = Client(host, port, sid)
flags, _, _ = sub.connect(clean_start=True,
                          properties=props(PacketTypes.CONNECT, SessionExpiryInterval=30))
sub.subscribe("paho/se/#")
sub.disconnect()

pub = Client(host, port, id_on(0, "paho-se-pub"))
pub.connect()
publishing = time.monotonic()
pub.publish("paho/se/a", b"first")
pub.publish("paho/se/short", b"expires", properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=1))
pub.publish("paho/se/long", b"keeps", properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=60))
pub.publish("paho/se/b", b"last")
stored = time.monotonic()  # every PUBACK is in: the broker stored them all
# Message expiry is a timer on the broker's clock: nothing to await. Sleeping
# 2 s is a lower bound on how long the messages wait, so the 1 s one has
# expired however slow the machine.
time.sleep(2)

reconnecting = time.monotonic()
sub = Client(host, port, sid)
flags, _, _ = sub.connect(clean_start=False,
                          properties=props(PacketTypes.CONNECT, SessionExpiryInterval=30))
check(flags.session_present, "session present after reconnect within expiry")
got = sub.recv_n(3, "queued messages")
received = time.monotonic()
check([m.payload for m in got] == [b"first", b"keeps", b"last"],
      f"queued messages {[m.payload for m in got]}")
left = getattr(got[1].properties, "MessageExpiryInterval", None)
# Held at least for the 2 s slept, at most for as long as the script took
# from publishing to delivery: whole seconds held are taken off, the rest
# rounded up (one second of slack for the broker's millisecond clock). The
# range follows the measured time, so a slow machine widens it, never fails it.
low = 60 - (int(received - publishing) + 1)
high = 60 - int(reconnecting - stored)
check(left is not None and low <= left <= high, f"remaining expiry {left}, want {low}..{high}")
check(getattr(got[0].properties, "MessageExpiryInterval", None) is None, "no expiry on 'first'")
# A marker from the same publisher: the expired message (or a second copy of
# any) would come before it.
pub.publish("paho/se/marker", b"se-end")
sub.expect_marker(b"se-end", "expired message")
sub.disconnect()

sub = Client(host, port, sid)
flags, _, _ = sub.connect(clean_start=True)
check(not flags.session_present, "clean start: no session present")
sub.disconnect()
ok("session resumed with queued messages; 1 s message expired; clean start dropped the session")
