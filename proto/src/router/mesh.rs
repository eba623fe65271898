//! What cores tell each other. The queues that carry these live in the server;
//! the router only produces them (into its [`super::Outbox`]) and consumes
//! them ([`super::Core::handle_mesh`]).

use std::sync::Arc;

use super::barrier::Reply;
use crate::message::Message;
use crate::topic::{SharedFilter, TopicFilter};

/// One message between cores' routers.
#[derive(Debug)]
pub enum MeshMsg {
    /// A publish from another core, for this core's subscribers.
    Publish { msg: Arc<Message> },
    /// A retained-store update. To the topic's owner core (`from_owner` false),
    /// which orders updates and forwards them to every replica (`from_owner`
    /// true), so all cores apply one topic's updates in the same order. With
    /// `reply`, the receiver acknowledges once it applied the update (the
    /// owner: once every replica did).
    Retain {
        msg: Arc<Message>,
        from_owner: bool,
        reply: Option<Reply>,
    },
    /// `core` gained (or lost) its first (last) subscriber of `filter`. With `ack`,
    /// the sender waits for an [`MeshMsg::Ack`] before answering SUBACK.
    Interest {
        filter: TopicFilter,
        core: usize,
        add: bool,
        ack: Option<u64>,
    },
    /// One acknowledgement of the receiver's barrier `token`.
    Ack { token: u64 },
    /// A subscriber's full queue starts (or stops) holding back publisher
    /// `publisher`, whose session lives on the receiving core.
    Hold { publisher: Arc<str>, on: bool },
    /// A shared group's connected members on `core` changed by `delta`.
    SharedInterest {
        share: SharedFilter,
        core: usize,
        delta: i32,
        ack: Option<u64>,
    },
    /// A message for one member of shared group `share` on this core. `hops`
    /// bounds re-forwarding when the members left in the meantime.
    SharedPublish {
        msg: Arc<Message>,
        share: SharedFilter,
        hops: u8,
    },
}

/// What any message costs between cores besides its message: the enum, the
/// batch slot, the queue's share.
const MESH_MSG_BASE: usize = 64;

impl MeshMsg {
    /// Approximate bytes held while this message travels between cores, for
    /// the per-pair budget that bounds what a slow core can be sent.
    pub fn weight(&self) -> usize {
        match self {
            MeshMsg::Publish { msg }
            | MeshMsg::Retain { msg, .. }
            | MeshMsg::SharedPublish { msg, .. } => msg.weight(),
            _ => MESH_MSG_BASE,
        }
    }
}
