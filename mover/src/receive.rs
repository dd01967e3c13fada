//! The receiver: one round at the destination.
//!
//! recover -> manifest -> plan (merge-join of applied and new manifests) with
//! local copies and fetch windows -> checkpoints -> commit -> apply -> verify
//! -> promote. See DESIGN.md "The round at the receiver". Before the commit
//! record the destination tree is untouched (all writes go to the round dir
//! in the state dir); after it, the journaled ops are replayed to completion
//! by whoever runs next. So the destination is the previous state or the new
//! one, never half of each, across any crash.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::chunk::{ChunkId, ChunkRef};
use crate::fsmeta::{self, FsMetaError, Skip, StatKind};
use crate::journal::{FramedReader, FramedWriter, JRec, JournalError, Stored, read_journal};
use crate::manifest::{
    self, Entry, Item, Kind, ManifestError, ManifestReader, PathTable, path_cmp,
};
use crate::progress::{Phase, Progress, ProgressSink};
use crate::safe_path::{Root, SafePathError};
use crate::source::{ChunkSource, ManifestBase, SinkError, SourceError, Want};
use crate::statcache::{StatCacheError, StatReader, StatRec, StatWriter};
use crate::store::{ChunkIndex, Loc, read_verified, write_all_at};

/// Bytes written between checkpoints: a kill -9 re-fetches at most this
/// much; larger means fewer filesystem syncs (each one waits for writeback).
pub const CHECKPOINT_BYTES: u64 = 512 << 20;
/// Wants per fetch window (bounded memory; a network source pipelines a
/// window as one batch).
const WINDOW_WANTS: usize = 8192;
const WINDOW_BYTES: u64 = 64 << 20;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("destination {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    SafePath(#[from] SafePathError),
    #[error(transparent)]
    Meta(#[from] FsMetaError),
    #[error("manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    StatCache(#[from] StatCacheError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("source: {0}")]
    Source(SourceError),
    /// The source's data no longer matches its manifest (it changed since
    /// the scan): what arrived so far is durable; rescan and rerun.
    #[error("source changed since its scan: {path:?} at offset {offset}; rescan and rerun")]
    Stale { path: String, offset: u64 },
    #[error("manifest mode {got:?} does not fit destination {dest}")]
    ModeMismatch { got: manifest::Mode, dest: String },
    #[error("verification failed: {path:?}: {why}")]
    Verify { path: String, why: String },
    #[error("destination block device {path} holds {have} bytes, image needs {need}")]
    DeviceTooSmall { path: String, have: u64, need: u64 },
}

fn io_err(path: impl AsRef<[u8]>) -> impl FnOnce(std::io::Error) -> ReceiveError {
    let path = String::from_utf8_lossy(path.as_ref()).into_owned();
    move |source| ReceiveError::Io { path, source }
}

fn errno(path: &[u8]) -> impl FnOnce(rustix::io::Errno) -> ReceiveError + '_ {
    move |e| io_err(path)(e.into())
}

/// Where the receiver writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Destination {
    /// A directory (created if missing).
    Tree(PathBuf),
    /// A regular file (created if missing) or a block device.
    Image(PathBuf),
}

impl Destination {
    /// The path.
    pub fn path(&self) -> &Path {
        match self {
            Destination::Tree(p) | Destination::Image(p) => p,
        }
    }
}

/// How much to re-read after applying.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verify {
    /// Nothing (chunks are still verified on arrival).
    None,
    /// What this round wrote.
    #[default]
    Touched,
    /// Every data entry.
    All,
}

/// Receiver settings.
#[derive(Clone)]
pub struct ReceiveOptions {
    pub verify: Verify,
    pub progress: Arc<dyn ProgressSink>,
    pub checkpoint_bytes: u64,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        ReceiveOptions {
            verify: Verify::Touched,
            progress: Arc::new(crate::progress::NoProgress),
            checkpoint_bytes: CHECKPOINT_BYTES,
        }
    }
}

/// What a round did at the destination.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundStats {
    /// Root of the manifest now applied.
    pub root: String,
    /// A committed round found at start and replayed.
    pub recovered: bool,
    pub entries: u64,
    pub files_staged: u64,
    pub files_patched: u64,
    pub meta_only: u64,
    pub deleted: u64,
    /// Chunks listed in the manifest.
    pub chunks_total: u64,
    /// Chunks fetched from the source.
    pub chunks_new: u64,
    /// Chunk placements served locally (already in place, or copied from
    /// the destination's own data, or a duplicate fetched earlier).
    pub chunks_reused: u64,
    /// Payload bytes received from the source.
    pub bytes_fetched: u64,
    /// Bytes copied from data already at the destination.
    pub bytes_reused: u64,
    /// Data bytes written (staged files, pack, in-place patches).
    pub bytes_written: u64,
    pub bytes_verified: u64,
    pub skipped: Vec<Skip>,
    pub plan_ms: u64,
    pub fetch_ms: u64,
    pub apply_ms: u64,
    pub verify_ms: u64,
}

/// Apply ops, streamed into the round dir during planning.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Op {
    /// Remove (recursively) whatever is at `path`.
    Delete {
        path: Vec<u8>,
    },
    Mkdir {
        path: Vec<u8>,
    },
    /// Finish staged entry `stage/<n>` (size, metadata) and rename it in.
    Place {
        stage: u32,
        entry: Entry,
    },
    /// Write pack bytes into the existing file at `path`.
    PatchWrite {
        path: Vec<u8>,
        offset: u64,
        len: u32,
        pack: u64,
        id: ChunkId,
    },
    /// After a patch: size, holes, metadata.
    PatchEnd {
        entry: Entry,
        holes: Vec<(u64, u64)>,
    },
    Meta {
        entry: Entry,
    },
    Link {
        path: Vec<u8>,
        target: Vec<u8>,
    },
    DirMeta {
        entry: Entry,
    },
}

const OPS: [&str; 4] = ["ops.delete", "ops.mkdir", "ops.place", "ops.dirmeta"];

/// Where a planned chunk goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Stage { entry: u32, offset: u64 },
    Pack { offset: u64 },
}

struct Window {
    wants: Vec<Want>,
    dests: Vec<Vec<Target>>,
    /// Per want: the destination path whose same range holds the previous
    /// version of the chunk (files patched in place), and how many of those
    /// bytes exist. A remote source then sends only what differs.
    bases: Vec<Option<(Vec<u8>, u32)>>,
    bytes: u64,
}

/// The destination side of a sync.
pub struct Receiver {
    dest: Destination,
    state: PathBuf,
    root: Option<Root>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("dest", &self.dest)
            .field("state", &self.state)
            .finish()
    }
}

/// Default state dir: beside the destination, so it is on the same
/// filesystem (renames from the round dir into the tree must not cross one).
pub fn default_state_dir(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let mut s = std::ffi::OsString::from(".");
    s.push(name);
    s.push(".daffe-state");
    dest.parent().unwrap_or(Path::new(".")).join(s)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Receiver {
    /// Opens (creating if needed) the destination and its state dir.
    pub fn open(dest: &Destination, state_dir: &Path) -> Result<Receiver, ReceiveError> {
        std::fs::create_dir_all(state_dir).map_err(io_err(state_dir.as_os_str().as_bytes()))?;
        let root = match dest {
            Destination::Tree(p) => {
                std::fs::create_dir_all(p).map_err(io_err(p.as_os_str().as_bytes()))?;
                Some(Root::open(p)?)
            }
            Destination::Image(_) => None,
        };
        Ok(Receiver {
            dest: dest.clone(),
            state: state_dir.to_path_buf(),
            root,
        })
    }

    fn round_dir(&self) -> PathBuf {
        self.state.join("round")
    }

    /// Root of the applied manifest, if any round was applied. Read from the
    /// footer of `applied.stat` (written with it, renamed just before it), so
    /// an unchanged round does not decode the manifest once more; the
    /// validity pass then reads the manifest itself and checks its root.
    pub fn applied_root(&self) -> Option<ChunkId> {
        if !self.state.join("applied.manifest").exists() {
            return None;
        }
        crate::statcache::footer_root(&self.state.join("applied.stat")).or_else(|| {
            let f = File::open(self.state.join("applied.manifest")).ok()?;
            manifest::validate(BufReader::new(f)).ok().map(|t| t.root)
        })
    }

    /// Replays a committed but unfinished round. True if there was one.
    pub fn recover(&mut self, opts: &ReceiveOptions) -> Result<bool, ReceiveError> {
        let j = read_journal(&self.round_dir().join("journal"))?;
        if !j.committed {
            return Ok(false);
        }
        opts.progress.event(&Progress::Phase {
            phase: Phase::Recover,
            total_bytes: 0,
        });
        let mut stats = RoundStats::default();
        self.apply(&mut stats)?;
        self.sync_fs()?;
        self.promote(None, &mut stats, opts)?;
        Ok(true)
    }

    fn sync_fs(&self) -> Result<(), ReceiveError> {
        let f = File::open(&self.state).map_err(io_err(self.state.as_os_str().as_bytes()))?;
        rustix::fs::syncfs(&f).map_err(|e| io_err(self.state.as_os_str().as_bytes())(e.into()))
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
        let validity = self.validity(Some(&root), Some(&mut index), scrub)?;
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
        if self.recover(opts)? {
            stats.recovered = true;
        }
        let t0 = Instant::now();
        let rd = self.round_dir();
        let scrub = opts.verify == Verify::All;
        let applied = self.applied_root();
        // A replayed round changed the tree after the check looked.
        let checked = checked.filter(|c| Some(c.root) == applied && !stats.recovered);
        if let Some(c) = &checked
            && c.validity.all_valid
            && src.root_hint() == Some(c.root)
        {
            self.end_unchanged(&rd, opts)?;
            stats.root = c.root.to_hex();
            stats.entries = c.validity.valid.len() as u64;
            stats.chunks_total = c.validity.chunks;
            stats.plan_ms = t0.elapsed().as_millis() as u64;
            return Ok(stats);
        }
        // 0. Which applied entries are still as we left them (their chunks
        //    are local sources): unless checked already, checked on another
        //    thread while the manifest arrives. On a cold cache the lstats of
        //    a big tree take as long as everything else in planning.
        let running = (checked.is_none() && applied.is_some()).then(|| {
            let (dest, state) = (self.dest.clone(), self.state.clone());
            std::thread::spawn(move || Receiver::open(&dest, &state)?.check(scrub))
        });
        // 1. The manifest, into the round dir (validated as we read it later;
        //    validated whole right now so a bad one never touches anything).
        let mtmp = self.state.join("incoming.manifest");
        let base = applied.map(|root| ManifestBase {
            root,
            path: self.state.join("applied.manifest"),
        });
        let via_delta = self.receive_manifest(src, base.as_ref(), &mtmp)?;
        let check = || -> Result<manifest::Trailer, ReceiveError> {
            Ok(manifest::validate(BufReader::new(
                File::open(&mtmp).map_err(io_err(b"manifest"))?,
            ))?)
        };
        let trailer = match check() {
            Err(e) if via_delta => {
                // Our base or the peer's copy of it differs: ask again whole.
                tracing::warn!("manifest rebuilt from a delta is invalid ({e}); fetching it whole");
                self.receive_manifest(src, None, &mtmp)?;
                check()?
            }
            r => r?,
        };
        let new_root = trailer.root;
        stats.root = new_root.to_hex();
        stats.chunks_total = trailer.chunks;
        let mode = ManifestReader::new(BufReader::new(
            File::open(&mtmp).map_err(io_err(b"manifest"))?,
        ))?
        .header()
        .mode;
        let want_mode = match self.dest {
            Destination::Tree(_) => manifest::Mode::Tree,
            Destination::Image(_) => manifest::Mode::Image,
        };
        if mode != want_mode {
            return Err(ReceiveError::ModeMismatch {
                got: mode,
                dest: self.dest.path().display().to_string(),
            });
        }
        let checked = match (checked, running.map(|h| h.join())) {
            (Some(c), _) => Some(c),
            (None, Some(Ok(r))) => r?,
            // The checking thread panicked: check here (same code, same answer).
            (None, Some(Err(_))) => self.check(scrub)?,
            (None, None) => None,
        };
        let (validity, mut index) = match checked {
            Some(c) => (c.validity, c.index),
            None => (self.validity(None, None, scrub)?, ChunkIndex::default()),
        };
        // An unchanged round (same root, destination still as we left it)
        // ends here, before anything is written or synced: it only lstats.
        let same_root = applied == Some(new_root);
        if same_root && validity.all_valid {
            let _ = std::fs::remove_file(&mtmp);
            self.end_unchanged(&rd, opts)?;
            stats.entries = trailer.entries;
            stats.plan_ms = t0.elapsed().as_millis() as u64;
            return Ok(stats);
        }
        // 2. An interrupted round: same manifest -> resume in place; another
        //    manifest -> its durable chunks become seeds.
        let old_round = read_journal(&rd.join("journal"))?;
        let seed_dir = self.state.join("seed");
        // Durable chunks of an interrupted round are set over the applied
        // tree's locations (`set` replaces what `validity` added).
        let mut seeds: Vec<PathBuf> = Vec::new();
        let mut pack_len = 0u64;
        let resume = old_round.root == Some(new_root) && rd.join("manifest").exists();
        if resume {
            for (s, len, id) in &old_round.durable {
                match *s {
                    Stored::Stage { entry, offset } => {
                        index.set(id, Loc::Stage { entry, offset }, *len)
                    }
                    Stored::Pack { offset } => {
                        index.set(id, Loc::Pack { offset }, *len);
                        pack_len = pack_len.max(offset + u64::from(*len));
                    }
                }
            }
        } else {
            if rd.exists() {
                if !old_round.durable.is_empty() {
                    let _ = std::fs::remove_dir_all(&seed_dir);
                    std::fs::rename(&rd, &seed_dir).map_err(io_err(b"round dir"))?;
                    seeds.push(seed_dir.join("pack"));
                    for (s, len, id) in &old_round.durable {
                        let (file, offset) = match *s {
                            Stored::Pack { offset } => (0, offset),
                            Stored::Stage { entry, offset } => {
                                seeds.push(seed_dir.join("stage").join(entry.to_string()));
                                (seeds.len() as u32 - 1, offset)
                            }
                        };
                        index.set(id, Loc::Seed { file, offset }, *len);
                    }
                } else {
                    std::fs::remove_dir_all(&rd).map_err(io_err(b"round dir"))?;
                }
            }
            std::fs::create_dir_all(rd.join("stage")).map_err(io_err(b"round dir"))?;
            let mut j = FramedWriter::open(&rd.join("journal"), true)?;
            j.push(&JRec::Begin { root: new_root })?;
            j.flush(true)?;
        }
        std::fs::rename(&mtmp, rd.join("manifest")).map_err(io_err(b"manifest"))?;

        // 4. Plan, copy local chunks, fetch the rest.
        opts.progress.event(&Progress::Phase {
            phase: Phase::Plan,
            total_bytes: trailer.data_bytes,
        });
        let mut p = Planner {
            rx: self,
            opts,
            src: Some(src),
            index,
            seeds,
            validity,
            pack: OpenOptions::new()
                .create(true)
                .read(true)
                .write(true)
                .truncate(false)
                .open(rd.join("pack"))
                .map_err(io_err(b"pack"))?,
            pack_len,
            stage_files: HashMap::new(),
            unfinished: HashMap::new(),
            flush_pending_after: false,
            applied_file: None,
            seed_files: HashMap::new(),
            window: Window {
                wants: Vec::new(),
                dests: Vec::new(),
                bases: Vec::new(),
                bytes: 0,
            },
            durable: Vec::new(),
            since_ckpt: 0,
            journal: FramedWriter::open(&rd.join("journal"), false)?,
            ops: OPS
                .iter()
                .map(|n| FramedWriter::open(&rd.join(n), true))
                .collect::<Result<_, _>>()?,
            stats: &mut stats,
            buf: Vec::new(),
            touched: Vec::new(),
            fetch_time: Duration::ZERO,
        };
        p.plan()?;
        p.flush_window()?;
        let touched = std::mem::take(&mut p.touched);
        p.checkpoint()?;
        for o in &mut p.ops {
            o.flush(false)?;
        }
        let fetch_time = p.fetch_time;
        let mut journal = p.journal;
        drop(p.pack);
        stats.plan_ms = (t0.elapsed() - fetch_time).as_millis() as u64;
        stats.fetch_ms = fetch_time.as_millis() as u64;

        // 5. Commit: ops and data are on disk (checkpoint synced the fs), so
        //    the commit record makes the round happen.
        self.sync_fs()?;
        journal.push(&JRec::Commit)?;
        journal.flush(true)?;

        // 6. Apply, verify, promote.
        let t1 = Instant::now();
        opts.progress.event(&Progress::Phase {
            phase: Phase::Apply,
            total_bytes: 0,
        });
        self.apply(&mut stats)?;
        stats.apply_ms = t1.elapsed().as_millis() as u64;
        let t2 = Instant::now();
        // The applied data must be durable before the state says so.
        self.sync_fs()?;
        if opts.verify != Verify::None {
            opts.progress.event(&Progress::Phase {
                phase: Phase::Verify,
                total_bytes: 0,
            });
        }
        let check = (opts.verify != Verify::None)
            .then_some((touched.as_slice(), opts.verify == Verify::All));
        let failures = self.promote(check, &mut stats, opts)?;
        stats.verify_ms = t2.elapsed().as_millis() as u64;
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

    /// Receives the round's manifest into `to`, as a delta against `base`
    /// when the source can do that. True if it came as a delta.
    fn receive_manifest(
        &self,
        src: &mut dyn ChunkSource,
        base: Option<&ManifestBase>,
        to: &Path,
    ) -> Result<bool, ReceiveError> {
        let f = File::create(to).map_err(io_err(to.as_os_str().as_bytes()))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let via_delta = match base {
            Some(b) => src
                .manifest_since(b, &mut w)
                .map_err(ReceiveError::Source)?
                .is_some(),
            None => false,
        };
        if !via_delta {
            src.manifest(&mut w).map_err(ReceiveError::Source)?;
        }
        std::io::Write::flush(&mut w).map_err(io_err(b"manifest"))?;
        Ok(via_delta)
    }

    /// Ends a round that changes nothing: an interrupted, uncommitted round
    /// is dropped (the destination is already what the source holds).
    fn end_unchanged(&self, rd: &Path, opts: &ReceiveOptions) -> Result<(), ReceiveError> {
        if rd.exists() {
            std::fs::remove_dir_all(rd).map_err(io_err(b"round dir"))?;
        }
        opts.progress.event(&Progress::Phase {
            phase: Phase::Done,
            total_bytes: 0,
        });
        Ok(())
    }

    /// Opens the destination object for an entry path.
    fn open_dest(&self, path: &[u8], flags: OFlags) -> Result<OwnedFd, ReceiveError> {
        match (&self.root, &self.dest) {
            (Some(r), _) => Ok(r.open_at(path, flags, Mode::empty())?),
            (None, d) => rustix::fs::open(d.path(), flags | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| io_err(d.path().as_os_str().as_bytes())(e.into())),
        }
    }

    /// lstat of the destination object for an entry path.
    fn stat_dest(&self, path: &[u8]) -> Option<fsmeta::FileStat> {
        match (&self.root, &self.dest) {
            (Some(r), _) if path.is_empty() => fsmeta::stat_fd(r.fd(), b"").ok(),
            (Some(r), _) => {
                let (dir, name) = r.parent(path).ok()?;
                fsmeta::stat_at(dir.as_fd(), name).ok()
            }
            (None, d) => {
                let f = File::open(d.path()).ok()?;
                let mut st = fsmeta::stat_fd(f.as_fd(), b"").ok()?;
                if st.kind == StatKind::BlockDev {
                    st.size = crate::scan::image_size(&f, &st).ok()?;
                }
                Some(st)
            }
        }
    }

    /// Which applied entries still match `applied.stat`; indexes their chunks.
    fn validity(
        &self,
        applied: Option<&ChunkId>,
        mut index: Option<&mut ChunkIndex>,
        scrub: bool,
    ) -> Result<Validity, ReceiveError> {
        let mut v = Validity {
            valid: Vec::new(),
            single: Vec::new(),
            paths: PathTable::default(),
            all_valid: false,
            chunks: 0,
        };
        let Some(root) = applied else {
            return Ok(v);
        };
        let mpath = self.state.join("applied.manifest");
        let mut stat = StatReader::open(&self.state.join("applied.stat"), root);
        let mut r = ManifestReader::new(BufReader::with_capacity(
            1 << 20,
            File::open(&mpath).map_err(io_err(b"applied.manifest"))?,
        ))?;
        let mut all = stat.is_some();
        let mut idx = 0u32;
        let mut cur_valid = false;
        // With `scrub`, every chunk of the applied tree is re-read and checked:
        // an entry with a bad chunk is invalid (restaged), its good chunks
        // stay usable.
        let mut cur_file: Option<File> = None;
        let mut buf = Vec::new();
        while let Some(item) = r.next()? {
            match item {
                Item::Entry(e) => {
                    let rec = match stat.as_mut() {
                        Some(s) => s.find(&e.path)?,
                        None => None,
                    };
                    let st = self.stat_dest(&e.path);
                    let ok = match (&rec, &st) {
                        (Some(rec), Some(st)) => {
                            // Block devices have no useful timestamps: trust them.
                            (st.kind == StatKind::BlockDev && e.kind == Kind::Image)
                                || rec.unchanged(st)
                        }
                        _ => false,
                    };
                    all &= ok;
                    v.valid.push(ok);
                    v.single
                        .push(st.is_some_and(|s| s.nlink <= 1 || s.kind == StatKind::Dir));
                    if ok && e.kind.has_data() {
                        v.paths.push(idx, &e.path);
                    }
                    cur_valid = ok && e.kind.has_data();
                    cur_file = None;
                    if scrub && cur_valid {
                        cur_file = self
                            .open_dest(&e.path, OFlags::RDONLY | OFlags::NOFOLLOW)
                            .ok()
                            .map(File::from);
                    }
                    idx += 1;
                }
                Item::Chunk(c) => {
                    v.chunks += 1;
                    if let Some(f) = &cur_file
                        && !read_verified(f, c.offset, c.len, &c.id, &mut buf).unwrap_or(false)
                    {
                        tracing::warn!(
                            "scrub: chunk at {} of entry #{} is corrupt",
                            c.offset,
                            idx - 1
                        );
                        v.valid[idx as usize - 1] = false;
                        all = false;
                        continue;
                    }
                    if cur_valid && let Some(index) = index.as_deref_mut() {
                        index.add(
                            &c.id,
                            Loc::Applied {
                                entry: idx - 1,
                                offset: c.offset,
                            },
                            c.len,
                        );
                    }
                }
            }
        }
        if r.trailer().map(|t| t.root) != Some(*root) {
            // applied.stat belongs to another manifest: trust nothing.
            v.valid.iter_mut().for_each(|x| *x = false);
            all = false;
        }
        v.all_valid = all;
        Ok(v)
    }

    fn ops_reader(&self, name: &str) -> Result<Option<FramedReader>, ReceiveError> {
        Ok(FramedReader::open(&self.round_dir().join(name))?)
    }

    /// Replays the committed ops (idempotent).
    fn apply(&mut self, stats: &mut RoundStats) -> Result<(), ReceiveError> {
        // Directories may be replaced by the ops: never reuse a parent fd
        // opened before them.
        if let Some(r) = &self.root {
            r.forget();
        }
        let rd = self.round_dir();
        let pack = File::open(rd.join("pack")).ok();
        let mut buf = Vec::new();
        for name in OPS {
            let Some(mut r) = self.ops_reader(name)? else {
                continue;
            };
            let mut patch_file: Option<(Vec<u8>, File)> = None;
            while let Some(op) = r.next::<Op>() {
                match op {
                    Op::Delete { path } => {
                        self.delete(&path)?;
                        stats.deleted += 1;
                    }
                    Op::Mkdir { path } => {
                        if path.is_empty() {
                            continue;
                        }
                        let root = self.root.as_ref().expect("trees have a root");
                        let (dir, name) = root.parent(&path)?;
                        match rustix::fs::mkdirat(dir.as_fd(), name, Mode::from_raw_mode(0o700)) {
                            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                            Err(e) => return Err(errno(&path)(e)),
                        }
                    }
                    Op::Place { stage, entry } => self.place(stage, &entry, stats)?,
                    Op::PatchWrite {
                        path,
                        offset,
                        len,
                        pack: at,
                        id,
                    } => {
                        if patch_file.as_ref().is_none_or(|(p, _)| *p != path) {
                            let fd = self.open_dest(&path, OFlags::RDWR | OFlags::NOFOLLOW)?;
                            patch_file = Some((path.clone(), File::from(fd)));
                        }
                        let f = &patch_file.as_ref().expect("set above").1;
                        let pk = pack.as_ref().ok_or_else(|| ReceiveError::Verify {
                            path: lossy(&path),
                            why: "pack missing for a committed patch".into(),
                        })?;
                        if !read_verified(pk, at, len, &id, &mut buf).map_err(io_err(b"pack"))? {
                            // Already applied by an earlier replay and the
                            // pack lost? The pack is durable before commit,
                            // so this is corruption: stop loudly.
                            return Err(ReceiveError::Verify {
                                path: lossy(&path),
                                why: format!("pack chunk at {at} does not match {id}"),
                            });
                        }
                        write_all_at(f, &buf, offset).map_err(io_err(&path))?;
                        stats.bytes_written += u64::from(len);
                        // Verify the touched range right away.
                        if !read_verified(f, offset, len, &id, &mut buf).map_err(io_err(&path))? {
                            return Err(ReceiveError::Verify {
                                path: lossy(&path),
                                why: format!("read-back at {offset} does not match {id}"),
                            });
                        }
                        stats.bytes_verified += u64::from(len);
                    }
                    Op::PatchEnd { entry, holes } => {
                        let fd = self.open_dest(&entry.path, OFlags::RDWR | OFlags::NOFOLLOW)?;
                        if !self.is_block_device(&fd) {
                            rustix::fs::ftruncate(&fd, entry.size).map_err(errno(&entry.path))?;
                        }
                        for (o, l) in holes {
                            if o + l == entry.size && !self.is_block_device(&fd) {
                                // A hole up to a size that is not block-aligned:
                                // punching would only zero the last partial
                                // block (still allocated, so data to SEEK_DATA).
                                // Cutting the file there and extending it again
                                // leaves a real hole, as the source has.
                                rustix::fs::ftruncate(&fd, o).map_err(errno(&entry.path))?;
                                rustix::fs::ftruncate(&fd, entry.size)
                                    .map_err(errno(&entry.path))?;
                            } else {
                                fsmeta::punch_hole(fd.as_fd(), o, l, &entry.path)?;
                            }
                        }
                        if !self.is_block_device(&fd) {
                            fsmeta::apply_fd(fd.as_fd(), &entry, &mut stats.skipped)?;
                        }
                        patch_file = None;
                    }
                    Op::Meta { entry } => self.meta(&entry, stats)?,
                    Op::Link { path, target } => self.link(&path, &target)?,
                    Op::DirMeta { entry } => {
                        let fd = self.open_dest(
                            &entry.path,
                            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
                        )?;
                        fsmeta::apply_fd(fd.as_fd(), &entry, &mut stats.skipped)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn is_block_device(&self, fd: &OwnedFd) -> bool {
        fsmeta::stat_fd(fd.as_fd(), b"").is_ok_and(|s| s.kind == StatKind::BlockDev)
    }

    fn meta(&self, e: &Entry, stats: &mut RoundStats) -> Result<(), ReceiveError> {
        match e.kind {
            Kind::Symlink | Kind::Fifo | Kind::CharDev | Kind::BlockDev => {
                let root = self.root.as_ref().expect("trees have a root");
                let (dir, name) = root.parent(&e.path)?;
                if e.kind != Kind::Symlink {
                    rustix::fs::chownat(
                        dir.as_fd(),
                        name,
                        Some(rustix::fs::Uid::from_raw(e.uid)),
                        Some(rustix::fs::Gid::from_raw(e.gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(errno(&e.path))?;
                    rustix::fs::chmodat(
                        dir.as_fd(),
                        name,
                        Mode::from_raw_mode(e.mode as _),
                        AtFlags::empty(),
                    )
                    .map_err(errno(&e.path))?;
                }
                fsmeta::apply_link(dir.as_fd(), name, e, &mut stats.skipped)?;
            }
            _ => {
                let fd = self.open_dest(&e.path, OFlags::RDONLY | OFlags::NOFOLLOW)?;
                if !self.is_block_device(&fd) {
                    fsmeta::apply_fd(fd.as_fd(), e, &mut stats.skipped)?;
                }
            }
        }
        Ok(())
    }

    fn stage_dir(&self) -> PathBuf {
        self.round_dir().join("stage")
    }

    /// Renames a finished staged entry into place (its data and metadata
    /// were set while staging). Idempotent: a missing stage file was renamed
    /// by an earlier replay.
    fn place(&self, stage: u32, e: &Entry, _stats: &mut RoundStats) -> Result<(), ReceiveError> {
        let sname = stage.to_string();
        let sname = OsStr::new(&sname);
        let r = match (&self.root, &self.dest) {
            (Some(root), _) => {
                let sd = File::open(self.stage_dir()).map_err(io_err(b"stage dir"))?;
                let (dir, name) = root.parent(&e.path)?;
                rustix::fs::renameat(sd.as_fd(), sname, dir.as_fd(), name)
            }
            (None, d) => std::fs::rename(self.stage_dir().join(sname), d.path())
                .map_err(|e| rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO)),
        };
        match r {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(err) => Err(errno(&e.path)(err)),
        }
    }

    fn link(&self, path: &[u8], target: &[u8]) -> Result<(), ReceiveError> {
        let root = self.root.as_ref().expect("trees have a root");
        let (tdir, tname) = root.parent(target)?;
        let tdir = tdir.clone();
        let sd = File::open(self.stage_dir()).map_err(io_err(b"stage dir"))?;
        let tmp = OsStr::new("link.tmp");
        let _ = rustix::fs::unlinkat(sd.as_fd(), tmp, AtFlags::empty());
        rustix::fs::linkat(tdir.as_fd(), tname, sd.as_fd(), tmp, AtFlags::empty())
            .map_err(errno(path))?;
        let (dir, name) = root.parent(path)?;
        rustix::fs::renameat(sd.as_fd(), tmp, dir.as_fd(), name).map_err(errno(path))?;
        // rename() between two names of one inode does nothing: clean up.
        let _ = rustix::fs::unlinkat(sd.as_fd(), tmp, AtFlags::empty());
        Ok(())
    }

    /// Removes whatever is at `path`, recursively, beneath the root.
    fn delete(&self, path: &[u8]) -> Result<(), ReceiveError> {
        let Some(root) = self.root.as_ref() else {
            return Ok(());
        };
        let (dir, name) = match root.parent(path) {
            Ok(x) => x,
            // The parent is gone (deleted with an ancestor): done.
            Err(_) => return Ok(()),
        };
        remove_at(dir.as_fd(), name, path)?;
        root.forget();
        Ok(())
    }

    /// Makes the round's manifest the applied one, with a fresh stat cache.
    /// With `check`, entries this round touched (or all data entries) are
    /// verified in the same pass: metadata against the manifest, data chunk
    /// by chunk. An entry that fails gets no stat record, so the next round
    /// treats it as changed and repairs it; the failures are returned.
    fn promote(
        &self,
        check: Option<(&[u32], bool)>,
        stats: &mut RoundStats,
        opts: &ReceiveOptions,
    ) -> Result<Vec<String>, ReceiveError> {
        if let Some(r) = &self.root {
            r.forget();
        }
        let rd = self.round_dir();
        let m = rd.join("manifest");
        // Wait until the filesystem clock has moved past our last write, so
        // any later change behind our back gets a different ctime than the
        // one recorded here (no racy entries at the destination).
        std::thread::sleep(Duration::from_millis(20));
        let stat_new = self.state.join("applied.stat.new");
        let mut w = StatWriter::create(&stat_new)?;
        let mut r = ManifestReader::new(BufReader::with_capacity(
            1 << 20,
            File::open(&m).map_err(io_err(b"manifest"))?,
        ))?;
        let (touched, all) = check.unwrap_or((&[], false));
        let checking = check.is_some();
        let mut failures = Vec::new();
        let mut idx = 0u32;
        let mut ti = 0usize;
        let mut buf = Vec::new();
        // (entry, open file, stat record, still good)
        let mut cur: Option<(Entry, Option<File>, Option<StatRec>, bool)> = None;
        let finish = |cur: &mut Option<(Entry, Option<File>, Option<StatRec>, bool)>,
                      w: &mut StatWriter,
                      failures: &mut Vec<String>|
         -> Result<(), ReceiveError> {
            if let Some((e, _, rec, good)) = cur.take() {
                match (rec, good) {
                    (Some(rec), true) => w.push(&rec)?,
                    (_, false) => failures.push(e.display_path()),
                    _ => {}
                }
            }
            Ok(())
        };
        while let Some(item) = r.next()? {
            match item {
                Item::Entry(e) => {
                    finish(&mut cur, &mut w, &mut failures)?;
                    let this = idx;
                    idx += 1;
                    while ti < touched.len() && touched[ti] < this {
                        ti += 1;
                    }
                    let verify = checking
                        && ((ti < touched.len() && touched[ti] == this)
                            || (all && e.kind.has_data()));
                    let mut file = None;
                    let st = if verify && e.kind.has_data() {
                        match self.open_dest(&e.path, OFlags::RDONLY | OFlags::NOFOLLOW) {
                            Ok(fd) => {
                                let f = File::from(fd);
                                let st = fsmeta::stat_fd(f.as_fd(), &e.path).ok().map(|mut st| {
                                    if st.kind == StatKind::BlockDev {
                                        st.size = crate::scan::image_size(&f, &st).unwrap_or(0);
                                    }
                                    st
                                });
                                file = Some(f);
                                st
                            }
                            Err(_) => None,
                        }
                    } else {
                        self.stat_dest(&e.path)
                    };
                    let mut good = true;
                    if verify {
                        good = match &st {
                            None => false,
                            Some(st) if st.kind == StatKind::BlockDev => st.size >= e.size,
                            Some(st) => {
                                fsmeta::meta_matches(st, &e)
                                    && (!e.kind.has_data() || st.size == e.size)
                            }
                        };
                        if !good {
                            tracing::error!(
                                "verify: {} does not match the manifest: {st:?}",
                                e.display_path()
                            );
                        }
                    }
                    let rec = st.map(|st| {
                        let mut rec = StatRec::new(&e.path, &st, i128::MIN / 2);
                        rec.racy = false;
                        rec
                    });
                    cur = Some((e, file, rec, good));
                }
                Item::Chunk(c) => {
                    if let Some((e, Some(f), _, good)) = &mut cur
                        && *good
                    {
                        if !read_verified(f, c.offset, c.len, &c.id, &mut buf)
                            .map_err(io_err(&e.path))?
                        {
                            tracing::error!(
                                "verify: {} chunk at {} does not match {}",
                                e.display_path(),
                                c.offset,
                                c.id
                            );
                            *good = false;
                        }
                        stats.bytes_verified += u64::from(c.len);
                        opts.progress.event(&Progress::Verified {
                            bytes: u64::from(c.len),
                        });
                    }
                }
            }
        }
        finish(&mut cur, &mut w, &mut failures)?;
        let root = r
            .trailer()
            .map(|t| t.root)
            .ok_or(ManifestError::Truncated(0))?;
        w.finish(&root, true)?;
        let man_new = self.state.join("applied.manifest.new");
        let _ = std::fs::remove_file(&man_new);
        std::fs::hard_link(&m, &man_new).map_err(io_err(b"applied.manifest"))?;
        std::fs::rename(&stat_new, self.state.join("applied.stat"))
            .map_err(io_err(b"applied.stat"))?;
        std::fs::rename(&man_new, self.state.join("applied.manifest"))
            .map_err(io_err(b"applied.manifest"))?;
        File::open(&self.state)
            .and_then(|d| d.sync_all())
            .map_err(io_err(b"state dir"))?;
        std::fs::remove_dir_all(&rd).map_err(io_err(b"round dir"))?;
        let _ = std::fs::remove_dir_all(self.state.join("seed"));
        Ok(failures)
    }
}

/// Owner, mode, xattrs, times of a symlink or special file (by name).
fn special_meta(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &OsStr,
    e: &Entry,
    skips: &mut Vec<Skip>,
) -> Result<(), ReceiveError> {
    if e.kind != Kind::Symlink {
        rustix::fs::chownat(
            dir,
            name,
            Some(rustix::fs::Uid::from_raw(e.uid)),
            Some(rustix::fs::Gid::from_raw(e.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(errno(&e.path))?;
        rustix::fs::chmodat(
            dir,
            name,
            Mode::from_raw_mode(e.mode as _),
            AtFlags::empty(),
        )
        .map_err(errno(&e.path))?;
    }
    fsmeta::apply_link(dir, name, e, skips)?;
    Ok(())
}

fn remove_at(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &OsStr,
    path: &[u8],
) -> Result<(), ReceiveError> {
    let st = match fsmeta::stat_at(dir, name) {
        Ok(st) => st,
        Err(_) => return Ok(()),
    };
    if st.kind == StatKind::Dir {
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno(path))?;
        let mut names = Vec::new();
        for ent in rustix::fs::Dir::read_from(&fd).map_err(errno(path))? {
            let ent = ent.map_err(errno(path))?;
            let n = ent.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(n.to_vec());
            }
        }
        for n in names {
            let mut child = path.to_vec();
            child.push(b'/');
            child.extend_from_slice(&n);
            remove_at(fd.as_fd(), OsStr::from_bytes(&n), &child)?;
        }
        match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(errno(path)(e)),
        }
    } else {
        match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(errno(path)(e)),
        }
    }
}

struct Validity {
    valid: Vec<bool>,
    single: Vec<bool>,
    paths: PathTable,
    all_valid: bool,
    /// Chunk records in the applied manifest.
    chunks: u64,
}

/// The destination as [`Receiver::check`] found it: which applied entries
/// are intact and where their chunks are.
pub struct Checked {
    root: ChunkId,
    validity: Validity,
    index: ChunkIndex,
}

impl std::fmt::Debug for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checked")
            .field("root", &self.root)
            .field("intact", &self.validity.all_valid)
            .finish()
    }
}

/// Planning state for one round.
struct Planner<'a> {
    rx: &'a Receiver,
    opts: &'a ReceiveOptions,
    src: Option<&'a mut dyn ChunkSource>,
    index: ChunkIndex,
    seeds: Vec<PathBuf>,
    validity: Validity,
    pack: File,
    pack_len: u64,
    stage_files: HashMap<u32, File>,
    /// Staged files waiting for deferred chunks: (writes left, entry).
    unfinished: HashMap<u32, (u32, Entry)>,
    flush_pending_after: bool,
    applied_file: Option<(u32, File)>,
    seed_files: HashMap<u32, File>,
    window: Window,
    durable: Vec<(Stored, u32, ChunkId)>,
    since_ckpt: u64,
    journal: FramedWriter,
    ops: Vec<FramedWriter>,
    stats: &'a mut RoundStats,
    buf: Vec<u8>,
    /// New-manifest entries whose data this round wrote (verified after).
    touched: Vec<u32>,
    fetch_time: Duration,
}

struct OpenDir {
    entry: Entry,
    touched: bool,
    changed: bool,
    /// Names found in the destination dir that the new manifest has not
    /// named yet (only for dirs that changed behind our back). Sorted.
    extra: Option<Vec<Vec<u8>>>,
}

impl Planner<'_> {
    fn op(&mut self, stream: usize, op: &Op) -> Result<(), ReceiveError> {
        Ok(self.ops[stream].push(op)?)
    }

    fn plan(&mut self) -> Result<(), ReceiveError> {
        let rd = self.rx.round_dir();
        let mpath = rd.join("manifest");
        let mut newr = ManifestReader::new(BufReader::with_capacity(
            1 << 20,
            File::open(&mpath).map_err(io_err(b"manifest"))?,
        ))?;
        let header = newr.header().clone();
        let applied_path = self.rx.state.join("applied.manifest");
        let mut old = if self.validity.valid.is_empty() {
            None
        } else {
            Some(ManifestReader::new(BufReader::with_capacity(
                1 << 20,
                File::open(&applied_path).map_err(io_err(b"applied.manifest"))?,
            ))?)
        };
        let old_header = old.as_ref().map(|o| o.header().clone());
        let mut old_idx = 0u32;
        let mut next_old = |old: &mut Option<ManifestReader<BufReader<File>>>| -> Result<Option<(u32, Entry, u64)>, ReceiveError> {
            let Some(r) = old.as_mut() else { return Ok(None) };
            let e = r.next_entry()?;
            let pos = r.entry_pos();
            Ok(e.map(|e| {
                old_idx += 1;
                (old_idx - 1, e, pos)
            }))
        };
        let mut old_peek = next_old(&mut old)?;
        let mut dirs: Vec<OpenDir> = Vec::new();
        let mut changed_files: std::collections::HashSet<Vec<u8>> = Default::default();
        let mut idx = 0u32;
        while let Some(e) = newr.next_entry()? {
            let i = idx;
            idx += 1;
            let epos = newr.entry_pos();
            // Close directories that are not ancestors of this entry.
            self.close_dirs(&mut dirs, &e.path)?;
            mark_seen(&mut dirs, &e.path);
            // Old entries before this one are gone.
            while let Some((_, oe, _)) = &old_peek {
                if path_cmp(&oe.path, &e.path) != Ordering::Less {
                    break;
                }
                let p = oe.path.clone();
                self.op(0, &Op::Delete { path: p.clone() })?;
                mark_parent(&mut dirs, &p);
                old_peek = next_old(&mut old)?;
            }
            let same = match &old_peek {
                Some((oi, oe, opos)) if oe.path == e.path => {
                    let valid = self
                        .validity
                        .valid
                        .get(*oi as usize)
                        .copied()
                        .unwrap_or(false);
                    let single = self
                        .validity
                        .single
                        .get(*oi as usize)
                        .copied()
                        .unwrap_or(false);
                    Some((*oi, oe.clone(), *opos, valid, single))
                }
                _ => None,
            };
            // Consume the old entry's chunks in step below; advance later.
            match e.kind {
                Kind::Dir => {
                    let (existed, changed, extra) = match &same {
                        Some((_, oe, _, valid, _)) if oe.kind == Kind::Dir => {
                            // A directory changed behind our back may hold
                            // names we never wrote: list it, and delete what
                            // the new manifest does not name when it closes.
                            let extra = if *valid {
                                None
                            } else {
                                Some(self.list_dest(&e.path))
                            };
                            (true, meta_differs(oe, &e) || !*valid, extra)
                        }
                        Some(_) => {
                            self.op(
                                0,
                                &Op::Delete {
                                    path: e.path.clone(),
                                },
                            )?;
                            (false, true, None)
                        }
                        None if e.path.is_empty() => (true, true, Some(self.list_dest(&e.path))),
                        None => (false, true, None),
                    };
                    if !existed {
                        self.op(
                            1,
                            &Op::Mkdir {
                                path: e.path.clone(),
                            },
                        )?;
                    }
                    mark_parent(&mut dirs, &e.path);
                    dirs.push(OpenDir {
                        entry: e.clone(),
                        touched: !existed,
                        changed,
                        extra,
                    });
                }
                Kind::File | Kind::Image => {
                    let changed = self.plan_data(
                        i,
                        &e,
                        epos,
                        &header,
                        &mut newr,
                        same.as_ref(),
                        old_header.as_ref(),
                        &mut old,
                    )?;
                    if changed {
                        changed_files.insert(e.path.clone());
                        mark_parent(&mut dirs, &e.path);
                    }
                }
                Kind::Hardlink => {
                    let ok = match &same {
                        Some((_, oe, _, true, _)) => {
                            oe.kind == Kind::Hardlink
                                && oe.target == e.target
                                && !changed_files.contains(&e.target)
                                && self.same_inode(&e.path, &e.target)
                        }
                        _ => false,
                    };
                    if !ok {
                        if same.as_ref().is_some_and(|s| s.1.kind == Kind::Dir) {
                            self.op(
                                0,
                                &Op::Delete {
                                    path: e.path.clone(),
                                },
                            )?;
                        }
                        self.op(
                            2,
                            &Op::Link {
                                path: e.path.clone(),
                                target: e.target.clone(),
                            },
                        )?;
                        mark_parent(&mut dirs, &e.path);
                    }
                }
                Kind::Symlink | Kind::Fifo | Kind::CharDev | Kind::BlockDev => {
                    let keep = match &same {
                        Some((_, oe, _, true, _)) => {
                            oe.kind == e.kind && oe.target == e.target && oe.rdev == e.rdev
                        }
                        _ => false,
                    };
                    if keep {
                        if let Some((_, oe, ..)) = &same
                            && meta_differs(oe, &e)
                        {
                            self.op(2, &Op::Meta { entry: e.clone() })?;
                            self.stats.meta_only += 1;
                        }
                    } else {
                        if same.as_ref().is_some_and(|s| s.1.kind == Kind::Dir) {
                            self.op(
                                0,
                                &Op::Delete {
                                    path: e.path.clone(),
                                },
                            )?;
                        }
                        self.stage_special(i, &e)?;
                        self.op(
                            2,
                            &Op::Place {
                                stage: i,
                                entry: e.clone(),
                            },
                        )?;
                        self.touched.push(i);
                        mark_parent(&mut dirs, &e.path);
                    }
                }
            }
            if same.is_some() {
                old_peek = next_old(&mut old)?;
            }
        }
        while let Some((_, oe, _)) = old_peek.take() {
            self.op(
                0,
                &Op::Delete {
                    path: oe.path.clone(),
                },
            )?;
            mark_parent(&mut dirs, &oe.path);
            old_peek = next_old(&mut old)?;
        }
        while let Some(d) = dirs.pop() {
            self.close_dir(d)?;
        }
        Ok(())
    }

    fn close_dirs(&mut self, dirs: &mut Vec<OpenDir>, path: &[u8]) -> Result<(), ReceiveError> {
        while let Some(top) = dirs.last() {
            let t = &top.entry.path;
            let is_ancestor = t.is_empty()
                || (path.len() > t.len() && path.starts_with(t) && path[t.len()] == b'/');
            if is_ancestor {
                return Ok(());
            }
            let d = dirs.pop().expect("top exists");
            self.close_dir(d)?;
        }
        Ok(())
    }

    fn close_dir(&mut self, d: OpenDir) -> Result<(), ReceiveError> {
        let mut touched = d.touched;
        for name in d.extra.into_iter().flatten() {
            let mut p = d.entry.path.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(&name);
            self.op(0, &Op::Delete { path: p })?;
            touched = true;
        }
        if touched || d.changed {
            self.op(
                3,
                &Op::DirMeta {
                    entry: d.entry.clone(),
                },
            )?;
        }
        Ok(())
    }

    /// Names in a destination directory, sorted.
    fn list_dest(&self, path: &[u8]) -> Vec<Vec<u8>> {
        let Ok(fd) = self
            .rx
            .open_dest(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW)
        else {
            return Vec::new();
        };
        let mut names = Vec::new();
        if let Ok(dir) = rustix::fs::Dir::read_from(&fd) {
            for ent in dir.flatten() {
                let n = ent.file_name().to_bytes();
                if n != b"." && n != b".." {
                    names.push(n.to_vec());
                }
            }
        }
        names.sort();
        names
    }

    fn same_inode(&self, a: &[u8], b: &[u8]) -> bool {
        match (self.rx.stat_dest(a), self.rx.stat_dest(b)) {
            (Some(x), Some(y)) => x.dev == y.dev && x.ino == y.ino,
            _ => false,
        }
    }

    fn stage_special(&mut self, i: u32, e: &Entry) -> Result<(), ReceiveError> {
        let sd = File::open(self.rx.stage_dir()).map_err(io_err(b"stage dir"))?;
        let name = i.to_string();
        let name = OsStr::new(&name);
        let _ = rustix::fs::unlinkat(sd.as_fd(), name, AtFlags::empty());
        match e.kind {
            Kind::Symlink => rustix::fs::symlinkat(OsStr::from_bytes(&e.target), sd.as_fd(), name)
                .map_err(errno(&e.path))?,
            _ => fsmeta::make_special(sd.as_fd(), name, e)?,
        }
        special_meta(sd.as_fd(), name, e, &mut self.stats.skipped)
    }

    /// Plans a data entry; returns whether its data changes.
    #[allow(clippy::too_many_arguments)]
    fn plan_data(
        &mut self,
        i: u32,
        e: &Entry,
        epos: u64,
        header: &manifest::Header,
        newr: &mut ManifestReader<BufReader<File>>,
        same: Option<&(u32, Entry, u64, bool, bool)>,
        old_header: Option<&manifest::Header>,
        old: &mut Option<ManifestReader<BufReader<File>>>,
    ) -> Result<bool, ReceiveError> {
        let mpath = self.rx.round_dir().join("manifest");
        let old_usable = match same {
            Some((_, oe, _, true, _)) => oe.kind == e.kind,
            _ => false,
        };
        let device = self.rx.root.is_none()
            && self
                .rx
                .stat_dest(b"")
                .is_some_and(|s| s.kind == StatKind::BlockDev);
        if device {
            let have = self.rx.stat_dest(b"").map_or(0, |s| s.size);
            if have < e.size {
                return Err(ReceiveError::DeviceTooSmall {
                    path: self.rx.dest.path().display().to_string(),
                    have,
                    need: e.size,
                });
            }
        }
        if old_usable || device {
            // Counting pass: chunks not already in place at the same offset.
            let mut changed = 0u64;
            let mut identical = true;
            let mut n_new = 0u64;
            let mut o_iter = old.as_mut().filter(|_| old_usable);
            let mut oc = match o_iter.as_mut() {
                Some(r) => r.next_chunk()?,
                None => None,
            };
            let mut n_old = u64::from(oc.is_some());
            while let Some(c) = newr.next_chunk()? {
                n_new += 1;
                while let Some(o) = oc {
                    if o.offset >= c.offset {
                        break;
                    }
                    oc = match o_iter.as_mut() {
                        Some(r) => r.next_chunk()?,
                        None => None,
                    };
                    n_old += u64::from(oc.is_some());
                    identical = false;
                }
                if oc.is_some_and(|o| o.offset == c.offset && o.id == c.id) {
                    oc = match o_iter.as_mut() {
                        Some(r) => r.next_chunk()?,
                        None => None,
                    };
                    n_old += u64::from(oc.is_some());
                } else {
                    changed += u64::from(c.len);
                    identical = false;
                }
            }
            if oc.is_some() {
                identical = false;
            }
            if let Some(r) = o_iter.as_mut() {
                while r.next_chunk()?.is_some() {
                    n_old += 1;
                }
            }
            let _ = (n_new, n_old);
            let old_entry = same.map(|s| &s.1);
            let size_same = old_entry.is_some_and(|o| o.size == e.size);
            if identical && size_same && old_usable {
                if let Some(oe) = old_entry
                    && meta_differs(oe, e)
                {
                    self.op(2, &Op::Meta { entry: e.clone() })?;
                    self.stats.meta_only += 1;
                }
                return Ok(false);
            }
            let single = same.is_some_and(|s| s.4);
            if device || (single && changed * 2 < e.size.max(1)) {
                let old_pos = same.map(|s| s.2);
                let old_size = same.filter(|_| old_usable).map(|s| s.1.size);
                self.patch(i, e, epos, header, &mpath, old_pos, old_header, old_size)?;
                self.stats.files_patched += 1;
                return Ok(true);
            }
            // Fall through: stage anew (re-walk this entry's chunks).
            let mut r = ManifestReader::resume_at(
                BufReader::new(reopen(&mpath, epos)?),
                header.clone(),
                epos,
            );
            r.next_entry()?;
            self.stage_file(i, e, &mut r)?;
        } else {
            if same.is_some_and(|s| s.1.kind == Kind::Dir) {
                self.op(
                    0,
                    &Op::Delete {
                        path: e.path.clone(),
                    },
                )?;
            }
            self.stage_file(i, e, newr)?;
        }
        self.stats.files_staged += 1;
        Ok(true)
    }

    fn stage_file(
        &mut self,
        i: u32,
        e: &Entry,
        r: &mut ManifestReader<BufReader<File>>,
    ) -> Result<(), ReceiveError> {
        let mut deferred = 0u32;
        let mut flush = false;
        while let Some(c) = r.next_chunk()? {
            if self.resolve(
                i,
                c,
                Target::Stage {
                    entry: i,
                    offset: c.offset,
                },
            )? {
                deferred += 1;
            }
            flush |= std::mem::take(&mut self.flush_pending_after);
        }
        if deferred == 0 {
            self.finish_stage(i, e)?;
        } else {
            self.unfinished.insert(i, (deferred, e.clone()));
        }
        if flush {
            self.flush_window()?;
        }
        self.op(
            2,
            &Op::Place {
                stage: i,
                entry: e.clone(),
            },
        )?;
        self.touched.push(i);
        Ok(())
    }

    /// A staged file has all its data: set its size (the tail hole) and its
    /// metadata now, on the handle we already hold, so that applying it is
    /// a single rename.
    fn finish_stage(&mut self, i: u32, e: &Entry) -> Result<(), ReceiveError> {
        let f = self.stage_file_handle(i)?;
        rustix::fs::ftruncate(f, e.size).map_err(errno(&e.path))?;
        let f = self.stage_files.remove(&i).expect("opened above");
        fsmeta::apply_fd(f.as_fd(), e, &mut self.stats.skipped)?;
        Ok(())
    }

    /// One chunk write that `stage_file` deferred has landed.
    fn landed(&mut self, i: u32) -> Result<(), ReceiveError> {
        let done = match self.unfinished.get_mut(&i) {
            Some((n, _)) => {
                *n -= 1;
                *n == 0
            }
            None => false,
        };
        if done && let Some((_, e)) = self.unfinished.remove(&i) {
            self.finish_stage(i, &e)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn patch(
        &mut self,
        i: u32,
        e: &Entry,
        epos: u64,
        header: &manifest::Header,
        mpath: &Path,
        old_pos: Option<u64>,
        old_header: Option<&manifest::Header>,
        old_size: Option<u64>,
    ) -> Result<(), ReceiveError> {
        let mut r =
            ManifestReader::resume_at(BufReader::new(reopen(mpath, epos)?), header.clone(), epos);
        r.next_entry()?;
        let apath = self.rx.state.join("applied.manifest");
        let mut o = match (old_pos, old_header) {
            (Some(p), Some(h)) => {
                let mut o =
                    ManifestReader::resume_at(BufReader::new(reopen(&apath, p)?), h.clone(), p);
                o.next_entry()?;
                Some(o)
            }
            _ => None,
        };
        let mut oc = match o.as_mut() {
            Some(o) => o.next_chunk()?,
            None => None,
        };
        let mut holes = Vec::new();
        let mut end = 0u64;
        while let Some(c) = r.next_chunk()? {
            if c.offset > end {
                holes.push((end, c.offset - end));
            }
            end = c.end();
            while let Some(x) = oc {
                if x.offset >= c.offset {
                    break;
                }
                oc = match o.as_mut() {
                    Some(o) => o.next_chunk()?,
                    None => None,
                };
            }
            if oc.is_some_and(|x| x.offset == c.offset && x.id == c.id) {
                self.stats.chunks_reused += 1;
                continue;
            }
            let at = self.pack_len;
            self.pack_len += u64::from(c.len);
            let asked = self.window.wants.len();
            self.resolve(i, c, Target::Pack { offset: at })?;
            // A new want: our file still holds the old bytes of this range.
            let have = old_size.map_or(0, |s| s.saturating_sub(c.offset).min(u64::from(c.len)));
            if self.window.wants.len() > asked && have > 0 {
                self.window.bases[asked] = Some((e.path.clone(), have as u32));
            }
            if std::mem::take(&mut self.flush_pending_after) {
                self.flush_window()?;
            }
            self.op(
                2,
                &Op::PatchWrite {
                    path: e.path.clone(),
                    offset: c.offset,
                    len: c.len,
                    pack: at,
                    id: c.id,
                },
            )?;
        }
        if e.size > end {
            holes.push((end, e.size - end));
        }
        self.op(
            2,
            &Op::PatchEnd {
                entry: e.clone(),
                holes,
            },
        )?;
        Ok(())
    }

    fn stage_file_handle(&mut self, entry: u32) -> Result<&File, ReceiveError> {
        if !self.stage_files.contains_key(&entry) {
            // A few handles suffice: chunks arrive in manifest order.
            if self.stage_files.len() >= 16
                && let Some(k) = self.stage_files.keys().next().copied()
            {
                self.stage_files.remove(&k);
            }
            let p = self.rx.stage_dir().join(entry.to_string());
            let f = OpenOptions::new()
                .create(true)
                .read(true)
                .write(true)
                .truncate(false)
                .custom_flags(libc_nofollow())
                .open(&p)
                .map_err(io_err(p.as_os_str().as_bytes()))?;
            self.stage_files.insert(entry, f);
        }
        Ok(&self.stage_files[&entry])
    }

    /// Finds chunk `c` (needed at `target`) locally or queues a want.
    /// True when the write is deferred to a fetch window.
    fn resolve(&mut self, i: u32, c: ChunkRef, target: Target) -> Result<bool, ReceiveError> {
        if let Some((loc, len)) = self.index.get(&c.id)
            && len == c.len
        {
            match loc {
                Loc::Pending { want } => {
                    self.window.dests[want as usize].push(target);
                    self.stats.chunks_reused += 1;
                    return Ok(true);
                }
                Loc::Stage { entry, offset } if target == (Target::Stage { entry, offset }) => {
                    // Already there from an interrupted attempt (durable).
                    let mut buf = std::mem::take(&mut self.buf);
                    let ok =
                        read_verified(self.stage_file_handle(entry)?, offset, len, &c.id, &mut buf)
                            .map_err(io_err(b"stage"))?;
                    self.buf = buf;
                    if ok {
                        self.stats.chunks_reused += 1;
                        return Ok(false);
                    }
                    self.index.remove(&c.id);
                }
                Loc::Pack { offset } if target == (Target::Pack { offset }) => {
                    self.stats.chunks_reused += 1;
                    return Ok(false);
                }
                _ => {
                    if self.copy_local(loc, &c)? {
                        let data = std::mem::take(&mut self.buf);
                        self.write_target(target, &c, &data)?;
                        self.buf = data;
                        self.stats.chunks_reused += 1;
                        self.stats.bytes_reused += u64::from(c.len);
                        self.opts.progress.event(&Progress::Moved {
                            bytes: u64::from(c.len),
                        });
                        return Ok(false);
                    }
                    self.index.remove(&c.id);
                }
            }
        }
        // Ask the source.
        let w = self.window.wants.len() as u32;
        self.window.wants.push(Want {
            entry: i,
            offset: c.offset,
            len: c.len,
            id: c.id,
        });
        self.window.dests.push(vec![target]);
        self.window.bases.push(None);
        self.window.bytes += u64::from(c.len);
        self.index.set(&c.id, Loc::Pending { want: w }, c.len);
        if self.window.wants.len() >= WINDOW_WANTS || self.window.bytes >= WINDOW_BYTES {
            // The caller counts this want as deferred even if the window is
            // flushed right now: `landed` runs when the caller has recorded it.
            self.flush_pending_after = true;
        }
        Ok(true)
    }

    /// Reads a chunk from a local location into `self.buf`, verified.
    fn copy_local(&mut self, loc: Loc, c: &ChunkRef) -> Result<bool, ReceiveError> {
        let mut buf = std::mem::take(&mut self.buf);
        let ok = match loc {
            Loc::Applied { entry, offset } => {
                if self.applied_file.as_ref().is_none_or(|(e, _)| *e != entry) {
                    let Some(path) = self.validity.paths.get(entry) else {
                        self.buf = buf;
                        return Ok(false);
                    };
                    let path = path.to_vec();
                    match self.rx.open_dest(&path, OFlags::RDONLY | OFlags::NOFOLLOW) {
                        Ok(fd) => self.applied_file = Some((entry, File::from(fd))),
                        Err(_) => {
                            self.buf = buf;
                            return Ok(false);
                        }
                    }
                }
                let f = &self.applied_file.as_ref().expect("set above").1;
                read_verified(f, offset, c.len, &c.id, &mut buf).unwrap_or(false)
            }
            Loc::Stage { entry, offset } => {
                let f = self.stage_file_handle(entry)?;
                read_verified(f, offset, c.len, &c.id, &mut buf).unwrap_or(false)
            }
            Loc::Pack { offset } => {
                read_verified(&self.pack, offset, c.len, &c.id, &mut buf).unwrap_or(false)
            }
            Loc::Seed { file, offset } => {
                if !self.seed_files.contains_key(&file) {
                    match self.seeds.get(file as usize).map(File::open) {
                        Some(Ok(f)) => {
                            self.seed_files.insert(file, f);
                        }
                        _ => {
                            self.buf = buf;
                            return Ok(false);
                        }
                    }
                }
                read_verified(&self.seed_files[&file], offset, c.len, &c.id, &mut buf)
                    .unwrap_or(false)
            }
            Loc::Pending { .. } => false,
        };
        self.buf = buf;
        Ok(ok)
    }

    fn write_target(&mut self, t: Target, c: &ChunkRef, data: &[u8]) -> Result<(), ReceiveError> {
        let stored = match t {
            Target::Stage { entry, offset } => {
                let f = self.stage_file_handle(entry)?;
                write_all_at(f, data, offset).map_err(io_err(b"stage"))?;
                Stored::Stage { entry, offset }
            }
            Target::Pack { offset } => {
                write_all_at(&self.pack, data, offset).map_err(io_err(b"pack"))?;
                Stored::Pack { offset }
            }
        };
        let loc = match stored {
            Stored::Stage { entry, offset } => Loc::Stage { entry, offset },
            Stored::Pack { offset } => Loc::Pack { offset },
        };
        if !matches!(self.index.get(&c.id), Some((Loc::Pending { .. }, _))) {
            self.index.add(&c.id, loc, c.len);
        }
        self.durable.push((stored, c.len, c.id));
        self.stats.bytes_written += data.len() as u64;
        self.since_ckpt += data.len() as u64;
        if self.since_ckpt >= self.opts.checkpoint_bytes {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Makes everything written so far durable, then says so in the journal.
    fn checkpoint(&mut self) -> Result<(), ReceiveError> {
        if self.durable.is_empty() {
            return Ok(());
        }
        self.rx.sync_fs()?;
        let recs = std::mem::take(&mut self.durable);
        for part in recs.chunks(4096) {
            self.journal.push(&JRec::Durable(part.to_vec()))?;
        }
        self.journal.flush(true)?;
        self.since_ckpt = 0;
        Ok(())
    }

    /// The previous bytes of the window's patched ranges (None when there is
    /// none). A base that cannot be read is simply not offered.
    fn read_bases(&mut self, wants: &[Want]) -> Option<Vec<Option<Vec<u8>>>> {
        let refs = std::mem::take(&mut self.window.bases);
        if refs.iter().all(Option::is_none) {
            return None;
        }
        // Open each file once; ask the kernel for every range up front (one
        // deep queue of reads instead of one cold random read at a time).
        let mut files: HashMap<Vec<u8>, Option<File>> = HashMap::new();
        for (r, w) in refs.iter().zip(wants) {
            let Some((path, len)) = r else { continue };
            let f = files.entry(path.clone()).or_insert_with(|| {
                self.rx
                    .open_dest(path, OFlags::RDONLY | OFlags::NOFOLLOW)
                    .ok()
                    .map(File::from)
            });
            if let Some(f) = f {
                let _ = rustix::fs::fadvise(
                    &*f,
                    w.offset,
                    std::num::NonZeroU64::new(u64::from(*len)),
                    rustix::fs::Advice::WillNeed,
                );
            }
        }
        let out = refs
            .into_iter()
            .zip(wants)
            .map(|(r, w)| {
                let (path, len) = r?;
                let f = files.get(&path)?.as_ref()?;
                let mut buf = vec![0u8; len as usize];
                f.read_exact_at(&mut buf, w.offset).ok()?;
                Some(buf)
            })
            .collect();
        Some(out)
    }

    fn flush_window(&mut self) -> Result<(), ReceiveError> {
        if self.window.wants.is_empty() {
            return Ok(());
        }
        let t = Instant::now();
        let wants = std::mem::take(&mut self.window.wants);
        let dests = std::mem::take(&mut self.window.dests);
        let bases = self.read_bases(&wants);
        self.window.bytes = 0;
        let Some(src) = self.src.take() else {
            return Ok(());
        };
        let mut failure: Option<ReceiveError> = None;
        let r = {
            let mut sink = |k: usize, data: &[u8]| -> Result<(), SinkError> {
                let w = &wants[k];
                if data.len() != w.len as usize || ChunkId::of(data) != w.id {
                    failure = Some(ReceiveError::Stale {
                        path: format!("entry #{}", w.entry),
                        offset: w.offset,
                    });
                    return Err("chunk does not match its id".into());
                }
                let c = ChunkRef {
                    offset: w.offset,
                    len: w.len,
                    id: w.id,
                };
                self.stats.chunks_new += 1;
                self.stats.bytes_fetched += data.len() as u64;
                self.opts.progress.event(&Progress::Moved {
                    bytes: data.len() as u64,
                });
                // The first destination becomes the chunk's home for later dups.
                let first = dests[k][0];
                self.index.set(
                    &w.id,
                    match first {
                        Target::Stage { entry, offset } => Loc::Stage { entry, offset },
                        Target::Pack { offset } => Loc::Pack { offset },
                    },
                    w.len,
                );
                for t in &dests[k] {
                    let r = self.write_target(*t, &c, data).and_then(|_| match t {
                        Target::Stage { entry, .. } => self.landed(*entry),
                        Target::Pack { .. } => Ok(()),
                    });
                    if let Err(e) = r {
                        failure = Some(e);
                        return Err("write failed".into());
                    }
                }
                Ok(())
            };
            match &bases {
                Some(b) => src.fetch_with_bases(&wants, b, &mut sink),
                None => src.fetch(&wants, &mut sink),
            }
        };
        self.src = Some(src);
        if let Err(e) = r {
            // Keep what arrived: make it durable before failing.
            let _ = self.checkpoint();
            return Err(failure.take().unwrap_or(ReceiveError::Source(e)));
        }
        self.fetch_time += t.elapsed();
        Ok(())
    }
}

fn libc_nofollow() -> i32 {
    OFlags::NOFOLLOW.bits() as i32
}

fn reopen(path: &Path, pos: u64) -> Result<File, ReceiveError> {
    let mut f = File::open(path).map_err(io_err(path.as_os_str().as_bytes()))?;
    f.seek(SeekFrom::Start(pos))
        .map_err(io_err(path.as_os_str().as_bytes()))?;
    Ok(f)
}

fn mark_parent(dirs: &mut [OpenDir], path: &[u8]) {
    if path.is_empty() {
        return;
    }
    let parent = manifest::parent_of(path);
    if let Some(d) = dirs.iter_mut().rev().find(|d| d.entry.path == parent) {
        d.touched = true;
    }
}

fn mark_seen(dirs: &mut [OpenDir], path: &[u8]) {
    if path.is_empty() {
        return;
    }
    let parent = manifest::parent_of(path);
    let name = &path[if parent.is_empty() {
        0
    } else {
        parent.len() + 1
    }..];
    if let Some(d) = dirs.iter_mut().rev().find(|d| d.entry.path == parent)
        && let Some(extra) = d.extra.as_mut()
        && let Ok(i) = extra.binary_search_by(|n| n.as_slice().cmp(name))
    {
        extra.remove(i);
    }
}

/// Whether applying `new` over `old` changes metadata.
fn meta_differs(old: &Entry, new: &Entry) -> bool {
    old.mode != new.mode
        || old.uid != new.uid
        || old.gid != new.gid
        || old.mtime_ns != new.mtime_ns
        || old.xattrs != new.xattrs
}
