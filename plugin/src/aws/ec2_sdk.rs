//! `Ec2Api` over the AWS SDK's EC2 client.
//!
//! Blocking like the trait: this type owns a small tokio runtime and blocks on
//! it from the caller's thread (the plugin's blocking pool, or a CLI). Never
//! call it from inside another runtime's async context.

use super::ec2::{AttachmentFacts, Ec2Api, Filter, Modify, NewVolume, SnapshotFacts, VolumeFacts};
use aws_sdk_ec2::types::{self as t, ResourceType, Tag, TagSpecification, VolumeType};
use mover::aws::{ApiError, AwsConfigError, AwsOptions, from_sdk_error, load_sdk_config};
use mover::retry::ErrorKind;
use std::collections::BTreeMap;
use std::time::Duration;

/// Threads driving the SDK's I/O: calls are few and I/O-bound.
const RUNTIME_THREADS: usize = 1;
/// DescribeVolumes page size: large pages, few calls (AWS allows up to 500
/// with filters).
const PAGE: i32 = 500;
/// DescribeSnapshots page size (AWS allows 5 to 1000).
const SNAPSHOT_PAGE: i32 = 1000;
/// Per-call timeout for EC2: the control plane answers in well under a
/// second; 10 s bounds a hung call so the plugin's handler budgets hold
/// (see `backend::ebs` for the budgets).
pub(crate) const EC2_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The EC2 API through the AWS SDK.
#[derive(Debug)]
pub(crate) struct SdkEc2 {
    client: aws_sdk_ec2::Client,
    rt: tokio::runtime::Runtime,
    region: String,
}

impl SdkEc2 {
    /// Builds the client from the standard chain plus `opts` (a missing
    /// `call_timeout` becomes [`EC2_CALL_TIMEOUT`]).
    pub(crate) fn connect(opts: &AwsOptions) -> Result<Self, AwsConfigError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("daffe-ec2")
            .enable_all()
            .build()
            .map_err(AwsConfigError::Runtime)?;
        let mut opts = opts.clone();
        opts.call_timeout = Some(opts.call_timeout.unwrap_or(EC2_CALL_TIMEOUT));
        let config = rt.block_on(load_sdk_config(&opts))?;
        let region = config
            .region()
            .map(|r| r.as_ref().to_owned())
            .unwrap_or_default();
        Ok(Self {
            client: aws_sdk_ec2::Client::new(&config),
            rt,
            region,
        })
    }

    /// The region the client talks to.
    pub(crate) fn region(&self) -> &str {
        &self.region
    }
}

fn missing(op: &'static str, what: &str) -> ApiError {
    ApiError::new(
        op,
        ErrorKind::Permanent,
        "InvalidResponse",
        format!("the reply has no {what}"),
    )
}

fn too_big(op: &'static str, what: &str, v: u64) -> ApiError {
    ApiError::new(
        op,
        ErrorKind::Permanent,
        "InvalidParameterValue",
        format!("{what} {v} does not fit the API"),
    )
}

fn i32_of(op: &'static str, what: &str, v: u64) -> Result<i32, ApiError> {
    i32::try_from(v).map_err(|_| too_big(op, what, v))
}

fn u32_of(v: Option<i32>) -> Option<u32> {
    v.and_then(|x| u32::try_from(x).ok())
}

fn tags_of(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or("").to_owned())))
        .collect()
}

fn attachments_of(a: &[t::VolumeAttachment]) -> Vec<AttachmentFacts> {
    a.iter()
        .map(|a| AttachmentFacts {
            instance_id: a.instance_id().unwrap_or_default().to_owned(),
            device: a.device().unwrap_or_default().to_owned(),
            state: a.state().map_or("", |s| s.as_str()).to_owned(),
        })
        .collect()
}

fn facts_of(op: &'static str, v: &t::Volume) -> Result<VolumeFacts, ApiError> {
    Ok(VolumeFacts {
        id: v
            .volume_id()
            .ok_or_else(|| missing(op, "VolumeId"))?
            .to_owned(),
        zone: v.availability_zone().unwrap_or_default().to_owned(),
        size_gib: v.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
        volume_type: v.volume_type().map_or("", |t| t.as_str()).to_owned(),
        iops: u32_of(v.iops()),
        throughput: u32_of(v.throughput()),
        encrypted: v.encrypted().unwrap_or(false),
        kms_key_id: v.kms_key_id().map(str::to_owned),
        state: v.state().map_or("", |s| s.as_str()).to_owned(),
        snapshot_id: v.snapshot_id().filter(|s| !s.is_empty()).map(str::to_owned),
        attachments: attachments_of(v.attachments()),
        tags: tags_of(v.tags()),
    })
}

fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build()
}

impl Ec2Api for SdkEc2 {
    fn create_volume(&self, req: &NewVolume) -> Result<VolumeFacts, ApiError> {
        const OP: &str = "CreateVolume";
        let mut spec = TagSpecification::builder().resource_type(ResourceType::Volume);
        for (k, v) in &req.tags {
            spec = spec.tags(tag(k, v));
        }
        let mut call = self
            .client
            .create_volume()
            .availability_zone(&req.zone)
            .size(i32_of(OP, "Size", req.size_gib)?)
            .volume_type(VolumeType::from(req.volume_type.as_str()))
            .set_iops(req.iops.map(|v| i32_of(OP, "Iops", v.into())).transpose()?)
            .set_throughput(
                req.throughput
                    .map(|v| i32_of(OP, "Throughput", v.into()))
                    .transpose()?,
            )
            .set_kms_key_id(req.kms_key_id.clone())
            .set_snapshot_id(req.snapshot_id.clone())
            .client_token(&req.client_token)
            .tag_specifications(spec.build());
        // Encrypted is sent only when wanted: false next to an encrypted
        // snapshot would be a contradiction AWS refuses.
        if req.encrypted {
            call = call.encrypted(true);
        }
        let out = self
            .rt
            .block_on(call.send())
            .map_err(|e| from_sdk_error(OP, e))?;
        Ok(VolumeFacts {
            id: out
                .volume_id()
                .ok_or_else(|| missing(OP, "VolumeId"))?
                .to_owned(),
            zone: out.availability_zone().unwrap_or(&req.zone).to_owned(),
            size_gib: out
                .size()
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(req.size_gib),
            volume_type: out
                .volume_type()
                .map_or(req.volume_type.as_str(), |t| t.as_str())
                .to_owned(),
            iops: u32_of(out.iops()),
            throughput: u32_of(out.throughput()),
            encrypted: out.encrypted().unwrap_or(req.encrypted),
            kms_key_id: out.kms_key_id().map(str::to_owned),
            state: out.state().map_or("creating", |s| s.as_str()).to_owned(),
            snapshot_id: out
                .snapshot_id()
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            attachments: attachments_of(out.attachments()),
            tags: tags_of(out.tags()),
        })
    }

    fn describe_volume(&self, volume_id: &str) -> Result<VolumeFacts, ApiError> {
        const OP: &str = "DescribeVolumes";
        let out = self
            .rt
            .block_on(self.client.describe_volumes().volume_ids(volume_id).send())
            .map_err(|e| from_sdk_error(OP, e))?;
        let v = out.volumes().first().ok_or_else(|| {
            ApiError::new(
                OP,
                ErrorKind::NotFound,
                "InvalidVolume.NotFound",
                format!("the volume '{volume_id}' does not exist"),
            )
        })?;
        facts_of(OP, v)
    }

    fn find_volumes(&self, filters: &[Filter]) -> Result<Vec<VolumeFacts>, ApiError> {
        const OP: &str = "DescribeVolumes";
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut call = self
                .client
                .describe_volumes()
                .max_results(PAGE)
                .set_next_token(token.take());
            for (name, values) in filters {
                call = call.filters(
                    t::Filter::builder()
                        .name(name)
                        .set_values(Some(values.clone()))
                        .build(),
                );
            }
            let page = self
                .rt
                .block_on(call.send())
                .map_err(|e| from_sdk_error(OP, e))?;
            for v in page.volumes() {
                out.push(facts_of(OP, v)?);
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    fn attach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        device: &str,
    ) -> Result<String, ApiError> {
        const OP: &str = "AttachVolume";
        let out = self
            .rt
            .block_on(
                self.client
                    .attach_volume()
                    .volume_id(volume_id)
                    .instance_id(instance_id)
                    .device(device)
                    .send(),
            )
            .map_err(|e| from_sdk_error(OP, e))?;
        Ok(out.state().map_or("attaching", |s| s.as_str()).to_owned())
    }

    fn detach_volume(&self, volume_id: &str, instance_id: &str) -> Result<(), ApiError> {
        const OP: &str = "DetachVolume";
        self.rt
            .block_on(
                self.client
                    .detach_volume()
                    .volume_id(volume_id)
                    .instance_id(instance_id)
                    .send(),
            )
            .map_err(|e| from_sdk_error(OP, e))?;
        Ok(())
    }

    fn delete_volume(&self, volume_id: &str) -> Result<(), ApiError> {
        const OP: &str = "DeleteVolume";
        self.rt
            .block_on(self.client.delete_volume().volume_id(volume_id).send())
            .map_err(|e| from_sdk_error(OP, e))?;
        Ok(())
    }

    fn modify_volume(&self, volume_id: &str, change: &Modify) -> Result<String, ApiError> {
        const OP: &str = "ModifyVolume";
        let call = self
            .client
            .modify_volume()
            .volume_id(volume_id)
            .set_volume_type(change.volume_type.as_deref().map(VolumeType::from))
            .set_iops(
                change
                    .iops
                    .map(|v| i32_of(OP, "Iops", v.into()))
                    .transpose()?,
            )
            .set_throughput(
                change
                    .throughput
                    .map(|v| i32_of(OP, "Throughput", v.into()))
                    .transpose()?,
            );
        let out = self
            .rt
            .block_on(call.send())
            .map_err(|e| from_sdk_error(OP, e))?;
        Ok(out
            .volume_modification()
            .and_then(|m| m.modification_state())
            .map_or("modifying", |s| s.as_str())
            .to_owned())
    }

    fn create_tags(
        &self,
        resource_id: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), ApiError> {
        const OP: &str = "CreateTags";
        let mut call = self.client.create_tags().resources(resource_id);
        for (k, v) in tags {
            call = call.tags(tag(k, v));
        }
        self.rt
            .block_on(call.send())
            .map_err(|e| from_sdk_error(OP, e))?;
        Ok(())
    }

    fn delete_tags(&self, resource_id: &str, keys: &[String]) -> Result<(), ApiError> {
        const OP: &str = "DeleteTags";
        let mut call = self.client.delete_tags().resources(resource_id);
        for k in keys {
            call = call.tags(Tag::builder().key(k).build());
        }
        self.rt
            .block_on(call.send())
            .map_err(|e| from_sdk_error(OP, e))?;
        Ok(())
    }

    fn describe_snapshot(&self, snapshot_id: &str) -> Result<SnapshotFacts, ApiError> {
        const OP: &str = "DescribeSnapshots";
        let out = self
            .rt
            .block_on(
                self.client
                    .describe_snapshots()
                    .snapshot_ids(snapshot_id)
                    .send(),
            )
            .map_err(|e| from_sdk_error(OP, e))?;
        let s = out.snapshots().first().ok_or_else(|| {
            ApiError::new(
                OP,
                ErrorKind::NotFound,
                "InvalidSnapshot.NotFound",
                format!("the snapshot '{snapshot_id}' does not exist"),
            )
        })?;
        Ok(snapshot_of(s, snapshot_id))
    }

    fn find_snapshots(&self, filters: &[Filter]) -> Result<Vec<SnapshotFacts>, ApiError> {
        const OP: &str = "DescribeSnapshots";
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            // Own snapshots only: without OwnerIds, DescribeSnapshots also
            // lists every public snapshot AWS has.
            let mut call = self
                .client
                .describe_snapshots()
                .owner_ids("self")
                .max_results(SNAPSHOT_PAGE)
                .set_next_token(token.take());
            for (name, values) in filters {
                call = call.filters(
                    t::Filter::builder()
                        .name(name)
                        .set_values(Some(values.clone()))
                        .build(),
                );
            }
            let page = self
                .rt
                .block_on(call.send())
                .map_err(|e| from_sdk_error(OP, e))?;
            out.extend(page.snapshots().iter().map(|s| snapshot_of(s, "")));
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), ApiError> {
        const OP: &str = "DeleteSnapshot";
        self.rt
            .block_on(
                self.client
                    .delete_snapshot()
                    .snapshot_id(snapshot_id)
                    .send(),
            )
            .map_err(|e| from_sdk_error(OP, e))?;
        Ok(())
    }
}

/// A DescribeSnapshots entry; `id` stands in if the reply has none.
fn snapshot_of(s: &t::Snapshot, id: &str) -> SnapshotFacts {
    SnapshotFacts {
        id: s.snapshot_id().unwrap_or(id).to_owned(),
        state: s.state().map_or("", |s| s.as_str()).to_owned(),
        volume_size_gib: s
            .volume_size()
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0),
        encrypted: s.encrypted().unwrap_or(false),
        tags: tags_of(s.tags()),
        start_time: s.start_time().map_or(0, |t| t.secs()),
    }
}
