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

With a control run beside it (PG_CONTROL: ctl-PROFILE-RATE.pgbench.err, pgbench
without migration on a fresh copy), also the latency of each phase of pre-copy
over the control's same seconds from pgbench's start: round 1's scan, round 1's
transfer, the rounds after it, and the whole (stop 37: the phases cost unlike).
The before-cutover hook's CHECKPOINT is PostgreSQL writing its whole buffer pool
at once, which the control never does: the seconds it ran (from the server's log,
"checkpoint starting: immediate" to "checkpoint complete") are also given apart,
and the whole less them, which is what daffe's own reads and sends cost
(stop 52: a 122 MiB CHECKPOINT was one second at x4.9).
"""
import datetime
import json
import os
import re
import sys

PAT = re.compile(r"progress: ([\d.]+) s, ([\d.]+) tps, lat ([\d.]+) ms.*?(?:lag ([\d.]+) ms)?$")


def progress(path):
    """(second, latency less schedule lag in ms) of each `-P 1` line."""
    out = []
    for line in open(path):
        m = PAT.match(line.strip())
        if m:
            out.append((float(m[1]), float(m[3]) - float(m[4] or 0)))
    return out


def checkpoints(log, t0):
    """pgbench seconds (from t0, epoch seconds) that an immediate CHECKPOINT overlaps."""
    secs, start = set(), None
    for line in open(log):
        if "checkpoint starting: immediate" in line or "checkpoint complete" in line:
            at = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")
            t = at.replace(tzinfo=datetime.timezone.utc).timestamp() - t0
            if "starting" in line:
                start = t
            elif start is not None:
                # pgbench's line for second N covers (N-1, N].
                secs.update(range(int(start) + 1, int(t) + 2))
                start = None
    return secs


def against_control(results, case, tm, tw, rounds, hook_secs=frozenset()):
    """Each phase's latency over the control's same seconds, or None."""
    _, profile, rate = case.split("-")[:3]
    ctl = f"{results}/ctl-{profile}-{rate}.pgbench.err"
    if not os.path.exists(ctl):
        return None
    run = {round(t): v for t, v in progress(f"{results}/{case}.pgbench.err")}
    base = {round(t): v for t, v in progress(ctl)}
    r1 = rounds[0]
    scanned = tm + ((r1.get("flush_ms") or 0) + r1["scan_ms"]) / 1000
    sent = scanned + r1["transfer_ms"] / 1000
    out = []
    # The last field: None takes every second, True only the hook's, False all but those.
    for name, lo, hi, hook in (("round 1 scan", tm, scanned, None),
                               ("round 1 transfer", scanned, sent, None),
                               ("later rounds", sent, tw, None), ("all of pre-copy", tm, tw, None),
                               ("the hook's CHECKPOINT seconds", tm, tw, True),
                               ("all of pre-copy less those", tm, tw, False)):
        secs = [s for s in run
                if lo < s <= hi and s in base and (hook is None or (s in hook_secs) == hook)]
        if secs:
            x = sum(run[s] for s in secs) / sum(base[s] for s in secs)
            out.append(f"{name} x{x:.2f} ({len(secs)} s)")
        elif hook:
            out.append(f"{name} - (none within the control's seconds)")
        else:
            out.append(f"{name} - (the control is shorter)")
    return "; ".join(out)


def main(results, case):
    runs = [json.loads(l) for l in open(f"{results}/pg.jsonl")]
    k = [r for r in runs if r["case"] == case][-1]
    prog = progress(f"{results}/{case}.pgbench.err")
    tm = k["tm"] - k["t0"]
    base = [v for t, v in prog if 1 < t <= tm]
    if not base:
        sys.exit("no pgbench progress before migrate started")
    b = sum(base) / len(base)
    print(f"before migrate: {b:.2f} ms")
    at = tm
    rounds = json.load(open(f"{results}/{case}.migrate.json"))["rounds"]
    for r in rounds:
        if r["final_round"]:
            break
        d = ((r.get("flush_ms") or 0) + r["scan_ms"] + r["transfer_ms"]) / 1000
        seg = [v for t, v in prog if at < t <= at + d]
        if seg:
            per_s = " ".join(f"{v / b:.1f}" for v in seg)
            print(f"round {r['round']}: {d:.1f} s, x{sum(seg) / len(seg) / b:.2f}; per s: {per_s}")
        at += d
    if "tw" in k:
        log = f"{results}/{case}.pg-a.log"
        hook = checkpoints(log, k["t0"]) if os.path.exists(log) else set()
        vs = against_control(results, case, tm, k["tw"] - k["t0"], rounds, hook)
        if vs:
            print(f"over the control's same seconds: {vs}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] in ("-h", "--help"):
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
