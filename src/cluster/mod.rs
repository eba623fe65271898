//! The cluster: ringmq nodes sharing their messages over NATS.
//!
//! Each node keeps one NATS connection, on a thread of its own
//! (`ringmq-cluster`, a current-thread tokio runtime: the cores never wait
//! for NATS). The cores hand it what their clients publish and the filters
//! they hold through [`Handle`]; it publishes each message once, under the
//! message's subject (see `ringmq_proto::topic::subject`), and subscribes
//! once per distinct filter of the node, so NATS carries a message only to
//! nodes that want it. What arrives goes to the interested cores through
//! the same bounded queues the cores use among themselves. The connection
//! has echo off: a node never hears its own messages. Shared groups use
//! NATS queue groups on a second connection, with echo on (see
//! `ringmq_proto::router` on the cluster).
//!
//! Retained messages also go to a second subject space, which JetStream
//! keeps in a stream of the last message per topic: every node follows it
//! into its own retained store, from the start (so a node that starts later
//! has them all), in one order for all nodes. Without JetStream, nodes
//! follow each other's updates live only.
//!
//! Persistent sessions move with their clients between nodes (see
//! [`sessions`]).

mod link;
mod retained;
pub mod sessions;
pub mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ringmq_proto::durable::SessionImage;
use ringmq_proto::message::Message;
use ringmq_proto::router::ClusterMsg;
use ringmq_proto::topic::{SharedFilter, TopicFilter};
use tokio::sync::{mpsc, watch};

use crate::config::Cluster;
use crate::server::mesh::Mesh;

/// Why a message did not go out to the other nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// `link_buffer` was full: NATS is slower than the node's publishers,
    /// or unreachable.
    LinkFull,
    /// Its subject or body is larger than NATS takes.
    TooLarge,
    /// The NATS client refused it (the connection closed for good).
    Failed,
}

impl Drop {
    pub const ALL: [Drop; 3] = [Drop::LinkFull, Drop::TooLarge, Drop::Failed];

    pub fn name(self) -> &'static str {
        match self {
            Drop::LinkFull => "link_full",
            Drop::TooLarge => "too_large",
            Drop::Failed => "failed",
        }
    }
}

/// The link's state and totals, read by the metrics endpoint and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connected to a NATS server now.
    pub up: AtomicBool,
    /// The connection for shared groups (queue subscriptions) is up now.
    pub shared_up: AtomicBool,
    /// Retained messages come from JetStream's stream (not live only).
    pub retained_stream: AtomicBool,
    /// JetStream takes this node's retained updates (they are published
    /// with its acknowledgement): from the first time the stream is found
    /// until an update it did not take is given up.
    pub retained_jetstream: AtomicBool,
    /// Retained updates have been followed, live or from the stream.
    pub retained_following: AtomicBool,
    /// JetStream's session bucket is open: persistent sessions follow their
    /// clients between nodes.
    pub sessions_ready: AtomicBool,
    /// Times the link (re)connected to NATS.
    pub connects: AtomicU64,
    /// Messages published to the other nodes.
    pub published: AtomicU64,
    /// Messages from other nodes, as received (one per matching filter).
    pub received: AtomicU64,
    /// Bodies from NATS that were not a message of this format.
    pub invalid: AtomicU64,
    /// By [`Drop`].
    pub dropped: [AtomicU64; 3],
    /// NATS subscriptions held now (one per distinct filter and per shared
    /// group, one for retained updates).
    pub subscriptions: AtomicUsize,
    /// Bytes of messages waiting for the link now.
    pub queued_bytes: AtomicUsize,
    /// Times the NATS client dropped messages for a subscription this link
    /// read too slowly (its cores were full).
    pub slow_consumer: AtomicU64,
    /// Sessions brought here from another node.
    pub sessions_in: AtomicU64,
    /// Sessions handed to another node.
    pub sessions_out: AtomicU64,
    /// Sessions brought back from their record in JetStream, the node that
    /// held them being gone.
    pub sessions_recovered: AtomicU64,
    /// Sessions this node held when it was lost, handed on its return to the
    /// node that took them over meanwhile.
    pub sessions_returned: AtomicU64,
    /// Queued messages of moving sessions that did not reach the new node.
    pub session_messages_lost: AtomicU64,
}

impl Stats {
    pub fn dropped(&self, why: Drop) -> u64 {
        self.dropped[why as usize].load(Ordering::Relaxed)
    }

    fn drop_one(&self, why: Drop) {
        self.dropped[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// What the metrics endpoint reports.
    pub fn scrape(&self) -> crate::server::ClusterScrape {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        crate::server::ClusterScrape {
            up: self.up.load(Ordering::Relaxed),
            connects: get(&self.connects),
            published: get(&self.published),
            received: get(&self.received),
            invalid: get(&self.invalid),
            dropped: Drop::ALL.map(|d| (d.name(), self.dropped(d))).to_vec(),
            subscriptions: self.subscriptions.load(Ordering::Relaxed) as u64,
            queued_bytes: self.queued_bytes.load(Ordering::Relaxed) as u64,
            slow_consumer: get(&self.slow_consumer),
            sessions: [
                get(&self.sessions_in),
                get(&self.sessions_out),
                get(&self.sessions_recovered),
                get(&self.sessions_returned),
            ],
            session_messages_lost: get(&self.session_messages_lost),
        }
    }
}

/// What the cores send the link.
#[derive(Debug)]
enum Outgoing {
    Publish(Vec<Arc<Message>>),
    /// Core `core` gained (lost) its first (last) subscriber of `filter`.
    Interest {
        core: usize,
        filter: TopicFilter,
        add: bool,
    },
    /// Core `core` gained (lost) its first (last) member of `share`.
    SharedInterest {
        core: usize,
        share: SharedFilter,
        add: bool,
    },
    /// Persistent session `client_id` changed (`None`: ended), its client
    /// `connected` or not: record it in JetStream while this node owns it.
    Session {
        client_id: Arc<str>,
        meta: Option<Box<SessionImage>>,
        connected: bool,
    },
    /// A client connecting here: claim its session for this node and bring
    /// it from the node that held it (nothing with `clean`).
    Claim {
        client_id: Arc<str>,
        clean: bool,
        reply: futures::channel::oneshot::Sender<Option<SessionImage>>,
    },
}

/// The cores' side of the link, shared by all of them.
#[derive(Debug)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Outgoing>,
    budget: usize,
    pub stats: Stats,
}

impl Handle {
    /// A core's cluster items after one call into it. Publishes are bounded
    /// by `link_buffer` (past it they are dropped and counted); interest
    /// changes are never dropped (the link drains them even while NATS is
    /// away, so they are bounded by how fast clients subscribe).
    pub fn send(&self, core: usize, items: impl Iterator<Item = ClusterMsg>) {
        let mut publishes = Vec::new();
        for item in items {
            match item {
                ClusterMsg::Publish(msg) => {
                    if self.charge(msg.weight()) {
                        publishes.push(msg);
                    } else {
                        self.stats.drop_one(Drop::LinkFull);
                    }
                }
                ClusterMsg::Interest { filter, add } => {
                    self.flush(&mut publishes);
                    self.push(Outgoing::Interest { core, filter, add });
                }
                ClusterMsg::SharedInterest { share, add } => {
                    self.flush(&mut publishes);
                    self.push(Outgoing::SharedInterest { core, share, add });
                }
                ClusterMsg::Session {
                    client_id,
                    meta,
                    connected,
                } => {
                    self.push(Outgoing::Session {
                        client_id,
                        meta,
                        connected,
                    });
                }
            }
        }
        self.flush(&mut publishes);
    }

    fn flush(&self, publishes: &mut Vec<Arc<Message>>) {
        if !publishes.is_empty() {
            self.push(Outgoing::Publish(std::mem::take(publishes)));
        }
    }

    /// Claims `client_id`'s session for this node (JetStream KV) and takes
    /// it from the node that held it: its image, to adopt before the
    /// attach, or `None` (no other node had it, `clean`, or the cluster
    /// could not say).
    pub async fn claim(&self, client_id: Arc<str>, clean: bool) -> Option<SessionImage> {
        let (reply, answer) = futures::channel::oneshot::channel();
        self.tx
            .send(Outgoing::Claim {
                client_id,
                clean,
                reply,
            })
            .ok()?;
        answer.await.ok().flatten()
    }

    fn charge(&self, weight: usize) -> bool {
        let queued = &self.stats.queued_bytes;
        let mut now = queued.load(Ordering::Relaxed);
        loop {
            if now + weight > self.budget {
                return false;
            }
            match queued.compare_exchange_weak(
                now,
                now + weight,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => now = seen,
            }
        }
    }

    fn release(&self, weight: usize) {
        self.stats.queued_bytes.fetch_sub(weight, Ordering::AcqRel);
    }

    fn push(&self, item: Outgoing) {
        // An error: the link has stopped (the broker is stopping).
        if let Err(mpsc::error::SendError(Outgoing::Publish(msgs))) = self.tx.send(item) {
            for msg in msgs {
                self.release(msg.weight());
                self.stats.drop_one(Drop::Failed);
            }
        }
    }
}

/// The running link: its thread and the switch that stops it.
pub struct Link {
    thread: Option<std::thread::JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

/// How long stopping waits for what the link holds to reach NATS.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The link's half of the channel, until [`Link::start`] takes it.
pub struct Pending {
    rx: mpsc::UnboundedReceiver<Outgoing>,
    handle: Arc<Handle>,
}

/// The handle the cores send through, and what the link will read.
pub fn channel(cluster: &Cluster) -> (Arc<Handle>, Pending) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = Arc::new(Handle {
        tx,
        budget: cluster.link_buffer,
        stats: Stats::default(),
    });
    let pending = Pending {
        rx,
        handle: handle.clone(),
    };
    (handle, pending)
}

impl Link {
    /// Starts the link's thread. It connects in the background and keeps
    /// reconnecting: a NATS that is down delays nothing here. `restored`:
    /// the persistent sessions the node brought back from its store, which
    /// it hands on to any node that took them over while it was away.
    pub fn start(
        cluster: &Cluster,
        pending: Pending,
        mesh: Arc<Mesh>,
        started: Instant,
        restored: Vec<Arc<str>>,
    ) -> anyhow::Result<Link> {
        let options = link::options(cluster, pending.handle.clone(), None)?;
        let shared_options = link::options(cluster, pending.handle.clone(), Some(mesh.clone()))?;
        let plan = link::Plan {
            servers: cluster.nats_servers.clone(),
            node: cluster.node_name.clone(),
            prefix: cluster.subject_prefix.clone(),
            mesh,
            handle: pending.handle,
            epoch: link::epoch(started),
            jetstream_replicas: cluster.jetstream_replicas,
        };
        let (stop, stopped) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("the cluster link's runtime")?;
        let rx = pending.rx;
        let thread = std::thread::Builder::new()
            .name("ringmq-cluster".into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                let run = link::run(plan, [options, shared_options], rx, stopped, restored);
                local.block_on(&runtime, run);
            })
            .context("spawning the cluster link's thread")?;
        Ok(Link {
            thread: Some(thread),
            stop,
        })
    }

    /// Publishes what the link holds (for at most [`STOP_GRACE`]) and
    /// closes the NATS connection.
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = Instant::now() + STOP_GRACE + Duration::from_secs(1);
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            tracing::warn!("the cluster link did not stop in time");
        }
    }
}
