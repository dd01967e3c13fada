//! Writes the fuzz targets' seed corpora: real manifests, deltas, journals,
//! stat caches, block indexes, frames, messages, patches and chunk payloads
//! made by the mover's own writers (`mover::fuzzing::seeds`).
//!
//! `cargo run -p mover --features net,testing --example fuzz_seeds -- fuzz/corpus`

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: fuzz_seeds CORPUS_DIR (writes CORPUS_DIR/<target>/seed-<name>)");
        std::process::exit(2);
    };
    run(&dir)
}

/// The example's body, for `main` and for the test below (`cargo test`
/// runs it: `test = true` in Cargo.toml).
fn run(dir: &std::path::Path) -> std::io::Result<()> {
    for (target, name, bytes) in mover::fuzzing::seeds() {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        let p = d.join(format!("seed-{name}"));
        std::fs::write(&p, &bytes)?;
        println!("{} ({} bytes)", p.display(), bytes.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_example_writes_a_seed_per_target() {
        let d = tempfile::tempdir().unwrap();
        super::run(d.path()).unwrap();
        for (target, _) in mover::fuzzing::TARGETS {
            let n = std::fs::read_dir(d.path().join(target)).map_or(0, Iterator::count);
            assert!(n > 0, "no seed for {target}");
        }
    }
}
