//! Real third-party clients over the TLS, mutual-TLS, WebSocket and secure
//! WebSocket listeners, on 127.0.0.1:
//!
//! - Paho's Python client (paho-mqtt 2.x) with `transport="websockets"`,
//!   with and without TLS, MQTT 5 and 3.1.1 (`tests/paho/websockets.py`);
//! - MQTT.js (npm `mqtt`, pinned in `tests/mqttjs/package-lock.json`) over
//!   ws:// and wss://, MQTT 5 and 3.1.1 (`tests/mqttjs/round_trips.js`).
//!
//! Mosquitto's clients over TLS alone are in e2e_tls.rs; WebSocket framing
//! and upgrade edge cases in e2e_ws.rs.
//!
//! The tools are required, not optional: scripts/test.sh installs paho-mqtt
//! and runs `npm ci` in tests/mqttjs; a missing one fails these tests.

mod common;

use std::net::SocketAddr;

use common::*;
use ringmq::config::{Config, ListenerProtocol};

/// The address of the broker's first listener with `scheme`.
fn addr_of(broker: &TestBroker, scheme: &str) -> SocketAddr {
    broker
        .listeners()
        .into_iter()
        .find(|(s, _)| *s == scheme)
        .map(|(_, a)| a)
        .unwrap_or_else(|| panic!("no {scheme} listener"))
}

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
