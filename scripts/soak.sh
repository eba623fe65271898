#!/usr/bin/env bash
# A soak run: ringmq --cores 2 under a mixed load for MINUTES, with its RSS,
# CPU and counters printed every minute.
#
#   scripts/soak.sh 30
#
# The load, all at once: loadgen p2p QoS 1 (20 pairs x 50/s, persistent
# sessions), fan-out QoS 0 (1 -> 50 at 100/s), a connection storm (50/s),
# retained updates over 500 topics, a subscriber that never reads (the
# broker's max_stall cuts it off each time), and broken clients
# (scripts/soak_clients.py). Passes when no acknowledged QoS 1 message is
# lost and the RSS at the end is within 10 % (or 8 MiB) of the RSS after the
# first minute's warm-up. Results under results/<date>_soak/.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-30}
SECONDS_TOTAL=$((MINUTES * 60))
PORT=${SOAK_PORT:-1893}
METRICS=${SOAK_METRICS_PORT:-9193}
OUT=results/$(date +%Y-%m-%d_%H%M%S)_soak
mkdir -p "$OUT"

# shellcheck source=scripts/processes.sh
source scripts/processes.sh

cargo build --release --workspace
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
target/release/ringmq --bind 127.0.0.1 --port "$PORT" --cores 2 --no-pin \
    --persistence-location "$OUT/store" --metrics-port "$METRICS" --log-level warn \
    2>"$OUT/ringmq.log" &
BROKER=$!
PIDS+=("$BROKER")
wait_for_port "$PORT" ringmq "$OUT/ringmq.log"

LG=(target/release/loadgen)
"${LG[@]}" p2p --port "$PORT" -c 20 --rate 50 -q 1 -C false --duration "$SECONDS_TOTAL" \
    --warmup 0 --drain 60 --threads 1 --quiet --json "$OUT/p2p.json" >"$OUT/p2p.txt" 2>&1 &
P2P=$!
PIDS+=("$P2P")
"${LG[@]}" fan-out --port "$PORT" --publishers 1 --subscribers 50 --rate 100 -q 0 \
    --duration "$SECONDS_TOTAL" --warmup 0 --threads 1 --quiet --json "$OUT/fanout.json" \
    >"$OUT/fanout.txt" 2>&1 &
PIDS+=($!)
"${LG[@]}" storm --port "$PORT" -c 10 --connect-rate 50 --duration "$SECONDS_TOTAL" \
    --warmup 0 --threads 1 --quiet --json "$OUT/storm.json" >"$OUT/storm.txt" 2>&1 &
PIDS+=($!)
for kind in retained slow malformed; do
    python3 scripts/soak_clients.py "$kind" "$PORT" "$SECONDS_TOTAL" 2>"$OUT/$kind.log" &
    PIDS+=($!)
done

metric() { awk -v m="$1" '$1 == m { print $2 }' "$OUT/metrics.txt" | head -1; }
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$BROKER/status"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$BROKER/stat"; }
TICKS=$(getconf CLK_TCK)
printf '%-6s %-9s %-8s %-8s %-12s %-12s %-8s %s\n' minute rss_mib cpu_% conns received sent dropped store_bytes \
    | tee "$OUT/minutes.txt"
RSS_WARM=0
last_cpu=$(cpu_ticks)
for minute in $(seq "$MINUTES"); do
    sleep 60
    kill -0 "$BROKER" 2>/dev/null || { echo "soak.sh: the broker died; its log:" >&2; tail "$OUT/ringmq.log" >&2; exit 1; }
    curl -s "http://127.0.0.1:$METRICS/metrics" >"$OUT/metrics.txt"
    now_cpu=$(cpu_ticks)
    rss=$(rss_kib)
    [ "$minute" -eq 1 ] && RSS_WARM=$rss
    dropped=$(awk '$1 ~ /^ringmq_messages_dropped_total/ { s += $2 } END { print s + 0 }' "$OUT/metrics.txt")
    printf '%-6s %-9s %-8s %-8s %-12s %-12s %-8s %s\n' "$minute" "$((rss / 1024))" \
        "$(((now_cpu - last_cpu) * 100 / (60 * TICKS)))" "$(metric ringmq_connections)" \
        "$(awk '$1 ~ /^ringmq_messages_received_total/ { s += $2 } END { print s + 0 }' "$OUT/metrics.txt")" \
        "$(awk '$1 ~ /^ringmq_messages_sent_total/ { s += $2 } END { print s + 0 }' "$OUT/metrics.txt")" \
        "$dropped" "$(du -sk "$OUT/store" | cut -f1)K" | tee -a "$OUT/minutes.txt"
    last_cpu=$now_cpu
done
RSS_END=$(rss_kib)
wait "$P2P" || true
grep -E "^(sent|acked|received|lost|duplicated|latency p99 )" "$OUT/p2p.txt" || true
awk '$1 ~ /^ringmq_messages_dropped_total/ && $2 > 0' "$OUT/metrics.txt"
lost=$(python3 -c "import json,sys; print(json.load(open('$OUT/p2p.json'))['totals']['lost'])")
limit=$((RSS_WARM * 11 / 10))
[ "$limit" -lt $((RSS_WARM + 8192)) ] && limit=$((RSS_WARM + 8192))
echo "RSS after warm-up $((RSS_WARM / 1024)) MiB, at the end $((RSS_END / 1024)) MiB; QoS 1 lost: $lost"
if [ "$lost" -ne 0 ] || [ "$RSS_END" -gt "$limit" ]; then
    echo "soak.sh: FAILED (lost QoS 1 or RSS grew past $((limit / 1024)) MiB)" >&2
    exit 1
fi
echo "soak.sh: passed ($MINUTES minutes, results in $OUT)"
