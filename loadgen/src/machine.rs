//! The machine a run was measured on, for the JSON report: numbers from
//! different hardware are not comparable, so they travel with it.

use std::fs;

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub hostname: String,
    /// CPUs this process may use.
    pub cores: usize,
    pub kernel: String,
    pub cpu_model: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let read = |p: &str| fs::read_to_string(p).map(|s| s.trim().to_string()).ok();
        Machine {
            hostname: read("/proc/sys/kernel/hostname").unwrap_or_default(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: read("/proc/sys/kernel/osrelease").unwrap_or_default(),
            cpu_model: read("/proc/cpuinfo")
                .and_then(|c| cpu_model(&c))
                .unwrap_or_default(),
        }
    }
}

/// The first "model name" of /proc/cpuinfo (x86), or "Model"/"CPU part" elsewhere.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    ["model name", "Model", "CPU part"].iter().find_map(|key| {
        cpuinfo.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == *key).then(|| v.trim().to_string())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_model_name() {
        let info = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n";
        assert_eq!(cpu_model(info).unwrap(), "Intel(R) Xeon(R) CPU @ 2.20GHz");
        assert_eq!(cpu_model("nothing"), None);
    }
}
