//! Mosquitto's `acl_file` syntax, one line at a time.

use bytes::Bytes;

use super::rules::{DENY, READ, WRITE};
use crate::topic::{TopicError, TopicFilter};

/// Why an ACL file was rejected, naming the 1-based line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct AclFileError {
    pub line: usize,
    pub kind: AclErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AclErrorKind {
    /// The first word is not `topic`, `pattern` or `user` (shown truncated).
    #[error("unknown keyword {0:?}: expected `topic`, `pattern` or `user`")]
    UnknownKeyword(String),
    #[error("`user` needs a username")]
    MissingUsername,
    /// `topic` or `pattern` without a filter (`topic read` included).
    #[error("`{0}` needs a topic filter")]
    MissingFilter(&'static str),
    #[error("invalid topic filter: {0}")]
    InvalidFilter(TopicError),
}

/// A line that means something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Line<'a> {
    User(&'a str),
    Topic(&'a str, u8),
    Pattern(&'a str, u8),
}

/// Parses one line; `None` for blank lines and comments.
pub(super) fn line(text: &str) -> Result<Option<Line<'_>>, AclErrorKind> {
    let text = text.trim();
    if text.is_empty() || text.starts_with('#') {
        return Ok(None);
    }
    let (keyword, rest) = split_word(text);
    match keyword {
        "user" if rest.is_empty() => Err(AclErrorKind::MissingUsername),
        "user" => Ok(Some(Line::User(rest))),
        "topic" => rule("topic", rest).map(|(f, bits)| Some(Line::Topic(f, bits))),
        "pattern" => rule("pattern", rest).map(|(f, bits)| Some(Line::Pattern(f, bits))),
        _ => Err(AclErrorKind::UnknownKeyword(
            keyword.chars().take(32).collect(),
        )),
    }
}

/// The first word and the rest of the line, whose own spaces are kept (a
/// filter or a username may contain them).
fn split_word(text: &str) -> (&str, &str) {
    match text.find([' ', '\t']) {
        Some(i) => (&text[..i], text[i..].trim_start()),
        None => (text, ""),
    }
}

/// `[read|write|readwrite|deny] <filter>`: without an access word the whole
/// rest is the filter, read and write.
fn rule<'a>(keyword: &'static str, rest: &'a str) -> Result<(&'a str, u8), AclErrorKind> {
    let (word, after) = split_word(rest);
    let (filter, bits) = match word {
        "read" => (after, READ),
        "write" => (after, WRITE),
        "readwrite" => (after, READ | WRITE),
        "deny" => (after, DENY),
        _ => (rest, READ | WRITE),
    };
    if filter.is_empty() {
        return Err(AclErrorKind::MissingFilter(keyword));
    }
    // A pattern is validated before substitution: `%c` and `%u` are literals.
    TopicFilter::new(Bytes::copy_from_slice(filter.as_bytes()), usize::MAX)
        .map_err(AclErrorKind::InvalidFilter)?;
    Ok((filter, bits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_kind() {
        assert_eq!(line(""), Ok(None));
        assert_eq!(line("   \t "), Ok(None));
        assert_eq!(line("  # topic x"), Ok(None));
        assert_eq!(line("user alice"), Ok(Some(Line::User("alice"))));
        assert_eq!(line(" user  bob smith "), Ok(Some(Line::User("bob smith"))));
        assert_eq!(
            line("topic a/#"),
            Ok(Some(Line::Topic("a/#", READ | WRITE)))
        );
        assert_eq!(line("topic read a"), Ok(Some(Line::Topic("a", READ))));
        assert_eq!(line("topic\twrite a"), Ok(Some(Line::Topic("a", WRITE))));
        assert_eq!(
            line("topic readwrite a"),
            Ok(Some(Line::Topic("a", READ | WRITE)))
        );
        assert_eq!(line("topic deny a"), Ok(Some(Line::Topic("a", DENY))));
        assert_eq!(
            line("topic a b/c"),
            Ok(Some(Line::Topic("a b/c", READ | WRITE)))
        );
        assert_eq!(
            line("topic reader"),
            Ok(Some(Line::Topic("reader", READ | WRITE)))
        );
        assert_eq!(
            line("pattern write d/%c/%u/#"),
            Ok(Some(Line::Pattern("d/%c/%u/#", WRITE)))
        );
        assert_eq!(
            line("pattern %c"),
            Ok(Some(Line::Pattern("%c", READ | WRITE)))
        );
    }

    #[test]
    fn errors() {
        use AclErrorKind::*;
        assert_eq!(line("user"), Err(MissingUsername));
        assert_eq!(line("user   "), Err(MissingUsername));
        assert_eq!(line("topic"), Err(MissingFilter("topic")));
        assert_eq!(line("topic read"), Err(MissingFilter("topic")));
        assert_eq!(line("pattern deny "), Err(MissingFilter("pattern")));
        assert_eq!(line("Topic a"), Err(UnknownKeyword("Topic".into())));
        assert_eq!(line("topics a"), Err(UnknownKeyword("topics".into())));
        let invalid = InvalidFilter(TopicError::InvalidWildcard);
        for bad in ["topic a/#/b", "topic a/b#", "pattern +x", "topic read #/a"] {
            assert_eq!(line(bad), Err(invalid.clone()), "{bad}");
        }
        assert_eq!(line("topic a\0b"), Err(InvalidFilter(TopicError::NulChar)));
        let long = format!("topic {}", "a".repeat(65_536));
        assert_eq!(line(&long), Err(InvalidFilter(TopicError::TooLong)));
        assert!(line(&format!("topic {}", "a".repeat(65_535))).is_ok());
        let word = "x".repeat(100);
        assert_eq!(line(&word), Err(UnknownKeyword("x".repeat(32))));
    }
}
