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

#[cfg(test)]
mod tests {
    use std::io::{self, Read, Write};

    use ringmq_proto::codec::{decode, encode, Ack, Packet, Pid, Protocol};
    use tungstenite::handshake::server::{ErrorResponse, Request, Response as ServerResponse};
    use tungstenite::http::HeaderValue;
    use tungstenite::{Message, WebSocket};

    use super::*;

    /// One side of an in-memory connection: what the server reads, what it wrote.
    #[derive(Default)]
    struct Pipe {
        input: Vec<u8>,
        read: usize,
        output: Vec<u8>,
    }

    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let rest = &self.input[self.read..];
            if rest.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            self.read += n;
            Ok(n)
        }
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[allow(clippy::result_large_err)]
    fn mqtt_subprotocol(
        request: &Request,
        mut response: ServerResponse,
    ) -> Result<ServerResponse, ErrorResponse> {
        let offered = request.headers()["Sec-WebSocket-Protocol"]
            .to_str()
            .unwrap();
        assert_eq!(offered, "mqtt");
        assert_eq!(request.uri().path(), "/mqtt");
        response
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        Ok(response)
    }

    /// A tungstenite server that accepted our upgrade, and our client layer.
    fn connected() -> (WebSocket<Pipe>, WsLayer) {
        let upgrade = Upgrade::new("127.0.0.1:8080", "/mqtt", false).unwrap();
        let pipe = Pipe {
            input: upgrade.request.clone(),
            ..Pipe::default()
        };
        let mut server = tungstenite::accept_hdr(pipe, mqtt_subprotocol).unwrap();
        let answer = std::mem::take(&mut server.get_mut().output);
        assert_eq!(upgrade.check(&answer[..answer.len() - 1]).unwrap(), None);
        assert_eq!(upgrade.check(&answer).unwrap(), Some(answer.len()));
        (server, WsLayer::new())
    }

    /// What the server sent since the last call.
    fn sent(server: &mut WebSocket<Pipe>) -> Vec<u8> {
        server.flush().unwrap();
        std::mem::take(&mut server.get_mut().output)
    }

    /// Gives the server what the client wrote; returns the next message.
    fn deliver(server: &mut WebSocket<Pipe>, wire: &[u8]) -> tungstenite::Result<Message> {
        server.get_mut().input.extend_from_slice(wire);
        server.read()
    }

    fn packets(bytes: &[u8]) -> Vec<Packet> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(p) = decode(&mut buf, Protocol::V3_1_1, 1 << 20).unwrap() {
            out.push(p);
        }
        assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
        out
    }

    fn acks(n: u16) -> BytesMut {
        let mut bytes = BytesMut::new();
        let mut pid = Pid::MIN;
        for _ in 0..n {
            encode(&Packet::PubAck(Ack::new(pid)), Protocol::V3_1_1, &mut bytes);
            pid = pid.next();
        }
        bytes
    }

    #[test]
    fn the_request_asks_for_mqtt_and_the_answer_is_checked() {
        let upgrade = Upgrade::new("broker.test:8443", "/ws/mqtt", true).unwrap();
        let text = String::from_utf8(upgrade.request.clone()).unwrap();
        assert!(text.starts_with("GET /ws/mqtt HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("Host: broker.test:8443\r\n"), "{text}");
        assert!(text.contains("Sec-WebSocket-Protocol: mqtt\r\n"), "{text}");
        assert!(text.contains("Upgrade: websocket\r\n"), "{text}");
        let answer = |accept: &str, protocol: &str| {
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{protocol}\r\n"
            )
        };
        let good = answer(&upgrade.accept, "Sec-WebSocket-Protocol: mqtt\r\n");
        assert_eq!(upgrade.check(good.as_bytes()).unwrap(), Some(good.len()));
        let wrong_key = answer("dGhlIHNhbXBsZSBub25jZQ==", "");
        let e = upgrade.check(wrong_key.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("Sec-WebSocket-Accept"), "{e}");
        let other = answer(&upgrade.accept, "Sec-WebSocket-Protocol: chat\r\n");
        assert!(upgrade.check(other.as_bytes()).is_err());
        let refused = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        let e = upgrade.check(refused.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("404"), "{e}");
    }

    #[test]
    fn client_frames_are_masked_binary_frames_the_server_reads() {
        let (mut server, mut client) = connected();
        let mut wire = Vec::new();
        let bytes = acks(3);
        client.encode(&bytes, &mut wire).unwrap();
        // tungstenite's server refuses unmasked client frames.
        match deliver(&mut server, &wire).unwrap() {
            Message::Binary(b) => assert_eq!(&b[..], &bytes[..]),
            m => panic!("expected a binary message, got {m:?}"),
        }
        let big = vec![0x5a; 70_000]; // a 64-bit length
        wire.clear();
        client.encode(&big, &mut wire).unwrap();
        match deliver(&mut server, &wire).unwrap() {
            Message::Binary(b) => assert_eq!(&b[..], &big[..]),
            m => panic!("expected a binary message, got {m:?}"),
        }
        wire.clear();
        client.encode(&[], &mut wire).unwrap();
        assert!(wire.is_empty(), "no empty data frame");
    }

    #[test]
    fn a_message_split_across_reads_at_any_point_decodes_whole() {
        let (mut server, _) = connected();
        let bytes = acks(40); // 160 bytes: a 16-bit length
        server
            .send(Message::Binary(bytes.clone().freeze()))
            .unwrap();
        let wire = sent(&mut server);
        for cut in 0..=wire.len() {
            let mut client = WsLayer::new();
            let mut mqtt = BytesMut::new();
            client.decode(&wire[..cut], &mut mqtt).unwrap();
            client.decode(&wire[cut..], &mut mqtt).unwrap();
            assert_eq!(&mqtt[..], &bytes[..], "cut at {cut}");
        }
        let mut client = WsLayer::new();
        let mut mqtt = BytesMut::new();
        for byte in wire.chunks(1) {
            client.decode(byte, &mut mqtt).unwrap();
        }
        assert_eq!(packets(&mqtt).len(), 40);
    }

    #[test]
    fn packets_share_frames_and_span_them() {
        let (mut server, mut client) = connected();
        let bytes = acks(3);
        // Three packets in one frame, then one packet over two frames, the
        // second of those a fragment of a message.
        server
            .send(Message::Binary(bytes.clone().freeze()))
            .unwrap();
        let one = acks(1);
        server
            .send(Message::Binary(Bytes::copy_from_slice(&one[..1])))
            .unwrap();
        let first = Frame::message(
            Bytes::copy_from_slice(&one[1..3]),
            OpCode::Data(Data::Binary),
            false,
        );
        let last = Frame::message(
            Bytes::copy_from_slice(&one[3..]),
            OpCode::Data(Data::Continue),
            true,
        );
        server.send(Message::Frame(first)).unwrap();
        server.send(Message::Frame(last)).unwrap();
        let mut mqtt = BytesMut::new();
        client.decode(&sent(&mut server), &mut mqtt).unwrap();
        assert_eq!(packets(&mqtt).len(), 4);
    }

    #[test]
    fn a_ping_is_answered_with_its_pong_before_the_next_data() {
        let (mut server, mut client) = connected();
        server
            .send(Message::Ping(Bytes::from_static(b"are you there")))
            .unwrap();
        server.send(Message::Binary(acks(1).freeze())).unwrap();
        let mut mqtt = BytesMut::new();
        client.decode(&sent(&mut server), &mut mqtt).unwrap();
        assert_eq!(packets(&mqtt).len(), 1, "data after the ping still arrives");
        assert!(client.wants_write());
        let mut wire = Vec::new();
        client.encode(&acks(1), &mut wire).unwrap();
        assert!(!client.wants_write());
        match deliver(&mut server, &wire).unwrap() {
            Message::Pong(p) => assert_eq!(&p[..], b"are you there"),
            m => panic!("expected the pong first, got {m:?}"),
        }
        assert!(matches!(server.read().unwrap(), Message::Binary(_)));
    }

    #[test]
    fn a_server_close_is_echoed_and_ends_the_stream() {
        let (mut server, mut client) = connected();
        server.send(Message::Binary(acks(1).freeze())).unwrap();
        server
            .close(Some(CloseFrame {
                code: CloseCode::Away,
                reason: "shutting down".into(),
            }))
            .unwrap();
        let mut mqtt = BytesMut::new();
        client.decode(&sent(&mut server), &mut mqtt).unwrap();
        assert_eq!(packets(&mqtt).len(), 1, "data before the close arrives");
        assert!(client.peer_closed());
        let mut wire = Vec::new();
        client.encode(&acks(1), &mut wire).unwrap();
        // Only the close reply goes out, with the broker's code: no data after it.
        match deliver(&mut server, &wire) {
            Ok(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::Away),
            other => panic!("expected our close reply, got {other:?}"),
        }
        assert!(matches!(
            server.read(),
            Err(tungstenite::Error::ConnectionClosed)
        ));
        let mut f = Cursor::new(&wire[..]);
        let (header, _) = FrameHeader::parse(&mut f).unwrap().unwrap();
        assert_eq!(header.opcode, OpCode::Control(Control::Close));
    }

    #[test]
    fn our_close_is_a_normal_closure() {
        let (mut server, mut client) = connected();
        let mut wire = Vec::new();
        client.close(&mut wire).unwrap();
        match deliver(&mut server, &wire).unwrap() {
            Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Normal),
            m => panic!("expected a close frame, got {m:?}"),
        }
        wire.clear();
        client.encode(&acks(1), &mut wire).unwrap();
        assert!(wire.is_empty(), "nothing after our close");
    }

    #[test]
    fn what_mqtt_over_websocket_forbids_is_an_error() {
        let (mut server, _) = connected();
        server.send(Message::Text("hello".into())).unwrap();
        let e = WsLayer::new()
            .decode(&sent(&mut server), &mut BytesMut::new())
            .unwrap_err();
        assert!(e.to_string().contains("text frame"), "{e}");
        // A masked frame, as only clients send.
        let mut masked = Vec::new();
        WsLayer::new().encode(b"x", &mut masked).unwrap();
        let e = WsLayer::new()
            .decode(&masked, &mut BytesMut::new())
            .unwrap_err();
        assert!(e.to_string().contains("masked"), "{e}");
        let stray = Frame::message(Bytes::from_static(b"x"), OpCode::Data(Data::Continue), true);
        server.send(Message::Frame(stray)).unwrap();
        assert!(WsLayer::new()
            .decode(&sent(&mut server), &mut BytesMut::new())
            .is_err());
    }

    #[test]
    fn masking_matches_the_rfc_definition_at_every_length() {
        let mask = [0x6d, 0xb6, 0xb2, 0x80];
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(37)).collect();
            let mut masked = data.clone();
            apply_mask(&mut masked, mask);
            let expected: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(masked, expected, "length {len}");
        }
    }
}
