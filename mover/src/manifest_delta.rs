//! Manifest deltas: a round's manifest expressed against an earlier manifest
//! the receiver already holds (usually the one it applied last round), so an
//! incremental round sends the records that changed, not the whole manifest
//! (~120 bytes per small file, ~40 per chunk: 6 MiB for the benchmark's 50k
//! files against ~150 KiB of delta).
//!
//! Both manifests are record streams in one order (paths depth-first, then
//! offsets within an entry), so the encoder merges them in one pass and
//! constant memory, keyed by (path, offset): records equal in key and bytes
//! are copied from the base, base records the new stream lacks are skipped,
//! the rest travel as literals. In-place edits and appends (databases, logs)
//! cost only their changed records; an insertion in the middle of a file
//! shifts the offsets after it, and that file's later records travel whole.
//!
//! The output is the new manifest byte for byte. The applier (the network
//! receiver's side: feature `net`) checks only the
//! delta's own framing and the base it names; the receiver then validates
//! the rebuilt manifest like any other (order, limits, root hash), so a bad
//! delta or a base that differs is caught there and costs a full manifest.
//!
//! Delta stream: `MAGIC`, the base root (32 bytes), then ops, each a tag
//! byte and a LEB128 count: `COPY n` / `SKIP n` records of the base,
//! `LITERAL len` followed by `len` bytes of whole raw records.

use std::cmp::Ordering;
use std::io::{self, BufRead, Write};

use crate::chunk::ChunkId;
use crate::manifest::{ManifestError, Record, path_cmp, read_record, write_varint};

/// First bytes of every manifest delta.
pub const MAGIC: [u8; 8] = *b"DAFFEMD1";
const COPY: u8 = 1;
const SKIP: u8 = 2;
const LITERAL: u8 = 3;
/// Literal bytes the encoder gathers before emitting an op.
const LITERAL_PIECE: usize = 64 * 1024;
#[cfg(any(test, feature = "net"))]
/// Longest literal the applier accepts (a single huge record still fits:
/// manifest records are at most 16 MiB, see `manifest::MAX_RECORD`).
const MAX_LITERAL: u64 = 17 << 20;

/// What an encoding did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeltaStats {
    /// Records copied from the base.
    pub copied: u64,
    /// Base records dropped.
    pub skipped: u64,
    /// Records sent whole, and their bytes.
    pub literal_records: u64,
    pub literal_bytes: u64,
    /// Bytes of delta written.
    pub delta_bytes: u64,
}

/// Where a record sits, for merging two manifests.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Key {
    Header,
    /// `rank`: 0 the entry itself, 1 an extent start, 2 a chunk.
    Body {
        path: std::rc::Rc<[u8]>,
        pos: u64,
        rank: u8,
    },
    Trailer,
}

fn key_cmp(a: &Key, b: &Key) -> Ordering {
    match (a, b) {
        (Key::Header, Key::Header) | (Key::Trailer, Key::Trailer) => Ordering::Equal,
        (Key::Header, _) | (_, Key::Trailer) => Ordering::Less,
        (_, Key::Header) | (Key::Trailer, _) => Ordering::Greater,
        (
            Key::Body {
                path: pa,
                pos: oa,
                rank: ra,
            },
            Key::Body {
                path: pb,
                pos: ob,
                rank: rb,
            },
        ) => path_cmp(pa, pb).then(oa.cmp(ob)).then(ra.cmp(rb)),
    }
}

/// A manifest as raw records with merge keys (structure only: the receiver
/// validates the result).
struct RawRecords<R> {
    inp: R,
    body: Vec<u8>,
    raw: Vec<u8>,
    index: u64,
    path: std::rc::Rc<[u8]>,
    pos: u64,
    next: Option<Key>,
    done: bool,
}

impl<R: BufRead> RawRecords<R> {
    fn new(inp: R) -> Self {
        RawRecords {
            inp,
            body: Vec::new(),
            raw: Vec::new(),
            index: 0,
            path: std::rc::Rc::from(&b""[..]),
            pos: 0,
            next: None,
            done: false,
        }
    }

    /// Reads the next record into `raw`; its key, or None at the end.
    fn advance(&mut self) -> Result<Option<&Key>, ManifestError> {
        self.next = None;
        if self.done {
            return Ok(None);
        }
        let mut at = 0;
        if !read_record(&mut self.inp, &mut self.body, None, &mut at)? {
            self.done = true;
            return Ok(None);
        }
        self.raw.clear();
        write_varint(self.body.len() as u64, &mut self.raw);
        self.raw.extend_from_slice(&self.body);
        let key = if self.index == 0 {
            Key::Header
        } else {
            let rec: Record =
                postcard::from_bytes(&self.body).map_err(|source| ManifestError::Decode {
                    index: self.index,
                    source,
                })?;
            match rec {
                Record::Entry(e) => {
                    self.path = std::rc::Rc::from(e.path);
                    self.pos = 0;
                    Key::Body {
                        path: self.path.clone(),
                        pos: 0,
                        rank: 0,
                    }
                }
                Record::Extent { offset } => {
                    self.pos = offset;
                    Key::Body {
                        path: self.path.clone(),
                        pos: offset,
                        rank: 1,
                    }
                }
                Record::Chunk { len, .. } => {
                    let k = Key::Body {
                        path: self.path.clone(),
                        pos: self.pos,
                        rank: 2,
                    };
                    self.pos = self.pos.saturating_add(u64::from(len));
                    k
                }
                Record::Trailer(_) => {
                    self.done = true;
                    Key::Trailer
                }
            }
        };
        self.index += 1;
        self.next = Some(key);
        Ok(self.next.as_ref())
    }
}

/// Op writer: merges runs of the same op and batches literals.
struct OpWriter<W: Write> {
    out: W,
    run: Option<(u8, u64)>,
    literal: Vec<u8>,
    stats: DeltaStats,
    head: Vec<u8>,
}

impl<W: Write> OpWriter<W> {
    fn emit(&mut self, tag: u8, n: u64, payload: &[u8]) -> io::Result<()> {
        self.head.clear();
        self.head.push(tag);
        write_varint(n, &mut self.head);
        self.out.write_all(&self.head)?;
        self.out.write_all(payload)?;
        self.stats.delta_bytes += (self.head.len() + payload.len()) as u64;
        Ok(())
    }

    fn flush_run(&mut self) -> io::Result<()> {
        if let Some((tag, n)) = self.run.take() {
            self.emit(tag, n, &[])?;
        }
        Ok(())
    }

    fn flush_literal(&mut self) -> io::Result<()> {
        if !self.literal.is_empty() {
            let lit = std::mem::take(&mut self.literal);
            self.emit(LITERAL, lit.len() as u64, &lit)?;
            self.literal = lit;
            self.literal.clear();
        }
        Ok(())
    }

    fn base_op(&mut self, tag: u8) -> io::Result<()> {
        if tag == COPY {
            self.stats.copied += 1;
        } else {
            self.stats.skipped += 1;
        }
        // Ops apply in order: a pending literal goes out before a copy.
        if tag == COPY {
            self.flush_literal()?;
        }
        match &mut self.run {
            Some((t, n)) if *t == tag => *n += 1,
            _ => {
                self.flush_run()?;
                self.run = Some((tag, 1));
            }
        }
        Ok(())
    }

    fn literal(&mut self, raw: &[u8]) -> io::Result<()> {
        if matches!(self.run, Some((COPY, _))) {
            self.flush_run()?;
        }
        self.stats.literal_records += 1;
        self.stats.literal_bytes += raw.len() as u64;
        self.literal.extend_from_slice(raw);
        if self.literal.len() >= LITERAL_PIECE {
            // Skips write nothing, so a pending one may go out first.
            self.flush_run()?;
            self.flush_literal()?;
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<DeltaStats> {
        self.flush_run()?;
        self.flush_literal()?;
        self.out.flush()?;
        Ok(self.stats)
    }
}

/// Writes the delta that turns `base` (whose root is `base_root`) into
/// `new`. Both are whole manifests.
pub fn encode<B: BufRead, N: BufRead, W: Write>(
    base_root: &ChunkId,
    base: B,
    new: N,
    mut out: W,
) -> Result<DeltaStats, ManifestError> {
    out.write_all(&MAGIC)?;
    out.write_all(&base_root.0)?;
    let mut w = OpWriter {
        out,
        run: None,
        literal: Vec::new(),
        stats: DeltaStats {
            delta_bytes: 40,
            ..DeltaStats::default()
        },
        head: Vec::new(),
    };
    let mut b = RawRecords::new(base);
    let mut n = RawRecords::new(new);
    let mut bk = b.advance()?.cloned();
    let mut nk = n.advance()?.cloned();
    loop {
        match (&bk, &nk) {
            (None, None) => break,
            (Some(_), None) => {
                w.base_op(SKIP)?;
                bk = b.advance()?.cloned();
            }
            (None, Some(_)) => {
                w.literal(&n.raw)?;
                nk = n.advance()?.cloned();
            }
            (Some(x), Some(y)) => match key_cmp(x, y) {
                Ordering::Equal if b.raw == n.raw => {
                    w.base_op(COPY)?;
                    bk = b.advance()?.cloned();
                    nk = n.advance()?.cloned();
                }
                Ordering::Less => {
                    w.base_op(SKIP)?;
                    bk = b.advance()?.cloned();
                }
                Ordering::Greater => {
                    w.literal(&n.raw)?;
                    nk = n.advance()?.cloned();
                }
                Ordering::Equal => {
                    w.base_op(SKIP)?;
                    w.literal(&n.raw)?;
                    bk = b.advance()?.cloned();
                    nk = n.advance()?.cloned();
                }
            },
        }
    }
    Ok(w.finish()?)
}

#[cfg(any(test, feature = "net"))]
fn bad(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

#[cfg(any(test, feature = "net"))]
/// Rebuilds a manifest from its base and a delta streamed in through
/// [`Write`] (in pieces of any size). Call [`DeltaApplier::finish`] at the end.
pub struct DeltaApplier<B: BufRead, W: Write> {
    base: B,
    base_root: ChunkId,
    out: W,
    pending: Vec<u8>,
    started: bool,
    body: Vec<u8>,
    raw: Vec<u8>,
    /// Bytes written to `out`; capped by `max_out`.
    pub written: u64,
    max_out: u64,
}

#[cfg(any(test, feature = "net"))]
impl<B: BufRead, W: Write> DeltaApplier<B, W> {
    /// `base` is the manifest whose root is `base_root`; output beyond
    /// `max_out` bytes is refused (a hostile delta cannot fill a disk).
    pub fn new(base: B, base_root: ChunkId, out: W, max_out: u64) -> Self {
        DeltaApplier {
            base,
            base_root,
            out,
            pending: Vec::new(),
            started: false,
            body: Vec::new(),
            raw: Vec::new(),
            written: 0,
            max_out,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.written += bytes.len() as u64;
        if self.written > self.max_out {
            return Err(bad(format!(
                "manifest delta expands past {} bytes",
                self.max_out
            )));
        }
        self.out.write_all(bytes)
    }

    fn base_records(&mut self, n: u64, copy: bool) -> io::Result<()> {
        for _ in 0..n {
            let mut at = 0;
            let more = read_record(&mut self.base, &mut self.body, None, &mut at)
                .map_err(|e| bad(format!("manifest delta base: {e}")))?;
            if !more {
                return Err(bad("manifest delta reads past the end of its base"));
            }
            if copy {
                let mut raw = std::mem::take(&mut self.raw);
                raw.clear();
                write_varint(self.body.len() as u64, &mut raw);
                raw.extend_from_slice(&self.body);
                let r = self.put(&raw);
                self.raw = raw;
                r?;
            }
        }
        Ok(())
    }

    /// Applies every complete op in `pending`.
    fn run(&mut self) -> io::Result<()> {
        let mut at = 0;
        if !self.started {
            if self.pending.len() < 40 {
                return Ok(());
            }
            if self.pending[..8] != MAGIC {
                return Err(bad("not a manifest delta"));
            }
            if self.pending[8..40] != self.base_root.0 {
                return Err(bad("manifest delta is against another base"));
            }
            self.started = true;
            at = 40;
        }
        loop {
            let rest = &self.pending[at..];
            let Some((&tag, more)) = rest.split_first() else {
                break;
            };
            let Some((n, used)) = read_varint(more)? else {
                break;
            };
            let head = 1 + used;
            match tag {
                COPY | SKIP => {
                    at += head;
                    self.base_records(n, tag == COPY)?;
                }
                LITERAL => {
                    if n > MAX_LITERAL {
                        return Err(bad(format!("manifest delta literal of {n} bytes")));
                    }
                    let n =
                        usize::try_from(n).map_err(|_| bad("manifest delta literal too long"))?;
                    if rest.len() < head + n {
                        break;
                    }
                    let lit = self.pending[at + head..at + head + n].to_vec();
                    at += head + n;
                    self.put(&lit)?;
                }
                t => return Err(bad(format!("manifest delta op {t} unknown"))),
            }
        }
        self.pending.drain(..at);
        Ok(())
    }

    /// Ends the delta; returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.run()?;
        if !self.started || !self.pending.is_empty() {
            return Err(bad("manifest delta ends inside an op"));
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(any(test, feature = "net"))]
/// A LEB128 value at the start of `b` and its length; None when incomplete.
fn read_varint(b: &[u8]) -> io::Result<Option<(u64, usize)>> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate() {
        if i == 10 {
            return Err(bad("manifest delta count too long"));
        }
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((v, i + 1)));
        }
    }
    if b.len() >= 10 {
        return Err(bad("manifest delta count too long"));
    }
    Ok(None)
}

#[cfg(any(test, feature = "net"))]
impl<B: BufRead, W: Write> Write for DeltaApplier<B, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(data);
        self.run()?;
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::ChunkRef;
    use crate::manifest::{Entry, Header, Kind, ManifestWriter, Mode, slice_reader, validate};

    fn file(path: &str, size: u64) -> Entry {
        crate::manifest::tests::entry(path.as_bytes(), Kind::File, size)
    }

    fn chunk(offset: u64, len: u32, seed: u64) -> ChunkRef {
        ChunkRef {
            offset,
            len,
            id: ChunkId::of(&seed.to_le_bytes()),
        }
    }

    /// A manifest of `files` (path, chunks), with a root dir.
    fn manifest(files: &[(String, Vec<ChunkRef>)]) -> (Vec<u8>, ChunkId) {
        let mut w = ManifestWriter::new(Vec::new(), &Header::new(Mode::Tree, "t")).unwrap();
        let mut root = file("", 0);
        root.kind = Kind::Dir;
        root.mode = 0o755;
        w.write_entry(&root, &[]).unwrap();
        for (p, chunks) in files {
            let size = chunks.last().map_or(0, |c| c.end());
            w.write_entry(&file(p, size), chunks).unwrap();
        }
        let (bytes, t) = w.finish().unwrap();
        (bytes, t.root)
    }

    fn apply(base: &[u8], root: ChunkId, delta: &[u8], piece: usize) -> io::Result<Vec<u8>> {
        let mut a = DeltaApplier::new(slice_reader(base), root, Vec::new(), 1 << 30);
        for p in delta.chunks(piece.max(1)) {
            a.write_all(p)?;
        }
        a.finish()
    }

    fn db(n: u64, edit: impl Fn(u64) -> u64) -> Vec<ChunkRef> {
        (0..n).map(|i| chunk(i * 4096, 4096, edit(i))).collect()
    }

    #[test]
    fn in_place_edits_and_appends_cost_only_their_records() {
        let small: Vec<_> = (0..500)
            .map(|i| (format!("s{i:04}"), vec![chunk(0, 100, 10_000 + i)]))
            .collect();
        let mut old = small.clone();
        old.push(("db".into(), db(5000, |i| i)));
        old.push(("log".into(), db(100, |i| 50_000 + i)));
        old.sort_by(|a, b| path_cmp(a.0.as_bytes(), b.0.as_bytes()));
        let mut new = small.clone();
        // 1% of the db's chunks rewritten, the log grown, one file gone, two new.
        new.push((
            "db".into(),
            db(5000, |i| if i % 100 == 7 { i + 1_000_000 } else { i }),
        ));
        new.push(("log".into(), db(120, |i| 50_000 + i)));
        new.retain(|f| f.0 != "s0100");
        new.push(("szz1".into(), vec![chunk(0, 7, 1)]));
        new.push(("s0100x".into(), vec![chunk(0, 7, 2)]));
        new.sort_by(|a, b| path_cmp(a.0.as_bytes(), b.0.as_bytes()));
        let (base, broot) = manifest(&old);
        let (want, wroot) = manifest(&new);
        let mut delta = Vec::new();
        let st = encode(&broot, slice_reader(&base), slice_reader(&want), &mut delta).unwrap();
        assert_eq!(st.delta_bytes, delta.len() as u64);
        // 50 db chunks + 20 log chunks + log entry (size) + db entry stays +
        // 2 new files (entry + extent + chunk) + the trailer.
        assert!(st.literal_records < 90, "{st:?}");
        assert!(
            delta.len() * 10 < want.len(),
            "{} vs {}",
            delta.len(),
            want.len()
        );
        for piece in [1, 7, 4096, 1 << 20] {
            let got = apply(&base, broot, &delta, piece).unwrap();
            assert!(got == want, "rebuilt manifest differs (piece {piece})");
        }
        assert_eq!(validate(slice_reader(&want)).unwrap().root, wroot);
    }

    #[test]
    fn unrelated_or_empty_bases_still_rebuild_exactly() {
        let (a, aroot) = manifest(&[("x".into(), db(10, |i| i))]);
        let (b, _) = manifest(&[("y".into(), db(3, |i| i + 7))]);
        let (empty, eroot) = manifest(&[]);
        for (base, root) in [(&a, aroot), (&empty, eroot)] {
            let mut d = Vec::new();
            encode(&root, slice_reader(base), slice_reader(&b), &mut d).unwrap();
            assert!(apply(base, root, &d, 3).unwrap() == b);
        }
    }

    #[test]
    fn hostile_deltas_are_refused() {
        let (base, root) = manifest(&[("x".into(), db(10, |i| i))]);
        let mut d = MAGIC.to_vec();
        d.extend_from_slice(&root.0);
        // Copy past the end of the base.
        let mut past = d.clone();
        past.extend_from_slice(&[COPY, 100]);
        assert!(apply(&base, root, &past, 64).is_err());
        // Unknown op, wrong base, not a delta, a literal over the cap, a
        // delta that ends inside an op, a huge output.
        let mut unknown = d.clone();
        unknown.push(9);
        unknown.push(1);
        assert!(apply(&base, root, &unknown, 64).is_err());
        assert!(apply(&base, ChunkId::of(b"other"), &d, 64).is_err());
        assert!(apply(&base, root, b"DAFFEMF1 not a delta at all, no no no", 64).is_err());
        let mut lit = d.clone();
        lit.push(LITERAL);
        write_varint(MAX_LITERAL + 1, &mut lit);
        assert!(apply(&base, root, &lit, 64).is_err());
        let mut cut = d.clone();
        cut.extend_from_slice(&[LITERAL, 50, 1, 2]);
        assert!(apply(&base, root, &cut, 64).is_err());
        let mut big = d.clone();
        big.extend_from_slice(&[COPY, 5]);
        let mut a = DeltaApplier::new(slice_reader(&base), root, Vec::new(), 10);
        assert!(a.write_all(&big).is_err());
    }
}
