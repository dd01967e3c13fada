//! Replays the checked-in fuzz corpora (`fuzz/corpus/<target>/`: seeds,
//! what the fuzzer kept, and every crasher found so far) through the same
//! harnesses the cargo-fuzz targets call (`mover::fuzzing`), on stable. A
//! decoder that panics on any of them fails here, in CI, without nightly.

use std::path::PathBuf;

fn corpus_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

#[test]
fn every_corpus_file_decodes_without_a_panic() {
    let mut total = 0;
    for &(target, harness) in mover::fuzzing::TARGETS {
        let dir = corpus_root().join(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {} missing: {e}", dir.display()))
            .map(|e| e.expect("corpus entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "corpus {} is empty", dir.display());
        for f in &files {
            let bytes = std::fs::read(f).expect("read corpus file");
            let r = std::panic::catch_unwind(|| harness(&bytes));
            assert!(r.is_ok(), "{target}: {} panicked", f.display());
        }
        total += files.len();
    }
    eprintln!("replayed {total} corpus files");
}

#[test]
fn every_target_has_a_corpus_and_a_fuzz_target() {
    let fuzz = corpus_root().join("..");
    for &(target, _) in mover::fuzzing::TARGETS {
        let t = fuzz.join("fuzz_targets").join(format!("{target}.rs"));
        assert!(t.is_file(), "no fuzz target {}", t.display());
    }
}

/// The seeds are real, valid inputs: each harness's decoder accepts them
/// (checked through the public readers), so the fuzzer starts past the
/// framing.
#[test]
fn seeds_are_accepted_by_their_decoders() {
    for (target, name, bytes) in mover::fuzzing::seeds() {
        if target == "manifest" {
            mover::internals::manifest::validate(mover::internals::manifest::slice_reader(&bytes))
                .unwrap_or_else(|e| panic!("seed {name} is not a valid manifest: {e}"));
        }
        if target == "message" {
            mover::internals::net::Message::decode(bytes[0], &bytes[1..])
                .unwrap_or_else(|e| panic!("seed {name} is not a valid message: {e}"));
        }
    }
}
