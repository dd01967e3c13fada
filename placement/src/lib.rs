//! daffe placement: follow the clients. Where a service's requests come
//! from, which site would serve them fastest, whether a move (of the
//! service and its volume) pays for its downtime, and what that policy
//! would have done over a simulated day. Pure library code but for the log
//! follower, the state file and the TCP forwarder; no Docker.
//! `DESIGN.md` states the decision rule and the models.
//!
//! Map:
//! - observe: [`logline`] (access-log parsers), [`geo`] (IP to region via
//!   an `.mmdb`), [`rates`] (decayed rates, daily profile, forecast),
//!   [`tail`] (follow a growing, rotating log), [`state`] (what `observe`
//!   keeps between runs, written atomically).
//! - model: [`rtt`] (inter-region round trips, built-in cloudping table;
//!   [`rtt_probe`]: pairs measured between nodes, written as its file),
//!   [`latency`] (request-weighted mean and percentiles), [`cost`] (a
//!   move's downtime and bytes, fitted from `daffe migrate --json`).
//! - decide: [`dp`] (cheapest site sequence), [`rule`] (the move rule),
//!   [`advise`] (the `advise` report), [`actuator`] (the seam `daffe follow`
//!   acts through; its Swarm actuator is `plugin/src/follow/`).
//! - simulate: [`scenario`], [`sim`] (four policies compared), [`plot`].
//! - keep clients connected: [`forward`] (TCP forwarder for a grace period).

pub mod actuator;
pub mod advise;
pub mod cost;
pub mod dp;
pub mod forward;
pub mod geo;
pub mod latency;
pub mod logline;
pub mod plot;
pub mod rates;
pub mod rtt;
pub mod rtt_probe;
pub mod rule;
pub mod scenario;
pub mod sim;
pub mod state;
pub mod tail;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// `x as usize` for a step count or an index computed in f64 (a duration
/// over a step, rounded or ceiled by the caller), kept in one place. The
/// cast saturates: NaN and negatives give 0, values past `usize::MAX` give
/// `usize::MAX`, so a caller's `.max(1)` or bounds check still holds. The
/// inputs are small non-negative whole numbers (steps in a horizon, hours,
/// label counts), which convert exactly.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub(crate) fn f64_to_usize(x: f64) -> usize {
    x as usize
}

/// `x as i64` for a time in seconds since the epoch held in f64, kept in
/// one place. The cast drops the fraction (towards zero) and saturates at
/// the `i64` range; every caller passes whole or sub-second times within
/// a few centuries of 1970, far inside it, where only the fraction goes,
/// as intended (bins are whole seconds).
#[allow(clippy::cast_possible_truncation)]
pub(crate) fn f64_to_i64(x: f64) -> i64 {
    x as i64
}
