//! The daemon's steps of `daffe migrate --via-ebs` (an EBS volume moved to
//! another availability zone through snapshots): the volume's facts, fence
//! and unfence (the `daffe:state` tag), attach for reading the device and
//! detach after, create the copy in the new zone from the final snapshot,
//! mark the source moved. The CLI sequences them (`crate::migrate::ebs`)
//! through the control socket; the service runs each under the volume's
//! lock (`crate::service::ebs`).

use super::backend::{
    COPY_BUDGET, DEVICE_BUDGET, EbsBackend, MOUNT_BUDGET, ROLLBACK_BUDGET, UNMOUNT_BUDGET,
    new_volume, now_secs,
};
use super::error::EbsError;
use super::tags::{self, TagState};
use super::wait::Deadline;
use crate::aws::VolumeFacts;
use profiles::EbsSettings;
use std::path::PathBuf;
use std::time::Duration;

/// Waiting for a snapshot to become `completed` before CreateVolume from it
/// (EBS direct-API snapshots are `completed` once CompleteSnapshot returns;
/// EC2 CreateSnapshot ones can take minutes, which the CLI's own retries
/// cover).
pub(crate) const SNAPSHOT_WAIT: Duration = Duration::from_secs(60);

impl EbsBackend {
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
    pub(crate) fn facts(&self, name: &str) -> Result<VolumeFacts, EbsError> {
        let d = self.deadline(UNMOUNT_BUDGET);
        self.require(name, &d)
    }

    /// The block device of NAME if attached here now (no waiting).
    pub(crate) fn current_device(&self, v: &VolumeFacts) -> Option<PathBuf> {
        let a = v.attachment_to(&self.scope.instance_id)?;
        (a.state == "attached")
            .then(|| self.resolver.current(&v.id, Some(&a.device)))
            .flatten()
    }

    /// Cutover: tags the volume `fenced:ZONE`, so no Mount uses it (any host),
    /// while the last snapshot is taken. The caller has checked that nothing
    /// mounts it.
    pub(crate) fn fence(&self, name: &str, zone: &str) -> Result<VolumeFacts, EbsError> {
        let d = self.deadline(UNMOUNT_BUDGET);
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
    pub(crate) fn unfence(&self, name: &str) -> Result<(), EbsError> {
        let d = self.deadline(UNMOUNT_BUDGET);
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
    pub(crate) fn attach_for_transfer(&self, name: &str) -> Result<PathBuf, EbsError> {
        let d = self.deadline(MOUNT_BUDGET);
        let v = self.require_fenced(name, &d)?;
        let attach_name = self.attach(name, &v, &d)?;
        let dev = self
            .resolver
            .wait_device(&v, &attach_name, &d.within(DEVICE_BUDGET));
        match dev {
            Ok(p) => Ok(p),
            Err(source) => {
                let rb = self.deadline(ROLLBACK_BUDGET);
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
    pub(crate) fn detach_after_transfer(&self, name: &str) -> Result<(), EbsError> {
        let d = self.deadline(UNMOUNT_BUDGET);
        let v = self.require(name, &d)?;
        self.detach(name, &v.id, &d)
    }

    /// Creates the volume's copy in `zone` from `snapshot_id` with the
    /// volume's settings, tagged for a host of that zone to claim; waits
    /// until it is `available`. Returns the new volume.
    pub(crate) fn create_in_zone(
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
        // Look up before create: a copy an earlier attempt made from this
        // snapshot is the copy; one from an older snapshot is stale and,
        // left in place, a host of that zone would adopt it (hardening
        // finding 11).
        let earlier = self.copies_of(name, &source.id, Some(zone), &d)?;
        if let Some(v) = earlier
            .iter()
            .find(|v| v.snapshot_id.as_deref() == Some(snapshot_id))
        {
            tracing::info!(volume = name, copy = %v.id, zone, "an earlier attempt's copy is there; reusing it");
            let v = self.wait_available(name, &v.id, self.clock.now(), &d)?;
            return self.filled(name, v);
        }
        for v in &earlier {
            self.delete_copy(name, &v.id, &d)?;
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
        let req = new_volume(name, s, zone, Some(snapshot_id), t);
        let created = self.clock.now();
        let v = self.aws(name, None, "CreateVolume", &d, None, || {
            self.ec2.create_volume(&req)
        })?;
        tracing::info!(volume = name, from = %source.id, to = %v.id, zone, snapshot = snapshot_id, "copy created in another zone");
        let v = self.wait_available(name, &v.id, created, &d)?;
        self.filled(name, v)
    }

    /// The copy holds the snapshot's data (a no-op on EBS; the loop
    /// stand-in copies it in), so the migration may delete its snapshots.
    fn filled(&self, name: &str, v: VolumeFacts) -> Result<VolumeFacts, EbsError> {
        match self.resolver.created(&v) {
            Ok(()) => Ok(v),
            Err(source) => Err(EbsError::Device {
                volume: name.to_owned(),
                volume_id: Some(v.id),
                source,
            }),
        }
    }

    /// The volumes made from NAME's snapshots by migrations (tagged
    /// `MIGRATED_FROM` its volume id), in `zone` or anywhere.
    fn copies_of(
        &self,
        name: &str,
        source_id: &str,
        zone: Option<&str>,
        d: &Deadline,
    ) -> Result<Vec<VolumeFacts>, EbsError> {
        let mut filters = vec![
            (
                format!("tag:{}", tags::CLUSTER),
                vec![self.scope.cluster.clone()],
            ),
            (
                format!("tag:{}", tags::MIGRATED_FROM),
                vec![source_id.to_owned()],
            ),
        ];
        if let Some(z) = zone {
            filters.push(("availability-zone".into(), vec![z.to_owned()]));
        }
        let found = self.aws(name, Some(source_id), "DescribeVolumes", d, None, || {
            self.ec2.find_volumes(&filters)
        })?;
        Ok(found
            .into_iter()
            .filter(|v| v.id != source_id && !matches!(v.state.as_str(), "deleting" | "deleted"))
            .collect())
    }

    fn delete_copy(&self, name: &str, id: &str, d: &Deadline) -> Result<(), EbsError> {
        match self.aws(name, Some(id), "DeleteVolume", d, None, || {
            self.ec2.delete_volume(id)
        }) {
            Err(e) if e.aws_code() == Some("InvalidVolume.NotFound") => Ok(()),
            r => {
                r?;
                tracing::info!(volume = name, copy = id, "a migration's copy deleted");
                Ok(())
            }
        }
    }

    /// A failed move: deletes every copy of NAME a migration made, before
    /// its fence is lifted, so a host of the other zone never adopts one
    /// while the source is live again (hardening finding 11). Refused once
    /// the source is marked moved (the copy is the volume then). A copy
    /// already attached somewhere fails to delete: the caller keeps the
    /// fence. Returns the deleted ids.
    pub(crate) fn discard_copies(&self, name: &str) -> Result<Vec<String>, EbsError> {
        let d = self.deadline(COPY_BUDGET);
        let v = self.require(name, &d)?;
        if let Some(TagState::Moved { volume_id, zone }) = tags::state_of(&v) {
            return Err(EbsError::Refused {
                volume: name.to_owned(),
                message: format!(
                    "the move finished: {volume_id} in {zone} is the volume now; nothing to discard"
                ),
            });
        }
        let copies = self.copies_of(name, &v.id, None, &d)?;
        for c in &copies {
            self.delete_copy(name, &c.id, &d)?;
        }
        Ok(copies.into_iter().map(|c| c.id).collect())
    }

    /// After the copy exists: the source is marked moved for good (Mount
    /// refused, never rebuilt); Remove still deletes it.
    pub(crate) fn mark_moved(&self, name: &str, zone: &str, new_id: &str) -> Result<(), EbsError> {
        let d = self.deadline(UNMOUNT_BUDGET);
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
