//! Subscribing and unsubscribing: this core's trie, the replicated interest index
//! and shared-group counts, and the barrier that makes a SUBACK mean "effective
//! on every core".

use super::barrier::Then;
use super::interest::other_cores;
use super::shared::{GroupCounts, Member};
use super::{ConnId, Core, Interest, MeshMsg, SessionKey, Subscriber};
use crate::codec::Pid;
use crate::session::{Routed, SubEntry};
use crate::time::Time;
use crate::topic::{SharedFilter, SubFilter, TopicFilter};

/// A SUBSCRIBE whose SUBACK waits for other cores to acknowledge the new
/// interest, so that anything published after the SUBACK reaches the
/// subscriber whichever core the publisher is on.
#[derive(Debug)]
pub(super) struct PendingSubscribe {
    pub(super) key: SessionKey,
    /// The connection that sent it: if the session moved on to another
    /// connection meanwhile, no SUBACK is owed to the new one.
    pub(super) conn: ConnId,
    pid: Pid,
    codes: Vec<u8>,
    added: Vec<(SubFilter, SubEntry)>,
    existed: Vec<bool>,
}

impl Core {
    /// Makes the subscriptions effective here and announces them. Answers now
    /// when no other core must acknowledge; otherwise the connection pauses
    /// until the last acknowledgement completes the SUBSCRIBE.
    pub(super) fn subscribe(
        &mut self,
        key: SessionKey,
        pid: Pid,
        codes: Vec<u8>,
        added: Vec<(SubFilter, SubEntry)>,
        existed: Vec<bool>,
        now: Time,
    ) {
        let Some(conn) = self.sessions.get(key).and_then(|e| e.conn) else {
            return;
        };
        let token = self.new_token();
        let mut acks = 0;
        for (filter, entry) in &added {
            acks += self.subscribe_one(key, filter, *entry, token);
        }
        let pending = PendingSubscribe {
            key,
            conn,
            pid,
            codes,
            added,
            existed,
        };
        if acks == 0 {
            self.complete_subscribe(pending, now);
        } else {
            self.open_barrier(token, acks, Then::SubAck(pending), now);
        }
    }

    /// A restored session's subscription: in force here and announced to
    /// every core, with no SUBACK to wait for.
    pub(super) fn restore_subscription(
        &mut self,
        key: SessionKey,
        filter: &SubFilter,
        entry: SubEntry,
    ) {
        let SubFilter::Plain(plain) = filter else {
            return;
        };
        let list = self.subs.get_or_insert_with(plain.as_str(), Vec::new);
        reserve_first(list);
        list.push(Subscriber {
            key,
            opts: entry.opts,
            id: entry.id,
            checked: entry.checked,
        });
        self.counters.subscriptions_current += 1;
        if list.len() == 1 {
            self.announce_interest(plain, true, None);
        }
    }

    /// Returns how many cores must acknowledge before the SUBACK.
    fn subscribe_one(
        &mut self,
        key: SessionKey,
        filter: &SubFilter,
        entry: SubEntry,
        token: u64,
    ) -> usize {
        let filter = match filter {
            SubFilter::Shared(share) => {
                let member = Member {
                    key,
                    opts: entry.opts,
                    id: entry.id,
                    checked: entry.checked,
                };
                if !self.shared.join(share, member) {
                    return 0;
                }
                self.counters.subscriptions_current += 1;
                self.counters.shared_subscriptions_current += 1;
                return self.announce_shared(share, 1, Some(token));
            }
            SubFilter::Plain(filter) => filter,
        };
        let list = self.subs.get_or_insert_with(filter.as_str(), Vec::new);
        let sub = Subscriber {
            key,
            opts: entry.opts,
            id: entry.id,
            checked: entry.checked,
        };
        match list.iter_mut().find(|s| s.key == key) {
            Some(s) => {
                *s = sub;
                0
            }
            None => {
                reserve_first(list);
                list.push(sub);
                self.counters.subscriptions_current += 1;
                if list.len() == 1 {
                    self.announce_interest(filter, true, Some(token))
                } else {
                    0
                }
            }
        }
    }

    /// Sends SUBACK, then the retained messages the new subscriptions match
    /// (RETAIN=1 [MQTT-3.3.1-8]), per 5.0 retain handling. Shared subscriptions
    /// get no retained messages [MQTT-4.8.2]. False when the connection that
    /// subscribed is gone.
    pub(super) fn complete_subscribe(&mut self, pending: PendingSubscribe, now: Time) -> bool {
        let limits = self.limits.clone();
        let key = pending.key;
        match self.sessions.get_mut(key) {
            Some(e) if e.conn == Some(pending.conn) => {
                e.session.send_suback(pending.pid, pending.codes)
            }
            _ => return false,
        }
        let mut found = Vec::new();
        let session = &mut self.sessions[key].session;
        for ((filter, entry), existed) in pending.added.iter().zip(pending.existed) {
            let send = match entry.opts.retain_handling {
                0 => true,
                1 => !existed,
                _ => false,
            };
            let SubFilter::Plain(filter) = filter else {
                continue;
            };
            if send {
                self.retained.for_each_matching(filter.as_str(), |_, msg| {
                    if entry.checked && !session.may_read(msg.topic.as_str()) {
                        return;
                    }
                    found.push(Routed {
                        msg: msg.clone(),
                        qos: entry.opts.qos.min(msg.qos),
                        retain: true,
                        sub_ids: entry.id.into_iter().collect(),
                        shared: None,
                    });
                });
            }
        }
        for item in found {
            let qos = item.qos;
            let outcome = self.sessions[key].session.deliver(item, &limits, now);
            self.count_delivery(key, outcome, qos, now);
        }
        self.mark_dirty(key);
        true
    }

    pub(super) fn unsubscribe_one(&mut self, key: SessionKey, filter: &SubFilter) {
        let filter = match filter {
            SubFilter::Shared(share) => {
                if self.shared.leave(share, key) {
                    self.counters.subscriptions_current -= 1;
                    self.counters.shared_subscriptions_current -= 1;
                    self.announce_shared(share, -1, None);
                }
                return;
            }
            SubFilter::Plain(filter) => filter,
        };
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

    /// A shared member counts only while connected: this (de)activates all of a
    /// session's shared subscriptions when its connection comes or goes.
    pub(super) fn activate_shared(&mut self, key: SessionKey, active: bool) {
        let shares: Vec<(SharedFilter, SubEntry)> = self.sessions[key]
            .session
            .subscriptions()
            .filter_map(|(f, e)| match f {
                SubFilter::Shared(share) => Some((share.clone(), *e)),
                SubFilter::Plain(_) => None,
            })
            .collect();
        for (share, entry) in shares {
            let changed = if active {
                let member = Member {
                    key,
                    opts: entry.opts,
                    id: entry.id,
                    checked: entry.checked,
                };
                self.shared.join(&share, member)
            } else {
                self.shared.leave(&share, key)
            };
            if changed {
                self.announce_shared(&share, if active { 1 } else { -1 }, None);
            }
        }
    }

    /// Records this core's interest change and tells every other core. Returns how
    /// many acknowledgements to wait for.
    /// This core's own subscriptions are not in its interest index: its
    /// subscription trie answers for them (one copy of each filter fewer).
    fn announce_interest(&mut self, filter: &TopicFilter, add: bool, ack: Option<u64>) -> usize {
        self.announce_to_cluster(filter, add);
        let mut told = 0;
        for core in other_cores(self.id, self.cores) {
            let msg = MeshMsg::Interest {
                filter: filter.clone(),
                core: self.id,
                add,
                ack,
            };
            self.outbox.send(core, msg);
            told += 1;
        }
        told
    }

    pub(super) fn apply_interest(&mut self, filter: &TopicFilter, core: usize, add: bool) {
        if add {
            self.interest
                .get_or_insert_with(filter.as_str(), Interest::default)
                .insert(core);
        } else if let Some(set) = self.interest.get_mut(filter.as_str()) {
            set.remove(core);
            if set.is_empty() {
                self.interest.remove(filter.as_str());
            }
        }
    }

    /// Applies a member-count change of a shared group here and on every core.
    /// Returns how many acknowledgements to wait for.
    fn announce_shared(&mut self, share: &SharedFilter, delta: i32, ack: Option<u64>) -> usize {
        let before = self.own_members(share);
        self.apply_shared(share, self.id, delta);
        let after = self.own_members(share);
        if (before == 0) != (after == 0) {
            self.announce_shared_to_cluster(share, after > 0);
        }
        let mut told = 0;
        for core in other_cores(self.id, self.cores) {
            let msg = MeshMsg::SharedInterest {
                share: share.clone(),
                core: self.id,
                delta,
                ack,
            };
            self.outbox.send(core, msg);
            told += 1;
        }
        told
    }

    /// This core's connected members of `share`.
    fn own_members(&self, share: &SharedFilter) -> u32 {
        let groups = self.shared_index.get(share.filter().as_str());
        let group = groups.and_then(|gs| gs.iter().find(|g| g.share == *share));
        group.map_or(0, |g| g.counts[self.id])
    }

    pub(super) fn apply_shared(&mut self, share: &SharedFilter, core: usize, delta: i32) {
        let cores = self.cores;
        let inner = share.filter().as_str();
        let groups = self.shared_index.get_or_insert_with(inner, Vec::new);
        let i = match groups.iter().position(|g| g.share == *share) {
            Some(i) => i,
            None => {
                groups.push(GroupCounts::new(share.clone(), cores));
                groups.len() - 1
            }
        };
        groups[i].apply(core, delta);
        if groups[i].total == 0 {
            groups.swap_remove(i);
        }
        if groups.is_empty() {
            self.shared_index.remove(inner);
        }
    }
}

/// Most filters of a device fleet have one subscriber (`dev/<id>/cmd`): the
/// first gets a list of exactly one, not the four a `Vec` starts with.
fn reserve_first(list: &mut Vec<Subscriber>) {
    if list.capacity() == 0 {
        list.reserve_exact(1);
    }
}
