//! Checking the destination against manifests, before and after a round.
//!
//! - Before (DESIGN.md step 3): [`validity`] streams `applied.manifest` with
//!   `applied.stat` and lstats every entry. An entry whose stat differs is
//!   invalid (not a chunk source; rewritten by the round); valid data
//!   entries' chunks go into the chunk index. With a scrub every chunk is
//!   re-read too.
//! - After (step 9): [`promote`] lstats every entry of the new manifest into
//!   a fresh `applied.stat`, re-reads what the round wrote, and makes the
//!   round's manifest the applied one. The staged files' data is re-read
//!   earlier, by [`verify_staged`] while the commit's sync waits for the
//!   disk; `promote` then checks that each touched path is the inode that
//!   was re-read there.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use super::dest::{Dest, ManifestFile};
use super::error::{ReceiveError, io_err};
use super::options::{ReceiveOptions, RoundStats};
use super::plan::{StoredManifest, Validity};
use crate::chunk::{ChunkId, ChunkRef, many};
use crate::chunk_index::{ChunkIndex, Loc, read_verified};
use crate::fsmeta::{self, StatKind};
use crate::manifest::{Entry, Item, Kind, ManifestError, ManifestReader};
use crate::progress::Progress;
use crate::read_full::{neighbour_runs, read_full_at};
use crate::statcache::{StatReader, StatRec, StatWriter};

/// How long the filesystem clock is given to move past the round's last
/// write before the destination's stats are recorded: any later change
/// behind our back then gets a different ctime than the one recorded here
/// (no racy entries at the destination). File timestamps come from the
/// kernel's coarse clock, which ticks once a jiffy
/// (`clock_getres(CLOCK_REALTIME_COARSE)`: 4 ms at HZ=250): two ticks, the
/// second for one that lands late, within [2 ms, 20 ms]. (A filesystem whose
/// own timestamps are coarser, FAT's 2 s, is not covered; nor was it by the
/// fixed 20 ms this replaced.) Counted from the last write, so the time
/// spent syncing and re-reading since is not waited again.
fn clock_tick() -> Duration {
    let res = rustix::time::clock_getres(rustix::time::ClockId::RealtimeCoarse);
    match (u64::try_from(res.tv_sec), u32::try_from(res.tv_nsec)) {
        (Ok(s), Ok(ns)) => (2 * Duration::new(s, ns)).clamp(MIN_TICK, MAX_TICK),
        _ => MAX_TICK,
    }
}
const MIN_TICK: Duration = Duration::from_millis(2);
const MAX_TICK: Duration = Duration::from_millis(20);

/// Entries (each maybe with an open file) kept while the clock tick passes.
const PENDING_MAX: usize = 64;

/// The destination as [`Receiver::check`](super::Receiver::check) found it:
/// which applied entries are intact and where their chunks are.
pub struct Checked {
    pub(super) root: ChunkId,
    pub(super) validity: Validity,
    pub(super) index: ChunkIndex,
}

impl std::fmt::Debug for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checked")
            .field("root", &self.root)
            .field("intact", &self.validity.all_valid)
            .finish()
    }
}

/// Which entries of the applied manifest (root `applied`) still match
/// `applied.stat`; indexes their chunks into `index` if given.
pub(super) fn validity(
    d: &Dest,
    applied: Option<&ChunkId>,
    mut index: Option<&mut ChunkIndex>,
    scrub: bool,
) -> Result<Validity, ReceiveError> {
    let mut v = Validity::default();
    let Some(root) = applied else {
        return Ok(v);
    };
    let mut stat = StatReader::open(&d.applied_stat(), root);
    let mut r = ManifestReader::new(ManifestFile(d.applied_manifest()).open()?)?;
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
                let st = d.stat(&e.path);
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
                    cur_file = d.open_entry_ro(&e.path).ok();
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
    v.data_bytes = r.trailer().map_or(0, |t| t.data_bytes);
    Ok(v)
}

/// What [`promote`] re-reads.
#[derive(Clone, Copy)]
pub(super) struct Recheck<'a> {
    /// Entries this round wrote (sorted).
    pub(super) touched: &'a [u32],
    /// Every data entry, not only the touched ones.
    pub(super) all: bool,
    /// Touched entries whose staged file [`verify_staged`] re-read already.
    pub(super) staged: Option<&'a HashMap<u32, StagedCheck>>,
}

/// What [`verify_staged`] found for one staged file: the inode it re-read,
/// and whether every chunk matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct StagedCheck {
    dev: u64,
    ino: u64,
    good: bool,
}

/// Threads re-reading chunks, the same for `promote` and the staged
/// re-read (the two run one after the other, never together).
fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Step 9's data re-read, done on the staged files before apply (while the
/// commit's sync waits for the disk: the two took turns, and a first
/// transfer's sync and re-read each took about 50 ms of 128 MiB): every
/// chunk of each touched data entry's `stage/<entry>`, checked against the
/// round's manifest (rewritten already, for a partial round). A staged
/// file is placed by a rename, so the file at the entry's path after apply
/// is this inode, with these bytes; [`promote`] checks the inode and the
/// metadata. `round`: the round dir (`Dest::round_dir`; a `Dest` stays on
/// its thread). Returns the checks and the bytes re-read.
pub(super) fn verify_staged(
    round: &std::path::Path,
    touched: &[u32],
    opts: &ReceiveOptions,
) -> Result<(HashMap<u32, StagedCheck>, u64), ReceiveError> {
    let mut checks = HashMap::new();
    let mut stats = RoundStats::default();
    if touched.is_empty() {
        return Ok((checks, 0));
    }
    let workers = workers();
    let mut r = ManifestReader::new(ManifestFile(round.join("manifest")).open()?)?;
    let stage = round.join("stage");
    let (mut idx, mut ti) = (0u32, 0usize);
    let mut cur: Option<(u32, Current)> = None;
    let mut done =
        |cur: Option<(u32, Current)>, stats: &mut RoundStats| -> Result<(), ReceiveError> {
            let Some((i, mut c)) = cur else {
                return Ok(());
            };
            c.check_batch(workers, stats, opts)?;
            // A stage file that cannot be stat'ed matches no inode: it fails.
            let st = c.file.as_ref().and_then(|f| rustix::fs::fstat(f).ok());
            let check = st.map_or(
                StagedCheck {
                    dev: 0,
                    ino: 0,
                    good: false,
                },
                |st| StagedCheck {
                    dev: st.st_dev,
                    ino: st.st_ino,
                    good: c.good,
                },
            );
            checks.insert(i, check);
            Ok(())
        };
    while let Some(item) = r.next()? {
        match item {
            Item::Entry(e) => {
                done(cur.take(), &mut stats)?;
                let this = idx;
                idx += 1;
                while ti < touched.len() && touched[ti] < this {
                    ti += 1;
                }
                if ti < touched.len() && touched[ti] == this && e.kind.has_data() {
                    let file = File::open(stage.join(this.to_string())).ok();
                    let good = file.is_some();
                    cur = Some((
                        this,
                        Current {
                            entry: e,
                            file,
                            verify: true,
                            good,
                            staged: None,
                            batch: Vec::new(),
                            batch_bytes: 0,
                        },
                    ));
                }
            }
            Item::Chunk(c) => {
                if let Some((_, cur)) = &mut cur
                    && cur.good
                {
                    cur.batch.push(c);
                    cur.batch_bytes += u64::from(c.len);
                    if cur.batch_bytes >= BATCH_BYTES {
                        cur.check_batch(workers, &mut stats, opts)?;
                    }
                }
            }
        }
    }
    done(cur.take(), &mut stats)?;
    Ok((checks, stats.bytes_verified))
}

/// The entry being checked: its open file (data re-read), whether it is
/// verified, and whether its chunks matched so far.
struct Current {
    entry: Entry,
    file: Option<File>,
    verify: bool,
    good: bool,
    /// The staged file [`verify_staged`] re-read (dev, inode), which the
    /// entry's path must be now.
    staged: Option<(u64, u64)>,
    /// Chunks read but not yet re-read ([`Current::check_batch`]).
    batch: Vec<ChunkRef>,
    batch_bytes: u64,
}

/// Bytes of an entry's chunks re-read together: the batch is split over
/// the cores (hashing is most of a verify's time once the data is cached).
const BATCH_BYTES: u64 = 8 << 20;
/// A smaller batch is re-read on this thread (a thread costs more).
const SPLIT_BYTES: u64 = 1 << 20;

impl Current {
    /// Re-reads the batched chunks (on up to `workers` threads) and counts
    /// them; the first that does not match makes the entry bad.
    fn check_batch(
        &mut self,
        workers: usize,
        stats: &mut RoundStats,
        opts: &ReceiveOptions,
    ) -> Result<(), ReceiveError> {
        let batch = std::mem::take(&mut self.batch);
        let bytes = std::mem::take(&mut self.batch_bytes);
        let Some(f) = &self.file else {
            return Ok(());
        };
        if batch.is_empty() || !self.good {
            return Ok(());
        }
        let n = if bytes < SPLIT_BYTES {
            1
        } else {
            workers.max(1)
        };
        // Worker k re-reads the k-th of n runs of the batch, neighbouring
        // chunks a read of up to `JOINED_READ` at a time (a `db-small` file's
        // chunks are 4 KiB on average: a read each cost more than their
        // hashes): the first bad chunk of each.
        let per = batch.len().div_ceil(n);
        let run = |k: usize| -> std::io::Result<Option<ChunkRef>> {
            let mine = batch
                .get(k * per..((k + 1) * per).min(batch.len()))
                .unwrap_or(&[]);
            // Each span's chunks hashed together (`chunk::many`: short ones
            // fill SIMD lanes only when hashed across chunks) while they are
            // in the core's cache: reading a worker's whole share of the
            // batch first made a `default` file's verify half again slower.
            // A short chunk (the file ended early) cannot match.
            let (mut buf, mut ids) = (Vec::new(), Vec::new());
            for span in spans(mine) {
                let (first, last) = (span[0], span[span.len() - 1]);
                #[allow(
                    clippy::cast_possible_truncation,
                    reason = "at most JOINED_READ or one chunk"
                )]
                let len = (last.end() - first.offset) as usize;
                buf.resize(len, 0);
                let got = read_full_at(f, &mut buf, first.offset)?;
                #[allow(clippy::cast_possible_truncation, reason = "within the span")]
                let part = |c: &ChunkRef| {
                    let from = ((c.offset - first.offset) as usize).min(got);
                    &buf[from..(from + c.len as usize).min(got)]
                };
                let parts: Vec<&[u8]> = span.iter().map(part).collect();
                ids.clear();
                many::ids_of(&parts, &mut ids);
                let mut all = span.iter().zip(&parts).zip(&ids);
                if let Some(((c, _), _)) =
                    all.find(|((c, p), id)| p.len() != c.len as usize || **id != c.id)
                {
                    return Ok(Some(*c));
                }
            }
            Ok(None)
        };
        let results: Vec<std::io::Result<Option<ChunkRef>>> = std::thread::scope(|s| {
            let run = &run;
            let others: Vec<_> = (1..n).map(|k| s.spawn(move || run(k))).collect();
            let mut all = vec![run(0)];
            all.extend(others.into_iter().map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("verify thread panicked")))
            }));
            all
        });
        let path = self.entry.path.clone();
        let mut bad: Option<ChunkRef> = None;
        for r in results {
            if let Some(c) = r.map_err(io_err(&path))? {
                bad = Some(bad.map_or(c, |b| if c.offset < b.offset { c } else { b }));
            }
        }
        if let Some(c) = bad {
            tracing::error!(
                "verify: {} chunk at {} does not match {}",
                self.entry.display_path(),
                c.offset,
                c.id
            );
            self.good = false;
        }
        stats.bytes_verified += bytes;
        opts.progress.event(&Progress::Verified { bytes });
        Ok(())
    }
}

/// `chunks` (in file order) cut into runs of neighbours read at once
/// (`read_full::neighbour_runs`).
fn spans(chunks: &[ChunkRef]) -> impl Iterator<Item = &[ChunkRef]> {
    neighbour_runs(chunks, |c| (c.offset, c.len)).map(|r| &chunks[r])
}

/// Makes the round's manifest the applied one, with a fresh stat cache.
/// With `check`, entries this round touched (or all data entries) are
/// verified in the same pass: metadata against the manifest, data chunk
/// by chunk. An entry that fails gets no stat record, so the next round
/// treats it as changed and repairs it; the failures are returned.
/// `written`: when the destination was last written (its apply's end).
pub(super) fn promote(
    d: &Dest,
    check: Option<Recheck<'_>>,
    written: Instant,
    stats: &mut RoundStats,
    opts: &ReceiveOptions,
) -> Result<Vec<String>, ReceiveError> {
    if let Some(r) = &d.root {
        r.forget();
    }
    let rd = d.round_dir();
    let m = rd.join("manifest");
    // An entry's stat is taken once the clock tick since the last write
    // has passed; entries that end before are kept (a few) until it has. In
    // a big round the chunks' re-read covers the tick and nothing waits.
    let ready = written + clock_tick();
    let mut pending: VecDeque<Current> = VecDeque::new();
    let stat_new = d.state.join("applied.stat.new");
    let mut w = StatWriter::create(&stat_new)?;
    let mut r = ManifestReader::new(ManifestFile(m.clone()).open()?)?;
    let Recheck {
        touched,
        all,
        staged,
    } = check.unwrap_or(Recheck {
        touched: &[],
        all: false,
        staged: None,
    });
    let checking = check.is_some();
    let workers = workers();
    let mut failures = Vec::new();
    let mut idx = 0u32;
    let mut ti = 0usize;
    let mut cur: Option<Current> = None;
    let record =
        |c: Current, w: &mut StatWriter, failures: &mut Vec<String>| -> Result<(), ReceiveError> {
            let e = &c.entry;
            let st = match &c.file {
                Some(f) => fsmeta::stat_fd(f.as_fd(), &e.path).ok().map(|mut st| {
                    if st.kind == StatKind::BlockDev {
                        st.size = crate::scan::image_size(f, &st).unwrap_or(0);
                    }
                    st
                }),
                None => d.stat(&e.path),
            };
            let mut good = c.good;
            if let (Some(want), Some(st)) = (c.staged, &st)
                && want != (st.dev, st.ino)
            {
                tracing::error!(
                    "verify: {} is not the staged file that was re-read",
                    e.display_path()
                );
                good = false;
            }
            if c.verify {
                let meta = match &st {
                    None => false,
                    Some(st) if st.kind == StatKind::BlockDev => st.size >= e.size,
                    Some(st) => {
                        fsmeta::meta_matches(st, e) && (!e.kind.has_data() || st.size == e.size)
                    }
                };
                if !meta {
                    tracing::error!(
                        "verify: {} does not match the manifest: {st:?}",
                        e.display_path()
                    );
                }
                good &= meta;
            }
            match st {
                _ if !good => failures.push(e.display_path()),
                Some(st) => {
                    let mut rec = StatRec::new(&e.path, &st, i128::MIN / 2);
                    rec.racy = false;
                    w.push(&rec)?;
                }
                None => {}
            }
            Ok(())
        };
    // The entries ended so far, recorded in order once the tick has passed
    // (`last`: the pass is over, so wait for it).
    let settle = |pending: &mut VecDeque<Current>,
                  w: &mut StatWriter,
                  failures: &mut Vec<String>,
                  last: bool|
     -> Result<(), ReceiveError> {
        if let Some(wait) = ready.checked_duration_since(Instant::now()) {
            if !last && pending.len() < PENDING_MAX {
                return Ok(());
            }
            std::thread::sleep(wait);
        }
        while let Some(c) = pending.pop_front() {
            record(c, w, failures)?;
        }
        Ok(())
    };
    while let Some(item) = r.next()? {
        match item {
            Item::Entry(e) => {
                if let Some(c) = &mut cur {
                    c.check_batch(workers, stats, opts)?;
                }
                pending.extend(cur.take());
                settle(&mut pending, &mut w, &mut failures, false)?;
                let this = idx;
                idx += 1;
                while ti < touched.len() && touched[ti] < this {
                    ti += 1;
                }
                let verify = checking
                    && ((ti < touched.len() && touched[ti] == this) || (all && e.kind.has_data()));
                let pre = staged
                    .filter(|_| verify)
                    .and_then(|m| m.get(&this))
                    .copied();
                // A verified entry that cannot be opened fails (no stat).
                let (file, good) = if let Some(p) = pre {
                    // Re-read before apply: only which file it is is left.
                    (None, p.good)
                } else if verify && e.kind.has_data() {
                    match d.open_entry_ro(&e.path) {
                        Ok(f) => (Some(f), true),
                        Err(_) => (None, false),
                    }
                } else {
                    (None, true)
                };
                cur = Some(Current {
                    entry: e,
                    file,
                    verify,
                    good,
                    staged: pre.map(|p| (p.dev, p.ino)),
                    batch: Vec::new(),
                    batch_bytes: 0,
                });
            }
            Item::Chunk(c) => {
                if let Some(cur) = &mut cur
                    && cur.file.is_some()
                    && cur.good
                {
                    cur.batch.push(c);
                    cur.batch_bytes += u64::from(c.len);
                    if cur.batch_bytes >= BATCH_BYTES {
                        cur.check_batch(workers, stats, opts)?;
                    }
                }
            }
        }
    }
    if let Some(c) = &mut cur {
        c.check_batch(workers, stats, opts)?;
    }
    pending.extend(cur.take());
    settle(&mut pending, &mut w, &mut failures, true)?;
    let root = r
        .trailer()
        .map(|t| t.root)
        .ok_or(ManifestError::Truncated(0))?;
    w.finish(&root, true)?;
    let man_new = d.state.join("applied.manifest.new");
    let _ = std::fs::remove_file(&man_new);
    std::fs::hard_link(&m, &man_new).map_err(io_err(b"applied.manifest"))?;
    std::fs::rename(&stat_new, d.applied_stat()).map_err(io_err(b"applied.stat"))?;
    std::fs::rename(&man_new, d.applied_manifest()).map_err(io_err(b"applied.manifest"))?;
    File::open(&d.state)
        .and_then(|f| f.sync_all())
        .map_err(io_err(b"state dir"))?;
    // Removed in the background: a sparse pack's unlink can take seconds
    // on a busy filesystem, and this is the end of a final round's downtime.
    super::discard::discard(&d.state, &rd)?;
    let _ = super::discard::discard(&d.state, &d.state.join("seed"));
    Ok(failures)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;

    use super::*;
    use crate::manifest::Kind;
    use crate::progress::NoProgress;

    /// A file of `n` chunks of `len` bytes each, and those chunks' refs.
    fn chunked_file(dir: &std::path::Path, n: u32, len: u32) -> (File, Vec<ChunkRef>) {
        let p = dir.join("f");
        let mut data = Vec::new();
        let mut refs = Vec::new();
        for i in 0..n {
            let chunk: Vec<u8> = (0..len)
                .map(|b| (b.to_le_bytes()[0]) ^ (i.to_le_bytes()[0]).wrapping_mul(31))
                .collect();
            refs.push(ChunkRef {
                offset: u64::from(i * len),
                len,
                id: ChunkId::of(&chunk),
            });
            data.extend_from_slice(&chunk);
        }
        std::fs::write(&p, &data).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        (f, refs)
    }

    fn current(f: File, refs: &[ChunkRef]) -> Current {
        Current {
            entry: Entry {
                path: b"f".to_vec(),
                kind: Kind::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime_ns: 0,
                size: 0,
                rdev: 0,
                target: Vec::new(),
                xattrs: Vec::new(),
                class: 0,
            },
            file: Some(f),
            verify: true,
            good: true,
            staged: None,
            batch: refs.to_vec(),
            batch_bytes: refs.iter().map(|c| u64::from(c.len)).sum(),
        }
    }

    fn opts() -> ReceiveOptions {
        ReceiveOptions {
            progress: Arc::new(NoProgress),
            ..ReceiveOptions::default()
        }
    }

    #[test]
    fn staged_files_are_re_read_before_apply_and_a_bad_chunk_fails_its_entry() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let golden = crate::chunk::tests::golden_input;
        std::fs::write(src.join("a.bin"), golden(3 << 20, 1)).unwrap();
        std::fs::write(src.join("b.bin"), golden(2 << 20, 2)).unwrap();
        let scan = crate::scan::scan_tree(
            &src,
            &t.path().join("cache"),
            crate::scan::ScanOptions {
                threads: 2,
                label: "t".into(),
                progress: Arc::new(NoProgress),
                changes: None,
                copy_into: None,
            },
        )
        .unwrap();
        // Entries: 0 the root, 1 a.bin, 2 b.bin.
        let round = t.path().join("round");
        let stage = round.join("stage");
        std::fs::create_dir_all(&stage).unwrap();
        std::fs::copy(&scan.manifest, round.join("manifest")).unwrap();
        std::fs::copy(src.join("a.bin"), stage.join("1")).unwrap();
        std::fs::copy(src.join("b.bin"), stage.join("2")).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(stage.join("2"))
            .unwrap();
        f.write_all_at(b"X", (1 << 20) + 5).unwrap();

        let (checks, bytes) = verify_staged(&round, &[1, 2], &opts()).unwrap();
        assert_eq!(checks.len(), 2);
        let ino = std::fs::metadata(stage.join("1")).unwrap().ino();
        assert!(checks[&1].good && checks[&1].ino == ino, "{checks:?}");
        assert!(!checks[&2].good, "the changed byte: {checks:?}");
        assert!(bytes >= 3 << 20, "{bytes}");
        // Only touched entries are read; a missing staged file fails.
        let (checks, _) = verify_staged(&round, &[1], &opts()).unwrap();
        assert_eq!(checks.keys().copied().collect::<Vec<_>>(), vec![1]);
        std::fs::remove_file(stage.join("1")).unwrap();
        let (checks, _) = verify_staged(&round, &[1], &opts()).unwrap();
        assert!(!checks[&1].good);
    }

    #[test]
    fn a_batch_split_over_threads_finds_a_bad_chunk_in_any_part() {
        // 16 chunks of 256 KiB: 4 MiB, above SPLIT_BYTES, so 2 and 3 workers
        // each take a share; the bad chunk lands in the first and the last
        // worker's share (worker k takes the k-th run of chunks).
        for workers in [1, 2, 3] {
            for bad in [0u32, 1, 2, 15] {
                let t = tempfile::tempdir().unwrap();
                let (f, refs) = chunked_file(t.path(), 16, 256 << 10);
                f.write_all_at(b"X", u64::from(bad * (256 << 10)) + 7)
                    .unwrap();
                let mut c = current(f, &refs);
                let mut stats = RoundStats::default();
                c.check_batch(workers, &mut stats, &opts()).unwrap();
                assert!(!c.good, "workers {workers}, bad chunk {bad} not found");
                assert!(c.batch.is_empty() && c.batch_bytes == 0);
            }
        }
    }

    /// `db-small` chunks (here 3000 bytes) are re-read a span of neighbours
    /// at a time: a bad byte anywhere in a span, or past a short file's
    /// end, still fails the entry.
    #[test]
    fn small_chunks_are_read_in_spans_and_a_bad_one_is_found() {
        for workers in [1, 2, 3] {
            for bad in [0u32, 86, 87, 500, 1399] {
                let t = tempfile::tempdir().unwrap();
                let (f, refs) = chunked_file(t.path(), 1400, 3000);
                f.write_all_at(b"X", u64::from(bad * 3000) + 2999).unwrap();
                let mut c = current(f, &refs);
                c.check_batch(workers, &mut RoundStats::default(), &opts())
                    .unwrap();
                assert!(!c.good, "workers {workers}, bad chunk {bad} not found");
            }
            let t = tempfile::tempdir().unwrap();
            let (f, refs) = chunked_file(t.path(), 1400, 3000);
            let mut c = current(f.try_clone().unwrap(), &refs);
            c.check_batch(workers, &mut RoundStats::default(), &opts())
                .unwrap();
            assert!(c.good, "workers {workers}");
            f.set_len(1400 * 3000 - 1).unwrap();
            let mut c = current(f, &refs);
            c.check_batch(workers, &mut RoundStats::default(), &opts())
                .unwrap();
            assert!(!c.good, "workers {workers}: a short file");
        }
    }

    #[test]
    fn spans_join_neighbours_up_to_the_read_span() {
        let c = |offset: u64, len: u32| ChunkRef {
            offset,
            len,
            id: ChunkId::of(b""),
        };
        let k = 1024u32;
        let cases: Vec<(Vec<ChunkRef>, Vec<usize>)> = vec![
            (vec![], vec![]),
            (vec![c(0, 4 * k)], vec![1]),
            // A gap (a chunk not re-read) ends a span.
            (vec![c(0, 4 * k), c(4096, k), c(8192, k)], vec![2, 1]),
            ((0..65).map(|i| c(i * 4096, 4 * k)).collect(), vec![64, 1]),
            (vec![c(0, 1024 * k), c(1 << 20, k)], vec![1, 1]),
        ];
        for (chunks, want) in cases {
            let got: Vec<usize> = spans(&chunks).map(<[ChunkRef]>::len).collect();
            assert_eq!(got, want, "{chunks:?}");
        }
    }

    #[test]
    fn an_intact_batch_stays_good_and_is_counted_once() {
        for workers in [1, 2, 4] {
            let t = tempfile::tempdir().unwrap();
            let (f, refs) = chunked_file(t.path(), 16, 256 << 10);
            let mut c = current(f, &refs);
            let mut stats = RoundStats::default();
            c.check_batch(workers, &mut stats, &opts()).unwrap();
            assert!(c.good, "workers {workers}");
            assert_eq!(stats.bytes_verified, 4 << 20);
            // An empty batch afterwards changes nothing.
            c.check_batch(workers, &mut stats, &opts()).unwrap();
            assert_eq!(stats.bytes_verified, 4 << 20);
        }
    }

    #[test]
    fn a_short_file_fails_the_batch() {
        let t = tempfile::tempdir().unwrap();
        let (f, refs) = chunked_file(t.path(), 8, 256 << 10);
        f.set_len(7 * (256 << 10) + 100).unwrap();
        let mut c = current(f, &refs);
        c.check_batch(2, &mut RoundStats::default(), &opts())
            .unwrap();
        assert!(!c.good);
    }
}
