//! daffe: a Docker volume plugin with storage profiles, and the `daffe` command line.
//!
//! Map of the crate (a request's path through it, top to bottom):
//! - [`server`]: HTTP/1 over unix sockets; `serve(listener, handler, shutdown)`.
//! - [`api`]: the VolumeDriver protocol: requests parsed into values, replies
//!   and error mapping in one place.
//! - [`control`]: the control socket: one request parser, one router (every
//!   route bounded like the VolumeDriver handlers), one client.
//! - [`bounded`]: blocking work under a time limit, with commit-or-abandon.
//! - [`service`]: volume semantics (idempotent create, mount multiset, rollback).
//! - [`state`]: the volume records (one writer, [`state::Records`]) and the
//!   run-time profile catalog.
//! - [`backend`]: storage backends behind the `Backend` trait (local dir/block, EBS).
//! - [`aws`]: the EC2 calls of the EBS backend behind a trait; this instance's identity.
//! - [`config`]: `daffe serve` configuration.
//! - [`migrate`]: moving a volume to another host (`daffe migrate`, `daffe agent`).
//! - [`cli`]: one module per `daffe` subcommand.
mod api;
mod aws;
mod backend;
mod bounded;
pub mod cli;
mod config;
mod control;
mod migrate;
mod server;
mod service;
mod state;
mod time;
