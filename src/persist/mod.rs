//! Persistence storage: a per-core append-only log of opaque records.
//!
//! Each core owns the log of its own sessions (shared nothing). A
//! [`LogWriter`] runs a dedicated OS thread per core (`ringmq-log-<N>`) that
//! owns the files, so no write or fsync ever runs on a core's event loop: the
//! loop calls [`LogWriter::append`], gets an [`Lsn`], and learns through
//! [`LogWriter::synced`] (and the notify callback, run on the writer thread
//! after each sync) when it is durable. What the records mean is the router's
//! business; this layer only keeps them in order and intact.
//!
//! # On disk
//!
//! ```text
//! <location>/core-<N>/                  one directory per core (core_dir)
//!     0000000000000000.log              segments, named by sequence (hex)
//!     0000000000000001.log
//!     0000000000000002.log.tmp          a segment being prepared; never read
//!
//! segment = header record*
//! header  (32 bytes, little-endian)
//!     0..8    magic   "RINGMQLG"
//!     8..10   version u16 = 1
//!     10..12  flags   u16, bit 0 = snapshot (supersedes all lower sequences)
//!     12..16  reserved, zero
//!     16..24  seq     u64, equal to the file name's
//!     24..28  reserved, zero
//!     28..32  CRC-32C of bytes 0..28
//! record
//!     0..4    len     u32, body length, at most MAX_RECORD_LEN (512 MiB)
//!     4..8    crc     u32, CRC-32C of the len field followed by the body
//!     8..     body    len opaque bytes
//! ```
//!
//! CRC-32C rather than CRC-32: the `crc32c` crate uses the SSE4.2 / ARMv8
//! CRC instructions (many GB/s, so checksums cost nothing next to the disk),
//! and the Castagnoli polynomial detects more error patterns at these lengths;
//! it is what ext4, iSCSI, LevelDB and Kafka use. The checksum covers the
//! length field so a flipped length bit is reported where it happened instead
//! of misframing the rest, and a zero-filled hole never checks out.
//!
//! # Writing
//!
//! The writer thread drains everything queued, frames it into one buffer, and
//! writes it with one positional write (`pwrite`) after the segment's durable
//! bytes. With [`FsyncPolicy::Always`] it then `fdatasync`s once for the whole
//! batch (group commit) and publishes the batch's last LSN; with
//! [`FsyncPolicy::Periodic`] it syncs at most once per interval and on flush
//! and drop. A batch ends where the segment passes
//! [`WriterConfig::segment_bytes`]; that segment is synced and closed and the
//! next write starts a new one. New segments (and snapshots) are
//! written as `.tmp`, synced, renamed into the sequence and the directory
//! synced, so a file under a segment name always has a complete header.
//!
//! Failures (disk full, EIO, a read-only directory) never panic: the writer
//! reports them through [`LogWriter::health`] and [`LogWriter::failed_ops`]
//! and retries with backoff, rewriting every not-yet-durable byte at the same
//! offsets (a failed fsync may have dropped the dirty pages), and `synced`
//! does not move until a sync succeeds.
//!
//! # Compaction
//!
//! [`LogWriter::compact`] takes the caller's state as records. In order with
//! the appends, the writer syncs what came before, writes the snapshot as a
//! new segment flagged snapshot (tmp, fsync, rename, fsync dir), continues
//! appending into it, and deletes the older segments. A crash before the
//! rename leaves a `.tmp` that recovery deletes (the old segments still hold
//! everything); after it, recovery starts at the newest snapshot and ignores
//! older segments, whether or not they were deleted yet.
//!
//! # Recovery
//!
//! [`recover`] reads the segments from the newest snapshot on, in order. A
//! record at the very end of the last segment that is cut short or fails its
//! checksum is a write the crash interrupted: it is truncated off the file and
//! counted in [`Recovered`]. Any other damage is a [`RecoveryError`] naming
//! the file, the byte offset, and the way out.
//!
//! One limit to know: a crash during a large unsynced write could, on some
//! file systems, persist a later page of it but not an earlier one. The hole
//! then fails its checksum with good-looking data after it, which recovery
//! reports as corruption rather than guessing it was unsynced.

mod format;
mod io;
mod recover;
mod writer;

pub use format::{
    encode_header, encode_record, FLAG_SNAPSHOT, HEADER_LEN, MAGIC, MAX_RECORD_LEN,
    RECORD_HEADER_LEN, VERSION,
};
pub use io::{create_private_dir, Faults, FaultyIo, RealIo, SegmentFile, SegmentIo};
pub use recover::{recover, Corruption, LogTail, Recovered, RecoveryError};
pub use writer::{FsyncPolicy, LogWriter, Lsn, NotDurable, Notify, RecordTooLarge, WriterConfig};

use std::path::{Path, PathBuf};

/// `<location>/core-<core>`: the directory of one core's log.
pub fn core_dir(location: &Path, core: usize) -> PathBuf {
    location.join(format!("core-{core}"))
}

/// The path of segment `seq` in a core's directory.
pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    format::segment_path(dir, seq)
}

#[cfg(test)]
mod tests;
