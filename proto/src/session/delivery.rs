//! Messages to the client: QoS 0 straight to the output buffer, QoS 1/2 through
//! the inflight window and the queue, with 5.0 topic aliases, Receive Maximum
//! and Maximum Packet Size.

use super::*;

impl Session {
    /// Accepts a message routed to this session (`item.qos` is already the
    /// minimum of publish and subscription QoS).
    pub fn deliver(&mut self, item: Routed, limits: &Limits, now: Time) -> Outcome {
        if item.msg.expired(now) {
            return Outcome::DroppedExpired;
        }
        if item.qos == QoS::AtMostOnce {
            return self.deliver_qos0(&item.msg, item.retain, &item.sub_ids, limits, now);
        }
        let window_open = self.connected
            && self.out.queue.is_empty()
            && self.out.inflight.len() < self.window(limits)
            && self.tx.len() < limits.max_write_buffer;
        if window_open {
            self.journal(|r, c| r.queued(c, &item));
            return self.send_inflight(item, now);
        }
        let room = self.out.has_room(
            item.msg.weight(),
            limits.max_queued_messages,
            limits.max_queued_bytes,
        );
        let hold =
            self.connected && limits.slow_consumer_policy == SlowConsumerPolicy::Backpressure;
        if !room && !hold {
            return Outcome::DroppedQueueFull;
        }
        self.journal(|r, c| r.queued(c, &item));
        self.out.enqueue(item);
        if room {
            Outcome::Queued
        } else {
            Outcome::QueuedOverCap
        }
    }

    /// The publisher of the message queued last (the one that went past the
    /// caps, after [`Outcome::QueuedOverCap`]).
    pub fn last_queued_publisher(&self) -> Option<Arc<str>> {
        self.out.queue.back()?.msg.publisher.clone()
    }

    /// The queue and the output buffer are back to half their caps:
    /// publishers held back for them may go on (half, so that they are not
    /// stopped again at once).
    pub fn queue_drained(&self, limits: &Limits) -> bool {
        self.out.queue.len() <= limits.max_queued_messages / 2
            && self.out.queued_bytes <= limits.max_queued_bytes / 2
            && self.tx.len() <= limits.max_write_buffer / 2
    }

    /// The outgoing window: our cap, narrowed by the client's Receive Maximum.
    fn window(&self, limits: &Limits) -> usize {
        usize::from(
            limits
                .max_inflight_messages
                .min(self.params.receive_maximum),
        )
    }

    /// QoS 0 needs nothing kept after encoding, so it takes the message by
    /// reference: the fan-out hot path clones no `Arc` per subscriber.
    pub fn deliver_qos0(
        &mut self,
        msg: &Message,
        retain: bool,
        sub_ids: &[u32],
        limits: &Limits,
        now: Time,
    ) -> Outcome {
        if msg.expired(now) {
            return Outcome::DroppedExpired;
        }
        if !self.connected {
            return Outcome::DroppedOffline;
        }
        let full = self.tx.len() >= limits.max_write_buffer;
        if full && limits.slow_consumer_policy == SlowConsumerPolicy::Drop {
            return Outcome::DroppedSlowConsumer;
        }
        match self.encode_delivery(msg, retain, sub_ids, QosPid::AtMostOnce, now) {
            Outcome::Sent if full => Outcome::SentOverCap,
            outcome => outcome,
        }
    }

    /// Encodes one PUBLISH, choosing a topic alias when the client accepts them,
    /// and takes it back if it exceeds the client's maximum packet size.
    fn encode_delivery(
        &mut self,
        msg: &Message,
        retain: bool,
        sub_ids: &[u32],
        qos_pid: QosPid,
        now: Time,
    ) -> Outcome {
        let alias = self.outgoing_alias(&msg.topic);
        let d = Delivery {
            qos_pid,
            dup: false,
            retain,
            sub_ids,
            alias,
            now,
        };
        let start = self.tx.len();
        let len = msg.encode_for(&mut self.tx, self.protocol, &d);
        if len > self.params.maximum_packet_size as usize {
            self.tx.truncate(start);
            return Outcome::DroppedTooLarge;
        }
        if let Alias::Set(a) = alias {
            self.rare().aliases_out.insert(msg.topic.clone(), a);
        }
        Outcome::Sent
    }

    fn outgoing_alias(&self, topic: &TopicName) -> Alias {
        let max = self.params.topic_alias_maximum;
        if max == 0 {
            return Alias::None;
        }
        let assigned = self.rare.as_ref().map(|r| &r.aliases_out);
        let used = assigned.map_or(0, HashMap::len);
        match assigned.and_then(|a| a.get(topic)) {
            Some(a) => Alias::Use(*a),
            None if used < usize::from(max) => Alias::Set(used as u16 + 1),
            None => Alias::None,
        }
    }

    fn send_inflight(&mut self, item: Routed, now: Time) -> Outcome {
        let pid = self.out.allocate_pid();
        let qos_pid = QosPid::new(item.qos, pid);
        let outcome = self.encode_delivery(&item.msg, item.retain, &item.sub_ids, qos_pid, now);
        if outcome == Outcome::Sent {
            self.journal(|r, c| r.sent(c, pid));
            self.out.inflight.push_back(Inflight {
                pid,
                item,
                state: OutState::Published,
            });
        } else {
            self.journal(|r, c| r.skipped(c));
        }
        outcome
    }

    /// Moves queued messages into the inflight window while it and the output
    /// buffer have room. Called after acks and after the connection drained `tx`;
    /// what it delivers or drops is recorded in the tally.
    pub fn pump(&mut self, limits: &Limits, now: Time) {
        while self.connected
            && self.out.inflight.len() < self.window(limits)
            && self.tx.len() < limits.max_write_buffer
        {
            let Some(item) = self.out.dequeue() else {
                break;
            };
            if item.msg.expired(now) {
                self.tally.expired += 1;
                self.journal(|r, c| r.skipped(c));
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
        let taken = self.out.take_shared_unacked();
        if !taken.is_empty() && self.recorder.is_some() {
            let image = self.image();
            self.journal(|r, _| r.put(&image));
        }
        taken
    }
}
