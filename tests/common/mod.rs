//! Shared harness for the end-to-end tests (`tests/e2e_*.rs`).
//!
//! - [`start`] runs a broker in-process on 127.0.0.1 and stops it on drop.
//! - [`id_on`] picks client ids so that a client lands on a chosen core.
//! - [`V4`] / [`V5`] wrap rumqttc's 3.1.1 and 5.0 clients: the event loop runs
//!   in its own task and every incoming packet is forwarded to a channel, so a
//!   test waits for events (CONNACK, SUBACK, PUBLISH ...) with a bound instead
//!   of sleeping.
//! - [`Raw`] is a client driven by ringmq's own codec over a plain socket, for
//!   exact bytes, malformed input and abrupt ends.
//!
//! Every wait here is bounded: [`STEP`] for one expected event, explicit
//! deadlines elsewhere. A hang fails the test with a message, never the CI job.

#![allow(dead_code, unused_imports)]

use std::collections::VecDeque;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Deref;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::channel::mpsc;
use futures::StreamExt;
use ringmq::codec::{self, Protocol};
use ringmq::config::Config;
use ringmq::metrics::Counters;
use ringmq::router::owner_core;
use ringmq::server::Broker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// Longest wait for one expected event (a CONNACK, a SUBACK, the next message).
pub const STEP: Duration = Duration::from_secs(5);

/// How long to watch for something that must NOT arrive. Only used for negative
/// assertions; never as synchronisation.
pub const QUIET: Duration = Duration::from_millis(300);

/// Awaits `fut` for at most `limit`, failing the test with `what` on expiry.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

// ---- the broker ------------------------------------------------------------------

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
    pub async fn wait_counters(
        &self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&Counters) -> bool,
    ) -> Counters {
        let deadline = Instant::now() + limit;
        loop {
            let c = self.counters();
            if pred(&c) {
                return c;
            }
            if Instant::now() >= deadline {
                panic!("counters never satisfied `{what}` within {limit:?}: {c:?}");
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
        ..Config::default()
    }
}

/// Starts a broker on 127.0.0.1 with `cores` cores, after `tweak` adjusted the
/// configuration (which must still validate).
pub fn start(cores: usize, tweak: impl FnOnce(&mut Config)) -> TestBroker {
    let mut config = test_config(cores);
    tweak(&mut config);
    config.validate().expect("test configuration must be valid");
    let broker = Broker::start(config).expect("broker starts");
    let port = broker.addr.port();
    assert_ne!(port, 0, "Broker::start must report the port it bound");
    assert_eq!(broker.addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    TestBroker {
        addr: broker.addr,
        port,
        cores,
        broker: Some(broker),
    }
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

// ---- rumqttc clients (3.1.1 and 5.0) -----------------------------------------------

pub mod v4 {
    pub use rumqttc::{
        AsyncClient, ConnAck, ConnectReturnCode, Event, EventLoop, LastWill, MqttOptions, Packet,
        Publish, QoS, SubscribeReasonCode,
    };
}

pub mod v5 {
    pub use rumqttc::v5::mqttbytes::v5::{
        ConnAck, ConnectReturnCode, Filter, LastWill, Packet, Publish, PublishProperties,
        RetainForwardRule, SubscribeReasonCode,
    };
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
}

/// What a client's event-loop task reports.
#[derive(Debug)]
pub enum Ev<P> {
    Packet(P),
    /// The connection ended (the error rumqttc gave); the task has stopped.
    Closed(String),
}

/// What [`Client`] needs from one version of rumqttc: its types, how to poll
/// its event loop and how to read the few packets the harness looks at.
pub trait Proto: Sized + 'static {
    type Client: Send + Sync;
    type EventLoop: Send + 'static;
    type Packet: std::fmt::Debug + Send + 'static;
    type Publish: Clone + std::fmt::Debug;
    type ConnAck;
    type QoS: Copy + PartialEq + std::fmt::Debug + Send;
    type SubCode: std::fmt::Debug + PartialEq;

    /// The next event: `Some(packet)` for an incoming packet worth reporting,
    /// `None` for outgoing packets and PINGRESPs, `Err` when the connection ended.
    fn poll(
        eventloop: &mut Self::EventLoop,
    ) -> impl Future<Output = Result<Option<Self::Packet>, String>> + Send;
    fn connack(p: &Self::Packet) -> Option<Self::ConnAck>;
    fn as_publish(p: &Self::Packet) -> Option<&Self::Publish>;
    fn into_publish(p: Self::Packet) -> Result<Self::Publish, Self::Packet>;
    fn suback(p: &Self::Packet) -> Option<Vec<Self::SubCode>>;
    /// Whether `p` completes an outgoing PUBLISH of `qos` (PUBACK or PUBCOMP).
    fn completes(p: &Self::Packet, qos: Self::QoS) -> bool;
    fn granted(qos: Self::QoS) -> Self::SubCode;
    fn subscribe(
        client: &Self::Client,
        filter: &str,
        qos: Self::QoS,
    ) -> impl Future<Output = ()> + Send;
    fn publish(
        client: &Self::Client,
        topic: &str,
        qos: Self::QoS,
        retain: bool,
        payload: Vec<u8>,
    ) -> impl Future<Output = ()> + Send;
    fn disconnect(client: &Self::Client) -> impl Future<Output = ()> + Send;
}

/// rumqttc's 3.1.1 client.
pub struct Mqtt311;
/// rumqttc's 5.0 client.
pub struct Mqtt5;

/// Implements [`Proto`] for one rumqttc version: `$m` is its module (`v4` or
/// `v5`), `$ping` the pattern of its PINGRESP packet.
macro_rules! rumqttc_proto {
    ($name:ident, $m:ident, $ping:pat) => {
        impl Proto for $name {
            type Client = $m::AsyncClient;
            type EventLoop = $m::EventLoop;
            type Packet = $m::Packet;
            type Publish = $m::Publish;
            type ConnAck = $m::ConnAck;
            type QoS = $m::QoS;
            type SubCode = $m::SubscribeReasonCode;

            fn poll(
                eventloop: &mut $m::EventLoop,
            ) -> impl Future<Output = Result<Option<$m::Packet>, String>> + Send {
                async move {
                    match eventloop.poll().await {
                        Ok($m::Event::Incoming($ping)) | Ok($m::Event::Outgoing(_)) => Ok(None),
                        Ok($m::Event::Incoming(p)) => Ok(Some(p)),
                        Err(e) => Err(e.to_string()),
                    }
                }
            }
            fn connack(p: &$m::Packet) -> Option<$m::ConnAck> {
                match p {
                    $m::Packet::ConnAck(ack) => Some(ack.clone()),
                    _ => None,
                }
            }
            fn as_publish(p: &$m::Packet) -> Option<&$m::Publish> {
                match p {
                    $m::Packet::Publish(p) => Some(p),
                    _ => None,
                }
            }
            fn into_publish(p: $m::Packet) -> Result<$m::Publish, $m::Packet> {
                match p {
                    $m::Packet::Publish(p) => Ok(p),
                    other => Err(other),
                }
            }
            fn suback(p: &$m::Packet) -> Option<Vec<$m::SubscribeReasonCode>> {
                match p {
                    $m::Packet::SubAck(s) => Some(s.return_codes.clone()),
                    _ => None,
                }
            }
            fn completes(p: &$m::Packet, qos: $m::QoS) -> bool {
                match p {
                    $m::Packet::PubAck(_) => qos == $m::QoS::AtLeastOnce,
                    $m::Packet::PubComp(_) => qos == $m::QoS::ExactlyOnce,
                    _ => false,
                }
            }
            fn granted(qos: $m::QoS) -> $m::SubscribeReasonCode {
                $m::SubscribeReasonCode::Success(qos)
            }
            fn subscribe(
                client: &$m::AsyncClient,
                filter: &str,
                qos: $m::QoS,
            ) -> impl Future<Output = ()> + Send {
                let filter = filter.to_owned();
                async move {
                    client
                        .subscribe(filter, qos)
                        .await
                        .expect("queue SUBSCRIBE")
                }
            }
            fn publish(
                client: &$m::AsyncClient,
                topic: &str,
                qos: $m::QoS,
                retain: bool,
                payload: Vec<u8>,
            ) -> impl Future<Output = ()> + Send {
                let topic = topic.to_owned();
                async move {
                    client
                        .publish(topic, qos, retain, payload)
                        .await
                        .expect("queue PUBLISH")
                }
            }
            fn disconnect(client: &$m::AsyncClient) -> impl Future<Output = ()> + Send {
                async move { client.disconnect().await.expect("queue DISCONNECT") }
            }
        }
    };
}

rumqttc_proto!(Mqtt311, v4, v4::Packet::PingResp);
rumqttc_proto!(Mqtt5, v5, v5::Packet::PingResp(_));

/// A rumqttc client whose event loop runs in its own task, every incoming
/// packet forwarded to a channel. It does not reconnect: a dropped connection
/// shows up as [`Ev::Closed`].
pub struct Client<P: Proto> {
    pub client: P::Client,
    pub id: String,
    rx: mpsc::UnboundedReceiver<Ev<P::Packet>>,
    backlog: VecDeque<Ev<P::Packet>>,
    task: JoinHandle<()>,
    pub connack: P::ConnAck,
}

/// A rumqttc 3.1.1 client.
pub type V4 = Client<Mqtt311>;
/// A rumqttc 5.0 client.
pub type V5 = Client<Mqtt5>;

impl<P: Proto> Drop for Client<P> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Options for `id` at `addr`: generous request queue, big enough packets.
pub fn v4_options(addr: SocketAddr, id: &str) -> v4::MqttOptions {
    let mut o = v4::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

impl Client<Mqtt311> {
    /// Connects with default options (clean session).
    pub async fn connect(addr: SocketAddr, id: &str) -> V4 {
        Self::connect_with(addr, id, |_| {}).await
    }

    /// Connects with options adjusted by `tweak`; waits for the CONNACK and
    /// fails unless the broker accepted.
    pub async fn connect_with(
        addr: SocketAddr,
        id: &str,
        tweak: impl FnOnce(&mut v4::MqttOptions),
    ) -> V4 {
        let mut opts = v4_options(addr, id);
        tweak(&mut opts);
        let (client, eventloop) = v4::AsyncClient::new(opts, 10_000);
        let c = Self::run(client, eventloop, id).await;
        assert_eq!(
            c.connack.code,
            v4::ConnectReturnCode::Success,
            "{id} refused"
        );
        c
    }

    /// Subscribes and waits for the SUBACK; returns its return codes.
    pub async fn subscribe(&mut self, filter: &str, qos: v4::QoS) -> Vec<v4::SubscribeReasonCode> {
        Mqtt311::subscribe(&self.client, filter, qos).await;
        self.suback(filter).await
    }
}

impl Client<Mqtt5> {
    pub async fn connect(addr: SocketAddr, id: &str) -> V5 {
        Self::connect_with(addr, id, |_| {}).await
    }

    pub async fn connect_with(
        addr: SocketAddr,
        id: &str,
        tweak: impl FnOnce(&mut v5::MqttOptions),
    ) -> V5 {
        let mut opts = v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(Some(1 << 20));
        tweak(&mut opts);
        let (client, eventloop) = v5::AsyncClient::new(opts, 10_000);
        let c = Self::run(client, eventloop, id).await;
        assert_eq!(
            c.connack.code,
            v5::ConnectReturnCode::Success,
            "{id} refused"
        );
        c
    }

    /// Subscribes to several filters (5.0 options) in one SUBSCRIBE; returns
    /// the SUBACK reason codes.
    pub async fn subscribe_filters(
        &mut self,
        filters: Vec<v5::Filter>,
    ) -> Vec<v5::SubscribeReasonCode> {
        self.client
            .subscribe_many(filters)
            .await
            .expect("queue SUBSCRIBE");
        self.expect("SUBACK", Mqtt5::suback).await
    }
}

impl<P: Proto> Client<P> {
    /// Waits (bounded) for the CONNACK on `eventloop`, then runs the event
    /// loop in its own task, forwarding every incoming packet.
    async fn run(client: P::Client, mut eventloop: P::EventLoop, id: &str) -> Self {
        let connack = within(STEP, &format!("CONNACK for {id}"), async {
            loop {
                match P::poll(&mut eventloop).await {
                    Ok(Some(p)) => {
                        if let Some(ack) = P::connack(&p) {
                            return ack;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => panic!("{id}: connect failed: {e}"),
                }
            }
        })
        .await;
        let (tx, rx) = mpsc::unbounded();
        let task = tokio::spawn(async move {
            loop {
                match P::poll(&mut eventloop).await {
                    Ok(Some(p)) => {
                        if tx.unbounded_send(Ev::Packet(p)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let _ = tx.unbounded_send(Ev::Closed(e));
                        return;
                    }
                }
            }
        });
        Client {
            client,
            id: id.to_owned(),
            rx,
            backlog: VecDeque::new(),
            task,
            connack,
        }
    }

    /// The next event within `limit`, or `None` if nothing came.
    pub async fn next_within(&mut self, limit: Duration) -> Option<Ev<P::Packet>> {
        if let Some(ev) = self.backlog.pop_front() {
            return Some(ev);
        }
        match tokio::time::timeout(limit, self.rx.next()).await {
            Ok(Some(ev)) => Some(ev),
            Ok(None) => Some(Ev::Closed("event loop task ended".into())),
            Err(_) => None,
        }
    }

    /// The next incoming packet; fails on timeout or a closed connection.
    pub async fn next(&mut self) -> P::Packet {
        match self.next_within(STEP).await {
            Some(Ev::Packet(p)) => p,
            Some(Ev::Closed(e)) => panic!("{}: connection closed: {e}", self.id),
            None => panic!("{}: nothing received within {STEP:?}", self.id),
        }
    }

    /// Waits for the first packet `pick` accepts; others are kept, in order,
    /// for later calls.
    pub async fn expect<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&P::Packet) -> Option<T>,
    ) -> T {
        let mut skipped = VecDeque::new();
        let deadline = tokio::time::Instant::now() + STEP;
        let found = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Some(Ev::Packet(p)) => match pick(&p) {
                    Some(v) => break v,
                    None => skipped.push_back(Ev::Packet(p)),
                },
                Some(Ev::Closed(e)) => panic!("{}: closed while waiting for {what}: {e}", self.id),
                None => panic!("{}: no {what} within {STEP:?}", self.id),
            }
        };
        skipped.extend(self.backlog.drain(..));
        self.backlog = skipped;
        found
    }

    /// Waits for the next SUBACK; returns its codes.
    async fn suback(&mut self, filter: &str) -> Vec<P::SubCode> {
        self.expect(&format!("SUBACK for {filter}"), P::suback)
            .await
    }

    /// Subscribes and asserts the broker granted `qos`.
    pub async fn subscribe_ok(&mut self, filter: &str, qos: P::QoS) {
        P::subscribe(&self.client, filter, qos).await;
        let codes = self.suback(filter).await;
        assert_eq!(codes, vec![P::granted(qos)], "SUBACK for {filter}");
    }

    pub async fn publish(
        &self,
        topic: &str,
        qos: P::QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) {
        P::publish(&self.client, topic, qos, retain, payload.into()).await;
    }

    /// Waits for the next incoming PUBLISH (other packets are kept for later).
    pub async fn recv_publish(&mut self) -> P::Publish {
        self.expect("PUBLISH", |p| P::as_publish(p).cloned()).await
    }

    /// Collects exactly `n` PUBLISHes, each within [`STEP`] of the previous one.
    pub async fn recv_publishes(&mut self, n: usize) -> Vec<P::Publish> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match self.next_within(STEP).await {
                Some(Ev::Packet(p)) => {
                    if let Ok(p) = P::into_publish(p) {
                        got.push(p);
                    }
                }
                Some(Ev::Closed(e)) => {
                    panic!("{}: closed after {} of {n}: {e}", self.id, got.len())
                }
                None => panic!(
                    "{}: only {} of {n} PUBLISHes arrived (next missing after {STEP:?})",
                    self.id,
                    got.len()
                ),
            }
        }
        got
    }

    /// Asserts that no PUBLISH arrives within `quiet` (a negative check: the
    /// short wait is the assertion, not synchronisation).
    pub async fn assert_no_publish(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match self.next_within(left).await {
                Some(Ev::Packet(p)) => {
                    if let Some(p) = P::as_publish(&p) {
                        panic!("{}: unexpected PUBLISH: {p:?}", self.id);
                    }
                }
                Some(Ev::Closed(e)) => panic!("{}: closed: {e}", self.id),
                None => return,
            }
        }
    }

    /// Waits for `n` PUBACKs (QoS 1) or PUBCOMPs (QoS 2) from the broker.
    /// Other packets are kept, in order, for later calls.
    pub async fn wait_acks(&mut self, n: usize, qos: P::QoS) {
        let mut acks = 0;
        let mut skipped = VecDeque::new();
        while acks < n {
            match self.next_within(STEP).await {
                Some(Ev::Packet(p)) if P::completes(&p, qos) => acks += 1,
                Some(Ev::Packet(p)) => skipped.push_back(Ev::Packet(p)),
                Some(Ev::Closed(e)) => panic!("{}: closed after {acks}/{n} acks: {e}", self.id),
                None => panic!(
                    "{}: only {acks}/{n} acks within {STEP:?} of the last",
                    self.id
                ),
            }
        }
        skipped.extend(self.backlog.drain(..));
        self.backlog = skipped;
    }

    /// Waits until the broker ends the connection; returns rumqttc's error.
    pub async fn wait_closed(&mut self, limit: Duration) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Some(Ev::Closed(e)) => return e,
                Some(Ev::Packet(_)) => {}
                None => panic!("{}: connection still open after {limit:?}", self.id),
            }
        }
    }

    /// Normal DISCONNECT; waits until the broker closed the connection.
    pub async fn disconnect(mut self) {
        P::disconnect(&self.client).await;
        self.wait_closed(STEP).await;
    }

    /// Ends the connection abruptly (no DISCONNECT): the socket is dropped.
    pub fn kill(self) {
        drop(self);
    }
}

// ---- raw sockets with ringmq's codec -----------------------------------------------

pub use codec::QoS as RawQoS;
pub use codec::{
    Ack, ConnAck, Connect, Disconnect, Packet, Pid, Properties, Property, Publish, QosPid, SubAck,
    SubOptions, Subscribe, Will,
};

/// What a raw read produced.
#[derive(Debug)]
pub enum RawEv {
    Packet(Packet),
    /// The broker closed the connection (EOF or reset).
    Closed,
    /// Nothing within the wait.
    Silent,
}

/// A client speaking bytes: encodes with ringmq's codec (or sends anything at
/// all), decodes the broker's replies.
pub struct Raw {
    pub stream: tokio::net::TcpStream,
    buf: BytesMut,
    pub protocol: Protocol,
}

/// A CONNECT packet.
pub fn connect_packet(
    protocol: Protocol,
    id: &str,
    clean: bool,
    keep_alive: u16,
    will: Option<Will>,
) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol,
        clean_start: clean,
        keep_alive,
        client_id: Bytes::copy_from_slice(id.as_bytes()),
        will,
        username: None,
        password: None,
        properties: Properties::default(),
    }))
}

pub fn will(topic: &str, payload: &str, qos: RawQoS, retain: bool) -> Will {
    Will {
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain,
        properties: Properties::default(),
    }
}

pub fn pid(n: u16) -> Pid {
    Pid::new(n).expect("non-zero packet id")
}

pub fn subscribe_packet(pid_: u16, filters: &[(&str, RawQoS)]) -> Packet {
    Packet::Subscribe(Subscribe {
        pid: pid(pid_),
        filters: filters
            .iter()
            .map(|(f, q)| {
                (
                    Bytes::copy_from_slice(f.as_bytes()),
                    SubOptions {
                        qos: *q,
                        ..SubOptions::default()
                    },
                )
            })
            .collect(),
        properties: Properties::default(),
    })
}

pub fn publish_packet(topic: &str, qos_pid: QosPid, retain: bool, payload: &[u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos_pid,
        retain,
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload),
    })
}

pub fn encode(p: &Packet, protocol: Protocol) -> Vec<u8> {
    let mut out = BytesMut::new();
    codec::encode(p, protocol, &mut out);
    out.to_vec()
}

impl Raw {
    /// Opens a TCP connection (no MQTT yet).
    pub async fn open(addr: SocketAddr) -> Raw {
        let stream = within(STEP, "TCP connect", tokio::net::TcpStream::connect(addr))
            .await
            .expect("TCP connect");
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            buf: BytesMut::new(),
            protocol: Protocol::V3_1_1,
        }
    }

    /// Opens a connection with a small receive buffer (a client that reads
    /// little and late).
    pub async fn open_small_rcvbuf(addr: SocketAddr, rcvbuf: u32) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
        let stream = within(STEP, "TCP connect", socket.connect(addr))
            .await
            .expect("TCP connect");
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            buf: BytesMut::new(),
            protocol: Protocol::V3_1_1,
        }
    }

    /// Connects with 3.1.1 and waits for an accepting CONNACK.
    pub async fn connect(
        addr: SocketAddr,
        id: &str,
        clean: bool,
        keep_alive: u16,
        will: Option<Will>,
    ) -> Raw {
        let mut raw = Raw::open(addr).await;
        let ack = raw
            .handshake(connect_packet(
                Protocol::V3_1_1,
                id,
                clean,
                keep_alive,
                will,
            ))
            .await;
        assert_eq!(ack.code, 0, "{id}: CONNACK refused: {ack:?}");
        raw
    }

    /// Sends a CONNECT and returns the CONNACK.
    pub async fn handshake(&mut self, connect: Packet) -> ConnAck {
        if let Packet::Connect(c) = &connect {
            self.protocol = c.protocol;
        }
        self.send(&connect).await;
        match self.recv().await {
            Packet::ConnAck(ack) => ack,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn send(&mut self, p: &Packet) {
        let bytes = encode(p, self.protocol);
        self.send_bytes(&bytes).await.expect("write to broker");
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        within(STEP, "socket write", self.stream.write_all(bytes)).await
    }

    /// The next packet or close within `limit`.
    pub async fn next_within(&mut self, limit: Duration) -> RawEv {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match codec::decode(&mut self.buf, self.protocol, u32::MAX >> 4) {
                Ok(Some(p)) => return RawEv::Packet(p),
                Ok(None) => {}
                Err(e) => panic!("broker sent bytes we cannot decode: {e}"),
            }
            self.buf.reserve(64 * 1024);
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await;
            match read {
                Err(_) => return RawEv::Silent,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    // Anything complete before the close still counts.
                    return match codec::decode(&mut self.buf, self.protocol, u32::MAX >> 4) {
                        Ok(Some(p)) => RawEv::Packet(p),
                        _ => RawEv::Closed,
                    };
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next packet; fails on close or timeout.
    pub async fn recv(&mut self) -> Packet {
        match self.next_within(STEP).await {
            RawEv::Packet(p) => p,
            RawEv::Closed => panic!("connection closed by the broker"),
            RawEv::Silent => panic!("nothing from the broker within {STEP:?}"),
        }
    }

    /// Waits until the broker closes the connection, returning the packets it
    /// sent first (e.g. a CONNACK or a 5.0 DISCONNECT).
    pub async fn expect_closed(&mut self, limit: Duration) -> Vec<Packet> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                RawEv::Closed => return before,
                RawEv::Packet(p) => before.push(p),
                RawEv::Silent => {
                    panic!("broker did not close the connection within {limit:?} (sent {before:?})")
                }
            }
        }
    }

    /// Subscribes and returns the SUBACK codes.
    pub async fn subscribe(&mut self, pid_: u16, filters: &[(&str, RawQoS)]) -> Vec<u8> {
        self.send(&subscribe_packet(pid_, filters)).await;
        match self.recv().await {
            Packet::SubAck(s) => s.codes,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
}

// ---- checks --------------------------------------------------------------------------

/// Payload `prefix-<n>`, so order and duplicates can be checked.
pub fn numbered(prefix: &str, n: usize) -> String {
    format!("{prefix}-{n}")
}

/// Asserts that `payloads` are exactly `prefix-0 .. prefix-(n-1)` in order.
pub fn assert_sequence(who: &str, prefix: &str, payloads: &[Bytes], n: usize) {
    let got: Vec<String> = payloads
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let want: Vec<String> = (0..n).map(|i| numbered(prefix, i)).collect();
    if got != want {
        let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
        let mut seen = std::collections::HashSet::new();
        let dups: Vec<&String> = got.iter().filter(|p| !seen.insert(*p)).take(5).collect();
        panic!(
            "{who}: got {} messages, want {n}; first difference at {first_diff:?}; duplicates {dups:?}",
            got.len()
        );
    }
}

/// Finds a program on PATH; fails loudly when it is missing (CI installs it).
pub fn require_program(name: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{name}` is not installed but these tests need it: \
         apt-get install -y mosquitto-clients (scripts/test.sh does this)"
    );
}

// ---- Mosquitto's command-line clients ---------------------------------------------------

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

/// Subscriber on `sub_core`, publisher on `pub_core` (of a 2-core broker), `n`
/// messages at `qos`: all arrive, in order, each once, at `qos`, with no DUP and
/// RETAIN=0. rumqttc writes the PUBLISHes back to back, so broker reads end
/// mid-frame: this also covers framing under load.
pub async fn stream_in_order_once(
    broker: &TestBroker,
    tag: &str,
    qos: v4::QoS,
    pub_core: usize,
    sub_core: usize,
    n: usize,
) {
    let topic = format!("stream/{tag}");
    let mut sub = V4::connect(broker.addr, &id_on(sub_core, 2, &format!("sub-{tag}"))).await;
    sub.subscribe_ok(&topic, qos).await;
    let mut publisher = V4::connect(broker.addr, &id_on(pub_core, 2, &format!("pub-{tag}"))).await;
    for i in 0..n {
        publisher
            .publish(&topic, qos, false, numbered(tag, i))
            .await;
    }
    let got = within(
        Duration::from_secs(15),
        "all messages",
        sub.recv_publishes(n),
    )
    .await;
    if qos != v4::QoS::AtMostOnce {
        publisher.wait_acks(n, qos).await;
    }
    for p in &got {
        assert_eq!(p.topic, topic);
        assert_eq!(p.qos, qos, "delivered at the subscription's QoS");
        assert!(!p.dup, "no DUP in a clean run");
        assert!(!p.retain, "live delivery has RETAIN=0");
    }
    let payloads: Vec<Bytes> = got.into_iter().map(|p| p.payload).collect();
    assert_sequence(tag, tag, &payloads, n);
    // Exactly once: nothing beyond the n (a negative check, hence the short wait).
    sub.assert_no_publish(QUIET).await;
}
