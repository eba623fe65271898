//! Work that completes only once other cores acknowledged something: a SUBACK
//! (every core knows the new subscriptions), the PUBACK of a retained PUBLISH
//! (every core's replica holds it). The connection that waits for it reads
//! nothing more until then, which keeps its acknowledgements in order.

use super::subscriptions::PendingSubscribe;
use super::{ConnId, Core, MeshMsg, SessionKey};
use crate::session::{PublishAck, Routing};
use crate::time::Time;

/// What to do once every acknowledgement of a barrier came in.
#[derive(Debug)]
pub(super) enum Then {
    /// Answer a SUBSCRIBE: SUBACK, then the retained messages it matches.
    SubAck(PendingSubscribe),
    /// Acknowledge a retained PUBLISH.
    PubAck {
        key: SessionKey,
        conn: ConnId,
        ack: PublishAck,
        routing: Routing,
    },
    /// Acknowledge, in turn, to the core that asked (the owner of a retained
    /// topic, once every replica applied the update it ordered).
    Relay(Reply),
}

/// Where an acknowledgement goes: barrier `token` on `core`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    pub core: usize,
    pub token: u64,
}

#[derive(Debug)]
pub(super) struct Barrier {
    remaining: usize,
    then: Then,
}

impl Core {
    /// A token no barrier of this core used before.
    pub(super) fn new_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    /// Waits for `acks` acknowledgements of `token`, then does `then`; with
    /// none to wait for, does it now. The connection a SUBACK or PUBACK is for
    /// pauses until then. Returns where the acknowledgements must go.
    pub(super) fn open_barrier(&mut self, token: u64, acks: usize, then: Then, now: Time) -> Reply {
        if acks == 0 {
            self.complete(then, now);
        } else {
            if let Some(key) = then.session() {
                self.set_paused(key, true);
            }
            let barrier = Barrier {
                remaining: acks,
                then,
            };
            self.barriers.insert(token, barrier);
        }
        Reply {
            core: self.id,
            token,
        }
    }

    /// One acknowledgement of barrier `token` arrived.
    pub(super) fn barrier_acked(&mut self, token: u64, now: Time) {
        let Some(barrier) = self.barriers.get_mut(&token) else {
            return;
        };
        barrier.remaining -= 1;
        if barrier.remaining == 0 {
            if let Some(barrier) = self.barriers.remove(&token) {
                self.complete(barrier.then, now);
            }
        }
    }

    /// Sends an acknowledgement, locally or to another core.
    pub(super) fn acknowledge_to(&mut self, reply: Reply, now: Time) {
        if reply.core == self.id {
            self.barrier_acked(reply.token, now);
        } else {
            let ack = MeshMsg::Ack { token: reply.token };
            self.outbox.send(reply.core, ack);
        }
    }

    pub(super) fn complete(&mut self, then: Then, now: Time) {
        match then {
            Then::SubAck(pending) => {
                let (key, conn) = (pending.key, pending.conn);
                if self.complete_subscribe(pending, now) {
                    self.resume_reading(key, conn);
                }
            }
            Then::PubAck {
                key,
                conn,
                ack,
                routing,
            } => match self.sessions.get_mut(key) {
                Some(e) if e.conn == Some(conn) => {
                    e.session.acknowledge(ack, routing);
                    self.mark_dirty(key);
                    self.resume_reading(key, conn);
                }
                _ => {}
            },
            Then::Relay(reply) => self.acknowledge_to(reply, now),
        }
    }

    /// The connection may read again.
    fn resume_reading(&mut self, key: SessionKey, conn: ConnId) {
        self.set_paused(key, false);
        self.outbox.resume.push(conn);
    }

    fn set_paused(&mut self, key: SessionKey, paused: bool) {
        if let Some(e) = self.sessions.get_mut(key) {
            e.paused = paused;
        }
    }

    /// True while connection `conn` of session `key` waits for a barrier.
    pub fn is_paused(&self, key: SessionKey, conn: ConnId) -> bool {
        self.sessions
            .get(key)
            .is_some_and(|e| e.conn == Some(conn) && e.paused)
    }
}

impl Then {
    /// The session whose connection waits for this, if any.
    fn session(&self) -> Option<SessionKey> {
        match self {
            Then::SubAck(pending) => Some(pending.key),
            Then::PubAck { key, .. } => Some(*key),
            Then::Relay(_) => None,
        }
    }
}
