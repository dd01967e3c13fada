//! Helpers shared by the end-to-end tests, so each test reads like an operator's steps.
//!
//! - [`docker`]: the docker CLI (default engine or a private one), the test
//!   image, a private dockerd for tests that restart the engine.
//! - [`moto`]: a moto server per test (the AWS endpoint), reset, stopped on drop.
//! - [`fault_proxy`]: an HTTP proxy that records requests and injects 429/500.
//! - [`plugin`]: a `daffe serve` under a unique legacy plugin name, cleaned up
//!   on drop together with its containers and volumes.
//! - [`netns`]: two hosts as network namespaces on a shaped veth link, and a
//!   Docker engine inside one of them.
//! - [`hosts`]: two daffe hosts on that link (plugins, B's agent, `migrate`).
//! - [`swarm`]: a three-manager Docker Swarm of namespaced nodes with an
//!   etcd member each ([`etcd`]), failure tools, service helpers; shareable
//!   by the tests of one binary.
//! - [`postgres`]: PostgreSQL 15 + pgbench as a workload on any data
//!   directory (also inside another host's namespaces), and the checks that
//!   say a moved database is whole.

pub mod docker;
pub mod etcd;
pub mod fault_proxy;
pub mod hosts;
pub mod moto;
pub mod netns;
pub mod plugin;
pub mod postgres;
pub mod swarm;

/// A short unique token for names: pid + a per-process counter + clock bits,
/// so parallel tests and parallel test binaries never collide.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}{:x}{:x}{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos & 0xfff
    )
}
