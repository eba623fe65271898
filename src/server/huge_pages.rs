//! Transparent huge pages for the broker's memory: off unless configured.
//!
//! mimalloc marks its arenas `MADV_HUGEPAGE`, so on a kernel in the common
//! `madvise` mode the first touch of each 2 MiB region faults in a whole huge
//! page, zeroed inside the core that touched it: 5-8 ms on our 2-vCPU VM, in
//! which every client of that core waits (the tail of a connect storm).
//! `khugepaged` later collapses sparsely used regions into huge pages too, so
//! the RSS grows with the load unchanged. Huge pages pay only at maximum rate
//! (fan-out 1 -> 100: 1.07x the deliveries), which `transparent_huge_pages`
//! is for.

/// Allows or forbids transparent huge pages for this process from now on
/// (`prctl(PR_SET_THP_DISABLE)`; pages already huge stay so).
pub fn allow(allowed: bool) -> std::io::Result<()> {
    let disable = libc::c_ulong::from(!allowed);
    // SAFETY: PR_SET_THP_DISABLE takes integers only and touches no memory
    // of ours.
    match unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, disable, 0, 0, 0) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `THP_enabled` in /proc/self/status, where the kernel has the field.
    fn thp_enabled() -> Option<u8> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let value = status
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:"))?;
        value.trim().parse().ok()
    }

    #[test]
    fn forbidding_huge_pages_shows_in_the_process_status() {
        let Some(before) = thp_enabled() else {
            return; // a kernel without the field: nothing to read back
        };
        allow(false).expect("PR_SET_THP_DISABLE");
        assert_eq!(thp_enabled(), Some(0));
        allow(true).expect("PR_SET_THP_DISABLE");
        assert_eq!(thp_enabled(), Some(before));
    }
}
