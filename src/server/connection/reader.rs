//! The reader side of a connection: read into a buffer, hand every complete
//! frame to the core in one call, and, when the connection ends, close it
//! cleanly.
//!
//! With `read_coalesce_ms`, a reader whose last two reads each brought more
//! than one packet (the client sends faster than the reader takes) waits
//! for the core's next coalescing tick (`server::coalesce`) before each
//! read, so that what the client sends meanwhile comes in one read, until a
//! read after a wait brings at most one packet. At high fixed rates most of
//! a publish's CPU is the cost of its read, which larger reads share. A
//! client that sends a packet and waits for the answer brings one per read
//! and is never delayed.

use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;

use super::state::Connection;
use crate::codec::{decode, reason, Packet};
use crate::router::{CloseReason, Next};
use crate::server::accept::MIN_READ;
use crate::server::context::Ctx;
use crate::server::context::Link;
use crate::server::notify::yield_now;
use crate::server::parking::{IDLE_GAP, PARK_AT_SETUP_AWAKE};
use crate::server::transport::{ReadHalf, Transport};
use crate::time::Time;

/// Why reading ended.
#[derive(Debug)]
pub(super) enum End {
    /// The client closed its side.
    Eof,
    /// Reading failed (a reset, ...).
    Failed(std::io::Error),
    /// The client sent DISCONNECT.
    Disconnected,
    /// The client broke a rule (logged; its 5.0 DISCONNECT is the farewell).
    Violation,
    /// The broker ends the connection.
    Closed(CloseReason),
    /// The client was quiet and the core asked the reader to park: nothing
    /// is buffered, the read was cancelled (see `server::parking`).
    Quiet,
}

impl End {
    /// Whether the client may still be sending: then its input is drained
    /// after the write side is shut down, so that closing does not reset the
    /// connection before the client has read the broker's last packets.
    ///
    /// After a DISCONNECT a client sends nothing more [MQTT-3.14.4-2], so
    /// on plain TCP the socket closes at once, as Mosquitto's does: a fleet
    /// disconnecting together then holds no read buffer, read and timer per
    /// connection until each client's own close comes. Only a layer's close
    /// handshake ([`ReadHalf::CLOSE_HANDSHAKE`]) is still read.
    pub(super) fn client_may_send<R: ReadHalf>(&self) -> bool {
        match self {
            End::Eof | End::Failed(_) | End::Closed(CloseReason::WriteFailed) => false,
            End::Disconnected => R::CLOSE_HANDSHAKE,
            End::Violation | End::Closed(_) | End::Quiet => true,
        }
    }
}

/// What handling the buffered frames stopped at.
enum Step {
    /// Every complete frame handled.
    Drained,
    /// A SUBACK waits for other cores; the rest of the buffer waits for it.
    Paused,
    /// A QoS 1/2 PUBLISH is next while the store cannot write: it waits.
    HoldForStore,
    /// A subscriber this client publishes to has a full queue: wait.
    HeldBack,
    Ended(End),
}

/// How a reader starts.
#[derive(Clone, Copy, Debug)]
pub(super) enum Start {
    /// Right after CONNACK; its buffer holds what came with the CONNECT.
    Connected,
    /// Its parked reader was woken: the client sent again (or must close).
    Woken,
}

/// The input whose handling decides whether the reader parks at once (see
/// [`parks_at_once`]).
#[derive(Clone, Copy)]
enum First {
    /// A woken reader's first read, not come yet; the client's input before
    /// it was handled at `previous`.
    Awaited { previous: Time },
    /// In the buffer: the CONNECT's (no input before it) or the first read's.
    Handling { previous: Option<Time> },
    /// Decided: the reader stays until the core asks it to park.
    Done,
}

/// Reads and handles packets until the connection ends.
pub(super) async fn read_loop<S: Transport>(
    ctx: &Rc<Ctx>,
    conn: &Rc<Connection<S>>,
    rd: &mut S::Reader,
    mut buf: BytesMut,
    start: Start,
) -> End {
    let mut sizer = ReadSizer::new(ctx.shared.config.read_buffer_size);
    let mut first = match start {
        Start::Connected => First::Handling { previous: None },
        // The parking read what woke it: that is its first input.
        Start::Woken if !buf.is_empty() => First::Handling {
            previous: Some(conn.last_input()),
        },
        Start::Woken => First::Awaited {
            previous: conn.last_input(),
        },
    };
    // What the packets handled so far ask of the reader; a CONNECT sets up.
    let mut demand = Demand::Setup;
    let mut coalescing = Coalescing::default();
    // Packets handled since the last read, and whether it came after a wait.
    let (mut handled, mut waited) = (0u32, false);
    rd.set_write_prompt(&|| {
        let (weak_ctx, weak_conn) = (Rc::downgrade(ctx), Rc::downgrade(conn));
        Rc::new(move || {
            if let (Some(ctx), Some(conn)) = (weak_ctx.upgrade(), weak_conn.upgrade()) {
                conn.wake_writer(&ctx);
            }
        })
    });
    loop {
        match handle_frames(ctx, conn, &mut buf, &mut demand, &mut handled) {
            Step::Drained => {}
            Step::Paused => {
                // The core says when the barrier is done; wake-ups only prompt
                // a look, so one that came early is harmless.
                while conn.close_reason().is_none() && ctx.is_paused(conn.key, conn.id) {
                    conn.woken().await;
                }
                continue;
            }
            Step::Ended(end) => return end,
            Step::HeldBack => {
                ctx.count(|c| c.held_back_waits += 1);
                while conn.close_reason().is_none() && ctx.is_held_back(conn.key, conn.id) {
                    conn.woken().await;
                }
                continue;
            }
            Step::HoldForStore => {
                ctx.count(|c| c.store_holds += 1);
                Box::pin(wait_for_store(ctx, conn)).await;
                continue;
            }
        }
        if ctx.mesh_backlog() {
            // Boxed: rare, and its timer would otherwise enlarge every connection.
            Box::pin(ctx.wait_mesh_drained()).await;
        }
        if let Some(reason) = conn.close_reason() {
            return End::Closed(reason);
        }
        if let First::Handling { previous } = first {
            first = First::Done;
            let quiet_before = previous.is_some_and(|p| conn.last_input().since(p) >= IDLE_GAP);
            if parks_at_once(ctx, conn, &buf, demand, quiet_before) {
                match previous {
                    None => ctx.count(|c| c.readers_parked_at_connect += 1),
                    Some(_) => ctx.count(|c| c.readers_reparked += 1),
                }
                return End::Quiet;
            }
        }
        if let Some(tick) = ctx.read_tick() {
            waited = coalescing.wait_before_read(std::mem::take(&mut handled) > 1);
            if waited {
                tick.next().await;
                if let Some(reason) = conn.close_reason() {
                    return End::Closed(reason);
                }
            }
        }
        let room = sizer.prepare(&mut buf);
        // An ask made while the reader waited elsewhere cancelled nothing.
        conn.take_park_ask();
        let (res, b) = rd.read(buf, conn.cancel_handle()).await;
        buf = b;
        match res {
            Ok(0) => return End::Eof,
            Ok(n) => {
                conn.take_park_ask();
                if let First::Awaited { previous } = first {
                    first = First::Handling {
                        previous: Some(previous),
                    };
                }
                sizer.observe(n, room);
                ctx.count(|c| {
                    c.bytes_received += n as u64;
                    c.coalesced_reads += u64::from(waited);
                });
                if n == room {
                    // More is likely waiting. On epoll a read of a ready
                    // socket completes without going back to the scheduler,
                    // so a flooding client would keep the core: one full
                    // read per turn, then the others on this core run.
                    yield_now().await;
                }
            }
            Err(e) => {
                if let Some(reason) = conn.close_reason() {
                    return End::Closed(reason);
                }
                if conn.take_park_ask() {
                    if buf.is_empty() {
                        return End::Quiet;
                    }
                    // Part of a frame came: keep reading for the rest.
                    continue;
                }
                return End::Failed(e);
            }
        }
    }
}

/// Reads in a row that brought more than one packet before a reader counts
/// its client as a stream. One is a client's setup (CONNECT and SUBSCRIBE in
/// one segment); two are a publisher sending faster than it is read.
const STREAMING_READS: u8 = 2;

/// One reader's `read_coalesce_ms` state: reads in a row that brought more
/// than one packet, up to [`STREAMING_READS`].
#[derive(Default)]
struct Coalescing {
    busy_reads: u8,
}

impl Coalescing {
    /// The last read brought more than one packet or not: whether to wait
    /// before the next. Once a stream, a read (after a wait) that brought
    /// at most one ends it: waiting gathered nothing.
    fn wait_before_read(&mut self, busy: bool) -> bool {
        self.busy_reads = if busy {
            (self.busy_reads + 1).min(STREAMING_READS)
        } else {
            0
        };
        self.busy_reads == STREAMING_READS
    }
}

/// Whether the reader parks right after handling its first input (the
/// CONNECT, or the read that woke it) instead of after the quiet time, so
/// that it holds no task, no read buffer and no pending read whose cancel
/// the parking would pay. Only when nothing of that input is left in the
/// buffer, its session has nothing in flight to the client (no
/// acknowledgement is due soon), and the packets were ones after which a
/// device waits:
/// - a CONNECT, SUBSCRIBE or UNSUBSCRIBE: setting up, what a fleet
///   connecting at once sends before it goes quiet, if the core holds
///   [`PARK_AT_SETUP_AWAKE`] awake readers (as it does in such a storm);
/// - a ping or acknowledgements (a keep-alive ping, a broadcast's PUBACK),
///   if the client had been quiet for [`IDLE_GAP`] before them: a
///   subscriber acknowledging a steady stream is active and keeps its
///   reader, instead of parking and waking for every delivery.
///
/// A client that publishes keeps its reader.
fn parks_at_once<S: Transport>(
    ctx: &Ctx,
    conn: &Connection<S>,
    buf: &BytesMut,
    demand: Demand,
    quiet_before: bool,
) -> bool {
    let waits = match demand {
        Demand::Setup => ctx.awake_readers() >= PARK_AT_SETUP_AWAKE,
        Demand::Idle => quiet_before,
        Demand::Active => false,
    };
    waits
        && conn.is_parkable()
        && ctx.parks_readers()
        && buf.is_empty()
        && ctx.has_nothing_in_flight(conn.key)
}

/// What a packet from the client says of its next moments (see
/// [`parks_at_once`]); of several packets, the most active counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Demand {
    /// Setting up: CONNECT, SUBSCRIBE, UNSUBSCRIBE.
    Setup,
    /// What an idle client sends: a ping, acknowledgements of deliveries.
    Idle,
    /// Anything else: a PUBLISH, its release, an AUTH.
    Active,
}

impl Demand {
    pub(super) fn of(packet: &Packet) -> Demand {
        match packet {
            Packet::Connect(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => Demand::Setup,
            Packet::PingReq | Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => {
                Demand::Idle
            }
            _ => Demand::Active,
        }
    }
}

/// Decodes every complete frame in `buf` and hands them to the core in one
/// call, so that one read's publishes travel to other cores as one batch.
/// Raises `demand` to that of each frame and counts them in `handled`.
fn handle_frames<S: Transport>(
    ctx: &Rc<Ctx>,
    conn: &Connection<S>,
    buf: &mut BytesMut,
    demand: &mut Demand,
    handled: &mut u32,
) -> Step {
    if conn.close_reason().is_some() {
        return Step::Drained;
    }
    let max = ctx.shared.config.limits.max_packet_size;
    // One clock read per read, not per packet.
    let now = ctx.now();
    conn.note_input(now);
    ctx.note_input();
    let holding = ctx.shared.store.as_ref().is_some_and(|s| s.failing());
    let step = ctx.with_core(|core| loop {
        if core.is_held_back(conn.key, conn.id) {
            // A subscriber it feeds is full: neither this buffer's next
            // packet nor the socket is read until it drains.
            return Ok(Step::HeldBack);
        }
        if is_qos12_publish(buf) {
            if holding {
                // Not acknowledged while the store cannot keep it: the client
                // waits (its later packets too), as with back-pressure.
                return Ok(Step::HoldForStore);
            }
            conn.set_acks_publishes();
        }
        let packet = match decode(buf, conn.protocol, max) {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(Step::Drained),
            Err(e) => return Err((e.to_string(), e.reason_code())),
        };
        *demand = (*demand).max(Demand::of(&packet));
        *handled += 1;
        match core.handle_packet(conn.key, now, packet) {
            Ok(Next::Continue) => {}
            Ok(Next::Pause) => return Ok(Step::Paused),
            Ok(Next::Disconnect) => return Ok(Step::Ended(End::Disconnected)),
            Err(v) => return Err((v.to_string(), v.reason_code())),
        }
    });
    match step {
        Ok(step) => step,
        Err((rule, code)) => {
            ctx.count(|c| c.protocol_violations += 1);
            tracing::warn!(
                client_id = &*conn.client_id,
                rule = rule.as_str(),
                "closed: protocol violation"
            );
            conn.set_farewell(code, &rule);
            Step::Ended(End::Violation)
        }
    }
}

/// Whether the next frame in `buf` is a PUBLISH at QoS 1 or 2 (from its
/// fixed header's first byte).
fn is_qos12_publish(buf: &[u8]) -> bool {
    buf.first()
        .is_some_and(|b| b >> 4 == 3 && (b >> 1) & 3 != 0)
}

/// Waits until every core's log writes again (or the connection ends).
async fn wait_for_store<S: Transport>(ctx: &Ctx, conn: &Connection<S>) {
    const LOOK_AGAIN: Duration = Duration::from_millis(50);
    while conn.close_reason().is_none() && ctx.shared.store.as_ref().is_some_and(|s| s.failing()) {
        monoio::time::sleep(LOOK_AGAIN).await;
    }
}

/// Logs why the connection ends (one info line per disconnect, as Mosquitto
/// logs them) and, when the broker ends it, sets the 5.0 DISCONNECT it sends
/// last.
pub(super) fn log_end<S: Transport>(ctx: &Ctx, conn: &Connection<S>, end: &End) {
    let client_id = &*conn.client_id;
    let reason = match end {
        End::Quiet => return,
        End::Eof => "connection closed by the client",
        End::Disconnected => "client sent DISCONNECT",
        End::Violation => "protocol violation",
        End::Failed(e) => {
            return tracing::info!(client_id, reason = "read failed", error = %e, "client disconnected")
        }
        End::Closed(reason) => closed_by_broker(ctx, conn, *reason),
    };
    tracing::info!(client_id, reason, "client disconnected");
}

/// Counts a close the broker decided and sets its 5.0 DISCONNECT.
fn closed_by_broker<S: Transport>(
    ctx: &Ctx,
    conn: &Connection<S>,
    reason: CloseReason,
) -> &'static str {
    match reason {
        CloseReason::KeepAliveTimeout => {
            ctx.count(|c| c.keepalive_timeouts += 1);
            conn.set_farewell(reason::KEEP_ALIVE_TIMEOUT, "keep-alive expired");
            "keep-alive expired [MQTT-3.1.2-24]"
        }
        CloseReason::SessionTakenOver => {
            conn.set_farewell(reason::SESSION_TAKEN_OVER, "session taken over");
            "session taken over by a new connection"
        }
        CloseReason::ServerShutdown => {
            conn.set_farewell(reason::SERVER_SHUTTING_DOWN, "server shutting down");
            "server shutting down"
        }
        CloseReason::WriteFailed => "write failed",
        CloseReason::SlowConsumer => {
            conn.set_farewell(reason::QUOTA_EXCEEDED, "slow consumer");
            "slow consumer"
        }
    }
}

/// How long and how much input is read and dropped after the broker shut its
/// write side, waiting for the client to close: long enough for it to read
/// the last packets and answer, short enough not to hold a socket for a
/// client that never closes.
const DRAIN_TIME: Duration = Duration::from_secs(2);
const DRAIN_BYTES: usize = 1 << 20;

/// Reads and discards input until the client closes, for at most
/// [`DRAIN_TIME`] and [`DRAIN_BYTES`] (or until the broker shuts down).
pub(super) async fn drain<S: Transport>(ctx: &Ctx, conn: &Connection<S>, rd: &mut S::Reader) {
    let drained = async {
        let mut buf = BytesMut::with_capacity(MIN_READ);
        let mut left = DRAIN_BYTES;
        while left > 0 {
            buf.clear();
            let (res, b) = rd.read(buf, conn.cancel_handle()).await;
            buf = b;
            match res {
                Ok(n) if n > 0 => {
                    ctx.count(|c| c.bytes_received += n as u64);
                    left = left.saturating_sub(n);
                }
                _ => return,
            }
        }
    };
    let _ = monoio::time::timeout(DRAIN_TIME, drained).await;
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Ack, Pid, Properties, Subscribe, Unsubscribe};

    fn pid() -> Pid {
        Pid::new(1).unwrap()
    }

    #[test]
    fn setting_up_and_idle_traffic_are_told_from_activity() {
        let subscribe = Packet::Subscribe(Subscribe {
            pid: pid(),
            filters: vec![],
            properties: Properties::default(),
        });
        let unsubscribe = Packet::Unsubscribe(Unsubscribe {
            pid: pid(),
            filters: vec![],
            properties: Properties::default(),
        });
        assert_eq!(Demand::of(&subscribe), Demand::Setup);
        assert_eq!(Demand::of(&unsubscribe), Demand::Setup);
        assert_eq!(Demand::of(&Packet::PingReq), Demand::Idle);
        assert_eq!(Demand::of(&Packet::PubAck(Ack::new(pid()))), Demand::Idle);
        assert_eq!(Demand::of(&Packet::PubRel(Ack::new(pid()))), Demand::Active);
        // Of several packets the most active counts.
        assert_eq!(Demand::Setup.max(Demand::Idle), Demand::Idle);
        assert_eq!(Demand::Idle.max(Demand::Active), Demand::Active);
    }

    #[test]
    fn a_stream_of_packets_waits_until_a_wait_gathers_nothing() {
        let mut c = Coalescing::default();
        assert!(!c.wait_before_read(true), "setup: CONNECT and SUBSCRIBE");
        assert!(c.wait_before_read(true), "two busy reads: a stream");
        assert!(c.wait_before_read(true));
        assert!(!c.wait_before_read(false), "one packet after a wait: done");
        assert!(!c.wait_before_read(true), "a new stream starts over");
    }

    #[test]
    fn a_client_sending_one_packet_at_a_time_never_waits() {
        let mut c = Coalescing::default();
        for _ in 0..4 {
            assert!(!c.wait_before_read(false));
        }
        assert!(!c.wait_before_read(true), "one busy read is not a stream");
        assert!(!c.wait_before_read(false));
    }

    #[test]
    fn after_a_disconnect_only_a_layer_handshake_is_drained() {
        type Plain = <monoio::net::TcpStream as Transport>::Reader;
        type Layered = <crate::server::transport::Layered as Transport>::Reader;
        assert!(!End::Disconnected.client_may_send::<Plain>());
        assert!(End::Disconnected.client_may_send::<Layered>());
        // A broker-decided end still drains on plain TCP.
        assert!(End::Violation.client_may_send::<Plain>());
        assert!(!End::Eof.client_may_send::<Layered>());
    }
}
