//! CONNECT validation and the 5.0 connection parameters a CONNECT carries.

use crate::codec::{Connect, ConnectCode, Property, Protocol};
use crate::limits::Limits;
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
    if v5 && c.properties.find(auth_method).is_some() {
        return Err(refuse(
            ConnectCode::BadAuthenticationMethod,
            "enhanced authentication method not supported [MQTT-4.12.0-1]",
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

fn auth_method(p: &Property) -> Option<()> {
    matches!(p, Property::AuthenticationMethod(_)).then_some(())
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

/// What a 5.0 CONNECT asks of the broker; 3.1.1 gets the equivalent defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientParams {
    /// Seconds the session outlives the connection; `u32::MAX`: forever.
    pub session_expiry: u32,
    /// Most unacknowledged QoS 1/2 PUBLISHes the client accepts.
    pub receive_maximum: u16,
    /// Largest packet the client accepts.
    pub maximum_packet_size: u32,
    /// Topic aliases the client accepts from the broker.
    pub topic_alias_maximum: u16,
    /// A 3.1/3.1.1 bridge (protocol level with the bridge flag): its
    /// subscriptions get No Local and Retain As Published, as 5.0 bridges
    /// ask for and as Mosquitto treats such bridges.
    pub bridge: bool,
}

impl ClientParams {
    pub fn from_connect(c: &Connect, limits: &Limits) -> ClientParams {
        if c.protocol != Protocol::V5 {
            let session_expiry = if c.clean_start {
                0
            } else {
                limits.persistent_client_expiration
            };
            return ClientParams {
                session_expiry,
                receive_maximum: u16::MAX,
                maximum_packet_size: u32::MAX,
                topic_alias_maximum: 0,
                bridge: c.bridge,
            };
        }
        let mut params = ClientParams {
            session_expiry: 0,
            receive_maximum: u16::MAX,
            maximum_packet_size: u32::MAX,
            topic_alias_maximum: 0,
            bridge: false,
        };
        for p in c.properties.iter() {
            match *p {
                Property::SessionExpiryInterval(s) => params.session_expiry = s,
                Property::ReceiveMaximum(r) => params.receive_maximum = r,
                Property::MaximumPacketSize(m) => params.maximum_packet_size = m,
                Property::TopicAliasMaximum(t) => params.topic_alias_maximum = t,
                _ => {}
            }
        }
        params.session_expiry = params.session_expiry.min(limits.max_session_expiry);
        params
    }
}
