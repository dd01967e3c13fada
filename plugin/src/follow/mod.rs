//! `daffe follow`: acting on `placement`'s decisions (issue 15). The
//! decision is the `placement` crate's (`advise`, the rule); this module
//! is how it reaches Docker, and how clients stay connected after a move.
//!
//! - [`engine`]: the Swarm API calls, behind `SwarmApi` (the real client
//!   over the engine's unix socket; `fake.rs` is the double for tests).
//! - [`constraint`]: the region constraint that replaces earlier ones, and
//!   whether a node meets a constraint.
//! - [`swarm`]: where a service runs (`daffe placement where`), and the
//!   actuator that moves it by its constraint and waits for the task.
//! - [`keep`]: when the task leaves this node, forward its port to the new
//!   node for a grace period.

pub(crate) mod constraint;
pub(crate) mod engine;
#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod keep;
pub(crate) mod swarm;
