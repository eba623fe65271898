//! `busy_poll_us`: cores that keep polling for a while after input instead
//! of sleeping. Messages flow as without it, within a core and across cores,
//! the polling is counted, and it stops once the broker is quiet.

mod common;

use common::v4::QoS;
use common::*;

const WINDOW_US: u32 = 200;

fn polling_broker() -> TestBroker {
    start(2, |c| c.busy_poll_us = WINDOW_US)
}

/// QoS 1 streams from a publisher on the subscriber's core and from one on
/// the other core arrive whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_broker_delivers_within_and_across_cores() {
    const N: usize = 200;
    let broker = polling_broker();
    near_and_far_streams_arrive_in_order(&broker, "bp", N).await;
    broker
        .wait_counters(STEP, "polling counted", |c| c.busy_poll_turns > 0)
        .await;
}

/// Once nothing comes in, the cores stop polling: two snapshots in a row
/// (each a tick apart, 500 ms, far longer than the window) count the same
/// turns. A core that kept polling would add turns between any two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_stops_when_the_broker_is_quiet() {
    let broker = polling_broker();
    let mut client = V4::connect(broker.addr, &id_on(1, 2, "bp-quiet")).await;
    client.subscribe_ok("bp/q", QoS::AtLeastOnce).await;
    client.publish("bp/q", QoS::AtLeastOnce, false, "x").await;
    client.recv_publish().await;
    let deadline = tokio::time::Instant::now() + STEP;
    let mut last = broker.wait_counters(STEP, "a snapshot", |_| true).await;
    loop {
        let next = broker.wait_counters(STEP, "a snapshot", |_| true).await;
        if next.busy_poll_turns == last.busy_poll_turns {
            assert!(next.busy_poll_turns > 0, "the traffic was polled for");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still polling with nothing to do: {} turns, then {}",
            last.busy_poll_turns,
            next.busy_poll_turns
        );
        last = next;
    }
}
