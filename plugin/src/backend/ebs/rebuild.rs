//! Records rebuilt from EBS: the volumes of this host's cluster and zone
//! that it owns, or that nobody has claimed yet (a copy made by `migrate
//! --via-ebs`), found by their tags at start so a lost state dir, or a
//! volume moved in from another zone, is served again; adopting one claims
//! it for this host.

use super::super::Discovered;
use super::backend::{CREATE_BUDGET, EbsBackend, UNMOUNT_BUDGET};
use super::error::EbsError;
use super::tags;
use profiles::Settings;

impl EbsBackend {
    /// Volumes of this cluster and zone that this host owns or may claim.
    pub(super) fn discover_volumes(&self) -> Result<Vec<Discovered>, EbsError> {
        let d = self.deadline(CREATE_BUDGET);
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
        let d = self.deadline(UNMOUNT_BUDGET);
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
}
