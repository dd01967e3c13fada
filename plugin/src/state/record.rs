//! The durable description of one volume: what the store keeps, what Get,
//! `daffe volume inspect` and the control API show.
//!
//! Pure data with its rules (the mount multiset, the lifecycle states); the
//! store persists it, the service changes it. New fields must be
//! `#[serde(default)]` so records written by older daemons still load.

use profiles::{BackendKind, Settings};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One volume, keyed in the store by `name` (NAME without `@PROFILE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VolumeRecord {
    /// The name exactly as docker created it (`db@gold`).
    pub(crate) docker_name: String,
    /// Other docker names docker holds for this volume (`db` for `db@default`,
    /// FlockerProfiles' equivalence). Each docker name is a handle: Remove
    /// drops one, and deletes the data only with the last.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub(crate) aliases: std::collections::BTreeSet<String>,
    /// NAME: the identity on this host, unique whatever the profile.
    pub(crate) name: String,
    pub(crate) profile: String,
    pub(crate) backend: BackendKind,
    /// The profile resolved against the backend at Create time. Kept, so a
    /// later change to the profile does not silently change an existing volume.
    pub(crate) settings: Settings,
    /// The `-o` options docker passed at Create.
    #[serde(default)]
    pub(crate) options: BTreeMap<String, String>,
    /// Seconds since the Unix epoch.
    pub(crate) created_at: u64,
    #[serde(default)]
    pub(crate) state: VolumeState,
    /// Mount multiset: how many times each docker mount ID holds the volume.
    #[serde(default)]
    pub(crate) mounts: Mounts,
    /// The host this copy was received from, once it took ownership: a
    /// source whose commit reply was lost asks, on its rerun, whether the
    /// handover happened (issue 12, finding 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) received_from: Option<String>,
    /// Cluster mode only (issue 14): which catalogue volume this copy is of,
    /// and how old it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cluster: Option<ClusterFacts>,
}

/// A copy's place in the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClusterFacts {
    /// The catalogue record's create revision: a volume removed and made
    /// again under the same name is another volume, and this copy is not of it.
    pub(crate) created: u64,
    /// The epoch this node last owned (wrote) the volume at; a copy whose
    /// epoch is not the volume's last writer's is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) epoch: Option<u64>,
}

impl VolumeRecord {
    /// Every docker name of this volume, the creating one first.
    pub(crate) fn docker_names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.docker_name.as_str()).chain(self.aliases.iter().map(String::as_str))
    }

    pub(crate) fn knows(&self, docker_name: &str) -> bool {
        self.docker_name == docker_name || self.aliases.contains(docker_name)
    }

    /// Drops the handle `docker_name`; returns whether other handles remain
    /// (then the data must stay).
    pub(crate) fn drop_name(&mut self, docker_name: &str) -> bool {
        if self.docker_name == docker_name {
            match self.aliases.pop_first() {
                Some(next) => self.docker_name = next,
                None => return false,
            }
        } else {
            self.aliases.remove(docker_name);
        }
        true
    }
}

/// Where a volume is in its life. Mount is allowed only in `Ready` and
/// `Moving`.
///
/// `Creating` is written before the backend makes the storage, so a crash in
/// between leaves a record the next start can clean up instead of orphaned
/// storage.
///
/// Migration (see `migrate`): the source goes `Ready -> Moving` (pre-copy
/// rounds while the app runs) `-> Fenced` (unmounted, no new mounts, final
/// round) `-> Moved` (the destination owns it; Mount fails with "volume moved
/// to HOST"). An aborted move goes back to `Ready`. The destination goes
/// `Receiving -> Ready` when the source hands ownership over; a volume that
/// was `Moved` away may be received back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum VolumeState {
    Creating,
    #[default]
    Ready,
    /// Pre-copy rounds to `to` are running; the volume stays mountable.
    Moving {
        to: String,
    },
    /// Cutover to `to`: unmounted, new mounts refused, final round running.
    Fenced {
        to: String,
    },
    /// `to` owns the volume now; this copy is fenced for good.
    Moved {
        to: String,
    },
    /// Rounds from `from` are arriving; not mountable until handed over.
    Receiving {
        from: String,
    },
}

impl VolumeState {
    /// Why Mount must be refused in this state, if it must.
    pub(crate) fn mount_refusal(&self) -> Option<String> {
        match self {
            Self::Creating => Some("it is still being created".to_owned()),
            Self::Ready | Self::Moving { .. } => None,
            Self::Fenced { to } => Some(format!("volume is being moved to {to}")),
            Self::Moved { to } => Some(format!("volume moved to {to}")),
            Self::Receiving { from } => Some(format!(
                "volume is being received from {from}; not ready yet"
            )),
        }
    }

    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Ready => "ready",
            Self::Moving { .. } => "moving",
            Self::Fenced { .. } => "fenced",
            Self::Moved { .. } => "moved",
            Self::Receiving { .. } => "receiving",
        }
    }

    /// The other host of a migration in progress or done, if any.
    pub(crate) fn peer(&self) -> Option<&str> {
        match self {
            Self::Moving { to } | Self::Fenced { to } | Self::Moved { to } => Some(to),
            Self::Receiving { from } => Some(from),
            Self::Creating | Self::Ready => None,
        }
    }
}

/// Docker's mount IDs are reused (`docker cp` into a running container mounts
/// again with the container's ID), so mounts are counted per ID, and the
/// volume is really unmounted only when every count is back to zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub(crate) struct Mounts(BTreeMap<String, u32>);

impl Mounts {
    /// Total mounts over all IDs.
    pub(crate) fn total(&self) -> u64 {
        self.0.values().map(|&n| u64::from(n)).sum()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn count(&self, id: &str) -> u32 {
        self.0.get(id).copied().unwrap_or(0)
    }

    /// Adds one mount for `id`; returns whether it was the volume's first.
    pub(crate) fn add(&mut self, id: &str) -> bool {
        let first = self.0.is_empty();
        *self.0.entry(id.to_owned()).or_insert(0) += 1;
        first
    }

    /// Drops one mount for `id`. Returns `None` if `id` held no mount, else
    /// whether that was the volume's last.
    pub(crate) fn release(&mut self, id: &str) -> Option<bool> {
        let n = self.0.get_mut(id)?;
        *n -= 1;
        if *n == 0 {
            self.0.remove(id);
        }
        Some(self.0.is_empty())
    }

    pub(crate) fn ids(&self) -> impl Iterator<Item = (&str, u32)> {
        self.0.iter().map(|(k, &v)| (k.as_str(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_are_a_multiset() {
        let mut m = Mounts::default();
        assert!(m.add("a"), "first mount of the volume");
        assert!(!m.add("a"), "same ID again (docker cp)");
        assert!(!m.add("b"));
        assert_eq!((m.total(), m.count("a"), m.count("b")), (3, 2, 1));
        assert_eq!(m.release("zzz"), None, "unknown ID");
        assert_eq!(m.release("a"), Some(false));
        assert_eq!(m.release("b"), Some(false));
        assert_eq!(m.release("a"), Some(true), "last one");
        assert!(m.is_empty());
        assert_eq!(m.release("a"), None);
    }

    #[test]
    fn docker_names_are_handles() {
        let json = r#"{"docker_name":"v@default","name":"v","profile":"default","backend":"local",
            "settings":{"backend":"local","root":"/d","format":"dir","size":null,"filesystem":null},
            "created_at":5}"#;
        let mut r: VolumeRecord = serde_json::from_str(json).unwrap();
        r.aliases.insert("v".into());
        assert!(r.knows("v") && r.knows("v@default") && !r.knows("v@gold"));
        assert!(r.drop_name("v@default"), "v remains");
        assert_eq!(r.docker_names().collect::<Vec<_>>(), ["v"]);
        assert!(!r.drop_name("v"), "that was the last");
    }

    #[test]
    fn records_round_trip_and_old_records_load() {
        let json = r#"{"docker_name":"db@gold","name":"db","profile":"gold","backend":"local",
            "settings":{"backend":"local","root":"/d/local/gold","format":"block","size":"1G","filesystem":"ext4"},
            "created_at":5}"#;
        let r: VolumeRecord = serde_json::from_str(json).unwrap();
        assert_eq!(r.state, VolumeState::Ready);
        assert!(r.mounts.is_empty() && r.options.is_empty());
        let mut r2 = r.clone();
        r2.mounts.add("c1");
        r2.state = VolumeState::Creating;
        let back: VolumeRecord =
            serde_json::from_str(&serde_json::to_string(&r2).unwrap()).unwrap();
        assert_eq!(back, r2);
        assert_eq!(
            serde_json::to_value(&r2).unwrap()["state"],
            serde_json::json!("creating")
        );
    }
}
