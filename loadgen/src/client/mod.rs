//! One MQTT client connection on a worker thread: handshake (CONNECT and, for
//! subscribers, SUBSCRIBE pipelined in one write), then a reader task and a
//! writer task sharing [`Conn`].

mod inflight;
mod publisher;
mod reader;
mod writer;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;
use ringmq_proto::codec::{
    decode, encode, Connect, Packet, Pid, Properties, Property, SubOptions, Subscribe,
};

use crate::pacer::timeout;
use crate::scenario::{ClientSpec, Role};
use crate::signal::Notify;
use crate::worker::Worker;

pub use inflight::Inflight;
pub use publisher::Publisher;

/// Largest packet we accept from a broker.
const MAX_PACKET: u32 = 16 << 20;
/// Read buffer of a subscriber: big enough to take a burst in one read.
const SUBSCRIBER_READ: usize = 64 << 10;
/// Publishers read only acks; idle clients only CONNACK and PINGRESP.
const PUBLISHER_READ: usize = 4 << 10;
const IDLE_READ: usize = 256;

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
    pub fn ping_due(&self, w: &Worker, now: u64) -> bool {
        let half = u64::from(w.settings.keepalive) * 500_000_000;
        half > 0 && now >= self.last_write.get() + half
    }

    /// Queues a control packet for the writer.
    pub fn queue(&self, packet: &Packet, w: &Worker) {
        encode(packet, w.settings.protocol, &mut self.outbox.borrow_mut());
    }
}

/// A connection that got its CONNACK (and SUBACK).
pub struct Session {
    pub stream: TcpStream,
    /// Bytes read past the handshake packets.
    pub leftover: BytesMut,
    pub receive_maximum: Option<u16>,
}

/// Short enough for MQTT 3.1's 23-character limit, unique per run.
pub fn client_id(run_id: u32, tag: &str, index: usize) -> String {
    format!("lg{run_id:08x}{tag}-{index}")
}

/// Connects one planned client at its scheduled time and runs it to the end.
pub async fn run_client(w: Rc<Worker>, spec: ClientSpec, intended_ns: u64) {
    let _task = w.task_guard();
    let id = client_id(w.settings.run_id, "", spec.index);
    let filter = match &spec.role {
        Role::Subscriber { filter, .. } => Some(filter.as_str()),
        _ => None,
    };
    let session = connect_timed(&w, &id, filter, intended_ns).await;
    w.handshake_finished();
    if let Some(session) = session {
        if let Err(e) = run_session(&w, &spec, session).await {
            w.log_error("connection", &e);
        }
    }
}

/// Handshake under --connect-timeout; records the connect time from `intended_ns`.
pub async fn connect_timed(
    w: &Rc<Worker>,
    id: &str,
    filter: Option<&str>,
    intended_ns: u64,
) -> Option<Session> {
    let limit = w.settings.connect_timeout;
    let result = match timeout(&w.pacer, limit, handshake(w, id, filter)).await {
        Some(result) => result,
        None => Err(anyhow::anyhow!("no CONNACK/SUBACK within {limit:?}")),
    };
    let c = w.counters();
    match result {
        Ok(session) => {
            w.stats
                .borrow_mut()
                .on_connect(intended_ns, w.pacer.now_ns());
            crate::shared::Counters::add(&c.connect_ok, 1);
            Some(session)
        }
        Err(e) => {
            crate::shared::Counters::add(&c.connect_failed, 1);
            w.log_error("connect", &e);
            None
        }
    }
}

async fn handshake(w: &Worker, id: &str, filter: Option<&str>) -> Result<Session> {
    let s = &w.settings;
    let mut stream = TcpStream::connect_addr(s.target.address)
        .await
        .with_context(|| format!("connecting to {}", s.target.address))?;
    stream.set_nodelay(true)?;
    let mut out = BytesMut::with_capacity(256);
    encode(&connect_packet(w, id), s.protocol, &mut out);
    if let Some(filter) = filter {
        encode(&subscribe_packet(w, filter), s.protocol, &mut out);
    }
    let (res, _) = stream.write_all(out).await;
    res.context("sending CONNECT")?;
    let mut buf = BytesMut::with_capacity(IDLE_READ);
    let receive_maximum = expect_connack(w, &mut stream, &mut buf).await?;
    if filter.is_some() {
        expect_suback(w, &mut stream, &mut buf).await?;
    }
    Ok(Session {
        stream,
        leftover: buf,
        receive_maximum,
    })
}

fn connect_packet(w: &Worker, id: &str) -> Packet {
    let s = &w.settings;
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
    }))
}

fn subscribe_packet(w: &Worker, filter: &str) -> Packet {
    let options = SubOptions {
        qos: w.settings.qos,
        ..SubOptions::default()
    };
    Packet::Subscribe(Subscribe {
        pid: Pid::MIN,
        filters: vec![(Bytes::copy_from_slice(filter.as_bytes()), options)],
        properties: Properties::default(),
    })
}

/// Returns the broker's Receive Maximum (5.0) if it sent one.
async fn expect_connack(w: &Worker, s: &mut TcpStream, buf: &mut BytesMut) -> Result<Option<u16>> {
    loop {
        match next_packet(w, s, buf).await? {
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

async fn expect_suback(w: &Worker, s: &mut TcpStream, buf: &mut BytesMut) -> Result<()> {
    loop {
        match next_packet(w, s, buf).await? {
            Packet::SubAck(ack) if ack.codes.iter().all(|&c| c < 0x80) => return Ok(()),
            Packet::SubAck(ack) => bail!("broker refused the subscription: {:?}", ack.codes),
            _ => continue,
        }
    }
}

async fn next_packet(w: &Worker, s: &mut TcpStream, buf: &mut BytesMut) -> Result<Packet> {
    loop {
        if let Some(packet) = decode(buf, w.settings.protocol, MAX_PACKET)? {
            return Ok(packet);
        }
        let (res, b) = read_into(s, std::mem::take(buf), IDLE_READ).await;
        *buf = b;
        if res? == 0 {
            bail!("broker closed the connection during the handshake");
        }
    }
}

/// Reads into the free tail of `buf`, growing it to `capacity` first if the
/// tail is short. (A plain monoio read into a `BytesMut` would overwrite it
/// from the start.)
pub async fn read_into<R: AsyncReadRent>(
    r: &mut R,
    mut buf: BytesMut,
    capacity: usize,
) -> (std::io::Result<usize>, BytesMut) {
    if buf.capacity() - buf.len() < capacity / 4 {
        buf.reserve(capacity);
    }
    let len = buf.len();
    let (res, slice) = r.read(monoio::buf::IoBufMut::slice_mut(buf, len..)).await;
    (res, slice.into_inner())
}

fn read_capacity(role: &Role) -> usize {
    match role {
        Role::Subscriber { .. } => SUBSCRIBER_READ,
        Role::Publisher { .. } => PUBLISHER_READ,
        Role::Idle => IDLE_READ,
    }
}

/// Runs an established session until the run is over or the connection drops.
async fn run_session(w: &Rc<Worker>, spec: &ClientSpec, session: Session) -> Result<()> {
    let mut inflight = Inflight::new(w.settings.inflight);
    if let Some(max) = session.receive_maximum {
        inflight.limit_to(max);
    }
    let conn = Conn::new(inflight, w.pacer.now_ns());
    w.register(&conn);
    let (rd, wr) = session.stream.into_split();
    let reader = monoio::spawn(reader::run(
        w.clone(),
        conn.clone(),
        spec.role.clone(),
        rd,
        session.leftover,
        read_capacity(&spec.role),
    ));
    let publisher = match &spec.role {
        Role::Publisher { id, topic } => Some(Publisher::new(w, *id, topic)),
        _ => None,
    };
    let written = writer::run(w, &conn, wr, publisher).await;
    // The broker closes after our DISCONNECT; don't wait forever if it doesn't.
    let limit = std::time::Duration::from_secs(2);
    let read = timeout(&w.pacer, limit, reader).await.unwrap_or(Ok(()));
    let c = w.counters();
    crate::shared::Counters::add(&c.closed, 1);
    let result = written.and(read);
    if result.is_err() {
        crate::shared::Counters::add(&c.errors, 1);
    }
    result
}

/// Waits for the writer's next reason to act: a notification or `deadline_ns`.
pub async fn wait(w: &Worker, conn: &Conn, deadline_ns: Option<u64>) {
    use futures::future::select;
    use std::pin::pin;
    match deadline_ns {
        None => conn.wake.notified().await,
        Some(due) => {
            let timer = pin!(w.pacer.sleep_until(due));
            let _ = select(timer, pin!(conn.wake.notified())).await;
        }
    }
}
