//! The only I/O in ringmq: one pinned thread per core, each running its own monoio
//! event loop (io_uring, or epoll where io_uring is unavailable) with its own
//! SO_REUSEPORT socket for every listener, its connections and its routing state.

mod accept;
mod busy_poll;
mod coalesce;
mod connection;
mod context;
mod durability;
mod edge;
mod exposition;
mod fd_table;
pub mod huge_pages;
mod listener;
mod log_gate;
pub(crate) mod mesh;
mod metrics_http;
mod notify;
mod parking;
pub use parking::PARK_AT_SETUP_AWAKE;
mod store;
mod sys;
pub mod transport;

pub use exposition::{BridgeScrape, ClusterScrape};
mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use anyhow::Context as _;

use crate::auth::Auth;
use crate::config::Config;
use crate::metrics::{self, SharedCounters, SharedLatency};
use crate::router::Core;
use listener::ListenerRuntime;
use mesh::{mesh, Mesh, Parcel};

/// State every core can see. Immutable after start except the counters below,
/// none of which is touched per message.
pub struct Shared {
    /// The configuration at start; its `limits` are those at start (see
    /// [`Shared::limits`] for the ones in force).
    pub config: Config,
    /// The limits in force: those at start, or as a reload changed them.
    limits: RwLock<Arc<crate::config::Limits>>,
    /// Every listener, the top-level one first, with the ports actually bound.
    pub listeners: Vec<ListenerRuntime>,
    /// Password and ACL rules in force (swapped on reload), the verifier
    /// threads and the guessing throttle.
    pub auth: Auth,
    pub mesh: Arc<Mesh>,
    pub counters: Vec<SharedCounters>,
    /// Each core's delivery latency histogram, published every tick.
    pub latency: Vec<SharedLatency>,
    /// Open connections on all cores, against `max_connections`.
    pub connections: AtomicUsize,
    /// The most `connections` has been since start.
    pub connections_peak: AtomicUsize,
    /// Open connections per address, against `max_connections_per_ip`.
    pub per_ip: edge::PerIp,
    pub shutdown: AtomicBool,
    pub started: Instant,
    /// Set by each core once its listeners are bound.
    pub ready: AtomicUsize,
    /// The per-core logs, with `persistence`.
    pub store: Option<store::Store>,
    /// Cores whose connections are all closed at shutdown: until every core
    /// is, each keeps taking what the others route to it.
    pub quiet: AtomicUsize,
    /// The I/O driver each core runs (`io_uring` or `epoll`), once started.
    pub drivers: Vec<OnceLock<&'static str>>,
    /// The bridges' listener (its index) and the secret that lets them in.
    pub bridge_gate: Option<(usize, Arc<str>)>,
    /// Each bridge's state and totals.
    pub bridges: Vec<Arc<crate::bridge::Stats>>,
    /// With `[cluster]`: where the cores send what other nodes must know.
    pub cluster: Option<Arc<crate::cluster::Handle>>,
}

impl Shared {
    /// The limits in force now.
    pub fn limits(&self) -> Arc<crate::config::Limits> {
        self.limits
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Loads every listener's certificates (reporting an unreadable file or a
/// certificate and key that do not match), without binding anything: what
/// `--test-config` checks beyond the values themselves.
pub fn check_listeners(config: &Config) -> anyhow::Result<()> {
    for listener in config.all_listeners() {
        ListenerRuntime::new(listener, config.limits.max_packet_size)?;
    }
    crate::bridge::check_files(&config.bridges)
}

/// Settles each listener's port: 0 gets one the kernel picks (held by the
/// returned sockets until the cores bind it too); any other must not be in
/// use by another process.
fn claim_ports(
    config: &Config,
) -> anyhow::Result<(Vec<crate::config::Listener>, Vec<socket2::Socket>)> {
    let mut placeholders = Vec::new();
    let mut listeners = config.all_listeners();
    for l in &mut listeners {
        if l.port == 0 {
            let socket = listener::reserve_port(l.addr())?;
            l.port = socket.local_addr()?.as_socket().map_or(0, |a| a.port());
            placeholders.push(socket);
        } else {
            listener::ensure_port_is_free(l.addr())
                .with_context(|| format!("listener {l}: cannot use {}", l.addr()))?;
        }
    }
    Ok((listeners, placeholders))
}

/// A running broker: its address and a way to stop it (used by tests and `main`).
pub struct Broker {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
    exporter: Option<metrics_http::Exporter>,
    bridges: Option<crate::bridge::Bridges>,
    cluster: Option<crate::cluster::Link>,
    pub addr: SocketAddr,
}

impl Broker {
    /// Starts every core and returns once all listeners are bound.
    pub fn start(mut config: Config) -> anyhow::Result<Broker> {
        let (bound, mut placeholders) = claim_ports(&config)?;
        if config.default_listener {
            config.port = bound[0].port;
        }
        let max_packet = config.limits.max_packet_size;
        let mut listeners = bound
            .into_iter()
            .map(|l| ListenerRuntime::new(l, max_packet))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let bridge_gate = match config.bridges.is_empty() {
            true => None,
            false => {
                let (gate, placeholder) = ListenerRuntime::bridge_gate(max_packet)?;
                placeholders.push(placeholder);
                listeners.push(gate);
                Some((listeners.len() - 1, crate::bridge::Gate::secret()?))
            }
        };
        let bridges = config
            .bridges
            .iter()
            .map(|b| Arc::new(crate::bridge::Stats::new(b)))
            .collect();
        let cores = config.cores;
        let started = Instant::now();
        let limits = Arc::new(config.limits.clone());
        let mut routers: Vec<Core> = (0..cores)
            .map(|id| Core::new(id, cores, limits.clone(), config.shared_strategy))
            .collect();
        let (mesh, inboxes) = mesh(cores, config.mesh_queue_capacity, config.mesh_budget);
        let cluster = config.cluster.as_ref().map(crate::cluster::channel);
        if cluster.is_some() {
            routers.iter_mut().for_each(Core::join_cluster);
        }
        let store = match config.persistence {
            true => {
                let doorbells: Vec<_> = (0..cores).map(|core| mesh.doorbell(core)).collect();
                Some(
                    store::Store::open(&config, store::epoch_now(), &doorbells)?
                        .restore_into(&mut routers, crate::time::Time::ZERO)?,
                )
            }
            false => None,
        };
        let restored: Vec<Arc<str>> = match cluster.is_some() {
            true => routers.iter().flat_map(Core::persistent_sessions).collect(),
            false => Vec::new(),
        };
        let per_ip = edge::PerIp::new(config.limits.max_connections_per_ip);
        let shared = Arc::new(Shared {
            limits: RwLock::new(limits.clone()),
            store,
            listeners,
            counters: (0..cores).map(|_| SharedCounters::default()).collect(),
            latency: (0..cores).map(|_| SharedLatency::default()).collect(),
            auth: Auth::from_config(&config)?,
            config,
            mesh,
            connections: AtomicUsize::new(0),
            connections_peak: AtomicUsize::new(0),
            per_ip,
            shutdown: AtomicBool::new(false),
            started,
            ready: AtomicUsize::new(0),
            quiet: AtomicUsize::new(0),
            drivers: (0..cores).map(|_| OnceLock::new()).collect(),
            bridge_gate,
            bridges,
            cluster: cluster.as_ref().map(|(handle, _)| handle.clone()),
        });
        // Before the cores start: growing the table later stalls a core.
        fd_table::reserve(shared.config.limits.max_connections);
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::with_capacity(cores);
        for ((id, inbox), core) in inboxes.into_iter().enumerate().zip(routers) {
            let shared = shared.clone();
            let bound_tx = bound_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("ringmq-core-{id}"))
                .spawn(move || worker::run(id, core, shared, inbox, bound_tx))
                .context("spawning a core thread")?;
            threads.push(thread);
        }
        drop(bound_tx);
        for _ in 0..cores {
            bound_rx
                .recv()
                .context("a core exited before binding its listeners")??;
        }
        let addr = shared.listeners[0].config.addr();
        let mut broker = Broker {
            shared,
            threads,
            exporter: None,
            bridges: None,
            cluster: None,
            addr,
        };
        if let (Some((_, pending)), Some(settings)) = (cluster, &broker.shared.config.cluster) {
            let mesh = broker.shared.mesh.clone();
            match crate::cluster::Link::start(settings, pending, mesh, started, restored) {
                Ok(link) => broker.cluster = Some(link),
                Err(e) => {
                    broker.shutdown();
                    return Err(e);
                }
            }
        }
        if let Err(e) = broker.start_bridges() {
            broker.shutdown();
            return Err(e);
        }
        if let Some(at) = broker.shared.config.metrics {
            match metrics_http::Exporter::start(at, broker.shared.clone()) {
                Ok(exporter) => broker.exporter = Some(exporter),
                Err(e) => {
                    broker.shutdown();
                    return Err(e);
                }
            }
        }
        Ok(broker)
    }

    /// Starts the `[[bridge]]` links, once the cores listen.
    fn start_bridges(&mut self) -> anyhow::Result<()> {
        let shared = &self.shared;
        let Some((index, secret)) = &shared.bridge_gate else {
            return Ok(());
        };
        let gate = crate::bridge::Gate {
            addr: shared.listeners[*index].config.addr(),
            secret: secret.clone(),
        };
        let max_packet = shared.config.limits.max_packet_size;
        let bridges = crate::bridge::Bridges::start(
            &shared.config.bridges,
            gate,
            max_packet,
            &shared.bridges,
        )?;
        self.bridges = Some(bridges);
        Ok(())
    }

    /// Each `[[bridge]]`'s state and totals, in the configuration's order.
    pub fn bridges(&self) -> &[Arc<crate::bridge::Stats>] {
        &self.shared.bridges
    }

    /// The cluster link's state and totals, with `[cluster]`.
    pub fn cluster_stats(&self) -> Option<&crate::cluster::Stats> {
        self.shared.cluster.as_deref().map(|h| &h.stats)
    }

    /// Where `GET /metrics` is served, with `metrics_port`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.exporter.as_ref().map(|e| e.addr())
    }

    /// Every listener's scheme (`mqtt`, `mqtts`, `ws`, `wss`) and address.
    pub fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        let all = &self.shared.listeners;
        all.iter()
            .filter(|l| !l.bridge_gate)
            .map(|l| (l.config.scheme(), l.config.addr()))
            .collect()
    }

    /// Re-reads every TLS listener's certificate and key; a listener whose
    /// new files are bad keeps its old ones. Returns what failed.
    pub fn reload_tls(&self) -> Vec<String> {
        let mut failures = Vec::new();
        for l in &self.shared.listeners {
            let Some(tls) = &l.tls else {
                continue;
            };
            match tls.reload() {
                Ok(()) => tracing::info!(listener = %l.config, "TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(listener = %l.config, error = format!("{e:#}"), "TLS reload failed; the old certificate stays in use");
                    failures.push(format!("{}: {e:#}", l.config));
                }
            }
        }
        failures
    }

    /// Re-reads the password and ACL files. A file that fails to load keeps
    /// the old rules in force (fail closed) and the error is returned; new
    /// rules apply to the next CONNECT, and every core re-checks its sessions'
    /// subscriptions against them.
    pub fn reload_auth(&self) -> anyhow::Result<()> {
        if !self.shared.auth.has_files() {
            return Ok(());
        }
        if let Err(e) = self.shared.auth.reload() {
            tracing::error!(
                error = format!("{e:#}"),
                "reload failed; the old password and ACL rules stay in force"
            );
            return Err(e);
        }
        tracing::info!("password and ACL files reloaded");
        self.tell_every_core(|| Parcel::Reauthorize);
        Ok(())
    }

    /// Puts `limits` in force on every core and for new connections (a
    /// reload; see `config::live_limits` for which may change).
    pub fn set_limits(&self, limits: crate::config::Limits) {
        let limits = Arc::new(limits);
        *self
            .shared
            .limits
            .write()
            .unwrap_or_else(|e| e.into_inner()) = limits.clone();
        self.tell_every_core(|| Parcel::Limits(limits.clone()));
    }

    /// Sends a parcel to every core, waiting while a core's queue is full.
    fn tell_every_core(&self, parcel: impl Fn() -> Parcel) {
        for core in 0..self.shared.mesh.cores() {
            let mut parcel = parcel();
            while let Err(back) = self.shared.mesh.try_send(core, parcel) {
                parcel = back;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }

    /// Asks every core to close its connections and stop, then waits for them.
    pub fn shutdown(mut self) {
        // The bridges first: each ends its remote session in order while
        // the cores still serve their local ones.
        if let Some(bridges) = self.bridges.take() {
            bridges.stop();
        }
        // Then the cluster link, while the cores still take what it hands them.
        if let Some(link) = self.cluster.take() {
            link.stop();
        }
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.tell_every_core(|| Parcel::Shutdown);
        for t in self.threads {
            let _ = t.join();
        }
        if let Some(exporter) = self.exporter {
            exporter.stop();
        }
        if let Some(store) = &self.shared.store {
            store.flush();
        }
        let totals = metrics::total(&self.shared.counters);
        tracing::info!(
            uptime_s = self.shared.started.elapsed().as_secs(),
            connections_total = totals.connections_total,
            messages_received = totals.messages_received,
            messages_sent = totals.messages_sent,
            totals = %metrics::key_values(&totals),
            "ringmq stopped"
        );
    }

    /// Client connections open now, on all cores (against `max_connections`):
    /// a socket counts until its reader and writer are both done with it.
    pub fn connections_open(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Counters summed over all cores (refreshed by each core every tick).
    pub fn counters(&self) -> metrics::Counters {
        metrics::total(&self.shared.counters)
    }

    /// How many counter snapshots each core has published (one per tick):
    /// once every core's number moved past what a caller saw, the totals
    /// [`Broker::counters`] reads reflect everything done before it looked.
    pub fn counter_publications(&self) -> Vec<u64> {
        self.shared
            .counters
            .iter()
            .map(|c| c.publications())
            .collect()
    }
}

/// Runs the broker until SIGINT or SIGTERM, then shuts down gracefully.
/// SIGHUP never stops it: it re-reads the TLS certificates and the password
/// and ACL files (each keeping its old contents when the new ones are bad),
/// then calls `reconfigure` with the configuration in force, which re-reads
/// the rest (see `main`). Tells systemd (`Type=notify`) when it is ready,
/// reloading and stopping.
pub fn run(config: Config, mut reconfigure: impl FnMut(&Broker)) -> anyhow::Result<()> {
    use sd_notify::NotifyState;
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("installing signal handlers")?;
    let local_only = config.local_only;
    if let Err(e) = huge_pages::allow(config.transparent_huge_pages) {
        tracing::warn!(error = %e, "cannot set transparent_huge_pages");
    }
    let broker = Broker::start(config)?;
    for (scheme, addr) in broker.listeners() {
        tracing::info!(%addr, scheme, "ringmq listening");
    }
    if local_only {
        tracing::warn!("no password_file and no allow_anonymous set: listening on loopback only, accepting anonymous clients from this machine; set password_file (or allow_anonymous = true) to listen on other addresses");
    }
    notify_systemd(&[NotifyState::Ready]);
    for sig in signals.forever() {
        if sig == SIGHUP {
            tracing::info!("SIGHUP: reloading");
            let reloading = NotifyState::monotonic_usec_now().ok();
            notify_systemd(
                &[NotifyState::Reloading]
                    .into_iter()
                    .chain(reloading)
                    .collect::<Vec<_>>(),
            );
            broker.reload_tls();
            let _ = broker.reload_auth();
            reconfigure(&broker);
            notify_systemd(&[NotifyState::Ready]);
            continue;
        }
        tracing::info!(signal = sig, "shutting down");
        break;
    }
    notify_systemd(&[NotifyState::Stopping]);
    broker.shutdown();
    Ok(())
}

/// Tells systemd, when it started the broker with `Type=notify` (nothing is
/// sent otherwise).
fn notify_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}
