//! Sizes the process's file descriptor table once, at start, for every
//! connection the broker may hold.
//!
//! The kernel grows a full table by doubling it, and in a multi-threaded
//! process each growth waits for an RCU grace period (`expand_files` ->
//! `synchronize_rcu`, several milliseconds) inside whatever call needed the
//! descriptor: for the broker that is a core's `accept`, so the core and
//! every client on it stall. A fleet reconnecting to a fresh broker paid
//! that at 128, 256, ... 16384 connections. A table grown once here costs 8
//! bytes of kernel memory per slot (not in the RSS) and never shrinks.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Descriptors beyond the connections: listeners, the rings, eventfds, the
/// store's files, bridges, the metrics endpoint.
const SPARE: usize = 1024;

/// Grows the table to hold `connections` plus [`SPARE`] descriptors, capped
/// by the open-file limit. Returns the slots it made sure of (0 when it
/// could not; the table then grows on demand as before).
pub fn reserve(connections: usize) -> usize {
    let limit = usize::try_from(open_file_limit()).unwrap_or(usize::MAX);
    let wanted = connections.saturating_add(SPARE).min(limit);
    match touch_slot(wanted.saturating_sub(1)) {
        Ok(()) => wanted,
        Err(e) => {
            tracing::debug!(error = %e, slots = wanted, "cannot presize the descriptor table");
            0
        }
    }
}

/// The soft RLIMIT_NOFILE: no descriptor at or above it can be opened (0
/// when it cannot be read).
pub(super) fn open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct passed, which lives here.
    match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
        0 => limit.rlim_cur,
        _ => 0,
    }
}

/// Duplicates a descriptor to the lowest free number at or above `slot`,
/// which makes the kernel grow the table to hold it, and closes the copy.
fn touch_slot(slot: usize) -> std::io::Result<()> {
    let slot = libc::c_int::try_from(slot)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let probe = std::os::unix::net::UnixDatagram::unbound()?;
    // SAFETY: F_DUPFD_CLOEXEC reads only its integer arguments; `probe` is
    // open for the whole call.
    let copy = unsafe { libc::fcntl(probe.as_raw_fd(), libc::F_DUPFD_CLOEXEC, slot) };
    if copy < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `copy` was just returned by fcntl and nothing else owns it.
    drop(unsafe { OwnedFd::from_raw_fd(copy) });
    Ok(())
}

/// The slots the table holds now, from `/proc/self/status` (`FDSize`).
#[cfg(test)]
fn table_size() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("FDSize:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit() -> usize {
        usize::try_from(open_file_limit()).unwrap()
    }

    #[test]
    fn the_table_is_grown_to_the_connections_and_the_spare_slots() {
        // Below the limit wherever it is set (1024 on many machines).
        let connections = limit().saturating_sub(SPARE).min(8192);
        let reserved = reserve(connections);
        assert_eq!(reserved, (connections + SPARE).min(limit()));
        assert!(table_size() >= reserved, "FDSize {}", table_size());
    }

    #[test]
    fn the_open_file_limit_caps_the_table() {
        assert_eq!(reserve(usize::MAX), limit());
        assert!(table_size() >= limit());
    }
}
