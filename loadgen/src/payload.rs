//! The header every generated payload starts with. It carries what loss and
//! latency accounting need, so the subscriber side is stateless per message.

/// Bytes taken by [`Header`]: the smallest `--size` allowed.
pub const HEADER_LEN: usize = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Random per run: messages left over from another run (persistent
    /// sessions, a second generator on the same broker) are recognised and ignored.
    pub run_id: u32,
    pub publisher: u32,
    /// Per publisher, from 0, no gaps: loss and order come from it.
    pub seq: u64,
    /// Intended send time on the shared clock, in nanoseconds.
    pub intended_ns: u64,
}

impl Header {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `buf`.
    pub fn write(&self, buf: &mut [u8]) {
        buf[0..4].copy_from_slice(&self.run_id.to_le_bytes());
        buf[4..8].copy_from_slice(&self.publisher.to_le_bytes());
        buf[8..16].copy_from_slice(&self.seq.to_le_bytes());
        buf[16..24].copy_from_slice(&self.intended_ns.to_le_bytes());
    }

    /// `None` when the payload is too short to be one of ours.
    pub fn read(buf: &[u8]) -> Option<Header> {
        let head = buf.get(..HEADER_LEN)?;
        let u32_at = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().unwrap());
        Some(Header {
            run_id: u32_at(0),
            publisher: u32_at(4),
            seq: u64_at(8),
            intended_ns: u64_at(16),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = Header {
            run_id: 0xdead_beef,
            publisher: 7,
            seq: 1 << 40,
            intended_ns: 123_456_789,
        };
        let mut buf = vec![0u8; 64];
        h.write(&mut buf);
        assert_eq!(Header::read(&buf), Some(h));
        assert_eq!(Header::read(&buf[..HEADER_LEN - 1]), None);
    }
}
