//! Connection storm: connect, get CONNACK, disconnect, at a fixed attempt rate
//! (open loop, so a slow broker shows as connect latency and failures). The
//! plan has no persistent clients, only the attempts allowed in flight; the
//! attempts themselves are `client::churn`.

use super::Plan;
use crate::cli::LoadArgs;
use crate::stats::Routing;

const DEFAULT_IN_FLIGHT: usize = 100;

pub fn plan(args: &LoadArgs) -> Plan {
    Plan {
        clients: Vec::new(),
        routing: Routing::None,
        publishers: 0,
        subscribers: 0,
        storm_concurrency: Some(args.clients.unwrap_or(DEFAULT_IN_FLIGHT).max(1)),
    }
}
