//! Broker configuration: built-in defaults, an optional TOML file, `RINGMQ_*`
//! environment variables and command-line flags, merged in that order of
//! increasing precedence and then validated as a whole.
//!
//! Every setting has one key name, shared by all layers: the TOML key is the
//! struct field (Mosquitto's name where Mosquitto has the same setting), the
//! long flag is its kebab-case form (a few have a shorter primary spelling,
//! e.g. `--bind`, with the kebab-case key as an alias) and the environment
//! variable is `RINGMQ_` plus the upper-case key. To make drift between the
//! layers impossible, the file layer ([`FileConfig`]) is also the flattened
//! body of the command-line parser: one struct, one set of names, one help
//! text.

mod bridge;
mod cluster;
mod diff;
mod file;
mod listener;
mod size;
mod validate;

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::Deserialize;

pub use bridge::{
    Addresses, Bridge, BridgeFile, BridgeProtocol, BridgeTls, Direction, RestartTimeout, Route,
    Secret,
};
pub use cluster::{Cluster, ClusterFile, DEFAULT_LINK_BUFFER};
pub use diff::{changed_keys, live_limits, LIVE_LIMITS};
pub use file::{Cli, FileConfig};
pub use listener::{
    Listener, ListenerFile, ListenerProtocol, TlsConfig, TlsVersion, DEFAULT_WEBSOCKETS_PATH,
};
pub use ringmq_proto::limits::{Limits, SharedStrategy, SlowConsumerPolicy};
pub use size::ByteSize;
use validate::{bounds, Checker};

/// Which kernel I/O interface the per-core event loops use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IoDriver {
    /// io_uring when the kernel supports it (and seccomp allows it), else epoll.
    #[default]
    Auto,
    /// Require io_uring; startup fails if it is unavailable.
    #[value(name = "io-uring", alias = "iouring")]
    #[serde(alias = "iouring")]
    IoUring,
    /// Readiness-based epoll, for kernels or sandboxes without io_uring.
    Epoll,
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// One human-readable line per event; colours only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// When the store's records are made durable, and so what a PUBACK means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsyncMode {
    /// fdatasync every `persistence_fsync_interval`: a kill -9 loses nothing
    /// the log writer wrote, a power cut at most that interval.
    #[default]
    Periodic,
    /// A QoS 1/2 PUBLISH is acknowledged only once what it caused is on disk
    /// on every core it reached (one fdatasync per batch, per core).
    Always,
}

/// The fully resolved, validated broker configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Address the top-level MQTT listener binds to (and the default of the
    /// other listeners).
    pub bind: IpAddr,
    /// TCP port of the top-level MQTT listener; 0 lets the kernel pick one (tests).
    pub port: u16,
    /// Whether the top-level `bind`:`port` listener exists (it does unless the
    /// file gives `[[listener]]` tables and no `port`).
    pub default_listener: bool,
    /// Listeners besides the top-level one (TLS, WebSocket, more ports).
    pub listeners: Vec<Listener>,
    /// Links to other brokers.
    pub bridges: Vec<Bridge>,
    /// This broker as a node of a ringmq cluster over NATS.
    pub cluster: Option<Cluster>,
    /// Worker threads, one per core; each owns its connections outright.
    pub cores: usize,
    /// Pin each worker to its own CPU so caches and the ring stay warm.
    pub pin_cores: bool,
    /// Kernel I/O interface used by the workers.
    pub io_driver: IoDriver,
    /// io_uring submission queue entries per core (power of two).
    pub ring_entries: u32,
    /// Largest read a busy connection grows to. Idle connections shrink back to
    /// a small buffer, so this costs memory only while a client is sending.
    pub read_buffer_size: usize,
    /// Batches buffered in each core-to-core queue.
    pub mesh_queue_capacity: usize,
    /// Bytes of routing batches one core may have in flight to another.
    pub mesh_budget: usize,
    /// Microseconds a core keeps polling for work after its last input
    /// before it sleeps; 0 (the default) sleeps at once.
    pub busy_poll_us: u32,
    /// Milliseconds a connection's writer waits after each write once its
    /// output keeps coming; 0 (the default) writes at once.
    pub write_coalesce_ms: u32,
    /// Milliseconds a connection's reader waits before each read once its
    /// input keeps coming; 0 (the default) reads at once.
    pub read_coalesce_ms: u32,
    /// Whether the allocator's memory may be backed by transparent huge
    /// pages (off by default: see `server::huge_pages`).
    pub transparent_huge_pages: bool,
    /// Whether clients without a username are accepted.
    pub allow_anonymous: bool,
    /// Neither a password file nor an explicit `allow_anonymous` was given:
    /// every listener must be on a loopback address.
    pub local_only: bool,
    /// Mosquitto-format password file: usernames and password hashes.
    pub password_file: Option<PathBuf>,
    /// Mosquitto-format ACL file: who may publish and subscribe where.
    pub acl_file: Option<PathBuf>,
    /// Keep persistent sessions and retained messages across restarts.
    pub persistence: bool,
    /// The store's directory (one subdirectory per core).
    pub persistence_location: PathBuf,
    /// When the store is fdatasync'ed: per batch, before acknowledging, or
    /// every `persistence_fsync_interval`.
    pub persistence_fsync: FsyncMode,
    /// How often the store is fdatasync'ed in periodic mode.
    pub persistence_fsync_interval: Duration,
    /// Tests only: the store's file operations fail on demand.
    #[doc(hidden)]
    pub persistence_faults: Option<FaultHook>,
    /// Log filter in `tracing_subscriber::EnvFilter` syntax.
    pub log_level: String,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// Interval between `$SYS` statistics publishes; zero disables them.
    pub sys_interval: Duration,
    /// Where `GET /metrics` (Prometheus text format) is served; `None`: off.
    /// Port 0 lets the kernel pick one (tests).
    pub metrics: Option<SocketAddr>,
    /// How shared subscription groups pick a member.
    pub shared_strategy: SharedStrategy,
    /// Resource caps.
    pub limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 1883,
            default_listener: true,
            listeners: Vec::new(),
            bridges: Vec::new(),
            cluster: None,
            cores: default_cores(),
            pin_cores: true,
            io_driver: IoDriver::Auto,
            ring_entries: 1024,
            read_buffer_size: 16 * 1024,
            mesh_queue_capacity: 1024,
            mesh_budget: 4 << 20,
            busy_poll_us: 0,
            write_coalesce_ms: 0,
            read_coalesce_ms: 0,
            transparent_huge_pages: false,
            allow_anonymous: true,
            local_only: true,
            password_file: None,
            acl_file: None,
            persistence: true,
            persistence_location: PathBuf::from("ringmq-data"),
            persistence_fsync: FsyncMode::Periodic,
            persistence_fsync_interval: Duration::from_secs(1),
            persistence_faults: None,
            log_level: "info".to_owned(),
            log_format: LogFormat::Text,
            sys_interval: Duration::from_secs(10),
            metrics: None,
            shared_strategy: SharedStrategy::RoundRobin,
            limits: Limits::default(),
        }
    }
}

/// One core per available CPU, clamped to the supported maximum so that the
/// default is always valid, even on very large machines.
fn default_cores() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    cpus.min(*bounds::CORES.end() as usize)
}

/// What the process was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Start the broker.
    Run(Config),
    /// `--test-config`: the configuration is valid; report and exit.
    TestConfig(Config),
}

/// Why a configuration could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Bad command line. `--help` and `--version` also arrive here; callers
    /// should call [`clap::Error::exit`], which prints to the right stream
    /// and uses the right exit code for each case.
    #[error(transparent)]
    Cli(#[from] clap::Error),
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The config file is not valid TOML, or has an unknown key or a value of
    /// the wrong type; `message` names the key and line.
    #[error("invalid config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// A value is out of its allowed range; lists every offending key.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Parse from the process's arguments (`std::env::args_os`) and environment.
    pub fn from_env_args() -> Result<Command, ConfigError> {
        Self::from_args(std::env::args_os())
    }

    /// Parse from an explicit argv (`argv[0]` is the program name), reading
    /// the config file named by `-c` and `RINGMQ_*` environment variables.
    pub fn from_args<I, T>(argv: I) -> Result<Command, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let cli = Cli::try_parse_from(argv)?;
        let file = match &cli.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let test_config = cli.test_config;
        let config = cli.into_layer().over(file).resolve()?;
        config.validate()?;
        Ok(if test_config {
            Command::TestConfig(config)
        } else {
            Command::Run(config)
        })
    }

    /// Check every bound, reporting all violations at once (each naming its
    /// key and allowed range) so a broken config is fixed in one pass.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut check = Checker::default();
        self.check_runtime(&mut check);
        self.check_listeners(&mut check);
        self.check_open_listeners(&mut check);
        validate::check_limits(&self.limits, &mut check);
        check.finish()
    }

    /// Secure by default: with nothing that authenticates clients, a
    /// listener other machines can reach is a mistake to report, not a
    /// broker to start.
    fn check_open_listeners(&self, check: &mut Checker) {
        if !self.local_only {
            return;
        }
        for l in self.all_listeners() {
            if !l.bind.is_loopback() {
                check.fail(format!(
                    "listener {l} is reachable from other machines but nothing authenticates \
                     clients: set password_file (allow_anonymous then defaults to false), or \
                     allow_anonymous = true to accept anyone"
                ));
            }
        }
    }

    fn check_runtime(&self, check: &mut Checker) {
        check.range("cores", self.cores as u64, bounds::CORES);
        check.range(
            "persistence_fsync_interval",
            self.persistence_fsync_interval.as_secs(),
            1..=3600,
        );
        check.range(
            "ring_entries",
            self.ring_entries.into(),
            bounds::RING_ENTRIES,
        );
        if !self.ring_entries.is_power_of_two() {
            check.fail(format!(
                "ring_entries = {} must be a power of two (64, 128, ..., 32768)",
                self.ring_entries
            ));
        }
        check.range(
            "read_buffer_size",
            self.read_buffer_size as u64,
            bounds::READ_BUFFER,
        );
        // Only meaningful once max_packet_size itself is valid; otherwise
        // its own range error is the one to fix.
        let packet_size = u64::from(self.limits.max_packet_size);
        if bounds::MAX_PACKET_SIZE.contains(&packet_size)
            && self.read_buffer_size as u64 > packet_size
        {
            check.fail(format!(
                "read_buffer_size = {} must not exceed max_packet_size = {}",
                self.read_buffer_size, self.limits.max_packet_size
            ));
        }
        check.range(
            "mesh_queue_capacity",
            self.mesh_queue_capacity as u64,
            bounds::MESH_QUEUE,
        );
        check.range("mesh_budget", self.mesh_budget as u64, bounds::MESH_BUDGET);
        check.range(
            "busy_poll_us",
            self.busy_poll_us.into(),
            bounds::BUSY_POLL_US,
        );
        check.range(
            "write_coalesce_ms",
            self.write_coalesce_ms.into(),
            bounds::WRITE_COALESCE_MS,
        );
        check.range(
            "read_coalesce_ms",
            self.read_coalesce_ms.into(),
            bounds::READ_COALESCE_MS,
        );
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            check.fail(format!(
                "log_level = {:?} is not a valid filter: {e}",
                self.log_level
            ));
        }
    }
}

#[cfg(test)]
mod tests;

/// Fault switches for the store's file operations, compared by identity.
#[doc(hidden)]
#[derive(Clone, Debug)]
pub struct FaultHook(pub std::sync::Arc<crate::persist::Faults>);

impl PartialEq for FaultHook {
    fn eq(&self, other: &FaultHook) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for FaultHook {}
