#!/usr/bin/env bash
# Migration benchmarks over a veth link shaped with tc tbf (default 100 Mbit/s,
# both directions), side by side with rsync in daemon mode, printed as ratios.
# Usage: bench/migrate.sh [WORKDIR]   (default /var/tmp/daffe-bench-net; root;
# dockerd running; ~4 GiB of disk).
#
#  1. first transfer of the mover corpus (bench/mover_corpus.py): daffe's
#     network round (examples/netpeer: the engine `daffe migrate` runs) vs
#     `rsync -aHAXS --no-whole-file` to an rsync:// daemon in the other namespace
#  2. incremental round after the corpus' edits (`mutate`): time and bytes on
#     the wire (veth counters, both directions, both tools measured the same way)
#  3. `daffe migrate` of a 1 GiB volume while a container appends 1 MB/s, on
#     each profile of STEP3_PROFILES (default: default gold): cutover
#     downtime and its estimate, total time, bytes moved vs used bytes
#  4. PostgreSQL 15 (Debian's packages) on a daffe volume, pgbench (scale 30,
#     4 clients) at each --rate of PG_RATES ("max": unthrottled) on each
#     profile of PG_PROFILES, moved with `daffe migrate` while pgbench runs:
#     daffe's downtime beside its estimate, the application's downtime
#     (pg_ctl stop -m fast on A to queries answered on B), per-round bytes and
#     convergence, pgbench latency/TPS during pre-copy vs before migrate (and,
#     with PG_CONTROL=SECS, vs the same seconds of a run without migration), and
#     the moved database checked (ledger, pg_amcheck, pg_checksums).
#     Unthrottled runs first try `--strict` (it must refuse, unfenced).
#     PG_AA=SECS (with PG_CONTROL) makes each case an A/A run: no migrate,
#     a wait of SECS, the hook twice (PG_AA_GAP apart) as pre-copy runs it,
#     then a refusal; its latency beside its control is the comparison's own
#     spread and the hook's own cost.
# Usage: bench/migrate.sh [--short] [WORKDIR]. --short is CI-sized: step 4
# only (unless STEPS is set), scale 5, rates 500 and max, 5 s baselines.
# B_TMPFS=1 puts host B's data root on a tmpfs (see start_hosts).
# SPLIT_CPUS=1 runs host A (this script, its databases, pgbench, A's daemon
# and migrate) on CPU 0 and host B's daemon and agent on CPU 1: two
# machines' CPUs, not one shared pair (with B_TMPFS=1, what the move costs
# the application on its own host).
# SPLIT_CPUS=1 also keeps A's kernel threads (workqueue workers, the
# journals' threads) on CPU 0 while it runs (A_KTHREADS=0: left
# floating, as before stop 43; see start_hosts).
# B_RPS=1 (with SPLIT_CPUS=1) also steers host B's network receive
# processing to CPU 1 (RPS on B's veth).
# DAFFE_BIN=PATH uses that daffe binary instead of building one (e.g. the
# test build's target/debug/daffe; say so beside the results).
set -euo pipefail
cd "$(dirname "$0")/.."
SHORT=0
if [ "${1:-}" = --short ]; then SHORT=1; shift; fi
W=${1:-/var/tmp/daffe-bench-net}
RATE=${RATE:-100mbit}
IMAGE=${DAFFE_TEST_IMAGE:-daffe-test/busybox:latest}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/daffe-target-net}
# BUILD=dev reuses the test build (deps at -O2, hashing/chunking at -O3, our
# code at -O1; see Cargo.toml) when a release build of the AWS SDK is too slow.
BUILD=${BUILD:-release}
# PUSH_WRAP prefixes daffe's sending command (e.g. "perf record -g -o F --");
# RECV_PERF=FILE records a system-wide perf profile of step 2.
# STEPS="1 2" runs the rsync comparisons only (no daffe binary needed).
# Step 1 keeps both destinations as they were after it in $W/r1; STEPS=2 alone
# restores them from there (and refreshes daffe's source cache with an
# unchanged round) so the incremental round can be rerun without step 1.
if [ "$SHORT" = 1 ]; then STEPS=${STEPS:-4}; else STEPS=${STEPS:-1 2 3 4}; fi
has() { case " $STEPS " in *" $1 "*) return 0 ;; esac; return 1; }
if [ "$BUILD" = release ]; then OUT=release; else OUT=debug; fi
if has 1 || has 2; then cargo build --profile "$BUILD" -q -p mover --features net --example netpeer; fi
if [ -z "${DAFFE_BIN:-}" ] && { has 3 || has 4; }; then cargo build --profile "$BUILD" -q -p daffe-plugin --bin daffe; fi
NP=$CARGO_TARGET_DIR/$OUT/examples/netpeer
DAFFE=${DAFFE_BIN:-$CARGO_TARGET_DIR/$OUT/daffe}

ID=$$
NA=dbna$ID NB=dbnb$ID VA=vba$ID VB=vbb$ID
A=10.231.0.1 B=10.231.0.2
PLUGIN=daffe-bench$ID
# The plugin never meets the host's engine: dockerd keeps every legacy plugin
# it has listed until it restarts, so a bench plugin served there left a dead
# `daffe-bench*` socket that every later `docker volume ls` retried for 15 s.
# Step 4 calls the plugin's socket directly; step 3 runs its containers on a
# private engine (as tests/support/docker.rs PrivateDockerd does) whose
# /run/docker/plugins is this directory, bound in its own mount namespace.
ENG=$W/engine
PLUGIN_SOCK=$ENG/plugins/$PLUGIN.sock
ESOCK=/run/daffe-bench$ID.sock
EPID=
edocker() { docker -H "unix://$ESOCK" "$@"; }
PIDS=()
WQ_MASK_WAS=
PGDATA_UP=()
PGBIN=/usr/lib/postgresql/15/bin
asPG() { setpriv --reuid postgres --regid postgres --init-groups -- env HOME=/ LC_ALL=C "$@"; }
pg_ctl_as() { (cd / && asPG $PGBIN/pg_ctl "$@"); }
cleanup() {
  set +e
  [ -n "$EPID" ] && edocker rm -f "$PLUGIN-writer" >/dev/null 2>&1
  for d in "${PGDATA_UP[@]}"; do pg_ctl_as stop -m immediate -D "$d" >/dev/null 2>&1; done
  [ -n "$EPID" ] && for v in $(edocker volume ls -q --filter "driver=$PLUGIN"); do edocker volume rm -f "$v" >/dev/null 2>&1; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  sleep 1
  rm -f "$PLUGIN_SOCK"
  if [ -n "$EPID" ]; then
    kill "$EPID" 2>/dev/null
    for _ in $(seq 300); do kill -0 "$EPID" 2>/dev/null || break; sleep 0.1; done
    rm -f "$ESOCK"; rm -rf "/run/daffe-bench$ID"
  fi
  # Block volumes still loop-mounted under the daemons' data roots.
  awk -v r="$W/mig/" 'index($2, r) == 1 {print $2}' /proc/self/mounts | sort -r | xargs -r -n1 umount -l
  ip netns del "$NA" 2>/dev/null; ip netns del "$NB" 2>/dev/null
  [ -z "$WQ_MASK_WAS" ] || echo "$WQ_MASK_WAS" > /sys/devices/virtual/workqueue/cpumask
}
trap cleanup EXIT
inA() { nsenter --net=/var/run/netns/$NA -- "$@"; }
inB() { nsenter --net=/var/run/netns/$NB -- "$@"; }
# Background daemons are started with nsenter itself (not through inA/inB),
# so that $! is the daemon (nsenter execs it) and cleanup can kill it.

# The link: two namespaces, a veth pair, tbf on both ends (see tests/support/netns.rs).
ip netns add $NA; ip netns add $NB
ip link add $VA netns $NA type veth peer name $VB netns $NB
for x in "$NA $VA $A" "$NB $VB $B"; do
  set -- $x
  ip -n $1 link set lo up
  ip -n $1 addr add $3/30 dev $2
  ip -n $1 link set $2 up
  ip netns exec $1 tc qdisc add dev $2 root tbf rate $RATE burst 256kb latency 50ms
done
wire() { ip -n $NA -s -j link show $VA | python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["stats64"]; print(s["tx"]["bytes"]+s["rx"]["bytes"])'; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
# Waits that poll without a fork. Host A's CPU is the database's: a `grep`
# and a `sleep` forked ten times a second through pre-copy kept that CPU
# busier than in the control by some 50 ms a second, a load the control
# never had (stop 53; alone, beside PostgreSQL, it lowered the mean latency:
# a busy CPU wakes sooner than an idle one).
exec {NAP}<> <(:)
nap() { read -r -t "$1" -u "$NAP" _ || true; }
# The hypervisor's time (steal) as [steal, all] jiffies of all CPUs, for its
# share between two reads: stop 53 saw 0-11% of CPU 0's seconds taken, a
# minute apart, and A/A runs (no migration) at x0.62-1.64 of their controls.
cpustat() { awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print "[" $9 "," t "]"}' /proc/stat; }
has_line() { # FILE TEXT: a line of FILE holds TEXT
  local l
  [ -f "$1" ] || return 1
  while IFS= read -r l || [ -n "$l" ]; do [[ $l == *"$2"* ]] && return 0; done < "$1"
  return 1
}

mkdir -p "$W"
if { has 1 || has 2; } && [ ! -f "$W/src/.complete" ]; then
  rm -rf "$W/src"
  python3 bench/mover_corpus.py make "$W/src"
  touch "$W/src/.complete"
fi
R=$W/results; rm -rf "$R" "$W/ours" "$W/rs" "$W/cache" "$W/tls" "$W/work"; mkdir -p "$R" "$W/ours" "$W/rs"
# Work on a copy so `mutate` never touches the cached corpus.
if has 1 || has 2; then cp -a --reflink=auto "$W/src" "$W/work"; fi
if ! has 1 && has 2; then
  [ -d "$W/r1/ours" ] || { echo "STEPS=2 needs $W/r1 from an earlier step 1" >&2; exit 1; }
  rm -rf "$W/ours" "$W/rs"
  cp -a "$W/r1/ours" "$W/ours"; cp -a "$W/r1/rs" "$W/rs"
fi
sleep 2

echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), link $RATE"
if has 1 || has 2; then
# Receivers: rsync daemon and daffe's agent, both in B.
cat > "$W/rsyncd.conf" <<EOC
[bench]
path = $W/rs
uid = root
gid = root
read only = false
use chroot = false
EOC
nsenter --net=/var/run/netns/$NB -- rsync --daemon --no-detach --config="$W/rsyncd.conf" --address=$B --port=8730 --log-file="$R/rsyncd.log" &
PIDS+=($!)
$NP init "$W/tls/a" hosta
$NP issue "$W/tls/a" hostb "$W/tls/b"
nsenter --net=/var/run/netns/$NB -- env ROUND_STATS=1 $NP receive $B:7451 "$W/tls/b" "$W/ours" 2> "$R/agent.log" &
AGENT=$!
PIDS+=($AGENT)
sleep 1
fi

run_daffe() { # round
  local w0 t0 t1 w1
  w0=$(wire); t0=$(now)
  inA ${PUSH_WRAP:-} $NP push $B:7451 "$W/tls/a" tree "$W/work" corpus "$W/cache" "$1" > "$R/daffe-$1.json"
  t1=$(now); w1=$(wire)
  echo "$(echo "$t1 - $t0" | bc) $((w1 - w0))" > "$R/daffe-$1.m"
}
run_rsync() { # name
  local w0 t0 t1 w1
  w0=$(wire); t0=$(now)
  inA rsync -aHAXS --no-whole-file --stats "$W/work/" rsync://$B:8730/bench/ > "$R/rsync-$1.txt"
  t1=$(now); w1=$(wire)
  echo "$(echo "$t1 - $t0" | bc) $((w1 - w0))" > "$R/rsync-$1.m"
}

if has 1; then
echo "== 1. first transfer of the corpus"
drop; run_daffe 1
# RSYNC_FIRST=0 skips rsync's (slow) first transfer when only step 2 matters:
# its destination is then a local copy, which is what rsync would have made.
if [ "${RSYNC_FIRST:-1}" = 0 ]; then rmdir "$W/rs"; cp -a "$W/work" "$W/rs"; else drop; run_rsync first; fi
rm -rf "$W/r1"; mkdir -p "$W/r1"
cp -a "$W/ours" "$W/r1/ours"; cp -a "$W/rs" "$W/r1/rs"
fi
if has 2; then
echo "== 2. incremental round after the same edits"
if ! has 1; then
  # Same content as after step 1: an unchanged round that re-reads the
  # source (new inodes) and fills the source's stat cache, as step 1 would.
  run_daffe 1
fi
python3 bench/mover_corpus.py mutate "$W/work"
sleep 2
drop
# RECV_PERF=FILE profiles the machine during the incremental round (the
# receiving agent is the pid in results/agent.pid).
if [ -n "${RECV_PERF:-}" ]; then echo "$AGENT" > "$R/agent.pid"; perf record -a -g -o "$RECV_PERF" 2>/dev/null & PERF=$!; sleep 0.5; fi
run_daffe 2
if [ -n "${RECV_PERF:-}" ]; then kill -INT "$PERF"; wait "$PERF" || true; fi
drop; run_rsync incr
fi

# Two daffe hosts for steps 3 and 4: A's daemon in the root namespaces
# (its plugin socket in the private engine's plugin dir, never the host's), B's daemon and agent in namespace B (its
# mounts are in the root mount namespace, so B's PostgreSQL runs from here).
hosts_up=0
start_hosts() {
[ "$hosts_up" = 1 ] && return
hosts_up=1
# Host A is this script and everything it starts from here on.
[ "${SPLIT_CPUS:-0}" = 1 ] && taskset -pc 0 $$ > /dev/null
mkdir -p "$W/mig/a" "$W/mig/b"
rm -rf "$W/mig/a/"* "$W/mig/b/"*
# B_TMPFS=1: host B's data root on a tmpfs, standing in for the other
# machine's own disk. Both hosts share this VM's one disk, so B's writes and
# syncs queue behind (and ahead of) A's database's WAL fsyncs: a cost to the
# application a real move to another machine does not have. Cleanup unmounts it.
if [ "${B_TMPFS:-0}" = 1 ]; then
  mkdir -p "$W/mig/b/data"; mount -t tmpfs -o size=12g,mode=0700 tmpfs "$W/mig/b/data"
fi
# A's data root is a shared mount: a block volume's loop mount made there
# by A's plugin (root mount namespace) propagates into the private engine's
# namespace (a slave copy, see start_engine), so step 3's containers write
# into the volume and not into the directory beneath it (/ is private here).
mkdir -p "$W/mig/a/data"
mount --bind "$W/mig/a/data" "$W/mig/a/data"
mount --make-shared "$W/mig/a/data"
mkdir -p "$ENG/plugins"
$DAFFE serve --socket "$PLUGIN_SOCK" --control-socket "$W/mig/a/control.sock" \
  --data-root "$W/mig/a/data" 2> "$R/serve-a.log" &
PIDS+=($!)
nsenter --net=/var/run/netns/$NB -- $DAFFE serve --socket "$W/mig/b/plugin.sock" --control-socket "$W/mig/b/control.sock" \
  --data-root "$W/mig/b/data" 2> "$R/serve-b.log" &
PIDS+=($!)
$DAFFE agent init --dir "$W/mig/a/tls" --name hosta > /dev/null
$DAFFE agent issue --ca-dir "$W/mig/a/tls" --name hostb --out "$W/mig/b/tls" > /dev/null
nsenter --net=/var/run/netns/$NB -- $DAFFE agent --listen $B:7450 --name hostb --tls-dir "$W/mig/b/tls" \
  --control-socket "$W/mig/b/control.sock" 2> "$R/agent-b.log" &
PIDS+=($!)
if [ "${SPLIT_CPUS:-0}" = 1 ]; then
  # B's daemon and agent (the last two started in namespace B).
  taskset -a -pc 1 "${PIDS[-1]}" > /dev/null; taskset -a -pc 1 "${PIDS[-2]}" > /dev/null
  # A's kernel threads on A's CPU too (A_KTHREADS=0 leaves them floating):
  # the unbound workqueues' workers (the loop device's, writeback) and the
  # journals' threads serve A's database. Floating, they
  # ran on CPU 1 too, behind B's kernel work (receiving and applying a
  # round: 40-47% system time there), which another machine would not put
  # in their way: gold's round-1 transfer cost pgbench x1.41-2.54 against
  # its control with them floating, x1.09-1.16 with them on CPU 0 (stop 43).
  if [ "${A_KTHREADS:-1}" = 1 ]; then
    # Workqueue workers (a loop device's I/O, writeback) follow this mask;
    # the kernel refuses taskset on them.
    WQ_MASK_WAS=$(cat /sys/devices/virtual/workqueue/cpumask)
    echo 1 > /sys/devices/virtual/workqueue/cpumask
    # The journals' threads, a new one per mounted volume, as they appear.
    ( while :; do
        for k in $(pgrep '^jbd2/'); do taskset -pc 0 "$k" > /dev/null 2>&1; done
        sleep 0.5
      done ) &
    PIDS+=($!)
  fi
  # B_RPS=1: B's network receive on B's CPU too. A veth delivers a packet in
  # the sender's softirq, so B's TCP receive work would otherwise run on
  # CPU 0, beside A's database: a cost another machine would not put there.
  if [ "${B_RPS:-0}" = 1 ]; then
    ip netns exec $NB sh -c "echo 2 > /sys/class/net/$VB/queues/rx-0/rps_cpus"
  fi
fi
for _ in $(seq 100); do [ -S "$W/mig/a/control.sock" ] && [ -S "$W/mig/b/control.sock" ] && break; sleep 0.1; done
}

# The private engine for step 3 (see ENG above): its own data and exec root,
# socket, network namespace and legacy plugin directory; the test image is
# copied in from the host's engine.
start_engine() {
  mkdir -p "$ENG/plugins" "$ENG/data" /run/docker/plugins
  unshare -m -n --propagation slave sh -c 'mount --bind "$0" /run/docker/plugins && ip link set lo up && exec "$@"' \
    "$ENG/plugins" dockerd --data-root "$ENG/data" --exec-root "/run/daffe-bench$ID" -H "unix://$ESOCK" \
    --pidfile "$ENG/dockerd.pid" --bridge=none --iptables=false --ip-masq=false --ip6tables=false \
    > "$R/dockerd.log" 2>&1 &
  EPID=$!
  for _ in $(seq 600); do edocker info > /dev/null 2>&1 && break; sleep 0.1; done
  edocker info > /dev/null || { tail -20 "$R/dockerd.log"; exit 1; }
  docker save "$IMAGE" | edocker load > /dev/null
}

if has 3; then
# STEP3_PROFILES: the profiles the 1 GiB case runs on (issue 11: both).
STEP3_PROFILES=${STEP3_PROFILES:-default gold}
start_hosts
start_engine
for profile in $STEP3_PROFILES; do
echo "== 3. daffe migrate: 1 GiB $profile volume, writer appending 1 MB/s"
vol=big$profile@$profile
# A gold (block) volume gets room for the 1 GiB and the writer's log.
[ "$profile" = default ] || edocker volume create -d "$PLUGIN" -o size=2G "$vol" > /dev/null
edocker run --rm --network none --volume-driver "$PLUGIN" -v "$vol:/data" "$IMAGE" sh -ec \
  'for i in 1 2 3 4 5 6 7 8; do head -c 134217728 /dev/urandom > /data/f$i; done'
edocker run -d --network none --name "$PLUGIN-writer" --volume-driver "$PLUGIN" -v "$vol:/data" "$IMAGE" sh -c \
  'while true; do head -c 1048576 /dev/urandom >> /data/log; sleep 1; done' > /dev/null
sleep 2
( inA $DAFFE migrate "$vol" --to $B --name hosta --tls-dir "$W/mig/a/tls" \
    --control-socket "$W/mig/a/control.sock" --max-downtime 1s --json > "$R/migrate-$profile.json" 2> "$R/migrate-$profile.err" ) &
MIG=$!
until has_line "$R/migrate-$profile.err" "waiting for"; do
  kill -0 $MIG 2>/dev/null || { cat "$R/migrate-$profile.err"; exit 1; }
  nap 0.2
done
edocker stop -t 1 "$PLUGIN-writer" > /dev/null
edocker rm "$PLUGIN-writer" > /dev/null
wait $MIG
done
fi

if has 4; then
echo "== 4. daffe migrate: PostgreSQL under pgbench"
if [ "$SHORT" = 1 ]; then
  PG_SCALE=${PG_SCALE:-5} PG_RATES=${PG_RATES:-500 max} PG_BASE_SECS=${PG_BASE_SECS:-5}
else
  PG_SCALE=${PG_SCALE:-30} PG_RATES=${PG_RATES:-250 500 1000 2000 max} PG_BASE_SECS=${PG_BASE_SECS:-20}
fi
PG_PROFILES=${PG_PROFILES:-default gold}
PG_BLOCK_SIZE=${PG_BLOCK_SIZE:-4G}
PG_STRICT=${PG_STRICT:-1}
PG_HOOK=${PG_HOOK:-1}
PG_READ_LIMIT=${PG_READ_LIMIT:-}
PG_FIRST_READ_LIMIT=${PG_FIRST_READ_LIMIT:-}
PG_PRIORITY=${PG_PRIORITY:-}
# PG_CONTROL=SECS: before each case, the same database, profile and rate
# with no migration for PG_BASE_SECS + SECS (issue 11: pgbench's latency
# during pre-copy "beside the same without migration"; a fresh copy's
# latency drifts as it ages, so the case's own first seconds are not that).
PG_CONTROL=${PG_CONTROL:-}
# PG_AA=SECS (with PG_CONTROL): an A/A run, no migration (see pgcase).
PG_AA=${PG_AA:-}
start_hosts
plug() { # SOCKET ENDPOINT JSON: one VolumeDriver call, as dockerd makes it
  local out
  out=$(curl -sS -0 --unix-socket "$1" -X POST -d "$3" "http://daffe$2")
  [ -z "$(jq -r '.Err // ""' <<<"$out")" ] || { echo "$2 $3: $out" >&2; return 1; }
  echo "$out"
}
# Lets postgres walk to DIR (the data roots are 0700 root): o+x on each
# ancestor that lacks it, nothing more.
walkable() { local p; p=$(dirname "$1"); while [ "$p" != / ]; do find "$p" -maxdepth 0 ! -perm -o+x -exec chmod o+x {} +; p=$(dirname "$p"); done; }
RUN=$W/pgrun; mkdir -p "$RUN"; chown postgres: "$RUN"; chmod 0700 "$RUN"; walkable "$RUN"
pgstart() { # DATADIR LOG
  chown -R postgres: "$1"; chmod 0700 "$1"; walkable "$1"
  # The server writes its log as postgres.
  touch "$2"; chown postgres: "$2"; walkable "$2"
  pg_ctl_as start -w -t 300 -D "$1" -l "$2" -o "-c listen_addresses='' -k $RUN -p 5432" > /dev/null
  PGDATA_UP+=("$1")
}
psql_() { (cd / && asPG $PGBIN/psql -h "$RUN" -U postgres -X -q -A -t -v ON_ERROR_STOP=1 -d postgres -c "$1"); }
# The template cluster: initdb with checksums, pgbench -i at the scale; each
# case starts from a copy of it.
TPL=$W/pgtpl-$PG_SCALE
if [ ! -f "$TPL/.complete" ]; then
  rm -rf "$TPL"; mkdir -p "$TPL/pg"; chown -R postgres: "$TPL"; walkable "$TPL/pg"
  (cd / && asPG $PGBIN/initdb --data-checksums --auth=trust --no-locale -E UTF8 -U postgres -D "$TPL/pg" > /dev/null)
  pgstart "$TPL/pg" "$R/pg-template.log"
  (cd / && asPG $PGBIN/pgbench -h "$RUN" -U postgres -i -q -s "$PG_SCALE" postgres) 2> "$R/pgbench-init.log"
  pg_ctl_as stop -w -m fast -D "$TPL/pg" > /dev/null
  touch "$TPL/.complete"
fi
echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, load $(cut -d' ' -f1-3 /proc/loadavg); scale $PG_SCALE ($(du -sm "$TPL/pg" | cut -f1) MiB), rates: $PG_RATES, profiles: $PG_PROFILES"

pgfresh() { # VOLUME PROFILE LOG: a new volume holding a copy of the template, its server up; sets MP
  # Block volumes get room for the tables and max_wal_size (1 GB) of WAL.
  local opts="{}"; [ "$2" = default ] || opts="{\"size\":\"$PG_BLOCK_SIZE\"}"
  MP=$(plug "$PLUGIN_SOCK" /VolumeDriver.Create "{\"Name\":\"$1\",\"Opts\":$opts}" >/dev/null &&
       plug "$PLUGIN_SOCK" /VolumeDriver.Mount "{\"Name\":\"$1\",\"ID\":\"bench\"}" | jq -r .Mountpoint)
  cp -a "$TPL/pg" "$MP/pg"
  sync
  pgstart "$MP/pg" "$3"
}
pgcontrol() { # PROFILE RATE: pgbench on a fresh copy, no migration
  local profile=$1 rate=$2 c=ctl-$1-$2 vol ratearg="" t0 s0 steal
  vol=ctl$profile$rate@$profile
  pgfresh "$vol" "$profile" "$R/$c.pg-a.log"
  [ "$rate" = max ] || ratearg="--rate $rate"
  t0=$(now); s0=$(cpustat)
  (cd / && asPG $PGBIN/pgbench -h "$RUN" -U postgres -n -P 1 -c 4 -j 2 -T $((PG_BASE_SECS + PG_CONTROL)) $ratearg postgres) \
    > "$R/$c.pgbench.out" 2> "$R/$c.pgbench.err" || true
  steal="[$s0,$(cpustat)]"
  pg_ctl_as stop -w -m fast -D "$MP/pg" > /dev/null
  plug "$PLUGIN_SOCK" /VolumeDriver.Unmount "{\"Name\":\"$vol\",\"ID\":\"bench\"}" > /dev/null
  plug "$PLUGIN_SOCK" /VolumeDriver.Remove "{\"Name\":\"$vol\"}" > /dev/null
  echo "{\"profile\":\"$profile\",\"rate\":\"$rate\",\"t0\":$t0,\"base\":$PG_BASE_SECS,\"steal\":$steal}" >> "$R/ctl.jsonl"
}
pgcase() { # PROFILE RATE STRICT(0|1)
  local profile=$1 rate=$2 strict=$3 c vol mp mpb ratearg="" t0 tm tw tstop tup mig rc sm
  c=pg-$profile-$rate; [ "$strict" = 1 ] && c=$c-strict
  vol=pg$profile${rate}s$strict@$profile
  pgfresh "$vol" "$profile" "$R/$c.pg-a.log"; mp=$MP
  [ "$rate" = max ] || ratearg="--rate $rate"
  t0=$(now)
  (cd / && asPG $PGBIN/pgbench -h "$RUN" -U postgres -n -P 1 -c 4 -j 2 -T 100000 $ratearg postgres) \
    > "$R/$c.pgbench.out" 2> "$R/$c.pgbench.err" &
  local bench=$!
  sleep "$PG_BASE_SECS"
  tm=$(now); sm=$(cpustat)
  local extra=(--max-downtime 2s)
  # The operator's procedure (issue 11, item 4): CHECKPOINT before the last
  # pre-copy round, so the server's dirty buffers travel while it runs and
  # the shutdown checkpoint is small. PG_HOOK=0 measures without it.
  local hook="cd / && setpriv --reuid postgres --regid postgres --init-groups -- env HOME=/ LC_ALL=C $PGBIN/psql -h $RUN -U postgres -X -q -v ON_ERROR_STOP=1 -d postgres -c CHECKPOINT"
  [ "$PG_HOOK" = 1 ] && extra+=(--before-cutover "$hook")
  [ "$strict" = 1 ] && extra+=(--strict)
  # PG_READ_LIMIT=20M: cap daffe's pre-copy reads (issue 11: when pgbench's
  # latency during pre-copy rises by more than 20%).
  [ -n "$PG_READ_LIMIT" ] && extra+=(--read-limit "$PG_READ_LIMIT")
  # PG_FIRST_READ_LIMIT=20M: the same cap on the first (bulk) round only.
  [ -n "$PG_FIRST_READ_LIMIT" ] && extra+=(--first-round-read-limit "$PG_FIRST_READ_LIMIT")
  # PG_PRIORITY=low|normal: pre-copy at nice 19 only, or normal priority, on
  # host A (default idle: the migrate process in a cpu.idle cgroup while
  # pre-copy runs; issue 11, pgbench's latency).
  [ -n "$PG_PRIORITY" ] && extra+=(--precopy-priority "$PG_PRIORITY")
  if [ -n "$PG_AA" ]; then
    # A/A (PG_AA=SECS): no migration; in its place a wait as long as
    # pre-copy's first rounds, then (PG_HOOK=1) the hook twice, as the real
    # move runs it before the last pre-copy round and its catch-up
    # (PG_AA_GAP apart), then a refusal. The case against its control then
    # says how far the comparison moves by itself, and what the hook's
    # checkpoint costs the app without any of daffe's rounds.
    ( sleep "$PG_AA"
      [ "$PG_HOOK" = 1 ] && { sh -c "$hook"; sleep "${PG_AA_GAP:-2.6}"; sh -c "$hook"; sleep 1; }
      echo '{"error":"A/A: no migration"}'; exit 3 ) > "$R/$c.migrate.json" 2> "$R/$c.migrate.err" &
  else
    ( inA $DAFFE migrate "$vol" --to $B --name hosta --tls-dir "$W/mig/a/tls" \
        --control-socket "$W/mig/a/control.sock" --json "${extra[@]}" > "$R/$c.migrate.json" 2> "$R/$c.migrate.err" ) &
  fi
  mig=$!
  while ! has_line "$R/$c.migrate.err" "waiting for" && kill -0 $mig 2>/dev/null; do nap 0.1; done
  tw=$(now); sm="[$sm,$(cpustat)]"
  if ! has_line "$R/$c.migrate.err" "waiting for"; then
    # Refused (strict) or failed before the cutover: the app still runs there.
    rc=0; wait $mig || rc=$?
    psql_ "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgbench'" > /dev/null
    wait $bench || true
    pg_ctl_as stop -w -m fast -D "$mp/pg" > /dev/null
    echo "{\"case\":\"$c\",\"profile\":\"$profile\",\"rate\":\"$rate\",\"strict\":$strict,\"rc\":$rc,\"t0\":$t0,\"tm\":$tm,\"tw\":$tw,\"steal\":$sm}" >> "$R/pg.jsonl"
    plug "$PLUGIN_SOCK" /VolumeDriver.Unmount "{\"Name\":\"$vol\",\"ID\":\"bench\"}" > /dev/null
    return
  fi
  # The cutover, in the order migrate asks for it: stop the server, release
  # the volume.
  tstop=$(now)
  pg_ctl_as stop -w -t 300 -m fast -D "$mp/pg" > /dev/null
  wait $bench || true
  plug "$PLUGIN_SOCK" /VolumeDriver.Unmount "{\"Name\":\"$vol\",\"ID\":\"bench\"}" > /dev/null
  rc=0; wait $mig || rc=$?
  [ "$rc" = 0 ] || { echo "migrate failed ($rc):"; tail -5 "$R/$c.migrate.err"; cat "$R/$c.migrate.json"; exit 1; }
  mpb=$(plug "$W/mig/b/plugin.sock" /VolumeDriver.Mount "{\"Name\":\"$vol\",\"ID\":\"bench\"}" | jq -r .Mountpoint)
  pgstart "$mpb/pg" "$R/$c.pg-b.log"
  psql_ "SELECT 1" > /dev/null
  tup=$(now)
  # The moved database: its books, its indexes, its checksums.
  local books
  books=$(psql_ "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT coalesce(sum(delta),0) FROM pgbench_history) AND (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT coalesce(sum(delta),0) FROM pgbench_history), (SELECT count(*) FROM pgbench_history)")
  (cd / && asPG $PGBIN/pg_amcheck -h "$RUN" -U postgres --all --install-missing --heapallindexed) > "$R/$c.amcheck" 2>&1 && amcheck=true || amcheck=false
  pg_ctl_as stop -w -m fast -D "$mpb/pg" > /dev/null
  (cd / && asPG $PGBIN/pg_checksums --check -D "$mpb/pg") > "$R/$c.checksums" 2>&1 && checks=true || checks=false
  plug "$W/mig/b/plugin.sock" /VolumeDriver.Unmount "{\"Name\":\"$vol\",\"ID\":\"bench\"}" > /dev/null
  # Checked: the moved copy goes, so a sweep's ten databases do not fill B
  # (B_TMPFS=1: 12 GiB; a sweep once failed its ninth move on ENOSPC).
  plug "$W/mig/b/plugin.sock" /VolumeDriver.Remove "{\"Name\":\"$vol\"}" > /dev/null
  echo "{\"case\":\"$c\",\"profile\":\"$profile\",\"rate\":\"$rate\",\"strict\":$strict,\"rc\":$rc,\"t0\":$t0,\"tm\":$tm,\"tw\":$tw,\"steal\":$sm,\"tstop\":$tstop,\"tup\":$tup,\"books\":\"$books\",\"amcheck\":$amcheck,\"checksums\":$checks}" >> "$R/pg.jsonl"
}
for profile in $PG_PROFILES; do
  for rate in $PG_RATES; do
    if [ "$rate" = max ] && [ "$PG_STRICT" = 1 ]; then
      echo "-- $profile, rate $rate, --strict"; pgcase "$profile" "$rate" 1
    fi
    [ -n "$PG_CONTROL" ] && { echo "-- $profile, rate $rate, no migration ($((PG_BASE_SECS + PG_CONTROL)) s)"; pgcontrol "$profile" "$rate"; }
    echo "-- $profile, rate $rate"; pgcase "$profile" "$rate" 0
  done
done
fi

python3 - "$R" <<'PY'
import collections, json, os, re, sys
R = sys.argv[1]
m = lambda n: [float(x) for x in open(f"{R}/{n}.m").read().split()]
rows = []
if os.path.exists(f"{R}/rsync-first.m"):
    (d1t, d1w), (r1t, r1w) = m("daffe-1"), m("rsync-first")
    rows += [
    ("first transfer: daffe / rsync time", f"{d1t/r1t:.3f} ({d1t:.1f}s vs {r1t:.1f}s)", "<= 1.05"),
    ("first transfer: wire bytes daffe / rsync", f"{d1w/r1w:.3f} ({d1w/2**20:.0f} vs {r1w/2**20:.0f} MiB)", "-"),
    ]
if os.path.exists(f"{R}/daffe-2.m"):
    (d2t, d2w), (r2t, r2w) = m("daffe-2"), m("rsync-incr")
    d2 = json.load(open(f"{R}/daffe-2.json"))
    rs = open(f"{R}/rsync-incr.txt").read()
    rs_sent = int(re.search(r"Total bytes sent: ([\d,]+)", rs).group(1).replace(",", ""))
    rows += [
    ("incremental: daffe / rsync time", f"{d2t/r2t:.2f} ({d2t:.2f}s vs {r2t:.2f}s)", "<= 0.5"),
    ("incremental: wire bytes daffe / rsync", f"{d2w/r2w:.2f} ({d2w/2**20:.1f} vs {r2w/2**20:.1f} MiB; rsync reports {rs_sent/2**20:.1f} MiB sent, daffe fetched {d2['bytes_fetched']/2**20:.1f} MiB)", "<= 1"),
    ]
for profile in ("default", "gold"):
    if not os.path.exists(f"{R}/migrate-{profile}.json"):
        continue
    mig = json.load(open(f"{R}/migrate-{profile}.json"))
    rounds = ", ".join(f"{r['round']}{'F' if r['final_round'] else ''}:{r['bytes']/2**20:.1f}MiB/{r['scan_ms']}+{r['transfer_ms']}ms" for r in mig["rounds"])
    est = (mig.get("estimate") or {}).get("downtime_ms")
    rows += [
    (f"1 GiB {profile} volume, 1 MB/s writer: cutover downtime (estimate)", f"{mig['downtime_ms']} ms ({est} ms)", "<= 1000 ms"),
    (f"1 GiB {profile} volume: total migration time", f"{mig['total_ms']/1000:.1f} s (unmount wait {mig['unmount_wait_ms']} ms)", "-"),
    (f"1 GiB {profile} volume: bytes moved / used bytes", f"{mig['bytes_moved']/mig['used_bytes']:.3f} ({mig['bytes_moved']/2**20:.0f} / {mig['used_bytes']/2**20:.0f} MiB; wire {mig['wire_bytes']/2**20:.0f} MiB)", "-"),
    (f"1 GiB {profile} volume: rounds (data/scan+transfer)", rounds, "-"),
]
    # Where the downtime went, and (tracked block images) each later round's
    # payload over what the kernel saw written since the previous scan.
    ph = mig.get("cutover") or {}
    if ph:
        rows.append((f"1 GiB {profile} volume: downtime phases", f"held check {ph['held_check_ms']} ms, final round {ph['final_round_ms']} ms, commit {ph['commit_ms']} ms", "-"))
    conv = ", ".join(f"{r['round']}{'F' if r['final_round'] else ''}:{r['bytes']/r['bytes_tracked']:.2f}" for r in mig["rounds"][1:] if r.get("bytes_tracked"))
    rows.append((f"1 GiB {profile} volume: round moved / written since the previous scan (tracked)", conv or "- (not tracked)", "<= 1.25"))
    carr = ", ".join(f"{r['round']}{'F' if r['final_round'] else ''}:{r.get('bytes_carried', 0)/r['bytes_tracked']:.2f}" for r in mig["rounds"][1:] if r.get("bytes_tracked"))
    rows.append((f"1 GiB {profile} volume: round carried (patches as sent) / written since the previous scan", carr or "- (not tracked)", "<= 1.25"))
if rows:
    print("\n| what | measured | target |\n|---|---|---|")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]} |")

# Step 4: one row per PostgreSQL case.
if os.path.exists(f"{R}/pg.jsonl"):
    def progress(c):
        out = []
        for l in open(f"{R}/{c}.pgbench.err"):
            m = re.match(r"progress: ([\d.]+) s, ([\d.]+) tps, lat ([\d.]+) ms.*?(?:lag ([\d.]+) ms)?$", l.strip())
            if m:
                # (at, tps, latency, latency less schedule lag): with --rate,
                # pgbench counts latency from the scheduled start, so a
                # client that fell behind carries its lag in every latency.
                at, tps, lat, lag = m.groups()
                out.append((float(at), float(tps), float(lat), float(lat) - float(lag or 0)))
        return out
    def mean(xs):
        return sum(xs) / len(xs) if xs else float("nan")
    # A case beside its control: latency less lag (ms) over the control's
    # first seconds and its pre-copy seconds, the case's before and during
    # pre-copy; TPS over the pre-copy seconds; the steal of both.
    Compared = collections.namedtuple("Compared", "prof rate ctl_base ctl_pre base pre ctl_tps tps steal")
    def steal(k):
        """The hypervisor's share of the CPUs between a run's two reads."""
        if "steal" not in k:
            return "-"
        (s0, t0), (s1, t1) = k["steal"]
        return f"{100 * (s1 - s0) / max(t1 - t0, 1):.1f}%"
    print("\n| profile | rate | daffe downtime (est.) | est./actual | app downtime | rounds MiB (F: final) | pre-copy round k / round k-1 | cutover | pgbench latency before -> during pre-copy | TPS before -> during | checks |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    targets = []
    controls, controls_out = {}, []
    if os.path.exists(f"{R}/ctl.jsonl"):
        for line in open(f"{R}/ctl.jsonl"):
            k = json.loads(line)
            controls[(k["profile"], k["rate"])] = k
    for line in open(f"{R}/pg.jsonl"):
        k = json.loads(line)
        c = k["case"]
        p = progress(c)
        base = [x for x in p if 1 < x[0] <= k["tm"] - k["t0"]]
        pre = [x for x in p if k["tm"] - k["t0"] < x[0] <= k["tw"] - k["t0"]]
        lat = (f"{mean([x[2] for x in base]):.2f} -> {mean([x[2] for x in pre]):.2f} ms (x{mean([x[2] for x in pre])/mean([x[2] for x in base]):.2f}); "
               f"less lag {mean([x[3] for x in base]):.2f} -> {mean([x[3] for x in pre]):.2f} ms (x{mean([x[3] for x in pre])/mean([x[3] for x in base]):.2f})")
        tps = f"{mean([x[1] for x in base]):.0f} -> {mean([x[1] for x in pre]):.0f} (x{mean([x[1] for x in pre])/mean([x[1] for x in base]):.2f})"
        rate = k["rate"] + (" --strict" if k["strict"] else "")
        # The control (PG_CONTROL): the same seconds of a run without
        # migration, over its own first seconds, and this case's pre-copy
        # over those same seconds of the control (a refused or A/A case
        # too: its seconds up to the refusal).
        ctl = controls.get((k["profile"], k["rate"]))
        if ctl:
            cp = progress(f"ctl-{k['profile']}-{k['rate']}")
            cb = [x[3] for x in cp if 1 < x[0] <= ctl["base"]]
            cpre = [x for x in cp if k["tm"] - k["t0"] < x[0] <= k["tw"] - k["t0"]]
            controls_out.append(Compared(k["profile"], rate, mean(cb), mean([x[3] for x in cpre]), mean([x[3] for x in base]),
                                         mean([x[3] for x in pre]), mean([x[1] for x in cpre]), mean([x[1] for x in pre]),
                                         f"{steal(ctl)} / {steal(k)}"))
        if "tstop" not in k:
            try:
                said = json.load(open(f"{R}/{c}.migrate.json")).get("error", "")
            except ValueError:
                said = open(f"{R}/{c}.migrate.err").read().strip().splitlines()[-1:]
            print(f"| {k['profile']} | {rate} | refused (exit {k['rc']}) | - | - | - | - | {said} | {lat} | {tps} | - |")
            continue
        mig = json.load(open(f"{R}/{c}.migrate.json"))
        est = (mig.get("estimate") or {})
        dr = est.get("dirty_rate", 0)
        rs = mig["rounds"]
        rounds = ", ".join(f"{r['bytes']/2**20:.1f}{'F' if r['final_round'] else ('p' if r['partial'] else '')}" for r in rs)
        # Round over round (pre-copy rounds only). daffe's dirty rate is
        # itself a round's payload over the previous round's time, so "a
        # round / what was dirtied since the previous scan" by daffe's own
        # figures is 1 by construction; this ratio is what can be measured.
        conv = [r["bytes"] / q["bytes"] for q, r in zip(rs, rs[1:]) if not r["final_round"] and q["bytes"]]
        convs = ", ".join(f"{x:.2f}" for x in conv) or "-"
        # Tracked block images: a round's payload over what the kernel saw
        # written since the previous round's scan (the convergence target).
        tr = [r["bytes"] / r["bytes_tracked"] for r in rs[1:] if not r["final_round"] and r.get("bytes_tracked")]
        if tr:
            convs += "; vs written: " + ", ".join(f"{x:.2f}" for x in tr)
        # The same with what the link carried (a page patch counts its
        # pages, not the chunk it rebuilt; before compression).
        tc = [r.get("bytes_carried", 0) / r["bytes_tracked"] for r in rs[1:] if not r["final_round"] and r.get("bytes_tracked")]
        if tc:
            convs += "; carried vs written: " + ", ".join(f"{x:.2f}" for x in tc)
        ph = mig.get("cutover") or {}
        if ph:
            convs += f"; downtime: held {ph['held_check_ms']} + final {ph['final_round_ms']} + commit {ph['commit_ms']} ms"
        ratio = f"{est['downtime_ms']/mig['downtime_ms']:.2f}" if est and mig["downtime_ms"] else "-"
        fr = mig.get("final_round") or {}
        comp = fr.get("composition", {})
        cut = f"{mig['cutover_reason']}; dirty {dr/1e6:.1f} MB/s, link {est.get('link_rate',0)/1e6:.1f} MB/s; final {fr.get('bytes',0)/2**20:.1f} MiB (est. {fr.get('estimated_bytes',0)/2**20:.1f})"
        checks = f"books {k['books']}; amcheck {'ok' if k['amcheck'] else 'FAIL'}; checksums {'ok' if k['checksums'] else 'FAIL'}"
        print(f"| {k['profile']} | {rate} | {mig['downtime_ms']} ms ({est.get('downtime_ms','-')} ms) | {ratio} | {(k['tup']-k['tstop'])*1000:.0f} ms | {rounds} | {convs} | {cut} | {lat} | {tps} | {checks} |")
        hook = mig.get("before_cutover")
        e_a = est["downtime_ms"] / mig["downtime_ms"] if est and mig["downtime_ms"] else float("nan")
        lat_x = mean([x[3] for x in pre]) / mean([x[3] for x in base])
        targets.append((k["profile"], rate, mig["downtime_ms"], e_a, lat_x,
                        f"{hook['seconds']:.1f} s, exit {hook['exit_status']}" if hook else "no hook"))
    # Against issue 11's targets: downtime <= 2 s (moonshot 1 s) at rate
    # 500, estimate within 50% of the actual, pgbench latency (less
    # schedule lag) during pre-copy within 1.2x of without migration.
    if targets:
        print("\n| profile | rate | downtime / 2 s target | est./actual (target 0.5-1.5) | latency during / before (target <= 1.2) | before-cutover hook |")
        print("|---|---|---|---|---|---|")
        for prof, rate, down, e_a, lat_x, hook in targets:
            ok = lambda c: "met" if c else "missed"
            print(f"| {prof} | {rate} | {down/2000:.2f} ({ok(down <= 2000)}) | {e_a:.2f} ({ok(0.5 <= e_a <= 1.5)}) | {lat_x:.2f} ({ok(lat_x <= 1.2)}) | {hook} |")
    if controls_out:
        print("\n| profile | rate | no migration: first seconds -> the pre-copy's seconds (drift) | migrate run: before -> during pre-copy | during pre-copy / same seconds without migration (target <= 1.2) | CPU taken by the hypervisor (steal): the control's run / pre-copy |")
        print("|---|---|---|---|---|---|")
        for c in controls_out:
            print(f"| {c.prof} | {c.rate} | {c.ctl_base:.2f} -> {c.ctl_pre:.2f} ms (x{c.ctl_pre/c.ctl_base:.2f}) | {c.base:.2f} -> {c.pre:.2f} ms (x{c.pre/c.base:.2f}) | x{c.pre/c.ctl_pre:.2f} | {c.steal} |")
        # Throughput over the same seconds: what pre-copy costs an
        # unthrottled database (issue 11: cap daffe's reads if over 20%).
        print("\n| profile | rate | TPS during pre-copy | same seconds without migration | ratio (target >= 0.8) |")
        print("|---|---|---|---|---|")
        for c in controls_out:
            print(f"| {c.prof} | {c.rate} | {c.tps:.0f} | {c.ctl_tps:.0f} | x{c.tps/c.ctl_tps:.2f} |")
PY
