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
build_tests

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings
# The fuzz crate is its own workspace (nightly, cargo-fuzz), so the steps
# above never compile it; it path-includes the plugin's decoders, and a
# plugin change once broke it unseen until bench/fuzz.sh ran. Checked here on
# stable (~1 min): the harnesses still compile against today's decoders.
log "cargo check fuzz targets"
CARGO_TARGET_DIR=target/fuzz-check cargo check --locked --manifest-path fuzz/Cargo.toml --bins
# The mover's API docs: every public item documented (#![warn(missing_docs)]
# in mover/src/lib.rs, an error here), no broken intra-doc links.
log "cargo doc mover -D warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps -p mover --features net,aws
# The tests must leave the host's engine as they found them (each test plugin
# runs on a private engine); measured around the whole suite.
engine_before=$(volume_ls_seconds)
log "cargo test (unit, property, end-to-end)"
# --no-fail-fast: one failing suite must not hide the others' results.
status=0
cargo test --locked --workspace --no-fail-fast "$@" || status=$?
sweep_tracking_left_by_tests
check_engine_as_found "$engine_before" || status=1
[ "$status" = 0 ] || exit "$status"
log "all tests passed"
