//! Scanning a source: walk a tree (sorted, depth-first, pre-order) or open an
//! image, and write its manifest.
//!
//! - Hardlinks: one (dev, ino) map per scan; the first path is the `File`,
//!   later ones are `Hardlink` entries naming it.
//! - Stat cache: an entry whose (dev, ino, size, mtime, ctime) match the last
//!   scan's record (and was not racy) is copied from the last manifest; no
//!   data is read, no xattr is listed.
//! - Chunking runs on worker threads in ordered parallel: big extents are cut
//!   into segments chunked independently and spliced back into the serial
//!   cut sequence (`chunk::SegmentJoin`), so two cores work on one large file and
//!   the result is identical to a single-threaded scan.
//! - Memory: one pending window of entries and chunk lists; chunk lists are
//!   streamed to the manifest as segments complete, never held per file.
//!
//! Map: `class` (which chunk class a file gets: its name or its observed
//! write pattern), `options` (settings, stats, errors, the finished [`Scan`]),
//! `builder` (the manifest and stat cache being written: the pending queue,
//! cache reuse, the chunking workers), `pieces` (a patched file's pieces
//! re-read and hashed in batches across threads), `walk` (the tree walk and the image
//! scan that feed it), `check` (tests only: a manifest against its tree).

mod builder;
mod changes;
#[cfg(any(test, feature = "testing"))]
mod check;
mod class;
mod copy;
mod options;
mod pieces;
mod walk;

pub use changes::{FileChanges, ImageChanges, PendingChanges};
#[cfg(any(test, feature = "testing"))]
pub use check::manifest_matches_the_tree;
pub use copy::ScanCopy;
pub use options::{Scan, ScanError, ScanOptions, ScanStats};
pub use walk::{image_size, scan_image, scan_tree};
