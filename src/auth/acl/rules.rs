//! One layer's rules (a user block, the anonymous block, the patterns) and
//! how a layer decides a topic or summarises a filter.

use std::cell::RefCell;
use std::fmt;

use super::relation::{covers, intersects};
use crate::topic::{MatchScratch, Trie};

/// Access bits: a rule grants `READ` and/or `WRITE`, or is a `DENY`.
pub(super) const READ: u8 = 1;
pub(super) const WRITE: u8 = 2;
pub(super) const DENY: u8 = 4;

/// Up to this many rules a linear scan beats a trie walk.
const SCAN_MAX: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Rule {
    pub filter: Box<str>,
    pub bits: u8,
}

/// A layer's verdict for one access from the bits of every rule matching the
/// topic: deny rules are decided first, and `None` defers to the next layer.
pub(super) fn verdict(bits: u8, want: u8) -> Option<bool> {
    if bits & DENY != 0 {
        Some(false)
    } else if bits & want != 0 {
        Some(true)
    } else {
        None
    }
}

/// The rules of one layer. Large sets are also indexed by a trie (values:
/// the union of the bits of the rules with that filter), so a lookup costs
/// the topic's depth, not the number of rules.
pub(super) struct RuleSet {
    rules: Vec<Rule>,
    index: Option<Trie<u8>>,
}

impl RuleSet {
    pub fn new(rules: Vec<Rule>) -> RuleSet {
        let index = (rules.len() > SCAN_MAX).then(|| {
            let mut trie = Trie::new();
            for rule in &rules {
                *trie.get_or_insert_with(&rule.filter, || 0) |= rule.bits;
            }
            trie
        });
        RuleSet { rules, index }
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// The union of the bits of every rule matching `topic`.
    pub fn bits(&self, topic: &str) -> u8 {
        match &self.index {
            Some(trie) => trie_bits(trie, topic),
            None => self
                .rules
                .iter()
                .filter(|r| rule_matches(&r.filter, topic))
                .fold(0, |bits, r| bits | r.bits),
        }
    }

    /// Adds what this set's rules say about reading the topics of `filter`.
    /// Linear in the rules, which is fine once per SUBSCRIBE filter.
    pub fn summarize(&self, filter: &str, into: &mut Summary) {
        for rule in self.rules.iter().filter(|r| intersects(&r.filter, filter)) {
            let covering = covers(&rule.filter, filter);
            if rule.bits & DENY != 0 {
                into.any_deny = true;
                into.deny_covers |= covering;
            } else if rule.bits & READ != 0 {
                into.any_read = true;
                into.read_covers |= covering;
            }
        }
    }
}

impl fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.rules.len())
            .field("indexed", &self.index.is_some())
            .finish()
    }
}

/// [`crate::topic::matches`] without its split iterators: comparing whole
/// level slices measured about four times as fast, and the scan runs on every
/// publish and delivery.
pub(super) fn rule_matches(filter: &str, topic: &str) -> bool {
    let (filter, topic) = (filter.as_bytes(), topic.as_bytes());
    // [MQTT-4.7.2-1]: a leading wildcard never matches a '$' topic.
    if topic.first() == Some(&b'$') && matches!(filter.first(), Some(b'+' | b'#')) {
        return false;
    }
    let level_end = |s: &[u8], from: usize| {
        s[from..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(s.len(), |i| from + i)
    };
    let (mut f, mut t) = (0, 0);
    loop {
        let (fe, te) = (level_end(filter, f), level_end(topic, t));
        match &filter[f..fe] {
            b"#" => return true,
            b"+" => {}
            level if level == &topic[t..te] => {}
            _ => return false,
        }
        match (fe == filter.len(), te == topic.len()) {
            (true, true) => return true,
            // `x/#` also matches `x`.
            (false, true) => return &filter[fe..] == b"/#",
            (true, false) => return false,
            (false, false) => (f, t) = (fe + 1, te + 1),
        }
    }
}

thread_local! {
    /// `Access` is shared by every worker thread, so the trie's `+` stack
    /// lives per thread rather than being allocated per lookup.
    static SCRATCH: RefCell<MatchScratch> = RefCell::new(MatchScratch::new());
}

fn trie_bits(trie: &Trie<u8>, topic: &str) -> u8 {
    let mut bits = 0;
    let done = SCRATCH
        .try_with(|cell| {
            let mut scratch = cell.try_borrow_mut().ok()?;
            trie.for_each_match_with(topic, &mut scratch, |b| bits |= b);
            Some(())
        })
        .ok()
        .flatten();
    // Thread teardown (or re-entry, which cannot happen): pay an allocation.
    if done.is_none() {
        trie.for_each_match(topic, |b| bits |= b);
    }
    bits
}

/// What one layer's rules say about reading the topics of a filter F; the
/// `any_*` flags are about rules intersecting F, the `*_covers` ones about
/// rules covering it.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Summary {
    any_deny: bool,
    deny_covers: bool,
    any_read: bool,
    read_covers: bool,
}

impl Summary {
    /// The layer allows reading every topic of F.
    pub fn allows_all(&self) -> bool {
        self.read_covers && !self.any_deny
    }

    /// The layer denies every topic of F.
    pub fn denies_all(&self) -> bool {
        self.deny_covers
    }

    /// The layer allows reading no topic of F (it denies or defers each).
    pub fn allows_none(&self) -> bool {
        self.deny_covers || !self.any_read
    }

    /// The layer decides no topic of F: each goes on to the next layer.
    pub fn decides_none(&self) -> bool {
        !self.any_deny && !self.any_read
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::matches;

    fn set(rules: &[(&str, u8)]) -> RuleSet {
        RuleSet::new(
            rules
                .iter()
                .map(|&(f, bits)| Rule {
                    filter: f.into(),
                    bits,
                })
                .collect(),
        )
    }

    #[test]
    fn scan_and_trie_agree() {
        let mut rules: Vec<(String, u8)> = (0..20).map(|i| (format!("x/{i}/#"), READ)).collect();
        rules.extend([
            ("a/+".into(), WRITE),
            ("a/b".into(), DENY),
            ("#".into(), READ),
        ]);
        let borrowed: Vec<(&str, u8)> = rules.iter().map(|(f, b)| (f.as_str(), *b)).collect();
        let big = set(&borrowed);
        let small = set(&borrowed[20..]);
        assert!(big.index.is_some() && small.index.is_none());
        for topic in ["a/b", "a/c", "x/3/y", "$SYS/a", "q"] {
            let expected = borrowed
                .iter()
                .filter(|(f, _)| matches(f, topic))
                .fold(0, |a, (_, b)| a | b);
            assert_eq!(big.bits(topic), expected, "{topic}");
        }
        assert_eq!(small.bits("a/b"), WRITE | DENY | READ);
        assert_eq!(small.bits("$SYS/a"), 0);
    }

    proptest::proptest! {
        #[test]
        fn rule_matches_is_matches(
            f in crate::auth::acl::relation::tests::filter(),
            t in proptest::sample::select(crate::auth::acl::relation::tests::all_topics()),
        ) {
            proptest::prop_assert_eq!(rule_matches(&f, &t), matches(&f, &t));
        }
    }

    #[test]
    fn verdict_order() {
        assert_eq!(verdict(DENY | READ | WRITE, READ), Some(false));
        assert_eq!(verdict(READ, READ), Some(true));
        assert_eq!(verdict(READ, WRITE), None);
        assert_eq!(verdict(0, READ), None);
    }
}
