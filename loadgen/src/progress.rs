//! The main thread's view of a running test: waits for phase conditions while
//! printing one progress line per second on stderr.

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::procfs::Probe;
use crate::shared::{Shared, Snapshot};
use crate::stats::{merge_histogram, new_histogram};

const POLL: Duration = Duration::from_millis(5);

pub struct Monitor<'a> {
    shared: &'a Shared,
    rx: Receiver<Histogram<u64>>,
    started: Instant,
    last: Snapshot,
    last_at: Instant,
    interval: Histogram<u64>,
    target_clients: usize,
    enabled: bool,
    probe: Option<Probe>,
    /// Highest broker RSS seen by the once-a-second samples.
    pub peak_rss_kb: Option<u64>,
}

impl<'a> Monitor<'a> {
    pub fn new(
        shared: &'a Shared,
        rx: Receiver<Histogram<u64>>,
        target_clients: usize,
        enabled: bool,
        probe: Option<Probe>,
    ) -> Monitor<'a> {
        let now = Instant::now();
        Monitor {
            shared,
            rx,
            started: now,
            last: Snapshot::default(),
            last_at: now,
            interval: new_histogram(),
            target_clients,
            enabled,
            probe,
            peak_rss_kb: None,
        }
    }

    /// Returns `true` once `done` holds, `false` if `deadline` passes first.
    pub fn wait_until(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&Snapshot) -> bool,
    ) -> bool {
        loop {
            let snap = self.shared.snapshot();
            if done(&snap) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            if now - self.last_at >= Duration::from_secs(1) {
                self.tick(snap, now);
            }
            std::thread::sleep(POLL.min(deadline - now));
        }
    }

    /// Waits out `deadline` (progress lines keep coming).
    pub fn sleep_until(&mut self, deadline: Instant) {
        self.wait_until(deadline, |_| false);
    }

    fn tick(&mut self, snap: Snapshot, now: Instant) {
        while let Ok(h) = self.rx.try_recv() {
            merge_histogram(&mut self.interval, &h);
        }
        self.sample_rss();
        if self.enabled {
            let secs = (now - self.last_at).as_secs_f64();
            let line = Line {
                elapsed_s: (now - self.started).as_secs_f64(),
                connected: snap.connected(),
                target: self.target_clients,
                pub_rate: (snap.sent - self.last.sent) as f64 / secs,
                recv_rate: (snap.received - self.last.received) as f64 / secs,
                errors: snap.errors + snap.connect_failed,
                p50_ms: quantile_ms(&self.interval, 0.5),
                p99_ms: quantile_ms(&self.interval, 0.99),
            };
            eprintln!("{}", line.format());
        }
        self.interval.reset();
        self.last = snap;
        self.last_at = now;
    }

    fn sample_rss(&mut self) {
        if let Some(mem) = self.probe.and_then(|p| p.memory().ok()) {
            self.peak_rss_kb = Some(self.peak_rss_kb.unwrap_or(0).max(mem.rss_kb));
        }
    }
}

fn quantile_ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1e6)
}

/// One progress line's figures.
pub struct Line {
    pub elapsed_s: f64,
    pub connected: u64,
    pub target: usize,
    pub pub_rate: f64,
    pub recv_rate: f64,
    pub errors: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Line {
    pub fn format(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}ms"));
        format!(
            "[{:>5.1}s] conn {}/{}  pub {:.0}/s  recv {:.0}/s  err {}  p50 {}  p99 {}",
            self.elapsed_s,
            self.connected,
            self.target,
            self.pub_rate,
            self.recv_rate,
            self.errors,
            ms(self.p50_ms),
            ms(self.p99_ms),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_reads_well() {
        let line = Line {
            elapsed_s: 3.0,
            connected: 100,
            target: 100,
            pub_rate: 50_000.4,
            recv_rate: 49_999.6,
            errors: 0,
            p50_ms: Some(0.0526),
            p99_ms: None,
        };
        assert_eq!(
            line.format(),
            "[  3.0s] conn 100/100  pub 50000/s  recv 50000/s  err 0  p50 0.053ms  p99 -"
        );
    }
}
