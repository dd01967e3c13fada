//! The stat cache: one (path, dev, ino, size, mtime, ctime, racy) record per
//! entry, in manifest order, paired with the manifest it describes.
//!
//! The source keeps one beside its last manifest so an unchanged file is
//! not read again; the destination keeps one beside `applied.manifest` so a
//! file changed behind our back is noticed. Both are streamed (merge-joined in
//! manifest order), so memory does not grow with the tree.
//!
//! File layout: length-prefixed postcard records, then a fixed 40-byte footer
//! (the paired manifest's root, then the magic). The footer is read first, so
//! a cache that does not belong to the manifest at hand is never used.

use std::cmp::Ordering;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkId;
use crate::fsmeta::FileStat;
use crate::manifest::path_cmp;

const FOOTER_MAGIC: [u8; 8] = *b"DAFFEST1";

/// A file touched within this margin of the scan start is "racy": its
/// timestamps cannot prove it unchanged, because a later write in the same
/// clock tick leaves them equal. 2 s covers coarse filesystem clocks (and
/// FAT's 2 s mtime) with room to spare.
pub const RACY_MARGIN_NS: i128 = 2_000_000_000;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum StatCacheError {
    #[error("stat cache {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("stat cache {path}: bad record: {source}")]
    Decode {
        path: String,
        source: postcard::Error,
    },
}

/// One entry's identity and change markers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatRec {
    pub path: Vec<u8>,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    /// Timestamps too close to the scan to be trusted: re-read next time.
    pub racy: bool,
}

impl StatRec {
    /// A record for `path` from a stat taken during a scan that started at
    /// `scan_start_ns` (wall clock).
    pub fn new(path: &[u8], st: &FileStat, scan_start_ns: i128) -> StatRec {
        StatRec {
            path: path.to_vec(),
            dev: st.dev,
            ino: st.ino,
            size: st.size,
            mtime_ns: st.mtime_ns,
            ctime_ns: st.ctime_ns,
            racy: st.mtime_ns >= scan_start_ns - RACY_MARGIN_NS
                || st.ctime_ns >= scan_start_ns - RACY_MARGIN_NS,
        }
    }

    /// Whether `st` proves the object unchanged since this record was taken.
    pub fn unchanged(&self, st: &FileStat) -> bool {
        !self.racy
            && self.dev == st.dev
            && self.ino == st.ino
            && self.size == st.size
            && self.mtime_ns == st.mtime_ns
            && self.ctime_ns == st.ctime_ns
    }
}

/// Wall-clock now in ns.
pub fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}

/// Opens a stat cache and reads its 40-byte footer (root, magic); also
/// returns the file's length. None if missing or too short.
fn open_with_footer(path: &Path) -> Option<(File, u64, [u8; 40])> {
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    if len < 40 {
        return None;
    }
    f.seek(SeekFrom::Start(len - 40)).ok()?;
    let mut footer = [0u8; 40];
    f.read_exact(&mut footer).ok()?;
    Some((f, len, footer))
}

/// The manifest root named in a stat cache's footer.
pub fn footer_root(path: &Path) -> Option<ChunkId> {
    let (_, _, footer) = open_with_footer(path)?;
    if footer[32..] != FOOTER_MAGIC {
        return None;
    }
    let mut root = [0u8; 32];
    root.copy_from_slice(&footer[..32]);
    Some(ChunkId(root))
}

/// Streams records to a file; [`finish`](Self::finish) writes the footer.
pub struct StatWriter {
    out: BufWriter<File>,
    path: String,
    buf: Vec<u8>,
}

impl StatWriter {
    /// Creates (truncates) `path`.
    pub fn create(path: &Path) -> Result<StatWriter, StatCacheError> {
        let p = path.display().to_string();
        let f = File::create(path).map_err(|source| StatCacheError::Io {
            path: p.clone(),
            source,
        })?;
        Ok(StatWriter {
            out: BufWriter::with_capacity(256 * 1024, f),
            path: p,
            buf: Vec::new(),
        })
    }

    fn io(&self) -> impl FnOnce(io::Error) -> StatCacheError + '_ {
        move |source| StatCacheError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends a record (records must come in manifest order).
    pub fn push(&mut self, rec: &StatRec) -> Result<(), StatCacheError> {
        let body = postcard::to_stdvec(rec).map_err(|source| StatCacheError::Decode {
            path: self.path.clone(),
            source,
        })?;
        self.buf.clear();
        let mut v = body.len() as u64;
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.buf.push(b);
                break;
            }
            self.buf.push(b | 0x80);
        }
        self.buf.extend_from_slice(&body);
        let r = self.out.write_all(&self.buf);
        r.map_err(self.io())
    }

    /// Writes the footer pairing this cache with `root`; fsyncs when
    /// `durable` (the destination's cache; the source's is only a hint).
    pub fn finish(mut self, root: &ChunkId, durable: bool) -> Result<(), StatCacheError> {
        let mut footer = [0u8; 40];
        footer[..32].copy_from_slice(&root.0);
        footer[32..].copy_from_slice(&FOOTER_MAGIC);
        let r = self.out.write_all(&footer).and_then(|_| self.out.flush());
        r.map_err(self.io())?;
        if durable {
            let r = self.out.get_ref().sync_all();
            r.map_err(self.io())?;
        }
        Ok(())
    }
}

/// Reads records in order; [`find`](Self::find) merge-joins by path.
pub struct StatReader {
    inp: io::Take<BufReader<File>>,
    path: String,
    buf: Vec<u8>,
    peeked: Option<StatRec>,
    done: bool,
}

impl StatReader {
    /// Opens `path` if it exists and belongs to the manifest `root`; `None`
    /// otherwise (a missing or foreign cache just means no reuse).
    pub fn open(path: &Path, root: &ChunkId) -> Option<StatReader> {
        let (mut f, len, footer) = open_with_footer(path)?;
        if footer[32..] != FOOTER_MAGIC || footer[..32] != root.0 {
            return None;
        }
        f.seek(SeekFrom::Start(0)).ok()?;
        Some(StatReader {
            inp: BufReader::with_capacity(256 * 1024, f).take(len - 40),
            path: path.display().to_string(),
            buf: Vec::new(),
            peeked: None,
            done: false,
        })
    }

    fn read(&mut self) -> Result<Option<StatRec>, StatCacheError> {
        if self.done {
            return Ok(None);
        }
        let io = |source| StatCacheError::Io {
            path: self.path.clone(),
            source,
        };
        let mut len = 0u64;
        let mut shift = 0;
        loop {
            let avail = self.inp.fill_buf().map_err(io)?;
            if avail.is_empty() {
                if shift == 0 {
                    self.done = true;
                    return Ok(None);
                }
                return Err(StatCacheError::Io {
                    path: self.path.clone(),
                    source: io::ErrorKind::UnexpectedEof.into(),
                });
            }
            let b = avail[0];
            self.inp.consume(1);
            len |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 || shift > 63 {
                break;
            }
        }
        // A record cannot be longer than what is left of the file: checked
        // before allocating, so a corrupt length costs an error, not our
        // memory (hardening: the fuzzer's stat_cache target found the
        // unbounded allocation).
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| n as u64 <= self.inp.limit())
            .ok_or_else(|| StatCacheError::Io {
                path: self.path.clone(),
                source: io::ErrorKind::InvalidData.into(),
            })?;
        self.buf.resize(len, 0);
        self.inp
            .read_exact(&mut self.buf)
            .map_err(|source| StatCacheError::Io {
                path: self.path.clone(),
                source,
            })?;
        postcard::from_bytes(&self.buf)
            .map(Some)
            .map_err(|source| StatCacheError::Decode {
                path: self.path.clone(),
                source,
            })
    }

    /// The record for `path`, skipping records before it. Calls must come
    /// with non-decreasing paths (manifest order).
    pub fn find(&mut self, path: &[u8]) -> Result<Option<StatRec>, StatCacheError> {
        loop {
            if self.peeked.is_none() {
                self.peeked = self.read()?;
            }
            let Some(rec) = &self.peeked else {
                return Ok(None);
            };
            match path_cmp(&rec.path, path) {
                Ordering::Less => self.peeked = None,
                Ordering::Equal => return Ok(self.peeked.take()),
                Ordering::Greater => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(p: &[u8], size: u64) -> StatRec {
        StatRec {
            path: p.to_vec(),
            dev: 1,
            ino: size,
            size,
            mtime_ns: 5,
            ctime_ns: 6,
            racy: false,
        }
    }

    #[test]
    fn merge_join_and_pairing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        let mut w = StatWriter::create(&p).unwrap();
        for (path, size) in [(&b""[..], 0), (b"a", 1), (b"a/x", 2), (b"b", 3)] {
            w.push(&rec(path, size)).unwrap();
        }
        let root = ChunkId::of(b"m");
        w.finish(&root, true).unwrap();
        assert!(StatReader::open(&p, &ChunkId::of(b"other")).is_none());
        let mut r = StatReader::open(&p, &root).unwrap();
        assert_eq!(r.find(b"").unwrap().unwrap().size, 0);
        assert!(r.find(b"a-missing").unwrap().is_none());
        assert_eq!(r.find(b"b").unwrap().unwrap().size, 3);
        assert!(r.find(b"c").unwrap().is_none());
    }

    /// Hardening (fuzzing): a record length past the end of the file (a
    /// corrupt cache) made the reader allocate it, up to 2^63 bytes: an
    /// abort or an OOM kill of the scan instead of "no reuse".
    #[test]
    fn fuzz_record_length_past_the_file_is_an_error_not_an_allocation() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        let mut w = StatWriter::create(&p).unwrap();
        w.push(&rec(b"a", 1)).unwrap();
        let root = ChunkId::of(b"m");
        w.finish(&root, false).unwrap();
        // Splice a record whose length says 2^62 bytes before the footer.
        let mut bytes = std::fs::read(&p).unwrap();
        let footer = bytes.split_off(bytes.len() - 40);
        bytes.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
        bytes.extend_from_slice(b"short");
        bytes.extend_from_slice(&footer);
        std::fs::write(&p, &bytes).unwrap();
        let mut r = StatReader::open(&p, &root).unwrap();
        assert_eq!(r.find(b"a").unwrap().unwrap().size, 1);
        assert!(matches!(r.find(b"b"), Err(StatCacheError::Io { .. })));
    }
}
