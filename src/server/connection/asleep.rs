//! An idle client's pings and acknowledgements taken from its folded socket
//! without waking its reader: when a parked connection's socket becomes
//! readable, the core's parking reads what came with one non-blocking
//! `recv`. If that is only what an idle client sends after a quiet spell
//! (see `reader::parks_at_once`), the core handles it and the socket is
//! parked again, which spares a task spawn and an io_uring read per ping.
//! The answer (a PINGRESP) goes out through a writer as any output does:
//! sending it with a `send` of its own as well was measured dearer than the
//! writer's io_uring write, which one `io_uring_enter` submits with others.
//! Anything else wakes the reader with the bytes read.

use std::io;
use std::rc::Rc;

use bytes::BytesMut;

use super::reader::Demand;
use super::state::Connection;
use crate::codec::{decode, Packet};
use crate::router::Next;
use crate::server::context::Ctx;
use crate::server::parking::IDLE_GAP;
use crate::server::transport::Transport;

/// The most one look takes: a few pings (2 B each) or acknowledgements
/// (4 B in 3.1.1). A read that fills it may have left more in the socket,
/// which the reader then takes.
const LOOK: usize = 64;

/// What came on a parked connection's readable socket.
pub(super) enum Woken {
    /// Handled, and the socket parked again.
    Answered,
    /// For the reader, which starts with these bytes.
    Reader(BytesMut),
}

/// Takes what came on `conn`'s readable, parked socket (see the module).
pub(super) fn take_idle_input<S: Transport>(ctx: &Rc<Ctx>, conn: &Connection<S>) -> Woken {
    let mut raw = [0u8; LOOK];
    let n = match conn.recv_asleep(&mut raw) {
        Some(Ok(n)) => n,
        Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => return park_again(ctx, conn),
        // Not folded, or an error: the reader reads (again) and acts on it.
        _ => return Woken::Reader(BytesMut::new()),
    };
    let input = &raw[..n];
    if n == 0 || n == LOOK {
        // The end of the stream (the reader reads it again), or a full look
        // with perhaps more behind it.
        return Woken::Reader(BytesMut::from(input));
    }
    match idle_packets(conn, input) {
        Some(packets) if may_answer(ctx, conn) => answer(ctx, conn, packets, input),
        _ => Woken::Reader(BytesMut::from(input)),
    }
}

/// The packets of `input` if it is whole packets an idle client sends (a
/// ping, acknowledgements of deliveries).
fn idle_packets<S: Transport>(conn: &Connection<S>, input: &[u8]) -> Option<Vec<Packet>> {
    let mut frames = BytesMut::from(input);
    let mut packets = Vec::new();
    while !frames.is_empty() {
        match decode(&mut frames, conn.protocol, LOOK as u32) {
            Ok(Some(p)) if Demand::of(&p) == Demand::Idle => packets.push(p),
            // Part of a packet, another packet or a broken one.
            _ => return None,
        }
    }
    Some(packets)
}

/// Whether the reader would park again at once after these packets: the
/// client was quiet for [`IDLE_GAP`] before them, the connection goes on and
/// nothing holds it back.
fn may_answer<S: Transport>(ctx: &Ctx, conn: &Connection<S>) -> bool {
    ctx.now().since(conn.last_input()) >= IDLE_GAP
        && conn.close_reason().is_none()
        && !ctx.is_held_back(conn.key, conn.id)
}

/// Hands `packets` to the core (their answers go out through the writer as
/// any output does) and parks the socket again, unless something is now in
/// flight to the client, whose acknowledgement is due soon.
fn answer<S: Transport>(
    ctx: &Rc<Ctx>,
    conn: &Connection<S>,
    packets: Vec<Packet>,
    input: &[u8],
) -> Woken {
    let now = ctx.now();
    conn.note_input(now);
    ctx.note_input();
    ctx.count(|c| c.bytes_received += input.len() as u64);
    // Pings and acknowledgements never break a rule nor end or pause a
    // connection; should one, the reader looks at the connection.
    let handled = ctx.with_core(|core| {
        packets
            .into_iter()
            .all(|p| matches!(core.handle_packet(conn.key, now, p), Ok(Next::Continue)))
    });
    if !handled || conn.close_reason().is_some() || !ctx.has_nothing_in_flight(conn.key) {
        return Woken::Reader(BytesMut::new());
    }
    ctx.count(|c| {
        c.readers_reparked += 1;
        c.parked_answers += 1;
    });
    park_again(ctx, conn)
}

/// Parks the socket again (re-armed); the reader if it cannot be.
fn park_again<S: Transport>(ctx: &Ctx, conn: &Connection<S>) -> Woken {
    match ctx.park(conn.id, conn.socket()) {
        Ok(()) => Woken::Answered,
        Err(_) => Woken::Reader(BytesMut::new()),
    }
}
