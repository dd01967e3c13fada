#!/usr/bin/env bash
# What a round's wire could shrink to (issue 11: the final round of a busy
# database is link-bound). PostgreSQL's pgbench_accounts under unthrottled
# pgbench, checkpointed every INTERVAL seconds (default 10, about a final
# round's span); for each interval, the 4 KiB blocks that changed, compressed
# with zstd level 1 in independent 4 KiB blocks (what a patch sends today),
# against the same blocks XORed with their previous version (a delta against
# what the receiver already holds). Also zstd levels 1-6 on the relation in
# 8 KiB blocks. Prints the sizes and ratios; no daffe involved.
# Usage: bench/pg_page_deltas.sh [WORKDIR]   (root; Debian's postgresql-15,
#   zstd, python3)   SCALE (default 30), CLIENTS (4), INTERVAL (10), WARM (30 s)
set -euo pipefail
W=${1:-/var/tmp/daffe-bench-pgdeltas}
SCALE=${SCALE:-30}
CLIENTS=${CLIENTS:-4}
INTERVAL=${INTERVAL:-10}
WARM=${WARM:-30}
PGBIN=/usr/lib/postgresql/15/bin
PORT=5498
asPG() { (cd / && setpriv --reuid postgres --regid postgres --init-groups -- env HOME=/ LC_ALL=C "$@"); }
rm -rf "$W"; mkdir -p "$W/run"; chown -R postgres "$W"
trap 'asPG $PGBIN/pg_ctl stop -w -m immediate -D "$W/pg" >/dev/null 2>&1 || true' EXIT
asPG $PGBIN/initdb --data-checksums --auth=trust --no-locale -E UTF8 -U postgres -D "$W/pg" >/dev/null
asPG $PGBIN/pg_ctl start -w -D "$W/pg" -l "$W/pg.log" -o "-c listen_addresses='' -k $W/run -p $PORT" >/dev/null
pg() { asPG $PGBIN/"$1" -h "$W/run" -p $PORT -U postgres "${@:2}"; }
pg pgbench -i -q -s "$SCALE" postgres 2>/dev/null
rel=$W/pg/$(pg psql -X -A -t -c "select pg_relation_filepath('pgbench_accounts')" postgres)
echo "== pgbench_accounts, scale $SCALE: $(stat -c %s "$rel") bytes ($rel)"
echo "== zstd levels on the relation, 8 KiB blocks"
for level in 1 3 6; do
  line=$(zstd -b$level -B8K "$rel" 2>&1 | tr '\r' '\n' | grep "MB/s, " | tail -1)
  echo "level $level: $(sed 's/^ *[^:]*: *//' <<<"$line")"
done
pg pgbench -n -c "$CLIENTS" -j 2 -T "$WARM" postgres >/dev/null 2>&1
for i in 0 1 2; do
  pg psql -X -q -c CHECKPOINT postgres
  cp "$rel" "$W/s$i"
  if [ $i -lt 2 ]; then pg pgbench -n -c "$CLIENTS" -j 2 -T "$INTERVAL" postgres 2>&1 | grep -E "^tps" || true; fi
done
python3 - "$W" <<'PY'
import sys
w = sys.argv[1]
for a_, b_ in (("s0", "s1"), ("s1", "s2")):
    with open(f"{w}/{a_}", "rb") as a, open(f"{w}/{b_}", "rb") as b, \
         open(f"{w}/new-{b_}", "wb") as new, open(f"{w}/xor-{b_}", "wb") as xor:
        same = changed = 0
        while block := b.read(4096):
            old = a.read(4096).ljust(len(block), b"\0")
            if old == block:
                same += 1
                continue
            changed += 1
            new.write(block)
            x = int.from_bytes(old, "little") ^ int.from_bytes(block, "little")
            xor.write(x.to_bytes(len(block), "little"))
    print(f"== interval {b_}: {changed} of {same + changed} blocks changed")
PY
for s in s1 s2; do
  for kind in new xor; do
    line=$(zstd -b1 -B4K "$W/$kind-$s" 2>&1 | tr '\r' '\n' | grep "MB/s, " | tail -1)
    echo "$s $kind: $(sed 's/^ *[^:]*: *//' <<<"$line")"
  done
done
rm -f "$W"/new-* "$W"/xor-* "$W"/s?
