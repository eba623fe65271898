//! Resource caps and the few policy choices the core makes: plain data, set
//! once from the broker's configuration.

use std::str::FromStr;
use std::time::Duration;

/// How a shared subscription group picks the member that gets a message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
pub enum SharedStrategy {
    /// Each member in turn.
    #[default]
    RoundRobin,
    /// A member chosen at random.
    Random,
    /// The same member for the same publisher (hash of its client id), so one
    /// device's messages stay in order at one consumer.
    HashClientId,
}

impl SharedStrategy {
    /// The names the configuration accepts, in declaration order.
    pub const NAMES: [&'static str; 3] = ["round-robin", "random", "hash-client-id"];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

impl FromStr for SharedStrategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "round-robin" => Ok(SharedStrategy::RoundRobin),
            "random" => Ok(SharedStrategy::Random),
            "hash-client-id" => Ok(SharedStrategy::HashClientId),
            _ => Err(format!(
                "unknown shared strategy {s:?} (expected one of {})",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// What happens to a QoS 1/2 message for a connected subscriber whose queue
/// is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
pub enum SlowConsumerPolicy {
    /// Queued past the cap, and every publisher feeding the queue stops being
    /// read until it drains: nothing acknowledged is dropped.
    #[default]
    Backpressure,
    /// Dropped and counted (`dropped_queue_full`), as Mosquitto does.
    Drop,
}

impl SlowConsumerPolicy {
    pub const NAMES: [&'static str; 2] = ["backpressure", "drop"];
}

impl FromStr for SlowConsumerPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "backpressure" => Ok(SlowConsumerPolicy::Backpressure),
            "drop" => Ok(SlowConsumerPolicy::Drop),
            _ => Err(format!(
                "unknown slow consumer policy {s:?} (expected one of {})",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// Resource caps. Each one bounds memory or work that a client (or all
/// clients together) could otherwise grow without limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest packet (fixed header included) accepted from a client, in bytes.
    pub max_packet_size: u32,
    /// Open client connections across the whole broker (all cores together).
    pub max_connections: usize,
    /// Open connections from one IP address (0: no limit).
    pub max_connections_per_ip: usize,
    /// New connections per second on each listener (0: no limit).
    pub max_connection_rate: u32,
    /// Unacknowledged outgoing QoS 1/2 messages per client (MQTT 5 Receive
    /// Maximum semantics).
    pub max_inflight_messages: u16,
    /// Messages queued per client behind the in-flight window.
    pub max_queued_messages: usize,
    /// Bytes queued per client behind the in-flight window.
    pub max_queued_bytes: usize,
    /// A connected client's full queue: slow its publishers, or drop.
    pub slow_consumer_policy: SlowConsumerPolicy,
    /// How long a connected client may hold its publishers back without
    /// reading anything before it is disconnected as a slow consumer.
    pub max_stall: Duration,
    /// Unsent output bytes per connection. Past it, QoS 0 messages to that
    /// client hold its publishers back (or, with the drop policy, are dropped
    /// and counted) and QoS 1/2 wait in its session queue.
    pub max_write_buffer: usize,
    /// Topic levels in a topic name or filter; bounds trie depth and matching work.
    pub max_topic_levels: usize,
    /// Longest client identifier, in bytes. The protocol allows 65535, but
    /// clients in the wild stay short (UUIDs are 36 bytes), so 256 costs no
    /// real client anything while keeping session tables and logs from
    /// carrying 64 KiB keys. MQTT requires servers to accept at least 23.
    pub max_client_id_len: usize,
    /// Time a new connection has to send CONNECT before it is closed.
    pub connect_timeout: Duration,
    /// Largest keep-alive a client may use, in seconds; 65535 means no cap.
    pub max_keepalive: u16,
    /// QoS 2 messages per client received but still awaiting PUBREL.
    pub max_awaiting_rel: usize,
    /// How long a QoS 2 message may wait for its PUBREL before it is discarded.
    pub awaiting_rel_timeout: Duration,
    /// Retained messages stored broker-wide.
    pub max_retained_messages: usize,
    /// Retained payload bytes stored broker-wide.
    pub max_retained_bytes: usize,
    /// Subscriptions held by one client session.
    pub max_subscriptions_per_client: usize,
    /// Topic aliases a 5.0 client may use towards the broker (0 disables them).
    pub max_topic_alias: u16,
    /// Longest 5.0 session expiry interval honoured, in seconds; longer requests
    /// are capped and the client is told so in CONNACK.
    pub max_session_expiry: u32,
    /// Seconds a 3.1.1 persistent (clean session 0) session outlives its
    /// connection; `u32::MAX`: forever (Mosquitto's `persistent_client_expiration`).
    pub persistent_client_expiration: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet_size: 1 << 20,
            max_connections: 100_000,
            max_connections_per_ip: 0,
            max_connection_rate: 0,
            max_inflight_messages: 20,
            max_queued_messages: 1000,
            max_queued_bytes: 16 << 20,
            slow_consumer_policy: SlowConsumerPolicy::Backpressure,
            max_stall: Duration::from_secs(10),
            max_write_buffer: 1 << 20,
            max_topic_levels: 128,
            max_client_id_len: 256,
            connect_timeout: Duration::from_secs(10),
            max_keepalive: 65_535,
            max_awaiting_rel: 100,
            awaiting_rel_timeout: Duration::from_secs(300),
            max_retained_messages: 1_000_000,
            max_retained_bytes: 256 << 20,
            max_subscriptions_per_client: 10_000,
            max_topic_alias: 10,
            max_session_expiry: u32::MAX,
            persistent_client_expiration: u32::MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategy_names_round_trip() {
        for name in SharedStrategy::NAMES {
            assert_eq!(name.parse::<SharedStrategy>().unwrap().name(), name);
        }
        assert!("fastest".parse::<SharedStrategy>().is_err());
    }
}
