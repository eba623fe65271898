//! Shared subscriptions (`$share/{group}/{filter}`, MQTT 5.0 section 4.8.2,
//! accepted from 3.1.1 clients too) end to end, on a 2-core broker with
//! members placed on both cores: exactly-once delivery per group across
//! cores, the three strategies, several groups beside plain subscribers,
//! re-routing of a departed member's unacknowledged messages, no retained
//! messages on a shared subscribe, invalid share names, and a 3.1.1 member
//! that is the real `mosquitto_sub`.
//!
//! Every wait is bounded; the whole test body is bounded by [`TEST_LIMIT`].

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use ringmq::codec::Protocol;
use ringmq::config::SharedStrategy;
use rumqttc::v5::mqttbytes::v5::{Filter, SubscribeProperties};
use rumqttc::v5::mqttbytes::QoS;

/// Bound on a whole test body (each test must finish well within 20 s).
const TEST_LIMIT: Duration = Duration::from_secs(19);

/// The deadline for the next message of a set being collected: [`STEP`]
/// after the last one arrived. A wait bounded per message, not a bound on how
/// fast the whole set comes (that would be a speed claim).
struct Progress(tokio::time::Instant);

impl Progress {
    fn start() -> Progress {
        Progress(tokio::time::Instant::now() + STEP)
    }
    /// A message arrived: the next one has STEP from now.
    fn advanced(&mut self) {
        self.0 = tokio::time::Instant::now() + STEP;
    }
    fn stalled(&self) -> bool {
        tokio::time::Instant::now() >= self.0
    }
}

// ---- members of any kind --------------------------------------------------------

/// A group member (or plain subscriber) of any client kind.
#[allow(clippy::large_enum_variant)] // a handful per test
enum Member {
    V4(V4),
    V5(V5),
}

impl Member {
    fn id(&self) -> &str {
        match self {
            Member::V4(c) => &c.id,
            Member::V5(c) => &c.id,
        }
    }

    /// Next PUBLISH (topic, payload) within `limit`, or None.
    async fn next_publish(&mut self, limit: Duration) -> Option<(String, String)> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self {
                Member::V4(c) => match c.next_within(left).await {
                    Some(Ev::Packet(v4::Packet::Publish(p))) => {
                        return Some((p.topic.clone(), String::from_utf8_lossy(&p.payload).into()))
                    }
                    Some(Ev::Packet(_)) => {}
                    Some(Ev::Closed(e)) => panic!("{}: closed: {e}", c.id),
                    None => return None,
                },
                Member::V5(c) => match c.next_within(left).await {
                    Some(Ev::Packet(v5::Packet::Publish(p))) => {
                        return Some((
                            String::from_utf8_lossy(&p.topic).into(),
                            String::from_utf8_lossy(&p.payload).into(),
                        ))
                    }
                    Some(Ev::Packet(_)) => {}
                    Some(Ev::Closed(e)) => panic!("{}: closed: {e}", c.id),
                    None => return None,
                },
            }
        }
    }
}

/// A plain (not shared) topic every member also subscribes to, so that a
/// marker published there reaches every member, where a message to a group
/// reaches one.
const MARKER_TOPIC: &str = "shared-test/marker";

async fn v5_member(addr: std::net::SocketAddr, core: usize, prefix: &str, filter: &str) -> Member {
    let mut c = V5::connect(addr, &id_on(core, 2, prefix)).await;
    c.subscribe_ok(filter, QoS::AtLeastOnce).await;
    c.subscribe_ok(MARKER_TOPIC, QoS::AtLeastOnce).await;
    Member::V5(c)
}

async fn v4_member(addr: std::net::SocketAddr, core: usize, prefix: &str, filter: &str) -> Member {
    let mut c = V4::connect(addr, &id_on(core, 2, prefix)).await;
    c.subscribe_ok(filter, v4::QoS::AtLeastOnce).await;
    c.subscribe_ok(MARKER_TOPIC, v4::QoS::AtLeastOnce).await;
    Member::V4(c)
}

/// How [`collect`] checks that nothing more comes after the expected total.
enum End<'a> {
    /// Each of these publishers (every one that published the set) publishes
    /// a marker on [`MARKER_TOPIC`]; every member must get all the markers
    /// with nothing before them. A second copy of a message is queued with
    /// the first, so ahead of its publisher's marker: deterministic.
    Markers(Vec<&'a mut V5>),
    /// A quiet window. Only where messages travel a path no publisher's
    /// marker is ordered with: those re-routed from a departed member go
    /// from that member's core, at its departure. A window can only let the
    /// test pass wrongly (on a slow machine), never fail wrongly.
    Quiet,
}

/// Collects payloads from `members` until `total` arrived in all (each member
/// polled in turn with a short bounded wait), then checks as `end` says that
/// nothing more comes. Returns each member's payloads in arrival order.
async fn collect(members: &mut [&mut Member], total: usize, end: End<'_>) -> Vec<Vec<String>> {
    let mut got: Vec<Vec<String>> = vec![Vec::new(); members.len()];
    let mut progress = Progress::start();
    let mut n = 0;
    while n < total {
        if progress.stalled() {
            let counts: Vec<(String, usize)> = members
                .iter()
                .zip(&got)
                .map(|(m, g)| (m.id().to_owned(), g.len()))
                .collect();
            panic!("only {n} of {total} messages arrived, none for {STEP:?}: {counts:?}");
        }
        for (i, m) in members.iter_mut().enumerate() {
            // Drain what is there; a short bounded wait per member and round.
            while let Some((_, payload)) = m.next_publish(Duration::from_millis(20)).await {
                got[i].push(payload);
                n += 1;
                progress.advanced();
            }
        }
    }
    // No extra copies (duplicates) after the expected total.
    match end {
        End::Markers(publishers) => {
            let markers: BTreeSet<String> =
                (0..publishers.len()).map(|k| format!("end-{k}")).collect();
            // Published after the whole set arrived, by every publisher of it.
            for (k, p) in publishers.into_iter().enumerate() {
                p.client
                    .publish(MARKER_TOPIC, QoS::AtLeastOnce, false, format!("end-{k}"))
                    .await
                    .unwrap();
                p.wait_acks(1, QoS::AtLeastOnce).await;
            }
            for (i, m) in members.iter_mut().enumerate() {
                let mut seen = BTreeSet::new();
                while seen != markers {
                    match m.next_publish(STEP).await {
                        Some((t, p)) if t == MARKER_TOPIC => {
                            seen.insert(p);
                        }
                        Some((t, p)) => panic!(
                            "{}: extra message after all {total}: {t} {p} (had {})",
                            m.id(),
                            got[i].len()
                        ),
                        None => panic!("{}: markers {seen:?} of {markers:?} only", m.id()),
                    }
                }
            }
        }
        End::Quiet => {
            for (i, m) in members.iter_mut().enumerate() {
                if let Some((t, p)) = m.next_publish(QUIET).await {
                    panic!(
                        "{}: extra message after all {total}: {t} {p} (had {})",
                        m.id(),
                        got[i].len()
                    );
                }
            }
        }
    }
    got
}

/// Asserts that the union of `got` is exactly `want`, each once.
fn assert_exactly_once(what: &str, got: &[Vec<String>], want: &BTreeSet<String>) {
    let mut seen = BTreeMap::<&String, usize>::new();
    for p in got.iter().flatten() {
        *seen.entry(p).or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(dups.is_empty(), "{what}: duplicates {dups:?}");
    let missing: Vec<_> = want
        .iter()
        .filter(|p| !seen.contains_key(p))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "{what}: missing {missing:?}");
    let extra: Vec<_> = seen
        .keys()
        .filter(|p| !want.contains(**p))
        .take(5)
        .collect();
    assert!(extra.is_empty(), "{what}: unexpected {extra:?}");
}

fn payload_set(prefix: &str, n: usize) -> BTreeSet<String> {
    (0..n).map(|i| numbered(prefix, i)).collect()
}

async fn publish_n(p: &mut V5, topic: &str, prefix: &str, n: usize) {
    for i in 0..n {
        p.client
            .publish(topic, QoS::AtLeastOnce, false, numbered(prefix, i))
            .await
            .unwrap();
    }
    p.wait_acks(n, QoS::AtLeastOnce).await;
}

// ---- distribution -----------------------------------------------------------------

/// `$share/g/sh1/#` with 3 members (two 5.0, one 3.1.1) on both cores: 300
/// QoS 1 messages are each delivered exactly once in total, round-robin
/// spreading them evenly (every member >= 50).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_round_robin_three_members_exactly_once() {
    within(TEST_LIMIT, "test", async {
        const N: usize = 300;
        let broker = start2();
        let f = "$share/g/sh1/#";
        let mut a = v5_member(broker.addr, 0, "sh1-a", f).await;
        let mut b = v5_member(broker.addr, 1, "sh1-b", f).await;
        let mut c = v4_member(broker.addr, 1, "sh1-c", f).await;
        let mut publisher = V5::connect(broker.addr, &id_on(0, 2, "sh1-pub")).await;
        publish_n(&mut publisher, "sh1/x", "m", N).await;
        let got = collect(
            &mut [&mut a, &mut b, &mut c],
            N,
            End::Markers(vec![&mut publisher]),
        )
        .await;
        assert_exactly_once("group g", &got, &payload_set("m", N));
        let counts: Vec<usize> = got.iter().map(Vec::len).collect();
        assert!(
            counts.iter().all(|n| *n >= 50),
            "uneven round robin: {counts:?}"
        );
        assert_eq!(broker.counters().dropped_shared_no_member, 0);
    })
    .await
}

/// Random strategy: still exactly once, every member gets some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_random_strategy_exactly_once() {
    within(TEST_LIMIT, "test", async {
        const N: usize = 300;
        let broker = start(2, |c| c.shared_strategy = SharedStrategy::Random);
        let f = "$share/r/shr/#";
        let mut a = v5_member(broker.addr, 0, "shr-a", f).await;
        let mut b = v5_member(broker.addr, 1, "shr-b", f).await;
        let mut c = v4_member(broker.addr, 0, "shr-c", f).await;
        let mut publisher = V5::connect(broker.addr, &id_on(1, 2, "shr-pub")).await;
        publish_n(&mut publisher, "shr/x", "r", N).await;
        let got = collect(
            &mut [&mut a, &mut b, &mut c],
            N,
            End::Markers(vec![&mut publisher]),
        )
        .await;
        assert_exactly_once("group r", &got, &payload_set("r", N));
        let counts: Vec<usize> = got.iter().map(Vec::len).collect();
        assert!(
            counts.iter().all(|n| *n >= 30),
            "random spread too skewed: {counts:?}"
        );
    })
    .await
}

/// Two groups on the same filter each get every message once; a plain
/// subscriber alongside gets all of them, in order. After a member
/// unsubscribes, the rest of its group gets everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_two_groups_and_plain_subscriber() {
    within(TEST_LIMIT, "test", async {
        const N: usize = 100;
        let broker = start2();
        let mut g1a = v5_member(broker.addr, 0, "sh2-g1a", "$share/g1/sh2/+").await;
        let mut g1b = v5_member(broker.addr, 1, "sh2-g1b", "$share/g1/sh2/+").await;
        let mut g2a = v4_member(broker.addr, 0, "sh2-g2a", "$share/g2/sh2/+").await;
        let mut g2b = v5_member(broker.addr, 1, "sh2-g2b", "$share/g2/sh2/+").await;
        let mut plain = v5_member(broker.addr, 1, "sh2-plain", "sh2/+").await;
        let mut publisher = V5::connect(broker.addr, &id_on(0, 2, "sh2-pub")).await;
        publish_n(&mut publisher, "sh2/x", "m", N).await;

        let got = collect(
            &mut [&mut g1a, &mut g1b, &mut g2a, &mut g2b, &mut plain],
            3 * N,
            End::Markers(vec![&mut publisher]),
        )
        .await;
        let want = payload_set("m", N);
        assert_exactly_once("group g1", &got[0..2], &want);
        assert_exactly_once("group g2", &got[2..4], &want);
        let in_order: Vec<String> = (0..N).map(|i| numbered("m", i)).collect();
        assert_eq!(got[4], in_order, "plain subscriber gets all, in order");
        for (i, g) in got[..4].iter().enumerate() {
            assert!(g.len() >= 25, "member {i} starved: {}", g.len());
        }

        // g1a leaves by UNSUBSCRIBE: g1b alone gets the next messages.
        let Member::V5(c) = &mut g1a else {
            unreachable!()
        };
        c.client.unsubscribe("$share/g1/sh2/+").await.unwrap();
        c.expect("UNSUBACK", |p| {
            matches!(p, v5::Packet::UnsubAck(_)).then_some(())
        })
        .await;
        publish_n(&mut publisher, "sh2/y", "u", 20).await;
        let got = collect(
            &mut [&mut g1a, &mut g1b, &mut g2a, &mut g2b, &mut plain],
            3 * 20,
            End::Markers(vec![&mut publisher]),
        )
        .await;
        assert!(got[0].is_empty(), "unsubscribed member got {:?}", got[0]);
        assert_exactly_once("g1 after unsubscribe", &got[1..2], &payload_set("u", 20));
        assert_exactly_once("g2", &got[2..4], &payload_set("u", 20));
    })
    .await
}

/// Hash-client-id strategy: all of one publisher's messages go to the same
/// member, in order (three publishers on both cores, three members).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_hash_client_id_is_sticky_per_publisher() {
    within(TEST_LIMIT, "test", async {
        const N: usize = 40;
        let broker = start(2, |c| c.shared_strategy = SharedStrategy::HashClientId);
        let f = "$share/h/shh/#";
        let mut a = v5_member(broker.addr, 0, "shh-a", f).await;
        let mut b = v5_member(broker.addr, 1, "shh-b", f).await;
        let mut c = v4_member(broker.addr, 1, "shh-c", f).await;
        let mut pubs = Vec::new();
        for (core, name) in [(0, "shh-p0"), (1, "shh-p1"), (0, "shh-p2"), (1, "shh-p3")] {
            pubs.push(V5::connect(broker.addr, &id_on(core, 2, name)).await);
        }
        for (k, p) in pubs.iter_mut().enumerate() {
            for i in 0..N {
                p.client
                    .publish(
                        "shh/x",
                        QoS::AtLeastOnce,
                        false,
                        numbered(&format!("p{k}"), i),
                    )
                    .await
                    .unwrap();
            }
        }
        for p in &mut pubs {
            p.wait_acks(N, QoS::AtLeastOnce).await;
        }
        let got = collect(
            &mut [&mut a, &mut b, &mut c],
            pubs.len() * N,
            End::Markers(pubs.iter_mut().collect()),
        )
        .await;
        let all: BTreeSet<String> = (0..pubs.len())
            .flat_map(|k| payload_set(&format!("p{k}"), N))
            .collect();
        assert_exactly_once("group h", &got, &all);
        for k in 0..pubs.len() {
            let prefix = format!("p{k}-");
            let holders: Vec<usize> = (0..got.len())
                .filter(|m| got[*m].iter().any(|p| p.starts_with(&prefix)))
                .collect();
            assert_eq!(
                holders.len(),
                1,
                "publisher {k} spread over members {holders:?}"
            );
            let seq: Vec<String> = got[holders[0]]
                .iter()
                .filter(|p| p.starts_with(&prefix))
                .cloned()
                .collect();
            let want: Vec<String> = (0..N).map(|i| numbered(&format!("p{k}"), i)).collect();
            assert_eq!(seq, want, "publisher {k}: in order at its member");
        }
    })
    .await
}

// ---- members leaving ---------------------------------------------------------------

/// A member that receives QoS 1 PUBLISHes but never acknowledges, then drops
/// its connection (a 3.1.1 clean session): every message it held goes to the
/// other members, so the remaining members together receive every message
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_unacked_messages_of_a_dropped_member_are_rerouted() {
    within(TEST_LIMIT, "test", async {
        const N: usize = 150;
        let broker = start2();
        let f = "$share/g/sh3/#";
        // The silent member: raw 3.1.1, on core 1, never acks.
        let mut raw = Raw::connect(broker.addr, &id_on(1, 2, "sh3-raw"), true, 60, None).await;
        assert_eq!(raw.subscribe(1, &[(f, RawQoS::AtLeastOnce)]).await, vec![1]);
        let mut a = v5_member(broker.addr, 0, "sh3-a", f).await;
        let mut b = v4_member(broker.addr, 1, "sh3-b", f).await;
        let mut publisher = V5::connect(broker.addr, &id_on(0, 2, "sh3-pub")).await;
        publish_n(&mut publisher, "sh3/x", "m", N).await;

        // The raw member's share is ~N/3 = 50, its window 20 (max_inflight_messages):
        // wait until it holds a full window of unacknowledged PUBLISHes.
        let mut held = Vec::new();
        while held.len() < 20 {
            let p = raw.recv_publish().await;
            held.push(String::from_utf8_lossy(&p.payload).into_owned());
        }
        drop(raw); // abrupt end, nothing acknowledged

        let got = collect(&mut [&mut a, &mut b], N, End::Quiet).await;
        assert_exactly_once("remaining members", &got, &payload_set("m", N));
        let all: BTreeSet<&String> = got.iter().flatten().collect();
        assert!(
            held.iter().all(|p| all.contains(p)),
            "held messages re-delivered"
        );
        assert_eq!(broker.counters().dropped_shared_no_member, 0);
    })
    .await
}

/// A 5.0 member with session expiry 1 s holds unacknowledged messages and
/// goes away: while it is offline new messages go to the other member, and
/// when its session expires the ones it held are re-routed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_persistent_member_unacked_rerouted_at_session_expiry() {
    within(TEST_LIMIT, "test", async {
        const N: usize = 60;
        let broker = start2();
        let f = "$share/g/sh4/#";
        let (mut raw, _) = Raw::connect_v5(
            broker.addr,
            &id_on(1, 2, "sh4-raw"),
            vec![
                Property::SessionExpiryInterval(1),
                Property::ReceiveMaximum(5),
            ],
        )
        .await;
        assert_eq!(raw.subscribe(1, &[(f, RawQoS::AtLeastOnce)]).await, vec![1]);
        let mut a = v5_member(broker.addr, 0, "sh4-a", f).await;
        let mut publisher = V5::connect(broker.addr, &id_on(0, 2, "sh4-pub")).await;
        publish_n(&mut publisher, "sh4/x", "m", N).await;
        let mut held = Vec::new();
        while held.len() < 5 {
            let p = raw.recv_publish().await;
            held.push(String::from_utf8_lossy(&p.payload).into_owned());
        }
        drop(raw);
        // Published while the member is offline: all to `a`.
        publish_n(&mut publisher, "sh4/x", "late", 20).await;
        // Everything arrives at `a`, the held ones once the
        // 1 s session expiry passed (checked on the 500 ms tick).
        let got = collect(&mut [&mut a], N + 20, End::Quiet).await;
        let mut want = payload_set("m", N);
        want.extend(payload_set("late", 20));
        assert_exactly_once("member a", &got, &want);
    })
    .await
}

/// A member holding unacknowledged messages is taken over by a new
/// connection with the same client id and clean start: its session ends and
/// the messages it held go to the other members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_unacked_rerouted_when_session_taken_over_with_clean_start() {
    within(TEST_LIMIT, "test", async {
        const N: usize = 90;
        let broker = start2();
        let f = "$share/g/sh10/#";
        let rid = id_on(1, 2, "sh10-raw");
        let mut raw = Raw::connect(broker.addr, &rid, true, 60, None).await;
        assert_eq!(raw.subscribe(1, &[(f, RawQoS::AtLeastOnce)]).await, vec![1]);
        let mut a = v5_member(broker.addr, 0, "sh10-a", f).await;
        let mut publisher = V5::connect(broker.addr, &id_on(0, 2, "sh10-pub")).await;
        publish_n(&mut publisher, "sh10/x", "m", N).await;
        let mut held = 0;
        while held < 20 {
            if let Packet::Publish(_) = raw.recv().await {
                held += 1;
            }
        }
        // Same client id, clean session: takes the session over and ends it.
        let _new = Raw::connect(broker.addr, &rid, true, 60, None).await;
        raw.expect_closed(STEP).await;
        let got = collect(&mut [&mut a], N, End::Quiet).await;
        assert_exactly_once("member a", &got, &payload_set("m", N));
    })
    .await
}

/// `$share/g/#` does not match `$SYS/...` topics [MQTT-4.7.2-1]; an explicit
/// `$share/g/$SYS/broker/uptime` does, and its group gets each $SYS publish
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_wildcard_excludes_sys_topics() {
    within(TEST_LIMIT, "test", async {
        let broker = start(2, |c| c.sys_interval = Duration::from_secs(1));
        let mut all = v5_member(broker.addr, 0, "sh11-all", "$share/g/#").await;
        let mut sys_a = v5_member(broker.addr, 0, "sh11-sa", "$share/s/$SYS/broker/uptime").await;
        let mut sys_b = v4_member(broker.addr, 1, "sh11-sb", "$share/s/$SYS/broker/uptime").await;
        // $SYS is published every second: wait for two rounds to reach group s
        // (each within STEP of the previous one).
        let mut uptimes = 0;
        let mut progress = Progress::start();
        while uptimes < 2 {
            assert!(!progress.stalled(), "no $SYS uptime via group s");
            for m in [&mut sys_a, &mut sys_b] {
                if let Some((t, _)) = m.next_publish(Duration::from_millis(50)).await {
                    assert_eq!(t, "$SYS/broker/uptime");
                    uptimes += 1;
                    progress.advanced();
                }
            }
        }
        // $SYS is published on core 0, where `all` is: had its round reached
        // `all`, it did so in the pass that reached group s. A marker from a
        // client on core 0, published after two rounds arrived, comes after.
        let publisher = V5::connect(broker.addr, &id_on(0, 2, "sh11-pub")).await;
        publisher
            .client
            .publish(MARKER_TOPIC, QoS::AtLeastOnce, false, "sh11-end")
            .await
            .unwrap();
        match all.next_publish(STEP).await {
            Some((t, p)) if t == MARKER_TOPIC && p == "sh11-end" => {}
            other => panic!("$share/g/# matched a $SYS topic: {other:?} before the marker"),
        }
    })
    .await
}

// ---- retained, invalid filters, options -------------------------------------------------

/// No retained messages are sent on a shared subscribe; live messages still
/// arrive. (A plain subscription does get the retained message: sanity.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscribe_gets_no_retained_messages() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let mut publisher = V5::connect(broker.addr, &id_on(0, 2, "sh5-pub")).await;
        publisher
            .client
            .publish("sh5/r", QoS::AtLeastOnce, true, "kept")
            .await
            .unwrap();
        // Its PUBACK means every core's replica holds it: the shared members'
        // check cannot pass for want of the message.
        publisher.wait_acks(1, QoS::AtLeastOnce).await;

        let mut m5 = v5_member(broker.addr, 1, "sh5-m5", "$share/g/sh5/#").await;
        let mut m4 = v4_member(broker.addr, 0, "sh5-m4", "$share/g2/sh5/#").await;
        let mut plain = v5_member(broker.addr, 1, "sh5-plain", "sh5/#").await;
        assert_eq!(
            plain.next_publish(STEP).await.map(|m| m.1).as_deref(),
            Some("kept")
        );

        // The live message is also the marker for "no retained message on a
        // shared subscribe": a retained one would have gone out with the
        // SUBACK, so before anything published after it.
        publisher
            .client
            .publish("sh5/live", QoS::AtLeastOnce, false, "live")
            .await
            .unwrap();
        assert_eq!(
            m5.next_publish(STEP).await.map(|m| m.1).as_deref(),
            Some("live"),
            "retained sent to a 5.0 shared subscriber"
        );
        assert_eq!(
            m4.next_publish(STEP).await.map(|m| m.1).as_deref(),
            Some("live"),
            "retained sent to a 3.1.1 shared subscriber"
        );
    })
    .await
}

/// Malformed share names are refused in SUBACK (5.0: 0x8F Topic Filter
/// invalid; 3.1.1: 0x80) without affecting valid filters in the same packet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_invalid_filters_refused() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let filters = [
            ("$share//t", RawQoS::AtLeastOnce),
            ("$share/g", RawQoS::AtLeastOnce),
            ("$share/g/", RawQoS::AtLeastOnce),
            ("$share/g+/t", RawQoS::AtLeastOnce),
            ("$share/g#/t", RawQoS::AtLeastOnce),
            ("$share/ok/t/#", RawQoS::AtLeastOnce),
        ];
        let mut raw5 = Raw::open(broker.addr).await;
        let ack = raw5
            .handshake(connect_packet(
                Protocol::V5,
                &id_on(0, 2, "sh6-v5"),
                true,
                60,
                None,
            ))
            .await;
        assert_eq!(ack.code, 0);
        assert_eq!(
            raw5.subscribe(1, &filters).await,
            vec![0x8F, 0x8F, 0x8F, 0x8F, 0x8F, 1],
            "5.0 SUBACK"
        );
        let mut raw4 = Raw::connect(broker.addr, &id_on(1, 2, "sh6-v4"), true, 60, None).await;
        assert_eq!(
            raw4.subscribe(1, &filters).await,
            vec![0x80, 0x80, 0x80, 0x80, 0x80, 1],
            "3.1.1 SUBACK"
        );
        // Both also subscribe to a plain marker topic.
        for raw in [&mut raw5, &mut raw4] {
            assert_eq!(
                raw.subscribe(2, &[(MARKER_TOPIC, RawQoS::AtLeastOnce)])
                    .await,
                vec![1]
            );
        }
        // The valid one works: exactly one of the two group members gets the
        // message. The marker, from the same publisher, reaches both after it.
        let mut publisher = V5::connect(broker.addr, &id_on(0, 2, "sh6-pub")).await;
        publisher
            .client
            .publish("t/x", QoS::AtLeastOnce, false, "ok")
            .await
            .unwrap();
        publisher
            .client
            .publish(MARKER_TOPIC, QoS::AtLeastOnce, false, "sh6-end")
            .await
            .unwrap();
        publisher.wait_acks(2, QoS::AtLeastOnce).await;
        let mut got = Vec::new();
        for raw in [&mut raw5, &mut raw4] {
            let before = raw.recv_until_marker("sh6-end").await;
            got.push(
                before
                    .iter()
                    .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
                    .collect::<Vec<_>>(),
            );
        }
        let mut counts: Vec<usize> = got.iter().map(Vec::len).collect();
        counts.sort_unstable();
        assert_eq!(
            counts,
            [0, 1],
            "exactly one member gets the message: {got:?}"
        );
        assert!(got.iter().flatten().all(|p| p == "ok"), "{got:?}");
    })
    .await
}

/// No Local on a shared subscription is a protocol error [MQTT-3.8.3-4]:
/// DISCONNECT 0x82.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_no_local_is_a_protocol_error() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let mut raw = Raw::open(broker.addr).await;
        let ack = raw
            .handshake(connect_packet(
                Protocol::V5,
                &id_on(1, 2, "sh7"),
                true,
                60,
                None,
            ))
            .await;
        assert_eq!(ack.code, 0);
        let mut sub = subscribe_packet(1, &[("$share/g/sh7/#", RawQoS::AtLeastOnce)]);
        if let Packet::Subscribe(s) = &mut sub {
            s.filters[0].1.no_local = true;
        }
        raw.send(&sub).await;
        let before = raw.expect_closed(STEP).await;
        assert!(
            matches!(before.as_slice(), [Packet::Disconnect(d)] if d.reason == 0x82),
            "{before:?}"
        );
    })
    .await
}

/// 5.0 members carry their own subscription identifier on shared deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_delivery_carries_subscription_identifier() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let mut members = Vec::new();
        for (core, name, id) in [(0, "sh8-a", 11), (1, "sh8-b", 22)] {
            let mut c = V5::connect_with(broker.addr, &id_on(core, 2, name), |o| {
                let mut cp = o.connect_properties().unwrap_or_default();
                cp.session_expiry_interval = Some(0);
                o.set_connect_properties(cp);
            })
            .await;
            c.client
                .subscribe_many_with_properties(
                    vec![Filter::new("$share/g/sh8/#", QoS::AtLeastOnce)],
                    SubscribeProperties {
                        id: Some(id),
                        user_properties: Vec::new(),
                    },
                )
                .await
                .unwrap();
            c.expect("SUBACK", |p| {
                matches!(p, v5::Packet::SubAck(_)).then_some(())
            })
            .await;
            // A plain marker subscription (no identifier) as well.
            c.subscribe_ok(MARKER_TOPIC, QoS::AtLeastOnce).await;
            members.push((c, id));
        }
        let mut publisher = V5::connect(broker.addr, &id_on(0, 2, "sh8-pub")).await;
        publish_n(&mut publisher, "sh8/x", "m", 10).await;
        // The marker, from the same publisher, reaches both members after
        // their share of the 10 (and after any extra copy).
        publisher
            .client
            .publish(MARKER_TOPIC, QoS::AtLeastOnce, false, "sh8-end")
            .await
            .unwrap();
        let mut got = Vec::new();
        for (c, id) in &mut members {
            for p in c.recv_until_marker("sh8-end").await {
                let ids = p
                    .properties
                    .map(|p| p.subscription_identifiers)
                    .unwrap_or_default();
                assert_eq!(ids, vec![*id], "{}", c.id);
                got.push(String::from_utf8_lossy(&p.payload).into_owned());
            }
        }
        assert_exactly_once("group g", &[got], &payload_set("m", 10));
    })
    .await
}

// ---- mosquitto_sub as a 3.1.1 member -------------------------------------------------------

/// A 3.1.1 member that is mosquitto_sub (`-V 311 -t '$share/g/...'`) and a
/// rumqttc 5.0 member on the other core share 40 QoS 1 messages exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_mosquitto_sub_v311_member() {
    within(TEST_LIMIT, "test", async {
        const N: usize = 40;
        let broker = start2();
        let mid = id_on(0, 2, "sh9-mosq");
        let args = [
            "-V",
            "311",
            "-q",
            "1",
            "-i",
            &mid,
            "-t",
            "$share/g/sh9/#",
            "-t",
            MARKER_TOPIC,
            "-F",
            "MSG|%p",
            "-W",
            "15",
        ];
        let mut mosq = MosqSub::start(broker.port, &args).await;
        let mut other = v5_member(broker.addr, 1, "sh9-v5", "$share/g/sh9/#").await;
        let mut publisher = V5::connect(broker.addr, &id_on(1, 2, "sh9-pub")).await;
        publish_n(&mut publisher, "sh9/x", "m", N).await;
        // The marker, from the same publisher, reaches both members after
        // their share of the N (and after any extra copy).
        publisher
            .client
            .publish(MARKER_TOPIC, QoS::AtLeastOnce, false, "sh9-end")
            .await
            .unwrap();

        // Each message within STEP of the previous one.
        let mut from_mosq = Vec::new();
        loop {
            let m = mosq.msg().await;
            if m == "sh9-end" {
                break;
            }
            from_mosq.push(m);
        }
        let mut from_v5 = Vec::new();
        loop {
            match other.next_publish(STEP).await {
                Some((t, _)) if t == MARKER_TOPIC => break,
                Some((_, p)) => from_v5.push(p),
                None => panic!("rumqttc member: no marker within {STEP:?}"),
            }
        }
        let got = vec![from_mosq.clone(), from_v5.clone()];
        assert_exactly_once("mosquitto + rumqttc", &got, &payload_set("m", N));
        assert!(
            !from_mosq.is_empty() && !from_v5.is_empty(),
            "{} / {}",
            from_mosq.len(),
            from_v5.len()
        );
    })
    .await
}
