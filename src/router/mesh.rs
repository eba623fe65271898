//! The cross-core mesh: one bounded lock-free queue per destination core carrying
//! batches, and a doorbell that wakes the destination's event loop once per burst.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use bytes::BytesMut;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use futures::task::AtomicWaker;

use crate::codec::Connect;
use crate::message::Message;
use crate::topic::TopicFilter;

/// What cores tell each other.
#[derive(Debug)]
pub enum MeshMsg {
    /// A publish from another core, for this core's subscribers.
    Publish {
        msg: Arc<Message>,
    },
    /// A retained-store update. To the topic's owner core (`from_owner` false),
    /// which orders updates and forwards them to every replica (`from_owner`
    /// true), so all cores apply one topic's updates in the same order.
    Retain {
        msg: Arc<Message>,
        from_owner: bool,
    },
    /// `core` gained (or lost) its first (last) subscriber of `filter`. With `ack`,
    /// the sender waits for an [`MeshMsg::InterestAck`] before answering SUBACK.
    Interest {
        filter: TopicFilter,
        core: usize,
        add: bool,
        ack: Option<u64>,
    },
    InterestAck {
        token: u64,
    },
    /// A shared group's connected members on `core` changed by `delta`.
    SharedInterest {
        share: Arc<str>,
        core: usize,
        delta: i32,
        ack: Option<u64>,
    },
    /// A message for one member of shared group `share` on this core. `hops`
    /// bounds re-forwarding when the members left in the meantime.
    SharedPublish {
        msg: Arc<Message>,
        share: Arc<str>,
        hops: u8,
    },
    /// A connection whose client id this core owns, after its CONNECT was read.
    Handoff(Box<Handoff>),
    /// Stop: close connections and leave the event loop.
    Shutdown,
}

/// A connection moving to the core that owns its client id.
#[derive(Debug)]
pub struct Handoff {
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
    pub connect: Box<Connect>,
    pub client_id: Arc<str>,
    /// True when the broker assigned the id (CONNACK must carry it in 5.0).
    pub assigned_id: bool,
    /// Bytes read after the CONNECT frame.
    pub leftover: BytesMut,
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
    senders: Vec<Sender<Vec<MeshMsg>>>,
    doorbells: Vec<Arc<Doorbell>>,
}

/// One core's receiving side.
#[derive(Debug)]
pub struct Inbox {
    pub rx: Receiver<Vec<MeshMsg>>,
    pub doorbell: Arc<Doorbell>,
}

/// Builds the mesh for `cores` cores, each queue holding `capacity` batches.
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

    /// Sends a batch without blocking; a full queue hands the batch back so the
    /// caller can apply back-pressure instead of growing memory.
    pub fn try_send(&self, core: usize, batch: Vec<MeshMsg>) -> Result<(), Vec<MeshMsg>> {
        match self.senders[core].try_send(batch) {
            Ok(()) => {
                self.doorbells[core].ring();
                Ok(())
            }
            Err(TrySendError::Full(batch)) | Err(TrySendError::Disconnected(batch)) => Err(batch),
        }
    }
}
