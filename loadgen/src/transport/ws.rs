//! WebSocket (RFC 6455) for MQTT, sans-io, with tungstenite's public pieces:
//!
//! - the upgrade: [`Upgrade`] builds the request with tungstenite's
//!   `ClientRequestBuilder` and `handshake::client::generate_request` (Host,
//!   `Upgrade: websocket`, a fresh `Sec-WebSocket-Key`, `Sec-WebSocket-Protocol:
//!   mqtt`), parses the answer with tungstenite's `Response` parser and checks it
//!   against `handshake::derive_accept_key`;
//! - the frames: [`WsLayer`] parses every frame header with tungstenite's
//!   `FrameHeader::parse` and writes its own with `FrameHeader::format`;
//!   control frames (pong, close) are tungstenite `Frame`s.
//!
//! MQTT rides the payload of binary frames as one byte stream: a frame may
//! hold several MQTT packets and a packet may span frames, so payloads are
//! streamed into the MQTT buffer as they arrive, never gathered per frame.
//! The client masks what it sends (RFC 6455 5.3) with a fresh key per frame.

use std::io::Cursor;

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::{generate_request, Response};
use tungstenite::handshake::derive_accept_key;
use tungstenite::handshake::machine::TryParse;
use tungstenite::http::{StatusCode, Uri};
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame, FrameHeader};
use tungstenite::ClientRequestBuilder;

/// The WebSocket subprotocol of MQTT (MQTT 3.1.1 and 5.0, section 6).
pub const SUBPROTOCOL: &str = "mqtt";
/// Longest upgrade answer we wait for.
pub const MAX_ANSWER: usize = 16 << 10;
/// Longest frame header: 2 bytes, 8 of length, 4 of mask.
const MAX_HEADER: usize = 14;
/// Control frames carry at most 125 bytes (RFC 6455 5.5).
const MAX_CONTROL: u64 = 125;

/// A client's upgrade request and what the broker must answer.
pub struct Upgrade {
    pub request: Vec<u8>,
    accept: String,
}

impl Upgrade {
    /// `authority` is host:port (as the Host header says it), `path` the
    /// request path, `secure` for wss (TLS below).
    pub fn new(authority: &str, path: &str, secure: bool) -> Result<Upgrade> {
        let scheme = if secure { "wss" } else { "ws" };
        let uri: Uri = format!("{scheme}://{authority}{path}")
            .parse()
            .with_context(|| format!("--ws-path {path:?} makes no URI"))?;
        let request = ClientRequestBuilder::new(uri)
            .with_sub_protocol(SUBPROTOCOL)
            .into_client_request()
            .context("building the WebSocket upgrade request")?;
        let (request, key) =
            generate_request(request).context("building the WebSocket upgrade request")?;
        Ok(Upgrade {
            request,
            accept: derive_accept_key(key.as_bytes()),
        })
    }

    /// Checks the answer at the start of `buf`: `None` while it is incomplete,
    /// its length once it is complete and accepts the upgrade.
    pub fn check(&self, buf: &[u8]) -> Result<Option<usize>> {
        let Some((len, response)) =
            Response::try_parse(buf).context("the broker's answer to the upgrade")?
        else {
            if buf.len() > MAX_ANSWER {
                bail!("the broker's answer to the upgrade is longer than {MAX_ANSWER} bytes");
            }
            return Ok(None);
        };
        self.verify(&response)?;
        Ok(Some(len))
    }

    fn verify(&self, response: &Response) -> Result<()> {
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            bail!(
                "the broker refused the WebSocket upgrade: HTTP {}",
                response.status()
            );
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        if !header("Upgrade").eq_ignore_ascii_case("websocket") {
            bail!("the broker's answer lacks \"Upgrade: websocket\"");
        }
        if !header("Connection")
            .split(',')
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
        {
            bail!("the broker's answer lacks \"Connection: Upgrade\"");
        }
        if header("Sec-WebSocket-Accept") != self.accept {
            bail!("the broker's Sec-WebSocket-Accept does not match our key");
        }
        // A broker that names no subprotocol is tolerated (RFC 6455 lets the
        // connection go on); one that picks another is not.
        match header("Sec-WebSocket-Protocol") {
            "" => {}
            p if p.eq_ignore_ascii_case(SUBPROTOCOL) => {}
            p => bail!("the broker chose WebSocket subprotocol {p:?}, not {SUBPROTOCOL:?}"),
        }
        Ok(())
    }
}

/// The frame being read: its opcode and the payload bytes still to come.
struct InFrame {
    opcode: OpCode,
    remaining: u64,
}

/// One connection's WebSocket state, after the upgrade.
pub struct WsLayer {
    /// A frame header split across reads (at most [`MAX_HEADER`] bytes).
    head: Vec<u8>,
    frame: Option<InFrame>,
    /// Inside a fragmented binary message (continuation frames allowed).
    fragmented: bool,
    /// Payload of the control frame being read.
    control: Vec<u8>,
    /// Control frames we owe the broker (pong, close), masked, to go out
    /// before the next data.
    pending: Vec<u8>,
    peer_closed: bool,
    close_sent: bool,
}

impl Default for WsLayer {
    fn default() -> Self {
        WsLayer::new()
    }
}

impl WsLayer {
    pub fn new() -> WsLayer {
        WsLayer {
            head: Vec::with_capacity(MAX_HEADER),
            frame: None,
            fragmented: false,
            control: Vec::new(),
            pending: Vec::new(),
            peer_closed: false,
            close_sent: false,
        }
    }

    /// The broker sent a close frame.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Control frames wait to be sent.
    pub fn wants_write(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Takes bytes from below (socket or TLS); appends the payload of binary
    /// frames to `out` and handles control frames (ping: pong queued; close:
    /// close queued, nothing more read).
    pub fn decode(&mut self, mut input: &[u8], out: &mut BytesMut) -> Result<()> {
        while !input.is_empty() && !self.peer_closed {
            let Some(frame) = &mut self.frame else {
                input = self.read_header(input)?;
                continue;
            };
            let n = frame.remaining.min(input.len() as u64) as usize;
            let (now, rest) = input.split_at(n);
            match frame.opcode {
                OpCode::Data(_) => out.extend_from_slice(now),
                OpCode::Control(_) => self.control.extend_from_slice(now),
            }
            frame.remaining -= n as u64;
            input = rest;
            if frame.remaining == 0 {
                self.end_frame()?;
            }
        }
        Ok(())
    }

    /// Parses the next frame header from what is kept of the last read and
    /// `input`; returns the rest of `input`.
    fn read_header<'a>(&mut self, input: &'a [u8]) -> Result<&'a [u8]> {
        let kept = self.head.len();
        let parsed = if kept == 0 {
            let mut cursor = Cursor::new(input);
            FrameHeader::parse(&mut cursor)?.map(|h| (h, cursor.position() as usize))
        } else {
            let take = (MAX_HEADER - kept).min(input.len());
            self.head.extend_from_slice(&input[..take]);
            let mut cursor = Cursor::new(&self.head[..]);
            let parsed = FrameHeader::parse(&mut cursor)?;
            let used = cursor.position() as usize;
            match parsed {
                Some(h) => {
                    self.head.clear();
                    Some((h, used - kept))
                }
                // Still short: everything taken is kept.
                None => return Ok(&input[take..]),
            }
        };
        match parsed {
            Some(((header, len), used)) => {
                self.begin_frame(header, len)?;
                Ok(&input[used..])
            }
            None => {
                self.head.extend_from_slice(input);
                Ok(&[])
            }
        }
    }

    fn begin_frame(&mut self, header: FrameHeader, len: u64) -> Result<()> {
        if header.rsv1 || header.rsv2 || header.rsv3 {
            bail!("WebSocket frame with reserved bits set (no extension was negotiated)");
        }
        if header.mask.is_some() {
            bail!("masked WebSocket frame from the broker (RFC 6455 5.1: servers do not mask)");
        }
        match header.opcode {
            OpCode::Data(Data::Binary) if !self.fragmented => self.fragmented = !header.is_final,
            OpCode::Data(Data::Continue) if self.fragmented => self.fragmented = !header.is_final,
            OpCode::Data(Data::Binary | Data::Continue) => {
                bail!("WebSocket fragments out of order")
            }
            OpCode::Data(Data::Text) => {
                bail!("WebSocket text frame: MQTT is carried in binary frames only")
            }
            OpCode::Control(Control::Ping | Control::Pong | Control::Close)
                if header.is_final && len <= MAX_CONTROL =>
            {
                self.control.clear()
            }
            OpCode::Control(_) | OpCode::Data(_) => {
                bail!("invalid WebSocket frame {:?} ({len} bytes)", header.opcode)
            }
        }
        self.frame = Some(InFrame {
            opcode: header.opcode,
            remaining: len,
        });
        if len == 0 {
            self.end_frame()?;
        }
        Ok(())
    }

    fn end_frame(&mut self) -> Result<()> {
        let Some(frame) = self.frame.take() else {
            return Ok(());
        };
        match frame.opcode {
            OpCode::Control(Control::Ping) => {
                let pong = Frame::pong(Bytes::copy_from_slice(&self.control));
                self.queue(pong)?;
            }
            OpCode::Control(Control::Close) => {
                self.peer_closed = true;
                // Echo the broker's status code (RFC 6455 5.5.1).
                let reply = match self.control.get(..2) {
                    Some(&[a, b]) => Some(CloseFrame {
                        code: CloseCode::from(u16::from_be_bytes([a, b])),
                        reason: "".into(),
                    }),
                    _ => None,
                };
                self.send_close(reply)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn send_close(&mut self, frame: Option<CloseFrame>) -> Result<()> {
        if !self.close_sent {
            self.close_sent = true;
            self.queue(Frame::close(frame))?;
        }
        Ok(())
    }

    /// Masks and queues a control frame (tungstenite formats and masks it).
    fn queue(&mut self, mut frame: Frame) -> Result<()> {
        frame.header_mut().mask = Some(rand::random());
        frame
            .format(&mut self.pending)
            .context("formatting a WebSocket control frame")
    }

    /// Appends to `wire` the control frames owed, then `plain` as one masked
    /// binary frame (nothing for empty `plain`, nor after a close).
    pub fn encode(&mut self, plain: &[u8], wire: &mut Vec<u8>) -> Result<()> {
        wire.extend_from_slice(&self.pending);
        self.pending.clear();
        if plain.is_empty() || self.close_sent {
            return Ok(());
        }
        let mask: [u8; 4] = rand::random();
        let header = FrameHeader {
            is_final: true,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode: OpCode::Data(Data::Binary),
            mask: Some(mask),
        };
        header
            .format(plain.len() as u64, wire)
            .context("formatting a WebSocket frame header")?;
        let start = wire.len();
        wire.extend_from_slice(plain);
        apply_mask(&mut wire[start..], mask);
        Ok(())
    }

    /// Queues a close frame (normal closure) and appends what is owed to `wire`.
    pub fn close(&mut self, wire: &mut Vec<u8>) -> Result<()> {
        self.send_close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }))?;
        self.encode(&[], wire)
    }
}

/// XORs `buf` with the 4-byte `mask`, in place (RFC 6455 5.3). tungstenite
/// keeps its own masking function private and `Frame::format` masks through
/// a temporary copy of the payload; this one works in the output buffer, 8
/// bytes at a time.
fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let m = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut words = buf.chunks_exact_mut(8);
    for word in &mut words {
        let v = u64::from_ne_bytes((&*word).try_into().expect("8 bytes")) ^ m;
        word.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}
