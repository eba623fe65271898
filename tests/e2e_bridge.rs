//! Bridges against a real Mosquitto started by the test: messages cross both
//! ways with their topics mapped, nothing loops back, QoS 1 loses nothing
//! across a restart of the remote broker mid-stream (sequence numbers), TLS
//! to the remote, and the remote's connection-state topic.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use ringmq::bridge::Side;
use ringmq::codec::Protocol;
use ringmq::config::{Addresses, BridgeFile, Config};

/// How long a whole stream may take to cross, restarts included.
const STREAM: Duration = Duration::from_secs(60);

fn bridge_to(
    m: &MosquittoBroker,
    topics: &[&str],
    tweak: impl FnOnce(&mut BridgeFile),
) -> BridgeFile {
    let mut file = BridgeFile {
        name: "mosq".into(),
        address: Some(Addresses::One(format!("127.0.0.1:{}", m.port))),
        client_id: Some("ringmq-edge".into()),
        topic: topics.iter().map(|t| t.to_string()).collect(),
        restart_timeout: Some(ringmq::config::RestartTimeout::Fixed(1)),
        ..BridgeFile::default()
    };
    tweak(&mut file);
    file
}

fn with_bridge(config: &mut Config, file: BridgeFile) {
    config.bridges = vec![file.resolve("test").expect("a valid bridge")];
}

/// Waits until the bridge's link to `side` is up (its state is published
/// as each link event is handled).
async fn wait_link(broker: &TestBroker, side: Side, up: bool) {
    let deadline = Instant::now() + STREAM;
    let stats = &broker.bridges()[0];
    while stats.up[side as usize].load(std::sync::atomic::Ordering::Relaxed) != up {
        assert!(
            Instant::now() < deadline,
            "bridge link {side:?} never became up={up}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // polling published state
    }
}

/// A persistent QoS 1 subscriber that keeps reconnecting (to a broker that
/// restarts), subscribing first if it has `subscribed` to tell, until it has seen `n` distinct numbered messages or `STREAM`
/// ends; returns the numbers seen.
async fn collect(
    addr: SocketAddr,
    id: &str,
    filter: &str,
    prefix: &str,
    n: usize,
    mut subscribed: Option<tokio::sync::oneshot::Sender<()>>,
) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + STREAM;
    while seen.len() < n && Instant::now() < deadline {
        let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await; // a restarting broker
            continue;
        };
        let mut raw = Raw::open_stream(stream);
        let ack = raw
            .handshake(connect_packet(Protocol::V3_1_1, id, false, 30, None))
            .await;
        assert_eq!(ack.code, 0, "{id}: refused");
        if let Some(tx) = subscribed.take() {
            let codes = raw.subscribe(1, &[(filter, RawQoS::AtLeastOnce)]).await;
            assert_eq!(codes, [1]);
            let _ = tx.send(());
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match raw.next_within(left).await {
                RawEv::Packet(Packet::Publish(p)) => {
                    if let Some(pid) = p.qos_pid.pid() {
                        raw.send(&Packet::PubAck(Ack::new(pid))).await;
                    }
                    let text = String::from_utf8_lossy(&p.payload).into_owned();
                    if let Some(i) = text.strip_prefix(prefix).and_then(|s| s.parse().ok()) {
                        seen.insert(i);
                    }
                    if seen.len() >= n {
                        return seen;
                    }
                }
                RawEv::Packet(_) => {}
                RawEv::Closed => break,
                RawEv::Silent => return seen,
            }
        }
    }
    seen
}

/// Publishes `prefix<i>` for `range` at QoS 1, each acknowledged before the
/// next.
async fn publish_range(
    addr: SocketAddr,
    id: &str,
    topic: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
) {
    let mut raw = Raw::connect(addr, id, true, 30, None).await;
    for i in range {
        let pid = pid((i % 60_000) as u16 + 1);
        let payload = format!("{prefix}{i}");
        raw.send(&publish_packet(
            topic,
            QosPid::AtLeastOnce(pid),
            false,
            payload.as_bytes(),
        ))
        .await;
        match raw.recv().await {
            Packet::PubAck(a) if a.pid == pid => {}
            other => panic!("expected PUBACK {pid:?}, got {other:?}"),
        }
    }
    raw.disconnect().await;
}

fn missing(seen: &BTreeSet<usize>, n: usize) -> Vec<usize> {
    (0..n).filter(|i| !seen.contains(i)).take(20).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_out_loses_nothing_across_a_remote_restart() {
    let mut m = MosquittoBroker::start("out", "").await;
    let broker = start(2, |c| {
        with_bridge(c, bridge_to(&m, &["seq/# out 1"], |_| {}))
    });
    wait_link(&broker, Side::Remote, true).await;
    const N: usize = 400;
    let (subscribed, ready) = tokio::sync::oneshot::channel();
    let sink = tokio::spawn(collect(m.addr(), "sink", "seq/#", "m", N, Some(subscribed)));
    within(STEP, "the sink's SUBACK", ready)
        .await
        .expect("sink subscribed");
    publish_range(broker.addr, "pub-a", "seq/a", "m", 0..N / 2).await;
    m.restart().await;
    publish_range(broker.addr, "pub-b", "seq/a", "m", N / 2..N).await;
    let seen = within(STREAM + STEP, "the sink", sink)
        .await
        .expect("sink task");
    let stats = &broker.bridges()[0];
    assert_eq!(
        seen.len(),
        N,
        "lost at QoS 1: {:?}\n{stats:?}\n{}",
        missing(&seen, N),
        m.log()
    );
    let stats = &broker.bridges()[0];
    assert!(
        stats.connects.load(std::sync::atomic::Ordering::Relaxed) >= 2,
        "reconnected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_in_loses_nothing_across_a_remote_restart() {
    let mut m = MosquittoBroker::start("in", "").await;
    let broker = start(2, |c| {
        with_bridge(c, bridge_to(&m, &["cmd/# in 1"], |_| {}))
    });
    wait_link(&broker, Side::Remote, true).await;
    wait_link(&broker, Side::Local, true).await;
    const N: usize = 400;
    let (subscribed, ready) = tokio::sync::oneshot::channel();
    let sink = tokio::spawn(collect(
        broker.addr,
        "sink",
        "cmd/#",
        "m",
        N,
        Some(subscribed),
    ));
    within(STEP, "the sink's SUBACK", ready)
        .await
        .expect("sink subscribed");
    publish_range(m.addr(), "pub-a", "cmd/x", "m", 0..N / 2).await;
    m.restart().await;
    publish_range(m.addr(), "pub-b", "cmd/x", "m", N / 2..N).await;
    let seen = within(STREAM + STEP, "the sink", sink)
        .await
        .expect("sink task");
    let stats = &broker.bridges()[0];
    assert_eq!(
        seen.len(),
        N,
        "lost at QoS 1: {:?}\n{stats:?}\n{}",
        missing(&seen, N),
        m.log()
    );
}

/// Both ways with prefixes, in 5.0 and in 3.1.1 (`try_private`): each
/// message arrives once on each side, none comes back over the bridge.
async fn both_ways_once(tag: &str, protocol: &str) {
    let m = MosquittoBroker::start(tag, "").await;
    let file = bridge_to(&m, &["t/# both 1 here/ there/"], |f| {
        f.protocol_version = Some(match protocol {
            "3.1.1" => ringmq::config::BridgeProtocol::V311,
            _ => ringmq::config::BridgeProtocol::V5,
        });
    });
    let broker = start(2, |c| with_bridge(c, file));
    wait_link(&broker, Side::Remote, true).await;
    wait_link(&broker, Side::Local, true).await;
    let mut here = Raw::connect(broker.addr, "here", true, 30, None).await;
    here.subscribe_ok("here/#", RawQoS::AtLeastOnce, 1).await;
    let mut there = Raw::connect(m.addr(), "there", true, 30, None).await;
    there.subscribe_ok("there/#", RawQoS::AtLeastOnce, 1).await;
    // Ours to theirs, then theirs to ours; each side also sees its own
    // publisher's message locally.
    let mut p = Raw::connect(broker.addr, "p-here", true, 30, None).await;
    p.send(&publish_packet(
        "here/t/1",
        QosPid::AtLeastOnce(pid(1)),
        false,
        b"from-here",
    ))
    .await;
    let got = there.recv_publish().await;
    assert_eq!(
        (&got.topic[..], &got.payload[..]),
        (&b"there/t/1"[..], &b"from-here"[..])
    );
    there.puback(&got).await;
    let mut q = Raw::connect(m.addr(), "p-there", true, 30, None).await;
    q.send(&publish_packet(
        "there/t/2",
        QosPid::AtLeastOnce(pid(1)),
        false,
        b"from-there",
    ))
    .await;
    let mut at_here = Vec::new();
    while at_here.len() < 2 {
        let got = here.recv_publish().await;
        here.puback(&got).await;
        at_here.push(String::from_utf8_lossy(&got.payload).into_owned());
    }
    assert_eq!(at_here, ["from-here", "from-there"]);
    // Markers sent after: had anything looped, it would come before them.
    p.send(&publish_packet(
        "here/t/end",
        QosPid::AtMostOnce,
        false,
        b"end-here",
    ))
    .await;
    let got = there.recv_publish().await;
    assert_eq!(&got.payload[..], b"from-there", "its own broker's message");
    there.puback(&got).await;
    let marker = there
        .expect_marker("end-here", "a loop towards the remote")
        .await;
    assert_eq!(&marker.topic[..], b"there/t/end");
    here.expect_marker("end-here", "a loop back here").await;
    q.send(&publish_packet(
        "there/t/end",
        QosPid::AtMostOnce,
        false,
        b"end-there",
    ))
    .await;
    here.expect_marker("end-there", "a loop back here").await;
    there.expect_marker("end-there", "a loop back there").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ways_once_over_mqtt5() {
    both_ways_once("both5", "5.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ways_once_over_mqtt311_with_try_private() {
    both_ways_once("both311", "3.1.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_state_topic_says_1_then_0() {
    let m = MosquittoBroker::start("state", "").await;
    let broker = start(1, |c| {
        c.sys_interval = Duration::from_secs(1);
        with_bridge(c, bridge_to(&m, &["x out 0"], |_| {}));
    });
    wait_link(&broker, Side::Remote, true).await;
    let topic = "$SYS/broker/connection/ringmq-edge/state";
    // Here too, in $SYS, as Mosquitto does (refreshed each sys_interval).
    let mut local = Raw::connect(broker.addr, "watch-here", true, 30, None).await;
    local.subscribe_ok(topic, RawQoS::AtMostOnce, 0).await;
    let deadline = Instant::now() + STEP;
    loop {
        let state = local.recv_publish().await;
        if &state.payload[..] == b"1" {
            break;
        }
        assert!(Instant::now() < deadline, "no local state 1");
    }
    let mut watcher = Raw::connect(m.addr(), "watch", true, 30, None).await;
    watcher.subscribe_ok(topic, RawQoS::AtLeastOnce, 1).await;
    let state = watcher.recv_publish().await;
    assert_eq!(&state.payload[..], b"1", "retained state while connected");
    drop(broker); // a graceful stop says 0 on its way out
    let state = watcher.recv_publish().await;
    assert_eq!(&state.payload[..], b"0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crosses_tls_to_the_remote() {
    let pki = Pki::new("bridge");
    let tls_port = free_port();
    let extra = format!(
        "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
        pki.ca.display(),
        pki.server.cert.display(),
        pki.server.key.display()
    );
    let m = MosquittoBroker::start("tls", &extra).await;
    let file = bridge_to(&m, &["secure/# out 1"], |f| {
        // "localhost": the server certificate names it (and 127.0.0.1).
        f.address = Some(Addresses::One(format!("localhost:{tls_port}")));
        f.cafile = Some(pki.ca.clone());
    });
    let broker = start(1, |c| with_bridge(c, file));
    wait_link(&broker, Side::Remote, true).await;
    let mut sink = Raw::connect(m.addr(), "sink", true, 30, None).await;
    sink.subscribe_ok("secure/#", RawQoS::AtLeastOnce, 1).await;
    publish_range(broker.addr, "p", "secure/a", "s", 0..5).await;
    for i in 0..5 {
        let got = sink.recv_publish().await;
        sink.puback(&got).await;
        assert_eq!(got.payload, format!("s{i}").into_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_keeps_the_link_down() {
    let pki = Pki::new("bridge-bad");
    let other = Pki::new("bridge-other");
    let tls_port = free_port();
    let extra = format!(
        "listener {tls_port} 127.0.0.1\ncertfile {}\nkeyfile {}\n",
        pki.server.cert.display(),
        pki.server.key.display()
    );
    let m = MosquittoBroker::start("tlsbad", &extra).await;
    let file = bridge_to(&m, &["secure/# out 1"], |f| {
        f.address = Some(Addresses::One(format!("localhost:{tls_port}")));
        f.cafile = Some(other.ca.clone());
    });
    let broker = start(1, |c| with_bridge(c, file));
    wait_link(&broker, Side::Local, true).await;
    // The handshake fails (counted) and the link never comes up.
    let stats = &broker.bridges()[0];
    let deadline = Instant::now() + STREAM;
    while stats
        .connect_failures
        .load(std::sync::atomic::Ordering::Relaxed)
        < 2
    {
        assert!(Instant::now() < deadline, "no failed attempt counted");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling published state
    }
    assert!(!stats.up[Side::Remote as usize].load(std::sync::atomic::Ordering::Relaxed));
    assert_eq!(stats.connects.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// What the bridge's local session queued while the remote was away is
/// in the store: it survives a restart of this broker and crosses once the
/// remote is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_for_an_absent_remote_survives_our_restart() {
    let mut m = MosquittoBroker::start("absent", "").await;
    // The sink's persistent session at the remote, then the remote goes.
    let mut sink = Raw::connect(m.addr(), "sink", false, 30, None).await;
    sink.subscribe_ok("seq/#", RawQoS::AtLeastOnce, 1).await;
    sink.disconnect().await;
    m.stop().await;
    let store = tempfile::tempdir().expect("a store folder");
    let config = |c: &mut Config| {
        c.persistence = true;
        c.persistence_location = store.path().to_owned();
        with_bridge(c, bridge_to(&m, &["seq/# out 1"], |_| {}));
    };
    const N: usize = 100;
    {
        let broker = start(2, config);
        wait_link(&broker, Side::Local, true).await;
        broker
            .wait_counters(STEP, "the bridge subscribed", |c| {
                c.subscriptions_current >= 1
            })
            .await;
        publish_range(broker.addr, "pub", "seq/a", "m", 0..N).await;
    } // stopped, gracefully, with every message still here
    let broker = start(2, config);
    m.restart().await;
    wait_link(&broker, Side::Remote, true).await;
    // Its session holds the subscription: no SUBSCRIBE this time.
    let seen = within(
        STREAM + STEP,
        "the sink",
        collect(m.addr(), "sink", "seq/#", "m", N, None),
    )
    .await;
    let stats = &broker.bridges()[0];
    assert_eq!(seen.len(), N, "lost: {:?}\n{stats:?}", missing(&seen, N));
}

/// The other way round: Mosquitto's own 3.1.1 bridge (with its default
/// `try_private`, protocol level 0x84) connects to ringmq, which honours the
/// flag as Mosquitto does: the bridge does not get its own messages back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mosquitto_bridge_into_us_gets_no_echo() {
    let broker = start(2, |_| {});
    let m = MosquittoBroker::start(
        "into-us",
        &format!(
            "connection into-ringmq\naddress 127.0.0.1:{}\n\
             bridge_protocol_version mqttv311\nrestart_timeout 1\ntopic t/# both 1\n",
            broker.addr.port()
        ),
    )
    .await;
    broker
        .wait_counters(STREAM, "Mosquitto's bridge subscribed", |c| {
            c.connections_current == 1 && c.subscriptions_current == 1
        })
        .await;
    let mut here = Raw::connect(broker.addr, "here", true, 30, None).await;
    here.subscribe_ok("t/#", RawQoS::AtLeastOnce, 1).await;
    let mut there = Raw::connect(m.addr(), "there", true, 30, None).await;
    there.subscribe_ok("t/#", RawQoS::AtLeastOnce, 1).await;
    let mut q = Raw::connect(m.addr(), "p-there", true, 30, None).await;
    q.send(&publish_packet(
        "t/from-there",
        QosPid::AtLeastOnce(pid(1)),
        false,
        b"from-there",
    ))
    .await;
    let got = here.recv_publish().await;
    assert_eq!(&got.payload[..], b"from-there");
    here.puback(&got).await;
    let got = there.recv_publish().await;
    assert_eq!(&got.payload[..], b"from-there", "its own broker's message");
    there.puback(&got).await;
    // Our marker goes to the bridge on the same connection, after any echo
    // of `from-there` would have gone.
    let mut p = Raw::connect(broker.addr, "p-here", true, 30, None).await;
    p.send(&publish_packet("t/end", QosPid::AtMostOnce, false, b"end"))
        .await;
    there
        .expect_marker("end", "an echo back to Mosquitto")
        .await;
    here.expect_marker("end", "an echo back here").await;
}
