//! A dry run: what a round would create, change and delete at the
//! destination, with sizes, from the same plan a real round executes, and
//! without writing anything but a scratch copy of the manifest in a folder
//! the caller gives (never the destination or its state dir).

use std::path::Path;

use serde::Serialize;

use super::dest::ManifestFile;
use super::error::ReceiveError;
use super::ops::Op;
use super::plan::{Action, Change, PlanInput, PlanSink, plan};
use super::round::Receiver;
use super::verify::validity;
use crate::chunk::ChunkRef;
use crate::manifest::Entry;
use crate::source::ChunkSource;

/// Entries and bytes of one kind of change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Tally {
    /// Entries.
    pub entries: u64,
    /// Created and changed: data bytes the round would write (chunks not
    /// already in place). Deleted: the deleted entries' logical sizes.
    pub bytes: u64,
}

/// What a round would do, counted (see [`Receiver::preview`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Preview {
    /// What would be created.
    pub created: Tally,
    /// Replaced, patched in place, or metadata only.
    pub changed: Tally,
    /// What would be deleted.
    pub deleted: Tally,
}

impl Preview {
    /// Counts one change.
    pub fn add(&mut self, c: &Change) {
        let (t, bytes) = match c.action {
            Action::Create => (&mut self.created, c.data_bytes),
            Action::Replace | Action::Patch | Action::Metadata => (&mut self.changed, c.data_bytes),
            Action::Delete => (&mut self.deleted, c.size),
        };
        t.entries += 1;
        t.bytes += bytes;
    }

    /// Whether the round would change nothing.
    pub fn is_empty(&self) -> bool {
        *self == Preview::default()
    }
}

/// A plan sink that only listens to the changes.
struct Previewer<'a> {
    totals: Preview,
    each: &'a mut dyn FnMut(&Change),
}

impl PlanSink for Previewer<'_> {
    fn op(&mut self, _op: Op) -> Result<(), ReceiveError> {
        Ok(())
    }
    fn special(&mut self, _entry: u32, _e: &Entry) -> Result<(), ReceiveError> {
        Ok(())
    }
    fn stage_chunk(&mut self, _entry: u32, _c: ChunkRef) -> Result<(), ReceiveError> {
        Ok(())
    }
    fn stage_end(&mut self, _entry: u32, _e: &Entry) -> Result<(), ReceiveError> {
        Ok(())
    }
    fn patch_chunk(
        &mut self,
        _entry: u32,
        _path: &[u8],
        _c: ChunkRef,
        _pack: u64,
        _base: u32,
    ) -> Result<(), ReceiveError> {
        Ok(())
    }
    fn change(&mut self, c: &Change) {
        self.totals.add(c);
        (self.each)(c);
    }
}

impl Receiver {
    /// What a round against `src` would do, without doing it: `each` is
    /// called for every path the round would create, change or delete, in
    /// manifest order, and the totals are returned. Only the source's
    /// manifest is read (no chunk data); the destination is lstat'ed as a
    /// round's validity pass does. A committed round still waiting for its
    /// replay is not replayed: the preview is against the last applied state.
    /// The source's manifest is received into `scratch` (an existing
    /// folder), so a receiver opened with [`Receiver::open_existing`] writes
    /// nothing at the destination.
    pub fn preview(
        &self,
        src: &mut dyn ChunkSource,
        scratch: &Path,
        each: &mut dyn FnMut(&Change),
    ) -> Result<Preview, ReceiveError> {
        let applied = self.applied_root();
        let validity = validity(&self.d, applied.as_ref(), None, false)?;
        let incoming = self.receive_manifest_at(src, applied, scratch.join("preview.manifest"))?;
        let mut sink = Previewer {
            totals: Preview::default(),
            each,
        };
        let old = ManifestFile(self.d.applied_manifest());
        let planned = plan(
            &PlanInput {
                new: &ManifestFile(incoming.path.clone()),
                applied: applied.map(|_| &old),
                validity: &validity,
                dest: &self.d,
                device: self.d.device(),
                pack_len: 0,
            },
            &mut sink,
        );
        let _ = std::fs::remove_file(&incoming.path);
        planned?;
        Ok(sink.totals)
    }
}
