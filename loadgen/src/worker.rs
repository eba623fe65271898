//! One worker thread: a monoio runtime pinned to a core, running its share of
//! the clients, a pacer, and a control task that follows the main thread's phases.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

use crate::client::{run_client, Conn};
use crate::clock::Clock;
use crate::pacer::{Pacer, GRAIN_NS};
use crate::scenario::{churn, Plan, Settings};
use crate::shared::{Counters, Phase, Shared};
use crate::stats::{Schedule, ThreadStats, Window};

/// How often a worker looks at the main thread's phase.
const CONTROL_POLL: Duration = Duration::from_millis(2);
/// How long a worker waits for its connections to close after `Done`.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// How often connections are checked for a due keep-alive ping.
const KEEPALIVE_SWEEP: Duration = Duration::from_secs(1);
/// Connect/handshake errors printed per thread before going quiet.
const ERRORS_LOGGED: u32 = 3;

/// Thread-local state every task of the worker shares.
pub struct Worker {
    pub index: usize,
    pub settings: Arc<Settings>,
    pub plan: Arc<Plan>,
    pub shared: Arc<Shared>,
    pub pacer: Rc<Pacer>,
    pub stats: RefCell<ThreadStats>,
    phase: Cell<Phase>,
    start_ns: Cell<Option<u64>>,
    conns: RefCell<Vec<Weak<Conn>>>,
    live: Cell<usize>,
    handshakes_pending: Cell<usize>,
    logged_errors: Cell<u32>,
}

/// What a worker thread is given.
pub struct WorkerArgs {
    pub index: usize,
    pub core: Option<core_affinity::CoreId>,
    pub settings: Arc<Settings>,
    pub plan: Arc<Plan>,
    pub shared: Arc<Shared>,
    pub clock: Clock,
    /// Interval latency histograms for the progress line.
    pub progress: Sender<Histogram<u64>>,
}

pub fn spawn(args: WorkerArgs) -> Result<JoinHandle<Result<ThreadStats>>> {
    std::thread::Builder::new()
        .name(format!("loadgen-{}", args.index))
        .spawn(move || {
            if let Some(core) = args.core {
                core_affinity::set_for_current(core);
            }
            let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .with_entries(4096)
                .build()
                .context("building the monoio runtime")?;
            Ok(rt.block_on(run(args)))
        })
        .context("spawning a worker thread")
}

async fn run(args: WorkerArgs) -> ThreadStats {
    let w = Rc::new(Worker {
        index: args.index,
        pacer: Pacer::new(args.clock),
        settings: args.settings,
        plan: args.plan,
        shared: args.shared,
        stats: RefCell::new(ThreadStats::new()),
        phase: Cell::new(Phase::Connecting),
        start_ns: Cell::new(None),
        conns: RefCell::default(),
        live: Cell::new(0),
        handshakes_pending: Cell::new(0),
        logged_errors: Cell::new(0),
    });
    monoio::spawn(w.pacer.clone().run());
    monoio::spawn(control(w.clone()));
    monoio::spawn(ticker(w.clone(), args.progress));
    monoio::spawn(keepalive(w.clone()));
    connect_all(&w).await;
    w.shared.mark_ready();
    if let Some(concurrency) = w.plan.storm_concurrency {
        w.wait_for(|| w.phase() >= Phase::Running).await;
        churn(&w, concurrency).await;
    }
    w.wait_for(|| w.phase() == Phase::Done).await;
    let deadline = w.pacer.now_ns() + CLOSE_GRACE.as_nanos() as u64;
    w.wait_for(|| w.live.get() == 0 || w.pacer.now_ns() >= deadline)
        .await;
    w.stats.take()
}

/// Starts this thread's clients at its share of the connect rate, then waits
/// until every handshake has succeeded or failed.
async fn connect_all(w: &Rc<Worker>) {
    let threads = w.settings.threads;
    let mine: Vec<_> = w
        .plan
        .clients
        .iter()
        .filter(|c| c.index % threads == w.index)
        .cloned()
        .collect();
    let rate = w.settings.connect_rate / threads as f64;
    let schedule = Schedule::new(w.pacer.now_ns(), rate).with_grain(GRAIN_NS);
    w.handshakes_pending.set(mine.len());
    for (k, spec) in mine.into_iter().enumerate() {
        let due = schedule.due(k as u64);
        w.pacer.sleep_until(due).await;
        monoio::spawn(run_client(w.clone(), spec, due));
    }
    w.wait_for(|| w.handshakes_pending.get() == 0).await;
}

/// Follows the main thread's phase and wakes every connection when it changes.
async fn control(w: Rc<Worker>) {
    while w.phase() != Phase::Done {
        w.pacer.sleep(CONTROL_POLL).await;
        let phase = w.shared.phase();
        if phase == w.phase() {
            continue;
        }
        if phase >= Phase::Running && w.start_ns.get().is_none() {
            w.begin(w.shared.start_ns());
        }
        w.phase.set(phase);
        w.wake_all();
    }
}

/// Sends the last second's latency histogram to the progress line.
async fn ticker(w: Rc<Worker>, progress: Sender<Histogram<u64>>) {
    while w.phase() != Phase::Done {
        w.pacer.sleep(Duration::from_secs(1)).await;
        let interval = w.stats.borrow_mut().take_interval();
        if progress.send(interval).is_err() {
            return;
        }
    }
}

/// Wakes the writers of connections that owe the broker a PINGREQ: one timer
/// for the whole thread instead of one per connection.
async fn keepalive(w: Rc<Worker>) {
    while w.phase() != Phase::Done {
        w.pacer.sleep(KEEPALIVE_SWEEP).await;
        let now = w.pacer.now_ns();
        for conn in w.conns.borrow().iter().filter_map(Weak::upgrade) {
            if conn.ping_due(&w, now) {
                conn.wake.notify();
            }
        }
    }
}

impl Worker {
    pub fn counters(&self) -> &Counters {
        self.shared.counters(self.index)
    }

    pub fn phase(&self) -> Phase {
        self.phase.get()
    }

    /// The common start time, once the run is running.
    pub fn start_ns(&self) -> Option<u64> {
        self.start_ns.get()
    }

    fn begin(&self, start_ns: u64) {
        let warmup = self.settings.warmup.as_nanos() as u64;
        let duration = self.settings.duration.as_nanos() as u64;
        self.start_ns.set(Some(start_ns));
        self.stats.borrow_mut().window = Window {
            start_ns: start_ns + warmup,
            end_ns: start_ns + warmup + duration,
        };
    }

    pub fn register(&self, conn: &Rc<Conn>) {
        let mut conns = self.conns.borrow_mut();
        conns.retain(|c| c.strong_count() > 0);
        conns.push(Rc::downgrade(conn));
    }

    fn wake_all(&self) {
        for conn in self.conns.borrow().iter().filter_map(Weak::upgrade) {
            conn.wake.notify();
        }
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

pub struct TaskGuard(Rc<Worker>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.live.set(self.0.live.get() - 1);
    }
}
