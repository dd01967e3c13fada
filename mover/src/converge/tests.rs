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
        ..Default::default()
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
        // Fits, but only just (est. 0.92 s for 1 s: 9.6 MB at 12.5 MB/s
        // + 0.15 s) while the rounds still shrink: one more round.
        (&[(1000, 0), (95, 0)], 1000, false, "continue"),
        // The same estimate comfortably within the target: cut over.
        (&[(1000, 0), (95, 0)], 1200, false, "stop:fits"),
        // Just under the target, but nearly all of it the round's fixed
        // cost (0.15 s of 0.18 s): another round would not shrink it.
        (&[(1000, 0), (1, 0)], 180, false, "stop:fits"),
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
        ..Default::default()
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

/// Measured cases (issue 11): PostgreSQL 15 at pgbench scale 5, 4 clients
/// at `--rate 500`, `--before-cutover "psql -c CHECKPOINT"`, `pg_ctl stop -m
/// fast` at the unmount request, 100 Mbit/s link, on a machine shared with
/// other builds (load 6-10). Per round: payload, left dirty, wire bytes,
/// scan ms, transfer ms (a round's wall time is its scan and transfer:
/// rounds run back to back, the hook runs between them). The last row is
/// the round after the hook; then the measured downtime. The files' own
/// rate (0.1-0.8 MB/s) cannot see the 54-90 MB the server flushed again at
/// shutdown; the hook's round measured it, and how fast such a round goes.
/// The rows are BENCHMARKS.md's runs ("Issue 11, live4" and "live5").
type Row = (u64, u64, u64, u64, u64);
const MEASURED: &[(&str, [Row; 3], u64)] = &[
    // e2e `migrate_postgres::`, 2026-12-02 04:31 UTC, load 9.
    (
        "e2e default 04:31",
        [
            (143_665_909, 2_097_152, 11_559_344, 1634, 7443),
            (7_613_500, 65_536, 735_903, 878, 609),
            (79_397_545, 78_911, 4_562_928, 1155, 2807),
        ],
        3505,
    ),
    (
        "e2e gold 04:31",
        [
            (147_026_229, 131_072, 12_151_958, 2220, 5371),
            (1_057_940, 65_536, 491_403, 1467, 425),
            (73_870_932, 65_536, 3_395_593, 1675, 5277),
        ],
        4671,
    ),
    // `bench/migrate.sh --short`, default, 2026-12-02 04:45 UTC, load 8.4.
    (
        "bench default 04:45",
        [
            (164_365_133, 7_591_019, 14_545_064, 1508, 5364),
            (32_665_654, 922_753, 1_685_423, 912, 1228),
            (97_316_344, 13_004, 6_506_407, 1099, 2880),
        ],
        2324,
    ),
    // e2e `migrate_postgres::` on main's build, 2026-12-02 07:29 UTC, load
    // 10-11 (pgbench's latency 0.7-1.1 s before migrate: it could not keep
    // its rate). Gold ran seven pre-copy rounds; its last three are here.
    (
        "e2e default 07:29",
        [
            (145_722_101, 1_048_576, 11_562_663, 2630, 8796),
            (7_932_988, 65_536, 721_636, 1130, 1109),
            (80_218_518, 112_952, 4_607_975, 2128, 5821),
        ],
        7169,
    ),
    (
        "e2e gold 07:30",
        [
            (372_367, 65_536, 280_402, 2727, 337),
            (468_385, 65_536, 319_673, 1816, 627),
            (84_352_893, 65_536, 4_266_879, 2251, 6558),
        ],
        5665,
    ),
];

fn measured_rounds(rows: &[Row]) -> Vec<RoundMeasure> {
    rows.iter()
        .map(|&(moved, dirty, wire, scan, transfer)| RoundMeasure {
            bytes_moved: moved,
            bytes_dirty: dirty,
            wire_bytes: wire,
            scan: ms(scan),
            transfer: ms(transfer),
            wall: ms(scan + transfer),
            ..Default::default()
        })
        .collect()
}

/// The estimate `precopy` makes after the hook's round (the last row).
fn after_hook(rounds: &[RoundMeasure]) -> Estimate {
    let t = Targets {
        max_downtime: ms(2000),
        max_rounds: 10,
        strict: false,
        link_rate: None,
        // `daffe migrate`'s fence poll.
        cutover_gap: ms(20),
    };
    // The steady rate as pre-copy measured it before the hook.
    let n = rounds.len();
    let steady = dirty_rate(&rounds[..n - 1]);
    let last = rounds[n - 1];
    let rate = steady.max(last.bytes_dirty as f64 / last.wall.as_secs_f64());
    estimate_after_hook(rounds, &t, rate)
}

#[test]
fn measured_cases_after_a_hook_are_estimated_within_half() {
    let mut out = Vec::new();
    for (case, rows, actual_ms) in MEASURED {
        let e = after_hook(&measured_rounds(rows));
        let ratio = e.downtime.as_secs_f64() * 1000.0 / *actual_ms as f64;
        out.push(format!("{case}: {ratio:.2}"));
        assert!(
            (0.5..=1.5).contains(&ratio),
            "{case}: est./actual {ratio:.2}"
        );
    }
    eprintln!("est./actual: {}", out.join(", "));
}

#[test]
fn the_flush_goes_at_the_best_rounds_rate_not_the_links() {
    // The flush costs what the fastest round paid per byte beyond the
    // fixed cost, less what the stopped app gives back, after the shortest
    // later scan and the fixed cost.
    let rounds = measured_rounds(&MEASURED[0].1);
    let e = after_hook(&rounds);
    let fixed = FINAL_FIXED.as_secs_f64();
    let best = rounds
        .iter()
        .filter(|r| apply_rate(r).is_some() && r.transfer.as_secs_f64() >= 2.0 * fixed)
        .map(|r| r.bytes_moved as f64 / (r.transfer.as_secs_f64() - fixed))
        .fold(0.0, f64::max);
    let scan = rounds[1..].iter().map(|r| r.scan).min().unwrap();
    let want = scan.as_secs_f64() + fixed + e.final_bytes as f64 / (best * FINAL_ROUND_SPEEDUP);
    assert!((e.downtime.as_secs_f64() - want).abs() < 1e-3, "{e:?}");
    assert!(e.link_rate > 0.0 && best > e.link_rate, "{e:?}");
}

#[test]
fn a_hook_round_without_a_flush_keeps_the_steady_estimate() {
    // A hook's round that moved no more than the steady rate predicts
    // (no flush): the estimate is the steady one.
    let quiet = [
        round(50 * MB, 0, 10 * MB),
        round(MB, 0, 10 * MB),
        round(10_000, 0, 10 * MB),
    ];
    let rate = dirty_rate(&quiet[..2]);
    assert_eq!(
        estimate_after_hook(&quiet, &targets(2000), rate),
        estimate_at_rate(&quiet, &targets(2000), rate)
    );
}

/// bench/migrate.sh step 3 on gold (1 GiB, 1 MB/s writer, live8's run of
/// 2026-12-03 01:02 UTC): the rounds as measured (walls: scan, transfer,
/// ~40 ms of connection and the next round's flush), final round 986 ms.
/// The first round's residue over the link it mostly measured is ~0; taken
/// as the fixed cost it made the estimate 339 ms (0.34 of the actual).
#[test]
fn the_fixed_cost_comes_from_the_rounds_after_the_first() {
    let r = |moved: u64, wire: u64, scan: u64, transfer: u64, wall: u64| RoundMeasure {
        bytes_moved: moved,
        bytes_dirty: 0,
        wire_bytes: wire,
        scan: ms(scan),
        transfer: ms(transfer),
        wall: ms(wall),
        ..Default::default()
    };
    let rounds = [
        r(1_078_263_808, 1_083_617_052, 2475, 95_469, 98_006),
        r(102_084_608, 101_189_435, 94, 9644, 9850),
        r(10_604_544, 10_541_997, 184, 1306, 1530),
    ];
    let e = estimate(&rounds, &targets(1000));
    let ratio = e.downtime.as_secs_f64() / 0.986;
    assert!((0.5..=1.5).contains(&ratio), "{:?}: {ratio:.2}", e.downtime);
    // One round: its own residue is all there is.
    let one = estimate(&rounds[..1], &targets(1000));
    assert!(one.downtime >= ms(2475), "{:?}", one.downtime);
}

#[test]
fn a_catch_up_round_is_taken_only_when_much_shorter() {
    let mib = 1u64 << 20;
    let r = |moved: u64, scan_ms: u64, transfer_ms: u64, wall_ms: u64| RoundMeasure {
        bytes_moved: moved,
        bytes_dirty: 0,
        wire_bytes: moved / 10,
        scan: ms(scan_ms),
        transfer: ms(transfer_ms),
        wall: ms(wall_ms),
        ..Default::default()
    };
    // (last round, steady dirty rate B/s, another round?)
    let rows: &[(RoundMeasure, f64, bool)] = &[
        // The PostgreSQL hook round (scale 30, rate 500): 397 MB in 6.3 s,
        // 24.5 MB/s dirtied meanwhile: ~2.7 s more, under half.
        (r(397_000_000, 467, 5850, 6317), 24.5e6, true),
        // A writer as fast as the round moves: no shorter.
        (r(100 * mib, 100, 1000, 1100), 95e6, false),
        // Just over the share.
        (r(100 * mib, 0, 1000, 1000), 90e6, false),
        // Under it.
        (r(100 * mib, 0, 1000, 1000), 75e6, true),
        // Too small a round to measure a rate from.
        (r(1000, 0, 10, 10), 1.0, false),
        // A long scan alone is over the share of the round.
        (r(100 * mib, 850, 150, 1000), 1.0, false),
    ];
    for (i, (last, steady, want)) in rows.iter().enumerate() {
        assert_eq!(catch_up_shrinks(last, *steady), *want, "row {i}");
    }
}

/// Rounds of the stop-26 sweep (`bench/migrate.sh`, PostgreSQL scale 30,
/// BENCHMARKS.md): per case, the pre-copy rounds as (bytes moved, wire
/// bytes, scan ms, transfer ms), the last one a catch-up round; the steady
/// dirty rate pre-copy measured; the final round's bytes and the downtime.
type CatchUpCase = (&'static str, &'static [(u64, u64, u64, u64)], f64, u64, u64);
const CATCH_UP: &[CatchUpCase] = &[
    (
        "default, rate 250",
        &[
            (865_954_302, 63_429_963, 1091, 8582),
            (25_208_409, 3_564_173, 42, 501),
            (301_017_013, 14_660_521, 189, 4440),
            (86_367_428, 3_880_458, 109, 973),
        ],
        2_604_865.0,
        25_503_258,
        440,
    ),
    (
        "default, rate 500",
        &[
            (815_720_174, 68_468_984, 1623, 10454),
            (228_408_112, 9_002_121, 154, 2984),
            (78_741_915, 2_686_471, 108, 1011),
            (402_307_284, 23_232_086, 537, 5763),
            (205_654_299, 8_943_860, 215, 2227),
        ],
        24_736_033.0,
        78_699_936,
        950,
    ),
    (
        "gold, rate 250",
        &[
            (882_516_360, 69_781_777, 1610, 9388),
            (29_765_586, 5_291_792, 51, 715),
            (306_089_982, 9_906_296, 194, 3490),
            (83_188_889, 4_384_910, 75, 1058),
        ],
        2_701_069.0,
        29_585_934,
        606,
    ),
    (
        "gold, rate 500",
        &[
            (738_889_190, 75_734_926, 2068, 10999),
            (246_503_557, 14_085_554, 161, 3922),
            (94_257_896, 4_054_563, 103, 1450),
            (354_549_152, 14_353_586, 256, 4266),
            (177_560_548, 9_079_490, 137, 2396),
        ],
        22_640_296.0,
        105_168_022,
        1439,
    ),
    (
        "gold, rate 2000",
        &[
            (715_752_423, 85_208_956, 2668, 12427),
            (293_566_680, 19_318_950, 327, 5587),
            (157_468_371, 6_646_566, 150, 2323),
            (83_216_908, 3_357_322, 112, 1548),
            (52_212_905, 2_505_910, 136, 1055),
            (369_337_715, 14_285_179, 214, 4331),
            (282_235_088, 13_130_810, 204, 4236),
        ],
        29_170_326.0,
        242_406_212,
        2655,
    ),
    // Stop 29 sweep (after the dirty-range change; BENCHMARKS.md "Issue 11,
    // stop 29"): idle machine, test build; "s29cap" with
    // `--first-round-read-limit 20M`, "s29split" with the CPUs split.
    (
        "s29 default-1000",
        &[
            (711_871_356, 70_303_964, 1942, 9192),
            (241_283_312, 6_875_099, 264, 2528),
            (114_442_367, 4_030_328, 168, 1588),
            (79_415_664, 2_692_215, 154, 1042),
            (435_420_738, 19_162_954, 927, 5803),
            (377_555_483, 18_225_102, 420, 4187),
            (282_286_259, 15_283_387, 458, 3365),
        ],
        44_337_017.0,
        243_275_222,
        2081,
    ),
    (
        "s29 default-500",
        &[
            (850_012_162, 67_895_296, 1319, 6916),
            (137_663_175, 3_524_555, 97, 1077),
            (371_315_066, 14_181_410, 433, 3285),
            (128_138_533, 5_096_378, 104, 1262),
        ],
        16_647_545.0,
        54_716_432,
        661,
    ),
    (
        "s29 gold-1000",
        &[
            (716_929_495, 79_025_615, 1335, 10067),
            (249_257_658, 11_329_023, 252, 2720),
            (131_993_602, 4_947_708, 189, 1378),
            (75_658_164, 2_936_496, 119, 835),
            (363_474_346, 14_174_692, 204, 3800),
            (264_410_996, 13_314_295, 232, 3217),
            (217_941_256, 10_214_997, 151, 2399),
        ],
        44_745_460.0,
        154_423_311,
        1528,
    ),
    (
        "s29 gold-500",
        &[
            (742_347_446, 76_211_369, 1664, 10033),
            (112_650_866, 6_164_751, 204, 1354),
            (356_171_682, 13_931_543, 193, 3706),
            (153_690_929, 7_961_919, 131, 1644),
        ],
        9_595_925.0,
        80_385_666,
        942,
    ),
    (
        "s29 gold-max-strict",
        &[
            (700_267_951, 81_380_959, 1742, 10233),
            (237_811_852, 9_879_629, 443, 3690),
            (154_200_242, 5_712_362, 232, 1996),
            (96_622_048, 3_657_634, 177, 974),
            (369_556_102, 14_440_130, 248, 3838),
            (279_144_927, 13_171_112, 181, 3080),
            (237_124_697, 11_843_471, 179, 2163),
        ],
        40_911_917.0,
        182_905_134,
        1562,
    ),
    (
        "s29 gold-max",
        &[
            (690_912_733, 83_522_584, 1558, 11305),
            (251_031_463, 10_848_841, 397, 3679),
            (164_295_213, 5_835_298, 186, 1864),
            (102_704_054, 3_802_351, 228, 1377),
            (77_664_265, 3_071_649, 108, 1008),
            (371_755_613, 14_186_425, 227, 4225),
            (273_988_923, 12_633_864, 288, 3297),
            (221_472_152, 9_716_218, 236, 2579),
        ],
        44_977_300.0,
        193_214_118,
        1887,
    ),
    (
        "s29cap default-500",
        &[
            (380_901_074, 72_612_600, 43070, 42739),
            (337_686_161, 10_655_980, 563, 2835),
            (72_370_484, 2_621_791, 114, 546),
            (450_807_326, 22_623_356, 1270, 4378),
            (200_527_201, 8_970_936, 260, 1330),
        ],
        21_203_918.0,
        79_206_512,
        744,
    ),
    (
        "s29split default-500",
        &[
            (791_658_665, 68_638_303, 3581, 7547),
            (147_665_667, 3_754_108, 186, 1091),
            (378_089_993, 15_259_134, 585, 3279),
            (135_048_011, 4_823_320, 161, 1022),
        ],
        13_243_550.0,
        51_256_616,
        578,
    ),
    // Stop 30 sweep (release build, idle machine; BENCHMARKS.md "Issue 11,
    // stop 30").
    (
        "s30 gold-1000",
        &[
            (746_498_205, 78_988_855, 608, 7711),
            (182_269_225, 8_191_139, 283, 2375),
            (120_598_542, 4_741_476, 91, 1296),
            (373_683_928, 14_631_163, 196, 3516),
            (248_469_851, 12_544_555, 226, 2350),
        ],
        42_920_548.0,
        158_882_448,
        1195,
    ),
    (
        "s30 gold-500",
        &[
            (772_740_706, 75_497_445, 701, 8658),
            (92_272_762, 5_662_031, 162, 1232),
            (360_294_227, 13_905_368, 181, 2724),
            (130_738_239, 6_817_538, 111, 1304),
        ],
        9_818_670.0,
        64_427_398,
        729,
    ),
    (
        "s30 gold-max-strict",
        &[
            (715_119_501, 85_167_131, 831, 8568),
            (196_012_971, 7_057_664, 234, 2214),
            (91_416_042, 3_421_404, 123, 1017),
            (366_034_277, 14_279_376, 235, 3076),
            (215_869_982, 9_754_935, 117, 1931),
        ],
        34_449_406.0,
        177_789_416,
        1267,
    ),
    (
        "s30 gold-max",
        &[
            (726_062_182, 84_379_249, 804, 8460),
            (197_169_934, 7_365_188, 247, 1593),
            (381_870_676, 15_312_823, 249, 2998),
            (222_467_941, 10_094_169, 157, 2302),
        ],
        20_656_569.0,
        168_490_537,
        1172,
    ),
];

/// A sweep case's rounds as the model sees them.
fn sweep_rounds(rows: &[(u64, u64, u64, u64)]) -> Vec<RoundMeasure> {
    rows.iter()
        .map(|&(moved, wire, scan, transfer)| RoundMeasure {
            bytes_moved: moved,
            bytes_dirty: 0,
            wire_bytes: wire,
            scan: ms(scan),
            transfer: ms(transfer),
            // The report has no gap between rounds: scan + transfer.
            wall: ms(scan + transfer),
            ..Default::default()
        })
        .collect()
}

/// Checks `estimate` on each sweep case against its measured final round:
/// the bytes within `bytes_ok`, the downtime within half (issue 11's bar).
/// The ratios, for the log.
fn check_sweep(
    cases: &[CatchUpCase],
    estimate: fn(&[RoundMeasure], &Targets, f64) -> Estimate,
    bytes_ok: std::ops::RangeInclusive<f64>,
) -> String {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for (case, rows, steady, final_bytes, downtime_ms) in cases {
        let rounds = sweep_rounds(rows);
        let t = Targets::new(Duration::from_secs(2), 10);
        let e = estimate(&rounds, &t, *steady);
        let bytes = e.final_bytes as f64 / *final_bytes as f64;
        let time = e.downtime.as_secs_f64() * 1000.0 / *downtime_ms as f64;
        out.push(format!("{case}: {time:.2} (bytes {bytes:.2})"));
        if !bytes_ok.contains(&bytes) || !(0.5..=1.5).contains(&time) {
            bad.push(format!("{case}: {time:.2} (bytes {bytes:.2}; {e:?})"));
        }
    }
    // Every case's ratios in the message, not only the first miss: a model
    // change is judged on the whole table.
    assert!(
        bad.is_empty(),
        "est./actual out of bounds: {}\nall: {}",
        bad.join("; "),
        out.join(", ")
    );
    out.join(", ")
}

/// Stop 44, gold unthrottled (BENCHMARKS.md): the last catch-up round
/// waited for the CPU in the low-weight group and took 15 s where the one
/// before it took 9 s. Its flush scaled by 15/9 made the final round 987 MB
/// (546 MB came) and the estimate 2.44x the downtime. What the app's
/// buffers take in does not grow with the time a round waited for a CPU:
/// a page dirtied twice is flushed once. So a longer round's flush is taken
/// as it is, and a shorter one's scaled down.
#[test]
fn a_catch_up_round_longer_than_the_one_before_is_not_scaled_up() {
    let steady = 16e6;
    let round = |moved: f64, secs: f64| RoundMeasure {
        bytes_moved: f64_to_u64(moved),
        wire_bytes: f64_to_u64(moved / 10.0),
        scan: ms(800),
        transfer: Duration::from_secs_f64(secs) - ms(800),
        wall: Duration::from_secs_f64(secs),
        ..Default::default()
    };
    let t = Targets::new(Duration::from_secs(2), 10).with_cutover_gap(ms(1020));
    let final_bytes = |last_secs: f64| {
        let rounds = [
            round(420e6, 44.0),
            round(350e6, 25.0),
            round(530e6, 12.0),
            // More than the last: pre-copy still converges, so the floor
            // of rounds that stopped shrinking (`not_converging_floor`)
            // does not apply.
            round(700e6, 9.0),
            round(550e6, last_secs),
        ];
        estimate_after_catch_up(&rounds, &t, steady).final_bytes as f64
    };
    let flush = 550e6 - steady * 9.0;
    for (last_secs, want) in [
        (15.0, steady * 16.02 + flush),
        (9.0, steady * 10.02 + flush),
        (6.0, steady * 7.02 + flush * 6.0 / 9.0),
    ] {
        let got = final_bytes(last_secs);
        assert!((got - want).abs() <= 1.0, "{last_secs} s: {got} != {want}");
    }
}

/// Stop 49 (`s49c default-max`): a first catch-up round left 188 MB dirty
/// (the hook's checkpoint still writing under it), and the second moved
/// them again with 404 MB of its own. Counted whole, its flush made the
/// final round 556 MB where 353 MB came (1.62x the downtime). What the
/// round before it left dirty, the last round carries but the final round
/// does not: the estimate is as if the last round had carried only its own.
#[test]
fn what_the_round_before_left_dirty_is_not_expected_again() {
    let steady = 12e6;
    let round = |moved: f64, dirty: f64, secs: f64| RoundMeasure {
        bytes_moved: f64_to_u64(moved),
        bytes_dirty: f64_to_u64(dirty),
        wire_bytes: f64_to_u64(moved / 15.0),
        scan: ms(1000),
        transfer: Duration::from_secs_f64(secs) - ms(1000),
        wall: Duration::from_secs_f64(secs),
        ..Default::default()
    };
    let t = Targets::new(Duration::from_secs(2), 10).with_cutover_gap(ms(1020));
    let estimate = |leftover: f64| {
        let rounds = [
            round(440e6, 450e6, 44.0),
            round(295e6, 310e6, 25.0),
            round(530e6, 12e6, 8.0),
            round(436e6, leftover, 7.5),
            round(404e6 + leftover, 0.0, 7.0),
        ];
        estimate_after_catch_up(&rounds, &t, steady)
    };
    let (none, some) = (estimate(0.0), estimate(188e6));
    assert_eq!(none.final_bytes, some.final_bytes);
    // (The downtime differs: the round with the leftover moved more bytes
    // in the same time, a faster pace for the final round.)
    assert!(some.downtime < none.downtime);
    // And the flush is there: more than the steady writes alone.
    assert!(none.final_bytes as f64 > 2.0 * steady * (7.0 + 1.02));
}

#[test]
fn after_a_catch_up_round_the_estimate_is_within_half_of_the_measured_downtime() {
    let ratios = check_sweep(CATCH_UP, estimate_after_catch_up, 0.7..=1.3);
    eprintln!("est./actual: {ratios}");
}

/// The stop-26 sweep's runs with one hook round and no catch-up (the rates
/// at which another round would not have been much shorter), as
/// [`CATCH_UP`]: the last pre-copy round is the hook's.
const HOOK: &[CatchUpCase] = &[
    (
        "default, rate 1000",
        &[
            (684_428_663, 71_082_830, 1982, 11493),
            (346_054_207, 24_587_143, 253, 6145),
            (211_059_060, 10_040_270, 212, 3029),
            (127_130_255, 4_963_931, 179, 2140),
            (102_092_281, 3_753_480, 143, 1937),
            (85_117_242, 3_318_419, 114, 1740),
            (74_517_657, 2_935_385, 142, 1612),
            (506_531_750, 30_676_035, 1075, 9444),
        ],
        39_747_313.0,
        435_765_635,
        5972,
    ),
    (
        "default, rate 2000",
        &[
            (706_283_228, 73_988_373, 1438, 10652),
            (303_929_445, 25_280_995, 500, 7566),
            (228_795_424, 16_055_831, 239, 5008),
            (183_182_526, 8_840_626, 294, 2752),
            (126_147_311, 5_267_648, 173, 2009),
            (117_711_952, 4_695_630, 160, 1795),
            (99_004_713, 3_701_726, 218, 1300),
            (439_114_718, 30_779_186, 994, 9343),
        ],
        49_185_993.0,
        464_264_755,
        5357,
    ),
    (
        "default, unthrottled",
        &[
            (709_630_207, 76_065_003, 1544, 11018),
            (311_454_529, 25_717_693, 319, 6888),
            (223_850_088, 16_489_437, 342, 5091),
            (190_799_018, 9_452_562, 263, 3110),
            (144_398_886, 5_680_688, 346, 2933),
            (118_857_198, 4_213_999, 128, 1853),
            (86_056_358, 3_562_860, 103, 1442),
            (84_256_591, 3_199_247, 130, 1229),
            (429_884_622, 27_998_630, 1145, 9161),
        ],
        52_621_792.0,
        413_061_302,
        5104,
    ),
    (
        "gold, rate 1000",
        &[
            (712_263_849, 78_594_314, 1340, 11266),
            (344_499_966, 21_098_348, 305, 5859),
            (193_087_700, 7_890_284, 238, 3296),
            (88_605_763, 4_110_728, 160, 1764),
            (70_370_114, 3_053_106, 82, 1140),
            (371_052_564, 14_419_781, 232, 4915),
        ],
        35_155_599.0,
        290_661_346,
        3125,
    ),
    (
        "gold, unthrottled",
        &[
            (702_852_571, 84_275_333, 1727, 11627),
            (326_546_140, 20_234_291, 354, 5334),
            (193_362_465, 7_778_981, 251, 3257),
            (103_059_692, 4_121_608, 113, 1764),
            (60_876_729, 2_743_481, 109, 1219),
            (368_217_124, 14_178_023, 326, 6088),
        ],
        30_493_981.0,
        276_376_576,
        3427,
    ),
    // Stop 29 sweep (after the dirty-range change; BENCHMARKS.md "Issue 11,
    // stop 29"): idle machine, test build.
    (
        "s29 default-max",
        &[
            (702_830_608, 76_570_472, 1685, 10211),
            (251_135_024, 9_112_880, 341, 4574),
            (189_704_178, 7_314_022, 371, 2961),
            (138_698_787, 4_799_869, 280, 2271),
            (102_996_255, 3_742_329, 211, 1809),
            (88_413_275, 3_012_220, 129, 1319),
            (425_857_657, 20_601_112, 1575, 8512),
        ],
        42_504_157.0,
        459_018_978,
        3695,
    ),
    // Stop 30 sweep (release build, idle machine; BENCHMARKS.md "Issue 11,
    // stop 30").
    (
        "s30 default-max",
        &[
            (726_648_952, 73_578_257, 988, 9253),
            (260_388_493, 8_578_101, 196, 2499),
            (164_187_810, 5_920_187, 175, 1916),
            (136_951_735, 5_077_103, 205, 1274),
            (427_905_648, 21_573_128, 544, 5924),
        ],
        63_420_458.0,
        443_174_232,
        3146,
    ),
];

/// Stop-30 runs whose hook round carried a flush and had no catch-up round
/// after it: their estimates fit the target, and catch-up rounds were then
/// taken only over it. The flush-again estimate was 1.85 and 1.22 of the
/// downtime (final rounds of a third and two thirds of the flush). A
/// catch-up round is now taken after such a round whenever it shrinks, so
/// their last pre-copy round would have been a catch-up round.
const HOOK_FLUSH_UNDER_TARGET: &[CatchUpCase] = &[
    (
        "s30 default-500",
        &[
            (859_963_712, 67_661_640, 807, 6451),
            (121_159_194, 3_158_147, 91, 838),
            (355_888_622, 12_687_231, 352, 2924),
        ],
        16_605_374.0,
        118_142_345,
        904,
    ),
    (
        "s30 default-1000",
        &[
            (781_050_773, 69_145_185, 621, 6696),
            (200_795_832, 5_474_946, 159, 1271),
            (410_780_327, 17_203_670, 374, 3259),
        ],
        27_325_930.0,
        243_676_250,
        1550,
    ),
];

#[test]
fn a_hook_round_with_a_flush_is_followed_by_a_catch_up_round_that_shrinks() {
    for (case, rows, steady, _, _) in HOOK_FLUSH_UNDER_TARGET {
        let r = sweep_rounds(rows);
        assert!(hook_flush(&r, *steady) > 100_000_000, "{case}");
        assert!(catch_up_shrinks(r.last().unwrap(), *steady), "{case}");
    }
    // Unthrottled, another round would not be much shorter: the flush-again
    // estimate stands (and was 0.91 of the downtime).
    let (case, rows, steady, _, _) = HOOK.iter().find(|c| c.0 == "s30 default-max").unwrap();
    let r = sweep_rounds(rows);
    assert!(hook_flush(&r, *steady) > 100_000_000, "{case}");
    assert!(!catch_up_shrinks(r.last().unwrap(), *steady), "{case}");
    // An ordinary round after the hook carried none.
    assert_eq!(hook_flush(&r[..r.len() - 1], *steady), 0, "{case}");
}

#[test]
fn after_the_hook_round_the_estimate_is_within_half_of_the_measured_downtime() {
    // Bytes: the steady rate over the hook's round overshoots when the
    // checkpoint slowed the app (unthrottled on default: 1.31).
    let ratios = check_sweep(HOOK, estimate_after_hook, 0.6..=1.4);
    eprintln!("est./actual: {ratios}");
}

#[test]
fn the_final_scan_keeps_the_walk_and_scales_the_reads_to_the_final_bytes() {
    let r = |moved: u64, read: u64, scan_ms: u64, read_ms: u64| RoundMeasure {
        bytes_moved: moved,
        bytes_read: read,
        scan: ms(scan_ms),
        scan_read: ms(read_ms),
        transfer: ms(2000),
        wall: ms(2000 + scan_ms),
        ..Default::default()
    };
    let f = 35.0 * MB as f64;
    // (round, final bytes, expected scan ms)
    let rows: &[(RoundMeasure, f64, u64)] = &[
        // A hook round on gold (stop 39's shape): 350 MB moved, 364 MB
        // read in 170 of its 212 ms: 42 ms of walk + a tenth of the reads.
        (r(350 * MB, 364 * MB, 212, 170), f, 59),
        // The reads not measured (older reports): the whole scan.
        (r(350 * MB, 364 * MB, 212, 0), f, 212),
        // Read nine times what it moved: its reads say little of its bytes.
        (r(65 * MB, 600 * MB, 440, 400), f, 440),
        // Too small a round to scale from.
        (r(MB / 2, MB / 2, 80, 40), f, 80),
        // A final round larger than the round: the reads grow with it.
        (r(10 * MB, 10 * MB, 60, 20), f, 110),
        // All walk (a tree of many small files, little read): the walk stays.
        (r(2 * MB, 2 * MB, 150, 5), 1.0, 145),
        // Reads under a cap (stop 40, gold, later rounds at 150M): 739 ms
        // of reads, 650 of them waiting for the cap: 61 ms of walk + the
        // 89 ms of real reads scaled to 35 of 142 MB.
        (
            RoundMeasure {
                scan_paced: ms(650),
                ..r(142 * MB, 153 * MB, 800, 739)
            },
            f,
            83,
        ),
        // The hook round again, its threads half its scan waiting for a
        // CPU: half the time.
        (
            RoundMeasure {
                scan_wait: Some(ms(106)),
                ..r(350 * MB, 364 * MB, 212, 170)
            },
            f,
            30,
        ),
        // Waits past three quarters of the scan (summed over threads that
        // waited at once) take out three quarters, no more.
        (
            RoundMeasure {
                scan_wait: Some(ms(1900)),
                ..r(350 * MB, 364 * MB, 2000, 0)
            },
            f,
            500,
        ),
    ];
    for (i, (round, bytes, want)) in rows.iter().enumerate() {
        let got = scan_for(round, *bytes);
        assert!(
            got.as_millis().abs_diff(u128::from(*want)) <= 1,
            "row {i}: {got:?}, want {want} ms"
        );
    }
    // The final scan is the shortest of the later rounds' (never the
    // first's: it walks a cold volume).
    let rounds = [
        r(900 * MB, 900 * MB, 100, 90),
        r(350 * MB, 364 * MB, 212, 170),
        r(90 * MB, 97 * MB, 94, 60),
    ];
    // Round 3: 34 ms of walk + 60 ms x 35/90.
    assert_eq!(final_scan(&rounds, f).as_millis(), 57);
}

/// Stop-40 runs with the scan's reads measured apart (`scan_read`;
/// `bench/migrate.sh` step 4, PostgreSQL scale 30 at rate 500, CHECKPOINT
/// through the hook, `PG_FIRST_READ_LIMIT=20M`, split CPUs, test build;
/// BENCHMARKS.md "Issue 11, stop 40"): per case the pre-copy rounds as
/// (bytes moved, wire bytes, scan ms, transfer ms, of the scan reading ms,
/// bytes read, of the reading waiting for a read cap ms: 0 where not yet
/// measured, the later rounds uncapped), the last a catch-up round; the steady rate; the final
/// round's bytes, its scan's ms, and the downtime.
type SplitCase = (
    &'static str,
    &'static [(u64, u64, u64, u64, u64, u64, u64)],
    f64,
    u64,
    u64,
    u64,
);
const SPLIT: &[SplitCase] = &[
    (
        "s40 default-500 #1",
        &[
            (492_876_832, 72_150_379, 42839, 6629, 42692, 901_962_998, 0),
            (119_591_630, 3_410_840, 392, 888, 286, 591_534_692, 0),
            (384_788_830, 15_334_619, 738, 2971, 689, 651_214_671, 0),
            (143_927_716, 6_360_015, 152, 983, 105, 154_547_161, 0),
        ],
        2_632_540.0,
        63_745_048,
        93,
        679,
    ),
    (
        "s40 gold-500 #1",
        &[
            (515_042_315, 82_261_245, 43109, 7527, 43040, 908_742_656, 0),
            (63_273_049, 3_592_189, 414, 501, 305, 599_697_404, 0),
            (351_681_909, 13_200_282, 268, 2177, 191, 365_070_223, 0),
            (89_682_772, 3_997_540, 87, 655, 45, 97_075_977, 0),
        ],
        1_247_625.0,
        36_300_835,
        84,
        434,
    ),
    (
        "s40 default-500 #2",
        &[
            (492_905_689, 72_151_392, 42830, 6729, 42729, 901_962_999, 0),
            (119_832_873, 3_438_266, 358, 796, 282, 593_298_132, 0),
            (384_076_081, 15_263_302, 759, 2680, 678, 651_558_411, 0),
            (138_016_215, 6_008_634, 161, 941, 113, 148_639_907, 0),
        ],
        2_705_145.0,
        64_434_425,
        90,
        697,
    ),
    (
        "s40 gold-500 #2",
        &[
            (520_359_903, 82_296_486, 43137, 7555, 43048, 908_746_752, 0),
            (67_269_710, 3_612_535, 421, 577, 310, 602_045_735, 0),
            (352_724_006, 13_332_972, 304, 2232, 203, 367_156_141, 0),
            (98_085_285, 4_282_953, 93, 683, 45, 105_426_351, 0),
        ],
        1_325_568.0,
        37_097_047,
        58,
        510,
    ),
    // `PG_FIRST_READ_LIMIT=10M`, the setting where stop 37's two misses
    // were (est./actual 1.51 and 1.52): the unsplit scan made these 1.30
    // and 1.33.
    (
        "s40 default-500 cap10 #1",
        &[
            (432_065_659, 74_734_540, 85883, 6887, 85660, 902_069_495, 0),
            (121_598_672, 3_834_132, 429, 842, 340, 711_835_493, 0),
            (373_750_609, 14_250_507, 938, 2831, 867, 738_414_110, 0),
            (131_735_094, 5_167_321, 156, 830, 101, 140_286_385, 0),
        ],
        4_098_497.0,
        40_640_032,
        47,
        364,
    ),
    (
        "s40 default-500 cap10 #2",
        &[
            (433_794_085, 74_625_361, 85870, 6814, 85612, 902_020_343, 0),
            (122_844_750, 3_757_220, 411, 695, 330, 713_274_448, 0),
            (370_782_077, 14_141_285, 837, 2571, 757, 735_295_133, 0),
            (119_791_981, 4_621_051, 135, 731, 86, 127_464_606, 0),
        ],
        3_599_866.0,
        37_189_149,
        43,
        339,
    ),
    // Later rounds capped too (`PG_READ_LIMIT=150M`, gold), with the
    // cap's waits measured (the last column): unpaced, the capped reads made
    // the final scan 397 ms for 93 measured (est./actual 1.35; unsplit 1.45).
    (
        "s40 gold-500 later rounds at 150M",
        &[
            (
                515_030_322,
                82_399_343,
                43122,
                7570,
                43052,
                908_750_848,
                40985,
            ),
            (97_064_844, 4_173_843, 3650, 627, 3515, 602_426_267, 3231),
            (51_143_770, 2_836_177, 432, 480, 391, 103_476_461, 340),
            (351_006_178, 13_275_880, 2085, 1957, 2023, 363_331_091, 1865),
            (141_892_986, 6_725_124, 748, 996, 700, 153_319_643, 630),
        ],
        11_761_638.0,
        71_345_680,
        72,
        642,
    ),
];

#[test]
fn with_the_reads_measured_the_final_scan_and_the_downtime_are_estimated_within_half() {
    let mut out = Vec::new();
    // Sums of |ln(estimated / measured final scan)|: split, unsplit.
    let mut miss = (0.0, 0.0);
    for (case, rows, steady, final_bytes, final_scan_ms, downtime_ms) in SPLIT {
        let rounds: Vec<RoundMeasure> = rows
            .iter()
            .map(
                |&(moved, wire, scan, transfer, read, bytes_read, paced)| RoundMeasure {
                    bytes_moved: moved,
                    wire_bytes: wire,
                    scan: ms(scan),
                    scan_read: ms(read),
                    scan_paced: ms(paced),
                    bytes_read,
                    transfer: ms(transfer),
                    wall: ms(scan + transfer),
                    ..Default::default()
                },
            )
            .collect();
        let t = Targets::new(Duration::from_secs(2), 10);
        let e = estimate_after_catch_up(&rounds, &t, *steady);
        let time = e.downtime.as_secs_f64() * 1000.0 / *downtime_ms as f64;
        // The final scan, for the bytes the model expects and for the
        // bytes that came: the walk kept, the reads scaled.
        let scan = |bytes: f64| final_scan(&rounds, bytes).as_secs_f64() * 1000.0;
        let expected = scan(e.final_bytes as f64) / *final_scan_ms as f64;
        let came = scan(*final_bytes as f64) / *final_scan_ms as f64;
        // Unsplit (the reads not measured), the whole shortest later scan.
        let unsplit: Vec<RoundMeasure> = rounds
            .iter()
            .map(|r| RoundMeasure {
                scan_read: Duration::ZERO,
                scan_paced: Duration::ZERO,
                ..*r
            })
            .collect();
        let whole = final_scan(&unsplit, *final_bytes as f64).as_secs_f64() * 1000.0
            / *final_scan_ms as f64;
        out.push(format!(
            "{case}: downtime {time:.2}, final scan {expected:.2} ({came:.2} for the bytes that \
             came; unsplit {whole:.2})"
        ));
        assert!((0.5..=1.5).contains(&time), "{}", out.join("\n"));
        // Pre-copy walks beside the app (in the idle group), the final
        // round alone: the walk too can be faster then (cap10 #1: 33 ms
        // against 55 ms), or slower (gold #1: 56 ms against 42). Within 2x
        // either way, and nearer than unsplit over the table.
        assert!((0.5..=2.0).contains(&came), "{}", out.join("\n"));
        miss.0 += came.ln().abs();
        miss.1 += whole.ln().abs();
    }
    eprintln!("{}", out.join("\n"));
    assert!(miss.0 < miss.1 / 2.0, "split {miss:?}\n{}", out.join("\n"));
}

/// A PostgreSQL run for [`STARVED`]: name; rounds after the hook (1: the
/// hook's round was the last, else catch-up rounds followed); per pre-copy
/// round (payload, wire bytes, scan ms, transfer ms, of it the threads'
/// waits for a CPU ms, scan reads ms, bytes read, of the reads waiting for
/// the read cap ms); the steady dirty rate; the estimate the binary made
/// when that binary's model is the one replayed with the waits left out
/// and a 20 ms gap (the first six runs), and the downtime measured.
type StarvedCase = (
    &'static str,
    usize,
    &'static [(u64, u64, u64, u64, u64, u64, u64, u64)],
    f64,
    Option<u64>,
    u64,
);

/// Stop 41: `bench/migrate.sh` step 4 (`B_TMPFS=1 SPLIT_CPUS=1 B_RPS=1
/// PG_FIRST_READ_LIMIT=20M`, test builds), PostgreSQL scale 30 under pgbench
/// at rates 2000, unthrottled and 500. Host A has one core: past rate 1000
/// the database keeps it busy and pre-copy, in the idle cpu group, waits for
/// it through 40-80% of its transfers. The first six runs are of a build
/// that measured the waits and did not use them; the rest, of one that used
/// them (`s41b`), whose hook round at rate 2000 carried no flush the steady
/// rate did not cover, and got the steady estimate: 31.2 s for 4.9 s.
const STARVED: &[StarvedCase] = &[
    (
        "default-2000",
        1,
        &[
            (
                418889600, 78446643, 45636, 14327, 9410, 44661, 906255609, 36506,
            ),
            (305271301, 31927753, 994, 9253, 5902, 833, 710417340, 0),
            (221416871, 16366066, 418, 7190, 4723, 328, 413769875, 0),
            (202739286, 14887880, 335, 6889, 4353, 245, 368647266, 0),
            (250520834, 17184814, 580, 7495, 4991, 485, 416486006, 0),
            (527890360, 29267140, 3102, 9469, 4655, 2932, 1128230585, 0),
        ],
        34547245.0,
        Some(6696),
        3686,
    ),
    (
        "default-max",
        1,
        &[
            (
                418944816, 79319004, 46515, 13179, 8525, 45252, 907222263, 36279,
            ),
            (333806091, 36575293, 1096, 8396, 4748, 926, 693329896, 0),
            (290131243, 19693368, 665, 7001, 4400, 563, 470011404, 0),
            (289781298, 19642928, 581, 6478, 4054, 501, 456538412, 0),
            (473291641, 24252453, 2340, 8438, 4200, 2255, 1230606404, 0),
        ],
        37589603.0,
        Some(6445),
        3459,
    ),
    (
        "gold-2000",
        3,
        &[
            (
                479352222, 88636217, 44257, 10738, 7019, 43934, 912945152, 33950,
            ),
            (374441312, 30435294, 5335, 4964, 2815, 2049, 694651951, 0),
            (306091616, 16484714, 2847, 3768, 1868, 1564, 422416893, 0),
            (280902711, 12505477, 2304, 3225, 1490, 973, 367596626, 0),
            (398704126, 16196850, 2728, 3648, 1557, 1335, 435935257, 0),
            (425531655, 18815077, 1863, 4189, 1945, 840, 449753721, 0),
            (364815226, 17856079, 3369, 4649, 2678, 1950, 434840737, 0),
        ],
        41001303.0,
        Some(6687),
        3933,
    ),
    (
        "gold-max",
        1,
        &[
            (
                471821022, 89053674, 45351, 10177, 6331, 44818, 913235968, 28762,
            ),
            (374506885, 36533640, 6097, 6378, 1950, 1694, 748220394, 0),
            (339026199, 18698677, 2068, 3768, 1814, 964, 446044945, 0),
            (288092626, 13037854, 1512, 3198, 1148, 700, 370513963, 0),
            (412926592, 19668701, 3836, 4760, 1804, 2165, 485100197, 0),
        ],
        47551190.0,
        Some(5326),
        3313,
    ),
    (
        "default-500",
        2,
        &[
            (
                493575745, 72301386, 42818, 6669, 1367, 42674, 901995767, 42674,
            ),
            (119831360, 3384365, 374, 691, 151, 283, 594489403, 0),
            (379874725, 15009712, 806, 2645, 494, 708, 650542611, 0),
            (135111677, 5866268, 158, 907, 198, 109, 146938268, 0),
        ],
        2669486.0,
        Some(460),
        640,
    ),
    (
        "gold-500",
        2,
        &[
            (
                511644715, 82420538, 43117, 8477, 1624, 43044, 908795904, 40699,
            ),
            (77195940, 3885873, 418, 666, 97, 288, 606729468, 0),
            (353824512, 13464349, 248, 2531, 433, 188, 365375587, 0),
            (107782939, 4819226, 120, 749, 125, 63, 116170653, 0),
        ],
        1493842.0,
        Some(415),
        433,
    ),
    (
        "s41b default-2000",
        1,
        &[
            (
                418167997, 78298393, 44089, 14853, 12059, 43681, 906124541, 30861,
            ),
            (282411600, 34593346, 2811, 8357, 6255, 2185, 709375495, 0),
            (202237224, 18530932, 1163, 7957, 6117, 862, 438982788, 0),
            (174905343, 17190358, 993, 7227, 5748, 669, 390547828, 0),
            (298378652, 23927390, 2123, 7047, 5249, 1743, 498121562, 0),
            (290890933, 31264701, 6628, 11978, 8244, 5982, 1208986951, 0),
        ],
        36163962.0,
        None,
        4942,
    ),
    (
        "s41b default-max",
        1,
        &[
            (
                420162946, 79538440, 46613, 13314, 8536, 45458, 907640059, 36406,
            ),
            (337294580, 37066904, 1053, 8465, 4816, 849, 680125335, 0),
            (319897998, 18482236, 639, 5771, 3333, 534, 457636050, 0),
            (256173068, 15550687, 589, 5695, 3615, 512, 400218815, 0),
            (461130956, 21519391, 2712, 10667, 4171, 2570, 1187880542, 0),
        ],
        39672483.0,
        None,
        4021,
    ),
    (
        "s41b gold-2000",
        1,
        &[
            (
                445596824, 88763513, 44125, 10190, 6546, 43868, 912932864, 32905,
            ),
            (355406153, 28078102, 5067, 5243, 1794, 2192, 693060195, 0),
            (299603191, 14871296, 2403, 3720, 1602, 1194, 406568703, 0),
            (245782882, 9831970, 2549, 2724, 1113, 1090, 319401276, 0),
            (210963781, 7541312, 1959, 2309, 1140, 970, 266564828, 0),
            (196697725, 7210332, 1788, 2028, 931, 770, 236035193, 0),
            (375010131, 16468761, 3453, 3372, 1454, 1973, 432135681, 0),
        ],
        43804583.0,
        None,
        3067,
    ),
    (
        "s41b gold-max",
        1,
        &[
            (
                472735183, 90082796, 46924, 9549, 6192, 46489, 914575360, 26772,
            ),
            (415799046, 40872468, 3436, 6859, 1891, 1212, 713945716, 0),
            (411071625, 22541261, 2302, 4978, 1825, 1192, 521904849, 0),
            (357758449, 17361003, 1839, 4146, 1710, 744, 433103612, 0),
            (421935259, 17163653, 2467, 4665, 2114, 1228, 457885377, 0),
        ],
        47550363.0,
        None,
        2973,
    ),
    (
        "s41b gold-max-strict",
        2,
        &[
            (
                478739158, 89996141, 46115, 8802, 4195, 45769, 914526208, 30704,
            ),
            (431538473, 37317974, 877, 5349, 1529, 413, 676119234, 0),
            (226475211, 8131155, 248, 2379, 726, 167, 265739567, 0),
            (173165612, 6630625, 215, 1307, 338, 113, 195400672, 0),
            (79796213, 3579688, 131, 908, 215, 58, 96619752, 0),
            (61733081, 3002698, 115, 804, 248, 42, 82839353, 0),
            (58116686, 2875433, 129, 593, 173, 60, 62204007, 0),
            (348378817, 11510832, 333, 2673, 631, 233, 369566496, 0),
            (210855386, 7506355, 226, 1738, 615, 160, 220749699, 0),
        ],
        57312586.0,
        None,
        1013,
    ),
    (
        "s41b default-250",
        2,
        &[
            (
                662284075, 69677788, 42771, 6487, 847, 42695, 901078267, 42695,
            ),
            (66887014, 1918914, 231, 850, 49, 163, 353284295, 0),
            (369217834, 15101114, 543, 3084, 338, 490, 535704255, 0),
            (65530545, 2177570, 64, 447, 83, 34, 72276314, 0),
        ],
        1356139.0,
        None,
        231,
    ),
    (
        "s41b gold-250",
        2,
        &[
            (
                669226007, 78928650, 43069, 7429, 1011, 42996, 907919360, 40856,
            ),
            (37425988, 2803465, 277, 689, 75, 157, 380524805, 0),
            (336301789, 12936695, 204, 2251, 404, 143, 349027984, 0),
            (57059707, 2777435, 58, 417, 66, 24, 62865169, 0),
        ],
        740080.0,
        None,
        263,
    ),
    (
        "s41b default-1000",
        2,
        &[
            (
                431175877, 74749729, 42890, 7268, 2779, 42736, 903535869, 38768,
            ),
            (200826767, 6630029, 815, 1541, 565, 650, 685143669, 0),
            (86616005, 2798445, 124, 671, 220, 64, 107964131, 0),
            (383914056, 15032923, 1669, 4346, 1791, 1584, 780892701, 0),
            (321125006, 13184257, 587, 2445, 981, 473, 343944140, 0),
        ],
        36018147.0,
        None,
        1319,
    ),
    (
        "s41b gold-1000",
        2,
        &[
            (
                380489507, 85664759, 43201, 7999, 2420, 43104, 910315520, 39900,
            ),
            (201123080, 7952862, 1026, 2262, 370, 569, 730463353, 0),
            (121005839, 4126392, 276, 1017, 230, 124, 149634724, 0),
            (57619506, 2531707, 209, 535, 116, 47, 78697977, 0),
            (41359763, 2045862, 102, 438, 70, 41, 47673708, 0),
            (361535007, 13586371, 407, 2429, 916, 263, 372708050, 0),
            (181588485, 6757753, 227, 1255, 387, 134, 193395568, 0),
        ],
        47210041.0,
        None,
        852,
    ),
];

#[test]
fn rounds_that_waited_for_a_cpu_are_taken_without_their_waits() {
    let mut out = Vec::new();
    let mut ratios = Vec::new();
    for (case, hooks, rows, steady, binary_ms, downtime_ms) in STARVED {
        let rounds: Vec<RoundMeasure> = rows
            .iter()
            .map(
                |&(moved, wire, scan, transfer, wait, read, bytes_read, paced)| {
                    starved_round((
                        moved, wire, scan, transfer, wait, read, bytes_read, paced, 0,
                    ))
                },
            )
            .map(|r| RoundMeasure {
                scan_wait: None,
                ..r
            })
            .collect();
        let est = |rounds: &[RoundMeasure], gap| replay_ms(*hooks, rounds, *steady, gap);
        // The waits not measured, and the old 20 ms gap: the model before
        // this stop (the rounds' walls are their scan and transfer here, so
        // not to the millisecond of the binary's own estimate).
        let unmeasured: Vec<RoundMeasure> = rounds
            .iter()
            .map(|r| RoundMeasure {
                transfer_wait: None,
                ..*r
            })
            .collect();
        let before = est(&unmeasured, ms(20));
        // The binary scaled a catch-up round's flush up when that round was
        // the longer (stop 46 no longer does): that case's replay is not the
        // binary's.
        let scaled_up = *hooks > 1 && rounds[rounds.len() - 1].wall > rounds[rounds.len() - 2].wall;
        if scaled_up {
            assert_eq!(*case, "gold-2000", "another case was scaled up");
        }
        if let Some(binary_ms) = binary_ms.filter(|_| !scaled_up) {
            assert!(
                (before / binary_ms as f64 - 1.0).abs() < 0.05,
                "{case}: replayed {before:.0} ms, the binary said {binary_ms}"
            );
        }
        // `daffe migrate`'s default gap: a 1 s stop and a 20 ms poll.
        let now = est(&rounds, ms(1020)) / *downtime_ms as f64;
        let was = before / *downtime_ms as f64;
        out.push(format!(
            "{case}: est./actual {now:.2} (waits not used: {was:.2})"
        ));
        ratios.push(now);
    }
    eprintln!("{}", out.join("\n"));
    assert!(
        ratios.iter().all(|r| (0.5..=1.5).contains(r)),
        "{}",
        out.join("\n")
    );
}

/// A PostgreSQL run for [`SCAN_STARVED`]: as [`StarvedCase`], each round
/// with the scan's threads' waits for a CPU (ms) last, and the estimate the
/// binary made (its model is the one replayed).
type ScanStarvedCase = (&'static str, usize, &'static [ScanRow], f64, u64, u64);

/// A round of [`ScanStarvedCase`].
type ScanRow = (u64, u64, u64, u64, u64, u64, u64, u64, u64);

/// Stop 42: as [`STARVED`], with a build that measured the scans' waits
/// for a CPU too and took them out of the final scan (`scan_for`): rates
/// 1000, 2000 and unthrottled (`s42a`), then the whole sweep, 250 to
/// unthrottled (`s42b`). Beside the database, the later pre-copy scans on
/// gold stood runnable for 75-90% of their 1.7-7.4 s; the final scans took
/// 122-254 ms.
const SCAN_STARVED: &[ScanStarvedCase] = &[
    (
        "s42a default-1000",
        2,
        &[
            (
                433580199, 74593183, 42948, 7029, 2233, 42684, 903486716, 40912, 3372,
            ),
            (198331003, 6390137, 656, 1404, 499, 538, 686658524, 0, 342),
            (77832028, 2592115, 106, 552, 164, 62, 101223557, 0, 46),
            (
                375968028, 14842793, 1356, 3367, 949, 1263, 773535896, 0, 888,
            ),
            (272745872, 11040977, 402, 1928, 638, 317, 292697408, 0, 219),
        ],
        36859940.0,
        1047,
        1243,
    ),
    (
        "s42a default-2000",
        1,
        &[
            (
                419253843, 78246353, 43120, 14033, 11416, 42570, 906099964, 33266, 13430,
            ),
            (
                318418496, 32769581, 2187, 7249, 5168, 1796, 710639733, 0, 1862,
            ),
            (230923146, 16134097, 947, 5170, 3633, 728, 419077707, 0, 749),
            (201217949, 12458514, 872, 4715, 3404, 674, 342504888, 0, 666),
            (201072725, 11279844, 839, 3862, 2598, 555, 311721903, 0, 662),
            (
                360152008, 23688368, 4555, 8754, 5975, 4141, 1019897279, 0, 4147,
            ),
        ],
        35513943.0,
        3679,
        3689,
    ),
    (
        "s42a default-max",
        1,
        &[
            (
                419860346, 79771469, 47869, 13852, 8866, 46541, 907992314, 37266, 12805,
            ),
            (
                441189348, 45545719, 1178, 9285, 5323, 1008, 771990945, 0, 742,
            ),
            (306642321, 23782393, 764, 7751, 4992, 662, 519359818, 0, 491),
            (257077198, 20108196, 573, 7057, 4630, 478, 453422656, 0, 326),
            (
                451088531, 23688151, 2615, 9926, 4268, 2532, 1330708011, 0, 1851,
            ),
        ],
        30012626.0,
        4119,
        3952,
    ),
    (
        "s42a gold-1000",
        2,
        &[
            (
                379141683, 85342626, 43537, 10547, 5126, 43400, 910286848, 39029, 4447,
            ),
            (227509153, 9140960, 835, 2567, 513, 484, 689678578, 0, 337),
            (129708071, 4439621, 283, 1028, 319, 124, 163634037, 0, 145),
            (62444619, 2538031, 102, 537, 108, 50, 68955174, 0, 55),
            (25695722, 1732407, 165, 404, 99, 44, 27460227, 0, 93),
            (364098887, 13508238, 435, 2642, 689, 285, 375996785, 0, 215),
            (196875293, 7582120, 406, 1658, 744, 312, 207180459, 0, 279),
        ],
        35444623.0,
        981,
        1204,
    ),
    (
        "s42a gold-2000",
        1,
        &[
            (
                482888295, 88669253, 44268, 10288, 4866, 43950, 912863232, 34065, 11856,
            ),
            (
                351700309, 30336798, 5303, 5168, 1207, 2390, 696016672, 0, 3216,
            ),
            (
                331013727, 17633874, 2046, 4043, 1973, 966, 435574443, 0, 1599,
            ),
            (
                279506752, 12273167, 2054, 2456, 914, 1149, 354798663, 0, 1886,
            ),
            (
                232294521, 8469372, 1732, 2262, 1016, 873, 289397872, 0, 1585,
            ),
            (203372532, 8280812, 1741, 2254, 964, 980, 265561047, 0, 1422),
            (
                428830217, 19218776, 3093, 4130, 1311, 1662, 476711456, 0, 2788,
            ),
        ],
        48689756.0,
        2747,
        2909,
    ),
    (
        "s42a gold-max",
        1,
        &[
            (
                474941128, 89907446, 47972, 11636, 5489, 47498, 914595840, 28079, 22934,
            ),
            (
                403343315, 39971804, 7440, 6136, 1442, 2170, 691896569, 0, 4899,
            ),
            (
                411928601, 21196539, 1905, 4023, 1416, 1025, 529346710, 0, 1495,
            ),
            (
                297710129, 14687365, 2365, 3101, 1374, 1445, 387040817, 0, 2164,
            ),
            (
                311769175, 14585626, 1952, 3021, 816, 911, 369845671, 0, 1676,
            ),
            (
                271767113, 12192485, 1682, 2490, 901, 855, 327839529, 0, 1455,
            ),
            (
                384315381, 15214300, 2604, 3782, 1529, 1332, 434102933, 0, 2311,
            ),
        ],
        52505089.0,
        2779,
        3274,
    ),
    (
        "s42b default-1000",
        2,
        &[
            (
                433135600, 74589333, 42904, 6949, 2068, 42777, 903511293, 41849, 2985,
            ),
            (193378798, 6416028, 656, 1500, 467, 542, 686429760, 0, 362),
            (85472083, 2725460, 150, 609, 180, 84, 109290530, 0, 85),
            (
                378171353, 14874282, 1357, 4386, 875, 1280, 775301121, 0, 879,
            ),
            (300872617, 12284284, 412, 1998, 625, 344, 323727001, 0, 238),
        ],
        39044030.0,
        999,
        1065,
    ),
    (
        "s42b default-2000",
        1,
        &[
            (
                419851752, 78134366, 43118, 10343, 7682, 42817, 906157309, 34723, 11370,
            ),
            (
                302781164, 28530230, 1757, 6235, 4122, 1440, 692105993, 0, 1474,
            ),
            (222327573, 14656100, 874, 4842, 3399, 660, 388103418, 0, 683),
            (195641481, 11905412, 929, 4083, 2768, 720, 339157431, 0, 744),
            (201223895, 10134645, 570, 3333, 2200, 355, 302368051, 0, 425),
            (
                329231899, 19265055, 4079, 9287, 5154, 3673, 956025484, 0, 3619,
            ),
        ],
        39675514.0,
        3550,
        3897,
    ),
    (
        "s42b default-250",
        2,
        &[
            (
                656725122, 69358311, 42771, 7015, 934, 42668, 901143803, 42668, 787,
            ),
            (77710733, 2082682, 193, 643, 51, 154, 361775573, 0, 51),
            (363883219, 14855613, 531, 3085, 314, 473, 532607104, 0, 169),
            (67458986, 2672611, 65, 503, 69, 28, 75728222, 0, 16),
        ],
        1639965.0,
        277,
        229,
    ),
    (
        "s42b default-500",
        2,
        &[
            (
                489730835, 72323168, 42844, 6643, 1224, 42697, 901987579, 41929, 1582,
            ),
            (123223907, 3502839, 346, 702, 150, 275, 597137466, 0, 120),
            (380300565, 14953575, 801, 2657, 486, 744, 649557347, 0, 382),
            (141927625, 6195011, 163, 900, 170, 107, 151377558, 0, 62),
        ],
        3005164.0,
        440,
        561,
    ),
    (
        "s42b default-max",
        1,
        &[
            (
                419369005, 79627435, 47410, 12765, 8152, 46104, 907902203, 36787, 12516,
            ),
            (
                455208328, 44733659, 1264, 8003, 3949, 1084, 773126527, 0, 782,
            ),
            (317721435, 20181901, 643, 5566, 3182, 532, 477871681, 0, 408),
            (249291508, 14766965, 451, 4761, 2874, 380, 369200699, 0, 263),
            (200354395, 11994939, 430, 4951, 3192, 358, 324783624, 0, 237),
            (209828341, 12827395, 403, 5343, 3423, 336, 344183522, 0, 219),
            (
                446836491, 21851920, 2829, 10435, 3863, 2688, 1332563370, 0, 2020,
            ),
        ],
        38815231.0,
        4606,
        4152,
    ),
    (
        "s42b gold-1000",
        2,
        &[
            (
                378893975, 85544146, 43196, 7735, 2015, 43107, 910327808, 40500, 2140,
            ),
            (193305335, 7449406, 631, 1386, 373, 417, 686651747, 0, 248),
            (378187440, 14342801, 313, 2439, 658, 232, 392613919, 0, 138),
            (178605387, 6936691, 186, 1236, 345, 116, 189638680, 0, 89),
        ],
        3785744.0,
        676,
        791,
    ),
    (
        "s42b gold-2000",
        1,
        &[
            (
                447616615, 88722663, 43815, 9557, 6381, 43509, 912850944, 36288, 8551,
            ),
            (
                388729910, 27792748, 2104, 5144, 1845, 839, 696452467, 0, 1045,
            ),
            (
                277929413, 12473335, 2527, 2529, 1041, 1347, 359575214, 0, 2119,
            ),
            (
                253092708, 9264275, 1918, 2217, 898, 1000, 321214458, 0, 1755,
            ),
            (242798601, 9437632, 1247, 2511, 1250, 535, 298403199, 0, 985),
            (
                408346925, 15161632, 2103, 3556, 1587, 1421, 426148826, 0, 1692,
            ),
        ],
        56215697.0,
        2307,
        2526,
    ),
    (
        "s42b gold-250",
        2,
        &[
            (
                669710284, 78837523, 43070, 7738, 842, 43025, 907915264, 41415, 601,
            ),
            (32814600, 2711233, 188, 352, 20, 136, 361691841, 0, 30),
            (334565271, 12688131, 185, 1998, 262, 137, 346439390, 0, 42),
            (49507355, 2535655, 52, 369, 35, 21, 54345318, 0, 16),
        ],
        645324.0,
        305,
        243,
    ),
    (
        "s42b gold-500",
        2,
        &[
            (
                517264323, 82395232, 43118, 7546, 1148, 43051, 908771328, 41233, 1004,
            ),
            (63499999, 3530888, 375, 726, 88, 276, 600872949, 0, 103),
            (353800414, 13369482, 254, 2457, 464, 197, 365661457, 0, 86),
            (110462484, 4914777, 108, 740, 124, 66, 119438158, 0, 36),
        ],
        1741654.0,
        380,
        412,
    ),
    (
        "s42b gold-max",
        1,
        &[
            (
                468840035, 90511186, 48147, 9563, 4274, 47717, 914698240, 26791, 23494,
            ),
            (
                522495342, 50140374, 3966, 7726, 2617, 1766, 806286485, 0, 2789,
            ),
            (
                421681825, 24374971, 1766, 4877, 2411, 1125, 533975666, 0, 1470,
            ),
            (
                327820530, 17924058, 2290, 3796, 2123, 1262, 403205030, 0, 2047,
            ),
            (
                287176300, 14438235, 1960, 3168, 1555, 1102, 385329519, 0, 1611,
            ),
            (
                295285852, 13859265, 1951, 2661, 1193, 1013, 352067056, 0, 1772,
            ),
            (
                352504773, 16334304, 3559, 4168, 2315, 1784, 431953325, 0, 3212,
            ),
        ],
        55359667.0,
        2937,
        3631,
    ),
];

/// A replayed run's round from its row ([`ScanRow`]: payload, wire bytes,
/// scan, transfer and its waits, reads, bytes read, paced reads, scan waits;
/// times in ms); its wall is its scan and transfer.
fn starved_round(row: ScanRow) -> RoundMeasure {
    let (moved, wire, scan, transfer, wait, read, bytes_read, paced, scan_wait) = row;
    RoundMeasure {
        bytes_moved: moved,
        wire_bytes: wire,
        scan: ms(scan),
        scan_read: ms(read),
        scan_paced: ms(paced),
        scan_wait: Some(ms(scan_wait)),
        bytes_read,
        transfer: ms(transfer),
        transfer_wait: Some(ms(wait)),
        wall: ms(scan + transfer),
        ..Default::default()
    }
}

/// The downtime in ms the model estimates after a replayed run's rounds:
/// after the hook's round (`hooks` 1) or after catch-up rounds.
fn replay_ms(hooks: usize, rounds: &[RoundMeasure], steady: f64, gap: Duration) -> f64 {
    let t = Targets::new(Duration::from_secs(2), 10).with_cutover_gap(gap);
    let e = if hooks == 1 {
        estimate_after_hook(rounds, &t, steady)
    } else {
        estimate_after_catch_up(rounds, &t, steady)
    };
    e.downtime.as_secs_f64() * 1000.0
}

#[test]
fn scans_that_waited_for_a_cpu_are_taken_without_their_waits() {
    let est = |hooks: usize, rounds: &[RoundMeasure], steady: f64| {
        replay_ms(hooks, rounds, steady, ms(1020))
    };
    // The rounds with the scans' waits, and without them.
    let rounds = |rows: &[ScanRow], scan_waits: bool| -> Vec<RoundMeasure> {
        rows.iter()
            .map(|&row| starved_round(row))
            .map(|r| RoundMeasure {
                scan_wait: r.scan_wait.filter(|_| scan_waits),
                ..r
            })
            .collect()
    };
    let mut out = Vec::new();
    let (mut now_ok, mut gold_gain) = (true, 0.0);
    for (case, hooks, rows, steady, binary_ms, downtime_ms) in SCAN_STARVED {
        let now = est(*hooks, &rounds(rows, true), *steady);
        let was = est(*hooks, &rounds(rows, false), *steady);
        // The walls here are scan plus transfer (the binary's also hold the
        // flush and the hook): the replay is near the binary's, not equal.
        assert!(
            (now / *binary_ms as f64 - 1.0).abs() < 0.1,
            "{case}: replayed {now:.0} ms, the binary said {binary_ms}"
        );
        let (now, was) = (now / *downtime_ms as f64, was / *downtime_ms as f64);
        out.push(format!(
            "{case}: est./actual {now:.2} (scan waits not used: {was:.2})"
        ));
        now_ok &= (0.5..=1.5).contains(&now);
        if case.contains("gold") {
            gold_gain += was.ln().abs() - now.ln().abs();
        }
    }
    eprintln!("{}", out.join("\n"));
    assert!(now_ok, "{}", out.join("\n"));
    // On gold, where the scans waited longest, the waits taken out bring
    // the estimates nearer the downtime.
    assert!(gold_gain > 0.0, "{gold_gain}\n{}", out.join("\n"));
}

/// Stops 45 to 48: `bench/migrate.sh` step 4, PostgreSQL unthrottled
/// (`PG_RATES=max B_TMPFS=1 SPLIT_CPUS=1 B_RPS=1 PG_FIRST_READ_LIMIT=20M`,
/// test builds), as [`SCAN_STARVED`]. The watchdog moved pre-copy to the
/// low-weight group in round 1, and its later rounds before the hook took
/// 23-43 s each (stops 45-46) or 10-45 s (47-48). Stop 45's rows, as
/// BENCHMARKS.md kept them, lack the reads (each of its scans is taken
/// unscaled). Stops 47 and 48 (`s47-old`: stop 46's build in the same
/// minutes) underestimate (0.62-0.86): a catch-up round much shorter than
/// the hook's round, whose flush scaled to its length leaves out part of
/// what the database writes again in the last seconds; one run of stop 48
/// whose report was overwritten came out at 0.40 (BENCHMARKS.md).
const LOW_GROUP: &[ScanStarvedCase] = &[
    (
        "s45 gold-max",
        3,
        &[
            (408276140, 89285691, 43438, 43554, 35355, 0, 0, 0, 12194),
            (331796027, 42231442, 820, 26286, 20947, 0, 0, 0, 495),
            (412006803, 44301189, 777, 31068, 24913, 0, 0, 0, 403),
            (358519458, 43617921, 727, 29074, 22819, 0, 0, 0, 435),
            (530212865, 46091279, 1269, 11582, 7404, 0, 0, 0, 866),
            (499155323, 26400847, 897, 9057, 5800, 0, 0, 0, 610),
            (465489249, 22381701, 828, 7959, 5078, 0, 0, 0, 596),
        ],
        11167368.0,
        2963,
        2771,
    ),
    (
        "s45 default-max",
        3,
        &[
            (414846866, 78927236, 46947, 34966, 27297, 0, 0, 0, 17681),
            (378726205, 59005168, 2651, 31594, 25529, 0, 0, 0, 2621),
            (347475754, 54904783, 2199, 33626, 26953, 0, 0, 0, 2351),
            (486588669, 47704485, 3344, 13724, 6113, 0, 0, 0, 2832),
            (748456909, 53862995, 1569, 10920, 6323, 0, 0, 0, 1222),
            (557382729, 30040237, 932, 7988, 4685, 0, 0, 0, 693),
        ],
        10498451.0,
        2743,
        2137,
    ),
    (
        "s46a gold-max",
        3,
        &[
            (
                420253861, 89565835, 43567, 48781, 39591, 43183, 912855040, 33813, 12390,
            ),
            (
                365025696, 47482059, 885, 27761, 22345, 620, 789186946, 0, 529,
            ),
            (
                456859050, 50361089, 834, 35299, 28328, 548, 743436298, 0, 471,
            ),
            (
                260345643, 44378978, 878, 30963, 24795, 476, 598027990, 0, 474,
            ),
            (
                239159645, 42561759, 688, 29581, 23988, 393, 520051290, 0, 348,
            ),
            (
                145907159, 36665798, 656, 29865, 24575, 433, 469093634, 0, 374,
            ),
            (
                510662823, 46194723, 1180, 11402, 7455, 752, 581582060, 0, 812,
            ),
            (490051943, 28121496, 917, 9400, 6060, 685, 525137153, 0, 687),
            (462231551, 23338362, 891, 8494, 5423, 616, 484654300, 0, 628),
        ],
        10303928.0,
        3205,
        3105,
    ),
    (
        "s46a default-max",
        3,
        &[
            (
                414395107, 78759676, 46938, 36319, 28873, 45519, 906411254, 34104, 17987,
            ),
            (
                308353493, 52399009, 2256, 29559, 23718, 1895, 791442459, 0, 2193,
            ),
            (
                395273711, 56234648, 2830, 38223, 30351, 2543, 785649501, 0, 3051,
            ),
            (
                146077809, 47976043, 1498, 38517, 31185, 1266, 582634096, 0, 1316,
            ),
            (
                121976112, 47728420, 4988, 36138, 28565, 4598, 1043463277, 0, 5202,
            ),
            (
                283932308, 53342442, 1333, 36250, 28839, 975, 660537401, 0, 1044,
            ),
            (
                833927339, 79604155, 3353, 14338, 7681, 3163, 1416161363, 0, 2795,
            ),
            (
                596128663, 37529412, 1215, 10045, 6104, 1072, 614972607, 0, 882,
            ),
            (456570387, 19892917, 685, 6683, 4080, 549, 466823626, 0, 474),
        ],
        9820966.0,
        2072,
        2001,
    ),
    (
        "s46b default-max",
        3,
        &[
            (
                415779398, 78566739, 46668, 38013, 30143, 45644, 906255607, 33829, 18171,
            ),
            (
                221862772, 47573509, 2039, 28635, 22389, 1676, 727188607, 0, 1961,
            ),
            (
                410600933, 55814749, 2878, 32189, 25535, 2611, 796416985, 0, 3002,
            ),
            (
                194122025, 45373575, 1573, 34304, 27631, 1382, 587826461, 0, 1495,
            ),
            (
                139932743, 48565519, 4645, 34810, 26058, 4297, 1069108811, 0, 5145,
            ),
            (
                239116195, 49113449, 1187, 33302, 26424, 901, 575100953, 0, 995,
            ),
            (
                774561385, 72154199, 4078, 15392, 8288, 3760, 1347484363, 0, 3295,
            ),
            (
                590799135, 37098020, 1101, 9723, 6168, 953, 623332609, 0, 835,
            ),
            (422834704, 18189555, 611, 7305, 4423, 493, 432256478, 0, 412),
        ],
        9532217.0,
        2473,
        2090,
    ),
    (
        "s46b gold-max",
        3,
        &[
            (
                377341941, 89237596, 43427, 44363, 35400, 43217, 912441344, 33442, 12133,
            ),
            (
                328741106, 39110042, 970, 25353, 19355, 751, 771269948, 0, 670,
            ),
            (
                411013030, 36230784, 768, 22602, 17229, 496, 602353387, 0, 362,
            ),
            (
                380884742, 38115667, 725, 25836, 19953, 493, 627061512, 0, 395,
            ),
            (
                536865660, 39750198, 1300, 11250, 7073, 817, 568354466, 0, 966,
            ),
            (485134937, 25196433, 943, 9181, 5909, 661, 521535196, 0, 648),
            (461494979, 22190585, 937, 7915, 4906, 665, 489000581, 0, 716),
        ],
        16087393.0,
        3102,
        2691,
    ),
    (
        "s47a default-max",
        2,
        &[
            (
                438172907, 80034299, 45967, 25620, 20622, 44860, 904813767, 33636, 17395,
            ),
            (
                233834043, 33764177, 2766, 20634, 16472, 2236, 723683109, 0, 2499,
            ),
            (
                168132166, 26965098, 1241, 16589, 13127, 980, 470487433, 0, 1080,
            ),
            (
                251143187, 24685568, 1216, 9752, 6746, 814, 438275193, 0, 1031,
            ),
            (
                504401966, 30092998, 3863, 10175, 4385, 3597, 1074734437, 0, 3014,
            ),
            (
                485781727, 20581840, 1212, 5719, 3249, 927, 503854579, 0, 899,
            ),
        ],
        15279871.0,
        1656,
        2151,
    ),
    (
        "s47b default-max",
        2,
        &[
            (
                437362856, 80706209, 47621, 23902, 19196, 46637, 905387222, 33901, 18560,
            ),
            (
                241063675, 37878449, 2027, 20310, 16188, 1618, 721159505, 0, 1761,
            ),
            (
                182573374, 29862661, 1122, 18599, 15184, 810, 489432657, 0, 993,
            ),
            (
                342195401, 42878699, 2104, 21088, 16944, 1802, 669220388, 0, 2101,
            ),
            (
                557944905, 40500955, 3215, 10525, 4038, 3038, 1374438507, 0, 2729,
            ),
            (545186511, 25637258, 899, 5556, 3030, 770, 575013962, 0, 642),
        ],
        17298879.0,
        1572,
        2464,
    ),
    (
        "s47-old default-max",
        3,
        &[
            (
                415303812, 78262105, 49150, 43316, 34923, 47394, 905493719, 34187, 20234,
            ),
            (
                228848997, 48244137, 2256, 34623, 27774, 1830, 754047015, 0, 2079,
            ),
            (
                413715658, 57713878, 3643, 40549, 32425, 3414, 803054390, 0, 3737,
            ),
            (
                226359036, 52771412, 1527, 37953, 30760, 1272, 622193180, 0, 1526,
            ),
            (
                99691648, 46754264, 3880, 44071, 34246, 3612, 1030142332, 0, 3972,
            ),
            (
                395407583, 65693265, 1248, 45716, 37082, 1009, 770994050, 0, 963,
            ),
            (
                866821033, 89532644, 3746, 16562, 8071, 3509, 1478039226, 0, 3157,
            ),
            (
                616184837, 38722824, 1181, 9636, 5749, 1017, 642050009, 0, 909,
            ),
            (
                220296800, 30058326, 1238, 8080, 5257, 1033, 524345641, 0, 1002,
            ),
        ],
        31741075.0,
        4490,
        5213,
    ),
    (
        "s48 default-max",
        2,
        &[
            (
                435925750, 80698362, 47448, 22754, 18087, 46626, 905673943, 32959, 19141,
            ),
            (
                274868656, 38494779, 1902, 18768, 14555, 1576, 711309842, 0, 1578,
            ),
            (
                166095701, 28241441, 1029, 17157, 13768, 836, 485174774, 0, 842,
            ),
            (
                341031922, 42888137, 2227, 22406, 17965, 1931, 659696894, 0, 2228,
            ),
            (
                579771313, 42409508, 4644, 11365, 4529, 4410, 1375739636, 0, 3755,
            ),
            (
                545717547, 25933209, 1002, 5714, 3022, 872, 573349898, 0, 769,
            ),
        ],
        18704642.0,
        1510,
        2457,
    ),
    (
        "s49 default-max",
        2,
        &[
            (
                439472199, 80877313, 47790, 25707, 20587, 45679, 905936087, 33299, 19941,
            ),
            (
                244772890, 38896197, 2051, 18548, 14662, 1783, 709884567, 0, 2008,
            ),
            (
                173439573, 26405617, 1094, 16363, 13023, 887, 462067273, 0, 856,
            ),
            (
                321620851, 37309637, 2178, 19933, 15790, 2020, 603542489, 0, 1957,
            ),
            (
                588310401, 40457816, 3586, 11120, 4394, 3482, 1340933852, 0, 3017,
            ),
            (547443023, 27260862, 940, 5842, 3242, 838, 585609013, 0, 645),
        ],
        18345641.0,
        1607,
        2456,
    ),
    (
        "s49 gold-max",
        3,
        &[
            (
                435403949, 88287870, 43580, 18692, 15184, 43363, 912637952, 33476, 12522,
            ),
            (
                330771973, 28977258, 1821, 14819, 11021, 832, 702552415, 0, 736,
            ),
            (
                300187391, 20309808, 636, 11762, 9156, 473, 458584581, 0, 376,
            ),
            (
                240699632, 18248916, 426, 13377, 10613, 349, 427228578, 0, 250,
            ),
            (510547357, 28026386, 931, 6598, 3932, 740, 519823409, 0, 683),
            (412996434, 16511953, 830, 5479, 3411, 734, 435682401, 0, 623),
            (376580049, 14729790, 814, 5352, 3401, 653, 385879603, 0, 657),
        ],
        18848512.0,
        2329,
        2227,
    ),
    (
        "s49b default-max",
        3,
        &[
            (
                437523867, 81174859, 47137, 22747, 18126, 46258, 906173659, 33725, 18533,
            ),
            (
                239727546, 42094195, 2115, 19832, 15770, 1857, 713342857, 0, 2004,
            ),
            (
                284764685, 35826619, 1451, 19483, 15735, 1294, 591787992, 0, 1374,
            ),
            (
                297216380, 42493791, 1653, 19929, 16196, 1456, 617009363, 0, 1703,
            ),
            (
                518206718, 40312288, 3595, 10122, 3321, 3487, 1422083480, 0, 2958,
            ),
            (
                543398104, 25753997, 1024, 4915, 2379, 920, 559968537, 0, 752,
            ),
            (352455466, 14203618, 698, 4277, 2515, 581, 376915036, 0, 451),
        ],
        14162692.0,
        1847,
        1463,
    ),
    (
        "s49b gold-max",
        2,
        &[
            (
                420736687, 88390880, 43607, 17696, 14434, 43417, 912367616, 34331, 12014,
            ),
            (
                358640417, 30306468, 1236, 13068, 9749, 652, 715394496, 0, 566,
            ),
            (
                282922920, 20310550, 645, 11758, 9158, 494, 452002402, 0, 403,
            ),
            (
                266712601, 18802577, 537, 11749, 9017, 382, 428525574, 0, 289,
            ),
            (530858946, 29796223, 938, 8219, 4984, 780, 542380311, 0, 669),
            (415723350, 16646470, 916, 5443, 3246, 786, 436544812, 0, 692),
        ],
        21028685.0,
        1957,
        2254,
    ),
    (
        "s49c default-max",
        3,
        &[
            (
                437750129, 81242430, 49668, 23222, 18603, 46243, 906304731, 34391, 21339,
            ),
            (
                246008999, 42765341, 2090, 21510, 17715, 1859, 723538883, 0, 1935,
            ),
            (
                331578575, 41656162, 2331, 24162, 19985, 2101, 661374330, 0, 2248,
            ),
            (
                295097485, 45447983, 2072, 24789, 20597, 1947, 623771960, 0, 1982,
            ),
            (
                527235302, 43432648, 3634, 8173, 3752, 3509, 1457478023, 0, 3112,
            ),
            (
                435806122, 35295065, 1538, 6008, 3338, 1401, 644734162, 0, 1328,
            ),
            (
                592218641, 35758674, 1045, 5891, 3000, 941, 602607272, 0, 742,
            ),
        ],
        11660064.0,
        3108,
        1923,
    ),
    (
        "s49c gold-max",
        2,
        &[
            (
                415848264, 88086333, 43450, 18671, 15634, 43073, 912207872, 33165, 12876,
            ),
            (
                325695586, 28659841, 1025, 14863, 11785, 694, 763063340, 0, 503,
            ),
            (
                285134932, 21976984, 627, 12816, 10119, 445, 475448897, 0, 369,
            ),
            (
                269535952, 19886309, 566, 10422, 7899, 369, 437740060, 0, 281,
            ),
            (499640558, 26316103, 966, 6568, 3925, 729, 510092311, 0, 708),
            (407595243, 16473850, 821, 5156, 3190, 680, 420818499, 0, 568),
        ],
        19662904.0,
        1992,
        2112,
    ),
];

/// What each pre-copy round of a [`LOW_GROUP`] run left dirty (the
/// reports' `bytes_dirty`), for the runs whose reports kept them; the
/// others' rows replay as if no round were partial.
const LOW_GROUP_DIRTY: &[(&str, &[u64])] = &[
    (
        "s48 default-max",
        &[452391657, 265350547, 291637619, 300117163, 12591548, 195337],
    ),
    (
        "s49 default-max",
        &[
            449110410, 294536487, 264779503, 271109008, 9743837, 15087004,
        ],
    ),
    (
        "s49 gold-max",
        &[
            462259715, 134353240, 134327195, 161360480, 842541, 431233, 313584,
        ],
    ),
    (
        "s49b default-max",
        &[
            451293256, 311150600, 290540387, 304143666, 15023952, 0, 15273358,
        ],
    ),
    (
        "s49b gold-max",
        &[476656949, 119845915, 149301415, 143166995, 415352, 65536],
    ),
    (
        "s49c default-max",
        &[
            451198066, 307943005, 311620373, 314000967, 12507762, 188123905, 31344,
        ],
    ),
    (
        "s49c gold-max",
        &[481456220, 132937242, 162267658, 147712836, 911368, 131072],
    ),
];

/// [`LOW_GROUP`] runs whose build's model of a catch-up round differs from
/// this one where the replay tells: stop 49's took all a catch-up round
/// moved, the leftovers of the round before it too (this one takes its
/// [`own_bytes`]). Their replay is not compared with what the binary said.
const OTHER_MODEL: &[&str] = &[
    "s49b default-max",
    "s49b gold-max",
    "s49c default-max",
    "s49c gold-max",
];

#[test]
fn after_rounds_in_the_low_weight_group_the_estimate_is_within_half() {
    let mut out = Vec::new();
    let mut ok = true;
    let mut floored = Vec::new();
    for (case, hooks, rows, steady, binary_ms, downtime_ms) in LOW_GROUP {
        let dirty = LOW_GROUP_DIRTY
            .iter()
            .find(|(c, _)| c == case)
            .map_or(&[][..], |(_, d)| d);
        assert!(dirty.is_empty() || dirty.len() == rows.len(), "{case}");
        let rounds: Vec<RoundMeasure> = rows
            .iter()
            .enumerate()
            .map(|(i, &row)| RoundMeasure {
                bytes_dirty: dirty.get(i).copied().unwrap_or(0),
                ..starved_round(row)
            })
            .collect();
        let now = replay_ms(*hooks, &rounds, *steady, ms(1020));
        let t = Targets::new(Duration::from_secs(2), 10).with_cutover_gap(ms(1020));
        let e = estimate_after_catch_up(&rounds, &t, *steady);
        let floor = not_converging_floor(&rounds);
        // The builds of stops 45-48 had no floor, stop 49's its own.
        if floor > 0.0 && (e.final_bytes as f64 - floor).abs() < 1.0 {
            floored.push(*case);
        } else if !OTHER_MODEL.contains(case) {
            // As in `scans_that_waited_for_a_cpu_are_taken_without_their_waits`:
            // near the binary's, not equal (no catch-up round here was the
            // longer, so stop 46's change leaves these as they were).
            assert!(
                (now / *binary_ms as f64 - 1.0).abs() < 0.1,
                "{case}: replayed {now:.0} ms, the binary said {binary_ms}"
            );
        }
        let ratio = now / *downtime_ms as f64;
        out.push(format!("{case}: est./actual {ratio:.2}"));
        ok &= (0.5..=1.5).contains(&ratio);
        // Without the floor these came out at 0.62-0.77.
        ok &= floored.last() != Some(case) || (0.85..=1.15).contains(&ratio);
    }
    eprintln!("{}", out.join("\n"));
    assert_eq!(
        floored,
        [
            "s47a default-max",
            "s47b default-max",
            "s48 default-max",
            "s49 default-max"
        ]
    );
    assert!(ok, "{}", out.join("\n"));
}
