#!/usr/bin/env python3
"""pgbench's latency per pre-copy round of one bench/migrate.sh step-4 case.

Usage: bench/pg_round_latency.py RESULTS_DIR CASE   (e.g. $W/results pg-default-500)

For each pre-copy round: its length, pgbench's mean latency less schedule lag
during it against before `migrate` started, and the same per second (`-P 1`).
Rounds are laid back to back from migrate's start using the report's flush, scan
and transfer times (a round scans, then sends); the preflight and the hook are
not counted, so the placement is good to a second or two (in the stop-33 runs the
rounds' sum was within 1 s of migrate's pre-copy time). The BENCHMARKS.md issue
11 stop-33 per-second figures come from this script.
"""
import json
import re
import sys


def main(results, case):
    runs = [json.loads(l) for l in open(f"{results}/pg.jsonl")]
    k = [r for r in runs if r["case"] == case][-1]
    prog = []
    pat = re.compile(r"progress: ([\d.]+) s, ([\d.]+) tps, lat ([\d.]+) ms.*?(?:lag ([\d.]+) ms)?$")
    for line in open(f"{results}/{case}.pgbench.err"):
        m = pat.match(line.strip())
        if m:
            prog.append((float(m[1]), float(m[3]) - float(m[4] or 0)))
    tm = k["tm"] - k["t0"]
    base = [v for t, v in prog if 1 < t <= tm]
    if not base:
        sys.exit("no pgbench progress before migrate started")
    b = sum(base) / len(base)
    print(f"before migrate: {b:.2f} ms")
    at = tm
    for r in json.load(open(f"{results}/{case}.migrate.json"))["rounds"]:
        if r["final_round"]:
            break
        d = ((r.get("flush_ms") or 0) + r["scan_ms"] + r["transfer_ms"]) / 1000
        seg = [v for t, v in prog if at < t <= at + d]
        if seg:
            per_s = " ".join(f"{v / b:.1f}" for v in seg)
            print(f"round {r['round']}: {d:.1f} s, x{sum(seg) / len(seg) / b:.2f}; per s: {per_s}")
        at += d


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] in ("-h", "--help"):
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
