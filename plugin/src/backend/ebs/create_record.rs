//! What a Create sent to EC2, kept beside the volume's mountpoint
//! (`MOUNT_ROOT/NAME/create.json`) from before the CreateVolume call until
//! the volume is removed.
//!
//! A Create that dies with its CreateVolume in flight (the daemon killed,
//! the answer lost) leaves a record `Creating`; the next start removes it
//! (`VolumeService::recover`). A search by tags cannot always see that
//! volume: DescribeVolumes' filters lag a new volume (eventual
//! consistency), and the request itself may reach EC2 only after the
//! search. Then the volume outlived its rollback, billed and adopted by
//! nobody. With this record the rollback finds it by its id, or, with no
//! id saved, sends the same request again: the same client token gets the
//! same volume from EC2 (made now at the latest, never twice), which is
//! then deleted.
//!
//! Pure core ([`CreateRecord::matches`]) plus the file's load and durable save.

use crate::aws::NewVolume;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file's name in the volume's directory.
pub(super) const FILE: &str = "create.json";

/// A Create's request and, once EC2 answered, the volume it made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CreateRecord {
    pub(crate) request: NewVolume,
    pub(crate) volume_id: Option<String>,
}

impl CreateRecord {
    /// Whether this record's request asks for the same volume as `fresh`
    /// (all but the token and the tags, which carry the time of asking):
    /// a repeated Create may adopt its volume only then.
    pub(crate) fn matches(&self, fresh: &NewVolume) -> bool {
        let a = &self.request;
        (
            &a.zone,
            a.size_gib,
            &a.volume_type,
            a.iops,
            a.throughput,
            a.encrypted,
            &a.kms_key_id,
            &a.snapshot_id,
        ) == (
            &fresh.zone,
            fresh.size_gib,
            &fresh.volume_type,
            fresh.iops,
            fresh.throughput,
            fresh.encrypted,
            &fresh.kms_key_id,
            &fresh.snapshot_id,
        )
    }
}

/// Where the record of volume `name` lives under the mount root.
pub(super) fn path(mount_root: &Path, name: &str) -> PathBuf {
    mount_root.join(name).join(FILE)
}

/// The record at `path`; `None` when there is none. One that cannot be
/// parsed is `None` too, logged: the tag search still runs.
pub(super) fn load(path: &Path) -> Option<CreateRecord> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read an EBS create record");
            return None;
        }
    };
    serde_json::from_slice(&bytes)
        .inspect_err(|e| {
            tracing::warn!(path = %path.display(), error = %e, "an EBS create record does not parse");
        })
        .ok()
}

/// Writes the record durably (temporary file, fsync, rename, fsync of the
/// directory) before the call it describes: a crash leaves the old record
/// or the new one, never half of one.
pub(super) fn save(path: &Path, rec: &CreateRecord) -> std::io::Result<()> {
    let body = serde_json::to_vec_pretty(rec).map_err(std::io::Error::other)?;
    crate::durable::replace(path, &body, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> NewVolume {
        NewVolume {
            zone: "us-east-1a".into(),
            size_gib: 10,
            volume_type: "io2".into(),
            iops: Some(300),
            encrypted: true,
            tags: [("daffe:created".to_owned(), "1".to_owned())].into(),
            client_token: "daffe-db-1".into(),
            ..NewVolume::default()
        }
    }

    #[test]
    fn a_repeated_create_matches_on_the_volume_not_the_token_or_tags() {
        let rec = CreateRecord {
            request: req(),
            volume_id: None,
        };
        let mut again = req();
        again.client_token = "daffe-db-2".into();
        again.tags.insert("daffe:created".into(), "2".into());
        assert!(rec.matches(&again));
        let changes: [fn(&mut NewVolume); 6] = [
            |r| r.zone = "us-east-1b".into(),
            |r| r.size_gib = 11,
            |r| r.volume_type = "gp3".into(),
            |r| r.iops = None,
            |r| r.encrypted = false,
            |r| r.snapshot_id = Some("snap-1".into()),
        ];
        for change in changes {
            let mut other = req();
            change(&mut other);
            assert!(!rec.matches(&other), "{other:?}");
        }
    }

    #[test]
    fn saved_records_load_back_and_bad_ones_are_none() {
        let d = tempfile::tempdir().unwrap();
        let p = path(d.path(), "db");
        assert_eq!(load(&p), None);
        let rec = CreateRecord {
            request: req(),
            volume_id: Some("vol-1".into()),
        };
        save(&p, &rec).unwrap();
        assert_eq!(load(&p), Some(rec));
        std::fs::write(&p, b"{not json").unwrap();
        assert_eq!(load(&p), None);
    }
}
