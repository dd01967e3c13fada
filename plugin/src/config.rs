//! The daemon's configuration: `daffe serve --config FILE`, else
//! /etc/daffe/daffe.toml if it exists, else built-in defaults; command-line
//! flags (and their `DAFFE_*` environment variables) override the file.
//!
//! ```toml
//! socket = "/run/docker/plugins/daffe.sock"   # VolumeDriver socket
//! control_socket = "/run/daffe/control.sock"
//! data_root = "/var/lib/daffe"                 # store, and default profile roots
//! backend = "local"                            # or "ebs"
//! [aws]                                        # see backend::ebs::config
//! availability_zone = "us-east-1a"
//! [profiles.silver.local]                      # see profiles::Catalog
//! format = "block"
//! default_size = "5G"
//! [cluster]                                    # cluster mode; see cluster::config
//! name = "prod"
//! node = "swnode1"
//! agent = "10.0.0.1:7443"
//! [cluster.etcd]
//! endpoints = ["http://10.0.0.1:2379"]
//! ```

use crate::backend::ebs::EbsConfig;
use cluster::ClusterConfig;
use profiles::{BackendKind, Catalog, CatalogError};
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub(crate) const DEFAULT_CONFIG: &str = "/etc/daffe/daffe.toml";
/// Where dockerd looks for a legacy plugin named `daffe`.
pub(crate) const DEFAULT_SOCKET: &str = "/run/docker/plugins/daffe.sock";
pub(crate) const DEFAULT_DATA_ROOT: &str = "/var/lib/daffe";
/// Where the control socket lives unless configured otherwise.
pub(crate) const DEFAULT_CONTROL_SOCKET: &str = "/run/daffe/control.sock";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    socket: Option<PathBuf>,
    control_socket: Option<PathBuf>,
    data_root: Option<PathBuf>,
    backend: Option<BackendKind>,
    aws: Option<EbsConfig>,
    cluster: Option<ClusterConfig>,
    /// Parsed by [`Catalog::from_config_toml`].
    #[serde(default)]
    #[allow(dead_code)]
    profiles: toml::Table,
}

/// Everything `daffe serve` needs to start.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) socket: PathBuf,
    pub(crate) control_socket: PathBuf,
    pub(crate) data_root: PathBuf,
    pub(crate) backend: BackendKind,
    /// `[aws]`: the EBS backend's and the migration commands' AWS settings.
    pub(crate) aws: EbsConfig,
    pub(crate) catalog: Catalog,
    /// `[cluster]`: cluster mode. `None`: a single host, as before.
    pub(crate) cluster: Option<ClusterConfig>,
    /// The file read, if any.
    pub(crate) source: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {source}")]
    Profiles { path: PathBuf, source: CatalogError },
    #[error("config {path}: {source}")]
    Cluster {
        path: PathBuf,
        source: cluster::ConfigError,
    },
    #[error("config {path}: {key} must be an absolute path, not {value}")]
    Relative {
        path: PathBuf,
        key: &'static str,
        value: PathBuf,
    },
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: DEFAULT_SOCKET.into(),
            control_socket: DEFAULT_CONTROL_SOCKET.into(),
            data_root: DEFAULT_DATA_ROOT.into(),
            backend: BackendKind::Local,
            aws: EbsConfig::default(),
            catalog: Catalog::builtin(),
            cluster: None,
            source: None,
        }
    }
}

impl Config {
    /// Loads `path`, or the default file if present, or the defaults.
    pub(crate) fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let path = match path {
            Some(p) => p.to_owned(),
            None if Path::new(DEFAULT_CONFIG).exists() => DEFAULT_CONFIG.into(),
            None => return Ok(Self::default()),
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, &path)
    }

    /// Parses a config document; `path` is for messages.
    pub(crate) fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let catalog = Catalog::from_config_toml(text).map_err(|source| ConfigError::Profiles {
            path: path.to_owned(),
            source,
        })?;
        let d = Self::default();
        let cfg = Self {
            socket: file.socket.unwrap_or(d.socket),
            control_socket: file.control_socket.unwrap_or(d.control_socket),
            data_root: file.data_root.unwrap_or(d.data_root),
            backend: file.backend.unwrap_or(d.backend),
            aws: file.aws.unwrap_or_default(),
            catalog,
            cluster: file.cluster,
            source: Some(path.to_owned()),
        };
        if let Some(c) = &cfg.cluster {
            c.validate().map_err(|source| ConfigError::Cluster {
                path: path.to_owned(),
                source,
            })?;
        }
        for (key, value) in [
            ("socket", &cfg.socket),
            ("control_socket", &cfg.control_socket),
            ("data_root", &cfg.data_root),
        ] {
            if !value.is_absolute() {
                return Err(ConfigError::Relative {
                    path: path.to_owned(),
                    key,
                    value: value.clone(),
                });
            }
        }
        Ok(cfg)
    }

    /// The store's file under the data root.
    pub(crate) fn store_path(&self) -> PathBuf {
        self.data_root.join("state").join(crate::state::STORE_FILE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_config() {
        let text = r#"
            socket = "/run/docker/plugins/x.sock"
            control_socket = "/run/x/control.sock"
            data_root = "/srv/daffe"
            backend = "ebs"
            [aws]
            availability_zone = "us-east-1b"
            device_resolver = "loop"
            [profiles.silver.local]
            format = "block"
            default_size = "5G"
        "#;
        let c = Config::parse(text, Path::new("t.toml")).unwrap();
        assert_eq!(c.aws.availability_zone.as_deref(), Some("us-east-1b"));
        assert_eq!(c.socket, Path::new("/run/docker/plugins/x.sock"));
        assert_eq!(c.control_socket, Path::new("/run/x/control.sock"));
        assert_eq!(c.data_root, Path::new("/srv/daffe"));
        assert_eq!(c.backend, BackendKind::Ebs);
        assert_eq!(c.catalog.names().to_string(), "default, gold, silver");
        assert_eq!(c.store_path(), Path::new("/srv/daffe/state/daffe.redb"));
        assert_eq!(c.cluster, None);
        let with = format!(
            "{text}\n[cluster]\nname = \"prod\"\nnode = \"n1\"\nagent = \"10.0.0.1:7443\"\n[cluster.etcd]\nendpoints = [\"http://10.0.0.1:2379\"]\n"
        );
        let c = Config::parse(&with, Path::new("t.toml")).unwrap();
        let cl = c.cluster.expect("[cluster] parsed");
        assert_eq!((cl.name.as_str(), cl.node.as_str()), ("prod", "n1"));
        assert_eq!(cl.lease_ttl, 10);
    }

    #[test]
    fn empty_config_gives_defaults() {
        let c = Config::parse("", Path::new("t.toml")).unwrap();
        assert_eq!(c.socket, Path::new(DEFAULT_SOCKET));
        assert_eq!(c.backend, BackendKind::Local);
        assert_eq!(c.catalog, Catalog::builtin());
    }

    #[test]
    fn bad_configs_say_why() {
        let cases = [
            ("sockett = \"/x\"", "unknown field"),
            ("backend = \"nfs\"", "unknown variant"),
            ("[aws]\nzone = \"x\"", "unknown field"),
            ("data_root = \"rel\"", "data_root must be an absolute path"),
            (
                "[cluster]\nname = \"p\"\nnode = \"a\"\nagent = \"x\"\n[cluster.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]",
                "not HOST:PORT",
            ),
            ("[cluster]\nname = \"p\"", "missing field"),
            (
                "[profiles.x.local]\nformat = \"tape\"",
                "invalid profiles config",
            ),
        ];
        for (text, want) in cases {
            let err = Config::parse(text, Path::new("t.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(want) && err.contains("t.toml"),
                "{text}: {err}"
            );
        }
    }
}
