//! What a service's demand looks like: request rates per client region now
//! (exponentially decayed counts), and a daily profile (rate per region
//! per hour of the day, UTC, averaged over the days seen) from which the
//! decision rule forecasts the next hours.
//!
//! The forecast for a region is its profile, scaled by how far the region
//! is from its profile right now; that deviation fades back to the profile
//! over a few hours (a surge in one region is expected to last a while,
//! not all day). Without a full day of history the forecast is "as now".

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Profile bins: one per hour of the day. An hour is the scale at which
/// diurnal demand changes (a cosine with a 24 h period moves ~25% of its
/// swing per hour) and leaves enough requests per bin to be stable.
pub const BIN_S: i64 = 3600;
pub const BINS: usize = 24;
/// [`BINS`] for arithmetic on signed bin numbers (kept equal to it; a
/// const cast would need an `allow`).
const BINS_I64: i64 = 24;

/// Exponentially decayed request counts per region.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecayedRates {
    pub half_life_s: f64,
    /// Time the values are decayed to (seconds since the epoch).
    pub at: f64,
    pub values: BTreeMap<String, f64>,
}

impl DecayedRates {
    pub fn new(half_life_s: f64) -> Self {
        Self {
            half_life_s: half_life_s.max(1.0),
            at: 0.0,
            values: BTreeMap::new(),
        }
    }

    fn lambda(&self) -> f64 {
        std::f64::consts::LN_2 / self.half_life_s
    }

    /// Counts `n` requests from `region` at time `t`. A time before the
    /// last one (logs are not strictly ordered) counts as already decayed.
    pub fn add(&mut self, t: f64, region: &str, n: f64) {
        if t > self.at {
            let f = (-(t - self.at) * self.lambda()).exp();
            self.values.values_mut().for_each(|v| *v *= f);
            self.at = t;
        }
        let w = n * (-(self.at - t) * self.lambda()).exp();
        *self.values.entry(region.to_owned()).or_default() += w;
    }

    /// Requests per second per region at time `t` (>= the last event):
    /// a decayed count is the rate times the mean life 1/lambda.
    pub fn rates(&self, t: f64) -> BTreeMap<String, f64> {
        let f = (-(t - self.at).max(0.0) * self.lambda()).exp() * self.lambda();
        self.values
            .iter()
            .map(|(k, v)| (k.clone(), v * f))
            .collect()
    }
}

/// Rate per region per hour of the day (UTC), blended across days.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiurnalProfile {
    /// Weight of the newest day in each bin's average.
    pub alpha: f64,
    /// Requests per second, per region, per bin.
    pub bins: BTreeMap<String, Vec<f64>>,
    /// Which bins hold at least one finished hour.
    pub filled: Vec<bool>,
    /// The hour being counted (absolute: t / BIN_S) and its counts.
    pub current_bin: Option<i64>,
    pub current: BTreeMap<String, f64>,
}

impl DiurnalProfile {
    pub fn new(alpha: f64) -> Self {
        Self {
            alpha: alpha.clamp(0.01, 1.0),
            bins: BTreeMap::new(),
            filled: vec![false; BINS],
            current_bin: None,
            current: BTreeMap::new(),
        }
    }

    /// True once every hour of the day has been seen.
    pub fn complete(&self) -> bool {
        self.filled.iter().all(|f| *f)
    }

    fn fold(&mut self, abs_bin: i64, counts: &BTreeMap<String, f64>) {
        let slot = usize::try_from(abs_bin.rem_euclid(BINS_I64)).expect("rem_euclid is in 0..BINS");
        let first = !self.filled[slot];
        let mut regions: Vec<String> = self.bins.keys().cloned().collect();
        regions.extend(counts.keys().cloned());
        regions.sort();
        regions.dedup();
        for r in regions {
            let rate = counts.get(&r).copied().unwrap_or(0.0) / BIN_S as f64;
            let bins = self.bins.entry(r).or_insert_with(|| vec![0.0; BINS]);
            bins[slot] = if first {
                rate
            } else {
                (1.0 - self.alpha) * bins[slot] + self.alpha * rate
            };
        }
        self.filled[slot] = true;
    }

    /// Counts `n` requests from `region` at time `t`. Events are expected
    /// in time order (to the hour); one for an hour already folded counts
    /// toward the current hour.
    pub fn add(&mut self, t: i64, region: &str, n: f64) {
        self.advance(t);
        *self.current.entry(region.to_owned()).or_default() += n;
    }

    /// Folds the hours that ended before `t`. Hours with no event count
    /// as zero demand if the gap is under a day; after a longer gap (the
    /// observer was not running) they are left as they were.
    pub fn advance(&mut self, t: i64) {
        let bin = t.div_euclid(BIN_S);
        match self.current_bin {
            None => self.current_bin = Some(bin),
            Some(cur) if bin > cur => {
                let counts = std::mem::take(&mut self.current);
                self.fold(cur, &counts);
                if bin - cur <= BINS_I64 {
                    for b in cur + 1..bin {
                        self.fold(b, &BTreeMap::new());
                    }
                }
                self.current_bin = Some(bin);
            }
            Some(_) => {}
        }
    }

    /// The profile's rate for `region` at time `t` (0 for unseen regions).
    pub fn rate(&self, region: &str, t: i64) -> f64 {
        let slot = usize::try_from(t.div_euclid(BIN_S).rem_euclid(BINS_I64))
            .expect("rem_euclid is in 0..BINS");
        self.bins.get(region).map_or(0.0, |b| b[slot])
    }
}

/// The observer's view of one service's demand.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Demand {
    pub now: DecayedRates,
    pub profile: DiurnalProfile,
}

/// Tuning of [`Demand`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemandConfig {
    /// Half-life of the "now" rates. Ten minutes follows a regional surge
    /// within the quarter hour yet smooths minute-to-minute noise.
    pub half_life_s: f64,
    /// Weight of the newest day in the profile (0.5: yesterday counts as
    /// much as everything before it; a week's habit fades in ~3 days).
    pub alpha: f64,
    /// Time constant over which a deviation from the profile fades.
    pub fade_s: f64,
}

impl Default for DemandConfig {
    fn default() -> Self {
        Self {
            half_life_s: 600.0,
            alpha: 0.5,
            fade_s: 3.0 * 3600.0,
        }
    }
}

/// Bounds of the now/profile ratio: a region at 10x its habit is a surge
/// worth acting on, beyond that the profile says little anyway.
const MAX_RATIO: f64 = 10.0;

impl Demand {
    pub fn new(cfg: &DemandConfig) -> Self {
        Self {
            now: DecayedRates::new(cfg.half_life_s),
            profile: DiurnalProfile::new(cfg.alpha),
        }
    }

    pub fn add(&mut self, t: f64, region: &str, n: f64) {
        self.now.add(t, region, n);
        self.profile.add(crate::f64_to_i64(t.floor()), region, n);
    }

    /// Forecast rates per region for each of `segments` periods of `seg_s`
    /// seconds starting at `t` (each period's midpoint).
    pub fn forecast(
        &self,
        t: f64,
        segments: usize,
        seg_s: f64,
        fade_s: f64,
    ) -> Vec<BTreeMap<String, f64>> {
        let now = self.now.rates(t);
        if !self.profile.complete() {
            return vec![now; segments];
        }
        // The current hour's profile rate, compared with the decayed rate
        // (which lags by about a half-life: compare like with like).
        let lag = self.now.half_life_s / std::f64::consts::LN_2;
        let mut regions: Vec<&String> = now.keys().chain(self.profile.bins.keys()).collect();
        regions.sort();
        regions.dedup();
        (0..segments)
            .map(|k| {
                let mid = t + (k as f64 + 0.5) * seg_s;
                let fade = (-(mid - t) / fade_s.max(1.0)).exp();
                regions
                    .iter()
                    .map(|r| {
                        let base_now = self.profile.rate(r, crate::f64_to_i64(t - lag));
                        let cur = now.get(*r).copied().unwrap_or(0.0);
                        let prof = self.profile.rate(r, crate::f64_to_i64(mid));
                        let v = if base_now > 0.0 {
                            let ratio = (cur / base_now).clamp(1.0 / MAX_RATIO, MAX_RATIO);
                            prof * (1.0 + (ratio - 1.0) * fade)
                        } else {
                            // A region new to the profile: as now, fading.
                            prof + cur * fade
                        };
                        ((*r).clone(), v)
                    })
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_stream_gives_its_rate() {
        let mut r = DecayedRates::new(600.0);
        for s in 0..7200 {
            r.add(f64::from(s), "eu", 10.0);
        }
        let eu = r.rates(7200.0)["eu"];
        assert!((eu - 10.0).abs() < 0.1, "{eu}");
        // One half-life later, half.
        assert!((r.rates(7800.0)["eu"] - eu / 2.0).abs() < 0.05);
        // A late event counts decayed, not as new.
        let before = r.values["eu"];
        r.add(6599.0, "eu", 1.0);
        assert!((r.values["eu"] - before - 0.5).abs() < 1e-9);
    }

    #[test]
    fn profile_blends_days_and_fills_gaps_with_zero() {
        let mut p = DiurnalProfile::new(0.5);
        // Day 0: 3600 requests in hour 5 only.
        p.add(5 * 3600, "us", 3600.0);
        p.advance(24 * 3600 + 5 * 3600);
        // The hours between, within a day, had no requests: zero.
        assert!(p.complete());
        p.add(24 * 3600 + 5 * 3600, "us", 7200.0);
        p.advance(2 * 24 * 3600 + 5 * 3600 + 1);
        assert_eq!(p.rate("us", 5 * 3600 + 10), 0.5 * 1.0 + 0.5 * 2.0);
        assert_eq!(p.rate("us", 6 * 3600), 0.0);
        assert_eq!(p.rate("eu", 6 * 3600), 0.0);
        // A gap longer than a day is not taken as zero demand.
        let mut q = DiurnalProfile::new(0.5);
        q.add(0, "us", 1.0);
        q.advance(10 * 24 * 3600);
        assert_eq!(q.filled.iter().filter(|f| **f).count(), 1);
    }

    #[test]
    fn forecast_follows_the_profile_and_a_surge_fades() {
        let cfg = DemandConfig::default();
        let mut d = Demand::new(&cfg);
        // Two days: "eu" 10/s in hours 0-11, 1/s after; "ap" the reverse.
        for s in (0..2 * 86_400).step_by(10) {
            let day_h = (s % 86_400) / 3600;
            let (eu, ap) = if day_h < 12 {
                (100.0, 10.0)
            } else {
                (10.0, 100.0)
            };
            d.add(f64::from(s), "eu", eu);
            d.add(f64::from(s), "ap", ap);
        }
        let t_s = 2 * 86_400 + 6 * 3600;
        let t = f64::from(t_s);
        // Keep feeding the habit up to t.
        for s in (2 * 86_400..t_s).step_by(10) {
            d.add(f64::from(s), "eu", 100.0);
            d.add(f64::from(s), "ap", 10.0);
        }
        let f = d.forecast(t, 24, 1800.0, cfg.fade_s);
        assert!((f[0]["eu"] - 10.0).abs() < 0.5, "{:?}", f[0]);
        // 8 hours ahead (hour 14): the reverse.
        assert!((f[16]["ap"] - 10.0).abs() < 0.5, "{:?}", f[16]);
        assert!((f[16]["eu"] - 1.0).abs() < 0.2, "{:?}", f[16]);
        // Without a full day: "as now".
        let mut fresh = Demand::new(&cfg);
        fresh.add(0.0, "eu", 5.0);
        let g = fresh.forecast(0.0, 3, 60.0, cfg.fade_s);
        assert_eq!(g.len(), 3);
        assert_eq!(g[0], g[2]);
    }
}
