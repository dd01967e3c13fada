//! `daffe sync SRC DST`: make a local tree or image identical to another,
//! incrementally (only what DST lacks is copied), with a progress bar on a
//! terminal and `--json` stats for scripts. `--dry-run` lists what a run
//! would create, change and delete, and creates nothing.

use crate::config::DEFAULT_CONTROL_SOCKET;
use crate::metrics::report::RunReport;
use crate::migrate::report::{human_bytes, secs_of_ms};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use mover::{
    Action, Change, Destination, Phase, Preview, Progress, ProgressSink, Source, SyncOptions,
    SyncStats, Verify,
};

/// Sync a local directory tree or image (file or block device) into DST.
///
/// Trees keep every file type and attribute: hardlinks, symlinks (never
/// followed), fifos and devices, owners, modes, ns times, xattrs and ACLs,
/// sparse holes. Images (SRC a regular file or block device) keep their
/// holes. Each run is atomic: DST is the old state or the new one, never half;
/// an interrupted run resumes where its data was durably stored. A second run
/// copies only what changed; from a `dir` volume's directory (`docker volume
/// inspect -f '{{.Mountpoint}}' NAME`), with the daemon running, it reads a
/// changed file only where the daemon saw it written.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Source: a directory, or an image file / block device.
    pub(crate) src: PathBuf,
    /// Destination: a directory (created if missing), or an image file /
    /// block device (for an image source).
    pub(crate) dst: PathBuf,
    /// Print the stats as JSON on stdout (no progress bar).
    #[arg(long)]
    pub(crate) json: bool,
    /// Destination state dir (same filesystem as DST).
    /// Default: `.DSTNAME.daffe-state` beside DST.
    #[arg(long, value_name = "DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// What to re-read after applying.
    #[arg(long, value_enum, default_value_t = VerifyArg::Touched)]
    pub(crate) verify: VerifyArg,
    /// Chunking threads (default: all cores).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// Allow a first sync into a non-empty directory (or an existing image)
    /// that daffe has not synced to before: files there that SRC lacks are
    /// deleted (an image is overwritten). Without it such a DST is refused.
    /// Later runs into a daffe destination need no flag.
    #[arg(long, visible_alias = "force")]
    pub(crate) delete: bool,
    /// Print what a run would create, change and delete, with sizes, and
    /// change nothing: neither DST nor its state dir is created. With
    /// --json: one object with every change and the totals.
    #[arg(long, short = 'n')]
    pub(crate) dry_run: bool,
    /// Stream progress on stderr as JSON, one object per line (see README,
    /// "Progress for scripts"); stdout is unchanged.
    #[arg(long)]
    pub json_progress: bool,
    /// The local daemon's control socket: the run's figures go to its
    /// metrics, and when SRC is a `dir` volume's directory the daemon says
    /// where its files were written since the last sync (a changed file is
    /// then read only there). Nothing happens when no daemon runs here.
    #[arg(long, env = "DAFFE_CONTROL_SOCKET", default_value = DEFAULT_CONTROL_SOCKET)]
    pub(crate) control_socket: PathBuf,
}

/// `--verify` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum VerifyArg {
    /// Only chunks are checked on arrival.
    None,
    /// Re-read what this run wrote.
    Touched,
    /// Re-read everything, repairing what is corrupt.
    All,
}

struct Bar(ProgressBar);

/// Phases with no known total (scan, apply, verify): a spinner with what
/// was seen so far, never a bar reading "0 B/0 B".
const SPINNER: &str = "{spinner} {msg} {bytes}";
/// The copy, against its total: 70 columns at most (fits 80).
const BAR: &str = "{spinner} {msg:9!} [{bar:24}] {bytes:>10}/{total_bytes:<10} eta {eta:>4}";

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl ProgressSink for Bar {
    fn event(&self, ev: &Progress) {
        match ev {
            Progress::Phase { phase, total_bytes } => {
                let (name, total) = match phase {
                    Phase::Recover => ("recovering", 0),
                    Phase::Scan => ("scanning", 0),
                    Phase::Plan | Phase::Fetch => ("copying", *total_bytes),
                    Phase::Apply => ("applying", 0),
                    // Counted on its own (it re-reads only what it checks).
                    Phase::Verify => ("verified", 0),
                    Phase::Done => ("done", 0),
                };
                self.0.set_position(0);
                if total > 0 {
                    self.0.set_style(style(BAR));
                    self.0.set_length(total);
                } else {
                    self.0.set_style(style(SPINNER));
                }
                self.0.set_message(name);
            }
            Progress::Scanned {
                entries,
                bytes_hashed,
            } => {
                // Files seen and bytes read so far (the spinner's {bytes}).
                self.0.set_message(format!("scanning: {entries} entries,"));
                self.0.set_position(*bytes_hashed);
            }
            Progress::Moved { bytes } | Progress::Verified { bytes } => self.0.inc(*bytes),
            Progress::Warning { message } => self.0.println(format!("warning: {message}")),
        }
    }
}

fn is_image(p: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() || m.file_type().is_block_device())
}

fn summary(s: &SyncStats) -> String {
    format!(
        "synced {} entries ({} scanned, {} hashed): {} chunks new ({} fetched), {} reused ({}), {} written, {} deleted, in {:.2}s",
        s.rounds.entries,
        human_bytes(s.bytes_scanned),
        human_bytes(s.bytes_hashed),
        s.rounds.chunks_new,
        human_bytes(s.rounds.bytes_fetched),
        s.rounds.chunks_reused,
        human_bytes(s.rounds.bytes_reused),
        human_bytes(s.rounds.bytes_written),
        s.rounds.deleted,
        secs_of_ms(s.duration_ms)
    )
}

/// The word a dry run prints for an action.
fn action_word(a: Action) -> &'static str {
    match a {
        Action::Create => "create",
        Action::Replace => "replace",
        Action::Patch => "patch",
        Action::Metadata => "metadata",
        Action::Delete => "delete",
    }
}

/// The size a dry run shows for a change: the data a run writes for it
/// (created and changed), the logical size it frees (deleted).
fn change_bytes(c: &Change) -> u64 {
    match c.action {
        Action::Delete => c.size,
        _ => c.data_bytes,
    }
}

/// One dry-run line: action, size, path (`.` for DST itself).
fn change_line(c: &Change) -> String {
    let path = c.display_path();
    format!(
        "{:<8} {:>10}  {}",
        action_word(c.action),
        human_bytes(change_bytes(c)),
        if path.is_empty() { "." } else { &path }
    )
}

/// Logical size of what is at `path` (a directory: everything under it),
/// read-only: a name no manifest lists has no recorded size, and the
/// operator deciding on `--delete` wants to see what it holds.
fn size_on_disk(path: &std::path::Path) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !m.is_dir() {
        return m.len();
    }
    std::fs::read_dir(path)
        .map(|rd| rd.flatten().map(|e| size_on_disk(&e.path())).sum())
        .unwrap_or(0)
}

/// The dry run's last line.
fn preview_summary(p: &Preview) -> String {
    format!(
        "dry run: would create {} entries ({}), change {} ({}), delete {} ({}); nothing was changed",
        p.created.entries,
        human_bytes(p.created.bytes),
        p.changed.entries,
        human_bytes(p.changed.bytes),
        p.deleted.entries,
        human_bytes(p.deleted.bytes),
    )
}

/// A change as JSON (the path as text: a byte array helps no script).
fn change_json(c: &Change) -> serde_json::Value {
    serde_json::json!({
        "action": action_word(c.action),
        "path": c.display_path(),
        "size": c.size,
        "data_bytes": c.data_bytes,
    })
}

/// `daffe sync --dry-run`.
fn run_dry(args: &SyncArgs, src: &Source, dst: &Destination, opts: &SyncOptions) -> ExitCode {
    let mut changes = Vec::new();
    let json = args.json;
    // Names at DST that no manifest lists (a foreign destination's files)
    // come without a size: measure them (tree destinations only).
    let mut foreign_bytes = 0;
    let result = mover::preview(src, dst, opts, &mut |c| {
        let measured;
        let c = match (c.action, c.kind.is_none(), dst) {
            (Action::Delete, true, Destination::Tree(root)) if !c.path.is_empty() => {
                use std::os::unix::ffi::OsStrExt;
                let size = size_on_disk(&root.join(std::ffi::OsStr::from_bytes(&c.path)));
                foreign_bytes += size;
                measured = Change { size, ..c.clone() };
                &measured
            }
            _ => c,
        };
        if json {
            changes.push(change_json(c));
        } else {
            println!("{}", change_line(c));
        }
    });
    let result = result.map(|mut p| {
        p.deleted.bytes += foreign_bytes;
        p
    });
    match result {
        Ok(p) if json => {
            super::print_json(&serde_json::json!({
                "dry_run": true,
                "changes": changes,
                "created": p.created,
                "changed": p.changed,
                "deleted": p.deleted,
            }));
            ExitCode::SUCCESS
        }
        Ok(p) => {
            println!("{}", preview_summary(&p));
            ExitCode::SUCCESS
        }
        Err(e) if json => super::fail(true, e),
        Err(e) => {
            eprintln!(
                "daffe sync --dry-run {} {}: {e}",
                args.src.display(),
                args.dst.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// A missing source is "not found" (3); anything else 1.
fn exit_of(e: &mover::SyncError) -> u8 {
    match e {
        mover::SyncError::Preflight(mover::PreflightError::Source { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            super::exit::NOT_FOUND
        }
        _ => super::exit::FAILURE,
    }
}

/// Runs `daffe sync`.
pub fn run(args: SyncArgs) -> ExitCode {
    let (src, dst) = if is_image(&args.src) {
        (
            Source::Image(args.src.clone()),
            Destination::Image(args.dst.clone()),
        )
    } else {
        (
            Source::Tree(args.src.clone()),
            Destination::Tree(args.dst.clone()),
        )
    };
    let mut opts = SyncOptions::default()
        .with_state_dir(args.state_dir.clone())
        .with_verify(match args.verify {
            VerifyArg::None => Verify::None,
            VerifyArg::Touched => Verify::Touched,
            VerifyArg::All => Verify::All,
        })
        .with_allow_foreign(args.delete);
    if let Some(t) = args.threads {
        opts.threads = t.max(1);
    }
    tracing::debug!(src = %args.src.display(), dst = %args.dst.display(),
        threads = opts.threads, allow_foreign = opts.allow_foreign, "sync");
    if args.dry_run {
        return run_dry(&args, &src, &dst, &opts);
    }
    let tracked = super::volume_tracker::for_source(&src, &dst, &opts, &args.control_socket)
        .map(|(volume, tracker)| {
            tracing::debug!(%volume, "the daemon tracks this volume's writes: changed files are read where written");
            opts.changes = Some(tracker);
            volume
        });
    let quiet = super::output::quiet();
    let stream = args
        .json_progress
        .then(|| Arc::new(super::progress_json::JsonLines::new("sync", "bytes")));
    if let Some(s) = &stream {
        opts.progress = s.clone();
    }
    let bar =
        (stream.is_none() && !quiet && !args.json && std::io::stderr().is_terminal()).then(|| {
            let pb = ProgressBar::new(0);
            pb.set_style(style(SPINNER));
            pb.enable_steady_tick(std::time::Duration::from_millis(120));
            pb
        });
    if let Some(pb) = &bar {
        opts.progress = Arc::new(Bar(pb.clone()));
    }
    let result = mover::sync(&src, &dst, &opts);
    if let Some(pb) = &bar {
        pb.finish_and_clear();
    }
    if let Some(s) = &stream {
        s.finish();
    }
    if let Ok(stats) = &result {
        crate::metrics::report::post(&args.control_socket, RunReport::of_sync(stats));
    }
    match result {
        Ok(stats) => {
            if args.json {
                match serde_json::to_string_pretty(&stats) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("daffe sync: cannot print stats: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else if !quiet {
                for s in &stats.rounds.skipped {
                    eprintln!("warning: {}: {} not copied: {}", s.path, s.what, s.reason);
                }
                println!("{}", summary(&stats));
                if let Some(v) = &tracked {
                    println!("(volume {v}: files read where the daemon saw them written)");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if args.json {
                println!("{}", serde_json::json!({ "error": e.to_string() }));
            } else {
                eprintln!(
                    "daffe sync {} {}: {e}",
                    args.src.display(),
                    args.dst.display()
                );
            }
            super::exit::code(exit_of(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn syncs_a_tree_and_an_image() {
        let t = tempfile::tempdir().expect("tempdir");
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("d")).expect("mkdir");
        std::fs::write(src.join("d/f"), b"payload").expect("write");
        let args = |src: PathBuf, dst: PathBuf| SyncArgs {
            src,
            dst,
            json: true,
            state_dir: None,
            verify: VerifyArg::Touched,
            threads: Some(1),
            delete: false,
            dry_run: false,
            json_progress: false,
            control_socket: PathBuf::from("/nonexistent/daffe-control.sock"),
        };
        assert_eq!(
            run(args(src.clone(), t.path().join("dst"))),
            ExitCode::SUCCESS
        );
        assert_eq!(
            std::fs::read(t.path().join("dst/d/f")).expect("read"),
            b"payload"
        );
        let img = t.path().join("a.img");
        std::fs::write(&img, vec![7u8; 100_000]).expect("write");
        assert_eq!(run(args(img, t.path().join("b.img"))), ExitCode::SUCCESS);
        assert_eq!(
            std::fs::read(t.path().join("b.img")).expect("read"),
            vec![7u8; 100_000]
        );
        // A tree into an existing image is refused, with an error, not a panic.
        assert_eq!(run(args(src, t.path().join("b.img"))), ExitCode::FAILURE);
    }

    #[test]
    fn never_deletes_or_creates_without_being_asked() {
        let t = tempfile::tempdir().expect("tempdir");
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        let args = |src: &Path, dst: &Path, delete: bool| SyncArgs {
            src: src.to_owned(),
            dst: dst.to_owned(),
            json: true,
            state_dir: None,
            verify: VerifyArg::Touched,
            threads: Some(1),
            delete,
            dry_run: false,
            json_progress: false,
            control_socket: PathBuf::from("/nonexistent/daffe-control.sock"),
        };
        // A missing source creates nothing, and is "not found" (3).
        assert_eq!(run(args(&src, &dst, false)), ExitCode::from(3));
        assert!(!dst.exists());
        assert!(!t.path().join(".dst.daffe-state").exists());
        std::fs::create_dir(&src).expect("mkdir");
        std::fs::write(src.join("new"), b"n").expect("write");
        // A non-empty directory daffe never synced to keeps its files...
        std::fs::create_dir(&dst).expect("mkdir");
        std::fs::write(dst.join("precious"), b"p").expect("write");
        assert_eq!(run(args(&src, &dst, false)), ExitCode::FAILURE);
        assert!(dst.join("precious").exists());
        assert!(!dst.join("new").exists());
        // ...unless --delete says otherwise; later runs need no flag.
        assert_eq!(run(args(&src, &dst, true)), ExitCode::SUCCESS);
        assert!(!dst.join("precious").exists());
        std::fs::write(src.join("new2"), b"n").expect("write");
        assert_eq!(run(args(&src, &dst, false)), ExitCode::SUCCESS);
        assert!(dst.join("new2").exists());
        // Overlapping source and destination are refused, even with --delete.
        for bad in [src.clone(), src.join("inner")] {
            assert_eq!(run(args(&src, &bad, true)), ExitCode::FAILURE);
        }
        assert!(!src.join("inner").exists());
    }

    #[test]
    fn dry_run_lines_show_action_size_and_path() {
        let c = |action, size, data_bytes| Change {
            action,
            path: b"d/f".to_vec(),
            kind: None,
            size,
            data_bytes,
        };
        assert_eq!(
            change_line(&c(Action::Delete, 2048, 0)),
            format!("delete   {:>10}  d/f", human_bytes(2048))
        );
        assert_eq!(
            change_line(&c(Action::Patch, 9000, 100)),
            format!("patch    {:>10}  d/f", human_bytes(100))
        );
        let v = change_json(&c(Action::Create, 5, 5));
        assert_eq!(v["action"], "create");
        assert_eq!(v["path"], "d/f");
        let mut p = Preview::default();
        p.add(&c(Action::Create, 5, 5));
        p.add(&c(Action::Delete, 7, 0));
        let line = preview_summary(&p);
        assert!(
            line.contains("create 1 entries") && line.contains("delete 1"),
            "{line}"
        );
    }

    #[test]
    fn progress_templates_parse_and_the_bar_fits_80_columns() {
        for t in [SPINNER, BAR] {
            assert!(ProgressStyle::with_template(t).is_ok(), "{t}");
        }
        // Fixed parts plus the widest values: "1023.9 MiB" and "99m" (eta).
        let fixed = BAR
            .replace("{spinner}", "x")
            .replace("{msg:9!}", &"m".repeat(9))
            .replace("{bar:24}", &"=".repeat(24))
            .replace("{bytes:>10}", &"b".repeat(10))
            .replace("{total_bytes:<10}", &"t".repeat(10))
            .replace("{eta:>4}", &"e".repeat(4));
        assert!(!fixed.contains('{'), "{fixed}");
        assert!(fixed.len() <= 80, "{} columns: {fixed}", fixed.len());
    }
}
