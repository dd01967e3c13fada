//! Storage profiles for daffe volumes (pure code, no I/O).
//!
//! - [`name`]: `NAME[@PROFILE]` syntax and its rule.
//! - [`size`]: human sizes (`20G`).
//! - [`request`]: a Create request (name + `-o` options) validated against the catalog.
//! - [`catalog`]: built-in and configured profiles; resolution into backend settings.
//! - [`local`], [`ebs`]: what a profile means on each backend, with the backend's limits.
//!
//! ```
//! use profiles::{BackendKind, Catalog, Settings};
//! let cat = Catalog::builtin();
//! let req = cat.request("db@gold", &Default::default()).unwrap();
//! let Settings::Ebs(ebs) = cat.resolve(&req, BackendKind::Ebs, "/var/lib/daffe".as_ref()).unwrap() else { panic!() };
//! assert_eq!((ebs.volume_type.as_str(), ebs.iops), ("io2", Some(300)));
//! ```

pub mod catalog;
pub mod ebs;
pub mod local;
pub mod name;
pub mod request;
pub mod size;

pub use catalog::{
    BackendKind, Catalog, CatalogError, Profile, ProfileDef, ResolveError, Settings,
};
pub use ebs::{EbsSettings, EbsSpec, EbsVolumeType, IopsRule};
pub use local::{Filesystem, LocalFormat, LocalSettings, LocalSpec};
pub use name::{DEFAULT_PROFILE, NAME_RULE, VolumeName};
pub use request::{RequestError, VALID_OPTIONS, VolumeRequest};
pub use size::ByteSize;
