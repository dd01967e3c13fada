#!/usr/bin/env bash
# What disturbs pgbench's latency on this machine, with no daffe at all
# (issue 11; BENCHMARKS.md "Issue 11, stop 32"): pgbench --rate 500 -c 4
# (scale 30) with PostgreSQL and pgbench on CPU 0, and one disturbance at a
# time for the middle 30 s of a 60 s run (CPU burners at nice 19, in another
# autogroup, with their autogroup niced, in a cpu.idle cgroup; a CHECKPOINT;
# a direct-I/O reader). Prints latency less schedule lag, during / outside.
# Usage: bench/latency_disturbances.sh [all | run NAME CMD]   (root; PostgreSQL
# 15 from Debian; cgroup v1 cpu controller for the cpu.idle case)
#   LAT_WORK=/var/tmp/daffe-lat   the database, a 1 GiB file, the outputs
set -euo pipefail
W=${LAT_WORK:-/var/tmp/daffe-lat}; PGBIN=/usr/lib/postgresql/15/bin; RUN=$W/run; D=$W/pg
as() { setpriv --reuid postgres --regid postgres --init-groups -- env HOME=/ LC_ALL=C "$@"; }
mkdir -p $RUN; chown postgres: $RUN $W
if [ ! -f $W/.init ]; then
  rm -rf $D; mkdir -p $D; chown postgres: $D
  (cd / && as $PGBIN/initdb --data-checksums --auth=trust --no-locale -E UTF8 -U postgres -D $D >/dev/null)
  (cd / && as $PGBIN/pg_ctl start -w -D $D -l $W/pg.log -o "-c listen_addresses='' -k $RUN -p 5432" >/dev/null)
  (cd / && as $PGBIN/pgbench -h $RUN -U postgres -i -q -s 30 postgres) 2>/dev/null
  touch $W/.init
else
  (cd / && as $PGBIN/pg_ctl start -w -D $D -l $W/pg.log -o "-c listen_addresses='' -k $RUN -p 5432" >/dev/null) || true
fi
echo "script autogroup: $(cat /proc/$$/autogroup); postmaster: $(cat /proc/$(head -1 $D/postmaster.pid)/autogroup)"
pids=$(pgrep -u postgres postgres | tr '\n' ' '); for p in $pids; do taskset -pc 0 $p >/dev/null; done
[ -s $W/big ] || dd if=/dev/urandom of=$W/big bs=1M count=1024 status=none
run() { # NAME CMD...
  local name=$1; shift
  (cd / && taskset -c 0 setpriv --reuid postgres --regid postgres --init-groups -- env HOME=/ $PGBIN/pgbench -h $RUN -U postgres -n -P 1 -c 4 -j 2 -T 60 --rate 500 postgres) > $W/$name.out 2>&1 &
  local b=$!
  sleep 15
  local t0=$(date +%s.%N)
  if [ $# -gt 0 ]; then timeout 30 bash -c "$*" >/dev/null 2>&1 || true; fi
  local t1=$(date +%s.%N)
  pkill -f "sha256sum /dev/zero" || true; pkill -f "iflag=direct" || true
  wait $b
  python3 - $W/$name.out "$name" <<'PY'
import re,sys
rows=[]
for l in open(sys.argv[1]):
    m=re.match(r"progress: ([\d.]+) s, ([\d.]+) tps, lat ([\d.]+) ms.*?(?:lag ([\d.]+) ms)?$", l.strip())
    if m:
        at,tps,lat,lag=m.groups(); rows.append((float(at),float(tps),float(lat)-float(lag or 0)))
base=[r[2] for r in rows if 5<=r[0]<15]+[r[2] for r in rows if r[0]>50]
mid=[r[2] for r in rows if 16<=r[0]<=45]
b=sum(base)/len(base); m=sum(mid)/len(mid)
print(f"{sys.argv[2]:28s} latency less lag: outside {b:.2f} ms, during {m:.2f} ms, x{m/b:.2f}; per second during: {' '.join(f'{x:.1f}' for x in mid)}")
PY
}
case "${1:-all}" in
all)
  run none
  run burn_cpu1_nice19 "taskset -c 1 nice -n 19 sha256sum /dev/zero"
  run burn_cpu0_nice19 "taskset -c 0 nice -n 19 sha256sum /dev/zero"
  run burn_cpu0_autogroup19 "setsid -w bash -c 'echo 19 > /proc/self/autogroup; exec taskset -c 0 sha256sum /dev/zero'"
  mkdir -p /sys/fs/cgroup/cpu/daffe-lat-idle; echo 1 > /sys/fs/cgroup/cpu/daffe-lat-idle/cpu.idle
  run burn_cpu0_cgroup_idle "echo \$\$ > /sys/fs/cgroup/cpu/daffe-lat-idle/cgroup.procs; exec taskset -c 0 sha256sum /dev/zero"
  run checkpoint "sleep 10; cd / && setpriv --reuid postgres --regid postgres --init-groups -- env HOME=/ $PGBIN/psql -h $RUN -U postgres -X -q -c CHECKPOINT postgres; sleep 20"
  run read_direct_cpu1_idle "while :; do taskset -c 1 ionice -c 3 nice -n 19 dd if=$W/big of=/dev/null bs=4M iflag=direct status=none; done"
  run read_direct_cpu1 "while :; do taskset -c 1 dd if=$W/big of=/dev/null bs=4M iflag=direct status=none; done"
  ;;
*) "$@" ;;
esac
(cd / && as $PGBIN/pg_ctl stop -w -m fast -D $D >/dev/null)
rmdir /sys/fs/cgroup/cpu/daffe-lat-idle 2>/dev/null || true
