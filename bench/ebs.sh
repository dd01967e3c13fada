#!/usr/bin/env bash
# EBS snapshot push: daffe vs coldsnap on the same moto server and the same
# 1 GiB image, 1% of its blocks rewritten between rounds.
#
# Measures, per round: blocks uploaded (counted by the server: moto lists a
# snapshot's own blocks only, i.e. exactly the blocks put into it) and wall
# time of each tool. Round 0 is a full snapshot for both; then daffe pushes
# incrementally (--parent) while coldsnap, which has no incremental upload,
# uploads every non-zero block again.
#
# moto reports BlockSize 512 from StartSnapshot (real AWS: 524288). coldsnap
# trusts the reported size and would put 2 million 512-byte blocks, so the
# server is started with the real block size patched in; daffe ignores the
# reported size either way.
#
# Needs: a daffe binary (DAFFE_BIN, default target/release/daffe), coldsnap
# (COLDSNAP, default /var/tmp/coldsnap/bin/coldsnap; `cargo install coldsnap
# --root /var/tmp/coldsnap`), moto in a venv (MOTO_VENV, default
# /var/tmp/daffe-venv). Everything runs on 127.0.0.1.
#
# Usage: bench/ebs.sh [ROUNDS]   (default 3 incremental rounds)
set -euo pipefail

ROUNDS=${1:-3}
DAFFE=${DAFFE_BIN:-target/release/daffe}
COLDSNAP=${COLDSNAP:-/var/tmp/coldsnap/bin/coldsnap}
VENV=${MOTO_VENV:-/var/tmp/daffe-venv}
PY=$VENV/bin/python
OUT=${BENCH_OUT:-bench-out/ebs}
IMAGE_MIB=1024
BLOCK=524288
BLOCKS=$((IMAGE_MIB * 1048576 / BLOCK))
# 1% of the blocks, rounded: 20 of 2048.
CHANGED=$((BLOCKS / 100))

for f in "$DAFFE" "$COLDSNAP" "$PY"; do
    [ -x "$f" ] || { echo "missing $f" >&2; exit 1; }
done
mkdir -p "$OUT"
rm -rf "$OUT/state"
IMG=$OUT/image.img

PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ENDPOINT=http://127.0.0.1:$PORT
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 \
    AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null

"$PY" - "$PORT" >"$OUT/moto.log" 2>&1 <<'PYEOF' &
import sys
import moto.ebs.models as m
orig = m.EBSSnapshot.__init__
def init(self, *a, **k):
    orig(self, *a, **k)
    self.block_size = 524288  # what AWS reports; moto says 512
m.EBSSnapshot.__init__ = init
from moto.server import main
main(["-H", "127.0.0.1", "-p", sys.argv[1]])
PYEOF
MOTO_PID=$!
trap 'kill $MOTO_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    curl -sf -X POST "$ENDPOINT/moto-api/reset" >/dev/null && break
    sleep 0.3
done

# Blocks the server holds for a snapshot (= blocks put into it, on moto).
count_blocks() {
    "$PY" - "$ENDPOINT" "$1" <<'PYEOF'
import sys, boto3
c = boto3.client("ebs", endpoint_url=sys.argv[1], region_name="us-east-1")
print(len(c.list_snapshot_blocks(SnapshotId=sys.argv[2])["Blocks"]))
PYEOF
}

# Rewrites CHANGED random blocks (seeded per round) with random data.
change_blocks() {
    "$PY" - "$IMG" "$1" "$BLOCKS" "$CHANGED" "$BLOCK" <<'PYEOF'
import os, random, sys
path, seed, blocks, changed, bs = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:])
rng = random.Random(seed)
with open(path, "r+b") as f:
    for i in sorted(rng.sample(range(blocks), changed)):
        f.seek(i * bs)
        f.write(os.urandom(bs))
PYEOF
}

now() { date +%s.%N; }
elapsed() { echo "$2 - $1" | bc; }

echo "image: $IMAGE_MIB MiB of random data ($BLOCKS blocks), $CHANGED blocks rewritten per round"
head -c $((IMAGE_MIB * 1048576)) /dev/urandom >"$IMG"
sync

printf '%-6s %14s %14s %10s %10s %8s\n' round daffe_blocks coldsnap_blocks daffe_s coldsnap_s ratio | tee "$OUT/results.txt"
parent=""
for round in $(seq 0 "$ROUNDS"); do
    if [ "$round" -gt 0 ]; then change_blocks "$round"; sync; fi
    args=(snapshot push "$IMG" --json --endpoint-url "$ENDPOINT" --state-dir "$OUT/state")
    [ -n "$parent" ] && args+=(--parent "$parent")
    t0=$(now)
    "$DAFFE" "${args[@]}" >"$OUT/daffe-$round.json"
    t1=$(now)
    snap=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["snapshot_id"])' "$OUT/daffe-$round.json")
    t2=$(now)
    csnap=$("$COLDSNAP" --endpoint "$ENDPOINT" --region us-east-1 upload --no-progress "$IMG")
    t3=$(now)
    d=$(elapsed "$t0" "$t1")
    c=$(elapsed "$t2" "$t3")
    printf '%-6s %14s %14s %10.2f %10.2f %8.3f\n' "$round" "$(count_blocks "$snap")" \
        "$(count_blocks "$csnap")" "$d" "$c" "$(echo "$d / $c" | bc -l)" | tee -a "$OUT/results.txt"
    parent=$snap
done
echo "ratio = daffe time / coldsnap time (lower is better for daffe)"
