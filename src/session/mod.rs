//! One client's MQTT session as a sans-io state machine.
//!
//! Input: decoded packets from the client ([`Session::handle_packet`]) and
//! messages from the router ([`Session::deliver`]). Output: encoded bytes in
//! [`Session::tx`] for the connection to write, and [`Event`]s for the router.
//! Time arrives as `now` (milliseconds on the caller's monotonic clock); nothing
//! here performs I/O, reads a clock or knows about threads.

mod connect;
mod outbound;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

pub use connect::{check_connect, effective_keep_alive, Refusal};
pub use outbound::{Inflight, OutState, Outbound, Queued};

use crate::codec::{
    encode, reason, Ack, Connect, Packet, Pid, Properties, Protocol, Publish, QoS, QosPid, SubAck,
    SubOptions, Subscribe, UnsubAck, Unsubscribe,
};
use crate::config::Limits;
use crate::message::{Delivery, Message};
use crate::topic::{TopicError, TopicFilter, TopicName};

/// What the router must do after a packet was handled.
#[derive(Debug)]
pub enum Event {
    /// Route this message to subscribers (and the retained store).
    Publish(Arc<Message>),
    /// Insert these subscriptions, then call [`Session::send_suback`] with `codes`.
    Subscribe {
        pid: Pid,
        codes: Vec<u8>,
        added: Vec<(TopicFilter, SubOptions)>,
        /// Filters whose subscription already existed (retain handling 1 uses it).
        existed: Vec<bool>,
    },
    /// Remove these subscriptions (the UNSUBACK is already written).
    Unsubscribe(Vec<TopicFilter>),
    /// Normal DISCONNECT: no will.
    Disconnect,
}

/// A client broke a rule: the connection is closed (after a 5.0 DISCONNECT with
/// [`Violation::reason_code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("second CONNECT on a connection [MQTT-3.1.0-2]")]
    SecondConnect,
    #[error("{0} may only be sent by a server")]
    ServerOnlyPacket(&'static str),
    #[error("invalid topic name: {0}")]
    InvalidTopic(TopicError),
    #[error("more than max_awaiting_rel QoS 2 messages awaiting PUBREL")]
    AwaitingRelFull,
    #[error("topic alias not allowed (topic alias maximum is 0) [MQTT-3.3.2-8]")]
    TopicAliasInvalid,
    #[error("AUTH received but no authentication method is in use [MQTT-4.12.0-1]")]
    UnexpectedAuth,
    #[error("keep-alive expired: nothing received for 1.5 x {0} s [MQTT-3.1.2-24]")]
    KeepAliveTimeout(u16),
}

impl Violation {
    /// The 5.0 DISCONNECT reason code.
    pub fn reason_code(&self) -> u8 {
        match self {
            Violation::InvalidTopic(_) => reason::TOPIC_NAME_INVALID,
            Violation::AwaitingRelFull => reason::RECEIVE_MAXIMUM_EXCEEDED,
            Violation::TopicAliasInvalid => reason::TOPIC_ALIAS_INVALID,
            Violation::UnexpectedAuth => reason::PROTOCOL_ERROR,
            Violation::KeepAliveTimeout(_) => reason::KEEP_ALIVE_TIMEOUT,
            _ => reason::PROTOCOL_ERROR,
        }
    }
}

/// What became of a message handed to [`Session::deliver`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Encoded into `tx`.
    Sent,
    /// Held in the session queue (window full or client offline).
    Queued,
    /// QoS 0 dropped: the connection's output buffer is over `max_write_buffer`.
    DroppedSlowConsumer,
    /// QoS 0 for an offline client: not queued (as Mosquitto's default).
    DroppedOffline,
    /// QoS 1/2 dropped: the session queue is at `max_queued_messages`/`_bytes`.
    DroppedQueueFull,
}

/// One client's session: subscriptions, QoS state, and (while connected) its output.
#[derive(Debug)]
pub struct Session {
    client_id: Arc<str>,
    protocol: Protocol,
    /// 3.1.1 clean session = 0: the session outlives the connection.
    persistent: bool,
    keep_alive: u16,
    /// What the client asked for; differs from `keep_alive` when capped.
    requested_keep_alive: u16,
    last_rx: u64,
    connected: bool,
    will: Option<Arc<Message>>,
    subscriptions: HashMap<TopicFilter, SubOptions>,
    out: Outbound,
    /// Incoming QoS 2 packet ids not yet released, with their arrival time.
    awaiting_rel: HashMap<Pid, u64>,
    /// Encoded bytes waiting for the connection to write them.
    pub tx: BytesMut,
}

impl Session {
    /// A fresh session for an accepted CONNECT (checked with [`check_connect`]).
    pub fn new(client_id: Arc<str>, connect: &Connect, limits: &Limits, now: u64) -> Session {
        let mut session = Session {
            client_id,
            protocol: connect.protocol,
            persistent: !connect.clean_start,
            keep_alive: 0,
            requested_keep_alive: 0,
            last_rx: now,
            connected: false,
            will: None,
            subscriptions: HashMap::new(),
            out: Outbound::default(),
            awaiting_rel: HashMap::new(),
            tx: BytesMut::new(),
        };
        session.attach(connect, limits, now);
        session
    }

    pub fn client_id(&self) -> &Arc<str> {
        &self.client_id
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub fn is_persistent(&self) -> bool {
        self.persistent
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    pub fn subscriptions(&self) -> impl Iterator<Item = (&TopicFilter, &SubOptions)> {
        self.subscriptions.iter()
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    pub fn inflight_len(&self) -> usize {
        self.out.inflight.len()
    }

    pub fn queued_len(&self) -> usize {
        self.out.queue.len()
    }

    /// Binds the session to a new connection (fresh, or resumed by a CONNECT with
    /// clean session 0): takes the connection's protocol, keep-alive and will.
    pub fn attach(&mut self, connect: &Connect, limits: &Limits, now: u64) {
        self.protocol = connect.protocol;
        self.persistent = !connect.clean_start;
        self.keep_alive = effective_keep_alive(connect, limits);
        self.requested_keep_alive = connect.keep_alive;
        self.last_rx = now;
        self.connected = true;
        self.tx.clear();
        self.awaiting_rel.clear();
        self.will = connect.will.as_ref().and_then(|w| {
            let topic = TopicName::new(w.topic.clone(), limits.max_topic_levels).ok()?;
            let msg = Message::new(topic, w.payload.clone(), w.qos, w.retain);
            Some(msg.with_properties(w.properties.clone()).shared())
        });
    }

    /// The connection ended. Returns the will to publish when the end was abnormal.
    pub fn detach(&mut self, abnormal: bool) -> Option<Arc<Message>> {
        self.connected = false;
        self.tx.clear();
        let will = self.will.take();
        if abnormal {
            will
        } else {
            None
        }
    }

    /// Re-sends what the client has not acknowledged, with DUP set [MQTT-4.4.0-1],
    /// then whatever queued up while it was away.
    pub fn resume(&mut self, limits: &Limits) {
        let protocol = self.protocol;
        for entry in &self.out.inflight {
            match entry.state {
                OutState::Published => {
                    let delivery = Delivery {
                        qos_pid: QosPid::new(entry.qos, entry.pid),
                        dup: true,
                        retain: entry.retain,
                    };
                    entry.msg.encode_for(&mut self.tx, protocol, delivery);
                }
                OutState::Released => {
                    encode(&Packet::PubRel(Ack::new(entry.pid)), protocol, &mut self.tx);
                }
            }
        }
        self.pump(limits);
    }

    /// Accepts the connection: CONNACK first in `tx`, with the 5.0 properties that
    /// tell the client the limits it must respect.
    pub fn send_connack(
        &mut self,
        session_present: bool,
        assigned_id: Option<&str>,
        limits: &Limits,
    ) {
        let mut properties = Properties::default();
        if self.protocol.is_v5() {
            use crate::codec::Property::*;
            if let Some(id) = assigned_id {
                properties.push(AssignedClientIdentifier(Bytes::copy_from_slice(
                    id.as_bytes(),
                )));
            }
            if self.keep_alive != self.requested_keep_alive {
                properties.push(ServerKeepAlive(self.keep_alive));
            }
            properties.push(MaximumPacketSize(limits.max_packet_size));
            properties.push(ReceiveMaximum(
                limits.max_awaiting_rel.clamp(1, 65535) as u16
            ));
            properties.push(SharedSubscriptionAvailable(0));
            properties.push(SubscriptionIdentifierAvailable(0));
        }
        self.send(&Packet::ConnAck(crate::codec::ConnAck {
            session_present,
            code: 0,
            properties,
        }));
    }

    /// Writes CONNACK-like control packets and acks.
    pub fn send(&mut self, packet: &Packet) {
        encode(packet, self.protocol, &mut self.tx);
    }

    /// Handles one packet from the client. Events for the router go to `events`.
    pub fn handle_packet(
        &mut self,
        now: u64,
        packet: Packet,
        limits: &Limits,
        events: &mut Vec<Event>,
    ) -> Result<(), Violation> {
        self.last_rx = now;
        match packet {
            Packet::Publish(p) => self.on_publish(now, p, limits, events)?,
            Packet::PubAck(a) => self.on_puback(a.pid, limits),
            Packet::PubRec(a) => self.on_pubrec(a, limits),
            Packet::PubRel(a) => self.on_pubrel(a.pid),
            Packet::PubComp(a) => self.on_pubcomp(a.pid, limits),
            Packet::Subscribe(s) => self.on_subscribe(s, limits, events),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u, limits, events),
            Packet::PingReq => self.send(&Packet::PingResp),
            Packet::Disconnect(d) => {
                // 5.0 reason 0x04 asks for the will to be published anyway.
                if d.reason != reason::DISCONNECT_WITH_WILL {
                    self.will = None;
                }
                events.push(Event::Disconnect);
            }
            Packet::Connect(_) => return Err(Violation::SecondConnect),
            Packet::Auth(_) => return Err(Violation::UnexpectedAuth),
            other @ (Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp) => return Err(Violation::ServerOnlyPacket(other.name())),
        }
        Ok(())
    }

    fn on_publish(
        &mut self,
        now: u64,
        p: Publish,
        limits: &Limits,
        events: &mut Vec<Event>,
    ) -> Result<(), Violation> {
        if p.properties.find(topic_alias).is_some() {
            return Err(Violation::TopicAliasInvalid);
        }
        let topic =
            TopicName::new(p.topic, limits.max_topic_levels).map_err(Violation::InvalidTopic)?;
        let qos = p.qos_pid.qos();
        let msg = Message::new(topic, p.payload, qos, p.retain)
            .with_properties(forwarded_properties(p.properties))
            .shared();
        match p.qos_pid {
            QosPid::AtMostOnce => events.push(Event::Publish(msg)),
            QosPid::AtLeastOnce(pid) => {
                events.push(Event::Publish(msg));
                self.send(&Packet::PubAck(Ack::new(pid)));
            }
            QosPid::ExactlyOnce(pid) => {
                // A retransmission of an unreleased id is acknowledged but not routed
                // again: exactly once [MQTT-4.3.3-2].
                if !self.awaiting_rel.contains_key(&pid) {
                    if self.awaiting_rel.len() >= limits.max_awaiting_rel {
                        return Err(Violation::AwaitingRelFull);
                    }
                    self.awaiting_rel.insert(pid, now);
                    events.push(Event::Publish(msg));
                }
                self.send(&Packet::PubRec(Ack::new(pid)));
            }
        }
        Ok(())
    }

    fn on_pubrel(&mut self, pid: Pid) {
        let mut ack = Ack::new(pid);
        if self.awaiting_rel.remove(&pid).is_none() && self.protocol.is_v5() {
            ack.reason = reason::PACKET_ID_NOT_FOUND;
        }
        self.send(&Packet::PubComp(ack));
    }

    fn on_puback(&mut self, pid: Pid, limits: &Limits) {
        if let Some(i) = self
            .out
            .position(pid, OutState::Published, QoS::AtLeastOnce)
        {
            self.out.inflight.remove(i);
            self.pump(limits);
        }
    }

    fn on_pubrec(&mut self, ack: Ack, limits: &Limits) {
        let Some(i) = self
            .out
            .position(ack.pid, OutState::Published, QoS::ExactlyOnce)
        else {
            if self.protocol.is_v5() {
                let mut rel = Ack::new(ack.pid);
                rel.reason = reason::PACKET_ID_NOT_FOUND;
                self.send(&Packet::PubRel(rel));
            }
            return;
        };
        if ack.reason >= 0x80 {
            // 5.0: the receiver refused it; the flow ends here [MQTT-4.3.3-4].
            self.out.inflight.remove(i);
            self.pump(limits);
            return;
        }
        self.out.inflight[i].state = OutState::Released;
        self.send(&Packet::PubRel(Ack::new(ack.pid)));
    }

    fn on_pubcomp(&mut self, pid: Pid, limits: &Limits) {
        if let Some(i) = self.out.position(pid, OutState::Released, QoS::ExactlyOnce) {
            self.out.inflight.remove(i);
            self.pump(limits);
        }
    }

    fn on_subscribe(&mut self, s: Subscribe, limits: &Limits, events: &mut Vec<Event>) {
        let v5 = self.protocol.is_v5();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut added = Vec::with_capacity(s.filters.len());
        let mut existed = Vec::with_capacity(s.filters.len());
        for (raw, opts) in s.filters {
            let Ok(filter) = TopicFilter::new(raw, limits.max_topic_levels) else {
                codes.push(if v5 {
                    reason::TOPIC_FILTER_INVALID
                } else {
                    0x80
                });
                continue;
            };
            let exists = self.subscriptions.contains_key(&filter);
            if !exists && self.subscriptions.len() >= limits.max_subscriptions_per_client {
                codes.push(if v5 { reason::QUOTA_EXCEEDED } else { 0x80 });
                continue;
            }
            // A repeated filter replaces the old subscription [MQTT-3.8.4-3].
            self.subscriptions.insert(filter.clone(), opts);
            codes.push(opts.qos as u8);
            added.push((filter, opts));
            existed.push(exists);
        }
        events.push(Event::Subscribe {
            pid: s.pid,
            codes,
            added,
            existed,
        });
    }

    /// Completes a SUBSCRIBE once the router has made the subscriptions effective.
    pub fn send_suback(&mut self, pid: Pid, codes: Vec<u8>) {
        self.send(&Packet::SubAck(SubAck {
            pid,
            codes,
            properties: Properties::default(),
        }));
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe, limits: &Limits, events: &mut Vec<Event>) {
        let mut removed = Vec::with_capacity(u.filters.len());
        let mut codes = Vec::with_capacity(u.filters.len());
        for raw in u.filters {
            let filter = TopicFilter::new(raw, limits.max_topic_levels);
            match filter.map(|f| (self.subscriptions.remove(&f).is_some(), f)) {
                Ok((true, f)) => {
                    removed.push(f);
                    codes.push(reason::SUCCESS);
                }
                Ok((false, _)) => codes.push(reason::NO_SUBSCRIPTION_EXISTED),
                Err(_) => codes.push(reason::TOPIC_FILTER_INVALID),
            }
        }
        if !self.protocol.is_v5() {
            codes.clear();
        }
        self.send(&Packet::UnsubAck(UnsubAck {
            pid: u.pid,
            codes,
            properties: Properties::default(),
        }));
        events.push(Event::Unsubscribe(removed));
    }

    /// Accepts a message routed to this session at `qos` (already the minimum of
    /// publish and subscription QoS). `retain` is the RETAIN flag to send.
    pub fn deliver(
        &mut self,
        msg: &Arc<Message>,
        qos: QoS,
        retain: bool,
        limits: &Limits,
    ) -> Outcome {
        if qos == QoS::AtMostOnce {
            return self.deliver_qos0(msg, retain, limits);
        }
        let window_open = self.connected
            && self.out.queue.is_empty()
            && self.out.inflight.len() < usize::from(limits.max_inflight_messages)
            && self.tx.len() < limits.max_write_buffer;
        if window_open {
            self.send_inflight(msg.clone(), qos, retain);
            return Outcome::Sent;
        }
        if !self.out.has_room(
            msg.weight(),
            limits.max_queued_messages,
            limits.max_queued_bytes,
        ) {
            return Outcome::DroppedQueueFull;
        }
        self.out.enqueue(Queued {
            msg: msg.clone(),
            qos,
            retain,
        });
        Outcome::Queued
    }

    fn deliver_qos0(&mut self, msg: &Message, retain: bool, limits: &Limits) -> Outcome {
        if !self.connected {
            return Outcome::DroppedOffline;
        }
        if self.tx.len() >= limits.max_write_buffer {
            return Outcome::DroppedSlowConsumer;
        }
        let delivery = Delivery {
            qos_pid: QosPid::AtMostOnce,
            dup: false,
            retain,
        };
        msg.encode_for(&mut self.tx, self.protocol, delivery);
        Outcome::Sent
    }

    fn send_inflight(&mut self, msg: Arc<Message>, qos: QoS, retain: bool) {
        let pid = self.out.allocate_pid();
        let delivery = Delivery {
            qos_pid: QosPid::new(qos, pid),
            dup: false,
            retain,
        };
        msg.encode_for(&mut self.tx, self.protocol, delivery);
        self.out.inflight.push_back(Inflight {
            pid,
            msg,
            qos,
            retain,
            state: OutState::Published,
        });
    }

    /// Moves queued messages into the inflight window while it and the output
    /// buffer have room. Called after acks and after the connection drained `tx`.
    pub fn pump(&mut self, limits: &Limits) {
        while self.connected
            && self.out.inflight.len() < usize::from(limits.max_inflight_messages)
            && self.tx.len() < limits.max_write_buffer
        {
            let Some(item) = self.out.dequeue() else {
                return;
            };
            self.send_inflight(item.msg, item.qos, item.retain);
        }
    }

    /// True when the client has been silent for 1.5 x its keep-alive [MQTT-3.1.2-24].
    pub fn keep_alive_expired(&self, now: u64) -> bool {
        self.keep_alive > 0 && now.saturating_sub(self.last_rx) > u64::from(self.keep_alive) * 1500
    }

    pub fn keep_alive(&self) -> u16 {
        self.keep_alive
    }

    /// Forgets QoS 2 ids whose PUBREL never came within `awaiting_rel_timeout`, so a
    /// client can't pin state forever. Returns how many were dropped.
    pub fn expire_awaiting_rel(&mut self, now: u64, limits: &Limits) -> usize {
        let timeout = limits.awaiting_rel_timeout.as_millis() as u64;
        let before = self.awaiting_rel.len();
        self.awaiting_rel
            .retain(|_, &mut at| now.saturating_sub(at) < timeout);
        before - self.awaiting_rel.len()
    }
}

fn topic_alias(p: &crate::codec::Property) -> Option<u16> {
    match p {
        crate::codec::Property::TopicAlias(a) => Some(*a),
        _ => None,
    }
}

/// The PUBLISH properties a subscriber receives unchanged [MQTT-3.3.2-15..20].
fn forwarded_properties(props: Properties) -> Properties {
    use crate::codec::Property::*;
    if props.is_empty() {
        return props;
    }
    Properties(
        props
            .0
            .into_iter()
            .filter(|p| {
                matches!(
                    p,
                    PayloadFormatIndicator(_)
                        | MessageExpiryInterval(_)
                        | ContentType(_)
                        | ResponseTopic(_)
                        | CorrelationData(_)
                        | UserProperty(..)
                )
            })
            .collect(),
    )
}

/// The client id used in logs.
pub fn display_id(id: &Bytes) -> String {
    String::from_utf8_lossy(id).into_owned()
}

#[cfg(test)]
mod tests;
