"""Paho (MQTT 5) against a broker with a password file and an ACL file
(tests/e2e_auth.rs writes both: alice reads public/# but not
public/secret/#, bob writes public/#; passwords are "<user>-pw"):
- a wrong password gets CONNACK 0x86 (bad user name or password);
- alice's SUBSCRIBE to public/# is granted, bob/# refused with 0x87, in one
  SUBACK;
- bob's publishes to public/secret/plans and then public/news: alice, on a
  wildcard, gets public/news and never the secret before it.

Usage: auth_acl.py HOST PORT"""

from _common import *

host, port = args()


def login(client_id, user, password, expect_ok=True):
    c = Client(host, port, client_id)
    c.c.username_pw_set(user, password)
    return c, c.connect(expect_ok=expect_ok)


intruder, (_, rc, _) = login("paho-intruder", "alice", "not-her-password", expect_ok=False)
check(rc.value == 0x86, f"wrong password: CONNACK {rc} ({rc.value:#x}), expected 0x86")

alice, _ = login("paho-alice", "alice", "alice-pw")
codes = alice.subscribe([("public/#", 1), ("bob/#", 1)])
check([c.value for c in codes] == [1, 0x87], f"SUBACK {codes}, expected [1, 0x87]")

bob, _ = login("paho-bob", "bob", "bob-pw")
bob.publish("public/secret/plans", b"secret", qos=1)
bob.publish("public/news", b"news", qos=1)
msg = alice.recv("public/news")
check(msg.topic == "public/news", f"alice got {msg.topic!r} first, expected public/news")
ok("password refused, SUBACK per filter, wildcard delivery without the denied topic")
