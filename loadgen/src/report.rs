//! What a run reports: the [`Summary`] (also the JSON), the side-by-side
//! table on stdout, and the HdrHistogram percentile-distribution text.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::machine::Machine;
use crate::runner::{BrokerUsage, RunResult};
use crate::scenario::{Pace, Plan, Settings, Target};
use crate::stats::Percentiles;
use crate::transport::TransportInfo;

/// The run's configuration as the JSON records it.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub scenario: &'static str,
    /// How the clients reach the broker: TCP, TLS, WebSocket or wss.
    pub transport: TransportInfo,
    pub protocol_version: u8,
    pub qos: u8,
    pub payload_bytes: usize,
    pub pace: Pace,
    pub inflight: u16,
    pub publishers: u32,
    pub subscribers: u32,
    pub clients: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub threads: usize,
    pub connect_rate: f64,
    pub keepalive_s: u16,
    pub clean: bool,
    /// "io_uring timerfd" (µs-precise send schedule) or "monoio 1 ms" (epoll fallback).
    pub timer: &'static str,
}

impl Config {
    pub fn new(s: &Settings, plan: &Plan) -> Config {
        Config {
            scenario: s.scenario.name(),
            transport: s.transport.info(),
            protocol_version: s.protocol.level(),
            qos: s.qos as u8,
            payload_bytes: s.payload_size,
            pace: s.pace,
            inflight: s.inflight,
            publishers: plan.publishers,
            subscribers: plan.subscribers,
            clients: plan.storm_concurrency.unwrap_or(plan.clients.len()),
            duration_s: s.duration.as_secs_f64(),
            warmup_s: s.warmup.as_secs_f64(),
            threads: s.threads,
            connect_rate: s.connect_rate,
            keepalive_s: s.keepalive,
            clean: s.clean,
            timer: if monoio::utils::detect_uring() {
                "io_uring timerfd"
            } else {
                "monoio 1 ms"
            },
        }
    }

    /// A chart's title: the scenario, its clients, QoS and pace, and `what`.
    pub fn chart_title(&self, what: &str) -> String {
        if self.publishers + self.subscribers == 0 {
            return format!(
                "{}: {} clients at {}/s, {what}",
                self.scenario, self.clients, self.connect_rate
            );
        }
        let pace = match self.pace {
            Pace::OpenLoop { rate } => format!("{rate} msg/s each"),
            Pace::MaxRate => "max rate".to_string(),
        };
        format!(
            "{} {}->{}, QoS {}, {pace}: {what}",
            self.scenario, self.publishers, self.subscribers, self.qos
        )
    }

    /// One line saying what was measured.
    pub fn describe(&self) -> String {
        if self.publishers + self.subscribers == 0 {
            let what = if self.scenario == "storm" {
                "in flight at most"
            } else {
                "clients"
            };
            return format!(
                "{}: {} {what}, {}/s connect rate, {} s measured after {} s warm-up, MQTT v{} over {}, {} thread(s)",
                self.scenario,
                self.clients,
                self.connect_rate,
                self.duration_s,
                self.warmup_s,
                self.protocol_version,
                self.transport.kind,
                self.threads
            );
        }
        let pace = match self.pace {
            Pace::OpenLoop { rate } => format!("{rate} msg/s per publisher (open loop)"),
            Pace::MaxRate => "max rate (closed loop)".to_string(),
        };
        format!(
            "{}: {} pub -> {} sub, QoS {}, {} B, {pace}, {} s measured after {} s warm-up, MQTT v{} over {}, {} thread(s)",
            self.scenario,
            self.publishers,
            self.subscribers,
            self.qos,
            self.payload_bytes,
            self.duration_s,
            self.warmup_s,
            self.protocol_version,
            self.transport.kind,
            self.threads
        )
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub sent: u64,
    pub acked: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Deliveries to a subscriber that should not have had them.
    pub unexpected: u64,
    /// Publishes that were not from this run.
    pub foreign: u64,
    pub connects_ok: u64,
    pub connects_failed: u64,
    pub connected: u64,
    pub errors: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Throughput {
    pub sent_per_s: f64,
    pub received_per_s: f64,
    pub connects_per_s: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Broker {
    pub cpu_seconds: Option<f64>,
    /// CPU busy share of one core over the window.
    pub cpu_percent: Option<f64>,
    pub cpu_s_per_million_msgs: Option<f64>,
    pub peak_rss_kb: Option<u64>,
    pub memory_per_connection_bytes: Option<f64>,
    pub usage: BrokerUsage,
}

/// One broker's results: what the table shows and the JSON holds.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// When the report was made (RFC 3339, UTC).
    pub generated_at: String,
    pub loadgen_version: &'static str,
    pub target: Target,
    pub config: Config,
    pub machine: Machine,
    pub runs: usize,
    pub window_s: f64,
    pub throughput: Throughput,
    pub latency_ms: Option<Percentiles>,
    pub connect_ms: Option<Percentiles>,
    pub totals: Totals,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker: Option<Broker>,
    /// This generator's CPU use over the window, in % of its threads' cores:
    /// near 100 means the generator, not the broker, set the pace.
    pub generator_cpu_percent: Option<f64>,
}

impl Summary {
    pub fn new(r: &RunResult, config: &Config, machine: &Machine) -> Summary {
        let per_s = |n: u64| {
            if r.window_s > 0.0 {
                n as f64 / r.window_s
            } else {
                0.0
            }
        };
        let delivered = r.stats.received_in_window;
        Summary {
            generated_at: now_rfc3339(),
            loadgen_version: env!("CARGO_PKG_VERSION"),
            target: r.target.clone(),
            config: config.clone(),
            machine: machine.clone(),
            runs: r.runs,
            window_s: r.window_s,
            throughput: Throughput {
                sent_per_s: per_s(r.stats.sent_in_window),
                received_per_s: per_s(delivered),
                connects_per_s: per_s(r.stats.connects_in_window),
            },
            latency_ms: Percentiles::of(&r.stats.latency),
            connect_ms: Percentiles::of(&r.stats.connect),
            totals: totals(r),
            broker: r.target.pid.map(|_| broker(r, delivered)),
            generator_cpu_percent: r
                .generator_cpu_seconds
                .filter(|_| r.window_s > 0.0)
                .map(|c| c / r.window_s / config.threads as f64 * 100.0),
        }
    }
}

fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn totals(r: &RunResult) -> Totals {
    Totals {
        sent: r.totals.sent,
        acked: r.totals.acked,
        received: r.totals.received,
        lost: r.delivery.lost,
        duplicated: r.delivery.duplicated,
        out_of_order: r.delivery.out_of_order,
        unexpected: r.delivery.unexpected,
        foreign: r.totals.foreign,
        connects_ok: r.totals.connect_ok,
        connects_failed: r.totals.connect_failed,
        connected: r.connected,
        errors: r.totals.errors,
    }
}

fn broker(r: &RunResult, delivered: u64) -> Broker {
    let cpu = r.broker.cpu_seconds;
    Broker {
        cpu_seconds: cpu,
        cpu_percent: cpu
            .filter(|_| r.window_s > 0.0)
            .map(|c| c / r.window_s * 100.0),
        cpu_s_per_million_msgs: cpu
            .filter(|_| delivered > 0)
            .map(|c| c / (delivered as f64 / 1e6)),
        peak_rss_kb: r.broker.peak_rss_kb,
        memory_per_connection_bytes: r.broker.bytes_per_connection(r.connected),
        usage: r.broker.clone(),
    }
}

/// One row of the table: a label and how to read it from a summary.
struct Metric {
    label: &'static str,
    decimals: usize,
    get: fn(&Summary) -> Option<f64>,
}

macro_rules! metric {
    ($label:expr, $decimals:expr, |$s:ident| $e:expr) => {
        Metric {
            label: $label,
            decimals: $decimals,
            get: |$s: &Summary| $e,
        }
    };
}

fn count(n: u64) -> Option<f64> {
    Some(n as f64)
}

/// Shown only when some broker has a non-zero value.
fn nonzero(n: u64) -> Option<f64> {
    (n > 0).then_some(n as f64)
}

fn messaging(s: &Summary) -> bool {
    s.config.publishers > 0
}

fn metrics() -> Vec<Metric> {
    vec![
        metric!("sent/s", 0, |s| messaging(s)
            .then_some(s.throughput.sent_per_s)),
        metric!("received/s", 0, |s| messaging(s)
            .then_some(s.throughput.received_per_s)),
        metric!("connects/s", 0, |s| (!messaging(s)
            && s.config.clients > 0
            && s.config.scenario == "storm")
            .then_some(s.throughput.connects_per_s)),
        metric!("latency p50 (ms)", 3, |s| s
            .latency_ms
            .as_ref()
            .map(|p| p.p50)),
        metric!("latency p90 (ms)", 3, |s| s
            .latency_ms
            .as_ref()
            .map(|p| p.p90)),
        metric!("latency p99 (ms)", 3, |s| s
            .latency_ms
            .as_ref()
            .map(|p| p.p99)),
        metric!("latency p99.9 (ms)", 3, |s| s
            .latency_ms
            .as_ref()
            .map(|p| p.p99_9)),
        metric!("latency p99.99 (ms)", 3, |s| s
            .latency_ms
            .as_ref()
            .map(|p| p.p99_99)),
        metric!("latency max (ms)", 3, |s| s
            .latency_ms
            .as_ref()
            .map(|p| p.max)),
        metric!("sent", 0, |s| messaging(s)
            .then(|| count(s.totals.sent))
            .flatten()),
        metric!("acked", 0, |s| (messaging(s) && s.config.qos > 0)
            .then_some(s.totals.acked as f64)),
        metric!("received", 0, |s| messaging(s)
            .then(|| count(s.totals.received))
            .flatten()),
        metric!("lost", 0, |s| messaging(s).then_some(s.totals.lost as f64)),
        metric!("duplicated", 0, |s| messaging(s)
            .then_some(s.totals.duplicated as f64)),
        metric!("out of order", 0, |s| messaging(s)
            .then_some(s.totals.out_of_order as f64)),
        metric!("unexpected", 0, |s| nonzero(s.totals.unexpected)),
        metric!("foreign", 0, |s| nonzero(s.totals.foreign)),
        metric!("connects ok", 0, |s| count(s.totals.connects_ok)),
        metric!("connects failed", 0, |s| count(s.totals.connects_failed)),
        metric!("connect p50 (ms)", 3, |s| s
            .connect_ms
            .as_ref()
            .map(|p| p.p50)),
        metric!("connect p99 (ms)", 3, |s| s
            .connect_ms
            .as_ref()
            .map(|p| p.p99)),
        metric!("connect max (ms)", 3, |s| s
            .connect_ms
            .as_ref()
            .map(|p| p.max)),
        metric!("errors", 0, |s| count(s.totals.errors)),
        metric!("broker CPU (% of a core)", 1, |s| s
            .broker
            .as_ref()?
            .cpu_percent),
        metric!("broker CPU s / M msgs", 3, |s| s
            .broker
            .as_ref()?
            .cpu_s_per_million_msgs
            .filter(|_| messaging(s))),
        metric!("broker peak RSS (MiB)", 1, |s| s
            .broker
            .as_ref()?
            .peak_rss_kb
            .map(|k| k as f64 / 1024.0)),
        metric!("broker bytes / connection", 0, |s| s
            .broker
            .as_ref()?
            .memory_per_connection_bytes),
        metric!("loadgen CPU (% of its cores)", 1, |s| s
            .generator_cpu_percent),
    ]
}

/// The table: one column per broker, then one ratio column per broker after
/// the first (that broker / the first).
pub fn table(summaries: &[Summary]) -> String {
    // The transport is the same for every column: the corner says it.
    let corner = match summaries.first() {
        Some(s) => format!("metric ({})", s.config.transport.kind),
        None => "metric".to_string(),
    };
    let mut header = vec![corner];
    header.extend(summaries.iter().map(|s| s.target.name.clone()));
    if let Some((first, rest)) = summaries.split_first() {
        header.extend(
            rest.iter()
                .map(|s| format!("{}/{}", s.target.name, first.target.name)),
        );
    }
    header.push("better".to_string());
    let mut rows = vec![header];
    for m in metrics() {
        let values: Vec<Option<f64>> = summaries.iter().map(|s| (m.get)(s)).collect();
        if values.iter().all(Option::is_none) {
            continue;
        }
        rows.push(row(&m, &values));
    }
    render(&rows)
}

fn row(m: &Metric, values: &[Option<f64>]) -> Vec<String> {
    let mut row = vec![m.label.to_string()];
    row.extend(values.iter().map(|v| match v {
        Some(v) => format!("{v:.*}", m.decimals),
        None => "-".to_string(),
    }));
    let first = values.first().copied().flatten();
    row.extend(values.iter().skip(1).map(|v| ratio(first, *v)));
    row.push(better(m.label).to_string());
    row
}

/// Which way is better for a row: "higher", "lower", or "" where neither
/// (the generator's own load, which only says whether it set the pace).
fn better(label: &str) -> &'static str {
    const HIGHER: [&str; 6] = [
        "sent/s",
        "received/s",
        "connects/s",
        "sent",
        "acked",
        "received",
    ];
    match label {
        l if HIGHER.contains(&l) || l == "connects ok" => "higher",
        l if l.starts_with("loadgen ") => "",
        _ => "lower",
    }
}

fn ratio(base: Option<f64>, v: Option<f64>) -> String {
    match (base, v) {
        (Some(b), Some(v)) if b != 0.0 => format!("{:.2}x", v / b),
        (Some(b), Some(v)) if b == v => "1.00x".to_string(),
        _ => "-".to_string(),
    }
}

/// Left-aligned labels, right-aligned numbers.
fn render(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width = |c: usize| {
        rows.iter()
            .filter_map(|r| r.get(c))
            .map(|s| s.len())
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..cols).map(width).collect();
    let mut out = String::new();
    for r in rows {
        for (c, cell) in r.iter().enumerate() {
            match c {
                0 => write!(out, "{cell:<w$}", w = widths[0]),
                _ => write!(out, "  {cell:>w$}", w = widths[c]),
            }
            .expect("writing to a String");
        }
        out.push('\n');
    }
    out
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// HdrHistogram's standard percentile-distribution text (as Java's
/// `outputPercentileDistribution` writes it), values in milliseconds.
pub fn hdr_text(h: &Histogram<u64>) -> String {
    const SCALE: f64 = 1e6; // ns -> ms
    let mut out = format!(
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / SCALE;
            let line = if q < 1.0 {
                format!(
                    "{value:12.3} {q:2.12} {total:10} {:14.2}\n",
                    1.0 / (1.0 - q)
                )
            } else {
                format!("{value:12.3} {q:2.12} {total:10}\n")
            };
            out.push_str(&line);
        }
    }
    let (mean, sd, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / SCALE, h.stdev() / SCALE, h.max() as f64 / SCALE)
    };
    let _ = writeln!(out, "#[Mean    = {mean:12.3}, StdDeviation   = {sd:12.3}]");
    let _ = writeln!(
        out,
        "#[Max     = {max:12.3}, Total count    = {:12}]",
        h.len()
    );
    // 3 significant digits: 2048 sub-buckets per bucket.
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        2048
    );
    out
}

pub fn write_hdr(path: &Path, h: &Histogram<u64>) -> Result<()> {
    std::fs::write(path, hdr_text(h)).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    #[test]
    fn every_row_says_which_way_is_better() {
        for m in metrics() {
            let verdict = better(m.label);
            let neutral = m.label.starts_with("loadgen ");
            assert_eq!(verdict.is_empty(), neutral, "{}", m.label);
        }
        assert_eq!(better("received/s"), "higher");
        assert_eq!(better("latency p99 (ms)"), "lower");
        assert_eq!(better("lost"), "lower");
        assert_eq!(better("broker CPU s / M msgs"), "lower");
    }

    #[test]
    fn hdr_text_has_standard_shape() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 1_000).unwrap();
        }
        let text = hdr_text(&h);
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert!(text.contains("0.500000000000"), "{text}");
        let last_value = text
            .lines()
            .rfind(|l| !l.starts_with('#') && !l.is_empty())
            .unwrap();
        assert!(
            last_value.contains("1.000000000000       1000"),
            "{last_value}"
        );
        assert!(text.contains("#[Max     =        1.000, Total count    =         1000]"));
    }

    #[test]
    fn ratios_compare_to_first() {
        assert_eq!(ratio(Some(2.0), Some(3.0)), "1.50x");
        assert_eq!(ratio(Some(0.0), Some(0.0)), "1.00x");
        assert_eq!(ratio(Some(0.0), Some(1.0)), "-");
        assert_eq!(ratio(None, Some(1.0)), "-");
    }

    #[test]
    fn render_aligns_columns() {
        let rows = vec![
            vec!["metric".into(), "a".into()],
            vec!["sent/s".into(), "12345".into()],
        ];
        assert_eq!(render(&rows), "metric      a\nsent/s  12345\n");
    }
}
