#!/usr/bin/env bash
# Plugin benchmarks (results go to BENCHMARKS.md, "Volume plugin"):
#  1. Side by side with Docker's built-in `local` driver, in one run, cycles
#     interleaved: `docker volume create`, `docker run --rm -v`, `docker volume rm`;
#     daffe `dir` (default profile) and daffe `block` (gold, 64M) volumes.
#  2. Straight on the socket with 1,000 volumes: Get and List p50/p99, and the
#     daemon's RSS.
# Run as root with dockerd up. Usage: bench/plugin.sh [CYCLES=50]
# Env: PROFILE (release | debug, default release), DAFFE_BIN (default: that
# profile's build), DAFFE_TEST_IMAGE (default daffe-test/busybox:latest).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cycles="${1:-50}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
profile="${PROFILE:-release}"
flag=--release; [ "$profile" = release ] || flag=
(cd "$here" && cargo build $flag -q -p daffe-plugin --bin daffe --example socket_bench)
bin="${DAFFE_BIN:-$CARGO_TARGET_DIR/$profile/daffe}"
sockbench="$CARGO_TARGET_DIR/$profile/examples/socket_bench"
img="${DAFFE_TEST_IMAGE:-daffe-test/busybox:latest}"
if ! docker image inspect "$img" >/dev/null 2>&1; then
  "$here/scripts/import-busybox.sh" "$img"
fi

name="daffe-bench$$"
dir="$(mktemp -d /var/tmp/daffe-bench.XXXXXX)"
"$bin" serve --socket "/run/docker/plugins/$name.sock" --control-socket "$dir/control.sock" \
  --data-root "$dir/data" >"$dir/daffe.log" 2>&1 &
pid=$!
cleanup() {
  for v in $(docker volume ls -q --filter "driver=$name"); do docker volume rm -f "$v" >/dev/null; done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$dir/control.sock" ] && break; sleep 0.05; done

now() { date +%s%N; }
cycle() { # driver volume [create opts...]
  local d="$1" v="$2"; shift 2
  docker volume create -d "$d" "$@" "$v" >/dev/null
  docker run --rm -v "$v:/data" "$img" sh -c 'echo x > /data/f' >/dev/null
  docker volume rm "$v" >/dev/null
}
# Warm-up: first container start and first plugin activation are not steady state.
cycle local "warm$$"; cycle "$name" "warm$$"

declare -A total=([local]=0 [dir]=0 [block]=0)
for i in $(seq "$cycles"); do
  t=$(now); cycle local "bl$$-$i"; total[local]=$(( total[local] + $(now) - t ))
  t=$(now); cycle "$name" "bd$$-$i"; total[dir]=$(( total[dir] + $(now) - t ))
  t=$(now); cycle "$name" "bb$$-$i@gold" -o size=64M; total[block]=$(( total[block] + $(now) - t ))
done
ms() { awk -v t="$1" -v n="$cycles" 'BEGIN { printf "%.1f", t / 1e6 / n }'; }
ratio() { awk -v t="$1" -v l="${total[local]}" 'BEGIN { printf "%.3f", t / l }'; }
echo "## cycles: $cycles x (volume create, run --rm -v, volume rm), interleaved"
echo "local:       $(ms "${total[local]}") ms/cycle"
echo "daffe dir:   $(ms "${total[dir]}") ms/cycle  ratio $(ratio "${total[dir]}")  (target <= 1.15)"
echo "daffe block: $(ms "${total[block]}") ms/cycle  ratio $(ratio "${total[block]}")"
echo "## socket, 1000 volumes"
"$sockbench" "/run/docker/plugins/$name.sock" "$pid" 1000 5000 300
echo "## machine"
echo "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r), docker $(docker version -f '{{.Server.Version}}')"
