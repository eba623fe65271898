//! One MQTT client connection on a worker thread: handshake (CONNECT and, for
//! subscribers, SUBSCRIBE pipelined in one write), then a reader task and a
//! writer task sharing [`Conn`]. Also the thread's registry of connections
//! ([`Conns`]) with its keep-alive sweep, and the storm's short-lived
//! connect/disconnect attempts ([`churn`]).

mod inflight;
mod publisher;
mod reader;
mod storm;
mod writer;

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use ringmq_proto::codec::{
    decode, encode, Connect, Packet, Pid, Properties, Property, SubOptions, Subscribe,
};

use crate::context::Thread;
use crate::pacer::timeout;
use crate::scenario::{ClientSpec, Role, Target};
use crate::shared::Phase;
use crate::signal::Notify;
use crate::transport::Link;

pub use inflight::Inflight;
pub use publisher::Publisher;
pub use storm::churn;

/// Largest packet we accept from a broker.
const MAX_PACKET: u32 = 16 << 20;
/// Read buffer of a subscriber: big enough to take a burst in one read.
const SUBSCRIBER_READ: usize = 64 << 10;
/// Publishers read only acks; idle clients only CONNACK and PINGRESP.
const PUBLISHER_READ: usize = 4 << 10;
const IDLE_READ: usize = 256;
/// How often connections are checked for a due keep-alive ping.
const KEEPALIVE_SWEEP: Duration = Duration::from_secs(1);

/// What the reader and the writer of one connection share.
pub struct Conn {
    /// Bytes for the writer: acks queued by the reader, publishes by the writer.
    pub outbox: RefCell<BytesMut>,
    /// Wakes the writer: something queued, an ack freed the window, a phase change.
    pub wake: Notify,
    pub inflight: RefCell<Inflight>,
    /// Set by the reader when the connection is gone.
    pub closed: Cell<bool>,
    /// When the writer last wrote, for keep-alive.
    pub last_write: Cell<u64>,
}

impl Conn {
    fn new(inflight: Inflight, now: u64) -> Rc<Conn> {
        Rc::new(Conn {
            outbox: RefCell::new(BytesMut::new()),
            wake: Notify::default(),
            inflight: RefCell::new(inflight),
            closed: Cell::new(false),
            last_write: Cell::new(now),
        })
    }

    /// Silent for half the keep-alive: time for a PINGREQ, so the broker
    /// never sees a client quiet for the whole interval.
    pub fn ping_due(&self, t: &Thread, now: u64) -> bool {
        let half = u64::from(t.settings.keepalive) * 500_000_000;
        half > 0 && now >= self.last_write.get() + half
    }

    /// Queues a control packet for the writer.
    pub fn queue(&self, packet: &Packet, t: &Thread) {
        encode(packet, t.settings.protocol, &mut self.outbox.borrow_mut());
    }
}

/// The live connections of one thread, so that a phase change can wake them
/// all and one keep-alive timer can serve the whole thread.
#[derive(Default)]
pub struct Conns(RefCell<Vec<Weak<Conn>>>);

impl Conns {
    /// Adds a connection; closed ones are dropped only when the list is full,
    /// so registering stays O(1) amortised (dropping them on every call made
    /// a 10,000-client connect phase quadratic, milliseconds per thread turn
    /// near its end, all counted as connect latency).
    pub fn register(&self, conn: &Rc<Conn>) {
        let mut conns = self.0.borrow_mut();
        if conns.len() == conns.capacity() {
            conns.retain(|c| c.strong_count() > 0);
        }
        conns.push(Rc::downgrade(conn));
    }

    /// Wakes every writer (the phase changed).
    pub fn wake_all(&self) {
        for conn in self.0.borrow().iter().filter_map(Weak::upgrade) {
            conn.wake.notify();
        }
    }
}

/// Wakes the writers of connections that owe the broker a PINGREQ: one timer
/// for the whole thread instead of one per connection.
pub async fn keepalive(t: Rc<Thread>, conns: Rc<Conns>) {
    while t.phase() != Phase::Done {
        t.pacer.sleep(KEEPALIVE_SWEEP).await;
        let now = t.pacer.now_ns();
        for conn in conns.0.borrow().iter().filter_map(Weak::upgrade) {
            if conn.ping_due(&t, now) {
                conn.wake.notify();
            }
        }
    }
}

/// A connection that got its CONNACK (and SUBACK).
pub struct Session {
    pub link: Link,
    /// Bytes read past the handshake packets.
    pub leftover: BytesMut,
    pub receive_maximum: Option<u16>,
}

/// Short enough for MQTT 3.1's 23-character limit, unique per run.
pub fn client_id(run_id: u32, tag: &str, index: usize) -> String {
    format!("lg{run_id:08x}{tag}-{index}")
}

/// Connects one planned client at its scheduled time and runs it to the end.
pub async fn run_client(t: Rc<Thread>, conns: Rc<Conns>, spec: ClientSpec, intended_ns: u64) {
    let _task = t.task_guard();
    let id = client_id(t.settings.run_id, "", spec.index);
    let filter = match &spec.role {
        Role::Subscriber { filter, .. } => Some(filter.as_str()),
        Role::Idle { filter } => filter.as_deref(),
        Role::Publisher { .. } => None,
    };
    let session = connect_timed(&t, &id, filter, intended_ns).await;
    t.handshake_finished();
    if let Some(session) = session {
        if let Err(e) = run_session(&t, &conns, &spec, session).await {
            t.log_error("connection", &e);
        }
        if !t.settings.clean {
            let limit = t.settings.connect_timeout;
            let at = t.settings.endpoint(filter.is_some());
            match timeout(&t.pacer, limit, discard_session(&t, at, &id)).await {
                Some(Ok(())) => {}
                Some(Err(e)) => t.log_error("ending the session", &e),
                None => t.log_error(
                    "ending the session",
                    &anyhow::anyhow!("no CONNACK within {limit:?}"),
                ),
            }
        }
    }
}

/// With --clean false the broker keeps every client's session after the
/// run, still subscribed: the next run's messages would queue in them. A
/// clean reconnect ends each one, so a run leaves no session behind.
async fn discard_session(t: &Thread, at: &Target, id: &str) -> Result<()> {
    let s = &t.settings;
    let (mut link, mut buf) = Link::open(&s.transport, at.address, &at.host).await?;
    let mut connect = connect_packet(t, id);
    if let Packet::Connect(c) = &mut connect {
        c.clean_start = true;
    }
    let mut out = BytesMut::with_capacity(256);
    encode(&connect, s.protocol, &mut out);
    link.send(out).await.context("sending CONNECT")?;
    expect_connack(t, &mut link, &mut buf).await?;
    let mut bye = BytesMut::with_capacity(8);
    let disconnect = Packet::Disconnect(ringmq_proto::codec::Disconnect::default());
    encode(&disconnect, s.protocol, &mut bye);
    link.close(bye).await
}

/// Handshake under --connect-timeout; records the connect time from `intended_ns`.
pub async fn connect_timed(
    t: &Rc<Thread>,
    id: &str,
    filter: Option<&str>,
    intended_ns: u64,
) -> Option<Session> {
    let limit = t.settings.connect_timeout;
    let result = match timeout(&t.pacer, limit, handshake(t, id, filter)).await {
        Some(result) => result,
        None => Err(anyhow::anyhow!("no CONNACK/SUBACK within {limit:?}")),
    };
    let c = t.counters();
    match result {
        Ok(session) => {
            t.stats
                .borrow_mut()
                .on_connect(intended_ns, t.pacer.now_ns());
            crate::shared::Counters::add(&c.connect_ok, 1);
            Some(session)
        }
        Err(e) => {
            crate::shared::Counters::add(&c.connect_failed, 1);
            t.log_error("connect", &e);
            None
        }
    }
}

/// Connects (TCP, then the transport's TLS handshake and WebSocket upgrade),
/// sends CONNECT (and SUBSCRIBE) and waits for their acks.
async fn handshake(t: &Thread, id: &str, filter: Option<&str>) -> Result<Session> {
    let s = &t.settings;
    let at = s.endpoint(filter.is_some());
    let (mut link, mut buf) = Link::open(&s.transport, at.address, &at.host).await?;
    let mut out = BytesMut::with_capacity(256);
    encode(&connect_packet(t, id), s.protocol, &mut out);
    if let Some(filter) = filter {
        encode(&subscribe_packet(t, filter), s.protocol, &mut out);
    }
    link.send(out).await.context("sending CONNECT")?;
    let receive_maximum = expect_connack(t, &mut link, &mut buf).await?;
    if filter.is_some() {
        expect_suback(t, &mut link, &mut buf).await?;
    }
    Ok(Session {
        link,
        leftover: buf,
        receive_maximum,
    })
}

fn connect_packet(t: &Thread, id: &str) -> Packet {
    let s = &t.settings;
    Packet::Connect(Box::new(Connect {
        protocol: s.protocol,
        clean_start: s.clean,
        keep_alive: s.keepalive,
        client_id: Bytes::copy_from_slice(id.as_bytes()),
        will: None,
        username: s
            .username
            .as_deref()
            .map(|u| Bytes::copy_from_slice(u.as_bytes())),
        password: s
            .password
            .as_deref()
            .map(|p| Bytes::copy_from_slice(p.as_bytes())),
        properties: Properties::default(),
        bridge: false,
    }))
}

fn subscribe_packet(t: &Thread, filter: &str) -> Packet {
    let options = SubOptions {
        qos: t.settings.qos,
        ..SubOptions::default()
    };
    Packet::Subscribe(Subscribe {
        pid: Pid::MIN,
        filters: vec![(Bytes::copy_from_slice(filter.as_bytes()), options)],
        properties: Properties::default(),
    })
}

/// Returns the broker's Receive Maximum (5.0) if it sent one.
async fn expect_connack(t: &Thread, s: &mut Link, buf: &mut BytesMut) -> Result<Option<u16>> {
    loop {
        match next_packet(t, s, buf).await? {
            Packet::ConnAck(ack) if ack.code == 0 => {
                return Ok(ack.properties.find(|p| match p {
                    Property::ReceiveMaximum(n) => Some(*n),
                    _ => None,
                }))
            }
            Packet::ConnAck(ack) => bail!("broker refused the connection: code {:#04x}", ack.code),
            // A persistent session may deliver queued messages first: not ours.
            _ => continue,
        }
    }
}

async fn expect_suback(t: &Thread, s: &mut Link, buf: &mut BytesMut) -> Result<()> {
    loop {
        match next_packet(t, s, buf).await? {
            Packet::SubAck(ack) if ack.codes.iter().all(|&c| c < 0x80) => return Ok(()),
            Packet::SubAck(ack) => bail!("broker refused the subscription: {:?}", ack.codes),
            _ => continue,
        }
    }
}

async fn next_packet(t: &Thread, s: &mut Link, buf: &mut BytesMut) -> Result<Packet> {
    loop {
        if let Some(packet) = decode(buf, t.settings.protocol, MAX_PACKET)? {
            return Ok(packet);
        }
        let (res, b) = s.recv(std::mem::take(buf), IDLE_READ).await;
        *buf = b;
        if res? == 0 {
            bail!("broker closed the connection during the handshake");
        }
    }
}

fn read_capacity(role: &Role) -> usize {
    match role {
        Role::Subscriber { .. } => SUBSCRIBER_READ,
        Role::Publisher { .. } => PUBLISHER_READ,
        Role::Idle { .. } => IDLE_READ,
    }
}

/// Runs an established session until the run is over or the connection drops.
async fn run_session(
    t: &Rc<Thread>,
    conns: &Conns,
    spec: &ClientSpec,
    session: Session,
) -> Result<()> {
    let mut inflight = Inflight::new(t.settings.inflight);
    if let Some(max) = session.receive_maximum {
        inflight.limit_to(max);
    }
    let conn = Conn::new(inflight, t.pacer.now_ns());
    conns.register(&conn);
    let (rd, wr) = session.link.into_split();
    let reader = monoio::spawn(reader::run(
        t.clone(),
        conn.clone(),
        spec.role.clone(),
        rd,
        session.leftover,
        read_capacity(&spec.role),
    ));
    let publisher = match &spec.role {
        Role::Publisher { id, topic } => Some(Publisher::new(t, *id, topic)),
        _ => None,
    };
    let written = writer::run(t, &conn, wr, publisher).await;
    // The broker closes after our DISCONNECT; don't wait forever if it doesn't.
    let limit = std::time::Duration::from_secs(2);
    let read = timeout(&t.pacer, limit, reader).await.unwrap_or(Ok(()));
    let c = t.counters();
    crate::shared::Counters::add(&c.closed, 1);
    let result = written.and(read);
    if result.is_err() {
        crate::shared::Counters::add(&c.errors, 1);
    }
    result
}

/// Waits for the writer's next reason to act: a notification or `deadline_ns`.
pub async fn wait(t: &Thread, conn: &Conn, deadline_ns: Option<u64>) {
    use futures::future::select;
    use std::pin::pin;
    match deadline_ns {
        None => conn.wake.notified().await,
        Some(due) => {
            let timer = pin!(t.pacer.sleep_until(due));
            let _ = select(timer, pin!(conn.wake.notified())).await;
        }
    }
}
