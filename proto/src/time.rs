//! The broker's clock as the pure core sees it: a point in time is passed in,
//! never read here.

use std::ops::Add;
use std::time::Duration;

/// A point on the broker's monotonic clock, in microseconds since the broker
/// started (fine enough to measure a delivery's latency). Every core uses the
/// same base, so a deadline carried by a message (a 5.0 expiry) means the
/// same on every core.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(u64);

impl Time {
    /// The broker's start.
    pub const ZERO: Time = Time(0);

    pub const fn from_millis(millis: u64) -> Time {
        Time(millis.saturating_mul(1000))
    }

    pub const fn from_micros(micros: u64) -> Time {
        Time(micros)
    }

    /// Whole milliseconds since the start.
    pub const fn as_millis(self) -> u64 {
        self.0 / 1000
    }

    /// How long after `earlier` this is; zero if it is not later.
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }

    /// How long until `later`; zero if it has passed.
    pub fn until(self, later: Time) -> Duration {
        later.since(self)
    }

    /// `secs` seconds from now (protocol intervals are whole seconds).
    pub fn after_secs(self, secs: u32) -> Time {
        self + Duration::from_secs(u64::from(secs))
    }
}

impl Add<Duration> for Time {
    type Output = Time;

    /// Saturates instead of overflowing: "never" stays far in the future.
    fn add(self, d: Duration) -> Time {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(micros))
    }
}

/// How long a connection may stay silent before the broker closes it: one and
/// a half times its keep-alive [MQTT-3.1.2-24]. Zero keep-alive: no limit.
pub fn keep_alive_grace(keep_alive_secs: u16) -> Option<Duration> {
    (keep_alive_secs > 0).then(|| Duration::from_millis(u64::from(keep_alive_secs) * 1500))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_and_measures() {
        let t = Time::from_millis(1_000);
        assert_eq!(t.after_secs(2), Time::from_millis(3_000));
        assert_eq!(t.since(Time::from_millis(400)), Duration::from_millis(600));
        assert_eq!(Time::ZERO.since(t), Duration::ZERO);
        assert_eq!(
            t.until(Time::from_millis(1_500)),
            Duration::from_millis(500)
        );
        assert_eq!(t + Duration::MAX, Time::from_millis(u64::MAX));
        let fine = Time::from_micros(1_000_250);
        assert_eq!(fine.since(t), Duration::from_micros(250));
        assert_eq!(fine.as_millis(), 1_000);
    }

    #[test]
    fn keep_alive_grace_is_one_and_a_half_times() {
        assert_eq!(keep_alive_grace(0), None);
        assert_eq!(keep_alive_grace(10), Some(Duration::from_secs(15)));
        assert_eq!(keep_alive_grace(1), Some(Duration::from_millis(1_500)));
    }
}
