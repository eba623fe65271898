//! How the broker ends a connection: what it has is written, the write side
//! is shut down, and the client's input is drained before the socket closes,
//! so the client reads every acknowledgement and the DISCONNECT instead of a
//! reset (after a client's own DISCONNECT nothing is left to drain); a client
//! that stops reading cannot hold the socket open.

mod common;

use std::io::ErrorKind;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use ringmq::codec::{self, reason, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Everything the broker sends until it closes its side, decoded, and how its
/// side ended: `Ok` for an orderly close (FIN), the error for a reset.
async fn read_until_closed(raw: &mut Raw) -> (Vec<Packet>, std::io::Result<()>) {
    let mut bytes = BytesMut::new();
    let end = within(STEP, "the broker's close", async {
        loop {
            bytes.reserve(4096);
            match raw.stream.read_buf(&mut bytes).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    let mut packets = Vec::new();
    while let Some(p) = codec::decode(&mut bytes, raw.protocol, u32::MAX >> 4).expect("decodable") {
        packets.push(p);
    }
    (packets, end)
}

/// The packet ids of the acknowledgements `kind` picks out, in order.
fn ack_ids(packets: &[Packet], kind: impl Fn(&Packet) -> Option<&Ack>) -> Vec<u16> {
    packets
        .iter()
        .filter_map(kind)
        .map(|a| a.pid.get())
        .collect()
}

/// A 5.0 CONNECT for `id` with no properties.
fn v5_connect(id: &str) -> Packet {
    connect_packet(Protocol::V5, id, true, 0, None)
}

/// The example of the issue that asked for a clean close: a burst of one QoS 2
/// PUBLISH more than the broker's Receive Maximum. The client reads every
/// PUBREC and the DISCONNECT 0x93, then can still send its PUBRELs (no broken
/// pipe) and sees an orderly close, not a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_over_receive_maximum_gets_every_pubrec_then_disconnect() {
    const R: u16 = 4;
    let broker = start(1, |c| c.limits.max_awaiting_rel = usize::from(R));
    let mut raw = Raw::open(broker.addr).await;
    let ack = raw.handshake(v5_connect("burst")).await;
    assert_eq!(ack.code, 0);
    let mut burst = Vec::new();
    for n in 1..=R + 1 {
        let p = publish_packet("t", QosPid::ExactlyOnce(pid(n)), false, b"x");
        burst.extend(encode(&p, Protocol::V5));
    }
    raw.send_bytes(&burst).await.expect("burst written");

    let (packets, end) = read_until_closed(&mut raw).await;
    let pubrecs = ack_ids(&packets, |p| match p {
        Packet::PubRec(a) => Some(a),
        _ => None,
    });
    assert_eq!(pubrecs, (1..=R).collect::<Vec<_>>(), "{packets:?}");
    match packets.last() {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason::RECEIVE_MAXIMUM_EXCEEDED),
        other => panic!("expected DISCONNECT 0x93 last, got {other:?} in {packets:?}"),
    }
    assert!(end.is_ok(), "the broker reset the connection: {end:?}");

    // The broker only shut its write side: the client's PUBRELs still go in.
    let mut rels = Vec::new();
    for n in 1..=R {
        rels.extend(encode(&Packet::PubRel(Ack::new(pid(n))), Protocol::V5));
    }
    let before = encode(&v5_connect("burst"), Protocol::V5).len() + burst.len();
    still_read_after_close(&broker, &mut raw, before, &rels).await;
}

/// After the broker closed its side: `more` still reaches it and is read
/// (counted in `bytes_received`, which already holds `before` bytes), then
/// the client writes again without a broken pipe and sees an orderly close.
/// A broker that closed with unread input would have reset the connection.
async fn still_read_after_close(broker: &TestBroker, raw: &mut Raw, before: usize, more: &[u8]) {
    raw.send_bytes(more)
        .await
        .expect("written after the broker's close");
    let sent = (before + more.len()) as u64;
    broker
        .wait_counters(STEP, "the late input read by the broker", |c| {
            c.bytes_received == sent
        })
        .await;
    let ping = encode(&Packet::PingReq, raw.protocol);
    raw.send_bytes(&ping)
        .await
        .expect("no broken pipe after the broker's close");
    raw.stream.shutdown().await.expect("client shuts its side");
    let mut rest = Vec::new();
    let tail = within(STEP, "the close", raw.stream.read_to_end(&mut rest)).await;
    assert!(tail.is_ok(), "reset after the broker's close: {tail:?}");
}

/// The same for 3.1.1, which has no server DISCONNECT: a protocol violation
/// after some QoS 1 PUBLISHes still lets the client read every PUBACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn violation_after_publishes_keeps_every_puback() {
    let broker = start(1, |_| {});
    let mut raw = Raw::connect(broker.addr, "v311", true, 0, None).await;
    let mut bytes = Vec::new();
    for n in 1..=20 {
        let p = publish_packet("t", QosPid::AtLeastOnce(pid(n)), false, b"x");
        bytes.extend(encode(&p, Protocol::V3_1_1));
    }
    // A PUBLISH with QoS 3 is malformed [MQTT-3.3.1-4].
    bytes.extend([0x36, 0x03, 0x00, 0x01, b't']);
    raw.send_bytes(&bytes).await.expect("written");

    let (packets, end) = read_until_closed(&mut raw).await;
    let pubacks = ack_ids(&packets, |p| match p {
        Packet::PubAck(a) => Some(a),
        _ => None,
    });
    assert_eq!(pubacks, (1..=20).collect::<Vec<_>>(), "{packets:?}");
    assert!(end.is_ok(), "the broker reset the connection: {end:?}");
    let connect = connect_packet(Protocol::V3_1_1, "v311", true, 0, None);
    let before = encode(&connect, Protocol::V3_1_1).len() + bytes.len();
    // Input after the violation, more than one read takes.
    still_read_after_close(&broker, &mut raw, before, &vec![0u8; 64 * 1024]).await;
}

/// After a client's DISCONNECT nothing more comes from it [MQTT-3.14.4-2],
/// so on plain TCP the broker closes the socket without waiting for the
/// client's own close, and in order: the client, still holding its socket
/// open, reads an orderly end (FIN, not a reset), and the broker holds no
/// connection for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_closes_the_socket_in_order_without_waiting_for_the_client() {
    let broker = start(1, |_| {});
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let mut raw = Raw::open(broker.addr).await;
        let id = format!("leaving-{protocol:?}");
        let ack = raw
            .handshake(connect_packet(protocol, &id, true, 0, None))
            .await;
        assert_eq!(ack.code, 0);
        raw.send(&Packet::Disconnect(Default::default())).await;
        let (packets, end) = read_until_closed(&mut raw).await;
        assert!(packets.is_empty(), "{protocol:?}: {packets:?}");
        assert!(
            end.is_ok(),
            "{protocol:?}: the broker reset the connection: {end:?}"
        );
        let deadline = tokio::time::Instant::now() + STEP;
        while broker.connections_open() != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{protocol:?}: the broker still holds the connection"
            );
            tokio::time::sleep(Duration::from_millis(20)).await; // polling a counter
        }
    }
}

/// A subscriber that stopped reading, whose connection the broker ends (here:
/// taken over by a new connection with its client id), is closed within the
/// close grace even though the broker's last writes to it cannot complete:
/// its socket is not held open by a blocked writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stopped_reading_cannot_hold_its_socket() {
    // Dropping its QoS 0 (rather than holding the publisher back) lets the
    // test see, by the counter, that the broker's writes to it are stuck.
    let broker = start(1, |c| {
        c.limits.slow_consumer_policy = ringmq::config::SlowConsumerPolicy::Drop
    });
    let mut stuck = Raw::small_rcvbuf_subscriber(broker.addr, "stuck", "big").await;
    // From here on `stuck` reads nothing.
    let mut publisher = Raw::connect(broker.addr, "pub", true, 0, None).await;
    let payload = vec![7u8; 64 * 1024];
    let frame = encode(
        &publish_packet("big", QosPid::AtMostOnce, false, &payload),
        Protocol::V3_1_1,
    );
    // Far more than the output cap (1 MiB) and the sockets' buffers hold: the
    // broker starts dropping QoS 0 for `stuck`, whose writer is then blocked
    // on a socket nobody reads.
    for _ in 0..200 {
        publisher.send_bytes(&frame).await.expect("publish");
    }
    broker
        .wait_counters(STEP, "QoS 0 dropped for the stuck reader", |c| {
            c.dropped_slow_consumer > 0
        })
        .await;
    assert_eq!(broker.connections_open(), 2);

    let _again = Raw::connect(broker.addr, "stuck", true, 0, None).await;
    broker
        .wait_counters(STEP, "the stuck connection aborted", |c| {
            c.close_aborts == 1
        })
        .await;
    let deadline = tokio::time::Instant::now() + STEP;
    while broker.connections_open() != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stuck socket is still held: {} open",
            broker.connections_open()
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // polling a counter
    }
    // What reached the stuck client ends in a close, not in more data forever.
    let mut sink = Vec::new();
    let end = within(
        STEP,
        "the stuck socket's end",
        stuck.stream.read_to_end(&mut sink),
    )
    .await;
    assert!(
        end.is_ok()
            || end
                .as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::ConnectionReset),
        "{end:?}"
    );
}
