//! A session's subscriptions, by filter. Most devices hold one or two, and an
//! idle fleet holds a set per device: a `Vec` of exactly the entries costs a
//! small fraction of a `HashMap` (whose smallest table, for one entry, is four
//! buckets and a control group). Past [`FEW`] entries it becomes a map, so a
//! bridge with thousands of filters still finds one in constant time.

use std::borrow::Borrow;
use std::collections::HashMap;

use super::SubEntry;
use crate::topic::SubFilter;

/// Up to this many subscriptions are searched in a `Vec`.
const FEW: usize = 16;

#[derive(Debug)]
pub(super) enum Subscriptions {
    Few(Vec<(SubFilter, SubEntry)>),
    /// Boxed: the map is twice a `Vec`'s size inline, and few sessions need one.
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<SubFilter, SubEntry>>),
}

impl Default for Subscriptions {
    fn default() -> Self {
        Subscriptions::Few(Vec::new())
    }
}

impl Subscriptions {
    pub(super) fn len(&self) -> usize {
        match self {
            Self::Few(v) => v.len(),
            Self::Many(m) => m.len(),
        }
    }

    pub(super) fn contains(&self, filter: &str) -> bool {
        match self {
            Self::Few(v) => v.iter().any(|(f, _)| Borrow::<str>::borrow(f) == filter),
            Self::Many(m) => m.contains_key(filter),
        }
    }

    /// Adds a subscription or replaces the one with the same filter.
    pub(super) fn insert(&mut self, filter: SubFilter, entry: SubEntry) {
        match self {
            Self::Few(v) => {
                if let Some(slot) = v.iter_mut().find(|(f, _)| *f == filter) {
                    slot.1 = entry;
                } else if v.len() < FEW {
                    // Grown one at a time: Vec's first allocation would hold four.
                    v.reserve_exact(1);
                    v.push((filter, entry));
                } else {
                    let mut map: HashMap<_, _> = v.drain(..).collect();
                    map.insert(filter, entry);
                    *self = Self::Many(Box::new(map));
                }
            }
            Self::Many(m) => {
                m.insert(filter, entry);
            }
        }
    }

    pub(super) fn remove_entry(&mut self, filter: &str) -> Option<(SubFilter, SubEntry)> {
        match self {
            Self::Few(v) => {
                let i = v
                    .iter()
                    .position(|(f, _)| Borrow::<str>::borrow(f) == filter)?;
                let removed = v.swap_remove(i);
                v.shrink_to_fit();
                Some(removed)
            }
            Self::Many(m) => {
                let removed = m.remove_entry(filter)?;
                if m.len() <= FEW / 2 {
                    *self = Self::Few(m.drain().collect());
                }
                Some(removed)
            }
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&SubFilter, &SubEntry)> {
        let (few, many) = match self {
            Self::Few(v) => (Some(v.iter().map(|(f, e)| (f, e))), None),
            Self::Many(m) => (None, Some(m.iter())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (&SubFilter, &mut SubEntry)> {
        let (few, many) = match self {
            Self::Few(v) => (Some(v.iter_mut().map(|(f, e)| (&*f, e))), None),
            Self::Many(m) => (None, Some(m.iter_mut())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }
}

impl FromIterator<(SubFilter, SubEntry)> for Subscriptions {
    fn from_iter<I: IntoIterator<Item = (SubFilter, SubEntry)>>(iter: I) -> Self {
        let mut subscriptions = Subscriptions::default();
        for (filter, entry) in iter {
            subscriptions.insert(filter, entry);
        }
        subscriptions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::TopicFilter;

    fn filter(n: usize) -> SubFilter {
        let text = format!("dev/{n}/cmd");
        SubFilter::parse(TopicFilter::new(text.into(), usize::MAX).unwrap()).unwrap()
    }

    fn entry(id: u32) -> SubEntry {
        SubEntry {
            opts: Default::default(),
            id: Some(id),
            checked: false,
        }
    }

    #[test]
    fn behaves_as_a_map_across_the_switch_and_back() {
        let mut subs = Subscriptions::default();
        for n in 0..3 * FEW {
            subs.insert(filter(n), entry(1));
            subs.insert(filter(n), entry(n as u32));
            assert_eq!(subs.len(), n + 1);
        }
        assert!(matches!(subs, Subscriptions::Many(_)));
        for n in (0..3 * FEW).rev() {
            assert!(subs.contains(filter(n).as_str()));
            let (f, e) = subs.remove_entry(filter(n).as_str()).unwrap();
            assert_eq!((f.as_str(), e.id), (filter(n).as_str(), Some(n as u32)));
            assert!(!subs.contains(filter(n).as_str()));
            assert_eq!(subs.len(), n);
            assert_eq!(subs.iter().count(), n);
        }
        assert!(matches!(subs, Subscriptions::Few(_)));
        assert!(subs.remove_entry("dev/0/cmd").is_none());
    }

    #[test]
    fn entries_change_in_place() {
        let mut subs: Subscriptions = (0..2).map(|n| (filter(n), entry(0))).collect();
        for (_, e) in subs.iter_mut() {
            e.checked = true;
        }
        assert!(subs.iter().all(|(_, e)| e.checked));
    }
}
