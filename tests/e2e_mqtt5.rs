//! MQTT 5.0 end to end, with real 5.0 clients: rumqttc's v5 client, the
//! Mosquitto command-line tools (`-V 5`) and raw sockets speaking ringmq's
//! own codec where the exact bytes matter (CONNACK properties, topic aliases
//! the broker chooses, Receive Maximum, Maximum Packet Size, AUTH).
//!
//! Every test runs a 2-core broker in-process and places clients on chosen
//! cores (`id_on`) so that publishers and subscribers sit on different cores
//! wherever routing crosses the mesh. Every wait is bounded (see
//! `common::within`, `STEP`) and the whole test body is bounded by
//! [`TEST_LIMIT`]. Sleeps appear only where a message must age past its
//! expiry on the broker's clock (a lower bound, each with a comment); other
//! timers (session expiry, will delay) are awaited through their effects.
//! "Nothing else arrives" is checked with markers (see `common`), except
//! where the behaviour under test would hold a marker back too.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use ringmq::codec::Auth;
use rumqttc::v5::mqttbytes::v5::{
    Filter, PublishProperties, RetainForwardRule, SubscribeProperties, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;

/// Bound on a whole test body (each test must finish well within 20 s).
const TEST_LIMIT: Duration = Duration::from_secs(19);

// ---- local helpers ------------------------------------------------------------

/// Options tweak: clean start flag and 5.0 session expiry interval, keeping
/// the helper's other connect properties.
fn session(expiry: u32, clean: bool) -> impl FnOnce(&mut v5::MqttOptions) {
    move |o: &mut v5::MqttOptions| {
        o.set_clean_start(clean);
        let mut cp = o.connect_properties().unwrap_or_default();
        cp.session_expiry_interval = Some(expiry);
        o.set_connect_properties(cp);
    }
}

fn sub_props(id: usize) -> SubscribeProperties {
    SubscribeProperties {
        id: Some(id),
        user_properties: Vec::new(),
    }
}

async fn suback(c: &mut V5) -> Vec<SubscribeReasonCode> {
    c.expect("SUBACK", |p| match p {
        v5::Packet::SubAck(s) => Some(s.return_codes.clone()),
        _ => None,
    })
    .await
}

fn expiry_props(secs: u32) -> PublishProperties {
    PublishProperties {
        message_expiry_interval: Some(secs),
        ..PublishProperties::default()
    }
}

fn payload_str(p: &v5::Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

// ---- CONNACK ------------------------------------------------------------------

/// CONNACK properties: an assigned client identifier for an empty id, Server
/// Keep Alive when the requested keep-alive is above `max_keepalive`, the
/// capped session expiry, Topic Alias Maximum and Receive Maximum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_properties() {
    within(TEST_LIMIT, "test", async {
        let broker = start(2, |c| {
            c.limits.max_keepalive = 60;
            c.limits.max_topic_alias = 5;
            c.limits.max_awaiting_rel = 50;
            c.limits.max_session_expiry = 100;
        });
        // Raw: the exact properties.
        let mut raw = Raw::open(broker.addr).await;
        let ack = raw
            .handshake(connect_packet_v5(
                "",
                true,
                300,
                vec![Property::SessionExpiryInterval(1000)],
                None,
            ))
            .await;
        assert_eq!(ack.code, 0, "{ack:?}");
        assert!(!ack.session_present);
        let props = &ack.properties;
        let assigned = props
            .find(|p| match p {
                Property::AssignedClientIdentifier(id) => Some(id.clone()),
                _ => None,
            })
            .expect("Assigned Client Identifier for an empty client id [MQTT-3.2.2-16]");
        assert!(!assigned.is_empty());
        let get = |want: fn(&Property) -> Option<u32>| props.find(want);
        assert_eq!(
            get(|p| match p {
                Property::ServerKeepAlive(v) => Some(u32::from(*v)),
                _ => None,
            }),
            Some(60),
            "Server Keep Alive = max_keepalive: {props:?}"
        );
        assert_eq!(
            get(|p| match p {
                Property::TopicAliasMaximum(v) => Some(u32::from(*v)),
                _ => None,
            }),
            Some(5),
            "Topic Alias Maximum: {props:?}"
        );
        assert_eq!(
            get(|p| match p {
                Property::ReceiveMaximum(v) => Some(u32::from(*v)),
                _ => None,
            }),
            Some(50),
            "Receive Maximum: {props:?}"
        );
        assert_eq!(
            get(|p| match p {
                Property::SessionExpiryInterval(v) => Some(*v),
                _ => None,
            }),
            Some(100),
            "capped Session Expiry Interval: {props:?}"
        );
        // The assigned id is a working session: it receives its own publish.
        raw.subscribe_ok("ca/t", RawQoS::AtMostOnce, 0).await;
        raw.send(&publish_packet("ca/t", QosPid::AtMostOnce, false, b"self"))
            .await;
        assert_eq!(&raw.recv_publish().await.payload[..], b"self");

        // Keep-alive within the cap and a client id: no Server Keep Alive, no
        // assigned id.
        let (_raw2, ack2) = Raw::connect_v5(broker.addr, &id_on(1, 2, "ca-plain"), vec![]).await;
        assert!(
            ack2.properties
                .find(|p| matches!(
                    p,
                    Property::ServerKeepAlive(_) | Property::AssignedClientIdentifier(_)
                )
                .then_some(()))
                .is_none(),
            "{:?}",
            ack2.properties
        );

        // rumqttc v5 with an empty id sees the same.
        let c = V5::connect_with(broker.addr, "", |o| {
            o.set_keep_alive(Duration::from_secs(600));
        })
        .await;
        let p = c.connack.properties.clone().expect("CONNACK properties");
        assert!(p
            .assigned_client_identifier
            .is_some_and(|id| !id.is_empty()));
        assert_eq!(p.server_keep_alive, Some(60));
        assert_eq!(p.topic_alias_max, Some(5));
        assert_eq!(p.receive_max, Some(50));
    })
    .await
}

/// The keep-alive the broker announced in Server Keep Alive is the one it
/// enforces: a client asking for 300 s gets 1 s (max_keepalive) and, silent,
/// is disconnected with 0x8D after 1.5 s, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_keep_alive_is_enforced() {
    within(TEST_LIMIT, "test", async {
        let broker = start(2, |c| c.limits.max_keepalive = 1);
        let mut raw = Raw::open(broker.addr).await;
        // Before the CONNECT is sent, so that the broker's keep-alive clock
        // starts after it: the lower bound below cannot fail because the test
        // was slow to read the CONNACK.
        let started = Instant::now();
        let ack = raw
            .handshake(connect_packet_v5(
                &id_on(1, 2, "ska"),
                true,
                300,
                vec![],
                None,
            ))
            .await;
        assert_eq!(ack.code, 0);
        assert_eq!(
            ack.properties.find(|p| match p {
                Property::ServerKeepAlive(v) => Some(*v),
                _ => None,
            }),
            Some(1)
        );
        // Closed at all: a deadline of STEP past the 1.5 s.
        let before = raw.expect_closed(Duration::from_millis(1500) + STEP).await;
        let elapsed = started.elapsed();
        assert!(
            matches!(before.as_slice(), [Packet::Disconnect(d)] if d.reason == 0x8D),
            "{before:?}"
        );
        assert!(
            elapsed >= Duration::from_millis(1400),
            "closed after {elapsed:?}"
        );
    })
    .await
}

/// A broker-assigned client id names a real session: reconnecting with it
/// (clean start off) finds the session and its queued messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigned_client_id_resumes_session() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let mut c = V5::connect_with(broker.addr, "", session(60, true)).await;
        let id = c
            .connack
            .properties
            .as_ref()
            .and_then(|p| p.assigned_client_identifier.clone())
            .expect("assigned client id");
        c.subscribe_ok("acr/t", QoS::AtLeastOnce).await;
        c.disconnect().await;
        let mut publisher = V5::connect(broker.addr, &id_on(0, 2, "acr-pub")).await;
        publisher
            .publish("acr/t", QoS::AtLeastOnce, false, "queued")
            .await;
        publisher.wait_acks(1, QoS::AtLeastOnce).await;
        let mut c = V5::connect_with(broker.addr, &id, session(60, false)).await;
        assert!(c.connack.session_present, "session of assigned id {id}");
        assert_eq!(&c.recv_publish().await.payload[..], b"queued");
    })
    .await
}

// ---- session expiry -----------------------------------------------------------

/// Session expiry 60 s: disconnect, QoS 1 messages published meanwhile are
/// queued, a reconnect within the interval finds the session and gets them.
/// (The interval is longer than the whole test, so the reconnect is within
/// it however slow the machine; session_expiry_elapsed_session_gone covers
/// the other side of a short interval.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_resume_within_interval() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let sid = id_on(1, 2, "se-sub");
        let mut sub = V5::connect_with(broker.addr, &sid, session(60, true)).await;
        sub.subscribe_ok("se/t", QoS::AtLeastOnce).await;
        sub.disconnect().await;

        let mut publisher = V5::connect(broker.addr, &id_on(0, 2, "se-pub")).await;
        for i in 0..3 {
            publisher
                .publish("se/t", QoS::AtLeastOnce, false, numbered("se", i))
                .await;
        }
        publisher.wait_acks(3, QoS::AtLeastOnce).await;

        let mut sub = V5::connect_with(broker.addr, &sid, session(60, false)).await;
        assert!(sub.connack.session_present, "session present within expiry");
        let got = sub.recv_publishes(3).await;
        let payloads: Vec<Bytes> = got.into_iter().map(|p| p.payload).collect();
        assert_sequence(&sid, "se", &payloads, 3);
        // A marker from the same publisher: a second copy of a queued message
        // would come before it.
        publisher
            .publish("se/t", QoS::AtLeastOnce, false, "se-end")
            .await;
        sub.expect_marker("se-end", "each queued message once")
            .await;
    })
    .await
}

/// Session expiry 2 s: the session is kept for the interval, not less, and
/// after it the session is gone: no session present, no subscription left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_elapsed_session_gone() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let sid = id_on(1, 2, "sx-sub");
        let mut sub = V5::connect_with(broker.addr, &sid, session(2, true)).await;
        sub.subscribe_ok("sx/t", QoS::AtLeastOnce).await;
        // The counters are refreshed on each core's 500 ms tick: see the
        // session counted before it goes, so that a later 0 means it ended.
        broker
            .wait_counters(STEP, "sessions_current == 1", |c| c.sessions_current == 1)
            .await;
        let disconnecting = Instant::now();
        sub.disconnect().await;
        // Session expiry is a timer on the broker's tick; the session's end
        // shows in the counters: await that (bounded by STEP past the
        // interval) instead of sleeping for a guess.
        broker
            .wait_counters(
                Duration::from_secs(2) + STEP,
                "the session expired (sessions_current == 0)",
                |c| c.sessions_current == 0,
            )
            .await;
        let ended = disconnecting.elapsed();
        assert!(
            ended >= Duration::from_millis(1900),
            "session ended {ended:?} after the DISCONNECT, before its 2 s expiry"
        );
        let mut sub = V5::connect_with(broker.addr, &sid, session(2, false)).await;
        assert!(!sub.connack.session_present, "session must have expired");
        sub.subscribe_ok("sx/marker", QoS::AtLeastOnce).await;
        let publisher = V5::connect(broker.addr, &id_on(0, 2, "sx-pub")).await;
        publisher
            .publish("sx/t", QoS::AtLeastOnce, false, "late")
            .await;
        // The marker, from the same publisher after "late": had the old
        // subscription survived, "late" would come first.
        publisher
            .publish("sx/marker", QoS::AtLeastOnce, false, "sx-end")
            .await;
        sub.expect_marker("sx-end", "the old subscription went with the session")
            .await;
    })
    .await
}

/// Clean start with session expiry 0 keeps nothing; a DISCONNECT that sets
/// the session expiry to 0 ends a persistent session too; and clean start on
/// reconnect discards a kept session with its queued messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_zero_and_clean_start_keep_nothing() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let mut publisher = V5::connect(broker.addr, &id_on(0, 2, "s0-pub")).await;

        // Clean start, expiry 0 (the 5.0 default).
        let a = id_on(1, 2, "s0-a");
        let mut c = V5::connect(broker.addr, &a).await;
        c.subscribe_ok("s0/a", QoS::AtLeastOnce).await;
        c.disconnect().await;
        let c = V5::connect_with(broker.addr, &a, session(60, false)).await;
        assert!(!c.connack.session_present, "expiry 0: no session kept");
        c.disconnect().await;

        // Persistent (60 s), then a DISCONNECT with Session Expiry Interval 0.
        let b = id_on(1, 2, "s0-b");
        let mut raw = Raw::open(broker.addr).await;
        let ack = raw
            .handshake(connect_packet_v5(
                &b,
                true,
                60,
                vec![Property::SessionExpiryInterval(60)],
                None,
            ))
            .await;
        assert_eq!(ack.code, 0);
        raw.subscribe_ok("s0/b", RawQoS::AtLeastOnce, 1).await;
        raw.send(&Packet::Disconnect(Disconnect {
            reason: 0,
            properties: Properties(vec![Property::SessionExpiryInterval(0)]),
        }))
        .await;
        raw.expect_closed(STEP).await;
        let c = V5::connect_with(broker.addr, &b, session(60, false)).await;
        assert!(
            !c.connack.session_present,
            "DISCONNECT set expiry 0: session ended"
        );
        c.disconnect().await;

        // Persistent session with a queued message, then clean start.
        let d = id_on(1, 2, "s0-d");
        let mut c = V5::connect_with(broker.addr, &d, session(60, true)).await;
        c.subscribe_ok("s0/d", QoS::AtLeastOnce).await;
        c.disconnect().await;
        publisher
            .publish("s0/d", QoS::AtLeastOnce, false, "queued")
            .await;
        publisher.wait_acks(1, QoS::AtLeastOnce).await;
        let mut c = V5::connect_with(broker.addr, &d, session(60, true)).await;
        assert!(
            !c.connack.session_present,
            "clean start discards the session"
        );
        // Subscribed again, a marker from the publisher of "queued": a kept
        // session would deliver its queue before anything new.
        c.subscribe_ok("s0/d", QoS::AtLeastOnce).await;
        publisher
            .publish("s0/d", QoS::AtLeastOnce, false, "s0-end")
            .await;
        c.expect_marker("s0-end", "the queued message went with the session")
            .await;
    })
    .await
}

/// A DISCONNECT may not set a non-zero Session Expiry Interval when the
/// CONNECT's was 0 (5.0 section 3.14.2.2.2): protocol error, and no session is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_cannot_raise_session_expiry_from_zero() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let id = id_on(1, 2, "dse");
        let (mut raw, _) = Raw::connect_v5(broker.addr, &id, vec![]).await;
        raw.send(&Packet::Disconnect(Disconnect {
            reason: 0,
            properties: Properties(vec![Property::SessionExpiryInterval(30)]),
        }))
        .await;
        let before = raw.expect_closed(STEP).await;
        assert!(
            matches!(before.as_slice(), [Packet::Disconnect(d)] if d.reason == 0x82),
            "{before:?}"
        );
        let c = V5::connect_with(broker.addr, &id, session(30, false)).await;
        assert!(!c.connack.session_present, "no session kept");
    })
    .await
}

/// `messages_sent` ("PUBLISH packets sent to clients") counts deliveries that
/// waited in a session queue, not only those sent at once: 3 QoS 1 messages
/// queued for an offline session and delivered on reconnect count 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_counts_queued_deliveries() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let sid = id_on(1, 2, "msc-sub");
        let mut sub = V5::connect_with(broker.addr, &sid, session(60, true)).await;
        sub.subscribe_ok("msc/t", QoS::AtLeastOnce).await;
        sub.disconnect().await;
        let mut publisher = V5::connect(broker.addr, &id_on(0, 2, "msc-pub")).await;
        for i in 0..3 {
            publisher
                .publish("msc/t", QoS::AtLeastOnce, false, numbered("q", i))
                .await;
        }
        publisher.wait_acks(3, QoS::AtLeastOnce).await;
        let mut sub = V5::connect_with(broker.addr, &sid, session(60, false)).await;
        assert!(sub.connack.session_present);
        let got = sub.recv_publishes(3).await;
        let payloads: Vec<Bytes> = got.into_iter().map(|p| p.payload).collect();
        assert_sequence(&sid, "q", &payloads, 3);
        broker
            .wait_counters(STEP, "messages_sent >= 3", |c| c.messages_sent >= 3)
            .await;
    })
    .await
}

// ---- message expiry ---------------------------------------------------------------

/// For an offline persistent session: a QoS 1 message with expiry 1 s is not
/// delivered 2 s later; one with expiry 60 is, with the remaining interval;
/// one without expiry is delivered without the property.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expiry_in_offline_queue() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let sid = id_on(1, 2, "me-sub");
        let mut sub = V5::connect_with(broker.addr, &sid, session(60, true)).await;
        sub.subscribe_ok("me/#", QoS::AtLeastOnce).await;
        sub.disconnect().await;

        let mut publisher = V5::connect(broker.addr, &id_on(0, 2, "me-pub")).await;
        let publishing = Instant::now();
        for (topic, expiry) in [
            ("me/short", Some(1)),
            ("me/long", Some(60)),
            ("me/none", None),
        ] {
            let props = expiry.map(expiry_props).unwrap_or_default();
            publisher
                .client
                .publish_with_properties(topic, QoS::AtLeastOnce, false, topic, props)
                .await
                .unwrap();
        }
        publisher.wait_acks(3, QoS::AtLeastOnce).await;
        let stored = Instant::now();
        // Message expiry is measured on the broker's clock; nothing to await.
        // Sleeping 2 s is a lower bound on how long the messages wait, so the
        // 1 s one has expired however slow the machine.
        tokio::time::sleep(Duration::from_secs(2)).await;

        let reconnecting = Instant::now();
        let mut sub = V5::connect_with(broker.addr, &sid, session(60, false)).await;
        assert!(sub.connack.session_present);
        let got = sub.recv_publishes(2).await;
        let received = Instant::now();
        assert_eq!(
            &got[0].topic[..],
            b"me/long",
            "the 1 s message must have expired"
        );
        let remaining = got[0]
            .properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval)
            .expect("remaining Message Expiry Interval [MQTT-3.3.2-6]");
        // Held for at least the 2 s slept (so at most 58 remain), at most
        // for as long as the test took from publishing to delivery.
        let want = remaining_expiry(60, reconnecting - stored, received - publishing);
        assert!(
            want.contains(&remaining),
            "remaining expiry {remaining}, want {want:?} for the time it was held"
        );
        assert_eq!(&got[1].topic[..], b"me/none");
        assert_eq!(
            got[1]
                .properties
                .as_ref()
                .and_then(|p| p.message_expiry_interval),
            None
        );
        // A marker from the same publisher: the expired message (or a second
        // copy of any) would come before it.
        publisher
            .publish("me/marker", QoS::AtLeastOnce, false, "me-end")
            .await;
        sub.expect_marker("me-end", "the 1 s message expired, the others once")
            .await;
        broker
            .wait_counters(STEP, "dropped_expired >= 1", |c| c.dropped_expired >= 1)
            .await;
    })
    .await
}

/// A retained message with expiry 1 s is delivered (with its remaining expiry)
/// to a subscriber right away, but not to one subscribing after it expired.
///
/// "Right away" must be within the 1 s: a round where subscribing took longer
/// (a slow machine) proves nothing either way, so it is run again with a 5 s
/// expiry; only a machine that cannot subscribe within STEP fails it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_retained_not_delivered() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let mut publisher = V5::connect(broker.addr, &id_on(0, 2, "mr-pub")).await;
        let expiries = [1, STEP.as_secs() as u32];
        for (round, expiry) in expiries.into_iter().enumerate() {
            let (short, keep, filter) = (
                format!("mr{round}/short"),
                format!("mr{round}/keep"),
                format!("mr{round}/#"),
            );
            let publishing = Instant::now();
            publisher
                .client
                .publish_with_properties(
                    short.clone(),
                    QoS::AtLeastOnce,
                    true,
                    "short",
                    expiry_props(expiry),
                )
                .await
                .unwrap();
            publisher
                .publish(&keep, QoS::AtLeastOnce, true, "keep")
                .await;
            publisher.wait_acks(2, QoS::AtLeastOnce).await;
            // Every core's replica holds both once their PUBACKs came.
            let stored = Instant::now();

            let mut early =
                V5::connect(broker.addr, &id_on(1, 2, &format!("mr-early{round}"))).await;
            early.subscribe_ok(&filter, QoS::AtLeastOnce).await;
            // The retained messages went out with the SUBACK (their expiry
            // checked then), so no later than now.
            let subscribed = publishing.elapsed();
            if subscribed + Duration::from_millis(10) >= Duration::from_secs(expiry.into()) {
                assert!(
                    round + 1 < expiries.len(),
                    "publishing and subscribing took {subscribed:?}, \
                     not within even a {expiry} s (STEP) expiry"
                );
                eprintln!(
                    "round {round}: subscribing took {subscribed:?}, not within the {expiry} s \
                     expiry; again with a longer one"
                );
                continue;
            }
            let got = early.recv_publishes(2).await;
            let p = got
                .iter()
                .find(|p| p.topic[..] == *short.as_bytes())
                .expect("unexpired retained message delivered");
            assert!(p.retain);
            let left = p
                .properties
                .as_ref()
                .and_then(|p| p.message_expiry_interval);
            assert!(
                left.is_some_and(|l| l <= expiry),
                "remaining expiry {left:?} of {expiry} s"
            );

            // Message expiry is a timer (nothing to await): wait until the
            // interval has certainly passed since the broker stored the
            // message (it did before its PUBACK), a lower bound however slow
            // the machine.
            tokio::time::sleep_until((stored + Duration::from_secs(expiry.into())).into()).await;
            let mut late = V5::connect(broker.addr, &id_on(1, 2, &format!("mr-late{round}"))).await;
            late.subscribe_ok(&filter, QoS::AtLeastOnce).await;
            // Retained messages go out with the SUBACK, in the same step: a
            // live marker published after it arrived comes after them all.
            publisher
                .publish(&short, QoS::AtLeastOnce, false, "mr-end")
                .await;
            let before = late.recv_until_marker("mr-end").await;
            let topics: Vec<&[u8]> = before.iter().map(|p| &p.topic[..]).collect();
            assert_eq!(
                topics,
                [keep.as_bytes()],
                "only the unexpired retained message"
            );
            return;
        }
    })
    .await
}

/// A QoS 1 message with expiry 1 s waiting behind a full window (Receive
/// Maximum 1) of a connected client expires there: once the window opens,
/// the next unexpired message is sent instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expiry_behind_full_window_dropped_and_counted() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let (mut raw, _) = Raw::connect_v5(
            broker.addr,
            &id_on(1, 2, "mew-sub"),
            vec![Property::ReceiveMaximum(1)],
        )
        .await;
        raw.subscribe_ok("mew/t", RawQoS::AtLeastOnce, 1).await;
        let mut publisher = V5::connect(broker.addr, &id_on(0, 2, "mew-pub")).await;
        for (payload, expiry) in [("m0", None), ("m1", Some(1)), ("m2", None)] {
            let props = expiry.map(expiry_props).unwrap_or_default();
            publisher
                .client
                .publish_with_properties("mew/t", QoS::AtLeastOnce, false, payload, props)
                .await
                .unwrap();
        }
        publisher.wait_acks(3, QoS::AtLeastOnce).await;
        let p0 = raw.recv_publish().await;
        assert_eq!(&p0.payload[..], b"m0");
        // Message expiry is a timer: hold the window past m1's 1 s lifetime
        // (stored before its PUBACK, so 2 s from here is a lower bound on its
        // age however slow the machine).
        tokio::time::sleep(Duration::from_secs(2)).await;
        raw.puback(&p0).await;
        let p = raw.recv_publish().await;
        assert_eq!(&p.payload[..], b"m2", "m1 expired while queued");
        raw.puback(&p).await;
        // A marker from the same publisher: m1, late, would come before it.
        publisher
            .publish("mew/t", QoS::AtLeastOnce, false, "mew-end")
            .await;
        raw.expect_marker("mew-end", "m1 expired, nothing more")
            .await;
        broker
            .wait_counters(STEP, "dropped_expired >= 1", |c| c.dropped_expired >= 1)
            .await;
    })
    .await
}

// ---- topic aliases --------------------------------------------------------------

/// rumqttc sends PUBLISHes that set topic aliases, then PUBLISHes with an
/// empty topic and the alias: a 3.1.1 subscriber and a 5.0 subscriber (no
/// aliases announced) get the full topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_client_to_broker() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let mut sub4 = V4::connect(broker.addr, &id_on(1, 2, "ta-sub4")).await;
        sub4.subscribe_ok("ta/#", v4::QoS::AtLeastOnce).await;
        let mut sub5 = V5::connect(broker.addr, &id_on(1, 2, "ta-sub5")).await;
        sub5.subscribe_ok("ta/#", QoS::AtLeastOnce).await;

        let mut publisher = V5::connect(broker.addr, &id_on(0, 2, "ta-pub")).await;
        assert_eq!(
            publisher
                .connack
                .properties
                .as_ref()
                .and_then(|p| p.topic_alias_max),
            Some(10)
        );
        let sends = [
            ("ta/one", 1, "a"),
            ("", 1, "b"),
            ("ta/two", 2, "c"),
            ("", 2, "d"),
            ("", 1, "e"),
            ("ta/three", 1, "f"), // re-maps alias 1
            ("", 1, "g"),
        ];
        for (topic, alias, payload) in sends {
            let props = PublishProperties {
                topic_alias: Some(alias),
                ..PublishProperties::default()
            };
            publisher
                .client
                .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, props)
                .await
                .unwrap();
        }
        publisher.wait_acks(sends.len(), QoS::AtLeastOnce).await;
        let want = [
            "ta/one", "ta/one", "ta/two", "ta/two", "ta/one", "ta/three", "ta/three",
        ];
        let got4 = sub4.recv_publishes(want.len()).await;
        let topics4: Vec<&str> = got4.iter().map(|p| p.topic.as_str()).collect();
        assert_eq!(topics4, want, "3.1.1 subscriber");
        let got5 = sub5.recv_publishes(want.len()).await;
        for (p, w) in got5.iter().zip(want) {
            assert_eq!(&p.topic[..], w.as_bytes(), "5.0 subscriber");
            assert_eq!(p.properties.as_ref().and_then(|p| p.topic_alias), None);
        }
        let payloads: Vec<String> = got5.iter().map(payload_str).collect();
        assert_eq!(payloads, ["a", "b", "c", "d", "e", "f", "g"]);
    })
    .await
}

/// A topic alias above the broker's Topic Alias Maximum: DISCONNECT 0x94 and
/// close [MQTT-3.3.2-9]. An alias never set, used with an empty topic: a
/// protocol error (DISCONNECT 0x82).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_invalid_disconnects() {
    within(TEST_LIMIT, "test", async {
        let broker = start(2, |c| c.limits.max_topic_alias = 2);
        let (mut raw, ack) = Raw::connect_v5(broker.addr, &id_on(0, 2, "tai-a"), vec![]).await;
        assert_eq!(
            ack.properties.find(|p| match p {
                Property::TopicAliasMaximum(v) => Some(*v),
                _ => None,
            }),
            Some(2)
        );
        raw.send(&publish_packet_v5(
            "tai/x",
            QosPid::AtMostOnce,
            false,
            b"x",
            vec![Property::TopicAlias(3)],
        ))
        .await;
        let before = raw.expect_closed(STEP).await;
        assert!(
            matches!(before.as_slice(), [Packet::Disconnect(d)] if d.reason == 0x94),
            "want DISCONNECT 0x94, got {before:?}"
        );

        let (mut raw, _) = Raw::connect_v5(broker.addr, &id_on(1, 2, "tai-b"), vec![]).await;
        raw.send(&publish_packet_v5(
            "",
            QosPid::AtMostOnce,
            false,
            b"x",
            vec![Property::TopicAlias(1)],
        ))
        .await;
        let before = raw.expect_closed(STEP).await;
        assert!(
            matches!(before.as_slice(), [Packet::Disconnect(d)] if d.reason == 0x82),
            "want DISCONNECT 0x82 for an unknown alias, got {before:?}"
        );
        broker
            .wait_counters(STEP, "protocol_violations >= 2", |c| {
                c.protocol_violations >= 2
            })
            .await;
    })
    .await
}

/// Topic Alias 0 is not permitted [MQTT-3.3.2-8]; like an alias above the
/// maximum it is "Topic Alias invalid": DISCONNECT 0x94 (as Mosquitto does,
/// and as ringmq's own Violation::TopicAliasInvalid documents).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_zero_disconnects_0x94() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let (mut raw, _) = Raw::connect_v5(broker.addr, &id_on(0, 2, "ta0"), vec![]).await;
        raw.send(&publish_packet_v5(
            "ta0/x",
            QosPid::AtMostOnce,
            false,
            b"x",
            vec![Property::TopicAlias(0)],
        ))
        .await;
        let before = raw.expect_closed(STEP).await;
        assert!(
            matches!(before.as_slice(), [Packet::Disconnect(d)] if d.reason == 0x94),
            "want DISCONNECT 0x94 (Topic Alias invalid), got {before:?}"
        );
    })
    .await
}

/// The broker uses topic aliases towards a client that announced a Topic Alias
/// Maximum: the first PUBLISH on a topic sets an alias, later ones carry an
/// empty topic and the alias; past the client's maximum, full topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_broker_to_client() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let (mut raw, _) = Raw::connect_v5(
            broker.addr,
            &id_on(1, 2, "tb-sub"),
            vec![Property::TopicAliasMaximum(2)],
        )
        .await;
        raw.subscribe_ok("tb/#", RawQoS::AtMostOnce, 0).await;
        let mut publisher = V5::connect(broker.addr, &id_on(0, 2, "tb-pub")).await;
        let sends = [
            ("tb/a", "1"),
            ("tb/a", "2"),
            ("tb/b", "3"),
            ("tb/c", "4"),
            ("tb/b", "5"),
            ("tb/a", "6"),
        ];
        for (t, p) in sends {
            publisher.publish(t, QoS::AtLeastOnce, false, p).await;
        }
        publisher.wait_acks(sends.len(), QoS::AtLeastOnce).await;
        // (topic on the wire, alias)
        let want: [(&str, Option<u16>); 6] = [
            ("tb/a", Some(1)),
            ("", Some(1)),
            ("tb/b", Some(2)),
            ("tb/c", None),
            ("", Some(2)),
            ("", Some(1)),
        ];
        for (i, (topic, alias)) in want.into_iter().enumerate() {
            let p = raw.recv_publish().await;
            assert_eq!(&p.payload[..], sends[i].1.as_bytes());
            assert_eq!(
                (&p.topic[..], topic_alias(&p.properties)),
                (topic.as_bytes(), alias),
                "PUBLISH #{i}: {p:?}"
            );
        }
    })
    .await
}

// ---- properties and subscription options ------------------------------------------

/// Request/response: payload format indicator, content type, response topic,
/// correlation data (binary) and several user properties (repeated key,
/// non-ASCII) reach the responder unchanged and in order; the response,
/// published to the response topic with the correlation data, reaches the
/// requester. Requester and responder on different cores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_response_properties_pass_through() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let mut responder = V5::connect(broker.addr, &id_on(1, 2, "rr-server")).await;
        responder.subscribe_ok("rr/req", QoS::AtLeastOnce).await;
        let rid = id_on(0, 2, "rr-client");
        let mut requester = V5::connect(broker.addr, &rid).await;
        let reply_to = format!("rr/resp/{rid}");
        requester.subscribe_ok(&reply_to, QoS::AtLeastOnce).await;

        let user = vec![
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "3".to_string()),
            ("ключ".to_string(), "値 ✓".to_string()),
            ("empty".to_string(), String::new()),
        ];
        let corr = Bytes::from_static(b"\x00\xffcorr-42\x01");
        let req = PublishProperties {
            payload_format_indicator: Some(1),
            content_type: Some("application/json".into()),
            response_topic: Some(reply_to.clone()),
            correlation_data: Some(corr.clone()),
            user_properties: user.clone(),
            ..PublishProperties::default()
        };
        requester
            .client
            .publish_with_properties("rr/req", QoS::AtLeastOnce, false, r#"{"op":"ping"}"#, req)
            .await
            .unwrap();
        let got = responder.recv_publish().await;
        let p = got.properties.clone().expect("request properties");
        assert_eq!(p.payload_format_indicator, Some(1));
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
        assert_eq!(p.response_topic.as_deref(), Some(reply_to.as_str()));
        assert_eq!(p.correlation_data.as_ref(), Some(&corr));
        assert_eq!(
            p.user_properties, user,
            "user properties unchanged, in order"
        );
        assert_eq!(p.message_expiry_interval, None);
        assert!(p.subscription_identifiers.is_empty());

        let resp = PublishProperties {
            correlation_data: p.correlation_data.clone(),
            payload_format_indicator: Some(0),
            user_properties: vec![("status".into(), "ok".into())],
            ..PublishProperties::default()
        };
        responder
            .client
            .publish_with_properties(
                p.response_topic.unwrap(),
                QoS::AtLeastOnce,
                false,
                "pong",
                resp,
            )
            .await
            .unwrap();
        let r = requester.recv_publish().await;
        assert_eq!(&r.payload[..], b"pong");
        let rp = r.properties.expect("response properties");
        assert_eq!(rp.correlation_data.as_ref(), Some(&corr));
        assert_eq!(rp.payload_format_indicator, Some(0));
        assert_eq!(
            rp.user_properties,
            vec![("status".to_string(), "ok".to_string())]
        );
    })
    .await
}

/// Two overlapping subscriptions with identifiers 1 and 2: one PUBLISH
/// carrying both; a topic only one matches carries only its id; a retained
/// message sent on subscribe carries the new subscription's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_identifiers() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let mut publisher = V5::connect(broker.addr, &id_on(0, 2, "si-pub")).await;
        publisher
            .publish("si/r", QoS::AtLeastOnce, true, "retained")
            .await;
        publisher.wait_acks(1, QoS::AtLeastOnce).await;

        let mut sub = V5::connect(broker.addr, &id_on(1, 2, "si-sub")).await;
        sub.client
            .subscribe_with_properties("si/+", QoS::AtLeastOnce, sub_props(1))
            .await
            .unwrap();
        assert_eq!(
            suback(&mut sub).await,
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
        let r = sub.recv_publish().await;
        assert_eq!(&r.topic[..], b"si/r");
        assert_eq!(
            r.properties
                .as_ref()
                .map(|p| p.subscription_identifiers.clone()),
            Some(vec![1])
        );

        sub.client
            .subscribe_with_properties("si/#", QoS::AtLeastOnce, sub_props(2))
            .await
            .unwrap();
        assert_eq!(
            suback(&mut sub).await,
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
        // si/# is new: the retained message comes again, with id 2 only.
        let r = sub.recv_publish().await;
        assert_eq!(&r.topic[..], b"si/r");
        assert_eq!(
            r.properties
                .as_ref()
                .map(|p| p.subscription_identifiers.clone()),
            Some(vec![2])
        );

        publisher
            .publish("si/a", QoS::AtLeastOnce, false, "both")
            .await;
        let p = sub.recv_publish().await;
        assert_eq!(&p.payload[..], b"both");
        let mut ids = p
            .properties
            .map(|p| p.subscription_identifiers)
            .unwrap_or_default();
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 2], "one PUBLISH carrying both identifiers");

        // The publisher's next message is the marker for "exactly one copy":
        // a second copy of "both" would come before it.
        publisher
            .publish("si/a/b", QoS::AtLeastOnce, false, "deep")
            .await;
        let p = sub.recv_publish().await;
        assert_eq!(&p.payload[..], b"deep", "exactly one copy of \"both\"");
        assert_eq!(
            p.properties.map(|p| p.subscription_identifiers),
            Some(vec![2])
        );
    })
    .await
}

/// No local: a client subscribed with no_local does not receive its own
/// publishes, but others' (and another client does receive its publishes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let mut a = V5::connect(broker.addr, &id_on(0, 2, "nl-a")).await;
        let f = Filter {
            nolocal: true,
            ..Filter::new("nl/#", QoS::AtLeastOnce)
        };
        assert_eq!(
            a.subscribe_filters(vec![f]).await,
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
        // Without no_local: where a's own marker reaches it.
        a.subscribe_ok("nl-marker/a", QoS::AtLeastOnce).await;
        let mut b = V5::connect(broker.addr, &id_on(1, 2, "nl-b")).await;
        b.subscribe_ok("nl/#", QoS::AtLeastOnce).await;
        let mut c = V5::connect(broker.addr, &id_on(0, 2, "nl-c")).await;

        a.client
            .publish("nl/t", QoS::AtLeastOnce, false, "from-a")
            .await
            .unwrap();
        assert_eq!(&b.recv_publish().await.payload[..], b"from-a");
        b.client
            .publish("nl/t", QoS::AtLeastOnce, false, "from-b")
            .await
            .unwrap();
        assert_eq!(&b.recv_publish().await.payload[..], b"from-b"); // b has no no_local
        c.client
            .publish("nl/t", QoS::AtLeastOnce, false, "from-c")
            .await
            .unwrap();
        c.wait_acks(1, QoS::AtLeastOnce).await;
        assert_eq!(&b.recv_publish().await.payload[..], b"from-c");
        // b and c are different publishers (on different cores): MQTT orders
        // messages per publisher only, so compare as a set.
        let mut got: Vec<String> = a.recv_publishes(2).await.iter().map(payload_str).collect();
        got.sort();
        assert_eq!(
            got,
            ["from-b", "from-c"],
            "a must not receive its own publish"
        );
        // a's own marker, published after "from-a" on the same path: "from-a"
        // would come before it, and so would a second copy of "from-b" or
        // "from-c" (queued with the first, which has arrived).
        a.client
            .publish("nl-marker/a", QoS::AtLeastOnce, false, "nl-end")
            .await
            .unwrap();
        a.expect_marker("nl-end", "no own publish, no second copy")
            .await;
    })
    .await
}

/// Retain as published, and retain handling 0 (every subscribe), 1 (new
/// subscriptions only) and 2 (never).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_as_published_and_retain_handling() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let mut publisher = V5::connect(broker.addr, &id_on(0, 2, "rap-pub")).await;
        publisher
            .publish("rap/kept", QoS::AtLeastOnce, true, "kept")
            .await;
        publisher.wait_acks(1, QoS::AtLeastOnce).await;

        let filter = |rule| Filter {
            retain_forward_rule: rule,
            ..Filter::new("rap/kept", QoS::AtLeastOnce)
        };
        let ok = vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)];
        // 0: on every subscribe.
        let mut h0 = V5::connect(broker.addr, &id_on(1, 2, "rap-h0")).await;
        for round in 0..2 {
            assert_eq!(
                h0.subscribe_filters(vec![filter(RetainForwardRule::OnEverySubscribe)])
                    .await,
                ok
            );
            let p = h0.recv_publish().await;
            assert!(
                p.retain && &p.payload[..] == b"kept",
                "h0 round {round}: {p:?}"
            );
        }
        // 1: only when the subscription is new.
        let mut h1 = V5::connect(broker.addr, &id_on(1, 2, "rap-h1")).await;
        assert_eq!(
            h1.subscribe_filters(vec![filter(RetainForwardRule::OnNewSubscribe)])
                .await,
            ok
        );
        assert!(h1.recv_publish().await.retain);
        assert_eq!(
            h1.subscribe_filters(vec![filter(RetainForwardRule::OnNewSubscribe)])
                .await,
            ok
        );
        // Retained messages go out with the SUBACK, in the same step: a live
        // (not retained) marker published after it comes after any of them.
        publisher
            .publish("rap/kept", QoS::AtLeastOnce, false, "rap-end1")
            .await;
        h1.expect_marker(
            "rap-end1",
            "no retained message for an existing subscription",
        )
        .await;
        // 2: never.
        let mut h2 = V5::connect(broker.addr, &id_on(0, 2, "rap-h2")).await;
        assert_eq!(
            h2.subscribe_filters(vec![filter(RetainForwardRule::Never)])
                .await,
            ok
        );
        publisher
            .publish("rap/kept", QoS::AtLeastOnce, false, "rap-end2")
            .await;
        h2.expect_marker("rap-end2", "no retained message with retain handling 2")
            .await;

        // Retain as published on live messages.
        let mut rap = V5::connect(broker.addr, &id_on(1, 2, "rap-on")).await;
        let f = Filter {
            preserve_retain: true,
            retain_forward_rule: RetainForwardRule::Never,
            ..Filter::new("rap/live", QoS::AtLeastOnce)
        };
        assert_eq!(rap.subscribe_filters(vec![f]).await, ok);
        let mut plain = V5::connect(broker.addr, &id_on(0, 2, "rap-off")).await;
        let f = Filter {
            retain_forward_rule: RetainForwardRule::Never,
            ..Filter::new("rap/live", QoS::AtLeastOnce)
        };
        assert_eq!(plain.subscribe_filters(vec![f]).await, ok);
        publisher
            .publish("rap/live", QoS::AtLeastOnce, true, "live")
            .await;
        assert!(
            rap.recv_publish().await.retain,
            "retain as published keeps RETAIN=1"
        );
        assert!(
            !plain.recv_publish().await.retain,
            "live copy without RAP has RETAIN=0"
        );
    })
    .await
}

// ---- PUBACK and PUBREC reason codes ----------------------------------------------

/// PUBACK and PUBREC reason codes say what routing found: 0x10 when nobody
/// subscribed, 0x87 for a client publishing to `$SYS`, 0x00 when delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_ack_reason_codes() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let (mut raw, _) = Raw::connect_v5(broker.addr, &id_on(0, 2, "acks"), vec![]).await;
        let (mut sub, _) = Raw::connect_v5(broker.addr, &id_on(1, 2, "acks-sub"), vec![]).await;
        sub.subscribe_ok("acks/watched", RawQoS::AtLeastOnce, 1)
            .await;
        let cases: [(&str, QosPid, u8); 3] = [
            ("acks/nobody", QosPid::AtLeastOnce(pid(1)), 0x10),
            ("$SYS/acks", QosPid::ExactlyOnce(pid(2)), 0x87),
            ("acks/watched", QosPid::AtLeastOnce(pid(3)), 0x00),
        ];
        for (topic, qos_pid, want) in cases {
            raw.send(&publish_packet(topic, qos_pid, false, b"x")).await;
            let reason = match raw.recv().await {
                Packet::PubAck(a) | Packet::PubRec(a) => a.reason,
                other => panic!("{topic}: expected an ack, got {other:?}"),
            };
            assert_eq!(reason, want, "{topic}");
        }
        let p = sub.recv_publish().await;
        assert_eq!(&p.topic[..], b"acks/watched");
    })
    .await
}

// ---- flow control and size limits ----------------------------------------------------

/// Receive Maximum 2: a client that does not acknowledge has at most 2 QoS 1
/// PUBLISHes outstanding; each PUBACK lets one more through, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_maximum_limits_unacked() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let (mut raw, _) = Raw::connect_v5(
            broker.addr,
            &id_on(1, 2, "rm-sub"),
            vec![Property::ReceiveMaximum(2)],
        )
        .await;
        raw.subscribe_ok("rm/t", RawQoS::AtLeastOnce, 1).await;
        let mut publisher = V5::connect(broker.addr, &id_on(0, 2, "rm-pub")).await;
        for i in 0..5 {
            publisher
                .publish("rm/t", QoS::AtLeastOnce, false, numbered("rm", i))
                .await;
        }
        publisher.wait_acks(5, QoS::AtLeastOnce).await;

        let mut next = 0;
        let mut recv = |raw_p: Publish| {
            assert_eq!(raw_p.payload, numbered("rm", next).into_bytes(), "in order");
            next += 1;
            raw_p.qos_pid.pid().expect("QoS 1 has a packet id")
        };
        let p0 = recv(raw.recv_publish().await);
        let p1 = recv(raw.recv_publish().await);
        // A quiet window, not a marker: the window the test checks would hold
        // back any QoS 1 marker too, so nothing can be ordered after what must
        // not come. (A window can only let the test pass wrongly, on a slow
        // machine; it cannot fail wrongly.)
        raw.assert_silent(QUIET, "third PUBLISH before any PUBACK (Receive Maximum 2)")
            .await;
        raw.send(&Packet::PubAck(Ack::new(p0))).await;
        let p2 = recv(raw.recv_publish().await);
        // (A quiet window again, for the same reason.)
        raw.assert_silent(QUIET, "fourth PUBLISH with 2 unacknowledged")
            .await;
        raw.send(&Packet::PubAck(Ack::new(p1))).await;
        raw.send(&Packet::PubAck(Ack::new(p2))).await;
        let p3 = recv(raw.recv_publish().await);
        let p4 = recv(raw.recv_publish().await);
        raw.send(&Packet::PubAck(Ack::new(p3))).await;
        raw.send(&Packet::PubAck(Ack::new(p4))).await;
        // With the window open again, a marker from the same publisher: a
        // sixth PUBLISH would come before it.
        publisher
            .publish("rm/t", QoS::AtLeastOnce, false, "rm-end")
            .await;
        raw.expect_marker("rm-end", "nothing after the 5 messages")
            .await;
    })
    .await
}

/// Maximum Packet Size 100: a 500-byte message is not sent to the client
/// (and counted in dropped_too_large); small ones before and after are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximum_packet_size_drops_large_messages() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let (mut raw, _) = Raw::connect_v5(
            broker.addr,
            &id_on(1, 2, "mps-sub"),
            vec![Property::MaximumPacketSize(100)],
        )
        .await;
        raw.subscribe_ok("mps/#", RawQoS::AtLeastOnce, 1).await;
        let mut publisher = V5::connect(broker.addr, &id_on(0, 2, "mps-pub")).await;
        let big = vec![b'x'; 500];
        publisher
            .publish("mps/t", QoS::AtLeastOnce, false, "small-1")
            .await;
        publisher
            .publish("mps/t", QoS::AtLeastOnce, false, big.clone())
            .await;
        publisher
            .publish("mps/t", QoS::AtMostOnce, false, big)
            .await;
        publisher
            .publish("mps/t", QoS::AtMostOnce, false, "small-2")
            .await;
        publisher
            .publish("mps/t", QoS::AtLeastOnce, false, "small-3")
            .await;
        publisher.wait_acks(3, QoS::AtLeastOnce).await;
        for want in ["small-1", "small-2", "small-3"] {
            let p = raw.recv_publish().await;
            assert_eq!(&p.payload[..], want.as_bytes());
            if let Some(pid) = p.qos_pid.pid() {
                raw.send(&Packet::PubAck(Ack::new(pid))).await;
            }
        }
        // A marker from the same publisher: a late 500-byte message would
        // come before it.
        publisher
            .publish("mps/t", QoS::AtMostOnce, false, "mps-end")
            .await;
        raw.expect_marker("mps-end", "the 500-byte messages must not be sent")
            .await;
        broker
            .wait_counters(STEP, "dropped_too_large >= 2", |c| c.dropped_too_large >= 2)
            .await;
    })
    .await
}

/// Maximum Packet Size 100 on a persistent session: a 500-byte QoS 1 message
/// queued while the client was offline is dropped on resume (not sent), and
/// counted in dropped_too_large like a live one; the small one after it is
/// delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximum_packet_size_queued_message_dropped_and_counted() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let id = id_on(1, 2, "mpq-sub");
        let props = || {
            vec![
                Property::MaximumPacketSize(100),
                Property::SessionExpiryInterval(60),
            ]
        };
        let mut raw = Raw::open(broker.addr).await;
        assert_eq!(
            raw.handshake(connect_packet_v5(&id, true, 60, props(), None))
                .await
                .code,
            0
        );
        raw.subscribe_ok("mpq/#", RawQoS::AtLeastOnce, 1).await;
        raw.disconnect().await;

        let mut publisher = V5::connect(broker.addr, &id_on(0, 2, "mpq-pub")).await;
        publisher
            .client
            .publish("mpq/t", QoS::AtLeastOnce, false, vec![b'x'; 500])
            .await
            .unwrap();
        publisher
            .publish("mpq/t", QoS::AtLeastOnce, false, "small")
            .await;
        publisher.wait_acks(2, QoS::AtLeastOnce).await;

        let mut raw = Raw::open(broker.addr).await;
        let ack = raw
            .handshake(connect_packet_v5(&id, false, 60, props(), None))
            .await;
        assert!(ack.session_present);
        let p = raw.recv_publish().await;
        assert_eq!(&p.payload[..], b"small");
        raw.puback(&p).await;
        // A marker from the same publisher: the queued 500-byte message, had
        // it been sent late, would come before it.
        publisher
            .publish("mpq/t", QoS::AtLeastOnce, false, "mpq-end")
            .await;
        raw.expect_marker("mpq-end", "the 500-byte message must not be sent")
            .await;
        broker
            .wait_counters(STEP, "dropped_too_large >= 1", |c| c.dropped_too_large >= 1)
            .await;
    })
    .await
}

// ---- will delay -----------------------------------------------------------------

fn delayed_will(topic: &str, delay: u32) -> Will {
    let mut w = will(topic, "gone", RawQoS::AtLeastOnce, false);
    w.properties.push(Property::WillDelayInterval(delay));
    w
}

/// A will with delay 2 s (session expiry 10 s) is published about 2 s after
/// an abnormal disconnect, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_delay_published_after_delay() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let mut watcher = V5::connect(broker.addr, &id_on(1, 2, "wd-watch")).await;
        watcher.subscribe_ok("wd/#", QoS::AtLeastOnce).await;
        let mut raw = Raw::open(broker.addr).await;
        let ack = raw
            .handshake(connect_packet_v5(
                &id_on(0, 2, "wd-client"),
                true,
                60,
                vec![Property::SessionExpiryInterval(10)],
                Some(delayed_will("wd/will", 2)),
            ))
            .await;
        assert_eq!(ack.code, 0);
        // Before the drop, so that the broker's delay starts after it: the
        // lower bound below cannot fail because the test was slow.
        let dropped = Instant::now();
        drop(raw); // abnormal end: no DISCONNECT
                   // Published at all: a deadline of STEP past the delay, not a claim
                   // about how promptly after it.
        let p = watcher
            .recv_publish_within(Duration::from_secs(2) + STEP, "the delayed will")
            .await;
        let elapsed = dropped.elapsed();
        assert_eq!(&p.topic[..], b"wd/will");
        assert_eq!(&p.payload[..], b"gone");
        assert!(
            elapsed >= Duration::from_millis(1900),
            "will published after {elapsed:?}, before its 2 s delay"
        );
        // A marker from a client on the will's core, after the will arrived:
        // a second copy, routed with the first, would come before it.
        let publisher = V5::connect(broker.addr, &id_on(0, 2, "wd-pub")).await;
        publisher
            .publish("wd/marker", QoS::AtLeastOnce, false, "wd-end")
            .await;
        watcher.expect_marker("wd-end", "exactly one will").await;
    })
    .await
}

/// A will whose delay (60 s, longer than the whole test) is longer than the
/// session expiry (0): published when the session ends, i.e. at once
/// [MQTT-3.1.3-9]. The wait for it is bounded by STEP, so a broker that
/// honoured the delay fails; how soon the will comes is not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_delay_capped_by_session_end() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let mut watcher = V5::connect(broker.addr, &id_on(1, 2, "wdc-watch")).await;
        watcher.subscribe_ok("wdc/#", QoS::AtLeastOnce).await;
        let mut raw = Raw::open(broker.addr).await;
        let ack = raw
            .handshake(connect_packet_v5(
                &id_on(0, 2, "wdc-client"),
                true,
                60,
                vec![],
                Some(delayed_will("wdc/will", 60)),
            ))
            .await;
        assert_eq!(ack.code, 0);
        let dropped = Instant::now();
        drop(raw);
        let p = watcher.recv_publish().await;
        assert_eq!(&p.topic[..], b"wdc/will");
        assert!(
            dropped.elapsed() < Duration::from_secs(60),
            "published after its delay, not when the session ended: {:?}",
            dropped.elapsed()
        );
    })
    .await
}

/// A will with a delay is NOT published when the client reconnects to its
/// session within the delay, nor when that connection then ends with a
/// normal DISCONNECT.
///
/// Checked with a marker, not a quiet window: afterwards another client on
/// the same core (so on the same timer tick) drops with a will whose delay is
/// one second longer. Anything the first client's session could wrongly
/// publish is due earlier, so the watcher's first message must be the
/// marker will. (Another session, because a session holds one pending will:
/// a marker will on the same session would replace a wrongly kept one.) The
/// delay is STEP, so the reconnect is within it unless connecting took
/// longer than the harness allows for one step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_delay_cancelled_by_reconnect() {
    within(TEST_LIMIT, "test", async {
        let delay = STEP.as_secs() as u32;
        let broker = start2();
        let mut watcher = V5::connect(broker.addr, &id_on(1, 2, "wr-watch")).await;
        watcher.subscribe_ok("wr/#", QoS::AtLeastOnce).await;
        let connect = |id: &str, clean, topic: &str, delay| {
            connect_packet_v5(
                id,
                clean,
                60,
                vec![Property::SessionExpiryInterval(60)],
                Some(delayed_will(topic, delay)),
            )
        };
        let id = id_on(0, 2, "wr-client");
        let mut raw = Raw::open(broker.addr).await;
        assert_eq!(
            raw.handshake(connect(&id, true, "wr/will", delay))
                .await
                .code,
            0
        );
        let dropped = Instant::now();
        drop(raw); // abnormal: the will is due `delay` after this
        let mut raw = Raw::open(broker.addr).await;
        let ack = raw.handshake(connect(&id, false, "wr/will", delay)).await;
        let back = dropped.elapsed();
        assert!(
            back < Duration::from_secs(delay.into()),
            "reconnecting took {back:?}, not within the {delay} s (STEP) will delay"
        );
        assert_eq!(ack.code, 0);
        assert!(ack.session_present, "reconnected to the kept session");
        // A normal DISCONNECT now discards this connection's will.
        raw.disconnect().await;

        // The marker will, due after anything the session above could publish.
        let mut marker = Raw::open(broker.addr).await;
        let mid = id_on(0, 2, "wr-marker");
        let ack = marker
            .handshake(connect(&mid, true, "wr/marker", delay + 1))
            .await;
        assert_eq!(ack.code, 0);
        drop(marker);
        let p = watcher
            .recv_publish_within(
                Duration::from_secs((delay + 1).into()) + STEP,
                "the marker will",
            )
            .await;
        assert_eq!(
            &p.topic[..],
            b"wr/marker",
            "a will cancelled by the reconnect or discarded by DISCONNECT was published: {p:?}"
        );
    })
    .await
}

/// A will with Will Delay 2 s and a Message Expiry Interval of 60 s: the
/// expiry is the will's lifetime from when it is published ("sent as the
/// Publication Expiry Interval when the Server publishes the Will Message",
/// MQTT 5.0 3.1.3.2.4), so the subscriber gets it with the 60 s less only the
/// time since publication, not less the 2 s delay too (at most 58 left).
/// (Not a 1 s expiry, which the will could outlive on its way to the watcher
/// on a slow machine.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_message_expiry_counts_from_publication() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let mut watcher = V5::connect(broker.addr, &id_on(1, 2, "wme-watch")).await;
        watcher.subscribe_ok("wme/#", QoS::AtLeastOnce).await;
        let mut w = delayed_will("wme/will", 2);
        w.properties.push(Property::MessageExpiryInterval(60));
        let mut raw = Raw::open(broker.addr).await;
        let ack = raw
            .handshake(connect_packet_v5(
                &id_on(0, 2, "wme-client"),
                true,
                60,
                vec![Property::SessionExpiryInterval(10)],
                Some(w),
            ))
            .await;
        assert_eq!(ack.code, 0);
        let dropped = Instant::now();
        drop(raw);
        let p = watcher
            .recv_publish_within(Duration::from_secs(2) + STEP, "the delayed will")
            .await;
        // Published no earlier than 2 s after the drop: it has been held at
        // most for the rest of the time the test waited.
        let held_at_most = dropped.elapsed().saturating_sub(Duration::from_secs(2));
        assert_eq!(&p.topic[..], b"wme/will");
        let left = p.properties.and_then(|p| p.message_expiry_interval);
        let want = remaining_expiry(60, Duration::ZERO, held_at_most);
        assert!(
            left.is_some_and(|l| want.contains(&l)),
            "remaining expiry {left:?}, want {want:?}: counted from publication"
        );
    })
    .await
}

// ---- AUTH -----------------------------------------------------------------------

/// Enhanced authentication is not supported: a CONNECT with an Authentication
/// Method gets CONNACK 0x8C and the connection closes; an AUTH packet on an
/// accepted connection is a protocol error (DISCONNECT 0x82).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_method_refused() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let mut raw = Raw::open(broker.addr).await;
        let ack = raw
            .handshake(connect_packet_v5(
                &id_on(0, 2, "auth-a"),
                true,
                60,
                vec![
                    Property::AuthenticationMethod(Bytes::from_static(b"SCRAM-SHA-256")),
                    Property::AuthenticationData(Bytes::from_static(b"n,,n=user,r=abc")),
                ],
                None,
            ))
            .await;
        assert_eq!(ack.code, 0x8C, "Bad authentication method: {ack:?}");
        assert!(!ack.session_present);
        raw.expect_closed(STEP).await;

        let (mut raw, _) = Raw::connect_v5(broker.addr, &id_on(1, 2, "auth-b"), vec![]).await;
        raw.send(&Packet::Auth(Auth {
            reason: 0x19,
            properties: Properties(vec![Property::AuthenticationMethod(Bytes::from_static(
                b"X",
            ))]),
        }))
        .await;
        let before = raw.expect_closed(STEP).await;
        assert!(
            matches!(before.as_slice(), [Packet::Disconnect(d)] if d.reason == 0x82),
            "{before:?}"
        );
    })
    .await
}

// ---- mixed versions ---------------------------------------------------------------

/// A 5.0 publisher to a 3.1.1 subscriber (properties dropped) and a 3.1.1
/// publisher to a 5.0 subscriber (no properties), across cores, QoS 0/1/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_versions() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let mut sub4 = V4::connect(broker.addr, &id_on(1, 2, "mx-sub4")).await;
        sub4.subscribe_ok("mx/from5", v4::QoS::ExactlyOnce).await;
        let mut sub5 = V5::connect(broker.addr, &id_on(0, 2, "mx-sub5")).await;
        sub5.subscribe_ok("mx/from4", QoS::ExactlyOnce).await;
        let mut pub5 = V5::connect(broker.addr, &id_on(0, 2, "mx-pub5")).await;
        let mut pub4 = V4::connect(broker.addr, &id_on(1, 2, "mx-pub4")).await;
        let q5 = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
        let q4 = [
            v4::QoS::AtMostOnce,
            v4::QoS::AtLeastOnce,
            v4::QoS::ExactlyOnce,
        ];
        for i in 0..3 {
            let props = PublishProperties {
                user_properties: vec![("v".into(), "5".into())],
                content_type: Some("text/plain".into()),
                message_expiry_interval: Some(60),
                ..PublishProperties::default()
            };
            pub5.client
                .publish_with_properties("mx/from5", q5[i], false, numbered("five", i), props)
                .await
                .unwrap();
            pub4.publish("mx/from4", q4[i], false, numbered("four", i))
                .await;
        }
        pub5.wait_acks(1, QoS::ExactlyOnce).await;
        pub4.wait_acks(1, v4::QoS::ExactlyOnce).await;
        let got4 = sub4.recv_publishes(3).await;
        for (i, p) in got4.iter().enumerate() {
            assert_eq!(p.topic, "mx/from5");
            assert_eq!(p.payload, numbered("five", i).into_bytes());
            assert_eq!(p.qos, q4[i]);
        }
        let got5 = sub5.recv_publishes(3).await;
        for (i, p) in got5.iter().enumerate() {
            assert_eq!(&p.topic[..], b"mx/from4");
            assert_eq!(p.payload, numbered("four", i).into_bytes());
            assert_eq!(p.qos, q5[i]);
            let p = p.properties.clone().unwrap_or_default();
            assert!(p.user_properties.is_empty() && p.content_type.is_none());
        }
    })
    .await
}

// ---- Mosquitto clients, 5.0 ----------------------------------------------------------

/// mosquitto_pub -V 5 with message expiry, user properties (repeated key),
/// content type and response topic -> mosquitto_sub -V 5 subscribed with
/// subscription identifier 7, on another core: the properties arrive (expiry
/// as the remaining interval) with the identifier attached. A 3.1.1
/// mosquitto_pub reaches it too. (No topic alias here: libmosquitto 2.0.11
/// rejects any PUBLISH with an empty topic, so it cannot receive aliases even
/// when it announces a Topic Alias Maximum; topic_alias_broker_to_client
/// covers the broker side with exact bytes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v5_properties_and_subscription_id() {
    within(TEST_LIMIT, "test", async {
        let broker = start2();
        let port = broker.port;
        let sub_id = id_on(1, 2, "mq-sub");
        let sub_args = format!(
            "-V 5 -q 1 -i {sub_id} -D subscribe subscription-identifier 7 -t mq/# -W 15 \
             -F MSG|%t|%q|%E|%S|%A|%C|%R|%P|%p"
        );
        let sub_args: Vec<&str> = sub_args.split_whitespace().collect();
        let mut sub = MosqSub::start(port, &sub_args).await;
        let pub_id = id_on(0, 2, "mq-pub");
        let publishing = Instant::now();
        for payload in ["one", "two"] {
            let args = format!(
                "-V 5 -q 1 -i {pub_id} -t mq/a -m {payload} \
                 -D publish message-expiry-interval 60 \
                 -D publish user-property k v1 -D publish user-property k v2 \
                 -D publish content-type text/plain -D publish response-topic mq/reply"
            );
            mosquitto_pub(port, &args.split_whitespace().collect::<Vec<_>>(), None);
        }
        let args = format!("-V 311 -q 1 -i {pub_id} -t mq/b -m three");
        mosquitto_pub(port, &args.split_whitespace().collect::<Vec<_>>(), None);
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(sub.msg().await);
        }
        let held_at_most = publishing.elapsed();
        let fields: Vec<Vec<&str>> = got.iter().map(|l| l.split('|').collect()).collect();
        // topic | qos | expiry | sub id | alias | content type | response topic | user props | payload
        for (i, f) in fields.iter().take(2).enumerate() {
            assert_eq!(f[0], "mq/a", "topic of message {i}: {f:?}");
            assert_eq!(f[1], "1");
            let expiry: u32 = f[2].parse().unwrap_or_else(|_| panic!("expiry in {f:?}"));
            let want = remaining_expiry(60, Duration::ZERO, held_at_most);
            assert!(
                want.contains(&expiry),
                "expiry {expiry}, want {want:?}: {f:?}"
            );
            assert_eq!(f[3], "7", "subscription identifier: {f:?}");
            assert_eq!(f[4], "", "no alias for a client that announced none: {f:?}");
            assert_eq!(f[5], "text/plain");
            assert_eq!(f[6], "mq/reply");
            assert_eq!(f[7], "k:v1 k:v2", "user properties in order: {f:?}");
            assert_eq!(f[8], ["one", "two"][i]);
        }
        let f = &fields[2];
        assert_eq!((f[0], f[3], f[8]), ("mq/b", "7", "three"), "{f:?}");
        assert_eq!(f[2], "", "no expiry on a 3.1.1 publish: {f:?}");
        let publishes = sub.seen.iter().filter(|l| l.contains("received PUBLISH"));
        assert_eq!(publishes.count(), 3, "{:#?}", sub.seen);
    })
    .await
}
