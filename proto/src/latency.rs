//! How long deliveries take inside the broker: from the PUBLISH read off its
//! publisher's socket to the write of the delivery to the subscriber's socket.
//!
//! One delivery in [`SAMPLE_EVERY`] is measured ([`Sampler`]), so the message
//! path pays a countdown per delivery and a map entry per sample. The times
//! go into a fixed-bucket histogram ([`Latency`]), the form a Prometheus
//! histogram takes, which adds up across cores by adding counts.

use std::collections::HashMap;
use std::time::Duration;

use crate::time::Time;

/// One delivery in this many is measured.
pub const SAMPLE_EVERY: u32 = 16;

/// Bucket upper bounds in microseconds (a last, unbounded bucket follows).
pub const BOUNDS_US: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Buckets, one more than [`BOUNDS_US`] (the last counts what is above them all).
pub const BUCKETS: usize = BOUNDS_US.len() + 1;

/// A latency histogram: counts per bucket (not cumulative), the sum and the
/// largest value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    pub counts: [u64; BUCKETS],
    pub sum_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub fn record(&mut self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_US.partition_point(|&bound| bound < us);
        self.counts[bucket] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.max_us = self.max_us.max(us);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn add(&mut self, other: &Latency) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        self.max_us = self.max_us.max(other.max_us);
    }

    /// The `q` quantile (0..=1) as the upper bound of the bucket it falls in,
    /// never above the largest value seen; `None` before any sample.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let bound = BOUNDS_US.get(i).copied().unwrap_or(u64::MAX);
                return Some(bound.min(self.max_us));
            }
        }
        Some(self.max_us)
    }
}

/// Picks the deliveries to measure and remembers, per session, when the
/// first picked one still waiting in its output buffer was received.
#[derive(Debug)]
pub struct Sampler<K> {
    countdown: u32,
    pending: HashMap<K, Time>,
}

impl<K> Default for Sampler<K> {
    fn default() -> Self {
        Sampler {
            countdown: SAMPLE_EVERY,
            pending: HashMap::new(),
        }
    }
}

/// A sample older than this is dropped (its session never wrote it: it
/// disconnected, or its id was reused).
const STALE: Duration = Duration::from_secs(60);

impl<K: std::hash::Hash + Eq + Copy> Sampler<K> {
    /// A delivery of a message received at `received_at` went into `key`'s
    /// output buffer.
    pub fn delivered(&mut self, key: K, received_at: Time) {
        self.countdown -= 1;
        if self.countdown > 0 {
            return;
        }
        self.countdown = SAMPLE_EVERY;
        if received_at != Time::ZERO {
            self.pending.entry(key).or_insert(received_at);
        }
    }

    /// `key`'s output buffer is being written: the sample it carries, if any.
    pub fn taken(&mut self, key: K) -> Option<Time> {
        match self.pending.is_empty() {
            true => None,
            false => self.pending.remove(&key),
        }
    }

    /// Forgets samples whose buffer was never written.
    pub fn forget_stale(&mut self, now: Time) {
        self.pending.retain(|_, at| now.since(*at) < STALE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_their_bucket_and_quantiles_are_bucket_bounds() {
        let mut l = Latency::default();
        for us in [40, 90, 90, 400, 3_000] {
            l.record(Duration::from_micros(us));
        }
        assert_eq!(l.count(), 5);
        assert_eq!(l.counts[0], 1, "40 us <= 50 us");
        assert_eq!(l.counts[1], 2, "90 us <= 100 us");
        assert_eq!(l.quantile_us(0.5), Some(100));
        assert_eq!(l.quantile_us(0.99), Some(3_000), "capped at the max seen");
        assert_eq!(l.max_us, 3_000);
        assert_eq!(l.sum_us, 3_620);
        assert_eq!(Latency::default().quantile_us(0.5), None);
        l.record(Duration::from_secs(60));
        assert_eq!(l.counts[BUCKETS - 1], 1, "above every bound");
    }

    #[test]
    fn histograms_add_up() {
        let (mut a, mut b) = (Latency::default(), Latency::default());
        a.record(Duration::from_micros(10));
        b.record(Duration::from_micros(700));
        a.add(&b);
        assert_eq!(a.count(), 2);
        assert_eq!(a.max_us, 700);
    }

    #[test]
    fn one_delivery_in_sample_every_is_kept_until_written() {
        let mut s = Sampler::default();
        let at = Time::from_millis(5);
        for _ in 0..SAMPLE_EVERY - 1 {
            s.delivered(1u32, at);
        }
        assert_eq!(s.taken(1), None, "not picked yet");
        s.delivered(1, at);
        assert_eq!(s.taken(1), Some(at));
        assert_eq!(s.taken(1), None, "taken once");
        for _ in 0..SAMPLE_EVERY {
            s.delivered(2, Time::ZERO);
        }
        assert_eq!(s.taken(2), None, "no receive time, no sample");
    }

    #[test]
    fn stale_samples_are_forgotten() {
        let mut s = Sampler::default();
        for _ in 0..SAMPLE_EVERY {
            s.delivered(1u32, Time::from_millis(1));
        }
        s.forget_stale(Time::from_millis(1) + STALE);
        assert_eq!(s.taken(1), None);
    }
}
