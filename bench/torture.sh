#!/usr/bin/env bash
# Crash torture (issue 12, "Crash torture").
#
#   bench/torture.sh [ITERATIONS] [MB]      the mover's receiver (below)
#   bench/torture.sh plugin [KILLS]         the plugin (default 1000 kills)
#
# Plugin: runs the e2e test hardening_plugin_torture with KILLS kill -9s of
# `daffe serve` while three clients drive Create/Mount/Unmount/Remove on its
# VolumeDriver socket (block and dir volumes), checking after each restart
# that the state reopens, every answered Create is listed and nothing
# answered as removed is, no half-made volume is listed, mount counts match
# the answered calls, and the kernel's mounts and loop devices match the
# counts (tests/hardening_plugin_torture.rs says exactly what). Needs root,
# dockerd's test image tools, and the e2e build (`cargo test --workspace
# --no-run`). DAFFE_TORTURE_SEED replays a run.
#
# Mover: `daffe sync SRC DST` is killed with SIGKILL at a random moment,
# again and again, while the source changes between runs; then one run is
# let finish and DST must be byte-identical to SRC, with its state
# reopening cleanly (a second sync finds nothing to do).
#
# Environment: DAFFE (default target/debug/daffe), TORTURE_DIR (default a
# mktemp dir; removed at the end unless KEEP=1).
# Every other run crashes at a journal write instead of being killed
# (DAFFE_FAILPOINT, mover/src/failpoint.rs): right after a journal flush, or
# in one with half its records written (a torn tail). The daffe binary must
# have the `testing` feature (the test build does; a release build does not).
set -euo pipefail

if [ "${1:-}" = plugin ]; then
    cd "$(dirname "$0")/.."
    export DAFFE_PLUGIN_TORTURE=${2:-1000}
    # Absolute: cargo runs the test binary from tests/, not from here.
    DAFFE_BIN=$(realpath "${DAFFE:-${CARGO_TARGET_DIR:-target}/debug/daffe}")
    export DAFFE_BIN
    export DAFFE_TEST_IMAGE=${DAFFE_TEST_IMAGE:-daffe-test/busybox:latest}
    exec cargo test --locked --workspace --test e2e -- --exact \
        hardening_plugin_torture::kill_9_during_create_mount_unmount_remove_keeps_the_state_true \
        --nocapture
fi

ITER=${1:-200}
MB=${2:-256}
DAFFE=${DAFFE:-$(dirname "$0")/../target/debug/daffe}
DIR=${TORTURE_DIR:-$(mktemp -d /var/tmp/daffe-torture.XXXXXX)}
SRC=$DIR/src
DST=$DIR/dst
mkdir -p "$SRC"

# A tree of MB megabytes: 32 files of MB/32 MiB, plus small files and dirs.
make_tree() {
    local per=$((MB / 32))
    for i in $(seq 1 32); do
        head -c $((per * 1048576)) /dev/urandom >"$SRC/big$i"
    done
    for d in $(seq 1 20); do
        mkdir -p "$SRC/d$d/e"
        for f in $(seq 1 50); do echo "$d/$f" >"$SRC/d$d/e/f$f"; done
    done
}

# Changes between runs: rewrite part of a big file, add, delete, rename.
churn() {
    local n=$1 f=$((RANDOM % 32 + 1))
    dd if=/dev/urandom of="$SRC/big$f" bs=1M count=2 seek=$((RANDOM % (MB / 32 > 2 ? MB / 32 - 2 : 1))) \
        conv=notrunc status=none
    echo "$n" >"$SRC/new$n"
    rm -f "$SRC/new$((n - 3))"
    [ -e "$SRC/d$((n % 20 + 1))/e/f1" ] && mv "$SRC/d$((n % 20 + 1))/e/f1" "$SRC/d$((n % 20 + 1))/e/g$n"
    true
}

make_tree
killed=0
finished=0
t0=$(date +%s)
# The kill lands at a uniform moment within a run's length: window_ms, at
# first 2.5 s (the first copy of the tree takes longer: it is cut early and
# resumed), then the length of the last run that finished before its kill.
# A fixed 20 ms-2.5 s window let most incremental runs (~0.1-0.7 s at 256 MB
# here) finish first: 25 kills in 200 runs.
window_ms=2500
# Every other run crashes at a journal write instead (mover/src/failpoint.rs,
# in builds with the `testing` feature such as the test build): right after
# its 1st-3rd journal flush (between two journal writes), or in it with only
# half of the buffered records written (a torn tail).
crashed=0
asked=0
for n in $(seq 1 "$ITER"); do
    churn "$n"
    case $((n % 4)) in
        1) fp="journal:$((1 + RANDOM % 3))" ;;
        3) fp="journal:$((1 + RANDOM % 3)):torn" ;;
        *) fp="" ;;
    esac
    if [ -n "$fp" ]; then
        asked=$((asked + 1))
        rc=0
        # Waited for by a subshell whose stderr is dropped (bash's "Aborted"
        # line); the `exit` keeps bash from exec-ing the command in it.
        (DAFFE_FAILPOINT=$fp "$DAFFE" sync --json "$SRC" "$DST" >/dev/null 2>"$DIR/last.err"; exit $?) 2>/dev/null || rc=$?
        case $rc in
            0) finished=$((finished + 1)) ;;
            134) crashed=$((crashed + 1)) ;;
            *) echo "FAIL: run $n ($fp) exited $rc: $(tail -n 3 "$DIR/last.err")" >&2; exit 1 ;;
        esac
        continue
    fi
    start_ns=$(date +%s%N)
    "$DAFFE" sync --json "$SRC" "$DST" >/dev/null 2>"$DIR/last.err" &
    pid=$!
    delay_ms=$((10 + (RANDOM * 32768 + RANDOM) % window_ms))
    sleep "$(awk -v ms=$delay_ms 'BEGIN { printf "%.3f", ms / 1000 }')"
    if kill -9 "$pid" 2>/dev/null; then
        killed=$((killed + 1))
        wait "$pid" 2>/dev/null || true
    else
        finished=$((finished + 1))
        wait "$pid" 2>/dev/null || true
        window_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
        [ "$window_ms" -ge 20 ] || window_ms=20
    fi
done

if [ "$asked" -gt 0 ] && [ "$crashed" -eq 0 ]; then
    echo "FAIL: no journal crash point fired in $asked runs (a daffe built without the testing feature?)" >&2
    exit 1
fi

# The last run finishes; DST must equal SRC, and the state must reopen.
"$DAFFE" sync --json "$SRC" "$DST" >"$DIR/final.json"
if ! diff -r --no-dereference "$SRC" "$DST" >"$DIR/diff.txt"; then
    echo "FAIL: DST differs from SRC after $ITER kills (see $DIR/diff.txt)" >&2
    exit 1
fi
"$DAFFE" sync --json "$SRC" "$DST" >"$DIR/again.json"
fetched=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); r=d.get("rounds", d); print(r.get("bytes_fetched", 0))' "$DIR/again.json")
if [ "$fetched" != 0 ]; then
    echo "FAIL: an unchanged source re-fetched $fetched bytes" >&2
    exit 1
fi
echo "ok: $ITER runs ($killed killed by SIGKILL, $crashed crashed at a journal write, $finished finished first; last kill window ${window_ms} ms), ${MB} MB tree," \
    "identical after the last run, nothing re-fetched by a rerun; $(($(date +%s) - t0)) s"
[ "${KEEP:-0}" = 1 ] || rm -rf "$DIR"
