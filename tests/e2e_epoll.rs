//! The epoll fallback (`--io-driver epoll`, also what `auto` picks where io_uring
//! is blocked) serves the same traffic as io_uring: QoS 1 and 2 across cores,
//! in order, exactly once.

mod common;

use common::*;
use ringmq::config::IoDriver;
use rumqttc::QoS;

const N: usize = 300;

async fn stream_on_epoll(qos: QoS) {
    let broker = start(2, |c| c.io_driver = IoDriver::Epoll);
    let tag = format!("epoll-q{}", qos as u8);
    stream_in_order_once(&broker, &tag, qos, 0, 1, N).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_across_cores_on_epoll() {
    stream_on_epoll(QoS::AtLeastOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_across_cores_on_epoll() {
    stream_on_epoll(QoS::ExactlyOnce).await;
}
