//! What the daemon keeps: the volume records and the profiles defined at
//! run time.
//!
//! - [`record`]: one volume's durable description (`VolumeRecord`), its
//!   lifecycle states and mount multiset. Pure data with its rules.
//! - [`records`]: [`Records`], the one way records are read and written.
//!   Every write bumps its generation, which is what List's cache is keyed
//!   by: a write that went around it would leave `docker volume ls` stale.
//! - [`store`]: the redb file under `DATA_ROOT/state`, private to this
//!   folder (only [`Records`] holds one).
//! - [`catalog`]: the profile catalog, changed at run time through the
//!   control API and persisted beside the store.
//! - [`roots`]: local profile roots stay under the data root.
//! - [`format`]: the store's format version, and what opening an older or a
//!   newer store does.

pub(crate) mod catalog;
pub(crate) mod format;
pub(crate) mod record;
mod records;
pub(crate) mod roots;
mod store;

pub(crate) use records::Records;
pub(crate) use store::{STORE_FILE, StoreError};
