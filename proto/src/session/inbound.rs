//! Packets from the client: publishes and their acknowledgements, subscriptions,
//! pings and DISCONNECT.

use super::*;
use crate::codec::detached;

impl Session {
    /// Handles one packet from the client. Events for the router go to `events`.
    pub fn handle_packet(
        &mut self,
        now: Time,
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
        // The table grows with the aliases used: an idle 5.0 client holds none.
        let max = usize::from(limits.max_topic_alias);
        let Some(slot) = usize::from(alias).checked_sub(1).filter(|s| *s < max) else {
            return Err(Violation::TopicAliasInvalid);
        };
        if p.topic.is_empty() {
            let table = self.rare.as_ref().map(|r| &r.aliases_in);
            let known = table.and_then(|t| t.get(slot)).cloned().flatten();
            return known.ok_or(Violation::TopicAliasUnknown);
        }
        let topic = TopicName::new(p.topic.clone(), limits.max_topic_levels)
            .map_err(Violation::InvalidTopic)?;
        let table = &mut self.rare().aliases_in;
        if table.len() <= slot {
            table.resize(slot + 1, None);
        }
        table[slot] = Some(topic.detached());
        Ok(topic)
    }

    fn on_publish(
        &mut self,
        now: Time,
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
        // A retained message may outlive its read by far: it keeps copies.
        let (topic, payload, properties) = if p.retain {
            (
                topic.detached(),
                detached(&p.payload),
                p.properties.detached(),
            )
        } else {
            (topic, p.payload, p.properties)
        };
        let msg = Message::new(topic, payload, qos, p.retain)
            .received(now)
            .with_properties(properties, now)
            .from_client(self.client_id.clone())
            .shared();
        let ack = match p.qos_pid {
            QosPid::AtMostOnce => None,
            QosPid::AtLeastOnce(pid) => Some(PublishAck::PubAck(pid)),
            QosPid::ExactlyOnce(pid) if self.awaiting(pid) => {
                // A retransmission of an unreleased id is acknowledged but not routed
                // again: exactly once [MQTT-4.3.3-2].
                self.send(&Packet::PubRec(Ack::new(pid)));
                return Ok(());
            }
            QosPid::ExactlyOnce(pid) => {
                if self.awaiting_rel_count() >= limits.max_awaiting_rel {
                    return Err(Violation::AwaitingRelFull);
                }
                self.rare().awaiting_rel.insert(pid, now);
                self.journal(|r, c| r.await_rel(c, pid));
                Some(PublishAck::PubRec(pid))
            }
        };
        events.push(Event::Publish { msg, ack });
        Ok(())
    }

    /// Sends the PUBACK/PUBREC of a routed PUBLISH; 5.0 clients learn from its
    /// reason code whether anyone subscribed or the topic was refused.
    pub fn acknowledge(&mut self, ack: PublishAck, routing: Routing) {
        let reason = match (self.protocol.is_v5(), routing) {
            (false, _) | (true, Routing::Delivered) => reason::SUCCESS,
            (true, Routing::NoSubscribers) => reason::NO_MATCHING_SUBSCRIBERS,
            (true, Routing::NotAuthorized) => reason::NOT_AUTHORIZED,
        };
        match ack {
            PublishAck::PubAck(pid) => {
                let mut a = Ack::new(pid);
                a.reason = reason;
                self.send(&Packet::PubAck(a));
            }
            PublishAck::PubRec(pid) => {
                if reason >= 0x80 {
                    // A refusing PUBREC ends the flow: no PUBREL follows [MQTT-4.3.3].
                    self.release(pid);
                    self.journal(|r, c| r.rel_done(c, pid));
                }
                let mut a = Ack::new(pid);
                a.reason = reason;
                self.send(&Packet::PubRec(a));
            }
        }
    }

    fn on_pubrel(&mut self, pid: Pid) {
        let mut ack = Ack::new(pid);
        let known = self.release(pid);
        if known {
            self.journal(|r, c| r.rel_done(c, pid));
        } else if self.protocol.is_v5() {
            ack.reason = reason::PACKET_ID_NOT_FOUND;
        }
        self.send(&Packet::PubComp(ack));
    }

    fn on_puback(&mut self, pid: Pid, limits: &Limits, now: Time) {
        if let Some(i) = self
            .out
            .position(pid, OutState::Published, QoS::AtLeastOnce)
        {
            self.out.inflight.remove(i);
            // Before pump: the id may be reused at once.
            self.journal(|r, c| r.settled(c, pid));
            self.pump(limits, now);
        }
    }

    fn on_pubrec(&mut self, ack: Ack, limits: &Limits, now: Time) {
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
            self.journal(|r, c| r.settled(c, ack.pid));
            self.pump(limits, now);
            return;
        }
        self.out.inflight[i].state = OutState::Released;
        self.journal(|r, c| r.released(c, ack.pid));
        self.send(&Packet::PubRel(Ack::new(ack.pid)));
    }

    fn on_pubcomp(&mut self, pid: Pid, limits: &Limits, now: Time) {
        if let Some(i) = self.out.position(pid, OutState::Released, QoS::ExactlyOnce) {
            self.out.inflight.remove(i);
            self.journal(|r, c| r.settled(c, pid));
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
            // Detached: a subscription lasts as long as the session.
            let parsed = TopicFilter::new(detached(&raw), limits.max_topic_levels)
                .ok()
                .and_then(|f| SubFilter::parse(f).ok());
            let Some(filter) = parsed else {
                codes.push(refused(reason::TOPIC_FILTER_INVALID));
                continue;
            };
            if filter.is_shared() && opts.no_local && v5 {
                return Err(Violation::NoLocalOnShared);
            }
            let mut opts = opts;
            if self.params.bridge && !filter.is_shared() {
                opts.no_local = true;
                opts.retain_as_published = true;
            }
            let exists = self.subscriptions.contains(filter.as_str());
            if !exists && self.subscriptions.len() >= limits.max_subscriptions_per_client {
                codes.push(refused(reason::QUOTA_EXCEEDED));
                continue;
            }
            let grant = self.permissions().subscribe(filter.topic_filter());
            if grant == Grant::Refused {
                self.tally.subscribes_denied += 1;
                codes.push(refused(reason::NOT_AUTHORIZED));
                continue;
            }
            // A repeated filter replaces the old subscription [MQTT-3.8.4-3].
            let entry = SubEntry {
                opts,
                id,
                checked: grant == Grant::Checked,
            };
            self.subscriptions.insert(filter.clone(), entry);
            codes.push(opts.qos as u8);
            added.push((filter, entry));
            existed.push(exists);
        }
        if !added.is_empty() {
            self.journal_meta();
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
            let code = match TopicFilter::new(raw, limits.max_topic_levels) {
                Ok(f) => match self.subscriptions.remove_entry(f.as_str()) {
                    Some((filter, _)) => {
                        removed.push(filter);
                        reason::SUCCESS
                    }
                    None => reason::NO_SUBSCRIPTION_EXISTED,
                },
                Err(_) => reason::TOPIC_FILTER_INVALID,
            };
            codes.push(code);
        }
        if !self.protocol.is_v5() {
            codes.clear();
        }
        self.send(&Packet::UnsubAck(UnsubAck {
            pid: u.pid,
            codes,
            properties: Properties::default(),
        }));
        if !removed.is_empty() {
            self.journal_meta();
        }
        events.push(Event::Unsubscribe(removed));
    }
}

fn session_expiry(p: &Property) -> Option<u32> {
    match p {
        Property::SessionExpiryInterval(s) => Some(*s),
        _ => None,
    }
}
