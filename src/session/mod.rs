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

pub use connect::{check_connect, effective_keep_alive, ClientParams, Refusal};
pub use outbound::{Inflight, OutState, Outbound, Routed};

use crate::codec::{
    encode, reason, Ack, Connect, Packet, Pid, Properties, Property, Protocol, Publish, QoS,
    QosPid, SubAck, SubOptions, Subscribe, UnsubAck, Unsubscribe, Will,
};
use crate::config::Limits;
use crate::message::{Alias, Delivery, Message};
use crate::topic::share::parse_shared;
use crate::topic::{TopicError, TopicFilter, TopicName};

/// A subscription as the session records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubEntry {
    pub opts: SubOptions,
    /// 5.0 subscription identifier, sent back with each matching PUBLISH.
    pub id: Option<u32>,
}

/// What the router must do after a packet was handled.
#[derive(Debug)]
pub enum Event {
    /// Route this message to subscribers (and the retained store).
    Publish(Arc<Message>),
    /// Insert these subscriptions, then call [`Session::send_suback`] with `codes`.
    Subscribe {
        pid: Pid,
        codes: Vec<u8>,
        added: Vec<(TopicFilter, SubEntry)>,
        /// Filters whose subscription already existed (retain handling 1 uses it).
        existed: Vec<bool>,
    },
    /// Remove these subscriptions (the UNSUBACK is already written).
    Unsubscribe(Vec<TopicFilter>),
    /// Normal DISCONNECT: no will (unless 5.0 reason 0x04).
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
    #[error("more than max_awaiting_rel QoS 2 messages awaiting PUBREL [MQTT-3.3.4-9]")]
    AwaitingRelFull,
    #[error("topic alias 0 or above the announced maximum [MQTT-3.3.2-9]")]
    TopicAliasInvalid,
    #[error("topic alias not set by an earlier PUBLISH [MQTT-3.3.2-8]")]
    TopicAliasUnknown,
    #[error("AUTH received but no authentication method is in use [MQTT-4.12.0-1]")]
    UnexpectedAuth,
    #[error("no local on a shared subscription [MQTT-3.8.3-4]")]
    NoLocalOnShared,
    #[error("DISCONNECT sets a session expiry after CONNECT set 0 [MQTT-3.14.2-2]")]
    SessionExpiryRaised,
    #[error("PUBLISH from a client carries a subscription identifier [MQTT-3.3.4-6]")]
    SubscriptionIdFromClient,
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
    /// 5.0: the message expiry interval passed before delivery started.
    DroppedExpired,
    /// 5.0: larger than the client's Maximum Packet Size [MQTT-3.1.2-25].
    DroppedTooLarge,
}

/// A will to publish now or after its delay. The message is built when it is
/// published, so its 5.0 expiry interval counts from then (5.0 section 3.1.3.2.4).
#[derive(Debug)]
pub struct WillRelease {
    topic: TopicName,
    will: Will,
    publisher: Arc<str>,
    /// 5.0 will delay interval, seconds.
    pub delay: u32,
}

impl WillRelease {
    pub fn into_message(self, now: u64) -> Arc<Message> {
        let w = self.will;
        Message::new(self.topic, w.payload, w.qos, w.retain)
            .with_properties(w.properties, now)
            .from_client(self.publisher)
            .shared()
    }
}

/// Deliveries that happened inside the session (a window refill after an ack or
/// a write), for the router's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub sent: u64,
    pub expired: u64,
    pub too_large: u64,
}

/// One client's session: subscriptions, QoS state, and (while connected) its output.
#[derive(Debug)]
pub struct Session {
    client_id: Arc<str>,
    protocol: Protocol,
    params: ClientParams,
    /// The session expiry the CONNECT asked for was 0 ([MQTT-3.14.2-2]).
    connect_expiry_zero: bool,
    keep_alive: u16,
    /// What the client asked for; differs from `keep_alive` when capped.
    requested_keep_alive: u16,
    last_rx: u64,
    connected: bool,
    /// Boxed: most sessions have none, and it is large.
    will: Option<Box<Will>>,
    subscriptions: HashMap<TopicFilter, SubEntry>,
    out: Outbound,
    /// Incoming QoS 2 packet ids not yet released, with their arrival time.
    awaiting_rel: HashMap<Pid, u64>,
    /// 5.0 topic aliases the client set (index = alias - 1).
    aliases_in: Vec<Option<TopicName>>,
    /// 5.0 topic aliases the broker set towards the client.
    aliases_out: HashMap<TopicName, u16>,
    /// Deliveries made by window refills since the router last looked.
    tally: Tally,
    /// Encoded bytes waiting for the connection to write them.
    pub tx: BytesMut,
}

impl Session {
    /// A fresh session for an accepted CONNECT (checked with [`check_connect`]).
    pub fn new(client_id: Arc<str>, connect: &Connect, limits: &Limits, now: u64) -> Session {
        let mut session = Session {
            client_id,
            protocol: connect.protocol,
            params: ClientParams::from_connect(connect, limits),
            connect_expiry_zero: true,
            keep_alive: 0,
            requested_keep_alive: 0,
            last_rx: now,
            connected: false,
            will: None,
            subscriptions: HashMap::new(),
            out: Outbound::default(),
            awaiting_rel: HashMap::new(),
            aliases_in: Vec::new(),
            aliases_out: HashMap::new(),
            tally: Tally::default(),
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

    /// True when the session outlives its connection (3.1.1 clean session 0, or a
    /// 5.0 session expiry interval above 0).
    pub fn is_persistent(&self) -> bool {
        self.params.session_expiry > 0
    }

    /// Seconds the session outlives its connection; `u32::MAX`: forever.
    pub fn session_expiry(&self) -> u32 {
        self.params.session_expiry
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    pub fn subscriptions(&self) -> impl Iterator<Item = (&TopicFilter, &SubEntry)> {
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
    /// clean start 0): takes the connection's protocol, parameters and will.
    pub fn attach(&mut self, connect: &Connect, limits: &Limits, now: u64) {
        self.protocol = connect.protocol;
        self.params = ClientParams::from_connect(connect, limits);
        self.connect_expiry_zero = self.params.session_expiry == 0;
        self.keep_alive = effective_keep_alive(connect, limits);
        self.requested_keep_alive = connect.keep_alive;
        self.last_rx = now;
        self.connected = true;
        self.tx.clear();
        self.awaiting_rel.clear();
        self.aliases_in.clear();
        self.aliases_out.clear();
        if self.protocol.is_v5() {
            self.aliases_in
                .resize(usize::from(limits.max_topic_alias), None);
        }
        self.will = connect.will.clone().map(Box::new);
    }

    /// The connection ended. Returns the will to publish: after an abnormal end,
    /// or a 5.0 DISCONNECT with reason 0x04.
    pub fn detach(&mut self, limits: &Limits) -> Option<WillRelease> {
        self.connected = false;
        self.tx.clear();
        // A normal DISCONNECT already cleared the will, unless its reason (5.0
        // 0x04) asked for it to be published.
        let will = *self.will.take()?;
        let topic = TopicName::new(will.topic.clone(), limits.max_topic_levels).ok()?;
        let delay = will.properties.find(|p| match p {
            Property::WillDelayInterval(d) => Some(*d),
            _ => None,
        });
        Some(WillRelease {
            topic,
            will,
            publisher: self.client_id.clone(),
            delay: delay.unwrap_or(0),
        })
    }

    /// Re-sends what the client has not acknowledged, with DUP set [MQTT-4.4.0-1],
    /// then whatever queued up while it was away.
    pub fn resume(&mut self, limits: &Limits, now: u64) {
        let protocol = self.protocol;
        for entry in &self.out.inflight {
            match entry.state {
                OutState::Published => {
                    let d = Delivery {
                        qos_pid: QosPid::new(entry.item.qos, entry.pid),
                        dup: true,
                        retain: entry.item.retain,
                        sub_ids: &entry.item.sub_ids,
                        alias: Alias::None,
                        now,
                    };
                    entry.item.msg.encode_for(&mut self.tx, protocol, &d);
                }
                OutState::Released => {
                    encode(&Packet::PubRel(Ack::new(entry.pid)), protocol, &mut self.tx);
                }
            }
        }
        self.pump(limits, now);
    }

    /// What window refills delivered or dropped since the last call.
    pub fn take_tally(&mut self) -> Tally {
        std::mem::take(&mut self.tally)
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
            if let Some(id) = assigned_id {
                let id = Bytes::copy_from_slice(id.as_bytes());
                properties.push(Property::AssignedClientIdentifier(id));
            }
            if self.keep_alive != self.requested_keep_alive {
                properties.push(Property::ServerKeepAlive(self.keep_alive));
            }
            if self.params.session_expiry == limits.max_session_expiry
                && limits.max_session_expiry != u32::MAX
            {
                properties.push(Property::SessionExpiryInterval(self.params.session_expiry));
            }
            properties.push(Property::MaximumPacketSize(limits.max_packet_size));
            let receive_max = limits.max_awaiting_rel.clamp(1, 65535) as u16;
            properties.push(Property::ReceiveMaximum(receive_max));
            properties.push(Property::TopicAliasMaximum(limits.max_topic_alias));
        }
        self.send(&Packet::ConnAck(crate::codec::ConnAck {
            session_present,
            code: 0,
            properties,
        }));
    }

    /// Writes a control packet or ack.
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
            Packet::PubAck(a) => self.on_puback(a.pid, limits, now),
            Packet::PubRec(a) => self.on_pubrec(a, limits, now),
            Packet::PubRel(a) => self.on_pubrel(a.pid),
            Packet::PubComp(a) => self.on_pubcomp(a.pid, limits, now),
            Packet::Subscribe(s) => self.on_subscribe(s, limits, events)?,
            Packet::Unsubscribe(u) => self.on_unsubscribe(u, limits, events),
            Packet::PingReq => self.send(&Packet::PingResp),
            Packet::Disconnect(d) => self.on_disconnect(d, limits, events)?,
            Packet::Connect(_) => return Err(Violation::SecondConnect),
            Packet::Auth(_) => return Err(Violation::UnexpectedAuth),
            other @ (Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp) => return Err(Violation::ServerOnlyPacket(other.name())),
        }
        Ok(())
    }

    fn on_disconnect(
        &mut self,
        d: crate::codec::Disconnect,
        limits: &Limits,
        events: &mut Vec<Event>,
    ) -> Result<(), Violation> {
        if let Some(expiry) = d.properties.find(session_expiry) {
            if self.connect_expiry_zero && expiry != 0 {
                return Err(Violation::SessionExpiryRaised);
            }
            self.params.session_expiry = expiry.min(limits.max_session_expiry);
        }
        // 5.0 reason 0x04 asks for the will to be published anyway.
        if d.reason != reason::DISCONNECT_WITH_WILL {
            self.will = None;
        }
        events.push(Event::Disconnect);
        Ok(())
    }

    /// The topic of a 5.0 PUBLISH, through its topic alias if it has one.
    fn resolve_topic(&mut self, p: &Publish, limits: &Limits) -> Result<TopicName, Violation> {
        let alias = p.properties.find(|p| match p {
            Property::TopicAlias(a) => Some(*a),
            _ => None,
        });
        let Some(alias) = alias else {
            return TopicName::new(p.topic.clone(), limits.max_topic_levels)
                .map_err(Violation::InvalidTopic);
        };
        let slot = usize::from(alias).checked_sub(1);
        let Some(entry) = slot.and_then(|i| self.aliases_in.get_mut(i)) else {
            return Err(Violation::TopicAliasInvalid);
        };
        if p.topic.is_empty() {
            return entry.clone().ok_or(Violation::TopicAliasUnknown);
        }
        let topic = TopicName::new(p.topic.clone(), limits.max_topic_levels)
            .map_err(Violation::InvalidTopic)?;
        *entry = Some(topic.clone());
        Ok(topic)
    }

    fn on_publish(
        &mut self,
        now: u64,
        p: Publish,
        limits: &Limits,
        events: &mut Vec<Event>,
    ) -> Result<(), Violation> {
        let has_sub_id =
            |p: &Property| matches!(p, Property::SubscriptionIdentifier(_)).then_some(());
        if p.properties.find(has_sub_id).is_some() {
            return Err(Violation::SubscriptionIdFromClient);
        }
        let topic = self.resolve_topic(&p, limits)?;
        let qos = p.qos_pid.qos();
        let msg = Message::new(topic, p.payload, qos, p.retain)
            .with_properties(p.properties, now)
            .from_client(self.client_id.clone())
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

    fn on_puback(&mut self, pid: Pid, limits: &Limits, now: u64) {
        if let Some(i) = self
            .out
            .position(pid, OutState::Published, QoS::AtLeastOnce)
        {
            self.out.inflight.remove(i);
            self.pump(limits, now);
        }
    }

    fn on_pubrec(&mut self, ack: Ack, limits: &Limits, now: u64) {
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
            self.pump(limits, now);
            return;
        }
        self.out.inflight[i].state = OutState::Released;
        self.send(&Packet::PubRel(Ack::new(ack.pid)));
    }

    fn on_pubcomp(&mut self, pid: Pid, limits: &Limits, now: u64) {
        if let Some(i) = self.out.position(pid, OutState::Released, QoS::ExactlyOnce) {
            self.out.inflight.remove(i);
            self.pump(limits, now);
        }
    }

    fn on_subscribe(
        &mut self,
        s: Subscribe,
        limits: &Limits,
        events: &mut Vec<Event>,
    ) -> Result<(), Violation> {
        let v5 = self.protocol.is_v5();
        let id = s.properties.find(|p| match p {
            Property::SubscriptionIdentifier(i) => Some(*i),
            _ => None,
        });
        let refused = |v5_code: u8| if v5 { v5_code } else { 0x80 };
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut added = Vec::with_capacity(s.filters.len());
        let mut existed = Vec::with_capacity(s.filters.len());
        for (raw, opts) in s.filters {
            let Ok(filter) = TopicFilter::new(raw, limits.max_topic_levels) else {
                codes.push(refused(reason::TOPIC_FILTER_INVALID));
                continue;
            };
            match parse_shared(filter.as_str()) {
                Some(Err(())) => {
                    codes.push(refused(reason::TOPIC_FILTER_INVALID));
                    continue;
                }
                Some(Ok(_)) if opts.no_local && v5 => return Err(Violation::NoLocalOnShared),
                _ => {}
            }
            let exists = self.subscriptions.contains_key(&filter);
            if !exists && self.subscriptions.len() >= limits.max_subscriptions_per_client {
                codes.push(refused(reason::QUOTA_EXCEEDED));
                continue;
            }
            // A repeated filter replaces the old subscription [MQTT-3.8.4-3].
            let entry = SubEntry { opts, id };
            self.subscriptions.insert(filter.clone(), entry);
            codes.push(opts.qos as u8);
            added.push((filter, entry));
            existed.push(exists);
        }
        events.push(Event::Subscribe {
            pid: s.pid,
            codes,
            added,
            existed,
        });
        Ok(())
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

    /// Accepts a message routed to this session (`item.qos` is already the
    /// minimum of publish and subscription QoS).
    pub fn deliver(&mut self, item: Routed, limits: &Limits, now: u64) -> Outcome {
        if item.msg.expired(now) {
            return Outcome::DroppedExpired;
        }
        if item.qos == QoS::AtMostOnce {
            return self.deliver_qos0(&item, limits, now);
        }
        let window_open = self.connected
            && self.out.queue.is_empty()
            && self.out.inflight.len() < self.window(limits)
            && self.tx.len() < limits.max_write_buffer;
        if window_open {
            return self.send_inflight(item, now);
        }
        if !self.out.has_room(
            item.msg.weight(),
            limits.max_queued_messages,
            limits.max_queued_bytes,
        ) {
            return Outcome::DroppedQueueFull;
        }
        self.out.enqueue(item);
        Outcome::Queued
    }

    /// The outgoing window: our cap, narrowed by the client's Receive Maximum.
    fn window(&self, limits: &Limits) -> usize {
        usize::from(
            limits
                .max_inflight_messages
                .min(self.params.receive_maximum),
        )
    }

    fn deliver_qos0(&mut self, item: &Routed, limits: &Limits, now: u64) -> Outcome {
        if !self.connected {
            return Outcome::DroppedOffline;
        }
        if self.tx.len() >= limits.max_write_buffer {
            return Outcome::DroppedSlowConsumer;
        }
        self.encode_delivery(item, QosPid::AtMostOnce, now)
    }

    /// Encodes one PUBLISH, choosing a topic alias when the client accepts them,
    /// and takes it back if it exceeds the client's maximum packet size.
    fn encode_delivery(&mut self, item: &Routed, qos_pid: QosPid, now: u64) -> Outcome {
        let alias = self.outgoing_alias(&item.msg.topic);
        let d = Delivery {
            qos_pid,
            dup: false,
            retain: item.retain,
            sub_ids: &item.sub_ids,
            alias,
            now,
        };
        let start = self.tx.len();
        let len = item.msg.encode_for(&mut self.tx, self.protocol, &d);
        if len > self.params.maximum_packet_size as usize {
            self.tx.truncate(start);
            return Outcome::DroppedTooLarge;
        }
        if let Alias::Set(a) = alias {
            self.aliases_out.insert(item.msg.topic.clone(), a);
        }
        Outcome::Sent
    }

    fn outgoing_alias(&self, topic: &TopicName) -> Alias {
        let max = self.params.topic_alias_maximum;
        if max == 0 {
            return Alias::None;
        }
        match self.aliases_out.get(topic) {
            Some(a) => Alias::Use(*a),
            None if self.aliases_out.len() < usize::from(max) => {
                Alias::Set(self.aliases_out.len() as u16 + 1)
            }
            None => Alias::None,
        }
    }

    fn send_inflight(&mut self, item: Routed, now: u64) -> Outcome {
        let pid = self.out.allocate_pid();
        let outcome = self.encode_delivery(&item, QosPid::new(item.qos, pid), now);
        if outcome == Outcome::Sent {
            self.out.inflight.push_back(Inflight {
                pid,
                item,
                state: OutState::Published,
            });
        }
        outcome
    }

    /// Moves queued messages into the inflight window while it and the output
    /// buffer have room. Called after acks and after the connection drained `tx`;
    /// what it delivers or drops is recorded in the tally.
    pub fn pump(&mut self, limits: &Limits, now: u64) {
        while self.connected
            && self.out.inflight.len() < self.window(limits)
            && self.tx.len() < limits.max_write_buffer
        {
            let Some(item) = self.out.dequeue() else {
                break;
            };
            if item.msg.expired(now) {
                self.tally.expired += 1;
                continue;
            }
            match self.send_inflight(item, now) {
                Outcome::Sent => self.tally.sent += 1,
                Outcome::DroppedTooLarge => self.tally.too_large += 1,
                _ => {}
            }
        }
    }

    /// Messages that came through shared subscriptions and were not received for
    /// sure: handed back so another group member gets them.
    pub fn take_shared_unacked(&mut self) -> Vec<Routed> {
        self.out.take_shared_unacked()
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

fn session_expiry(p: &Property) -> Option<u32> {
    match p {
        Property::SessionExpiryInterval(s) => Some(*s),
        _ => None,
    }
}

/// The client id used in logs.
pub fn display_id(id: &Bytes) -> String {
    String::from_utf8_lossy(id).into_owned()
}

#[cfg(test)]
mod tests;
