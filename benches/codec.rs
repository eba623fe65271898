//! PUBLISH decode/encode at 16 B, 1 KiB and 64 KiB payloads, and the encode-once
//! fan-out path (`Message::encode_for`).

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringmq::codec::{decode, encode, Packet, Pid, Properties, Protocol, Publish, QoS, QosPid};
use ringmq::message::{Delivery, Message};
use ringmq::topic::TopicName;

const SIZES: [usize; 3] = [16, 1024, 64 * 1024];

fn publish(size: usize) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos_pid: QosPid::AtLeastOnce(Pid::new(42).unwrap()),
        retain: false,
        topic: Bytes::from_static(b"fleet/eu-west/device-001234/telemetry"),
        properties: Properties::default(),
        payload: Bytes::from(vec![0xab; size]),
    })
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_publish");
    for size in SIZES {
        let mut frame = BytesMut::new();
        encode(&publish(size), Protocol::V3_1_1, &mut frame);
        let frame = frame.freeze();
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &frame, |b, frame| {
            b.iter(|| {
                // Copying into the read buffer is what a socket read does too.
                let mut buf = BytesMut::from(&frame[..]);
                black_box(decode(&mut buf, Protocol::V3_1_1, u32::MAX).unwrap())
            })
        });
    }
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_publish");
    for size in SIZES {
        let packet = publish(size);
        let mut out = BytesMut::with_capacity(size + 128);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &packet, |b, p| {
            b.iter(|| {
                out.clear();
                encode(black_box(p), Protocol::V3_1_1, &mut out);
                black_box(out.len())
            })
        });
    }
    group.finish();
}

/// One delivery into a subscriber's output buffer, QoS 0 (cached frame) and QoS 1,
/// and a message's only delivery (fan-in, point to point: a new message each time).
fn bench_deliver(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_delivery_16B");
    let topic = TopicName::from_static("fleet/eu-west/device-001234/telemetry");
    let msg = Message::new(topic, Bytes::from(vec![1u8; 16]), QoS::AtLeastOnce, false);
    let mut out = BytesMut::with_capacity(1 << 16);
    for (name, qos_pid) in [
        ("qos0", QosPid::AtMostOnce),
        ("qos1", QosPid::AtLeastOnce(Pid::new(7).unwrap())),
    ] {
        let d = Delivery::plain(qos_pid, false, false);
        group.bench_function(name, |b| {
            b.iter(|| {
                if out.len() > 60_000 {
                    out.clear();
                }
                msg.encode_for(&mut out, Protocol::V3_1_1, &d);
            })
        });
    }
    let d = Delivery::plain(QosPid::AtMostOnce, false, false);
    group.bench_function("qos0_only_delivery", |b| {
        b.iter_batched(
            || {
                Message::new(
                    msg.topic.clone(),
                    msg.payload.clone(),
                    QoS::AtMostOnce,
                    false,
                )
            },
            |fresh| {
                if out.len() > 60_000 {
                    out.clear();
                }
                fresh.encode_for(&mut out, Protocol::V3_1_1, &d);
                fresh
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_decode, bench_encode, bench_deliver);
criterion_main!(benches);
