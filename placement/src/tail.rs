//! Follows a growing log file the way `tail -F` does: reads what was
//! appended since the last poll, notices rotation (the path now names
//! another file: the old one is read to its end first) and truncation
//! (copytruncate: start again from the top), and resumes from a saved
//! position after a restart if the file is still the same one.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A line longer than this is not an access-log line (nginx's default
/// buffers cap a request line at a few KiB): it is dropped, not buffered
/// without bound.
pub const MAX_LINE: usize = 64 * 1024;

/// Read at most this much per poll, so one poll of a huge backlog does not
/// hold every line in memory at once; the next poll goes on.
const MAX_READ_PER_POLL: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct TailError {
    path: PathBuf,
    source: std::io::Error,
}

/// Which file, and how far into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
}

/// What one poll found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Poll {
    pub lines: Vec<String>,
    /// Lines dropped for being longer than [`MAX_LINE`].
    pub overlong: u64,
    pub rotated: bool,
    pub truncated: bool,
}

#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    pos: Option<Position>,
    partial: Vec<u8>,
    /// Dropping the rest of an overlong line until its newline.
    skipping: bool,
}

impl Follower {
    /// `resume`: where a previous run stopped; used if it is the same file.
    pub fn new(path: &Path, resume: Option<Position>) -> Self {
        Self {
            path: path.to_owned(),
            file: None,
            pos: resume,
            partial: Vec::new(),
            skipping: false,
        }
    }

    pub fn position(&self) -> Option<Position> {
        self.pos
    }

    fn err(&self, source: std::io::Error) -> TailError {
        TailError {
            path: self.path.clone(),
            source,
        }
    }

    /// Opens the file at the path; resumes at the saved offset if it is the
    /// same file and still that long.
    fn open(&mut self) -> Result<bool, TailError> {
        let mut f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(self.err(e)),
        };
        let m = f.metadata().map_err(|e| self.err(e))?;
        let offset = match self.pos {
            Some(p) if p.dev == m.dev() && p.ino == m.ino() && p.offset <= m.len() => p.offset,
            _ => 0,
        };
        f.seek(SeekFrom::Start(offset)).map_err(|e| self.err(e))?;
        self.pos = Some(Position {
            dev: m.dev(),
            ino: m.ino(),
            offset,
        });
        self.file = Some(f);
        Ok(true)
    }

    fn drain(&mut self, out: &mut Poll) -> Result<(), TailError> {
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        let mut buf = Vec::new();
        let n = f
            .take(MAX_READ_PER_POLL)
            .read_to_end(&mut buf)
            .map_err(|source| TailError {
                path: self.path.clone(),
                source,
            })?;
        if let Some(p) = self.pos.as_mut() {
            p.offset += n as u64;
        }
        for chunk in buf.split_inclusive(|b| *b == b'\n') {
            let complete = chunk.ends_with(b"\n");
            if self.skipping {
                self.skipping = !complete;
                continue;
            }
            self.partial.extend_from_slice(chunk);
            if self.partial.len() > MAX_LINE {
                out.overlong += 1;
                self.partial.clear();
                self.skipping = !complete;
                continue;
            }
            if complete {
                self.partial.pop();
                out.lines
                    .push(String::from_utf8_lossy(&self.partial).into_owned());
                self.partial.clear();
            }
        }
        Ok(())
    }

    /// Reads whatever is new.
    pub fn poll(&mut self) -> Result<Poll, TailError> {
        let mut out = Poll::default();
        if self.file.is_none() && !self.open()? {
            return Ok(out);
        }
        // Truncated in place: what we had read is gone; start again.
        if let (Some(f), Some(p)) = (self.file.as_ref(), self.pos.as_mut()) {
            let len = f.metadata().map_err(|source| TailError {
                path: self.path.clone(),
                source,
            })?;
            if len.len() < p.offset {
                p.offset = 0;
                self.partial.clear();
                self.skipping = false;
                if let Some(f) = self.file.as_mut() {
                    f.seek(SeekFrom::Start(0)).map_err(|source| TailError {
                        path: self.path.clone(),
                        source,
                    })?;
                }
                out.truncated = true;
            }
        }
        self.drain(&mut out)?;
        // Rotated: the path names another file (or none yet). The old one
        // was read to its end just now; a last line without newline ends
        // with it.
        let now = std::fs::metadata(&self.path).ok();
        let same = match (&now, self.pos) {
            (Some(m), Some(p)) => m.dev() == p.dev && m.ino() == p.ino,
            _ => false,
        };
        if !same && now.is_some() {
            if !self.partial.is_empty() && !self.skipping {
                out.lines
                    .push(String::from_utf8_lossy(&self.partial).into_owned());
            }
            self.partial.clear();
            self.skipping = false;
            self.file = None;
            self.pos = None;
            out.rotated = true;
            if self.open()? {
                self.drain(&mut out)?;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(p: &Path, s: &str) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap()
            .write_all(s.as_bytes())
            .unwrap();
    }

    #[test]
    fn follows_appends_rotation_and_truncation() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("access.log");
        let mut f = Follower::new(&p, None);
        assert_eq!(f.poll().unwrap(), Poll::default(), "no file yet");
        append(&p, "a\nb\npart");
        assert_eq!(f.poll().unwrap().lines, ["a", "b"]);
        append(&p, "ial\n");
        assert_eq!(f.poll().unwrap().lines, ["partial"]);
        assert!(f.poll().unwrap().lines.is_empty());
        // Rotation: the writer appends a last line to the old file, the
        // rotator renames it, a new file starts.
        append(&p, "last-old\n");
        std::fs::rename(&p, d.path().join("access.log.1")).unwrap();
        append(&p, "first-new\n");
        let got = f.poll().unwrap();
        assert!(got.rotated);
        assert_eq!(got.lines, ["last-old", "first-new"]);
        // copytruncate
        std::fs::write(&p, "").unwrap();
        append(&p, "x\n");
        let got = f.poll().unwrap();
        assert!(got.truncated);
        assert_eq!(got.lines, ["x"]);
    }

    #[test]
    fn resumes_from_a_saved_position_only_in_the_same_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l");
        append(&p, "1\n2\n");
        let mut f = Follower::new(&p, None);
        assert_eq!(f.poll().unwrap().lines.len(), 2);
        let saved = f.position().unwrap();
        append(&p, "3\n");
        let mut g = Follower::new(&p, Some(saved));
        assert_eq!(g.poll().unwrap().lines, ["3"]);
        // Another file at the path (the old one kept, so its inode number
        // cannot be reused): from the top.
        std::fs::rename(&p, d.path().join("l.1")).unwrap();
        append(&p, "new\n");
        let mut h = Follower::new(&p, Some(saved));
        assert_eq!(h.poll().unwrap().lines, ["new"]);
    }

    #[test]
    fn overlong_lines_are_dropped_not_buffered() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l");
        append(&p, &"x".repeat(MAX_LINE + 10));
        let mut f = Follower::new(&p, None);
        let got = f.poll().unwrap();
        assert_eq!(got.overlong, 1);
        append(&p, "yyy\nok\n");
        assert_eq!(f.poll().unwrap().lines, ["ok"]);
    }
}
