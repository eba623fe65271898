//! End-to-end tests of `Config::from_args`: defaults, the TOML file, the
//! environment, flags, their precedence, and rejection of bad input.
//!
//! Environment variables are process-global and tests run on parallel
//! threads, so no test here sets one in-process: the environment test re-runs
//! this test binary as a child process with the variables set on the child.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::CommandFactory;
use ringmq::config::{Cli, Command, Config, ConfigError, IoDriver};

/// A config file in the temp dir, unique per test and process, removed on drop.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(test: &str, contents: &str) -> Self {
        let name = format!("ringmq-config-{}-{test}.toml", std::process::id());
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, contents).expect("write temp config");
        TempConfig(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("temp path is UTF-8")
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run(args: &[&str]) -> Config {
    let argv = std::iter::once("ringmq").chain(args.iter().copied());
    match Config::from_args(argv) {
        Ok(Command::Run(config)) => config,
        other => panic!("expected Run for {args:?}, got {other:?}"),
    }
}

fn error(args: &[&str]) -> String {
    let argv = std::iter::once("ringmq").chain(args.iter().copied());
    match Config::from_args(argv) {
        Err(e) => e.to_string(),
        Ok(cmd) => panic!("expected an error for {args:?}, got {cmd:?}"),
    }
}

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ringmq.example.toml")
}

#[test]
fn no_arguments_gives_defaults() {
    let config = run(&[]);
    assert_eq!(config, Config::default());
    assert_eq!(
        config.bind,
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        "loopback only by default"
    );
    assert!(config.local_only && config.allow_anonymous);
    assert_eq!(config.port, 1883);
    assert!(config.pin_cores);
    assert_eq!(config.io_driver, IoDriver::Auto);
    assert_eq!(config.ring_entries, 1024);
    assert_eq!(config.limits.max_packet_size, 1_048_576);
    assert_eq!(config.limits.max_client_id_len, 256);
    assert_eq!(config.limits.connect_timeout, Duration::from_secs(10));
}

#[test]
fn flags_set_every_kind_of_value() {
    let config = run(&[
        "--bind=::1",
        "-p",
        "1884",
        "--cores=2",
        "--no-pin",
        "--io-driver=iouring",
        "--read-buffer=8KiB",
        "--allow-anonymous=false",
        "--sys-interval=0",
        "--max-packet-size=64KiB",
        "--connect-timeout=3",
        "--max-subscriptions-per-client=5",
        "--busy-poll-us=50",
        "--write-coalesce-ms=2",
        "--read-coalesce-ms=3",
        "--transparent-huge-pages=true",
    ]);
    assert_eq!(config.bind, "::1".parse::<IpAddr>().expect("ip"));
    assert_eq!(
        (config.port, config.cores, config.pin_cores),
        (1884, 2, false)
    );
    assert_eq!(config.io_driver, IoDriver::IoUring);
    assert_eq!(config.read_buffer_size, 8192);
    assert!(!config.allow_anonymous);
    assert_eq!(config.sys_interval, Duration::ZERO);
    assert_eq!(config.limits.max_packet_size, 65_536);
    assert_eq!(config.limits.connect_timeout, Duration::from_secs(3));
    assert_eq!(config.limits.max_subscriptions_per_client, 5);
    assert_eq!(config.busy_poll_us, 50);
    assert_eq!(config.write_coalesce_ms, 2);
    assert_eq!(config.read_coalesce_ms, 3);
    assert!(config.transparent_huge_pages);
}

#[test]
fn kebab_case_key_aliases_work() {
    let config = run(&[
        "--bind-address=127.0.0.1",
        "--read-buffer-size=1024",
        "--mesh-queue-capacity=8",
    ]);
    assert_eq!(config.bind, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(
        (config.read_buffer_size, config.mesh_queue_capacity),
        (1024, 8)
    );
}

#[test]
fn config_file_sets_values_and_flags_override_it() {
    let file = TempConfig::new(
        "override",
        "port = 1999\nmax_inflight_messages = 7\npin_cores = false\nmax_queued_bytes = \"1MiB\"\n",
    );
    let from_file = run(&["-c", file.path()]);
    assert_eq!(
        (from_file.port, from_file.limits.max_inflight_messages),
        (1999, 7)
    );
    assert!(!from_file.pin_cores);
    assert_eq!(from_file.limits.max_queued_bytes, 1 << 20);

    let overridden = run(&["--config", file.path(), "--port", "2000"]);
    assert_eq!(overridden.port, 2000, "flag beats file");
    assert_eq!(
        overridden.limits.max_inflight_messages, 7,
        "file beats default"
    );
}

#[test]
fn unknown_file_key_is_rejected_by_name() {
    let file = TempConfig::new("unknown", "port = 1883\nmax_packt_size = 100000\n");
    let message = error(&["-c", file.path()]);
    assert!(message.contains("max_packt_size"), "{message}");
}

#[test]
fn wrongly_typed_file_value_is_rejected_by_name() {
    let file = TempConfig::new("typed", "max_inflight_messages = 70000\n");
    let message = error(&["-c", file.path()]);
    assert!(message.contains("max_inflight_messages"), "{message}");
}

#[test]
fn missing_config_file_is_a_read_error() {
    let path = std::env::temp_dir().join(format!("ringmq-missing-{}.toml", std::process::id()));
    let argv = ["ringmq", "-c", path.to_str().expect("utf-8")];
    assert!(matches!(
        Config::from_args(argv),
        Err(ConfigError::Read { .. })
    ));
}

#[test]
fn invalid_values_are_rejected_naming_key_and_range() {
    let cases: [(&[&str], &[&str]); 8] = [
        (&["--cores=0"], &["cores", "1..=256"]),
        (
            &["--max-packet-size=10"],
            &["max_packet_size", "64..=268435455"],
        ),
        (&["--ring-entries=1000"], &["ring_entries", "power of two"]),
        (
            &["--max-inflight-messages=0"],
            &["max_inflight_messages", "1..=65535"],
        ),
        (&["--max-connections=0"], &["max_connections", "at least 1"]),
        (&["--busy-poll-us=5000"], &["busy_poll_us", "0..=1000"]),
        (
            &["--write-coalesce-ms=20"],
            &["write_coalesce_ms", "0..=10"],
        ),
        (&["--read-coalesce-ms=11"], &["read_coalesce_ms", "0..=10"]),
    ];
    for (args, expected) in cases {
        let message = error(args);
        for needle in expected {
            assert!(
                message.contains(needle),
                "{args:?}: {needle:?} not in {message}"
            );
        }
    }
}

#[test]
fn invalid_file_values_are_rejected_too() {
    let file = TempConfig::new("invalid", "cores = 0\nmax_client_id_len = 5\n");
    let message = error(&["-c", file.path()]);
    assert!(
        message.contains("cores") && message.contains("max_client_id_len"),
        "{message}"
    );
}

#[test]
fn malformed_flag_values_are_cli_errors() {
    for args in [
        &["--port=http"][..],
        &["--io-driver=kqueue"],
        &["--max-packet-size=1MB"],
    ] {
        let argv = std::iter::once("ringmq").chain(args.iter().copied());
        assert!(
            matches!(Config::from_args(argv), Err(ConfigError::Cli(_))),
            "{args:?}"
        );
    }
}

#[test]
fn test_config_flag_returns_test_config() {
    let cmd = Config::from_args(["ringmq", "--test-config", "--port=1"]).expect("valid");
    assert!(matches!(cmd, Command::TestConfig(c) if c.port == 1));
}

#[test]
fn help_and_version_are_cli_errors_for_the_caller_to_print() {
    for flag in ["--help", "-h", "--version"] {
        assert!(matches!(
            Config::from_args(["ringmq", flag]),
            Err(ConfigError::Cli(_))
        ));
    }
}

#[test]
fn example_config_parses_to_the_defaults() {
    let path = example_path();
    let config = run(&["-c", path.to_str().expect("utf-8")]);
    let expected = Config {
        cores: config.cores,
        ..Config::default()
    };
    assert_eq!(config, expected);
}

#[test]
fn example_config_documents_every_key() {
    let text = std::fs::read_to_string(example_path()).expect("read example");
    let cli = Cli::command();
    let keys = cli
        .get_arguments()
        .map(|a| a.get_id().as_str())
        .filter(|id| {
            !matches!(
                *id,
                "help" | "version" | "config" | "no_pin" | "test_config"
            )
        })
        .chain(["pin_cores"]);
    for key in keys {
        let set = format!("\n{key} = ");
        let commented = format!("\n# {key} = ");
        assert!(
            text.contains(&set) || text.contains(&commented),
            "example lacks {key}"
        );
    }
}

/// Runs only inside the child spawned by `environment_sits_between_file_and_flags`.
#[test]
fn env_child() {
    let Ok(file) = std::env::var("RINGMQ_TEST_CHILD_FILE") else {
        return;
    };
    let config = run(&["-c", &file, "--max-keepalive=30"]);
    assert_eq!(config.port, 2001, "env beats file");
    assert_eq!(
        config.limits.max_inflight_messages, 9,
        "file applies where env is silent"
    );
    assert_eq!(config.limits.max_keepalive, 30, "flag beats env");
    assert_eq!(
        config.limits.max_write_buffer,
        2 << 20,
        "env sizes take suffixes"
    );
    assert!(!config.pin_cores, "RINGMQ_NO_PIN");
}

#[test]
fn environment_sits_between_file_and_flags() {
    let file = TempConfig::new("env", "port = 1999\nmax_inflight_messages = 9\n");
    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["env_child", "--exact", "--test-threads=1", "--nocapture"])
        .env("RINGMQ_TEST_CHILD_FILE", file.path())
        .env("RINGMQ_PORT", "2001")
        .env("RINGMQ_MAX_KEEPALIVE", "60")
        .env("RINGMQ_MAX_WRITE_BUFFER", "2MiB")
        .env("RINGMQ_NO_PIN", "1")
        .output()
        .expect("spawn test binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("1 passed"),
        "child did not run env_child:\n{stdout}"
    );
}

/// The server configuration shipped for the systemd unit and the container
/// loads, authenticates clients and keeps the metrics on loopback.
#[test]
fn contrib_config_loads() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("contrib/ringmq.toml");
    let config = run(&["-c", path.to_str().unwrap()]);
    assert!(!config.local_only && !config.allow_anonymous);
    assert_eq!(
        config.password_file,
        Some(PathBuf::from("/etc/ringmq/passwd"))
    );
    assert_eq!(config.metrics, Some("127.0.0.1:9883".parse().unwrap()));
    assert_eq!(
        config.persistence_location,
        PathBuf::from("/var/lib/ringmq")
    );
}

#[test]
fn metrics_bind_address_needs_a_port() {
    let e = error(&["--metrics-bind-address", "0.0.0.0"]);
    assert!(e.contains("metrics_port"), "{e}");
    let config = run(&["--metrics-port", "9100"]);
    assert_eq!(config.metrics, Some("127.0.0.1:9100".parse().unwrap()));
}

/// The example's `[cluster]` block, uncommented, is a valid table.
#[test]
fn example_cluster_block_parses() {
    let text = std::fs::read_to_string(example_path()).expect("read example");
    let block: String = text
        .split("\n# [cluster]\n")
        .nth(1)
        .expect("a [cluster] block")
        .lines()
        .map_while(|l| l.strip_prefix("# "))
        .map(|l| format!("{l}\n"))
        .collect();
    let file = TempConfig::new("cluster", &format!("[cluster]\n{block}"));
    let config = run(&["-c", file.path()]);
    let cluster = config.cluster.expect("a cluster");
    assert_eq!(cluster.node_name, "node-1");
    assert_eq!(cluster.nats_servers.len(), 2);
    assert!(cluster.tls, "a CA file means TLS");
    assert_eq!(cluster.link_buffer, 64 << 20);
}
