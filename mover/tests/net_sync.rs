//! The mover across the network: a real `Sender` on the dialing side, a real
//! `Receiver` behind an agent, mutual TLS on 127.0.0.1. Trees and images
//! arrive identical; a second round moves only the changes; a hostile sender's
//! manifest cannot make the receiver write outside its destination; a round
//! cut mid-transfer resumes and re-sends only what was not stored durably.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::common;
use crate::common::net::Net;
use mover::SourceError;
use mover::internals::chunk::ChunkRef;
use mover::internals::manifest::{Entry, Header, Kind, ManifestWriter, Mode};
use mover::internals::net::{ChunkSink, ServeEvent};
use mover::internals::net::{RoundRequest, TransferMode};
use mover::net::RoundPusher;
use mover::{ChunkId, ChunkSource, Source, Want};

fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    for i in 0..50 {
        std::fs::write(
            root.join(format!("sub/small-{i}")),
            common::bytes(100 + i * 10, i as u64),
        )
        .unwrap();
    }
    std::fs::write(root.join("app.db"), common::bytes(8 << 20, 7)).unwrap();
    std::fs::write(root.join("sub/deeper/log"), b"line\n".repeat(20_000)).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("nowhere", root.join("dangling")).unwrap();
    std::fs::hard_link(root.join("sub/small-1"), root.join("hard")).unwrap();
    common::write_sparse(
        &root.join("sparse"),
        64 << 20,
        &[(0, 4096), (32 << 20, 65536)],
        3,
    );
}

#[test]
fn a_tree_arrives_identical_and_a_second_round_moves_only_changes() {
    let net = Net::start();
    let src = net.dir.path().join("a/vol");
    make_tree(&src);
    let pusher = net.pusher(Source::Tree(src.clone()), "vol");
    let r1 = pusher.push(1, false, &mut |_| {}).unwrap();
    common::assert_same_tree(&src, &net.dst("vol"));
    assert!(r1.summary.bytes_fetched > 8 << 20);

    // Rewrite 16 pages of the database, append to the log.
    let db = std::fs::OpenOptions::new()
        .write(true)
        .open(src.join("app.db"))
        .unwrap();
    for k in 0..16u64 {
        db.write_all_at(&common::bytes(4096, 100 + k), k * 500_000)
            .unwrap();
    }
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(src.join("sub/deeper/log"))
        .unwrap();
    log.write_all(&b"more\n".repeat(1000)).unwrap();
    // Out of the racy window so the stat cache is trusted for the others.
    std::thread::sleep(Duration::from_millis(2100));
    let r2 = pusher.push(2, true, &mut |_| {}).unwrap();
    common::assert_same_tree(&src, &net.dst("vol"));
    assert!(
        r2.summary.bytes_fetched < 2 << 20,
        "round 2 fetched {} bytes",
        r2.summary.bytes_fetched
    );
    assert!(r2.wire_sent < r1.wire_sent / 4);
}

#[test]
fn rewritten_pages_travel_as_patches_not_whole_chunks() {
    let net = Net::start();
    let src = net.dir.path().join("a/pages");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("app.db"), common::bytes(16 << 20, 11)).unwrap();
    let pusher = net.pusher(Source::Tree(src.clone()), "pages");
    let r1 = pusher.push(1, false, &mut |_| {}).unwrap();
    // Nothing to patch in a first round: every chunk goes whole.
    assert_eq!(r1.carried, r1.summary.bytes_fetched);

    // 32 pages rewritten in place, 4 KiB aligned, spread over the file.
    let db = std::fs::OpenOptions::new()
        .write(true)
        .open(src.join("app.db"))
        .unwrap();
    for k in 0..32u64 {
        db.write_all_at(&common::bytes(4096, 500 + k), k * 509 * 1024 / 4096 * 4096)
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(2100));
    let r = pusher.push(2, false, &mut |_| {}).unwrap();
    common::assert_same_tree(&src, &net.dst("pages"));
    // Whole chunks (db-small class, 4 KiB average: two or three per page,
    // as a page straddles chunks and the cut points near it move) are what
    // was rebuilt...
    assert!(
        r.summary.bytes_fetched >= 32 * 8192,
        "{}",
        r.summary.bytes_fetched
    );
    // ...but the wire carried the pages: 32 x 4 KiB (patch blocks follow the
    // file's pages), plus framing and the manifest delta.
    assert!(
        r.wire_sent < 32 * 4096 + (32 << 10) && r.wire_sent * 3 < r.summary.bytes_fetched * 2,
        "sent {} for {} rebuilt",
        r.wire_sent,
        r.summary.bytes_fetched
    );
    // What the round carried counts the patches (the 32 pages and the
    // patches' own headers), not the chunks they rebuilt.
    assert!(
        (32 * 4096..32 * (4096 + 256)).contains(&r.carried),
        "carried {} for 32 pages",
        r.carried
    );
    assert_eq!(net.errors(), "");
}

/// Sum of the manifest bytes a push sent (delta or whole, every attempt).
fn manifest_bytes(pusher: &RoundPusher, round: u32) -> u64 {
    let mut sent = 0;
    pusher
        .push(round, false, &mut |e| {
            if let ServeEvent::ManifestSent { bytes } = e {
                sent += bytes;
            }
        })
        .unwrap();
    sent
}

#[test]
fn later_manifests_travel_as_deltas_and_a_wrong_base_costs_one_whole_manifest() {
    let net = Net::start();
    let src = net.dir.path().join("a/many");
    std::fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..3000u64 {
        std::fs::write(src.join(format!("d/f{i}")), common::bytes(50, i)).unwrap();
    }
    let pusher = net.pusher(Source::Tree(src.clone()), "many");
    let whole = manifest_bytes(&pusher, 1);
    assert!(whole > 100_000, "round 1 manifest: {whole} bytes");

    std::fs::write(src.join("d/f7"), b"changed").unwrap();
    std::fs::write(src.join("d/new"), b"new").unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    let delta = manifest_bytes(&pusher, 2);
    common::assert_same_tree(&src, &net.dst("many"));
    assert!(
        delta * 50 < whole,
        "round 2 manifest: {delta} bytes, whole {whole}"
    );

    // The sender's base for round 3 replaced by the manifest of another
    // tree: the delta rebuilds something else, the receiver's check catches
    // it and asks for the manifest whole; the round still lands.
    let other = net.dir.path().join("a/other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("x"), b"x").unwrap();
    net.pusher(Source::Tree(other), "other")
        .push(1, false, &mut |_| {})
        .unwrap();
    let sent_dir = |t: &str| net.dir.path().join("a-cache").join(t).join("sent");
    let only = |t: &str| {
        let mut v: Vec<_> = std::fs::read_dir(sent_dir(t))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
        v
    };
    let bases = only("many");
    assert_eq!(bases.len(), 2, "{bases:?}");
    let newest = bases[1].clone();
    std::fs::remove_file(&newest).unwrap();
    std::fs::copy(&only("other")[0], &newest).unwrap();
    std::fs::write(src.join("d/f8"), b"changed too").unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    let fallback = manifest_bytes(&pusher, 3);
    common::assert_same_tree(&src, &net.dst("many"));
    assert!(fallback > whole, "round 3 manifest: {fallback} bytes");

    // A damaged base (cut short) at the sender: it sends the manifest whole.
    let newest = only("many").pop().unwrap();
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::remove_file(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(src.join("d/f9"), b"changed again").unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    let whole4 = manifest_bytes(&pusher, 4);
    common::assert_same_tree(&src, &net.dst("many"));
    assert!(
        whole4 >= whole && whole4 < whole * 2,
        "round 4 manifest: {whole4} bytes"
    );
    assert_eq!(net.errors(), "");
}

#[test]
fn an_image_arrives_identical_with_its_holes() {
    let net = Net::start();
    let img = net.dir.path().join("a/disk.img");
    std::fs::create_dir_all(img.parent().unwrap()).unwrap();
    common::write_sparse(&img, 256 << 20, &[(0, 1 << 20), (100 << 20, 3 << 20)], 9);
    let pusher = net.pusher(Source::Image(img.clone()), "disk.img");
    pusher.push(1, true, &mut |_| {}).unwrap();
    let dst = net.dst("disk.img");
    assert_eq!(std::fs::read(&img).unwrap(), std::fs::read(&dst).unwrap());
    let blocks = std::fs::metadata(&dst).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(
        blocks.blocks() * 512 < 16 << 20,
        "holes were filled: {} bytes allocated",
        blocks.blocks() * 512
    );
}

/// A sender that lies: a hand-made manifest and chosen chunk bytes.
struct Hostile {
    manifest: Vec<u8>,
    root: ChunkId,
    data: HashMap<(u32, u64), Vec<u8>>,
}

impl Hostile {
    fn new(mode: Mode, entries: Vec<(Entry, Vec<u8>)>) -> Hostile {
        let mut w = ManifestWriter::new(Vec::new(), &Header::new(mode, "evil")).unwrap();
        let mut data = HashMap::new();
        for (i, (e, bytes)) in entries.into_iter().enumerate() {
            let chunks = if bytes.is_empty() {
                vec![]
            } else {
                vec![ChunkRef {
                    offset: 0,
                    len: u32::try_from(bytes.len()).unwrap(),
                    id: ChunkId(*blake3::hash(&bytes).as_bytes()),
                }]
            };
            w.write_entry(&e, &chunks).unwrap();
            data.insert((u32::try_from(i).unwrap(), 0), bytes);
        }
        let (manifest, trailer) = w.finish().unwrap();
        Hostile {
            manifest,
            root: trailer.root,
            data,
        }
    }
}

impl ChunkSource for Hostile {
    fn manifest(&mut self, out: &mut dyn Write) -> Result<ChunkId, SourceError> {
        out.write_all(&self.manifest)
            .map_err(SourceError::Manifest)?;
        Ok(self.root)
    }
    fn fetch(&mut self, wants: &[Want], sink: &mut ChunkSink<'_>) -> Result<(), SourceError> {
        for (i, w) in wants.iter().enumerate() {
            let d = self
                .data
                .get(&(w.entry, w.offset))
                .cloned()
                .unwrap_or_default();
            sink(i, d[..].into()).map_err(SourceError::Sink)?;
        }
        Ok(())
    }
}

fn entry(path: &[u8], kind: Kind, size: u64, target: &[u8]) -> Entry {
    Entry {
        path: path.to_vec(),
        kind,
        mode: if kind == Kind::Dir { 0o755 } else { 0o644 },
        uid: 0,
        gid: 0,
        mtime_ns: 0,
        size,
        rdev: 0,
        target: target.to_vec(),
        xattrs: vec![],
        class: 0,
    }
}

fn root_dir() -> (Entry, Vec<u8>) {
    (entry(b"", Kind::Dir, 0, b""), vec![])
}

fn file(path: &[u8], data: &[u8]) -> (Entry, Vec<u8>) {
    (
        entry(path, Kind::File, data.len() as u64, b""),
        data.to_vec(),
    )
}

/// Pushes a hostile round into target `t` and checks it failed and wrote
/// nothing outside the destination (`outside` is a sibling of every target).
fn refused(net: &Net, t: &str, mode: TransferMode, mut src: Hostile) -> String {
    let outside = net.dir.path().join("b/outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("keep"), b"precious").unwrap();
    let mut peer = net.peer();
    let req = RoundRequest {
        target: t.into(),
        mode,
        round: 1,
        final_round: false,
        token: String::new(),
    };
    let r = peer.push_round(&req, &mut src, &mut |_| {});
    assert!(r.is_err(), "hostile round into {t} was accepted");
    let mut names: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, vec!["keep"], "something was written outside");
    assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"precious");
    assert!(!Path::new("/etc/daffe-pwned").exists());
    net.errors()
}

#[test]
fn traversal_and_absolute_paths_are_refused() {
    let net = Net::start();
    for (i, path) in [
        &b"../outside/pwned"[..],
        b"/etc/daffe-pwned",
        b"a/../../outside/pwned",
        b"./x",
        b"a//b",
    ]
    .iter()
    .enumerate()
    {
        let h = Hostile::new(Mode::Tree, vec![root_dir(), file(path, b"pwned")]);
        refused(&net, &format!("t{i}"), TransferMode::Tree, h);
    }
}

#[test]
fn symlink_tricks_are_refused() {
    let net = Net::start();
    let outside = net.dir.path().join("b/outside");
    // A symlink to outside, then a file "through" it.
    let h = Hostile::new(
        Mode::Tree,
        vec![
            root_dir(),
            (
                entry(b"l", Kind::Symlink, 0, outside.to_str().unwrap().as_bytes()),
                vec![],
            ),
            file(b"l/pwned", b"pwned"),
        ],
    );
    refused(&net, "s1", TransferMode::Tree, h);
    // A hardlink whose target leaves the tree.
    let h = Hostile::new(
        Mode::Tree,
        vec![
            root_dir(),
            (entry(b"h", Kind::Hardlink, 0, b"../outside/keep"), vec![]),
        ],
    );
    refused(&net, "s2", TransferMode::Tree, h);
    // A directory that already is a symlink at the destination (planted
    // behind our back) must not be followed either.
    std::fs::create_dir_all(net.dst("s3")).unwrap();
    std::os::unix::fs::symlink(&outside, net.dst("s3").join("d")).unwrap();
    let h = Hostile::new(
        Mode::Tree,
        vec![
            root_dir(),
            (entry(b"d", Kind::Dir, 0, b""), vec![]),
            file(b"d/pwned", b"pwned"),
        ],
    );
    let outside_before = std::fs::read_dir(&outside).unwrap().count();
    let peer_result = {
        let mut peer = net.peer();
        let mut h = h;
        peer.push_round(
            &RoundRequest {
                target: "s3".into(),
                mode: TransferMode::Tree,
                round: 1,
                final_round: false,
                token: String::new(),
            },
            &mut h,
            &mut |_| {},
        )
    };
    // Whether the receiver replaces the planted symlink or refuses, nothing
    // may land in `outside`.
    let _ = peer_result;
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), outside_before);
    assert!(!outside.join("pwned").exists());
}

#[test]
fn lying_sizes_and_wrong_modes_are_refused() {
    let net = Net::start();
    // Manifest says 10 bytes; the entry's chunk says 5: extents pass size? No:
    // size smaller than its data.
    let mut e = file(b"f", b"0123456789");
    e.0.size = 5;
    let h = Hostile::new(Mode::Tree, vec![root_dir(), e]);
    refused(&net, "l1", TransferMode::Tree, h);
    // The data sent is not what the manifest's id says.
    let mut h = Hostile::new(Mode::Tree, vec![root_dir(), file(b"f", b"honest data")]);
    h.data.insert((1, 0), b"other bytes".to_vec());
    let errs = refused(&net, "l2", TransferMode::Tree, h);
    assert!(errs.contains("changed since its scan"), "{errs}");
    // A tree manifest pushed as an image round.
    let h = Hostile::new(Mode::Tree, vec![root_dir(), file(b"f", b"x")]);
    let errs = refused(&net, "l3.img", TransferMode::Image, h);
    assert!(errs.contains("mode"), "{errs}");
}

/// A `Sender` that drops the link after `limit` chunk bytes.
struct CutAfter {
    inner: mover::Sender,
    sent: Arc<AtomicU64>,
    limit: u64,
}

impl ChunkSource for CutAfter {
    fn manifest(&mut self, out: &mut dyn Write) -> Result<ChunkId, SourceError> {
        self.inner.manifest(out)
    }
    fn fetch(&mut self, wants: &[Want], sink: &mut ChunkSink<'_>) -> Result<(), SourceError> {
        let sent = self.sent.clone();
        let limit = self.limit;
        self.inner.fetch(wants, &mut |i, d| {
            if sent.fetch_add(d.len() as u64, Ordering::SeqCst) >= limit {
                return Err("link cut".into());
            }
            sink(i, d)
        })
    }
}

#[test]
fn a_cut_round_resumes_and_resends_only_what_was_not_stored() {
    let net = Net::start();
    let src = net.dir.path().join("a/big");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..4 {
        std::fs::write(src.join(format!("f{i}")), common::bytes(8 << 20, 50 + i)).unwrap();
    }
    let total = 32u64 << 20;
    let pusher = net.pusher(Source::Tree(src.clone()), "big");
    // First attempt: the sender dies after 20 MiB (its connection drops).
    let sender = mover::Sender::scan(
        &Source::Tree(src.clone()),
        &net.dir.path().join("cut-cache"),
        mover::internals::scan::ScanOptions {
            threads: 2,
            label: "big".into(),
            progress: Arc::new(mover::progress::NoProgress),
            changes: None,
            copy_into: None,
        },
    )
    .unwrap();
    let mut cut = CutAfter {
        inner: sender,
        sent: Arc::new(AtomicU64::new(0)),
        limit: 20 << 20,
    };
    {
        let mut peer = pusher.connect().unwrap();
        let req = RoundRequest {
            target: "big".into(),
            mode: TransferMode::Tree,
            round: 1,
            final_round: false,
            token: String::new(),
        };
        assert!(peer.push_round(&req, &mut cut, &mut |_| {}).is_err());
    }
    // The retry: only what was not checkpointed (1 MiB checkpoints) comes again.
    let r = pusher.push(1, false, &mut |_| {}).unwrap();
    common::assert_same_tree(&src, &net.dst("big"));
    assert!(
        r.summary.bytes_fetched <= total - (18 << 20),
        "resent {} of {} bytes",
        r.summary.bytes_fetched,
        total
    );
}
