//! `--json-progress` (issue 13, item 13): progress as a stream of JSON
//! objects, one per line on stderr, for scripts (as restic's `--json` does).
//! stdout keeps the command's result exactly as without the flag (its
//! `--json` report, or the text summary), and log lines on stderr turn into
//! JSON too, so every stderr line parses.
//!
//! Every event has `event` (what happened), `command` (sync, migrate,
//! snapshot-push, snapshot-pull) and `elapsed_ms` (since the command started):
//! - `phase`: a phase starts: `phase`, `total` (0 when unknown) and `unit`
//!   (`bytes` or `blocks`);
//! - `progress`: `phase`, `done` and `total` in `unit` (`done` counts from 0
//!   in each phase), `entries` while scanning; at most one every
//!   [`INTERVAL`], and always one with the phase's final count before the
//!   next phase starts;
//! - `warning`: `message`;
//! - migrate's own events (`preflight`, `round_start`, `round_end`,
//!   `waiting_for_unmount`, `unmounted`, `committed`, `hook_start`,
//!   `hook_done`), with their figures.
//!
//! [`Tracker`] is the pure part (what to emit, and when); [`JsonLines`] writes
//! it.

use mover::progress::{BlockProgress, Phase, Progress, ProgressSink};
use serde_json::{Map, Value, json};
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Least time between two `progress` events: a script sees motion several
/// times a second, and a fast copy does not write a line per chunk.
pub(crate) const INTERVAL: Duration = Duration::from_millis(200);

/// What the stream has said so far, and what it will say next (pure).
#[derive(Debug)]
pub(crate) struct Tracker {
    command: &'static str,
    start: Instant,
    unit: &'static str,
    phase: Option<String>,
    total: u64,
    done: u64,
    entries: Option<u64>,
    last_progress: Option<Instant>,
    /// `done` moved since the last `progress` event.
    unsent: bool,
}

impl Tracker {
    pub(crate) fn new(command: &'static str, unit: &'static str, start: Instant) -> Self {
        Self {
            command,
            start,
            unit,
            phase: None,
            total: 0,
            done: 0,
            entries: None,
            last_progress: None,
            unsent: false,
        }
    }

    /// An event of kind `event` with `fields`.
    pub(crate) fn event(&self, now: Instant, event: &str, fields: Value) -> Value {
        let mut m = Map::new();
        m.insert("event".into(), event.into());
        m.insert("command".into(), self.command.into());
        let ms = u64::try_from(now.saturating_duration_since(self.start).as_millis())
            .unwrap_or(u64::MAX);
        m.insert("elapsed_ms".into(), ms.into());
        if let Value::Object(f) = fields {
            m.extend(f);
        }
        Value::Object(m)
    }

    fn progress(&mut self, now: Instant) -> Value {
        self.last_progress = Some(now);
        self.unsent = false;
        let mut fields = json!({
            "phase": self.phase,
            "done": self.done,
            "total": self.total,
            "unit": self.unit,
        });
        if let (Some(e), Value::Object(m)) = (self.entries, &mut fields) {
            m.insert("entries".into(), e.into());
        }
        self.event(now, "progress", fields)
    }

    /// The last count of the phase, if the stream has not said it yet.
    pub(crate) fn flush(&mut self, now: Instant) -> Option<Value> {
        self.unsent.then(|| self.progress(now))
    }

    /// A phase starts: the old phase's last count, then the `phase` event.
    pub(crate) fn begin(&mut self, now: Instant, phase: &str, total: u64) -> Vec<Value> {
        let mut out: Vec<Value> = self.flush(now).into_iter().collect();
        self.phase = Some(phase.to_owned());
        self.total = total;
        self.done = 0;
        self.entries = None;
        self.last_progress = None;
        out.push(self.event(
            now,
            "phase",
            json!({ "phase": phase, "total": total, "unit": self.unit }),
        ));
        out
    }

    fn due(&mut self, now: Instant) -> Option<Value> {
        self.unsent = true;
        match self.last_progress {
            Some(t) if now.saturating_duration_since(t) < INTERVAL => None,
            _ => Some(self.progress(now)),
        }
    }

    /// `n` more units done.
    pub(crate) fn advance(&mut self, now: Instant, n: u64) -> Option<Value> {
        self.done = self.done.saturating_add(n);
        self.due(now)
    }

    /// The count is now `done` (and `entries` seen), as the scan reports it.
    pub(crate) fn set(&mut self, now: Instant, done: u64, entries: Option<u64>) -> Option<Value> {
        self.done = done;
        self.entries = entries;
        self.due(now)
    }
}

/// A sync phase's name in the stream.
pub(crate) fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Recover => "recover",
        Phase::Scan => "scan",
        Phase::Plan => "plan",
        Phase::Fetch => "fetch",
        Phase::Apply => "apply",
        Phase::Verify => "verify",
        Phase::Done => "done",
    }
}

/// What a sync event adds to the stream (pure).
pub(crate) fn on_sync(t: &mut Tracker, now: Instant, ev: &Progress) -> Vec<Value> {
    match ev {
        Progress::Phase { phase, total_bytes } => t.begin(now, phase_name(*phase), *total_bytes),
        Progress::Scanned {
            entries,
            bytes_hashed,
        } => t
            .set(now, *bytes_hashed, Some(*entries))
            .into_iter()
            .collect(),
        Progress::Moved { bytes } | Progress::Verified { bytes } => {
            t.advance(now, *bytes).into_iter().collect()
        }
        Progress::Warning { message } => {
            vec![t.event(now, "warning", json!({ "message": message }))]
        }
    }
}

/// Writes a tracker's events to stderr, one line each.
pub(crate) struct JsonLines {
    tracker: Mutex<Tracker>,
}

impl JsonLines {
    pub(crate) fn new(command: &'static str, unit: &'static str) -> Self {
        Self {
            tracker: Mutex::new(Tracker::new(command, unit, Instant::now())),
        }
    }

    /// Runs `f` on the tracker and writes what it returns.
    pub(crate) fn with(&self, f: impl FnOnce(&mut Tracker, Instant) -> Vec<Value>) {
        let lines = {
            let mut t = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut t, Instant::now())
        };
        write_lines(&lines);
    }

    /// One event of kind `event` with `fields`.
    pub(crate) fn emit(&self, event: &str, fields: Value) {
        self.with(|t, now| vec![t.event(now, event, fields)]);
    }

    /// The last count, if unsaid (call when the command ends).
    pub(crate) fn finish(&self) {
        self.with(|t, now| t.flush(now).into_iter().collect());
    }
}

/// Each value on a line of its own, each line one write (so a log line
/// from another thread never lands inside it).
fn write_lines(lines: &[Value]) {
    let mut err = std::io::stderr().lock();
    for v in lines {
        // Progress must never fail the command.
        let _ = err.write_all(format!("{v}\n").as_bytes());
    }
}

impl ProgressSink for JsonLines {
    fn event(&self, ev: &Progress) {
        self.with(|t, now| on_sync(t, now, ev));
    }
}

impl BlockProgress for JsonLines {
    fn begin(&self, phase: &str, total: u64) {
        self.with(|t, now| t.begin(now, phase, total));
    }
    fn advance(&self, n: u64) {
        self.with(|t, now| t.advance(now, n).into_iter().collect());
    }
    fn end(&self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn progress_is_throttled_and_each_phase_ends_with_its_count() {
        let t0 = Instant::now();
        let mut t = Tracker::new("sync", "bytes", t0);
        let mut out = Vec::new();
        let evs = [
            (
                0,
                Progress::Phase {
                    phase: Phase::Scan,
                    total_bytes: 0,
                },
            ),
            (
                10,
                Progress::Scanned {
                    entries: 1,
                    bytes_hashed: 5,
                },
            ),
            (
                20,
                Progress::Scanned {
                    entries: 2,
                    bytes_hashed: 9,
                },
            ),
            (
                30,
                Progress::Phase {
                    phase: Phase::Fetch,
                    total_bytes: 300,
                },
            ),
            (40, Progress::Moved { bytes: 100 }),
            (50, Progress::Moved { bytes: 100 }),
            (300, Progress::Moved { bytes: 50 }),
            (310, Progress::Moved { bytes: 50 }),
            (
                320,
                Progress::Warning {
                    message: "xattr".into(),
                },
            ),
            (
                330,
                Progress::Phase {
                    phase: Phase::Done,
                    total_bytes: 0,
                },
            ),
        ];
        for (ms, ev) in &evs {
            out.extend(on_sync(&mut t, at(t0, *ms), ev));
        }
        let brief: Vec<String> = out
            .iter()
            .map(|v| {
                format!(
                    "{} {} {}",
                    v["event"].as_str().unwrap(),
                    v["phase"].as_str().unwrap_or("-"),
                    v["done"].as_u64().map_or("-".into(), |d| d.to_string())
                )
            })
            .collect();
        assert_eq!(
            brief,
            [
                "phase scan -",
                "progress scan 5",
                // 20 ms: throttled; said before the next phase.
                "progress scan 9",
                "phase fetch -",
                "progress fetch 100",
                "progress fetch 250",
                "warning - -",
                "progress fetch 300",
                "phase done -",
            ]
        );
        assert_eq!(out[1]["entries"], 1);
        assert_eq!(out[4]["total"], 300);
        assert_eq!(out[4]["unit"], "bytes");
        assert_eq!(out[7]["elapsed_ms"], 330);
        assert!(out.iter().all(|v| v["command"] == "sync"));
        // Nothing unsaid at the end.
        assert!(t.flush(at(t0, 400)).is_none());
    }

    #[test]
    fn blocks_count_per_phase() {
        let t0 = Instant::now();
        let mut t = Tracker::new("snapshot-push", "blocks", t0);
        let first = t.begin(t0, "upload", 10);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0]["unit"], "blocks");
        assert!(t.advance(at(t0, 1), 4).is_some());
        assert!(t.advance(at(t0, 2), 6).is_none());
        let last = t.flush(at(t0, 3)).unwrap();
        assert_eq!(
            (last["done"].as_u64(), last["total"].as_u64()),
            (Some(10), Some(10))
        );
    }
}
