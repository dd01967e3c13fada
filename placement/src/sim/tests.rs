//! Properties of the rule, checked through the simulator on random worlds.

use super::*;
use crate::rule::RuleConfig;
use crate::scenario::{ClientRegion, MoveSpec};
use proptest::prelude::*;

fn table() -> RttTable {
    RttTable::builtin().unwrap()
}

fn moves() -> MoveSpec {
    // The measured 1 GiB migration (BENCHMARKS.md): ~10 MiB/s, 1 MiB/s
    // writer, ~0.55 s of cutover work.
    MoveSpec {
        volume_gib: 1.0,
        dirty_mib_per_s: 1.0,
        throughput_mib_per_s: 10.0,
        overhead_s: 0.55,
        restart_s: 0.0,
        max_downtime_s: 1.0,
        max_rounds: None,
    }
}

fn scenario(
    regions: Vec<ClientRegion>,
    sites: Vec<String>,
    amplitude: f64,
    noise: bool,
) -> Scenario {
    Scenario {
        name: "prop".into(),
        description: String::new(),
        days: 1,
        warmup_days: 1,
        step_s: 300.0,
        mean_rps: 50.0,
        amplitude,
        peak_hour: 20.0,
        noise,
        seed: 7,
        access_ms: 0.0,
        sites,
        start: None,
        decide_every_s: 900.0,
        regions,
        events: Vec::new(),
        moves: moves(),
        rule: RuleConfig::default(),
        demand: None,
    }
}

fn run_it(s: &Scenario) -> SimResult {
    run(s, &table(), &s.moves.model()).unwrap()
}

/// Region names by index into the built-in table.
fn names(picks: &[usize]) -> Vec<String> {
    let t = table();
    let mut v: Vec<String> = picks
        .iter()
        .map(|&i| t.name(i % t.len()).to_owned())
        .collect();
    v.sort();
    v.dedup();
    v
}

fn regions_strategy() -> impl Strategy<Value = Vec<ClientRegion>> {
    proptest::collection::vec((0usize..64, 0.1f64..5.0, -12i32..13), 1..5).prop_map(|rs| {
        let mut seen = std::collections::BTreeSet::new();
        rs.into_iter()
            .filter_map(|(i, w, off)| {
                let name = names(&[i]).remove(0);
                seen.insert(name.clone()).then_some(ClientRegion {
                    name,
                    weight: w,
                    utc_offset_h: f64::from(off),
                    amplitude: None,
                    peak_hour: None,
                })
            })
            .collect()
    })
}

/// At most `budget` moves decided in any 24 h.
fn within_budget(p: &PolicyResult, budget: u32) -> bool {
    p.move_log.iter().all(|m| {
        p.move_log
            .iter()
            .filter(|o| o.decided_h <= m.decided_h && m.decided_h - o.decided_h < 24.0)
            .count()
            <= budget as usize
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Flat demand: the best site stays the best; the rule never moves.
    #[test]
    fn never_moves_on_flat_demand(
        regions in regions_strategy(),
        site_picks in proptest::collection::vec(0usize..64, 1..5),
        noise in any::<bool>(),
    ) {
        let s = scenario(regions, names(&site_picks), 0.0, noise);
        let r = run_it(&s);
        let d = r.policy("daffe").unwrap();
        prop_assert_eq!(d.moves, 0, "{:?}", d.move_log);
    }

    /// Two regions nearly tied (weights within 5%, same time zone, noisy):
    /// never more than the budget, never worse than the best static site
    /// by more than its moves cost.
    #[test]
    fn near_ties_stay_within_the_budget(
        pair in (0usize..64, 0usize..64),
        tilt in 0.95f64..1.05,
        off in -12i32..13,
        budget in 1u32..5,
    ) {
        let sites = names(&[pair.0, pair.1]);
        prop_assume!(sites.len() == 2);
        let regions = sites
            .iter()
            .zip([1.0, tilt])
            .map(|(n, w)| ClientRegion {
                name: n.clone(),
                weight: w,
                utc_offset_h: f64::from(off),
                amplitude: None,
                peak_hour: None,
            })
            .collect();
        let mut s = scenario(regions, sites, 0.6, true);
        s.rule.budget_per_day = budget;
        s.days = 2;
        let r = run_it(&s);
        let d = r.policy("daffe").unwrap();
        prop_assert!(within_budget(d, budget), "{:?}", d.move_log);
        let st = r.policy("static").unwrap();
        prop_assert!(
            d.latency_rs <= st.latency_rs + d.total_cost_rs - d.latency_rs + 1e-6,
            "daffe {} static {} at {} moves {:?}", d.latency_rs, st.latency_rs, r.static_site, d.move_log
        );
    }

    /// On diurnal demand the rule's latency never exceeds the best static
    /// site's plus what its own moves cost, and no policy beats the offline
    /// optimum's total cost.
    #[test]
    fn cost_never_exceeds_static_best_plus_its_moves(
        regions in regions_strategy(),
        site_picks in proptest::collection::vec(0usize..64, 2..5),
        amplitude in 0.3f64..0.8,
        noise in any::<bool>(),
    ) {
        let s = scenario(regions, names(&site_picks), amplitude, noise);
        let r = run_it(&s);
        let d = r.policy("daffe").unwrap();
        let st = r.policy("static").unwrap();
        let move_cost = d.total_cost_rs - d.latency_rs;
        prop_assert!(
            d.latency_rs <= st.latency_rs + move_cost + 1e-6,
            "daffe {} static {} moves {:?}", d.latency_rs, st.latency_rs, d.move_log
        );
        let opt = r.policy("optimum").unwrap();
        for p in &r.policies {
            prop_assert!(opt.total_cost_rs <= p.total_cost_rs + 1e-6, "{} beat the optimum", p.policy);
        }
        prop_assert!(within_budget(d, s.rule.budget_per_day));
    }
}

#[test]
fn three_regions_a_day_apart_make_the_rule_follow() {
    let t = table();
    let region = |n: &str, off: f64| ClientRegion {
        name: n.into(),
        weight: 1.0,
        utc_offset_h: off,
        amplitude: Some(0.9),
        peak_hour: None,
    };
    let sites = vec![
        "us-east-1".to_string(),
        "eu-central-1".into(),
        "ap-northeast-1".into(),
    ];
    let s = scenario(
        vec![
            region("us-east-1", -5.0),
            region("eu-central-1", 1.0),
            region("ap-northeast-1", 9.0),
        ],
        sites,
        0.9,
        false,
    );
    let r = run(&s, &t, &s.moves.model()).unwrap();
    let d = r.policy("daffe").unwrap();
    let st = r.policy("static").unwrap();
    let opt = r.policy("optimum").unwrap();
    assert!(d.moves >= 2, "{}", render_table(&r));
    assert!(d.stats.mean_ms < st.stats.mean_ms, "{}", render_table(&r));
    assert!(
        opt.stats.mean_ms <= d.stats.mean_ms + 1e-9,
        "{}",
        render_table(&r)
    );
    let text = render_table(&r);
    for p in POLICIES {
        assert!(text.contains(p));
    }
}

#[test]
fn poisson_draws_have_the_right_mean() {
    let mut g = SplitMix(1);
    for mean in [0.5, 5.0, 80.0] {
        let n = 20_000;
        let avg: f64 = (0..n).map(|_| g.poisson(mean)).sum::<f64>() / f64::from(n);
        assert!((avg - mean).abs() < 0.05 * mean.max(1.0), "{mean}: {avg}");
    }
}
