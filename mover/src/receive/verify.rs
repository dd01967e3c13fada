//! Checking the destination against manifests, before and after a round.
//!
//! - Before (DESIGN.md step 3): [`validity`] streams `applied.manifest` with
//!   `applied.stat` and lstats every entry. An entry whose stat differs is
//!   invalid (not a chunk source; rewritten by the round); valid data
//!   entries' chunks go into the chunk index. With a scrub every chunk is
//!   re-read too.
//! - After (step 9): [`promote`] lstats every entry of the new manifest into
//!   a fresh `applied.stat`, re-reads what the round wrote, and makes the
//!   round's manifest the applied one.

use std::fs::File;
use std::os::fd::AsFd;
use std::time::Duration;

use super::dest::{Dest, ManifestFile};
use super::error::{ReceiveError, io_err};
use super::options::{ReceiveOptions, RoundStats};
use super::plan::{StoredManifest, Validity};
use crate::chunk::ChunkId;
use crate::chunk_index::{ChunkIndex, Loc, read_verified};
use crate::fsmeta::{self, StatKind};
use crate::manifest::{Entry, Item, Kind, ManifestError, ManifestReader};
use crate::progress::Progress;
use crate::statcache::{StatReader, StatRec, StatWriter};

/// How long the filesystem clock is given to move past the round's last
/// write before the destination's stats are recorded: any later change
/// behind our back then gets a different ctime than the one recorded here
/// (no racy entries at the destination). Coarse filesystem timestamps tick
/// every few milliseconds.
const CLOCK_TICK: Duration = Duration::from_millis(20);

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
}

/// The entry being checked: its open file (data re-read), its new stat
/// record, and whether it still matches.
struct Current {
    entry: Entry,
    file: Option<File>,
    rec: Option<StatRec>,
    good: bool,
}

/// Makes the round's manifest the applied one, with a fresh stat cache.
/// With `check`, entries this round touched (or all data entries) are
/// verified in the same pass: metadata against the manifest, data chunk
/// by chunk. An entry that fails gets no stat record, so the next round
/// treats it as changed and repairs it; the failures are returned.
pub(super) fn promote(
    d: &Dest,
    check: Option<Recheck<'_>>,
    stats: &mut RoundStats,
    opts: &ReceiveOptions,
) -> Result<Vec<String>, ReceiveError> {
    if let Some(r) = &d.root {
        r.forget();
    }
    let rd = d.round_dir();
    let m = rd.join("manifest");
    std::thread::sleep(CLOCK_TICK);
    let stat_new = d.state.join("applied.stat.new");
    let mut w = StatWriter::create(&stat_new)?;
    let mut r = ManifestReader::new(ManifestFile(m.clone()).open()?)?;
    let Recheck { touched, all } = check.unwrap_or(Recheck {
        touched: &[],
        all: false,
    });
    let checking = check.is_some();
    let mut failures = Vec::new();
    let mut idx = 0u32;
    let mut ti = 0usize;
    let mut buf = Vec::new();
    let mut cur: Option<Current> = None;
    let finish = |cur: &mut Option<Current>,
                  w: &mut StatWriter,
                  failures: &mut Vec<String>|
     -> Result<(), ReceiveError> {
        if let Some(c) = cur.take() {
            match (c.rec, c.good) {
                (Some(rec), true) => w.push(&rec)?,
                (_, false) => failures.push(c.entry.display_path()),
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
                    && ((ti < touched.len() && touched[ti] == this) || (all && e.kind.has_data()));
                let mut file = None;
                let st = if verify && e.kind.has_data() {
                    match d.open_entry_ro(&e.path) {
                        Ok(f) => {
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
                    d.stat(&e.path)
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
                cur = Some(Current {
                    entry: e,
                    file,
                    rec,
                    good,
                });
            }
            Item::Chunk(c) => {
                if let Some(Current {
                    entry,
                    file: Some(f),
                    good,
                    ..
                }) = &mut cur
                    && *good
                {
                    if !read_verified(f, c.offset, c.len, &c.id, &mut buf)
                        .map_err(io_err(&entry.path))?
                    {
                        tracing::error!(
                            "verify: {} chunk at {} does not match {}",
                            entry.display_path(),
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
