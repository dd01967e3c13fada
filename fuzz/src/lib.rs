//! The plugin's decoders of outside bytes, for the `plugin_*` fuzz targets,
//! without the plugin crate: a nightly, instrumented build of daffe-plugin
//! would rebuild the AWS SDK (tens of CPU minutes). The decoders are pure;
//! their files are compiled here as they are (`#[path]`), under the module
//! paths they use in the plugin, so `crate::...` resolves the same, and the
//! harnesses are the plugin's own (`plugin/src/fuzz_harness.rs`, which the
//! plugin's tests replay the corpora through on stable).
//!
//! Nothing here is a copy of plugin code, with two stand-ins so the files
//! compile: `ReceiveCheck` (in `service/migrate.rs`, which drags the whole
//! service in; the target fuzzes `PeerRequest`, which does not contain it,
//! and `PeerReply`, which does, is checked by the plugin's stable replay with
//! the real type), and `mover::aws::AwsOptions` (behind mover's `aws`
//! feature, i.e. the AWS SDK; only `EbsConfig::aws_options` builds one, no
//! decoder).
#![allow(dead_code, unused_imports, unreachable_pub)]

// `use mover::aws::AwsOptions` in backend/ebs/config.rs resolves here (the
// real mover is the dependency `mover_lib`).
extern crate self as mover;
// Everything else of `mover::` is the real mover (the glob yields to `aws`).
pub use mover_lib::*;

pub mod aws {
    /// Stand-in for `mover::aws::AwsOptions` (see the crate's doc).
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct AwsOptions {
        pub region: Option<String>,
        pub endpoint_url: Option<String>,
        pub call_timeout: Option<std::time::Duration>,
    }
}

#[path = "../../plugin/src/api/request.rs"]
mod api_request;
#[path = "../../plugin/src/clustering/catalogue.rs"]
mod clustering_catalogue;
#[path = "../../plugin/src/config.rs"]
mod config_file;
#[path = "../../plugin/src/control/request.rs"]
mod control_request;
#[path = "../../plugin/src/backend/ebs/config.rs"]
mod ebs_config;
#[path = "../../plugin/src/fuzz_harness.rs"]
pub mod harness;
#[path = "../../plugin/src/metrics/run.rs"]
mod metrics_run;
#[path = "../../plugin/src/migrate/wire.rs"]
mod migrate_wire;
#[path = "../../plugin/src/state/record.rs"]
mod state_record;

mod api {
    pub(crate) use crate::api_request as request;
}
mod backend {
    pub(crate) mod ebs {
        pub(crate) use crate::ebs_config::EbsConfig;
    }
}
mod clustering {
    pub(crate) use crate::clustering_catalogue as catalogue;
}
mod config {
    pub(crate) use crate::config_file::*;
}
mod control {
    pub(crate) use crate::control_request::ControlRequest;
}
mod metrics {
    pub(crate) use crate::metrics_run as run;
}
mod migrate {
    pub(crate) use crate::migrate_wire as wire;
}
mod service {
    pub(crate) mod migrate {
        /// Stand-in for the plugin's `service::migrate::ReceiveCheck` (see
        /// the crate's doc): `PeerReply` needs the type to compile.
        #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        pub(crate) struct ReceiveCheck {
            pub(crate) docker_name: String,
        }
    }
}
mod state {
    pub(crate) use crate::state_record as record;
    /// `Config::store_path` names it; no decoder reads it.
    pub(crate) const STORE_FILE: &str = "daffe.redb";
}
