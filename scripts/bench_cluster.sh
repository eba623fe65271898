#!/usr/bin/env bash
# What crossing nodes costs: loadgen p2p pairs (or a fan-out) with
# publishers on node A and subscribers on node B (two ringmq nodes over one
# nats-server), against the same load on node A alone, in one run.
#
#   scripts/bench_cluster.sh                       # ~1 minute
#   RATE=1000 PAIRS=50 ROUNDS=5 scripts/bench_cluster.sh
#   SCENARIO=fan-out PAIRS=100 scripts/bench_cluster.sh   # 1 publisher, 100 subscribers
#
# Both nodes run --cores 1. Each run reports loadgen's throughput, latency
# and loss, and the CPU seconds per million messages of every process the
# path uses: node A alone for the single-node run; A, B and nats-server for
# the cross-node one (from /proc, over the run). Results go to
# results/<date>_cluster/.
#
# Environment: SCENARIO (p2p or fan-out, default p2p), RATE (msg/s per
# publisher, default 1000), PAIRS (pairs, or fan-out subscribers; default 20), QOS
# (default 1), DURATION (s, default 8), WARMUP (s, default 2), ROUNDS
# (default 3).
set -euo pipefail

cd "$(dirname "$0")/.."
SCENARIO=${SCENARIO:-p2p}
case "$SCENARIO" in
p2p | fan-out) ;;
*)
    echo "bench_cluster.sh: SCENARIO is p2p or fan-out" >&2
    exit 1
    ;;
esac
RATE=${RATE:-1000}
PAIRS=${PAIRS:-20}
QOS=${QOS:-1}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-3}
A_PORT=1883
B_PORT=1884
NATS_PORT=4222
OUT=results/$(date +%Y-%m-%d_%H%M%S)_cluster
mkdir -p "$OUT"

# shellcheck source=scripts/processes.sh
source scripts/processes.sh

command -v nats-server >/dev/null || {
    echo "bench_cluster.sh: needs nats-server (apt-get install -y nats-server)" >&2
    exit 1
}
log "building (release)"
cargo build --release --bin ringmq && cargo build --release -p loadgen

nats-server -a 127.0.0.1 -p "$NATS_PORT" 2>"$OUT/nats.log" &
NATS_PID=$!
PIDS+=("$NATS_PID")
wait_for_port "$NATS_PORT" nats-server "$OUT/nats.log"

node() {
    local name=$1 port=$2
    cat >"$OUT/$name.toml" <<EOF
persistence = false
max_inflight_messages = 100

[cluster]
nats_servers = ["nats://127.0.0.1:$NATS_PORT"]
node_name = "$name"
EOF
    target/release/ringmq -c "$OUT/$name.toml" --bind 127.0.0.1 --port "$port" --cores 1 \
        --no-pin 2>"$OUT/$name.log" &
    PIDS+=($!)
    wait_for_port "$port" "$name" "$OUT/$name.log"
}
node a "$A_PORT"
A_PID=${PIDS[-1]}
node b "$B_PORT"
B_PID=${PIDS[-1]}
# Each link connects in the background; its log line is the event.
for name in a b; do
    for _ in $(seq 100); do
        grep -q "cluster link connected" "$OUT/$name.log" && break
        sleep 0.1
    done
done

# cpu_ticks PID...: user + system clock ticks of the processes, summed.
cpu_ticks() {
    local total=0 pid
    for pid in "$@"; do
        local fields
        read -ra fields <"/proc/$pid/stat"
        total=$((total + fields[13] + fields[14]))
    done
    echo "$total"
}

run() {
    local name=$1 round=$2
    shift 2
    local pids=("$@")
    local sub=()
    [ "$name" = cross-node ] && sub=(--subscribe-to "127.0.0.1:$B_PORT")
    log "round $round: $name"
    local before=() after=() pid
    for pid in "${pids[@]}"; do before+=("$(cpu_ticks "$pid")"); done
    target/release/loadgen "$SCENARIO" --name "$name" --host 127.0.0.1 --port "$A_PORT" "${sub[@]}" \
        -c "$PAIRS" --rate "$RATE" --qos "$QOS" --duration "$DURATION" --warmup "$WARMUP" \
        --drain 30 --quiet --json "$OUT/$name-$round.json" | tee "$OUT/$name-$round.txt"
    for pid in "${pids[@]}"; do after+=("$(cpu_ticks "$pid")"); done
    python3 - "$OUT/$name-$round.json" "$(getconf CLK_TCK)" "$name" "${before[*]}" "${after[*]}" <<'EOF2' | tee -a "$OUT/$name-$round.txt"
import json, sys
report, hz, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
before, after = map(int, sys.argv[4].split()), map(int, sys.argv[5].split())
msgs = json.load(open(report))["totals"]["received"]
labels = ["node a", "node b", "nats-server"]
parts = [(l, (a - b) / hz) for l, b, a in zip(labels, before, after)]
total = sum(s for _, s in parts)
each = ", ".join(f"{l} {s / msgs * 1e6:.1f}" for l, s in parts) if msgs else "-"
print(f"{name}: CPU s per million messages (whole run incl. connects and drain): {total / msgs * 1e6:.1f} ({each}); {msgs} received")
EOF2
}

for round in $(seq "$ROUNDS"); do
    run single-node "$round" "$A_PID"
    sleep 1
    run cross-node "$round" "$A_PID" "$B_PID" "$NATS_PID"
    sleep 1
done

log "results in $OUT"
cat "$OUT"/*.txt
