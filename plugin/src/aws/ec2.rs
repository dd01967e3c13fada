//! The EC2 calls of the EBS backend, as a trait: create (with tags, or from a
//! snapshot), describe, attach, detach, delete, modify, tag, and describe a
//! snapshot (to wait for "completed").
//!
//! Calls are blocking (the backend runs on the blocking pool) and one call is
//! one attempt: errors are `ApiError`s whose kind the one retry layer
//! (`mover::retry`) acts on. Nothing below this trait retries.

use mover::aws::ApiError;
use std::collections::BTreeMap;

/// A DescribeVolumes filter: name (`tag:daffe:cluster`, `availability-zone`,
/// `attachment.instance-id`, ...) and the values any of which may match.
pub type Filter = (String, Vec<String>);

/// CreateVolume parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewVolume {
    pub zone: String,
    pub size_gib: u64,
    pub volume_type: String,
    pub iops: Option<u32>,
    pub throughput: Option<u32>,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    pub snapshot_id: Option<String>,
    /// Put on the volume at creation (TagSpecifications), so a volume never
    /// exists untagged.
    pub tags: BTreeMap<String, String>,
    /// Idempotency token: a retried CreateVolume returns the same volume.
    pub client_token: String,
}

/// ModifyVolume parameters; `None` leaves a value as AWS decides.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Modify {
    pub volume_type: Option<String>,
    pub iops: Option<u32>,
    pub throughput: Option<u32>,
}

impl Modify {
    pub fn is_empty(&self) -> bool {
        self.volume_type.is_none() && self.iops.is_none() && self.throughput.is_none()
    }
}

/// One attachment of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentFacts {
    pub instance_id: String,
    /// The device name given to AttachVolume (`/dev/sdf`).
    pub device: String,
    /// attaching | attached | detaching | detached | busy
    pub state: String,
}

/// A volume as DescribeVolumes reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VolumeFacts {
    pub id: String,
    pub zone: String,
    pub size_gib: u64,
    pub volume_type: String,
    pub iops: Option<u32>,
    pub throughput: Option<u32>,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    /// creating | available | in-use | deleting | deleted | error
    pub state: String,
    pub snapshot_id: Option<String>,
    pub attachments: Vec<AttachmentFacts>,
    pub tags: BTreeMap<String, String>,
}

impl VolumeFacts {
    /// The attachment to `instance`, if any (detached ones do not count).
    pub fn attachment_to(&self, instance: &str) -> Option<&AttachmentFacts> {
        self.attachments
            .iter()
            .find(|a| a.instance_id == instance && a.state != "detached")
    }

    /// An attachment to another instance, if any.
    pub fn attachment_elsewhere(&self, instance: &str) -> Option<&AttachmentFacts> {
        self.attachments
            .iter()
            .find(|a| a.instance_id != instance && a.state != "detached")
    }

    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }
}

/// A snapshot as DescribeSnapshots reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFacts {
    pub id: String,
    /// pending | completed | error | recoverable | recovering
    pub state: String,
    pub volume_size_gib: u64,
    pub encrypted: bool,
}

/// The EC2 API, as the EBS backend uses it.
pub trait Ec2Api: Send + Sync {
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
}

/// The profile type of an AWS `VolumeType` string.
pub fn parse_volume_type(s: &str) -> Option<profiles::EbsVolumeType> {
    use profiles::EbsVolumeType as T;
    [T::Gp3, T::Gp2, T::Io1, T::Io2, T::St1, T::Sc1, T::Standard]
        .into_iter()
        .find(|t| t.as_str() == s)
}
