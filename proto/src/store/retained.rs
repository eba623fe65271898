//! One core's replica of the retained messages, with its caps.

use std::sync::Arc;

use crate::message::Message;
use crate::topic::TopicTree;

/// Retained messages by topic, bounded in count and bytes.
#[derive(Debug)]
pub struct RetainedStore {
    tree: TopicTree<Arc<Message>>,
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
}

impl RetainedStore {
    pub fn new(max_messages: usize, max_bytes: usize) -> RetainedStore {
        RetainedStore {
            tree: TopicTree::new(),
            bytes: 0,
            max_messages,
            max_bytes,
        }
    }

    /// New caps (a reload): what is stored stays; a store past them is refused.
    pub fn set_caps(&mut self, max_messages: usize, max_bytes: usize) {
        self.max_messages = max_messages;
        self.max_bytes = max_bytes;
    }

    /// Stores `msg` for its topic, or clears the topic when the payload is empty
    /// [MQTT-3.3.1-6]. False when a cap refused a store (the old message stays).
    pub fn set(&mut self, msg: &Arc<Message>) -> bool {
        let topic = msg.topic.as_str();
        if msg.payload.is_empty() {
            if let Some(old) = self.tree.remove(topic) {
                self.bytes -= old.weight();
            }
            return true;
        }
        let old_weight = self.tree.get(topic).map_or(0, |m| m.weight());
        let over_count = old_weight == 0 && self.tree.len() >= self.max_messages;
        let bytes = self.bytes - old_weight + msg.weight();
        if over_count || bytes > self.max_bytes {
            return false;
        }
        self.tree.insert(topic, msg.clone());
        self.bytes = bytes;
        true
    }

    pub fn get(&self, topic: &str) -> Option<&Arc<Message>> {
        self.tree.get(topic)
    }

    /// Every retained message whose topic `filter` matches.
    pub fn for_each_matching(&self, filter: &str, f: impl FnMut(&str, &Arc<Message>)) {
        self.tree.for_each_matching(filter, f);
    }

    /// Every retained message, `$` topics included.
    pub fn for_each(&self, f: impl FnMut(&str, &Arc<Message>)) {
        self.tree.for_each(f);
    }

    /// Bytes held: the sum of the messages' weights (topic and payload).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn for_each_visits_dollar_topics_too() {
        let mut s = RetainedStore::new(10, 1 << 20);
        for t in ["a/b", "$app/x", "c"] {
            let topic = crate::topic::TopicName::from_static(t);
            s.set(
                &Message::new(
                    topic,
                    Bytes::from_static(b"v"),
                    crate::codec::QoS::AtMostOnce,
                    true,
                )
                .shared(),
            );
        }
        let mut seen = Vec::new();
        s.for_each(|t, _| seen.push(t.to_owned()));
        seen.sort();
        assert_eq!(seen, ["$app/x", "a/b", "c"]);
    }
    use crate::codec::QoS;
    use crate::topic::TopicName;

    fn msg(topic: &'static str, payload: &'static [u8]) -> Arc<Message> {
        let topic = TopicName::from_static(topic);
        Message::new(topic, Bytes::from_static(payload), QoS::AtMostOnce, true).shared()
    }

    #[test]
    fn set_replace_clear_and_caps() {
        let mut store = RetainedStore::new(2, 1 << 20);
        assert!(store.set(&msg("a", b"1")));
        assert!(
            store.set(&msg("a", b"2")),
            "replacing does not count against the cap"
        );
        assert!(store.set(&msg("b", b"1")));
        assert!(
            !store.set(&msg("c", b"1")),
            "a third topic exceeds max_messages"
        );
        assert_eq!(store.get("a").unwrap().payload, Bytes::from_static(b"2"));
        assert!(store.set(&msg("a", b"")), "an empty payload clears");
        assert!(store.get("a").is_none());
        assert!(store.set(&msg("c", b"1")), "room again after the clear");
        let mut seen = Vec::new();
        store.for_each_matching("#", |t, _| seen.push(t.to_owned()));
        seen.sort();
        assert_eq!(seen, ["b", "c"]);
    }

    #[test]
    fn byte_cap_refuses_and_keeps_the_old_message() {
        let small = msg("t", b"x");
        let mut store = RetainedStore::new(10, small.weight() + 5);
        assert!(store.set(&small));
        assert!(!store.set(&msg("t", b"0123456789")));
        assert_eq!(store.get("t").unwrap().payload, Bytes::from_static(b"x"));
    }
}
