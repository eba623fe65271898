//! Model tests: the subscription `Trie` and the retained `TopicTree` must agree
//! with the reference matcher `ringmq::topic::matches` after every step of a
//! random subscribe/unsubscribe (insert/remove) history, and must give all
//! their nodes back once emptied.

use std::collections::BTreeSet;

use proptest::prelude::*;
use ringmq::topic::{matches, MatchScratch, TopicTree, Trie};

/// Levels for topic names: the empty level and a '$' level are the corner
/// cases of the spec ('$' only matters at the first level).
const NAME_LEVELS: [&str; 4] = ["a", "b", "$x", ""];

/// Filters additionally use '+' anywhere and '#' as the final level.
const FILTER_LEVELS: [&str; 5] = ["a", "b", "$x", "", "+"];

fn name_strategy() -> impl Strategy<Value = String> + Clone {
    prop::collection::vec(prop::sample::select(&NAME_LEVELS[..]), 1..=4).prop_map(|l| l.join("/"))
}

fn filter_strategy() -> impl Strategy<Value = String> + Clone {
    let levels = prop::collection::vec(prop::sample::select(&FILTER_LEVELS[..]), 0..=4);
    (levels, any::<bool>()).prop_map(|(levels, hash)| match (levels.is_empty(), hash) {
        (true, _) => "#".to_owned(),
        (false, true) => format!("{}/#", levels.join("/")),
        (false, false) => levels.join("/"),
    })
}

/// Every topic name of up to three levels over `NAME_LEVELS` (84 of them),
/// so each step is checked against all short topics, not a random few.
fn all_short_names() -> Vec<String> {
    let mut names: Vec<String> = NAME_LEVELS.iter().map(|s| s.to_string()).collect();
    let mut frontier = names.clone();
    for _ in 1..3 {
        frontier = frontier
            .iter()
            .flat_map(|p| NAME_LEVELS.iter().map(move |l| format!("{p}/{l}")))
            .collect();
        names.extend(frontier.iter().cloned());
    }
    names
}

#[derive(Debug, Clone)]
enum Op {
    Insert(String),
    Remove(String),
}

fn ops(key: impl Strategy<Value = String> + Clone) -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        3 => key.clone().prop_map(Op::Insert),
        2 => key.prop_map(Op::Remove),
    ];
    prop::collection::vec(op, 1..40)
}

fn trie_matches(trie: &Trie<String>, scratch: &mut MatchScratch, topic: &str) -> Vec<String> {
    let mut got = Vec::new();
    trie.for_each_match_with(topic, scratch, |f| got.push(f.clone()));
    got.sort();
    got
}

fn model_matches<'a>(
    keys: impl IntoIterator<Item = &'a String>,
    keep: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut want: Vec<String> = keys.into_iter().filter(|k| keep(k)).cloned().collect();
    want.sort();
    want
}

fn tree_matches(tree: &TopicTree<String>, filter: &str) -> Vec<String> {
    let mut got = Vec::new();
    tree.for_each_matching(filter, |topic, v| {
        assert_eq!(topic, v, "reported topic must be the stored one");
        got.push(v.clone());
    });
    got.sort();
    got
}

fn apply_trie(
    trie: &mut Trie<String>,
    model: &mut BTreeSet<String>,
    op: &Op,
) -> Result<(), TestCaseError> {
    match op {
        Op::Insert(f) => {
            let v = trie.get_or_insert_with(f, || f.clone());
            prop_assert_eq!(&*v, f);
            model.insert(f.clone());
        }
        Op::Remove(f) => {
            prop_assert_eq!(trie.remove(f), model.take(f));
        }
    }
    prop_assert_eq!(trie.len(), model.len());
    Ok(())
}

fn apply_tree(
    tree: &mut TopicTree<String>,
    model: &mut BTreeSet<String>,
    op: &Op,
) -> Result<(), TestCaseError> {
    match op {
        Op::Insert(t) => {
            let old = tree.insert(t, t.clone());
            prop_assert_eq!(old, model.replace(t.clone()));
        }
        Op::Remove(t) => prop_assert_eq!(tree.remove(t), model.take(t)),
    }
    prop_assert_eq!(tree.len(), model.len());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn trie_agrees_with_reference(ops in ops(filter_strategy()), extra in name_strategy()) {
        let mut probes = all_short_names();
        probes.push(extra);
        let mut trie = Trie::new();
        let mut model = BTreeSet::new();
        let mut scratch = MatchScratch::new();
        for op in &ops {
            apply_trie(&mut trie, &mut model, op)?;
            for topic in &probes {
                let want = model_matches(&model, |f| matches(f, topic));
                prop_assert_eq!(trie_matches(&trie, &mut scratch, topic), want, "topic {:?}", topic);
            }
        }
        let mut listed = Vec::new();
        trie.for_each(|f, v| { assert_eq!(f, v); listed.push(v.clone()) });
        listed.sort();
        prop_assert_eq!(listed, model.iter().cloned().collect::<Vec<_>>());
        for f in &model {
            prop_assert_eq!(trie.remove(f), Some(f.clone()));
        }
        prop_assert!(trie.is_empty());
        prop_assert_eq!(trie.node_count(), 1);
    }

    #[test]
    fn tree_agrees_with_reference(
        ops in ops(name_strategy()),
        filters in prop::collection::vec(filter_strategy(), 1..24),
    ) {
        let mut tree = TopicTree::new();
        let mut model = BTreeSet::new();
        for op in &ops {
            apply_tree(&mut tree, &mut model, op)?;
            for filter in &filters {
                let want = model_matches(&model, |t| matches(filter, t));
                prop_assert_eq!(tree_matches(&tree, filter), want, "filter {:?}", filter);
            }
        }
        for t in &model {
            prop_assert_eq!(tree.get(t), Some(t));
            prop_assert_eq!(tree.remove(t), Some(t.clone()));
        }
        prop_assert!(tree.is_empty());
        prop_assert_eq!(tree.node_count(), 1);
    }
}

#[test]
fn trie_prunes_after_churn() {
    let mut trie = Trie::new();
    let filters: Vec<String> = (0..500)
        .map(|i| match i % 4 {
            0 => format!("fleet/r{}/d{i}/telemetry", i % 7),
            1 => format!("fleet/r{}/+/alarm", i % 7),
            2 => format!("fleet/r{}/#", i % 7),
            _ => format!("+/r{}/d{i}/#", i % 7),
        })
        .collect();
    let mut full = None;
    for round in 0..3 {
        for f in &filters {
            trie.get_or_insert_with(f, || round);
        }
        assert_eq!(trie.len(), filters.iter().collect::<BTreeSet<_>>().len());
        // Same shape every round: churn neither leaks nor duplicates nodes.
        assert_eq!(*full.get_or_insert(trie.node_count()), trie.node_count());
        for f in &filters {
            trie.remove(f);
        }
        assert_eq!(trie.len(), 0);
        assert_eq!(trie.node_count(), 1, "round {round}");
    }
}

/// Levels are client-controlled, so nothing may recurse on depth: matching,
/// listing, pruning and dropping a 100k-level trie and tree must not
/// overflow the (2 MiB) test thread stack.
#[test]
fn hundred_thousand_levels_do_not_overflow() {
    const DEPTH: usize = 100_000;
    let topic = vec!["a"; DEPTH].join("/");
    let hash_filter = format!("{}/#", vec!["a"; DEPTH - 1].join("/"));
    let plus_filter = vec!["+"; DEPTH].join("/");

    let mut trie = Trie::new();
    for f in [&topic, &hash_filter, &plus_filter] {
        trie.get_or_insert_with(f, || f.len());
    }
    let mut hits = Vec::new();
    trie.for_each_match(&topic, |v| hits.push(*v));
    hits.sort_unstable();
    let mut want = vec![topic.len(), hash_filter.len(), plus_filter.len()];
    want.sort_unstable();
    assert_eq!(hits, want);
    let mut listed = 0;
    trie.for_each(|_, _| listed += 1);
    assert_eq!(listed, 3);
    assert_eq!(trie.remove(&plus_filter), Some(plus_filter.len()));
    assert_eq!(trie.remove(&topic), Some(topic.len()));
    assert_eq!(trie.get(&hash_filter), Some(&hash_filter.len()));
    drop(trie);

    let mut tree = TopicTree::new();
    tree.insert(&topic, 1);
    for filter in [
        "#",
        hash_filter.as_str(),
        plus_filter.as_str(),
        topic.as_str(),
    ] {
        let mut n = 0;
        tree.for_each_matching(filter, |t, _| {
            assert_eq!(t.len(), topic.len());
            n += 1;
        });
        assert_eq!(n, 1);
    }
    drop(tree);

    let mut tree = TopicTree::new();
    tree.insert(&topic, 1);
    assert_eq!(tree.remove(&topic), Some(1));
    assert_eq!(tree.node_count(), 1);
}
