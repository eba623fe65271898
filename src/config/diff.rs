//! Which settings differ between the running configuration and one re-read
//! on SIGHUP: what a reload applies, and what it must report as waiting for
//! a restart. Destructuring every field makes a new setting a compile error
//! here until it is listed.

use super::{Config, Limits};

/// Names of the keys whose values differ, as the config file spells them.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! compare {
        ($a:expr, $b:expr; $ty:ident { $($field:ident),* $(,)? }) => {{
            let $ty { $($field: _),* } = $a;
            $(if $a.$field != $b.$field {
                changed.push(stringify!($field));
            })*
        }};
    }
    compare!(old, new; Config {
        bind, port, default_listener, listeners, bridges, cluster, cores, pin_cores, io_driver, ring_entries,
        read_buffer_size, mesh_queue_capacity, mesh_budget, busy_poll_us, write_coalesce_ms, read_coalesce_ms, transparent_huge_pages,
        allow_anonymous, local_only,
        password_file, acl_file, persistence, persistence_location, persistence_fsync,
        persistence_fsync_interval, persistence_faults, log_level, log_format, sys_interval,
        metrics, shared_strategy, limits,
    });
    changed.retain(|k| *k != "limits");
    let (a, b) = (&old.limits, &new.limits);
    compare!(a, b; Limits {
        max_packet_size, max_connections, max_connections_per_ip, max_connection_rate,
        max_inflight_messages, max_queued_messages, max_queued_bytes, slow_consumer_policy,
        max_stall, max_write_buffer, max_topic_levels, max_client_id_len, connect_timeout,
        max_keepalive, max_awaiting_rel, awaiting_rel_timeout, max_retained_messages,
        max_retained_bytes, max_subscriptions_per_client, max_topic_alias, max_session_expiry,
        persistent_client_expiration,
    });
    // Derived from other keys, never set by themselves.
    changed.retain(|k| !matches!(*k, "default_listener" | "local_only" | "persistence_faults"));
    changed
}

/// The limits a reload may change while clients are connected: each applies
/// from the next decision it governs. The others are announced to clients at
/// CONNECT (`max_packet_size`, `max_topic_alias`, `max_awaiting_rel` as 5.0
/// Receive Maximum) or sized at start (`max_connections_per_ip`,
/// `max_connection_rate`), so they wait for a restart.
pub const LIVE_LIMITS: &[&str] = &[
    "max_connections",
    "max_inflight_messages",
    "max_queued_messages",
    "max_queued_bytes",
    "slow_consumer_policy",
    "max_stall",
    "max_write_buffer",
    "max_topic_levels",
    "max_client_id_len",
    "connect_timeout",
    "max_keepalive",
    "awaiting_rel_timeout",
    "max_retained_messages",
    "max_retained_bytes",
    "max_subscriptions_per_client",
    "max_session_expiry",
    "persistent_client_expiration",
];

/// `running` with every limit of [`LIVE_LIMITS`] taken from `new`.
pub fn live_limits(running: &Limits, new: &Limits) -> Limits {
    Limits {
        max_connections: new.max_connections,
        max_inflight_messages: new.max_inflight_messages,
        max_queued_messages: new.max_queued_messages,
        max_queued_bytes: new.max_queued_bytes,
        slow_consumer_policy: new.slow_consumer_policy,
        max_stall: new.max_stall,
        max_write_buffer: new.max_write_buffer,
        max_topic_levels: new.max_topic_levels,
        max_client_id_len: new.max_client_id_len,
        connect_timeout: new.connect_timeout,
        max_keepalive: new.max_keepalive,
        awaiting_rel_timeout: new.awaiting_rel_timeout,
        max_retained_messages: new.max_retained_messages,
        max_retained_bytes: new.max_retained_bytes,
        max_subscriptions_per_client: new.max_subscriptions_per_client,
        max_session_expiry: new.max_session_expiry,
        persistent_client_expiration: new.persistent_client_expiration,
        ..running.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_every_changed_key_and_nothing_else() {
        let old = Config::default();
        assert!(changed_keys(&old, &old.clone()).is_empty());
        let mut new = old.clone();
        new.log_level = "debug".into();
        new.cores += 1;
        new.limits.max_queued_messages += 1;
        assert_eq!(
            changed_keys(&old, &new),
            ["cores", "log_level", "max_queued_messages"]
        );
    }

    #[test]
    fn live_limits_take_exactly_the_listed_keys() {
        let running = Config::default();
        let mut new = running.clone();
        // Change every limit: what becomes live is the listed ones, no more.
        let l = &mut new.limits;
        l.max_packet_size += 1;
        l.max_connections += 1;
        l.max_connections_per_ip += 1;
        l.max_connection_rate += 1;
        l.max_inflight_messages += 1;
        l.max_queued_messages += 1;
        l.max_queued_bytes += 1;
        l.slow_consumer_policy = crate::config::SlowConsumerPolicy::Drop;
        l.max_stall += std::time::Duration::from_secs(1);
        l.max_write_buffer += 1;
        l.max_topic_levels += 1;
        l.max_client_id_len += 1;
        l.connect_timeout += std::time::Duration::from_secs(1);
        l.max_keepalive -= 1;
        l.max_awaiting_rel += 1;
        l.awaiting_rel_timeout += std::time::Duration::from_secs(1);
        l.max_retained_messages += 1;
        l.max_retained_bytes += 1;
        l.max_subscriptions_per_client += 1;
        l.max_topic_alias += 1;
        l.max_session_expiry -= 1;
        l.persistent_client_expiration -= 1;
        let all = changed_keys(&running, &new);
        assert_eq!(all.len(), 22, "{all:?}");
        let live = Config {
            limits: live_limits(&running.limits, &new.limits),
            ..running.clone()
        };
        let applied = changed_keys(&running, &live);
        assert_eq!(applied, LIVE_LIMITS);
    }
}
