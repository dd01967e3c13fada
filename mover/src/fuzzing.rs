//! Fuzz harnesses (feature `testing`): one function per decoder that takes
//! bytes from outside the process (a peer, or a file a crash or a bit flip
//! may have damaged). Each feeds arbitrary bytes to the decoder's real entry
//! point and checks the promises callers rely on; a panic, a hang or an
//! unbounded allocation is the bug. The cargo-fuzz targets in `fuzz/` and
//! the corpus replay test (`mover/tests/fuzz_corpus.rs`) call these same
//! functions, so a crasher found by the fuzzer stays a regression test on
//! stable.
//!
//! [`seeds`] builds real encoded inputs (manifests, deltas, journals, frames)
//! with the crate's own writers: the starting corpora.
//!
//! Where a decoder checks a hash over its input before parsing (journal
//! frames, the block index), a harness may take a "fix-up" mode that
//! computes the hash itself, so the fuzzer reaches the parser behind it; the
//! hash check alone is one comparison and is exercised by the raw mode.

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::chunk::{ChunkId, ChunkRef};
use crate::manifest::{self, Entry, Header, Kind, ManifestReader, ManifestWriter, Mode};
use crate::snapshot::block::BlockHash;
use crate::snapshot::{BlockIndex, IndexStore};
use crate::statcache::{self, StatReader, StatRec, StatWriter};

/// A harness: feeds one input to a decoder; panics on a bug.
pub type Harness = fn(&[u8]);

/// Every harness, by the name of its fuzz target and corpus directory.
pub const TARGETS: &[(&str, Harness)] = &[
    ("manifest", manifest),
    ("stat_cache", stat_cache),
    ("journal", journal),
    ("block_index", block_index),
    #[cfg(feature = "net")]
    ("manifest_delta", manifest_delta),
    #[cfg(feature = "net")]
    ("frame", frame),
    #[cfg(feature = "net")]
    ("message", message),
    #[cfg(feature = "net")]
    ("patch", patch),
    #[cfg(feature = "net")]
    ("zstd_chunk", zstd_chunk),
];

/// A scratch file for decoders that read files, unique per call (the replay
/// test runs harnesses on several threads); removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str, bytes: &[u8]) -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!("mover-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create fuzz scratch dir");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let sub = dir.join(n.to_string());
        std::fs::create_dir_all(&sub).expect("create fuzz scratch dir");
        let path = sub.join(name);
        std::fs::write(&path, bytes).expect("write fuzz scratch file");
        Scratch(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn dir(&self) -> &Path {
        self.0.parent().unwrap_or(&self.0)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.dir());
    }
}

/// A manifest as the receiver reads one: header, then every item to the
/// trailer. A valid manifest must also pass [`manifest::validate`] and name
/// the same trailer.
pub fn manifest(data: &[u8]) {
    let Ok(mut r) = ManifestReader::new(manifest::slice_reader(data)) else {
        return;
    };
    loop {
        match r.next() {
            Ok(Some(_)) => continue,
            Ok(None) => {
                let t = r.trailer().cloned();
                assert!(t.is_some(), "a finished manifest has a trailer");
                let again = manifest::validate(manifest::slice_reader(data));
                assert_eq!(again.ok(), t, "validate disagrees with the reader");
                return;
            }
            Err(_) => return,
        }
    }
}

/// A stat cache file: the footer names the manifest root it belongs to (the
/// harness opens it with that root so the records behind it are parsed),
/// then lookups in manifest order read the records.
pub fn stat_cache(data: &[u8]) {
    let f = Scratch::new("stat", data);
    let root = statcache::footer_root(f.path()).unwrap_or(ChunkId([0; 32]));
    let Some(mut r) = StatReader::open(f.path(), &root) else {
        return;
    };
    for path in [&b""[..], b"a", b"a/b", b"m", b"\xff\xff\xff\xff"] {
        match r.find(path) {
            Ok(Some(rec)) => assert_eq!(rec.path, path, "find returned another path"),
            Ok(None) => {}
            Err(_) => return,
        }
    }
}

/// A round's journal. First byte even: the rest is the file as is. Odd: the
/// rest is records `[len: u16 LE][body]`, framed here with correct checksums
/// so the fuzzer reaches the record decoder.
pub fn journal(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let mut out = Vec::new();
        let mut rest = rest;
        while rest.len() >= 2 {
            let n = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
            let body = &rest[2..2 + n];
            out.extend_from_slice(
                &u32::try_from(n)
                    .expect("n is at most u16::MAX")
                    .to_le_bytes(),
            );
            out.extend_from_slice(&blake3::hash(body).as_bytes()[..8]);
            out.extend_from_slice(body);
            rest = &rest[2 + n..];
        }
        out
    };
    let f = Scratch::new("journal", &file);
    let _ = crate::journal::read_journal(f.path());
}

/// A snapshot's block index file as [`IndexStore::load`] reads it. First
/// byte even: the rest is the file. Odd: the rest is the postcard body,
/// wrapped here in the magic and its SHA-256. A loaded index keeps the
/// promises pull relies on: blocks in order, inside the volume.
pub fn block_index(data: &[u8]) {
    use sha2::{Digest, Sha256};
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let mut out = crate::snapshot::index::MAGIC.to_vec();
        out.extend_from_slice(rest);
        out.extend_from_slice(&Sha256::digest(rest));
        out
    };
    let f = Scratch::new("fuzz.idx", &file);
    let store = IndexStore::new(f.dir());
    if let Ok(Some(ix)) = store.load("fuzz") {
        let mut last = None;
        for (i, _) in ix.data_blocks() {
            assert!(i < ix.volume_blocks(), "block {i} past the volume");
            assert!(last < Some(i), "blocks out of order");
            last = Some(i);
            let _ = ix.bytes_in_block(i);
        }
    }
}

/// A manifest delta applied to a base, as the network receiver does. Input:
/// `[base_len: u16 LE][base][split: u8][delta]`. The delta is written in
/// pieces of `split + 1` bytes (the receiver gets it frame by frame). The
/// base root is the one the delta names (so the fuzzer gets past that one
/// comparison). Output beyond the limit must be refused, not written.
#[cfg(feature = "net")]
pub fn manifest_delta(data: &[u8]) {
    use crate::manifest_delta::DeltaApplier;
    const MAX_OUT: u64 = 1 << 20;
    if data.len() < 3 {
        return;
    }
    let n = usize::from(u16::from_le_bytes([data[0], data[1]])).min(data.len() - 2);
    let base = &data[2..2 + n];
    let Some((&split, delta)) = data[2 + n..].split_first() else {
        return;
    };
    let mut root = [0u8; 32];
    if let Some(named) = delta.get(8..40) {
        root.copy_from_slice(named);
    }
    let mut a = DeltaApplier::new(base, ChunkId(root), Vec::new(), MAX_OUT);
    for piece in delta.chunks(usize::from(split) + 1) {
        if a.write_all(piece).is_err() {
            return;
        }
    }
    assert!(a.written <= MAX_OUT, "delta wrote past its limit");
    if let Ok(out) = a.finish() {
        assert!(out.len() as u64 <= MAX_OUT, "delta output past its limit");
        // The receiver validates the rebuilt manifest like any other.
        manifest(&out);
    }
}

/// A stream of frames as the connection reads them, each decoded as a
/// message (the connection's read loop).
#[cfg(feature = "net")]
pub fn frame(data: &[u8]) {
    use crate::net::frame::{MAX_FRAME, read_frame};
    let mut r = BufReader::new(data);
    let mut buf = Vec::new();
    while let Ok(k) = read_frame(&mut r, &mut buf) {
        assert!(buf.len() < MAX_FRAME, "frame body over the limit");
        let _ = crate::net::message::Message::decode(k, &buf);
    }
}

/// One message body: `[kind][body]`. A decoded message re-encodes to one
/// that decodes to the same message (the encoder's checks accept what the
/// decoder's accept).
#[cfg(feature = "net")]
pub fn message(data: &[u8]) {
    use crate::net::message::Message;
    let Some((&k, body)) = data.split_first() else {
        return;
    };
    let Ok(m) = Message::decode(k, body) else {
        return;
    };
    let mut head = Vec::new();
    let (k2, tail) = m.encode(&mut head).expect("a decoded message re-encodes");
    let mut wire = head.clone();
    if let Some(t) = tail {
        wire.extend_from_slice(t);
    }
    assert_eq!(k2, k, "kind changed in a round trip");
    let back = Message::decode(k2, &wire).expect("a re-encoded message decodes");
    assert_eq!(back, m, "round trip changed the message");
}

/// A chunk patch applied to the receiver's old bytes. Input:
/// `[offset: u16 LE][len: u16 LE][base_len: u16 LE][base][patch]`. A patch
/// that applies rebuilds exactly `len` bytes.
#[cfg(feature = "net")]
pub fn patch(data: &[u8]) {
    use crate::net::patch;
    if data.len() < 6 {
        return;
    }
    let offset = u64::from(u16::from_le_bytes([data[0], data[1]]));
    let len = usize::from(u16::from_le_bytes([data[2], data[3]]));
    let n = usize::from(u16::from_le_bytes([data[4], data[5]])).min(data.len() - 6);
    let (base, p) = data[6..].split_at(n);
    let mut out = Vec::new();
    if patch::apply(base, p, offset, len, &mut out).is_ok() {
        assert_eq!(out.len(), len, "patch rebuilt the wrong length");
        assert!(p.len() <= patch::max_len(offset, len), "patch over its max");
    }
}

/// A chunk payload as the receiver decodes it. Input: `[codec: u8]`
/// `[expected: u32 LE][spare: u16 LE][payload]`: `expected` is the want's
/// length (at most the protocol's chunk limit); the output buffer is reused
/// with `spare` KiB of capacity left over from an earlier chunk, as the
/// receiver's is. The decoder promises at most `expected` bytes.
#[cfg(feature = "net")]
pub fn zstd_chunk(data: &[u8]) {
    use crate::net::compress::ChunkCodec;
    use crate::net::message::{Codec, MAX_CHUNK_LEN};
    if data.len() < 7 {
        return;
    }
    let codec = [Codec::Raw, Codec::Zstd, Codec::Patch, Codec::PatchZstd][usize::from(data[0] % 4)];
    let expected = u32::from_le_bytes([data[1], data[2], data[3], data[4]]) % (MAX_CHUNK_LEN + 1);
    let spare = usize::from(u16::from_le_bytes([data[5], data[6]]) % 1024) * 1024;
    let payload = &data[7..];
    let mut out = Vec::with_capacity(spare);
    let mut codec_rx = ChunkCodec::new(true);
    if codec_rx.decode(codec, payload, expected, &mut out).is_ok() {
        assert!(
            out.len() <= expected as usize,
            "decoded {} bytes for a want of {expected}",
            out.len()
        );
    }
}

/// Real encoded inputs for every harness, as `(target, name, bytes)`: the
/// seed corpora (`cargo run -p mover --example fuzz_seeds --features
/// net,testing`).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let (base, base_root) = sample_manifest(&[("a/f", 100_000, 1), ("b", 10, 2)]);
    let (new, _) = sample_manifest(&[("a/f", 100_000, 3), ("a/g", 5000, 4), ("b", 10, 2)]);
    out.push(("manifest", "tree".into(), base.clone()));
    out.push(("manifest", "tree2".into(), new.clone()));
    out.push(("manifest", "image".into(), image_manifest()));

    out.push(("stat_cache", "small".into(), sample_stat_cache(&base_root)));
    out.push(("journal", "raw".into(), prefixed(0, &sample_journal())));
    out.push(("journal", "fixup".into(), journal_fixup_seed()));
    let (ix_file, ix_body) = sample_index();
    out.push(("block_index", "raw".into(), prefixed(0, &ix_file)));
    out.push(("block_index", "fixup".into(), prefixed(1, &ix_body)));

    #[cfg(feature = "net")]
    net_seeds(&mut out, &base, &base_root, &new);
    out
}

fn prefixed(b: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![b];
    v.extend_from_slice(rest);
    v
}

fn file_entry(path: &str, kind: Kind, size: u64) -> Entry {
    Entry {
        path: path.as_bytes().to_vec(),
        kind,
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        mtime_ns: 1_700_000_000_000_000_000,
        size,
        rdev: 0,
        target: Vec::new(),
        xattrs: Vec::new(),
        class: crate::ChunkClass::Db.code(),
    }
}

/// A tree manifest of files `(path, size, seed)` under a root and dir `a`.
fn sample_manifest(files: &[(&str, u64, u64)]) -> (Vec<u8>, ChunkId) {
    let mut w =
        ManifestWriter::new(Vec::new(), &Header::new(Mode::Tree, "seed")).expect("manifest header");
    w.write_entry(&file_entry("", Kind::Dir, 0), &[])
        .expect("entry");
    w.write_entry(&file_entry("a", Kind::Dir, 0), &[])
        .expect("entry");
    for &(path, size, seed) in files {
        let mut chunks = Vec::new();
        let mut at = 0;
        while at < size {
            let len = (size - at).min(16 * 1024);
            chunks.push(ChunkRef {
                offset: at,
                len: len as u32,
                id: ChunkId::of(&(seed + at).to_le_bytes()),
            });
            at += len;
        }
        w.write_entry(&file_entry(path, Kind::File, size), &chunks)
            .expect("entry");
    }
    let mut link = file_entry("c", Kind::Symlink, 0);
    link.target = b"a/f".to_vec();
    link.xattrs = vec![(b"user.k".to_vec(), b"v".to_vec())];
    w.write_entry(&link, &[]).expect("entry");
    let (bytes, trailer) = w.finish().expect("manifest trailer");
    (bytes, trailer.root)
}

fn image_manifest() -> Vec<u8> {
    let mut w =
        ManifestWriter::new(Vec::new(), &Header::new(Mode::Image, "img")).expect("manifest header");
    let e = file_entry("", Kind::Image, 3 * 4096);
    let chunks: Vec<ChunkRef> = (0..3)
        .map(|i| ChunkRef {
            offset: i * 4096,
            len: 4096,
            id: ChunkId::of(&i.to_le_bytes()),
        })
        .collect();
    w.write_entry(&e, &chunks).expect("entry");
    w.finish().expect("manifest trailer").0
}

fn sample_stat_cache(root: &ChunkId) -> Vec<u8> {
    let f = Scratch::new("stat-seed", &[]);
    let mut w = StatWriter::create(f.path()).expect("stat cache");
    for (i, p) in [&b""[..], b"a", b"a/b", b"m"].iter().enumerate() {
        w.push(&StatRec {
            path: p.to_vec(),
            dev: 2049,
            ino: 100 + i as u64,
            size: 4096 * i as u64,
            mtime_ns: 1_700_000_000_000_000_000,
            ctime_ns: 1_700_000_000_000_000_001,
            racy: i == 2,
        })
        .expect("stat record");
    }
    w.finish(root, false).expect("stat footer");
    std::fs::read(f.path()).expect("read stat cache")
}

fn journal_records() -> Vec<crate::journal::JRec> {
    use crate::journal::{JRec, Stored};
    let root = ChunkId::of(b"root");
    vec![
        JRec::Begin { root },
        JRec::Durable(vec![
            (Stored::Pack { offset: 0 }, 4096, ChunkId::of(b"c1")),
            (
                Stored::Stage {
                    entry: 3,
                    offset: 8192,
                },
                100,
                ChunkId::of(b"c2"),
            ),
        ]),
        JRec::Commit,
    ]
}

fn sample_journal() -> Vec<u8> {
    let f = Scratch::new("journal-seed", &[]);
    let mut w = crate::journal::FramedWriter::open(f.path(), true).expect("journal");
    for rec in journal_records() {
        w.push(&rec).expect("journal record");
    }
    w.flush(false).expect("journal flush");
    std::fs::read(f.path()).expect("read journal")
}

fn journal_fixup_seed() -> Vec<u8> {
    let mut v = vec![1];
    for rec in journal_records() {
        let body = postcard::to_stdvec(&rec).expect("journal record");
        v.extend_from_slice(
            &u16::try_from(body.len())
                .expect("a journal record seed is under 64 KiB")
                .to_le_bytes(),
        );
        v.extend_from_slice(&body);
    }
    v
}

/// A saved index file and its postcard body (without magic and checksum).
fn sample_index() -> (Vec<u8>, Vec<u8>) {
    let mut ix = BlockIndex::new("fuzz", Some("snap-parent"), 1, 3 * 512 * 1024 + 10);
    ix.push_data(0, BlockHash::of(b"zero")).expect("block");
    ix.push_data(2, BlockHash::of(b"two")).expect("block");
    let f = Scratch::new("unused", &[]);
    let store = IndexStore::new(f.dir());
    let path = store.save(&ix).expect("save index");
    let file = std::fs::read(path).expect("read index");
    let magic = crate::snapshot::index::MAGIC.len();
    let body = file[magic..file.len() - 32].to_vec();
    (file, body)
}

#[cfg(feature = "net")]
fn net_seeds(
    out: &mut Vec<(&'static str, String, Vec<u8>)>,
    base: &[u8],
    base_root: &ChunkId,
    new: &[u8],
) {
    use crate::net::compress::ChunkCodec;
    use crate::net::frame::write_frame;
    use crate::net::message::{
        ChunkHeader, Codec, ErrorCode, Hello, MAGIC, Message, PROTOCOL_VERSION, PatchWant,
        RoundRequest, RoundSummary, TransferMode, WireError, WireWant,
    };
    use crate::net::patch;

    // Manifest delta: base and the delta that turns it into `new`.
    let mut delta = Vec::new();
    crate::manifest_delta::encode(
        base_root,
        manifest::slice_reader(base),
        manifest::slice_reader(new),
        &mut delta,
    )
    .expect("delta");
    for split in [255u8, 7] {
        let mut v = u16::try_from(base.len())
            .expect("the delta seed base is under 64 KiB")
            .to_le_bytes()
            .to_vec();
        v.extend_from_slice(base);
        v.push(split);
        v.extend_from_slice(&delta);
        out.push(("manifest_delta", format!("split{split}"), v));
    }

    // Messages, and the same messages as one frame stream.
    let want = WireWant {
        entry: 2,
        offset: 4096,
        len: 16384,
        id: [7; 32],
    };
    let msgs = vec![
        Message::Hello(Hello {
            magic: MAGIC,
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            node: "node-a".into(),
            features: 3,
        }),
        Message::Error(WireError {
            code: ErrorCode::Busy,
            message: "busy".into(),
        }),
        Message::Control(b"{\"op\":\"preflight\"}".to_vec()),
        Message::StartRound(RoundRequest {
            target: "vol1".into(),
            mode: TransferMode::Tree,
            round: 1,
            final_round: false,
            token: String::new(),
        }),
        Message::GetManifest,
        Message::GetManifestSince { base: [9; 32] },
        Message::ManifestData(base[..base.len().min(64)].to_vec()),
        Message::ManifestDelta(delta[..delta.len().min(64)].to_vec()),
        Message::ManifestEnd { root: [1; 32] },
        Message::Fetch(vec![want, want]),
        Message::FetchPatched(vec![PatchWant {
            want,
            sums: vec![[5; 8]; 4],
        }]),
        Message::Chunk {
            header: ChunkHeader {
                index: 0,
                codec: Codec::Raw,
            },
            data: b"chunk bytes".to_vec(),
        },
        Message::FetchEnd,
        Message::RoundDone(RoundSummary {
            files: 3,
            chunks_total: 9,
            root: [4; 32],
            ..RoundSummary::default()
        }),
        Message::Bye,
    ];
    let mut stream = Vec::new();
    let mut scratch = Vec::new();
    for m in &msgs {
        let mut head = Vec::new();
        let (k, tail) = m.encode(&mut head).expect("encode message");
        let tail = tail.unwrap_or(&[]);
        let mut one = vec![k];
        one.extend_from_slice(&head);
        one.extend_from_slice(tail);
        out.push(("message", m.name().to_lowercase(), one));
        write_frame(&mut stream, k, &[&head, tail], &mut scratch).expect("frame");
    }
    out.push(("frame", "session".into(), stream));

    // A patch of a 10 KiB chunk at an unaligned offset, one block changed.
    let old: Vec<u8> = (0..10_240u32).map(|i| (i % 251) as u8).collect();
    let mut new_chunk = old.clone();
    new_chunk[5000] ^= 0xff;
    let offset = 1000u64;
    let mut p = Vec::new();
    assert!(patch::encode(
        &new_chunk,
        offset,
        &patch::block_sums(&old, offset),
        &mut p
    ));
    let mut v = u16::try_from(offset)
        .expect("the patch seed offset is under 64 KiB")
        .to_le_bytes()
        .to_vec();
    v.extend_from_slice(
        &u16::try_from(new_chunk.len())
            .expect("the patch seed chunk is under 64 KiB")
            .to_le_bytes(),
    );
    v.extend_from_slice(
        &u16::try_from(old.len())
            .expect("the patch seed chunk is under 64 KiB")
            .to_le_bytes(),
    );
    v.extend_from_slice(&old);
    v.extend_from_slice(&p);
    out.push(("patch", "one-block".into(), v));

    // Chunk payloads: zstd-compressed and raw, with their wants' lengths.
    let text = b"log line 42: all is well\n".repeat(200);
    let mut tx = ChunkCodec::new(true);
    for (name, raw) in [("zstd", &text[..]), ("raw", &old[..64])] {
        let (codec, wire) = tx.encode(raw).expect("compress");
        let code = match codec {
            Codec::Raw => 0u8,
            Codec::Zstd => 1,
            Codec::Patch => 2,
            Codec::PatchZstd => 3,
        };
        let mut v = vec![code];
        v.extend_from_slice(
            &u32::try_from(raw.len())
                .expect("a seed chunk is under 4 GiB")
                .to_le_bytes(),
        );
        v.extend_from_slice(&0u16.to_le_bytes());
        v.extend_from_slice(wire);
        out.push(("zstd_chunk", name.into(), v));
    }
}
