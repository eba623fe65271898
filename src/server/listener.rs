//! Listening sockets: one SO_REUSEPORT socket per listener per core (the
//! kernel spreads accepts across cores with no shared accept queue and no
//! lock), each listener's TLS and WebSocket settings, and its counters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};

use super::transport::{TlsAcceptor, WsSettings};
use crate::config::{Listener, ListenerProtocol};

/// A listener as the cores serve it.
pub struct ListenerRuntime {
    /// Its configuration, with the port the kernel picked if it asked for 0.
    pub config: Listener,
    pub tls: Option<TlsAcceptor>,
    pub ws: Option<WsSettings>,
    pub stats: ListenerStats,
    /// The internal listener only this broker's bridges may use.
    pub bridge_gate: bool,
}

/// Counted at accept and close, never per message.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections that ended before a session began: a failed TLS handshake
    /// or WebSocket upgrade, no or a refused CONNECT.
    pub refused: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
}

impl ListenerStats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl ListenerRuntime {
    /// Loads the listener's certificates (if TLS) and settles its WebSocket
    /// limits from the largest packet accepted.
    pub fn new(config: Listener, max_packet_size: u32) -> anyhow::Result<ListenerRuntime> {
        let tls = match &config.tls {
            Some(settings) => Some(
                TlsAcceptor::new(settings.clone()).with_context(|| format!("listener {config}"))?,
            ),
            None => None,
        };
        let ws = (config.protocol == ListenerProtocol::Websockets).then(|| WsSettings {
            path: config.websockets_path.clone(),
            // A frame may carry more than one packet; twice the largest packet
            // is room enough and still refuses absurd frames from their header.
            max_message: (max_packet_size as usize).saturating_mul(2),
        });
        Ok(ListenerRuntime {
            config,
            tls,
            ws,
            stats: ListenerStats::default(),
            bridge_gate: false,
        })
    }

    /// The bridges' internal listener: plain MQTT on a loopback port the
    /// kernel picks.
    pub fn bridge_gate(max_packet_size: u32) -> anyhow::Result<(ListenerRuntime, socket2::Socket)> {
        let loopback = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        let placeholder = reserve_port(SocketAddr::new(loopback, 0))?;
        let port = placeholder
            .local_addr()?
            .as_socket()
            .map_or(0, |a| a.port());
        let mut gate = ListenerRuntime::new(Listener::mqtt(loopback, port), max_packet_size)?;
        gate.bridge_gate = true;
        Ok((gate, placeholder))
    }

    /// Its name in metrics: `mqtt:1883`, `bridge:PORT` for the gate.
    pub fn label(&self) -> String {
        let scheme = if self.bridge_gate {
            "bridge"
        } else {
            self.config.scheme()
        };
        format!("{scheme}:{}", self.config.port)
    }

    /// Plain MQTT over TCP: no layer between the socket and the codec.
    pub fn is_plain(&self) -> bool {
        self.tls.is_none() && self.ws.is_none()
    }
}

/// Binds a non-blocking listener that other cores of this broker may bind too.
pub fn bind_reuseport(addr: SocketAddr, backlog: i32) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// Binds (without listening) a SO_REUSEPORT socket to `addr` so the kernel picks a
/// port that the cores' listeners can then all bind.
pub fn reserve_port(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Fails with "address already in use" when another process listens on
/// `addr`. The cores' SO_REUSEPORT sockets would otherwise join that
/// process's group silently and the kernel would split new connections
/// between the two brokers. A socket without SO_REUSEPORT cannot share the
/// port with any listener (SO_REUSEADDR only lets it past TIME_WAIT
/// connections of an earlier run).
///
/// A port held by a broker that just died is retried for [`RELEASE_WAIT`]:
/// after a kill -9, io_uring closes the dead process's listening sockets a
/// moment after its exit, and a supervisor restarting at once would be
/// refused otherwise.
pub fn ensure_port_is_free(addr: SocketAddr) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + RELEASE_WAIT;
    loop {
        match probe_bind(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if std::time::Instant::now() >= deadline {
                    return Err(e);
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// How long a port in use is retried at start.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

fn probe_bind(addr: SocketAddr) -> std::io::Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())
}
