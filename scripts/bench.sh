#!/usr/bin/env bash
# ringmq vs Mosquitto on this machine, in one command.
#
#   scripts/bench.sh            # ~3-4 minutes on 2 cores
#   DURATION=30 scripts/bench.sh
#   MODE=shared scripts/bench.sh
#
# Builds the workspace (release), installs Mosquitto from the distribution's
# packages if it is missing, starts both brokers on loopback, runs the
# standard scenarios with `loadgen compare`, writes JSON, SVG and HdrHistogram
# files under results/<date>/, prints the comparison tables, and stops what it
# started.
#
# MODE=pinned (the default): per core. Each broker on core 0 with one worker
# (`ringmq --cores 1`), the load generator on core 1, when there are at least
# 2 cores. MODE=shared: as a small server runs it. ringmq gets every core
# (`--cores $(nproc)`), nothing is pinned, and broker and generator share the
# machine. Report both: shared flatters whichever broker wins the fight for
# the cores.
#
# Environment: MODE (pinned|shared), DURATION (s, per run, default 10), WARMUP
# (s, default 2), ROUNDS (default 1), RINGMQ_PORT (1883), MOSQUITTO_PORT (1884),
# RINGMQ_ARGS (more ringmq flags, e.g. "--read-coalesce-ms 1 --write-coalesce-ms 1").
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-1}
RINGMQ_PORT=${RINGMQ_PORT:-1883}
MOSQUITTO_PORT=${MOSQUITTO_PORT:-1884}
read -r -a RINGMQ_EXTRA <<<"${RINGMQ_ARGS:-}"
OUT=results/$(date +%Y-%m-%d_%H%M%S)_${MODE:-pinned}
mkdir -p "$OUT"

# shellcheck source=scripts/processes.sh
source scripts/processes.sh

install_mosquitto() {
    command -v mosquitto >/dev/null && return
    log "installing mosquitto from the distribution's packages"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    if command -v apt-get >/dev/null; then
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mosquitto
    elif command -v dnf >/dev/null; then
        $sudo dnf install -y mosquitto
    else
        echo "bench.sh: install mosquitto with your package manager, then rerun" >&2
        exit 1
    fi
}

# 10,000 idle clients need 10,000 descriptors in the generator and the broker.
raise_fd_limit() {
    local hard
    hard=$(ulimit -Hn)
    if [ "$hard" = unlimited ] || [ "$hard" -ge 65536 ]; then
        ulimit -n 65536
    else
        ulimit -n "$hard"
    fi
    if [ "$(ulimit -n)" -lt 10240 ]; then
        echo "bench.sh: warning: ulimit -n is $(ulimit -n); the 10k-connection run may fail" >&2
    fi
}

log "building (release)"
cargo build --release --workspace
install_mosquitto
raise_fd_limit

MODE=${MODE:-pinned}
BROKER_CPU=()
GEN_CPU=()
THREADS=$(nproc)
RINGMQ_CORES=$(nproc)
case "$MODE" in
pinned)
    RINGMQ_CORES=1
    if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
        BROKER_CPU=(taskset -c 0)
        GEN_CPU=(taskset -c 1)
        THREADS=1
    fi
    ;;
shared) ;;
*)
    echo "bench.sh: MODE must be pinned or shared, not $MODE" >&2
    exit 2
    ;;
esac
log "mode $MODE: ringmq --cores $RINGMQ_CORES ${RINGMQ_ARGS:-}, loadgen --threads $THREADS"

cat >"$OUT/mosquitto.conf" <<EOF
listener $MOSQUITTO_PORT 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 1000000
max_inflight_messages 0
set_tcp_nodelay true
log_type error
log_type warning
EOF

log "starting ringmq on :$RINGMQ_PORT and mosquitto on :$MOSQUITTO_PORT"
"${BROKER_CPU[@]}" target/release/ringmq --bind 127.0.0.1 --port "$RINGMQ_PORT" --cores "$RINGMQ_CORES" --persistence false \
    ${RINGMQ_EXTRA[@]+"${RINGMQ_EXTRA[@]}"} 2>"$OUT/ringmq.log" &
RINGMQ_PID=$!
PIDS+=("$RINGMQ_PID")
"${BROKER_CPU[@]}" mosquitto -c "$OUT/mosquitto.conf" 2>"$OUT/mosquitto.log" &
MOSQUITTO_PID=$!
PIDS+=("$MOSQUITTO_PID")
wait_for_port "$RINGMQ_PORT" ringmq "$OUT/ringmq.log"
wait_for_port "$MOSQUITTO_PORT" mosquitto "$OUT/mosquitto.log"

RUNS=()
compare() {
    local name=$1
    shift
    RUNS+=("$name")
    log "$name"
    "${GEN_CPU[@]}" target/release/loadgen compare "$@" \
        --target "ringmq=127.0.0.1:$RINGMQ_PORT" \
        --target "mosquitto=127.0.0.1:$MOSQUITTO_PORT" \
        --broker-pid "ringmq=$RINGMQ_PID" --broker-pid "mosquitto=$MOSQUITTO_PID" \
        --threads "$THREADS" --rounds "$ROUNDS" --quiet \
        --json "$OUT/$name.json" --svg "$OUT/$name.svg" --hdr "$OUT/$name.hdr" |
        tee "$OUT/$name.txt"
}

# Fixed rates the peers can sustain, so that latency and CPU per message
# compare like for like.
compare p2p-qos1 p2p -c 50 --rate 1000 --qos 1 --duration "$DURATION" --warmup "$WARMUP"
compare fan-out-qos0 fan-out --publishers 1 --subscribers 100 --rate 1000 --qos 0 \
    --duration "$DURATION" --warmup "$WARMUP"
compare fan-in-qos0 fan-in -c 8 --rate 5000 --qos 0 --duration "$DURATION" --warmup "$WARMUP"
compare connections-10k connections -c 10000 --connect-rate 2500 \
    --duration "$((DURATION / 2))" --warmup 0

log "results in $OUT"
for name in "${RUNS[@]}"; do
    printf '\n' && cat "$OUT/$name.txt"
done
