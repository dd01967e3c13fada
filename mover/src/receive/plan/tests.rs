//! Table tests of the plan: manifests built in memory, validity and the
//! destination's facts given by hand, every decision recorded.

use super::*;
use crate::chunk::ChunkId;
use crate::manifest::{ManifestWriter, Mode};

/// A manifest held in memory.
struct Bytes(Vec<u8>);

impl StoredManifest for Bytes {
    type Reader = std::io::Cursor<Vec<u8>>;
    fn open(&self) -> Result<Self::Reader, ReceiveError> {
        Ok(std::io::Cursor::new(self.0.clone()))
    }
    fn open_at(&self, pos: u64) -> Result<Self::Reader, ReceiveError> {
        let mut c = std::io::Cursor::new(self.0.clone());
        c.set_position(pos);
        Ok(c)
    }
}

/// The destination's facts, by hand.
#[derive(Default)]
struct FakeDest {
    names: Vec<(&'static str, Vec<&'static str>)>,
    linked: Vec<(&'static str, &'static str)>,
}

impl DestView for FakeDest {
    fn names(&self, dir: &[u8]) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = self
            .names
            .iter()
            .find(|(d, _)| d.as_bytes() == dir)
            .map(|(_, n)| n.iter().map(|s| s.as_bytes().to_vec()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
    fn same_inode(&self, a: &[u8], b: &[u8]) -> bool {
        self.linked
            .iter()
            .any(|(x, y)| x.as_bytes() == a && y.as_bytes() == b)
    }
}

/// Every decision, as a line.
#[derive(Default)]
struct Recorder {
    steps: Vec<String>,
    changes: Vec<Change>,
}

fn p(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl PlanSink for Recorder {
    fn op(&mut self, op: Op) -> Result<(), ReceiveError> {
        self.steps.push(match op {
            Op::Delete { path } => format!("delete {}", p(&path)),
            Op::Mkdir { path } => format!("mkdir {}", p(&path)),
            Op::Place { stage, entry } => format!("place {stage} {}", p(&entry.path)),
            Op::PatchWrite {
                path,
                offset,
                len,
                pack,
                ..
            } => format!("patchwrite {} {offset}+{len} pack {pack}", p(&path)),
            Op::PatchEnd { entry, holes } => format!("patchend {} holes {holes:?}", p(&entry.path)),
            Op::Meta { entry } => format!("meta {}", p(&entry.path)),
            Op::Link { path, target } => format!("link {} -> {}", p(&path), p(&target)),
            Op::DirMeta { entry } => format!("dirmeta {}", p(&entry.path)),
        });
        Ok(())
    }
    fn special(&mut self, entry: u32, e: &Entry) -> Result<(), ReceiveError> {
        self.steps.push(format!("special {entry} {}", p(&e.path)));
        Ok(())
    }
    fn stage_chunk(&mut self, entry: u32, c: ChunkRef) -> Result<(), ReceiveError> {
        self.steps
            .push(format!("need {entry} {}+{} stage", c.offset, c.len));
        Ok(())
    }
    fn stage_end(&mut self, entry: u32, _e: &Entry) -> Result<(), ReceiveError> {
        self.steps.push(format!("staged {entry}"));
        Ok(())
    }
    fn patch_chunk(
        &mut self,
        entry: u32,
        _path: &[u8],
        c: ChunkRef,
        pack: u64,
        base: u32,
    ) -> Result<(), ReceiveError> {
        self.steps.push(format!(
            "need {entry} {}+{} pack {pack} base {base}",
            c.offset, c.len
        ));
        Ok(())
    }
    fn change(&mut self, c: &Change) {
        self.changes.push(c.clone());
    }
}

/// An entry of a test manifest: path, kind, size, chunks as (offset, len,
/// content tag), and a mode (to change metadata only).
#[derive(Clone)]
struct E {
    path: &'static str,
    kind: Kind,
    size: u64,
    chunks: Vec<(u64, u32, u8)>,
    mode: u32,
    target: &'static str,
}

fn dir(path: &'static str) -> E {
    E {
        path,
        kind: Kind::Dir,
        size: 0,
        chunks: vec![],
        mode: 0o755,
        target: "",
    }
}

fn file(path: &'static str, chunks: &[(u64, u32, u8)]) -> E {
    let size = chunks.last().map_or(0, |c| c.0 + u64::from(c.1));
    E {
        path,
        kind: Kind::File,
        size,
        chunks: chunks.to_vec(),
        mode: 0o644,
        target: "",
    }
}

fn symlink(path: &'static str, target: &'static str) -> E {
    E {
        path,
        kind: Kind::Symlink,
        size: 0,
        chunks: vec![],
        mode: 0o777,
        target,
    }
}

fn hardlink(path: &'static str, target: &'static str) -> E {
    E {
        path,
        kind: Kind::Hardlink,
        size: 0,
        chunks: vec![],
        mode: 0o644,
        target,
    }
}

impl E {
    fn mode(mut self, mode: u32) -> E {
        self.mode = mode;
        self
    }
    fn size(mut self, size: u64) -> E {
        self.size = size;
        self
    }
}

fn manifest(mode: Mode, entries: &[E]) -> Bytes {
    let mut w = ManifestWriter::new(Vec::new(), &Header::new(mode, "t")).unwrap();
    for e in entries {
        let mut entry = crate::manifest::tests::entry(e.path.as_bytes(), e.kind, e.size);
        entry.mode = e.mode;
        entry.target = e.target.as_bytes().to_vec();
        let chunks: Vec<ChunkRef> = e
            .chunks
            .iter()
            .map(|&(offset, len, tag)| ChunkRef {
                offset,
                len,
                id: ChunkId::of(&[tag]),
            })
            .collect();
        w.write_entry(&entry, &chunks).unwrap();
    }
    Bytes(w.finish().unwrap().0)
}

/// Validity of `n` applied entries: all valid and single except those named.
fn validity(n: usize, invalid: &[usize], linked: &[usize]) -> Validity {
    Validity {
        valid: (0..n).map(|i| !invalid.contains(&i)).collect(),
        single: (0..n).map(|i| !linked.contains(&i)).collect(),
        all_valid: invalid.is_empty(),
        ..Validity::default()
    }
}

struct Case {
    name: &'static str,
    old: Option<Vec<E>>,
    invalid: Vec<usize>,
    linked: Vec<usize>,
    dest: FakeDest,
    new: Vec<E>,
    steps: &'static [&'static str],
}

fn run(mode: Mode, c: &Case, device: Option<Device>) -> Result<(Recorder, Counts), ReceiveError> {
    let new = manifest(mode, &c.new);
    let old = c.old.as_ref().map(|o| manifest(mode, o));
    let v = match &c.old {
        Some(o) => validity(o.len(), &c.invalid, &c.linked),
        None => Validity::default(),
    };
    let mut rec = Recorder::default();
    let counts = plan(
        &PlanInput {
            new: &new,
            applied: old.as_ref(),
            validity: &v,
            dest: &c.dest,
            device,
            pack_len: 0,
        },
        &mut rec,
    )?;
    Ok((rec, counts))
}

/// 64 KiB chunks: a 256 KiB file of four, A B C D.
const ABCD: [(u64, u32, u8); 4] = [
    (0, 65536, b'A'),
    (65536, 65536, b'B'),
    (131_072, 65536, b'C'),
    (196_608, 65536, b'D'),
];

#[test]
fn tree_rounds_plan_as_the_design_says() {
    let cases = vec![
        Case {
            name: "first round into an empty destination: everything staged",
            old: None,
            invalid: vec![],
            linked: vec![],
            dest: FakeDest::default(),
            new: vec![
                dir(""),
                dir("d"),
                file("d/f", &[(0, 10, 1)]),
                symlink("l", "d/f"),
            ],
            steps: &[
                "mkdir d",
                "need 2 0+10 stage",
                "staged 2",
                "place 2 d/f",
                "dirmeta d",
                "special 3 l",
                "place 3 l",
                "dirmeta ",
            ],
        },
        Case {
            name: "first round into a non-empty destination: unknown names go",
            old: None,
            invalid: vec![],
            linked: vec![],
            dest: FakeDest {
                names: vec![("", vec!["stray", "f"])],
                ..FakeDest::default()
            },
            new: vec![dir(""), file("f", &[(0, 10, 1)])],
            steps: &[
                "need 1 0+10 stage",
                "staged 1",
                "place 1 f",
                "delete stray",
                "dirmeta ",
            ],
        },
        Case {
            name: "unchanged round: nothing at all",
            old: Some(vec![dir(""), file("f", &ABCD)]),
            invalid: vec![],
            linked: vec![],
            dest: FakeDest::default(),
            new: vec![dir(""), file("f", &ABCD)],
            steps: &[],
        },
        Case {
            name: "metadata only",
            old: Some(vec![dir(""), file("f", &ABCD)]),
            invalid: vec![],
            linked: vec![],
            dest: FakeDest::default(),
            new: vec![dir(""), file("f", &ABCD).mode(0o600)],
            steps: &["meta f"],
        },
        Case {
            name: "one chunk of four changed: patched in place through the pack",
            old: Some(vec![dir(""), file("f", &ABCD)]),
            invalid: vec![],
            linked: vec![],
            dest: FakeDest::default(),
            new: vec![
                dir(""),
                file("f", &[ABCD[0], (65536, 65536, b'X'), ABCD[2], ABCD[3]]),
            ],
            steps: &[
                "need 1 65536+65536 pack 0 base 65536",
                "patchwrite f 65536+65536 pack 0",
                "patchend f holes []",
                "dirmeta ",
            ],
        },
        Case {
            name: "half changed, same size: patched in place (a page-rewritten file)",
            old: Some(vec![dir(""), file("f", &ABCD)]),
            invalid: vec![],
            linked: vec![],
            dest: FakeDest::default(),
            new: vec![
                dir(""),
                file(
                    "f",
                    &[
                        ABCD[0],
                        (65536, 65536, b'X'),
                        (131_072, 65536, b'Y'),
                        ABCD[3],
                    ],
                ),
            ],
            steps: &[
                "need 1 65536+65536 pack 0 base 65536",
                "patchwrite f 65536+65536 pack 0",
                "need 1 131072+65536 pack 65536 base 65536",
                "patchwrite f 131072+65536 pack 65536",
                "patchend f holes []",
                "dirmeta ",
            ],
        },
        Case {
            name: "grown with most pages rewritten: patched in place (a table growing under updates)",
            old: Some(vec![dir(""), file("f", &ABCD)]),
            invalid: vec![],
            linked: vec![],
            dest: FakeDest::default(),
            new: vec![
                dir(""),
                file(
                    "f",
                    &[
                        (0, 65536, b'X'),
                        (65536, 65536, b'Y'),
                        (131_072, 65536, b'Z'),
                        ABCD[3],
                        (262_144, 65536, b'W'),
                    ],
                ),
            ],
            steps: &[
                "need 1 0+65536 pack 0 base 65536",
                "patchwrite f 0+65536 pack 0",
                "need 1 65536+65536 pack 65536 base 65536",
                "patchwrite f 65536+65536 pack 65536",
                "need 1 131072+65536 pack 131072 base 65536",
                "patchwrite f 131072+65536 pack 131072",
                // Past the old end: nothing to patch from.
                "need 1 262144+65536 pack 196608 base 0",
                "patchwrite f 262144+65536 pack 196608",
                "patchend f holes []",
                "dirmeta ",
            ],
        },
        Case {
            name: "a file with two links is never patched in place",
            old: Some(vec![dir(""), file("f", &ABCD)]),
            invalid: vec![],
            linked: vec![1],
            dest: FakeDest::default(),
            new: vec![
                dir(""),
                file("f", &[ABCD[0], (65536, 65536, b'X'), ABCD[2], ABCD[3]]),
            ],
            steps: &[
                "need 1 0+65536 stage",
                "need 1 65536+65536 stage",
                "need 1 131072+65536 stage",
                "need 1 196608+65536 stage",
                "staged 1",
                "place 1 f",
                "dirmeta ",
            ],
        },
        Case {
            name: "an invalid file is staged even if its manifest record is the same",
            old: Some(vec![dir(""), file("f", &ABCD)]),
            invalid: vec![1],
            linked: vec![],
            dest: FakeDest::default(),
            new: vec![dir(""), file("f", &ABCD)],
            steps: &[
                "need 1 0+65536 stage",
                "need 1 65536+65536 stage",
                "need 1 131072+65536 stage",
                "need 1 196608+65536 stage",
                "staged 1",
                "place 1 f",
                "dirmeta ",
            ],
        },
        Case {
            name: "appended and truncated: patched, tail hole kept",
            old: Some(vec![dir(""), file("f", &ABCD)]),
            invalid: vec![],
            linked: vec![],
            dest: FakeDest::default(),
            new: vec![dir(""), file("f", &ABCD).size(300_000)],
            steps: &["patchend f holes [(262144, 37856)]", "dirmeta "],
        },
        Case {
            name: "removed entries and a type change",
            old: Some(vec![
                dir(""),
                dir("a"),
                file("a/x", &[(0, 5, 1)]),
                file("b", &[(0, 5, 2)]),
                dir("c"),
            ]),
            invalid: vec![],
            linked: vec![],
            dest: FakeDest::default(),
            new: vec![dir(""), dir("b"), file("c", &[(0, 5, 2)])],
            steps: &[
                "delete a",
                "delete a/x",
                "delete b",
                "mkdir b",
                "dirmeta b",
                "delete c",
                "need 2 0+5 stage",
                "staged 2",
                "place 2 c",
                "dirmeta ",
            ],
        },
        Case {
            name: "a directory changed behind our back is listed and cleaned",
            old: Some(vec![dir(""), dir("d"), file("d/keep", &[(0, 5, 1)])]),
            invalid: vec![1],
            linked: vec![],
            dest: FakeDest {
                names: vec![("d", vec!["keep", "junk"])],
                ..FakeDest::default()
            },
            new: vec![dir(""), dir("d"), file("d/keep", &[(0, 5, 1)])],
            steps: &["delete d/junk", "dirmeta d", "dirmeta "],
        },
        Case {
            name: "hardlinks: kept while still one inode, linked again otherwise",
            old: Some(vec![
                dir(""),
                file("a", &[(0, 5, 1)]),
                hardlink("b", "a"),
                hardlink("c", "a"),
            ]),
            invalid: vec![],
            linked: vec![1],
            dest: FakeDest {
                linked: vec![("b", "a")],
                ..FakeDest::default()
            },
            new: vec![
                dir(""),
                file("a", &[(0, 5, 1)]),
                hardlink("b", "a"),
                hardlink("c", "a"),
            ],
            steps: &["link c -> a", "dirmeta "],
        },
        Case {
            name: "a changed symlink is staged, an unchanged one kept",
            old: Some(vec![dir(""), symlink("l", "x"), symlink("m", "y")]),
            invalid: vec![],
            linked: vec![],
            dest: FakeDest::default(),
            new: vec![dir(""), symlink("l", "x2"), symlink("m", "y")],
            steps: &["special 1 l", "place 1 l", "dirmeta "],
        },
    ];
    for c in &cases {
        let (rec, _) = run(Mode::Tree, c, None).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(rec.steps, c.steps, "{}", c.name);
    }
}

#[test]
fn counts_and_changes_describe_the_round() {
    let c = Case {
        name: "mixed",
        old: Some(vec![
            dir(""),
            file("gone", &[(0, 7, 9)]),
            file("meta", &ABCD),
            file("patched", &ABCD),
            file("restaged", &[(0, 5, 1)]),
        ]),
        invalid: vec![],
        linked: vec![],
        dest: FakeDest::default(),
        new: vec![
            dir(""),
            file("meta", &ABCD).mode(0o600),
            file("new", &[(0, 3, 3), (3, 4, 4)]),
            file(
                "patched",
                &[ABCD[0], ABCD[1], ABCD[2], (196_608, 65536, b'Z')],
            ),
            // Shrunk and rewritten whole: staged anew (a grown one would be
            // patched, as a table growing under updates is).
            file("restaged", &[(0, 4, 2)]),
        ],
        steps: &[],
    };
    let (rec, counts) = run(Mode::Tree, &c, None).unwrap();
    assert_eq!(
        counts,
        Counts {
            files_staged: 2,
            files_patched: 1,
            meta_only: 1,
            in_place: 3,
        }
    );
    let got: Vec<(Action, String, u64, u64)> = rec
        .changes
        .iter()
        .map(|c| (c.action, c.display_path(), c.size, c.data_bytes))
        .collect();
    assert_eq!(
        got,
        vec![
            (Action::Delete, "gone".into(), 7, 0),
            (Action::Metadata, "meta".into(), 262_144, 0),
            (Action::Create, "new".into(), 7, 7),
            (Action::Patch, "patched".into(), 262_144, 65536),
            (Action::Replace, "restaged".into(), 4, 4),
        ]
    );
    let mut totals = crate::receive::Preview::default();
    rec.changes.iter().for_each(|c| totals.add(c));
    assert_eq!(totals.created.entries, 1);
    assert_eq!(totals.changed.entries, 3);
    assert_eq!(totals.changed.bytes, 65536 + 4);
    assert_eq!(totals.deleted.bytes, 7);
}

#[test]
fn a_block_device_is_always_patched_and_must_hold_the_image() {
    let image = |chunks: &[(u64, u32, u8)]| E {
        path: "",
        kind: Kind::Image,
        size: 262_144,
        chunks: chunks.to_vec(),
        mode: 0o644,
        target: "",
    };
    let c = Case {
        name: "device, first round",
        old: None,
        invalid: vec![],
        linked: vec![],
        dest: FakeDest::default(),
        new: vec![image(&ABCD[..2])],
        steps: &[],
    };
    let dev = |size| {
        Some(Device {
            path: "/dev/x".into(),
            size,
        })
    };
    let (rec, counts) = run(Mode::Image, &c, dev(1 << 20)).unwrap();
    assert_eq!(
        rec.steps,
        [
            "need 0 0+65536 pack 0 base 0",
            "patchwrite  0+65536 pack 0",
            "need 0 65536+65536 pack 65536 base 0",
            "patchwrite  65536+65536 pack 65536",
            "patchend  holes [(131072, 131072)]",
        ]
    );
    assert_eq!(counts.files_patched, 1);
    match run(Mode::Image, &c, dev(4096)) {
        Err(ReceiveError::DeviceTooSmall { have, need, .. }) => {
            assert_eq!((have, need), (4096, 262_144));
        }
        other => panic!(
            "a small device must be refused: {:?}",
            other.map(|r| r.0.steps)
        ),
    }
}
