//! One clock for every thread: nanoseconds since a base `Instant` captured
//! before the workers start. Publishers stamp intended send times with it and
//! subscribers (possibly on another thread) subtract, so both must agree.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            base: Instant::now(),
        }
    }

    /// Nanoseconds since the base (std's `Instant` is CLOCK_MONOTONIC on Linux).
    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    pub fn instant(&self, ns: u64) -> Instant {
        self.base + Duration::from_nanos(ns)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}
