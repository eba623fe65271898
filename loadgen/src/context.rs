//! The thread-local state every task of a worker thread shares: the run's
//! settings and plan, the pacer, the thread's statistics and counters, the
//! phase as this thread last saw it, and the accounting of its tasks.
//!
//! A leaf under both `worker` (which builds it and drives the phases) and
//! `client` (whose connections read it), so neither needs the other's types.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::pacer::Pacer;
use crate::scenario::{Plan, Settings};
use crate::shared::{Counters, Phase, Shared};
use crate::stats::{ThreadStats, Window};

/// How often control-path waits look at their condition again.
pub const CONTROL_POLL: Duration = Duration::from_millis(2);
/// Connect/handshake errors printed per thread before going quiet.
const ERRORS_LOGGED: u32 = 3;

/// One worker thread's shared state (behind an `Rc`: every task holds one).
pub struct Thread {
    pub index: usize,
    pub settings: Arc<Settings>,
    pub plan: Arc<Plan>,
    pub shared: Arc<Shared>,
    pub pacer: Rc<Pacer>,
    pub stats: RefCell<ThreadStats>,
    phase: Cell<Phase>,
    start_ns: Cell<Option<u64>>,
    live: Cell<usize>,
    handshakes_pending: Cell<usize>,
    logged_errors: Cell<u32>,
}

impl Thread {
    pub fn new(
        index: usize,
        settings: Arc<Settings>,
        plan: Arc<Plan>,
        shared: Arc<Shared>,
        pacer: Rc<Pacer>,
    ) -> Thread {
        Thread {
            index,
            settings,
            plan,
            shared,
            pacer,
            stats: RefCell::new(ThreadStats::new()),
            phase: Cell::new(Phase::Connecting),
            start_ns: Cell::new(None),
            live: Cell::new(0),
            handshakes_pending: Cell::new(0),
            logged_errors: Cell::new(0),
        }
    }

    pub fn counters(&self) -> &Counters {
        self.shared.counters(self.index)
    }

    /// The phase as this thread last saw it.
    pub fn phase(&self) -> Phase {
        self.phase.get()
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.set(phase);
    }

    /// The common start time, once the run is running.
    pub fn start_ns(&self) -> Option<u64> {
        self.start_ns.get()
    }

    /// Takes the common start time and sets the measured window from it.
    pub fn begin(&self, start_ns: u64) {
        let warmup = self.settings.warmup.as_nanos() as u64;
        let duration = self.settings.duration.as_nanos() as u64;
        self.start_ns.set(Some(start_ns));
        self.stats.borrow_mut().window = Window {
            start_ns: start_ns + warmup,
            end_ns: start_ns + warmup + duration,
        };
    }

    /// Handshakes still to succeed or fail before the thread is ready.
    pub fn handshakes_pending(&self) -> usize {
        self.handshakes_pending.get()
    }

    pub fn expect_handshakes(&self, n: usize) {
        self.handshakes_pending.set(n);
    }

    pub fn handshake_finished(&self) {
        self.handshakes_pending
            .set(self.handshakes_pending.get().saturating_sub(1));
    }

    /// Counts a live task until the guard drops.
    pub fn task_guard(self: &Rc<Self>) -> TaskGuard {
        self.live.set(self.live.get() + 1);
        TaskGuard(self.clone())
    }

    /// Tasks holding a [`TaskGuard`].
    pub fn live_tasks(&self) -> usize {
        self.live.get()
    }

    /// Prints the first few errors of this thread; the counters have them all.
    pub fn log_error(&self, what: &str, err: &anyhow::Error) {
        let n = self.logged_errors.get();
        if n < ERRORS_LOGGED && self.phase() != Phase::Done {
            eprintln!("loadgen: thread {}: {what}: {err:#}", self.index);
        }
        self.logged_errors.set(n + 1);
    }

    /// Polls `cond` every couple of milliseconds (control-path waits only).
    pub async fn wait_for(&self, cond: impl Fn() -> bool) {
        while !cond() {
            self.pacer.sleep(CONTROL_POLL).await;
        }
    }
}

pub struct TaskGuard(Rc<Thread>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.live.set(self.0.live.get() - 1);
    }
}
