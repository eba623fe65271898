//! `write_coalesce_ms` and `read_coalesce_ms`: a writer that finds output
//! waiting when a write ends waits for the core's tick before the next; a
//! reader whose reads keep bringing several packets waits for it before the
//! next read. Messages flow whole and in order within and across cores,
//! acknowledgements still come, the waits are counted, and a client that
//! sends one packet at a time and waits for the answer never waits.

mod common;

use common::*;

const WAIT_MS: u32 = 1;

fn coalescing_broker() -> TestBroker {
    start(2, |c| c.write_coalesce_ms = WAIT_MS)
}

/// Reads and writes coalesced, on ticks of different periods.
fn read_coalescing_broker() -> TestBroker {
    start(2, |c| {
        c.read_coalesce_ms = WAIT_MS;
        c.write_coalesce_ms = 2 * WAIT_MS;
    })
}

/// QoS 1 streams from a publisher on the subscriber's core and from one on
/// the other core arrive whole and in order, and every publish is acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coalescing_broker_delivers_within_and_across_cores() {
    const N: usize = 200;
    let broker = coalescing_broker();
    near_and_far_streams_arrive_in_order(&broker, "wc", N).await;
}

/// A stream to a client that reads slowly (a 4 KiB receive buffer, 16 MB
/// of QoS 0 coming) leaves output waiting when a write ends: the writer
/// waits before the next write, the wait is counted, and every message
/// still arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_keeps_coming_waits_between_writes_and_loses_nothing() {
    const MSGS: usize = 1000;
    const SIZE: usize = 16 * 1024;
    let broker = coalescing_broker();
    let mut sub = Raw::small_rcvbuf_subscriber(broker.addr, &id_on(1, 2, "wc-sub"), "wc/s").await;
    let publisher = spawn_padded_flood(
        broker.addr,
        id_on(0, 2, "wc-pub"),
        "wc/s",
        "wc",
        (MSGS, SIZE),
    );
    let got = recv_labels(&mut sub, MSGS).await;
    assert_sequence("a coalesced stream", "wc", &got, MSGS);
    within(STEP, "the publisher finishing", publisher)
        .await
        .expect("publisher");
    let c = broker
        .wait_counters(STEP, "a write after a wait", |c| c.coalesced_writes > 0)
        .await;
    assert_eq!(c.dropped_slow_consumer, 0, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_coalescing_broker_delivers_within_and_across_cores() {
    const N: usize = 200;
    let broker = read_coalescing_broker();
    near_and_far_streams_arrive_in_order(&broker, "rc", N).await;
}

/// A publisher whose packets come many to a read (a thousand QoS 0
/// publishes sent in one write) is read after waits, counted, and every
/// message arrives in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_keeps_sending_is_read_after_waits_and_loses_nothing() {
    const MSGS: usize = 1000;
    let broker = read_coalescing_broker();
    let mut sub = Raw::connect(broker.addr, &id_on(0, 2, "rc-sub"), true, 0, None).await;
    sub.subscribe_ok("rc/s", RawQoS::AtMostOnce, 0).await;
    let mut publ = Raw::connect(broker.addr, &id_on(1, 2, "rc-pub"), true, 0, None).await;
    let burst: Vec<u8> = (0..MSGS)
        .flat_map(|i| {
            let payload = numbered("rc", i);
            let p = publish_packet("rc/s", QosPid::AtMostOnce, false, payload.as_bytes());
            encode(&p, ringmq::codec::Protocol::V3_1_1)
        })
        .collect();
    publ.send_bytes(&burst).await.expect("the burst is sent");
    let mut got = Vec::with_capacity(MSGS);
    while got.len() < MSGS {
        got.push(sub.recv_publish().await.payload);
    }
    assert_sequence("a coalesced publisher", "rc", &got, MSGS);
    broker
        .wait_counters(STEP, "a read after a wait", |c| c.coalesced_reads > 0)
        .await;
}

/// A client that sends a QoS 1 publish and waits for its PUBACK before the
/// next brings one packet per read: its reads never wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_waits_for_each_answer_is_never_held() {
    const N: u16 = 50;
    let broker = read_coalescing_broker();
    let mut publ = Raw::connect(broker.addr, &id_on(0, 2, "rc-ask"), true, 0, None).await;
    for n in 1..=N {
        let p = publish_packet("rc/ask", QosPid::AtLeastOnce(pid(n)), false, b"q");
        publ.send(&p).await;
        match publ.recv().await {
            Packet::PubAck(ack) => assert_eq!(ack.pid, pid(n)),
            other => panic!("expected PUBACK {n}, got {other:?}"),
        }
    }
    let c = broker
        .wait_counters(STEP, "the publishes counted", |c| {
            c.messages_received >= u64::from(N)
        })
        .await;
    assert_eq!(c.coalesced_reads, 0, "{c:?}");
}
