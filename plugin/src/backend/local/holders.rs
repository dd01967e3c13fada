//! Is a block volume's filesystem released everywhere? After our umount,
//! a process that unshared its mount namespace while the volume was
//! mounted (a service with a private namespace, `ip netns exec`, `unshare
//! -m`) still holds the filesystem: it stays alive there with its dirty
//! pages, the image on disk stays stale, and the autoclear loop device
//! stays attached. Moving that image would silently lose data.
//!
//! The check: the loop devices backed by the image (`/sys/block/loopN/
//! loop/backing_file`); for each, its holders (`/sys/block/loopN/holders`,
//! e.g. device-mapper) and every mount namespace whose `mountinfo` still
//! mounts its `major:minor`, named by a process in it (pid, comm, the
//! namespace's inode). The parsers are pure and table-tested; the scan is
//! a thin walk over `/proc` and `/sys`.

use std::fmt;
use std::path::{Path, PathBuf};

/// A `major:minor` device number.
pub(crate) type DevNum = (u32, u32);

/// A mount namespace that still mounts the device, named by one process in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NsHolder {
    pub(crate) pid: u32,
    pub(crate) comm: String,
    /// The mount namespace's inode (as in `/proc/PID/ns/mnt -> mnt:[INODE]`).
    pub(crate) mnt_ns: u64,
    pub(crate) mountpoint: String,
}

/// A loop device backing the image that is not released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Held {
    /// `loop3`.
    pub(crate) device: String,
    pub(crate) dev: DevNum,
    /// Block devices stacked on it (`/sys/block/loopN/holders`).
    pub(crate) block_holders: Vec<String>,
    pub(crate) namespaces: Vec<NsHolder>,
}

impl Held {
    /// Someone still holds the filesystem (an attached loop device with no
    /// mount and no holder is merely not yet cleared).
    pub(crate) fn is_held(&self) -> bool {
        !self.block_holders.is_empty() || !self.namespaces.is_empty()
    }
}

impl fmt::Display for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "/dev/{} ({}:{}) is still ",
            self.device, self.dev.0, self.dev.1
        )?;
        let mut parts: Vec<String> = self
            .namespaces
            .iter()
            .map(|h| {
                format!(
                    "mounted at {} in mount namespace {} of pid {} ({})",
                    h.mountpoint, h.mnt_ns, h.pid, h.comm
                )
            })
            .collect();
        if !self.block_holders.is_empty() {
            parts.push(format!("held by {}", self.block_holders.join(", ")));
        }
        write!(f, "{}", parts.join("; "))
    }
}

/// Mount points of `dev` in one `mountinfo` (fields: id, parent, major:minor,
/// root, mount point, ...; the mount point octal-escaped).
pub(crate) fn mounts_of(mountinfo: &str, dev: DevNum) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let d = parse_dev(f.nth(2)?)?;
            let mp = f.nth(1)?;
            (d == dev).then(|| unescape(mp))
        })
        .collect()
}

/// `7:3` -> (7, 3).
pub(crate) fn parse_dev(s: &str) -> Option<DevNum> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// `mnt:[4026531841]` -> 4026531841.
pub(crate) fn parse_ns_link(s: &str) -> Option<u64> {
    s.strip_prefix("mnt:[")?.strip_suffix(']')?.parse().ok()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Loop devices whose backing file is `image`: (name, dev).
fn loops_backed_by(image: &Path) -> Vec<(String, DevNum)> {
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let want = image.to_string_lossy();
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                return None;
            }
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            let backing = backing.trim_end_matches('\n');
            let backing = backing.strip_suffix(" (deleted)").unwrap_or(backing);
            if backing != want {
                return None;
            }
            let dev = parse_dev(&std::fs::read_to_string(e.path().join("dev")).ok()?)?;
            Some((name, dev))
        })
        .collect()
}

/// One process per mount namespace on this host: (ns inode, pid).
fn namespaces() -> Vec<(u64, u32)> {
    let mut seen = std::collections::BTreeMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // A process that exited meanwhile (or a kernel thread) is skipped.
        let Some(ns) = std::fs::read_link(e.path().join("ns/mnt"))
            .ok()
            .and_then(|l| parse_ns_link(&l.to_string_lossy()))
        else {
            continue;
        };
        seen.entry(ns).or_insert(pid);
    }
    seen.into_iter().collect()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The loop devices backing `image` that are still attached, with who
/// holds them. Empty: the filesystem is released everywhere.
pub(crate) fn check(image: &Path) -> Vec<Held> {
    let loops = loops_backed_by(image);
    if loops.is_empty() {
        return Vec::new();
    }
    let nss = namespaces();
    loops
        .into_iter()
        .map(|(device, dev)| {
            let block_holders =
                std::fs::read_dir(PathBuf::from("/sys/block").join(&device).join("holders"))
                    .map(|rd| {
                        rd.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
            let namespaces = nss
                .iter()
                .filter_map(|&(mnt_ns, pid)| {
                    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
                    let mp = mounts_of(&info, dev).into_iter().next()?;
                    Some(NsHolder {
                        pid,
                        comm: comm(pid),
                        mnt_ns,
                        mountpoint: mp,
                    })
                })
                .collect();
            Held {
                device,
                dev,
                block_holders,
                namespaces,
            }
        })
        .collect()
}

/// What holds `image`'s filesystem, for an error message; `None` when it is
/// released everywhere.
pub(crate) fn describe(held: &[Held]) -> Option<String> {
    let held: Vec<String> = held
        .iter()
        .filter(|h| h.is_held())
        .map(ToString::to_string)
        .collect();
    (!held.is_empty()).then(|| held.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
25 22 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
812 22 7:3 / /var/lib/daffe/local/gold/db/data rw,nosuid,nodev,relatime shared:401 - ext4 /dev/loop3 rw
813 22 7:30 / /var/lib/daffe/local/gold/other/data rw,relatime - ext4 /dev/loop30 rw
901 812 7:3 /sub /mnt/with\\040space rw,relatime - ext4 /dev/loop3 rw
";

    #[test]
    fn mounts_of_finds_every_mount_of_the_device_and_only_it() {
        let table: &[(DevNum, &[&str])] = &[
            (
                (7, 3),
                &["/var/lib/daffe/local/gold/db/data", "/mnt/with space"],
            ),
            ((7, 30), &["/var/lib/daffe/local/gold/other/data"]),
            ((254, 0), &["/"]),
            ((7, 4), &[]),
            ((3, 7), &[]),
        ];
        for (dev, want) in table {
            assert_eq!(mounts_of(INFO, *dev), *want, "{dev:?}");
        }
        // Short or garbled lines are skipped, not misread.
        assert!(mounts_of("1 2 7:3\n\nx y z:w / /a\n", (7, 3)).is_empty());
    }

    #[test]
    fn device_numbers_and_namespace_links_parse() {
        assert_eq!(parse_dev("7:3\n"), Some((7, 3)));
        assert_eq!(parse_dev("259:12"), Some((259, 12)));
        assert_eq!(parse_dev("7"), None);
        assert_eq!(parse_dev("a:b"), None);
        assert_eq!(parse_ns_link("mnt:[4026531841]"), Some(4026531841));
        assert_eq!(parse_ns_link("net:[4026531841]"), None);
        assert_eq!(parse_ns_link("mnt:[x]"), None);
    }

    #[test]
    fn a_held_device_names_the_pid_comm_and_namespace() {
        let h = Held {
            device: "loop3".into(),
            dev: (7, 3),
            block_holders: vec![],
            namespaces: vec![NsHolder {
                pid: 4242,
                comm: "sleep".into(),
                mnt_ns: 4026532999,
                mountpoint: "/var/lib/daffe/local/gold/db/data".into(),
            }],
        };
        let msg = describe(std::slice::from_ref(&h)).unwrap();
        assert!(
            msg.contains("/dev/loop3 (7:3)")
                && msg.contains("pid 4242 (sleep)")
                && msg.contains("mount namespace 4026532999"),
            "{msg}"
        );
        // Attached but neither mounted nor held: released (autoclear pending).
        let free = Held {
            namespaces: vec![],
            ..h
        };
        assert!(!free.is_held());
        assert_eq!(describe(&[free]), None);
    }

    #[test]
    fn an_image_no_loop_device_backs_is_released() {
        assert!(check(Path::new("/nonexistent/daffe/image.ext4")).is_empty());
    }
}
