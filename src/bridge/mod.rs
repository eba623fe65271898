//! Bridges: links from this broker to others, as Mosquitto's bridges are.
//!
//! Each bridge is two MQTT 5.0 (or 3.1.1 to the remote) client connections:
//! one to this broker through an internal listener on 127.0.0.1 that only
//! bridges may use (a random secret generated at start), one to the remote
//! broker. Its local session is an ordinary persistent session, so what it
//! subscribes to queues here while the remote is away, bounded and counted by
//! the same limits as any client's (and kept across restarts with
//! persistence). The links run on one thread of their own, `ringmq-bridges`,
//! with a current-thread tokio runtime: the cores never wait for a remote.

mod link;
mod relay;
mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};

use crate::config::Bridge;
pub use relay::{Drop as DropReason, Side};
use relay::{Relay, Send};

/// How this broker lets its bridges in: the internal listener's address and
/// the password only they know.
#[derive(Clone, Debug)]
pub struct Gate {
    pub addr: SocketAddr,
    pub secret: Arc<str>,
}

impl Gate {
    /// A fresh secret from the OS, as hex.
    pub fn secret() -> anyhow::Result<Arc<str>> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("random secret: {e}"))?;
        Ok(bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into())
    }
}

/// One bridge's state and totals, read by the metrics endpoint and `$SYS`.
#[derive(Debug, Default)]
pub struct Stats {
    pub name: String,
    /// Where `$SYS` says whether the remote link is up (the bridge's
    /// `notification_topic`, as Mosquitto publishes it locally too).
    pub state_topic: String,
    /// Index: [`Side`].
    pub up: [AtomicBool; 2],
    /// Messages across, by the side they came from.
    pub forwarded: [AtomicU64; 2],
    /// By [`DropReason`].
    pub dropped: [AtomicU64; 4],
    /// Messages held by the bridge, by the side they came from.
    pub pending: [AtomicU64; 2],
    /// Times the remote link came up.
    pub connects: AtomicU64,
    /// Attempts to connect to the remote that failed (refused, unreachable,
    /// a TLS handshake or CONNACK that failed).
    pub connect_failures: AtomicU64,
    pub duplicates: AtomicU64,
    pub refused_filters: AtomicU64,
}

impl Stats {
    pub fn new(bridge: &Bridge) -> Stats {
        Stats {
            name: bridge.name.clone(),
            state_topic: bridge.notification_topic.clone(),
            ..Stats::default()
        }
    }

    /// What the metrics endpoint reports.
    pub fn scrape(&self) -> crate::server::BridgeScrape {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let sides = |a: &[AtomicU64; 2]| [get(&a[0]), get(&a[1])];
        crate::server::BridgeScrape {
            name: self.name.clone(),
            up: [0, 1].map(|i| self.up[i].load(Ordering::Relaxed)),
            forwarded: sides(&self.forwarded),
            pending: sides(&self.pending),
            dropped: DropReason::ALL
                .iter()
                .map(|d| (d.name(), get(&self.dropped[*d as usize])))
                .collect(),
            connects: get(&self.connects),
            connect_failures: get(&self.connect_failures),
            duplicates: get(&self.duplicates),
        }
    }

    fn publish(&self, relay: &Relay) {
        let c = &relay.counts;
        for side in [Side::Local, Side::Remote] {
            let i = side as usize;
            self.up[i].store(relay.is_up(side), Ordering::Relaxed);
            self.forwarded[i].store(c.forwarded[i], Ordering::Relaxed);
            self.pending[i].store(relay.pending(side) as u64, Ordering::Relaxed);
        }
        for (slot, n) in self.dropped.iter().zip(c.dropped) {
            slot.store(n, Ordering::Relaxed);
        }
        self.duplicates.store(c.duplicates, Ordering::Relaxed);
        self.refused_filters
            .store(c.refused_filters, Ordering::Relaxed);
    }
}

/// Loads every bridge's TLS files, as the start would (`--test-config`).
pub fn check_files(bridges: &[Bridge]) -> anyhow::Result<()> {
    for bridge in bridges {
        if let Some(tls) = &bridge.tls {
            tls::client_config(tls).with_context(|| format!("[[bridge]] {:?}", bridge.name))?;
        }
    }
    Ok(())
}

/// The running bridges: their thread and the switch that stops them.
pub struct Bridges {
    thread: Option<std::thread::JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

/// How long stopping waits for the links to say goodbye.
const STOP_GRACE: Duration = Duration::from_secs(2);

impl Bridges {
    /// Loads each bridge's TLS files (a bad one fails the start) and starts
    /// the thread that runs them all.
    pub fn start(
        bridges: &[Bridge],
        gate: Gate,
        max_packet_size: u32,
        stats: &[Arc<Stats>],
    ) -> anyhow::Result<Bridges> {
        let mut plans = Vec::with_capacity(bridges.len());
        for (bridge, stats) in bridges.iter().zip(stats) {
            let tls = bridge
                .tls
                .as_ref()
                .map(tls::client_config)
                .transpose()
                .with_context(|| format!("[[bridge]] {:?}", bridge.name))?;
            plans.push((Arc::new(bridge.clone()), tls, stats.clone()));
        }
        let (stop, stopped) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("the bridges' runtime")?;
        let thread = std::thread::Builder::new()
            .name("ringmq-bridges".into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                for (bridge, tls, stats) in plans {
                    let dialer = |side| link::Dialer {
                        side,
                        bridge: bridge.clone(),
                        gate: gate.clone(),
                        // Only the remote: the gate is plain loopback.
                        tls: (side == Side::Remote).then(|| tls.clone()).flatten(),
                        max_packet_size,
                        stats: stats.clone(),
                    };
                    let run = run(
                        [dialer(Side::Local), dialer(Side::Remote)],
                        stats,
                        stopped.clone(),
                    );
                    local.spawn_local(run);
                }
                runtime.block_on(local);
            })
            .context("spawning the bridges' thread")?;
        Ok(Bridges {
            thread: Some(thread),
            stop,
        })
    }

    /// Ends every link in order (a DISCONNECT each, the remote's state
    /// topic set to 0) and waits for the thread, at most [`STOP_GRACE`].
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = std::time::Instant::now() + STOP_GRACE;
        while !thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            tracing::warn!("bridges still closing after {STOP_GRACE:?}; not waiting");
        }
    }
}

/// One bridge: its two links and the relay between them.
async fn run(dialers: [link::Dialer; 2], stats: Arc<Stats>, stop: watch::Receiver<bool>) {
    let mut relay = Relay::new(&dialers[0].bridge);
    let name = dialers[0].bridge.name.clone();
    let mut inboxes = Vec::with_capacity(2);
    let mut links = Vec::with_capacity(2);
    for dialer in dialers {
        let (tx, rx) = mpsc::channel(64);
        inboxes.push(rx);
        links.push(tokio::task::spawn_local(link::run(
            dialer,
            tx,
            stop.clone(),
        )));
    }
    let [mut local_rx, mut remote_rx]: [mpsc::Receiver<link::Event>; 2] = inboxes
        .try_into()
        .unwrap_or_else(|_| unreachable!("two links"));
    let mut writers: [Option<link::Writer>; 2] = [None, None];
    let mut open = [true, true];
    loop {
        let (l, r) = (Side::Local as usize, Side::Remote as usize);
        let next = tokio::select! {
            e = local_rx.recv(), if open[l] && relay.accepts(Side::Local) => (Side::Local, e),
            e = remote_rx.recv(), if open[r] && relay.accepts(Side::Remote) => (Side::Remote, e),
            else => break,
        };
        let (side, Some(event)) = next else {
            open[next.0 as usize] = false;
            continue;
        };
        match event {
            link::Event::Up(peer, writer) => {
                writers[side as usize] = Some(writer);
                if side == Side::Remote {
                    stats.connects.fetch_add(1, Ordering::Relaxed);
                }
                relay.up(side, peer);
            }
            link::Event::Down => {
                writers[side as usize] = None;
                relay.down(side);
            }
            link::Event::Packet(packet) => {
                if let Some(note) = relay.packet(side, packet) {
                    tracing::warn!(bridge = %name, "{note}");
                }
            }
        }
        for Send {
            side,
            packet,
            droppable,
        } in relay.drain()
        {
            let sent = writers[side as usize]
                .as_ref()
                .is_some_and(|w| w.send(&packet, droppable));
            if droppable && !sent {
                relay.count_drop(DropReason::Congested);
            }
        }
        stats.publish(&relay);
    }
    for link in links {
        let _ = link.await;
    }
    stats.publish(&relay);
}
