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
}

impl SysPublisher {
    pub fn new(ctx: &Ctx) -> SysPublisher {
        let interval = ctx.shared.config.sys_interval;
        SysPublisher {
            interval: (ctx.id == 0 && !interval.is_zero()).then_some(interval),
            next_at: Time::ZERO,
        }
    }

    pub fn maybe_publish(&mut self, ctx: &Rc<Ctx>, now: Time) {
        let Some(interval) = self.interval.filter(|_| now >= self.next_at) else {
            return;
        };
        self.next_at = now + interval;
        let totals = metrics::total(&ctx.shared.counters);
        let uptime = ctx.shared.started.elapsed().as_secs();
        let values = sys_values(&totals, uptime, &ctx.shared);
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

fn sys_values(c: &Counters, uptime: u64, shared: &super::Shared) -> Vec<(String, String)> {
    let mut v = vec![
        (
            "$SYS/broker/version".into(),
            format!("ringmq {}", env!("CARGO_PKG_VERSION")),
        ),
        ("$SYS/broker/uptime".into(), format!("{uptime} seconds")),
        (
            "$SYS/broker/clients/connected".into(),
            shared.connections.load(Ordering::Relaxed).to_string(),
        ),
        (
            "$SYS/broker/clients/total".into(),
            c.sessions_current.to_string(),
        ),
        (
            "$SYS/broker/messages/received".into(),
            c.messages_received.to_string(),
        ),
        (
            "$SYS/broker/messages/sent".into(),
            c.messages_sent.to_string(),
        ),
        (
            "$SYS/broker/bytes/received".into(),
            c.bytes_received.to_string(),
        ),
        ("$SYS/broker/bytes/sent".into(), c.bytes_sent.to_string()),
        (
            "$SYS/broker/subscriptions/count".into(),
            c.subscriptions_current.to_string(),
        ),
    ];
    for (name, value) in c.fields() {
        v.push((format!("$SYS/broker/ringmq/{name}"), value.to_string()));
    }
    for l in &shared.listeners {
        let name = format!("{}:{}", l.config.scheme(), l.config.port);
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
