//! An in-memory EC2 that keeps AWS's rules, for unit tests of the EBS
//! backend: where moto is lenient (moto 5 ignores ClientToken,
//! attaches across zones, attaches an attached volume again, has no IOPS
//! limits) this double refuses as AWS does, so our code is tested against the
//! real rules.
//!
//! Transitions take time as in AWS: a new volume is `creating`, an attachment
//! `attaching`, a detachment `detaching`, a modification `modifying`, for
//! `settle` describes of that volume (configurable; `u32::MAX` never
//! settles, for timeout tests). New volumes can also stay invisible to
//! DescribeVolumes for a few calls (eventual consistency). Failures can be
//! queued per operation; every call is logged.

use super::ec2::{
    AttachmentFacts, Ec2Api, Filter, Modify, NewVolume, SnapshotFacts, VolumeFacts,
    parse_volume_type,
};
use mover::aws::ApiError;
use mover::retry::ErrorKind;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

/// Zones a fresh double knows.
pub(crate) const ZONES: &[&str] = &["us-east-1a", "us-east-1b", "us-east-1c"];

#[derive(Debug, Clone)]
struct Vol {
    facts: VolumeFacts,
    /// Describes left before the current transition completes.
    pending: u32,
    /// Describes left before the volume is visible at all.
    invisible: u32,
    /// Describes left before a modification is `completed`.
    modifying: u32,
    client_token: String,
    request: NewVolume,
}

#[derive(Debug, Default)]
struct State {
    zones: Vec<String>,
    instances: HashMap<String, String>,
    volumes: BTreeMap<String, Vol>,
    snapshots: BTreeMap<String, SnapshotFacts>,
    next_id: u64,
    settle: u32,
    invisible: u32,
    faults: HashMap<&'static str, VecDeque<ApiError>>,
    calls: Vec<String>,
    /// Deleted volumes, kept for their client tokens: EC2 answers a
    /// CreateVolume repeated with the token of a deleted volume with that
    /// volume (`deleted`), and makes no new one.
    deleted: Vec<Vol>,
}

/// The double.
#[derive(Debug)]
pub(crate) struct MemoryEc2 {
    state: Mutex<State>,
}

impl Default for MemoryEc2 {
    fn default() -> Self {
        Self::new()
    }
}

fn err(op: &'static str, kind: ErrorKind, code: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(op, kind, code, message)
}

fn bad(op: &'static str, code: &str, message: impl Into<String>) -> ApiError {
    err(op, ErrorKind::Permanent, code, message)
}

fn not_found(op: &'static str, id: &str) -> ApiError {
    err(
        op,
        ErrorKind::NotFound,
        "InvalidVolume.NotFound",
        format!("The volume '{id}' does not exist."),
    )
}

/// AWS's rules for type, size, IOPS and throughput, from the same limits
/// table the profiles use.
fn check_performance(
    op: &'static str,
    ty: &str,
    size: u64,
    iops: Option<u32>,
    throughput: Option<u32>,
) -> Result<(), ApiError> {
    let t = parse_volume_type(ty).ok_or_else(|| {
        bad(
            op,
            "InvalidParameterValue",
            format!("Value ({ty}) for parameter volumeType is invalid."),
        )
    })?;
    let lim = t.limits();
    if size < lim.min_gib || size > lim.max_gib {
        return Err(bad(
            op,
            "InvalidParameterValue",
            format!(
                "Volume of {size}GiB is outside {}-{} GiB for {ty}",
                lim.min_gib, lim.max_gib
            ),
        ));
    }
    match (lim.iops, iops) {
        (None, Some(_)) => {
            return Err(bad(
                op,
                "InvalidParameterCombination",
                format!("The parameter iops is not supported for {ty} volumes."),
            ));
        }
        (Some(l), None) if l.required => {
            return Err(bad(
                op,
                "MissingParameter",
                format!("The request must contain the parameter iops for {ty} volumes."),
            ));
        }
        (Some(l), Some(i)) if i < l.min || i > l.max_at(size) => {
            return Err(bad(
                op,
                "InvalidParameterValue",
                format!(
                    "Iops {i} is outside {}-{} for a {size} GiB {ty} volume",
                    l.min,
                    l.max_at(size)
                ),
            ));
        }
        _ => {}
    }
    match (lim.throughput, throughput) {
        (None, Some(_)) => Err(bad(
            op,
            "InvalidParameterCombination",
            format!("The parameter throughput is not supported for {ty} volumes."),
        )),
        (Some(l), Some(tp)) => {
            let iops = iops.or(lim.iops.and_then(|l| l.baseline)).unwrap_or(0);
            let max = l.max.min((iops * l.max_per_kiops / 1000).max(l.baseline));
            if tp < l.min || tp > max {
                Err(bad(
                    op,
                    "InvalidParameterValue",
                    format!("Throughput {tp} is outside {}-{max} MiB/s", l.min),
                ))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// What AWS reports for values not given: gp3's baseline.
fn defaults(ty: &str, iops: Option<u32>, throughput: Option<u32>) -> (Option<u32>, Option<u32>) {
    if ty == "gp3" {
        (iops.or(Some(3_000)), throughput.or(Some(125)))
    } else {
        (iops, throughput)
    }
}

impl State {
    /// The volume `id`; `InvalidVolume.NotFound` for `op` if unknown.
    fn volume(&mut self, op: &'static str, id: &str) -> Result<&mut Vol, ApiError> {
        self.volumes.get_mut(id).ok_or_else(|| not_found(op, id))
    }
}

impl MemoryEc2 {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(State {
                zones: ZONES.iter().map(|z| (*z).to_owned()).collect(),
                settle: 1,
                ..State::default()
            }),
        }
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An instance (RunInstances' part we need).
    pub(crate) fn add_instance(&self, id: &str, zone: &str) {
        self.st().instances.insert(id.to_owned(), zone.to_owned());
    }

    /// A snapshot as if made with the EBS direct APIs.
    pub(crate) fn add_snapshot(&self, id: &str, size_gib: u64, encrypted: bool, state: &str) {
        self.add_tagged_snapshot(id, state, &[]);
        if let Some(s) = self.st().snapshots.get_mut(id) {
            s.volume_size_gib = size_gib;
            s.encrypted = encrypted;
        }
    }

    /// A 1 GiB snapshot with tags; each one starts a second after the one
    /// before (StartTime orders them).
    pub(crate) fn add_tagged_snapshot(&self, id: &str, state: &str, tags: &[(&str, &str)]) {
        let mut st = self.st();
        st.next_id += 1;
        let start_time = 1_700_000_000 + i64::try_from(st.next_id).unwrap_or(i64::MAX / 2);
        st.snapshots.insert(
            id.to_owned(),
            SnapshotFacts {
                id: id.to_owned(),
                state: state.to_owned(),
                volume_size_gib: 1,
                encrypted: false,
                tags: tags
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                start_time,
            },
        );
    }

    /// Every snapshot id.
    pub(crate) fn snapshot_ids(&self) -> Vec<String> {
        self.st().snapshots.keys().cloned().collect()
    }

    pub(crate) fn set_snapshot_state(&self, id: &str, state: &str) {
        if let Some(s) = self.st().snapshots.get_mut(id) {
            s.state = state.to_owned();
        }
    }

    /// Describes a transition lasts (`u32::MAX`: forever).
    pub(crate) fn set_settle(&self, describes: u32) {
        self.st().settle = describes;
    }

    /// Describes a new volume stays invisible for.
    pub(crate) fn set_invisible(&self, describes: u32) {
        self.st().invisible = describes;
    }

    /// The next call of `op` fails with `error` (queued, one per call).
    pub(crate) fn fail_next(&self, op: &'static str, error: ApiError) {
        self.st().faults.entry(op).or_default().push_back(error);
    }

    /// Every call so far, as `Op volume-or-resource`; then forgets them.
    pub(crate) fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut self.st().calls)
    }

    /// A volume as it is now, without the effects of a describe.
    pub(crate) fn peek(&self, id: &str) -> Option<VolumeFacts> {
        self.st().volumes.get(id).map(|v| v.facts.clone())
    }

    /// Every volume id.
    pub(crate) fn volume_ids(&self) -> Vec<String> {
        self.st().volumes.keys().cloned().collect()
    }

    fn enter(&self, op: &'static str, what: &str) -> Result<MutexGuard<'_, State>, ApiError> {
        let mut st = self.st();
        st.calls.push(format!("{op} {what}"));
        if let Some(e) = st.faults.get_mut(op).and_then(VecDeque::pop_front) {
            return Err(e);
        }
        Ok(st)
    }
}

/// One describe's worth of time for `v`.
fn tick(v: &mut Vol) {
    v.modifying = v.modifying.saturating_sub(1);
    if v.pending == u32::MAX || v.pending == 0 {
        return;
    }
    v.pending -= 1;
    if v.pending > 0 {
        return;
    }
    if v.facts.state == "creating" {
        v.facts.state = "available".into();
    }
    v.facts.attachments.retain(|a| a.state != "detaching");
    for a in &mut v.facts.attachments {
        if a.state == "attaching" {
            a.state = "attached".into();
        }
    }
    if v.facts.attachments.is_empty() && v.facts.state == "in-use" {
        v.facts.state = "available".into();
    }
}

fn matches(v: &VolumeFacts, (name, values): &Filter) -> bool {
    let any = |x: &str| values.iter().any(|v| v == x);
    match name.as_str() {
        "availability-zone" => any(&v.zone),
        "volume-id" => any(&v.id),
        "status" => any(&v.state),
        "attachment.instance-id" => v.attachments.iter().any(|a| any(&a.instance_id)),
        "tag-key" => v.tags.keys().any(|k| any(k)),
        n => match n.strip_prefix("tag:") {
            Some(key) => v.tags.get(key).is_some_and(|x| any(x)),
            // AWS refuses unknown filter names; a test using one is wrong.
            None => false,
        },
    }
}

fn snapshot_matches(s: &SnapshotFacts, (name, values): &Filter) -> bool {
    let any = |x: &str| values.iter().any(|v| v == x);
    match name.as_str() {
        "snapshot-id" => any(&s.id),
        "status" => any(&s.state),
        "tag-key" => s.tags.keys().any(|k| any(k)),
        n => match n.strip_prefix("tag:") {
            Some(key) => s.tags.get(key).is_some_and(|x| any(x)),
            None => false,
        },
    }
}

fn snapshot_not_found(op: &'static str, id: &str) -> ApiError {
    err(
        op,
        ErrorKind::NotFound,
        "InvalidSnapshot.NotFound",
        format!("The snapshot '{id}' does not exist."),
    )
}

impl Ec2Api for MemoryEc2 {
    fn create_volume(&self, req: &NewVolume) -> Result<VolumeFacts, ApiError> {
        const OP: &str = "CreateVolume";
        let mut st = self.enter(OP, &req.zone)?;
        if let Some(v) = st
            .volumes
            .values()
            .chain(&st.deleted)
            .find(|v| !req.client_token.is_empty() && v.client_token == req.client_token)
        {
            if v.request != *req {
                return Err(bad(
                    OP,
                    "IdempotentParameterMismatch",
                    "The client token has been used with different parameters.",
                ));
            }
            return Ok(v.facts.clone());
        }
        if !st.zones.contains(&req.zone) {
            return Err(bad(
                OP,
                "InvalidParameterValue",
                format!("Invalid availability zone: [{}]", req.zone),
            ));
        }
        if req.kms_key_id.is_some() && !req.encrypted {
            return Err(bad(
                OP,
                "InvalidParameterDependency",
                "The parameter KmsKeyId requires the parameter Encrypted to be set.",
            ));
        }
        let mut encrypted = req.encrypted;
        if let Some(sid) = &req.snapshot_id {
            let snap = st.snapshots.get(sid).ok_or_else(|| {
                err(
                    OP,
                    ErrorKind::NotFound,
                    "InvalidSnapshot.NotFound",
                    format!("The snapshot '{sid}' does not exist."),
                )
            })?;
            if snap.state != "completed" {
                return Err(bad(
                    OP,
                    "IncorrectState",
                    format!("Snapshot '{sid}' is {}", snap.state),
                ));
            }
            if req.size_gib < snap.volume_size_gib {
                return Err(bad(
                    OP,
                    "InvalidParameterValue",
                    format!(
                        "Volume of {}GiB is too small; minimum is {}GiB",
                        req.size_gib, snap.volume_size_gib
                    ),
                ));
            }
            // A volume from an encrypted snapshot is encrypted.
            encrypted |= snap.encrypted;
        }
        check_performance(OP, &req.volume_type, req.size_gib, req.iops, req.throughput)?;
        st.next_id += 1;
        let id = format!("vol-{:017x}", st.next_id);
        let (iops, throughput) = defaults(&req.volume_type, req.iops, req.throughput);
        let facts = VolumeFacts {
            id: id.clone(),
            zone: req.zone.clone(),
            size_gib: req.size_gib,
            volume_type: req.volume_type.clone(),
            iops,
            throughput,
            encrypted,
            kms_key_id: encrypted.then(|| {
                req.kms_key_id
                    .clone()
                    .unwrap_or_else(|| "alias/aws/ebs".into())
            }),
            state: "creating".into(),
            snapshot_id: req.snapshot_id.clone(),
            attachments: Vec::new(),
            tags: req.tags.clone(),
        };
        let (pending, invisible) = (st.settle, st.invisible);
        st.volumes.insert(
            id,
            Vol {
                facts: facts.clone(),
                pending,
                invisible,
                modifying: 0,
                client_token: req.client_token.clone(),
                request: req.clone(),
            },
        );
        Ok(facts)
    }

    fn describe_volume(&self, volume_id: &str) -> Result<VolumeFacts, ApiError> {
        const OP: &str = "DescribeVolumes";
        let mut st = self.enter(OP, volume_id)?;
        let v = st.volume(OP, volume_id)?;
        if v.invisible > 0 {
            v.invisible -= 1;
            return Err(not_found(OP, volume_id));
        }
        tick(v);
        Ok(v.facts.clone())
    }

    fn find_volumes(&self, filters: &[Filter]) -> Result<Vec<VolumeFacts>, ApiError> {
        const OP: &str = "DescribeVolumes";
        let what = filters
            .iter()
            .map(|(n, v)| format!("{n}={}", v.join("|")))
            .collect::<Vec<_>>()
            .join(",");
        let mut st = self.enter(OP, &what)?;
        let mut out = Vec::new();
        for v in st.volumes.values_mut() {
            if v.invisible > 0 {
                v.invisible -= 1;
                continue;
            }
            if filters.iter().all(|f| matches(&v.facts, f)) {
                tick(v);
                out.push(v.facts.clone());
            }
        }
        Ok(out)
    }

    fn attach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        device: &str,
    ) -> Result<String, ApiError> {
        const OP: &str = "AttachVolume";
        let mut st = self.enter(OP, volume_id)?;
        let zone = st.instances.get(instance_id).cloned().ok_or_else(|| {
            err(
                OP,
                ErrorKind::NotFound,
                "InvalidInstanceID.NotFound",
                format!("The instance ID '{instance_id}' does not exist"),
            )
        })?;
        let taken = st.volumes.values().any(|v| {
            v.facts
                .attachments
                .iter()
                .any(|a| a.instance_id == instance_id && a.device == device)
        });
        let settle = st.settle;
        let v = st.volume(OP, volume_id)?;
        if v.facts.zone != zone {
            return Err(bad(
                OP,
                "InvalidVolume.ZoneMismatch",
                format!(
                    "The volume '{volume_id}' is not in the same availability zone as instance '{instance_id}'"
                ),
            ));
        }
        if let Some(a) = v.facts.attachments.first() {
            return Err(bad(
                OP,
                "VolumeInUse",
                format!(
                    "{volume_id} is already attached to an instance ({})",
                    a.instance_id
                ),
            ));
        }
        if v.facts.state != "available" {
            return Err(bad(
                OP,
                "IncorrectState",
                format!("The volume '{volume_id}' is '{}'", v.facts.state),
            ));
        }
        if taken {
            return Err(bad(
                OP,
                "InvalidParameterValue",
                format!(
                    "Invalid value '{device}' for unixDevice. Attachment point {device} is already in use"
                ),
            ));
        }
        v.facts.state = "in-use".into();
        v.facts.attachments.push(AttachmentFacts {
            instance_id: instance_id.to_owned(),
            device: device.to_owned(),
            state: "attaching".into(),
        });
        v.pending = settle;
        tick_if_instant(v);
        Ok("attaching".into())
    }

    fn detach_volume(&self, volume_id: &str, instance_id: &str) -> Result<(), ApiError> {
        const OP: &str = "DetachVolume";
        let mut st = self.enter(OP, volume_id)?;
        let settle = st.settle;
        let v = st.volume(OP, volume_id)?;
        let Some(a) = v
            .facts
            .attachments
            .iter_mut()
            .find(|a| a.instance_id == instance_id && a.state != "detaching")
        else {
            return Err(bad(
                OP,
                "IncorrectState",
                format!("Volume '{volume_id}' is in the 'available' state."),
            ));
        };
        a.state = "detaching".into();
        v.pending = settle;
        tick_if_instant(v);
        Ok(())
    }

    fn delete_volume(&self, volume_id: &str) -> Result<(), ApiError> {
        const OP: &str = "DeleteVolume";
        let mut st = self.enter(OP, volume_id)?;
        let v = st.volume(OP, volume_id)?;
        if let Some(a) = v.facts.attachments.first() {
            return Err(bad(
                OP,
                "VolumeInUse",
                format!(
                    "Volume {volume_id} is currently attached to {}",
                    a.instance_id
                ),
            ));
        }
        if let Some(mut v) = st.volumes.remove(volume_id) {
            v.facts.state = "deleted".into();
            st.deleted.push(v);
        }
        Ok(())
    }

    fn modify_volume(&self, volume_id: &str, change: &Modify) -> Result<String, ApiError> {
        const OP: &str = "ModifyVolume";
        let mut st = self.enter(OP, volume_id)?;
        let settle = st.settle;
        let v = st.volume(OP, volume_id)?;
        if change.is_empty() {
            return Err(bad(
                OP,
                "MissingParameter",
                "At least one of size, type, iops or throughput must be given.",
            ));
        }
        if v.modifying > 0 {
            return Err(bad(
                OP,
                "IncorrectModificationState",
                format!("Volume {volume_id} is already being modified"),
            ));
        }
        let ty = change
            .volume_type
            .clone()
            .unwrap_or_else(|| v.facts.volume_type.clone());
        let type_changes = ty != v.facts.volume_type;
        // Values not given: kept within a type, the new type's default across.
        let iops = change.iops.or(if type_changes {
            None
        } else {
            v.facts.iops.filter(|_| ty != "gp3")
        });
        let throughput = change.throughput.or(if type_changes {
            None
        } else {
            v.facts.throughput.filter(|_| ty != "gp3")
        });
        let keep_gp3 = !type_changes && ty == "gp3";
        let (iops, throughput) = if keep_gp3 {
            (iops.or(v.facts.iops), throughput.or(v.facts.throughput))
        } else {
            (iops, throughput)
        };
        check_performance(OP, &ty, v.facts.size_gib, iops, throughput)?;
        let (iops, throughput) = defaults(&ty, iops, throughput);
        v.facts.volume_type = ty;
        v.facts.iops = iops;
        v.facts.throughput = throughput;
        v.modifying = settle;
        Ok("modifying".into())
    }

    fn create_tags(
        &self,
        resource_id: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), ApiError> {
        const OP: &str = "CreateTags";
        let mut st = self.enter(OP, resource_id)?;
        let v = st.volume(OP, resource_id)?;
        v.facts.tags.extend(tags.clone());
        Ok(())
    }

    fn delete_tags(&self, resource_id: &str, keys: &[String]) -> Result<(), ApiError> {
        const OP: &str = "DeleteTags";
        let mut st = self.enter(OP, resource_id)?;
        let v = st.volume(OP, resource_id)?;
        for k in keys {
            v.facts.tags.remove(k);
        }
        Ok(())
    }

    fn describe_snapshot(&self, snapshot_id: &str) -> Result<SnapshotFacts, ApiError> {
        const OP: &str = "DescribeSnapshots";
        let st = self.enter(OP, snapshot_id)?;
        st.snapshots
            .get(snapshot_id)
            .cloned()
            .ok_or_else(|| snapshot_not_found(OP, snapshot_id))
    }

    fn find_snapshots(&self, filters: &[Filter]) -> Result<Vec<SnapshotFacts>, ApiError> {
        const OP: &str = "DescribeSnapshots";
        let st = self.enter(OP, "filters")?;
        Ok(st
            .snapshots
            .values()
            .filter(|s| filters.iter().all(|f| snapshot_matches(s, f)))
            .cloned()
            .collect())
    }

    fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), ApiError> {
        const OP: &str = "DeleteSnapshot";
        let mut st = self.enter(OP, snapshot_id)?;
        let snap = st
            .snapshots
            .get(snapshot_id)
            .ok_or_else(|| snapshot_not_found(OP, snapshot_id))?;
        // A snapshot still being written (StartSnapshot without
        // CompleteSnapshot, or CreateSnapshot in progress) is refused.
        if snap.state == "pending" {
            return Err(bad(
                OP,
                "IncorrectState",
                format!("The snapshot '{snapshot_id}' is pending; it cannot be deleted yet."),
            ));
        }
        // Volumes created from it keep their data and their SnapshotId: EBS
        // made what they need theirs at creation.
        st.snapshots.remove(snapshot_id);
        Ok(())
    }
}

/// `settle == 0` means transitions are instant.
fn tick_if_instant(v: &mut Vol) {
    if v.pending == 0 {
        v.pending = 1;
        tick(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gp3(zone: &str, token: &str) -> NewVolume {
        NewVolume {
            zone: zone.into(),
            size_gib: 10,
            volume_type: "gp3".into(),
            client_token: token.into(),
            ..NewVolume::default()
        }
    }

    #[test]
    fn snapshots_are_found_by_tag_and_deleted_by_the_rules() {
        let ec2 = MemoryEc2::new();
        ec2.add_tagged_snapshot("snap-a", "completed", &[("daffe:migration", "m1")]);
        ec2.add_tagged_snapshot("snap-b", "pending", &[("daffe:migration", "m1")]);
        ec2.add_tagged_snapshot("snap-x", "completed", &[("owner", "someone")]);
        let found = ec2
            .find_snapshots(&[("tag:daffe:migration".into(), vec!["m1".into()])])
            .unwrap();
        let ids: Vec<_> = found.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["snap-a", "snap-b"]);
        assert!(found[0].start_time < found[1].start_time, "{found:?}");
        assert_eq!(found[0].tag("daffe:migration"), Some("m1"));
        let keyed = ec2
            .find_snapshots(&[("tag-key".into(), vec!["owner".into()])])
            .unwrap();
        assert_eq!(keyed.len(), 1);

        // A volume made from a snapshot outlives it, SnapshotId and all.
        let mut from = gp3("us-east-1a", "t1");
        from.snapshot_id = Some("snap-a".into());
        let v = ec2.create_volume(&from).unwrap();
        ec2.delete_snapshot("snap-a").unwrap();
        let v = ec2.describe_volume(&v.id).unwrap();
        assert_eq!(v.snapshot_id.as_deref(), Some("snap-a"));
        assert_eq!(v.state, "available");
        let e = ec2.delete_snapshot("snap-a").unwrap_err();
        assert_eq!(e.code, "InvalidSnapshot.NotFound");
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(
            ec2.describe_snapshot("snap-a").unwrap_err().code,
            "InvalidSnapshot.NotFound"
        );

        // Pending: refused, still there; completed: deletable.
        let e = ec2.delete_snapshot("snap-b").unwrap_err();
        assert_eq!(e.code, "IncorrectState");
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert!(ec2.snapshot_ids().contains(&"snap-b".to_owned()));
        ec2.set_snapshot_state("snap-b", "completed");
        ec2.delete_snapshot("snap-b").unwrap();
        assert_eq!(ec2.snapshot_ids(), ["snap-x"]);
    }

    #[test]
    fn a_deleted_volumes_token_gets_that_volume_back_and_no_new_one() {
        let ec2 = MemoryEc2::new();
        let v = ec2.create_volume(&gp3("us-east-1a", "t1")).unwrap();
        ec2.describe_volume(&v.id).unwrap();
        ec2.delete_volume(&v.id).unwrap();
        let again = ec2.create_volume(&gp3("us-east-1a", "t1")).unwrap();
        assert_eq!(
            (again.id.as_str(), again.state.as_str()),
            (v.id.as_str(), "deleted")
        );
        assert!(ec2.volume_ids().is_empty());
    }

    #[test]
    fn keeps_the_rules_moto_does_not() {
        let ec2 = MemoryEc2::new();
        ec2.add_instance("i-a", "us-east-1a");
        // ClientToken: the same volume again, or a mismatch.
        let v = ec2.create_volume(&gp3("us-east-1b", "t1")).unwrap();
        assert_eq!(
            ec2.create_volume(&gp3("us-east-1b", "t1")).unwrap().id,
            v.id
        );
        let mut other = gp3("us-east-1b", "t1");
        other.size_gib = 20;
        assert_eq!(
            ec2.create_volume(&other).unwrap_err().code,
            "IdempotentParameterMismatch"
        );
        // Zones: attach only within the volume's zone.
        ec2.describe_volume(&v.id).unwrap();
        assert_eq!(
            ec2.attach_volume(&v.id, "i-a", "/dev/sdf")
                .unwrap_err()
                .code,
            "InvalidVolume.ZoneMismatch"
        );
        // Attach twice, detach when detached, delete when attached.
        let w = ec2.create_volume(&gp3("us-east-1a", "t2")).unwrap();
        assert_eq!(
            ec2.attach_volume(&w.id, "i-a", "/dev/sdf")
                .unwrap_err()
                .code,
            "IncorrectState",
            "still creating"
        );
        assert_eq!(ec2.describe_volume(&w.id).unwrap().state, "available");
        ec2.attach_volume(&w.id, "i-a", "/dev/sdf").unwrap();
        assert_eq!(
            ec2.attach_volume(&w.id, "i-a", "/dev/sdg")
                .unwrap_err()
                .code,
            "VolumeInUse"
        );
        assert_eq!(ec2.delete_volume(&w.id).unwrap_err().code, "VolumeInUse");
        let d = ec2.describe_volume(&w.id).unwrap();
        assert_eq!(d.attachment_to("i-a").unwrap().state, "attached");
        ec2.detach_volume(&w.id, "i-a").unwrap();
        assert_eq!(ec2.describe_volume(&w.id).unwrap().state, "available");
        assert_eq!(
            ec2.detach_volume(&w.id, "i-a").unwrap_err().code,
            "IncorrectState"
        );
        ec2.delete_volume(&w.id).unwrap();
        assert_eq!(
            ec2.describe_volume(&w.id).unwrap_err().kind,
            ErrorKind::NotFound
        );
    }

    #[test]
    fn performance_limits_are_enforced() {
        let ec2 = MemoryEc2::new();
        let mut io2 = gp3("us-east-1a", "");
        io2.volume_type = "io2".into();
        assert_eq!(
            ec2.create_volume(&io2).unwrap_err().code,
            "MissingParameter"
        );
        io2.iops = Some(10_001); // io2 allows 1,000 per GiB: 10 GiB -> 10,000
        assert_eq!(
            ec2.create_volume(&io2).unwrap_err().code,
            "InvalidParameterValue"
        );
        io2.iops = Some(300);
        io2.encrypted = true;
        let v = ec2.create_volume(&io2).unwrap();
        assert_eq!((v.iops, v.throughput, v.encrypted), (Some(300), None, true));
        let mut gp2 = gp3("us-east-1a", "");
        gp2.volume_type = "gp2".into();
        gp2.throughput = Some(200);
        assert_eq!(
            ec2.create_volume(&gp2).unwrap_err().code,
            "InvalidParameterCombination"
        );
        let plain = ec2.create_volume(&gp3("us-east-1a", "")).unwrap();
        assert_eq!((plain.iops, plain.throughput), (Some(3_000), Some(125)));
    }

    #[test]
    fn modifications_take_time_and_exclude_each_other() {
        let ec2 = MemoryEc2::new();
        let v = ec2.create_volume(&gp3("us-east-1a", "")).unwrap();
        let to_io2 = Modify {
            volume_type: Some("io2".into()),
            iops: Some(500),
            throughput: None,
        };
        assert_eq!(ec2.modify_volume(&v.id, &to_io2).unwrap(), "modifying");
        assert_eq!(
            ec2.modify_volume(&v.id, &to_io2).unwrap_err().code,
            "IncorrectModificationState"
        );
        let d = ec2.describe_volume(&v.id).unwrap();
        assert_eq!(
            (d.volume_type.as_str(), d.iops, d.throughput),
            ("io2", Some(500), None)
        );
        // Back to gp3 without values: gp3's defaults.
        let back = Modify {
            volume_type: Some("gp3".into()),
            ..Modify::default()
        };
        ec2.modify_volume(&v.id, &back).unwrap();
        let d = ec2.peek(&v.id).unwrap();
        assert_eq!((d.iops, d.throughput), (Some(3_000), Some(125)));
    }

    #[test]
    fn new_volumes_can_be_invisible_for_a_while() {
        let ec2 = MemoryEc2::new();
        ec2.set_invisible(2);
        let v = ec2.create_volume(&gp3("us-east-1a", "")).unwrap();
        for _ in 0..2 {
            assert_eq!(
                ec2.describe_volume(&v.id).unwrap_err().code,
                "InvalidVolume.NotFound"
            );
        }
        assert!(ec2.describe_volume(&v.id).is_ok());
    }
}
