//! The candidate design: an append-only log per core, written with std::fs.
//! Frame: `len: u32 LE | crc32(payload): u32 LE | payload`, payload = kind
//! byte + fields. One `write` per batch; `sync_data` per batch (always) or
//! every second (periodic). Recovery replays the file and stops at the first
//! torn or corrupt frame. The file only grows: it needs compaction, which
//! rewrites the live set into a new file and renames it over the old one.

use crate::workload::{Batch, Loaded};
use crate::Store;
use anyhow::{Context, Result};
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MSG: u8 = 1;
const QUEUED: u8 = 2;
const ACK: u8 = 3;
const DEL: u8 = 4;
const FILE: &str = "queue.log";

/// Zero-filled space added ahead of the write position by the preallocating
/// variant, so that a commit's fdatasync has no file size to journal.
const PREALLOC: u64 = 64 << 20;

pub struct LogStore {
    dir: PathBuf,
    file: File,
    buf: Vec<u8>,
    /// Some((write position, zero-filled length)) for the preallocating variant
    prealloc: Option<(u64, u64)>,
}

impl LogStore {
    /// A plain append log (`prealloc` false) or one written in place into
    /// zero-filled 64 MiB extensions (`prealloc` true; the zeros end replay).
    pub fn open(dir: &Path, prealloc: bool) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE);
        let mut opts = OpenOptions::new();
        opts.create(true);
        if prealloc {
            opts.read(true).write(true);
        } else {
            opts.append(true);
        }
        let file = opts.open(&path).context("open log")?;
        let prealloc = if prealloc {
            let end = replay(&std::fs::read(&path)?, |_| Ok(()))?;
            Some((end as u64, file.metadata()?.len()))
        } else {
            None
        };
        Ok(Self {
            dir: dir.to_owned(),
            file,
            buf: Vec::with_capacity(1 << 16),
            prealloc,
        })
    }

    fn append(&mut self) -> Result<()> {
        let Some((pos, cap)) = &mut self.prealloc else {
            return Ok(self.file.write_all(&self.buf)?);
        };
        let need = *pos + self.buf.len() as u64;
        if need > *cap {
            let zeros = vec![0; 1 << 20];
            while need > *cap {
                for i in 0..PREALLOC >> 20 {
                    self.file.write_all_at(&zeros, *cap + (i << 20))?;
                }
                *cap += PREALLOC;
            }
            self.file.sync_data()?;
        }
        self.file.write_all_at(&self.buf, *pos)?;
        *pos = need;
        Ok(())
    }

    /// Rewrites the live set (found by replaying the log) into a new file,
    /// syncs it and renames it over the old one. Returns the new file's size.
    pub fn compact(&mut self) -> Result<u64> {
        let live = recover(&self.dir)?;
        let tmp = self.dir.join("queue.log.compact");
        let mut out = File::create(&tmp)?;
        let mut buf = Vec::with_capacity(1 << 20);
        let mut written = 0u64;
        for (id, body) in &live.msgs {
            frame(&mut buf, |p| {
                p.push(MSG);
                p.extend_from_slice(&id.to_le_bytes());
                p.extend_from_slice(body);
            });
            if buf.len() >= 1 << 20 {
                out.write_all(&buf)?;
                written += buf.len() as u64;
                buf.clear();
            }
        }
        for &(s, id) in &live.queued {
            frame(&mut buf, |p| put_entry(p, QUEUED, s, id));
            if buf.len() >= 1 << 20 {
                out.write_all(&buf)?;
                written += buf.len() as u64;
                buf.clear();
            }
        }
        out.write_all(&buf)?;
        written += buf.len() as u64;
        out.sync_data()?;
        std::fs::rename(&tmp, self.dir.join(FILE))?;
        File::open(&self.dir)?.sync_all()?;
        *self = Self::open(&self.dir, self.prealloc.is_some())?;
        Ok(written)
    }
}

fn put_entry(p: &mut Vec<u8>, kind: u8, session: u32, id: u64) {
    p.push(kind);
    p.extend_from_slice(&session.to_le_bytes());
    p.extend_from_slice(&id.to_le_bytes());
}

/// Appends one frame whose payload `fill` writes.
fn frame(buf: &mut Vec<u8>, fill: impl FnOnce(&mut Vec<u8>)) {
    let at = buf.len();
    buf.extend_from_slice(&[0; 8]);
    fill(buf);
    let len = (buf.len() - at - 8) as u32;
    let crc = crc32fast::hash(&buf[at + 8..]);
    buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    buf[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

impl Store for LogStore {
    fn commit(&mut self, b: &Batch, durable: bool) -> Result<()> {
        self.buf.clear();
        for (id, range) in &b.msgs {
            frame(&mut self.buf, |p| {
                p.push(MSG);
                p.extend_from_slice(&id.to_le_bytes());
                p.extend_from_slice(b.body(range));
            });
        }
        for &(s, id) in &b.queued {
            frame(&mut self.buf, |p| put_entry(p, QUEUED, s, id));
        }
        for &(s, id) in &b.acks {
            frame(&mut self.buf, |p| put_entry(p, ACK, s, id));
        }
        for &id in &b.dels {
            frame(&mut self.buf, |p| {
                p.push(DEL);
                p.extend_from_slice(&id.to_le_bytes());
            });
        }
        self.append()?;
        if durable {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        Ok(self.file.sync_data()?)
    }
}

/// A multiplicative hasher for the u64/(u32,u64) keys of recovery (SipHash
/// would cost the log a third of its recovery time for nothing).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(n as u64);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Fast = BuildHasherDefault<IdHasher>;

enum Record<'a> {
    Msg(u64, &'a [u8]),
    Queued(u32, u64),
    Ack(u32, u64),
    Del(u64),
}

/// Calls `f` on each record of `data` up to the first torn, corrupt or
/// zero frame; returns the offset where the valid log ends.
fn replay(data: &[u8], mut f: impl FnMut(Record) -> Result<()>) -> Result<usize> {
    let mut at = 0;
    while at + 8 <= data.len() {
        let len = u32::from_le_bytes(data[at..at + 4].try_into()?) as usize;
        let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into()?);
        let Some(p) = data.get(at + 8..at + 8 + len) else {
            break; // torn tail
        };
        if len == 0 || crc32fast::hash(p) != crc {
            break; // zero-filled or corrupt tail: the end of the log
        }
        let entry = || -> Result<(u32, u64)> {
            Ok((
                u32::from_le_bytes(p[1..5].try_into()?),
                u64::from_le_bytes(p[5..13].try_into()?),
            ))
        };
        f(match p[0] {
            MSG => Record::Msg(u64::from_le_bytes(p[1..9].try_into()?), &p[9..]),
            QUEUED => {
                let (s, id) = entry()?;
                Record::Queued(s, id)
            }
            ACK => {
                let (s, id) = entry()?;
                Record::Ack(s, id)
            }
            DEL => Record::Del(u64::from_le_bytes(p[1..9].try_into()?)),
            k => anyhow::bail!("unknown record kind {k}"),
        })?;
        at += 8 + len;
    }
    Ok(at)
}

/// Replays the log: messages minus deletions, queue entries minus acks.
pub fn recover(dir: &Path) -> Result<Loaded> {
    let t = std::time::Instant::now();
    let data = std::fs::read(dir.join(FILE)).context("read log")?;
    let opened = t.elapsed().as_secs_f64();
    let mut msgs: HashMap<u64, Vec<u8>, Fast> = HashMap::default();
    let mut queued: HashSet<(u32, u64), Fast> = HashSet::default();
    replay(&data, |r| {
        match r {
            Record::Msg(id, body) => {
                msgs.insert(id, body.to_vec());
            }
            Record::Queued(s, id) => {
                queued.insert((s, id));
            }
            Record::Ack(s, id) => {
                queued.remove(&(s, id));
            }
            Record::Del(id) => {
                msgs.remove(&id);
            }
        }
        Ok(())
    })?;
    Ok(Loaded {
        msgs: msgs.into_iter().collect(),
        queued: queued.into_iter().collect(),
        opened,
    })
}
