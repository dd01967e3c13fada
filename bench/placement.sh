#!/usr/bin/env bash
# Placement targets (issue 15; results go to BENCHMARKS.md, "Placement"):
# runs `daffe placement simulate` on the shipped scenarios with the move
# cost fitted from a real `daffe migrate --json` report, and prints each
# target beside the measured value. Also writes the SVG plots.
# No root or Docker needed. Usage: bench/placement.sh [OUT_DIR]
# Env: PROFILE (release | debug, default debug: the simulator is small),
# DAFFE_BIN (default: that profile's build), MIGRATE_REPORT (default: the
# 1 GiB report shipped in placement/scenarios/).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$(mktemp -d /var/tmp/daffe-placement.XXXXXX)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
profile="${PROFILE:-debug}"
flag=--release; [ "$profile" = release ] || flag=
(cd "$here" && cargo build $flag -q -p daffe-plugin --bin daffe)
bin="${DAFFE_BIN:-$CARGO_TARGET_DIR/$profile/daffe}"
report="${MIGRATE_REPORT:-$here/placement/scenarios/migrate-1gib-100mbit.json}"
scn="$here/placement/scenarios"

for s in three-continents flat near-tie regional-event; do
  mkdir -p "$out/$s"
  "$bin" placement simulate --scenario "$scn/$s.toml" --out "$out/$s" \
    --migrate-report "$report" >"$out/$s/table.txt"
  "$bin" placement simulate --scenario "$scn/$s.toml" --out "$out/$s" \
    --migrate-report "$report" --json >"$out/$s/result.json"
  echo "== $s"
  cat "$out/$s/table.txt"
  echo
done

python3 - "$out" <<'EOF'
import json, sys
out = sys.argv[1]
def load(s):
    r = json.load(open(f"{out}/{s}/result.json"))
    return r, {p["policy"]: p for p in r["policies"]}
rows = []
def row(measure, target, value, ok):
    rows.append((measure, target, value, "yes" if ok else "NO"))

r, p = load("three-continents")
st, d, opt = p["static"], p["daffe"], p["optimum"]
days = r["days"]
row("three continents: daffe mean / best static", "<= 0.75",
    f"{d['mean_ms']/st['mean_ms']:.3f} ({d['mean_ms']:.1f} / {st['mean_ms']:.1f} ms)",
    d["mean_ms"] <= 0.75 * st["mean_ms"])
row("  (bound: offline optimum mean / best static)", "-",
    f"{opt['mean_ms']/st['mean_ms']:.3f} ({opt['mean_ms']:.1f} ms)", True)
row("three continents: daffe mean / offline optimum", "<= 1.05",
    f"{d['mean_ms']/opt['mean_ms']:.3f}", d["mean_ms"] <= 1.05 * opt["mean_ms"])
row("three continents: daffe p95 vs best static", "<= static",
    f"{d['p95_ms']:.1f} vs {st['p95_ms']:.1f} ms (optimum {opt['p95_ms']:.1f})",
    d["p95_ms"] <= st["p95_ms"])
row("three continents: daffe moves per day", "<= 4",
    f"{d['moves_per_day']:.2f}", d["moves_per_day"] <= 4)
row("three continents: daffe downtime per day (measured migrate cost)", "<= 10 s",
    f"{d['downtime_s']/days:.2f} s ({r['move_estimate']['downtime_s']:.2f} s per move)",
    d["downtime_s"] / days <= 10)
for s in ("flat", "near-tie", "regional-event"):
    r, p = load(s)
    st, d = p["static"], p["daffe"]
    row(f"{s}: daffe mean vs best static", "<= static",
        f"{d['mean_ms']:.2f} vs {st['mean_ms']:.2f} ms", d["mean_ms"] <= st["mean_ms"] + 1e-9)
    if s == "flat":
        row("flat: daffe moves", "0", f"{d['moves']}", d["moves"] == 0)
    else:
        row(f"{s}: daffe moves (follow-the-sun, optimum)", "-",
            f"{d['moves']} ({p['follow-the-sun']['moves']}, {p['optimum']['moves']})", True)
w = max(len(x[0]) for x in rows)
print(f"{'measure':<{w}}  {'target':<10}  {'met':<4}  measured")
for m, t, v, ok in rows:
    print(f"{m:<{w}}  {t:<10}  {ok:<4}  {v}")
EOF
echo "plots and results in $out"
