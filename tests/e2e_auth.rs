//! Who may connect, publish and subscribe: password files written by
//! Mosquitto's own `mosquitto_passwd`, the ACL file's read/write/deny rules
//! and `%c`/`%u` patterns at SUBSCRIBE, PUBLISH, delivery (retained
//! included) and for wills, reload on demand (rights added and removed, a
//! broken file keeping the old rules), the guessing slow-down and bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::*;
use ringmq::codec::Protocol;
use ringmq::config::Config;

/// A folder for one test's files, removed when dropped.
struct Files(PathBuf);

impl Files {
    fn new(tag: &str) -> Files {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("ringmq-auth-{}-{tag}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the test folder");
        Files(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write a test file");
        path
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs Mosquitto's `mosquitto_passwd` with `args` (it must succeed).
fn mosquitto_passwd(args: &[&str]) {
    require_program("mosquitto_passwd");
    let out = Command::new("mosquitto_passwd")
        .args(args)
        .output()
        .expect("run mosquitto_passwd");
    assert!(out.status.success(), "mosquitto_passwd {args:?}: {out:?}");
}

/// A password file written by Mosquitto: alice ($7$, PBKDF2-SHA512) and bob
/// ($6$, salted SHA-512, as Mosquitto 1.6 wrote them).
fn mosquitto_password_file(files: &Files) -> PathBuf {
    let path = files.0.join("passwd");
    let p = path.to_str().expect("UTF-8 path");
    mosquitto_passwd(&["-c", "-b", p, "alice", "alice-pw"]);
    mosquitto_passwd(&["-H", "sha512", "-b", p, "bob", "bob-pw"]);
    mosquitto_passwd(&["-b", p, "dev1", "dev1-pw"]);
    path
}

fn secured(password_file: &Path, acl_file: Option<&Path>) -> impl FnOnce(&mut Config) {
    let password_file = password_file.to_owned();
    let acl_file = acl_file.map(Path::to_owned);
    move |c: &mut Config| {
        c.password_file = Some(password_file);
        c.acl_file = acl_file;
        c.allow_anonymous = false;
        c.local_only = false;
    }
}

fn login(protocol: Protocol, id: &str, user: Option<&[u8]>, password: Option<&[u8]>) -> Packet {
    let mut p = connect_packet(protocol, id, true, 0, None);
    if let Packet::Connect(c) = &mut p {
        c.username = user.map(Bytes::copy_from_slice);
        c.password = password.map(Bytes::copy_from_slice);
    }
    p
}

/// The CONNACK code for these credentials.
async fn connack(
    broker: &TestBroker,
    protocol: Protocol,
    user: Option<&str>,
    pw: Option<&str>,
) -> u8 {
    let mut raw = Raw::open(broker.addr).await;
    let packet = login(
        protocol,
        "who",
        user.map(str::as_bytes),
        pw.map(str::as_bytes),
    );
    raw.handshake(packet).await.code
}

/// Connects with a username whose password is `{user}-pw`; must be accepted.
async fn logged_in(broker: &TestBroker, protocol: Protocol, id: &str, user: &str) -> Raw {
    let mut raw = Raw::open(broker.addr).await;
    let pw = format!("{user}-pw");
    let ack = raw
        .handshake(login(
            protocol,
            id,
            Some(user.as_bytes()),
            Some(pw.as_bytes()),
        ))
        .await;
    assert_eq!(ack.code, 0, "{user} logs in: {ack:?}");
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_password_files_are_accepted_and_bad_credentials_refused() {
    let files = Files::new("passwd");
    let passwd = mosquitto_password_file(&files);
    let broker = start(2, secured(&passwd, None));
    let v3 = Protocol::V3_1_1;
    let v5 = Protocol::V5;
    assert_eq!(
        connack(&broker, v3, Some("alice"), Some("alice-pw")).await,
        0,
        "$7$"
    );
    assert_eq!(
        connack(&broker, v3, Some("bob"), Some("bob-pw")).await,
        0,
        "$6$"
    );
    assert_eq!(connack(&broker, v3, Some("alice"), Some("bob-pw")).await, 4);
    assert_eq!(connack(&broker, v3, Some("mallory"), Some("x")).await, 4);
    assert_eq!(connack(&broker, v3, Some("alice"), None).await, 4);
    assert_eq!(connack(&broker, v3, None, None).await, 5, "anonymous");
    assert_eq!(
        connack(&broker, v5, Some("alice"), Some("nope")).await,
        0x86
    );
    assert_eq!(connack(&broker, v5, None, None).await, 0x87);
    assert_eq!(connack(&broker, v5, Some("bob"), Some("bob-pw")).await, 0);
    broker
        .wait_counters(STEP, "refusals counted by reason", |c| {
            c.auth_bad_credentials == 4 && c.auth_not_authorized == 2
        })
        .await;
    // Mosquitto's own client, with and without the right password.
    let good = ["-u", "alice", "-P", "alice-pw", "-t", "t", "-m", "m"];
    mosquitto_pub(broker.port, &good, None);
    let bad = ["-u", "alice", "-P", "wrong", "-t", "t", "-m", "m"];
    assert!(mosquitto_pub_result(broker.port, &bad, None).is_err());
}

const ACL: &str = "\
# Anonymous clients: nothing.
user alice
topic readwrite alice/#
topic read public/#
topic deny public/secret/#

user bob
topic write public/#
topic write alice/inbox

pattern readwrite devices/%c/#
pattern read users/%u/notes
";

fn acl_broker(files: &Files) -> TestBroker {
    let passwd = mosquitto_password_file(files);
    let acl = files.write("acl", ACL);
    start(2, secured(&passwd, Some(&acl)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_granted_filter_by_filter() {
    let files = Files::new("acl-sub");
    let broker = acl_broker(&files);
    let mut alice = logged_in(&broker, Protocol::V3_1_1, "a1", "alice").await;
    let q1 = RawQoS::AtLeastOnce;
    let codes = alice
        .subscribe(
            1,
            &[
                ("alice/#", q1),
                ("bob/#", q1),
                ("public/secret/x", q1),
                ("public/#", q1),
            ],
        )
        .await;
    assert_eq!(
        codes,
        vec![1, 0x80, 0x80, 1],
        "3.1.1: 0x80 for each refused filter"
    );
    let mut v5 = logged_in(&broker, Protocol::V5, "a2", "alice").await;
    let codes = v5
        .subscribe(1, &[("bob/#", q1), ("users/alice/notes", q1)])
        .await;
    assert_eq!(codes, vec![0x87, 1], "5.0: 0x87 (not authorized)");
    broker
        .wait_counters(STEP, "refused filters counted", |c| {
            c.subscribes_denied == 3
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_are_checked_and_wildcards_do_not_leak_denied_topics() {
    let files = Files::new("acl-pub");
    let broker = acl_broker(&files);
    let mut alice = logged_in(&broker, Protocol::V3_1_1, "alice-sub", "alice").await;
    alice.subscribe_ok("public/#", RawQoS::AtLeastOnce, 1).await;
    alice.subscribe_ok("alice/#", RawQoS::AtLeastOnce, 1).await;
    let mut bob = logged_in(&broker, Protocol::V3_1_1, "bob-pub", "bob").await;
    let q1 = |n| QosPid::AtLeastOnce(pid(n));
    for (n, topic) in [
        (1, "public/secret/plans"),
        (2, "alice/private"),
        (3, "public/news"),
    ] {
        bob.send(&publish_packet(topic, q1(n), false, topic.as_bytes()))
            .await;
        assert!(
            matches!(bob.recv().await, Packet::PubAck(_)),
            "3.1.1 flow completes"
        );
    }
    // public/news was the last publish: everything before it was refused.
    let got = alice.recv_publish().await;
    assert_eq!(
        &got.topic[..],
        b"public/news",
        "the secret and the private one never came"
    );
    alice.puback(&got).await;
    // bob may write alice/inbox, alice reads it through alice/#.
    bob.send(&publish_packet("alice/inbox", q1(4), false, b"hi"))
        .await;
    let got = alice.recv_publish().await;
    assert_eq!(&got.topic[..], b"alice/inbox");
    // 5.0: the refusal is in the PUBACK.
    let mut bob5 = logged_in(&broker, Protocol::V5, "bob-v5", "bob").await;
    bob5.send(&publish_packet("alice/private", q1(5), false, b"x"))
        .await;
    match bob5.recv().await {
        Packet::PubAck(a) => assert_eq!(a.reason, 0x87),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    broker
        .wait_counters(STEP, "refused publishes counted", |c| {
            // alice/private twice; public/secret/plans bob may write, alice not read.
            c.publishes_denied == 2 && c.deliveries_denied >= 1
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_substitute_client_id_and_username() {
    let files = Files::new("acl-pattern");
    let broker = acl_broker(&files);
    let mut dev = logged_in(&broker, Protocol::V3_1_1, "dev1", "dev1").await;
    dev.subscribe_ok("devices/dev1/#", RawQoS::AtMostOnce, 0)
        .await;
    let codes = dev
        .subscribe(2, &[("devices/dev2/#", RawQoS::AtMostOnce)])
        .await;
    assert_eq!(codes, vec![0x80], "another device's topics");
    dev.send(&publish_packet(
        "devices/dev2/cmd",
        QosPid::AtMostOnce,
        false,
        b"no",
    ))
    .await;
    dev.send(&publish_packet(
        "devices/dev1/cmd",
        QosPid::AtMostOnce,
        false,
        b"yes",
    ))
    .await;
    dev.expect_marker("yes", "its own topic only").await;
    // %u: alice may read users/alice/notes, not bob's.
    let mut alice = logged_in(&broker, Protocol::V3_1_1, "a-notes", "alice").await;
    let codes = alice
        .subscribe(
            1,
            &[
                ("users/alice/notes", RawQoS::AtMostOnce),
                ("users/bob/notes", RawQoS::AtMostOnce),
            ],
        )
        .await;
    assert_eq!(codes, vec![0, 0x80]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_and_wills_stay_behind_a_deny() {
    let files = Files::new("acl-retained");
    let broker = acl_broker(&files);
    let mut bob = logged_in(&broker, Protocol::V3_1_1, "bob-r", "bob").await;
    let q1 = |n| QosPid::AtLeastOnce(pid(n));
    bob.send(&publish_packet("public/secret/r", q1(1), true, b"secret"))
        .await;
    bob.recv().await;
    bob.send(&publish_packet("public/r", q1(2), true, b"open"))
        .await;
    bob.recv().await;
    // Retained QoS 1: acknowledged once every core holds it.
    let mut alice = logged_in(&broker, Protocol::V3_1_1, "alice-r", "alice").await;
    alice.subscribe_ok("public/#", RawQoS::AtLeastOnce, 1).await;
    let got = alice.recv_publish().await;
    assert_eq!(
        (&got.topic[..], &got.payload[..]),
        (&b"public/r"[..], &b"open"[..])
    );
    alice.puback(&got).await;
    alice.subscribe_ok("alice/#", RawQoS::AtMostOnce, 0).await;
    // Wills: bob may not write alice/will, may write alice/inbox.
    for (id, topic) in [("bob-w1", "alice/will"), ("bob-w2", "alice/inbox")] {
        let mut p = login(Protocol::V3_1_1, id, Some(b"bob"), Some(b"bob-pw"));
        if let Packet::Connect(c) = &mut p {
            c.will = Some(will(topic, topic, RawQoS::AtMostOnce, false));
        }
        let mut raw = Raw::open(broker.addr).await;
        assert_eq!(raw.handshake(p).await.code, 0);
        drop(raw); // an abrupt end: the will is due
    }
    // Wills go out in the order the connections ended, on different cores:
    // wait for the allowed one, then the counter for the refused one.
    let got = alice.recv_publish().await;
    assert_eq!(&got.topic[..], b"alice/inbox");
    broker
        .wait_counters(STEP, "the refused will counted", |c| c.wills_denied == 1)
        .await;
    alice.assert_silent(QUIET, "no will on alice/will").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_rights_and_a_broken_file_keeps_the_old_rules() {
    let files = Files::new("reload");
    let passwd = mosquitto_password_file(&files);
    let acl = files.write("acl", "user alice\ntopic read a/#\n");
    let broker = start(2, secured(&passwd, Some(&acl)));
    let mut alice = logged_in(&broker, Protocol::V3_1_1, "alice-reload", "alice").await;
    alice.subscribe_ok("a/#", RawQoS::AtMostOnce, 0).await;
    assert_eq!(
        alice.subscribe(2, &[("b/#", RawQoS::AtMostOnce)]).await,
        vec![0x80]
    );
    // New rules: b/# instead of a/#; a new user.
    files.write(
        "acl",
        "user alice\ntopic read b/#\nuser carol\ntopic write #\n",
    );
    mosquitto_passwd(&["-b", passwd.to_str().unwrap(), "carol", "carol-pw"]);
    broker.reload_auth().expect("reload");
    broker
        .wait_counters(STEP, "alice's a/# revoked", |c| {
            c.subscriptions_revoked == 1
        })
        .await;
    alice.subscribe_ok("b/#", RawQoS::AtMostOnce, 0).await;
    let mut carol = logged_in(&broker, Protocol::V3_1_1, "carol-pub", "carol").await;
    carol
        .send(&publish_packet("a/x", QosPid::AtMostOnce, false, b"gone"))
        .await;
    carol
        .send(&publish_packet("b/x", QosPid::AtMostOnce, false, b"marker"))
        .await;
    alice
        .expect_marker("marker", "a/# no longer delivers")
        .await;
    // A broken ACL file: the reload fails, the rules stay as they were.
    files.write("acl", "user alice\ntopic read b/#\nbogus line\n");
    let err = broker.reload_auth().expect_err("broken file refused");
    assert!(format!("{err:#}").contains('3'), "names the line: {err:#}");
    carol
        .send(&publish_packet("b/y", QosPid::AtMostOnce, false, b"still"))
        .await;
    alice.expect_marker("still", "b/# still delivers").await;
    assert_eq!(
        alice.subscribe(3, &[("a/#", RawQoS::AtMostOnce)]).await,
        vec![0x80]
    );
    // A broken password file too: carol still gets in.
    std::fs::write(&passwd, "carol\n").expect("break the password file");
    assert!(broker.reload_auth().is_err());
    drop(logged_in(&broker, Protocol::V3_1_1, "carol-again", "carol").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_from_one_address_are_slowed_down() {
    let files = Files::new("throttle");
    let passwd = mosquitto_password_file(&files);
    let broker = start(1, secured(&passwd, None));
    for _ in 0..4 {
        assert_eq!(
            connack(&broker, Protocol::V3_1_1, Some("alice"), Some("guess")).await,
            4
        );
    }
    // Past the free failures, even the right password waits first.
    let start = std::time::Instant::now();
    assert_eq!(
        connack(&broker, Protocol::V3_1_1, Some("alice"), Some("alice-pw")).await,
        0
    );
    assert!(
        start.elapsed() >= std::time::Duration::from_millis(500),
        "waited before CONNACK"
    );
    broker
        .wait_counters(STEP, "delayed CONNECT counted", |c| c.auth_delayed == 1)
        .await;
    // Success forgave the address.
    assert_eq!(
        connack(&broker, Protocol::V3_1_1, Some("alice"), Some("alice-pw")).await,
        0
    );
    let c = broker.counters();
    assert_eq!(c.auth_delayed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_odd_credentials_are_refused_without_harm() {
    let files = Files::new("bad-input");
    let passwd = mosquitto_password_file(&files);
    let broker = start(2, secured(&passwd, None));
    let long = vec![b'u'; 65_535];
    let cases: [(&str, &[u8], &[u8]); 3] = [
        ("65,535-byte username and password", &long, &long),
        ("65,535-byte password", b"alice", &long),
        ("binary password", b"alice", b"\0\xff\0"),
    ];
    for (what, user, pw) in cases {
        let mut raw = Raw::open(broker.addr).await;
        let ack = raw
            .handshake(login(Protocol::V3_1_1, "odd", Some(user), Some(pw)))
            .await;
        assert_eq!(ack.code, 4, "{what}");
    }
    // A NUL or invalid UTF-8 in a user name breaks the packet [MQTT-1.5.4]:
    // the connection is closed, nobody else is harmed.
    for user in [&b"al\0ice"[..], &b"\xff\xfe"[..]] {
        let mut raw = Raw::open(broker.addr).await;
        raw.send(&login(Protocol::V3_1_1, "odd", Some(user), Some(b"x")))
            .await;
        let before = raw.expect_closed(STEP).await;
        assert!(
            before
                .iter()
                .all(|p| matches!(p, Packet::ConnAck(a) if a.code != 0)),
            "{user:?}: {before:?}"
        );
    }
    drop(logged_in(&broker, Protocol::V3_1_1, "fine", "alice").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argon2id_users_are_checked_off_the_event_loop() {
    let files = Files::new("argon2");
    let hash = ringmq::auth::password::PasswordHash::argon2id(b"erin-pw");
    let passwd = files.write("passwd", &format!("erin:{}\n", hash.encode()));
    let broker = start(1, secured(&passwd, None));
    // Several at once: each waits for its own check, none blocks the others.
    let tries = [("erin-pw", 0u8), ("wrong", 4), ("erin-pw", 0), ("wrong", 4)];
    let mut tasks = Vec::new();
    for (pw, want) in tries {
        let addr = broker.addr;
        tasks.push(tokio::spawn(async move {
            let mut raw = Raw::open(addr).await;
            let p = login(Protocol::V3_1_1, "", Some(b"erin"), Some(pw.as_bytes()));
            (raw.handshake(p).await.code, want)
        }));
    }
    for t in tasks {
        let (got, want) = t.await.expect("client task");
        assert_eq!(got, want);
    }
}

/// With `busy_poll_us`, a core that input keeps busy still takes the result
/// of a check done on a verifier thread (a wake-up from another thread,
/// which monoio takes only when the core goes through the kernel's wait):
/// here a client floods the only core with publishes while another logs in.
/// (On two CPUs the flood leaves gaps, so this shows logins work on a
/// flooded polling core, not that the 1 ms stretch bound is what lets them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argon2id_checks_finish_while_a_polling_core_is_flooded() {
    let files = Files::new("argon2-poll");
    let hash = ringmq::auth::password::PasswordHash::argon2id(b"erin-pw");
    let passwd = files.write("passwd", &format!("erin:{}\n", hash.encode()));
    let broker = start(1, |c| {
        secured(&passwd, None)(c);
        c.busy_poll_us = 1000;
    });
    // An argon2id check takes seconds in the unoptimised test build, more
    // on a loaded machine: the bound is for a login that never ends.
    let patience = STEP * 6;
    let mut flooder = Raw::open(broker.addr).await;
    let p = login(Protocol::V3_1_1, "flood", Some(b"erin"), Some(b"erin-pw"));
    assert_eq!(flooder.handshake_within(p, patience).await.code, 0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooding = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let publish = publish_packet("flood/t", QosPid::AtMostOnce, false, b"x");
            // Bounded: stops when told, or after this many in any case.
            for _ in 0..2_000_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                flooder.send(&publish).await;
            }
        })
    };
    let mut raw = Raw::open(broker.addr).await;
    let p = login(Protocol::V3_1_1, "late", Some(b"erin"), Some(b"erin-pw"));
    let code = raw.handshake_within(p, patience).await.code;
    stop.store(true, Ordering::Relaxed);
    flooding.await.expect("flood task");
    assert_eq!(code, 0, "logged in while the core was flooded");
}

fn ringmq(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(args)
        .output()
        .expect("run ringmq")
}

#[test]
fn test_config_names_the_bad_line_of_each_file() {
    let files = Files::new("test-config");
    let passwd = files.write("bad-passwd", "# users\nbob\n");
    let acl = files.write("acl", "user alice\ntopic read a/#\ntopik read b\n");
    let good_passwd = mosquitto_password_file(&files);
    for (flag, path, line) in [
        ("--password-file", &passwd, "line 2"),
        ("--acl-file", &acl, "line 3"),
    ] {
        let out = ringmq(&["--test-config", flag, path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {err}");
        assert!(err.contains(line), "{flag} names {line}: {err}");
    }
    let out = ringmq(&[
        "--test-config",
        "--password-file",
        good_passwd.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn an_address_other_machines_reach_needs_a_password_file_or_allow_anonymous() {
    let out = ringmq(&["--test-config", "--bind", "0.0.0.0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("password_file") && err.contains("allow_anonymous"),
        "{err}"
    );
    let out = ringmq(&[
        "--test-config",
        "--bind",
        "0.0.0.0",
        "--allow-anonymous",
        "true",
    ]);
    assert!(out.status.success(), "{out:?}");
    let files = Files::new("open");
    let passwd = mosquitto_password_file(&files);
    let out = ringmq(&["--test-config", "--password-file", passwd.to_str().unwrap()]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && report.contains("0.0.0.0:1883"),
        "{report}"
    );
}

/// The broker binary re-reads its password file on SIGHUP: a user added by
/// `ringmq passwd` gets in without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_password_file() {
    let files = Files::new("sighup");
    let passwd = mosquitto_password_file(&files);
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args([
            "--bind",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--cores",
            "1",
            "--no-pin",
            "--persistence",
            "false",
        ])
        .arg("--password-file")
        .arg(&passwd)
        .args(["--log-level", "warn", "--sys-interval", "0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run ringmq");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let code = |user: &'static str| async move {
        let mut raw = Raw::open(addr).await;
        let pw = format!("{user}-pw");
        let p = login(
            Protocol::V3_1_1,
            "",
            Some(user.as_bytes()),
            Some(pw.as_bytes()),
        );
        raw.handshake(p).await.code
    };
    wait_for_port(addr, &mut child).await;
    assert_eq!(code("alice").await, 0);
    assert_eq!(code("carol").await, 4, "not yet in the file");
    let out = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["passwd", "-b"])
        .arg(&passwd)
        .args(["carol", "carol-pw"])
        .output()
        .expect("ringmq passwd");
    assert!(out.status.success(), "{out:?}");
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    // The reload runs on the signal thread: wait (bounded) for its effect.
    let deadline = std::time::Instant::now() + STEP * 2;
    while code("carol").await != 0 {
        assert!(
            child.try_wait().expect("poll").is_none(),
            "SIGHUP ended the broker"
        );
        assert!(std::time::Instant::now() < deadline, "carol never got in");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await; // polling the broker's state
    }
    assert_eq!(code("alice").await, 0, "alice still in");
    let _ = child.kill();
    let _ = child.wait();
}

/// `use_identity_as_username` feeds the ACL: a device's certificate name is
/// the `%u` of its patterns, whatever its CONNECT says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_name_is_the_username_the_acl_sees() {
    use ringmq::config::ListenerProtocol;
    let files = Files::new("identity-acl");
    let acl = files.write(
        "acl",
        "user watcher\ntopic read sensors/#\npattern write sensors/%u/#\n",
    );
    let pki = Pki::new("identity-acl");
    let broker = start(2, |c| {
        let mut tls = pki.tls(true);
        tls.use_identity_as_username = true;
        c.listeners
            .push(pki.listener(ListenerProtocol::Mqtt, Some(tls)));
        c.acl_file = Some(acl.clone());
        c.allow_anonymous = false;
    });
    let tls_port = addr_of(&broker, "mqtts").port();
    // No password file: a username is enough on the plain listener.
    let mut watcher = Raw::open(broker.addr).await;
    let ack = watcher
        .handshake(login(Protocol::V3_1_1, "watcher", Some(b"watcher"), None))
        .await;
    assert_eq!(ack.code, 0);
    watcher
        .subscribe_ok("sensors/#", RawQoS::AtMostOnce, 0)
        .await;
    let device = pki.client("sensor-42");
    let (cert, key) = (device.cert.to_str().unwrap(), device.key.to_str().unwrap());
    let ca = pki.ca.to_str().unwrap();
    for (topic, payload) in [
        ("sensors/sensor-7/t", "forged"),
        ("sensors/sensor-42/t", "own"),
    ] {
        let args = [
            "--cafile", ca, "--cert", cert, "--key", key, "-i", "dev", "-u", "sensor-7", "-t",
            topic, "-m", payload, "-q", "1",
        ];
        mosquitto_pub(tls_port, &args, None);
    }
    let got = watcher
        .expect_marker("own", "only the device's own topic")
        .await;
    assert_eq!(&got.topic[..], b"sensors/sensor-42/t");
}

/// Eclipse Paho (Python, MQTT 5) with usernames and passwords against the
/// same password and ACL files (tests/paho/auth_acl.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_with_passwords_and_the_acl() {
    let files = Files::new("paho");
    let broker = acl_broker(&files);
    let port = broker.port.to_string();
    paho("auth_acl", &["127.0.0.1", &port]).finish().await;
}
