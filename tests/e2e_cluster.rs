//! ringmq nodes over real `nats-server`s (started by the test, on ports
//! they pick): messages cross nodes at every QoS, in order and once per
//! matching filter, with their 5.0 properties; wildcards, the parent level
//! of `#` and `$` topics map as MQTT says; retained messages set on one node
//! are read on another; a node never hears its own messages back; a
//! filter's NATS subscription goes with its last subscriber; a killed
//! nats-server of three changes nothing but messages in flight; persistent
//! sessions follow their clients, also away from a node killed with -9,
//! whose queued messages follow when it returns; a will goes out once.
//!
//! Interest travels through NATS asynchronously (a SUBACK means the filter
//! is in force on its own node at once, on the others once NATS carried the
//! subscription). So before a stream, each test publishes probes until one
//! arrives, then a marker after them: what follows finds the routes in
//! place, and the probes are out of the way.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use ringmq::config::{ClusterFile, Config};
use rumqttc::v5::mqttbytes::v5::PublishProperties;

/// Bound on a whole test body.
const TEST_LIMIT: Duration = Duration::from_secs(60);

fn join(
    config: &mut Config,
    node: &str,
    servers: &[&NatsServer],
    tweak: impl FnOnce(&mut ClusterFile),
) {
    let mut file = ClusterFile {
        nats_servers: servers.iter().map(|s| s.url()).collect(),
        node_name: Some(node.to_owned()),
        subject_prefix: Some("test".to_owned()),
        ..ClusterFile::default()
    };
    tweak(&mut file);
    config.cluster = Some(resolve(&file));
}

/// The table as a user writes it, through the same parser and checks.
fn resolve(file: &ClusterFile) -> ringmq::config::Cluster {
    let servers: Vec<String> = file.nats_servers.iter().map(|s| format!("{s:?}")).collect();
    let mut text = format!("[cluster]\nnats_servers = [{}]\n", servers.join(", "));
    for (key, value) in [
        ("node_name", &file.node_name),
        ("subject_prefix", &file.subject_prefix),
    ] {
        if let Some(value) = value {
            text += &format!("{key} = {value:?}\n");
        }
    }
    if let Some(replicas) = file.jetstream_replicas {
        text += &format!("jetstream_replicas = {replicas}\n");
    }
    let root: ringmq::config::FileConfig = toml::from_str(&text).expect("a valid [cluster] table");
    root.resolve()
        .expect("resolves")
        .cluster
        .expect("a cluster")
}

/// A node of the cluster on `servers`, `cores` cores.
fn node(name: &str, cores: usize, servers: &[&NatsServer]) -> TestBroker {
    start(cores, |c| join(c, name, servers, |_| {}))
}

/// Waits until the node's link is connected to NATS.
async fn wait_up(node: &TestBroker) {
    let stats = node.cluster_stats().expect("a cluster node");
    let deadline = Instant::now() + STEP;
    while !stats.up.load(Ordering::Relaxed) {
        assert!(
            Instant::now() < deadline,
            "the cluster link never connected"
        );
        tokio::time::sleep(Duration::from_millis(10)).await; // polling the link's state
    }
}

/// Waits until the node follows the retained messages' stream in
/// JetStream (a retained message published before the first node made the
/// stream is not in it) and has its session bucket open.
async fn wait_jetstream_ready(node: &TestBroker) {
    let stats = node.cluster_stats().expect("a cluster node");
    // A node started while a JetStream server is down waits for elections.
    let deadline = Instant::now() + STEP * 6;
    let ready = || {
        stats.retained_stream.load(Ordering::Relaxed)
            && stats.sessions_ready.load(Ordering::Relaxed)
    };
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "the cluster link never followed the retained messages and opened its session bucket"
        );
        tokio::time::sleep(Duration::from_millis(10)).await; // polling the link's state
    }
}

/// Publishes probes on `topic` until `sub` receives one, then a marker
/// after them, and waits for the marker: routes from the publisher's node
/// to the subscriber's are in place for `topic`, and no probe is left.
async fn until_routed(publisher: &V4, sub: &mut V4, topic: &str) {
    let deadline = Instant::now() + STEP * 2;
    loop {
        publisher
            .publish(topic, v4::QoS::AtMostOnce, false, "probe")
            .await;
        if let Some(ev) = sub.next_within(Duration::from_millis(50)).await {
            if matches!(ev, Ev::Packet(v4::Packet::Publish(_))) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no probe on {topic} crossed the cluster"
        );
    }
    let marker = format!("probes-end {topic}");
    publisher
        .publish(topic, v4::QoS::AtLeastOnce, false, marker.clone())
        .await;
    sub.recv_until_marker(&marker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_2_streams_cross_nodes_in_order_once() {
    within(TEST_LIMIT, "test", async {
        let nats = NatsServer::start("solo");
        let a = node("a", 2, &[&nats]);
        let b = node("b", 2, &[&nats]);
        wait_up(&a).await;
        wait_up(&b).await;
        for (qos, tag) in [
            (v4::QoS::AtMostOnce, "q0"),
            (v4::QoS::AtLeastOnce, "q1"),
            (v4::QoS::ExactlyOnce, "q2"),
        ] {
            let topic = format!("stream/{tag}");
            let mut sub = V4::connect(b.addr, &format!("sub-{tag}")).await;
            sub.subscribe_ok(&topic, qos).await;
            let mut publisher = V4::connect(a.addr, &format!("pub-{tag}")).await;
            until_routed(&publisher, &mut sub, &topic).await;
            let n = 200;
            for i in 0..n {
                publisher
                    .publish(&topic, qos, false, numbered(tag, i))
                    .await;
            }
            let marker = format!("{tag}-end");
            publisher.publish(&topic, qos, false, marker.clone()).await;
            let got = sub.recv_publishes(n).await;
            if qos != v4::QoS::AtMostOnce {
                publisher.wait_acks(n + 1, qos).await;
            }
            for p in &got {
                assert_eq!(p.qos, qos, "delivered at the publish and subscription QoS");
                assert!(!p.retain && !p.dup);
            }
            let payloads: Vec<Bytes> = got.into_iter().map(|p| p.payload).collect();
            assert_sequence(tag, tag, &payloads, n);
            sub.expect_marker(&marker, "exactly once").await;
        }
        let out = a.cluster_stats().unwrap();
        assert!(
            out.published.load(Ordering::Relaxed) >= 603,
            "every message went out once"
        );
        for why in ringmq::cluster::Drop::ALL {
            assert_eq!(out.dropped(why), 0, "{why:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_parent_levels_and_dollar_topics_map_as_mqtt_says() {
    within(TEST_LIMIT, "test", async {
        let nats = NatsServer::start("solo");
        let a = node("a", 1, &[&nats]);
        let b = node("b", 2, &[&nats]);
        wait_up(&a).await;
        wait_up(&b).await;
        let mut plus = V4::connect(b.addr, &id_on(0, 2, "plus")).await;
        plus.subscribe_ok("w/+/x", v4::QoS::AtLeastOnce).await;
        let mut hash = V4::connect(b.addr, &id_on(1, 2, "hash")).await;
        hash.subscribe_ok("w/#", v4::QoS::AtLeastOnce).await;
        let mut lead = V4::connect(b.addr, &id_on(1, 2, "lead")).await;
        lead.subscribe_ok("+/a/x", v4::QoS::AtLeastOnce).await;
        let mut dollar = V4::connect(b.addr, &id_on(0, 2, "dollar")).await;
        dollar.subscribe_ok("$x/a/x", v4::QoS::AtLeastOnce).await;
        let publisher = V4::connect(a.addr, "pub").await;
        until_routed(&publisher, &mut plus, "w/probe/x").await;
        until_routed(&publisher, &mut hash, "w").await;
        until_routed(&publisher, &mut lead, "p/a/x").await;
        until_routed(&publisher, &mut dollar, "$x/a/x").await;
        for topic in [
            "w/a/x",
            "w",
            "w/a/y",
            "w//x",
            "$x/a/x",
            "w/a.b*c>d/x",
            "v/a/x",
        ] {
            publisher
                .publish(topic, v4::QoS::AtLeastOnce, false, topic)
                .await;
        }
        publisher
            .publish("w/a/x", v4::QoS::AtLeastOnce, false, "end")
            .await;
        let topics = |got: Vec<v4::Publish>| -> Vec<String> {
            got.iter().map(|p| p.topic.clone()).collect()
        };
        assert_eq!(
            topics(plus.recv_until_marker("end").await),
            ["w/a/x", "w//x", "w/a.b*c>d/x"],
            "+ matches one level, an empty one too; NATS's reserved characters travel escaped"
        );
        assert_eq!(
            topics(hash.recv_until_marker("end").await),
            ["w/a/x", "w", "w/a/y", "w//x", "w/a.b*c>d/x"],
            "# matches its parent level and everything below"
        );
        assert_eq!(
            topics(lead.recv_until_marker("end").await),
            ["w/a/x", "v/a/x"],
            "a leading + never matches a $ topic [MQTT-4.7.2-1]"
        );
        dollar
            .expect_marker("$x/a/x", "the $ topic, to its own filter")
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_filters_on_another_node_bring_one_copy_each_and_none_come_back() {
    within(TEST_LIMIT, "test", async {
        let nats = NatsServer::start("solo");
        let a = node("a", 2, &[&nats]);
        let b = node("b", 2, &[&nats]);
        wait_up(&a).await;
        wait_up(&b).await;
        // b's NATS subscriptions of both filters carry messages from a
        // (probed by one client per filter, so no probe is left over).
        let publisher = V4::connect(a.addr, "pub").await;
        let mut probes = Vec::new();
        for (i, filter) in ["o/#", "o/+"].into_iter().enumerate() {
            let mut probe = V4::connect(b.addr, &format!("probe{i}")).await;
            probe.subscribe_ok(filter, v4::QoS::AtMostOnce).await;
            until_routed(&publisher, &mut probe, "o/p").await;
            probes.push(probe);
        }
        // On b, one client with both, which the node already holds: the
        // probes leave only then, or the node would drop a filter's NATS
        // subscription with its last subscriber and make it anew, and what
        // a published before NATS had it again would not reach b.
        let mut both = V4::connect(b.addr, "both").await;
        both.subscribe_ok("o/#", v4::QoS::AtLeastOnce).await;
        both.subscribe_ok("o/+", v4::QoS::AtLeastOnce).await;
        for probe in probes {
            probe.disconnect().await;
        }
        // On a, the publisher's own node, a subscriber too: it must get each
        // message once (echo is off: nothing comes back from NATS).
        let mut local = V4::connect(a.addr, "local").await;
        local.subscribe_ok("o/#", v4::QoS::AtLeastOnce).await;
        for i in 0..20 {
            publisher
                .publish("o/x", v4::QoS::AtLeastOnce, false, numbered("o", i))
                .await;
        }
        publisher
            .publish("o/x", v4::QoS::AtLeastOnce, false, "end")
            .await;
        let got: Vec<Bytes> = local
            .recv_until_marker("end")
            .await
            .into_iter()
            .map(|p| p.payload)
            .collect();
        assert_sequence("same node", "o", &got, 20);
        // Two streams, one per filter, each whole and in order: 2 x 21 in
        // all, interleaved as they come.
        let copies = both.recv_publishes(42).await;
        let mut counts = std::collections::BTreeMap::new();
        for p in &copies {
            *counts.entry(p.payload.clone()).or_insert(0) += 1;
        }
        assert!(
            counts.values().all(|n| *n == 2),
            "one copy per matching filter: {counts:?}"
        );
        assert_eq!(counts.len(), 21, "{counts:?}");
        both.assert_no_publish(QUIET).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_cross_nodes_intact() {
    within(TEST_LIMIT, "test", async {
        let nats = NatsServer::start("solo");
        let a = node("a", 1, &[&nats]);
        let b = node("b", 1, &[&nats]);
        wait_up(&a).await;
        wait_up(&b).await;
        let mut sub = V5::connect(b.addr, "sub5").await;
        sub.subscribe_ok("p/#", v5::QoS::AtLeastOnce).await;
        let mut probe_sub = V4::connect(b.addr, "probe-sub").await;
        probe_sub.subscribe_ok("p/#", v4::QoS::AtMostOnce).await;
        let probe_pub = V4::connect(a.addr, "probe-pub").await;
        until_routed(&probe_pub, &mut probe_sub, "p/probe").await;
        sub.recv_until_marker("probes-end p/probe").await;
        let publisher = V5::connect(a.addr, "pub5").await;
        let props = PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(600),
            content_type: Some("text/plain".into()),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"\x00corr\xff")),
            user_properties: vec![("k".into(), "v1".into()), ("k".into(), "v2".into())],
            ..PublishProperties::default()
        };
        let sent = Instant::now();
        publisher
            .client
            .publish_with_properties("p/x", v5::QoS::AtLeastOnce, false, "hello", props)
            .await
            .unwrap();
        let got = sub.recv_publish().await;
        let held = sent.elapsed();
        assert_eq!(&got.payload[..], b"hello");
        let p = got.properties.expect("properties");
        assert_eq!(p.payload_format_indicator, Some(1));
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
        assert_eq!(p.response_topic.as_deref(), Some("reply/here"));
        assert_eq!(p.correlation_data.as_deref(), Some(&b"\x00corr\xff"[..]));
        assert_eq!(
            p.user_properties,
            [
                ("k".to_owned(), "v1".to_owned()),
                ("k".to_owned(), "v2".to_owned())
            ],
            "user properties in order, repeats kept"
        );
        let left = p
            .message_expiry_interval
            .expect("the expiry still counts down");
        let range = remaining_expiry(600, Duration::ZERO, held);
        assert!(range.contains(&left), "{left} not in {range:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_set_on_one_node_are_read_on_another() {
    within(TEST_LIMIT, "test", async {
        let nats = NatsServer::start("solo");
        let a = node("a", 2, &[&nats]);
        let b = node("b", 2, &[&nats]);
        wait_up(&a).await;
        wait_up(&b).await;
        // The retained subscription of b is in place once its count says so.
        let stats = b.cluster_stats().unwrap();
        let deadline = Instant::now() + STEP;
        while stats.subscriptions.load(Ordering::Relaxed) < 1 {
            assert!(
                Instant::now() < deadline,
                "b never followed retained updates"
            );
            tokio::time::sleep(Duration::from_millis(10)).await; // polling the link's state
        }
        let mut publisher = V4::connect(a.addr, "pub").await;
        // NATS has the subscription once a round trip through the server
        // carried one message: probe through b's own retained stream.
        let deadline = Instant::now() + STEP * 2;
        loop {
            publisher
                .publish("ret/probe", v4::QoS::AtLeastOnce, true, "p")
                .await;
            publisher.wait_acks(1, v4::QoS::AtLeastOnce).await;
            if stats.received.load(Ordering::Relaxed) > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "no retained update reached b");
            tokio::time::sleep(Duration::from_millis(50)).await; // probe interval
        }
        publisher
            .publish("ret/1", v4::QoS::AtLeastOnce, true, "one")
            .await;
        publisher.wait_acks(1, v4::QoS::AtLeastOnce).await;
        wait_retained_payload(&b, "ret/1", b"one").await;
        let mut late = V4::connect(b.addr, "late").await;
        late.subscribe_ok("ret/1", v4::QoS::AtLeastOnce).await;
        let got = late.recv_publish().await;
        assert!(
            got.retain,
            "a retained message, from the other node's publish"
        );
        assert_eq!(&got.payload[..], b"one");
        // Cleared on a: gone on b.
        publisher
            .publish("ret/1", v4::QoS::AtLeastOnce, true, "")
            .await;
        publisher.wait_acks(1, v4::QoS::AtLeastOnce).await;
        wait_retained(&b, "ret/1", |p| p.is_none()).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_starts_later_finds_the_retained_messages_in_jetstream() {
    within(TEST_LIMIT, "test", async {
        let nats = NatsServer::with_jetstream("js");
        let a = node("a", 2, &[&nats]);
        wait_jetstream_ready(&a).await;
        let mut publisher = V4::connect(a.addr, "pub").await;
        for (topic, payload) in [
            ("r/1", "one"),
            ("r/2", "two"),
            ("r/2", ""),
            ("r/3", "three"),
        ] {
            publisher
                .publish(topic, v4::QoS::AtLeastOnce, true, payload)
                .await;
        }
        publisher.wait_acks(4, v4::QoS::AtLeastOnce).await;
        // JetStream holds all four (the last of each topic) before b starts.
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let deadline = Instant::now() + STEP * 2;
        loop {
            let mut stream = js.get_stream("test_retained").await.expect("the stream");
            let state = stream.info().await.expect("its state").state.clone();
            if state.last_sequence >= 4 {
                assert_eq!(state.messages, 3, "one per topic: r/1, r/2 cleared, r/3");
                break;
            }
            assert!(Instant::now() < deadline, "the stream holds {state:?}");
            tokio::time::sleep(Duration::from_millis(10)).await; // polling the stream's state
        }
        // b starts now, after everything was set.
        let b = node("b", 2, &[&nats]);
        wait_up(&b).await;
        wait_retained_payload(&b, "r/1", b"one").await;
        wait_retained_payload(&b, "r/3", b"three").await;
        wait_retained(&b, "r/2", |p| p.is_none()).await;
        let mut late = V4::connect(b.addr, "late").await;
        late.subscribe_ok("r/#", v4::QoS::AtLeastOnce).await;
        let mut got: Vec<(String, Bytes)> = late
            .recv_publishes(2)
            .await
            .into_iter()
            .map(|p| (p.topic, p.payload))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("r/1".into(), Bytes::from("one")),
                ("r/3".into(), Bytes::from("three"))
            ]
        );
        late.assert_no_publish(QUIET).await;
    })
    .await;
}

fn persistent(o: &mut v4::MqttOptions) {
    o.set_clean_session(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_follows_its_client_to_another_node() {
    within(TEST_LIMIT, "test", async {
        let nats = NatsServer::with_jetstream("js");
        let a = node("a", 2, &[&nats]);
        let b = node("b", 2, &[&nats]);
        wait_jetstream_ready(&a).await;
        wait_jetstream_ready(&b).await;
        // On a: subscribe, go away, and miss five QoS 1 messages.
        let mut first = V4::connect_with(a.addr, "mover", persistent).await;
        first.subscribe_ok("mv/#", v4::QoS::AtLeastOnce).await;
        first.disconnect().await;
        a.wait_counters(STEP, "mover offline", |c| c.connections_current == 0)
            .await;
        let mut publisher = V4::connect(a.addr, "pub").await;
        for i in 0..5 {
            publisher
                .publish("mv/x", v4::QoS::AtLeastOnce, false, numbered("mv", i))
                .await;
        }
        publisher.wait_acks(5, v4::QoS::AtLeastOnce).await;
        // Back, at b: the session is there, with what it missed, in order.
        let mut back = V4::connect_with(b.addr, "mover", persistent).await;
        assert!(back.connack.session_present, "the session came along");
        let got: Vec<Bytes> = back
            .recv_publishes(5)
            .await
            .into_iter()
            .map(|p| p.payload)
            .collect();
        assert_sequence("queued on a", "mv", &got, 5);
        let stats = b.cluster_stats().unwrap();
        assert_eq!(stats.sessions_in.load(Ordering::Relaxed), 1);
        a.wait_counters(STEP, "gone from a", |c| c.sessions_current == 1)
            .await; // only the publisher's
                    // Its subscription moved too: a's publishes reach it at b.
        until_routed(&publisher, &mut back, "mv/probe").await;
        publisher
            .publish("mv/x", v4::QoS::AtLeastOnce, false, "after")
            .await;
        back.expect_marker("after", "live at b").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_at_another_node_takes_the_connected_session_over() {
    within(TEST_LIMIT, "test", async {
        let nats = NatsServer::with_jetstream("js");
        let a = node("a", 1, &[&nats]);
        let b = node("b", 1, &[&nats]);
        wait_jetstream_ready(&a).await;
        wait_jetstream_ready(&b).await;
        let mut old = V4::connect_with(a.addr, "twice", persistent).await;
        old.subscribe_ok("tw/#", v4::QoS::AtLeastOnce).await;
        let new = V4::connect_with(b.addr, "twice", persistent).await;
        assert!(new.connack.session_present, "resumed from a");
        old.wait_closed(STEP).await;
        a.wait_counters(STEP, "taken over", |c| {
            c.takeovers == 1 && c.sessions_current == 0
        })
        .await;
        // And back to a: taken over from b in turn.
        let mut new = new;
        let back = V4::connect_with(a.addr, "twice", persistent).await;
        assert!(back.connack.session_present, "resumed from b");
        new.wait_closed(STEP).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_is_subscribed_in_nats_once_per_node_and_released_with_its_last_subscriber() {
    within(TEST_LIMIT, "test", async {
        let nats = NatsServer::start("solo");
        let b = node("b", 2, &[&nats]);
        wait_up(&b).await;
        let stats = b.cluster_stats().unwrap();
        let wait_subs = |want: usize| async move {
            let deadline = Instant::now() + STEP;
            while stats.subscriptions.load(Ordering::Relaxed) != want {
                assert!(
                    Instant::now() < deadline,
                    "subscriptions stayed {} (want {want})",
                    stats.subscriptions.load(Ordering::Relaxed)
                );
                tokio::time::sleep(Duration::from_millis(10)).await; // polling the link's state
            }
        };
        wait_subs(1).await; // retained updates
        let mut clients = Vec::new();
        for i in 0..6 {
            let mut c = V4::connect(b.addr, &format!("c{i}")).await;
            c.subscribe_ok("f/#", v4::QoS::AtMostOnce).await;
            clients.push(c);
        }
        // Six clients on two cores, one filter: one NATS subscription.
        wait_subs(2).await;
        let last = clients.pop().unwrap();
        for c in clients {
            c.disconnect().await;
        }
        // Five gone, one left: still subscribed (checked after the last
        // one's disconnect reached the broker, so not a stale count).
        b.wait_counters(STEP, "one connection left", |c| c.connections_current == 1)
            .await;
        assert_eq!(stats.subscriptions.load(Ordering::Relaxed), 2);
        last.disconnect().await;
        wait_subs(1).await;
    })
    .await;
}

/// Waits until every core of `node` hands shared groups to NATS.
async fn wait_sharing(node: &TestBroker) {
    let cores = node.cores as u64;
    node.wait_counters(STEP, "every core shares through NATS", |c| {
        c.cluster_shared_cores == cores
    })
    .await;
}

/// Collects from `members` until each of `want` arrived, then checks that
/// nothing else comes (each message went to exactly one member). Probes
/// are left out. Returns how many each member got.
async fn collect_once(members: &mut [V4], want: &[String]) -> Vec<usize> {
    let mut seen = std::collections::BTreeMap::new();
    let mut per_member = vec![0; members.len()];
    let deadline = Instant::now() + STEP * 2;
    while seen.len() < want.len() {
        for (i, m) in members.iter_mut().enumerate() {
            while let Some(Ev::Packet(v4::Packet::Publish(p))) =
                m.next_within(Duration::from_millis(5)).await
            {
                let text = String::from_utf8_lossy(&p.payload).into_owned();
                if text.starts_with("probe") {
                    continue;
                }
                per_member[i] += 1;
                *seen.entry(text).or_insert(0) += 1;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} arrived: {seen:?}",
            seen.len(),
            want.len()
        );
    }
    // Nothing more: a second copy would come within this window (a late
    // probe may still, and is no copy).
    for m in members.iter_mut() {
        while let Some(ev) = m.next_within(QUIET).await {
            if let Ev::Packet(v4::Packet::Publish(p)) = ev {
                assert!(p.payload.starts_with(b"probe"), "a second copy: {p:?}");
            }
        }
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "each to one member: {seen:?}"
    );
    let wanted: std::collections::BTreeSet<&String> = want.iter().collect();
    assert!(seen.keys().all(|k| wanted.contains(k)), "{seen:?}");
    per_member
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_across_nodes_gets_each_message_once() {
    within(TEST_LIMIT, "test", async {
        let nats = NatsServer::start("solo");
        let a = node("a", 2, &[&nats]);
        let b = node("b", 2, &[&nats]);
        let c = node("c", 1, &[&nats]);
        for n in [&a, &b, &c] {
            wait_up(n).await;
            wait_sharing(n).await;
        }
        // Two members on each of a and b (one per core); none on c.
        let mut members = Vec::new();
        for (node, name) in [(&a, "a"), (&b, "b")] {
            for core in 0..2 {
                let id = id_on(core, 2, &format!("m{name}"));
                let mut m = V4::connect(node.addr, &id).await;
                m.subscribe_ok("$share/g/s/+", v4::QoS::AtLeastOnce).await;
                members.push(m);
            }
        }
        let on_a = V4::connect(a.addr, "pub-a").await;
        let on_c = V4::connect(c.addr, "pub-c").await;
        // Probes until some member has one: NATS holds a queue subscription.
        let deadline = Instant::now() + STEP * 2;
        'probing: loop {
            on_c.publish("s/x", v4::QoS::AtMostOnce, false, "probe")
                .await;
            for m in members.iter_mut() {
                if m.next_within(Duration::from_millis(10)).await.is_some() {
                    break 'probing;
                }
            }
            assert!(Instant::now() < deadline, "no probe reached the group");
        }
        let mut want = Vec::new();
        for i in 0..100 {
            for (publisher, tag) in [(&on_a, "a"), (&on_c, "c")] {
                let payload = format!("{tag}-{i}");
                publisher
                    .publish("s/x", v4::QoS::AtLeastOnce, false, payload.clone())
                    .await;
                want.push(payload);
            }
        }
        let per_member = collect_once(&mut members, &want).await;
        // NATS picks a node at random for each message: with 200 of them,
        // both nodes' members get some (all on one node: 2^-199).
        assert!(per_member[..2].iter().sum::<usize>() > 0, "{per_member:?}");
        assert!(per_member[2..].iter().sum::<usize>() > 0, "{per_member:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nats_a_shared_group_is_its_nodes_own_again() {
    within(TEST_LIMIT, "test", async {
        let mut nats = NatsServer::start("solo");
        let a = node("a", 2, &[&nats]);
        wait_up(&a).await;
        wait_sharing(&a).await;
        let mut members = Vec::new();
        for core in 0..2 {
            let mut m = V4::connect(a.addr, &id_on(core, 2, "m")).await;
            m.subscribe_ok("$share/g/s/+", v4::QoS::AtLeastOnce).await;
            members.push(m);
        }
        nats.kill();
        a.wait_counters(STEP * 2, "no core shares through NATS", |c| {
            c.cluster_shared_cores == 0
        })
        .await;
        let publisher = V4::connect(a.addr, "pub").await;
        let want: Vec<String> = (0..20).map(|i| numbered("s", i)).collect();
        for payload in &want {
            publisher
                .publish("s/x", v4::QoS::AtLeastOnce, false, payload.clone())
                .await;
        }
        collect_once(&mut members, &want).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nats_server_of_three_loses_at_most_what_was_in_flight() {
    within(Duration::from_secs(90), "test", async {
        let mut servers = NatsServer::cluster(3);
        // Each node knows one server: the killed one's node finds the
        // others through what NATS told it of its cluster.
        servers[0].wait_log("Route connection created", 2).await;
        let a = node("a", 1, &[&servers[1]]);
        let b = node("b", 1, &[&servers[2]]);
        let c = start(1, |cfg| {
            join(cfg, "c", &[&servers[1]], |f| {
                f.nats_servers.push(servers[2].url());
            })
        });
        wait_up(&a).await;
        wait_up(&b).await;
        wait_up(&c).await;
        let mut sub = V4::connect(b.addr, "sub").await;
        sub.subscribe_ok("k/#", v4::QoS::AtLeastOnce).await;
        let publisher = V4::connect(a.addr, "pub").await;
        until_routed(&publisher, &mut sub, "k/probe").await;
        let n = 300;
        for i in 0..n {
            if i == n / 3 {
                servers[1].kill(); // a's server
            }
            publisher
                .publish("k/x", v4::QoS::AtLeastOnce, false, numbered("k", i))
                .await;
        }
        // a reconnects elsewhere; then its messages flow again.
        let stats = a.cluster_stats().unwrap();
        let deadline = Instant::now() + STEP * 4;
        while stats.connects.load(Ordering::Relaxed) < 2 {
            assert!(
                Instant::now() < deadline,
                "a never reconnected to another server"
            );
            tokio::time::sleep(Duration::from_millis(20)).await; // polling the link's state
        }
        until_routed(&publisher, &mut sub, "k/probe").await;
        publisher
            .publish("k/x", v4::QoS::AtLeastOnce, false, "after")
            .await;
        let got = sub.recv_until_marker("after").await;
        // In order, no duplicates; only what was in flight at the kill may be missing.
        let numbers: Vec<usize> = got
            .iter()
            .filter_map(|p| {
                std::str::from_utf8(&p.payload)
                    .ok()?
                    .strip_prefix("k-")?
                    .parse()
                    .ok()
            })
            .collect();
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "in order, each once: {numbers:?}"
        );
    })
    .await;
}

/// A node as a process, to kill -9: two cores, persistent in `store` with
/// `persistence_fsync = "always"` (a QoS 1 PUBACK means on disk), its
/// `[cluster]` table written to `config`.
fn spawn_node(
    name: &str,
    port: u16,
    store: &std::path::Path,
    config: &std::path::Path,
    nats: &NatsServer,
) -> std::process::Child {
    let table = format!(
        "[cluster]\nnats_servers = [{:?}]\nnode_name = {name:?}\nsubject_prefix = \"test\"\n",
        nats.url()
    );
    std::fs::write(config, table).expect("write the node's config");
    std::process::Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .arg("-c")
        .arg(config)
        .args(["--bind", "127.0.0.1", "-p", &port.to_string()])
        .args(["--cores", "2", "--no-pin", "--persistence", "true"])
        .arg("--persistence-location")
        .arg(store)
        .args(["--persistence-fsync", "always"])
        .args(["--log-level", "error", "--sys-interval", "0"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run ringmq")
}

/// A node is lost (kill -9) with an offline persistent session that holds
/// five acknowledged QoS 1 messages. Its client connects to another node
/// and finds its session there (subscriptions from JetStream's record);
/// when the lost node comes back from its store, it hands the five on, and
/// they arrive at the new node in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_client_finds_its_session_elsewhere_and_its_messages_when_the_node_returns()
{
    within(Duration::from_secs(90), "test", async {
        let nats = NatsServer::with_jetstream("js");
        let dir = tempfile::tempdir().expect("a directory for node a");
        let (store, config) = (dir.path().join("store"), dir.path().join("a.toml"));
        let port = free_port();
        let a_addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let mut a = spawn_node("a", port, &store, &config, &nats);
        wait_for_port(a_addr, &mut a).await;
        let b = node("b", 2, &[&nats]);
        wait_jetstream_ready(&b).await;
        let mut roamer = V4::connect_with(a_addr, "roamer", persistent).await;
        roamer.subscribe_ok("lost/#", v4::QoS::AtLeastOnce).await;
        roamer.disconnect().await;
        nats.wait_session_record("roamer", "lost/#").await;
        let mut publisher = V4::connect(a_addr, "pub-a").await;
        for i in 0..5 {
            publisher
                .publish("lost/x", v4::QoS::AtLeastOnce, false, numbered("lost", i))
                .await;
        }
        publisher.wait_acks(5, v4::QoS::AtLeastOnce).await;
        a.kill().expect("kill -9 node a");
        a.wait().expect("reap node a");
        let mut back = V4::connect_with(b.addr, "roamer", persistent).await;
        assert!(
            back.connack.session_present,
            "recovered from JetStream's record"
        );
        let stats = b.cluster_stats().unwrap();
        assert_eq!(stats.sessions_recovered.load(Ordering::Relaxed), 1);
        let local = V4::connect(b.addr, "pub-b").await;
        local
            .publish("lost/live", v4::QoS::AtLeastOnce, false, "live")
            .await;
        back.expect_marker("live", "its subscription is in force at b")
            .await;
        // a returns from its store and hands on what it held.
        let mut a = spawn_node("a", port, &store, &config, &nats);
        wait_for_port(a_addr, &mut a).await;
        let got: Vec<Bytes> = back
            .recv_publishes(5)
            .await
            .into_iter()
            .map(|p| p.payload)
            .collect();
        assert_sequence("handed on by a", "lost", &got, 5);
        let _ = a.kill();
        let _ = a.wait();
    })
    .await;
}

/// A client with a will dies on one node: the subscribers on the two
/// others get its will once each; so do they when another client's
/// session is taken over from another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_is_published_once_cluster_wide() {
    within(TEST_LIMIT, "test", async {
        let nats = NatsServer::with_jetstream("js");
        let a = node("a", 2, &[&nats]);
        let b = node("b", 1, &[&nats]);
        let c = node("c", 1, &[&nats]);
        for n in [&a, &b, &c] {
            wait_jetstream_ready(n).await;
        }
        let publisher = V4::connect(a.addr, "pub").await;
        let mut watchers = Vec::new();
        for (n, name) in [(&b, "wb"), (&c, "wc")] {
            let mut w = V4::connect(n.addr, name).await;
            w.subscribe_ok("will/#", v4::QoS::AtLeastOnce).await;
            until_routed(&publisher, &mut w, "will/probe").await;
            watchers.push(w);
        }
        let with_will = |topic: &'static str| {
            move |o: &mut v4::MqttOptions| {
                o.set_clean_session(false);
                o.set_last_will(v4::LastWill::new(topic, "bye", v4::QoS::AtLeastOnce, false));
            }
        };
        let dier = V4::connect_with(a.addr, "dier", with_will("will/dier")).await;
        dier.kill().await;
        let _moved = V4::connect_with(a.addr, "mover", with_will("will/mover")).await;
        let _taken = V4::connect_with(b.addr, "mover", persistent).await;
        publisher
            .publish("will/end", v4::QoS::AtLeastOnce, false, "end")
            .await;
        for w in &mut watchers {
            let mut topics: Vec<String> = w
                .recv_until_marker("end")
                .await
                .into_iter()
                .map(|p| p.topic.to_string())
                .collect();
            topics.retain(|t| t != "will/probe");
            topics.sort();
            assert_eq!(topics, ["will/dier", "will/mover"], "each will once");
        }
    })
    .await;
}

/// Three nats-servers with JetStream replicated three times, three
/// nodes: retained messages and a persistent session work across nodes,
/// and still do once one of the servers is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_jetstream_cluster_losing_one_server_of_three_changes_nothing() {
    within(Duration::from_secs(120), "test", async {
        let mut servers = NatsServer::jetstream_cluster(3);
        servers[0].wait_jetstream(3).await;
        let replicated = |name: &str, at: usize, servers: &[NatsServer]| {
            let (first, second) = (servers[at].url(), servers[(at + 1) % 3].url());
            start(1, |cfg| {
                join(cfg, name, &[], |f| {
                    f.nats_servers = vec![first, second];
                    f.jetstream_replicas = Some(3);
                })
            })
        };
        let a = replicated("a", 0, &servers);
        let b = replicated("b", 1, &servers);
        let c = replicated("c", 2, &servers);
        for n in [&a, &b, &c] {
            wait_jetstream_ready(n).await;
        }
        let publisher = V4::connect(a.addr, "pub").await;
        publisher
            .publish("js/kept", v4::QoS::AtLeastOnce, true, "kept")
            .await;
        wait_retained_payload(&c, "js/kept", b"kept").await;
        let mut roamer = V4::connect_with(a.addr, "js-roamer", persistent).await;
        roamer.subscribe_ok("js/q/#", v4::QoS::AtLeastOnce).await;
        roamer.disconnect().await;
        let back = V4::connect_with(b.addr, "js-roamer", persistent).await;
        assert!(back.connack.session_present, "moved from a to b");
        back.disconnect().await;
        // One server of three gone: JetStream keeps its quorum and, once it
        // has elected new leaders for what that server led, its service.
        servers[0].kill();
        servers[1]
            .wait_streams_led(&["test_retained", "KV_test_sessions"])
            .await;
        let at_b = V4::connect(b.addr, "pub-b").await;
        at_b.publish("js/later", v4::QoS::AtLeastOnce, true, "later")
            .await;
        // c's consumer may have been led by the killed server: its other
        // copies elect a leader, or c follows the stream anew.
        let later = |p: Option<&[u8]>| p == Some(&b"later"[..]);
        wait_retained_within(&c, "js/later", later, STEP * 6).await;
        let mut again = V4::connect_with(c.addr, "js-roamer", persistent).await;
        assert!(again.connack.session_present, "moved from b to c");
        let local = V4::connect(c.addr, "pub-c").await;
        local
            .publish("js/q/1", v4::QoS::AtLeastOnce, false, "q")
            .await;
        again.expect_marker("q", "its subscription came to c").await;
        let late = replicated("d", 1, &servers);
        wait_jetstream_ready(&late).await;
        wait_retained_payload(&late, "js/kept", b"kept").await;
        wait_retained_payload(&late, "js/later", b"later").await;
    })
    .await;
}
