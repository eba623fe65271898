//! A connection is a thin adapter: read into a buffer, decode every complete
//! frame, hand packets to the router, and let a writer task drain the session's
//! output in one write per wake-up.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, CancelableAsyncReadRent, Splitable};
use monoio::net::TcpStream;

use super::context::{ConnSignals, Ctx};
use crate::codec::{
    decode, encode, reason, ConnAck, Connect, DecodeError, Packet, Properties, Property, Protocol,
};
use crate::router::{owner_core, CloseReason, Followup, Handoff, MeshMsg, PendingSubscribe};
use crate::session::{check_connect, ClientParams, Refusal};

/// Releases the connection's slot in `max_connections` when the task ends.
struct ConnectionSlot(Arc<super::Shared>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes a slot in `max_connections`, or `None` when the broker is full.
fn claim_slot(ctx: &Ctx) -> Option<ConnectionSlot> {
    let shared = &ctx.shared;
    let open = shared.connections.fetch_add(1, Ordering::Relaxed);
    let slot = ConnectionSlot(shared.clone());
    (open < shared.config.limits.max_connections).then_some(slot)
}

/// A freshly accepted socket: read its CONNECT, then serve it here or hand it to
/// the core that owns its client id.
pub async fn accept(ctx: Rc<Ctx>, stream: TcpStream, peer: SocketAddr) {
    let Some(slot) = claim_slot(&ctx) else {
        ctx.core.borrow_mut().counters.refused_max_connections += 1;
        tracing::warn!(%peer, "refused: max_connections reached");
        return;
    };
    let _ = stream.set_nodelay(true);
    let mut stream = stream;
    let mut buf = BytesMut::with_capacity(MIN_READ);
    let limit = ctx.shared.config.limits.connect_timeout;
    let connect =
        match monoio::time::timeout(limit, read_connect(&mut stream, &mut buf, &ctx)).await {
            Ok(Ok(connect)) => connect,
            Ok(Err(err)) => return refuse_malformed(&ctx, stream, peer, err).await,
            Err(_) => {
                ctx.core.borrow_mut().counters.connects_refused += 1;
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
    let (client_id, assigned) = client_id_for(&ctx, &connect);
    let owner = owner_core(&client_id, ctx.shared.config.cores);
    if owner != ctx.id {
        drop(slot); // the owner claims its own slot
        return hand_off(&ctx, owner, stream, peer, connect, client_id, assigned, buf).await;
    }
    // A task of its own: the CONNECT-reading state above is freed now, not held
    // for the connection's lifetime.
    monoio::spawn(serve(
        ctx, stream, peer, connect, client_id, assigned, buf, slot,
    ));
}

/// A connection handed over by another core.
pub async fn adopt(ctx: Rc<Ctx>, h: Handoff) {
    ctx.shared.connections.fetch_add(1, Ordering::Relaxed);
    let slot = ConnectionSlot(ctx.shared.clone());
    let stream = match TcpStream::from_std(h.stream) {
        Ok(s) => s,
        Err(e) => return tracing::warn!(peer = %h.peer, error = %e, "handoff failed"),
    };
    serve(
        ctx,
        stream,
        h.peer,
        h.connect,
        h.client_id,
        h.assigned_id,
        h.leftover,
        slot,
    )
    .await;
}

async fn read_connect(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    ctx: &Ctx,
) -> Result<Box<Connect>, DecodeError> {
    let max = ctx.shared.config.limits.max_packet_size;
    loop {
        match decode(buf, Protocol::V3_1_1, max)? {
            Some(Packet::Connect(c)) => return Ok(c),
            Some(_) => return Err(DecodeError::NotConnect),
            None => {}
        }
        buf.reserve(MIN_READ);
        let (res, b) = stream.read(spare_of(std::mem::take(buf))).await;
        *buf = b.into_inner();
        match res {
            Ok(0) | Err(_) => return Err(DecodeError::Truncated("CONNECT")),
            Ok(_) => {}
        }
    }
}

/// A broken first packet: answer what the spec allows, log, close.
async fn refuse_malformed(ctx: &Ctx, mut stream: TcpStream, peer: SocketAddr, err: DecodeError) {
    ctx.core.borrow_mut().counters.connects_refused += 1;
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

async fn refuse(ctx: &Ctx, mut stream: TcpStream, peer: SocketAddr, c: &Connect, r: Refusal) {
    ctx.core.borrow_mut().counters.connects_refused += 1;
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

/// Encodes `make(properties)` with a 5.0 reason string, or without it when the
/// string would push the packet past the client's Maximum Packet Size
/// [MQTT-3.1.2-25].
pub(super) fn encode_with_reason(
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

#[allow(clippy::too_many_arguments)]
async fn hand_off(
    ctx: &Rc<Ctx>,
    owner: usize,
    stream: TcpStream,
    peer: SocketAddr,
    connect: Box<Connect>,
    client_id: Arc<str>,
    assigned_id: bool,
    leftover: BytesMut,
) {
    let fd = stream.into_raw_fd();
    // SAFETY: `into_raw_fd` released monoio's ownership of this open socket (no I/O
    // is in flight on it: the CONNECT read completed), so this is its only owner.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let handoff = Handoff {
        stream,
        peer,
        connect,
        client_id,
        assigned_id,
        leftover,
    };
    let mut core = ctx.core.borrow_mut();
    core.counters.handoffs += 1;
    core.push_to(owner, MeshMsg::Handoff(Box::new(handoff)));
    drop(core);
    ctx.apply_effects();
}

/// Serves a connection whose session lives on this core.
#[allow(clippy::too_many_arguments)]
async fn serve(
    ctx: Rc<Ctx>,
    stream: TcpStream,
    peer: SocketAddr,
    connect: Box<Connect>,
    client_id: Arc<str>,
    assigned: bool,
    buf: BytesMut,
    _slot: ConnectionSlot,
) {
    let conn = ctx.next_conn_id();
    let protocol = connect.protocol;
    let (read_half, write_half) = stream.into_split();
    let now = ctx.now();
    let attached = ctx
        .core
        .borrow_mut()
        .connect(&connect, client_id.clone(), conn, now, assigned);
    // The CONNECT's bytes share the read buffer's allocation: release them so the
    // buffer can be reused in place.
    drop(connect);
    let max_out = ctx
        .core
        .borrow()
        .session(attached.key)
        .map_or(u32::MAX, |s| s.client_maximum_packet_size());
    let signals = Rc::new(ConnSignals::new(
        attached.key,
        conn,
        protocol,
        write_half,
        max_out,
    ));
    ctx.conns.borrow_mut().insert(conn, signals.clone());
    ctx.apply_effects();
    tracing::debug!(%peer, client_id = &*client_id, session_present = attached.session_present, "connected");
    let link = Link {
        ctx: ctx.clone(),
        signals: signals.clone(),
    };
    link.read_loop(read_half, buf, &client_id).await;
    super::writer::finish_writes(&ctx, &signals).await;
    ctx.core
        .borrow_mut()
        .disconnected(attached.key, conn, ctx.now());
    ctx.conns.borrow_mut().remove(&conn);
    ctx.apply_effects();
}

/// The unfilled part of `buf`: monoio reads into a buffer from its start, so a
/// read that must append after a partial frame goes through this view.
fn spare_of(buf: BytesMut) -> SliceMut<BytesMut> {
    let (len, cap) = (buf.len(), buf.capacity());
    buf.slice_mut(len..cap)
}

/// Smallest read buffer: what an idle connection holds while its read is pending.
const MIN_READ: usize = 512;

/// Adapts each connection's read size: doubles while reads fill the buffer (a busy
/// publisher gets big reads, few syscalls), halves back when they don't (an idle
/// connection holds only [`MIN_READ`] bytes).
struct ReadSizer {
    next: usize,
    max: usize,
}

impl ReadSizer {
    fn new(max: usize) -> ReadSizer {
        ReadSizer {
            next: MIN_READ,
            max: max.max(MIN_READ),
        }
    }

    /// Makes room for the next read; returns the room made.
    fn prepare(&self, buf: &mut BytesMut) -> usize {
        if buf.is_empty() && buf.capacity() > 2 * self.next {
            *buf = BytesMut::new();
        }
        buf.reserve(self.next);
        buf.capacity() - buf.len()
    }

    fn observe(&mut self, read: usize, room: usize) {
        if read == room {
            self.next = (self.next * 2).min(self.max);
        } else if read < self.next / 4 {
            self.next = (self.next / 2).max(MIN_READ);
        }
    }
}

/// What [`Link::step`] stopped at.
enum Step {
    Drained,
    Disconnect,
    Violation,
    Subscribe(Box<PendingSubscribe>),
}

struct Link {
    ctx: Rc<Ctx>,
    signals: Rc<ConnSignals>,
}

type ReadHalf = monoio::io::OwnedReadHalf<TcpStream>;

impl Link {
    /// Reads until the connection ends (DISCONNECT, violation, close or error).
    async fn read_loop(&self, mut rd: ReadHalf, mut buf: BytesMut, client_id: &str) {
        let mut sizer = ReadSizer::new(self.ctx.shared.config.read_buffer_size);
        loop {
            if self.process(&mut buf, client_id).await {
                return;
            }
            if let Some(reason) = self.signals.close.get() {
                return self.log_close(client_id, reason);
            }
            let spare = sizer.prepare(&mut buf);
            let handle = self.signals.cancel_handle();
            let (res, b) = rd.cancelable_read(spare_of(buf), handle).await;
            buf = b.into_inner();
            match res {
                Ok(0) => return,
                Ok(n) => {
                    sizer.observe(n, spare);
                    self.ctx.core.borrow_mut().counters.bytes_received += n as u64;
                }
                Err(e) => {
                    if let Some(reason) = self.signals.close.get() {
                        self.log_close(client_id, reason);
                    } else {
                        tracing::debug!(client_id, error = %e, "read failed");
                    }
                    return;
                }
            }
        }
    }

    fn log_close(&self, client_id: &str, reason: CloseReason) {
        match reason {
            CloseReason::KeepAliveTimeout => {
                self.ctx.core.borrow_mut().counters.keepalive_timeouts += 1;
                tracing::info!(client_id, "closed: keep-alive expired [MQTT-3.1.2-24]");
                self.set_final_disconnect(reason::KEEP_ALIVE_TIMEOUT, "keep-alive expired");
            }
            CloseReason::SessionTakenOver => {
                tracing::info!(client_id, "closed: session taken over by a new connection");
                self.set_final_disconnect(reason::SESSION_TAKEN_OVER, "session taken over");
            }
            CloseReason::ServerShutdown => {
                self.set_final_disconnect(reason::SERVER_SHUTTING_DOWN, "server shutting down");
            }
            CloseReason::WriteFailed => tracing::debug!(client_id, "closed: write failed"),
        }
    }

    /// Queues the 5.0 DISCONNECT the writer sends last, with the rule as its
    /// reason string (5.0 section 3.14.2.2.3).
    fn set_final_disconnect(&self, code: u8, text: &str) {
        if self.signals.protocol.is_v5() {
            *self.signals.final_disconnect.borrow_mut() = Some((code, text.into()));
        }
    }

    /// Decodes and handles every complete frame in `buf`. True: the connection
    /// ends (DISCONNECT or a violation).
    /// The per-packet work is synchronous ([`Link::step`]); only the rare waits
    /// (a subscription barrier, a full mesh queue) are awaited, which keeps this
    /// task's state, held by every idle connection, small.
    async fn process(&self, buf: &mut BytesMut, client_id: &str) -> bool {
        // One clock read per read, not per packet.
        let now = self.ctx.now();
        loop {
            match self.step(buf, client_id, now) {
                Step::Drained => break,
                Step::Disconnect | Step::Violation => return true,
                Step::Subscribe(mut pending) => {
                    if let Some(barrier) = pending.barrier.take() {
                        self.ctx.apply_effects();
                        let _ = barrier.await;
                    }
                    let mut core = self.ctx.core.borrow_mut();
                    core.complete_subscribe(self.signals.key, *pending, self.ctx.now());
                }
            }
        }
        self.ctx.apply_effects();
        if self.ctx.core.borrow().has_outgoing() {
            // Boxed: rare, and its timer would otherwise enlarge every connection.
            Box::pin(self.ctx.wait_outbox_drained()).await;
        }
        false
    }

    /// Handles frames until the buffer is drained or something must be awaited.
    fn step(&self, buf: &mut BytesMut, client_id: &str, now: u64) -> Step {
        let max = self.ctx.shared.config.limits.max_packet_size;
        loop {
            let packet = match decode(buf, self.signals.protocol, max) {
                Ok(Some(p)) => p,
                Ok(None) => return Step::Drained,
                Err(e) => {
                    self.violation(client_id, &e.to_string(), e.reason_code());
                    return Step::Violation;
                }
            };
            let mut followup = Followup::default();
            let result = self.ctx.core.borrow_mut().handle_packet(
                self.signals.key,
                now,
                packet,
                &mut followup,
            );
            if let Err(v) = result {
                self.violation(client_id, &v.to_string(), v.reason_code());
                return Step::Violation;
            }
            if let Some(pending) = followup.subscribe {
                return Step::Subscribe(Box::new(pending));
            }
            if followup.disconnect {
                self.ctx.apply_effects();
                return Step::Disconnect;
            }
        }
    }

    fn violation(&self, client_id: &str, rule: &str, reason: u8) {
        self.ctx.core.borrow_mut().counters.protocol_violations += 1;
        tracing::warn!(client_id, rule, "closed: protocol violation");
        self.set_final_disconnect(reason, rule);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Disconnect;

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
