//! Counters. Each core bumps plain integers it alone owns (no atomics on the
//! message path) and publishes a snapshot to shared atomics once per tick; readers
//! sum the cores' snapshots.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// One core's counters.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct Counters {
            $($(#[$doc])* pub $name: u64,)*
        }

        /// The published copy of one core's [`Counters`].
        #[derive(Debug, Default)]
        pub struct SharedCounters {
            $($name: AtomicU64,)*
        }

        impl SharedCounters {
            pub fn publish(&self, c: &Counters) {
                $(self.$name.store(c.$name, Ordering::Relaxed);)*
            }

            pub fn snapshot(&self) -> Counters {
                Counters { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl Counters {
            pub fn add(&mut self, other: &Counters) {
                $(self.$name += other.$name;)*
            }

            /// `(name, value)` pairs, for logs and `$SYS`.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

counters! {
    /// Connections open now.
    connections_current,
    /// Connections accepted since start.
    connections_total,
    /// CONNECTs refused (bad id, limits, malformed, timeout).
    connects_refused,
    /// Connections refused because `max_connections` was reached.
    refused_max_connections,
    /// PUBLISH packets received from clients.
    messages_received,
    /// PUBLISH packets sent to clients (deliveries, not counting resends).
    messages_sent,
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
    /// Connections handed to the core that owns their client id.
    handoffs,
    /// Sessions (connected or persistent offline) held now.
    sessions_current,
    /// Retained messages held now (one replica; every core holds the same).
    retained_current,
    /// Subscriptions held now.
    subscriptions_current,
}

/// Sums the published snapshots of all cores. The retained store is replicated
/// on every core, so its size is the largest replica, not the sum.
pub fn total(cores: &[SharedCounters]) -> Counters {
    let mut sum = Counters::default();
    let mut retained = 0;
    for c in cores {
        let snapshot = c.snapshot();
        retained = retained.max(snapshot.retained_current);
        sum.add(&snapshot);
    }
    sum.retained_current = retained;
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_counters_but_not_replicas() {
        let cores = [SharedCounters::default(), SharedCounters::default()];
        for c in &cores {
            c.publish(&Counters {
                messages_sent: 5,
                retained_current: 7,
                ..Counters::default()
            });
        }
        let t = total(&cores);
        assert_eq!(t.messages_sent, 10);
        assert_eq!(t.retained_current, 7);
    }
}
