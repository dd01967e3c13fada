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
//! - Two-host mode (no Swarm): [`hosts`] (`--host REGION=agent=...`),
//!   [`containers`] (inspect, stop, create, start over the engine API,
//!   behind `ContainerApi`; `fake_hosts.rs` is the double), [`two_hosts`]
//!   (the actuator: plan, `daffe migrate`, stop at the unmount, start
//!   there) and [`migrate`] (the real `Mover`: migrate's orchestrator).

pub(crate) mod constraint;
pub(crate) mod containers;
pub(crate) mod engine;
#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
pub(crate) mod fake_hosts;
pub(crate) mod hosts;
pub(crate) mod keep;
pub(crate) mod migrate;
pub(crate) mod swarm;
pub(crate) mod two_hosts;
