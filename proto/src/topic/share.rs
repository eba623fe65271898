//! Shared subscriptions: `$share/{group}/{filter}` (MQTT 5.0 section 4.8.2,
//! accepted from 3.1.1 clients too).

/// The prefix that marks a shared subscription.
pub const SHARE_PREFIX: &str = "$share/";

/// A shared subscription split into its group name and the filter it matches with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shared<'a> {
    pub group: &'a str,
    pub filter: &'a str,
}

/// `None` for an ordinary filter; `Some(Err(()))` for a malformed shared one: an
/// empty group, a group with a wildcard, or no filter [MQTT-4.8.2-1], [MQTT-4.8.2-2].
pub fn parse_shared(filter: &str) -> Option<Result<Shared<'_>, ()>> {
    let rest = filter.strip_prefix(SHARE_PREFIX)?;
    let Some((group, inner)) = rest.split_once('/') else {
        return Some(Err(()));
    };
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return Some(Err(()));
    }
    Some(Ok(Shared {
        group,
        filter: inner,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_groups() {
        assert_eq!(parse_shared("a/b"), None);
        assert_eq!(
            parse_shared("$share/g/a/+"),
            Some(Ok(Shared {
                group: "g",
                filter: "a/+"
            }))
        );
        assert_eq!(
            parse_shared("$share/g/#"),
            Some(Ok(Shared {
                group: "g",
                filter: "#"
            }))
        );
        assert_eq!(parse_shared("$share//a"), Some(Err(())));
        assert_eq!(parse_shared("$share/g+/a"), Some(Err(())));
        assert_eq!(parse_shared("$share/g"), Some(Err(())));
        assert_eq!(parse_shared("$share/g/"), Some(Err(())));
    }
}
