//! A connection is a thin adapter between a byte stream and the core: the
//! reader hands every complete frame to the core, a writer task (only while
//! there is output) writes what the session accumulated, and when either side
//! ends it the connection closes cleanly: the last packets, the write side
//! shut down, then the client's remaining input drained before the socket
//! closes, so the client reads every acknowledgement and the DISCONNECT
//! instead of a reset.
//!
//! Generic over the stream ([`Transport`]): plain TCP and TCP with TLS or
//! WebSocket layers serve through the same code, which never touches the
//! session or the router differently for either.

mod reader;
mod state;
mod writer;

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use super::accept::{Accepted, ConnectionSlot};
use super::context::{Ctx, Link};
use super::parking::Wake;
use super::transport::{ReadHalf, Transport, WriteHalf};
use crate::codec::Connect;
use crate::router::CloseReason;
use crate::time::Time;
use reader::Start;
pub use state::Connection;

/// How long a connection's last packets may take to reach a client before the
/// socket is closed anyway: a client that stopped reading does not hold the
/// close up.
const FINISH_GRACE: Duration = Duration::from_secs(1);

/// Serves a connection whose session lives on this core, from CONNACK to close.
///
/// The attach is done here, synchronously; the returned future holds only
/// what the connection needs while it lives, since every idle connection
/// holds one (a plain `async fn` would keep its arguments for its whole life).
pub fn serve<S: Transport>(
    ctx: Rc<Ctx>,
    accepted: Accepted<S>,
    slot: ConnectionSlot,
) -> impl Future<Output = ()> {
    let id = ctx.next_conn_id();
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
    } = accepted;
    log_connected(&ctx, peer, listener, &connect, &client_id);
    let fd = stream.raw_fd();
    let (rd, wr) = stream.into_halves();
    let now = ctx.now();
    let (attached, max_out) = ctx.with_core(|core| {
        if let Some(image) = transferred {
            core.adopt_from_cluster(*image, now);
        }
        let attached = core.connect(
            &connect,
            client_id.clone(),
            id,
            now,
            assigned_id,
            permissions,
        );
        let max_out = core
            .session(attached.key)
            .map_or(u32::MAX, |s| s.client_maximum_packet_size());
        (attached, max_out)
    });
    let conn = Rc::new(
        Connection::new(id, attached.key, connect.protocol, max_out, fd, wr, slot)
            .parkable(S::Reader::PARKABLE),
    );
    // The CONNECT's bytes share the read buffer's allocation: release them so the
    // buffer can be reused in place.
    drop(connect);
    ctx.add_link(id, conn.clone());
    // The CONNACK (and anything resumed) was marked before the link existed.
    conn.clone().wake_writer(&ctx);
    tracing::debug!(
        client_id = &*client_id,
        session_present = attached.session_present,
        "session attached"
    );
    run(ctx, conn, rd, leftover, client_id, Start::Connected)
}

/// One line per accepted CONNECT, with what Mosquitto logs (address, id,
/// protocol, clean start, keep-alive, username), never the password.
fn log_connected(ctx: &Ctx, peer: SocketAddr, listener: usize, connect: &Connect, client_id: &str) {
    let username = connect.username.as_deref().map(String::from_utf8_lossy);
    tracing::info!(
        client_id,
        %peer,
        listener = %ctx.shared.listeners[listener].config,
        protocol = connect.protocol.name(),
        clean_start = connect.clean_start,
        keep_alive = connect.keep_alive,
        username = username.as_deref(),
        "client connected"
    );
}

/// The life of a connection after CONNACK (or after its parked reader woke):
/// reading, then the clean close.
async fn run<R: ReadHalf, W: WriteHalf>(
    ctx: Rc<Ctx>,
    conn: Rc<Connection<W>>,
    mut rd: R,
    leftover: BytesMut,
    client_id: Arc<str>,
    start: Start,
) {
    let end = reader::read_loop(&ctx, &conn, &mut rd, leftover, &client_id, start).await;
    if let reader::End::Quiet = end {
        return park(ctx, conn, rd, client_id);
    }
    reader::log_end(&ctx, &conn, &client_id, &end);
    // Boxed, as every rare wait with a timer: their state would otherwise
    // enlarge the task that every idle connection holds.
    let finished = Box::pin(finish_output(&ctx, &conn)).await;
    let now = ctx.now();
    ctx.with_core(|core| core.disconnected(conn.key, conn.id, now));
    if finished && end.client_may_send() {
        Box::pin(reader::drain(&ctx, &conn, &mut rd)).await;
    }
    ctx.remove_link(conn.id);
}

/// Gives up the reader task of a quiet connection until its client sends
/// again or it must close: the task and its read buffer are what an idle
/// connection would otherwise hold.
fn park<R: ReadHalf, W: WriteHalf>(
    ctx: Rc<Ctx>,
    conn: Rc<Connection<W>>,
    rd: R,
    client_id: Arc<str>,
) {
    let (id, socket) = (conn.id, conn.socket());
    conn.drop_canceller();
    let again = ctx.clone();
    let wake: Wake = Box::new(move || {
        monoio::spawn(run(
            again,
            conn,
            rd,
            BytesMut::new(),
            client_id,
            Start::Woken,
        ));
    });
    if let Err(wake) = ctx.park(id, socket, wake) {
        wake();
    }
}

/// Lets the last packets and the final DISCONNECT go out and shuts the write
/// side, within [`FINISH_GRACE`]. False when the client did not take them in
/// time: the socket is then shut at once.
async fn finish_output<W: WriteHalf>(ctx: &Rc<Ctx>, conn: &Rc<Connection<W>>) -> bool {
    let finished = match conn.begin_finishing() {
        (Some(wr), _) => {
            let flush = writer::write_loop(ctx.clone(), conn.clone(), wr);
            monoio::time::timeout(FINISH_GRACE, Box::pin(flush))
                .await
                .is_ok()
        }
        (None, true) => {
            let closed = conn.wait_output_closed();
            monoio::time::timeout(FINISH_GRACE, Box::pin(closed))
                .await
                .is_ok()
        }
        (None, false) => true,
    };
    if !finished {
        ctx.count(|c| c.close_aborts += 1);
        conn.abort();
    }
    finished
}

impl<W: WriteHalf> Link for Connection<W> {
    fn wake_writer(self: Rc<Self>, ctx: &Rc<Ctx>) {
        if let Some(wr) = self.start_writer() {
            monoio::spawn(writer::write_loop(ctx.clone(), self, wr));
        }
    }

    fn close(&self, reason: CloseReason) {
        self.request_close(reason);
    }

    fn resume(&self) {
        self.wake_reader();
    }

    fn is_quiet_since(&self, cutoff: Time) -> bool {
        self.may_park(cutoff)
    }

    fn park_if_quiet(&self, cutoff: Time) {
        self.ask_park_if_quiet(cutoff);
    }
}
