//! Volume names: `NAME[@PROFILE]`.
//!
//! Docker's `local` driver validates names, but a plugin receives whatever the
//! operator typed (`--volume-driver` bypasses the check), so the rules live here
//! and every refusal states the rule. Refusing fast matters: a bad name that
//! reaches a later stage has been seen to hang `docker run` (FlockerProfiles).

use std::fmt;

/// Longest NAME we accept, in bytes. NAME ends up in file names (the volume's
/// directory and image file), in EBS tags (values up to 256 characters) and in
/// the docker CLI's tables; 64-hex anonymous volume names must fit. 96 leaves
/// room for all of these and for `@PROFILE`.
pub const MAX_NAME_LEN: usize = 96;

/// Longest PROFILE, in bytes: profile names are identifiers, not descriptions.
pub const MAX_PROFILE_LEN: usize = 32;

/// The profile a bare `NAME` gets.
pub const DEFAULT_PROFILE: &str = "default";

/// The naming rule, as shown to operators in every refusal.
pub const NAME_RULE: &str = "volume names are NAME or NAME@PROFILE: NAME starts with a letter or digit \
and continues with letters, digits, '_', '.' or '-' (at most 96 characters); \
PROFILE is lowercase letters, digits, '_' or '-' (at most 32 characters)";

/// A syntactically valid volume name, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VolumeName {
    name: String,
    profile: Option<String>,
}

/// Why a volume name was refused. The messages name the offending part; the
/// caller adds [`NAME_RULE`] and the list of profiles.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("the volume name is empty")]
    Empty,
    #[error("{0:?} has an empty NAME before '@'")]
    EmptyName(String),
    #[error("{0:?} has an empty PROFILE after '@'")]
    EmptyProfile(String),
    #[error("{0:?} has more than one '@'")]
    TooManyAt(String),
    #[error("NAME {name:?} is {len} bytes long; the maximum is {MAX_NAME_LEN}")]
    NameTooLong { name: String, len: usize },
    #[error("PROFILE {profile:?} is {len} bytes long; the maximum is {MAX_PROFILE_LEN}")]
    ProfileTooLong { profile: String, len: usize },
    #[error("NAME {name:?} must start with a letter or digit")]
    BadNameStart { name: String },
    #[error("NAME {name:?} contains {ch:?}, which is not allowed")]
    BadNameChar { name: String, ch: char },
    #[error("PROFILE {profile:?} contains {ch:?}, which is not allowed")]
    BadProfileChar { profile: String, ch: char },
}

impl VolumeName {
    /// Parses `NAME` or `NAME@PROFILE`.
    pub fn parse(full: &str) -> Result<Self, NameError> {
        if full.is_empty() {
            return Err(NameError::Empty);
        }
        let mut parts = full.split('@');
        let name = parts.next().unwrap_or_default();
        let profile = parts.next();
        if parts.next().is_some() {
            return Err(NameError::TooManyAt(full.to_owned()));
        }
        if name.is_empty() {
            return Err(NameError::EmptyName(full.to_owned()));
        }
        check_name(name)?;
        let profile = match profile {
            None => None,
            Some("") => return Err(NameError::EmptyProfile(full.to_owned())),
            Some(p) => {
                check_profile_name(p)?;
                Some(p.to_owned())
            }
        };
        Ok(Self {
            name: name.to_owned(),
            profile,
        })
    }

    /// The NAME part: the volume's identity on this host.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The PROFILE part, if the name carried one.
    pub fn profile(&self) -> Option<&str> {
        self.profile.as_deref()
    }
}

impl fmt::Display for VolumeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.profile {
            Some(p) => write!(f, "{}@{}", self.name, p),
            None => f.write_str(&self.name),
        }
    }
}

fn check_name(name: &str) -> Result<(), NameError> {
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::NameTooLong {
            name: name.to_owned(),
            len: name.len(),
        });
    }
    let mut chars = name.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return Err(NameError::BadNameStart {
            name: name.to_owned(),
        });
    }
    if let Some(ch) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(NameError::BadNameChar {
            name: name.to_owned(),
            ch,
        });
    }
    Ok(())
}

/// Checks a profile name's syntax (not whether the profile exists).
pub fn check_profile_name(profile: &str) -> Result<(), NameError> {
    if profile.len() > MAX_PROFILE_LEN {
        return Err(NameError::ProfileTooLong {
            profile: profile.to_owned(),
            len: profile.len(),
        });
    }
    if profile.is_empty() {
        return Err(NameError::EmptyProfile(profile.to_owned()));
    }
    if let Some(ch) = profile
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')))
    {
        return Err(NameError::BadProfileChar {
            profile: profile.to_owned(),
            ch,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("db", "db", None),
            ("db@gold", "db", Some("gold")),
            ("cheapvolume@default", "cheapvolume", Some("default")),
            ("a", "a", None),
            ("0", "0", None),
            ("My.Vol_1-x@silver-2_b", "My.Vol_1-x", Some("silver-2_b")),
            ("a..b@gold", "a..b", Some("gold")),
            // Anonymous volumes: 64 hex characters.
            (
                "3f1c0a9b8e7d6c5b4a3928171615141312111009080706050403020100ffeedd",
                "3f1c0a9b8e7d6c5b4a3928171615141312111009080706050403020100ffeedd",
                None,
            ),
        ];
        for (input, name, profile) in cases {
            let v = VolumeName::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(v.name(), *name, "{input}");
            assert_eq!(v.profile(), *profile, "{input}");
            assert_eq!(v.to_string(), *input);
        }
    }

    #[test]
    fn refuses_invalid_names() {
        let long_name = "a".repeat(MAX_NAME_LEN + 1);
        let long_profile = format!("a@{}", "b".repeat(MAX_PROFILE_LEN + 1));
        let cases: Vec<(&str, NameError)> = vec![
            ("", NameError::Empty),
            ("vol@", NameError::EmptyProfile("vol@".into())),
            ("@gold", NameError::EmptyName("@gold".into())),
            ("@", NameError::EmptyName("@".into())),
            ("a@b@c", NameError::TooManyAt("a@b@c".into())),
            (
                "a/b@gold",
                NameError::BadNameChar {
                    name: "a/b".into(),
                    ch: '/',
                },
            ),
            ("..@gold", NameError::BadNameStart { name: "..".into() }),
            (
                ".hidden",
                NameError::BadNameStart {
                    name: ".hidden".into(),
                },
            ),
            ("-x", NameError::BadNameStart { name: "-x".into() }),
            (
                "cheapvolume@/data",
                NameError::BadProfileChar {
                    profile: "/data".into(),
                    ch: '/',
                },
            ),
            (
                "db@Gold",
                NameError::BadProfileChar {
                    profile: "Gold".into(),
                    ch: 'G',
                },
            ),
            (
                "d b",
                NameError::BadNameChar {
                    name: "d b".into(),
                    ch: ' ',
                },
            ),
            (
                "dé",
                NameError::BadNameChar {
                    name: "dé".into(),
                    ch: 'é',
                },
            ),
            (
                &long_name,
                NameError::NameTooLong {
                    name: long_name.clone(),
                    len: MAX_NAME_LEN + 1,
                },
            ),
            (
                &long_profile,
                NameError::ProfileTooLong {
                    profile: "b".repeat(MAX_PROFILE_LEN + 1),
                    len: MAX_PROFILE_LEN + 1,
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(VolumeName::parse(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn max_length_name_is_accepted() {
        let name = "a".repeat(MAX_NAME_LEN);
        assert!(VolumeName::parse(&name).is_ok());
        let full = format!("{name}@{}", "g".repeat(MAX_PROFILE_LEN));
        assert!(VolumeName::parse(&full).is_ok());
    }
}
