//! Byte layout of segment headers and records (see the module doc in
//! `persist/mod.rs` for the picture). Pure functions, no I/O.

use std::path::{Path, PathBuf};

/// First eight bytes of every segment.
pub const MAGIC: [u8; 8] = *b"RINGMQLG";
/// The only format this code reads and writes.
pub const VERSION: u16 = 1;
/// magic 8 | version 2 | flags 2 | reserved 4 | seq 8 | reserved 4 | crc 4.
pub const HEADER_LEN: usize = 32;
/// length 4 | crc 4, then the body.
pub const RECORD_HEADER_LEN: usize = 8;
/// Largest record body. Must exceed the largest MQTT packet (256 MiB) plus
/// whatever the router wraps around it; anything bigger is a garbage length.
pub const MAX_RECORD_LEN: u32 = 512 << 20;
/// Header flag: this segment is a snapshot that supersedes every segment with
/// a lower sequence number.
pub const FLAG_SNAPSHOT: u16 = 1;

/// A parsed segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub flags: u16,
    pub seq: u64,
}

/// Why a header does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    Short,
    BadMagic,
    BadChecksum,
    UnknownVersion(u16),
}

pub fn encode_header(seq: u64, flags: u16) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    h[10..12].copy_from_slice(&flags.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[..28]);
    h[28..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks magic, then the checksum, then the version: a header from a future
/// format has a valid checksum and says so, a damaged one does not.
pub fn decode_header(buf: &[u8]) -> Result<Header, HeaderError> {
    let h = buf.get(..HEADER_LEN).ok_or(HeaderError::Short)?;
    if h[..8] != MAGIC {
        return Err(HeaderError::BadMagic);
    }
    if crc32c::crc32c(&h[..28]) != u32::from_le_bytes(le4(&h[28..])) {
        return Err(HeaderError::BadChecksum);
    }
    let version = u16::from_le_bytes([h[8], h[9]]);
    if version != VERSION {
        return Err(HeaderError::UnknownVersion(version));
    }
    let flags = u16::from_le_bytes([h[10], h[11]]);
    let seq = u64::from_le_bytes(h[16..24].try_into().unwrap_or_default());
    Ok(Header {
        version,
        flags,
        seq,
    })
}

/// The record checksum covers the length field too, so a flipped length bit
/// is caught here rather than misframing everything after it, and a run of
/// zeros (a hole left by a torn write) never checks out.
pub fn record_crc(len: [u8; 4], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len), body)
}

/// Appends one framed record to `out`. The caller has checked the length.
pub fn encode_record(out: &mut Vec<u8>, body: &[u8]) {
    let len = (body.len() as u32).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&record_crc(len, body).to_le_bytes());
    out.extend_from_slice(body);
}

/// What the bytes at one record position hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A good record: body at `start..end`, next record at `end`.
    Record { start: usize, end: usize },
    /// The file ends inside the record header or body.
    Truncated,
    /// The length is over [`MAX_RECORD_LEN`].
    TooLong(u32),
    /// The body does not match its checksum; the record would end at `end`.
    BadChecksum { end: usize },
}

/// Reads the record framed at `pos` (which is before the end of `buf`).
pub fn frame_at(buf: &[u8], pos: usize) -> Frame {
    let Some(head) = buf.get(pos..pos + RECORD_HEADER_LEN) else {
        return Frame::Truncated;
    };
    let len_bytes = le4(&head[..4]);
    let len = u32::from_le_bytes(len_bytes);
    let start = pos + RECORD_HEADER_LEN;
    let end = start + len as usize;
    if end > buf.len() {
        return Frame::Truncated;
    }
    if len > MAX_RECORD_LEN {
        return Frame::TooLong(len);
    }
    let crc = u32::from_le_bytes(le4(&head[4..]));
    if record_crc(len_bytes, &buf[start..end]) != crc {
        return Frame::BadChecksum { end };
    }
    Frame::Record { start, end }
}

fn le4(b: &[u8]) -> [u8; 4] {
    [b[0], b[1], b[2], b[3]]
}

/// `<dir>/<seq:016x>.log`
pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.log"))
}

/// `<dir>/<seq:016x>.log.tmp`: a segment being prepared; never read.
pub fn temp_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.log.tmp"))
}

/// The sequence number of a segment file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".log")?;
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_damage() {
        let h = encode_header(0x1234, FLAG_SNAPSHOT);
        let parsed = decode_header(&h).expect("parses");
        assert_eq!((parsed.seq, parsed.flags), (0x1234, FLAG_SNAPSHOT));
        assert_eq!(decode_header(&h[..31]), Err(HeaderError::Short));
        let mut bad = h;
        bad[0] ^= 1;
        assert_eq!(decode_header(&bad), Err(HeaderError::BadMagic));
        let mut bad = h;
        bad[17] ^= 1;
        assert_eq!(decode_header(&bad), Err(HeaderError::BadChecksum));
    }

    #[test]
    fn future_version_is_named() {
        let mut h = encode_header(1, 0);
        h[8..10].copy_from_slice(&7u16.to_le_bytes());
        let crc = crc32c::crc32c(&h[..28]);
        h[28..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_header(&h), Err(HeaderError::UnknownVersion(7)));
    }

    #[test]
    fn record_frames() {
        let mut buf = Vec::new();
        encode_record(&mut buf, b"hello");
        encode_record(&mut buf, b"");
        assert_eq!(frame_at(&buf, 0), Frame::Record { start: 8, end: 13 });
        assert_eq!(frame_at(&buf, 13), Frame::Record { start: 21, end: 21 });
        assert_eq!(frame_at(&buf[..12], 0), Frame::Truncated);
        assert_eq!(frame_at(&buf[..5], 0), Frame::Truncated);
        buf[10] ^= 0x40;
        assert_eq!(frame_at(&buf, 0), Frame::BadChecksum { end: 13 });
        let zeros = [0u8; 16];
        assert!(matches!(frame_at(&zeros, 0), Frame::BadChecksum { .. }));
    }

    #[test]
    fn segment_names() {
        let p = segment_path(Path::new("/x"), 0xab);
        assert_eq!(p, Path::new("/x/00000000000000ab.log"));
        assert_eq!(parse_segment_name("00000000000000ab.log"), Some(0xab));
        assert_eq!(parse_segment_name("00000000000000ab.log.tmp"), None);
        assert_eq!(parse_segment_name("ab.log"), None);
    }
}
