//! Moving an existing volume to other settings (`daffe volume set-profile`,
//! or a profile redefined through the control API): what can be applied in
//! place, and what must be refused because the backend cannot do it.
//!
//! Pure: [`plan`] compares the volume's settings with what its new profile
//! resolves to (at the volume's current size) and returns the settings the
//! record will hold plus the one remote change to make (EBS ModifyVolume:
//! type, IOPS, throughput, all in one call so a change is never half
//! applied), or a refusal naming the reason. The backend applies the plan.
//!
//! Rules:
//! - local: a `dir` stays a `dir`, a `block` stays a `block` with the same
//!   filesystem; the record's profile changes, the data stays where it is
//!   (root, size and filesystem are the volume's, not the profile's).
//! - EBS: type, IOPS and throughput change live; size stays; encryption and
//!   the KMS key cannot change in place (refused: migrate through a snapshot).
//! - Between backends: refused (the data would have to move).

use crate::aws::Modify;
use profiles::{EbsSettings, EbsVolumeType, LocalFormat, LocalSettings, Settings};

/// What a change does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SettingsChange {
    /// The settings the record holds once applied.
    pub(crate) settings: Settings,
    /// The EBS ModifyVolume to make, if any.
    pub(crate) modify: Option<Modify>,
    /// What changes, for the operator (`type gp3 -> io2`, ...).
    pub(crate) notes: Vec<String>,
}

/// A change the backend cannot make.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refused(pub(crate) String);

/// Plans moving a volume from `from` to `to` (resolved at its current size).
pub(crate) fn plan(from: &Settings, to: &Settings) -> Result<SettingsChange, Refused> {
    match (from, to) {
        (Settings::Local(a), Settings::Local(b)) => plan_local(a, b),
        (Settings::Ebs(a), Settings::Ebs(b)) => plan_ebs(a, b),
        (Settings::Local(_), Settings::Ebs(_)) | (Settings::Ebs(_), Settings::Local(_)) => {
            Err(Refused(
                "the new profile stores volumes on another backend; the data would have to \
                 move (create a volume with that profile and copy, or migrate)"
                    .into(),
            ))
        }
    }
}

fn format_name(f: LocalFormat) -> &'static str {
    match f {
        LocalFormat::Dir => "dir",
        LocalFormat::Block => "block",
    }
}

fn plan_local(a: &LocalSettings, b: &LocalSettings) -> Result<SettingsChange, Refused> {
    if a.format != b.format {
        return Err(Refused(format!(
            "the volume is a local {} volume and the new profile makes {} volumes; \
             a local volume cannot change format in place (create a new volume and copy)",
            format_name(a.format),
            format_name(b.format)
        )));
    }
    if a.format == LocalFormat::Block && a.filesystem != b.filesystem {
        let fs = |s: &LocalSettings| s.filesystem.map_or("ext4", |f| f.as_str());
        return Err(Refused(format!(
            "the volume's filesystem is {} and the new profile uses {}; a filesystem cannot \
             be converted in place",
            fs(a),
            fs(b)
        )));
    }
    // The data stays where it is: the record keeps the volume's own root,
    // size and filesystem.
    Ok(SettingsChange {
        settings: Settings::Local(a.clone()),
        modify: None,
        notes: Vec::new(),
    })
}

/// IOPS a volume of these settings has: the setting, or gp3's baseline.
fn effective_iops(s: &EbsSettings) -> Option<u32> {
    let l = s.volume_type.limits().iops?;
    s.iops.or(l.baseline)
}

fn effective_throughput(s: &EbsSettings) -> Option<u32> {
    let l = s.volume_type.limits().throughput?;
    Some(s.throughput.unwrap_or(l.baseline))
}

fn show(v: Option<u32>) -> String {
    v.map_or_else(|| "none".into(), |v| v.to_string())
}

fn plan_ebs(a: &EbsSettings, b: &EbsSettings) -> Result<SettingsChange, Refused> {
    if a.encrypted != b.encrypted {
        let (from, to) = if a.encrypted {
            ("encrypted", "unencrypted")
        } else {
            ("unencrypted", "encrypted")
        };
        return Err(Refused(format!(
            "the volume is {from} and the new profile makes {to} volumes; EBS cannot change a \
             volume's encryption in place (move the data through a snapshot: daffe migrate \
             --via-ebs, or create a new volume and copy)"
        )));
    }
    if a.encrypted && a.kms_key_id != b.kms_key_id {
        return Err(Refused(format!(
            "the volume is encrypted with KMS key {} and the new profile uses {}; EBS cannot \
             re-encrypt a volume in place",
            a.kms_key_id.as_deref().unwrap_or("(account default)"),
            b.kms_key_id.as_deref().unwrap_or("(account default)")
        )));
    }
    if a.size_gib != b.size_gib {
        return Err(Refused(format!(
            "the volume is {} GiB and the new profile would make it {} GiB; set-profile does \
             not resize",
            a.size_gib, b.size_gib
        )));
    }
    let mut m = Modify::default();
    let mut notes = Vec::new();
    let type_changes = a.volume_type != b.volume_type;
    if type_changes {
        m.volume_type = Some(b.volume_type.as_str().to_owned());
        notes.push(format!("type {} -> {}", a.volume_type, b.volume_type));
    }
    let (ia, ib) = (effective_iops(a), effective_iops(b));
    // io1/io2 need IOPS with a type change; otherwise send it only when it
    // differs (AWS keeps the value within a type and gives gp3 its baseline
    // across types, which is what `effective_iops` of the target says).
    let needs_iops =
        type_changes && matches!(b.volume_type, EbsVolumeType::Io1 | EbsVolumeType::Io2);
    if ib.is_some() && (ia != ib || needs_iops) {
        m.iops = ib;
        if ia != ib {
            notes.push(format!("iops {} -> {}", show(ia), show(ib)));
        }
    }
    let (ta, tb) = (effective_throughput(a), effective_throughput(b));
    if tb.is_some() && ta != tb {
        m.throughput = tb;
        notes.push(format!("throughput {} -> {} MiB/s", show(ta), show(tb)));
    }
    if a.keep_on_remove != b.keep_on_remove {
        notes.push(format!(
            "keep_on_remove {} -> {}",
            a.keep_on_remove, b.keep_on_remove
        ));
    }
    Ok(SettingsChange {
        settings: Settings::Ebs(b.clone()),
        modify: (!m.is_empty()).then_some(m),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiles::{ByteSize, Filesystem};
    use std::path::PathBuf;

    fn ebs(ty: EbsVolumeType, iops: Option<u32>, tp: Option<u32>, enc: bool) -> EbsSettings {
        EbsSettings {
            volume_type: ty,
            size_gib: 100,
            iops,
            throughput: tp,
            encrypted: enc,
            kms_key_id: None,
            keep_on_remove: false,
        }
    }

    fn local(format: LocalFormat, fs: Option<Filesystem>, root: &str) -> Settings {
        Settings::Local(LocalSettings {
            root: PathBuf::from(root),
            format,
            size: (format == LocalFormat::Block).then_some(ByteSize(1 << 30)),
            filesystem: fs,
        })
    }

    #[test]
    fn ebs_changes_become_one_modify_volume() {
        use EbsVolumeType::*;
        // (from, to, expected modify (type, iops, throughput))
        let cases = [
            (
                ebs(Gp3, None, None, true),
                ebs(Io2, Some(3_000), None, true),
                Some((Some("io2"), Some(3_000), None)),
            ),
            (
                ebs(Io2, Some(3_000), None, true),
                ebs(Io2, Some(6_000), None, true),
                Some((None, Some(6_000), None)),
            ),
            (
                ebs(Io2, Some(3_000), None, false),
                ebs(Gp3, None, None, false),
                // gp3's 3,000 baseline equals the io2 IOPS: not sent; its
                // throughput baseline is (AWS's default too, said outright).
                Some((Some("gp3"), None, Some(125))),
            ),
            (
                ebs(Gp3, Some(6_000), Some(500), false),
                ebs(Gp3, None, None, false),
                // Within gp3 AWS keeps values: send the baseline explicitly.
                Some((None, Some(3_000), Some(125))),
            ),
            (
                ebs(Gp3, None, None, false),
                ebs(Gp2, None, None, false),
                Some((Some("gp2"), None, None)),
            ),
            (
                ebs(Gp3, None, None, false),
                ebs(Gp3, None, None, false),
                None,
            ),
            (
                ebs(Io1, Some(1_000), None, true),
                ebs(Io2, Some(1_000), None, true),
                Some((Some("io2"), Some(1_000), None)),
            ),
        ];
        for (from, to, want) in cases {
            let c = plan(&Settings::Ebs(from.clone()), &Settings::Ebs(to.clone())).unwrap();
            let got = c
                .modify
                .as_ref()
                .map(|m| (m.volume_type.as_deref(), m.iops, m.throughput));
            assert_eq!(got, want, "{from:?} -> {to:?}");
            assert_eq!(c.settings, Settings::Ebs(to));
        }
    }

    #[test]
    fn ebs_refusals_say_why() {
        use EbsVolumeType::*;
        let cases = [
            (
                ebs(Gp3, None, None, false),
                ebs(Io2, Some(300), None, true),
                "unencrypted",
            ),
            (
                ebs(Io2, Some(300), None, true),
                ebs(Gp3, None, None, false),
                "cannot change a volume's encryption",
            ),
            (
                ebs(Gp3, None, None, true),
                EbsSettings {
                    kms_key_id: Some("alias/other".into()),
                    ..ebs(Gp3, None, None, true)
                },
                "alias/other",
            ),
            (
                ebs(Gp3, None, None, false),
                EbsSettings {
                    size_gib: 200,
                    ..ebs(Gp3, None, None, false)
                },
                "does not resize",
            ),
        ];
        for (from, to, want) in cases {
            let e = plan(&Settings::Ebs(from), &Settings::Ebs(to))
                .unwrap_err()
                .0;
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn keep_on_remove_is_a_record_only_change() {
        let a = ebs(EbsVolumeType::Gp3, None, None, false);
        let b = EbsSettings {
            keep_on_remove: true,
            ..a.clone()
        };
        let c = plan(&Settings::Ebs(a), &Settings::Ebs(b)).unwrap();
        assert!(c.modify.is_none());
        assert_eq!(c.notes, ["keep_on_remove false -> true"]);
    }

    #[test]
    fn local_volumes_keep_their_data_and_format() {
        let dir_a = local(LocalFormat::Dir, None, "/d/local/default");
        let dir_b = local(LocalFormat::Dir, None, "/d/local/bronze");
        let c = plan(&dir_a, &dir_b).unwrap();
        assert_eq!(c.settings, dir_a, "root stays where the data is");
        assert!(c.modify.is_none());
        let block = local(LocalFormat::Block, Some(Filesystem::Ext4), "/d/local/gold");
        let e = plan(&dir_a, &block).unwrap_err().0;
        assert!(
            e.contains("local dir volume") && e.contains("block volumes"),
            "{e}"
        );
        let xfs = local(LocalFormat::Block, Some(Filesystem::Xfs), "/d/local/x");
        assert!(plan(&block, &xfs).unwrap_err().0.contains("xfs"));
        let e = plan(
            &dir_a,
            &Settings::Ebs(ebs(EbsVolumeType::Gp3, None, None, false)),
        )
        .unwrap_err()
        .0;
        assert!(e.contains("another backend"), "{e}");
    }
}
