//! Validation: every bound, reported together, each naming its key and range.

use std::ops::RangeInclusive;

use super::*;

/// Every bound of the resource caps.
pub(super) fn check_limits(limits: &Limits, check: &mut Checker) {
    use bounds::AT_LEAST_ONE;
    check.range(
        "max_packet_size",
        limits.max_packet_size.into(),
        bounds::MAX_PACKET_SIZE,
    );
    check.range(
        "max_connections",
        limits.max_connections as u64,
        AT_LEAST_ONE,
    );
    check.range(
        "max_inflight_messages",
        limits.max_inflight_messages.into(),
        bounds::U16_NONZERO,
    );
    check.range(
        "max_queued_messages",
        limits.max_queued_messages as u64,
        AT_LEAST_ONE,
    );
    check.range(
        "max_queued_bytes",
        limits.max_queued_bytes as u64,
        AT_LEAST_ONE,
    );
    check.range(
        "max_write_buffer",
        limits.max_write_buffer as u64,
        AT_LEAST_ONE,
    );
    check.range(
        "max_topic_levels",
        limits.max_topic_levels as u64,
        bounds::TOPIC_LEVELS,
    );
    check.range(
        "max_client_id_len",
        limits.max_client_id_len as u64,
        bounds::CLIENT_ID_LEN,
    );
    check.range(
        "connect_timeout",
        limits.connect_timeout.as_secs(),
        AT_LEAST_ONE,
    );
    check.range(
        "max_keepalive",
        limits.max_keepalive.into(),
        bounds::U16_NONZERO,
    );
    check.range(
        "max_awaiting_rel",
        limits.max_awaiting_rel as u64,
        AT_LEAST_ONE,
    );
    check.range(
        "awaiting_rel_timeout",
        limits.awaiting_rel_timeout.as_secs(),
        AT_LEAST_ONE,
    );
    check.range("max_stall", limits.max_stall.as_secs(), AT_LEAST_ONE);
    check.range(
        "max_retained_messages",
        limits.max_retained_messages as u64,
        AT_LEAST_ONE,
    );
    check.range(
        "max_retained_bytes",
        limits.max_retained_bytes as u64,
        AT_LEAST_ONE,
    );
    check.range(
        "max_subscriptions_per_client",
        limits.max_subscriptions_per_client as u64,
        AT_LEAST_ONE,
    );
    check.range(
        "persistent_client_expiration",
        u64::from(limits.persistent_client_expiration),
        AT_LEAST_ONE,
    );
}

/// Allowed ranges, shared by validation and by the narrowing of file/CLI
/// values into the config's field types.
pub(super) mod bounds {
    use std::ops::RangeInclusive;

    pub const CORES: RangeInclusive<u64> = 1..=256;
    pub const RING_ENTRIES: RangeInclusive<u64> = 64..=32_768;
    /// A read buffer smaller than a fixed header plus a short topic would
    /// force a regrow on nearly every packet.
    pub const READ_BUFFER: RangeInclusive<u64> = 64..=268_435_455;
    pub const MESH_QUEUE: RangeInclusive<u64> = 1..=1 << 20;
    pub const MESH_BUDGET: RangeInclusive<u64> = 4096..=1 << 40;
    /// A sleeping core wakes in tens of microseconds: polling far longer
    /// only burns CPU (and a core polls at most 1 ms at a stretch).
    pub const BUSY_POLL_US: RangeInclusive<u64> = 0..=1000;
    /// Past 10 ms the added latency is what a client notices, and the
    /// writes saved are few: they are already large.
    pub const WRITE_COALESCE_MS: RangeInclusive<u64> = 0..=10;
    /// As for writes: past 10 ms reads are large already.
    pub const READ_COALESCE_MS: RangeInclusive<u64> = 0..=10;
    /// 268_435_455 is the largest length MQTT's variable-byte integer can encode.
    pub const MAX_PACKET_SIZE: RangeInclusive<u64> = 64..=268_435_455;
    /// A 65535-byte topic has at most 32768 levels.
    pub const TOPIC_LEVELS: RangeInclusive<u64> = 1..=32_768;
    /// MQTT 3.1.1 §3.1.3.1: servers MUST accept client ids of 1..=23 bytes,
    /// and a UTF-8 string field cannot exceed 65535 bytes.
    pub const CLIENT_ID_LEN: RangeInclusive<u64> = 23..=65_535;
    pub const U16_NONZERO: RangeInclusive<u64> = 1..=65_535;
    pub const AT_LEAST_ONE: RangeInclusive<u64> = 1..=u64::MAX;
}

/// Collects validation failures instead of stopping at the first one.
#[derive(Default)]
pub(super) struct Checker {
    errors: Vec<String>,
}

impl Checker {
    pub(super) fn range(&mut self, key: &str, value: u64, allowed: RangeInclusive<u64>) {
        if !allowed.contains(&value) {
            self.fail(out_of_range(key, value, &allowed));
        }
    }

    pub(super) fn fail(&mut self, message: String) {
        self.errors.push(message);
    }

    pub(super) fn finish(self) -> Result<(), ConfigError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(self.errors.join("; ")))
        }
    }
}

fn out_of_range(key: &str, value: u64, allowed: &RangeInclusive<u64>) -> String {
    if *allowed.end() == u64::MAX {
        format!(
            "{key} = {value} is out of range: must be at least {}",
            allowed.start()
        )
    } else {
        format!(
            "{key} = {value} is out of range: allowed {}..={}",
            allowed.start(),
            allowed.end()
        )
    }
}

/// Narrow a parsed value to a field's type; a value too big for the type is
/// also out of the key's range, so report it the same way.
pub(super) fn narrow<T: TryFrom<u64>>(
    key: &str,
    value: u64,
    allowed: RangeInclusive<u64>,
) -> Result<T, ConfigError> {
    T::try_from(value).map_err(|_| ConfigError::Invalid(out_of_range(key, value, &allowed)))
}
