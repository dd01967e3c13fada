//! EBS attach and detach: the state machines over AWS's attachment states.
//! Attach picks a free attach name, sends AttachVolume and waits for
//! `attached`; detach lets go of the device, sends DetachVolume and waits
//! until AWS no longer lists the attachment. Mount and Unmount
//! ([`super::backend`]) and the zone migration's transfer attach
//! ([`super::zone`]) use them.
//!
//! Each wait looks at the state AWS reports and acts on it, so a call
//! repeated after a crash or a timeout picks up where things are: attached to
//! us already is success, `detaching` is waited out before attaching again,
//! attached to another instance is refused (no force-detach: that instance
//! may be writing).

use super::backend::{DEVICE_NAMES, EbsBackend, lock};
use super::error::EbsError;
use super::wait::Deadline;
use crate::aws::VolumeFacts;

/// Looks at a volume that stays `available` after our AttachVolume before
/// sending it again: AWS shows `attaching` within a second, so three looks
/// (about two seconds) without it mean the request was lost.
const REATTACH_AFTER_LOOKS: u32 = 3;

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
}
