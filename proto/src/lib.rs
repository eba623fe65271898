//! ringmq's protocol core: everything the broker decides, nothing it does.
//!
//! No I/O, no clock reads, no threads, no async runtime: this crate's
//! `Cargo.toml` has none of those dependencies, so the compiler keeps it pure.
//! Time comes in as a [`time::Time`] argument, bytes come in as buffers, and
//! the router's effects go out as an [`router::Outbox`] that the server drains.
//!
//! Module map, dependencies pointing one way
//! (`codec <- topic <- message <- session <- router`):
//! - [`codec`]: bytes <-> packets for MQTT 3.1, 3.1.1 and 5.0.
//! - [`topic`]: validated topic names and filters, `$share` filters, the
//!   subscription trie and the retained-topic tree.
//! - [`message`]: the shared, encode-once application message.
//! - [`session`]: one client's state machine.
//! - [`router`]: one core's routing state: sessions, subscriptions, the
//!   replicated interest index, shared groups, retained messages; what it asks
//!   of other cores and of the server goes into its outbox.
//! - [`store`]: the retained store behind a small interface.
//! - [`durable`]: the stored form of messages and persistent sessions.
//! - [`access`]: what one client may publish, subscribe to and read, asked by
//!   the session and the router, decided by the broker's authorizer.
//! - [`time`], [`limits`], [`counters`]: leaves used by all of the above.

pub mod access;
pub mod codec;
pub mod counters;
pub mod durable;
pub mod latency;
pub mod limits;
pub mod message;
pub mod router;
pub mod session;
pub mod store;
pub mod time;
pub mod topic;
