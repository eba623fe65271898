//! MQTT 5.0 properties (section 2.2.2). Stored in wire order so user properties
//! pass through unchanged and in order; lookups are linear, fine for the handful a
//! packet carries (the decoder caps the count).

use bytes::{BufMut, Bytes, BytesMut};

use super::encode::{put_binary, put_varint, varint_len};
use super::reader::Reader;
use super::DecodeError;

/// Most properties a packet may carry before it is refused (user-property floods).
pub const MAX_PROPERTIES: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Property {
    PayloadFormatIndicator(u8),
    MessageExpiryInterval(u32),
    ContentType(Bytes),
    ResponseTopic(Bytes),
    CorrelationData(Bytes),
    SubscriptionIdentifier(u32),
    SessionExpiryInterval(u32),
    AssignedClientIdentifier(Bytes),
    ServerKeepAlive(u16),
    AuthenticationMethod(Bytes),
    AuthenticationData(Bytes),
    RequestProblemInformation(u8),
    WillDelayInterval(u32),
    RequestResponseInformation(u8),
    ResponseInformation(Bytes),
    ServerReference(Bytes),
    ReasonString(Bytes),
    ReceiveMaximum(u16),
    TopicAliasMaximum(u16),
    TopicAlias(u16),
    MaximumQoS(u8),
    RetainAvailable(u8),
    UserProperty(Bytes, Bytes),
    MaximumPacketSize(u32),
    WildcardSubscriptionAvailable(u8),
    SubscriptionIdentifierAvailable(u8),
    SharedSubscriptionAvailable(u8),
}

impl Property {
    /// A copy whose bytes are detached from the read buffer.
    pub fn detached(&self) -> Property {
        use super::detached as own;
        use Property::*;
        match self {
            ContentType(b) => ContentType(own(b)),
            ResponseTopic(b) => ResponseTopic(own(b)),
            CorrelationData(b) => CorrelationData(own(b)),
            AssignedClientIdentifier(b) => AssignedClientIdentifier(own(b)),
            AuthenticationMethod(b) => AuthenticationMethod(own(b)),
            AuthenticationData(b) => AuthenticationData(own(b)),
            ResponseInformation(b) => ResponseInformation(own(b)),
            ServerReference(b) => ServerReference(own(b)),
            ReasonString(b) => ReasonString(own(b)),
            UserProperty(k, v) => UserProperty(own(k), own(v)),
            other => other.clone(),
        }
    }

    /// The property identifier byte.
    pub fn id(&self) -> u8 {
        use Property::*;
        match self {
            PayloadFormatIndicator(_) => 0x01,
            MessageExpiryInterval(_) => 0x02,
            ContentType(_) => 0x03,
            ResponseTopic(_) => 0x08,
            CorrelationData(_) => 0x09,
            SubscriptionIdentifier(_) => 0x0B,
            SessionExpiryInterval(_) => 0x11,
            AssignedClientIdentifier(_) => 0x12,
            ServerKeepAlive(_) => 0x13,
            AuthenticationMethod(_) => 0x15,
            AuthenticationData(_) => 0x16,
            RequestProblemInformation(_) => 0x17,
            WillDelayInterval(_) => 0x18,
            RequestResponseInformation(_) => 0x19,
            ResponseInformation(_) => 0x1A,
            ServerReference(_) => 0x1C,
            ReasonString(_) => 0x1F,
            ReceiveMaximum(_) => 0x21,
            TopicAliasMaximum(_) => 0x22,
            TopicAlias(_) => 0x23,
            MaximumQoS(_) => 0x24,
            RetainAvailable(_) => 0x25,
            UserProperty(..) => 0x26,
            MaximumPacketSize(_) => 0x27,
            WildcardSubscriptionAvailable(_) => 0x28,
            SubscriptionIdentifierAvailable(_) => 0x29,
            SharedSubscriptionAvailable(_) => 0x2A,
        }
    }

    fn decode(id: u8, r: &mut Reader) -> Result<Property, DecodeError> {
        use Property::*;
        let p = match id {
            0x01 => PayloadFormatIndicator(bool_byte(id, r)?),
            0x02 => MessageExpiryInterval(r.u32()?),
            0x03 => ContentType(r.string()?),
            0x08 => ResponseTopic(r.string()?),
            0x09 => CorrelationData(r.binary()?),
            0x0B => match r.varint()? {
                0 => return Err(DecodeError::InvalidPropertyValue(id)),
                v => SubscriptionIdentifier(v),
            },
            0x11 => SessionExpiryInterval(r.u32()?),
            0x12 => AssignedClientIdentifier(r.string()?),
            0x13 => ServerKeepAlive(r.u16()?),
            0x15 => AuthenticationMethod(r.string()?),
            0x16 => AuthenticationData(r.binary()?),
            0x17 => RequestProblemInformation(bool_byte(id, r)?),
            0x18 => WillDelayInterval(r.u32()?),
            0x19 => RequestResponseInformation(bool_byte(id, r)?),
            0x1A => ResponseInformation(r.string()?),
            0x1C => ServerReference(r.string()?),
            0x1F => ReasonString(r.string()?),
            0x21 => ReceiveMaximum(nonzero_u16(id, r)?),
            0x22 => TopicAliasMaximum(r.u16()?),
            // 0 is invalid, but as a topic alias error (0x94), which the session
            // answers, not as a malformed packet.
            0x23 => TopicAlias(r.u16()?),
            0x24 => MaximumQoS(bool_byte(id, r)?),
            0x25 => RetainAvailable(bool_byte(id, r)?),
            0x26 => UserProperty(r.string()?, r.string()?),
            0x27 => match r.u32()? {
                0 => return Err(DecodeError::InvalidPropertyValue(id)),
                v => MaximumPacketSize(v),
            },
            0x28 => WildcardSubscriptionAvailable(bool_byte(id, r)?),
            0x29 => SubscriptionIdentifierAvailable(bool_byte(id, r)?),
            0x2A => SharedSubscriptionAvailable(bool_byte(id, r)?),
            other => return Err(DecodeError::UnknownProperty(other)),
        };
        Ok(p)
    }

    fn encoded_len(&self) -> usize {
        use Property::*;
        1 + match self {
            PayloadFormatIndicator(_)
            | RequestProblemInformation(_)
            | RequestResponseInformation(_)
            | MaximumQoS(_)
            | RetainAvailable(_)
            | WildcardSubscriptionAvailable(_)
            | SubscriptionIdentifierAvailable(_)
            | SharedSubscriptionAvailable(_) => 1,
            ServerKeepAlive(_) | ReceiveMaximum(_) | TopicAliasMaximum(_) | TopicAlias(_) => 2,
            MessageExpiryInterval(_)
            | SessionExpiryInterval(_)
            | WillDelayInterval(_)
            | MaximumPacketSize(_) => 4,
            SubscriptionIdentifier(v) => varint_len(*v),
            ContentType(b)
            | ResponseTopic(b)
            | CorrelationData(b)
            | AssignedClientIdentifier(b)
            | AuthenticationMethod(b)
            | AuthenticationData(b)
            | ResponseInformation(b)
            | ServerReference(b)
            | ReasonString(b) => 2 + b.len(),
            UserProperty(k, v) => 4 + k.len() + v.len(),
        }
    }

    fn encode(&self, out: &mut BytesMut) {
        use Property::*;
        out.put_u8(self.id());
        match self {
            PayloadFormatIndicator(v)
            | RequestProblemInformation(v)
            | RequestResponseInformation(v)
            | MaximumQoS(v)
            | RetainAvailable(v)
            | WildcardSubscriptionAvailable(v)
            | SubscriptionIdentifierAvailable(v)
            | SharedSubscriptionAvailable(v) => out.put_u8(*v),
            ServerKeepAlive(v) | ReceiveMaximum(v) | TopicAliasMaximum(v) | TopicAlias(v) => {
                out.put_u16(*v)
            }
            MessageExpiryInterval(v)
            | SessionExpiryInterval(v)
            | WillDelayInterval(v)
            | MaximumPacketSize(v) => out.put_u32(*v),
            SubscriptionIdentifier(v) => put_varint(out, *v),
            ContentType(b)
            | ResponseTopic(b)
            | CorrelationData(b)
            | AssignedClientIdentifier(b)
            | AuthenticationMethod(b)
            | AuthenticationData(b)
            | ResponseInformation(b)
            | ServerReference(b)
            | ReasonString(b) => put_binary(out, b),
            UserProperty(k, v) => {
                put_binary(out, k);
                put_binary(out, v);
            }
        }
    }
}

/// A byte property whose only valid values are 0 and 1.
fn bool_byte(id: u8, r: &mut Reader) -> Result<u8, DecodeError> {
    match r.u8()? {
        v @ (0 | 1) => Ok(v),
        // Maximum QoS may also be 0 or 1 only; both share this rule.
        _ => Err(DecodeError::InvalidPropertyValue(id)),
    }
}

fn nonzero_u16(id: u8, r: &mut Reader) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::InvalidPropertyValue(id)),
        v => Ok(v),
    }
}

/// Where a property list sits, for the table of which properties each packet
/// may carry (MQTT 5.0 section 2.2.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Connect = 0,
    Will,
    ConnAck,
    Publish,
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

/// Bit set of [`Place`]s where property `id` may appear.
fn allowed_places(id: u8) -> u16 {
    use Place::*;
    let bits = |places: &[Place]| places.iter().fold(0u16, |m, p| m | 1 << *p as u16);
    match id {
        0x01..=0x03 | 0x08 | 0x09 => bits(&[Publish, Will]),
        0x0B => bits(&[Publish, Subscribe]),
        0x11 => bits(&[Connect, ConnAck, Disconnect]),
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28..=0x2A => bits(&[ConnAck]),
        0x15 | 0x16 => bits(&[Connect, ConnAck, Auth]),
        0x17 | 0x19 => bits(&[Connect]),
        0x18 => bits(&[Will]),
        0x1C => bits(&[ConnAck, Disconnect]),
        0x1F => bits(&[ConnAck, Ack, SubAck, UnsubAck, Disconnect, Auth]),
        0x21 | 0x22 | 0x27 => bits(&[Connect, ConnAck]),
        0x23 => bits(&[Publish]),
        0x26 => u16::MAX,
        _ => 0,
    }
}

/// The properties of one packet, in wire order.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Properties(pub Vec<Property>);

impl Properties {
    /// The same properties with their strings and binary data detached from
    /// the read buffer (see [`super::detached`]).
    pub fn detached(&self) -> Properties {
        Properties(self.0.iter().map(Property::detached).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Property> {
        self.0.iter()
    }

    pub fn push(&mut self, p: Property) {
        self.0.push(p);
    }

    /// First property matching `f` (properties other than user properties and
    /// subscription identifiers appear at most once).
    pub fn find<T>(&self, f: impl FnMut(&Property) -> Option<T>) -> Option<T> {
        self.0.iter().find_map(f)
    }

    /// Rejects a property that `place` may not carry [MQTT-2.2.2-2].
    pub fn check_place(&self, place: Place) -> Result<(), DecodeError> {
        match self
            .0
            .iter()
            .find(|p| allowed_places(p.id()) & (1 << place as u16) == 0)
        {
            Some(p) => Err(DecodeError::PropertyNotAllowed(p.id())),
            None => Ok(()),
        }
    }

    /// Bytes of the property list, without its length prefix.
    pub fn encoded_len(&self) -> usize {
        self.0.iter().map(Property::encoded_len).sum()
    }

    /// Writes the length prefix and the properties.
    pub fn encode(&self, out: &mut BytesMut) {
        put_varint(out, self.encoded_len() as u32);
        for p in &self.0 {
            p.encode(out);
        }
    }

    /// Reads a length-prefixed property list, rejecting duplicates of
    /// single-valued properties [MQTT-2.2.2-1] and floods past [`MAX_PROPERTIES`].
    pub(crate) fn decode(r: &mut Reader) -> Result<Properties, DecodeError> {
        let len = r.varint()? as usize;
        let mut body = Reader::new(r.take(len)?, "properties");
        let mut props = Vec::new();
        let mut seen = 0u64;
        while body.remaining() > 0 {
            if props.len() == MAX_PROPERTIES {
                return Err(DecodeError::TooManyProperties);
            }
            let id = body.varint()?;
            let id = u8::try_from(id).map_err(|_| DecodeError::UnknownProperty(0xff))?;
            let p = Property::decode(id, &mut body)?;
            let repeatable = matches!(p, Property::UserProperty(..))
                || matches!(p, Property::SubscriptionIdentifier(_));
            let bit = 1u64 << (id & 63);
            if !repeatable && seen & bit != 0 {
                return Err(DecodeError::DuplicateProperty(id));
            }
            seen |= bit;
            props.push(p);
        }
        Ok(Properties(props))
    }
}
