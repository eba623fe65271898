//! One worker thread: a monoio runtime pinned to a core, running its share of
//! the clients, a pacer, and a control task that follows the main thread's
//! phases. The state these tasks share is [`crate::context::Thread`].

use std::rc::Rc;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

use crate::client::{churn, keepalive, run_client, Conns};
use crate::clock::Clock;
use crate::context::{Thread, CONTROL_POLL};
use crate::pacer::{Pacer, GRAIN_NS};
use crate::scenario::{Plan, Settings};
use crate::shared::{Phase, Shared};
use crate::stats::{Schedule, ThreadStats};

/// How long a worker waits for its connections to close after `Done`.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

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
    let t = Rc::new(Thread::new(
        args.index,
        args.settings,
        args.plan,
        args.shared,
        Pacer::new(args.clock),
    ));
    let conns = Rc::new(Conns::default());
    monoio::spawn(t.pacer.clone().run());
    monoio::spawn(control(t.clone(), conns.clone()));
    monoio::spawn(ticker(t.clone(), args.progress));
    monoio::spawn(keepalive(t.clone(), conns.clone()));
    connect_all(&t, &conns).await;
    t.shared.mark_ready();
    if let Some(concurrency) = t.plan.storm_concurrency {
        t.wait_for(|| t.phase() >= Phase::Running).await;
        churn(&t, concurrency).await;
    }
    t.wait_for(|| t.phase() == Phase::Done).await;
    let deadline = t.pacer.now_ns() + CLOSE_GRACE.as_nanos() as u64;
    t.wait_for(|| t.live_tasks() == 0 || t.pacer.now_ns() >= deadline)
        .await;
    t.stats.take()
}

/// Starts this thread's clients at its share of the connect rate, then waits
/// until every handshake has succeeded or failed.
async fn connect_all(t: &Rc<Thread>, conns: &Rc<Conns>) {
    let threads = t.settings.threads;
    let mine: Vec<_> = t
        .plan
        .clients
        .iter()
        .filter(|c| c.index % threads == t.index)
        .cloned()
        .collect();
    let rate = t.settings.connect_rate / threads as f64;
    let schedule = Schedule::new(t.pacer.now_ns(), rate).with_grain(GRAIN_NS);
    t.expect_handshakes(mine.len());
    for (k, spec) in mine.into_iter().enumerate() {
        let due = schedule.due(k as u64);
        t.pacer.sleep_until(due).await;
        monoio::spawn(run_client(t.clone(), conns.clone(), spec, due));
    }
    t.wait_for(|| t.handshakes_pending() == 0).await;
}

/// Follows the main thread's phase and wakes every connection when it changes.
async fn control(t: Rc<Thread>, conns: Rc<Conns>) {
    while t.phase() != Phase::Done {
        t.pacer.sleep(CONTROL_POLL).await;
        let phase = t.shared.phase();
        if phase == t.phase() {
            continue;
        }
        if phase >= Phase::Running && t.start_ns().is_none() {
            t.begin(t.shared.start_ns());
        }
        t.set_phase(phase);
        conns.wake_all();
    }
}

/// Sends the last second's latency histogram to the progress line.
async fn ticker(t: Rc<Thread>, progress: Sender<Histogram<u64>>) {
    while t.phase() != Phase::Done {
        t.pacer.sleep(Duration::from_secs(1)).await;
        let interval = t.stats.borrow_mut().take_interval();
        if progress.send(interval).is_err() {
            return;
        }
    }
}
