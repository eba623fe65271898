//! From a freshly accepted socket to an [`Accepted`] connection: the listener's
//! handshakes (TLS, WebSocket upgrade), then its CONNECT read and checked,
//! refused when it must be, and served here or handed to the core that owns
//! its client id. All of it within `connect_timeout`.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use monoio::io::Canceller;
use monoio::net::TcpStream;

use super::connection;
use super::context::Ctx;
use super::edge;
use super::listener::{ListenerRuntime, ListenerStats};
use super::mesh::{Handoff, Parcel};
use super::transport::{client_identity, Layered, Portable, Transport};
use super::Shared;
use crate::access::Permissions;
use crate::auth::{Credentials, Denial, Verdict};
use crate::codec::{
    decode, encode, encode_with_reason, ConnAck, Connect, ConnectCode, DecodeError, Packet,
    Properties, Protocol,
};
use crate::durable::SessionImage;
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
    /// Index of the listener it came in on.
    pub listener: usize,
    pub connect: Box<Connect>,
    pub client_id: Arc<str>,
    /// True when the broker assigned the id (CONNACK must carry it in 5.0).
    pub assigned_id: bool,
    /// What the authorizer lets this client do.
    pub permissions: Permissions,
    /// Bytes read after the CONNECT frame.
    pub leftover: BytesMut,
    /// The session another node of the cluster released for this client:
    /// the owner core adopts it before the attach.
    pub transferred: Option<Box<SessionImage>>,
}

impl<S> Accepted<S> {
    /// The same connection over another form of its stream.
    fn map_stream<T>(self, f: impl FnOnce(S) -> T) -> Accepted<T> {
        let (stream, rest) = self.split();
        rest.with_stream(f(stream))
    }

    /// Takes the stream out, to be converted and put back with
    /// [`Accepted::with_stream`].
    fn split(self) -> (S, Accepted<()>) {
        let Accepted {
            stream,
            peer,
            listener,
            connect,
            client_id,
            assigned_id,
            permissions,
            leftover,
            transferred,
        } = self;
        let rest = Accepted {
            stream: (),
            peer,
            listener,
            connect,
            client_id,
            assigned_id,
            permissions,
            leftover,
            transferred,
        };
        (stream, rest)
    }
}

impl Accepted<()> {
    fn with_stream<T>(self, stream: T) -> Accepted<T> {
        Accepted {
            stream,
            peer: self.peer,
            listener: self.listener,
            connect: self.connect,
            client_id: self.client_id,
            assigned_id: self.assigned_id,
            permissions: self.permissions,
            leftover: self.leftover,
            transferred: self.transferred,
        }
    }
}

/// A connection's place in `max_connections` and in its listener's count of
/// open connections, released when dropped.
pub struct ConnectionSlot {
    shared: Arc<Shared>,
    listener: usize,
    /// The address counted against `max_connections_per_ip`, if any.
    ip: Option<std::net::IpAddr>,
}

impl ConnectionSlot {
    /// Takes a slot, or `None` when the broker is full.
    fn claim(shared: &Arc<Shared>, listener: usize) -> Option<ConnectionSlot> {
        let open = shared.connections.load(Ordering::Relaxed);
        (open < shared.limits().max_connections).then(|| Self::admitted(shared, listener))
    }

    /// Takes a slot whatever the count: a handed-over connection was already
    /// admitted by the core that accepted it.
    fn admitted(shared: &Arc<Shared>, listener: usize) -> ConnectionSlot {
        let open = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
        shared.connections_peak.fetch_max(open, Ordering::Relaxed);
        ListenerStats::bump(&shared.listeners[listener].stats.open);
        ConnectionSlot {
            shared: shared.clone(),
            listener,
            ip: None,
        }
    }

    /// Counts the connection against its address's `max_connections_per_ip`;
    /// false when the address has that many open already.
    fn claim_ip(&mut self, ip: std::net::IpAddr) -> bool {
        let per_ip = &self.shared.per_ip;
        if !per_ip.enabled() {
            return true;
        }
        let claimed = per_ip.claim(ip);
        self.ip = claimed.then_some(ip);
        claimed
    }

    /// Counts a handed-over connection's address again (it was admitted).
    fn count_ip(&mut self, ip: std::net::IpAddr) {
        if self.shared.per_ip.enabled() {
            self.shared.per_ip.count(ip);
            self.ip = Some(ip);
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
        let stats = &self.shared.listeners[self.listener].stats;
        stats.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            self.shared.per_ip.release(ip);
        }
    }
}

/// A freshly accepted socket on listener `index`: its handshakes and CONNECT,
/// then served here or handed to the core that owns its client id.
pub async fn accept(ctx: Rc<Ctx>, stream: TcpStream, peer: SocketAddr, index: usize) {
    let listener = &ctx.shared.listeners[index];
    ListenerStats::bump(&listener.stats.accepted);
    if listener.bridge_gate {
        // A bridge of this broker: never refused for a full broker or a rate.
        let slot = ConnectionSlot::admitted(&ctx.shared, index);
        let deadline = Instant::now() + ctx.shared.limits().connect_timeout;
        let admitted = admit(&ctx, stream, peer, index, None, None, deadline).await;
        return proceed(ctx, admitted, slot);
    }
    let Some(mut slot) = ConnectionSlot::claim(&ctx.shared, index) else {
        ctx.count(|c| c.refused_max_connections += 1);
        ListenerStats::bump(&listener.stats.refused);
        tracing::warn!(%peer, listener = %listener.config, "refused: max_connections reached");
        return;
    };
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + ctx.shared.limits().connect_timeout;
    let edge = edge_refusal(&ctx, index, peer, &mut slot);
    if listener.is_plain() {
        let admitted = admit(&ctx, stream, peer, index, None, edge, deadline).await;
        return proceed(ctx, admitted, slot);
    }
    // Boxed: the TLS and WebSocket states would otherwise size the task of
    // every plain connection's handshake too.
    Box::pin(accept_layered(
        ctx, stream, peer, index, edge, deadline, slot,
    ))
    .await
}

/// [`accept`] on a TLS or WebSocket listener: its handshake, then the CONNECT.
async fn accept_layered(
    ctx: Rc<Ctx>,
    stream: TcpStream,
    peer: SocketAddr,
    index: usize,
    edge: Option<Refusal>,
    deadline: Instant,
    slot: ConnectionSlot,
) {
    let listener = &ctx.shared.listeners[index];
    let Some((layered, identity)) = handshake(&ctx, stream, peer, listener, deadline).await else {
        ListenerStats::bump(&listener.stats.refused);
        return;
    };
    let admitted = admit(&ctx, layered, peer, index, identity, edge, deadline).await;
    proceed(ctx, admitted, slot);
}

/// Whether the listener's connection rate or the address's connection count
/// refuses this connection (answered once its CONNECT is read).
fn edge_refusal(
    ctx: &Ctx,
    listener: usize,
    peer: SocketAddr,
    slot: &mut ConnectionSlot,
) -> Option<Refusal> {
    if !ctx.allow_connection(listener) {
        ctx.count(|c| c.refused_connection_rate += 1);
        return Some(Refusal {
            code: Some(ConnectCode::ConnectionRateExceeded),
            rule: edge::RATE_RULE,
        });
    }
    if !slot.claim_ip(peer.ip()) {
        ctx.count(|c| c.refused_per_ip += 1);
        return Some(Refusal {
            code: Some(ConnectCode::QuotaExceeded),
            rule: edge::PER_IP_RULE,
        });
    }
    None
}

/// An admitted connection goes to the core that owns its client id; a refused
/// one (logged already) is counted against its listener.
fn proceed<T: Transport>(ctx: Rc<Ctx>, admitted: Option<Accepted<T>>, slot: ConnectionSlot) {
    let Some(accepted) = admitted else {
        ListenerStats::bump(&ctx.shared.listeners[slot.listener].stats.refused);
        return;
    };
    let (client_id, cores) = (&accepted.client_id, ctx.shared.config.cores);
    let owner = owner_core(client_id, cores);
    if owner != ctx.id {
        drop(slot); // the owner takes its own
        ctx.count(|c| c.handoffs += 1);
        let handoff = accepted.map_stream(Transport::into_portable);
        return ctx.send_to(owner, Parcel::Handoff(Box::new(handoff)));
    }
    // A task of its own: the handshake state above is freed now, not held for
    // the connection's lifetime.
    monoio::spawn(connection::serve(ctx, accepted, slot));
}

/// The TLS handshake and WebSocket upgrade of a listener that has them, and
/// the client certificate's name when the listener takes it as the username.
async fn handshake(
    ctx: &Ctx,
    stream: TcpStream,
    peer: SocketAddr,
    listener: &ListenerRuntime,
    deadline: Instant,
) -> Option<(Layered, Option<String>)> {
    let session = match listener.tls.as_ref().map(|tls| tls.session()).transpose() {
        Ok(session) => session,
        Err(e) => {
            tracing::warn!(%peer, listener = %listener.config, error = %e, "TLS session not created");
            return None;
        }
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let layered = match monoio::time::timeout(
        left,
        Layered::accept(stream, session, listener.ws.as_ref()),
    )
    .await
    {
        Ok(Ok(layered)) => layered,
        Ok(Err(refused)) => {
            ctx.count(|c| c.connects_refused += 1);
            tracing::info!(%peer, listener = %listener.config, why = refused.0, "handshake failed");
            return None;
        }
        Err(_) => {
            ctx.count(|c| c.connects_refused += 1);
            tracing::info!(%peer, listener = %listener.config, "closed: handshake not done within connect_timeout");
            return None;
        }
    };
    let takes_identity = listener
        .tls
        .as_ref()
        .is_some_and(|t| t.settings().use_identity_as_username);
    let identity = takes_identity
        .then(|| layered.layers().tls().and_then(client_identity))
        .flatten();
    if takes_identity && identity.is_none() {
        ctx.count(|c| c.connects_refused += 1);
        tracing::info!(%peer, listener = %listener.config, "refused: client certificate has no Common Name");
        return None;
    }
    Some((layered, identity))
}

/// Reads and checks the CONNECT; refuses what must be refused.
async fn admit<T: Transport>(
    ctx: &Ctx,
    mut stream: T,
    peer: SocketAddr,
    listener: usize,
    identity: Option<String>,
    edge: Option<Refusal>,
    deadline: Instant,
) -> Option<Accepted<T>> {
    let mut buf = BytesMut::with_capacity(MIN_READ);
    let max = ctx.shared.config.limits.max_packet_size;
    let left = deadline.saturating_duration_since(Instant::now());
    let read = read_connect(ctx, &mut stream, &mut buf, max);
    let mut connect = match monoio::time::timeout(left, read).await {
        Ok(Ok(connect)) => connect,
        Ok(Err(err)) => return Box::pin(refuse_malformed(ctx, stream, peer, listener, err)).await,
        Err(_) => {
            ctx.count(|c| c.connects_refused += 1);
            let listener = &ctx.shared.listeners[listener].config;
            tracing::info!(%peer, %listener, "closed: no CONNECT within connect_timeout [MQTT-3.1.4]");
            return None;
        }
    };
    if let Some(name) = identity {
        // The certificate's name is the username, whatever the CONNECT said.
        connect.username = Some(Bytes::from(name.into_bytes()));
    }
    // The refusals are boxed: rare, and their writes would size every
    // handshake's task.
    if let Err(refusal) = check_connect(&connect, &ctx.shared.limits()) {
        return Box::pin(refuse(ctx, stream, peer, listener, &connect, refusal)).await;
    }
    if let Some(refusal) = edge {
        return Box::pin(refuse(ctx, stream, peer, listener, &connect, refusal)).await;
    }
    let (client_id, assigned_id) = client_id_for(ctx, &connect);
    let permissions = match authenticate(ctx, peer, listener, &connect, &client_id).await {
        Ok(permissions) => permissions,
        Err(denial) => {
            let refusal = Refusal {
                code: Some(denial.code()),
                rule: denial.public_reason(),
            };
            return Box::pin(refuse(ctx, stream, peer, listener, &connect, refusal)).await;
        }
    };
    let transferred = match &ctx.shared.cluster {
        Some(link) if claims_session(ctx, listener, &connect) => {
            let left = deadline.saturating_duration_since(Instant::now());
            match monoio::time::timeout(left, link.claim(client_id.clone(), connect.clean_start))
                .await
            {
                Ok(image) => image.map(Box::new),
                Err(_) => {
                    tracing::warn!(%peer, client_id = &*client_id, "the cluster did not settle the session within connect_timeout; starting here");
                    None
                }
            }
        }
        _ => None,
    };
    Some(Accepted {
        stream,
        peer,
        listener,
        connect,
        client_id,
        assigned_id,
        permissions,
        leftover: buf,
        transferred,
    })
}

/// Whether the cluster must settle this CONNECT's session first: one that
/// may exist on another node or will outlive its connection. A clean
/// session that ends with its connection never touches JetStream, nor does
/// a bridge's own session (every node may run the same bridge).
fn claims_session(ctx: &Ctx, listener: usize, connect: &Connect) -> bool {
    if ctx
        .shared
        .bridge_gate
        .as_ref()
        .is_some_and(|(gate, _)| *gate == listener)
    {
        return false;
    }
    let expiry = connect.properties.0.iter().find_map(|p| match p {
        crate::codec::Property::SessionExpiryInterval(secs) => Some(*secs),
        _ => None,
    });
    !connect.clean_start || (connect.protocol.is_v5() && expiry.unwrap_or(0) > 0)
}

/// Checks the CONNECT's credentials (slow hashes on the verifier threads,
/// an address that keeps failing made to wait first) and returns what the
/// client may do.
async fn authenticate(
    ctx: &Ctx,
    peer: SocketAddr,
    listener: usize,
    connect: &Connect,
    client_id: &str,
) -> Result<Permissions, Denial> {
    if let Some((gate, secret)) = &ctx.shared.bridge_gate {
        if *gate == listener {
            return bridge_gate_check(connect, secret);
        }
    }
    let auth = &ctx.shared.auth;
    let delay = auth.throttle.delay(peer.ip(), Instant::now());
    if !delay.is_zero() {
        ctx.count(|c| c.auth_delayed += 1);
        monoio::time::sleep(delay).await;
    }
    let backend = auth.backend();
    // The codec checked that a user name is UTF-8 [MQTT-3.1.3-11].
    let username = connect.username.as_deref().map(String::from_utf8_lossy);
    let who = Credentials {
        client_id,
        username: username.as_deref(),
        password: connect.password.as_deref(),
    };
    let check = match backend.authenticate(&who) {
        Verdict::Now(check) => check,
        Verdict::Offload(slow) => match auth.offload.run(slow) {
            Some(answer) => answer.await.unwrap_or(Err(Denial::Busy)),
            None => Err(Denial::Busy),
        },
    };
    if let Err(denial) = check {
        if denial.is_bad_credentials() {
            auth.throttle.failed(peer.ip(), Instant::now());
            ctx.count(|c| c.auth_bad_credentials += 1);
        } else if denial == Denial::Anonymous {
            ctx.count(|c| c.auth_not_authorized += 1);
        }
        let listener = &ctx.shared.listeners[listener].config;
        let user = who.username.unwrap_or("");
        tracing::info!(%peer, %listener, client_id, username = user, reason = denial.reason(), "authentication failed");
        return Err(denial);
    }
    auth.throttle.succeeded(peer.ip());
    Ok(backend.permissions(client_id, who.username))
}

/// The bridges' listener lets in only what carries this start's secret
/// (compared in constant time), with every permission: what a bridge
/// carries is the operator's configuration, not a client's request.
fn bridge_gate_check(connect: &Connect, secret: &str) -> Result<Permissions, Denial> {
    use subtle::ConstantTimeEq as _;
    let given = connect.password.as_deref().unwrap_or_default();
    match bool::from(given.ct_eq(secret.as_bytes())) {
        true => Ok(Permissions::all()),
        false => Err(Denial::WrongPassword),
    }
}

/// A connection handed over by another core.
pub async fn adopt(ctx: Rc<Ctx>, h: Handoff) {
    let mut slot = ConnectionSlot::admitted(&ctx.shared, h.listener);
    slot.count_ip(h.peer.ip());
    let (portable, rest) = h.split();
    let peer = rest.peer;
    let served = match portable {
        Portable::Tcp(tcp) => TcpStream::from_std(tcp).map(|s| serve_here(ctx, rest, s, slot)),
        Portable::Layered(parts) => {
            Layered::from_parts(parts).map(|s| serve_here(ctx, rest, s, slot))
        }
    };
    if let Err(e) = served {
        tracing::warn!(%peer, error = %e, "handoff failed");
    }
}

/// Serves a handed-over connection in a task of its own, as on the
/// accepting core: the handoff's state is freed now.
fn serve_here<S: Transport>(ctx: Rc<Ctx>, rest: Accepted<()>, stream: S, slot: ConnectionSlot) {
    drop(monoio::spawn(connection::serve(
        ctx,
        rest.with_stream(stream),
        slot,
    )));
}

/// Reads until one whole first packet is in `buf`; it must be a CONNECT.
async fn read_connect<T: Transport>(
    ctx: &Ctx,
    stream: &mut T,
    buf: &mut BytesMut,
    max_packet_size: u32,
) -> Result<Box<Connect>, DecodeError> {
    // Nothing cancels this read but the timeout around it.
    let cancel = Canceller::new();
    loop {
        match decode(buf, Protocol::V3_1_1, max_packet_size)? {
            Some(Packet::Connect(c)) => return Ok(c),
            Some(_) => return Err(DecodeError::NotConnect),
            None => {}
        }
        buf.reserve(MIN_READ);
        let (res, b) = stream.read(std::mem::take(buf), cancel.handle()).await;
        *buf = b;
        match res {
            Ok(0) | Err(_) => return Err(DecodeError::Truncated("CONNECT")),
            Ok(n) => ctx.count(|c| c.bytes_received += n as u64),
        }
    }
}

/// A broken first packet: answer what the spec allows, log, close.
async fn refuse_malformed<T: Transport>(
    ctx: &Ctx,
    mut stream: T,
    peer: SocketAddr,
    listener: usize,
    err: DecodeError,
) -> Option<Accepted<T>> {
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
        let listener = &ctx.shared.listeners[listener].config;
        tracing::info!(%peer, %listener, rule = %err, "closed before CONNECT completed");
    }
    None
}

async fn refuse<T: Transport>(
    ctx: &Ctx,
    mut stream: T,
    peer: SocketAddr,
    listener: usize,
    c: &Connect,
    r: Refusal,
) -> Option<Accepted<T>> {
    ctx.count(|c| c.connects_refused += 1);
    let listener = &ctx.shared.listeners[listener].config;
    let client_id = c.client_id_str();
    match ctx.may_log_refusal(r.rule) {
        Some(0) => tracing::info!(%peer, %listener, client_id, rule = r.rule, "CONNECT refused"),
        Some(more) => {
            tracing::info!(%peer, %listener, client_id, rule = r.rule, not_logged = more, "CONNECT refused (and more for this rule, not logged)")
        }
        None => {}
    }
    if let Some(code) = r.code {
        let max = ClientParams::from_connect(c, &ctx.shared.limits()).maximum_packet_size;
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
    None
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
