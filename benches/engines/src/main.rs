//! Storage-engine benchmark for ringmq persistence (issue 10): a hand-written
//! append-only log vs redb vs fjall, on ringmq's workload, on one disk.
//!
//! Every measurement runs on one thread, as the per-core writer thread would:
//! a batch is the messages that arrived in one loop turn, committed at once
//! (group commit). Each figure is the median of `--reps` runs, with the
//! spread (min–max) beside it.

mod fjall_store;
mod log;
mod redb_store;
mod util;
mod workload;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use util::{cpu_secs, disk_usage, evict, mb, Spread};
use workload::{live_bytes, Batch, Loaded};

/// One per-core store, written by one thread.
pub trait Store {
    /// Writes one batch; when `durable`, it is on disk (fdatasync) on return.
    fn commit(&mut self, b: &Batch, durable: bool) -> Result<()>;
    /// Makes everything committed so far durable (the periodic mode's tick).
    fn sync(&mut self) -> Result<()>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Engine {
    Log,
    /// the log written into zero-filled preallocated space
    LogPrealloc,
    Redb,
    Fjall,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Log => "log",
            Engine::LogPrealloc => "log-prealloc",
            Engine::Redb => "redb",
            Engine::Fjall => "fjall",
        }
    }

    fn open(self, dir: &Path) -> Result<Box<dyn Store>> {
        Ok(match self {
            Engine::Log => Box::new(log::LogStore::open(dir, false)?),
            Engine::LogPrealloc => Box::new(log::LogStore::open(dir, true)?),
            Engine::Redb => Box::new(redb_store::RedbStore::open(dir)?),
            Engine::Fjall => Box::new(fjall_store::FjallStore::open(dir)?),
        })
    }

    fn recover(self, dir: &Path) -> Result<Loaded> {
        match self {
            Engine::Log | Engine::LogPrealloc => log::recover(dir),
            Engine::Redb => redb_store::recover(dir),
            Engine::Fjall => fjall_store::recover(dir),
        }
    }
}

#[derive(Parser)]
#[command(about = "Which storage engine for ringmq's per-core persistence (issue 10)")]
struct Cli {
    /// Parent directory of the stores (on the disk under test).
    #[arg(long, default_value = "/tmp/ringmq-bench-engines")]
    dir: PathBuf,
    /// Engines to compare.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "log,log-prealloc,redb,fjall"
    )]
    engines: Vec<Engine>,
    /// Repetitions of each measurement (medians and min–max are reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Offline subscribers per message (one queue record each).
    #[arg(long, default_value_t = 2)]
    subs: u32,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Clone)]
enum Cmd {
    /// (a) durability `always`: fdatasync per batch; msg/s and commit latency.
    Always {
        #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
        batches: Vec<usize>,
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
    },
    /// (b) durability `periodic`: sync once a second; msg/s and CPU per message.
    Periodic {
        #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
        batches: Vec<usize>,
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
    },
    /// (c) steady state: publish + ack of the message `window` back; space used vs live.
    Mixed {
        #[arg(long, default_value_t = 100_000)]
        window: u64,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        /// Offered load, msg/s, the same for every engine (0: as fast as it goes).
        #[arg(long, default_value_t = 20_000.0)]
        rate: f64,
    },
    /// (d) recovery: open + full scan of `count` live messages into memory.
    Recovery {
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
    },
    /// (a), (b), (c) and (d) with their defaults.
    All,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.dir)?;
    println!(
        "# bench-engines: dir {}, {} reps, {} subscribers per message, {} B message body\n",
        cli.dir.display(),
        cli.reps,
        cli.subs,
        {
            let mut b = Vec::new();
            workload::encode_body(0, &mut b);
            b.len()
        }
    );
    let cmds = match cli.cmd.clone() {
        Cmd::All => vec![
            Cmd::Always {
                batches: vec![1, 16, 256],
                secs: 3.0,
            },
            Cmd::Periodic {
                batches: vec![1, 16, 256],
                secs: 3.0,
            },
            Cmd::Mixed {
                window: 100_000,
                batch: 16,
                secs: 10.0,
                rate: 20_000.0,
            },
            Cmd::Recovery { count: 1_000_000 },
        ],
        c => vec![c],
    };
    for c in cmds {
        match c {
            Cmd::Always { batches, secs } => throughput(&cli, true, &batches, secs)?,
            Cmd::Periodic { batches, secs } => throughput(&cli, false, &batches, secs)?,
            Cmd::Mixed {
                window,
                batch,
                secs,
                rate,
            } => mixed(&cli, window, batch, secs, rate)?,
            Cmd::Recovery { count } => recovery(&cli, count)?,
            Cmd::All => unreachable!(),
        }
    }
    Ok(())
}

/// A fresh, empty directory for one run.
fn fresh(cli: &Cli, e: Engine, what: &str) -> Result<PathBuf> {
    let d = cli.dir.join(format!("{}-{what}", e.name()));
    if d.exists() {
        std::fs::remove_dir_all(&d)?;
    }
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

struct Run {
    msgs: u64,
    wall: f64,
    cpu: f64,
    /// commit latencies, seconds, sorted
    lat: Vec<f64>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.msgs as f64 / self.wall
    }
    fn pct(&self, p: f64) -> f64 {
        let i = ((self.lat.len() as f64 - 1.0) * p).round() as usize;
        self.lat.get(i).copied().unwrap_or(0.0)
    }
}

/// Publishes batches of `batch` new messages for `secs` (acking the message
/// `window` back when `window` > 0), syncing per batch when `durable`, else
/// once a second. `on_second` runs after each second's sync.
struct Load {
    durable: bool,
    batch: usize,
    secs: f64,
    subs: u32,
    first_id: u64,
    /// ack the message this far back (0: no acks)
    window: u64,
    /// offered msg/s (0: unthrottled)
    rate: f64,
}

fn drive(store: &mut dyn Store, l: &Load, mut on_second: impl FnMut(u32)) -> Result<Run> {
    let Load {
        durable,
        batch,
        secs,
        subs,
        first_id,
        window,
        rate,
    } = *l;
    let mut b = Batch::default();
    let mut lat = Vec::new();
    let mut id = first_id;
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    let mut last_sync = t0;
    let mut second = 0;
    let end = Duration::from_secs_f64(secs);
    while t0.elapsed() < end {
        b.clear();
        for _ in 0..batch {
            b.publish(id, subs);
            if window > 0 && id >= window {
                b.ack_all(id - window, subs);
            }
            id += 1;
        }
        let t = Instant::now();
        store.commit(&b, durable)?;
        lat.push(t.elapsed().as_secs_f64());
        if rate > 0.0 {
            let due = Duration::from_secs_f64((id - first_id) as f64 / rate);
            if let Some(ahead) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        if !durable && last_sync.elapsed() >= Duration::from_secs(1) {
            store.sync()?;
            last_sync = Instant::now();
            second += 1;
            on_second(second);
        }
    }
    if !durable {
        store.sync()?;
    }
    let wall = t0.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    Ok(Run {
        msgs: id - first_id,
        wall,
        cpu: cpu_secs() - cpu0,
        lat,
    })
}

/// Loads `count` messages (periodic mode, batches of 256) and syncs.
fn prefill(store: &mut dyn Store, count: u64, subs: u32) -> Result<()> {
    let mut b = Batch::default();
    let mut id = 0;
    while id < count {
        b.clear();
        let n = 256.min(count - id);
        for _ in 0..n {
            b.publish(id, subs);
            id += 1;
        }
        store.commit(&b, false)?;
    }
    store.sync()
}

fn throughput(cli: &Cli, durable: bool, batches: &[usize], secs: f64) -> Result<()> {
    let mode = if durable { "always" } else { "periodic" };
    if durable {
        println!("## (a) durability `always`: fdatasync per batch, {secs} s per run\n");
        println!(
            "| engine | batch | msg/s | (min–max) | p50 commit ms | p99 commit ms | (min–max) |"
        );
        println!("|---|---:|---:|---|---:|---:|---|");
    } else {
        println!("## (b) durability `periodic`: one sync per second, {secs} s per run\n");
        println!("| engine | batch | msg/s | (min–max) | CPU µs/msg | (min–max) | p99 commit ms |");
        println!("|---|---:|---:|---|---:|---|---:|");
    }
    for &e in &cli.engines {
        for &batch in batches {
            let mut runs = Vec::new();
            for _ in 0..cli.reps {
                let dir = fresh(cli, e, mode)?;
                let mut store = e.open(&dir)?;
                let load = Load {
                    durable,
                    batch,
                    secs,
                    subs: cli.subs,
                    first_id: 0,
                    window: 0,
                    rate: 0.0,
                };
                runs.push(drive(&mut *store, &load, |_| {})?);
                drop(store);
                std::fs::remove_dir_all(&dir)?;
            }
            let rate = Spread::of(runs.iter().map(Run::rate));
            let p99 = Spread::of(runs.iter().map(|r| r.pct(0.99) * 1e3));
            if durable {
                let p50 = Spread::of(runs.iter().map(|r| r.pct(0.5) * 1e3));
                println!(
                    "| {} | {batch} | {:.0} | {} | {:.2} | {:.2} | {} |",
                    e.name(),
                    rate.median,
                    rate.range(0),
                    p50.median,
                    p99.median,
                    p99.range(2)
                );
            } else {
                let cpu = Spread::of(runs.iter().map(|r| r.cpu / r.msgs as f64 * 1e6));
                println!(
                    "| {} | {batch} | {:.0} | {} | {:.2} | {} | {:.2} |",
                    e.name(),
                    rate.median,
                    rate.range(0),
                    cpu.median,
                    cpu.range(2),
                    p99.median
                );
            }
        }
    }
    println!();
    Ok(())
}

fn mixed(cli: &Cli, window: u64, batch: usize, secs: f64, rate: f64) -> Result<()> {
    let live = live_bytes(window, cli.subs) as f64;
    println!(
        "## (c) steady state, periodic: publish + ack-delete of the message {window} back, batch {batch}, {secs} s, offered {rate} msg/s\n"
    );
    println!(
        "live data (key+value bytes of {window} messages and their queue entries): {:.1} MB\n",
        mb(live)
    );
    println!("| engine | msg/s | (min–max) | disk MB at 1 s / mid / end | space amp (disk/live) | (min–max) |");
    println!("|---|---:|---|---|---:|---|");
    let mut notes = Vec::new();
    for &e in &cli.engines {
        let mut compactions = Vec::new();
        let mut runs = Vec::new();
        let mut amps = Vec::new();
        let mut traces = Vec::new();
        for _ in 0..cli.reps {
            let dir = fresh(cli, e, "mixed")?;
            let mut store = e.open(&dir)?;
            prefill(&mut *store, window, cli.subs)?;
            let mut trace = Vec::new();
            let load = Load {
                durable: false,
                batch,
                secs,
                subs: cli.subs,
                first_id: window,
                window,
                rate,
            };
            let run = drive(&mut *store, &load, |_| trace.push(disk_usage(&dir)))?;
            let end = disk_usage(&dir);
            trace.push(end);
            amps.push(end as f64 / live);
            if let Engine::Log | Engine::LogPrealloc = e {
                drop(store);
                let mut log = log::LogStore::open(&dir, e == Engine::LogPrealloc)?;
                let before = disk_usage(&dir);
                let t = Instant::now();
                let size = log.compact()?;
                compactions.push((before, size, t.elapsed().as_secs_f64()));
            } else {
                drop(store);
            }
            runs.push(run);
            traces.push(trace);
            std::fs::remove_dir_all(&dir)?;
        }
        let rate = Spread::of(runs.iter().map(Run::rate));
        let amp = Spread::of(amps.iter().copied());
        let t = &traces[amp.median_index];
        println!(
            "| {} | {:.0} | {} | {:.0} / {:.0} / {:.0} | {:.2} | {} |",
            e.name(),
            rate.median,
            rate.range(0),
            mb(t[0] as f64),
            mb(t[t.len() / 2] as f64),
            mb(t[t.len() - 1] as f64),
            amp.median,
            amp.range(2)
        );
        if !compactions.is_empty() {
            let secs = Spread::of(compactions.iter().map(|c| c.2));
            let c = compactions[secs.median_index];
            notes.push(format!(
                "| {} | {:.0} | {:.1} | {:.3} | {} | {:.0} |",
                e.name(),
                mb(c.0 as f64),
                mb(c.1 as f64),
                secs.median,
                secs.range(3),
                mb(c.0 as f64) / secs.median
            ));
        }
    }
    if !notes.is_empty() {
        println!("\nThe log needs compaction: replay the log, rewrite the live set, fdatasync, rename.\n");
        println!("| engine | log MB before | live set MB after | rewrite s | (min–max) | MB/s of log read |");
        println!("|---|---:|---:|---:|---|---:|");
        for n in notes {
            println!("{n}");
        }
    }
    println!();
    Ok(())
}

fn recovery(cli: &Cli, count: u64) -> Result<()> {
    println!(
        "## (d) recovery: open + full scan of {count} live messages ({} queue entries) into Vecs\n",
        count * cli.subs as u64
    );
    println!("cold = the store's files evicted from the page cache (fadvise DONTNEED) first; warm = not.\n");
    println!(
        "| engine | load s | disk MB | cold s | (min–max) | of it open s | cold msg/s | warm s | warm msg/s |"
    );
    println!("|---|---:|---:|---:|---|---:|---:|---:|---:|");
    for &e in &cli.engines {
        let dir = fresh(cli, e, "recovery")?;
        let t = Instant::now();
        {
            let mut store = e.open(&dir)?;
            prefill(&mut *store, count, cli.subs)?;
        }
        let load = t.elapsed().as_secs_f64();
        let disk = disk_usage(&dir);
        let mut cold = Vec::new();
        let mut warm = Vec::new();
        let mut opened = Vec::new();
        for _ in 0..cli.reps {
            for (evicted, out) in [(true, &mut cold), (false, &mut warm)] {
                if evicted {
                    evict(&dir)?;
                }
                let t = Instant::now();
                let loaded = e.recover(&dir)?;
                out.push(t.elapsed().as_secs_f64());
                if evicted {
                    opened.push(loaded.opened);
                }
                anyhow::ensure!(
                    loaded.msgs.len() as u64 == count
                        && loaded.queued.len() as u64 == count * cli.subs as u64,
                    "{}: recovered {} messages, {} queue entries",
                    e.name(),
                    loaded.msgs.len(),
                    loaded.queued.len()
                );
            }
        }
        let cold = Spread::of(cold.into_iter());
        let warm = Spread::of(warm.into_iter());
        println!(
            "| {} | {load:.1} | {:.0} | {:.3} | {} | {:.3} | {:.0} | {:.3} | {:.0} |",
            e.name(),
            mb(disk as f64),
            cold.median,
            cold.range(3),
            opened[cold.median_index],
            count as f64 / cold.median,
            warm.median,
            count as f64 / warm.median
        );
        std::fs::remove_dir_all(&dir)?;
    }
    println!();
    Ok(())
}
