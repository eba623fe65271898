//! The epoll fallback (`--io-driver epoll`, also what `auto` picks where io_uring
//! is blocked) serves the same traffic as io_uring: QoS 1 and 2 across cores,
//! in order, exactly once.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use ringmq::config::IoDriver;
use rumqttc::QoS;

const N: usize = 300;

async fn stream_on_epoll(qos: QoS) {
    let broker = start(2, |c| c.io_driver = IoDriver::Epoll);
    let tag = format!("epoll-q{}", qos as u8);
    let topic = format!("epoll/{tag}");
    let mut sub = V4::connect(broker.addr, &id_on(1, 2, &format!("sub-{tag}"))).await;
    sub.subscribe_ok(&topic, qos).await;
    let publisher = V4::connect(broker.addr, &id_on(0, 2, &format!("pub-{tag}"))).await;
    for i in 0..N {
        publisher
            .publish(&topic, qos, false, numbered(&tag, i))
            .await;
    }
    let got = within(
        Duration::from_secs(15),
        "all messages",
        sub.recv_publishes(N),
    )
    .await;
    let payloads: Vec<Bytes> = got.into_iter().map(|p| p.payload).collect();
    assert_sequence(&tag, &tag, &payloads, N);
    // Exactly once: nothing beyond the N (a negative check, hence the short wait).
    sub.assert_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_across_cores_on_epoll() {
    stream_on_epoll(QoS::AtLeastOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_across_cores_on_epoll() {
    stream_on_epoll(QoS::ExactlyOnce).await;
}
