//! Fan-in: N publishers, each on its own topic -> one wildcard subscriber.

use anyhow::Result;

use super::{count, Plan};
use crate::cli::LoadArgs;

const DEFAULT_PUBLISHERS: usize = 8;
const DEFAULT_TOPIC: &str = "bench/fanin/%i";

pub fn plan(args: &LoadArgs) -> Result<Plan> {
    let pubs = count(args.publishers, args.clients, DEFAULT_PUBLISHERS)?;
    let subs = count(args.subscribers, None, 1)?;
    let pattern = args.topic.as_deref().unwrap_or(DEFAULT_TOPIC);
    Ok(Plan::all_to_all(pubs, subs, pattern))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{tests::args, Role};

    #[test]
    fn one_wildcard_subscriber() {
        let plan = plan(&args(&["-c", "4"])).unwrap();
        assert_eq!((plan.publishers, plan.subscribers), (4, 1));
        assert_eq!(
            plan.clients[0].role,
            Role::Subscriber {
                id: 0,
                filter: "bench/fanin/+".into()
            }
        );
    }
}
