//! Mosquitto's command-line clients (package mosquitto-clients).

use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::StreamExt;

use super::{require_program, STEP};

/// A running `mosquitto_sub -d` whose output lines (stdout and stderr) arrive
/// on a channel; killed when dropped.
pub struct MosqSub {
    child: std::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line read so far, for failure messages.
    pub seen: Vec<String>,
}

impl Drop for MosqSub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl MosqSub {
    /// Starts `mosquitto_sub -d <args>` (line-buffered) and waits for its SUBACK.
    pub async fn start(port: u16, args: &[&str]) -> MosqSub {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        require_program("mosquitto_sub");
        require_program("stdbuf");
        let port = port.to_string();
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub", "-d", "-h", "127.0.0.1", "-p", &port])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mosquitto_sub");
        let (tx, rx) = mpsc::unbounded();
        let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [out, err] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.unbounded_send(line).is_err() {
                        return;
                    }
                }
            });
        }
        let mut s = MosqSub {
            child,
            lines: rx,
            seen: Vec::new(),
        };
        s.wait_line("SUBACK", |l| l.contains("received SUBACK"))
            .await;
        s
    }

    /// Reads lines until one satisfies `pred`, for at most [`STEP`].
    pub async fn wait_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.next()).await {
                Ok(Some(l)) => {
                    self.seen.push(l.clone());
                    if pred(&l) {
                        return l;
                    }
                }
                Ok(None) => panic!(
                    "mosquitto_sub exited before {what}; output: {:#?}",
                    self.seen
                ),
                Err(_) => panic!(
                    "mosquitto_sub: no {what} within {STEP:?}; output: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// The next formatted message line (`MSG|...`), without the prefix.
    pub async fn msg(&mut self) -> String {
        let l = self.wait_line("message", |l| l.starts_with("MSG|")).await;
        l["MSG|".len()..].to_owned()
    }

    /// Message lines (`MSG|...`, without the prefix) printed within `limit`.
    pub async fn drain(&mut self, limit: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut msgs = Vec::new();
        while let Ok(Some(l)) = tokio::time::timeout_at(deadline, self.lines.next()).await {
            if let Some(p) = l.strip_prefix("MSG|") {
                msgs.push(p.to_owned());
            }
            self.seen.push(l);
        }
        msgs
    }
}

/// Longest run of one `mosquitto_pub` (connect, publish, wait for the
/// acknowledgements, disconnect): a hang guard, not a speed claim.
pub const MOSQUITTO_PUB_LIMIT: Duration = Duration::from_secs(2 * STEP.as_secs());

/// The one way tests run `mosquitto_pub`: `mosquitto_pub -h 127.0.0.1 -p
/// <port> <args>`, with `-l` and one message per line on stdin when `lines`
/// is given (otherwise `args` carry `-m`/`-n`). Blocks until it exits; fails
/// with its exit status and stderr if it fails, and kills it and fails with
/// its stderr if it is still running after [`MOSQUITTO_PUB_LIMIT`].
pub fn mosquitto_pub(port: u16, args: &[&str], lines: Option<&[String]>) {
    if let Err(failure) = mosquitto_pub_result(port, args, lines) {
        panic!("{failure}");
    }
}

/// Runs `mosquitto_pub` like [`mosquitto_pub`], and says how it failed
/// instead of failing the test (for refusals that are the point).
pub fn mosquitto_pub_result(
    port: u16,
    args: &[&str],
    lines: Option<&[String]>,
) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    require_program("mosquitto_pub");
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if lines.is_some() {
        cmd.arg("-l").stdin(Stdio::piped());
    } else {
        cmd.stdin(Stdio::null());
    }
    let mut child = cmd.spawn().expect("spawn mosquitto_pub");
    // Read stderr on a thread, so that a chatty failure cannot block on a
    // full pipe; it is reported however the run ends.
    let mut err = child.stderr.take().expect("stderr");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    if let Some(lines) = lines {
        let mut stdin = child.stdin.take().expect("stdin");
        for l in lines {
            writeln!(stdin, "{l}").expect("write to mosquitto_pub");
        }
        // Dropping stdin closes it: `-l` publishes what it read and exits.
    }
    let deadline = Instant::now() + MOSQUITTO_PUB_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait mosquitto_pub") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10)); // polling a process, not synchronisation
    };
    let stderr = err_reader.join().unwrap_or_default();
    match status {
        None => Err(format!(
            "mosquitto_pub {args:?} still running after {MOSQUITTO_PUB_LIMIT:?}: killed; \
             stderr: {stderr}"
        )),
        Some(status) if status.success() => Ok(()),
        Some(status) => Err(format!(
            "mosquitto_pub {args:?} failed ({status}); stderr: {stderr}"
        )),
    }
}

/// A Mosquitto broker (package mosquitto) on a port of 127.0.0.1, with
/// persistence in a folder of its own, for the bridge tests. Restartable;
/// stopped when dropped.
pub struct MosquittoBroker {
    pub port: u16,
    program: std::path::PathBuf,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl MosquittoBroker {
    /// Starts it with `extra` lines appended to its configuration (which
    /// has a 127.0.0.1 listener, anonymous clients and persistence).
    pub async fn start(tag: &str, extra: &str) -> MosquittoBroker {
        let program = require_program("mosquitto");
        let port = super::free_port();
        let dir = std::env::temp_dir().join(format!("ringmq-mosq-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mosquitto's folder");
        // Started as root, mosquitto runs as user `mosquitto`: it must be able
        // to write its store and log here.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
            .expect("open mosquitto's folder");
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
             persistence_location {}/\nlog_dest file {}/mosquitto.log\n\
             log_type all\n{extra}\n",
            dir.display(),
            dir.display()
        );
        std::fs::write(dir.join("mosquitto.conf"), conf).expect("mosquitto.conf");
        let mut m = MosquittoBroker {
            port,
            program,
            dir,
            child: None,
        };
        m.spawn().await;
        m
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    async fn spawn(&mut self) {
        let child = std::process::Command::new(&self.program)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn mosquitto");
        let child = self.child.insert(child);
        let deadline = Instant::now() + STEP;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                child.try_wait().expect("poll mosquitto").is_none(),
                "mosquitto exited at start"
            );
            assert!(Instant::now() < deadline, "mosquitto did not open its port");
            tokio::time::sleep(Duration::from_millis(20)).await; // polling a port
        }
    }

    /// SIGTERM (Mosquitto saves its sessions and queues), waits for the
    /// exit, bounded.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM mosquitto");
        let deadline = Instant::now() + STEP;
        while child.try_wait().expect("poll mosquitto").is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mosquitto did not stop on SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await; // polling an exit
        }
    }

    /// Stops it and starts it again on the same port with its saved state.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }
}

impl Drop for MosquittoBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
