//! The durable form of what must outlive the broker process (issue 10): a
//! message, and the image of a persistent session with its subscriptions, its
//! in-flight and queued QoS 1/2 messages and the QoS 2 packet ids it awaits
//! PUBREL for. Pure bytes in, bytes out; where the bytes go (a log, an engine)
//! is the server's business, and so are framing and checksums.
//!
//! Layout: every image starts with its format version; integers are
//! little-endian except where the MQTT codec's own encodings are reused
//! (5.0 properties). Times are stored as Unix milliseconds, converted with the
//! [`Epoch`] the server passes in, so a message expiry keeps counting from the
//! original publish across a restart.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{DecodeError, Pid, Properties, Protocol, QoS, SubOptions};
use crate::message::Message;
use crate::session::{OutState, Routed, SubEntry};
use crate::time::Time;
use crate::topic::{SubFilter, TopicFilter, TopicName};

/// The version written first in every image; a reader refuses others.
pub const FORMAT_VERSION: u8 = 1;

/// Levels allowed when re-validating stored topics (the stored ones passed
/// the broker's own cap when they were first accepted).
const STORED_TOPIC_LEVELS: usize = usize::MAX;

/// Why stored bytes could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corrupt {
    #[error("format version {0} is not one this build reads (it reads {FORMAT_VERSION})")]
    Version(u8),
    #[error("truncated or malformed: {0}")]
    Decode(#[from] DecodeError),
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// Maps the broker's monotonic [`Time`] to wall-clock Unix milliseconds: the
/// Unix time at which the broker clock read zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Epoch(pub u64);

impl Epoch {
    pub fn to_unix(self, t: Time) -> u64 {
        self.0.saturating_add(t.as_millis())
    }

    /// A time before this run started reads as [`Time::ZERO`] (already due).
    pub fn to_time(self, unix_ms: u64) -> Time {
        Time::from_millis(unix_ms.saturating_sub(self.0))
    }
}

/// A persistent session as stored: enough to rebuild it, offline, until its
/// client reconnects (which brings the connection's own parameters back).
#[derive(Clone, Debug)]
pub struct SessionImage {
    pub client_id: Arc<str>,
    pub username: Option<Arc<str>>,
    pub protocol: Protocol,
    /// Seconds the session outlives its connection; `u32::MAX`: forever.
    pub session_expiry: u32,
    pub subscriptions: Vec<(SubFilter, SubEntry)>,
    /// Incoming QoS 2 packet ids not yet released (exactly once holds across
    /// a restart).
    pub awaiting_rel: Vec<Pid>,
    /// Outgoing QoS 1/2 messages sent and not yet acknowledged, in order.
    pub inflight: Vec<(Pid, OutState, Routed)>,
    /// Messages queued behind the window, in order.
    pub queue: Vec<Routed>,
}

/// Appends `msg` in its durable form.
pub fn put_message(out: &mut BytesMut, msg: &Message, epoch: Epoch) {
    put_bytes(out, msg.topic.as_bytes());
    put_bytes(out, &msg.payload);
    out.put_u8(msg.qos as u8 | u8::from(msg.retain) << 2);
    msg.properties.encode(out);
    put_opt_str(out, msg.publisher.as_deref());
    put_opt_time(out, msg.expires_at, epoch);
}

/// Reads a message written by [`put_message`].
pub fn get_message(r: &mut Cursor, epoch: Epoch) -> Result<Message, Corrupt> {
    let topic = TopicName::new(r.bytes()?, STORED_TOPIC_LEVELS)
        .map_err(|_| Corrupt::Invalid("topic name"))?;
    let payload = r.bytes()?;
    let flags = r.u8()?;
    let qos = QoS::from_bits(flags & 3).ok_or(Corrupt::Invalid("QoS"))?;
    let mut msg = Message::new(topic, payload, qos, flags & 4 != 0);
    msg.properties = Properties::decode(&mut r.inner)?;
    msg.publisher = r.opt_str()?;
    msg.expires_at = r.opt_time(epoch)?;
    Ok(msg)
}

/// Appends a session image.
pub fn put_session(out: &mut BytesMut, s: &SessionImage, epoch: Epoch) {
    out.put_u8(FORMAT_VERSION);
    put_bytes(out, s.client_id.as_bytes());
    put_opt_str(out, s.username.as_deref());
    out.put_u8(s.protocol.level());
    out.put_u32_le(s.session_expiry);
    out.put_u32_le(s.subscriptions.len() as u32);
    for (filter, entry) in &s.subscriptions {
        put_bytes(out, filter.as_str().as_bytes());
        out.put_u8(entry.opts.byte());
        out.put_u32_le(entry.id.unwrap_or(0));
        out.put_u8(u8::from(entry.checked));
    }
    out.put_u32_le(s.awaiting_rel.len() as u32);
    for pid in &s.awaiting_rel {
        out.put_u16_le(pid.get());
    }
    out.put_u32_le(s.inflight.len() as u32);
    for (pid, state, item) in &s.inflight {
        out.put_u16_le(pid.get());
        out.put_u8(matches!(state, OutState::Released) as u8);
        put_routed(out, item, epoch);
    }
    out.put_u32_le(s.queue.len() as u32);
    for item in &s.queue {
        put_routed(out, item, epoch);
    }
}

/// Reads a session image written by [`put_session`].
pub fn get_session(r: &mut Cursor, epoch: Epoch) -> Result<SessionImage, Corrupt> {
    let version = r.u8()?;
    if version != FORMAT_VERSION {
        return Err(Corrupt::Version(version));
    }
    let client_id = r.str()?;
    let username = r.opt_str()?;
    let protocol = match r.u8()? {
        3 => Protocol::V3_1,
        4 => Protocol::V3_1_1,
        5 => Protocol::V5,
        _ => return Err(Corrupt::Invalid("protocol level")),
    };
    let session_expiry = r.u32()?;
    let subscriptions = r.list(|r| {
        let filter = TopicFilter::new(r.bytes()?, STORED_TOPIC_LEVELS)
            .ok()
            .and_then(|f| SubFilter::parse(f).ok())
            .ok_or(Corrupt::Invalid("subscription filter"))?;
        let opts = SubOptions::from_byte(r.u8()?).ok_or(Corrupt::Invalid("options"))?;
        let id = Some(r.u32()?).filter(|&id| id != 0);
        let checked = r.u8()? != 0;
        Ok((filter, SubEntry { opts, id, checked }))
    })?;
    let awaiting_rel = r.list(|r| r.pid())?;
    let inflight = r.list(|r| {
        let pid = r.pid()?;
        let state = match r.u8()? {
            0 => OutState::Published,
            _ => OutState::Released,
        };
        Ok((pid, state, get_routed(r, epoch)?))
    })?;
    let queue = r.list(|r| get_routed(r, epoch))?;
    Ok(SessionImage {
        client_id,
        username,
        protocol,
        session_expiry,
        subscriptions,
        awaiting_rel,
        inflight,
        queue,
    })
}

pub(crate) fn put_routed(out: &mut BytesMut, item: &Routed, epoch: Epoch) {
    out.put_u8(item.qos as u8 | u8::from(item.retain) << 2);
    out.put_u32_le(item.sub_ids.len() as u32);
    for id in item.sub_ids.iter() {
        out.put_u32_le(*id);
    }
    let shared = item.shared.as_ref().map(|s| s.as_str());
    put_opt_str(out, shared);
    put_message(out, &item.msg, epoch);
}

pub(crate) fn get_routed(r: &mut Cursor, epoch: Epoch) -> Result<Routed, Corrupt> {
    let flags = r.u8()?;
    let qos = QoS::from_bits(flags & 3).ok_or(Corrupt::Invalid("QoS"))?;
    let sub_ids = r.list(|r| r.u32())?.into_boxed_slice();
    let shared = match r.opt_str()? {
        Some(text) => {
            let raw = Bytes::copy_from_slice(text.as_bytes());
            let filter = TopicFilter::new(raw, STORED_TOPIC_LEVELS)
                .ok()
                .and_then(|f| SubFilter::parse(f).ok());
            match filter {
                Some(SubFilter::Shared(share)) => Some(share),
                _ => return Err(Corrupt::Invalid("shared subscription")),
            }
        }
        None => None,
    };
    Ok(Routed {
        msg: Arc::new(get_message(r, epoch)?),
        qos,
        retain: flags & 4 != 0,
        sub_ids,
        shared,
    })
}

pub(crate) fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32_le(b.len() as u32);
    out.put_slice(b);
}

fn put_opt_str(out: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => {
            out.put_u8(1);
            put_bytes(out, s.as_bytes());
        }
        None => out.put_u8(0),
    }
}

fn put_opt_time(out: &mut BytesMut, t: Option<Time>, epoch: Epoch) {
    match t {
        Some(t) => {
            out.put_u8(1);
            out.put_u64_le(epoch.to_unix(t));
        }
        None => out.put_u8(0),
    }
}

/// A bounds-checked reader over stored bytes: every length is checked
/// against what is left before anything is allocated.
pub struct Cursor {
    inner: crate::codec::Reader,
}

impl Cursor {
    pub fn new(bytes: Bytes) -> Cursor {
        Cursor {
            inner: crate::codec::Reader::new(bytes, "stored record"),
        }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.inner.remaining()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Corrupt> {
        Ok(self.inner.u8()?)
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Corrupt> {
        let b = self.inner.take(8)?;
        Ok(u64::from_le_bytes(b[..].try_into().unwrap_or([0; 8])))
    }

    /// The MQTT codec's reader over the same bytes (for 5.0 properties).
    pub(crate) fn codec(&mut self) -> &mut crate::codec::Reader {
        &mut self.inner
    }

    fn u32(&mut self) -> Result<u32, Corrupt> {
        let b = self.inner.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn pid(&mut self) -> Result<Pid, Corrupt> {
        let b = self.inner.take(2)?;
        Pid::new(u16::from_le_bytes([b[0], b[1]])).ok_or(Corrupt::Invalid("packet id 0"))
    }

    pub(crate) fn bytes(&mut self) -> Result<Bytes, Corrupt> {
        let len = self.u32()? as usize;
        Ok(self.inner.take(len)?)
    }

    pub(crate) fn str(&mut self) -> Result<Arc<str>, Corrupt> {
        let b = self.bytes()?;
        std::str::from_utf8(&b)
            .map(Arc::from)
            .map_err(|_| Corrupt::Invalid("UTF-8 string"))
    }

    fn opt_str(&mut self) -> Result<Option<Arc<str>>, Corrupt> {
        match self.u8()? {
            0 => Ok(None),
            _ => self.str().map(Some),
        }
    }

    fn opt_time(&mut self, epoch: Epoch) -> Result<Option<Time>, Corrupt> {
        match self.u8()? {
            0 => Ok(None),
            _ => {
                let b = self.inner.take(8)?;
                let unix = u64::from_le_bytes(b[..].try_into().unwrap_or([0; 8]));
                Ok(Some(epoch.to_time(unix)))
            }
        }
    }

    /// A count, then that many items. The count is not trusted for an
    /// allocation: items are read one by one until the bytes run out.
    fn list<T>(
        &mut self,
        mut item: impl FnMut(&mut Cursor) -> Result<T, Corrupt>,
    ) -> Result<Vec<T>, Corrupt> {
        let n = self.u32()? as usize;
        let mut out = Vec::with_capacity(n.min(self.remaining()));
        for _ in 0..n {
            out.push(item(self)?);
        }
        Ok(out)
    }
}

pub mod journal;

#[cfg(test)]
mod tests;
