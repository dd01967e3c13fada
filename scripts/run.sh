#!/usr/bin/env bash
# The main job: on a fresh Debian 12 machine with Rust (as root), install Docker
# Engine and the tools if missing, build daffe, start dockerd and the daffe
# plugin on the embedded default (local storage, no cloud), then run the
# FlockerProfiles demo plus a gold volume (scripts/demo.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

need_root
ensure_packages
ensure_dockerd
ensure_test_image
build_daffe release
install -m 0755 "$DAFFE_BIN" /usr/local/bin/daffe

if ! [ -S /run/docker/plugins/daffe.sock ] || ! daffe volume ls >/dev/null 2>&1; then
    log "starting the daffe plugin (log: /var/log/daffe.log)"
    mkdir -p /run/docker/plugins
    (setsid /usr/local/bin/daffe serve >/var/log/daffe.log 2>&1 &)
    for _ in $(seq 1 50); do
        [ -S /run/docker/plugins/daffe.sock ] && break
        sleep 0.1
    done
    [ -S /run/docker/plugins/daffe.sock ] || { tail /var/log/daffe.log >&2; die "the plugin did not start"; }
fi
exec bash scripts/demo.sh
