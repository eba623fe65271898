//! From command-line flags to what a run does: [`Settings`] (how to load) and
//! [`Plan`] (which clients, in which roles, and which deliveries to expect).
//! Each scenario module only decides its defaults and its clients.

mod connections;
mod fan_in;
mod fan_out;
mod p2p;
mod storm;

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ringmq_proto::codec::{Protocol, QoS};
use serde::Serialize;

use crate::cli::{LoadArgs, ScenarioKind};
use crate::payload::HEADER_LEN;
use crate::stats::Routing;
use crate::transport::Transport;

/// A broker under test.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub name: String,
    pub address: SocketAddr,
    /// The host as given (a name or an address): TLS verifies it by default,
    /// WebSocket sends it as Host.
    #[serde(skip)]
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// What the broker publishes as `$SYS/broker/version` (plain TCP only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Where the subscribers were instead (`--subscribe-to`), for the report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribers_at: Option<SocketAddr>,
}

impl Target {
    pub fn resolve(name: &str, host_port: &str, pid: Option<u32>) -> Result<Target> {
        let address = host_port
            .to_socket_addrs()
            .with_context(|| format!("resolving {host_port}"))?
            .next()
            .with_context(|| format!("{host_port} has no address"))?;
        let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(Target {
            name: name.to_string(),
            address,
            host: host.to_string(),
            pid,
            version: None,
            subscribers_at: None,
        })
    }
}

/// How publishers pace themselves.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pace {
    /// `rate` messages per second per publisher on a fixed schedule.
    OpenLoop { rate: f64 },
    /// As fast as acknowledgements (QoS 1/2) or the socket (QoS 0) allow.
    MaxRate,
}

/// Everything about a run except who the clients are.
#[derive(Clone, Debug)]
pub struct Settings {
    pub scenario: ScenarioKind,
    pub target: Target,
    /// Where subscribing clients connect, when not to `target` (`--subscribe-to`).
    pub subscribe_at: Option<Target>,
    /// TCP, TLS, WebSocket or both; the same for every target.
    pub transport: Transport,
    pub protocol: Protocol,
    pub qos: QoS,
    pub payload_size: usize,
    pub keepalive: u16,
    pub clean: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    pub pace: Pace,
    pub inflight: u16,
    pub warmup: Duration,
    pub duration: Duration,
    pub drain: Duration,
    pub connect_rate: f64,
    pub connect_timeout: Duration,
    pub threads: usize,
    /// Random per run, in every payload and client id.
    pub run_id: u32,
    pub progress: bool,
}

impl Settings {
    pub fn new(kind: ScenarioKind, target: Target, args: &LoadArgs) -> Result<Settings> {
        validate(args)?;
        let transport = Transport::from_args(&args.transport)?;
        transport.check_host(&target.host)?;
        Ok(Settings {
            scenario: kind,
            target,
            subscribe_at: None,
            transport,
            protocol: protocol(args.protocol_version)?,
            qos: QoS::from_bits(args.qos).context("--qos must be 0, 1 or 2")?,
            payload_size: args.size,
            keepalive: args.keepalive,
            clean: args.clean,
            username: args.username.clone(),
            password: args.password.clone(),
            pace: if args.max_rate {
                Pace::MaxRate
            } else {
                Pace::OpenLoop { rate: args.rate }
            },
            inflight: args.inflight,
            warmup: seconds(args.warmup),
            duration: seconds(args.duration),
            drain: seconds(args.drain),
            connect_rate: args.connect_rate,
            connect_timeout: seconds(args.connect_timeout),
            threads: args.threads.unwrap_or_else(default_threads).max(1),
            run_id: new_run_id(),
            progress: !args.quiet,
        })
    }

    /// The broker a client connects to: subscribers go to `subscribe_at`
    /// where one is set.
    pub fn endpoint(&self, subscribes: bool) -> &Target {
        match &self.subscribe_at {
            Some(at) if subscribes => at,
            _ => &self.target,
        }
    }

    /// A fresh run id, for the next run of a comparison.
    pub fn for_target(&self, target: Target) -> Settings {
        Settings {
            target,
            run_id: new_run_id(),
            ..self.clone()
        }
    }
}

fn validate(args: &LoadArgs) -> Result<()> {
    if args.size < HEADER_LEN {
        bail!("--size must be at least {HEADER_LEN} bytes (publisher id, sequence, send time)");
    }
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a positive number of messages per second");
    }
    if !(args.connect_rate > 0.0 && args.connect_rate.is_finite()) {
        bail!("--connect-rate must be positive");
    }
    for (flag, v) in [
        ("--duration", args.duration),
        ("--warmup", args.warmup),
        ("--drain", args.drain),
        ("--connect-timeout", args.connect_timeout),
    ] {
        if !(v >= 0.0 && v.is_finite()) {
            bail!("{flag} must be a non-negative number of seconds");
        }
    }
    Ok(())
}

fn seconds(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn protocol(version: u8) -> Result<Protocol> {
    match version {
        3 => Ok(Protocol::V3_1),
        4 => Ok(Protocol::V3_1_1),
        5 => Ok(Protocol::V5),
        v => bail!("unknown protocol version {v}: use 3, 4 or 5"),
    }
}

/// One worker per core this process may run on (respects `taskset`).
fn default_threads() -> usize {
    core_affinity::get_core_ids().map_or(1, |ids| ids.len().max(1))
}

fn new_run_id() -> u32 {
    use std::hash::BuildHasher;
    let seed = (std::process::id(), std::time::SystemTime::now());
    std::collections::hash_map::RandomState::new().hash_one(seed) as u32
}

/// What one client does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Publisher {
        id: u32,
        topic: String,
    },
    Subscriber {
        id: u32,
        filter: String,
    },
    /// Subscribed to `filter` when there is one, then quiet.
    Idle {
        filter: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSpec {
    /// Unique in the run; the client id is derived from it.
    pub index: usize,
    pub role: Role,
}

/// The clients of a run and the deliveries it expects.
#[derive(Clone, Debug)]
pub struct Plan {
    pub clients: Vec<ClientSpec>,
    pub routing: Routing,
    pub publishers: u32,
    pub subscribers: u32,
    /// Storm: attempts in flight at most (no persistent clients).
    pub storm_concurrency: Option<usize>,
}

impl Plan {
    pub fn build(kind: ScenarioKind, args: &LoadArgs) -> Result<Plan> {
        match kind {
            ScenarioKind::P2p => p2p::plan(args),
            ScenarioKind::FanOut => fan_out::plan(args),
            ScenarioKind::FanIn => fan_in::plan(args),
            ScenarioKind::Connections => Ok(connections::plan(args)),
            ScenarioKind::Storm => Ok(storm::plan(args)),
        }
    }

    /// Subscribers first, so they are subscribed before anyone publishes.
    fn messaging(pubs: Vec<(u32, String)>, subs: Vec<(u32, String)>, routing: Routing) -> Plan {
        let (publishers, subscribers) = (pubs.len() as u32, subs.len() as u32);
        let roles = subs
            .into_iter()
            .map(|(id, filter)| Role::Subscriber { id, filter })
            .chain(
                pubs.into_iter()
                    .map(|(id, topic)| Role::Publisher { id, topic }),
            );
        Plan {
            clients: roles
                .enumerate()
                .map(|(index, role)| ClientSpec { index, role })
                .collect(),
            routing,
            publishers,
            subscribers,
            storm_concurrency: None,
        }
    }

    /// `pubs` publishers, publisher `i` on `pattern` with `%i` = `i`, and `subs`
    /// subscribers of the wildcard over all of them: every subscriber gets
    /// every message (fan-in and fan-out).
    fn all_to_all(pubs: u32, subs: u32, pattern: &str) -> Plan {
        let filter = wildcard(pattern);
        Plan::messaging(
            (0..pubs).map(|i| (i, topic_for(pattern, i))).collect(),
            (0..subs).map(|i| (i, filter.clone())).collect(),
            Routing::AllToAll,
        )
    }

    pub fn fanout(&self) -> u64 {
        self.routing.fanout(self.subscribers)
    }
}

/// `%i` replaced by `index` (emqtt-bench's convention).
fn topic_for(pattern: &str, index: u32) -> String {
    pattern.replace("%i", &index.to_string())
}

/// The filter that matches every publisher's topic of `pattern`.
fn wildcard(pattern: &str) -> String {
    pattern.replace("%i", "+")
}

fn count(flag: Option<usize>, fallback: Option<usize>, default: usize) -> Result<u32> {
    let n = flag.or(fallback).unwrap_or(default);
    if n == 0 {
        bail!("client counts must be at least 1");
    }
    u32::try_from(n).context("too many clients")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    pub(super) fn args(extra: &[&str]) -> LoadArgs {
        let argv = ["loadgen", "p2p"].iter().chain(extra);
        match Cli::parse_from(argv).command {
            Command::P2p(a) => a.load,
            _ => unreachable!(),
        }
    }

    #[test]
    fn topic_substitution() {
        assert_eq!(topic_for("a/%i/b", 7), "a/7/b");
        assert_eq!(wildcard("a/%i/b"), "a/+/b");
    }

    #[test]
    fn size_below_header_is_refused() {
        let t = Target::resolve("b", "127.0.0.1:1", None).unwrap();
        assert!(Settings::new(ScenarioKind::P2p, t.clone(), &args(&["-s", "10"])).is_err());
        let s = Settings::new(ScenarioKind::P2p, t, &args(&["-s", "24", "-V", "3"])).unwrap();
        assert_eq!(s.protocol, Protocol::V3_1);
    }
}
