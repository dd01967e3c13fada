//! A round's plan, pure: merge-join the applied manifest (with the validity
//! of each applied entry) and the new manifest into apply ops and the chunks
//! the round needs, in manifest order (DESIGN.md, "The round at the
//! receiver", step 4).
//!
//! No I/O of its own. The manifests are read through [`StoredManifest`]
//! (files in a round; bytes in tests), the two facts it needs about the
//! destination beyond validity (a changed directory's names, whether two
//! paths are one inode) through [`DestView`], and every decision goes to a
//! [`PlanSink`]: the executor (which finds each needed chunk locally or asks
//! the source for it, and writes the ops), a dry run's preview, or a test's
//! recorder. So what a round decides can be checked without a filesystem,
//! and what it would do can be shown without doing it.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::io::BufRead;

use serde::Serialize;

use super::error::ReceiveError;
use super::ops::Op;
use crate::chunk::ChunkRef;
use crate::manifest::{self, Entry, Header, Kind, ManifestReader, PathTable, path_cmp};

/// What the validity pass found about the applied entries (by their index
/// in `applied.manifest`).
#[derive(Debug, Default)]
pub(crate) struct Validity {
    /// Still exactly as the last round left it.
    pub(crate) valid: Vec<bool>,
    /// One link (or a directory): may be patched in place.
    pub(crate) single: Vec<bool>,
    /// Paths of the valid data entries: local chunk sources.
    pub(crate) paths: PathTable,
    /// Every entry valid (and the stat cache belongs to the manifest).
    pub(crate) all_valid: bool,
    /// Chunk records in the applied manifest.
    pub(crate) chunks: u64,
    /// Data bytes of the applied manifest: what the destination holds
    /// already (for the free-space check before a round writes).
    pub(crate) data_bytes: u64,
}

/// A manifest the plan reads from its start, and again from an entry's
/// position (to walk one entry's chunks twice without holding them).
pub(super) trait StoredManifest {
    type Reader: BufRead;
    /// From the start (header first).
    fn open(&self) -> Result<Self::Reader, ReceiveError>;
    /// From byte `pos`, an entry record's position.
    fn open_at(&self, pos: u64) -> Result<Self::Reader, ReceiveError>;
}

/// What planning asks of the destination beyond validity.
pub(super) trait DestView {
    /// Names in a destination directory, sorted (none if it cannot be listed).
    fn names(&self, dir: &[u8]) -> Vec<Vec<u8>>;
    /// Whether two destination paths name one inode.
    fn same_inode(&self, a: &[u8], b: &[u8]) -> bool;
}

/// An image destination that is a block device: always patched in place,
/// and it must hold the whole image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Device {
    pub(super) path: String,
    pub(super) size: u64,
}

/// Receives the plan's decisions, in manifest order.
pub(super) trait PlanSink {
    /// An apply op.
    fn op(&mut self, op: Op) -> Result<(), ReceiveError>;
    /// Stage special entry `entry` (symlink, fifo, device node) now; its
    /// `Place` op follows.
    fn special(&mut self, entry: u32, e: &Entry) -> Result<(), ReceiveError>;
    /// Chunk `c` belongs in staged file `entry` at `c.offset`.
    fn stage_chunk(&mut self, entry: u32, c: ChunkRef) -> Result<(), ReceiveError>;
    /// Every chunk of staged file `entry` was named; its `Place` op follows.
    fn stage_end(&mut self, entry: u32, e: &Entry) -> Result<(), ReceiveError>;
    /// Chunk `c` of the file at `path`, patched in place, goes to the pack
    /// at `pack`; the file holds `base` bytes of its previous version of the
    /// same range (a remote source may then send only what differs). Its
    /// `PatchWrite` op follows.
    fn patch_chunk(
        &mut self,
        entry: u32,
        path: &[u8],
        c: ChunkRef,
        pack: u64,
        base: u32,
    ) -> Result<(), ReceiveError>;
    /// What the round does to one path, once it is decided (for a preview).
    fn change(&mut self, c: &Change) {
        let _ = c;
    }
}

/// What a round does to a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Action {
    /// A new path.
    Create,
    /// A path whose entry is written anew (data staged, type changed, or
    /// a link or special file changed).
    Replace,
    /// A file or image rewritten in place where its chunks changed.
    Patch,
    /// Only metadata (mode, owner, times, xattrs) changes, or a directory
    /// changed behind the receiver's back is repaired.
    Metadata,
    /// The path goes away (with everything beneath it).
    Delete,
}

/// One path a round changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// What happens to it.
    pub action: Action,
    /// Its path in the tree (bytes: names need not be UTF-8).
    pub path: Vec<u8>,
    /// The entry's kind (the applied one for a delete). `None`: a name at
    /// the destination that no manifest lists.
    pub kind: Option<Kind>,
    /// Logical size (the applied one for a delete).
    pub size: u64,
    /// Data bytes the round writes for it: chunks not already in place
    /// (some may be copied from the destination's own data, not fetched).
    pub data_bytes: u64,
}

impl Change {
    /// The path for display.
    pub fn display_path(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// What the plan decided, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Counts {
    pub(super) files_staged: u64,
    pub(super) files_patched: u64,
    pub(super) meta_only: u64,
    /// Chunks of patched files already in place.
    pub(super) in_place: u64,
}

/// Everything the plan reads.
pub(super) struct PlanInput<'a, M> {
    /// This round's manifest (validated whole before planning).
    pub(super) new: &'a M,
    /// The applied manifest, if a round was applied.
    pub(super) applied: Option<&'a M>,
    pub(super) validity: &'a Validity,
    pub(super) dest: &'a dyn DestView,
    pub(super) device: Option<Device>,
    /// Pack bytes an interrupted attempt at this same round already holds
    /// (new pack space starts after them).
    pub(super) pack_len: u64,
}

/// Plans the round: every decision goes to `sink`, in manifest order.
pub(super) fn plan<M: StoredManifest>(
    inp: &PlanInput<'_, M>,
    sink: &mut dyn PlanSink,
) -> Result<Counts, ReceiveError> {
    let mut p = Planner {
        inp,
        sink,
        pack_len: inp.pack_len,
        counts: Counts::default(),
    };
    p.walk()?;
    Ok(p.counts)
}

/// The applied entry at the same path as the new one.
struct Old {
    entry: Entry,
    /// Byte position of its record in the applied manifest.
    pos: u64,
    valid: bool,
    single: bool,
}

/// A directory of the new manifest whose children are being walked.
struct OpenDir {
    entry: Entry,
    /// Something inside it changes (its mtime must be set again after).
    touched: bool,
    /// Its own metadata changes, or it changed behind our back.
    changed: bool,
    /// Names found in the destination dir that the new manifest has not
    /// named yet (only for dirs that changed behind our back). Sorted.
    extra: Option<Vec<Vec<u8>>>,
}

struct Planner<'a, 'i, M> {
    inp: &'a PlanInput<'i, M>,
    sink: &'a mut dyn PlanSink,
    pack_len: u64,
    counts: Counts,
}

impl<M: StoredManifest> Planner<'_, '_, M> {
    fn op(&mut self, op: Op) -> Result<(), ReceiveError> {
        self.sink.op(op)
    }

    fn delete(&mut self, path: &[u8]) -> Result<(), ReceiveError> {
        self.op(Op::Delete {
            path: path.to_vec(),
        })
    }

    fn change(&mut self, action: Action, e: &Entry, data_bytes: u64) {
        self.sink.change(&Change {
            action,
            path: e.path.clone(),
            kind: Some(e.kind),
            size: e.size,
            data_bytes,
        });
    }

    /// `e` is written anew: created, or replacing what was at its path.
    fn written(&mut self, e: &Entry, replaces: bool, data_bytes: u64) {
        let action = if replaces {
            Action::Replace
        } else {
            Action::Create
        };
        self.change(action, e, data_bytes);
    }

    /// The merge-join of the applied and the new manifest.
    fn walk(&mut self) -> Result<(), ReceiveError> {
        let validity = self.inp.validity;
        let mut newr = ManifestReader::new(self.inp.new.open()?)?;
        let header = newr.header().clone();
        let mut old = match self.inp.applied {
            Some(m) if !validity.valid.is_empty() => Some(ManifestReader::new(m.open()?)?),
            _ => None,
        };
        let old_header = old.as_ref().map(|o| o.header().clone());
        let mut old_idx = 0u32;
        let mut next_old = |old: &mut Option<ManifestReader<M::Reader>>| -> Result<Option<(u32, Entry, u64)>, ReceiveError> {
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
        let mut changed_files: HashSet<Vec<u8>> = HashSet::new();
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
                let oe = oe.clone();
                self.delete(&oe.path)?;
                self.change(Action::Delete, &oe, 0);
                mark_parent(&mut dirs, &oe.path);
                old_peek = next_old(&mut old)?;
            }
            let same = match &old_peek {
                Some((oi, oe, opos)) if oe.path == e.path => Some(Old {
                    entry: oe.clone(),
                    pos: *opos,
                    valid: validity.valid.get(*oi as usize).copied().unwrap_or(false),
                    single: validity.single.get(*oi as usize).copied().unwrap_or(false),
                }),
                _ => None,
            };
            let replaces = same.is_some();
            let old_is_dir = same.as_ref().is_some_and(|o| o.entry.kind == Kind::Dir);
            match e.kind {
                Kind::Dir => {
                    let (existed, changed, extra) = match &same {
                        Some(o) if old_is_dir => {
                            // A directory changed behind our back may hold
                            // names we never wrote: list it, and delete what
                            // the new manifest does not name when it closes.
                            let extra = (!o.valid).then(|| self.inp.dest.names(&e.path));
                            (true, meta_differs(&o.entry, &e) || !o.valid, extra)
                        }
                        Some(_) => {
                            self.delete(&e.path)?;
                            (false, true, None)
                        }
                        None if e.path.is_empty() => {
                            (true, true, Some(self.inp.dest.names(&e.path)))
                        }
                        None => (false, true, None),
                    };
                    if !existed {
                        self.op(Op::Mkdir {
                            path: e.path.clone(),
                        })?;
                        self.written(&e, replaces, 0);
                    } else if changed {
                        self.change(Action::Metadata, &e, 0);
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
                    let data = DataEntry {
                        index: i,
                        entry: &e,
                        pos: epos,
                        header: &header,
                        old_header: old_header.as_ref(),
                    };
                    if self.plan_data(&data, &mut newr, same.as_ref(), &mut old)? {
                        changed_files.insert(e.path.clone());
                        mark_parent(&mut dirs, &e.path);
                    }
                }
                Kind::Hardlink => {
                    let ok = match &same {
                        Some(o) if o.valid => {
                            o.entry.kind == Kind::Hardlink
                                && o.entry.target == e.target
                                && !changed_files.contains(&e.target)
                                && self.inp.dest.same_inode(&e.path, &e.target)
                        }
                        _ => false,
                    };
                    if !ok {
                        if old_is_dir {
                            self.delete(&e.path)?;
                        }
                        self.op(Op::Link {
                            path: e.path.clone(),
                            target: e.target.clone(),
                        })?;
                        self.written(&e, replaces, 0);
                        mark_parent(&mut dirs, &e.path);
                    }
                }
                Kind::Symlink | Kind::Fifo | Kind::CharDev | Kind::BlockDev => {
                    let keep = match &same {
                        Some(o) if o.valid => {
                            o.entry.kind == e.kind
                                && o.entry.target == e.target
                                && o.entry.rdev == e.rdev
                        }
                        _ => false,
                    };
                    if keep {
                        if let Some(o) = &same
                            && meta_differs(&o.entry, &e)
                        {
                            self.op(Op::Meta { entry: e.clone() })?;
                            self.counts.meta_only += 1;
                            self.change(Action::Metadata, &e, 0);
                        }
                    } else {
                        if old_is_dir {
                            self.delete(&e.path)?;
                        }
                        self.sink.special(i, &e)?;
                        self.op(Op::Place {
                            stage: i,
                            entry: e.clone(),
                        })?;
                        self.written(&e, replaces, 0);
                        mark_parent(&mut dirs, &e.path);
                    }
                }
            }
            if same.is_some() {
                old_peek = next_old(&mut old)?;
            }
        }
        while let Some((_, oe, _)) = old_peek.take() {
            self.delete(&oe.path)?;
            self.change(Action::Delete, &oe, 0);
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

    /// A directory's walk is over: names nobody listed go, and its metadata
    /// is set again if anything in it changed.
    fn close_dir(&mut self, d: OpenDir) -> Result<(), ReceiveError> {
        let mut touched = d.touched;
        for name in d.extra.into_iter().flatten() {
            let mut p = d.entry.path.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(&name);
            self.delete(&p)?;
            self.sink.change(&Change {
                action: Action::Delete,
                path: p,
                kind: None,
                size: 0,
                data_bytes: 0,
            });
            touched = true;
        }
        if touched || d.changed {
            self.op(Op::DirMeta { entry: d.entry })?;
        }
        Ok(())
    }

    /// Plans a data entry (file or image); returns whether its data changes.
    /// Unchanged: nothing, or a `Meta` op. Changed and patchable (a block
    /// device always; a valid single-link file whose changed bytes are under
    /// half its size, or whose size did not change): patch in place.
    /// Anything else: stage anew.
    fn plan_data(
        &mut self,
        d: &DataEntry<'_>,
        newr: &mut ManifestReader<M::Reader>,
        same: Option<&Old>,
        old: &mut Option<ManifestReader<M::Reader>>,
    ) -> Result<bool, ReceiveError> {
        let e = d.entry;
        let old_usable = same.is_some_and(|o| o.valid && o.entry.kind == e.kind);
        let device = self.inp.device.as_ref();
        if let Some(dev) = device
            && dev.size < e.size
        {
            return Err(ReceiveError::DeviceTooSmall {
                path: dev.path.clone(),
                have: dev.size,
                need: e.size,
            });
        }
        if !(old_usable || device.is_some()) {
            if same.is_some_and(|o| o.entry.kind == Kind::Dir) {
                self.delete(&e.path)?;
            }
            self.stage(d.index, e, newr, same.is_some())?;
            self.counts.files_staged += 1;
            return Ok(true);
        }
        // Counting pass: bytes of chunks not already in place at the same
        // offset.
        let mut changed = 0u64;
        let mut identical = true;
        let mut o_iter = old.as_mut().filter(|_| old_usable);
        let next_old = |o: &mut Option<&mut ManifestReader<M::Reader>>| match o.as_mut() {
            Some(r) => r.next_chunk(),
            None => Ok(None),
        };
        let mut oc = next_old(&mut o_iter)?;
        while let Some(c) = newr.next_chunk()? {
            while let Some(o) = oc {
                if o.offset >= c.offset {
                    break;
                }
                oc = next_old(&mut o_iter)?;
                identical = false;
            }
            if oc.is_some_and(|o| o.offset == c.offset && o.id == c.id) {
                oc = next_old(&mut o_iter)?;
            } else {
                changed += u64::from(c.len);
                identical = false;
            }
        }
        if oc.is_some() {
            identical = false;
        }
        let size_same = same.is_some_and(|o| o.entry.size == e.size);
        if identical && size_same && old_usable {
            if let Some(o) = same
                && meta_differs(&o.entry, e)
            {
                self.op(Op::Meta { entry: e.clone() })?;
                self.counts.meta_only += 1;
                self.change(Action::Metadata, e, 0);
            }
            return Ok(false);
        }
        let single = same.is_some_and(|o| o.single);
        // A file rewritten in place (same size: a database's pages) is
        // patched however much of it changed by chunk: its chunks then go
        // as the 4 KiB pages that differ (`super::pages`), not whole. So is
        // one that also grew: a table under updates gets new pages at its
        // end while its old ones are rewritten, and most of its chunks
        // change in a pre-copy round (staged, they all went whole: issue
        // 11, PostgreSQL on a dir volume). Only a file that shrank and
        // changed mostly is staged anew.
        let grew_or_same = same.is_some_and(|o| o.entry.size <= e.size);
        if device.is_some() || (single && (changed * 2 < e.size.max(1) || grew_or_same)) {
            let old_at = same.map(|o| o.pos);
            let old_size = same.filter(|_| old_usable).map(|o| o.entry.size);
            let written = self.patch(d, old_at, old_size)?;
            self.counts.files_patched += 1;
            self.change(Action::Patch, e, written);
            return Ok(true);
        }
        // Stage anew: walk this entry's chunks again.
        let mut r = self.reader_at(self.inp.new, d.header, d.pos)?;
        self.stage(d.index, e, &mut r, same.is_some())?;
        self.counts.files_staged += 1;
        Ok(true)
    }

    /// A reader positioned at the entry record at `pos`, past that record.
    fn reader_at(
        &self,
        m: &M,
        header: &Header,
        pos: u64,
    ) -> Result<ManifestReader<M::Reader>, ReceiveError> {
        let mut r = ManifestReader::resume_at(m.open_at(pos)?, header.clone(), pos);
        r.next_entry()?;
        Ok(r)
    }

    /// Stages file `i`: every chunk goes to `stage/<i>`, then it is placed.
    fn stage(
        &mut self,
        i: u32,
        e: &Entry,
        r: &mut ManifestReader<M::Reader>,
        replaces: bool,
    ) -> Result<(), ReceiveError> {
        let mut bytes = 0u64;
        while let Some(c) = r.next_chunk()? {
            self.sink.stage_chunk(i, c)?;
            bytes += u64::from(c.len);
        }
        self.sink.stage_end(i, e)?;
        self.op(Op::Place {
            stage: i,
            entry: e.clone(),
        })?;
        self.written(e, replaces, bytes);
        Ok(())
    }

    /// Patches a file in place: chunks that differ from the applied version
    /// at the same offset go through the pack; the rest stays. Returns the
    /// bytes it writes.
    fn patch(
        &mut self,
        d: &DataEntry<'_>,
        old_at: Option<u64>,
        old_size: Option<u64>,
    ) -> Result<u64, ReceiveError> {
        let e = d.entry;
        let mut r = self.reader_at(self.inp.new, d.header, d.pos)?;
        let mut o = match (old_at, d.old_header, self.inp.applied) {
            (Some(p), Some(h), Some(m)) => Some(self.reader_at(m, h, p)?),
            _ => None,
        };
        let next_old = |o: &mut Option<ManifestReader<M::Reader>>| match o.as_mut() {
            Some(o) => o.next_chunk(),
            None => Ok(None),
        };
        let mut oc = next_old(&mut o)?;
        let mut holes = Vec::new();
        let mut end = 0u64;
        let mut written = 0u64;
        while let Some(c) = r.next_chunk()? {
            if c.offset > end {
                holes.push((end, c.offset - end));
            }
            end = c.end();
            while let Some(x) = oc {
                if x.offset >= c.offset {
                    break;
                }
                oc = next_old(&mut o)?;
            }
            if oc.is_some_and(|x| x.offset == c.offset && x.id == c.id) {
                self.counts.in_place += 1;
                continue;
            }
            let at = self.pack_len;
            self.pack_len += u64::from(c.len);
            // The file still holds the old bytes of this range.
            let have = old_size.map_or(0, |s| s.saturating_sub(c.offset).min(u64::from(c.len)));
            let base = u32::try_from(have).unwrap_or(c.len);
            self.sink.patch_chunk(d.index, &e.path, c, at, base)?;
            self.op(Op::PatchWrite {
                path: e.path.clone(),
                offset: c.offset,
                len: c.len,
                pack: at,
                id: c.id,
            })?;
            written += u64::from(c.len);
        }
        if e.size > end {
            holes.push((end, e.size - end));
        }
        self.op(Op::PatchEnd {
            entry: e.clone(),
            holes,
        })?;
        Ok(written)
    }
}

/// A data entry of the new manifest being planned.
struct DataEntry<'a> {
    index: u32,
    entry: &'a Entry,
    /// Byte position of its record in the new manifest.
    pos: u64,
    header: &'a Header,
    old_header: Option<&'a Header>,
}

/// Marks the parent of `path` (if open) as having a changed child.
fn mark_parent(dirs: &mut [OpenDir], path: &[u8]) {
    if path.is_empty() {
        return;
    }
    let parent = manifest::parent_of(path);
    if let Some(d) = dirs.iter_mut().rev().find(|d| d.entry.path == parent) {
        d.touched = true;
    }
}

/// `path` is in the new manifest: not an extra name of its parent.
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

#[cfg(test)]
mod tests;
