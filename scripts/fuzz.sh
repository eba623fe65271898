#!/usr/bin/env bash
# Coverage-guided fuzzing of every untrusted input with AFL++ (cargo-afl, on
# the stable toolchain), for a bounded time; fails on any crash.
#
#   scripts/fuzz.sh              # 60 s in all, split between the targets (CI)
#   scripts/fuzz.sh 36000        # ten hours
#   TARGETS="packet_v5 framer" scripts/fuzz.sh 600
#
# The targets are in fuzz/src/targets.rs, their seeds in fuzz/corpus/<target>/
# (made by fuzz/seeds.py), the MQTT tokens in fuzz/mqtt.dict. Each run starts from the seeds plus what earlier
# runs on this machine found (fuzz/out/<target>/queue). A crashing input is
# copied to tests/fuzz_crashes/<target>/, which the normal test run replays
# (tests/fuzz_regressions.rs): fix the bug, keep the file. Per target the
# script prints executions, paths found and edge coverage from AFL's stats.
set -euo pipefail

cd "$(dirname "$0")/.."
TOTAL=${1:-60}
ALL="packet_v311 packet_v5 framer session topics config password_file acl_file journal log_file websocket"
TARGETS=${TARGETS:-$ALL}
read -r -a LIST <<<"$TARGETS"
EACH=$((TOTAL / ${#LIST[@]}))
[ "$EACH" -lt 5 ] && EACH=5

if ! command -v cargo-afl >/dev/null; then
    echo "== installing cargo-afl from crates.io" >&2
    cargo install --locked cargo-afl
fi
# The AFL++ runtime cargo-afl builds once per toolchain (a no-op after that).
cargo afl config --build >/dev/null 2>&1 || true

echo "== building the fuzz targets with AFL instrumentation (release, debug assertions on)" >&2
(cd fuzz && cargo afl build --release --bins)

# No core_pattern handler, no CPU governor, no terminal UI: this runs in CI.
# No CmpLog: it needs a second, differently instrumented build of each target.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1
export AFL_NO_CMPLOG=1

stat() { awk -F' *: *' -v k="$2" '$1 == k { print $2 }' "$1/fuzzer_stats" 2>/dev/null; }

failed=0
for target in "${LIST[@]}"; do
    out=fuzz/out/$target
    mkdir -p "$out"
    input=fuzz/corpus/$target
    # Resume from what an earlier run found, with the seeds alongside.
    if [ -d "$out/default/queue" ]; then
        input=$(mktemp -d)
        cp fuzz/corpus/"$target"/* "$input"/
        find "$out/default/queue" -maxdepth 1 -type f -name 'id:*' -exec cp {} "$input"/ \;
        rm -rf "$out/default"
    fi
    dict=()
    case $target in
    packet_* | framer | session | websocket) dict=(-x fuzz/mqtt.dict) ;;
    esac
    echo "== $target: ${EACH}s" >&2
    # -t: a generous per-input limit, so a slow, shared machine reports no hangs.
    cargo afl fuzz -i "$input" -o "$out" -V "$EACH" -t 2000 -m none "${dict[@]}" \
        "fuzz/target/release/$target" 2>&1 | tail -n 200 >"$out/afl.log" || {
        echo "afl-fuzz failed for $target; its log:" >&2
        tail -30 "$out/afl.log" >&2
        exit 1
    }
    [ "$input" != "fuzz/corpus/$target" ] && rm -rf "$input"
    stats=$out/default
    printf '%-14s execs %-10s paths %-6s edges %-8s crashes %-3s hangs %s\n' "$target" \
        "$(stat "$stats" execs_done)" "$(stat "$stats" corpus_count)" \
        "$(stat "$stats" bitmap_cvg)" "$(stat "$stats" saved_crashes)" "$(stat "$stats" saved_hangs)"
    for crash in "$stats"/crashes/id:*; do
        [ -e "$crash" ] || continue
        keep=tests/fuzz_crashes/$target
        mkdir -p "$keep"
        cp "$crash" "$keep/crash-$(sha1sum "$crash" | cut -c1-16)"
        failed=1
    done
done

if [ "$failed" -ne 0 ]; then
    echo "fuzz.sh: crashes found; saved under tests/fuzz_crashes/ (replay: cargo test --test fuzz_regressions)" >&2
    exit 1
fi
echo "fuzz.sh: no crash in ${#LIST[@]} targets, ${EACH}s each" >&2
