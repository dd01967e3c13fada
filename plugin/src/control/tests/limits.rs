//! Control routes over real sockets, served as `daffe serve` serves them: a
//! route whose work blocks runs off the async workers, so the VolumeDriver
//! socket keeps answering, and it answers itself with a timeout once past
//! its limit; the client reads the typed codes back.

use crate::api::DriverApi;
use crate::backend::{Backend, BackendError, Status, Storage, VolumeRef};
use crate::bounded::Fence;
use crate::control::{ClientError, ControlApi, ControlClient, ControlRequest, Limits};
use crate::service::{ErrorCode, VolumeService};
use crate::state::Records;
use profiles::{BackendKind, Catalog};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A backend whose Create of `slow` stops until the test lets it go: an
/// mkfs on a disk that hangs.
struct Gate {
    entered: Mutex<mpsc::Sender<()>>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl Backend for Gate {
    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }
    fn create(&self, v: VolumeRef<'_>) -> Result<(), BackendError> {
        if v.name == "slow" {
            let _ = self.entered.lock().unwrap().send(());
            let _ = self.release.lock().unwrap().recv();
        }
        Ok(())
    }
    fn remove(&self, _: VolumeRef<'_>) -> Result<(), BackendError> {
        Ok(())
    }
    fn mount(&self, v: VolumeRef<'_>) -> Result<PathBuf, BackendError> {
        Ok(self.path(v))
    }
    fn unmount(&self, _: VolumeRef<'_>) -> Result<(), BackendError> {
        Ok(())
    }
    fn path(&self, v: VolumeRef<'_>) -> PathBuf {
        PathBuf::from("/gate").join(v.name)
    }
    fn status(&self, _: VolumeRef<'_>) -> Status {
        Status::new()
    }
}

/// Both sockets served on a runtime with one async worker (what a busy host
/// with every worker taken looks like), as `daffe serve` serves them.
struct Daemon {
    rt: tokio::runtime::Runtime,
    stop: tokio::sync::watch::Sender<bool>,
    driver: PathBuf,
    control: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, svc: &Arc<VolumeService>, limits: Limits) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (driver, control) = (dir.join("driver.sock"), dir.join("control.sock"));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (dl, cl) = rt.block_on(async {
            (
                crate::server::bind(&driver).unwrap(),
                crate::server::bind(&control).unwrap(),
            )
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let driver_api = DriverApi::new(svc.clone(), crate::api::Limits::default());
        rt.spawn(crate::server::serve(
            dl,
            Arc::new(driver_api),
            stopped(stop_rx.clone()),
        ));
        rt.spawn(crate::server::serve(
            cl,
            Arc::new(ControlApi::new(svc.clone(), limits)),
            stopped(stop_rx),
        ));
        Self {
            rt,
            stop,
            driver,
            control,
        }
    }

    /// docker's Get of `name` (plain HTTP/1.1 over the socket, as dockerd
    /// sends it): the answer, or nothing within `wait`.
    fn docker_get(&self, name: &str, wait: Duration) -> Option<serde_json::Value> {
        use std::io::{Read, Write};
        let body = serde_json::json!({ "Name": name }).to_string();
        let mut s = std::os::unix::net::UnixStream::connect(&self.driver).ok()?;
        s.set_read_timeout(Some(wait)).ok()?;
        write!(
            s,
            "POST /VolumeDriver.Get HTTP/1.1\r\nHost: daffe\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).ok()?;
        let (_, json) = reply.split_once("\r\n\r\n")?;
        serde_json::from_str(json).ok()
    }

    fn stop(self) {
        let _ = self.stop.send(true);
        self.rt.shutdown_timeout(Duration::from_secs(2));
    }
}

fn service(dir: &Path, storage: Storage) -> Arc<VolumeService> {
    Arc::new(VolumeService::new(
        Records::open(&dir.join("state.redb")).unwrap(),
        storage,
        Catalog::builtin(),
        dir.to_owned(),
    ))
}

/// Hardening finding 12: the migration routes ran on the async workers, so
/// a blocked one (here the Create of a received volume: an mkfs that hangs)
/// stalled the VolumeDriver socket. Before the fix, docker's Get below got
/// no answer; now it does, and the blocked route answers 504 with
/// `"Code": "timeout"` once past its limit.
#[test]
fn hardening_12_a_blocked_control_route_neither_stalls_docker_nor_outlives_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let gate = Gate {
        entered: Mutex::new(entered_tx),
        release: Mutex::new(release_rx),
    };
    let svc = service(dir.path(), Storage::plain(Arc::new(gate)));
    svc.create("other", &Default::default()).unwrap();
    let limits = Limits {
        quick: Duration::from_millis(500),
        ..Limits::default()
    };
    let daemon = Daemon::start(dir.path(), &svc, limits);
    let client = ControlClient::new(&daemon.control);
    let prepare = std::thread::spawn(move || {
        client.send(&ControlRequest::PrepareReceive {
            volume: "slow".into(),
            options: Default::default(),
            from: "hosta".into(),
        })
    });
    entered_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the prepare reached the backend");
    // Generous: dockerd's own patience is 60 s; a healthy daemon answers
    // Get in milliseconds, a stalled one never (until the test lets go).
    let got = daemon.docker_get("other", Duration::from_secs(10));
    let answered = prepare.join().unwrap();
    release_tx.send(()).unwrap();
    let got = got.expect("the VolumeDriver socket stalled behind a blocked control route");
    assert_eq!(got["Volume"]["Name"], "other", "{got}");
    let e = answered.expect_err("the blocked prepare answers with a timeout");
    assert_eq!(e.code(), Some(ErrorCode::Timeout), "{e}");
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("did not finish within"), "{e}");
    daemon.stop();
}

/// The client reads the daemon's codes: a fence refused while mounted is
/// `in_use` (the cutover's wait signal), a Mount of a moved volume `moved`.
#[test]
fn refusals_reach_the_client_with_their_codes() {
    let dir = tempfile::tempdir().unwrap();
    let backend =
        crate::backend::open(BackendKind::Local, &Default::default(), dir.path()).unwrap();
    let svc = service(dir.path(), backend);
    svc.create("v", &Default::default()).unwrap();
    svc.mount("v", "c1", &Fence::unbounded()).unwrap();
    let daemon = Daemon::start(dir.path(), &svc, Limits::default());
    let client = ControlClient::new(&daemon.control);
    let to = |r: fn(String, String) -> ControlRequest| r("v".into(), "hostb".into());
    client
        .send(&to(|name, to| ControlRequest::Move { name, to }))
        .unwrap();
    let e = client
        .send(&to(|name, to| ControlRequest::Fence { name, to }))
        .unwrap_err();
    assert!(e.in_use(), "{e}");
    assert!(matches!(e, ClientError::Status { .. }), "{e}");
    svc.unmount("v", "c1").unwrap();
    client
        .send(&to(|name, to| ControlRequest::Fence { name, to }))
        .unwrap();
    client
        .send(&to(|name, to| ControlRequest::FinishMove { name, to }))
        .unwrap();
    let e = svc.mount("v", "c2", &Fence::unbounded()).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Moved, "{e}");
    let e = client
        .send(&ControlRequest::Volume {
            name: "ghost".into(),
        })
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    daemon.stop();
}
