//! Per-core routing: this core's sessions, its subscription trie, the replicated
//! interest index and retained store, and the outboxes to other cores.
//!
//! This is the only code that knows other cores exist. It performs no I/O: the
//! server drains [`Core::dirty`] (connections with bytes to write) and
//! [`Core::closing`] (connections to close) after each call, and ships the
//! outboxes with [`Core::flush`].

mod interest;
pub mod mesh;

use std::collections::HashMap;
use std::sync::Arc;

use futures::channel::oneshot;
use slab::Slab;

pub use interest::{owner_core, CoreSet};
pub use mesh::{mesh, Handoff, Inbox, Mesh, MeshMsg};

use crate::codec::{Connect, Packet, Pid, QoS, SubOptions};
use crate::config::Limits;
use crate::message::Message;
use crate::metrics::Counters;
use crate::session::{Event, Outcome, Session, Violation};
use crate::topic::{trie::MatchScratch, TopicFilter, TopicTree, Trie};

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
}

#[derive(Debug)]
struct Entry {
    session: Session,
    conn: Option<ConnId>,
    dirty: bool,
}

/// A SUBSCRIBE whose SUBACK waits for other cores to know about the new interest,
/// so that anything published after the SUBACK reaches the subscriber.
#[derive(Debug)]
pub struct PendingSubscribe {
    pid: Pid,
    codes: Vec<u8>,
    added: Vec<(TopicFilter, SubOptions)>,
    existed: Vec<bool>,
    /// Resolves when every other core acknowledged; `None`: nothing to wait for.
    pub barrier: Option<oneshot::Receiver<()>>,
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

/// Everything one core owns.
pub struct Core {
    pub id: usize,
    cores: usize,
    pub limits: Arc<Limits>,
    sessions: Slab<Entry>,
    by_client_id: HashMap<Arc<str>, SessionKey>,
    subs: Trie<Vec<Subscriber>>,
    interest: Trie<CoreSet>,
    retained: TopicTree<Arc<Message>>,
    retained_bytes: usize,
    outbox: Vec<Vec<MeshMsg>>,
    barriers: HashMap<u64, Barrier>,
    next_token: u64,
    scratch: MatchScratch,
    matches: Vec<(SessionKey, QoS, bool)>,
    pub counters: Counters,
    /// Sessions with new bytes in `tx` since the server last looked.
    pub dirty: Vec<SessionKey>,
    /// Connections the server must close.
    pub closing: Vec<(ConnId, CloseReason)>,
}

impl Core {
    pub fn new(id: usize, cores: usize, limits: Arc<Limits>) -> Core {
        Core {
            id,
            cores,
            limits,
            sessions: Slab::new(),
            by_client_id: HashMap::new(),
            subs: Trie::new(),
            interest: Trie::new(),
            retained: TopicTree::new(),
            retained_bytes: 0,
            outbox: (0..cores).map(|_| Vec::new()).collect(),
            barriers: HashMap::new(),
            next_token: 0,
            scratch: MatchScratch::new(),
            matches: Vec::new(),
            counters: Counters::default(),
            dirty: Vec::new(),
            closing: Vec::new(),
        }
    }

    pub fn session(&self, key: SessionKey) -> Option<&Session> {
        self.sessions.get(key).map(|e| &e.session)
    }

    fn mark_dirty(&mut self, key: SessionKey) {
        if let Some(e) = self.sessions.get_mut(key) {
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
    /// whose capacity is reused). `None` when the session moved on or has nothing.
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
    pub fn written(&mut self, key: SessionKey, conn: ConnId, bytes: usize) {
        self.counters.bytes_sent += bytes as u64;
        let limits = self.limits.clone();
        if let Some(e) = self.sessions.get_mut(key) {
            if e.conn == Some(conn) {
                e.session.pump(&limits);
                self.mark_dirty(key);
            }
        }
    }

    // ---- connections and sessions -------------------------------------------------

    /// Binds a connection to the session of `client_id`, taking over any existing
    /// connection (its will is published) and honouring clean start.
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
            self.take_over(key);
            let resumable = self.sessions[key].session.is_persistent();
            if connect.clean_start || !resumable {
                self.remove_session(key);
            } else {
                let e = &mut self.sessions[key];
                e.conn = Some(conn);
                e.session.attach(connect, &limits, now);
                e.session.send_connack(true, None, &limits);
                e.session.resume(&limits);
                self.counters.connections_current += 1;
                self.mark_dirty(key);
                return Attached {
                    key,
                    session_present: true,
                };
            }
        }
        let mut session = Session::new(client_id.clone(), connect, &limits, now);
        session.send_connack(false, assigned_id.then_some(&*client_id), &limits);
        let key = self.sessions.insert(Entry {
            session,
            conn: Some(conn),
            dirty: false,
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

    /// Closes the current connection of session `key`, if any, publishing its will.
    fn take_over(&mut self, key: SessionKey) {
        let e = &mut self.sessions[key];
        let Some(old) = e.conn.take() else {
            return;
        };
        let will = e.session.detach(true);
        self.counters.takeovers += 1;
        self.counters.connections_current -= 1;
        self.closing.push((old, CloseReason::SessionTakenOver));
        if let Some(will) = will {
            self.publish_will(will);
        }
    }

    /// The connection `conn` of session `key` ended. `abnormal`: not by DISCONNECT.
    pub fn disconnected(&mut self, key: SessionKey, conn: ConnId, abnormal: bool) {
        let Some(e) = self.sessions.get_mut(key) else {
            return;
        };
        if e.conn != Some(conn) {
            return; // already taken over
        }
        e.conn = None;
        self.counters.connections_current -= 1;
        let will = e.session.detach(abnormal);
        let persistent = e.session.is_persistent();
        if let Some(will) = will {
            self.publish_will(will);
        }
        if !persistent {
            self.remove_session(key);
        }
    }

    fn publish_will(&mut self, will: Arc<Message>) {
        self.counters.wills_published += 1;
        self.route(will);
    }

    fn remove_session(&mut self, key: SessionKey) {
        let e = self.sessions.remove(key);
        self.by_client_id.remove(e.session.client_id());
        self.counters.sessions_current -= 1;
        let filters: Vec<TopicFilter> = e.session.subscriptions().map(|(f, _)| f.clone()).collect();
        for filter in filters {
            self.unsubscribe_one(key, &filter);
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
        let limits = self.limits.clone();
        let mut events = Vec::new();
        if matches!(packet, Packet::Publish(_)) {
            self.counters.messages_received += 1;
        }
        let result = self.sessions[key]
            .session
            .handle_packet(now, packet, &limits, &mut events);
        for event in events {
            self.handle_event(key, event, followup);
        }
        self.mark_dirty(key);
        result
    }

    fn handle_event(&mut self, key: SessionKey, event: Event, followup: &mut Followup) {
        match event {
            Event::Publish(msg) => self.publish_from_client(msg),
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

    fn publish_from_client(&mut self, msg: Arc<Message>) {
        if msg.topic.is_sys() {
            // Clients may not write the broker's own topics.
            self.counters.dropped_sys_publish += 1;
            return;
        }
        self.route(msg);
    }

    // ---- subscriptions ------------------------------------------------------------

    fn subscribe(
        &mut self,
        key: SessionKey,
        pid: Pid,
        codes: Vec<u8>,
        added: Vec<(TopicFilter, SubOptions)>,
        existed: Vec<bool>,
    ) -> PendingSubscribe {
        let mut waits = 0;
        let token = self.next_token;
        for (filter, opts) in &added {
            let list = self.subs.get_or_insert_with(filter.as_str(), Vec::new);
            match list.iter_mut().find(|s| s.key == key) {
                Some(s) => s.opts = *opts,
                None => {
                    list.push(Subscriber { key, opts: *opts });
                    self.counters.subscriptions_current += 1;
                    if list.len() == 1 {
                        waits += self.announce_interest(filter, true, Some(token));
                    }
                }
            }
        }
        let barrier = (waits > 0).then(|| {
            self.next_token += 1;
            let (done, wait) = oneshot::channel();
            self.barriers.insert(
                token,
                Barrier {
                    remaining: waits,
                    done,
                },
            );
            wait
        });
        PendingSubscribe {
            pid,
            codes,
            added,
            existed,
            barrier,
        }
    }

    /// Sends SUBACK, then the retained messages the new subscriptions match
    /// (RETAIN=1 [MQTT-3.3.1-8]), per 5.0 retain handling.
    pub fn complete_subscribe(&mut self, key: SessionKey, pending: PendingSubscribe) {
        let limits = self.limits.clone();
        let Some(e) = self.sessions.get_mut(key) else {
            return;
        };
        e.session.send_suback(pending.pid, pending.codes);
        let mut found = Vec::new();
        for ((filter, opts), existed) in pending.added.iter().zip(pending.existed) {
            let send = match opts.retain_handling {
                0 => true,
                1 => !existed,
                _ => false,
            };
            if send {
                self.retained.for_each_matching(filter.as_str(), |_, msg| {
                    found.push((msg.clone(), opts.qos.min(msg.qos)));
                });
            }
        }
        let e = &mut self.sessions[key];
        for (msg, qos) in found {
            let outcome = e.session.deliver(&msg, qos, true, &limits);
            count_outcome(&mut self.counters, outcome);
        }
        self.mark_dirty(key);
    }

    fn unsubscribe_one(&mut self, key: SessionKey, filter: &TopicFilter) {
        let Some(list) = self.subs.get_mut(filter.as_str()) else {
            return;
        };
        let before = list.len();
        list.retain(|s| s.key != key);
        self.counters.subscriptions_current -= (before - list.len()) as u64;
        if list.is_empty() {
            self.subs.remove(filter.as_str());
            self.announce_interest(filter, false, None);
        }
    }

    /// Records this core's interest change and tells every other core. Returns how
    /// many acknowledgements to wait for.
    fn announce_interest(&mut self, filter: &TopicFilter, add: bool, ack: Option<u64>) -> usize {
        self.apply_interest(filter, self.id, add);
        let mut sent = 0;
        for core in (0..self.cores).filter(|c| *c != self.id) {
            self.outbox[core].push(MeshMsg::Interest {
                filter: filter.clone(),
                core: self.id,
                add,
                ack,
            });
            sent += 1;
        }
        sent
    }

    fn apply_interest(&mut self, filter: &TopicFilter, core: usize, add: bool) {
        if add {
            self.interest
                .get_or_insert_with(filter.as_str(), CoreSet::default)
                .insert(core);
        } else if let Some(set) = self.interest.get_mut(filter.as_str()) {
            set.remove(core);
            if set.is_empty() {
                self.interest.remove(filter.as_str());
            }
        }
    }

    // ---- routing ------------------------------------------------------------------

    /// Routes a message published on this core: local subscribers directly, other
    /// interested cores through the outboxes (one shared `Arc` each), and retained
    /// updates to every core's replica.
    pub fn route(&mut self, msg: Arc<Message>) {
        let mut targets = CoreSet::default();
        self.interest
            .for_each_match_with(msg.topic.as_str(), &mut self.scratch, |set| {
                targets.union(set)
            });
        if msg.retain {
            self.store_retained(&msg, true);
        }
        for core in (0..self.cores).filter(|c| *c != self.id) {
            let deliver = targets.contains(core);
            if deliver || msg.retain {
                self.outbox[core].push(MeshMsg::Publish {
                    msg: msg.clone(),
                    deliver,
                });
            }
        }
        if targets.contains(self.id) {
            self.deliver_local(&msg);
        }
    }

    /// Fans a message out to this core's subscribers: once per session, at the
    /// highest QoS among its matching subscriptions, capped by the publish QoS.
    fn deliver_local(&mut self, msg: &Arc<Message>) {
        let mut matches = std::mem::take(&mut self.matches);
        matches.clear();
        self.subs
            .for_each_match_with(msg.topic.as_str(), &mut self.scratch, |list| {
                for s in list {
                    let retain = s.opts.retain_as_published && msg.retain;
                    matches.push((s.key, s.opts.qos.min(msg.qos), retain));
                }
            });
        if matches.len() > 1 {
            matches.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            matches.dedup_by_key(|m| m.0);
        }
        let limits = self.limits.clone();
        for &(key, qos, retain) in &matches {
            let Some(e) = self.sessions.get_mut(key) else {
                continue;
            };
            let outcome = e.session.deliver(msg, qos, retain, &limits);
            count_outcome(&mut self.counters, outcome);
            if outcome == Outcome::Sent {
                self.mark_dirty(key);
            }
        }
        self.matches = matches;
    }

    /// Updates this core's retained replica. `origin`: counted here only, so a
    /// refusal is not counted once per core.
    fn store_retained(&mut self, msg: &Arc<Message>, origin: bool) {
        let topic = msg.topic.as_str();
        if msg.payload.is_empty() {
            if let Some(old) = self.retained.remove(topic) {
                self.retained_bytes -= old.weight();
            }
        } else {
            let old_weight = self.retained.get(topic).map_or(0, |m| m.weight());
            let is_new = old_weight == 0;
            let over_count = is_new && self.retained.len() >= self.limits.max_retained_messages;
            let bytes = self.retained_bytes - old_weight + msg.weight();
            if over_count || bytes > self.limits.max_retained_bytes {
                if origin {
                    self.counters.dropped_retained_cap += 1;
                }
                return;
            }
            self.retained.insert(topic, msg.clone());
            self.retained_bytes = bytes;
        }
        self.counters.retained_current = self.retained.len() as u64;
    }

    // ---- the mesh -----------------------------------------------------------------

    /// Applies one message from another core. A handoff is returned to the caller,
    /// which owns sockets.
    pub fn handle_mesh(&mut self, msg: MeshMsg) -> Option<MeshMsg> {
        match msg {
            MeshMsg::Publish { msg, deliver } => {
                if msg.retain {
                    self.store_retained(&msg, false);
                }
                if deliver {
                    self.deliver_local(&msg);
                }
            }
            MeshMsg::Interest {
                filter,
                core,
                add,
                ack,
            } => {
                self.apply_interest(&filter, core, add);
                if let Some(token) = ack {
                    self.outbox[core].push(MeshMsg::InterestAck { token });
                }
            }
            MeshMsg::InterestAck { token } => self.interest_acked(token),
            other => return Some(other),
        }
        None
    }

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

    /// Periodic housekeeping: keep-alive expiry and stale QoS 2 state.
    pub fn tick(&mut self, now: u64) {
        let limits = self.limits.clone();
        for (_, e) in self.sessions.iter_mut() {
            let Some(conn) = e.conn else {
                continue;
            };
            if e.session.keep_alive_expired(now) {
                self.closing.push((conn, CloseReason::KeepAliveTimeout));
            }
            self.counters.awaiting_rel_expired +=
                e.session.expire_awaiting_rel(now, &limits) as u64;
        }
    }

    /// Every connected session's connection, for shutdown.
    pub fn connections(&self) -> Vec<ConnId> {
        self.sessions.iter().filter_map(|(_, e)| e.conn).collect()
    }
}

fn count_outcome(counters: &mut Counters, outcome: Outcome) {
    match outcome {
        Outcome::Sent => counters.messages_sent += 1,
        Outcome::Queued => {}
        Outcome::DroppedSlowConsumer => counters.dropped_slow_consumer += 1,
        Outcome::DroppedOffline => counters.dropped_offline_qos0 += 1,
        Outcome::DroppedQueueFull => counters.dropped_queue_full += 1,
    }
}

#[cfg(test)]
mod tests;
