//! The EC2 calls of the EBS backend, as a trait: create (with tags, or from a
//! snapshot), describe, attach, detach, delete, modify, tag; describe a
//! snapshot (to wait for "completed"), find snapshots by tag and delete one
//! (a migration's snapshots, once the move is done).
//!
//! Calls are blocking (the backend runs on the blocking pool) and one call is
//! one attempt: errors are `ApiError`s whose kind the one retry layer
//! (`mover::retry`) acts on. Nothing below this trait retries.

use mover::aws::ApiError;
use std::collections::BTreeMap;

/// A DescribeVolumes filter: name (`tag:daffe:cluster`, `availability-zone`,
/// `attachment.instance-id`, ...) and the values any of which may match.
pub(crate) type Filter = (String, Vec<String>);

/// CreateVolume parameters (kept on disk until the volume is removed: the
/// EBS backend's `create_record`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct NewVolume {
    pub(crate) zone: String,
    pub(crate) size_gib: u64,
    pub(crate) volume_type: String,
    pub(crate) iops: Option<u32>,
    pub(crate) throughput: Option<u32>,
    pub(crate) encrypted: bool,
    pub(crate) kms_key_id: Option<String>,
    pub(crate) snapshot_id: Option<String>,
    /// Put on the volume at creation (TagSpecifications), so a volume never
    /// exists untagged.
    pub(crate) tags: BTreeMap<String, String>,
    /// Idempotency token: a retried CreateVolume returns the same volume.
    pub(crate) client_token: String,
}

/// ModifyVolume parameters; `None` leaves a value as AWS decides.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Modify {
    pub(crate) volume_type: Option<String>,
    pub(crate) iops: Option<u32>,
    pub(crate) throughput: Option<u32>,
}

impl Modify {
    pub(crate) fn is_empty(&self) -> bool {
        self.volume_type.is_none() && self.iops.is_none() && self.throughput.is_none()
    }
}

/// One attachment of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttachmentFacts {
    pub(crate) instance_id: String,
    /// The device name given to AttachVolume (`/dev/sdf`).
    pub(crate) device: String,
    /// attaching | attached | detaching | detached | busy
    pub(crate) state: String,
}

/// A volume as DescribeVolumes reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct VolumeFacts {
    pub(crate) id: String,
    pub(crate) zone: String,
    pub(crate) size_gib: u64,
    pub(crate) volume_type: String,
    pub(crate) iops: Option<u32>,
    pub(crate) throughput: Option<u32>,
    pub(crate) encrypted: bool,
    pub(crate) kms_key_id: Option<String>,
    /// creating | available | in-use | deleting | deleted | error
    pub(crate) state: String,
    pub(crate) snapshot_id: Option<String>,
    pub(crate) attachments: Vec<AttachmentFacts>,
    pub(crate) tags: BTreeMap<String, String>,
}

impl VolumeFacts {
    /// The attachment to `instance`, if any (detached ones do not count).
    pub(crate) fn attachment_to(&self, instance: &str) -> Option<&AttachmentFacts> {
        self.attachments
            .iter()
            .find(|a| a.instance_id == instance && a.state != "detached")
    }

    /// An attachment to another instance, if any.
    pub(crate) fn attachment_elsewhere(&self, instance: &str) -> Option<&AttachmentFacts> {
        self.attachments
            .iter()
            .find(|a| a.instance_id != instance && a.state != "detached")
    }

    pub(crate) fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }
}

/// A snapshot as DescribeSnapshots reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SnapshotFacts {
    pub(crate) id: String,
    /// pending | completed | error | recoverable | recovering
    pub(crate) state: String,
    pub(crate) volume_size_gib: u64,
    pub(crate) encrypted: bool,
    pub(crate) tags: BTreeMap<String, String>,
    /// StartTime, seconds since the epoch (0 if EC2 gave none): orders a
    /// volume's migration snapshots, newest kept.
    pub(crate) start_time: i64,
}

impl SnapshotFacts {
    pub(crate) fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }
}

/// The EC2 API, as the EBS backend uses it.
pub(crate) trait Ec2Api: Send + Sync {
    fn create_volume(&self, req: &NewVolume) -> Result<VolumeFacts, ApiError>;

    /// DescribeVolumes of one volume; `InvalidVolume.NotFound` if unknown.
    fn describe_volume(&self, volume_id: &str) -> Result<VolumeFacts, ApiError>;

    /// DescribeVolumes with filters (all pages).
    fn find_volumes(&self, filters: &[Filter]) -> Result<Vec<VolumeFacts>, ApiError>;

    /// AttachVolume; returns the attachment state AWS reports (`attaching`).
    fn attach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        device: &str,
    ) -> Result<String, ApiError>;

    fn detach_volume(&self, volume_id: &str, instance_id: &str) -> Result<(), ApiError>;

    fn delete_volume(&self, volume_id: &str) -> Result<(), ApiError>;

    /// ModifyVolume; returns the modification state (`modifying`, ...).
    fn modify_volume(&self, volume_id: &str, change: &Modify) -> Result<String, ApiError>;

    /// CreateTags (adds or overwrites).
    fn create_tags(
        &self,
        resource_id: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), ApiError>;

    /// DeleteTags by key.
    fn delete_tags(&self, resource_id: &str, keys: &[String]) -> Result<(), ApiError>;

    /// DescribeSnapshots of one snapshot.
    fn describe_snapshot(&self, snapshot_id: &str) -> Result<SnapshotFacts, ApiError>;

    /// DescribeSnapshots of this account's own snapshots (OwnerIds=self)
    /// with filters (`tag:KEY`, `tag-key`, `status`), all pages.
    fn find_snapshots(&self, filters: &[Filter]) -> Result<Vec<SnapshotFacts>, ApiError>;

    /// DeleteSnapshot: `InvalidSnapshot.NotFound` if unknown; refused while
    /// the snapshot is still `pending`. Volumes created from it keep their
    /// data (EBS copies what they need at creation).
    fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), ApiError>;
}

/// The profile type of an AWS `VolumeType` string.
pub(crate) fn parse_volume_type(s: &str) -> Option<profiles::EbsVolumeType> {
    use profiles::EbsVolumeType as T;
    [T::Gp3, T::Gp2, T::Io1, T::Io2, T::St1, T::Sc1, T::Standard]
        .into_iter()
        .find(|t| t.as_str() == s)
}
