//! The latency model's data: round-trip times between cloud regions, and
//! where each region is on the map.
//!
//! A built-in table for the main AWS regions ships with the crate
//! (`data/rtt-aws.toml`, cloudping p50/p90, source cited in the file); an
//! operator file in the same form is laid over it: its pairs replace the
//! built-in ones and its new regions are added. The file may give whole
//! matrices (`regions`, `p50_ms`, `p90_ms`) or single pairs (`[[pair]]`),
//! the form RTTs that agents measure between nodes would take.

use serde::Deserialize;
use std::collections::BTreeMap;

/// The built-in table (see the file for its source and date).
pub const BUILTIN_TOML: &str = include_str!("../data/rtt-aws.toml");

#[derive(Debug, thiserror::Error)]
pub enum RttError {
    #[error("RTT table: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("RTT table: {what} has {got} rows or columns, the region list has {want}")]
    Shape {
        what: &'static str,
        got: usize,
        want: usize,
    },
    #[error("RTT table: {a} <-> {b}: {msg}")]
    Value { a: String, b: String, msg: String },
    #[error("RTT table: region {0:?} is listed twice")]
    Duplicate(String),
    #[error("RTT table: no round trip between {0} and {1} (give it as a [[pair]])")]
    Missing(String, String),
    #[error("RTT table: coordinates of {region}: {msg}")]
    Coords { region: String, msg: String },
    #[error("RTT table: a region name must be non-empty and printable, got {0:?}")]
    BadName(String),
}

/// One direction-free entry: median and 90th percentile round trip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rtt {
    pub p50_ms: f64,
    pub p90_ms: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PairEntry {
    a: String,
    b: String,
    p50_ms: f64,
    p90_ms: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RttFile {
    source: Option<String>,
    #[serde(default)]
    regions: Vec<String>,
    #[serde(default)]
    coords: BTreeMap<String, [f64; 2]>,
    p50_ms: Option<Vec<Vec<f64>>>,
    p90_ms: Option<Vec<Vec<f64>>>,
    #[serde(default)]
    pair: Vec<PairEntry>,
}

/// Round trips between every pair of a set of regions.
#[derive(Debug, Clone)]
pub struct RttTable {
    names: Vec<String>,
    /// Row-major `names.len()` squared.
    rtt: Vec<Option<Rtt>>,
    coords: Vec<Option<(f64, f64)>>,
    sources: Vec<String>,
}

fn check_name(n: &str) -> Result<(), RttError> {
    if n.is_empty() || n.len() > 64 || n.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(RttError::BadName(n.to_owned()));
    }
    Ok(())
}

fn check_value(a: &str, b: &str, r: Rtt) -> Result<Rtt, RttError> {
    let bad = |msg: &str| RttError::Value {
        a: a.to_owned(),
        b: b.to_owned(),
        msg: msg.to_owned(),
    };
    if !(r.p50_ms.is_finite() && r.p50_ms > 0.0 && r.p50_ms < 10_000.0) {
        return Err(bad(&format!(
            "p50 {} ms is not a round trip (0 < ms < 10000)",
            r.p50_ms
        )));
    }
    if !(r.p90_ms.is_finite() && r.p90_ms >= r.p50_ms && r.p90_ms < 10_000.0) {
        return Err(bad(&format!(
            "p90 {} ms must be at least p50 {} ms",
            r.p90_ms, r.p50_ms
        )));
    }
    Ok(r)
}

impl RttTable {
    /// The built-in table. It is part of the crate and tested, so a failure
    /// to parse it is a build defect; the error still says which entry.
    pub fn builtin() -> Result<Self, RttError> {
        let mut t = Self::empty();
        t.overlay(BUILTIN_TOML)?;
        Ok(t)
    }

    pub fn empty() -> Self {
        Self {
            names: Vec::new(),
            rtt: Vec::new(),
            coords: Vec::new(),
            sources: Vec::new(),
        }
    }

    /// Lays a table file over this one: new regions are added, given pairs
    /// and coordinates replace the old. Every pair must be known afterwards.
    pub fn overlay(&mut self, text: &str) -> Result<(), RttError> {
        let f: RttFile = toml::from_str(text)?;
        let mut next = self.clone();
        let mut seen = std::collections::BTreeSet::new();
        for n in &f.regions {
            check_name(n)?;
            if !seen.insert(n.as_str()) {
                return Err(RttError::Duplicate(n.clone()));
            }
            next.add_region(n);
        }
        for p in &f.pair {
            check_name(&p.a)?;
            check_name(&p.b)?;
            next.add_region(&p.a);
            next.add_region(&p.b);
        }
        let n = f.regions.len();
        let p90 = f.p90_ms.as_ref();
        if let Some(p50) = &f.p50_ms {
            for (what, m) in [("p50_ms", Some(p50)), ("p90_ms", p90)] {
                let Some(m) = m else { continue };
                if m.len() != n {
                    return Err(RttError::Shape {
                        what,
                        got: m.len(),
                        want: n,
                    });
                }
                if let Some(row) = m.iter().find(|r| r.len() != n) {
                    return Err(RttError::Shape {
                        what,
                        got: row.len(),
                        want: n,
                    });
                }
            }
            for (i, a) in f.regions.iter().enumerate() {
                for (j, b) in f.regions.iter().enumerate() {
                    let p50_ms = p50[i][j];
                    // Without a p90 the spread is unknown: a point mass.
                    let p90_ms = p90.map_or(p50_ms, |m| m[i][j]);
                    next.set(a, b, check_value(a, b, Rtt { p50_ms, p90_ms })?);
                }
            }
        } else if p90.is_some() {
            return Err(RttError::Shape {
                what: "p90_ms without p50_ms",
                got: 0,
                want: n,
            });
        }
        for p in &f.pair {
            let r = Rtt {
                p50_ms: p.p50_ms,
                p90_ms: p.p90_ms.unwrap_or(p.p50_ms),
            };
            next.set(&p.a, &p.b, check_value(&p.a, &p.b, r)?);
        }
        for (region, [lat, lon]) in &f.coords {
            if !(lat.abs() <= 90.0 && lon.abs() <= 180.0) {
                return Err(RttError::Coords {
                    region: region.clone(),
                    msg: format!("({lat}, {lon}) is not a latitude/longitude"),
                });
            }
            let Some(i) = next.index(region) else {
                return Err(RttError::Coords {
                    region: region.clone(),
                    msg: "not a region of the table".into(),
                });
            };
            next.coords[i] = Some((*lat, *lon));
        }
        for (i, a) in next.names.iter().enumerate() {
            for (j, b) in next.names.iter().enumerate() {
                if next.rtt[i * next.names.len() + j].is_none() {
                    return Err(RttError::Missing(a.clone(), b.clone()));
                }
            }
        }
        if let Some(s) = f.source {
            next.sources.push(s);
        }
        *self = next;
        Ok(())
    }

    fn add_region(&mut self, name: &str) {
        if self.index(name).is_some() {
            return;
        }
        let old = self.names.len();
        let new = old + 1;
        let mut rtt = vec![None; new * new];
        for i in 0..old {
            for j in 0..old {
                rtt[i * new + j] = self.rtt[i * old + j];
            }
        }
        self.rtt = rtt;
        self.names.push(name.to_owned());
        self.coords.push(None);
    }

    fn set(&mut self, a: &str, b: &str, r: Rtt) {
        let (Some(i), Some(j)) = (self.index(a), self.index(b)) else {
            return;
        };
        let n = self.names.len();
        // Round trips are direction-free: both cells get the value.
        self.rtt[i * n + j] = Some(r);
        self.rtt[j * n + i] = Some(r);
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Where the figures came from, for reports.
    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    /// The round trip between two regions by index. Complete by
    /// construction (`overlay` refuses a table with a gap).
    pub fn get(&self, a: usize, b: usize) -> Rtt {
        self.rtt[a * self.names.len() + b].unwrap_or(Rtt {
            p50_ms: f64::NAN,
            p90_ms: f64::NAN,
        })
    }

    pub fn coords(&self, i: usize) -> Option<(f64, f64)> {
        self.coords[i]
    }

    /// The region whose metro is nearest (great circle) to a point, among
    /// the regions with coordinates.
    pub fn nearest(&self, lat: f64, lon: f64) -> Option<usize> {
        self.coords
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.map(|(a, b)| (i, great_circle_km((lat, lon), (a, b)))))
            .min_by(|x, y| x.1.total_cmp(&y.1))
            .map(|(i, _)| i)
    }
}

/// Haversine distance on a sphere of the Earth's mean radius.
pub fn great_circle_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    /// Mean Earth radius (IUGG), km.
    const R_KM: f64 = 6371.0;
    let (la1, lo1, la2, lo2) = (
        a.0.to_radians(),
        a.1.to_radians(),
        b.0.to_radians(),
        b.1.to_radians(),
    );
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * R_KM * h.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_parses_and_matches_the_cited_anchors() {
        let t = RttTable::builtin().unwrap();
        assert!(t.len() >= 15);
        let r = |a: &str, b: &str| t.get(t.index(a).unwrap(), t.index(b).unwrap());
        // Anchors from cloudping quoted in the file's header.
        assert!((r("us-east-1", "eu-central-1").p50_ms - 93.0).abs() < 2.0);
        assert!((r("us-east-1", "ap-northeast-1").p50_ms - 150.0).abs() < 2.0);
        assert!((r("ap-southeast-1", "sa-east-1").p50_ms - 328.0).abs() < 2.0);
        for i in 0..t.len() {
            assert!(t.coords(i).is_some(), "{}", t.name(i));
            for j in 0..t.len() {
                assert_eq!(t.get(i, j), t.get(j, i));
                assert!(t.get(i, i).p50_ms <= t.get(i, j).p50_ms);
            }
        }
        assert!(t.sources()[0].contains("cloudping"));
    }

    #[test]
    fn nearest_region_by_location() {
        let t = RttTable::builtin().unwrap();
        for (lat, lon, want) in [
            (48.14, 11.58, "eu-central-1"),     // Munich
            (40.71, -74.0, "us-east-1"),        // New York
            (34.05, -118.24, "us-west-1"),      // Los Angeles
            (-37.81, 144.96, "ap-southeast-2"), // Melbourne
            (28.61, 77.21, "ap-south-1"),       // Delhi
        ] {
            assert_eq!(t.name(t.nearest(lat, lon).unwrap()), want, "{lat},{lon}");
        }
        assert!((great_circle_km((0.0, 0.0), (0.0, 180.0)) - 20015.0).abs() < 5.0);
    }

    #[test]
    fn overlay_pairs_and_new_regions() {
        let mut t = RttTable::builtin().unwrap();
        let n = t.len();
        t.overlay(
            r#"
            source = "measured by agents"
            [[pair]]
            a = "us-east-1"
            b = "eu-central-1"
            p50_ms = 80.0
            "#,
        )
        .unwrap();
        let (a, b) = (
            t.index("us-east-1").unwrap(),
            t.index("eu-central-1").unwrap(),
        );
        assert_eq!(t.get(b, a).p50_ms, 80.0);
        assert_eq!(t.get(a, b).p90_ms, 80.0);
        assert_eq!(t.len(), n);
        // A new region needs every pair.
        let err = t
            .overlay("[[pair]]\na = \"lab\"\nb = \"us-east-1\"\np50_ms = 5.0\n")
            .unwrap_err();
        assert!(matches!(err, RttError::Missing(..)), "{err}");
        assert_eq!(t.len(), n, "a refused overlay changes nothing");
        let small = RttTable::empty();
        let mut s = small.clone();
        s.overlay(
            "regions = [\"x\", \"y\"]\np50_ms = [[1.0, 10.0], [10.0, 1.0]]\n[coords]\nx = [0.0, 0.0]\n",
        )
        .unwrap();
        assert_eq!(s.get(0, 1).p50_ms, 10.0);
        assert_eq!(s.nearest(10.0, 10.0), Some(0));
    }

    #[test]
    fn bad_tables_are_refused_with_the_entry() {
        for (text, needle) in [
            ("regions = [\"x\"]\np50_ms = [[1.0, 2.0]]", "columns"),
            ("regions = [\"x\", \"x\"]", "twice"),
            ("regions = [\"x\"]\np50_ms = [[-1.0]]", "x <-> x"),
            (
                "regions = [\"x\"]\np50_ms = [[5.0]]\np90_ms = [[4.0]]",
                "at least p50",
            ),
            (
                "regions = [\"x\"]\np50_ms = [[5.0]]\n[coords]\nx = [95.0, 0.0]",
                "latitude",
            ),
            (
                "regions = [\"x\"]\np50_ms = [[5.0]]\n[coords]\nz = [5.0, 0.0]",
                "not a region",
            ),
            ("regions = [\"a b\"]", "printable"),
            ("bogus = 1", "unknown field"),
        ] {
            let err = RttTable::empty().overlay(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
