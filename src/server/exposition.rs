//! What `GET /metrics` answers: a [`Scrape`] (the cores' published counters
//! and the process's figures, read at scrape time) in the Prometheus text
//! format, encoded by `prometheus-client`. Pure: no I/O here.
//!
//! Names follow Prometheus conventions: `ringmq_` prefix, counters end in
//! `_total`, a reason or a QoS is a label rather than part of the name.
//! Every core counter not given a family of its own below is exported under
//! its own name, so a counter added to [`Counters`] is never missing.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::metrics::Counters;

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Everything one scrape reports.
#[derive(Debug, Default, Clone)]
pub struct Scrape {
    /// Counters summed over the cores.
    pub totals: Counters,
    pub cores: Vec<CoreScrape>,
    pub listeners: Vec<ListenerScrape>,
    /// Open connections now (the `max_connections` count, exact at scrape).
    pub connections_open: u64,
    pub uptime_seconds: f64,
    /// `None` where `/proc` cannot be read.
    pub process: Option<ProcessScrape>,
    /// Publish-in to write-out time of sampled deliveries.
    pub latency: Option<LatencyScrape>,
    pub bridges: Vec<BridgeScrape>,
    /// With `[cluster]`.
    pub cluster: Option<ClusterScrape>,
}

/// How persistent sessions move between nodes: with their client from a
/// live node (`in`, `out`); from the record in JetStream when the node that
/// held it is gone (`recovered`); and what a node that comes back still held
/// of sessions that moved meanwhile, handed to their new node (`returned`).
pub const SESSION_MOVES: [&str; 4] = ["in", "out", "recovered", "returned"];

/// The cluster link, as it last counted.
#[derive(Debug, Default, Clone)]
pub struct ClusterScrape {
    pub up: bool,
    pub connects: u64,
    pub published: u64,
    pub received: u64,
    pub invalid: u64,
    /// `(reason, count)`.
    pub dropped: Vec<(&'static str, u64)>,
    pub subscriptions: u64,
    pub queued_bytes: u64,
    pub slow_consumer: u64,
    /// By [`SESSION_MOVES`].
    pub sessions: [u64; 4],
    /// Messages of moving sessions that did not reach the new node.
    pub session_messages_lost: u64,
}

/// One `[[bridge]]`, as its links last published it.
#[derive(Debug, Default, Clone)]
pub struct BridgeScrape {
    pub name: String,
    /// Index: local, remote.
    pub up: [bool; 2],
    /// Messages across, index: out (from local), in (from remote).
    pub forwarded: [u64; 2],
    /// Messages the bridge holds, by direction as `forwarded`.
    pub pending: [u64; 2],
    /// `(reason, count)`.
    pub dropped: Vec<(&'static str, u64)>,
    pub connects: u64,
    pub connect_failures: u64,
    pub duplicates: u64,
}

#[derive(Debug, Default, Clone)]
pub struct CoreScrape {
    /// `io_uring` or `epoll`.
    pub driver: &'static str,
    pub counters: Counters,
}

#[derive(Debug, Default, Clone)]
pub struct ListenerScrape {
    /// `scheme:port`, as `$SYS` names it.
    pub name: String,
    pub accepted: u64,
    pub refused: u64,
    pub open: u64,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessScrape {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
}

/// A histogram: `(upper bound in seconds, count in this bucket)`, the last
/// bound infinite.
#[derive(Debug, Default, Clone)]
pub struct LatencyScrape {
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

/// Core counters gathered into one family, told apart by one label.
struct Labelled {
    name: &'static str,
    help: &'static str,
    label: &'static str,
    /// `(label value, counter field)`.
    members: &'static [(&'static str, &'static str)],
}

/// A family with one sample per listener or per core.
struct Column<T> {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    get: fn(&T) -> u64,
}

const LABELLED: &[Labelled] = &[
    Labelled {
        name: "ringmq_messages_received",
        help: "PUBLISH packets received from clients, by QoS.",
        label: "qos",
        members: &[
            ("0", "received_qos0"),
            ("1", "received_qos1"),
            ("2", "received_qos2"),
        ],
    },
    Labelled {
        name: "ringmq_messages_sent",
        help: "PUBLISH packets delivered to clients (not counting resends), by the delivery's QoS.",
        label: "qos",
        members: &[("0", "sent_qos0"), ("1", "sent_qos1"), ("2", "sent_qos2")],
    },
    Labelled {
        name: "ringmq_messages_dropped",
        help: "Deliveries and messages dropped, by reason (each reason is a policy or a limit named in the README).",
        label: "reason",
        members: &[
            ("slow_consumer", "dropped_slow_consumer"),
            ("offline_qos0", "dropped_offline_qos0"),
            ("queue_full", "dropped_queue_full"),
            ("expired", "dropped_expired"),
            ("too_large", "dropped_too_large"),
            ("shared_no_member", "dropped_shared_no_member"),
            ("retained_cap", "dropped_retained_cap"),
            ("sys_publish", "dropped_sys_publish"),
        ],
    },
    Labelled {
        name: "ringmq_connections_refused",
        help: "Connections or CONNECTs refused, by reason.",
        label: "reason",
        members: &[
            ("max_connections", "refused_max_connections"),
            ("max_connections_per_ip", "refused_per_ip"),
            ("max_connection_rate", "refused_connection_rate"),
            ("bad_credentials", "auth_bad_credentials"),
            ("not_authorized", "auth_not_authorized"),
            ("invalid_connect", "connects_refused"),
        ],
    },
];

const PER_LISTENER: &[Column<ListenerScrape>] = &[
    Column {
        name: "ringmq_listener_connections_accepted",
        help: "Connections accepted, per listener.",
        kind: MetricType::Counter,
        get: |l| l.accepted,
    },
    Column {
        name: "ringmq_listener_connections_refused",
        help: "Connections refused before or at CONNECT, per listener.",
        kind: MetricType::Counter,
        get: |l| l.refused,
    },
    Column {
        name: "ringmq_listener_connections",
        help: "Connections open now, per listener.",
        kind: MetricType::Gauge,
        get: |l| l.open,
    },
];

const PER_CORE: &[Column<Counters>] = &[
    Column {
        name: "ringmq_core_connections",
        help: "Connections open now, per core.",
        kind: MetricType::Gauge,
        get: |c| c.connections_current,
    },
    Column {
        name: "ringmq_core_messages_received",
        help: "PUBLISH packets received, per core.",
        kind: MetricType::Counter,
        get: |c| c.messages_received,
    },
    Column {
        name: "ringmq_core_mesh_full_waits",
        help: "Times a publisher on this core waited for a full cross-core queue.",
        kind: MetricType::Counter,
        get: |c| c.mesh_full_waits,
    },
];

/// Core counters exported under another name than `ringmq_<field>`.
const RENAMED: &[(&str, &str)] = &[
    ("connections_current", "ringmq_connections"),
    ("connections_total", "ringmq_connections_accepted"),
    ("sessions_current", "ringmq_sessions"),
    ("subscriptions_current", "ringmq_subscriptions"),
    (
        "shared_subscriptions_current",
        "ringmq_shared_subscriptions",
    ),
    ("retained_current", "ringmq_retained_messages"),
    ("retained_bytes", "ringmq_retained_bytes"),
];

/// Core counters that are levels, not running totals.
const GAUGES: &[&str] = &[
    "connections_current",
    "connections_parked",
    "sessions_current",
    "subscriptions_current",
    "shared_subscriptions_current",
    "retained_current",
    "retained_bytes",
    "messages_queued",
    "messages_inflight",
    "store_failing",
    "cluster_shared_cores",
];

/// Core counters that other families already carry.
const COVERED: &[&str] = &["messages_received", "messages_sent"];

/// Help of counters documented as a group in [`Counters`].
const MISSING_HELP: &[(&str, &str)] = &[
    ("bytes_received", "Bytes read from clients."),
    ("bytes_sent", "Bytes written to clients."),
];

impl Scrape {
    /// The Prometheus text format (version 0.0.4) of this scrape.
    pub fn encode(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }

    fn value(&self, field: &str) -> u64 {
        self.totals.get(field).unwrap_or(0)
    }

    fn encode_core_counters(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        for (&field, help) in Counters::NAMES.iter().zip(Counters::HELP) {
            if COVERED.contains(&field)
                || LABELLED
                    .iter()
                    .any(|f| f.members.iter().any(|m| m.1 == field))
            {
                continue;
            }
            let name = RENAMED
                .iter()
                .find(|r| r.0 == field)
                .map_or_else(|| format!("ringmq_{field}"), |r| r.1.to_owned());
            let help = MISSING_HELP
                .iter()
                .find(|h| h.0 == field)
                .map_or(help.trim(), |h| h.1);
            let value = self.value(field);
            match GAUGES.contains(&field) {
                true => gauge(encoder, &name, help, value as i64)?,
                false => counter(encoder, &name, help, value)?,
            }
        }
        Ok(())
    }

    fn encode_labelled(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        for f in LABELLED {
            let mut family =
                encoder.encode_descriptor(f.name, help(f.help), None, MetricType::Counter)?;
            for (label_value, field) in f.members {
                let labels = [(f.label, *label_value)];
                let sample = family.encode_family(&labels)?;
                ConstCounter::new(self.value(field)).encode(sample)?;
            }
        }
        Ok(())
    }

    fn encode_listeners(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let rows: Vec<(String, &ListenerScrape)> =
            self.listeners.iter().map(|l| (l.name.clone(), l)).collect();
        for column in PER_LISTENER {
            encode_column(encoder, column, "listener", &rows)?;
        }
        Ok(())
    }

    fn encode_cores(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut info = encoder.encode_descriptor(
            "ringmq_core",
            "One per core (worker thread), with the I/O driver it runs.",
            None,
            MetricType::Info,
        )?;
        for (id, core) in self.cores.iter().enumerate() {
            let id = id.to_string();
            let labels = [("core", id.as_str()), ("driver", core.driver)];
            info.encode_info(&labels)?;
        }
        let rows: Vec<(String, &Counters)> = self
            .cores
            .iter()
            .enumerate()
            .map(|(id, core)| (id.to_string(), &core.counters))
            .collect();
        for column in PER_CORE {
            encode_column(encoder, column, "core", &rows)?;
        }
        Ok(())
    }

    fn encode_bridges(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        if self.bridges.is_empty() {
            return Ok(());
        }
        let mut up = encoder.encode_descriptor(
            "ringmq_bridge_up",
            "1 while the bridge's link to a side (local: this broker, remote: the other) is connected.",
            None,
            MetricType::Gauge,
        )?;
        for b in &self.bridges {
            for (side, is_up) in ["local", "remote"].into_iter().zip(b.up) {
                let labels = [("bridge", b.name.as_str()), ("side", side)];
                ConstGauge::new(i64::from(is_up)).encode(up.encode_family(&labels)?)?;
            }
        }
        let directions = |f: fn(&BridgeScrape) -> [u64; 2]| {
            move |b: &BridgeScrape| ["out", "in"].into_iter().zip(f(b)).collect::<Vec<_>>()
        };
        bridge_family(
            encoder,
            &self.bridges,
            ("ringmq_bridge_messages", "Messages across a bridge (acknowledged by the receiving broker at QoS 1/2), by direction.", MetricType::Counter),
            "direction",
            directions(|b| b.forwarded),
        )?;
        bridge_family(
            encoder,
            &self.bridges,
            ("ringmq_bridge_pending_messages", "QoS 1/2 messages a bridge holds, taken from one broker and not yet acknowledged by the other, by direction.", MetricType::Gauge),
            "direction",
            directions(|b| b.pending),
        )?;
        bridge_family(
            encoder,
            &self.bridges,
            (
                "ringmq_bridge_dropped",
                "Messages that did not cross a bridge, by reason.",
                MetricType::Counter,
            ),
            "reason",
            |b| b.dropped.clone(),
        )?;
        for (name, text, get) in [
            (
                "ringmq_bridge_connects",
                "Times the link to the remote broker came up.",
                (|b| b.connects) as fn(&BridgeScrape) -> u64,
            ),
            (
                "ringmq_bridge_connect_failures",
                "Attempts to connect to the remote broker that failed.",
                |b| b.connect_failures,
            ),
            (
                "ringmq_bridge_duplicates",
                "Redeliveries of messages the bridge already held (not sent twice).",
                |b| b.duplicates,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, text, None, MetricType::Counter)?;
            for b in &self.bridges {
                let labels = [("bridge", b.name.as_str())];
                ConstCounter::new(get(b)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    fn encode_cluster(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let Some(c) = &self.cluster else {
            return Ok(());
        };
        for (name, text, value) in [
            ("ringmq_cluster_up", "1 while the cluster link is connected to a NATS server.", u64::from(c.up)),
            ("ringmq_cluster_subscriptions", "NATS subscriptions the cluster link holds (one or two per distinct filter of this node, one for retained updates).", c.subscriptions),
            ("ringmq_cluster_queued_bytes", "Bytes of messages waiting for the cluster link (at most link_buffer).", c.queued_bytes),
        ] {
            let family = encoder.encode_descriptor(name, text, None, MetricType::Gauge)?;
            ConstGauge::new(value as i64).encode(family)?;
        }
        for (name, text, value) in [
            ("ringmq_cluster_connects", "Times the cluster link (re)connected to NATS.", c.connects),
            ("ringmq_cluster_published", "Messages published to the other nodes.", c.published),
            ("ringmq_cluster_received", "Messages from other nodes, one per matching filter of this node.", c.received),
            ("ringmq_cluster_invalid", "NATS messages under this cluster's subjects that were not ringmq messages.", c.invalid),
            ("ringmq_cluster_slow_consumer", "Times NATS dropped messages for this node because the link read a subscription too slowly.", c.slow_consumer),
            ("ringmq_cluster_session_messages_lost", "Queued messages of sessions moving between nodes that did not reach the new node.", c.session_messages_lost),
        ] {
            let family = encoder.encode_descriptor(name, text, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(family)?;
        }
        let mut moved = encoder.encode_descriptor(
            "ringmq_cluster_sessions_moved",
            "Persistent sessions that moved between this node and another, by direction (recovered: from JetStream's record, its node being gone; returned: a node back from a loss handed on what it held).",
            None,
            MetricType::Counter,
        )?;
        for (direction, n) in SESSION_MOVES.into_iter().zip(c.sessions) {
            ConstCounter::new(n).encode(moved.encode_family(&[("direction", direction)])?)?;
        }
        let mut dropped = encoder.encode_descriptor(
            "ringmq_cluster_dropped",
            "Messages that did not go out to the other nodes, by reason.",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in &c.dropped {
            ConstCounter::new(*n).encode(dropped.encode_family(&[("reason", *reason)])?)?;
        }
        Ok(())
    }

    fn encode_latency(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let Some(latency) = &self.latency else {
            return Ok(());
        };
        let mut sample = encoder.encode_descriptor(
            "ringmq_delivery_latency_seconds",
            "Time from a PUBLISH read to its delivery written to the subscriber's socket, of sampled deliveries.",
            None,
            MetricType::Histogram,
        )?;
        sample.encode_histogram::<NoLabelSet>(
            latency.sum_seconds,
            latency.count,
            &latency.buckets,
            None,
        )
    }

    fn encode_process(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut build = encoder.encode_descriptor(
            "ringmq_build",
            "The running build: version and git commit.",
            None,
            MetricType::Info,
        )?;
        build.encode_info(&[
            ("version", env!("CARGO_PKG_VERSION")),
            ("commit", crate::GIT_COMMIT),
        ])?;
        let uptime = ConstGauge::new(self.uptime_seconds);
        uptime.encode(encoder.encode_descriptor(
            "ringmq_uptime_seconds",
            "Seconds since the broker started.",
            None,
            MetricType::Gauge,
        )?)?;
        gauge(
            encoder,
            "ringmq_connections_open",
            "Open sockets counted against max_connections (exact at scrape time).",
            self.connections_open as i64,
        )?;
        let Some(p) = &self.process else {
            return Ok(());
        };
        ConstCounter::new(p.cpu_seconds).encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            MetricType::Counter,
        )?)?;
        gauge(
            encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            p.resident_bytes as i64,
        )?;
        gauge(
            encoder,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            p.virtual_bytes as i64,
        )?;
        gauge(
            encoder,
            "process_open_fds",
            "Number of open file descriptors.",
            p.open_fds as i64,
        )?;
        gauge(
            encoder,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            p.max_fds as i64,
        )
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        self.encode_process(&mut encoder)?;
        self.encode_core_counters(&mut encoder)?;
        self.encode_labelled(&mut encoder)?;
        self.encode_listeners(&mut encoder)?;
        self.encode_cores(&mut encoder)?;
        self.encode_bridges(&mut encoder)?;
        self.encode_cluster(&mut encoder)?;
        self.encode_latency(&mut encoder)
    }
}

/// One sample of `column` per row, labelled `key` = the row's name.
fn encode_column<T>(
    encoder: &mut DescriptorEncoder,
    column: &Column<T>,
    key: &str,
    rows: &[(String, &T)],
) -> std::fmt::Result {
    let mut family =
        encoder.encode_descriptor(column.name, help(column.help), None, column.kind)?;
    for (name, row) in rows {
        let labels = [(key, name.as_str())];
        let sample = family.encode_family(&labels)?;
        let value = (column.get)(row);
        match column.kind {
            MetricType::Counter => ConstCounter::new(value).encode(sample)?,
            _ => ConstGauge::new(value as i64).encode(sample)?,
        }
    }
    Ok(())
}

/// One family over the bridges with a second label (`key`), its values
/// from `values`.
fn bridge_family(
    encoder: &mut DescriptorEncoder,
    bridges: &[BridgeScrape],
    (name, text, kind): (&str, &str, MetricType),
    key: &str,
    values: impl Fn(&BridgeScrape) -> Vec<(&'static str, u64)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, text, None, kind)?;
    for b in bridges {
        for (label, value) in values(b) {
            let labels = [("bridge", b.name.as_str()), (key, label)];
            let sample = family.encode_family(&labels)?;
            match kind {
                MetricType::Counter => ConstCounter::new(value).encode(sample)?,
                _ => ConstGauge::new(value as i64).encode(sample)?,
            }
        }
    }
    Ok(())
}

/// Doc comments come with their leading spaces.
fn help(text: &str) -> &str {
    text.trim()
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, text: &str, v: u64) -> std::fmt::Result {
    let sample = encoder.encode_descriptor(name, help(text), None, MetricType::Counter)?;
    ConstCounter::new(v).encode(sample)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, text: &str, v: i64) -> std::fmt::Result {
    let sample = encoder.encode_descriptor(name, help(text), None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(sample)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape() -> Scrape {
        Scrape {
            totals: Counters {
                received_qos1: 7,
                messages_received: 7,
                dropped_queue_full: 2,
                connections_current: 3,
                bytes_sent: 99,
                ..Counters::default()
            },
            cores: vec![CoreScrape {
                driver: "io_uring",
                counters: Counters::default(),
            }],
            listeners: vec![ListenerScrape {
                name: "mqtt:1883".into(),
                accepted: 4,
                refused: 1,
                open: 3,
            }],
            ..Scrape::default()
        }
    }

    #[test]
    fn families_carry_labels_and_totals() {
        let text = scrape().encode();
        for line in [
            "# TYPE ringmq_messages_received_total counter",
            "ringmq_messages_received_total{qos=\"1\"} 7",
            "ringmq_messages_dropped_total{reason=\"queue_full\"} 2",
            "ringmq_connections 3",
            "ringmq_bytes_sent_total 99",
            "ringmq_listener_connections_accepted_total{listener=\"mqtt:1883\"} 4",
            "ringmq_core_info{core=\"0\",driver=\"io_uring\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn every_counter_is_exported_once() {
        let text = scrape().encode();
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let mut names: Vec<&str> = types.iter().map(|l| l.split(' ').nth(2).unwrap()).collect();
        let all = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all, "a family is written twice");
        for field in Counters::NAMES {
            let exported = COVERED.contains(field)
                || LABELLED
                    .iter()
                    .any(|f| f.members.iter().any(|m| m.1 == *field))
                || names.iter().any(|n| n.contains(field))
                || RENAMED.iter().any(|r| r.0 == *field);
            assert!(exported, "{field} is not exported");
        }
    }

    #[test]
    fn help_texts_are_never_empty() {
        let text = scrape().encode();
        for line in text.lines().filter(|l| l.starts_with("# HELP ")) {
            let help = line.splitn(4, ' ').nth(3).unwrap_or("");
            assert!(!help.trim().is_empty() && help != ".", "empty help: {line}");
        }
    }
}
