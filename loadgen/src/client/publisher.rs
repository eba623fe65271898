//! A publisher's send schedule: which messages are due, stamped with which
//! intended time, encoded straight into the connection's outbox.

use bytes::Bytes;
use ringmq_proto::codec::{encode_publish, Properties, PublishHeader, QoS, QosPid};

use super::Conn;
use crate::context::Thread;
use crate::pacer::GRAIN_NS;
use crate::payload::Header;
use crate::scenario::Pace;
use crate::shared::Counters;
use crate::stats::Schedule;

/// Most messages one open-loop turn encodes when catching up after a stall.
const OPEN_LOOP_BATCH: u64 = 1024;
/// Messages per write in max-rate mode: big writes, yet other tasks still run.
const MAX_RATE_BATCH: u64 = 256;

pub struct Publisher {
    id: u32,
    topic: Bytes,
    payload: Vec<u8>,
    properties: Properties,
    /// Open loop: the send schedule; max rate: sends from `start_ns`. Both set
    /// when the run starts.
    schedule: Option<Schedule>,
    start_ns: u64,
    end_ns: u64,
    seq: u64,
    /// Counted in `publishers_done`.
    done: bool,
}

impl Publisher {
    pub fn new(t: &Thread, id: u32, topic: &str) -> Publisher {
        Publisher {
            id,
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            payload: vec![0; t.settings.payload_size],
            properties: Properties::default(),
            schedule: None,
            start_ns: 0,
            end_ns: 0,
            seq: 0,
            done: false,
        }
    }

    /// Counts this publisher among those that began (call once per session).
    pub fn began(&self, t: &Thread) {
        Counters::add(&t.counters().publishers_began, 1);
    }

    /// No more sends from this publisher: its schedule ran out or its
    /// session ended. Counted once, after its sends were.
    pub fn finish(&mut self, t: &Thread) {
        if !std::mem::replace(&mut self.done, true) {
            t.counters()
                .publishers_done
                .fetch_add(1, std::sync::atomic::Ordering::Release);
        }
    }

    /// Picks up the run's start once the worker has seen it.
    fn start(&mut self, t: &Thread) {
        if self.schedule.is_some() {
            return;
        }
        let Some(start) = t.start_ns() else { return };
        let offset = match t.settings.pace {
            // Spread publishers over one period so they don't all fire at once.
            Pace::OpenLoop { rate } => {
                let spread = self.id as f64 / t.plan.publishers.max(1) as f64;
                (spread * 1e9 / rate) as u64
            }
            Pace::MaxRate => 0,
        };
        let rate = match t.settings.pace {
            Pace::OpenLoop { rate } => rate,
            Pace::MaxRate => 1.0, // unused: max rate stamps the send time
        };
        self.start_ns = start + offset;
        self.schedule = Some(Schedule::new(self.start_ns, rate).with_grain(GRAIN_NS));
        self.end_ns = t.stats.borrow().window.end_ns;
    }

    /// When the writer should call [`Publisher::fill`] next; `None`: not until
    /// notified (not started, window full, or finished).
    pub fn next_due(&self, t: &Thread, conn: &Conn, now: u64) -> Option<u64> {
        let schedule = self.schedule.as_ref()?;
        if t.settings.qos != QoS::AtMostOnce && conn.inflight.borrow().is_full() {
            return None;
        }
        match t.settings.pace {
            Pace::OpenLoop { .. } => Some(schedule.due(self.seq)).filter(|&d| d < self.end_ns),
            Pace::MaxRate => Some(now.max(self.start_ns)).filter(|&n| n < self.end_ns),
        }
    }

    /// Encodes every message due by `now` (window and batch permitting).
    pub fn fill(&mut self, t: &Thread, conn: &Conn, now: u64) {
        self.start(t);
        let Some(schedule) = self.schedule else {
            return;
        };
        let batch = match t.settings.pace {
            Pace::OpenLoop { .. } => OPEN_LOOP_BATCH,
            Pace::MaxRate => MAX_RATE_BATCH,
        };
        let mut stats = t.stats.borrow_mut();
        let mut out = conn.outbox.borrow_mut();
        let mut inflight = conn.inflight.borrow_mut();
        let mut sent = 0;
        let mut exhausted = false;
        while sent < batch {
            let intended = match t.settings.pace {
                Pace::OpenLoop { .. } => schedule.due(self.seq),
                Pace::MaxRate => now,
            };
            if intended >= self.end_ns {
                exhausted = true;
                break;
            }
            if intended > now || intended < self.start_ns {
                break;
            }
            let qos_pid = match t.settings.qos {
                QoS::AtMostOnce => QosPid::AtMostOnce,
                qos => match inflight.acquire() {
                    Some(pid) => QosPid::new(qos, pid),
                    None => break,
                },
            };
            self.stamp(t.settings.run_id, intended);
            let header = PublishHeader {
                dup: false,
                qos_pid,
                retain: false,
                topic: &self.topic,
                properties: &self.properties,
            };
            encode_publish(&mut out, t.settings.protocol, &header, &self.payload);
            stats.on_sent(intended);
            self.seq += 1;
            sent += 1;
        }
        *stats.published.entry(self.id).or_default() += sent;
        let c = t.counters();
        Counters::add(&c.sent, sent);
        Counters::add(&c.expected, sent * t.plan.fanout());
        drop((stats, out, inflight));
        if exhausted {
            self.finish(t);
        }
    }

    fn stamp(&mut self, run_id: u32, intended_ns: u64) {
        let header = Header {
            run_id,
            publisher: self.id,
            seq: self.seq,
            intended_ns,
        };
        header.write(&mut self.payload);
    }
}
