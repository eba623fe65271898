//! Command line: one subcommand per scenario, plus `compare`. Flag names follow
//! emqtt-bench where the two overlap (-c, -t with %i, -s, -k, -C, -V, --qos).

use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    about = "Open-loop MQTT load generator: latency without coordinated omission, loss per \
             publisher/subscriber pair, broker CPU and memory per message",
    after_help = "Examples:\n  loadgen p2p --port 1883 -c 50 --rate 1000 --qos 1\n  \
                  loadgen fan-out --subscribers 100 --max-rate --json out.json --svg out.svg\n  \
                  loadgen connections -c 10000 --connect-rate 2000 --broker-pid $(pidof ringmq)\n  \
                  loadgen p2p --tls --cafile ca.pem --port 8883\n  \
                  loadgen storm --tls --insecure --ws --port 8443 --connect-rate 500\n  \
                  loadgen compare p2p --target ringmq=127.0.0.1:1883 \
                  --target mosquitto=127.0.0.1:1884 --rounds 2"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// N pairs: publisher i -> subscriber i, one topic per pair (-c pairs, default 10).
    P2p(SingleArgs),
    /// Few publishers (--publishers, default 1) -> N subscribers of one topic (default 100).
    FanOut(SingleArgs),
    /// N publishers (default 8) -> 1 subscriber on a wildcard filter.
    FanIn(SingleArgs),
    /// Open N idle clients (default 1000) at --connect-rate and hold them for --duration;
    /// with --topic each subscribes to it first (%i: the client's index).
    Connections(SingleArgs),
    /// Connect/disconnect churn at --connect-rate, at most -c attempts in flight.
    Storm(SingleArgs),
    /// The same scenario against several brokers, alternating runs; one table, one chart.
    Compare(CompareArgs),
}

/// The named scenarios, for `compare <scenario>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScenarioKind {
    P2p,
    FanOut,
    FanIn,
    Connections,
    Storm,
}

impl ScenarioKind {
    pub fn name(self) -> &'static str {
        match self {
            ScenarioKind::P2p => "p2p",
            ScenarioKind::FanOut => "fan-out",
            ScenarioKind::FanIn => "fan-in",
            ScenarioKind::Connections => "connections",
            ScenarioKind::Storm => "storm",
        }
    }

    /// Scenarios that publish messages (the others only connect).
    pub fn has_messages(self) -> bool {
        matches!(
            self,
            ScenarioKind::P2p | ScenarioKind::FanOut | ScenarioKind::FanIn
        )
    }
}

#[derive(Args, Debug, Clone)]
pub struct SingleArgs {
    /// Broker host name or address.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker port.
    #[arg(short, long, default_value_t = 1883)]
    pub port: u16,
    /// The broker's process id: report its CPU per message and its memory.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Name of the broker in reports.
    #[arg(long, default_value = "broker")]
    pub name: String,
    /// Subscribers connect to this broker (HOST:PORT) instead: measures the
    /// path across a bridge or a cluster, publishers staying on --host.
    #[arg(long, value_name = "HOST:PORT")]
    pub subscribe_to: Option<String>,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// Scenario to run against every target.
    #[arg(value_enum)]
    pub scenario: ScenarioKind,
    /// A broker to measure, as NAME=HOST:PORT; repeat for each (ratios are against the first).
    #[arg(long = "target", required = true, value_name = "NAME=HOST:PORT")]
    pub targets: Vec<Named<String>>,
    /// A broker's process id, as NAME=PID.
    #[arg(long = "broker-pid", value_name = "NAME=PID")]
    pub broker_pids: Vec<Named<u32>>,
    /// Runs per target; targets alternate within each round.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Seconds to pause between runs so the previous broker settles.
    #[arg(long, default_value_t = 1.0)]
    pub pause: f64,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// Load shape and output flags common to every scenario.
#[derive(Args, Debug, Clone, Serialize)]
pub struct LoadArgs {
    /// Clients: pairs (p2p), subscribers (fan-out), publishers (fan-in), idle
    /// clients (connections), attempts in flight (storm).
    #[arg(short = 'c', long)]
    pub clients: Option<usize>,
    /// Publishers (overrides -c where the scenario has several kinds of client).
    #[arg(long)]
    pub publishers: Option<usize>,
    /// Subscribers (overrides -c where the scenario has several kinds of client).
    #[arg(long)]
    pub subscribers: Option<usize>,
    /// Quality of service of publishes and subscriptions.
    #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Messages per second per publisher, open loop (the default mode).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Closed loop: publish as fast as the broker acknowledges (QoS 1/2) or the
    /// socket accepts (QoS 0), with at most --inflight unacknowledged messages.
    #[arg(long)]
    pub max_rate: bool,
    /// Unacknowledged QoS 1/2 publishes allowed per publisher.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: u16,
    /// Measured seconds (after --warmup).
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring; excluded from the statistics.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// At most this many seconds waiting for in-flight messages after the last send.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Topic; %i is replaced by the publisher's (p2p: the pair's) index.
    #[arg(short = 't', long)]
    pub topic: Option<String>,
    /// Payload bytes (at least 24, the generator's header).
    #[arg(short = 's', long, default_value_t = 64)]
    pub size: usize,
    /// MQTT keep-alive in seconds (0: none).
    #[arg(short = 'k', long, default_value_t = 300)]
    pub keepalive: u16,
    /// Clean session / clean start.
    #[arg(short = 'C', long, default_value_t = true, action = clap::ArgAction::Set)]
    pub clean: bool,
    /// MQTT protocol version: 3 (3.1), 4 (3.1.1) or 5 (5.0).
    #[arg(short = 'V', long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(3..=5))]
    pub protocol_version: u8,
    /// Worker threads, each a pinned monoio runtime (default: all allowed cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// New connections per second, over all threads.
    #[arg(long, default_value_t = 1000.0)]
    pub connect_rate: f64,
    /// Seconds a connect (TCP + CONNACK + SUBACK) may take before it counts as failed.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// MQTT user name sent in CONNECT.
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// MQTT password sent in CONNECT.
    #[arg(short = 'P', long)]
    #[serde(skip)]
    pub password: Option<String>,
    /// Write the summary (config, machine, totals, percentiles) as JSON.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub json: Option<PathBuf>,
    /// Write an SVG percentile-distribution chart.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub svg: Option<PathBuf>,
    /// Write the latency histogram as HdrHistogram percentile-distribution text.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub hdr: Option<PathBuf>,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    #[serde(skip)]
    pub transport: TransportArgs,
}

/// How connections reach the broker: plain TCP (the default), TLS, WebSocket,
/// or both (secure WebSocket). Applies to every target of a run.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Transport")]
pub struct TransportArgs {
    /// MQTT over TLS (1.2 or 1.3); with --ws, secure WebSocket (wss). The broker's
    /// certificate is checked against --cafile, or not at all with --insecure.
    /// Every connection makes a full handshake (no session resumption), timed
    /// as part of the connect time.
    #[arg(long)]
    pub tls: bool,
    /// PEM file of the CA certificates to verify the broker's certificate with.
    #[arg(long, value_name = "PATH", requires = "tls")]
    pub cafile: Option<PathBuf>,
    /// INSECURE: accept any broker certificate, for any name, without checking it
    /// (for benchmarks against self-signed certificates; anyone in the path can
    /// read and change the traffic).
    #[arg(long, requires = "tls", conflicts_with = "cafile")]
    pub insecure: bool,
    /// Client certificate chain (PEM), for mutual TLS; with --key.
    #[arg(long, value_name = "PATH", requires = "tls", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key of --cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PATH", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Name the broker's certificate must be valid for, also sent as SNI
    /// (default: the target's host, a DNS name or an IP address).
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub server_name: Option<String>,
    /// MQTT over WebSocket (RFC 6455: HTTP/1.1 upgrade, subprotocol "mqtt",
    /// binary frames); with --tls, secure WebSocket (wss).
    #[arg(long)]
    pub ws: bool,
    /// Path of the WebSocket upgrade request.
    #[arg(long, value_name = "PATH", default_value = "/mqtt", requires = "ws")]
    pub ws_path: String,
}

/// `NAME=VALUE`, for --target and compare's --broker-pid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named<T> {
    pub name: String,
    pub value: T,
}

impl<T: FromStr> FromStr for Named<T>
where
    T::Err: std::fmt::Display,
{
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, value) = s
            .split_once('=')
            .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
        if name.is_empty() {
            return Err(format!("empty name in {s:?}"));
        }
        let value = value.parse().map_err(|e| format!("{s:?}: {e}"))?;
        Ok(Named {
            name: name.to_string(),
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn compare_parses_targets_and_pids() {
        let cli = Cli::try_parse_from([
            "loadgen",
            "compare",
            "p2p",
            "--target",
            "ringmq=127.0.0.1:1883",
            "--target",
            "mosquitto=127.0.0.1:1884",
            "--broker-pid",
            "ringmq=42",
            "--qos",
            "1",
        ])
        .unwrap();
        let Command::Compare(args) = cli.command else {
            panic!("not compare")
        };
        assert_eq!(args.scenario, ScenarioKind::P2p);
        assert_eq!(args.targets[1].name, "mosquitto");
        assert_eq!(args.broker_pids[0].value, 42);
        assert_eq!(args.load.qos, 1);
    }

    #[test]
    fn bad_named_value_is_rejected() {
        assert!("nameless".parse::<Named<u32>>().is_err());
        assert!("=3".parse::<Named<u32>>().is_err());
        assert!("x=notanumber".parse::<Named<u32>>().is_err());
    }

    #[test]
    fn clean_flag_takes_a_value() {
        let cli = Cli::try_parse_from(["loadgen", "p2p", "-C", "false", "-V", "5"]).unwrap();
        let Command::P2p(args) = cli.command else {
            panic!("not p2p")
        };
        assert!(!args.load.clean);
        assert_eq!(args.load.protocol_version, 5);
    }

    #[test]
    fn transport_flags_parse_on_scenarios_and_compare() {
        let cli = Cli::try_parse_from([
            "loadgen",
            "storm",
            "--tls",
            "--insecure",
            "--ws",
            "--ws-path",
            "/m",
        ])
        .unwrap();
        let Command::Storm(args) = cli.command else {
            panic!("not storm")
        };
        let t = &args.load.transport;
        assert!(t.tls && t.insecure && t.ws);
        assert_eq!(t.ws_path, "/m");
        let cli = Cli::try_parse_from([
            "loadgen",
            "compare",
            "p2p",
            "--target",
            "a=127.0.0.1:8883",
            "--tls",
            "--cafile",
            "ca.pem",
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "--server-name",
            "broker.test",
        ])
        .unwrap();
        let Command::Compare(args) = cli.command else {
            panic!("not compare")
        };
        let t = &args.load.transport;
        assert_eq!(t.cafile.as_deref(), Some(std::path::Path::new("ca.pem")));
        assert_eq!(t.server_name.as_deref(), Some("broker.test"));
        assert_eq!(t.ws_path, "/mqtt", "the default path");
    }

    #[test]
    fn transport_flags_that_need_another_are_refused() {
        for argv in [
            &["loadgen", "p2p", "--cafile", "ca.pem"][..],
            &["loadgen", "p2p", "--insecure"],
            &[
                "loadgen",
                "p2p",
                "--tls",
                "--insecure",
                "--cafile",
                "ca.pem",
            ],
            &["loadgen", "p2p", "--tls", "--insecure", "--cert", "c.pem"],
            &["loadgen", "p2p", "--tls", "--insecure", "--key", "k.pem"],
            &["loadgen", "p2p", "--ws-path", "/x"],
        ] {
            assert!(Cli::try_parse_from(argv).is_err(), "{argv:?} parsed");
        }
    }
}
