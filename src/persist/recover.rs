//! Reading a core's log back at startup.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::format::{
    decode_header, frame_at, parse_segment_name, segment_path, Frame, HeaderError, FLAG_SNAPSHOT,
    HEADER_LEN,
};

/// What the operator can do about a log that does not read back.
const WAY_OUT: &str = "move the directory away to start from an empty store \
     (its sessions, queued and retained messages are then lost), \
     or start with --persistence false";

/// A log that could not be read. Each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("persistence: {path}: {source}; {WAY_OUT}")]
    Io { path: PathBuf, source: io::Error },
    #[error("persistence: {path} at byte {offset}: {kind}; {WAY_OUT}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        kind: Corruption,
    },
}

/// How a segment is damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    #[error("not a ringmq log segment (bad magic)")]
    BadMagic,
    #[error("segment header checksum mismatch")]
    BadHeaderChecksum,
    #[error("segment format version {0} is not supported (this build reads version 1)")]
    UnknownVersion(u16),
    #[error("segment header is shorter than {HEADER_LEN} bytes")]
    ShortHeader,
    #[error("header says sequence {0:#x}, which does not match the file name")]
    SeqMismatch(u64),
    #[error("record checksum mismatch")]
    RecordChecksum,
    #[error("record length {0} is over the cap")]
    RecordTooLong(u32),
    #[error("record runs past the end of a segment that is not the last")]
    RecordTruncated,
}

/// Where the writer continues after recovery. Only [`recover`] makes one, so
/// a writer cannot start on a log whose torn tail has not been cut off.
#[derive(Debug, Clone)]
pub struct LogTail {
    pub(crate) dir: PathBuf,
    /// Sequence numbers of the segments on disk, ascending.
    pub(crate) segments: Vec<u64>,
}

impl LogTail {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The records of a core's log, in append order.
#[derive(Debug)]
pub struct Recovered {
    /// Each record's body; they share the buffers the segments were read into.
    pub records: Vec<Bytes>,
    /// Records cut off the end of the last segment (0 or 1): a write the crash
    /// interrupted. Log and count it; it was never acknowledged as durable.
    pub torn_records: u64,
    /// Bytes cut off with them.
    pub torn_bytes: u64,
    /// Segments read (from the newest snapshot on).
    pub segments_read: usize,
    /// Where a [`LogWriter`](super::LogWriter) carries on.
    pub tail: LogTail,
}

/// Reads every live segment of `dir` in order. A missing directory is created
/// and recovers empty. A torn record at the very end of the last segment is
/// truncated away (and reported); any other damage is an error.
pub fn recover(dir: &Path) -> Result<Recovered, RecoveryError> {
    super::io::create_private_dir(dir).map_err(io_err(dir))?;
    let segments = list_segments(dir)?;
    let live = live_from(dir, &segments)?;
    let mut out = Recovered {
        records: Vec::new(),
        torn_records: 0,
        torn_bytes: 0,
        segments_read: 0,
        tail: LogTail {
            dir: dir.to_path_buf(),
            segments: segments.clone(),
        },
    };
    for (i, &seq) in segments.iter().enumerate().skip(live) {
        let last = i + 1 == segments.len();
        read_segment(&segment_path(dir, seq), seq, last, &mut out)?;
        out.segments_read += 1;
    }
    Ok(out)
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> RecoveryError + '_ {
    move |source| RecoveryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, offset: usize, kind: Corruption) -> RecoveryError {
    RecoveryError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        kind,
    }
}

/// Segment sequence numbers, ascending. Leftover `.tmp` files (a rotation or
/// compaction the crash interrupted before its rename) are removed.
fn list_segments(dir: &Path) -> Result<Vec<u64>, RecoveryError> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = parse_segment_name(&name) {
            seqs.push(seq);
        } else if name.ends_with(".log.tmp") {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Index of the newest snapshot segment (which supersedes all before it), or
/// 0. Older segments are left for the writer's next compaction to delete.
fn live_from(dir: &Path, segments: &[u64]) -> Result<usize, RecoveryError> {
    for (i, &seq) in segments.iter().enumerate().rev() {
        let path = segment_path(dir, seq);
        let mut head = [0u8; HEADER_LEN];
        let n = read_prefix(&path, &mut head)?;
        if let Ok(h) = decode_header(&head[..n]) {
            if h.flags & FLAG_SNAPSHOT != 0 && h.seq == seq {
                return Ok(i);
            }
        }
    }
    Ok(0)
}

fn read_prefix(path: &Path, buf: &mut [u8]) -> Result<usize, RecoveryError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]).map_err(io_err(path))? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn read_segment(
    path: &Path,
    seq: u64,
    last: bool,
    out: &mut Recovered,
) -> Result<(), RecoveryError> {
    let buf = Bytes::from(std::fs::read(path).map_err(io_err(path))?);
    match decode_header(&buf) {
        Ok(h) if h.seq != seq => return Err(corrupt(path, 16, Corruption::SeqMismatch(h.seq))),
        Ok(_) => {}
        // Segments are renamed into place with their header synced, so even
        // the last one is never legitimately short.
        Err(e) => return Err(corrupt(path, 0, header_corruption(e))),
    }
    let mut pos = HEADER_LEN;
    while pos < buf.len() {
        match frame_at(&buf, pos) {
            Frame::Record { start, end } => {
                // Copied: what a record restores (a retained message, a
                // subscription) may live for long, and a slice would keep the
                // whole segment in memory.
                out.records.push(Bytes::copy_from_slice(&buf[start..end]));
                pos = end;
            }
            f if last && is_torn_tail(f, buf.len()) => return truncate(path, pos, buf.len(), out),
            f => return Err(corrupt(path, pos, frame_corruption(f))),
        }
    }
    Ok(())
}

/// A record the crash interrupted: it runs past the end of the file, or it
/// is the very last thing in it and its checksum fails.
fn is_torn_tail(frame: Frame, file_len: usize) -> bool {
    match frame {
        Frame::Truncated => true,
        Frame::BadChecksum { end } => end == file_len,
        Frame::TooLong(_) | Frame::Record { .. } => false,
    }
}

fn header_corruption(e: HeaderError) -> Corruption {
    match e {
        HeaderError::Short => Corruption::ShortHeader,
        HeaderError::BadMagic => Corruption::BadMagic,
        HeaderError::BadChecksum => Corruption::BadHeaderChecksum,
        HeaderError::UnknownVersion(v) => Corruption::UnknownVersion(v),
    }
}

fn frame_corruption(f: Frame) -> Corruption {
    match f {
        Frame::TooLong(n) => Corruption::RecordTooLong(n),
        Frame::Truncated => Corruption::RecordTruncated,
        Frame::BadChecksum { .. } | Frame::Record { .. } => Corruption::RecordChecksum,
    }
}

/// Cuts the torn tail off for good, so that once the writer starts a newer
/// segment this one is no longer "the last" and would otherwise fail to read.
fn truncate(path: &Path, pos: usize, len: usize, out: &mut Recovered) -> Result<(), RecoveryError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    file.set_len(pos as u64).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))?;
    out.torn_records += 1;
    out.torn_bytes += (len - pos) as u64;
    Ok(())
}
