//! Readiness notification for systemd (`Type=notify`), as sd_notify(3) does
//! it: one datagram (`READY=1`, `STOPPING=1`) to the unix socket named by
//! `$NOTIFY_SOCKET`. `daffe serve` says READY once both of its sockets are
//! bound, so units ordered after it (docker.service) start only when
//! dockerd's first call can be answered; `daffe agent` once it listens.
//! A few lines instead of libsystemd. Without `$NOTIFY_SOCKET` (not under
//! systemd, or `Type=simple`) nothing is sent.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A socket file.
    Path(PathBuf),
    /// A socket in the abstract namespace (`@name` in the variable).
    Abstract(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum NotifyError {
    #[error(
        "NOTIFY_SOCKET={0:?} is neither an absolute path nor @abstract (vsock is not supported)"
    )]
    Unsupported(String),
    #[error("notifying systemd through {socket}: {source}")]
    Send {
        socket: String,
        source: std::io::Error,
    },
}

/// Parses the value of `$NOTIFY_SOCKET`.
pub(crate) fn parse_target(value: &OsStr) -> Result<Target, NotifyError> {
    let bytes = value.as_bytes();
    match bytes.first() {
        Some(b'/') => Ok(Target::Path(PathBuf::from(value))),
        Some(b'@') if bytes.len() > 1 => Ok(Target::Abstract(bytes[1..].to_vec())),
        _ => Err(NotifyError::Unsupported(
            value.to_string_lossy().into_owned(),
        )),
    }
}

/// Sends `state` (newline-separated `KEY=VALUE` assignments) to `target`.
pub(crate) fn send(target: &Target, state: &str) -> Result<(), NotifyError> {
    let err = |source| NotifyError::Send {
        socket: format!("{target:?}"),
        source,
    };
    let addr = match target {
        Target::Path(p) => SocketAddr::from_pathname(p).map_err(err)?,
        Target::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name).map_err(err)?
        }
    };
    let sock = UnixDatagram::unbound().map_err(err)?;
    sock.send_to_addr(state.as_bytes(), &addr).map_err(err)?;
    Ok(())
}

/// Sends `state` to `$NOTIFY_SOCKET` if it is set. A failure is logged, never
/// fatal: under `Type=notify` systemd then times the start out and says so.
fn notify(state: &str) {
    let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = parse_target(&value).and_then(|t| send(&t, state)) {
        tracing::warn!("{e}");
    }
}

/// The daemon serves: its sockets are bound and answer.
pub(crate) fn ready() {
    notify("READY=1");
}

/// The daemon is shutting down (systemd shows "deactivating" at once).
pub(crate) fn stopping() {
    notify("STOPPING=1");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn targets_parse() {
        let cases: [(&[u8], Option<Target>); 6] = [
            (
                b"/run/systemd/notify",
                Some(Target::Path("/run/systemd/notify".into())),
            ),
            (
                b"@sd-notify-1",
                Some(Target::Abstract(b"sd-notify-1".to_vec())),
            ),
            (b"@", None),
            (b"", None),
            (b"relative/path", None),
            (b"vsock:2:1234", None),
        ];
        for (input, want) in cases {
            let value = std::ffi::OsString::from_vec(input.to_vec());
            assert_eq!(parse_target(&value).ok(), want, "{value:?}");
        }
    }

    #[test]
    fn ready_reaches_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        send(&Target::Path(path.clone()), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("daffe-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        send(&Target::Abstract(name.into_bytes()), "STOPPING=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");

        // Nobody listening: an error naming the socket, not a panic.
        drop(rx);
        let gone = send(&Target::Path(dir.path().join("absent")), "READY=1").unwrap_err();
        assert!(gone.to_string().contains("absent"), "{gone}");
    }
}
