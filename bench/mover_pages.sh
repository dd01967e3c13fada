#!/usr/bin/env bash
# Page rewrites in a file with no database name (issue 11, item 5): a
# SIZE_MIB (default 128) MiB file named data.bin, 1% of its 4 KiB pages
# rewritten in place, synced locally by daffe's mover and by rsync.
# NAME=app.db names the file (a database name: page-sized chunks from the
# first transfer on, where data.bin gets them from its first rewrite).
# Usage: bench/mover_pages.sh [WORKDIR]   (root: drops caches before each run)
#   SYNC_BIN=PATH  use this build of examples/sync instead of building one
#   DAFFE_BIN=PATH the file lives in a `dir` volume of a `daffe serve` started
#                  here, and "mover" is `daffe sync` of the volume's directory,
#                  which asks the daemon where the file was written; a second
#                  `daffe sync` with no daemon to ask ("mover, no tracker")
#                  runs beside it, into its own destination
#   WARM=1         keep the page cache between runs (only `sync`): the files
#                  of a live database are in memory; by default every run
#                  starts with the caches dropped (bench/mover_steady_ab.sh:
#                  several builds' steady rounds in turn, warm)
#
# Per run (RUNS, default 3; medians printed):
#  - first transfer into an empty destination: mover vs `rsync -a`
#  - two incremental rounds, each after its own 1% rewrite (the first is
#    where the mover switches the file to page-sized chunks; the second is
#    the steady state): mover vs `rsync -a --inplace
#    --no-whole-file` and plain `rsync -a --no-whole-file` (time, and bytes:
#    the mover's bytes fetched vs rsync's "Total bytes sent", and bytes
#    written at the destination vs rsync's "Literal data")
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/var/tmp/daffe-bench-pages}
SIZE_MIB=${SIZE_MIB:-128}
NAME=${NAME:-data.bin}
RUNS=${RUNS:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/daffe-target-mover}
# SYNC_BIN: a prebuilt `examples/sync` (an A/B of two builds); else built here.
if [ -n "${SYNC_BIN:-}" ]; then
  SYNC=$SYNC_BIN
elif [ -z "${DAFFE_BIN:-}" ]; then
  cargo build --release -q -p mover --example sync
  SYNC=$CARGO_TARGET_DIR/release/examples/sync
fi
mkdir -p "$W"; R=$W/results; rm -rf "$R"; mkdir -p "$R"
SRC=$W/src
if [ -n "${DAFFE_BIN:-}" ]; then
  # The file in a dir volume: the daemon traces where it is written.
  pkill -f "serve --socket $W/plugin.sock" || true
  rm -rf "$W/vols" "$W/plugin.sock" "$W/control.sock"
  "$DAFFE_BIN" serve --socket "$W/plugin.sock" --control-socket "$W/control.sock" \
    --data-root "$W/vols" 2> "$R/serve.log" &
  SERVE=$!
  trap 'kill $SERVE 2>/dev/null || true' EXIT
  for _ in $(seq 100); do [ -S "$W/control.sock" ] && break; sleep 0.1; done
  out=$(curl -sS -0 --unix-socket "$W/plugin.sock" -X POST -d '{"Name":"pages"}' http://daffe/VolumeDriver.Create)
  [ "$(jq -r '.Err // ""' <<<"$out")" = "" ] || { echo "create: $out" >&2; exit 1; }
  SRC=$(DAFFE_CONTROL_SOCKET=$W/control.sock "$DAFFE_BIN" volume inspect pages --json | jq -r .mountpoint)
  SYNC="env DAFFE_CONTROL_SOCKET=$W/control.sock $DAFFE_BIN sync"
  PLAIN="env DAFFE_CONTROL_SOCKET=$W/no-daemon.sock $DAFFE_BIN sync"
  echo "== daffe sync of the dir volume's directory $SRC (daemon: $DAFFE_BIN)"
fi
if [ -n "${WARM:-}" ]; then
  drop() { sync; }
  CACHES="page cache kept (WARM=1)"
else
  drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
  CACHES="caches dropped before every run"
fi
t() { local out=$1; shift; /usr/bin/time -f "%e" -o "$out" "$@"; }
python3 - "$W/pristine.bin" "$SIZE_MIB" <<'PY'
import os, random, sys
p, mib = sys.argv[1], int(sys.argv[2])
if not (os.path.exists(p) and os.path.getsize(p) == mib << 20):
    rng = random.Random(1)
    with open(p, "wb") as f:
        for _ in range(mib):
            f.write(rng.randbytes(1 << 20))
PY
echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); ${SIZE_MIB} MiB $NAME, 1% pages; $CACHES"
for run in $(seq 1 "$RUNS"); do
  rm -rf "$W/ours" "$W/.ours.daffe-state" "$W/plain" "$W/.plain.daffe-state" "$W/rsi" "$W/rsp"
  [ -n "${DAFFE_BIN:-}" ] || { rm -rf "$SRC"; mkdir -p "$SRC"; }
  rm -f "$SRC/$NAME"; cp "$W/pristine.bin" "$SRC/$NAME"
  sleep 2  # out of the racy-timestamp window
  drop; t "$R/first-ours-$run" $SYNC --json "$SRC" "$W/ours" > "$R/first-ours-$run.json"
  [ -z "${PLAIN:-}" ] || { drop; $PLAIN --json "$SRC" "$W/plain" > /dev/null; }
  drop; t "$R/first-rsync-$run" rsync -a "$SRC/" "$W/rsi/"
  cp -a "$W/rsi" "$W/rsp"
  # Two rewrite rounds: in the first the mover sees the write pattern
  # (same inode and size, new mtime) and switches the file to page-sized
  # chunks, so no chunk id matches that once; the second is the steady state.
  for k in 1 2; do
    python3 - "$SRC/$NAME" "$((run * 10 + k))" <<'PY'
import os, random, sys
p, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(100 + seed)
pages = os.path.getsize(p) // 4096
with open(p, "r+b") as f:
    for pg in rng.sample(range(pages), pages // 100):
        f.seek(pg * 4096); f.write(rng.randbytes(4096))
PY
    sleep 2
    drop; t "$R/incr$k-ours-$run" $SYNC --json "$SRC" "$W/ours" > "$R/incr$k-ours-$run.json"
    if [ -n "${PLAIN:-}" ]; then
      drop; t "$R/incr$k-plain-$run" $PLAIN --json "$SRC" "$W/plain" > "$R/incr$k-plain-$run.json"
      cmp "$SRC/$NAME" "$W/plain/$NAME"
    fi
    drop; t "$R/incr$k-rsi-$run" rsync -a --inplace --no-whole-file --stats "$SRC/" "$W/rsi/" > "$R/incr$k-rsi-$run.txt"
    drop; t "$R/incr$k-rsp-$run" rsync -a --no-whole-file --stats "$SRC/" "$W/rsp/" > "$R/incr$k-rsp-$run.txt"
    cmp "$SRC/$NAME" "$W/ours/$NAME"
    cmp "$SRC/$NAME" "$W/rsi/$NAME"
  done
done
python3 - "$R" "$RUNS" "$NAME" <<'PY'
import json, re, statistics as st, sys
R, n, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tm = lambda k: st.median(float(open(f"{R}/{k}-{i}").read().split()[-1]) for i in range(1, n + 1))
stat = lambda k, what: st.median(int(re.search(what + r": ([\d,]+)", open(f"{R}/{k}-{i}.txt").read()).group(1).replace(",", "")) for i in range(1, n + 1))
sent = lambda k: stat(k, "Total bytes sent")
fo, fr = tm("first-ours"), tm("first-rsync")
M = 2**20
print("| what | measured | target |\n|---|---|---|")
print(f"| first transfer: mover / rsync -a time | {fo/fr:.2f} ({fo:.2f}s vs {fr:.2f}s) | <= 1.05 |")
first = "incremental 1 (class switch)" if name == "data.bin" else "incremental 1"
for k, what in ((1, first), (2, "incremental 2 (steady)")):
    ours = [json.load(open(f"{R}/incr{k}-ours-{i}.json")) for i in range(1, n + 1)]
    fetched = st.median(o["bytes_fetched"] for o in ours)
    written = st.median(o["bytes_written"] for o in ours)
    io, ii, ip = tm(f"incr{k}-ours"), tm(f"incr{k}-rsi"), tm(f"incr{k}-rsp")
    si, sp = sent(f"incr{k}-rsi"), sent(f"incr{k}-rsp")
    print(f"| {what}: mover / rsync --inplace --no-whole-file time | {io/ii:.2f} ({io:.2f}s vs {ii:.2f}s) | <= 0.5 |")
    print(f"| {what}: mover / rsync --no-whole-file time | {io/ip:.2f} ({io:.2f}s vs {ip:.2f}s) | <= 0.5 |")
    print(f"| {what}: mover fetched / rsync --inplace sent | {fetched/si:.2f} ({fetched/M:.2f} MiB vs {si/M:.2f} MiB; plain rsync sent {sp/M:.2f} MiB) | <= 1 |")
    # What lands at the destination: rsync --inplace writes its literal
    # data (blocks it found nowhere in the old file) and leaves matched
    # blocks in place.
    li = stat(f"incr{k}-rsi", "Literal data")
    print(f"| {what}: mover bytes written at the destination / rsync --inplace literal data | {written/li:.2f} ({written/M:.2f} MiB vs {li/M:.2f} MiB) | - |")
    print(f"| {what}: mover bytes read and hashed at the source | {st.median(o['bytes_hashed'] for o in ours)/M:.2f} MiB | - |")
    try:
        ipl = tm(f"incr{k}-plain")
        print(f"| {what}: mover, no tracker / rsync --inplace --no-whole-file time | {ipl/ii:.2f} ({ipl:.2f}s vs {ii:.2f}s) | - |")
    except FileNotFoundError:
        pass
PY
