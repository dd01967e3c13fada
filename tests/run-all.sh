#!/usr/bin/env bash
# Runs every daffe test: installs what the tests need (Docker Engine, compose,
# rsync, casync, e2fsprogs, PostgreSQL 15, etcd, protoc, moto in a venv),
# starts dockerd if none runs, builds,
# then runs the unit, property and end-to-end tests and the lint gates.
# Needs root. CI calls this through .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

need_root
ensure_packages
ensure_moto
ensure_dockerd
ensure_test_image
build_daffe dev

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings
log "cargo test (unit, property, end-to-end)"
# --no-fail-fast: one failing suite must not hide the others' results.
cargo test --locked --workspace --no-fail-fast "$@"
log "all tests passed"
