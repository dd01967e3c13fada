//! The EBS backend's state machines over AWS's states: attach (pick an attach
//! name, AttachVolume, wait for `attached`), detach (DetachVolume, wait until
//! gone), modify (one ModifyVolume per change), rebuild (discover and adopt
//! tagged volumes), and the steps `migrate --via-ebs` asks of the daemon
//! (fence, attach for reading, create the copy in another zone, mark moved).
//!
//! Each wait looks at the state AWS reports and acts on it, so a call
//! repeated after a crash or a timeout picks up where things are: attached to
//! us already is success, `detaching` is waited out before attaching again,
//! attached to another instance is refused (no force-detach: that instance
//! may be writing).

use super::Discovered;
use super::change::SettingsChange;
use super::ebs::{DEVICE_NAMES, EbsBackend, client_token, lock, now_secs};
use super::ebs_error::EbsError;
use super::ebs_tags::{self as tags, TagState};
use super::ebs_wait::Deadline;
use crate::aws::{NewVolume, VolumeFacts};
use profiles::{EbsSettings, Settings};
use std::path::PathBuf;
use std::time::Duration;

/// Looks at a volume that stays `available` after our AttachVolume before
/// sending it again: AWS shows `attaching` within a second, so three looks
/// (about two seconds) without it mean the request was lost.
const REATTACH_AFTER_LOOKS: u32 = 3;
/// Waiting for a snapshot to become `completed` before CreateVolume from it
/// (EBS direct-API snapshots are `completed` once CompleteSnapshot returns;
/// EC2 CreateSnapshot ones can take minutes, which the CLI's own retries
/// cover).
pub const SNAPSHOT_WAIT: Duration = Duration::from_secs(60);
/// Budget for creating a volume from a snapshot in another zone and waiting
/// until it is `available`.
pub const COPY_BUDGET: Duration = Duration::from_secs(90);

impl EbsBackend {
    /// Picks a free attach name and sends AttachVolume, under the attach
    /// lock so concurrent attaches never pick the same name.
    fn send_attach(&self, name: &str, id: &str, d: &Deadline) -> Result<String, EbsError> {
        let _g = lock(&self.attach_lock);
        let me = self.scope.instance_id.clone();
        let filters = vec![("attachment.instance-id".to_owned(), vec![me.clone()])];
        let attached = self.aws(name, Some(id), "DescribeVolumes", d, None, || {
            self.ec2.find_volumes(&filters)
        })?;
        let mut used: Vec<String> = attached
            .iter()
            .filter(|v| v.id != id)
            .flat_map(|v| v.attachments.iter())
            .filter(|a| a.instance_id == me)
            .map(|a| a.device.clone())
            .collect();
        used.extend(
            lock(&self.devices)
                .iter()
                .filter(|(v, _)| v.as_str() != id)
                .map(|(_, d)| d.clone()),
        );
        let device = DEVICE_NAMES
            .iter()
            .find(|n| !used.iter().any(|u| u == *n))
            .ok_or_else(|| EbsError::NoDeviceName {
                volume: name.to_owned(),
                instance: me.clone(),
                names: format!(
                    "{}..{}",
                    DEVICE_NAMES[0],
                    DEVICE_NAMES[DEVICE_NAMES.len() - 1]
                ),
            })?;
        self.aws(name, Some(id), "AttachVolume", d, None, || {
            self.ec2.attach_volume(id, &me, device)
        })?;
        lock(&self.devices).insert(id.to_owned(), (*device).to_owned());
        tracing::info!(volume = name, volume_id = id, device, instance = %me, "AttachVolume sent");
        Ok((*device).to_owned())
    }

    /// Attaches `v` to this instance and waits until AWS says `attached`;
    /// returns the attach name.
    pub(super) fn attach(
        &self,
        name: &str,
        v: &VolumeFacts,
        d: &Deadline,
    ) -> Result<String, EbsError> {
        if v.zone != self.scope.zone {
            return Err(EbsError::WrongZone {
                volume: name.to_owned(),
                volume_id: v.id.clone(),
                volume_zone: v.zone.clone(),
                zone: self.scope.zone.clone(),
            });
        }
        let me = self.scope.instance_id.as_str();
        let mut sent = false;
        let mut idle_looks = 0;
        let done = d.poll(|| {
            let f = self.aws(name, Some(&v.id), "DescribeVolumes", d, None, || {
                self.ec2.describe_volume(&v.id)
            })?;
            if let Some(a) = f.attachment_to(me) {
                return Ok(match a.state.as_str() {
                    "attached" => {
                        lock(&self.devices).insert(v.id.clone(), a.device.clone());
                        Some(a.device.clone())
                    }
                    // attaching: wait; detaching (an earlier Unmount): wait
                    // until it is gone, then attach again.
                    _ => None,
                });
            }
            if let Some(a) = f.attachment_elsewhere(me) {
                return Err(EbsError::AttachedElsewhere {
                    volume: name.to_owned(),
                    volume_id: v.id.clone(),
                    instance: a.instance_id.clone(),
                });
            }
            match f.state.as_str() {
                "available" => {
                    if !sent || idle_looks >= REATTACH_AFTER_LOOKS {
                        self.send_attach(name, &v.id, d)?;
                        sent = true;
                        idle_looks = 0;
                    } else {
                        idle_looks += 1;
                    }
                    Ok(None)
                }
                "creating" | "in-use" => Ok(None),
                other => Err(EbsError::BadState {
                    volume: name.to_owned(),
                    volume_id: v.id.clone(),
                    state: other.to_owned(),
                }),
            }
        })?;
        done.ok_or_else(|| EbsError::Timeout {
            volume: name.to_owned(),
            volume_id: v.id.clone(),
            what: "attach (attaching -> attached)",
            secs: d.secs(),
        })
    }

    /// Lets go of the device, detaches `id` from this instance and waits
    /// until AWS no longer lists the attachment. Not attached is success.
    pub(super) fn detach(&self, name: &str, id: &str, d: &Deadline) -> Result<(), EbsError> {
        self.resolver
            .release(id)
            .map_err(|source| EbsError::Device {
                volume: name.to_owned(),
                volume_id: Some(id.to_owned()),
                source,
            })?;
        let me = self.scope.instance_id.as_str();
        let mut sent = false;
        let done = d.poll(|| {
            let f = match self.aws(name, Some(id), "DescribeVolumes", d, None, || {
                self.ec2.describe_volume(id)
            }) {
                Ok(f) => f,
                Err(e) if e.aws_code() == Some("InvalidVolume.NotFound") => return Ok(Some(())),
                Err(e) => return Err(e),
            };
            let Some(a) = f.attachment_to(me) else {
                return Ok(Some(()));
            };
            if !sent && a.state != "detaching" && a.state != "attaching" {
                match self.aws(name, Some(id), "DetachVolume", d, None, || {
                    self.ec2.detach_volume(id, me)
                }) {
                    // Detached between our look and our call.
                    Err(e) if e.aws_code() == Some("IncorrectState") => {}
                    Err(e) => return Err(e),
                    Ok(()) => tracing::info!(volume = name, volume_id = id, "DetachVolume sent"),
                }
                sent = true;
            }
            Ok(None)
        })?;
        match done {
            Some(()) => {
                lock(&self.devices).remove(id);
                Ok(())
            }
            None => Err(EbsError::Timeout {
                volume: name.to_owned(),
                volume_id: id.to_owned(),
                what: "detach (detaching -> detached)",
                secs: d.secs(),
            }),
        }
    }

    /// Applies a planned change: one ModifyVolume with every changed value.
    pub(super) fn modify(&self, name: &str, change: &SettingsChange) -> Result<(), EbsError> {
        let Some(m) = &change.modify else {
            return Ok(());
        };
        let d = self.deadline(super::ebs::CHANGE_BUDGET);
        let v = self.require(name, &d)?;
        let state = self.aws(name, Some(&v.id), "ModifyVolume", &d, None, || {
            self.ec2.modify_volume(&v.id, m)
        })?;
        tracing::info!(volume = name, volume_id = %v.id, changes = %change.notes.join(", "),
            modification = %state, "ModifyVolume accepted");
        Ok(())
    }

    /// Re-tags the volume with its new profile, so a record rebuilt from
    /// AWS (lost state dir, another zone) gets the profile it has now.
    pub fn retag_profile(&self, name: &str, profile: &str) -> Result<(), EbsError> {
        let d = self.deadline(super::ebs::CHANGE_BUDGET);
        let v = self.require(name, &d)?;
        let t = [(tags::PROFILE.to_owned(), profile.to_owned())]
            .into_iter()
            .collect();
        self.aws(name, Some(&v.id), "CreateTags", &d, None, || {
            self.ec2.create_tags(&v.id, &t)
        })
    }

    /// Volumes of this cluster and zone that this host owns or may claim.
    pub(super) fn discover_volumes(&self) -> Result<Vec<Discovered>, EbsError> {
        let d = self.deadline(super::ebs::CREATE_BUDGET);
        let filters = tags::in_scope(&self.scope);
        let all = self.aws("(rebuild)", None, "DescribeVolumes", &d, None, || {
            self.ec2.find_volumes(&filters)
        })?;
        let mut out = Vec::new();
        for v in &all {
            let f = match tags::classify(&self.scope, v) {
                Ok(f) => f,
                Err(why) => {
                    tracing::debug!(volume_id = %v.id, why, "not rebuilt");
                    continue;
                }
            };
            let Some(s) = tags::settings_of(v, false) else {
                tracing::warn!(volume_id = %v.id, r#type = %v.volume_type, "unknown volume type; not rebuilt");
                continue;
            };
            out.push(Discovered {
                name: f.name,
                profile: f.profile,
                docker_name: f.docker_name,
                created_at: f.created,
                settings: Settings::Ebs(s),
                storage_id: f.volume_id,
                unclaimed: f.unclaimed,
            });
        }
        Ok(out)
    }

    /// Takes a discovered volume: claims it if nobody owns it yet.
    pub(super) fn adopt_volume(&self, found: &Discovered) -> Result<(), EbsError> {
        let d = self.deadline(super::ebs::UNMOUNT_BUDGET);
        if found.unclaimed {
            let claim = [(tags::HOST.to_owned(), self.scope.instance_id.clone())]
                .into_iter()
                .collect();
            self.aws(
                &found.name,
                Some(&found.storage_id),
                "CreateTags",
                &d,
                None,
                || self.ec2.create_tags(&found.storage_id, &claim),
            )?;
            tracing::info!(volume = %found.name, volume_id = %found.storage_id, "claimed for this host");
        }
        self.remember(&found.name, &found.storage_id);
        Ok(())
    }

    fn set_state(
        &self,
        name: &str,
        id: &str,
        state: Option<TagState>,
        d: &Deadline,
    ) -> Result<(), EbsError> {
        match state {
            Some(s) => {
                let t = [(tags::STATE.to_owned(), s.value())].into_iter().collect();
                self.aws(name, Some(id), "CreateTags", d, None, || {
                    self.ec2.create_tags(id, &t)
                })
            }
            None => {
                let keys = [tags::STATE.to_owned()];
                self.aws(name, Some(id), "DeleteTags", d, None, || {
                    self.ec2.delete_tags(id, &keys)
                })
            }
        }
    }

    /// The volume of NAME with its current facts, for the migration commands.
    pub fn facts(&self, name: &str) -> Result<VolumeFacts, EbsError> {
        let d = self.deadline(super::ebs::UNMOUNT_BUDGET);
        self.require(name, &d)
    }

    /// The block device of NAME if attached here now (no waiting).
    pub fn current_device(&self, v: &VolumeFacts) -> Option<PathBuf> {
        let a = v.attachment_to(&self.scope.instance_id)?;
        (a.state == "attached")
            .then(|| self.resolver.current(&v.id, Some(&a.device)))
            .flatten()
    }

    /// Cutover: tags the volume `fenced:ZONE`, so no Mount uses it (any host),
    /// while the last snapshot is taken. The caller has checked that nothing
    /// mounts it.
    pub fn fence(&self, name: &str, zone: &str) -> Result<VolumeFacts, EbsError> {
        let d = self.deadline(super::ebs::UNMOUNT_BUDGET);
        let v = self.require(name, &d)?;
        match tags::state_of(&v) {
            None => {}
            Some(TagState::Fenced { zone: z }) if z == zone => return Ok(v),
            Some(s) => {
                return Err(EbsError::NotUsable {
                    volume: name.to_owned(),
                    volume_id: v.id,
                    reason: s.refusal(),
                });
            }
        }
        self.set_state(
            name,
            &v.id,
            Some(TagState::Fenced {
                zone: zone.to_owned(),
            }),
            &d,
        )?;
        tracing::info!(volume = name, volume_id = %v.id, zone, "fenced for a move");
        Ok(v)
    }

    /// An aborted move: the fence goes, the volume is usable here again.
    pub fn unfence(&self, name: &str) -> Result<(), EbsError> {
        let d = self.deadline(super::ebs::UNMOUNT_BUDGET);
        let v = self.require(name, &d)?;
        if let Some(TagState::Fenced { .. }) = tags::state_of(&v) {
            self.set_state(name, &v.id, None, &d)?;
            tracing::info!(volume = name, volume_id = %v.id, "fence lifted");
        }
        Ok(())
    }

    fn require_fenced(&self, name: &str, d: &Deadline) -> Result<VolumeFacts, EbsError> {
        let v = self.require(name, d)?;
        if !matches!(tags::state_of(&v), Some(TagState::Fenced { .. })) {
            return Err(EbsError::Refused {
                volume: name.to_owned(),
                message: "attaching for a transfer needs the volume fenced first".into(),
            });
        }
        Ok(v)
    }

    /// Attaches a fenced volume to read its device (the final snapshot);
    /// returns the block device.
    pub fn attach_for_transfer(&self, name: &str) -> Result<PathBuf, EbsError> {
        let d = self.deadline(super::ebs::MOUNT_BUDGET);
        let v = self.require_fenced(name, &d)?;
        let attach_name = self.attach(name, &v, &d)?;
        let dev = self
            .resolver
            .wait_device(&v, &attach_name, &d.within(super::ebs::DEVICE_BUDGET));
        match dev {
            Ok(p) => Ok(p),
            Err(source) => {
                let rb = self.deadline(super::ebs::ROLLBACK_BUDGET);
                if let Err(e) = self.detach(name, &v.id, &rb) {
                    tracing::error!(volume = name, error = %e, "detaching after a failed attach");
                }
                Err(EbsError::Device {
                    volume: name.to_owned(),
                    volume_id: Some(v.id),
                    source,
                })
            }
        }
    }

    /// Detaches after the transfer.
    pub fn detach_after_transfer(&self, name: &str) -> Result<(), EbsError> {
        let d = self.deadline(super::ebs::UNMOUNT_BUDGET);
        let v = self.require(name, &d)?;
        self.detach(name, &v.id, &d)
    }

    /// Creates the volume's copy in `zone` from `snapshot_id` with the
    /// volume's settings, tagged for a host of that zone to claim; waits
    /// until it is `available`. Returns the new volume.
    pub fn create_in_zone(
        &self,
        name: &str,
        profile: &str,
        docker_name: &str,
        s: &EbsSettings,
        snapshot_id: &str,
        zone: &str,
    ) -> Result<VolumeFacts, EbsError> {
        let d = self.deadline(COPY_BUDGET);
        let source = self.require(name, &d)?;
        let wait = d.within(SNAPSHOT_WAIT);
        let snap = wait.poll(|| {
            let f = self.aws(
                name,
                Some(&source.id),
                "DescribeSnapshots",
                &wait,
                Some(self.clock.now()),
                || self.ec2.describe_snapshot(snapshot_id),
            )?;
            match f.state.as_str() {
                "completed" => Ok(Some(f)),
                "pending" => Ok(None),
                other => Err(EbsError::SnapshotState {
                    volume: name.to_owned(),
                    volume_id: Some(source.id.clone()),
                    snapshot_id: snapshot_id.to_owned(),
                    state: other.to_owned(),
                }),
            }
        })?;
        if snap.is_none() {
            return Err(EbsError::SnapshotState {
                volume: name.to_owned(),
                volume_id: Some(source.id.clone()),
                snapshot_id: snapshot_id.to_owned(),
                state: format!("still pending after {} s", wait.secs()),
            });
        }
        let mut t = tags::for_new(
            &self.scope.cluster,
            None,
            name,
            profile,
            docker_name,
            now_secs(),
        );
        t.insert(tags::MIGRATED_FROM.into(), source.id.clone());
        let req = NewVolume {
            zone: zone.to_owned(),
            size_gib: s.size_gib,
            volume_type: s.volume_type.as_str().to_owned(),
            iops: s.iops,
            throughput: s.throughput,
            encrypted: s.encrypted,
            kms_key_id: s.kms_key_id.clone(),
            snapshot_id: Some(snapshot_id.to_owned()),
            tags: t,
            client_token: client_token(name),
        };
        let created = self.clock.now();
        let v = self.aws(name, None, "CreateVolume", &d, None, || {
            self.ec2.create_volume(&req)
        })?;
        tracing::info!(volume = name, from = %source.id, to = %v.id, zone, snapshot = snapshot_id, "copy created in another zone");
        self.wait_available(name, &v.id, created, &d)
    }

    /// After the copy exists: the source is marked moved for good (Mount
    /// refused, never rebuilt); Remove still deletes it.
    pub fn mark_moved(&self, name: &str, zone: &str, new_id: &str) -> Result<(), EbsError> {
        let d = self.deadline(super::ebs::UNMOUNT_BUDGET);
        let v = self.require(name, &d)?;
        self.set_state(
            name,
            &v.id,
            Some(TagState::Moved {
                zone: zone.to_owned(),
                volume_id: new_id.to_owned(),
            }),
            &d,
        )
    }
}
