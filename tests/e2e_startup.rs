//! Broker start-up as the tests (and embedders) use it: with port 0,
//! `Broker::start` must report the one port that every core listens on.
//!
//! Regression test for a bug found by these tests (fixed in 9df3136): each
//! core bound its own SO_REUSEPORT listener to port 0, so every core got a
//! different ephemeral port and `Broker::addr` named only one of them.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::*;

/// Local ports of the listening TCP sockets on 127.0.0.1 in this network
/// namespace (from /proc/net/tcp), one entry per socket.
fn loopback_listeners() -> Vec<u16> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (local, state) = (cols.get(1)?, cols.get(3)?);
            let (ip, port) = local.split_once(':')?;
            (*state == "0A" && ip == "0100007F").then(|| u16::from_str_radix(port, 16).ok())?
        })
        .collect()
}

/// Port 0: every core's SO_REUSEPORT listener is on the reported port.
#[test]
fn port_zero_every_core_listens_on_the_reported_port() {
    for cores in [1, 2, 4] {
        let broker = start(cores, |_| {});
        assert_eq!(broker.addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        let on_port = loopback_listeners()
            .into_iter()
            .filter(|p| *p == broker.port)
            .count();
        assert_eq!(
            on_port, cores,
            "{cores} cores: one SO_REUSEPORT listener per core on port {}",
            broker.port
        );
    }
}

/// Four cores: a subscriber on every core gets the messages of a publisher
/// on every core (all twelve cross-core paths and the four local ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_cores_every_path() {
    let broker = start(4, |_| {});
    let mut subs = Vec::new();
    for core in 0..4 {
        let mut s = V4::connect(broker.addr, &id_on(core, 4, &format!("c4-sub{core}"))).await;
        s.subscribe_ok("c4/+", v4::QoS::AtLeastOnce).await;
        subs.push(s);
    }
    for core in 0..4 {
        let mut p = V4::connect(broker.addr, &id_on(core, 4, &format!("c4-pub{core}"))).await;
        p.publish(
            &format!("c4/{core}"),
            v4::QoS::AtLeastOnce,
            false,
            format!("from{core}"),
        )
        .await;
        p.wait_acks(1, v4::QoS::AtLeastOnce).await;
    }
    for (core, s) in subs.iter_mut().enumerate() {
        let mut got: Vec<String> = s
            .recv_publishes(4)
            .await
            .into_iter()
            .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
            .collect();
        // Four publishers: MQTT orders messages per publisher only.
        got.sort();
        assert_eq!(
            got,
            ["from0", "from1", "from2", "from3"],
            "subscriber on core {core}"
        );
    }
}
