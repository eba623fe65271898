//! The unit the router moves between sessions and cores.

use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};

use crate::codec::{encode_publish, Properties, Protocol, PublishHeader, QoS, QosPid};
use crate::topic::TopicName;

/// An application message as published, shared (`Arc`) by every session and core
/// that delivers it: the topic and payload are never copied per subscriber.
#[derive(Debug)]
pub struct Message {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// 5.0 properties forwarded to subscribers.
    pub properties: Properties,
    /// The 3.1.1 QoS 0 frame, encoded on first use and then copied as is into
    /// every subscriber's buffer that receives exactly those bytes (fan-out).
    frame_v3_qos0: OnceLock<Bytes>,
}

impl Message {
    pub fn new(topic: TopicName, payload: Bytes, qos: QoS, retain: bool) -> Message {
        Message {
            topic,
            payload,
            qos,
            retain,
            properties: Properties::default(),
            frame_v3_qos0: OnceLock::new(),
        }
    }

    pub fn with_properties(mut self, properties: Properties) -> Message {
        self.properties = properties;
        self
    }

    pub fn shared(self) -> Arc<Message> {
        Arc::new(self)
    }

    /// Approximate memory held by the message, for queue and retained byte caps.
    pub fn weight(&self) -> usize {
        self.topic.as_bytes().len() + self.payload.len() + 64
    }

    /// Appends this message as a PUBLISH for one subscriber.
    pub fn encode_for(&self, out: &mut BytesMut, protocol: Protocol, delivery: Delivery) {
        let shareable = delivery.qos_pid == QosPid::AtMostOnce && !delivery.retain;
        if shareable && !protocol.is_v5() {
            let frame = self.frame_v3_qos0.get_or_init(|| {
                let mut buf = BytesMut::new();
                self.encode_raw(&mut buf, protocol, delivery);
                buf.freeze()
            });
            out.extend_from_slice(frame);
        } else {
            self.encode_raw(out, protocol, delivery);
        }
    }

    /// Size of the frame [`Message::encode_for`] would write.
    pub fn frame_len(&self, protocol: Protocol, delivery: Delivery) -> usize {
        self.header(protocol, delivery)
            .frame_len(protocol, self.payload.len())
    }

    fn header(&self, protocol: Protocol, delivery: Delivery) -> PublishHeader<'_> {
        static NONE: Properties = Properties(Vec::new());
        PublishHeader {
            dup: delivery.dup,
            qos_pid: delivery.qos_pid,
            retain: delivery.retain,
            topic: self.topic.as_bytes(),
            properties: if protocol.is_v5() {
                &self.properties
            } else {
                &NONE
            },
        }
    }

    fn encode_raw(&self, out: &mut BytesMut, protocol: Protocol, delivery: Delivery) {
        encode_publish(
            out,
            protocol,
            &self.header(protocol, delivery),
            &self.payload,
        );
    }
}

/// What differs between two deliveries of the same message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub qos_pid: QosPid,
    pub dup: bool,
    pub retain: bool,
}
