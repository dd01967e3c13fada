//! A Create request: the docker volume name plus `-o KEY=VALUE` options
//! (`docker volume create -o`, compose `driver_opts`), validated against the
//! catalog into a [`VolumeRequest`].

use crate::catalog::{Catalog, ProfileList};
use crate::name::{DEFAULT_PROFILE, NAME_RULE, NameError, VolumeName};
use crate::size::{ByteSize, SizeError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Options a Create accepts, in the order the docs list them.
pub const VALID_OPTIONS: &[&str] = &["profile", "size"];

/// A validated Create request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRequest {
    /// The name exactly as docker sent it (`db@gold`): what Get/List echo.
    pub docker_name: String,
    /// NAME: the volume's identity on this host.
    pub name: String,
    /// The profile, from `@PROFILE`, `-o profile=` or `default`.
    pub profile: String,
    /// `-o size=`, if given.
    pub size: Option<ByteSize>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("invalid volume name: {source}; {NAME_RULE}; profiles: {known}")]
    Name {
        source: NameError,
        known: ProfileList,
    },
    #[error("unknown profile {profile:?} in {docker_name:?}; profiles: {known}")]
    UnknownProfile {
        docker_name: String,
        profile: String,
        known: ProfileList,
    },
    #[error(
        "volume {docker_name:?} names profile {in_name:?} but option profile={in_opts:?}; give one, or the same in both"
    )]
    ProfileConflict {
        docker_name: String,
        in_name: String,
        in_opts: String,
    },
    #[error("unknown option {key:?}; valid options: {}", VALID_OPTIONS.join(", "))]
    UnknownOption { key: String },
    #[error("option size: {0}")]
    Size(#[from] SizeError),
}

impl Catalog {
    /// Validates a Create request. Refusals name the rule, the valid options
    /// or the existing profiles, so the operator can fix the command at once.
    pub fn request(
        &self,
        docker_name: &str,
        opts: &BTreeMap<String, String>,
    ) -> Result<VolumeRequest, RequestError> {
        let parsed = VolumeName::parse(docker_name).map_err(|source| RequestError::Name {
            source,
            known: self.names(),
        })?;
        let mut opt_profile = None;
        let mut size = None;
        for (key, value) in opts {
            match key.as_str() {
                "profile" => opt_profile = Some(value.as_str()),
                "size" => size = Some(value.parse::<ByteSize>()?),
                _ => return Err(RequestError::UnknownOption { key: key.clone() }),
            }
        }
        let profile = match (parsed.profile(), opt_profile) {
            (Some(a), Some(b)) if a != b => {
                return Err(RequestError::ProfileConflict {
                    docker_name: docker_name.to_owned(),
                    in_name: a.to_owned(),
                    in_opts: b.to_owned(),
                });
            }
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => DEFAULT_PROFILE,
        };
        if self.get(profile).is_none() {
            return Err(RequestError::UnknownProfile {
                docker_name: docker_name.to_owned(),
                profile: profile.to_owned(),
                known: self.names(),
            });
        }
        Ok(VolumeRequest {
            docker_name: docker_name.to_owned(),
            name: parsed.name().to_owned(),
            profile: profile.to_owned(),
            size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size::GIB;

    type Opts<'a> = &'a [(&'a str, &'a str)];

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn accepted_requests() {
        let cat = Catalog::builtin();
        // (name, opts, NAME, profile, size)
        let cases: &[(&str, Opts, &str, &str, Option<u64>)] = &[
            ("db", &[], "db", "default", None),
            ("db@gold", &[], "db", "gold", None),
            ("db", &[("profile", "gold")], "db", "gold", None),
            ("db@gold", &[("profile", "gold")], "db", "gold", None),
            ("db@gold", &[("size", "20G")], "db", "gold", Some(20 * GIB)),
            ("cheapvolume@default", &[], "cheapvolume", "default", None),
        ];
        for (name, o, want_name, want_profile, want_size) in cases {
            let r = cat
                .request(name, &opts(o))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(r.docker_name, *name);
            assert_eq!(r.name, *want_name);
            assert_eq!(r.profile, *want_profile);
            assert_eq!(r.size, want_size.map(ByteSize));
        }
    }

    #[test]
    fn refusals_state_the_rule_and_the_profiles() {
        let cat = Catalog::builtin();
        let long = format!("{}@gold", "x".repeat(97));
        let cases: &[(&str, Opts, &[&str])] = &[
            (
                "vol@",
                &[],
                &["empty PROFILE", NAME_RULE, "profiles: default, gold"],
            ),
            (
                "@gold",
                &[],
                &["empty NAME", NAME_RULE, "profiles: default, gold"],
            ),
            ("a@b@c", &[], &["more than one '@'", NAME_RULE]),
            ("a/b@gold", &[], &["'/'", NAME_RULE]),
            ("..@gold", &[], &["must start with a letter or digit"]),
            (&long, &[], &["maximum is 96"]),
            (
                "db@silver",
                &[],
                &["unknown profile \"silver\"", "profiles: default, gold"],
            ),
            (
                "db",
                &[("profile", "silver")],
                &["unknown profile \"silver\""],
            ),
            (
                "db@gold",
                &[("profile", "default")],
                &["names profile \"gold\" but option profile=\"default\""],
            ),
            (
                "db",
                &[("iops", "100")],
                &["unknown option \"iops\"", "valid options: profile, size"],
            ),
            ("db@gold", &[("size", "lots")], &["invalid size \"lots\""]),
        ];
        for (name, o, wants) in cases {
            let err = cat.request(name, &opts(o)).unwrap_err().to_string();
            for want in *wants {
                assert!(err.contains(want), "{name} {o:?}: {err:?} lacks {want:?}");
            }
        }
    }
}
