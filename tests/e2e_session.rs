//! Sessions with rumqttc (3.1.1): persistence across reconnects (clean
//! session = 0), session takeover by a second connection with the same id,
//! and clean session = 1 discarding what was there.

mod common;

use bytes::Bytes;
use common::v4::QoS;
use common::*;

/// Subscribes `id` with clean session = 0 at QoS 1, then disconnects normally.
async fn park_session(addr: std::net::SocketAddr, id: &str, filter: &str) {
    let mut s = V4::connect_with(addr, id, |o| {
        o.set_clean_session(false);
    })
    .await;
    assert!(
        !s.connack.session_present,
        "{id}: first connect has no session"
    );
    s.subscribe_ok(filter, QoS::AtLeastOnce).await;
    s.disconnect().await;
}

/// QoS 1 messages published while a persistent subscriber is offline are
/// delivered, in order, when it reconnects (session present = 1); QoS 0 ones
/// are not (the broker does not queue QoS 0 for offline clients); the
/// subscription itself survived (live messages flow without re-subscribing).
async fn offline_queue(pub_core: usize, sub_core: usize) {
    const Q1: usize = 20;
    const Q0: usize = 5;
    let broker = start2();
    let sub_id = id_on(sub_core, 2, &format!("ps-sub{pub_core}{sub_core}"));
    park_session(broker.addr, &sub_id, "ps/+").await;

    let mut publisher = V4::connect(broker.addr, &id_on(pub_core, 2, "ps-pub")).await;
    for i in 0..Q1 {
        publisher
            .publish("ps/q1", QoS::AtLeastOnce, false, numbered("q1", i))
            .await;
        if i % 4 == 0 && i / 4 < Q0 {
            publisher
                .publish("ps/q0", QoS::AtMostOnce, false, numbered("q0", i / 4))
                .await;
        }
    }
    publisher.wait_acks(Q1, QoS::AtLeastOnce).await;
    // The QoS 0 ones were routed to the offline session and dropped there
    // (counted), after the QoS 1 ones before them in the same stream.
    broker
        .wait_counters(STEP, "dropped_offline_qos0 == Q0", |c| {
            c.dropped_offline_qos0 == Q0 as u64
        })
        .await;

    let mut sub = V4::connect_with(broker.addr, &sub_id, |o| {
        o.set_clean_session(false);
    })
    .await;
    assert!(
        sub.connack.session_present,
        "resumed session must be present"
    );
    let got = sub.recv_publishes(Q1).await;
    for p in &got {
        assert_eq!((p.topic.as_str(), p.qos), ("ps/q1", QoS::AtLeastOnce));
    }
    let payloads: Vec<Bytes> = got.into_iter().map(|p| p.payload).collect();
    assert_sequence(&sub_id, "q1", &payloads, Q1);

    // The subscription survived: live traffic flows without re-subscribing.
    // The live message is also the marker for "no QoS 0 message from the
    // offline period": from the same publisher, it would come after them.
    publisher
        .publish("ps/live", QoS::AtLeastOnce, false, "live")
        .await;
    let live = sub.recv_publish().await;
    assert_eq!(
        (live.topic.as_str(), &live.payload[..]),
        ("ps/live", &b"live"[..]),
        "no QoS 0 message from the offline period, no second copy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_queues_qos1_across_cores() {
    offline_queue(0, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_queues_qos1_same_core() {
    offline_queue(1, 1).await;
}

/// A second connection with the same client id takes the session over: the
/// first connection is closed by the broker, the second gets session
/// present = 1 and keeps receiving on the old subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_closes_the_first_connection_and_keeps_the_session() {
    let broker = start2();
    let id = id_on(1, 2, "to-client");
    let mut first = V4::connect_with(broker.addr, &id, |o| {
        o.set_clean_session(false);
    })
    .await;
    first.subscribe_ok("to/t", QoS::AtLeastOnce).await;

    let mut second = V4::connect_with(broker.addr, &id, |o| {
        o.set_clean_session(false);
    })
    .await;
    assert!(
        second.connack.session_present,
        "takeover resumes the session"
    );
    let why = first.wait_closed(STEP).await;
    eprintln!("first connection closed: {why}");

    let mut publisher = V4::connect(broker.addr, &id_on(0, 2, "to-pub")).await;
    publisher
        .publish("to/t", QoS::AtLeastOnce, false, "after")
        .await;
    publisher.wait_acks(1, QoS::AtLeastOnce).await;
    let got = second.recv_publish().await;
    assert_eq!(&got.payload[..], b"after");
    broker
        .wait_counters(STEP, "takeovers == 1", |c| c.takeovers == 1)
        .await;
}

/// Takeover with clean session = 1 on the new connection: the old
/// connection is closed and the session starts afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_with_clean_session_starts_afresh() {
    let broker = start2();
    let id = id_on(0, 2, "toc-client");
    let mut first = V4::connect_with(broker.addr, &id, |o| {
        o.set_clean_session(false);
    })
    .await;
    first.subscribe_ok("toc/t", QoS::AtLeastOnce).await;
    let mut second = V4::connect(broker.addr, &id).await;
    assert!(!second.connack.session_present);
    first.wait_closed(STEP).await;
    second.subscribe_ok("toc/marker", QoS::AtLeastOnce).await;
    let mut publisher = V4::connect(broker.addr, &id_on(1, 2, "toc-pub")).await;
    publisher
        .publish("toc/t", QoS::AtLeastOnce, false, "x")
        .await;
    // The old subscription is gone: a marker from the same publisher, which
    // "x" would come before.
    publisher
        .publish("toc/marker", QoS::AtLeastOnce, false, "toc-end")
        .await;
    publisher.wait_acks(2, QoS::AtLeastOnce).await;
    second
        .expect_marker("toc-end", "the old subscription is gone")
        .await;
}

/// Clean session = 1 discards a stored session: session present = 0, no
/// messages queued for the old session, no old subscriptions; and the
/// discarded session does not come back on a later clean session = 0 connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_session_discards_the_previous_session() {
    let broker = start2();
    let id = id_on(1, 2, "cs-client");
    park_session(broker.addr, &id, "cs/t").await;
    let mut publisher = V4::connect(broker.addr, &id_on(0, 2, "cs-pub")).await;
    publisher
        .publish("cs/t", QoS::AtLeastOnce, false, "queued")
        .await;
    publisher.wait_acks(1, QoS::AtLeastOnce).await;

    let mut clean = V4::connect(broker.addr, &id).await;
    assert!(
        !clean.connack.session_present,
        "clean session: no session present"
    );
    // Neither the queued message nor (after a live publish) the old
    // subscription: a marker from the same publisher, after "live", which
    // both would come before.
    clean.subscribe_ok("cs/marker", QoS::AtLeastOnce).await;
    publisher
        .publish("cs/t", QoS::AtLeastOnce, false, "live")
        .await;
    publisher
        .publish("cs/marker", QoS::AtLeastOnce, false, "cs-end")
        .await;
    publisher.wait_acks(2, QoS::AtLeastOnce).await;
    clean
        .expect_marker("cs-end", "no queued message, no old subscription")
        .await;
    clean.disconnect().await;

    let again = V4::connect_with(broker.addr, &id, |o| {
        o.set_clean_session(false);
    })
    .await;
    assert!(
        !again.connack.session_present,
        "the discarded session must not come back"
    );
}

/// A persistent session whose client vanished (socket dropped, no
/// DISCONNECT) still queues QoS 1 and delivers it on reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_survives_an_abrupt_disconnect() {
    let broker = start2();
    let id = id_on(0, 2, "ab-client");
    let mut s = V4::connect_with(broker.addr, &id, |o| {
        o.set_clean_session(false);
    })
    .await;
    s.subscribe_ok("ab/t", QoS::AtLeastOnce).await;
    s.kill().await;
    broker
        .wait_counters(STEP, "the dropped connection is gone", |c| {
            c.connections_current == 0
        })
        .await;
    let mut publisher = V4::connect(broker.addr, &id_on(1, 2, "ab-pub")).await;
    for i in 0..10 {
        publisher
            .publish("ab/t", QoS::AtLeastOnce, false, numbered("ab", i))
            .await;
    }
    publisher.wait_acks(10, QoS::AtLeastOnce).await;
    let mut back = V4::connect_with(broker.addr, &id, |o| {
        o.set_clean_session(false);
    })
    .await;
    assert!(back.connack.session_present);
    let got = back.recv_publishes(10).await;
    let payloads: Vec<Bytes> = got.into_iter().map(|p| p.payload).collect();
    assert_sequence(&id, "ab", &payloads, 10);
}

/// Unacknowledged QoS 1 deliveries are re-sent with DUP=1 when the session
/// resumes [MQTT-4.4.0-1]. The receiver is a raw client that never PUBACKs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_qos1_is_resent_with_dup_on_resume() {
    let broker = start2();
    let id = id_on(1, 2, "dup-client");
    let mut raw = Raw::connect(broker.addr, &id, false, 0, None).await;
    assert_eq!(
        raw.subscribe(1, &[("dup/t", RawQoS::AtLeastOnce)]).await,
        vec![1]
    );
    let mut publisher = V4::connect(broker.addr, &id_on(0, 2, "dup-pub")).await;
    publisher
        .publish("dup/t", QoS::AtLeastOnce, false, "once")
        .await;
    publisher.wait_acks(1, QoS::AtLeastOnce).await;
    let first = raw.recv_publish().await;
    assert!(!first.dup);
    drop(raw); // no PUBACK
    broker
        .wait_counters(STEP, "raw client gone", |c| c.connections_current == 1)
        .await;
    let mut raw = Raw::open(broker.addr).await;
    let ack = raw
        .handshake(connect_packet(
            ringmq::codec::Protocol::V3_1_1,
            &id,
            false,
            0,
            None,
        ))
        .await;
    assert!(ack.session_present);
    match raw.recv().await {
        Packet::Publish(p) => {
            assert!(p.dup, "re-sent PUBLISH must have DUP=1");
            assert_eq!(p.qos_pid, first.qos_pid, "same packet id");
            assert_eq!(&p.payload[..], b"once");
        }
        other => panic!("expected the re-sent PUBLISH, got {other:?}"),
    }
}

/// The same promise when the publishes race the broker noticing the dead
/// connection: the subscriber's socket is dropped and the publisher starts at
/// once, so its messages may reach the session before, during or after the
/// broker closes the old connection. Whatever the order, every acknowledged
/// QoS 1 message reaches the resumed session. Repeated, with a fresh client
/// id each round, so that different interleavings are tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_racing_an_abrupt_disconnect() {
    const ROUNDS: usize = 20;
    let broker = start2();
    for round in 0..ROUNDS {
        let id = id_on(0, 2, &format!("race{round}"));
        let mut s = V4::connect_with(broker.addr, &id, |o| {
            o.set_clean_session(false);
        })
        .await;
        s.subscribe_ok("race/t", QoS::AtLeastOnce).await;
        s.kill().await;
        let publisher_id = id_on(1, 2, &format!("race-pub{round}"));
        let mut publisher = V4::connect(broker.addr, &publisher_id).await;
        let tag = format!("r{round}");
        for i in 0..10 {
            publisher
                .publish("race/t", QoS::AtLeastOnce, false, numbered(&tag, i))
                .await;
        }
        publisher.wait_acks(10, QoS::AtLeastOnce).await;
        let mut back = V4::connect_with(broker.addr, &id, |o| {
            o.set_clean_session(false);
        })
        .await;
        assert!(back.connack.session_present, "{id}: session kept");
        let got = back.recv_publishes(10).await;
        let payloads: Vec<Bytes> = got.into_iter().map(|p| p.payload).collect();
        assert_sequence(&id, &tag, &payloads, 10);
        // Clean start ends the session, so the next round's publishes reach
        // only the next round's subscriber.
        back.kill().await;
        V4::connect(broker.addr, &id).await.disconnect().await;
        publisher.disconnect().await;
    }
}
