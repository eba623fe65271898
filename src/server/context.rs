//! One core's context, shared by its tasks through `Rc` (a core is one thread).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::io::Canceller;

use super::notify::Notify;
use super::Shared;
use crate::codec::Protocol;
use crate::router::{CloseReason, ConnId, Core, SessionKey};

pub type WriteHalf = monoio::io::OwnedWriteHalf<monoio::net::TcpStream>;

/// How a connection is told to stop and to write.
///
/// The writer is a task only while there is something to write: when it runs
/// dry it parks the socket's write half here and ends, so an idle connection
/// holds no writer task and no output buffer.
pub struct ConnSignals {
    pub key: SessionKey,
    pub conn: ConnId,
    pub protocol: Protocol,
    /// The client's 5.0 Maximum Packet Size (for the final DISCONNECT).
    pub max_packet_to_client: u32,
    /// Wakes a running writer.
    pub writer: Notify,
    write_half: RefCell<Option<WriteHalf>>,
    writer_active: Cell<bool>,
    /// Rung when a writer finishes the connection (final flush done).
    pub writer_done: Notify,
    /// Set once: why the connection must end (the reader acts on it).
    pub close: Cell<Option<CloseReason>>,
    /// Cancels the reader's pending read when the connection must end.
    canceller: RefCell<Canceller>,
    /// 5.0 DISCONNECT reason code and reason string the writer sends last, if any.
    pub final_disconnect: RefCell<Option<(u8, Box<str>)>>,
    /// The reader is done; the writer flushes what is left and exits.
    pub finishing: Cell<bool>,
}

impl ConnSignals {
    pub fn new(
        key: SessionKey,
        conn: ConnId,
        protocol: Protocol,
        half: WriteHalf,
        max_packet_to_client: u32,
    ) -> ConnSignals {
        ConnSignals {
            key,
            conn,
            protocol,
            max_packet_to_client,
            writer: Notify::default(),
            write_half: RefCell::new(Some(half)),
            writer_active: Cell::new(false),
            writer_done: Notify::default(),
            close: Cell::new(None),
            canceller: RefCell::new(Canceller::new()),
            final_disconnect: RefCell::new(None),
            finishing: Cell::new(false),
        }
    }

    /// Makes sure a writer runs: wakes the running one or starts one.
    pub fn wake_writer(self: &Rc<Self>, ctx: &Rc<Ctx>) {
        if self.writer_active.get() {
            self.writer.notify();
        } else if let Some(half) = self.write_half.borrow_mut().take() {
            self.writer_active.set(true);
            monoio::spawn(super::writer::write_loop(ctx.clone(), self.clone(), half));
        }
    }

    pub fn writer_active(&self) -> bool {
        self.writer_active.get()
    }

    /// A writer that ran dry parks the write half and ends.
    pub fn park_writer(&self, half: WriteHalf) {
        *self.write_half.borrow_mut() = Some(half);
        self.writer_active.set(false);
    }

    /// A writer that finished the connection.
    pub fn writer_finished(&self) {
        self.writer_active.set(false);
        self.writer_done.notify();
    }

    /// The parked write half, for the final flush when no writer runs.
    pub fn take_write_half(&self) -> Option<WriteHalf> {
        self.write_half.borrow_mut().take()
    }

    pub fn cancel_handle(&self) -> monoio::io::CancelHandle {
        self.canceller.borrow().handle()
    }

    /// Ends the connection: cancels the pending read and wakes the writer.
    pub fn close(&self, reason: CloseReason) {
        if self.close.get().is_none() {
            self.close.set(Some(reason));
        }
        let c = std::mem::take(&mut *self.canceller.borrow_mut());
        *self.canceller.borrow_mut() = c.cancel();
        self.writer.notify();
    }
}

pub struct Ctx {
    pub id: usize,
    pub core: RefCell<Core>,
    pub shared: Arc<Shared>,
    pub conns: RefCell<HashMap<ConnId, Rc<ConnSignals>>>,
    next_conn: Cell<u64>,
    flush_retry: Cell<bool>,
}

impl Ctx {
    pub fn new(id: usize, core: Core, shared: Arc<Shared>) -> Ctx {
        Ctx {
            id,
            core: RefCell::new(core),
            shared,
            conns: RefCell::new(HashMap::new()),
            next_conn: Cell::new(0),
            flush_retry: Cell::new(false),
        }
    }

    /// Milliseconds on the broker's monotonic clock (one base for all cores, so
    /// deadlines carried by messages mean the same everywhere): the `now` the
    /// pure code gets.
    pub fn now(&self) -> u64 {
        self.shared.started.elapsed().as_millis() as u64
    }

    pub fn next_conn_id(&self) -> ConnId {
        let n = self.next_conn.get() + 1;
        self.next_conn.set(n);
        (self.id as u64) << 48 | n
    }

    /// After the router ran: wake writers with new bytes, close what it asked to
    /// close, and ship cross-core batches.
    pub fn apply_effects(self: &Rc<Self>) {
        let mut core = self.core.borrow_mut();
        let conns = self.conns.borrow();
        let mut dirty = std::mem::take(&mut core.dirty);
        for key in dirty.drain(..) {
            if let Some(conn) = core.take_dirty(key) {
                if let Some(s) = conns.get(&conn) {
                    s.wake_writer(self);
                }
            }
        }
        core.dirty = dirty;
        for (conn, reason) in core.closing.drain(..) {
            if let Some(s) = conns.get(&conn) {
                s.close(reason);
            }
        }
        let sent = core.flush(&self.shared.mesh);
        drop(conns);
        drop(core);
        if !sent {
            self.schedule_flush_retry();
        }
    }

    /// A destination queue was full: retry from a task of its own, so the mesh
    /// task never blocks (two cores waiting on each other would deadlock).
    fn schedule_flush_retry(self: &Rc<Self>) {
        if self.flush_retry.replace(true) {
            return;
        }
        let ctx = self.clone();
        monoio::spawn(async move {
            loop {
                monoio::time::sleep(Duration::from_micros(200)).await;
                if ctx.core.borrow_mut().flush(&ctx.shared.mesh) {
                    break;
                }
            }
            ctx.flush_retry.set(false);
        });
    }

    /// Back-pressure for publishers: wait until this core's outboxes drained.
    pub async fn wait_outbox_drained(self: &Rc<Self>) {
        while self.core.borrow().has_outgoing() {
            self.core.borrow_mut().counters.mesh_full_waits += 1;
            monoio::time::sleep(Duration::from_micros(200)).await;
            let sent = self.core.borrow_mut().flush(&self.shared.mesh);
            if sent {
                return;
            }
        }
    }
}
