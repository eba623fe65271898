//! One side's connection, again and again: dial (TCP, TLS for a remote that
//! has it), CONNECT, then pass every packet read to the relay and write what
//! the relay sends, with keep-alive pings, until the link breaks; then wait
//! (backoff with jitter) and start over. The relay sees `Up`, packets and
//! `Down`, never a socket.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::relay::{Peer, Side};
use super::Gate;
use crate::codec::{
    decode, encode, ConnAck, Connect, Disconnect, Packet, Properties, Property, Protocol, Publish,
    QoS, QosPid, Will,
};
use crate::config::{Bridge, BridgeProtocol};

/// What a link tells the relay.
pub enum Event {
    Up(Peer, Writer),
    Packet(Packet),
    Down,
}

/// Unsent output a link holds before it sheds QoS 0 (QoS 1/2 and acks are
/// bounded by the in-flight windows and always queued).
const MAX_UNSENT: usize = 1 << 20;

/// How long dialing, the TLS handshake and the CONNACK may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the relay writes to a link that is up.
pub struct Writer {
    tx: mpsc::UnboundedSender<Bytes>,
    unsent: Arc<AtomicUsize>,
    protocol: Protocol,
}

impl Writer {
    /// Queues `packet`; false when it was `droppable` and the link is
    /// congested, so it was not.
    pub fn send(&self, packet: &Packet, droppable: bool) -> bool {
        if droppable && self.unsent.load(Ordering::Relaxed) > MAX_UNSENT {
            return false;
        }
        let mut out = BytesMut::new();
        encode(packet, self.protocol, &mut out);
        self.unsent.fetch_add(out.len(), Ordering::Relaxed);
        // A link that just broke drops it; the relay learns with `Down`.
        let _ = self.tx.send(out.freeze());
        true
    }
}

/// Everything one side needs to connect.
pub struct Dialer {
    pub side: Side,
    pub bridge: Arc<Bridge>,
    pub gate: Gate,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// This broker's max_packet_size: announced to the remote, so it sends
    /// nothing this broker would refuse.
    pub max_packet_size: u32,
    pub stats: Arc<super::Stats>,
}

trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

/// A connection whose CONNACK accepted us.
struct Session {
    stream: Box<dyn Io>,
    peer: Peer,
    /// Bytes read after the CONNACK.
    leftover: BytesMut,
    keepalive: Duration,
    address: String,
}

impl Dialer {
    fn protocol(&self) -> Protocol {
        match (self.side, self.bridge.protocol) {
            (Side::Remote, BridgeProtocol::V311) => Protocol::V3_1_1,
            _ => Protocol::V5,
        }
    }

    fn addresses(&self) -> Vec<(String, u16)> {
        match self.side {
            Side::Local => vec![(self.gate.addr.ip().to_string(), self.gate.addr.port())],
            Side::Remote => self.bridge.addresses.clone(),
        }
    }

    fn connect_packet(&self) -> Connect {
        let b = &self.bridge;
        let protocol = self.protocol();
        let mut properties = Properties::default();
        let mut will = None;
        if protocol.is_v5() {
            if !b.clean_session {
                properties.push(Property::SessionExpiryInterval(u32::MAX));
            }
            properties.push(Property::ReceiveMaximum(b.max_inflight));
            if self.side == Side::Remote {
                properties.push(Property::MaximumPacketSize(self.max_packet_size));
            }
        }
        let (client_id, username, password) = match self.side {
            Side::Local => (
                b.local_client_id.clone(),
                Some(format!("bridge:{}", b.name)),
                Some(self.gate.secret.to_string()),
            ),
            Side::Remote => {
                if b.notifications {
                    will = Some(Will {
                        topic: Bytes::from(b.notification_topic.clone()),
                        payload: Bytes::from_static(b"0"),
                        qos: QoS::AtLeastOnce,
                        retain: true,
                        properties: Properties::default(),
                    });
                }
                (
                    b.client_id.clone(),
                    b.username.clone(),
                    b.password.as_ref().map(|p| p.0.clone()),
                )
            }
        };
        Connect {
            protocol,
            clean_start: b.clean_session,
            keep_alive: b.keepalive,
            client_id: Bytes::from(client_id),
            will,
            username: username.map(Bytes::from),
            password: password.map(Bytes::from),
            properties,
            // Mosquitto's `try_private`: a 3.1.1 bridge flags itself in the
            // protocol level so the remote does not echo its messages back.
            bridge: protocol == Protocol::V3_1_1 && b.try_private && self.side == Side::Remote,
        }
    }

    fn connect_bytes(&self) -> BytesMut {
        let mut out = BytesMut::new();
        encode(
            &Packet::Connect(Box::new(self.connect_packet())),
            self.protocol(),
            &mut out,
        );
        out
    }

    async fn dial(&self, host: &str, port: u16) -> anyhow::Result<Box<dyn Io>> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
        let mut last = anyhow::anyhow!("{host} resolves to no address");
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    return self.secure(tcp, host).await;
                }
                Err(e) => last = anyhow::anyhow!("{addr}: {e}"),
            }
        }
        Err(last)
    }

    async fn secure(&self, tcp: TcpStream, host: &str) -> anyhow::Result<Box<dyn Io>> {
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(config) => {
                let name = super::tls::server_name(host)?;
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| anyhow::anyhow!("TLS handshake: {e}"))?;
                Ok(Box::new(tls))
            }
        }
    }

    /// Dials `address` and exchanges CONNECT and CONNACK.
    async fn open(&self, host: &str, port: u16) -> anyhow::Result<Session> {
        let mut stream = self.dial(host, port).await?;
        stream.write_all(&self.connect_bytes()).await?;
        let protocol = self.protocol();
        let mut buf = BytesMut::with_capacity(512);
        let ack = loop {
            match decode(&mut buf, protocol, self.max_packet_size)? {
                Some(Packet::ConnAck(ack)) => break ack,
                Some(other) => anyhow::bail!("{} before CONNACK", other.name()),
                None => {}
            }
            if stream.read_buf(&mut buf).await? == 0 {
                anyhow::bail!("closed before CONNACK");
            }
        };
        let peer = self.accepted(&ack, protocol)?;
        let keepalive = ack
            .properties
            .find(|p| match p {
                Property::ServerKeepAlive(k) => Some(*k),
                _ => None,
            })
            .unwrap_or(self.bridge.keepalive);
        let keepalive = Duration::from_secs(u64::from(keepalive.max(5)));
        if self.side == Side::Remote && self.bridge.notifications {
            let mut out = BytesMut::new();
            encode(&notification(&self.bridge, b"1"), protocol, &mut out);
            stream.write_all(&out).await?;
        }
        Ok(Session {
            stream,
            peer,
            leftover: buf,
            keepalive,
            address: format!("{host}:{port}"),
        })
    }

    fn accepted(&self, ack: &ConnAck, protocol: Protocol) -> anyhow::Result<Peer> {
        if ack.code != 0 {
            anyhow::bail!("CONNACK refused the bridge with code {:#04x}", ack.code);
        }
        let find = |f: fn(&Property) -> Option<u32>| ack.properties.find(f);
        let receive_maximum = find(|p| match p {
            Property::ReceiveMaximum(n) => Some(u32::from(*n)),
            _ => None,
        });
        Ok(Peer {
            protocol,
            session_present: ack.session_present,
            receive_maximum: receive_maximum.map_or(u16::MAX, |n| n as u16),
            maximum_packet_size: find(|p| match p {
                Property::MaximumPacketSize(n) => Some(*n),
                _ => None,
            })
            .unwrap_or(u32::MAX),
            retain_available: find(|p| match p {
                Property::RetainAvailable(n) => Some(u32::from(*n)),
                _ => None,
            }) != Some(0),
        })
    }
}

/// The remote's state topic: `1` while the bridge is connected, `0` after
/// (its will, or said on the way out).
fn notification(bridge: &Bridge, state: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos_pid: QosPid::AtMostOnce,
        retain: true,
        topic: Bytes::from(bridge.notification_topic.clone()),
        properties: Properties::default(),
        payload: Bytes::from_static(state),
    })
}

/// Exponential backoff with equal jitter: each delay is between half and
/// all of `base * 2^attempt`, capped.
struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let full = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap);
        self.attempt += 1;
        if self.base == self.cap {
            return full;
        }
        let mut r = [0u8; 4];
        let _ = getrandom::fill(&mut r);
        let half = full / 2;
        half + half.mul_f64(f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX))
    }
}

/// Keeps `dialer`'s side connected until `stop`, telling the relay.
pub async fn run(dialer: Dialer, events: mpsc::Sender<Event>, mut stop: watch::Receiver<bool>) {
    let name = dialer.bridge.name.clone();
    let side = dialer.side.name();
    let (base, cap) = match dialer.side {
        // Ourselves: only a restart of this broker's cores breaks it.
        Side::Local => (Duration::from_millis(100), Duration::from_secs(2)),
        Side::Remote => (dialer.bridge.restart_base, dialer.bridge.restart_cap),
    };
    let mut backoff = Backoff {
        base,
        cap,
        attempt: 0,
    };
    let addresses = dialer.addresses();
    let mut failures = 0u64;
    for (host, port) in addresses.iter().cycle() {
        if *stop.borrow() {
            return;
        }
        let opened = tokio::select! {
            r = tokio::time::timeout(CONNECT_TIMEOUT, dialer.open(host, *port)) => r,
            _ = stop.changed() => return,
        };
        match opened {
            Ok(Ok(session)) => {
                backoff.attempt = 0;
                failures = 0;
                tracing::info!(bridge = %name, side, address = %session.address,
                    session_present = session.peer.session_present, "bridge connected");
                let why = serve(&dialer, session, &events, &mut stop).await;
                if events.send(Event::Down).await.is_err() || *stop.borrow() {
                    return;
                }
                tracing::warn!(bridge = %name, side, reason = %why, "bridge link down");
            }
            Ok(Err(e)) => log_failure(&name, side, host, *port, &format!("{e:#}"), &mut failures),
            Err(_) => log_failure(&name, side, host, *port, "timed out", &mut failures),
        }
        if dialer.side == Side::Remote && failures > 0 {
            dialer
                .stats
                .connect_failures
                .fetch_add(1, Ordering::Relaxed);
        }
        let delay = backoff.next();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The first failures in a row at warn, then one in ten: a remote that is
/// down for a day writes a line every few minutes, not thousands.
fn log_failure(name: &str, side: &str, host: &str, port: u16, why: &str, failures: &mut u64) {
    *failures += 1;
    if *failures <= 3 || (*failures).is_multiple_of(10) {
        tracing::warn!(bridge = %name, side, address = %format!("{host}:{port}"),
            error = why, attempts = *failures, "bridge cannot connect");
    }
}

/// Serves a connected session until it breaks or `stop`; returns why it ended.
async fn serve(
    dialer: &Dialer,
    session: Session,
    events: &mpsc::Sender<Event>,
    stop: &mut watch::Receiver<bool>,
) -> String {
    let Session {
        stream,
        peer,
        leftover,
        keepalive,
        ..
    } = session;
    let (tx, rx) = mpsc::unbounded_channel();
    let unsent = Arc::new(AtomicUsize::new(0));
    let writer = Writer {
        tx,
        unsent: unsent.clone(),
        protocol: peer.protocol,
    };
    if events.send(Event::Up(peer, writer)).await.is_err() {
        return "bridge stopped".into();
    }
    let (rd, wr) = tokio::io::split(stream);
    let reading = read_loop(
        rd,
        leftover,
        peer.protocol,
        dialer.max_packet_size,
        keepalive,
        events,
    );
    let writing = write_loop(wr, rx, unsent, keepalive, dialer, stop);
    tokio::select! {
        why = reading => why,
        why = writing => why,
    }
}

async fn read_loop(
    mut rd: tokio::io::ReadHalf<Box<dyn Io>>,
    mut buf: BytesMut,
    protocol: Protocol,
    max_packet_size: u32,
    keepalive: Duration,
    events: &mpsc::Sender<Event>,
) -> String {
    loop {
        loop {
            let packet = match decode(&mut buf, protocol, max_packet_size) {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(e) => return format!("malformed packet from the broker: {e}"),
            };
            match packet {
                Packet::PingResp => {}
                Packet::Disconnect(d) => {
                    return format!("the broker sent DISCONNECT (reason {:#04x})", d.reason)
                }
                other => {
                    if events.send(Event::Packet(other)).await.is_err() {
                        return "bridge stopped".into();
                    }
                }
            }
        }
        // Pings go out every keep-alive; two without an answer is a dead link.
        match tokio::time::timeout(2 * keepalive, rd.read_buf(&mut buf)).await {
            Ok(Ok(0)) => return "closed by the broker".into(),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("read: {e}"),
            Err(_) => return "keep-alive timeout".into(),
        }
    }
}

async fn write_loop(
    mut wr: tokio::io::WriteHalf<Box<dyn Io>>,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    unsent: Arc<AtomicUsize>,
    keepalive: Duration,
    dialer: &Dialer,
    stop: &mut watch::Receiver<bool>,
) -> String {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    let mut batch = BytesMut::new();
    loop {
        tokio::select! {
            next = rx.recv() => {
                let Some(first) = next else { return "bridge stopped".into() };
                batch.extend_from_slice(&first);
                while batch.len() < 64 * 1024 {
                    match rx.try_recv() {
                        Ok(more) => batch.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
            }
            _ = ping.tick() => encode(&Packet::PingReq, Protocol::V5, &mut batch),
            _ = stop.changed() => {
                goodbye(dialer, &mut batch);
                let _ = wr.write_all(&batch).await;
                let _ = wr.shutdown().await;
                return "bridge stopped".into();
            }
        }
        let len = batch.len();
        if let Err(e) = wr.write_all(&batch).await {
            return format!("write: {e}");
        }
        batch.clear();
        let _ = unsent.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            Some(n.saturating_sub(len))
        });
    }
}

/// The last words of a link on the way out: the remote's state goes to `0`
/// and the session ends with a normal DISCONNECT (so no will).
fn goodbye(dialer: &Dialer, out: &mut BytesMut) {
    let protocol = dialer.protocol();
    if dialer.side == Side::Remote && dialer.bridge.notifications {
        encode(&notification(&dialer.bridge, b"0"), protocol, out);
    }
    encode(&Packet::Disconnect(Disconnect::default()), protocol, out);
}
