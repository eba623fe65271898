//! Idle connections without a task or a read buffer.
//!
//! A connection that has sent nothing for [`QUIET_AFTER`] gives up its
//! reader task (the largest part of what an idle connection holds, with its
//! read buffer): its pending read is cancelled, the socket is registered in
//! this core's epoll set, and the connection keeps its read half (folded,
//! with the write half, into the bare socket while nothing is written; see
//! `Transport::fold`). When the client sends again (or the socket fails), one
//! task for the whole core sees it and the reader task is spawned again; a
//! close (take-over, keep-alive, shutdown) wakes it the same way. A reader also
//! parks right after what a device sends before it goes quiet (its CONNECT
//! or a SUBSCRIBE on a busy core, a ping after [`IDLE_GAP`]; see
//! `connection::reader`), before it issues its next read, so that park
//! cancels nothing.
//!
//! A busy connection parks at most once, right after its CONNECT (its next
//! packet wakes it), and only on a core with [`PARK_AT_SETUP_AWAKE`] awake
//! readers, so this costs nothing on the message path; a client that
//! connects and soon leaves pays that park and wake-up only then, and a
//! device that pings once a minute pays one `epoll_ctl` call (its socket
//! stays in the set while its woken reader runs, and is re-armed) and a
//! task spawn per ping.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::router::ConnId;

/// How long a connection must have been silent before its reader parks.
pub const QUIET_AFTER: Duration = Duration::from_secs(2);

/// How long a client must have been silent before a ping or acknowledgement
/// for it to count as an idle client's, whose reader parks again at once
/// (see `connection::reader`). A subscriber acknowledging faster keeps its
/// reader instead of parking and waking for each delivery; parking and
/// waking about once a second costs a few microseconds a second.
pub const IDLE_GAP: Duration = Duration::from_secs(1);

/// A reader parks right after setting up (its CONNECT, SUBSCRIBE or
/// UNSUBSCRIBE; see `connection::reader`) only while its core holds at
/// least this many awake readers, itself included. That is when parking
/// after the quiet time gets dear (each cancel walks a bucket of the ring's
/// pending reads: under one per bucket at this count) and when the readers
/// held for it add up (a connect storm). Below it, a client that connects
/// and soon publishes or leaves (a script's `mosquitto_pub`) pays no park
/// and wake-up, and the readers held for the quiet time take at most about
/// 170 KB per core.
pub const PARK_AT_SETUP_AWAKE: usize = 128;

/// At most this many ready connections are taken per `epoll_wait`; the core
/// wakes one such batch per turn (see `worker::parking_loop`).
pub const READY_BATCH: usize = 256;

/// One core's parked readers.
pub struct Parking {
    epoll: OwnedFd,
    /// Per connection whose socket is in the epoll set: the socket, and
    /// whether it is armed (the reader parked). A socket whose one-shot
    /// event fired stays in the set, disarmed, while its woken reader runs:
    /// parking it again re-arms it with one `EPOLL_CTL_MOD`, where taking it
    /// out on the wake-up and adding it again would take two calls.
    watched: RefCell<HashMap<ConnId, Watched>>,
    /// How many of `watched` are armed.
    armed: Cell<usize>,
}

#[derive(Clone, Copy)]
struct Watched {
    fd: RawFd,
    armed: bool,
}

impl Parking {
    pub fn new() -> io::Result<Parking> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a
        // new descriptor that nothing else owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh, open descriptor owned by no one else.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Parking {
            epoll,
            watched: RefCell::default(),
            armed: Cell::new(0),
        })
    }

    /// Parks connection `conn` on socket `fd` until it is readable (or
    /// [`Parking::unpark`]). An error when the socket cannot be watched: the
    /// caller then goes on reading.
    pub fn park(&self, conn: ConnId, fd: RawFd) -> io::Result<()> {
        let disarmed = self
            .watched
            .borrow()
            .get(&conn)
            .is_some_and(|w| w.fd == fd && !w.armed);
        let op = if disarmed {
            libc::EPOLL_CTL_MOD
        } else {
            libc::EPOLL_CTL_ADD
        };
        let mut rc = self.control(op, conn, fd);
        if rc.is_err() && disarmed {
            // Not in the set after all (the kernel drops a closed socket).
            rc = self.control(libc::EPOLL_CTL_ADD, conn, fd);
        }
        rc?;
        self.watched
            .borrow_mut()
            .insert(conn, Watched { fd, armed: true });
        self.armed.set(self.armed.get() + 1);
        Ok(())
    }

    /// Adds or re-arms `fd` for one readiness event of `conn`.
    fn control(&self, op: i32, conn: ConnId, fd: RawFd) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: conn,
        };
        // SAFETY: `event` is a valid epoll_event for the duration of the call;
        // both descriptors are open (the caller holds the socket).
        let rc = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Takes connection `conn` out of the set if it is parked; whether it
    /// was (its reader is then to be woken).
    pub fn unpark(&self, conn: ConnId) -> bool {
        let mut watched = self.watched.borrow_mut();
        let Some(fd) = watched.get(&conn).filter(|w| w.armed).map(|w| w.fd) else {
            return false;
        };
        watched.remove(&conn);
        self.armed.set(self.armed.get() - 1);
        self.remove(fd);
        true
    }

    /// Forgets connection `conn`, which ended: a disarmed socket left in the
    /// set goes with its close.
    pub fn forget(&self, conn: ConnId) {
        if let Some(w) = self.watched.borrow_mut().remove(&conn) {
            if w.armed {
                self.armed.set(self.armed.get() - 1);
                self.remove(w.fd);
            }
        }
    }

    fn remove(&self, fd: RawFd) {
        // SAFETY: no pointers (a null event is allowed for DEL). The socket
        // is still open, held by the connection; if unfolding it failed it
        // is closed, and DEL fails harmlessly (EBADF): the connection is
        // unparked before this core watches any new socket.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            );
        }
    }

    /// How many readers are parked.
    pub fn parked(&self) -> usize {
        self.armed.get()
    }

    /// The parked connections whose sockets became readable since the last
    /// call (without waiting), at most [`READY_BATCH`]. They are no longer
    /// parked: their sockets stay in the set, disarmed, until they park
    /// again or end ([`Parking::forget`]).
    pub fn ready(&self) -> Vec<ConnId> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; READY_BATCH];
        // SAFETY: `events` has room for READY_BATCH entries, the count passed.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                READY_BATCH as i32,
                0,
            )
        };
        let n = usize::try_from(n).unwrap_or(0);
        let mut watched = self.watched.borrow_mut();
        let mut ready = Vec::with_capacity(n);
        for e in &events[..n] {
            let conn = e.u64;
            if let Some(w) = watched.get_mut(&conn).filter(|w| w.armed) {
                w.armed = false;
                self.armed.set(self.armed.get() - 1);
                ready.push(conn);
            }
        }
        ready
    }

    /// A second descriptor of the epoll set, for the runtime to watch.
    pub fn watchable(&self) -> io::Result<OwnedFd> {
        self.epoll.try_clone()
    }

    /// Forgets every parked reader without waking it (the core is gone).
    pub fn clear(&self) {
        self.watched.borrow_mut().clear();
        self.armed.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_parked_socket_is_ready_when_its_peer_writes() {
        let parking = Parking::new().unwrap();
        let (mut client, server) = UnixStream::pair().unwrap();
        parking.park(7, server.as_raw_fd()).unwrap();
        assert!(parking.ready().is_empty());
        client.write_all(b"x").unwrap();
        assert_eq!(parking.ready(), vec![7]);
        // One-shot: reported once until parked again, and no longer parked.
        assert!(parking.ready().is_empty());
        assert_eq!(parking.parked(), 0);
        assert!(!parking.unpark(7), "a woken reader is not parked");
    }

    #[test]
    fn a_woken_socket_parks_again_and_is_ready_again() {
        let parking = Parking::new().unwrap();
        let (mut client, server) = UnixStream::pair().unwrap();
        for round in 0..3 {
            // The first park adds the socket; the later ones re-arm it.
            parking.park(7, server.as_raw_fd()).unwrap();
            assert_eq!(parking.parked(), 1);
            client.write_all(b"x").unwrap();
            assert_eq!(parking.ready(), vec![7], "round {round}");
            assert_eq!(parking.parked(), 0);
            // The reader takes the input (still readable it would fire again).
            let mut byte = [0u8; 1];
            std::io::Read::read(&mut &server, &mut byte).unwrap();
        }
        // Parked again and taken out: nothing more is reported.
        parking.park(7, server.as_raw_fd()).unwrap();
        assert!(parking.unpark(7));
        client.write_all(b"x").unwrap();
        assert!(parking.ready().is_empty());
    }

    #[test]
    fn an_ended_connection_is_forgotten_and_its_number_reusable() {
        let parking = Parking::new().unwrap();
        let (mut client, server) = UnixStream::pair().unwrap();
        parking.park(1, server.as_raw_fd()).unwrap();
        client.write_all(b"x").unwrap();
        assert_eq!(parking.ready(), vec![1]);
        parking.forget(1);
        drop((client, server));
        // A new socket, likely on the same descriptor number, parks afresh.
        let (mut client, server) = UnixStream::pair().unwrap();
        parking.park(2, server.as_raw_fd()).unwrap();
        assert_eq!(parking.parked(), 1);
        client.write_all(b"x").unwrap();
        assert_eq!(parking.ready(), vec![2]);
    }

    #[test]
    fn a_closed_peer_makes_the_socket_ready() {
        let parking = Parking::new().unwrap();
        let (client, server) = UnixStream::pair().unwrap();
        parking.park(1, server.as_raw_fd()).unwrap();
        drop(client);
        assert_eq!(parking.ready(), vec![1]);
    }

    #[test]
    fn an_unparked_socket_is_no_longer_watched() {
        let parking = Parking::new().unwrap();
        let (mut client, server) = UnixStream::pair().unwrap();
        parking.park(3, server.as_raw_fd()).unwrap();
        assert!(parking.unpark(3));
        client.write_all(b"x").unwrap();
        assert!(parking.ready().is_empty());
        assert!(!parking.unpark(3), "unparked once");
    }

    /// An eventfd that is readable from the start (one descriptor, where a
    /// socket pair takes two).
    fn readable_eventfd() -> OwnedFd {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new
        // descriptor that nothing else owns.
        let fd = unsafe { libc::eventfd(1, libc::EFD_CLOEXEC) };
        assert!(fd >= 0, "eventfd: {}", io::Error::last_os_error());
        // SAFETY: `fd` is a fresh, open descriptor owned by no one else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    #[test]
    fn a_storm_of_ready_sockets_is_taken_a_batch_at_a_time() {
        let parking = Parking::new().unwrap();
        let fds: Vec<OwnedFd> = (0..READY_BATCH + 3).map(|_| readable_eventfd()).collect();
        for (conn, fd) in fds.iter().enumerate() {
            parking.park(conn as ConnId, fd.as_raw_fd()).unwrap();
        }
        let mut taken = parking.ready();
        assert_eq!(taken.len(), READY_BATCH);
        let rest = parking.ready();
        assert_eq!(rest.len(), 3);
        assert!(parking.ready().is_empty());
        taken.extend(rest);
        taken.sort_unstable();
        let every: Vec<ConnId> = (0..fds.len() as ConnId).collect();
        assert_eq!(taken, every, "each ready connection exactly once");
    }

    #[test]
    fn a_bad_descriptor_is_not_parked() {
        let parking = Parking::new().unwrap();
        assert!(parking.park(1, -1).is_err());
        assert_eq!(parking.parked(), 0);
        assert!(!parking.unpark(1));
    }
}
