//! Per-core routing: this core's sessions, its subscription trie, the replicated
//! interest index, shared-subscription counts and retained store.
//!
//! This is the only code that knows other cores exist, and it performs no I/O:
//! inputs come in as calls (a packet from a connection, a message from another
//! core, the time), and everything the core wants done goes into its
//! [`Outbox`]: bytes to write (connections marked writable), connections to
//! close or to resume, and batches of [`MeshMsg`] for other cores. The server
//! drains the outbox after every call. Time comes in as [`Time`].

mod backpressure;
mod barrier;
mod cluster;
mod delivery;
mod interest;
mod lifecycle;
mod mesh;
mod outbox;
mod shared;
mod subscriptions;

use std::collections::HashMap;
use std::sync::Arc;

use slab::Slab;

pub use barrier::Reply;
pub use cluster::ClusterMsg;
pub use interest::{owner_core, CoreSet, Interest};
pub use mesh::MeshMsg;
pub use outbox::{Notice, Outbox};

use crate::codec::{Packet, QoS, SubOptions};
use crate::counters::Counters;
use crate::durable::journal::Recorder;
use crate::durable::Epoch;
use crate::latency::{Latency, Sampler};
use crate::limits::{Limits, SharedStrategy};
use crate::session::{Event, Outcome, Session, Violation, WillRelease};
use crate::store::RetainedStore;
use crate::time::Time;
use crate::topic::{trie::MatchScratch, Trie};
use barrier::Barrier;
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
    /// It held its publishers back for `max_stall` without reading.
    SlowConsumer,
}

/// What a connection does after one of its packets was handled. Ordered:
/// of several outcomes, the greatest (the one that stops reading sooner) wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Next {
    /// Go on with the next packet.
    Continue,
    /// Read nothing more until [`Outbox::resume`] names this connection: a
    /// SUBACK waits until every core knows the new subscriptions, and the
    /// client's later packets wait behind it.
    Pause,
    /// The client sent DISCONNECT: end the connection.
    Disconnect,
}

#[derive(Clone, Copy, Debug)]
struct Subscriber {
    key: SessionKey,
    opts: SubOptions,
    id: Option<u32>,
    /// Each delivery asks the session's permissions (a partly readable filter).
    checked: bool,
}

#[derive(Debug)]
struct Entry {
    /// Boxed: the slab holds many entries and grows by doubling, so its slots
    /// stay small and the session is allocated at its exact size.
    session: Box<Session>,
    conn: Option<ConnId>,
    /// Listed in the outbox as writable and not yet written since.
    dirty: bool,
    /// The connection reads nothing until a barrier completes (a SUBACK or
    /// the PUBACK of a retained PUBLISH waits for other cores).
    paused: bool,
    /// Offline with a finite session expiry: when the session ends.
    expires_at: Option<Time>,
    /// A will waiting out its 5.0 will delay interval.
    delayed_will: Option<Box<(Time, WillRelease)>>,
    /// The publishers this client's full queue holds back, if any.
    holding: Option<Box<backpressure::Holding>>,
    /// Subscribers holding this client back as a publisher.
    held_by: u32,
    /// Its meta went to the cluster link (to record in JetStream), which must
    /// then hear of its end.
    in_cluster: bool,
}

/// Result of attaching a connection to a session.
#[derive(Clone, Copy, Debug)]
pub struct Attached {
    pub key: SessionKey,
    pub session_present: bool,
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
    /// `limits` with the drop policy, for a client's own messages coming
    /// back through its own subscription: holding it back for them would
    /// stop it reading the acks that drain its queue (a deadlock). Also for
    /// messages from other nodes, whose publishers no core here can hold.
    own_limits: Arc<Limits>,
    sessions: Slab<Entry>,
    by_client_id: HashMap<Arc<str>, SessionKey>,
    subs: Trie<Vec<Subscriber>>,
    interest: Trie<Interest>,
    shared_index: Trie<Vec<GroupCounts>>,
    shared: SharedGroups,
    picker: Picker,
    retained: RetainedStore,
    /// Work waiting for other cores' acknowledgements, by token.
    barriers: HashMap<u64, Barrier>,
    /// Sessions holding publishers back.
    holders: Vec<SessionKey>,
    /// Holds on client ids whose session here ended while held: a new
    /// session under the id starts held, so reconnecting with a clean
    /// session does not escape back-pressure. An entry lasts only as long
    /// as the holds (a release takes it away), which `max_stall` bounds.
    orphan_holds: HashMap<Arc<str>, u32>,
    next_token: u64,
    scratch: MatchScratch,
    matches: Vec<Match>,
    /// Scratch for one delivery's subscription identifiers.
    ids: Vec<u32>,
    events: Vec<Event>,
    pub counters: Counters,
    /// Publish-in to write-out times of sampled deliveries on this core.
    pub latency: Latency,
    sampler: Sampler<SessionKey>,
    /// When each session's drops for each reason were last told.
    drop_notices: HashMap<(SessionKey, &'static str), Time>,
    /// What the server must do after this call.
    pub outbox: Outbox,
    /// Set when the broker keeps a store: persistent sessions and the
    /// retained topics this core owns are journaled into the outbox.
    journal: Option<Recorder>,
    /// Set when the node is one of a cluster: see [`Core::join_cluster`].
    cluster: bool,
    /// Set while the link's connection for shared groups is up: a shared
    /// group's message then goes through NATS's queue groups, which pick
    /// one member among every node's (see [`Core::set_cluster_shared`]).
    cluster_shared: bool,
}

/// The limits applied to a client's own messages coming back to it: never
/// held back (a client cannot slow itself), dropped past the caps instead.
fn own_limits(limits: &Limits) -> Arc<Limits> {
    Arc::new(Limits {
        slow_consumer_policy: crate::limits::SlowConsumerPolicy::Drop,
        ..limits.clone()
    })
}

impl Core {
    /// Limits changed by a reload: they apply from the next decision on
    /// (what is queued or stored past a lowered cap stays).
    pub fn set_limits(&mut self, limits: Arc<Limits>) {
        self.retained
            .set_caps(limits.max_retained_messages, limits.max_retained_bytes);
        self.own_limits = own_limits(&limits);
        self.limits = limits;
    }

    pub fn new(id: usize, cores: usize, limits: Arc<Limits>, strategy: SharedStrategy) -> Core {
        let retained = RetainedStore::new(limits.max_retained_messages, limits.max_retained_bytes);
        let own_limits = own_limits(&limits);
        Core {
            id,
            cores,
            limits,
            own_limits,
            sessions: Slab::new(),
            by_client_id: HashMap::new(),
            subs: Trie::new(),
            interest: Trie::new(),
            shared_index: Trie::new(),
            shared: SharedGroups::default(),
            picker: Picker::new(strategy, 0x9e37_79b9_7f4a_7c15 ^ id as u64),
            retained,
            barriers: HashMap::new(),
            holders: Vec::new(),
            orphan_holds: HashMap::new(),
            next_token: 0,
            scratch: MatchScratch::new(),
            matches: Vec::new(),
            ids: Vec::new(),
            events: Vec::new(),
            counters: Counters::default(),
            latency: Latency::default(),
            sampler: Sampler::default(),
            drop_notices: HashMap::new(),
            outbox: Outbox::new(cores),
            journal: None,
            cluster: false,
            cluster_shared: false,
        }
    }

    /// From now on, journal what must outlive the process into
    /// [`Outbox::journal`]: persistent sessions (as they connect or are
    /// restored) and the retained topics this core owns.
    pub fn keep_journal(&mut self, epoch: Epoch) {
        self.journal = Some(Recorder::new(epoch));
    }

    /// True when session `key` is journaled (it outlives the process).
    pub fn is_journaled(&self, key: SessionKey) -> bool {
        self.sessions
            .get(key)
            .is_some_and(|e| e.session.is_journaled())
    }

    /// Moves a session's journal records into the outbox.
    fn collect_journal(&mut self, key: SessionKey) {
        if let Some(e) = self.sessions.get_mut(key) {
            if e.session.is_journaled() {
                self.outbox.journal.extend(e.session.take_journal());
            }
        }
    }

    /// Journals session `key` if it is persistent and the core keeps a
    /// journal; stops journaling it otherwise.
    fn journal_session(&mut self, key: SessionKey) {
        let epoch = self.journal.as_ref().map(Recorder::epoch);
        if let Some(e) = self.sessions.get_mut(key) {
            let persistent = e.session.is_persistent();
            e.session.set_journal(epoch.filter(|_| persistent));
        }
        self.collect_journal(key);
    }

    /// How many cores the broker runs.
    pub fn cores(&self) -> usize {
        self.cores
    }

    pub fn session(&self, key: SessionKey) -> Option<&Session> {
        self.sessions.get(key).map(|e| &*e.session)
    }

    /// Collects the session's refill tally and, if it has bytes to write, lists
    /// its connection as writable. Called after every call that touched it.
    fn mark_dirty(&mut self, key: SessionKey) {
        if let Some(e) = self.sessions.get_mut(key) {
            if e.session.is_journaled() {
                self.outbox.journal.extend(e.session.take_journal());
            }
            let t = e.session.take_tally();
            self.counters.messages_sent += u64::from(t.sent);
            self.counters.dropped_expired += u64::from(t.expired);
            self.counters.dropped_too_large += u64::from(t.too_large);
            self.counters.subscribes_denied += u64::from(t.subscribes_denied);
            if let Some(conn) = e.conn.filter(|_| !e.dirty && !e.session.tx.is_empty()) {
                e.dirty = true;
                self.outbox.writable.push(conn);
            }
        }
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
            Some(e) if e.conn == Some(conn) => {
                e.dirty = false;
                if e.session.tx.is_empty() {
                    Err(spare)
                } else {
                    Ok(std::mem::replace(&mut e.session.tx, spare))
                }
            }
            _ => Err(spare),
        }
    }

    /// Whether connection `conn` has output waiting (what [`Core::take_tx`]
    /// would hand over).
    pub fn has_tx(&self, key: SessionKey, conn: ConnId) -> bool {
        self.sessions
            .get(key)
            .is_some_and(|e| e.conn == Some(conn) && !e.session.tx.is_empty())
    }

    /// Counts what became of a delivery to `key` at `qos`; a drop is also
    /// told (rarely: see [`Notice::Dropped`]) so it can be logged.
    fn count_delivery(&mut self, key: SessionKey, outcome: Outcome, qos: QoS, now: Time) {
        self.counters.count(outcome, qos);
        let Some(reason) = outcome.drop_reason() else {
            return;
        };
        let told = self.drop_notices.get(&(key, reason));
        if told.is_some_and(|at| now.since(*at) < outbox::DROP_NOTICE_EVERY) {
            return;
        }
        self.drop_notices.insert((key, reason), now);
        if let Some(e) = self.sessions.get(key) {
            let client = e.session.client_id().clone();
            self.outbox.notices.push(Notice::Dropped { client, reason });
        }
    }

    /// When the delivery sampled in the buffer just taken for `key` was
    /// received; the server records how long it took once written.
    pub fn take_latency_sample(&mut self, key: SessionKey) -> Option<Time> {
        self.sampler.taken(key)
    }

    /// A sampled delivery was written `took` after its PUBLISH was read.
    pub fn record_latency(&mut self, took: std::time::Duration) {
        self.latency.record(took);
    }

    /// After a write: refill the window from the queue.
    pub fn written(&mut self, key: SessionKey, conn: ConnId, bytes: usize, now: Time) {
        self.counters.bytes_sent += bytes as u64;
        if let Some(e) = self.sessions.get_mut(key) {
            if e.conn == Some(conn) {
                e.session.pump(&self.limits, now);
                self.mark_dirty(key);
                self.made_progress(key, now);
            }
        }
    }

    // ---- packets ------------------------------------------------------------------

    /// Handles one packet of session `key`'s connection.
    pub fn handle_packet(
        &mut self,
        key: SessionKey,
        now: Time,
        packet: Packet,
    ) -> Result<Next, Violation> {
        // A scratch vector reused across packets: no allocation per publish.
        let mut events = std::mem::take(&mut self.events);
        if let Packet::Publish(p) = &packet {
            self.counters.received(p.qos_pid.qos());
        }
        let result =
            self.sessions[key]
                .session
                .handle_packet(now, packet, &self.limits, &mut events);
        let mut next = Next::Continue;
        for event in events.drain(..) {
            if self.handle_event(key, event, now) {
                next = Next::Disconnect;
            }
        }
        self.events = events;
        self.mark_dirty(key);
        if next == Next::Continue && self.sessions.get(key).is_some_and(|e| e.paused) {
            next = Next::Pause;
        }
        result.map(|()| next)
    }

    /// True when the event ends the connection.
    fn handle_event(&mut self, key: SessionKey, event: Event, now: Time) -> bool {
        match event {
            Event::Publish { msg, ack } => self.publish_from_client(key, msg, ack, now),
            Event::Subscribe {
                pid,
                codes,
                added,
                existed,
            } => {
                self.subscribe(key, pid, codes, added, existed, now);
                self.share_session(key, false);
            }
            Event::Unsubscribe(filters) => {
                for filter in filters {
                    self.unsubscribe_one(key, &filter);
                }
                self.share_session(key, false);
            }
            Event::Disconnect => return true,
        }
        false
    }

    // ---- time ---------------------------------------------------------------------

    /// Periodic housekeeping: keep-alive expiry, stale QoS 2 state, delayed wills
    /// and session expiry.
    pub fn tick(&mut self, now: Time) {
        let limits = self.limits.clone();
        let mut wills = Vec::new();
        let mut expired = Vec::new();
        let (mut queued, mut inflight) = (0, 0);
        for (key, e) in self.sessions.iter_mut() {
            queued += e.session.queued_len() as u64;
            inflight += e.session.inflight_len() as u64;
            e.session.release_idle_buffers();
            if let Some(conn) = e.conn {
                // A held-back publisher is not read: its PINGREQs wait too.
                if e.held_by == 0 && e.session.keep_alive_expired(now) {
                    self.outbox
                        .close
                        .push((conn, CloseReason::KeepAliveTimeout));
                }
                self.counters.awaiting_rel_expired +=
                    e.session.expire_awaiting_rel(now, &limits) as u64;
                if e.session.is_journaled() {
                    self.outbox.journal.extend(e.session.take_journal());
                }
            }
            if e.delayed_will.as_ref().is_some_and(|w| now >= w.0) {
                wills.extend(e.delayed_will.take().map(|b| b.1));
                if let Some(journal) = self.journal.as_mut().filter(|_| e.session.is_journaled()) {
                    journal.will_done(e.session.client_id());
                    self.outbox.journal.extend(journal.take());
                }
            }
            if e.expires_at.is_some_and(|at| now >= at) {
                expired.push(key);
            }
        }
        self.counters.messages_queued = queued;
        self.counters.messages_inflight = inflight;
        self.sampler.forget_stale(now);
        self.drop_notices
            .retain(|_, at| now.since(*at) < outbox::DROP_NOTICE_EVERY);
        self.end_stalls(now);
        for will in wills {
            self.publish_will(will, now);
        }
        self.counters.sessions_expired += expired.len() as u64;
        for key in expired {
            self.end_session(key, now);
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Core>();
};
