//! Minimal use of the mover library: sync a tree (or an image with
//! `--image`) and print the stats as JSON.
//!
//! ```text
//! cargo run --release -p mover --example sync -- SRC DST [--image] [--state-dir DIR] [--verify none|touched|all]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use mover::{Destination, Source, SyncOptions, Verify, sync};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut pos = Vec::new();
    let mut image = false;
    let mut opts = SyncOptions::default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--image" => image = true,
            // Stats are always printed as JSON; accepted for `daffe sync` parity.
            "--json" => {}
            "--state-dir" => opts.state_dir = args.next().map(PathBuf::from),
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
        eprintln!("usage: sync SRC DST [--image] [--state-dir DIR] [--verify none|touched|all]");
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
