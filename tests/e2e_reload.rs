//! The broker binary under signals, as an operator runs it: SIGHUP re-reads
//! the configuration (the log level at once; other changed keys named as
//! waiting for a restart; a file that does not load changes nothing) and
//! never drops a client; JSON logs parse line by line and carry the connect,
//! the disconnect with its reason and the shutdown totals; SIGTERM stops it;
//! systemd (`Type=notify`, a socket of the test's own) hears READY,
//! RELOADING and STOPPING at the right moments.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use common::*;
use ringmq_proto::codec::{Packet, QosPid};

/// How long any one expected log line may take.
const STEP: Duration = Duration::from_secs(10);

struct Running {
    child: Child,
    lines: Receiver<serde_json::Value>,
    /// Every line so far, for failure messages.
    seen: Vec<String>,
}

impl Running {
    fn start(config: &std::path::Path, notify_socket: &std::path::Path) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .arg("-c")
            .arg(config)
            .env("NOTIFY_SOCKET", notify_socket)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ringmq");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let parsed = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
                if tx.send(parsed).is_err() {
                    return;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line whose message is `message` (bounded by [`STEP`]).
    fn wait_for(&mut self, message: &str) -> serde_json::Value {
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.to_string());
                    if line["message"] == message {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line {message:?} within {STEP:?}; got:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What systemd would read on its notify socket: the next datagram.
fn next_notice(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the socket's timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn write_config(path: &std::path::Path, port: u16, level: &str, extra: &str) {
    let text = format!(
        "port = {port}\ncores = 1\npin_cores = false\npersistence = false\n\
         log_format = \"json\"\nlog_level = \"{level}\"\n{extra}\n"
    );
    std::fs::write(path, text).expect("write config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_without_dropping_clients_and_json_logs_tell_the_story() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("ringmq.toml");
    let port = free_port();
    write_config(&config, port, "info", "");
    let notify_path = dir.path().join("notify");
    let systemd = UnixDatagram::bind(&notify_path).expect("notify socket");
    systemd.set_read_timeout(Some(STEP)).unwrap();
    let mut broker = Running::start(&config, &notify_path);
    broker.wait_for("ringmq listening");
    assert_eq!(
        next_notice(&systemd),
        "READY=1\n",
        "Type=notify: ready once listening"
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();

    let (mut client, _) = Raw::connect_v5(addr, "reload-client", vec![]).await;
    let connected = broker.wait_for("client connected");
    assert_eq!(connected["client_id"], "reload-client");
    assert_eq!(connected["protocol"], "5.0");

    // The log level and a live limit apply at once; `cores` waits for a restart.
    write_config(&config, port, "debug", "max_subscriptions_per_client = 1");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, text.replace("cores = 1", "cores = 2")).expect("config");
    broker.signal("HUP");
    let changed = broker.wait_for("reload: log_level changed");
    assert_eq!(
        (changed["from"].as_str(), changed["to"].as_str()),
        (Some("info"), Some("debug"))
    );
    let limits = broker.wait_for("reload: limits changed");
    assert_eq!(limits["keys"], "max_subscriptions_per_client");
    let waiting =
        broker.wait_for("reload: these settings changed and take effect only after a restart");
    assert_eq!(waiting["keys"], "cores");
    let reloading = next_notice(&systemd);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    assert_eq!(
        next_notice(&systemd),
        "READY=1\n",
        "ready again after the reload"
    );
    client.send(&Packet::PingReq).await;
    assert!(
        matches!(client.recv().await, Packet::PingResp),
        "the client survives a reload"
    );
    let filters = [("a/1", RawQoS::AtMostOnce), ("a/2", RawQoS::AtMostOnce)];
    let codes = client.subscribe(1, &filters).await;
    assert_eq!(codes[0], 0, "the first filter is within the reloaded limit");
    assert!(codes[1] >= 0x80, "the second is refused by it: {codes:?}");

    std::fs::write(&config, "persistence = nope\n").expect("break config");
    broker.signal("HUP");
    broker.wait_for("reload: the configuration does not load; nothing changed");
    client.send(&Packet::PingReq).await;
    assert!(
        matches!(client.recv().await, Packet::PingResp),
        "a bad file changes nothing"
    );
    assert!(
        broker.child.try_wait().expect("poll").is_none(),
        "SIGHUP never stops the broker"
    );

    // A drop by policy is logged, with the client and the reason.
    let mut offline = Raw::connect(addr, "offline-sub", false, 60, None).await;
    offline.subscribe_ok("d/t", RawQoS::AtMostOnce, 0).await;
    offline.disconnect().await;
    broker.wait_for("client disconnected");
    client
        .send(&publish_packet("d/t", QosPid::AtMostOnce, false, b"missed"))
        .await;
    let dropped = broker
        .wait_for("dropping deliveries to this client (counted in ringmq_messages_dropped_total)");
    assert_eq!(
        (dropped["client_id"].as_str(), dropped["reason"].as_str()),
        (Some("offline-sub"), Some("offline_qos0"))
    );

    client.disconnect().await;
    let gone = broker.wait_for("client disconnected");
    assert_eq!(gone["reason"], "client sent DISCONNECT");

    broker.signal("TERM");
    // The notices of the second reload, then the stop.
    let notices: Vec<String> = (0..3).map(|_| next_notice(&systemd)).collect();
    assert_eq!(notices[2], "STOPPING=1\n", "{notices:?}");
    let stopped = broker.wait_for("ringmq stopped");
    assert_eq!(stopped["connections_total"], 2);
    let totals = stopped["totals"].as_str().expect("totals");
    assert!(
        totals.split(' ').all(|kv| kv.split_once('=').is_some()),
        "{totals}"
    );
    let deadline = Instant::now() + STEP;
    while broker.child.try_wait().expect("poll").is_none() {
        assert!(Instant::now() < deadline, "SIGTERM did not stop the broker");
        std::thread::sleep(Duration::from_millis(20)); // polling the process
    }
}
