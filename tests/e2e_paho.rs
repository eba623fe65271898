//! MQTT 5.0 with Eclipse Paho's Python client (paho-mqtt 2.x): each test
//! starts a 2-core broker and runs one scenario script from `tests/paho/`
//! (`python3 tests/paho/<script>.py 127.0.0.1 <port>`), which prints one
//! `OK ...`/`FAIL ...` line and exits non-zero on failure.
//!
//! Paho is required: scripts/test.sh installs it
//! (`python3 -m pip install 'paho-mqtt>=2,<3'`); a missing or too old Paho
//! fails these tests loudly rather than skipping them.
//!
//! Every script is bounded twice: by its own alarm (16 s) and by a kill here.

mod common;

use common::*;

/// Runs `tests/paho/<name>.py` against a fresh broker and fails with its
/// output unless it exits 0 having printed an `OK` line (bounded by the
/// script's alarm and by [`Script::finish`]).
fn run_script(name: &str, tweak: impl FnOnce(&mut ringmq::config::Config)) {
    let broker = start(2, tweak);
    let port = broker.port.to_string();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(paho(name, &["127.0.0.1", &port]).finish());
}

/// CONNACK properties (assigned id, Server Keep Alive, Topic Alias Maximum,
/// Receive Maximum) and request/response properties passing through.
#[test]
fn paho_connack_and_request_response() {
    run_script("connack_request_response", |c| c.limits.max_keepalive = 60);
}

/// Session expiry resume with queued messages, message expiry while queued,
/// clean start dropping the session.
#[test]
fn paho_session_and_message_expiry() {
    run_script("session_and_message_expiry", |_| {});
}

/// Shared subscriptions: 5.0 and 3.1.1 Paho members, exactly once per group,
/// no retained messages on a shared subscribe.
#[test]
fn paho_shared_subscriptions() {
    run_script("shared_subscriptions", |_| {});
}

/// Topic aliases from a Paho publisher, subscription identifiers, No Local.
#[test]
fn paho_alias_subscription_ids_no_local() {
    run_script("alias_subid_nolocal", |_| {});
}

/// Will delay: published after the delay, cancelled by a reconnect.
#[test]
fn paho_will_delay() {
    run_script("will_delay", |_| {});
}
