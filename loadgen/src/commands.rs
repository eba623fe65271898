//! The two commands: a single run and a comparison of several brokers. Each
//! runs, summarises, prints the table and writes the JSON, HDR and SVG files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::chart::{self, Series};
use crate::cli::{CompareArgs, ScenarioKind, SingleArgs};
use crate::machine::Machine;
use crate::report::{self, Config, Summary};
use crate::runner::{run_once, RunResult};
use crate::scenario::{Plan, Settings, Target};

/// `loadgen <scenario> --host H --port P ...`
pub fn single(kind: ScenarioKind, args: &SingleArgs) -> Result<()> {
    let host_port = format!("{}:{}", args.host, args.port);
    let target = Target::resolve(&args.name, &host_port, args.broker_pid)?;
    let mut settings = Settings::new(kind, target, &args.load)?;
    if let Some(host_port) = &args.subscribe_to {
        let at = Target::resolve("subscribers", host_port, None)?;
        settings.transport.check_host(&at.host)?;
        settings.target.subscribers_at = Some(at.address);
        settings.subscribe_at = Some(at);
    }
    settings.target.version = probe_version(&settings);
    let plan = Plan::build(kind, &args.load)?;
    let config = Config::new(&settings, &plan);
    let subscribers = (settings.subscribe_at.as_ref())
        .map(|at| format!(", subscribers at {}", at.address))
        .unwrap_or_default();
    eprintln!(
        "loadgen {} -> {}{subscribers}",
        config.describe(),
        settings.target.address
    );
    let result = run_once(&settings, &plan)?;
    let summary = Summary::new(&result, &config, &Machine::detect());
    print!("{}", report::table(std::slice::from_ref(&summary)));
    if let Some(path) = &args.load.json {
        report::write_json(path, &summary)?;
    }
    write_histograms(&args.load, kind, &config, &[result])
}

/// All runs and the per-broker aggregates of a comparison.
#[derive(Serialize)]
struct CompareReport<'a> {
    scenario: &'static str,
    rounds: usize,
    brokers: &'a [Summary],
    runs: &'a [Summary],
}

/// `loadgen compare <scenario> --target a=H:P --target b=H:P ...`
pub fn compare(args: &CompareArgs) -> Result<()> {
    let targets = targets(args)?;
    let kind = args.scenario;
    let base = Settings::new(kind, targets[0].clone(), &args.load)?;
    for target in &targets {
        base.transport.check_host(&target.host)?;
    }
    let plan = Plan::build(kind, &args.load)?;
    let config = Config::new(&base, &plan);
    let machine = Machine::detect();
    eprintln!("loadgen compare {}", config.describe());
    let mut merged: Vec<Option<RunResult>> = targets.iter().map(|_| None).collect();
    let mut runs = Vec::new();
    for round in 0..args.rounds.max(1) {
        for (i, target) in targets.iter().enumerate() {
            if round + i > 0 {
                std::thread::sleep(Duration::from_secs_f64(args.pause.max(0.0)));
            }
            eprintln!(
                "round {}/{}: {} ({})",
                round + 1,
                args.rounds.max(1),
                target.name,
                target.address
            );
            let mut settings = base.for_target(target.clone());
            settings.target.version = probe_version(&settings);
            let result = run_once(&settings, &plan)?;
            runs.push(Summary::new(&result, &config, &machine));
            match &mut merged[i] {
                Some(m) => m.absorb(result),
                slot => *slot = Some(result),
            }
        }
    }
    let results: Vec<RunResult> = merged.into_iter().flatten().collect();
    let brokers: Vec<Summary> = results
        .iter()
        .map(|r| Summary::new(r, &config, &machine))
        .collect();
    println!("{}", config.describe());
    print!("{}", report::table(&brokers));
    if let Some(path) = &args.load.json {
        let rounds = args.rounds.max(1);
        report::write_json(
            path,
            &CompareReport {
                scenario: kind.name(),
                rounds,
                brokers: &brokers,
                runs: &runs,
            },
        )?;
    }
    write_histograms(&args.load, kind, &config, &results)
}

/// The broker's `$SYS/broker/version`, over plain TCP (a TLS or WebSocket
/// target is not probed).
fn probe_version(settings: &Settings) -> Option<String> {
    (settings.transport.info().kind == "tcp")
        .then(|| crate::probe::broker_version(settings.target.address))
        .flatten()
}

fn targets(args: &CompareArgs) -> Result<Vec<Target>> {
    let mut targets = Vec::new();
    for t in &args.targets {
        if targets.iter().any(|x: &Target| x.name == t.name) {
            bail!("target name {:?} given twice", t.name);
        }
        let pid = args
            .broker_pids
            .iter()
            .find(|p| p.name == t.name)
            .map(|p| p.value);
        targets.push(Target::resolve(&t.name, &t.value, pid)?);
    }
    if let Some(p) = args
        .broker_pids
        .iter()
        .find(|p| !targets.iter().any(|t| t.name == p.name))
    {
        bail!("--broker-pid names {:?}, which is not a --target", p.name);
    }
    Ok(targets)
}

/// The histogram a chart and an HDR file show: message latency, or connect
/// time for the connection scenarios.
fn chart_histogram(kind: ScenarioKind, r: &RunResult) -> &hdrhistogram::Histogram<u64> {
    if kind.has_messages() {
        &r.stats.latency
    } else {
        &r.stats.connect
    }
}

fn write_histograms(
    load: &crate::cli::LoadArgs,
    kind: ScenarioKind,
    config: &Config,
    results: &[RunResult],
) -> Result<()> {
    if let Some(path) = &load.hdr {
        for r in results {
            let path = per_target(path, &r.target.name, results.len());
            report::write_hdr(&path, chart_histogram(kind, r))?;
        }
    }
    if let Some(path) = &load.svg {
        let what = if kind.has_messages() {
            "end-to-end latency"
        } else {
            "connect time"
        };
        let series: Vec<Series> = results
            .iter()
            .map(|r| Series {
                name: &r.target.name,
                hist: chart_histogram(kind, r),
            })
            .collect();
        chart::write_svg(path, &config.chart_title(what), &series)?;
    }
    Ok(())
}

/// `out.hdr` -> `out.ringmq.hdr` when several brokers share one flag.
fn per_target(path: &Path, name: &str, count: usize) -> PathBuf {
    if count <= 1 {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("latency");
    let file = match path.extension().and_then(|e| e.to_str()) {
        Some(ext) => format!("{stem}.{name}.{ext}"),
        None => format!("{stem}.{name}"),
    };
    path.with_file_name(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hdr_files_get_the_broker_name() {
        let p = Path::new("/tmp/x/lat.hdr");
        assert_eq!(per_target(p, "a", 1), PathBuf::from("/tmp/x/lat.hdr"));
        assert_eq!(per_target(p, "a", 2), PathBuf::from("/tmp/x/lat.a.hdr"));
    }
}
