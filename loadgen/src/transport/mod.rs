//! How a connection's MQTT bytes reach the broker: straight on the TCP socket
//! (the default, and the fast path: the writer's buffer goes to the kernel as
//! it is, reads land in the MQTT buffer), or through sans-io layers between
//! the socket and the MQTT bytes: [`tls`] (rustls), [`ws`] (RFC 6455 with
//! tungstenite's pieces), or both stacked for secure WebSocket:
//!
//! ```text
//! MQTT bytes <-> [WebSocket frames] <-> [TLS records] <-> TCP socket
//! ```
//!
//! [`Link`] is a connection before it splits: it connects, runs the TLS
//! handshake and the WebSocket upgrade (both inside the connect time the
//! caller measures), and carries CONNECT/CONNACK. [`Link::into_split`] gives
//! the reader task a [`ReadHalf`] and the writer task a [`WriteHalf`]; they
//! share the [`Layers`] through an `Rc<RefCell<..>>` borrowed only between
//! awaits. What the reader's layers owe the broker (a pong, a TLS alert) is
//! sent by the writer, which [`ReadHalf::wants_write`] tells the reader to wake.

pub mod tls;
pub mod ws;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use serde::Serialize;

use crate::cli::TransportArgs;
use tls::{TlsLayer, TlsSetup};
use ws::WsLayer;

/// Socket reads while handshaking: a TLS record is up to 16 KiB.
const HANDSHAKE_READ: usize = 16 << 10;

/// How every connection of a run reaches its broker (--tls, --ws and friends).
#[derive(Clone, Debug, Default)]
pub struct Transport {
    pub tls: Option<TlsSetup>,
    /// The WebSocket upgrade path; `None`: MQTT right on the byte stream.
    pub ws_path: Option<String>,
}

/// The transport as the report shows it.
#[derive(Clone, Debug, Serialize)]
pub struct TransportInfo {
    /// "tcp", "tls", "ws" or "wss".
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_verify: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_path: Option<String>,
}

impl Transport {
    pub fn from_args(args: &TransportArgs) -> Result<Transport> {
        let tls = if args.tls {
            let client = args.cert.as_deref().zip(args.key.as_deref());
            Some(TlsSetup::load(
                args.cafile.as_deref(),
                args.insecure,
                client,
                args.server_name.as_deref(),
            )?)
        } else {
            None
        };
        let ws_path = if args.ws {
            if !args.ws_path.starts_with('/') {
                bail!("--ws-path must start with '/' (got {:?})", args.ws_path);
            }
            Some(args.ws_path.clone())
        } else {
            None
        };
        Ok(Transport { tls, ws_path })
    }

    pub fn is_plain(&self) -> bool {
        self.tls.is_none() && self.ws_path.is_none()
    }

    pub fn kind(&self) -> &'static str {
        match (self.tls.is_some(), self.ws_path.is_some()) {
            (false, false) => "tcp",
            (true, false) => "tls",
            (false, true) => "ws",
            (true, true) => "wss",
        }
    }

    pub fn info(&self) -> TransportInfo {
        TransportInfo {
            kind: self.kind(),
            tls_verify: self.tls.as_ref().map(|t| t.verify.name()),
            client_certificate: self.tls.as_ref().map(|t| t.client_certificate),
            server_name: self.tls.as_ref().and_then(TlsSetup::server_name_override),
            ws_path: self.ws_path.clone(),
        }
    }

    /// Fails early if `host` makes no TLS server name (and no --server-name).
    pub fn check_host(&self, host: &str) -> Result<()> {
        if let Some(tls) = &self.tls {
            tls.server_name(host)?;
        }
        Ok(())
    }
}

/// host:port as a Host header writes it (IPv6 in brackets).
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The layers of one connection, in the order bytes leave it.
#[derive(Default)]
pub struct Layers {
    ws: Option<WsLayer>,
    tls: Option<TlsLayer>,
    /// wss: TLS plaintext on its way to the WebSocket decoder (reused).
    tls_plain: BytesMut,
    /// wss: WebSocket frames on their way into TLS (reused).
    ws_frames: Vec<u8>,
}

impl Layers {
    /// Bytes read from the socket in, MQTT bytes (appended to `mqtt`) out.
    pub fn decode(&mut self, wire: &[u8], mqtt: &mut BytesMut) -> Result<()> {
        match (&mut self.tls, &mut self.ws) {
            (Some(tls), Some(ws)) => {
                tls.decode(wire, &mut self.tls_plain)?;
                let decoded = ws.decode(&self.tls_plain, mqtt);
                self.tls_plain.clear();
                decoded
            }
            (Some(tls), None) => tls.decode(wire, mqtt),
            (None, Some(ws)) => ws.decode(wire, mqtt),
            // Only while a plain WebSocket upgrade reads its answer.
            (None, None) => {
                mqtt.extend_from_slice(wire);
                Ok(())
            }
        }
    }

    /// MQTT bytes in, bytes for the socket (appended to `wire`) out, after
    /// whatever the layers owe the broker.
    pub fn encode(&mut self, mqtt: &[u8], wire: &mut Vec<u8>) -> Result<()> {
        match (&mut self.tls, &mut self.ws) {
            (Some(tls), Some(ws)) => {
                ws.encode(mqtt, &mut self.ws_frames)?;
                let encoded = tls.encode(&self.ws_frames, wire);
                self.ws_frames.clear();
                encoded
            }
            (Some(tls), None) => tls.encode(mqtt, wire),
            (None, Some(ws)) => ws.encode(mqtt, wire),
            (None, None) => {
                wire.extend_from_slice(mqtt);
                Ok(())
            }
        }
    }

    /// The layers owe the broker bytes though no MQTT is queued.
    pub fn wants_write(&self) -> bool {
        self.ws.as_ref().is_some_and(WsLayer::wants_write)
            || self.tls.as_ref().is_some_and(TlsLayer::wants_write)
    }

    /// The broker closed a layer (WebSocket close frame, TLS close_notify).
    pub fn peer_closed(&self) -> bool {
        self.ws.as_ref().is_some_and(WsLayer::peer_closed)
            || self.tls.as_ref().is_some_and(TlsLayer::peer_closed)
    }

    /// Appends the layers' goodbyes to `wire`: a WebSocket close frame, then
    /// TLS close_notify.
    pub fn close(&mut self, wire: &mut Vec<u8>) -> Result<()> {
        if let Some(ws) = &mut self.ws {
            if self.tls.is_some() {
                ws.close(&mut self.ws_frames)?;
            } else {
                ws.close(wire)?;
            }
        }
        if let Some(tls) = &mut self.tls {
            tls.encode(&self.ws_frames, wire)?;
            self.ws_frames.clear();
            tls.close(wire);
        }
        Ok(())
    }

    fn tls_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(TlsLayer::is_handshaking)
    }
}

type Shared = Rc<RefCell<Layers>>;

/// Reads into the free tail of `buf`, growing it to `capacity` first if the
/// tail is short. (A plain monoio read into a `BytesMut` would overwrite it
/// from the start.)
pub async fn read_into<R: AsyncReadRent>(
    r: &mut R,
    mut buf: BytesMut,
    capacity: usize,
) -> (std::io::Result<usize>, BytesMut) {
    if buf.capacity() - buf.len() < capacity / 4 {
        buf.reserve(capacity);
    }
    let len = buf.len();
    let (res, slice) = r.read(monoio::buf::IoBufMut::slice_mut(buf, len..)).await;
    (res, slice.into_inner())
}

/// Appends the next MQTT bytes to `buf`; `Ok(0)`: the broker closed (TCP, or
/// a layer's close). Plain TCP reads straight into `buf`; with layers, the
/// socket's bytes land in `raw` and are decoded into `buf`.
async fn recv<R: AsyncReadRent>(
    rd: &mut R,
    layers: Option<&RefCell<Layers>>,
    raw: &mut BytesMut,
    buf: BytesMut,
    capacity: usize,
) -> (Result<usize>, BytesMut) {
    let Some(layers) = layers else {
        let (res, buf) = read_into(rd, buf, capacity).await;
        return (res.map_err(Into::into), buf);
    };
    let mut buf = buf;
    let before = buf.len();
    loop {
        if layers.borrow().peer_closed() {
            return (Ok(0), buf);
        }
        let (res, r) = read_into(rd, std::mem::take(raw), capacity).await;
        *raw = r;
        match res {
            Ok(0) => return (Ok(0), buf),
            Ok(_) => {}
            Err(e) => return (Err(e.into()), buf),
        }
        let decoded = layers.borrow_mut().decode(raw, &mut buf);
        raw.clear();
        if let Err(e) = decoded {
            return (Err(e), buf);
        }
        // A read may complete no MQTT byte (a TLS record's first half, a ping).
        if buf.len() > before {
            return (Ok(buf.len() - before), buf);
        }
    }
}

/// Sends `buf` (MQTT bytes; may be empty when only the layers have something
/// to say); gives it back for reuse, cleared when layers copied it.
async fn send<W: AsyncWriteRent>(
    wr: &mut W,
    layers: Option<&RefCell<Layers>>,
    wire: &mut Vec<u8>,
    mut buf: BytesMut,
) -> (Result<()>, BytesMut) {
    let Some(layers) = layers else {
        let (res, buf) = wr.write_all(buf).await;
        return (res.map(drop).map_err(Into::into), buf);
    };
    let encoded = layers.borrow_mut().encode(&buf, wire);
    buf.clear();
    if let Err(e) = encoded {
        return (Err(e), buf);
    }
    (write_wire(wr, wire).await, buf)
}

/// Writes and clears `wire`, keeping its allocation.
async fn write_wire<W: AsyncWriteRent>(wr: &mut W, wire: &mut Vec<u8>) -> Result<()> {
    if wire.is_empty() {
        return Ok(());
    }
    let (res, mut w) = wr.write_all(std::mem::take(wire)).await;
    w.clear();
    *wire = w;
    res?;
    Ok(())
}

/// Sends `last` and the layers' goodbyes in one write, then half-closes.
async fn close<W: AsyncWriteRent>(
    wr: &mut W,
    layers: Option<&RefCell<Layers>>,
    wire: &mut Vec<u8>,
    last: BytesMut,
) -> Result<()> {
    match layers {
        None => {
            let (res, _) = wr.write_all(last).await;
            res?;
        }
        Some(layers) => {
            {
                let mut layers = layers.borrow_mut();
                layers.encode(&last, wire)?;
                layers.close(wire)?;
            }
            write_wire(wr, wire).await?;
        }
    }
    match wr.shutdown().await {
        // The broker closed first, as it may on DISCONNECT (a TLS broker that
        // does not wait for our close_notify resets the connection).
        Err(e) if e.kind() == std::io::ErrorKind::NotConnected => Ok(()),
        res => Ok(res?),
    }
}

/// A connection before it splits into its reader and writer.
pub struct Link {
    stream: TcpStream,
    layers: Option<Shared>,
    raw: BytesMut,
    wire: Vec<u8>,
}

impl Link {
    /// Connects to `address` and runs the transport's handshakes: TLS (for
    /// `host`, or --server-name), then the WebSocket upgrade. Returns the link
    /// and any MQTT bytes that came with the last handshake message.
    pub async fn open(
        transport: &Transport,
        address: SocketAddr,
        host: &str,
    ) -> Result<(Link, BytesMut)> {
        let stream = TcpStream::connect_addr(address)
            .await
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_nodelay(true)?;
        let mut link = Link {
            stream,
            layers: None,
            raw: BytesMut::new(),
            wire: Vec::new(),
        };
        let mut early = BytesMut::new();
        if transport.is_plain() {
            return Ok((link, early));
        }
        let layers = Shared::default();
        link.layers = Some(layers.clone());
        if let Some(tls) = &transport.tls {
            layers.borrow_mut().tls = Some(tls.connect(host)?);
            link.tls_handshake(&mut early)
                .await
                .with_context(|| format!("TLS handshake with {address}"))?;
        }
        if let Some(path) = &transport.ws_path {
            let authority = authority(host, address.port());
            let secure = transport.tls.is_some();
            early = link
                .ws_upgrade(early, &authority, path, secure)
                .await
                .with_context(|| format!("WebSocket upgrade at {authority}{path}"))?;
        }
        Ok((link, early))
    }

    async fn tls_handshake(&mut self, early: &mut BytesMut) -> Result<()> {
        let layers = self.layers.clone().expect("TLS has layers");
        loop {
            // What rustls has to say first: ClientHello, then Finished.
            self.flush().await?;
            if !layers.borrow().tls_handshaking() {
                return Ok(());
            }
            let (res, raw) = read_into(
                &mut self.stream,
                std::mem::take(&mut self.raw),
                HANDSHAKE_READ,
            )
            .await;
            self.raw = raw;
            if res.context("reading the handshake")? == 0 {
                bail!("the broker closed the connection during the TLS handshake");
            }
            let decoded = layers.borrow_mut().decode(&self.raw, early);
            self.raw.clear();
            if let Err(e) = decoded {
                // Tell the broker why (rustls queued an alert), then give up.
                let _ = self.flush().await;
                return Err(e);
            }
        }
    }

    async fn ws_upgrade(
        &mut self,
        mut buf: BytesMut,
        authority: &str,
        path: &str,
        secure: bool,
    ) -> Result<BytesMut> {
        let upgrade = ws::Upgrade::new(authority, path, secure)?;
        self.send(BytesMut::from(&upgrade.request[..])).await?;
        let len = loop {
            if let Some(len) = upgrade.check(&buf)? {
                break len;
            }
            let (res, b) = self.recv(buf, HANDSHAKE_READ).await;
            buf = b;
            if res? == 0 {
                bail!("the broker closed the connection before answering the upgrade");
            }
        };
        let frames = buf.split_off(len);
        let mut layer = WsLayer::new();
        let mut mqtt = BytesMut::new();
        layer.decode(&frames, &mut mqtt)?;
        self.layers
            .as_ref()
            .expect("WebSocket has layers")
            .borrow_mut()
            .ws = Some(layer);
        Ok(mqtt)
    }

    /// Sends MQTT bytes; gives the buffer back.
    pub async fn send(&mut self, buf: BytesMut) -> Result<BytesMut> {
        let (res, buf) = send(
            &mut self.stream,
            self.layers.as_deref(),
            &mut self.wire,
            buf,
        )
        .await;
        res.map(|()| buf)
    }

    /// Sends what the layers owe the broker.
    async fn flush(&mut self) -> Result<()> {
        self.send(BytesMut::new()).await.map(drop)
    }

    /// Appends MQTT bytes to `buf`; `Ok(0)`: the broker closed.
    pub async fn recv(&mut self, buf: BytesMut, capacity: usize) -> (Result<usize>, BytesMut) {
        let capacity = if self.layers.is_some() {
            capacity.max(HANDSHAKE_READ)
        } else {
            capacity
        };
        let (res, buf) = recv(
            &mut self.stream,
            self.layers.as_deref(),
            &mut self.raw,
            buf,
            capacity,
        )
        .await;
        if res.is_ok() && self.wants_write() {
            if let Err(e) = self.flush().await {
                return (Err(e), buf);
            }
        }
        (res, buf)
    }

    fn wants_write(&self) -> bool {
        self.layers
            .as_ref()
            .is_some_and(|l| l.borrow().wants_write())
    }

    /// Sends `last` (a DISCONNECT) and the layers' goodbyes, then half-closes.
    pub async fn close(mut self, last: BytesMut) -> Result<()> {
        close(
            &mut self.stream,
            self.layers.as_deref(),
            &mut self.wire,
            last,
        )
        .await
    }

    /// The reader's and the writer's halves, sharing the layers.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        let (rd, wr) = self.stream.into_split();
        (
            ReadHalf {
                rd,
                layers: self.layers.clone(),
                raw: BytesMut::new(),
            },
            WriteHalf {
                wr,
                layers: self.layers,
                wire: Vec::new(),
            },
        )
    }
}

/// The reading half of an established connection.
pub struct ReadHalf {
    rd: OwnedReadHalf<TcpStream>,
    layers: Option<Shared>,
    /// Socket bytes before the layers decode them (unused on plain TCP).
    raw: BytesMut,
}

impl ReadHalf {
    /// Appends MQTT bytes to the free tail of `buf` (grown to `capacity` if
    /// short); `Ok(0)`: the broker closed.
    pub async fn read(&mut self, buf: BytesMut, capacity: usize) -> (Result<usize>, BytesMut) {
        recv(
            &mut self.rd,
            self.layers.as_deref(),
            &mut self.raw,
            buf,
            capacity,
        )
        .await
    }

    /// The layers owe the broker something (a pong, a TLS alert or key
    /// update) that the writer should send.
    pub fn wants_write(&self) -> bool {
        self.layers
            .as_ref()
            .is_some_and(|l| l.borrow().wants_write())
    }
}

/// The writing half of an established connection.
pub struct WriteHalf {
    wr: OwnedWriteHalf<TcpStream>,
    layers: Option<Shared>,
    /// Encoded bytes on their way out (unused on plain TCP).
    wire: Vec<u8>,
}

impl WriteHalf {
    /// Writes `buf` (MQTT bytes; empty to send only what the layers owe);
    /// gives it back for reuse.
    pub async fn write(&mut self, buf: BytesMut) -> (Result<()>, BytesMut) {
        send(&mut self.wr, self.layers.as_deref(), &mut self.wire, buf).await
    }

    pub fn wants_write(&self) -> bool {
        self.layers
            .as_ref()
            .is_some_and(|l| l.borrow().wants_write())
    }

    /// Sends `last` (a DISCONNECT) and the layers' goodbyes, then half-closes.
    pub async fn close(mut self, last: BytesMut) -> Result<()> {
        close(&mut self.wr, self.layers.as_deref(), &mut self.wire, last).await
    }
}

#[cfg(test)]
mod tests {
    //! The layers over real loopback sockets: a Link opens (TLS handshake,
    //! WebSocket upgrade), splits, and talks to a tungstenite server on a
    //! thread of its own, which plays the broker.

    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use rustls::{ServerConnection, StreamOwned};
    use tungstenite::handshake::server::{ErrorResponse, Request, Response};
    use tungstenite::http::HeaderValue;
    use tungstenite::protocol::frame::coding::CloseCode;
    use tungstenite::Message;

    use super::tls::tests::{server_config, Ca};
    use super::tls::{Pem, TlsSetup};
    use super::*;

    /// How long the server waits for the client: a bound against a hang.
    const PATIENCE: Duration = Duration::from_secs(30);

    #[allow(clippy::result_large_err)]
    fn mqtt(_: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
        response
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        Ok(response)
    }

    /// The broker: takes the upgrade, waits for one binary message, sends a
    /// ping and the message back in two frames, then reads until the client
    /// closes. Returns whether the ping was answered.
    fn serve<S: Read + Write>(stream: S) -> bool {
        let mut ws = tungstenite::accept_hdr(stream, mqtt).expect("the upgrade");
        let got = loop {
            if let Message::Binary(b) = ws.read().expect("the client's message") {
                break b;
            }
        };
        ws.send(Message::Ping(Bytes::from_static(b"hb"))).unwrap();
        ws.send(Message::Binary(got.slice(..2))).unwrap();
        ws.send(Message::Binary(got.slice(2..))).unwrap();
        let mut ponged = false;
        loop {
            match ws.read() {
                Ok(Message::Pong(p)) => ponged = &p[..] == b"hb",
                Ok(Message::Close(f)) => {
                    assert_eq!(f.map(|f| f.code), Some(CloseCode::Normal));
                }
                Ok(_) => {}
                Err(_) => return ponged,
            }
        }
    }

    fn client(transport: Transport, address: SocketAddr) {
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (mut link, early) = Link::open(&transport, address, "127.0.0.1").await.unwrap();
            link.send(BytesMut::from(&b"hello"[..])).await.unwrap();
            let (mut rd, mut wr) = link.into_split();
            let mut buf = early;
            while buf.len() < 5 {
                let (res, b) = rd.read(buf, 256).await;
                buf = b;
                assert!(res.unwrap() > 0, "the server closed early");
                if rd.wants_write() {
                    // What the writer task does when the reader wakes it.
                    let (res, _) = wr.write(BytesMut::new()).await;
                    res.unwrap();
                }
            }
            assert_eq!(&buf[..], b"hello");
            wr.close(BytesMut::new()).await.unwrap();
            let (res, _) = rd.read(BytesMut::new(), 256).await;
            assert_eq!(res.unwrap(), 0, "the server answers our close and hangs up");
        });
    }

    fn listen() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        (listener, address)
    }

    #[test]
    fn websocket_link_over_a_socket() {
        let (listener, address) = listen();
        let server = std::thread::spawn(move || {
            let (socket, _) = listener.accept().unwrap();
            socket.set_read_timeout(Some(PATIENCE)).unwrap();
            serve(socket)
        });
        let transport = Transport {
            tls: None,
            ws_path: Some("/mqtt".into()),
        };
        client(transport, address);
        assert!(server.join().unwrap(), "the ping was not answered");
    }

    #[test]
    fn secure_websocket_link_over_a_socket() {
        let ca = Ca::new("test ca");
        let (cert, key) = ca.issue(&["127.0.0.1"]);
        let config: Arc<rustls::ServerConfig> = server_config(&cert, &key, None);
        let (listener, address) = listen();
        let server = std::thread::spawn(move || {
            let (socket, _) = listener.accept().unwrap();
            socket.set_read_timeout(Some(PATIENCE)).unwrap();
            let tls = ServerConnection::new(config).unwrap();
            serve(StreamOwned::new(tls, socket))
        });
        let pem = Pem {
            ca: Some(ca.pem.as_bytes()),
            ..Pem::default()
        };
        let transport = Transport {
            tls: Some(TlsSetup::from_pem(&pem, None).unwrap()),
            ws_path: Some("/mqtt".into()),
        };
        assert_eq!(transport.kind(), "wss");
        client(transport, address);
        assert!(server.join().unwrap(), "the ping was not answered");
    }
}
