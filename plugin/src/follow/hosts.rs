//! How the operator names the hosts of two-host mode (no Swarm): one
//! `--host` per host, keyed by its region,
//!
//! ```text
//! --host REGION=agent=HOST[:PORT],engine=SOCKET,control=SOCKET[,tls-dir=DIR][,addr=ADDR]
//! ```
//!
//! - `agent`: the host's `daffe agent` (what `daffe migrate --to` names);
//! - `engine`: its Docker engine's API socket;
//! - `control`: its daffe daemon's control socket (the source side of a
//!   move runs against the source host's daemon);
//! - `tls-dir`: the certificate the host presents when it is the source
//!   (default: `--tls-dir`);
//! - `addr`: where clients reach the service on it (default: the agent's
//!   host), for `placement where` and the forwarder.
//!
//! The sockets are paths on the machine `follow` runs on: the local
//! host's own, the other host's forwarded (e.g. `ssh -L`).

use std::collections::BTreeSet;
use std::path::PathBuf;

/// One host of two-host mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostSpec {
    pub region: String,
    pub agent: String,
    pub engine: PathBuf,
    pub control: PathBuf,
    pub tls_dir: Option<PathBuf>,
    pub addr: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum HostSpecError {
    #[error(
        "--host {0:?}: expected REGION=agent=HOST[:PORT],engine=SOCKET,control=SOCKET[,tls-dir=DIR][,addr=ADDR]"
    )]
    Shape(String),
    #[error("--host {spec:?}: unknown key {key:?} (agent, engine, control, tls-dir, addr)")]
    UnknownKey { spec: String, key: String },
    #[error("--host {spec:?}: {key} given twice")]
    Twice { spec: String, key: String },
    #[error("--host {spec:?}: {key}= is required")]
    Missing { spec: String, key: &'static str },
    #[error("--host {spec:?}: {key}= is empty")]
    Empty { spec: String, key: String },
    #[error("region {0} is given by two --host flags")]
    SameRegion(String),
    #[error("two-host mode needs at least two --host (one is given)")]
    OnlyOne,
}

/// The host part of `HOST[:PORT]` (`[v6]:port` too).
fn host_of(agent: &str) -> &str {
    if let Some(rest) = agent.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match agent.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.parse::<u16>().is_ok() => h,
        _ => agent,
    }
}

impl std::str::FromStr for HostSpec {
    type Err = HostSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let shape = || HostSpecError::Shape(spec.to_owned());
        let (region, rest) = spec.split_once('=').ok_or_else(shape)?;
        let region = region.trim();
        if region.is_empty() || region.contains(',') {
            return Err(shape());
        }
        let mut seen = BTreeSet::new();
        let (mut agent, mut engine, mut control, mut tls_dir, mut addr) =
            (None, None, None, None, None);
        for kv in rest.split(',') {
            let (k, v) = kv.split_once('=').ok_or_else(shape)?;
            let (k, v) = (k.trim(), v.trim());
            if v.is_empty() {
                return Err(HostSpecError::Empty {
                    spec: spec.into(),
                    key: k.into(),
                });
            }
            if !seen.insert(k.to_owned()) {
                return Err(HostSpecError::Twice {
                    spec: spec.into(),
                    key: k.into(),
                });
            }
            let v = v.to_owned();
            match k {
                "agent" => agent = Some(v),
                "engine" => engine = Some(PathBuf::from(v)),
                "control" => control = Some(PathBuf::from(v)),
                "tls-dir" => tls_dir = Some(PathBuf::from(v)),
                "addr" => addr = Some(v),
                _ => {
                    return Err(HostSpecError::UnknownKey {
                        spec: spec.into(),
                        key: k.into(),
                    });
                }
            }
        }
        let missing = |key| HostSpecError::Missing {
            spec: spec.into(),
            key,
        };
        let agent = agent.ok_or_else(|| missing("agent"))?;
        Ok(HostSpec {
            region: region.to_owned(),
            addr: addr.unwrap_or_else(|| host_of(&agent).to_owned()),
            engine: engine.ok_or_else(|| missing("engine"))?,
            control: control.ok_or_else(|| missing("control"))?,
            tls_dir,
            agent,
        })
    }
}

/// The hosts given, checked as a set: two at least, one per region.
pub(crate) fn check(hosts: &[HostSpec]) -> Result<(), HostSpecError> {
    if hosts.len() == 1 {
        return Err(HostSpecError::OnlyOne);
    }
    let mut seen = BTreeSet::new();
    for h in hosts {
        if !seen.insert(h.region.as_str()) {
            return Err(HostSpecError::SameRegion(h.region.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_parses_with_its_defaults() {
        let h: HostSpec =
            "eu-west-1=agent=10.0.0.2:7450,engine=/run/b/docker.sock,control=/run/b/control.sock"
                .parse()
                .unwrap();
        assert_eq!(h.region, "eu-west-1");
        assert_eq!(h.agent, "10.0.0.2:7450");
        assert_eq!(h.addr, "10.0.0.2", "clients reach the agent's host");
        assert_eq!(h.engine, PathBuf::from("/run/b/docker.sock"));
        assert_eq!(h.tls_dir, None);
        let h: HostSpec = "us=agent=hosta,engine=/e,control=/c,tls-dir=/t,addr=203.0.113.7"
            .parse()
            .unwrap();
        assert_eq!(
            (h.agent.as_str(), h.addr.as_str()),
            ("hosta", "203.0.113.7")
        );
        assert_eq!(h.tls_dir, Some(PathBuf::from("/t")));
        assert_eq!(host_of("[fd00::2]:7450"), "fd00::2");
        assert_eq!(host_of("fd00::2"), "fd00::2");
    }

    #[test]
    fn bad_hosts_are_refused_with_what_is_wrong() {
        let e = |s: &str| s.parse::<HostSpec>().unwrap_err().to_string();
        assert!(e("eu-west-1").contains("expected REGION=agent="));
        assert!(e("=agent=a,engine=/e,control=/c").contains("expected"));
        assert!(e("eu=agent=a,engine=/e").contains("control= is required"));
        assert!(e("eu=engine=/e,control=/c").contains("agent= is required"));
        assert!(e("eu=agent=a,engine=/e,control=/c,socket=/s").contains("unknown key \"socket\""));
        assert!(e("eu=agent=a,agent=b,engine=/e,control=/c").contains("agent given twice"));
        assert!(e("eu=agent=,engine=/e,control=/c").contains("agent= is empty"));
        assert!(e("eu=agent=a,engine/e").contains("expected"));
        let h = |r: &str| HostSpec {
            region: r.into(),
            agent: "a".into(),
            engine: "/e".into(),
            control: "/c".into(),
            tls_dir: None,
            addr: "a".into(),
        };
        assert_eq!(check(&[h("us")]), Err(HostSpecError::OnlyOne));
        assert_eq!(
            check(&[h("us"), h("eu"), h("us")]),
            Err(HostSpecError::SameRegion("us".into()))
        );
        assert_eq!(check(&[h("us"), h("eu")]), Ok(()));
    }
}
