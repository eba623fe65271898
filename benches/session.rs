//! A session's QoS 1 round trip: a routed message delivered into the
//! window and encoded, then its PUBACK; and the same when the core's tick
//! freed the idle window and output buffer before every message (the most a
//! session can pay for giving them back).

use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use ringmq::codec::{Ack, Connect, Packet, Pid, Properties, Protocol, QoS};
use ringmq::limits::Limits;
use ringmq::message::Message;
use ringmq::session::{Routed, Session};
use ringmq::time::Time;
use ringmq::topic::TopicName;

fn connected_session(limits: &Limits) -> Session {
    let connect = Connect {
        protocol: Protocol::V3_1_1,
        clean_start: true,
        keep_alive: 60,
        client_id: Bytes::from_static(b"device-001234"),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
        bridge: false,
    };
    let mut session = Session::new(Arc::from("device-001234"), &connect, limits, Time::ZERO);
    session.tx.clear();
    session
}

fn routed(msg: &Arc<Message>) -> Routed {
    Routed {
        msg: msg.clone(),
        qos: QoS::AtLeastOnce,
        retain: false,
        sub_ids: Box::new([]),
        shared: None,
    }
}

fn bench_round_trip(c: &mut Criterion) {
    let limits = Limits::default();
    let topic = TopicName::from_static("fleet/eu-west/device-001234/cmd");
    let msg = Message::new(topic, Bytes::from(vec![1u8; 64]), QoS::AtLeastOnce, false).shared();
    let mut group = c.benchmark_group("session_qos1_deliver_and_puback");
    for (name, release) in [("warm", false), ("released_before_each", true)] {
        let mut session = connected_session(&limits);
        let mut events = Vec::new();
        let mut pid = Pid::MIN;
        group.bench_function(name, |b| {
            b.iter(|| {
                if release {
                    session.release_idle_buffers();
                }
                session.deliver(routed(&msg), &limits, Time::ZERO);
                session.tx.clear();
                // A freed window starts its packet ids over.
                let ack = Packet::PubAck(Ack::new(if release { Pid::MIN } else { pid }));
                pid = pid.next();
                session
                    .handle_packet(Time::ZERO, ack, &limits, &mut events)
                    .expect("a valid PUBACK");
                events.clear();
            })
        });
        assert_eq!(session.inflight_len(), 0, "every PUBACK matched");
    }
    group.finish();
}

criterion_group!(benches, bench_round_trip);
criterion_main!(benches);
