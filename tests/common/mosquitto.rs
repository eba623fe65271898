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
