//! Filter-against-filter relations, for answering SUBSCRIBE from rules
//! without enumerating topics.
//!
//! Both take valid filters (invalid ones give unspecified answers, never a
//! panic) and follow [`crate::topic::matches`]: `#` matches zero or more
//! levels, `+` exactly one (possibly empty), and a filter whose first level
//! is a wildcard matches no topic starting with '$' [MQTT-4.7.2-1].

/// Whether the first level is `+` or `#`.
fn wild_first(filter: &str) -> bool {
    matches!(filter.split('/').next(), Some("+" | "#"))
}

/// An equivalent filter whose `#` never has to match zero levels. A `#`
/// matching zero levels leaves the topic "" when nothing but one empty level
/// precedes it, and "" is no topic; so `#` is `+/#` and `/#` is `/+/#`.
/// Elsewhere `#` keeps matching zero levels (`a/#` matches `a`).
fn normal(filter: &str) -> &str {
    match filter {
        "#" => "+/#",
        "/#" => "/+/#",
        other => other,
    }
}

/// Whether every topic matching `filter` also matches `rule`.
pub(super) fn covers(rule: &str, filter: &str) -> bool {
    let (rule, filter) = (normal(rule), normal(filter));
    if wild_first(rule) && filter.starts_with('$') {
        return false;
    }
    let (mut r, mut f) = (rule.split('/'), filter.split('/'));
    loop {
        match (r.next(), f.next()) {
            (Some("#"), _) | (None, None) => return true,
            (Some(a), Some(b)) if a == b => {}
            (Some("+"), Some(b)) if b != "#" => {}
            _ => return false,
        }
    }
}

/// Whether some topic matches both `rule` and `filter`.
pub(super) fn intersects(rule: &str, filter: &str) -> bool {
    let (rule, filter) = (normal(rule), normal(filter));
    if (wild_first(rule) && filter.starts_with('$'))
        || (wild_first(filter) && rule.starts_with('$'))
    {
        return false;
    }
    let (mut r, mut f) = (rule.split('/'), filter.split('/'));
    loop {
        match (r.next(), f.next()) {
            (Some("#"), _) | (_, Some("#")) | (None, None) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::topic::matches;

    const LITERALS: [&str; 4] = ["a", "b", "$s", ""];

    /// Every valid topic of 1 to 4 levels over [`LITERALS`]: enough to witness
    /// any intersection of, or hole in, filters of at most 4 levels.
    pub(in crate::auth::acl) fn all_topics() -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut layer = vec![String::new()];
        for depth in 0..4 {
            layer = layer
                .iter()
                .flat_map(|p| {
                    LITERALS.iter().map(move |l| match depth {
                        0 => l.to_string(),
                        _ => format!("{p}/{l}"),
                    })
                })
                .collect();
            out.extend(layer.iter().filter(|t| !t.is_empty()).cloned());
        }
        out
    }

    /// A valid filter of 1 to 4 levels over the literals, `+` and a final `#`.
    pub(in crate::auth::acl) fn filter() -> impl Strategy<Value = String> {
        let level = prop::sample::select(vec!["a", "b", "$s", "", "+"]);
        (
            prop::collection::vec(level, 0..4),
            prop::sample::select(vec!["a", "b", "$s", "", "+", "#"]),
        )
            .prop_map(|(mut levels, last)| {
                levels.push(last);
                levels.join("/")
            })
            .prop_filter("the empty filter is invalid", |f| !f.is_empty())
    }

    #[test]
    fn examples() {
        assert!(covers("a/#", "a"));
        assert!(covers("a/#", "a/+/b"));
        assert!(covers("+/#", "#"));
        assert!(!covers("a/+/#", "a/#"));
        assert!(!covers("+", "a/b"));
        assert!(!covers("#", "$SYS/x"));
        assert!(covers("$SYS/#", "$SYS/+"));
        assert!(!covers("a/+", "a/#"));
        assert!(intersects("a/#", "a"));
        assert!(intersects("+/b", "a/+"));
        assert!(!intersects("#", "$SYS/#"));
        assert!(!intersects("$SYS/#", "+/x"));
        assert!(intersects("$SYS/#", "$SYS/+"));
        assert!(!intersects("a/b", "a/b/c"));
        // "" is no topic: `/#` needs a second level.
        assert!(!intersects("+", "/#"));
        assert!(covers("/+/#", "/#"));
        assert!(covers("+/+/#", "/#"));
    }

    proptest! {
        #[test]
        fn relations_match_brute_force(rule in filter(), f in filter()) {
            let topics = all_topics();
            let mut in_f = topics.iter().filter(|t| matches(&f, t));
            let covered = in_f.clone().all(|t| matches(&rule, t));
            let met = in_f.any(|t| matches(&rule, t));
            prop_assert_eq!(covers(&rule, &f), covered, "covers({}, {})", rule, f);
            prop_assert_eq!(intersects(&rule, &f), met, "intersects({}, {})", rule, f);
        }
    }
}
