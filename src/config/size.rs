//! Byte sizes with binary suffixes (`64KiB`, `1MiB`) in flags and TOML.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// A byte count: a plain integer, or an integer with a binary suffix
/// (`64KiB`, `1MiB`, `1GiB`; `K`/`M`/`G` mean the same). Decimal `KB`/`MB`
/// are rejected rather than guessed, since tools disagree on what they mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit() && c != '_')
            .unwrap_or(trimmed.len());
        let (digits, unit) = trimmed.split_at(split);
        let bad =
            || format!("invalid size {text:?}: expected bytes such as 1048576, 64KiB or 1MiB");
        let number: u64 = digits.replace('_', "").parse().map_err(|_| bad())?;
        let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            _ => return Err(bad()),
        };
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| format!("size {text:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ByteSizeVisitor)
    }
}

struct ByteSizeVisitor;

impl serde::de::Visitor<'_> for ByteSizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte count such as 1048576 or \"1MiB\"")
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
        Ok(ByteSize(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
        u64::try_from(v)
            .map(ByteSize)
            .map_err(|_| E::custom(format!("size {v} must not be negative")))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
        v.parse().map_err(E::custom)
    }
}
