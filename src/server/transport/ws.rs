//! MQTT over WebSocket (RFC 6455, MQTT section 6) with tungstenite used
//! sans-io: the upgrade and the incoming frames (unmasking, control frames,
//! the close handshake) go through tungstenite's server state machine over an
//! in-memory [`Duplex`]; outgoing data frames are one header (tungstenite's
//! `FrameHeader::format`) in front of the MQTT bytes, with no extra copy.

use std::io::{self, Read, Write};

use bytes::{Buf, BufMut, BytesMut};
use tungstenite::handshake::server::{Callback, ErrorResponse, Request, Response};
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, ServerHandshake, WebSocket};

/// Subprotocols accepted in `Sec-WebSocket-Protocol`, preferred first: MQTT
/// names "mqtt" [MQTT-6.0.0-3]; some 3.1 clients still offer "mqttv3.1".
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Bytes tungstenite reads per call from the in-memory stream. Small, since
/// its buffer is held by every connection; reads are memory copies anyway.
const READ_CHUNK: usize = 512;

/// A listener's WebSocket settings.
#[derive(Clone, Debug)]
pub struct WsSettings {
    /// The HTTP path the upgrade must ask for.
    pub path: String,
    /// Largest frame or message accepted: a larger one closes the connection
    /// before its payload is buffered.
    pub max_message: usize,
}

/// The in-memory stream tungstenite works over: bytes that arrived and wait to
/// be parsed, and bytes tungstenite wrote (the upgrade answer, pongs, close).
#[derive(Debug, Default)]
pub struct Duplex {
    pub incoming: BytesMut,
    pub outgoing: Vec<u8>,
}

impl Read for Duplex {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.incoming.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.incoming.len());
        buf[..n].copy_from_slice(&self.incoming[..n]);
        self.incoming.advance(n);
        Ok(n)
    }
}

impl Write for Duplex {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Checks the path and picks the subprotocol of an upgrade request (owning the
/// path, so the handshake can be kept across reads).
pub struct PathCheck(String);

impl Callback for PathCheck {
    fn on_request(
        self,
        request: &Request,
        mut response: Response,
    ) -> Result<Response, ErrorResponse> {
        if request.uri().path() != self.0 {
            return Err(refusal(404, "no MQTT endpoint at this path"));
        }
        let offered = request
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        let Some(chosen) = SUBPROTOCOLS.iter().find(|p| offered.contains(p)) else {
            return Err(refusal(
                400,
                "the mqtt subprotocol is required [MQTT-6.0.0-3]",
            ));
        };
        let value = chosen
            .parse()
            .expect("a subprotocol name is a valid header value");
        response
            .headers_mut()
            .insert("sec-websocket-protocol", value);
        Ok(response)
    }
}

fn refusal(status: u16, why: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(why.to_owned()));
    *response.status_mut() = tungstenite::http::StatusCode::from_u16(status)
        .unwrap_or(tungstenite::http::StatusCode::BAD_REQUEST);
    response
}

/// Where an upgrade stands.
pub enum Handshake {
    /// The request is not complete yet.
    NeedMore(Box<Upgrading>),
    /// Upgraded. Bytes that came after the request wait in the duplex.
    Done(Box<WebSocket<Duplex>>),
    /// Refused; the answer to send (if any) is in `answer`.
    Refused { answer: Vec<u8>, why: String },
}

/// An upgrade that needs more of the request.
pub struct Upgrading(MidHandshake<ServerHandshake<Duplex, PathCheck>>);

fn config(settings: &WsSettings) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_CHUNK)
        .max_message_size(Some(settings.max_message))
        .max_frame_size(Some(settings.max_message))
}

/// Starts an upgrade with what arrived so far.
pub fn start(settings: &WsSettings, incoming: &mut BytesMut) -> Handshake {
    let duplex = Duplex {
        incoming: incoming.split(),
        outgoing: Vec::new(),
    };
    let mid = ServerHandshake::start(
        duplex,
        PathCheck(settings.path.clone()),
        Some(config(settings)),
    );
    advance(mid.handshake())
}

impl Upgrading {
    /// Continues with more bytes of the request.
    pub fn feed(mut self: Box<Self>, more: &mut BytesMut) -> Handshake {
        self.0.get_mut().get_mut().incoming.extend_from_slice(more);
        more.clear();
        advance(self.0.handshake())
    }
}

fn advance(
    result: Result<WebSocket<Duplex>, HandshakeError<ServerHandshake<Duplex, PathCheck>>>,
) -> Handshake {
    match result {
        Ok(ws) => Handshake::Done(Box::new(ws)),
        Err(HandshakeError::Interrupted(mid)) => Handshake::NeedMore(Box::new(Upgrading(mid))),
        Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            let why = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_else(|| response.status().to_string());
            // tungstenite wrote the refusal into the duplex before failing;
            // the answer is rebuilt here since the duplex went with the error.
            Handshake::Refused {
                answer: http_answer(response.status().as_u16(), &why),
                why,
            }
        }
        Err(HandshakeError::Failure(e)) => Handshake::Refused {
            answer: http_answer(400, "not a WebSocket upgrade"),
            why: e.to_string(),
        },
    }
}

/// A minimal HTTP error answer, for refused upgrades.
fn http_answer(status: u16, why: &str) -> Vec<u8> {
    let reason = tungstenite::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Bad Request");
    format!(
        "HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{why}",
        why.len()
    )
    .into_bytes()
}

/// Takes every complete message out of `ws`: binary payloads are appended to
/// `out`; a text frame is a protocol error [MQTT-6.0.0-1]. Returns true when
/// the client closed the WebSocket.
pub fn read_messages(ws: &mut WebSocket<Duplex>, out: &mut BytesMut) -> io::Result<bool> {
    let closed = read_until_blocked(ws, out)?;
    // Replies tungstenite queued while reading (a pong, the close answer) go
    // into the duplex now, where the writer finds them.
    let _ = ws.flush();
    Ok(closed)
}

fn read_until_blocked(ws: &mut WebSocket<Duplex>, out: &mut BytesMut) -> io::Result<bool> {
    loop {
        match ws.read() {
            Ok(Message::Binary(payload)) => out.extend_from_slice(&payload),
            Ok(Message::Text(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "WebSocket text frame: MQTT travels in binary frames [MQTT-6.0.0-1]",
                ))
            }
            Ok(Message::Close(_)) => return Ok(true),
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                return Ok(false)
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return Ok(true)
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
    }
}

/// Moves what tungstenite queued (pongs, the close answer) out of the duplex.
pub fn take_control_output(ws: &mut WebSocket<Duplex>, out: &mut impl BufMut) {
    // A flush only moves tungstenite's queue into the duplex, which never blocks.
    let _ = ws.flush();
    let duplex = ws.get_mut();
    out.put_slice(&duplex.outgoing);
    duplex.outgoing.clear();
}

pub fn has_control_output(ws: &WebSocket<Duplex>) -> bool {
    !ws.get_ref().outgoing.is_empty()
}

/// One binary frame carrying `len` bytes of MQTT: its header. Server frames
/// are not masked (RFC 6455 section 5.1).
pub fn data_frame_header(len: usize, out: &mut Vec<u8>) {
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Binary),
        ..FrameHeader::default()
    };
    // Formatting into a Vec cannot fail.
    let _ = header.format(len as u64, out);
}

/// Starts the close handshake; the close frame is then control output.
pub fn close(ws: &mut WebSocket<Duplex>) {
    let _ = ws.close(None);
}
