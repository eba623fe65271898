//! Grows this process's descriptor table before a run, so that opening the
//! clients' sockets never grows it mid-run.
//!
//! In a multi-threaded process each growth of the table (it doubles when
//! full) waits for an RCU grace period inside the `socket()` that needed it,
//! several milliseconds in which this thread and any other opening a
//! socket stand still; in an open-loop run that showed as the broker's
//! connect latency. One growth before the workers start costs nothing
//! measured.

use rustix::process::{getrlimit, Resource};

/// Descriptors beyond the clients' sockets: the rings, eventfds, the probe.
const SPARE: usize = 256;

/// Makes room for `sockets` descriptors plus [`SPARE`], capped by the
/// open-file limit; returns the slots made sure of (0 when it could not).
pub fn reserve(sockets: usize) -> usize {
    let limit = getrlimit(Resource::Nofile)
        .current
        .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let wanted = sockets.saturating_add(SPARE).min(limit);
    let Ok(slot) = i32::try_from(wanted.saturating_sub(1)) else {
        return 0;
    };
    let Ok(probe) = std::os::unix::net::UnixDatagram::unbound() else {
        return 0;
    };
    // The copy lands at `slot` or above and closes at once; the table keeps
    // its size.
    match rustix::io::fcntl_dupfd_cloexec(&probe, slot) {
        Ok(_copy) => wanted,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_holds_the_sockets_asked_for() {
        // Below the open-file limit wherever it is set (1024 on many machines).
        let limit = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
        let sockets = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .saturating_sub(SPARE)
            .min(2000);
        let reserved = reserve(sockets);
        assert_eq!(reserved, sockets + SPARE);
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let size: usize = status
            .lines()
            .find_map(|l| l.strip_prefix("FDSize:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        assert!(size >= reserved, "FDSize {size}");
    }
}
