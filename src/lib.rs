//! ringmq: a thread-per-core MQTT broker on monoio.
//!
//! Module map, dependencies pointing one way
//! (`codec <- topic <- message <- session <- router <- server`):
//! - [`codec`]: bytes <-> packets for MQTT 3.1, 3.1.1 and 5.0 (pure).
//! - [`topic`]: validated topic names and filters, the subscription trie (pure).
//! - [`message`]: the shared, encode-once application message.
//! - [`session`]: one client's state machine, sans-io, time passed in.
//! - [`router`]: per-core routing state and the cross-core mesh.
//! - [`server`]: the only I/O: per-core monoio workers, listeners, connections.
//! - [`store`]: storage behind small interfaces (in memory for now).
//! - [`config`], [`metrics`], [`auth`]: leaves used by the server.

pub mod auth;
pub mod codec;
pub mod config;
pub mod message;
pub mod metrics;
pub mod router;
pub mod server;
pub mod session;
pub mod store;
pub mod topic;
