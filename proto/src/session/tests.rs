//! Scripted session scenarios with a fake clock: the bytes a client would see.

use bytes::{Bytes, BytesMut};

use super::*;
use crate::codec::{decode, Connect, Disconnect, Will};

fn t(millis: u64) -> Time {
    Time::from_millis(millis)
}

fn limits() -> Limits {
    Limits {
        max_inflight_messages: 2,
        max_queued_messages: 3,
        ..Limits::default()
    }
}

fn connect(clean: bool, keep_alive: u16) -> Connect {
    Connect {
        protocol: Protocol::V3_1_1,
        clean_start: clean,
        keep_alive,
        client_id: Bytes::from_static(b"c1"),
        will: Some(Will {
            topic: Bytes::from_static(b"w"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
        }),
        username: None,
        password: None,
        properties: Properties::default(),
        bridge: false,
    }
}

fn session(clean: bool) -> Session {
    let mut s = Session::new("c1".into(), &connect(clean, 10), &limits(), t(0));
    s.tx.clear();
    s
}

/// Decodes everything the session wrote, as the client would read it.
fn sent(s: &mut Session) -> Vec<Packet> {
    let mut buf = BytesMut::from(&s.tx[..]);
    s.tx.clear();
    let mut out = Vec::new();
    while let Some(p) = decode(&mut buf, s.protocol, u32::MAX).unwrap() {
        out.push(p);
    }
    out
}

fn pid(n: u16) -> Pid {
    Pid::new(n).unwrap()
}

fn publish(qos: QoS, id: u16, topic: &'static str) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos_pid: QosPid::new(qos, pid(id)),
        retain: false,
        topic: Bytes::from_static(topic.as_bytes()),
        properties: Properties::default(),
        payload: Bytes::from_static(b"x"),
    })
}

fn msg(topic: &'static str, qos: QoS) -> Routed {
    let msg = Message::new(
        TopicName::from_static(topic),
        Bytes::from_static(b"m"),
        qos,
        false,
    );
    Routed {
        msg: msg.shared(),
        qos,
        retain: false,
        sub_ids: Box::new([]),
        shared: None,
    }
}

fn handle(s: &mut Session, now: u64, p: Packet) -> Result<Vec<Event>, Violation> {
    let mut events = Vec::new();
    s.handle_packet(t(now), p, &limits(), &mut events)?;
    Ok(events)
}

/// Routes the events' publishes as the router would, acknowledging each.
fn route_all(s: &mut Session, events: Vec<Event>, routing: Routing) {
    for e in events {
        if let Event::Publish { ack: Some(ack), .. } = e {
            s.acknowledge(ack, routing);
        }
    }
}

#[test]
fn qos1_inbound_routes_then_acks() {
    let mut s = session(true);
    let events = handle(&mut s, 1, publish(QoS::AtLeastOnce, 7, "a/b")).unwrap();
    assert!(
        matches!(&events[..], [Event::Publish { msg, ack: Some(PublishAck::PubAck(_)) }] if msg.topic.as_str() == "a/b")
    );
    assert!(
        sent(&mut s).is_empty(),
        "no ack before the message is routed"
    );
    route_all(&mut s, events, Routing::Delivered);
    assert_eq!(sent(&mut s), vec![Packet::PubAck(Ack::new(pid(7)))]);
}

#[test]
fn v5_ack_reasons_say_what_routing_found() {
    let mut c = connect(true, 10);
    c.protocol = Protocol::V5;
    let mut s = Session::new("c1".into(), &c, &limits(), t(0));
    s.tx.clear();
    let events = handle(&mut s, 1, publish(QoS::AtLeastOnce, 1, "nobody")).unwrap();
    route_all(&mut s, events, Routing::NoSubscribers);
    let events = handle(&mut s, 1, publish(QoS::ExactlyOnce, 2, "x")).unwrap();
    route_all(&mut s, events, Routing::NotAuthorized);
    let reasons: Vec<u8> = sent(&mut s)
        .into_iter()
        .map(|p| match p {
            Packet::PubAck(a) | Packet::PubRec(a) => a.reason,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        reasons,
        vec![reason::NO_MATCHING_SUBSCRIBERS, reason::NOT_AUTHORIZED]
    );
    // A refusing PUBREC ends the QoS 2 flow: the id is free again at once.
    let again = handle(&mut s, 2, publish(QoS::ExactlyOnce, 2, "x")).unwrap();
    assert_eq!(
        again.len(),
        1,
        "routed again, not treated as a retransmission"
    );
}

#[test]
fn qos2_inbound_is_routed_exactly_once() {
    let mut s = session(true);
    let first = handle(&mut s, 1, publish(QoS::ExactlyOnce, 9, "t")).unwrap();
    assert_eq!(first.len(), 1);
    route_all(&mut s, first, Routing::Delivered);
    // A retransmission before PUBREL is acknowledged but not routed again.
    let again = handle(&mut s, 2, publish(QoS::ExactlyOnce, 9, "t")).unwrap();
    assert!(again.is_empty());
    assert_eq!(
        sent(&mut s),
        vec![
            Packet::PubRec(Ack::new(pid(9))),
            Packet::PubRec(Ack::new(pid(9)))
        ]
    );
    handle(&mut s, 3, Packet::PubRel(Ack::new(pid(9)))).unwrap();
    assert_eq!(sent(&mut s), vec![Packet::PubComp(Ack::new(pid(9)))]);
    // After release the id is free: a new message with it is routed.
    assert_eq!(
        handle(&mut s, 4, publish(QoS::ExactlyOnce, 9, "t"))
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn awaiting_rel_cap_is_a_violation_and_times_out() {
    let lim = Limits {
        max_awaiting_rel: 2,
        ..limits()
    };
    let mut s = session(true);
    let mut ev = Vec::new();
    s.handle_packet(t(0), publish(QoS::ExactlyOnce, 1, "t"), &lim, &mut ev)
        .unwrap();
    s.handle_packet(t(0), publish(QoS::ExactlyOnce, 2, "t"), &lim, &mut ev)
        .unwrap();
    let err = s.handle_packet(t(0), publish(QoS::ExactlyOnce, 3, "t"), &lim, &mut ev);
    assert_eq!(err, Err(Violation::AwaitingRelFull));
    let timeout = lim.awaiting_rel_timeout.as_millis() as u64;
    assert_eq!(s.expire_awaiting_rel(t(timeout + 1), &lim), 2);
}

#[test]
fn outbound_qos1_window_queue_and_ack() {
    let lim = limits();
    let mut s = session(false);
    for _ in 0..4 {
        s.deliver(msg("t", QoS::AtLeastOnce), &lim, t(0));
    }
    // Window of 2: two PUBLISHes sent, two queued.
    let out = sent(&mut s);
    assert_eq!(out.len(), 2);
    assert_eq!((s.inflight_len(), s.queued_len()), (2, 2));
    // Queue cap 3: one more fits; past it the policy decides: held past the
    // cap (back-pressure, the default) or dropped.
    assert_eq!(
        s.deliver(msg("t", QoS::AtLeastOnce), &lim, t(0)),
        Outcome::Queued
    );
    assert_eq!(
        s.deliver(msg("t", QoS::AtLeastOnce), &lim, t(0)),
        Outcome::QueuedOverCap
    );
    assert!(!s.queue_drained(&lim));
    let dropping = Limits {
        slow_consumer_policy: crate::limits::SlowConsumerPolicy::Drop,
        ..lim.clone()
    };
    assert_eq!(
        s.deliver(msg("t", QoS::AtLeastOnce), &dropping, t(0)),
        Outcome::DroppedQueueFull
    );
    let Packet::Publish(first) = &out[0] else {
        panic!()
    };
    let first_pid = first.qos_pid.pid().unwrap();
    handle(&mut s, 1, Packet::PubAck(Ack::new(first_pid))).unwrap();
    // The ack opened the window: exactly one queued message moves in.
    assert_eq!(sent(&mut s).len(), 1);
    assert_eq!((s.inflight_len(), s.queued_len()), (2, 3));
}

#[test]
fn outbound_qos2_flow() {
    let lim = limits();
    let mut s = session(true);
    s.deliver(msg("t", QoS::ExactlyOnce), &lim, t(0));
    let [Packet::Publish(p)] = &sent(&mut s)[..] else {
        panic!()
    };
    let id = p.qos_pid.pid().unwrap();
    assert_eq!(p.qos_pid, QosPid::ExactlyOnce(id));
    handle(&mut s, 1, Packet::PubRec(Ack::new(id))).unwrap();
    assert_eq!(sent(&mut s), vec![Packet::PubRel(Ack::new(id))]);
    // PUBACK for a QoS 2 message is not the right ack: ignored.
    handle(&mut s, 2, Packet::PubAck(Ack::new(id))).unwrap();
    assert_eq!(s.inflight_len(), 1);
    handle(&mut s, 3, Packet::PubComp(Ack::new(id))).unwrap();
    assert_eq!(s.inflight_len(), 0);
}

#[test]
fn reconnect_resends_with_dup_and_pubrel() {
    let lim = limits();
    let mut s = session(false);
    s.deliver(msg("a", QoS::AtLeastOnce), &lim, t(0));
    s.deliver(msg("b", QoS::ExactlyOnce), &lim, t(0));
    let out = sent(&mut s);
    let Packet::Publish(q2) = &out[1] else {
        panic!()
    };
    let q2_id = q2.qos_pid.pid().unwrap();
    handle(&mut s, 1, Packet::PubRec(Ack::new(q2_id))).unwrap();
    s.detach(&lim);
    // Offline: QoS 1 is queued, QoS 0 is not.
    assert_eq!(
        s.deliver(msg("c", QoS::AtLeastOnce), &lim, t(0)),
        Outcome::Queued
    );
    assert_eq!(
        s.deliver(msg("d", QoS::AtMostOnce), &lim, t(0)),
        Outcome::DroppedOffline
    );
    s.attach(&connect(false, 10), &lim, t(5));
    s.resume(&lim, t(5));
    let out = sent(&mut s);
    let Packet::Publish(re) = &out[0] else {
        panic!()
    };
    assert!(
        re.dup,
        "unacknowledged PUBLISH resent with DUP [MQTT-4.4.0-1]"
    );
    assert_eq!(out[1], Packet::PubRel(Ack::new(q2_id)));
    // The queued message waits: the window (2) is full with a and b.
    assert_eq!(out.len(), 2);
}

#[test]
fn a_full_output_buffer_holds_or_drops_qos0_by_policy_and_queues_qos1() {
    let holding = Limits {
        max_write_buffer: 64,
        ..limits()
    };
    let mut s = session(true);
    let outcomes: Vec<_> = (0..20)
        .map(|_| s.deliver(msg("t", QoS::AtMostOnce), &holding, t(0)))
        .collect();
    assert!(outcomes.contains(&Outcome::SentOverCap));
    assert!(!outcomes.contains(&Outcome::DroppedSlowConsumer));
    assert!(!s.queue_drained(&holding), "over the cap");
    let lim = Limits {
        slow_consumer_policy: crate::limits::SlowConsumerPolicy::Drop,
        ..holding
    };
    let mut s = session(true);
    let mut outcomes = Vec::new();
    for _ in 0..20 {
        outcomes.push(s.deliver(msg("t", QoS::AtMostOnce), &lim, t(0)));
    }
    assert!(outcomes.contains(&Outcome::DroppedSlowConsumer));
    assert_eq!(
        s.deliver(msg("t", QoS::AtLeastOnce), &lim, t(0)),
        Outcome::Queued
    );
}

#[test]
fn keep_alive_expires_at_one_and_a_half() {
    let mut s = session(true);
    assert!(!s.keep_alive_expired(t(15_000)));
    assert!(s.keep_alive_expired(t(15_001)));
    handle(&mut s, 15_000, Packet::PingReq).unwrap();
    assert_eq!(sent(&mut s), vec![Packet::PingResp]);
    assert!(!s.keep_alive_expired(t(30_000)));
}

#[test]
fn will_on_abnormal_end_only() {
    let lim = limits();
    let mut s = session(true);
    assert!(s.detach(&lim).is_some());
    s.attach(&connect(true, 10), &lim, t(0));
    handle(&mut s, 1, Packet::Disconnect(Disconnect::default())).unwrap();
    assert!(s.detach(&lim).is_none(), "no will after DISCONNECT");
}

#[test]
fn violations_name_their_rule() {
    let mut s = session(true);
    let second = Packet::Connect(Box::new(connect(true, 10)));
    assert_eq!(
        handle(&mut s, 0, second).unwrap_err(),
        Violation::SecondConnect
    );
    assert!(matches!(
        handle(&mut s, 0, publish(QoS::AtMostOnce, 1, "a/+")),
        Err(Violation::InvalidTopic(_))
    ));
    assert_eq!(
        handle(&mut s, 0, Packet::PingResp).unwrap_err(),
        Violation::ServerOnlyPacket("PINGRESP")
    );
}

#[test]
fn subscribe_codes_and_unsubscribe() {
    let mut s = session(true);
    let sub = Packet::Subscribe(crate::codec::Subscribe {
        pid: pid(3),
        filters: vec![
            (
                Bytes::from_static(b"a/#"),
                SubOptions {
                    qos: QoS::ExactlyOnce,
                    ..Default::default()
                },
            ),
            (Bytes::from_static(b"a/#/b"), SubOptions::default()),
        ],
        properties: Properties::default(),
    });
    let events = handle(&mut s, 0, sub).unwrap();
    let [Event::Subscribe { codes, added, .. }] = &events[..] else {
        panic!()
    };
    assert_eq!(codes, &vec![2, 0x80]);
    assert_eq!(added.len(), 1);
    assert_eq!(s.subscription_count(), 1);
    let unsub = Packet::Unsubscribe(crate::codec::Unsubscribe {
        pid: pid(4),
        filters: vec![Bytes::from_static(b"a/#")],
        properties: Properties::default(),
    });
    let events = handle(&mut s, 0, unsub).unwrap();
    assert!(matches!(&events[..], [Event::Unsubscribe(f)] if f.len() == 1));
    assert_eq!(s.subscription_count(), 0);
}

#[test]
fn qos2_inbound_state_survives_a_reconnect() {
    let lim = limits();
    let mut s = session(false);
    let first = handle(&mut s, 1, publish(QoS::ExactlyOnce, 5, "t")).unwrap();
    assert_eq!(first.len(), 1);
    s.detach(&lim);
    s.attach(&connect(false, 10), &lim, t(2));
    // The client re-sends the unreleased PUBLISH after reconnecting: acknowledged,
    // not routed a second time [MQTT-4.3.3-2].
    let again = handle(&mut s, 3, publish(QoS::ExactlyOnce, 5, "t")).unwrap();
    assert!(again.is_empty(), "routed twice across a reconnect");
}

fn v5_session() -> Session {
    let mut c = connect(true, 10);
    c.protocol = Protocol::V5;
    let mut s = Session::new("c5".into(), &c, &limits(), t(0));
    s.tx.clear();
    s
}

fn subscribe(pid_: u16, filters: &[(&'static str, QoS)]) -> Packet {
    Packet::Subscribe(crate::codec::Subscribe {
        pid: pid(pid_),
        filters: filters
            .iter()
            .map(|(f, qos)| {
                let opts = SubOptions {
                    qos: *qos,
                    ..Default::default()
                };
                (Bytes::from_static(f.as_bytes()), opts)
            })
            .collect(),
        properties: Properties::default(),
    })
}

#[test]
fn client_publish_with_subscription_identifier_is_a_protocol_error() {
    let mut s = v5_session();
    let mut p = publish(QoS::AtMostOnce, 1, "t");
    if let Packet::Publish(p) = &mut p {
        p.properties
            .push(crate::codec::Property::SubscriptionIdentifier(3));
    }
    assert_eq!(
        handle(&mut s, 0, p).unwrap_err(),
        Violation::SubscriptionIdFromClient
    );
}

#[test]
fn v5_unsuback_codes_per_filter() {
    let mut s = v5_session();
    handle(&mut s, 0, subscribe(1, &[("a", QoS::AtMostOnce)])).unwrap();
    s.tx.clear();
    let unsub = Packet::Unsubscribe(crate::codec::Unsubscribe {
        pid: pid(2),
        filters: vec![
            Bytes::from_static(b"a"),
            Bytes::from_static(b"b"),
            Bytes::from_static(b"a/#/x"),
        ],
        properties: Properties::default(),
    });
    handle(&mut s, 0, unsub).unwrap();
    let [Packet::UnsubAck(ack)] = &sent(&mut s)[..] else {
        panic!()
    };
    assert_eq!(
        ack.codes,
        vec![
            reason::SUCCESS,
            reason::NO_SUBSCRIPTION_EXISTED,
            reason::TOPIC_FILTER_INVALID
        ]
    );
}

#[test]
fn subscription_cap_and_replacement() {
    let lim = Limits {
        max_subscriptions_per_client: 1,
        ..limits()
    };
    let mut s = v5_session();
    let mut ev = Vec::new();
    s.handle_packet(t(0), subscribe(1, &[("a", QoS::AtMostOnce)]), &lim, &mut ev)
        .unwrap();
    // The same filter again replaces it (new QoS) and does not count twice.
    s.handle_packet(
        t(0),
        subscribe(2, &[("a", QoS::ExactlyOnce), ("b", QoS::AtMostOnce)]),
        &lim,
        &mut ev,
    )
    .unwrap();
    let Event::Subscribe { codes, existed, .. } = &ev[1] else {
        panic!()
    };
    assert_eq!(codes, &vec![2, reason::QUOTA_EXCEEDED]);
    assert_eq!(existed, &vec![true]);
    assert_eq!(s.subscription_count(), 1);
    let (_, entry) = s.subscriptions().next().unwrap();
    assert_eq!(entry.opts.qos, QoS::ExactlyOnce);
}

#[test]
fn a_quiet_session_gives_back_its_traffic_buffers() {
    let lim = limits();
    let mut s = session(false);
    s.deliver(msg("t", QoS::AtLeastOnce), &lim, t(0));
    let Packet::Publish(p) = &sent(&mut s)[0] else {
        panic!()
    };
    let first = p.qos_pid.pid().unwrap();
    assert!(
        s.traffic_buffers().0 > 0,
        "written out, the buffer keeps its capacity"
    );
    // In flight: the window stays; the empty output buffer goes.
    s.release_idle_buffers();
    assert_eq!(s.traffic_buffers(), (0, true));
    assert_eq!(s.inflight_len(), 1);
    handle(&mut s, 1, Packet::PubAck(Ack::new(first))).unwrap();
    s.release_idle_buffers();
    assert_eq!(s.traffic_buffers(), (0, false));
    // The next message gets a fresh window and buffer.
    s.deliver(msg("t", QoS::AtLeastOnce), &lim, t(2));
    assert_eq!(sent(&mut s).len(), 1);
    assert_eq!(s.inflight_len(), 1);
}

/// What every session costs, idle or not: printed, and bounded so that growth
/// is a decision (an idle fleet holds one per device).
#[test]
fn a_session_stays_small() {
    let size = std::mem::size_of::<Session>();
    eprintln!("Session: {size} bytes");
    assert!(size <= 176, "Session grew to {size} bytes");
    // What a client under ACL rules adds before its first decision.
    let limited = std::mem::size_of::<LimitedAccess>();
    assert!(limited <= 24, "LimitedAccess grew to {limited} bytes");
}

/// Decodes `packet` out of a read buffer the size of a connection's, as the
/// reader does; returns it with the buffer's address range.
fn decoded_from_a_read_buffer(packet: Packet) -> (Packet, std::ops::Range<usize>) {
    let mut buf = BytesMut::with_capacity(4096);
    crate::codec::encode(&packet, Protocol::V3_1_1, &mut buf);
    let start = buf.as_ptr() as usize;
    let range = start..start + buf.capacity();
    let decoded = decode(&mut buf, Protocol::V3_1_1, u32::MAX)
        .unwrap()
        .unwrap();
    (decoded, range)
}

/// What a session keeps beyond the read (a subscription, a retained
/// message) must not be a slice of the read buffer: a few bytes would keep
/// the whole buffer alive for as long as the session or the retained topic.
#[test]
fn what_outlives_the_read_does_not_hold_the_read_buffer() {
    let mut s = session(true);
    let subscribe = Packet::Subscribe(crate::codec::Subscribe {
        pid: pid(1),
        filters: vec![(Bytes::from_static(b"dev/7/cmd"), SubOptions::default())],
        properties: Properties::default(),
    });
    let (subscribe, read_buffer) = decoded_from_a_read_buffer(subscribe);
    handle(&mut s, 1, subscribe).unwrap();
    let (filter, _) = s.subscriptions().next().unwrap();
    let at = filter.topic_filter().as_ptr() as usize;
    assert!(
        !read_buffer.contains(&at),
        "the subscription is a slice of the read buffer"
    );

    let mut retained = publish(QoS::AtMostOnce, 1, "state/7");
    if let Packet::Publish(p) = &mut retained {
        p.retain = true;
    }
    let (retained, read_buffer) = decoded_from_a_read_buffer(retained);
    let events = handle(&mut s, 2, retained).unwrap();
    let [Event::Publish { msg, .. }] = &events[..] else {
        panic!("{events:?}")
    };
    for part in [msg.topic.as_bytes(), &msg.payload[..]] {
        let at = part.as_ptr() as usize;
        assert!(
            !read_buffer.contains(&at),
            "the retained message is a slice of the read buffer"
        );
    }
}
