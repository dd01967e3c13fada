//! The round driver: [`Receiver`] runs one round at the destination, step by
//! step as DESIGN.md numbers them ("The round at the receiver"): 1 recover,
//! 2 manifest, 3 validity, 4-6 plan, fetch and checkpoint (the plan's
//! executor), 7 commit, 8 apply, 9 verify and promote. Each step lives in
//! its own module; this one only sequences them and keeps the round dir.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::apply::apply;
use super::dest::{Dest, ManifestFile};
use super::error::{ReceiveError, io_err};
use super::exec::{Executor, Local};
use super::options::{Destination, ReceiveOptions, RoundStats, Verify};
use super::pages;
use super::partial;
use super::plan::{PlanInput, StoredManifest, plan};
use super::verify::{Checked, Recheck, promote, validity, verify_staged};
use crate::chunk::ChunkId;
use crate::chunk_index::{ChunkIndex, Loc};
use crate::clock::millis;
use crate::journal::{FramedWriter, JRec, Stored, read_journal};
use crate::manifest::{self, ManifestReader};
use crate::progress::{Phase, Progress};
use crate::scan::ScanCopy;
use crate::source::{ChunkSource, ManifestBase};

/// The destination side of a sync.
pub struct Receiver {
    pub(super) d: Dest,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("dest", &self.d.dest)
            .field("state", &self.d.state)
            .finish()
    }
}

/// This round's manifest, received and validated whole.
pub(super) struct Incoming {
    pub(super) path: PathBuf,
    pub(super) trailer: manifest::Trailer,
}

/// An interrupted round's leftovers, turned into local chunk sources.
struct Leftovers {
    seeds: Vec<PathBuf>,
    pack_len: u64,
}

impl Receiver {
    /// Opens (creating if needed) the destination and its state dir.
    pub fn open(dest: &Destination, state_dir: &Path) -> Result<Receiver, ReceiveError> {
        Ok(Receiver {
            d: Dest::open(dest, state_dir)?,
        })
    }

    /// Opens the destination and its state dir without creating either:
    /// for [`Receiver::preview`], which must leave no trace.
    pub fn open_existing(dest: &Destination, state_dir: &Path) -> Result<Receiver, ReceiveError> {
        Ok(Receiver {
            d: Dest::open_existing(dest, state_dir)?,
        })
    }

    /// The destination is a block device: patched in place, never staged.
    pub(crate) fn is_device(&self) -> bool {
        self.d.device().is_some()
    }

    /// Root of the applied manifest, if any round was applied. Read from the
    /// footer of `applied.stat` (written with it, renamed just before it), so
    /// an unchanged round does not decode the manifest once more; the
    /// validity pass then reads the manifest itself and checks its root.
    pub fn applied_root(&self) -> Option<ChunkId> {
        let m = self.d.applied_manifest();
        if !m.exists() {
            return None;
        }
        crate::statcache::footer_root(&self.d.applied_stat()).or_else(|| {
            let f = File::open(&m).ok()?;
            manifest::validate(BufReader::new(f)).ok().map(|t| t.root)
        })
    }

    /// Step 1: replays a committed but unfinished round. True if there was one.
    pub fn recover(&mut self, opts: &ReceiveOptions) -> Result<bool, ReceiveError> {
        let j = read_journal(&self.d.round_dir().join("journal"))?;
        if !j.committed {
            return Ok(false);
        }
        opts.progress.event(&Progress::Phase {
            phase: Phase::Recover,
            total_bytes: 0,
        });
        let mut stats = RoundStats::default();
        apply(&self.d, &mut stats)?;
        let written = Instant::now();
        self.d.sync_fs()?;
        promote(&self.d, None, written, &mut stats, opts)?;
        Ok(true)
    }

    /// Which applied entries are still exactly as the last round left them
    /// (each matches `applied.stat`; with `scrub`, every chunk is re-read and
    /// checked too), and where their chunks are. None before any round.
    /// Reads only: run it on another thread (with its own [`Receiver`])
    /// while the source scans, and hand it to [`Receiver::run_round_checked`].
    pub fn check(&self, scrub: bool) -> Result<Option<Checked>, ReceiveError> {
        let Some(root) = self.applied_root() else {
            return Ok(None);
        };
        let mut index = ChunkIndex::default();
        let validity = validity(&self.d, Some(&root), Some(&mut index), scrub)?;
        Ok(Some(Checked {
            root,
            validity,
            index,
        }))
    }

    /// Runs one round against `src`.
    pub fn run_round(
        &mut self,
        src: &mut dyn ChunkSource,
        opts: &ReceiveOptions,
    ) -> Result<RoundStats, ReceiveError> {
        self.run_round_checked(src, opts, None)
    }

    /// [`Receiver::run_round`], given what [`Receiver::check`] found just
    /// before (for example while the source scanned). When the source's
    /// root hint names the checked root and the destination is intact, the
    /// round ends at once: no manifest is read, nothing is written.
    /// Otherwise the check serves as this round's validity pass.
    pub fn run_round_checked(
        &mut self,
        src: &mut dyn ChunkSource,
        opts: &ReceiveOptions,
        checked: Option<Checked>,
    ) -> Result<RoundStats, ReceiveError> {
        let mut stats = RoundStats::default();
        // 1. Recover: a committed round left by a crash is finished first.
        if self.recover(opts)? {
            stats.recovered = true;
        }
        let t0 = Instant::now();
        // Files the source's scan copied into our state dir (a local first
        // transfer): staged as they are, their bytes already on our disk.
        let copies = src.take_scan_copies();
        let scrub = opts.verify == Verify::All;
        let applied = self.applied_root();
        // A replayed round changed the tree after the check looked.
        let checked = checked.filter(|c| Some(c.root) == applied && !stats.recovered);
        if let Some(c) = &checked
            && c.validity.all_valid
            && src.root_hint() == Some(c.root)
        {
            // 1 (end). Unchanged, known before the manifest: done.
            self.end_unchanged(opts)?;
            stats.root = c.root.to_hex();
            stats.entries = c.validity.valid.len() as u64;
            stats.chunks_total = c.validity.chunks;
            stats.manifest_bytes = c.validity.data_bytes;
            stats.plan_ms = millis(t0.elapsed());
            return Ok(stats);
        }
        // 3 (started). Validity, unless checked already: on another thread
        //    while the manifest arrives. On a cold cache the lstats of a big
        //    tree take as long as everything else in planning.
        let running = (checked.is_none() && applied.is_some()).then(|| {
            let (dest, state) = (self.d.dest.clone(), self.d.state.clone());
            std::thread::spawn(move || Receiver::open(&dest, &state)?.check(scrub))
        });
        // 2. The manifest, validated whole before it touches anything.
        let incoming = self.receive_manifest(src, applied, "incoming.manifest")?;
        let new_root = incoming.trailer.root;
        stats.root = new_root.to_hex();
        stats.chunks_total = incoming.trailer.chunks;
        stats.manifest_bytes = incoming.trailer.data_bytes;
        // 3 (joined). Which applied entries are intact, and their chunks.
        let checked = match (checked, running.map(|h| h.join())) {
            (Some(c), _) => Some(c),
            (None, Some(Ok(r))) => r?,
            // The checking thread panicked: check here (same code, same answer).
            (None, Some(Err(_))) => self.check(scrub)?,
            (None, None) => None,
        };
        let (validity, mut index) = match checked {
            Some(c) => (c.validity, c.index),
            None => (validity(&self.d, None, None, scrub)?, ChunkIndex::default()),
        };
        // Refused before a byte is fetched: a round over the cap or that
        // cannot fit (hardening finding 13).
        let copied_bytes = copies
            .iter()
            .filter_map(|c| rustix::fs::fstat(&c.file).ok())
            .map(|st| u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512))
            .sum::<u64>();
        let held = validity.data_bytes.saturating_add(copied_bytes);
        if let Err(e) = self.check_room(&incoming, held, opts) {
            let _ = std::fs::remove_file(&incoming.path);
            return Err(e);
        }
        // An unchanged round (same root, destination still as we left it)
        // ends here, before anything is written or synced: it only lstats.
        if applied == Some(new_root) && validity.all_valid {
            let _ = std::fs::remove_file(&incoming.path);
            self.end_unchanged(opts)?;
            stats.entries = incoming.trailer.entries;
            stats.plan_ms = millis(t0.elapsed());
            return Ok(stats);
        }
        // 2 (end). The round dir: an interrupted attempt at this same
        //    manifest is resumed; another one's durable chunks become seeds.
        let left = self.prepare_round_dir(new_root, &mut index)?;
        let rd = self.d.round_dir();
        std::fs::rename(&incoming.path, rd.join("manifest")).map_err(io_err(b"manifest"))?;

        // 4-6. Plan; the executor copies local chunks, fetches the rest in
        //      windows and checkpoints as it writes.
        opts.progress.event(&Progress::Phase {
            phase: Phase::Plan,
            total_bytes: incoming.trailer.data_bytes,
        });
        let new = ManifestFile(rd.join("manifest"));
        let old = ManifestFile(self.d.applied_manifest());
        let local = Local {
            index,
            applied: &validity.paths,
            seeds: left.seeds,
            copied: self.adopt_copies(copies),
        };
        let mut exec = Executor::new(&self.d, opts, src, local, &mut stats)?;
        let counts = plan(
            &PlanInput {
                new: &new,
                applied: Some(&old),
                validity: &validity,
                dest: &self.d,
                device: self.d.device(),
                pack_len: left.pack_len,
            },
            &mut exec,
        )?;
        let done = exec.finish(counts)?;
        stats.plan_ms = millis(t0.elapsed().saturating_sub(done.fetch_time));
        stats.fetch_ms = millis(done.fetch_time);
        // A partial pre-copy round: the manifest is made to say what the
        // destination will hold, and apply is told which patches to skip.
        partial::write_skips(&rd, &done.skip_patches)?;
        pages::write_pages_file(&rd, &done.page_patches)?;
        let mut trailer = incoming.trailer;
        if !done.dirty.is_empty() {
            trailer = partial::rewrite_manifest(&rd.join("manifest"), &done.dirty)?;
            stats.root = trailer.root.to_hex();
            let entries: std::collections::HashSet<u32> =
                done.dirty.iter().map(|d| d.entry).collect();
            stats.entries_dirty = entries.len() as u64;
            tracing::info!(
                chunks = stats.chunks_dirty,
                bytes = stats.bytes_dirty,
                entries = stats.entries_dirty,
                "pre-copy round partial: the source changed under it; those ranges go next round"
            );
        }

        // 7. Commit: one sync makes the data, the op streams and the files
        //    above durable; then the commit record (with the last `Durable`
        //    records) makes the round happen. Meanwhile 9 (data): the
        //    staged files are re-read, on the CPU while the sync waits for
        //    the disk.
        let verifying = opts.verify != Verify::None;
        let tv = Instant::now();
        // Its bytes are reported in the verify phase, after apply: a
        // progress consumer counts an event in the phase it arrives in.
        let quiet = ReceiveOptions {
            progress: std::sync::Arc::new(crate::progress::NoProgress),
            ..opts.clone()
        };
        let (committed, staged) = std::thread::scope(|s| {
            let check = verifying.then(|| s.spawn(|| verify_staged(&rd, &done.touched, &quiet)));
            let committed = done.writer.commit(&self.d);
            (committed, check.map(|h| (h.join(), tv.elapsed())))
        });
        committed?;
        let (staged, staged_bytes) = match staged {
            Some((Ok(r), took)) => {
                let (checks, bytes) = r?;
                stats.bytes_verified += bytes;
                stats.verify_ms += millis(took);
                (Some(checks), bytes)
            }
            // The thread panicked: promote re-reads them after apply.
            Some((Err(_), _)) | None => (None, 0),
        };

        // 8. Apply.
        let t1 = Instant::now();
        opts.progress.event(&Progress::Phase {
            phase: Phase::Apply,
            total_bytes: 0,
        });
        apply(&self.d, &mut stats)?;
        let written = Instant::now();
        stats.apply_ms = millis(t1.elapsed());

        // 9. Verify and promote. The applied data must be durable before the
        //    state says so.
        let t2 = Instant::now();
        self.d.sync_fs()?;
        if opts.verify != Verify::None {
            opts.progress.event(&Progress::Phase {
                phase: Phase::Verify,
                total_bytes: 0,
            });
            if staged_bytes > 0 {
                opts.progress.event(&Progress::Verified {
                    bytes: staged_bytes,
                });
            }
        }
        let recheck = (opts.verify != Verify::None).then_some(Recheck {
            touched: &done.touched,
            all: opts.verify == Verify::All,
            staged: staged.as_ref(),
        });
        let failures = promote(&self.d, recheck, written, &mut stats, opts)?;
        stats.verify_ms += millis(t2.elapsed());
        if !failures.is_empty() {
            return Err(ReceiveError::Verify {
                path: failures.join(", "),
                why: "does not match the manifest after apply; the next round repairs it".into(),
            });
        }
        stats.entries = trailer.entries;
        opts.progress.event(&Progress::Phase {
            phase: Phase::Done,
            total_bytes: 0,
        });
        Ok(stats)
    }

    /// Whether a round with manifest `incoming` may run here: its size
    /// within `opts.max_size` (an image's size, a tree's data bytes), and
    /// what it adds to the data the destination holds (`held`: the applied
    /// tree's, and the scan copies' already written in the state dir)
    /// within the free space of the destination's filesystem. A block device
    /// destination has no free space to check (`DeviceTooSmall` covers it).
    fn check_room(
        &self,
        incoming: &Incoming,
        held: u64,
        opts: &ReceiveOptions,
    ) -> Result<(), ReceiveError> {
        let (what, size) = match self.d.dest {
            Destination::Tree(_) => ("data", incoming.trailer.data_bytes),
            Destination::Image(_) => {
                let mut r = ManifestReader::new(ManifestFile(incoming.path.clone()).open()?)?;
                ("image size", r.next_entry()?.map_or(0, |e| e.size))
            }
        };
        if let Some(limit) = opts.max_size
            && size > limit
        {
            return Err(ReceiveError::OverSize { what, size, limit });
        }
        if self.d.device().is_some() {
            return Ok(());
        }
        let need = incoming.trailer.data_bytes.saturating_sub(held);
        let path = self.d.dest.path();
        let free = free_bytes(path).map_err(io_err(path.as_os_str().as_bytes()))?;
        if need > free {
            return Err(ReceiveError::NoRoom {
                path: path.display().to_string(),
                what: "data",
                need,
                free,
            });
        }
        Ok(())
    }

    /// Step 2: receives this round's manifest into the state dir file `name`
    /// (as a delta against the applied one when the source can) and
    /// validates it whole; a delta that rebuilds something invalid costs
    /// one whole manifest, not the round. Its mode must fit the destination.
    pub(super) fn receive_manifest(
        &self,
        src: &mut dyn ChunkSource,
        applied: Option<ChunkId>,
        name: &str,
    ) -> Result<Incoming, ReceiveError> {
        self.receive_manifest_at(src, applied, self.d.state.join(name))
    }

    /// [`Receiver::receive_manifest`] into any file (a dry run's scratch).
    pub(super) fn receive_manifest_at(
        &self,
        src: &mut dyn ChunkSource,
        applied: Option<ChunkId>,
        path: PathBuf,
    ) -> Result<Incoming, ReceiveError> {
        let base = applied.map(|root| ManifestBase {
            root,
            path: self.d.applied_manifest(),
        });
        let via_delta = fetch_manifest(src, base.as_ref(), &path)?;
        let check = || -> Result<manifest::Trailer, ReceiveError> {
            Ok(manifest::validate(BufReader::new(
                File::open(&path).map_err(io_err(b"manifest"))?,
            ))?)
        };
        let trailer = match check() {
            Err(e) if via_delta => {
                // Our base or the peer's copy of it differs: ask again whole.
                tracing::warn!("manifest rebuilt from a delta is invalid ({e}); fetching it whole");
                fetch_manifest(src, None, &path)?;
                check()?
            }
            r => r?,
        };
        let mode = ManifestReader::new(ManifestFile(path.clone()).open()?)?
            .header()
            .mode;
        let want_mode = match self.d.dest {
            Destination::Tree(_) => manifest::Mode::Tree,
            Destination::Image(_) => manifest::Mode::Image,
        };
        if mode != want_mode {
            return Err(ReceiveError::ModeMismatch {
                got: mode,
                dest: self.d.dest.path().display().to_string(),
            });
        }
        Ok(Incoming { path, trailer })
    }

    /// Readies `round/` for a round with manifest `root`: the same round
    /// interrupted resumes in place (its `Durable` chunks are set in
    /// `index`); another round's durable chunks move to `seed/` as local
    /// sources; then a fresh journal begins.
    fn prepare_round_dir(
        &self,
        root: ChunkId,
        index: &mut ChunkIndex,
    ) -> Result<Leftovers, ReceiveError> {
        let rd = self.d.round_dir();
        // First: a journal of a newer daffe stops the round before
        // anything here is touched.
        let old_round = read_journal(&rd.join("journal"))?;
        // What an earlier process left to remove (`discard`), meanwhile.
        drop(super::discard::sweep(&self.d.state));
        let seed_dir = self.d.state.join("seed");
        // Durable chunks of an interrupted round are set over the applied
        // tree's locations (`set` replaces what `validity` added).
        let mut left = Leftovers {
            seeds: Vec::new(),
            pack_len: 0,
        };
        if old_round.root == Some(root) && rd.join("manifest").exists() {
            for (s, len, id) in &old_round.durable {
                match *s {
                    Stored::Stage { entry, offset } => {
                        index.set(id, Loc::Stage { entry, offset }, *len);
                    }
                    Stored::Pack { offset } => {
                        index.set(id, Loc::Pack { offset }, *len);
                        left.pack_len = left.pack_len.max(offset + u64::from(*len));
                    }
                }
            }
            return Ok(left);
        }
        if rd.exists() {
            if old_round.durable.is_empty() {
                std::fs::remove_dir_all(&rd).map_err(io_err(b"round dir"))?;
            } else {
                let _ = std::fs::remove_dir_all(&seed_dir);
                std::fs::rename(&rd, &seed_dir).map_err(io_err(b"round dir"))?;
                left.seeds.push(seed_dir.join("pack"));
                for (s, len, id) in &old_round.durable {
                    let (file, offset) = match *s {
                        Stored::Pack { offset } => (0, offset),
                        Stored::Stage { entry, offset } => {
                            left.seeds
                                .push(seed_dir.join("stage").join(entry.to_string()));
                            let file = u32::try_from(left.seeds.len() - 1)
                                .expect("one seed file per durable chunk record");
                            (file, offset)
                        }
                    };
                    index.set(id, Loc::Seed { file, offset }, *len);
                }
            }
        }
        std::fs::create_dir_all(rd.join("stage")).map_err(io_err(b"round dir"))?;
        let mut j = FramedWriter::open(&rd.join("journal"), true)?;
        j.push(&JRec::Version(crate::journal::JOURNAL_VERSION))?;
        j.push(&JRec::Begin { root })?;
        j.flush(true)?;
        Ok(left)
    }

    /// Moves the source's scan copies into the stage dir as the staged
    /// files of their entries. A copy that is not where the scan left it,
    /// or not the file its handle names, is left out (and fetched).
    fn adopt_copies(&self, copies: Vec<ScanCopy>) -> HashMap<u32, File> {
        let (from, to) = (
            super::dest::scan_copy_dir(&self.d.state),
            self.d.stage_dir(),
        );
        let mut adopted = HashMap::new();
        for c in copies {
            let name = c.entry.to_string();
            let at = to.join(&name);
            // A missing copy leaves `at` alone: an interrupted attempt at
            // this round may have durable chunks there.
            if std::fs::rename(from.join(&name), &at).is_err() {
                continue;
            }
            let same = match (rustix::fs::fstat(&c.file), rustix::fs::lstat(&at)) {
                (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
                _ => false,
            };
            if same {
                adopted.insert(c.entry, c.file);
            } else {
                let _ = std::fs::remove_file(&at);
            }
        }
        adopted
    }

    /// Ends a round that changes nothing: an interrupted, uncommitted round
    /// is dropped (the destination is already what the source holds).
    fn end_unchanged(&self, opts: &ReceiveOptions) -> Result<(), ReceiveError> {
        let rd = self.d.round_dir();
        if rd.exists() {
            std::fs::remove_dir_all(&rd).map_err(io_err(b"round dir"))?;
        }
        opts.progress.event(&Progress::Phase {
            phase: Phase::Done,
            total_bytes: 0,
        });
        Ok(())
    }
}

/// Streams the source's manifest into `to`, as a delta against `base` when
/// the source can do that. True if it came as a delta.
fn fetch_manifest(
    src: &mut dyn ChunkSource,
    base: Option<&ManifestBase>,
    to: &Path,
) -> Result<bool, ReceiveError> {
    let dir = to.parent().unwrap_or(to);
    let free = free_bytes(dir).map_err(io_err(dir.as_os_str().as_bytes()))?;
    let f = File::create(to).map_err(io_err(to.as_os_str().as_bytes()))?;
    let mut w = Capped {
        out: BufWriter::with_capacity(1 << 20, f),
        left: free / MANIFEST_SHARE_OF_FREE,
        over: false,
    };
    let over = |w: &Capped<_>, e: ReceiveError| {
        if w.over {
            ReceiveError::NoRoom {
                path: dir.display().to_string(),
                what: "manifest, at most a quarter of the free space",
                need: free / MANIFEST_SHARE_OF_FREE + 1,
                free,
            }
        } else {
            e
        }
    };
    let via_delta = match base {
        Some(b) => src
            .manifest_since(b, &mut w)
            .map_err(|e| over(&w, ReceiveError::Source(e)))?
            .is_some(),
        None => false,
    };
    if !via_delta {
        w.left = free / MANIFEST_SHARE_OF_FREE;
        src.manifest(&mut w)
            .map_err(|e| over(&w, ReceiveError::Source(e)))?;
    }
    std::io::Write::flush(&mut w.out).map_err(io_err(b"manifest"))?;
    Ok(via_delta)
}

/// A manifest may take at most this share (1/N) of the state directory's
/// free space: a peer streaming an endless manifest is cut off with room
/// left for the round's data and everything else on that filesystem.
const MANIFEST_SHARE_OF_FREE: u64 = 4;

/// A writer that fails once more than `left` bytes came.
struct Capped<W> {
    out: W,
    left: u64,
    over: bool,
}

impl<W: std::io::Write> std::io::Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len() as u64;
        if n > self.left {
            self.over = true;
            return Err(std::io::Error::other(
                "manifest over its share of the free space",
            ));
        }
        self.left -= n;
        self.out.write(buf).inspect(|&w| self.left += n - w as u64)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Free bytes for an unprivileged write on the filesystem that holds, or
/// will hold, `path` (an image file is made when the round first writes).
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let mut p = path;
    loop {
        match rustix::fs::statvfs(p) {
            Ok(st) => return Ok(st.f_bavail.saturating_mul(st.f_frsize)),
            Err(rustix::io::Errno::NOENT) if p.parent().is_some() => {
                p = p.parent().unwrap_or(p);
            }
            Err(e) => return Err(e.into()),
        }
    }
}
