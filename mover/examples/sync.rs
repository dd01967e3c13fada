//! Minimal use of the mover library: sync a tree (or an image with
//! `--image`) and print the stats as JSON.
//!
//! ```text
//! cargo run --release -p mover --example sync -- SRC DST [--image] [--state-dir DIR] [--verify none|touched|all] [--threads N]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use mover::{Destination, Source, SyncOptions, Verify, sync};

fn main() -> ExitCode {
    run(std::env::args().skip(1))
}

/// The example's body, for `main` and for the test below (`cargo test`
/// runs it: `test = true` in Cargo.toml).
fn run(args: impl IntoIterator<Item = String>) -> ExitCode {
    let mut args = args.into_iter();
    let mut pos = Vec::new();
    let mut image = false;
    let mut opts = SyncOptions::default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--image" => image = true,
            // Stats are always printed as JSON; accepted for `daffe sync` parity.
            "--json" => {}
            "--state-dir" => opts.state_dir = args.next().map(PathBuf::from),
            "--threads" => {
                if let Some(n) = args.next().and_then(|n| n.parse().ok()) {
                    opts.threads = n;
                }
            }
            "--verify" => {
                opts.verify = match args.next().as_deref() {
                    Some("none") => Verify::None,
                    Some("all") => Verify::All,
                    _ => Verify::Touched,
                }
            }
            _ => pos.push(PathBuf::from(a)),
        }
    }
    let [src, dst] = <[PathBuf; 2]>::try_from(pos).unwrap_or_else(|_| {
        eprintln!("usage: sync SRC DST [--image] [--state-dir DIR] [--verify none|touched|all] [--threads N]");
        std::process::exit(2)
    });
    let (s, d) = if image {
        (Source::Image(src), Destination::Image(dst))
    } else {
        (Source::Tree(src), Destination::Tree(dst))
    };
    match sync(&s, &d, &opts) {
        Ok(stats) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&stats).expect("stats serialize")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sync failed: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_syncs_a_tree_twice() {
        let d = tempfile::tempdir().unwrap();
        let (src, dst) = (d.path().join("src"), d.path().join("dst"));
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/f"), vec![7u8; 300_000]).unwrap();
        let args = |extra: &[&str]| {
            let mut v = vec![src.display().to_string(), dst.display().to_string()];
            v.extend(extra.iter().map(|s| (*s).to_owned()));
            v
        };
        assert_eq!(run(args(&[])), ExitCode::SUCCESS);
        assert_eq!(
            std::fs::read(dst.join("sub/f")).unwrap(),
            vec![7u8; 300_000]
        );
        std::fs::write(src.join("g"), b"new").unwrap();
        assert_eq!(run(args(&["--verify", "all"])), ExitCode::SUCCESS);
        assert_eq!(std::fs::read(dst.join("g")).unwrap(), b"new");
        // A destination that is a file: the example reports the failure.
        let file = d.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(
            run([src.display().to_string(), file.display().to_string()]),
            ExitCode::FAILURE
        );
    }
}
