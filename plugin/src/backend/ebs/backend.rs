//! The EBS backend: a daffe volume is an EBS volume in this host's zone.
//!
//! - Create: CreateVolume with the profile's type, size, IOPS, throughput,
//!   encryption and KMS key, in this instance's zone, tagged ([`super::tags`]) so
//!   the volume can be found by NAME and records rebuilt from AWS; then wait
//!   until it is `available`.
//! - First Mount: AttachVolume to this instance, wait until `attached`, find
//!   the block device (`device`), make ext4 if the device holds no
//!   filesystem, mount at `DATA_ROOT/ebs/NAME/data`. Anything failing after
//!   the attach detaches again: docker sends no Unmount after a failed Mount.
//! - Last Unmount: unmount, release the device, DetachVolume, wait until
//!   detached.
//! - Remove: DeleteVolume, or with `keep_on_remove` tag it `released` and
//!   leave it.
//!
//! AWS is the source of truth: the backend keeps no state of its own beyond
//! caches (NAME -> volume id, attach names handed out), so a restart or a
//! repeated call finds the volume by its tags and carries on from the state
//! AWS reports. Every method is idempotent.
//!
//! Time: dockerd gives Create and Mount 120 s, the rest 60 s; the service
//! bounds our handlers to 100 s and 50 s. Each operation here has a budget
//! under those (below), checked by every wait and every AWS call, and every
//! EC2 call has a 10 s timeout (`aws::ec2_sdk`). Retries (throttling, 5xx,
//! not-yet-visible new volumes) go through the one retry layer.
//!
//! Attach and detach are in [`super::attach`]; rebuild in
//! [`super::rebuild`]; the zone migration's steps in [`super::zone`].

use super::super::change::SettingsChange;
use super::super::{Backend, BackendError, Discovered, Status, VolumeIoError, VolumeRef};
use super::config::{EbsConfig, ResolverKind};
use super::create_record;
use super::device::{DeviceResolver, NvmeResolver};
use super::error::EbsError;
use super::fs::{Filesystems, SystemFs};
use super::tags::{self, Scope, TagState};
use super::wait::Deadline;
use crate::aws::identity;
use crate::aws::{ApiError, Ec2Api, NewVolume, VolumeFacts, ec2_sdk::SdkEc2};
use mover::clock::{Clock, SystemClock};
use mover::retry::{ErrorKind, Exhausted, Retrier, RetryPolicy};
use profiles::{BackendKind, EbsSettings, Settings};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Create: CreateVolume, then `creating` -> `available` (seconds for an
/// empty volume). Under the service's 100 s limit with room for a retry.
pub(crate) const CREATE_BUDGET: Duration = Duration::from_secs(90);
/// Mount: attach (AWS: a few seconds, rarely 30), device, mkfs, mount.
/// Under the service's 100 s limit.
pub(crate) const MOUNT_BUDGET: Duration = Duration::from_secs(90);
/// Of the mount budget, waiting for the device after `attached`: udev
/// takes milliseconds; 30 s means it will not come.
pub(crate) const DEVICE_BUDGET: Duration = Duration::from_secs(30);
/// Unmount and Remove: umount, detach (AWS: seconds), delete. Under the
/// service's 50 s limit.
pub(crate) const UNMOUNT_BUDGET: Duration = Duration::from_secs(45);
/// Detaching again after a failed first Mount. Its own budget, since the
/// mount may have spent its own.
pub(crate) const ROLLBACK_BUDGET: Duration = Duration::from_secs(45);
/// A profile change (ModifyVolume), from the control API (50 s limit).
pub(crate) const CHANGE_BUDGET: Duration = Duration::from_secs(45);
/// Creating a volume from a snapshot in another zone and waiting until it
/// is `available`, under the control API's 100 s limit for EBS steps.
pub(crate) const COPY_BUDGET: Duration = Duration::from_secs(90);

/// Retries for EC2 calls: 6 attempts with backoff from 250 ms to 4 s make
/// at most ~10 s of waiting, which a 45-90 s budget absorbs; "not found" is
/// retried for 30 s after a CreateVolume (EC2's eventual consistency is
/// seconds, not the minutes EBS snapshots take).
pub(crate) const EC2_RETRY: RetryPolicy = RetryPolicy::AWS
    .with_max_attempts(6)
    .with_base_delay(Duration::from_millis(250))
    .with_max_delay(Duration::from_secs(4))
    .with_not_found_window(Duration::from_secs(30));

/// The `result` label of a failed AWS attempt.
fn aws_result(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Throttled => "throttled",
        ErrorKind::Transient => "transient",
        ErrorKind::NotFound => "not_found",
        ErrorKind::Permanent => "permanent",
    }
}

/// Attach names, in AWS's recommended range for Linux EBS volumes. On Nitro
/// the name only has to be unique per instance; 21 volumes per host is
/// within every instance type's attachment limit.
pub(crate) const DEVICE_NAMES: &[&str] = &[
    "/dev/sdf", "/dev/sdg", "/dev/sdh", "/dev/sdi", "/dev/sdj", "/dev/sdk", "/dev/sdl", "/dev/sdm",
    "/dev/sdn", "/dev/sdo", "/dev/sdp", "/dev/sdq", "/dev/sdr", "/dev/sds", "/dev/sdt", "/dev/sdu",
    "/dev/sdv", "/dev/sdw", "/dev/sdx", "/dev/sdy", "/dev/sdz",
];

/// Directory under the data root where EBS volumes are mounted.
pub(crate) const MOUNT_DIR: &str = "ebs";

/// What the migration commands need to know about the AWS side.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct AwsSide {
    pub(crate) region: Option<String>,
    pub(crate) endpoint_url: Option<String>,
    pub(crate) cluster: String,
    pub(crate) instance_id: String,
    pub(crate) zone: String,
    pub(crate) snapshot_state_dir: PathBuf,
    pub(crate) device_resolver: String,
}

/// The parts the backend is made of; tests put doubles in.
pub(crate) struct Parts {
    pub(crate) ec2: Arc<dyn Ec2Api>,
    pub(crate) resolver: Arc<dyn DeviceResolver>,
    pub(crate) fs: Arc<dyn Filesystems>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) scope: Scope,
    pub(crate) mount_root: PathBuf,
    pub(crate) side: AwsSide,
}

pub(crate) struct EbsBackend {
    pub(super) ec2: Arc<dyn Ec2Api>,
    pub(super) resolver: Arc<dyn DeviceResolver>,
    pub(super) fs: Arc<dyn Filesystems>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) scope: Scope,
    mount_root: PathBuf,
    side: AwsSide,
    /// NAME -> volume id, learnt from create and lookups.
    ids: Mutex<HashMap<String, String>>,
    /// volume id -> attach name handed out and not yet released, so two
    /// attaches in flight never pick the same name.
    pub(super) devices: Mutex<HashMap<String, String>>,
    /// Held while an attach name is picked and AttachVolume sent.
    pub(super) attach_lock: Mutex<()>,
}

impl std::fmt::Debug for EbsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbsBackend")
            .field("scope", &self.scope)
            .field("mount_root", &self.mount_root)
            .field("resolver", &self.resolver.name())
            .finish_non_exhaustive()
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn settings<'a>(vol: &VolumeRef<'a>) -> Result<&'a EbsSettings, BackendError> {
    match vol.settings {
        Settings::Ebs(s) => Ok(s),
        Settings::Local(_) => Err(BackendError::WrongBackend {
            volume: vol.name.to_owned(),
            got: BackendKind::Local,
            want: BackendKind::Ebs,
        }),
    }
}

/// CreateVolume's parameters for a volume of settings `s` in `zone` (from
/// `snapshot_id` if given), tagged at creation with `tags`.
pub(super) fn new_volume(
    name: &str,
    s: &EbsSettings,
    zone: &str,
    snapshot_id: Option<&str>,
    tags: BTreeMap<String, String>,
) -> NewVolume {
    NewVolume {
        zone: zone.to_owned(),
        size_gib: s.size_gib,
        volume_type: s.volume_type.as_str().to_owned(),
        iops: s.iops,
        throughput: s.throughput,
        encrypted: s.encrypted,
        kms_key_id: s.kms_key_id.clone(),
        snapshot_id: snapshot_id.map(str::to_owned),
        tags,
        client_token: client_token(name),
    }
}

/// The loop stand-in for EBS devices (`device_resolver = "loop"`), in a
/// daffe built for tests.
#[cfg(any(test, feature = "testing"))]
fn loop_resolver(
    cfg: &EbsConfig,
    data_root: &Path,
) -> Result<Arc<dyn DeviceResolver>, BackendError> {
    use super::loop_stand_in::{LoopResolver, snapshot_hydrator};
    Ok(Arc::new(LoopResolver::new(
        cfg.loop_dir(data_root),
        Some(snapshot_hydrator(cfg)?),
    )))
}

/// A production build has no loop stand-in: the config asks for a test
/// double, which is refused at start with the reason.
#[cfg(not(any(test, feature = "testing")))]
fn loop_resolver(
    _cfg: &EbsConfig,
    _data_root: &Path,
) -> Result<Arc<dyn DeviceResolver>, BackendError> {
    Err(BackendError::EbsStart(
        "[aws] device_resolver = \"loop\" stands loop devices in for EBS volumes in tests; \
         this daffe was built without its `testing` feature (use \"nvme\" on EC2)"
            .into(),
    ))
}

/// A fresh CreateVolume idempotency token: the same for every retry of one
/// Create, never reused by another (a name created, removed and created
/// again must get a new volume).
/// AWS allows 64 ASCII characters: the random part always fits whole (a
/// long name once pushed it out, so every Create of that name sent the same
/// token and got the first volume back), and the name part keeps only
/// ASCII letters, digits and `-_.` so a cut never splits a character.
pub(super) fn client_token(name: &str) -> String {
    const MAX: usize = 64;
    const FIXED: usize = "daffe-".len() + "-".len() + 16;
    let r: u64 = rand::random();
    let name: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(MAX - FIXED)
        .collect();
    format!("daffe-{name}-{r:016x}")
}

pub(super) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl EbsBackend {
    pub(crate) fn new(p: Parts) -> Self {
        Self {
            ec2: p.ec2,
            resolver: p.resolver,
            fs: p.fs,
            clock: p.clock,
            scope: p.scope,
            mount_root: p.mount_root,
            side: p.side,
            ids: Mutex::new(HashMap::new()),
            devices: Mutex::new(HashMap::new()),
            attach_lock: Mutex::new(()),
        }
    }

    /// The backend for `daffe serve`: EC2 from the standard chain with the
    /// config's overrides, identity from the config or IMDS.
    pub(crate) fn open(cfg: &EbsConfig, data_root: &Path) -> Result<Self, BackendError> {
        let start = |e: &dyn std::fmt::Display| BackendError::EbsStart(e.to_string());
        let opts = cfg.aws_options();
        let ec2 = SdkEc2::connect(&opts).map_err(|e| start(&e))?;
        let id = identity::resolve(cfg.instance_id.as_deref(), cfg.availability_zone.as_deref())
            .map_err(|e| start(&e))?;
        let resolver: Arc<dyn DeviceResolver> = match cfg.device_resolver {
            ResolverKind::Nvme => Arc::new(NvmeResolver::default()),
            ResolverKind::Loop => loop_resolver(cfg, data_root)?,
        };
        let side = AwsSide {
            region: Some(ec2.region().to_owned()),
            endpoint_url: cfg.endpoint_url.clone(),
            cluster: cfg.cluster().to_owned(),
            instance_id: id.instance_id.clone(),
            zone: id.zone.clone(),
            snapshot_state_dir: cfg.snapshot_state_dir(),
            device_resolver: resolver.name().to_owned(),
        };
        tracing::info!(
            instance = %id.instance_id, zone = %id.zone, region = ec2.region(),
            cluster = cfg.cluster(), resolver = resolver.name(), "EBS backend"
        );
        Ok(Self::new(Parts {
            ec2: Arc::new(ec2),
            resolver,
            fs: Arc::new(SystemFs),
            clock: Arc::new(SystemClock),
            scope: Scope {
                cluster: cfg.cluster().to_owned(),
                instance_id: id.instance_id,
                zone: id.zone,
            },
            mount_root: data_root.join(MOUNT_DIR),
            side,
        }))
    }

    pub(crate) fn side(&self) -> &AwsSide {
        &self.side
    }

    pub(super) fn deadline(&self, budget: Duration) -> Deadline {
        Deadline::new(self.clock.clone(), budget)
    }

    pub(crate) fn mountpoint(&self, name: &str) -> PathBuf {
        self.mount_root.join(name).join("data")
    }

    /// One EC2 call through the retry layer, refused once `d` has passed.
    /// `new_since`: when the volume was created, so "not found" is retried
    /// while it may not be visible yet.
    pub(super) fn aws<T>(
        &self,
        volume: &str,
        volume_id: Option<&str>,
        op: &'static str,
        d: &Deadline,
        new_since: Option<Instant>,
        mut f: impl FnMut() -> Result<T, ApiError>,
    ) -> Result<T, EbsError> {
        let retrier = Retrier::new(EC2_RETRY, self.clock.as_ref());
        let what = || format!("{op} {}", volume_id.unwrap_or(volume));
        let metrics = crate::metrics::daemon();
        let result = retrier.run(&what, new_since, || {
            if d.passed() {
                return Err(ApiError::new(
                    op,
                    ErrorKind::Permanent,
                    "DeadlineExceeded",
                    format!("the operation's {} s budget is spent", d.secs()),
                ));
            }
            // Every attempt that reached AWS, by its outcome.
            let r = f();
            metrics.aws_attempt(op, r.as_ref().map_or_else(|e| aws_result(e.kind), |_| "ok"));
            r
        });
        metrics.aws_retried(op, retrier.retries());
        result.map_err(|Exhausted { error, attempts }| EbsError::Aws {
            volume: volume.to_owned(),
            volume_id: volume_id.map(str::to_owned),
            attempts,
            source: error,
        })
    }

    pub(crate) fn cached_id(&self, name: &str) -> Option<String> {
        lock(&self.ids).get(name).cloned()
    }

    pub(super) fn remember(&self, name: &str, volume_id: &str) {
        lock(&self.ids).insert(name.to_owned(), volume_id.to_owned());
    }

    fn forget_id(&self, name: &str) {
        lock(&self.ids).remove(name);
    }

    /// The EBS volume of NAME, if there is one: the cached id if it still
    /// exists, else a search by tags (after a restart, or a cache gone stale).
    pub(super) fn lookup(&self, name: &str, d: &Deadline) -> Result<Option<VolumeFacts>, EbsError> {
        if let Some(id) = self.cached_id(name) {
            match self.aws(name, Some(&id), "DescribeVolumes", d, None, || {
                self.ec2.describe_volume(&id)
            }) {
                // Not ours any more (released, or taken by another host
                // since it was cached): the tag search decides.
                Ok(v) if tags::is_ours(&self.scope, name, &v) => return Ok(Some(v)),
                Ok(_) => {}
                Err(e) if e.aws_code() == Some("InvalidVolume.NotFound") => {}
                Err(e) => return Err(e),
            }
            self.forget_id(name);
        }
        let filters = tags::by_name(&self.scope, name);
        let found = self.aws(name, None, "DescribeVolumes", d, None, || {
            self.ec2.find_volumes(&filters)
        })?;
        match tags::pick(&self.scope, &found) {
            Ok(Some(v)) => {
                self.remember(name, &v.id);
                Ok(Some(v.clone()))
            }
            Ok(None) => Ok(None),
            Err(many) => Err(EbsError::Ambiguous {
                volume: name.to_owned(),
                ids: many
                    .iter()
                    .map(|v| v.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Like [`Self::lookup`], failing when there is no volume.
    pub(super) fn require(&self, name: &str, d: &Deadline) -> Result<VolumeFacts, EbsError> {
        self.lookup(name, d)?.ok_or_else(|| EbsError::Missing {
            volume: name.to_owned(),
            cluster: self.scope.cluster.clone(),
            zone: self.scope.zone.clone(),
        })
    }

    /// Waits until `id` is `available` (a new volume leaves `creating`).
    pub(super) fn wait_available(
        &self,
        name: &str,
        id: &str,
        created: Instant,
        d: &Deadline,
    ) -> Result<VolumeFacts, EbsError> {
        let seen = d.poll(|| {
            let v = self.aws(name, Some(id), "DescribeVolumes", d, Some(created), || {
                self.ec2.describe_volume(id)
            })?;
            match v.state.as_str() {
                "available" | "in-use" => Ok(Some(v)),
                "creating" => Ok(None),
                _ => Err(EbsError::BadState {
                    volume: name.to_owned(),
                    volume_id: id.to_owned(),
                    state: v.state,
                }),
            }
        })?;
        seen.ok_or_else(|| EbsError::Timeout {
            volume: name.to_owned(),
            volume_id: id.to_owned(),
            what: "creation (creating -> available)",
            secs: d.secs(),
        })
    }

    fn create_volume(&self, vol: &VolumeRef<'_>, s: &EbsSettings) -> Result<(), EbsError> {
        let d = self.deadline(CREATE_BUDGET);
        if let Some(v) = self.lookup(vol.name, &d)? {
            // A Create repeated after a crash: the volume is already there.
            tracing::info!(volume = vol.name, volume_id = %v.id, "EBS volume exists already; adopting it");
            self.wait_available(vol.name, &v.id, self.clock.now(), &d)?;
            return Ok(());
        }
        let t = tags::for_new(
            &self.scope.cluster,
            Some(&self.scope.instance_id),
            vol.name,
            vol.profile,
            vol.docker_name,
            now_secs(),
        );
        let req = new_volume(vol.name, s, &self.scope.zone, None, t);
        let path = create_record::path(&self.mount_root, vol.name);
        if let Some(old) = create_record::load(&path) {
            // An earlier Create of this name whose volume the tag search
            // does not show: the same volume again if it asked for the same
            // one, else that one goes first.
            if let Some(v) = self.recorded(vol.name, &old, &d)? {
                if old.matches(&req) {
                    tracing::info!(volume = vol.name, volume_id = %v.id, "EBS volume of an interrupted Create found by its request; adopting it");
                    self.save_record(vol.name, &path, &old.request, Some(&v.id))?;
                    self.remember(vol.name, &v.id);
                    self.wait_available(vol.name, &v.id, self.clock.now(), &d)?;
                    return Ok(());
                }
                self.discard(vol.name, &v, &d)?;
            }
        }
        // Saved before the call: a crash while it is in flight leaves the
        // request (and its token) for the rollback.
        self.save_record(vol.name, &path, &req, None)?;
        let created = self.clock.now();
        let v = self.aws(vol.name, None, "CreateVolume", &d, None, || {
            self.ec2.create_volume(&req)
        })?;
        self.remember(vol.name, &v.id);
        self.save_record(vol.name, &path, &req, Some(&v.id))?;
        tracing::info!(volume = vol.name, volume_id = %v.id, zone = %v.zone,
            r#type = %req.volume_type, size_gib = req.size_gib, iops = ?req.iops,
            throughput = ?req.throughput, encrypted = req.encrypted, "EBS volume created");
        self.wait_available(vol.name, &v.id, created, &d)?;
        Ok(())
    }

    fn save_record(
        &self,
        name: &str,
        path: &Path,
        request: &NewVolume,
        volume_id: Option<&str>,
    ) -> Result<(), EbsError> {
        let rec = create_record::CreateRecord {
            request: request.clone(),
            volume_id: volume_id.map(str::to_owned),
        };
        create_record::save(path, &rec).map_err(|source| {
            EbsError::Io(VolumeIoError {
                volume: name.to_owned(),
                what: "saving its create request in",
                path: path.to_owned(),
                source,
            })
        })
    }

    /// The volume an earlier Create of `name` made or may have made, where
    /// the tag search shows none (see `create_record`): by the id saved,
    /// else by sending its request again (same token: the same volume, made
    /// now at the latest). `None`: it is gone, never was, or is not this
    /// host's to touch (released, or taken by another host since).
    fn recorded(
        &self,
        name: &str,
        rec: &create_record::CreateRecord,
        d: &Deadline,
    ) -> Result<Option<VolumeFacts>, EbsError> {
        let v = match &rec.volume_id {
            Some(id) => match self.aws(name, Some(id), "DescribeVolumes", d, None, || {
                self.ec2.describe_volume(id)
            }) {
                Ok(v) => v,
                Err(e) if e.aws_code() == Some("InvalidVolume.NotFound") => return Ok(None),
                Err(e) => return Err(e),
            },
            None => self.aws(name, None, "CreateVolume", d, None, || {
                self.ec2.create_volume(&rec.request)
            })?,
        };
        // Only what the tag search would take as ours, had it seen it (the
        // record stays here when the volume moves to another host).
        if !tags::is_ours(&self.scope, name, &v) {
            tracing::info!(volume = name, volume_id = %v.id, state = %v.state,
                "the volume of an earlier Create is not this host's now; leaving it");
            return Ok(None);
        }
        Ok(Some(v))
    }

    /// Deletes the volume of an earlier Create that asked for another one
    /// (it never served, nothing on it): once `available`, as EC2 requires.
    fn discard(&self, name: &str, v: &VolumeFacts, d: &Deadline) -> Result<(), EbsError> {
        tracing::warn!(volume = name, volume_id = %v.id, "deleting the EBS volume of an interrupted Create that asked for other settings");
        self.wait_available(name, &v.id, self.clock.now(), d)?;
        match self.aws(name, Some(&v.id), "DeleteVolume", d, None, || {
            self.ec2.delete_volume(&v.id)
        }) {
            Err(e) if e.aws_code() != Some("InvalidVolume.NotFound") => Err(e),
            _ => Ok(()),
        }
    }

    fn mount_volume(&self, vol: &VolumeRef<'_>) -> Result<PathBuf, EbsError> {
        let mp = self.mountpoint(vol.name);
        if self.fs.is_mounted(&mp) {
            // Mounted by an earlier call whose count was never committed.
            return Ok(mp);
        }
        let d = self.deadline(MOUNT_BUDGET);
        let v = self.require(vol.name, &d)?;
        if let Some(state) = tags::state_of(&v) {
            return Err(EbsError::NotUsable {
                volume: vol.name.to_owned(),
                volume_id: v.id,
                reason: state.refusal(),
            });
        }
        let result = self
            .attach(vol.name, &v, &d)
            .and_then(|attach_name| self.device_and_mount(vol.name, &v, &attach_name, &mp, &d));
        if let Err(e) = &result
            && !matches!(
                e,
                EbsError::AttachedElsewhere { .. } | EbsError::WrongZone { .. }
            )
        {
            // No Unmount follows a failed Mount: leave the volume detached,
            // as it was (an attach that timed out may still complete).
            let rb = self.deadline(ROLLBACK_BUDGET);
            if let Err(e) = self.detach(vol.name, &v.id, &rb) {
                tracing::error!(volume = vol.name, volume_id = %v.id, error = %e,
                    "detaching after a failed mount");
            }
        }
        result.map(|()| mp)
    }

    fn device_and_mount(
        &self,
        name: &str,
        v: &VolumeFacts,
        attach_name: &str,
        mp: &Path,
        d: &Deadline,
    ) -> Result<(), EbsError> {
        let dev = self
            .resolver
            .wait_device(v, attach_name, &d.within(DEVICE_BUDGET))
            .map_err(|source| EbsError::Device {
                volume: name.to_owned(),
                volume_id: Some(v.id.clone()),
                source,
            })?;
        let cmd = |source| EbsError::Command {
            volume: name.to_owned(),
            volume_id: Some(v.id.clone()),
            source,
        };
        if !self.fs.has_filesystem(&dev).map_err(cmd)? {
            tracing::info!(volume = name, volume_id = %v.id, device = %dev.display(), "new volume: making ext4");
            self.fs.mkfs(&dev).map_err(cmd)?;
        }
        std::fs::create_dir_all(mp).map_err(|source| {
            EbsError::Io(VolumeIoError {
                volume: name.to_owned(),
                what: "creating",
                path: mp.to_owned(),
                source,
            })
        })?;
        self.fs.mount(&dev, mp).map_err(cmd)?;
        tracing::info!(volume = name, volume_id = %v.id, device = %dev.display(), "mounted");
        Ok(())
    }

    /// Applies a planned change: one ModifyVolume with every changed value.
    fn modify(&self, name: &str, change: &SettingsChange) -> Result<(), EbsError> {
        let Some(m) = &change.modify else {
            return Ok(());
        };
        let d = self.deadline(CHANGE_BUDGET);
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
    pub(crate) fn retag_profile(&self, name: &str, profile: &str) -> Result<(), EbsError> {
        let d = self.deadline(CHANGE_BUDGET);
        let v = self.require(name, &d)?;
        let t = [(tags::PROFILE.to_owned(), profile.to_owned())]
            .into_iter()
            .collect();
        self.aws(name, Some(&v.id), "CreateTags", &d, None, || {
            self.ec2.create_tags(&v.id, &t)
        })
    }

    fn unmount_volume(&self, name: &str, d: &Deadline) -> Result<(), EbsError> {
        let mp = self.mountpoint(name);
        if self.fs.is_mounted(&mp) {
            self.fs.unmount(&mp).map_err(|source| EbsError::Command {
                volume: name.to_owned(),
                volume_id: self.cached_id(name),
                source,
            })?;
        }
        let Some(v) = self.lookup(name, d)? else {
            return Ok(());
        };
        self.detach(name, &v.id, d)
    }

    fn remove_volume(&self, vol: &VolumeRef<'_>, s: &EbsSettings) -> Result<(), EbsError> {
        let d = self.deadline(UNMOUNT_BUDGET);
        self.unmount_volume(vol.name, &d)?;
        let record = create_record::path(&self.mount_root, vol.name);
        let v = match self.lookup(vol.name, &d)? {
            Some(v) => v,
            // Not seen by tag: a volume an interrupted Create made (or whose
            // request is still on its way) is found by its request.
            None => match create_record::load(&record) {
                Some(rec) => match self.recorded(vol.name, &rec, &d)? {
                    Some(v) => self.wait_available(vol.name, &v.id, self.clock.now(), &d)?,
                    None => {
                        let _ = std::fs::remove_dir_all(self.mount_root.join(vol.name));
                        return Ok(());
                    }
                },
                None => return Ok(()),
            },
        };
        if let Some(TagState::Fenced { zone }) = tags::state_of(&v) {
            return Err(EbsError::NotUsable {
                volume: vol.name.to_owned(),
                volume_id: v.id,
                reason: format!("it is being moved to {zone}; finish or abort the migration first"),
            });
        }
        if let Some(a) = v.attachment_elsewhere(&self.scope.instance_id) {
            return Err(EbsError::AttachedElsewhere {
                volume: vol.name.to_owned(),
                volume_id: v.id.clone(),
                instance: a.instance_id.clone(),
            });
        }
        let dev_err = |source| EbsError::Device {
            volume: vol.name.to_owned(),
            volume_id: Some(v.id.clone()),
            source,
        };
        if s.keep_on_remove {
            let released = [(tags::STATE.to_owned(), TagState::Released.value())]
                .into_iter()
                .collect();
            self.aws(vol.name, Some(&v.id), "CreateTags", &d, None, || {
                self.ec2.create_tags(&v.id, &released)
            })?;
            self.resolver.release(&v.id).map_err(dev_err)?;
            tracing::info!(volume = vol.name, volume_id = %v.id, "removed from docker; EBS volume kept (keep_on_remove)");
        } else {
            match self.aws(vol.name, Some(&v.id), "DeleteVolume", &d, None, || {
                self.ec2.delete_volume(&v.id)
            }) {
                Err(e) if e.aws_code() != Some("InvalidVolume.NotFound") => return Err(e),
                _ => {}
            }
            self.resolver.forget(&v.id).map_err(dev_err)?;
            tracing::info!(volume = vol.name, volume_id = %v.id, "EBS volume deleted");
        }
        self.forget_id(vol.name);
        let _ = std::fs::remove_dir_all(self.mount_root.join(vol.name));
        Ok(())
    }
}

impl Backend for EbsBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Ebs
    }

    fn create(&self, vol: VolumeRef<'_>) -> Result<(), BackendError> {
        let s = settings(&vol)?;
        Ok(self.create_volume(&vol, s)?)
    }

    fn remove(&self, vol: VolumeRef<'_>) -> Result<(), BackendError> {
        let s = settings(&vol)?;
        Ok(self.remove_volume(&vol, s)?)
    }

    fn mount(&self, vol: VolumeRef<'_>) -> Result<PathBuf, BackendError> {
        settings(&vol)?;
        Ok(self.mount_volume(&vol)?)
    }

    fn unmount(&self, vol: VolumeRef<'_>) -> Result<(), BackendError> {
        settings(&vol)?;
        let d = self.deadline(UNMOUNT_BUDGET);
        Ok(self.unmount_volume(vol.name, &d)?)
    }

    fn path(&self, vol: VolumeRef<'_>) -> PathBuf {
        self.mountpoint(vol.name)
    }

    fn status(&self, vol: VolumeRef<'_>) -> Status {
        let mut st = Status::new();
        let id = self.cached_id(vol.name);
        if let Some(id) = &id {
            st.insert("volume_id".into(), id.clone().into());
            if let Some(dev) = lock(&self.devices).get(id) {
                st.insert("attach_device".into(), dev.clone().into());
            }
        }
        st.insert("zone".into(), self.scope.zone.clone().into());
        st.insert(
            "mounted".into(),
            self.fs.is_mounted(&self.mountpoint(vol.name)).into(),
        );
        st
    }

    fn discover(&self) -> Result<Vec<Discovered>, BackendError> {
        Ok(self.discover_volumes()?)
    }

    fn adopt(&self, found: &Discovered) -> Result<(), BackendError> {
        Ok(self.adopt_volume(found)?)
    }

    fn apply_change(
        &self,
        vol: VolumeRef<'_>,
        change: &SettingsChange,
    ) -> Result<(), BackendError> {
        settings(&vol)?;
        Ok(self.modify(vol.name, change)?)
    }
}
