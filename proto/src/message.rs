//! The unit the router moves between sessions and cores.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};

use crate::codec::{encode_publish, Properties, Property, Protocol, PublishHeader, QoS, QosPid};
use crate::time::Time;
use crate::topic::TopicName;

/// An application message as published, shared (`Arc`) by every session and core
/// that delivers it: the topic and payload are never copied per subscriber.
#[derive(Debug)]
pub struct Message {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// 5.0 properties forwarded to subscribers unchanged (message expiry excluded:
    /// it is rewritten per delivery from `expires_at`).
    pub properties: Properties,
    /// The publishing client, for 5.0 "no local" and shared-subscription hashing.
    pub publisher: Option<Arc<str>>,
    /// Broker-clock milliseconds after which the message is not delivered (5.0).
    pub expires_at: Option<Time>,
    /// When the broker read it from its publisher, where the latency of its
    /// deliveries is measured from; `Time::ZERO` when it did not come from a
    /// live PUBLISH (a will, a `$SYS` value, a message restored from disk).
    pub received_at: Time,
    /// It came from another node of the cluster: its publisher is out of
    /// reach of back-pressure from here, so a full queue drops it.
    pub from_cluster: bool,
    /// The 3.1.1 QoS 0 frame, encoded at the second such delivery and then
    /// copied as is into every subscriber's buffer that receives exactly
    /// those bytes (fan-out).
    frame_v3_qos0: OnceLock<Bytes>,
    /// Whether a 3.1.1 QoS 0 delivery was encoded already. The first goes
    /// straight into its subscriber's buffer: a message with one subscriber
    /// (fan-in, point to point) pays for no frame of its own and no copy.
    v3_qos0_encoded: AtomicBool,
}

/// How a 5.0 delivery uses a topic alias [MQTT-3.3.2.3.4].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Alias {
    #[default]
    None,
    /// Send the topic and establish this alias for it.
    Set(u16),
    /// Send an empty topic and this alias.
    Use(u16),
}

/// What differs between two deliveries of the same message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery<'a> {
    pub qos_pid: QosPid,
    pub dup: bool,
    pub retain: bool,
    /// 5.0 subscription identifiers of the matching subscriptions.
    pub sub_ids: &'a [u32],
    pub alias: Alias,
    /// Broker clock, for the remaining message expiry interval.
    pub now: Time,
}

impl Delivery<'_> {
    pub fn plain(qos_pid: QosPid, dup: bool, retain: bool) -> Delivery<'static> {
        Delivery {
            qos_pid,
            dup,
            retain,
            sub_ids: &[],
            alias: Alias::None,
            now: Time::ZERO,
        }
    }
}

impl Message {
    pub fn new(topic: TopicName, payload: Bytes, qos: QoS, retain: bool) -> Message {
        Message {
            topic,
            payload,
            qos,
            retain,
            properties: Properties::default(),
            publisher: None,
            expires_at: None,
            received_at: Time::ZERO,
            from_cluster: false,
            frame_v3_qos0: OnceLock::new(),
            v3_qos0_encoded: AtomicBool::new(false),
        }
    }

    /// Stamps the time it was read from its publisher.
    pub fn received(mut self, now: Time) -> Message {
        self.received_at = now;
        self
    }

    /// Keeps the forwardable properties; a message expiry interval becomes
    /// `expires_at` on the broker clock.
    pub fn with_properties(mut self, properties: Properties, now: Time) -> Message {
        if properties.is_empty() {
            return self;
        }
        let mut kept = Vec::new();
        for p in properties.0 {
            match p {
                Property::MessageExpiryInterval(secs) => {
                    self.expires_at = Some(now.after_secs(secs));
                }
                Property::PayloadFormatIndicator(_)
                | Property::ContentType(_)
                | Property::ResponseTopic(_)
                | Property::CorrelationData(_)
                | Property::UserProperty(..) => kept.push(p),
                _ => {}
            }
        }
        self.properties = Properties(kept);
        self
    }

    pub fn from_client(mut self, client_id: Arc<str>) -> Message {
        self.publisher = Some(client_id);
        self
    }

    pub fn shared(self) -> Arc<Message> {
        Arc::new(self)
    }

    /// True once the 5.0 message expiry interval has passed.
    pub fn expired(&self, now: Time) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// Approximate memory held by the message, for queue and retained byte caps.
    pub fn weight(&self) -> usize {
        self.topic.as_bytes().len() + self.payload.len() + 64
    }

    /// Appends this message as a PUBLISH for one subscriber; returns the frame size.
    pub fn encode_for(&self, out: &mut BytesMut, protocol: Protocol, d: &Delivery) -> usize {
        let start = out.len();
        if protocol.is_v5() {
            self.encode_v5(out, d);
        } else if d.qos_pid == QosPid::AtMostOnce && !d.retain {
            // Relaxed: the flag only picks between two encodings of the
            // same bytes; the frame itself is published by the OnceLock.
            if self.frame_v3_qos0.get().is_none()
                && !self.v3_qos0_encoded.swap(true, Ordering::Relaxed)
            {
                let none = Properties::default();
                self.encode_with(out, protocol, d, self.topic.as_bytes(), &none);
                return out.len() - start;
            }
            let frame = self.frame_v3_qos0.get_or_init(|| {
                let mut buf = BytesMut::new();
                self.encode_with(
                    &mut buf,
                    protocol,
                    d,
                    self.topic.as_bytes(),
                    &Properties::default(),
                );
                buf.freeze()
            });
            out.extend_from_slice(frame);
        } else {
            self.encode_with(
                out,
                protocol,
                d,
                self.topic.as_bytes(),
                &Properties::default(),
            );
        }
        out.len() - start
    }

    fn encode_v5(&self, out: &mut BytesMut, d: &Delivery) {
        let topic: &[u8] = match d.alias {
            Alias::Use(_) => b"",
            _ => self.topic.as_bytes(),
        };
        let extra = self.expires_at.is_some() || !d.sub_ids.is_empty() || d.alias != Alias::None;
        if !extra {
            return self.encode_with(out, Protocol::V5, d, topic, &self.properties);
        }
        let mut props = self.properties.clone();
        if let Some(at) = self.expires_at {
            // Whole seconds left, rounded up: never announce 0 for a live message.
            let remaining = d.now.until(at).as_millis().div_ceil(1000);
            let remaining = u32::try_from(remaining).unwrap_or(u32::MAX);
            props.push(Property::MessageExpiryInterval(remaining));
        }
        if let Alias::Set(a) | Alias::Use(a) = d.alias {
            props.push(Property::TopicAlias(a));
        }
        for id in d.sub_ids {
            props.push(Property::SubscriptionIdentifier(*id));
        }
        self.encode_with(out, Protocol::V5, d, topic, &props);
    }

    fn encode_with(
        &self,
        out: &mut BytesMut,
        protocol: Protocol,
        d: &Delivery,
        topic: &[u8],
        props: &Properties,
    ) {
        let header = PublishHeader {
            dup: d.dup,
            qos_pid: d.qos_pid,
            retain: d.retain,
            topic,
            properties: props,
        };
        encode_publish(out, protocol, &header, &self.payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, Packet, Pid};

    fn decode_one(bytes: &mut BytesMut, protocol: Protocol) -> crate::codec::Publish {
        match decode(bytes, protocol, u32::MAX).unwrap() {
            Some(Packet::Publish(p)) => p,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_v3_qos0_delivery_has_the_same_bytes_first_or_cached() {
        let msg = Message::new(
            TopicName::from_static("a/b"),
            Bytes::from_static(b"payload"),
            QoS::AtLeastOnce,
            false,
        );
        let d = Delivery::plain(QosPid::AtMostOnce, false, false);
        let mut frames = Vec::new();
        for _ in 0..3 {
            let mut out = BytesMut::from(&b"before"[..]);
            let len = msg.encode_for(&mut out, Protocol::V3_1_1, &d);
            assert_eq!(len, out.len() - 6);
            frames.push(out.split_off(6));
        }
        assert!(msg.frame_v3_qos0.get().is_some(), "cached from the second");
        assert_eq!(frames[0], frames[1]);
        assert_eq!(frames[1], frames[2]);
        let p = decode_one(&mut frames[0], Protocol::V3_1_1);
        assert_eq!(
            (&p.topic[..], &p.payload[..]),
            (&b"a/b"[..], &b"payload"[..])
        );
    }

    #[test]
    fn v5_delivery_rewrites_expiry_and_adds_ids_and_alias() {
        let mut props = Properties::default();
        props.push(Property::UserProperty("k".into(), "v".into()));
        props.push(Property::MessageExpiryInterval(10));
        let msg = Message::new(
            TopicName::from_static("a/b"),
            Bytes::from_static(b"p"),
            QoS::AtLeastOnce,
            false,
        )
        .with_properties(props, Time::from_millis(1_000));
        assert_eq!(msg.expires_at, Some(Time::from_millis(11_000)));
        let d = Delivery {
            qos_pid: QosPid::AtLeastOnce(Pid::new(3).unwrap()),
            dup: false,
            retain: false,
            sub_ids: &[7, 9],
            alias: Alias::Use(2),
            now: Time::from_millis(4_500),
        };
        let mut out = BytesMut::new();
        msg.encode_for(&mut out, Protocol::V5, &d);
        let p = decode_one(&mut out, Protocol::V5);
        assert!(p.topic.is_empty(), "alias in use: empty topic");
        assert_eq!(
            p.properties.0,
            vec![
                Property::UserProperty("k".into(), "v".into()),
                Property::MessageExpiryInterval(7),
                Property::TopicAlias(2),
                Property::SubscriptionIdentifier(7),
                Property::SubscriptionIdentifier(9),
            ]
        );
        assert!(!msg.expired(Time::from_millis(10_999)));
        assert!(msg.expired(Time::from_millis(11_000)));
    }

    #[test]
    fn v3_qos0_frame_is_shared_and_correct() {
        let msg = Message::new(
            TopicName::from_static("t"),
            Bytes::from_static(b"x"),
            QoS::AtMostOnce,
            false,
        );
        let d = Delivery::plain(QosPid::AtMostOnce, false, false);
        let mut out = BytesMut::new();
        msg.encode_for(&mut out, Protocol::V3_1_1, &d);
        msg.encode_for(&mut out, Protocol::V3_1_1, &d);
        assert_eq!(
            &out[..],
            &[0x30, 4, 0, 1, b't', b'x', 0x30, 4, 0, 1, b't', b'x']
        );
    }
}
