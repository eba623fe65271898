//! `loadgen` binary: parse the command line, run, exit non-zero on error.

use std::process::ExitCode;

use clap::Parser;
use loadgen::cli::{Cli, Command, ScenarioKind};
use loadgen::commands;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::P2p(a) => commands::single(ScenarioKind::P2p, a),
        Command::FanOut(a) => commands::single(ScenarioKind::FanOut, a),
        Command::FanIn(a) => commands::single(ScenarioKind::FanIn, a),
        Command::Connections(a) => commands::single(ScenarioKind::Connections, a),
        Command::Storm(a) => commands::single(ScenarioKind::Storm, a),
        Command::Compare(a) => commands::compare(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
