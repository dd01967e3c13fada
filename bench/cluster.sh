#!/usr/bin/env bash
# Cluster mode's planned move (issue 14, BENCHMARKS.md "Cluster: planned
# move"), side by side with Docker's `local` driver on the real 3-node Swarm
# of the e2e tests, every link shaped to RATE (default 100mbit, tc tbf): a
# service writing 1 MB/s (and a counter line every 0.1 s) on a gold volume
# of SIZE (default 1G) holding DATA_MB (default 768 here: most of the issue's 1 GiB
# volume) written before the move is moved node 1 -> node 2 by a constraint
# change. Prints the service's unavailability for both drivers, daffe's own
# share (its Unmount on node 1 to its Mount returned on node 2), and the
# targets (unavailable <= local + 1 s; daffe's share <= 1 s). Then the
# standby's cost to the app: a writer's throughput (8 MiB synced files, as
# fast as it can, WRITE_SECS) on a gold volume streaming to its standby,
# against the same block volume without one (target >= 90%).
# CI runs the same tests with 8 MiB and 15 s (tests/cluster_bench.rs).
# Usage: bench/cluster.sh   (root; installs what the tests need, as the
# README's test command does). Env: DATA_MB, SIZE, RATE, WRITE_SECS.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_packages
ensure_dockerd
ensure_test_image
ensure_moto
cargo test --locked --workspace --no-run
export DAFFE_BIN=${DAFFE_BIN:-$PWD/target/debug/daffe}
export DAFFE_TEST_IMAGE=${DAFFE_TEST_IMAGE:-daffe-test/busybox:latest}
export DAFFE_MOTO_SERVER=${DAFFE_MOTO_SERVER:-/var/tmp/daffe-venv/bin/moto_server}
export DAFFE_BENCH_DATA_MB=${DATA_MB:-768}
export DAFFE_BENCH_SIZE=${SIZE:-1G}
export DAFFE_BENCH_RATE=${RATE:-100mbit}
export DAFFE_BENCH_WRITE_SECS=${WRITE_SECS:-60}
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, load $(cut -d' ' -f1-3 /proc/loadavg)"
cargo test --locked --workspace --test e2e -- cluster_bench:: --nocapture --test-threads 1
