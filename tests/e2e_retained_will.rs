//! Retained messages, `$` topics and wills, end to end.
//!
//! Wills are produced by raw clients (ringmq's codec over a plain socket) so
//! that a connection can end exactly as wanted: socket dropped, keep-alive
//! expired, protocol violation, takeover, or a proper DISCONNECT. The
//! observers are rumqttc clients.

mod common;

use std::time::{Duration, Instant};

use common::v4::QoS;
use common::*;
use ringmq::codec::Protocol;

// ---- retained ----------------------------------------------------------------------

/// Store, replace, clear; delivered on subscribe with RETAIN=1 (exact and
/// wildcard filters, at min(QoS)), forwarded live with RETAIN=0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_store_replace_clear() {
    // No $SYS: its retained messages would count in `retained_current`.
    let broker = start(2, |c| c.sys_interval = Duration::ZERO);
    let mut publisher = V4::connect(broker.addr, &id_on(0, 2, "rt-pub")).await;
    publisher
        .publish("rt/a", QoS::AtLeastOnce, true, "v1")
        .await;
    publisher.wait_acks(1, QoS::AtLeastOnce).await;

    // Store: a new subscriber (other core) gets it with RETAIN=1.
    let mut live = V4::connect(broker.addr, &id_on(1, 2, "rt-live")).await;
    live.subscribe_ok("rt/a", QoS::AtLeastOnce).await;
    let p = live.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.retain),
        ("rt/a", &b"v1"[..], true)
    );
    assert_eq!(p.qos, QoS::AtLeastOnce);

    // Replace: the existing subscriber gets it live with RETAIN=0 ...
    publisher
        .publish("rt/a", QoS::AtLeastOnce, true, "v2")
        .await;
    publisher.wait_acks(1, QoS::AtLeastOnce).await;
    let p = live.recv_publish().await;
    assert_eq!(
        (&p.payload[..], p.retain),
        (&b"v2"[..], false),
        "live copy has RETAIN=0"
    );
    // ... and new subscribers (either core, exact and wildcard filters, at
    // min(subscription, message) QoS) get only the new value with RETAIN=1.
    for (k, (core, filter, qos)) in [
        (0, "rt/a", QoS::AtLeastOnce),
        (1, "rt/+", QoS::AtMostOnce),
        (0, "rt/#", QoS::ExactlyOnce),
        (1, "#", QoS::AtLeastOnce),
    ]
    .into_iter()
    .enumerate()
    {
        let mut s = V4::connect(broker.addr, &id_on(core, 2, &format!("rt-new-{filter}"))).await;
        // A topic of its own for the marker below, which no other client and
        // no retained message matches.
        let marker_topic = format!("rt-marker/{k}");
        s.subscribe_ok(&marker_topic, QoS::AtLeastOnce).await;
        s.subscribe_ok(filter, qos).await;
        let p = s.recv_publish().await;
        assert_eq!(
            (p.topic.as_str(), &p.payload[..], p.retain),
            ("rt/a", &b"v2"[..], true),
            "retained via {filter}"
        );
        let want = if qos == QoS::AtMostOnce {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        assert_eq!(
            p.qos, want,
            "retained via {filter}: min(sub {qos:?}, message QoS 1)"
        );
        // Retained messages go out with the SUBACK, in the same step: a live
        // marker published after it arrived comes after them all.
        publisher
            .publish(&marker_topic, QoS::AtLeastOnce, false, "rt-end")
            .await;
        publisher.wait_acks(1, QoS::AtLeastOnce).await;
        s.expect_marker("rt-end", "only the new value, once").await;
    }

    // Clear with an empty retained payload: live subscribers see it (empty),
    // later subscribers get nothing.
    publisher
        .publish("rt/a", QoS::AtLeastOnce, true, Vec::new())
        .await;
    publisher.wait_acks(1, QoS::AtLeastOnce).await;
    let p = live.recv_publish().await;
    assert!(p.payload.is_empty());
    // Another retained message, so that the late subscriber gets something,
    // then a live marker published after its SUBACK: the retained messages
    // all went out with the SUBACK, so before the marker.
    publisher
        .publish("rt/other", QoS::AtLeastOnce, true, "m")
        .await;
    publisher.wait_acks(1, QoS::AtLeastOnce).await;
    let mut late = V4::connect(broker.addr, &id_on(1, 2, "rt-late")).await;
    late.subscribe_ok("rt/#", QoS::AtLeastOnce).await;
    publisher
        .publish("rt/late-marker", QoS::AtLeastOnce, false, "rt-late-end")
        .await;
    publisher.wait_acks(1, QoS::AtLeastOnce).await;
    let before = late.recv_until_marker("rt-late-end").await;
    let topics: Vec<&str> = before.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(
        topics,
        ["rt/other"],
        "the cleared topic must not be retained"
    );
    broker
        .wait_counters(STEP, "one retained message left", |c| {
            // Each core keeps a replica; the total reports one replica's size.
            c.retained_current == 1
        })
        .await;
}

/// Retained messages from publishers on both cores land in every core's
/// replica; a subscriber to `#` on each core sees both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_from_both_cores_reach_both_cores() {
    let broker = start2();
    for core in 0..2 {
        let mut p = V4::connect(broker.addr, &id_on(core, 2, &format!("rb-pub{core}"))).await;
        p.publish(
            &format!("rb/{core}"),
            QoS::AtLeastOnce,
            true,
            format!("from{core}"),
        )
        .await;
        p.wait_acks(1, QoS::AtLeastOnce).await;
    }
    // A retained PUBACK comes once every replica holds the message: a
    // subscriber on either core gets both at once.
    for core in 0..2 {
        let mut s = V4::connect(broker.addr, &id_on(core, 2, &format!("rb-sub{core}"))).await;
        s.subscribe_ok("rb/+", QoS::AtLeastOnce).await;
        let mut got: Vec<String> = s
            .recv_publishes(2)
            .await
            .into_iter()
            .inspect(|p| assert!(p.retain))
            .map(|p| p.topic)
            .collect();
        got.sort();
        assert_eq!(got, vec!["rb/0", "rb/1"], "subscriber on core {core}");
    }
}

/// A retained QoS 1 PUBLISH is acknowledged only once every core's replica
/// holds it: a client that subscribes right after the PUBACK, on any core,
/// gets it, whichever core owns the topic. Many rounds, each racing the
/// subscribe against the replication the PUBACK must have waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_retained_is_on_every_core() {
    let broker = start2();
    let mut publisher = Raw::connect(broker.addr, &id_on(0, 2, "ra-pub"), true, 0, None).await;
    for n in 1..=40u16 {
        let topic = format!("ra/{n}");
        let publish = publish_packet(&topic, QosPid::AtLeastOnce(pid(n)), true, b"v");
        publisher.send(&publish).await;
        match publisher.recv().await {
            Packet::PubAck(a) => assert_eq!(a.pid, pid(n)),
            other => panic!("expected PUBACK, got {other:?}"),
        }
        let core = usize::from(n) % 2;
        let id = id_on(core, 2, &format!("ra-sub{n}"));
        let mut sub = Raw::connect(broker.addr, &id, true, 0, None).await;
        sub.subscribe_ok(&topic, RawQoS::AtMostOnce, 0).await;
        let p = sub.recv_publish().await;
        assert_eq!(
            (p.topic.as_ref(), p.retain),
            (topic.as_bytes(), true),
            "round {n}"
        );
        sub.disconnect().await;
    }
}

// ---- $ topics ------------------------------------------------------------------------

fn is_dollar(p: &v4::Publish) -> bool {
    p.topic.starts_with('$')
}

const SYS_INTERVAL: Duration = Duration::from_secs(1);

/// `#` never matches `$SYS/...` or `$foo`, live or retained; `$SYS/#` gets the
/// broker's periodic `$SYS` messages; `$foo/#` gets `$foo` messages; a client's
/// own PUBLISH to `$SYS/x` is dropped (counted), not delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dollar_topics_and_sys() {
    let broker = start(2, |c| c.sys_interval = SYS_INTERVAL);
    let mut hash0 = V4::connect(broker.addr, &id_on(0, 2, "dl-hash0")).await;
    hash0.subscribe_ok("#", QoS::AtLeastOnce).await;
    let mut hash1 = V4::connect(broker.addr, &id_on(1, 2, "dl-hash1")).await;
    hash1.subscribe_ok("#", QoS::AtLeastOnce).await;
    let mut plus1 = V4::connect(broker.addr, &id_on(1, 2, "dl-plus1")).await;
    plus1.subscribe_ok("+/#", QoS::AtLeastOnce).await;
    let mut sys = V4::connect(broker.addr, &id_on(1, 2, "dl-sys")).await;
    sys.subscribe_ok("$SYS/#", QoS::AtLeastOnce).await;
    sys.subscribe_ok("dl/marker", QoS::AtLeastOnce).await;
    let mut foo = V4::connect(broker.addr, &id_on(0, 2, "dl-foo")).await;
    foo.subscribe_ok("$foo/#", QoS::AtLeastOnce).await;

    // The broker publishes $SYS (from core 0) every second: wait for a live
    // one, for at most one interval plus STEP.
    let t0 = Instant::now();
    let first_live = within(SYS_INTERVAL + STEP, "a live $SYS message", async {
        loop {
            let p = sys.recv_publish().await;
            assert!(p.topic.starts_with("$SYS/"), "unexpected {}", p.topic);
            if !p.retain {
                return p;
            }
        }
    })
    .await;
    eprintln!(
        "first live $SYS message {} after {:?}",
        first_live.topic,
        t0.elapsed()
    );

    let mut publisher = V4::connect(broker.addr, &id_on(1, 2, "dl-pub")).await;
    publisher
        .publish("$foo/bar", QoS::AtLeastOnce, false, "foo")
        .await;
    publisher
        .publish("$SYS/x", QoS::AtLeastOnce, false, "forged")
        .await;
    publisher
        .publish("dl/marker", QoS::AtLeastOnce, false, "dl-end")
        .await;
    publisher.wait_acks(3, QoS::AtLeastOnce).await;

    let p = foo.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("$foo/bar", &b"foo"[..])
    );
    // Everything the `#` and `+/#` subscribers got up to the marker (which
    // was routed after the live $SYS message and the $foo/$SYS publishes).
    for c in [&mut hash0, &mut hash1, &mut plus1] {
        let before = c.recv_until_marker("dl-end").await;
        let dollar: Vec<&String> = before
            .iter()
            .filter(|p| is_dollar(p))
            .map(|p| &p.topic)
            .collect();
        assert!(
            dollar.is_empty(),
            "{}: wildcard matched $ topics: {dollar:?}",
            c.id
        );
    }
    let before = sys.recv_until_marker("dl-end").await;
    assert!(
        before.iter().all(|p| p.topic != "$SYS/x"),
        "a client's PUBLISH to $SYS/x was delivered"
    );
    broker
        .wait_counters(STEP, "dropped_sys_publish == 1", |c| {
            c.dropped_sys_publish == 1
        })
        .await;

    // Retained $SYS messages exist now; a new `#` subscriber gets none of them.
    publisher
        .publish("dl/retained", QoS::AtLeastOnce, true, "r")
        .await;
    publisher.wait_acks(1, QoS::AtLeastOnce).await;
    let mut late = V4::connect(broker.addr, &id_on(1, 2, "dl-late")).await;
    late.subscribe_ok("#", QoS::AtLeastOnce).await;
    // Retained matches all go out with the SUBACK: a live marker
    // published after it comes after any $SYS one, were it (wrongly) matched.
    publisher
        .publish("dl/late-marker", QoS::AtLeastOnce, false, "dl-late-end")
        .await;
    let before = late.recv_until_marker("dl-late-end").await;
    let topics: Vec<&str> = before.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(topics, ["dl/retained"], "no retained $SYS message for `#`");
    // Whereas a new `$SYS/#` subscriber gets the retained $SYS messages.
    wait_retained(&broker, "$SYS/broker/version", |p| {
        p.is_some_and(|p| p.starts_with(b"ringmq"))
    })
    .await;
    let mut late_sys = V4::connect(broker.addr, &id_on(0, 2, "dl-late-sys")).await;
    late_sys
        .subscribe_ok("$SYS/broker/version", QoS::AtMostOnce)
        .await;
    let p = late_sys.recv_publish().await;
    assert!(p.retain && p.payload.starts_with(b"ringmq"), "{p:?}");
}

// ---- wills -----------------------------------------------------------------------------

/// A watcher subscribed to `will/#` at QoS 2 on `core`.
async fn watcher(broker: &TestBroker, core: usize, name: &str) -> V4 {
    let mut w = V4::connect(broker.addr, &id_on(core, 2, &format!("watch-{name}"))).await;
    w.subscribe_ok("will/#", QoS::ExactlyOnce).await;
    w
}

/// Waits until the broker has finished with the connections that ended (the
/// point after which a will would have been published), via the counters.
async fn settle(broker: &TestBroker, connections: u64) -> ringmq::metrics::Counters {
    broker
        .wait_counters(
            STEP,
            &format!("connections_current == {connections}"),
            |c| c.connections_current == connections,
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_on_socket_drop() {
    let broker = start2();
    let mut w = watcher(&broker, 1, "drop").await;
    let raw = Raw::connect(
        broker.addr,
        &id_on(0, 2, "will-drop"),
        true,
        0,
        Some(will("will/drop", "gone", RawQoS::AtLeastOnce, false)),
    )
    .await;
    drop(raw); // no DISCONNECT
    let p = w.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("will/drop", &b"gone"[..])
    );
    assert_eq!(p.qos, QoS::AtLeastOnce, "will QoS honoured");
    assert!(!p.retain);
    settle(&broker, 1).await;
    broker
        .wait_counters(STEP, "wills_published == 1", |c| c.wills_published == 1)
        .await;
}

/// keep_alive = 1 s, then silence: the broker closes the connection after
/// 1.5 x keep-alive (checked on a 500 ms tick), not before, and publishes the
/// will.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_on_keep_alive_expiry() {
    let broker = start2();
    let mut w = watcher(&broker, 0, "ka").await;
    // Before the CONNECT is sent, so that the broker's keep-alive clock starts
    // after it: the lower bound below cannot fail because the test was slow.
    let t0 = Instant::now();
    let mut raw = Raw::connect(
        broker.addr,
        &id_on(1, 2, "will-ka"),
        true,
        1,
        Some(will("will/ka", "silent", RawQoS::AtMostOnce, false)),
    )
    .await;
    // Closed at all, and the will published (each wait bounded by STEP past
    // the 1.5 s): deadlines, not claims about how promptly.
    raw.expect_closed(Duration::from_millis(1500) + STEP).await;
    let closed = t0.elapsed();
    let p = w.recv_publish().await;
    let published = t0.elapsed();
    assert_eq!(p.topic, "will/ka");
    assert_eq!(p.qos, QoS::AtMostOnce);
    eprintln!("keep-alive 1 s: closed after {closed:?}, will after {published:?}");
    assert!(
        closed >= Duration::from_millis(1400),
        "closed too early: {closed:?}"
    );
    broker
        .wait_counters(STEP, "keepalive_timeouts == 1", |c| {
            c.keepalive_timeouts == 1
        })
        .await;
}

/// A second CONNECT on a connection is a protocol violation: closed, will
/// published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_on_protocol_violation() {
    let broker = start2();
    let mut w = watcher(&broker, 1, "pv").await;
    let id = id_on(0, 2, "will-pv");
    let mut raw = Raw::connect(
        broker.addr,
        &id,
        true,
        0,
        Some(will("will/pv", "violated", RawQoS::ExactlyOnce, false)),
    )
    .await;
    raw.send(&connect_packet(Protocol::V3_1_1, &id, true, 0, None))
        .await;
    raw.expect_closed(STEP).await;
    let p = w.recv_publish().await;
    assert_eq!((p.topic.as_str(), p.qos), ("will/pv", QoS::ExactlyOnce));
    broker
        .wait_counters(STEP, "protocol_violations == 1", |c| {
            c.protocol_violations == 1
        })
        .await;
}

/// Takeover by a connection with the same client id publishes the old
/// connection's will (as Mosquitto does) and closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_on_takeover() {
    let broker = start2();
    let mut w = watcher(&broker, 0, "to").await;
    let id = id_on(1, 2, "will-to");
    let mut old = Raw::connect(
        broker.addr,
        &id,
        true,
        0,
        Some(will("will/to", "replaced", RawQoS::AtLeastOnce, false)),
    )
    .await;
    let _new = Raw::connect(broker.addr, &id, true, 0, None).await;
    old.expect_closed(STEP).await;
    let p = w.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("will/to", &b"replaced"[..])
    );
    // Exactly one will: a marker from a client on the session's core, after
    // the will arrived; a second copy, routed with the first, comes before it.
    let publisher = V4::connect(broker.addr, &id_on(1, 2, "to-pub")).await;
    publisher
        .publish("will/marker", QoS::AtLeastOnce, false, "to-end")
        .await;
    w.expect_marker("to-end", "exactly one will").await;
}

/// No will after a normal DISCONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_will_after_disconnect() {
    let broker = start2();
    let mut w = watcher(&broker, 1, "dc").await;
    let mut raw = Raw::connect(
        broker.addr,
        &id_on(0, 2, "will-dc"),
        true,
        0,
        Some(will(
            "will/dc",
            "must not appear",
            RawQoS::AtLeastOnce,
            true,
        )),
    )
    .await;
    raw.disconnect().await;
    let c = settle(&broker, 1).await;
    assert_eq!(c.wills_published, 0);
    // A marker from a client on the same core, published after the broker
    // closed the connection (so after it handled the DISCONNECT): a will
    // would come before it. (This replaces a quiet window after the marker,
    // which could only see a will sent out of order.)
    let publisher = V4::connect(broker.addr, &id_on(0, 2, "dc-pub")).await;
    publisher
        .publish("will/marker", QoS::AtLeastOnce, false, "dc-end")
        .await;
    w.expect_marker("dc-end", "a will was published after DISCONNECT")
        .await;
    // Nor was it retained: retained messages go out with the SUBACK, so
    // before a live marker published after it.
    let mut late = V4::connect(broker.addr, &id_on(1, 2, "dc-late")).await;
    late.subscribe_ok("will/dc", QoS::AtLeastOnce).await;
    publisher
        .publish("will/dc", QoS::AtLeastOnce, false, "dc-late-end")
        .await;
    late.expect_marker("dc-late-end", "the will was retained")
        .await;
}

/// A retained QoS 2 will: delivered live at QoS 2 (RETAIN=0 for the live
/// copy, 3.1.1) and retained for later subscribers (RETAIN=1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_will_is_retained() {
    let broker = start2();
    let mut w = watcher(&broker, 0, "rw").await;
    let raw = Raw::connect(
        broker.addr,
        &id_on(1, 2, "will-rw"),
        true,
        0,
        Some(will("will/rw", "last words", RawQoS::ExactlyOnce, true)),
    )
    .await;
    drop(raw);
    let p = w.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), p.qos, p.retain),
        ("will/rw", QoS::ExactlyOnce, false)
    );
    settle(&broker, 1).await;
    wait_retained_payload(&broker, "will/rw", b"last words").await;
    for core in 0..2 {
        let mut late = V4::connect(broker.addr, &id_on(core, 2, &format!("rw-late{core}"))).await;
        late.subscribe_ok("will/+", QoS::ExactlyOnce).await;
        let p = late.recv_publish().await;
        assert_eq!(
            (p.topic.as_str(), &p.payload[..], p.qos, p.retain),
            ("will/rw", &b"last words"[..], QoS::ExactlyOnce, true),
            "retained will, subscriber on core {core}"
        );
    }
}

/// A will from a rumqttc client (its LastWill option) whose process "dies".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_last_will_on_abrupt_end() {
    let broker = start2();
    let mut w = watcher(&broker, 1, "rq").await;
    let c = V4::connect_with(broker.addr, &id_on(0, 2, "will-rq"), |o| {
        o.set_last_will(v4::LastWill::new("will/rq", "bye", QoS::AtLeastOnce, false));
    })
    .await;
    c.kill().await;
    let p = w.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.qos),
        ("will/rq", &b"bye"[..], QoS::AtLeastOnce)
    );
}
