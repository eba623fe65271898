//! The broker under test: started in-process, stopped (bounded) on drop.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Deref;
use std::time::{Duration, Instant};

use ringmq::config::Config;
use ringmq::metrics::Counters;
use ringmq::router::owner_core;
use ringmq::server::Broker;

/// A running in-process broker, shut down (bounded) when dropped.
pub struct TestBroker {
    broker: Option<Broker>,
    pub addr: SocketAddr,
    pub port: u16,
    pub cores: usize,
}

impl Deref for TestBroker {
    type Target = Broker;
    fn deref(&self) -> &Broker {
        self.broker.as_ref().expect("broker running")
    }
}

impl TestBroker {
    /// Polls the broker's counters (refreshed by each core every 500 ms tick)
    /// until `pred` holds, for at most `limit`. Returns the last snapshot.
    ///
    /// Only snapshots every core published after the call began count: an
    /// older one may predate what the test did just before (a snapshot from
    /// before a connect shows `connections_current == 0` as well as one from
    /// after its close does).
    pub async fn wait_counters(
        &self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&Counters) -> bool,
    ) -> Counters {
        let deadline = Instant::now() + limit;
        let since = self.counter_publications();
        let mut last = None;
        loop {
            let now = self.counter_publications();
            if now.iter().zip(&since).all(|(n, s)| n > s) {
                let c = self.counters();
                if pred(&c) {
                    return c;
                }
                last = Some(c);
            }
            if Instant::now() >= deadline {
                match &last {
                    Some(c) => panic!("counters never satisfied `{what}` within {limit:?}: {c:?}"),
                    None => panic!("no core published counters within {limit:?} (`{what}`)"),
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await; // polling interval, not sync
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let Some(broker) = self.broker.take() else {
            return;
        };
        // Bounded: a broker that fails to stop must not hang the test binary.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            broker.shutdown();
            let _ = tx.send(());
        });
        if rx.recv_timeout(Duration::from_secs(10)).is_err() {
            eprintln!(
                "WARNING: broker on port {} did not shut down within 10 s",
                self.port
            );
        }
    }
}

/// The configuration every test starts from: loopback, port 0 (the kernel
/// picks one, shared by every core's listener), `cores` cores, no pinning (the
/// CI machine is shared), quiet logs.
pub fn test_config(cores: usize) -> Config {
    Config {
        bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port: 0,
        cores,
        pin_cores: false,
        log_level: "warn".to_owned(),
        // Memory only, unless the test is about the store (and gives it a
        // directory of its own).
        persistence: false,
        ..Config::default()
    }
}

/// Starts a broker on 127.0.0.1 with `cores` cores, after `tweak` adjusted the
/// configuration (which must still validate).
pub fn start(cores: usize, tweak: impl FnOnce(&mut Config)) -> TestBroker {
    start_result(cores, tweak).expect("broker starts")
}

/// As [`start`], for tests where starting must fail.
pub fn start_result(cores: usize, tweak: impl FnOnce(&mut Config)) -> anyhow::Result<TestBroker> {
    let mut config = test_config(cores);
    tweak(&mut config);
    config.validate().expect("test configuration must be valid");
    let broker = Broker::start(config)?;
    let port = broker.addr.port();
    assert_ne!(port, 0, "Broker::start must report the port it bound");
    assert_eq!(broker.addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    Ok(TestBroker {
        addr: broker.addr,
        port,
        cores,
        broker: Some(broker),
    })
}

/// The address of the broker's first listener with `scheme` (`mqtt`,
/// `mqtts`, `ws`, `wss`).
pub fn addr_of(broker: &TestBroker, scheme: &str) -> SocketAddr {
    broker
        .listeners()
        .into_iter()
        .find(|(s, _)| *s == scheme)
        .map(|(_, a)| a)
        .unwrap_or_else(|| panic!("no {scheme} listener"))
}

/// A free port on 127.0.0.1 (the kernel's pick, released for a child
/// process to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("an ephemeral port")
        .port()
}

/// Two cores, defaults otherwise.
pub fn start2() -> TestBroker {
    start(2, |_| {})
}

/// The first client id `prefix-N` whose session is owned by `core`.
pub fn id_on(core: usize, cores: usize, prefix: &str) -> String {
    (0..10_000)
        .map(|n| format!("{prefix}-{n}"))
        .find(|id| owner_core(id, cores) == core)
        .expect("some id hashes to every core")
}

/// Waits (bounded) until a ringmq process started as `child` accepts on
/// `addr`; fails if it exits first.
pub async fn wait_for_port(addr: std::net::SocketAddr, child: &mut std::process::Child) {
    let deadline = std::time::Instant::now() + super::STEP;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            child.try_wait().expect("poll").is_none(),
            "ringmq exited at start"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "ringmq did not open its port"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await; // polling a port
    }
}
