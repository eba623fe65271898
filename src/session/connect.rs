//! CONNECT validation: the rules a CONNECT must pass before a session exists.

use crate::codec::{Connect, ConnectCode, Protocol};
use crate::config::Limits;
use crate::topic::TopicName;

/// Why a CONNECT is refused: the CONNACK code to answer with (if any) and the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// `None`: close without CONNACK (a malformed will in 3.1.1 has no code).
    pub code: Option<ConnectCode>,
    pub rule: &'static str,
}

fn refuse(code: ConnectCode, rule: &'static str) -> Refusal {
    Refusal {
        code: Some(code),
        rule,
    }
}

/// Checks a CONNECT against the spec and the broker's limits.
pub fn check_connect(c: &Connect, limits: &Limits) -> Result<(), Refusal> {
    let v5 = c.protocol == Protocol::V5;
    if c.client_id.is_empty() && !c.clean_start && !v5 {
        return Err(refuse(
            ConnectCode::ClientIdRejected,
            "empty client id requires clean session [MQTT-3.1.3-8]",
        ));
    }
    if c.client_id.len() > limits.max_client_id_len {
        return Err(refuse(
            ConnectCode::ClientIdRejected,
            "client id longer than max_client_id_len",
        ));
    }
    if !v5 && c.keep_alive > limits.max_keepalive {
        // 3.1.1 has no way to tell the client a smaller value (Mosquitto does the same).
        return Err(refuse(
            ConnectCode::ClientIdRejected,
            "keep-alive above max_keepalive",
        ));
    }
    if let Some(will) = &c.will {
        if TopicName::new(will.topic.clone(), limits.max_topic_levels).is_err() {
            let code = v5.then_some(ConnectCode::MalformedPacket);
            return Err(Refusal {
                code,
                rule: "will topic is not a valid topic name [MQTT-3.1.3-11]",
            });
        }
    }
    Ok(())
}

/// The keep-alive the session runs with: 5.0 clients above the cap get the cap
/// (announced with Server Keep Alive).
pub fn effective_keep_alive(c: &Connect, limits: &Limits) -> u16 {
    if c.protocol == Protocol::V5 && c.keep_alive > limits.max_keepalive {
        limits.max_keepalive
    } else {
        c.keep_alive
    }
}
