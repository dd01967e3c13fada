//! Who may talk to the control socket (issue 12, finding 10): root, and the
//! members of the group `--socket-group` names, if any. The socket's mode
//! (0600, or 0660 with that group) keeps others out of the file; the
//! peer-credential check (`SO_PEERCRED`) is the second lock, for a socket
//! whose mode or directory an admin loosened, or a descriptor passed on.
//!
//! Pure parts (the decision, `/etc/group` and `/proc/PID/status` parsing)
//! are separate from the reads so they are table-tested.

use std::path::Path;

/// The peer's identity, from `SO_PEERCRED` (taken at connect time, so a
/// peer cannot change it later) and its supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peer {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) pid: Option<i32>,
    /// Supplementary groups (from `/proc/PID/status`; empty if unreadable).
    pub(crate) groups: Vec<u32>,
}

/// Root always; the socket group's members when one is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerPolicy {
    pub(crate) group: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    #[error("socket group {0:?}: no such group in /etc/group")]
    NoSuchGroup(String),
    #[error("reading /etc/group for socket group {group:?}: {source}")]
    Read {
        group: String,
        source: std::io::Error,
    },
}

impl PeerPolicy {
    /// `None` when `peer` may use the socket, else why not (sent to the peer).
    pub(crate) fn refusal(&self, peer: &Peer) -> Option<String> {
        if peer.uid == 0 {
            return None;
        }
        if let Some(g) = self.group
            && (peer.gid == g || peer.groups.contains(&g))
        {
            return None;
        }
        let who = format!("uid {} gid {}", peer.uid, peer.gid);
        Some(match self.group {
            Some(g) => format!(
                "the daffe control socket refuses {who}: only root and members of group {g} \
                 (--socket-group) may use it"
            ),
            None => format!(
                "the daffe control socket refuses {who}: only root may use it \
                 (start the daemon with --socket-group to let a group in)"
            ),
        })
    }
}

/// A group given by name or number to its gid.
pub(crate) fn resolve_group(group: &str) -> Result<u32, PeerError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string("/etc/group").map_err(|source| PeerError::Read {
        group: group.to_owned(),
        source,
    })?;
    gid_in_group_file(&text, group).ok_or_else(|| PeerError::NoSuchGroup(group.to_owned()))
}

/// `name:password:gid:members` lines.
fn gid_in_group_file(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next() == Some(name))
            .then(|| f.nth(1).and_then(|g| g.trim().parse().ok()))
            .flatten()
    })
}

/// The `Groups:` line of `/proc/PID/status`.
fn groups_in_status(text: &str) -> Vec<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The peer of a connected unix stream.
pub(crate) fn peer_of(stream: &tokio::net::UnixStream) -> std::io::Result<Peer> {
    let cred = stream.peer_cred()?;
    let pid = cred.pid();
    // Supplementary groups are not in SO_PEERCRED: read them from the
    // peer's process. A peer that exits first simply has none.
    let groups = pid
        .and_then(|p| {
            std::fs::read_to_string(Path::new("/proc").join(p.to_string()).join("status")).ok()
        })
        .map(|t| groups_in_status(&t))
        .unwrap_or_default();
    Ok(Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid,
        groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            pid: None,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn root_and_the_socket_group_are_let_in() {
        let none = PeerPolicy { group: None };
        let g = PeerPolicy { group: Some(4242) };
        for (policy, p, allowed) in [
            (none, peer(0, 0, &[]), true),
            (none, peer(0, 100, &[]), true),
            (none, peer(1000, 1000, &[]), false),
            (none, peer(1000, 4242, &[4242]), false),
            (g, peer(0, 0, &[]), true),
            (g, peer(1000, 4242, &[]), true),
            (g, peer(1000, 1000, &[27, 4242]), true),
            (g, peer(1000, 1000, &[27]), false),
            (g, peer(65534, 65534, &[]), false),
        ] {
            assert_eq!(policy.refusal(&p).is_none(), allowed, "{policy:?} {p:?}");
        }
        let msg = g.refusal(&peer(65534, 65534, &[])).unwrap();
        assert!(
            msg.contains("uid 65534") && msg.contains("group 4242"),
            "{msg}"
        );
        let msg = none.refusal(&peer(1000, 1000, &[])).unwrap();
        assert!(
            msg.contains("only root") && msg.contains("--socket-group"),
            "{msg}"
        );
    }

    #[test]
    fn parses_group_file_and_status() {
        let groups = "root:x:0:\ndocker:x:999:alice,bob\n# junk\nbad:x:notanumber:\n";
        assert_eq!(gid_in_group_file(groups, "docker"), Some(999));
        assert_eq!(gid_in_group_file(groups, "root"), Some(0));
        assert_eq!(gid_in_group_file(groups, "dock"), None);
        assert_eq!(gid_in_group_file(groups, "bad"), None);
        assert_eq!(resolve_group("4242").unwrap(), 4242);
        assert!(matches!(
            resolve_group("no-such-group-daffe"),
            Err(PeerError::NoSuchGroup(_))
        ));
        let status =
            "Name:\tcat\nUid:\t1000\t1000\t1000\t1000\nGroups:\t27 100 4242 \nVmPeak:\t1 kB\n";
        assert_eq!(groups_in_status(status), [27, 100, 4242]);
        assert_eq!(groups_in_status("Groups:\t\n"), Vec::<u32>::new());
        assert_eq!(groups_in_status("Name:\tx\n"), Vec::<u32>::new());
    }
}
