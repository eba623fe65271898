//! MQTT topic names, topic filters and the structures that match them
//! (MQTT 3.1.1 and 5.0, section 4.7).
//!
//! * [`TopicName`] / [`TopicFilter`] are validated-once newtypes: the codec
//!   validates at the protocol boundary so the routing core never has to
//!   re-check and can rely on the invariants.
//! * [`matches()`] is the obviously-correct reference matcher; it is the oracle
//!   the model tests compare the fast structures against.
//! * [`Trie`] maps subscription filters to values and answers "who is
//!   subscribed to this topic" (the hot routing path).
//! * [`TopicTree`] maps topic names to values and answers "which stored topics
//!   does this filter match" (the retained-message store).
//!
//! `$share/...` filters validate as ordinary filters; [`SubFilter::parse`]
//! then splits them into group and filter, once, at SUBSCRIBE.

use std::fmt;

use bytes::Bytes;

pub mod share;
pub mod subject;
pub mod tree;
pub mod trie;

pub use share::{SharedFilter, SubFilter};
pub use tree::TopicTree;
pub use trie::{MatchScratch, Trie};

/// Longest topic allowed on the wire: the length prefix of a UTF-8 string is
/// two bytes [MQTT-4.7.3-3].
pub const MAX_TOPIC_LEN: usize = u16::MAX as usize;

/// Why a topic name or filter was rejected. Each message cites the spec rule
/// so a client-facing disconnect reason can be traced back to the standard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Zero-length topic.
    #[error("topic must be at least one character [MQTT-4.7.3-1]")]
    Empty,
    /// Longer than [`MAX_TOPIC_LEN`] bytes.
    #[error("topic is longer than 65535 bytes [MQTT-4.7.3-3]")]
    TooLong,
    /// Contains U+0000.
    #[error("topic contains U+0000 [MQTT-4.7.3-2]")]
    NulChar,
    /// Not well-formed UTF-8.
    #[error("topic is not well-formed UTF-8 [MQTT-1.5.3-1]")]
    InvalidUtf8,
    /// A PUBLISH topic name contains '+' or '#'.
    #[error("topic name contains a wildcard [MQTT-3.3.2-2] [MQTT-4.7.1-1]")]
    WildcardInName,
    /// A filter uses '+' or '#' somewhere other than as a whole level.
    #[error(
        "misplaced wildcard: '#' must be last and alone in its level [MQTT-4.7.1-2], \
         '+' must occupy a whole level [MQTT-4.7.1-3]"
    )]
    InvalidWildcard,
    /// More levels than the broker is configured to accept.
    #[error("topic has more levels than the configured limit")]
    TooManyLevels,
}

/// Checks the rules shared by names and filters, then the kind-specific
/// byte rules via `scan`, which returns the number of '/' separators.
/// '/', '+', '#' and NUL are ASCII and never occur inside a multi-byte UTF-8
/// sequence, so the byte scans need not decode characters.
fn validate(
    raw: &[u8],
    max_levels: usize,
    scan: fn(&[u8]) -> Result<usize, TopicError>,
) -> Result<(), TopicError> {
    if raw.is_empty() {
        return Err(TopicError::Empty);
    }
    if raw.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    // ASCII, as nearly every topic is, is UTF-8: the word-at-a-time check
    // costs a fraction of the full decoder's on a short topic.
    if !raw.is_ascii() {
        std::str::from_utf8(raw).map_err(|_| TopicError::InvalidUtf8)?;
    }
    if scan(raw)? >= max_levels {
        return Err(TopicError::TooManyLevels);
    }
    Ok(())
}

/// Byte rules of a topic name. Names are validated on every PUBLISH, so this
/// uses branch-free integer folds over the whole input, which LLVM
/// vectorises, rather than a byte-at-a-time loop with early exits (measured
/// ~25% faster on a typical 40-byte topic, including the UTF-8 check).
fn scan_name(raw: &[u8]) -> Result<usize, TopicError> {
    let forbidden = raw.iter().fold(0u8, |seen, &b| {
        seen | u8::from(b == 0) | u8::from(b == b'+') | u8::from(b == b'#')
    });
    if forbidden != 0 {
        return Err(if raw.contains(&0) {
            TopicError::NulChar
        } else {
            TopicError::WildcardInName
        });
    }
    // `u32` cannot overflow: validated input is at most 65535 bytes.
    let separators = raw.iter().fold(0u32, |n, &b| n + u32::from(b == b'/'));
    Ok(separators as usize)
}

/// Byte rules of a topic filter (validated once per SUBSCRIBE, so clarity
/// wins over speed here).
fn scan_filter(raw: &[u8]) -> Result<usize, TopicError> {
    let mut separators = 0;
    for (i, &b) in raw.iter().enumerate() {
        match b {
            b'/' => separators += 1,
            0 => return Err(TopicError::NulChar),
            b'+' | b'#' => check_wildcard(raw, i)?,
            _ => {}
        }
    }
    Ok(separators)
}

/// Checks that the wildcard at `raw[i]` is a whole level and, for '#', the
/// last one.
fn check_wildcard(raw: &[u8], i: usize) -> Result<(), TopicError> {
    let starts_level = i == 0 || raw[i - 1] == b'/';
    let ends_level = match raw.get(i + 1) {
        None => true,
        // '#' must be the final character, '+' may be followed by '/'.
        Some(&b'/') => raw[i] == b'+',
        Some(_) => false,
    };
    if starts_level && ends_level {
        Ok(())
    } else {
        Err(TopicError::InvalidWildcard)
    }
}

/// Unwraps the UTF-8 of an already validated topic without checking it again:
/// `as_str` runs several times per routed message (interest index, trie, shared
/// groups), and re-validation showed up at 4-5 % of broker CPU.
fn validated_str(bytes: &Bytes) -> &str {
    debug_assert!(std::str::from_utf8(bytes).is_ok());
    // SAFETY: `TopicName` and `TopicFilter` are only constructed by `new` and
    // `from_static`, which reject anything that is not valid UTF-8, and their
    // bytes are never mutated afterwards. Tested by `as_str_round_trips` below.
    unsafe { std::str::from_utf8_unchecked(bytes) }
}

/// A validated PUBLISH topic name: non-empty, at most 65535 bytes, UTF-8,
/// no U+0000, no wildcards, at most the configured number of levels.
///
/// Backed by [`Bytes`] so the codec can hand out a zero-copy slice of the
/// received packet and fan-out can clone it cheaply.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct TopicName(Bytes);

impl TopicName {
    /// Validates `raw` as a topic name with at most `max_levels` levels
    /// (levels = number of '/' + 1). Pass `usize::MAX` for no level limit.
    pub fn new(raw: Bytes, max_levels: usize) -> Result<Self, TopicError> {
        validate(&raw, max_levels, scan_name)?;
        Ok(Self(raw))
    }

    /// Builds a topic name from a literal, for tests and constants.
    ///
    /// # Panics
    /// If `s` is not a valid topic name.
    pub fn from_static(s: &'static str) -> Self {
        match Self::new(Bytes::from_static(s.as_bytes()), usize::MAX) {
            Ok(name) => name,
            Err(e) => panic!("invalid static topic name {s:?}: {e}"),
        }
    }

    /// The same name in an allocation of its own (see [`crate::codec::detached`]).
    pub fn detached(&self) -> Self {
        Self(crate::codec::detached(&self.0))
    }

    /// The topic as text.
    pub fn as_str(&self) -> &str {
        validated_str(&self.0)
    }

    /// The topic as raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The shared buffer, e.g. to encode it without copying.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// Gives back the shared buffer.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Whether the topic starts with '$': such topics are reserved for the
    /// server and are not matched by filters that start with a wildcard
    /// [MQTT-4.7.2-1].
    pub fn is_dollar(&self) -> bool {
        self.0.first() == Some(&b'$')
    }

    /// Whether the topic is in the `$SYS` tree (broker statistics), which
    /// clients must not publish to.
    pub fn is_sys(&self) -> bool {
        let b = self.as_bytes();
        b == b"$SYS" || b.starts_with(b"$SYS/")
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated SUBSCRIBE / UNSUBSCRIBE topic filter: like a [`TopicName`], but
/// '+' may occupy whole levels and '#' may be the whole last level.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct TopicFilter(Bytes);

impl TopicFilter {
    /// Validates `raw` as a topic filter with at most `max_levels` levels
    /// (levels = number of '/' + 1). Pass `usize::MAX` for no level limit.
    pub fn new(raw: Bytes, max_levels: usize) -> Result<Self, TopicError> {
        validate(&raw, max_levels, scan_filter)?;
        Ok(Self(raw))
    }

    /// Builds a filter from a literal, for tests and constants.
    ///
    /// # Panics
    /// If `s` is not a valid topic filter.
    pub fn from_static(s: &'static str) -> Self {
        match Self::new(Bytes::from_static(s.as_bytes()), usize::MAX) {
            Ok(filter) => filter,
            Err(e) => panic!("invalid static topic filter {s:?}: {e}"),
        }
    }

    /// The same filter in an allocation of its own (see [`crate::codec::detached`]).
    pub fn detached(&self) -> Self {
        Self(crate::codec::detached(&self.0))
    }

    /// The filter as text.
    pub fn as_str(&self) -> &str {
        validated_str(&self.0)
    }

    /// The filter as raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The shared buffer.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// Gives back the shared buffer.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Whether the filter contains '+' or '#'. Exact filters can be routed
    /// with a plain lookup, so callers may want to special-case them.
    pub fn has_wildcards(&self) -> bool {
        self.0.iter().any(|&b| b == b'+' || b == b'#')
    }

    /// Whether the filter starts with '$' (and so can match `$` topics).
    pub fn is_dollar(&self) -> bool {
        self.0.first() == Some(&b'$')
    }

    /// Whether this filter matches `topic`; see [`matches()`].
    pub fn matches(&self, topic: &TopicName) -> bool {
        matches(self.as_str(), topic.as_str())
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reference matcher: whether the (valid) filter `filter` matches the (valid)
/// topic name `topic` (section 4.7).
///
/// Written for obviousness rather than speed; the routing path uses [`Trie`].
/// * `#` matches any number of levels, including zero, so `sport/#` also
///   matches `sport` [MQTT-4.7.1-2].
/// * `+` matches exactly one level, which may be empty [MQTT-4.7.1-3].
/// * A filter whose first level is a wildcard never matches a topic starting
///   with '$' [MQTT-4.7.2-1].
///
/// The result for invalid inputs is unspecified (but it does not panic).
pub fn matches(filter: &str, topic: &str) -> bool {
    let first_is_wildcard = matches!(filter.split('/').next(), Some("+" | "#"));
    if topic.starts_with('$') && first_is_wildcard {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Result<TopicName, TopicError> {
        TopicName::new(Bytes::copy_from_slice(s.as_bytes()), usize::MAX)
    }

    fn filter(s: &str) -> Result<TopicFilter, TopicError> {
        TopicFilter::new(Bytes::copy_from_slice(s.as_bytes()), usize::MAX)
    }

    /// The unchecked conversion in `as_str` returns exactly the validated text,
    /// multi-byte characters included, and invalid bytes never get that far.
    #[test]
    fn as_str_round_trips() {
        for text in ["a/b", "caf\u{e9}/\u{1f600}/x", "$SYS/broker", "/"] {
            assert_eq!(name(text).unwrap().as_str(), text);
        }
        for text in ["a/+", "caf\u{e9}/#", "+/\u{1f600}"] {
            assert_eq!(filter(text).unwrap().as_str(), text);
        }
        let invalid = Bytes::from_static(&[b'a', 0xff, b'b']);
        assert!(TopicName::new(invalid.clone(), usize::MAX).is_err());
        assert!(TopicFilter::new(invalid, usize::MAX).is_err());
    }

    #[test]
    fn empty_is_rejected_4_7_3_1() {
        assert_eq!(name(""), Err(TopicError::Empty));
        assert_eq!(filter(""), Err(TopicError::Empty));
    }

    #[test]
    fn single_separator_is_valid_4_7_1_1() {
        // "/" is two empty levels; legal though not recommended.
        assert!(name("/").is_ok());
        assert!(filter("/").is_ok());
        assert!(name("//").is_ok());
    }

    #[test]
    fn nul_is_rejected_4_7_3_2() {
        assert_eq!(name("a\0b"), Err(TopicError::NulChar));
        assert_eq!(filter("a/\0"), Err(TopicError::NulChar));
    }

    #[test]
    fn length_limit_4_7_3_3() {
        let max = "a".repeat(MAX_TOPIC_LEN);
        assert!(name(&max).is_ok());
        assert!(filter(&max).is_ok());
        let over = "a".repeat(MAX_TOPIC_LEN + 1);
        assert_eq!(name(&over), Err(TopicError::TooLong));
        assert_eq!(filter(&over), Err(TopicError::TooLong));
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        for raw in [
            &b"a/\xff"[..],
            b"\xc3",
            b"\xed\xa0\x80", /* surrogate */
        ] {
            let raw = Bytes::copy_from_slice(raw);
            assert_eq!(TopicName::new(raw.clone(), 8), Err(TopicError::InvalidUtf8));
            assert_eq!(TopicFilter::new(raw, 8), Err(TopicError::InvalidUtf8));
        }
        assert!(name("caf\u{e9}/\u{1f600}").is_ok());
    }

    #[test]
    fn wildcards_in_names_3_3_2_2() {
        for s in ["#", "+", "a/+", "a/#", "a+", "sport/tennis#"] {
            assert_eq!(name(s), Err(TopicError::WildcardInName), "{s}");
        }
    }

    #[test]
    fn multi_level_wildcard_4_7_1_2() {
        for ok in ["#", "sport/#", "sport/tennis/#", "/#", "+/#", "a//#"] {
            assert!(filter(ok).is_ok(), "{ok}");
        }
        for bad in [
            "sport/tennis#",
            "sport/tennis/#/ranking",
            "#/",
            "##",
            "a/#b",
            "a#",
        ] {
            assert_eq!(filter(bad), Err(TopicError::InvalidWildcard), "{bad}");
        }
    }

    #[test]
    fn single_level_wildcard_4_7_1_3() {
        for ok in ["+", "+/tennis/#", "sport/+/player1", "/+", "+/+", "a/+/"] {
            assert!(filter(ok).is_ok(), "{ok}");
        }
        for bad in ["sport+", "+a", "a/b+/c", "++", "a/+b"] {
            assert_eq!(filter(bad), Err(TopicError::InvalidWildcard), "{bad}");
        }
    }

    #[test]
    fn level_limit() {
        let raw = |s: &'static str| Bytes::from_static(s.as_bytes());
        assert!(TopicName::new(raw("a/b/c"), 3).is_ok());
        assert_eq!(
            TopicName::new(raw("a/b/c/d"), 3),
            Err(TopicError::TooManyLevels)
        );
        assert!(TopicFilter::new(raw("a/+/#"), 3).is_ok());
        assert_eq!(
            TopicFilter::new(raw("a/+/c/#"), 3),
            Err(TopicError::TooManyLevels)
        );
        // Trailing separators count: "a/" has two levels.
        assert_eq!(TopicName::new(raw("a/"), 1), Err(TopicError::TooManyLevels));
    }

    #[test]
    fn accessors() {
        let t = TopicName::from_static("sport/tennis");
        assert_eq!(t.as_str(), "sport/tennis");
        assert_eq!(t.as_bytes(), b"sport/tennis");
        assert_eq!(t.bytes(), &Bytes::from_static(b"sport/tennis"));
        assert_eq!(t.to_string(), "sport/tennis");
        assert_eq!(t.clone().into_bytes(), Bytes::from_static(b"sport/tennis"));
        let f = TopicFilter::from_static("sport/+");
        assert_eq!(f.as_str(), "sport/+");
        assert_eq!(f.to_string(), "sport/+");
        assert!(f.has_wildcards());
        assert!(!TopicFilter::from_static("sport/tennis").has_wildcards());
        assert!(f.matches(&t));
        // `$share` is an ordinary filter at this layer.
        assert!(filter("$share/g/a/#").is_ok());
    }

    #[test]
    fn dollar_and_sys() {
        assert!(TopicName::from_static("$SYS").is_sys());
        assert!(TopicName::from_static("$SYS/broker/uptime").is_sys());
        assert!(!TopicName::from_static("$SYSTEM").is_sys());
        assert!(TopicName::from_static("$SYSTEM").is_dollar());
        assert!(!TopicName::from_static("a/$SYS").is_dollar());
        assert!(TopicFilter::from_static("$SYS/#").is_dollar());
        assert!(!TopicFilter::from_static("#").is_dollar());
    }

    #[test]
    #[should_panic(expected = "invalid static topic name")]
    fn from_static_panics_on_invalid() {
        let _ = TopicName::from_static("a/+");
    }

    #[test]
    fn spec_examples_multi_level_4_7_1_2() {
        let f = "sport/tennis/player1/#";
        assert!(matches(f, "sport/tennis/player1"));
        assert!(matches(f, "sport/tennis/player1/ranking"));
        assert!(matches(f, "sport/tennis/player1/score/wimbledon"));
        assert!(!matches(f, "sport/tennis/player2"));
        assert!(!matches(f, "sport/tennis"));
        assert!(matches("sport/#", "sport"));
        assert!(matches("#", "sport/tennis"));
        assert!(matches("#", "/"));
    }

    #[test]
    fn spec_examples_single_level_4_7_1_3() {
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(matches("sport/tennis/+", "sport/tennis/player2"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(matches("+/tennis/#", "sport/tennis/player1"));
        assert!(matches("sport/+/player1", "sport/tennis/player1"));
    }

    #[test]
    fn spec_examples_dollar_topics_4_7_2() {
        assert!(!matches("#", "$SYS"));
        assert!(!matches("#", "$SYS/monitor/Clients"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(!matches("+", "$SYS"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        // Only the first character counts: '$' deeper down is ordinary.
        assert!(matches("+/$x", "a/$x"));
        assert!(matches("a/#", "a/$x"));
    }

    #[test]
    fn exact_levels_are_case_sensitive_and_distinct() {
        assert!(!matches("ACCOUNTS", "Accounts"));
        assert!(!matches("a", "a/"));
        assert!(!matches("a/", "a"));
        assert!(matches("a//b", "a//b"));
        assert!(matches("a/+/b", "a//b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
    }
}
