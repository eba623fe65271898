//! [`Packet`] -> bytes. Lengths are computed first so each frame is written once,
//! front to back, into the caller's buffer: no temporary allocation.

use bytes::{BufMut, BytesMut};

use super::packet::*;
use super::{Properties, Property, Protocol, QosPid};

pub(crate) fn varint_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_varint(out: &mut BytesMut, mut value: u32) {
    loop {
        let mut byte = (value & 0x7f) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if value == 0 {
            return;
        }
    }
}

/// Writes a length-prefixed string or binary field. Callers keep fields under
/// 64 KiB (the decoder and the topic types enforce it).
pub(crate) fn put_binary(out: &mut BytesMut, data: &[u8]) {
    out.put_u16(data.len() as u16);
    out.put_slice(data);
}

fn props_len(props: &Properties, v5: bool) -> usize {
    if v5 {
        let len = props.encoded_len();
        varint_len(len as u32) + len
    } else {
        0
    }
}

fn put_props(out: &mut BytesMut, props: &Properties, v5: bool) {
    if v5 {
        props.encode(out);
    }
}

fn put_header(out: &mut BytesMut, first_byte: u8, remaining: usize) {
    out.reserve(5 + remaining);
    out.put_u8(first_byte);
    put_varint(out, remaining as u32);
}

/// What varies per delivery of a PUBLISH; the payload is passed beside it.
pub struct PublishHeader<'a> {
    pub dup: bool,
    pub qos_pid: QosPid,
    pub retain: bool,
    pub topic: &'a [u8],
    pub properties: &'a Properties,
}

impl PublishHeader<'_> {
    fn remaining_len(&self, v5: bool, payload_len: usize) -> usize {
        let pid_len = if self.qos_pid.pid().is_some() { 2 } else { 0 };
        2 + self.topic.len() + pid_len + props_len(self.properties, v5) + payload_len
    }
}

/// The hot path: one PUBLISH straight into a connection's output buffer.
pub fn encode_publish(out: &mut BytesMut, protocol: Protocol, h: &PublishHeader, payload: &[u8]) {
    let v5 = protocol.is_v5();
    let first = 0x30 | (h.dup as u8) << 3 | (h.qos_pid.qos() as u8) << 1 | h.retain as u8;
    put_header(out, first, h.remaining_len(v5, payload.len()));
    put_binary(out, h.topic);
    if let Some(pid) = h.qos_pid.pid() {
        out.put_u16(pid.get());
    }
    put_props(out, h.properties, v5);
    out.put_slice(payload);
}

/// Size of `packet` once encoded under `protocol`.
pub fn encoded_len(packet: &Packet, protocol: Protocol) -> usize {
    let remaining = remaining_len(packet, protocol.is_v5());
    1 + varint_len(remaining as u32) + remaining
}

fn remaining_len(packet: &Packet, v5: bool) -> usize {
    match packet {
        Packet::Connect(c) => connect_len(c),
        Packet::ConnAck(c) => 2 + props_len(&c.properties, v5),
        Packet::Publish(p) => publish_header(p).remaining_len(v5, p.payload.len()),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            2 + reason_tail_len(a.reason, &a.properties, v5)
        }
        Packet::Subscribe(s) => {
            let filters: usize = s.filters.iter().map(|(f, _)| 3 + f.len()).sum();
            2 + props_len(&s.properties, v5) + filters
        }
        Packet::SubAck(s) => 2 + props_len(&s.properties, v5) + s.codes.len(),
        Packet::Unsubscribe(u) => {
            let filters: usize = u.filters.iter().map(|f| 2 + f.len()).sum();
            2 + props_len(&u.properties, v5) + filters
        }
        Packet::UnsubAck(u) if v5 => 2 + props_len(&u.properties, v5) + u.codes.len(),
        Packet::UnsubAck(_) => 2,
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(Disconnect { reason, properties })
        | Packet::Auth(Auth { reason, properties }) => reason_only_len(*reason, properties, v5),
    }
}

/// Acks may drop reason code 0 and empty properties in 5.0 [MQTT-3.4.2.1].
fn reason_tail_len(reason: u8, props: &Properties, v5: bool) -> usize {
    match (v5, reason, props.is_empty()) {
        (false, _, _) | (true, 0, true) => 0,
        (true, _, true) => 1,
        (true, _, false) => 1 + props_len(props, v5),
    }
}

/// DISCONNECT and AUTH may be empty altogether when the reason is 0.
fn reason_only_len(reason: u8, props: &Properties, v5: bool) -> usize {
    reason_tail_len(reason, props, v5)
}

fn publish_header(p: &Publish) -> PublishHeader<'_> {
    PublishHeader {
        dup: p.dup,
        qos_pid: p.qos_pid,
        retain: p.retain,
        topic: &p.topic,
        properties: &p.properties,
    }
}

fn connect_len(c: &Connect) -> usize {
    let v5 = c.protocol.is_v5();
    let name_len = if c.protocol == Protocol::V3_1 { 6 } else { 4 };
    let mut len = 2 + name_len + 1 + 1 + 2 + props_len(&c.properties, v5);
    len += 2 + c.client_id.len();
    if let Some(w) = &c.will {
        len += props_len(&w.properties, v5) + 4 + w.topic.len() + w.payload.len();
    }
    len += c.username.as_ref().map_or(0, |u| 2 + u.len());
    len += c.password.as_ref().map_or(0, |p| 2 + p.len());
    len
}

/// Appends `packet`, encoded for `protocol`, to `out`.
pub fn encode(packet: &Packet, protocol: Protocol, out: &mut BytesMut) {
    let v5 = protocol.is_v5();
    let remaining = remaining_len(packet, v5);
    match packet {
        Packet::Connect(c) => encode_connect(out, c, remaining),
        Packet::ConnAck(c) => {
            put_header(out, 0x20, remaining);
            out.put_u8(c.session_present as u8);
            out.put_u8(c.code);
            put_props(out, &c.properties, v5);
        }
        Packet::Publish(p) => encode_publish(out, protocol, &publish_header(p), &p.payload),
        Packet::PubAck(a) => encode_ack(out, 0x40, a, v5, remaining),
        Packet::PubRec(a) => encode_ack(out, 0x50, a, v5, remaining),
        Packet::PubRel(a) => encode_ack(out, 0x62, a, v5, remaining),
        Packet::PubComp(a) => encode_ack(out, 0x70, a, v5, remaining),
        Packet::Subscribe(s) => {
            put_header(out, 0x82, remaining);
            out.put_u16(s.pid.get());
            put_props(out, &s.properties, v5);
            for (filter, opts) in &s.filters {
                put_binary(out, filter);
                out.put_u8(opts.byte());
            }
        }
        Packet::SubAck(s) => {
            put_header(out, 0x90, remaining);
            out.put_u16(s.pid.get());
            put_props(out, &s.properties, v5);
            out.put_slice(&s.codes);
        }
        Packet::Unsubscribe(u) => {
            put_header(out, 0xa2, remaining);
            out.put_u16(u.pid.get());
            put_props(out, &u.properties, v5);
            for filter in &u.filters {
                put_binary(out, filter);
            }
        }
        Packet::UnsubAck(u) => {
            put_header(out, 0xb0, remaining);
            out.put_u16(u.pid.get());
            if v5 {
                put_props(out, &u.properties, v5);
                out.put_slice(&u.codes);
            }
        }
        Packet::PingReq => put_header(out, 0xc0, 0),
        Packet::PingResp => put_header(out, 0xd0, 0),
        Packet::Disconnect(d) => encode_reason_only(out, 0xe0, d.reason, &d.properties, v5),
        Packet::Auth(a) => encode_reason_only(out, 0xf0, a.reason, &a.properties, v5),
    }
}

fn encode_ack(out: &mut BytesMut, first: u8, a: &Ack, v5: bool, remaining: usize) {
    put_header(out, first, remaining);
    out.put_u16(a.pid.get());
    put_reason_tail(out, a.reason, &a.properties, v5);
}

fn put_reason_tail(out: &mut BytesMut, reason: u8, props: &Properties, v5: bool) {
    let len = reason_tail_len(reason, props, v5);
    if len > 0 {
        out.put_u8(reason);
    }
    if len > 1 {
        put_props(out, props, v5);
    }
}

fn encode_reason_only(out: &mut BytesMut, first: u8, reason: u8, props: &Properties, v5: bool) {
    put_header(out, first, reason_only_len(reason, props, v5));
    put_reason_tail(out, reason, props, v5);
}

fn encode_connect(out: &mut BytesMut, c: &Connect, remaining: usize) {
    let v5 = c.protocol.is_v5();
    put_header(out, 0x10, remaining);
    let name: &[u8] = if c.protocol == Protocol::V3_1 {
        b"MQIsdp"
    } else {
        b"MQTT"
    };
    put_binary(out, name);
    out.put_u8(c.protocol.level() | if c.bridge { BRIDGE_FLAG } else { 0 });
    let mut flags = (c.clean_start as u8) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos as u8) << 3 | (w.retain as u8) << 5;
    }
    flags |= (c.password.is_some() as u8) << 6 | (c.username.is_some() as u8) << 7;
    out.put_u8(flags);
    out.put_u16(c.keep_alive);
    put_props(out, &c.properties, v5);
    put_binary(out, &c.client_id);
    if let Some(w) = &c.will {
        put_props(out, &w.properties, v5);
        put_binary(out, &w.topic);
        put_binary(out, &w.payload);
    }
    if let Some(u) = &c.username {
        put_binary(out, u);
    }
    if let Some(p) = &c.password {
        put_binary(out, p);
    }
}

/// Encodes `make(properties)` with a 5.0 reason string, or without it when the
/// string would push the packet past the client's Maximum Packet Size
/// [MQTT-3.1.2-25] (for CONNACK and DISCONNECT, which end a connection).
pub fn encode_with_reason(
    make: impl Fn(Properties) -> Packet,
    text: &str,
    protocol: Protocol,
    max: u32,
) -> BytesMut {
    let mut out = BytesMut::new();
    if protocol.is_v5() {
        let reason = Property::ReasonString(bytes::Bytes::copy_from_slice(text.as_bytes()));
        encode(&make(Properties(vec![reason])), protocol, &mut out);
        if out.len() <= max as usize {
            return out;
        }
        out.clear();
    }
    encode(&make(Properties::default()), protocol, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::reason;

    fn disconnect(properties: Properties) -> Packet {
        Packet::Disconnect(Disconnect {
            reason: reason::KEEP_ALIVE_TIMEOUT,
            properties,
        })
    }

    #[test]
    fn reason_string_only_when_it_fits_the_clients_maximum() {
        let roomy = encode_with_reason(disconnect, "keep-alive expired", Protocol::V5, 1024);
        let tight = encode_with_reason(disconnect, "keep-alive expired", Protocol::V5, 8);
        assert!(roomy.len() > 8, "{roomy:?}");
        assert_eq!(&tight[..], &[0xe0, 1, reason::KEEP_ALIVE_TIMEOUT]);
        let v3 = encode_with_reason(disconnect, "ignored", Protocol::V3_1_1, 1024);
        assert_eq!(&v3[..], &[0xe0, 0]);
    }
}
