//! The layers: the TOML file and the command line share one struct of optional
//! keys, merged over the defaults.

use std::path::Path;

use clap::builder::TypedValueParser as _;
use clap::{ArgAction, Args, Parser};
use serde::Deserialize;

use super::validate::{bounds, narrow};
use super::*;

const LIMITS: &str = "Limits";
const LISTENERS: &str = "Listeners";
const SECURITY: &str = "Security";
const PERSISTENCE: &str = "Persistence";

/// One configuration layer: every key optional, so "not given" stays
/// distinguishable from "given the default" until the layers are merged.
///
/// This is the TOML file's schema (unknown keys are rejected so a typo cannot
/// silently fall back to a default) and, flattened into [`Cli`], the set of
/// command-line flags and environment variables.
#[derive(Args, Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address to listen on (default 127.0.0.1 unless password_file or allow_anonymous is set, then 0.0.0.0, all IPv4 interfaces; use :: for IPv6)
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
    /// Bytes of messages one core may have sent another that it has not handled yet (default 4MiB); past it the sender's publishers wait, which bounds what a hold lets through
    #[arg(long = "mesh-budget", env = "RINGMQ_MESH_BUDGET", value_name = "BYTES")]
    pub mesh_budget: Option<ByteSize>,
    /// Microseconds each core keeps polling for work after its last input before it sleeps (default 0: sleep at once; up to 1000). Saves the wake-up on the next packet at the cost of a busy CPU; for latency-critical deployments with cores to spare
    #[arg(long = "busy-poll-us", env = "RINGMQ_BUSY_POLL_US", value_name = "US")]
    pub busy_poll_us: Option<u32>,
    /// Period in milliseconds of the writes of a connection whose output keeps coming (two writes in a row ended with more waiting): after each write its writer waits for the core's next coalescing tick, every MS, so what comes meanwhile goes in one write (default 0: write at once; up to 10). Cuts the CPU per delivery of a busy stream at high fixed rates, at up to this much more latency; a connection with nothing left to send is written at once next time, so light traffic and a client that waits for each answer are not delayed
    #[arg(
        long = "write-coalesce-ms",
        env = "RINGMQ_WRITE_COALESCE_MS",
        value_name = "MS"
    )]
    pub write_coalesce_ms: Option<u32>,
    /// Period in milliseconds of the reads of a connection whose input keeps coming (two reads in a row brought more than one packet): before each read its reader waits for the core's next coalescing tick, every MS, so what comes meanwhile arrives in one read (default 0: read at once; up to 10). Cuts the CPU per message of busy publishers (a fan-in) at high fixed rates, at up to this much more latency; a read after a wait that brings at most one packet ends the waiting, so a client that sends one packet at a time and waits for the answer is never delayed
    #[arg(
        long = "read-coalesce-ms",
        env = "RINGMQ_READ_COALESCE_MS",
        value_name = "MS"
    )]
    pub read_coalesce_ms: Option<u32>,
    /// Let the allocator back memory with transparent huge pages (default false: each first touch of a 2 MiB page zeroes it inside the core that touched it, milliseconds every client on the core waits, and khugepaged later grows the RSS; true: a few per cent more throughput at maximum rate)
    #[arg(long, env = "RINGMQ_TRANSPARENT_HUGE_PAGES", value_name = "BOOL", action = ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub transparent_huge_pages: Option<bool>,
    /// Accept clients that send no username (default false with a password_file, else true on loopback only; setting it explicitly allows listening on other addresses without a password file)
    #[arg(long, env = "RINGMQ_ALLOW_ANONYMOUS", value_name = "BOOL", action = ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new(), help_heading = SECURITY)]
    pub allow_anonymous: Option<bool>,
    /// Keep persistent sessions, their queued QoS 1/2 messages and retained messages across restarts, in persistence_location (default true; false keeps everything in memory only)
    #[arg(long, env = "RINGMQ_PERSISTENCE", value_name = "BOOL", action = ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new(), help_heading = PERSISTENCE)]
    pub persistence: Option<bool>,
    /// Directory of the store, one subdirectory per core (default ringmq-data, relative to the working directory)
    #[arg(long, env = "RINGMQ_PERSISTENCE_LOCATION", value_name = "DIR", help_heading = PERSISTENCE)]
    pub persistence_location: Option<PathBuf>,
    /// When the store reaches the disk (default periodic: fdatasync every persistence_fsync_interval; always: a QoS 1/2 PUBLISH is acknowledged only once it is on disk)
    #[arg(long, env = "RINGMQ_PERSISTENCE_FSYNC", value_name = "MODE", help_heading = PERSISTENCE)]
    pub persistence_fsync: Option<FsyncMode>,
    /// Seconds between fdatasyncs of the store in periodic mode (default 1; a kill -9 loses nothing, a power cut at most this)
    #[arg(long, env = "RINGMQ_PERSISTENCE_FSYNC_INTERVAL", value_name = "SECS", help_heading = PERSISTENCE)]
    pub persistence_fsync_interval: Option<u64>,
    /// Users and password hashes in Mosquitto's format ($7$, $6$ or argon2id; write it with `ringmq passwd`); re-read on SIGHUP (default: none)
    #[arg(long, env = "RINGMQ_PASSWORD_FILE", value_name = "FILE", help_heading = SECURITY)]
    pub password_file: Option<PathBuf>,
    /// Who may publish and subscribe where, in Mosquitto's acl_file format; re-read on SIGHUP (default: none, every client may use every topic)
    #[arg(long, env = "RINGMQ_ACL_FILE", value_name = "FILE", help_heading = SECURITY)]
    pub acl_file: Option<PathBuf>,
    /// Log filter in tracing EnvFilter syntax, e.g. warn or info,ringmq=debug (default info)
    #[arg(long, env = "RINGMQ_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log lines as text (colours only on a terminal) or json, one object per line (default text)
    #[arg(long, env = "RINGMQ_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Seconds between $SYS statistics publishes (default 10; 0 disables $SYS)
    #[arg(long, env = "RINGMQ_SYS_INTERVAL", value_name = "SECS")]
    pub sys_interval: Option<u64>,
    /// TCP port serving Prometheus metrics at GET /metrics (default: none, off)
    #[arg(long, env = "RINGMQ_METRICS_PORT", value_name = "PORT")]
    pub metrics_port: Option<u16>,
    /// Address the metrics port binds to (default 127.0.0.1: only this machine may scrape)
    #[arg(long, env = "RINGMQ_METRICS_BIND_ADDRESS", value_name = "IP")]
    pub metrics_bind_address: Option<IpAddr>,

    /// Largest packet accepted (default 1MiB; a client sending a bigger one is disconnected; 64..=268435455)
    #[arg(long, env = "RINGMQ_MAX_PACKET_SIZE", value_name = "BYTES", help_heading = LIMITS)]
    pub max_packet_size: Option<ByteSize>,
    /// Open connections across the whole broker (default 100000; further connections are closed on accept)
    #[arg(long, env = "RINGMQ_MAX_CONNECTIONS", value_name = "N", help_heading = LIMITS)]
    pub max_connections: Option<usize>,
    /// Open connections from one IP address (default 0: no limit; more get CONNACK "quota exceeded")
    #[arg(long, env = "RINGMQ_MAX_CONNECTIONS_PER_IP", value_name = "N", help_heading = LIMITS)]
    pub max_connections_per_ip: Option<usize>,
    /// New connections per second on each listener (default 0: no limit; more get CONNACK "connection rate exceeded" in 5.0, "server unavailable" in 3.1.1)
    #[arg(long, env = "RINGMQ_MAX_CONNECTION_RATE", value_name = "N", help_heading = LIMITS)]
    pub max_connection_rate: Option<u32>,
    /// Unacknowledged QoS 1/2 messages in flight per client (default 20; more wait in the client's queue)
    #[arg(long, env = "RINGMQ_MAX_INFLIGHT_MESSAGES", value_name = "N", help_heading = LIMITS)]
    pub max_inflight_messages: Option<u16>,
    /// Messages queued per client behind the in-flight window (default 1000; when full, new messages to it are dropped)
    #[arg(long, env = "RINGMQ_MAX_QUEUED_MESSAGES", value_name = "N", help_heading = LIMITS)]
    pub max_queued_messages: Option<usize>,
    /// Bytes queued per client behind the in-flight window (default 16MiB; when full, new messages to it are dropped)
    #[arg(long, env = "RINGMQ_MAX_QUEUED_BYTES", value_name = "BYTES", help_heading = LIMITS)]
    pub max_queued_bytes: Option<ByteSize>,
    /// Unsent output per connection (default 1MiB; past it QoS 0 to that client holds its publishers back, or with --slow-consumer-policy drop is dropped and counted; QoS 1/2 wait in its queue)
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
    /// A connected client's full queue or output buffer (default backpressure: its publishers are not read until it drains, nothing acknowledged is dropped; drop: what is past the caps is dropped and counted)
    #[arg(long, env = "RINGMQ_SLOW_CONSUMER_POLICY", value_name = "POLICY", value_parser = slow_consumer_policy_parser(), help_heading = LIMITS)]
    pub slow_consumer_policy: Option<SlowConsumerPolicy>,
    /// Seconds a client may hold its publishers back without reading before it is disconnected as a slow consumer (default 10)
    #[arg(long, env = "RINGMQ_MAX_STALL", value_name = "SECS", help_heading = LIMITS)]
    pub max_stall: Option<u64>,
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
    /// TCP port of an MQTT-over-TLS listener on the bind address, using certfile/keyfile (default: none; 8883 is the usual one)
    #[arg(long, env = "RINGMQ_TLS_PORT", value_name = "PORT", help_heading = LISTENERS)]
    pub tls_port: Option<u16>,
    /// TCP port of an MQTT-over-WebSocket listener (ws://HOST:PORT/mqtt) on the bind address (default: none)
    #[arg(long, env = "RINGMQ_WS_PORT", value_name = "PORT", help_heading = LISTENERS)]
    pub ws_port: Option<u16>,
    /// TCP port of a secure WebSocket listener (wss://HOST:PORT/mqtt), using certfile/keyfile (default: none)
    #[arg(long, env = "RINGMQ_WSS_PORT", value_name = "PORT", help_heading = LISTENERS)]
    pub wss_port: Option<u16>,
    /// PEM certificate chain for --tls-port/--wss-port, the server's certificate first (default: none)
    #[arg(long, env = "RINGMQ_CERTFILE", value_name = "FILE", help_heading = LISTENERS)]
    pub certfile: Option<PathBuf>,
    /// PEM private key of certfile (default: none; re-read with the certificate on SIGHUP)
    #[arg(long, env = "RINGMQ_KEYFILE", value_name = "FILE", help_heading = LISTENERS)]
    pub keyfile: Option<PathBuf>,
    /// PEM certificates of the CAs that sign client certificates (default: none)
    #[arg(long, env = "RINGMQ_CAFILE", value_name = "FILE", help_heading = LISTENERS)]
    pub cafile: Option<PathBuf>,
    /// Mutual TLS: refuse clients without a certificate signed by cafile (default false)
    #[arg(long, env = "RINGMQ_REQUIRE_CERTIFICATE", value_name = "BOOL", action = ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new(), help_heading = LISTENERS)]
    pub require_certificate: Option<bool>,
    /// The client certificate's Common Name becomes the username (default false; needs require_certificate)
    #[arg(long, env = "RINGMQ_USE_IDENTITY_AS_USERNAME", value_name = "BOOL", action = ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new(), help_heading = LISTENERS)]
    pub use_identity_as_username: Option<bool>,
    /// Oldest TLS version accepted: tlsv1.2 or tlsv1.3 (default tlsv1.2)
    #[arg(long, env = "RINGMQ_TLS_VERSION", value_name = "VERSION", help_heading = LISTENERS)]
    pub tls_version: Option<TlsVersion>,
    /// Further listeners, as `[[listener]]` tables in the config file (default: none)
    #[arg(skip)]
    pub listener: Option<Vec<ListenerFile>>,
    /// Links to other brokers, as `[[bridge]]` tables in the config file (default: none)
    #[arg(skip)]
    pub bridge: Option<Vec<BridgeFile>>,
    /// This broker as a node of a cluster over NATS, as a `[cluster]` table in the config file (default: none)
    #[arg(skip)]
    pub cluster: Option<ClusterFile>,
    /// How a shared subscription group ($share/group/filter) picks the member for each message (default round-robin)
    #[arg(long, env = "RINGMQ_SHARED_STRATEGY", value_name = "STRATEGY", value_parser = shared_strategy_parser())]
    pub shared_strategy: Option<SharedStrategy>,
}

/// `--slow-consumer-policy`: the core's names.
fn slow_consumer_policy_parser() -> impl clap::builder::TypedValueParser<Value = SlowConsumerPolicy>
{
    clap::builder::PossibleValuesParser::new(SlowConsumerPolicy::NAMES)
        .try_map(|name| name.parse::<SlowConsumerPolicy>())
}

/// `--shared-strategy`: the core's names, listed in `--help` and in errors.
fn shared_strategy_parser() -> impl clap::builder::TypedValueParser<Value = SharedStrategy> {
    clap::builder::PossibleValuesParser::new(SharedStrategy::NAMES)
        .try_map(|name| name.parse::<SharedStrategy>())
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
            mesh_queue_capacity, mesh_budget, busy_poll_us, write_coalesce_ms, read_coalesce_ms, transparent_huge_pages, allow_anonymous, log_level, log_format, sys_interval, metrics_port,
            metrics_bind_address, max_packet_size,
            max_connections, max_connections_per_ip, max_connection_rate, max_inflight_messages, max_queued_messages, max_queued_bytes,
            max_write_buffer, max_topic_levels, max_client_id_len, connect_timeout, max_keepalive,
            max_awaiting_rel, awaiting_rel_timeout, slow_consumer_policy, max_stall,
            max_retained_messages, max_retained_bytes,
            max_subscriptions_per_client, max_topic_alias, max_session_expiry,
            persistent_client_expiration, shared_strategy, tls_port, ws_port, wss_port, certfile,
            keyfile, cafile, require_certificate, use_identity_as_username, tls_version, listener,
            bridge, cluster, password_file, acl_file, persistence, persistence_location, persistence_fsync,
            persistence_fsync_interval,
        )
    }

    /// Fill unset keys from the defaults and convert to the config's types.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let d = Config::default();
        let limits = self.resolve_limits(d.limits)?;
        // Secure by default, as Mosquitto 2: nothing authenticates clients
        // unless a password file or an explicit allow_anonymous says so, and
        // then only this machine may connect.
        let local_only = self.password_file.is_none() && self.allow_anonymous.is_none();
        let bind = match self.bind_address {
            Some(bind) => bind,
            None if local_only => d.bind,
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let metrics = self.metrics_address()?;
        let config = Config {
            default_listener: self.default_listener(),
            listeners: self.resolve_listeners(bind)?,
            bridges: self.resolve_bridges()?,
            cluster: self
                .cluster
                .as_ref()
                .map(ClusterFile::resolve)
                .transpose()?,
            bind,
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
            mesh_budget: size("mesh_budget", self.mesh_budget, d.mesh_budget)?,
            busy_poll_us: self.busy_poll_us.unwrap_or(d.busy_poll_us),
            write_coalesce_ms: self.write_coalesce_ms.unwrap_or(d.write_coalesce_ms),
            read_coalesce_ms: self.read_coalesce_ms.unwrap_or(d.read_coalesce_ms),
            transparent_huge_pages: self
                .transparent_huge_pages
                .unwrap_or(d.transparent_huge_pages),
            allow_anonymous: self.allow_anonymous.unwrap_or(self.password_file.is_none()),
            local_only,
            password_file: self.password_file,
            acl_file: self.acl_file,
            persistence: self.persistence.unwrap_or(d.persistence),
            persistence_location: self.persistence_location.unwrap_or(d.persistence_location),
            persistence_fsync: self.persistence_fsync.unwrap_or(d.persistence_fsync),
            persistence_fsync_interval: secs(
                self.persistence_fsync_interval,
                d.persistence_fsync_interval,
            ),
            persistence_faults: None,
            log_level: self.log_level.unwrap_or(d.log_level),
            log_format: self.log_format.unwrap_or(d.log_format),
            sys_interval: secs(self.sys_interval, d.sys_interval),
            metrics,
            shared_strategy: self.shared_strategy.unwrap_or(d.shared_strategy),
            limits,
        };
        Ok(config)
    }

    /// `metrics_port` on `metrics_bind_address` (loopback unless given).
    fn metrics_address(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let bind = self.metrics_bind_address;
        match self.metrics_port {
            Some(port) => Ok(Some(SocketAddr::new(
                bind.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                port,
            ))),
            None if bind.is_some() => Err(ConfigError::Invalid(
                "metrics_bind_address is set but metrics_port is not".to_owned(),
            )),
            None => Ok(None),
        }
    }

    fn resolve_limits(&self, d: Limits) -> Result<Limits, ConfigError> {
        let max_packet_size = match self.max_packet_size {
            Some(ByteSize(v)) => narrow("max_packet_size", v, bounds::MAX_PACKET_SIZE)?,
            None => d.max_packet_size,
        };
        Ok(Limits {
            max_packet_size,
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_connections_per_ip: self
                .max_connections_per_ip
                .unwrap_or(d.max_connections_per_ip),
            max_connection_rate: self.max_connection_rate.unwrap_or(d.max_connection_rate),
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
            slow_consumer_policy: self.slow_consumer_policy.unwrap_or(d.slow_consumer_policy),
            max_stall: secs(self.max_stall, d.max_stall),
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
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("RINGMQ_GIT_COMMIT"), ")"),
    about = "ringmq: a thread-per-core MQTT 3.1, 3.1.1 and 5.0 broker on io_uring",
    long_about = "ringmq: a thread-per-core MQTT 3.1, 3.1.1 and 5.0 broker on io_uring.\n\n\
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
    pub(super) fn into_layer(self) -> FileConfig {
        let mut layer = self.settings;
        if self.no_pin {
            layer.pin_cores = Some(false);
        }
        layer
    }
}
