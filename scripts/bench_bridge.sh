#!/usr/bin/env bash
# What a bridge costs: ringmq bridging to a Mosquitto "remote" against
# Mosquitto bridging to the same remote, in one run.
#
#   scripts/bench_bridge.sh             # ~1-2 minutes
#   RATE=10000 ROUNDS=5 scripts/bench_bridge.sh   # 10 pairs x 10,000/s
#
# Three brokers on loopback: the remote (Mosquitto, :1887) and two sources,
# ringmq (:1883) and Mosquitto (:1886), each with one bridge that sends
# `bench/#` out at QoS 1 (ringmq: `[[bridge]]`, Mosquitto: `connection`).
# loadgen's p2p pairs publish to a source (`--host`) and subscribe at the
# remote (`--subscribe-to`): every message crosses the bridge, and its
# latency, loss and the source broker's CPU per message are measured. Runs
# alternate between the two sources ROUNDS times; results go to
# results/<date>_bridge/.
#
# MODE=pinned (default, with 2+ cores): both sources on core 0 with one
# worker (ringmq --cores 1), the remote and loadgen on core 1.
#
# Environment: RATE (msg/s per pair, default 2000), PAIRS (default 10), QOS
# (default 1), DURATION (s, default 10), WARMUP (s, default 2), ROUNDS
# (default 3), MODE (pinned|shared).
set -euo pipefail

cd "$(dirname "$0")/.."
RATE=${RATE:-2000}
PAIRS=${PAIRS:-10}
QOS=${QOS:-1}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-3}
MODE=${MODE:-pinned}
RINGMQ_PORT=1883
MOSQ_SOURCE_PORT=1886
REMOTE_PORT=1887
OUT=results/$(date +%Y-%m-%d_%H%M%S)_bridge
mkdir -p "$OUT"

# shellcheck source=scripts/processes.sh
source scripts/processes.sh

command -v mosquitto >/dev/null || {
    echo "bench_bridge.sh: needs mosquitto (scripts/bench.sh installs it)" >&2
    exit 1
}
log "building (release)"
cargo build --release --workspace

SOURCE_CPU=()
SIDE_CPU=()
RINGMQ_CORES=$(nproc)
THREADS=$(nproc)
if [ "$MODE" = pinned ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    SOURCE_CPU=(taskset -c 0)
    SIDE_CPU=(taskset -c 1)
    RINGMQ_CORES=1
    THREADS=1
fi
log "mode $MODE: ringmq --cores $RINGMQ_CORES, $PAIRS pairs x $RATE msg/s, QoS $QOS"

broker_conf() {
    cat <<EOF
allow_anonymous true
persistence false
max_queued_messages 1000000
max_inflight_messages 0
set_tcp_nodelay true
log_type error
log_type warning
EOF
}

{
    echo "listener $REMOTE_PORT 127.0.0.1"
    broker_conf
} >"$OUT/remote.conf"
{
    echo "listener $MOSQ_SOURCE_PORT 127.0.0.1"
    broker_conf
    cat <<EOF
connection remote
address 127.0.0.1:$REMOTE_PORT
bridge_protocol_version mqttv50
cleansession false
max_inflight_messages 100
topic bench/# out 1
EOF
} >"$OUT/source.conf"
cat >"$OUT/ringmq.toml" <<EOF
persistence = false
max_inflight_messages = 100

[[bridge]]
name = "remote"
address = "127.0.0.1:$REMOTE_PORT"
client_id = "ringmq-source"
cleansession = false
max_inflight = 100
topic = ["bench/# out 1"]
EOF

"${SIDE_CPU[@]}" mosquitto -c "$OUT/remote.conf" 2>"$OUT/remote.log" &
PIDS+=($!)
wait_for_port "$REMOTE_PORT" remote "$OUT/remote.log"
"${SOURCE_CPU[@]}" target/release/ringmq -c "$OUT/ringmq.toml" --bind 127.0.0.1 \
    --port "$RINGMQ_PORT" --cores "$RINGMQ_CORES" 2>"$OUT/ringmq.log" &
RINGMQ_PID=$!
PIDS+=("$RINGMQ_PID")
"${SOURCE_CPU[@]}" mosquitto -c "$OUT/source.conf" 2>"$OUT/source.log" &
MOSQ_PID=$!
PIDS+=("$MOSQ_PID")
wait_for_port "$RINGMQ_PORT" ringmq "$OUT/ringmq.log"
wait_for_port "$MOSQ_SOURCE_PORT" mosquitto "$OUT/source.log"
sleep 2 # both bridges dial the remote on start; no event to await from here

run() {
    local name=$1 port=$2 pid=$3 round=$4
    log "round $round: $name -> remote"
    "${SIDE_CPU[@]}" target/release/loadgen p2p --name "$name" --host 127.0.0.1 --port "$port" \
        --subscribe-to "127.0.0.1:$REMOTE_PORT" --broker-pid "$pid" \
        -c "$PAIRS" --rate "$RATE" --qos "$QOS" --duration "$DURATION" --warmup "$WARMUP" --drain 60 \
        --threads "$THREADS" --quiet --json "$OUT/$name-$round.json" |
        tee "$OUT/$name-$round.txt"
}

for round in $(seq "$ROUNDS"); do
    run ringmq "$RINGMQ_PORT" "$RINGMQ_PID" "$round"
    sleep 1
    run mosquitto "$MOSQ_SOURCE_PORT" "$MOSQ_PID" "$round"
    sleep 1
done

log "results in $OUT"
cat "$OUT"/*.txt
