#!/usr/bin/env bash
# Steady incremental rounds of one file, several builds of `examples/sync`
# and `rsync -a --inplace --no-whole-file` taking turns in the same minutes
# (an A/B on a noisy disk: each round of the loop runs every contender once).
# Each round first rewrites 1% of the file's 4 KiB pages in place. The page
# cache is kept (a live database's files are in memory): this measures CPU,
# not the disk; COLD=1 drops the caches before each contender's round
# instead (the disk's reads then count). bench/mover_pages.sh measures
# cold and warm rounds of one build against rsync.
# Usage: bench/mover_steady_ab.sh RUNS SYNC_BIN...   (SIZE_MIB, default 128;
#   NAME, default app.db; WORK, default /var/tmp/daffe-bench-steady; COLD)
# Prints per contender: the median wall time (and each run's), and for the
# mover builds the median scan/plan/fetch/apply/verify/total ms of --json.
set -euo pipefail
RUNS=$1; shift
NAME=${NAME:-app.db}; SIZE_MIB=${SIZE_MIB:-128}
W=${WORK:-/var/tmp/daffe-bench-steady}
rm -rf "$W"; mkdir -p "$W"; cd "$W"
python3 - pristine "$SIZE_MIB" <<'PY'
import random, sys
rng = random.Random(1)
with open(sys.argv[1], "wb") as f:
    for _ in range(int(sys.argv[2])):
        f.write(rng.randbytes(1 << 20))
PY
rewrite() {
  python3 - "$1" <<'PY'
import os, random, sys
fd = os.open(sys.argv[1], os.O_RDWR); n = os.fstat(fd).st_size // 4096
for i in random.sample(range(n), n // 100):
    os.pwrite(fd, os.urandom(4096), i * 4096)
os.close(fd)
PY
}
# Each contender: its own source and destination, past its first round and
# its first rewrite (where a file without a database name switches class).
i=0
for b in "$@" rsync; do
  i=$((i + 1)); mkdir -p "src$i"; cp pristine "src$i/$NAME"
  if [ "$b" = rsync ]; then rsync -a "src$i/" "dst$i/"; else "$b" "src$i" "dst$i" > /dev/null; fi
  rewrite "src$i/$NAME"; sleep 1
  if [ "$b" = rsync ]; then rsync -a --inplace --no-whole-file "src$i/" "dst$i/"; else "$b" "src$i" "dst$i" > /dev/null; fi
done
for _ in $(seq "$RUNS"); do
  i=0
  for b in "$@" rsync; do
    i=$((i + 1)); rewrite "src$i/$NAME"; sync
    # rsync's quick check compares whole seconds: a rewrite within the
    # second of its last run would be skipped.
    sleep 1
    if [ -n "${COLD:-}" ]; then echo 3 > /proc/sys/vm/drop_caches; fi
    if [ "$b" = rsync ]; then
      /usr/bin/time -f %e -o t rsync -a --inplace --no-whole-file "src$i/" "dst$i/"
      echo "rsync $(cat t)"
    else
      /usr/bin/time -f %e -o t "$b" --json "src$i" "dst$i" > j.json
      echo "$i:$(basename "$b") $(cat t) $(jq -r '[.scan_ms,.plan_ms,.fetch_ms,.apply_ms,.verify_ms,.duration_ms]|map(tostring)|join(" ")' j.json)"
    fi
    cmp "src$i/$NAME" "dst$i/$NAME"
  done
done | python3 -c '
import sys, statistics as st, collections
d = collections.defaultdict(list)
for l in sys.stdin:
    f = l.split(); d[f[0]].append([float(x) for x in f[1:]])
for k, v in d.items():
    cols = list(zip(*v)); med = [st.median(c) for c in cols]
    runs = " ".join("%.2f" % x for x in cols[0])
    phases = (" scan/plan/fetch/apply/verify/total ms " + " ".join("%d" % x for x in med[1:])) if len(med) > 1 else ""
    print(f"{k} wall {med[0]:.3f} s ({runs}){phases}")
'
