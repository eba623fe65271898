//! What a core exchanges with the cluster link (ringmq nodes over NATS): the
//! messages its clients publish, going out, and its interest in filters, so
//! the link subscribes in NATS once per filter the node holds; and the
//! messages other nodes publish, coming in, each for one of those filters.
//!
//! Shared groups span nodes through NATS queue groups: each node with
//! members of `$share/g/f` joins queue group `g` on `f`'s subject, so NATS
//! hands each message to one node of those, which picks one of its members.
//! While that works (the link says so: [`Core::set_cluster_shared`]), a
//! node does not deliver its own clients' messages to its shared groups
//! directly: they come back through NATS like everyone else's, or a group
//! with members on two nodes would get two copies.
//!
//! A message from another node is delivered to the subscribers of the one
//! filter it came through: NATS hands a node one copy per matching
//! subscription, so delivering by filter (rather than matching again) needs
//! no de-duplication and loses nothing when a node's filters change. A
//! client with overlapping subscriptions then gets one copy per matching
//! filter from other nodes, which both MQTT versions allow [MQTT-3.3.4-2]
//! (5.0 says so; 3.1.1 brokers commonly do it too).

use std::sync::Arc;

use super::{Core, Match, SessionKey};
use crate::durable::SessionImage;
use crate::message::Message;
use crate::time::Time;
use crate::topic::{SharedFilter, TopicFilter};

/// One item for the cluster link, in the order the core produced them.
#[derive(Debug)]
pub enum ClusterMsg {
    /// A message published on this core (by a client or a will), for the
    /// other nodes' subscribers and retained stores.
    Publish(Arc<Message>),
    /// This core gained its first (`add`) or lost its last subscriber of
    /// `filter`.
    Interest { filter: TopicFilter, add: bool },
    /// This core gained its first (`add`) or lost its last connected member
    /// of shared group `share`.
    SharedInterest { share: SharedFilter, add: bool },
    /// Persistent session `client_id` is now `meta` (who it is, what it
    /// subscribes to; no messages) and its client `connected` or not, or
    /// ended (`None`): the link records it in JetStream, so that another
    /// node can bring the session back should this one be lost.
    Session {
        client_id: Arc<str>,
        meta: Option<Box<SessionImage>>,
        connected: bool,
    },
}

impl Core {
    /// From now on, tell the cluster link (through [`super::Outbox::cluster`])
    /// what this core's clients publish and which filters it holds; the
    /// filters it holds already are told at once.
    pub fn join_cluster(&mut self) {
        self.cluster = true;
        let mut filters = Vec::new();
        self.subs
            .for_each(|filter, _| filters.push(filter.to_owned()));
        for filter in filters {
            if let Ok(filter) = TopicFilter::new(filter.into(), usize::MAX) {
                self.outbox
                    .cluster
                    .push(ClusterMsg::Interest { filter, add: true });
            }
        }
        let shares = self.shared.local.iter();
        let held = shares.filter(|(_, g)| !g.members.is_empty());
        let shares: Vec<SharedFilter> = held.map(|(share, _)| share.clone()).collect();
        for share in shares {
            self.announce_shared_to_cluster(&share, true);
        }
    }

    /// Whether shared groups' messages go through NATS (the link's
    /// connection for them is up) or, when not, straight to this node's
    /// members as on a lone node.
    pub fn set_cluster_shared(&mut self, on: bool) {
        self.cluster_shared = self.cluster && on;
        self.counters.cluster_shared_cores = u64::from(self.cluster_shared);
    }

    /// True when this node's own shared groups get `msg` back through NATS
    /// rather than directly.
    pub(super) fn shares_through_cluster(&self, msg: &Message) -> bool {
        self.cluster_shared && !msg.topic.is_sys()
    }

    /// A message published here, for the other nodes. `$SYS` stays local:
    /// each node has its own. Returns whether it went.
    pub(super) fn forward_to_cluster(&mut self, msg: &Arc<Message>) -> bool {
        let forward = self.cluster && !msg.topic.is_sys();
        if forward {
            self.outbox.cluster.push(ClusterMsg::Publish(msg.clone()));
        }
        forward
    }

    /// Tells the link what persistent session `key` now is, when its meta
    /// changed (or `always`: it connected, disconnected or came back); a
    /// session recorded before that is no longer persistent is recorded as
    /// ended. Sessions that never were persistent cost the link nothing.
    pub(super) fn share_session(&mut self, key: SessionKey, always: bool) {
        if !self.cluster {
            return;
        }
        let Some(e) = self.sessions.get_mut(key) else {
            return;
        };
        let changed = e.session.take_meta_changed();
        let persistent = e.session.is_persistent();
        if !(changed || always) || !(persistent || e.in_cluster) {
            return;
        }
        e.in_cluster = persistent;
        let meta = persistent.then(|| Box::new(e.session.meta_image()));
        let connected = e.session.is_connected();
        let client_id = e.session.client_id().clone();
        self.outbox.cluster.push(ClusterMsg::Session {
            client_id,
            meta,
            connected,
        });
    }

    /// A session recorded with the link ended here.
    pub(super) fn unshare_session(&mut self, client_id: Arc<str>) {
        self.outbox.cluster.push(ClusterMsg::Session {
            client_id,
            meta: None,
            connected: false,
        });
    }

    /// Tells the link that this core's members of `share` came or went.
    pub(super) fn announce_shared_to_cluster(&mut self, share: &SharedFilter, add: bool) {
        if self.cluster {
            let share = share.clone();
            self.outbox
                .cluster
                .push(ClusterMsg::SharedInterest { share, add });
        }
    }

    /// A message for shared group `share`, which NATS gave this node of all
    /// those with members: to one member here, picked over every core's.
    pub fn deliver_shared_from_cluster(
        &mut self,
        msg: &Arc<Message>,
        share: &SharedFilter,
        now: Time,
    ) {
        if share.filter().matches(&msg.topic) {
            self.route_to_group(msg, share.clone(), None, 0, now);
        }
    }

    /// Tells the link of a change in this core's interest.
    pub(super) fn announce_to_cluster(&mut self, filter: &TopicFilter, add: bool) {
        if self.cluster {
            let filter = filter.clone();
            self.outbox
                .cluster
                .push(ClusterMsg::Interest { filter, add });
        }
    }

    /// Delivers a message from another node to this core's subscribers of
    /// `filter`, the filter whose NATS subscription it came through. NATS's
    /// wildcards also match `$` topics, which MQTT's leading wildcards do
    /// not: those are checked here. A full queue drops it (its publisher is
    /// on another node, out of reach of back-pressure from here). Returns
    /// how many sessions it reached.
    pub fn deliver_from_cluster(
        &mut self,
        msg: &Arc<Message>,
        filter: &TopicFilter,
        now: Time,
    ) -> usize {
        if !filter.matches(&msg.topic) {
            return 0;
        }
        let mut matches = std::mem::take(&mut self.matches);
        matches.clear();
        let mut denied = 0;
        if let Some(list) = self.subs.get(filter.as_str()) {
            collect_matches(&mut self.sessions, list, msg, &mut matches, &mut denied);
        }
        self.counters.deliveries_denied += denied;
        let reached = matches.len();
        self.deliver_matches(msg, matches, now);
        reached
    }

    /// A retained-store update from another node: ordered by the topic's
    /// owner core and applied on every core, as a local one is.
    pub fn retain_from_cluster(&mut self, msg: &Arc<Message>, now: Time) {
        self.update_retained(msg, None, now);
    }
}

/// Adds to `matches` the subscribers in `list` that may receive `msg`: those
/// whose permissions let them read it, and not its own publisher where the
/// subscription asked for 5.0 "no local".
pub(super) fn collect_matches(
    sessions: &mut slab::Slab<super::Entry>,
    list: &[super::Subscriber],
    msg: &Message,
    matches: &mut Vec<Match>,
    denied: &mut u64,
) {
    for s in list {
        if s.checked && !super::delivery::may_read(sessions, s.key, msg) {
            *denied += 1;
            continue;
        }
        if s.opts.no_local
            && super::delivery::is_publisher(
                sessions.get(s.key).map(|e| e.session.client_id()),
                msg,
            )
        {
            continue;
        }
        matches.push(Match {
            key: s.key,
            qos: s.opts.qos.min(msg.qos),
            retain: s.opts.retain_as_published && msg.retain,
            id: s.id,
        });
    }
}

impl Core {
    /// Another node's client connected with this session's client id: the
    /// session leaves this node. Its connection, if any, is closed as on a
    /// takeover (a will without delay goes out; a delayed one is the new
    /// node's to cancel, since its client is back), and it ends here.
    /// Returns its image for the new node unless `discard` (a clean start)
    /// or it is not persistent.
    pub fn release_to_cluster(
        &mut self,
        client_id: &str,
        discard: bool,
        now: Time,
    ) -> Option<crate::durable::SessionImage> {
        let key = *self.by_client_id.get(client_id)?;
        self.take_over(key, now);
        let e = &mut self.sessions[key];
        if e.delayed_will.take().is_some() && e.session.is_journaled() {
            if let Some(journal) = self.journal.as_mut() {
                journal.will_done(e.session.client_id());
                self.outbox.journal.extend(journal.take());
            }
        }
        let keep = !discard && self.sessions[key].session.is_persistent();
        let image = keep.then(|| self.sessions[key].session.image());
        self.end_session(key, now);
        image
    }

    /// A session another node released for a client now connecting here
    /// (see [`Core::release_to_cluster`]): it replaces any copy this core
    /// still holds of an earlier stay, and the connect that follows resumes
    /// it.
    pub fn adopt_from_cluster(&mut self, image: crate::durable::SessionImage, now: Time) {
        if let Some(&key) = self.by_client_id.get(&image.client_id) {
            self.take_over(key, now);
            if let Some(e) = self.sessions.get_mut(key) {
                e.delayed_will = None;
            }
            self.end_session(key, now);
        }
        self.restore(image, now);
    }
}

impl Core {
    /// What a node that was lost still held for a session that moved here
    /// meanwhile, handed over when that node came back: its unacknowledged
    /// and queued messages are delivered after what the session has (a
    /// QoS 2 message whose PUBREL was sent reached its client already).
    /// Returns how many could not be: the session is gone from here too.
    pub fn merge_from_cluster(&mut self, image: SessionImage, now: Time) -> usize {
        let sent = image
            .inflight
            .into_iter()
            .filter(|(_, state, _)| *state == crate::session::OutState::Published);
        let items: Vec<_> = sent.map(|(_, _, item)| item).chain(image.queue).collect();
        let Some(&key) = self.by_client_id.get(&image.client_id) else {
            return items.len();
        };
        for item in items {
            self.deliver_to(key, item, now);
        }
        self.collect_journal(key);
        self.mark_dirty(key);
        0
    }

    /// The client ids of this core's persistent sessions.
    pub fn persistent_sessions(&self) -> Vec<Arc<str>> {
        let persistent = self.sessions.iter().map(|(_, e)| &e.session);
        let persistent = persistent.filter(|s| s.is_persistent());
        persistent.map(|s| s.client_id().clone()).collect()
    }
}
