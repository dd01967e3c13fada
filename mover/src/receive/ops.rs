//! The round's apply ops: what the plan decides and the commit makes happen.
//! They are streamed (postcard in framed records) into four files of the
//! round dir, one per apply pass, and replayed from there after the commit
//! record, so their encoding is an on-disk format: never reorder variants or
//! fields.

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkId;
use crate::manifest::Entry;

/// One apply op.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Op {
    /// Remove (recursively) whatever is at `path`.
    Delete {
        path: Vec<u8>,
    },
    Mkdir {
        path: Vec<u8>,
    },
    /// Finish staged entry `stage/<n>` (size, metadata) and rename it in.
    Place {
        stage: u32,
        entry: Entry,
    },
    /// Write pack bytes into the existing file at `path`.
    PatchWrite {
        path: Vec<u8>,
        offset: u64,
        len: u32,
        pack: u64,
        id: ChunkId,
    },
    /// After a patch: size, holes, metadata.
    PatchEnd {
        entry: Entry,
        holes: Vec<(u64, u64)>,
    },
    Meta {
        entry: Entry,
    },
    Link {
        path: Vec<u8>,
        target: Vec<u8>,
    },
    DirMeta {
        entry: Entry,
    },
}

/// The op streams, in apply order: deletes first (a type change frees its
/// path), then directories, then data, metadata and links in manifest order
/// (a hardlink's target is an earlier path, so its link follows the target's
/// placement), directory metadata last (a directory's times must survive the
/// changes inside it).
pub(super) const STREAMS: [&str; 4] = ["ops.delete", "ops.mkdir", "ops.place", "ops.dirmeta"];

impl Op {
    /// Index in [`STREAMS`] of the stream this op belongs to.
    pub(super) fn stream(&self) -> usize {
        match self {
            Op::Delete { .. } => 0,
            Op::Mkdir { .. } => 1,
            Op::Place { .. }
            | Op::PatchWrite { .. }
            | Op::PatchEnd { .. }
            | Op::Meta { .. }
            | Op::Link { .. } => 2,
            Op::DirMeta { .. } => 3,
        }
    }
}
