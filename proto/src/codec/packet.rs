//! Packet types. Strings and payloads are `Bytes` slices of the frame they came from.

use bytes::Bytes;

use super::{Pid, Properties, Protocol, QoS};

/// Every MQTT control packet, both directions, all protocol versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    /// The packet's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    pub protocol: Protocol,
    /// "Clean session" in 3.1.1, "clean start" in 5.0.
    pub clean_start: bool,
    pub keep_alive: u16,
    /// Validated UTF-8; may be empty.
    pub client_id: Bytes,
    pub will: Option<Will>,
    pub username: Option<Bytes>,
    pub password: Option<Bytes>,
    pub properties: Properties,
    /// The protocol level carried [`BRIDGE_FLAG`]: a 3.1/3.1.1 bridge
    /// (Mosquitto's `try_private`), which must not get its own messages back.
    pub bridge: bool,
}

/// The top bit of the protocol level, set by Mosquitto's bridges.
pub const BRIDGE_FLAG: u8 = 0x80;

impl Connect {
    /// The client id as text (the decoder validated it as UTF-8).
    pub fn client_id_str(&self) -> &str {
        std::str::from_utf8(&self.client_id).unwrap_or("")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    pub topic: Bytes,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Properties,
}

impl Will {
    /// The same will with its bytes detached from the CONNECT's read buffer
    /// (see [`super::detached`]): a session keeps it for its whole life.
    pub fn detached(&self) -> Will {
        Will {
            topic: super::detached(&self.topic),
            payload: super::detached(&self.payload),
            qos: self.qos,
            retain: self.retain,
            properties: self.properties.detached(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// 3.1.1 return code or 5.0 reason code (see [`ConnectCode`]).
    pub code: u8,
    pub properties: Properties,
}

/// CONNACK codes, with their value in each protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectCode {
    Accepted,
    UnsupportedProtocolVersion,
    ClientIdRejected,
    ServerUnavailable,
    BadUsernameOrPassword,
    NotAuthorized,
    MalformedPacket,
    ProtocolError,
    PacketTooLarge,
    QuotaExceeded,
    BadAuthenticationMethod,
    ConnectionRateExceeded,
}

impl ConnectCode {
    /// The byte for CONNACK under `protocol` (5.0 reason codes are richer than 3.1.1's).
    pub fn byte(self, protocol: Protocol) -> u8 {
        use ConnectCode::*;
        if protocol.is_v5() {
            match self {
                Accepted => 0x00,
                UnsupportedProtocolVersion => 0x84,
                ClientIdRejected => 0x85,
                ServerUnavailable => 0x88,
                BadUsernameOrPassword => 0x86,
                NotAuthorized => 0x87,
                MalformedPacket => 0x81,
                ProtocolError => 0x82,
                PacketTooLarge => 0x95,
                QuotaExceeded => 0x97,
                BadAuthenticationMethod => 0x8C,
                ConnectionRateExceeded => 0x9F,
            }
        } else {
            match self {
                Accepted => 0,
                UnsupportedProtocolVersion => 1,
                ClientIdRejected => 2,
                ServerUnavailable
                | MalformedPacket
                | ProtocolError
                | PacketTooLarge
                | QuotaExceeded
                | ConnectionRateExceeded => 3,
                BadUsernameOrPassword | BadAuthenticationMethod => 4,
                NotAuthorized => 5,
            }
        }
    }
}

/// QoS and packet id together, so a QoS 1/2 publish always has an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QosPid {
    AtMostOnce,
    AtLeastOnce(Pid),
    ExactlyOnce(Pid),
}

impl QosPid {
    pub fn qos(self) -> QoS {
        match self {
            QosPid::AtMostOnce => QoS::AtMostOnce,
            QosPid::AtLeastOnce(_) => QoS::AtLeastOnce,
            QosPid::ExactlyOnce(_) => QoS::ExactlyOnce,
        }
    }

    pub fn pid(self) -> Option<Pid> {
        match self {
            QosPid::AtMostOnce => None,
            QosPid::AtLeastOnce(p) | QosPid::ExactlyOnce(p) => Some(p),
        }
    }

    /// Builds from a QoS and an id; the id is ignored for QoS 0.
    pub fn new(qos: QoS, pid: Pid) -> QosPid {
        match qos {
            QoS::AtMostOnce => QosPid::AtMostOnce,
            QoS::AtLeastOnce => QosPid::AtLeastOnce(pid),
            QoS::ExactlyOnce => QosPid::ExactlyOnce(pid),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos_pid: QosPid,
    pub retain: bool,
    /// Raw topic bytes (validated UTF-8); may be empty in 5.0 when a topic alias is used.
    pub topic: Bytes,
    pub properties: Properties,
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub pid: Pid,
    /// 5.0 reason code; always 0 (success) on 3.1.1.
    pub reason: u8,
    pub properties: Properties,
}

impl Ack {
    pub fn new(pid: Pid) -> Ack {
        Ack {
            pid,
            reason: 0,
            properties: Properties::default(),
        }
    }
}

/// Subscription options byte (5.0 adds the upper bits; 3.1.1 only uses QoS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SubOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0: send retained on subscribe; 1: only if new; 2: never.
    pub retain_handling: u8,
}

impl SubOptions {
    pub fn byte(self) -> u8 {
        self.qos as u8
            | (self.no_local as u8) << 2
            | (self.retain_as_published as u8) << 3
            | self.retain_handling << 4
    }

    /// The inverse of [`SubOptions::byte`]; `None` for reserved bits or
    /// values (QoS 3, retain handling 3).
    pub fn from_byte(b: u8) -> Option<SubOptions> {
        if b & 0xc0 != 0 || (b >> 4) & 3 == 3 {
            return None;
        }
        Some(SubOptions {
            qos: QoS::from_bits(b & 3)?,
            no_local: b & 4 != 0,
            retain_as_published: b & 8 != 0,
            retain_handling: (b >> 4) & 3,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    pub pid: Pid,
    pub filters: Vec<(Bytes, SubOptions)>,
    pub properties: Properties,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    pub pid: Pid,
    /// One per filter: granted QoS, or 0x80 (and 5.0's other failure codes).
    pub codes: Vec<u8>,
    pub properties: Properties,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    pub pid: Pid,
    pub filters: Vec<Bytes>,
    pub properties: Properties,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsubAck {
    pub pid: Pid,
    /// 5.0 only: one reason code per filter. Empty on 3.1.1.
    pub codes: Vec<u8>,
    pub properties: Properties,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// 5.0 reason code; 0 is a normal disconnect.
    pub reason: u8,
    pub properties: Properties,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Auth {
    pub reason: u8,
    pub properties: Properties,
}

/// 5.0 reason codes the broker sends (subset used in DISCONNECT/acks).
pub mod reason {
    pub const SUCCESS: u8 = 0x00;
    pub const NORMAL_DISCONNECT: u8 = 0x00;
    pub const DISCONNECT_WITH_WILL: u8 = 0x04;
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    pub const UNSPECIFIED_ERROR: u8 = 0x80;
    pub const MALFORMED_PACKET: u8 = 0x81;
    pub const PROTOCOL_ERROR: u8 = 0x82;
    pub const IMPLEMENTATION_SPECIFIC_ERROR: u8 = 0x83;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const SERVER_BUSY: u8 = 0x89;
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    pub const PACKET_ID_IN_USE: u8 = 0x91;
    pub const PACKET_ID_NOT_FOUND: u8 = 0x92;
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
    pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
    pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
    pub const MAXIMUM_CONNECT_TIME: u8 = 0xA0;
    pub const SUBSCRIPTION_IDS_NOT_SUPPORTED: u8 = 0xA1;
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0xA2;
}
