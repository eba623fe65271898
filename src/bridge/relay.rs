//! What crosses a bridge, with no I/O and no clock: the two flows (local to
//! remote, remote to local), each taking messages from its source broker and
//! acknowledging them there only once the sink broker has acknowledged them.
//! That is what keeps a QoS 1/2 promise through a broken link or a restarted
//! remote: whatever is unacknowledged at the source is sent again by it (its
//! session persists), and whatever the bridge holds unacknowledged at the
//! sink it sends again once the sink is back.
//!
//! Memory is bounded by the protocol: each source may have at most the
//! Receive Maximum the bridge announced in flight to it, and the bridge has at
//! most `max_inflight` in flight to each sink. Everything beyond waits in the
//! brokers' own session queues, bounded and counted there.

use std::collections::{HashSet, VecDeque};

use bytes::Bytes;

use crate::codec::{
    encoded_len, Ack, Packet, Pid, Properties, Property, Protocol, Publish, QoS, QosPid,
    SubOptions, Subscribe,
};
use crate::config::{Bridge, Route};

/// The two ends of a bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// This broker, over its internal bridge listener.
    Local,
    /// The broker the bridge connects to.
    Remote,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Local => Side::Remote,
            Side::Remote => Side::Local,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Side::Local => "local",
            Side::Remote => "remote",
        }
    }
}

/// What a broker told the bridge in its CONNACK.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub protocol: Protocol,
    pub session_present: bool,
    /// How many QoS 1/2 messages it takes in flight.
    pub receive_maximum: u16,
    pub maximum_packet_size: u32,
    pub retain_available: bool,
}

/// A packet for one side; `droppable` for QoS 0, which a congested link may
/// shed (counted) rather than queue without bound.
#[derive(Debug)]
pub struct Send {
    pub side: Side,
    pub packet: Packet,
    pub droppable: bool,
}

/// Why a message did not cross (the `reason` label of the drop counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// QoS 0 while the sink's link was down.
    LinkDown,
    /// Larger than the sink's Maximum Packet Size.
    TooLarge,
    /// The sink answered with a failure reason code (not authorized, quota).
    RefusedBySink,
    /// QoS 0 while the sink's link had too much unsent output.
    Congested,
}

impl Drop {
    pub const ALL: [Drop; 4] = [
        Drop::LinkDown,
        Drop::TooLarge,
        Drop::RefusedBySink,
        Drop::Congested,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Drop::LinkDown => "link_down",
            Drop::TooLarge => "too_large",
            Drop::RefusedBySink => "refused_by_sink",
            Drop::Congested => "congested",
        }
    }
}

/// Running totals, per flow where it matters (index: the source side).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Messages the sink acknowledged (QoS 1/2) or was sent (QoS 0).
    pub forwarded: [u64; 2],
    /// Messages that did not cross, by [`Drop`].
    pub dropped: [u64; 4],
    /// Redeliveries from a source of messages the bridge already held.
    pub duplicates: u64,
    /// SUBSCRIBE filters a broker refused.
    pub refused_filters: u64,
}

/// A QoS 1/2 message in the bridge's hands.
#[derive(Debug)]
struct Held {
    /// Its id at the source, to acknowledge it there; `None` once the source
    /// started a new session and so forgot it.
    source_pid: Option<Pid>,
    /// As it goes to the sink; its id is set once sent.
    publish: Publish,
}

/// One direction of the bridge.
#[derive(Debug, Default)]
struct Flow {
    /// Taken from the source, not yet sent to the sink (in order).
    waiting: VecDeque<Held>,
    /// Sent to the sink, awaiting its PUBACK or PUBREC (in send order).
    sent: VecDeque<Held>,
    /// QoS 2 ids at the sink whose PUBREL was sent, awaiting PUBCOMP.
    releasing: Vec<Pid>,
    /// QoS 2 ids at the source whose PUBREC we sent (the sink has the
    /// message), awaiting the source's PUBREL.
    received: HashSet<Pid>,
    /// Acknowledgements for the source produced while it was disconnected,
    /// sent when its session comes back.
    owed: Vec<Packet>,
}

impl Flow {
    fn holds(&self, source_pid: Pid) -> bool {
        let is = |h: &Held| h.source_pid == Some(source_pid);
        self.waiting.iter().any(is) || self.sent.iter().any(is)
    }

    fn in_flight(&self) -> usize {
        self.sent.len() + self.releasing.len()
    }

    /// The source started afresh: its ids mean nothing any more.
    fn forget_source(&mut self) {
        for h in self.waiting.iter_mut().chain(self.sent.iter_mut()) {
            h.source_pid = None;
        }
        self.received.clear();
        self.owed.clear();
    }

    fn take_sent(&mut self, sink_pid: Pid) -> Option<Held> {
        let at = self
            .sent
            .iter()
            .position(|h| h.publish.qos_pid.pid() == Some(sink_pid))?;
        self.sent.remove(at)
    }
}

/// Both flows of one bridge and what each side is like now.
#[derive(Debug)]
pub struct Relay {
    routes: Vec<Route>,
    max_inflight: u16,
    /// Subscriptions persist at both brokers (retained messages are then
    /// sent only for a new subscription).
    persistent: bool,
    /// Index: the source side.
    flows: [Flow; 2],
    /// Index: the side; `None` while its link is down.
    peers: [Option<Peer>; 2],
    /// The next packet id to try, per side (ids we choose there).
    next_pid: [Pid; 2],
    /// SUBSCRIBE ids awaiting their SUBACK, per side.
    subscribing: [Vec<Pid>; 2],
    out: Vec<Send>,
    pub counts: Counts,
}

impl Relay {
    pub fn new(bridge: &Bridge) -> Relay {
        Relay {
            routes: bridge.routes.clone(),
            max_inflight: bridge.max_inflight,
            persistent: !bridge.clean_session,
            flows: Default::default(),
            peers: [None, None],
            next_pid: [Pid::MIN; 2],
            subscribing: Default::default(),
            out: Vec::new(),
            counts: Counts::default(),
        }
    }

    /// The packets to send, in order, since the last call.
    pub fn drain(&mut self) -> Vec<Send> {
        std::mem::take(&mut self.out)
    }

    pub fn is_up(&self, side: Side) -> bool {
        self.peers[side.index()].is_some()
    }

    /// Messages from `source` the bridge holds: waiting, or in flight to the
    /// other side.
    pub fn pending(&self, source: Side) -> usize {
        let f = &self.flows[source.index()];
        f.waiting.len() + f.in_flight()
    }

    /// Whether to read more from `side`: false while the bridge holds more
    /// of its messages than it let it send, which only a broker ignoring our
    /// Receive Maximum (or a 3.1.1 one, which has none) can cause.
    pub fn accepts(&self, side: Side) -> bool {
        let f = &self.flows[side.index()];
        f.waiting.len() + f.sent.len() < 2 * usize::from(self.max_inflight)
    }

    /// `side`'s link is up (its CONNACK accepted us).
    pub fn up(&mut self, side: Side, peer: Peer) {
        self.peers[side.index()] = Some(peer);
        self.subscribing[side.index()].clear();
        self.subscribe(side, peer);
        if peer.session_present {
            for ack in std::mem::take(&mut self.flows[side.index()].owed) {
                self.send(side, ack);
            }
        } else {
            self.flows[side.index()].forget_source();
        }
        self.resume_sink(side, peer.session_present);
        self.pump(side.other());
    }

    /// `side`'s link is down: what it owes and is owed waits for it.
    pub fn down(&mut self, side: Side) {
        self.peers[side.index()] = None;
    }

    /// A packet that came from `side`. Returns a line for the log when a
    /// broker refused a subscription.
    pub fn packet(&mut self, side: Side, packet: Packet) -> Option<String> {
        match packet {
            Packet::Publish(p) => self.publish_from(side, p),
            Packet::PubAck(a) => self.sink_acked(side, a),
            Packet::PubRec(a) => self.sink_received(side, a),
            Packet::PubComp(a) => self.sink_completed(side, a.pid),
            Packet::PubRel(a) => {
                self.flows[side.index()].received.remove(&a.pid);
                self.ack_source(side, Packet::PubComp(Ack::new(a.pid)));
            }
            Packet::SubAck(ack) => return self.suback(side, ack.pid, &ack.codes),
            _ => {}
        }
        None
    }

    fn subscribe(&mut self, side: Side, peer: Peer) {
        let filters: Vec<(Bytes, SubOptions)> = self
            .routes
            .iter()
            .filter(|r| match side {
                Side::Local => r.direction.outward(),
                Side::Remote => r.direction.inward(),
            })
            .map(|r| {
                let filter = match side {
                    Side::Local => r.local_filter(),
                    Side::Remote => r.remote_filter(),
                };
                let v5 = peer.protocol.is_v5();
                let options = SubOptions {
                    qos: r.qos,
                    // What the bridge itself published there must not
                    // come back to it: that is the loop.
                    no_local: v5,
                    retain_as_published: v5,
                    retain_handling: u8::from(v5 && self.persistent),
                };
                (Bytes::from(filter), options)
            })
            .collect();
        if filters.is_empty() {
            return;
        }
        let pid = self.next_free_pid(side);
        self.subscribing[side.index()].push(pid);
        let subscribe = Subscribe {
            pid,
            filters,
            properties: Properties::default(),
        };
        self.send(side, Packet::Subscribe(subscribe));
    }

    fn suback(&mut self, side: Side, pid: Pid, codes: &[u8]) -> Option<String> {
        self.subscribing[side.index()].retain(|p| *p != pid);
        let refused = codes.iter().filter(|c| **c >= 0x80).count();
        if refused == 0 {
            return None;
        }
        self.counts.refused_filters += refused as u64;
        Some(format!(
            "the {} broker refused {refused} of the bridge's {} subscriptions (codes {codes:?})",
            side.name(),
            codes.len()
        ))
    }

    /// A PUBLISH from `source`, bound for the other side.
    fn publish_from(&mut self, source: Side, publish: Publish) {
        let pid = publish.qos_pid.pid();
        let exactly_once = publish.qos_pid.qos() == QoS::ExactlyOnce;
        if let Some(pid) = pid {
            let flow = &self.flows[source.index()];
            if flow.received.contains(&pid) {
                // The sink has it; our PUBREC was lost with the link.
                self.counts.duplicates += 1;
                return self.ack_source(source, Packet::PubRec(Ack::new(pid)));
            }
            if flow.holds(pid) {
                self.counts.duplicates += 1;
                return;
            }
        }
        let Some(publish) = self.translate(source, publish) else {
            // Matched a subscription but no route (two overlapping lines);
            // complete its flow so the source is not blocked.
            return self.complete_at_source(source, pid, exactly_once);
        };
        match pid {
            None => self.forward_at_most_once(source, publish),
            Some(_) => {
                self.flows[source.index()].waiting.push_back(Held {
                    source_pid: pid,
                    publish,
                });
                self.pump(source);
            }
        }
    }

    fn forward_at_most_once(&mut self, source: Side, publish: Publish) {
        let sink = source.other();
        let Some(peer) = self.peers[sink.index()] else {
            return self.count_drop(Drop::LinkDown);
        };
        let packet = Packet::Publish(publish);
        if encoded_len(&packet, peer.protocol) > peer.maximum_packet_size as usize {
            return self.count_drop(Drop::TooLarge);
        }
        self.counts.forwarded[source.index()] += 1;
        self.out.push(Send {
            side: sink,
            packet,
            droppable: true,
        });
    }

    /// The message as the sink gets it: topic mapped by the first route
    /// that sends it this way, properties that belong to one hop dropped.
    fn translate(&self, source: Side, p: Publish) -> Option<Publish> {
        let topic = std::str::from_utf8(&p.topic).ok()?;
        let mapped = self.routes.iter().find_map(|r| match source {
            Side::Local if r.direction.outward() => r.to_remote(topic),
            Side::Remote if r.direction.inward() => r.to_local(topic),
            _ => None,
        })?;
        let properties = p
            .properties
            .iter()
            .filter(|prop| {
                !matches!(
                    prop,
                    Property::TopicAlias(_) | Property::SubscriptionIdentifier(_)
                )
            })
            .cloned()
            .collect();
        Some(Publish {
            dup: false,
            qos_pid: p.qos_pid,
            retain: p.retain,
            topic: Bytes::from(mapped),
            properties: Properties(properties),
            payload: p.payload,
        })
    }

    /// Sends what waits for `source`'s sink while the sink has room.
    fn pump(&mut self, source: Side) {
        let sink = source.other();
        let Some(peer) = self.peers[sink.index()] else {
            return;
        };
        let room = usize::from(peer.receive_maximum.min(self.max_inflight));
        while self.flows[source.index()].in_flight() < room {
            let Some(mut held) = self.flows[source.index()].waiting.pop_front() else {
                return;
            };
            let qos = held.publish.qos_pid.qos();
            let pid = self.next_free_pid(sink);
            held.publish.qos_pid = QosPid::new(qos, pid);
            held.publish.retain &= peer.retain_available;
            let packet = Packet::Publish(held.publish.clone());
            if encoded_len(&packet, peer.protocol) > peer.maximum_packet_size as usize {
                self.count_drop(Drop::TooLarge);
                self.complete_at_source(source, held.source_pid, qos == QoS::ExactlyOnce);
                continue;
            }
            self.flows[source.index()].sent.push_back(held);
            self.send(sink, packet);
        }
    }

    /// The sink's link is back: with its session, what was in flight goes
    /// again as a redelivery; without, it goes again as new.
    fn resume_sink(&mut self, sink: Side, session_present: bool) {
        let flow = &mut self.flows[sink.other().index()];
        if !session_present {
            flow.releasing.clear();
            while let Some(held) = flow.sent.pop_back() {
                flow.waiting.push_front(held);
            }
            return;
        }
        let again: Vec<Packet> = flow
            .sent
            .iter()
            .map(|h| {
                let mut p = h.publish.clone();
                p.dup = true;
                Packet::Publish(p)
            })
            .chain(
                flow.releasing
                    .iter()
                    .map(|pid| Packet::PubRel(Ack::new(*pid))),
            )
            .collect();
        for packet in again {
            self.send(sink, packet);
        }
    }

    fn sink_acked(&mut self, sink: Side, ack: Ack) {
        let source = sink.other();
        let Some(held) = self.flows[source.index()].take_sent(ack.pid) else {
            return;
        };
        self.count_outcome(source, ack.reason);
        self.complete_at_source(source, held.source_pid, false);
        self.pump(source);
    }

    fn sink_received(&mut self, sink: Side, ack: Ack) {
        let source = sink.other();
        let Some(held) = self.flows[source.index()].take_sent(ack.pid) else {
            return;
        };
        self.count_outcome(source, ack.reason);
        if ack.reason < 0x80 {
            self.flows[source.index()].releasing.push(ack.pid);
            self.send(sink, Packet::PubRel(Ack::new(ack.pid)));
        }
        self.complete_at_source(source, held.source_pid, true);
        self.pump(source);
    }

    fn sink_completed(&mut self, sink: Side, pid: Pid) {
        let source = sink.other();
        self.flows[source.index()].releasing.retain(|p| *p != pid);
        self.pump(source);
    }

    fn count_outcome(&mut self, source: Side, reason: u8) {
        if reason >= 0x80 {
            self.count_drop(Drop::RefusedBySink);
        } else {
            self.counts.forwarded[source.index()] += 1;
        }
    }

    pub fn count_drop(&mut self, why: Drop) {
        self.counts.dropped[why as usize] += 1;
    }

    /// The sink has the message (or never will): the source may let go of
    /// it. QoS 2 gets its PUBREC and is remembered until the PUBREL.
    fn complete_at_source(&mut self, source: Side, pid: Option<Pid>, exactly_once: bool) {
        let Some(pid) = pid else {
            return;
        };
        let ack = if exactly_once {
            self.flows[source.index()].received.insert(pid);
            Packet::PubRec(Ack::new(pid))
        } else {
            Packet::PubAck(Ack::new(pid))
        };
        self.ack_source(source, ack);
    }

    /// An acknowledgement for `source`, kept for its return if it is down.
    fn ack_source(&mut self, source: Side, ack: Packet) {
        if self.is_up(source) {
            self.send(source, ack);
        } else if self.persistent {
            self.flows[source.index()].owed.push(ack);
        }
    }

    fn send(&mut self, side: Side, packet: Packet) {
        self.out.push(Send {
            side,
            packet,
            droppable: false,
        });
    }

    /// An id not in use by anything the bridge sent `side` and awaits.
    fn next_free_pid(&mut self, side: Side) -> Pid {
        let flow = &self.flows[side.other().index()];
        let subscribing = &self.subscribing[side.index()];
        let mut pid = self.next_pid[side.index()];
        let busy = |pid: Pid| {
            flow.sent
                .iter()
                .any(|h| h.publish.qos_pid.pid() == Some(pid))
                || flow.releasing.contains(&pid)
                || subscribing.contains(&pid)
        };
        // At most max_inflight + a few ids are busy, far fewer than 65535.
        while busy(pid) {
            pid = pid.next();
        }
        self.next_pid[side.index()] = pid.next();
        pid
    }
}

#[cfg(test)]
mod tests;
