//! Well-formed packets that arrive split across TCP reads must be reassembled.
//!
//! Regression tests for the partial-frame bug these tests hit (fixed in
//! 802b662, "server: append reads after a partial frame instead of
//! overwriting it"): the connection read with `rd.cancelable_read(buf, ..)`
//! and `stream.read(buf)`, passing the whole `BytesMut` that still held the
//! unconsumed tail of a partial frame, and monoio's `IoBufMut for BytesMut`
//! writes at the *start* of the buffer (`set_init(n)` never shrinks `len`).
//! Each read overwrote the partial frame instead of appending to it: streams
//! desynchronised (the broker closed publishers for "protocol violations"
//! after tens to hundreds of messages), no packet larger than one read could
//! be received, a CONNECT larger than one read was never answered, and a
//! frame split so that the second read was shorter than what was buffered
//! left the connection hanging.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use ringmq::codec::Protocol;

/// PINGREQ, then one byte of a second PINGREQ: once the first PINGRESP is
/// back, the broker has read (and kept) the lone byte; the second byte then
/// completes the frame and must be answered with a second PINGRESP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_split_across_reads_is_reassembled() {
    let broker = start2();
    let mut c = Raw::connect(broker.addr, &id_on(0, 2, "split"), true, 0, None).await;
    c.send_bytes(&[0xC0, 0x00, 0xC0]).await.expect("write");
    assert!(matches!(c.recv().await, Packet::PingResp), "first PINGRESP");
    c.send_bytes(&[0x00]).await.expect("write");
    match c.next_within(STEP).await {
        RawEv::Packet(Packet::PingResp) => {}
        other => panic!("a PINGREQ split across two reads must be answered; got {other:?}"),
    }
}

/// The same with a QoS 1 PUBLISH split in the middle of its topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_split_across_reads_is_reassembled() {
    let broker = start2();
    let mut sub = V4::connect(broker.addr, &id_on(1, 2, "split-sub")).await;
    sub.subscribe_ok("split/topic", v4::QoS::AtLeastOnce).await;
    let mut c = Raw::connect(broker.addr, &id_on(0, 2, "split-pub"), true, 0, None).await;
    let publish = encode(
        &publish_packet(
            "split/topic",
            QosPid::AtLeastOnce(pid(7)),
            false,
            b"payload",
        ),
        Protocol::V3_1_1,
    );
    let (head, tail) = publish.split_at(6);
    let mut first = vec![0xC0, 0x00];
    first.extend_from_slice(head);
    c.send_bytes(&first).await.expect("write");
    assert!(matches!(c.recv().await, Packet::PingResp));
    c.send_bytes(tail).await.expect("write");
    match c.next_within(STEP).await {
        RawEv::Packet(Packet::PubAck(a)) => assert_eq!(a.pid, pid(7)),
        other => panic!("expected PUBACK for the split PUBLISH, got {other:?}"),
    }
    let got = sub.recv_publish().await;
    assert_eq!(&got.payload[..], b"payload");
}

/// A PUBLISH bigger than the initial read buffer (4 KiB) but well within
/// `max_packet_size` is delivered intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_larger_than_read_buffer_is_delivered() {
    let broker = start2();
    let mut sub = V4::connect(broker.addr, &id_on(1, 2, "big-sub")).await;
    sub.subscribe_ok("big/t", v4::QoS::AtLeastOnce).await;
    let mut publisher = V4::connect(broker.addr, &id_on(0, 2, "big-pub")).await;
    let payload: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    publisher
        .publish("big/t", v4::QoS::AtLeastOnce, false, payload.clone())
        .await;
    publisher.wait_acks(1, v4::QoS::AtLeastOnce).await;
    let got = sub.recv_publish().await;
    assert!(got.payload[..] == payload[..], "payload corrupted");
}

/// A CONNECT bigger than the read buffer (a 10 KiB will payload) is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_larger_than_read_buffer_is_accepted() {
    let broker = start2();
    let mut c = Raw::open(broker.addr).await;
    let big = "w".repeat(10 * 1024);
    let connect = connect_packet(
        Protocol::V3_1_1,
        "big-connect",
        true,
        0,
        Some(will("big/will", &big, RawQoS::AtMostOnce, false)),
    );
    c.send(&connect).await;
    match c.next_within(STEP).await {
        RawEv::Packet(Packet::ConnAck(ack)) => assert_eq!(ack.code, 0),
        other => panic!("expected CONNACK for a 10 KiB CONNECT, got {other:?}"),
    }
}

/// Many small QoS 0 PUBLISHes written back to back, as one stream (so reads
/// end mid-frame), all reach the subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_publishes_in_one_stream() {
    const N: usize = 2000;
    let broker = start2();
    let mut sub = V4::connect(broker.addr, &id_on(1, 2, "b2b-sub")).await;
    sub.subscribe_ok("b2b", v4::QoS::AtMostOnce).await;
    let mut c = Raw::connect(broker.addr, &id_on(0, 2, "b2b-pub"), true, 0, None).await;
    let mut stream = Vec::new();
    for i in 0..N {
        let p = publish_packet(
            "b2b",
            QosPid::AtMostOnce,
            false,
            numbered("m", i).as_bytes(),
        );
        stream.extend_from_slice(&encode(&p, Protocol::V3_1_1));
    }
    // One PINGREQ at the end: its PINGRESP says every PUBLISH was read.
    stream.extend_from_slice(&[0xC0, 0x00]);
    c.send_bytes(&stream).await.expect("write");
    match c.next_within(Duration::from_secs(10)).await {
        RawEv::Packet(Packet::PingResp) => {}
        other => panic!("expected PINGRESP after {N} PUBLISHes, got {other:?}"),
    }
    let got = sub.recv_publishes(N).await;
    let payloads: Vec<Bytes> = got.into_iter().map(|p| p.payload).collect();
    assert_sequence("b2b-sub", "m", &payloads, N);
}
