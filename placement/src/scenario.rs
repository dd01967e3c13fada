//! A simulated world for `daffe placement simulate`: client regions with
//! population weights and time zones, a diurnal demand curve, regional
//! events, the sites nodes run in, the move cost model and the rule's
//! settings. Read from TOML (`placement/scenarios/*.toml`).
//!
//! Demand of region r at UTC time t (requests per second):
//! `mean_rps * w_r / sum(w) * (1 + A * cos(2 pi (local_h - peak_hour) / 24))`
//! times the factor of any event on r at t; `local_h` is t's hour of the
//! day at the region's UTC offset. The published shape (peak in the local
//! evening, trough before dawn) with A = 0.5-0.67 gives 3-5x peak to trough.

use crate::cost::{DEFAULT_MAX_ROUNDS, MoveModel};
use crate::rates::DemandConfig;
use crate::rtt::RttTable;
use crate::rule::RuleConfig;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("scenario: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("scenario {name:?}: {msg}")]
    Invalid { name: String, msg: String },
}

fn one() -> u32 {
    1
}
fn step() -> f64 {
    60.0
}
fn amplitude() -> f64 {
    0.6
}
fn peak() -> f64 {
    20.0
}
fn yes() -> bool {
    true
}
fn five_min() -> f64 {
    300.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRegion {
    /// A region of the RTT table: where these clients' traffic enters the
    /// cloud (their nearest region).
    pub name: String,
    /// Share of the population (relative to the other regions).
    pub weight: f64,
    /// Local time = UTC + this many hours.
    pub utc_offset_h: f64,
    /// Overrides the scenario's amplitude for this region.
    pub amplitude: Option<f64>,
    /// Overrides the scenario's peak hour for this region.
    pub peak_hour: Option<f64>,
}

/// A change of one region's demand for a while (an outage elsewhere, a
/// launch, a news event).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub region: String,
    /// Hours after the start of the scored period.
    pub start_h: f64,
    pub duration_h: f64,
    /// Demand multiplier while it lasts.
    pub factor: f64,
}

/// The move cost model's inputs, in the units operators think in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveSpec {
    pub volume_gib: f64,
    pub dirty_mib_per_s: f64,
    pub throughput_mib_per_s: f64,
    pub overhead_s: f64,
    #[serde(default)]
    pub restart_s: f64,
    pub max_downtime_s: f64,
    pub max_rounds: Option<u32>,
}

impl MoveSpec {
    pub fn model(&self) -> MoveModel {
        const MIB: f64 = 1024.0 * 1024.0;
        MoveModel {
            volume_bytes: self.volume_gib * 1024.0 * MIB,
            dirty_bytes_per_s: self.dirty_mib_per_s * MIB,
            throughput_bytes_per_s: self.throughput_mib_per_s * MIB,
            overhead_s: self.overhead_s,
            restart_s: self.restart_s,
            max_downtime_s: self.max_downtime_s,
            max_rounds: self.max_rounds.unwrap_or(DEFAULT_MAX_ROUNDS),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Days scored.
    #[serde(default = "one")]
    pub days: u32,
    /// Days observed before scoring starts (the rule's profile needs one).
    #[serde(default = "one")]
    pub warmup_days: u32,
    #[serde(default = "step")]
    pub step_s: f64,
    /// Mean total request rate over all regions.
    pub mean_rps: f64,
    #[serde(default = "amplitude")]
    pub amplitude: f64,
    #[serde(default = "peak")]
    pub peak_hour: f64,
    /// Poisson noise on each step's counts (seeded: runs repeat exactly).
    #[serde(default = "yes")]
    pub noise: bool,
    #[serde(default)]
    pub seed: u64,
    /// Clients' last-mile latency, added to every request whatever the site.
    #[serde(default)]
    pub access_ms: f64,
    /// Regions where a node can run the service.
    pub sites: Vec<String>,
    /// Where it runs at the start (default: the best static site).
    pub start: Option<String>,
    /// How often daffe's rule is asked.
    #[serde(default = "five_min")]
    pub decide_every_s: f64,
    #[serde(rename = "region")]
    pub regions: Vec<ClientRegion>,
    #[serde(default, rename = "event")]
    pub events: Vec<Event>,
    pub moves: MoveSpec,
    #[serde(default)]
    pub rule: RuleConfig,
    #[serde(default)]
    pub demand: Option<DemandConfig>,
}

impl Scenario {
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        Ok(toml::from_str(text)?)
    }

    pub fn validate(&self, table: &RttTable) -> Result<(), ScenarioError> {
        let bad = |msg: String| {
            Err(ScenarioError::Invalid {
                name: self.name.clone(),
                msg,
            })
        };
        let known = |r: &str| table.index(r).is_some();
        if self.days == 0 || self.days > 28 || self.warmup_days > 7 {
            return bad("days must be 1-28 and warmup_days 0-7".into());
        }
        if !(self.step_s >= 1.0 && self.step_s <= 3600.0 && 86_400.0 % self.step_s == 0.0) {
            return bad("step_s must divide a day and be 1-3600".into());
        }
        if !(self.decide_every_s >= self.step_s && self.decide_every_s.is_finite()) {
            return bad("decide_every_s must be at least step_s".into());
        }
        if !(self.mean_rps > 0.0 && self.mean_rps <= 1e6) {
            return bad("mean_rps must be in (0, 1e6]".into());
        }
        if !(0.0..=1.0).contains(&self.amplitude) || !(0.0..=200.0).contains(&self.access_ms) {
            return bad("amplitude must be 0-1 and access_ms 0-200".into());
        }
        if self.sites.is_empty() {
            return bad("no sites".into());
        }
        if let Some(s) = self.sites.iter().find(|s| !known(s)) {
            return bad(format!("site {s:?} is not a region of the RTT table"));
        }
        if let Some(s) = &self.start
            && !self.sites.contains(s)
        {
            return bad(format!("start {s:?} is not one of the sites"));
        }
        if self.regions.is_empty() {
            return bad("no client regions".into());
        }
        for r in &self.regions {
            if !known(&r.name) {
                return bad(format!(
                    "client region {:?} is not a region of the RTT table",
                    r.name
                ));
            }
            if !(r.weight > 0.0 && r.weight.is_finite() && r.utc_offset_h.abs() <= 14.0) {
                return bad(format!(
                    "region {:?}: weight must be above 0, utc_offset_h within 14",
                    r.name
                ));
            }
            if r.amplitude.is_some_and(|a| !(0.0..=1.0).contains(&a)) {
                return bad(format!("region {:?}: amplitude must be 0-1", r.name));
            }
        }
        for e in &self.events {
            if !self.regions.iter().any(|r| r.name == e.region) {
                return bad(format!(
                    "event on {:?}, which is not a client region",
                    e.region
                ));
            }
            if !(e.factor >= 0.0
                && e.factor.is_finite()
                && e.duration_h > 0.0
                && e.start_h.is_finite())
            {
                return bad(format!(
                    "event on {:?}: factor >= 0, duration above 0",
                    e.region
                ));
            }
        }
        self.moves
            .model()
            .validate()
            .or_else(|e| bad(e.to_string()))?;
        self.rule.validate().or_else(|e| bad(e.to_string()))?;
        Ok(())
    }

    /// Requests per second from client region `i` at `t_h` hours after the
    /// start of the scored period (negative: warm-up). Hour 0 is 00:00 UTC.
    pub fn rate(&self, i: usize, t_h: f64) -> f64 {
        let r = &self.regions[i];
        let total_w: f64 = self.regions.iter().map(|r| r.weight).sum();
        let a = r.amplitude.unwrap_or(self.amplitude);
        let peak = r.peak_hour.unwrap_or(self.peak_hour);
        let local = (t_h + r.utc_offset_h).rem_euclid(24.0);
        let base = self.mean_rps * r.weight / total_w
            * (1.0 + a * (2.0 * std::f64::consts::PI * (local - peak) / 24.0).cos());
        let factor: f64 = self
            .events
            .iter()
            .filter(|e| e.region == r.name && t_h >= e.start_h && t_h < e.start_h + e.duration_h)
            .map(|e| e.factor)
            .product();
        base * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
        name = "t"
        mean_rps = 100
        sites = ["us-east-1", "eu-central-1"]
        [[region]]
        name = "us-east-1"
        weight = 3
        utc_offset_h = -5
        [[region]]
        name = "eu-central-1"
        weight = 1
        utc_offset_h = 1
        amplitude = 0.0
        [[event]]
        region = "eu-central-1"
        start_h = 2
        duration_h = 1
        factor = 4
        [moves]
        volume_gib = 1
        dirty_mib_per_s = 1
        throughput_mib_per_s = 10
        overhead_s = 0.5
        max_downtime_s = 1
    "#;

    #[test]
    fn demand_follows_local_evening_and_events() {
        let s = Scenario::parse(MIN).unwrap();
        s.validate(&RttTable::builtin().unwrap()).unwrap();
        // us: 75 rps mean, peak at 20h local = 01h UTC, 1.6x.
        assert!((s.rate(0, 1.0) - 75.0 * 1.6).abs() < 1e-9);
        assert!((s.rate(0, 13.0) - 75.0 * 0.4).abs() < 1e-9);
        assert!((s.rate(0, 25.0) - s.rate(0, 1.0)).abs() < 1e-9);
        // eu: flat 25 rps, x4 during hour 2.
        assert!((s.rate(1, 1.5) - 25.0).abs() < 1e-9);
        assert!((s.rate(1, 2.5) - 100.0).abs() < 1e-9);
        assert!(
            (s.rate(1, -22.0) - 25.0).abs() < 1e-9,
            "events are in the scored period"
        );
    }

    #[test]
    fn bad_scenarios_are_refused_with_the_reason() {
        let table = RttTable::builtin().unwrap();
        for (from, to, needle) in [
            (
                "sites = [\"us-east-1\", \"eu-central-1\"]",
                "sites = [\"mars-1\"]",
                "mars-1",
            ),
            ("weight = 3", "weight = 0", "weight"),
            ("factor = 4", "factor = -1", "factor"),
            (
                "throughput_mib_per_s = 10",
                "throughput_mib_per_s = 0",
                "throughput",
            ),
            ("mean_rps = 100", "mean_rps = 100\nstep_s = 7", "step_s"),
            (
                "mean_rps = 100",
                "mean_rps = 100\nstart = \"ap-south-1\"",
                "start",
            ),
        ] {
            let text = MIN.replace(from, to);
            let err = Scenario::parse(&text)
                .and_then(|s| s.validate(&table).map(|_| s))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{to}: {err}");
        }
        assert!(Scenario::parse("name = 1").is_err());
    }
}
