//! The pure part of dir-volume size limits (issue 12, finding 7): which
//! filesystem holds a path and whether it enforces project quotas (from
//! /proc/self/mountinfo), what the operator must enable when it does not,
//! the choice of a free project id, and the reading of `xfs_quota report`.
//! No I/O here; table tests below.

use std::collections::BTreeSet;
use std::path::PathBuf;

/// Project ids daffe hands out: far above the small ids operators write in
/// /etc/projid by hand, below 2^31 (ext4 and xfs both take 32-bit ids; some
/// tools print them signed).
pub(crate) const FIRST_ID: u32 = 1 << 24;
pub(crate) const LAST_ID: u32 = (1 << 31) - 1;

/// Whether a filesystem limits projects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProjectState {
    /// Mounted with `prjquota` (`pquota`): limits are enforced.
    Enforced,
    /// Usage is counted, limits are not (`pqnoenforce`).
    AccountingOnly,
    /// No project quotas at all.
    Off,
}

/// The filesystem holding a volume's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fs {
    pub(crate) fstype: String,
    /// One of its mount points (what `xfs_quota` is pointed at).
    pub(crate) mountpoint: PathBuf,
    pub(crate) project: ProjectState,
}

impl Fs {
    /// `xfs_quota` works on ext4 only in its foreign-filesystem mode (`-f`).
    pub(crate) fn is_xfs(&self) -> bool {
        self.fstype == "xfs"
    }

    /// What the operator must do so this filesystem enforces a dir volume's
    /// size, or `None` when it already does.
    pub(crate) fn what_to_enable(&self) -> Option<String> {
        let at = self.mountpoint.display();
        match (self.fstype.as_str(), self.project) {
            (_, ProjectState::Enforced) => None,
            ("xfs", ProjectState::AccountingOnly) => Some(format!(
                "xfs at {at} counts project usage but does not enforce it: mount it with \
                 prjquota instead of pqnoenforce"
            )),
            ("xfs", ProjectState::Off) => Some(format!(
                "xfs at {at} has no project quotas: mount it with -o prjquota (in /etc/fstab; \
                 xfs reads quota options only at mount, a remount does not turn them on; the \
                 kernel needs CONFIG_XFS_QUOTA)"
            )),
            ("ext4", ProjectState::AccountingOnly) => Some(format!(
                "ext4 at {at} counts project usage but does not enforce it: mount it with \
                 -o prjquota"
            )),
            ("ext4", ProjectState::Off) => Some(format!(
                "ext4 at {at} has no project quotas: turn on its quota and project features \
                 (tune2fs -O quota,project on the unmounted filesystem) and mount it with \
                 -o prjquota (the kernel needs CONFIG_QUOTA and CONFIG_QFMT_V2)"
            )),
            (other, _) => Some(format!(
                "{other} at {at} has no project quotas: put the profile's root on xfs \
                 (mounted with prjquota) or ext4 (quota,project features, mounted with \
                 prjquota), or use a block profile"
            )),
        }
    }
}

/// One line of /proc/self/mountinfo, the fields used here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountLine {
    pub(crate) mnt_id: u64,
    /// `major:minor`.
    pub(crate) dev: (u32, u32),
    pub(crate) mountpoint: PathBuf,
    pub(crate) fstype: String,
    pub(crate) super_options: String,
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(Ok(v)) = field.get(i + 1..i + 4).map(|o| u8::from_str_radix(o, 8))
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo's text; malformed lines are skipped.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountLine> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            let (maj, min) = l.get(2)?.split_once(':')?;
            Some(MountLine {
                mnt_id: l.first()?.parse().ok()?,
                dev: (maj.parse().ok()?, min.parse().ok()?),
                mountpoint: PathBuf::from(unescape(l.get(4)?)),
                fstype: (*r.first()?).to_owned(),
                super_options: r.get(2).copied().unwrap_or("").to_owned(),
            })
        })
        .collect()
}

/// The project quota state a filesystem's super options show. xfs prints
/// `prjquota` when enforcing and `pqnoenforce` when only counting; ext4
/// prints `prjquota` when mounted with it (its quota feature alone counts).
pub(crate) fn project_state(fstype: &str, super_options: &str) -> ProjectState {
    let opts: Vec<&str> = super_options.split(',').collect();
    let has = |o: &str| opts.contains(&o);
    if has("prjquota") || has("pquota") {
        return ProjectState::Enforced;
    }
    if has("pqnoenforce") || (fstype == "ext4" && has("quota")) {
        return ProjectState::AccountingOnly;
    }
    ProjectState::Off
}

/// The filesystem of the mount `mnt_id` (from `statx`), or, when the kernel
/// gave no mount id, of the last mount of device `dev`.
pub(crate) fn filesystem_of(
    lines: &[MountLine],
    mnt_id: Option<u64>,
    dev: (u32, u32),
) -> Option<Fs> {
    let line = match mnt_id {
        Some(id) => lines.iter().find(|l| l.mnt_id == id),
        None => lines.iter().rev().find(|l| l.dev == dev),
    }?;
    Some(Fs {
        fstype: line.fstype.clone(),
        mountpoint: line.mountpoint.clone(),
        project: project_state(&line.fstype, &line.super_options),
    })
}

/// A project id for a new volume: the first free one from a start derived
/// from the volume's directory (so two hosts' ids rarely meet, and a scan
/// starts near where it ends), wrapping around in daffe's range. `in_use`
/// holds every id the filesystem has files or limits for, daffe's or not.
pub(crate) fn allocate(in_use: &BTreeSet<u32>, seed: &str) -> Option<u32> {
    let span = u64::from(LAST_ID - FIRST_ID) + 1;
    // FNV-1a: stable across Rust versions, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    allocate_from(in_use, h % span)
}

/// The first id not in `in_use` from `FIRST_ID + start`, wrapping around.
/// The look is bounded: past 2^20 taken ids in a row the filesystem is not
/// one daffe should fill further.
fn allocate_from(in_use: &BTreeSet<u32>, start: u64) -> Option<u32> {
    let span = u64::from(LAST_ID - FIRST_ID) + 1;
    (0..span)
        .take(1 << 20)
        .map(|k| (start + k) % span)
        .filter_map(|off| u32::try_from(u64::from(FIRST_ID) + off).ok())
        .find(|id| !in_use.contains(id))
}

/// One project's numbers from `xfs_quota report`, in bytes (0: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Usage {
    pub(crate) used: u64,
    pub(crate) limit: u64,
}

impl Usage {
    /// Whether the filesystem still knows the project: files charged to it or
    /// a limit set. A dquot with neither is free (xfs keeps empty ones).
    pub(crate) fn is_live(&self) -> bool {
        self.used != 0 || self.limit != 0
    }
}

/// Parses `xfs_quota -x -c 'report -p -N -n -b'`: lines `#ID used soft hard
/// warn/grace [...]`, in KiB.
pub(crate) fn parse_report(text: &str) -> Vec<(u32, Usage)> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let id = f.next()?.strip_prefix('#')?.parse().ok()?;
            let used: u64 = f.next()?.parse().ok()?;
            let soft: u64 = f.next()?.parse().ok()?;
            let hard: u64 = f.next()?.parse().ok()?;
            Some((
                id,
                Usage {
                    used: used.saturating_mul(1024),
                    limit: hard.max(soft).saturating_mul(1024),
                },
            ))
        })
        .collect()
}

/// A limit in bytes as `xfs_quota limit` takes it: whole KiB, rounded up so
/// the volume gets at least what it asked for.
pub(crate) fn limit_arg(bytes: u64) -> String {
    format!("{}k", bytes.div_ceil(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
90 22 7:2 / /var/tmp/q\\040x rw,relatime shared:50 - xfs /dev/loop2 rw,attr2,inode64,logbufs=8,prjquota
91 22 7:3 / /srv/acct rw shared:51 - xfs /dev/loop3 rw,attr2,pqnoenforce
92 22 7:4 / /srv/e4 rw shared:52 - ext4 /dev/loop4 rw,quota,prjquota
93 22 7:5 / /srv/e4q rw shared:53 - ext4 /dev/loop5 rw,quota
94 22 0:40 / /run/t rw - tmpfs tmpfs rw,size=1024k
garbage line
";

    #[test]
    fn the_state_comes_from_the_mount_the_path_is_on() {
        let lines = parse_mountinfo(MOUNTINFO);
        assert_eq!(lines.len(), 6, "the garbage line is skipped");
        // (mnt_id, dev, fstype, mountpoint, state)
        let cases = [
            (Some(22), (0, 0), "ext4", "/", ProjectState::Off),
            (
                Some(90),
                (0, 0),
                "xfs",
                "/var/tmp/q x",
                ProjectState::Enforced,
            ),
            (
                Some(91),
                (0, 0),
                "xfs",
                "/srv/acct",
                ProjectState::AccountingOnly,
            ),
            (Some(92), (0, 0), "ext4", "/srv/e4", ProjectState::Enforced),
            (
                Some(93),
                (0, 0),
                "ext4",
                "/srv/e4q",
                ProjectState::AccountingOnly,
            ),
            (Some(94), (0, 0), "tmpfs", "/run/t", ProjectState::Off),
            (None, (7, 2), "xfs", "/var/tmp/q x", ProjectState::Enforced),
        ];
        for (id, dev, fstype, mnt, state) in cases {
            let fs = filesystem_of(&lines, id, dev).unwrap();
            assert_eq!(
                (
                    fs.fstype.as_str(),
                    fs.mountpoint.to_str().unwrap(),
                    fs.project
                ),
                (fstype, mnt, state),
                "{id:?}"
            );
            assert_eq!(
                fs.what_to_enable().is_none(),
                state == ProjectState::Enforced
            );
        }
        assert_eq!(filesystem_of(&lines, Some(7), (0, 0)), None);
    }

    #[test]
    fn each_refusal_says_what_to_enable() {
        let fs = |t: &str, p| Fs {
            fstype: t.into(),
            mountpoint: "/srv".into(),
            project: p,
        };
        let cases = [
            ("xfs", ProjectState::Off, "-o prjquota"),
            (
                "xfs",
                ProjectState::AccountingOnly,
                "instead of pqnoenforce",
            ),
            ("ext4", ProjectState::Off, "tune2fs -O quota,project"),
            ("ext4", ProjectState::AccountingOnly, "-o prjquota"),
            (
                "tmpfs",
                ProjectState::Off,
                "tmpfs at /srv has no project quotas",
            ),
            ("btrfs", ProjectState::Off, "or use a block profile"),
        ];
        for (t, p, want) in cases {
            let msg = fs(t, p).what_to_enable().unwrap();
            assert!(msg.contains(want), "{t} {p:?}: {msg}");
        }
    }

    #[test]
    fn ids_are_free_ones_in_daffes_range_and_stable_per_seed() {
        let none = BTreeSet::new();
        let a = allocate(&none, "/srv/local/default/db").unwrap();
        assert!((FIRST_ID..=LAST_ID).contains(&a));
        assert_eq!(allocate(&none, "/srv/local/default/db"), Some(a));
        let b = allocate(&none, "/srv/local/default/web").unwrap();
        assert_ne!(a, b, "two seeds, two starts");
        // Taken ids are skipped, including a run of them.
        let taken: BTreeSet<u32> = (a..a.saturating_add(5).min(LAST_ID)).collect();
        let c = allocate(&taken, "/srv/local/default/db").unwrap();
        assert!(!taken.contains(&c));
        // The range wraps: a start at LAST_ID, taken, goes on at FIRST_ID.
        let top = u64::from(LAST_ID - FIRST_ID);
        assert_eq!(allocate_from(&none, top), Some(LAST_ID));
        let t = BTreeSet::from([LAST_ID, FIRST_ID]);
        assert_eq!(allocate_from(&t, top), Some(FIRST_ID + 1));
    }

    #[test]
    fn reports_parse_in_bytes_and_limits_round_up() {
        let text = "\
#0             16          0          0     00 [--------]
#16777300   20480      0   10240  00 [-none-]
#16777301       0      0       0  00 [--------]
junk
";
        let r = parse_report(text);
        assert_eq!(
            r,
            vec![
                (
                    0,
                    Usage {
                        used: 16 * 1024,
                        limit: 0
                    }
                ),
                (
                    16_777_300,
                    Usage {
                        used: 20480 * 1024,
                        limit: 10240 * 1024
                    }
                ),
                (16_777_301, Usage::default()),
            ]
        );
        assert!(!r[2].1.is_live(), "an empty dquot is a free id");
        assert_eq!(limit_arg(1024), "1k");
        assert_eq!(limit_arg(1025), "2k");
        assert_eq!(limit_arg(64 << 20), "65536k");
        assert_eq!(limit_arg(0), "0k");
    }
}
