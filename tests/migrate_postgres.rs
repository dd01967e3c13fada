//! A busy PostgreSQL moved live between two hosts (issue 11): PostgreSQL 15
//! from Debian's packages on host A, its data directory on a daffe volume's
//! mountpoint, pgbench writing at `--rate 500` while `daffe migrate`'s
//! pre-copy rounds run over a 100 Mbit/s link. At the cutover the operator
//! stops PostgreSQL (`pg_ctl stop -m fast`) and releases the volume; the
//! server then starts on host B from the moved volume, and the checks say
//! the database is whole: pg_amcheck, pg_checksums, and pgbench's ledger
//! (the books balance, and history holds every transaction pgbench saw
//! commit).
//!
//! The order at the cutover is the one `migrate` asks for: it prints
//! "waiting for VOLUME to be unmounted" once pre-copy is done, and only then
//! is the server stopped and the volume unmounted. Stopping the server
//! earlier would hide the application's downtime in the pre-copy rounds;
//! daffe's `downtime_ms` starts at the unmount, so the test also measures
//! the application's own downtime (from `pg_ctl stop` to the server on B
//! accepting queries) and prints both.
//!
//! `migrate --before-cutover "psql -c CHECKPOINT"` (issue 11, item 4):
//! before the last pre-copy round the server writes its dirty buffers, so
//! they travel while it still runs and the shutdown checkpoint at the
//! cutover is small. The downtime is printed beside the estimate; it is
//! asserted only loosely (CI machines are shared; the targets are measured
//! by `bench/migrate.sh`, BENCHMARKS.md).

use daffe_e2e::hosts::TwoHosts;
use daffe_e2e::plugin::call_socket;
use daffe_e2e::postgres::{PgbenchOptions, PgbenchReport, Place, Postgres};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// pgbench scale: 5 is 500k accounts, about 80 MB of tables and indexes:
/// several seconds of first round on a 100 Mbit/s link, and real random
/// page writes at 500 TPS, within CI's budget.
const SCALE: u32 = 5;

/// Issue 11's busy OLTP service: 4 clients at 500 TPS.
fn busy() -> PgbenchOptions {
    PgbenchOptions {
        clients: 4,
        rate: Some(500),
        duration: None,
    }
}

/// The volume docker would mount: Create and Mount through a plugin's
/// socket, with a mount ID of the test's own.
fn mount(socket: &Path, name: &str) -> PathBuf {
    let (st, r) = call_socket(
        socket,
        "POST",
        "/VolumeDriver.Create",
        &json!({"Name": name, "Opts": {}}).to_string(),
    );
    assert!(
        st == 200 && r["Err"].as_str().unwrap_or("").is_empty(),
        "{r}"
    );
    let (st, r) = call_socket(
        socket,
        "POST",
        "/VolumeDriver.Mount",
        &json!({"Name": name, "ID": "pg"}).to_string(),
    );
    assert!(
        st == 200 && r["Err"].as_str().unwrap_or("").is_empty(),
        "{r}"
    );
    PathBuf::from(r["Mountpoint"].as_str().expect("Mountpoint"))
}

fn unmount(socket: &Path, name: &str) {
    let (st, r) = call_socket(
        socket,
        "POST",
        "/VolumeDriver.Unmount",
        &json!({"Name": name, "ID": "pg"}).to_string(),
    );
    assert!(
        st == 200 && r["Err"].as_str().unwrap_or("").is_empty(),
        "{r}"
    );
}

fn wait_line(rx: &Receiver<String>, needle: &str, limit: Duration) {
    let t = Instant::now();
    while t.elapsed() < limit {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) if l.contains(needle) => return,
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("migrate ended before {needle:?}: {e}"),
        }
    }
    panic!("no {needle:?} from migrate within {limit:?}");
}

/// Mean latency of the progress lines in `[from, to)` seconds of the run.
fn latency_between(r: &PgbenchReport, from: f64, to: f64) -> Option<f64> {
    let l: Vec<f64> = r
        .progress
        .iter()
        .filter(|p| p.at > from && p.at <= to && p.tps > 0.0)
        .map(|p| p.latency_ms)
        .collect();
    (!l.is_empty()).then(|| l.iter().sum::<f64>() / l.len() as f64)
}

/// The whole move for one profile; returns migrate's report.
fn move_a_busy_database(profile: &str) -> Value {
    let h = TwoHosts::start("100mbit");
    let volume = format!("pgdata@{profile}");
    let mp_a = mount(&h.a.socket, &volume);
    let mut pg = Postgres::init(Place::here(), &mp_a.join("pg"));
    pg.start();
    pg.pgbench_init(SCALE);
    let bench = pg.pgbench(&busy());
    // A few seconds of steady load before the move: the baseline latency.
    std::thread::sleep(Duration::from_secs(4));
    assert!(bench.committed_so_far() > 0, "pgbench makes no progress");
    let t_migrate = bench.progress().last().map_or(0.0, |p| p.at);

    let hook = pg.sql_shell("CHECKPOINT");
    let (child, rx) = h.migrate(
        &volume,
        &["--max-downtime", "2s", "--before-cutover", &hook],
    );
    wait_line(&rx, "waiting for", Duration::from_secs(120));
    // The cutover, in the order migrate asks for it.
    let t_precopy_end = bench.progress().last().map_or(0.0, |p| p.at);
    let t_stop = Instant::now();
    pg.stop();
    let run = bench.wait();
    unmount(&h.a.socket, &volume);
    let report = h.finish(child);

    // Host B: the moved volume, mounted by B's plugin in B's namespaces.
    let mp_b = mount(&h.b.socket, &volume);
    let mut moved = Postgres::open(h.docker_b.place(), &mp_b.join("pg"));
    moved.start();
    let app_downtime = t_stop.elapsed();
    moved.amcheck();
    let ledger = moved.ledger();
    ledger.check(run.committed);
    moved.stop();
    assert!(moved.checksums() > 0);
    unmount(&h.b.socket, &volume);

    let downtime_ms = report["downtime_ms"].as_u64().expect("downtime_ms");
    let estimate_ms = report["estimate"]["downtime_ms"].as_u64().unwrap_or(0);
    eprintln!(
        "{profile}: migrate report {report:#}\n\
         pgbench: {} committed, latency before migrate {:?} ms, during pre-copy {:?} ms\n\
         application downtime (pg_ctl stop on A to queries on B): {} ms; ledger {ledger:?}\n\
         {profile}: daffe downtime {downtime_ms} ms, estimate {estimate_ms} ms (est./actual {:.2})",
        run.committed,
        latency_between(&run, 0.0, t_migrate),
        latency_between(&run, t_migrate, t_precopy_end),
        app_downtime.as_millis(),
        estimate_ms as f64 / downtime_ms.max(1) as f64,
    );
    // The hook ran, succeeded, and a pre-copy round followed it.
    assert_eq!(report["before_cutover"]["exit_status"], 0, "{report:#}");
    // With the hook given, no warning that it is missing (`app_data`; the
    // warning itself: `bench/migrate.sh` with `PG_HOOK=0`).
    assert_eq!(report["warnings"], json!([]), "{report:#}");
    // The run really was live: pgbench committed through the pre-copy.
    assert!(
        run.progress
            .iter()
            .any(|p| p.at > t_migrate + 1.0 && p.at <= t_precopy_end && p.tps > 0.0),
        "pgbench did not run during pre-copy: {}",
        run.text
    );
    let rounds = report["rounds"].as_array().expect("rounds");
    assert!(rounds.len() >= 2, "{report:#}");
    assert!(
        rounds[0]["bytes"].as_u64().unwrap_or(0) > 0,
        "the first round moved nothing: {report:#}"
    );
    assert!(
        rounds
            .iter()
            .any(|r| r["after_hook"] == true && r["final_round"] == false),
        "no pre-copy round after the hook: {report:#}"
    );
    // Loose: a shared CI machine. Without the hook the shutdown checkpoint
    // alone made 5-11 s at this scale (BENCHMARKS.md); a minute means the
    // cutover is broken, not slow.
    assert!(
        downtime_ms < 60_000,
        "downtime {downtime_ms} ms: {report:#}"
    );
    report
}

#[test]
fn a_busy_postgres_on_a_default_volume_moves_whole() {
    let r = move_a_busy_database("default");
    assert_eq!(r["mode"], "tree", "{r:#}");
    // The daemon traced where the tables were written (ext4 data root, as
    // here): rounds after the base read only those pages of changed files.
    let rounds = r["rounds"].as_array().expect("rounds");
    assert!(
        rounds[1..]
            .iter()
            .any(|r| r["bytes_tracked"].as_u64().unwrap_or(0) > 0),
        "no round read from tracked writes: {r:#}"
    );
}

#[test]
fn a_busy_postgres_on_a_gold_volume_moves_whole() {
    let r = move_a_busy_database("gold");
    assert_eq!(r["mode"], "image", "{r:#}");
}
