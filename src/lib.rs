//! ringmq: a thread-per-core MQTT broker on monoio.
//!
//! The protocol core (codec, topics, messages, sessions, the retained store)
//! is the `ringmq-proto` crate, whose dependencies leave no room for I/O; its
//! modules are re-exported here under their usual names. This crate adds what
//! touches the world:
//! - [`router`]: per-core routing state and the cross-core mesh.
//! - [`server`]: the only I/O: per-core monoio workers, listeners, connections.
//! - [`config`], [`metrics`], [`auth`]: leaves used by the server.

pub use ringmq_proto::{codec, counters, limits, message, session, store, time, topic};

pub mod auth;
pub mod config;
pub mod metrics;
pub mod router;
pub mod server;
