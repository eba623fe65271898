#!/usr/bin/env bash
# How ringmq's throughput grows with its cores, in one command.
#
#   scripts/scaling.sh                  # --cores 1, 2, 4, 8, 16, as the machine allows
#   CORES="1 2 4" DURATION=5 scripts/scaling.sh
#
# For each core count N the broker runs with `--cores N` on CPUs 0..N-1 (its
# workers pinned one per CPU) and the load generator on the CPUs after them,
# so that neither takes the other's cores. A count that would leave the
# generator no CPU of its own is skipped (on a 2-CPU machine only N = 1 runs
# apart; SHARE=1 runs the others anyway, sharing, and says so). Each
# scenario is closed loop (as fast as the broker acknowledges), with the same
# clients at every N:
#
#   p2p      P2P_PAIRS pairs (default 256), QoS 1, at most 100 unacknowledged per publisher
#   fan-out  FANOUT_PUBS publishers (default 16) -> FANOUT_SUBS subscribers (default 64), QoS 0
#
# Prints one table per scenario: messages per second, broker CPU seconds per
# million messages, speedup over N = 1 and per-core efficiency (speedup / N,
# 1.00 = linear), and writes each run's JSON under results/<date>_scaling/.
#
# Environment: CORES, DURATION (s, default 10), WARMUP (s, default 2), PORT
# (default 1883), SHARE, P2P_PAIRS, FANOUT_PUBS, FANOUT_SUBS.
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
PORT=${PORT:-1883}
P2P_PAIRS=${P2P_PAIRS:-256}
FANOUT_PUBS=${FANOUT_PUBS:-16}
FANOUT_SUBS=${FANOUT_SUBS:-64}
CPUS=$(nproc)
CORES=${CORES:-"1 2 4 8 16"}
OUT=results/$(date +%Y-%m-%d_%H%M%S)_scaling
mkdir -p "$OUT"

# shellcheck source=scripts/processes.sh
source scripts/processes.sh

command -v taskset >/dev/null || {
    echo "scaling.sh: needs taskset (util-linux)" >&2
    exit 1
}
log "building (release)"
cargo build --release -p ringmq -p loadgen

# One run of scenario $2 at $1 cores; appends "cores msgs/s cpu_s_per_M lost" to $OUT/$2.rows.
run() {
    local n=$1 scenario=$2 gen_cpus gen_threads
    if [ "$n" -lt "$CPUS" ]; then
        gen_cpus="$n-$((CPUS - 1))"
        gen_threads=$((CPUS - n))
    else
        gen_cpus="0-$((CPUS - 1))"
        gen_threads=$CPUS
    fi
    taskset -c "0-$((n - 1))" target/release/ringmq --bind 127.0.0.1 --port "$PORT" \
        --cores "$n" --persistence false --sys-interval 0 2>"$OUT/ringmq-$n.log" &
    local pid=$!
    PIDS+=("$pid")
    wait_for_port "$PORT" ringmq "$OUT/ringmq-$n.log"
    local args
    case "$scenario" in
    p2p) args=(p2p -c "$P2P_PAIRS" --qos 1 --inflight 100) ;;
    fan-out) args=(fan-out --publishers "$FANOUT_PUBS" --subscribers "$FANOUT_SUBS" --qos 0) ;;
    esac
    log "$scenario at --cores $n (loadgen on CPUs $gen_cpus)"
    taskset -c "$gen_cpus" target/release/loadgen "${args[@]}" --port "$PORT" --max-rate \
        --duration "$DURATION" --warmup "$WARMUP" --threads "$gen_threads" \
        --broker-pid "$pid" --quiet --json "$OUT/$scenario-$n.json" >/dev/null
    kill "$pid" && wait "$pid" 2>/dev/null || true
    python3 - "$OUT/$scenario-$n.json" "$n" >>"$OUT/$scenario.rows" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(sys.argv[2], d["throughput"]["received_per_s"],
      d["broker"]["cpu_s_per_million_msgs"] or 0, d["totals"]["lost"])
EOF
}

for scenario in p2p fan-out; do
    : >"$OUT/$scenario.rows"
    for n in $CORES; do
        if [ "$n" -gt "$CPUS" ]; then
            log "skipping --cores $n: this machine has $CPUS CPUs"
            continue
        fi
        if [ "$n" -ge "$CPUS" ] && [ "${SHARE:-0}" != 1 ]; then
            log "skipping --cores $n: no CPU left for the generator (SHARE=1 runs it shared)"
            continue
        fi
        run "$n" "$scenario"
    done
done

log "results in $OUT ($(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
for scenario in p2p fan-out; do
    printf '\n%s\n' "$scenario"
    python3 - "$OUT/$scenario.rows" "$CPUS" <<'EOF'
import sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
cpus = int(sys.argv[2])
if not rows:
    print("  (no run)")
    sys.exit()
base = float(rows[0][1]) / int(rows[0][0])
print(f"{'cores':>5} {'msg/s':>12} {'CPU s/M':>8} {'speedup':>8} {'per core':>8} {'lost':>6}")
for n, rate, cpu, lost in rows:
    n, rate = int(n), float(rate)
    speedup = rate / base
    shared = " (shared)" if n >= cpus else ""
    print(f"{n:>5} {rate:>12.0f} {float(cpu):>8.2f} {speedup:>8.2f} {speedup / n:>8.2f} {lost:>6}{shared}")
EOF
done
