//! Back-pressure: a connected subscriber whose queue is full holds back the
//! publishers that feed it (their PUBACKs stop, their sockets are not read)
//! instead of the broker dropping messages it acknowledged; a subscriber
//! that stops reading is disconnected after `max_stall`, which frees them.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::*;

/// Small caps: 2 in flight, 5 queued.
fn small_queues(c: &mut ringmq::config::Config) {
    c.limits.max_inflight_messages = 2;
    c.limits.max_queued_messages = 5;
}

/// Takes exactly `n` PUBACKs (each within [`STEP`]), then checks that no
/// more come (a quiet window, which can only pass wrongly).
async fn exactly_acks(publ: &mut Raw, n: usize, what: &str) {
    for i in 0..n {
        match publ.recv().await {
            Packet::PubAck(_) => {}
            other => panic!("{what}: after {i} PUBACKs, {other:?}"),
        }
    }
    publ.assert_silent(QUIET, what).await;
}

/// Publisher and subscriber on one core, so the hold is exact: 2 in flight
/// + 5 queued + the one that went past the cap are acknowledged, nothing
/// more is read until the subscriber reads; then every message arrives, in
/// order, and nothing was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_subscriber_holds_its_publisher_and_loses_nothing() {
    let broker = start(1, small_queues);
    let mut sub = Raw::connect(broker.addr, "bp-sub", true, 0, None).await;
    sub.subscribe_ok("bp/#", RawQoS::AtLeastOnce, 1).await;
    let mut publ = Raw::connect(broker.addr, "bp-pub", true, 0, None).await;
    const N: usize = 50;
    send_qos1(&mut publ, "bp/1", "bp", N).await;
    let c = broker
        .wait_counters(STEP, "the hold counted", |c| c.publishers_throttled == 1)
        .await;
    assert_eq!(c.queued_over_cap, 1, "{c:?}");
    exactly_acks(&mut publ, 2 + 5 + 1, "held after the cap").await;
    let got = read_all(&mut sub, N).await;
    assert_sequence("the held messages", "bp", &got, N);
    exactly_acks(&mut publ, N - 8, "the rest acknowledged").await;
    let c = broker
        .wait_counters(STEP, "counters", |c| c.messages_sent >= N as u64)
        .await;
    assert_eq!(c.dropped_queue_full, 0, "{c:?}");
}

/// Sends `n` numbered QoS 1 messages (ids 1..=n) without waiting for acks.
async fn send_qos1(publ: &mut Raw, topic: &str, prefix: &str, n: usize) {
    for i in 0..n {
        let qos = QosPid::AtLeastOnce(pid(i as u16 + 1));
        publ.send(&publish_packet(
            topic,
            qos,
            false,
            numbered(prefix, i).as_bytes(),
        ))
        .await;
    }
}

/// Takes `n` QoS 1 messages, acknowledging each.
async fn read_all(sub: &mut Raw, n: usize) -> Vec<Bytes> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let p = sub.recv_publish().await;
        sub.puback(&p).await;
        got.push(p.payload);
    }
    got
}

/// Three publishers on one core, QoS 1 and 2, at full speed into one
/// subscriber on the other core with tiny queues: every message arrives
/// exactly once, in order per publisher, and none is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_in_across_cores_into_a_slow_subscriber_loses_nothing() {
    let broker = start(2, small_queues);
    let sub_id = id_on(1, 2, "fan-sub");
    let mut sub = Raw::connect(broker.addr, &sub_id, true, 0, None).await;
    sub.subscribe_ok("fan/#", RawQoS::ExactlyOnce, 2).await;
    const PUBLISHERS: usize = 3;
    const N: usize = 600;
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let addr = broker.addr;
        tasks.push(tokio::spawn(async move {
            let mut publ =
                Raw::connect(addr, &id_on(0, 2, &format!("fan-pub{p}")), true, 0, None).await;
            publish_pipelined(&mut publ, &format!("fan/{p}"), &format!("p{p}-"), N).await;
        }));
    }
    let mut per_topic: HashMap<Vec<u8>, Vec<Bytes>> = HashMap::new();
    let mut received = 0;
    while received < PUBLISHERS * N {
        match sub.recv().await {
            Packet::Publish(p) => {
                match p.qos_pid {
                    QosPid::ExactlyOnce(id) => sub.send(&Packet::PubRec(Ack::new(id))).await,
                    _ => sub.puback(&p).await,
                }
                per_topic
                    .entry(p.topic.to_vec())
                    .or_default()
                    .push(p.payload);
                received += 1;
            }
            Packet::PubRel(a) => sub.send(&Packet::PubComp(Ack::new(a.pid))).await,
            other => panic!("unexpected {other:?}"),
        }
    }
    for task in tasks {
        within(STEP, "a publisher finishing", task)
            .await
            .expect("publisher");
    }
    for p in 0..PUBLISHERS {
        let got = &per_topic[format!("fan/{p}").as_bytes()];
        assert_sequence(&format!("publisher {p}"), &format!("p{p}-"), got, N);
    }
    // The last QoS 2 flows end; no message comes twice.
    loop {
        match sub.next_within(QUIET).await {
            RawEv::Packet(Packet::PubRel(a)) => sub.send(&Packet::PubComp(Ack::new(a.pid))).await,
            RawEv::Silent => break,
            other => panic!("after every message: {other:?}"),
        }
    }
    let c = broker.counters();
    assert_eq!(c.dropped_queue_full, 0, "{c:?}");
}

/// `n` messages, QoS 1 and 2 alternating, 20 in flight, every ack awaited.
async fn publish_pipelined(publ: &mut Raw, topic: &str, prefix: &str, n: usize) {
    const WINDOW: usize = 20;
    let id = |i: usize| pid(i as u16 % 1000 + 1);
    let (mut sent, mut done) = (0, 0);
    while done < n {
        while sent < n && sent - done < WINDOW {
            publ.send(&numbered_publish(topic, prefix, sent, id(sent)))
                .await;
            sent += 1;
        }
        match publ.recv().await {
            Packet::PubAck(_) => done += 1,
            Packet::PubRec(a) => publ.send(&Packet::PubRel(Ack::new(a.pid))).await,
            Packet::PubComp(_) => done += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A subscriber that never reads holds its publisher for `max_stall`, then
/// is disconnected as a slow consumer, and the publisher goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_disconnected_after_max_stall() {
    let broker = start(1, |c| {
        small_queues(c);
        c.limits.max_stall = Duration::from_secs(1);
    });
    let mut sub = Raw::connect(broker.addr, "stall-sub", true, 0, None).await;
    sub.subscribe_ok("st/#", RawQoS::AtLeastOnce, 1).await;
    let mut publ = Raw::connect(broker.addr, "stall-pub", true, 0, None).await;
    const N: usize = 30;
    send_qos1(&mut publ, "st/1", "st", N).await;
    // Held, then freed when the stalled subscriber is cut off.
    let mut acks = 0;
    while acks < N {
        match publ.next_within(STEP).await {
            RawEv::Packet(Packet::PubAck(_)) => acks += 1,
            other => panic!("{acks} of {N} acknowledged, then {other:?}"),
        }
    }
    let c = broker
        .wait_counters(STEP, "the slow consumer cut off", |c| {
            c.slow_consumers_disconnected == 1
        })
        .await;
    assert_eq!(
        c.dropped_queue_full, 0,
        "held past the cap, not dropped: {c:?}"
    );
    // What it had not read is its own to lose: the connection is gone.
    let _ = sub.expect_closed(STEP).await;
}

/// QoS 0 too: a subscriber on core 1 that does not read, with a 64 KiB
/// output cap, holds back a publisher on core 0 that floods it with 16 MB
/// (more than the sockets' buffers take): the hold is counted, nothing is
/// dropped, and once the subscriber reads it gets every message in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_to_a_subscriber_that_does_not_read_holds_the_publisher_and_loses_nothing() {
    const MSGS: usize = 1000;
    const SIZE: usize = 16 * 1024;
    let broker = start(2, |c| c.limits.max_write_buffer = 64 * 1024);
    let mut sub = Raw::small_rcvbuf_subscriber(broker.addr, &id_on(1, 2, "q0-sub"), "q0/t").await;
    let publisher = spawn_padded_flood(
        broker.addr,
        id_on(0, 2, "q0-pub"),
        "q0/t",
        "q0",
        (MSGS, SIZE),
    );
    broker
        .wait_counters(STEP, "the publisher held back", |c| {
            c.publishers_throttled >= 1
        })
        .await;
    let got = recv_labels(&mut sub, MSGS).await;
    assert_sequence("QoS 0 through a hold", "q0", &got, MSGS);
    within(STEP, "the publisher finishing", publisher)
        .await
        .expect("publisher");
    let c = broker.counters();
    assert_eq!(c.dropped_slow_consumer, 0, "{c:?}");
}

/// One connection flooding its core (QoS 0 to a topic nobody reads, as fast
/// as the socket takes it) does not starve another connection on the same
/// core: each of its PINGREQs is answered while the flood goes on. A
/// connection's turn is one read (at most `read_buffer_size`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_connection_does_not_starve_another_on_its_core() {
    flood_beside_a_pinger(ringmq::config::IoDriver::IoUring).await;
}

async fn flood_beside_a_pinger(driver: ringmq::config::IoDriver) {
    let broker = start(1, |c| c.io_driver = driver);
    let addr = broker.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooding = stop.clone();
    let flood = tokio::spawn(async move {
        let mut publ = Raw::connect(addr, "flooder", true, 0, None).await;
        let p = publish_packet("nobody/reads", QosPid::AtMostOnce, false, &[1u8; 512]);
        let burst: Vec<u8> = (0..256)
            .flat_map(|_| encode(&p, ringmq::codec::Protocol::V3_1_1))
            .collect();
        let mut sent = 0usize;
        while !flooding.load(std::sync::atomic::Ordering::Relaxed) {
            publ.send_bytes(&burst).await.expect("flood");
            sent += burst.len();
        }
        sent
    });
    // The flood is under way once the broker has counted some of it.
    broker
        .wait_counters(STEP, "the flood under way", |c| {
            c.messages_received > 10_000
        })
        .await;
    let mut other = Raw::connect(addr, "pinger", true, 0, None).await;
    for _ in 0..20 {
        other.send(&Packet::PingReq).await;
        match other.recv().await {
            Packet::PingResp => {}
            p => panic!("expected PINGRESP, got {p:?}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = within(STEP, "the flood ending", flood)
        .await
        .expect("flooder");
    assert!(sent > 0);
}

/// A client's own messages coming back through its own subscription never
/// hold it back (it would stop reading the acks that drain its queue):
/// past its caps they are dropped and counted, and its PUBACKs keep coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_is_not_held_back_by_its_own_subscription() {
    let broker = start(1, small_queues);
    let mut me = Raw::connect(broker.addr, "loop-back", true, 0, None).await;
    me.subscribe_ok("me/#", RawQoS::AtLeastOnce, 1).await;
    const N: usize = 50;
    send_qos1(&mut me, "me/x", "me", N).await;
    let mut acks = 0;
    while acks < N {
        match me.recv().await {
            Packet::PubAck(_) => acks += 1,
            Packet::Publish(_) => {} // its own copies, not acknowledged here
            other => panic!("unexpected {other:?}"),
        }
    }
    let c = broker
        .wait_counters(STEP, "own copies past the cap dropped", |c| {
            c.dropped_queue_full > 0
        })
        .await;
    assert_eq!(c.publishers_throttled, 0, "{c:?}");
}
