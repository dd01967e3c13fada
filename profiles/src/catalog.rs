//! The profile catalog: the built-in profiles (`default`, `gold`) plus those a
//! config file or the profiles endpoint defines, and resolution of a request
//! into concrete backend settings.
//!
//! A profile says, per backend, what it means. The host runs one backend
//! (`local` or `ebs`); a profile without a section for it cannot be used there,
//! and says so instead of falling back to something else (Flocker's silent
//! fallback to default is the bug we do not repeat).

use crate::ebs::{EbsError, EbsSettings, EbsSpec, EbsVolumeType, IopsRule};
use crate::local::{Filesystem, LocalError, LocalFormat, LocalSettings, LocalSpec};
use crate::name::{DEFAULT_PROFILE, NameError, check_profile_name};
use crate::request::VolumeRequest;
use crate::size::{ByteSize, GIB};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// Storage backends a host can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Local,
    Ebs,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Local => "local",
            Self::Ebs => "ebs",
        })
    }
}

/// A profile as written in a config file or POSTed to the profiles endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileDef {
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebs: Option<EbsSpec>,
    /// Cluster mode: how many other nodes keep a warm standby copy, fed by
    /// the owner's pre-copy rounds, so a planned move sends only the last
    /// delta (issue 14). Ignored without `[cluster]`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub standbys: u32,
    /// Cluster mode: only nodes carrying this label (`KEY=VALUE`, a node's
    /// `[cluster] labels`, e.g. `zone=b`) hold this profile's standbys.
    /// Unset: any other live node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_label: Option<String>,
}

impl ProfileDef {
    /// `standby_label`, parsed (the catalog refuses a bad one, so `None`
    /// here means unset).
    pub fn standby_label(&self) -> Option<cluster::label::NodeLabel> {
        self.standby_label.as_deref().and_then(|l| l.parse().ok())
    }
}

/// More standbys than this is a typo, not a plan (each one is a full copy
/// and a stream of rounds from the owner).
pub const MAX_STANDBYS: u32 = 4;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A validated profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Profile {
    pub name: String,
    pub builtin: bool,
    #[serde(flatten)]
    pub def: ProfileDef,
}

/// Concrete settings for one volume on one backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum Settings {
    Local(LocalSettings),
    Ebs(EbsSettings),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("invalid profile name: {0}")]
    Name(#[from] NameError),
    #[error("profile {0:?} defines no backend; give it a [local] and/or [ebs] section")]
    NoBackend(String),
    #[error("profile {profile:?}, local section: {source}")]
    Local { profile: String, source: LocalError },
    #[error("profile {profile:?}, ebs section: {source}")]
    Ebs { profile: String, source: EbsError },
    #[error("profile {0:?} is built in; it can be changed but not removed")]
    RemoveBuiltin(String),
    #[error("invalid profiles config: {0}")]
    Config(String),
    #[error("profile {profile:?}: standbys = {standbys} is over the limit of {MAX_STANDBYS}")]
    Standbys { profile: String, standbys: u32 },
    #[error("profile {profile:?}: standby_label: {source}")]
    StandbyLabel {
        profile: String,
        source: cluster::label::LabelError,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("unknown profile {profile:?}; profiles: {known}")]
    UnknownProfile { profile: String, known: ProfileList },
    #[error(
        "profile {profile:?} has no {backend} section, and this host stores volumes on {backend}"
    )]
    NoBackendSection {
        profile: String,
        backend: BackendKind,
    },
    #[error("volume {volume:?}, profile {profile:?}: {source}")]
    Local {
        volume: String,
        profile: String,
        source: LocalError,
    },
    #[error("volume {volume:?}, profile {profile:?}: {source}")]
    Ebs {
        volume: String,
        profile: String,
        source: EbsError,
    },
}

/// Profile names, displayed comma-separated (for error messages).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProfileList(pub Vec<String>);

impl fmt::Display for ProfileList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

/// The set of profiles known to this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    profiles: BTreeMap<String, Profile>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Catalog {
    /// Just the built-in profiles.
    pub fn builtin() -> Self {
        let mut profiles = BTreeMap::new();
        for (name, def) in builtin_defs() {
            profiles.insert(
                name.to_owned(),
                Profile {
                    name: name.to_owned(),
                    builtin: true,
                    def,
                },
            );
        }
        Self { profiles }
    }

    /// Built-ins plus the `[profiles.NAME]` tables of a TOML config document
    /// (other top-level keys belong to the daemon and are ignored here). A
    /// config profile with a built-in's name replaces it.
    pub fn from_config_toml(text: &str) -> Result<Self, CatalogError> {
        #[derive(Deserialize)]
        struct Doc {
            #[serde(default)]
            profiles: BTreeMap<String, ProfileDef>,
        }
        let doc: Doc = toml::from_str(text).map_err(|e| CatalogError::Config(e.to_string()))?;
        let mut cat = Self::builtin();
        for (name, def) in doc.profiles {
            cat.define(&name, def)?;
        }
        Ok(cat)
    }

    /// Defines or replaces a profile after validating it.
    pub fn define(&mut self, name: &str, def: ProfileDef) -> Result<&Profile, CatalogError> {
        check_profile_name(name)?;
        validate_def(name, &def)?;
        let builtin = self.profiles.get(name).is_some_and(|p| p.builtin);
        let profile = Profile {
            name: name.to_owned(),
            builtin,
            def,
        };
        self.profiles.insert(name.to_owned(), profile);
        Ok(&self.profiles[name])
    }

    /// Removes a profile that is not built in; returns whether it existed.
    pub fn remove(&mut self, name: &str) -> Result<bool, CatalogError> {
        match self.profiles.get(name) {
            Some(p) if p.builtin => Err(CatalogError::RemoveBuiltin(name.to_owned())),
            Some(_) => Ok(self.profiles.remove(name).is_some()),
            None => Ok(false),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Profile> {
        self.profiles.values()
    }

    /// The profile names, for error messages.
    pub fn names(&self) -> ProfileList {
        ProfileList(self.profiles.keys().cloned().collect())
    }

    /// Concrete settings for `req` on `backend`; `data_root` supplies default
    /// local roots.
    pub fn resolve(
        &self,
        req: &VolumeRequest,
        backend: BackendKind,
        data_root: &Path,
    ) -> Result<Settings, ResolveError> {
        self.resolve_profile(&req.name, &req.profile, req.size, backend, data_root)
    }

    /// Like [`Catalog::resolve`] for an existing volume being moved to another
    /// profile (`daffe volume set-profile`), or re-resolved after a profile
    /// changed.
    pub fn resolve_profile(
        &self,
        volume: &str,
        profile: &str,
        size: Option<ByteSize>,
        backend: BackendKind,
        data_root: &Path,
    ) -> Result<Settings, ResolveError> {
        let p = self
            .profiles
            .get(profile)
            .ok_or_else(|| ResolveError::UnknownProfile {
                profile: profile.to_owned(),
                known: self.names(),
            })?;
        let missing = || ResolveError::NoBackendSection {
            profile: profile.to_owned(),
            backend,
        };
        match backend {
            BackendKind::Local => {
                let spec = p.def.local.as_ref().ok_or_else(missing)?;
                spec.settings(profile, size, data_root)
                    .map(Settings::Local)
                    .map_err(|source| ResolveError::Local {
                        volume: volume.to_owned(),
                        profile: profile.to_owned(),
                        source,
                    })
            }
            BackendKind::Ebs => {
                let spec = p.def.ebs.as_ref().ok_or_else(missing)?;
                spec.settings(size)
                    .map(Settings::Ebs)
                    .map_err(|source| ResolveError::Ebs {
                        volume: volume.to_owned(),
                        profile: profile.to_owned(),
                        source,
                    })
            }
        }
    }
}

fn validate_def(name: &str, def: &ProfileDef) -> Result<(), CatalogError> {
    if def.local.is_none() && def.ebs.is_none() {
        return Err(CatalogError::NoBackend(name.to_owned()));
    }
    if def.standbys > MAX_STANDBYS {
        return Err(CatalogError::Standbys {
            profile: name.to_owned(),
            standbys: def.standbys,
        });
    }
    if let Some(l) = &def.standby_label {
        l.parse::<cluster::label::NodeLabel>()
            .map_err(|source| CatalogError::StandbyLabel {
                profile: name.to_owned(),
                source,
            })?;
    }
    if let Some(l) = &def.local {
        l.validate().map_err(|source| CatalogError::Local {
            profile: name.to_owned(),
            source,
        })?;
    }
    if let Some(e) = &def.ebs {
        e.validate().map_err(|source| CatalogError::Ebs {
            profile: name.to_owned(),
            source,
        })?;
    }
    Ok(())
}

/// The built-in profiles, after FlockerProfiles: `default` is the cheapest
/// storage that works; `gold` is fast (io2 at 30 IOPS per GiB, encrypted) and,
/// locally, a size-limited block volume.
fn builtin_defs() -> [(&'static str, ProfileDef); 2] {
    [
        (
            DEFAULT_PROFILE,
            ProfileDef {
                description: "The cheapest storage that works: a directory locally, gp3 at its baseline on EBS.".into(),
                local: Some(LocalSpec {
                    root: None,
                    format: LocalFormat::Dir,
                    default_size: None,
                    filesystem: Filesystem::Ext4,
                }),
                ebs: Some(EbsSpec {
                    volume_type: EbsVolumeType::Gp3,
                    iops: None,
                    throughput: None,
                    encrypted: false,
                    kms_key_id: None,
                    default_size: ByteSize(10 * GIB),
                    keep_on_remove: false,
                }),
                standbys: 0,
                standby_label: None,
            },
        ),
        (
            "gold",
            ProfileDef {
                description: "Fast storage: a size-limited ext4 block volume locally; on EBS io2 with IOPS = 30 x GiB within AWS limits, encrypted.".into(),
                local: Some(LocalSpec {
                    root: None,
                    format: LocalFormat::Block,
                    default_size: Some(ByteSize(GIB)),
                    filesystem: Filesystem::Ext4,
                }),
                ebs: Some(EbsSpec {
                    volume_type: EbsVolumeType::Io2,
                    iops: Some(IopsRule::PerGib {
                        per_gib: 30,
                        min: None,
                        max: None,
                    }),
                    throughput: None,
                    encrypted: true,
                    kms_key_id: None,
                    default_size: ByteSize(10 * GIB),
                    keep_on_remove: false,
                }),
                standbys: 1,
                standby_label: None,
            },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size::MIB;
    use std::path::PathBuf;

    fn req(name: &str, profile: &str, size: Option<u64>) -> VolumeRequest {
        VolumeRequest {
            docker_name: name.to_owned(),
            name: name.to_owned(),
            profile: profile.to_owned(),
            size: size.map(ByteSize),
        }
    }

    #[test]
    fn builtins_resolve_on_both_backends() {
        let cat = Catalog::builtin();
        let data = Path::new("/var/lib/daffe");
        // (profile, size, backend, expected)
        let cases: Vec<(&str, Option<u64>, BackendKind, Settings)> = vec![
            (
                "default",
                None,
                BackendKind::Local,
                Settings::Local(LocalSettings {
                    root: PathBuf::from("/var/lib/daffe/local/default"),
                    format: LocalFormat::Dir,
                    size: None,
                    filesystem: None,
                }),
            ),
            (
                "default",
                Some(64 * MIB),
                BackendKind::Local,
                Settings::Local(LocalSettings {
                    root: PathBuf::from("/var/lib/daffe/local/default"),
                    format: LocalFormat::Dir,
                    size: Some(ByteSize(64 * MIB)),
                    filesystem: None,
                }),
            ),
            (
                "gold",
                None,
                BackendKind::Local,
                Settings::Local(LocalSettings {
                    root: PathBuf::from("/var/lib/daffe/local/gold"),
                    format: LocalFormat::Block,
                    size: Some(ByteSize(GIB)),
                    filesystem: Some(Filesystem::Ext4),
                }),
            ),
            (
                "default",
                None,
                BackendKind::Ebs,
                Settings::Ebs(EbsSettings {
                    volume_type: EbsVolumeType::Gp3,
                    size_gib: 10,
                    iops: None,
                    throughput: None,
                    encrypted: false,
                    kms_key_id: None,
                    keep_on_remove: false,
                }),
            ),
            (
                "gold",
                Some(20 * GIB),
                BackendKind::Ebs,
                Settings::Ebs(EbsSettings {
                    volume_type: EbsVolumeType::Io2,
                    size_gib: 20,
                    iops: Some(600),
                    throughput: None,
                    encrypted: true,
                    kms_key_id: None,
                    keep_on_remove: false,
                }),
            ),
        ];
        for (profile, size, backend, want) in cases {
            assert_eq!(
                cat.resolve(&req("v", profile, size), backend, data),
                Ok(want),
                "{profile} {backend}"
            );
        }
    }

    #[test]
    fn unmeetable_requests_are_refused() {
        let cat = Catalog::builtin();
        let data = Path::new("/var/lib/daffe");
        // A dir volume's size is a project quota's limit now (issue 12,
        // finding 7); only a uselessly small one is refused here.
        let err = cat
            .resolve(&req("v", "default", Some(1000)), BackendKind::Local, data)
            .unwrap_err();
        assert!(
            err.to_string().contains("below the smallest size limit"),
            "{err}"
        );
        let err = cat
            .resolve(&req("v", "gold", Some(GIB)), BackendKind::Ebs, data)
            .unwrap_err();
        assert!(
            err.to_string().contains("io2 volumes are 4-65536 GiB"),
            "{err}"
        );
        let err = cat
            .resolve(&req("v", "silver", None), BackendKind::Local, data)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown profile \"silver\"; profiles: default, gold"
        );
    }

    #[test]
    fn config_adds_and_overrides_profiles() {
        let text = r#"
            socket = "/run/docker/plugins/daffe.sock"   # a daemon key, ignored here

            [profiles.silver]
            description = "middle"
            [profiles.silver.local]
            format = "block"
            default_size = "5G"
            root = "/srv/silver"
            [profiles.silver.ebs]
            type = "gp3"
            iops = { per_gib = 10, min = 3000, max = 16000 }
            throughput = 250
            encrypted = true
            kms_key_id = "alias/daffe"

            [profiles.gold.local]
            format = "block"
            default_size = "2G"
        "#;
        let cat = Catalog::from_config_toml(text).unwrap();
        assert_eq!(cat.names().to_string(), "default, gold, silver");
        let gold = cat.get("gold").unwrap();
        assert!(gold.builtin);
        assert!(
            gold.def.ebs.is_none(),
            "a config profile replaces the built-in whole"
        );
        let data = Path::new("/d");
        match cat
            .resolve(&req("v", "silver", Some(400 * GIB)), BackendKind::Ebs, data)
            .unwrap()
        {
            Settings::Ebs(s) => {
                assert_eq!((s.iops, s.throughput), (Some(4_000), Some(250)));
                assert_eq!(s.kms_key_id.as_deref(), Some("alias/daffe"));
            }
            other => panic!("{other:?}"),
        }
        match cat
            .resolve(&req("v", "silver", None), BackendKind::Local, data)
            .unwrap()
        {
            Settings::Local(s) => {
                assert_eq!(s.root, PathBuf::from("/srv/silver"));
                assert_eq!(s.size, Some(ByteSize(5 * GIB)));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            cat.resolve(&req("v", "gold", None), BackendKind::Ebs, data),
            Err(ResolveError::NoBackendSection { .. })
        ));
    }

    #[test]
    fn gold_keeps_one_standby_and_a_config_may_ask_for_more() {
        let cat = Catalog::builtin();
        assert_eq!(cat.get("gold").unwrap().def.standbys, 1);
        assert_eq!(cat.get(DEFAULT_PROFILE).unwrap().def.standbys, 0);
        let cat = Catalog::from_config_toml(
            "[profiles.ha]\nstandbys = 2\n[profiles.ha.local]\nformat = \"dir\"\n",
        )
        .unwrap();
        assert_eq!(cat.get("ha").unwrap().def.standbys, 2);
        // Zero is the default and is not written out (older readers of
        // profiles.json never see the key).
        let json = serde_json::to_value(&cat.get(DEFAULT_PROFILE).unwrap().def).unwrap();
        assert!(json.get("standbys").is_none(), "{json}");
        assert!(json.get("standby_label").is_none(), "{json}");
        let cat = Catalog::from_config_toml(
            "[profiles.ha]\nstandbys = 1\nstandby_label = \"zone=b\"\n[profiles.ha.local]\nformat = \"dir\"\n",
        )
        .unwrap();
        let l = cat.get("ha").unwrap().def.standby_label().unwrap();
        assert_eq!((l.key.as_str(), l.value.as_str()), ("zone", "b"));
        assert_eq!(cat.get("gold").unwrap().def.standby_label(), None);
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let cases = [
            (
                "[profiles.Bad]\n[profiles.Bad.local]\nformat = \"dir\"\n",
                "invalid profile name",
            ),
            (
                "[profiles.empty]\ndescription = \"x\"\n",
                "defines no backend",
            ),
            (
                "[profiles.x.local]\nformat = \"tape\"\n",
                "invalid profiles config",
            ),
            (
                "[profiles.x.local]\nformat = \"dir\"\nbogus = 1\n",
                "unknown field",
            ),
            ("[profiles.x.ebs]\ntype = \"io1\"\n", "need an IOPS rule"),
            (
                "[profiles.x.ebs]\ntype = \"gp2\"\niops = 300\n",
                "take no IOPS",
            ),
            (
                "[profiles.x.local]\nformat = \"dir\"\ndefault_size = \"1G\"\n",
                "never by default",
            ),
            (
                "[profiles.x]\nstandbys = 9\n[profiles.x.local]\nformat = \"dir\"\n",
                "standbys = 9 is over the limit of 4",
            ),
            (
                "[profiles.x]\nstandbys = 1\nstandby_label = \"zone\"\n[profiles.x.local]\nformat = \"dir\"\n",
                "profile \"x\": standby_label: label \"zone\": expected KEY=VALUE",
            ),
        ];
        for (text, want) in cases {
            let err = Catalog::from_config_toml(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn builtins_cannot_be_removed_but_others_can() {
        let mut cat = Catalog::builtin();
        assert!(matches!(
            cat.remove("gold"),
            Err(CatalogError::RemoveBuiltin(_))
        ));
        let def = cat.get("default").unwrap().def.clone();
        cat.define("bronze", def).unwrap();
        assert_eq!(cat.remove("bronze"), Ok(true));
        assert_eq!(cat.remove("bronze"), Ok(false));
    }

    #[test]
    fn catalog_serialises_for_the_profiles_endpoint() {
        let cat = Catalog::builtin();
        let json = serde_json::to_value(cat.get("gold").unwrap()).unwrap();
        assert_eq!(json["name"], "gold");
        assert_eq!(json["builtin"], true);
        assert_eq!(json["ebs"]["type"], "io2");
        assert_eq!(json["ebs"]["iops"]["per_gib"], 30);
        assert_eq!(json["ebs"]["encrypted"], true);
        assert_eq!(json["local"]["format"], "block");
        assert_eq!(json["local"]["default_size"], "1G");
        // And a definition posted back as JSON round-trips.
        let def: ProfileDef = serde_json::from_value(serde_json::json!({
            "description": "posted",
            "ebs": {"type": "io1", "iops": {"per_gib": 50}, "encrypted": true}
        }))
        .unwrap();
        let mut cat = cat;
        cat.define("platinum", def).unwrap();
        assert!(!cat.get("platinum").unwrap().builtin);
    }
}
