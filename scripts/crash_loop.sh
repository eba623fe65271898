#!/usr/bin/env bash
# kill -9 the broker at random moments under load, restart it each time, and
# check that `persistence_fsync = "always"` kept every acknowledged QoS 1/2
# message every time (tests/e2e_persistence.rs, the ignored crash-loop test).
#
#   scripts/crash_loop.sh            # 20 kills
#   CRASH_ROUNDS=100 scripts/crash_loop.sh
#   CRASH_SEED=12345 scripts/crash_loop.sh   # repeat a run's kill moments
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --test e2e_persistence -- --ignored --nocapture \
    crash_loop_always_keeps_every_acknowledged_message
