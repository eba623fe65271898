//! Subscription filters as clients give them: plain, or shared
//! (`$share/{group}/{filter}`, MQTT 5.0 section 4.8.2, accepted from 3.1.1
//! clients too). Parsed once at SUBSCRIBE; the router never re-parses.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::TopicFilter;

/// The prefix that marks a shared subscription.
pub const SHARE_PREFIX: &str = "$share/";

/// A malformed shared subscription: an empty group, a group with a wildcard,
/// or no filter after the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed shared subscription: $share/{{group}}/{{filter}} needs a group without wildcards and a filter [MQTT-4.8.2-1] [MQTT-4.8.2-2]")]
pub struct ShareError;

/// A subscription's filter, as subscribed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubFilter {
    /// An ordinary filter: every matching subscriber gets each message.
    Plain(TopicFilter),
    /// One member of the group gets each message.
    Shared(SharedFilter),
}

impl SubFilter {
    /// Splits a validated filter into plain or shared.
    pub fn parse(filter: TopicFilter) -> Result<SubFilter, ShareError> {
        let Some(rest) = filter.as_str().strip_prefix(SHARE_PREFIX) else {
            return Ok(SubFilter::Plain(filter));
        };
        let (group, inner) = rest.split_once('/').ok_or(ShareError)?;
        if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
            return Err(ShareError);
        }
        let group_len = group.len();
        let start = SHARE_PREFIX.len() + group_len + 1;
        // A suffix of a valid filter that starts at a level boundary is a
        // valid filter: no wildcard rule or level count can get worse.
        let inner =
            TopicFilter::new(filter.bytes().slice(start..), usize::MAX).map_err(|_| ShareError)?;
        Ok(SubFilter::Shared(SharedFilter(Arc::new(Parts {
            full: filter,
            group_len,
            inner,
        }))))
    }

    /// The filter as the client subscribed it (with `$share/...` if shared).
    pub fn as_str(&self) -> &str {
        match self {
            SubFilter::Plain(f) => f.as_str(),
            SubFilter::Shared(s) => s.as_str(),
        }
    }

    pub fn is_shared(&self) -> bool {
        matches!(self, SubFilter::Shared(_))
    }

    /// The topic filter that selects messages: a shared one's without its
    /// `$share/{group}/` prefix.
    pub fn topic_filter(&self) -> &str {
        match self {
            SubFilter::Plain(f) => f.as_str(),
            SubFilter::Shared(s) => s.filter().as_str(),
        }
    }
}

/// Equal filters hash alike whatever their kind: a key is its text, so a
/// session's subscriptions can be looked up by the text of an UNSUBSCRIBE.
impl Hash for SubFilter {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Borrow<str> for SubFilter {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for SubFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `$share/{group}/{filter}`, validated. Cheap to clone (one reference
/// count); its identity, equality and hash are the whole text.
#[derive(Clone)]
pub struct SharedFilter(Arc<Parts>);

struct Parts {
    full: TopicFilter,
    group_len: usize,
    /// The filter that topics are matched against (a slice of `full`).
    inner: TopicFilter,
}

impl SharedFilter {
    /// The whole `$share/group/filter` text: the group's identity.
    pub fn as_str(&self) -> &str {
        self.0.full.as_str()
    }

    pub fn group(&self) -> &str {
        &self.as_str()[SHARE_PREFIX.len()..SHARE_PREFIX.len() + self.0.group_len]
    }

    /// The filter that topics are matched against.
    pub fn filter(&self) -> &TopicFilter {
        &self.0.inner
    }
}

impl PartialEq for SharedFilter {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.as_str() == other.as_str()
    }
}

impl Eq for SharedFilter {}

impl Hash for SharedFilter {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Borrow<str> for SharedFilter {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for SharedFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedFilter").field(&self.as_str()).finish()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn parse(s: &str) -> Result<SubFilter, ShareError> {
        let filter = TopicFilter::new(Bytes::copy_from_slice(s.as_bytes()), usize::MAX).unwrap();
        SubFilter::parse(filter)
    }

    fn shared(s: &str) -> SharedFilter {
        match parse(s) {
            Ok(SubFilter::Shared(s)) => s,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn parses_groups() {
        assert!(matches!(parse("a/b"), Ok(SubFilter::Plain(f)) if f.as_str() == "a/b"));
        assert!(matches!(parse("$shared/g/a"), Ok(SubFilter::Plain(_))));
        let s = shared("$share/g/a/+");
        assert_eq!((s.group(), s.filter().as_str()), ("g", "a/+"));
        assert_eq!(s.as_str(), "$share/g/a/+");
        let s = shared("$share/group-1/#");
        assert_eq!((s.group(), s.filter().as_str()), ("group-1", "#"));
        for bad in [
            "$share//a",
            "$share/+/a",
            "$share/g",
            "$share/g/",
            "$share/#",
        ] {
            assert_eq!(parse(bad).unwrap_err(), ShareError, "{bad}");
        }
    }

    #[test]
    fn identity_is_the_whole_text() {
        use std::collections::HashMap;
        let a = shared("$share/g/t");
        assert_eq!(a, shared("$share/g/t"));
        assert_ne!(a, shared("$share/h/t"));
        let mut by_text: HashMap<SubFilter, u8> = HashMap::new();
        by_text.insert(SubFilter::Shared(a), 1);
        by_text.insert(parse("t").unwrap(), 2);
        assert_eq!(by_text.get("$share/g/t"), Some(&1));
        assert_eq!(by_text.get("t"), Some(&2));
    }
}
