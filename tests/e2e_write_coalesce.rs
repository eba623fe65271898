//! `write_coalesce_ms`: a writer that finds output waiting when a write ends
//! waits before the next. Messages flow whole and in order within and
//! across cores, acknowledgements still come, and the waits are counted.

mod common;

use bytes::Bytes;
use common::v4::QoS;
use common::*;
use tokio::io::AsyncWriteExt;

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
    let mut sub = V4::connect(broker.addr, &id_on(0, 2, "wc-sub")).await;
    sub.subscribe_ok("wc/+", QoS::AtLeastOnce).await;
    let mut near = V4::connect(broker.addr, &id_on(0, 2, "wc-near")).await;
    let mut far = V4::connect(broker.addr, &id_on(1, 2, "wc-far")).await;
    for i in 0..N {
        near.publish("wc/near", QoS::AtLeastOnce, false, numbered("near", i))
            .await;
        far.publish("wc/far", QoS::AtLeastOnce, false, numbered("far", i))
            .await;
    }
    near.wait_acks(N, QoS::AtLeastOnce).await;
    far.wait_acks(N, QoS::AtLeastOnce).await;
    let got = sub.recv_publishes(2 * N).await;
    for (topic, tag) in [("wc/near", "near"), ("wc/far", "far")] {
        let payloads: Vec<Bytes> = got
            .iter()
            .filter(|p| p.topic == topic)
            .map(|p| p.payload.clone())
            .collect();
        assert_sequence(&sub.id, tag, &payloads, N);
    }
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
    let addr = broker.addr;
    let publisher = tokio::spawn(async move {
        let mut publ = Raw::connect(addr, &id_on(0, 2, "wc-pub"), true, 0, None).await;
        let body = "z".repeat(SIZE);
        for i in 0..MSGS {
            let payload = format!("{}|{body}", numbered("wc", i));
            let p = publish_packet("wc/s", QosPid::AtMostOnce, false, payload.as_bytes());
            let frame = encode(&p, ringmq::codec::Protocol::V3_1_1);
            // A hang guard while TCP pushes back, not a speed limit.
            tokio::time::timeout(12 * STEP, publ.stream.write_all(&frame))
                .await
                .expect("held for ever")
                .expect("publish");
        }
        publ
    });
    let mut got = Vec::with_capacity(MSGS);
    while got.len() < MSGS {
        let p = sub.recv_publish().await;
        got.push(label_of(&p.payload));
    }
    assert_sequence("a coalesced stream", "wc", &got, MSGS);
    within(STEP, "the publisher finishing", publisher)
        .await
        .expect("publisher");
    let c = broker
        .wait_counters(STEP, "a write after a wait", |c| c.coalesced_writes > 0)
        .await;
    assert_eq!(c.dropped_slow_consumer, 0, "{c:?}");
}
