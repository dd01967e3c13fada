#!/usr/bin/env bash
# Page rewrites in a file with no database name (issue 11, item 5): a
# SIZE_MIB (default 128) MiB file named data.bin, 1% of its 4 KiB pages
# rewritten in place, synced locally by daffe's mover and by rsync.
# Usage: bench/mover_pages.sh [WORKDIR]   (root: drops caches before each run)
#   SYNC_BIN=PATH  use this build of examples/sync instead of building one
#
# Per run (RUNS, default 3; medians printed):
#  - first transfer into an empty destination: mover vs `rsync -a`
#  - two incremental rounds, each after its own 1% rewrite (the first is
#    where the mover switches the file to page-sized chunks; the second is
#    the steady state): mover vs `rsync -a --inplace
#    --no-whole-file` and plain `rsync -a --no-whole-file` (time, and bytes:
#    the mover's bytes fetched + written vs rsync's "Total bytes sent")
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/var/tmp/daffe-bench-pages}
SIZE_MIB=${SIZE_MIB:-128}
RUNS=${RUNS:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/daffe-target-mover}
# SYNC_BIN: a prebuilt `examples/sync` (an A/B of two builds); else built here.
if [ -n "${SYNC_BIN:-}" ]; then
  SYNC=$SYNC_BIN
else
  cargo build --release -q -p mover --example sync
  SYNC=$CARGO_TARGET_DIR/release/examples/sync
fi
mkdir -p "$W"; R=$W/results; rm -rf "$R"; mkdir -p "$R"
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
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
echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); ${SIZE_MIB} MiB data.bin, 1% pages"
for run in $(seq 1 "$RUNS"); do
  rm -rf "$W/src" "$W/ours" "$W/.ours.daffe-state" "$W/rsi" "$W/rsp"
  mkdir -p "$W/src"; cp "$W/pristine.bin" "$W/src/data.bin"
  sleep 2  # out of the racy-timestamp window
  drop; t "$R/first-ours-$run" "$SYNC" --json "$W/src" "$W/ours" > "$R/first-ours-$run.json"
  drop; t "$R/first-rsync-$run" rsync -a "$W/src/" "$W/rsi/"
  cp -a "$W/rsi" "$W/rsp"
  # Two rewrite rounds: in the first the mover sees the write pattern
  # (same inode and size, new mtime) and switches the file to page-sized
  # chunks, so no chunk id matches that once; the second is the steady state.
  for k in 1 2; do
    python3 - "$W/src/data.bin" "$((run * 10 + k))" <<'PY'
import os, random, sys
p, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(100 + seed)
pages = os.path.getsize(p) // 4096
with open(p, "r+b") as f:
    for pg in rng.sample(range(pages), pages // 100):
        f.seek(pg * 4096); f.write(rng.randbytes(4096))
PY
    sleep 2
    drop; t "$R/incr$k-ours-$run" "$SYNC" --json "$W/src" "$W/ours" > "$R/incr$k-ours-$run.json"
    drop; t "$R/incr$k-rsi-$run" rsync -a --inplace --no-whole-file --stats "$W/src/" "$W/rsi/" > "$R/incr$k-rsi-$run.txt"
    drop; t "$R/incr$k-rsp-$run" rsync -a --no-whole-file --stats "$W/src/" "$W/rsp/" > "$R/incr$k-rsp-$run.txt"
    cmp "$W/src/data.bin" "$W/ours/data.bin"
    cmp "$W/src/data.bin" "$W/rsi/data.bin"
  done
done
python3 - "$R" "$RUNS" <<'PY'
import json, re, statistics as st, sys
R, n = sys.argv[1], int(sys.argv[2])
tm = lambda k: st.median(float(open(f"{R}/{k}-{i}").read().split()[-1]) for i in range(1, n + 1))
sent = lambda k: st.median(int(re.search(r"Total bytes sent: ([\d,]+)", open(f"{R}/{k}-{i}.txt").read()).group(1).replace(",", "")) for i in range(1, n + 1))
fo, fr = tm("first-ours"), tm("first-rsync")
M = 2**20
print("| what | measured | target |\n|---|---|---|")
print(f"| first transfer: mover / rsync -a time | {fo/fr:.2f} ({fo:.2f}s vs {fr:.2f}s) | <= 1.05 |")
for k, what in ((1, "incremental 1 (class switch)"), (2, "incremental 2 (steady)")):
    ours = [json.load(open(f"{R}/incr{k}-ours-{i}.json")) for i in range(1, n + 1)]
    fetched = st.median(o["bytes_fetched"] for o in ours)
    written = st.median(o["bytes_written"] for o in ours)
    io, ii, ip = tm(f"incr{k}-ours"), tm(f"incr{k}-rsi"), tm(f"incr{k}-rsp")
    si, sp = sent(f"incr{k}-rsi"), sent(f"incr{k}-rsp")
    print(f"| {what}: mover / rsync --inplace --no-whole-file time | {io/ii:.2f} ({io:.2f}s vs {ii:.2f}s) | <= 0.5 |")
    print(f"| {what}: mover / rsync --no-whole-file time | {io/ip:.2f} ({io:.2f}s vs {ip:.2f}s) | <= 0.5 |")
    print(f"| {what}: mover fetched / rsync --inplace sent | {fetched/si:.2f} ({fetched/M:.2f} MiB vs {si/M:.2f} MiB; plain rsync sent {sp/M:.2f} MiB) | <= 1 |")
    print(f"| {what}: mover bytes written at the destination | {written/M:.2f} MiB | - |")
PY
