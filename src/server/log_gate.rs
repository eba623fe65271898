//! Rate limits for log lines about events a flood can repeat (refused
//! connections, back-pressure), so that an overload cannot fill a disk while
//! every kind of event, and every client it happens to, still shows up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The period of every gate here.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// At most one log line per [`LOG_EVERY`] for a kind of event, with how many
/// were not logged since.
#[derive(Debug, Default)]
pub struct LogGate {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogGate {
    /// `Some(suppressed)` when this event may be logged.
    pub fn pass(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < LOG_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// A client's event is logged again at most this often.
pub const CLIENT_EVERY: Duration = Duration::from_secs(60);
/// Lines per [`LOG_EVERY`] for one kind of event, over all clients.
const LINES_PER_PERIOD: u32 = 20;
/// Clients remembered; past it the oldest memories are forgotten (at worst a
/// client is logged once more, still within [`LINES_PER_PERIOD`]).
const REMEMBERED: usize = 4096;

/// For one kind of event: a client's first is logged, then one per
/// [`CLIENT_EVERY`] for that client, and at most [`LINES_PER_PERIOD`] lines
/// per [`LOG_EVERY`] in all, with how many were not logged since.
#[derive(Debug, Default)]
pub struct ClientLogGate {
    logged: HashMap<Arc<str>, Instant>,
    period_start: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

impl ClientLogGate {
    /// `Some(suppressed)` when this event of `client` may be logged.
    pub fn pass(&mut self, client: &Arc<str>, now: Instant) -> Option<u64> {
        let recent = |at: &Instant| now.saturating_duration_since(*at) < CLIENT_EVERY;
        if self.logged.get(client).is_some_and(recent) {
            return None; // logged for this client lately: not even counted
        }
        match self.period_start {
            Some(start) if now.saturating_duration_since(start) < LOG_EVERY => {}
            _ => {
                self.period_start = Some(now);
                self.lines = 0;
            }
        }
        if self.lines >= LINES_PER_PERIOD {
            self.suppressed += 1;
            return None;
        }
        self.lines += 1;
        if self.logged.len() >= REMEMBERED {
            self.logged.retain(|_, at| recent(at));
            if self.logged.len() >= REMEMBERED {
                self.logged.clear();
            }
        }
        self.logged.insert(client.clone(), now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_gate_passes_one_event_per_period_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut gate = LogGate::default();
        assert_eq!(gate.pass(t0), Some(0));
        assert_eq!(gate.pass(t0 + Duration::from_secs(1)), None);
        assert_eq!(gate.pass(t0 + Duration::from_secs(2)), None);
        assert_eq!(gate.pass(t0 + LOG_EVERY + Duration::from_secs(1)), Some(2));
    }

    #[test]
    fn each_client_is_logged_first_then_once_per_client_period() {
        let t0 = Instant::now();
        let mut gate = ClientLogGate::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        assert_eq!(gate.pass(&a, t0), Some(0));
        assert_eq!(gate.pass(&a, t0), None, "a again at once");
        assert_eq!(gate.pass(&b, t0), Some(0), "b's first");
        assert_eq!(gate.pass(&a, t0 + Duration::from_secs(30)), None);
        assert_eq!(gate.pass(&a, t0 + CLIENT_EVERY), Some(0));
    }

    #[test]
    fn a_flood_of_clients_is_capped_per_period_and_counted() {
        let t0 = Instant::now();
        let mut gate = ClientLogGate::default();
        let clients: Vec<Arc<str>> = (0..100).map(|i| format!("c{i}").into()).collect();
        let logged = clients
            .iter()
            .filter(|c| gate.pass(c, t0).is_some())
            .count();
        assert_eq!(logged, LINES_PER_PERIOD as usize);
        let later = t0 + LOG_EVERY;
        let fresh: Arc<str> = "fresh".into();
        assert_eq!(
            gate.pass(&fresh, later),
            Some(100 - u64::from(LINES_PER_PERIOD))
        );
    }

    #[test]
    fn memory_of_clients_stays_bounded() {
        let t0 = Instant::now();
        let mut gate = ClientLogGate::default();
        for i in 0..3 * REMEMBERED {
            let at = t0 + LOG_EVERY * (i as u32 / LINES_PER_PERIOD);
            gate.pass(&format!("c{i}").into(), at);
            assert!(gate.logged.len() <= REMEMBERED);
        }
    }
}
