//! Issue 12, finding 10 (the rest), what the control socket gave away:
//! - who may use it: the socket's mode keeps other users out of the file;
//!   the daemon also checks every connection's peer credentials
//!   (`SO_PEERCRED`), so a socket whose mode an admin loosened still refuses
//!   them, and `--socket-group` lets one group in (socket 0660);
//! - profile roots could point anywhere: they must lie under the data root;
//! - Create adopted a directory already at a volume's place, and Remove
//!   deleted it: daffe only ever deletes what it made (a marker says so).

use daffe_e2e::plugin::{Plugin, call_socket};
use serde_json::json;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

/// The uid an unprivileged host user runs as (`nobody`).
const NOBODY: &str = "65534";
/// A group no account has; the test's clients take it with setpriv.
const GROUP: &str = "48242";

/// `GET /v1/volumes` on the control socket as `setpriv ARGS`; returns
/// (HTTP status, body), status 0 when the connection itself failed.
fn get_as(setpriv: &[&str], socket: &Path) -> (u16, String) {
    let out = Command::new("setpriv")
        .args(setpriv)
        .args([
            "curl",
            "-sS",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--unix-socket",
        ])
        .arg(socket)
        .arg("http://daffe/v1/volumes")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim().parse().unwrap_or(0),
        format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

fn open_path_to(socket: &Path) {
    // The test's temp dir is 0700: open the way to the socket as /run is.
    for dir in socket.ancestors().skip(1).take(1) {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn finding_10_control_socket_refuses_peers_that_are_not_root() {
    let p = Plugin::start();
    let sock = p.control_socket();
    open_path_to(&sock);
    let nobody = ["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"];
    // Through its mode, nobody cannot even connect.
    let (code, out) = get_as(&nobody, &sock);
    assert_eq!(code, 0, "{out}");
    // An admin loosens the mode: the peer check still refuses, and says why.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, out) = get_as(&nobody, &sock);
    assert_eq!(code, 403, "a non-root peer was served: {out}");
    assert!(
        out.contains("refuses uid 65534") && out.contains("only root"),
        "{out}"
    );
    // Root is served.
    let (code, out) = get_as(&[], &sock);
    assert_eq!(code, 200, "{out}");
}

#[test]
fn finding_10_socket_group_lets_its_members_in() {
    let p = Plugin::start_with_env(None, vec![("DAFFE_SOCKET_GROUP", GROUP.to_owned())]);
    let sock = p.control_socket();
    open_path_to(&sock);
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660, "socket mode");
    assert_eq!(meta.gid().to_string(), GROUP, "socket group");
    // A member by primary group, and one by a supplementary group.
    let members: [&[&str]; 2] = [
        &["--reuid", NOBODY, "--regid", GROUP, "--clear-groups"],
        &["--reuid", NOBODY, "--regid", NOBODY, "--groups", GROUP],
    ];
    for who in members {
        let (code, out) = get_as(who, &sock);
        assert_eq!(code, 200, "{who:?}: {out}");
    }
    // Others: kept out by the mode, and by the peer check once it is loosened.
    let nobody = ["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"];
    assert_eq!(get_as(&nobody, &sock).0, 0);
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, out) = get_as(&nobody, &sock);
    assert_eq!(code, 403, "{out}");
    assert!(out.contains(&format!("group {GROUP}")), "{out}");
}

#[test]
fn finding_10_profile_roots_stay_under_the_data_root() {
    let p = Plugin::start();
    let outside = p.dir.path().join("elsewhere");
    let inside = p.data_root().join("fast");
    for (root, ok) in [(&outside, false), (&inside, true)] {
        let body = json!({"name": "placed", "local": {"format": "dir", "root": root}});
        let (code, reply) = call_socket(
            &p.control_socket(),
            "POST",
            "/v1/configuration/profiles",
            &body.to_string(),
        );
        if ok {
            assert_eq!(code, 200, "{}: {reply}", root.display());
        } else {
            assert_ne!(code, 200, "a root outside the data root was taken: {reply}");
            let err = reply["Err"].as_str().unwrap_or_default();
            assert!(err.contains("outside the data root"), "{err}");
        }
    }
}

#[test]
fn finding_10_create_never_adopts_and_remove_never_deletes_a_foreign_directory() {
    let p = Plugin::start();
    let theirs = p.data_root().join("local/default/victim/data");
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(theirs.join("precious"), b"x").unwrap();
    let (_, reply) = p.call(
        "/VolumeDriver.Create",
        &json!({"Name": "victim", "Opts": {}}),
    );
    let err = reply["Err"].as_str().unwrap_or_default().to_owned();
    // Whatever Create said, Remove must leave the file alone.
    let _ = p.call("/VolumeDriver.Remove", &json!({"Name": "victim"}));
    assert!(
        theirs.join("precious").exists(),
        "daffe deleted a directory it did not make"
    );
    assert!(
        err.contains("daffe did not make it"),
        "a foreign directory was adopted: {reply}"
    );
    // A volume daffe makes is still removed whole.
    let (_, reply) = p.call("/VolumeDriver.Create", &json!({"Name": "mine", "Opts": {}}));
    assert_eq!(reply["Err"], "", "{reply}");
    let mine = p.data_root().join("local/default/mine");
    assert!(mine.join("data").is_dir());
    let (_, reply) = p.call("/VolumeDriver.Remove", &json!({"Name": "mine"}));
    assert_eq!(reply["Err"], "", "{reply}");
    assert!(!mine.exists());
}
