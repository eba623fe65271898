//! A connection is a thin adapter between a byte stream and the core: the
//! reader hands every complete frame to the core, a writer task (only while
//! there is output) writes what the session accumulated, and when either side
//! ends it the connection closes cleanly: the last packets, the write side
//! shut down, then the client's remaining input drained before the socket
//! closes, so the client reads every acknowledgement and the DISCONNECT
//! instead of a reset (after a client's own DISCONNECT nothing is left to
//! drain on plain TCP, and the socket closes at once).
//!
//! Generic over the stream ([`Transport`]): plain TCP and TCP with TLS or
//! WebSocket layers serve through the same code, which never touches the
//! session or the router differently for either.

mod asleep;
mod reader;
mod state;
mod writer;

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;

use super::accept::{Accepted, ConnectionSlot};
use super::context::{Ctx, Link};
use super::transport::{ReadHalf, Transport};
use crate::codec::Connect;
use crate::router::CloseReason;
use crate::time::Time;
use reader::Start;
pub use state::Connection;
use state::Identity;

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
    let who = Identity {
        id,
        key: attached.key,
        protocol: connect.protocol,
        max_packet_to_client: max_out,
        client_id,
    };
    let conn = Rc::new(Connection::<S>::new(who, fd, wr, slot).parkable(S::Reader::PARKABLE));
    // The CONNECT's bytes share the read buffer's allocation: release them so the
    // buffer can be reused in place.
    drop(connect);
    ctx.add_link(id, conn.clone());
    // The CONNACK (and anything resumed) was marked before the link existed.
    conn.clone().wake_writer(&ctx);
    tracing::debug!(
        client_id = &*conn.client_id,
        session_present = attached.session_present,
        "session attached"
    );
    run(ctx, conn, rd, leftover, Start::Connected)
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
async fn run<S: Transport>(
    ctx: Rc<Ctx>,
    conn: Rc<Connection<S>>,
    mut rd: S::Reader,
    leftover: BytesMut,
    start: Start,
) {
    let end = reader::read_loop(&ctx, &conn, &mut rd, leftover, start).await;
    if let reader::End::Quiet = end {
        return park(&ctx, conn, rd);
    }
    reader::log_end(&ctx, &conn, &end);
    // Boxed, as every rare wait with a timer: their state would otherwise
    // enlarge the task that every idle connection holds.
    let finished = Box::pin(finish_output(&ctx, &conn)).await;
    detach_session(&ctx, &conn);
    if finished && end.client_may_send::<S::Reader>() {
        Box::pin(reader::drain(&ctx, &conn, &mut rd)).await;
    }
    ctx.remove_link(conn.id);
}

/// The connection's end for its session (a will, an expiry, a clean end).
fn detach_session<S: Transport>(ctx: &Rc<Ctx>, conn: &Connection<S>) {
    let now = ctx.now();
    ctx.with_core(|core| core.disconnected(conn.key, conn.id, now));
}

/// Gives up the reader task of a quiet connection until its client sends
/// again or it must close: the task and its read buffer are what an idle
/// connection would otherwise hold, and with no writer running the stream
/// is folded into its bare socket as well. The core's parking wakes it
/// ([`Link::wake_parked`]).
fn park<S: Transport>(ctx: &Rc<Ctx>, conn: Rc<Connection<S>>, rd: S::Reader) {
    conn.drop_canceller();
    conn.park_reader(rd);
    if ctx.park(conn.id, conn.socket()).is_err() {
        conn.wake_parked(ctx);
    }
}

impl<S: Transport> Connection<S> {
    /// Spawns the parked reader again, starting with `input` (what the
    /// parking read, if anything).
    fn start_parked_reader(self: Rc<Self>, ctx: &Rc<Ctx>, input: BytesMut) {
        match self.take_parked_reader() {
            Ok(rd) => monoio::spawn(run(ctx.clone(), self, rd, input, Start::Woken)),
            Err(error) => monoio::spawn(end_without_socket(ctx.clone(), self, error)),
        };
    }
}

/// Ends a connection whose parked socket was lost (it could not be given
/// back to the runtime): the session is detached as for any close.
async fn end_without_socket<S: Transport>(
    ctx: Rc<Ctx>,
    conn: Rc<Connection<S>>,
    error: std::io::Error,
) {
    let client_id = &*conn.client_id;
    tracing::info!(client_id, reason = "socket lost", %error, "client disconnected");
    detach_session(&ctx, &conn);
    ctx.remove_link(conn.id);
}

/// Lets the last packets and the final DISCONNECT go out and shuts the write
/// side, within [`FINISH_GRACE`]. False when the client did not take them in
/// time: the socket is then shut at once.
async fn finish_output<S: Transport>(ctx: &Rc<Ctx>, conn: &Rc<Connection<S>>) -> bool {
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

impl<S: Transport> Link for Connection<S> {
    fn wake_writer(self: Rc<Self>, ctx: &Rc<Ctx>) {
        match self.start_writer() {
            Ok(Some(wr)) => {
                monoio::spawn(writer::write_loop(ctx.clone(), self, wr));
            }
            Ok(None) => {}
            Err(error) => {
                let client_id = &*self.client_id;
                tracing::warn!(client_id, %error, "could not take an idle socket back");
                self.request_close(CloseReason::WriteFailed);
                ctx.unpark(self.id);
            }
        }
    }

    fn wake_parked(self: Rc<Self>, ctx: &Rc<Ctx>) {
        self.start_parked_reader(ctx, BytesMut::new());
    }

    fn take_ready_input(self: Rc<Self>, ctx: &Rc<Ctx>) {
        if let asleep::Woken::Reader(input) = asleep::take_idle_input(ctx, &self) {
            self.start_parked_reader(ctx, input);
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
