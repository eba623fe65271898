//! rumqttc's 3.1.1 and 5.0 clients, with their event loop in a task of its
//! own that forwards every incoming packet to a channel.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures::channel::mpsc;
use futures::StreamExt;
use tokio::task::JoinHandle;

use super::{within, STEP};

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
    fn payload(p: &Self::Publish) -> &[u8];
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
            fn payload(p: &$m::Publish) -> &[u8] {
                &p.payload
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

    /// Waits up to `limit` (for a PUBLISH due later than [`STEP`], e.g. a
    /// delayed will) for the next PUBLISH; other packets are dropped.
    pub async fn recv_publish_within(&mut self, limit: Duration, what: &str) -> P::Publish {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Some(Ev::Packet(p)) => {
                    if let Ok(p) = P::into_publish(p) {
                        return p;
                    }
                }
                Some(Ev::Closed(e)) => panic!("{}: closed while waiting for {what}: {e}", self.id),
                None => panic!("{}: no {what} within {limit:?}", self.id),
            }
        }
    }

    /// Receives PUBLISHes until the marker (payload `marker`), each within
    /// [`STEP`] of the previous one; returns those before it. The test sent
    /// the marker after what it wants to see, on a path ordered with it (the
    /// same publisher connection; or, for retained messages, any publisher
    /// after the SUBACK, which they go out with), so "nothing unexpected came
    /// before the marker" is a deterministic check where a quiet window would
    /// only be a timed one.
    pub async fn recv_until_marker(&mut self, marker: &str) -> Vec<P::Publish> {
        let mut before = Vec::new();
        loop {
            let p = self
                .expect(&format!("marker {marker:?}"), |p| P::as_publish(p).cloned())
                .await;
            if P::payload(&p) == marker.as_bytes() {
                return before;
            }
            before.push(p);
        }
    }

    /// Waits for the marker (see [`Client::recv_until_marker`]) and fails if
    /// any other PUBLISH comes first.
    pub async fn expect_marker(&mut self, marker: &str, what: &str) {
        let before = self.recv_until_marker(marker).await;
        assert!(
            before.is_empty(),
            "{}: {what}: unexpected PUBLISH before the marker {marker:?}: {before:?}",
            self.id
        );
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
                Some(Ev::Closed(e)) => panic!(
                    "{}: closed after {} of {n}: {e}; got {:?}",
                    self.id,
                    got.len(),
                    Self::payloads(&got)
                ),
                None => panic!(
                    "{}: only {} of {n} PUBLISHes arrived (next missing after {STEP:?}): {:?}",
                    self.id,
                    got.len(),
                    Self::payloads(&got)
                ),
            }
        }
        got
    }

    /// The payloads of `got`, readable, for a failure message.
    fn payloads(got: &[P::Publish]) -> Vec<String> {
        got.iter()
            .map(|p| String::from_utf8_lossy(P::payload(p)).into_owned())
            .collect()
    }

    /// Asserts that no PUBLISH arrives within `quiet` (a negative check: the
    /// short wait is the assertion, not synchronisation). Only for where no
    /// marker can be ordered after what must not come (see
    /// [`Client::expect_marker`]): the window can only let a test pass
    /// wrongly on a slow machine, never fail wrongly.
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

    /// Ends the connection abruptly (no DISCONNECT): stops the event loop
    /// and waits until its task is gone, socket closed. Only then is the
    /// client dead: an aborted task still running (a busy machine may
    /// preempt it mid-poll) could otherwise read a PUBLISH that came after
    /// this call and acknowledge it, which is what a test of "the broker
    /// keeps it for the session" must rule out.
    pub async fn kill(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}
