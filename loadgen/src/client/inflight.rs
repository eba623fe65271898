//! Packet ids of a publisher's unacknowledged QoS 1/2 messages: the window
//! that bounds how far a publisher may run ahead of the broker's acks.

use ringmq_proto::codec::Pid;

/// A fixed bitmap over the 65535 ids (8 KiB, publishers only).
pub struct Inflight {
    used: Box<[u64; 1024]>,
    count: usize,
    limit: usize,
    next: Pid,
}

impl Inflight {
    pub fn new(limit: u16) -> Inflight {
        Inflight {
            used: Box::new([0; 1024]),
            count: 0,
            limit: usize::from(limit.max(1)),
            next: Pid::MIN,
        }
    }

    /// Shrinks the window to what the broker accepts (5.0 Receive Maximum).
    pub fn limit_to(&mut self, receive_maximum: u16) {
        self.limit = self.limit.min(usize::from(receive_maximum.max(1)));
    }

    pub fn is_full(&self) -> bool {
        self.count >= self.limit
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The next free id, or `None` when the window is full.
    pub fn acquire(&mut self) -> Option<Pid> {
        if self.is_full() {
            return None;
        }
        let mut pid = self.next;
        while self.is_used(pid) {
            pid = pid.next();
        }
        self.set(pid, true);
        self.count += 1;
        self.next = pid.next();
        Some(pid)
    }

    /// `false` for an id that was not in flight (a broker acking twice).
    pub fn release(&mut self, pid: Pid) -> bool {
        if !self.is_used(pid) {
            return false;
        }
        self.set(pid, false);
        self.count -= 1;
        true
    }

    fn is_used(&self, pid: Pid) -> bool {
        let i = usize::from(pid.get());
        self.used[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, pid: Pid, used: bool) {
        let i = usize::from(pid.get());
        if used {
            self.used[i / 64] |= 1 << (i % 64);
        } else {
            self.used[i / 64] &= !(1 << (i % 64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_bounds_outstanding_ids() {
        let mut w = Inflight::new(2);
        let a = w.acquire().unwrap();
        let b = w.acquire().unwrap();
        assert_ne!(a, b);
        assert!(w.acquire().is_none());
        assert!(w.release(a));
        assert!(!w.release(a), "double ack is reported");
        assert!(w.acquire().is_some());
    }

    #[test]
    fn ids_wrap_and_skip_those_in_use() {
        let mut w = Inflight::new(u16::MAX);
        let first = w.acquire().unwrap();
        for _ in 1..u16::MAX {
            let pid = w.acquire().unwrap();
            w.release(pid);
        }
        // Wrapped around: the id still in flight is skipped.
        let pid = w.acquire().unwrap();
        assert_ne!(pid, first);
        w.limit_to(1);
        assert!(w.is_full());
    }
}
