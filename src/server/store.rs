//! The broker's store: one append-only log per core (see [`crate::persist`]),
//! fed with the journal records each core's router produces, read back at
//! start into the cores, whatever their number now.
//!
//! Start: every `core-N` directory under the location is recovered and
//! replayed into session images and retained messages; each session goes to
//! the core its client id hashes to now. The cores, built on the starting
//! thread, restore them and exchange their subscriptions' interest before any
//! connection is accepted; each core's state is then written as a snapshot
//! into its own log, synced, and directories of cores that no longer exist
//! are removed.
//!
//! Run: after every call into a core, its new records are appended to its
//! log (the writer thread writes them at once and fdatasyncs them every
//! `persistence_fsync_interval`). A log that grew by more than
//! [`COMPACT_AFTER`] since its last snapshot is compacted.
//!
//! Stop: every log is flushed to disk after the cores have stopped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;

use super::mesh::Doorbell;
use crate::config::{Config, FsyncMode};
use crate::durable::journal::{Recovered, Replay};
use crate::durable::Epoch;
use crate::persist::{self, FsyncPolicy, LogWriter, Lsn, WriterConfig};
use crate::router::{owner_core, Core};
use crate::time::Time;

/// Bytes appended to a core's log since its last snapshot that trigger a
/// compaction.
pub const COMPACT_AFTER: u64 = 64 << 20;

/// How long the stop waits for each log to reach the disk.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Store {
    location: PathBuf,
    writers: Vec<LogWriter>,
    /// Per core: its log failed to write at its last health check.
    failing: Vec<AtomicBool>,
    /// How many cores' logs are failing: QoS 1/2 publishes wait while any is.
    failing_cores: AtomicUsize,
    /// Per core: bytes appended since its last snapshot.
    appended: Vec<AtomicU64>,
    epoch: Epoch,
    /// `persistence_fsync = "always"`: output waits for the disk.
    always: bool,
    /// Held (locked) while this broker uses the location.
    _lock: std::fs::File,
}

/// What the store held at start.
pub struct Opened {
    pub store: Store,
    pub recovered: Recovered,
    /// Records cut off torn log tails (writes a crash interrupted).
    pub torn_records: u64,
    /// Directories of cores this run does not have, removed once the
    /// snapshots are on disk.
    stale: Vec<PathBuf>,
}

/// Unix milliseconds at the broker clock's zero (`started`).
pub fn epoch_now() -> Epoch {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Epoch(unix)
}

impl Store {
    /// Recovers every core's log under the configured location and opens a
    /// writer for each core of this run. An unreadable or corrupt log is an
    /// error naming the file and the way out; the broker does not start.
    ///
    /// With `persistence_fsync = "always"` each core's writer syncs every
    /// batch and rings the core's `doorbells[core]` when a sync completes.
    pub fn open(
        config: &Config,
        epoch: Epoch,
        doorbells: &[Arc<Doorbell>],
    ) -> anyhow::Result<Opened> {
        let always = config.persistence_fsync == FsyncMode::Always;
        let location = config.persistence_location.clone();
        persist::create_private_dir(&location)
            .with_context(|| format!("persistence: cannot create {}", location.display()))?;
        let lock = lock_location(&location)?;
        let mut replay = Replay::new(epoch);
        let mut tails = Vec::new();
        let mut torn_records = 0;
        let mut stale = Vec::new();
        for (core, dir) in core_dirs(&location)? {
            let recovered = persist::recover(&dir)?;
            torn_records += recovered.torn_records;
            if recovered.torn_records > 0 {
                tracing::warn!(dir = %dir.display(), records = recovered.torn_records, bytes = recovered.torn_bytes,
                    "persistence: cut off a write a crash interrupted (it was never acknowledged as durable)");
            }
            for (i, record) in recovered.records.into_iter().enumerate() {
                replay.apply(record).map_err(|e| {
                    anyhow::anyhow!(
                        "persistence: {}: record {i}: {e}; move the directory away to start \
                         from an empty store, or start with --persistence false",
                        dir.display()
                    )
                })?;
            }
            if core < config.cores {
                tails.push((core, recovered.tail));
            } else {
                stale.push(dir);
            }
        }
        let mut writers = Vec::with_capacity(config.cores);
        for (core, doorbell) in doorbells.iter().enumerate().take(config.cores) {
            let tail = match tails.iter().position(|(c, _)| *c == core) {
                Some(i) => tails.swap_remove(i).1,
                None => persist::recover(&persist::core_dir(&location, core))?.tail,
            };
            let writer = open_writer(config, core, tail, doorbell)
                .with_context(|| format!("persistence: cannot open the log of core {core}"))?;
            writers.push(writer);
        }
        let store = Store {
            location,
            appended: (0..config.cores).map(|_| AtomicU64::new(0)).collect(),
            failing: (0..config.cores).map(|_| AtomicBool::new(false)).collect(),
            failing_cores: AtomicUsize::new(0),
            writers,
            epoch,
            always,
            _lock: lock,
        };
        Ok(Opened {
            store,
            recovered: replay.finish(),
            torn_records,
            stale,
        })
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// True with `persistence_fsync = "always"`.
    pub fn always(&self) -> bool {
        self.always
    }

    /// The position of the last record appended to a core's log.
    pub fn last_lsn(&self, core: usize) -> Lsn {
        self.writers[core].last_lsn()
    }

    /// How far a core's log is on disk.
    pub fn synced(&self, core: usize) -> Lsn {
        self.writers[core].synced()
    }

    /// fdatasyncs done, over every core's log.
    pub fn syncs(&self) -> u64 {
        self.writers.iter().map(LogWriter::syncs).sum()
    }

    /// Appends a core's new journal records. Returns true when the log has
    /// grown enough to be compacted.
    pub fn append(&self, core: usize, records: impl Iterator<Item = Bytes>) -> bool {
        let mut bytes = 0;
        for record in records {
            bytes += record.len() as u64;
            if let Err(e) = self.writers[core].append(record.to_vec()) {
                tracing::error!(core, error = %e, "persistence: record not stored");
            }
        }
        let total = self.appended[core].fetch_add(bytes, Ordering::Relaxed) + bytes;
        total > COMPACT_AFTER
    }

    /// Replaces everything in a core's log by `snapshot` (in order with the
    /// appends before and after it).
    pub fn compact(&self, core: usize, snapshot: Vec<Bytes>) {
        let records = snapshot.into_iter().map(|b| b.to_vec()).collect();
        if let Err(e) = self.writers[core].compact(records) {
            tracing::error!(core, error = %e, "persistence: snapshot not stored");
        }
        self.appended[core].store(0, Ordering::Relaxed);
    }

    /// Waits until everything appended is on disk; logs what is not.
    pub fn flush(&self) {
        for (core, writer) in self.writers.iter().enumerate() {
            if let Err(e) = writer.flush_timeout(FLUSH_TIMEOUT) {
                tracing::error!(core, error = %e, "persistence: not everything reached the disk");
            }
        }
    }

    /// Looks at a core's log writer (each tick): a log that cannot write
    /// makes every QoS 1/2 PUBLISH wait, broker-wide, until it writes again,
    /// so nothing more is acknowledged than the store can keep.
    pub fn check_health(&self, core: usize) {
        let health = self.writers[core].health();
        let was = self.failing[core].swap(health.is_err(), Ordering::Relaxed);
        match (was, health) {
            (false, Err(e)) => {
                self.failing_cores.fetch_add(1, Ordering::Relaxed);
                tracing::error!(core, error = %e, "persistence: the log cannot be written; QoS 1/2 publishes wait until it can");
            }
            (true, Ok(())) => {
                self.failing_cores.fetch_sub(1, Ordering::Relaxed);
                tracing::info!(
                    core,
                    "persistence: the log writes again; QoS 1/2 publishes go on"
                );
            }
            _ => {}
        }
    }

    /// True while some core's log cannot be written.
    pub fn failing(&self) -> bool {
        self.failing_cores.load(Ordering::Relaxed) > 0
    }

    /// Writes that failed, over every core's log.
    pub fn failed_writes(&self) -> u64 {
        self.writers.iter().map(LogWriter::failed_ops).sum()
    }

    pub fn location(&self) -> &Path {
        &self.location
    }
}

impl Opened {
    /// Brings the recovered state into the cores (sessions to the core their
    /// id hashes to, retained messages to their owner cores), lets the cores
    /// exchange what that announced, writes each core's state as a snapshot,
    /// syncs it, and removes the directories of cores this run does not have.
    pub fn restore_into(self, cores: &mut [Core], now: Time) -> anyhow::Result<Store> {
        let Opened {
            store,
            recovered,
            stale,
            torn_records,
        } = self;
        let n = cores.len();
        cores[0].counters.store_torn_records = torn_records;
        for core in cores.iter_mut() {
            core.keep_journal(store.epoch);
        }
        let sessions = recovered.sessions.len();
        let retained = recovered.retained.len();
        for image in recovered.sessions {
            let home = owner_core(&image.client_id, n);
            cores[home].restore(image, now);
        }
        for (client, at, will) in recovered.wills {
            let home = owner_core(&client, n);
            cores[home].restore_delayed_will(&client, at, will);
        }
        for msg in recovered.retained {
            let msg = Arc::new(msg);
            for core in cores.iter_mut() {
                core.restore_retained(msg.clone(), now);
            }
        }
        settle(cores, now);
        for (id, core) in cores.iter_mut().enumerate() {
            let snapshot = core.journal_snapshot();
            store.compact(id, snapshot);
        }
        store.flush();
        for dir in stale {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("persistence: cannot remove {}", dir.display()))?;
        }
        tracing::info!(sessions, retained, location = %store.location.display(), "persistence: store loaded");
        Ok(store)
    }
}

/// Carries the cores' messages to each other until all are quiet, as the
/// mesh would, before any of them runs.
fn settle(cores: &mut [Core], now: Time) {
    loop {
        let mut moved = Vec::new();
        for core in cores.iter_mut() {
            moved.extend(core.outbox.take_batches());
        }
        if moved.is_empty() {
            return;
        }
        for (dest, batch) in moved {
            for msg in batch {
                cores[dest].handle_mesh(msg, now);
            }
        }
    }
}

/// Opens core `core`'s log writer; with `persistence_fsync = "always"` it
/// syncs every batch and rings `doorbell` after each sync.
fn open_writer(
    config: &Config,
    core: usize,
    tail: persist::LogTail,
    doorbell: &Arc<Doorbell>,
) -> std::io::Result<LogWriter> {
    let always = config.persistence_fsync == FsyncMode::Always;
    let writer_config = WriterConfig {
        core,
        fsync: match always {
            true => FsyncPolicy::Always,
            false => FsyncPolicy::Periodic(config.persistence_fsync_interval),
        },
        ..WriterConfig::default()
    };
    let notify: persist::Notify = match always {
        true => {
            let doorbell = doorbell.clone();
            Box::new(move || doorbell.ring())
        }
        false => Box::new(|| {}),
    };
    match &config.persistence_faults {
        Some(hook) => {
            let io = Box::new(persist::FaultyIo::new(hook.0.clone()));
            LogWriter::open_with_io(writer_config, tail, notify, io)
        }
        None => LogWriter::open(writer_config, tail, notify),
    }
}

/// Takes the location's lock file, so that two brokers never write the same
/// logs; the lock goes with the process, however it ends.
fn lock_location(location: &Path) -> anyhow::Result<std::fs::File> {
    let path = location.join("lock");
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("persistence: cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "persistence: {} is in use by another ringmq (it holds {}); stop that broker, \
             or give this one another --persistence-location",
            location.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("persistence: cannot lock {}", path.display()))
        }
    }
}

/// The `core-N` directories under `location`, by N.
fn core_dirs(location: &Path) -> anyhow::Result<Vec<(usize, PathBuf)>> {
    let mut dirs = Vec::new();
    let entries = std::fs::read_dir(location)
        .with_context(|| format!("persistence: cannot read {}", location.display()))?;
    for entry in entries {
        let entry =
            entry.with_context(|| format!("persistence: cannot read {}", location.display()))?;
        let name = entry.file_name();
        let core = name
            .to_str()
            .and_then(|n| n.strip_prefix("core-"))
            .and_then(|n| n.parse::<usize>().ok());
        if let Some(core) = core {
            dirs.push((core, entry.path()));
        }
    }
    dirs.sort();
    Ok(dirs)
}
