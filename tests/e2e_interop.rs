//! Real third-party clients over the TLS, mutual-TLS, WebSocket and secure
//! WebSocket listeners, on 127.0.0.1:
//!
//! - Paho's Python client (paho-mqtt 2.x) with `transport="websockets"`,
//!   with and without TLS, MQTT 5 and 3.1.1 (`tests/paho/websockets.py`);
//! - MQTT.js (npm `mqtt`, pinned in `tests/mqttjs/package-lock.json`) over
//!   ws:// and wss://, MQTT 5 and 3.1.1 (`tests/mqttjs/round_trips.js`);
//! - rumqttc (3.1.1 and 5.0) with rustls over TLS and mutual TLS;
//! - all of them and Mosquitto's clients at once: a subscriber and a
//!   publisher on every listener, every message to every subscriber once;
//! - large publishes from clients over TLS and secure WebSocket
//!   (`tls_listeners_take_publishes_over_16_kib`).
//!
//! Mosquitto's clients over TLS alone are in e2e_tls.rs; WebSocket framing
//! and upgrade edge cases in e2e_ws.rs.
//!
//! The tools are required, not optional: scripts/test.sh installs paho-mqtt
//! and runs `npm ci` in tests/mqttjs; a missing one fails these tests.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use common::*;
use ringmq::config::{Config, ListenerProtocol};
use rumqttc::{TlsConfiguration, Transport};

/// A 2-core broker with its plain listener and, after it, a TLS, a
/// WebSocket and a secure WebSocket listener (none requiring a client
/// certificate).
fn every_listener(pki: &Pki, tweak: impl FnOnce(&mut Config)) -> TestBroker {
    start(2, |c| {
        c.listeners
            .push(pki.listener(ListenerProtocol::Mqtt, Some(pki.tls(false))));
        c.listeners
            .push(pki.listener(ListenerProtocol::Websockets, None));
        c.listeners
            .push(pki.listener(ListenerProtocol::Websockets, Some(pki.tls(false))));
        tweak(c);
    })
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

/// `HOST TCP_PORT WS_PORT WSS_PORT CA VERSION`, as both scenario scripts
/// take them.
fn scenario_args(broker: &TestBroker, pki: &Pki, version: &str) -> Vec<String> {
    let port = |s| addr_of(broker, s).port().to_string();
    vec![
        "127.0.0.1".to_owned(),
        port("mqtt"),
        port("ws"),
        port("wss"),
        path(&pki.ca).to_owned(),
        version.to_owned(),
    ]
}

async fn paho_over_websockets(version: &str) {
    let pki = Pki::new("paho-ws");
    let broker = every_listener(&pki, |_| {});
    let args = scenario_args(&broker, &pki, version);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    paho("websockets", &args).finish().await;
}

/// Paho MQTT 5 over ws:// and wss:// (path /mqtt, the test CA): QoS 0/1/2
/// subscriptions and publishes in every combination, delivered once at the
/// lower QoS; plain TCP to WebSocket and back, both kinds; a 200 KB message
/// to the client over both, from it over ws://.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_mqtt5_over_ws_and_wss() {
    paho_over_websockets("5").await;
}

/// As [`paho_mqtt5_over_ws_and_wss`], with Paho speaking MQTT 3.1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_mqtt311_over_ws_and_wss() {
    paho_over_websockets("3.1.1").await;
}

async fn mqttjs_over_websockets(version: &str) {
    let pki = Pki::new("mqttjs-ws");
    let broker = every_listener(&pki, |_| {});
    let args = scenario_args(&broker, &pki, version);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    mqttjs("round_trips", &args).finish().await;
}

/// MQTT.js (MQTT 5) over ws://…/mqtt and wss://…/mqtt with the test CA: the
/// same scenario as Paho's (QoS 0/1/2 combinations, mqtt:// to WebSocket
/// and back, 200 KB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqttjs_mqtt5_over_ws_and_wss() {
    mqttjs_over_websockets("5").await;
}

/// As [`mqttjs_mqtt5_over_ws_and_wss`], with MQTT.js speaking 3.1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqttjs_mqtt311_over_ws_and_wss() {
    mqttjs_over_websockets("3.1.1").await;
}

// ---------------------------------------------------------------- rumqttc --

/// rumqttc's rustls transport trusting the test CA, presenting `client` if
/// given. (rumqttc 0.24's `use-rustls`: rustls 0.22 with ring.)
fn rumqttc_tls(pki: &Pki, client: Option<&CertFiles>) -> Transport {
    let read = |p: &std::path::Path| std::fs::read(p).expect("read a PEM file");
    Transport::tls_with_config(TlsConfiguration::Simple {
        ca: read(&pki.ca),
        alpn: None,
        client_auth: client.map(|c| (read(&c.cert), read(&c.key))),
    })
}

async fn v4_tls(addr: SocketAddr, id: &str, transport: Transport) -> V4 {
    V4::connect_with(addr, id, |o| {
        o.set_transport(transport);
    })
    .await
}

async fn v5_tls(addr: SocketAddr, id: &str, transport: Transport) -> V5 {
    V5::connect_with(addr, id, |o| {
        o.set_transport(transport);
    })
    .await
}

/// `(topic, payload, QoS)` of 3.1.1 deliveries, sorted.
fn v4_seen(ps: &[v4::Publish]) -> Vec<(String, Vec<u8>, u8)> {
    let mut v: Vec<_> = ps
        .iter()
        .map(|p| (p.topic.clone(), p.payload.to_vec(), p.qos as u8))
        .collect();
    v.sort();
    v
}

/// `(topic, payload, QoS)` of 5.0 deliveries, sorted.
fn v5_seen(ps: &[v5::Publish]) -> Vec<(String, Vec<u8>, u8)> {
    let mut v: Vec<_> = ps
        .iter()
        .map(|p| {
            let topic = String::from_utf8(p.topic.to_vec()).expect("UTF-8 topic");
            (topic, p.payload.to_vec(), p.qos as u8)
        })
        .collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<(String, Vec<u8>, u8)>) -> Vec<(String, Vec<u8>, u8)> {
    v.sort();
    v
}

/// rumqttc 3.1.1 and 5.0 over TLS (rustls, the test CA), and a plain-TCP
/// 5.0 client, each subscribed at QoS 2: the 3.1.1 client gets the QoS 0, 1
/// and 2 messages of the other two, they get its own, each at its QoS; a
/// marker from the same publisher after each set (nothing comes twice).
/// Then a 200 KB message from the plain client to each TLS client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v4_and_v5_over_tls_and_to_plain_clients() {
    let pki = Pki::new("rumqttc-tls");
    let broker = every_listener(&pki, |_| {});
    let tls = addr_of(&broker, "mqtts");
    let mut a = v4_tls(tls, "rq-tls-v4", rumqttc_tls(&pki, None)).await;
    let mut b = v5_tls(tls, "rq-tls-v5", rumqttc_tls(&pki, None)).await;
    let mut plain = V5::connect(broker.addr, "rq-plain").await;
    a.subscribe_ok("rq/to-v4/#", v4::QoS::ExactlyOnce).await;
    b.subscribe_ok("rq/to-v5/#", v5::QoS::ExactlyOnce).await;
    plain
        .subscribe_ok("rq/to-plain/#", v5::QoS::ExactlyOnce)
        .await;

    let v4q = [
        v4::QoS::AtMostOnce,
        v4::QoS::AtLeastOnce,
        v4::QoS::ExactlyOnce,
    ];
    let v5q = [
        v5::QoS::AtMostOnce,
        v5::QoS::AtLeastOnce,
        v5::QoS::ExactlyOnce,
    ];
    let expected = |to: &str, from: &str| {
        sorted(
            (0..3u8)
                .map(|q| {
                    (
                        format!("rq/to-{to}/{q}"),
                        format!("{from}-q{q}").into_bytes(),
                        q,
                    )
                })
                .collect(),
        )
    };
    // b (5.0, TLS) and plain (5.0, TCP) to a (3.1.1, TLS).
    for (from, sender) in [("v5", &b), ("plain", &plain)] {
        for (q, qos) in v5q.iter().enumerate() {
            let topic = format!("rq/to-v4/{q}");
            sender
                .publish(&topic, *qos, false, format!("{from}-q{q}"))
                .await;
        }
        let got = a.recv_publishes(3).await;
        assert_eq!(v4_seen(&got), expected("v4", from), "{from} -> v4 over TLS");
        let marker = format!("end-{from}");
        sender
            .publish("rq/to-v4/2", v5::QoS::ExactlyOnce, false, marker.as_str())
            .await;
        a.expect_marker(&marker, &format!("{from} -> v4: each once"))
            .await;
    }
    // a (3.1.1, TLS) to b (5.0, TLS) and to plain.
    for (to, receiver) in [("v5", &mut b), ("plain", &mut plain)] {
        for (q, qos) in v4q.iter().enumerate() {
            let topic = format!("rq/to-{to}/{q}");
            a.publish(&topic, *qos, false, format!("v4-q{q}")).await;
        }
        let got = receiver.recv_publishes(3).await;
        assert_eq!(v5_seen(&got), expected(to, "v4"), "v4 over TLS -> {to}");
        let marker = format!("end-v4-{to}");
        a.publish(
            &format!("rq/to-{to}/2"),
            v4::QoS::ExactlyOnce,
            false,
            marker.as_str(),
        )
        .await;
        receiver
            .expect_marker(&marker, &format!("v4 -> {to}: each once"))
            .await;
    }

    // A 200 KB message from the broker to TLS clients: 16 KiB records.
    let big = big_payload();
    plain
        .publish("rq/to-v4/1", v5::QoS::AtLeastOnce, false, big.clone())
        .await;
    let p = a.recv_publish().await;
    assert!(
        p.payload[..] == big[..],
        "200 KB to 3.1.1 over TLS: {} bytes",
        p.payload.len()
    );
    plain
        .publish("rq/to-v5/1", v5::QoS::AtLeastOnce, false, big.clone())
        .await;
    let p = b.recv_publish().await;
    assert!(
        p.payload[..] == big[..],
        "200 KB to 5.0 over TLS: {} bytes",
        p.payload.len()
    );
    a.disconnect().await;
    b.disconnect().await;
    plain.disconnect().await;
}

/// The 200 KB payload of the large-message checks.
fn big_payload() -> Vec<u8> {
    (0..200 * 1024).map(|i| (i % 251) as u8).collect()
}

/// Waits (bounded) for rumqttc's event loop to end the connection before
/// any CONNACK: the TLS handshake or the first read fails. Returns the error.
async fn v4_refused(addr: SocketAddr, id: &str, transport: Transport) -> String {
    let mut o = v4_options(addr, id);
    o.set_transport(transport);
    let (_client, mut eventloop) = v4::AsyncClient::new(o, 10);
    within(STEP, &format!("{id} refused"), async {
        loop {
            match eventloop.poll().await {
                Ok(v4::Event::Incoming(v4::Packet::ConnAck(ack))) => {
                    panic!("{id}: accepted without a valid client certificate: {ack:?}")
                }
                Ok(_) => {}
                Err(e) => return e.to_string(),
            }
        }
    })
    .await
}

/// As [`v4_refused`] for rumqttc's 5.0 client.
async fn v5_refused(addr: SocketAddr, id: &str, transport: Transport) -> String {
    let mut o = v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_transport(transport);
    let (_client, mut eventloop) = v5::AsyncClient::new(o, 10);
    within(STEP, &format!("{id} refused"), async {
        loop {
            match eventloop.poll().await {
                Ok(v5::Event::Incoming(v5::Packet::ConnAck(ack))) => {
                    panic!("{id}: accepted without a valid client certificate: {ack:?}")
                }
                Ok(_) => {}
                Err(e) => return e.to_string(),
            }
        }
    })
    .await
}

/// Mutual TLS with rumqttc: 3.1.1 and 5.0 clients presenting a certificate
/// from the test CA get in and exchange QoS 1 and 2 messages with each other
/// and with a plain client; without a certificate, or with one from another
/// CA, both are refused, and the listener goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_mutual_tls_with_client_certificates() {
    let pki = Pki::new("rumqttc-mtls");
    let broker = start(2, |c| {
        c.listeners
            .push(pki.listener(ListenerProtocol::Mqtt, Some(pki.tls(true))));
    });
    let mtls = addr_of(&broker, "mqtts");
    let (cert4, cert5) = (pki.client("rumqttc-v4"), pki.client("rumqttc-v5"));
    let foreign = pki.foreign_client("rumqttc-foreign");

    for (what, cert) in [("no certificate", None), ("a foreign CA", Some(&foreign))] {
        let e = v4_refused(mtls, "rq-m-v4-bad", rumqttc_tls(&pki, cert)).await;
        eprintln!("3.1.1 with {what}: {e}");
        let e = v5_refused(mtls, "rq-m-v5-bad", rumqttc_tls(&pki, cert)).await;
        eprintln!("5.0 with {what}: {e}");
    }

    let mut a = v4_tls(mtls, "rq-m-v4", rumqttc_tls(&pki, Some(&cert4))).await;
    let mut b = v5_tls(mtls, "rq-m-v5", rumqttc_tls(&pki, Some(&cert5))).await;
    let mut plain = V4::connect(broker.addr, "rq-m-plain").await;
    a.subscribe_ok("m/to-v4", v4::QoS::ExactlyOnce).await;
    b.subscribe_ok("m/to-v5", v5::QoS::ExactlyOnce).await;
    plain.subscribe_ok("m/to-plain", v4::QoS::ExactlyOnce).await;

    b.publish("m/to-v4", v5::QoS::AtLeastOnce, false, "v5-q1")
        .await;
    b.publish("m/to-v4", v5::QoS::ExactlyOnce, false, "v5-q2")
        .await;
    plain
        .publish("m/to-v5", v4::QoS::ExactlyOnce, false, "plain-q2")
        .await;
    a.publish("m/to-plain", v4::QoS::AtLeastOnce, false, "v4-q1")
        .await;
    let got = a.recv_publishes(2).await;
    assert_eq!(
        v4_seen(&got),
        vec![
            ("m/to-v4".to_owned(), b"v5-q1".to_vec(), 1),
            ("m/to-v4".to_owned(), b"v5-q2".to_vec(), 2)
        ]
    );
    let got = b.recv_publishes(1).await;
    assert_eq!(
        v5_seen(&got),
        vec![("m/to-v5".to_owned(), b"plain-q2".to_vec(), 2)]
    );
    let got = plain.recv_publishes(1).await;
    assert_eq!(
        v4_seen(&got),
        vec![("m/to-plain".to_owned(), b"v4-q1".to_vec(), 1)]
    );
    a.disconnect().await;
    b.disconnect().await;
    plain.disconnect().await;
}

// ----------------------------------------------------- every listener at once --

/// Messages each publisher of [`one_message_across_every_listener`] sends.
const PER_PUBLISHER: usize = 20;

/// Checks one subscriber's deliveries, `(topic, QoS, payload)` in arrival
/// order up to its last marker: every publisher's PER_PUBLISHER messages and
/// its marker exactly once each, at the publisher's QoS, on its topic.
fn check_fan_in(who: &str, got: &[(String, u8, String)], publishers: &[(&str, u8)]) {
    let mut count: BTreeMap<(String, u8, String), usize> = BTreeMap::new();
    for m in got {
        *count.entry(m.clone()).or_default() += 1;
    }
    let mut expected = BTreeMap::new();
    for (id, qos) in publishers {
        let topic = format!("fan/{id}");
        for i in 0..PER_PUBLISHER {
            expected.insert((topic.clone(), *qos, format!("{id}-{i}")), 1);
        }
        expected.insert((topic, *qos, format!("end-{id}")), 1);
    }
    if count != expected {
        let missing: Vec<_> = expected
            .keys()
            .filter(|k| !count.contains_key(*k))
            .collect();
        let wrong: Vec<_> = count
            .iter()
            .filter(|(k, n)| expected.get(*k) != Some(n))
            .collect();
        panic!(
            "{who}: {} deliveries; missing {missing:?}; unexpected or repeated {wrong:?}",
            got.len()
        );
    }
}

/// `MSG <topic> <qos> <payload>` lines of a listener_client script.
fn msg_lines(lines: &[String]) -> Vec<(String, u8, String)> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("MSG "))
        .map(|l| {
            let mut f = l.splitn(3, ' ');
            let (t, q, p) = (f.next(), f.next(), f.next());
            match (t, q.and_then(|q| q.parse().ok()), p) {
                (Some(t), Some(q), Some(p)) => (t.to_owned(), q, p.to_owned()),
                _ => panic!("malformed line {l:?}"),
            }
        })
        .collect()
}

/// Deliveries to a rumqttc subscriber until it has every publisher's marker.
async fn rumqttc_fan_in<P: Proto>(
    sub: &mut Client<P>,
    publishers: &[(&str, u8)],
    key: impl Fn(&P::Publish) -> (String, u8, String),
) -> Vec<(String, u8, String)> {
    let mut waiting: Vec<String> = publishers
        .iter()
        .map(|(id, _)| format!("end-{id}"))
        .collect();
    let mut got = Vec::new();
    while !waiting.is_empty() {
        let m = key(&sub.recv_publish().await);
        waiting.retain(|w| *w != m.2);
        got.push(m);
    }
    got
}

/// One broker with plain, TLS, WebSocket and secure WebSocket listeners; on
/// each, subscribers of different clients (rumqttc 3.1.1 on mqtt://; rumqttc
/// 5.0 and mosquitto_sub on mqtts://; Paho 5 and MQTT.js 3.1.1 on ws://;
/// MQTT.js 5 and Paho 3.1.1 on wss://), all on `fan/#` at QoS 2. Then one
/// publisher per listener at once (mosquitto_pub QoS 1 on mqtt://, rumqttc
/// 5.0 QoS 2 on mqtts://, Paho 3.1.1 QoS 1 on ws://, MQTT.js 5 QoS 2 on
/// wss://), PER_PUBLISHER messages and a marker each: every subscriber
/// gets every message exactly once, at its QoS, by the time it has all four
/// markers (each ordered after its publisher's messages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_across_every_listener() {
    let pki = Pki::new("fan");
    let broker = every_listener(&pki, |_| {});
    let port = |s| addr_of(&broker, s).port().to_string();
    let (mqtt, ws, wss) = (port("mqtt"), port("ws"), port("wss"));
    let tls = addr_of(&broker, "mqtts");
    let ca = path(&pki.ca).to_owned();
    let ws_url = format!("ws://127.0.0.1:{ws}/mqtt");
    let wss_url = format!("wss://127.0.0.1:{wss}/mqtt");
    let publishers: [(&str, u8); 4] = [
        ("mosq-mqtt", 1),
        ("rumqttc-mqtts", 2),
        ("paho-ws", 1),
        ("mqttjs-wss", 2),
    ];
    let ids = publishers.map(|(id, _)| id).join(",");

    // Subscribers, each ready (its SUBACK in) before anything is published.
    let mut rq_plain = V4::connect(broker.addr, "sub-rumqttc-mqtt").await;
    rq_plain.subscribe_ok("fan/#", v4::QoS::ExactlyOnce).await;
    let mut rq_tls = v5_tls(tls, "sub-rumqttc-mqtts", rumqttc_tls(&pki, None)).await;
    rq_tls.subscribe_ok("fan/#", v5::QoS::ExactlyOnce).await;
    let mut mosq_sub = MosqSub::start(
        tls.port(),
        &[
            "--cafile",
            &ca,
            "-i",
            "sub-mosq-mqtts",
            "-t",
            "fan/#",
            "-q",
            "2",
            "-F",
            "MSG|%t %q %p",
        ],
    )
    .await;
    let mut scripts = vec![
        (
            "Paho 5 on ws://",
            paho(
                "listener_client",
                &[
                    "sub",
                    "127.0.0.1",
                    &ws,
                    "websockets",
                    "-",
                    "5",
                    "sub-paho-ws",
                    "fan/#",
                    &ids,
                ],
            ),
        ),
        (
            "Paho 3.1.1 on wss://",
            paho(
                "listener_client",
                &[
                    "sub",
                    "127.0.0.1",
                    &wss,
                    "websockets",
                    &ca,
                    "3.1.1",
                    "sub-paho-wss",
                    "fan/#",
                    &ids,
                ],
            ),
        ),
        (
            "MQTT.js 3.1.1 on ws://",
            mqttjs(
                "listener_client",
                &["sub", &ws_url, "-", "3.1.1", "sub-mqttjs-ws", "fan/#", &ids],
            ),
        ),
        (
            "MQTT.js 5 on wss://",
            mqttjs(
                "listener_client",
                &["sub", &wss_url, &ca, "5", "sub-mqttjs-wss", "fan/#", &ids],
            ),
        ),
    ];
    for (who, s) in &mut scripts {
        // Starting an interpreter is more than one event: twice STEP.
        s.wait_line(2 * STEP, &format!("{who}: READY"), |l| l == "READY")
            .await;
    }

    // The publishers, all at once.
    let count = |qos: u8| format!("{qos}:{PER_PUBLISHER}");
    let paho_pub = paho(
        "listener_client",
        &[
            "pub",
            "127.0.0.1",
            &ws,
            "websockets",
            "-",
            "3.1.1",
            "paho-ws",
            "fan/paho-ws",
            &count(1),
        ],
    );
    let mqttjs_pub = mqttjs(
        "listener_client",
        &[
            "pub",
            &wss_url,
            &ca,
            "5",
            "mqttjs-wss",
            "fan/mqttjs-wss",
            &count(2),
        ],
    );
    let mosq_lines: Vec<String> = (0..PER_PUBLISHER)
        .map(|i| format!("mosq-mqtt-{i}"))
        .chain(["end-mosq-mqtt".to_owned()])
        .collect();
    let mosq_pub = tokio::task::spawn_blocking(move || {
        mosquitto_pub(
            mqtt.parse().unwrap(),
            &["-i", "mosq-mqtt", "-t", "fan/mosq-mqtt", "-q", "1"],
            Some(&mosq_lines),
        )
    });
    let mut rq_pub = v5_tls(tls, "rumqttc-mqtts", rumqttc_tls(&pki, None)).await;
    for i in 0..PER_PUBLISHER {
        let payload = format!("rumqttc-mqtts-{i}");
        rq_pub
            .publish("fan/rumqttc-mqtts", v5::QoS::ExactlyOnce, false, payload)
            .await;
    }
    rq_pub
        .publish(
            "fan/rumqttc-mqtts",
            v5::QoS::ExactlyOnce,
            false,
            "end-rumqttc-mqtts",
        )
        .await;

    // Every subscriber, to its last marker.
    let v4_key = |p: &v4::Publish| {
        let payload = String::from_utf8(p.payload.to_vec()).expect("UTF-8 payload");
        (p.topic.clone(), p.qos as u8, payload)
    };
    let v5_key = |p: &v5::Publish| {
        let topic = String::from_utf8(p.topic.to_vec()).expect("UTF-8 topic");
        let payload = String::from_utf8(p.payload.to_vec()).expect("UTF-8 payload");
        (topic, p.qos as u8, payload)
    };
    let got = rumqttc_fan_in(&mut rq_plain, &publishers, v4_key).await;
    check_fan_in("rumqttc 3.1.1 on mqtt://", &got, &publishers);
    let got = rumqttc_fan_in(&mut rq_tls, &publishers, v5_key).await;
    check_fan_in("rumqttc 5.0 on mqtts://", &got, &publishers);

    let mut got = Vec::new();
    let mut waiting: Vec<String> = publishers
        .iter()
        .map(|(id, _)| format!("end-{id}"))
        .collect();
    while !waiting.is_empty() {
        let line = format!("MSG {}", mosq_sub.msg().await);
        let m = msg_lines(&[line]).remove(0);
        waiting.retain(|w| *w != m.2);
        got.push(m);
    }
    check_fan_in("mosquitto_sub on mqtts://", &got, &publishers);

    for (who, s) in scripts {
        check_fan_in(who, &msg_lines(&s.finish().await), &publishers);
    }
    // Every publisher had its messages acknowledged.
    rq_pub
        .wait_acks(PER_PUBLISHER + 1, v5::QoS::ExactlyOnce)
        .await;
    paho_pub.finish().await;
    mqttjs_pub.finish().await;
    mosq_pub.await.expect("mosquitto_pub thread");
}

// ------------------------------------------------- large publishes over TLS --

/// A 200 KB PUBLISH from a client to the broker over TLS (mqtts:// and
/// wss://), from rumqttc (3.1.1 and 5.0, mqtts), Paho (mqtts, wss) and
/// MQTT.js (mqtts, wss): acknowledged and delivered intact to a plain-TCP
/// subscriber. (The broker-to-client direction is in the tests above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listeners_take_publishes_over_16_kib() {
    let pki = Pki::new("big");
    let broker = every_listener(&pki, |_| {});
    let tls = addr_of(&broker, "mqtts");
    let big = big_payload();
    let mut sub = V4::connect(broker.addr, "big-sub").await;
    sub.subscribe_ok("big/#", v4::QoS::AtLeastOnce).await;

    let mut a = v4_tls(tls, "big-v4", rumqttc_tls(&pki, None)).await;
    a.publish("big/v4", v4::QoS::AtLeastOnce, false, big.clone())
        .await;
    a.wait_acks(1, v4::QoS::AtLeastOnce).await;
    let p = sub.recv_publish().await;
    assert!(
        p.payload[..] == big[..],
        "from 3.1.1 over TLS: {} bytes",
        p.payload.len()
    );
    let mut b = v5_tls(tls, "big-v5", rumqttc_tls(&pki, None)).await;
    b.publish("big/v5", v5::QoS::AtLeastOnce, false, big.clone())
        .await;
    b.wait_acks(1, v5::QoS::AtLeastOnce).await;
    let p = sub.recv_publish().await;
    assert!(
        p.payload[..] == big[..],
        "from 5.0 over TLS: {} bytes",
        p.payload.len()
    );

    let plain = broker.port.to_string();
    let ca = path(&pki.ca);
    let (mqtts, wss) = (
        tls.port().to_string(),
        addr_of(&broker, "wss").port().to_string(),
    );
    let args = ["127.0.0.1", &plain, &mqtts, "tcp", ca];
    paho("large_message", &args).finish().await;
    let args = ["127.0.0.1", &plain, &wss, "websockets", ca];
    paho("large_message", &args).finish().await;
    let plain_url = format!("mqtt://127.0.0.1:{plain}");
    let url = format!("mqtts://127.0.0.1:{mqtts}");
    mqttjs("large_message", &[&plain_url, &url, ca])
        .finish()
        .await;
    let url = format!("wss://127.0.0.1:{wss}/mqtt");
    mqttjs("large_message", &[&plain_url, &url, ca])
        .finish()
        .await;
}
