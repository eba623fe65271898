# Sourced by the benchmark and soak scripts: a log line, the processes a
# script started (stopped on exit), and waiting for a port to open.

log() { printf '\n== %s\n' "$*" >&2; }

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT INT TERM

# wait_for_port PORT NAME LOG: fails with the process's log if PORT does not
# open within 10 s.
wait_for_port() {
    local port=$1 name=$2 log=$3
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return
        fi
        sleep 0.05
    done
    echo "$(basename "$0"): $name did not open port $port; its log:" >&2
    cat "$log" >&2
    exit 1
}
