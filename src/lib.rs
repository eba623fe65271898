//! ringmq: a thread-per-core MQTT broker on monoio.
//!
//! Two crates, dependencies pointing one way:
//! - `ringmq-proto`, the pure core, whose dependencies leave no room for I/O,
//!   clocks or threads: [`codec`], [`topic`], [`message`], [`session`],
//!   [`router`] (one core's routing state; its effects go into an outbox),
//!   [`store`], [`time`], [`limits`], [`counters`]. Re-exported here under
//!   those names.
//! - this crate, what touches the world:
//!   - [`server`]: the only I/O: per-core monoio workers, listeners, the
//!     cross-core mesh, connections (generic over the byte stream), and the
//!     one drain point that carries out each core's outbox.
//!   - [`config`], [`metrics`], [`auth`]: leaves used by the server.

pub use ringmq_proto::{
    access, codec, counters, durable, latency, limits, message, router, session, store, time, topic,
};

/// The git commit this binary was built from ("unknown" outside a checkout).
pub const GIT_COMMIT: &str = env!("RINGMQ_GIT_COMMIT");

pub mod auth;
pub mod bridge;
pub mod cluster;
pub mod config;
pub mod metrics;
pub mod persist;
pub mod server;
