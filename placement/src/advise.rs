//! `daffe placement advise`: from a service's observed demand, the best
//! region now, the request-weighted latency there and at the current site,
//! what a move would cost, and the rule's decision with its reasons.

use crate::cost::MoveEstimate;
use crate::latency::{Mix, Stats, pair_mean_ms};
use crate::rates::DemandConfig;
use crate::rtt::RttTable;
use crate::rule::{self, Decision, RuleConfig, Situation};
use crate::state::ServiceState;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum AdviseError {
    #[error("region {0:?} is not in the RTT table (see --rtt)")]
    UnknownRegion(String),
}

#[derive(Debug)]
pub struct AdviseInput<'a> {
    pub state: &'a ServiceState,
    pub table: &'a RttTable,
    /// Region names where a node can run the service.
    pub sites: &'a [String],
    /// Region of the node serving it now.
    pub current: &'a str,
    pub now: f64,
    pub access_ms: f64,
    pub move_estimate: MoveEstimate,
    pub rule: &'a RuleConfig,
    pub demand: &'a DemandConfig,
}

#[derive(Debug, Clone, Serialize)]
pub struct MoveCost {
    pub downtime_s: f64,
    pub bytes: f64,
    pub total_s: f64,
    /// Requests expected to arrive during the downtime at today's rate.
    pub requests_in_downtime: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Advice {
    pub service: String,
    pub now: f64,
    pub current: String,
    /// The site with the lowest mean latency for the demand right now.
    pub best_now: String,
    pub at_current: Stats,
    pub at_best: Stats,
    /// Requests per second now, placeable ones only.
    pub rate_rps: f64,
    /// Share of requests seen whose client could not be placed.
    pub unknown_share: f64,
    pub rates_by_region: BTreeMap<String, f64>,
    pub move_cost: MoveCost,
    pub decision: Decision,
    pub rtt_source: Vec<String>,
}

fn stats_at(table: &RttTable, rates: &[(usize, f64)], site: usize, access_ms: f64) -> Stats {
    let mut m = Mix::new();
    for &(r, v) in rates {
        m.add(v, table.get(r, site), access_ms);
    }
    let mut s = m.stats();
    // Weights are rates here: report requests per second, not a count.
    s.requests = rates.iter().map(|x| x.1).sum();
    s
}

pub fn advise(input: &AdviseInput<'_>) -> Result<Advice, AdviseError> {
    let t = input.table;
    let idx = |n: &str| {
        t.index(n)
            .ok_or_else(|| AdviseError::UnknownRegion(n.to_owned()))
    };
    let current = idx(input.current)?;
    let mut sites = input
        .sites
        .iter()
        .map(|s| idx(s))
        .collect::<Result<Vec<_>, _>>()?;
    if !sites.contains(&current) {
        sites.push(current);
    }
    let now_rates = input.state.demand.now.rates(input.now);
    let placed: Vec<(usize, f64)> = now_rates
        .iter()
        .filter_map(|(k, v)| t.index(k).map(|i| (i, *v)))
        .filter(|x| x.1 > 0.0)
        .collect();
    let mean_at = |s: usize| -> f64 {
        placed
            .iter()
            .map(|&(r, v)| v * pair_mean_ms(t.get(r, s), input.access_ms))
            .sum()
    };
    let best = sites
        .iter()
        .copied()
        // Ties and no demand keep the current site.
        .min_by(|&a, &b| {
            mean_at(a)
                .total_cmp(&mean_at(b))
                .then((a != current).cmp(&(b != current)))
        })
        .unwrap_or(current);
    let seg = input.rule.plan_step_s;
    let forecast =
        input
            .state
            .demand
            .forecast(input.now, input.rule.segments(), seg, input.demand.fade_s);
    let recent: Vec<f64> = input.state.moves.iter().map(|m| m.at).collect();
    let decision = rule::decide(&Situation {
        now: input.now,
        current,
        sites: &sites,
        forecast: &forecast,
        table: t,
        access_ms: input.access_ms,
        move_estimate: input.move_estimate,
        recent_moves: &recent,
        cfg: input.rule,
    });
    let rate: f64 = placed.iter().map(|x| x.1).sum();
    let c = &input.state.counters;
    let seen = c.lines.saturating_sub(c.malformed);
    Ok(Advice {
        service: input.state.service.clone(),
        now: input.now,
        current: input.current.to_owned(),
        best_now: t.name(best).to_owned(),
        at_current: stats_at(t, &placed, current, input.access_ms),
        at_best: stats_at(t, &placed, best, input.access_ms),
        rate_rps: rate,
        unknown_share: if seen > 0 {
            c.unknown as f64 / seen as f64
        } else {
            0.0
        },
        rates_by_region: now_rates,
        move_cost: MoveCost {
            downtime_s: input.move_estimate.downtime_s,
            bytes: input.move_estimate.bytes,
            total_s: input.move_estimate.total_s,
            requests_in_downtime: rate * input.move_estimate.downtime_s,
        },
        decision,
        rtt_source: t.sources().to_vec(),
    })
}

/// The operator's summary.
pub fn render(a: &Advice) -> String {
    let mut s = format!(
        "{}: {:.2} requests/s placeable ({:.0}% of requests unplaceable)\n",
        a.service,
        a.rate_rps,
        a.unknown_share * 100.0
    );
    let row = |name: &str, site: &str, st: &Stats| {
        format!(
            "  {name:<8} {site:<16} mean {:>6.1} ms  p50 {:>6.1} ms  p95 {:>6.1} ms\n",
            st.mean_ms, st.p50_ms, st.p95_ms
        )
    };
    s.push_str(&row("current", &a.current, &a.at_current));
    s.push_str(&row("best now", &a.best_now, &a.at_best));
    s.push_str(&format!(
        "  a move: ~{:.1} s downtime ({:.0} requests at today's rate), {:.0} MiB, {:.0} s in all\n",
        a.move_cost.downtime_s,
        a.move_cost.requests_in_downtime,
        a.move_cost.bytes / (1024.0 * 1024.0),
        a.move_cost.total_s
    ));
    let verdict = match &a.decision.action {
        rule::Action::Stay => format!("stay at {}", a.current),
        rule::Action::Move { to } => format!("move to {to}"),
    };
    s.push_str(&format!("  decision: {verdict}: {}\n", a.decision.reason));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_for_european_clients_served_from_virginia() {
        let table = RttTable::builtin().unwrap();
        let dcfg = DemandConfig::default();
        let mut st = ServiceState::new("web", &dcfg);
        for s in 0..3600 {
            st.demand.add(f64::from(s), "eu-west-1", 20.0);
            st.demand.add(f64::from(s), "us-east-1", 2.0);
        }
        st.counters.lines = 100;
        st.counters.unknown = 10;
        let sites = vec![
            "us-east-1".to_string(),
            "eu-central-1".into(),
            "eu-west-1".into(),
        ];
        let rule = RuleConfig::default();
        let est = MoveEstimate {
            downtime_s: 0.7,
            bytes: 1.2e9,
            total_s: 110.0,
            rounds: 4,
        };
        let input = AdviseInput {
            state: &st,
            table: &table,
            sites: &sites,
            current: "us-east-1",
            now: 3600.0,
            access_ms: 0.0,
            move_estimate: est,
            rule: &rule,
            demand: &dcfg,
        };
        let a = advise(&input).unwrap();
        assert_eq!(a.best_now, "eu-west-1");
        assert!(a.at_best.mean_ms < a.at_current.mean_ms);
        assert!(a.at_best.p95_ms < a.at_current.p95_ms);
        assert!((a.rate_rps - 22.0).abs() < 1.0, "{}", a.rate_rps);
        assert!((a.unknown_share - 0.1).abs() < 1e-9);
        assert_eq!(
            a.decision.action,
            rule::Action::Move {
                to: "eu-west-1".into()
            }
        );
        let text = render(&a);
        assert!(text.contains("move to eu-west-1"), "{text}");
        assert!(text.contains("best now"), "{text}");
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["decision"]["action"], "move");
        assert_eq!(json["decision"]["to"], "eu-west-1");
        let bad = AdviseInput {
            current: "moon-1",
            ..input
        };
        assert!(advise(&bad).is_err());
    }
}
