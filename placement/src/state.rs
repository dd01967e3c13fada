//! What `daffe placement observe` keeps for one service between runs, and
//! `advise` reads: the demand (decayed rates, daily profile), counters of
//! lines seen, skipped and unplaceable, the log position, and the moves
//! made (for the minimum stay and the daily budget). One JSON file per
//! service, replaced atomically (write a temporary file, fsync, rename,
//! fsync the directory), so a reader never sees half a file and a crash
//! leaves the old state or the new one.

use crate::geo::{Locator, UNKNOWN};
use crate::logline::{self, Client, LogFormat};
use crate::rates::{Demand, DemandConfig};
use crate::tail::Position;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Bumped when the file's meaning changes; an unknown version is refused
/// rather than misread.
pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state {path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("state {path}: version {found}, this daffe reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("state {path} is for service {found:?}, not {want:?}")]
    Service {
        path: PathBuf,
        found: String,
        want: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub lines: u64,
    /// Lines no parser accepted (counted and skipped).
    pub malformed: u64,
    /// Requests whose client could not be placed (private, unknown).
    pub unknown: u64,
    /// Requests per region since the state began.
    pub by_region: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveEvent {
    pub at: f64,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceState {
    pub version: u32,
    pub service: String,
    pub demand: Demand,
    pub counters: Counters,
    /// Time of the newest request seen (seconds since the epoch).
    pub last_request: f64,
    pub position: Option<Position>,
    pub moves: Vec<MoveEvent>,
}

impl ServiceState {
    pub fn new(service: &str, cfg: &DemandConfig) -> Self {
        Self {
            version: VERSION,
            service: service.to_owned(),
            demand: Demand::new(cfg),
            counters: Counters::default(),
            last_request: 0.0,
            position: None,
            moves: Vec::new(),
        }
    }

    /// Takes one log line. `now` stands in for lines without a time. A
    /// line no parser accepts is counted and skipped.
    pub fn ingest(&mut self, format: &LogFormat, line: &str, locator: &mut dyn Locator, now: f64) {
        self.counters.lines += 1;
        let req = match logline::parse(format, line) {
            Ok(r) => r,
            Err(_) => {
                self.counters.malformed += 1;
                return;
            }
        };
        let region = match req.client {
            Client::Ip(ip) => locator.locate(ip),
            Client::Region(r) => r,
            Client::Unknown => UNKNOWN.to_owned(),
        };
        let t = req.time.map_or(now, |t| t as f64);
        if region == UNKNOWN {
            self.counters.unknown += 1;
        }
        *self.counters.by_region.entry(region.clone()).or_default() += 1;
        self.demand.add(t, &region, 1.0);
        self.last_request = self.last_request.max(t);
    }

    pub fn record_move(&mut self, at: f64, from: &str, to: &str) {
        self.moves.push(MoveEvent {
            at,
            from: from.to_owned(),
            to: to.to_owned(),
        });
        // Only the last day matters to the rule; keep a week for operators.
        self.moves.retain(|m| at - m.at < 7.0 * 86_400.0);
    }
}

/// Reads a state file; `Ok(None)` if there is none yet.
pub fn load(path: &Path, service: &str) -> Result<Option<ServiceState>, StateError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    #[derive(Deserialize)]
    struct Head {
        version: u32,
    }
    let head: Head = serde_json::from_str(&text).map_err(|source| StateError::Json {
        path: path.to_owned(),
        source,
    })?;
    if head.version != VERSION {
        return Err(StateError::Version {
            path: path.to_owned(),
            found: head.version,
        });
    }
    let s: ServiceState = serde_json::from_str(&text).map_err(|source| StateError::Json {
        path: path.to_owned(),
        source,
    })?;
    if s.service != service {
        return Err(StateError::Service {
            path: path.to_owned(),
            found: s.service,
            want: service.to_owned(),
        });
    }
    Ok(Some(s))
}

/// Replaces the state file atomically.
pub fn save(path: &Path, state: &ServiceState) -> Result<(), StateError> {
    let body = serde_json::to_vec(state).map_err(|source| StateError::Json {
        path: path.to_owned(),
        source,
    })?;
    replace_file(path, &body).map_err(|source| StateError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Replaces `path` with `body` atomically: written to a temporary file
/// beside it, fsynced, renamed, the folder fsynced. A crash leaves the old
/// file or the new one, never half of either.
pub fn replace_file(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    /// Places 192.0.2.0/24 in Europe and 198.51.100.0/24 in Tokyo.
    struct Fake;
    impl Locator for Fake {
        fn locate(&mut self, ip: IpAddr) -> String {
            let s = ip.to_string();
            if crate::geo::is_private(ip) {
                UNKNOWN.into()
            } else if s.starts_with("192.0.2.") {
                "eu-central-1".into()
            } else if s.starts_with("198.51.100.") {
                "ap-northeast-1".into()
            } else {
                UNKNOWN.into()
            }
        }
    }

    #[test]
    fn ingest_counts_regions_unknowns_and_malformed_lines() {
        let mut s = ServiceState::new("web", &DemandConfig::default());
        let lines = [
            r#"192.0.2.1 - - [01/Dec/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "x""#,
            r#"192.0.2.2 - - [01/Dec/2026:10:00:01 +0000] "GET / HTTP/1.1" 200 5 "-" "x""#,
            r#"198.51.100.1 - - [01/Dec/2026:10:00:02 +0000] "GET / HTTP/1.1" 200 5 "-" "x""#,
            r#"10.0.0.1 - - [01/Dec/2026:10:00:03 +0000] "GET / HTTP/1.1" 200 5 "-" "x""#,
            r#"proxy.local - - [01/Dec/2026:10:00:03 +0000] "GET / HTTP/1.1" 200 5 "-" "x""#,
            "complete garbage",
            "",
        ];
        for l in lines {
            s.ingest(&LogFormat::Combined, l, &mut Fake, 0.0);
        }
        assert_eq!(s.counters.lines, 7);
        assert_eq!(s.counters.malformed, 2);
        assert_eq!(s.counters.unknown, 2);
        assert_eq!(s.counters.by_region["eu-central-1"], 2);
        assert_eq!(s.counters.by_region["ap-northeast-1"], 1);
        assert_eq!(s.last_request, 1_796_119_203.0);
        let r = s.demand.now.rates(s.last_request);
        assert!(r["eu-central-1"] > r["ap-northeast-1"]);
    }

    #[test]
    fn save_and_load_round_trip_atomically() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/web.json");
        assert!(load(&p, "web").unwrap().is_none());
        let mut s = ServiceState::new("web", &DemandConfig::default());
        s.ingest(&LogFormat::Combined, "junk", &mut Fake, 0.0);
        s.record_move(100.0, "us-east-1", "eu-central-1");
        save(&p, &s).unwrap();
        let back = load(&p, "web").unwrap().unwrap();
        assert_eq!(back.counters, s.counters);
        assert_eq!(back.moves, s.moves);
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
        assert!(matches!(load(&p, "db"), Err(StateError::Service { .. })));
        std::fs::write(&p, r#"{"version": 99}"#).unwrap();
        assert!(matches!(
            load(&p, "web"),
            Err(StateError::Version { found: 99, .. })
        ));
        std::fs::write(&p, "{").unwrap();
        assert!(matches!(load(&p, "web"), Err(StateError::Json { .. })));
    }
}
