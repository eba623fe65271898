//! `write_coalesce_ms`: a writer that finds output waiting when a write ends
//! waits before the next. Messages flow whole and in order within and
//! across cores, acknowledgements still come, and the waits are counted.

mod common;

use common::*;

const WAIT_MS: u32 = 1;

fn coalescing_broker() -> TestBroker {
    start(2, |c| c.write_coalesce_ms = WAIT_MS)
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
