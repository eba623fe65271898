//! Real `nats-server`s (Debian's package) for the cluster tests: one, or
//! several joined by routes, each on ports the server picks itself (read
//! back from its log, so no port is picked and released first).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::STEP;

/// A running `nats-server`, killed when dropped.
pub struct NatsServer {
    child: Child,
    pub port: u16,
    pub route_port: u16,
    /// Every log line so far, for failure messages.
    log: Arc<Mutex<Vec<String>>>,
    /// JetStream's store, with JetStream.
    _store: Option<tempfile::TempDir>,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a server runs: alone, with JetStream, or in a cluster routed to
/// the given route ports.
enum Mode {
    Solo,
    JetStream,
    Clustered { routes: Vec<u16>, jetstream: bool },
}

fn nats_server() -> std::path::PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin"] {
        let candidate = std::path::Path::new(dir).join("nats-server");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`nats-server` is not installed but these tests need it: apt-get install -y nats-server (scripts/test.sh does this)");
}

impl NatsServer {
    /// One server on 127.0.0.1, without JetStream.
    pub fn start(name: &str) -> NatsServer {
        NatsServer::start_with(name, Mode::Solo)
    }

    /// One server with JetStream (its store in a directory of its own).
    pub fn with_jetstream(name: &str) -> NatsServer {
        NatsServer::start_with(name, Mode::JetStream)
    }

    fn start_with(name: &str, mode: Mode) -> NatsServer {
        let mut cmd = Command::new(nats_server());
        cmd.args(["-a", "127.0.0.1", "-p", "-1", "-n", name]);
        let mut store = None;
        let mut routes: &[u16] = &[];
        // JetStream in a cluster will not start without a route configured;
        // the first server's is to a port nothing listens on (it retries it
        // quietly), the others route to the first.
        const NO_ONE: &[u16] = &[1];
        match &mode {
            Mode::Solo => {}
            Mode::JetStream => {
                let dir = tempfile::tempdir().expect("a JetStream store");
                cmd.arg("-js").arg("-sd").arg(dir.path());
                store = Some(dir);
            }
            Mode::Clustered {
                routes: to,
                jetstream,
            } => {
                cmd.args(["--cluster_name", "ringmq-test"])
                    .args(["--cluster", "nats://127.0.0.1:-1"]);
                routes = to;
                if *jetstream && to.is_empty() {
                    routes = NO_ONE;
                }
                if *jetstream {
                    let dir = tempfile::tempdir().expect("a JetStream store");
                    cmd.arg("-js").arg("-sd").arg(dir.path());
                    store = Some(dir);
                }
            }
        }
        if !routes.is_empty() {
            let urls: Vec<String> = routes
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            cmd.args(["--routes", &urls.join(",")]);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nats-server");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let port_after = |line: &str, what: &str| {
            let (_, rest) = line.split_once(what)?;
            rest.trim().rsplit(':').next()?.parse::<u16>().ok()
        };
        let (mut port, mut route_port) = (None, None);
        let deadline = Instant::now() + STEP;
        if !matches!(mode, Mode::Clustered { .. }) {
            route_port = Some(0);
        }
        while port.is_none() || route_port.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    port = port.or(port_after(&line, "Listening for client connections on"));
                    route_port =
                        route_port.or(port_after(&line, "Listening for route connections on"));
                }
                Err(_) => panic!(
                    "nats-server {name} did not report its ports within {STEP:?}: {:#?}",
                    log.lock().unwrap()
                ),
            }
        }
        NatsServer {
            child,
            port: port.unwrap_or_default(),
            route_port: route_port.unwrap_or_default(),
            log,
            _store: store,
        }
    }

    /// `n` servers in one NATS cluster (each routed to the first; NATS
    /// meshes the rest itself).
    pub fn cluster(n: usize) -> Vec<NatsServer> {
        NatsServer::cluster_of(n, false)
    }

    /// `n` servers in one NATS cluster with JetStream replicated among them
    /// (see [`NatsServer::wait_jetstream`] before relying on it).
    pub fn jetstream_cluster(n: usize) -> Vec<NatsServer> {
        NatsServer::cluster_of(n, true)
    }

    fn cluster_of(n: usize, jetstream: bool) -> Vec<NatsServer> {
        let mode = |routes| Mode::Clustered { routes, jetstream };
        let first = NatsServer::start_with("n0", mode(Vec::new()));
        let seed = first.route_port;
        let mut all = vec![first];
        for i in 1..n {
            all.push(NatsServer::start_with(&format!("n{i}"), mode(vec![seed])));
        }
        all
    }

    /// Waits (bounded) until JetStream on this server's cluster takes a
    /// stream with `replicas` copies: its servers found each other and
    /// elected a leader.
    pub async fn wait_jetstream(&self, replicas: usize) {
        let client = async_nats::connect(self.url())
            .await
            .expect("connect to NATS");
        let js = async_nats::jetstream::new(client);
        let deadline = Instant::now() + STEP * 4;
        let probe = async_nats::jetstream::stream::Config {
            name: "ringmq_test_probe".into(),
            subjects: vec!["ringmq-test-probe".into()],
            num_replicas: replicas,
            ..Default::default()
        };
        while js.get_or_create_stream(probe.clone()).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "JetStream with {replicas} replicas never became available: {:#?}",
                self.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await; // polling JetStream's election
        }
        let _ = js.delete_stream("ringmq_test_probe").await;
    }

    /// Waits (bounded) until each of `streams` has a leader again, as seen
    /// through this server: after a server of the cluster was lost,
    /// JetStream elects new leaders for what it led, which takes seconds.
    pub async fn wait_streams_led(&self, streams: &[&str]) {
        let client = async_nats::connect(self.url())
            .await
            .expect("connect to NATS");
        let js = async_nats::jetstream::new(client);
        let deadline = Instant::now() + STEP * 8;
        for name in streams {
            loop {
                if let Ok(stream) = js.get_stream(*name).await {
                    let info = stream.cached_info();
                    if info.cluster.as_ref().is_some_and(|c| c.leader.is_some()) {
                        break;
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "stream {name} found no leader: {:#?}",
                    self.log.lock().unwrap()
                );
                tokio::time::sleep(Duration::from_millis(100)).await; // polling JetStream's election
            }
        }
    }

    /// Waits (bounded) until the value JetStream's session bucket (prefix
    /// `test`) holds for `client_id` contains `text`.
    pub async fn wait_session_record(&self, client_id: &str, text: &str) {
        let client = async_nats::connect(self.url())
            .await
            .expect("connect to NATS");
        let js = async_nats::jetstream::new(client);
        let key: String = client_id.bytes().map(|b| format!("{b:02x}")).collect();
        let deadline = Instant::now() + STEP;
        loop {
            if let Ok(bucket) = js.get_key_value("test_sessions").await {
                if let Ok(Some(entry)) = bucket.entry(key.as_str()).await {
                    let value = &entry.value[..];
                    if value.windows(text.len()).any(|w| w == text.as_bytes()) {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no record of {client_id}'s session with {text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await; // polling JetStream
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// kill -9.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (bounded) until the server's log has `n` lines containing
    /// `text` (route connections, for example).
    pub async fn wait_log(&self, text: &str, n: usize) {
        let deadline = Instant::now() + STEP * 2;
        loop {
            let count = self
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(text))
                .count();
            if count >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server never logged {n} x {text:?}: {:#?}",
                self.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await; // polling a log
        }
    }
}
