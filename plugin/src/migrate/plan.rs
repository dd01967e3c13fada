//! When to stop pre-copying and cut over (the rule of iterative pre-copy
//! migration): measure delivered throughput; cut over when the estimated
//! final round, dirty bytes at that throughput plus the time to scan, fits
//! the downtime target; stop iterating when a round does not shrink the dirty
//! set (the application writes as fast as we copy: more rounds do not help).
//!
//! Pure: observations in, a decision out.

use std::time::Duration;

/// A round must move at least this fraction less than the round before to
/// count as shrinking: 10% leaves room for noise in small rounds.
const SHRINK: f64 = 0.9;
/// Below this much wire time the throughput measurement is noise (a few
/// packets): such rounds do not feed the estimate.
const MIN_MEASURED: Duration = Duration::from_millis(50);
/// Rounds run at most this many times unless the caller says otherwise.
pub(crate) const DEFAULT_MAX_ROUNDS: u32 = 10;

/// What one pre-copy round showed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RoundObs {
    /// Chunk payload the destination fetched: data that changed since the
    /// round before (or everything, in round 1).
    pub(crate) dirty_bytes: u64,
    /// Bytes on the wire for it.
    pub(crate) wire_bytes: u64,
    /// Time from the round's request to the destination's answer.
    pub(crate) transfer: Duration,
    /// Time the source's scan took (the final round pays it too).
    pub(crate) scan: Duration,
    /// The source changed under the scan: the round is incomplete.
    pub(crate) stale: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Decision {
    /// Another pre-copy round.
    Continue { estimate: Duration },
    /// Stop the application and run the final round.
    Cutover { estimate: Duration, why: Why },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// The estimated final round fits the target.
    Fits,
    /// The last round did not shrink the dirty set.
    NotShrinking,
    /// The round limit was reached.
    MaxRounds,
}

/// Delivered throughput in bytes/s over all measured rounds; `None` until a
/// round moved enough to measure.
#[allow(
    clippy::cast_precision_loss,
    reason = "a rate: f64's 52 bits hold byte counts exactly to 4 PiB, and more is rounding"
)]
pub(crate) fn throughput(rounds: &[RoundObs]) -> Option<f64> {
    let (bytes, time) = rounds
        .iter()
        .filter(|r| r.transfer >= MIN_MEASURED)
        .fold((0u64, Duration::ZERO), |(b, t), r| {
            (b + r.wire_bytes.max(r.dirty_bytes), t + r.transfer)
        });
    (bytes > 0 && !time.is_zero()).then(|| bytes as f64 / time.as_secs_f64())
}

/// The final round's expected duration if the next round moved what the
/// last one did: scan + dirty / throughput.
#[allow(
    clippy::cast_precision_loss,
    reason = "an estimate: f64's 52 bits hold byte counts exactly to 4 PiB"
)]
pub(crate) fn estimate(rounds: &[RoundObs]) -> Duration {
    let Some(last) = rounds.last() else {
        return Duration::MAX;
    };
    let transfer = match throughput(rounds) {
        Some(bps) => Duration::from_secs_f64(last.dirty_bytes as f64 / bps),
        // Nothing measurable moved: the transfer time itself is the estimate.
        None => last.transfer,
    };
    last.scan + transfer
}

/// The last round moved at least [`SHRINK`] of what the one before did.
#[allow(
    clippy::cast_precision_loss,
    reason = "a 10% threshold: rounding past 4 PiB cannot change the answer"
)]
fn shrunk_too_little(last: u64, prev: u64) -> bool {
    last as f64 >= prev as f64 * SHRINK
}

/// Decides after each round.
pub(crate) fn decide(rounds: &[RoundObs], target: Duration, max_rounds: u32) -> Decision {
    let estimate = estimate(rounds);
    let n = u32::try_from(rounds.len()).unwrap_or(u32::MAX);
    let Some(last) = rounds.last() else {
        return Decision::Continue { estimate };
    };
    if !last.stale && estimate <= target {
        return Decision::Cutover {
            estimate,
            why: Why::Fits,
        };
    }
    if n >= max_rounds {
        return Decision::Cutover {
            estimate,
            why: Why::MaxRounds,
        };
    }
    // Round 1 copies everything: the comparison starts at round 3 (round 2
    // against round 2's predecessor would compare a delta with the whole).
    if n >= 3 && !last.stale {
        let prev = rounds[rounds.len() - 2];
        if !prev.stale && shrunk_too_little(last.dirty_bytes, prev.dirty_bytes) {
            return Decision::Cutover {
                estimate,
                why: Why::NotShrinking,
            };
        }
    }
    Decision::Continue { estimate }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(dirty: u64, transfer_ms: u64, scan_ms: u64) -> RoundObs {
        RoundObs {
            dirty_bytes: dirty,
            wire_bytes: dirty,
            transfer: Duration::from_millis(transfer_ms),
            scan: Duration::from_millis(scan_ms),
            stale: false,
        }
    }

    const MB: u64 = 1_000_000;
    const TWO_S: Duration = Duration::from_secs(2);

    #[test]
    fn first_full_round_continues_then_a_small_delta_cuts_over() {
        // 1 GB at 12.5 MB/s = 80 s.
        let mut r = vec![obs(1000 * MB, 80_000, 600)];
        assert!(matches!(decide(&r, TWO_S, 10), Decision::Continue { .. }));
        // 80 MB written meanwhile (1 MB/s): 6.4 s -> continue.
        r.push(obs(80 * MB, 6_400, 100));
        assert!(matches!(decide(&r, TWO_S, 10), Decision::Continue { .. }));
        // 6.4 MB: 0.5 s + 0.1 s scan -> fits.
        r.push(obs(6_400_000, 512, 100));
        match decide(&r, TWO_S, 10) {
            Decision::Cutover { estimate, why } => {
                assert_eq!(why, Why::Fits);
                assert!(estimate < Duration::from_millis(700), "{estimate:?}");
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn a_writer_faster_than_the_link_stops_the_rounds() {
        let r = vec![
            obs(1000 * MB, 80_000, 600),
            obs(500 * MB, 40_000, 300),
            obs(480 * MB, 38_400, 300),
        ];
        assert_eq!(
            decide(&r, TWO_S, 10),
            Decision::Cutover {
                estimate: estimate(&r),
                why: Why::NotShrinking
            }
        );
    }

    #[test]
    fn a_stale_round_never_cuts_over_on_fit_and_the_limit_holds() {
        let mut stale = obs(MB, 80, 10);
        stale.stale = true;
        let r = vec![obs(100 * MB, 8_000, 10), stale];
        assert!(matches!(decide(&r, TWO_S, 10), Decision::Continue { .. }));
        assert!(matches!(
            decide(&r, TWO_S, 2),
            Decision::Cutover {
                why: Why::MaxRounds,
                ..
            }
        ));
    }

    #[test]
    fn scan_time_counts_in_the_estimate() {
        // Tiny delta, slow scan (a big image re-hashed): 2.5 s does not fit 2 s.
        let r = vec![obs(1000 * MB, 80_000, 2_500), obs(MB, 80, 2_500)];
        let e = estimate(&r);
        assert!(e > TWO_S, "{e:?}");
        assert!(matches!(decide(&r, TWO_S, 10), Decision::Continue { .. }));
    }

    #[test]
    fn unmeasurable_rounds_fall_back_to_their_own_time() {
        let r = vec![obs(1000, 1, 3)];
        assert_eq!(throughput(&r), None);
        assert_eq!(estimate(&r), Duration::from_millis(4));
    }
}
