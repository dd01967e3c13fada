#!/usr/bin/env bash
# First transfers of one file into an empty destination, several builds of
# `examples/sync`, `rsync -a` and `rsync -a && sync` taking turns in the same
# minutes (an A/B on a noisy disk: each round of the loop runs every
# contender once, caches dropped before each). A mover round ends with its
# data durable; plain rsync leaves it in the page cache, hence the third
# contender. bench/mover_pages.sh measures one build against rsync.
# Usage: bench/mover_first_ab.sh RUNS SYNC_BIN...   (root: drops caches;
#   SIZE_MIB, default 128; NAME, default app.db; WORK, default
#   /var/tmp/daffe-bench-first)
# Prints per contender: the median wall time (and each run's), its ratio to
# `rsync -a`'s median, and for the mover builds the median
# scan/plan/fetch/verify/total ms of --json and the bytes the scan copied.
set -euo pipefail
RUNS=$1; shift
NAME=${NAME:-app.db}; SIZE_MIB=${SIZE_MIB:-128}
W=${WORK:-/var/tmp/daffe-bench-first}
rm -rf "$W"; mkdir -p "$W/src"; cd "$W"
python3 - "src/$NAME" "$SIZE_MIB" <<'PY'
import random, sys
rng = random.Random(1)
with open(sys.argv[1], "wb") as f:
    for _ in range(int(sys.argv[2])):
        f.write(rng.randbytes(1 << 20))
PY
# Out of the racy-timestamp window (a file written in the last 2 s is
# fetched and checked, not copied by the scan: mover/DESIGN.md).
sleep 2.5
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
t() { local s e; s=$(date +%s.%N); "$@" > out.json; e=$(date +%s.%N); echo "$e - $s" | bc; }
for run in $(seq "$RUNS"); do
  i=0
  for b in "$@" rsync rsync-sync; do
    i=$((i + 1)); rm -rf "dst$i" ".dst$i.daffe-state"; drop
    case $b in
      rsync) t rsync -a src/ "dst$i/" >> "times$i" ;;
      rsync-sync) t sh -c "rsync -a src/ dst$i/ && sync" >> "times$i" ;;
      *) t "$b" --json src "dst$i" >> "times$i"; cp out.json "run$i-$run.json" ;;
    esac
    cmp -s "src/$NAME" "dst$i/$NAME" || { echo "contender $i: copy differs" >&2; exit 1; }
  done
done
python3 - "$RUNS" "$@" <<'PY'
import json, statistics, sys
runs, bins = int(sys.argv[1]), sys.argv[2:] + ["rsync -a", "rsync -a && sync"]
med = lambda xs: statistics.median(xs)
times = {i: [float(x) for x in open(f"times{i}").read().split()] for i in range(1, len(bins) + 1)}
base = med(times[len(bins) - 1])
for i, b in enumerate(bins, 1):
    t = times[i]
    line = f"{b}: {med(t):.3f}s (x{med(t) / base:.2f} of rsync -a) [{' '.join(f'{x:.2f}' for x in t)}]"
    if i <= len(bins) - 2:
        js = [json.load(open(f"run{i}-{r}.json")) for r in range(1, runs + 1)]
        ms = lambda k: med([j.get(k, 0) for j in js])
        line += (f" scan {ms('scan_ms')} plan {ms('plan_ms')} fetch {ms('fetch_ms')}"
                 f" verify {ms('verify_ms')} total {ms('duration_ms')} ms;"
                 f" scan-copied {ms('bytes_scan_copied') / 2**20:.0f} MiB")
    print(line)
PY
