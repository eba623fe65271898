//! Quiet connections park their reader (no task, no read buffer) and wake on
//! the next packet or when the broker must close them: what a parked client
//! sees must be exactly what an active one sees.
//!
//! Each test waits for the `connections_parked` counter (refreshed every tick)
//! instead of sleeping past the quiet time. Only where a rule is about time
//! (a ping after a quiet spell) does a test make the spell with a sleep.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ringmq::codec::{reason, Protocol};
use ringmq::config::IoDriver;
use ringmq::server::PARK_AT_SETUP_AWAKE;

/// Quiet time before a reader parks (2 s), a tick to notice and one to count,
/// then the usual step.
const PARKED: Duration = Duration::from_secs(4 + 5);

/// The silence after which a client's ping counts as an idle client's
/// (`server::parking::IDLE_GAP`).
const IDLE_GAP: Duration = Duration::from_secs(1);

/// Makes a quiet spell longer than [`IDLE_GAP`]: what a client sends after
/// it counts as an idle client's (a precondition of the rule under test,
/// not a wait for the broker).
async fn stay_quiet() {
    tokio::time::sleep(IDLE_GAP + Duration::from_millis(200)).await;
}

async fn wait_parked(broker: &TestBroker, n: u64) {
    broker
        .wait_counters(PARKED, "readers parked", |c| c.connections_parked >= n)
        .await;
}

/// A parked subscriber gets what is published to it, answers a ping, parks
/// again, and can publish itself.
async fn parked_client_is_served(driver: IoDriver) {
    let broker = start(1, |c| c.io_driver = driver);
    let mut sub = Raw::connect(broker.addr, "quiet-sub", true, 60, None).await;
    sub.subscribe_ok("dev/#", RawQoS::AtLeastOnce, 1).await;
    wait_parked(&broker, 1).await;

    let mut publisher = Raw::connect(broker.addr, "pub", true, 60, None).await;
    publisher
        .send(&publish_packet(
            "dev/1",
            QosPid::AtLeastOnce(pid(1)),
            false,
            b"to a parked reader",
        ))
        .await;
    assert!(matches!(publisher.recv().await, Packet::PubAck(_)));
    let got = sub.recv_publish().await;
    assert_eq!(&got.payload[..], b"to a parked reader");
    sub.puback(&got).await;

    sub.send(&Packet::PingReq).await;
    assert!(matches!(sub.recv().await, Packet::PingResp));

    // Both quiet now: both park. A ping after the quiet time is taken from
    // the folded socket without waking the reader.
    // (The PUBACK above may have been taken so too.)
    let before = broker
        .wait_counters(PARKED, "both parked", |c| c.connections_parked == 2)
        .await
        .parked_answers;
    sub.send(&Packet::PingReq).await;
    assert!(matches!(sub.recv().await, Packet::PingResp));
    broker
        .wait_counters(STEP, "the ping taken while parked", |c| {
            c.parked_answers == before + 1
        })
        .await;

    // A ping with the start of the subscriber's own publish, longer than the
    // parking takes at one look, then the rest: it wakes the reader, which
    // handles both.
    let payload = vec![b'p'; 100];
    let mut bytes = encode(&Packet::PingReq, Protocol::V3_1_1);
    bytes.extend(encode(
        &publish_packet("dev/2", QosPid::AtLeastOnce(pid(7)), false, &payload),
        Protocol::V3_1_1,
    ));
    sub.send_bytes(&bytes[..5]).await.expect("write to broker");
    sub.send_bytes(&bytes[5..]).await.expect("write to broker");
    let (mut ponged, mut acked, mut echoed) = (false, false, false);
    while !(ponged && acked && echoed) {
        match sub.recv().await {
            Packet::PingResp => ponged = true,
            Packet::PubAck(a) => acked = a.pid == pid(7),
            Packet::Publish(p) => {
                echoed = p.payload[..] == payload[..];
                sub.puback(&p).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_client_is_served_as_an_active_one() {
    parked_client_is_served(IoDriver::IoUring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_client_is_served_as_an_active_one_on_epoll() {
    parked_client_is_served(IoDriver::Epoll).await;
}

/// Clients whose readers stay awake for as long as the test needs, without
/// any timing: each sends its CONNECT with the start of a PUBLISH, and a
/// reader with part of a frame buffered keeps reading for the rest.
async fn awake_readers(broker: &TestBroker, n: usize) -> Vec<Raw> {
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let mut raw = Raw::open(broker.addr).await;
        let mut bytes = encode(
            &connect_packet(Protocol::V3_1_1, &format!("awake-{i}"), true, 60, None),
            Protocol::V3_1_1,
        );
        // A QoS 0 PUBLISH's fixed header promising 20 bytes, none sent.
        bytes.extend([0x30, 20]);
        raw.send_bytes(&bytes).await.expect("write to broker");
        assert!(matches!(raw.recv().await, Packet::ConnAck(a) if a.code == 0));
        clients.push(raw);
    }
    clients
}

/// A client that connects and subscribes, on a core with many awake
/// readers (as in a connect storm), parks its reader right after each (for
/// the quiet time it would hold a task, a read buffer and a pending read,
/// which a fleet connecting at once would all hold together); one whose
/// CONNECT came with a PUBLISH keeps its reader, and so does a client on a
/// core with few awake readers (a script connecting to publish once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setting_up_parks_the_reader_at_once() {
    let broker = start(1, |_| {});
    let _lone = Raw::connect(broker.addr, "lone", true, 60, None).await;
    // The decision was made when the CONNECT was handled, before the tick
    // that counted the connection.
    let c = broker
        .wait_counters(STEP, "the lone client counted", |c| {
            c.connections_current == 1
        })
        .await;
    assert_eq!(c.readers_parked_at_connect, 0, "few awake readers: no park");

    let _awake = awake_readers(&broker, PARK_AT_SETUP_AWAKE).await;
    let mut sub = Raw::connect(broker.addr, "fleet-1", true, 60, None).await;
    broker
        .wait_counters(STEP, "parked after its CONNECT", |c| {
            c.readers_parked_at_connect == 1 && c.connections_parked >= 1
        })
        .await;
    sub.subscribe_ok("fleet/1/cmd", RawQoS::AtLeastOnce, 1)
        .await;
    broker
        .wait_counters(STEP, "parked again after its SUBSCRIBE", |c| {
            c.readers_reparked == 1
        })
        .await;

    // One write, so the PUBLISH is in the CONNECT's read.
    let mut eager = Raw::open(broker.addr).await;
    let mut bytes = encode(
        &connect_packet(Protocol::V3_1_1, "eager", true, 60, None),
        Protocol::V3_1_1,
    );
    bytes.extend(encode(
        &publish_packet("fleet/1/cmd", QosPid::AtLeastOnce(pid(1)), false, b"go"),
        Protocol::V3_1_1,
    ));
    eager.send_bytes(&bytes).await.expect("write to broker");
    assert!(matches!(eager.recv().await, Packet::ConnAck(a) if a.code == 0));
    assert!(matches!(eager.recv().await, Packet::PubAck(_)));
    let got = sub.recv_publish().await;
    assert_eq!(&got.payload[..], b"go");
    // The decision is made in the same step as the PUBLISH is handled.
    let c = broker
        .wait_counters(STEP, "the PUBLISH handled", |c| c.messages_received >= 1)
        .await;
    assert_eq!(
        c.readers_parked_at_connect, 1,
        "a CONNECT with a PUBLISH keeps its reader"
    );
}

/// After a second of silence, a client's ping and its PUBACK of the only
/// delivery in flight park its reader again at once (the ping without
/// waking it: the parking takes it from the folded socket). A ping soon after its
/// last packet (as a client acknowledging a steady stream sends) and its own
/// PUBLISH keep the reader until the quiet time, so it does not park and
/// wake for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_traffic_parks_the_reader_again_at_once() {
    let broker = start(1, |_| {});
    let mut sub = Raw::connect(broker.addr, "idle-sub", true, 60, None).await;
    sub.subscribe_ok("fleet/#", RawQoS::AtLeastOnce, 1).await;
    // Few awake readers: it parks after the quiet time, not at once.
    wait_parked(&broker, 1).await;

    stay_quiet().await;
    sub.send(&Packet::PingReq).await;
    assert!(matches!(sub.recv().await, Packet::PingResp));
    let c = broker
        .wait_counters(STEP, "the ping's reader parked again", |c| {
            c.readers_reparked == 1
        })
        .await;
    // The folded socket's ping was taken without waking the reader.
    assert_eq!(c.parked_answers, 1, "{c:?}");

    let mut ops = Raw::connect(broker.addr, "ops", true, 60, None).await;
    stay_quiet().await;
    ops.send(&publish_packet(
        "fleet/all",
        QosPid::AtLeastOnce(pid(1)),
        false,
        b"broadcast",
    ))
    .await;
    assert!(matches!(ops.recv().await, Packet::PubAck(_)));
    let got = sub.recv_publish().await;
    let acked_at = Instant::now();
    sub.puback(&got).await;
    broker
        .wait_counters(STEP, "the PUBACK's reader parked again", |c| {
            c.readers_reparked == 2
        })
        .await;

    // The broker handled the PUBACK after `acked_at` and this ping before its
    // answer came: less than IDLE_GAP apart, unless this machine stalled for
    // that long.
    sub.send(&Packet::PingReq).await;
    assert!(matches!(sub.recv().await, Packet::PingResp));
    let soon = acked_at.elapsed() < IDLE_GAP;
    sub.send(&publish_packet(
        "status/idle-sub",
        QosPid::AtLeastOnce(pid(2)),
        false,
        b"up",
    ))
    .await;
    assert!(matches!(sub.recv().await, Packet::PubAck(_)));
    // Both readers park after the quiet time; neither the second ping nor
    // the publish re-parked.
    let parked = broker
        .wait_counters(PARKED, "both readers parked", |c| c.connections_parked == 2)
        .await;
    if soon {
        assert_eq!(
            parked.readers_reparked, 2,
            "a ping soon after a PUBACK keeps the reader"
        );
    } else {
        assert!(parked.readers_reparked <= 3, "a PUBLISH keeps the reader");
    }
}

/// A new connection with the same client id closes a parked one, which gets
/// its 5.0 DISCONNECT (Session taken over) before the socket closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_is_taken_over() {
    let broker = start(2, |_| {});
    let (mut old, _) = Raw::connect_v5(broker.addr, "roaming", vec![]).await;
    wait_parked(&broker, 1).await;
    let (_new, ack) = Raw::connect_v5(broker.addr, "roaming", vec![]).await;
    assert_eq!(ack.code, 0);
    let before = old.expect_closed(STEP).await;
    match before.last() {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason::SESSION_TAKEN_OVER),
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }
}

/// Keep-alive is enforced for a parked client (parked right after its
/// CONNECT): silent past 1.5 x its 10 s, it is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_expires_while_parked() {
    const KEEP_ALIVE: u16 = 10;
    let broker = start(1, |_| {});
    let mut raw = Raw::open(broker.addr).await;
    let ack = raw
        .handshake(connect_packet(
            Protocol::V3_1_1,
            "sleepy",
            true,
            KEEP_ALIVE,
            None,
        ))
        .await;
    assert_eq!(ack.code, 0);
    wait_parked(&broker, 1).await;
    raw.expect_closed(Duration::from_secs(u64::from(KEEP_ALIVE) * 3 / 2) + STEP)
        .await;
    broker
        .wait_counters(STEP, "keep-alive timeout counted", |c| {
            c.keepalive_timeouts == 1
        })
        .await;
}

/// Shutting down wakes parked readers: a 5.0 client gets "server shutting
/// down" and the broker stops promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_parked_connections() {
    let broker = start(1, |_| {});
    let (mut raw, _) = Raw::connect_v5(broker.addr, "parked-at-shutdown", vec![]).await;
    wait_parked(&broker, 1).await;
    let stopping = tokio::task::spawn_blocking(move || drop(broker));
    let before = raw.expect_closed(STEP).await;
    match before.last() {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason::SERVER_SHUTTING_DOWN),
        other => panic!("expected DISCONNECT 0x8B, got {other:?}"),
    }
    within(STEP, "broker shutdown", stopping).await.unwrap();
}
