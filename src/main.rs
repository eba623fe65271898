//! `ringmq`: CLI -> Config -> server::run.

use ringmq::config::{Command, Config, ConfigError};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Forbids transparent huge pages before anything is allocated (the
/// standard library allocates before `main`): else the allocator's first
/// 2 MiB page is already huge when the configuration says whether it may
/// be. `server::run` then applies `transparent_huge_pages`.
#[used]
#[link_section = ".init_array"]
static FORBID_HUGE_PAGES_FIRST: extern "C" fn() = forbid_huge_pages;

extern "C" fn forbid_huge_pages() {
    let _ = ringmq::server::huge_pages::allow(false);
}

fn main() {
    // `ringmq passwd ...` is a separate tool that must not go through the
    // broker's Config parsing.
    if std::env::args_os().nth(1).is_some_and(|a| a == "passwd") {
        std::process::exit(ringmq::auth::passwd::main(
            std::env::args_os().skip(2).collect(),
        ));
    }
    let command = match Config::from_env_args() {
        Ok(c) => c,
        Err(ConfigError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("ringmq: {e}");
            std::process::exit(2);
        }
    };
    match command {
        Command::TestConfig(config) => {
            let checked = ringmq::server::check_listeners(&config)
                .and_then(|()| ringmq::auth::files::FileBackend::load(&config).map(drop));
            if let Err(e) = checked {
                eprintln!("ringmq: {e:#}");
                std::process::exit(2);
            }
            let listeners: Vec<String> = config
                .all_listeners()
                .iter()
                .map(|l| l.to_string())
                .collect();
            println!(
                "configuration ok: {} cores, listeners {}",
                config.cores,
                listeners.join(", ")
            );
        }
        Command::Run(config) => {
            let set_level = init_logging(&config.log_level, config.log_format);
            let mut running = config.clone();
            let reconfigure = move |broker: &ringmq::server::Broker| {
                reconfigure(broker, &mut running, &set_level)
            };
            if let Err(e) = ringmq::server::run(config, reconfigure) {
                tracing::error!("{e:#}");
                std::process::exit(1);
            }
        }
    }
}

/// Changes the log filter of the running process.
type SetLevel = Box<dyn Fn(&str) -> Result<(), String>>;

/// Logs go to stderr: text (coloured only on a terminal, so a file or a
/// journal gets no escape codes) or one JSON object per line. Returns how to
/// change the filter later (SIGHUP).
fn init_logging(level: &str, format: ringmq::config::LogFormat) -> SetLevel {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    macro_rules! install {
        ($builder:expr) => {{
            let builder = $builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            Box::new(move |level: &str| {
                let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
                handle.reload(filter).map_err(|e| e.to_string())
            })
        }};
    }
    match format {
        ringmq::config::LogFormat::Text => {
            install!(builder.with_ansi(std::io::stderr().is_terminal()))
        }
        ringmq::config::LogFormat::Json => {
            install!(builder.json().flatten_event(true).with_current_span(false))
        }
    }
}

/// SIGHUP: reads the configuration again from the same file, environment
/// and flags. A configuration that does not load changes nothing. The log
/// level and the limits of [`ringmq::config::LIVE_LIMITS`] take effect at once
/// (the certificate, password and ACL files were re-read already); every
/// other changed key is named as waiting for a restart, since listeners,
/// cores and what clients were told at CONNECT are fixed while running.
fn reconfigure(broker: &ringmq::server::Broker, running: &mut Config, set_level: &SetLevel) {
    let new = match Config::from_env_args() {
        Ok(Command::Run(new)) => new,
        Ok(_) => return,
        Err(e) => {
            return tracing::error!(error = %e, "reload: the configuration does not load; nothing changed")
        }
    };
    let changed = ringmq::config::changed_keys(running, &new);
    if changed.contains(&"log_level") {
        match set_level(&new.log_level) {
            Ok(()) => {
                tracing::info!(
                    from = running.log_level,
                    to = new.log_level,
                    "reload: log_level changed"
                );
                running.log_level = new.log_level.clone();
            }
            Err(e) => tracing::error!(error = e, "reload: log_level not changed"),
        }
    }
    let live: Vec<&str> = changed
        .iter()
        .copied()
        .filter(|k| ringmq::config::LIVE_LIMITS.contains(k))
        .collect();
    if !live.is_empty() {
        running.limits = ringmq::config::live_limits(&running.limits, &new.limits);
        broker.set_limits(running.limits.clone());
        tracing::info!(keys = live.join(", "), "reload: limits changed");
    }
    let waiting: Vec<&str> = changed
        .into_iter()
        .filter(|k| *k != "log_level" && !live.contains(k))
        .collect();
    if waiting.is_empty() {
        tracing::info!("reload: done");
    } else {
        tracing::warn!(
            keys = waiting.join(", "),
            "reload: these settings changed and take effect only after a restart"
        );
    }
}
