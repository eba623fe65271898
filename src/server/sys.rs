//! `$SYS/broker/...` topics, named as Mosquitto names them, published retained by
//! core 0 every `sys_interval`.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::context::Ctx;
use crate::codec::QoS;
use crate::message::Message;
use crate::metrics::{self, Counters};
use crate::time::Time;
use crate::topic::TopicName;

pub struct SysPublisher {
    /// `None`: this core does not publish (only core 0 does), or `$SYS` is off.
    interval: Option<Duration>,
    next_at: Time,
    loads: Loads,
}

impl SysPublisher {
    pub fn new(ctx: &Ctx) -> SysPublisher {
        let interval = ctx.shared.config.sys_interval;
        SysPublisher {
            interval: (ctx.id == 0 && !interval.is_zero()).then_some(interval),
            next_at: Time::ZERO,
            loads: Loads::default(),
        }
    }

    pub fn maybe_publish(&mut self, ctx: &Rc<Ctx>, now: Time) {
        let Some(interval) = self.interval.filter(|_| now >= self.next_at) else {
            return;
        };
        self.next_at = now + interval;
        let totals = metrics::total(&ctx.shared.counters);
        let latency = metrics::total_latency(&ctx.shared.latency);
        let uptime = ctx.shared.started.elapsed().as_secs();
        let sockets = ctx.shared.listeners.iter();
        let sockets = sockets
            .map(|l| l.stats.accepted.load(Ordering::Relaxed))
            .sum();
        self.loads.update(now, &load_inputs(&totals, sockets));
        let mut values = sys_values(&totals, uptime, &ctx.shared);
        values.extend(self.loads.values());
        values.extend(latency_values(&latency));
        ctx.with_core(|core| {
            for (topic, value) in values {
                let Ok(topic) = TopicName::new(Bytes::from(topic), 16) else {
                    continue;
                };
                let msg = Message::new(topic, Bytes::from(value), QoS::AtMostOnce, true);
                core.route(msg.shared(), now);
            }
        });
    }
}

/// Mosquitto's load figures: what `$SYS/broker/load/<NAME>/{1min,5min,15min}`
/// averages, per minute.
const LOAD_NAMES: [&str; 9] = [
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

/// The running totals behind [`LOAD_NAMES`], in that order. ringmq counts
/// PUBLISH packets only, so `messages/*` and `publish/*` are the same.
fn load_inputs(c: &Counters, sockets: u64) -> [u64; 9] {
    let dropped = c.dropped_slow_consumer
        + c.dropped_offline_qos0
        + c.dropped_queue_full
        + c.dropped_expired
        + c.dropped_too_large
        + c.dropped_shared_no_member;
    [
        c.messages_received,
        c.messages_sent,
        dropped,
        c.messages_received,
        c.messages_sent,
        c.bytes_received,
        c.bytes_sent,
        sockets,
        c.connections_total,
    ]
}

/// Per-minute rates averaged over 1, 5 and 15 minutes, decaying
/// exponentially as Mosquitto's (and a Unix load average) do.
#[derive(Default)]
struct Loads {
    last: Option<(Time, [u64; 9])>,
    averages: [[f64; 3]; 9],
}

impl Loads {
    const PERIODS_MIN: [f64; 3] = [1.0, 5.0, 15.0];

    fn update(&mut self, now: Time, totals: &[u64; 9]) {
        if let Some((at, before)) = self.last {
            let minutes = now.since(at).as_secs_f64() / 60.0;
            if minutes > 0.0 {
                for (i, averages) in self.averages.iter_mut().enumerate() {
                    let per_minute = totals[i].saturating_sub(before[i]) as f64 / minutes;
                    for (avg, period) in averages.iter_mut().zip(Self::PERIODS_MIN) {
                        let keep = (-minutes / period).exp();
                        *avg = *avg * keep + per_minute * (1.0 - keep);
                    }
                }
            }
        }
        self.last = Some((now, *totals));
    }

    fn values(&self) -> Vec<(String, String)> {
        let mut v = Vec::with_capacity(27);
        for (name, averages) in LOAD_NAMES.iter().zip(&self.averages) {
            for (avg, label) in averages.iter().zip(["1min", "5min", "15min"]) {
                v.push((
                    format!("$SYS/broker/load/{name}/{label}"),
                    format!("{avg:.2}"),
                ));
            }
        }
        v
    }
}

/// `$SYS/broker/ringmq/latency/{p50,p99,max}` in milliseconds (the upper
/// bound of the histogram bucket; max exact), over sampled deliveries since
/// start; nothing before the first sample.
fn latency_values(l: &metrics::Latency) -> Vec<(String, String)> {
    let ms = |us: u64| format!("{:.3}", us as f64 / 1000.0);
    let figures = [
        ("p50", l.quantile_us(0.5)),
        ("p99", l.quantile_us(0.99)),
        ("max", (l.count() > 0).then_some(l.max_us)),
    ];
    figures
        .into_iter()
        .filter_map(|(name, us)| Some((format!("$SYS/broker/ringmq/latency/{name}"), ms(us?))))
        .collect()
}

/// Resident and peak resident bytes, from `/proc/self/status`.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        let line = status.lines().find(|l| l.starts_with(key));
        let value = line.and_then(|l| l.split_whitespace().nth(1));
        value.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024
    };
    (kib("VmRSS:"), kib("VmHWM:"))
}

fn sys_values(c: &Counters, uptime: u64, shared: &super::Shared) -> Vec<(String, String)> {
    let connected = shared.connections.load(Ordering::Relaxed) as u64;
    let disconnected = c.sessions_current.saturating_sub(c.connections_current);
    let stored = c.retained_current + c.messages_queued + c.messages_inflight;
    let dropped = load_inputs(c, 0)[2];
    let (rss, peak_rss) = memory();
    let b = |name: &str| format!("$SYS/broker/{name}");
    let mut v = vec![
        (
            b("version"),
            format!("ringmq {}", env!("CARGO_PKG_VERSION")),
        ),
        (b("uptime"), format!("{uptime} seconds")),
        (b("clients/total"), c.sessions_current.to_string()),
        (b("clients/connected"), connected.to_string()),
        (b("clients/active"), connected.to_string()),
        (b("clients/disconnected"), disconnected.to_string()),
        (b("clients/inactive"), disconnected.to_string()),
        (
            b("clients/maximum"),
            shared.connections_peak.load(Ordering::Relaxed).to_string(),
        ),
        (b("clients/expired"), c.sessions_expired.to_string()),
        (b("messages/stored"), stored.to_string()),
        (b("messages/received"), c.messages_received.to_string()),
        (b("messages/sent"), c.messages_sent.to_string()),
        (b("store/messages/count"), stored.to_string()),
        (b("store/messages/bytes"), c.retained_bytes.to_string()),
        (
            b("subscriptions/count"),
            c.subscriptions_current.to_string(),
        ),
        (
            b("shared_subscriptions/count"),
            c.shared_subscriptions_current.to_string(),
        ),
        (b("retained messages/count"), c.retained_current.to_string()),
        (b("heap/current"), rss.to_string()),
        (b("heap/maximum"), peak_rss.to_string()),
        (b("publish/messages/dropped"), dropped.to_string()),
        (
            b("publish/messages/received"),
            c.messages_received.to_string(),
        ),
        (b("publish/messages/sent"), c.messages_sent.to_string()),
        (b("publish/bytes/received"), c.bytes_received.to_string()),
        (b("publish/bytes/sent"), c.bytes_sent.to_string()),
        (b("bytes/received"), c.bytes_received.to_string()),
        (b("bytes/sent"), c.bytes_sent.to_string()),
    ];
    for (name, value) in c.fields() {
        v.push((format!("$SYS/broker/ringmq/{name}"), value.to_string()));
    }
    for bridge in &shared.bridges {
        // Mosquitto's local connection state: 1 while the remote link is up.
        let up = bridge.up[crate::bridge::Side::Remote as usize].load(Ordering::Relaxed);
        v.push((bridge.state_topic.clone(), u8::from(up).to_string()));
    }
    for l in &shared.listeners {
        let name = l.label();
        let stats = &l.stats;
        for (what, n) in [
            ("accepted", &stats.accepted),
            ("refused", &stats.refused),
            ("open", &stats.open),
        ] {
            let topic = format!("$SYS/broker/ringmq/listeners/{name}/{what}");
            v.push((topic, n.load(Ordering::Relaxed).to_string()));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_average_per_minute_rates() {
        let mut loads = Loads::default();
        let mut totals = [0u64; 9];
        loads.update(Time::ZERO, &totals);
        // 600 messages every 10 s is 3600 a minute; after three hours every
        // average has converged to it.
        for step in 1..=1080u64 {
            totals[0] += 600;
            loads.update(Time::from_millis(step * 10_000), &totals);
        }
        for avg in loads.averages[0] {
            assert!((avg - 3600.0).abs() < 1.0, "{avg}");
        }
        assert_eq!(loads.averages[1], [0.0; 3]);
        let values = loads.values();
        assert_eq!(values.len(), 27);
        assert_eq!(values[0].0, "$SYS/broker/load/messages/received/1min");
        assert_eq!(values[0].1, "3600.00");
    }

    #[test]
    fn latency_topics_appear_after_the_first_sample() {
        let mut l = metrics::Latency::default();
        assert!(latency_values(&l).is_empty());
        l.record(Duration::from_micros(420));
        let v = latency_values(&l);
        assert_eq!(
            v[0],
            ("$SYS/broker/ringmq/latency/p50".into(), "0.420".into())
        );
        assert_eq!(
            v[2],
            ("$SYS/broker/ringmq/latency/max".into(), "0.420".into())
        );
    }
}
