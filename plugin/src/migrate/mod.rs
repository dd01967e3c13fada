//! Migrating a volume to another host (`daffe migrate`, `daffe agent`).
//!
//! The daemon's side (state changes on the source and the destination, the
//! EBS steps) is in `crate::service`, reached through the control socket's
//! client (`crate::control::client`). Map of this folder:
//! - [`wire`]: the JSON requests `migrate` sends to the peer's agent.
//! - [`agent`]: the agent's request handler: receives rounds into the local
//!   daemon's storage.
//! - [`orchestrate`]: the source side's state machine: preflight, pre-copy
//!   rounds (`mover::net::precopy` and its convergence model), cutover, final round, handover, report.
//! - [`report`]: what a migration did, for humans and `--json`.
//! - [`flush`]: syncfs on a block volume's mounted filesystem before each
//!   pre-copy round (the image then holds what the filesystem holds).
//! - [`hook`]: `--before-cutover CMD`, run before the last pre-copy round
//!   (bounded; its failure aborts pre-copy unfenced).
//! - [`app_data`]: which database's files a volume holds, to warn before
//!   pre-copy when no hook was given for it.
//! - [`ebs`], [`ebs_snapshots`]: `daffe migrate --via-ebs`, to another zone
//!   through EBS snapshots (sequencing and the daemon's steps; the snapshot
//!   pushes).
//! - [`duration`]: `2s`, `500ms`, `10m` on the command line.
//! - [`token`]: the per-migration token the agent hands out at prepare and
//!   checks on every round and the commit.
//! - [`priority`]: pre-copy rounds at the lowest CPU priority and in the
//!   idle I/O class, at both ends (`--precopy-priority`).
//! - [`idle_group`]: `--precopy-priority idle`: the `migrate` process in a
//!   cpu.idle cgroup during pre-copy, and in a low-weight one once it
//!   starves there.
//!
//! Who stops the application: the operator (`docker stop`), on the source
//! host, when `migrate` says it waits for the unmount. The plugin never calls
//! dockerd; `migrate` only watches the daemon's mount count and fences the
//! volume in the same locked step that sees it reach zero.

pub(crate) mod agent;
pub(crate) mod app_data;
pub(crate) mod changes;
pub(crate) mod duration;
pub(crate) mod ebs;
pub(crate) mod ebs_snapshots;
pub(crate) mod flush;
pub(crate) mod hook;
pub(crate) mod idle_group;
pub(crate) mod orchestrate;
pub(crate) mod priority;
pub(crate) mod report;
pub(crate) mod token;
pub(crate) mod wire;
