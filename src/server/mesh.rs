//! The cross-core mesh: one bounded lock-free queue per destination core carrying
//! parcels (a batch of router messages, a connection moving cores, or a stop),
//! and a doorbell that wakes the destination's event loop once per burst.
//!
//! Besides the queue's capacity in batches, each pair of cores has a budget
//! in bytes (`mesh_budget`): what one core has sent another and the other has
//! not handled yet. A batch that would exceed it waits on the sender, whose
//! publishers then wait too; so a core that falls behind holds at most the
//! budget per sender, whatever the size of the batches, and a subscriber's
//! queue overshoots its caps after a hold by at most about that much.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use futures::task::AtomicWaker;

use super::accept::Accepted;
use super::transport::Portable;
use crate::router::MeshMsg;

/// A connection moving to the core that owns its client id, after its CONNECT
/// was read and accepted: its socket (no I/O in flight on it) and any TLS or
/// WebSocket state, re-registered with the receiving core's runtime.
pub type Handoff = Accepted<Portable>;

/// What travels between cores.
#[derive(Debug)]
pub enum Parcel {
    /// Router messages, in the order core `from` produced them; `seq`
    /// counts the batches `from` sent to this core (see [`Parcel::Durable`]);
    /// `weight` is what they count against the pair's budget.
    Routing {
        from: usize,
        seq: u64,
        batch: Vec<MeshMsg>,
        weight: usize,
    },
    /// With `persistence_fsync = "always"`: what core `from` journaled for
    /// the batches up to `seq` this core sent it is on disk.
    Durable {
        from: usize,
        seq: u64,
    },
    Handoff(Box<Handoff>),
    /// Messages from other nodes that came through this node's NATS
    /// subscription of `filter`, for this core's subscribers of it.
    Cluster {
        filter: ringmq_proto::topic::TopicFilter,
        msgs: Vec<Arc<ringmq_proto::message::Message>>,
    },
    /// A retained-store update from another node, to the topic's owner core.
    ClusterRetain(Arc<ringmq_proto::message::Message>),
    /// Messages NATS's queue group gave this node for shared group `share`.
    ClusterShared {
        share: ringmq_proto::topic::SharedFilter,
        msgs: Vec<Arc<ringmq_proto::message::Message>>,
    },
    /// The link's connection for shared groups came up (true) or went down:
    /// see `Core::set_cluster_shared`.
    ClusterSharing(bool),
    /// Client `client_id` connected on another node: release its session
    /// (see `Core::release_to_cluster`) and answer with its image.
    ClusterRelease {
        client_id: Arc<str>,
        discard: bool,
        reply: futures::channel::oneshot::Sender<Option<ringmq_proto::durable::SessionImage>>,
    },
    /// A session this node claimed for a client that stopped waiting for it
    /// (see `Core::adopt_from_cluster`): kept here, offline.
    ClusterAdopt(Box<ringmq_proto::durable::SessionImage>),
    /// Messages another node still held for a session that moved here while
    /// it was away (see `Core::merge_from_cluster`); answered with how many
    /// found no session here.
    ClusterMerge {
        image: Box<ringmq_proto::durable::SessionImage>,
        reply: futures::channel::oneshot::Sender<usize>,
    },
    /// The password or ACL rules were reloaded: re-decide every session's
    /// permissions (subscriptions they no longer allow are removed).
    Reauthorize,
    /// A reload changed the limits: these are in force from now on.
    Limits(Arc<crate::config::Limits>),
    /// Stop: close connections and leave the event loop.
    Shutdown,
}

/// Wakes a core's mesh task at most once per burst of sends.
#[derive(Debug, Default)]
pub struct Doorbell {
    waker: AtomicWaker,
    rung: AtomicBool,
}

impl Doorbell {
    pub fn ring(&self) {
        if !self.rung.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Whether a ring came since the last wait.
    pub fn is_rung(&self) -> bool {
        self.rung.load(Ordering::Acquire)
    }

    /// Resolves once rung since the last wait. The flag is cleared before the
    /// caller drains, so a send racing the drain rings again: no lost wake-up.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.rung.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.rung.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// The sending side, shared by all cores.
#[derive(Debug)]
pub struct Mesh {
    senders: Vec<Sender<Parcel>>,
    doorbells: Vec<Arc<Doorbell>>,
    /// Bytes sent and not yet handled, per (sender, receiver): `from * cores + to`.
    in_flight: Vec<AtomicUsize>,
    budget: usize,
}

/// One core's receiving side.
#[derive(Debug)]
pub struct Inbox {
    pub rx: Receiver<Parcel>,
    pub doorbell: Arc<Doorbell>,
}

/// Builds the mesh for `cores` cores, each queue holding `capacity` parcels
/// and each pair of cores at most `budget` bytes of routing batches.
pub fn mesh(cores: usize, capacity: usize, budget: usize) -> (Arc<Mesh>, Vec<Inbox>) {
    let mut senders = Vec::with_capacity(cores);
    let mut doorbells = Vec::with_capacity(cores);
    let mut inboxes = Vec::with_capacity(cores);
    for _ in 0..cores {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let doorbell = Arc::new(Doorbell::default());
        senders.push(tx);
        doorbells.push(doorbell.clone());
        inboxes.push(Inbox { rx, doorbell });
    }
    let in_flight = (0..cores * cores).map(|_| AtomicUsize::new(0)).collect();
    let mesh = Mesh {
        senders,
        doorbells,
        in_flight,
        budget,
    };
    (Arc::new(mesh), inboxes)
}

impl Mesh {
    pub fn cores(&self) -> usize {
        self.senders.len()
    }

    /// What wakes core `core`'s mesh task (also rung by its log writer).
    pub fn doorbell(&self, core: usize) -> Arc<Doorbell> {
        self.doorbells[core].clone()
    }

    /// Sends without blocking; a full queue, or a routing batch past the
    /// pair's budget, hands the parcel back so the caller can apply
    /// back-pressure instead of growing memory.
    pub fn try_send(&self, core: usize, parcel: Parcel) -> Result<(), Parcel> {
        let charged = match &parcel {
            Parcel::Routing { from, weight, .. } => {
                let pair = &self.in_flight[from * self.cores() + core];
                if !self.charge(pair, *weight) {
                    return Err(parcel);
                }
                Some((pair, *weight))
            }
            _ => None,
        };
        match self.senders[core].try_send(parcel) {
            Ok(()) => {
                self.doorbells[core].ring();
                Ok(())
            }
            Err(TrySendError::Full(p)) | Err(TrySendError::Disconnected(p)) => {
                if let Some((pair, weight)) = charged {
                    pair.fetch_sub(weight, Ordering::AcqRel);
                }
                Err(p)
            }
        }
    }

    /// Adds `weight` to a pair's bytes in flight unless that would pass the
    /// budget; a pair with nothing in flight takes any batch, so one larger
    /// than the budget still goes. Only the sender adds to its pair, so the
    /// load and the add do not race with another add.
    fn charge(&self, pair: &AtomicUsize, weight: usize) -> bool {
        let now = pair.load(Ordering::Acquire);
        if now > 0 && now + weight > self.budget {
            return false;
        }
        pair.fetch_add(weight, Ordering::AcqRel);
        true
    }

    /// Core `to` handled a routing batch of `weight` from core `from`.
    pub fn handled(&self, from: usize, to: usize, weight: usize) {
        self.in_flight[from * self.cores() + to].fetch_sub(weight, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(from: usize, weight: usize) -> Parcel {
        Parcel::Routing {
            from,
            seq: 0,
            batch: Vec::new(),
            weight,
        }
    }

    #[test]
    fn a_pair_past_its_budget_waits_until_the_receiver_handles_a_batch() {
        let (mesh, inboxes) = mesh(2, 16, 1000);
        assert!(mesh.try_send(1, batch(0, 600)).is_ok());
        assert!(mesh.try_send(1, batch(0, 600)).is_err(), "1200 > 1000");
        assert!(
            mesh.try_send(0, batch(1, 600)).is_ok(),
            "other pairs have their own budget"
        );
        assert!(inboxes[1].rx.try_recv().is_ok());
        mesh.handled(0, 1, 600);
        assert!(mesh.try_send(1, batch(0, 600)).is_ok());
    }

    #[test]
    fn a_batch_larger_than_the_budget_goes_when_nothing_is_in_flight() {
        let (mesh, _inboxes) = mesh(2, 16, 1000);
        assert!(mesh.try_send(1, batch(0, 5000)).is_ok());
        assert!(mesh.try_send(1, batch(0, 1)).is_err());
        mesh.handled(0, 1, 5000);
        assert!(mesh.try_send(1, batch(0, 1)).is_ok());
    }

    #[test]
    fn a_full_queue_gives_back_the_charge() {
        let (mesh, _inboxes) = mesh(2, 1, 1000);
        assert!(mesh.try_send(1, batch(0, 10)).is_ok());
        assert!(
            mesh.try_send(1, batch(0, 10)).is_err(),
            "queue of one is full"
        );
        assert_eq!(mesh.in_flight[1].load(Ordering::Acquire), 10);
    }
}
