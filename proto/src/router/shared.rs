//! Shared subscription groups (`$share/{group}/{filter}`): each message goes to
//! exactly one connected member, wherever on the cores the members sit.
//!
//! Every core keeps a replica of how many connected members each group has on
//! each core (updated on every join and leave, which are rare next to publishes).
//! The publishing core picks a member index over all members and sends the
//! message to the core holding it; that core picks among its own members.

use std::collections::HashMap;

use super::interest::owner_core;
use super::SessionKey;
use crate::limits::SharedStrategy;
use crate::topic::SharedFilter;

/// The replicated view of one group.
#[derive(Debug)]
pub struct GroupCounts {
    pub share: SharedFilter,
    /// Connected members per core.
    pub counts: Vec<u32>,
    pub total: u32,
    next: u64,
}

impl GroupCounts {
    pub fn new(share: SharedFilter, cores: usize) -> GroupCounts {
        GroupCounts {
            share,
            counts: vec![0; cores],
            total: 0,
            next: 0,
        }
    }

    pub fn apply(&mut self, core: usize, delta: i32) {
        let c = &mut self.counts[core];
        *c = c.saturating_add_signed(delta);
        self.total = self.counts.iter().sum();
    }

    /// The core holding the member chosen for the next message, skipping `exclude`.
    pub fn pick_core(
        &mut self,
        pick: &mut Picker,
        publisher: Option<&str>,
        exclude: Option<usize>,
    ) -> Option<usize> {
        let excluded = exclude.map_or(0, |c| self.counts[c]);
        let total = self.total - excluded;
        if total == 0 {
            return None;
        }
        let mut i = pick.index(total, &mut self.next, publisher);
        for (core, &n) in self.counts.iter().enumerate() {
            if Some(core) == exclude {
                continue;
            }
            if i < n {
                return Some(core);
            }
            i -= n;
        }
        None
    }
}

/// This core's connected members of one group.
#[derive(Debug, Default)]
pub struct LocalGroup {
    pub members: Vec<Member>,
    next: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub key: SessionKey,
    pub opts: crate::codec::SubOptions,
    pub id: Option<u32>,
    /// Deliveries to this member are checked against its permissions.
    pub checked: bool,
}

impl LocalGroup {
    pub fn pick(&mut self, pick: &mut Picker, publisher: Option<&str>) -> Option<Member> {
        let n = self.members.len() as u32;
        if n == 0 {
            return None;
        }
        let i = pick.index(n, &mut self.next, publisher);
        Some(self.members[i as usize])
    }

    /// [`Self::pick`], but a member that may not read the message gives way to
    /// the first one that may.
    pub fn pick_readable(
        &mut self,
        pick: &mut Picker,
        publisher: Option<&str>,
        mut may_read: impl FnMut(&Member) -> bool,
    ) -> Option<Member> {
        let first = self.pick(pick, publisher)?;
        if may_read(&first) {
            return Some(first);
        }
        self.members.iter().copied().find(|m| may_read(m))
    }
}

/// Chooses among `n` members by the configured strategy.
#[derive(Debug)]
pub struct Picker {
    strategy: SharedStrategy,
    rng: u64,
}

impl Picker {
    pub fn new(strategy: SharedStrategy, seed: u64) -> Picker {
        Picker {
            strategy,
            rng: seed | 1,
        }
    }

    fn index(&mut self, n: u32, next: &mut u64, publisher: Option<&str>) -> u32 {
        let n64 = u64::from(n);
        let i = match self.strategy {
            SharedStrategy::RoundRobin => {
                *next = next.wrapping_add(1);
                *next % n64
            }
            SharedStrategy::Random => self.xorshift() % n64,
            SharedStrategy::HashClientId => owner_core(publisher.unwrap_or(""), n as usize) as u64,
        };
        i as u32
    }

    fn xorshift(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

/// This core's shared-subscription state.
#[derive(Debug, Default)]
pub struct SharedGroups {
    pub local: HashMap<SharedFilter, LocalGroup>,
}

impl SharedGroups {
    /// Adds or updates a member; true when it joined (was not a member).
    pub fn join(&mut self, share: &SharedFilter, member: Member) -> bool {
        let group = self.local.entry(share.clone()).or_default();
        match group.members.iter_mut().find(|m| m.key == member.key) {
            Some(m) => {
                *m = member;
                false
            }
            None => {
                group.members.push(member);
                true
            }
        }
    }

    /// Removes a member; true when it was one.
    pub fn leave(&mut self, share: &SharedFilter, key: SessionKey) -> bool {
        let Some(group) = self.local.get_mut(share) else {
            return false;
        };
        let before = group.members.len();
        group.members.retain(|m| m.key != key);
        let left = group.members.len() < before;
        if group.members.is_empty() {
            self.local.remove(share);
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::{SubFilter, TopicFilter};

    fn share(text: &'static str) -> SharedFilter {
        match SubFilter::parse(TopicFilter::from_static(text)) {
            Ok(SubFilter::Shared(s)) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn round_robin_over_cores_is_weighted_by_members() {
        let mut g = GroupCounts::new(share("$share/g/t"), 3);
        g.apply(0, 1);
        g.apply(2, 3);
        let mut p = Picker::new(SharedStrategy::RoundRobin, 1);
        let mut hits = [0; 3];
        for _ in 0..400 {
            hits[g.pick_core(&mut p, None, None).unwrap()] += 1;
        }
        assert_eq!(hits, [100, 0, 300]);
        assert_eq!(g.pick_core(&mut p, None, Some(2)), Some(0));
        g.apply(0, -1);
        assert_eq!(g.pick_core(&mut p, None, Some(2)), None);
    }

    #[test]
    fn hash_strategy_is_sticky_per_publisher() {
        let mut g = LocalGroup::default();
        for key in 0..4 {
            g.members.push(Member {
                key,
                opts: Default::default(),
                id: None,
                checked: false,
            });
        }
        let mut p = Picker::new(SharedStrategy::HashClientId, 1);
        let first = g.pick(&mut p, Some("device-7")).unwrap();
        for _ in 0..10 {
            assert_eq!(g.pick(&mut p, Some("device-7")).unwrap(), first);
        }
    }
}
