//! The file operations the writer thread performs, behind a trait so tests can
//! make them fail on demand ([`FaultyIo`]) and count syncs.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Directory-level operations. Owned by the writer thread.
pub trait SegmentIo: Send {
    /// Creates (or truncates) a file for writing.
    fn create(&mut self, path: &Path) -> io::Result<Box<dyn SegmentFile>>;
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&mut self, path: &Path) -> io::Result<()>;
    /// Makes creates, renames and removes in `dir` durable.
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()>;
}

/// One open segment. Writes are positional so a retry after a partial write
/// rewrites the same bytes at the same place instead of duplicating them.
pub trait SegmentFile: Send {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// `fdatasync`.
    fn sync_data(&mut self) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default)]
pub struct RealIo;

impl SegmentIo for RealIo {
    fn create(&mut self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        // Stored messages are the clients' data: readable by this user only.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        Ok(Box::new(RealFile(file)))
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&mut self, path: &Path) -> io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

struct RealFile(File);

impl SegmentFile for RealFile {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}

/// Switches and counters shared between a test and its [`FaultyIo`].
#[derive(Debug, Default)]
pub struct Faults {
    /// Writes store half their bytes, then fail with ENOSPC.
    pub fail_writes: AtomicBool,
    /// `sync_data` fails with EIO (and, as on Linux, the data is not durable).
    pub fail_syncs: AtomicBool,
    /// create, rename, remove and sync_dir fail with ENOSPC.
    pub fail_dir_ops: AtomicBool,
    /// Successful `sync_data` calls.
    pub syncs: AtomicU64,
    /// Successful `write_at` calls.
    pub writes: AtomicU64,
    /// Calls that failed because of a switch above.
    pub injected: AtomicU64,
    files: Mutex<FileTable>,
}

#[derive(Debug, Default)]
struct FileTable {
    /// Per file id: (bytes written so far, bytes made durable by a sync).
    extents: Vec<(u64, u64)>,
    /// Current name of each live file.
    names: HashMap<PathBuf, usize>,
}

impl Faults {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Sets every failure switch at once.
    pub fn fail_all(&self, on: bool) {
        for s in [&self.fail_writes, &self.fail_syncs, &self.fail_dir_ops] {
            s.store(on, Ordering::SeqCst);
        }
    }

    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    /// For each live file: its current path and the bytes made durable.
    pub fn durable(&self) -> Vec<(PathBuf, u64)> {
        let t = self.table();
        let mut v: Vec<_> = t
            .names
            .iter()
            .map(|(p, &id)| (p.clone(), t.extents[id].1))
            .collect();
        v.sort();
        v
    }

    /// Simulates a power cut once the writer is gone: every file loses what
    /// was written after its last sync, except the first `keep_extra` bytes of
    /// that tail (a partly persisted write). Directory operations are assumed
    /// durable, which the writer makes them with `sync_dir` anyway.
    pub fn power_cut(&self, keep_extra: u64) -> io::Result<()> {
        for (path, durable) in self.durable() {
            let Ok(file) = OpenOptions::new().write(true).open(&path) else {
                continue;
            };
            let len = file.metadata()?.len();
            file.set_len(len.min(durable + keep_extra))?;
        }
        Ok(())
    }

    fn table(&self) -> std::sync::MutexGuard<'_, FileTable> {
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check(&self, switch: &AtomicBool, err: fn() -> io::Error) -> io::Result<()> {
        if switch.load(Ordering::SeqCst) {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(err());
        }
        Ok(())
    }
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

/// [`RealIo`] with failures switched on and off through [`Faults`].
pub struct FaultyIo {
    real: RealIo,
    faults: Arc<Faults>,
}

impl FaultyIo {
    pub fn new(faults: Arc<Faults>) -> Self {
        FaultyIo {
            real: RealIo,
            faults,
        }
    }
}

impl SegmentIo for FaultyIo {
    fn create(&mut self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        self.faults.check(&self.faults.fail_dir_ops, enospc)?;
        let inner = self.real.create(path)?;
        let mut t = self.faults.table();
        let id = t.extents.len();
        t.extents.push((0, 0));
        t.names.insert(path.to_path_buf(), id);
        Ok(Box::new(FaultyFile {
            inner,
            id,
            faults: self.faults.clone(),
        }))
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        self.faults.check(&self.faults.fail_dir_ops, enospc)?;
        self.real.rename(from, to)?;
        let mut t = self.faults.table();
        if let Some(id) = t.names.remove(from) {
            t.names.insert(to.to_path_buf(), id);
        }
        Ok(())
    }

    fn remove(&mut self, path: &Path) -> io::Result<()> {
        self.faults.check(&self.faults.fail_dir_ops, enospc)?;
        self.real.remove(path)?;
        self.faults.table().names.remove(path);
        Ok(())
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        self.faults.check(&self.faults.fail_dir_ops, enospc)?;
        self.real.sync_dir(dir)
    }
}

struct FaultyFile {
    inner: Box<dyn SegmentFile>,
    id: usize,
    faults: Arc<Faults>,
}

impl SegmentFile for FaultyFile {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        // The switch is read once: a test that flips it while this write
        // runs must not get half the bytes written and reported as success.
        let failing = self.faults.fail_writes.load(Ordering::SeqCst);
        let n = if failing { buf.len() / 2 } else { buf.len() };
        self.inner.write_at(&buf[..n], offset)?;
        let end = offset + n as u64;
        let ext = &mut self.faults.table().extents[self.id];
        ext.0 = ext.0.max(end);
        if failing {
            self.faults.injected.fetch_add(1, Ordering::SeqCst);
            return Err(enospc());
        }
        self.faults.writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.faults.check(&self.faults.fail_syncs, eio)?;
        self.inner.sync_data()?;
        let ext = &mut self.faults.table().extents[self.id];
        ext.1 = ext.0;
        self.faults.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Creates `dir` and its missing parents as `0700`: the store's folders
/// hold the clients' messages (folders that exist keep their mode).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
