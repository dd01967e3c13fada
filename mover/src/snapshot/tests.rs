//! Push and pull end to end against the in-memory endpoint (which enforces
//! AWS's rules), on virtual time.

use super::api::{BlockPage, FetchedBlock, SnapshotApi, Started};
use super::block::{BLOCK_BYTES, BLOCK_SIZE, BlockHash};
use super::image::ImageReader;
use super::memory::MemoryEbs;
use super::rules::StartRequest;
use super::*;
use crate::aws::ApiError;
use crate::clock::ManualClock;
use crate::progress::NoProgress;
use crate::retry::ErrorKind;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: IndexStore,
    ebs: MemoryEbs,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    Fixture {
        store: IndexStore::new(root.join("state")),
        _dir: dir,
        root,
        ebs: MemoryEbs::new().with_page_size(3),
    }
}

fn transfer() -> TransferOptions {
    TransferOptions {
        concurrency: 4,
        clock: Arc::new(ManualClock::default()),
        ..TransferOptions::default()
    }
}

fn push_opts(parent: Option<&str>) -> PushOptions {
    PushOptions {
        parent: parent.map(str::to_owned),
        transfer: transfer(),
        ..PushOptions::default()
    }
}

fn pull_opts(base: Option<&str>) -> PullOptions {
    PullOptions {
        base: base.map(str::to_owned),
        transfer: transfer(),
    }
}

/// A sparse image of `size` bytes.
fn image(path: &Path, size: u64) {
    File::create(path).unwrap().set_len(size).unwrap();
}

/// Writes a block-sized pattern (partial at the end of the image).
fn fill_block(path: &Path, index: u64, byte: u8) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    let size = f.metadata().unwrap().len();
    let len = size.saturating_sub(index * BLOCK_BYTES).min(BLOCK_BYTES) as usize;
    let mut data = vec![byte; len];
    // Vary the content inside the block so equal bytes in two blocks still
    // make distinct data where the test wants it.
    data[0] = byte.wrapping_add(u8::try_from(index % 256).unwrap());
    f.write_all_at(&data, index * BLOCK_BYTES).unwrap();
}

fn zero_block_in_place(path: &Path, index: u64) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&vec![0u8; BLOCK_SIZE], index * BLOCK_BYTES)
        .unwrap();
}

fn puts(ebs: &MemoryEbs, snap: &str) -> Vec<(u64, bool)> {
    let mut v: Vec<_> = ebs
        .calls_of("PutSnapshotBlock")
        .into_iter()
        .filter(|c| c.snapshot_id == snap)
        .map(|c| (c.index.unwrap(), c.zero))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[test]
fn full_then_two_incremental_rounds_pull_back_identical() {
    let fx = fixture();
    let src = fx.root.join("src.img");
    // 40 blocks + a partial last block.
    let size = 40 * BLOCK_BYTES + 1234;
    image(&src, size);
    for i in [0, 3, 4, 17, 40] {
        fill_block(&src, i, 0x11);
    }
    let r0 = push(&fx.ebs, &fx.store, &src, &push_opts(None), &NoProgress).unwrap();
    assert_eq!(r0.volume_gib, 1);
    assert_eq!(
        r0.blocks_uploaded, 5,
        "a full push sends the non-zero blocks only"
    );
    assert_eq!(
        puts(&fx.ebs, &r0.snapshot_id),
        vec![(0, false), (3, false), (4, false), (17, false), (40, false)]
    );
    let copy0 = fs::read(&src).unwrap();

    // Round 1: change one block, zero one, write a new one.
    fill_block(&src, 3, 0x22);
    zero_block_in_place(&src, 4);
    fill_block(&src, 9, 0x33);
    let r1 = push(
        &fx.ebs,
        &fx.store,
        &src,
        &push_opts(Some(&r0.snapshot_id)),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(
        puts(&fx.ebs, &r1.snapshot_id),
        vec![(3, false), (4, true), (9, false)]
    );
    assert_eq!((r1.blocks_uploaded, r1.zero_blocks_uploaded), (3, 1));
    let copy1 = fs::read(&src).unwrap();

    // Round 2: the partial last block changes, block 0 is punched out.
    fill_block(&src, 40, 0x44);
    let f = OpenOptions::new().write(true).open(&src).unwrap();
    rustix::fs::fallocate(
        &f,
        rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
        0,
        BLOCK_BYTES,
    )
    .unwrap();
    let r2 = push(
        &fx.ebs,
        &fx.store,
        &src,
        &push_opts(Some(&r1.snapshot_id)),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(puts(&fx.ebs, &r2.snapshot_id), vec![(0, true), (40, false)]);
    let copy2 = fs::read(&src).unwrap();

    for (snap, want) in [(&r0, &copy0), (&r1, &copy1), (&r2, &copy2)] {
        let dest = fx.root.join(format!("{}.img", snap.snapshot_id));
        let pr = pull(
            &fx.ebs,
            &fx.store,
            &snap.snapshot_id,
            &dest,
            &pull_opts(None),
            &NoProgress,
        )
        .unwrap();
        assert!(pr.index_known);
        assert_eq!(&fs::read(&dest).unwrap(), want, "{}", snap.snapshot_id);
    }
}

#[test]
fn incremental_pull_writes_only_changes_and_keeps_holes() {
    let fx = fixture();
    let src = fx.root.join("src.img");
    image(&src, 64 * BLOCK_BYTES);
    for i in [1, 2, 10, 11, 12] {
        fill_block(&src, i, 0x5a);
    }
    let r0 = push(&fx.ebs, &fx.store, &src, &push_opts(None), &NoProgress).unwrap();
    fill_block(&src, 2, 0x77);
    zero_block_in_place(&src, 11);
    fill_block(&src, 30, 0x01);
    let r1 = push(
        &fx.ebs,
        &fx.store,
        &src,
        &push_opts(Some(&r0.snapshot_id)),
        &NoProgress,
    )
    .unwrap();

    let dest = fx.root.join("dest.img");
    pull(
        &fx.ebs,
        &fx.store,
        &r0.snapshot_id,
        &dest,
        &pull_opts(None),
        &NoProgress,
    )
    .unwrap();
    let gets_before = fx.ebs.calls_of("GetSnapshotBlock").len();
    let pr = pull(
        &fx.ebs,
        &fx.store,
        &r1.snapshot_id,
        &dest,
        &pull_opts(Some(&r0.snapshot_id)),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(
        (pr.blocks_fetched, pr.blocks_written, pr.blocks_zeroed),
        (2, 2, 1)
    );
    assert_eq!(fx.ebs.calls_of("GetSnapshotBlock").len() - gets_before, 2);
    assert_eq!(fs::read(&dest).unwrap(), fs::read(&src).unwrap());
    // Holes stay holes: only the data blocks are allocated.
    let ranges = ImageReader::open(&dest)
        .unwrap()
        .data_block_ranges()
        .unwrap();
    assert_eq!(ranges, vec![1..3, 10..11, 12..13, 30..31]);
}

#[test]
fn rules_are_enforced_before_any_request() {
    let fx = fixture();
    let src = fx.root.join("src.img");
    image(&src, BLOCK_BYTES);
    fill_block(&src, 0, 1);
    let r0 = push(&fx.ebs, &fx.store, &src, &push_opts(None), &NoProgress).unwrap();
    let calls = fx.ebs.calls().len();
    let opts = PushOptions {
        encrypted: true,
        ..push_opts(Some(&r0.snapshot_id))
    };
    let err = push(&fx.ebs, &fx.store, &src, &opts, &NoProgress).unwrap_err();
    assert!(
        matches!(
            err,
            PushError::Rule(rules::RuleError::ParentWithEncrypted { .. })
        ),
        "{err}"
    );
    // A parent we have no index for.
    let err = push(
        &fx.ebs,
        &fx.store,
        &src,
        &push_opts(Some("snap-0000000000000dead")),
        &NoProgress,
    )
    .unwrap_err();
    assert!(matches!(err, PushError::NoParentIndex { .. }), "{err}");
    assert_eq!(fx.ebs.calls().len(), calls, "no request was sent");
}

#[test]
fn throttling_and_5xx_are_retried_a_bounded_number_of_times() {
    let fx = fixture();
    let src = fx.root.join("src.img");
    image(&src, 30 * BLOCK_BYTES);
    for i in 0..30 {
        fill_block(&src, i, 3);
    }
    let n = AtomicU64::new(0);
    fx.ebs.inject(move |c| {
        let k = n.fetch_add(1, Ordering::SeqCst);
        match (c.op, k % 3) {
            ("PutSnapshotBlock", 0) => Some(ApiError::new(
                c.op,
                ErrorKind::Throttled,
                "RequestThrottledException",
                "slow down",
            )),
            ("PutSnapshotBlock" | "CompleteSnapshot", 1) => Some(ApiError::new(
                c.op,
                ErrorKind::Transient,
                "HTTP 500",
                "boom",
            )),
            _ => None,
        }
    });
    let r = push(&fx.ebs, &fx.store, &src, &push_opts(None), &NoProgress).unwrap();
    assert_eq!(r.blocks_uploaded, 30);
    assert!(r.retries > 0);
    // No call needs more than two retries in this pattern.
    assert!(r.retries <= 2 * 31, "{}", r.retries);
    let dest = fx.root.join("dest.img");
    pull(
        &fx.ebs,
        &fx.store,
        &r.snapshot_id,
        &dest,
        &pull_opts(None),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(fs::read(&dest).unwrap(), fs::read(&src).unwrap());
}

#[test]
fn a_permanent_error_names_snapshot_block_and_code_and_leaves_no_index() {
    let fx = fixture();
    let src = fx.root.join("src.img");
    image(&src, 10 * BLOCK_BYTES);
    for i in 0..10 {
        fill_block(&src, i, 9);
    }
    fx.ebs.inject(|c| {
        (c.op == "PutSnapshotBlock" && c.index == Some(5))
            .then(|| ApiError::new(c.op, ErrorKind::Permanent, "AccessDeniedException", "no"))
    });
    let err = push(&fx.ebs, &fx.store, &src, &push_opts(None), &NoProgress).unwrap_err();
    let snap = err.snapshot_id().unwrap().to_owned();
    let msg = err.to_string();
    assert!(
        msg.contains(&snap) && msg.contains("block 5") && msg.contains("AccessDeniedException"),
        "{msg}"
    );
    assert_eq!(err.aws_code(), Some("AccessDeniedException"));
    assert!(fx.ebs.calls_of("CompleteSnapshot").is_empty());
    assert!(fx.store.load(&snap).unwrap().is_none());
    // Exactly one attempt at the failing block.
    let tries = fx
        .ebs
        .calls_of("PutSnapshotBlock")
        .iter()
        .filter(|c| c.index == Some(5))
        .count();
    assert_eq!(tries, 1);
}

#[test]
fn a_snapshot_not_visible_yet_is_waited_for() {
    let fx = fixture();
    let src = fx.root.join("src.img");
    image(&src, 4 * BLOCK_BYTES);
    fill_block(&src, 2, 1);
    fx.ebs.hide_new_snapshots(3);
    let r = push(&fx.ebs, &fx.store, &src, &push_opts(None), &NoProgress).unwrap();
    assert_eq!(r.retries, 3);
    // The report's call count is every request the endpoint saw, retries in.
    assert_eq!(r.calls, fx.ebs.calls().len() as u64);
}

/// Corrupts the data of one block on the way back.
struct Corrupting<'a>(&'a MemoryEbs, u64);

impl SnapshotApi for Corrupting<'_> {
    fn start_snapshot(&self, req: &StartRequest) -> Result<Started, ApiError> {
        self.0.start_snapshot(req)
    }
    fn put_block(&self, s: &str, i: u64, d: &[u8], h: &BlockHash) -> Result<(), ApiError> {
        self.0.put_block(s, i, d, h)
    }
    fn complete_snapshot(&self, s: &str, n: u64, a: &BlockHash) -> Result<String, ApiError> {
        self.0.complete_snapshot(s, n, a)
    }
    fn list_blocks(&self, s: &str, t: Option<&str>) -> Result<BlockPage, ApiError> {
        self.0.list_blocks(s, t)
    }
    fn get_block(&self, s: &str, i: u64, t: &str) -> Result<FetchedBlock, ApiError> {
        let mut b = self.0.get_block(s, i, t)?;
        if i == self.1 {
            b.data[100] ^= 0xff;
        }
        Ok(b)
    }
}

#[test]
fn pull_verifies_every_block() {
    let fx = fixture();
    let src = fx.root.join("src.img");
    image(&src, 8 * BLOCK_BYTES);
    for i in [1, 6] {
        fill_block(&src, i, 4);
    }
    let r = push(&fx.ebs, &fx.store, &src, &push_opts(None), &NoProgress).unwrap();
    let bad = Corrupting(&fx.ebs, 6);
    let err = pull(
        &bad,
        &fx.store,
        &r.snapshot_id,
        &fx.root.join("d"),
        &pull_opts(None),
        &NoProgress,
    )
    .unwrap_err();
    assert!(matches!(err, PullError::Verify { .. }), "{err}");
    assert!(err.to_string().contains("block 6"), "{err}");
}

#[test]
fn a_snapshot_pushed_elsewhere_pulls_in_full_and_gets_an_index() {
    let fx = fixture();
    let src = fx.root.join("src.img");
    image(&src, 5 * BLOCK_BYTES);
    fill_block(&src, 3, 8);
    let r = push(&fx.ebs, &fx.store, &src, &push_opts(None), &NoProgress).unwrap();
    let other = IndexStore::new(fx.root.join("other-state"));
    let dest = fx.root.join("dest.img");
    let pr = pull(
        &fx.ebs,
        &other,
        &r.snapshot_id,
        &dest,
        &pull_opts(None),
        &NoProgress,
    )
    .unwrap();
    assert!(!pr.index_known);
    // Without our index the size is the volume's, whole GiB; the data matches.
    let got = fs::read(&dest).unwrap();
    assert_eq!(got.len() as u64, 1 << 30);
    assert_eq!(&got[..5 * BLOCK_SIZE], &fs::read(&src).unwrap()[..]);
    assert!(got[5 * BLOCK_SIZE..].iter().all(|&b| b == 0));
    assert_eq!(
        other
            .load(&r.snapshot_id)
            .unwrap()
            .unwrap()
            .data_block_count(),
        1
    );
    // An incremental pull needs both indexes.
    let err = pull(
        &fx.ebs,
        &IndexStore::new(fx.root.join("empty")),
        &r.snapshot_id,
        &dest,
        &pull_opts(Some(&r.snapshot_id)),
        &NoProgress,
    )
    .unwrap_err();
    assert!(matches!(err, PullError::NoIndex { .. }), "{err}");
}
