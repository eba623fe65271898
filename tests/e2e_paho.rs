//! MQTT 5.0 with Eclipse Paho's Python client (paho-mqtt 2.x): each test
//! starts a 2-core broker and runs one scenario script from `tests/paho/`
//! (`python3 tests/paho/<script>.py 127.0.0.1 <port>`), which prints one
//! `OK ...`/`FAIL ...` line and exits non-zero on failure.
//!
//! Paho is required: scripts/test.sh installs it
//! (`python3 -m pip install 'paho-mqtt>=2,<3'`); a missing or too old Paho
//! fails these tests loudly rather than skipping them.
//!
//! Every script is bounded twice: by its own alarm (16 s) and by a kill here.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Kill a script still running after this long.
const SCRIPT_LIMIT: Duration = Duration::from_secs(18);

fn script_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/paho")
}

/// Fails loudly unless `python3` can import paho-mqtt 2.x.
fn require_paho() {
    require_program("python3");
    let out = Command::new("python3")
        .args([
            "-c",
            "import paho.mqtt, paho.mqtt.client; print(paho.mqtt.__version__)",
        ])
        .output()
        .expect("run python3");
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && version.split('.').next().is_some_and(|m| m >= "2"),
        "paho-mqtt 2.x is not importable by python3 (got {version:?}; {}). \
         Install it: python3 -m pip install 'paho-mqtt>=2,<3' (scripts/test.sh does this)",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Runs `tests/paho/<name>.py` against a fresh broker and fails with its
/// output unless it exits 0 having printed an `OK` line.
fn run_script(name: &str, tweak: impl FnOnce(&mut ringmq::config::Config)) {
    require_paho();
    let broker = start(2, tweak);
    let script = script_dir().join(format!("{name}.py"));
    assert!(script.is_file(), "missing {}", script.display());
    let started = Instant::now();
    let mut child = Command::new("python3")
        .arg("-u")
        .arg(&script)
        .args(["127.0.0.1", &broker.port.to_string()])
        .current_dir(script_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1") // leave no __pycache__ in the tree
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    // Drain both pipes on threads so a chatty script cannot block on them.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if started.elapsed() >= SCRIPT_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20)); // polling a process, not synchronisation
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    let report = format!(
        "{name}.py after {:?}\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}",
        started.elapsed()
    );
    let Some(status) = status else {
        panic!("killed: still running after {SCRIPT_LIMIT:?}: {report}");
    };
    assert!(status.success(), "exit status {status}: {report}");
    assert!(
        stdout.lines().any(|l| l.starts_with("OK")),
        "no OK line: {report}"
    );
    eprintln!("{}", stdout.trim());
}

/// CONNACK properties (assigned id, Server Keep Alive, Topic Alias Maximum,
/// Receive Maximum) and request/response properties passing through.
#[test]
fn paho_connack_and_request_response() {
    run_script("connack_request_response", |c| c.limits.max_keepalive = 60);
}

/// Session expiry resume with queued messages, message expiry while queued,
/// clean start dropping the session.
#[test]
fn paho_session_and_message_expiry() {
    run_script("session_and_message_expiry", |_| {});
}

/// Shared subscriptions: 5.0 and 3.1.1 Paho members, exactly once per group,
/// no retained messages on a shared subscribe.
#[test]
fn paho_shared_subscriptions() {
    run_script("shared_subscriptions", |_| {});
}

/// Topic aliases from a Paho publisher, subscription identifiers, No Local.
#[test]
fn paho_alias_subscription_ids_no_local() {
    run_script("alias_subid_nolocal", |_| {});
}

/// Will delay: published after the delay, cancelled by a reconnect.
#[test]
fn paho_will_delay() {
    run_script("will_delay", |_| {});
}
