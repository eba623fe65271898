//! One core's counters: plain integers the core alone owns (no atomics on the
//! message path). The server publishes a snapshot of them once per tick.

use crate::codec::QoS;
use crate::session::Outcome;

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// One core's counters.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct Counters {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl Counters {
            /// The field names, in the order of [`Counters::values`].
            pub const NAMES: &'static [&'static str] = &[$(stringify!($name),)*];

            /// Each field's documentation (its lines joined), in the order of
            /// [`Counters::NAMES`]: the help text of metrics.
            pub const HELP: &'static [&'static str] = &[$(concat!($($doc),*),)*];

            /// Every value, in the order of [`Counters::NAMES`].
            pub fn values(&self) -> Vec<u64> {
                vec![$(self.$name,)*]
            }

            /// The inverse of [`Counters::values`]; missing values are zero.
            pub fn from_values(values: &[u64]) -> Counters {
                let mut v = values.iter().copied();
                Counters { $($name: v.next().unwrap_or(0),)* }
            }

            pub fn add(&mut self, other: &Counters) {
                $(self.$name += other.$name;)*
            }

            /// The value of the field named `name`.
            pub fn get(&self, name: &str) -> Option<u64> {
                match name {
                    $(stringify!($name) => Some(self.$name),)*
                    _ => None,
                }
            }

            /// `(name, value)` pairs, for logs and `$SYS`.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

counters! {
    /// Connections closed abortively: the client did not take the last packets
    /// within the close grace (it stopped reading).
    close_aborts,
    /// Connections open now.
    connections_current,
    /// Connections open now whose reader is parked: quiet clients holding
    /// no task and no read buffer.
    connections_parked,
    /// Readers parked again right after the read that woke them: it held
    /// only a SUBSCRIBE or UNSUBSCRIBE (on a core with many awake readers),
    /// or a ping or acknowledgements after a second of quiet, and nothing
    /// was left in flight to the client (a fleet subscribing, an idle
    /// fleet's pings, a broadcast's PUBACKs).
    readers_reparked,
    /// Of `readers_reparked`, those whose ping or acknowledgements the
    /// core's parking took from the folded socket without waking the reader
    /// (no task, no unfold, no io_uring read).
    parked_answers,
    /// Readers parked right after CONNECT: nothing came with it, nothing
    /// is in flight to the client and the core has many awake readers, so
    /// it waits for the CONNACK or sits idle (a fleet connecting at once
    /// holds no reader and no pending read).
    readers_parked_at_connect,
    /// Connections accepted since start.
    connections_total,
    /// CONNECTs refused (bad id, limits, malformed, timeout).
    connects_refused,
    /// Connections refused because `max_connections` was reached.
    refused_max_connections,
    /// Messages held past a connected client's caps (QoS 1/2 in its queue,
    /// QoS 0 in its output buffer) while its publishers were being slowed
    /// (back-pressure: none is dropped).
    queued_over_cap,
    /// Times a publisher was held back because a subscriber it feeds had a
    /// full queue.
    publishers_throttled,
    /// Clients disconnected for holding their publishers back longer than
    /// `max_stall` without reading.
    slow_consumers_disconnected,
    /// Times a publisher's connection stopped reading because it was held back.
    held_back_waits,
    /// CONNECTs refused because their address had `max_connections_per_ip`
    /// open (CONNACK quota exceeded / server unavailable).
    refused_per_ip,
    /// CONNECTs refused by `max_connection_rate` (CONNACK connection rate
    /// exceeded / server unavailable).
    refused_connection_rate,
    /// PUBLISH packets received from clients.
    messages_received,
    /// Of `messages_received`, at QoS 0, 1 and 2.
    received_qos0,
    received_qos1,
    received_qos2,
    /// PUBLISH packets sent to clients (deliveries, not counting resends).
    messages_sent,
    /// Of `messages_sent`, at QoS 0, 1 and 2 (the delivery's QoS).
    sent_qos0,
    sent_qos1,
    sent_qos2,
    bytes_received,
    bytes_sent,
    /// QoS 0 deliveries dropped: subscriber's output buffer over `max_write_buffer`.
    dropped_slow_consumer,
    /// QoS 0 deliveries to offline persistent sessions (not queued, by policy).
    dropped_offline_qos0,
    /// QoS 1/2 deliveries dropped: session queue at `max_queued_messages`/`_bytes`.
    dropped_queue_full,
    /// 5.0 messages whose expiry interval passed before delivery started.
    dropped_expired,
    /// 5.0 deliveries larger than the subscriber's Maximum Packet Size.
    dropped_too_large,
    /// Shared-subscription messages with no connected member left in the group.
    dropped_shared_no_member,
    /// Retained messages not stored: `max_retained_messages`/`_bytes` reached.
    dropped_retained_cap,
    /// Client PUBLISHes to `$SYS/...`, which clients may not write.
    dropped_sys_publish,
    /// CONNECTs refused: unknown user or wrong password (CONNACK 4 / 0x86).
    auth_bad_credentials,
    /// CONNECTs refused: no username while anonymous clients are not allowed
    /// (CONNACK 5 / 0x87).
    auth_not_authorized,
    /// CONNECTs answered late because their address failed to authenticate
    /// repeatedly (brute-force slow-down).
    auth_delayed,
    /// Client PUBLISHes (not to `$SYS`) the ACL does not let the client write:
    /// not routed, 5.0 PUBACK/PUBREC 0x87.
    publishes_denied,
    /// SUBSCRIBE filters the ACL refused (SUBACK 0x80 / 0x87).
    subscribes_denied,
    /// Messages not delivered through a wildcard subscription because the ACL
    /// does not let the subscriber read their topic (not a loss: never allowed).
    deliveries_denied,
    /// Wills not published: the ACL does not let their client write the topic.
    wills_denied,
    /// Subscriptions removed because reloaded rules no longer allow them.
    subscriptions_revoked,
    /// Records cut off the store's log tails at start: writes a crash
    /// interrupted, never acknowledged as durable.
    store_torn_records,
    /// 1 while some core's log cannot be written (QoS 1/2 publishes wait).
    store_failing,
    /// Writes to the store's logs that failed (and were retried).
    store_failed_writes,
    /// Times a connection held a QoS 1/2 PUBLISH because the store could
    /// not write.
    store_holds,
    /// fdatasyncs of the store's logs (over all cores; counted on core 0).
    store_syncs,
    /// Writes that waited for the disk (`persistence_fsync = "always"`).
    durable_waits,
    /// QoS 2 ids dropped after `awaiting_rel_timeout` without PUBREL.
    awaiting_rel_expired,
    /// Connections closed for a protocol violation.
    protocol_violations,
    /// Connections closed for keep-alive expiry.
    keepalive_timeouts,
    /// Sessions taken over by a new connection with the same client id.
    takeovers,
    /// Wills published.
    wills_published,
    /// Times a cross-core queue was full and a publisher waited (back-pressure).
    mesh_full_waits,
    /// Loop turns a core spent polling for work instead of sleeping
    /// (`busy_poll_us`): what the option costs, in turns of about a
    /// microsecond each.
    busy_poll_turns,
    /// Writes made after a `write_coalesce_ms` wait: the connection's output
    /// kept coming, so its writer waited for more to go with the write.
    coalesced_writes,
    /// Reads made after a `read_coalesce_ms` wait: the connection's input
    /// kept coming, so its reader waited for more to come with the read.
    coalesced_reads,
    /// Cores that hand shared groups' messages to the cluster's NATS queue
    /// groups now (1 each while the link's connection for them is up).
    cluster_shared_cores,
    /// Connections handed to the core that owns their client id.
    handoffs,
    /// Sessions (connected or persistent offline) held now.
    sessions_current,
    /// Retained messages held now (one replica; every core holds the same).
    retained_current,
    /// Bytes (topic and payload) of the retained messages held now (one replica).
    retained_bytes,
    /// QoS 1/2 messages waiting in sessions' queues (behind the in-flight
    /// window, or for an offline session), counted every tick.
    messages_queued,
    /// QoS 1/2 messages sent and not yet acknowledged, counted every tick.
    messages_inflight,
    /// Subscriptions held now.
    subscriptions_current,
    /// Of `subscriptions_current`, shared ones (`$share/GROUP/FILTER`).
    shared_subscriptions_current,
    /// Sessions discarded because their expiry interval passed while offline.
    sessions_expired,
}

impl Counters {
    /// Counts a PUBLISH received from a client.
    pub fn received(&mut self, qos: QoS) {
        self.messages_received += 1;
        match qos {
            QoS::AtMostOnce => self.received_qos0 += 1,
            QoS::AtLeastOnce => self.received_qos1 += 1,
            QoS::ExactlyOnce => self.received_qos2 += 1,
        }
    }

    fn sent(&mut self, qos: QoS) {
        self.messages_sent += 1;
        match qos {
            QoS::AtMostOnce => self.sent_qos0 += 1,
            QoS::AtLeastOnce => self.sent_qos1 += 1,
            QoS::ExactlyOnce => self.sent_qos2 += 1,
        }
    }

    /// Counts what became of one delivery at `qos`.
    pub fn count(&mut self, outcome: Outcome, qos: QoS) {
        match outcome {
            Outcome::Sent => self.sent(qos),
            Outcome::Queued => {}
            Outcome::QueuedOverCap => self.queued_over_cap += 1,
            Outcome::SentOverCap => {
                self.sent(qos);
                self.queued_over_cap += 1;
            }
            Outcome::DroppedSlowConsumer => self.dropped_slow_consumer += 1,
            Outcome::DroppedOffline => self.dropped_offline_qos0 += 1,
            Outcome::DroppedQueueFull => self.dropped_queue_full += 1,
            Outcome::DroppedExpired => self.dropped_expired += 1,
            Outcome::DroppedTooLarge => self.dropped_too_large += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_in_name_order() {
        let c = Counters {
            connections_total: 3,
            subscriptions_current: 9,
            ..Counters::default()
        };
        let values = c.values();
        assert_eq!(values.len(), Counters::NAMES.len());
        assert_eq!(Counters::from_values(&values), c);
        let named: Vec<_> = Counters::NAMES.iter().copied().zip(values).collect();
        assert_eq!(named, c.fields());
        assert_eq!(c.get("subscriptions_current"), Some(9));
        assert_eq!(c.get("no_such_counter"), None);
    }
}
