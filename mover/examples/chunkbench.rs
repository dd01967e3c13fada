//! Chunk+hash throughput: in memory (one core, per class), or over a file
//! (the scanner's ordered parallel chunking, all cores).
//!
//! ```text
//! chunkbench mem [MiB]        # in-memory, single thread, db and default classes
//! chunkbench file PATH        # scan one file (image mode) with all cores
//! chunkbench tree PATH CACHE  # scan a tree with a stat cache in CACHE
//! ```

use std::time::Instant;

use mover::internals::chunk::{ChunkClass, chunk_segment};

fn main() {
    run(&std::env::args().skip(1).collect::<Vec<_>>());
}

/// The example's body, for `main` and for the test below (`cargo test`
/// runs it: `test = true` in Cargo.toml).
fn run(args: &[String]) {
    match args.first().map(String::as_str) {
        Some("tree") => {
            // Scan a tree with a stat cache kept in CACHE (as rounds do).
            let path = std::path::PathBuf::from(args.get(1).expect("chunkbench tree PATH CACHE"));
            let cache = std::path::PathBuf::from(args.get(2).expect("chunkbench tree PATH CACHE"));
            let t = Instant::now();
            let s = mover::internals::scan::scan_tree(&path, &cache, scan_options()).expect("scan");
            println!(
                "{{\"entries\": {}, \"reused\": {}, \"bytes_hashed\": {}, \"seconds\": {:.3}}}",
                s.stats.entries,
                s.stats.entries_reused,
                s.stats.bytes_hashed,
                t.elapsed().as_secs_f64()
            );
        }
        Some("file") => {
            let path = std::path::PathBuf::from(args.get(1).expect("chunkbench file PATH"));
            let cache = tempfile_dir();
            let t = Instant::now();
            let s =
                mover::internals::scan::scan_image(&path, &cache, scan_options()).expect("scan");
            let secs = t.elapsed().as_secs_f64();
            let _ = std::fs::remove_dir_all(&cache);
            println!(
                "{{\"bytes\": {}, \"chunks\": {}, \"seconds\": {secs:.3}, \"gib_per_s\": {:.2}}}",
                s.stats.bytes_hashed,
                s.trailer.chunks,
                gib_per_s(s.stats.bytes_hashed, secs)
            );
        }
        _ => {
            let mib: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1024);
            let data = pseudo_random(mib << 20);
            for class in [ChunkClass::Db, ChunkClass::Default] {
                let chunker = class.chunker();
                let t = Instant::now();
                let cpu0 = thread_cpu();
                // The scanner's own chunk loop (`chunk_segment`), over one
                // segment spanning the whole buffer.
                let chunks = chunk_segment(&chunker, &data, 0, true, u64::MAX);
                let n = chunks.len();
                let x = chunks.iter().fold(0u8, |x, c| x ^ c.id.0[0]);
                let secs = t.elapsed().as_secs_f64();
                let cpu = thread_cpu() - cpu0;
                // Per core = per CPU-second of this thread: on a shared,
                // loaded machine wall time measures the neighbours too.
                println!(
                    "{{\"class\": \"{}\", \"bytes\": {}, \"chunks\": {n}, \"seconds\": {secs:.3}, \"cpu_seconds\": {cpu:.3}, \"gib_per_s\": {:.2}, \"gib_per_cpu_s\": {:.2}, \"x\": {x}}}",
                    class.name(),
                    data.len(),
                    gib_per_s(data.len() as u64, secs),
                    gib_per_s(data.len() as u64, cpu)
                );
            }
        }
    }
}

/// GiB per second, for the report.
#[allow(
    clippy::cast_precision_loss,
    reason = "a figure for a human; f64 is plenty"
)]
fn gib_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / (1u64 << 30) as f64
}

/// CPU time of the calling thread, in seconds.
#[allow(
    clippy::cast_precision_loss,
    reason = "seconds of CPU time; f64 is plenty"
)]
fn thread_cpu() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("chunkbench-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// The scanner's settings in a round: all cores, no progress display.
fn scan_options() -> mover::internals::scan::ScanOptions {
    mover::internals::scan::ScanOptions {
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        label: String::new(),
        progress: std::sync::Arc::new(mover::progress::NoProgress),
        changes: None,
        copy_into: None,
    }
}

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_runs_each_mode() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("f");
        std::fs::write(&file, pseudo_random(3 << 20)).unwrap();
        let s = |v: &[&str]| v.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
        run(&s(&["mem", "2"]));
        run(&s(&["file", file.to_str().unwrap()]));
        let cache = d.path().join("cache");
        run(&s(&[
            "tree",
            d.path().to_str().unwrap(),
            cache.to_str().unwrap(),
        ]));
        assert!(cache.exists(), "the tree scan keeps its stat cache");
    }
}
