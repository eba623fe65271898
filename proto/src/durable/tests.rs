use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::codec::{Connect, Property};
use crate::limits::Limits;
use crate::session::Session;

const EPOCH: Epoch = Epoch(1_764_000_000_000);

fn message(topic: &str, payload: &[u8], qos: QoS, expiry: Option<u32>) -> Message {
    let topic = TopicName::new(Bytes::copy_from_slice(topic.as_bytes()), 128).unwrap();
    let mut props = vec![
        Property::ContentType(Bytes::from_static(b"text/plain")),
        Property::UserProperty(Bytes::from_static(b"k"), Bytes::from_static(b"v")),
    ];
    props.extend(expiry.map(Property::MessageExpiryInterval));
    Message::new(topic, Bytes::copy_from_slice(payload), qos, true)
        .with_properties(Properties(props), Time::from_millis(5_000))
        .from_client("pub-1".into())
}

fn routed(msg: Message, shared: Option<&str>) -> Routed {
    let shared = shared.map(|s| {
        let f = TopicFilter::new(Bytes::copy_from_slice(s.as_bytes()), 128).unwrap();
        match SubFilter::parse(f).unwrap() {
            SubFilter::Shared(share) => share,
            SubFilter::Plain(_) => panic!("not shared"),
        }
    });
    Routed {
        qos: msg.qos,
        msg: Arc::new(msg),
        retain: false,
        sub_ids: vec![7, 9].into_boxed_slice(),
        shared,
    }
}

fn same_message(a: &Message, b: &Message) {
    assert_eq!(a.topic.as_str(), b.topic.as_str());
    assert_eq!(a.payload, b.payload);
    assert_eq!((a.qos, a.retain), (b.qos, b.retain));
    assert_eq!(a.properties, b.properties);
    assert_eq!(a.publisher, b.publisher);
    assert_eq!(a.expires_at, b.expires_at);
}

fn image() -> SessionImage {
    let sub = |f: &'static str, qos| {
        let filter = SubFilter::parse(TopicFilter::from_static(f)).unwrap();
        let opts = SubOptions {
            qos,
            no_local: true,
            retain_as_published: true,
            retain_handling: 2,
        };
        let entry = SubEntry {
            opts,
            id: Some(42),
            checked: true,
        };
        (filter, entry)
    };
    SessionImage {
        client_id: "dev-1".into(),
        username: Some("alice".into()),
        protocol: Protocol::V5,
        session_expiry: 3600,
        subscriptions: vec![
            sub("a/+/c", QoS::AtLeastOnce),
            sub("$share/g/x/#", QoS::ExactlyOnce),
        ],
        awaiting_rel: vec![Pid::new(3).unwrap(), Pid::new(65535).unwrap()],
        inflight: vec![
            (
                Pid::new(1).unwrap(),
                OutState::Published,
                routed(message("a/b/c", b"1", QoS::AtLeastOnce, Some(60)), None),
            ),
            (
                Pid::new(2).unwrap(),
                OutState::Released,
                routed(
                    message("x/y", b"2", QoS::ExactlyOnce, None),
                    Some("$share/g/x/#"),
                ),
            ),
        ],
        queue: vec![routed(
            message("a/q/c", &[0u8; 300], QoS::AtLeastOnce, None),
            None,
        )],
    }
}

#[test]
fn a_session_image_round_trips() {
    let img = image();
    let mut out = BytesMut::new();
    put_session(&mut out, &img, EPOCH);
    let mut r = Cursor::new(out.freeze());
    let back = get_session(&mut r, EPOCH).expect("decodes");
    assert_eq!(r.remaining(), 0);
    assert_eq!(
        (back.client_id, back.username),
        (img.client_id, img.username)
    );
    assert_eq!(
        (back.protocol, back.session_expiry),
        (img.protocol, img.session_expiry)
    );
    assert_eq!(back.subscriptions, img.subscriptions);
    assert_eq!(back.awaiting_rel, img.awaiting_rel);
    assert_eq!(back.inflight.len(), 2);
    for ((p1, s1, a), (p2, s2, b)) in back.inflight.iter().zip(&img.inflight) {
        assert_eq!((p1, s1), (p2, s2));
        assert_eq!((a.qos, a.retain, &a.sub_ids), (b.qos, b.retain, &b.sub_ids));
        assert_eq!(
            a.shared.as_ref().map(|s| s.as_str()),
            b.shared.as_ref().map(|s| s.as_str())
        );
        same_message(&a.msg, &b.msg);
    }
    same_message(&back.queue[0].msg, &img.queue[0].msg);
}

#[test]
fn expiry_keeps_counting_from_the_original_publish() {
    // Published at broker time 5 s with a 60 s expiry: due at 65 s of that run.
    let msg = message("t", b"x", QoS::AtLeastOnce, Some(60));
    let mut out = BytesMut::new();
    put_message(&mut out, &msg, EPOCH);
    // The next run's clock started 20 s (of wall time) later.
    let later = Epoch(EPOCH.0 + 20_000);
    let back = get_message(&mut Cursor::new(out.freeze()), later).unwrap();
    assert_eq!(back.expires_at, Some(Time::from_millis(45_000)));
    // An expiry that passed before the new run started is due at once.
    let much_later = Epoch(EPOCH.0 + 3_600_000);
    let mut out = BytesMut::new();
    put_message(&mut out, &msg, EPOCH);
    let back = get_message(&mut Cursor::new(out.freeze()), much_later).unwrap();
    assert!(back.expired(Time::ZERO));
}

#[test]
fn a_session_survives_image_and_restore() {
    let limits = Limits::default();
    let connect = Connect {
        protocol: Protocol::V3_1_1,
        clean_start: false,
        keep_alive: 30,
        client_id: Bytes::from_static(b"dev-1"),
        will: None,
        username: Some(Bytes::from_static(b"alice")),
        password: None,
        properties: Properties::default(),
        bridge: false,
    };
    let session = Session::new("dev-1".into(), &connect, &limits, Time::ZERO);
    let img = session.image();
    let mut out = BytesMut::new();
    put_session(&mut out, &img, EPOCH);
    let back = get_session(&mut Cursor::new(out.freeze()), EPOCH).unwrap();
    let restored = Session::restore(back, &limits, Time::ZERO);
    assert_eq!(restored.client_id(), session.client_id());
    assert_eq!(restored.username().map(|u| &**u), Some("alice"));
    assert!(restored.is_persistent());
    assert_eq!(restored.session_expiry(), session.session_expiry());
}

#[test]
fn another_version_is_refused_by_name() {
    let mut out = BytesMut::new();
    put_session(&mut out, &image(), EPOCH);
    let mut bytes = out.to_vec();
    bytes[0] = FORMAT_VERSION + 1;
    let err = get_session(&mut Cursor::new(bytes.into()), EPOCH).unwrap_err();
    assert_eq!(err, Corrupt::Version(FORMAT_VERSION + 1));
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let mut out = BytesMut::new();
    put_session(&mut out, &image(), EPOCH);
    let full = out.freeze();
    for len in 0..full.len() {
        let cut = full.slice(..len);
        assert!(
            get_session(&mut Cursor::new(cut), EPOCH).is_err(),
            "cut at {len}"
        );
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_or_overallocate(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = get_session(&mut Cursor::new(bytes.clone().into()), EPOCH);
        let _ = get_message(&mut Cursor::new(bytes.into()), EPOCH);
    }

    #[test]
    fn flipped_bytes_never_panic(at in 0usize..2000, bit in 0u8..8) {
        let mut out = BytesMut::new();
        put_session(&mut out, &image(), EPOCH);
        let mut bytes = out.to_vec();
        let i = at % bytes.len();
        bytes[i] ^= 1 << bit;
        let _ = get_session(&mut Cursor::new(bytes.into()), EPOCH);
    }
}

mod journal {
    use super::*;
    use crate::codec::{Ack, Packet, Publish, QosPid, Subscribe};
    use crate::durable::journal::Replay;

    fn limits() -> Limits {
        Limits {
            max_inflight_messages: 3,
            max_queued_messages: 6,
            ..Limits::default()
        }
    }

    fn connect() -> Connect {
        Connect {
            protocol: Protocol::V5,
            clean_start: false,
            keep_alive: 0,
            client_id: Bytes::from_static(b"dev"),
            will: None,
            username: None,
            password: None,
            properties: Properties(vec![Property::SessionExpiryInterval(600)]),
            bridge: false,
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Deliver(QoS, u8),
        AckOldest,
        RecOldest,
        CompOldest,
        InboundQos2(u16),
        Rel(u16),
        Subscribe(u8),
        Disconnect,
        Reconnect,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (prop_oneof![Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)], any::<u8>())
                .prop_map(|(q, n)| Op::Deliver(q, n)),
            2 => Just(Op::AckOldest),
            2 => Just(Op::RecOldest),
            2 => Just(Op::CompOldest),
            1 => (1u16..5).prop_map(Op::InboundQos2),
            1 => (1u16..5).prop_map(Op::Rel),
            1 => (0u8..4).prop_map(Op::Subscribe),
            1 => Just(Op::Disconnect),
            1 => Just(Op::Reconnect),
        ]
    }

    fn oldest(s: &Session, state: OutState, qos: QoS) -> Option<Pid> {
        s.image()
            .inflight
            .iter()
            .find(|(_, st, r)| *st == state && r.qos == qos)
            .map(|(p, _, _)| *p)
    }

    fn run(s: &mut Session, op: &Op, connected: &mut bool) {
        let l = limits();
        let now = Time::from_millis(1000);
        let mut events = Vec::new();
        let packet = match op {
            Op::Deliver(qos, n) => {
                let topic = format!("t/{n}");
                let m = message(&topic, &[*n], *qos, None);
                let _ = s.deliver(routed(m, None), &l, now);
                return;
            }
            Op::AckOldest => match oldest(s, OutState::Published, QoS::AtLeastOnce) {
                Some(pid) => Packet::PubAck(Ack::new(pid)),
                None => return,
            },
            Op::RecOldest => match oldest(s, OutState::Published, QoS::ExactlyOnce) {
                Some(pid) => Packet::PubRec(Ack::new(pid)),
                None => return,
            },
            Op::CompOldest => match oldest(s, OutState::Released, QoS::ExactlyOnce) {
                Some(pid) => Packet::PubComp(Ack::new(pid)),
                None => return,
            },
            Op::InboundQos2(id) => Packet::Publish(Publish {
                dup: false,
                qos_pid: QosPid::ExactlyOnce(Pid::new(*id).unwrap()),
                retain: false,
                topic: Bytes::from_static(b"in"),
                properties: Properties::default(),
                payload: Bytes::from_static(b"p"),
            }),
            Op::Rel(id) => Packet::PubRel(Ack::new(Pid::new(*id).unwrap())),
            Op::Subscribe(n) => Packet::Subscribe(Subscribe {
                pid: Pid::new(1).unwrap(),
                filters: vec![(Bytes::from(format!("f/{n}/#")), SubOptions::default())],
                properties: Properties::default(),
            }),
            Op::Disconnect => {
                if *connected {
                    let _ = s.detach(&l);
                    *connected = false;
                }
                return;
            }
            Op::Reconnect => {
                if !*connected {
                    s.attach(&connect(), &l, now);
                    s.resume(&l, now);
                    *connected = true;
                }
                return;
            }
        };
        if *connected {
            let _ = s.handle_packet(now, packet, &l, &mut events);
        }
    }

    /// Subscriptions, QoS 2 ids, in-flight (id, released, payload), queue.
    type Summary = (Vec<String>, Vec<u16>, Vec<(u16, bool, Bytes)>, Vec<Bytes>);

    fn summary(img: &SessionImage) -> Summary {
        let mut subs: Vec<String> = img
            .subscriptions
            .iter()
            .map(|(f, _)| f.as_str().to_owned())
            .collect();
        subs.sort();
        let mut rel: Vec<u16> = img.awaiting_rel.iter().map(|p| p.get()).collect();
        rel.sort();
        let inflight = img
            .inflight
            .iter()
            .map(|(p, st, r)| (p.get(), *st == OutState::Released, r.msg.payload.clone()))
            .collect();
        let queue = img.queue.iter().map(|r| r.msg.payload.clone()).collect();
        (subs, rel, inflight, queue)
    }

    proptest! {
        /// Whatever a persistent session goes through, folding its journal
        /// gives back its image at every step.
        #[test]
        fn replaying_the_journal_gives_the_session_back(ops in proptest::collection::vec(op(), 1..60)) {
            let l = limits();
            let mut s = Session::new("dev".into(), &connect(), &l, Time::ZERO);
            s.set_journal(Some(EPOCH));
            let mut log = Vec::new();
            let mut connected = true;
            for op in &ops {
                run(&mut s, op, &mut connected);
                log.extend(s.take_journal());
                let mut replay = Replay::new(EPOCH);
                for record in &log {
                    replay.apply(record.clone()).expect("own records replay");
                }
                let back = replay.finish();
                prop_assert_eq!(back.sessions.len(), 1);
                prop_assert_eq!(summary(&back.sessions[0]), summary(&s.image()), "after {:?}", op);
            }
        }
    }
}
