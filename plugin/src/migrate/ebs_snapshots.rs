//! The snapshot side of `daffe migrate --via-ebs` ([`super::ebs`]): pushes
//! of the volume's device as EBS snapshots through the mover, each round's
//! block index the next round's parent; and, once the move is done (or
//! undone), the deletion of the snapshots it made (hardening finding 11:
//! they billed forever). A snapshot is deleted only if its tags name this
//! migration, volume and cluster: nothing daffe did not make is touched.

use super::ebs::Pusher;
use crate::aws::ec2::{Ec2Api, SnapshotFacts};
use mover::aws::ApiError;
use mover::progress::BlockProgress;
use mover::retry::Retrier;
use mover::snapshot::aws::AwsSnapshotApi;
use mover::snapshot::{IndexStore, PushError, PushOptions, PushReport, push};
use serde::Serialize;
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

/// Tag on every snapshot a migration pushes: the migration's id (source
/// volume id and start time). Only snapshots carrying it, and this
/// volume's `SOURCE_TAG` and `CLUSTER_TAG`, are ever deleted.
pub(crate) const MIGRATION_TAG: &str = "daffe:migration";
/// The Docker volume name the snapshot is of (also read by operators).
pub(crate) const SOURCE_TAG: &str = "daffe:source";
/// The daemon's cluster, so two clusters' same-named volumes stay apart.
pub(crate) const CLUSTER_TAG: &str = "daffe:cluster";

/// What was done with a migration's snapshots (in the report and JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Cleanup {
    pub(crate) deleted: Vec<String>,
    /// Kept on purpose (`--keep-snapshots`).
    pub(crate) kept: Vec<String>,
    /// Deletes that failed or were skipped, with why; the move's outcome
    /// does not depend on them.
    pub(crate) warnings: Vec<String>,
}

/// How one delete went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Deletion {
    Deleted,
    /// Not there (already deleted): nothing to do.
    Gone,
    /// Not made by this daffe volume's migrations: left alone.
    NotOurs(String),
}

/// Deletes a migration's snapshots, checking their tags first.
pub(crate) trait SnapshotCleaner {
    /// Deletes `id` if its tags say a daffe migration of this volume made
    /// it (`migration`: and that one in particular).
    fn delete_ours(&self, id: &str, migration: Option<&str>) -> Result<Deletion, String>;

    /// This volume's snapshots from other, earlier migrations that are
    /// `completed` and started before `before` (epoch seconds), newest first.
    fn earlier(&self, before: i64) -> Result<Vec<String>, String>;

    /// When `id` started (epoch seconds), to tell earlier migrations' apart.
    fn start_time(&self, id: &str) -> Result<i64, String>;
}

/// Deletes `made` (this migration's snapshots, oldest first), keeping the
/// `keep` newest of this volume's migration snapshots: `final_id` (the
/// move's final snapshot, if it succeeded) and then earlier migrations'
/// snapshots. Failures become warnings.
pub(crate) fn clean_up(
    cleaner: &dyn SnapshotCleaner,
    migration: &str,
    made: &[String],
    final_id: Option<&str>,
    keep: u32,
) -> Cleanup {
    let mut out = Cleanup::default();
    let delete = |id: &str, migration: Option<&str>, out: &mut Cleanup| match cleaner
        .delete_ours(id, migration)
    {
        Ok(Deletion::Deleted) => out.deleted.push(id.to_owned()),
        Ok(Deletion::Gone) => {}
        Ok(Deletion::NotOurs(why)) => out.warnings.push(format!("{id} left alone: {why}")),
        Err(e) => out.warnings.push(format!("deleting {id}: {e}")),
    };
    // Earlier migrations only after a move that succeeded: what started
    // before this one's first snapshot (read before that one is deleted).
    let earlier = final_id.map(|f| {
        let first = made.first().map_or(f, String::as_str);
        cleaner
            .start_time(first)
            .and_then(|before| cleaner.earlier(before))
    });
    let mut budget = usize::try_from(keep).unwrap_or(usize::MAX);
    for id in made {
        if Some(id.as_str()) == final_id && budget > 0 {
            budget -= 1;
            out.kept.push(id.clone());
        } else {
            delete(id, Some(migration), &mut out);
        }
    }
    // They count towards `keep` after this move's final snapshot, newest
    // kept first.
    match earlier {
        None => {}
        Some(Ok(ids)) => {
            for id in ids {
                if budget > 0 {
                    budget -= 1;
                    out.kept.push(id);
                } else {
                    delete(&id, None, &mut out);
                }
            }
        }
        Some(Err(e)) => out
            .warnings
            .push(format!("earlier migrations' snapshots not looked at: {e}")),
    }
    out
}

/// [`SnapshotCleaner`] over EC2, for one volume's migration.
pub(crate) struct Ec2Cleaner<'a> {
    pub(crate) ec2: &'a dyn Ec2Api,
    pub(crate) retrier: &'a Retrier<'a>,
    /// The Docker volume name (`SOURCE_TAG`).
    pub(crate) source: String,
    pub(crate) cluster: String,
}

impl Ec2Cleaner<'_> {
    fn call<T>(&self, what: &str, f: impl FnMut() -> Result<T, ApiError>) -> Result<T, ApiError> {
        self.retrier
            .run(&|| what.to_owned(), None, f)
            .map_err(|e| e.error)
    }

    /// Why `s` is not ours to delete, if it is not.
    fn not_ours(&self, s: &SnapshotFacts, migration: Option<&str>) -> Option<String> {
        let Some(m) = s.tag(MIGRATION_TAG) else {
            return Some(format!(
                "no {MIGRATION_TAG} tag: not made by a daffe migration"
            ));
        };
        if migration.is_some_and(|want| want != m) {
            return Some(format!("made by migration {m}, not this one"));
        }
        if s.tag(SOURCE_TAG) != Some(self.source.as_str())
            || s.tag(CLUSTER_TAG) != Some(self.cluster.as_str())
        {
            return Some(format!(
                "not of volume {} in cluster {}",
                self.source, self.cluster
            ));
        }
        None
    }
}

impl SnapshotCleaner for Ec2Cleaner<'_> {
    fn delete_ours(&self, id: &str, migration: Option<&str>) -> Result<Deletion, String> {
        let gone = |e: &ApiError| e.code == "InvalidSnapshot.NotFound";
        let s = match self.call("DescribeSnapshots", || self.ec2.describe_snapshot(id)) {
            Ok(s) => s,
            Err(e) if gone(&e) => return Ok(Deletion::Gone),
            Err(e) => return Err(e.to_string()),
        };
        if let Some(why) = self.not_ours(&s, migration) {
            return Ok(Deletion::NotOurs(why));
        }
        match self.call("DeleteSnapshot", || self.ec2.delete_snapshot(id)) {
            Ok(()) => Ok(Deletion::Deleted),
            Err(e) if gone(&e) => Ok(Deletion::Gone),
            Err(e) => Err(e.to_string()),
        }
    }

    fn earlier(&self, before: i64) -> Result<Vec<String>, String> {
        let filters = [
            (format!("tag:{SOURCE_TAG}"), vec![self.source.clone()]),
            (format!("tag:{CLUSTER_TAG}"), vec![self.cluster.clone()]),
            ("tag-key".to_owned(), vec![MIGRATION_TAG.to_owned()]),
            ("status".to_owned(), vec!["completed".to_owned()]),
        ];
        let mut found = self
            .call("DescribeSnapshots", || self.ec2.find_snapshots(&filters))
            .map_err(|e| e.to_string())?;
        found.retain(|s| s.start_time < before && self.not_ours(s, None).is_none());
        found.sort_by(|a, b| b.start_time.cmp(&a.start_time).then(b.id.cmp(&a.id)));
        Ok(found.into_iter().map(|s| s.id).collect())
    }

    fn start_time(&self, id: &str) -> Result<i64, String> {
        self.call("DescribeSnapshots", || self.ec2.describe_snapshot(id))
            .map(|s| s.start_time)
            .map_err(|e| e.to_string())
    }
}
