//! bytes -> [`Packet`].

use bytes::{Bytes, BytesMut};

use super::packet::*;
use super::reader::Reader;
use super::{DecodeError, Properties, Protocol, QoS, MAX_REMAINING_LENGTH};

type Result<T> = std::result::Result<T, DecodeError>;

/// The fixed header of a frame whose length is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub first_byte: u8,
    /// Bytes of the fixed header (2 to 5).
    pub header_len: usize,
    pub remaining_len: u32,
}

impl FrameHeader {
    pub fn frame_len(&self) -> usize {
        self.header_len + self.remaining_len as usize
    }
}

/// Reads the fixed header only. `Ok(None)` means more bytes are needed; a frame
/// whose declared size exceeds `max_packet_size` is refused here, before its body
/// is buffered, so a hostile length can never make us allocate.
pub fn peek_frame(buf: &[u8], max_packet_size: u32) -> Result<Option<FrameHeader>> {
    let Some(&first_byte) = buf.first() else {
        return Ok(None);
    };
    let mut remaining_len = 0u32;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining_len |= u32::from(byte & 0x7f) << (7 * i);
        if i > 0 && byte == 0 {
            // A trailing zero byte: not the minimal encoding [MQTT-1.5.5-1].
            return Err(DecodeError::MalformedRemainingLength);
        }
        if byte & 0x80 == 0 {
            let header = FrameHeader {
                first_byte,
                header_len: 2 + i,
                remaining_len,
            };
            let size = header.frame_len() as u64;
            if size > u64::from(max_packet_size) {
                return Err(DecodeError::PacketTooLarge {
                    size,
                    max: max_packet_size,
                });
            }
            return Ok(Some(header));
        }
    }
    debug_assert!(remaining_len <= MAX_REMAINING_LENGTH);
    Err(DecodeError::MalformedRemainingLength)
}

/// Decodes one packet from the front of `buf`, splitting its bytes off without
/// copying. `Ok(None)`: the frame is incomplete and `buf` is untouched.
pub fn decode(
    buf: &mut BytesMut,
    protocol: Protocol,
    max_packet_size: u32,
) -> Result<Option<Packet>> {
    let Some(header) = peek_frame(buf, max_packet_size)? else {
        return Ok(None);
    };
    if buf.len() < header.frame_len() {
        return Ok(None);
    }
    let mut frame = buf.split_to(header.frame_len()).freeze();
    let body = frame.split_off(header.header_len);
    decode_body(header.first_byte, body, protocol).map(Some)
}

fn decode_body(first_byte: u8, body: Bytes, protocol: Protocol) -> Result<Packet> {
    let flags = first_byte & 0x0f;
    let kind = first_byte >> 4;
    let name = packet_name(kind);
    let fixed_flags = match kind {
        3 => flags, // PUBLISH flags carry dup/qos/retain
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    if flags != fixed_flags {
        return Err(DecodeError::InvalidFlags {
            packet: name,
            flags,
        });
    }
    let v5 = protocol.is_v5();
    let mut r = Reader::new(body, name);
    let packet = match kind {
        1 => Packet::Connect(Box::new(decode_connect(&mut r)?)),
        2 => Packet::ConnAck(decode_connack(&mut r, v5)?),
        3 => Packet::Publish(decode_publish(flags, &mut r, v5)?),
        4 => Packet::PubAck(decode_ack(&mut r, v5)?),
        5 => Packet::PubRec(decode_ack(&mut r, v5)?),
        6 => Packet::PubRel(decode_ack(&mut r, v5)?),
        7 => Packet::PubComp(decode_ack(&mut r, v5)?),
        8 => Packet::Subscribe(decode_subscribe(&mut r, v5)?),
        9 => Packet::SubAck(decode_suback(&mut r, v5)?),
        10 => Packet::Unsubscribe(decode_unsubscribe(&mut r, v5)?),
        11 => Packet::UnsubAck(decode_unsuback(&mut r, v5)?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => {
            let (reason, properties) = decode_reason_tail(&mut r, v5)?;
            Packet::Disconnect(Disconnect { reason, properties })
        }
        15 if v5 => {
            let (reason, properties) = decode_reason_tail(&mut r, v5)?;
            Packet::Auth(Auth { reason, properties })
        }
        other => return Err(DecodeError::ReservedPacketType(other)),
    };
    r.expect_end()?;
    if v5 || matches!(packet, Packet::Connect(_)) {
        check_places(&packet)?;
    }
    Ok(packet)
}

/// Each property list may only hold the properties its packet allows.
fn check_places(packet: &Packet) -> Result<()> {
    use super::properties::Place;
    match packet {
        Packet::Connect(c) => {
            c.properties.check_place(Place::Connect)?;
            match &c.will {
                Some(w) => w.properties.check_place(Place::Will),
                None => Ok(()),
            }
        }
        Packet::ConnAck(c) => c.properties.check_place(Place::ConnAck),
        Packet::Publish(p) => p.properties.check_place(Place::Publish),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            a.properties.check_place(Place::Ack)
        }
        Packet::Subscribe(s) => s.properties.check_place(Place::Subscribe),
        Packet::SubAck(s) => s.properties.check_place(Place::SubAck),
        Packet::Unsubscribe(u) => u.properties.check_place(Place::Unsubscribe),
        Packet::UnsubAck(u) => u.properties.check_place(Place::UnsubAck),
        Packet::Disconnect(d) => d.properties.check_place(Place::Disconnect),
        Packet::Auth(a) => a.properties.check_place(Place::Auth),
        Packet::PingReq | Packet::PingResp => Ok(()),
    }
}

fn packet_name(kind: u8) -> &'static str {
    const NAMES: [&str; 16] = [
        "RESERVED",
        "CONNECT",
        "CONNACK",
        "PUBLISH",
        "PUBACK",
        "PUBREC",
        "PUBREL",
        "PUBCOMP",
        "SUBSCRIBE",
        "SUBACK",
        "UNSUBSCRIBE",
        "UNSUBACK",
        "PINGREQ",
        "PINGRESP",
        "DISCONNECT",
        "AUTH",
    ];
    NAMES[usize::from(kind & 0x0f)]
}

fn properties_if(r: &mut Reader, v5: bool) -> Result<Properties> {
    if v5 {
        Properties::decode(r)
    } else {
        Ok(Properties::default())
    }
}

/// The protocol, and whether a 3.1/3.1.1 bridge flagged itself.
fn decode_protocol(r: &mut Reader) -> Result<(Protocol, bool)> {
    let name = r.binary()?;
    let level = r.u8()?;
    let bridge = level & BRIDGE_FLAG != 0 && level != BRIDGE_FLAG | 5;
    let level = if bridge { level & !BRIDGE_FLAG } else { level };
    let protocol = match (&name[..], level) {
        (b"MQTT", 4) => Ok(Protocol::V3_1_1),
        (b"MQTT", 5) => Ok(Protocol::V5),
        (b"MQIsdp", 3) => Ok(Protocol::V3_1),
        (b"MQTT", l) | (b"MQIsdp", l) => Err(DecodeError::UnsupportedProtocolLevel(l)),
        _ => Err(DecodeError::InvalidProtocolName),
    }?;
    Ok((protocol, bridge))
}

fn decode_connect(r: &mut Reader) -> Result<Connect> {
    let (protocol, bridge) = decode_protocol(r)?;
    let v5 = protocol.is_v5();
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::ConnectReservedFlag);
    }
    let will_flag = flags & 0x04 != 0;
    let will_qos = QoS::from_bits((flags >> 3) & 0x03).ok_or(DecodeError::InvalidQoS)?;
    let will_retain = flags & 0x20 != 0;
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        return Err(DecodeError::InvalidWillFlags);
    }
    let (has_password, has_username) = (flags & 0x40 != 0, flags & 0x80 != 0);
    if has_password && !has_username && !v5 {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16()?;
    let properties = properties_if(r, v5)?;
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = properties_if(r, v5)?;
        Some(Will {
            topic: r.string()?,
            payload: r.binary()?,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = has_username.then(|| r.string()).transpose()?;
    let password = has_password.then(|| r.binary()).transpose()?;
    Ok(Connect {
        protocol,
        clean_start: flags & 0x02 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
        bridge,
    })
}

fn decode_connack(r: &mut Reader, v5: bool) -> Result<ConnAck> {
    let ack_flags = r.u8()?;
    if ack_flags & 0xfe != 0 {
        return Err(DecodeError::InvalidFlags {
            packet: "CONNACK",
            flags: ack_flags,
        });
    }
    let code = r.u8()?;
    Ok(ConnAck {
        session_present: ack_flags & 1 == 1,
        code,
        properties: properties_if(r, v5)?,
    })
}

fn decode_publish(flags: u8, r: &mut Reader, v5: bool) -> Result<Publish> {
    let qos = QoS::from_bits((flags >> 1) & 0x03).ok_or(DecodeError::InvalidQoS)?;
    let dup = flags & 0x08 != 0;
    if dup && qos == QoS::AtMostOnce {
        // [MQTT-3.3.1-2]
        return Err(DecodeError::InvalidFlags {
            packet: "PUBLISH",
            flags,
        });
    }
    let topic = r.string()?;
    let qos_pid = match qos {
        QoS::AtMostOnce => QosPid::AtMostOnce,
        QoS::AtLeastOnce => QosPid::AtLeastOnce(r.pid()?),
        QoS::ExactlyOnce => QosPid::ExactlyOnce(r.pid()?),
    };
    let properties = properties_if(r, v5)?;
    Ok(Publish {
        dup,
        qos_pid,
        retain: flags & 0x01 != 0,
        topic,
        properties,
        payload: r.rest(),
    })
}

fn decode_ack(r: &mut Reader, v5: bool) -> Result<Ack> {
    let pid = r.pid()?;
    let (reason, properties) = decode_reason_tail(r, v5)?;
    Ok(Ack {
        pid,
        reason,
        properties,
    })
}

/// 5.0's optional "reason code, then optional properties" tail.
fn decode_reason_tail(r: &mut Reader, v5: bool) -> Result<(u8, Properties)> {
    if !v5 || r.remaining() == 0 {
        return Ok((0, Properties::default()));
    }
    let reason = r.u8()?;
    let properties = if r.remaining() > 0 {
        Properties::decode(r)?
    } else {
        Properties::default()
    };
    Ok((reason, properties))
}

fn decode_subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe> {
    let pid = r.pid()?;
    let properties = properties_if(r, v5)?;
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        let filter = r.string()?;
        filters.push((filter, decode_sub_options(r.u8()?, v5)?));
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters("SUBSCRIBE"));
    }
    Ok(Subscribe {
        pid,
        filters,
        properties,
    })
}

fn decode_sub_options(byte: u8, v5: bool) -> Result<SubOptions> {
    let reserved = if v5 { 0xc0 } else { 0xfc };
    let retain_handling = (byte >> 4) & 0x03;
    if byte & reserved != 0 || retain_handling == 3 {
        return Err(DecodeError::InvalidSubscriptionOptions);
    }
    Ok(SubOptions {
        qos: QoS::from_bits(byte & 0x03).ok_or(DecodeError::InvalidQoS)?,
        no_local: byte & 0x04 != 0,
        retain_as_published: byte & 0x08 != 0,
        retain_handling,
    })
}

fn decode_suback(r: &mut Reader, v5: bool) -> Result<SubAck> {
    let pid = r.pid()?;
    let properties = properties_if(r, v5)?;
    let codes = r.rest().to_vec();
    Ok(SubAck {
        pid,
        codes,
        properties,
    })
}

fn decode_unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe> {
    let pid = r.pid()?;
    let properties = properties_if(r, v5)?;
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        filters.push(r.string()?);
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters("UNSUBSCRIBE"));
    }
    Ok(Unsubscribe {
        pid,
        filters,
        properties,
    })
}

fn decode_unsuback(r: &mut Reader, v5: bool) -> Result<UnsubAck> {
    let pid = r.pid()?;
    let properties = properties_if(r, v5)?;
    let codes = if v5 { r.rest().to_vec() } else { Vec::new() };
    Ok(UnsubAck {
        pid,
        codes,
        properties,
    })
}
