//! One client's MQTT session as a sans-io state machine.
//!
//! Input: decoded packets from the client ([`Session::handle_packet`]) and
//! messages from the router ([`Session::deliver`]). Output: encoded bytes in
//! [`Session::tx`] for the connection to write, and [`Event`]s for the router.
//! Time arrives as `now` (milliseconds on the caller's monotonic clock); nothing
//! here performs I/O, reads a clock or knows about threads.

mod connect;
mod delivery;
mod inbound;
mod outbound;
mod subscriptions;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

pub use connect::{check_connect, effective_keep_alive, ClientParams, Refusal};
pub use outbound::{Inflight, OutState, Outbound, Routed};

use crate::access::{DecisionCache, Grant, Permissions};
use crate::codec::{
    encode, reason, Ack, Connect, Packet, Pid, Properties, Property, Protocol, Publish, QoS,
    QosPid, SubAck, SubOptions, Subscribe, UnsubAck, Unsubscribe, Will,
};
use crate::durable::journal::Recorder;
use crate::durable::Epoch;
use crate::limits::{Limits, SlowConsumerPolicy};
use crate::message::{Alias, Delivery, Message};
use crate::time::{keep_alive_grace, Time};
use crate::topic::{SubFilter, TopicError, TopicFilter, TopicName};

/// A subscription as the session records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubEntry {
    pub opts: SubOptions,
    /// 5.0 subscription identifier, sent back with each matching PUBLISH.
    pub id: Option<u32>,
    /// The client may read only some topics the filter matches: each delivery
    /// is checked against its [`Permissions`] ([`Grant::Checked`]).
    pub checked: bool,
}

/// What the router must do after a packet was handled.
#[derive(Debug)]
pub enum Event {
    /// Route this message to subscribers (and the retained store), then call
    /// [`Session::acknowledge`] with `ack` and what the routing found.
    Publish {
        msg: Arc<Message>,
        ack: Option<PublishAck>,
    },
    /// Insert these subscriptions, then call [`Session::send_suback`] with `codes`.
    Subscribe {
        pid: Pid,
        codes: Vec<u8>,
        added: Vec<(SubFilter, SubEntry)>,
        /// Filters whose subscription already existed (retain handling 1 uses it).
        existed: Vec<bool>,
    },
    /// Remove these subscriptions (the UNSUBACK is already written).
    Unsubscribe(Vec<SubFilter>),
    /// Normal DISCONNECT: no will (unless 5.0 reason 0x04).
    Disconnect,
}

/// The acknowledgement a QoS 1/2 PUBLISH is owed once it has been routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishAck {
    PubAck(Pid),
    PubRec(Pid),
}

/// What routing a client's PUBLISH found, for the 5.0 ack reason code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    Delivered,
    /// No subscriber matched (5.0 reason 0x10; the message is still accepted).
    NoSubscribers,
    /// The topic is the broker's own (`$SYS`): not accepted (5.0 reason 0x87).
    NotAuthorized,
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
    #[error("more than max_awaiting_rel QoS 2 messages awaiting PUBREL (Receive Maximum, 5.0 section 3.3.4)")]
    AwaitingRelFull,
    #[error("topic alias 0 or above the announced maximum [MQTT-3.3.2-9]")]
    TopicAliasInvalid,
    #[error("topic alias not set by an earlier PUBLISH [MQTT-3.3.2-8]")]
    TopicAliasUnknown,
    #[error("AUTH received but no authentication method is in use [MQTT-4.12.0-1]")]
    UnexpectedAuth,
    #[error("no local on a shared subscription [MQTT-3.8.3-4]")]
    NoLocalOnShared,
    #[error("DISCONNECT sets a session expiry after CONNECT set 0 (5.0 section 3.14.2.2.2)")]
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
    /// Held in the queue of a connected client past its caps: its publishers
    /// are to be slowed (`slow_consumer_policy = "backpressure"`).
    QueuedOverCap,
    /// QoS 0 encoded past `max_write_buffer` of a connected client: its
    /// publishers are to be slowed (`slow_consumer_policy = "backpressure"`).
    SentOverCap,
    /// QoS 0 dropped: the connection's output buffer is over `max_write_buffer`
    /// (`slow_consumer_policy = "drop"`).
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

impl Outcome {
    /// For a drop, its reason as metrics and logs name it.
    pub fn drop_reason(self) -> Option<&'static str> {
        match self {
            Outcome::DroppedSlowConsumer => Some("slow_consumer"),
            Outcome::DroppedOffline => Some("offline_qos0"),
            Outcome::DroppedQueueFull => Some("queue_full"),
            Outcome::DroppedExpired => Some("expired"),
            Outcome::DroppedTooLarge => Some("too_large"),
            Outcome::Sent | Outcome::Queued | Outcome::QueuedOverCap | Outcome::SentOverCap => None,
        }
    }
}

/// The rules of a client that may not do everything, with the decisions
/// remembered under them. Boxed: most brokers let every client do everything.
#[derive(Debug)]
struct LimitedAccess {
    permissions: Permissions,
    /// Recent publish (0) and read (1) decisions; boxed at the first one, so
    /// a quiet client under rules holds 24 bytes of them, not 400.
    decisions: Option<Box<[DecisionCache; 2]>>,
}

/// Session state most clients never need.
#[derive(Debug, Default)]
struct Rare {
    /// QoS 2 ids received and not yet released, with when they came.
    awaiting_rel: HashMap<Pid, Time>,
    /// The client's topic aliases (index = alias - 1), grown as it uses them.
    aliases_in: Vec<Option<TopicName>>,
    /// The aliases this session assigned towards the client.
    aliases_out: HashMap<TopicName, u16>,
}

impl Rare {
    fn is_empty(&self) -> bool {
        self.awaiting_rel.is_empty() && self.aliases_in.is_empty() && self.aliases_out.is_empty()
    }
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
    pub fn topic(&self) -> &TopicName {
        &self.topic
    }

    pub fn will(&self) -> &Will {
        &self.will
    }

    pub fn publisher(&self) -> &Arc<str> {
        &self.publisher
    }

    /// A will as stored (its topic already validated when it was accepted).
    pub fn from_parts(topic: TopicName, will: Will, publisher: Arc<str>) -> WillRelease {
        WillRelease {
            topic,
            will,
            publisher,
            delay: 0,
        }
    }

    pub fn into_message(self, now: Time) -> Arc<Message> {
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
    // u32: the router takes the tally after every batch, far below 2^32.
    pub sent: u32,
    pub expired: u32,
    pub too_large: u32,
    /// SUBSCRIBE filters refused by the client's permissions.
    pub subscribes_denied: u32,
}

/// One client's session: subscriptions, QoS state, and (while connected) its output.
#[derive(Debug)]
pub struct Session {
    client_id: Arc<str>,
    /// From the latest CONNECT (or the TLS certificate), for re-authorizing.
    username: Option<Arc<str>>,
    /// What the client may publish, subscribe to and read; none: everything.
    limited: Option<Box<LimitedAccess>>,
    /// Journal records of changes to what must outlive the process, while
    /// the session is persistent and the broker keeps a store.
    recorder: Option<Box<Recorder>>,
    protocol: Protocol,
    params: ClientParams,
    /// The session expiry the CONNECT asked for was 0 (5.0 section 3.14.2.2.2).
    connect_expiry_zero: bool,
    keep_alive: u16,
    /// What the client asked for; differs from `keep_alive` when capped.
    requested_keep_alive: u16,
    last_rx: Time,
    connected: bool,
    /// Its subscriptions or expiry changed since the router last asked (for
    /// a cluster node, which records persistent sessions' in JetStream).
    meta_changed: bool,
    /// Boxed: most sessions have none, and it is large.
    will: Option<Box<Will>>,
    subscriptions: subscriptions::Subscriptions,
    out: Outbound,
    /// QoS 2 ids awaiting PUBREL and 5.0 topic aliases: boxed when first
    /// needed, so a client that uses neither holds 8 bytes of them.
    rare: Option<Box<Rare>>,
    /// Deliveries made by window refills since the router last looked.
    tally: Tally,
    /// Encoded bytes waiting for the connection to write them.
    pub tx: BytesMut,
}

impl Session {
    /// A fresh session for an accepted CONNECT (checked with [`check_connect`]).
    pub fn new(client_id: Arc<str>, connect: &Connect, limits: &Limits, now: Time) -> Session {
        let mut session = Session {
            client_id,
            username: None,
            limited: None,
            recorder: None,
            protocol: connect.protocol,
            params: ClientParams::from_connect(connect, limits),
            connect_expiry_zero: true,
            keep_alive: 0,
            requested_keep_alive: 0,
            last_rx: now,
            connected: false,
            meta_changed: false,
            will: None,
            subscriptions: Default::default(),
            out: Outbound::default(),
            rare: None,
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

    pub fn username(&self) -> Option<&Arc<str>> {
        self.username.as_ref()
    }

    pub fn permissions(&self) -> &Permissions {
        const ALL: &Permissions = &Permissions::all();
        self.limited.as_ref().map_or(ALL, |l| &l.permissions)
    }

    /// Replaces the client's permissions. The router re-checks the session's
    /// subscriptions against them ([`Session::recheck_subscriptions`]).
    pub fn set_permissions(&mut self, permissions: Permissions) {
        self.limited = (!permissions.is_all()).then(|| {
            Box::new(LimitedAccess {
                permissions,
                decisions: None,
            })
        });
    }

    /// May the client publish to `topic`? Remembered for the next time.
    #[inline]
    pub fn may_publish(&mut self, topic: &str) -> bool {
        self.decide(0, topic)
    }

    /// May a message on `topic` be delivered to the client?
    #[inline]
    pub fn may_read(&mut self, topic: &str) -> bool {
        self.decide(1, topic)
    }

    #[inline]
    fn decide(&mut self, which: usize, topic: &str) -> bool {
        let Some(limited) = self.limited.as_deref_mut() else {
            return true;
        };
        let LimitedAccess {
            permissions,
            decisions,
        } = limited;
        let decisions = decisions.get_or_insert_with(Default::default);
        decisions[which].get_or(topic, || match which {
            0 => permissions.may_publish(topic),
            _ => permissions.may_read(topic),
        })
    }

    /// What must outlive the broker process, for storing.
    pub fn image(&self) -> crate::durable::SessionImage {
        crate::durable::SessionImage {
            awaiting_rel: self.awaiting_rel_ids(),
            inflight: self
                .out
                .inflight
                .iter()
                .map(|e| (e.pid, e.state, e.item.clone()))
                .collect(),
            queue: self.out.queue.iter().cloned().collect(),
            ..self.meta_image()
        }
    }

    /// [`Session::image`] without the messages and QoS 2 ids.
    pub fn meta_image(&self) -> crate::durable::SessionImage {
        crate::durable::SessionImage {
            client_id: self.client_id.clone(),
            username: self.username.clone(),
            protocol: self.protocol,
            session_expiry: self.params.session_expiry,
            subscriptions: self
                .subscriptions
                .iter()
                .map(|(f, e)| (f.clone(), *e))
                .collect(),
            awaiting_rel: Vec::new(),
            inflight: Vec::new(),
            queue: Vec::new(),
        }
    }

    /// Starts journaling this session's changes; the first record is its
    /// whole image. Stops when `epoch` is `None` (the session stopped being
    /// persistent, or the broker keeps no store).
    pub fn set_journal(&mut self, epoch: Option<Epoch>) {
        match (epoch, &self.recorder) {
            (Some(epoch), None) => {
                let mut r = Box::new(Recorder::new(epoch));
                r.put(&self.image());
                self.recorder = Some(r);
            }
            (None, Some(_)) => self.recorder = None,
            _ => {}
        }
    }

    /// Whether the meta changed since the last call.
    pub fn take_meta_changed(&mut self) -> bool {
        std::mem::take(&mut self.meta_changed)
    }

    pub fn is_journaled(&self) -> bool {
        self.recorder.is_some()
    }

    /// Journal records made since the last call.
    pub fn take_journal(&mut self) -> Vec<Bytes> {
        self.recorder.as_mut().map(|r| r.take()).unwrap_or_default()
    }

    /// Journals the session's meta (subscriptions, expiry) after a change.
    pub(super) fn journal_meta(&mut self) {
        self.meta_changed = true;
        if self.recorder.is_some() {
            let meta = self.meta_image();
            if let Some(r) = self.recorder.as_mut() {
                r.meta(&meta);
            }
        }
    }

    /// Journals one change, if journaling.
    #[inline]
    pub(super) fn journal(&mut self, f: impl FnOnce(&mut Recorder, &str)) {
        if let Some(r) = self.recorder.as_mut() {
            f(r, &self.client_id);
        }
    }

    /// A stored session, offline, as it was: its client's next CONNECT with
    /// clean start 0 resumes it (and brings its connection parameters and
    /// permissions). QoS 2 ids awaiting PUBREL count their timeout from `now`.
    pub fn restore(image: crate::durable::SessionImage, limits: &Limits, now: Time) -> Session {
        let mut out = Outbound::default();
        for (pid, state, item) in image.inflight {
            out.inflight.push_back(Inflight { pid, item, state });
        }
        // Sized once: a queue of a million messages regrown by doubling
        // would copy (and fault in) every size on its way.
        out.queue.reserve_exact(image.queue.len());
        for item in image.queue {
            out.enqueue(item);
        }
        // The rest of the parameters come with the next CONNECT.
        let params = ClientParams {
            session_expiry: image.session_expiry.min(limits.max_session_expiry),
            receive_maximum: u16::MAX,
            maximum_packet_size: u32::MAX,
            topic_alias_maximum: 0,
            bridge: false,
        };
        Session {
            client_id: image.client_id,
            username: image.username,
            limited: None,
            recorder: None,
            protocol: image.protocol,
            params,
            connect_expiry_zero: image.session_expiry == 0,
            keep_alive: 0,
            requested_keep_alive: 0,
            last_rx: now,
            connected: false,
            meta_changed: false,
            will: None,
            subscriptions: image.subscriptions.into_iter().collect(),
            out,
            rare: (!image.awaiting_rel.is_empty()).then(|| {
                Box::new(Rare {
                    awaiting_rel: image.awaiting_rel.into_iter().map(|p| (p, now)).collect(),
                    ..Rare::default()
                })
            }),
            tally: Tally::default(),
            tx: BytesMut::new(),
        }
    }

    /// Re-decides every subscription under the current permissions: refused
    /// ones are removed and returned; the others' `checked` flag is updated
    /// and those whose flag changed are returned as well.
    pub fn recheck_subscriptions(&mut self) -> (Vec<SubFilter>, Vec<(SubFilter, SubEntry)>) {
        let (mut revoked, mut changed) = (Vec::new(), Vec::new());
        let permissions = self.permissions().clone();
        for (filter, entry) in self.subscriptions.iter_mut() {
            match permissions.subscribe(filter.topic_filter()) {
                Grant::Refused => revoked.push(filter.clone()),
                grant => {
                    let checked = grant == Grant::Checked;
                    if entry.checked != checked {
                        entry.checked = checked;
                        changed.push((filter.clone(), *entry));
                    }
                }
            }
        }
        for filter in &revoked {
            self.subscriptions.remove_entry(filter.as_str());
        }
        if !revoked.is_empty() || !changed.is_empty() {
            self.journal_meta();
        }
        (revoked, changed)
    }

    pub fn is_connected(&self) -> bool {
        self.connected
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

    /// The largest packet the client accepts (5.0 Maximum Packet Size).
    pub fn client_maximum_packet_size(&self) -> u32 {
        self.params.maximum_packet_size
    }

    pub fn subscriptions(&self) -> impl Iterator<Item = (&SubFilter, &SubEntry)> {
        self.subscriptions.iter()
    }

    /// Gives back what a quiet session holds for traffic: an output buffer
    /// the last write emptied (it may have grown to many kilobytes) and an
    /// empty outbound window. The core calls it from its periodic tick, so a
    /// busy session keeps its buffers between ticks.
    pub fn release_idle_buffers(&mut self) {
        if self.tx.is_empty() && self.tx.capacity() > 0 {
            self.tx = BytesMut::new();
        }
        self.out.trim();
    }

    /// Bytes held for traffic beyond the session itself (see
    /// [`Session::release_idle_buffers`]): output capacity, and whether the
    /// outbound window is allocated.
    pub fn traffic_buffers(&self) -> (usize, bool) {
        (self.tx.capacity(), self.out.is_allocated())
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
    pub fn attach(&mut self, connect: &Connect, limits: &Limits, now: Time) {
        self.protocol = connect.protocol;
        self.username = connect
            .username
            .as_ref()
            .map(|u| Arc::from(String::from_utf8_lossy(u)));
        self.params = ClientParams::from_connect(connect, limits);
        self.connect_expiry_zero = self.params.session_expiry == 0;
        self.keep_alive = effective_keep_alive(connect, limits);
        self.requested_keep_alive = connect.keep_alive;
        self.last_rx = now;
        self.connected = true;
        self.tx.clear();
        // Aliases last as long as a connection [MQTT-3.3.2-7].
        if let Some(rare) = &mut self.rare {
            rare.aliases_in = Vec::new();
            rare.aliases_out = HashMap::new();
        }
        self.trim_rare();
        self.will = connect.will.as_ref().map(|w| Box::new(w.detached()));
        self.journal_meta();
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
    pub fn resume(&mut self, limits: &Limits, now: Time) {
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

    /// True when the client has been silent for 1.5 x its keep-alive [MQTT-3.1.2-24].
    pub fn keep_alive_expired(&self, now: Time) -> bool {
        keep_alive_grace(self.keep_alive).is_some_and(|grace| now.since(self.last_rx) > grace)
    }

    /// Forgets QoS 2 ids whose PUBREL never came within `awaiting_rel_timeout`, so a
    /// client can't pin state forever. Returns how many were dropped.
    pub fn expire_awaiting_rel(&mut self, now: Time, limits: &Limits) -> usize {
        let Some(rare) = &mut self.rare else {
            return 0;
        };
        let expired: Vec<Pid> = rare
            .awaiting_rel
            .iter()
            .filter(|(_, &at)| now.since(at) >= limits.awaiting_rel_timeout)
            .map(|(&pid, _)| pid)
            .collect();
        for pid in &expired {
            rare.awaiting_rel.remove(pid);
        }
        for pid in &expired {
            self.journal(|r, c| r.rel_done(c, *pid));
        }
        self.trim_rare();
        expired.len()
    }

    /// The rarely needed state, boxed now if it was not.
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Frees the rarely needed state once nothing is left in it.
    fn trim_rare(&mut self) {
        if self.rare.as_ref().is_some_and(|r| r.is_empty()) {
            self.rare = None;
        }
    }

    fn awaiting_rel_ids(&self) -> Vec<Pid> {
        let ids = self.rare.iter().flat_map(|r| r.awaiting_rel.keys());
        ids.copied().collect()
    }

    /// Whether QoS 2 id `pid` is awaiting its PUBREL.
    fn awaiting(&self, pid: Pid) -> bool {
        self.rare
            .as_ref()
            .is_some_and(|r| r.awaiting_rel.contains_key(&pid))
    }

    fn awaiting_rel_count(&self) -> usize {
        self.rare.as_ref().map_or(0, |r| r.awaiting_rel.len())
    }

    /// Forgets a QoS 2 id; whether it was awaiting its PUBREL.
    fn release(&mut self, pid: Pid) -> bool {
        let Some(rare) = &mut self.rare else {
            return false;
        };
        let known = rare.awaiting_rel.remove(&pid).is_some();
        self.trim_rare();
        known
    }
}

#[cfg(test)]
mod tests;
