//! Scanning a source: walk a tree (sorted, depth-first, pre-order) or open an
//! image, and write its manifest.
//!
//! - Hardlinks: one (dev, ino) map per scan; the first path is the `File`,
//!   later ones are `Hardlink` entries naming it.
//! - Stat cache: an entry whose (dev, ino, size, mtime, ctime) match the last
//!   scan's record (and was not racy) is copied from the last manifest; no
//!   data is read, no xattr is listed.
//! - Chunking runs on worker threads in ordered parallel: big extents are cut
//!   into segments chunked independently and spliced back into the serial
//!   cut sequence ([`SegmentJoin`]), so two cores work on one large file and
//!   the result is identical to a single-threaded scan.
//! - Memory: one pending window of entries and chunk lists; chunk lists are
//!   streamed to the manifest as segments complete, never held per file.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, unbounded};
use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::chunk::{ChunkClass, ChunkId, ChunkRef, SegmentJoin, chunk_segment};
use crate::fsmeta::{self, FileStat, FsMetaError, Skip, StatKind, XTarget};
use crate::manifest::{
    Entry, Header, Kind, ManifestError, ManifestReader, ManifestWriter, Mode as MMode, PathTable,
    Record, Trailer,
};
use crate::progress::{Progress, ProgressSink};
use crate::read_full::{read_full_at, read_full_at_in};
use crate::statcache::{StatCacheError, StatReader, StatRec, StatWriter, now_ns};

/// Segment size for parallel chunking of one extent: large enough that the
/// resync overhead at segment starts (a few chunks) is noise, small enough
/// that two workers' buffers stay a few tens of MiB.
const SEGMENT: u64 = 16 << 20;
/// Extra bytes a worker chunks past its segment end, in class maxima, so its
/// cut sequence meets the next segment's (they almost always meet within a
/// few chunks; when not, the joiner chunks the gap itself).
const LOOKAHEAD_MAXES: u64 = 4;
/// Bytes per read syscall. Far below a segment on purpose: on a cold page
/// cache, `dd` here spends 1.2 s of system time reading 1 GiB in 16 MiB
/// blocks and 0.14 s in 128 KiB ones (small sequential reads ride the
/// kernel's readahead; a huge one waits for its pages, then copies them).
const READ_PIECE: usize = 256 << 10;
/// Chunking jobs in flight. Enough that a 4 GiB file is queued whole and
/// the walk goes on behind it (the cold lstats of the next thousands of
/// entries overlap its hashing), while at most this many files are open.
const IN_FLIGHT: usize = 256;
/// Entries waiting to be written behind a slow one (bounded memory: a few
/// hundred bytes each).
const MAX_PENDING: usize = 65536;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("scanning {path:?}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Meta(#[from] FsMetaError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    StatCache(#[from] StatCacheError),
    #[error("source {0}: not a directory")]
    NotADir(PathBuf),
    #[error("source {0}: not a regular file or block device")]
    NotAnImage(PathBuf),
    #[error("scan worker thread died")]
    Worker,
    /// The last scan's cache is unusable (torn, foreign): the scan is redone
    /// without it.
    #[error("source cache unusable: {0}")]
    Cache(String),
}

fn io_err(path: &[u8]) -> impl FnOnce(std::io::Error) -> ScanError + '_ {
    move |source| ScanError::Io {
        path: String::from_utf8_lossy(path).into_owned(),
        source,
    }
}

/// What the scan read and decided.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanStats {
    /// Entries in the manifest.
    pub entries: u64,
    /// Regular files (and images).
    pub files: u64,
    /// Logical bytes of all files (data plus holes).
    pub bytes_scanned: u64,
    /// Data bytes read and hashed (0 for entries reused from the stat cache).
    pub bytes_hashed: u64,
    /// Entries copied from the last manifest without reading data.
    pub entries_reused: u64,
    /// Sockets left out.
    pub sockets_skipped: u64,
}

/// Scan settings.
#[derive(Clone)]
pub struct ScanOptions {
    /// Worker threads for chunking (>= 1).
    pub threads: usize,
    /// Manifest label.
    pub label: String,
    /// Progress sink.
    pub progress: Arc<dyn ProgressSink>,
}

/// A finished scan: the manifest on disk and what the sender needs to answer
/// positional chunk requests.
#[derive(Debug)]
pub struct Scan {
    /// The manifest file (`CACHE/last.manifest`).
    pub manifest: PathBuf,
    pub header: Header,
    pub trailer: Trailer,
    /// Entry index -> path, for data-carrying entries.
    pub paths: PathTable,
    pub stats: ScanStats,
    pub skipped: Vec<Skip>,
}

/// Names of the cache files in the source's cache dir.
pub const LAST_MANIFEST: &str = "last.manifest";
const LAST_STAT: &str = "last.stat";

struct Job {
    seq: u64,
    part: usize,
    file: Arc<File>,
    seg: u64,
    read_end: u64,
    ext_end: u64,
    class: ChunkClass,
}

struct JobResult {
    seq: u64,
    part: usize,
    chunks: Vec<ChunkRef>,
    read: u64,
    short: bool,
    error: Option<std::io::Error>,
}

struct Part {
    ext: usize,
    list: Option<Vec<ChunkRef>>,
}

enum PState {
    /// No data, or data copied from the last manifest.
    Plain { reuse: bool },
    /// A small file read and hashed inline (one chunk, no worker round trip:
    /// for small files the hand-off costs more than the hashing).
    Ready(Option<ChunkRef>),
    Chunking {
        file: Arc<File>,
        extents: Vec<(u64, u64)>,
        parts: Vec<Part>,
        next_part: usize,
        join: Option<(usize, SegmentJoin)>,
        entry_written: bool,
        last_end: Option<u64>,
        shrunk: bool,
    },
}

struct Pending {
    entry: Entry,
    stat: StatRec,
    state: PState,
}

fn worker(jobs: Receiver<Job>, results: Sender<JobResult>) {
    let mut buf = Vec::new();
    while let Ok(j) = jobs.recv() {
        let want = (j.read_end - j.seg) as usize;
        // Both workers read one file at different offsets through one open
        // file description, which the kernel's sequential readahead takes
        // for random access: ask for the whole segment up front instead.
        let _ = rustix::fs::fadvise(
            &*j.file,
            j.seg,
            std::num::NonZeroU64::new(want as u64),
            rustix::fs::Advice::WillNeed,
        );
        buf.resize(want, 0);
        let (got, error) = match read_full_at_in(&j.file, &mut buf, j.seg, READ_PIECE) {
            Ok(got) => (got, None),
            Err(e) => (0, Some(e)),
        };
        let short = got < want;
        let at_end = j.read_end == j.ext_end || short;
        let chunks = if j.class == ChunkClass::Small {
            // Small files (<= SMALL_MAX) are one chunk per extent.
            let data = &buf[..got];
            if data.is_empty() {
                Vec::new()
            } else {
                vec![ChunkRef {
                    offset: j.seg,
                    len: got as u32,
                    id: ChunkId::of(data),
                }]
            }
        } else {
            chunk_segment(&j.class.chunker(), &buf[..got], j.seg, at_end)
        };
        if results
            .send(JobResult {
                seq: j.seq,
                part: j.part,
                chunks,
                read: got as u64,
                short,
                error,
            })
            .is_err()
        {
            return;
        }
    }
}

/// The last scan's manifest and stat cache, when they pair up.
struct Cache {
    stat: StatReader,
    manifest: ManifestReader<BufReader<File>>,
}

fn open_cache(dir: &Path) -> Option<Cache> {
    let mpath = dir.join(LAST_MANIFEST);
    // The stat cache's footer names the manifest it pairs with; the last
    // manifest is validated as it is read for reuse (root checked at its
    // end). A torn or foreign cache fails that scan, which is then redone
    // without the cache (`scan_tree`/`scan_image`): never a failed sync.
    let root = crate::statcache::footer_root(&dir.join(LAST_STAT))?;
    let stat = StatReader::open(&dir.join(LAST_STAT), &root)?;
    let manifest = ManifestReader::new(BufReader::with_capacity(
        256 * 1024,
        File::open(&mpath).ok()?,
    ))
    .ok()?;
    let mut me = Header::new(manifest.header().mode, "");
    me.label.clone_from(&manifest.header().label);
    if !manifest.header().same_chunking(&me) {
        return None;
    }
    Some(Cache { stat, manifest })
}

struct Scanner {
    opts: ScanOptions,
    start_ns: i128,
    cache: Option<Cache>,
    writer: ManifestWriter<BufWriter<File>>,
    statw: StatWriter,
    paths: PathTable,
    stats: ScanStats,
    skipped: Vec<Skip>,
    queue: VecDeque<Pending>,
    base_seq: u64,
    in_flight: usize,
    jobs: Option<Sender<Job>>,
    results: Receiver<JobResult>,
    threads: Vec<std::thread::JoinHandle<()>>,
    hardlinks: HashMap<(u64, u64), Vec<u8>>,
    entry_index: u32,
}

impl Scanner {
    fn new(
        cache_dir: &Path,
        mode: MMode,
        opts: ScanOptions,
        use_cache: bool,
    ) -> Result<Scanner, ScanError> {
        std::fs::create_dir_all(cache_dir).map_err(io_err(cache_dir.as_os_str().as_bytes()))?;
        let cache = open_cache(cache_dir).filter(|c| use_cache && c.manifest.header().mode == mode);
        let mpath = cache_dir.join("next.manifest");
        let f = File::create(&mpath).map_err(io_err(mpath.as_os_str().as_bytes()))?;
        let writer = ManifestWriter::new(
            BufWriter::with_capacity(1 << 20, f),
            &Header::new(mode, &opts.label),
        )?;
        let statw = StatWriter::create(&cache_dir.join("next.stat"))?;
        let (jtx, jrx) = unbounded::<Job>();
        let (rtx, rrx) = unbounded::<JobResult>();
        let mut threads = Vec::new();
        for _ in 0..opts.threads.max(1) {
            let (jrx, rtx) = (jrx.clone(), rtx.clone());
            threads.push(std::thread::spawn(move || worker(jrx, rtx)));
        }
        Ok(Scanner {
            opts,
            start_ns: now_ns(),
            cache,
            writer,
            statw,
            paths: PathTable::default(),
            stats: ScanStats::default(),
            skipped: Vec::new(),
            queue: VecDeque::new(),
            base_seq: 0,
            in_flight: 0,
            jobs: Some(jtx),
            results: rrx,
            threads,
            hardlinks: HashMap::new(),
            entry_index: 0,
        })
    }

    fn cached(&mut self, path: &[u8], st: &FileStat) -> Result<bool, ScanError> {
        let Some(c) = self.cache.as_mut() else {
            return Ok(false);
        };
        Ok(c.stat.find(path)?.is_some_and(|r| r.unchanged(st)))
    }

    /// Queues one entry. `file` is the open file for data-carrying entries
    /// that must be read.
    fn add(
        &mut self,
        entry: Entry,
        st: &FileStat,
        reuse: bool,
        file: Option<File>,
    ) -> Result<(), ScanError> {
        self.stats.entries += 1;
        if entry.kind.has_data() {
            self.stats.files += 1;
            self.stats.bytes_scanned += entry.size;
        }
        if reuse {
            self.stats.entries_reused += 1;
        }
        let stat = StatRec::new(&entry.path, st, self.start_ns);
        let seq = self.base_seq + self.queue.len() as u64;
        let state = match file {
            Some(f) if !reuse && entry.kind.has_data() => {
                let extents = if st.kind == StatKind::BlockDev
                    || (st.blocks * 512 >= entry.size.next_multiple_of(4096)
                        && entry.size <= crate::chunk::SMALL_MAX)
                {
                    // Dense small files (and devices): skip the two lseeks.
                    if entry.size > 0 {
                        vec![(0, entry.size)]
                    } else {
                        vec![]
                    }
                } else {
                    fsmeta::data_extents(f.as_fd(), entry.size, &entry.path)?
                };
                let class = entry.chunk_class();
                if class == ChunkClass::Small && extents.len() <= 1 {
                    let mut chunk = None;
                    if let Some(&(s0, e0)) = extents.first() {
                        let mut buf = vec![0u8; (e0 - s0) as usize];
                        let got = read_full_at(&f, &mut buf, s0).map_err(io_err(&entry.path))?;
                        self.stats.bytes_hashed += got as u64;
                        if got > 0 {
                            chunk = Some(ChunkRef {
                                offset: s0,
                                len: got as u32,
                                id: ChunkId::of(&buf[..got]),
                            });
                        }
                    }
                    let mut stat = stat;
                    let after = fsmeta::stat_fd(f.as_fd(), &entry.path)?;
                    if after.size != stat.size
                        || after.mtime_ns != stat.mtime_ns
                        || after.ctime_ns != stat.ctime_ns
                    {
                        stat.racy = true;
                    }
                    self.queue.push_back(Pending {
                        entry,
                        stat,
                        state: PState::Ready(chunk),
                    });
                    self.flush()?;
                    return Ok(());
                }
                let file = Arc::new(f);
                let look = LOOKAHEAD_MAXES * u64::from(class.max_len());
                let mut parts = Vec::new();
                let mut jobs = Vec::new();
                for (i, &(s, e)) in extents.iter().enumerate() {
                    let mut seg = s;
                    while seg < e {
                        let seg_end = (seg + SEGMENT).min(e);
                        let read_end = if seg_end == e {
                            e
                        } else {
                            (seg_end + look).min(e)
                        };
                        jobs.push(Job {
                            seq,
                            part: parts.len(),
                            file: file.clone(),
                            seg,
                            read_end,
                            ext_end: e,
                            class,
                        });
                        parts.push(Part { ext: i, list: None });
                        seg = seg_end;
                    }
                }
                let state = PState::Chunking {
                    file,
                    extents,
                    parts,
                    next_part: 0,
                    join: None,
                    entry_written: false,
                    last_end: None,
                    shrunk: false,
                };
                self.queue.push_back(Pending { entry, stat, state });
                for j in jobs {
                    while self.in_flight >= IN_FLIGHT {
                        self.wait_one()?;
                        self.flush()?;
                    }
                    self.in_flight += 1;
                    self.jobs
                        .as_ref()
                        .ok_or(ScanError::Worker)?
                        .send(j)
                        .map_err(|_| ScanError::Worker)?;
                }
                self.flush()?;
                return Ok(());
            }
            _ => PState::Plain { reuse },
        };
        self.queue.push_back(Pending { entry, stat, state });
        self.flush()?;
        while self.queue.len() > MAX_PENDING {
            self.wait_one()?;
            self.flush()?;
        }
        Ok(())
    }

    fn wait_one(&mut self) -> Result<(), ScanError> {
        let r = self.results.recv().map_err(|_| ScanError::Worker)?;
        self.in_flight -= 1;
        self.stats.bytes_hashed += r.read;
        self.opts.progress.event(&Progress::Scanned {
            entries: self.stats.entries,
            bytes_hashed: self.stats.bytes_hashed,
        });
        let idx = (r.seq - self.base_seq) as usize;
        let p = &mut self.queue[idx];
        if let Some(e) = r.error {
            return Err(io_err(&p.entry.path)(e));
        }
        if let PState::Chunking { parts, shrunk, .. } = &mut p.state {
            parts[r.part].list = Some(r.chunks);
            if r.short {
                *shrunk = true;
            }
        }
        Ok(())
    }

    /// Writes every entry at the head of the queue that is ready, and the
    /// ready prefix of a chunking one.
    fn flush(&mut self) -> Result<(), ScanError> {
        while let Some(head) = self.queue.front_mut() {
            let done = match &mut head.state {
                PState::Plain { reuse } => {
                    let reuse = *reuse;
                    let head = self.queue.pop_front().expect("front exists");
                    self.base_seq += 1;
                    self.write_plain(head, reuse)?;
                    continue;
                }
                PState::Ready(chunk) => {
                    let chunk = *chunk;
                    let head = self.queue.pop_front().expect("front exists");
                    self.base_seq += 1;
                    self.writer.write(&Record::Entry(head.entry.clone()))?;
                    let mut last_end = None;
                    if let Some(c) = chunk {
                        write_chunk(&mut self.writer, c, &mut last_end)?;
                    }
                    self.paths.push(self.entry_index, &head.entry.path);
                    self.entry_index += 1;
                    self.statw.push(&head.stat)?;
                    continue;
                }
                PState::Chunking { .. } => advance_chunking(head, &mut self.writer)?,
            };
            if !done {
                return Ok(());
            }
            let mut head = self.queue.pop_front().expect("front exists");
            self.base_seq += 1;
            if let PState::Chunking { file, shrunk, .. } = &head.state {
                // Re-stat after reading: a file that changed while read is
                // marked racy so the next round reads it again.
                let after = fsmeta::stat_fd(file.as_fd(), &head.entry.path)?;
                if *shrunk
                    || after.size != head.stat.size
                    || after.mtime_ns != head.stat.mtime_ns
                    || after.ctime_ns != head.stat.ctime_ns
                {
                    head.stat.racy = true;
                }
            }
            self.paths.push(self.entry_index, &head.entry.path);
            self.entry_index += 1;
            self.statw.push(&head.stat)?;
        }
        Ok(())
    }

    fn write_plain(&mut self, p: Pending, reuse: bool) -> Result<(), ScanError> {
        let idx = self.entry_index;
        self.entry_index += 1;
        if reuse {
            let cache = self.cache.as_mut().expect("reuse implies a cache");
            let bad = |e: ManifestError| ScanError::Cache(e.to_string());
            let old = loop {
                match cache.manifest.next_entry().map_err(bad)? {
                    Some(e) if crate::manifest::path_cmp(&e.path, &p.entry.path).is_lt() => {
                        continue;
                    }
                    other => break other,
                }
            };
            match old {
                Some(old) if old.path == p.entry.path && old.kind == p.entry.kind => {
                    self.writer.write(&Record::Entry(old))?;
                    let mut last_end = None;
                    while let Some(c) = cache.manifest.next_chunk().map_err(bad)? {
                        write_chunk(&mut self.writer, c, &mut last_end)?;
                    }
                }
                _ => {
                    // The stat cache names an entry its manifest lacks.
                    return Err(ScanError::Cache(format!(
                        "{} missing from the last manifest",
                        p.entry.display_path()
                    )));
                }
            }
        } else {
            self.writer.write(&Record::Entry(p.entry.clone()))?;
        }
        if p.entry.kind.has_data() {
            self.paths.push(idx, &p.entry.path);
        }
        self.statw.push(&p.stat)?;
        Ok(())
    }

    fn finish(mut self, cache_dir: &Path) -> Result<Scan, ScanError> {
        while !self.queue.is_empty() {
            self.flush()?;
            if !self.queue.is_empty() {
                self.wait_one()?;
            }
        }
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Read the rest of the last manifest: its root is checked at its end,
        // so what was reused from it is proven intact.
        if let Some(c) = self.cache.as_mut() {
            while c
                .manifest
                .next()
                .map_err(|e| ScanError::Cache(e.to_string()))?
                .is_some()
            {}
        }
        let (_, trailer) = self.writer.finish()?;
        self.statw.finish(&trailer.root, false)?;
        let m = cache_dir.join(LAST_MANIFEST);
        let rn = |a: &str, b: &Path| {
            std::fs::rename(cache_dir.join(a), b).map_err(io_err(b.as_os_str().as_bytes()))
        };
        rn("next.stat", &cache_dir.join(LAST_STAT))?;
        rn("next.manifest", &m)?;
        let header =
            ManifestReader::new(BufReader::new(File::open(&m).map_err(io_err(b"manifest"))?))?
                .header()
                .clone();
        Ok(Scan {
            manifest: m,
            header,
            trailer,
            paths: self.paths,
            stats: self.stats,
            skipped: self.skipped,
        })
    }
}

/// Writes a chunk record, preceded by an extent record when it does not
/// continue the previous chunk.
pub(crate) fn write_chunk<W: std::io::Write>(
    w: &mut ManifestWriter<W>,
    c: ChunkRef,
    last_end: &mut Option<u64>,
) -> Result<(), ManifestError> {
    if *last_end != Some(c.offset) {
        w.write(&Record::Extent { offset: c.offset })?;
    }
    w.write(&Record::Chunk {
        len: c.len,
        id: c.id,
    })?;
    *last_end = Some(c.end());
    Ok(())
}

/// Moves a chunking entry forward; true when all of it is written.
fn advance_chunking(
    p: &mut Pending,
    w: &mut ManifestWriter<BufWriter<File>>,
) -> Result<bool, ScanError> {
    let PState::Chunking {
        file,
        extents,
        parts,
        next_part,
        join,
        entry_written,
        last_end,
        shrunk,
    } = &mut p.state
    else {
        return Ok(true);
    };
    if !*entry_written {
        w.write(&Record::Entry(p.entry.clone()))?;
        *entry_written = true;
    }
    let class = p.entry.chunk_class();
    let chunker = class.chunker();
    let path = p.entry.path.clone();
    let mut buf = Vec::new();
    // Chunks the joiner must cut itself (rare), read straight from the file.
    let mut serial = |at: u64| -> Result<ChunkRef, ScanError> {
        buf.resize(chunker.max(), 0);
        let got = read_full_at(file, &mut buf, at).map_err(io_err(&path))?;
        if got == 0 {
            return Err(ScanError::Io {
                path: String::from_utf8_lossy(&path).into_owned(),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            });
        }
        let n = chunker.cut(&buf[..got]);
        Ok(ChunkRef {
            offset: at,
            len: n as u32,
            id: ChunkId::of(&buf[..n]),
        })
    };
    let mut emit = |c: ChunkRef| -> Result<(), ScanError> { Ok(write_chunk(w, c, last_end)?) };
    while *next_part < parts.len() {
        let Some(list) = parts[*next_part].list.take() else {
            return Ok(false);
        };
        let ext = parts[*next_part].ext;
        if join.as_ref().is_none_or(|(e, _)| *e != ext) {
            if let Some((e, mut j)) = join.take() {
                finish_extent(&mut j, extents[e].1, *shrunk, &mut serial, &mut emit)?;
            }
            *join = Some((ext, SegmentJoin::new(extents[ext].0)));
        }
        let (_, j) = join.as_mut().expect("set above");
        j.push(list, &mut serial, &mut emit)?;
        *next_part += 1;
    }
    if let Some((e, mut j)) = join.take() {
        finish_extent(&mut j, extents[e].1, *shrunk, &mut serial, &mut emit)?;
    }
    Ok(true)
}

fn finish_extent(
    j: &mut SegmentJoin,
    end: u64,
    shrunk: bool,
    serial: &mut dyn FnMut(u64) -> Result<ChunkRef, ScanError>,
    emit: &mut dyn FnMut(ChunkRef) -> Result<(), ScanError>,
) -> Result<(), ScanError> {
    match j.finish(end, serial, emit) {
        // A file that shrank while read keeps what was read; it is marked
        // racy and re-read next round (the receiver's verification catches
        // the mismatch this round).
        Err(ScanError::Io { source, .. })
            if shrunk && source.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            Ok(())
        }
        other => other,
    }
}

fn base_entry(path: Vec<u8>, kind: Kind, st: &FileStat) -> Entry {
    Entry {
        path,
        kind,
        mode: st.perm,
        uid: st.uid,
        gid: st.gid,
        mtime_ns: st.mtime_ns,
        size: 0,
        rdev: 0,
        target: Vec::new(),
        xattrs: Vec::new(),
        class: ChunkClass::Small.code(),
    }
}

fn open_file(dir: std::os::fd::BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    // O_NOATIME keeps a scan from dirtying every inode; only the owner (or
    // root) may ask for it, so fall back without it.
    let base = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(dir, name, base | OFlags::NOATIME, Mode::empty()) {
        Err(rustix::io::Errno::PERM) => rustix::fs::openat(dir, name, base, Mode::empty()),
        r => r,
    }
}

struct Frame {
    fd: Arc<OwnedFd>,
    path: Vec<u8>,
    /// Children, sorted descending so `pop` yields them in order.
    names: Vec<Vec<u8>>,
}

fn list_dir(fd: &OwnedFd, path: &[u8]) -> Result<Vec<Vec<u8>>, ScanError> {
    let mut names = Vec::new();
    let dir = rustix::fs::Dir::read_from(fd).map_err(|e| io_err(path)(e.into()))?;
    for ent in dir {
        let ent = ent.map_err(|e| io_err(path)(e.into()))?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    names.sort_unstable_by(|a, b| b.cmp(a));
    Ok(names)
}

fn join_path(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        return name.to_vec();
    }
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

/// Scans the tree at `root` into `CACHE/last.manifest`, using and refreshing
/// the stat cache in `cache_dir`.
pub fn scan_tree(root: &Path, cache_dir: &Path, opts: ScanOptions) -> Result<Scan, ScanError> {
    match scan_tree_with(root, cache_dir, opts.clone(), true) {
        Err(ScanError::Cache(why)) => {
            tracing::warn!(
                "source cache in {} unusable ({why}); rescanning without it",
                cache_dir.display()
            );
            scan_tree_with(root, cache_dir, opts, false)
        }
        r => r,
    }
}

fn scan_tree_with(
    root: &Path,
    cache_dir: &Path,
    opts: ScanOptions,
    use_cache: bool,
) -> Result<Scan, ScanError> {
    let rootfd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|_| ScanError::NotADir(root.to_path_buf()))?;
    let mut s = Scanner::new(cache_dir, MMode::Tree, opts, use_cache)?;
    let st = fsmeta::stat_fd(rootfd.as_fd(), b"")?;
    let reuse = s.cached(b"", &st)?;
    let mut e = base_entry(Vec::new(), Kind::Dir, &st);
    if !reuse {
        e.xattrs = fsmeta::read_xattrs(XTarget::Fd(rootfd.as_fd()), b"")?;
    }
    s.add(e, &st, reuse, None)?;
    let names = list_dir(&rootfd, b"")?;
    let mut stack = vec![Frame {
        fd: Arc::new(rootfd),
        path: Vec::new(),
        names,
    }];
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.names.pop() else {
            stack.pop();
            continue;
        };
        let dirfd = top.fd.clone();
        let path = join_path(&top.path, &name);
        let oname = OsStr::from_bytes(&name);
        let st = match fsmeta::stat_at(dirfd.as_fd(), oname) {
            Ok(st) => st,
            // Vanished between readdir and lstat: it is simply not there.
            Err(FsMetaError::Sys { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let Some(kind) = st.manifest_kind() else {
            s.stats.sockets_skipped += 1;
            let msg = format!("skipping socket {:?}", String::from_utf8_lossy(&path));
            tracing::warn!("{msg}");
            s.opts.progress.event(&Progress::Warning { message: msg });
            s.skipped.push(Skip {
                path: String::from_utf8_lossy(&path).into_owned(),
                what: "socket".into(),
                reason: "sockets cannot be copied".into(),
            });
            continue;
        };
        // Hardlinks: later names of an inode already seen.
        if kind == Kind::File && st.nlink > 1 {
            if let Some(first) = s.hardlinks.get(&(st.dev, st.ino)) {
                let mut e = base_entry(path, Kind::Hardlink, &st);
                e.target = first.clone();
                // Keep the stat cache cursor moving past this path.
                let _ = s.cached(&e.path, &st)?;
                s.add(e, &st, false, None)?;
                continue;
            }
            s.hardlinks.insert((st.dev, st.ino), path.clone());
        }
        let reuse = s.cached(&path, &st)?;
        let mut e = base_entry(path, kind, &st);
        match kind {
            Kind::Dir => {
                let fd = rustix::fs::openat(
                    dirfd.as_fd(),
                    oname,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|err| io_err(&e.path)(err.into()))?;
                if !reuse {
                    e.xattrs = fsmeta::read_xattrs(XTarget::Fd(fd.as_fd()), &e.path)?;
                }
                let names = list_dir(&fd, &e.path)?;
                let p = e.path.clone();
                s.add(e, &st, reuse, None)?;
                stack.push(Frame {
                    fd: Arc::new(fd),
                    path: p,
                    names,
                });
            }
            Kind::File => {
                e.size = st.size;
                e.class = ChunkClass::for_path(&e.path, st.size).code();
                if reuse {
                    s.add(e, &st, true, None)?;
                } else {
                    let fd = open_file(dirfd.as_fd(), oname)
                        .map_err(|err| io_err(&e.path)(err.into()))?;
                    e.xattrs = fsmeta::read_xattrs(XTarget::Fd(fd.as_fd()), &e.path)?;
                    s.add(e, &st, false, Some(File::from(fd)))?;
                }
            }
            Kind::Symlink => {
                if !reuse {
                    e.target = rustix::fs::readlinkat(dirfd.as_fd(), oname, Vec::new())
                        .map_err(|err| io_err(&e.path)(err.into()))?
                        .into_bytes();
                    e.xattrs = fsmeta::read_xattrs(
                        XTarget::Link {
                            dir: dirfd.as_fd(),
                            name: oname,
                        },
                        &e.path,
                    )?;
                }
                s.add(e, &st, reuse, None)?;
            }
            _ => {
                e.rdev = st.rdev;
                if !reuse {
                    e.xattrs = fsmeta::read_xattrs(
                        XTarget::Link {
                            dir: dirfd.as_fd(),
                            name: oname,
                        },
                        &e.path,
                    )?;
                }
                s.add(e, &st, reuse, None)?;
            }
        }
    }
    s.finish(cache_dir)
}

/// Size of a block device or regular file.
pub fn image_size(f: &File, st: &FileStat) -> std::io::Result<u64> {
    if st.kind == StatKind::BlockDev {
        rustix::fs::seek(f, rustix::fs::SeekFrom::End(0)).map_err(Into::into)
    } else {
        Ok(st.size)
    }
}

/// Scans the image (regular file or block device) at `path`.
pub fn scan_image(path: &Path, cache_dir: &Path, opts: ScanOptions) -> Result<Scan, ScanError> {
    match scan_image_with(path, cache_dir, opts.clone(), true) {
        Err(ScanError::Cache(why)) => {
            tracing::warn!(
                "source cache in {} unusable ({why}); rescanning without it",
                cache_dir.display()
            );
            scan_image_with(path, cache_dir, opts, false)
        }
        r => r,
    }
}

fn scan_image_with(
    path: &Path,
    cache_dir: &Path,
    opts: ScanOptions,
    use_cache: bool,
) -> Result<Scan, ScanError> {
    let f = File::open(path).map_err(io_err(path.as_os_str().as_bytes()))?;
    let st = fsmeta::stat_fd(f.as_fd(), b"")?;
    if !matches!(st.kind, StatKind::File | StatKind::BlockDev) {
        return Err(ScanError::NotAnImage(path.to_path_buf()));
    }
    let mut s = Scanner::new(cache_dir, MMode::Image, opts, use_cache)?;
    let mut st2 = st;
    st2.size = image_size(&f, &st).map_err(io_err(path.as_os_str().as_bytes()))?;
    // A device's timestamps say nothing about its contents: always read it.
    let reuse = st.kind == StatKind::File && s.cached(b"", &st2)?;
    let mut e = base_entry(Vec::new(), Kind::Image, &st2);
    e.size = st2.size;
    e.class = ChunkClass::Db.code();
    s.add(e, &st2, reuse, if reuse { None } else { Some(f) })?;
    s.finish(cache_dir)
}
