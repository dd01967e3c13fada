//! daffe: a Docker volume plugin with storage profiles, and the `daffe` command line.
//!
//! The library serves only the `daffe` binary (`main.rs` calls [`cli`]), so
//! everything else is `pub(crate)`. Map of the crate, a request's path
//! through it from top to bottom, and the one file to open for each concern:
//!
//! - [`cli`]: one module per `daffe` subcommand (`cli/serve.rs` wires the
//!   daemon together).
//! - [`server`]: HTTP/1 over unix sockets; `serve(listener, handler,
//!   shutdown)`; the `Reply` both sockets send.
//! - [`api`]: the VolumeDriver socket: requests parsed into values
//!   (`api/request.rs`), the endpoints, and the one place service errors
//!   become replies (`api/reply.rs`).
//! - [`control`]: the control socket. The API, every route as a value:
//!   `control/request.rs`; the one router, each route bounded:
//!   `control/routes.rs`; the one client: `control/client.rs`.
//! - [`peer`]: who may use the control socket (root, `--socket-group`), by
//!   `SO_PEERCRED`.
//! - [`bounded`]: blocking work on tokio's blocking pool under a time limit,
//!   with commit-or-abandon (both sockets' handlers use it).
//! - [`service`]: volume semantics (idempotent create, mount multiset,
//!   rollback, migration states, profile changes); errors with typed codes.
//! - [`state`]: what the daemon keeps. Record writes: `state/records.rs`
//!   (`Records`, the one writer, which keeps List's cache right); the record
//!   itself, the redb store, the run-time profile catalog.
//! - [`backend`]: storage behind the `Backend` trait: `backend/local/` (dir,
//!   block) and `backend/ebs/` (EBS attach: `backend/ebs/attach.rs`).
//! - [`aws`]: the EC2 calls of the EBS backend behind a trait; this
//!   instance's identity.
//! - [`migrate`]: moving a volume to another host or zone (`daffe migrate`,
//!   `daffe agent`): the source's state machine, the agent, the EBS sequence.
//! - [`clustering`]: cluster mode (`[cluster]`): this node's etcd lease,
//!   ownership and epochs, the fence watchdog; the rules are the `cluster`
//!   crate's.
//! - [`follow`]: `daffe follow` acting on placement's decisions: the Swarm
//!   actuator (engine API behind a trait), forwarding after a move.
//! - [`config`]: `daffe serve` configuration; [`time`]: RFC 3339 times;
//!   [`durable`]: the crash-safe replace of a small state file.
//!
//! No module imports one that imports it back (no import cycles); test
//! doubles are compiled for tests only, or with the `testing` feature for
//! the ones the end-to-end tests need inside the binary.
mod api;
mod aws;
mod backend;
mod bounded;
pub mod cli;
mod clustering;
mod config;
mod control;
mod durable;
mod follow;
#[cfg(test)]
mod fuzz_harness;
#[cfg(test)]
mod hostile_input;
mod metrics;
mod migrate;
mod peer;
mod server;
mod service;
mod state;
mod time;
mod unix_http;
