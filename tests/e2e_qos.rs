//! QoS 0/1/2 end to end with rumqttc (MQTT 3.1.1): across cores and on one
//! core, QoS downgrade to min(publish, subscription), many clients with
//! wildcards, overlapping subscriptions, and a slow consumer that must not
//! hold anyone else back.
//!
//! Client ids are chosen with `id_on` so that each client's session lives on
//! a known core (the broker hands a connection to the core owning its id).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::v4::QoS;
use common::*;

const N: usize = 500;

fn qos_name(q: QoS) -> u8 {
    q as u8
}

fn min_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) {
        a
    } else {
        b
    }
}

/// The stream of `N` messages across (or within) cores: see
/// `common::stream_in_order_once`.
async fn stream(qos: QoS, pub_core: usize, sub_core: usize) {
    let t0 = Instant::now();
    let broker = start2();
    let tag = format!("q{}-{pub_core}{sub_core}", qos_name(qos));
    stream_in_order_once(&broker, &tag, qos, pub_core, sub_core, N).await;
    eprintln!("{tag}: {N} messages in {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_across_cores() {
    stream(QoS::AtMostOnce, 0, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_across_cores() {
    stream(QoS::AtLeastOnce, 0, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_across_cores() {
    stream(QoS::ExactlyOnce, 0, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_same_core() {
    stream(QoS::AtMostOnce, 1, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_same_core() {
    stream(QoS::AtLeastOnce, 0, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_same_core() {
    stream(QoS::ExactlyOnce, 1, 1).await;
}

/// Delivery QoS is min(publish QoS, granted QoS) for all nine pairs, with
/// subscribers on the other core and on the publisher's core.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_qos_is_min_of_publish_and_subscription() {
    let broker = start2();
    let levels = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    let mut subs = Vec::new();
    for core in 0..2 {
        for &sq in &levels {
            let id = id_on(core, 2, &format!("dg-sub{}-c{core}", qos_name(sq)));
            let mut s = V4::connect(broker.addr, &id).await;
            s.subscribe_ok("dg/#", sq).await;
            subs.push((sq, s));
        }
    }
    let mut publisher = V4::connect(broker.addr, &id_on(0, 2, "dg-pub")).await;
    for &pq in &levels {
        publisher
            .publish(
                &format!("dg/p{}", qos_name(pq)),
                pq,
                false,
                format!("p{}", qos_name(pq)),
            )
            .await;
    }
    // A marker after the three, from the same publisher: a second copy of any
    // of them would come before it.
    publisher
        .publish("dg/end", QoS::AtLeastOnce, false, "dg-end")
        .await;
    publisher.wait_acks(2, QoS::AtLeastOnce).await;
    publisher.wait_acks(1, QoS::ExactlyOnce).await;
    for (sq, s) in &mut subs {
        let got = s.recv_publishes(3).await;
        for (p, &pq) in got.iter().zip(&levels) {
            assert_eq!(p.topic, format!("dg/p{}", qos_name(pq)), "{}: order", s.id);
            assert_eq!(
                p.qos,
                min_qos(pq, *sq),
                "{}: published at {pq:?}, subscribed at {sq:?}",
                s.id
            );
        }
        s.expect_marker("dg-end", "each message once").await;
    }
}

/// Does `filter` match `topic`? (MQTT rules, no `$` topics involved here.)
fn matches(filter: &str, topic: &str) -> bool {
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    for (i, level) in f.iter().enumerate() {
        match *level {
            "#" => return true,
            "+" if i < t.len() => {}
            l if i < t.len() && t[i] == l => {}
            _ => return false,
        }
    }
    f.len() == t.len()
}

/// 8 publishers and 8 subscribers spread over both cores, with wildcard
/// filters: every subscriber gets exactly the messages its filter matches,
/// each publisher's stream in order, no duplicates.
///
/// Each publisher ends its stream with two markers, `p<i>-end` on its data
/// topic and `p<i>-other` on `fleet/<i>/other`, so that every subscriber
/// (also `fleet/+/other`, which matches no data topic) has, from every
/// publisher it hears from, a last message on the same path as the others:
/// an extra or duplicate message would come before it, and shows in the
/// exact per-publisher sequence instead of needing a quiet window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_with_wildcards() {
    const PUBS: usize = 8;
    const PER_PUB: usize = 50;
    let broker = start2();
    let filters = [
        "fleet/#",
        "fleet/+/data",
        "fleet/3/#",
        "+/5/data",
        "fleet/+/+",
        "fleet/1/data",
        "#",
        "fleet/+/other",
    ];
    let topics: Vec<String> = (0..PUBS).map(|i| format!("fleet/{i}/data")).collect();
    let others: Vec<String> = (0..PUBS).map(|i| format!("fleet/{i}/other")).collect();
    let mut subs = Vec::new();
    for (j, filter) in filters.iter().enumerate() {
        let mut s = V4::connect(broker.addr, &id_on(j % 2, 2, &format!("mc-sub{j}"))).await;
        s.subscribe_ok(filter, QoS::AtLeastOnce).await;
        subs.push(s);
    }
    let mut tasks = Vec::new();
    for (i, (topic, other)) in topics.iter().cloned().zip(others.clone()).enumerate() {
        let addr = broker.addr;
        tasks.push(tokio::spawn(async move {
            let mut p = V4::connect(addr, &id_on((i + 1) % 2, 2, &format!("mc-pub{i}"))).await;
            for k in 0..PER_PUB {
                p.publish(
                    &topic,
                    QoS::AtLeastOnce,
                    false,
                    numbered(&format!("p{i}"), k),
                )
                .await;
            }
            p.publish(&topic, QoS::AtLeastOnce, false, format!("p{i}-end"))
                .await;
            p.publish(&other, QoS::AtLeastOnce, false, format!("p{i}-other"))
                .await;
            p.wait_acks(PER_PUB + 2, QoS::AtLeastOnce).await;
            p
        }));
    }
    // Each publisher task bounds its own waits (CONNACK, each ack).
    let mut publishers = Vec::new();
    for t in tasks {
        publishers.push(t.await.expect("publisher task"));
    }
    for (j, s) in subs.iter_mut().enumerate() {
        // What sub j must get from publisher i, in order.
        let want = |i: usize| -> Vec<String> {
            let mut w = Vec::new();
            if matches(filters[j], &topics[i]) {
                w.extend((0..PER_PUB).map(|k| numbered(&format!("p{i}"), k)));
                w.push(format!("p{i}-end"));
            }
            if matches(filters[j], &others[i]) {
                w.push(format!("p{i}-other"));
            }
            w
        };
        let wanted: Vec<usize> = (0..PUBS).filter(|i| !want(*i).is_empty()).collect();
        let total: usize = (0..PUBS).map(|i| want(i).len()).sum();
        // Each message within STEP of the previous one.
        let got = s.recv_publishes(total).await;
        let mut by_pub: HashMap<usize, Vec<String>> = HashMap::new();
        for p in got {
            assert_eq!(p.qos, QoS::AtLeastOnce);
            let i: usize = p
                .topic
                .split('/')
                .nth(1)
                .and_then(|x| x.parse().ok())
                .expect("topic");
            by_pub
                .entry(i)
                .or_default()
                .push(String::from_utf8_lossy(&p.payload).into_owned());
        }
        let mut keys: Vec<usize> = by_pub.keys().copied().collect();
        keys.sort_unstable();
        assert_eq!(
            keys, wanted,
            "sub {j} ({}) got messages from the wrong publishers",
            filters[j]
        );
        for i in wanted {
            let (got, want) = (&by_pub[&i], want(i));
            if *got != want {
                let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
                panic!(
                    "sub {j} ({}) from pub {i}: got {} messages, want {} (markers included); \
                     first difference at {first_diff:?}; last {:?}",
                    filters[j],
                    got.len(),
                    want.len(),
                    got.last()
                );
            }
        }
    }
    drop(publishers);
}

/// One client with `ov/#` (QoS 0) and `ov/+` (QoS 1) gets a matching message
/// once, at the higher QoS (this broker's policy, as Mosquitto's), whether the
/// publisher is on its core or the other one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_subscriptions_deliver_once_at_max_qos() {
    let broker = start2();
    let mut sub = V4::connect(broker.addr, &id_on(1, 2, "ov-sub")).await;
    sub.subscribe_ok("ov/#", QoS::AtMostOnce).await;
    sub.subscribe_ok("ov/+", QoS::AtLeastOnce).await;
    for pub_core in [0, 1] {
        let mut p = V4::connect(
            broker.addr,
            &id_on(pub_core, 2, &format!("ov-pub{pub_core}")),
        )
        .await;
        let topic = format!("ov/from{pub_core}");
        p.publish(&topic, QoS::ExactlyOnce, false, "x").await;
        p.wait_acks(1, QoS::ExactlyOnce).await;
        let got = sub.recv_publish().await;
        assert_eq!(got.topic, topic);
        assert_eq!(
            got.qos,
            QoS::AtLeastOnce,
            "max of the matching subscriptions' QoS"
        );
        // A second copy would follow at once (same routing pass), before the
        // publisher's next message: that one is the marker, checked next.
        // Matched by `ov/#` only: delivered at that subscription's QoS 0.
        p.publish(&format!("{topic}/deep"), QoS::ExactlyOnce, false, "y")
            .await;
        p.wait_acks(1, QoS::ExactlyOnce).await;
        let deep = sub.recv_publish().await;
        assert_eq!(
            (deep.topic.as_str(), deep.qos),
            (format!("{topic}/deep").as_str(), QoS::AtMostOnce),
            "the next message, once"
        );
        // And a marker after it: a second copy of "y" would come first.
        let marker = format!("ov-end{pub_core}");
        p.publish(
            &format!("{topic}/deep"),
            QoS::AtLeastOnce,
            false,
            marker.clone(),
        )
        .await;
        sub.expect_marker(&marker, "each message once").await;
    }
}

/// `slow_consumer_policy = "drop"`: a subscriber that never reads (raw
/// socket, small receive buffer) with `max_write_buffer` = 64 KiB: QoS 0
/// messages to it are dropped (counted in `dropped_slow_consumer`) while the
/// other subscribers, on its core and on the other one, get every message,
/// each within [`STEP`] of its publish: the stalled one never holds them
/// back. (With back-pressure, the default, it would for `max_stall`: see
/// e2e_backpressure.rs.) (How fast they get them is for the
/// benchmarks; the slowest step is printed, not asserted.)
///
/// 1000 QoS 0 messages of 16 KiB (16 MB, far more than the kernel buffers a
/// stalled socket can absorb). The publisher sends each message once both
/// fast subscribers got the previous one: dropping QoS 0 for a subscriber
/// whose own buffer is over the cap is the broker's policy, so an unpaced
/// flood could legitimately drop messages for the fast subscribers too (their
/// 64 KiB is only four messages); paced, any loss for them is a bug.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_does_not_hold_back_others() {
    const MSGS: usize = 1000;
    const SIZE: usize = 16 * 1024;
    let broker = start(2, |c| {
        c.limits.max_write_buffer = 64 * 1024;
        c.limits.slow_consumer_policy = ringmq::config::SlowConsumerPolicy::Drop;
        c.read_buffer_size = 64 * 1024;
    });
    let topic = "slow/t";

    let stalled =
        Raw::small_rcvbuf_subscriber(broker.addr, &id_on(1, 2, "slow-stalled"), topic).await;
    // From here on `stalled` never reads again.

    let mut fast_same = V4::connect(broker.addr, &id_on(1, 2, "slow-fast1")).await;
    fast_same.subscribe_ok(topic, QoS::AtMostOnce).await;
    let mut fast_other = V4::connect(broker.addr, &id_on(0, 2, "slow-fast0")).await;
    fast_other.subscribe_ok(topic, QoS::AtMostOnce).await;
    let publisher = V4::connect(broker.addr, &id_on(0, 2, "slow-pub")).await;

    let t0 = Instant::now();
    let body = "z".repeat(SIZE - 16);
    let mut slowest_step = Duration::ZERO;
    // Each recv_publish is bounded by STEP: a subscriber held back by the
    // stalled one fails there.
    for i in 0..MSGS {
        let step = Instant::now();
        let want = numbered("s", i);
        publisher
            .publish(topic, QoS::AtMostOnce, false, format!("{want}|{body}"))
            .await;
        for (name, sub) in [
            ("same core", &mut fast_same),
            ("other core", &mut fast_other),
        ] {
            let p = sub.recv_publish().await;
            let end = label_of(&p.payload).len();
            assert_eq!(
                String::from_utf8_lossy(&p.payload[..end]),
                want,
                "fast subscriber on the {name}: lost or reordered"
            );
            assert_eq!(p.payload.len(), want.len() + 1 + body.len());
        }
        slowest_step = slowest_step.max(step.elapsed());
    }
    let elapsed = t0.elapsed();
    eprintln!(
        "slow consumer: {MSGS} x {SIZE} B to both fast subscribers in {elapsed:?} \
         (slowest message {slowest_step:?})"
    );
    let c = broker
        .wait_counters(STEP, "dropped_slow_consumer > 0", |c| {
            c.dropped_slow_consumer > 0
        })
        .await;
    eprintln!(
        "dropped_slow_consumer = {}, messages_sent = {}",
        c.dropped_slow_consumer, c.messages_sent
    );
    // A marker after the last message: a second copy of it would come first.
    publisher
        .publish(topic, QoS::AtMostOnce, false, "slow-end")
        .await;
    fast_same
        .expect_marker("slow-end", "each message once")
        .await;
    fast_other
        .expect_marker("slow-end", "each message once")
        .await;
    drop(stalled);
}
