//! No-panic tests of the plugin's decoders of outside bytes (issue 12,
//! "Fuzzing"): VolumeDriver requests (dockerd, or anything that can reach
//! the plugin socket), control API requests, the config file with its
//! profiles, and the volume name grammar. Each decoder gets mutants of real
//! inputs (bit flips, cut, spliced, duplicated ranges, tokens that parsers
//! trip on) from a fixed-seed generator: the same cases every run, so a
//! failure reproduces. A panic fails the test; an `Err` is the right answer.
//!
//! This is the stable, in-CI part. The coverage-guided part is the
//! `plugin_*` cargo-fuzz targets under `fuzz/` (`bench/fuzz.sh`), which run
//! the harnesses of `fuzz_harness.rs`; the corpora they keep are checked in
//! and replayed here through the same harnesses.

use crate::api::request::Request;
use crate::config::Config;
use crate::control::ControlRequest;
use hyper::Method;
use std::path::Path;

/// Mutants per seed: ~20k per decoder, a second or two in a debug build.
const ROUNDS: usize = 2_000;

/// Bytes that send parsers down rare paths.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"%",
    b"%2F",
    b"%00",
    b"/",
    b"@",
    b"..",
    b"\0",
    b"\xff",
    b"\xc3",
    b"=",
    b"\n[",
    b"'''",
    b"1e999",
    b"-1",
    b"18446744073709551616",
    b":",
    b",",
    b"null",
    b"true",
];

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
    }
}

/// One mutant of `seed`: one to four edits.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(b.len() + 1);
        match rng.below(6) {
            0 if !b.is_empty() => {
                let i = at.min(b.len() - 1);
                b[i] ^= 1 << rng.below(8);
            }
            1 => b.truncate(at),
            2 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                b.splice(at..at, t.iter().copied());
            }
            3 if at < b.len() => {
                let end = (at + rng.below(16) + 1).min(b.len());
                b.drain(at..end);
            }
            4 if at < b.len() => {
                let end = (at + rng.below(64) + 1).min(b.len());
                let piece = b[at..end].to_vec();
                b.splice(at..at, piece);
            }
            _ => {
                let fill = vec![b"a"[0]; rng.below(5000)];
                b.splice(at..at, fill);
            }
        }
    }
    b
}

/// Runs `decode` on `ROUNDS` mutants of every seed (and the seeds).
fn hammer(seeds: &[&[u8]], mut decode: impl FnMut(&[u8])) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for seed in seeds {
        decode(seed);
        for _ in 0..ROUNDS {
            decode(&mutate(&mut rng, seed));
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn volume_driver_requests_never_panic() {
    let seeds: &[&[u8]] = &[
        b"/VolumeDriver.Create\n{\"Name\":\"db@gold\",\"Opts\":{\"size\":\"20G\",\"profile\":\"gold\"}}",
        b"/VolumeDriver.Mount\n{\"Name\":\"db\",\"ID\":\"abc123\"}",
        b"/VolumeDriver.Remove\n{\"Name\":\"a/../b\"}",
        b"/VolumeDriver.Get\n{\"Name\":\"db\"}",
        b"/Plugin.Activate\n",
        b"/VolumeDriver.List\n{}",
    ];
    hammer(seeds, |b| {
        let (path, body) = match b.iter().position(|&c| c == b'\n') {
            Some(i) => (text(&b[..i]), &b[i + 1..]),
            None => (text(b), &b[b.len()..]),
        };
        let _ = Request::parse(&path, body);
    });
}

#[test]
fn control_requests_never_panic() {
    let seeds: &[&[u8]] = &[
        b"POST /v1/volumes/v/move\n{\"to\":\"hostb\"}",
        b"POST /v1/receive/prepare\n{\"volume\":\"v@gold\",\"options\":{\"size\":\"1G\"},\"from\":\"a\"}",
        b"POST /v1/receive/check\n{\"volume\":\"v\",\"need_bytes\":18446744073709551615}",
        b"POST /v1/volumes/db%40gold/ebs/copy\n{\"snapshot_id\":\"snap-1\",\"zone\":\"z\"}",
        b"POST /v1/profiles/p\n{\"local\":{\"format\":\"block\",\"default_size\":\"5G\"}}",
        b"POST /v1/volumes/v/profile\n{\"profile\":\"gold\"}",
        b"GET /v1/volumes/v/transfer\n",
        b"GET /v1/status\n",
    ];
    hammer(seeds, |b| {
        let line_end = b.iter().position(|&c| c == b'\n').unwrap_or(b.len());
        let line = text(&b[..line_end]);
        let body = b.get(line_end + 1..).unwrap_or_default();
        let (method, path) = line.split_once(' ').unwrap_or(("POST", &line));
        let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::POST);
        let _ = ControlRequest::parse(&method, path, body);
    });
}

#[test]
fn config_files_never_panic() {
    let seeds: &[&[u8]] = &[
        br#"socket = "/run/docker/plugins/x.sock"
control_socket = "/run/x/control.sock"
data_root = "/srv/daffe"
backend = "ebs"
[aws]
availability_zone = "us-east-1b"
device_resolver = "loop"
[profiles.silver.local]
format = "block"
default_size = "5G"
[profiles.fast.ebs]
volume_type = "io2"
iops = 3000
"#,
        b"[profiles.x]\nlocal = { format = \"dir\", root = \"/srv/x\" }\n",
    ];
    hammer(seeds, |b| {
        let _ = Config::parse(&text(b), Path::new("fuzz.toml"));
    });
}

#[test]
fn volume_names_never_panic() {
    let seeds: &[&[u8]] = &[b"db@gold", b"a-b_c.d@x", b"v", b"@", b"x@y@z"];
    hammer(seeds, |b| {
        let _ = profiles::VolumeName::parse(&text(b));
    });
}

/// A fuzz harness: bytes in, a panic on a bug.
type Harness = fn(&[u8]);

/// The `plugin_*` fuzz targets and their harnesses (`fuzz/fuzz_targets/`).
const FUZZ_TARGETS: &[(&str, Harness)] = &[
    (
        "plugin_volume_driver",
        crate::fuzz_harness::volume_driver_request,
    ),
    ("plugin_control", crate::fuzz_harness::control_request),
    ("plugin_config", crate::fuzz_harness::config),
    ("plugin_volume_name", crate::fuzz_harness::volume_name),
    ("plugin_volume_record", crate::fuzz_harness::volume_record),
    (
        "plugin_catalogue_record",
        crate::fuzz_harness::catalogue_record,
    ),
    ("plugin_peer_request", crate::fuzz_harness::peer_request),
];

fn fuzz_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Every file of `fuzz/corpus/TARGET/`, sorted.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} missing: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
        .into_iter()
        .map(|f| {
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
            (
                name.unwrap_or_default(),
                std::fs::read(&f).expect("read corpus file"),
            )
        })
        .collect()
}

/// The checked-in corpora (seeds, what the fuzzer kept, every crasher
/// found so far) through the fuzz targets' own harnesses: a regression of
/// anything libFuzzer found fails `cargo test`, on stable.
#[test]
fn plugin_fuzz_corpora_replay_without_a_panic() {
    let mut total = 0;
    for &(target, harness) in FUZZ_TARGETS {
        for (name, bytes) in corpus(target) {
            let r = std::panic::catch_unwind(|| harness(&bytes));
            assert!(r.is_ok(), "{target}: corpus file {name} panicked");
            total += 1;
        }
        let t = fuzz_dir().join("fuzz_targets").join(format!("{target}.rs"));
        assert!(t.is_file(), "no fuzz target {}", t.display());
    }
    assert!(total >= FUZZ_TARGETS.len());
}

/// The seeds (`seed-*`) are real, valid inputs, so the fuzzer starts past
/// the framing; `bad-*` files are kept invalid ones.
#[test]
fn plugin_fuzz_seeds_are_accepted_by_their_decoders() {
    for &(target, _) in FUZZ_TARGETS {
        for (name, bytes) in corpus(target)
            .into_iter()
            .filter(|(n, _)| n.starts_with("seed-"))
        {
            let (line, body) = match bytes.iter().position(|&c| c == b'\n') {
                Some(i) => (text(&bytes[..i]), &bytes[i + 1..]),
                None => (text(&bytes), &bytes[bytes.len()..]),
            };
            let ok = match target {
                "plugin_volume_driver" => Request::parse(&line, body).is_ok(),
                "plugin_control" => {
                    let (m, p) = line.split_once(' ').expect("METHOD PATH");
                    let m = Method::from_bytes(m.as_bytes()).expect("method");
                    ControlRequest::parse(&m, p, body).is_ok()
                }
                "plugin_config" => Config::parse(&text(&bytes), Path::new("seed.toml")).is_ok(),
                "plugin_volume_name" => profiles::VolumeName::parse(&text(&bytes)).is_ok(),
                "plugin_volume_record" => {
                    serde_json::from_slice::<crate::state::record::VolumeRecord>(&bytes).is_ok()
                }
                "plugin_catalogue_record" => {
                    crate::clustering::catalogue::CatalogueRecord::decode("s", &bytes).is_ok()
                }
                "plugin_peer_request" => {
                    serde_json::from_slice::<crate::migrate::wire::PeerRequest>(&bytes).is_ok()
                }
                _ => panic!("no seed check for {target}"),
            };
            assert!(ok, "{target}: seed {name} is not accepted by its decoder");
        }
    }
}

/// What the destination's agent answers a migration source: the fuzz
/// crate has a stand-in for `ReceiveCheck` (see `fuzz/src/lib.rs`), so the
/// replies are checked here, with the real type.
#[test]
fn peer_replies_never_panic() {
    let seeds: &[&[u8]] = &[
        br#"{"reply":"preflight","docker_name":"v@gold","profile":"gold","root":"/d","free_bytes":5,"need_bytes":4,"resuming":false}"#,
        br#"{"reply":"committed","ready_unix_ms":1700000000000}"#,
        br#"{"reply":"health","version":"0.1.0","daemon_error":null}"#,
        br#"{"reply":"commit_status","committed":true}"#,
        br#"{"reply":"prepared","token":"0123456789abcdef0123456789abcdef"}"#,
    ];
    for seed in seeds {
        serde_json::from_slice::<crate::migrate::wire::PeerReply>(seed).expect("seed decodes");
    }
    hammer(seeds, |b| {
        if let Ok(r) = serde_json::from_slice::<crate::migrate::wire::PeerReply>(b) {
            let back = serde_json::to_vec(&r).expect("encodes");
            assert_eq!(
                serde_json::from_slice::<crate::migrate::wire::PeerReply>(&back).ok(),
                Some(r)
            );
        }
    });
}
