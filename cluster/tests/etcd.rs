//! The Coordinator over a real etcd: Debian's `etcd` (3.4), one member on
//! 127.0.0.1 with ports of its own, started per test. The same behaviour
//! tests as the in-memory double (`cluster::conformance`), plus what only a
//! real server shows: a dead or missing etcd answers `Unavailable` within
//! the time limit, never a hang.

use cluster::config::EtcdConfig;
use cluster::etcd::EtcdCoordinator;
use cluster::{Coordinator, CoordinatorError, conformance};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(3);

/// One etcd member, killed on drop.
struct Etcd {
    child: Child,
    client: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (cp, pp) = (free_port(), free_port());
        let client = format!("http://127.0.0.1:{cp}");
        let peer = format!("http://127.0.0.1:{pp}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd (Debian's etcd-server) must be installed: tests/run-all.sh installs it");
        let me = Self {
            child,
            client,
            _dir: dir,
        };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if me.connect().is_ok() {
                return me;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "etcd did not answer within 20 s: {}",
            std::fs::read_to_string(me._dir.path().join("etcd.log")).unwrap_or_default()
        );
    }

    fn config(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: vec![self.client.clone()],
            ca: None,
            cert: None,
            key: None,
        }
    }

    fn connect(&self) -> Result<EtcdCoordinator, CoordinatorError> {
        EtcdCoordinator::connect("prod", &self.config(), TIMEOUT)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn debian_etcd_is_the_3_4_series() {
    let out = Command::new("etcd").arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("etcd Version: 3.4."), "{text}");
}

#[test]
fn behaves_as_the_double() {
    let etcd = Etcd::start();
    let c = etcd.connect().unwrap();
    conformance::create_is_once_and_remove_waits_for_the_owner(&c, "t1-");
    conformance::one_claim_wins_and_handover_needs_the_current_epoch(&c, "t2-");
    conformance::an_expired_lease_frees_the_volume(&c, "t3-", &std::thread::sleep);
    conformance::the_last_writer_outlives_the_owner_and_nodes_live_with_their_lease(&c, "t4-");
}

#[test]
fn three_nodes_creating_at_once_make_one_volume() {
    let etcd = Etcd::start();
    let made: Vec<bool> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|i| {
                let c = etcd.connect().unwrap();
                s.spawn(move || {
                    c.create_volume("db", format!("node{i}").as_bytes())
                        .unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap().1).collect()
    });
    assert_eq!(made.iter().filter(|m| **m).count(), 1, "{made:?}");
    assert_eq!(etcd.connect().unwrap().volumes().unwrap().len(), 1);
}

#[test]
fn a_dead_etcd_answers_unavailable_within_the_limit() {
    let mut etcd = Etcd::start();
    let c = etcd.connect().unwrap();
    c.create_volume("db", b"x").unwrap();
    etcd.child.kill().unwrap();
    etcd.child.wait().unwrap();
    let t0 = Instant::now();
    let err = c.volumes().unwrap_err();
    assert!(matches!(err, CoordinatorError::Unavailable(_)), "{err}");
    assert!(
        t0.elapsed() < TIMEOUT + Duration::from_secs(1),
        "{:?}",
        t0.elapsed()
    );
    // Nothing listening at all: connect fails as fast.
    let t0 = Instant::now();
    let err = EtcdCoordinator::connect(
        "prod",
        &EtcdConfig {
            endpoints: vec![format!("http://127.0.0.1:{}", free_port())],
            ca: None,
            cert: None,
            key: None,
        },
        TIMEOUT,
    )
    .unwrap_err();
    assert!(matches!(err, CoordinatorError::Unavailable(_)), "{err}");
    assert!(
        t0.elapsed() < TIMEOUT + Duration::from_secs(1),
        "{:?}",
        t0.elapsed()
    );
}

/// A member that is down (first in the list, and the one that answered
/// last) costs a call at most its share of the limit; the live member
/// answers, and later calls go to it first.
#[test]
fn a_dead_endpoint_in_the_list_changes_nothing() {
    let etcd = Etcd::start();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let cfg = EtcdConfig {
        endpoints: vec![dead, etcd.client.clone()],
        ca: None,
        cert: None,
        key: None,
    };
    let t0 = Instant::now();
    let c = EtcdCoordinator::connect("prod", &cfg, TIMEOUT).unwrap();
    assert!(t0.elapsed() < TIMEOUT, "{:?}", t0.elapsed());
    conformance::create_is_once_and_remove_waits_for_the_owner(&c, "dead-");
    let t1 = Instant::now();
    for _ in 0..20 {
        c.volumes().unwrap();
    }
    assert!(
        t1.elapsed() < Duration::from_secs(1),
        "calls keep trying the dead member: {:?}",
        t1.elapsed()
    );
}

/// The member that answered last dies: the next call moves on to another
/// member at once. (Two single-member clusters stand in for two members:
/// this is about the client's failover, not about what they hold.)
#[test]
fn a_member_that_dies_after_answering_is_passed_over() {
    let mut first = Etcd::start();
    let second = Etcd::start();
    let cfg = EtcdConfig {
        endpoints: vec![first.client.clone(), second.client.clone()],
        ca: None,
        cert: None,
        key: None,
    };
    let c = EtcdCoordinator::connect("prod", &cfg, TIMEOUT).unwrap();
    c.create_volume("on-first", b"x").unwrap();
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let t0 = Instant::now();
    let listed = c.volumes().expect("the second member answers");
    assert!(listed.is_empty(), "answered by the dead member? {listed:?}");
    assert!(t0.elapsed() < TIMEOUT, "{:?}", t0.elapsed());
    c.create_volume("on-second", b"x").unwrap();
}
