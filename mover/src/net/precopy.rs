//! The pre-copy loop of a live migration, for embedders (daffe's
//! `migrate`): rounds while the app runs, each one keeping what it moved
//! (the receiver marks what the source changed under it dirty, see
//! `receive::partial`), until the convergence model (its [`Targets`] and [`Estimate`]) says to stop; then the
//! caller unmounts and runs the final round.
//!
//! The loop only decides and measures. Where rounds go is a
//! [`RoundTarget`] ([`RoundPusher`] in production); what the embedder does
//! between rounds is [`PreCopyHooks`]: progress after each round, and a
//! command before the *last* pre-copy round (`--before-cutover`, e.g. a
//! database checkpoint), so that what it flushes travels while the app
//! still runs. The result is data ([`PreCopyReport`], serde) for the
//! embedder's own report.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::rounds::{RoundPushError, RoundPushReport, RoundPusher};
use crate::clock::millis;
use crate::converge::{self, Decision, RoundMeasure};
// The convergence model's targets and figures are part of this API.
pub use crate::converge::{Composition, Estimate, StopReason, Targets};

/// Where rounds go.
pub trait RoundTarget {
    /// Scans and pushes round `round` (numbered from 1 per migration).
    fn push_round(
        &mut self,
        round: u32,
        final_round: bool,
    ) -> Result<RoundPushReport, RoundPushError>;
}

impl RoundTarget for RoundPusher {
    fn push_round(
        &mut self,
        round: u32,
        final_round: bool,
    ) -> Result<RoundPushReport, RoundPushError> {
        self.push(round, final_round, &mut |_| {})
    }
}

/// What the embedder does between rounds. Every method has a default that
/// does nothing.
pub trait PreCopyHooks {
    /// A pre-copy round ended (with the estimate after it).
    fn round_done(&mut self, _round: &PreCopyRound) {}
    /// True when [`PreCopyHooks::before_last_round`] does something: the
    /// loop then runs one more pre-copy round after it.
    fn has_before_last_round(&self) -> bool {
        false
    }
    /// Pre-copy decided to stop: runs before the one more (last) pre-copy
    /// round that carries what it flushed. An error ends pre-copy with
    /// [`PreCopyError::Hook`]; nothing is fenced.
    fn before_last_round(&mut self, _estimate: &Estimate) -> Result<(), String> {
        Ok(())
    }
}

/// No hooks.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;
impl PreCopyHooks for NoHooks {}

/// One pre-copy round in the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PreCopyRound {
    /// The round number (1-based).
    pub round: u32,
    /// Payload applied at the destination (kept even when the round was
    /// partial).
    pub bytes_moved: u64,
    /// Bytes the source changed under the round: sent again next round.
    pub bytes_dirty: u64,
    /// Chunk bytes the link carried before compression: a chunk sent as a
    /// patch of the destination's older bytes counts the patch; chunks the
    /// receiver dropped as changed under the round count too
    /// ([`RoundPushReport::carried`]).
    pub bytes_carried: u64,
    /// Entries with such bytes.
    pub entries_dirty: u64,
    /// The source changed under the round (it still applied the rest).
    pub partial: bool,
    /// Bytes on the wire (TLS included, all attempts).
    pub wire_bytes: u64,
    /// The source's scan, in milliseconds.
    pub scan_ms: u64,
    /// From the first request to the receiver's `RoundDone`, in milliseconds.
    pub transfer_ms: u64,
    /// The whole round, in milliseconds.
    pub wall_ms: u64,
    /// Connections it took (1: no link was cut).
    pub attempts: u32,
    /// The round ran after the before-cutover hook.
    pub after_hook: bool,
    /// The model's view after this round.
    pub estimate: Estimate,
}

/// What pre-copy did and why it stopped.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PreCopyReport {
    /// Every pre-copy round, in order.
    pub rounds: Vec<PreCopyRound>,
    /// Why pre-copy stopped.
    pub reason: StopReason,
    /// The estimate when pre-copy stopped: the final round's expected
    /// payload and downtime, and the rates they come from.
    pub estimate: Estimate,
    /// The source dirties data faster than the link carries it (the
    /// estimate has the figures; see [`PreCopyReport::outpaced_message`]).
    pub outpaced: bool,
    /// The before-cutover hook ran.
    pub hook_ran: bool,
    /// The number the final round should carry.
    pub next_round: u32,
    /// When the last pre-copy round's scan started (the final round carries
    /// what was dirtied since).
    #[serde(skip)]
    pub last_scan_started: Option<Instant>,
}

impl PreCopyReport {
    /// Said before the unmount is requested when the writes outpace the
    /// link: the dirty rate, the link rate and the expected downtime.
    pub fn outpaced_message(&self) -> Option<String> {
        self.outpaced.then(|| {
            let e = &self.estimate;
            format!(
                "the source dirties {:.1} MB/s and the link carries {:.1} MB/s: pre-copy cannot \
                 converge; expect about {:.1} s of downtime ({} MB in the final round)",
                e.dirty_rate / 1e6,
                e.link_rate / 1e6,
                e.downtime.as_secs_f64(),
                e.final_bytes / 1_000_000
            )
        })
    }

    /// What to tell the operator before the unmount is asked for: the
    /// source outpaces the link ([`Self::outpaced_message`]), or else the
    /// estimate is over `max_downtime` (a cutover that goes ahead anyway:
    /// `--strict` would have refused). `None` when the estimate fits.
    pub fn cutover_warning(&self, max_downtime: Duration) -> Option<String> {
        let e = &self.estimate;
        self.outpaced_message().or_else(|| {
            (e.downtime > max_downtime).then(|| {
                format!(
                    "expect about {:.1} s of downtime, over the {:.1} s asked ({} MB in the \
                     final round; the source dirties {:.1} MB/s, the link carries {:.1} MB/s)",
                    e.downtime.as_secs_f64(),
                    max_downtime.as_secs_f64(),
                    e.final_bytes / 1_000_000,
                    e.dirty_rate / 1e6,
                    e.link_rate / 1e6,
                )
            })
        })
    }

    /// The final round's account: its bytes against the estimate, and how
    /// they split around the unmount request (`unmount_requested`: when the
    /// embedder asked for it).
    pub fn final_round(&self, r: &RoundPushReport, unmount_requested: Instant) -> FinalRound {
        let since = self.last_scan_started.map_or(Duration::ZERO, |t| {
            unmount_requested.saturating_duration_since(t)
        });
        FinalRound {
            bytes: r.summary.bytes_fetched,
            wire_bytes: r.wire_sent + r.wire_received,
            estimated_bytes: self.estimate.final_bytes,
            estimated_downtime_ms: millis(self.estimate.downtime),
            composition: converge::composition(
                r.summary.bytes_fetched,
                self.estimate.dirty_rate,
                since,
            ),
        }
    }
}

/// The final round, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FinalRound {
    /// Payload the final round moved.
    pub bytes: u64,
    /// Its bytes on the wire.
    pub wire_bytes: u64,
    /// Payload the model expected it to move.
    pub estimated_bytes: u64,
    /// Downtime the model expected, in milliseconds.
    pub estimated_downtime_ms: u64,
    /// Bytes dirtied before the unmount request vs after (from the dirty
    /// rate).
    pub composition: Composition,
}

/// Errors of pre-copy. None of them fences anything.
#[derive(Debug, thiserror::Error)]
pub enum PreCopyError {
    /// A round could not be pushed.
    #[error(transparent)]
    Push(#[from] RoundPushError),
    /// The before-cutover hook failed (its message).
    #[error("the before-cutover hook failed: {0}")]
    Hook(String),
    /// Strict mode: the estimated downtime is over the target; no cutover.
    #[error(
        "strict mode: the estimated downtime {:.1} s exceeds the target {:.1} s ({}; the source \
         dirties {:.1} MB/s, the link carries {:.1} MB/s); not cutting over",
        .report.estimate.downtime.as_secs_f64(), .max_downtime.as_secs_f64(),
        .report.reason.as_str(), .report.estimate.dirty_rate / 1e6,
        .report.estimate.link_rate / 1e6
    )]
    Refused {
        /// What pre-copy did.
        report: Box<PreCopyReport>,
        /// The downtime target.
        max_downtime: Duration,
    },
}

/// Runs pre-copy rounds `first_round..` into `target` until the model says
/// to stop (see the module doc). Returns the report; the caller then
/// unmounts and pushes round `report.next_round` as the final round.
pub fn precopy(
    target: &mut dyn RoundTarget,
    targets: &Targets,
    first_round: u32,
    hooks: &mut dyn PreCopyHooks,
) -> Result<PreCopyReport, PreCopyError> {
    let mut measures: Vec<RoundMeasure> = Vec::new();
    let mut rounds: Vec<PreCopyRound> = Vec::new();
    let mut round = first_round;
    let mut hook_ran = false;
    // Why pre-copy stopped and the dirty rate measured then, once the hook ran.
    let mut stop: Option<(StopReason, f64)> = None;
    // Catch-up rounds run so far, and whether another one follows: the
    // estimate after the hook's round (or a catch-up round) is over the
    // target and one more round would be much shorter.
    let mut catch_ups = 0;
    let mut catch_up = false;
    let mut last_scan_started: Option<Instant>;
    loop {
        let t = Instant::now();
        last_scan_started = Some(t);
        let r = match target.push_round(round, false) {
            Ok(r) => r,
            // A source that kept changing under every rescan (a receiver
            // that does not keep partial rounds): nothing moved, go on.
            Err(e) if e.is_stale() => RoundPushReport::default(),
            Err(e) => return Err(e.into()),
        };
        let m = RoundMeasure {
            bytes_moved: r.summary.bytes_fetched,
            bytes_dirty: r.summary.bytes_dirty,
            wire_bytes: r.wire_sent + r.wire_received,
            scan: r.scan_time,
            scan_read: r.scan.read_time,
            scan_paced: r.scan.paced_time,
            scan_wait: r.scan_cpu.map(|c| c.wait),
            bytes_read: r.scan.bytes_hashed,
            transfer: r.transfer_time,
            transfer_wait: r.transfer_cpu.map(|c| c.wait),
            wall: t.elapsed(),
        };
        measures.push(m);
        let decision = match stop {
            // The round after the hook was the last one. It carried the
            // hook's flush: the app's steady rate (the one measured before
            // the hook, or what changed under this round if more) is not
            // raised by it, but the final round carries that flush again
            // once, written at shutdown (`converge::estimate_after_hook`).
            Some((reason, steady_rate)) => {
                let under = m.bytes_dirty as f64 / m.wall.as_secs_f64().max(1e-3);
                let steady = steady_rate.max(under);
                let estimate = if catch_ups == 0 {
                    converge::estimate_after_hook(&measures, targets, steady)
                } else {
                    converge::estimate_after_catch_up(&measures, targets, steady)
                };
                // A catch-up round (the hook again, then a round): what the
                // app dirtied while the last round ran goes now, not in the
                // final round, when another round is much shorter. Always
                // one after a hook round that carried a flush: that flush
                // says how full the app's buffers were, not how fast they
                // fill again, and only a second one measures it
                // (`converge::hook_flush`).
                let first_after_flush =
                    catch_ups == 0 && converge::hook_flush(&measures, steady) > 0;
                catch_up = (estimate.downtime > targets.max_downtime || first_after_flush)
                    && catch_ups < converge::MAX_CATCH_UP
                    && converge::catch_up_shrinks(&m, steady);
                if targets.strict && estimate.downtime > targets.max_downtime {
                    Decision::Refuse { reason, estimate }
                } else {
                    Decision::Stop { reason, estimate }
                }
            }
            None => converge::decide(&measures, targets),
        };
        let pr = PreCopyRound {
            round,
            bytes_moved: m.bytes_moved,
            bytes_dirty: m.bytes_dirty,
            bytes_carried: r.carried,
            entries_dirty: r.summary.stale,
            partial: r.summary.bytes_dirty > 0,
            wire_bytes: m.wire_bytes,
            scan_ms: millis(m.scan),
            transfer_ms: millis(m.transfer),
            wall_ms: millis(m.wall),
            attempts: r.attempts,
            after_hook: hook_ran,
            estimate: decision.estimate(),
        };
        hooks.round_done(&pr);
        rounds.push(pr);
        round += 1;
        let report = |reason, estimate: Estimate, rounds| PreCopyReport {
            rounds,
            reason,
            outpaced: estimate.outpaced(),
            estimate,
            hook_ran,
            next_round: round,
            last_scan_started,
        };
        if let Some((reason, _)) = stop {
            if catch_up {
                catch_ups += 1;
                hooks
                    .before_last_round(&decision.estimate())
                    .map_err(PreCopyError::Hook)?;
                continue;
            }
            // The round after the hook (or its last catch-up round) was the
            // last one.
            return match decision {
                Decision::Refuse { estimate, .. } => Err(PreCopyError::Refused {
                    report: Box::new(report(reason, estimate, rounds)),
                    max_downtime: targets.max_downtime,
                }),
                d => Ok(report(reason, d.estimate(), rounds)),
            };
        }
        match decision {
            Decision::Continue(_) => {}
            Decision::Refuse { reason, estimate } => {
                return Err(PreCopyError::Refused {
                    report: Box::new(report(reason, estimate, rounds)),
                    max_downtime: targets.max_downtime,
                });
            }
            Decision::Stop { reason, estimate } => {
                if !hooks.has_before_last_round() {
                    return Ok(report(reason, estimate, rounds));
                }
                hooks
                    .before_last_round(&estimate)
                    .map_err(PreCopyError::Hook)?;
                hook_ran = true;
                stop = Some((reason, estimate.dirty_rate));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::message::RoundSummary;

    /// Rounds that each move `sizes[i]` bytes in `sizes[i] / 10 MB/s`.
    struct Scripted {
        sizes: Vec<u64>,
        log: Vec<String>,
    }

    impl RoundTarget for Scripted {
        fn push_round(&mut self, round: u32, fin: bool) -> Result<RoundPushReport, RoundPushError> {
            self.log.push(format!("round {round} final={fin}"));
            let b = self.sizes.get(round as usize - 1).copied().unwrap_or(0);
            let transfer = Duration::from_secs_f64(b as f64 / 10e6);
            std::thread::sleep(transfer);
            Ok(RoundPushReport {
                summary: RoundSummary {
                    bytes_fetched: b,
                    ..Default::default()
                },
                transfer_time: transfer,
                wire_sent: b,
                ..Default::default()
            })
        }
    }

    struct Hook<'a>(&'a mut Vec<String>);
    impl PreCopyHooks for Hook<'_> {
        fn has_before_last_round(&self) -> bool {
            true
        }
        fn before_last_round(&mut self, _: &Estimate) -> Result<(), String> {
            self.0.push("hook".into());
            Ok(())
        }
    }

    fn targets(max_ms: u64, strict: bool) -> Targets {
        Targets {
            max_downtime: Duration::from_millis(max_ms),
            max_rounds: 5,
            strict,
            link_rate: None,
            cutover_gap: Duration::ZERO,
        }
    }

    #[test]
    fn the_hook_runs_before_one_more_last_round() {
        let mut t = Scripted {
            sizes: vec![2_000_000, 10_000, 1_000],
            log: Vec::new(),
        };
        let mut hook_log = Vec::new();
        let r = precopy(&mut t, &targets(2000, false), 1, &mut Hook(&mut hook_log)).unwrap();
        assert_eq!(r.reason, StopReason::Fits);
        assert!(r.hook_ran);
        assert_eq!(hook_log, ["hook"]);
        // Round 2 fits (a 2 s target; one round never does): the hook, then
        // round 3, the last.
        assert_eq!(
            t.log,
            [
                "round 1 final=false",
                "round 2 final=false",
                "round 3 final=false"
            ]
        );
        assert!(r.rounds[2].after_hook && !r.rounds[1].after_hook);
        assert_eq!(r.next_round, 4);
    }

    #[test]
    fn the_hooks_flush_is_not_taken_for_a_dirty_rate_but_expected_once_more() {
        // Round 2 fits; the hook flushes 8 MB, which round 3 carries: not
        // 8 MB per round interval from now on, but once more at shutdown
        // (what a database's buffers hold again by then) as far as round 3
        // can tell. A catch-up round (4) then measures the refill: nothing
        // moved, so the final estimate drops back.
        let mut t = Scripted {
            sizes: vec![2_000_000, 10_000, 8_000_000],
            log: Vec::new(),
        };
        let mut hook_log = Vec::new();
        let r = precopy(&mut t, &targets(2000, true), 1, &mut Hook(&mut hook_log)).unwrap();
        assert!(r.hook_ran && r.rounds[2].after_hook && r.rounds[3].after_hook);
        assert_eq!(hook_log.len(), 2);
        let before = r.rounds[1].estimate;
        let hook = r.rounds[2].estimate;
        assert!(!r.outpaced, "{:?}", r.estimate);
        assert_eq!(hook.dirty_rate, before.dirty_rate);
        assert!(
            (7_000_000..=8_000_000).contains(&hook.final_bytes),
            "{hook:?}"
        );
        assert!(hook.downtime > before.downtime, "{hook:?}");
        assert!(r.estimate.final_bytes < 1_000_000, "{:?}", r.estimate);
        assert_eq!(r.rounds[3].estimate, r.estimate);
    }

    #[test]
    fn a_long_hook_round_is_followed_by_at_most_two_catch_up_rounds() {
        // Round 3 carries a 40 MB flush in 4 s: the estimate (the flush
        // again at shutdown) is over 2 s. What the app dirtied during those
        // 4 s goes in catch-up rounds, the hook again before each: rounds 4
        // and 5 (40 MB each: the app's buffers fill as fast as before, so
        // shutdown would flush as much: still over), then no more.
        let sizes = vec![2_000_000, 10_000, 40_000_000, 40_000_000, 40_000_000, 1_000];
        for strict in [false, true] {
            let mut t = Scripted {
                sizes: sizes.clone(),
                log: Vec::new(),
            };
            let mut hook_log = Vec::new();
            let r = precopy(&mut t, &targets(2000, strict), 1, &mut Hook(&mut hook_log));
            assert_eq!(hook_log, ["hook"; 3], "before round 3 and each catch-up");
            assert_eq!(t.log.len(), 5, "{:?}", t.log);
            match r {
                Ok(r) => {
                    assert!(!strict);
                    assert_eq!(r.next_round, 6);
                    assert!(r.rounds[2..].iter().all(|r| r.after_hook));
                    assert!(r.estimate.downtime > Duration::from_secs(2), "{r:?}");
                    // Going ahead over the target is said before the unmount.
                    let w = r
                        .cutover_warning(Duration::from_secs(2))
                        .expect("a warning");
                    assert!(w.contains("over the 2.0 s asked"), "{w}");
                    assert!(!w.contains("  "), "{w}");
                    assert_eq!(r.cutover_warning(Duration::from_secs(60)), None);
                }
                Err(PreCopyError::Refused { report, .. }) => {
                    assert!(strict, "refused only in strict mode");
                    assert_eq!(report.next_round, 6);
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn a_flush_under_the_target_still_gets_one_catch_up_round() {
        // Round 3 (after the hook) carries a 20 MB flush; its estimate is
        // far under a 60 s target. One catch-up round measures how fast the
        // app's buffers fill again (the hook once more, round 4); round 4
        // is ordinary, so no second one.
        let mut t = Scripted {
            sizes: vec![2_000_000, 10_000, 20_000_000, 10_000, 1_000],
            log: Vec::new(),
        };
        let mut hook_log = Vec::new();
        let r = precopy(&mut t, &targets(60_000, false), 1, &mut Hook(&mut hook_log)).unwrap();
        assert_eq!(hook_log, ["hook"; 2], "before round 3 and the catch-up");
        assert_eq!(t.log.len(), 4, "{:?}", t.log);
        assert_eq!(r.next_round, 5);
        assert!(r.estimate.downtime < Duration::from_secs(60), "{r:?}");
    }

    #[test]
    fn without_a_hook_it_stops_at_the_decision() {
        let mut t = Scripted {
            sizes: vec![2_000_000],
            log: Vec::new(),
        };
        let r = precopy(&mut t, &targets(2000, false), 1, &mut NoHooks).unwrap();
        assert_eq!(t.log, ["round 1 final=false", "round 2 final=false"]);
        assert_eq!(r.rounds[0].bytes_moved, 2_000_000);
        assert!(!r.hook_ran);
    }

    #[test]
    fn strict_refuses_with_the_figures() {
        // Each round moves as much as the last: writes at link speed.
        let mut t = Scripted {
            sizes: vec![3_000_000, 3_000_000, 3_000_000, 3_000_000, 3_000_000],
            log: Vec::new(),
        };
        let e = precopy(&mut t, &targets(10, true), 1, &mut NoHooks).unwrap_err();
        let PreCopyError::Refused { report, .. } = &e else {
            panic!("{e}")
        };
        assert!(report.estimate.downtime > Duration::from_millis(10));
        assert!(e.to_string().contains("MB/s"), "{e}");
        assert!(t.log.iter().all(|l| l.ends_with("final=false")));
    }
}
