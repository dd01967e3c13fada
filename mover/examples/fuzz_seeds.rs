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
    for (target, name, bytes) in mover::fuzzing::seeds() {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        let p = d.join(format!("seed-{name}"));
        std::fs::write(&p, &bytes)?;
        println!("{} ({} bytes)", p.display(), bytes.len());
    }
    Ok(())
}
