//! The Prometheus endpoint (`metrics_port`): scraped over HTTP and parsed by
//! Prometheus's own Python client (`tests/prometheus/scrape.py`, installed by
//! scripts/test.sh), with traffic that must move the counters, a drop that
//! must appear under its reason, and bad requests that get a clear status
//! without harming the next scrape.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use ringmq_proto::codec::{Packet, QosPid};

type Labels = HashMap<String, String>;

/// One parsed scrape: `(name, labels, value)` and each family's type.
struct Parsed {
    samples: Vec<(String, Labels, f64)>,
    types: HashMap<String, String>,
}

impl Parsed {
    /// The value of `name` whose labels include every `(key, value)` of `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matches = |l: &Labels| {
            labels
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        };
        let found = self
            .samples
            .iter()
            .find(|(n, l, _)| n == name && matches(l));
        found.map(|s| s.2)
    }

    fn count(&self, name: &str) -> usize {
        self.samples.iter().filter(|(n, _, _)| n == name).count()
    }
}

fn require_prometheus_client() {
    let ok = Command::new("python3")
        .args(["-c", "import prometheus_client.parser"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 cannot import prometheus_client: python3 -m pip install 'prometheus-client>=0.17,<1' \
         (scripts/test.sh does this)"
    );
}

/// Scrapes `addr` with the Python client's parser (bounded by its alarm).
fn scrape(addr: SocketAddr) -> Parsed {
    require_prometheus_client();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/prometheus/scrape.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(format!("http://{addr}/metrics"))
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "scrape failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("scrape.py prints JSON");
    let samples = json["samples"].as_array().expect("samples").iter();
    let samples = samples.map(|s| {
        let labels = s[1].as_object().expect("labels").iter();
        let labels = labels.map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()));
        (
            s[0].as_str().expect("name").to_owned(),
            labels.collect(),
            s[2].as_f64().expect("value"),
        )
    });
    let types = json["types"].as_object().expect("types").iter();
    Parsed {
        samples: samples.collect(),
        types: types
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
            .collect(),
    }
}

/// Scrapes until `pred` holds (the cores publish their counters every 500 ms
/// tick), for at most 10 s.
fn scrape_until(addr: SocketAddr, what: &str, pred: impl Fn(&Parsed) -> bool) -> Parsed {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let parsed = scrape(addr);
        if pred(&parsed) {
            return parsed;
        }
        assert!(Instant::now() < deadline, "metrics never showed {what}");
        std::thread::sleep(Duration::from_millis(100)); // polling interval, not sync
    }
}

fn with_metrics(c: &mut ringmq::config::Config) {
    c.metrics = Some("127.0.0.1:0".parse().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_with_traffic_and_drops_show_their_reason() {
    let broker = start(2, with_metrics);
    let at = broker.metrics_addr().expect("metrics endpoint");
    let before = tokio::task::spawn_blocking(move || scrape(at))
        .await
        .unwrap();
    assert_eq!(
        before
            .types
            .get("ringmq_messages_received")
            .map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        before.types.get("ringmq_connections").map(String::as_str),
        Some("gauge")
    );
    assert_eq!(
        before.value("ringmq_messages_received_total", &[("qos", "1")]),
        Some(0.0)
    );
    assert_eq!(before.count("ringmq_core_info"), 2, "one info per core");
    assert!(before
        .value(
            "ringmq_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        )
        .is_some());
    assert!(
        before
            .value("process_resident_memory_bytes", &[])
            .unwrap_or(0.0)
            > 0.0
    );

    // A persistent subscriber receives a QoS 1 message, goes offline, and
    // misses a QoS 0 one: dropped by policy, counted under its reason.
    let mut sub = Raw::connect(broker.addr, "metrics-sub", false, 60, None).await;
    sub.subscribe_ok("m/t", RawQoS::AtLeastOnce, 1).await;
    let mut publisher = Raw::connect(broker.addr, "metrics-pub", true, 60, None).await;
    publisher
        .send(&publish_packet(
            "m/t",
            QosPid::AtLeastOnce(pid(1)),
            false,
            b"one",
        ))
        .await;
    assert!(matches!(publisher.recv().await, Packet::PubAck(_)));
    let got = sub.recv_publish().await;
    sub.puback(&got).await;
    sub.disconnect().await;
    broker
        .wait_counters(Duration::from_secs(10), "subscriber offline", |c| {
            c.connections_current == 1
        })
        .await;
    publisher
        .send(&publish_packet("m/t", QosPid::AtMostOnce, false, b"missed"))
        .await;

    let after = tokio::task::spawn_blocking(move || {
        // Each core publishes its counters on its own tick: wait for every
        // core's share, not only the one that counted the drop.
        scrape_until(at, "the offline QoS 0 drop and every core's counts", |p| {
            p.value(
                "ringmq_messages_dropped_total",
                &[("reason", "offline_qos0")],
            ) == Some(1.0)
                && p.value("ringmq_messages_received_total", &[("qos", "0")]) == Some(1.0)
                && p.value("ringmq_messages_received_total", &[("qos", "1")]) == Some(1.0)
                && p.value("ringmq_messages_sent_total", &[("qos", "1")]) == Some(1.0)
                && p.value("ringmq_connections_accepted_total", &[]) == Some(2.0)
                && p.value("ringmq_sessions", &[]) == Some(2.0)
        })
    })
    .await
    .unwrap();
    assert_eq!(
        after.value("ringmq_messages_received_total", &[("qos", "1")]),
        Some(1.0)
    );
    assert_eq!(
        after.value("ringmq_messages_received_total", &[("qos", "0")]),
        Some(1.0)
    );
    assert_eq!(
        after.value("ringmq_messages_sent_total", &[("qos", "1")]),
        Some(1.0)
    );
    assert_eq!(after.value("ringmq_sessions", &[]), Some(2.0));
    assert_eq!(after.value("ringmq_subscriptions", &[]), Some(1.0));
    assert_eq!(
        after.value("ringmq_connections_accepted_total", &[]),
        Some(2.0)
    );
    assert_eq!(
        after.value("ringmq_listener_connections_accepted_total", &[]),
        Some(2.0)
    );
    assert!(
        after
            .value("ringmq_bytes_received_total", &[])
            .unwrap_or(0.0)
            > 0.0
    );
    for reason in ["queue_full", "slow_consumer", "expired"] {
        let dropped = after.value("ringmq_messages_dropped_total", &[("reason", reason)]);
        assert_eq!(dropped, Some(0.0), "{reason}");
    }
}

/// Sends `request` raw and returns the status line of the answer.
fn status_of(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    answer.lines().next().unwrap_or("").to_owned()
}

#[test]
fn bad_requests_get_a_status_and_the_next_scrape_works() {
    let broker = start(1, with_metrics);
    let at = broker.metrics_addr().expect("metrics endpoint");
    assert_eq!(
        status_of(at, b"POST /metrics HTTP/1.1\r\n\r\n"),
        "HTTP/1.1 405 Method Not Allowed"
    );
    assert_eq!(
        status_of(at, b"GET / HTTP/1.1\r\n\r\n"),
        "HTTP/1.1 404 Not Found"
    );
    let huge = vec![b'a'; 20 * 1024];
    assert_eq!(
        status_of(at, &huge),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_eq!(
        status_of(at, b"\xff\xfe\r\n\r\n"),
        "HTTP/1.1 400 Bad Request"
    );
    assert_eq!(
        status_of(at, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
        "HTTP/1.1 200 OK"
    );
    let parsed = scrape(at);
    assert_eq!(parsed.value("ringmq_connections", &[]), Some(0.0));
}

#[test]
fn a_taken_metrics_port_fails_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = start_result(1, |c| c.metrics = Some(addr))
        .err()
        .expect("start must fail");
    assert!(format!("{err:#}").contains("metrics_port"), "{err:#}");
}

/// Mosquitto 2.0's `$SYS/broker/...` topics (load averages besides).
const MOSQUITTO_SYS: &[&str] = &[
    "version",
    "uptime",
    "clients/total",
    "clients/connected",
    "clients/active",
    "clients/disconnected",
    "clients/inactive",
    "clients/maximum",
    "clients/expired",
    "messages/stored",
    "messages/received",
    "messages/sent",
    "store/messages/count",
    "store/messages/bytes",
    "subscriptions/count",
    "shared_subscriptions/count",
    "retained messages/count",
    "heap/current",
    "heap/maximum",
    "publish/messages/dropped",
    "publish/messages/received",
    "publish/messages/sent",
    "publish/bytes/received",
    "publish/bytes/sent",
    "bytes/received",
    "bytes/sent",
];

const MOSQUITTO_LOADS: &[&str] = &[
    "messages/received",
    "messages/sent",
    "publish/dropped",
    "publish/received",
    "publish/sent",
    "bytes/received",
    "bytes/sent",
    "sockets",
    "connections",
];

/// Every topic Mosquitto publishes under `$SYS/broker` appears, and the
/// broker's own delivery latency once deliveries were sampled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_has_mosquittos_topics_and_the_delivery_latency() {
    let broker = start(2, |c| c.sys_interval = Duration::from_secs(1));
    let mut sub = Raw::connect(broker.addr, "sys-sub", true, 60, None).await;
    sub.subscribe_ok("lat/t", RawQoS::AtMostOnce, 0).await;
    let mut publisher = Raw::connect(broker.addr, "sys-pub", true, 60, None).await;
    let n = 2 * ringmq_proto::latency::SAMPLE_EVERY as usize;
    for _ in 0..n {
        publisher
            .send(&publish_packet("lat/t", QosPid::AtMostOnce, false, b"x"))
            .await;
    }
    for _ in 0..n {
        sub.recv_publish().await;
    }

    let mut wanted: Vec<String> = MOSQUITTO_SYS
        .iter()
        .map(|t| format!("$SYS/broker/{t}"))
        .collect();
    for name in MOSQUITTO_LOADS {
        for period in ["1min", "5min", "15min"] {
            wanted.push(format!("$SYS/broker/load/{name}/{period}"));
        }
    }
    for q in ["p50", "p99", "max"] {
        wanted.push(format!("$SYS/broker/ringmq/latency/{q}"));
    }
    let mut watcher = Raw::connect(broker.addr, "sys-watch", true, 60, None).await;
    watcher.subscribe_ok("$SYS/#", RawQoS::AtMostOnce, 0).await;
    let mut seen: HashMap<String, String> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while wanted.iter().any(|t| !seen.contains_key(t)) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match watcher.next_within(left).await {
            RawEv::Packet(Packet::Publish(p)) => {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                seen.insert(topic, String::from_utf8_lossy(&p.payload).into_owned());
            }
            RawEv::Packet(_) => {}
            other => {
                let missing: Vec<_> = wanted.iter().filter(|t| !seen.contains_key(*t)).collect();
                panic!("$SYS topics missing after 15 s ({other:?}): {missing:?}");
            }
        }
    }
    let p50: f64 = seen["$SYS/broker/ringmq/latency/p50"]
        .parse()
        .expect("a number of ms");
    let max: f64 = seen["$SYS/broker/ringmq/latency/max"]
        .parse()
        .expect("a number of ms");
    assert!(p50 <= max, "p50 {p50} max {max}");
    assert_eq!(
        seen["$SYS/broker/clients/maximum"]
            .parse::<u64>()
            .ok()
            .map(|m| m >= 2),
        Some(true)
    );
}

/// The metric names a PromQL expression uses (`ringmq_*` and `process_*`).
fn metric_names(expr: &str) -> Vec<String> {
    let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'));
    let names = words.filter(|w| w.starts_with("ringmq_") || w.starts_with("process_"));
    names.map(str::to_owned).collect()
}

/// Every string under a `key` anywhere in `value`.
fn strings_under(value: &serde_json::Value, key: &str, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match v.as_str() {
                    Some(s) if k == key => out.push(s.to_owned()),
                    _ => strings_under(v, key, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| strings_under(v, key, out)),
        _ => {}
    }
}

/// contrib/grafana-dashboard.json queries only what the endpoint exports.
#[test]
fn the_grafana_dashboard_uses_only_exported_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/grafana-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read dashboard"))
            .expect("dashboard is JSON");
    let mut queries = Vec::new();
    strings_under(&dashboard, "expr", &mut queries);
    let panels = queries.len();
    strings_under(&dashboard, "query", &mut queries);
    assert!(panels >= 20, "only {panels} panel queries");

    // A bridge (to a port nothing listens on) so its families are exported.
    let broker = start(2, |c| {
        with_metrics(c);
        let bridge = ringmq::config::BridgeFile {
            name: "nowhere".into(),
            address: Some(ringmq::config::Addresses::One("127.0.0.1:1".into())),
            topic: vec!["a out 0".into()],
            ..Default::default()
        };
        c.bridges = vec![bridge.resolve("test").expect("a valid bridge")];
    });
    let parsed = scrape(broker.metrics_addr().expect("metrics endpoint"));
    let exported: std::collections::HashSet<&str> =
        parsed.samples.iter().map(|s| s.0.as_str()).collect();
    let mut used: Vec<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    used.sort();
    used.dedup();
    assert!(used.len() >= 20, "{used:?}");
    let missing: Vec<&String> = used
        .iter()
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the broker does not export: {missing:?}"
    );
}

/// A bridge's families move with what crosses it, checked with Prometheus's
/// parser: the link states, messages by direction, nothing held after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_metrics_follow_the_link_and_its_messages() {
    let m = MosquittoBroker::start("metrics", "").await;
    let broker = start(2, |c| {
        with_metrics(c);
        let bridge = ringmq::config::BridgeFile {
            name: "mosq".into(),
            address: Some(ringmq::config::Addresses::One(format!(
                "127.0.0.1:{}",
                m.port
            ))),
            topic: vec!["up/# out 1".into(), "down/# in 1".into()],
            ..Default::default()
        };
        c.bridges = vec![bridge.resolve("test").expect("a valid bridge")];
    });
    let addr = broker.metrics_addr().expect("metrics endpoint");
    let up = |p: &Parsed, side| p.value("ringmq_bridge_up", &[("bridge", "mosq"), ("side", side)]);
    scrape_until(addr, "both links up", |p| {
        up(p, "local") == Some(1.0) && up(p, "remote") == Some(1.0)
    });
    let mut sink = Raw::connect(m.addr(), "sink", true, 30, None).await;
    sink.subscribe_ok("up/#", RawQoS::AtLeastOnce, 1).await;
    let mut p = Raw::connect(broker.addr, "p", true, 30, None).await;
    for i in 1..=3u16 {
        p.send(&publish_packet(
            "up/x",
            QosPid::AtLeastOnce(pid(i)),
            false,
            b"m",
        ))
        .await;
        let got = sink.recv_publish().await;
        sink.puback(&got).await;
    }
    let moved = |p: &Parsed| {
        p.value(
            "ringmq_bridge_messages_total",
            &[("bridge", "mosq"), ("direction", "out")],
        ) == Some(3.0)
    };
    let parsed = scrape_until(addr, "3 messages out", moved);
    assert_eq!(
        parsed
            .types
            .get("ringmq_bridge_messages")
            .map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        parsed.value(
            "ringmq_bridge_pending_messages",
            &[("bridge", "mosq"), ("direction", "out")]
        ),
        Some(0.0)
    );
    assert_eq!(
        parsed.value("ringmq_bridge_connects_total", &[("bridge", "mosq")]),
        Some(1.0)
    );
    assert_eq!(
        parsed.value(
            "ringmq_bridge_dropped_total",
            &[("bridge", "mosq"), ("reason", "link_down")]
        ),
        Some(0.0)
    );
}

/// A cluster node's link families parse and say it is connected.
#[test]
fn a_cluster_node_reports_its_link() {
    let nats = NatsServer::start("metrics");
    let text = format!(
        "[cluster]\nnats_servers = [\"{}\"]\nnode_name = \"m\"\n",
        nats.url()
    );
    let file: ringmq::config::FileConfig = toml::from_str(&text).expect("a [cluster] table");
    let cluster = file.resolve().expect("resolves").cluster;
    let broker = start(1, |c| {
        with_metrics(c);
        c.cluster = cluster;
    });
    let at = broker.metrics_addr().expect("metrics endpoint");
    let parsed = scrape_until(at, "both cluster connections up", |p| {
        p.value("ringmq_cluster_up", &[]) == Some(1.0)
            && p.value("ringmq_cluster_shared_cores", &[]) == Some(1.0)
    });
    assert_eq!(parsed.types["ringmq_cluster_dropped"], "counter");
    for reason in ["link_full", "too_large", "failed"] {
        assert_eq!(
            parsed.value("ringmq_cluster_dropped_total", &[("reason", reason)]),
            Some(0.0)
        );
    }
    for direction in ["in", "out"] {
        let moved = parsed.value(
            "ringmq_cluster_sessions_moved_total",
            &[("direction", direction)],
        );
        assert_eq!(moved, Some(0.0));
    }
    assert!(parsed.value("ringmq_cluster_subscriptions", &[]).is_some());
}
