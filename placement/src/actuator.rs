//! How a decision becomes a move. `daffe follow` gives an [`Actuator`] that
//! updates a Swarm service's placement (`plugin/src/follow/swarm.rs`), and
//! one that runs `daffe migrate` and moves the container between two hosts
//! (`plugin/src/follow/two_hosts.rs`). This crate defines the seam and the dry run, and the step that
//! ties an advice, the state and an actuator together.

use crate::advise::Advice;
use crate::rule::Action;
use crate::state::ServiceState;

#[derive(Debug, thiserror::Error)]
#[error("moving {service} from {from} to {to}: {msg}")]
pub struct ActError {
    pub service: String,
    pub from: String,
    pub to: String,
    pub msg: String,
}

/// One move to carry out.
#[derive(Debug, Clone, PartialEq)]
pub struct MoveOrder {
    pub service: String,
    pub from: String,
    pub to: String,
    pub expected_downtime_s: f64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The service serves from `to` now.
    Moved,
    /// Nothing was done; the text says what would have been.
    DryRun(String),
}

pub trait Actuator {
    fn execute(&mut self, order: &MoveOrder) -> Result<Outcome, ActError>;
}

/// Says what it would do, and does nothing (`--dry-run`).
#[derive(Debug, Default)]
pub struct DryRun {
    pub said: Vec<String>,
}

impl Actuator for DryRun {
    fn execute(&mut self, o: &MoveOrder) -> Result<Outcome, ActError> {
        let line = format!(
            "would move {} from {} to {} (~{:.1} s downtime): {}",
            o.service, o.from, o.to, o.expected_downtime_s, o.reason
        );
        self.said.push(line.clone());
        Ok(Outcome::DryRun(line))
    }
}

/// Acts on an advice: if it says move, asks the actuator, and records a
/// real move in the state (the rule's minimum stay and budget count it).
/// Returns the outcome, or None when the advice is to stay.
pub fn follow_step(
    advice: &Advice,
    state: &mut ServiceState,
    actuator: &mut dyn Actuator,
) -> Result<Option<Outcome>, ActError> {
    let Action::Move { to } = &advice.decision.action else {
        return Ok(None);
    };
    let order = MoveOrder {
        service: advice.service.clone(),
        from: advice.current.clone(),
        to: to.clone(),
        expected_downtime_s: advice.move_cost.downtime_s,
        reason: advice.decision.reason.clone(),
    };
    let outcome = actuator.execute(&order)?;
    if outcome == Outcome::Moved {
        state.record_move(advice.now, &order.from, &order.to);
    }
    Ok(Some(outcome))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::advise::{AdviseInput, advise};
    use crate::cost::MoveEstimate;
    use crate::rates::DemandConfig;
    use crate::rtt::RttTable;
    use crate::rule::RuleConfig;

    /// Records orders and reports them done.
    #[derive(Default)]
    struct Recorder(Vec<MoveOrder>);
    impl Actuator for Recorder {
        fn execute(&mut self, o: &MoveOrder) -> Result<Outcome, ActError> {
            self.0.push(o.clone());
            Ok(Outcome::Moved)
        }
    }

    #[test]
    fn a_real_move_is_recorded_and_the_next_advice_respects_the_minimum_stay() {
        let table = RttTable::builtin().unwrap();
        let dcfg = DemandConfig::default();
        let rule = RuleConfig::default();
        let mut st = ServiceState::new("web", &dcfg);
        for s in 0..3600 {
            st.demand.add(f64::from(s), "ap-northeast-1", 10.0);
        }
        let sites = vec!["us-east-1".to_string(), "ap-northeast-1".into()];
        let est = MoveEstimate {
            downtime_s: 0.5,
            bytes: 1e9,
            total_s: 100.0,
            rounds: 3,
        };
        let ask = |st: &ServiceState, current: &'static str| {
            advise(&AdviseInput {
                state: st,
                table: &table,
                sites: &sites,
                current,
                now: 3600.0,
                access_ms: 0.0,
                move_estimate: est,
                rule: &rule,
                demand: &dcfg,
            })
            .unwrap()
        };
        let a = ask(&st, "us-east-1");
        let mut dry = DryRun::default();
        let out = follow_step(&a, &mut st, &mut dry).unwrap();
        assert!(
            matches!(out, Some(Outcome::DryRun(ref s)) if s.contains("would move web from us-east-1 to ap-northeast-1"))
        );
        assert!(st.moves.is_empty(), "a dry run records nothing");
        let mut rec = Recorder::default();
        assert_eq!(
            follow_step(&a, &mut st, &mut rec).unwrap(),
            Some(Outcome::Moved)
        );
        assert_eq!(st.moves.len(), 1);
        // Moved back by hand: the rule now waits out the minimum stay.
        let b = ask(&st, "us-east-1");
        assert_eq!(b.decision.action, Action::Stay);
        assert!(
            b.decision.reason.contains("minimum stay"),
            "{}",
            b.decision.reason
        );
        assert_eq!(follow_step(&b, &mut st, &mut rec).unwrap(), None);
    }
}
