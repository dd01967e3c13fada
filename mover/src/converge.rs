//! When to stop pre-copy, and what the final round will cost: the
//! convergence model of live migration, **pure** (measurements in,
//! decisions out; no clock, no I/O).
//!
//! Each pre-copy round `k` sends what changed at the source between scan
//! `k-1` and scan `k` (plus what the source changed under round `k-1`, which
//! changed in the same interval). So the *dirty rate* is round `k`'s payload
//! over the time between the two scans (round `k-1`'s wall time, rounds run
//! back to back), and the final round will carry about `dirty rate x (last
//! round's wall time + the wait for the unmount)`. The estimate is built
//! from that rate and the measured link throughput, not from the last
//! round's size: a round that happened to be short (or partial) says little
//! about what the next interval dirties.
//!
//! The rate is over *unique* bytes: a page rewritten ten times in an
//! interval is sent once. That is what makes pre-copy converge for a
//! database whose hot set is small, and why the rate of a long interval can
//! be lower than that of a short one; using the most recent interval (close
//! in length to the final one) keeps the estimate honest.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Rounds whose payload is under this do not measure the link (their time is
/// all fixed cost).
pub const LINK_SAMPLE_MIN_BYTES: u64 = 1 << 20;
/// A round "still converges" while it moves less than this share of the
/// round before it.
pub const SHRINK_RATIO: f64 = 0.8;
/// An estimate above this share of the target is cut over only when another
/// round would not shrink it (see [`decide`]): the estimate errs both ways
/// (est./actual 0.63-1.09 in the 1 GiB runs), and a final round estimated
/// at 992 ms for a 1 s target took 1160 ms (bench/migrate.sh step 3, gold,
/// live8) where one more round of its 10 MB would have left ~2 MB.
pub const FIT_MARGIN: f64 = 0.8;
/// The write rate "exceeds the link" when the link would spend more than
/// this share of its time carrying it.
pub const OUTPACED_SHARE: f64 = 0.9;

/// What one pre-copy round measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundMeasure {
    /// Payload the round applied (chunks fetched, uncompressed).
    pub bytes_moved: u64,
    /// Bytes the source changed under the round (left dirty: they go next
    /// round). Nonzero means the round was partial.
    pub bytes_dirty: u64,
    /// Bytes on the wire, both ways, all attempts (TLS and compression in).
    pub wire_bytes: u64,
    /// Scan time at the source.
    pub scan: Duration,
    /// Of `scan`, the time spent reading and hashing data (`ScanStats::
    /// read_time`); zero when not measured (the whole scan then counts as
    /// fixed, see `final_scan`).
    #[serde(default)]
    pub scan_read: Duration,
    /// Bytes the scan read and hashed.
    #[serde(default)]
    pub bytes_read: u64,
    /// Of `scan_read`, the time the reads waited for a read cap: the final
    /// round is never capped (`ScanStats::paced_time`).
    #[serde(default)]
    pub scan_paced: Duration,
    /// Of `scan`, the time the scan's threads stood runnable without a CPU,
    /// summed over them (`crate::ScanStats::cpu`); `None` when not measured.
    /// The final scan, with the application stopped, does not wait (see
    /// `scan_for`).
    #[serde(default)]
    pub scan_wait: Option<Duration>,
    /// From the round's first request to the receiver's answer.
    pub transfer: Duration,
    /// Of `transfer`, the time the source's threads stood runnable without
    /// a CPU, summed over them (`crate::ThreadTimes`); `None` when not
    /// measured (older reports, no `/proc`). The final round, with the
    /// application stopped, does not wait (see `final_pace`).
    #[serde(default)]
    pub transfer_wait: Option<Duration>,
    /// From the start of the round's scan to the start of the next scan.
    pub wall: Duration,
}

/// The operator's targets. `#[non_exhaustive]`: [`Targets::new`], then the
/// `with_*` setters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Targets {
    /// The downtime the final round should fit in.
    pub max_downtime: Duration,
    /// Pre-copy rounds at most (the final round not counted).
    pub max_rounds: u32,
    /// Refuse the cutover when the estimate exceeds `max_downtime`.
    pub strict: bool,
    /// The link's rate in bytes/s when known (e.g. a `--bwlimit`); else it
    /// is measured from the rounds.
    pub link_rate: Option<f64>,
    /// Expected time from the end of the last pre-copy round to the final
    /// round's scan (the unmount): the final round also carries what is
    /// dirtied then.
    pub cutover_gap: Duration,
}

impl Targets {
    /// `max_downtime` within at most `max_rounds` pre-copy rounds; not
    /// strict, the link rate measured, no cutover gap.
    pub fn new(max_downtime: Duration, max_rounds: u32) -> Self {
        Targets {
            max_downtime,
            max_rounds,
            strict: false,
            link_rate: None,
            cutover_gap: Duration::ZERO,
        }
    }
}

crate::builder::setters!(Targets {
    with_strict => strict: bool,
    with_link_rate => link_rate: Option<f64>,
    with_cutover_gap => cutover_gap: Duration,
});

/// The model's view after some rounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Estimate {
    /// Unique bytes dirtied per second at the source (latest interval).
    pub dirty_rate: f64,
    /// Payload bytes per second the link carries (wire rate / wire ratio).
    pub link_rate: f64,
    /// Wire bytes per payload byte (compression, TLS, patch savings).
    pub wire_ratio: f64,
    /// Payload the final round is expected to carry.
    pub final_bytes: u64,
    /// Expected downtime: the final round's scan, its fixed cost, and its
    /// bytes over the link.
    pub downtime: Duration,
}

impl Estimate {
    /// The write rate is more than the link can absorb: pre-copy cannot
    /// converge, whatever the number of rounds.
    pub fn outpaced(&self) -> bool {
        self.link_rate > 0.0 && self.dirty_rate * self.wire_ratio > OUTPACED_SHARE * self.link_rate
    }
}

/// Why pre-copy stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    /// The estimated downtime fits the target.
    Fits,
    /// Rounds stopped shrinking: more would not bring the final round down.
    NotConverging,
    /// The source dirties data faster than the link carries it.
    WriteRateExceedsLink,
    /// The round limit.
    MaxRounds,
}

impl StopReason {
    /// The name the report uses.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Fits => "fits",
            StopReason::NotConverging => "not-converging",
            StopReason::WriteRateExceedsLink => "write-rate-exceeds-link",
            StopReason::MaxRounds => "max-rounds",
        }
    }
}

/// What to do after a round.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Decision {
    /// Another pre-copy round.
    Continue(Estimate),
    /// Cut over now.
    Stop {
        reason: StopReason,
        estimate: Estimate,
    },
    /// Strict mode: the estimate exceeds the target; do not cut over (the
    /// source stays unfenced, the app keeps running).
    Refuse {
        reason: StopReason,
        estimate: Estimate,
    },
}

impl Decision {
    pub fn estimate(&self) -> Estimate {
        match *self {
            Decision::Continue(e)
            | Decision::Stop { estimate: e, .. }
            | Decision::Refuse { estimate: e, .. } => e,
        }
    }
}

/// Wire bytes per payload byte over the rounds that moved data (1 when
/// none did).
fn wire_ratio(rounds: &[RoundMeasure]) -> f64 {
    let (p, w) = rounds
        .iter()
        .filter(|r| r.bytes_moved > 0)
        .fold((0u64, 0u64), |(p, w), r| {
            (p + r.bytes_moved, w + r.wire_bytes)
        });
    if p == 0 { 1.0 } else { w as f64 / p as f64 }
}

/// Payload bytes per second the link carried: over the rounds that moved
/// enough to measure it, the wire bytes over the transfer time.
fn measured_link(rounds: &[RoundMeasure], ratio: f64) -> Option<f64> {
    let (w, t) = rounds
        .iter()
        .filter(|r| r.bytes_moved >= LINK_SAMPLE_MIN_BYTES && !r.transfer.is_zero())
        .fold((0u64, 0f64), |(w, t), r| {
            (w + r.wire_bytes, t + r.transfer.as_secs_f64())
        });
    (t > 0.0 && w > 0).then(|| w as f64 / t / ratio.max(1e-9))
}

/// Unique bytes dirtied per second over the latest interval: the last
/// round's payload over the time since the previous round's scan (the
/// previous round's wall time), or what the source changed under the last
/// round over its own wall time when that is more (a lower bound of what it
/// dirtied then). After one round only the latter (the first round carries
/// the whole volume, not a rate).
pub fn dirty_rate(rounds: &[RoundMeasure]) -> f64 {
    let secs = |d: Duration| d.as_secs_f64().max(1e-3);
    let under = |r: &RoundMeasure| r.bytes_dirty as f64 / secs(r.wall);
    match rounds {
        [] => 0.0,
        [only] => under(only),
        [.., prev, last] => (last.bytes_moved as f64 / secs(prev.wall)).max(under(last)),
    }
}

/// The estimate after `rounds` (at least one).
pub fn estimate(rounds: &[RoundMeasure], t: &Targets) -> Estimate {
    estimate_at_rate(rounds, t, dirty_rate(rounds))
}

/// The estimate after `rounds` with the dirty rate given: after a
/// before-cutover hook, whose one-off flush the last round carried, the
/// steady rate measured before the hook (the final round carries what the
/// app dirties since, not another flush).
pub fn estimate_at_rate(rounds: &[RoundMeasure], t: &Targets, rate: f64) -> Estimate {
    let ratio = wire_ratio(rounds);
    let link = t
        .link_rate
        .or_else(|| measured_link(rounds, ratio))
        .unwrap_or(0.0);
    let Some(last) = rounds.last() else {
        return Estimate::default();
    };
    let interval = last.wall + t.cutover_gap;
    let final_bytes = f64_to_u64((rate * interval.as_secs_f64()).round());
    // A round's fixed cost: what its transfer took beyond its bytes at the
    // link's rate (connection, manifest, plan over the whole manifest,
    // commit, syncs). The smallest seen, over the rounds after the first
    // when there are some: the measured link rate is mostly the first
    // round's (it carries the volume), so its residue is ~0 by
    // construction, and taken as the minimum it hid a cost every later
    // round paid (1 GiB gold volume: estimate 339 ms, actual 986 ms).
    let fixed = fixed_cost(rounds, link, ratio);
    let carry = if link > 0.0 {
        final_bytes as f64 / link
    } else {
        0.0
    };
    Estimate {
        dirty_rate: rate,
        link_rate: link,
        wire_ratio: ratio,
        final_bytes,
        downtime: last.scan + Duration::from_secs_f64(fixed + carry),
    }
}

/// A round's fixed cost in seconds (see [`estimate_at_rate`]): the smallest
/// residue of a transfer beyond its bytes at the link's rate, over the
/// rounds after the first when there are some; the last round's transfer
/// when no link rate is known.
fn fixed_cost(rounds: &[RoundMeasure], link: f64, ratio: f64) -> f64 {
    let later = if rounds.len() > 1 {
        &rounds[1..]
    } else {
        rounds
    };
    let fixed = later
        .iter()
        .filter(|_| link > 0.0)
        .map(|r| {
            let carry = r.wire_bytes as f64 / (link * ratio);
            (r.transfer.as_secs_f64() - carry).max(0.0)
        })
        .fold(f64::INFINITY, f64::min);
    if fixed.is_finite() {
        fixed
    } else {
        rounds.last().map_or(0.0, |r| r.transfer.as_secs_f64())
    }
}

/// The estimate after the round that followed a before-cutover hook (the
/// last of `rounds`), with the app's steady dirty rate measured before the
/// hook. That round carried the hook's flush: its payload beyond what the
/// steady rate dirtied since the previous scan. An app that keeps dirty
/// pages in memory (a database between checkpoints) builds that up again
/// and writes it at shutdown, after the unmount request, where no dirty
/// rate of its files can see it: PostgreSQL at pgbench scale 5 flushed
/// 78 MB at `CHECKPOINT` and then 75 MB at `pg_ctl stop` 4 s later, while
/// its files' rate said 3.4 MB (est./actual 0.37, e2e, both profiles). So
/// the final round is expected to carry the flush again once, or the
/// steady rate over the interval when that is more. A one-off flush (a
/// command that writes a file) makes this an overestimate by at most its
/// size, on the side strict mode can afford.
///
/// Those bytes are converted to time at the best pace any round moved its
/// own payload beyond [`FINAL_FIXED`] and its waits for a CPU
/// (`final_pace`), not at the link's, after the shortest later
/// scan (`final_scan`) and that fixed cost: a flush is pages scattered
/// over the data files, and a round of them costs reading the bases,
/// patching and verifying at both ends far more than carrying the few
/// bytes that differ (the PostgreSQL
/// runs: 3-8 MB on the wire for 54-96 MB of changed chunks). The link
/// rate, measured over the first round's whole files, says nothing about
/// that cost: on it the estimate was 1.4-2x the actual downtime. The best
/// round, not the hook's: the hook's round runs beside the checkpoint it
/// caused, the slowest of all (stop-26 sweep at rates 1000 to unthrottled:
/// the final round moved 1.5-2x faster per byte than the hook's round,
/// 1.15-1.45x faster than the best round; `tests.rs`, `HOOK`). The steady
/// rate's bytes, when more, go at that rate too: they are the same pages.
pub fn estimate_after_hook(rounds: &[RoundMeasure], t: &Targets, steady_rate: f64) -> Estimate {
    let steady = estimate_at_rate(rounds, t, steady_rate);
    let flush = hook_flush(rounds, steady_rate);
    let fixed = FINAL_FIXED.as_secs_f64();
    let best = rounds
        .iter()
        .filter_map(|r| final_pace(r, fixed))
        .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
    let link = link_pace(&steady);
    let Some(rate) = best.or(link) else {
        return steady;
    };
    let final_bytes = flush.max(steady.final_bytes);
    let paced = Estimate {
        final_bytes,
        downtime: final_scan(rounds, final_bytes as f64)
            + Duration::from_secs_f64(fixed + final_bytes as f64 / rate),
        ..steady
    };
    // No flush told apart from the app's steady writes: the steady
    // estimate, unless the rounds' own pace makes the final round shorter.
    // Each errs long where the other holds: the steady one takes the last
    // round's scan and the link rate with the rounds' waits for a CPU in
    // them (PostgreSQL at rate 2000 on one core, stop 41: its hook round
    // scanned for 6.6 s beside the checkpoint and the rounds carried 29
    // MB/s, so 31.2 s for 4.9 s measured; paced, 5.0 s), and the paced one
    // a fixed cost fitted on a large database, too much for a small quiet
    // volume.
    if flush == 0 && paced.downtime >= steady.downtime {
        return steady;
    }
    paced
}

/// What the hook's round (the last of `rounds`) carried beyond the app's
/// steady writes since the previous scan: the hook's flush. 0 when that is
/// too little to tell from an ordinary round.
///
/// It says how full the app's buffers were at the hook, not how fast they
/// fill again before shutdown: at PostgreSQL rate 500 (stop-30 sweep) a
/// 340 MB flush was followed by a final round of 118 MB, at rate 1000 a
/// 372 MB flush by 244 MB, and unthrottled by as much again (443 MB). So
/// pre-copy always takes one catch-up round after such a round when it
/// would be shorter ([`catch_up_shrinks`]), which measures the refill
/// ([`estimate_after_catch_up`]), and [`estimate_after_hook`] (the flush
/// again) stays for when it would not.
pub fn hook_flush(rounds: &[RoundMeasure], steady_rate: f64) -> u64 {
    let [.., prev, last] = rounds else {
        return 0;
    };
    let expected = steady_rate * prev.wall.as_secs_f64();
    let flush = f64_to_u64((last.bytes_moved as f64 - expected).max(0.0).round());
    if flush < LINK_SAMPLE_MIN_BYTES.max(last.bytes_moved / 10) {
        0
    } else {
        flush
    }
}

/// The fixed cost of a final round after a hook, and of the rounds it is
/// compared with: connection, manifest, the receiver's plan over the whole
/// manifest, syncs and commit. A constant, measured, not derived from the
/// rounds: after a hook the rounds are bound by applying pages (reading
/// bases, patching, verifying), and neither their residue beyond the link's
/// rate ([`fixed_cost`]: 0.5 s in the stop-29 runs, where whole final
/// rounds of 51-55 MB took 0.5-0.6 s; ~0 at rate 250, where the first
/// round's wire rate was the scan's, not the link's) nor any other split of
/// their time tells it apart. Over the PostgreSQL sweeps of
/// `converge/tests.rs` (stops 26 and 29, pgbench scale 30, ~16,500 chunks)
/// a term of 0.15-0.25 s put every case within 0.7-1.3 of its downtime;
/// without one, final rounds of 25-30 MB came out at 0.5 (their ~0.45 s of
/// downtime is mostly this).
pub const FINAL_FIXED: Duration = Duration::from_millis(200);

/// Payload bytes per second the final round is expected to move, from
/// round `r`'s pace beyond `fixed` seconds of fixed cost, sped up by the
/// larger of [`FINAL_ROUND_SPEEDUP`] and what the round's waits for a CPU
/// slowed it by (its transfer over the transfer without them, [`unwaited`]).
/// None for a round too small to say, or too short: one whose transfer is
/// mostly the fixed cost would give its bytes any pace at all.
///
/// Why the larger: the constant was fitted on rounds that waited for a
/// fifth of their transfer or less (PostgreSQL up to rate 1000), where it
/// holds (the final round went 1.0-1.5x their pace); a round that waited
/// for most of its transfer beside an application that keeps the CPU busy
/// goes that much faster alone (`STARVED` in `tests.rs`). Taken without its
/// waits and not sped up further, a lightly loaded round put the estimate
/// at 1.28-1.39 of the downtime at rate 250, where the constant gave
/// 0.86-1.08.
fn final_pace(r: &RoundMeasure, fixed: f64) -> Option<f64> {
    let t = r.transfer.as_secs_f64();
    apply_rate(r).filter(|_| t >= 2.0 * fixed).map(|_| {
        // `unwaited` keeps at least a quarter of a nonzero transfer.
        let speedup = FINAL_ROUND_SPEEDUP.max(t / unwaited(r));
        speedup * r.bytes_moved as f64 / (t - fixed)
    })
}

/// A round's transfer in seconds, less the time the source's threads stood
/// runnable without a CPU (`transfer_wait`, none when not measured), at most
/// [`WAIT_SHARE_MAX`] of it.
///
/// Why: pre-copy runs in an idle cpu group (`--precopy-priority idle`), and
/// an application that keeps the CPU busy leaves its rounds little of it;
/// the final round runs with the application stopped. PostgreSQL at pgbench
/// rate 2000 and unthrottled, one core (stop 41, `tests.rs`, `STARVED`): the
/// pre-copy rounds moved 24-110 MB/s, the final round 144-186 MB/s, and the
/// rounds' threads stood waiting for 40-80% of their transfers. Sped up by
/// the constant alone, those rounds made the estimate 1.6-1.9x the
/// downtime.
///
/// The cap: the waits are summed over the threads, and two threads waiting
/// at once count twice, though the round lost that time once.
fn unwaited(r: &RoundMeasure) -> f64 {
    without_waits(r.transfer, r.transfer_wait).as_secs_f64()
}

/// `took` less `wait` (none when not measured), at most [`WAIT_SHARE_MAX`]
/// of it: the time a part of a round would have taken with a CPU of its own.
fn without_waits(took: Duration, wait: Option<Duration>) -> Duration {
    took.saturating_sub(wait.unwrap_or_default().min(took.mul_f64(WAIT_SHARE_MAX)))
}

/// At most this share of a round's transfer is taken out as waits for a
/// CPU by [`unwaited`]: its pace is raised at most 4x.
pub const WAIT_SHARE_MAX: f64 = 0.75;

/// The final round's pace from the link's rate, when no round says more
/// (too small to measure a pace): sped up as a round that waited little
/// ([`final_pace`]).
fn link_pace(steady: &Estimate) -> Option<f64> {
    (steady.link_rate > 0.0).then_some(steady.link_rate * FINAL_ROUND_SPEEDUP)
}

/// How long the final round's scan is expected to take, for a final round
/// of `final_bytes`: the shortest of the rounds after the first (the first
/// walks a cold volume), each as [`scan_for`] scales it, not the last
/// round's. The final scan runs with the app stopped; the hook's round
/// scans beside the checkpoint it caused, the slowest of all (PostgreSQL
/// unthrottled on default, stop-29 sweep: 1575 ms for the hook round's
/// scan, 354 ms for the final round's; the shortest later scan was 129
/// ms).
fn final_scan(rounds: &[RoundMeasure], final_bytes: f64) -> Duration {
    let later = rounds.get(1..).filter(|l| !l.is_empty()).unwrap_or(rounds);
    later
        .iter()
        .map(|r| scan_for(r, final_bytes))
        .min()
        .unwrap_or_default()
}

/// A scan of `final_bytes` of payload, from round `r`'s: its walk (the
/// scan less its reads: entries, the manifest's chunks, which do not
/// shrink with the payload) and its reads scaled by `final_bytes` over
/// the round's payload. Taken unscaled when the reads were not measured,
/// the round is too small to scale from, or its scan read more than
/// [`SCALED_READ_MAX`] times what it moved (a round whose reads say little
/// about its payload: on gold, the round after the first re-reads whole
/// chunks around pages written back unchanged, 600 MB read for 65 MB
/// moved).
///
/// The time its reads waited for a read cap (`--read-limit` on later
/// rounds) is left out: the final round is never capped. With later rounds
/// capped at 150M on gold, the capped reads made the final scan 397 ms for
/// 93 ms measured (stop 40).
///
/// Why: the shortest later scan alone, unscaled, ran 1.3-2x the final
/// scan's time on default (stop 38: 142-197 ms against 45-113 ms), and
/// put two estimates past 1.5x the downtime (stop 37, 1.51 and 1.52). The
/// scale alone, without a walk, would make a tree of many small files
/// with a small final round all but free to scan.
///
/// Last, the whole is shrunk by the share of the scan its threads stood
/// waiting for a CPU (`scan_wait`, as [`without_waits`] takes it from a
/// transfer): the final scan runs with the application stopped. PostgreSQL
/// unthrottled on gold (stop 41): the later rounds' scans took 2.1-4.7 s
/// in the idle cpu group beside the database, the final scan 270 ms, and
/// that scan alone put the estimate at 1.55x the downtime.
fn scan_for(r: &RoundMeasure, final_bytes: f64) -> Duration {
    let scaled = scan_scaled(r, final_bytes);
    if r.scan.is_zero() {
        return scaled;
    }
    let share = without_waits(r.scan, r.scan_wait).as_secs_f64() / r.scan.as_secs_f64();
    scaled.mul_f64(share)
}

/// [`scan_for`] before the waits for a CPU come out.
fn scan_scaled(r: &RoundMeasure, final_bytes: f64) -> Duration {
    let moved = r.bytes_moved as f64;
    if r.scan_read.is_zero()
        || r.bytes_moved < LINK_SAMPLE_MIN_BYTES
        || r.bytes_read as f64 > SCALED_READ_MAX * moved
    {
        return r.scan;
    }
    let read = r.scan_read.min(r.scan);
    // The cap's waits are neither walk nor the final round's reads.
    let unpaced = read.saturating_sub(r.scan_paced);
    (r.scan - read) + unpaced.mul_f64(final_bytes / moved)
}

/// A round whose scan read more than this many times its payload is taken
/// unscaled by [`scan_for`].
pub const SCALED_READ_MAX: f64 = 2.0;

/// The estimate after a catch-up round (the last of `rounds`; the hook ran
/// again before it, see [`catch_up_shrinks`]). Beyond what the app's files
/// took in at `steady_rate` while the round before it ran, that round
/// carried the hook's flush of what the app's buffers took in meanwhile
/// (of its own bytes, [`own_bytes`]: not what the round before it left
/// dirty, which the final round does not carry again).
/// Scaled to the last round's own time, that is what the app flushes at
/// shutdown, and the final round carries it with the files' steady writes.
/// Scaled down when the last round was shorter, never up: a round can be
/// long because it waited for a CPU, not because the app wrote more, and a
/// buffer pool's dirty pages grow slower than the time (a page dirtied
/// twice is flushed once). Scaled up, a catch-up round of 15 s after one
/// of 9 s (PostgreSQL unthrottled on gold, pre-copy in the low-weight
/// group, stop 44) made the final round 987 MB where 546 MB came, and the
/// estimate 2.44x the downtime. Of the runs replayed in `tests.rs`, one
/// other was scaled up (`STARVED`, gold at rate 2000: 1.26, now 1.20).
///
/// The final round goes at the pace the last round moved its payload
/// beyond [`FINAL_FIXED`] and its waits for a CPU (`final_pace`: the app
/// has stopped), after the shortest later scan and that fixed cost. (The
/// rounds' residue beyond the link's rate as the fixed cost, on top of the
/// last round's whole pace, counted the apply time twice: 1.54x the
/// downtime at rate 500 on default in the stop-29 sweep, `tests.rs`,
/// `CATCH_UP`.) Not the hook round's model ([`estimate_after_hook`]: the
/// whole flush again), which after a catch-up counts the buffers of the
/// long hook round: 1.5-1.7x the actual downtime at PostgreSQL rates 250
/// and 500 (`tests.rs`, `CATCH_UP`).
pub fn estimate_after_catch_up(rounds: &[RoundMeasure], t: &Targets, steady_rate: f64) -> Estimate {
    let steady = estimate_at_rate(rounds, t, steady_rate);
    let [.., prev, last] = rounds else {
        return steady;
    };
    let prev_s = prev.wall.as_secs_f64().max(1e-3);
    let flush = (own_bytes(prev, last) - steady_rate * prev_s).max(0.0);
    let shutdown = flush * (last.wall.as_secs_f64() / prev_s).min(1.0);
    let final_bytes = (steady.final_bytes as f64 + shutdown).max(not_converging_floor(rounds));
    let fixed = FINAL_FIXED.as_secs_f64();
    let link = link_pace(&steady);
    let Some(rate) = final_pace(last, fixed).or(link) else {
        return steady;
    };
    Estimate {
        final_bytes: f64_to_u64(final_bytes.round()),
        downtime: final_scan(rounds, final_bytes)
            + Duration::from_secs_f64(fixed + final_bytes / rate),
        ..steady
    }
}

/// The least a final round is expected to carry after a catch-up round
/// (the last of `rounds`) whose own bytes ([`own_bytes`]) were at least
/// [`SHRINK_RATIO`] of the round before it (what that one moved and left
/// dirty): [`NOT_CONVERGING_FLOOR`] of its own bytes, scaled down by how
/// much it shrank. 0 when it shrank more.
///
/// Why: rounds that stop shrinking mean the application dirties as fast as
/// pre-copy carries, and each interval fills to about a round's size
/// whatever its length. The flush scaled to the last round's length
/// ([`estimate_after_catch_up`]) assumes the buffers fill in proportion to
/// the time; a database that dirties random pages unthrottled refills
/// them sooner, and after the hook's checkpoint every first write of a page
/// also logs the whole page. PostgreSQL unthrottled on default (stops
/// 47-49, `tests.rs`, `LOW_GROUP`): catch-up rounds of 6-7 s after hook
/// rounds of 14-16 s; the final rounds carried 0.71-0.75 of the catch-up
/// round's bytes where the scaled flush said 0.5, and the estimate came out
/// at 0.62-0.77 of the downtime (one run whose report was lost: 0.40, with
/// a final round of 1.2 times its catch-up round's bytes). With the floor,
/// 0.90-1.07.
///
/// Its own bytes, not all it moved: what the round before it left dirty
/// would make a round that shrank look as if it had not (stop 49, `s49c
/// default-max`: the round before moved and left dirty 624 MB, the last
/// moved 592 MB, 188 MB of them that round's leftovers: 404 MB of its own).
pub fn not_converging_floor(rounds: &[RoundMeasure]) -> f64 {
    let [.., prev, last] = rounds else {
        return 0.0;
    };
    let own = own_bytes(prev, last);
    let shrink = own / round_size(prev).max(1.0);
    if shrink < SHRINK_RATIO {
        return 0.0;
    }
    NOT_CONVERGING_FLOOR * own * shrink.min(1.0)
}

/// What round `last` moved beyond what the round before it (`prev`) left
/// dirty, with what `last` left dirty itself (the next round moves it).
///
/// Why: a catch-up round also carries what the source rewrote under the
/// round before it (the hook's checkpoint still writing), and the final
/// round repeats none of that. Taken whole, a second catch-up round that
/// moved 592 MB, 188 MB of them the first one's leftovers, made its flush
/// 504 MB and the final round's estimate 556 MB where 353 MB came: 1.62x
/// the downtime (stop 49, `s49c default-max`; 1.15 with its own bytes).
fn own_bytes(prev: &RoundMeasure, last: &RoundMeasure) -> f64 {
    (last.bytes_moved.saturating_sub(prev.bytes_dirty) + last.bytes_dirty) as f64
}

/// The share of a catch-up round that did not shrink the final round is
/// expected to carry at least ([`not_converging_floor`]).
pub const NOT_CONVERGING_FLOOR: f64 = 0.8;

/// Whether one more pre-copy round after `last` (the hook's round, or a
/// catch-up round after it) would take at most [`CATCH_UP_SHRINK`] of its
/// time: it carries what the app dirtied at `steady_rate` during `last`,
/// moved at the rate `last` moved its payload, after a scan as long as
/// `last`'s. A database's checkpoint makes the hook's round long (PostgreSQL
/// at pgbench scale 30: 6.3 s for 397 MB of changed chunks), and the app
/// dirties pages all that time, in its files (156 of the final round's
/// 206 MB) and in its buffers (flushed at shutdown): a catch-up round runs
/// the hook again and carries both while the app still runs.
pub fn catch_up_shrinks(last: &RoundMeasure, steady_rate: f64) -> bool {
    let Some(rate) = apply_rate(last) else {
        return false;
    };
    let wall = last.wall.as_secs_f64();
    let next = last.scan.as_secs_f64() + steady_rate * wall / rate;
    next <= wall * CATCH_UP_SHRINK
}

/// A catch-up round must be predicted to take at most this share of the
/// round before it (see [`catch_up_shrinks`]): the final round carries what
/// the app dirties over the last round's time, so a shorter round is a
/// smaller final one. At 0.5, a PostgreSQL hook round of 6.5 s with 24-40
/// MB/s dirtied under it got no catch-up (predicted 3.0-4.1 s) and the final
/// round carried 254 MB (3.3 s of downtime; 0.95-1.2 s with catch-ups).
pub const CATCH_UP_SHRINK: f64 = 0.8;

/// At most this many catch-up rounds after the hook's round.
pub const MAX_CATCH_UP: usize = 2;

/// How much faster the final round moves a byte of flushed pages than the
/// hook's round did: the application has stopped, so the round no longer
/// shares the CPU and the disk with it. Measured, not derived: in the five
/// PostgreSQL runs of `converge/tests.rs` (`MEASURED`) the final round went
/// 1.2-1.45x faster per byte than the hook's round (on a machine shared
/// with other builds, where the app's share is a fraction of the load; an
/// app alone on its host would free more). The middle of that range. A
/// round that waited for a CPU longer than that is sped up by its waits
/// instead (`final_pace`).
pub const FINAL_ROUND_SPEEDUP: f64 = 1.3;

/// Payload bytes per second a round moved end to end: its bytes over its
/// transfer (fetching, writing, applying and verifying them, with the
/// round's fixed cost spread over them). None for a round too small to say.
pub fn apply_rate(r: &RoundMeasure) -> Option<f64> {
    (r.bytes_moved >= LINK_SAMPLE_MIN_BYTES && !r.transfer.is_zero())
        .then(|| r.bytes_moved as f64 / r.transfer.as_secs_f64())
}

/// The decision after `rounds` (at least one) pre-copy rounds.
pub fn decide(rounds: &[RoundMeasure], t: &Targets) -> Decision {
    let est = estimate(rounds, t);
    let n = rounds.len();
    // One round gives no rate (it carried the whole volume): never "fits".
    // An estimate just under the target is taken only when another round
    // would not bring it under the margin: its fixed part (scan and the
    // round's fixed cost) is above the margin already, the rounds stopped
    // shrinking, or no rounds are left.
    let margin = FIT_MARGIN * t.max_downtime.as_secs_f64();
    let carry = if est.link_rate > 0.0 {
        est.final_bytes as f64 / est.link_rate
    } else {
        0.0
    };
    let fits = n >= 2
        && est.downtime <= t.max_downtime
        && (est.downtime.as_secs_f64() <= margin
            || est.downtime.as_secs_f64() - carry > margin
            || !last_shrank(&rounds[n - 2..])
            || n >= t.max_rounds as usize);
    let reason = if fits {
        Some(StopReason::Fits)
    } else if n >= 2 && est.outpaced() {
        Some(StopReason::WriteRateExceedsLink)
    } else if n >= 3 && !shrinking(&rounds[n - 3..]) {
        Some(StopReason::NotConverging)
    } else if n >= t.max_rounds as usize {
        Some(StopReason::MaxRounds)
    } else {
        None
    };
    match reason {
        None => Decision::Continue(est),
        Some(reason) if t.strict && est.downtime > t.max_downtime => Decision::Refuse {
            reason,
            estimate: est,
        },
        Some(reason) => Decision::Stop {
            reason,
            estimate: est,
        },
    }
}

/// A round's size as the shrink tests take it: what it moved and what it
/// left dirty (which the next round moves).
fn round_size(r: &RoundMeasure) -> f64 {
    (r.bytes_moved + r.bytes_dirty) as f64
}

/// Whether the last of two rounds moved (with what it left dirty) less
/// than [`SHRINK_RATIO`] of the one before.
fn last_shrank(two: &[RoundMeasure]) -> bool {
    matches!(two, [a, b] if round_size(b) < SHRINK_RATIO * round_size(a))
}

/// Whether the later of three rounds still shrink: each moves (with what it
/// left dirty) less than [`SHRINK_RATIO`] of the one before, or little.
fn shrinking(three: &[RoundMeasure]) -> bool {
    three.windows(2).any(|w| {
        round_size(&w[1]) < SHRINK_RATIO * round_size(&w[0])
            || round_size(&w[1]) < LINK_SAMPLE_MIN_BYTES as f64
    })
}

/// How the final round's bytes split around the unmount request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Composition {
    /// Dirtied between the last pre-copy round's scan and the unmount
    /// request (the app was running: a hook such as a checkpoint lands here).
    pub before_unmount: u64,
    /// Dirtied after the unmount request (the app's shutdown writes).
    pub after_unmount: u64,
}

/// Splits the final round's payload: at the measured dirty rate, the time
/// from the last pre-copy scan to the unmount request accounts for at most
/// `rate x time` of it; the rest was written after the request (shutdown
/// flushes). An estimate from the rate, not a second scan.
pub fn composition(final_bytes: u64, dirty_rate: f64, scan_to_request: Duration) -> Composition {
    let before = f64_to_u64((dirty_rate * scan_to_request.as_secs_f64()).round()).min(final_bytes);
    Composition {
        before_unmount: before,
        after_unmount: final_bytes - before,
    }
}

#[cfg(test)]
mod tests;

/// `x as u64` for a byte estimate (a rate times a duration), kept in one
/// place. The cast saturates: NaN and negatives give 0, values above
/// `u64::MAX` give `u64::MAX`; callers round first, so for any estimate that
/// fits (below 16 EiB) nothing is lost beyond the rounding they chose.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub fn f64_to_u64(x: f64) -> u64 {
    x as u64
}
