//! The circadian simulator: one scenario, four policies, the same demand.
//!
//! - `static`: the single best site for the scored period (chosen knowing
//!   the whole period: the operator's best fixed choice).
//! - `follow-the-sun`: every hour, move to the site nearest the region that
//!   sent the most requests in the last hour.
//! - `daffe`: the decision rule ([`crate::rule`]) asked every
//!   `decide_every_s`, fed by the same observer code `observe` runs
//!   ([`crate::rates::Demand`]), which sees only the requests that happened.
//! - `optimum`: the offline optimum for the same move cost (dynamic
//!   programming over the true demand, knowing the future; no budget, no
//!   minimum stay): the lower bound.
//!
//! Time runs in steps of `step_s`; the warm-up days are observed, not
//! scored. An online policy's move decided at step k takes the move's total
//! time (pre-copy and cutover) before the new site serves; the requests of
//! the downtime fail. The optimum starts its pre-copy in time, so its
//! switch lands on the step it chose. Every policy is scored the same way:
//! request-weighted latency over the scored steps (failed requests
//! excluded and counted apart), moves, downtime, bytes.

use crate::cost::{MoveEstimate, MoveModel};
use crate::dp;
use crate::latency::{Mix, Stats, pair_mean_ms};
use crate::rates::Demand;
use crate::rtt::RttTable;
use crate::rule::{self, Action, Situation};
use crate::scenario::{Scenario, ScenarioError};
use serde::Serialize;

const DAY_S: f64 = 86_400.0;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
}

/// The policies in the order the table prints them.
pub const POLICIES: [&str; 4] = ["static", "follow-the-sun", "daffe", "optimum"];

#[derive(Debug, Clone, Serialize)]
pub struct MoveRecord {
    /// Hours after the start of the scored period the decision was made.
    pub decided_h: f64,
    /// ... and the new site started serving.
    pub serving_h: f64,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyResult {
    pub policy: String,
    #[serde(flatten)]
    pub stats: Stats,
    pub moves: u32,
    pub moves_per_day: f64,
    pub downtime_s: f64,
    pub failed_requests: f64,
    pub bytes_moved: f64,
    /// Request-seconds of latency (served requests x their mean latency).
    pub latency_rs: f64,
    /// `latency_rs` + failed requests x the rule's penalty + bytes cost:
    /// what the optimum minimises.
    pub total_cost_rs: f64,
    pub move_log: Vec<MoveRecord>,
    /// Site index (into `SimResult::sites`) serving each scored step.
    #[serde(skip)]
    pub site_per_step: Vec<usize>,
    /// Request-weighted mean latency of each scored step (ms).
    #[serde(skip)]
    pub mean_per_step: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SimResult {
    pub scenario: String,
    pub days: u32,
    pub step_s: f64,
    pub sites: Vec<String>,
    pub regions: Vec<String>,
    pub start_site: String,
    pub static_site: String,
    pub move_estimate: MoveEstimate,
    pub rtt_source: Vec<String>,
    pub policies: Vec<PolicyResult>,
    /// Requests per scored step per client region.
    #[serde(skip)]
    pub demand: Vec<Vec<f64>>,
}

impl SimResult {
    pub fn policy(&self, name: &str) -> Option<&PolicyResult> {
        self.policies.iter().find(|p| p.policy == name)
    }
}

/// SplitMix64: a tiny fixed generator, so a scenario's noise is the same
/// on every machine and every version of every crate.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// A Poisson draw: Knuth's product method for small means, the normal
    /// approximation (Box-Muller) above 30, where it is within a percent.
    fn poisson(&mut self, mean: f64) -> f64 {
        if mean <= 0.0 {
            return 0.0;
        }
        if mean < 30.0 {
            let l = (-mean).exp();
            let (mut k, mut p) = (0.0, 1.0);
            loop {
                p *= self.unit();
                if p <= l {
                    return k;
                }
                k += 1.0;
            }
        }
        let z = (-2.0 * self.unit().ln()).sqrt() * (2.0 * std::f64::consts::PI * self.unit()).cos();
        (mean + mean.sqrt() * z).round().max(0.0)
    }
}

/// The world a policy acts in.
struct World<'a> {
    scn: &'a Scenario,
    table: &'a RttTable,
    /// Table indices.
    sites: Vec<usize>,
    regions: Vec<usize>,
    /// mean[r][j]: mean latency (ms) from client region r to site j.
    mean: Vec<Vec<f64>>,
    /// Requests per step per region, warm-up included.
    counts: Vec<Vec<f64>>,
    warm_steps: usize,
    est: MoveEstimate,
}

impl World<'_> {
    fn step_s(&self) -> f64 {
        self.scn.step_s
    }
    fn scored(&self) -> usize {
        self.counts.len() - self.warm_steps
    }
    fn total(&self, k: usize) -> f64 {
        self.counts[k].iter().sum()
    }
    /// Request-seconds of latency of step k (absolute) at site j.
    fn step_cost(&self, k: usize, j: usize) -> f64 {
        self.counts[k]
            .iter()
            .zip(&self.mean)
            .map(|(n, m)| n * m[j] / 1000.0)
            .sum()
    }
    fn failed(&self, k: usize) -> f64 {
        self.total(k) * (self.est.downtime_s / self.step_s()).min(1.0)
    }
    fn move_cost(&self, k: usize) -> f64 {
        self.failed(k) * self.scn.rule.penalty_s
            + self.est.bytes / (1u64 << 30) as f64 * self.scn.rule.cost_per_gib_rs
    }
    /// Hours after the scored start of absolute step k.
    fn hours(&self, k: usize) -> f64 {
        (k as f64 - self.warm_steps as f64) * self.step_s() / 3600.0
    }
    /// Steps an online move takes before the new site serves.
    fn lag_steps(&self) -> usize {
        crate::f64_to_usize((self.est.total_s / self.step_s()).ceil()).max(1)
    }
}

/// A policy's run: the site of every scored step and where moves landed.
struct Run {
    sites: Vec<usize>,
    /// (decided at absolute step, serving from absolute step, from, to)
    moves: Vec<(usize, usize, usize, usize)>,
}

fn static_run(w: &World<'_>, j: usize) -> Run {
    Run {
        sites: vec![j; w.scored()],
        moves: Vec::new(),
    }
}

/// Drives an online policy: `choose(k, current)` is asked at each step
/// with no move in flight and may return a target.
fn online(
    w: &World<'_>,
    start: usize,
    mut choose: impl FnMut(usize, usize) -> Option<usize>,
) -> Run {
    let mut cur = start;
    let mut pending: Option<(usize, usize, usize)> = None; // (decided, serving, to)
    let mut sites = Vec::with_capacity(w.scored());
    let mut moves = Vec::new();
    for k in w.warm_steps..w.counts.len() {
        if let Some((d, s, to)) = pending
            && k >= s
        {
            moves.push((d, s, cur, to));
            cur = to;
            pending = None;
        }
        if pending.is_none()
            && let Some(to) = choose(k, cur)
            && to != cur
        {
            pending = Some((k, k + w.lag_steps(), to));
        }
        sites.push(cur);
    }
    Run { sites, moves }
}

fn follow_the_sun(w: &World<'_>, start: usize) -> Run {
    let per_hour = crate::f64_to_usize((3600.0 / w.step_s()).round()).max(1);
    online(w, start, |k, _| {
        if !(k - w.warm_steps).is_multiple_of(per_hour) || k < per_hour {
            return None;
        }
        // The region that sent the most requests in the last hour.
        let top = (0..w.regions.len()).max_by(|&a, &b| {
            let sum = |r: usize| (k - per_hour..k).map(|i| w.counts[i][r]).sum::<f64>();
            sum(a).total_cmp(&sum(b))
        })?;
        // Its nearest site.
        (0..w.sites.len()).min_by(|&a, &b| w.mean[top][a].total_cmp(&w.mean[top][b]))
    })
}

fn daffe(w: &World<'_>, start: usize) -> Run {
    let dcfg = w.scn.demand.unwrap_or_default();
    let mut demand = Demand::new(&dcfg);
    let names: Vec<String> = w
        .regions
        .iter()
        .map(|&r| w.table.name(r).to_owned())
        .collect();
    let step = w.step_s();
    let feed = |demand: &mut Demand, k: usize| {
        let t = (k as f64 + 0.5) * step;
        for (r, n) in w.counts[k].iter().enumerate() {
            if *n > 0.0 {
                demand.add(t, &names[r], *n);
            }
        }
    };
    for k in 0..w.warm_steps {
        feed(&mut demand, k);
    }
    let every = crate::f64_to_usize((w.scn.decide_every_s / step).round()).max(1);
    let mut recent: Vec<f64> = Vec::new();
    let cfg = w.scn.rule;
    let mut fed = w.warm_steps;
    online(w, start, |k, cur| {
        // Observations up to the end of the previous step.
        while fed < k {
            feed(&mut demand, fed);
            fed += 1;
        }
        if !(k - w.warm_steps).is_multiple_of(every) {
            return None;
        }
        let now = k as f64 * step;
        demand.profile.advance(crate::f64_to_i64(now));
        let forecast = demand.forecast(now, cfg.segments(), cfg.plan_step_s, dcfg.fade_s);
        let d = rule::decide(&Situation {
            now,
            current: w.sites[cur],
            sites: &w.sites,
            forecast: &forecast,
            table: w.table,
            access_ms: w.scn.access_ms,
            move_estimate: w.est,
            recent_moves: &recent,
            cfg: &cfg,
        });
        match d.action {
            Action::Stay => None,
            Action::Move { to } => {
                recent.push(now);
                let ti = w.table.index(&to)?;
                w.sites.iter().position(|&s| s == ti)
            }
        }
    })
}

fn optimum(w: &World<'_>, start: usize) -> Run {
    let cost: Vec<Vec<f64>> = (w.warm_steps..w.counts.len())
        .map(|k| (0..w.sites.len()).map(|j| w.step_cost(k, j)).collect())
        .collect();
    // Scored exactly as `score` does: the requests of the downtime fail
    // (penalty) instead of being served at the new site.
    let frac = (w.est.downtime_s / w.step_s()).min(1.0);
    let plan = dp::solve(&cost, start, None, &|k, _, to| {
        w.move_cost(w.warm_steps + k) - frac * cost[k][to]
    });
    let mut moves = Vec::new();
    let mut prev = start;
    for (i, &s) in plan.path.iter().enumerate() {
        if s != prev {
            let k = w.warm_steps + i;
            moves.push((k, k, prev, s));
        }
        prev = s;
    }
    Run {
        sites: plan.path,
        moves,
    }
}

fn score(w: &World<'_>, name: &str, run: &Run) -> PolicyResult {
    let (r_n, s_n) = (w.regions.len(), w.sites.len());
    let mut weight = vec![vec![0.0; s_n]; r_n];
    let mut mean_per_step = Vec::with_capacity(run.sites.len());
    let mut latency_rs = 0.0;
    let mut failed = 0.0;
    let landing: Vec<usize> = run.moves.iter().map(|m| m.1).collect();
    for (i, &j) in run.sites.iter().enumerate() {
        let k = w.warm_steps + i;
        let served_frac = if landing.contains(&k) {
            failed += w.failed(k);
            1.0 - (w.est.downtime_s / w.step_s()).min(1.0)
        } else {
            1.0
        };
        let mut step_rs = 0.0;
        for (r, row) in weight.iter_mut().enumerate() {
            let n = w.counts[k][r] * served_frac;
            row[j] += n;
            step_rs += n * w.mean[r][j] / 1000.0;
        }
        latency_rs += step_rs;
        let n = w.total(k) * served_frac;
        mean_per_step.push(if n > 0.0 {
            step_rs / n * 1000.0
        } else {
            f64::NAN
        });
    }
    let mut mix = Mix::new();
    for (r, row) in weight.iter().enumerate() {
        for (j, n) in row.iter().enumerate() {
            mix.add(*n, w.table.get(w.regions[r], w.sites[j]), w.scn.access_ms);
        }
    }
    let moves = u32::try_from(run.moves.len()).unwrap_or(u32::MAX);
    let bytes = f64::from(moves) * w.est.bytes;
    let name_of = |j: usize| w.table.name(w.sites[j]).to_owned();
    PolicyResult {
        policy: name.to_owned(),
        stats: mix.stats(),
        moves,
        moves_per_day: f64::from(moves) / f64::from(w.scn.days),
        downtime_s: f64::from(moves) * w.est.downtime_s,
        failed_requests: failed,
        bytes_moved: bytes,
        latency_rs,
        total_cost_rs: latency_rs
            + failed * w.scn.rule.penalty_s
            + bytes / (1u64 << 30) as f64 * w.scn.rule.cost_per_gib_rs,
        move_log: run
            .moves
            .iter()
            .map(|&(d, s, from, to)| MoveRecord {
                decided_h: w.hours(d),
                serving_h: w.hours(s),
                from: name_of(from),
                to: name_of(to),
            })
            .collect(),
        site_per_step: run.sites.clone(),
        mean_per_step,
    }
}

/// Runs the scenario's four policies with the given move model (the
/// scenario's own, or one fitted from migrate reports).
pub fn run(scn: &Scenario, table: &RttTable, model: &MoveModel) -> Result<SimResult, SimError> {
    scn.validate(table)?;
    let idx = |n: &str| table.index(n).unwrap_or(0);
    let sites: Vec<usize> = scn.sites.iter().map(|s| idx(s)).collect();
    let regions: Vec<usize> = scn.regions.iter().map(|r| idx(&r.name)).collect();
    let mean: Vec<Vec<f64>> = regions
        .iter()
        .map(|&r| {
            sites
                .iter()
                .map(|&s| pair_mean_ms(table.get(r, s), scn.access_ms))
                .collect()
        })
        .collect();
    let per_day = crate::f64_to_usize((DAY_S / scn.step_s).round());
    let warm_steps = per_day * scn.warmup_days as usize;
    let total_steps = warm_steps + per_day * scn.days as usize;
    let mut rng = SplitMix(scn.seed ^ 0x6461_6666_6521);
    let counts: Vec<Vec<f64>> = (0..total_steps)
        .map(|k| {
            let t_h = ((k as f64 + 0.5) * scn.step_s - warm_steps as f64 * scn.step_s) / 3600.0;
            (0..regions.len())
                .map(|r| {
                    let expected = scn.rate(r, t_h) * scn.step_s;
                    if scn.noise {
                        rng.poisson(expected)
                    } else {
                        expected
                    }
                })
                .collect()
        })
        .collect();
    let w = World {
        scn,
        table,
        sites,
        regions,
        mean,
        counts,
        warm_steps,
        est: model.estimate(),
    };
    let static_costs: Vec<f64> = (0..w.sites.len())
        .map(|j| (w.warm_steps..total_steps).map(|k| w.step_cost(k, j)).sum())
        .collect();
    let best_static = (0..w.sites.len())
        .min_by(|&a, &b| static_costs[a].total_cmp(&static_costs[b]))
        .unwrap_or(0);
    let start = scn
        .start
        .as_deref()
        .and_then(|s| scn.sites.iter().position(|x| x == s))
        .unwrap_or(best_static);
    let runs = [
        static_run(&w, best_static),
        follow_the_sun(&w, start),
        daffe(&w, start),
        optimum(&w, start),
    ];
    let policies = POLICIES
        .iter()
        .zip(&runs)
        .map(|(name, run)| score(&w, name, run))
        .collect();
    Ok(SimResult {
        scenario: scn.name.clone(),
        days: scn.days,
        step_s: scn.step_s,
        sites: scn.sites.clone(),
        regions: scn.regions.iter().map(|r| r.name.clone()).collect(),
        start_site: scn.sites[start].clone(),
        static_site: scn.sites[best_static].clone(),
        move_estimate: w.est,
        rtt_source: table.sources().to_vec(),
        policies,
        demand: w.counts[w.warm_steps..].to_vec(),
    })
}

/// The comparison table, as text.
pub fn render_table(r: &SimResult) -> String {
    let mut s = format!(
        "scenario {:?}: {} day(s), sites {}, start {}, best static {}\n\
         move: {:.2} s downtime, {:.0} MiB, {:.0} s total (pre-copy + cutover)\n",
        r.scenario,
        r.days,
        r.sites.join(", "),
        r.start_site,
        r.static_site,
        r.move_estimate.downtime_s,
        r.move_estimate.bytes / (1024.0 * 1024.0),
        r.move_estimate.total_s,
    );
    s.push_str(
        "policy            mean ms  p50 ms  p95 ms  p99 ms  moves/day  downtime s  failed req  moved MiB\n",
    );
    for p in &r.policies {
        s.push_str(&format!(
            "{:<16} {:>8.1} {:>7.1} {:>7.1} {:>7.1} {:>10.2} {:>11.2} {:>11.0} {:>10.0}\n",
            p.policy,
            p.stats.mean_ms,
            p.stats.p50_ms,
            p.stats.p95_ms,
            p.stats.p99_ms,
            p.moves_per_day,
            p.downtime_s,
            p.failed_requests,
            p.bytes_moved / (1024.0 * 1024.0),
        ));
    }
    s.push_str(&format!(
        "(downtime, failed requests and bytes are totals over the {} day(s))\n",
        r.days
    ));
    s
}

#[cfg(test)]
mod tests;
