//! Subscribing and unsubscribing: this core's trie, the replicated interest index
//! and shared-group counts, and the barrier that makes a SUBACK mean "effective
//! on every core".

use std::sync::Arc;

use futures::channel::oneshot;

use super::shared::{GroupCounts, Member};
use super::{Barrier, Core, CoreSet, MeshMsg, SessionKey, Subscriber};
use crate::codec::Pid;
use crate::session::{Routed, SubEntry};
use crate::topic::share::parse_shared;
use crate::topic::TopicFilter;

/// A SUBSCRIBE whose SUBACK waits for other cores to know about the new interest,
/// so that anything published after the SUBACK reaches the subscriber.
#[derive(Debug)]
pub struct PendingSubscribe {
    pid: Pid,
    codes: Vec<u8>,
    added: Vec<(TopicFilter, SubEntry)>,
    existed: Vec<bool>,
    /// Resolves when every other core acknowledged; `None`: nothing to wait for.
    pub barrier: Option<oneshot::Receiver<()>>,
}

impl Core {
    pub(super) fn subscribe(
        &mut self,
        key: SessionKey,
        pid: Pid,
        codes: Vec<u8>,
        added: Vec<(TopicFilter, SubEntry)>,
        existed: Vec<bool>,
    ) -> PendingSubscribe {
        let token = self.next_token;
        let mut waits = 0;
        for (filter, entry) in &added {
            waits += self.subscribe_one(key, filter, *entry, token);
        }
        let barrier = (waits > 0).then(|| {
            self.next_token += 1;
            let (done, wait) = oneshot::channel();
            let barrier = Barrier {
                remaining: waits,
                done,
            };
            self.barriers.insert(token, barrier);
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

    /// Returns how many cores must acknowledge before the SUBACK.
    fn subscribe_one(
        &mut self,
        key: SessionKey,
        filter: &TopicFilter,
        entry: SubEntry,
        token: u64,
    ) -> usize {
        if let Some(Ok(shared)) = parse_shared(filter.as_str()) {
            let share: Arc<str> = filter.as_str().into();
            let member = Member {
                key,
                opts: entry.opts,
                id: entry.id,
            };
            if !self.shared.join(&share, member) {
                return 0;
            }
            self.counters.subscriptions_current += 1;
            let inner = shared.filter.to_owned();
            return self.announce_shared(&share, &inner, 1, Some(token));
        }
        let list = self.subs.get_or_insert_with(filter.as_str(), Vec::new);
        let sub = Subscriber {
            key,
            opts: entry.opts,
            id: entry.id,
        };
        match list.iter_mut().find(|s| s.key == key) {
            Some(s) => {
                *s = sub;
                0
            }
            None => {
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
    /// get no retained messages [MQTT-4.8.2].
    pub fn complete_subscribe(&mut self, key: SessionKey, pending: PendingSubscribe, now: u64) {
        let limits = self.limits.clone();
        let Some(e) = self.sessions.get_mut(key) else {
            return;
        };
        e.session.send_suback(pending.pid, pending.codes);
        let mut found = Vec::new();
        for ((filter, entry), existed) in pending.added.iter().zip(pending.existed) {
            let send = match entry.opts.retain_handling {
                0 => true,
                1 => !existed,
                _ => false,
            };
            if send && parse_shared(filter.as_str()).is_none() {
                self.retained.for_each_matching(filter.as_str(), |_, msg| {
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
        let e = &mut self.sessions[key];
        for item in found {
            let outcome = e.session.deliver(item, &limits, now);
            self.counters.count(outcome);
        }
        self.mark_dirty(key);
    }

    pub(super) fn unsubscribe_one(&mut self, key: SessionKey, filter: &TopicFilter) {
        if let Some(Ok(shared)) = parse_shared(filter.as_str()) {
            if self.shared.leave(filter.as_str(), key) {
                self.counters.subscriptions_current -= 1;
                let share: Arc<str> = filter.as_str().into();
                self.announce_shared(&share, shared.filter, -1, None);
            }
            return;
        }
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
        let entries: Vec<(TopicFilter, SubEntry)> = self.sessions[key]
            .session
            .subscriptions()
            .filter(|(f, _)| parse_shared(f.as_str()).is_some())
            .map(|(f, e)| (f.clone(), *e))
            .collect();
        for (filter, entry) in entries {
            let Some(Ok(shared)) = parse_shared(filter.as_str()) else {
                continue;
            };
            let share: Arc<str> = filter.as_str().into();
            let changed = if active {
                let member = Member {
                    key,
                    opts: entry.opts,
                    id: entry.id,
                };
                self.shared.join(&share, member)
            } else {
                self.shared.leave(&share, key)
            };
            if changed {
                self.announce_shared(&share, shared.filter, if active { 1 } else { -1 }, None);
            }
        }
    }

    /// Records this core's interest change and tells every other core. Returns how
    /// many acknowledgements to wait for.
    fn announce_interest(&mut self, filter: &TopicFilter, add: bool, ack: Option<u64>) -> usize {
        self.apply_interest(filter, self.id, add);
        let others: Vec<usize> = (0..self.cores).filter(|c| *c != self.id).collect();
        for &core in &others {
            self.outbox[core].push(MeshMsg::Interest {
                filter: filter.clone(),
                core: self.id,
                add,
                ack,
            });
        }
        others.len()
    }

    pub(super) fn apply_interest(&mut self, filter: &TopicFilter, core: usize, add: bool) {
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

    /// Applies a member-count change of a shared group here and on every core.
    fn announce_shared(
        &mut self,
        share: &Arc<str>,
        inner: &str,
        delta: i32,
        ack: Option<u64>,
    ) -> usize {
        self.apply_shared(share, inner, self.id, delta);
        let others: Vec<usize> = (0..self.cores).filter(|c| *c != self.id).collect();
        for &core in &others {
            self.outbox[core].push(MeshMsg::SharedInterest {
                share: share.clone(),
                core: self.id,
                delta,
                ack,
            });
        }
        others.len()
    }

    pub(super) fn apply_shared(&mut self, share: &Arc<str>, inner: &str, core: usize, delta: i32) {
        let cores = self.cores;
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
