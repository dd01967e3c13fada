//! The round's redo journal and op streams.
//!
//! The journal is append-only: each record is `len (u32 LE) | blake3[..8] |
//! postcard body`. A torn tail (kill -9 mid-append) fails its checksum and is
//! ignored, so the journal always reads back as a clean prefix. Opening for
//! append cuts a torn tail off first: records appended after it (a Commit,
//! say) would otherwise be hidden behind it forever. Records say
//! which chunks are durably stored (after a sync of the filesystem) and,
//! last, that the round is committed: from then on its ops are replayed to
//! completion, whatever happens.
//!
//! Op streams (`ops.*` files) use the same framing; they are written during
//! planning and made durable before the commit record.
//!
//! A journal starts with a `Version` record ([`JOURNAL_VERSION`]); one
//! without it was written before the marker (version 1, the same records)
//! and reads as it is. A journal of a newer version is refused before
//! anything is replayed: its round is finished by the daffe that wrote it.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::chunk::ChunkId;

/// The round journal's format version, its first record. 1: the records
/// below (a journal without the record is version 1 too).
pub const JOURNAL_VERSION: u32 = 1;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "journal {path} has format version {version}, newer than this daffe reads (up to \
         {JOURNAL_VERSION}): finish the interrupted round with the daffe that wrote it (run the \
         same sync or migrate again) before downgrading. Nothing was changed."
    )]
    Newer { path: PathBuf, version: u32 },
    #[error("journal {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("journal {path}: cannot encode: {source}")]
    Encode {
        path: PathBuf,
        source: postcard::Error,
    },
}

/// Where a durably stored chunk sits inside the round dir.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stored {
    /// In staged file `stage/<entry>` at `offset`.
    Stage { entry: u32, offset: u64 },
    /// In the pack at `offset`.
    Pack { offset: u64 },
}

/// Journal records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum JRec {
    /// The round's new manifest.
    Begin { root: ChunkId },
    /// These chunks are durable (written and synced).
    Durable(Vec<(Stored, u32, ChunkId)>),
    /// Ops are durable; apply them.
    Commit,
    /// The journal's format version: the first record of every journal
    /// written since the marker (last variant: postcard numbers variants in
    /// order, so adding it left the others' encoding as it was).
    Version(u32),
}

/// Appends framed records to a file.
pub(crate) struct FramedWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl FramedWriter {
    /// Opens `path` for appending (created if missing; `truncate` empties it).
    pub fn open(path: &Path, truncate: bool) -> Result<FramedWriter, JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let f = OpenOptions::new()
            .create(true)
            .append(!truncate)
            .write(true)
            .truncate(truncate)
            .open(path)
            .map_err(io)?;
        if !truncate {
            let valid = intact_prefix(path)?;
            if f.metadata().map_err(io)?.len() > valid {
                // Appends go to the end whatever the offset (O_APPEND), so
                // cutting the file is all it takes.
                f.set_len(valid).map_err(io)?;
            }
        }
        Ok(FramedWriter {
            out: BufWriter::with_capacity(256 * 1024, f),
            path: path.to_path_buf(),
        })
    }

    /// Appends one record (buffered).
    pub fn push<T: Serialize>(&mut self, rec: &T) -> Result<(), JournalError> {
        let body = postcard::to_stdvec(rec).map_err(|source| JournalError::Encode {
            path: self.path.clone(),
            source,
        })?;
        let sum = blake3::hash(&body);
        let mut head = [0u8; 12];
        let len = u32::try_from(body.len()).map_err(|_| JournalError::Encode {
            path: self.path.clone(),
            source: postcard::Error::SerializeBufferFull,
        })?;
        head[..4].copy_from_slice(&len.to_le_bytes());
        head[4..].copy_from_slice(&sum.as_bytes()[..8]);
        let r = self
            .out
            .write_all(&head)
            .and_then(|_| self.out.write_all(&body));
        r.map_err(|source| JournalError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Flushes, and fsyncs when `durable`.
    pub fn flush(&mut self, durable: bool) -> Result<(), JournalError> {
        #[cfg(feature = "testing")]
        let crash = crate::failpoint::journal_flush();
        #[cfg(feature = "testing")]
        if crash == crate::failpoint::JournalCrash::Torn {
            let half = self.out.buffer()[..self.out.buffer().len() / 2].to_vec();
            let _ = self.out.get_mut().write_all(&half);
            let _ = self.out.get_ref().sync_data();
            std::process::abort();
        }
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        self.out.flush().map_err(io)?;
        if durable {
            self.out
                .get_ref()
                .sync_data()
                .map_err(|source| JournalError::Io {
                    path: self.path.clone(),
                    source,
                })?;
        }
        #[cfg(feature = "testing")]
        if crash == crate::failpoint::JournalCrash::After {
            std::process::abort();
        }
        Ok(())
    }
}

/// Length of the run of intact records at the start of `path` (0 if missing).
fn intact_prefix(path: &Path) -> Result<u64, JournalError> {
    let Some(mut r) = FramedReader::open(path)? else {
        return Ok(0);
    };
    while r.next_frame() {}
    Ok(r.intact)
}

/// Reads framed records up to the first torn or corrupt one.
pub(crate) struct FramedReader {
    inp: BufReader<File>,
    buf: Vec<u8>,
    /// Bytes of the intact records read so far.
    intact: u64,
}

impl FramedReader {
    /// Opens `path`; `None` if it does not exist.
    pub fn open(path: &Path) -> Result<Option<FramedReader>, JournalError> {
        match File::open(path) {
            Ok(f) => Ok(Some(FramedReader {
                inp: BufReader::with_capacity(256 * 1024, f),
                buf: Vec::new(),
                intact: 0,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(JournalError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Reads the next frame into `buf` if it is whole and its checksum holds.
    fn next_frame(&mut self) -> bool {
        let mut head = [0u8; 12];
        if self.inp.read_exact(&mut head).is_err() {
            return false;
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        // A record is at most a few MiB (a Durable batch); a larger length is
        // a torn or corrupt header, not a reason to allocate it.
        if len > 64 << 20 {
            return false;
        }
        self.buf.resize(len as usize, 0);
        if self.inp.read_exact(&mut self.buf).is_err()
            || blake3::hash(&self.buf).as_bytes()[..8] != head[4..]
        {
            return false;
        }
        self.intact += 12 + u64::from(len);
        true
    }

    /// The next intact record; `None` at the end or at a torn tail.
    #[allow(clippy::should_implement_trait)]
    pub fn next<T: DeserializeOwned>(&mut self) -> Option<T> {
        if !self.next_frame() {
            return None;
        }
        postcard::from_bytes(&self.buf).ok()
    }
}

/// What a journal says about its round.
#[derive(Debug, Default)]
pub struct JournalState {
    pub root: Option<ChunkId>,
    pub durable: Vec<(Stored, u32, ChunkId)>,
    pub committed: bool,
}

/// Reads a whole journal.
pub fn read_journal(path: &Path) -> Result<JournalState, JournalError> {
    let mut st = JournalState::default();
    let Some(mut r) = FramedReader::open(path)? else {
        return Ok(st);
    };
    while let Some(rec) = r.next::<JRec>() {
        match rec {
            JRec::Version(version) if version > JOURNAL_VERSION => {
                return Err(JournalError::Newer {
                    path: path.to_path_buf(),
                    version,
                });
            }
            JRec::Version(_) => {}
            JRec::Begin { root } => st.root = Some(root),
            JRec::Durable(v) => st.durable.extend(v),
            JRec::Commit => st.committed = true,
        }
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal as daffe wrote it before the version marker: the same
    /// framing and records, no `Version` record.
    fn unversioned(p: &Path, root: ChunkId) {
        let mut w = FramedWriter::open(p, true).unwrap();
        w.push(&JRec::Begin { root }).unwrap();
        w.push(&JRec::Durable(vec![(Stored::Pack { offset: 0 }, 5, root)]))
            .unwrap();
        w.push(&JRec::Commit).unwrap();
        w.flush(true).unwrap();
    }

    #[test]
    fn records_keep_the_encoding_of_journals_written_before_the_marker() {
        // postcard writes a variant's index first: the marker's variant was
        // added last so these stay what older journals hold.
        let root = ChunkId::of(b"r");
        assert_eq!(postcard::to_stdvec(&JRec::Begin { root }).unwrap()[0], 0);
        assert_eq!(postcard::to_stdvec(&JRec::Durable(vec![])).unwrap(), [1, 0]);
        assert_eq!(postcard::to_stdvec(&JRec::Commit).unwrap(), [2]);
        assert_eq!(postcard::to_stdvec(&JRec::Version(1)).unwrap(), [3, 1]);
    }

    #[test]
    fn a_journal_without_a_version_reads_as_version_1() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j");
        let root = ChunkId::of(b"r");
        unversioned(&p, root);
        let st = read_journal(&p).unwrap();
        assert!(st.committed);
        assert_eq!(st.root, Some(root));
        assert_eq!(st.durable.len(), 1);
    }

    #[test]
    fn a_journal_of_a_newer_version_is_refused_naming_file_and_version() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j");
        let root = ChunkId::of(b"r");
        let mut w = FramedWriter::open(&p, true).unwrap();
        w.push(&JRec::Version(JOURNAL_VERSION + 1)).unwrap();
        w.push(&JRec::Begin { root }).unwrap();
        w.push(&JRec::Commit).unwrap();
        w.flush(true).unwrap();
        let before = std::fs::read(&p).unwrap();
        let e = read_journal(&p).unwrap_err();
        assert!(matches!(e, JournalError::Newer { version: 2, .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        assert!(msg.contains("version 2"), "{msg}");
        assert!(msg.contains("Nothing was changed"), "{msg}");
        assert_eq!(std::fs::read(&p).unwrap(), before);
        // The current version reads.
        let mut w = FramedWriter::open(&p, true).unwrap();
        w.push(&JRec::Version(JOURNAL_VERSION)).unwrap();
        w.push(&JRec::Begin { root }).unwrap();
        w.flush(true).unwrap();
        assert_eq!(read_journal(&p).unwrap().root, Some(root));
    }

    #[test]
    fn torn_tail_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j");
        let mut w = FramedWriter::open(&p, true).unwrap();
        let root = ChunkId::of(b"r");
        w.push(&JRec::Begin { root }).unwrap();
        w.push(&JRec::Durable(vec![(Stored::Pack { offset: 0 }, 5, root)]))
            .unwrap();
        w.push(&JRec::Commit).unwrap();
        w.flush(true).unwrap();
        let full = std::fs::read(&p).unwrap();
        for cut in 0..full.len() {
            std::fs::write(&p, &full[..cut]).unwrap();
            let st = read_journal(&p).unwrap();
            assert!(
                !st.committed || cut == full.len(),
                "commit seen in a torn journal"
            );
        }
        std::fs::write(&p, &full).unwrap();
        let st = read_journal(&p).unwrap();
        assert!(st.committed);
        assert_eq!(st.root, Some(root));
        assert_eq!(st.durable.len(), 1);
    }

    /// Hardening finding 4: a torn tail hid every record appended after it,
    /// Commit included, so a committed round was not replayed after a crash.
    #[test]
    fn finding_04_records_appended_after_a_torn_tail_are_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j");
        let root = ChunkId::of(b"r");
        let mut w = FramedWriter::open(&p, true).unwrap();
        w.push(&JRec::Begin { root }).unwrap();
        w.flush(true).unwrap();
        let intact = std::fs::read(&p).unwrap();
        // Every way of tearing the next record, then a reopen and appends.
        let mut next = Vec::new();
        {
            let q = d.path().join("one");
            let mut w = FramedWriter::open(&q, true).unwrap();
            w.push(&JRec::Durable(vec![(Stored::Pack { offset: 0 }, 5, root)]))
                .unwrap();
            w.flush(true).unwrap();
            next.extend(std::fs::read(&q).unwrap());
        }
        for cut in 1..next.len() {
            let mut torn = intact.clone();
            torn.extend_from_slice(&next[..cut]);
            std::fs::write(&p, &torn).unwrap();
            let mut w = FramedWriter::open(&p, false).unwrap();
            w.push(&JRec::Durable(vec![(Stored::Pack { offset: 8 }, 3, root)]))
                .unwrap();
            w.push(&JRec::Commit).unwrap();
            w.flush(true).unwrap();
            let st = read_journal(&p).unwrap();
            assert!(st.committed, "cut {cut}: the commit is hidden");
            assert_eq!(st.root, Some(root));
            assert_eq!(
                st.durable,
                vec![(Stored::Pack { offset: 8 }, 3, root)],
                "cut {cut}"
            );
        }
    }
}
