//! Third-party clients run as programs: Paho's Python client
//! (`tests/paho/*.py`) and MQTT.js (`tests/mqttjs/*.js`, npm `mqtt` pinned in
//! `tests/mqttjs/package-lock.json`). A [`Script`] forwards its output lines
//! to a channel as they come, so a test can wait (bounded) for one (`READY`)
//! while the program runs, and is killed when dropped.
//!
//! The scripts' convention: one `OK ...` or `FAIL ...` line, exit 0 only on
//! success, an alarm of their own (16 s); [`Script::finish`] bounds them
//! again from here.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::StreamExt;

/// Kill a script still running after this long (its own alarm is 16 s).
pub const SCRIPT_LIMIT: Duration = Duration::from_secs(18);

/// `tests/paho`.
pub fn paho_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/paho")
}

/// `tests/mqttjs`.
pub fn mqttjs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mqttjs")
}

fn on_path(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(name).is_file())
}

/// Fails loudly unless `python3` can import paho-mqtt 2.x.
pub fn require_paho() {
    assert!(
        on_path("python3"),
        "python3 is not installed but the Paho tests need it"
    );
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

/// Fails loudly unless `node` is installed and `tests/mqttjs/node_modules`
/// holds npm `mqtt` (the scripts themselves check it is the pinned version).
pub fn require_mqttjs() {
    assert!(
        on_path("node"),
        "node is not installed but the MQTT.js tests need it (Node 20 or later)"
    );
    let installed = mqttjs_dir().join("node_modules/mqtt/package.json");
    assert!(
        installed.is_file(),
        "npm mqtt is not installed in tests/mqttjs: run \
         `(cd tests/mqttjs && npm ci --no-audit --no-fund)` (scripts/test.sh does this)"
    );
}

/// `python3 -u tests/paho/<name>.py <args>`.
pub fn paho(name: &str, args: &[&str]) -> Script {
    require_paho();
    let script = paho_dir().join(format!("{name}.py"));
    assert!(script.is_file(), "missing {}", script.display());
    let mut cmd = Command::new("python3");
    cmd.arg("-u")
        .arg(&script)
        .args(args)
        .current_dir(paho_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1"); // leave no __pycache__ in the tree
    Script::spawn(&format!("{name}.py"), cmd)
}

/// `node tests/mqttjs/<name>.js <args>`.
pub fn mqttjs(name: &str, args: &[&str]) -> Script {
    require_mqttjs();
    let script = mqttjs_dir().join(format!("{name}.js"));
    assert!(script.is_file(), "missing {}", script.display());
    let mut cmd = Command::new("node");
    cmd.arg(&script).args(args).current_dir(mqttjs_dir());
    Script::spawn(&format!("{name}.js"), cmd)
}

enum Line {
    Out(String),
    Err(String),
}

/// A running program whose output lines arrive on a channel; killed when
/// dropped.
pub struct Script {
    pub name: String,
    child: Child,
    lines: mpsc::UnboundedReceiver<Line>,
    /// Every stdout line read so far.
    pub stdout: Vec<String>,
    /// Every stderr line read so far.
    pub stderr: Vec<String>,
    started: Instant,
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Script {
    /// Spawns `cmd` with piped output, each pipe drained by a thread.
    pub fn spawn(name: &str, mut cmd: Command) -> Script {
        use std::io::{BufRead, BufReader};
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let (tx, rx) = mpsc::unbounded();
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let err = BufReader::new(child.stderr.take().expect("stderr"));
        let tx_err = tx.clone();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                if tx.unbounded_send(Line::Out(l)).is_err() {
                    return;
                }
            }
        });
        std::thread::spawn(move || {
            for l in err.lines().map_while(Result::ok) {
                if tx_err.unbounded_send(Line::Err(l)).is_err() {
                    return;
                }
            }
        });
        Script {
            name: name.to_owned(),
            child,
            lines: rx,
            stdout: Vec::new(),
            stderr: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Everything it printed so far, for failure messages.
    pub fn report(&self) -> String {
        format!(
            "{} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.name,
            self.started.elapsed(),
            self.stdout.join("\n"),
            self.stderr.join("\n")
        )
    }

    /// The next line until `deadline`; `None` at the deadline or once both
    /// pipes are closed. Records it.
    async fn next_line(&mut self, deadline: tokio::time::Instant) -> Option<Result<String, ()>> {
        match tokio::time::timeout_at(deadline, self.lines.next()).await {
            Ok(Some(Line::Out(l))) => {
                self.stdout.push(l.clone());
                Some(Ok(l))
            }
            Ok(Some(Line::Err(l))) => {
                self.stderr.push(l);
                Some(Err(()))
            }
            Ok(None) | Err(_) => None,
        }
    }

    /// Waits up to `limit` for a stdout line satisfying `pred`; fails with
    /// the output if the program ends or prints `FAIL` first.
    pub async fn wait_line(
        &mut self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self.next_line(deadline).await {
                Some(Ok(l)) if pred(&l) => return l,
                Some(Ok(l)) if l.starts_with("FAIL") => {
                    panic!("{what}: the script failed: {}", self.report())
                }
                Some(_) => {}
                None => panic!("no {what} within {limit:?}: {}", self.report()),
            }
        }
    }

    /// Reads its output to the end and waits for it to exit, for at most
    /// [`SCRIPT_LIMIT`] since it started (then kills it); fails with its
    /// output unless it exited 0 having printed an `OK` line. Returns its
    /// stdout lines.
    pub async fn finish(mut self) -> Vec<String> {
        let deadline = tokio::time::Instant::from_std(self.started + SCRIPT_LIMIT);
        while self.next_line(deadline).await.is_some() {}
        let status: Option<ExitStatus> = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await; // polling a process, not synchronisation
        };
        let Some(status) = status else {
            panic!(
                "killed: still running after {SCRIPT_LIMIT:?}: {}",
                self.report()
            );
        };
        assert!(status.success(), "exit status {status}: {}", self.report());
        assert!(
            self.stdout.iter().any(|l| l.starts_with("OK")),
            "no OK line: {}",
            self.report()
        );
        eprintln!(
            "{}: {}",
            self.name,
            self.stdout.iter().rfind(|l| l.starts_with("OK")).unwrap()
        );
        std::mem::take(&mut self.stdout)
    }
}
