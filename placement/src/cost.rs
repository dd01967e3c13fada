//! What moving a service costs: expected downtime, bytes moved and total
//! time, from the volume's size and dirty rate and the link's measured
//! throughput. The figures are fitted from `daffe migrate --json` reports
//! when there are some, or given directly.
//!
//! Model (the mover's pre-copy, `mover/DESIGN.md`): round 1 sends the
//! volume, each next round sends what was written during the previous one,
//! until a round is expected to fit the downtime target (or rounds stop
//! shrinking, or the round cap); that final round runs with the service
//! stopped. Downtime = final round / throughput + the fixed cutover work
//! (unmount, fence, hand-over) + the container restart.

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CostError {
    #[error("migrate report {what}: {source}")]
    Json {
        what: String,
        source: serde_json::Error,
    },
    #[error("migrate report {0}: no pre-copy round with bytes and time to measure the throughput")]
    NoThroughput(String),
    #[error("move model: {0}")]
    Invalid(String),
}

/// Pre-copy rounds at most, as `daffe migrate` (its `DEFAULT_MAX_ROUNDS`).
pub const DEFAULT_MAX_ROUNDS: u32 = 10;

/// The inputs of the model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MoveModel {
    /// Bytes the volume holds.
    pub volume_bytes: f64,
    /// Bytes written per second while the service runs.
    pub dirty_bytes_per_s: f64,
    /// Effective pre-copy throughput (scan + transfer), bytes per second.
    pub throughput_bytes_per_s: f64,
    /// Cutover work besides the final round's data.
    pub overhead_s: f64,
    /// Stopping the container on the old node and starting it on the new
    /// (not in a migrate report: it measures unmount to hand-over).
    pub restart_s: f64,
    /// Pre-copy continues until the final round fits this.
    pub max_downtime_s: f64,
    pub max_rounds: u32,
}

/// What one move is expected to cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MoveEstimate {
    pub downtime_s: f64,
    pub bytes: f64,
    /// From the decision to the service answering at the new site.
    pub total_s: f64,
    pub rounds: u32,
}

impl MoveModel {
    pub fn validate(&self) -> Result<(), CostError> {
        let pos = |v: f64| v.is_finite() && v >= 0.0;
        if !(pos(self.volume_bytes)
            && pos(self.dirty_bytes_per_s)
            && pos(self.overhead_s)
            && pos(self.restart_s)
            && pos(self.max_downtime_s)
            && self.throughput_bytes_per_s.is_finite()
            && self.throughput_bytes_per_s > 0.0
            && self.max_rounds >= 1)
        {
            return Err(CostError::Invalid(format!(
                "sizes, rates and times must be finite and not negative, throughput above 0, rounds at least 1: {self:?}"
            )));
        }
        Ok(())
    }

    pub fn estimate(&self) -> MoveEstimate {
        let tp = self.throughput_bytes_per_s;
        let mut round = self.volume_bytes;
        let (mut bytes, mut total, mut rounds) = (0.0, 0.0, 0);
        loop {
            // A pre-copy round, the service running.
            rounds += 1;
            let t = round / tp;
            bytes += round;
            total += t;
            // What it wrote meanwhile (rewrites overlap: at most the volume).
            let next = (self.dirty_bytes_per_s * t).min(self.volume_bytes);
            let fits = next / tp + self.overhead_s <= self.max_downtime_s;
            let shrinking = next < round * 0.9;
            if fits || !shrinking || rounds >= self.max_rounds {
                // `next` goes over with the service stopped.
                let downtime = next / tp + self.overhead_s + self.restart_s;
                return MoveEstimate {
                    downtime_s: downtime,
                    bytes: bytes + next,
                    total_s: total + downtime,
                    rounds: rounds + 1,
                };
            }
            round = next;
        }
    }
}

/// The parts of a `daffe migrate --json` report the model reads.
#[derive(Debug, Clone, Deserialize)]
pub struct MigrateReport {
    #[serde(default)]
    pub volume: String,
    pub used_bytes: u64,
    pub rounds: Vec<ReportRound>,
    pub bytes_moved: u64,
    pub total_ms: u64,
    #[serde(default)]
    pub unmount_wait_ms: u64,
    pub downtime_ms: u64,
    pub max_downtime_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReportRound {
    pub bytes: u64,
    pub scan_ms: u64,
    pub transfer_ms: u64,
    pub final_round: bool,
}

impl MigrateReport {
    pub fn parse(what: &str, text: &str) -> Result<Self, CostError> {
        serde_json::from_str(text).map_err(|source| CostError::Json {
            what: what.to_owned(),
            source,
        })
    }
}

/// Fits the model to one or more reports (throughput, dirty rate and
/// overhead averaged by weight of data and time). The volume size is the
/// largest report's.
pub fn fit(reports: &[(String, MigrateReport)], restart_s: f64) -> Result<MoveModel, CostError> {
    let (mut bytes, mut secs) = (0.0, 0.0);
    let (mut dirty_bytes, mut dirty_secs) = (0.0, 0.0);
    let (mut overhead, mut n) = (0.0, 0.0);
    let (mut volume, mut max_down, mut max_rounds) = (0.0_f64, 0.0_f64, 1_u32);
    for (what, r) in reports {
        let pre: Vec<&ReportRound> = r.rounds.iter().filter(|x| !x.final_round).collect();
        let b: f64 = pre.iter().map(|x| x.bytes as f64).sum();
        let s: f64 = pre
            .iter()
            .map(|x| (x.scan_ms + x.transfer_ms) as f64 / 1000.0)
            .sum();
        if b <= 0.0 || s <= 0.0 {
            return Err(CostError::NoThroughput(what.clone()));
        }
        bytes += b;
        secs += s;
        // Round k+1 carries what was written during round k.
        for w in r.rounds.windows(2) {
            dirty_bytes += w[1].bytes as f64;
            dirty_secs += (w[0].scan_ms + w[0].transfer_ms) as f64 / 1000.0;
        }
        volume = volume.max(r.used_bytes as f64);
        max_down = max_down.max(r.max_downtime_ms as f64 / 1000.0);
        max_rounds = max_rounds.max(u32::try_from(r.rounds.len()).unwrap_or(u32::MAX));
        let tp = b / s;
        let last = r.rounds.last().map_or(0.0, |x| x.bytes as f64);
        overhead += (r.downtime_ms as f64 / 1000.0 - last / tp).max(0.0);
        n += 1.0;
    }
    if n == 0.0 {
        return Err(CostError::Invalid("no migrate report given".into()));
    }
    let m = MoveModel {
        volume_bytes: volume,
        dirty_bytes_per_s: if dirty_secs > 0.0 {
            dirty_bytes / dirty_secs
        } else {
            0.0
        },
        throughput_bytes_per_s: bytes / secs,
        overhead_s: overhead / n,
        restart_s,
        max_downtime_s: max_down,
        max_rounds: max_rounds.max(DEFAULT_MAX_ROUNDS),
    };
    m.validate()?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> MoveModel {
        MoveModel {
            volume_bytes: 1e9,
            dirty_bytes_per_s: 1e6,
            throughput_bytes_per_s: 1e7,
            overhead_s: 0.3,
            restart_s: 0.0,
            max_downtime_s: 1.0,
            max_rounds: 10,
        }
    }

    #[test]
    fn pre_copy_converges_to_a_short_final_round() {
        let e = model().estimate();
        // 1 GB at 10 MB/s: 100 s; then 100 MB (10 s), 10 MB (1 s): the
        // next, 1 MB, fits 1 s with the overhead.
        assert_eq!(e.rounds, 4);
        assert!((e.downtime_s - 0.4).abs() < 1e-9, "{e:?}");
        assert!((e.bytes - 1.111e9).abs() < 1e3, "{e:?}");
        assert!((e.total_s - 111.4).abs() < 1e-6, "{e:?}");
        // A writer faster than the link never converges: after one round
        // the whole volume goes over again with the service stopped.
        let e = MoveModel {
            dirty_bytes_per_s: 2e7,
            ..model()
        }
        .estimate();
        assert_eq!(e.rounds, 2);
        assert!((e.downtime_s - 100.3).abs() < 1e-9, "{e:?}");
        let mut bad = model();
        bad.throughput_bytes_per_s = 0.0;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn fitting_a_report_reproduces_it() {
        // The shape of the report `tests/migrate.rs` prints for a 1 GiB
        // volume under a 1 MB/s writer.
        let text = r#"{"volume":"big","to":"b","mode":"tree","used_bytes":1075000000,
            "rounds":[
              {"round":1,"final_round":false,"bytes":1076000000,"scan_ms":5000,"transfer_ms":95000},
              {"round":2,"final_round":false,"bytes":101000000,"scan_ms":800,"transfer_ms":9200},
              {"round":3,"final_round":false,"bytes":12000000,"scan_ms":200,"transfer_ms":1000},
              {"round":4,"final_round":true,"bytes":1500000,"scan_ms":50,"transfer_ms":150}],
            "bytes_moved":1190500000,"wire_bytes":0,"compression":true,"cutover_reason":"fits",
            "max_downtime_ms":1000,"total_ms":116500,"unmount_wait_ms":3000,"downtime_ms":697}"#;
        let r = MigrateReport::parse("t", text).unwrap();
        let m = fit(&[("t".into(), r)], 0.0).unwrap();
        assert!(
            (m.throughput_bytes_per_s / 1e7 - 1.067).abs() < 0.01,
            "{m:?}"
        );
        assert!((m.dirty_bytes_per_s / 1e6 - 1.0).abs() < 0.1, "{m:?}");
        let e = m.estimate();
        assert!((e.downtime_s - 0.697).abs() < 0.2, "{e:?}");
        assert!((e.bytes / 1.19e9 - 1.0).abs() < 0.05, "{e:?}");
        assert!(MigrateReport::parse("x", "{}").is_err());
        let empty = MigrateReport::parse(
            "e",
            r#"{"used_bytes":0,"rounds":[],"bytes_moved":0,"total_ms":0,"downtime_ms":0,"max_downtime_ms":0}"#,
        )
        .unwrap();
        assert!(matches!(
            fit(&[("e".into(), empty)], 0.0),
            Err(CostError::NoThroughput(_))
        ));
    }
}
