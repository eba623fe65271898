//! TCP with TLS and/or WebSocket in between: the layers' state is shared by
//! the reader and the writer through one `Rc<RefCell<_>>`, borrowed only
//! between awaits, never across one.

use std::cell::RefCell;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

use bytes::{BufMut, BytesMut};
use monoio::io::{
    AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent, Canceller,
    OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use rustls::ServerConnection;
use tungstenite::WebSocket;

use super::ws::{self, Duplex, Handshake, WsSettings};
use super::{read_tcp, release, Portable, ReadHalf, Transport, WriteHalf, WritePrompt};

/// Smallest and largest TCP read of a layered connection: idle ones hold the
/// small buffer in their pending read; a busy one grows to a full TLS record.
const MIN_RAW_READ: usize = 512;
const MAX_RAW_READ: usize = 17 * 1024;
/// Above this, a drained output buffer is released rather than kept.
const KEEP_RAW: usize = 64 * 1024;

/// The protocol state between TCP and MQTT.
pub struct Layers {
    tls: Option<Box<ServerConnection>>,
    ws: Option<Box<WebSocket<Duplex>>>,
    /// Bytes that passed every layer and wait to be read (only while no
    /// WebSocket takes them: plain TCP under a pending upgrade, or TLS, whose
    /// plaintext otherwise stays in rustls until read).
    plain: BytesMut,
    /// The client ended the TLS session or the WebSocket.
    peer_closed: bool,
    /// The WebSocket close frame went out: no data frame may follow.
    ws_close_sent: bool,
}

impl Layers {
    fn new(tls: Option<ServerConnection>) -> Layers {
        let tls = tls.map(|mut conn| {
            // What the writer hands over is drained at once (see `encode`),
            // so rustls' own buffer caps would only split writes.
            conn.set_buffer_limit(None);
            Box::new(conn)
        });
        Layers {
            tls,
            ws: None,
            plain: BytesMut::new(),
            peer_closed: false,
            ws_close_sent: false,
        }
    }

    pub fn tls(&self) -> Option<&ServerConnection> {
        self.tls.as_deref()
    }

    /// Takes in everything TCP delivered: decrypts, then de-frames.
    fn feed(&mut self, raw: &mut BytesMut) -> io::Result<()> {
        if let Some(tls) = &mut self.tls {
            let into = match &mut self.ws {
                Some(ws) => &mut ws.get_mut().incoming,
                None => &mut self.plain,
            };
            let mut rd: &[u8] = raw;
            while !rd.is_empty() {
                if tls.read_tls(&mut rd)? == 0 {
                    break;
                }
                let state = tls.process_new_packets().map_err(invalid)?;
                if state.peer_has_closed() {
                    self.peer_closed = true;
                }
                // Record by record: rustls holds at most 16 KiB of decrypted
                // plaintext and refuses more until it is taken.
                drain_plaintext(tls, into)?;
            }
            raw.clear();
        } else {
            match &mut self.ws {
                Some(ws) => ws.get_mut().incoming.extend_from_slice(raw),
                None => self.plain.extend_from_slice(raw),
            }
            raw.clear();
        }
        Ok(())
    }

    /// Moves the MQTT bytes that passed every layer into `out`.
    fn take_plain(&mut self, out: &mut BytesMut) -> io::Result<usize> {
        let before = out.len();
        if !self.plain.is_empty() {
            out.extend_from_slice(&self.plain);
            self.plain.clear();
        }
        if let Some(ws) = &mut self.ws {
            if ws::read_messages(ws, out)? {
                self.peer_closed = true;
            }
        }
        Ok(out.len() - before)
    }

    /// Frames and encrypts `plain`, then any protocol output waiting, onto
    /// the end of `raw`. MQTT bytes go before a WebSocket close frame: they
    /// answer packets that came before the client's close (its DISCONNECT's
    /// PUBACKs), and nothing may follow a close (RFC 6455 5.5.1), so bytes
    /// after it are dropped.
    fn encode(&mut self, plain: &[u8], raw: &mut BytesMut) -> io::Result<()> {
        let mut head = Vec::new();
        let mut tail = Vec::new();
        let mut plain = plain;
        if let Some(ws) = &mut self.ws {
            if self.ws_close_sent {
                plain = &[];
            }
            if !plain.is_empty() {
                ws::data_frame_header(plain.len(), &mut head);
            }
            ws::take_control_output(ws, &mut tail);
            self.ws_close_sent |= !ws.can_write();
        }
        match &mut self.tls {
            Some(tls) => {
                tls.writer().write_all(&head)?;
                tls.writer().write_all(plain)?;
                tls.writer().write_all(&tail)?;
                let mut out = raw.writer();
                while tls.wants_write() {
                    tls.write_tls(&mut out)?;
                }
            }
            None => {
                raw.put_slice(&head);
                raw.put_slice(plain);
                raw.put_slice(&tail);
            }
        }
        Ok(())
    }

    fn has_pending(&self) -> bool {
        self.ws.as_deref().is_some_and(ws::has_control_output)
            || self.tls.as_deref().is_some_and(|t| t.wants_write())
    }

    /// Queues the orderly end: the WebSocket close frame, then close_notify.
    fn close(&mut self) {
        if let Some(ws) = &mut self.ws {
            ws::close(ws);
        }
        if let Some(tls) = &mut self.tls {
            tls.send_close_notify();
        }
    }
}

/// Moves the plaintext rustls decrypted into `into`.
fn drain_plaintext(tls: &mut ServerConnection, into: &mut BytesMut) -> io::Result<()> {
    use std::io::BufRead;
    let mut reader = tls.reader();
    loop {
        let chunk = match reader.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            // The client closed without close_notify: what came before counts.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(());
        }
        let n = chunk.len();
        into.extend_from_slice(chunk);
        reader.consume(n);
    }
}

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Adapts a layered connection's TCP read size.
#[derive(Debug)]
struct RawReads {
    next: usize,
}

impl RawReads {
    fn prepare(&self, raw: &mut BytesMut) -> usize {
        if raw.is_empty() && raw.capacity() > 2 * self.next {
            *raw = BytesMut::new();
        }
        raw.reserve(self.next);
        raw.capacity() - raw.len()
    }

    fn observe(&mut self, read: usize, room: usize) {
        if read == room {
            self.next = (self.next * 2).min(MAX_RAW_READ);
        } else if read < self.next / 4 {
            self.next = (self.next / 2).max(MIN_RAW_READ);
        }
    }
}

impl Default for RawReads {
    fn default() -> Self {
        RawReads { next: MIN_RAW_READ }
    }
}

/// The reading side's own state: the TCP bytes not yet fed to the layers, the
/// read size, and whom to prompt when reading owes the client a reply.
#[derive(Default)]
struct Inbound {
    raw: BytesMut,
    sizes: RawReads,
    prompt: Option<WritePrompt>,
}

/// Reads from TCP through the layers until MQTT bytes come out (or the end).
async fn read_through<R: CancelableAsyncReadRent>(
    tcp: &mut R,
    inbound: &mut Inbound,
    layers: &RefCell<Layers>,
    mut buf: BytesMut,
    cancel: CancelHandle,
) -> (io::Result<usize>, BytesMut) {
    loop {
        match layers.borrow_mut().take_plain(&mut buf) {
            Ok(0) => {}
            Ok(n) => return (Ok(n), buf),
            Err(e) => return (Err(e), buf),
        }
        if layers.borrow().peer_closed {
            return (Ok(0), buf);
        }
        // What came so far may owe the client a reply (a pong) while no MQTT
        // bytes did: the writer sends it while this waits for more.
        if let Some(prompt) = inbound
            .prompt
            .as_ref()
            .filter(|_| layers.borrow().has_pending())
        {
            prompt();
        }
        let room = inbound.sizes.prepare(&mut inbound.raw);
        let (res, r) = read_tcp(tcp, std::mem::take(&mut inbound.raw), cancel.clone()).await;
        inbound.raw = r;
        match res {
            Ok(0) => return (Ok(0), buf),
            Ok(n) => inbound.sizes.observe(n, room),
            Err(e) => return (Err(e), buf),
        }
        if let Err(e) = layers.borrow_mut().feed(&mut inbound.raw) {
            return (Err(e), buf);
        }
    }
}

/// Writes `plain` through the layers.
async fn write_through<W: AsyncWriteRent>(
    tcp: &mut W,
    raw: &mut BytesMut,
    layers: &RefCell<Layers>,
    plain: BytesMut,
) -> (io::Result<()>, BytesMut) {
    if let Err(e) = layers.borrow_mut().encode(&plain, raw) {
        return (Err(e), plain);
    }
    if raw.is_empty() {
        return (Ok(()), plain);
    }
    let (res, mut out) = tcp.write_all(std::mem::take(raw)).await;
    out.clear();
    if out.capacity() <= KEEP_RAW {
        *raw = out;
    }
    (res.map(drop), plain)
}

/// A connection with TLS and/or WebSocket over TCP.
pub struct Layered {
    tcp: TcpStream,
    /// Shared (an `Rc`) only once the stream is split.
    layers: RefCell<Layers>,
    inbound: Inbound,
}

/// Why a TLS handshake or WebSocket upgrade did not complete.
#[derive(Debug)]
pub struct Refused(pub String);

impl Layered {
    /// Runs the listener's handshakes on a fresh connection: TLS (with
    /// `tls`), then the WebSocket upgrade (with `ws`).
    pub async fn accept(
        tcp: TcpStream,
        tls: Option<ServerConnection>,
        ws: Option<&WsSettings>,
    ) -> Result<Layered, Refused> {
        let mut this = Layered {
            tcp,
            layers: RefCell::new(Layers::new(tls)),
            inbound: Inbound::default(),
        };
        if this.layers.borrow().tls.is_some() {
            this.tls_handshake().await?;
        }
        if let Some(settings) = ws {
            this.ws_upgrade(settings).await?;
        }
        Ok(this)
    }

    pub fn layers(&self) -> std::cell::Ref<'_, Layers> {
        self.layers.borrow()
    }

    async fn tls_handshake(&mut self) -> Result<(), Refused> {
        loop {
            self.flush_pending().await?;
            let handshaking = self
                .layers
                .borrow()
                .tls
                .as_ref()
                .is_some_and(|t| t.is_handshaking());
            if !handshaking {
                return Ok(());
            }
            let inbound = &mut self.inbound;
            let room = inbound.sizes.prepare(&mut inbound.raw);
            let cancel = Canceller::new().handle();
            let (res, raw) =
                read_tcp(&mut self.tcp, std::mem::take(&mut inbound.raw), cancel).await;
            inbound.raw = raw;
            match res {
                Ok(0) => return Err(Refused("closed during the TLS handshake".into())),
                Ok(n) => inbound.sizes.observe(n, room),
                Err(e) => return Err(Refused(format!("TLS handshake: {e}"))),
            }
            let fed = self.layers.borrow_mut().feed(&mut inbound.raw);
            if let Err(e) = fed {
                // Let the client read the alert that says why.
                let _ = self.flush_pending().await;
                return Err(Refused(format!("TLS handshake: {e}")));
            }
        }
    }

    /// Writes what the layers want to send on their own (handshake records,
    /// an alert, the upgrade answer).
    async fn flush_pending(&mut self) -> Result<(), Refused> {
        if !self.layers.borrow().has_pending() {
            return Ok(());
        }
        let mut raw = BytesMut::new();
        let (res, _) = write_through(&mut self.tcp, &mut raw, &self.layers, BytesMut::new()).await;
        res.map_err(|e| Refused(format!("writing the handshake: {e}")))
    }

    async fn ws_upgrade(&mut self, settings: &WsSettings) -> Result<(), Refused> {
        let mut request = BytesMut::new();
        let mut upgrading = None;
        loop {
            request.reserve(MIN_RAW_READ);
            let cancel = Canceller::new().handle();
            let (res, r) = Transport::read(self, std::mem::take(&mut request), cancel).await;
            request = r;
            match res {
                Ok(0) => return Err(Refused("closed before the WebSocket upgrade".into())),
                Ok(_) => {}
                Err(e) => return Err(Refused(format!("WebSocket upgrade: {e}"))),
            }
            let step = match upgrading.take() {
                None => ws::start(settings, &mut request),
                Some(up) => ws::Upgrading::feed(up, &mut request),
            };
            match step {
                Handshake::NeedMore(up) => upgrading = Some(up),
                Handshake::Done(socket) => {
                    self.layers.borrow_mut().ws = Some(socket);
                    return self.flush_pending().await;
                }
                Handshake::Refused { answer, why } => {
                    let (_, _) = Transport::write_all(self, BytesMut::from(&answer[..])).await;
                    return Err(Refused(format!("WebSocket upgrade refused: {why}")));
                }
            }
        }
    }

    pub fn from_parts(parts: LayeredParts) -> io::Result<Layered> {
        Ok(Layered {
            tcp: TcpStream::from_std(parts.tcp)?,
            layers: RefCell::new(*parts.layers),
            inbound: Inbound {
                raw: parts.raw,
                ..Inbound::default()
            },
        })
    }
}

/// A layered connection between cores: its socket and protocol state.
pub struct LayeredParts {
    pub tcp: std::net::TcpStream,
    layers: Box<Layers>,
    raw: BytesMut,
}

impl std::fmt::Debug for LayeredParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayeredParts")
            .field("tcp", &self.tcp)
            .finish_non_exhaustive()
    }
}

impl Transport for Layered {
    type Reader = LayeredReader;
    type Writer = LayeredWriter;

    async fn read(&mut self, buf: BytesMut, cancel: CancelHandle) -> (io::Result<usize>, BytesMut) {
        read_through(&mut self.tcp, &mut self.inbound, &self.layers, buf, cancel).await
    }

    async fn write_all(&mut self, buf: BytesMut) -> (io::Result<()>, BytesMut) {
        let mut raw = BytesMut::new();
        write_through(&mut self.tcp, &mut raw, &self.layers, buf).await
    }

    fn raw_fd(&self) -> RawFd {
        self.tcp.as_raw_fd()
    }

    fn into_portable(self) -> Portable {
        Portable::Layered(LayeredParts {
            tcp: release(self.tcp),
            layers: Box::new(self.layers.into_inner()),
            raw: self.inbound.raw,
        })
    }

    fn into_halves(self) -> (LayeredReader, LayeredWriter) {
        let (rd, wr) = self.tcp.into_split();
        let layers = Rc::new(self.layers);
        let reader = LayeredReader {
            tcp: rd,
            inbound: self.inbound,
            layers: layers.clone(),
        };
        let writer = LayeredWriter {
            tcp: wr,
            raw: BytesMut::new(),
            layers,
        };
        (reader, writer)
    }
}

pub struct LayeredReader {
    tcp: OwnedReadHalf<TcpStream>,
    inbound: Inbound,
    layers: Rc<RefCell<Layers>>,
}

impl ReadHalf for LayeredReader {
    async fn read(&mut self, buf: BytesMut, cancel: CancelHandle) -> (io::Result<usize>, BytesMut) {
        read_through(&mut self.tcp, &mut self.inbound, &self.layers, buf, cancel).await
    }

    fn set_write_prompt(&mut self, make: &dyn Fn() -> WritePrompt) {
        self.inbound.prompt = Some(make());
    }
}

pub struct LayeredWriter {
    tcp: OwnedWriteHalf<TcpStream>,
    raw: BytesMut,
    layers: Rc<RefCell<Layers>>,
}

impl WriteHalf for LayeredWriter {
    async fn write_all(&mut self, buf: BytesMut) -> (io::Result<()>, BytesMut) {
        write_through(&mut self.tcp, &mut self.raw, &self.layers, buf).await
    }

    fn has_pending(&self) -> bool {
        self.layers.borrow().has_pending()
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.layers.borrow_mut().close();
        let (res, _) =
            write_through(&mut self.tcp, &mut self.raw, &self.layers, BytesMut::new()).await;
        res?;
        AsyncWriteRent::shutdown(&mut self.tcp).await
    }
}

#[cfg(test)]
mod tests {
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    use tungstenite::protocol::frame::Frame;

    use super::*;

    /// Layers over a WebSocket upgraded from a canned request.
    fn upgraded() -> Layers {
        let settings = WsSettings {
            path: "/mqtt".into(),
            max_message: 1 << 20,
        };
        let mut request = BytesMut::from(
            &b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
               Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
               Sec-WebSocket-Protocol: mqtt\r\n\r\n"[..],
        );
        let Handshake::Done(socket) = ws::start(&settings, &mut request) else {
            panic!("the upgrade should complete");
        };
        let mut layers = Layers::new(None);
        layers.ws = Some(socket);
        let mut answer = BytesMut::new();
        layers.encode(&[], &mut answer).unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 101"), "{answer:?}");
        layers
    }

    /// A frame as a client sends it (masked).
    fn from_client(mut frame: Frame, into: &mut BytesMut) {
        frame.header_mut().mask = Some([1, 2, 3, 4]);
        let mut bytes = Vec::new();
        frame.format(&mut bytes).unwrap();
        into.extend_from_slice(&bytes);
    }

    #[test]
    fn answers_to_packets_before_a_close_go_out_before_the_close_frame() {
        let mut layers = upgraded();
        let mut input = BytesMut::new();
        let pingreq = vec![0xC0, 0];
        from_client(
            Frame::message(pingreq.clone(), OpCode::Data(Data::Binary), true),
            &mut input,
        );
        from_client(Frame::close(None), &mut input);
        layers.feed(&mut input).unwrap();
        let mut mqtt = BytesMut::new();
        layers.take_plain(&mut mqtt).unwrap();
        assert_eq!(mqtt[..], pingreq[..]);
        assert!(layers.peer_closed);

        let mut raw = BytesMut::new();
        layers.encode(&[0xD0, 0], &mut raw).unwrap();
        assert_eq!(raw[..4], [0x82, 2, 0xD0, 0], "the PINGRESP frame first");
        assert_eq!(raw[4], 0x88, "then the close frame: {raw:?}");

        let mut after = BytesMut::new();
        layers.encode(&[0xD0, 0], &mut after).unwrap();
        assert!(after.is_empty(), "nothing after a close frame: {after:?}");
    }
}
