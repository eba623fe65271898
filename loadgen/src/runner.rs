//! One run of one scenario against one broker, driven from the main thread:
//! start the workers, connect, announce the start, sample the broker at the
//! edges of the measured window, drain, stop, merge.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde::Serialize;

use crate::cli::ScenarioKind;
use crate::clock::Clock;
use crate::procfs::Probe;
use crate::progress::Monitor;
use crate::scenario::{Plan, Settings, Target};
use crate::shared::{Phase, Shared, Snapshot};
use crate::stats::{delivery, Delivery, ThreadStats, Window};
use crate::worker::{self, WorkerArgs};

/// Lead time between announcing the start and the first intended send, so
/// every worker has seen it before its schedule begins.
const START_LEAD: Duration = Duration::from_millis(100);
/// Broker memory settles this long after the last connect before it is read.
const SETTLE: Duration = Duration::from_secs(1);
/// A QoS 0 drain ends early when nothing has arrived for this long.
const QUIET: Duration = Duration::from_secs(2);

/// The broker's resource use over one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BrokerUsage {
    /// User + system CPU seconds inside the measured window.
    pub cpu_seconds: Option<f64>,
    pub rss_before_kb: Option<u64>,
    /// RSS once every client is connected (connections scenario).
    pub rss_loaded_kb: Option<u64>,
    pub peak_rss_kb: Option<u64>,
    /// The kernel's high-water mark for the broker's whole life.
    pub hwm_kb: Option<u64>,
}

/// Everything measured in one run (or several, merged for `compare`).
pub struct RunResult {
    pub target: Target,
    pub stats: ThreadStats,
    pub totals: Snapshot,
    pub delivery: Delivery,
    pub window_s: f64,
    /// Clients connected when the load started (connections scenario: held).
    pub connected: u64,
    pub broker: BrokerUsage,
    /// CPU seconds this process used inside the window: near threads x window
    /// means the generator, not the broker, was the limit.
    pub generator_cpu_seconds: Option<f64>,
    pub runs: usize,
}

impl RunResult {
    /// Adds another run against the same target (compare's rounds).
    pub fn absorb(&mut self, other: RunResult) {
        self.stats.merge(other.stats);
        let t = &mut self.totals;
        let o = other.totals;
        t.connect_ok += o.connect_ok;
        t.connect_failed += o.connect_failed;
        t.closed += o.closed;
        t.sent += o.sent;
        t.acked += o.acked;
        t.received += o.received;
        t.expected += o.expected;
        t.errors += o.errors;
        t.foreign += o.foreign;
        let d = &mut self.delivery;
        d.lost += other.delivery.lost;
        d.duplicated += other.delivery.duplicated;
        d.out_of_order += other.delivery.out_of_order;
        d.unexpected += other.delivery.unexpected;
        self.window_s += other.window_s;
        self.connected = self.connected.max(other.connected);
        self.broker.absorb(other.broker, self.runs);
        self.generator_cpu_seconds = self
            .generator_cpu_seconds
            .zip(other.generator_cpu_seconds)
            .map(|(a, b)| a + b);
        self.runs += other.runs;
    }
}

impl BrokerUsage {
    fn absorb(&mut self, other: BrokerUsage, runs_so_far: usize) {
        let add = |a: Option<f64>, b: Option<f64>| Some(a? + b?);
        let max = |a: Option<u64>, b: Option<u64>| a.max(b);
        self.cpu_seconds = add(self.cpu_seconds, other.cpu_seconds);
        self.peak_rss_kb = max(self.peak_rss_kb, other.peak_rss_kb);
        self.hwm_kb = max(self.hwm_kb, other.hwm_kb);
        // Memory per connection is averaged over runs through before/loaded.
        let avg = |a: Option<u64>, b: Option<u64>| {
            let n = runs_so_far as u64;
            Some((a? * n + b?) / (n + 1))
        };
        self.rss_before_kb = avg(self.rss_before_kb, other.rss_before_kb);
        self.rss_loaded_kb = avg(self.rss_loaded_kb, other.rss_loaded_kb);
    }

    /// (RSS loaded - RSS before) / connections, in bytes.
    pub fn bytes_per_connection(&self, connections: u64) -> Option<f64> {
        let grown = self.rss_loaded_kb?.checked_sub(self.rss_before_kb?)?;
        (connections > 0).then(|| grown as f64 * 1024.0 / connections as f64)
    }
}

pub fn run_once(settings: &Settings, plan: &Plan) -> Result<RunResult> {
    let settings = Arc::new(settings.clone());
    let plan = Arc::new(plan.clone());
    let clock = Clock::new();
    let shared = Arc::new(Shared::new(settings.threads));
    let probe = settings.target.pid.map(Probe::new);
    let mut broker = BrokerUsage::default();
    if let Some(p) = probe {
        broker.rss_before_kb = Some(p.memory()?.rss_kb);
    }
    crate::fd_table::reserve(plan.clients.len());
    let (tx, rx) = mpsc::channel();
    let handles = spawn_workers(&settings, &plan, &shared, clock, tx)?;
    let target_clients = plan.storm_concurrency.unwrap_or(plan.clients.len());
    let mut mon = Monitor::new(&shared, rx, target_clients, settings.progress, probe);
    let connected = connect_phase(&mut mon, &settings, &plan, &shared)?;
    if settings.scenario == ScenarioKind::Connections && probe.is_some() {
        mon.sleep_until(Instant::now() + SETTLE);
    }
    let window = start(&shared, &settings, clock);
    let (cpu_seconds, generator_cpu_seconds) = measure(&mut mon, probe, window, clock);
    if settings.scenario == ScenarioKind::Connections {
        // After the hold: what an idle connection costs once it has been idle
        // (a broker may release per-connection state of quiet clients).
        if let Some(p) = probe {
            broker.rss_loaded_kb = Some(p.memory()?.rss_kb);
        }
    }
    if settings.scenario.has_messages() {
        drain(&mut mon, &settings);
    }
    shared.set_phase(Phase::Done);
    let stats = join(handles)?;
    broker.cpu_seconds = cpu_seconds;
    broker.peak_rss_kb = mon.peak_rss_kb;
    if let Some(p) = probe {
        let mem = p.memory()?;
        broker.peak_rss_kb = broker.peak_rss_kb.max(Some(mem.rss_kb));
        broker.hwm_kb = Some(mem.hwm_kb);
    }
    let sent = stats.sent_by_publisher(plan.publishers);
    Ok(RunResult {
        target: settings.target.clone(),
        delivery: delivery(plan.routing, &sent, plan.subscribers, &stats.trackers),
        stats,
        totals: shared.snapshot(),
        window_s: window.seconds(),
        connected,
        broker,
        generator_cpu_seconds,
        runs: 1,
    })
}

fn spawn_workers(
    settings: &Arc<Settings>,
    plan: &Arc<Plan>,
    shared: &Arc<Shared>,
    clock: Clock,
    tx: mpsc::Sender<hdrhistogram::Histogram<u64>>,
) -> Result<Vec<std::thread::JoinHandle<Result<ThreadStats>>>> {
    // Pin to the cores this process may use (so `taskset` decides).
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    (0..settings.threads)
        .map(|index| {
            worker::spawn(WorkerArgs {
                index,
                core: (!cores.is_empty()).then(|| cores[index % cores.len()]),
                settings: settings.clone(),
                plan: plan.clone(),
                shared: shared.clone(),
                clock,
                progress: tx.clone(),
            })
        })
        .collect()
}

/// Waits until every worker has connected its clients; fails if none could.
fn connect_phase(mon: &mut Monitor, s: &Settings, plan: &Plan, shared: &Shared) -> Result<u64> {
    let clients = plan.clients.len() as f64;
    let budget = clients / s.connect_rate + s.connect_timeout.as_secs_f64() + 5.0;
    let deadline = Instant::now() + Duration::from_secs_f64(budget);
    mon.wait_until(deadline, |_| shared.ready() == s.threads);
    let snap = shared.snapshot();
    if !plan.clients.is_empty() && snap.connect_ok == 0 {
        bail!(
            "no client could connect to {} ({} failed)",
            s.target.address,
            snap.connect_failed
        );
    }
    Ok(snap.connected())
}

/// Announces the start; returns the measured window.
fn start(shared: &Shared, s: &Settings, clock: Clock) -> Window {
    let start = clock.now_ns() + START_LEAD.as_nanos() as u64;
    shared.start(start);
    let begin = start + s.warmup.as_nanos() as u64;
    Window {
        start_ns: begin,
        end_ns: begin + s.duration.as_nanos() as u64,
    }
}

/// Runs through the window; returns the CPU seconds the broker (if known) and
/// this generator used inside it.
fn measure(
    mon: &mut Monitor,
    probe: Option<Probe>,
    window: Window,
    clock: Clock,
) -> (Option<f64>, Option<f64>) {
    let me = Probe::new(std::process::id());
    let cpu = |p: Option<Probe>| p.and_then(|p| p.cpu_seconds().ok());
    mon.sleep_until(clock.instant(window.start_ns));
    let before = (cpu(probe), cpu(Some(me)));
    mon.sleep_until(clock.instant(window.end_ns));
    let after = (cpu(probe), cpu(Some(me)));
    let used = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
    (used(after.0, before.0), used(after.1, before.1))
}

/// After the last send: wait for every expected delivery and ack, at most
/// --drain. QoS 0 stops early when nothing has moved for a while (a broker may
/// drop QoS 0); QoS 1/2 waits the whole drain for a late message rather than
/// call it lost, so a stalled machine cannot turn a delay into a loss.
fn drain(mon: &mut Monitor, s: &Settings) {
    let deadline = Instant::now() + s.drain;
    let qos0 = s.qos == ringmq_proto::codec::QoS::AtMostOnce;
    let mut last = (0, 0);
    let mut moved = Instant::now();
    mon.wait_until(deadline, |snap| {
        let acks_done = qos0 || snap.acked >= snap.sent;
        if snap.publishers_done() && snap.received >= snap.expected && acks_done {
            return true;
        }
        if (snap.received, snap.acked) != last {
            last = (snap.received, snap.acked);
            moved = Instant::now();
        }
        qos0 && moved.elapsed() >= QUIET
    });
}

fn join(handles: Vec<std::thread::JoinHandle<Result<ThreadStats>>>) -> Result<ThreadStats> {
    let mut merged = ThreadStats::new();
    for h in handles {
        let stats = h
            .join()
            .map_err(|_| anyhow!("a worker thread panicked"))??;
        merged.merge(stats);
    }
    Ok(merged)
}
