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
export DAFFE_BIN=/usr/local/bin/daffe
# demo.sh starts `daffe serve` (legacy plugin "daffe") unless it already runs.
exec bash scripts/demo.sh
