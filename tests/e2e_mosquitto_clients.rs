//! Interoperability with the Eclipse Mosquitto command-line clients
//! (`mosquitto_pub` / `mosquitto_sub`, package mosquitto-clients): QoS 0/1/2,
//! retained messages, and MQTT 5.0 / 3.1.1 clients talking to each other.
//!
//! The tools are required: CI installs them (scripts/test.sh does), and a
//! missing tool fails these tests loudly rather than skipping them.
//!
//! Every process is bounded twice: by its own options (`-C n` message count,
//! `-W secs` timeout) and by a Rust-side deadline that kills it. The
//! subscriber runs with `-d` under `stdbuf -oL` so that its "received SUBACK"
//! line can be awaited before anything is published (no sleeps).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::*;

/// One message as `mosquitto_sub -F 'MSG|%t|%q|%r|%P|%p'` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Msg {
    topic: String,
    qos: u8,
    retain: bool,
    /// 5.0 user properties as mosquitto prints them (`k:v k:v`); empty for 3.1.1.
    props: String,
    payload: String,
}

const FORMAT: &str = "MSG|%t|%q|%r|%P|%p";

fn parse(line: &str) -> Option<Msg> {
    let rest = line.strip_prefix("MSG|")?;
    let mut f = rest.splitn(5, '|');
    Some(Msg {
        topic: f.next()?.to_owned(),
        qos: f.next()?.parse().ok()?,
        retain: f.next()? == "1",
        props: f.next()?.to_owned(),
        payload: f.next()?.to_owned(),
    })
}

/// Waits for `child` to exit by `deadline`, killing it (and failing) if not.
fn wait_bounded(child: &mut Child, deadline: Instant, what: &str) -> std::process::ExitStatus {
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running at its deadline: killed");
        }
        std::thread::sleep(Duration::from_millis(10)); // polling a process, not synchronisation
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// A running `mosquitto_sub`.
struct Sub {
    child: Child,
    lines: Receiver<String>,
    msgs: Vec<Msg>,
    name: String,
    wait_secs: u64,
    started: Instant,
}

impl Drop for Sub {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Sub {
    /// Starts `mosquitto_sub` as client `id` with protocol `version` (`311`
    /// or `5`), exiting after `count` messages or `wait_secs` seconds.
    fn spawn(
        broker: &TestBroker,
        id: &str,
        version: &str,
        qos: u8,
        topics: &[&str],
        count: usize,
        wait_secs: u64,
    ) -> Sub {
        require_program("mosquitto_sub");
        require_program("stdbuf");
        let mut cmd = Command::new("stdbuf");
        cmd.args(["-oL", "mosquitto_sub", "-d", "-h", "127.0.0.1"])
            .args(["-p", &broker.port.to_string()])
            .args(["-i", id, "-V", version, "-q", &qos.to_string()])
            .args(["-C", &count.to_string(), "-W", &wait_secs.to_string()])
            .args(["-F", FORMAT]);
        for t in topics {
            cmd.args(["-t", t]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mosquitto_sub");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Sub {
            child,
            lines,
            msgs: Vec::new(),
            name: format!("mosquitto_sub {id} -V {version}"),
            wait_secs,
            started: Instant::now(),
        }
    }

    /// Blocks until the subscriber printed that its SUBACK arrived.
    fn wait_subscribed(&mut self) {
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains("received SUBACK") => return,
                Ok(line) => {
                    if let Some(m) = parse(&line) {
                        self.msgs.push(m);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("{}: no SUBACK within {STEP:?}", self.name)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let err = stderr_of(&mut self.child);
                    panic!("{}: exited before its SUBACK: {err}", self.name)
                }
            }
        }
    }

    /// Waits for the process to end by itself (`-C` reached or `-W` expired;
    /// killed if it is still running STEP after that) and returns every
    /// message it printed.
    fn finish(mut self) -> (Vec<Msg>, bool) {
        let deadline = self.started + Duration::from_secs(self.wait_secs) + STEP;
        let status = wait_bounded(&mut self.child, deadline, &self.name);
        let err = stderr_of(&mut self.child);
        let mut msgs = std::mem::take(&mut self.msgs);
        // Every line up to the end of its output (the reader thread drops the
        // channel there), not just those that came within a short window: a
        // busy machine may be slow to pass the last ones on.
        loop {
            match self.lines.recv_timeout(STEP) {
                Ok(line) => {
                    if let Some(m) = parse(&line) {
                        msgs.push(m);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("{}: output still open {STEP:?} after it exited", self.name)
                }
            }
        }
        if !status.success() {
            eprintln!("{}: exit {status}: {err}", self.name);
        }
        (msgs, status.success())
    }
}

fn payloads(msgs: &[Msg]) -> Vec<String> {
    msgs.iter().map(|m| m.payload.clone()).collect()
}

/// QoS 0, 1 and 2, each with both protocol versions on both sides, 20
/// messages per run, subscriber and publisher on different cores.
#[test]
fn mosquitto_qos_levels_and_versions() {
    const COUNT: usize = 20;
    let broker = start2();
    for qos in 0..=2u8 {
        for (pub_v, sub_v) in [("311", "311"), ("5", "5"), ("5", "311"), ("311", "5")] {
            let tag = format!("q{qos}-p{pub_v}-s{sub_v}");
            let topic = format!("mq/{tag}");
            let mut sub = Sub::spawn(
                &broker,
                &id_on(1, 2, &format!("ms-{tag}")),
                sub_v,
                qos,
                &[&topic],
                COUNT,
                10,
            );
            sub.wait_subscribed();
            let lines: Vec<String> = (0..COUNT).map(|i| numbered(&tag, i)).collect();
            mosquitto_pub(
                broker.port,
                &[
                    "-i",
                    &id_on(0, 2, &format!("mp-{tag}")),
                    "-V",
                    pub_v,
                    "-t",
                    &topic,
                    "-q",
                    &qos.to_string(),
                ],
                Some(&lines),
            );
            let (msgs, ok) = sub.finish();
            assert!(
                ok,
                "{tag}: mosquitto_sub did not get its {COUNT} messages: {msgs:?}"
            );
            assert_eq!(payloads(&msgs), lines, "{tag}: all, in order, once");
            for m in &msgs {
                assert_eq!(
                    (m.topic.as_str(), m.qos, m.retain),
                    (topic.as_str(), qos, false),
                    "{tag}"
                );
            }
        }
    }
}

/// Delivery QoS is min(publish, subscription) with Mosquitto's clients too.
#[test]
fn mosquitto_qos_downgrade() {
    let broker = start2();
    for (pub_q, sub_q) in [(2u8, 1u8), (2, 0), (1, 0)] {
        let tag = format!("dg-p{pub_q}-s{sub_q}");
        let topic = format!("mq/{tag}");
        let mut sub = Sub::spawn(
            &broker,
            &id_on(1, 2, &format!("ms-{tag}")),
            "311",
            sub_q,
            &[&topic],
            1,
            10,
        );
        sub.wait_subscribed();
        mosquitto_pub(
            broker.port,
            &[
                "-i",
                &id_on(0, 2, &format!("mp-{tag}")),
                "-V",
                "311",
                "-t",
                &topic,
                "-q",
                &pub_q.to_string(),
                "-m",
                "x",
            ],
            None,
        );
        let (msgs, ok) = sub.finish();
        assert!(ok, "{tag}: {msgs:?}");
        assert_eq!(
            msgs[0].qos, sub_q,
            "{tag}: delivered at min(publish, subscription)"
        );
    }
}

/// `mosquitto_pub -r` stores a retained message that a later `mosquitto_sub`
/// gets with the retain flag, from either protocol version; `-r -n` clears it.
#[test]
fn mosquitto_retained() {
    let broker = start2();
    mosquitto_pub(
        broker.port,
        &[
            "-i",
            &id_on(0, 2, "mr-pub"),
            "-V",
            "311",
            "-t",
            "mq/ret",
            "-q",
            "1",
            "-r",
            "-m",
            "kept",
        ],
        None,
    );
    for (core, version) in [(0, "311"), (1, "5")] {
        let mut sub = Sub::spawn(
            &broker,
            &id_on(core, 2, &format!("mr-sub{version}")),
            version,
            1,
            &["mq/ret"],
            1,
            10,
        );
        sub.wait_subscribed();
        let (msgs, ok) = sub.finish();
        assert!(ok, "{msgs:?}");
        assert_eq!(
            msgs,
            vec![Msg {
                topic: "mq/ret".into(),
                qos: 1,
                retain: true,
                props: String::new(),
                payload: "kept".into(),
            }],
            "retained message for a {version} subscriber on core {core}"
        );
    }
    // Replace it from a 5.0 publisher, then clear it with an empty retained
    // message.
    mosquitto_pub(
        broker.port,
        &[
            "-i",
            &id_on(1, 2, "mr-pub5"),
            "-V",
            "5",
            "-t",
            "mq/ret",
            "-q",
            "1",
            "-r",
            "-m",
            "v2",
        ],
        None,
    );
    let mut sub = Sub::spawn(
        &broker,
        &id_on(0, 2, "mr-sub-v2"),
        "311",
        1,
        &["mq/ret"],
        1,
        10,
    );
    sub.wait_subscribed();
    let (msgs, ok) = sub.finish();
    assert!(
        ok && msgs.len() == 1 && msgs[0].payload == "v2" && msgs[0].retain,
        "{msgs:?}"
    );

    mosquitto_pub(
        broker.port,
        &[
            "-i",
            &id_on(0, 2, "mr-clear"),
            "-V",
            "311",
            "-t",
            "mq/ret",
            "-q",
            "1",
            "-r",
            "-n",
        ],
        None,
    );
    mosquitto_pub(
        broker.port,
        &[
            "-i",
            &id_on(0, 2, "mr-marker"),
            "-V",
            "311",
            "-t",
            "mq/marker",
            "-q",
            "1",
            "-r",
            "-m",
            "m",
        ],
        None,
    );
    // One SUBSCRIBE with mq/ret first, then mq/marker: the broker sends the
    // retained matches of both right after the SUBACK, filter by filter, so
    // the first message being the marker shows mq/ret holds nothing.
    let mut sub = Sub::spawn(
        &broker,
        &id_on(1, 2, "mr-after-clear"),
        "311",
        1,
        &["mq/ret", "mq/marker"],
        1,
        10,
    );
    sub.wait_subscribed();
    let (msgs, ok) = sub.finish();
    assert!(ok, "{msgs:?}");
    assert_eq!(
        msgs[0].topic, "mq/marker",
        "cleared retained message still delivered: {msgs:?}"
    );
}

/// 5.0 user properties from `mosquitto_pub -D publish user-property` reach a
/// 5.0 `mosquitto_sub` unchanged and in order; a 3.1.1 subscriber gets the
/// same message without them; a 3.1.1 publisher reaches a 5.0 subscriber.
#[test]
fn mosquitto_v5_user_properties_and_v311_interop() {
    let broker = start2();
    let mut sub5 = Sub::spawn(&broker, &id_on(1, 2, "mu-sub5"), "5", 2, &["mu/#"], 2, 10);
    let mut sub4 = Sub::spawn(&broker, &id_on(0, 2, "mu-sub4"), "311", 2, &["mu/#"], 2, 10);
    sub5.wait_subscribed();
    sub4.wait_subscribed();
    mosquitto_pub(
        broker.port,
        &[
            "-i",
            &id_on(0, 2, "mu-pub5"),
            "-V",
            "5",
            "-t",
            "mu/five",
            "-q",
            "2",
            "-m",
            "from5",
            "-D",
            "publish",
            "user-property",
            "b",
            "2",
            "-D",
            "publish",
            "user-property",
            "a",
            "1",
        ],
        None,
    );
    mosquitto_pub(
        broker.port,
        &[
            "-i",
            &id_on(1, 2, "mu-pub4"),
            "-V",
            "311",
            "-t",
            "mu/four",
            "-q",
            "1",
            "-m",
            "from4",
        ],
        None,
    );
    let (m5, ok5) = sub5.finish();
    let (m4, ok4) = sub4.finish();
    assert!(ok5 && ok4, "5.0: {m5:?}, 3.1.1: {m4:?}");
    assert_eq!(
        m5,
        vec![
            Msg {
                topic: "mu/five".into(),
                qos: 2,
                retain: false,
                props: "b:2 a:1".into(),
                payload: "from5".into()
            },
            Msg {
                topic: "mu/four".into(),
                qos: 1,
                retain: false,
                props: String::new(),
                payload: "from4".into()
            },
        ]
    );
    assert_eq!(
        m4,
        vec![
            Msg {
                topic: "mu/five".into(),
                qos: 2,
                retain: false,
                props: String::new(),
                payload: "from5".into()
            },
            Msg {
                topic: "mu/four".into(),
                qos: 1,
                retain: false,
                props: String::new(),
                payload: "from4".into()
            },
        ]
    );
}

/// `mosquitto_sub -c` (persistent session) gets the QoS 1 messages published
/// while it was away.
#[test]
fn mosquitto_persistent_session() {
    let broker = start2();
    let id = id_on(1, 2, "mps-sub");
    // Subscribe with clean session off, then leave (-W 1 with no traffic: the
    // only way to make mosquitto_sub subscribe and exit by itself).
    let mut first = Command::new("mosquitto_sub");
    first
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-i",
            &id,
            "-c",
            "-q",
            "1",
        ])
        .args(["-t", "mps/t", "-E"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = first.spawn().expect("spawn mosquitto_sub -E");
    let status = wait_bounded(
        &mut child,
        Instant::now() + Duration::from_secs(10),
        "mosquitto_sub -E",
    );
    assert!(
        status.success(),
        "mosquitto_sub -c -E: {}",
        stderr_of(&mut child)
    );
    let lines: Vec<String> = (0..5).map(|i| numbered("mps", i)).collect();
    mosquitto_pub(
        broker.port,
        &[
            "-i",
            &id_on(0, 2, "mps-pub"),
            "-V",
            "311",
            "-t",
            "mps/t",
            "-q",
            "1",
        ],
        Some(&lines),
    );
    let mut back = Command::new("mosquitto_sub");
    back.args([
        "-h",
        "127.0.0.1",
        "-p",
        &broker.port.to_string(),
        "-i",
        &id,
        "-c",
        "-q",
        "1",
    ])
    .args(["-t", "mps/t", "-C", "5", "-W", "10", "-F", FORMAT])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = back.spawn().expect("spawn mosquitto_sub -c");
    let status = wait_bounded(
        &mut child,
        Instant::now() + Duration::from_secs(12),
        "mosquitto_sub -c",
    );
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    assert!(
        status.success(),
        "reconnected mosquitto_sub: {}",
        stderr_of(&mut child)
    );
    let got: Vec<String> = out.lines().filter_map(parse).map(|m| m.payload).collect();
    assert_eq!(got, lines);
}
