//! Where chunks come from: the [`ChunkSource`] trait the receiver drives, and
//! [`Sender`], the source side (scan + positional chunk reads) that serves it
//! in-process. The network layer implements `ChunkSource` over a connection
//! and runs a `Sender` in its agent.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::fs::Mode;
use serde::{Deserialize, Serialize};

use crate::chunk::ChunkId;
use crate::manifest::{ManifestId, Mode as MMode};
use crate::read_full::{neighbour_runs, reread_full_at};
use crate::regular_file;
use crate::safe_path::Root;
use crate::scan::{self, Scan, ScanError, ScanOptions, ScanStats};

/// One chunk the receiver asks for, by position in the source's manifest:
/// the sender needs only its entry paths, not a hash index. The receiver
/// checks the bytes against `id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Want {
    /// Index of the entry in the manifest (0 = first entry).
    pub entry: u32,
    /// Offset in the entry's data.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
    /// Expected blake3 id.
    pub id: ChunkId,
}

/// Error a sink returns to stop a fetch.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// Receives each wanted chunk: (index in the wants slice, its bytes).
pub type Sink<'a> = dyn FnMut(usize, Arrived<'_>) -> Result<(), SinkError> + 'a;

/// A want's bytes as the source delivered them, and their BLAKE3 id if the
/// source already hashed them. No constructor takes an id: one is only ever
/// computed from these bytes (by [`Arrived::id`], or by [`Sender`]'s reading
/// thread, see [`Sender::hash_while_reading`]), so a receiver that checks
/// `id()` against the want checks the bytes, whichever thread hashed them.
#[derive(Clone, Copy, Debug)]
pub struct Arrived<'a> {
    data: &'a [u8],
    id: Option<ChunkId>,
}

impl<'a> Arrived<'a> {
    /// Bytes not hashed yet.
    pub fn new(data: &'a [u8]) -> Self {
        Arrived { data, id: None }
    }

    /// The bytes.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Their BLAKE3 id (hashed now unless the source already did).
    pub fn id(&self) -> ChunkId {
        self.id.unwrap_or_else(|| ChunkId::of(self.data))
    }
}

impl std::ops::Deref for Arrived<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.data
    }
}

impl<'a> From<&'a [u8]> for Arrived<'a> {
    fn from(data: &'a [u8]) -> Self {
        Arrived::new(data)
    }
}

/// Errors of a chunk source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading the source failed.
    #[error("reading {path:?} for chunk at {offset}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Where in it.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
    /// A want named an entry the manifest does not have.
    #[error("want names entry {0}, which has no data in the manifest")]
    UnknownEntry(u32),
    /// The manifest could not be read or sent.
    #[error("source manifest: {0}")]
    Manifest(io::Error),
    /// The receiver stopped the fetch.
    #[error("receiver stopped the fetch: {0}")]
    Sink(SinkError),
    /// The transport failed.
    #[error("source transport: {0}")]
    Transport(String),
}

/// The receiver's view of a source: it learns the manifest, then asks for
/// the chunks it lacks.
pub trait ChunkSource {
    /// Streams this round's manifest into `out` and returns its root.
    fn manifest(&mut self, out: &mut dyn Write) -> Result<ManifestId, SourceError>;

    /// This round's manifest root, when the source knows it before sending
    /// the manifest. A receiver whose destination is intact at that root
    /// ends the round without asking for the manifest. (Trusting the hint is
    /// safe: a source could as well send the old manifest itself.)
    fn root_hint(&self) -> Option<ManifestId> {
        None
    }

    /// [`ChunkSource::fetch`], given for some wants the receiver's previous
    /// bytes of the same range (`bases[i]`, possibly shorter than the want):
    /// a source across a slow link may send only the blocks that differ.
    /// Every want is still delivered whole, each once, in any order.
    fn fetch_with_bases(
        &mut self,
        wants: &[Want],
        bases: &[Option<Vec<u8>>],
        sink: &mut Sink<'_>,
    ) -> Result<(), SourceError> {
        let _ = bases;
        self.fetch(wants, sink)
    }

    /// Receiver side: streams this round's manifest into `out` like
    /// [`ChunkSource::manifest`], free to save transfer with `base`, a
    /// manifest the receiver holds. `Ok(None)`: this source cannot use a
    /// base and wrote nothing; call `manifest`. The receiver validates what
    /// arrives either way, and asks again whole if a delta rebuilt it wrong.
    fn manifest_since(
        &mut self,
        base: &ManifestBase,
        out: &mut dyn Write,
    ) -> Result<Option<ManifestId>, SourceError> {
        let _ = (base, out);
        Ok(None)
    }

    /// Sending side: writes this round's manifest as a delta (see
    /// `manifest_delta`) against the earlier manifest with root
    /// `base`, if this source still has it. `Ok(None)`: it does not, and
    /// nothing was written.
    fn manifest_delta(
        &mut self,
        base: &ManifestId,
        out: &mut dyn Write,
    ) -> Result<Option<ManifestId>, SourceError> {
        let _ = (base, out);
        Ok(None)
    }

    /// Delivers the bytes of every want to `sink(index, bytes)`, in order.
    /// The receiver verifies them; a source need not.
    fn fetch(&mut self, wants: &[Want], sink: &mut Sink<'_>) -> Result<(), SourceError>;

    /// The files this round's scan copied into the receiver's scan-copy
    /// dir as it hashed them (`ScanOptions::copy_into`), taken once: the
    /// receiver stages each as it is, without asking for its chunks. Only a
    /// [`Sender`] in the receiver's own process has any: the copies are
    /// its own writes, from the buffers its scan hashed. The receiver still
    /// re-reads every staged file against the manifest (its verify).
    fn take_scan_copies(&mut self) -> Vec<scan::ScanCopy> {
        Vec::new()
    }
}

/// A manifest the receiver holds (the one it applied last).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestBase {
    /// The earlier manifest's root.
    pub root: ManifestId,
    /// Where it is.
    pub path: PathBuf,
}

/// Manifests a [`Sender`] keeps after sending them, as delta bases for the
/// receiver's next round (one per recent round: a receiver is normally one
/// round behind, or two after a round that went stale).
const SENT_KEPT: usize = 4;

/// What to sync from: a directory tree or a byte image. Its counterpart at
/// the other end is a [`crate::Destination`] of the same kind.
///
/// ```
/// use mover::{Destination, Source, SyncOptions, sync};
///
/// let t = tempfile::tempdir()?;
/// let img = t.path().join("disk.img");
/// std::fs::write(&img, vec![7u8; 100_000])?;
/// let copy = t.path().join("copy.img");
/// sync(&Source::Image(img), &Destination::Image(copy.clone()), &SyncOptions::default())?;
/// assert_eq!(std::fs::read(copy)?, vec![7u8; 100_000]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// A directory (a `dir` volume).
    Tree(PathBuf),
    /// A regular file or block device (a `block` volume, an image).
    Image(PathBuf),
}

impl Source {
    /// The path.
    pub fn path(&self) -> &Path {
        match self {
            Source::Tree(p) | Source::Image(p) => p,
        }
    }
}

/// The source side: a scanned manifest plus positional reads.
pub struct Sender {
    source: Source,
    scan: Scan,
    root: Option<Root>,
    open: Option<(u32, File)>,
    hash_while_reading: bool,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("source", &self.source)
            .finish()
    }
}

impl Sender {
    /// Scans `source` (using and refreshing the stat cache in `cache_dir`).
    pub fn scan(source: &Source, cache_dir: &Path, opts: ScanOptions) -> Result<Sender, ScanError> {
        let scan = match source {
            Source::Tree(p) => scan::scan_tree(p, cache_dir, opts)?,
            Source::Image(p) => scan::scan_image(p, cache_dir, opts)?,
        };
        let root = match source {
            Source::Tree(p) => Some(Root::open(p).map_err(|e| ScanError::Io {
                path: p.display().to_string(),
                source: io::Error::other(e.to_string()),
            })?),
            Source::Image(_) => None,
        };
        Ok(Sender {
            source: source.clone(),
            scan,
            root,
            open: None,
            hash_while_reading: false,
        })
    }

    /// Has [`ChunkSource::fetch`]'s reading thread also hash what it reads
    /// (each [`Arrived`] then carries its id). For a receiver in the same
    /// process, which checks every chunk against its id: its own thread
    /// hashed and wrote each chunk in turn, and the hash was a third of a
    /// local first transfer's fetch. Off by default: a sender serving the
    /// network has no use for the ids, and its CPU is the application's.
    pub fn hash_while_reading(&mut self, on: bool) {
        self.hash_while_reading = on;
    }

    /// The manifest's root hash.
    pub fn manifest_id(&self) -> ManifestId {
        self.scan.trailer.root
    }

    /// The manifest file.
    pub fn manifest_path(&self) -> &Path {
        &self.scan.manifest
    }

    /// Tree or image.
    pub fn mode(&self) -> MMode {
        self.scan.header.mode
    }

    /// What the scan read.
    pub fn stats(&self) -> &ScanStats {
        &self.scan.stats
    }

    /// Things the scan left out.
    pub fn skipped(&self) -> &[crate::fsmeta::Skip] {
        &self.scan.skipped
    }

    fn sent_dir(&self) -> PathBuf {
        self.scan
            .manifest
            .parent()
            .unwrap_or(Path::new("."))
            .join("sent")
    }

    /// Keeps this round's manifest (a hard link: the scan cache replaces
    /// `last.manifest` by rename) as a delta base for the next round, and
    /// forgets the oldest. Best effort: without it the next manifest
    /// travels whole.
    fn remember_sent(&self) {
        let dir = self.sent_dir();
        let name = dir.join(format!("{}.manifest", self.scan.trailer.root.to_hex()));
        let r = std::fs::create_dir_all(&dir).and_then(|()| {
            match std::fs::hard_link(&self.scan.manifest, &name) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                r => r,
            }
        });
        if let Err(e) = r {
            tracing::warn!("keeping {} as a delta base: {e}", name.display());
            return;
        }
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut kept: Vec<(std::time::SystemTime, PathBuf)> = rd
            .filter_map(|e| {
                let e = e.ok()?;
                Some((e.metadata().ok()?.modified().ok()?, e.path()))
            })
            .collect();
        kept.sort();
        let over = kept.len().saturating_sub(SENT_KEPT);
        for (_, p) in kept.into_iter().take(over) {
            if p != name {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    /// The open file of `entry`, or `None` when it is gone: deleted,
    /// renamed away, or replaced by anything but a regular file (a FIFO or
    /// device node swapped in is never read; the receiver's check then
    /// marks the entry dirty).
    fn file(&mut self, entry: u32) -> Result<Option<&File>, SourceError> {
        if self.open.as_ref().is_none_or(|(e, _)| *e != entry) {
            let path = self
                .scan
                .paths
                .get(entry)
                .ok_or(SourceError::UnknownEntry(entry))?;
            let read_err = |source| SourceError::Read {
                path: String::from_utf8_lossy(path).into_owned(),
                offset: 0,
                source,
            };
            let f = match (&self.root, &self.source) {
                (Some(root), _) => {
                    let fd = match root.open_at(path, regular_file::FLAGS, Mode::empty()) {
                        Ok(fd) => fd,
                        Err(crate::safe_path::SafePathError::Open { source, .. })
                            if gone(&source) =>
                        {
                            return Ok(None);
                        }
                        Err(crate::safe_path::SafePathError::Open { source, .. }) => {
                            return Err(read_err(source));
                        }
                        Err(other) => return Err(read_err(io::Error::other(other.to_string()))),
                    };
                    match regular_file::check(fd, None).map_err(read_err)? {
                        regular_file::Opened::File(fd) => File::from(fd),
                        regular_file::Opened::Changed(what) => {
                            tracing::warn!(
                                "{:?} is now {what}; not read",
                                String::from_utf8_lossy(path)
                            );
                            return Ok(None);
                        }
                    }
                }
                (None, src) => File::open(src.path()).map_err(|source| SourceError::Read {
                    path: src.path().display().to_string(),
                    offset: 0,
                    source,
                })?,
            };
            self.open = Some((entry, f));
        }
        Ok(Some(&self.open.as_ref().expect("set above").1))
    }

    /// Reads the bytes a want names into `buf` (resized to `len`). A file
    /// that shrank gives fewer bytes, and one deleted or renamed away since
    /// the scan gives none: the receiver's check then fails and (in a
    /// pre-copy round) marks the entry dirty instead of failing the round.
    pub fn read_chunk(&mut self, w: &Want, buf: &mut Vec<u8>) -> Result<(), SourceError> {
        buf.resize(w.len as usize, 0);
        let Some(f) = self.file(w.entry)? else {
            buf.clear();
            return Ok(());
        };
        let got = reread_full_at(f, buf, w.offset).map_err(|source| {
            let path = self.scan.paths.get(w.entry).unwrap_or(b"");
            SourceError::Read {
                path: String::from_utf8_lossy(path).into_owned(),
                offset: w.offset,
                source,
            }
        })?;
        buf.truncate(got);
        Ok(())
    }
}

impl ChunkSource for Sender {
    fn take_scan_copies(&mut self) -> Vec<scan::ScanCopy> {
        std::mem::take(&mut self.scan.copies)
    }

    fn manifest(&mut self, out: &mut dyn Write) -> Result<ManifestId, SourceError> {
        let mut f = BufReader::new(File::open(&self.scan.manifest).map_err(SourceError::Manifest)?);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf).map_err(SourceError::Manifest)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(SourceError::Manifest)?;
        }
        self.remember_sent();
        Ok(self.scan.trailer.root)
    }

    fn manifest_delta(
        &mut self,
        base: &ManifestId,
        out: &mut dyn Write,
    ) -> Result<Option<ManifestId>, SourceError> {
        let path = self.sent_dir().join(format!("{}.manifest", base.to_hex()));
        let Ok(b) = File::open(&path) else {
            return Ok(None);
        };
        // Encoded aside first: a damaged base must cost a whole manifest,
        // not a round (nothing reaches `out` until the delta is complete).
        let tmp = self.sent_dir().join("delta.tmp");
        let encoded = File::create(&tmp).and_then(|f| {
            let n = File::open(&self.scan.manifest)?;
            crate::manifest_delta::encode(
                base,
                BufReader::with_capacity(256 * 1024, b),
                BufReader::with_capacity(256 * 1024, n),
                io::BufWriter::with_capacity(256 * 1024, f),
            )
            .map_err(|e| io::Error::other(e.to_string()))
        });
        let st = match encoded {
            Ok(st) => st,
            Err(e) => {
                tracing::warn!(
                    "manifest delta against {}: {e}; sending it whole",
                    path.display()
                );
                let _ = std::fs::remove_file(&tmp);
                return Ok(None);
            }
        };
        let copied = File::open(&tmp).and_then(|mut f| io::copy(&mut f, out));
        let _ = std::fs::remove_file(&tmp);
        copied.map_err(SourceError::Manifest)?;
        tracing::debug!(
            "manifest sent as a delta: {} bytes ({} records copied, {} sent)",
            st.delta_bytes,
            st.copied,
            st.literal_records
        );
        self.remember_sent();
        Ok(Some(self.scan.trailer.root))
    }

    fn root_hint(&self) -> Option<ManifestId> {
        Some(self.scan.trailer.root)
    }

    /// Reads ahead on a second thread: while the receiver hashes and writes
    /// one chunk of a file, the next ones are read (a local round's fetch is
    /// a loop of read, hash, write on one core otherwise). Per run of wants
    /// in one file, so no more than one file is open.
    fn fetch(&mut self, wants: &[Want], sink: &mut Sink<'_>) -> Result<(), SourceError> {
        let mut buf = Vec::new();
        let mut i = 0;
        while i < wants.len() {
            let entry = wants[i].entry;
            let run = wants[i..].iter().take_while(|w| w.entry == entry).count();
            let path =
                String::from_utf8_lossy(self.scan.paths.get(entry).unwrap_or(b"")).into_owned();
            let hash = self.hash_while_reading;
            match self.file(entry)? {
                Some(f) if run >= 2 => {
                    read_ahead(f, &wants[i..i + run], i, hash, &path, sink)?;
                }
                _ => {
                    for (k, w) in wants[i..i + run].iter().enumerate() {
                        self.read_chunk(w, &mut buf)?;
                        sink(i + k, Arrived::new(&buf)).map_err(SourceError::Sink)?;
                    }
                }
            }
            i += run;
        }
        Ok(())
    }
}

/// Reads `wants` (all of file `f`, the first being want `first` of the
/// window) on a scoped thread a few reads ahead of `sink`, which gets them
/// in order, each as [`Sender::read_chunk`] would give it, and hashed there
/// too if `hash`. Wants that follow each other in the file are read
/// together ([`batches`]): a `db-small` file's chunks are 4 KiB on average,
/// and a read, a wake-up of the other thread and a buffer per chunk cost
/// more than the chunk's own hash and write (a 128 MiB file's first
/// transfer: 300 ms of fetch against 190 ms for the same bytes in `db`
/// chunks).
fn read_ahead(
    f: &File,
    wants: &[Want],
    first: usize,
    hash: bool,
    path: &str,
    sink: &mut Sink<'_>,
) -> Result<(), SourceError> {
    let batches = batches(wants);
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<ReadBatch>>(READ_AHEAD);
    let (spare_tx, spare_rx) = std::sync::mpsc::channel::<ReadBatch>();
    // Batches sent and not yet taken by the receiver.
    let queued = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let (todo, queued) = (&batches, &queued);
        s.spawn(move || {
            for &(a, b) in todo {
                let start = wants[a].offset;
                #[allow(
                    clippy::cast_possible_truncation,
                    reason = "at most JOINED_READ or one chunk"
                )]
                let len = (wants[b - 1].offset + u64::from(wants[b - 1].len) - start) as usize;
                let mut read = spare_rx.try_recv().unwrap_or_default();
                read.buf.resize(len, 0);
                let r = reread_full_at(f, &mut read.buf, start).map(|got| {
                    read.buf.truncate(got);
                    read.ids.clear();
                    // Hashed here unless the receiver is idle, waiting for
                    // this batch: it then hashes it while the next is read
                    // (4 KiB chunks hash at a third of the speed of long
                    // ones, and this thread would be the slower of the two).
                    if hash && queued.load(Ordering::Relaxed) > 0 {
                        let parts: Vec<&[u8]> = wants[a..b]
                            .iter()
                            .map(|w| &read.buf[part(&read.buf, start, w)])
                            .collect();
                        crate::chunk::many::ids_of(&parts, &mut read.ids);
                    }
                    read
                });
                let failed = r.is_err();
                queued.fetch_add(1, Ordering::Relaxed);
                // A closed channel: the receiver stopped (its error wins).
                if tx.send(r).is_err() || failed {
                    break;
                }
            }
        });
        // One result per batch, in order, until the first error; each want
        // gets its part (short, or empty, where the file ended early).
        for (r, &(a, b)) in rx.into_iter().zip(&batches) {
            queued.fetch_sub(1, Ordering::Relaxed);
            let read = r.map_err(|source| SourceError::Read {
                path: path.to_owned(),
                offset: wants[a].offset,
                source,
            })?;
            let start = wants[a].offset;
            for (k, w) in wants.iter().enumerate().take(b).skip(a) {
                let arrived = Arrived {
                    data: &read.buf[part(&read.buf, start, w)],
                    // Hashed from these very bytes on the reading thread.
                    id: read.ids.get(k - a).copied(),
                };
                sink(first + k, arrived).map_err(SourceError::Sink)?;
            }
            let _ = spare_tx.send(read);
        }
        Ok(())
    })
}

/// One batch as the reading thread hands it over: the bytes from its first
/// want's offset, and each want's id if it hashed them.
#[derive(Default)]
struct ReadBatch {
    buf: Vec<u8>,
    ids: Vec<ChunkId>,
}

/// Where want `w`'s bytes lie in `buf`, read from file offset `start`
/// (short, or empty, where the file ended early).
fn part(buf: &[u8], start: u64, w: &Want) -> std::ops::Range<usize> {
    #[allow(clippy::cast_possible_truncation, reason = "within the batch")]
    let from = ((w.offset - start) as usize).min(buf.len());
    from..(from + w.len as usize).min(buf.len())
}

/// The wants read together (`[a, b)` ranges of indices): neighbours in the
/// file, up to `read_full::JOINED_READ` bytes (`read_full::neighbour_runs`).
fn batches(wants: &[Want]) -> Vec<(usize, usize)> {
    neighbour_runs(wants, |w| (w.offset, w.len))
        .map(|r| (r.start, r.end))
        .collect()
}

/// Reads a local fetch keeps ahead of the receiver.
const READ_AHEAD: usize = 4;

/// An open error that means the scanned entry is no longer there as a
/// file: deleted, renamed away, or replaced by a symlink or a directory.
fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || matches!(
            e.raw_os_error(),
            Some(c) if c == rustix::io::Errno::LOOP.raw_os_error()
                || c == rustix::io::Errno::ISDIR.raw_os_error()
                || c == rustix::io::Errno::NOTDIR.raw_os_error()
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(offset: u64, len: u32) -> Want {
        Want {
            entry: 0,
            offset,
            len,
            id: ChunkId::of(&offset.to_le_bytes()),
        }
    }

    /// Whichever thread hashed a chunk (the reader, or the receiver when the
    /// reader left it), its id is the hash of the bytes delivered, also
    /// where the file changed after its scan, and short at its end; a sender
    /// not asked to hash leaves every id to the receiver.
    #[test]
    fn ids_hashed_while_reading_name_the_bytes_delivered() {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("img");
        let mut data: Vec<u8> = (0..(1u32 << 20) - 5000)
            .map(|i| (i * 31 / 7).to_le_bytes()[0])
            .collect();
        std::fs::write(&img, &data).unwrap();
        let opts = ScanOptions {
            threads: 1,
            label: String::new(),
            progress: std::sync::Arc::new(crate::progress::NoProgress),
            changes: None,
            copy_into: None,
        };
        let src = Source::Image(img.clone());
        for hash in [true, false] {
            let mut s = Sender::scan(&src, &t.path().join("cache"), opts.clone()).unwrap();
            s.hash_while_reading(hash);
            // Changed after the scan; the last want runs past the end.
            data[300_000..300_100].fill(0xee);
            std::fs::write(&img, &data).unwrap();
            let wants: Vec<Want> = (0..65).map(|i| w(i * 16384, 16384)).collect();
            let mut seen = 0;
            let mut hashed = 0;
            s.fetch(&wants, &mut |i, a| {
                assert_eq!(i, seen, "in order");
                seen += 1;
                let at = usize::try_from(wants[i].offset).unwrap();
                let end = (at + 16384).min(data.len());
                assert!(a.data() == &data[at.min(end)..end], "want {i}'s bytes");
                assert_eq!(a.id(), ChunkId::of(a.data()), "want {i}'s id");
                hashed += usize::from(a.id.is_some());
                // A slow receiver: the reader gets ahead, and hashes.
                std::thread::sleep(std::time::Duration::from_millis(1));
                Ok(())
            })
            .unwrap();
            assert_eq!(seen, 65);
            if hash {
                assert!(hashed > 0, "the reader hashed none");
            } else {
                assert_eq!(hashed, 0, "hashed without being asked");
            }
        }
    }

    #[test]
    fn neighbouring_wants_are_read_together_up_to_the_batch() {
        type Case = (Vec<Want>, Vec<(usize, usize)>);
        let k = 1024u32;
        let cases: Vec<Case> = vec![
            (vec![], vec![]),
            (vec![w(0, 4 * k)], vec![(0, 1)]),
            // Neighbours, then a gap (a chunk the receiver already has).
            (
                vec![w(0, 4 * k), w(4096, 2 * k), w(16384, k)],
                vec![(0, 2), (2, 3)],
            ),
            // A batch stops before it would pass 256 KiB.
            (
                (0..65).map(|i| w(i * 4096, 4 * k)).collect(),
                vec![(0, 64), (64, 65)],
            ),
            // A chunk longer than the batch is read alone.
            (
                vec![w(0, 1024 * k), w(1 << 20, 4 * k)],
                vec![(0, 1), (1, 2)],
            ),
            // Out of file order: never joined.
            (vec![w(4096, 4 * k), w(0, 4 * k)], vec![(0, 1), (1, 2)]),
        ];
        for (wants, want) in cases {
            assert_eq!(batches(&wants), want, "{wants:?}");
        }
    }
}
