//! Several cores in one process, the mesh pumped by hand: cross-core routing
//! behaves as if all sessions were on one core.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::*;
use crate::access::{Access, Grant, Permissions};
use crate::codec::{decode, Connect, Pid, Properties, Protocol, Publish, QoS, QosPid, Subscribe};

const T0: Time = Time::ZERO;

/// A 3.1.1 CONNECT for `id`.
fn v3_connect(id: &str, clean: bool) -> Connect {
    Connect {
        protocol: Protocol::V3_1_1,
        clean_start: clean,
        keep_alive: 0,
        client_id: Bytes::copy_from_slice(id.as_bytes()),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
        bridge: false,
    }
}

struct Cluster {
    cores: Vec<Core>,
}

impl Cluster {
    fn new(n: usize) -> Cluster {
        let limits = Arc::new(Limits::default());
        let cores = (0..n)
            .map(|i| Core::new(i, n, limits.clone(), SharedStrategy::RoundRobin))
            .collect();
        Cluster { cores }
    }

    /// Carries every outbox batch to its core, as the server's mesh would, until
    /// all cores are quiet.
    fn settle(&mut self) {
        loop {
            let mut moved = Vec::new();
            for core in &mut self.cores {
                moved.extend(core.outbox.take_batches());
            }
            if moved.is_empty() {
                return;
            }
            for (dest, batch) in moved {
                for msg in batch {
                    self.cores[dest].handle_mesh(msg, T0);
                }
            }
        }
    }

    fn connect(&mut self, core: usize, id: &str, clean: bool) -> SessionKey {
        self.connect_with(core, id, clean, Permissions::all())
    }

    fn connect_with(&mut self, core: usize, id: &str, clean: bool, p: Permissions) -> SessionKey {
        let c = v3_connect(id, clean);
        let attached = self.cores[core].connect(&c, id.into(), 1, T0, false, p);
        self.take_packets(core, attached.key);
        attached.key
    }

    fn subscribe(&mut self, core: usize, key: SessionKey, filter: &'static str, qos: QoS) {
        let sub = Packet::Subscribe(Subscribe {
            pid: Pid::new(1).unwrap(),
            filters: vec![(
                Bytes::from_static(filter.as_bytes()),
                SubOptions {
                    qos,
                    ..Default::default()
                },
            )],
            properties: Properties::default(),
        });
        let next = self.cores[core].handle_packet(key, T0, sub).unwrap();
        self.cores[core].outbox.resume.clear();
        self.settle();
        let resumed = std::mem::take(&mut self.cores[core].outbox.resume);
        match next {
            Next::Pause => assert_eq!(resumed, [1], "every core acknowledged the interest"),
            Next::Continue => assert!(resumed.is_empty()),
            Next::Disconnect => panic!("SUBSCRIBE ended the connection"),
        }
    }

    fn publish(
        &mut self,
        core: usize,
        key: SessionKey,
        topic: &'static str,
        retain: bool,
        payload: &'static [u8],
    ) {
        let p = Packet::Publish(Publish {
            dup: false,
            qos_pid: QosPid::AtLeastOnce(Pid::new(9).unwrap()),
            retain,
            topic: Bytes::from_static(topic.as_bytes()),
            properties: Properties::default(),
            payload: Bytes::from_static(payload),
        });
        self.cores[core].handle_packet(key, T0, p).unwrap();
        self.settle();
    }

    fn take_packets(&mut self, core: usize, key: SessionKey) -> Vec<Packet> {
        let tx = match self.cores[core].take_tx(key, 1, BytesMut::new()) {
            Ok(tx) => tx,
            Err(_) => return Vec::new(),
        };
        let mut buf = tx;
        let mut out = Vec::new();
        while let Some(p) = decode(&mut buf, Protocol::V3_1_1, u32::MAX).unwrap() {
            out.push(p);
        }
        out
    }

    fn publishes(&mut self, core: usize, key: SessionKey) -> Vec<(String, bool)> {
        self.take_packets(core, key)
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => {
                    Some((String::from_utf8(p.topic.to_vec()).unwrap(), p.retain))
                }
                _ => None,
            })
            .collect()
    }
}

#[test]
fn publish_reaches_subscriber_on_another_core() {
    let mut c = Cluster::new(3);
    let sub = c.connect(2, "sub", true);
    c.subscribe(2, sub, "a/+", QoS::AtLeastOnce);
    c.take_packets(2, sub);
    let publ = c.connect(0, "pub", true);
    c.publish(0, publ, "a/b", false, b"1");
    assert_eq!(c.publishes(2, sub), vec![("a/b".to_string(), false)]);
    // The uninvolved core received nothing to deliver.
    assert_eq!(c.cores[1].counters.messages_sent, 0);
}

#[test]
fn unsubscribe_withdraws_interest() {
    let mut c = Cluster::new(2);
    let sub = c.connect(1, "sub", true);
    c.subscribe(1, sub, "x", QoS::AtMostOnce);
    c.cores[1].disconnected(sub, 1, T0);
    c.settle();
    let publ = c.connect(0, "pub", true);
    c.publish(0, publ, "x", false, b"1");
    let mut hits = 0;
    c.cores[0].interest.for_each_match("x", |_| hits += 1);
    assert_eq!(hits, 0, "interest removed on every core");
}

#[test]
fn retained_is_replicated_and_cleared() {
    let mut c = Cluster::new(2);
    let publ = c.connect(0, "pub", true);
    c.publish(0, publ, "r/1", true, b"v");
    let sub = c.connect(1, "sub", true);
    c.subscribe(1, sub, "r/#", QoS::AtLeastOnce);
    assert_eq!(c.publishes(1, sub), vec![("r/1".to_string(), true)]);
    // Live forwarding of a retained publish to an existing subscriber: RETAIN=0.
    c.publish(0, publ, "r/2", true, b"v");
    assert_eq!(c.publishes(1, sub), vec![("r/2".to_string(), false)]);
    // An empty payload clears it everywhere.
    c.publish(0, publ, "r/1", true, b"");
    c.take_packets(1, sub);
    let late = c.connect(1, "late", true);
    c.subscribe(1, late, "r/#", QoS::AtLeastOnce);
    assert_eq!(c.publishes(1, late), vec![("r/2".to_string(), true)]);
}

#[test]
fn overlapping_subscriptions_deliver_once_at_max_qos() {
    let mut c = Cluster::new(1);
    let sub = c.connect(0, "sub", true);
    c.subscribe(0, sub, "a/#", QoS::AtMostOnce);
    c.subscribe(0, sub, "a/+", QoS::AtLeastOnce);
    c.take_packets(0, sub);
    let publ = c.connect(0, "pub", true);
    c.publish(0, publ, "a/b", false, b"1");
    let got = c.take_packets(0, sub);
    assert_eq!(got.len(), 1);
    let Packet::Publish(p) = &got[0] else {
        panic!()
    };
    assert_eq!(p.qos_pid.qos(), QoS::AtLeastOnce);
}

#[test]
fn takeover_resumes_persistent_session() {
    let mut c = Cluster::new(1);
    let first = c.connect(0, "dev", false);
    c.subscribe(0, first, "t", QoS::AtLeastOnce);
    let connect = v3_connect("dev", false);
    let again = c.cores[0].connect(&connect, "dev".into(), 2, T0, false, Permissions::all());
    assert!(again.session_present);
    assert_eq!(again.key, first);
    assert_eq!(
        c.cores[0].outbox.close,
        [(1, CloseReason::SessionTakenOver)]
    );
    // The old connection's end is ignored: the session belongs to connection 2.
    c.cores[0].disconnected(first, 1, T0);
    assert_eq!(c.cores[0].counters.sessions_current, 1);
}

#[test]
fn concurrent_retained_updates_converge_on_every_replica() {
    let mut c = Cluster::new(3);
    let keys: Vec<SessionKey> = (0..3)
        .map(|i| c.connect(i, &format!("p{i}"), true))
        .collect();
    // Three cores update the same retained topic before any mesh message moves.
    for (core, payload) in [(0, b"a"), (1, b"b"), (2, b"c")] {
        let p = Packet::Publish(Publish {
            dup: false,
            qos_pid: QosPid::AtMostOnce,
            retain: true,
            topic: Bytes::from_static(b"same/topic"),
            properties: Properties::default(),
            payload: Bytes::from_static(payload),
        });
        c.cores[core].handle_packet(keys[core], T0, p).unwrap();
    }
    c.settle();
    let held: Vec<Vec<u8>> = c
        .cores
        .iter()
        .map(|core| core.retained.get("same/topic").unwrap().payload.to_vec())
        .collect();
    assert!(
        held.iter().all(|p| *p == held[0]),
        "replicas differ: {held:?}"
    );
}

/// Two members of one shared group: a persistent one on core 0, a clean one on
/// core 1, their SUBACKs consumed.
fn two_members(
    c: &mut Cluster,
    prefix: &str,
    share: &'static str,
    qos: QoS,
) -> (SessionKey, SessionKey) {
    let m1 = c.connect(0, &format!("{prefix}1"), false);
    let m2 = c.connect(1, &format!("{prefix}2"), true);
    c.subscribe(0, m1, share, qos);
    c.subscribe(1, m2, share, qos);
    c.take_packets(0, m1);
    c.take_packets(1, m2);
    (m1, m2)
}

#[test]
fn persistent_shared_member_hands_unacked_messages_over_on_disconnect() {
    let mut c = Cluster::new(2);
    let (m1, m2) = two_members(&mut c, "m", "$share/g/t", QoS::AtLeastOnce);
    let publ = c.connect(0, "pub", true);
    for _ in 0..4 {
        c.publish(0, publ, "t", false, b"x");
    }
    let (got1, got2) = (c.publishes(0, m1).len(), c.publishes(1, m2).len());
    assert_eq!((got1, got2), (2, 2), "round-robin over the two members");
    // m1 goes away without acknowledging; its session stays (clean session 0).
    c.cores[0].disconnected(m1, 1, T0);
    c.settle();
    assert_eq!(
        c.publishes(1, m2).len(),
        2,
        "m1's unacknowledged messages reach m2"
    );
    assert!(
        c.cores[0].session(m1).is_some(),
        "the persistent session is kept"
    );
}

#[test]
fn persistent_client_expiration_ends_offline_311_sessions() {
    let limits = Arc::new(Limits {
        persistent_client_expiration: 60,
        ..Limits::default()
    });
    let mut core = Core::new(0, 1, limits, SharedStrategy::RoundRobin);
    let connect = v3_connect("dev", false);
    let a = core.connect(&connect, "dev".into(), 1, T0, false, Permissions::all());
    core.disconnected(a.key, 1, Time::from_millis(1_000));
    core.tick(Time::from_millis(60_999));
    assert!(
        core.session(a.key).is_some(),
        "kept until the expiration passes"
    );
    core.tick(Time::from_millis(61_000));
    assert!(core.session(a.key).is_none(), "ended once it passed");
    assert_eq!(
        core.outbox.take_batches().count(),
        0,
        "one core: nothing to send"
    );
}

#[test]
fn shared_qos2_in_flight_stays_with_its_member() {
    let mut c = Cluster::new(2);
    let (m1, m2) = two_members(&mut c, "q2m", "$share/g/q2", QoS::ExactlyOnce);
    let publ = c.connect(0, "q2pub", true);
    for _ in 0..2 {
        let p = Packet::Publish(Publish {
            dup: false,
            qos_pid: QosPid::ExactlyOnce(Pid::new(7).unwrap()),
            retain: false,
            topic: Bytes::from_static(b"q2"),
            properties: Properties::default(),
            payload: Bytes::from_static(b"x"),
        });
        c.cores[0].handle_packet(publ, T0, p).unwrap();
        c.settle();
        // Release it so the next publish with the same id is routed again.
        let rel = Packet::PubRel(crate::codec::Ack::new(Pid::new(7).unwrap()));
        c.cores[0].handle_packet(publ, T0, rel).unwrap();
    }
    assert_eq!(c.publishes(0, m1).len(), 1);
    assert_eq!(c.publishes(1, m2).len(), 1);
    c.cores[0].disconnected(m1, 1, T0);
    c.settle();
    // QoS 2 delivery to m1 had started: it must not reach m2 [MQTT-4.8.2-5].
    assert!(c.publishes(1, m2).is_empty());
    assert_eq!(
        c.cores[0].session(m1).unwrap().inflight_len(),
        1,
        "kept for m1"
    );
}

/// A retained PUBLISH of `topic`.
fn retained(topic: &'static str, qos_pid: QosPid) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos_pid,
        retain: true,
        topic: Bytes::from_static(topic.as_bytes()),
        properties: Properties::default(),
        payload: Bytes::from_static(b"v"),
    })
}

#[test]
fn retained_puback_waits_until_every_replica_holds_the_message() {
    let mut c = Cluster::new(3);
    let topic = "status/dev-1";
    let owner = owner_core(topic, 3);
    let origin = (owner + 1) % 3;
    let publ = c.connect(origin, "pub", true);
    let p = retained(topic, QosPid::AtLeastOnce(Pid::new(5).unwrap()));
    let next = c.cores[origin].handle_packet(publ, T0, p).unwrap();
    assert_eq!(next, Next::Pause, "the PUBACK waits for the replicas");
    assert!(c.cores[origin].is_paused(publ, 1));
    assert!(c.take_packets(origin, publ).is_empty(), "no PUBACK yet");
    c.settle();
    for core in &c.cores {
        assert!(
            core.retained.get(topic).is_some(),
            "core {} lacks it",
            core.id
        );
    }
    assert_eq!(c.cores[origin].outbox.resume, [1]);
    assert!(!c.cores[origin].is_paused(publ, 1));
    let acks = c.take_packets(origin, publ);
    assert!(
        matches!(acks.as_slice(), [Packet::PubAck(a)] if a.pid.get() == 5),
        "{acks:?}"
    );
}

#[test]
fn retained_qos0_and_single_core_publishes_are_not_held() {
    let mut single = Cluster::new(1);
    let publ = single.connect(0, "pub", true);
    let p = retained("r", QosPid::AtLeastOnce(Pid::new(1).unwrap()));
    let next = single.cores[0].handle_packet(publ, T0, p).unwrap();
    assert_eq!(next, Next::Continue, "one core: nothing to wait for");
    assert_eq!(single.take_packets(0, publ).len(), 1, "PUBACK at once");

    let mut c = Cluster::new(2);
    let publ = c.connect(0, "pub0", true);
    let p = retained("r", QosPid::AtMostOnce);
    assert_eq!(
        c.cores[0].handle_packet(publ, T0, p).unwrap(),
        Next::Continue
    );
}

/// Reads and writes only topics under `prefix`; subscriptions to `#` are
/// granted but checked, anything outside `prefix` refused.
#[derive(Debug)]
struct Under(&'static str);

impl Access for Under {
    fn may_publish(&self, topic: &str) -> bool {
        topic.starts_with(self.0)
    }
    fn may_read(&self, topic: &str) -> bool {
        topic.starts_with(self.0)
    }
    fn subscribe(&self, filter: &str) -> Grant {
        match filter {
            "#" => Grant::Checked,
            f if f.starts_with(self.0) => Grant::All,
            _ => Grant::Refused,
        }
    }
}

fn under(prefix: &'static str) -> Permissions {
    Permissions::limited(Arc::new(Under(prefix)))
}

fn suback_codes(packets: &[Packet]) -> Vec<u8> {
    packets
        .iter()
        .find_map(|p| match p {
            Packet::SubAck(s) => Some(s.codes.clone()),
            _ => None,
        })
        .expect("a SUBACK")
}

#[test]
fn denied_publish_is_acknowledged_but_not_routed() {
    let mut c = Cluster::new(2);
    let sub = c.connect(1, "sub", true);
    c.subscribe(1, sub, "#", QoS::AtLeastOnce);
    c.take_packets(1, sub);
    let publ = c.connect_with(0, "pub", true, under("mine/"));
    c.publish(0, publ, "theirs/x", false, b"1");
    let acks = c.take_packets(0, publ);
    assert!(
        matches!(acks[..], [Packet::PubAck(_)]),
        "3.1.1: the QoS flow completes"
    );
    assert!(c.publishes(1, sub).is_empty());
    assert_eq!(c.cores[0].counters.publishes_denied, 1);
    c.publish(0, publ, "mine/x", false, b"2");
    assert_eq!(c.publishes(1, sub), vec![("mine/x".to_string(), false)]);
}

#[test]
fn refused_filter_is_refused_alone() {
    let mut c = Cluster::new(1);
    let sub = c.connect_with(0, "sub", true, under("mine/"));
    let p = Packet::Subscribe(Subscribe {
        pid: Pid::new(1).unwrap(),
        filters: vec![
            (Bytes::from_static(b"theirs/#"), SubOptions::default()),
            (Bytes::from_static(b"mine/#"), SubOptions::default()),
        ],
        properties: Properties::default(),
    });
    c.cores[0].handle_packet(sub, T0, p).unwrap();
    assert_eq!(suback_codes(&c.take_packets(0, sub)), [0x80, 0]);
    assert_eq!(c.cores[0].counters.subscribes_denied, 1);
    assert_eq!(c.cores[0].session(sub).unwrap().subscription_count(), 1);
}

#[test]
fn checked_wildcard_delivers_only_readable_topics_retained_included() {
    let mut c = Cluster::new(2);
    let publ = c.connect(0, "pub", true);
    c.publish(0, publ, "secret/r", true, b"s");
    c.publish(0, publ, "mine/r", true, b"m");
    let sub = c.connect_with(1, "sub", true, under("mine/"));
    c.subscribe(1, sub, "#", QoS::AtLeastOnce);
    assert_eq!(c.publishes(1, sub), vec![("mine/r".to_string(), true)]);
    c.publish(0, publ, "secret/live", false, b"s");
    c.publish(0, publ, "mine/live", false, b"m");
    assert_eq!(c.publishes(1, sub), vec![("mine/live".to_string(), false)]);
    assert_eq!(c.cores[1].counters.deliveries_denied, 1);
}

#[test]
fn will_is_published_only_where_its_client_may_write() {
    let mut c = Cluster::new(1);
    let sub = c.connect(0, "sub", true);
    c.subscribe(0, sub, "#", QoS::AtMostOnce);
    c.take_packets(0, sub);
    for (id, topic, published) in [("w1", "theirs/will", false), ("w2", "mine/will", true)] {
        let mut connect = v3_connect(id, true);
        connect.will = Some(crate::codec::Will {
            topic: Bytes::from_static(topic.as_bytes()),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::default(),
        });
        let a = c.cores[0].connect(&connect, id.into(), 7, T0, false, under("mine/"));
        c.cores[0].disconnected(a.key, 7, T0);
        let got = c.publishes(0, sub);
        assert_eq!(got.len(), usize::from(published), "will on {topic}");
    }
    assert_eq!(c.cores[0].counters.wills_denied, 1);
}

#[test]
fn reauthorize_revokes_and_rechecks_subscriptions() {
    let mut c = Cluster::new(2);
    let sub = c.connect(1, "sub", true);
    c.subscribe(1, sub, "theirs/#", QoS::AtMostOnce);
    c.subscribe(1, sub, "#", QoS::AtMostOnce);
    c.take_packets(1, sub);
    c.cores[1].reauthorize(|id, user| {
        assert_eq!((id, user), ("sub", None));
        under("mine/")
    });
    c.settle();
    assert_eq!(c.cores[1].counters.subscriptions_revoked, 1);
    let publ = c.connect(0, "pub", true);
    c.publish(0, publ, "theirs/x", false, b"1");
    c.publish(0, publ, "mine/x", false, b"2");
    assert_eq!(c.publishes(1, sub), vec![("mine/x".to_string(), false)]);
    // Rules that allow everything again stop checking deliveries.
    c.cores[1].reauthorize(|_, _| Permissions::all());
    c.publish(0, publ, "theirs/y", false, b"3");
    assert_eq!(c.publishes(1, sub), vec![("theirs/y".to_string(), false)]);
}

#[test]
fn shared_group_skips_a_member_that_may_not_read() {
    let mut c = Cluster::new(1);
    let blind = c.connect_with(0, "blind", true, under("other/"));
    let reader = c.connect(0, "reader", true);
    c.subscribe(0, blind, "$share/g/#", QoS::AtMostOnce);
    c.subscribe(0, reader, "$share/g/#", QoS::AtMostOnce);
    c.take_packets(0, blind);
    c.take_packets(0, reader);
    let publ = c.connect(0, "pub", true);
    for _ in 0..4 {
        c.publish(0, publ, "mine/x", false, b"1");
    }
    assert!(c.publishes(0, blind).is_empty());
    assert_eq!(c.publishes(0, reader).len(), 4);
}

/// What one core's journal holds so far.
fn take_journal(c: &mut Cluster, core: usize) -> Vec<Bytes> {
    std::mem::take(&mut c.cores[core].outbox.journal)
}

#[test]
fn a_journal_brings_sessions_and_retained_back_on_another_core_count() {
    use crate::durable::{journal::Replay, Epoch};
    let epoch = Epoch(1_000_000);
    let mut old = Cluster::new(2);
    for core in &mut old.cores {
        core.keep_journal(epoch);
    }
    let sub_id = "persistent-sub";
    let sub = old.connect(1, sub_id, false);
    old.subscribe(1, sub, "q/#", QoS::AtLeastOnce);
    old.take_packets(1, sub);
    old.cores[1].disconnected(sub, 1, T0);
    let publ = old.connect(0, "pub", true);
    for i in 0..5u8 {
        let topic: &'static str = ["q/0", "q/1", "q/2", "q/3", "q/4"][usize::from(i)];
        old.publish(0, publ, topic, false, b"m");
    }
    old.publish(0, publ, "r/kept", true, b"state");
    old.publish(0, publ, "r/gone", true, b"x");
    old.publish(0, publ, "r/gone", true, b"");
    // The store: each core's records, replayed (order within a core kept).
    let mut replay = Replay::new(epoch);
    for core in 0..2 {
        for record in take_journal(&mut old, core) {
            replay.apply(record).expect("replays");
        }
    }
    let recovered = replay.finish();
    assert_eq!(
        recovered.sessions.len(),
        1,
        "the clean publisher was never stored"
    );
    assert_eq!(recovered.sessions[0].queue.len(), 5);
    let topics: Vec<_> = recovered
        .retained
        .iter()
        .map(|m| m.topic.as_str().to_owned())
        .collect();
    assert_eq!(topics, ["r/kept"]);
    // Three cores now: each session goes to the core its id hashes to.
    let mut new = Cluster::new(3);
    for core in &mut new.cores {
        core.keep_journal(epoch);
    }
    let home = owner_core(sub_id, 3);
    for image in recovered.sessions {
        new.cores[home].restore(image, T0);
    }
    for msg in recovered.retained {
        let msg = Arc::new(msg);
        for core in &mut new.cores {
            core.restore_retained(msg.clone(), T0);
        }
    }
    new.settle();
    // The subscriber comes back: session present, the five messages in order.
    let c = v3_connect(sub_id, false);
    let attached = new.cores[home].connect(&c, sub_id.into(), 1, T0, false, Permissions::all());
    assert!(attached.session_present);
    let packets = {
        let tx = new.cores[home]
            .take_tx(attached.key, 1, BytesMut::new())
            .unwrap();
        let mut buf = tx;
        let mut out = Vec::new();
        while let Some(p) = decode(&mut buf, Protocol::V3_1_1, u32::MAX).unwrap() {
            out.push(p);
        }
        out
    };
    let topics: Vec<String> = packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(String::from_utf8(p.topic.to_vec()).unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(topics, ["q/0", "q/1", "q/2", "q/3", "q/4"]);
    // Its subscription is in force on every core again, and the retained
    // message is on every replica.
    let publ = new.connect(2, "pub2", true);
    let late = new.connect(1, "late", true);
    new.subscribe(1, late, "r/#", QoS::AtLeastOnce);
    assert_eq!(new.publishes(1, late), vec![("r/kept".to_string(), true)]);
    new.publish(2, publ, "q/5", false, b"after");
    let again = new.publishes(home, attached.key);
    assert!(
        again.iter().any(|(t, _)| t == "q/5"),
        "subscription restored: {again:?}"
    );
}

#[test]
fn a_delayed_will_outlives_a_restart_and_goes_out_when_due() {
    use crate::codec::{Property, Will};
    use crate::durable::{journal::Replay, Epoch};
    let epoch = Epoch(5_000_000);
    let mut old = Cluster::new(1);
    old.cores[0].keep_journal(epoch);
    let mut connect = v3_connect("dev", false);
    connect.protocol = Protocol::V5;
    connect.properties = Properties(vec![Property::SessionExpiryInterval(3600)]);
    connect.will = Some(Will {
        topic: Bytes::from_static(b"status/dev"),
        payload: Bytes::from_static(b"offline"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties(vec![Property::WillDelayInterval(60)]),
    });
    let a = old.cores[0].connect(&connect, "dev".into(), 1, T0, false, Permissions::all());
    old.cores[0].disconnected(a.key, 1, T0);
    let mut replay = Replay::new(epoch);
    for record in take_journal(&mut old, 0) {
        replay.apply(record).expect("replays");
    }
    let recovered = replay.finish();
    assert_eq!(recovered.wills.len(), 1, "the will waits out its delay");
    // The next run started 10 s later (wall clock): the will is due 50 s in.
    let mut new = Cluster::new(2);
    let later = Epoch(epoch.0 + 10_000);
    for core in &mut new.cores {
        core.keep_journal(later);
    }
    let home = owner_core("dev", 2);
    for image in recovered.sessions {
        new.cores[home].restore(image, T0);
    }
    for (client, at, will) in recovered.wills {
        let at = later.to_time(epoch.to_unix(at));
        new.cores[home].restore_delayed_will(&client, at, will);
    }
    new.settle();
    let watcher = new.connect(1 - home, "watcher", true);
    new.subscribe(1 - home, watcher, "status/#", QoS::AtMostOnce);
    new.cores[home].tick(Time::from_millis(49_000));
    new.settle();
    assert!(new.publishes(1 - home, watcher).is_empty(), "not due yet");
    new.cores[home].tick(Time::from_millis(50_000));
    new.settle();
    assert_eq!(
        new.publishes(1 - home, watcher),
        vec![("status/dev".to_string(), false)]
    );
}

#[test]
fn a_held_publisher_that_reconnects_with_a_clean_session_is_still_held() {
    let limits = Limits {
        max_write_buffer: 64,
        ..Limits::default()
    };
    let mut c = Cluster {
        cores: vec![Core::new(
            0,
            1,
            Arc::new(limits),
            SharedStrategy::RoundRobin,
        )],
    };
    let sub = c.connect(0, "sub", true);
    c.subscribe(0, sub, "t/#", QoS::AtMostOnce);
    let publ = c.connect(0, "pub", true);
    while !c.cores[0].is_held_back(publ, 1) {
        c.publish(0, publ, "t/1", false, b"0123456789abcdef");
    }
    c.cores[0].disconnected(publ, 1, T0);
    let again = c.cores[0]
        .connect(
            &v3_connect("pub", true),
            "pub".into(),
            2,
            T0,
            false,
            Permissions::all(),
        )
        .key;
    assert!(
        c.cores[0].is_held_back(again, 2),
        "a new session under a held client id starts held"
    );
    let out = c.take_packets(0, sub);
    assert!(!out.is_empty());
    c.cores[0].written(sub, 1, 1000, T0);
    assert!(
        !c.cores[0].is_held_back(again, 2),
        "released once the subscriber drained"
    );
    assert!(c.cores[0].orphan_holds.is_empty());
}

#[test]
fn drops_are_told_once_per_client_and_reason_and_all_counted() {
    let mut c = Cluster::new(1);
    let sub = c.connect(0, "dev", false);
    c.subscribe(0, sub, "t", QoS::AtMostOnce);
    c.cores[0].disconnected(sub, 1, T0);
    let publ = c.connect(0, "pub", true);
    for _ in 0..3 {
        c.publish(0, publ, "t", false, b"x");
    }
    assert_eq!(c.cores[0].counters.dropped_offline_qos0, 3);
    let told: Vec<_> = c.cores[0]
        .outbox
        .notices
        .iter()
        .filter_map(|n| match n {
            Notice::Dropped { client, reason } => Some((client.to_string(), *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(told, [("dev".to_string(), "offline_qos0")]);
}

#[test]
fn a_session_entry_stays_small() {
    // The slab holds one per session and doubles its capacity as it grows.
    let size = std::mem::size_of::<Entry>();
    eprintln!("Entry: {size} bytes");
    assert!(size <= 64, "Entry grew to {size} bytes");
}

/// What the cores told the cluster link, drained.
fn take_cluster(c: &mut Cluster) -> (Vec<String>, Vec<(String, bool)>) {
    let (mut published, mut interest) = (Vec::new(), Vec::new());
    for core in &mut c.cores {
        for msg in core.outbox.cluster.drain(..) {
            match msg {
                ClusterMsg::Publish(m) => published.push(m.topic.as_str().to_owned()),
                ClusterMsg::Interest { filter, add } => {
                    interest.push((filter.as_str().to_owned(), add))
                }
                ClusterMsg::SharedInterest { share, add } => {
                    interest.push((format!("shared {share:?}"), add))
                }
                ClusterMsg::Session { .. } => {}
            }
        }
    }
    (published, interest)
}

/// The session records the cores told the link, drained: client id and
/// the filters of its meta (`None`: ended).
fn take_session_records(c: &mut Cluster) -> Vec<(String, Option<Vec<String>>)> {
    let mut records = Vec::new();
    for core in &mut c.cores {
        for msg in core.outbox.cluster.drain(..) {
            if let ClusterMsg::Session {
                client_id, meta, ..
            } = msg
            {
                let filters = meta.map(|m| {
                    let subs = m.subscriptions.iter();
                    subs.map(|(f, _)| f.as_str().to_owned()).collect()
                });
                records.push((client_id.to_string(), filters));
            }
        }
    }
    records
}

fn remote(topic: &'static str, qos: QoS, retain: bool) -> Arc<crate::message::Message> {
    let topic = crate::topic::TopicName::new(Bytes::from_static(topic.as_bytes()), 16).unwrap();
    crate::message::Message::new(topic, Bytes::from_static(b"r"), qos, retain)
        .from_client("elsewhere".into())
        .shared()
}

fn filter(text: &'static str) -> crate::topic::TopicFilter {
    crate::topic::TopicFilter::new(Bytes::from_static(text.as_bytes()), 16).unwrap()
}

#[test]
fn a_cluster_core_tells_the_link_its_filters_and_its_clients_publishes_once() {
    let mut c = Cluster::new(2);
    let early = c.connect(1, "early", true);
    c.subscribe(1, early, "held/before", QoS::AtMostOnce);
    for core in &mut c.cores {
        core.join_cluster();
    }
    let (_, interest) = take_cluster(&mut c);
    assert_eq!(
        interest,
        [("held/before".to_owned(), true)],
        "filters held before joining"
    );
    let sub = c.connect(1, "sub", true);
    c.subscribe(1, sub, "a/+", QoS::AtLeastOnce);
    let other = c.connect(1, "other", true);
    c.subscribe(1, other, "a/+", QoS::AtLeastOnce);
    let publ = c.connect(0, "pub", true);
    c.publish(0, publ, "a/b", false, b"1");
    c.publish(0, publ, "$SYS/x", false, b"1");
    let (published, interest) = take_cluster(&mut c);
    assert_eq!(
        published,
        ["a/b"],
        "once, from the core it was published on; $SYS stays"
    );
    assert_eq!(
        interest,
        [("a/+".to_owned(), true)],
        "the first subscriber only"
    );
    c.cores[1].disconnected(sub, 1, T0);
    c.cores[1].disconnected(other, 1, T0);
    c.settle();
    let (_, interest) = take_cluster(&mut c);
    assert_eq!(
        interest,
        [("a/+".to_owned(), false)],
        "the last subscriber gone"
    );
}

#[test]
fn a_message_from_another_node_reaches_the_subscribers_of_its_filter_only() {
    let mut c = Cluster::new(1);
    c.cores[0].join_cluster();
    let wide = c.connect(0, "wide", true);
    c.subscribe(0, wide, "a/#", QoS::AtLeastOnce);
    let narrow = c.connect(0, "narrow", true);
    c.subscribe(0, narrow, "a/b", QoS::AtLeastOnce);
    c.take_packets(0, wide);
    c.take_packets(0, narrow);
    let msg = remote("a/b", QoS::AtLeastOnce, false);
    assert_eq!(c.cores[0].deliver_from_cluster(&msg, &filter("a/#"), T0), 1);
    assert_eq!(c.publishes(0, wide), [("a/b".to_owned(), false)]);
    assert!(
        c.publishes(0, narrow).is_empty(),
        "its own filter brings its copy"
    );
    let (published, _) = take_cluster(&mut c);
    assert!(published.is_empty(), "never sent back to the cluster");
    // NATS's `*` matched a `$` topic that MQTT's leading `+` must not.
    let plus = c.connect(0, "plus", true);
    c.subscribe(0, plus, "+/b", QoS::AtMostOnce);
    c.take_packets(0, plus);
    let dollar = remote("$x/b", QoS::AtMostOnce, false);
    assert_eq!(
        c.cores[0].deliver_from_cluster(&dollar, &filter("+/b"), T0),
        0
    );
    assert!(c.publishes(0, plus).is_empty());
}

#[test]
fn a_retained_message_from_another_node_is_stored_on_every_core() {
    let mut c = Cluster::new(2);
    c.cores[0].join_cluster();
    c.cores[1].join_cluster();
    c.cores[1].retain_from_cluster(&remote("r/1", QoS::AtLeastOnce, true), T0);
    c.settle();
    for core in 0..2 {
        let late = c.connect(core, &format!("late{core}"), true);
        c.subscribe(core, late, "r/#", QoS::AtLeastOnce);
        assert_eq!(c.publishes(core, late), [("r/1".to_owned(), true)]);
    }
    let (published, _) = take_cluster(&mut c);
    assert!(published.is_empty(), "a replica update is not sent back");
}

fn share(text: &'static str) -> crate::topic::SharedFilter {
    match crate::topic::SubFilter::parse(filter(text)).unwrap() {
        crate::topic::SubFilter::Shared(s) => s,
        other => panic!("{other:?} is not shared"),
    }
}

#[test]
fn shared_groups_go_through_the_cluster_while_its_link_is_up() {
    let mut c = Cluster::new(2);
    for core in &mut c.cores {
        core.join_cluster();
    }
    let (m1, m2) = two_members(&mut c, "m", "$share/g/t", QoS::AtLeastOnce);
    let (_, interest) = take_cluster(&mut c);
    assert_eq!(interest.len(), 2, "each core's first member: {interest:?}");
    assert!(interest
        .iter()
        .all(|(what, add)| what.starts_with("shared") && *add));
    let publ = c.connect(0, "pub", true);
    // The link is up: the group gets its messages back from NATS only.
    for core in &mut c.cores {
        core.set_cluster_shared(true);
    }
    c.publish(0, publ, "t", false, b"x");
    assert_eq!(c.publishes(0, m1).len() + c.publishes(1, m2).len(), 0);
    let (published, _) = take_cluster(&mut c);
    assert_eq!(published, ["t"]);
    // What NATS hands this node goes to one member, on whichever core.
    for _ in 0..4 {
        c.cores[1].deliver_shared_from_cluster(
            &remote("t", QoS::AtLeastOnce, false),
            &share("$share/g/t"),
            T0,
        );
        c.settle();
    }
    let (got1, got2) = (c.publishes(0, m1).len(), c.publishes(1, m2).len());
    assert_eq!(got1 + got2, 4, "each to one member");
    assert!(got1 > 0 && got2 > 0, "round-robin over both cores' members");
    // The link is down: the group is this node's alone again.
    for core in &mut c.cores {
        core.set_cluster_shared(false);
    }
    c.publish(0, publ, "t", false, b"y");
    assert_eq!(c.publishes(0, m1).len() + c.publishes(1, m2).len(), 1);
    // The last member of a core leaving is told.
    c.cores[1].disconnected(m2, 1, T0);
    c.settle();
    let (_, interest) = take_cluster(&mut c);
    assert_eq!(interest.len(), 1);
    assert!(!interest[0].1, "{interest:?}");
}

#[test]
fn a_session_released_to_another_node_is_resumed_there_with_its_queue() {
    let mut here = Cluster::new(1);
    let key = here.connect(0, "moving", false);
    here.subscribe(0, key, "q/#", QoS::AtLeastOnce);
    here.cores[0].disconnected(key, 1, T0);
    let publ = here.connect(0, "pub", true);
    here.publish(0, publ, "q/1", false, b"a");
    here.publish(0, publ, "q/2", false, b"b");
    let image = here.cores[0]
        .release_to_cluster("moving", false, T0)
        .expect("persistent");
    assert!(
        here.cores[0].session(key).is_none(),
        "gone from the old node"
    );
    let mut hits = 0;
    here.cores[0].subs.for_each_match("q/1", |_| hits += 1);
    assert_eq!(hits, 0, "its subscriptions went with it");
    let mut there = Cluster::new(2);
    let owner = owner_core("moving", 2);
    there.cores[owner].adopt_from_cluster(image, T0);
    there.settle();
    let c = v3_connect("moving", false);
    let attached =
        there.cores[owner].connect(&c, "moving".into(), 1, T0, false, Permissions::all());
    assert!(attached.session_present);
    let topics: Vec<String> = there
        .publishes(owner, attached.key)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(topics, ["q/1", "q/2"], "its queue, in order");
    // A clean start elsewhere takes nothing along.
    let again = here.connect(0, "moving", false);
    here.subscribe(0, again, "q/#", QoS::AtLeastOnce);
    assert!(here.cores[0]
        .release_to_cluster("moving", true, T0)
        .is_none());
    assert!(here.cores[0].session(again).is_none());
}

#[test]
fn a_cluster_core_records_its_persistent_sessions_with_the_link_and_no_others() {
    let mut c = Cluster::new(1);
    c.cores[0].join_cluster();
    let clean = c.connect(0, "clean", true);
    c.subscribe(0, clean, "c/#", QoS::AtLeastOnce);
    c.cores[0].disconnected(clean, 1, T0);
    assert!(
        take_session_records(&mut c).is_empty(),
        "clean sessions cost nothing"
    );
    let kept = c.connect(0, "kept", false);
    c.subscribe(0, kept, "k/#", QoS::AtLeastOnce);
    let publ = c.connect(0, "pub", true);
    c.publish(0, publ, "k/1", false, b"x");
    let none: Vec<String> = Vec::new();
    assert_eq!(
        take_session_records(&mut c),
        [
            ("kept".to_owned(), Some(none)),
            ("kept".to_owned(), Some(vec!["k/#".to_owned()])),
        ],
        "its connect and its subscription; a publish changes nothing"
    );
    c.cores[0].disconnected(kept, 1, T0);
    let records = take_session_records(&mut c);
    assert_eq!(
        records,
        [("kept".to_owned(), Some(vec!["k/#".to_owned()]))],
        "dated by the disconnect"
    );
    // A clean start ends it: recorded as ended, then the new one.
    let again = c.connect(0, "kept", true);
    assert_eq!(take_session_records(&mut c), [("kept".to_owned(), None)]);
    c.cores[0].disconnected(again, 1, T0);
    assert!(take_session_records(&mut c).is_empty());
}

#[test]
fn what_a_returning_node_held_is_delivered_after_the_sessions_own_queue() {
    let mut old = Cluster::new(1);
    let key = old.connect(0, "roamer", false);
    old.subscribe(0, key, "m/#", QoS::AtLeastOnce);
    old.cores[0].disconnected(key, 1, T0);
    let publ = old.connect(0, "pub", true);
    old.publish(0, publ, "m/held", false, b"a");
    let held = old.cores[0]
        .release_to_cluster("roamer", false, T0)
        .expect("persistent");
    let mut new = Cluster::new(1);
    let key = new.connect(0, "roamer", false);
    new.subscribe(0, key, "m/#", QoS::AtLeastOnce);
    let publ = new.connect(0, "pub", true);
    new.publish(0, publ, "m/new", false, b"b");
    assert_eq!(new.cores[0].merge_from_cluster(held.clone(), T0), 0);
    let topics: Vec<String> = new.publishes(0, key).into_iter().map(|(t, _)| t).collect();
    assert_eq!(topics, ["m/new", "m/held"]);
    let mut gone = Cluster::new(1);
    assert_eq!(
        gone.cores[0].merge_from_cluster(held, T0),
        1,
        "no session: counted"
    );
    assert_eq!(gone.cores[0].persistent_sessions().len(), 0);
    assert_eq!(new.cores[0].persistent_sessions(), [Arc::from("roamer")]);
}
