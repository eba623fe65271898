//! MQTT over WebSocket and secure WebSocket, at the level of frames:
//! tungstenite's client over a blocking socket sends exactly the frames a test
//! wants (split, packed, fragmented, control, text, absurd lengths), and bad
//! upgrades get their HTTP answer. A healthy client still gets in after each.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use common::*;
use ringmq::codec::{self, Protocol};
use ringmq::config::ListenerProtocol;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::{Message, WebSocket};

/// A 2-core broker with its plain listener, a ws one and a wss one.
fn ws_broker(pki: &Pki, tweak: impl FnOnce(&mut ringmq::config::Config)) -> TestBroker {
    start(2, |c| {
        c.listeners
            .push(pki.listener(ListenerProtocol::Websockets, None));
        let tls = pki.tls(false);
        c.listeners
            .push(pki.listener(ListenerProtocol::Websockets, Some(tls)));
        tweak(c);
    })
}

fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("TCP connect");
    s.set_read_timeout(Some(STEP)).expect("timeout");
    s.set_write_timeout(Some(STEP)).expect("timeout");
    s
}

/// Upgrades `stream` to a WebSocket offering `subprotocol` on `path`.
fn upgrade<S: Read + Write>(
    stream: S,
    addr: SocketAddr,
    path: &str,
    subprotocol: Option<&str>,
) -> Result<WebSocket<S>, tungstenite::Error> {
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("request");
    if let Some(p) = subprotocol {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().expect("header"));
    }
    tungstenite::client::client(request, stream)
        .map(|(ws, _)| ws)
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => unreachable!("blocking socket"),
        })
}

fn ws(addr: SocketAddr) -> WebSocket<TcpStream> {
    upgrade(tcp(addr), addr, "/mqtt", Some("mqtt")).expect("upgrade")
}

fn send_packet<S: Read + Write>(ws: &mut WebSocket<S>, p: &Packet) {
    ws.send(Message::Binary(Bytes::from(encode(p, Protocol::V3_1_1))))
        .expect("send frame");
}

/// The next MQTT packet, whatever frames carry it; `None` when the broker
/// closed the WebSocket or the connection.
fn next_packet<S: Read + Write>(ws: &mut WebSocket<S>, pending: &mut BytesMut) -> Option<Packet> {
    loop {
        if let Some(p) = codec::decode(pending, Protocol::V3_1_1, 1 << 20).expect("decodable") {
            return Some(p);
        }
        match ws.read() {
            Ok(Message::Binary(b)) => pending.extend_from_slice(&b),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(other) => panic!("unexpected WebSocket message {other:?}"),
        }
    }
}

fn mqtt_connect<S: Read + Write>(ws: &mut WebSocket<S>, id: &str, pending: &mut BytesMut) {
    send_packet(ws, &connect_packet(Protocol::V3_1_1, id, true, 0, None));
    match next_packet(ws, pending) {
        Some(Packet::ConnAck(a)) => assert_eq!(a.code, 0, "{id}: refused"),
        other => panic!("{id}: expected CONNACK, got {other:?}"),
    }
}

/// Nothing more comes and the socket ends, within STEP.
fn closed<S: Read + Write>(ws: &mut WebSocket<S>) -> bool {
    let deadline = Instant::now() + STEP;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Close(_)) | Err(_) => return true,
            Ok(_) => {}
        }
    }
    false
}

/// A healthy WebSocket client still gets in.
fn healthy(addr: SocketAddr) {
    let mut ws = ws(addr);
    mqtt_connect(&mut ws, "ws-healthy", &mut BytesMut::new());
}

#[test]
fn mqtt_over_websocket_reaches_plain_clients_and_back() {
    let pki = Pki::new("ws-basic");
    let broker = ws_broker(&pki, |_| {});
    let addr = addr_of(&broker, "ws");
    let mut sub = ws(addr);
    let mut pending = BytesMut::new();
    mqtt_connect(&mut sub, "ws-sub", &mut pending);
    send_packet(
        &mut sub,
        &subscribe_packet(1, &[("w/#", RawQoS::AtLeastOnce)]),
    );
    assert!(matches!(
        next_packet(&mut sub, &mut pending),
        Some(Packet::SubAck(_))
    ));
    mosquitto_pub(
        broker.port,
        &["-t", "w/from-tcp", "-m", "hello", "-q", "1"],
        None,
    );
    match next_packet(&mut sub, &mut pending) {
        Some(Packet::Publish(p)) => {
            assert_eq!(
                (&p.topic[..], &p.payload[..]),
                (&b"w/from-tcp"[..], &b"hello"[..])
            );
            send_packet(
                &mut sub,
                &Packet::PubAck(Ack::new(p.qos_pid.pid().expect("QoS 1"))),
            );
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    // And from WebSocket to a plain subscriber.
    let mut plain = tcp(broker.addr);
    plain
        .write_all(&encode(
            &connect_packet(Protocol::V3_1_1, "tcp-sub", true, 0, None),
            Protocol::V3_1_1,
        ))
        .expect("CONNECT");
    plain
        .write_all(&encode(
            &subscribe_packet(1, &[("t/#", RawQoS::AtMostOnce)]),
            Protocol::V3_1_1,
        ))
        .expect("SUBSCRIBE");
    let mut got = BytesMut::new();
    let mut read_packet = |got: &mut BytesMut| loop {
        if let Some(p) = codec::decode(got, Protocol::V3_1_1, 1 << 20).expect("decodable") {
            return p;
        }
        let mut chunk = [0u8; 1024];
        let n = plain.read(&mut chunk).expect("read plain");
        assert!(n > 0, "plain subscriber closed");
        got.extend_from_slice(&chunk[..n]);
    };
    assert!(matches!(read_packet(&mut got), Packet::ConnAck(_)));
    assert!(matches!(read_packet(&mut got), Packet::SubAck(_)));
    send_packet(
        &mut sub,
        &publish_packet("t/from-ws", QosPid::AtMostOnce, false, b"over ws"),
    );
    match read_packet(&mut got) {
        Packet::Publish(p) => assert_eq!(&p.payload[..], b"over ws"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// MQTT packets split across frames, several packets in one frame, and a
/// packet in a fragmented message (binary + continuation frames) all parse.
#[test]
fn packets_may_span_frames_and_frames_may_carry_several_packets() {
    let pki = Pki::new("ws-split");
    let broker = ws_broker(&pki, |_| {});
    let addr = addr_of(&broker, "ws");
    let mut ws = ws(addr);
    let connect = encode(
        &connect_packet(Protocol::V3_1_1, "ws-split", true, 0, None),
        Protocol::V3_1_1,
    );
    let (head, tail) = connect.split_at(3);
    ws.send(Message::Binary(Bytes::copy_from_slice(head)))
        .expect("first part");
    ws.send(Message::Binary(Bytes::copy_from_slice(tail)))
        .expect("second part");
    let mut pending = BytesMut::new();
    assert!(matches!(
        next_packet(&mut ws, &mut pending),
        Some(Packet::ConnAck(_))
    ));
    let two_pings = [0xC0, 0x00, 0xC0, 0x00];
    ws.send(Message::Binary(Bytes::copy_from_slice(&two_pings)))
        .expect("packed");
    for _ in 0..2 {
        assert_eq!(next_packet(&mut ws, &mut pending), Some(Packet::PingResp));
    }
    // One PINGREQ as a fragmented message: [0xC0] then [0x00].
    let first = Frame::message(
        Bytes::from_static(&[0xC0]),
        OpCode::Data(Data::Binary),
        false,
    );
    let last = Frame::message(
        Bytes::from_static(&[0x00]),
        OpCode::Data(Data::Continue),
        true,
    );
    ws.send(Message::Frame(first)).expect("fragment");
    ws.send(Message::Frame(last)).expect("continuation");
    assert_eq!(next_packet(&mut ws, &mut pending), Some(Packet::PingResp));
}

/// A ping is answered with a pong carrying its data; a close frame from the
/// client ends the connection in order.
#[test]
fn ping_gets_pong_and_close_closes() {
    let pki = Pki::new("ws-ctl");
    let broker = ws_broker(&pki, |_| {});
    let addr = addr_of(&broker, "ws");
    let mut ws = ws(addr);
    let mut pending = BytesMut::new();
    mqtt_connect(&mut ws, "ws-ping", &mut pending);
    ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .expect("ping");
    match ws.read().expect("a pong within the read timeout (STEP)") {
        Message::Pong(data) => assert_eq!(&data[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    ws.close(None).expect("close");
    assert!(closed(&mut ws), "the broker did not end the WebSocket");
    healthy(addr);
}

/// After a client's MQTT DISCONNECT the broker ends the WebSocket with its
/// close handshake (RFC 6455 5.5.1): it sends a Close frame, takes the
/// client's answer and the connection ends in order.
#[test]
fn disconnect_ends_with_the_close_handshake() {
    let pki = Pki::new("ws-bye");
    let broker = ws_broker(&pki, |_| {});
    let addr = addr_of(&broker, "ws");
    let mut ws = ws(addr);
    let mut pending = BytesMut::new();
    mqtt_connect(&mut ws, "ws-bye", &mut pending);
    send_packet(&mut ws, &Packet::Disconnect(Default::default()));
    match ws.read() {
        Ok(Message::Close(_)) => {}
        other => panic!("expected the broker's Close frame, got {other:?}"),
    }
    // tungstenite answers the Close; then the broker closes.
    match ws.read() {
        Err(tungstenite::Error::ConnectionClosed) => {}
        other => panic!("expected an orderly close, got {other:?}"),
    }
    healthy(addr);
}

/// Upgrades that cannot become MQTT: plain HTTP without Upgrade, another path,
/// no mqtt subprotocol. Each gets an HTTP error status and the connection
/// closes; a healthy client gets in after each.
#[test]
fn bad_upgrades_get_an_http_error() {
    let pki = Pki::new("ws-bad");
    let broker = ws_broker(&pki, |_| {});
    let addr = addr_of(&broker, "ws");
    let mut plain_http = tcp(addr);
    plain_http
        .write_all(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut answer = String::new();
    let _ = plain_http.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    healthy(addr);

    let wrong_path = upgrade(tcp(addr), addr, "/elsewhere", Some("mqtt"));
    assert!(
        matches!(wrong_path, Err(tungstenite::Error::Http(ref r)) if r.status() == 404),
        "{wrong_path:?}"
    );
    healthy(addr);

    let no_subprotocol = upgrade(tcp(addr), addr, "/mqtt", None);
    assert!(
        matches!(no_subprotocol, Err(tungstenite::Error::Http(ref r)) if r.status() == 400),
        "{no_subprotocol:?}"
    );
    let wrong_subprotocol = upgrade(tcp(addr), addr, "/mqtt", Some("chat"));
    assert!(
        matches!(wrong_subprotocol, Err(tungstenite::Error::Http(ref r)) if r.status() == 400),
        "{wrong_subprotocol:?}"
    );
    healthy(addr);
}

/// Frames MQTT does not allow or the broker will not buffer: a text frame
/// [MQTT-6.0.0-1], a frame declaring 2^63 - 1 bytes, a frame larger than the
/// largest packet allowed. Each closes the connection without harm.
#[test]
fn text_and_absurd_frames_close_the_connection() {
    let pki = Pki::new("ws-frames");
    let broker = ws_broker(&pki, |c| {
        c.limits.max_packet_size = 4096;
        c.read_buffer_size = 4096;
    });
    let addr = addr_of(&broker, "ws");

    let mut text = ws(addr);
    mqtt_connect(&mut text, "ws-text", &mut BytesMut::new());
    text.send(Message::Text("hello".into()))
        .expect("text frame");
    assert!(closed(&mut text), "a text frame must close the connection");
    healthy(addr);

    let mut huge = ws(addr);
    // FIN + binary, masked, 64-bit length 2^63 - 1, then a mask key.
    let mut frame = vec![0x82, 0xFF];
    frame.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    huge.get_mut().write_all(&frame).expect("header");
    assert!(
        closed(&mut huge),
        "a 2^63-byte frame must close the connection"
    );
    healthy(addr);

    let mut big = ws(addr);
    mqtt_connect(&mut big, "ws-big", &mut BytesMut::new());
    big.send(Message::Binary(Bytes::from(vec![0u8; 64 * 1024])))
        .expect("big frame");
    assert!(
        closed(&mut big),
        "a frame over the limit must close the connection"
    );
    healthy(addr);
}

/// Secure WebSocket: TLS, then the upgrade, then MQTT.
#[test]
fn mqtt_over_secure_websocket() {
    let pki = Pki::new("wss");
    let broker = ws_broker(&pki, |_| {});
    let addr = addr_of(&broker, "wss");
    let tls = tls_connect(addr, &pki.ca, None).expect("TLS");
    let mut ws = upgrade(tls, addr, "/mqtt", Some("mqtt")).expect("upgrade over TLS");
    let mut pending = BytesMut::new();
    mqtt_connect(&mut ws, "wss-client", &mut pending);
    send_packet(
        &mut ws,
        &subscribe_packet(1, &[("s/#", RawQoS::AtMostOnce)]),
    );
    assert!(matches!(
        next_packet(&mut ws, &mut pending),
        Some(Packet::SubAck(_))
    ));
    mosquitto_pub(broker.port, &["-t", "s/x", "-m", "secure"], None);
    match next_packet(&mut ws, &mut pending) {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"secure"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}
