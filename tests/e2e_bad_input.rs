//! Hostile and broken input over raw sockets. Each bad connection must be
//! refused or closed as the spec says, and must harm no other client: a
//! well-behaved rumqttc pair (publisher and subscriber on different cores)
//! keeps working after every case.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ringmq::codec::Protocol;

/// A subscriber and a publisher on different cores, to prove after each bad
/// connection that the broker still serves everyone else.
struct Canary {
    sub: V4,
    publisher: V4,
    n: usize,
}

impl Canary {
    async fn new(broker: &TestBroker) -> Canary {
        let mut sub = V4::connect(broker.addr, &id_on(1, 2, "canary-sub")).await;
        sub.subscribe_ok("canary/t", v4::QoS::AtLeastOnce).await;
        let publisher = V4::connect(broker.addr, &id_on(0, 2, "canary-pub")).await;
        Canary {
            sub,
            publisher,
            n: 0,
        }
    }

    async fn check(&mut self, after: &str) {
        let payload = format!("alive-{}", self.n);
        self.n += 1;
        self.publisher
            .publish("canary/t", v4::QoS::AtLeastOnce, false, payload.clone())
            .await;
        let p = within(
            STEP,
            &format!("canary message after {after}"),
            self.sub.recv_publish(),
        )
        .await;
        assert_eq!(
            String::from_utf8_lossy(&p.payload),
            payload,
            "canary after {after}"
        );
    }
}

/// A 3.1.1 CONNECT built by hand: `level` and `flags` as given, keep-alive
/// 60, client id `id` (raw bytes, may be invalid UTF-8).
fn connect_bytes(first: u8, name: &[u8], level: u8, flags: u8, id: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, flags, 0x00, 0x3C]);
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id);
    assert!(body.len() < 128);
    let mut frame = vec![first, body.len() as u8];
    frame.extend_from_slice(&body);
    frame
}

/// A PUBLISH (QoS 0) with raw topic bytes.
fn publish_bytes(first: u8, topic: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic);
    body.extend_from_slice(payload);
    assert!(body.len() < 128);
    let mut frame = vec![first, body.len() as u8];
    frame.extend_from_slice(&body);
    frame
}

/// A fixed header declaring `len` bytes (no body follows).
fn header_declaring(first: u8, mut len: u32) -> Vec<u8> {
    let mut out = vec![first];
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            return out;
        }
    }
}

fn publish_with_levels(levels: usize) -> Vec<u8> {
    let topic = vec!["l"; levels].join("/");
    publish_bytes(0x30, topic.as_bytes(), b"x")
}

/// Sends `bytes` as the first thing on a new connection; the broker must
/// close it, after sending exactly `reply` (None: nothing at all).
async fn refused_before_connect(broker: &TestBroker, what: &str, bytes: &[u8], reply: Option<u8>) {
    let mut raw = Raw::open(broker.addr).await;
    raw.send_bytes(bytes).await.expect("write");
    let before = raw.expect_closed(STEP).await;
    match reply {
        None => assert!(before.is_empty(), "{what}: broker replied {before:?}"),
        Some(code) => match before.as_slice() {
            [Packet::ConnAck(ack)] => {
                assert_eq!(ack.code, code, "{what}: CONNACK return code");
                assert!(!ack.session_present, "{what}: session present must be 0");
            }
            other => panic!("{what}: expected one CONNACK {code}, got {other:?}"),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_first_packets_are_refused() {
    let broker = start2();
    let mut canary = Canary::new(&broker).await;
    let ok_flags = 0x02; // clean session
    let cases: Vec<(&str, Vec<u8>, Option<u8>)> = vec![
        ("reserved packet type 0", vec![0x00, 0x00], None),
        ("reserved packet type 15", vec![0xF0, 0x00], None),
        ("PINGREQ before CONNECT", vec![0xC0, 0x00], None),
        (
            "PUBLISH before CONNECT",
            publish_bytes(0x30, b"a/b", b"x"),
            None,
        ),
        (
            "SUBSCRIBE before CONNECT",
            encode(
                &subscribe_packet(1, &[("a", RawQoS::AtMostOnce)]),
                Protocol::V3_1_1,
            ),
            None,
        ),
        (
            "remaining length with a fifth byte",
            vec![0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            None,
        ),
        (
            "CONNECT with fixed-header flags set",
            connect_bytes(0x11, b"MQTT", 4, ok_flags, b"bad-flags"),
            None,
        ),
        (
            "CONNECT with the reserved flag set",
            connect_bytes(0x10, b"MQTT", 4, ok_flags | 0x01, b"reserved"),
            None,
        ),
        (
            "CONNECT with protocol name MQTX",
            connect_bytes(0x10, b"MQTX", 4, ok_flags, b"name"),
            None,
        ),
        (
            "CONNECT with an invalid UTF-8 client id",
            connect_bytes(0x10, b"MQTT", 4, ok_flags, &[0xC3, 0x28]),
            None,
        ),
        (
            "CONNECT with will QoS but no will flag",
            connect_bytes(0x10, b"MQTT", 4, ok_flags | 0x08, b"willqos"),
            None,
        ),
        (
            "CONNECT with password but no username",
            connect_bytes(0x10, b"MQTT", 4, ok_flags | 0x40, b"pw"),
            None,
        ),
        (
            "CONNECT with trailing bytes",
            {
                let mut b = connect_bytes(0x10, b"MQTT", 4, ok_flags, b"trail");
                b[1] += 1;
                b.push(0);
                b
            },
            None,
        ),
        (
            "unsupported protocol level 6",
            connect_bytes(0x10, b"MQTT", 6, ok_flags, b"level6"),
            Some(1),
        ),
        (
            "unsupported protocol level 0",
            connect_bytes(0x10, b"MQTT", 0, ok_flags, b"level0"),
            Some(1),
        ),
        (
            "empty client id with clean session 0",
            connect_bytes(0x10, b"MQTT", 4, 0x00, b""),
            Some(2),
        ),
        (
            "client id longer than max_client_id_len",
            encode(
                &connect_packet(Protocol::V3_1_1, &"i".repeat(300), true, 60, None),
                Protocol::V3_1_1,
            ),
            Some(2),
        ),
        (
            "will topic with a wildcard",
            encode(
                &connect_packet(
                    Protocol::V3_1_1,
                    "badwill",
                    true,
                    60,
                    Some(will("w/+", "x", RawQoS::AtMostOnce, false)),
                ),
                Protocol::V3_1_1,
            ),
            None,
        ),
    ];
    for (what, bytes, reply) in &cases {
        refused_before_connect(&broker, what, bytes, *reply).await;
        canary.check(what).await;
    }
    broker
        .wait_counters(STEP, "every refusal counted", |c| {
            c.connects_refused >= cases.len() as u64
        })
        .await;
}

/// Empty client id with clean session 1 is accepted (an id is assigned).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_id_with_clean_session_is_accepted() {
    let broker = start2();
    let mut raw = Raw::open(broker.addr).await;
    let ack = raw
        .handshake(connect_packet(Protocol::V3_1_1, "", true, 60, None))
        .await;
    assert_eq!(ack.code, 0);
    raw.send_bytes(&[0xC0, 0x00]).await.expect("write");
    assert!(matches!(raw.recv().await, Packet::PingResp));
}

/// Connects a raw 3.1.1 client, sends `bytes`, expects the broker to close
/// the connection without a reply (3.1.1 has no DISCONNECT from the server).
async fn violation_closes(broker: &TestBroker, n: usize, what: &str, bytes: &[u8]) {
    let mut raw = Raw::connect(broker.addr, &id_on(n % 2, 2, "bad"), true, 0, None).await;
    raw.send_bytes(bytes).await.expect("write");
    let before = raw.expect_closed(STEP).await;
    assert!(
        before.is_empty(),
        "{what}: broker replied {before:?} before closing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_after_connect_close_the_connection() {
    let broker = start(2, |c| c.limits.max_topic_levels = 8);
    let mut canary = Canary::new(&broker).await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("reserved packet type 0", vec![0x00, 0x00]),
        (
            "reserved packet type 15 (AUTH is 5.0 only)",
            vec![0xF0, 0x00],
        ),
        (
            "PUBLISH with '+' in the topic",
            publish_bytes(0x30, b"a/+/b", b"x"),
        ),
        (
            "PUBLISH with '#' as the topic",
            publish_bytes(0x30, b"#", b"x"),
        ),
        (
            "PUBLISH with an empty topic",
            publish_bytes(0x30, b"", b"x"),
        ),
        (
            "PUBLISH with an invalid UTF-8 topic",
            publish_bytes(0x30, &[b'a', 0xFF, b'b'], b"x"),
        ),
        (
            "PUBLISH with U+0000 in the topic",
            publish_bytes(0x30, b"a\0b", b"x"),
        ),
        (
            "PUBLISH with QoS 3",
            publish_bytes(0x36, b"a/b", b"\x00\x01x"),
        ),
        (
            "QoS 1 PUBLISH with packet id 0",
            publish_bytes(0x32, b"a/b", b"\x00\x00x"),
        ),
        (
            "PUBLISH with more than max_topic_levels levels",
            publish_with_levels(9),
        ),
        ("SUBSCRIBE with flags 0000", {
            let mut b = encode(
                &subscribe_packet(1, &[("a", RawQoS::AtMostOnce)]),
                Protocol::V3_1_1,
            );
            b[0] = 0x80;
            b
        }),
        (
            "SUBSCRIBE without a topic filter",
            vec![0x82, 0x02, 0x00, 0x01],
        ),
        ("SUBSCRIBE with requested QoS 3", {
            let mut b = encode(
                &subscribe_packet(1, &[("a", RawQoS::AtMostOnce)]),
                Protocol::V3_1_1,
            );
            *b.last_mut().expect("options byte") = 0x03;
            b
        }),
        (
            "UNSUBSCRIBE with flags 0000",
            vec![0xA0, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'],
        ),
        ("PUBREL with flags 0000", vec![0x60, 0x02, 0x00, 0x01]),
        ("PINGREQ with a body", vec![0xC0, 0x01, 0x00]),
        (
            "remaining length with a fifth byte",
            vec![0x30, 0x80, 0x80, 0x80, 0x80, 0x01],
        ),
        (
            "a second CONNECT",
            encode(
                &connect_packet(Protocol::V3_1_1, "second", true, 0, None),
                Protocol::V3_1_1,
            ),
        ),
        ("CONNACK from a client", vec![0x20, 0x02, 0x00, 0x00]),
        ("SUBACK from a client", vec![0x90, 0x03, 0x00, 0x01, 0x00]),
        ("PINGRESP from a client", vec![0xD0, 0x00]),
    ];
    for (n, (what, bytes)) in cases.iter().enumerate() {
        violation_closes(&broker, n, what, bytes).await;
        canary.check(what).await;
    }
    broker
        .wait_counters(STEP, "every violation counted", |c| {
            c.protocol_violations >= cases.len() as u64
        })
        .await;
}

/// A filter deeper than `max_topic_levels`, or an invalid one, gets SUBACK
/// 0x80 for that filter only; the connection stays open and the valid
/// filters in the same SUBSCRIBE work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_filters_get_suback_failure() {
    let broker = start(2, |c| c.limits.max_topic_levels = 8);
    let mut raw = Raw::connect(broker.addr, &id_on(1, 2, "filters"), true, 0, None).await;
    let deep = ["l"; 9].join("/");
    let ok8 = ["l"; 8].join("/");
    let codes = raw
        .subscribe(
            1,
            &[
                (deep.as_str(), RawQoS::AtLeastOnce),
                ("a/#/b", RawQoS::AtLeastOnce),
                ("a/b+", RawQoS::AtLeastOnce),
                (ok8.as_str(), RawQoS::AtLeastOnce),
            ],
        )
        .await;
    assert_eq!(codes, vec![0x80, 0x80, 0x80, 1]);
    let mut publisher = V4::connect(broker.addr, &id_on(0, 2, "filters-pub")).await;
    publisher
        .publish(&ok8, v4::QoS::AtLeastOnce, false, "deep ok")
        .await;
    publisher.wait_acks(1, v4::QoS::AtLeastOnce).await;
    assert_eq!(&raw.recv_publish().await.payload[..], b"deep ok");
}

/// `max_packet_size` = 1 KiB: a header declaring 100 MB is refused from the
/// header alone (the connection closes although the body is never sent, so
/// nothing was waited for or buffered), before and after CONNECT; a packet
/// just over the limit closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_packets_are_refused_from_the_header() {
    let broker = start(2, |c| {
        c.limits.max_packet_size = 1024;
        c.read_buffer_size = 1024;
    });
    let mut canary = Canary::new(&broker).await;
    const HUGE: u32 = 100 * 1024 * 1024;

    refused_before_connect(
        &broker,
        "CONNECT declaring 100 MB",
        &header_declaring(0x10, HUGE),
        None,
    )
    .await;
    canary.check("oversize CONNECT").await;

    violation_closes(
        &broker,
        0,
        "PUBLISH declaring 100 MB",
        &header_declaring(0x30, HUGE),
    )
    .await;
    canary.check("oversize PUBLISH header").await;

    // 1025 bytes on the wire: 3-byte fixed header + 1022.
    let mut over = header_declaring(0x30, 1022);
    over.extend_from_slice(&[0x00, 0x01, b't']);
    over.resize(1025, b'x');
    violation_closes(&broker, 1, "PUBLISH one byte over the limit", &over).await;
    canary.check("PUBLISH over the limit").await;
}

/// A packet of exactly `max_packet_size` bytes is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_of_exactly_max_packet_size_is_accepted() {
    let broker = start(2, |c| {
        c.limits.max_packet_size = 1024;
        c.read_buffer_size = 1024;
    });
    let mut raw = Raw::connect(broker.addr, &id_on(0, 2, "fits"), true, 0, None).await;
    let payload = vec![b'y'; 1024 - 3 - 2 - 1 - 2];
    let p = publish_packet("t", QosPid::AtLeastOnce(pid(1)), false, &payload);
    let bytes = encode(&p, Protocol::V3_1_1);
    assert_eq!(bytes.len(), 1024);
    raw.send_bytes(&bytes).await.expect("write");
    match raw.next_within(STEP).await {
        RawEv::Packet(Packet::PubAck(_)) => {}
        other => panic!("a 1024-byte packet is within the limit: expected PUBACK, got {other:?}"),
    }
}

/// `connect_timeout` for the tests below: short, so that they are quick.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// No CONNECT within `connect_timeout` (1 s): the connection is closed, also
/// when a CONNECT was started but never finished; not before the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connect_within_connect_timeout_is_closed() {
    let broker = start(2, |c| c.limits.connect_timeout = CONNECT_TIMEOUT);
    let mut canary = Canary::new(&broker).await;
    // Before the sockets open, so that the broker's timers start after it:
    // the lower bound below cannot fail because the test was slow.
    let t0 = Instant::now();
    let mut silent = Raw::open(broker.addr).await;
    let mut partial = Raw::open(broker.addr).await;
    let connect = encode(
        &connect_packet(Protocol::V3_1_1, "slow", true, 0, None),
        Protocol::V3_1_1,
    );
    partial.send_bytes(&connect[..5]).await.expect("write");
    for (what, raw) in [("silent", &mut silent), ("partial CONNECT", &mut partial)] {
        // Closed at all: a deadline of the harness's kind past the timeout,
        // not a claim about how promptly.
        let before = raw.expect_closed(CONNECT_TIMEOUT + STEP).await;
        let after = t0.elapsed();
        assert!(before.is_empty(), "{what}: {before:?}");
        assert!(
            after >= Duration::from_millis(900),
            "{what}: closed after {after:?}, before connect_timeout"
        );
        eprintln!("{what}: closed after {after:?}");
    }
    canary.check("connect timeouts").await;
}

/// A 5.0 client breaking a rule gets a DISCONNECT with the reason code
/// before the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_violation_gets_disconnect_with_reason() {
    let broker = start2();
    let mut canary = Canary::new(&broker).await;
    let mut raw = Raw::open(broker.addr).await;
    let ack = raw
        .handshake(connect_packet(
            Protocol::V5,
            &id_on(0, 2, "v5bad"),
            true,
            0,
            None,
        ))
        .await;
    assert_eq!(ack.code, 0);
    raw.send_bytes(&[0x30, 0x07, 0x00, 0x03, b'a', b'/', b'+', 0x00, b'x'])
        .await
        .expect("write");
    let before = raw.expect_closed(STEP).await;
    match before.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, 0x90, "Topic Name invalid"),
        other => panic!("expected DISCONNECT 0x90 before the close, got {other:?}"),
    }
    canary.check("5.0 violation").await;
}

/// Hundreds of garbage connections at once (a burst of junk) leave the
/// broker serving. Junk may parse as the header of a long frame, which the
/// broker legitimately waits for: connect_timeout (1 s) ends those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_garbage_connections() {
    let broker = start(2, |c| c.limits.connect_timeout = CONNECT_TIMEOUT);
    let mut canary = Canary::new(&broker).await;
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let addr = broker.addr;
        tasks.push(tokio::spawn(async move {
            let mut raw = Raw::open(addr).await;
            let junk: Vec<u8> = (0..64u32)
                .map(|k| (k.wrapping_mul(31).wrapping_add(i * 7)) as u8 | 0x01)
                .collect();
            let _ = raw.send_bytes(&junk).await;
            raw.expect_closed(CONNECT_TIMEOUT + STEP).await;
        }));
    }
    // Each task bounds its own waits (open, write, close).
    for t in tasks {
        t.await.expect("garbage connection task");
    }
    canary.check("200 garbage connections").await;
    broker
        .wait_counters(STEP, "all garbage connections gone", |c| {
            c.connections_current == 2
        })
        .await;
}

/// CVE-2019-11779 (a broker's stack overflowed on a topic of about 65,000
/// levels): at the default cap of 128 levels, a 32,768-level topic closes the
/// connection and a 32,768-level filter is refused, without recursion on
/// depth and without harm to anyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_of_32k_levels_are_refused_at_the_default_cap() {
    let broker = start(2, |_| {});
    let mut canary = Canary::new(&broker).await;
    let mut deep_pub = Raw::connect(broker.addr, &id_on(0, 2, "deep-pub"), true, 0, None).await;
    // 65,535 bytes: the longest topic a packet can carry.
    let topic = ["l"; 32_768].join("/");
    deep_pub
        .send(&publish_packet(&topic, QosPid::AtMostOnce, false, b"x"))
        .await;
    let before = deep_pub.expect_closed(STEP).await;
    assert!(before.is_empty(), "replied {before:?} before closing");
    canary.check("a 32,768-level PUBLISH").await;
    let mut deep_sub = Raw::connect(broker.addr, &id_on(1, 2, "deep-sub"), true, 0, None).await;
    let filter = ["+"; 32_768].join("/");
    let codes = deep_sub
        .subscribe(1, &[(filter.as_str(), RawQoS::AtLeastOnce)])
        .await;
    assert_eq!(codes, vec![0x80]);
    canary.check("a 32,768-level SUBSCRIBE").await;
}

/// Retained floods (brokers have run out of memory at 500,000 retained
/// topics): past `max_retained_messages` a retained PUBLISH is acknowledged
/// and delivered live but not stored, and each one is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_stop_at_their_cap_and_are_counted() {
    let broker = start(1, |c| c.limits.max_retained_messages = 3);
    let mut publisher = V4::connect(broker.addr, "flood-pub").await;
    for i in 0..5 {
        publisher
            .publish(&format!("flood/{i}"), v4::QoS::AtLeastOnce, true, "r")
            .await;
    }
    publisher.wait_acks(5, v4::QoS::AtLeastOnce).await;
    broker
        .wait_counters(STEP, "two retained messages over the cap", |c| {
            c.dropped_retained_cap == 2 && c.retained_current == 3
        })
        .await;
    let mut late = V4::connect(broker.addr, "flood-late").await;
    late.subscribe_ok("flood/#", v4::QoS::AtLeastOnce).await;
    publisher
        .publish("flood/marker", v4::QoS::AtLeastOnce, false, "flood-end")
        .await;
    let mut stored: Vec<String> = (late.recv_until_marker("flood-end").await)
        .into_iter()
        .map(|p| p.topic)
        .collect();
    stored.sort();
    assert_eq!(stored, ["flood/0", "flood/1", "flood/2"]);
}
