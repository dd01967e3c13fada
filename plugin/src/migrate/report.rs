//! What a migration did: rounds, bytes per round, total time, downtime (from
//! the unmount on the source to "ready" on the destination), for the
//! operator's screen and for `--json`.

use mover::net::precopy::{Estimate, FinalRound};
use serde::Serialize;
use std::time::Duration;

/// The estimate, in the report's units.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct EstimateReport {
    pub(crate) downtime_ms: u64,
    pub(crate) final_bytes: u64,
    /// Unique bytes dirtied per second at the source.
    pub(crate) dirty_rate: u64,
    /// Payload bytes per second the link carries.
    pub(crate) link_rate: u64,
    /// The writes outpace the link: pre-copy could not converge.
    pub(crate) outpaced: bool,
}

impl EstimateReport {
    pub(crate) fn of(e: &Estimate, outpaced: bool) -> Self {
        EstimateReport {
            downtime_ms: millis(e.downtime),
            final_bytes: e.final_bytes,
            dirty_rate: rate(e.dirty_rate),
            link_rate: rate(e.link_rate),
            outpaced,
        }
    }
}

/// A rate in whole bytes per second (saturating; NaN and negatives are 0).
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "`as` from f64 saturates (NaN gives 0); the rate is rounded first"
)]
fn rate(r: f64) -> u64 {
    r.round() as u64
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct RoundReport {
    pub(crate) round: u32,
    pub(crate) final_round: bool,
    /// Chunk payload the destination fetched (changed data), kept even when
    /// the round was partial.
    pub(crate) bytes: u64,
    /// Data the source's scan listed (logical bytes; the daemon's
    /// `daffe_cli_bytes_total{kind="scanned"}`).
    pub(crate) bytes_scanned: u64,
    /// Data the source's scan read and hashed: a whole changed file or
    /// image, or of a tracked block image only what was written since the
    /// last scan (`backend::local::writes`).
    pub(crate) bytes_read: u64,
    /// Of a tracked block image: the bytes the kernel saw written since the
    /// previous round's scan (what was dirtied, 4 KiB pages, before any
    /// rounding to chunks); 0 when the image was read whole.
    pub(crate) bytes_tracked: u64,
    /// What the link carried before compression: a chunk sent as a patch of
    /// the destination's older bytes (pages rewritten in place) counts the
    /// patch, not the chunk; chunks dropped as changed under the round
    /// (`bytes_dirty`) count too. Against `bytes_tracked`, what a round
    /// moved for what was written.
    pub(crate) bytes_carried: u64,
    /// Data the destination wrote.
    pub(crate) bytes_written: u64,
    /// Bytes the source changed under the round: they go again next round.
    pub(crate) bytes_dirty: u64,
    /// The source changed under the round; what it moved is kept.
    pub(crate) partial: bool,
    /// Bytes on the wire (TLS, framing, compression included) both ways.
    pub(crate) wire_bytes: u64,
    pub(crate) chunks_new: u64,
    pub(crate) chunks_total: u64,
    pub(crate) scan_ms: u64,
    /// Of `scan_ms`, reading and hashing `bytes_read`; the rest is the walk
    /// and the manifest (what the estimate does not scale with the final
    /// round's bytes, `mover::converge`).
    pub(crate) scan_read_ms: u64,
    /// Of `scan_read_ms`, waiting for the read cap (`--read-limit`).
    pub(crate) scan_paced_ms: u64,
    /// Of `scan_ms`, summed over the scan's threads: time on a CPU, and
    /// time standing runnable without one (as `transfer_run_ms` and
    /// `transfer_wait_ms` for the transfer; the estimate takes the waits
    /// out of the final scan's time). Absent where `/proc` could not tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) scan_run_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) scan_wait_ms: Option<u64>,
    pub(crate) transfer_ms: u64,
    /// Of `transfer_ms`, summed over this process's threads: time on a CPU,
    /// and time standing runnable without one (a round in the idle cpu group
    /// beside a busy application waits; what the estimate takes out of the
    /// rounds' pace, `mover::converge`). Absent where `/proc` could not tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) transfer_run_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) transfer_wait_ms: Option<u64>,
    /// Connection attempts (more than 1: the link was cut and resumed).
    pub(crate) attempts: u32,
    /// The round ran after the before-cutover hook.
    pub(crate) after_hook: bool,
    /// A block volume's syncfs before the round (pre-copy rounds while it
    /// is mounted).
    pub(crate) flush_ms: Option<u64>,
    /// Estimated final-round time after this round (pre-copy rounds).
    pub(crate) estimate_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Report {
    pub(crate) volume: String,
    pub(crate) to: String,
    /// `tree` (dir volume) or `image` (block volume).
    pub(crate) mode: String,
    /// Bytes the volume occupies on the source (allocated blocks).
    pub(crate) used_bytes: u64,
    pub(crate) rounds: Vec<RoundReport>,
    /// Sum of the rounds' fetched bytes.
    pub(crate) bytes_moved: u64,
    pub(crate) wire_bytes: u64,
    pub(crate) compression: bool,
    /// Why pre-copy stopped (`fits`, `not-converging`,
    /// `write-rate-exceeds-link`, `max-rounds`; `resumed`).
    pub(crate) cutover_reason: String,
    /// The convergence model's estimate when pre-copy stopped (none when a
    /// rerun resumed a cutover).
    pub(crate) estimate: Option<EstimateReport>,
    /// The final round against the estimate, and its composition.
    pub(crate) final_round: Option<FinalRound>,
    /// The `--before-cutover` command's run, when one was given.
    pub(crate) before_cutover: Option<super::hook::HookReport>,
    pub(crate) max_downtime_ms: u64,
    pub(crate) total_ms: u64,
    /// From asking for the unmount to seeing it (the operator's part).
    pub(crate) unmount_wait_ms: u64,
    /// From the unmount on the source to the destination owning the volume.
    pub(crate) downtime_ms: u64,
    /// Where the downtime went (none when a rerun resumed a cutover).
    pub(crate) cutover: Option<CutoverPhases>,
    /// What `migrate` warned about before pre-copy (a database moved
    /// without a before-cutover hook).
    pub(crate) warnings: Vec<String>,
}

/// The downtime's phases, in order: they add up to `downtime_ms` (the
/// final round's own scan and transfer are in its round report).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct CutoverPhases {
    /// Proving no other mount namespace or loop holder keeps the image's
    /// filesystem (block volumes).
    pub(crate) held_check_ms: u64,
    /// The final round, from its start to the destination's last reply.
    pub(crate) final_round_ms: u64,
    /// The destination taking ownership.
    pub(crate) commit_ms: u64,
}

/// Milliseconds of `d`, for reports (saturating: no report spans 584
/// million years).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Seconds of a millisecond count, for display.
#[allow(
    clippy::cast_precision_loss,
    reason = "display only: an f64 holds milliseconds exactly up to 285,000 years"
)]
pub(crate) fn secs_of_ms(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// `1.5 KiB`, `3.0 GiB`: a byte count for people.
#[allow(
    clippy::cast_precision_loss,
    reason = "display only: one decimal of a binary unit needs 11 bits, f64 has 52"
)]
pub(crate) fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Report {
    /// The operator's summary.
    pub(crate) fn render(&self) -> String {
        let mut s = format!(
            "migrated {} to {} ({}, {} used)\n",
            self.volume,
            self.to,
            self.mode,
            human_bytes(self.used_bytes)
        );
        s.push_str("  round  kind      data        wire        scan     transfer\n");
        for r in &self.rounds {
            s.push_str(&format!(
                "  {:>5}  {:<8}  {:>10}  {:>10}  {:>6} ms  {:>6} ms{}\n",
                r.round,
                if r.final_round { "final" } else { "pre-copy" },
                human_bytes(r.bytes),
                human_bytes(r.wire_bytes),
                r.scan_ms,
                r.transfer_ms,
                match (r.attempts, r.partial) {
                    (_, true) => format!(
                        "  (partial: {} changed under it)",
                        human_bytes(r.bytes_dirty)
                    ),
                    (a, _) if a > 1 => format!("  ({a} attempts)"),
                    _ => String::new(),
                }
            ));
        }
        s.push_str(&format!(
            "  moved {} ({} on the wire), cutover: {}\n",
            human_bytes(self.bytes_moved),
            human_bytes(self.wire_bytes),
            self.cutover_reason
        ));
        if let (Some(e), Some(f)) = (&self.estimate, &self.final_round) {
            s.push_str(&format!(
                "  estimate {} ms for {} (dirty {}/s, link {}/s); final round {}: {} dirtied \
                 before the unmount request, {} after\n",
                e.downtime_ms,
                human_bytes(e.final_bytes),
                human_bytes(e.dirty_rate),
                human_bytes(e.link_rate),
                human_bytes(f.bytes),
                human_bytes(f.composition.before_unmount),
                human_bytes(f.composition.after_unmount),
            ));
        }
        if let Some(h) = &self.before_cutover {
            s.push_str(&format!(
                "  before-cutover `{}`: exit {}, {:.1} s\n",
                h.command,
                h.exit_status.map_or_else(|| "-".into(), |c| c.to_string()),
                h.seconds
            ));
        }
        for w in &self.warnings {
            s.push_str(&format!("  warning: {w}\n"));
        }
        s.push_str(&format!(
            "  total {:.1} s, waited {:.1} s for the unmount, downtime {} ms (target {} ms)\n",
            secs_of_ms(self.total_ms),
            secs_of_ms(self.unmount_wait_ms),
            self.downtime_ms,
            self.max_downtime_ms
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_names_rounds_and_downtime() {
        let r = Report {
            volume: "counter@gold".into(),
            to: "10.231.0.2".into(),
            mode: "image".into(),
            used_bytes: 3 << 20,
            rounds: vec![
                RoundReport {
                    round: 1,
                    bytes: 3 << 20,
                    ..Default::default()
                },
                RoundReport {
                    round: 2,
                    final_round: true,
                    bytes: 4096,
                    attempts: 2,
                    ..Default::default()
                },
            ],
            downtime_ms: 420,
            cutover_reason: "fits".into(),
            ..Default::default()
        };
        let text = r.render();
        assert!(text.contains("counter@gold"));
        assert!(text.contains("3.0 MiB"));
        assert!(text.contains("final"));
        assert!(text.contains("(2 attempts)"));
        assert!(text.contains("downtime 420 ms"));
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
