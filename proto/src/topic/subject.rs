//! NATS subjects for MQTT topics and filters: how messages travel between
//! ringmq nodes over NATS (the cluster; see the scale-out design).
//!
//! Each MQTT level becomes one subject token after `prefix.`, and a topic's
//! subject ends with one more token, [`END`], which no level can be. So
//! NATS's own wildcards do the matching and every filter is one subject:
//! `+` becomes `*` (one token), and a final `#` becomes `>` (one or more
//! tokens), which takes the parent level too, as `a/#` must match `a`
//! [MQTT-4.7.1-2] (`a.>` matches `a.%%`). One subscription per filter also
//! keeps a filter's messages in one ordered stream.
//!
//! A level is written as it is except for what a NATS token cannot hold or
//! would read as syntax: `.` (the separator), `*` and `>` (wildcards),
//! whitespace and control characters (the protocol's delimiters), and `%`
//! itself, each as `%XX` per UTF-8 byte. An empty level, which a token
//! cannot be, is a lone `%`. A `%` in a written level is always followed
//! by two hex digits or stands alone, so `%%` is never a level. The mapping
//! is one-to-one ([`topic_of`] inverts it) and every subject is a valid
//! NATS subject.
//!
//! NATS wildcards also match `$` topics, which MQTT's leading wildcards
//! must not [MQTT-4.7.2-1]: a node receiving from NATS checks each message
//! against the filter it came through, so a subject subscription may take
//! more than its filter, never less.

use std::fmt::Write;

/// The lone token an empty level becomes.
const EMPTY_LEVEL: &str = "%";

/// The token that ends every topic's subject.
pub const END: &str = "%%";

/// The subject of topic name `topic` under `prefix` (a NATS subject of its
/// own, such as `ringmq.fleet.m`). At most three bytes per topic byte plus
/// the prefix and the end: the caller checks the result against the
/// server's limits.
pub fn topic_subject(prefix: &str, topic: &str) -> String {
    let mut subject = String::with_capacity(prefix.len() + 4 + topic.len());
    subject.push_str(prefix);
    for level in topic.split('/') {
        subject.push('.');
        push_level(&mut subject, level);
    }
    subject.push('.');
    subject.push_str(END);
    subject
}

/// What a node subscribes to in NATS for MQTT filter `filter` under
/// `prefix`.
pub fn filter_subject(prefix: &str, filter: &str) -> String {
    let mut subject = String::with_capacity(prefix.len() + 4 + filter.len());
    subject.push_str(prefix);
    for level in filter.split('/') {
        match level {
            "#" => return subject + ".>",
            "+" => subject.push_str(".*"),
            _ => {
                subject.push('.');
                push_level(&mut subject, level);
            }
        }
    }
    subject.push('.');
    subject.push_str(END);
    subject
}

/// The NATS queue group for MQTT shared group `group` (one token, escaped
/// as a level is).
pub fn queue_name(group: &str) -> String {
    let mut name = String::with_capacity(group.len());
    push_level(&mut name, group);
    name
}

/// The topic name that [`topic_subject`] wrote as `subject`; `None` for
/// any subject it cannot have written under `prefix` (a bad or needless
/// escape, a bare reserved character, a level that is not UTF-8).
pub fn topic_of(prefix: &str, subject: &str) -> Option<String> {
    let tokens = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let tokens = tokens.strip_suffix(END)?.strip_suffix('.')?;
    let mut topic = Vec::with_capacity(tokens.len());
    for (i, token) in tokens.split('.').enumerate() {
        if i > 0 {
            topic.push(b'/');
        }
        if token != EMPTY_LEVEL {
            unescape_into(token, &mut topic)?;
        }
    }
    let topic = String::from_utf8(topic).ok()?;
    // Only the one spelling the mapping writes names the topic.
    (topic_subject(prefix, &topic) == subject).then_some(topic)
}

/// Appends level `level` as one token.
fn push_level(out: &mut String, level: &str) {
    if level.is_empty() {
        out.push_str(EMPTY_LEVEL);
        return;
    }
    for c in level.chars() {
        if needs_escape(c) {
            let mut utf8 = [0; 4];
            for byte in c.encode_utf8(&mut utf8).bytes() {
                // Writing to a String cannot fail.
                let _ = write!(out, "%{byte:02X}");
            }
        } else {
            out.push(c);
        }
    }
}

fn needs_escape(c: char) -> bool {
    matches!(c, '.' | '*' | '>' | '%') || c.is_whitespace() || c.is_control()
}

/// Reverses [`push_level`]'s escapes in a non-empty token; `None` for a
/// malformed one. (Whether the token is the canonical spelling is checked by
/// re-encoding, in [`topic_of`].)
fn unescape_into(token: &str, out: &mut Vec<u8>) -> Option<()> {
    let bytes = token.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let digit = |b: u8| (b as char).to_digit(16);
            out.push((digit(hex[0])? * 16 + digit(hex[1])?) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::topic::matches;

    const P: &str = "ringmq.t";

    #[test]
    fn topics_become_one_token_per_level() {
        let cases = [
            ("a/b", "ringmq.t.a.b.%%"),
            ("a", "ringmq.t.a.%%"),
            ("sensors/eu-1/temp", "ringmq.t.sensors.eu-1.temp.%%"),
            ("a.b/c", "ringmq.t.a%2Eb.c.%%"),
            ("/", "ringmq.t.%.%.%%"),
            ("a//b", "ringmq.t.a.%.b.%%"),
            ("a b/\t", "ringmq.t.a%20b.%09.%%"),
            ("*/>", "ringmq.t.%2A.%3E.%%"),
            ("100%", "ringmq.t.100%25.%%"),
            ("%%", "ringmq.t.%25%25.%%"),
            ("$SYS/broker", "ringmq.t.$SYS.broker.%%"),
            ("grüße/ü", "ringmq.t.grüße.ü.%%"),
            ("\u{a0}", "ringmq.t.%C2%A0.%%"),
        ];
        for (topic, subject) in cases {
            assert_eq!(topic_subject(P, topic), subject, "{topic:?}");
            assert_eq!(topic_of(P, subject).as_deref(), Some(topic), "{subject:?}");
        }
    }

    #[test]
    fn filters_map_wildcards_onto_nats_wildcards() {
        let cases = [
            ("a/b", "ringmq.t.a.b.%%"),
            ("sport/+/score", "ringmq.t.sport.*.score.%%"),
            ("a/#", "ringmq.t.a.>"),
            ("#", "ringmq.t.>"),
            ("+/#", "ringmq.t.*.>"),
            ("+", "ringmq.t.*.%%"),
            ("/+/#", "ringmq.t.%.*.>"),
        ];
        for (filter, subject) in cases {
            assert_eq!(filter_subject(P, filter), subject, "{filter:?}");
        }
    }

    #[test]
    fn queue_groups_are_single_tokens() {
        assert_eq!(queue_name("workers"), "workers");
        assert_eq!(queue_name("a.b c"), "a%2Eb%20c");
    }

    #[test]
    fn subjects_that_are_not_ours_have_no_topic() {
        for subject in [
            "other.t.a.%%",
            "ringmq.t",
            "ringmq.t.%%",
            "ringmq.t.a",
            "ringmq.t.a.%%.%%",
            "ringmq.tx.a.%%",
            "ringmq.t.a%2.%%",
            "ringmq.t.a%zz.%%",
            "ringmq.t.a%+1.%%",
            "ringmq.t.a%2e.%%",
            "ringmq.t.%61.%%",
            "ringmq.t.a b.%%",
            "ringmq.t.a*.%%",
            "ringmq.t.%C3.%%",
        ] {
            assert_eq!(topic_of(P, subject), None, "{subject:?}");
        }
    }

    /// NATS's matching, as its documentation states it: `*` is one token,
    /// a final `>` one or more, anything else the same token.
    fn nats_matches(subscription: &str, subject: &str) -> bool {
        let mut sub = subscription.split('.');
        let mut subj = subject.split('.');
        loop {
            match (sub.next(), subj.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// A token only NATS's grammar could trip on.
    fn nats_token_is_valid(token: &str) -> bool {
        !token.is_empty() && !token.chars().any(|c| c.is_whitespace() || c == '.')
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("$SYS".to_owned()),
            "[a-c.*>% \t$ü]{1,3}",
        ]
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5).prop_map(|levels| levels.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop_oneof![level(), Just("+".to_owned())], 0..4),
            any::<bool>(),
        )
            .prop_filter_map("a filter has a level", |(mut levels, hash)| {
                if hash {
                    levels.push("#".to_owned());
                }
                (!levels.is_empty()).then(|| levels.join("/"))
            })
    }

    proptest! {
        #[test]
        fn every_topic_maps_to_a_valid_subject_and_back(t in topic()) {
            let subject = topic_subject(P, &t);
            let tokens = subject.strip_prefix("ringmq.t.").expect("prefixed");
            prop_assert!(tokens.split('.').all(nats_token_is_valid), "{subject:?}");
            prop_assert!(tokens.split('.').all(|tok| tok != "*" && tok != ">"));
            let levels = tokens.strip_suffix(".%%").expect("ended");
            prop_assert!(levels.split('.').all(|tok| tok != END), "{subject:?}");
            prop_assert_eq!(topic_of(P, &subject), Some(t));
        }

        /// Whatever MQTT matches, NATS delivers; NATS delivers more only
        /// for a `$` topic under a leading wildcard, which the receiving
        /// node's own match then drops.
        #[test]
        fn nats_delivers_what_mqtt_matches(f in filter(), t in topic()) {
            let subject = topic_subject(P, &t);
            let nats = nats_matches(&filter_subject(P, &f), &subject);
            let mqtt = matches(&f, &t);
            let dollar_under_wildcard =
                t.starts_with('$') && matches!(f.split('/').next(), Some("+" | "#"));
            prop_assert!(!mqtt || nats, "{f:?} matches {t:?} but not over NATS");
            prop_assert!(!nats || mqtt || dollar_under_wildcard, "{f:?} takes {t:?} over NATS");
        }
    }
}
