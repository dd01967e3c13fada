//! The control socket (default /run/daffe/control.sock): what the `daffe`
//! CLI, `daffe migrate`, `daffe agent` and schedulers ask the daemon, since
//! the records' file is locked by it.
//!
//! - [`request`]: every route as a [`ControlRequest`] value; the pure parser
//!   and its inverse (the route table is there).
//! - [`routes`]: the one router, [`ControlApi`]: each request runs on the
//!   blocking pool under its time limit ([`Limits`]), like the VolumeDriver
//!   handlers; failures carry a typed code.
//! - [`client`]: the one client, [`ControlClient`].
//! - [`status`]: `daffe status`'s report and the health answer (pure), and
//!   the ring of recent warnings and errors the logging layer fills.

pub(crate) mod client;
pub(crate) mod request;
pub(crate) mod routes;
pub(crate) mod status;

#[cfg(test)]
mod tests;

pub(crate) use client::{ClientError, ControlClient};
pub(crate) use request::{ControlRequest, EbsStep};
pub(crate) use routes::{ControlApi, Limits};
