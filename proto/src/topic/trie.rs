//! Subscription trie: maps topic *filters* to values and finds every filter
//! that matches a published topic name. This is the broker's routing hot path.
//!
//! Design choices, and why:
//! * Nodes live in an arena (`Vec`) and refer to each other by `u32` index.
//!   That keeps nodes dense, gives a free list so subscribe/unsubscribe churn
//!   reuses memory instead of fragmenting it, lets the match scratch stack be
//!   stored between calls without borrowing the trie, and makes dropping a
//!   100k-level-deep trie iterative instead of recursive.
//! * `+` children and `#` values have dedicated slots so wildcards never cost
//!   a map lookup; literal children are a small `Vec` (linear scan beats
//!   hashing for a handful of keys) that turns into a `HashMap` when a node
//!   fans out. The map keeps std's keyed SipHash because levels are chosen by
//!   clients, and an unkeyed hash would let one client degrade routing for all.
//! * Matching and traversal use explicit stacks: topics may have thousands of
//!   levels and recursion would let a client overflow the stack.

use std::collections::HashMap;
use std::ops::{Index, IndexMut};

/// Index of a node in an [`Arena`].
pub(super) type NodeId = u32;

/// The root node; it exists for the whole life of the arena.
pub(super) const ROOT: NodeId = 0;

/// Up to this many literal children are kept in a `Vec`; more switch to a
/// `HashMap`. Comparing a few short keys is cheaper than hashing one.
const SMALL_MAX: usize = 8;

/// Level -> child map. foldhash is randomly seeded per process, like std's
/// SipHash, so clients choosing levels still cannot aim collisions, but hashes
/// a short level several times faster; it is the hasher hashbrown itself uses.
type LevelMap = HashMap<Box<str>, NodeId, foldhash::fast::RandomState>;

/// Literal (non-wildcard) children of a node, keyed by level.
#[derive(Debug)]
pub(super) enum Children {
    Small(Vec<(Box<str>, NodeId)>),
    /// Boxed: a map is 40 bytes inline against a `Vec`'s 24, every node has
    /// a `Children`, and only nodes with many children have a map.
    #[allow(clippy::box_collection)]
    Map(Box<LevelMap>),
}

impl Default for Children {
    fn default() -> Self {
        Self::Small(Vec::new())
    }
}

impl Children {
    pub(super) fn get(&self, level: &str) -> Option<NodeId> {
        match self {
            Self::Small(v) => v.iter().find(|(k, _)| &**k == level).map(|&(_, id)| id),
            Self::Map(m) => m.get(level).copied(),
        }
    }

    /// Adds a child; the caller has checked that `level` is absent.
    pub(super) fn insert(&mut self, level: &str, id: NodeId) {
        match self {
            Self::Small(v) if v.len() < SMALL_MAX => {
                // Doubled from one: most nodes have a single child, and
                // Vec's first allocation would hold four.
                if v.len() == v.capacity() {
                    v.reserve_exact(v.len().max(1));
                }
                v.push((level.into(), id));
            }
            Self::Small(v) => {
                let mut map: LevelMap = v.drain(..).collect();
                map.insert(level.into(), id);
                *self = Self::Map(Box::new(map));
            }
            Self::Map(m) => {
                m.insert(level.into(), id);
            }
        }
    }

    /// Removes a child. A map that has shrunk well below the threshold goes
    /// back to a `Vec` so its (possibly large) table is freed.
    pub(super) fn remove(&mut self, level: &str) -> Option<NodeId> {
        match self {
            Self::Small(v) => {
                let i = v.iter().position(|(k, _)| &**k == level)?;
                Some(v.swap_remove(i).1)
            }
            Self::Map(m) => {
                let id = m.remove(level)?;
                if m.len() <= SMALL_MAX / 2 {
                    *self = Self::Small(m.drain().collect());
                }
                Some(id)
            }
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        match self {
            Self::Small(v) => v.is_empty(),
            Self::Map(m) => m.is_empty(),
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, NodeId)> {
        let (small, map) = match self {
            Self::Small(v) => (Some(v.iter().map(|(k, id)| (&**k, *id))), None),
            Self::Map(m) => (None, Some(m.iter().map(|(k, id)| (&**k, *id)))),
        };
        small.into_iter().flatten().chain(map.into_iter().flatten())
    }
}

/// Node storage with a free list; slot [`ROOT`] is always the root.
#[derive(Debug)]
pub(super) struct Arena<N> {
    nodes: Vec<N>,
    free: Vec<NodeId>,
}

impl<N: Default> Arena<N> {
    pub(super) fn new() -> Self {
        Self {
            nodes: vec![N::default()],
            free: Vec::new(),
        }
    }

    pub(super) fn alloc(&mut self) -> NodeId {
        if let Some(id) = self.free.pop() {
            return id;
        }
        let id = NodeId::try_from(self.nodes.len()).expect("more than u32::MAX topic nodes");
        self.nodes.push(N::default());
        id
    }

    /// Returns a node to the free list, dropping its contents now.
    pub(super) fn release(&mut self, id: NodeId) {
        debug_assert_ne!(id, ROOT, "the root is never released");
        self.nodes[id as usize] = N::default();
        self.free.push(id);
    }

    /// Number of nodes in use, root included.
    pub(super) fn live(&self) -> usize {
        self.nodes.len() - self.free.len()
    }
}

impl<N> Index<NodeId> for Arena<N> {
    type Output = N;
    fn index(&self, id: NodeId) -> &N {
        &self.nodes[id as usize]
    }
}

impl<N> IndexMut<NodeId> for Arena<N> {
    fn index_mut(&mut self, id: NodeId) -> &mut N {
        &mut self.nodes[id as usize]
    }
}

#[derive(Debug)]
struct Node<V> {
    children: Children,
    /// The `+` child.
    plus: Option<NodeId>,
    /// Value of the filter `<path to this node>/#`.
    hash: Option<V>,
    /// Value of the filter `<path to this node>`.
    value: Option<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Self {
            children: Children::default(),
            plus: None,
            hash: None,
            value: None,
        }
    }
}

impl<V> Node<V> {
    fn is_unused(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.value.is_none()
    }

    fn slot_mut(&mut self, slot: Slot) -> &mut Option<V> {
        match slot {
            Slot::Value => &mut self.value,
            Slot::Hash => &mut self.hash,
        }
    }
}

/// Where a filter's value lives in its final node.
#[derive(Clone, Copy)]
enum Slot {
    Value,
    Hash,
}

/// Splits a filter into the levels leading to its node and the slot in that
/// node. `None` means zero levels (the filter `#`), which differs from
/// `Some("")`, the single empty level of e.g. `/#`.
fn parse(filter: &str) -> (Option<&str>, Slot) {
    if filter == "#" {
        (None, Slot::Hash)
    } else if let Some(prefix) = filter.strip_suffix("/#") {
        (Some(prefix), Slot::Hash)
    } else {
        (Some(filter), Slot::Value)
    }
}

fn levels(prefix: Option<&str>) -> impl Iterator<Item = &str> {
    prefix.into_iter().flat_map(|p| p.split('/'))
}

/// Reusable stack for [`Trie::for_each_match_with`]. Keeping one per worker
/// makes matching allocation-free once the stack has grown to its working
/// size.
#[derive(Debug, Default, Clone)]
pub struct MatchScratch {
    /// Pending `+` branches: node and byte offset of the next topic level.
    stack: Vec<(NodeId, usize)>,
}

impl MatchScratch {
    /// An empty scratch; it grows on first use.
    pub fn new() -> Self {
        Self::default()
    }
}

/// A map from topic filters to values that can enumerate every filter
/// matching a topic name.
///
/// Filters are expected to be valid (see [`super::TopicFilter`]); invalid ones
/// are stored without panicking but may not match as the spec would say.
/// A `+` level is always the wildcard, and `#` is the wildcard only as the
/// final level.
#[derive(Debug)]
pub struct Trie<V> {
    arena: Arena<Node<V>>,
    len: usize,
}

impl<V> Default for Trie<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> Trie<V> {
    /// An empty trie.
    pub fn new() -> Self {
        Self {
            arena: Arena::new(),
            len: 0,
        }
    }

    /// Number of filters holding a value.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no filter holds a value.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of allocated nodes, root included; 1 when empty. Exposed so
    /// tests can check that removal prunes.
    #[doc(hidden)]
    pub fn node_count(&self) -> usize {
        self.arena.live()
    }

    /// The value for `filter`, created with `make` if absent.
    pub fn get_or_insert_with(&mut self, filter: &str, make: impl FnOnce() -> V) -> &mut V {
        let (prefix, slot) = parse(filter);
        let id = levels(prefix).fold(ROOT, |id, level| self.child_or_insert(id, level));
        let value = self.arena[id].slot_mut(slot);
        if value.is_none() {
            self.len += 1;
        }
        value.get_or_insert_with(make)
    }

    /// The value stored for exactly `filter` (no wildcard matching).
    pub fn get(&self, filter: &str) -> Option<&V> {
        let (id, slot) = self.find(filter)?;
        let node = &self.arena[id];
        match slot {
            Slot::Value => node.value.as_ref(),
            Slot::Hash => node.hash.as_ref(),
        }
    }

    /// Mutable access to the value stored for exactly `filter`.
    pub fn get_mut(&mut self, filter: &str) -> Option<&mut V> {
        let (id, slot) = self.find(filter)?;
        self.arena[id].slot_mut(slot).as_mut()
    }

    /// Removes and returns the value for `filter`, freeing every node that no
    /// longer leads to a value.
    pub fn remove(&mut self, filter: &str) -> Option<V> {
        let (prefix, slot) = parse(filter);
        let mut path = Vec::new();
        let mut id = ROOT;
        for level in levels(prefix) {
            let child = self.child(id, level)?;
            path.push((id, level));
            id = child;
        }
        let value = self.arena[id].slot_mut(slot).take()?;
        self.len -= 1;
        self.prune(id, &path);
        Some(value)
    }

    /// Calls `f` with the value of every stored filter that matches the topic
    /// name `topic`, in unspecified order, each at most once. Filters starting
    /// with a wildcard do not match topics starting with '$' [MQTT-4.7.2-1].
    ///
    /// Allocates only when a `+` branch has to be remembered; use
    /// [`Self::for_each_match_with`] on hot paths.
    pub fn for_each_match<'a>(&'a self, topic: &str, f: impl FnMut(&'a V)) {
        self.for_each_match_with(topic, &mut MatchScratch::new(), f);
    }

    /// [`Self::for_each_match`] using a caller-owned scratch stack, so that
    /// steady-state matching does not allocate.
    ///
    /// Walks literal children depth-first in a loop and pushes only the `+`
    /// branches, so the stack stays as small as the number of pending `+`
    /// alternatives rather than growing with the topic depth.
    pub fn for_each_match_with<'a>(
        &'a self,
        topic: &str,
        scratch: &mut MatchScratch,
        mut f: impl FnMut(&'a V),
    ) {
        let stack = &mut scratch.stack;
        stack.clear();
        let dollar = topic.starts_with('$');
        let mut frame = (ROOT, 0);
        loop {
            self.descend(topic, frame, dollar, stack, &mut f);
            match stack.pop() {
                Some(next) => frame = next,
                None => break,
            }
        }
    }

    /// Calls `f` with every stored `(filter, value)` pair, in unspecified
    /// order. Rebuilds each filter string, so it is meant for cold paths
    /// (persistence, admin, debugging).
    pub fn for_each(&self, mut f: impl FnMut(&str, &V)) {
        // (node, depth, level leading to the node)
        let mut stack = vec![(ROOT, 0usize, "")];
        let mut path: Vec<&str> = Vec::new();
        let mut filter = String::new();
        while let Some((id, depth, level)) = stack.pop() {
            path.truncate(depth.saturating_sub(1));
            if depth > 0 {
                path.push(level);
            }
            let node = &self.arena[id];
            if let Some(v) = &node.value {
                join_into(&mut filter, &path, None);
                f(&filter, v);
            }
            if let Some(v) = &node.hash {
                join_into(&mut filter, &path, Some("#"));
                f(&filter, v);
            }
            stack.extend(node.children.iter().map(|(k, c)| (c, depth + 1, k)));
            stack.extend(node.plus.map(|p| (p, depth + 1, "+")));
        }
    }

    /// Follows one path of literal levels from `(id, pos)`, reporting `#` and
    /// exact values on the way and pushing `+` alternatives onto `stack`.
    /// `pos` is the byte offset of the next topic level; `pos > topic.len()`
    /// means every level has been consumed.
    fn descend<'a>(
        &'a self,
        topic: &str,
        (mut id, mut pos): (NodeId, usize),
        dollar: bool,
        stack: &mut Vec<(NodeId, usize)>,
        f: &mut impl FnMut(&'a V),
    ) {
        let bytes = topic.as_bytes();
        loop {
            let node = &self.arena[id];
            // [MQTT-4.7.2-1]: no first-level wildcard for '$' topics.
            let wildcards = !(dollar && id == ROOT);
            // `x/#` matches below `x` and `x` itself.
            if let Some(v) = node.hash.as_ref().filter(|_| wildcards) {
                f(v);
            }
            if pos > bytes.len() {
                if let Some(v) = &node.value {
                    f(v);
                }
                return;
            }
            let end = bytes[pos..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(bytes.len(), |i| pos + i);
            if let Some(plus) = node.plus.filter(|_| wildcards) {
                stack.push((plus, end + 1));
            }
            match node.children.get(&topic[pos..end]) {
                Some(child) => (id, pos) = (child, end + 1),
                None => return,
            }
        }
    }

    /// Resolves a filter to its node and slot without creating anything.
    fn find(&self, filter: &str) -> Option<(NodeId, Slot)> {
        let (prefix, slot) = parse(filter);
        let id = levels(prefix).try_fold(ROOT, |id, level| self.child(id, level))?;
        Some((id, slot))
    }

    fn child(&self, id: NodeId, level: &str) -> Option<NodeId> {
        let node = &self.arena[id];
        if level == "+" {
            node.plus
        } else {
            node.children.get(level)
        }
    }

    fn child_or_insert(&mut self, id: NodeId, level: &str) -> NodeId {
        if let Some(child) = self.child(id, level) {
            return child;
        }
        let child = self.arena.alloc();
        let node = &mut self.arena[id];
        if level == "+" {
            node.plus = Some(child);
        } else {
            node.children.insert(level, child);
        }
        child
    }

    /// Frees `id` and its ancestors (given as `(parent, level)` from the root
    /// down) for as long as they hold nothing.
    fn prune(&mut self, mut id: NodeId, path: &[(NodeId, &str)]) {
        for &(parent, level) in path.iter().rev() {
            if !self.arena[id].is_unused() {
                break;
            }
            let node = &mut self.arena[parent];
            if level == "+" {
                node.plus = None;
            } else {
                node.children.remove(level);
            }
            self.arena.release(id);
            id = parent;
        }
        if self.len == 0 {
            // Nothing holds a value, so nothing is lost; this also returns
            // the arena's own capacity after a mass unsubscribe.
            self.arena = Arena::new();
        }
    }
}

/// Writes `levels` joined by '/' (plus an optional final level) into `out`.
fn join_into(out: &mut String, levels: &[&str], last: Option<&str>) {
    out.clear();
    for (i, level) in levels.iter().copied().chain(last).enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matched(trie: &Trie<&'static str>, topic: &str) -> Vec<&'static str> {
        let mut out = Vec::new();
        trie.for_each_match(topic, |v| out.push(*v));
        out.sort_unstable();
        out
    }

    /// Every level of every filter is a node (on every core, in the interest
    /// index): printed, and bounded so that growth is a decision.
    #[test]
    fn a_node_stays_small() {
        let children = std::mem::size_of::<Children>();
        let node = std::mem::size_of::<Node<Vec<u64>>>();
        eprintln!("Children: {children} bytes, Node<Vec<_>>: {node} bytes");
        assert!(children <= 24, "Children grew to {children} bytes");
        assert!(node <= 80, "Node grew to {node} bytes");
    }

    fn trie_of(filters: &[&'static str]) -> Trie<&'static str> {
        let mut trie = Trie::new();
        for &f in filters {
            trie.get_or_insert_with(f, || f);
        }
        trie
    }

    #[test]
    fn insert_get_remove() {
        let mut trie = Trie::new();
        assert!(trie.is_empty());
        *trie.get_or_insert_with("a/b", || 0) += 1;
        *trie.get_or_insert_with("a/b", || 0) += 1;
        trie.get_or_insert_with("a/#", || 10);
        trie.get_or_insert_with("#", || 20);
        trie.get_or_insert_with("a/+", || 30);
        assert_eq!(trie.len(), 4);
        assert_eq!(trie.get("a/b"), Some(&2));
        assert_eq!(trie.get("a/#"), Some(&10));
        assert_eq!(trie.get("#"), Some(&20));
        assert_eq!(trie.get("a/+"), Some(&30));
        assert_eq!(trie.get("a"), None);
        assert_eq!(trie.get("a/c"), None);
        *trie.get_mut("a/+").unwrap() = 31;
        assert_eq!(trie.remove("a/+"), Some(31));
        assert_eq!(trie.remove("a/+"), None);
        assert_eq!(trie.remove("a"), None);
        assert_eq!(trie.len(), 3);
    }

    #[test]
    fn spec_matching() {
        let trie = trie_of(&[
            "sport/tennis/player1/#",
            "sport/tennis/+",
            "sport/+",
            "sport/#",
            "#",
            "+/+",
            "/+",
            "+",
            "$SYS/#",
            "$SYS/+",
            "+/monitor/Clients",
        ]);
        assert_eq!(
            matched(&trie, "sport/tennis/player1"),
            ["#", "sport/#", "sport/tennis/+", "sport/tennis/player1/#"]
        );
        assert_eq!(matched(&trie, "sport"), ["#", "+", "sport/#"]);
        assert_eq!(matched(&trie, "sport/"), ["#", "+/+", "sport/#", "sport/+"]);
        assert_eq!(matched(&trie, "/finance"), ["#", "+/+", "/+"]);
        assert_eq!(matched(&trie, "$SYS"), ["$SYS/#"]);
        assert_eq!(matched(&trie, "$SYS/monitor"), ["$SYS/#", "$SYS/+"]);
        assert_eq!(matched(&trie, "$SYS/monitor/Clients"), ["$SYS/#"]);
    }

    #[test]
    fn hash_filter_alone_vs_empty_level() {
        let trie = trie_of(&["#", "/#"]);
        assert_eq!(trie.get("#"), Some(&"#"));
        assert_eq!(trie.get("/#"), Some(&"/#"));
        assert_eq!(matched(&trie, "a"), ["#"]);
        assert_eq!(matched(&trie, "/a"), ["#", "/#"]);
    }

    #[test]
    fn scratch_is_reusable() {
        let trie = trie_of(&["a/+/c", "+/b/+", "a/b/c"]);
        let mut scratch = MatchScratch::new();
        for _ in 0..3 {
            let mut n = 0;
            trie.for_each_match_with("a/b/c", &mut scratch, |_| n += 1);
            assert_eq!(n, 3);
        }
    }

    #[test]
    fn for_each_rebuilds_filters() {
        let filters = ["#", "/#", "a", "a/+", "a/+/#", "+", "/", "a//b", "$x/#"];
        let trie = trie_of(&filters);
        let mut seen = Vec::new();
        trie.for_each(|f, v| {
            assert_eq!(f, *v);
            seen.push(f.to_owned());
        });
        seen.sort_unstable();
        let mut expected: Vec<_> = filters.iter().map(|s| s.to_string()).collect();
        expected.sort_unstable();
        assert_eq!(seen, expected);
    }

    #[test]
    fn prunes_partially_and_fully() {
        let mut trie = trie_of(&["a/b/c", "a/b", "a/+/#"]);
        let full = trie.node_count();
        trie.remove("a/b/c");
        assert_eq!(trie.node_count(), full - 1);
        trie.remove("a/+/#");
        assert_eq!(trie.node_count(), full - 2);
        trie.remove("a/b");
        assert_eq!(trie.node_count(), 1);
    }

    #[test]
    fn wide_nodes_switch_representation_and_back() {
        let names: Vec<String> = (0..100).map(|i| format!("d{i}")).collect();
        let mut trie = Trie::new();
        for n in &names {
            trie.get_or_insert_with(n, || n.clone());
        }
        for n in &names {
            assert_eq!(trie.get(n), Some(n));
            let mut hits = Vec::new();
            trie.for_each_match(n, |v| hits.push(v.clone()));
            assert_eq!(hits, std::slice::from_ref(n));
        }
        for n in &names[..98] {
            assert_eq!(trie.remove(n).as_ref(), Some(n));
        }
        assert!(matches!(trie.arena[ROOT].children, Children::Small(_)));
        assert_eq!(trie.get(&names[99]), Some(&names[99]));
    }

    #[test]
    fn freed_nodes_are_reused() {
        let mut trie = trie_of(&["keep"]);
        for i in 0..1000 {
            let f = format!("churn/{i}/x");
            trie.get_or_insert_with(&f, || "x");
            trie.remove(&f);
        }
        assert_eq!(trie.node_count(), 2);
        assert!(trie.arena.nodes.len() <= 5);
    }
}
