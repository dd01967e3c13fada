//! Test doubles for the EBS backend, shared by its unit tests and the
//! service's: a fake device resolver, fake filesystem steps, and a rig that
//! builds an `EbsBackend` over the in-memory EC2 on virtual time.

use super::super::VolumeRef;
use super::super::sys::CommandError;
use super::backend::{AwsSide, EbsBackend, Parts, lock};
use super::device::{DeviceError, DeviceResolver};
use super::fs::Filesystems;
use super::tags::Scope;
use super::wait::Deadline;
use crate::aws::VolumeFacts;
use crate::aws::ec2_memory::MemoryEc2;
use mover::clock::ManualClock;
use profiles::{BackendKind, ByteSize, Catalog, Settings};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub(crate) const ME: &str = "i-0me";
pub(crate) const ZONE: &str = "us-east-1a";

#[derive(Default)]
pub(crate) struct FakeResolver {
    pub(crate) calls: Mutex<Vec<String>>,
    pub(crate) fail: AtomicBool,
}

impl DeviceResolver for FakeResolver {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn wait_device(
        &self,
        vol: &VolumeFacts,
        attach_device: &str,
        d: &Deadline,
    ) -> Result<PathBuf, DeviceError> {
        lock(&self.calls).push(format!("wait {} {attach_device}", vol.id));
        if self.fail.load(Ordering::SeqCst) {
            return Err(DeviceError::NotFound {
                volume_id: vol.id.clone(),
                secs: d.secs(),
                looked: "nowhere".into(),
            });
        }
        Ok(PathBuf::from(format!("/dev/fake/{}", vol.id)))
    }
    fn current(&self, volume_id: &str, _: Option<&str>) -> Option<PathBuf> {
        Some(PathBuf::from(format!("/dev/fake/{volume_id}")))
    }
    fn release(&self, volume_id: &str) -> Result<(), DeviceError> {
        lock(&self.calls).push(format!("release {volume_id}"));
        Ok(())
    }
    fn forget(&self, volume_id: &str) -> Result<(), DeviceError> {
        lock(&self.calls).push(format!("forget {volume_id}"));
        Ok(())
    }
}

#[derive(Default)]
pub(crate) struct FakeFs {
    pub(crate) formatted: Mutex<HashSet<PathBuf>>,
    pub(crate) mounted: Mutex<HashMap<PathBuf, PathBuf>>,
    pub(crate) mkfs_count: Mutex<u32>,
    pub(crate) fail_mount: AtomicBool,
}

pub(crate) fn failed(what: &str) -> CommandError {
    CommandError::Spawn {
        program: what.into(),
        source: std::io::Error::other("injected"),
    }
}

impl Filesystems for FakeFs {
    fn has_filesystem(&self, dev: &Path) -> Result<bool, CommandError> {
        Ok(lock(&self.formatted).contains(dev))
    }
    fn mkfs(&self, dev: &Path) -> Result<(), CommandError> {
        *lock(&self.mkfs_count) += 1;
        lock(&self.formatted).insert(dev.to_owned());
        Ok(())
    }
    fn mount(&self, dev: &Path, mp: &Path) -> Result<(), CommandError> {
        if self.fail_mount.load(Ordering::SeqCst) {
            return Err(failed("mount"));
        }
        lock(&self.mounted).insert(mp.to_owned(), dev.to_owned());
        Ok(())
    }
    fn unmount(&self, mp: &Path) -> Result<(), CommandError> {
        lock(&self.mounted).remove(mp);
        Ok(())
    }
    fn is_mounted(&self, mp: &Path) -> bool {
        lock(&self.mounted).contains_key(mp)
    }
}

pub(crate) struct Rig {
    pub(crate) ec2: Arc<MemoryEc2>,
    pub(crate) resolver: Arc<FakeResolver>,
    pub(crate) fs: Arc<FakeFs>,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) be: Arc<EbsBackend>,
    /// Holds the mount root and snapshot state dir until the rig drops.
    _dir: tempfile::TempDir,
}

pub(crate) fn rig_in(instance: &str, zone: &str, ec2: Arc<MemoryEc2>) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    ec2.add_instance(instance, zone);
    let resolver = Arc::new(FakeResolver::default());
    let fs = Arc::new(FakeFs::default());
    let clock = Arc::new(ManualClock::default());
    let be = Arc::new(EbsBackend::new(Parts {
        ec2: ec2.clone(),
        resolver: resolver.clone(),
        fs: fs.clone(),
        clock: clock.clone(),
        scope: Scope {
            cluster: "c1".into(),
            instance_id: instance.into(),
            zone: zone.into(),
        },
        mount_root: dir.path().join("ebs"),
        side: AwsSide {
            region: Some("us-east-1".into()),
            endpoint_url: None,
            cluster: "c1".into(),
            instance_id: instance.into(),
            zone: zone.into(),
            snapshot_state_dir: dir.path().join("snapshots"),
            device_resolver: "fake".into(),
        },
    }));
    Rig {
        ec2,
        resolver,
        fs,
        clock,
        be,
        _dir: dir,
    }
}

pub(crate) fn rig() -> Rig {
    let ec2 = Arc::new(MemoryEc2::new());
    // Every transition takes three looks, as AWS's take seconds.
    ec2.set_settle(3);
    rig_in(ME, ZONE, ec2)
}

/// Settings of a built-in profile at `size_gib`.
pub(crate) fn profile_settings(profile: &str, size_gib: Option<u64>) -> Settings {
    Catalog::builtin()
        .resolve_profile(
            "v",
            profile,
            size_gib.map(|g| ByteSize(g << 30)),
            BackendKind::Ebs,
            Path::new("/d"),
        )
        .unwrap()
}

pub(crate) fn vref<'a>(name: &'a str, profile: &'a str, s: &'a Settings) -> VolumeRef<'a> {
    VolumeRef {
        name,
        settings: s,
        profile,
        docker_name: name,
    }
}

impl Rig {
    pub(crate) fn volume_of(&self, name: &str) -> VolumeFacts {
        let id = self.be.cached_id(name).expect("volume id known");
        self.ec2.peek(&id).expect("volume exists")
    }
    pub(crate) fn resolver_calls(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.resolver.calls))
    }
}
