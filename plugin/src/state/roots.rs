//! Local profile roots stay under the data root (issue 12, finding 10).
//! A profile's root is where Create makes directories and Remove deletes
//! them; through the control socket it could point anywhere (`/etc`), so
//! every local root, from the config file or defined at run time, must be
//! a path inside `DATA_ROOT` (not the data root itself, nor its `state`
//! folder). The data root is private to root (0700), so nothing below it
//! can be swapped for a symlink by another user; the check is on the path
//! as written, with `..` refused.

use profiles::{Catalog, ProfileDef};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error(
    "profile {profile:?}: local root {} is outside the data root {}; local volumes live \
     under the data root (omit root for DATA_ROOT/local/{profile}, or give a path inside it)",
    root.display(), data_root.display()
)]
pub(crate) struct RootOutside {
    pub(crate) profile: String,
    pub(crate) root: PathBuf,
    pub(crate) data_root: PathBuf,
}

/// Whether `root` is inside `data_root`, written without `.` or `..`.
pub(crate) fn confined(root: &Path, data_root: &Path) -> bool {
    if root
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return false;
    }
    let Ok(rest) = root.strip_prefix(data_root) else {
        return false;
    };
    match rest.components().next() {
        None => false,
        Some(first) => first != Component::Normal("state".as_ref()),
    }
}

/// Checks one profile's local root (an unset root is `DATA_ROOT/local/NAME`).
pub(crate) fn check_def(name: &str, def: &ProfileDef, data_root: &Path) -> Result<(), RootOutside> {
    match def.local.as_ref().and_then(|l| l.root.as_deref()) {
        Some(root) if !confined(root, data_root) => Err(RootOutside {
            profile: name.to_owned(),
            root: root.to_owned(),
            data_root: data_root.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Checks every profile of `cat`.
pub(crate) fn check_catalog(cat: &Catalog, data_root: &Path) -> Result<(), RootOutside> {
    cat.iter()
        .try_for_each(|p| check_def(&p.name, &p.def, data_root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_must_be_inside_the_data_root() {
        let d = Path::new("/var/lib/daffe");
        for (root, ok) in [
            ("/var/lib/daffe/local/silver", true),
            ("/var/lib/daffe/fast", true),
            ("/var/lib/daffe//local/x/", true),
            ("/var/lib/daffe", false),
            ("/var/lib/daffe/", false),
            ("/var/lib/daffe/state", false),
            ("/var/lib/daffe/state/x", false),
            ("/var/lib/daffe/../../etc", false),
            ("/var/lib/daffe/local/./x", true), // `.` inside a path is dropped by components()
            ("/var/lib/daffe-other/x", false),
            ("/etc", false),
            ("/", false),
            ("relative/x", false),
        ] {
            assert_eq!(confined(Path::new(root), d), ok, "{root}");
        }
    }

    #[test]
    fn a_profile_with_a_root_outside_is_refused_with_its_names() {
        let def: ProfileDef = serde_json::from_value(serde_json::json!({
            "local": { "format": "dir", "root": "/etc" }
        }))
        .unwrap();
        let err = check_def("evil", &def, Path::new("/var/lib/daffe")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("\"evil\"") && msg.contains("/etc") && msg.contains("/var/lib/daffe"),
            "{msg}"
        );
        let def: ProfileDef = serde_json::from_value(serde_json::json!({
            "local": { "format": "dir" }
        }))
        .unwrap();
        check_def("plain", &def, Path::new("/var/lib/daffe")).unwrap();
        check_catalog(&Catalog::builtin(), Path::new("/var/lib/daffe")).unwrap();
    }
}
