//! From a freshly accepted socket to an [`Accepted`] connection: read and check
//! its CONNECT, refuse what must be refused, and serve it here or hand it to
//! the core that owns its client id.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::connection;
use super::context::Ctx;
use super::mesh::{Handoff, Parcel};
use super::Shared;
use crate::codec::{
    decode, encode, encode_with_reason, ConnAck, Connect, DecodeError, Packet, Properties, Protocol,
};
use crate::router::owner_core;
use crate::session::{check_connect, ClientParams, Refusal};

/// Smallest read buffer: what a connection holds while its read is pending.
pub const MIN_READ: usize = 512;

/// A connection whose CONNECT was read and accepted, ready to be served by the
/// core that owns its client id.
#[derive(Debug)]
pub struct Accepted<S> {
    pub stream: S,
    pub peer: SocketAddr,
    pub connect: Box<Connect>,
    pub client_id: Arc<str>,
    /// True when the broker assigned the id (CONNACK must carry it in 5.0).
    pub assigned_id: bool,
    /// Bytes read after the CONNECT frame.
    pub leftover: BytesMut,
}

impl<S> Accepted<S> {
    /// Takes the stream out, to be converted and put back with [`Accepted::with_stream`].
    fn split(self) -> (S, Accepted<()>) {
        let Accepted {
            stream,
            peer,
            connect,
            client_id,
            assigned_id,
            leftover,
        } = self;
        let rest = Accepted {
            stream: (),
            peer,
            connect,
            client_id,
            assigned_id,
            leftover,
        };
        (stream, rest)
    }
}

impl Accepted<()> {
    fn with_stream<T>(self, stream: T) -> Accepted<T> {
        Accepted {
            stream,
            peer: self.peer,
            connect: self.connect,
            client_id: self.client_id,
            assigned_id: self.assigned_id,
            leftover: self.leftover,
        }
    }
}

/// A connection's place in `max_connections`, released when dropped.
pub struct ConnectionSlot(Arc<Shared>);

impl ConnectionSlot {
    /// Takes a slot, or `None` when the broker is full.
    fn claim(shared: &Arc<Shared>) -> Option<ConnectionSlot> {
        let open = shared.connections.fetch_add(1, Ordering::Relaxed);
        let slot = ConnectionSlot(shared.clone());
        (open < shared.config.limits.max_connections).then_some(slot)
    }

    /// Takes a slot whatever the count: a handed-over connection was already
    /// admitted by the core that accepted it.
    fn admitted(shared: &Arc<Shared>) -> ConnectionSlot {
        shared.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionSlot(shared.clone())
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A freshly accepted socket: read its CONNECT, then serve it here or hand it to
/// the core that owns its client id.
pub async fn accept(ctx: Rc<Ctx>, stream: TcpStream, peer: SocketAddr) {
    let Some(slot) = ConnectionSlot::claim(&ctx.shared) else {
        ctx.count(|c| c.refused_max_connections += 1);
        tracing::warn!(%peer, "refused: max_connections reached");
        return;
    };
    let _ = stream.set_nodelay(true);
    let mut stream = stream;
    let mut buf = BytesMut::with_capacity(MIN_READ);
    let limit = ctx.shared.config.limits.connect_timeout;
    let max = ctx.shared.config.limits.max_packet_size;
    let read = read_connect(&ctx, &mut stream, &mut buf, max);
    let connect = match monoio::time::timeout(limit, read).await {
        Ok(Ok(connect)) => connect,
        Ok(Err(err)) => return refuse_malformed(&ctx, stream, peer, err).await,
        Err(_) => {
            ctx.count(|c| c.connects_refused += 1);
            tracing::info!(%peer, "closed: no CONNECT within connect_timeout [MQTT-3.1.4]");
            return;
        }
    };
    if let Err(refusal) = check_connect(&connect, &ctx.shared.config.limits) {
        return refuse(&ctx, stream, peer, &connect, refusal).await;
    }
    if let Err(code) = ctx.shared.auth.authenticate(&connect) {
        let refusal = Refusal {
            code: Some(code),
            rule: "not authorized (allow_anonymous is false and no username was given)",
        };
        return refuse(&ctx, stream, peer, &connect, refusal).await;
    }
    let (client_id, assigned_id) = client_id_for(&ctx, &connect);
    let owner = owner_core(&client_id, ctx.shared.config.cores);
    let accepted = Accepted {
        stream,
        peer,
        connect,
        client_id,
        assigned_id,
        leftover: buf,
    };
    if owner != ctx.id {
        drop(slot); // the owner takes its own
        return hand_off(&ctx, owner, accepted);
    }
    // A task of its own: the CONNECT-reading state above is freed now, not held
    // for the connection's lifetime.
    monoio::spawn(connection::serve(ctx, accepted, slot));
}

/// A connection handed over by another core.
pub async fn adopt(ctx: Rc<Ctx>, h: Handoff) {
    let slot = ConnectionSlot::admitted(&ctx.shared);
    let (stream, rest) = h.split();
    match TcpStream::from_std(stream) {
        Ok(stream) => connection::serve(ctx, rest.with_stream(stream), slot).await,
        Err(e) => tracing::warn!(peer = %rest.peer, error = %e, "handoff failed"),
    }
}

/// Reads until one whole first packet is in `buf`; it must be a CONNECT.
async fn read_connect<S: AsyncReadRent>(
    ctx: &Ctx,
    stream: &mut S,
    buf: &mut BytesMut,
    max_packet_size: u32,
) -> Result<Box<Connect>, DecodeError> {
    loop {
        match decode(buf, Protocol::V3_1_1, max_packet_size)? {
            Some(Packet::Connect(c)) => return Ok(c),
            Some(_) => return Err(DecodeError::NotConnect),
            None => {}
        }
        buf.reserve(MIN_READ);
        let (res, b) = stream.read(connection::spare_of(std::mem::take(buf))).await;
        *buf = b.into_inner();
        match res {
            Ok(0) | Err(_) => return Err(DecodeError::Truncated("CONNECT")),
            Ok(n) => ctx.count(|c| c.bytes_received += n as u64),
        }
    }
}

/// A broken first packet: answer what the spec allows, log, close.
async fn refuse_malformed<S: AsyncWriteRent>(
    ctx: &Ctx,
    mut stream: S,
    peer: SocketAddr,
    err: DecodeError,
) {
    ctx.count(|c| c.connects_refused += 1);
    if let DecodeError::UnsupportedProtocolLevel(_) = err {
        // [MQTT-3.1.2-2]: CONNACK 0x01, then close.
        let mut out = BytesMut::new();
        let ack = ConnAck {
            session_present: false,
            code: 1,
            properties: Properties::default(),
        };
        encode(&Packet::ConnAck(ack), Protocol::V3_1_1, &mut out);
        let _ = stream.write_all(out).await;
    }
    if !matches!(err, DecodeError::Truncated("CONNECT")) {
        tracing::info!(%peer, rule = %err, "closed before CONNECT completed");
    }
}

async fn refuse<S: AsyncWriteRent>(
    ctx: &Ctx,
    mut stream: S,
    peer: SocketAddr,
    c: &Connect,
    r: Refusal,
) {
    ctx.count(|c| c.connects_refused += 1);
    tracing::info!(%peer, client_id = c.client_id_str(), rule = r.rule, "CONNECT refused");
    if let Some(code) = r.code {
        let max = ClientParams::from_connect(c, &ctx.shared.config.limits).maximum_packet_size;
        let connack = |properties| {
            Packet::ConnAck(ConnAck {
                session_present: false,
                code: code.byte(c.protocol),
                properties,
            })
        };
        let out = encode_with_reason(connack, r.rule, c.protocol, max);
        let _ = stream.write_all(out).await;
    }
}

/// The client's id, or one assigned by the broker [MQTT-3.1.3-6] chosen so that
/// this core owns it (no handoff needed).
fn client_id_for(ctx: &Ctx, c: &Connect) -> (Arc<str>, bool) {
    if !c.client_id.is_empty() {
        return (Arc::from(c.client_id_str()), false);
    }
    let cores = ctx.shared.config.cores;
    loop {
        let n = ctx.next_conn_id();
        let id = format!(
            "ringmq-{:x}-{:x}",
            ctx.shared.started.elapsed().as_nanos() as u64,
            n
        );
        if owner_core(&id, cores) == ctx.id {
            return (Arc::from(id), true);
        }
    }
}

/// Sends the connection to `owner` as a plain std socket.
fn hand_off(ctx: &Rc<Ctx>, owner: usize, accepted: Accepted<TcpStream>) {
    let (stream, rest) = accepted.split();
    let fd = stream.into_raw_fd();
    // SAFETY: `into_raw_fd` released monoio's ownership of this open socket (no I/O
    // is in flight on it: the CONNECT read completed), so this is its only owner.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let handoff = rest.with_stream(stream);
    ctx.count(|c| c.handoffs += 1);
    ctx.send_to(owner, Parcel::Handoff(Box::new(handoff)));
}
