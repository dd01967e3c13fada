//! The manifest being built: entries wait in an ordered queue while their
//! data is chunked on worker threads (large extents in segments, spliced
//! back into the serial cut sequence), entries the stat cache vouches for
//! are copied from the last manifest, and everything is written in manifest
//! order to the manifest and the new stat cache.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, unbounded};

use crate::chunk::{ChunkClass, ChunkId, ChunkRef, SegmentJoin, chunk_segment};
use crate::fsmeta::{self, FileStat, Skip, StatKind};
use crate::manifest::{
    Entry, Header, ManifestError, ManifestReader, ManifestWriter, Mode as MMode, PathTable, Record,
};
use crate::progress::Progress;
use crate::read_full::{read_full_at, read_full_at_in, will_need};
use crate::statcache::{StatReader, StatRec, StatWriter, now_ns};
use crate::thread_times::{self, CpuTally};

use super::class;
use super::copy::{COPY_MIN, Copying, ScanCopy};
use super::options::{LAST_MANIFEST, LAST_STAT, Scan, ScanError, ScanOptions, ScanStats, io_err};

/// Segment size for parallel chunking of one extent: large enough that the
/// resync overhead at segment starts (a few chunks) is noise, small enough
/// that two workers' buffers stay a few tens of MiB.
const SEGMENT: u64 = 16 << 20;
/// Extra bytes a worker reads past its segment end, in class maxima: enough
/// to finish the chunk that straddles the end and the one after it, the
/// last it keeps (`chunk_segment`). The next segment's list almost always
/// has a cut where one of them ends; when not, the joiner chunks the gap
/// itself.
const LOOKAHEAD_MAXES: u64 = 2;
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

struct Job {
    seq: u64,
    part: usize,
    file: Arc<File>,
    seg: u64,
    /// The segment's end: chunks starting from here on are the next
    /// segment's.
    seg_end: u64,
    read_end: u64,
    ext_end: u64,
    class: ChunkClass,
    /// Where the segment's bytes are copied as they are read (`super::copy`).
    copy: Option<Arc<Copying>>,
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
    /// A file written only in these ranges since the last scan (tracked),
    /// or rewritten in place with no tracker to say where (`guessed`: the
    /// whole file re-read at its last chunks' boundaries): written from the
    /// last manifest's chunks when it reaches the head.
    Patched {
        file: File,
        dirty: Vec<(u64, u64)>,
        guessed: bool,
    },
    Chunking {
        file: Arc<File>,
        extents: Vec<(u64, u64)>,
        parts: Vec<Part>,
        next_part: usize,
        join: Option<(usize, SegmentJoin)>,
        entry_written: bool,
        last_end: Option<u64>,
        shrunk: bool,
        /// The copy being written as the file is read (`super::copy`).
        copy: Option<Arc<Copying>>,
    },
}

struct Pending {
    entry: Entry,
    stat: StatRec,
    state: PState,
}

/// A chunking worker: its jobs, then its CPU times into the scan's tally.
fn worker(jobs: Receiver<Job>, results: Sender<JobResult>, cpu: &CpuTally) {
    let start = thread_times::this_thread();
    worker_jobs(jobs, results);
    cpu.add_since(start);
}

#[allow(
    clippy::cast_possible_truncation,
    reason = "a job reads one segment plus lookahead (tens of MiB); a small file's extent is at most SMALL_MAX"
)]
fn worker_jobs(jobs: Receiver<Job>, results: Sender<JobResult>) {
    let mut buf = Vec::new();
    while let Ok(j) = jobs.recv() {
        let want = (j.read_end - j.seg) as usize;
        // Both workers read one file at different offsets through one open
        // file description, which the kernel's sequential readahead takes
        // for random access: ask for the whole segment up front instead.
        // And for the next one, unless a cap paces the reads: the disk
        // reads it while this one is hashed. Workers take segments in
        // order, so the disk stays a segment ahead of the hashing instead
        // of idling while every worker hashes (a first transfer's cold
        // 1 GiB: the scan took 1.5-1.8 s, 1.0 s reading ahead; `cat` reads
        // the file in 0.74-0.79 s).
        let ahead = if crate::read_full::capped() {
            0
        } else {
            SEGMENT
        };
        will_need(&j.file, j.seg, (want as u64 + ahead).min(j.ext_end - j.seg));
        buf.resize(want, 0);
        let (got, error) = match read_full_at_in(&j.file, &mut buf, j.seg, READ_PIECE) {
            Ok(got) => (got, None),
            Err(e) => (0, Some(e)),
        };
        let short = got < want;
        let at_end = j.read_end == j.ext_end || short;
        if let Some(c) = &j.copy {
            // The segment only: its lookahead is the next segment's to copy.
            let seg_len = usize::try_from(j.seg_end - j.seg).unwrap_or(usize::MAX);
            c.write(&buf[..got.min(seg_len)], j.seg);
        }
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
            let keep = if at_end { u64::MAX } else { j.seg_end };
            chunk_segment(&j.class.chunker(), &buf[..got], j.seg, at_end, keep)
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

/// What [`Scanner::file_class`] chose for a regular file.
pub(super) struct ClassPick {
    pub(super) class: ChunkClass,
    /// Cut as pages for the first time: its last chunks were cut in another
    /// class (the walk may still patch them, `class::switch_to_pages`).
    pub(super) newly_paged: bool,
}

pub(super) struct Scanner {
    opts: ScanOptions,
    start_ns: i128,
    cache: Option<Cache>,
    /// Paths the last scan chunked as pages for their write pattern, and
    /// this scan's list (`super::class`).
    paged_prev: HashSet<Vec<u8>>,
    paged_next: Vec<Vec<u8>>,
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
    entry_index: u32,
    /// The process's read-cap waits when the scan began
    /// (`crate::read_full::paced`).
    paced0: std::time::Duration,
    /// The scan's threads' CPU times ([`ScanStats::cpu`]): the workers add
    /// theirs as they end, the scanning thread its own from `cpu0` at the
    /// end of [`finish`](Self::finish).
    cpu: Arc<CpuTally>,
    cpu0: Option<(u64, u64)>,
    /// The copies of files read unchanged ([`ScanOptions::copy_into`]).
    copies: Vec<ScanCopy>,
}

impl Scanner {
    pub(super) fn new(
        cache_dir: &Path,
        mode: MMode,
        opts: ScanOptions,
        use_cache: bool,
    ) -> Result<Scanner, ScanError> {
        std::fs::create_dir_all(cache_dir).map_err(io_err(cache_dir.as_os_str().as_bytes()))?;
        let cache = open_cache(cache_dir).filter(|c| use_cache && c.manifest.header().mode == mode);
        let paged_prev = class::load_paged(cache_dir);
        let mpath = cache_dir.join("next.manifest");
        let f = File::create(&mpath).map_err(io_err(mpath.as_os_str().as_bytes()))?;
        let writer = ManifestWriter::new(
            BufWriter::with_capacity(1 << 20, f),
            &Header::new(mode, &opts.label),
        )?;
        let statw = StatWriter::create(&cache_dir.join("next.stat"))?;
        if let Some(dir) = &opts.copy_into {
            std::fs::create_dir_all(dir).map_err(io_err(dir.as_os_str().as_bytes()))?;
        }
        let (jtx, jrx) = unbounded::<Job>();
        let (rtx, rrx) = unbounded::<JobResult>();
        let cpu = Arc::new(CpuTally::default());
        let mut threads = Vec::new();
        // A worker that copies (`super::copy`) also waits in its writes
        // (the copy's inode lock, page allocation): one more worker than
        // asked keeps reads in flight meanwhile. A 1 GiB first transfer
        // with 2 cores: scan 1.1-2.1 s with 2 workers, 0.70-0.76 s with 3
        // (0.62-0.70 s without copies, where a third did not help).
        let workers = opts.threads.max(1) + usize::from(opts.copy_into.is_some());
        for _ in 0..workers {
            let (jrx, rtx, cpu) = (jrx.clone(), rtx.clone(), cpu.clone());
            threads.push(std::thread::spawn(move || worker(jrx, rtx, &cpu)));
        }
        Ok(Scanner {
            cpu,
            cpu0: thread_times::this_thread(),
            paced0: crate::read_full::paced(),
            opts,
            start_ns: now_ns(),
            cache,
            paged_prev,
            paged_next: Vec::new(),
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
            entry_index: 0,
            copies: Vec::new(),
        })
    }

    /// A socket is left out (reported, not an error).
    pub(super) fn skip_socket(&mut self, path: &[u8]) {
        self.stats.sockets_skipped += 1;
        let msg = format!("skipping socket {:?}", String::from_utf8_lossy(path));
        self.skip(path, msg, "socket", "sockets cannot be copied".into());
    }

    /// A regular file replaced by something else between its lstat and its
    /// open is left out of this round (reported, not read): the next round
    /// sees whatever is there then.
    pub(super) fn skip_changed(&mut self, path: &[u8], what: &str) {
        let msg = format!(
            "skipping {:?}: replaced by {what} while scanning",
            String::from_utf8_lossy(path)
        );
        let reason = format!("replaced by {what} while scanning; not read");
        self.skip(path, msg, "changed", reason);
    }

    /// Logs and reports `msg`, and lists `path` among the skipped entries.
    fn skip(&mut self, path: &[u8], msg: String, what: &str, reason: String) {
        tracing::warn!("{msg}");
        self.opts
            .progress
            .event(&Progress::Warning { message: msg });
        self.skipped.push(Skip {
            path: String::from_utf8_lossy(path).into_owned(),
            what: what.into(),
            reason,
        });
    }

    pub(super) fn cached(&mut self, path: &[u8], st: &FileStat) -> Result<bool, ScanError> {
        Ok(self.lookup(path, st)?.0)
    }

    /// Whether the last scan's record proves the entry unchanged (reuse it),
    /// and that record.
    pub(super) fn lookup(
        &mut self,
        path: &[u8],
        st: &FileStat,
    ) -> Result<(bool, Option<StatRec>), ScanError> {
        let Some(c) = self.cache.as_mut() else {
            return Ok((false, None));
        };
        let rec = c.stat.find(path)?;
        Ok((rec.as_ref().is_some_and(|r| r.unchanged(st)), rec))
    }

    /// The chunk class of the regular file at `path` (see [`super::class`]),
    /// from what the last scan saw of it; listed for the next scan when its
    /// write pattern decided.
    pub(super) fn file_class(
        &mut self,
        path: &[u8],
        st: &FileStat,
        seen: Option<&StatRec>,
    ) -> ClassPick {
        let now = class::Now {
            dev: st.dev,
            ino: st.ino,
            size: st.size,
            mtime_ns: st.mtime_ns,
        };
        let listed = self.paged_prev.contains(path);
        let seen = seen.map(|r| class::Seen::of(r, listed));
        let choice = class::choose(path, now, seen);
        let paged = matches!(choice, class::Choice::Paged(_));
        if paged {
            self.paged_next.push(path.to_vec());
        }
        ClassPick {
            class: choice.class(),
            newly_paged: paged && !listed,
        }
    }

    /// Takes back [`Self::file_class`]'s listing of `path` as newly paged
    /// (the last listed): it is patched in the class its last chunks were
    /// cut in, and the next scan decides again.
    pub(super) fn unlist_paged(&mut self, path: &[u8]) {
        debug_assert_eq!(self.paged_next.last().map(Vec::as_slice), Some(path));
        if self.paged_next.last().is_some_and(|p| p == path) {
            self.paged_next.pop();
        }
    }

    /// Queues one entry. `file` is the open file for data-carrying entries
    /// that must be read.
    pub(super) fn add(
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
                        #[allow(
                            clippy::cast_possible_truncation,
                            reason = "a small file: at most SMALL_MAX"
                        )]
                        let mut buf = vec![0u8; (e0 - s0) as usize];
                        let t = Instant::now();
                        let got = read_full_at(&f, &mut buf, s0).map_err(io_err(&entry.path))?;
                        self.stats.bytes_hashed += got as u64;
                        if got > 0 {
                            #[allow(clippy::cast_possible_truncation, reason = "at most SMALL_MAX")]
                            let len = got as u32;
                            chunk = Some(ChunkRef {
                                offset: s0,
                                len,
                                id: ChunkId::of(&buf[..got]),
                            });
                        }
                        self.stats.read_time += t.elapsed();
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
                // Only a file whose timestamps can prove it unchanged after
                // the read is worth copying (`super::copy`); a device's say
                // nothing about its contents.
                let copy = match &self.opts.copy_into {
                    Some(dir)
                        if st.kind == StatKind::File
                            && !stat.racy
                            && entry.size >= COPY_MIN
                            && !extents.is_empty() =>
                    {
                        Copying::create(dir, seq, entry.size).map(Arc::new)
                    }
                    _ => None,
                };
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
                            seg_end,
                            read_end,
                            ext_end: e,
                            class,
                            copy: copy.clone(),
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
                    copy,
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
        let t = Instant::now();
        let r = self.results.recv().map_err(|_| ScanError::Worker)?;
        self.stats.read_time += t.elapsed();
        self.in_flight -= 1;
        self.stats.bytes_hashed += r.read;
        self.opts.progress.event(&Progress::Scanned {
            entries: self.stats.entries,
            bytes_hashed: self.stats.bytes_hashed,
        });
        #[allow(
            clippy::cast_possible_truncation,
            reason = "a queue position, at most MAX_PENDING"
        )]
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
                PState::Patched { .. } => {
                    let mut head = self.queue.pop_front().expect("front exists");
                    self.base_seq += 1;
                    let PState::Patched {
                        file,
                        dirty,
                        guessed,
                    } = std::mem::replace(&mut head.state, PState::Plain { reuse: false })
                    else {
                        unreachable!("matched above")
                    };
                    self.write_patched(head, &file, &dirty, guessed)?;
                    continue;
                }
                PState::Chunking { .. } => advance_chunking(head, &mut self.writer)?,
            };
            if !done {
                return Ok(());
            }
            let mut head = self.queue.pop_front().expect("front exists");
            self.base_seq += 1;
            if let PState::Chunking {
                file, shrunk, copy, ..
            } = &head.state
            {
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
                // Its copy holds what was hashed only if nothing moved.
                match (copy, &self.opts.copy_into) {
                    (Some(c), Some(dir)) if !head.stat.racy => {
                        self.copies.extend(c.keep(dir, self.entry_index));
                    }
                    (Some(c), _) => c.discard(),
                    (None, _) => {}
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
            let old = self.cached_entry(&p.entry)?;
            self.writer.write(&Record::Entry(old))?;
            let cache = self.cache.as_mut().expect("reuse implies a cache");
            let bad = |e: ManifestError| ScanError::Cache(e.to_string());
            let mut last_end = None;
            while let Some(c) = cache.manifest.next_chunk().map_err(bad)? {
                write_chunk(&mut self.writer, c, &mut last_end)?;
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

    /// The last manifest's entry for `entry`'s path and kind, its cursor
    /// left on that entry's chunks. A cache error when it lacks one: the
    /// stat cache named an entry its manifest does not have.
    fn cached_entry(&mut self, entry: &Entry) -> Result<Entry, ScanError> {
        let cache = self.cache.as_mut().expect("reuse implies a cache");
        let bad = |e: ManifestError| ScanError::Cache(e.to_string());
        let old = loop {
            match cache.manifest.next_entry().map_err(bad)? {
                Some(e) if crate::manifest::path_cmp(&e.path, &entry.path).is_lt() => {
                    continue;
                }
                other => break other,
            }
        };
        match old {
            Some(old) if old.path == entry.path && old.kind == entry.kind => Ok(old),
            _ => Err(ScanError::Cache(format!(
                "{} missing from the last manifest",
                entry.display_path()
            ))),
        }
    }

    /// Bytes a write tracker saw written to a file read whole
    /// ([`super::changes::FileChanges::written_bytes`]).
    pub(super) fn count_tracked(&mut self, bytes: u64) {
        self.stats.bytes_tracked += bytes;
    }

    /// A tree's file written only in `dirty` (normalized, vouched for by a
    /// tracker's [`super::changes::FileChanges`]) since the last scan, which
    /// read it with the same identity and no larger, or (`guessed`, no
    /// tracker: `dirty` is all of it) rewritten in place: queued in order
    /// like any entry, written by [`Self::write_patched`].
    pub(super) fn add_patched_file(
        &mut self,
        entry: Entry,
        st: &FileStat,
        file: File,
        dirty: Vec<(u64, u64)>,
        guessed: bool,
    ) -> Result<(), ScanError> {
        self.stats.entries += 1;
        self.stats.files += 1;
        self.stats.bytes_scanned += entry.size;
        if guessed {
            self.stats.files_rehashed += 1;
        } else {
            self.stats.bytes_tracked += super::changes::ranges_len(&dirty);
        }
        let stat = StatRec::new(&entry.path, st, self.start_ns);
        // Written at once, after what is queued before it: a patched file's
        // descriptor is never held in the queue (a database has thousands of
        // files; queued behind one large file being chunked, each would keep
        // one open).
        while !self.queue.is_empty() {
            self.flush()?;
            if !self.queue.is_empty() {
                self.wait_one()?;
            }
        }
        self.queue.push_back(Pending {
            entry,
            stat,
            state: PState::Patched {
                file,
                dirty,
                guessed,
            },
        });
        self.flush()
    }

    /// Writes a patched file at the head of the queue: the last scan's
    /// chunks where nothing was written, the rest re-read. The entry keeps
    /// the last scan's chunk class, which its kept chunks were cut in.
    ///
    /// A `guessed` file (rewritten in place, no tracker: `dirty` is all of
    /// it) is cut anew as a whole read cuts it when the guess does not
    /// hold: its class changed since its last chunks were cut, or more than
    /// [`GUESS_CHANGED_MAX`] of its old chunks' bytes changed in the first
    /// [`PIECE_WINDOW`] pieces (content shifted, e.g. written anew over
    /// itself: old boundaries would make every chunk after the shift new,
    /// where content-defined cuts find them again).
    fn write_patched(
        &mut self,
        mut p: Pending,
        file: &File,
        dirty: &[(u64, u64)],
        guessed: bool,
    ) -> Result<(), ScanError> {
        if self.cache.is_none() {
            return Err(ScanError::Cache(
                "a patched file without a last manifest".into(),
            ));
        }
        let picked = p.entry.chunk_class();
        let old = self.cached_entry(&p.entry)?;
        p.entry.class = old.class;
        let cache = self.cache.as_mut().expect("checked above");
        let bad = |e: ManifestError| ScanError::Cache(e.to_string());
        let mut chunks = Vec::new();
        while let Some(c) = cache.manifest.next_chunk().map_err(bad)? {
            chunks.push(c);
        }
        let size = p.entry.size;
        let class = p.entry.chunk_class();
        // New pieces (where writes filled holes) are cut at most the db
        // class's max, or the file's own class max where that is shorter
        // (`db-small`): the receiver holds each chunk to its entry's class.
        let max = class.max_len().min(ChunkClass::Db.max_len());
        // Grown past its last chunk (a log, a file appended to): the new
        // bytes are cut from the last chunk's start with the file's class,
        // as a whole read cuts them, so a later round that reads the file
        // whole (its tracker lost events) finds every chunk. Pieces cut at
        // fixed offsets would all be new to it.
        let grown_from = match chunks.last() {
            Some(last) if size > last.end() && class != ChunkClass::Small => Some(last.offset),
            _ => None,
        };
        let (head, end) = match grown_from {
            Some(from) => (&chunks[..chunks.len() - 1], from),
            None => (&chunks[..], size),
        };
        let keep_cuts = !guessed || class == picked;
        let pieces = if keep_cuts {
            super::changes::plan(head, dirty, end, max)
        } else {
            Vec::new()
        };
        // Hashed and written a window at a time (the ids of one window in
        // memory, not the whole file's); a guess is judged on the first.
        let mut windows = pieces.chunks(PIECE_WINDOW);
        let first = if keep_cuts {
            let refs = self.hash_pieces(&p.entry.path, file, windows.next().unwrap_or_default())?;
            let upto = refs.last().map_or(0, ChunkRef::end);
            let old = &head[..head.partition_point(|c| c.offset < upto)];
            (!guessed || guess_holds(old, &refs)).then_some(refs)
        } else {
            None
        };
        let mut last_end = None;
        match first {
            Some(refs) => {
                self.writer.write(&Record::Entry(p.entry.clone()))?;
                for c in refs {
                    write_chunk(&mut self.writer, c, &mut last_end)?;
                }
                for w in windows {
                    for c in self.hash_pieces(&p.entry.path, file, w)? {
                        write_chunk(&mut self.writer, c, &mut last_end)?;
                    }
                }
                if let Some(from) = grown_from {
                    self.write_grown(&p.entry.path, file, from, size, class, &mut last_end)?;
                }
            }
            None => {
                p.entry.class = picked.code();
                self.stats.guesses_missed += 1;
                self.writer.write(&Record::Entry(p.entry.clone()))?;
                self.write_grown(&p.entry.path, file, 0, size, picked, &mut last_end)?;
            }
        }
        // Re-stat after reading, as for a file read whole.
        let after = fsmeta::stat_fd(file.as_fd(), &p.entry.path)?;
        if after.size != p.stat.size
            || after.mtime_ns != p.stat.mtime_ns
            || after.ctime_ns != p.stat.ctime_ns
        {
            p.stat.racy = true;
        }
        self.paths.push(self.entry_index, &p.entry.path);
        self.entry_index += 1;
        self.statw.push(&p.stat)?;
        Ok(())
    }

    /// The chunks of a file whose last scan's chunks and writes since gave
    /// `pieces` (`super::changes::plan`): kept where nothing was written,
    /// re-read and hashed where something was (`super::pieces`).
    fn hash_pieces(
        &mut self,
        path: &[u8],
        file: &File,
        pieces: &[super::changes::Piece],
    ) -> Result<Vec<ChunkRef>, ScanError> {
        let t = Instant::now();
        let (chunks, read) = super::pieces::hash_pieces(file, pieces, self.opts.threads, &self.cpu)
            .map_err(io_err(path))?;
        self.stats.bytes_hashed += read;
        self.stats.read_time += t.elapsed();
        self.opts.progress.event(&Progress::Scanned {
            entries: self.stats.entries,
            bytes_hashed: self.stats.bytes_hashed,
        });
        Ok(chunks)
    }

    /// The chunks of `[from, size)` of a file that grew, `from` being the
    /// start of its last scan's last chunk (a cut of that scan): each data
    /// extent from there cut with `class` as a whole read cuts it, a
    /// segment at a time (the undecided end of one is read again with the
    /// next).
    fn write_grown(
        &mut self,
        path: &[u8],
        file: &File,
        from: u64,
        size: u64,
        class: ChunkClass,
        last_end: &mut Option<u64>,
    ) -> Result<(), ScanError> {
        let chunker = class.chunker();
        let mut buf = Vec::new();
        for (s, e) in fsmeta::data_extents(file.as_fd(), size, path)? {
            let mut at = s.max(from);
            while at < e {
                #[allow(clippy::cast_possible_truncation, reason = "at most SEGMENT")]
                let want = (e - at).min(SEGMENT) as usize;
                buf.resize(want, 0);
                let t = Instant::now();
                let got = read_full_at(file, &mut buf, at).map_err(io_err(path))?;
                self.stats.bytes_hashed += got as u64;
                // Short: it shrank under the scan, which re-stats it after
                // (racy: read whole next round); what was read is kept.
                let at_end = got < want || at + want as u64 == e;
                let chunks = chunk_segment(&chunker, &buf[..got], at, at_end, u64::MAX);
                self.stats.read_time += t.elapsed();
                if chunks.is_empty() {
                    break;
                }
                for c in chunks {
                    at = c.end();
                    write_chunk(&mut self.writer, c, last_end)?;
                }
                if got < want {
                    break;
                }
            }
        }
        self.opts.progress.event(&Progress::Scanned {
            entries: self.stats.entries,
            bytes_hashed: self.stats.bytes_hashed,
        });
        Ok(())
    }

    /// An image written only in `dirty` (normalized, vouched for by an
    /// [`super::changes::ImageChanges`]) since the last scan: that scan's
    /// chunks where nothing was written, the touched ones re-read in place,
    /// new pieces where writes filled holes (see `super::changes`). False,
    /// having written nothing, where the cache holds no image of this
    /// identity and size (`seen`: its stat record): the caller scans it whole.
    pub(super) fn add_patched(
        &mut self,
        entry: Entry,
        st: &FileStat,
        seen: Option<&StatRec>,
        file: &File,
        dirty: &[(u64, u64)],
    ) -> Result<bool, ScanError> {
        assert!(
            self.queue.is_empty() && self.entry_index == 0,
            "an image is the only entry"
        );
        if !seen.is_some_and(|r| r.dev == st.dev && r.ino == st.ino && r.size == st.size) {
            return Ok(false);
        }
        let Some(cache) = self.cache.as_mut() else {
            return Ok(false);
        };
        let bad = |e: ManifestError| ScanError::Cache(e.to_string());
        match cache.manifest.next_entry().map_err(bad)? {
            Some(old) if old.path == entry.path && old.kind == entry.kind => {}
            _ => return Ok(false),
        }
        let mut old = Vec::new();
        while let Some(c) = cache.manifest.next_chunk().map_err(bad)? {
            old.push(c);
        }
        self.stats.entries += 1;
        self.stats.files += 1;
        self.stats.bytes_scanned += entry.size;
        let stat = StatRec::new(&entry.path, st, self.start_ns);
        let (path, size) = (entry.path.clone(), entry.size);
        self.writer.write(&Record::Entry(entry))?;
        // An image is cut in the db class (`walk::scan_image`).
        let pieces = super::changes::plan(&old, dirty, size, ChunkClass::Db.max_len());
        let mut last_end = None;
        for c in self.hash_pieces(&path, file, &pieces)? {
            write_chunk(&mut self.writer, c, &mut last_end)?;
        }
        self.paths.push(self.entry_index, &path);
        self.entry_index += 1;
        self.statw.push(&stat)?;
        Ok(true)
    }

    pub(super) fn finish(mut self, cache_dir: &Path) -> Result<Scan, ScanError> {
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
        // Summed over threads: the workers' waits can overlap, and only what
        // the scanning thread waited through is in `read_time`.
        self.stats.paced_time = crate::read_full::paced()
            .saturating_sub(self.paced0)
            .min(self.stats.read_time);
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
        // Only a hint (see `super::class`): a list that cannot be written
        // costs the next round its page-sized chunks, not the scan.
        if let Err(e) = class::save_paged(cache_dir, &self.paged_next) {
            tracing::warn!("cannot save the paged-file list: {e}");
        }
        rn("next.stat", &cache_dir.join(LAST_STAT))?;
        rn("next.manifest", &m)?;
        let header =
            ManifestReader::new(BufReader::new(File::open(&m).map_err(io_err(b"manifest"))?))?
                .header()
                .clone();
        self.cpu.add_since(self.cpu0);
        self.stats.cpu = self.cpu.total();
        Ok(Scan {
            manifest: m,
            header,
            trailer,
            paths: self.paths,
            stats: self.stats,
            skipped: self.skipped,
            copies: self.copies,
        })
    }
}

/// Pieces of a patched file hashed and written at a time
/// (`Scanner::write_patched`): about 256 MiB of `db-small` chunks. A few
/// under test, so the tests' files span many windows.
const PIECE_WINDOW: usize = if cfg!(test) { 64 } else { 1 << 16 };

/// At most this share of a guessed file's old chunks' bytes may have
/// changed for its old boundaries to be kept (`Scanner::write_patched`). A
/// database between two rounds rewrites a few percent of its pages; a file
/// written anew from its start changes all of them.
pub(super) const GUESS_CHANGED_MAX: f64 = 0.25;

/// Whether `old` chunks (sorted) re-hashed at their boundaries as `new`
/// (the plan's pieces: the same chunks, in order, and pieces cut where the
/// old ones left gaps) changed at most [`GUESS_CHANGED_MAX`] of their bytes.
fn guess_holds(old: &[ChunkRef], new: &[ChunkRef]) -> bool {
    let total: u64 = old.iter().map(|c| u64::from(c.len)).sum();
    let mut kept = 0u64;
    let mut new = new.iter().peekable();
    for o in old {
        while new.next_if(|n| n.offset < o.offset).is_some() {}
        if new.peek().is_some_and(|n| *n == o) {
            kept += u64::from(o.len);
        }
    }
    #[allow(clippy::cast_precision_loss, reason = "a share")]
    let changed = (total - kept) as f64 / total.max(1) as f64;
    changed <= GUESS_CHANGED_MAX
}

/// Writes a chunk record, preceded by an extent record when it does not
/// continue the previous chunk.
fn write_chunk<W: std::io::Write>(
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
        copy: _,
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
    // The end of the extent being joined: a serial cut never reads past it.
    // A file that grows while it is scanned would otherwise yield a chunk
    // that passes the size (or the next extent) the entry recorded, and the
    // receiver rejects the whole manifest; bounded, the entry is simply
    // racy (re-read next round) and its new bytes travel then.
    let limit = std::cell::Cell::new(u64::MAX);
    // Chunks the joiner must cut itself (rare), read straight from the file.
    let mut serial = |at: u64| -> Result<ChunkRef, ScanError> {
        #[allow(
            clippy::cast_possible_truncation,
            reason = "bounded by the class max, a usize"
        )]
        let room = limit.get().saturating_sub(at).min(chunker.max() as u64) as usize;
        buf.resize(room, 0);
        let got = read_full_at(file, &mut buf, at).map_err(io_err(&path))?;
        if got == 0 {
            return Err(ScanError::Io {
                path: String::from_utf8_lossy(&path).into_owned(),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            });
        }
        let n = chunker.cut(&buf[..got]);
        #[allow(
            clippy::cast_possible_truncation,
            reason = "a chunk is at most its class's max"
        )]
        let len = n as u32;
        Ok(ChunkRef {
            offset: at,
            len,
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
                limit.set(extents[e].1);
                finish_extent(&mut j, extents[e].1, *shrunk, &mut serial, &mut emit)?;
            }
            *join = Some((ext, SegmentJoin::new(extents[ext].0)));
        }
        limit.set(extents[ext].1);
        let (_, j) = join.as_mut().expect("set above");
        j.push(list, &mut serial, &mut emit)?;
        *next_part += 1;
    }
    if let Some((e, mut j)) = join.take() {
        limit.set(extents[e].1);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scan_counts_its_workers_cpu_after_they_ended() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        // Big enough that the workers, not the scanning thread, chunk it.
        let data: Vec<u8> = (0..24u64 << 20)
            .map(|i| ((i * 2_654_435_761) >> 13).to_le_bytes()[0])
            .collect();
        std::fs::write(root.join("data.bin"), &data).unwrap();
        let opts = ScanOptions {
            threads: 2,
            label: "t".into(),
            progress: Arc::new(crate::progress::NoProgress),
            changes: None,
            copy_into: None,
        };
        let this0 = thread_times::this_thread().unwrap();
        let s = super::super::scan_tree(&root, &d.path().join("cache"), opts).unwrap();
        let this = thread_times::this_thread().unwrap();
        assert!(s.stats.bytes_hashed >= 24 << 20);
        let cpu = s.stats.cpu.expect("/proc tells");
        // The scanning thread mostly waited on the workers' results: what
        // the scan ran beyond it is theirs, though they have ended.
        let own = std::time::Duration::from_nanos(this.0 - this0.0);
        assert!(cpu.run > own, "scan {cpu:?}, scanning thread ran {own:?}");
        assert!(cpu.run >= std::time::Duration::from_millis(5), "{cpu:?}");
    }
}
