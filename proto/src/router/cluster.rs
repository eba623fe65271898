//! What a core exchanges with the cluster link (ringmq nodes over NATS): the
//! messages its clients publish, going out, and its interest in filters, so
//! the link subscribes in NATS once per filter the node holds; and the
//! messages other nodes publish, coming in, each for one of those filters.
//!
//! A message from another node is delivered to the subscribers of the one
//! filter it came through: NATS hands a node one copy per matching
//! subscription, so delivering by filter (rather than matching again) needs
//! no de-duplication and loses nothing when a node's filters change. A
//! client with overlapping subscriptions then gets one copy per matching
//! filter from other nodes, which both MQTT versions allow [MQTT-3.3.4-2]
//! (5.0 says so; 3.1.1 brokers commonly do it too).

use std::sync::Arc;

use super::{Core, Match};
use crate::message::Message;
use crate::time::Time;
use crate::topic::TopicFilter;

/// One item for the cluster link, in the order the core produced them.
#[derive(Debug)]
pub enum ClusterMsg {
    /// A message published on this core (by a client or a will), for the
    /// other nodes' subscribers and retained stores.
    Publish(Arc<Message>),
    /// This core gained its first (`add`) or lost its last subscriber of
    /// `filter`.
    Interest { filter: TopicFilter, add: bool },
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
    }

    /// A message published here, for the other nodes. `$SYS` stays local:
    /// each node has its own.
    pub(super) fn forward_to_cluster(&mut self, msg: &Arc<Message>) {
        if self.cluster && !msg.topic.is_sys() {
            self.outbox.cluster.push(ClusterMsg::Publish(msg.clone()));
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
        self.delivering_remote = true;
        self.deliver_matches(msg, matches, now);
        self.delivering_remote = false;
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
