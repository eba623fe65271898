//! The MQTT wire format: bytes <-> [`Packet`] for MQTT 3.1, 3.1.1 and 5.0.
//!
//! Pure code: no I/O, no clock. Decoding is zero-copy: a frame is split off the
//! connection's read buffer as one [`bytes::Bytes`] and every topic, payload and
//! string in the resulting packet is a slice of it. "Need more bytes" is
//! `Ok(None)`, not an error; an oversize frame is rejected from its fixed header
//! alone, before any of its body is buffered.

mod decode;
mod encode;
mod error;
mod packet;
mod properties;
mod reader;

pub use decode::{decode, peek_frame, FrameHeader};
pub use encode::{encode, encode_publish, encode_with_reason, encoded_len, PublishHeader};
pub use error::DecodeError;
pub use packet::*;
pub use properties::{Place, Properties, Property};
pub(crate) use reader::Reader;

/// `bytes` copied into an allocation of its own. What the decoder returns
/// shares the connection's read buffer (512 B to 16 KiB); whatever outlives
/// the read (a subscription, a retained message, a will, a topic alias) is
/// detached, else a few bytes of it would keep the whole buffer alive.
pub fn detached(bytes: &bytes::Bytes) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(bytes)
}

/// Protocol revision, from CONNECT's protocol level byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// MQTT 3.1 ("MQIsdp", level 3).
    V3_1,
    /// MQTT 3.1.1 ("MQTT", level 4).
    V3_1_1,
    /// MQTT 5.0 ("MQTT", level 5).
    V5,
}

impl Protocol {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            Protocol::V3_1 => 3,
            Protocol::V3_1_1 => 4,
            Protocol::V5 => 5,
        }
    }

    /// The version as people write it: "3.1", "3.1.1" or "5.0".
    pub fn name(self) -> &'static str {
        match self {
            Protocol::V3_1 => "3.1",
            Protocol::V3_1_1 => "3.1.1",
            Protocol::V5 => "5.0",
        }
    }

    /// True when packets carry properties and reason codes.
    pub fn is_v5(self) -> bool {
        self == Protocol::V5
    }
}

/// Quality of service of a publish or a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    /// Parses the two QoS bits; 3 is malformed [MQTT-3.3.1-4].
    pub fn from_bits(bits: u8) -> Option<QoS> {
        match bits {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A packet identifier: never zero [MQTT-2.3.1-1], so QoS 1/2 packets can't carry a missing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pid(std::num::NonZeroU16);

impl Pid {
    /// `None` for zero, which the protocol forbids.
    pub fn new(value: u16) -> Option<Pid> {
        std::num::NonZeroU16::new(value).map(Pid)
    }

    pub fn get(self) -> u16 {
        self.0.get()
    }

    /// The next identifier, wrapping from 65535 to 1.
    pub fn next(self) -> Pid {
        Pid::new(self.get().wrapping_add(1)).unwrap_or(Pid::MIN)
    }

    pub const MIN: Pid = Pid(std::num::NonZeroU16::MIN);
}

/// Largest value the variable byte integer (four bytes) can carry.
pub const MAX_REMAINING_LENGTH: u32 = 268_435_455;

#[cfg(test)]
mod tests;
