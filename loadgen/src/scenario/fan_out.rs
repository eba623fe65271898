//! Fan-out: a few publishers -> N subscribers of the same topic.

use anyhow::Result;

use super::{count, Plan};
use crate::cli::LoadArgs;

const DEFAULT_SUBSCRIBERS: usize = 100;
const DEFAULT_TOPIC: &str = "bench/fanout";

pub fn plan(args: &LoadArgs) -> Result<Plan> {
    let subs = count(args.subscribers, args.clients, DEFAULT_SUBSCRIBERS)?;
    let pubs = count(args.publishers, None, 1)?;
    let pattern = args.topic.as_deref().unwrap_or(DEFAULT_TOPIC);
    Ok(Plan::all_to_all(pubs, subs, pattern))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::tests::args;

    #[test]
    fn every_subscriber_gets_every_message() {
        let plan = plan(&args(&["--subscribers", "5", "--publishers", "2"])).unwrap();
        assert_eq!((plan.publishers, plan.subscribers), (2, 5));
        assert_eq!(plan.fanout(), 5);
    }
}
