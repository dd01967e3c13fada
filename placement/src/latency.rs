//! Request-weighted latency statistics for a mix of client regions served
//! from one site (or, in the simulator, from a sequence of sites).
//!
//! Each (client region, site) pair's round trip is a log-normal fitted to
//! the table's p50 and p90 (p90 = p50 gives a point mass), shifted by the
//! clients' access latency (the last mile, the same whatever the site). A
//! mix weights the pairs by their requests; its mean and percentiles are
//! those of the mixture, so p95 is "95% of requests were at most this".

use crate::rtt::Rtt;

/// The 90th percentile of the standard normal: a log-normal with median m
/// and 90th percentile p has sigma = ln(p / m) / Z90.
const Z90: f64 = 1.281_551_565_544_600_5;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Component {
    weight: f64,
    shift: f64,
    mu: f64,
    sigma: f64,
}

impl Component {
    fn mean(&self) -> f64 {
        self.shift + (self.mu + self.sigma * self.sigma / 2.0).exp()
    }

    fn cdf(&self, x: f64) -> f64 {
        let y = x - self.shift;
        if y <= 0.0 {
            return 0.0;
        }
        if self.sigma == 0.0 {
            return if y.ln() >= self.mu { 1.0 } else { 0.0 };
        }
        normal_cdf((y.ln() - self.mu) / self.sigma)
    }

    /// A range holding all but a negligible tail (8 sigma).
    fn span(&self) -> (f64, f64) {
        (
            self.shift + (self.mu - 8.0 * self.sigma).exp(),
            self.shift + (self.mu + 8.0 * self.sigma).exp(),
        )
    }
}

/// The mean latency of one pair (ms), as the mixture uses it.
pub fn pair_mean_ms(rtt: Rtt, access_ms: f64) -> f64 {
    component(1.0, rtt, access_ms).mean()
}

fn component(weight: f64, rtt: Rtt, access_ms: f64) -> Component {
    let sigma = if rtt.p90_ms > rtt.p50_ms {
        (rtt.p90_ms / rtt.p50_ms).ln() / Z90
    } else {
        0.0
    };
    Component {
        weight,
        shift: access_ms.max(0.0),
        mu: rtt.p50_ms.ln(),
        sigma,
    }
}

/// Latency statistics of a set of requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub requests: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

/// A weighted mixture of per-pair latency distributions.
#[derive(Debug, Clone, Default)]
pub struct Mix {
    comps: Vec<Component>,
}

impl Mix {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `requests` requests whose round trip follows `rtt`.
    pub fn add(&mut self, requests: f64, rtt: Rtt, access_ms: f64) {
        if requests > 0.0 && requests.is_finite() {
            self.comps.push(component(requests, rtt, access_ms));
        }
    }

    pub fn requests(&self) -> f64 {
        self.comps.iter().map(|c| c.weight).sum()
    }

    pub fn mean(&self) -> f64 {
        let w = self.requests();
        if w == 0.0 {
            return 0.0;
        }
        self.comps.iter().map(|c| c.weight * c.mean()).sum::<f64>() / w
    }

    fn cdf(&self, x: f64) -> f64 {
        let w = self.requests();
        self.comps.iter().map(|c| c.weight * c.cdf(x)).sum::<f64>() / w
    }

    /// The smallest latency at least a fraction `q` of requests stay under
    /// (bisection on the mixture's distribution function).
    pub fn quantile(&self, q: f64) -> f64 {
        if self.comps.is_empty() {
            return 0.0;
        }
        let (mut lo, mut hi) = self
            .comps
            .iter()
            .map(Component::span)
            .fold((f64::INFINITY, 0.0_f64), |(a, b), (c, d)| {
                (a.min(c), b.max(d))
            });
        lo = (lo * 0.5).min(lo - 1e-9);
        hi = hi * 1.01 + 1e-9;
        // 0.001 ms is far below any figure the table holds.
        while hi - lo > 1e-3 {
            let mid = (lo + hi) / 2.0;
            if self.cdf(mid) >= q {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    }

    pub fn stats(&self) -> Stats {
        Stats {
            requests: self.requests(),
            mean_ms: self.mean(),
            p50_ms: self.quantile(0.50),
            p95_ms: self.quantile(0.95),
            p99_ms: self.quantile(0.99),
        }
    }
}

/// Standard normal distribution function through erfc.
fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// Complementary error function, Chebyshev fit with fractional error below
/// 1.2e-7 everywhere (Numerical Recipes, `erfcc`): ample for latencies.
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtt(p50_ms: f64, p90_ms: f64) -> Rtt {
        Rtt { p50_ms, p90_ms }
    }

    #[test]
    fn erfc_matches_known_values() {
        for (x, want) in [
            (0.0, 1.0),
            (0.5, 0.479_500_122),
            (1.0, 0.157_299_207),
            (2.0, 0.004_677_735),
            (-1.0, 1.842_700_793),
        ] {
            assert!((erfc(x) - want).abs() < 1e-7 * want.max(1.0), "{x}");
        }
    }

    #[test]
    fn one_pair_gives_back_its_p50_and_p90() {
        let mut m = Mix::new();
        m.add(10.0, rtt(100.0, 120.0), 0.0);
        assert!((m.quantile(0.5) - 100.0).abs() < 0.01);
        assert!((m.quantile(0.9) - 120.0).abs() < 0.01);
        assert!(m.mean() > 100.0 && m.mean() < 110.0);
        let mut shifted = Mix::new();
        shifted.add(1.0, rtt(100.0, 120.0), 20.0);
        assert!((shifted.quantile(0.5) - 120.0).abs() < 0.01);
    }

    #[test]
    fn point_masses_are_request_weighted() {
        let mut m = Mix::new();
        m.add(90.0, rtt(10.0, 10.0), 0.0);
        m.add(10.0, rtt(200.0, 200.0), 0.0);
        assert!((m.mean() - 29.0).abs() < 1e-9);
        assert!((m.quantile(0.5) - 10.0).abs() < 0.01);
        assert!((m.quantile(0.9) - 10.0).abs() < 0.01);
        assert!((m.quantile(0.95) - 200.0).abs() < 0.01);
        let s = m.stats();
        assert_eq!(s.requests, 100.0);
        assert!((s.p99_ms - 200.0).abs() < 0.01);
        assert_eq!(Mix::new().stats().p95_ms, 0.0);
    }
}
