//! Where a round's data and records go before its commit: staged files
//! (`round/stage/<entry>`), the pack (chunks of files patched in place), the
//! four op streams, and the journal, whose `Durable` records say which
//! chunks survived a crash. A chunk counts as stored only after a
//! checkpoint: `syncfs`, then its `Durable` record, then the journal's fsync.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use rustix::fs::{AtFlags, OFlags};

use super::apply::special_meta;
use super::dest::Dest;
use super::error::{ReceiveError, errno, io_err};
use super::ops::{Op, STREAMS};
use super::writeback::Writeback;
use crate::chunk::{ChunkId, ChunkRef};
use crate::chunk_index::Loc;
use crate::fsmeta::{self, Skip};
use crate::journal::{FramedWriter, JRec, Stored};
use crate::manifest::{Entry, Kind};

/// Staged files kept open at once: chunks arrive in manifest order, so the
/// files being written are the last few named.
const OPEN_STAGE_FILES: usize = 16;
/// `Durable` records per journal record (bounded record size).
const DURABLE_PER_RECORD: usize = 4096;
/// Bytes of neighbouring chunks of one staged file gathered into one write.
/// A first transfer's chunks arrive in file order, and a `db-small` file's
/// average 4 KiB: a `pwrite` each was most of its fetch (a 128 MiB file:
/// 32,000 calls, 120 ms, against 50 ms for the same bytes in 424 calls).
const GATHER: usize = 256 * 1024;

/// Where a chunk is written this round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// Staged file `stage/<entry>` at `offset`.
    Stage { entry: u32, offset: u64 },
    /// The pack at `offset`.
    Pack { offset: u64 },
}

impl Target {
    /// The chunk index's name for the same place.
    pub(super) fn loc(self) -> Loc {
        match self {
            Target::Stage { entry, offset } => Loc::Stage { entry, offset },
            Target::Pack { offset } => Loc::Pack { offset },
        }
    }

    fn stored(self) -> Stored {
        match self {
            Target::Stage { entry, offset } => Stored::Stage { entry, offset },
            Target::Pack { offset } => Stored::Pack { offset },
        }
    }
}

/// The round dir's writers.
pub(super) struct Writer<'a> {
    dest: &'a Dest,
    pack: File,
    stage_files: HashMap<u32, File>,
    /// Chunks written since the last checkpoint.
    durable: Vec<(Stored, u32, ChunkId)>,
    since_checkpoint: u64,
    checkpoint_bytes: u64,
    journal: FramedWriter,
    ops: Vec<FramedWriter>,
    /// Early writeback of what this writer writes (see `writeback`).
    writeback: Writeback,
    /// Bytes for a staged file not written yet (see [`GATHER`]). Every
    /// other use of a staged file or of the journal writes them first.
    gathered: Gathered,
    /// Staged files written before the round began (the source's scan
    /// copies), synced on these handles at the next checkpoint or the
    /// commit: they were opened before the copies' first byte, so they
    /// report any writeback error the state dir's handle, opened later,
    /// might not.
    unsynced: Vec<File>,
}

/// Neighbouring chunks of staged file `entry` from `offset`, gathered.
#[derive(Default)]
struct Gathered {
    entry: u32,
    offset: u64,
    buf: Vec<u8>,
}

impl Gathered {
    /// Whether `data` for `entry` at `offset` continues the gathered bytes
    /// and fits.
    fn takes(&self, entry: u32, offset: u64, data: &[u8]) -> bool {
        !self.buf.is_empty()
            && self.entry == entry
            && self.offset + self.buf.len() as u64 == offset
            && self.buf.len() + data.len() <= GATHER
    }
}

impl<'a> Writer<'a> {
    /// Opens the round dir's pack and journal (both kept: a resumed round
    /// goes on from them) and empty op streams (the plan writes them again).
    pub(super) fn open(dest: &'a Dest, checkpoint_bytes: u64) -> Result<Self, ReceiveError> {
        let rd = dest.round_dir();
        let pack = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(rd.join("pack"))
            .map_err(io_err(b"pack"))?;
        Ok(Writer {
            dest,
            pack,
            stage_files: HashMap::new(),
            durable: Vec::new(),
            since_checkpoint: 0,
            checkpoint_bytes,
            journal: FramedWriter::open(&rd.join("journal"), false)?,
            ops: STREAMS
                .iter()
                .map(|n| FramedWriter::open(&rd.join(n), true))
                .collect::<Result<_, _>>()?,
            writeback: Writeback::start(&dest.state),
            gathered: Gathered::default(),
            unsynced: Vec::new(),
        })
    }

    /// Staged files written before the round began, to be synced with it.
    pub(super) fn sync_with_round(&mut self, files: impl IntoIterator<Item = File>) {
        self.unsynced.extend(files);
    }

    /// Chunk `c` is at `t` already (written before the round began, see
    /// [`Writer::sync_with_round`]): durable, and said so, with the rest.
    pub(super) fn written_before(&mut self, t: Target, c: &ChunkRef) {
        self.durable.push((t.stored(), c.len, c.id));
    }

    /// Appends an op to its stream.
    pub(super) fn op(&mut self, op: &Op) -> Result<(), ReceiveError> {
        Ok(self.ops[op.stream()].push(op)?)
    }

    /// The pack (read back for duplicates of chunks written to it).
    pub(super) fn pack(&self) -> &File {
        &self.pack
    }

    /// Staged file `entry`, opened (created) if needed, with every byte
    /// written to it so far in it (to read back, or to finish).
    pub(super) fn stage_file(&mut self, entry: u32) -> Result<&File, ReceiveError> {
        self.write_gathered()?;
        self.open_stage(entry)
    }

    fn open_stage(&mut self, entry: u32) -> Result<&File, ReceiveError> {
        if !self.stage_files.contains_key(&entry) {
            if self.stage_files.len() >= OPEN_STAGE_FILES
                && let Some(k) = self.stage_files.keys().next().copied()
            {
                self.stage_files.remove(&k);
            }
            let p = self.dest.stage_dir().join(entry.to_string());
            let f = OpenOptions::new()
                .create(true)
                .read(true)
                .write(true)
                .truncate(false)
                .custom_flags(nofollow())
                .open(&p)
                .map_err(io_err(p.as_os_str().as_bytes()))?;
            self.stage_files.insert(entry, f);
        }
        Ok(&self.stage_files[&entry])
    }

    /// Writes a verified chunk at `t`; checkpoints when enough was written.
    pub(super) fn write(
        &mut self,
        t: Target,
        c: &ChunkRef,
        data: &[u8],
    ) -> Result<(), ReceiveError> {
        match t {
            Target::Stage { entry, offset } if self.gathered.takes(entry, offset, data) => {
                self.gathered.buf.extend_from_slice(data);
            }
            Target::Stage { entry, offset } => {
                self.write_gathered()?;
                if data.len() < GATHER {
                    // Opened now, so that an error names this chunk.
                    self.open_stage(entry)?;
                    let g = &mut self.gathered;
                    (g.entry, g.offset) = (entry, offset);
                    g.buf.extend_from_slice(data);
                } else {
                    self.write_stage(entry, offset, data)?;
                }
            }
            Target::Pack { offset } => {
                self.pack
                    .write_all_at(data, offset)
                    .map_err(io_err(b"pack"))?;
                self.writeback.wrote(data.len() as u64, &self.pack);
            }
        }
        self.durable.push((t.stored(), c.len, c.id));
        self.since_checkpoint += data.len() as u64;
        if self.since_checkpoint >= self.checkpoint_bytes {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Writes the gathered bytes, if any, to their staged file.
    fn write_gathered(&mut self) -> Result<(), ReceiveError> {
        if self.gathered.buf.is_empty() {
            return Ok(());
        }
        let (entry, offset) = (self.gathered.entry, self.gathered.offset);
        let mut buf = std::mem::take(&mut self.gathered.buf);
        let r = self.write_stage(entry, offset, &buf);
        buf.clear();
        self.gathered.buf = buf;
        r
    }

    /// Writes `data` into staged file `entry` at `offset`.
    fn write_stage(&mut self, entry: u32, offset: u64, data: &[u8]) -> Result<(), ReceiveError> {
        self.open_stage(entry)?;
        let f = &self.stage_files[&entry];
        f.write_all_at(data, offset).map_err(io_err(b"stage"))?;
        self.writeback.wrote(data.len() as u64, f);
        Ok(())
    }

    /// Writes only `pages` (offset in the chunk, length) of a verified
    /// chunk into the pack at `pack`: a patch whose destination already
    /// holds the rest (see `partial::PAGES_FILE`). No `Durable` record: the
    /// pack does not hold the whole chunk, so a resumed round must not take
    /// it from there (the commit's sync makes the pages durable).
    pub(super) fn write_pages(
        &mut self,
        pack: u64,
        data: &[u8],
        pages: &[(u32, u32)],
    ) -> Result<u64, ReceiveError> {
        let mut n = 0u64;
        for &(off, len) in pages {
            let (a, b) = (off as usize, off as usize + len as usize);
            self.pack
                .write_all_at(&data[a..b], pack + u64::from(off))
                .map_err(io_err(b"pack"))?;
            n += u64::from(len);
        }
        self.since_checkpoint += n;
        self.writeback.wrote(n, &self.pack);
        Ok(n)
    }

    /// A staged file has all its data: set its size (the tail hole) and its
    /// metadata now, on the handle we already hold, so that applying it is
    /// a single rename.
    pub(super) fn finish_stage(
        &mut self,
        i: u32,
        e: &Entry,
        skipped: &mut Vec<Skip>,
    ) -> Result<(), ReceiveError> {
        let f = self.stage_file(i)?;
        rustix::fs::ftruncate(f, e.size).map_err(errno(&e.path))?;
        let f = self.stage_files.remove(&i).expect("opened above");
        fsmeta::apply_fd(f.as_fd(), e, skipped)?;
        Ok(())
    }

    /// Stages a symlink, fifo or device node as `stage/<i>`, metadata set.
    pub(super) fn stage_special(
        &mut self,
        i: u32,
        e: &Entry,
        skipped: &mut Vec<Skip>,
    ) -> Result<(), ReceiveError> {
        let sd = File::open(self.dest.stage_dir()).map_err(io_err(b"stage dir"))?;
        let name = i.to_string();
        let name = OsStr::new(&name);
        let _ = rustix::fs::unlinkat(sd.as_fd(), name, AtFlags::empty());
        match e.kind {
            Kind::Symlink => rustix::fs::symlinkat(OsStr::from_bytes(&e.target), sd.as_fd(), name)
                .map_err(errno(&e.path))?,
            _ => fsmeta::make_special(sd.as_fd(), name, e)?,
        }
        special_meta(sd.as_fd(), name, e, skipped)
    }

    /// Makes everything written so far durable, then says so in the journal.
    pub(super) fn checkpoint(&mut self) -> Result<(), ReceiveError> {
        if self.durable.is_empty() {
            return Ok(());
        }
        self.write_gathered()?;
        sync_data(&mut self.unsynced)?;
        synced(self.dest, self.writeback.check())?;
        let recs = std::mem::take(&mut self.durable);
        for part in recs.chunks(DURABLE_PER_RECORD) {
            self.journal.push(&JRec::Durable(part.to_vec()))?;
        }
        self.journal.flush(true)?;
        self.since_checkpoint = 0;
        Ok(())
    }

    /// The op streams written out; returns the journal and the chunks
    /// written since the last checkpoint. Nothing is synced here: the round
    /// writes a few more files before its commit, and one `syncfs` then
    /// covers them, these streams and this data ([`Finished::commit`]). A
    /// last checkpoint and the commit each had one: a `syncfs` flushes the
    /// whole filesystem, other writers' data too, and in a final round it
    /// is downtime.
    pub(super) fn finish(mut self) -> Result<Finished, ReceiveError> {
        self.write_gathered()?;
        for o in &mut self.ops {
            o.flush(false)?;
        }
        Ok(Finished {
            journal: self.journal,
            durable: self.durable,
            writeback: self.writeback,
            unsynced: self.unsynced,
        })
    }
}

/// A round's writer after the plan: what its commit needs.
pub(super) struct Finished {
    journal: FramedWriter,
    /// Chunks written since the last checkpoint (not yet said durable).
    durable: Vec<(Stored, u32, ChunkId)>,
    writeback: Writeback,
    /// See [`Writer::sync_with_round`].
    unsynced: Vec<File>,
}

impl Finished {
    /// The commit: everything the round dir holds made durable (one
    /// `syncfs`), then the last chunks' `Durable` records and the commit
    /// record in one journal flush.
    pub(super) fn commit(mut self, dest: &Dest) -> Result<(), ReceiveError> {
        // Most of the data went to disk while the round wrote: this waits
        // for the rest and the files written since.
        sync_data(&mut self.unsynced)?;
        synced(dest, self.writeback.finish())?;
        for part in self.durable.chunks(DURABLE_PER_RECORD) {
            self.journal.push(&JRec::Durable(part.to_vec()))?;
        }
        self.journal.push(&JRec::Commit)?;
        self.journal.flush(true)?;
        Ok(())
    }
}

/// Syncs the staged files written before the round began (see
/// [`Writer::sync_with_round`]), each once.
fn sync_data(files: &mut Vec<File>) -> Result<(), ReceiveError> {
    for f in files.drain(..) {
        f.sync_data().map_err(io_err(b"stage"))?;
    }
    Ok(())
}

/// Completes a sync of the state dir's filesystem that `wb` (the writeback,
/// whose handle has seen every writeback error since the round started)
/// did or could not do, and syncs an image destination's own data.
fn synced(dest: &Dest, wb: std::io::Result<bool>) -> Result<(), ReceiveError> {
    match wb {
        Ok(true) => dest.sync_image(),
        Ok(false) => dest.sync_fs(),
        Err(e) => Err(io_err(b"writeback")(e)),
    }
}

/// `O_NOFOLLOW` as `OpenOptionsExt::custom_flags` takes it (a C `int`).
fn nofollow() -> i32 {
    OFlags::NOFOLLOW.bits().cast_signed()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::os::unix::fs::FileExt;

    use proptest::prelude::*;

    use super::*;
    use crate::Destination;

    /// One write of the test: staged file `entry` (of 3), at the end of what
    /// was written to it so far plus `gap` bytes, `len` bytes; then maybe a
    /// read-back of the whole file through `stage_file`, or a checkpoint.
    #[derive(Clone, Debug)]
    struct Step {
        entry: u32,
        gap: u64,
        len: usize,
        then: u8,
    }

    fn step() -> impl Strategy<Value = Step> {
        (
            0u32..3,
            prop_oneof![3 => Just(0u64), 1 => 1u64..9000],
            prop_oneof![4 => 1usize..20_000, 1 => GATHER - 100..GATHER + 100],
            0u8..4,
        )
            .prop_map(|(entry, gap, len, then)| Step {
                entry,
                gap,
                len,
                then,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Gathered or not, every byte written is in its staged file
        /// whenever the file is used (read back, finished) and at every
        /// checkpoint, and where it was written; nothing else is there.
        #[test]
        fn gathered_writes_are_in_the_staged_file_whenever_it_is_used(
            steps in prop::collection::vec(step(), 1..60),
        ) {
            let t = tempfile::tempdir().unwrap();
            let d = Dest::open(&Destination::Tree(t.path().join("dst")), &t.path().join("st"))
                .unwrap();
            std::fs::create_dir_all(d.stage_dir()).unwrap();
            let mut w = Writer::open(&d, u64::MAX).unwrap();
            let mut model: HashMap<u32, Vec<u8>> = HashMap::new();
            let check = |w: &mut Writer<'_>, model: &HashMap<u32, Vec<u8>>, e: u32| {
                let want = model.get(&e).cloned().unwrap_or_default();
                let f = w.stage_file(e).unwrap();
                let mut got = vec![0u8; want.len() + 1];
                let n = f.read_at(&mut got, 0).unwrap();
                got.truncate(n);
                assert_eq!(got.len(), want.len(), "staged file {e}'s length");
                assert!(got == want, "staged file {e}'s bytes");
            };
            // Each staged file as read by path, after `when`.
            let on_disk = |model: &HashMap<u32, Vec<u8>>, when: &str| {
                for e in 0..3 {
                    let got = std::fs::read(d.stage_dir().join(e.to_string())).unwrap_or_default();
                    let want = model.get(&e).map_or(&[][..], |m| &m[..]);
                    assert!(got == want, "staged file {e} after {when}");
                }
            };
            for (i, s) in steps.iter().enumerate() {
                let m = model.entry(s.entry).or_default();
                let offset = m.len() as u64 + s.gap;
                let data: Vec<u8> = (0..s.len).map(|k| (k * 7 + i * 13).to_le_bytes()[0]).collect();
                m.resize(usize::try_from(offset).unwrap(), 0);
                m.extend_from_slice(&data);
                let c = ChunkRef {
                    offset,
                    len: u32::try_from(s.len).unwrap(),
                    id: ChunkId::of(&data),
                };
                w.write(Target::Stage { entry: s.entry, offset }, &c, &data).unwrap();
                match s.then {
                    0 => check(&mut w, &model, s.entry),
                    1 => {
                        w.checkpoint().unwrap();
                        on_disk(&model, "a checkpoint");
                    }
                    _ => {}
                }
            }
            let _ = w.finish().unwrap();
            on_disk(&model, "the writer finished");
        }
    }
}
