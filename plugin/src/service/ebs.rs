//! The service's EBS-specific work:
//!
//! - **Rebuild** (at start, after `recover`): volumes the backend finds in
//!   its storage for this host (EBS: tagged for this cluster and zone, owned
//!   by this instance or unclaimed) that the store has no record of get one
//!   back, so a lost state dir, or a volume moved in from another zone, is
//!   served again. Settings come from the volume itself; `keep_on_remove`
//!   and the KMS key as named by the profile (AWS reports the key's ARN,
//!   profiles may name an alias).
//! - **Migration steps** for `daffe migrate VOLUME --via-ebs` (the CLI
//!   drives them through the control socket; `crate::migrate_ebs`): facts,
//!   fence/unfence, attach/detach for reading the device, create the copy in
//!   another zone, mark the source moved. Each runs under the volume's lock;
//!   fence and attach require the volume unmounted, so no Mount slips in.

use super::{ServiceError, VolumeService, in_use, lock, now_secs};
use crate::backend::BackendError;
use crate::backend::ebs::{AwsSide, EbsBackend, tags as ebs_tags};
use crate::state::record::{Mounts, VolumeRecord, VolumeState};
use profiles::{Settings, VolumeName};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What the migration CLI needs to know about an EBS volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub(crate) struct EbsFacts {
    pub(crate) name: String,
    pub(crate) docker_name: String,
    pub(crate) profile: String,
    pub(crate) volume_id: String,
    pub(crate) zone: String,
    pub(crate) size_gib: u64,
    pub(crate) encrypted: bool,
    pub(crate) kms_key_id: Option<String>,
    /// `daffe:state` tag (`fenced:ZONE`, `moved:ZONE:VOL`), if any.
    pub(crate) tag_state: Option<String>,
    pub(crate) mount_count: u64,
    /// The block device while attached to this host.
    pub(crate) device: Option<PathBuf>,
    pub(crate) aws: AwsSide,
}

impl VolumeService {
    /// Records for the volumes the backend holds and the store lacks;
    /// returns their docker names.
    pub(crate) fn rebuild(&self) -> Result<Vec<String>, ServiceError> {
        let mut rebuilt = Vec::new();
        for f in self.backend.discover()? {
            if VolumeName::parse(&f.name).is_err() {
                tracing::warn!(volume = %f.name, id = %f.storage_id, "not rebuilt: not a valid volume NAME");
                continue;
            }
            let vlock = self.volume_lock(&f.name);
            let _g = lock(&vlock);
            if self.records.get(&f.name)?.is_some() {
                continue;
            }
            let cat = self.catalog.snapshot();
            let mut settings = f.settings.clone();
            if let Settings::Ebs(e) = &mut settings {
                match cat.get(&f.profile).and_then(|p| p.def.ebs.as_ref()) {
                    Some(spec) => {
                        e.keep_on_remove = spec.keep_on_remove;
                        if e.encrypted && spec.encrypted {
                            e.kms_key_id = spec.kms_key_id.clone();
                        }
                    }
                    None => {
                        // Without its profile we do not know whether the
                        // data may be deleted with the volume: keep it.
                        tracing::warn!(volume = %f.name, profile = %f.profile,
                            "profile unknown here; the rebuilt volume keeps its EBS volume on remove");
                        e.keep_on_remove = true;
                    }
                }
            }
            self.backend.adopt(&f)?;
            let rec = VolumeRecord {
                docker_name: f.docker_name.clone(),
                aliases: Default::default(),
                name: f.name.clone(),
                profile: f.profile.clone(),
                backend: self.backend.kind(),
                settings,
                options: BTreeMap::new(),
                created_at: f.created_at.unwrap_or_else(now_secs),
                state: VolumeState::Ready,
                mounts: Mounts::default(),
                received_from: None,
                cluster: None,
            };
            self.records.put(&rec)?;
            tracing::info!(volume = %rec.docker_name, id = %f.storage_id, "record rebuilt from the storage");
            rebuilt.push(rec.docker_name);
        }
        Ok(rebuilt)
    }

    fn ebs_backend(&self, op: &'static str, name: &str) -> Result<&EbsBackend, ServiceError> {
        self.ebs.as_deref().ok_or_else(|| ServiceError::Refused {
            op,
            name: name.to_owned(),
            reason: format!(
                "this host stores volumes on the {} backend; moving through EBS snapshots \
                 needs the ebs backend",
                self.backend.kind()
            ),
        })
    }

    /// Runs `f` on the record under its lock, refusing while it is mounted
    /// when `unmounted` is asked for.
    fn with_volume<T>(
        &self,
        docker_name: &str,
        unmounted: bool,
        f: impl FnOnce(&VolumeRecord) -> Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        self.locked(docker_name, |rec| {
            if unmounted && !rec.mounts.is_empty() {
                return Err(in_use(&rec));
            }
            f(&rec)
        })
    }

    /// The volume's EBS facts (GET `/v1/volumes/NAME/ebs`).
    pub(crate) fn ebs_facts(&self, docker_name: &str) -> Result<EbsFacts, ServiceError> {
        let rec = self.find(docker_name)?;
        let be = self.ebs_backend("ebs facts", &rec.docker_name)?;
        let v = be.facts(&rec.name).map_err(BackendError::from)?;
        Ok(EbsFacts {
            name: rec.name.clone(),
            docker_name: rec.docker_name.clone(),
            profile: rec.profile.clone(),
            volume_id: v.id.clone(),
            zone: v.zone.clone(),
            size_gib: v.size_gib,
            encrypted: v.encrypted,
            kms_key_id: match &rec.settings {
                Settings::Ebs(e) => e.kms_key_id.clone(),
                Settings::Local(_) => None,
            },
            tag_state: v.tag(ebs_tags::STATE).map(str::to_owned),
            mount_count: rec.mounts.total(),
            device: be.current_device(&v),
            aws: be.side().clone(),
        })
    }

    /// Cutover: fences the unmounted volume for `zone` (Mount refused).
    pub(crate) fn ebs_fence(
        &self,
        docker_name: &str,
        zone: &str,
    ) -> Result<EbsFacts, ServiceError> {
        self.with_volume(docker_name, true, |rec| {
            if rec.state != VolumeState::Ready {
                return Err(ServiceError::Refused {
                    op: "fence",
                    name: rec.docker_name.clone(),
                    reason: format!("the volume is {}", rec.state.as_str()),
                });
            }
            let be = self.ebs_backend("fence", &rec.docker_name)?;
            be.fence(&rec.name, zone).map_err(BackendError::from)?;
            Ok(())
        })?;
        self.ebs_facts(docker_name)
    }

    /// An aborted move: the volume is usable here again.
    pub(crate) fn ebs_unfence(&self, docker_name: &str) -> Result<EbsFacts, ServiceError> {
        self.with_volume(docker_name, false, |rec| {
            let be = self.ebs_backend("unfence", &rec.docker_name)?;
            be.unfence(&rec.name).map_err(BackendError::from)?;
            Ok(())
        })?;
        self.ebs_facts(docker_name)
    }

    /// Attaches the fenced volume to read it; returns its block device.
    pub(crate) fn ebs_attach(&self, docker_name: &str) -> Result<PathBuf, ServiceError> {
        self.with_volume(docker_name, true, |rec| {
            let be = self.ebs_backend("attach", &rec.docker_name)?;
            Ok(be
                .attach_for_transfer(&rec.name)
                .map_err(BackendError::from)?)
        })
    }

    pub(crate) fn ebs_detach(&self, docker_name: &str) -> Result<(), ServiceError> {
        self.with_volume(docker_name, true, |rec| {
            let be = self.ebs_backend("detach", &rec.docker_name)?;
            Ok(be
                .detach_after_transfer(&rec.name)
                .map_err(BackendError::from)?)
        })
    }

    /// Creates the volume's copy in `zone` from `snapshot_id`, with the
    /// volume's settings; returns the new volume id.
    pub(crate) fn ebs_copy(
        &self,
        docker_name: &str,
        snapshot_id: &str,
        zone: &str,
    ) -> Result<String, ServiceError> {
        self.with_volume(docker_name, true, |rec| {
            let be = self.ebs_backend("copy", &rec.docker_name)?;
            let Settings::Ebs(s) = &rec.settings else {
                return Err(ServiceError::Refused {
                    op: "copy",
                    name: rec.docker_name.clone(),
                    reason: "not an EBS volume".into(),
                });
            };
            let v = be
                .create_in_zone(
                    &rec.name,
                    &rec.profile,
                    &rec.docker_name,
                    s,
                    snapshot_id,
                    zone,
                )
                .map_err(BackendError::from)?;
            Ok(v.id)
        })
    }

    /// A failed move: deletes every copy made of the volume (its copies in
    /// other zones, which a host there would adopt), so the fence can go
    /// with one live volume left. Refused once the move finished. Returns
    /// the deleted volume ids.
    pub(crate) fn ebs_discard_copies(
        &self,
        docker_name: &str,
    ) -> Result<Vec<String>, ServiceError> {
        self.with_volume(docker_name, true, |rec| {
            let be = self.ebs_backend("discard", &rec.docker_name)?;
            Ok(be.discard_copies(&rec.name).map_err(BackendError::from)?)
        })
    }

    /// The source is moved for good (Mount refused; Remove deletes it).
    pub(crate) fn ebs_moved(
        &self,
        docker_name: &str,
        zone: &str,
        volume_id: &str,
    ) -> Result<EbsFacts, ServiceError> {
        self.with_volume(docker_name, true, |rec| {
            let be = self.ebs_backend("moved", &rec.docker_name)?;
            be.mark_moved(&rec.name, zone, volume_id)
                .map_err(BackendError::from)?;
            Ok(())
        })?;
        self.ebs_facts(docker_name)
    }
}
