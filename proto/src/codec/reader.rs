//! A bounds-checked cursor over one frame's bytes; every read is a zero-copy slice.

use bytes::{Buf, Bytes};

use super::{DecodeError, Pid};

pub(crate) struct Reader {
    buf: Bytes,
    what: &'static str,
}

type Result<T> = std::result::Result<T, DecodeError>;

impl Reader {
    pub fn new(buf: Bytes, what: &'static str) -> Reader {
        Reader { buf, what }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn need(&self, n: usize) -> Result<()> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(self.what));
        }
        Ok(())
    }

    pub fn u8(&mut self) -> Result<u8> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    pub fn u16(&mut self) -> Result<u16> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    pub fn u32(&mut self) -> Result<u32> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    pub fn pid(&mut self) -> Result<Pid> {
        Pid::new(self.u16()?).ok_or(DecodeError::ZeroPacketId)
    }

    /// Variable byte integer [MQTT-1.5.5]: at most four bytes.
    pub fn varint(&mut self) -> Result<u32> {
        let mut value = 0u32;
        for i in 0..4 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::MalformedRemainingLength)
    }

    /// Length-prefixed binary data.
    pub fn binary(&mut self) -> Result<Bytes> {
        let len = usize::from(self.u16()?);
        self.take(len)
    }

    /// Length-prefixed UTF-8 string, validated (no U+0000).
    pub fn string(&mut self) -> Result<Bytes> {
        let raw = self.binary()?;
        validate_utf8(&raw)?;
        Ok(raw)
    }

    pub fn take(&mut self, len: usize) -> Result<Bytes> {
        self.need(len)?;
        Ok(self.buf.split_to(len))
    }

    /// Everything left (a PUBLISH payload).
    pub fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    pub fn expect_end(&self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Truncated(self.what))
        }
    }
}

/// MQTT strings are UTF-8 without U+0000 [MQTT-1.5.3-1], [MQTT-1.5.3-2].
pub(crate) fn validate_utf8(raw: &[u8]) -> Result<()> {
    // ASCII (nearly every topic and client id) is UTF-8; the word-at-a-time
    // check is a fraction of the full decoder's cost on a short string.
    let utf8 = raw.is_ascii() || std::str::from_utf8(raw).is_ok();
    match utf8 && !raw.contains(&0) {
        true => Ok(()),
        false => Err(DecodeError::InvalidUtf8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_strings_are_utf8_without_nul_ascii_or_not() {
        for ok in [&b"a/b"[..], b"", "caf\u{e9}/\u{1f600}".as_bytes()] {
            assert!(validate_utf8(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            &b"a\0b"[..],
            "\u{e9}\0".as_bytes(),
            b"\xff",
            b"a/\xc3",
            b"\xed\xa0\x80",
        ] {
            assert!(
                matches!(validate_utf8(bad), Err(DecodeError::InvalidUtf8)),
                "{bad:?}"
            );
        }
    }
}
