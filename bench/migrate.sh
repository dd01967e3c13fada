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
#  3. `daffe migrate` of a 1 GiB dir volume while a container appends 1 MB/s:
#     cutover downtime, total time, bytes moved vs used bytes
set -euo pipefail
cd "$(dirname "$0")/.."
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
STEPS=${STEPS:-1 2 3}
if [ "$BUILD" = release ]; then OUT=release; else OUT=debug; fi
cargo build --profile "$BUILD" -q -p mover --example netpeer
case " $STEPS " in *" 3 "*) cargo build --profile "$BUILD" -q -p daffe-plugin --bin daffe ;; esac
NP=$CARGO_TARGET_DIR/$OUT/examples/netpeer
DAFFE=$CARGO_TARGET_DIR/$OUT/daffe

ID=$$
NA=dbna$ID NB=dbnb$ID VA=vba$ID VB=vbb$ID
A=10.231.0.1 B=10.231.0.2
PLUGIN=daffe-bench$ID
PIDS=()
cleanup() {
  set +e
  docker rm -f "$PLUGIN-writer" >/dev/null 2>&1
  for v in $(docker volume ls -q --filter "driver=$PLUGIN"); do docker volume rm -f "$v" >/dev/null 2>&1; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  sleep 1
  rm -f "/run/docker/plugins/$PLUGIN.sock"
  ip netns del "$NA" 2>/dev/null; ip netns del "$NB" 2>/dev/null
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

mkdir -p "$W"
if [ ! -f "$W/src/.complete" ]; then
  rm -rf "$W/src"
  python3 bench/mover_corpus.py make "$W/src"
  touch "$W/src/.complete"
fi
has() { case " $STEPS " in *" $1 "*) return 0 ;; esac; return 1; }
R=$W/results; rm -rf "$R" "$W/ours" "$W/rs" "$W/cache" "$W/tls" "$W/work"; mkdir -p "$R" "$W/ours" "$W/rs"
# Work on a copy so `mutate` never touches the cached corpus.
cp -a --reflink=auto "$W/src" "$W/work"
if ! has 1 && has 2; then
  [ -d "$W/r1/ours" ] || { echo "STEPS=2 needs $W/r1 from an earlier step 1" >&2; exit 1; }
  rm -rf "$W/ours" "$W/rs"
  cp -a "$W/r1/ours" "$W/ours"; cp -a "$W/r1/rs" "$W/rs"
fi
sleep 2

echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), link $RATE"
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

if has 3; then
echo "== 3. daffe migrate: 1 GiB dir volume, writer appending 1 MB/s"
mkdir -p "$W/mig/a" "$W/mig/b"
rm -rf "$W/mig/a/"* "$W/mig/b/"*
$DAFFE serve --socket "/run/docker/plugins/$PLUGIN.sock" --control-socket "$W/mig/a/control.sock" \
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
for _ in $(seq 100); do [ -S "$W/mig/a/control.sock" ] && [ -S "$W/mig/b/control.sock" ] && break; sleep 0.1; done
docker run --rm --volume-driver "$PLUGIN" -v big:/data "$IMAGE" sh -c \
  'for i in 1 2 3 4 5 6 7 8; do head -c 134217728 /dev/urandom > /data/f$i; done'
docker run -d --name "$PLUGIN-writer" --volume-driver "$PLUGIN" -v big:/data "$IMAGE" sh -c \
  'while true; do head -c 1048576 /dev/urandom >> /data/log; sleep 1; done' > /dev/null
sleep 2
( inA $DAFFE migrate big --to $B --name hosta --tls-dir "$W/mig/a/tls" \
    --control-socket "$W/mig/a/control.sock" --max-downtime 1s --json > "$R/migrate.json" 2> "$R/migrate.err" ) &
MIG=$!
until grep -q "waiting for" "$R/migrate.err" 2>/dev/null; do
  kill -0 $MIG 2>/dev/null || { cat "$R/migrate.err"; exit 1; }
  sleep 0.2
done
docker stop -t 1 "$PLUGIN-writer" > /dev/null
wait $MIG
fi

python3 - "$R" <<'PY'
import json, os, re, sys
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
if os.path.exists(f"{R}/migrate.json"):
    mig = json.load(open(f"{R}/migrate.json"))
    rounds = ", ".join(f"{r['round']}{'F' if r['final_round'] else ''}:{r['bytes']/2**20:.1f}MiB/{r['transfer_ms']}ms" for r in mig["rounds"])
    rows += [
    ("1 GiB volume, 1 MB/s writer: cutover downtime", f"{mig['downtime_ms']} ms", "<= 1000 ms"),
    ("1 GiB volume: total migration time", f"{mig['total_ms']/1000:.1f} s (unmount wait {mig['unmount_wait_ms']} ms)", "-"),
    ("1 GiB volume: bytes moved / used bytes", f"{mig['bytes_moved']/mig['used_bytes']:.3f} ({mig['bytes_moved']/2**20:.0f} / {mig['used_bytes']/2**20:.0f} MiB; wire {mig['wire_bytes']/2**20:.0f} MiB)", "-"),
    ("1 GiB volume: rounds (data/transfer)", rounds, "-"),
]
print("\n| what | measured | target |\n|---|---|---|")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]} |")
PY
