//! An in-memory EBS direct-API endpoint that enforces AWS's real rules, for
//! unit tests: where moto accepts anything, this refuses what AWS refuses.
//!
//! Enforced: 524288-byte blocks; a SHA-256 checksum (algorithm SHA256) that
//! matches the data; block indexes inside the volume; ParentSnapshotId with
//! Encrypted refused; a parent must exist and be completed; no puts after
//! CompleteSnapshot; ChangedBlocksCount equal to the distinct blocks written;
//! the LINEAR aggregated checksum; reads only from completed snapshots; block
//! tokens checked; lineage: a child reads as its parent overlaid with its own
//! blocks (so an unwritten block of a child shows the parent's data); a retried
//! StartSnapshot with the same ClientToken returns the same snapshot.
//!
//! For failure tests: [`MemoryEbs::inject`] makes chosen calls fail, and
//! [`MemoryEbs::hide_new_snapshots`] makes a new snapshot "not found" for its
//! first few calls, like AWS's eventual consistency.

use super::api::{BlockPage, FetchedBlock, ListedBlock, SnapshotApi, Started};
use super::block::{BLOCKS_PER_GIB, BlockHash, linear_checksum};
use super::rules::{self, StartRequest};
use crate::aws::ApiError;
use crate::retry::ErrorKind;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// ListSnapshotBlocks page size by default: AWS's maximum MaxResults.
const DEFAULT_PAGE: usize = 10_000;

/// One call, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub op: &'static str,
    pub snapshot_id: String,
    pub index: Option<u64>,
    /// For PutSnapshotBlock: whether the data was all zero.
    pub zero: bool,
}

impl Call {
    fn new(op: &'static str, snapshot_id: &str, index: Option<u64>, zero: bool) -> Call {
        Call {
            op,
            snapshot_id: snapshot_id.to_owned(),
            index,
            zero,
        }
    }
}

#[derive(Debug)]
struct Stored {
    data: Arc<Vec<u8>>,
    hash: BlockHash,
    token: String,
}

#[derive(Debug)]
struct Snap {
    volume_gib: u64,
    parent: Option<String>,
    completed: bool,
    own: BTreeMap<u64, Stored>,
    hidden_calls: usize,
}

#[derive(Debug, Default)]
struct State {
    snaps: HashMap<String, Snap>,
    client_tokens: HashMap<String, String>,
    next: u64,
    calls: Vec<Call>,
    hide_new: usize,
}

type Fault = Box<dyn FnMut(&Call) -> Option<ApiError> + Send>;

/// The in-memory endpoint.
pub struct MemoryEbs {
    state: Mutex<State>,
    fault: Mutex<Option<Fault>>,
    page: usize,
}

impl std::fmt::Debug for MemoryEbs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryEbs").finish_non_exhaustive()
    }
}

impl Default for MemoryEbs {
    fn default() -> Self {
        Self::new()
    }
}

fn validation(op: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError::new(op, ErrorKind::Permanent, "ValidationException", msg)
}

fn not_found(op: &'static str, id: &str) -> ApiError {
    ApiError::new(
        op,
        ErrorKind::NotFound,
        "ResourceNotFoundException",
        format!("snapshot {id} does not exist"),
    )
}

impl MemoryEbs {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            fault: Mutex::new(None),
            page: DEFAULT_PAGE,
        }
    }

    /// A smaller ListSnapshotBlocks page, to exercise pagination.
    pub fn with_page_size(mut self, page: usize) -> Self {
        self.page = page.max(1);
        self
    }

    /// Every call so far (including refused ones).
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Calls of one operation.
    pub fn calls_of(&self, op: &str) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.op == op).collect()
    }

    /// Makes calls fail: `f` sees each call before it runs and may return an error.
    pub fn inject(&self, f: impl FnMut(&Call) -> Option<ApiError> + Send + 'static) {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(f));
    }

    /// Each snapshot started from now on answers "not found" to its first `n` calls.
    pub fn hide_new_snapshots(&self, n: usize) {
        self.lock().hide_new = n;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the call and applies injected faults and hiding.
    fn enter(&self, call: Call) -> Result<MutexGuard<'_, State>, ApiError> {
        let injected = {
            let mut fault = self.fault.lock().unwrap_or_else(|p| p.into_inner());
            fault.as_mut().and_then(|f| f(&call))
        };
        let mut st = self.lock();
        st.calls.push(call.clone());
        if let Some(e) = injected {
            return Err(e);
        }
        if let Some(s) = st.snaps.get_mut(&call.snapshot_id)
            && s.hidden_calls > 0
        {
            s.hidden_calls -= 1;
            return Err(not_found(call.op, &call.snapshot_id));
        }
        Ok(st)
    }

    /// The blocks a snapshot reads as: its ancestors' overlaid by its own.
    fn effective(st: &State, id: &str) -> BTreeMap<u64, String> {
        let mut chain = Vec::new();
        let mut cur = Some(id.to_owned());
        while let Some(c) = cur {
            let Some(s) = st.snaps.get(&c) else { break };
            cur = s.parent.clone();
            chain.push(c);
        }
        let mut out = BTreeMap::new();
        for snap_id in chain.iter().rev() {
            for &i in st.snaps[snap_id].own.keys() {
                out.insert(i, snap_id.clone());
            }
        }
        out
    }
}

impl SnapshotApi for MemoryEbs {
    fn start_snapshot(&self, req: &StartRequest) -> Result<Started, ApiError> {
        const OP: &str = "StartSnapshot";
        let mut st = self.enter(Call::new(OP, "", None, false))?;
        rules::check_start(req).map_err(|e| validation(OP, e.to_string()))?;
        if let Some(tok) = &req.client_token
            && let Some(id) = st.client_tokens.get(tok)
        {
            return Ok(Started {
                snapshot_id: id.clone(),
                reported_block_size: Some(524_288),
            });
        }
        if let Some(p) = &req.parent {
            match st.snaps.get(p) {
                None => return Err(not_found(OP, p)),
                Some(ps) if !ps.completed => {
                    return Err(validation(OP, format!("parent {p} is not completed")));
                }
                Some(_) => {}
            }
        }
        st.next += 1;
        let id = format!("snap-{:017x}", st.next);
        let hidden_calls = st.hide_new;
        st.snaps.insert(
            id.clone(),
            Snap {
                volume_gib: req.volume_gib,
                parent: req.parent.clone(),
                completed: false,
                own: BTreeMap::new(),
                hidden_calls,
            },
        );
        if let Some(tok) = &req.client_token {
            st.client_tokens.insert(tok.clone(), id.clone());
        }
        Ok(Started {
            snapshot_id: id,
            reported_block_size: Some(524_288),
        })
    }

    fn put_block(
        &self,
        snapshot_id: &str,
        index: u64,
        data: &[u8],
        checksum: &BlockHash,
    ) -> Result<(), ApiError> {
        const OP: &str = "PutSnapshotBlock";
        let zero = super::block::is_zero(data);
        let mut st = self.enter(Call::new(OP, snapshot_id, Some(index), zero))?;
        let seq = st.calls.len();
        let snap = st
            .snaps
            .get_mut(snapshot_id)
            .ok_or_else(|| not_found(OP, snapshot_id))?;
        if snap.completed {
            return Err(validation(
                OP,
                format!("{snapshot_id} is completed; no more blocks can be written"),
            ));
        }
        rules::check_block(index, data.len(), snap.volume_gib)
            .map_err(|e| validation(OP, e.to_string()))?;
        rules::verify_checksum(index, data, &checksum.to_base64(), Some("SHA256"))
            .map_err(|e| validation(OP, e.to_string()))?;
        snap.own.insert(
            index,
            Stored {
                data: Arc::new(data.to_vec()),
                hash: *checksum,
                token: format!("tok-{snapshot_id}-{index}-{seq}"),
            },
        );
        Ok(())
    }

    fn complete_snapshot(
        &self,
        snapshot_id: &str,
        changed_blocks: u64,
        aggregate: &BlockHash,
    ) -> Result<String, ApiError> {
        const OP: &str = "CompleteSnapshot";
        let mut st = self.enter(Call::new(OP, snapshot_id, None, false))?;
        let snap = st
            .snaps
            .get_mut(snapshot_id)
            .ok_or_else(|| not_found(OP, snapshot_id))?;
        if snap.completed {
            return Ok("completed".into());
        }
        if changed_blocks != snap.own.len() as u64 {
            return Err(validation(
                OP,
                format!(
                    "ChangedBlocksCount {changed_blocks}, but {} blocks were written",
                    snap.own.len()
                ),
            ));
        }
        let want = linear_checksum(snap.own.values().map(|b| &b.hash));
        if want != *aggregate {
            return Err(validation(
                OP,
                "aggregated checksum does not match the written blocks",
            ));
        }
        snap.completed = true;
        Ok("completed".into())
    }

    fn list_blocks(
        &self,
        snapshot_id: &str,
        next_token: Option<&str>,
    ) -> Result<BlockPage, ApiError> {
        const OP: &str = "ListSnapshotBlocks";
        let st = self.enter(Call::new(OP, snapshot_id, None, false))?;
        let snap = st
            .snaps
            .get(snapshot_id)
            .ok_or_else(|| not_found(OP, snapshot_id))?;
        if !snap.completed {
            return Err(validation(OP, format!("{snapshot_id} is not completed")));
        }
        let start: u64 = match next_token {
            None => 0,
            Some(t) => t
                .parse()
                .map_err(|_| validation(OP, "INVALID_PAGE_TOKEN"))?,
        };
        let eff = Self::effective(&st, snapshot_id);
        let mut blocks = Vec::new();
        let mut next = None;
        for (&i, owner) in eff.range(start..) {
            if blocks.len() == self.page {
                next = Some(i.to_string());
                break;
            }
            blocks.push(ListedBlock {
                index: i,
                token: st.snaps[owner].own[&i].token.clone(),
            });
        }
        Ok(BlockPage {
            blocks,
            volume_gib: Some(snap.volume_gib),
            next_token: next,
        })
    }

    fn get_block(
        &self,
        snapshot_id: &str,
        index: u64,
        token: &str,
    ) -> Result<FetchedBlock, ApiError> {
        const OP: &str = "GetSnapshotBlock";
        let st = self.enter(Call::new(OP, snapshot_id, Some(index), false))?;
        let snap = st
            .snaps
            .get(snapshot_id)
            .ok_or_else(|| not_found(OP, snapshot_id))?;
        if !snap.completed {
            return Err(validation(OP, format!("{snapshot_id} is not completed")));
        }
        if index >= snap.volume_gib * BLOCKS_PER_GIB {
            return Err(validation(
                OP,
                format!("block {index} is outside the volume"),
            ));
        }
        let eff = Self::effective(&st, snapshot_id);
        let owner = eff.get(&index).ok_or_else(|| {
            validation(
                OP,
                format!("INVALID_BLOCK: block {index} was never written"),
            )
        })?;
        let b = &st.snaps[owner].own[&index];
        if b.token != token {
            return Err(validation(OP, "INVALID_BLOCK_TOKEN"));
        }
        Ok(FetchedBlock {
            data: b.data.as_ref().clone(),
            checksum: Some(b.hash.to_base64()),
            checksum_algorithm: Some("SHA256".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::block::{BLOCK_SIZE, zero_block_hash};

    fn start(ebs: &MemoryEbs, parent: Option<&str>) -> String {
        ebs.start_snapshot(&StartRequest {
            volume_gib: 1,
            parent: parent.map(str::to_owned),
            ..Default::default()
        })
        .unwrap()
        .snapshot_id
    }

    fn block(v: u8) -> (Vec<u8>, BlockHash) {
        let d = vec![v; BLOCK_SIZE];
        let h = BlockHash::of(&d);
        (d, h)
    }

    #[test]
    fn refuses_what_aws_refuses() {
        let ebs = MemoryEbs::new();
        let e = ebs
            .start_snapshot(&StartRequest {
                volume_gib: 1,
                parent: Some("snap-x".into()),
                encrypted: true,
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(e.code, "ValidationException");
        let id = start(&ebs, None);
        let (d, h) = block(1);
        // Wrong checksum, short block, index past the volume.
        assert_eq!(
            ebs.put_block(&id, 0, &d, &BlockHash::of(b"x"))
                .unwrap_err()
                .code,
            "ValidationException"
        );
        assert!(
            ebs.put_block(&id, 0, &d[..512], &BlockHash::of(&d[..512]))
                .is_err()
        );
        assert!(ebs.put_block(&id, 2048, &d, &h).is_err());
        ebs.put_block(&id, 0, &d, &h).unwrap();
        // Wrong count, wrong aggregate.
        assert!(
            ebs.complete_snapshot(&id, 2, &linear_checksum([&h]))
                .is_err()
        );
        assert!(ebs.complete_snapshot(&id, 1, &h).is_err());
        ebs.complete_snapshot(&id, 1, &linear_checksum([&h]))
            .unwrap();
        assert!(ebs.put_block(&id, 1, &d, &h).is_err());
    }

    #[test]
    fn children_read_through_to_their_parent() {
        let ebs = MemoryEbs::new().with_page_size(1);
        let p = start(&ebs, None);
        let (d1, h1) = block(1);
        let (d2, h2) = block(2);
        ebs.put_block(&p, 0, &d1, &h1).unwrap();
        ebs.put_block(&p, 5, &d1, &h1).unwrap();
        ebs.complete_snapshot(&p, 2, &linear_checksum([&h1, &h1]))
            .unwrap();
        let c = start(&ebs, Some(&p));
        let z = vec![0u8; BLOCK_SIZE];
        ebs.put_block(&c, 5, &z, &zero_block_hash()).unwrap();
        ebs.put_block(&c, 7, &d2, &h2).unwrap();
        ebs.complete_snapshot(&c, 2, &linear_checksum([&zero_block_hash(), &h2]))
            .unwrap();
        let mut all = Vec::new();
        let mut tok = None;
        loop {
            let page = ebs.list_blocks(&c, tok.as_deref()).unwrap();
            all.extend(page.blocks);
            match page.next_token {
                Some(t) => tok = Some(t),
                None => break,
            }
        }
        let idx: Vec<u64> = all.iter().map(|b| b.index).collect();
        assert_eq!(idx, vec![0, 5, 7]);
        let b0 = ebs.get_block(&c, 0, &all[0].token).unwrap();
        assert_eq!(b0.data, d1);
        assert_eq!(ebs.get_block(&c, 5, &all[1].token).unwrap().data, z);
        assert!(ebs.get_block(&c, 0, "bad").is_err());
    }

    #[test]
    fn client_token_makes_start_idempotent() {
        let ebs = MemoryEbs::new();
        let req = StartRequest {
            volume_gib: 1,
            client_token: Some("t1".into()),
            ..Default::default()
        };
        let a = ebs.start_snapshot(&req).unwrap();
        let b = ebs.start_snapshot(&req).unwrap();
        assert_eq!(a, b);
    }
}
