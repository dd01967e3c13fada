//! The manifest: a streamed, versioned description of a whole tree or image.
//!
//! Records are postcard-encoded, each behind a LEB128 length. The writer and
//! the reader work over any `Write`/`Read` and hold one record at a time, so
//! memory does not grow with tree or file size. The reader validates as it
//! goes (order, safe paths, chunk lengths, extents, root hash): those checks
//! are what keep a lying or broken peer out.

use std::cmp::Ordering;
use std::io::{self, BufRead, Write};

use serde::{Deserialize, Serialize};

use crate::chunk::{CHUNKER_NAME, CHUNKER_VERSION, ChunkClass, ChunkId, ChunkRef};

/// Magic at the start of every manifest.
pub const MAGIC: [u8; 8] = *b"DAFFEMF1";
/// Format version this code reads and writes.
pub const VERSION: u16 = 1;
/// Longest record accepted: an entry with large xattrs (ACLs, SELinux labels)
/// stays far below; anything longer is a broken or hostile stream.
const MAX_RECORD: usize = 16 << 20;
/// Deepest path accepted (components). Linux's `PATH_MAX` (4096 bytes) caps
/// what ordinary tools can reach at 2048 components; anything deeper is a
/// hostile tree. The receiver walks each path one component at a time from
/// the root, so a tree of depth `d` costs it O(d²) work: the cap bounds it
/// (hardening finding 13).
pub const MAX_DEPTH: usize = 2048;
/// Longest path accepted (bytes): 16 times `PATH_MAX`. The reader keeps the
/// open directories' paths, at most `MAX_DEPTH` prefixes of one path, so
/// this with [`MAX_DEPTH`] bounds its memory.
pub const MAX_PATH_LEN: usize = 64 * 1024;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The underlying stream failed.
    #[error("manifest i/o: {0}")]
    Io(#[from] io::Error),
    /// A record did not decode.
    #[error("manifest record {index}: cannot decode: {source}")]
    Decode { index: u64, source: postcard::Error },
    /// A record could not be encoded.
    #[error("manifest: cannot encode record: {0}")]
    Encode(postcard::Error),
    /// The stream is not a manifest this code understands.
    #[error("manifest header: {0}")]
    Header(String),
    /// The stream violates a rule of the format.
    #[error("manifest invalid at record {index} (path {path:?}): {why}")]
    Invalid {
        index: u64,
        path: String,
        why: String,
    },
    /// The root hash in the trailer does not match the bytes read.
    #[error("manifest root mismatch: trailer says {claimed}, bytes hash to {actual}")]
    RootMismatch { claimed: ChunkId, actual: ChunkId },
    /// The stream ended before the trailer.
    #[error("manifest truncated after record {0}")]
    Truncated(u64),
}

/// Tree (a directory) or image (a file or block device).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// A directory tree.
    Tree,
    /// One byte image.
    Image,
}

/// Sizes of one chunker class, as recorded in the header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassSizes {
    pub name: String,
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

/// First record of a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub magic: [u8; 8],
    pub version: u16,
    pub mode: Mode,
    pub chunker: String,
    pub chunker_version: String,
    /// Indexed by class code.
    pub classes: Vec<ClassSizes>,
    /// Free text (the source's name). No timestamp on purpose: the same tree
    /// must give the same root, so a rerun after an interruption recognises
    /// the round it resumes.
    pub label: String,
}

impl Header {
    /// A header for this build's chunker.
    pub fn new(mode: Mode, label: &str) -> Header {
        Header {
            magic: MAGIC,
            version: VERSION,
            mode,
            chunker: CHUNKER_NAME.into(),
            chunker_version: CHUNKER_VERSION.into(),
            classes: ChunkClass::ALL
                .iter()
                .map(|c| {
                    let (min, avg, max) = c.sizes();
                    ClassSizes {
                        name: c.name().into(),
                        min,
                        avg,
                        max,
                    }
                })
                .collect(),
            label: label.into(),
        }
    }

    /// Whether chunks described by this header can be matched against chunks
    /// this build cuts (same chunker, version and sizes): otherwise dedup
    /// across the two would silently fail.
    pub fn same_chunking(&self, other: &Header) -> bool {
        // One table may be the other's first classes (a build before a class
        // was added): the classes both list must cut alike.
        let common = self.classes.len().min(other.classes.len());
        self.chunker == other.chunker
            && self.chunker_version == other.chunker_version
            && self.classes[..common] == other.classes[..common]
    }
}

/// What kind of filesystem object an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    /// Another name for an earlier `File` entry (`target` is its path).
    Hardlink,
    Fifo,
    CharDev,
    BlockDev,
    /// The single entry of an image manifest (path empty).
    Image,
}

impl Kind {
    /// Whether the entry carries data extents.
    pub fn has_data(self) -> bool {
        matches!(self, Kind::File | Kind::Image)
    }
}

/// Extended attributes as (name, value) pairs, sorted by name.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// One filesystem object and its metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative, `/`-separated raw bytes; empty for the tree root and the image.
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Permission bits and set-id/sticky bits (no file type bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, `sec * 1e9 + nsec`.
    pub mtime_ns: i128,
    /// Byte size (files, images); 0 otherwise.
    pub size: u64,
    /// Device number for char/block devices.
    pub rdev: u64,
    /// Symlink target, or the path of the hardlink's `File` entry.
    pub target: Vec<u8>,
    /// Extended attributes (name, value), sorted by name. ACLs are here as
    /// `system.posix_acl_access` / `system.posix_acl_default`.
    pub xattrs: Xattrs,
    /// Chunker class code (see [`ChunkClass::code`]).
    pub class: u8,
}

impl Entry {
    /// The entry's chunk class.
    pub fn chunk_class(&self) -> ChunkClass {
        ChunkClass::from_code(self.class).unwrap_or(ChunkClass::Default)
    }

    /// Lossy display form of the path, for errors and logs.
    pub fn display_path(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// Last record: counts and the root hash over every byte before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trailer {
    pub entries: u64,
    pub chunks: u64,
    pub data_bytes: u64,
    pub root: ChunkId,
}

/// A manifest is identified by its root hash.
pub type ManifestId = ChunkId;

/// The records of the body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    Entry(Entry),
    /// A data extent of the current entry starts at this offset.
    Extent {
        offset: u64,
    },
    /// The next chunk of the current extent.
    Chunk {
        len: u32,
        id: ChunkId,
    },
    Trailer(Trailer),
}

/// Orders paths as the manifest does: depth-first pre-order with siblings
/// sorted bytewise, i.e. component-wise comparison (an ancestor comes first).
pub fn path_cmp(a: &[u8], b: &[u8]) -> Ordering {
    if a.is_empty() || b.is_empty() {
        return a.len().cmp(&b.len());
    }
    let mut ia = a.split(|&c| c == b'/');
    let mut ib = b.split(|&c| c == b'/');
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => match x.cmp(y) {
                Ordering::Equal => continue,
                o => return o,
            },
        }
    }
}

/// Whether `path` is a safe relative manifest path: no empty, `.` or `..`
/// components, no leading `/`, no NUL.
pub fn path_is_safe(path: &[u8]) -> bool {
    !path.is_empty()
        && !path.contains(&0)
        && path
            .split(|&c| c == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..")
}

/// Why `path` is over [`MAX_PATH_LEN`] or [`MAX_DEPTH`], if it is.
pub fn path_over_limits(path: &[u8]) -> Option<String> {
    if path.len() > MAX_PATH_LEN {
        return Some(format!(
            "path of {} bytes is over the limit of {MAX_PATH_LEN}",
            path.len()
        ));
    }
    let depth = path.split(|&c| c == b'/').count();
    (depth > MAX_DEPTH)
        .then(|| format!("path {depth} levels deep is over the limit of {MAX_DEPTH}"))
}

/// The parent of a non-empty path (`""` for top-level names).
pub fn parent_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&c| c == b'/') {
        Some(i) => &path[..i],
        None => b"",
    }
}

pub(crate) fn write_varint(v: u64, out: &mut Vec<u8>) {
    let (bytes, n) = varint(v);
    out.extend_from_slice(&bytes[..n]);
}

/// `v` as a LEB128 varint (postcard's and the record framing's), on the
/// stack: the bytes and how many of them are used.
fn varint(mut v: u64) -> ([u8; 10], usize) {
    let mut out = [0u8; 10];
    let mut n = 0;
    loop {
        #[allow(clippy::cast_possible_truncation, reason = "the low 7 bits")]
        let b = (v & 0x7f) as u8;
        v >>= 7;
        out[n] = if v == 0 { b } else { b | 0x80 };
        n += 1;
        if v == 0 {
            return (out, n);
        }
    }
}

/// The root's hasher, fed a record at a time. A record is a few dozen
/// bytes, and blake3 fed such pieces compresses one 64-byte block at a
/// time; gathered into [`ROOT_BATCH`] bytes it hashes whole chunks across
/// its SIMD lanes. The same bytes in the same order: the same root. With
/// the hand-written chunk records below, reading a 25,000-chunk manifest
/// (a 128 MiB database file) went from 3.0 to 1.1-1.5 ms, and a round
/// reads manifests several times over: the scan the last one, the receiver
/// the new one to validate it, the plan both side by side.
pub(crate) struct RootHasher {
    hasher: blake3::Hasher,
    pending: Vec<u8>,
}

/// Bytes gathered before they are hashed (see [`RootHasher`]).
const ROOT_BATCH: usize = 64 * 1024;

impl RootHasher {
    fn new() -> Self {
        RootHasher {
            hasher: blake3::Hasher::new(),
            pending: Vec::new(),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        if self.pending.len() + bytes.len() > ROOT_BATCH {
            self.hasher.update(&self.pending);
            self.pending.clear();
        }
        if bytes.len() >= ROOT_BATCH {
            self.hasher.update(bytes);
        } else {
            if self.pending.capacity() == 0 {
                self.pending.reserve_exact(ROOT_BATCH);
            }
            self.pending.extend_from_slice(bytes);
        }
    }

    /// A record as it is framed: its length as a varint, then its body.
    fn record(&mut self, body: &[u8]) {
        let (pre, n) = varint(body.len() as u64);
        self.update(&pre[..n]);
        self.update(body);
    }

    fn finalize(&mut self) -> ChunkId {
        self.hasher.update(&self.pending);
        self.pending.clear();
        ChunkId(*self.hasher.finalize().as_bytes())
    }
}

/// Postcard's variant index of [`Record::Chunk`] (its third variant).
const CHUNK_TAG: u8 = 2;

/// A chunk record's body as postcard writes it (and its length): the
/// variant index, the length as a varint, the id's 32 bytes. Written by hand for the scan's
/// tens of thousands of chunk records (serde's tuple of 32 `u8`s goes byte
/// by byte); `tests::chunk_records_encode_and_decode_as_postcard_does`
/// holds it to postcard.
fn encode_chunk(len: u32, id: &ChunkId) -> ([u8; CHUNK_BODY_MAX], usize) {
    let mut body = [0u8; CHUNK_BODY_MAX];
    body[0] = CHUNK_TAG;
    let (v, n) = varint(u64::from(len));
    body[1..=n].copy_from_slice(&v[..n]);
    body[1 + n..1 + n + 32].copy_from_slice(&id.0);
    (body, 1 + n + 32)
}

/// The longest chunk record body: a tag, a 5-byte varint, an id.
const CHUNK_BODY_MAX: usize = 1 + 5 + 32;

/// The chunk record in `body` when it is one in the canonical form
/// [`encode_chunk`] writes, else `None` (and postcard decides: another
/// record, or an error).
fn decode_chunk(body: &[u8]) -> Option<Record> {
    let (&tag, rest) = body.split_first()?;
    if tag != CHUNK_TAG {
        return None;
    }
    // At most four varint bytes (lengths below 2^28: a chunk is a few MiB
    // at most), the last nonzero unless it is the only one: the form
    // `encode_chunk` writes. Postcard also takes padded varints; it reads
    // those itself.
    let n = rest.iter().take(4).position(|b| b & 0x80 == 0)? + 1;
    if n > 1 && rest[n - 1] == 0 {
        return None;
    }
    let len = rest[..n]
        .iter()
        .rev()
        .fold(0u32, |v, b| (v << 7) | u32::from(b & 0x7f));
    let id: [u8; 32] = rest[n..].try_into().ok()?;
    Some(Record::Chunk {
        len,
        id: ChunkId(id),
    })
}

/// Streams records to a `Write`, hashing every byte for the root.
pub struct ManifestWriter<W: Write> {
    out: W,
    hasher: RootHasher,
    buf: Vec<u8>,
    entries: u64,
    chunks: u64,
    data_bytes: u64,
}

impl<W: Write> ManifestWriter<W> {
    /// Starts a manifest with `header`.
    pub fn new(out: W, header: &Header) -> Result<Self, ManifestError> {
        let mut w = ManifestWriter {
            out,
            hasher: RootHasher::new(),
            buf: Vec::with_capacity(256),
            entries: 0,
            chunks: 0,
            data_bytes: 0,
        };
        let body = postcard::to_stdvec(header).map_err(ManifestError::Encode)?;
        w.put(&body)?;
        Ok(w)
    }

    fn put(&mut self, body: &[u8]) -> Result<(), ManifestError> {
        self.buf.clear();
        write_varint(body.len() as u64, &mut self.buf);
        self.buf.extend_from_slice(body);
        self.hasher.update(&self.buf);
        self.out.write_all(&self.buf)?;
        Ok(())
    }

    /// Writes one body record (not the trailer: see [`finish`](Self::finish)).
    pub fn write(&mut self, rec: &Record) -> Result<(), ManifestError> {
        match rec {
            Record::Entry(e) => {
                // A tree the receiver would refuse fails here, at the source,
                // with the path that is too deep.
                if let Some(why) = path_over_limits(&e.path) {
                    return Err(ManifestError::Invalid {
                        index: self.entries,
                        path: e.display_path(),
                        why,
                    });
                }
                self.entries += 1;
            }
            Record::Chunk { len, .. } => {
                self.chunks += 1;
                self.data_bytes += u64::from(*len);
            }
            Record::Extent { .. } => {}
            Record::Trailer(_) => {
                return Err(ManifestError::Header("trailer written by finish()".into()));
            }
        }
        if let Record::Chunk { len, id } = rec {
            let (body, n) = encode_chunk(*len, id);
            return self.put(&body[..n]);
        }
        let body = postcard::to_stdvec(rec).map_err(ManifestError::Encode)?;
        self.put(&body)
    }

    /// Writes an entry followed by its chunk list (extents derived from
    /// chunk contiguity: a gap starts a new extent). Tests and the testing
    /// feature only (the scanner writes extents itself).
    #[cfg(any(test, feature = "testing"))]
    pub fn write_entry(&mut self, e: &Entry, chunks: &[ChunkRef]) -> Result<(), ManifestError> {
        self.write(&Record::Entry(e.clone()))?;
        let mut end = None;
        for c in chunks {
            if end != Some(c.offset) {
                self.write(&Record::Extent { offset: c.offset })?;
            }
            self.write(&Record::Chunk {
                len: c.len,
                id: c.id,
            })?;
            end = Some(c.end());
        }
        Ok(())
    }

    /// Writes the trailer and returns the writer and the trailer.
    pub fn finish(mut self) -> Result<(W, Trailer), ManifestError> {
        let trailer = Trailer {
            entries: self.entries,
            chunks: self.chunks,
            data_bytes: self.data_bytes,
            root: self.hasher.finalize(),
        };
        let body = postcard::to_stdvec(&Record::Trailer(trailer.clone()))
            .map_err(ManifestError::Encode)?;
        self.buf.clear();
        write_varint(body.len() as u64, &mut self.buf);
        self.buf.extend_from_slice(&body);
        self.out.write_all(&self.buf)?;
        self.out.flush()?;
        Ok((self.out, trailer))
    }
}

/// One entry with its data layout, as handed out by [`ManifestReader`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// An entry; its chunks follow as `Chunk` items.
    Entry(Entry),
    /// A chunk of the last entry, with its absolute offset.
    Chunk(ChunkRef),
}

/// Reads and validates a manifest record by record.
pub struct ManifestReader<R: BufRead> {
    inp: R,
    hasher: RootHasher,
    hashing: bool,
    header: Header,
    buf: Vec<u8>,
    index: u64,
    // validation state
    last_path: Option<Vec<u8>>,
    /// The open directories (the last entry's ancestors, root first), as
    /// lengths of prefixes of `dir_path`, the deepest of them: memory
    /// linear in one path's length, not quadratic in the tree's depth.
    dirs: Vec<usize>,
    dir_path: Vec<u8>,
    cur: Option<CurEntry>,
    entries: u64,
    chunks: u64,
    data_bytes: u64,
    trailer: Option<Trailer>,
    peeked: Option<Item>,
    /// Byte offset of the next record in the stream.
    pos: u64,
    entry_pos: u64,
}

struct CurEntry {
    path: Vec<u8>,
    size: u64,
    max_len: u32,
    has_data: bool,
    /// End of the current extent (next chunk offset); None before the first.
    next: Option<u64>,
}

impl<R: BufRead> ManifestReader<R> {
    /// Reads and checks the header.
    pub fn new(mut inp: R) -> Result<Self, ManifestError> {
        let mut hasher = RootHasher::new();
        let mut buf = Vec::new();
        let mut pos = 0;
        if !read_record(&mut inp, &mut buf, Some(&mut hasher), &mut pos)? {
            return Err(ManifestError::Header("empty stream".into()));
        }
        let header: Header =
            postcard::from_bytes(&buf).map_err(|e| ManifestError::Header(e.to_string()))?;
        if header.magic != MAGIC {
            return Err(ManifestError::Header(
                "bad magic: not a daffe manifest".into(),
            ));
        }
        if header.version != VERSION {
            return Err(ManifestError::Header(format!(
                "version {} (this build reads {VERSION})",
                header.version
            )));
        }
        // A build before `db-small` lists three classes: its manifests
        // (a destination's last round, a scan cache) still read, and a
        // class code past its table is refused per entry.
        if header.classes.is_empty() || header.classes.len() > ChunkClass::ALL.len() {
            return Err(ManifestError::Header("unexpected chunk class table".into()));
        }
        Ok(ManifestReader {
            inp,
            hasher,
            hashing: true,
            header,
            buf,
            index: 0,
            last_path: None,
            dirs: Vec::new(),
            dir_path: Vec::new(),
            cur: None,
            entries: 0,
            chunks: 0,
            data_bytes: 0,
            trailer: None,
            peeked: None,
            pos,
            entry_pos: 0,
        })
    }

    /// A reader positioned at an entry record found earlier at byte `pos`
    /// (see [`entry_pos`](Self::entry_pos)): no root check, no order check
    /// against earlier entries. Used to re-walk one entry's chunk list.
    pub fn resume_at(inp: R, header: Header, pos: u64) -> Self {
        ManifestReader {
            inp,
            hasher: RootHasher::new(),
            hashing: false,
            header,
            buf: Vec::new(),
            index: 0,
            last_path: None,
            dirs: Vec::new(),
            dir_path: Vec::new(),
            cur: None,
            entries: 0,
            chunks: 0,
            data_bytes: 0,
            trailer: None,
            peeked: None,
            pos,
            entry_pos: pos,
        }
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Byte offset of the last entry record returned.
    pub fn entry_pos(&self) -> u64 {
        self.entry_pos
    }

    /// The trailer, once [`next`](Self::next) returned `None`.
    pub fn trailer(&self) -> Option<&Trailer> {
        self.trailer.as_ref()
    }

    fn invalid(&self, why: impl Into<String>) -> ManifestError {
        ManifestError::Invalid {
            index: self.index,
            path: self
                .cur
                .as_ref()
                .map(|c| String::from_utf8_lossy(&c.path).into_owned())
                .unwrap_or_default(),
            why: why.into(),
        }
    }

    /// Looks at the next item without consuming it.
    pub fn peek(&mut self) -> Result<Option<&Item>, ManifestError> {
        if self.peeked.is_none() {
            self.peeked = self.read_item()?;
        }
        Ok(self.peeked.as_ref())
    }

    /// The next item, or `None` after a valid trailer.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Item>, ManifestError> {
        if let Some(i) = self.peeked.take() {
            return Ok(Some(i));
        }
        self.read_item()
    }

    /// The next entry, skipping the chunks of the current one.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, ManifestError> {
        loop {
            match self.next()? {
                Some(Item::Entry(e)) => return Ok(Some(e)),
                Some(Item::Chunk(_)) => continue,
                None => return Ok(None),
            }
        }
    }

    /// The next chunk of the current entry, or `None` at its end.
    pub fn next_chunk(&mut self) -> Result<Option<ChunkRef>, ManifestError> {
        match self.peek()? {
            Some(Item::Chunk(_)) => match self.next()? {
                Some(Item::Chunk(c)) => Ok(Some(c)),
                _ => unreachable_item(),
            },
            _ => Ok(None),
        }
    }

    fn read_item(&mut self) -> Result<Option<Item>, ManifestError> {
        loop {
            if self.trailer.is_some() {
                return Ok(None);
            }
            let rec_pos = self.pos;
            // The trailer is not part of the root: hash only after decoding.
            if !read_record(&mut self.inp, &mut self.buf, None, &mut self.pos)? {
                if !self.hashing {
                    return Ok(None);
                }
                return Err(ManifestError::Truncated(self.index));
            }
            self.index += 1;
            let rec: Record = match decode_chunk(&self.buf) {
                Some(rec) => rec,
                None => {
                    postcard::from_bytes(&self.buf).map_err(|source| ManifestError::Decode {
                        index: self.index,
                        source,
                    })?
                }
            };
            if !matches!(rec, Record::Trailer(_)) && self.hashing {
                self.hasher.record(&self.buf);
            }
            match rec {
                Record::Entry(e) => {
                    if !self.hashing && self.entries > 0 {
                        // Re-walk of one entry: stop at the next one.
                        self.trailer = Some(Trailer {
                            entries: 0,
                            chunks: 0,
                            data_bytes: 0,
                            root: ChunkId([0; 32]),
                        });
                        return Ok(None);
                    }
                    self.finish_entry()?;
                    self.check_entry(&e)?;
                    self.entries += 1;
                    self.entry_pos = rec_pos;
                    return Ok(Some(Item::Entry(e)));
                }
                Record::Extent { offset } => {
                    let Some((has_data, next, size)) =
                        self.cur.as_ref().map(|c| (c.has_data, c.next, c.size))
                    else {
                        return Err(self.invalid("extent before any entry"));
                    };
                    if !has_data {
                        return Err(self.invalid("extent on an entry without data"));
                    }
                    if let Some(prev_end) = next
                        && offset <= prev_end
                    {
                        return Err(self.invalid(format!(
                            "extent at {offset} overlaps or touches previous data ending at {prev_end}"
                        )));
                    }
                    if offset >= size {
                        return Err(self.invalid(format!("extent at {offset} past size {size}")));
                    }
                    if let Some(c) = self.cur.as_mut() {
                        c.next = Some(offset);
                    }
                    continue;
                }
                Record::Chunk { len, id } => {
                    let Some((next, size, max_len)) =
                        self.cur.as_ref().map(|c| (c.next, c.size, c.max_len))
                    else {
                        return Err(self.invalid("chunk before any entry"));
                    };
                    let Some(offset) = next else {
                        return Err(self.invalid("chunk before any extent"));
                    };
                    if len == 0 || len > max_len {
                        return Err(
                            self.invalid(format!("chunk length {len} outside 1..={max_len}"))
                        );
                    }
                    // Checked: a hostile entry of size u64::MAX with an
                    // extent near it would wrap (issue 12, low finding).
                    let Some(end) = offset.checked_add(u64::from(len)) else {
                        return Err(self.invalid(format!("chunk at {offset} overflows")));
                    };
                    if end > size {
                        return Err(
                            self.invalid(format!("chunk ending at {end} passes size {size}"))
                        );
                    }
                    if let Some(c) = self.cur.as_mut() {
                        c.next = Some(end);
                    }
                    self.chunks += 1;
                    self.data_bytes = self.data_bytes.saturating_add(u64::from(len));
                    return Ok(Some(Item::Chunk(ChunkRef { offset, len, id })));
                }
                Record::Trailer(_) if !self.hashing => {
                    self.trailer = Some(Trailer {
                        entries: 0,
                        chunks: 0,
                        data_bytes: 0,
                        root: ChunkId([0; 32]),
                    });
                    return Ok(None);
                }
                Record::Trailer(t) => {
                    self.finish_entry()?;
                    let actual = self.hasher.finalize();
                    if t.root != actual {
                        return Err(ManifestError::RootMismatch {
                            claimed: t.root,
                            actual,
                        });
                    }
                    if t.entries != self.entries
                        || t.chunks != self.chunks
                        || t.data_bytes != self.data_bytes
                    {
                        return Err(self.invalid("trailer counts do not match the body"));
                    }
                    self.trailer = Some(t);
                    return Ok(None);
                }
            }
        }
    }

    fn finish_entry(&mut self) -> Result<(), ManifestError> {
        self.cur = None;
        Ok(())
    }

    fn check_entry(&mut self, e: &Entry) -> Result<(), ManifestError> {
        let bad = |why: String| ManifestError::Invalid {
            index: self.index,
            path: e.display_path(),
            why,
        };
        let class = ChunkClass::from_code(e.class)
            .filter(|_| usize::from(e.class) < self.header.classes.len())
            .ok_or_else(|| bad(format!("unknown chunk class {}", e.class)))?;
        if self.hashing {
            match self.header.mode {
                Mode::Image => {
                    if self.entries > 0 || e.kind != Kind::Image || !e.path.is_empty() {
                        return Err(bad("an image manifest holds exactly one Image entry".into()));
                    }
                }
                Mode::Tree => {
                    if self.entries == 0 {
                        if !e.path.is_empty() || e.kind != Kind::Dir {
                            return Err(bad("a tree manifest starts with its root dir".into()));
                        }
                        self.dirs.push(0);
                        self.dir_path.clear();
                    } else {
                        if !path_is_safe(&e.path) {
                            return Err(bad("unsafe path".into()));
                        }
                        if let Some(why) = path_over_limits(&e.path) {
                            return Err(bad(why));
                        }
                        if e.kind == Kind::Image {
                            return Err(bad("Image entry in a tree".into()));
                        }
                        if let Some(last) = &self.last_path
                            && path_cmp(last, &e.path) != Ordering::Less
                        {
                            return Err(bad("paths out of order or duplicated".into()));
                        }
                        let parent = parent_of(&e.path);
                        while let Some(&top) = self.dirs.last() {
                            if &self.dir_path[..top] == parent {
                                break;
                            }
                            self.dirs.pop();
                        }
                        if self.dirs.is_empty() {
                            return Err(bad("parent directory not listed before it".into()));
                        }
                        if e.kind == Kind::Dir {
                            // Its parent is the top, a prefix of it: the
                            // other prefixes stay prefixes of the new path.
                            self.dir_path.clone_from(&e.path);
                            self.dirs.push(e.path.len());
                        }
                        if e.kind == Kind::Hardlink
                            && (!path_is_safe(&e.target)
                                || path_cmp(&e.target, &e.path) != Ordering::Less)
                        {
                            return Err(bad("hardlink target must be an earlier path".into()));
                        }
                    }
                }
            }
            self.last_path = Some(e.path.clone());
        }
        if !e.kind.has_data() && e.size != 0 {
            return Err(bad("size on an entry without data".into()));
        }
        self.cur = Some(CurEntry {
            path: e.path.clone(),
            size: e.size,
            max_len: class.max_len(),
            has_data: e.kind.has_data(),
            next: None,
        });
        Ok(())
    }
}

fn unreachable_item() -> Result<Option<ChunkRef>, ManifestError> {
    Err(ManifestError::Header(
        "reader state lost a peeked chunk".into(),
    ))
}

/// Reads one length-prefixed record into `buf`; false at a clean end.
pub(crate) fn read_record<R: BufRead>(
    inp: &mut R,
    buf: &mut Vec<u8>,
    hasher: Option<&mut RootHasher>,
    pos: &mut u64,
) -> Result<bool, ManifestError> {
    let mut len: u64 = 0;
    let mut shift = 0;
    let mut pre = [0u8; 10];
    let mut npre = 0;
    loop {
        let mut b = [0u8; 1];
        match inp.read(&mut b) {
            Ok(0) if npre == 0 => return Ok(false),
            Ok(0) => {
                return Err(ManifestError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "manifest ends inside a length",
                )));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
        if npre == pre.len() {
            return Err(ManifestError::Header("record length too long".into()));
        }
        pre[npre] = b[0];
        npre += 1;
        len |= u64::from(b[0] & 0x7f) << shift;
        shift += 7;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > MAX_RECORD {
        return Err(ManifestError::Header(format!(
            "record of {len} bytes is too long"
        )));
    }
    buf.resize(len, 0);
    inp.read_exact(buf)?;
    if let Some(h) = hasher {
        h.update(&pre[..npre]);
        h.update(buf);
    }
    *pos += (npre + len) as u64;
    Ok(true)
}

/// Reads a whole manifest to check it and returns its trailer.
pub fn validate<R: BufRead>(inp: R) -> Result<Trailer, ManifestError> {
    let mut r = ManifestReader::new(inp)?;
    while r.next()?.is_some() {}
    r.trailer()
        .cloned()
        .ok_or(ManifestError::Truncated(r.index))
}

/// Maps entry indexes of one manifest to the paths of its data-carrying
/// entries. Kept as one byte arena plus offsets: about `path + 12` bytes per
/// file, so a 1M-file tree costs tens of MiB, not gigabytes.
#[derive(Debug, Default)]
pub struct PathTable {
    arena: Vec<u8>,
    /// (entry index, start in arena), sorted by entry index.
    index: Vec<(u32, u32)>,
    ends: Vec<u32>,
}

impl PathTable {
    /// Adds an entry's path (entry indexes must grow).
    /// Panics past 4 GiB of path bytes (tens of millions of files; a
    /// manifest from a peer is cut off at 4 GiB, so it cannot get there).
    pub fn push(&mut self, entry: u32, path: &[u8]) {
        self.index.push((entry, self.arena_len()));
        self.arena.extend_from_slice(path);
        let end = self.arena_len();
        self.ends.push(end);
    }

    fn arena_len(&self) -> u32 {
        u32::try_from(self.arena.len()).expect("a path table holds under 4 GiB of paths")
    }

    /// The path of entry `entry`, if it was added.
    pub fn get(&self, entry: u32) -> Option<&[u8]> {
        let i = self.index.binary_search_by_key(&entry, |e| e.0).ok()?;
        let start = self.index[i].1 as usize;
        Some(&self.arena[start..self.ends[i] as usize])
    }

    /// Number of paths.
    #[cfg(any(test, feature = "testing"))]
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether there are none.
    #[cfg(any(test, feature = "testing"))]
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

/// A reader over a byte slice that implements `BufRead` (tests, small inputs).
#[cfg(any(test, feature = "testing"))]
pub fn slice_reader(b: &[u8]) -> io::BufReader<&[u8]> {
    io::BufReader::new(b)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An entry with fixed metadata (shared with other modules' tests).
    pub(crate) fn entry(path: &[u8], kind: Kind, size: u64) -> Entry {
        Entry {
            path: path.to_vec(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 1,
            size,
            rdev: 0,
            target: Vec::new(),
            xattrs: Vec::new(),
            class: ChunkClass::Db.code(),
        }
    }

    fn sample() -> Vec<u8> {
        let mut w = ManifestWriter::new(Vec::new(), &Header::new(Mode::Tree, "t")).unwrap();
        w.write_entry(&entry(b"", Kind::Dir, 0), &[]).unwrap();
        w.write_entry(&entry(b"a", Kind::Dir, 0), &[]).unwrap();
        let id = ChunkId::of(b"x");
        w.write_entry(
            &entry(b"a/f", Kind::File, 100_000),
            &[
                ChunkRef {
                    offset: 0,
                    len: 4096,
                    id,
                },
                ChunkRef {
                    offset: 8192,
                    len: 4096,
                    id,
                },
            ],
        )
        .unwrap();
        w.write_entry(&entry(b"a-b", Kind::File, 0), &[]).unwrap();
        w.finish().unwrap().0
    }

    #[test]
    fn round_trip_and_root() {
        let bytes = sample();
        let mut r = ManifestReader::new(slice_reader(&bytes)).unwrap();
        let mut items = Vec::new();
        while let Some(i) = r.next().unwrap() {
            items.push(i);
        }
        assert_eq!(items.len(), 6);
        assert_eq!(
            items[3],
            Item::Chunk(ChunkRef {
                offset: 0,
                len: 4096,
                id: ChunkId::of(b"x")
            })
        );
        assert_eq!(
            items[4],
            Item::Chunk(ChunkRef {
                offset: 8192,
                len: 4096,
                id: ChunkId::of(b"x")
            })
        );
        let t = r.trailer().unwrap();
        assert_eq!((t.entries, t.chunks, t.data_bytes), (4, 2, 8192));
    }

    #[test]
    fn any_flipped_byte_is_caught() {
        let bytes = sample();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(validate(slice_reader(&b)).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn truncation_is_caught() {
        let bytes = sample();
        for n in 0..bytes.len() {
            assert!(
                validate(slice_reader(&bytes[..n])).is_err(),
                "truncation at {n} accepted"
            );
        }
    }

    fn with_entries(entries: &[Entry], chunks: &[(usize, ChunkRef)]) -> Vec<u8> {
        let mut w = ManifestWriter::new(Vec::new(), &Header::new(Mode::Tree, "t")).unwrap();
        for (i, e) in entries.iter().enumerate() {
            let cs: Vec<ChunkRef> = chunks.iter().filter(|c| c.0 == i).map(|c| c.1).collect();
            w.write_entry(e, &cs).unwrap();
        }
        w.finish().unwrap().0
    }

    /// A manifest of a build before `db-small` (three classes in its
    /// header): it still reads, its chunks still match ours, and an entry
    /// naming a class past its table is refused.
    #[test]
    fn a_manifest_with_the_older_class_table_reads_and_matches() {
        let mut old = Header::new(Mode::Tree, "t");
        old.classes.truncate(3);
        assert!(old.same_chunking(&Header::new(Mode::Tree, "t")));
        assert!(Header::new(Mode::Tree, "t").same_chunking(&old));
        let mut resized = old.clone();
        resized.classes[1].avg *= 2;
        assert!(!resized.same_chunking(&Header::new(Mode::Tree, "t")));

        let write = |class: ChunkClass| {
            let mut w = ManifestWriter::new(Vec::new(), &old).unwrap();
            w.write_entry(&entry(b"", Kind::Dir, 0), &[]).unwrap();
            let mut f = entry(b"f", Kind::File, 4096);
            f.class = class.code();
            let id = ChunkId::of(b"z");
            let c = ChunkRef {
                offset: 0,
                len: 4096,
                id,
            };
            w.write_entry(&f, &[c]).unwrap();
            w.finish().unwrap().0
        };
        let read_all = |bytes: &[u8]| -> Result<usize, ManifestError> {
            let mut r = ManifestReader::new(slice_reader(bytes))?;
            let mut n = 0;
            while r.next()?.is_some() {
                n += 1;
            }
            Ok(n)
        };
        assert!(read_all(&write(ChunkClass::Db)).is_ok());
        let err = read_all(&write(ChunkClass::DbSmall)).unwrap_err();
        assert!(err.to_string().contains("unknown chunk class 3"), "{err}");
        let mut none = old.clone();
        none.classes.clear();
        let w = ManifestWriter::new(Vec::new(), &none).unwrap();
        assert!(ManifestReader::new(slice_reader(&w.finish().unwrap().0)).is_err());
    }

    #[test]
    fn hostile_manifests_are_refused() {
        let root = entry(b"", Kind::Dir, 0);
        let id = ChunkId::of(b"y");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "dotdot",
                with_entries(&[root.clone(), entry(b"..", Kind::File, 0)], &[]),
            ),
            (
                "abs",
                with_entries(&[root.clone(), entry(b"/etc", Kind::File, 0)], &[]),
            ),
            (
                "empty comp",
                with_entries(&[root.clone(), entry(b"a//b", Kind::File, 0)], &[]),
            ),
            (
                "order",
                with_entries(
                    &[
                        root.clone(),
                        entry(b"b", Kind::File, 0),
                        entry(b"a", Kind::File, 0),
                    ],
                    &[],
                ),
            ),
            (
                "dup",
                with_entries(
                    &[
                        root.clone(),
                        entry(b"a", Kind::File, 0),
                        entry(b"a", Kind::File, 0),
                    ],
                    &[],
                ),
            ),
            (
                "orphan",
                with_entries(&[root.clone(), entry(b"x/y", Kind::File, 0)], &[]),
            ),
            (
                "long chunk",
                with_entries(
                    &[root.clone(), entry(b"f", Kind::File, 1 << 20)],
                    &[(
                        1,
                        ChunkRef {
                            offset: 0,
                            len: 70_000,
                            id,
                        },
                    )],
                ),
            ),
            (
                "past size",
                with_entries(
                    &[root.clone(), entry(b"f", Kind::File, 100)],
                    &[(
                        1,
                        ChunkRef {
                            offset: 0,
                            len: 200,
                            id,
                        },
                    )],
                ),
            ),
            (
                "overlap",
                with_entries(
                    &[root.clone(), entry(b"f", Kind::File, 100_000)],
                    &[
                        (
                            1,
                            ChunkRef {
                                offset: 8192,
                                len: 100,
                                id,
                            },
                        ),
                        (
                            1,
                            ChunkRef {
                                offset: 100,
                                len: 100,
                                id,
                            },
                        ),
                    ],
                ),
            ),
            (
                "hardlink forward",
                with_entries(
                    &[root.clone(), {
                        let mut e = entry(b"a", Kind::Hardlink, 0);
                        e.target = b"b".to_vec();
                        e
                    }],
                    &[],
                ),
            ),
            ("no root", with_entries(&[entry(b"a", Kind::File, 0)], &[])),
        ];
        for (name, bytes) in cases {
            assert!(validate(slice_reader(&bytes)).is_err(), "{name} accepted");
        }
    }

    /// Hardening finding 13: a peer's manifest of one directory chain
    /// 100,000 levels deep was accepted, and cost the reader O(depth²)
    /// memory (every open directory's full path) and the receiver O(depth²)
    /// path walks. Now the reader refuses the first entry past the cap.
    #[test]
    fn finding_13_a_path_deeper_than_the_cap_is_refused() {
        // Written record by record: the writer itself refuses such a path.
        let deep = |depth: usize| -> Vec<u8> {
            let mut records = vec![
                postcard::to_stdvec(&Header::new(Mode::Tree, "t")).unwrap(),
                postcard::to_stdvec(&Record::Entry(entry(b"", Kind::Dir, 0))).unwrap(),
            ];
            let mut path = Vec::new();
            for i in 0..depth {
                if i > 0 {
                    path.push(b'/');
                }
                path.push(b'd');
                records
                    .push(postcard::to_stdvec(&Record::Entry(entry(&path, Kind::Dir, 0))).unwrap());
            }
            let mut out = Vec::new();
            for rec in &records {
                write_varint(rec.len() as u64, &mut out);
                out.extend_from_slice(rec);
            }
            let trailer = Record::Trailer(Trailer {
                entries: depth as u64 + 1,
                chunks: 0,
                data_bytes: 0,
                root: ChunkId(*blake3::hash(&out).as_bytes()),
            });
            let t = postcard::to_stdvec(&trailer).unwrap();
            write_varint(t.len() as u64, &mut out);
            out.extend_from_slice(&t);
            out
        };
        validate(slice_reader(&deep(MAX_DEPTH))).expect("a tree at the cap is fine");
        let err = validate(slice_reader(&deep(MAX_DEPTH + 1))).unwrap_err();
        assert!(err.to_string().contains("levels deep"), "{err}");
        let mut w = ManifestWriter::new(Vec::new(), &Header::new(Mode::Tree, "t")).unwrap();
        let long = vec![b'x'; MAX_PATH_LEN + 1];
        assert!(
            w.write(&Record::Entry(entry(&long, Kind::File, 0)))
                .is_err()
        );
    }

    /// Issue 12, low finding: the reader added a chunk's length to its
    /// offset unchecked; an entry of size u64::MAX with an extent just
    /// below it overflowed (a panic in debug builds, a wrapped end that
    /// passed the size check in release). Now it is an invalid manifest.
    #[test]
    fn low_finding_a_chunk_offset_that_overflows_is_refused() {
        let mut w = ManifestWriter::new(Vec::new(), &Header::new(Mode::Tree, "t")).unwrap();
        w.write(&Record::Entry(entry(b"", Kind::Dir, 0))).unwrap();
        w.write(&Record::Entry(entry(b"f", Kind::File, u64::MAX)))
            .unwrap();
        w.write(&Record::Extent {
            offset: u64::MAX - 10,
        })
        .unwrap();
        w.write(&Record::Chunk {
            len: 100,
            id: ChunkId::of(b"x"),
        })
        .unwrap();
        let bytes = w.finish().unwrap().0;
        let err = validate(slice_reader(&bytes)).unwrap_err();
        assert!(err.to_string().contains("overflows"), "{err}");
    }

    #[test]
    fn path_order_is_preorder() {
        let mut v: Vec<&[u8]> = vec![b"a-c", b"a/b", b"a", b"a/b/c", b"b", b"a0"];
        v.sort_by(|a, b| path_cmp(a, b));
        assert_eq!(v, vec![&b"a"[..], b"a/b", b"a/b/c", b"a-c", b"a0", b"b"]);
    }

    #[test]
    fn path_table_lookups() {
        let mut t = PathTable::default();
        t.push(3, b"x/y");
        t.push(9, b"z");
        assert_eq!(t.get(3), Some(&b"x/y"[..]));
        assert_eq!(t.get(9), Some(&b"z"[..]));
        assert_eq!(t.get(4), None);
    }

    /// The hand-written chunk record is postcard's, both ways: every
    /// length's encoding is postcard's, and whatever bytes the decoder
    /// takes, postcard reads the same record from them.
    #[test]
    fn chunk_records_encode_and_decode_as_postcard_does() {
        let id = ChunkId(std::array::from_fn(|i| (i * 37 + 5).to_le_bytes()[0]));
        for len in [
            0,
            1,
            127,
            128,
            4096,
            16383,
            16384,
            (1 << 21) - 1,
            1 << 21,
            (1 << 28) - 1,
            1 << 28,
            u32::MAX,
        ] {
            let rec = Record::Chunk { len, id };
            let (body, n) = encode_chunk(len, &id);
            let want = postcard::to_stdvec(&rec).unwrap();
            assert_eq!(&body[..n], &want[..], "len {len}");
            // Four varint bytes and fewer are decoded here, longer ones by
            // postcard.
            let short = len < 1 << 28;
            assert_eq!(decode_chunk(&want), short.then(|| rec.clone()), "len {len}");
        }
    }

    proptest::proptest! {
        #[test]
        fn what_the_chunk_decoder_takes_postcard_reads_alike(
            tag in proptest::prop_oneof![proptest::strategy::Just(CHUNK_TAG), proptest::num::u8::ANY],
            varint in proptest::collection::vec(proptest::num::u8::ANY, 0..7),
            tail in proptest::collection::vec(proptest::num::u8::ANY, 28..36),
        ) {
            let mut body = vec![tag];
            body.extend_from_slice(&varint);
            body.extend_from_slice(&tail);
            if let Some(rec) = decode_chunk(&body) {
                proptest::prop_assert_eq!(postcard::from_bytes::<Record>(&body).ok(), Some(rec));
            }
        }

        /// Records fed to the root's hasher one at a time, in any sizes
        /// (some past its batch), hash as the framed bytes hashed whole.
        #[test]
        fn the_root_hasher_hashes_the_framed_records(
            lens in proptest::collection::vec(
                proptest::prop_oneof![0usize..64, 60_000usize..140_000],
                0..12,
            ),
        ) {
            let (mut h, mut framed) = (RootHasher::new(), Vec::new());
            for (i, len) in lens.iter().enumerate() {
                let body: Vec<u8> = (0..*len).map(|j| (i * 31 + j * 7).to_le_bytes()[0]).collect();
                h.record(&body);
                write_varint(body.len() as u64, &mut framed);
                framed.extend_from_slice(&body);
            }
            proptest::prop_assert_eq!(h.finalize(), ChunkId(*blake3::hash(&framed).as_bytes()));
        }
    }
}
