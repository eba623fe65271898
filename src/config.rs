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

use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroUsize;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, ValueEnum};
use serde::{Deserialize, Deserializer};

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

/// How a shared subscription group picks the member that gets a message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
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

/// Resource caps. Each one bounds memory or work that a client (or all
/// clients together) could otherwise grow without limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest packet (fixed header included) accepted from a client, in bytes.
    pub max_packet_size: u32,
    /// Open client connections across the whole broker (all cores together).
    pub max_connections: usize,
    /// Unacknowledged outgoing QoS 1/2 messages per client (MQTT 5 Receive
    /// Maximum semantics).
    pub max_inflight_messages: u16,
    /// Messages queued per client behind the in-flight window.
    pub max_queued_messages: usize,
    /// Bytes queued per client behind the in-flight window.
    pub max_queued_bytes: usize,
    /// Unsent output bytes per connection. Past it, QoS 0 messages to that
    /// client are dropped (and counted) and QoS 1/2 wait in its session queue,
    /// so that one stalled reader cannot hold the broker's memory hostage.
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
            max_inflight_messages: 20,
            max_queued_messages: 1000,
            max_queued_bytes: 16 << 20,
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

/// The fully resolved, validated broker configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Address the MQTT listener binds to.
    pub bind: IpAddr,
    /// TCP port of the MQTT listener; 0 lets the kernel pick one (tests).
    pub port: u16,
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
    /// Whether clients without a username are accepted.
    pub allow_anonymous: bool,
    /// Log filter in `tracing_subscriber::EnvFilter` syntax.
    pub log_level: String,
    /// Interval between `$SYS` statistics publishes; zero disables them.
    pub sys_interval: Duration,
    /// How shared subscription groups pick a member.
    pub shared_strategy: SharedStrategy,
    /// Resource caps.
    pub limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 1883,
            cores: default_cores(),
            pin_cores: true,
            io_driver: IoDriver::Auto,
            ring_entries: 1024,
            read_buffer_size: 16 * 1024,
            mesh_queue_capacity: 1024,
            allow_anonymous: true,
            log_level: "info".to_owned(),
            sys_interval: Duration::from_secs(10),
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
        self.limits.check(&mut check);
        check.finish()
    }

    fn check_runtime(&self, check: &mut Checker) {
        check.range("cores", self.cores as u64, bounds::CORES);
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
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            check.fail(format!(
                "log_level = {:?} is not a valid filter: {e}",
                self.log_level
            ));
        }
    }
}

impl Limits {
    fn check(&self, check: &mut Checker) {
        use bounds::AT_LEAST_ONE;
        check.range(
            "max_packet_size",
            self.max_packet_size.into(),
            bounds::MAX_PACKET_SIZE,
        );
        check.range("max_connections", self.max_connections as u64, AT_LEAST_ONE);
        check.range(
            "max_inflight_messages",
            self.max_inflight_messages.into(),
            bounds::U16_NONZERO,
        );
        check.range(
            "max_queued_messages",
            self.max_queued_messages as u64,
            AT_LEAST_ONE,
        );
        check.range(
            "max_queued_bytes",
            self.max_queued_bytes as u64,
            AT_LEAST_ONE,
        );
        check.range(
            "max_write_buffer",
            self.max_write_buffer as u64,
            AT_LEAST_ONE,
        );
        check.range(
            "max_topic_levels",
            self.max_topic_levels as u64,
            bounds::TOPIC_LEVELS,
        );
        check.range(
            "max_client_id_len",
            self.max_client_id_len as u64,
            bounds::CLIENT_ID_LEN,
        );
        check.range(
            "connect_timeout",
            self.connect_timeout.as_secs(),
            AT_LEAST_ONE,
        );
        check.range(
            "max_keepalive",
            self.max_keepalive.into(),
            bounds::U16_NONZERO,
        );
        check.range(
            "max_awaiting_rel",
            self.max_awaiting_rel as u64,
            AT_LEAST_ONE,
        );
        check.range(
            "awaiting_rel_timeout",
            self.awaiting_rel_timeout.as_secs(),
            AT_LEAST_ONE,
        );
        check.range(
            "max_retained_messages",
            self.max_retained_messages as u64,
            AT_LEAST_ONE,
        );
        check.range(
            "max_retained_bytes",
            self.max_retained_bytes as u64,
            AT_LEAST_ONE,
        );
        check.range(
            "max_subscriptions_per_client",
            self.max_subscriptions_per_client as u64,
            AT_LEAST_ONE,
        );
        check.range(
            "persistent_client_expiration",
            u64::from(self.persistent_client_expiration),
            AT_LEAST_ONE,
        );
    }
}

/// Allowed ranges, shared by validation and by the narrowing of file/CLI
/// values into the config's field types.
mod bounds {
    use std::ops::RangeInclusive;

    pub const CORES: RangeInclusive<u64> = 1..=256;
    pub const RING_ENTRIES: RangeInclusive<u64> = 64..=32_768;
    /// A read buffer smaller than a fixed header plus a short topic would
    /// force a regrow on nearly every packet.
    pub const READ_BUFFER: RangeInclusive<u64> = 64..=268_435_455;
    pub const MESH_QUEUE: RangeInclusive<u64> = 1..=1 << 20;
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
struct Checker {
    errors: Vec<String>,
}

impl Checker {
    fn range(&mut self, key: &str, value: u64, allowed: RangeInclusive<u64>) {
        if !allowed.contains(&value) {
            self.fail(out_of_range(key, value, &allowed));
        }
    }

    fn fail(&mut self, message: String) {
        self.errors.push(message);
    }

    fn finish(self) -> Result<(), ConfigError> {
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
fn narrow<T: TryFrom<u64>>(
    key: &str,
    value: u64,
    allowed: RangeInclusive<u64>,
) -> Result<T, ConfigError> {
    T::try_from(value).map_err(|_| ConfigError::Invalid(out_of_range(key, value, &allowed)))
}

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

const LIMITS: &str = "Limits";

/// One configuration layer: every key optional, so "not given" stays
/// distinguishable from "given the default" until the layers are merged.
///
/// This is the TOML file's schema (unknown keys are rejected so a typo cannot
/// silently fall back to a default) and, flattened into [`Cli`], the set of
/// command-line flags and environment variables.
#[derive(Args, Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address to listen on (default 0.0.0.0, all IPv4 interfaces; use :: for IPv6)
    #[arg(
        long = "bind",
        alias = "bind-address",
        env = "RINGMQ_BIND_ADDRESS",
        value_name = "IP"
    )]
    pub bind_address: Option<IpAddr>,
    /// TCP port for MQTT (default 1883; 0 lets the kernel pick a free port)
    #[arg(short, long, env = "RINGMQ_PORT")]
    pub port: Option<u16>,
    /// Worker threads, one per core, each owning its connections (default: number of CPUs; 1..=256)
    #[arg(long, env = "RINGMQ_CORES", value_name = "N")]
    pub cores: Option<usize>,
    /// Pin each worker to its own CPU (default true; on the command line use --no-pin)
    #[arg(skip)]
    pub pin_cores: Option<bool>,
    /// I/O backend (default auto: io_uring if the kernel allows it, else epoll)
    #[arg(long, env = "RINGMQ_IO_DRIVER", value_name = "DRIVER")]
    pub io_driver: Option<IoDriver>,
    /// io_uring queue entries per core (default 1024; power of two 64..=32768; more absorbs bigger bursts)
    #[arg(long, env = "RINGMQ_RING_ENTRIES", value_name = "N")]
    pub ring_entries: Option<u32>,
    /// Largest read per connection (default 16KiB; a busy connection grows to it, an idle one shrinks back to 512 bytes)
    #[arg(
        long = "read-buffer",
        alias = "read-buffer-size",
        env = "RINGMQ_READ_BUFFER_SIZE",
        value_name = "BYTES"
    )]
    pub read_buffer_size: Option<ByteSize>,
    /// Batches buffered per core-to-core queue (default 1024; when full, the sending core waits for the receiver)
    #[arg(
        long = "mesh-queue",
        alias = "mesh-queue-capacity",
        env = "RINGMQ_MESH_QUEUE_CAPACITY",
        value_name = "N"
    )]
    pub mesh_queue_capacity: Option<usize>,
    /// Accept clients that send no username (default true; false refuses them as not authorized; there is no password file yet, so any username is accepted)
    #[arg(long, env = "RINGMQ_ALLOW_ANONYMOUS", value_name = "BOOL", action = ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_anonymous: Option<bool>,
    /// Log filter in tracing EnvFilter syntax, e.g. warn or info,ringmq=debug (default info)
    #[arg(long, env = "RINGMQ_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Seconds between $SYS statistics publishes (default 10; 0 disables $SYS)
    #[arg(long, env = "RINGMQ_SYS_INTERVAL", value_name = "SECS")]
    pub sys_interval: Option<u64>,

    /// Largest packet accepted (default 1MiB; a client sending a bigger one is disconnected; 64..=268435455)
    #[arg(long, env = "RINGMQ_MAX_PACKET_SIZE", value_name = "BYTES", help_heading = LIMITS)]
    pub max_packet_size: Option<ByteSize>,
    /// Open connections across the whole broker (default 100000; further connections are closed on accept)
    #[arg(long, env = "RINGMQ_MAX_CONNECTIONS", value_name = "N", help_heading = LIMITS)]
    pub max_connections: Option<usize>,
    /// Unacknowledged QoS 1/2 messages in flight per client (default 20; more wait in the client's queue)
    #[arg(long, env = "RINGMQ_MAX_INFLIGHT_MESSAGES", value_name = "N", help_heading = LIMITS)]
    pub max_inflight_messages: Option<u16>,
    /// Messages queued per client behind the in-flight window (default 1000; when full, new messages to it are dropped)
    #[arg(long, env = "RINGMQ_MAX_QUEUED_MESSAGES", value_name = "N", help_heading = LIMITS)]
    pub max_queued_messages: Option<usize>,
    /// Bytes queued per client behind the in-flight window (default 16MiB; when full, new messages to it are dropped)
    #[arg(long, env = "RINGMQ_MAX_QUEUED_BYTES", value_name = "BYTES", help_heading = LIMITS)]
    pub max_queued_bytes: Option<ByteSize>,
    /// Unsent output per connection (default 1MiB; past it QoS 0 to that client is dropped and counted, QoS 1/2 wait in its queue)
    #[arg(long, env = "RINGMQ_MAX_WRITE_BUFFER", value_name = "BYTES", help_heading = LIMITS)]
    pub max_write_buffer: Option<ByteSize>,
    /// Levels in a topic name or filter (default 128; deeper topics are rejected)
    #[arg(long, env = "RINGMQ_MAX_TOPIC_LEVELS", value_name = "N", help_heading = LIMITS)]
    pub max_topic_levels: Option<usize>,
    /// Longest client id in bytes (default 256; longer ids get CONNACK "identifier rejected"; 23..=65535)
    #[arg(long, env = "RINGMQ_MAX_CLIENT_ID_LEN", value_name = "BYTES", help_heading = LIMITS)]
    pub max_client_id_len: Option<usize>,
    /// Seconds a new connection has to send CONNECT (default 10; then it is closed)
    #[arg(long, env = "RINGMQ_CONNECT_TIMEOUT", value_name = "SECS", help_heading = LIMITS)]
    pub connect_timeout: Option<u64>,
    /// Largest keep-alive in seconds (default 65535 = no cap; v5 clients asking more are told this, v3 are refused)
    #[arg(long, env = "RINGMQ_MAX_KEEPALIVE", value_name = "SECS", help_heading = LIMITS)]
    pub max_keepalive: Option<u16>,
    /// QoS 2 messages per client awaiting PUBREL (default 100; a client exceeding it is disconnected)
    #[arg(long, env = "RINGMQ_MAX_AWAITING_REL", value_name = "N", help_heading = LIMITS)]
    pub max_awaiting_rel: Option<usize>,
    /// Seconds a QoS 2 message may await its PUBREL (default 300; then it is discarded)
    #[arg(long, env = "RINGMQ_AWAITING_REL_TIMEOUT", value_name = "SECS", help_heading = LIMITS)]
    pub awaiting_rel_timeout: Option<u64>,
    /// Retained messages stored broker-wide (default 1000000; beyond it new retained topics are not stored)
    #[arg(long, env = "RINGMQ_MAX_RETAINED_MESSAGES", value_name = "N", help_heading = LIMITS)]
    pub max_retained_messages: Option<usize>,
    /// Retained payload bytes stored broker-wide (default 256MiB; beyond it new retained topics are not stored)
    #[arg(long, env = "RINGMQ_MAX_RETAINED_BYTES", value_name = "BYTES", help_heading = LIMITS)]
    pub max_retained_bytes: Option<ByteSize>,
    /// Subscriptions per client (default 10000; further SUBSCRIBEs get a failure return code)
    #[arg(long, env = "RINGMQ_MAX_SUBSCRIPTIONS_PER_CLIENT", value_name = "N", help_heading = LIMITS)]
    pub max_subscriptions_per_client: Option<usize>,
    /// Topic aliases a 5.0 client may use when publishing (default 10; 0 disables; an alias beyond it closes the connection with 0x94)
    #[arg(long, env = "RINGMQ_MAX_TOPIC_ALIAS", value_name = "N", help_heading = LIMITS)]
    pub max_topic_alias: Option<u16>,
    /// Longest 5.0 session expiry interval honoured, in seconds (default 4294967295 = never expires; longer requests are capped and announced in CONNACK)
    #[arg(long, env = "RINGMQ_MAX_SESSION_EXPIRY", value_name = "SECS", help_heading = LIMITS)]
    pub max_session_expiry: Option<u32>,
    /// Seconds an offline 3.1.1 persistent session (clean session 0) is kept (default 4294967295 = forever, as Mosquitto; then it and its queue are discarded)
    #[arg(long, env = "RINGMQ_PERSISTENT_CLIENT_EXPIRATION", value_name = "SECS", help_heading = LIMITS)]
    pub persistent_client_expiration: Option<u32>,
    /// How a shared subscription group ($share/group/filter) picks the member for each message (default round-robin)
    #[arg(long, env = "RINGMQ_SHARED_STRATEGY", value_name = "STRATEGY")]
    pub shared_strategy: Option<SharedStrategy>,
}

/// Build a layer whose every field is `self.field.or(lower.field)`. A struct
/// literal is used so that adding a field without merging it fails to compile.
macro_rules! overlay {
    ($upper:ident, $lower:ident; $($field:ident),* $(,)?) => {
        FileConfig { $($field: $upper.$field.or($lower.$field)),* }
    };
}

impl FileConfig {
    /// Read and parse a TOML config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// This layer on top of `lower`: keys set here win.
    pub fn over(self, lower: FileConfig) -> FileConfig {
        overlay!(self, lower;
            bind_address, port, cores, pin_cores, io_driver, ring_entries, read_buffer_size,
            mesh_queue_capacity, allow_anonymous, log_level, sys_interval, max_packet_size,
            max_connections, max_inflight_messages, max_queued_messages, max_queued_bytes,
            max_write_buffer, max_topic_levels, max_client_id_len, connect_timeout, max_keepalive,
            max_awaiting_rel, awaiting_rel_timeout, max_retained_messages, max_retained_bytes,
            max_subscriptions_per_client, max_topic_alias, max_session_expiry,
            persistent_client_expiration, shared_strategy,
        )
    }

    /// Fill unset keys from the defaults and convert to the config's types.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let d = Config::default();
        let limits = self.resolve_limits(d.limits)?;
        Ok(Config {
            bind: self.bind_address.unwrap_or(d.bind),
            port: self.port.unwrap_or(d.port),
            cores: self.cores.unwrap_or(d.cores),
            pin_cores: self.pin_cores.unwrap_or(d.pin_cores),
            io_driver: self.io_driver.unwrap_or(d.io_driver),
            ring_entries: self.ring_entries.unwrap_or(d.ring_entries),
            read_buffer_size: size(
                "read_buffer_size",
                self.read_buffer_size,
                d.read_buffer_size,
            )?,
            mesh_queue_capacity: self.mesh_queue_capacity.unwrap_or(d.mesh_queue_capacity),
            allow_anonymous: self.allow_anonymous.unwrap_or(d.allow_anonymous),
            log_level: self.log_level.unwrap_or(d.log_level),
            sys_interval: secs(self.sys_interval, d.sys_interval),
            shared_strategy: self.shared_strategy.unwrap_or(d.shared_strategy),
            limits,
        })
    }

    fn resolve_limits(&self, d: Limits) -> Result<Limits, ConfigError> {
        let max_packet_size = match self.max_packet_size {
            Some(ByteSize(v)) => narrow("max_packet_size", v, bounds::MAX_PACKET_SIZE)?,
            None => d.max_packet_size,
        };
        Ok(Limits {
            max_packet_size,
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_inflight_messages: self
                .max_inflight_messages
                .unwrap_or(d.max_inflight_messages),
            max_queued_messages: self.max_queued_messages.unwrap_or(d.max_queued_messages),
            max_queued_bytes: size(
                "max_queued_bytes",
                self.max_queued_bytes,
                d.max_queued_bytes,
            )?,
            max_write_buffer: size(
                "max_write_buffer",
                self.max_write_buffer,
                d.max_write_buffer,
            )?,
            max_topic_levels: self.max_topic_levels.unwrap_or(d.max_topic_levels),
            max_client_id_len: self.max_client_id_len.unwrap_or(d.max_client_id_len),
            connect_timeout: secs(self.connect_timeout, d.connect_timeout),
            max_keepalive: self.max_keepalive.unwrap_or(d.max_keepalive),
            max_awaiting_rel: self.max_awaiting_rel.unwrap_or(d.max_awaiting_rel),
            awaiting_rel_timeout: secs(self.awaiting_rel_timeout, d.awaiting_rel_timeout),
            max_retained_messages: self
                .max_retained_messages
                .unwrap_or(d.max_retained_messages),
            max_retained_bytes: size(
                "max_retained_bytes",
                self.max_retained_bytes,
                d.max_retained_bytes,
            )?,
            max_subscriptions_per_client: self
                .max_subscriptions_per_client
                .unwrap_or(d.max_subscriptions_per_client),
            max_topic_alias: self.max_topic_alias.unwrap_or(d.max_topic_alias),
            max_session_expiry: self.max_session_expiry.unwrap_or(d.max_session_expiry),
            persistent_client_expiration: self
                .persistent_client_expiration
                .unwrap_or(d.persistent_client_expiration),
        })
    }
}

fn size(key: &str, value: Option<ByteSize>, default: usize) -> Result<usize, ConfigError> {
    value.map_or(Ok(default), |ByteSize(v)| {
        narrow(key, v, bounds::AT_LEAST_ONE)
    })
}

fn secs(value: Option<u64>, default: Duration) -> Duration {
    value.map_or(default, Duration::from_secs)
}

/// The command line. Settings live in the flattened [`FileConfig`]; the
/// fields here are about the invocation itself.
#[derive(Parser, Debug)]
#[command(
    name = "ringmq",
    version,
    about = "ringmq: a thread-per-core MQTT 3.1.1/5.0 broker on io_uring",
    long_about = "ringmq: a thread-per-core MQTT 3.1.1/5.0 broker on io_uring.\n\n\
        Each worker thread owns one CPU core, its own io_uring and its own connections; \
        cores exchange messages over bounded core-to-core queues instead of sharing locks.\n\n\
        Settings come from, lowest precedence first: built-in defaults, the TOML file given \
        with -c (keys are the long flag names with '_', see ringmq.example.toml), RINGMQ_* \
        environment variables, and command-line flags. Sizes take bytes or a KiB/MiB/GiB \
        suffix; durations are whole seconds."
)]
pub struct Cli {
    /// TOML config file; its keys are the long flag names with '_' (default: none)
    #[arg(short = 'c', long, env = "RINGMQ_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Do not pin worker threads to CPUs (default: pinned; use when sharing the machine)
    #[arg(long, env = "RINGMQ_NO_PIN", action = ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub no_pin: bool,
    /// Validate the configuration and exit instead of starting (default: off)
    #[arg(long)]
    pub test_config: bool,
    #[command(flatten)]
    pub settings: FileConfig,
}

impl Cli {
    /// The settings given by flags and environment, as one layer.
    fn into_layer(self) -> FileConfig {
        let mut layer = self.settings;
        if self.no_pin {
            layer.pin_cores = Some(false);
        }
        layer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_help_states_its_default() {
        let cmd = Cli::command();
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            assert!(
                help.contains("default"),
                "help for {id} lacks its default: {help:?}"
            );
        }
    }

    #[test]
    fn defaults_are_valid() {
        Config::default()
            .validate()
            .expect("defaults must validate");
        assert!((1..=256).contains(&Config::default().cores));
    }

    #[test]
    fn byte_sizes_parse_with_and_without_suffix() {
        let parse = |s: &str| s.parse::<ByteSize>().map(|b| b.0);
        assert_eq!(parse("1048576"), Ok(1 << 20));
        assert_eq!(parse("1_048_576"), Ok(1 << 20));
        assert_eq!(parse("64KiB"), Ok(64 << 10));
        assert_eq!(parse("1 MiB"), Ok(1 << 20));
        assert_eq!(parse("2g"), Ok(2 << 30));
        assert!(parse("1MB").is_err());
        assert!(parse("").is_err());
        assert!(parse("-5").is_err());
        assert!(parse("99999999999999999999GiB").is_err());
    }

    #[test]
    fn toml_sizes_accept_integers_and_strings() {
        let file: FileConfig =
            toml::from_str("max_packet_size = 4096\nmax_queued_bytes = \"2MiB\"").expect("parse");
        assert_eq!(file.max_packet_size, Some(ByteSize(4096)));
        assert_eq!(file.max_queued_bytes, Some(ByteSize(2 << 20)));
        assert!(toml::from_str::<FileConfig>("max_write_buffer = -1").is_err());
    }

    #[test]
    fn io_driver_accepts_both_spellings() {
        for name in ["io-uring", "iouring"] {
            let file: FileConfig = toml::from_str(&format!("io_driver = {name:?}")).expect("parse");
            assert_eq!(file.io_driver, Some(IoDriver::IoUring));
            assert_eq!(IoDriver::from_str(name, false), Ok(IoDriver::IoUring));
        }
    }

    #[test]
    fn upper_layer_wins_key_by_key() {
        let upper = FileConfig {
            port: Some(1),
            ..FileConfig::default()
        };
        let lower = FileConfig {
            port: Some(2),
            cores: Some(3),
            ..FileConfig::default()
        };
        let merged = upper.over(lower);
        assert_eq!((merged.port, merged.cores), (Some(1), Some(3)));
    }

    #[test]
    fn validation_reports_every_violation() {
        let mut config = Config {
            cores: 0,
            ring_entries: 100,
            ..Config::default()
        };
        config.limits.max_inflight_messages = 0;
        let message = config.validate().expect_err("invalid").to_string();
        for key in ["cores", "ring_entries", "max_inflight_messages"] {
            assert!(message.contains(key), "{key} missing from {message}");
        }
    }

    #[test]
    fn read_buffer_may_not_exceed_max_packet_size() {
        let mut config = Config::default();
        config.limits.max_packet_size = 1024;
        let message = config.validate().expect_err("invalid").to_string();
        assert!(message.contains("read_buffer_size") && message.contains("max_packet_size"));
    }

    #[test]
    fn oversized_packet_size_names_key_and_range() {
        let layer = FileConfig {
            max_packet_size: Some(ByteSize(1 << 40)),
            ..FileConfig::default()
        };
        let message = layer.resolve().expect_err("too big").to_string();
        assert!(
            message.contains("max_packet_size") && message.contains("64..=268435455"),
            "{message}"
        );
    }

    #[test]
    fn bad_log_filter_is_rejected() {
        let config = Config {
            log_level: "info,ringmq=loud".to_owned(),
            ..Config::default()
        };
        assert!(config
            .validate()
            .expect_err("invalid")
            .to_string()
            .contains("log_level"));
    }
}
