//! `daffe sync` of a dir volume's directory asks the daemon where the
//! volume's files were written (`backend::local::dir_writes`), as `migrate`
//! does: a database file rewritten in a few pages is then read only around
//! those pages, not whole (issue 11: a local incremental round of a 128 MiB
//! file was the cold read and hash of all of it). Without a daemon, or for
//! any other source, the sync reads changed files whole, as before.

use crate::control::client::ControlClient;
use crate::control::request::ControlRequest;
use crate::migrate::changes::DaemonChanges;
use mover::{Destination, ImageChanges, Source, SyncOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The daemon's tracker for `src` when it is the directory of a `dir`
/// volume the daemon at `socket` serves, with that volume's name; `None`
/// otherwise (no daemon, another kind of source, not a volume).
pub(crate) fn for_source(
    src: &Source,
    dst: &Destination,
    opts: &SyncOptions,
    socket: &Path,
) -> Option<(String, Arc<dyn ImageChanges>)> {
    let Source::Tree(dir) = src else {
        return None;
    };
    let dir = std::fs::canonicalize(dir).ok()?;
    let daemon = ControlClient::new(socket);
    let views = match daemon.send(&ControlRequest::Volumes) {
        Ok(v) => v,
        Err(e) => {
            tracing::debug!(error = %e, "no daemon to ask where the source was written");
            return None;
        }
    };
    let name = dir_volume_at(&views, &dir, |p| std::fs::canonicalize(p).ok())?;
    // The tracker's "since the last scan" is per cache: name the one this
    // sync scans with, absolute (the daemon's working directory is not ours).
    let cache = std::path::absolute(mover::source_cache_dir(dst, opts)).ok()?;
    Some((
        name.clone(),
        Arc::new(DaemonChanges::new(daemon, &name, &cache)),
    ))
}

/// Pure: the name of the `dir` volume whose directory is `dir`, in the
/// daemon's `Volumes` reply. Mountpoints go through `canon` (the daemon's
/// data root may be reached through a symlink).
fn dir_volume_at(
    views: &Value,
    dir: &Path,
    canon: impl Fn(&Path) -> Option<PathBuf>,
) -> Option<String> {
    views.as_array()?.iter().find_map(|v| {
        let local_dir = v["settings"]["backend"] == "local" && v["settings"]["format"] == "dir";
        let mp = v["mountpoint"].as_str()?;
        (local_dir && canon(Path::new(mp)).as_deref() == Some(dir))
            .then(|| v["docker_name"].as_str().map(str::to_owned))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view(name: &str, backend: &str, format: &str, mp: &str) -> Value {
        json!({"docker_name": name, "settings": {"backend": backend, "format": format},
               "mountpoint": mp, "mount_count": 0})
    }

    #[test]
    fn only_a_dir_volume_whose_directory_is_the_source() {
        let views = json!([
            view("img", "local", "block", "/v/img/data"),
            view("ebs", "ebs", "", "/v/ebs"),
            view("db", "local", "dir", "/v/db/data"),
            view("db2", "local", "dir", "/v/db2/data"),
        ]);
        let id = |p: &Path| Some(p.to_path_buf());
        let cases: &[(&str, Option<&str>)] = &[
            ("/v/db/data", Some("db")),
            ("/v/db2/data", Some("db2")),
            // A block volume's mounted filesystem: its tracker knows the
            // image's ranges, not files.
            ("/v/img/data", None),
            ("/v/ebs", None),
            // A folder inside a volume is not the volume.
            ("/v/db/data/pg", None),
            ("/elsewhere", None),
        ];
        for (dir, want) in cases {
            assert_eq!(
                dir_volume_at(&views, Path::new(dir), id).as_deref(),
                *want,
                "{dir}"
            );
        }
        // Through a symlinked root: compared after canonicalizing.
        let via_link = |p: &Path| Some(PathBuf::from(p.to_str()?.replace("/v/", "/real/")));
        assert_eq!(
            dir_volume_at(&views, Path::new("/real/db/data"), via_link).as_deref(),
            Some("db")
        );
        // Not a list (an error body, an older daemon): no tracker.
        assert_eq!(
            dir_volume_at(&json!({"Err": "x"}), Path::new("/v/db/data"), id),
            None
        );
    }
}
