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

/// Runs `mosquitto_pub -h 127.0.0.1 -p <port> <args>` to completion, killing
/// it (and failing) if it is not done within [`STEP`].
pub fn mosquitto_pub_args(port: u16, args: &[&str]) {
    use std::process::{Command, Stdio};
    require_program("mosquitto_pub");
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mosquitto_pub");
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "mosquitto_pub {args:?} failed: {status}");
            return;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mosquitto_pub {args:?} did not finish within {STEP:?}");
        }
        std::thread::sleep(Duration::from_millis(10)); // polling a process, not synchronisation
    }
}
