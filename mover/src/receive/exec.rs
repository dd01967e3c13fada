//! The plan's executor: carries out each decision of [`super::plan`] as it
//! comes. Ops go to their streams; each chunk the round needs is found
//! locally (the chunk index: the applied tree, this round's staged files and
//! pack, an interrupted round's seeds; every copy read back and verified
//! against its id) or asked of the source in windows (DESIGN.md steps 4-6).
//! Every arriving chunk is hashed and compared with its id before it is
//! written; the writer checkpoints as it goes.
//!
//! A chunk that does not match its id means the source changed since its
//! scan. The one place that decides what follows is [`Executor::mismatch`]:
//! - a final round (`ReceiveOptions::precopy` off) must be exact: it stops
//!   (`ReceiveError::Stale`) after the chunks that did arrive are made
//!   durable; they seed the next attempt;
//! - a pre-copy round keeps what it moved. The want's range is marked
//!   *dirty* and the round goes on. What did arrive for it is the source's
//!   newer version of the range (read when asked), so a staged file keeps
//!   it, under the id of what it is (zeros only when the range's length did
//!   not arrive: the file shrank). A file patched in place keeps its
//!   previous bytes there (its `PatchWrite` is skipped at apply, which
//!   checks a pack chunk against the planned id). [`Executed::dirty`] names
//!   each such range with the id of the bytes it will hold, so the round
//!   can rewrite its manifest to say exactly what the destination holds
//!   (`super::partial`); the next round then sees where those ranges differ
//!   from the source and sends that, patched against the kept bytes, which
//!   are usually a page or two behind. (Zeros there cost a busy database's
//!   hot ranges a second time whole: PostgreSQL's round 2 on gold carried 2x
//!   what was written since round 1's scan, `bench/migrate.sh`.)

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::dest::Dest;
use super::error::{ReceiveError, io_err};
use super::ops::Op;
use super::options::{ReceiveOptions, RoundStats};
use super::pages;
use super::plan::{Counts, PlanSink};
use super::writer::{Finished, Target, Writer};
use crate::chunk::{ChunkId, ChunkRef};
use crate::chunk_index::{ChunkIndex, Loc, read_verified};
use crate::manifest::{Entry, PathTable};
use crate::progress::Progress;
use crate::read_full::{read_full_at, will_need};
use crate::source::{Arrived, ChunkSource, SinkError, Want};

/// Wants per fetch window (bounded memory; a network source pipelines a
/// window as one batch).
const WINDOW_WANTS: usize = 8192;
/// Bytes per fetch window, for the same reason.
const WINDOW_BYTES: u64 = 64 << 20;

/// Wants asked of the source together.
#[derive(Default)]
struct Window {
    wants: Vec<Want>,
    /// Per want: every place its bytes go (duplicates wait on the first).
    dests: Vec<Vec<Target>>,
    /// Per want: the destination path whose same range holds the previous
    /// version of the chunk (files patched in place), and how many of those
    /// bytes exist. A remote source then sends only what differs.
    bases: Vec<Option<(Vec<u8>, u32)>>,
    bytes: u64,
}

/// A window's patch bases: per want, the destination's previous bytes of
/// the range (None: no base) and the holes among them (chunk-relative).
/// A hole reads as zeros: the base still serves the source's page diff,
/// and the hole's pages are written where the source holds data.
struct Bases {
    bytes: Vec<Option<Vec<u8>>>,
    holes: Vec<Vec<(u32, u32)>>,
}

/// One want's base (see [`Bases`]).
#[derive(Clone, Copy)]
struct Base<'a> {
    old: &'a [u8],
    holes: &'a [(u32, u32)],
}

impl Bases {
    fn get(&self, k: usize) -> Option<Base<'_>> {
        Some(Base {
            old: self.bytes[k].as_deref()?,
            holes: &self.holes[k],
        })
    }
}

/// A range a pre-copy round could not fill because the source changed: what
/// the destination holds there after apply, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Dirty {
    /// New-manifest entry index and the chunk's offset in it.
    pub(super) entry: u32,
    pub(super) offset: u64,
    pub(super) len: u32,
    /// The id of the bytes the destination will hold in that range: in a
    /// staged file what arrived for it (else zeros), in a patched one the
    /// previous bytes.
    pub(super) holds: ChunkId,
}

/// Where local chunk sources are.
pub(super) struct Local<'a> {
    pub(super) index: ChunkIndex,
    /// Paths of the valid applied data entries (`Loc::Applied` numbers them).
    pub(super) applied: &'a PathTable,
    /// Files of an interrupted round's durable chunks (`Loc::Seed` numbers them).
    pub(super) seeds: Vec<PathBuf>,
    /// Entries whose staged file is already whole: the source's scan copied
    /// them as it hashed them (`crate::scan::ScanCopy`), on handles opened
    /// before their first byte was written.
    pub(super) copied: HashMap<u32, File>,
}

/// What the execution left for the commit.
pub(super) struct Executed {
    /// The round's writer, for the commit.
    pub(super) writer: Finished,
    /// New-manifest entries whose data this round staged (verified after).
    pub(super) touched: Vec<u32>,
    pub(super) fetch_time: Duration,
    /// Ranges left dirty (pre-copy rounds only), in no particular order.
    pub(super) dirty: Vec<Dirty>,
    /// Pack offsets whose `PatchWrite` must be skipped at apply.
    pub(super) skip_patches: Vec<u64>,
    /// Pack offsets holding only the pages that differ (`super::pages`).
    pub(super) page_patches: Vec<(u64, Vec<(u32, u32)>)>,
}

/// Executes one round's plan.
pub(super) struct Executor<'a> {
    dest: &'a Dest,
    opts: &'a ReceiveOptions,
    src: Option<&'a mut dyn ChunkSource>,
    local: Local<'a>,
    writer: Writer<'a>,
    stats: &'a mut RoundStats,
    window: Window,
    /// The last want filled the window: fetch it once the caller has
    /// recorded the want (see `stage_chunk`).
    window_full: bool,
    /// Chunks of the file being staged that wait on a fetch, and whether
    /// the window filled meanwhile.
    deferred: u32,
    flush_after_stage: bool,
    /// Staged files waiting for deferred chunks: (writes left, entry).
    unfinished: HashMap<u32, (u32, Entry)>,
    applied_file: Option<(u32, File)>,
    seed_files: HashMap<u32, File>,
    buf: Vec<u8>,
    touched: Vec<u32>,
    fetch_time: Duration,
    /// Pack offset of each patch want -> (entry, offset in the file, path):
    /// where a dirty pack target's range lies.
    patches: HashMap<u64, (u32, u64, Vec<u8>)>,
    dirty: Vec<Dirty>,
    skip_patches: Vec<u64>,
    page_patches: Vec<(u64, Vec<(u32, u32)>)>,
    /// Entries staged from the source's scan copies (see [`Local::copied`]).
    copied: HashSet<u32>,
}

impl<'a> Executor<'a> {
    pub(super) fn new(
        dest: &'a Dest,
        opts: &'a ReceiveOptions,
        src: &'a mut dyn ChunkSource,
        mut local: Local<'a>,
        stats: &'a mut RoundStats,
    ) -> Result<Self, ReceiveError> {
        let mut writer = Writer::open(dest, opts.checkpoint_bytes)?;
        let copied = local.copied.keys().copied().collect();
        writer.sync_with_round(local.copied.drain().map(|(_, f)| f));
        Ok(Executor {
            dest,
            opts,
            src: Some(src),
            local,
            writer,
            stats,
            window: Window::default(),
            window_full: false,
            deferred: 0,
            flush_after_stage: false,
            unfinished: HashMap::new(),
            applied_file: None,
            seed_files: HashMap::new(),
            buf: Vec::new(),
            touched: Vec::new(),
            fetch_time: Duration::ZERO,
            patches: HashMap::new(),
            dirty: Vec::new(),
            skip_patches: Vec::new(),
            page_patches: Vec::new(),
            copied,
        })
    }

    /// Chunk `c` of an entry the source's scan copied: already in its
    /// staged file, as hashed. Counted as fetched (it came from the source
    /// this round), and a local source for the round's later duplicates.
    fn copied_chunk(&mut self, entry: u32, c: ChunkRef) {
        let t = Target::Stage {
            entry,
            offset: c.offset,
        };
        self.local.index.add(&c.id, t.loc(), c.len);
        self.writer.written_before(t, &c);
        self.stats.chunks_new += 1;
        self.stats.bytes_fetched += u64::from(c.len);
        self.stats.bytes_scan_copied += u64::from(c.len);
        self.stats.bytes_written += u64::from(c.len);
        self.opts.progress.event(&Progress::Moved {
            bytes: u64::from(c.len),
        });
    }

    /// After the plan: the plan's counts go into the stats, the last window
    /// is fetched, everything is checkpointed and the op streams written.
    pub(super) fn finish(mut self, counts: Counts) -> Result<Executed, ReceiveError> {
        self.stats.files_staged += counts.files_staged;
        self.stats.files_patched += counts.files_patched;
        self.stats.meta_only += counts.meta_only;
        self.stats.chunks_reused += counts.in_place;
        self.flush_window()?;
        Ok(Executed {
            writer: self.writer.finish()?,
            touched: self.touched,
            fetch_time: self.fetch_time,
            dirty: self.dirty,
            skip_patches: self.skip_patches,
            page_patches: self.page_patches,
        })
    }

    /// Finds chunk `c` (needed at `target`) locally or queues a want.
    /// True when the write is deferred to a fetch window.
    fn resolve(&mut self, i: u32, c: ChunkRef, target: Target) -> Result<bool, ReceiveError> {
        if let Some((loc, len)) = self.local.index.get(&c.id)
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
                    let f = self.writer.stage_file(entry)?;
                    let ok =
                        read_verified(f, offset, len, &c.id, &mut buf).map_err(io_err(b"stage"))?;
                    self.buf = buf;
                    if ok {
                        self.stats.chunks_reused += 1;
                        return Ok(false);
                    }
                    self.local.index.remove(&c.id);
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
                    self.local.index.remove(&c.id);
                }
            }
        }
        // Ask the source.
        let w = u32::try_from(self.window.wants.len()).expect("a window holds few wants");
        self.window.wants.push(Want {
            entry: i,
            offset: c.offset,
            len: c.len,
            id: c.id,
        });
        self.window.dests.push(vec![target]);
        self.window.bases.push(None);
        self.window.bytes += u64::from(c.len);
        self.local.index.set(&c.id, Loc::Pending { want: w }, c.len);
        if self.window.wants.len() >= WINDOW_WANTS || self.window.bytes >= WINDOW_BYTES {
            // The caller counts this want as deferred even if the window is
            // fetched right now: `landed` runs when the caller has recorded it.
            self.window_full = true;
        }
        Ok(true)
    }

    /// Reads a chunk from a local location into `self.buf`, verified.
    fn copy_local(&mut self, loc: Loc, c: &ChunkRef) -> Result<bool, ReceiveError> {
        let mut buf = std::mem::take(&mut self.buf);
        let ok = match self.local_file(loc)? {
            Some((f, offset)) => read_verified(f, offset, c.len, &c.id, &mut buf).unwrap_or(false),
            None => false,
        };
        self.buf = buf;
        Ok(ok)
    }

    /// The open file and offset behind a local location (None when it
    /// cannot be opened: the chunk is then fetched).
    fn local_file(&mut self, loc: Loc) -> Result<Option<(&File, u64)>, ReceiveError> {
        Ok(match loc {
            Loc::Applied { entry, offset } => {
                if self.applied_file.as_ref().is_none_or(|(e, _)| *e != entry) {
                    let Some(path) = self.local.applied.get(entry) else {
                        return Ok(None);
                    };
                    match self.dest.open_entry_ro(path) {
                        Ok(f) => self.applied_file = Some((entry, f)),
                        Err(_) => return Ok(None),
                    }
                }
                self.applied_file.as_ref().map(|(_, f)| (f, offset))
            }
            Loc::Stage { entry, offset } => Some((self.writer.stage_file(entry)?, offset)),
            Loc::Pack { offset } => Some((self.writer.pack(), offset)),
            Loc::Seed { file, offset } => {
                if !self.seed_files.contains_key(&file) {
                    match self.local.seeds.get(file as usize).map(File::open) {
                        Some(Ok(f)) => {
                            self.seed_files.insert(file, f);
                        }
                        _ => return Ok(None),
                    }
                }
                self.seed_files.get(&file).map(|f| (f, offset))
            }
            Loc::Pending { .. } => None,
        })
    }

    fn write_target(&mut self, t: Target, c: &ChunkRef, data: &[u8]) -> Result<(), ReceiveError> {
        self.writer.write(t, c, data)?;
        if !matches!(self.local.index.get(&c.id), Some((Loc::Pending { .. }, _))) {
            self.local.index.add(&c.id, t.loc(), c.len);
        }
        self.stats.bytes_written += data.len() as u64;
        Ok(())
    }

    /// One chunk write that `stage_end` deferred has landed.
    fn landed(&mut self, i: u32) -> Result<(), ReceiveError> {
        let done = match self.unfinished.get_mut(&i) {
            Some((n, _)) => {
                *n -= 1;
                *n == 0
            }
            None => false,
        };
        if done && let Some((_, e)) = self.unfinished.remove(&i) {
            self.writer.finish_stage(i, &e, &mut self.stats.skipped)?;
        }
        Ok(())
    }

    /// The previous bytes of the window's patched ranges (None when there is
    /// none), and where each lies over a hole. A base that cannot be read is
    /// simply not offered.
    fn read_bases(&mut self, wants: &[Want]) -> Option<Bases> {
        let refs = std::mem::take(&mut self.window.bases);
        if refs.iter().all(Option::is_none) {
            return None;
        }
        // Open each file once; ask the kernel for every range up front (one
        // deep queue of reads instead of one cold random read at a time).
        let mut files: HashMap<Vec<u8>, Option<File>> = HashMap::new();
        for (r, w) in refs.iter().zip(wants) {
            let Some((path, len)) = r else { continue };
            let f = files
                .entry(path.clone())
                .or_insert_with(|| self.dest.open_entry_ro(path).ok());
            if let Some(f) = f {
                will_need(f, w.offset, u64::from(*len));
            }
        }
        let mut holes = vec![Vec::new(); refs.len()];
        let bytes = refs
            .into_iter()
            .zip(wants)
            .zip(&mut holes)
            .map(|((r, w), holes)| {
                let (path, len) = r?;
                let f = files.get(&path)?.as_ref()?;
                let mut buf = vec![0u8; len as usize];
                let got = read_full_at(f, &mut buf, w.offset).ok()?;
                if got != buf.len() {
                    return None;
                }
                *holes = pages::holes_in(f, w.offset, &buf);
                Some(buf)
            })
            .collect();
        Some(Bases { bytes, holes })
    }

    /// A chunk that does not match its want: the source changed since its
    /// scan. A final round stops here; a pre-copy round marks every place
    /// the want was for dirty and goes on, keeping `arrived` in staged files
    /// when the source sent the range's length (see the module doc).
    fn mismatch(
        &mut self,
        w: &Want,
        dests: &[Target],
        arrived: Option<(&[u8], ChunkId)>,
    ) -> Result<(), ReceiveError> {
        if !self.opts.precopy {
            return Err(ReceiveError::Stale {
                path: format!("entry #{}", w.entry),
                offset: w.offset,
            });
        }
        // Later wants of the same id must not join this finished want.
        self.local.index.remove(&w.id);
        self.stats.chunks_dirty += 1;
        self.stats.bytes_dirty += u64::from(w.len);
        // `arrived`'s id was hashed by us: it names what the destination
        // will hold whatever the peer meant (the final round is exact).
        for t in dests {
            match *t {
                Target::Stage { entry, offset } => {
                    // Without arrived bytes: zeros, written (not left a
                    // hole) so that a resumed attempt's bytes cannot linger.
                    let zeros;
                    let (bytes, holds) = match arrived {
                        Some(k) => k,
                        None => {
                            zeros = vec![0u8; w.len as usize];
                            (&zeros[..], ChunkId::of(&zeros))
                        }
                    };
                    let c = ChunkRef {
                        offset,
                        len: w.len,
                        id: holds,
                    };
                    self.writer.write(*t, &c, bytes)?;
                    self.stats.bytes_written += bytes.len() as u64;
                    self.dirty.push(Dirty {
                        entry,
                        offset,
                        len: w.len,
                        holds,
                    });
                    self.landed(entry)?;
                }
                Target::Pack { offset: pack } => {
                    let Some((entry, offset, path)) = self.patches.get(&pack).cloned() else {
                        return Err(ReceiveError::Stale {
                            path: format!("entry #{}", w.entry),
                            offset: w.offset,
                        });
                    };
                    // The file keeps its previous bytes there (zeros past
                    // its current end, which the patch's size extends).
                    // Apply checks a pack chunk against the id the plan
                    // recorded, so arrived bytes are not patched in: the
                    // range is a round behind, still a patch base.
                    let mut buf = vec![0u8; w.len as usize];
                    let f = self.dest.open_entry_ro(&path)?;
                    read_full_at(&f, &mut buf, offset).map_err(io_err(&path))?;
                    self.skip_patches.push(pack);
                    let holds = ChunkId::of(&buf);
                    self.dirty.push(Dirty {
                        entry,
                        offset,
                        len: w.len,
                        holds,
                    });
                }
            }
        }
        Ok(())
    }

    /// Asks the source for the window's wants and writes each verified
    /// arrival to every place that waits for it.
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
            let mut sink = |k: usize, a: Arrived<'_>| -> Result<(), SinkError> {
                let (w, data) = (&wants[k], a.data());
                // Hashed once (maybe by the source's reading thread, from
                // these bytes): a mismatch keeps these bytes under this id.
                let id = (data.len() == w.len as usize).then(|| a.id());
                if id != Some(w.id) {
                    let kept = id.map(|id| (data, id));
                    if let Err(e) = self.mismatch(w, &dests[k], kept) {
                        failure = Some(e);
                        return Err("chunk does not match its id".into());
                    }
                    return Ok(());
                }
                let base = bases.as_ref().and_then(|b| b.get(k));
                if let Err(e) = self.arrived(w, &dests[k], data, base) {
                    failure = Some(e);
                    return Err("write failed".into());
                }
                Ok(())
            };
            match &bases {
                Some(b) => src.fetch_with_bases(&wants, &b.bytes, &mut sink),
                None => src.fetch(&wants, &mut sink),
            }
        };
        self.src = Some(src);
        if let Err(e) = r {
            // Keep what arrived: make it durable before failing.
            let _ = self.writer.checkpoint();
            return Err(failure.take().unwrap_or(ReceiveError::Source(e)));
        }
        self.fetch_time += t.elapsed();
        Ok(())
    }

    /// A verified chunk arrived for `w`: write it wherever it is needed.
    /// A patch whose previous bytes (`base`: bytes, and where they lie over
    /// a hole) differ in only some of its pages stores only those pages,
    /// and the pages over a hole (`super::pages`).
    fn arrived(
        &mut self,
        w: &Want,
        dests: &[Target],
        data: &[u8],
        base: Option<Base<'_>>,
    ) -> Result<(), ReceiveError> {
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
        if let ([Target::Pack { offset: pack }], Some(Base { old, holes })) = (dests, base)
            && old.len() == data.len()
        {
            let pages = pages::with_holes(pages::diff_pages(w.offset, data, old), holes);
            // Any page spared. (Half the chunk was the rule while chunks
            // were 16 KiB and more; a `db-small` chunk, 4 KiB on average,
            // holds part of a page that straddles it and its neighbour, and
            // written whole it made a rewritten page cost about twice.)
            let (covered, len) = (pages::covered(&pages), data.len() as u64);
            if covered < len {
                self.stats.bytes_written += self.writer.write_pages(*pack, data, &pages)?;
                // The pack does not hold the whole chunk: not a source.
                self.local.index.remove(&w.id);
                self.page_patches.push((*pack, pages));
                return Ok(());
            }
        }
        // The first destination becomes the chunk's home for later dups.
        self.local.index.set(&w.id, dests[0].loc(), w.len);
        for t in dests {
            self.write_target(*t, &c, data)?;
            if let Target::Stage { entry, .. } = t {
                self.landed(*entry)?;
            }
        }
        Ok(())
    }
}

impl PlanSink for Executor<'_> {
    fn op(&mut self, op: Op) -> Result<(), ReceiveError> {
        if let Op::Place { stage, .. } = &op {
            self.touched.push(*stage);
        }
        self.writer.op(&op)
    }

    fn special(&mut self, entry: u32, e: &Entry) -> Result<(), ReceiveError> {
        self.writer.stage_special(entry, e, &mut self.stats.skipped)
    }

    fn stage_chunk(&mut self, entry: u32, c: ChunkRef) -> Result<(), ReceiveError> {
        if self.copied.contains(&entry) {
            self.copied_chunk(entry, c);
            return Ok(());
        }
        let target = Target::Stage {
            entry,
            offset: c.offset,
        };
        if self.resolve(entry, c, target)? {
            self.deferred += 1;
        }
        // A staged file's deferred count must be recorded before any of its
        // chunks land: the window is fetched after its last chunk is named.
        self.flush_after_stage |= std::mem::take(&mut self.window_full);
        Ok(())
    }

    fn stage_end(&mut self, entry: u32, e: &Entry) -> Result<(), ReceiveError> {
        match std::mem::take(&mut self.deferred) {
            0 => self
                .writer
                .finish_stage(entry, e, &mut self.stats.skipped)?,
            n => {
                self.unfinished.insert(entry, (n, e.clone()));
            }
        }
        if std::mem::take(&mut self.flush_after_stage) {
            self.flush_window()?;
        }
        Ok(())
    }

    fn patch_chunk(
        &mut self,
        entry: u32,
        path: &[u8],
        c: ChunkRef,
        pack: u64,
        base: u32,
    ) -> Result<(), ReceiveError> {
        let asked = self.window.wants.len();
        if self.resolve(entry, c, Target::Pack { offset: pack })? && self.opts.precopy {
            self.patches.insert(pack, (entry, c.offset, path.to_vec()));
        }
        // A new want: our file still holds the old bytes of this range.
        if self.window.wants.len() > asked && base > 0 {
            self.window.bases[asked] = Some((path.to_vec(), base));
        }
        if std::mem::take(&mut self.window_full) {
            self.flush_window()?;
        }
        Ok(())
    }
}
