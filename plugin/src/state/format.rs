//! The state store's format version (issue 13, item 6; `packaging/UPGRADING.md`,
//! "On-disk formats").
//!
//! The store (`DATA_ROOT/state/daffe.redb`) keeps its version in a `meta`
//! table, key `format`. The versions:
//!
//! | version | what | written by |
//! |---|---|---|
//! | 0 | no `meta` table; the `volumes` table maps NAME to the JSON of a record | daffe before this marker |
//! | 1 | version 0's records, plus the marker | daffe since |
//!
//! A daemon reads every version up to [`FORMAT`] and brings an older store
//! up to it when it opens it (0 to 1 only adds the marker: the records are
//! the same JSON, and fields added later are `#[serde(default)]`). A store
//! of a newer version is refused before anything is written: a downgrade
//! must not half-understand, and then rewrite, records it cannot read.

use redb::TableDefinition;

/// The `meta` table: small named numbers about the store itself.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The key of the format version in [`META`].
pub(super) const FORMAT_KEY: &str = "format";

/// The version this daffe writes (and the newest it reads).
pub(crate) const FORMAT: u64 = 1;

/// What opening a store of version `found` (`None`: no marker, version 0)
/// takes (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Open {
    /// The store is at [`FORMAT`].
    Current,
    /// An older store: write the marker (and whatever a later version's
    /// step needs) before serving.
    Upgrade { from: u64 },
    /// A newer daffe wrote it: refuse, change nothing.
    Newer { found: u64 },
}

/// The step for a store of version `found`.
pub(super) fn open(found: Option<u64>) -> Open {
    match found.unwrap_or(0) {
        v if v == FORMAT => Open::Current,
        v if v < FORMAT => Open::Upgrade { from: v },
        v => Open::Newer { found: v },
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::VolumeState;
    use super::super::store::{Store, StoreError};
    use super::*;
    use redb::{Database, ReadableDatabase};
    use std::path::Path;

    const VOLUMES: TableDefinition<&str, &[u8]> = TableDefinition::new("volumes");

    /// Two records as format 0 wrote them (daffe up to commit ea38d28): the
    /// exact JSON, not today's serialisation of today's type.
    const FORMAT_0_RECORDS: [(&str, &str); 2] = [
        (
            "db",
            r#"{"docker_name":"db@default","name":"db","profile":"default","backend":"local","settings":{"backend":"local","root":"/var/lib/daffe/volumes","format":"dir","size":null,"filesystem":null},"options":{},"created_at":1764000000,"state":"ready","mounts":{"c0ffee":2}}"#,
        ),
        (
            "logs",
            r#"{"docker_name":"logs@default","aliases":["logs"],"name":"logs","profile":"default","backend":"local","settings":{"backend":"local","root":"/var/lib/daffe/volumes","format":"dir","size":null,"filesystem":null},"options":{"uid":"1000"},"created_at":1764000100,"state":{"moving":{"to":"host-b"}},"mounts":{}}"#,
        ),
    ];

    /// A store file as format 0 left it: the `volumes` table, no `meta`;
    /// with `marker`, a `meta` table claiming that version.
    fn write_store(path: &Path, marker: Option<u64>) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(VOLUMES).unwrap();
            for (name, json) in FORMAT_0_RECORDS {
                t.insert(name, json.as_bytes()).unwrap();
            }
            if let Some(v) = marker {
                txn.open_table(META).unwrap().insert(FORMAT_KEY, v).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    /// The marker and the raw records, read with redb alone.
    fn read_raw(path: &Path) -> (Option<u64>, Vec<(String, Vec<u8>)>) {
        use redb::ReadableTable;
        let db = Database::open(path).unwrap();
        let txn = db.begin_read().unwrap();
        let marker = match txn.open_table(META) {
            Ok(t) => t.get(FORMAT_KEY).unwrap().map(|v| v.value()),
            Err(_) => None,
        };
        let t = txn.open_table(VOLUMES).unwrap();
        let rows = t
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value().to_owned(), v.value().to_vec())
            })
            .collect();
        (marker, rows)
    }

    #[test]
    fn a_format_0_store_is_read_and_marked_as_format_1() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/daffe.redb");
        write_store(&path, None);
        {
            let s = Store::open(&path).unwrap();
            let recs = s.list().unwrap();
            assert_eq!(recs.len(), 2);
            assert_eq!(recs[0].docker_name, "db@default");
            assert_eq!(recs[0].mounts.total(), 2);
            assert_eq!(recs[0].received_from, None);
            assert_eq!(recs[1].aliases.iter().collect::<Vec<_>>(), ["logs"]);
            assert_eq!(
                recs[1].state,
                VolumeState::Moving {
                    to: "host-b".into()
                }
            );
            assert_eq!(recs[1].options["uid"], "1000");
        }
        let (marker, rows) = read_raw(&path);
        assert_eq!(marker, Some(FORMAT));
        // The records themselves were not rewritten.
        for ((name, json), (k, v)) in FORMAT_0_RECORDS.iter().zip(&rows) {
            assert_eq!((*name, json.as_bytes()), (k.as_str(), v.as_slice()));
        }
        // Opened again: current, same records.
        assert_eq!(Store::open(&path).unwrap().list().unwrap().len(), 2);
    }

    #[test]
    fn a_new_store_starts_at_the_current_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/daffe.redb");
        drop(Store::open(&path).unwrap());
        assert_eq!(read_raw(&path), (Some(FORMAT), Vec::new()));
    }

    #[test]
    fn a_newer_store_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/daffe.redb");
        write_store(&path, Some(FORMAT + 1));
        let before = read_raw(&path);
        let err = match Store::open(&path) {
            Ok(_) => panic!("a format {} store was opened", FORMAT + 1),
            Err(e) => e,
        };
        assert!(
            matches!(err, StoreError::Newer { found, known, .. } if found == FORMAT + 1 && known == FORMAT),
            "{err}"
        );
        let msg = err.to_string();
        for part in [
            path.display().to_string(),
            format!("format version {}", FORMAT + 1),
            format!("up to {FORMAT}"),
            "Nothing was changed".into(),
        ] {
            assert!(msg.contains(&part), "{part:?} not in: {msg}");
        }
        assert_eq!(read_raw(&path), before);
    }

    #[test]
    fn older_versions_upgrade_and_newer_ones_are_refused() {
        assert_eq!(open(None), Open::Upgrade { from: 0 });
        assert_eq!(open(Some(0)), Open::Upgrade { from: 0 });
        assert_eq!(open(Some(FORMAT)), Open::Current);
        assert_eq!(open(Some(FORMAT + 1)), Open::Newer { found: FORMAT + 1 });
    }
}
