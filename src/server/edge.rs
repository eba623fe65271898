//! Admission at the edge, decided when a connection is accepted: how many
//! connections one IP address may hold open (`max_connections_per_ip`, all
//! cores together) and how many new connections a listener takes per second
//! (`max_connection_rate`, each core its share, no shared state). A refused
//! connection still gets its CONNECT read and a CONNACK that says why, so a
//! well-behaved client backs off instead of retrying blindly; no password is
//! checked for it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Why a connection was refused at the edge (the CONNACK's reason string).
pub const RATE_RULE: &str = "max_connection_rate reached";
pub const PER_IP_RULE: &str = "max_connections_per_ip reached";

/// Shards of the per-address counts: a connect or a close locks one.
const SHARDS: usize = 16;

/// Open connections per IP address, against a limit (0: none, nothing
/// counted). Touched at connect and close only, never per message.
#[derive(Debug)]
pub struct PerIp {
    limit: usize,
    shards: Box<[Mutex<HashMap<IpAddr, usize>>]>,
}

impl PerIp {
    pub fn new(limit: usize) -> PerIp {
        PerIp {
            limit,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.limit > 0
    }

    fn shard(&self, ip: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        use std::hash::{BuildHasher, RandomState};
        static SEED: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
        let h = SEED.get_or_init(RandomState::new).hash_one(ip) as usize;
        self.shards[h % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one more connection from `ip`, unless it already has `limit`
    /// open (then nothing is counted and the answer is false).
    pub fn claim(&self, ip: IpAddr) -> bool {
        let mut shard = self.shard(ip);
        let open = shard.entry(ip).or_default();
        if *open >= self.limit {
            return false;
        }
        *open += 1;
        true
    }

    /// Counts a connection whatever the limit: one that was admitted
    /// already, moving to the core that owns its client id.
    pub fn count(&self, ip: IpAddr) {
        *self.shard(ip).entry(ip).or_default() += 1;
    }

    /// A counted connection closed.
    pub fn release(&self, ip: IpAddr) {
        let mut shard = self.shard(ip);
        if let Some(open) = shard.get_mut(&ip) {
            *open -= 1;
            if *open == 0 {
                shard.remove(&ip);
            }
        }
    }
}

/// A token bucket: `per_second` new connections, bursts of up to a second's
/// worth (at least one).
#[derive(Debug)]
pub struct RateLimit {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    pub fn new(per_second: f64, now: Instant) -> RateLimit {
        RateLimit {
            per_second,
            tokens: per_second.max(1.0),
            last: now,
        }
    }

    /// Takes a token if one is there.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second.max(1.0));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn per_ip_counts_up_to_the_limit_and_releases() {
        let per_ip = PerIp::new(2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        assert!(per_ip.claim(a) && per_ip.claim(a));
        assert!(!per_ip.claim(a), "a third from the same address");
        assert!(per_ip.claim(b), "another address has its own count");
        per_ip.release(a);
        assert!(per_ip.claim(a), "room again after a close");
        per_ip.count(a);
        assert!(!per_ip.claim(a));
        for _ in 0..3 {
            per_ip.release(a);
        }
        assert!(per_ip.claim(a) && per_ip.claim(a));
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_refills_with_time() {
        let t0 = Instant::now();
        let mut rate = RateLimit::new(10.0, t0);
        assert_eq!((0..20).filter(|_| rate.allow(t0)).count(), 10);
        assert!(!rate.allow(t0 + Duration::from_millis(50)));
        assert!(rate.allow(t0 + Duration::from_millis(150)));
        let mut slow = RateLimit::new(0.5, t0);
        assert!(slow.allow(t0), "a rate under one still lets one through");
        assert!(!slow.allow(t0 + Duration::from_secs(1)));
        assert!(slow.allow(t0 + Duration::from_secs(3)));
    }
}
