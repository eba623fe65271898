//! The broker's CPU time and memory, read from /proc/PID: the stable figures on
//! a small box where the generator and the broker share the CPU.

use std::fs;

use anyhow::{Context, Result};
use serde::Serialize;

/// /proc/PID/stat counts CPU time in USER_HZ ticks, which the Linux ABI fixes at
/// 100 on every mainstream architecture (what `sysconf(_SC_CLK_TCK)` returns);
/// a constant keeps this module free of `unsafe` FFI.
pub const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// utime + stime in ticks, from the text of /proc/PID/stat. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after the
/// last ')'.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // field 3 (state) is index 0
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory now and at its peak, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Memory {
    pub rss_kb: u64,
    pub hwm_kb: u64,
}

/// VmRSS and VmHWM from the text of /proc/PID/status.
pub fn parse_memory(status: &str) -> Option<Memory> {
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse().ok()
    };
    Some(Memory {
        rss_kb: field("VmRSS:")?,
        hwm_kb: field("VmHWM:")?,
    })
}

/// Reads one process's counters.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub pid: u32,
}

impl Probe {
    pub fn new(pid: u32) -> Probe {
        Probe { pid }
    }

    /// User + system CPU seconds used so far.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let path = format!("/proc/{}/stat", self.pid);
        let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let ticks = parse_cpu_ticks(&text).with_context(|| format!("parsing {path}"))?;
        Ok(ticks as f64 / CLOCK_TICKS_PER_SEC)
    }

    pub fn memory(&self) -> Result<Memory> {
        let path = format!("/proc/{}/status", self.pid);
        let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        parse_memory(&text).with_context(|| format!("no VmRSS/VmHWM in {path}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_survive_odd_command_names() {
        let stat = "1234 (my (odd) broker) S 1 1234 1234 0 -1 4194560 500 0 0 0 \
                    250 75 0 0 20 0 4 0 100 1000000 300 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn memory_fields_are_read_in_kib() {
        let status =
            "Name:\tmosquitto\nVmPeak:\t  20000 kB\nVmHWM:\t    9000 kB\nVmRSS:\t    8000 kB\n";
        assert_eq!(
            parse_memory(status),
            Some(Memory {
                rss_kb: 8000,
                hwm_kb: 9000
            })
        );
        assert_eq!(parse_memory("Name: x\n"), None);
    }

    #[test]
    fn reads_our_own_process() {
        let me = Probe::new(std::process::id());
        assert!(me.cpu_seconds().unwrap() >= 0.0);
        assert!(me.memory().unwrap().rss_kb > 0);
    }
}
