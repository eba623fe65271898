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

#[test]
fn the_listener_table_as_mosquitto_names_it() {
    let toml = r#"
        [[listener]]
        port = 8883
        bind_address = "127.0.0.1"
        protocol = "mqtt"
        certfile = "server.crt"
        keyfile = "server.key"
        cafile = "ca.crt"
        require_certificate = true
        use_identity_as_username = false

        [[listener]]
        port = 8080
        protocol = "websockets"
    "#;
    let file: FileConfig = toml::from_str(toml).expect("parse");
    let config = file.resolve().expect("resolve");
    config.validate().expect("valid");
    assert!(
        !config.default_listener,
        "[[listener]] without port: only they open"
    );
    let tls = config.listeners[0].tls.as_ref().expect("TLS");
    assert_eq!(config.listeners[0].to_string(), "mqtts://127.0.0.1:8883");
    assert!(tls.require_certificate && tls.cafile.is_some());
    assert_eq!(tls.min_version, TlsVersion::Tls12);
    assert_eq!(config.listeners[1].to_string(), "ws://127.0.0.1:8080");
    assert_eq!(config.listeners[1].websockets_path, "/mqtt");
    assert_eq!(config.all_listeners().len(), 2);
}

#[test]
fn an_explicit_port_keeps_the_top_level_listener_beside_tables() {
    let file: FileConfig =
        toml::from_str("port = 1883\n[[listener]]\nport = 8080\nprotocol = \"websockets\"")
            .expect("parse");
    let config = file.resolve().expect("resolve");
    assert!(config.default_listener);
    assert_eq!(config.all_listeners().len(), 2);
    assert!(
        toml::from_str::<FileConfig>("[[listener]]\nport = 1\nprotocl = \"mqtt\"").is_err(),
        "typos are refused"
    );
}

#[test]
fn listener_settings_that_cannot_work_are_refused() {
    let certless = FileConfig {
        tls_port: Some(8883),
        ..FileConfig::default()
    };
    assert!(certless
        .resolve()
        .expect_err("no cert")
        .to_string()
        .contains("certfile"));
    let half = FileConfig {
        tls_port: Some(8883),
        certfile: Some("a.crt".into()),
        ..FileConfig::default()
    };
    assert!(half
        .resolve()
        .expect_err("no key")
        .to_string()
        .contains("keyfile"));
    let mutual_without_ca = FileConfig {
        tls_port: Some(8883),
        certfile: Some("a.crt".into()),
        keyfile: Some("a.key".into()),
        require_certificate: Some(true),
        ..FileConfig::default()
    };
    let config = mutual_without_ca.resolve().expect("resolves");
    assert!(config
        .validate()
        .expect_err("no CA")
        .to_string()
        .contains("cafile"));
    let clash = FileConfig {
        ws_port: Some(1883),
        ..FileConfig::default()
    };
    let config = clash.resolve().expect("resolves");
    assert!(config
        .validate()
        .expect_err("same port")
        .to_string()
        .contains("two listeners"));
}

fn resolved(toml: &str) -> Result<Config, ConfigError> {
    let file: FileConfig = toml::from_str(toml).expect("parse");
    let config = file.resolve()?;
    config.validate()?;
    Ok(config)
}

#[test]
fn with_nothing_that_authenticates_only_loopback_listens() {
    let config = resolved("").expect("valid");
    assert!(config.local_only && config.allow_anonymous);
    assert_eq!(config.bind, IpAddr::V4(Ipv4Addr::LOCALHOST));
    for open in [
        "bind_address = \"0.0.0.0\"",
        "bind_address = \"::\"",
        "[[listener]]\nport = 8080\nbind_address = \"192.0.2.1\"",
    ] {
        let err = resolved(open).expect_err(open).to_string();
        assert!(
            err.contains("password_file") && err.contains("allow_anonymous"),
            "{err}"
        );
    }
    resolved("bind_address = \"::1\"").expect("IPv6 loopback is fine");
}

#[test]
fn a_password_file_opens_every_address_and_refuses_anonymous() {
    let config = resolved("password_file = \"/etc/ringmq/passwd\"").expect("valid");
    assert!(!config.local_only && !config.allow_anonymous);
    assert_eq!(config.bind, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let config = resolved("password_file = \"p\"\nallow_anonymous = true").expect("valid");
    assert!(config.allow_anonymous);
}

#[test]
fn explicit_allow_anonymous_opens_every_address() {
    let config = resolved("allow_anonymous = true\nbind_address = \"0.0.0.0\"").expect("valid");
    assert!(!config.local_only && config.allow_anonymous);
    let config = resolved("allow_anonymous = false").expect("valid");
    assert_eq!(config.bind, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert!(!config.allow_anonymous);
}

#[test]
fn the_example_bridge_parses_with_mosquittos_names_too() {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ringmq.example.toml"))
            .expect("read the example");
    let at = example
        .find("# [[bridge]]")
        .expect("the example has a bridge");
    // The block: commented lines up to the first blank one.
    let bridge: String = example[at..]
        .lines()
        .map_while(|l| l.strip_prefix("# ").or(l.strip_prefix("#")))
        .map(|l| format!("{l}\n"))
        .collect();
    let config = resolved(&bridge).expect("the example bridge is valid");
    let b = &config.bridges[0];
    assert_eq!((b.name.as_str(), b.client_id.as_str()), ("cloud", "edge-7"));
    assert_eq!(b.routes.len(), 2);
    assert_eq!(
        b.routes[0].to_remote("sensors/t").as_deref(),
        Some("site-7/sensors/t")
    );
    assert!(b.tls.is_some());
    let mosquitto_names = "[[bridge]]\nname = \"m\"\naddress = \"h\"\ntopic = [\"a\"]\n\
        remote_clientid = \"r\"\nremote_username = \"u\"\nremote_password = \"p\"\n\
        local_clientid = \"l\"\nkeepalive_interval = 30\nbridge_cafile = \"ca\"\n\
        bridge_insecure = true\nprotocol_version = \"mqttv311\"\n";
    let b = &resolved(mosquitto_names).expect("valid").bridges[0];
    assert_eq!(
        (b.client_id.as_str(), b.local_client_id.as_str()),
        ("r", "l")
    );
    assert_eq!((b.keepalive, b.addresses[0].1), (30, 1883));
    assert!(b.tls.as_ref().is_some_and(|t| t.insecure));
    let twice = "[[bridge]]\nname = \"m\"\naddress = \"h\"\ntopic = [\"a\"]\n".repeat(2);
    assert!(resolved(&twice)
        .unwrap_err()
        .to_string()
        .contains("two [[bridge]]"));
    let typo = "[[bridge]]\nname = \"m\"\naddress = \"h\"\ntopic = [\"a\"]\ntypo = 1\n";
    assert!(
        toml::from_str::<FileConfig>(typo).is_err(),
        "unknown keys are refused"
    );
}
