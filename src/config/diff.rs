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
        bind, port, default_listener, listeners, cores, pin_cores, io_driver, ring_entries,
        read_buffer_size, mesh_queue_capacity, mesh_budget, allow_anonymous, local_only,
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
}
