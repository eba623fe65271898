//! The only I/O in ringmq: one pinned thread per core, each running its own monoio
//! event loop (io_uring, or epoll where io_uring is unavailable) with its own
//! SO_REUSEPORT listener, connections, and routing state.

mod accept;
mod connection;
mod context;
mod listener;
mod mesh;
mod notify;
mod sys;
mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;

use crate::auth::{AnonymousPolicy, Authenticator};
use crate::config::Config;
use crate::metrics::{self, SharedCounters};
use mesh::{mesh, Mesh, Parcel};

/// State every core can see. Immutable after start except the counters below,
/// none of which is touched per message.
pub struct Shared {
    pub config: Config,
    pub auth: Box<dyn Authenticator>,
    pub mesh: Arc<Mesh>,
    pub counters: Vec<SharedCounters>,
    /// Open connections on all cores, against `max_connections`.
    pub connections: AtomicUsize,
    pub shutdown: AtomicBool,
    pub started: Instant,
    /// Set by each core once its listener is bound.
    pub ready: AtomicUsize,
}

/// A running broker: its address and a way to stop it (used by tests and `main`).
pub struct Broker {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl Broker {
    /// Starts every core and returns once all listeners are bound.
    pub fn start(mut config: Config) -> anyhow::Result<Broker> {
        // Port 0: pick one port up front so that every core's listener shares it.
        let _placeholder = if config.port == 0 {
            let socket = listener::reserve_port(SocketAddr::new(config.bind, 0))?;
            config.port = socket.local_addr()?.as_socket().map_or(0, |a| a.port());
            Some(socket)
        } else {
            None
        };
        let cores = config.cores;
        let addr = SocketAddr::new(config.bind, config.port);
        let (mesh, inboxes) = mesh(cores, config.mesh_queue_capacity);
        let shared = Arc::new(Shared {
            counters: (0..cores).map(|_| SharedCounters::default()).collect(),
            auth: Box::new(AnonymousPolicy {
                allow_anonymous: config.allow_anonymous,
            }),
            config,
            mesh,
            connections: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            started: Instant::now(),
            ready: AtomicUsize::new(0),
        });
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::with_capacity(cores);
        for (id, inbox) in inboxes.into_iter().enumerate() {
            let shared = shared.clone();
            let bound_tx = bound_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("ringmq-core-{id}"))
                .spawn(move || worker::run(id, shared, inbox, bound_tx))
                .context("spawning a core thread")?;
            threads.push(thread);
        }
        drop(bound_tx);
        let mut addr = addr;
        for _ in 0..cores {
            let bound = bound_rx
                .recv()
                .context("a core exited before binding its listener")?;
            addr = bound.with_context(|| format!("starting a core on {addr}"))?;
        }
        Ok(Broker {
            shared,
            threads,
            addr,
        })
    }

    /// Asks every core to close its connections and stop, then waits for them.
    pub fn shutdown(self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        for core in 0..self.shared.mesh.cores() {
            let mut parcel = Parcel::Shutdown;
            while let Err(back) = self.shared.mesh.try_send(core, parcel) {
                parcel = back;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        for t in self.threads {
            let _ = t.join();
        }
        let totals = metrics::total(&self.shared.counters);
        tracing::info!(?totals, "ringmq stopped");
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
}

/// Runs the broker until SIGINT or SIGTERM, then shuts down gracefully.
pub fn run(config: Config) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("installing signal handlers")?;
    let broker = Broker::start(config)?;
    tracing::info!(addr = %broker.addr, "ringmq listening");
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "shutting down");
    }
    broker.shutdown();
    Ok(())
}
