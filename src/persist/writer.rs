//! The per-core writer: a dedicated OS thread that owns the segment files, fed
//! by a channel, so the core's event loop never waits on the disk.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::format::{
    encode_header, encode_record, segment_path, temp_path, FLAG_SNAPSHOT, HEADER_LEN,
    MAX_RECORD_LEN,
};
use super::io::{RealIo, SegmentFile, SegmentIo};
use super::recover::LogTail;

/// Log sequence number: the position of an append (or compaction) in this
/// process's log, from 1. Not stored on disk; it restarts with the process.
pub type Lsn = u64;

/// Called by the writer thread each time [`LogWriter::synced`] advances.
pub type Notify = Box<dyn Fn() + Send + Sync>;

/// When appended records are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every batch: one `fdatasync` covers everything that arrived
    /// while the previous one ran (group commit).
    Always,
    /// At most once per interval, and on flush and drop. Records are still
    /// written to the file (the page cache) at once, so a process crash loses
    /// nothing; a power cut loses at most one interval.
    Periodic(Duration),
}

/// How a [`LogWriter`] behaves. The directory comes from [`LogTail`].
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Core number, for the thread name `ringmq-log-<core>` and messages.
    pub core: usize,
    pub fsync: FsyncPolicy,
    /// A segment that has grown past this is synced and closed; the next
    /// record starts a new one. Segments overshoot by at most one record.
    pub segment_bytes: u64,
    /// Retry delay after a failed write doubles from 1 ms up to this.
    pub max_backoff: Duration,
    /// How long drop keeps retrying a failing disk before giving up.
    pub shutdown_timeout: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            core: 0,
            fsync: FsyncPolicy::Always,
            segment_bytes: 64 << 20,
            max_backoff: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// A record over [`MAX_RECORD_LEN`](super::format::MAX_RECORD_LEN) bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("persistence record of {0} bytes is over the cap")]
pub struct RecordTooLarge(pub usize);

/// Flush could not confirm durability.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("persistence log durable up to {synced}, not {target}: {reason}")]
pub struct NotDurable {
    pub target: Lsn,
    pub synced: Lsn,
    pub reason: String,
}

enum Msg {
    Append(Lsn, Vec<u8>),
    Compact(Lsn, Vec<Vec<u8>>),
    Flush,
    Stop,
    /// Tests: exit at once, like a killed process.
    Crash,
}

/// State both sides read; the writer thread is the only one that changes it.
#[derive(Default)]
struct Shared {
    synced: AtomicU64,
    syncs: AtomicU64,
    failed_ops: AtomicU64,
    exited: AtomicBool,
    error: Mutex<Option<String>>,
    /// Paired with `wake` for [`LogWriter::flush`] waiters.
    lock: Mutex<()>,
    wake: Condvar,
}

impl Shared {
    fn error(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.error.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake_waiters(&self) {
        // Taking the lock orders this wake after a waiter's check.
        drop(self.lock.lock().unwrap_or_else(PoisonError::into_inner));
        self.wake.notify_all();
    }
}

/// One core's append-only log. See the module documentation.
pub struct LogWriter {
    tx: Sender<Msg>,
    /// Last LSN handed out. Held across the send so LSN order is channel order.
    last: Mutex<Lsn>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// Starts the writer on the real file system, after [`recover`](super::recover).
    pub fn open(config: WriterConfig, tail: LogTail, notify: Notify) -> io::Result<Self> {
        Self::open_with_io(config, tail, notify, Box::new(RealIo))
    }

    /// Starts the writer on the given file operations (tests inject faults).
    pub fn open_with_io(
        config: WriterConfig,
        tail: LogTail,
        notify: Notify,
        io: Box<dyn SegmentIo>,
    ) -> io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared::default());
        let name = format!("ringmq-log-{}", config.core);
        let worker = Worker::new(config, tail, io, rx, shared.clone(), notify);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || worker.run())?;
        Ok(LogWriter {
            tx,
            last: Mutex::new(0),
            shared,
            thread: Some(thread),
        })
    }

    /// Queues a record; never waits for the disk. Records reach the log in
    /// LSN order; the record is durable once [`synced`](Self::synced) reaches
    /// the returned LSN.
    pub fn append(&self, record: Vec<u8>) -> Result<Lsn, RecordTooLarge> {
        check_len(&record)?;
        Ok(self.send(|lsn| Msg::Append(lsn, record)))
    }

    /// Replaces the whole log with `snapshot`: the caller's state as of now,
    /// i.e. after every record appended so far. Once
    /// [`synced`](Self::synced) reaches the returned LSN the snapshot is
    /// durable and supersedes all older segments, which are deleted. Appends made afterwards follow it.
    pub fn compact(&self, snapshot: Vec<Vec<u8>>) -> Result<Lsn, RecordTooLarge> {
        snapshot.iter().try_for_each(|r| check_len(r))?;
        Ok(self.send(|lsn| Msg::Compact(lsn, snapshot)))
    }

    fn send(&self, msg: impl FnOnce(Lsn) -> Msg) -> Lsn {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        *last += 1;
        // Fails only once the thread has exited; health() then says why.
        let _ = self.tx.send(msg(*last));
        *last
    }

    /// The highest LSN known durable.
    pub fn synced(&self) -> Lsn {
        self.shared.synced.load(Ordering::Acquire)
    }

    /// The highest LSN handed out so far.
    pub fn last_lsn(&self) -> Lsn {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Blocks until everything appended so far is durable. For shutdown and
    /// tests, never on the event loop. Fails only if the writer has given up.
    pub fn flush(&self) -> Result<Lsn, NotDurable> {
        self.flush_until(None)
    }

    /// [`flush`](Self::flush), giving up after `timeout`.
    pub fn flush_timeout(&self, timeout: Duration) -> Result<Lsn, NotDurable> {
        self.flush_until(Instant::now().checked_add(timeout))
    }

    fn flush_until(&self, deadline: Option<Instant>) -> Result<Lsn, NotDurable> {
        let target = self.last_lsn();
        let _ = self.tx.send(Msg::Flush);
        let mut guard = self
            .shared
            .lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            let synced = self.synced();
            if synced >= target {
                return Ok(synced);
            }
            let now = Instant::now();
            let exited = self.shared.exited.load(Ordering::Acquire);
            if exited || deadline.is_some_and(|d| now >= d) {
                let reason = self.health().err().unwrap_or_else(|| "timed out".into());
                return Err(NotDurable {
                    target,
                    synced,
                    reason,
                });
            }
            let wait = deadline.map_or(Duration::from_millis(100), |d| d - now);
            let wait = wait.min(Duration::from_millis(100));
            guard = match self.shared.wake.wait_timeout(guard, wait) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// `Err` with the last failure while the disk is failing; `Ok` once a
    /// write after it has succeeded.
    pub fn health(&self) -> Result<(), String> {
        match &*self.shared.error() {
            Some(e) => Err(e.clone()),
            None if self.shared.exited.load(Ordering::Acquire) => Err("writer stopped".into()),
            None => Ok(()),
        }
    }

    /// File operations that have failed since start (each retry counts).
    pub fn failed_ops(&self) -> u64 {
        self.shared.failed_ops.load(Ordering::Relaxed)
    }

    /// Syncs that advanced [`synced`](Self::synced).
    pub fn syncs(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    /// Stops the thread at once without writing or syncing what it holds, as
    /// a killed process would. For crash tests.
    #[doc(hidden)]
    pub fn crash(self) {
        let _ = self.tx.send(Msg::Crash);
    }
}

impl Drop for LogWriter {
    /// Makes everything durable (bounded by `shutdown_timeout` on a failing
    /// disk), then joins the thread.
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn check_len(record: &[u8]) -> Result<(), RecordTooLarge> {
    if record.len() > MAX_RECORD_LEN as usize {
        return Err(RecordTooLarge(record.len()));
    }
    Ok(())
}

/// Stop draining the channel once a batch holds this much: bounds the buffer
/// when appends outrun the disk.
const MAX_BATCH: usize = 8 << 20;

/// Marks the writer gone however its thread ends (a panic included), so
/// flush waiters return instead of waiting for ever.
struct ExitGuard(Arc<Shared>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.exited.store(true, Ordering::Release);
        self.0.wake_waiters();
    }
}

struct Active {
    file: Box<dyn SegmentFile>,
    /// Bytes of the file known durable; `pending` goes right after them.
    synced_len: u64,
}

struct Worker {
    cfg: WriterConfig,
    dir: PathBuf,
    io: Box<dyn SegmentIo>,
    rx: Receiver<Msg>,
    shared: Arc<Shared>,
    notify: Notify,
    /// Segments on disk older than the newest snapshot: to delete.
    obsolete: Vec<u64>,
    /// Every segment on disk or being written, ascending.
    segments: Vec<u64>,
    active: Option<Active>,
    /// Framed records of the active segment not yet durable. Kept until they
    /// are, so a failed fdatasync (after which Linux may have dropped the
    /// dirty pages) is answered by writing them all again.
    pending: Vec<u8>,
    /// How much of `pending` has been written to the file.
    written: usize,
    /// LSN of the last record in `pending` (or the last one synced).
    pending_lsn: Lsn,
    /// Messages queued behind a compaction, in order.
    backlog: VecDeque<Msg>,
    sync_wanted: bool,
    last_sync: Instant,
    backoff: Option<Duration>,
    stop_by: Option<Instant>,
    done: bool,
}

impl Worker {
    fn new(
        cfg: WriterConfig,
        tail: LogTail,
        io: Box<dyn SegmentIo>,
        rx: Receiver<Msg>,
        shared: Arc<Shared>,
        notify: Notify,
    ) -> Self {
        Worker {
            cfg,
            dir: tail.dir,
            io,
            rx,
            shared,
            notify,
            obsolete: Vec::new(),
            segments: tail.segments,
            active: None,
            pending: Vec::new(),
            written: 0,
            pending_lsn: 0,
            backlog: VecDeque::new(),
            sync_wanted: false,
            last_sync: Instant::now(),
            backoff: None,
            stop_by: None,
            done: false,
        }
    }

    fn run(mut self) {
        let _exit = ExitGuard(self.shared.clone());
        while !self.done {
            self.receive();
            if self.done {
                break;
            }
            match self.work() {
                Ok(()) => self.succeeded(),
                Err(e) => self.failed(e),
            }
            if self.stop_by.is_some() && self.idle() {
                break;
            }
        }
    }

    fn idle(&self) -> bool {
        self.pending.is_empty() && self.backlog.is_empty()
    }

    /// Waits for the next message (or the next timer), then drains whatever
    /// else is queued: that is the group in group commit.
    fn receive(&mut self) {
        let first = match self.wait_time() {
            None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(t) => self.rx.recv_timeout(t),
        };
        match first {
            Ok(msg) => self.intake(msg),
            Err(RecvTimeoutError::Timeout) => return,
            Err(RecvTimeoutError::Disconnected) => return self.intake(Msg::Stop),
        }
        while !self.done && !self.batch_full() {
            match self.rx.try_recv() {
                Ok(msg) => self.intake(msg),
                Err(_) => break,
            }
        }
    }

    /// A batch ends where the segment fills, so segments end near
    /// `segment_bytes` however records are batched.
    fn batch_full(&self) -> bool {
        self.pending.len() >= MAX_BATCH || self.segment_full()
    }

    fn segment_full(&self) -> bool {
        let durable = self
            .active
            .as_ref()
            .map_or(HEADER_LEN as u64, |a| a.synced_len);
        durable + self.pending.len() as u64 >= self.cfg.segment_bytes
    }

    /// How long to wait for messages: until the retry after a failure, until
    /// the periodic sync, not at all while stopping, or for ever when idle.
    fn wait_time(&self) -> Option<Duration> {
        if let Some(b) = self.backoff {
            return Some(b);
        }
        if self.stop_by.is_some() {
            return Some(Duration::ZERO);
        }
        if self.idle() {
            return None;
        }
        match self.cfg.fsync {
            FsyncPolicy::Always => Some(Duration::ZERO),
            FsyncPolicy::Periodic(iv) => Some(iv.saturating_sub(self.last_sync.elapsed())),
        }
    }

    /// Behind a queued compaction everything waits its turn, except stopping:
    /// a compaction failing for ever must not keep drop from returning.
    fn intake(&mut self, msg: Msg) {
        let jumps = matches!(msg, Msg::Stop | Msg::Crash);
        if jumps || (self.backlog.is_empty() && !matches!(msg, Msg::Compact(..))) {
            self.apply(msg);
        } else {
            self.backlog.push_back(msg);
        }
    }

    fn apply(&mut self, msg: Msg) {
        match msg {
            Msg::Append(lsn, record) => {
                encode_record(&mut self.pending, &record);
                self.pending_lsn = lsn;
            }
            Msg::Compact(..) => self.backlog.push_front(msg),
            Msg::Flush => self.sync_wanted = true,
            Msg::Stop => {
                let by = Instant::now() + self.cfg.shutdown_timeout;
                self.stop_by.get_or_insert(by);
            }
            Msg::Crash => self.done = true,
        }
    }

    /// Writes what is pending, syncs when due, and runs a queued compaction
    /// (after syncing everything before it).
    fn work(&mut self) -> io::Result<()> {
        loop {
            let compact_next = matches!(self.backlog.front(), Some(Msg::Compact(..)));
            if self.pending.is_empty() {
                self.sync_wanted = false;
            } else {
                self.write_pending()?;
                if compact_next || self.sync_due() {
                    self.sync()?;
                }
            }
            if !compact_next {
                return Ok(());
            }
            self.compact_front()?;
        }
    }

    fn sync_due(&self) -> bool {
        let interval_passed = match self.cfg.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Periodic(iv) => self.last_sync.elapsed() >= iv,
        };
        interval_passed || self.sync_wanted || self.stop_by.is_some() || self.segment_full()
    }

    /// One positional write of everything not yet written.
    fn write_pending(&mut self) -> io::Result<()> {
        if self.written == self.pending.len() {
            return Ok(());
        }
        if self.active.is_none() {
            let seq = self.next_seq();
            let file = self.create_segment(seq, &encode_header(seq, 0))?;
            self.active = Some(Active {
                file,
                synced_len: HEADER_LEN as u64,
            });
        }
        if let Some(a) = self.active.as_mut() {
            let offset = a.synced_len + self.written as u64;
            a.file.write_at(&self.pending[self.written..], offset)?;
            self.written = self.pending.len();
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if let Some(a) = self.active.as_mut() {
            if let Err(e) = a.file.sync_data() {
                self.written = 0;
                return Err(e);
            }
            a.synced_len += self.pending.len() as u64;
            if a.synced_len >= self.cfg.segment_bytes {
                self.active = None; // full: the next write starts a new segment
            }
        }
        self.pending.clear();
        self.written = 0;
        self.sync_wanted = false;
        self.last_sync = Instant::now();
        self.clear_error();
        self.publish(self.pending_lsn);
        Ok(())
    }

    fn publish(&mut self, lsn: Lsn) {
        if lsn > self.shared.synced.load(Ordering::Relaxed) {
            self.shared.synced.store(lsn, Ordering::Release);
            self.shared.syncs.fetch_add(1, Ordering::Relaxed);
            self.shared.wake_waiters();
            (self.notify)();
        }
    }

    fn next_seq(&self) -> u64 {
        self.segments.last().map_or(0, |s| s + 1)
    }

    /// Writes a whole segment under a temporary name, syncs it, renames it
    /// into the sequence and syncs the directory: a segment file under its
    /// final name always has a complete header (and, for a snapshot, all of
    /// its records). Returns the open file for appending.
    fn create_segment(&mut self, seq: u64, bytes: &[u8]) -> io::Result<Box<dyn SegmentFile>> {
        let tmp = temp_path(&self.dir, seq);
        let mut file = self.io.create(&tmp)?;
        file.write_at(bytes, 0)?;
        file.sync_data()?;
        self.io.rename(&tmp, &segment_path(&self.dir, seq))?;
        self.io.sync_dir(&self.dir)?;
        self.segments.push(seq);
        self.delete_obsolete();
        Ok(file)
    }

    /// Runs the compaction at the front of the backlog (`pending` is empty):
    /// the snapshot becomes the active segment, everything older is obsolete.
    fn compact_front(&mut self) -> io::Result<()> {
        let Some(Msg::Compact(lsn, records)) = self.backlog.front() else {
            return Ok(());
        };
        let lsn = *lsn;
        let seq = self.next_seq();
        let mut bytes = encode_header(seq, FLAG_SNAPSHOT).to_vec();
        records.iter().for_each(|r| encode_record(&mut bytes, r));
        let older: Vec<u64> = self.segments.clone();
        let file = self.create_segment(seq, &bytes)?;
        self.backlog.pop_front();
        self.active = Some(Active {
            file,
            synced_len: bytes.len() as u64,
        });
        self.pending_lsn = lsn;
        self.publish(lsn);
        self.obsolete.extend(older);
        self.segments.retain(|&s| s >= seq);
        self.delete_obsolete();
        while !matches!(self.backlog.front(), None | Some(Msg::Compact(..))) {
            if let Some(msg) = self.backlog.pop_front() {
                self.apply(msg);
            }
        }
        Ok(())
    }

    /// Best effort: recovery skips superseded segments anyway, so a failure
    /// here only costs disk space until the next try (at the next segment).
    fn delete_obsolete(&mut self) {
        if self.obsolete.is_empty() {
            return;
        }
        let dir = self.dir.clone();
        let mut left = Vec::new();
        for seq in std::mem::take(&mut self.obsolete) {
            if let Err(e) = self.io.remove(&segment_path(&dir, seq)) {
                self.note_failure("deleting an old segment", &e);
                left.push(seq);
            }
        }
        if let Err(e) = self.io.sync_dir(&dir) {
            self.note_failure("syncing the directory", &e);
        }
        self.obsolete = left;
    }

    fn succeeded(&mut self) {
        self.backoff = None;
        self.clear_error();
    }

    /// Clears the reported error once data reaches the disk again and no
    /// deletion is owed; before `synced` moves, so a flush that returns sees a
    /// healthy log.
    fn clear_error(&mut self) {
        if self.obsolete.is_empty() && self.shared.error().take().is_some() {
            tracing::info!(core = self.cfg.core, "persistence log writes succeed again");
        }
    }

    fn failed(&mut self, e: io::Error) {
        self.note_failure("writing", &e);
        let next = self.backoff.map_or(Duration::from_millis(1), |b| b * 2);
        self.backoff = Some(next.min(self.cfg.max_backoff));
        if self.stop_by.is_some_and(|by| Instant::now() >= by) {
            tracing::error!(
                core = self.cfg.core,
                durable = self.shared.synced.load(Ordering::Relaxed),
                lost_after = self.pending_lsn,
                "persistence log gave up at shutdown; records after `durable` are lost"
            );
            self.done = true;
        }
    }

    fn note_failure(&self, what: &str, e: &io::Error) {
        self.shared.failed_ops.fetch_add(1, Ordering::Relaxed);
        let msg = format!("{what} {}: {e}", dir_display(&self.dir));
        let mut err = self.shared.error();
        if err.is_none() {
            tracing::warn!(core = self.cfg.core, "persistence log: {msg}; retrying");
        }
        *err = Some(msg);
    }
}

fn dir_display(dir: &Path) -> String {
    dir.display().to_string()
}
