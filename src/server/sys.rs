//! `$SYS/broker/...` topics, named as Mosquitto names them, published retained by
//! core 0 every `sys_interval`.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::context::Ctx;
use crate::codec::QoS;
use crate::message::Message;
use crate::metrics::{self, Counters};
use crate::topic::TopicName;

pub struct SysPublisher {
    interval_ms: u64,
    next_at: u64,
}

impl SysPublisher {
    pub fn new(ctx: &Ctx) -> SysPublisher {
        let interval_ms = ctx.shared.config.sys_interval.as_millis() as u64;
        SysPublisher {
            interval_ms: if ctx.id == 0 { interval_ms } else { 0 },
            next_at: 0,
        }
    }

    pub fn maybe_publish(&mut self, ctx: &Rc<Ctx>, now: u64) {
        if self.interval_ms == 0 || now < self.next_at {
            return;
        }
        self.next_at = now + self.interval_ms;
        let totals = metrics::total(&ctx.shared.counters);
        let uptime = ctx.shared.started.elapsed().as_secs();
        for (topic, value) in sys_values(&totals, uptime, &ctx.shared) {
            let Ok(topic) = TopicName::new(Bytes::from(topic), 16) else {
                continue;
            };
            let msg = Message::new(topic, Bytes::from(value), QoS::AtMostOnce, true);
            ctx.core.borrow_mut().route(msg.shared(), now);
        }
        ctx.apply_effects();
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
    v
}
