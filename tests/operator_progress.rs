//! `--json-progress`, `-q` and `-v` (issue 13, items 12 and 13) against the
//! real binary: a sync's stderr is a stream of JSON objects, one per line,
//! its stdout the same result as without the flag; `-q` prints nothing on
//! success and still prints errors.

use daffe_e2e::plugin::daffe_bin;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn daffe(args: &[&str], paths: &[&Path]) -> Output {
    Command::new(daffe_bin())
        .args(args)
        .args(paths)
        // The test's own environment must not change what is logged.
        .env_remove("DAFFE_LOG")
        .env_remove("RUST_LOG")
        .env_remove("DAFFE_LOG_FORMAT")
        .output()
        .unwrap()
}

/// A tree of distinct, incompressible files (no chunk repeats, so every
/// byte is copied): 6 files of 700 KiB.
fn corpus(root: &Path) -> u64 {
    let mut total = 0;
    for i in 0..6u64 {
        let dir = root.join(format!("d{}", i % 2));
        std::fs::create_dir_all(&dir).unwrap();
        // xorshift: cheap, distinct per file.
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (i + 1);
        let data: Vec<u8> = (0..700 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect();
        total += data.len() as u64;
        std::fs::write(dir.join(format!("f{i}")), data).unwrap();
    }
    total
}

fn lines(text: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(text)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

#[test]
fn sync_streams_json_progress_and_keeps_its_result() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let bytes = corpus(&src);
    let (a, b) = (t.path().join("a"), t.path().join("b"));

    let plain = daffe(&["sync", "--json"], &[&src, &a]);
    assert!(plain.status.success(), "{plain:?}");
    let out = daffe(&["sync", "--json", "--json-progress"], &[&src, &b]);
    assert!(out.status.success(), "{out:?}");

    // stdout: the same report as without the flag (same keys; the figures
    // that do not depend on timing are equal; the round's figures are at
    // the top level).
    let r1: Value = serde_json::from_slice(&plain.stdout).unwrap();
    let r2: Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&r1), keys(&r2));
    assert_eq!(r1["entries"], r2["entries"]);
    assert_eq!(r2["bytes_fetched"], bytes, "{r2}");

    // stderr: every line one JSON object.
    let events = lines(&out.stderr);
    assert!(events.len() >= 4, "{events:?}");
    for e in &events {
        // Progress events, or log lines (JSON too with --json-progress).
        assert!(
            e["event"].is_string() || e["level"].is_string(),
            "neither an event nor a log line: {e}"
        );
    }
    let events: Vec<&Value> = events.iter().filter(|e| e["event"].is_string()).collect();
    assert!(
        events
            .iter()
            .all(|e| e["command"] == "sync" && e["elapsed_ms"].is_u64())
    );
    let phases: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "phase")
        .map(|e| e["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases.first(), Some(&"scan"), "{phases:?}");
    assert_eq!(phases.last(), Some(&"done"), "{phases:?}");
    // The scan's last count is every byte it read; the copy's last count
    // reaches its total, which is every byte of the tree.
    let last_progress = |phase: &str| {
        events
            .iter()
            .rev()
            .find(|e| e["event"] == "progress" && e["phase"] == phase)
            .copied()
            .unwrap_or_else(|| panic!("no progress in {phase}: {events:?}"))
    };
    assert_eq!(last_progress("scan")["done"], bytes, "{events:?}");
    // 6 files and 2 folders (and the root, if counted).
    let entries = last_progress("scan")["entries"].as_u64().unwrap();
    assert!((8..=9).contains(&entries), "{entries} entries: {events:?}");
    let copy = events
        .iter()
        .find(|e| e["event"] == "phase" && e["total"].as_u64() == Some(bytes))
        .unwrap_or_else(|| panic!("no phase with the tree's size as total: {events:?}"));
    let copy = last_progress(copy["phase"].as_str().unwrap());
    assert_eq!(
        (copy["done"].as_u64(), copy["total"].as_u64()),
        (Some(bytes), Some(bytes))
    );
    assert_eq!(copy["unit"], "bytes");
    // Times only go forward.
    let times: Vec<u64> = events
        .iter()
        .map(|e| e["elapsed_ms"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
}

#[test]
fn quiet_prints_nothing_on_success_and_still_prints_errors() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    corpus(&src);
    // Before the subcommand or after it.
    for (args, dst) in [(&["-q", "sync"][..], "a"), (&["sync", "--quiet"][..], "b")] {
        let dst = t.path().join(dst);
        let out = daffe(args, &[&src, &dst]);
        assert!(out.status.success(), "{out:?}");
        assert!(
            out.stdout.is_empty() && out.stderr.is_empty(),
            "{args:?}: {out:?}"
        );
        assert!(dst.join("d0/f0").exists());
    }
    // Without -q the same command says what it did.
    let out = daffe(&["sync"], &[&src, &t.path().join("c")]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("synced"),
        "{out:?}"
    );
    // An error still reaches stderr, with its exit code (3: no such source).
    let out = daffe(
        &["-q", "sync"],
        &[&t.path().join("missing"), &t.path().join("d")],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing"),
        "{out:?}"
    );
    // --json output was asked for: -q keeps it.
    let out = daffe(&["-q", "sync", "--json"], &[&src, &t.path().join("a")]);
    assert!(out.status.success(), "{out:?}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["entries"], 9, "{r}");
}

#[test]
fn verbose_raises_the_log_level_and_conflicts_with_quiet() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    corpus(&src);
    // -vv: debug for every target; DAFFE_LOG_FORMAT=json makes each line
    // checkable.
    let out = Command::new(daffe_bin())
        .args(["-vv", "sync", "--json-progress"])
        .args([&src, &t.path().join("a")])
        .env_remove("DAFFE_LOG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let levels: Vec<String> = lines(&out.stderr)
        .iter()
        .filter_map(|e| e["level"].as_str().map(str::to_owned))
        .collect();
    assert!(
        levels.iter().any(|l| l == "DEBUG"),
        "no debug line with -vv: {levels:?}"
    );
    let quiet = daffe(&["sync", "--json-progress"], &[&src, &t.path().join("b")]);
    let levels = lines(&quiet.stderr)
        .iter()
        .filter(|e| e["level"] == "DEBUG")
        .count();
    assert_eq!(levels, 0, "debug lines without -v: {quiet:?}");
    // Both at once is a usage error.
    let out = daffe(&["-q", "sync", "-v"], &[&src, &t.path().join("c")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// Runs `daffe snapshot ARGS --json [--json-progress]` against moto;
/// returns the output.
fn snapshot(moto: &daffe_e2e::moto::Moto, state: &Path, args: &[&str], progress: bool) -> Output {
    let mut c = Command::new(daffe_bin());
    c.arg("snapshot")
        .args(args)
        .args(["--json", "--endpoint-url", &moto.url, "--state-dir"])
        .arg(state)
        .envs(moto.env())
        .env_remove("DAFFE_LOG")
        .env_remove("RUST_LOG")
        .env_remove("DAFFE_LOG_FORMAT");
    if progress {
        c.arg("--json-progress");
    }
    c.output().unwrap()
}

/// The report without what differs between two runs of the same operation
/// (its snapshot id, timings and the index path).
fn stable(mut r: Value) -> Value {
    for k in [
        "snapshot_id",
        "duration_secs",
        "index_path",
        "base",
        "parent",
    ] {
        r.as_object_mut().unwrap().remove(k);
    }
    r
}

/// `snapshot push` and `pull` with `--json-progress` (issue 13, item 13):
/// every line of stdout and stderr parses as JSON, the progress counts every
/// block, and the report is the one a run without the flag prints.
#[test]
fn snapshot_push_and_pull_stream_json_progress_and_keep_their_result() {
    let moto = daffe_e2e::moto::Moto::start();
    moto.reset();
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    // 4 MiB: 8 blocks of 512 KiB, all data.
    let img = t.path().join("src.img");
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let data: Vec<u8> = (0..4 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect();
    std::fs::write(&img, &data).unwrap();
    let img_s = img.to_str().unwrap();

    let plain = snapshot(&moto, &state, &["push", img_s], false);
    assert!(plain.status.success(), "{plain:?}");
    let out = snapshot(&moto, &state, &["push", img_s], true);
    assert!(out.status.success(), "{out:?}");
    let (r1, r2) = (lines(&plain.stdout), lines(&out.stdout));
    assert_eq!(r2.len(), 1, "stdout is the one report: {r2:?}");
    assert_eq!(stable(r1[0].clone()), stable(r2[0].clone()));
    assert_eq!(r2[0]["blocks_uploaded"], 8, "{}", r2[0]);
    let snap = r2[0]["snapshot_id"].as_str().unwrap().to_owned();
    check_block_events(&lines(&out.stderr), "snapshot-push", 8);

    let (a, b) = (t.path().join("a.img"), t.path().join("b.img"));
    let plain = snapshot(&moto, &state, &["pull", &snap, a.to_str().unwrap()], false);
    assert!(plain.status.success(), "{plain:?}");
    let out = snapshot(&moto, &state, &["pull", &snap, b.to_str().unwrap()], true);
    assert!(out.status.success(), "{out:?}");
    let (r1, r2) = (lines(&plain.stdout), lines(&out.stdout));
    assert_eq!(r2.len(), 1, "stdout is the one report: {r2:?}");
    assert_eq!(stable(r1[0].clone()), stable(r2[0].clone()));
    assert_eq!(r2[0]["blocks_written"], 8, "{}", r2[0]);
    assert_eq!(std::fs::read(&b).unwrap(), data);
    check_block_events(&lines(&out.stderr), "snapshot-pull", 8);
}

/// A block operation's stderr: JSON lines only (events or log lines), every
/// event of `command`, a phase that counts to `blocks`.
fn check_block_events(values: &[Value], command: &str, blocks: u64) {
    assert!(!values.is_empty(), "no progress at all");
    for v in values {
        assert!(
            v["event"].is_string() || v["level"].is_string(),
            "neither an event nor a log line: {v}"
        );
    }
    let events: Vec<&Value> = values.iter().filter(|e| e["event"].is_string()).collect();
    assert!(
        events.iter().all(|e| e["command"] == command
            && e["elapsed_ms"].is_u64()
            && (e["event"] != "phase" || e["unit"] == "blocks")),
        "{events:#?}"
    );
    assert!(
        events.iter().any(|e| e["event"] == "progress"
            && e["done"].as_u64() == Some(blocks)
            && e["total"].as_u64() == Some(blocks)),
        "no phase counted {blocks} of {blocks} blocks: {events:#?}"
    );
}
