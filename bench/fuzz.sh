#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/) for a set time, one after
# the other, and prints a summary table. A crash, a hang (an input slower than
# FUZZ_TIMEOUT) or an OOM (over FUZZ_RSS_MB) fails the target; the script
# exits non-zero if any target failed. The issue's bar: no crash, hang or OOM
# in 1 hour per target (the default).
#
# Usage: bench/fuzz.sh [TARGET...]          (default: every target)
#   FUZZ_SECONDS=3600   seconds per target
#   FUZZ_RSS_MB=2048    -rss_limit_mb (and -malloc_limit_mb): an input that
#                       makes a decoder allocate more is an OOM failure
#   FUZZ_TIMEOUT=10     -timeout: an input taking longer is a hang failure
#   FUZZ_WORK=/var/tmp/daffe-fuzz   working corpora, artifacts and logs
#   FUZZ_SANITIZER=address          cargo fuzz --sanitizer (none is ~2x faster)
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
#
# The checked-in corpora (fuzz/corpus/<target>/) are read, never written:
# new inputs go to $FUZZ_WORK/corpus/<target>/. To keep a crasher as a
# regression test, copy it from $FUZZ_WORK/artifacts/<target>/ into
# fuzz/corpus/<target>/ (mover/tests/fuzz_corpus.rs replays it on stable).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER=${FUZZ_SECONDS:-3600}
RSS_MB=${FUZZ_RSS_MB:-2048}
TIMEOUT=${FUZZ_TIMEOUT:-10}
W=${FUZZ_WORK:-/var/tmp/daffe-fuzz}
SAN=${FUZZ_SANITIZER:-address}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target-fuzz}

cd fuzz
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build --sanitizer "$SAN" >&2

mkdir -p "$W"
summary="$W/summary.tsv"
printf 'target\tseconds\texecs\texecs_per_s\tcorpus\tresult\tartifact\n' >"$summary"
failed=0
for t in "${targets[@]}"; do
  mkdir -p "$W/corpus/$t" "$W/artifacts/$t"
  log="$W/$t.log"
  start=$(date +%s)
  set +e
  cargo +nightly fuzz run --sanitizer "$SAN" "$t" "$W/corpus/$t" "corpus/$t" -- \
    -max_total_time="$SECONDS_PER" -rss_limit_mb="$RSS_MB" -malloc_limit_mb="$RSS_MB" \
    -timeout="$TIMEOUT" -print_final_stats=1 \
    -artifact_prefix="$W/artifacts/$t/" >"$log" 2>&1
  rc=$?
  set -e
  elapsed=$(( $(date +%s) - start ))
  execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1 || true)
  if [ -z "$execs" ]; then
    execs=$(grep -oE '^#[0-9]+' "$log" | tr -d '#' | tail -1 || true)
  fi
  execs=${execs:-0}
  corpus=$(find "$W/corpus/$t" -type f | wc -l)
  if [ "$rc" -eq 0 ]; then
    result=ok
  elif grep -q 'ERROR: libFuzzer: timeout' "$log"; then
    result=timeout
  elif grep -qE 'ERROR: libFuzzer: (out-of-memory|malloc limit)|allocation-size-too-big|out of memory' "$log"; then
    result=oom
  elif grep -qE 'ERROR: (libFuzzer: deadly signal|AddressSanitizer)|panicked' "$log"; then
    result=crash
  else
    result="fail(rc=$rc)"
  fi
  artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | awk '{print $NF}' | tail -1 || true)
  [ "$result" = ok ] || failed=1
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$elapsed" "$execs" \
    "$(( execs / (elapsed > 0 ? elapsed : 1) ))" "$corpus" "$result" "${artifact:--}" >>"$summary"
  echo "fuzz: $t: $result after ${elapsed}s, $execs execs (log $log)" >&2
done

echo
echo "machine: $(nproc) cores, $(uname -srm); $(cargo +nightly --version)"
echo "per target: ${SECONDS_PER}s, -rss_limit_mb=$RSS_MB -timeout=$TIMEOUT, sanitizer $SAN"
column -t -s $'\t' "$summary"
exit "$failed"
