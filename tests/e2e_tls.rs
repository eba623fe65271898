//! Listeners over TLS: Mosquitto's clients and a rustls client against TLS
//! and mutual-TLS listeners, messages crossing listeners, bad input on every
//! side of the handshake, certificate reload, and a port no second broker
//! may share.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use ringmq::codec::{self, Protocol};
use ringmq::config::ListenerProtocol;
use tokio::io::AsyncWriteExt;

/// A 2-core broker with its plain listener and one TLS listener.
fn tls_broker(
    pki: &Pki,
    require_certificate: bool,
    tweak: impl FnOnce(&mut ringmq::config::Config),
) -> TestBroker {
    start(2, |c| {
        let tls = pki.tls(require_certificate);
        c.listeners
            .push(pki.listener(ListenerProtocol::Mqtt, Some(tls)));
        tweak(c);
    })
}

/// MQTT CONNECT then CONNACK over a blocking stream; `Err` when the broker
/// (or TLS) ends it first.
fn connect_over(stream: &mut (impl Read + Write), id: &str) -> std::io::Result<codec::ConnAck> {
    stream.write_all(&encode(
        &connect_packet(Protocol::V3_1_1, id, true, 0, None),
        Protocol::V3_1_1,
    ))?;
    let mut buf = BytesMut::new();
    loop {
        if let Some(p) =
            codec::decode(&mut buf, Protocol::V3_1_1, 1 << 20).map_err(std::io::Error::other)?
        {
            return match p {
                Packet::ConnAck(ack) => Ok(ack),
                other => Err(std::io::Error::other(format!(
                    "expected CONNACK, got {other:?}"
                ))),
            };
        }
        let mut chunk = [0u8; 512];
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Whatever the broker sends until it closes the connection (an alert, a
/// refusal, nothing).
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = stream.read(&mut chunk).await {
        answer.extend_from_slice(&chunk[..n]);
    }
    answer
}

/// Connects with rustls and does an MQTT CONNECT; `Err` when refused anywhere.
fn tls_session(
    addr: SocketAddr,
    ca: &std::path::Path,
    client: Option<&CertFiles>,
    id: &str,
) -> std::io::Result<codec::ConnAck> {
    let mut stream = tls_connect(addr, ca, client)?;
    connect_over(&mut stream, id)
}

fn mosq_tls_args<'a>(pki: &'a Pki, id: &'a str) -> Vec<&'a str> {
    vec!["--cafile", pki.ca.to_str().unwrap(), "-i", id]
}

/// Mosquitto's clients over TLS, and messages crossing between the plain and
/// the TLS listener in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_over_tls_reach_plain_clients_and_back() {
    let pki = Pki::new("mosq");
    let broker = tls_broker(&pki, false, |_| {});
    let tls = addr_of(&broker, "mqtts");
    let ca = pki.ca.to_str().unwrap().to_owned();
    let args = ["--cafile", &ca, "-t", "x/#", "-q", "1", "-F", "MSG|%t %p"];
    let mut sub = MosqSub::start(tls.port(), &args).await;
    mosquitto_pub(
        broker.port,
        &["-t", "x/plain", "-m", "to-tls", "-q", "1"],
        None,
    );
    assert_eq!(sub.msg().await, "x/plain to-tls");

    let mut plain = V4::connect(broker.addr, "tls-plain-sub").await;
    plain.subscribe_ok("y/#", v4::QoS::AtLeastOnce).await;
    let args = mosq_tls_args(&pki, "tls-pub");
    let mut args: Vec<&str> = args;
    args.extend(["-t", "y/tls", "-m", "from-tls", "-q", "1"]);
    mosquitto_pub(tls.port(), &args, None);
    let p = plain.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("y/tls", &b"from-tls"[..])
    );
}

/// Mutual TLS: a client certificate signed by the configured CA gets in; none,
/// one from another CA, or an expired one does not, and each refusal leaves
/// the listener serving the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_valid_client_certificates() {
    let pki = Pki::new("mtls");
    let broker = tls_broker(&pki, true, |_| {});
    let tls = addr_of(&broker, "mqtts");
    let ca = pki.ca.clone();
    let good = pki.client("device-1");
    let foreign = pki.foreign_client("device-2");
    let expired = pki.expired_client("device-3");
    let outcomes = tokio::task::spawn_blocking(move || {
        let try_with = |client: Option<&CertFiles>, id: &str| {
            tls_session(tls, &ca, client, id).map(|a| a.code)
        };
        vec![
            ("no certificate", try_with(None, "m-none")),
            ("foreign CA", try_with(Some(&foreign), "m-foreign")),
            ("expired", try_with(Some(&expired), "m-expired")),
            ("valid", try_with(Some(&good), "m-good")),
        ]
    })
    .await
    .expect("client thread");
    for (what, outcome) in &outcomes[..3] {
        assert!(
            outcome.is_err(),
            "{what}: the broker let it in: {outcome:?}"
        );
    }
    assert_eq!(
        outcomes[3].1.as_ref().ok(),
        Some(&0),
        "valid certificate: {:?}",
        outcomes[3].1
    );

    // Mosquitto's client, with and without its certificate.
    let client = pki.client("mosq-client");
    let (cert, key) = (client.cert.to_str().unwrap(), client.key.to_str().unwrap());
    let mut with_cert = mosq_tls_args(&pki, "mtls-pub");
    with_cert.extend([
        "--cert", cert, "--key", key, "-t", "m/t", "-m", "hi", "-q", "1",
    ]);
    mosquitto_pub(tls.port(), &with_cert, None);
    let mut without = mosq_tls_args(&pki, "mtls-nocert");
    without.extend(["-t", "m/t", "-m", "hi", "-q", "1"]);
    assert!(mosquitto_pub_result(tls.port(), &without, None).is_err());
}

/// With use_identity_as_username, the certificate's Common Name is the
/// username: a client that sends none is accepted although anonymous
/// clients are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_common_name_becomes_the_username() {
    let pki = Pki::new("identity");
    let broker = start(2, |c| {
        let mut tls = pki.tls(true);
        tls.use_identity_as_username = true;
        c.listeners
            .push(pki.listener(ListenerProtocol::Mqtt, Some(tls)));
        c.allow_anonymous = false;
    });
    let tls = addr_of(&broker, "mqtts");
    let ca = pki.ca.clone();
    let client = pki.client("sensor-42");
    let code = tokio::task::spawn_blocking(move || tls_session(tls, &ca, Some(&client), "id-user"))
        .await
        .expect("client thread")
        .expect("connected");
    assert_eq!(
        code.code, 0,
        "accepted with the certificate's name as username"
    );
    // The plain listener still refuses anonymous clients.
    let mut raw = Raw::open(broker.addr).await;
    let ack = raw
        .handshake(connect_packet(Protocol::V3_1_1, "anon", true, 0, None))
        .await;
    assert_eq!(ack.code, 5, "not authorized");
}

/// Bad input around the handshake: plaintext MQTT to the TLS port, TLS to
/// the plain port, garbage, a truncated ClientHello. Each connection is
/// closed without harm, and a healthy TLS client still gets in after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_around_the_handshake_is_refused() {
    let pki = Pki::new("bad");
    let broker = tls_broker(&pki, false, |_| {});
    let tls = addr_of(&broker, "mqtts");
    let connect = encode(
        &connect_packet(Protocol::V3_1_1, "plain-to-tls", true, 0, None),
        Protocol::V3_1_1,
    );
    // The start of a TLS 1.2 ClientHello record, then nothing more.
    let hello_start: &[u8] = &[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let garbage = vec![0x5a_u8; 4096];
    let cases: [(&str, SocketAddr, &[u8]); 4] = [
        ("plaintext MQTT to the TLS port", tls, &connect),
        ("garbage to the TLS port", tls, &garbage),
        ("a truncated ClientHello", tls, hello_start),
        (
            "a TLS ClientHello to the plain port",
            broker.addr,
            hello_start,
        ),
    ];
    for (what, addr, bytes) in cases {
        let mut raw = Raw::open(addr).await;
        let _ = raw.send_bytes(bytes).await;
        if what == "a truncated ClientHello" {
            // The client gives up: the broker must not wait for the rest.
            let _ = raw.stream.shutdown().await;
        }
        let answer = within(STEP, what, read_to_close(&mut raw.stream)).await;
        assert!(
            !answer.starts_with(&[0x20, 0x02, 0x00, 0x00]),
            "{what}: accepted with a CONNACK"
        );
        let ca = pki.ca.clone();
        let ok = tokio::task::spawn_blocking(move || tls_session(tls, &ca, None, "healthy"))
            .await
            .expect("client thread");
        assert!(
            matches!(ok, Ok(ref a) if a.code == 0),
            "after {what}: {ok:?}"
        );
    }
}

/// A client that opens TLS and never finishes the handshake is closed at
/// connect_timeout: not before, and (bounded) after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_handshake_is_closed_at_connect_timeout() {
    let pki = Pki::new("slow");
    let broker = tls_broker(&pki, false, |c| {
        c.limits.connect_timeout = Duration::from_secs(1)
    });
    let tls = addr_of(&broker, "mqtts");
    let opened = Instant::now();
    let mut raw = Raw::open(tls).await;
    raw.send_bytes(&[0x16, 0x03, 0x01])
        .await
        .expect("a few bytes");
    raw.expect_closed(STEP + Duration::from_secs(1)).await;
    assert!(
        opened.elapsed() >= Duration::from_secs(1),
        "closed before connect_timeout"
    );
    broker
        .wait_counters(STEP, "the refusal counted", |c| c.connects_refused >= 1)
        .await;
}

/// A second broker on a port the first one listens on refuses to start,
/// plain and TLS alike, instead of sharing connections with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_broker_on_the_same_port_refuses_to_start() {
    let pki = Pki::new("twice");
    let first = tls_broker(&pki, false, |_| {});
    let tls_port = addr_of(&first, "mqtts").port();
    let plain = start_result(1, |c| c.port = first.port);
    let err = plain.err().expect("the plain port is taken");
    assert!(format!("{err:#}").contains("in use"), "{err:#}");
    let tls = start_result(1, |c| {
        let mut l = pki.listener(ListenerProtocol::Mqtt, Some(pki.tls(false)));
        l.port = tls_port;
        c.listeners.push(l);
    });
    let err = tls.err().expect("the TLS port is taken");
    assert!(format!("{err:#}").contains("in use"), "{err:#}");
}

/// SIGHUP's reload: a bad new certificate keeps the old one in use; a good one
/// replaces it for new connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_without_a_restart() {
    let pki = Pki::new("reload");
    let broker = tls_broker(&pki, false, |_| {});
    let tls = addr_of(&broker, "mqtts");
    let connects = |ca: std::path::PathBuf| async move {
        tokio::task::spawn_blocking(move || {
            tls_session(tls, &ca, None, "reload-probe").map(|a| a.code)
        })
        .await
        .expect("client thread")
    };
    // A broken certificate file: the reload fails and the old pair serves on.
    let original = std::fs::read(&pki.server.cert).expect("read cert");
    std::fs::write(&pki.server.cert, b"not a certificate").expect("break cert");
    let failures = broker.reload_tls();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        connects(pki.ca.clone()).await.is_ok(),
        "the old certificate stays in use"
    );
    // A new pair from another CA: new connections get it.
    std::fs::write(&pki.server.cert, &original).expect("restore");
    let other = Pki::new("reload-new");
    std::fs::copy(&other.server.cert, &pki.server.cert).expect("new cert");
    std::fs::copy(&other.server.key, &pki.server.key).expect("new key");
    assert!(broker.reload_tls().is_empty());
    assert!(
        connects(other.ca.clone()).await.is_ok(),
        "the new certificate is served"
    );
    assert!(
        connects(pki.ca.clone()).await.is_err(),
        "the old CA no longer verifies it"
    );
}

/// `ringmq --test-config` with the given flags: its exit status and stderr.
fn test_config(flags: &[&str]) -> (bool, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .arg("--test-config")
        .args(flags)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ringmq");
    let deadline = Instant::now() + STEP;
    while child.try_wait().expect("poll").is_none() {
        assert!(Instant::now() < deadline, "ringmq --test-config hangs");
        std::thread::sleep(Duration::from_millis(10)); // polling a process
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `--test-config` reads the TLS files: an unreadable certificate or a key
/// that does not belong to it is reported before any start.
#[test]
fn test_config_reports_unusable_certificates() {
    let pki = Pki::new("test-config");
    let other = Pki::new("test-config-other");
    let (cert, key) = (
        pki.server.cert.to_str().unwrap(),
        pki.server.key.to_str().unwrap(),
    );
    let wrong_key = other.server.key.to_str().unwrap();
    let missing = pki.dir.join("missing.crt");
    let missing = missing.to_str().unwrap();
    let base = ["--tls-port", "8883", "--certfile"];
    let (ok, err) = test_config(&[&base[..], &[cert, "--keyfile", key]].concat());
    assert!(ok, "a good pair passes: {err}");
    let (ok, err) = test_config(&[&base[..], &[missing, "--keyfile", key]].concat());
    assert!(!ok && err.contains("missing.crt"), "{err}");
    let (ok, err) = test_config(&[&base[..], &[cert, "--keyfile", wrong_key]].concat());
    assert!(!ok && err.contains("do not make a usable pair"), "{err}");
}

/// Each listener counts its connections in `$SYS`: accepted, refused (here a
/// failed handshake), open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_count_their_connections_in_sys() {
    let pki = Pki::new("sys");
    let broker = tls_broker(&pki, false, |c| c.sys_interval = Duration::from_secs(1));
    let tls = addr_of(&broker, "mqtts");
    let mut garbage = Raw::open(tls).await;
    let _ = garbage.send_bytes(&[0x5a; 64]).await;
    within(
        STEP,
        "the refused handshake closed",
        read_to_close(&mut garbage.stream),
    )
    .await;
    let ca = pki.ca.clone();
    let _kept = tokio::task::spawn_blocking(move || {
        let mut stream = tls_connect(tls, &ca, None).expect("TLS");
        connect_over(&mut stream, "sys-tls").expect("CONNACK");
        stream
    })
    .await
    .expect("client thread");
    let mut watcher = V4::connect(broker.addr, "sys-watcher").await;
    let base = format!("$SYS/broker/ringmq/listeners/mqtts:{}", tls.port());
    watcher
        .subscribe_ok(&format!("{base}/+"), v4::QoS::AtMostOnce)
        .await;
    let want = [("accepted", 2u64), ("refused", 1), ("open", 1)];
    let mut seen = std::collections::HashMap::new();
    let deadline = Instant::now() + STEP * 2;
    while want.iter().any(|(k, v)| seen.get(*k) != Some(v)) {
        assert!(
            Instant::now() < deadline,
            "listener counters never reached {want:?}: {seen:?}"
        );
        let p = watcher.recv_publish().await;
        let what = p.topic.rsplit('/').next().unwrap_or("").to_owned();
        let n: u64 = std::str::from_utf8(&p.payload)
            .unwrap_or("")
            .parse()
            .unwrap_or(0);
        seen.insert(what, n);
    }
}

/// A PUBLISH much larger than a TLS record (rustls holds at most 16 KiB of
/// decrypted plaintext at a time): acknowledged and delivered intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_larger_than_a_tls_record_go_through() {
    let pki = Pki::new("large");
    let broker = tls_broker(&pki, false, |_| {});
    let tls = addr_of(&broker, "mqtts");
    let mut sub = V4::connect(broker.addr, "large-sub").await;
    sub.subscribe_ok("large/#", v4::QoS::AtLeastOnce).await;
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let sent = payload.clone();
    let ca = pki.ca.clone();
    let ack = tokio::task::spawn_blocking(move || {
        let mut stream = tls_connect(tls, &ca, None).expect("TLS");
        connect_over(&mut stream, "large-pub").expect("CONNACK");
        let publish = publish_packet("large/x", QosPid::AtLeastOnce(pid(1)), false, &sent);
        // One write: the records arrive several to a TCP read.
        stream
            .write_all(&encode(&publish, Protocol::V3_1_1))
            .expect("PUBLISH");
        let mut buf = BytesMut::new();
        loop {
            if let Some(p) = codec::decode(&mut buf, Protocol::V3_1_1, 1 << 20).expect("decodable")
            {
                return p;
            }
            let mut chunk = [0u8; 512];
            let n = stream.read(&mut chunk).expect("read");
            assert!(n > 0, "the broker closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("client thread");
    assert!(matches!(ack, Packet::PubAck(_)), "{ack:?}");
    let p = sub.recv_publish().await;
    assert!(
        p.payload[..] == payload[..],
        "{} bytes delivered",
        p.payload.len()
    );
}

/// The broker binary reloads its certificates on SIGHUP and keeps running:
/// after the files are replaced by a pair from another CA and the signal,
/// new connections are verified by the new CA.
#[test]
fn sighup_reloads_certificates_and_keeps_the_broker_running() {
    let pki = Pki::new("sighup");
    let other = Pki::new("sighup-new");
    let (plain, tls) = (free_port(), free_port());
    let (plain_s, tls_s) = (plain.to_string(), tls.to_string());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args([
            "--bind",
            "127.0.0.1",
            "-p",
            &plain_s,
            "--tls-port",
            &tls_s,
            "--cores",
            "1",
            "--no-pin",
            "--persistence",
            "false",
        ])
        .arg("--certfile")
        .arg(&pki.server.cert)
        .arg("--keyfile")
        .arg(&pki.server.key)
        .args(["--log-level", "warn", "--sys-interval", "0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run ringmq");
    let addr: SocketAddr = ([127, 0, 0, 1], tls).into();
    let deadline = Instant::now() + STEP;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            child.try_wait().expect("poll").is_none(),
            "ringmq exited at start"
        );
        assert!(
            Instant::now() < deadline,
            "ringmq did not open its TLS port"
        );
        std::thread::sleep(Duration::from_millis(20)); // polling a port
    }
    assert!(tls_session(addr, &pki.ca, None, "before").is_ok());
    std::fs::copy(&other.server.cert, &pki.server.cert).expect("new cert");
    std::fs::copy(&other.server.key, &pki.server.key).expect("new key");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    // The reload happens on the signal thread: wait (bounded) for its effect.
    let deadline = Instant::now() + STEP;
    while tls_session(addr, &other.ca, None, "after").is_err() {
        assert!(
            child.try_wait().expect("poll").is_none(),
            "SIGHUP ended the broker"
        );
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        std::thread::sleep(Duration::from_millis(20)); // polling the broker's state
    }
    assert!(
        child.try_wait().expect("poll").is_none(),
        "still running after SIGHUP"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// ALPN: a client offering `mqtt` gets it; one offering nothing still
/// connects (most MQTT clients send no ALPN).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_mqtt_is_accepted() {
    let pki = Pki::new("alpn");
    let broker = tls_broker(&pki, false, |_| {});
    let tls = addr_of(&broker, "mqtts");
    let ca = pki.ca.clone();
    let (offered, none) = tokio::task::spawn_blocking(move || {
        let mut with = tls_connect_alpn(tls, &ca, None, &[b"mqtt"]).expect("handshake with ALPN");
        let offered = with.conn.alpn_protocol().map(<[u8]>::to_vec);
        let ack = connect_over(&mut with, "alpn").expect("CONNACK");
        let mut without = tls_connect_alpn(tls, &ca, None, &[]).expect("handshake without ALPN");
        let none = without.conn.alpn_protocol().is_none();
        let ack2 = connect_over(&mut without, "no-alpn").expect("CONNACK");
        assert_eq!((ack.code, ack2.code), (0, 0));
        (offered, none)
    })
    .await
    .expect("client thread");
    assert_eq!(offered.as_deref(), Some(&b"mqtt"[..]));
    assert!(none, "no protocol chosen when none was offered");
}
