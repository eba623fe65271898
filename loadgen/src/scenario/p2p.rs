//! Point-to-point: pair i is publisher i -> subscriber i on its own topic.

use anyhow::{bail, Result};

use super::{count, topic_for, Plan};
use crate::cli::LoadArgs;
use crate::stats::Routing;

const DEFAULT_PAIRS: usize = 10;
const DEFAULT_TOPIC: &str = "bench/p2p/%i";

pub fn plan(args: &LoadArgs) -> Result<Plan> {
    let pairs = count(args.clients, None, DEFAULT_PAIRS)?;
    let pattern = args.topic.as_deref().unwrap_or(DEFAULT_TOPIC);
    if pairs > 1 && !pattern.contains("%i") {
        bail!("p2p needs %i in --topic so that each pair has its own topic");
    }
    let topics = || (0..pairs).map(|i| (i, topic_for(pattern, i)));
    Ok(Plan::messaging(
        topics().collect(),
        topics().collect(),
        Routing::Pairs,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{tests::args, Role};

    #[test]
    fn pairs_get_their_own_topics() {
        let plan = plan(&args(&["-c", "3"])).unwrap();
        assert_eq!((plan.publishers, plan.subscribers), (3, 3));
        assert_eq!(plan.clients.len(), 6);
        assert_eq!(
            plan.clients[0].role,
            Role::Subscriber {
                id: 0,
                filter: "bench/p2p/0".into()
            }
        );
        assert_eq!(
            plan.clients[5].role,
            Role::Publisher {
                id: 2,
                topic: "bench/p2p/2".into()
            }
        );
        assert_eq!(plan.fanout(), 1);
    }

    #[test]
    fn shared_topic_is_refused() {
        assert!(plan(&args(&["-c", "2", "-t", "same"])).is_err());
    }
}
