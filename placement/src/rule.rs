//! The decision rule: stay, or move the service (and its data) to another
//! site. Pure: it sees a forecast, the latency table, the move's expected
//! cost and the recent moves, and returns a decision with its reasons.
//! `placement/DESIGN.md` states the rule and why; in short:
//!
//! 1. Plan: the cheapest sequence of sites over the next day (dynamic
//!    programming over the forecast, in plan steps), where a move costs
//!    (1 + margin) x its disruption plus the tie toll (the tie threshold
//!    over the tie window's requests), and at most `budget_per_day` moves.
//! 2. If the plan moves now, to S, for an expected stay T (how long the plan
//!    keeps S, at least the minimum stay), move only if all hold: the last
//!    move is at least `min_stay_s` ago; fewer than `budget_per_day` moves
//!    in the last 24 h; the expected gain over T (requests x latency saved,
//!    vs staying) exceeds (1 + margin) x the move's cost plus the same
//!    toll the plan priced in: the tie threshold (the larger of
//!    `min_gain_ms` and `min_gain_frac` of the current mean) times the
//!    requests of the tie window (`tie_window_s`). Gate and plan agree, so the plan never
//!    counts on a move (out, or back) the gate would refuse.

use crate::cost::MoveEstimate;
use crate::dp;
use crate::latency::pair_mean_ms;
use crate::rtt::RttTable;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const DAY_S: f64 = 86_400.0;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleConfig {
    /// The gain must beat the cost by this fraction (1.0: twice the cost).
    /// Forecasts are rough; a move that only just pays is a coin toss.
    pub margin: f64,
    /// No move sooner than this after the last one. Two hours is short
    /// against the day's cycle (demand peaks drift ~15 degrees of longitude
    /// an hour) and long against forecast noise.
    pub min_stay_s: f64,
    /// Moves in any 24 h at most. Three continents' evening peaks are three
    /// natural moves a day; one more leaves room for an event.
    pub budget_per_day: u32,
    /// Tie threshold: a move must save at least this much per request,
    /// over a minimum stay's worth of requests, beyond its cost. Below it
    /// two sites are a tie; request noise cannot pay for a move.
    pub min_gain_ms: f64,
    /// ... or this fraction of the current mean latency, if larger: the
    /// table itself is good to a few percent (p90 sits 3-5% above p50 on
    /// long routes), so a smaller gain is within its error.
    pub min_gain_frac: f64,
    /// The threshold counts this long a window of requests (from the
    /// move): a quarter day. A tilt between two sites that saves less than
    /// the threshold over six hours is noise or a tie, not a reason to move.
    pub tie_window_s: f64,
    /// A request that fails during the downtime counts as this many seconds
    /// of latency: the order of a client's timeout and retry.
    pub penalty_s: f64,
    /// Moving a GiB counts as this many request-seconds (egress is money,
    /// not latency: 0 unless the operator prices it).
    pub cost_per_gib_rs: f64,
    /// How far ahead the plan looks: one diurnal cycle.
    pub horizon_s: f64,
    /// The plan's step: a quarter hour resolves the day's shifts and keeps
    /// the plan small (96 steps).
    pub plan_step_s: f64,
}

impl Default for RuleConfig {
    fn default() -> Self {
        Self {
            margin: 1.0,
            min_stay_s: 2.0 * 3600.0,
            budget_per_day: 4,
            min_gain_ms: 5.0,
            min_gain_frac: 0.05,
            tie_window_s: 6.0 * 3600.0,
            penalty_s: 10.0,
            cost_per_gib_rs: 0.0,
            horizon_s: DAY_S,
            plan_step_s: 900.0,
        }
    }
}

/// Rule settings that cannot work (the message names the rule).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("rule settings: {0}")]
pub struct RuleError(String);

impl RuleConfig {
    pub fn validate(&self) -> Result<(), RuleError> {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        if !(ok(self.margin)
            && ok(self.min_stay_s)
            && ok(self.min_gain_ms)
            && ok(self.min_gain_frac)
            && ok(self.tie_window_s)
            && ok(self.penalty_s)
            && ok(self.cost_per_gib_rs)
            && self.horizon_s.is_finite()
            && self.plan_step_s.is_finite()
            && self.plan_step_s >= 60.0
            && self.horizon_s >= self.plan_step_s
            && self.horizon_s / self.plan_step_s <= 2016.0)
        {
            return Err(RuleError(format!(
                "all must be finite and not negative, plan_step_s at least 60 and horizon_s \
                 between one and 2016 plan steps: {self:?}"
            )));
        }
        Ok(())
    }

    /// Plan steps in the horizon.
    pub fn segments(&self) -> usize {
        crate::f64_to_usize((self.horizon_s / self.plan_step_s).ceil())
    }
}

/// What the rule is asked about.
#[derive(Debug)]
pub struct Situation<'a> {
    pub now: f64,
    /// Table index of the site serving now.
    pub current: usize,
    /// Table indices of the sites a node can serve from.
    pub sites: &'a [usize],
    /// Rates per region (requests per second) for each plan step ahead.
    pub forecast: &'a [BTreeMap<String, f64>],
    pub table: &'a RttTable,
    /// Clients' access latency (the same for every site).
    pub access_ms: f64,
    pub move_estimate: MoveEstimate,
    /// Times of earlier moves (seconds, same clock as `now`).
    pub recent_moves: &'a [f64],
    pub cfg: &'a RuleConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    Stay,
    Move { to: String },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    #[serde(flatten)]
    pub action: Action,
    pub reason: String,
    /// Where the plan would be now (even when a guard keeps the site).
    pub plan_site: String,
    /// How long the plan keeps `plan_site` from now.
    pub expected_stay_s: f64,
    /// Request-seconds of latency saved over the stay vs staying put.
    pub gain_rs: f64,
    /// The move's cost in request-seconds (failed requests x penalty + bytes).
    pub cost_rs: f64,
    /// Mean latency saved per request over the stay.
    pub mean_gain_ms: f64,
    /// Mean latency over the stay if the service stays.
    pub stay_mean_ms: f64,
    /// Moves made in the last 24 h.
    pub moves_last_day: u32,
}

/// Mean latency (ms) from each table region to each candidate site.
fn means(s: &Situation<'_>) -> Vec<Vec<f64>> {
    (0..s.table.len())
        .map(|r| {
            s.sites
                .iter()
                .map(|&site| pair_mean_ms(s.table.get(r, site), s.access_ms))
                .collect()
        })
        .collect()
}

/// Requests per second per table region (unknown names dropped).
fn by_index(table: &RttTable, rates: &BTreeMap<String, f64>) -> Vec<(usize, f64)> {
    rates
        .iter()
        .filter_map(|(k, v)| table.index(k).map(|i| (i, *v)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// The move's cost in request-seconds when `rate` requests/s arrive.
pub fn move_cost_rs(cfg: &RuleConfig, est: &MoveEstimate, rate: f64) -> f64 {
    rate * est.downtime_s * cfg.penalty_s + est.bytes / (1u64 << 30) as f64 * cfg.cost_per_gib_rs
}

pub fn decide(s: &Situation<'_>) -> Decision {
    let cfg = s.cfg;
    let seg = cfg.plan_step_s;
    let Some(cur) = s.sites.iter().position(|&x| x == s.current) else {
        // The caller includes the current site; without it nothing is
        // comparable, so nothing moves.
        return stay(s, "the current site is not among the candidate sites", 0);
    };
    let mean = means(s);
    let steps: Vec<Vec<(usize, f64)>> = s.forecast.iter().map(|f| by_index(s.table, f)).collect();
    let rate: Vec<f64> = steps.iter().map(|f| f.iter().map(|x| x.1).sum()).collect();
    // Request-seconds of latency per plan step per site.
    let cost: Vec<Vec<f64>> = steps
        .iter()
        .map(|f| {
            (0..s.sites.len())
                .map(|j| f.iter().map(|(r, v)| v * seg * mean[*r][j] / 1000.0).sum())
                .collect()
        })
        .collect();
    let moves_last_day = s
        .recent_moves
        .iter()
        .filter(|t| s.now - **t < DAY_S)
        .count();
    let moves_last_day = u32::try_from(moves_last_day).unwrap_or(u32::MAX);
    let last_move = s
        .recent_moves
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let min_stay_steps = crate::f64_to_usize((cfg.min_stay_s / seg).ceil()).max(1);
    let tie_steps = crate::f64_to_usize((cfg.tie_window_s / seg).ceil()).max(1);
    // The gate's threshold, priced into the plan so that the plan never
    // counts on a move (out, or back) the gate would refuse.
    let horizon_reqs: f64 = rate.iter().sum::<f64>() * seg;
    let horizon_mean_ms = if horizon_reqs > 0.0 {
        cost.iter().map(|c| c[cur]).sum::<f64>() / horizon_reqs * 1000.0
    } else {
        0.0
    };
    let threshold_ms = cfg.min_gain_ms.max(cfg.min_gain_frac * horizon_mean_ms);
    let hysteresis = |k: usize| -> f64 {
        let reqs: f64 = rate[k..(k + tie_steps).min(rate.len())].iter().sum::<f64>() * seg;
        reqs * threshold_ms / 1000.0
    };
    let plan_move = |k: usize, _: usize, _: usize| {
        (1.0 + cfg.margin) * move_cost_rs(cfg, &s.move_estimate, rate[k]) + hysteresis(k)
    };
    let plan = dp::solve(&cost, cur, Some(cfg.budget_per_day as usize), &plan_move);
    let Some(&first) = plan.path.first() else {
        return stay(s, "no forecast", moves_last_day);
    };
    let plan_site = s.table.name(s.sites[first]).to_owned();
    let run = plan.path.iter().take_while(|&&x| x == first).count();
    let stay_steps = run.max(min_stay_steps).min(cost.len());
    let (mut gain, mut reqs, mut stay_sum) = (0.0, 0.0, 0.0);
    for k in 0..stay_steps {
        gain += cost[k][cur] - cost[k][first];
        reqs += rate[k] * seg;
        stay_sum += cost[k][cur];
    }
    let move_cost = move_cost_rs(cfg, &s.move_estimate, rate.first().copied().unwrap_or(0.0));
    let mean_gain_ms = if reqs > 0.0 {
        gain / reqs * 1000.0
    } else {
        0.0
    };
    let stay_mean_ms = if reqs > 0.0 {
        stay_sum / reqs * 1000.0
    } else {
        0.0
    };
    let mut d = Decision {
        action: Action::Stay,
        reason: String::new(),
        plan_site: plan_site.clone(),
        expected_stay_s: run as f64 * seg,
        gain_rs: gain,
        cost_rs: move_cost,
        mean_gain_ms,
        stay_mean_ms,
        moves_last_day,
    };
    let toll = hysteresis(0);
    d.reason = if first == cur {
        "the plan keeps the current site".into()
    } else if s.now - last_move < cfg.min_stay_s {
        format!(
            "minimum stay: last move {:.0} s ago, {:.0} s required",
            s.now - last_move,
            cfg.min_stay_s
        )
    } else if moves_last_day >= cfg.budget_per_day {
        format!("daily budget spent: {moves_last_day} moves in the last 24 h")
    } else if gain <= (1.0 + cfg.margin) * move_cost {
        format!(
            "gain {gain:.0} request-s over {:.0} s does not beat (1 + {}) x cost {move_cost:.0}",
            stay_steps as f64 * seg,
            cfg.margin
        )
    } else if gain <= (1.0 + cfg.margin) * move_cost + toll {
        format!(
            "a tie: gain {gain:.0} request-s ({mean_gain_ms:.1} ms per request) is under the \
             threshold's {toll:.0} ({threshold_ms:.1} ms per request over the tie window) on top of the cost"
        )
    } else {
        d.action = Action::Move { to: plan_site };
        format!(
            "gain {gain:.0} request-s ({mean_gain_ms:.1} ms per request) over {:.0} s beats (1 + {}) x cost {move_cost:.0}",
            stay_steps as f64 * seg,
            cfg.margin
        )
    };
    d
}

fn stay(s: &Situation<'_>, reason: &str, moves_last_day: u32) -> Decision {
    Decision {
        action: Action::Stay,
        reason: reason.to_owned(),
        plan_site: s.table.name(s.current).to_owned(),
        expected_stay_s: 0.0,
        gain_rs: 0.0,
        cost_rs: 0.0,
        mean_gain_ms: 0.0,
        stay_mean_ms: 0.0,
        moves_last_day,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RttTable {
        RttTable::builtin().unwrap()
    }

    fn est() -> MoveEstimate {
        MoveEstimate {
            downtime_s: 0.7,
            bytes: 1.2e9,
            total_s: 110.0,
            rounds: 4,
        }
    }

    fn rates(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    fn sites(t: &RttTable) -> Vec<usize> {
        ["us-east-1", "eu-central-1", "ap-northeast-1"]
            .iter()
            .map(|n| t.index(n).unwrap())
            .collect()
    }

    fn situation<'a>(
        t: &'a RttTable,
        sites: &'a [usize],
        forecast: &'a [BTreeMap<String, f64>],
        recent: &'a [f64],
        cfg: &'a RuleConfig,
    ) -> Situation<'a> {
        Situation {
            now: 100_000.0,
            current: sites[0],
            sites,
            forecast,
            table: t,
            access_ms: 0.0,
            move_estimate: est(),
            recent_moves: recent,
            cfg,
        }
    }

    #[test]
    fn moves_when_demand_sits_elsewhere_and_says_why() {
        let t = table();
        let s = sites(&t);
        let cfg = RuleConfig::default();
        let f = vec![rates(&[("eu-west-1", 50.0), ("us-east-1", 2.0)]); cfg.segments()];
        let d = decide(&situation(&t, &s, &f, &[], &cfg));
        assert_eq!(
            d.action,
            Action::Move {
                to: "eu-central-1".into()
            },
            "{d:?}"
        );
        assert!(d.reason.contains("beats"), "{}", d.reason);
        assert!(d.mean_gain_ms > 30.0);
        // The same with a move 30 minutes ago: minimum stay.
        let recent = [100_000.0 - 1800.0];
        let d = decide(&situation(&t, &s, &f, &recent, &cfg));
        assert_eq!(d.action, Action::Stay);
        assert!(d.reason.contains("minimum stay"), "{}", d.reason);
        assert_eq!(d.plan_site, "eu-central-1");
        // Budget spent.
        let recent = [20_000.0, 40_000.0, 60_000.0, 80_000.0];
        let d = decide(&situation(&t, &s, &f, &recent, &cfg));
        assert_eq!(d.action, Action::Stay);
        assert_eq!(d.moves_last_day, 4);
    }

    #[test]
    fn stays_on_a_tie_and_at_the_best_site() {
        let t = table();
        let s = sites(&t);
        let cfg = RuleConfig::default();
        // Best already.
        let f = vec![rates(&[("us-east-1", 50.0), ("eu-west-1", 20.0)]); cfg.segments()];
        let d = decide(&situation(&t, &s, &f, &[], &cfg));
        assert_eq!(d.action, Action::Stay);
        assert!(d.reason.contains("keeps"), "{}", d.reason);
        // An even split between us-east-1 and eu-central-1 clients:
        // Frankfurt is ~1 ms better (its same-region round trip is
        // shorter), far under the tie threshold.
        let f = vec![rates(&[("us-east-1", 50.0), ("eu-central-1", 50.0)]); cfg.segments()];
        let d = decide(&situation(&t, &s, &f, &[], &cfg));
        assert_eq!(d.action, Action::Stay, "{d:?}");
        assert!(
            d.reason.contains("keeps") || d.reason.contains("tie"),
            "{}",
            d.reason
        );
        // No demand at all: nothing to gain.
        let f = vec![BTreeMap::new(); cfg.segments()];
        assert_eq!(
            decide(&situation(&t, &s, &f, &[], &cfg)).action,
            Action::Stay
        );
    }

    #[test]
    fn a_short_detour_does_not_pay_for_the_move() {
        let t = table();
        let s = sites(&t);
        let cfg = RuleConfig {
            penalty_s: 1e4,
            ..RuleConfig::default()
        };
        // Europe dominates for 15 minutes only.
        let mut f = vec![rates(&[("us-east-1", 50.0)]); cfg.segments()];
        f[0] = rates(&[("eu-central-1", 60.0), ("us-east-1", 5.0)]);
        let d = decide(&situation(&t, &s, &f, &[], &cfg));
        assert_eq!(d.action, Action::Stay, "{d:?}");
    }
}
