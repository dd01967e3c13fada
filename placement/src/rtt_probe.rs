//! Round trips measured between nodes (part 2 of the latency model: "RTTs
//! that the agents measure between nodes"), the pure half of `daffe
//! placement rtt`: the summary of a node's samples and the table file they
//! go into. The probe itself is the caller's (a TCP connect to the other
//! node's agent: SYN and SYN-ACK are one round trip answered by the
//! kernel, so neither agent's load nor TLS counts).
//!
//! The file is [`crate::rtt`]'s overlay form: one `[[pair]]` per measured
//! pair. A new measurement of a pair replaces the old one (in either
//! direction: the table is symmetric); every other key is kept, so runs
//! from each node build one file for `--rtt`.

use crate::rtt::{Rtt, RttError, RttTable};
use std::time::Duration;

/// One pair measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub a: String,
    pub b: String,
    pub rtt: Rtt,
}

/// p50 and p90 (nearest rank) of a node's samples; `None` without any.
/// Kept at microsecond resolution, and never 0 (a table's round trip is
/// positive: two nodes on one host measure a few microseconds).
pub fn summarize(samples: &[Duration]) -> Option<Rtt> {
    if samples.is_empty() {
        return None;
    }
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    // Nearest rank: the smallest sample with at least `pct`% at or below.
    let rank = |pct: usize| {
        let i = (pct * ms.len()).div_ceil(100);
        let v = ms[i.clamp(1, ms.len()) - 1];
        ((v * 1e3).round() / 1e3).max(0.001)
    };
    Some(Rtt {
        p50_ms: rank(50),
        p90_ms: rank(90),
    })
}

/// What [`merge`] made: the file's new text, and whether the built-in
/// table with it laid over is whole (else why not: a region the built-in
/// table lacks needs a pair with every other region).
#[derive(Debug)]
pub struct Merged {
    pub text: String,
    pub usable: Result<(), String>,
}

/// `existing` (an RTT file's text, or "") with `measured`'s pairs put in.
/// An existing file that is not an RTT table is an error (it is not ours
/// to rewrite).
pub fn merge(existing: &str, measured: &[Measured]) -> Result<Merged, RttError> {
    // The file must already be a table overlay (or empty).
    RttTable::empty().overlay(existing).or_else(|e| match e {
        RttError::Missing(..) => Ok(()),
        e => Err(e),
    })?;
    let mut doc: toml::Table = toml::from_str(existing)?;
    let same = |p: &toml::Value, m: &Measured| {
        let s = |k: &str| p.get(k).and_then(toml::Value::as_str).unwrap_or_default();
        (s("a") == m.a && s("b") == m.b) || (s("a") == m.b && s("b") == m.a)
    };
    let mut pairs: Vec<toml::Value> = match doc.remove("pair") {
        Some(toml::Value::Array(a)) => a,
        _ => Vec::new(),
    };
    pairs.retain(|p| !measured.iter().any(|m| same(p, m)));
    for m in measured {
        let mut t = toml::Table::new();
        t.insert("a".into(), m.a.clone().into());
        t.insert("b".into(), m.b.clone().into());
        t.insert("p50_ms".into(), m.rtt.p50_ms.into());
        t.insert("p90_ms".into(), m.rtt.p90_ms.into());
        pairs.push(toml::Value::Table(t));
    }
    doc.entry("source").or_insert_with(|| {
        "round trips measured between nodes by `daffe placement rtt` (TCP connect to each agent)"
            .into()
    });
    doc.insert("pair".into(), toml::Value::Array(pairs));
    let text = toml::to_string(&doc).map_err(|e| RttError::Value {
        a: String::new(),
        b: String::new(),
        msg: e.to_string(),
    })?;
    let usable = RttTable::builtin()
        .and_then(|mut t| t.overlay(&text))
        .map_err(|e| e.to_string());
    Ok(Merged { text, usable })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[f64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_secs_f64(m / 1e3)).collect()
    }

    #[test]
    fn percentiles_are_nearest_rank_and_never_zero() {
        type Row<'a> = (&'a [f64], Option<(f64, f64)>);
        let table: &[Row] = &[
            (&[], None),
            (&[3.0], Some((3.0, 3.0))),
            (&[5.0, 1.0, 2.0, 4.0, 3.0], Some((3.0, 5.0))),
            (
                &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0],
                Some((5.0, 9.0)),
            ),
            (&[0.0, 0.0], Some((0.001, 0.001))),
            (&[0.01234, 0.5], Some((0.012, 0.5))),
        ];
        for (samples, want) in table {
            let got = summarize(&ms(samples)).map(|r| (r.p50_ms, r.p90_ms));
            assert_eq!(got, *want, "{samples:?}");
        }
    }

    fn m(a: &str, b: &str, p50: f64) -> Measured {
        Measured {
            a: a.into(),
            b: b.into(),
            rtt: Rtt {
                p50_ms: p50,
                p90_ms: p50 * 1.5,
            },
        }
    }

    #[test]
    fn a_pair_measured_again_replaces_the_old_either_way_round_and_the_rest_is_kept() {
        let first = merge("", &[m("us-east-1", "eu-west-1", 70.0)]).unwrap();
        assert!(first.usable.is_ok(), "{:?}", first.usable);
        let with_coords = format!("{}\n[coords]\nus-east-1 = [38.9, -77.0]\n", first.text);
        let second = merge(
            &with_coords,
            &[
                m("eu-west-1", "us-east-1", 72.5),
                m("us-east-1", "ap-northeast-1", 150.0),
            ],
        )
        .unwrap();
        let mut t = RttTable::builtin().unwrap();
        t.overlay(&second.text).unwrap();
        let i = |n: &str| t.index(n).unwrap();
        assert_eq!(t.get(i("us-east-1"), i("eu-west-1")).p50_ms, 72.5);
        assert_eq!(t.get(i("us-east-1"), i("ap-northeast-1")).p90_ms, 225.0);
        let doc: toml::Table = toml::from_str(&second.text).unwrap();
        assert_eq!(doc["pair"].as_array().unwrap().len(), 2, "{}", second.text);
        assert!(doc.contains_key("coords") && doc.contains_key("source"));
    }

    #[test]
    fn a_region_the_built_in_table_lacks_is_written_and_said_unusable_until_whole() {
        let r = merge("", &[m("lab-a", "us-east-1", 5.0)]).unwrap();
        let why = r.usable.unwrap_err();
        assert!(why.contains("no round trip between"), "{why}");
        let doc: toml::Table = toml::from_str(&r.text).unwrap();
        assert_eq!(doc["pair"][0]["a"].as_str(), Some("lab-a"));
    }

    #[test]
    fn a_file_that_is_not_an_rtt_table_is_refused() {
        for bad in ["not toml [", "colour = \"red\"", "[[pair]]\na = \"x\"\n"] {
            assert!(merge(bad, &[m("a", "b", 1.0)]).is_err(), "{bad}");
        }
    }
}
