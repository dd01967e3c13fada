//! Changing the profile of existing volumes: `daffe volume set-profile NAME
//! PROFILE` (one volume), and `POST /v1/configuration/profiles` (a profile
//! defined or redefined; re-applied to every volume that has it).
//!
//! A change is planned first (`backend::change::plan`: pure, refuses what
//! the backend cannot do in place), applied to the storage in one step (EBS:
//! one ModifyVolume), and only then recorded, under the volume's lock. A
//! redefinition is checked against all its volumes before anything changes:
//! if one cannot take it, the profile stays as it was and nothing is touched.
//! A storage call that fails later leaves that volume's record with its old
//! settings (the record always says what the storage has) and is reported;
//! `set-profile` with the same profile retries it.

use super::{ServiceError, VolumeService, vref};
use crate::backend::BackendError;
use crate::backend::change::{self, SettingsChange};
use crate::state::record::{VolumeRecord, VolumeState};
use profiles::{ByteSize, Catalog, CatalogError, Profile, ProfileDef, ResolveError, Settings};
use serde::Serialize;

/// What a change did to one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct VolumeChange {
    pub(crate) name: String,
    pub(crate) docker_name: String,
    pub(crate) from_profile: String,
    pub(crate) to_profile: String,
    /// `type gp3 -> io2`, ...; empty when only the record changed.
    pub(crate) changes: Vec<String>,
    /// Whether the storage was modified (EBS ModifyVolume).
    pub(crate) modified: bool,
    /// Set when this volume could not be changed (the others may have been).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

/// What a profile definition did.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DefineReport {
    pub(crate) profile: Profile,
    pub(crate) volumes: Vec<VolumeChange>,
}

impl DefineReport {
    pub(crate) fn failures(&self) -> impl Iterator<Item = &VolumeChange> {
        self.volumes.iter().filter(|v| v.error.is_some())
    }
}

/// The volume's size, which a profile change keeps.
fn current_size(s: &Settings) -> Option<ByteSize> {
    match s {
        Settings::Local(l) => l.size,
        Settings::Ebs(e) => Some(ByteSize(e.size_gib << 30)),
    }
}

impl VolumeService {
    /// The plan for moving `rec` to `profile` in `cat`.
    fn plan_for(
        &self,
        cat: &Catalog,
        rec: &VolumeRecord,
        profile: &str,
        op: &'static str,
    ) -> Result<SettingsChange, ServiceError> {
        let to = cat.resolve_profile(
            &rec.name,
            profile,
            current_size(&rec.settings),
            self.backend.kind(),
            &self.data_root,
        )?;
        change::plan(&rec.settings, &to).map_err(|r| ServiceError::Refused {
            op,
            name: rec.docker_name.clone(),
            reason: r.0,
        })
    }

    /// Moves one volume (under its lock) to `profile` as `cat` defines it.
    fn change_profile(
        &self,
        docker_name: &str,
        profile: &str,
        cat: &Catalog,
        op: &'static str,
    ) -> Result<VolumeChange, ServiceError> {
        self.locked(docker_name, |mut rec| {
            if rec.state != VolumeState::Ready {
                return Err(ServiceError::Refused {
                    op,
                    name: rec.docker_name,
                    reason: format!("the volume is {}", rec.state.as_str()),
                });
            }
            let plan = self.plan_for(cat, &rec, profile, op)?;
            let out = VolumeChange {
                name: rec.name.clone(),
                docker_name: rec.docker_name.clone(),
                from_profile: rec.profile.clone(),
                to_profile: profile.to_owned(),
                changes: plan.notes.clone(),
                modified: plan.modify.is_some(),
                error: None,
            };
            if rec.profile == profile && rec.settings == plan.settings {
                return Ok(out);
            }
            self.backend.apply_change(vref(&rec), &plan)?;
            if let Some(ebs) = &self.ebs {
                // After the storage change: a failure here leaves the old tag,
                // which a retry of the same set-profile fixes.
                ebs.retag_profile(&rec.name, profile)
                    .map_err(BackendError::from)?;
            }
            rec.profile = profile.to_owned();
            rec.settings = plan.settings;
            self.records.put(&rec)?;
            tracing::info!(volume = %rec.docker_name, from = %out.from_profile, to = profile,
                changes = %out.changes.join(", "), "profile changed");
            Ok(out)
        })
    }

    /// Static validation checks each value alone; whether they fit together
    /// (gp3 throughput against its IOPS, IOPS against the size) depends on a
    /// size. A definition that cannot make a volume of its own default size
    /// is refused now, as a bad definition, rather than at the next Create.
    /// Both sections are checked: the catalog may be shared by hosts on
    /// either backend.
    fn check_default_size(&self, cat: &Catalog, name: &str) -> Result<(), ServiceError> {
        use profiles::BackendKind;
        for kind in [BackendKind::Local, BackendKind::Ebs] {
            match cat.resolve_profile("(default size)", name, None, kind, &self.data_root) {
                Ok(_) | Err(ResolveError::NoBackendSection { .. }) => {}
                Err(ResolveError::Ebs {
                    profile, source, ..
                }) => return Err(CatalogError::Ebs { profile, source }.into()),
                Err(ResolveError::Local {
                    profile, source, ..
                }) => return Err(CatalogError::Local { profile, source }.into()),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// `daffe volume set-profile NAME PROFILE`.
    pub(crate) fn set_profile(
        &self,
        name: &str,
        profile: &str,
    ) -> Result<VolumeChange, ServiceError> {
        let cat = self.catalog.snapshot();
        if cat.get(profile).is_none() {
            return Err(ResolveError::UnknownProfile {
                profile: profile.to_owned(),
                known: cat.names(),
            }
            .into());
        }
        self.change_profile(name, profile, &cat, "set-profile")
    }

    /// `POST /v1/configuration/profiles`: defines or replaces `name`, after
    /// checking every volume of that profile can take the new definition;
    /// then applies it to them one by one.
    pub(crate) fn define_profile(
        &self,
        name: &str,
        def: ProfileDef,
    ) -> Result<DefineReport, ServiceError> {
        const OP: &str = "define profile";
        crate::state::roots::check_def(name, &def, &self.data_root).map_err(|e| {
            ServiceError::Refused {
                op: OP,
                name: name.to_owned(),
                reason: e.to_string(),
            }
        })?;
        let mut writer = self.catalog.writer();
        let candidate = writer.candidate(name, def.clone())?;
        self.check_default_size(&candidate, name)?;
        let volumes: Vec<VolumeRecord> = self
            .records
            .list()?
            .into_iter()
            .filter(|r| r.profile == name)
            .collect();
        let refusals: Vec<String> = volumes
            .iter()
            .filter_map(|r| {
                self.plan_for(&candidate, r, name, OP)
                    .err()
                    .map(|e| match e {
                        ServiceError::Refused { name, reason, .. } => format!("{name}: {reason}"),
                        other => format!("{}: {other}", r.docker_name),
                    })
            })
            .collect();
        if !refusals.is_empty() {
            return Err(ServiceError::Refused {
                op: OP,
                name: name.to_owned(),
                reason: format!(
                    "existing volumes cannot take the new definition, so nothing was changed: {}",
                    refusals.join("; ")
                ),
            });
        }
        writer.commit(name, def, candidate.clone())?;
        drop(writer);
        tracing::info!(profile = name, volumes = volumes.len(), "profile defined");
        let mut report = DefineReport {
            profile: candidate
                .get(name)
                .cloned()
                .ok_or_else(|| ServiceError::Internal {
                    op: OP,
                    name: name.to_owned(),
                    message: "the profile vanished from its own catalog".into(),
                })?,
            volumes: Vec::new(),
        };
        for r in volumes {
            let outcome = match self.change_profile(&r.docker_name, name, &candidate, OP) {
                Ok(c) => c,
                Err(e) => VolumeChange {
                    name: r.name.clone(),
                    docker_name: r.docker_name.clone(),
                    from_profile: r.profile.clone(),
                    to_profile: name.to_owned(),
                    changes: Vec::new(),
                    modified: false,
                    error: Some(e.to_string()),
                },
            };
            report.volumes.push(outcome);
        }
        Ok(report)
    }
}
