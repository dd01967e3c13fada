//! PostgreSQL 15 from Debian's packages as a test workload: a database on a
//! given data directory (a temp dir, a daffe volume's mountpoint, a
//! destination after a move), pgbench as the writer, and the checks that say
//! a moved database is whole.
//!
//! - [`Place`] says where commands run: in this process's namespaces, or
//!   inside another host's network and mount namespaces (`nsenter`), so a
//!   data directory that only that host's mount namespace sees works too.
//!   Every file operation (mkdir, chown, rm) goes through it for that reason.
//! - [`Postgres`] is one server: initdb with `--data-checksums`, start on a
//!   private unix socket directory (no TCP listener at all, so no port or
//!   address can clash with anything), `pg_ctl stop -m fast`, and opening an
//!   existing data directory (the destination after a move).
//! - [`Pgbench`] is a background pgbench run (`--rate`, `-c`, `-T` or until
//!   stopped) whose summary and per-second progress lines are parsed into a
//!   [`PgbenchReport`].
//! - The checks: [`Postgres::amcheck`], [`Postgres::checksums`] (server
//!   stopped) and [`Postgres::ledger`] (pgbench's books balance, and history
//!   holds at least what pgbench reported committed).
//!
//! The binaries are Debian's, called by full path under [`PG_BIN`]: whatever
//! else is on PATH (a wrapper, another major version) is never used.
//! Everything runs as the `postgres` user (the server refuses root). A server
//! still running when its [`Postgres`] is dropped is stopped (`-m immediate`)
//! and its socket directory removed; the data directory belongs to the caller.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Debian's PostgreSQL 15 binaries (packages postgresql-15 and
/// postgresql-client-15).
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The OS user the server and its tools run as (created by postgresql-common).
pub const PG_USER: &str = "postgres";

/// Port the server announces. With `listen_addresses=''` it is only part of
/// the socket's file name (`.s.PGSQL.5432`) in a private directory, so every
/// server can use the same one.
pub const PG_PORT: u16 = 5432;

/// pg_ctl's wait for start and stop. A server that replays a lot of WAL after
/// a move (or a crash copy) takes a while; a minute is generous on two cores.
const PG_CTL_WAIT_SECS: &str = "120";

/// Where commands run: here, or inside another host's namespaces.
#[derive(Debug, Clone, Default)]
pub struct Place {
    /// `nsenter` arguments (empty: this process's namespaces).
    enter: Vec<OsString>,
}

impl Place {
    /// This process's namespaces.
    pub fn here() -> Self {
        Self::default()
    }

    /// Inside the network namespace at `net` (e.g. /var/run/netns/NAME) and
    /// the mount namespace at `mnt` (e.g. /proc/PID/ns/mnt of a process that
    /// lives there): a host made by [`crate::netns::NsDockerd`] or a swarm node.
    pub fn namespaces(net: &Path, mnt: &Path) -> Self {
        let mut n = OsString::from("--net=");
        n.push(net);
        let mut m = OsString::from("--mount=");
        m.push(mnt);
        Self { enter: vec![n, m] }
    }

    /// `program` run as root at this place.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = if self.enter.is_empty() {
            Command::new(program)
        } else {
            let mut c = Command::new("nsenter");
            c.args(&self.enter).arg("--").arg(program);
            c
        };
        // postgres and its tools chdir nowhere by themselves, and complain
        // when they cannot read the cwd (root's home) after dropping to the
        // postgres user.
        c.current_dir("/").stdin(Stdio::null());
        c
    }

    /// `program` run as the postgres user at this place (setpriv execs, so a
    /// spawned child's pid is the program's).
    pub fn as_postgres(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = self.command("setpriv");
        c.args([
            "--reuid",
            PG_USER,
            "--regid",
            PG_USER,
            "--init-groups",
            "--",
        ])
        .arg(program)
        // No ~/.psqlrc, no locale surprises in parsed output.
        .env("HOME", "/")
        .env("LC_ALL", "C");
        c
    }

    /// `sh -c SCRIPT ARGS...` as root at this place; panics on failure.
    pub fn sh(&self, script: &str, args: &[&OsStr]) -> String {
        let mut c = self.command("sh");
        c.arg("-c").arg(script).arg("sh").args(args);
        ok(&mut c)
    }
}

/// Runs `cmd`; returns trimmed stdout or panics with everything it said.
fn ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(out.status.success(), "{}", show(cmd, &out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (PostgreSQL 15 installed?): {e}"))
}

fn show(cmd: &Command, out: &Output) -> String {
    format!(
        "{cmd:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn bin(program: &str) -> PathBuf {
    Path::new(PG_BIN).join(program)
}

/// One PostgreSQL server on one data directory.
#[derive(Debug)]
pub struct Postgres {
    pub place: Place,
    pub data: PathBuf,
    /// Private directory for the server's unix socket and log (at `place`).
    pub run_dir: PathBuf,
    running: bool,
}

impl Postgres {
    /// A new cluster in `data` (made if missing; must be empty): initdb with
    /// data checksums, trust auth for the local socket, C locale. Not started.
    pub fn init(place: Place, data: &Path) -> Self {
        let pg = Self::open(place, data);
        ok(pg
            .place
            .as_postgres(bin("initdb"))
            .args([
                "--data-checksums",
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
            ])
            .arg("-U")
            .arg(PG_USER)
            .arg("-D")
            .arg(data));
        pg
    }

    /// A server for an existing data directory (the destination after a
    /// move). Not started. The data directory's ownership is set to the
    /// postgres user (a moved copy may arrive owned by whoever wrote it).
    pub fn open(place: Place, data: &Path) -> Self {
        let run_dir = PathBuf::from(format!("/tmp/{}", crate::unique("daffe-pg-")));
        let pg = Self {
            place,
            data: data.to_owned(),
            run_dir,
            running: false,
        };
        pg.prepare_dir(&pg.run_dir);
        pg.prepare_dir(data);
        pg
    }

    /// Makes `dir` (at this place) owned by postgres, mode 0700, and lets
    /// postgres walk to it: each ancestor gets the others' search bit (x)
    /// if it lacks it, nothing more (a temp dir or a plugin's data root is
    /// 0700 root).
    fn prepare_dir(&self, dir: &Path) {
        self.place.sh(
            r#"set -e
d=$1
mkdir -p "$d"
chown -R postgres:postgres "$d"
chmod 0700 "$d"
p=$(dirname "$d")
while [ "$p" != / ]; do
  find "$p" -maxdepth 0 ! -perm -o+x -exec chmod o+x {} +
  p=$(dirname "$p")
done"#,
            &[dir.as_os_str()],
        );
    }

    /// The socket directory, for `-h`.
    pub fn host(&self) -> &Path {
        &self.run_dir
    }

    pub fn log_path(&self) -> PathBuf {
        self.run_dir.join("postgres.log")
    }

    /// The server log (read at this place).
    pub fn log(&self) -> String {
        self.place
            .command("cat")
            .arg(self.log_path())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// `pg_ctl start -w`: unix socket in [`Postgres::run_dir`], no TCP.
    /// Settings are given on the command line so they override whatever
    /// postgresql.conf a moved data directory carries.
    pub fn start(&mut self) {
        let opts = format!(
            "-c listen_addresses='' -k {} -p {PG_PORT}",
            self.run_dir.display()
        );
        let mut c = self.place.as_postgres(bin("pg_ctl"));
        c.args(["start", "-w", "-t", PG_CTL_WAIT_SECS, "-D"])
            .arg(&self.data)
            .arg("-l")
            .arg(self.log_path())
            .arg("-o")
            .arg(opts)
            // pg_ctl's postmaster keeps the pipes open: never read them to EOF.
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let st = c.status().expect("cannot run pg_ctl");
        assert!(st.success(), "pg_ctl start: {st}\n{}", self.log());
        self.running = true;
    }

    /// `pg_ctl stop -m fast` (what an operator does before the final round).
    pub fn stop(&mut self) {
        self.stop_mode("fast");
    }

    fn stop_mode(&mut self, mode: &str) {
        let mut c = self.place.as_postgres(bin("pg_ctl"));
        c.args(["stop", "-w", "-t", PG_CTL_WAIT_SECS, "-m", mode, "-D"])
            .arg(&self.data);
        let out = output(&mut c);
        assert!(
            out.status.success(),
            "{}\nserver log:\n{}",
            show(&c, &out),
            self.log()
        );
        self.running = false;
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// `psql -c SQL`, unaligned and tuples only: rows as lines, columns
    /// separated by `|`.
    pub fn sql(&self, sql: &str) -> String {
        let mut c = self.place.as_postgres(bin("psql"));
        self.conn_args(&mut c);
        ok(c.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            "postgres",
            "-c",
        ])
        .arg(sql))
    }

    /// `psql -c SQL` against this server as one `sh -c` line, for a command
    /// another program runs (`daffe migrate --before-cutover`). Only for a
    /// server in this process's namespaces: the line has no `nsenter`.
    pub fn sql_shell(&self, sql: &str) -> String {
        assert!(
            self.place.enter.is_empty(),
            "sql_shell is for a server here"
        );
        let mut c = self.place.as_postgres(bin("psql"));
        self.conn_args(&mut c);
        c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c"])
            .arg(sql);
        let quote = |w: &OsStr| format!("'{}'", w.to_string_lossy().replace('\'', r"'\''"));
        // `as_postgres` sets HOME and LC_ALL on the Command; a shell line says so.
        let mut line = String::from("cd / && env HOME=/ LC_ALL=C ");
        line.push_str(&quote(c.get_program()));
        for a in c.get_args() {
            line.push(' ');
            line.push_str(&quote(a));
        }
        line
    }

    fn conn_args(&self, c: &mut Command) {
        c.arg("-h")
            .arg(&self.run_dir)
            .arg("-p")
            .arg(PG_PORT.to_string())
            .arg("-U")
            .arg(PG_USER);
    }

    /// `pgbench -i -s SCALE` into database `postgres`.
    pub fn pgbench_init(&self, scale: u32) {
        let mut c = self.place.as_postgres(bin("pgbench"));
        self.conn_args(&mut c);
        ok(c.args(["-i", "-q", "-s", &scale.to_string(), "postgres"]));
    }

    /// Starts pgbench (TPC-B-like default script) in the background.
    pub fn pgbench(&self, opts: &PgbenchOptions) -> Pgbench {
        let mut c = self.place.as_postgres(bin("pgbench"));
        self.conn_args(&mut c);
        c.args(["-n", "-P", "1", "-c", &opts.clients.to_string()])
            .args(["-j", &opts.clients.clamp(1, 2).to_string()]);
        // "Until stopped": a duration far beyond any test; [`Pgbench::stop`]
        // ends it by terminating its connections, which makes pgbench print
        // its summary (a signal would not).
        let secs = opts.duration.map(|d| d.as_secs().max(1)).unwrap_or(86_400);
        c.args(["-T", &secs.to_string()]);
        if let Some(r) = opts.rate {
            c.args(["--rate", &r.to_string()]);
        }
        c.arg("postgres")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("cannot start pgbench");
        let progress = Arc::new(Mutex::new(Vec::new()));
        let err_text = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("pgbench stderr");
        let (p, e) = (progress.clone(), err_text.clone());
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(pr) = parse_progress(&line) {
                    p.lock().unwrap().push(pr);
                } else {
                    let mut e = e.lock().unwrap();
                    e.push_str(&line);
                    e.push('\n');
                }
            }
        });
        Pgbench {
            child: Some(child),
            reader: Some(reader),
            progress,
            stderr: err_text,
            place: self.place.clone(),
            host: self.run_dir.clone(),
            started: Instant::now(),
        }
    }

    /// `pg_amcheck --all` with heap-vs-index checks; panics on any finding.
    pub fn amcheck(&self) {
        let mut c = self.place.as_postgres(bin("pg_amcheck"));
        self.conn_args(&mut c);
        ok(c.args(["--all", "--install-missing", "--heapallindexed"]));
    }

    /// `pg_checksums --check` (the server must be stopped); returns the number
    /// of blocks it scanned, panics on a bad checksum.
    pub fn checksums(&self) -> u64 {
        assert!(!self.running, "pg_checksums needs the server stopped");
        let mut c = self.place.as_postgres(bin("pg_checksums"));
        c.arg("--check").arg("-D").arg(&self.data);
        let out = ok(&mut c);
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("pg_checksums printed no {name:?}:\n{out}"))
        };
        assert_eq!(field("Bad checksums:"), 0, "{out}");
        field("Blocks scanned:")
    }

    /// pgbench's books: what the accounts, tellers and branches hold, and
    /// what history records.
    pub fn ledger(&self) -> Ledger {
        let row = self.sql(
            "SELECT (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts), \
                    (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers), \
                    (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches), \
                    (SELECT coalesce(sum(delta), 0) FROM pgbench_history), \
                    (SELECT count(*) FROM pgbench_history)",
        );
        let v: Vec<i64> = row
            .split('|')
            .map(|f| f.parse().unwrap_or_else(|e| panic!("{row:?}: {e}")))
            .collect();
        assert_eq!(v.len(), 5, "{row:?}");
        Ledger {
            accounts: v[0],
            tellers: v[1],
            branches: v[2],
            history_delta: v[3],
            history_rows: u64::try_from(v[4]).expect("count is not negative"),
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .place
                .as_postgres(bin("pg_ctl"))
                .args(["stop", "-w", "-m", "immediate", "-D"])
                .arg(&self.data)
                .output();
        }
        let _ = self
            .place
            .command("rm")
            .arg("-rf")
            .arg(&self.run_dir)
            .output();
    }
}

/// pgbench's sums after a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ledger {
    pub accounts: i64,
    pub tellers: i64,
    pub branches: i64,
    pub history_delta: i64,
    pub history_rows: u64,
}

impl Ledger {
    /// Every TPC-B transaction adds the same delta to one account, one
    /// teller, one branch and one history row, atomically: the four sums are
    /// equal in any consistent state, and history has at least one row per
    /// transaction pgbench saw commit (more if a commit landed but its reply
    /// was lost when a connection was cut).
    pub fn check(&self, committed: u64) {
        assert!(
            self.accounts == self.history_delta
                && self.tellers == self.history_delta
                && self.branches == self.history_delta,
            "pgbench ledger does not balance: {self:?}"
        );
        assert!(
            self.history_rows >= committed,
            "history has {} rows but pgbench saw {committed} transactions commit",
            self.history_rows
        );
    }
}

/// What a [`Pgbench`] run does.
#[derive(Debug, Clone)]
pub struct PgbenchOptions {
    pub clients: u32,
    /// `--rate` in transactions per second over all clients (None: as fast
    /// as it goes).
    pub rate: Option<u32>,
    /// `-T`; None runs until [`Pgbench::stop`].
    pub duration: Option<Duration>,
}

impl Default for PgbenchOptions {
    fn default() -> Self {
        // Issue 11's busy OLTP service: 4 clients at 500 TPS.
        Self {
            clients: 4,
            rate: Some(500),
            duration: None,
        }
    }
}

/// One line of `pgbench -P 1`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Seconds since pgbench started.
    pub at: f64,
    pub tps: f64,
    pub latency_ms: f64,
    pub stddev_ms: f64,
    /// Schedule lag (only with `--rate`).
    pub lag_ms: Option<f64>,
    pub failed: u64,
}

/// pgbench's summary at the end of a run.
#[derive(Debug, Clone, Default)]
pub struct PgbenchReport {
    /// "number of transactions actually processed": committed and seen so.
    pub committed: u64,
    pub failed: u64,
    pub latency_avg_ms: Option<f64>,
    pub latency_stddev_ms: Option<f64>,
    pub tps: Option<f64>,
    /// Some client aborted (its connection was cut): expected after
    /// [`Pgbench::stop`] or a server stop under load.
    pub aborted: bool,
    pub progress: Vec<Progress>,
    pub wall: Duration,
    /// What pgbench said on stdout and stderr (summary, errors).
    pub text: String,
}

/// Parses `progress: 5.0 s, 498.9 tps, lat 1.234 ms stddev 0.456, 0 failed, lag 0.123 ms`.
pub fn parse_progress(line: &str) -> Option<Progress> {
    let rest = line.strip_prefix("progress: ")?;
    let mut p = Progress {
        at: 0.0,
        tps: 0.0,
        latency_ms: 0.0,
        stddev_ms: 0.0,
        lag_ms: None,
        failed: 0,
    };
    for part in rest.split(", ") {
        let words: Vec<&str> = part.split_whitespace().collect();
        match words.as_slice() {
            [v, "s"] => p.at = v.parse().ok()?,
            [v, "tps"] => p.tps = v.parse().ok()?,
            ["lat", v, "ms", "stddev", s] => {
                p.latency_ms = v.parse().ok()?;
                p.stddev_ms = s.parse().ok()?;
            }
            [v, "failed"] => p.failed = v.parse().ok()?,
            ["lag", v, "ms"] => p.lag_ms = Some(v.parse().ok()?),
            _ => {}
        }
    }
    Some(p)
}

/// Parses pgbench's end-of-run summary (stdout), PostgreSQL 15 wording.
pub fn parse_summary(text: &str) -> PgbenchReport {
    let num = |prefix: &str| -> Option<f64> {
        text.lines().find_map(|l| {
            l.trim()
                .strip_prefix(prefix)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    };
    PgbenchReport {
        committed: num("number of transactions actually processed:").map_or(0, count_from_f64),
        failed: num("number of failed transactions:").map_or(0, count_from_f64),
        latency_avg_ms: num("latency average ="),
        latency_stddev_ms: num("latency stddev ="),
        tps: num("tps ="),
        ..PgbenchReport::default()
    }
}

/// `x as u64` for a transaction count pgbench printed (or a sum of its
/// progress rates times seconds), kept in one place. The cast drops the
/// fraction and saturates (NaN and negatives give 0); the counts are
/// whole, non-negative and far below 2^53, so only an estimate's fraction
/// goes.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn count_from_f64(x: f64) -> u64 {
    x as u64
}

/// A pgbench run in the background.
#[derive(Debug)]
pub struct Pgbench {
    child: Option<Child>,
    reader: Option<std::thread::JoinHandle<()>>,
    progress: Arc<Mutex<Vec<Progress>>>,
    stderr: Arc<Mutex<String>>,
    place: Place,
    host: PathBuf,
    started: Instant,
}

impl Pgbench {
    /// Progress lines so far.
    pub fn progress(&self) -> Vec<Progress> {
        self.progress.lock().unwrap().clone()
    }

    /// Transactions pgbench has reported so far (sum over progress lines;
    /// a lower bound of what committed).
    pub fn committed_so_far(&self) -> u64 {
        let p = self.progress();
        let mut last = 0.0;
        let mut sum = 0.0;
        for x in &p {
            sum += x.tps * (x.at - last);
            last = x.at;
        }
        count_from_f64(sum)
    }

    /// Ends the run now: terminates pgbench's connections (pgbench then
    /// prints its summary with the transactions it saw commit) and waits.
    pub fn stop(mut self) -> PgbenchReport {
        if let Some(c) = &mut self.child
            && c.try_wait().ok().flatten().is_none()
        {
            let mut psql = self.place.as_postgres(bin("psql"));
            psql.arg("-h")
                .arg(&self.host)
                .arg("-p")
                .arg(PG_PORT.to_string())
                .args(["-U", PG_USER, "-X", "-q", "-d", "postgres", "-c"])
                .arg(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = 'pgbench'",
                );
            // The server may already be gone (stopped under load): then
            // pgbench has ended or is ending by itself.
            let _ = psql.output();
        }
        self.wait()
    }

    /// Waits for pgbench to end (its `-T`, or its server stopped) and
    /// returns its report.
    pub fn wait(mut self) -> PgbenchReport {
        let mut child = self.child.take().expect("pgbench child");
        let mut stdout = String::new();
        if let Some(mut s) = child.stdout.take() {
            use std::io::Read;
            let _ = s.read_to_string(&mut stdout);
        }
        let st = child.wait().expect("pgbench wait");
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let stderr = self.stderr.lock().unwrap().clone();
        let mut rep = parse_summary(&stdout);
        // PG 15 exits 2 and says "Run was aborted" when a client lost its
        // connection; other failures (no summary) are errors of the test.
        rep.aborted = !st.success();
        assert!(
            st.success() || stdout.contains("number of transactions actually processed"),
            "pgbench failed ({st}) without a summary:\n{stdout}\n{stderr}"
        );
        rep.progress = self.progress();
        rep.wall = self.started.elapsed();
        rep.text = format!("{stdout}{stderr}");
        rep
    }
}

impl Drop for Pgbench {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_parse_with_and_without_lag() {
        let cases = [
            (
                "progress: 5.0 s, 498.9 tps, lat 1.234 ms stddev 0.456, 0 failed, lag 0.123 ms",
                Some((5.0, 498.9, 1.234, 0.456, Some(0.123), 0)),
            ),
            (
                "progress: 12.0 s, 4701.2 tps, lat 0.849 ms stddev 0.311, 3 failed",
                Some((12.0, 4701.2, 0.849, 0.311, None, 3)),
            ),
            ("pgbench: error: client 0 aborted in command 4", None),
        ];
        for (line, want) in cases {
            let got = parse_progress(line)
                .map(|p| (p.at, p.tps, p.latency_ms, p.stddev_ms, p.lag_ms, p.failed));
            assert_eq!(got, want, "{line}");
        }
    }

    #[test]
    fn summary_parses_committed_latency_and_tps() {
        let text = "transaction type: <builtin: TPC-B (sort of)>\n\
            scaling factor: 1\nquery mode: simple\nnumber of clients: 4\n\
            number of threads: 2\nmaximum number of tries: 1\nduration: 10 s\n\
            number of transactions actually processed: 4980\n\
            number of failed transactions: 0 (0.000%)\n\
            latency average = 1.234 ms\nlatency stddev = 0.500 ms\n\
            rate limit schedule lag: avg 0.123 (max 3.200) ms\n\
            initial connection time = 3.400 ms\n\
            tps = 498.012345 (without initial connection time)\n";
        let r = parse_summary(text);
        assert_eq!(r.committed, 4980);
        assert_eq!(r.failed, 0);
        assert_eq!(r.latency_avg_ms, Some(1.234));
        assert_eq!(r.latency_stddev_ms, Some(0.5));
        assert_eq!(r.tps, Some(498.012345));
        assert_eq!(parse_summary("pgbench: error: nothing").committed, 0);
    }

    #[test]
    fn ledger_check_accepts_balanced_books_and_rejects_others() {
        let good = Ledger {
            accounts: -42,
            tellers: -42,
            branches: -42,
            history_delta: -42,
            history_rows: 10,
        };
        good.check(10);
        good.check(7);
        for bad in [
            Ledger {
                accounts: 0,
                ..good
            },
            Ledger {
                branches: 1,
                ..good
            },
        ] {
            assert!(
                std::panic::catch_unwind(|| bad.check(0)).is_err(),
                "{bad:?}"
            );
        }
        assert!(std::panic::catch_unwind(|| good.check(11)).is_err());
    }
}
