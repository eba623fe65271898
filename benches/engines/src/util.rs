use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// User + system CPU seconds of the whole process (every thread, so the
/// engines' background threads count), from /proc/self/stat.
pub fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the ")" that ends the command name: state is the 3rd
    // field of the line, utime the 14th, stime the 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / rustix::param::clock_ticks_per_second() as f64
}

/// Bytes allocated on disk (st_blocks × 512) under `dir`.
pub fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    walk(dir, &mut |p| {
        if let Ok(m) = std::fs::metadata(p) {
            total += m.blocks() * 512;
        }
    });
    total
}

/// Drops the clean pages of every file under `dir` from the page cache, so
/// that recovery reads from the disk (no root, no global drop_caches).
pub fn evict(dir: &Path) -> io::Result<()> {
    let mut err = Ok(());
    walk(dir, &mut |p| {
        let r = File::open(p).and_then(|f| {
            f.sync_all()?;
            rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed)?;
            Ok(())
        });
        if r.is_err() && err.is_ok() {
            err = r;
        }
    });
    err
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(&p, f),
            Ok(t) if t.is_file() => f(&p),
            _ => {}
        }
    }
}

pub fn mb(bytes: f64) -> f64 {
    bytes / 1e6
}

/// Median and min–max of a few repetitions.
pub struct Spread {
    pub median: f64,
    /// which repetition (in input order) is the median
    pub median_index: usize,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(xs: impl Iterator<Item = f64>) -> Self {
        let xs: Vec<f64> = xs.collect();
        let mut order: Vec<usize> = (0..xs.len()).collect();
        order.sort_by(|&a, &b| xs[a].total_cmp(&xs[b]));
        let median_index = order[order.len() / 2];
        Spread {
            median: xs[median_index],
            median_index,
            min: xs[order[0]],
            max: xs[order[order.len() - 1]],
        }
    }

    pub fn range(&self, decimals: usize) -> String {
        format!("{:.*}–{:.*}", decimals, self.min, decimals, self.max)
    }
}
