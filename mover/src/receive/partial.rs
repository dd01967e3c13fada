//! A partial pre-copy round (see `exec`'s module doc): the source changed
//! under some of the round's wants, and the round keeps everything else.
//!
//! Two things make the destination honest about it before the commit:
//! - the round's manifest is rewritten so each dirty range carries the id of
//!   the bytes the destination will hold there ([`rewrite_manifest`]). The
//!   applied manifest then describes the destination exactly (verify checks
//!   it as usual), and the next round sees those ranges differ from the
//!   source and sends them again; nothing else is sent twice;
//! - the pack offsets of dirty patches are listed in `round/skip`
//!   ([`write_skips`]), durable before the commit record, so that apply (and
//!   any replay after a crash) leaves the previous bytes in those ranges.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

use super::error::{ReceiveError, io_err};
use super::exec::Dirty;
use crate::chunk::ChunkId;
use crate::journal::{FramedReader, FramedWriter};
use crate::manifest::{Item, ManifestReader, ManifestWriter, Record, Trailer};

/// The file in the round dir listing skipped patches.
pub(super) const SKIP_FILE: &str = "skip";

/// Rewrites the manifest at `path` in place (through a temporary file and a
/// rename) with each dirty range's id replaced by what the destination will
/// hold there. Returns the new trailer (its root names the new manifest).
pub(super) fn rewrite_manifest(path: &Path, dirty: &[Dirty]) -> Result<Trailer, ReceiveError> {
    let holds: HashMap<(u32, u64), (u32, ChunkId)> = dirty
        .iter()
        .map(|d| ((d.entry, d.offset), (d.len, d.holds)))
        .collect();
    let tmp = path.with_extension("partial");
    let inp = File::open(path).map_err(io_err(b"manifest"))?;
    let mut r = ManifestReader::new(BufReader::with_capacity(1 << 20, inp))?;
    let header = r.header().clone();
    let out = File::create(&tmp).map_err(io_err(b"manifest"))?;
    let mut w = ManifestWriter::new(BufWriter::with_capacity(1 << 20, out), &header)?;
    let mut entry: Option<u32> = None;
    let mut end: Option<u64> = None;
    while let Some(item) = r.next()? {
        match item {
            Item::Entry(e) => {
                entry = Some(entry.map_or(0, |i| i + 1));
                end = None;
                w.write(&Record::Entry(e))?;
            }
            Item::Chunk(c) => {
                if end != Some(c.offset) {
                    w.write(&Record::Extent { offset: c.offset })?;
                }
                end = Some(c.end());
                let id = match entry.and_then(|i| holds.get(&(i, c.offset))) {
                    Some(&(len, id)) if len == c.len => id,
                    _ => c.id,
                };
                w.write(&Record::Chunk { len: c.len, id })?;
            }
        }
    }
    let (out, trailer) = w.finish()?;
    out.into_inner()
        .map_err(|e| io_err(b"manifest")(e.into_error()))?
        .sync_all()
        .map_err(io_err(b"manifest"))?;
    std::fs::rename(&tmp, path).map_err(io_err(b"manifest"))?;
    Ok(trailer)
}

/// Writes (replacing) the round dir's list of patches to skip; an empty
/// list removes it. Synced: it must be durable before the commit record.
pub(super) fn write_skips(round_dir: &Path, packs: &[u64]) -> Result<(), ReceiveError> {
    let p = round_dir.join(SKIP_FILE);
    if packs.is_empty() {
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err(b"skip")(e));
            }
            _ => return Ok(()),
        }
    }
    let mut w = FramedWriter::open(&p, true)?;
    w.push(&packs.to_vec())?;
    w.flush(true)?;
    Ok(())
}

/// The pack offsets whose patches apply must skip (none when there is no
/// list).
pub(super) fn read_skips(round_dir: &Path) -> Result<HashSet<u64>, ReceiveError> {
    let Some(mut r) = FramedReader::open(&round_dir.join(SKIP_FILE))? else {
        return Ok(HashSet::new());
    };
    let mut out = HashSet::new();
    while let Some(v) = r.next::<Vec<u64>>() {
        out.extend(v);
    }
    Ok(out)
}
