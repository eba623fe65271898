//! Which cores have at least one subscriber of a filter.

/// A set of core indices (up to [`CoreSet::MAX`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreSet([u64; 4]);

impl CoreSet {
    pub const MAX: usize = 256;

    pub fn insert(&mut self, core: usize) {
        self.0[core / 64] |= 1 << (core % 64);
    }

    pub fn remove(&mut self, core: usize) {
        self.0[core / 64] &= !(1 << (core % 64));
    }

    pub fn contains(&self, core: usize) -> bool {
        self.0[core / 64] & (1 << (core % 64)) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    pub fn union(&mut self, other: &CoreSet) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a |= b;
        }
    }

    /// Adds the cores of one filter's interest.
    pub fn add(&mut self, interest: &Interest) {
        match interest {
            Interest::Low(bits) => self.0[0] |= bits,
            Interest::Wide(set) => self.union(set),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..Self::MAX).filter(|c| self.contains(*c))
    }
}

/// The cores interested in one filter, as the interest index keeps it: one
/// word for cores 0-63, the whole set only on machines with more. Every core
/// holds one per filter subscribed on another core, so its size is paid per
/// subscription and per core (a `CoreSet` in each trie slot cost 48 bytes
/// more per level node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interest {
    Low(u64),
    Wide(Box<CoreSet>),
}

impl Default for Interest {
    fn default() -> Self {
        Interest::Low(0)
    }
}

impl Interest {
    pub fn insert(&mut self, core: usize) {
        match self {
            Interest::Low(bits) if core < 64 => *bits |= 1 << core,
            Interest::Low(bits) => {
                let mut set = CoreSet([*bits, 0, 0, 0]);
                set.insert(core);
                *self = Interest::Wide(Box::new(set));
            }
            Interest::Wide(set) => set.insert(core),
        }
    }

    pub fn remove(&mut self, core: usize) {
        match self {
            Interest::Low(bits) if core < 64 => *bits &= !(1 << core),
            Interest::Low(_) => {}
            Interest::Wide(set) => set.remove(core),
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Interest::Low(bits) => *bits == 0,
            Interest::Wide(set) => set.is_empty(),
        }
    }
}

/// Every core but `me`, in order.
pub(super) fn other_cores(me: usize, cores: usize) -> impl Iterator<Item = usize> {
    (0..cores).filter(move |c| *c != me)
}

/// The core that owns a client id's session (and a topic's retained updates).
/// Every core computes the same answer, so a client reconnecting anywhere
/// lands where its session lives. FNV-1a alone will not do: multiplying by an
/// odd number keeps the low bits a function of the low bits of each byte, so
/// modulo a power of two ids differing in one letter land by that letter's
/// parity (every `…pub-N` on one core of two, every `…sub-N` on the other).
/// The murmur3 finaliser mixes all bits before the high bits pick the core.
pub fn owner_core(client_id: &str, cores: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in client_id.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    ((u128::from(hash) * cores as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_set_ops() {
        let mut s = CoreSet::default();
        assert!(s.is_empty());
        s.insert(0);
        s.insert(70);
        s.insert(255);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 70, 255]);
        s.remove(70);
        assert!(!s.contains(70));
        let mut t = CoreSet::default();
        t.insert(3);
        t.union(&s);
        assert_eq!(t.iter().collect::<Vec<_>>(), vec![0, 3, 255]);
    }

    #[test]
    fn interest_holds_any_core_in_a_word_or_the_whole_set() {
        assert!(std::mem::size_of::<Option<Interest>>() <= 16);
        let mut interest = Interest::default();
        interest.insert(3);
        assert_eq!(interest, Interest::Low(1 << 3));
        interest.insert(200);
        interest.insert(63);
        let mut all = CoreSet::default();
        all.add(&interest);
        assert_eq!(all.iter().collect::<Vec<_>>(), vec![3, 63, 200]);
        for core in [3, 200, 63] {
            assert!(!interest.is_empty());
            interest.remove(core);
        }
        assert!(interest.is_empty());
        let mut low = Interest::default();
        low.remove(100); // not there: nothing to do
        assert!(low.is_empty());
    }

    #[test]
    fn owner_is_stable_and_spread() {
        assert_eq!(owner_core("abc", 4), owner_core("abc", 4));
        let mut seen = [0usize; 4];
        for i in 0..1000 {
            seen[owner_core(&format!("device-{i}"), 4)] += 1;
        }
        assert!(seen.iter().all(|n| *n > 150), "{seen:?}");
    }

    /// tests/paho/_common.py computes the same placement (its ids must land
    /// where the broker puts them): these are its answers.
    #[test]
    fn placement_matches_the_python_tests_copy() {
        let cores: Vec<usize> = (0..12)
            .map(|i| owner_core(&format!("dev-{i}"), 7))
            .collect();
        assert_eq!(cores, [0, 3, 1, 3, 2, 4, 1, 2, 1, 0, 4, 5]);
    }

    /// A publisher and subscriber pair named alike share a core as often as
    /// chance says, at any core count: plain FNV-1a put every such pair on
    /// different cores of two, so every message crossed cores.
    #[test]
    fn ids_differing_in_one_letter_are_placed_independently() {
        for cores in [2, 4, 8] {
            let together = (0..1000)
                .filter(|i| {
                    owner_core(&format!("lg1234abcdpub-{i}"), cores)
                        == owner_core(&format!("lg1234abcdsub-{i}"), cores)
                })
                .count();
            let chance = 1000 / cores;
            assert!(
                together > chance * 7 / 10 && together < chance * 13 / 10,
                "{cores} cores: {together} of 1000 pairs together, chance {chance}"
            );
        }
    }
}
