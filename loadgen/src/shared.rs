//! State the main thread and the worker threads share: the run's phase, its
//! start time, and per-thread counters the progress line reads every second.
//!
//! Each worker writes only its own cache-line-aligned counters (no false
//! sharing); the main thread only reads them.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::*};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Clients connect and subscribe; nobody publishes yet.
    Connecting = 0,
    /// Publishers follow the schedule from the announced start time.
    Running = 1,
    /// Disconnect and report.
    Done = 2,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Connecting,
            1 => Phase::Running,
            _ => Phase::Done,
        }
    }
}

/// One worker's counters; monotonic, so deltas give rates.
#[derive(Default, Debug)]
#[repr(align(128))]
pub struct Counters {
    pub connect_ok: AtomicU64,
    pub connect_failed: AtomicU64,
    /// Sessions that ended (normally or not): connected = connect_ok - closed.
    pub closed: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub received: AtomicU64,
    /// Deliveries the routing promises for what was sent (sent x fan-out).
    pub expected: AtomicU64,
    pub errors: AtomicU64,
    /// Publishes carrying another run's id, or not carrying ours at all.
    pub foreign: AtomicU64,
    /// Publishers that began a session, and those of them done sending (their
    /// schedule ran past the window, or their session ended): the drain
    /// waits for every late send before it counts acks.
    pub publishers_began: AtomicU64,
    pub publishers_done: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Relaxed);
        }
    }
}

/// A plain copy of counters, summed over threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    pub connect_ok: u64,
    pub connect_failed: u64,
    pub closed: u64,
    pub sent: u64,
    pub acked: u64,
    pub received: u64,
    pub expected: u64,
    pub errors: u64,
    pub foreign: u64,
    pub publishers_began: u64,
    pub publishers_done: u64,
}

impl Snapshot {
    pub fn connected(&self) -> u64 {
        self.connect_ok.saturating_sub(self.closed)
    }

    /// Every publisher that began has sent its last message.
    pub fn publishers_done(&self) -> bool {
        self.publishers_done >= self.publishers_began
    }

    fn add(&mut self, c: &Counters) {
        // Read first, with the ordering its increment published: the sends
        // it follows are then counted in `sent` below.
        self.publishers_done += c.publishers_done.load(Acquire);
        self.publishers_began += c.publishers_began.load(Relaxed);
        self.connect_ok += c.connect_ok.load(Relaxed);
        self.connect_failed += c.connect_failed.load(Relaxed);
        self.closed += c.closed.load(Relaxed);
        self.sent += c.sent.load(Relaxed);
        self.acked += c.acked.load(Relaxed);
        self.received += c.received.load(Relaxed);
        self.expected += c.expected.load(Relaxed);
        self.errors += c.errors.load(Relaxed);
        self.foreign += c.foreign.load(Relaxed);
    }
}

pub struct Shared {
    phase: AtomicU8,
    start_ns: AtomicU64,
    ready: AtomicUsize,
    counters: Box<[Counters]>,
}

impl Shared {
    pub fn new(threads: usize) -> Shared {
        Shared {
            phase: AtomicU8::new(Phase::Connecting as u8),
            start_ns: AtomicU64::new(0),
            ready: AtomicUsize::new(0),
            counters: (0..threads).map(|_| Counters::default()).collect(),
        }
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Acquire))
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Release);
    }

    /// Announces the common start; the phase store publishes the start time.
    pub fn start(&self, start_ns: u64) {
        self.start_ns.store(start_ns, Relaxed);
        self.set_phase(Phase::Running);
    }

    /// Valid once `phase()` has returned `Running` or later.
    pub fn start_ns(&self) -> u64 {
        self.start_ns.load(Relaxed)
    }

    /// A worker has connected (or given up on) all of its clients.
    pub fn mark_ready(&self) {
        self.ready.fetch_add(1, AcqRel);
    }

    pub fn ready(&self) -> usize {
        self.ready.load(Acquire)
    }

    pub fn counters(&self, thread: usize) -> &Counters {
        &self.counters[thread]
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        self.counters.iter().for_each(|c| s.add(c));
        s
    }
}
