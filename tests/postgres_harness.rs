//! The PostgreSQL harness itself (tests/support/postgres.rs), proven on the
//! places the live-migration tests put a database: a plain directory, a
//! daffe `default` (dir) and `gold` (block) volume's mountpoint, and a
//! filesystem that only another mount namespace sees (host B's).
//!
//! Each run: initdb with checksums, pgbench at a bounded rate, the ledger,
//! pg_amcheck, `pg_ctl stop -m fast`, pg_checksums; and a server started
//! again on a copy of the stopped data directory (the destination after a
//! move) that finds the same books.

use daffe_e2e::netns::Netns;
use daffe_e2e::plugin::Plugin;
use daffe_e2e::postgres::{PgbenchOptions, Place, Postgres};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// pgbench scale for the smoke runs: 1 is 100k accounts (~15 MB), enough to
/// exercise every table and index without costing CI seconds.
const SCALE: u32 = 1;

/// A short bounded writer: 2 clients at 200 TPS for 2 s gives a few hundred
/// transactions, enough for the ledger to mean something.
fn short_run() -> PgbenchOptions {
    PgbenchOptions {
        clients: 2,
        rate: Some(200),
        duration: Some(Duration::from_secs(2)),
    }
}

/// The whole cycle on `data` at `place`; returns the ledger's history rows.
fn cycle(place: Place, data: &Path) -> u64 {
    let mut pg = Postgres::init(place.clone(), data);
    pg.start();
    pg.pgbench_init(SCALE);
    let bench = pg.pgbench(&short_run());
    let report = bench.wait();
    assert!(
        !report.aborted && report.committed > 100,
        "pgbench: {}",
        report.text
    );
    assert!(
        !report.progress.is_empty(),
        "no progress lines: {}",
        report.text
    );
    assert!(report.latency_avg_ms.is_some(), "{}", report.text);
    let ledger = pg.ledger();
    ledger.check(report.committed);
    pg.amcheck();
    pg.stop();
    assert!(pg.checksums() > 0);

    // Started again on the same directory: the books are as they were.
    pg.start();
    assert_eq!(pg.ledger(), ledger);
    pg.stop();
    ledger.history_rows
}

#[test]
fn runs_on_a_plain_directory_and_again_on_a_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("pg");
    let mut pg = Postgres::init(Place::here(), &data);
    pg.start();
    pg.pgbench_init(SCALE);
    // Until stopped, at a rate: the way a test runs pgbench across a move.
    let bench = pg.pgbench(&PgbenchOptions {
        clients: 4,
        rate: Some(300),
        duration: None,
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(bench.committed_so_far() > 0, "no progress after 3 s");
    let report = bench.stop();
    assert!(report.committed > 100, "{}", report.text);
    // --rate 300 over ~3 s: far from what the machine could do unthrottled.
    let tps = report.committed as f64 / report.wall.as_secs_f64();
    assert!(tps < 450.0, "rate limit not applied: {tps:.0} TPS");
    let mut committed = report.committed;
    pg.ledger().check(committed);

    // The cutover sequence: the server stopped (-m fast) under load ends
    // pgbench, which still reports what it saw commit.
    let bench = pg.pgbench(&PgbenchOptions {
        clients: 4,
        rate: Some(300),
        duration: None,
    });
    std::thread::sleep(Duration::from_secs(2));
    pg.stop();
    let report = bench.wait();
    assert!(report.aborted, "pgbench did not notice: {}", report.text);
    assert!(report.committed > 100, "{}", report.text);
    committed += report.committed;
    pg.checksums();
    pg.start();
    let ledger = pg.ledger();
    ledger.check(committed);
    pg.amcheck();
    pg.stop();

    // The destination after a move: a copy of the stopped directory, owned by
    // root as a copy tool running as root leaves it.
    let dest = tmp.path().join("moved");
    let st = Command::new("cp")
        .arg("-a")
        .arg(&data)
        .arg(&dest)
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("chown")
        .args(["-R", "root:root"])
        .arg(&dest)
        .status()
        .unwrap();
    assert!(st.success());
    let mut moved = Postgres::open(Place::here(), &dest);
    moved.checksums();
    moved.start();
    assert_eq!(moved.ledger(), ledger);
    moved.amcheck();
    moved.stop();
}

#[test]
fn the_checks_catch_a_damaged_copy() {
    // A harness whose checks cannot fail proves nothing: flip bytes in a
    // table file of a stopped cluster and pg_checksums must object.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("pg");
    let mut pg = Postgres::init(Place::here(), &data);
    pg.start();
    pg.pgbench_init(SCALE);
    let file = pg.sql("SELECT pg_relation_filepath('pgbench_accounts')");
    pg.stop();
    let path = data.join(file);
    let mut bytes = std::fs::read(&path).unwrap();
    // Inside the first page's tuple data, past the page header.
    for b in &mut bytes[4000..4016] {
        *b ^= 0xff;
    }
    std::fs::write(&path, bytes).unwrap();
    let caught = std::panic::catch_unwind(|| pg.checksums());
    assert!(caught.is_err(), "pg_checksums missed a damaged page");
}

/// A daffe volume created and mounted through the plugin's socket, as
/// dockerd would; unmounted and removed on drop.
struct Mounted<'a> {
    plugin: &'a Plugin,
    name: String,
    mountpoint: PathBuf,
}

impl<'a> Mounted<'a> {
    fn new(plugin: &'a Plugin, name: &str) -> Self {
        let (st, r) = plugin.call("/VolumeDriver.Create", &json!({"Name": name, "Opts": {}}));
        assert!(
            st == 200 && r["Err"].as_str().unwrap_or("").is_empty(),
            "{r}"
        );
        let (st, r) = plugin.call("/VolumeDriver.Mount", &json!({"Name": name, "ID": "pg"}));
        assert!(
            st == 200 && r["Err"].as_str().unwrap_or("").is_empty(),
            "{r}"
        );
        let mountpoint = PathBuf::from(r["Mountpoint"].as_str().expect("Mountpoint"));
        Self {
            plugin,
            name: name.to_owned(),
            mountpoint,
        }
    }
}

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let p = self.plugin;
        p.call(
            "/VolumeDriver.Unmount",
            &json!({"Name": self.name, "ID": "pg"}),
        );
        p.call("/VolumeDriver.Remove", &json!({"Name": self.name}));
    }
}

#[test]
fn runs_on_daffe_default_and_gold_volumes() {
    let plugin = Plugin::start();
    for profile in ["default", "gold"] {
        let vol = Mounted::new(&plugin, &format!("pgdata@{profile}"));
        let rows = cycle(Place::here(), &vol.mountpoint.join("pg"));
        assert!(rows > 0, "{profile}");
        if profile == "gold" {
            // The database really is on the volume's own filesystem.
            let out = Command::new("findmnt")
                .args(["-n", "-o", "FSTYPE", "--target"])
                .arg(vol.mountpoint.join("pg"))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ext4");
        }
    }
}

/// A process holding a private mount namespace inside a network namespace:
/// the shape of host B (its engine and plugin live there). Killed on drop.
struct PrivateMountNs {
    holder: Child,
}

impl PrivateMountNs {
    fn new(ns: &Netns) -> Self {
        let holder = ns
            .command("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            // Copies of other tests' block volumes would make their moves refuse.
            .arg(format!(
                "{} && exec sleep 600",
                daffe_e2e::netns::DROP_INHERITED_LOOP_MOUNTS
            ))
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare");
        // unshare execs sleep once the namespace exists; wait until it has.
        let own = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        for _ in 0..100 {
            let theirs = std::fs::read_link(format!("/proc/{}/ns/mnt", holder.id()));
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", holder.id()));
            if theirs.is_ok_and(|t| t != own) && comm.is_ok_and(|c| c.trim() == "sleep") {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { holder }
    }

    fn mnt(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/mnt", self.holder.id()))
    }
}

impl Drop for PrivateMountNs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

#[test]
fn runs_inside_another_hosts_mount_namespace() {
    let ns = Netns::create(&daffe_e2e::unique("dfpg"));
    let host_b = PrivateMountNs::new(&ns);
    let place = Place::namespaces(&ns.path(), &host_b.mnt());
    // A filesystem mounted only in B's mount namespace, like a gold volume
    // that B's plugin mounted.
    let dir = tempfile::Builder::new()
        .prefix("daffe-pgns-")
        .tempdir_in("/var/tmp")
        .unwrap();
    place.sh(
        "mount -t tmpfs -o size=256m daffe-pg-test \"$1\"",
        &[dir.path().as_os_str()],
    );
    let rows = cycle(place.clone(), &dir.path().join("pg"));
    assert!(rows > 0);
    // The database never existed in this (the root) mount namespace.
    assert!(
        !dir.path().join("pg").exists(),
        "the data directory leaked into the root mount namespace"
    );
    place.sh("umount \"$1\"", &[dir.path().as_os_str()]);
}
