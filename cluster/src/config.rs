//! The `[cluster]` table of daffe's config. Without it daffe is a single
//! host (and two-host `migrate`), exactly as before cluster mode.
//!
//! ```toml
//! [cluster]
//! name = "prod"                 # one etcd prefix per cluster
//! node = "swnode1"              # this node; unique in the cluster
//! agent = "10.0.0.1:7443"       # where peers reach this node's agent
//! lease_ttl = 10                # seconds; the owner's lease in etcd
//! fence_margin_ms = 2000        # stop writing this long before the lease can expire
//! tls_dir = "/etc/daffe/agent"  # this node's agent certificate: the daemon dials other
//!                               # nodes' agents with it to bring a stale copy up to date
//! labels = { zone = "b" }       # what profiles' `standby_label` asks of standby nodes
//! [cluster.etcd]
//! endpoints = ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
//! ca = "/etc/daffe/etcd/ca.pem"
//! cert = "/etc/daffe/etcd/client.pem"
//! key = "/etc/daffe/etcd/client-key.pem"
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Shortest lease: below this a keep-alive's round trip and a GC pause eat
/// the margin, and a healthy owner would fence itself.
pub const MIN_LEASE_TTL_SECS: u64 = 2;
/// Longest lease: a failover waits for it, so a typo must not make it hours.
pub const MAX_LEASE_TTL_SECS: u64 = 300;

/// `[cluster]`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub name: String,
    pub node: String,
    /// `HOST:PORT` of this node's agent, as peers dial it.
    pub agent: String,
    #[serde(default = "default_ttl")]
    pub lease_ttl: u64,
    #[serde(default = "default_margin")]
    pub fence_margin_ms: u64,
    /// This node's agent certificate folder (`daffe agent init/issue`): the
    /// daemon dials the last writer's agent with it when a Mount finds its
    /// copy stale. Its node name must be `node`. Unset: the agent's default.
    #[serde(default)]
    pub tls_dir: Option<PathBuf>,
    /// This node's labels (e.g. `zone = "b"`), announced with it: a
    /// profile's `standby_label` picks standby nodes by them.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub etcd: EtcdConfig,
}

/// How to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// CA that signed the etcd servers' certificates (needed for https).
    pub ca: Option<PathBuf>,
    /// Client certificate and key, for etcd's client-cert auth.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

fn default_ttl() -> u64 {
    10
}

fn default_margin() -> u64 {
    2000
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "[cluster] {key}: {value:?} is not a name (1-63 of a-z, 0-9 and '-', not starting or ending with '-')"
    )]
    BadName { key: &'static str, value: String },
    #[error("[cluster] agent: {0:?} is not HOST:PORT")]
    BadAgent(String),
    #[error("[cluster] lease_ttl: {0} s is outside {MIN_LEASE_TTL_SECS}..={MAX_LEASE_TTL_SECS}")]
    BadTtl(u64),
    #[error(
        "[cluster] fence_margin_ms: {margin} ms must be above 0 and below half the lease ({half} ms), or the owner either never fences in time or fences itself when healthy"
    )]
    BadMargin { margin: u64, half: u64 },
    #[error("[cluster] labels: {0}")]
    BadLabel(crate::label::LabelError),
    #[error("[cluster.etcd] endpoints: at least one is needed")]
    NoEndpoints,
    #[error("[cluster.etcd] endpoint {0:?}: must be http://HOST:PORT or https://HOST:PORT")]
    BadEndpoint(String),
    #[error("[cluster.etcd] https endpoints need `ca`")]
    NoCa,
    #[error("[cluster.etcd] `cert` and `key` go together")]
    HalfClientCert,
    #[error("[cluster.etcd] {key}: {path} must be an absolute path")]
    Relative { key: &'static str, path: PathBuf },
}

impl ClusterConfig {
    /// Checks what serde cannot: names, addresses, and the lease rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [("name", &self.name), ("node", &self.node)] {
            if !is_name(value) {
                return Err(ConfigError::BadName {
                    key,
                    value: value.clone(),
                });
            }
        }
        if !is_host_port(&self.agent) {
            return Err(ConfigError::BadAgent(self.agent.clone()));
        }
        for (k, v) in &self.labels {
            crate::label::check(k, v).map_err(ConfigError::BadLabel)?;
        }
        if !(MIN_LEASE_TTL_SECS..=MAX_LEASE_TTL_SECS).contains(&self.lease_ttl) {
            return Err(ConfigError::BadTtl(self.lease_ttl));
        }
        let half = self.lease_ttl * 1000 / 2;
        if self.fence_margin_ms == 0 || self.fence_margin_ms >= half {
            return Err(ConfigError::BadMargin {
                margin: self.fence_margin_ms,
                half,
            });
        }
        self.etcd.validate()
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl)
    }

    pub fn fence_margin(&self) -> Duration {
        Duration::from_millis(self.fence_margin_ms)
    }
}

impl EtcdConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.endpoints.is_empty() {
            return Err(ConfigError::NoEndpoints);
        }
        let mut tls = false;
        for e in &self.endpoints {
            let rest = if let Some(r) = e.strip_prefix("https://") {
                tls = true;
                r
            } else if let Some(r) = e.strip_prefix("http://") {
                r
            } else {
                return Err(ConfigError::BadEndpoint(e.clone()));
            };
            if !is_host_port(rest) {
                return Err(ConfigError::BadEndpoint(e.clone()));
            }
        }
        if tls && self.ca.is_none() {
            return Err(ConfigError::NoCa);
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(ConfigError::HalfClientCert);
        }
        for (key, path) in [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)] {
            if let Some(p) = path
                && !p.is_absolute()
            {
                return Err(ConfigError::Relative {
                    key,
                    path: p.clone(),
                });
            }
        }
        Ok(())
    }
}

/// A DNS-label-like name: it becomes part of etcd keys and of messages.
pub fn is_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `HOST:PORT` with a non-empty host (or `[v6]`) and a port 1-65535.
fn is_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let host_ok = if let Some(v6) = host.strip_prefix('[') {
        v6.ends_with(']') && v6.len() > 1
    } else {
        !host.is_empty() && !host.contains(':') && !host.contains('/')
    };
    host_ok && port.parse::<u16>().is_ok_and(|p| p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Doc {
        cluster: ClusterConfig,
    }

    fn parse(text: &str) -> Result<ClusterConfig, String> {
        let doc: Doc = toml::from_str(text).map_err(|e| e.to_string())?;
        doc.cluster.validate().map_err(|e| e.to_string())?;
        Ok(doc.cluster)
    }

    const GOOD: &str = r#"
        [cluster]
        name = "prod"
        node = "swnode1"
        agent = "10.0.0.1:7443"
        [cluster.etcd]
        endpoints = ["https://10.0.0.1:2379", "http://127.0.0.1:2379"]
        ca = "/etc/daffe/etcd/ca.pem"
    "#;

    #[test]
    fn a_good_table_parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!((c.name.as_str(), c.node.as_str()), ("prod", "swnode1"));
        assert_eq!(c.lease_ttl(), Duration::from_secs(10));
        assert_eq!(c.fence_margin(), Duration::from_secs(2));
        assert_eq!(c.etcd.endpoints.len(), 2);
        assert!(c.labels.is_empty());
        let c = parse(&GOOD.replacen(
            "name = \"prod\"",
            "name = \"prod\"\nlabels = { zone = \"b\", rack = \"R7\" }",
            1,
        ))
        .unwrap();
        assert_eq!(c.labels["zone"], "b");
    }

    #[test]
    fn bad_tables_say_why() {
        // (replace this, with that, message contains)
        let cases: &[(&str, &str, &str)] = &[
            (r#"name = "prod""#, r#"name = "Prod""#, "name: \"Prod\""),
            (r#"node = "swnode1""#, r#"node = "-x""#, "node: \"-x\""),
            (
                r#"agent = "10.0.0.1:7443""#,
                r#"agent = "10.0.0.1""#,
                "not HOST:PORT",
            ),
            (
                r#"agent = "10.0.0.1:7443""#,
                r#"agent = "h:0""#,
                "not HOST:PORT",
            ),
            (
                r#"agent = "10.0.0.1:7443""#,
                "agent = \"h:1\"\nlease_ttl = 1",
                "lease_ttl: 1 s",
            ),
            (
                r#"agent = "10.0.0.1:7443""#,
                "agent = \"h:1\"\nlease_ttl = 3\nfence_margin_ms = 1500",
                "below half the lease (1500 ms)",
            ),
            (
                r#"agent = "10.0.0.1:7443""#,
                "agent = \"h:1\"\nfence_margin_ms = 0",
                "must be above 0",
            ),
            (
                r#"ca = "/etc/daffe/etcd/ca.pem""#,
                "",
                "https endpoints need `ca`",
            ),
            (
                r#"ca = "/etc/daffe/etcd/ca.pem""#,
                "ca = \"/c\"\ncert = \"/x\"",
                "`cert` and `key` go together",
            ),
            (
                r#"ca = "/etc/daffe/etcd/ca.pem""#,
                "ca = \"ca.pem\"",
                "ca: ca.pem must be an absolute path",
            ),
            (
                r#"endpoints = ["https://10.0.0.1:2379", "http://127.0.0.1:2379"]"#,
                "endpoints = []",
                "at least one",
            ),
            (
                r#"endpoints = ["https://10.0.0.1:2379", "http://127.0.0.1:2379"]"#,
                r#"endpoints = ["10.0.0.1:2379"]"#,
                "must be http://HOST:PORT",
            ),
            (
                r#"name = "prod""#,
                "name = \"prod\"\nnmae = \"x\"",
                "unknown field",
            ),
            (
                r#"name = "prod""#,
                "name = \"prod\"\nlabels = { Zone = \"b\" }",
                "[cluster] labels: label \"Zone=b\"",
            ),
            (
                r#"name = "prod""#,
                "name = \"prod\"\nlabels = { zone = \"b c\" }",
                "expected KEY=VALUE",
            ),
        ];
        for (from, to, want) in cases {
            assert!(GOOD.contains(from), "{from}");
            let err = parse(&GOOD.replacen(from, to, 1)).unwrap_err();
            assert!(err.contains(want), "{to}: {err}");
        }
    }

    #[test]
    fn names_follow_dns_label_rules() {
        for ok in ["a", "swnode1", "us-east-1", &"x".repeat(63)] {
            assert!(is_name(ok), "{ok}");
        }
        for bad in ["", "A", "a_b", "-a", "a-", "a.b", "a/b", &"x".repeat(64)] {
            assert!(!is_name(bad), "{bad}");
        }
    }
}
