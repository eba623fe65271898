//! Routing a publish: local subscribers directly, other interested cores through
//! the outboxes (one shared `Arc` each), shared groups to exactly one member, and
//! retained updates to every core's replica.

use std::sync::Arc;

use super::barrier::{Reply, Then};
use super::cluster::collect_matches;
use super::interest::other_cores;
use super::shared::Member;
use super::{owner_core, Core, CoreSet, Match, MeshMsg, SessionKey};
use crate::codec::QoS;
use crate::message::Message;
use crate::session::{Outcome, PublishAck, Routed, Routing};
use crate::time::Time;
use crate::topic::SharedFilter;

impl Core {
    /// A client's PUBLISH: routed unless it writes the broker's own topics,
    /// then acknowledged. A retained QoS 1/2 PUBLISH is acknowledged only once
    /// every core's replica holds it, so that a client subscribing anywhere
    /// after the PUBACK gets it; its connection pauses until then.
    pub(super) fn publish_from_client(
        &mut self,
        key: SessionKey,
        msg: Arc<Message>,
        ack: Option<PublishAck>,
        now: Time,
    ) {
        if msg.topic.is_sys() {
            self.counters.dropped_sys_publish += 1;
            return self.acknowledge_now(key, ack, Routing::NotAuthorized);
        }
        let session = self.sessions.get_mut(key).map(|e| &mut e.session);
        if !session.is_none_or(|s| s.may_publish(msg.topic.as_str())) {
            // 3.1.1 has no refusing PUBACK: the flow completes, the message is
            // dropped and counted (as Mosquitto does); 5.0 gets 0x87.
            self.counters.publishes_denied += 1;
            return self.acknowledge_now(key, ack, Routing::NotAuthorized);
        }
        let forwarded = self.forward_to_cluster(&msg);
        // Another node may have subscribers: never "no subscribers" then.
        let routing = if self.deliver(&msg, now) || forwarded {
            Routing::Delivered
        } else {
            Routing::NoSubscribers
        };
        if !msg.retain {
            return self.acknowledge_now(key, ack, routing);
        }
        let conn = self.sessions.get(key).and_then(|e| e.conn);
        let then = match (ack, conn) {
            (Some(ack), Some(conn)) if self.cores > 1 => Some(Then::PubAck {
                key,
                conn,
                ack,
                routing,
            }),
            _ => {
                self.acknowledge_now(key, ack, routing);
                None
            }
        };
        self.update_retained(&msg, then, now);
    }

    fn acknowledge_now(&mut self, key: SessionKey, ack: Option<PublishAck>, routing: Routing) {
        if let (Some(ack), Some(e)) = (ack, self.sessions.get_mut(key)) {
            e.session.acknowledge(ack, routing);
        }
    }

    /// Routes a message published on (or by a will of) this core. Returns
    /// whether any subscription or shared group matched it.
    pub fn route(&mut self, msg: Arc<Message>, now: Time) -> bool {
        self.forward_to_cluster(&msg);
        let matched = self.deliver(&msg, now);
        if msg.retain {
            self.update_retained(&msg, None, now);
        }
        matched
    }

    /// Delivers to every matching subscriber and shared group, on every core.
    fn deliver(&mut self, msg: &Arc<Message>, now: Time) -> bool {
        let mut targets = CoreSet::default();
        if self.cores > 1 {
            self.interest
                .for_each_match_with(msg.topic.as_str(), &mut self.scratch, |set| {
                    targets.add(set)
                });
        }
        for core in other_cores(self.id, self.cores).filter(|c| targets.contains(*c)) {
            self.outbox
                .send(core, MeshMsg::Publish { msg: msg.clone() });
        }
        // A core with no subscriber of its own skips the walk.
        let local = !self.subs.is_empty() && self.deliver_local(msg, now);
        let shared = !self.shared_index.is_empty()
            && !self.shares_through_cluster(msg)
            && self.route_shared_groups(msg, now);
        !targets.is_empty() || local || shared
    }

    /// Fans a message out to this core's subscribers: once per session, at the
    /// highest QoS among its matching subscriptions (capped by the publish QoS),
    /// with every matching 5.0 subscription identifier. Returns whether any
    /// subscription here matched (even one the ACL or no-local then skipped).
    fn deliver_local(&mut self, msg: &Arc<Message>, now: Time) -> bool {
        let mut matches = std::mem::take(&mut self.matches);
        matches.clear();
        let sessions = &mut self.sessions;
        let mut denied = 0;
        let mut matched = false;
        self.subs
            .for_each_match_with(msg.topic.as_str(), &mut self.scratch, |list| {
                matched = true;
                collect_matches(sessions, list, msg, &mut matches, &mut denied);
            });
        self.counters.deliveries_denied += denied;
        self.deliver_matches(msg, matches, now);
        matched
    }

    /// Delivers to each session among `matches` once, at the highest QoS of
    /// its matching subscriptions, with all their subscription identifiers.
    pub(super) fn deliver_matches(
        &mut self,
        msg: &Arc<Message>,
        mut matches: Vec<Match>,
        now: Time,
    ) {
        if matches.len() > 1 {
            matches.sort_unstable_by_key(|m| m.key);
        }
        let mut ids = std::mem::take(&mut self.ids);
        let mut i = 0;
        while i < matches.len() {
            let key = matches[i].key;
            let run = matches[i..].iter().take_while(|m| m.key == key).count();
            let group = &matches[i..i + run];
            let qos = group.iter().map(|m| m.qos).max().unwrap_or_default();
            let retain = group.iter().any(|m| m.retain);
            ids.clear();
            ids.extend(group.iter().filter_map(|m| m.id));
            if qos == QoS::AtMostOnce {
                self.deliver_qos0_to(key, msg, retain, &ids, now);
            } else {
                let item = Routed {
                    msg: msg.clone(),
                    qos,
                    retain,
                    sub_ids: ids.as_slice().into(),
                    shared: None,
                };
                self.deliver_to(key, item, now);
            }
            i += run;
        }
        self.ids = ids;
        self.matches = matches;
    }

    /// QoS 0: encoded straight from the shared message, no per-subscriber clone.
    fn deliver_qos0_to(
        &mut self,
        key: SessionKey,
        msg: &Message,
        retain: bool,
        ids: &[u32],
        now: Time,
    ) {
        let Some(e) = self.sessions.get_mut(key) else {
            return;
        };
        // Whose message it is matters only past the cap (the fan-out path
        // compares no client ids otherwise).
        let full = e.session.tx.len() >= self.limits.max_write_buffer;
        let own = msg.publisher.as_deref() == Some(&**e.session.client_id());
        let limits = match full && (own || msg.from_cluster) {
            true => &self.own_limits,
            false => &self.limits,
        };
        let outcome = e.session.deliver_qos0(msg, retain, ids, limits, now);
        self.count_delivery(key, outcome, QoS::AtMostOnce, now);
        match outcome {
            crate::session::Outcome::Sent => {
                self.sampler.delivered(key, msg.received_at);
                self.mark_dirty(key)
            }
            crate::session::Outcome::SentOverCap => {
                self.sampler.delivered(key, msg.received_at);
                self.mark_dirty(key);
                self.hold_back(key, msg.publisher.clone(), now);
            }
            _ => {}
        }
    }

    pub(super) fn deliver_to(&mut self, key: SessionKey, item: Routed, now: Time) {
        let Some(e) = self.sessions.get_mut(key) else {
            return;
        };
        // No clone of the publisher per delivery: the shared `Arc` would
        // bounce between cores; the over-cap case takes it from the queue.
        let own = item.msg.publisher.as_deref() == Some(&**e.session.client_id());
        let limits = match own || item.msg.from_cluster {
            true => &self.own_limits,
            false => &self.limits,
        };
        let (qos, received_at) = (item.qos, item.msg.received_at);
        let outcome = e.session.deliver(item, limits, now);
        let publisher =
            (outcome == Outcome::QueuedOverCap).then(|| e.session.last_queued_publisher());
        self.count_delivery(key, outcome, qos, now);
        if matches!(outcome, Outcome::Sent | Outcome::SentOverCap) {
            self.sampler.delivered(key, received_at);
        }
        if let Some(publisher) = publisher {
            self.collect_journal(key);
            return self.hold_back(key, publisher, now);
        }
        if outcome == crate::session::Outcome::Sent {
            self.mark_dirty(key);
        } else {
            self.collect_journal(key);
        }
    }

    /// Each shared group whose filter matches gets the message once.
    /// Returns whether any group matched.
    fn route_shared_groups(&mut self, msg: &Arc<Message>, now: Time) -> bool {
        let mut shares: Vec<SharedFilter> = Vec::new();
        self.shared_index
            .for_each_match_with(msg.topic.as_str(), &mut self.scratch, |groups| {
                shares.extend(groups.iter().map(|g| g.share.clone()));
            });
        let matched = !shares.is_empty();
        for share in shares {
            self.route_to_group(msg, share, None, 0, now);
        }
        matched
    }

    /// Picks the core holding the next member of `share` and delivers there.
    pub(super) fn route_to_group(
        &mut self,
        msg: &Arc<Message>,
        share: SharedFilter,
        exclude: Option<usize>,
        hops: u8,
        now: Time,
    ) {
        let publisher = msg.publisher.as_deref();
        let picker = &mut self.picker;
        let core = self
            .shared_index
            .get_mut(share.filter().as_str())
            .and_then(|groups| groups.iter_mut().find(|g| g.share == share))
            .and_then(|g| g.pick_core(picker, publisher, exclude));
        match core {
            Some(c) if c == self.id => self.deliver_shared(msg, share, hops, now),
            Some(c) => {
                let msg = MeshMsg::SharedPublish {
                    msg: msg.clone(),
                    share,
                    hops,
                };
                self.outbox.send(c, msg);
            }
            None => self.counters.dropped_shared_no_member += 1,
        }
    }

    /// Delivers to one local member of the group. If the members left meanwhile,
    /// one more hop to another core that has members.
    pub(super) fn deliver_shared(
        &mut self,
        msg: &Arc<Message>,
        share: SharedFilter,
        hops: u8,
        now: Time,
    ) {
        let publisher = msg.publisher.as_deref();
        let sessions = &mut self.sessions;
        let readable = |m: &Member| !m.checked || may_read(sessions, m.key, msg);
        let member = match self.shared.local.get_mut(&share) {
            Some(group) if !group.members.is_empty() => {
                match group.pick_readable(&mut self.picker, publisher, readable) {
                    Some(m) => Some(m),
                    None => {
                        self.counters.deliveries_denied += 1;
                        return;
                    }
                }
            }
            _ => None,
        };
        let Some(m) = member else {
            if hops == 0 {
                self.route_to_group(msg, share, Some(self.id), 1, now);
            } else {
                self.counters.dropped_shared_no_member += 1;
            }
            return;
        };
        let item = Routed {
            msg: msg.clone(),
            qos: m.opts.qos.min(msg.qos),
            retain: m.opts.retain_as_published && msg.retain,
            sub_ids: m.id.into_iter().collect(),
            shared: Some(share),
        };
        self.deliver_to(m.key, item, now);
    }

    /// A shared message its member did not acknowledge: to another member.
    pub(super) fn reroute_shared(&mut self, item: Routed, now: Time) {
        if let Some(share) = item.shared {
            self.route_to_group(&item.msg, share, None, 0, now);
        }
    }

    /// Retained updates for a topic are ordered by one owner core (the same hash
    /// as client ids): it stores, then forwards to every other replica. With
    /// `then`, that is done once every replica applied the update.
    pub(super) fn update_retained(&mut self, msg: &Arc<Message>, then: Option<Then>, now: Time) {
        let owner = owner_core(msg.topic.as_str(), self.cores);
        if owner == self.id {
            return self.order_retained(msg, then, now);
        }
        let reply = then.map(|then| {
            let token = self.new_token();
            self.open_barrier(token, 1, then, now)
        });
        let update = MeshMsg::Retain {
            msg: msg.clone(),
            from_owner: false,
            reply,
        };
        self.outbox.send(owner, update);
    }

    /// A retained message from the store, on its owner core.
    pub(super) fn route_restored_retained(&mut self, msg: Arc<Message>, now: Time) {
        self.order_retained(&msg, None, now);
    }

    /// As the topic's owner: applies the caps and stores, then forwards to
    /// every replica, in one order for all of them.
    fn order_retained(&mut self, msg: &Arc<Message>, then: Option<Then>, now: Time) {
        if !self.store_retained(msg) {
            self.counters.dropped_retained_cap += 1;
            if let Some(then) = then {
                self.complete(then, now);
            }
            return;
        }
        if let Some(journal) = self.journal.as_mut().filter(|_| !msg.topic.is_sys()) {
            if msg.payload.is_empty() {
                journal.retained_cleared(msg.topic.as_str());
            } else {
                journal.retained(msg);
            }
            self.outbox.journal.extend(journal.take());
        }
        let replicas = self.cores - 1;
        let reply: Option<Reply> = then.map(|then| {
            let token = self.new_token();
            self.open_barrier(token, replicas, then, now)
        });
        for core in other_cores(self.id, self.cores) {
            let update = MeshMsg::Retain {
                msg: msg.clone(),
                from_owner: true,
                reply,
            };
            self.outbox.send(core, update);
        }
    }

    /// Updates this core's retained replica; false when a cap refused it.
    fn store_retained(&mut self, msg: &Arc<Message>) -> bool {
        let stored = self.retained.set(msg);
        self.counters.retained_current = self.retained.len() as u64;
        self.counters.retained_bytes = self.retained.bytes() as u64;
        stored
    }

    /// Applies one message from another core.
    pub fn handle_mesh(&mut self, msg: MeshMsg, now: Time) {
        match msg {
            MeshMsg::Publish { msg } => {
                self.deliver_local(&msg, now);
            }
            MeshMsg::Hold { publisher, on } => self.apply_hold(&publisher, on),
            MeshMsg::Retain {
                msg,
                from_owner: true,
                reply,
            } => {
                // The owner already applied the caps; a replica holds the same set.
                self.store_retained(&msg);
                if let Some(reply) = reply {
                    self.acknowledge_to(reply, now);
                }
            }
            MeshMsg::Retain {
                msg,
                from_owner: false,
                reply,
            } => self.order_retained(&msg, reply.map(Then::Relay), now),
            MeshMsg::Interest {
                filter,
                core,
                add,
                ack,
            } => {
                self.apply_interest(&filter, core, add);
                if let Some(token) = ack {
                    self.acknowledge_to(Reply { core, token }, now);
                }
            }
            MeshMsg::SharedInterest {
                share,
                core,
                delta,
                ack,
            } => {
                self.apply_shared(&share, core, delta);
                if let Some(token) = ack {
                    self.acknowledge_to(Reply { core, token }, now);
                }
            }
            MeshMsg::SharedPublish { msg, share, hops } => {
                self.deliver_shared(&msg, share, hops, now)
            }
            MeshMsg::Ack { token } => self.barrier_acked(token, now),
        }
    }
}

/// 5.0 "no local": is the subscriber the message's own publisher?
pub(super) fn is_publisher(subscriber: Option<&Arc<str>>, msg: &Message) -> bool {
    match (subscriber, &msg.publisher) {
        (Some(s), Some(p)) => Arc::ptr_eq(s, p) || s == p,
        _ => false,
    }
}

/// Whether session `key` may read `msg` (a checked subscription's delivery).
pub(super) fn may_read(
    sessions: &mut slab::Slab<super::Entry>,
    key: SessionKey,
    msg: &Message,
) -> bool {
    sessions
        .get_mut(key)
        .is_some_and(|e| e.session.may_read(msg.topic.as_str()))
}
