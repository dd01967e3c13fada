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
# What it does not cover yet: kills between two journal writes picked by a
# failpoint (here the moment is random).
set -euo pipefail

if [ "${1:-}" = plugin ]; then
    cd "$(dirname "$0")/.."
    export DAFFE_PLUGIN_TORTURE=${2:-1000}
    export DAFFE_BIN=${DAFFE:-${CARGO_TARGET_DIR:-target}/debug/daffe}
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
for n in $(seq 1 "$ITER"); do
    churn "$n"
    "$DAFFE" sync --json "$SRC" "$DST" >/dev/null 2>"$DIR/last.err" &
    pid=$!
    # 20 ms to ~2.5 s (a 64 MB sync takes ~2 s here): early (scan, manifest),
    # mid-fetch, at commit, in apply, or after it finished.
    sleep "$(awk -v r=$RANDOM 'BEGIN { printf "%.3f", 0.02 + (r % 2500) / 1000 }')"
    if kill -9 "$pid" 2>/dev/null; then killed=$((killed + 1)); else finished=$((finished + 1)); fi
    wait "$pid" 2>/dev/null || true
done

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
echo "ok: $ITER runs ($killed killed by SIGKILL, $finished finished first), ${MB} MB tree," \
    "identical after the last run, nothing re-fetched by a rerun; $(($(date +%s) - t0)) s"
[ "${KEEP:-0}" = 1 ] || rm -rf "$DIR"
