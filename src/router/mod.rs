//! Per-core routing: this core's sessions, its subscription trie, the replicated
//! interest index, shared-subscription counts and retained store, and the
//! outboxes to other cores.
//!
//! This is the only code that knows other cores exist. It performs no I/O: the
//! server drains [`Core::dirty`] (connections with bytes to write) and
//! [`Core::closing`] (connections to close) after each call, and ships the
//! outboxes with [`Core::flush`]. Time comes in as `now` (milliseconds on the
//! broker's clock, shared by all cores).

mod delivery;
mod interest;
pub mod mesh;
mod shared;
mod subscriptions;

use std::collections::HashMap;
use std::sync::Arc;

use futures::channel::oneshot;
use slab::Slab;

pub use interest::{owner_core, CoreSet};
pub use mesh::{mesh, Handoff, Inbox, Mesh, MeshMsg};
pub use subscriptions::PendingSubscribe;

use crate::codec::{Connect, Packet, SubOptions};
use crate::config::{Limits, SharedStrategy};
use crate::message::Message;
use crate::metrics::Counters;
use crate::session::{Event, Routing, Session, Violation, WillRelease};
use crate::store::RetainedStore;
use crate::topic::{trie::MatchScratch, Trie};
use shared::{GroupCounts, Picker, SharedGroups};

/// Index of a session in its core's table.
pub type SessionKey = usize;
/// Identifies one connection (a session outlives many).
pub type ConnId = u64;

/// Why the router asks the server to close a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    SessionTakenOver,
    KeepAliveTimeout,
    ServerShutdown,
    /// The socket failed while writing.
    WriteFailed,
}

#[derive(Clone, Copy, Debug)]
struct Subscriber {
    key: SessionKey,
    opts: SubOptions,
    id: Option<u32>,
}

#[derive(Debug)]
struct Entry {
    /// Boxed: the slab holds many entries and grows by doubling, so its slots
    /// stay small and the session is allocated at its exact size.
    session: Box<Session>,
    conn: Option<ConnId>,
    dirty: bool,
    /// Offline with a finite session expiry: when the session ends.
    expires_at: Option<u64>,
    /// A will waiting out its 5.0 will delay interval.
    delayed_will: Option<Box<(u64, WillRelease)>>,
}

/// Result of the packets handled for one connection.
#[derive(Debug, Default)]
pub struct Followup {
    pub subscribe: Option<PendingSubscribe>,
    pub disconnect: bool,
}

/// Result of attaching a connection to a session.
#[derive(Clone, Copy, Debug)]
pub struct Attached {
    pub key: SessionKey,
    pub session_present: bool,
}

struct Barrier {
    remaining: usize,
    done: oneshot::Sender<()>,
}

/// One match of a publish against this core's subscriptions.
#[derive(Clone, Copy, Debug)]
struct Match {
    key: SessionKey,
    qos: crate::codec::QoS,
    retain: bool,
    id: Option<u32>,
}

/// Everything one core owns.
pub struct Core {
    pub id: usize,
    cores: usize,
    pub limits: Arc<Limits>,
    sessions: Slab<Entry>,
    by_client_id: HashMap<Arc<str>, SessionKey>,
    subs: Trie<Vec<Subscriber>>,
    interest: Trie<CoreSet>,
    shared_index: Trie<Vec<GroupCounts>>,
    shared: SharedGroups,
    picker: Picker,
    retained: RetainedStore,
    outbox: Vec<Vec<MeshMsg>>,
    barriers: HashMap<u64, Barrier>,
    next_token: u64,
    scratch: MatchScratch,
    matches: Vec<Match>,
    /// Scratch for one delivery's subscription identifiers.
    ids: Vec<u32>,
    events: Vec<Event>,
    pub counters: Counters,
    /// Sessions with new bytes in `tx` since the server last looked.
    pub dirty: Vec<SessionKey>,
    /// Connections the server must close.
    pub closing: Vec<(ConnId, CloseReason)>,
}

impl Core {
    pub fn new(id: usize, cores: usize, limits: Arc<Limits>, strategy: SharedStrategy) -> Core {
        let retained = RetainedStore::new(limits.max_retained_messages, limits.max_retained_bytes);
        Core {
            id,
            cores,
            limits,
            sessions: Slab::new(),
            by_client_id: HashMap::new(),
            subs: Trie::new(),
            interest: Trie::new(),
            shared_index: Trie::new(),
            shared: SharedGroups::default(),
            picker: Picker::new(strategy, 0x9e37_79b9_7f4a_7c15 ^ id as u64),
            retained,
            outbox: (0..cores).map(|_| Vec::new()).collect(),
            barriers: HashMap::new(),
            next_token: 0,
            scratch: MatchScratch::new(),
            matches: Vec::new(),
            ids: Vec::new(),
            events: Vec::new(),
            counters: Counters::default(),
            dirty: Vec::new(),
            closing: Vec::new(),
        }
    }

    pub fn session(&self, key: SessionKey) -> Option<&Session> {
        self.sessions.get(key).map(|e| &*e.session)
    }

    /// Collects the session's refill tally and, if it has bytes to write, marks
    /// it for the server. Called after every call that touched the session.
    fn mark_dirty(&mut self, key: SessionKey) {
        if let Some(e) = self.sessions.get_mut(key) {
            let t = e.session.take_tally();
            self.counters.messages_sent += t.sent;
            self.counters.dropped_expired += t.expired;
            self.counters.dropped_too_large += t.too_large;
            if !e.dirty && e.conn.is_some() && !e.session.tx.is_empty() {
                e.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// The connection of a dirty session, clearing its mark.
    pub fn take_dirty(&mut self, key: SessionKey) -> Option<ConnId> {
        let e = self.sessions.get_mut(key)?;
        e.dirty = false;
        e.conn
    }

    /// Bytes for connection `conn` to write, swapped with `spare` (an empty buffer
    /// whose capacity is reused). `Err(spare)` when the session moved on or has
    /// nothing to write.
    pub fn take_tx(
        &mut self,
        key: SessionKey,
        conn: ConnId,
        spare: bytes::BytesMut,
    ) -> Result<bytes::BytesMut, bytes::BytesMut> {
        match self.sessions.get_mut(key) {
            Some(e) if e.conn == Some(conn) && !e.session.tx.is_empty() => {
                e.dirty = false;
                Ok(std::mem::replace(&mut e.session.tx, spare))
            }
            _ => Err(spare),
        }
    }

    /// After a write: refill the window from the queue.
    pub fn written(&mut self, key: SessionKey, conn: ConnId, bytes: usize, now: u64) {
        self.counters.bytes_sent += bytes as u64;
        if let Some(e) = self.sessions.get_mut(key) {
            if e.conn == Some(conn) {
                e.session.pump(&self.limits, now);
                self.mark_dirty(key);
            }
        }
    }

    // ---- connections and sessions -------------------------------------------------

    /// Binds a connection to the session of `client_id`, taking over any existing
    /// connection (its will is published) and honouring clean start. Writes
    /// CONNACK, then anything the session owes the client.
    pub fn connect(
        &mut self,
        connect: &Connect,
        client_id: Arc<str>,
        conn: ConnId,
        now: u64,
        assigned_id: bool,
    ) -> Attached {
        let limits = self.limits.clone();
        if let Some(&key) = self.by_client_id.get(&client_id) {
            self.take_over(key, now);
            let resumable = self.sessions[key].session.is_persistent();
            if connect.clean_start || !resumable {
                self.end_session(key, now);
            } else {
                self.resume(key, connect, conn, now);
                return Attached {
                    key,
                    session_present: true,
                };
            }
        }
        let mut session = Session::new(client_id.clone(), connect, &limits, now);
        session.send_connack(false, assigned_id.then_some(&*client_id), &limits);
        let key = self.sessions.insert(Entry {
            session: Box::new(session),
            conn: Some(conn),
            dirty: false,
            expires_at: None,
            delayed_will: None,
        });
        self.by_client_id.insert(client_id, key);
        self.counters.sessions_current += 1;
        self.counters.connections_current += 1;
        self.mark_dirty(key);
        Attached {
            key,
            session_present: false,
        }
    }

    fn resume(&mut self, key: SessionKey, connect: &Connect, conn: ConnId, now: u64) {
        let limits = self.limits.clone();
        let e = &mut self.sessions[key];
        e.conn = Some(conn);
        e.expires_at = None;
        // Reconnecting within the will delay cancels the will [MQTT-3.1.3-9].
        e.delayed_will = None;
        e.session.attach(connect, &limits, now);
        e.session.send_connack(true, None, &limits);
        e.session.resume(&limits, now);
        self.counters.connections_current += 1;
        self.activate_shared(key, true);
        self.mark_dirty(key);
    }

    /// Closes the current connection of session `key`, if any, publishing its will.
    fn take_over(&mut self, key: SessionKey, now: u64) {
        let limits = self.limits.clone();
        let e = &mut self.sessions[key];
        let Some(old) = e.conn.take() else {
            return;
        };
        let will = e.session.detach(&limits);
        self.counters.takeovers += 1;
        self.counters.connections_current -= 1;
        self.closing.push((old, CloseReason::SessionTakenOver));
        self.activate_shared(key, false);
        self.release_will(key, will, now);
    }

    /// The connection `conn` of session `key` ended. The session still holds a
    /// will unless a DISCONNECT cleared it.
    pub fn disconnected(&mut self, key: SessionKey, conn: ConnId, now: u64) {
        let limits = self.limits.clone();
        let Some(e) = self.sessions.get_mut(key) else {
            return;
        };
        if e.conn != Some(conn) {
            return; // already taken over
        }
        e.conn = None;
        self.counters.connections_current -= 1;
        let will = e.session.detach(&limits);
        let expiry = e.session.session_expiry();
        // A shared-group member that goes away hands what it has not acknowledged
        // to another member, even if its session stays.
        let unacked = e.session.take_shared_unacked();
        self.activate_shared(key, false);
        for item in unacked {
            self.reroute_shared(item, now);
        }
        self.release_will(key, will, now);
        match expiry {
            0 => self.end_session(key, now),
            u32::MAX => {}
            secs => self.sessions[key].expires_at = Some(now + u64::from(secs) * 1000),
        }
    }

    /// Publishes a will now, or parks it until its delay passes.
    fn release_will(&mut self, key: SessionKey, will: Option<WillRelease>, now: u64) {
        let Some(will) = will else {
            return;
        };
        if will.delay == 0 {
            self.publish_will(will, now);
        } else {
            let at = now + u64::from(will.delay) * 1000;
            self.sessions[key].delayed_will = Some(Box::new((at, will)));
        }
    }

    fn publish_will(&mut self, will: WillRelease, now: u64) {
        self.counters.wills_published += 1;
        self.route(will.into_message(now), now);
    }

    /// Ends a session: a pending will goes out [MQTT-3.1.2-8], subscriptions go.
    fn end_session(&mut self, key: SessionKey, now: u64) {
        let mut e = self.sessions.remove(key);
        self.by_client_id.remove(e.session.client_id());
        self.counters.sessions_current -= 1;
        if let Some((_, will)) = e.delayed_will.take().map(|b| *b) {
            self.publish_will(will, now);
        }
        let filters: Vec<_> = e.session.subscriptions().map(|(f, _)| f.clone()).collect();
        for filter in filters {
            self.unsubscribe_one(key, &filter);
        }
        for item in e.session.take_shared_unacked() {
            self.reroute_shared(item, now);
        }
    }

    // ---- packets ------------------------------------------------------------------

    /// Handles one packet of session `key`'s connection.
    pub fn handle_packet(
        &mut self,
        key: SessionKey,
        now: u64,
        packet: Packet,
        followup: &mut Followup,
    ) -> Result<(), Violation> {
        // A scratch vector reused across packets: no allocation per publish.
        let mut events = std::mem::take(&mut self.events);
        if matches!(packet, Packet::Publish(_)) {
            self.counters.messages_received += 1;
        }
        let result =
            self.sessions[key]
                .session
                .handle_packet(now, packet, &self.limits, &mut events);
        for event in events.drain(..) {
            self.handle_event(key, event, followup, now);
        }
        self.events = events;
        self.mark_dirty(key);
        result
    }

    fn handle_event(&mut self, key: SessionKey, event: Event, followup: &mut Followup, now: u64) {
        match event {
            Event::Publish { msg, ack } => {
                let routing = self.publish_from_client(msg, now);
                if let (Some(ack), Some(e)) = (ack, self.sessions.get_mut(key)) {
                    e.session.acknowledge(ack, routing);
                }
            }
            Event::Subscribe {
                pid,
                codes,
                added,
                existed,
            } => followup.subscribe = Some(self.subscribe(key, pid, codes, added, existed)),
            Event::Unsubscribe(filters) => {
                for filter in filters {
                    self.unsubscribe_one(key, &filter);
                }
            }
            Event::Disconnect => followup.disconnect = true,
        }
    }

    fn publish_from_client(&mut self, msg: Arc<Message>, now: u64) -> Routing {
        if msg.topic.is_sys() {
            // Clients may not write the broker's own topics.
            self.counters.dropped_sys_publish += 1;
            return Routing::NotAuthorized;
        }
        if self.route(msg, now) {
            Routing::Delivered
        } else {
            Routing::NoSubscribers
        }
    }

    // ---- the mesh -----------------------------------------------------------------

    fn interest_acked(&mut self, token: u64) {
        let Some(b) = self.barriers.get_mut(&token) else {
            return;
        };
        b.remaining -= 1;
        if b.remaining == 0 {
            if let Some(b) = self.barriers.remove(&token) {
                let _ = b.done.send(());
            }
        }
    }

    /// Ships every non-empty outbox. Returns false when a destination queue was
    /// full: the rest stays in the outbox and the caller should retry shortly.
    pub fn flush(&mut self, mesh: &Mesh) -> bool {
        let mut all_sent = true;
        for core in 0..self.cores {
            if self.outbox[core].is_empty() {
                continue;
            }
            let batch = std::mem::take(&mut self.outbox[core]);
            if let Err(batch) = mesh.try_send(core, batch) {
                self.outbox[core] = batch;
                all_sent = false;
            }
        }
        all_sent
    }

    /// Queues a message for another core (sent by the next [`Core::flush`]).
    pub fn push_to(&mut self, core: usize, msg: MeshMsg) {
        self.outbox[core].push(msg);
    }

    pub fn has_outgoing(&self) -> bool {
        self.outbox.iter().any(|b| !b.is_empty())
    }

    // ---- time ---------------------------------------------------------------------

    /// Periodic housekeeping: keep-alive expiry, stale QoS 2 state, delayed wills
    /// and session expiry.
    pub fn tick(&mut self, now: u64) {
        let limits = self.limits.clone();
        let mut wills = Vec::new();
        let mut expired = Vec::new();
        for (key, e) in self.sessions.iter_mut() {
            if let Some(conn) = e.conn {
                if e.session.keep_alive_expired(now) {
                    self.closing.push((conn, CloseReason::KeepAliveTimeout));
                }
                self.counters.awaiting_rel_expired +=
                    e.session.expire_awaiting_rel(now, &limits) as u64;
            }
            if e.delayed_will.as_ref().is_some_and(|w| now >= w.0) {
                wills.extend(e.delayed_will.take().map(|b| b.1));
            }
            if e.expires_at.is_some_and(|at| now >= at) {
                expired.push(key);
            }
        }
        for will in wills {
            self.publish_will(will, now);
        }
        for key in expired {
            self.end_session(key, now);
        }
    }
}

#[cfg(test)]
mod tests;
