//! Slowing down password guessing: an address whose CONNECTs keep failing to
//! authenticate waits longer and longer before its next answer, so a password
//! cannot be tried at line rate. One table for the whole broker (a guesser's
//! connections land on every core), touched only by CONNECTs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures an address may have before it is slowed down.
const FREE_FAILURES: u32 = 3;
/// Half the first delay; it doubles with each further failure.
const FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest delay.
const MAX_DELAY: Duration = Duration::from_secs(10);
/// An address quiet for this long starts afresh.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Addresses remembered at most: the table never grows past this.
const MAX_ADDRESSES: usize = 65_536;

#[derive(Clone, Copy, Debug)]
struct Record {
    failures: u32,
    last: Instant,
}

/// Failed authentications per address.
#[derive(Debug, Default)]
pub struct Throttle {
    table: Mutex<HashMap<IpAddr, Record>>,
    /// Whether the table has any entry: CONNECTs skip the lock while none failed.
    any: AtomicBool,
}

impl Throttle {
    /// How long to wait before answering a CONNECT from `addr`.
    pub fn delay(&self, addr: IpAddr, now: Instant) -> Duration {
        if !self.any.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        match table.get(&addr) {
            Some(r) if now.saturating_duration_since(r.last) < FORGET_AFTER => {
                delay_after(r.failures)
            }
            _ => Duration::ZERO,
        }
    }

    /// `addr` presented bad credentials.
    pub fn failed(&self, addr: IpAddr, now: Instant) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if table.len() >= MAX_ADDRESSES && !table.contains_key(&addr) {
            table.retain(|_, r| now.saturating_duration_since(r.last) < FORGET_AFTER);
            if table.len() >= MAX_ADDRESSES {
                // Full of live guessers: forget one to make room, never grow.
                let any = table.keys().next().copied();
                any.map(|k| table.remove(&k));
            }
        }
        let r = table.entry(addr).or_insert(Record {
            failures: 0,
            last: now,
        });
        if now.saturating_duration_since(r.last) >= FORGET_AFTER {
            r.failures = 0;
        }
        r.failures = r.failures.saturating_add(1);
        r.last = now;
        self.any.store(true, Ordering::Relaxed);
    }

    /// `addr` authenticated: its failures are forgiven.
    pub fn succeeded(&self, addr: IpAddr) {
        if !self.any.load(Ordering::Relaxed) {
            return;
        }
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.remove(&addr);
        self.any.store(!table.is_empty(), Ordering::Relaxed);
    }
}

/// The delay after `failures` consecutive failures: none for the first few,
/// then 500 ms doubling up to 10 s.
fn delay_after(failures: u32) -> Duration {
    let extra = failures.saturating_sub(FREE_FAILURES);
    if extra == 0 {
        return Duration::ZERO;
    }
    FIRST_DELAY
        .saturating_mul(1u32 << extra.min(16))
        .min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn delay_grows_with_failures_and_is_capped() {
        assert_eq!(delay_after(0), Duration::ZERO);
        assert_eq!(delay_after(3), Duration::ZERO);
        assert_eq!(delay_after(4), Duration::from_millis(500));
        assert_eq!(delay_after(5), Duration::from_secs(1));
        assert_eq!(delay_after(40), MAX_DELAY);
        assert_eq!(delay_after(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn only_the_failing_address_waits_and_success_forgives() {
        let t = Throttle::default();
        let now = Instant::now();
        for _ in 0..5 {
            t.failed(A, now);
        }
        assert_eq!(t.delay(A, now), Duration::from_secs(1));
        assert_eq!(t.delay(B, now), Duration::ZERO);
        t.succeeded(A);
        assert_eq!(t.delay(A, now), Duration::ZERO);
        assert!(!t.any.load(Ordering::Relaxed));
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_while() {
        let t = Throttle::default();
        let now = Instant::now();
        for _ in 0..6 {
            t.failed(A, now);
        }
        let later = now + FORGET_AFTER;
        assert_eq!(t.delay(A, later), Duration::ZERO);
        t.failed(A, later);
        assert_eq!(t.delay(A, later), Duration::ZERO, "counting starts afresh");
    }

    #[test]
    fn table_never_grows_past_its_cap() {
        let t = Throttle::default();
        let now = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 + 10) {
            t.failed(IpAddr::V4(i.into()), now);
        }
        assert_eq!(t.table.lock().unwrap().len(), MAX_ADDRESSES);
    }
}
