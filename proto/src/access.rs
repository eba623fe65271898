//! What one client may do. The broker's authorizer (an ACL file today; an HTTP
//! or JWT backend later) decides it per client at CONNECT and again on reload;
//! the session asks at SUBSCRIBE and the router at PUBLISH, at delivery and
//! for wills. Nothing here knows how rules are stored.

use std::fmt;
use std::sync::Arc;

/// The answer to one SUBSCRIBE filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Refused: SUBACK 0x80 (3.1.1) or 0x87 (5.0) for this filter.
    Refused,
    /// Every topic the filter matches may be read: deliveries go unchecked.
    All,
    /// Some topics the filter matches may not be read: each delivery through
    /// this subscription (retained messages included) asks [`Access::may_read`].
    Checked,
}

/// One client's rights, already resolved for its client id and username.
/// Called on the event loop: implementations answer without I/O or
/// blocking. `may_publish` and `may_read` are on the message path and must
/// take time that does not grow with the size of the rule set; `subscribe`
/// runs once per SUBSCRIBE filter.
pub trait Access: Send + Sync + fmt::Debug {
    /// May the client publish to this topic name (its will included)?
    fn may_publish(&self, topic: &str) -> bool;
    /// May a message on this topic name be delivered to the client?
    fn may_read(&self, topic: &str) -> bool;
    /// May the client subscribe to this topic filter (a shared subscription's
    /// filter without its `$share/group/` prefix), and must deliveries through
    /// it be checked one by one?
    fn subscribe(&self, filter: &str) -> Grant;
}

/// A client's rights as sessions hold them. Everything is allowed when no
/// authorizer is configured, at no cost on the message path.
#[derive(Clone, Debug, Default)]
pub struct Permissions(Option<Arc<dyn Access>>);

impl Permissions {
    /// Every topic, both ways.
    pub const fn all() -> Permissions {
        Permissions(None)
    }

    /// What `access` allows.
    pub fn limited(access: Arc<dyn Access>) -> Permissions {
        Permissions(Some(access))
    }

    pub fn is_all(&self) -> bool {
        self.0.is_none()
    }

    #[inline]
    pub fn may_publish(&self, topic: &str) -> bool {
        self.0.as_ref().is_none_or(|a| a.may_publish(topic))
    }

    #[inline]
    pub fn may_read(&self, topic: &str) -> bool {
        self.0.as_ref().is_none_or(|a| a.may_read(topic))
    }

    pub fn subscribe(&self, filter: &str) -> Grant {
        self.0.as_ref().map_or(Grant::All, |a| a.subscribe(filter))
    }
}

/// Slots of a [`DecisionCache`].
const CACHE_SLOTS: usize = 8;

/// One session's recent decisions for one kind of access. A client publishes
/// to (and a checked subscription delivers from) few topics, again and again:
/// a hit costs a hash and a byte comparison instead of a walk of the rules.
/// Exact topics are kept, never only their hash, so a collision cannot
/// change an answer. Dropped whenever the permissions change.
#[derive(Debug, Default)]
pub struct DecisionCache {
    slots: [Option<(Box<str>, bool)>; CACHE_SLOTS],
}

impl DecisionCache {
    /// The cached decision for `topic`, or `decide()` remembered.
    pub fn get_or(&mut self, topic: &str, decide: impl FnOnce() -> bool) -> bool {
        use std::hash::BuildHasher as _;
        let hash = foldhash::fast::FixedState::with_seed(0x5eed).hash_one(topic);
        let slot = &mut self.slots[hash as usize % CACHE_SLOTS];
        match slot {
            Some((cached, allowed)) if **cached == *topic => *allowed,
            _ => {
                let allowed = decide();
                *slot = Some((topic.into(), allowed));
                allowed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_answers_as_decided_and_never_mixes_topics() {
        let mut cache = DecisionCache::default();
        let mut calls = 0;
        for round in 0..3 {
            for i in 0..20 {
                let topic = format!("t/{i}");
                let allowed = cache.get_or(&topic, || {
                    calls += 1;
                    i % 2 == 0
                });
                assert_eq!(allowed, i % 2 == 0, "round {round}, {topic}");
            }
        }
        assert!(calls < 60, "some answers came from the cache");
        assert!(calls >= 20, "each topic was decided once at least");
    }
}
