//! Which database's files a volume holds, so that `migrate` can say, before
//! pre-copy starts, that no `--before-cutover` hook was given for it.
//!
//! Why: a database keeps dirty pages in its own memory and writes them at
//! shutdown, after the unmount, into the final round, where no dirty rate
//! of its files can see them. Moved without a hook, PostgreSQL at pgbench
//! scale 30, rate 500, on gold (BENCHMARKS, "Issue 11, stop 39") paid
//! 2.2-2.4 s of downtime against 0.36-0.43 s with `CHECKPOINT` as the hook,
//! and the estimate was 3x short (est./actual 0.29-0.34). An operator who
//! forgot the hook learns that before the move, not from its report.
//!
//! [`recognise`] is pure (one directory's names in, the database out);
//! [`find`] reads the volume's top directories, bounded, and never fails: a
//! volume it cannot read or does not recognise gets no advice.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A database whose files are recognised, with the hook that flushes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum App {
    PostgreSql,
    MySql,
    MongoDb,
    Redis,
}

impl App {
    pub(crate) fn name(self) -> &'static str {
        match self {
            App::PostgreSql => "PostgreSQL",
            App::MySql => "MySQL/MariaDB",
            App::MongoDb => "MongoDB",
            App::Redis => "Redis",
        }
    }

    /// An example hook, run on the source host (README, "Databases: flush
    /// before the cutover").
    pub(crate) fn example_hook(self) -> &'static str {
        match self {
            App::PostgreSql => "docker exec CONTAINER psql -U postgres -c CHECKPOINT",
            App::MySql => "docker exec CONTAINER mysql -e 'FLUSH TABLES'",
            App::MongoDb => "docker exec CONTAINER mongosh --eval 'db.adminCommand({fsync: 1})'",
            App::Redis => "docker exec CONTAINER redis-cli SAVE",
        }
    }
}

/// The names that mark each database's data directory: all of a row's
/// names in one directory. Files every install of that version has, not
/// ones a user could plausibly name alike (`PG_VERSION` beside `global`,
/// not `base` alone).
const MARKERS: &[(App, &[&str])] = &[
    (App::PostgreSql, &["PG_VERSION", "global"]),
    (App::MySql, &["ibdata1"]),
    (App::MySql, &["mysql.ibd"]),
    (App::MongoDb, &["WiredTiger", "WiredTiger.wt"]),
    (App::Redis, &["appendonlydir"]),
    (App::Redis, &["dump.rdb"]),
];

/// The database whose data directory has these entry names, if any.
pub(crate) fn recognise(names: &BTreeSet<String>) -> Option<App> {
    MARKERS
        .iter()
        .find(|(_, need)| need.iter().all(|n| names.contains(*n)))
        .map(|(app, _)| *app)
}

/// Directories below the volume's root looked into: its root, its
/// subdirectories and theirs (`/var/lib/postgresql` as the volume holds
/// `15/main`; the official image's `PGDATA` one below the volume).
pub(crate) const MAX_DEPTH: usize = 2;
/// Directories read at most, and entries read at most from each: the look
/// costs a few milliseconds on any volume, however large.
pub(crate) const MAX_DIRS: usize = 64;
pub(crate) const MAX_ENTRIES: usize = 4096;

/// A database's data directory found in a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) app: App,
    /// Relative to the volume's root (empty: the root itself).
    pub(crate) dir: PathBuf,
}

/// Looks for a database's data directory under `root` (a tree volume's
/// data, a block volume's mounted filesystem), breadth first, nearest
/// first, within [`MAX_DEPTH`], [`MAX_DIRS`] and [`MAX_ENTRIES`]. Symbolic
/// links are not followed. `None` when nothing is recognised or `root`
/// cannot be read.
pub(crate) fn find(root: &Path) -> Option<Found> {
    let mut queue = std::collections::VecDeque::from([(PathBuf::new(), 0usize)]);
    let mut read = 0;
    while let Some((rel, depth)) = queue.pop_front() {
        if read == MAX_DIRS {
            return None;
        }
        read += 1;
        let Ok(dir) = std::fs::read_dir(root.join(&rel)) else {
            continue;
        };
        let mut names = BTreeSet::new();
        for e in dir.flatten().take(MAX_ENTRIES) {
            let name = e.file_name().to_string_lossy().into_owned();
            // `file_type` does not follow a symbolic link.
            if depth < MAX_DEPTH && e.file_type().is_ok_and(|t| t.is_dir()) {
                queue.push_back((rel.join(&name), depth + 1));
            }
            names.insert(name);
        }
        if let Some(app) = recognise(&names) {
            return Some(Found { app, dir: rel });
        }
    }
    None
}

/// What `migrate` says when a volume holds a database and no hook was
/// given.
pub(crate) fn advice(volume: &str, found: &Found) -> String {
    let place = if found.dir.as_os_str().is_empty() {
        "at its root".to_owned()
    } else {
        format!("in {}", found.dir.display())
    };
    format!(
        "{volume} holds a {app} data directory ({place}) and no --before-cutover was given: \
         the database writes its dirty buffers at shutdown, after the unmount, so they land \
         in the final round as downtime, and the estimate cannot see them (PostgreSQL, \
         measured: 2.2-2.4 s of downtime instead of 0.4 s, 3x the estimate). To flush them \
         while it still runs, stop this (nothing is fenced yet) and rerun with e.g. \
         --before-cutover \"{hook}\" (README, \"Databases: flush before the cutover\")",
        app = found.app.name(),
        hook = found.app.example_hook(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn recognise_each_database_by_its_own_files_and_nothing_else() {
        // PostgreSQL 15's data directory, as initdb leaves it.
        let pg = [
            "PG_VERSION",
            "base",
            "global",
            "pg_commit_ts",
            "pg_wal",
            "pg_xact",
            "postgresql.auto.conf",
            "postmaster.opts",
        ];
        let cases: &[(&[&str], Option<App>)] = &[
            (&pg, Some(App::PostgreSql)),
            // A file named PG_VERSION alone, or a `global` folder alone.
            (&["PG_VERSION", "notes.txt"], None),
            (&["global", "base"], None),
            (
                &["ibdata1", "ib_logfile0", "mysql", "auto.cnf"],
                Some(App::MySql),
            ),
            (&["mysql.ibd", "undo_001", "#innodb_redo"], Some(App::MySql)),
            (
                &["WiredTiger", "WiredTiger.wt", "collection-0.wt"],
                Some(App::MongoDb),
            ),
            (&["WiredTiger.wt"], None),
            (&["dump.rdb"], Some(App::Redis)),
            (&["appendonlydir"], Some(App::Redis)),
            (&["data.bin", "log", "www"], None),
            (&[], None),
        ];
        for (names, want) in cases {
            assert_eq!(recognise(&set(names)), *want, "{names:?}");
        }
    }

    fn pg_at(root: &Path, rel: &str) {
        let d = root.join(rel);
        std::fs::create_dir_all(d.join("global")).unwrap();
        std::fs::write(d.join("PG_VERSION"), "15\n").unwrap();
    }

    #[test]
    fn find_looks_at_the_root_and_two_levels_below_it_nearest_first() {
        for (rel, want) in [
            ("", Some("")),
            ("pgdata", Some("pgdata")),
            ("15/main", Some("15/main")),
            ("a/b/c", None),
        ] {
            let d = tempfile::tempdir().unwrap();
            pg_at(d.path(), rel);
            let got = find(d.path());
            assert_eq!(
                got.as_ref().map(|f| f.dir.to_string_lossy().into_owned()),
                want.map(str::to_owned),
                "{rel}"
            );
            if let Some(f) = got {
                assert_eq!(f.app, App::PostgreSql);
            }
        }
        // Nearest first: a Redis dump at the root wins over a deeper find.
        let d = tempfile::tempdir().unwrap();
        pg_at(d.path(), "x/pg");
        std::fs::write(d.path().join("dump.rdb"), b"").unwrap();
        assert_eq!(find(d.path()).unwrap().app, App::Redis);
    }

    #[test]
    fn find_reads_a_bounded_number_of_directories_and_never_fails() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..MAX_DIRS + 10 {
            std::fs::create_dir(d.path().join(format!("d{i:03}"))).unwrap();
        }
        // Only past the bound.
        pg_at(d.path(), &format!("d{:03}/pg", MAX_DIRS + 9));
        assert_eq!(find(d.path()), None);
        assert_eq!(find(&d.path().join("missing")), None);
    }

    #[test]
    fn find_does_not_follow_symbolic_links() {
        let d = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        pg_at(elsewhere.path(), "");
        std::os::unix::fs::symlink(elsewhere.path(), d.path().join("link")).unwrap();
        assert_eq!(find(d.path()), None);
    }

    #[test]
    fn advice_names_the_volume_the_place_and_a_hook() {
        let f = Found {
            app: App::PostgreSql,
            dir: PathBuf::from("pg"),
        };
        let a = advice("db@gold", &f);
        assert!(a.contains("db@gold") && a.contains("PostgreSQL") && a.contains("in pg"));
        assert!(
            a.contains("--before-cutover \"docker exec CONTAINER psql"),
            "{a}"
        );
        let root = Found {
            app: App::Redis,
            dir: PathBuf::new(),
        };
        assert!(advice("cache", &root).contains("at its root"));
    }
}
