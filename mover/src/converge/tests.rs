use std::time::Duration;

use proptest::prelude::*;

use super::*;

const MB: u64 = 1 << 20;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A round that moved `moved` bytes over a link of `link` bytes/s (wire =
/// payload), with `dirty` left under it, a 100 ms scan and 50 ms of fixed
/// cost per round.
fn round(moved: u64, dirty: u64, link: u64) -> RoundMeasure {
    let transfer = ms(50) + Duration::from_secs_f64(moved as f64 / link as f64);
    RoundMeasure {
        bytes_moved: moved,
        bytes_dirty: dirty,
        wire_bytes: moved,
        scan: ms(100),
        transfer,
        wall: ms(100) + transfer,
    }
}

fn targets(max_ms: u64) -> Targets {
    Targets {
        max_downtime: ms(max_ms),
        max_rounds: 10,
        strict: false,
        link_rate: None,
        cutover_gap: Duration::ZERO,
    }
}

#[test]
fn the_rate_comes_from_the_interval_not_the_last_round() {
    // 12.5 MB/s link. Round 1 carries 100 MB (12.05 s); round 2 carries
    // what 12.05 s of writes dirtied (6 MB): 0.5 MB/s.
    let link = 12_500_000;
    let r1 = round(100 * MB, 0, link);
    let r2 = round(6 * MB, 0, link);
    let rate = dirty_rate(&[r1, r2]);
    let want = 6.0 * MB as f64 / r1.wall.as_secs_f64();
    assert!((rate - want).abs() < 1.0, "{rate} vs {want}");
    // The final round carries rate x round 2's wall time, not round 2's 6 MB.
    let e = estimate(&[r1, r2], &targets(1000));
    let final_want = super::f64_to_u64(want * r2.wall.as_secs_f64());
    assert!(
        e.final_bytes.abs_diff(final_want) < 16,
        "{} vs {final_want}",
        e.final_bytes
    );
    // Measured over the transfer, fixed cost included: within 5%.
    assert!(
        (e.link_rate - link as f64).abs() / (link as f64) < 0.05,
        "{}",
        e.link_rate
    );
    // Downtime: scan 100 ms + fixed 50 ms + bytes over the link (the link
    // given: measured, it absorbs some of the fixed cost).
    let mut t = targets(1000);
    t.link_rate = Some(link as f64);
    let e = estimate(&[r1, r2], &t);
    let dt = 0.15 + final_want as f64 / link as f64;
    assert!(
        (e.downtime.as_secs_f64() - dt).abs() < 0.01,
        "{:?} vs {dt}",
        e.downtime
    );
}

#[test]
fn partial_rounds_count_what_changed_under_them() {
    // A round the source outran: what it left dirty is a rate too.
    let link = 12_500_000;
    let r = round(50 * MB, 10 * MB, link);
    let rate = dirty_rate(&[r]);
    assert!((rate - 10.0 * MB as f64 / r.wall.as_secs_f64()).abs() < 1.0);
}

/// (rounds as (moved MB, dirty MB), max downtime ms, strict) -> decision kind.
#[test]
fn decisions() {
    let link = 12_500_000; // 100 Mbit/s
    type Case = (&'static [(u64, u64)], u64, bool, &'static str);
    let cases: &[Case] = &[
        // Converging quickly: the estimate soon fits.
        (&[(1000, 0), (20, 0)], 2000, false, "stop:fits"),
        // Still shrinking, does not fit yet: go on.
        (&[(1000, 0), (400, 0)], 1000, false, "continue"),
        // Writer faster than the link: every round carries a full wall time
        // of writes at > 12.5 MB/s.
        (
            &[(1000, 0), (1200, 100)],
            1000,
            false,
            "stop:write-rate-exceeds-link",
        ),
        (
            &[(1000, 0), (1200, 100)],
            1000,
            true,
            "refuse:write-rate-exceeds-link",
        ),
        // Strict, but it fits: cut over.
        (&[(1000, 0), (5, 0)], 2000, true, "stop:fits"),
        // One round never fits, however small: no rate yet.
        (&[(1, 0)], 60_000, false, "continue"),
        // Back to back, a plateau means writes at link speed.
        (
            &[(1000, 0), (60, 0), (58, 0), (57, 0)],
            100,
            false,
            "stop:write-rate-exceeds-link",
        ),
    ];
    for (i, (rs, max, strict, want)) in cases.iter().enumerate() {
        let rounds: Vec<_> = rs
            .iter()
            .map(|&(m, d)| round(m * MB, d * MB, link))
            .collect();
        let mut t = targets(*max);
        t.strict = *strict;
        let got = match decide(&rounds, &t) {
            Decision::Continue(_) => "continue".to_string(),
            Decision::Stop { reason, .. } => format!("stop:{}", reason.as_str()),
            Decision::Refuse { reason, .. } => format!("refuse:{}", reason.as_str()),
        };
        assert_eq!(&got, want, "case {i}: {:?}", decide(&rounds, &t).estimate());
    }
}

#[test]
fn a_plateau_under_the_link_rate_is_not_converging() {
    // Long scans: 20 MB per 10 s interval (2 MB/s on a 12.5 MB/s link),
    // round after round.
    let r = RoundMeasure {
        bytes_moved: 20 * MB,
        bytes_dirty: 0,
        wire_bytes: 20 * MB,
        scan: Duration::from_secs(8),
        transfer: Duration::from_secs_f64(20.0 * MB as f64 / 12.5e6),
        wall: Duration::from_secs(10),
    };
    let d = decide(&[r, r, r], &targets(100));
    assert!(
        matches!(
            d,
            Decision::Stop {
                reason: StopReason::NotConverging,
                ..
            }
        ),
        "{d:?}"
    );
    assert!(!d.estimate().outpaced());
    // Two rounds are not enough to call it.
    assert!(matches!(
        decide(&[r, r], &targets(100)),
        Decision::Continue(_)
    ));
}

#[test]
fn max_rounds_stops() {
    let link = 12_500_000;
    let mut t = targets(10);
    t.max_rounds = 2;
    // Shrinking, not fitting a 10 ms target, two rounds: the limit.
    let rounds = [round(1000 * MB, 0, link), round(100 * MB, 0, link)];
    assert!(matches!(
        decide(&rounds, &t),
        Decision::Stop {
            reason: StopReason::MaxRounds,
            ..
        }
    ));
}

#[test]
fn a_known_link_rate_wins_over_measuring() {
    let rounds = [
        round(100 * MB, 0, 12_500_000),
        round(10 * MB, 0, 12_500_000),
    ];
    let mut t = targets(1000);
    t.link_rate = Some(1_000_000.0);
    assert_eq!(estimate(&rounds, &t).link_rate, 1_000_000.0);
}

#[test]
fn composition_splits_at_the_request() {
    let c = composition(10 * MB, MB as f64, Duration::from_secs(3));
    assert_eq!(c.before_unmount, 3 * MB);
    assert_eq!(c.after_unmount, 7 * MB);
    // Never more before than the round carried.
    let c = composition(MB, MB as f64, Duration::from_secs(3));
    assert_eq!((c.before_unmount, c.after_unmount), (MB, 0));
}

proptest! {
    /// More bytes dirtied never lowers the estimate; strict mode only ever
    /// refuses what does not fit; "fits" always fits.
    #[test]
    fn estimate_is_monotone(
        first in 1u64..2000, moved in 0u64..500, extra in 1u64..500,
        link in 1_000_000u64..50_000_000, max_ms in 1u64..10_000, strict: bool,
    ) {
        let a = [round(first * MB, 0, link), round(moved * MB, 0, link)];
        let b = [a[0], round((moved + extra) * MB, 0, link)];
        let mut t = targets(max_ms);
        t.link_rate = Some(link as f64);
        prop_assert!(estimate(&b, &t).downtime >= estimate(&a, &t).downtime);
        t.strict = strict;
        if let Decision::Refuse { estimate, .. } = decide(&a, &t) {
            prop_assert!(strict && estimate.downtime > t.max_downtime);
        }
        if let Decision::Stop { reason: StopReason::Fits, estimate } = decide(&a, &t) {
            prop_assert!(estimate.downtime <= t.max_downtime);
        }
    }
}
