//! Back-pressure from a slow subscriber to its publishers, on any core
//! (`slow_consumer_policy = "backpressure"`). A QoS 1/2 message for a
//! connected client whose queue is full is queued anyway (it may have been
//! acknowledged already) and its publisher is held back: the publisher's
//! core stops reading its connection (so TCP pushes back to the device)
//! until the queue is down to half its caps. Per subscriber, the publishers
//! it holds; per publisher, how many subscribers hold it: no lock and no
//! credit exchange per message, one mesh message when a hold starts and one
//! when it ends. What a held publisher sent before its core saw the hold
//! still arrives, so a queue overshoots its caps by at most a read buffer
//! and a mesh batch per publisher (`queued_over_cap`).
//!
//! A subscriber that stops reading altogether holds its publishers for at
//! most `max_stall`: then it is disconnected as a slow consumer, which ends
//! its holds; offline, its session keeps its caps and drops what exceeds them.

use std::sync::Arc;

use super::{owner_core, CloseReason, ConnId, Core, MeshMsg, Notice, SessionKey};
use crate::time::Time;

/// A subscriber holding publishers back. Boxed in its session's entry: few
/// sessions ever hold one, and every session has an entry.
#[derive(Debug)]
pub(super) struct Holding {
    publishers: Vec<Arc<str>>,
    /// When the subscriber last wrote to its client.
    stalled_since: Time,
}

impl Core {
    /// Session `key`'s queue went over its caps with a message from
    /// `publisher`: hold that publisher back (once per subscriber).
    pub(super) fn hold_back(&mut self, key: SessionKey, publisher: Option<Arc<str>>, now: Time) {
        let Some(publisher) = publisher else {
            return; // a will or a restored message: no connection to slow
        };
        let Some(e) = self.sessions.get_mut(key) else {
            return;
        };
        match e.holding.as_deref_mut() {
            Some(h) if h.publishers.iter().any(|p| **p == *publisher) => return,
            Some(h) => h.publishers.push(publisher.clone()),
            None => {
                e.holding = Some(Box::new(Holding {
                    publishers: vec![publisher.clone()],
                    stalled_since: now,
                }));
                self.holders.push(key);
            }
        }
        let subscriber = e.session.client_id().clone();
        self.outbox.notices.push(Notice::HoldStarted {
            subscriber,
            publisher: publisher.clone(),
        });
        self.counters.publishers_throttled += 1;
        self.send_hold(publisher, true);
    }

    /// Session `key` wrote to its client: it is reading, so not stalled, and
    /// once its queue is down to half its caps its publishers may go on.
    pub(super) fn made_progress(&mut self, key: SessionKey, now: Time) {
        let Some(e) = self.sessions.get_mut(key) else {
            return;
        };
        let Some(h) = e.holding.as_deref_mut() else {
            return;
        };
        h.stalled_since = now;
        if e.session.queue_drained(&self.limits) {
            self.release_holds(key);
        }
    }

    /// Lets every publisher session `key` holds go on (it drained, went
    /// offline or ended).
    pub(super) fn release_holds(&mut self, key: SessionKey) {
        let Some(e) = self.sessions.get_mut(key) else {
            return;
        };
        let Some(h) = e.holding.take() else {
            return;
        };
        for publisher in h.publishers {
            self.send_hold(publisher, false);
        }
        self.holders.retain(|&k| k != key);
    }

    fn send_hold(&mut self, publisher: Arc<str>, on: bool) {
        let core = owner_core(&publisher, self.cores);
        if core == self.id {
            self.apply_hold(&publisher, on);
        } else {
            self.outbox.send(core, MeshMsg::Hold { publisher, on });
        }
    }

    /// A subscriber (here or on another core) starts or stops holding back
    /// publisher `publisher`, whose session lives here.
    pub(super) fn apply_hold(&mut self, publisher: &str, on: bool) {
        let Some(&key) = self.by_client_id.get(publisher) else {
            return self.apply_orphan_hold(publisher, on);
        };
        let e = &mut self.sessions[key];
        if on {
            e.held_by += 1;
        } else {
            e.held_by = e.held_by.saturating_sub(1);
            if e.held_by == 0 {
                if let Some(conn) = e.conn {
                    self.outbox.resume.push(conn);
                }
            }
        }
    }

    /// A hold for client id `publisher`, which has no session here.
    fn apply_orphan_hold(&mut self, publisher: &str, on: bool) {
        if on {
            *self.orphan_holds.entry(publisher.into()).or_default() += 1;
        } else if let Some(n) = self.orphan_holds.get_mut(publisher) {
            *n -= 1;
            if *n == 0 {
                self.orphan_holds.remove(publisher);
            }
        }
    }

    /// Session `key` ends while held: its holds wait for the client id's
    /// next session.
    pub(super) fn orphan_holds_of(&mut self, key: SessionKey) {
        let e = &self.sessions[key];
        if e.held_by > 0 {
            let id = e.session.client_id().clone();
            *self.orphan_holds.entry(id).or_default() += e.held_by;
        }
    }

    /// Holds that waited for a new session under `client_id`.
    pub(super) fn inherited_holds(&mut self, client_id: &str) -> u32 {
        self.orphan_holds.remove(client_id).unwrap_or(0)
    }

    /// True while connection `conn` of session `key` must not be read: a
    /// subscriber it feeds has a full queue.
    pub fn is_held_back(&self, key: SessionKey, conn: ConnId) -> bool {
        self.sessions
            .get(key)
            .is_some_and(|e| e.conn == Some(conn) && e.held_by > 0)
    }

    /// Disconnects the clients that held publishers back for `max_stall`
    /// without reading (called from the tick).
    pub(super) fn end_stalls(&mut self, now: Time) {
        let max_stall = self.limits.max_stall;
        let stalled: Vec<SessionKey> = self
            .holders
            .iter()
            .copied()
            .filter(|&key| {
                self.sessions.get(key).is_some_and(|e| {
                    e.holding
                        .as_ref()
                        .is_some_and(|h| now.since(h.stalled_since) >= max_stall)
                })
            })
            .collect();
        for key in stalled {
            let e = &self.sessions[key];
            if let Some(conn) = e.conn {
                let client = e.session.client_id().clone();
                self.outbox.notices.push(Notice::SlowConsumer { client });
                self.counters.slow_consumers_disconnected += 1;
                self.outbox.close.push((conn, CloseReason::SlowConsumer));
            }
            self.release_holds(key);
        }
    }
}
