//! The cross-core mesh: one bounded lock-free queue per destination core carrying
//! parcels (a batch of router messages, a connection moving cores, or a stop),
//! and a doorbell that wakes the destination's event loop once per burst.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// counts the batches `from` sent to this core (see [`Parcel::Durable`]).
    Routing {
        from: usize,
        seq: u64,
        batch: Vec<MeshMsg>,
    },
    /// With `persistence_fsync = "always"`: what core `from` journaled for
    /// the batches up to `seq` this core sent it is on disk.
    Durable {
        from: usize,
        seq: u64,
    },
    Handoff(Box<Handoff>),
    /// The password or ACL rules were reloaded: re-decide every session's
    /// permissions (subscriptions they no longer allow are removed).
    Reauthorize,
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
}

/// One core's receiving side.
#[derive(Debug)]
pub struct Inbox {
    pub rx: Receiver<Parcel>,
    pub doorbell: Arc<Doorbell>,
}

/// Builds the mesh for `cores` cores, each queue holding `capacity` parcels.
pub fn mesh(cores: usize, capacity: usize) -> (Arc<Mesh>, Vec<Inbox>) {
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
    (Arc::new(Mesh { senders, doorbells }), inboxes)
}

impl Mesh {
    pub fn cores(&self) -> usize {
        self.senders.len()
    }

    /// What wakes core `core`'s mesh task (also rung by its log writer).
    pub fn doorbell(&self, core: usize) -> Arc<Doorbell> {
        self.doorbells[core].clone()
    }

    /// Sends without blocking; a full queue hands the parcel back so the caller
    /// can apply back-pressure instead of growing memory.
    pub fn try_send(&self, core: usize, parcel: Parcel) -> Result<(), Parcel> {
        match self.senders[core].try_send(parcel) {
            Ok(()) => {
                self.doorbells[core].ring();
                Ok(())
            }
            Err(TrySendError::Full(p)) | Err(TrySendError::Disconnected(p)) => Err(p),
        }
    }
}
