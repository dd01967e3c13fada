#!/usr/bin/env bash
# Mover benchmarks, side by side with rsync and casync, printed as ratios.
# Usage: bench/mover.sh [WORKDIR]   (default /var/tmp/daffe-bench; needs root
# for drop_caches; ~6 GiB of disk, 4 GiB of it sparse).
#
# Steps: build release; generate the corpus (bench/mover_corpus.py); then
#  1. chunk+hash throughput in memory (one core)
#  2. chunking the 1 GiB db file: daffe's scanner vs `casync make`
#  3. first sync into an empty destination vs `rsync -aHAXS`
#  4. unchanged round vs rsync's no-change run
#  5. incremental round (1% 4 KiB page rewrites in the db, +10 MiB log,
#     +100 small files) vs `rsync -aHAXS --no-whole-file`: bytes and time
#  6. peak RSS of the first sync (/usr/bin/time -v)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/var/tmp/daffe-bench}
RUNS=${RUNS:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/daffe-target-mover}
cargo build --release -q -p mover --example chunkbench --example sync
# The engine under test: `daffe sync` by default; DAFFE_SYNC=example uses the
# mover's example binary (same library and JSON stats, no AWS SDK to build).
if [ "${DAFFE_SYNC:-daffe}" = example ]; then
  DAFFE_CMD="$CARGO_TARGET_DIR/release/examples/sync"
else
  cargo build --release -q -p daffe-plugin --bin daffe
  DAFFE_CMD="$CARGO_TARGET_DIR/release/daffe sync"
fi
CHB=$CARGO_TARGET_DIR/release/examples/chunkbench
mkdir -p "$W"
if [ ! -f "$W/src/.complete" ]; then
  rm -rf "$W/src"
  python3 bench/mover_corpus.py make "$W/src"
  touch "$W/src/.complete"
fi
SRC=$W/src
R=$W/results; rm -rf "$R"; mkdir -p "$R"
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
fresh() { rm -rf "$W/ours" "$W/.ours.daffe-state" "$W/rs"; sync; }
# Wait out the racy-timestamp window after writing the corpus.
sleep 2

echo "== machine: $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== 1. chunk+hash in memory (1 GiB, one core)"
$CHB mem 1024 | tee "$R/mem.json"

echo "== 2. chunking the 1 GiB db file: daffe vs casync make"
# Caches dropped before each run: both tools read the file from disk (a bare
# `sync` let one run wait on writeback from the previous step).
hyperfine -N --runs "$RUNS" --export-json "$R/chunk.json" \
  --prepare "bash -c 'sync; echo 3 > /proc/sys/vm/drop_caches'" \
  -n daffe "$CHB file $SRC/db/app.db" \
  -n casync "bash -c 'rm -rf $W/castr $W/db.caibx; casync make --store=$W/castr $W/db.caibx $SRC/db/app.db'"

echo "== 3. first sync into an empty destination"
hyperfine --runs "$RUNS" --export-json "$R/first.json" \
  --prepare "rm -rf $W/ours $W/.ours.daffe-state $W/rs; sync; echo 3 > /proc/sys/vm/drop_caches" \
  -n daffe "$DAFFE_CMD --json $SRC $W/ours > $R/first-ours.json" \
  -n rsync "rsync -aHAXS $SRC/ $W/rs/"

echo "== 6. peak RSS of the first sync"
fresh; drop
/usr/bin/time -v $DAFFE_CMD --json "$SRC" "$W/ours" > "$R/first-ours.json" 2> "$R/first-time.txt"
grep -E "Maximum resident|Elapsed" "$R/first-time.txt"
rsync -aHAXS "$SRC/" "$W/rs/"

echo "== 4. unchanged round"
hyperfine --warmup 1 --runs "$RUNS" --export-json "$R/unchanged.json" \
  -n daffe "$DAFFE_CMD --json $SRC $W/ours > $R/unchanged-ours.json" \
  -n rsync "rsync -aHAXS $SRC/ $W/rs/"

echo "== 5. incremental round"
cp --sparse=always "$SRC/db/app.db" "$W/app.db.orig"
python3 bench/mover_corpus.py mutate "$SRC"
sync
/usr/bin/time -f "%e" -o "$R/incr-rsync.time" rsync -aHAXS --no-whole-file --stats "$SRC/" "$W/rs/" > "$R/incr-rsync.txt"
sync
/usr/bin/time -f "%e" -o "$R/incr-ours.time" $DAFFE_CMD --json "$SRC" "$W/ours" > "$R/incr-ours.json"
# Restore the db and log so the corpus can be reused.
cp --sparse=always "$W/app.db.orig" "$SRC/db/app.db"; rm -f "$W/app.db.orig"
truncate -s $((256 << 20)) "$SRC/log/app.log"; rm -rf "$SRC/small/new"

python3 - "$R" <<'PY'
import json, re, sys
R = sys.argv[1]
def hf(name):
    d = json.load(open(f"{R}/{name}.json"))["results"]
    return {r["command"]: r["median"] for r in d}
mem = [json.loads(l) for l in open(f"{R}/mem.json")]
chunk, first, unch = hf("chunk"), hf("first"), hf("unchanged")
rs_txt = open(f"{R}/incr-rsync.txt").read()
rs_sent = int(re.search(r"Total bytes sent: ([\d,]+)", rs_txt).group(1).replace(",", ""))
ours = json.load(open(f"{R}/incr-ours.json"))
t_rs = float(open(f"{R}/incr-rsync.time").read().split()[-1])
t_ours = float(open(f"{R}/incr-ours.time").read().split()[-1])
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(f"{R}/first-time.txt").read()).group(1))
rows = [
    ("chunk+hash in memory, db class (GiB/s, 1 core)", f"{mem[0]['gib_per_s']:.2f}", ">= 1.5"),
    ("chunk+hash in memory, default class (GiB/s, 1 core)", f"{mem[1]['gib_per_s']:.2f}", ">= 1.5"),
    ("chunk 1 GiB file: casync / daffe time", f"{chunk['casync']/chunk['daffe']:.1f}x ({chunk['daffe']:.2f}s vs {chunk['casync']:.2f}s)", ">= 5x"),
    ("first sync: daffe / rsync time", f"{first['daffe']/first['rsync']:.2f} ({first['daffe']:.2f}s vs {first['rsync']:.2f}s)", "<= 1.1"),
    ("incremental: daffe fetched / rsync sent", f"{ours['bytes_fetched']/rs_sent:.2f} ({ours['bytes_fetched']/2**20:.1f} MiB vs {rs_sent/2**20:.1f} MiB; daffe wrote {ours['bytes_written']/2**20:.1f} MiB)", "<= 1"),
    ("incremental: daffe / rsync time", f"{t_ours/t_rs:.2f} ({t_ours:.2f}s vs {t_rs:.2f}s)", "<= 0.5"),
    ("unchanged round: daffe / rsync time", f"{unch['daffe']/unch['rsync']:.2f} ({unch['daffe']:.3f}s vs {unch['rsync']:.3f}s)", "<= 0.5"),
    ("peak RSS, first sync (MiB)", f"{rss/1024:.0f}", "<= 256"),
]
print("\n| what | measured | target |\n|---|---|---|")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]} |")
PY
