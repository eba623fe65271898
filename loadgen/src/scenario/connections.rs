//! Idle connections: open N clients at the connect rate and hold them, to
//! measure connect time and the broker's memory per connection.

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
                role: Role::Idle,
            })
            .collect(),
        routing: Routing::None,
        publishers: 0,
        subscribers: 0,
        storm_concurrency: None,
    }
}
