//! `loadgen`: a thread-per-core MQTT load generator on monoio.
//!
//! Open-loop by default (every message stamped with its *intended* send time,
//! so broker stalls show as latency), HDR histograms per thread merged at the
//! end, loss/duplicate/reorder accounting per publisher->subscriber pair, and
//! the broker's CPU and memory read from /proc.

pub mod chart;
pub mod cli;
pub mod client;
pub mod clock;
pub mod commands;
pub mod context;
pub mod fd_table;
pub mod machine;
pub mod pacer;
pub mod payload;
pub mod probe;
pub mod procfs;
pub mod progress;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod shared;
pub mod signal;
pub mod stats;
pub mod transport;
pub mod worker;
