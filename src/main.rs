//! `ringmq`: CLI -> Config -> server::run.

use ringmq::config::{Command, Config, ConfigError};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
            init_logging(&config.log_level, config.log_format);
            if let Err(e) = ringmq::server::run(config) {
                tracing::error!("{e:#}");
                std::process::exit(1);
            }
        }
    }
}

/// Logs go to stderr: text (coloured only on a terminal, so a file or a
/// journal gets no escape codes) or one JSON object per line.
fn init_logging(level: &str, format: ringmq::config::LogFormat) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        ringmq::config::LogFormat::Text => {
            builder.with_ansi(std::io::stderr().is_terminal()).init()
        }
        ringmq::config::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}
