//! Idle connections: open N clients at the connect rate and hold them, to
//! measure connect time and the broker's memory per connection. With
//! `--topic`, each subscribes to it first (`%i`: its index), to measure an
//! idle subscribed device.

use super::{ClientSpec, Plan, Role};
use crate::cli::LoadArgs;
use crate::stats::Routing;

const DEFAULT_CLIENTS: usize = 1000;

pub fn plan(args: &LoadArgs) -> Plan {
    let n = args.clients.unwrap_or(DEFAULT_CLIENTS);
    Plan {
        clients: (0..n)
            .map(|index| ClientSpec {
                index,
                role: Role::Idle {
                    filter: args
                        .topic
                        .as_deref()
                        .map(|t| t.replace("%i", &index.to_string())),
                },
            })
            .collect(),
        routing: Routing::None,
        publishers: 0,
        subscribers: 0,
        storm_concurrency: None,
    }
}
