//! Shared harness for the end-to-end tests (`tests/e2e_*.rs`), by concern:
//!
//! - [`broker`]: [`start`] runs a broker in-process on 127.0.0.1 and stops it
//!   on drop; [`id_on`] picks client ids so that a client lands on a chosen
//!   core; [`TestBroker::wait_counters`] awaits the broker's counters.
//! - [`rumqtt`]: [`V4`] / [`V5`] wrap rumqttc's 3.1.1 and 5.0 clients: the
//!   event loop runs in its own task and every incoming packet is forwarded to
//!   a channel, so a test waits for events (CONNACK, SUBACK, PUBLISH ...) with
//!   a bound instead of sleeping.
//! - [`raw`]: [`Raw`] is a client driven by ringmq's own codec over a plain
//!   socket, for exact bytes, malformed input and abrupt ends, with packet
//!   builders.
//! - [`mosquitto`]: Mosquitto's command-line clients (`mosquitto_sub`,
//!   `mosquitto_pub`).
//! - [`tls`]: certificates made at test time (a CA, the server's, clients').
//! - [`script`]: third-party clients run as programs (Paho's Python scripts,
//!   MQTT.js scripts), their output lines read as they come ([`Script`]).
//! - [`checks`]: payload numbering, sequence checks, the in-order,
//!   exactly-once stream check shared by several suites, the range of a
//!   remaining message expiry for measured time ([`remaining_expiry`]) and
//!   the wait for every core's retained replica ([`wait_retained`]).
//!
//! Everything is re-exported here, so a test file says `mod common;` and
//! `use common::*;`. Each test binary uses a subset, hence `dead_code` is
//! allowed.
//!
//! Every wait here is bounded: [`STEP`] for one expected event, explicit
//! deadlines elsewhere. A hang fails the test with a message, never the CI job.
//!
//! Tests assert behaviour, not speed: no verdict may depend on how fast or
//! loaded the machine is. Upper bounds are deadlines of this kind (STEP, or
//! STEP past a broker-side timer), never claims about how promptly something
//! happened; lower bounds ("not before its delay") read the clock before the
//! event starts. "Nothing else arrives" is checked with a marker where one
//! can be ordered after what must not arrive ([`Client::expect_marker`],
//! [`Raw::expect_marker`]), and with a [`QUIET`] window only where it cannot.

#![allow(dead_code, unused_imports)]

pub mod broker;
pub mod checks;
pub mod mosquitto;
pub mod nats;
pub mod raw;
pub mod rumqtt;
pub mod script;
pub mod tls;

pub use broker::*;
pub use checks::*;
pub use mosquitto::*;
pub use nats::*;
pub use raw::*;
pub use rumqtt::*;
pub use script::*;
pub use tls::*;

use std::future::Future;
use std::time::Duration;

/// Longest wait for one expected event (a CONNACK, a SUBACK, the next message).
pub const STEP: Duration = Duration::from_secs(5);

/// How long to watch for something that must NOT arrive. Only used for negative
/// assertions, never as synchronisation, and only where no marker can be
/// ordered after what must not arrive: a window can only let a test pass
/// wrongly (on a slow machine), never fail wrongly.
pub const QUIET: Duration = Duration::from_millis(300);

/// Awaits `fut` for at most `limit`, failing the test with `what` on expiry.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}
