//! A client speaking bytes with ringmq's own codec over a plain socket, and
//! builders for the packets tests send.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ringmq::codec::{self, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{within, STEP};

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
        bridge: false,
    }))
}

/// A 5.0 CONNECT with `props` (and an optional will).
pub fn connect_packet_v5(
    id: &str,
    clean: bool,
    keep_alive: u16,
    props: Vec<Property>,
    will: Option<Will>,
) -> Packet {
    let mut p = connect_packet(Protocol::V5, id, clean, keep_alive, will);
    if let Packet::Connect(c) = &mut p {
        c.properties = Properties(props);
    }
    p
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

/// A PUBLISH with 5.0 properties.
pub fn publish_packet_v5(
    topic: &str,
    qos_pid: QosPid,
    retain: bool,
    payload: &[u8],
    props: Vec<Property>,
) -> Packet {
    let mut p = publish_packet(topic, qos_pid, retain, payload);
    if let Packet::Publish(p) = &mut p {
        p.properties = Properties(props);
    }
    p
}

/// The Topic Alias property of a PUBLISH, if any.
pub fn topic_alias(p: &Properties) -> Option<u16> {
    p.find(|p| match p {
        Property::TopicAlias(a) => Some(*a),
        _ => None,
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

    /// Wraps a connected socket (no MQTT yet).
    pub fn open_stream(stream: tokio::net::TcpStream) -> Raw {
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

    /// A 3.1.1 clean-session client `id` with a 4 KiB receive buffer,
    /// subscribed to `filter` at QoS 0: for tests of a client that stops
    /// reading (the kernel buffers little for it).
    pub async fn small_rcvbuf_subscriber(addr: SocketAddr, id: &str, filter: &str) -> Raw {
        let mut raw = Raw::open_small_rcvbuf(addr, 4096).await;
        let ack = raw
            .handshake(connect_packet(Protocol::V3_1_1, id, true, 0, None))
            .await;
        assert_eq!(ack.code, 0);
        assert_eq!(raw.subscribe(1, &[(filter, RawQoS::AtMostOnce)]).await, [0]);
        raw
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

    /// Connects with 5.0 and `props`, clean start, keep-alive 60; waits for an
    /// accepting CONNACK and returns it too.
    pub async fn connect_v5(addr: SocketAddr, id: &str, props: Vec<Property>) -> (Raw, ConnAck) {
        let mut raw = Raw::open(addr).await;
        let ack = raw
            .handshake(connect_packet_v5(id, true, 60, props, None))
            .await;
        assert_eq!(ack.code, 0, "{id}: CONNACK refused: {ack:?}");
        (raw, ack)
    }

    /// Sends a CONNECT and returns the CONNACK.
    pub async fn handshake(&mut self, connect: Packet) -> ConnAck {
        self.handshake_within(connect, STEP).await
    }

    /// [`Raw::handshake`] waiting up to `limit` for the CONNACK (a check
    /// that takes seconds in an unoptimised build on a loaded machine).
    pub async fn handshake_within(&mut self, connect: Packet, limit: Duration) -> ConnAck {
        if let Packet::Connect(c) = &connect {
            self.protocol = c.protocol;
        }
        self.send(&connect).await;
        match self.next_within(limit).await {
            RawEv::Packet(Packet::ConnAck(ack)) => ack,
            RawEv::Packet(other) => panic!("expected CONNACK, got {other:?}"),
            RawEv::Closed => panic!("connection closed by the broker"),
            RawEv::Silent => panic!("no CONNACK within {limit:?}"),
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

    /// The next packet, which must be a PUBLISH.
    pub async fn recv_publish(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Acknowledges a QoS 1 PUBLISH this client received.
    pub async fn puback(&mut self, p: &Publish) {
        let pid = p.qos_pid.pid().expect("a QoS 1 PUBLISH has a packet id");
        self.send(&Packet::PubAck(Ack::new(pid))).await;
    }

    /// Waits for the marker PUBLISH (payload `marker`), which the test sent
    /// after whatever must not arrive, on a path ordered with it: fails if any
    /// other packet comes first. Returns the marker.
    pub async fn expect_marker(&mut self, marker: &str, what: &str) -> Publish {
        match self.recv().await {
            Packet::Publish(p) if p.payload[..] == *marker.as_bytes() => p,
            other => panic!("{what}: got {other:?} before the marker {marker:?}"),
        }
    }

    /// Receives PUBLISHes until the marker (payload `marker`), each within
    /// [`STEP`] of the previous one; returns those before it (see
    /// [`Raw::expect_marker`]). Fails on any other packet.
    pub async fn recv_until_marker(&mut self, marker: &str) -> Vec<Publish> {
        let mut before = Vec::new();
        loop {
            let p = self.recv_publish().await;
            if p.payload[..] == *marker.as_bytes() {
                return before;
            }
            before.push(p);
        }
    }

    /// Asserts that nothing arrives within `quiet`. A negative check for where
    /// no marker can be ordered after what must not come (see
    /// [`Raw::expect_marker`]): the window can only let a test pass wrongly on
    /// a slow machine, never fail wrongly.
    pub async fn assert_silent(&mut self, quiet: Duration, what: &str) {
        match self.next_within(quiet).await {
            RawEv::Silent => {}
            RawEv::Packet(p) => panic!("{what}: unexpected packet {p:?}"),
            RawEv::Closed => panic!("{what}: connection closed"),
        }
    }

    /// A normal DISCONNECT; waits until the broker closed the connection.
    pub async fn disconnect(&mut self) {
        self.send(&Packet::Disconnect(Disconnect::default())).await;
        self.expect_closed(STEP).await;
    }

    /// Subscribes to one filter (packet id 1) and asserts that the SUBACK
    /// grants `granted` (a QoS, or a 5.0 reason code).
    pub async fn subscribe_ok(&mut self, filter: &str, qos: RawQoS, granted: u8) {
        let codes = self.subscribe(1, &[(filter, qos)]).await;
        assert_eq!(codes, vec![granted], "SUBACK for {filter}");
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
