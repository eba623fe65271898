//! A connection's state, shared by its reader and its writer.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use monoio::io::{CancelHandle, Canceller};

use crate::router::{CloseReason, ConnId, SessionKey};
use crate::server::accept::ConnectionSlot;
use crate::server::notify::Notify;
use crate::server::transport::{BareSocket, Transport};
use crate::time::Time;

/// Where a connection's output stands. The reader and the writer move it on;
/// nothing else does.
pub enum Output<W> {
    /// Open, nothing to write: there is no writer task, the write half waits here.
    Parked(W),
    /// Open, nothing to write and the reader parked: both halves folded
    /// into the bare socket (see [`Transport::fold`]); whichever side is
    /// needed first unfolds them.
    Asleep(BareSocket),
    /// Open; a writer task owns the write half and runs until it is dry.
    Writing,
    /// The reader stopped: what is left, then the final DISCONNECT, then the
    /// write side is shut down. Whoever holds the write half does it.
    Finishing,
    /// The write side is shut down (or failed).
    Closed,
}

/// The 5.0 DISCONNECT the broker sends last, if it ends the connection.
pub struct Farewell {
    pub code: u8,
    pub reason: Box<str>,
}

/// One client connection on this core, over the byte stream `S`.
pub struct Connection<S: Transport> {
    pub id: ConnId,
    pub key: SessionKey,
    pub protocol: crate::codec::Protocol,
    /// The client's 5.0 Maximum Packet Size (bounds the final DISCONNECT).
    pub max_packet_to_client: u32,
    /// The socket, for an abortive close when the client stops reading.
    fd: RawFd,
    pub client_id: Arc<str>,
    output: RefCell<Output<S::Writer>>,
    /// The read half while the reader is parked and a writer runs (with no
    /// writer it is folded into [`Output::Asleep`]).
    parked_reader: Cell<Option<S::Reader>>,
    /// Set once: why the broker ends the connection.
    close: Cell<Option<CloseReason>>,
    /// Wakes the reader: resumed, told to close, or the write side shut down.
    reader: Notify,
    /// Cancels the reader's pending read when the connection must end or
    /// park; made at the first read after the reader (re)started, dropped
    /// when it parks.
    canceller: RefCell<Option<Canceller>>,
    /// Boxed: set only when the broker ends a 5.0 connection.
    farewell: Cell<Option<Box<Farewell>>>,
    /// The client sent a QoS 1/2 PUBLISH: with `persistence_fsync =
    /// "always"` its output (the acknowledgements) waits for the disk.
    acks_publishes: Cell<bool>,
    /// Whether the reader may park while the client is quiet (its stream
    /// buffers nothing of its own; see `server::parking`).
    parkable: bool,
    /// When the reader last handled input.
    last_input: Cell<Time>,
    /// The core asked the reader to park: its read was cancelled for that.
    park_asked: Cell<bool>,
    /// Held until the reader and any writer are done with the socket.
    _slot: ConnectionSlot,
}

/// Who a connection is, once the core attached its session.
pub struct Identity {
    pub id: ConnId,
    pub key: SessionKey,
    pub protocol: crate::codec::Protocol,
    pub max_packet_to_client: u32,
    pub client_id: Arc<str>,
}

impl<S: Transport> Connection<S> {
    pub fn new(
        who: Identity,
        fd: RawFd,
        write_half: S::Writer,
        slot: ConnectionSlot,
    ) -> Connection<S> {
        Connection {
            id: who.id,
            key: who.key,
            protocol: who.protocol,
            max_packet_to_client: who.max_packet_to_client,
            fd,
            client_id: who.client_id,
            output: RefCell::new(Output::Parked(write_half)),
            parked_reader: Cell::new(None),
            close: Cell::new(None),
            reader: Notify::default(),
            canceller: RefCell::new(None),
            farewell: Cell::new(None),
            acks_publishes: Cell::new(false),
            parkable: false,
            // Set by the reader's first look at its buffer.
            last_input: Cell::new(Time::ZERO),
            park_asked: Cell::new(false),
            _slot: slot,
        }
    }

    /// Lets the reader park while the client is quiet (see `parkable`).
    pub fn parkable(mut self, parkable: bool) -> Connection<S> {
        self.parkable = parkable;
        self
    }

    /// The client sent a QoS 1/2 PUBLISH (see `acks_publishes`).
    pub fn set_acks_publishes(&self) {
        self.acks_publishes.set(true);
    }

    pub fn acks_publishes(&self) -> bool {
        self.acks_publishes.get()
    }

    /// Why the broker ends the connection, once it decided to.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close.get()
    }

    /// Ends the connection: cancels the pending read and wakes a paused reader.
    /// The first reason given is the one that counts.
    pub fn request_close(&self, reason: CloseReason) {
        if self.close.get().is_none() {
            self.close.set(Some(reason));
        }
        self.cancel_read();
        self.reader.notify();
    }

    fn cancel_read(&self) {
        let mut canceller = self.canceller.borrow_mut();
        if let Some(c) = canceller.take() {
            *canceller = Some(c.cancel());
        }
    }

    /// The reader parked: it holds no read to cancel.
    pub fn drop_canceller(&self) {
        self.canceller.borrow_mut().take();
    }

    pub fn socket(&self) -> RawFd {
        self.fd
    }

    /// The reader handled input at `now`.
    pub fn note_input(&self, now: Time) {
        self.last_input.set(now);
    }

    /// When the reader last handled input.
    pub fn last_input(&self) -> Time {
        self.last_input.get()
    }

    /// Whether the reader may park at all (see `parkable`).
    pub fn is_parkable(&self) -> bool {
        self.parkable
    }

    /// Asks the reader to park if the client sent nothing since `cutoff`:
    /// cancels its pending read, which then ends in [`Connection::take_park_ask`].
    pub fn ask_park_if_quiet(&self, cutoff: Time) {
        if self.may_park(cutoff) {
            self.park_asked.set(true);
            self.cancel_read();
        }
    }

    /// Whether the reader may be asked to park: parkable, open, not asked
    /// yet, and nothing read since `cutoff`.
    pub fn may_park(&self, cutoff: Time) -> bool {
        self.parkable
            && self.close.get().is_none()
            && !self.park_asked.get()
            && self.last_input.get() < cutoff
    }

    /// Whether the core asked the reader to park since the last call.
    pub fn take_park_ask(&self) -> bool {
        self.park_asked.replace(false)
    }

    pub fn cancel_handle(&self) -> CancelHandle {
        self.canceller
            .borrow_mut()
            .get_or_insert_with(Canceller::new)
            .handle()
    }

    /// Wakes a reader waiting in [`Connection::woken`].
    pub fn wake_reader(&self) {
        self.reader.notify();
    }

    /// Resolves after the next wake-up (or at once if one is pending): the
    /// core resumed the connection, or it must close.
    pub async fn woken(&self) {
        self.reader.notified().await;
    }

    /// The write half if it is parked (unfolded if asleep), marking the
    /// output as written by a new writer task. `Ok(None)` if one runs or the
    /// connection is finishing; an error if an asleep socket could not be
    /// unfolded (it is closed: the output is then closed too).
    pub fn start_writer(&self) -> io::Result<Option<S::Writer>> {
        let mut output = self.output.borrow_mut();
        match std::mem::replace(&mut *output, Output::Writing) {
            Output::Parked(w) => Ok(Some(w)),
            Output::Asleep(socket) => match S::unfold(socket) {
                Ok((rd, w)) => {
                    self.parked_reader.set(Some(rd));
                    Ok(Some(w))
                }
                Err(e) => {
                    *output = Output::Closed;
                    Err(e)
                }
            },
            other => {
                *output = other;
                Ok(None)
            }
        }
    }

    /// A writer ran dry. While the connection is open it parks the half
    /// (folding it with a parked reader's) and ends (`None`); when
    /// finishing it gets the half back to finish with.
    pub fn park(&self, w: S::Writer) -> Option<S::Writer> {
        let mut output = self.output.borrow_mut();
        match *output {
            Output::Writing => {
                *output = match self.parked_reader.take() {
                    Some(rd) => self.fold(rd, w),
                    None => Output::Parked(w),
                };
                None
            }
            _ => Some(w),
        }
    }

    /// The reader parks: its half is kept here, folded with the write half
    /// into the bare socket when no writer runs.
    pub fn park_reader(&self, rd: S::Reader) {
        let mut output = self.output.borrow_mut();
        match std::mem::replace(&mut *output, Output::Writing) {
            Output::Parked(w) => *output = self.fold(rd, w),
            other => {
                *output = other;
                self.parked_reader.set(Some(rd));
            }
        }
    }

    /// One non-blocking `recv` into `buf` from the bare socket while the
    /// connection is asleep (folded): `None` when it is not, for then the
    /// runtime owns the socket's reads.
    pub fn recv_asleep(&self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        let output = self.output.borrow();
        let Output::Asleep(socket) = &*output else {
            return None;
        };
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the
        // call, and the socket is open: `output` holds it.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        Some(usize::try_from(n).map_err(|_| io::Error::last_os_error()))
    }

    /// The parked reader's half, unfolded if asleep. An error if there is
    /// none: the socket could not be unfolded (it is closed), or a writer
    /// failed to unfold it.
    pub fn take_parked_reader(&self) -> io::Result<S::Reader> {
        if let Some(rd) = self.parked_reader.take() {
            return Ok(rd);
        }
        let mut output = self.output.borrow_mut();
        match std::mem::replace(&mut *output, Output::Closed) {
            Output::Asleep(socket) => {
                let (rd, w) = S::unfold(socket)?;
                *output = Output::Parked(w);
                Ok(rd)
            }
            other => {
                *output = other;
                Err(io::Error::other("the connection's socket is gone"))
            }
        }
    }

    /// Both halves as the bare socket if the stream folds, else the write
    /// half parked and the read half kept.
    fn fold(&self, rd: S::Reader, w: S::Writer) -> Output<S::Writer> {
        match S::fold(rd, w) {
            Ok(socket) => Output::Asleep(socket),
            Err((rd, w)) => {
                self.parked_reader.set(Some(rd));
                Output::Parked(w)
            }
        }
    }

    /// The reader stopped: from now on the output finishes. Returns the write
    /// half if no writer runs (the reader finishes itself), and whether a
    /// writer task is running and will finish.
    pub fn begin_finishing(&self) -> (Option<S::Writer>, bool) {
        let mut output = self.output.borrow_mut();
        match std::mem::replace(&mut *output, Output::Finishing) {
            Output::Parked(w) => (Some(w), false),
            Output::Writing => (None, true),
            // Only while the reader is parked, so not from the reader.
            done @ (Output::Closed | Output::Asleep(_)) => {
                *output = done;
                (None, false)
            }
            Output::Finishing => (None, false),
        }
    }

    /// The write side is shut down, or failed.
    pub fn output_closed(&self) {
        *self.output.borrow_mut() = Output::Closed;
        self.reader.notify();
    }

    pub fn is_output_closed(&self) -> bool {
        matches!(*self.output.borrow(), Output::Closed)
    }

    pub async fn wait_output_closed(&self) {
        while !self.is_output_closed() {
            self.reader.notified().await;
        }
    }

    /// Records the 5.0 DISCONNECT to send last (ignored for 3.1.1 clients,
    /// which have no server DISCONNECT).
    pub fn set_farewell(&self, code: u8, reason: &str) {
        if self.protocol.is_v5() {
            self.farewell.set(Some(Box::new(Farewell {
                code,
                reason: reason.into(),
            })));
        }
    }

    pub fn take_farewell(&self) -> Option<Box<Farewell>> {
        self.farewell.take()
    }

    /// Shuts both directions of the socket now, so that a write blocked on a
    /// client that stopped reading fails instead of holding the connection.
    /// Only called while the caller holds the read half, which keeps the
    /// stream, and so this descriptor, open.
    pub fn abort(&self) {
        // SAFETY: `shutdown(2)` takes no pointers and only changes the state of
        // the socket. The descriptor belongs to this connection's stream, which
        // the caller keeps open (see above), so it cannot name another file.
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RDWR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monoio::net::TcpStream;

    /// What every plain-TCP connection costs beside its session, idle or not:
    /// printed, and bounded so that growth is a decision.
    #[test]
    fn a_connection_stays_small() {
        let size = std::mem::size_of::<Connection<TcpStream>>();
        eprintln!("Connection (plain TCP): {size} bytes");
        assert!(size <= 176, "Connection grew to {size} bytes");
    }
}
