#!/usr/bin/env bash
# Runs the whole test suite as CI does: every crate of the workspace, every
# target (unit, integration and end-to-end tests; benches run once in test
# mode).
#
# The end-to-end tests in tests/e2e_mosquitto_clients.rs and tests/passwd.rs
# drive Eclipse Mosquitto's command-line tools (mosquitto_pub, mosquitto_sub,
# mosquitto_passwd), tests/e2e_bridge.rs its broker (mosquitto, in /usr/sbin),
# tests/e2e_cluster.rs starts NATS servers (nats-server, Debian's package),
# and they fail loudly when these are missing, so
# this script installs them first when it can (root with apt-get); likewise
# Paho's Python client (pip) and MQTT.js (npm ci in tests/mqttjs). Idempotent:
# nothing is installed when the tools are already there. Quiet on success
# apart from cargo's own output. Extra arguments go to `cargo test`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
for tool in mosquitto_pub mosquitto_sub mosquitto_passwd stdbuf; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[[ -x /usr/sbin/mosquitto ]] || command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
[[ -x /usr/sbin/nats-server ]] || command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)

if ((${#missing[@]} > 0)); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends mosquitto mosquitto-clients nats-server coreutils >/dev/null
    else
        echo "scripts/test.sh: missing ${missing[*]}; install them first," \
            "e.g. sudo apt-get install -y mosquitto mosquitto-clients nats-server" >&2
        exit 1
    fi
fi

# Paho's Python client (MQTT 5) drives tests/e2e_paho.rs.
if ! python3 -c 'import paho.mqtt, sys; sys.exit(0 if paho.mqtt.__version__.startswith("2") else 1)' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check 'paho-mqtt>=2,<3'
fi

# Prometheus's Python client parses /metrics in tests/e2e_metrics.rs, as a
# Prometheus server would.
if ! python3 -c 'import prometheus_client.parser' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check 'prometheus-client>=0.17,<1'
fi

# MQTT.js (npm `mqtt`, pinned by tests/mqttjs/package-lock.json) drives
# tests/e2e_interop.rs. `npm ci` when node_modules is missing or was
# installed from another lock file: a copy of the lock it was installed
# from is kept in node_modules as a stamp.
mqttjs=tests/mqttjs
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "scripts/test.sh: node and npm are missing; tests/e2e_interop.rs needs" \
        "Node 20 or later with npm" >&2
    exit 1
fi
if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'; then
    echo "scripts/test.sh: node $(node --version) is too old; tests/e2e_interop.rs" \
        "needs Node 20 or later" >&2
    exit 1
fi
if ! cmp -s "$mqttjs/package-lock.json" "$mqttjs/node_modules/.ringmq-installed-lock"; then
    (cd "$mqttjs" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    cp "$mqttjs/package-lock.json" "$mqttjs/node_modules/.ringmq-installed-lock"
fi

# The protocol core (proto/, crate ringmq-proto) stays pure by construction:
# its Cargo.toml has no runtime, socket or thread crate, and
# proto/tests/purity.rs checks that list and its sources for std I/O, clocks
# and threads as part of the run below.

exec cargo test --workspace --all-targets "$@"
