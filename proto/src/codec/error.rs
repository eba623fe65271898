use super::packet::reason;

/// Why a frame could not be decoded. Each names the rule broken; [`DecodeError::reason_code`]
/// gives the 5.0 reason code the broker answers with before closing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("remaining length has a fifth byte or is not minimal [MQTT-1.5.5]")]
    MalformedRemainingLength,
    #[error("packet of {size} bytes exceeds the maximum packet size {max}")]
    PacketTooLarge { size: u64, max: u32 },
    #[error("reserved packet type {0} [MQTT-2.1.2]")]
    ReservedPacketType(u8),
    #[error("fixed header flags {flags:#06b} invalid for {packet} [MQTT-2.2.2-2]")]
    InvalidFlags { packet: &'static str, flags: u8 },
    #[error("protocol name is not MQTT/MQIsdp [MQTT-3.1.2-1]")]
    InvalidProtocolName,
    #[error("unsupported protocol level {0} [MQTT-3.1.2-2]")]
    UnsupportedProtocolLevel(u8),
    #[error("CONNECT reserved flag set [MQTT-3.1.2-3]")]
    ConnectReservedFlag,
    #[error("will flags inconsistent [MQTT-3.1.2-11..15]")]
    InvalidWillFlags,
    #[error("password flag without username flag [MQTT-3.1.2-22]")]
    PasswordWithoutUsername,
    #[error("QoS 3 is reserved [MQTT-3.3.1-4]")]
    InvalidQoS,
    #[error("packet identifier is zero [MQTT-2.3.1-1]")]
    ZeroPacketId,
    #[error("string is not well-formed UTF-8 or contains U+0000 [MQTT-1.5.3-1/2]")]
    InvalidUtf8,
    #[error("{0}: packet ends early or has trailing bytes [MQTT-1.5]")]
    Truncated(&'static str),
    #[error("{0} carries no topic filter [MQTT-3.8.3-3/3.10.3-2]")]
    NoTopicFilters(&'static str),
    #[error("subscription options have reserved bits set [MQTT-3.8.3-4/5]")]
    InvalidSubscriptionOptions,
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u8),
    #[error("property {0:#04x} appears more than once [MQTT-2.2.2-1]")]
    DuplicateProperty(u8),
    #[error("property {0:#04x} has an invalid value")]
    InvalidPropertyValue(u8),
    #[error("property {0:#04x} is not allowed in this packet [MQTT-2.2.2-2]")]
    PropertyNotAllowed(u8),
    #[error("properties exceed the configured limit")]
    TooManyProperties,
    #[error("the first packet must be CONNECT [MQTT-3.1.0-1]")]
    NotConnect,
}

impl DecodeError {
    /// The 5.0 reason code for CONNACK/DISCONNECT.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::PacketTooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocolLevel(_) => 0x84,
            DecodeError::TooManyProperties => reason::QUOTA_EXCEEDED,
            DecodeError::NotConnect | DecodeError::DuplicateProperty(_) => reason::PROTOCOL_ERROR,
            _ => reason::MALFORMED_PACKET,
        }
    }
}
