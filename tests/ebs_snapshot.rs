//! `daffe snapshot push/pull` against a moto server, through a recording,
//! fault-injecting proxy: full and incremental pushes send exactly the changed
//! blocks, pulls are byte-identical, AWS's rules hold on the wire (moto would
//! not catch their breach), throttling and a flaky endpoint are ridden out with
//! a bounded number of retries, and a permanent error names the snapshot, the
//! block and the AWS error code.

use base64::Engine as _;
use daffe_e2e::fault_proxy::{FaultProxy, Injected, Seen};
use daffe_e2e::moto::Moto;
use daffe_e2e::plugin::daffe_bin;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const BLOCK: u64 = 524_288;
/// [`BLOCK`] as a buffer length.
const BLOCK_LEN: usize = 524_288;

struct Env {
    moto: Moto,
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let moto = Moto::start();
        moto.reset();
        Self {
            moto,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `daffe snapshot ARGS --json` against `endpoint`; returns (success, JSON).
    fn daffe(&self, endpoint: &str, args: &[&str]) -> (bool, Value) {
        let state = self.path("state");
        let out = Command::new(daffe_bin())
            .arg("snapshot")
            .args(args)
            .args(["--json", "--endpoint-url", endpoint, "--state-dir"])
            .arg(&state)
            .envs(self.moto.env())
            .output()
            .expect("run daffe");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "daffe {args:?}: no JSON on stdout ({e}): {stdout}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), json)
    }

    fn ok(&self, endpoint: &str, args: &[&str]) -> Value {
        let (ok, json) = self.daffe(endpoint, args);
        assert!(ok, "daffe {args:?} failed: {json}");
        json
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), so blocks differ.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sparse_image(path: &Path, size: u64) {
    File::create(path)
        .expect("create image")
        .set_len(size)
        .expect("size image");
}

fn write_block(path: &Path, index: u64, seed: u64) {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open image");
    let size = f.metadata().expect("stat").len();
    let len =
        usize::try_from(size.saturating_sub(index * BLOCK).min(BLOCK)).expect("at most BLOCK");
    f.write_all_at(&pattern(seed, len), index * BLOCK)
        .expect("write block");
}

fn zero_block(path: &Path, index: u64) {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open image");
    f.write_all_at(&vec![0; BLOCK_LEN], index * BLOCK)
        .expect("zero block");
}

fn b64_sha256(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(data))
}

/// PutSnapshotBlock requests that reached moto: (snapshot, block) -> request.
fn puts(seen: &[Seen]) -> Vec<(String, u64, Seen)> {
    seen.iter()
        .filter(|s| s.method == "PUT" && s.injected.is_none())
        .filter_map(|s| {
            let rest = s.path.strip_prefix("/snapshots/")?;
            let (snap, tail) = rest.split_once("/blocks/")?;
            let index = tail.split('?').next()?.parse().ok()?;
            Some((snap.to_owned(), index, s.clone()))
        })
        .collect()
}

fn blocks_put_to(seen: &[Seen], snap: &str) -> Vec<u64> {
    let mut v: Vec<u64> = puts(seen)
        .into_iter()
        .filter(|(s, ..)| s == snap)
        .map(|(_, i, _)| i)
        .collect();
    v.sort_unstable();
    v
}

fn str_of(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {v}"))
        .to_owned()
}

#[test]
fn push_full_then_two_incremental_rounds_and_pull_back_identical() {
    let env = Env::new();
    let proxy = FaultProxy::start(env.moto.port, |_| None);
    let src = env.path("src.img");
    // 48 MiB: 96 blocks, data in 12 of them.
    sparse_image(&src, 96 * BLOCK);
    let data_blocks = [0u64, 1, 2, 10, 11, 30, 31, 32, 50, 70, 90, 95];
    for &i in &data_blocks {
        write_block(&src, i, i);
    }
    let src_s = src.to_str().unwrap();
    let r0 = env.ok(&proxy.url, &["push", src_s]);
    let s0 = str_of(&r0, "snapshot_id");
    assert_eq!(r0["blocks_uploaded"], 12);
    assert_eq!(blocks_put_to(&proxy.seen(), &s0), data_blocks.to_vec());
    let img0 = fs::read(&src).unwrap();

    // Round 1: one block rewritten, one zeroed, one written in a hole.
    write_block(&src, 10, 1000);
    zero_block(&src, 31);
    write_block(&src, 60, 1001);
    let r1 = env.ok(&proxy.url, &["push", src_s, "--parent", &s0]);
    let s1 = str_of(&r1, "snapshot_id");
    assert_eq!(
        (
            r1["blocks_uploaded"].as_u64(),
            r1["zero_blocks_uploaded"].as_u64()
        ),
        (Some(3), Some(1))
    );
    assert_eq!(blocks_put_to(&proxy.seen(), &s1), vec![10, 31, 60]);
    let img1 = fs::read(&src).unwrap();

    // Round 2: two rewritten, one zeroed.
    write_block(&src, 0, 2000);
    write_block(&src, 95, 2001);
    zero_block(&src, 60);
    let r2 = env.ok(&proxy.url, &["push", src_s, "--parent", &s1]);
    let s2 = str_of(&r2, "snapshot_id");
    assert_eq!(blocks_put_to(&proxy.seen(), &s2), vec![0, 60, 95]);
    let img2 = fs::read(&src).unwrap();

    // Full pulls of each snapshot are byte-identical to the image at that round.
    for (snap, want) in [(&s0, &img0), (&s1, &img1), (&s2, &img2)] {
        let dest = env.path(&format!("full-{snap}.img"));
        let r = env.ok(&proxy.url, &["pull", snap, dest.to_str().unwrap()]);
        assert_eq!(r["index_known"], true);
        assert!(
            fs::read(&dest).unwrap() == *want,
            "full pull of {snap} differs"
        );
    }

    // Incremental pulls write only the changed blocks and keep holes.
    let dest = env.path("inc.img");
    let d = dest.to_str().unwrap();
    env.ok(&proxy.url, &["pull", &s0, d]);
    let r = env.ok(&proxy.url, &["pull", &s1, d, "--base", &s0]);
    assert_eq!(
        (r["blocks_written"].as_u64(), r["blocks_zeroed"].as_u64()),
        (Some(2), Some(1))
    );
    assert!(
        fs::read(&dest).unwrap() == img1,
        "incremental pull of {s1} differs"
    );
    let gets_before = proxy
        .seen()
        .iter()
        .filter(|s| s.method == "GET" && s.path.contains("/blocks/"))
        .count();
    let r = env.ok(&proxy.url, &["pull", &s2, d, "--base", &s1]);
    assert_eq!(
        (r["blocks_written"].as_u64(), r["blocks_zeroed"].as_u64()),
        (Some(2), Some(1))
    );
    let gets = proxy
        .seen()
        .iter()
        .filter(|s| s.method == "GET" && s.path.contains("/blocks/"))
        .count();
    assert_eq!(gets - gets_before, 2, "only the changed blocks are fetched");
    assert!(
        fs::read(&dest).unwrap() == img2,
        "incremental pull of {s2} differs"
    );
    // Holes stay holes: 12 - 1 + 1 - 1 ... = the image's 12 data blocks, nothing more allocated.
    let allocated = fs::metadata(&dest).unwrap().blocks() * 512;
    assert!(
        allocated <= 12 * BLOCK,
        "{allocated} bytes allocated for 12 data blocks"
    );
    assert!(allocated >= 11 * BLOCK, "{allocated} bytes allocated");
}

#[test]
fn ebs_rules_hold_on_the_wire() {
    let env = Env::new();
    let proxy = FaultProxy::start(env.moto.port, |_| None);
    let src = env.path("odd.img");
    // 3 MiB + 1234 bytes: 7 blocks, the last one partial (padded to a full block).
    let size = 6 * BLOCK + 1234;
    sparse_image(&src, size);
    for i in 0..7 {
        write_block(&src, i, 7 + i);
    }
    let src_s = src.to_str().unwrap();
    let r0 = env.ok(&proxy.url, &["push", src_s]);
    let s0 = str_of(&r0, "snapshot_id");
    // moto reports BlockSize 512; every block we sent is 524288 bytes with a
    // SHA-256 checksum of exactly what was sent.
    let sent = puts(&proxy.seen());
    assert_eq!(sent.len(), 7);
    for (_, i, req) in &sent {
        assert_eq!(req.body_len as u64, BLOCK, "block {i}");
        assert_eq!(req.header("x-amz-data-length"), Some("524288"), "block {i}");
        assert_eq!(
            req.header("x-amz-checksum-algorithm"),
            Some("SHA256"),
            "block {i}"
        );
        assert_eq!(
            req.header("x-amz-checksum"),
            Some(req.body_sha256.as_str()),
            "block {i}"
        );
    }
    let last = sent.iter().find(|(_, i, _)| *i == 6).unwrap();
    let mut padded = pattern(13, 1234);
    padded.resize(BLOCK_LEN, 0);
    assert_eq!(
        last.2.body_sha256,
        b64_sha256(&padded),
        "the last block is zero-padded"
    );
    let complete = proxy
        .seen()
        .into_iter()
        .find(|s| s.path.contains("/completion"))
        .expect("CompleteSnapshot");
    assert_eq!(complete.header("x-amz-changedblockscount"), Some("7"));
    assert_eq!(
        complete.header("x-amz-checksum-aggregation-method"),
        Some("LINEAR")
    );

    // A block that became zero is written in the child, as zeros.
    zero_block(&src, 3);
    let r1 = env.ok(&proxy.url, &["push", src_s, "--parent", &s0]);
    let s1 = str_of(&r1, "snapshot_id");
    let child: Vec<_> = puts(&proxy.seen())
        .into_iter()
        .filter(|(s, ..)| *s == s1)
        .collect();
    assert_eq!(child.len(), 1);
    assert_eq!(child[0].1, 3);
    assert_eq!(child[0].2.body_sha256, b64_sha256(&vec![0; BLOCK_LEN]));
    // The pull reads through the parent for the other blocks (moto does not).
    let dest = env.path("odd-back.img");
    env.ok(&proxy.url, &["pull", &s1, dest.to_str().unwrap()]);
    assert!(fs::read(&dest).unwrap() == fs::read(&src).unwrap());
    assert_eq!(fs::metadata(&dest).unwrap().len(), size);

    // Parent together with Encrypted is refused by us, before any request.
    let before = proxy.seen().len();
    let (ok, err) = env.daffe(&proxy.url, &["push", src_s, "--parent", &s1, "--encrypted"]);
    assert!(!ok);
    assert!(str_of(&err, "error").contains("ParentSnapshotId"), "{err}");
    assert_eq!(
        proxy.seen().len(),
        before,
        "no request reached the endpoint"
    );
}

#[test]
fn throttling_and_a_flaky_endpoint_are_ridden_out() {
    let env = Env::new();
    // Every 4th request is throttled, every 7th (not 4th) gets an HTML 500.
    let proxy = FaultProxy::start(env.moto.port, |s| match s.seq {
        n if n % 4 == 3 => Some(Injected::throttle()),
        n if n % 7 == 6 => Some(Injected::server_error()),
        _ => None,
    });
    let src = env.path("src.img");
    sparse_image(&src, 40 * BLOCK);
    for i in 0..40 {
        write_block(&src, i, 500 + i);
    }
    let src_s = src.to_str().unwrap();
    let r = env.ok(&proxy.url, &["push", src_s]);
    let injected = proxy.seen().iter().filter(|s| s.injected.is_some()).count() as u64;
    assert!(injected >= 10, "{injected} faults injected");
    // One retry per injected fault, no more (one retry layer), no less.
    assert_eq!(r["retries"].as_u64(), Some(injected));
    assert_eq!(r["blocks_uploaded"], 40);
    let snap = str_of(&r, "snapshot_id");

    let before = injected;
    let dest = env.path("back.img");
    let p = env.ok(&proxy.url, &["pull", &snap, dest.to_str().unwrap()]);
    let injected = proxy.seen().iter().filter(|s| s.injected.is_some()).count() as u64;
    assert_eq!(p["retries"].as_u64(), Some(injected - before));
    assert!(fs::read(&dest).unwrap() == fs::read(&src).unwrap());
}

#[test]
fn a_permanent_error_names_the_snapshot_the_block_and_the_code() {
    let env = Env::new();
    let proxy = FaultProxy::start(env.moto.port, |s| {
        (s.method == "PUT" && s.path.ends_with("/blocks/2"))
            .then(|| Injected::aws_error(400, "ValidationException", "The block is invalid"))
    });
    let src = env.path("src.img");
    sparse_image(&src, 4 * BLOCK);
    for i in 0..4 {
        write_block(&src, i, 900 + i);
    }
    let (ok, err) = env.daffe(&proxy.url, &["push", src.to_str().unwrap()]);
    assert!(!ok, "{err}");
    let snap = str_of(&err, "snapshot_id");
    assert!(snap.starts_with("snap-"), "{err}");
    assert_eq!(err["aws_code"], "ValidationException");
    let msg = str_of(&err, "error");
    assert!(
        msg.contains(&snap) && msg.contains("block 2") && msg.contains("ValidationException"),
        "{msg}"
    );
    let tries = proxy
        .seen()
        .iter()
        .filter(|s| s.path.ends_with("/blocks/2"))
        .count();
    assert_eq!(tries, 1, "a permanent error is not retried");
    assert!(
        !proxy.seen().iter().any(|s| s.path.contains("/completion")),
        "an incomplete snapshot is not completed"
    );
}

#[test]
fn a_server_that_keeps_failing_is_given_up_on_after_max_attempts() {
    let env = Env::new();
    let proxy = FaultProxy::start(env.moto.port, |s| {
        (s.method == "PUT" && s.path.ends_with("/blocks/1")).then(Injected::server_error)
    });
    let src = env.path("src.img");
    sparse_image(&src, 2 * BLOCK);
    write_block(&src, 1, 77);
    let (ok, err) = env.daffe(
        &proxy.url,
        &["push", src.to_str().unwrap(), "--max-attempts", "3"],
    );
    assert!(!ok, "{err}");
    assert_eq!(err["aws_code"], "HTTP 500");
    assert!(str_of(&err, "error").contains("after 3 attempt"), "{err}");
    let tries = proxy
        .seen()
        .iter()
        .filter(|s| s.path.ends_with("/blocks/1"))
        .count();
    assert_eq!(tries, 3);
}

/// A daffe run with no AWS configuration at all: no credentials, no region,
/// no profile files, and the instance metadata service either off or pointed
/// at a closed local port (never the real one). Returns (status, stdout,
/// stderr).
fn without_aws(args: &[&str], imds: Option<u16>) -> (bool, String, String) {
    let mut cmd = Command::new(daffe_bin());
    cmd.args(args);
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "DAFFE_LOG",
        "RUST_LOG",
        "DAFFE_LOG_FORMAT",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    match imds {
        None => cmd.env("AWS_EC2_METADATA_DISABLED", "true"),
        Some(port) => cmd.env(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        ),
    };
    let out = cmd.output().expect("run daffe");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A 127.0.0.1 port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Missing credentials are not retried: one attempt, not ten over ~40 s of
/// backoff. Throttling and 5xx still are (the tests above).
#[test]
fn a_push_without_credentials_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    sparse_image(&src, 2 * BLOCK);
    write_block(&src, 0, 5);
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let state = dir.path().join("state");
    let (ok, stdout, stderr) = without_aws(
        &[
            "snapshot",
            "push",
            src.to_str().unwrap(),
            "--json",
            "--region",
            "us-east-1",
            "--endpoint-url",
            &endpoint,
            "--state-dir",
            state.to_str().unwrap(),
        ],
        None,
    );
    assert!(!ok, "{stdout}");
    let err: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no JSON ({e}): {stdout}\n{stderr}"));
    assert_eq!(err["aws_code"], "NoCredentials", "{err}");
    let text = str_of(&err, "error");
    assert!(
        text.contains("after 1 attempt") && text.contains("credential"),
        "{err}"
    );
}

/// The AWS SDK's warnings (here: no region from the metadata service) come
/// after daffe's own error, on one line, without colour codes.
#[test]
fn aws_sdk_warnings_come_after_the_error_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    sparse_image(&src, BLOCK);
    let state = dir.path().join("state");
    let (ok, _, stderr) = without_aws(
        &[
            "snapshot",
            "push",
            src.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
        Some(closed_port()),
    );
    assert!(!ok, "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with("daffe snapshot: no AWS region"),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with("  AWS SDK: failed to load region from IMDS") && lines[1].len() < 400,
        "{stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "colour codes in {stderr:?}");
}
