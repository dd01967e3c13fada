//! The snapshot side of `daffe migrate --via-ebs` ([`super::ebs`]): pushes
//! of the volume's device as EBS snapshots through the mover, each round's
//! block index the next round's parent.

use super::ebs::Pusher;
use mover::progress::BlockProgress;
use mover::snapshot::aws::AwsSnapshotApi;
use mover::snapshot::{IndexStore, PushError, PushOptions, PushReport, push};
use std::path::Path;

/// Pushes through the EBS direct APIs; block indexes in `store`, so each
/// round's index is the next round's parent.
pub(crate) struct AwsPusher<'a> {
    pub(crate) api: AwsSnapshotApi,
    pub(crate) store: IndexStore,
    /// Tags, description and transfer settings; `parent` is set per round.
    pub(crate) opts: PushOptions,
    pub(crate) progress: &'a dyn BlockProgress,
}

impl Pusher for AwsPusher<'_> {
    fn push(&mut self, device: &Path, parent: Option<&str>) -> Result<PushReport, PushError> {
        let mut opts = self.opts.clone().with_parent(parent.map(str::to_owned));
        // AWS refuses Encrypted with a parent: a child inherits its
        // parent's encryption, so only the full round asks for it.
        if opts.parent.is_some() {
            opts.encrypted = false;
            opts.kms_key_arn = None;
        }
        push(&self.api, &self.store, device, &opts, self.progress)
    }
}
