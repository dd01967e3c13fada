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
    /// The namespace is this process's own: the unmount here failed or has
    /// not happened, and any process of the host may be what uses it (the
    /// first process found in it, often pid 1 or 2, says nothing).
    pub(crate) own: bool,
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

impl fmt::Display for NsHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.own {
            return write!(
                f,
                "{} in this host's own mount namespace (not unmounted here: a process still \
                 uses it; `fuser -vm {}` names it)",
                self.mountpoint, self.mountpoint
            );
        }
        write!(
            f,
            "{} in mount namespace {} of pid {} ({})",
            self.mountpoint, self.mnt_ns, self.pid, self.comm
        )
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
            .map(|h| format!("mounted at {h}"))
            .collect();
        if !self.block_holders.is_empty() {
            parts.push(format!("held by {}", self.block_holders.join(", ")));
        }
        write!(f, "{}", parts.join("; "))
    }
}

/// One `mountinfo` line's fields this module uses (fields: id, parent,
/// major:minor, root, mount point, ...; root and mount point
/// octal-escaped). Short or garbled lines are skipped, not misread.
struct MountLine {
    dev: DevNum,
    root: String,
    mountpoint: String,
}

fn mount_lines(mountinfo: &str) -> impl Iterator<Item = MountLine> + '_ {
    mountinfo.lines().filter_map(|l| {
        let mut f = l.split(' ');
        let dev = parse_dev(f.nth(2)?)?;
        let root = unescape(f.next()?);
        let mountpoint = unescape(f.next()?);
        Some(MountLine {
            dev,
            root,
            mountpoint,
        })
    })
}

/// Mount points of `dev` in one `mountinfo`.
pub(crate) fn mounts_of(mountinfo: &str, dev: DevNum) -> Vec<String> {
    mount_lines(mountinfo)
        .filter(|m| m.dev == dev)
        .map(|m| m.mountpoint)
        .collect()
}

/// Where `dir` (absolute, no `..`) lies in its filesystem, by our own
/// `mountinfo`: the device of the mount holding it (the longest mount point
/// that is a whole-component prefix of it) and its path from that
/// filesystem's root (the mount's root joined with the rest of `dir`).
pub(crate) fn fs_path_of(mountinfo: &str, dir: &str) -> Option<(DevNum, String)> {
    let mut best: Option<(usize, DevNum, String)> = None;
    for MountLine {
        dev,
        root,
        mountpoint: mp,
    } in mount_lines(mountinfo)
    {
        let rest = if mp == "/" {
            Some(dir.trim_start_matches('/'))
        } else {
            dir.strip_prefix(mp.as_str())
                .filter(|r| r.is_empty() || r.starts_with('/'))
                .map(|r| r.trim_start_matches('/'))
        };
        let Some(rest) = rest else { continue };
        // The last of equal mount points is the one on top.
        if best.as_ref().is_none_or(|(len, _, _)| mp.len() >= *len) {
            let path = match (root.trim_end_matches('/'), rest) {
                ("", "") => "/".to_owned(),
                (r, "") => r.to_owned(),
                (r, rest) => format!("{r}/{rest}"),
            };
            best = Some((mp.len(), dev, path));
        }
    }
    best.map(|(_, dev, path)| (dev, path))
}

/// Mount points in one `mountinfo` that show `fs_path` of device `dev`, or
/// a directory under it: bind mounts of that directory (a container's
/// volume mount is one).
pub(crate) fn binds_of(mountinfo: &str, dev: DevNum, fs_path: &str) -> Vec<String> {
    mount_lines(mountinfo)
        .filter(|m| {
            m.dev == dev
                && (m.root == fs_path
                    || m.root
                        .strip_prefix(fs_path)
                        .is_some_and(|r| r.starts_with('/')))
        })
        .map(|m| m.mountpoint)
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
            let namespaces = showing(&nss, |info| mounts_of(info, dev));
            Held {
                device,
                dev,
                block_holders,
                namespaces,
            }
        })
        .collect()
}

/// The mount namespaces that bind-mount the directory `dir` (a dir
/// volume's data) or a directory under it, one entry per namespace. Empty:
/// no container (nor anything else) still has it mounted. `None`: where
/// `dir` lies cannot be read from our own `mountinfo`, so nothing is
/// proven.
pub(crate) fn check_dir(dir: &Path) -> Option<Vec<NsHolder>> {
    let ours = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let (dev, fs_path) = fs_path_of(&ours, &dir.to_string_lossy())?;
    Some(showing(&namespaces(), |info| binds_of(info, dev, &fs_path)))
}

/// The namespaces of `nss` whose `mountinfo` `find` finds a mount point in,
/// each named by its process and the first such mount point.
fn showing(nss: &[(u64, u32)], find: impl Fn(&str) -> Vec<String>) -> Vec<NsHolder> {
    let own = std::fs::read_link("/proc/self/ns/mnt")
        .ok()
        .and_then(|l| parse_ns_link(&l.to_string_lossy()));
    nss.iter()
        .filter_map(|&(mnt_ns, pid)| {
            let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
            let mp = find(&info).into_iter().next()?;
            Some(NsHolder {
                pid,
                comm: comm(pid),
                mnt_ns,
                mountpoint: mp,
                own: own == Some(mnt_ns),
            })
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
    fn a_directory_is_found_in_its_filesystem_through_the_mount_holding_it() {
        let ours = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 254:16 / /var/lib/daffe rw,relatime - ext4 /dev/vdb rw
31 22 254:16 /srv /srv rw,relatime - ext4 /dev/vdb rw
32 30 7:3 / /var/lib/daffe/local/gold/db/data rw - ext4 /dev/loop3 rw
33 22 0:40 /sub /mnt/with\\040space rw - btrfs /dev/vdc rw
";
        let table: &[(&str, Option<(DevNum, &str)>)] = &[
            ("/etc/x", Some(((254, 0), "/etc/x"))),
            ("/var/lib/daffe", Some(((254, 16), "/"))),
            (
                "/var/lib/daffe/local/default/v/data",
                Some(((254, 16), "/local/default/v/data")),
            ),
            // A name that only starts like a mount point is not under it.
            ("/var/lib/daffe2/v", Some(((254, 0), "/var/lib/daffe2/v"))),
            ("/srv/a/b", Some(((254, 16), "/srv/a/b"))),
            ("/var/lib/daffe/local/gold/db/data/x", Some(((7, 3), "/x"))),
            ("/mnt/with space/d", Some(((0, 40), "/sub/d"))),
            ("/", Some(((254, 0), "/"))),
        ];
        for (dir, want) in table {
            let got = fs_path_of(ours, dir);
            assert_eq!(got.as_ref().map(|(d, p)| (*d, p.as_str())), *want, "{dir}");
        }
        assert_eq!(fs_path_of("", "/x"), None);
    }

    #[test]
    fn binds_of_a_directory_are_its_mounts_in_a_containers_namespace() {
        // A container's namespace: its rootfs (overlay), the volume's
        // directory bound at /data, a file under it bound at /etc/x, another
        // volume whose name starts the same, and the device's root.
        let theirs = "\
500 400 0:77 / / rw - overlay overlay rw
501 500 254:16 /local/default/v/data /data rw - ext4 /dev/vdb rw
502 500 254:16 /local/default/v/data/conf /etc/x rw - ext4 /dev/vdb rw
503 500 254:16 /local/default/v/data2 /other rw - ext4 /dev/vdb rw
504 500 254:16 / /host rw - ext4 /dev/vdb rw
505 500 254:0 /local/default/v/data /wrongdev rw - ext4 /dev/vda rw
";
        assert_eq!(
            binds_of(theirs, (254, 16), "/local/default/v/data"),
            ["/data", "/etc/x"]
        );
        assert!(binds_of(theirs, (254, 16), "/local/default/w/data").is_empty());
        assert!(binds_of("1 2 x / /a\n", (254, 16), "/").is_empty());
    }

    /// Root: a directory bound in another mount namespace (as a container's
    /// volume mount is) is held, by that namespace's process, until it exits.
    #[test]
    fn a_directory_bound_in_another_namespace_is_held_until_that_namespace_goes() {
        let d = tempfile::tempdir().unwrap();
        let (data, target) = (d.path().join("data"), d.path().join("t"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&target).unwrap();
        assert_eq!(check_dir(&data).map(|h| h.len()), Some(0));
        let mut c = std::process::Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount --bind {} {} && exec sleep 60",
                data.display(),
                target.display()
            ))
            .spawn()
            .unwrap();
        let t = std::time::Instant::now();
        let held = loop {
            let h = check_dir(&data).unwrap();
            if !h.is_empty() {
                break h;
            }
            assert!(t.elapsed().as_secs() < 10, "never seen held");
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        assert_eq!(held.len(), 1, "{held:?}");
        assert_eq!(held[0].pid, c.id(), "{held:?}");
        assert_eq!(held[0].mountpoint, target.display().to_string());
        // Its sibling is not held, nor the parent the bind is under.
        assert_eq!(check_dir(&target).map(|h| h.len()), Some(0));
        c.kill().unwrap();
        c.wait().unwrap();
        assert_eq!(check_dir(&data).map(|h| h.len()), Some(0));
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
                own: false,
            }],
        };
        let msg = describe(std::slice::from_ref(&h)).unwrap();
        assert!(
            msg.contains("/dev/loop3 (7:3)")
                && msg.contains("pid 4242 (sleep)")
                && msg.contains("mount namespace 4026532999"),
            "{msg}"
        );
        // Still mounted in our own namespace: the first process found there
        // (kthreadd, stop 43) is not named as the holder.
        let mut here = h.clone();
        here.namespaces[0].own = true;
        here.namespaces[0].pid = 2;
        here.namespaces[0].comm = "kthreadd".into();
        let msg = describe(&[here]).unwrap();
        assert!(
            msg.contains("this host's own mount namespace")
                && msg.contains("fuser -vm /var/lib/daffe/local/gold/db/data")
                && !msg.contains("kthreadd"),
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
