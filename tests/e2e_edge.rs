//! Admission at the edge: `max_connections_per_ip` and `max_connection_rate`
//! refuse with a CONNACK that says why (3.1.1 "server unavailable"; 5.0
//! "quota exceeded" / "connection rate exceeded"), count the refusal, and
//! let the client in again once there is room.

mod common;

use std::time::Instant;

use common::*;
use ringmq::codec::Protocol;

async fn connack(addr: std::net::SocketAddr, protocol: Protocol, id: &str) -> (Raw, u8) {
    let mut raw = Raw::open(addr).await;
    let ack = raw
        .handshake(connect_packet(protocol, id, true, 0, None))
        .await;
    (raw, ack.code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_ip_refuses_the_next_one_from_that_address() {
    let broker = start(2, |c| c.limits.max_connections_per_ip = 2);
    let (first, code) = connack(broker.addr, Protocol::V3_1_1, "ip-1").await;
    assert_eq!(code, 0);
    let (_second, code) = connack(broker.addr, Protocol::V3_1_1, "ip-2").await;
    assert_eq!(code, 0);
    let (_, code) = connack(broker.addr, Protocol::V3_1_1, "ip-3").await;
    assert_eq!(code, 3, "3.1.1: server unavailable");
    let (_, code) = connack(broker.addr, Protocol::V5, "ip-4").await;
    assert_eq!(code, 0x97, "5.0: quota exceeded");
    broker
        .wait_counters(STEP, "refusals counted", |c| c.refused_per_ip == 2)
        .await;
    drop(first);
    // Once the broker has seen the close, the address has room again.
    broker
        .wait_counters(STEP, "the close seen", |c| c.connections_current == 1)
        .await;
    let (_third, code) = connack(broker.addr, Protocol::V3_1_1, "ip-5").await;
    assert_eq!(code, 0, "room again after a close");
}

/// With a rate of one a second, back-to-back connections beyond the first
/// are refused: at most one more is accepted per second that passed while
/// trying (so a stalled machine cannot fail the test, only weaken it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connection_rate_refuses_connections_beyond_the_rate() {
    let broker = start(1, |c| c.limits.max_connection_rate = 1);
    const TRIES: usize = 6;
    let began = Instant::now();
    let mut accepted = 0;
    let mut refused = Vec::new();
    let mut open = Vec::new();
    for i in 0..TRIES {
        let protocol = if i % 2 == 0 {
            Protocol::V3_1_1
        } else {
            Protocol::V5
        };
        let (raw, code) = connack(broker.addr, protocol, &format!("rate-{i}")).await;
        match code {
            0 => {
                accepted += 1;
                open.push(raw);
            }
            code => refused.push((protocol, code)),
        }
    }
    let allowed = 1 + began.elapsed().as_secs() as usize;
    assert!(accepted >= 1, "the first one is let in");
    assert!(
        accepted <= allowed,
        "{accepted} accepted in {:?}",
        began.elapsed()
    );
    for (protocol, code) in &refused {
        let want = if *protocol == Protocol::V5 { 0x9F } else { 3 };
        assert_eq!(*code, want, "{protocol:?}: connection rate exceeded");
    }
    let n = refused.len() as u64;
    broker
        .wait_counters(STEP, "refusals counted", |c| c.refused_connection_rate == n)
        .await;
}
