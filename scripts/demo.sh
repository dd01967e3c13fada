#!/usr/bin/env bash
# The FlockerProfiles demo on this host's local storage:
#  - starts `daffe serve` as the legacy plugin `daffe` (socket
#    /run/docker/plugins/daffe.sock, data under /var/lib/daffe) unless it runs;
#  - `docker run --volume-driver=daffe -v cheapvolume@default:/data busybox sh -c "echo hello > /data/state.txt"`
#    and reads the file back from a new container;
#  - a gold volume: a size-limited ext4 block volume, shown with df;
#  - `docker volume inspect`, `daffe volume ls`, `daffe profiles ls`.
# Needs root, a running dockerd and a built daffe (DAFFE_BIN, else
# target/release/daffe, else target/debug/daffe). Safe to run again.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$here/target}"
bin="${DAFFE_BIN:-}"
for b in "$target/release/daffe" "$target/debug/daffe"; do
  [ -n "$bin" ] || { [ -x "$b" ] && bin="$b"; } || true
done
[ -n "$bin" ] && [ -x "$bin" ] || { echo "demo.sh: build daffe first (cargo build --release -p daffe-plugin)" >&2; exit 1; }

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@"; }

# No registry is needed: without a busybox image, make one from Debian's busybox-static.
if ! docker image inspect busybox:latest >/dev/null 2>&1; then
  "$here/scripts/import-busybox.sh" busybox:latest
fi

if "$bin" volume ls >/dev/null 2>&1; then
  echo "daffe is already serving"
else
  mkdir -p /var/log /run/daffe
  nohup "$bin" serve >>/var/log/daffe.log 2>&1 &
  echo $! >/run/daffe/daffe.pid
  for _ in $(seq 100); do "$bin" volume ls >/dev/null 2>&1 && break; sleep 0.1; done
  "$bin" volume ls >/dev/null || { echo "demo.sh: daffe serve did not start; see /var/log/daffe.log" >&2; exit 1; }
  echo "daffe serve started (pid $(cat /run/daffe/daffe.pid), log /var/log/daffe.log)"
fi

docker rm -f testapp >/dev/null 2>&1 || true
run docker run --name testapp --volume-driver=daffe -v cheapvolume@default:/data busybox sh -c "echo hello > /data/state.txt"
run docker run --rm --volume-driver=daffe -v cheapvolume@default:/data busybox cat /data/state.txt
run docker run --rm --volume-driver=daffe -v highperfvolume@gold:/data busybox sh -c 'df -h /data; echo fast > /data/db.txt'
run docker volume inspect highperfvolume@gold
run "$bin" volume ls
run "$bin" profiles ls
docker rm testapp >/dev/null
cat <<MSG

Done. The plugin keeps running (legacy plugin "daffe"). To stop it:
  kill \$(cat /run/daffe/daffe.pid)
To remove the demo volumes:
  docker volume rm cheapvolume@default highperfvolume@gold
MSG
