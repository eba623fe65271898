//! Checks shared by several suites: numbered payloads, exact sequences, the
//! in-order exactly-once stream, two QoS 1 streams within and across cores,
//! a padded QoS 0 flood, required programs, remaining message expiry for
//! measured time, and waiting for every core's retained replica.

use std::time::Duration;

use bytes::Bytes;

use super::{id_on, publish_packet, v4, Packet, Pid, QosPid, Raw, RawQoS, TestBroker, STEP, V4};

/// Payload `prefix-<n>`, so order and duplicates can be checked.
pub fn numbered(prefix: &str, n: usize) -> String {
    format!("{prefix}-{n}")
}

/// Message `i` of a numbered stream on `topic` with packet id `id`: QoS 1
/// for even `i`, QoS 2 for odd, so one stream exercises both flows.
pub fn numbered_publish(topic: &str, prefix: &str, i: usize, id: Pid) -> Packet {
    let qos_pid = match i % 2 {
        0 => QosPid::AtLeastOnce(id),
        _ => QosPid::ExactlyOnce(id),
    };
    publish_packet(topic, qos_pid, false, numbered(prefix, i).as_bytes())
}

/// The label of a padded payload `label|padding`.
pub fn label_of(payload: &Bytes) -> Bytes {
    let end = payload
        .iter()
        .position(|b| *b == b'|')
        .expect("a label|padding payload");
    payload.slice(..end)
}

/// The labels of the next `n` padded PUBLISHes `sub` receives.
pub async fn recv_labels(sub: &mut Raw, n: usize) -> Vec<Bytes> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let p = sub.recv_publish().await;
        got.push(label_of(&p.payload));
    }
    got
}

/// Asserts that `payloads` are exactly `prefix-0 .. prefix-(n-1)` in order.
pub fn assert_sequence(who: &str, prefix: &str, payloads: &[Bytes], n: usize) {
    let got: Vec<String> = payloads
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let want: Vec<String> = (0..n).map(|i| numbered(prefix, i)).collect();
    if got != want {
        let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
        let mut seen = std::collections::HashSet::new();
        let dups: Vec<&String> = got.iter().filter(|p| !seen.insert(*p)).take(5).collect();
        panic!(
            "{who}: got {} messages, want {n}; first difference at {first_diff:?}; duplicates {dups:?}",
            got.len()
        );
    }
}

/// Finds a program on PATH; fails loudly when it is missing (CI installs it).
pub fn require_program(name: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // The mosquitto broker lives in /usr/sbin, outside a user's PATH.
    let sbin = [std::path::PathBuf::from("/usr/sbin")];
    for dir in std::env::split_paths(&path).chain(sbin) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{name}` is not installed but these tests need it: \
         apt-get install -y mosquitto mosquitto-clients (scripts/test.sh does this)"
    );
}

/// Subscriber on `sub_core`, publisher on `pub_core` (of a 2-core broker), `n`
/// messages at `qos`: all arrive, in order, each once, at `qos`, with no DUP and
/// RETAIN=0. rumqttc writes the PUBLISHes back to back, so broker reads end
/// mid-frame: this also covers framing under load.
pub async fn stream_in_order_once(
    broker: &TestBroker,
    tag: &str,
    qos: v4::QoS,
    pub_core: usize,
    sub_core: usize,
    n: usize,
) {
    let topic = format!("stream/{tag}");
    let mut sub = V4::connect(broker.addr, &id_on(sub_core, 2, &format!("sub-{tag}"))).await;
    sub.subscribe_ok(&topic, qos).await;
    let mut publisher = V4::connect(broker.addr, &id_on(pub_core, 2, &format!("pub-{tag}"))).await;
    for i in 0..n {
        publisher
            .publish(&topic, qos, false, numbered(tag, i))
            .await;
    }
    // A marker after the n, on the same path: a duplicate would come before it.
    let marker = format!("{tag}-end");
    publisher.publish(&topic, qos, false, marker.clone()).await;
    // Each message within STEP of the previous one (no bound on the total:
    // that would be a speed claim).
    let got = sub.recv_publishes(n).await;
    if qos != v4::QoS::AtMostOnce {
        publisher.wait_acks(n + 1, qos).await;
    }
    for p in &got {
        assert_eq!(p.topic, topic);
        assert_eq!(p.qos, qos, "delivered at the subscription's QoS");
        assert!(!p.dup, "no DUP in a clean run");
        assert!(!p.retain, "live delivery has RETAIN=0");
    }
    let payloads: Vec<Bytes> = got.into_iter().map(|p| p.payload).collect();
    assert_sequence(tag, tag, &payloads, n);
    // Exactly once: nothing beyond the n before the marker.
    sub.expect_marker(&marker, "exactly once").await;
}

/// The remaining Message Expiry Interval a correct broker may report for a
/// message with `interval` seconds that it held between storing and sending
/// for at least `held_at_least` and at most `held_at_most`, both measured by
/// the test around the broker's events (e.g. from its PUBACK to the
/// subscriber's reconnect, and from before the PUBLISH to after the
/// delivery). The broker counts whole seconds held, rounding the remainder
/// up; one second of slack on the low side covers its millisecond clock.
/// The range follows the measured time, so a slow machine widens it instead
/// of failing the test, while a fast one keeps it tight.
pub fn remaining_expiry(
    interval: u32,
    held_at_least: Duration,
    held_at_most: Duration,
) -> std::ops::RangeInclusive<u32> {
    let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
    let low = interval.saturating_sub(secs(held_at_most).saturating_add(1));
    let high = interval.saturating_sub(secs(held_at_least));
    low..=high
}

/// Waits until every core's retained replica shows `topic` as `want` accepts
/// it (`None`: no retained message on the topic; `Some(payload)`: this one),
/// probing each core with a raw client placed on it, for at most [`STEP`]
/// per core.
///
/// Needed before a new subscription relies on a retained message that nobody
/// acknowledged: a will, a QoS 0 or a `$SYS` publish. (A QoS 1/2 retained
/// PUBLISH is acknowledged only once every core's replica holds it; updates
/// go through the topic's owner core and on to the other replicas over the
/// mesh, and a QoS 0 one may still be on its way.) A probe subscribes to `topic` and sends a PINGREQ after the
/// SUBACK: a retained message goes out with the SUBACK, so before the
/// PINGRESP, which makes each probe a complete answer rather than a timed
/// one. Probes end with a DISCONNECT.
pub async fn wait_retained(broker: &TestBroker, topic: &str, want: impl Fn(Option<&[u8]>) -> bool) {
    wait_retained_within(broker, topic, want, STEP).await;
}

/// [`wait_retained`] for at most `limit` per core (a cluster's failover
/// takes longer than a step).
pub async fn wait_retained_within(
    broker: &TestBroker,
    topic: &str,
    want: impl Fn(Option<&[u8]>) -> bool,
    limit: Duration,
) {
    for core in 0..broker.cores {
        let id = id_on(core, broker.cores, "retained-probe");
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let mut probe = Raw::connect(broker.addr, &id, true, 0, None).await;
            probe
                .send(&super::subscribe_packet(1, &[(topic, RawQoS::AtMostOnce)]))
                .await;
            probe.send_bytes(&[0xC0, 0x00]).await.expect("PINGREQ");
            let mut retained = None;
            loop {
                match probe.recv().await {
                    Packet::PingResp => break,
                    Packet::SubAck(s) => assert_eq!(s.codes, [0], "SUBACK for {topic}"),
                    Packet::Publish(p) if p.retain => retained = Some(p.payload),
                    // A live message (a cluster node's may even come before
                    // the SUBACK, as MQTT permits [MQTT-3.8.4]): not the replica.
                    Packet::Publish(_) => {}
                    other => panic!("retained probe on core {core}: unexpected {other:?}"),
                }
            }
            probe.disconnect().await;
            let shown = retained.as_deref();
            if want(shown) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "core {core}'s retained replica still shows {topic} as {shown:?} after {limit:?}"
            );
            // Polling the broker's state, not synchronisation.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// [`wait_retained`] for a retained message with payload `payload`.
pub async fn wait_retained_payload(broker: &TestBroker, topic: &str, payload: &[u8]) {
    wait_retained(broker, topic, |p| p == Some(payload)).await;
}

/// [`wait_retained`] for a synchronous test (one without a tokio runtime).
pub fn wait_retained_blocking(broker: &TestBroker, topic: &str, want: Option<&[u8]>) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(wait_retained(broker, topic, |p| p == want));
}

/// Two QoS 1 streams of `n` messages into one subscriber of `{prefix}/+` on
/// core 0 of a 2-core broker, one from a publisher on that core and one from
/// the other core: every publish is acked and each stream arrives whole and
/// in order.
pub async fn near_and_far_streams_arrive_in_order(broker: &TestBroker, prefix: &str, n: usize) {
    let mut sub = V4::connect(broker.addr, &id_on(0, 2, &format!("{prefix}-sub"))).await;
    sub.subscribe_ok(&format!("{prefix}/+"), v4::QoS::AtLeastOnce)
        .await;
    let mut near = V4::connect(broker.addr, &id_on(0, 2, &format!("{prefix}-near"))).await;
    let mut far = V4::connect(broker.addr, &id_on(1, 2, &format!("{prefix}-far"))).await;
    let (near_topic, far_topic) = (format!("{prefix}/near"), format!("{prefix}/far"));
    for i in 0..n {
        near.publish(
            &near_topic,
            v4::QoS::AtLeastOnce,
            false,
            numbered("near", i),
        )
        .await;
        far.publish(&far_topic, v4::QoS::AtLeastOnce, false, numbered("far", i))
            .await;
    }
    near.wait_acks(n, v4::QoS::AtLeastOnce).await;
    far.wait_acks(n, v4::QoS::AtLeastOnce).await;
    let got = sub.recv_publishes(2 * n).await;
    for (topic, tag) in [(&near_topic, "near"), (&far_topic, "far")] {
        let payloads: Vec<Bytes> = got
            .iter()
            .filter(|p| &p.topic == topic)
            .map(|p| p.payload.clone())
            .collect();
        assert_sequence(&sub.id, tag, &payloads, n);
    }
}

/// Publishes `msgs` QoS 0 messages `{prefix}-i|` + `size` bytes of padding
/// to `topic` as 3.1.1 client `id`, in a task that returns the client. Each
/// write waits while TCP pushes back, for as long as a test takes to see a
/// hold and read: the bound is a hang guard, not a speed limit.
pub fn spawn_padded_flood(
    addr: std::net::SocketAddr,
    id: String,
    topic: &'static str,
    prefix: &'static str,
    (msgs, size): (usize, usize),
) -> tokio::task::JoinHandle<Raw> {
    use tokio::io::AsyncWriteExt;
    tokio::spawn(async move {
        let mut publ = Raw::connect(addr, &id, true, 0, None).await;
        let body = "z".repeat(size);
        for i in 0..msgs {
            let payload = format!("{}|{body}", numbered(prefix, i));
            let p = publish_packet(topic, QosPid::AtMostOnce, false, payload.as_bytes());
            let frame = super::encode(&p, ringmq::codec::Protocol::V3_1_1);
            tokio::time::timeout(12 * STEP, publ.stream.write_all(&frame))
                .await
                .expect("held for ever")
                .expect("publish");
        }
        publ
    })
}
