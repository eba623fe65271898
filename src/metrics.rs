//! Counters across cores. Each core bumps its own plain [`Counters`] (no
//! atomics on the message path) and publishes a snapshot to shared atomics once
//! per tick; readers sum the cores' snapshots.

use std::sync::atomic::{AtomicU64, Ordering};

pub use ringmq_proto::counters::Counters;
pub use ringmq_proto::latency::Latency;
use ringmq_proto::latency::BUCKETS;

/// The published copy of one core's [`Counters`].
#[derive(Debug)]
pub struct SharedCounters {
    values: Box<[AtomicU64]>,
    /// How many snapshots were published: a reader that saw it move knows
    /// the values it reads next are at least that recent.
    publications: AtomicU64,
}

impl Default for SharedCounters {
    fn default() -> Self {
        let values = Counters::NAMES.iter().map(|_| AtomicU64::new(0)).collect();
        SharedCounters {
            values,
            publications: AtomicU64::new(0),
        }
    }
}

impl SharedCounters {
    pub fn publish(&self, c: &Counters) {
        for (slot, value) in self.values.iter().zip(c.values()) {
            slot.store(value, Ordering::Relaxed);
        }
        self.publications.fetch_add(1, Ordering::Release);
    }

    /// Snapshots published so far (see `publications`).
    pub fn publications(&self) -> u64 {
        self.publications.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> Counters {
        let values: Vec<u64> = self
            .values
            .iter()
            .map(|v| v.load(Ordering::Relaxed))
            .collect();
        Counters::from_values(&values)
    }
}

/// The published copy of one core's delivery [`Latency`] histogram.
#[derive(Debug, Default)]
pub struct SharedLatency {
    counts: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl SharedLatency {
    pub fn publish(&self, l: &Latency) {
        for (slot, n) in self.counts.iter().zip(&l.counts) {
            slot.store(*n, Ordering::Relaxed);
        }
        self.sum_us.store(l.sum_us, Ordering::Relaxed);
        self.max_us.store(l.max_us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Latency {
        let mut l = Latency::default();
        for (n, slot) in l.counts.iter_mut().zip(&self.counts) {
            *n = slot.load(Ordering::Relaxed);
        }
        l.sum_us = self.sum_us.load(Ordering::Relaxed);
        l.max_us = self.max_us.load(Ordering::Relaxed);
        l
    }
}

/// The cores' latency histograms added up.
pub fn total_latency(cores: &[SharedLatency]) -> Latency {
    let mut sum = Latency::default();
    for c in cores {
        sum.add(&c.snapshot());
    }
    sum
}

/// Sums the published snapshots of all cores. The retained store is replicated
/// on every core, so its size is the largest replica, not the sum.
pub fn total(cores: &[SharedCounters]) -> Counters {
    let mut sum = Counters::default();
    let (mut retained, mut retained_bytes) = (0, 0);
    for c in cores {
        let snapshot = c.snapshot();
        retained = retained.max(snapshot.retained_current);
        retained_bytes = retained_bytes.max(snapshot.retained_bytes);
        sum.add(&snapshot);
    }
    sum.retained_current = retained;
    sum.retained_bytes = retained_bytes;
    sum
}

/// The counters that are not zero, as `name=value` pairs separated by
/// spaces (for the shutdown log line).
pub fn key_values(c: &Counters) -> String {
    let fields = c.fields().into_iter().filter(|(_, v)| *v != 0);
    let pairs: Vec<String> = fields.map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_counters_but_not_replicas() {
        let cores = [SharedCounters::default(), SharedCounters::default()];
        for c in &cores {
            c.publish(&Counters {
                messages_sent: 5,
                retained_current: 7,
                ..Counters::default()
            });
        }
        let t = total(&cores);
        assert_eq!(t.messages_sent, 10);
        assert_eq!(t.retained_current, 7);
        assert_eq!(cores[0].publications(), 1);
    }

    #[test]
    fn key_values_list_what_is_not_zero() {
        let c = Counters {
            messages_sent: 5,
            takeovers: 1,
            ..Counters::default()
        };
        assert_eq!(key_values(&c), "messages_sent=5 takeovers=1");
    }
}
