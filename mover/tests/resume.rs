//! Interrupt and resume: a child process runs a sync and is killed with
//! SIGKILL at several points (during the scan, mid-fetch after some
//! checkpoints, while staging the scan's copies of a first transfer, right
//! after the commit, during verification). A rerun must
//! complete, leave the destination equal to the source, and fetch only what
//! the killed run had not durably stored.
//!
//! The child is this test binary itself, re-executed with `MOVER_CHILD` set
//! (so no separately built binary is needed); its progress sink sends
//! SIGKILL to its own process at the chosen point.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::common::*;
use mover::{Destination, Phase, Progress, Source, sync};

const CHECKPOINT: u64 = 8 << 20;

fn die() -> ! {
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL)
        .unwrap();
    unreachable!("SIGKILL returned")
}

/// The child's test name as libtest knows it (`resume::child_entry`): this
/// file is a module of the `integration` binary, and `--exact` matches the
/// full path without the crate name. A name that matched nothing would run
/// no test, and the signal assertion below would fail.
fn child_test_name() -> String {
    let module = module_path!()
        .split_once("::")
        .map_or(module_path!(), |(_crate, rest)| rest);
    format!("{module}::child_entry")
}

/// Entry point of the child: runs only when re-executed with MOVER_CHILD.
#[test]
fn child_entry() {
    let Ok(spec) = std::env::var("MOVER_CHILD") else {
        return;
    };
    let mut it = spec.split(';');
    let (base, point) = (
        it.next().unwrap().to_string(),
        it.next().unwrap().to_string(),
    );
    let base = Path::new(&base);
    let moved = Arc::new(AtomicU64::new(0));
    let entries_at_kill = 500;
    let sink = move |ev: &Progress| match (point.as_str(), ev) {
        ("scan", Progress::Scanned { entries, .. }) if *entries >= entries_at_kill => die(),
        ("fetch", Progress::Moved { bytes })
            if moved.fetch_add(*bytes, Ordering::Relaxed) + bytes
                > 3 * CHECKPOINT + CHECKPOINT / 2 =>
        {
            die()
        }
        (
            "apply",
            Progress::Phase {
                phase: Phase::Apply,
                ..
            },
        ) => die(),
        (
            "verify",
            Progress::Phase {
                phase: Phase::Verify,
                ..
            },
        ) => die(),
        // Midway through the chunks of files the scan copied (no fetch).
        ("copied", Progress::Moved { bytes })
            if moved.fetch_add(*bytes, Ordering::Relaxed) + bytes > 20 << 20 =>
        {
            die()
        }
        _ => {}
    };
    let mut o = opts(base);
    o.progress = Arc::new(sink);
    o.checkpoint_bytes = CHECKPOINT;
    sync(
        &Source::Tree(base.join("src")),
        &Destination::Tree(base.join("dst")),
        &o,
    )
    .unwrap();
    // Reaching here means the kill point was never hit: fail loudly.
    std::process::exit(3);
}

fn corpus(src: &Path) {
    std::fs::create_dir_all(src.join("many")).unwrap();
    for i in 0..2000u64 {
        std::fs::write(
            src.join(format!("many/f{i:05}")),
            bytes(2000 + usize::try_from(i % 7).unwrap() * 1000, i),
        )
        .unwrap();
    }
    std::fs::write(src.join("big.db"), bytes(40 << 20, 77)).unwrap();
    write_sparse(&src.join("sparse"), 64 << 20, &[(16 << 20, 8 << 20)], 78);
}

fn durable_bytes(state: &Path) -> u64 {
    let j = mover::internals::journal::read_journal(&state.join("round/journal")).unwrap();
    j.durable.iter().map(|(_, len, _)| u64::from(*len)).sum()
}

fn kill_and_resume(point: &str) {
    let t = tempfile::tempdir().unwrap();
    let base = t.path();
    corpus(&base.join("src"));
    if point == "copied" {
        // Out of the racy window: the scan copies the large files.
        std::thread::sleep(std::time::Duration::from_millis(2100));
    }
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &child_test_name(),
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MOVER_CHILD", format!("{};{point}", base.display()))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "child was not killed at {point}: {status:?}"
    );
    let durable = durable_bytes(&base.join("state"));
    if point == "copied" {
        // Killed after big.db's copy (entry 1) was staged whole.
        let staged = std::fs::metadata(base.join("state/round/stage/1")).unwrap();
        assert_eq!(staged.len(), 40 << 20);
    }
    let total =
        40u64 * (1 << 20) + (8 << 20) + (0..2000u64).map(|i| 2000 + (i % 7) * 1000).sum::<u64>();
    let s = sync(
        &Source::Tree(base.join("src")),
        &Destination::Tree(base.join("dst")),
        &opts(base),
    )
    .unwrap();
    assert_same_tree(&base.join("src"), &base.join("dst"));
    match point {
        "scan" => assert_eq!(s.rounds.bytes_fetched, total, "{s:#?}"),
        "fetch" => {
            assert!(
                durable >= 3 * CHECKPOINT,
                "only {durable} bytes durable before the kill"
            );
            assert_eq!(
                s.rounds.bytes_fetched,
                total - durable,
                "rerun fetched more than what was missing: {s:#?}"
            );
        }
        "apply" | "verify" => {
            assert!(s.rounds.recovered, "committed round not replayed: {s:#?}");
            assert_eq!(s.rounds.bytes_fetched, 0, "{s:#?}");
        }
        // The killed run's scan finished (its cache vouches for every
        // file, so the rerun reads none and copies none) and its staged
        // copies had no durable record yet: fetched like any lost chunk.
        "copied" => {
            assert_eq!(s.rounds.bytes_scan_copied, 0, "{s:#?}");
            assert_eq!(s.rounds.bytes_fetched, total - durable, "{s:#?}");
        }

        _ => unreachable!(),
    }
}

#[test]
fn kill_during_scan() {
    kill_and_resume("scan");
}

#[test]
fn kill_mid_fetch() {
    kill_and_resume("fetch");
}

#[test]
fn kill_after_commit() {
    kill_and_resume("apply");
}

#[test]
fn kill_during_verify() {
    kill_and_resume("verify");
}

#[test]
fn kill_while_staging_the_scans_copies() {
    kill_and_resume("copied");
}

/// A journal frame as `journal.rs` writes it: `len (u32 LE) | blake3[..8] |
/// postcard body`.
fn journal_frame(body: &[u8]) -> Vec<u8> {
    let mut f = u32::try_from(body.len()).unwrap().to_le_bytes().to_vec();
    f.extend_from_slice(&blake3::hash(body).as_bytes()[..8]);
    f.extend_from_slice(body);
    f
}

/// An interrupted round left by a newer daffe (journal version 2, committed)
/// is not replayed: the sync stops with an error naming the journal and its
/// version, and neither the destination nor the journal changes.
#[test]
fn a_round_journal_of_a_newer_version_is_refused_and_nothing_changes() {
    let d = tempfile::tempdir().unwrap();
    let (src, dst) = (d.path().join("src"), d.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), bytes(100_000, 1)).unwrap();
    let (s, t) = (Source::Tree(src.clone()), Destination::Tree(dst.clone()));
    sync(&s, &t, &opts(d.path())).unwrap();
    std::fs::write(src.join("a"), bytes(100_000, 2)).unwrap();
    let round = d.path().join("state/round");
    std::fs::create_dir_all(&round).unwrap();
    // postcard: variant 3 (`Version`) with 2; variant 2 (`Commit`).
    let mut journal = journal_frame(&[3, 2]);
    journal.extend(journal_frame(&[2]));
    std::fs::write(round.join("journal"), &journal).unwrap();
    let before = snapshot(&dst);

    let e = sync(&s, &t, &opts(d.path())).unwrap_err().to_string();
    assert!(e.contains("format version 2"), "{e}");
    assert!(
        e.contains(&round.join("journal").display().to_string()),
        "{e}"
    );
    assert_eq!(snapshot(&dst), before, "the destination changed");
    assert_eq!(std::fs::read(round.join("journal")).unwrap(), journal);
}
