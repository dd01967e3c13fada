//! Where chunks come from: the [`ChunkSource`] trait the receiver drives, and
//! [`Sender`], the source side (scan + positional chunk reads) that serves it
//! in-process. The network layer implements `ChunkSource` over a connection
//! and runs a `Sender` in its agent.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::chunk::ChunkId;
use crate::manifest::{ManifestId, Mode as MMode};
use crate::safe_path::Root;
use crate::scan::{self, Scan, ScanError, ScanOptions, ScanStats};

/// One chunk the receiver asks for, by position in the source's manifest:
/// the sender needs only its entry paths, not a hash index. The receiver
/// checks the bytes against `id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Want {
    /// Index of the entry in the manifest (0 = first entry).
    pub entry: u32,
    /// Offset in the entry's data.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
    /// Expected blake3 id.
    pub id: ChunkId,
}

/// Error a sink returns to stop a fetch.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// Receives each wanted chunk: (index in the wants slice, bytes).
pub type Sink<'a> = dyn FnMut(usize, &[u8]) -> Result<(), SinkError> + 'a;

/// Errors of a chunk source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading {path:?} for chunk at {offset}: {source}")]
    Read {
        path: String,
        offset: u64,
        source: io::Error,
    },
    #[error("want names entry {0}, which has no data in the manifest")]
    UnknownEntry(u32),
    #[error("source manifest: {0}")]
    Manifest(io::Error),
    #[error("receiver stopped the fetch: {0}")]
    Sink(SinkError),
    #[error("source transport: {0}")]
    Transport(String),
}

/// The receiver's view of a source: it learns the manifest, then asks for
/// the chunks it lacks.
pub trait ChunkSource {
    /// Streams this round's manifest into `out` and returns its root.
    fn manifest(&mut self, out: &mut dyn Write) -> Result<ManifestId, SourceError>;

    /// Delivers the bytes of every want to `sink(index, bytes)`, in order.
    /// The receiver verifies them; a source need not.
    fn fetch(&mut self, wants: &[Want], sink: &mut Sink<'_>) -> Result<(), SourceError>;
}

/// What to sync from or to: a directory tree or a byte image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// A directory (a `dir` volume).
    Tree(PathBuf),
    /// A regular file or block device (a `block` volume, an image).
    Image(PathBuf),
}

impl Source {
    /// The path.
    pub fn path(&self) -> &Path {
        match self {
            Source::Tree(p) | Source::Image(p) => p,
        }
    }
}

/// The source side: a scanned manifest plus positional reads.
pub struct Sender {
    source: Source,
    scan: Scan,
    root: Option<Root>,
    open: Option<(u32, File)>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("source", &self.source)
            .finish()
    }
}

impl Sender {
    /// Scans `source` (using and refreshing the stat cache in `cache_dir`).
    pub fn scan(source: &Source, cache_dir: &Path, opts: ScanOptions) -> Result<Sender, ScanError> {
        let scan = match source {
            Source::Tree(p) => scan::scan_tree(p, cache_dir, opts)?,
            Source::Image(p) => scan::scan_image(p, cache_dir, opts)?,
        };
        let root = match source {
            Source::Tree(p) => Some(Root::open(p).map_err(|e| ScanError::Io {
                path: p.display().to_string(),
                source: io::Error::other(e.to_string()),
            })?),
            Source::Image(_) => None,
        };
        Ok(Sender {
            source: source.clone(),
            scan,
            root,
            open: None,
        })
    }

    /// The manifest's root hash.
    pub fn manifest_id(&self) -> ManifestId {
        self.scan.trailer.root
    }

    /// The manifest file.
    pub fn manifest_path(&self) -> &Path {
        &self.scan.manifest
    }

    /// Tree or image.
    pub fn mode(&self) -> MMode {
        self.scan.header.mode
    }

    /// What the scan read.
    pub fn stats(&self) -> &ScanStats {
        &self.scan.stats
    }

    /// Things the scan left out.
    pub fn skipped(&self) -> &[crate::fsmeta::Skip] {
        &self.scan.skipped
    }

    fn file(&mut self, entry: u32) -> Result<&File, SourceError> {
        if self.open.as_ref().is_none_or(|(e, _)| *e != entry) {
            let path = self
                .scan
                .paths
                .get(entry)
                .ok_or(SourceError::UnknownEntry(entry))?;
            let f = match (&self.root, &self.source) {
                (Some(root), _) => root
                    .open_at(path, OFlags::RDONLY | OFlags::NOFOLLOW, Mode::empty())
                    .map(File::from)
                    .map_err(|e| SourceError::Read {
                        path: String::from_utf8_lossy(path).into_owned(),
                        offset: 0,
                        source: io::Error::other(e.to_string()),
                    })?,
                (None, src) => File::open(src.path()).map_err(|source| SourceError::Read {
                    path: src.path().display().to_string(),
                    offset: 0,
                    source,
                })?,
            };
            self.open = Some((entry, f));
        }
        Ok(&self.open.as_ref().expect("set above").1)
    }

    /// Reads the bytes a want names into `buf` (resized to `len`). A file
    /// that shrank gives fewer bytes: the receiver's check then fails.
    pub fn read_chunk(&mut self, w: &Want, buf: &mut Vec<u8>) -> Result<(), SourceError> {
        buf.resize(w.len as usize, 0);
        let f = self.file(w.entry)?;
        let mut got = 0;
        while got < buf.len() {
            match f.read_at(&mut buf[got..], w.offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    let path = self.scan.paths.get(w.entry).unwrap_or(b"");
                    return Err(SourceError::Read {
                        path: String::from_utf8_lossy(path).into_owned(),
                        offset: w.offset,
                        source,
                    });
                }
            }
        }
        buf.truncate(got);
        Ok(())
    }
}

impl ChunkSource for Sender {
    fn manifest(&mut self, out: &mut dyn Write) -> Result<ManifestId, SourceError> {
        let mut f = BufReader::new(File::open(&self.scan.manifest).map_err(SourceError::Manifest)?);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf).map_err(SourceError::Manifest)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(SourceError::Manifest)?;
        }
        Ok(self.scan.trailer.root)
    }

    fn fetch(&mut self, wants: &[Want], sink: &mut Sink<'_>) -> Result<(), SourceError> {
        let mut buf = Vec::new();
        for (i, w) in wants.iter().enumerate() {
            self.read_chunk(w, &mut buf)?;
            sink(i, &buf).map_err(SourceError::Sink)?;
        }
        Ok(())
    }
}

/// For error messages.
pub fn lossy(p: &Path) -> String {
    String::from_utf8_lossy(p.as_os_str().as_bytes()).into_owned()
}
