//! Topic tree: maps topic *names* to values and finds every stored name that
//! a filter matches. This is the shape of the retained-message store, where a
//! new subscription has to find all retained messages its filter covers.
//!
//! It shares the arena and child representation of [`super::Trie`] (see there
//! for the reasoning) and likewise never recurses on topic depth.

use super::trie::{Arena, Children, NodeId, ROOT};

#[derive(Debug)]
struct Node<V> {
    children: Children,
    value: Option<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Self {
            children: Children::default(),
            value: None,
        }
    }
}

/// How a node reached during a filter walk is to be matched.
#[derive(Clone, Copy)]
enum Walk {
    /// Against the filter level starting at this byte offset; an offset past
    /// the end means the whole filter has been consumed.
    Filter(usize),
    /// Unconditionally: the node lies under a `#`.
    All,
}

/// A pending node in [`TopicTree::for_each_matching`].
struct Frame<'a> {
    id: NodeId,
    walk: Walk,
    /// Length of the parent's topic in the path buffer, or `None` when the
    /// parent is the root. (Length 0 alone is ambiguous: the topic `/a` has
    /// an empty first level, so its second level still needs a separator.)
    parent_end: Option<usize>,
    /// Level leading from the parent to this node.
    level: &'a str,
}

impl Frame<'_> {
    /// Rewrites the path buffer from the parent's topic to this node's.
    fn enter(&self, topic: &mut String) {
        match self.parent_end {
            None => topic.clear(),
            Some(end) => {
                topic.truncate(end);
                topic.push('/');
            }
        }
        topic.push_str(self.level);
    }
}

/// The `parent_end` for children of node `id`, whose topic is `topic`.
fn parent_end(id: NodeId, topic: &str) -> Option<usize> {
    (id != ROOT).then_some(topic.len())
}

/// A map from topic names to values that can enumerate every name a topic
/// filter matches.
///
/// Names are expected to be valid (see [`super::TopicName`]): every level,
/// including `+` or `#`, is treated literally when storing.
#[derive(Debug)]
pub struct TopicTree<V> {
    arena: Arena<Node<V>>,
    len: usize,
}

impl<V> Default for TopicTree<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> TopicTree<V> {
    /// An empty tree.
    pub fn new() -> Self {
        Self {
            arena: Arena::new(),
            len: 0,
        }
    }

    /// Number of stored topics.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no topic is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of allocated nodes, root included; 1 when empty. Exposed so
    /// tests can check that removal prunes.
    #[doc(hidden)]
    pub fn node_count(&self) -> usize {
        self.arena.live()
    }

    /// Stores `value` under `topic`, returning the value it replaces.
    pub fn insert(&mut self, topic: &str, value: V) -> Option<V> {
        let id = topic
            .split('/')
            .fold(ROOT, |id, level| self.child_or_insert(id, level));
        let old = self.arena[id].value.replace(value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// The value stored under exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<&V> {
        let id = topic
            .split('/')
            .try_fold(ROOT, |id, level| self.arena[id].children.get(level))?;
        self.arena[id].value.as_ref()
    }

    /// Removes and returns the value under `topic`, freeing every node that
    /// no longer leads to a value.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        let mut path = Vec::new();
        let mut id = ROOT;
        for level in topic.split('/') {
            let child = self.arena[id].children.get(level)?;
            path.push((id, level));
            id = child;
        }
        let value = self.arena[id].value.take()?;
        self.len -= 1;
        self.prune(id, &path);
        Some(value)
    }

    /// Calls `f(topic, value)` for every stored topic that the (valid) filter
    /// `filter` matches, in unspecified order. Filters starting with a
    /// wildcard skip topics starting with '$' [MQTT-4.7.2-1].
    pub fn for_each_matching(&self, filter: &str, mut f: impl FnMut(&str, &V)) {
        let mut stack = vec![Frame {
            id: ROOT,
            walk: Walk::Filter(0),
            parent_end: None,
            level: "",
        }];
        let mut topic = String::new();
        while let Some(frame) = stack.pop() {
            frame.enter(&mut topic);
            self.visit(filter, &frame, &topic, &mut stack, &mut f);
        }
    }

    /// Calls `f(topic, value)` for every stored topic, `$` topics included
    /// (for a snapshot of the store, not for a subscriber).
    pub fn for_each(&self, mut f: impl FnMut(&str, &V)) {
        let parent_end = parent_end(ROOT, "");
        let mut stack: Vec<Frame> = self.arena[ROOT]
            .children
            .iter()
            .map(|(level, id)| Frame {
                id,
                walk: Walk::All,
                parent_end,
                level,
            })
            .collect();
        let mut topic = String::new();
        while let Some(frame) = stack.pop() {
            frame.enter(&mut topic);
            self.visit("", &frame, &topic, &mut stack, &mut f);
        }
    }

    /// Handles one node of the filter walk: reports it if it matches and
    /// queues the children the filter can still reach.
    fn visit<'a>(
        &'a self,
        filter: &'a str,
        frame: &Frame<'a>,
        topic: &str,
        stack: &mut Vec<Frame<'a>>,
        f: &mut impl FnMut(&str, &V),
    ) {
        let node = &self.arena[frame.id];
        let pos = match frame.walk {
            Walk::All => return self.visit_all(frame.id, topic, stack, f),
            Walk::Filter(pos) if pos > filter.len() => {
                if let Some(v) = &node.value {
                    f(topic, v);
                }
                return;
            }
            Walk::Filter(pos) => pos,
        };
        let end = filter[pos..].find('/').map_or(filter.len(), |i| pos + i);
        let next = Walk::Filter(end + 1);
        match &filter[pos..end] {
            "#" => self.visit_all(frame.id, topic, stack, f),
            "+" => self.push_children(frame.id, next, topic, stack),
            level => stack.extend(node.children.get(level).map(|id| Frame {
                id,
                walk: next,
                parent_end: parent_end(frame.id, topic),
                level,
            })),
        }
    }

    /// Matches `id` and everything below it, as `#` does: `x/#` also matches
    /// `x` itself.
    fn visit_all<'a>(
        &'a self,
        id: NodeId,
        topic: &str,
        stack: &mut Vec<Frame<'a>>,
        f: &mut impl FnMut(&str, &V),
    ) {
        if let Some(v) = &self.arena[id].value {
            f(topic, v);
        }
        self.push_children(id, Walk::All, topic, stack);
    }

    /// Queues every child of `id` with `walk`. Only wildcards queue all
    /// children, so at the root this skips '$' topics [MQTT-4.7.2-1].
    fn push_children<'a>(
        &'a self,
        id: NodeId,
        walk: Walk,
        topic: &str,
        stack: &mut Vec<Frame<'a>>,
    ) {
        let skip_dollar = id == ROOT;
        let parent_end = parent_end(id, topic);
        let children = self.arena[id].children.iter();
        stack.extend(
            children
                .filter(|(level, _)| !(skip_dollar && level.starts_with('$')))
                .map(|(level, id)| Frame {
                    id,
                    walk,
                    parent_end,
                    level,
                }),
        );
    }

    fn child_or_insert(&mut self, id: NodeId, level: &str) -> NodeId {
        if let Some(child) = self.arena[id].children.get(level) {
            return child;
        }
        let child = self.arena.alloc();
        self.arena[id].children.insert(level, child);
        child
    }

    /// Frees `id` and its ancestors (given as `(parent, level)` from the root
    /// down) for as long as they hold nothing.
    fn prune(&mut self, mut id: NodeId, path: &[(NodeId, &str)]) {
        for &(parent, level) in path.iter().rev() {
            let node = &self.arena[id];
            if node.value.is_some() || !node.children.is_empty() {
                break;
            }
            self.arena[parent].children.remove(level);
            self.arena.release(id);
            id = parent;
        }
        if self.len == 0 {
            // Nothing holds a value; also returns the arena's capacity.
            self.arena = Arena::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPICS: [&str; 9] = [
        "sport",
        "sport/",
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "/finance",
        "/",
        "$SYS",
        "$SYS/monitor/Clients",
        "a/$x",
    ];

    fn tree() -> TopicTree<usize> {
        let mut tree = TopicTree::new();
        for (i, t) in TOPICS.iter().enumerate() {
            assert_eq!(tree.insert(t, i), None);
        }
        tree
    }

    fn matching(tree: &TopicTree<usize>, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        tree.for_each_matching(filter, |topic, &i| {
            assert_eq!(topic, TOPICS[i], "reported topic is rebuilt correctly");
            out.push(topic.to_owned());
        });
        out.sort_unstable();
        out
    }

    #[test]
    fn insert_get_replace_remove() {
        let mut tree = tree();
        assert_eq!(tree.len(), TOPICS.len());
        assert_eq!(tree.get("sport/tennis/player1"), Some(&2));
        assert_eq!(tree.get("sport/tennis"), None);
        assert_eq!(tree.insert("sport", 100), Some(0));
        assert_eq!(tree.len(), TOPICS.len());
        assert_eq!(tree.remove("sport"), Some(100));
        assert_eq!(tree.remove("sport"), None);
        assert_eq!(tree.remove("nope/nope"), None);
        assert_eq!(tree.get("sport/"), Some(&1));
    }

    #[test]
    fn spec_filters() {
        let tree = tree();
        assert_eq!(
            matching(&tree, "sport/#"),
            [
                "sport",
                "sport/",
                "sport/tennis/player1",
                "sport/tennis/player1/ranking"
            ]
        );
        assert_eq!(matching(&tree, "sport/+"), ["sport/"]);
        assert_eq!(matching(&tree, "+/+"), ["/", "/finance", "a/$x", "sport/"]);
        assert_eq!(matching(&tree, "/+"), ["/", "/finance"]);
        assert_eq!(matching(&tree, "+"), ["sport"]);
        assert_eq!(matching(&tree, "#").len(), TOPICS.len() - 2);
        assert_eq!(matching(&tree, "$SYS/#"), ["$SYS", "$SYS/monitor/Clients"]);
        assert_eq!(matching(&tree, "+/monitor/Clients"), Vec::<String>::new());
        assert_eq!(matching(&tree, "+/$x"), ["a/$x"]);
        assert_eq!(
            matching(&tree, "sport/tennis/player1"),
            ["sport/tennis/player1"]
        );
    }

    #[test]
    fn prunes_to_root() {
        let mut tree = tree();
        for t in TOPICS {
            assert!(tree.remove(t).is_some());
        }
        assert!(tree.is_empty());
        assert_eq!(tree.node_count(), 1);
    }
}
