//! Reading and writing images (regular files or block devices) block by block.
//!
//! The reader finds data extents with SEEK_DATA/SEEK_HOLE, so holes of a sparse
//! image are never read (they are zero blocks); a device is all data. The
//! writer writes blocks with positional writes (safe from many threads), turns
//! blocks into holes with `fallocate(PUNCH_HOLE)` (on a device the kernel zeroes
//! the range; where punching is not supported it writes zeros), and never writes
//! zeros into a fresh file: holes stay holes.

use super::block::{BLOCK_BYTES, BLOCK_SIZE};
use rustix::fs::{FallocateFlags, SeekFrom};
use rustix::io::Errno;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

/// Zeros are written this many bytes at a time where punching a hole is not
/// supported: one block, so the buffer is the size we already handle.
const ZERO_CHUNK: usize = BLOCK_SIZE;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} is neither a regular file nor a block device")]
    NotImage { path: PathBuf },
    #[error("{path}: finding data extents at offset {offset}: {source}")]
    Seek {
        path: PathBuf,
        offset: u64,
        source: io::Error,
    },
    #[error("{path}: reading block {block}: {source}")]
    Read {
        path: PathBuf,
        block: u64,
        source: io::Error,
    },
    #[error("{path}: writing block {block}: {source}")]
    Write {
        path: PathBuf,
        block: u64,
        source: io::Error,
    },
    #[error("{path}: device holds {size} bytes; the snapshot needs {need}")]
    TooSmall { path: PathBuf, size: u64, need: u64 },
    #[error("{path}: {what}: {source}")]
    Other {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
}

fn open_err(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Open {
        path: path.to_owned(),
        source,
    }
}

/// Size of an open image: the length of a file, or the size of a device.
fn image_size(file: &File, path: &Path) -> Result<(u64, bool), ImageError> {
    let meta = file.metadata().map_err(open_err(path))?;
    let ft = meta.file_type();
    if ft.is_file() {
        Ok((meta.len(), false))
    } else if ft.is_block_device() {
        let size = rustix::fs::seek(file, SeekFrom::End(0)).map_err(|e| ImageError::Seek {
            path: path.to_owned(),
            offset: 0,
            source: e.into(),
        })?;
        Ok((size, true))
    } else {
        Err(ImageError::NotImage {
            path: path.to_owned(),
        })
    }
}

/// A source image, read block by block.
#[derive(Debug)]
pub struct ImageReader {
    file: File,
    path: PathBuf,
    size: u64,
    is_device: bool,
}

impl ImageReader {
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        let file = File::open(path).map_err(open_err(path))?;
        let (size, is_device) = image_size(&file, path)?;
        Ok(Self {
            file,
            path: path.to_owned(),
            size,
            is_device,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Ascending, non-overlapping ranges of blocks that overlap data. Blocks
    /// outside them lie wholly in holes: zero, never read.
    pub fn data_block_ranges(&self) -> Result<Vec<Range<u64>>, ImageError> {
        // One range of every block (not a Vec of block numbers).
        let all = || std::iter::once(0..self.size.div_ceil(BLOCK_BYTES)).collect();
        if self.is_device || self.size == 0 {
            return Ok(if self.size == 0 { Vec::new() } else { all() });
        }
        let seek_err = |offset: u64, e: Errno| ImageError::Seek {
            path: self.path.clone(),
            offset,
            source: e.into(),
        };
        let mut ranges: Vec<Range<u64>> = Vec::new();
        let mut pos = 0;
        while pos < self.size {
            let data = match rustix::fs::seek(&self.file, SeekFrom::Data(pos)) {
                Ok(d) => d,
                // No data at or after pos.
                Err(Errno::NXIO) => break,
                // The filesystem cannot tell: read everything.
                Err(Errno::INVAL | Errno::OPNOTSUPP) if pos == 0 => return Ok(all()),
                Err(e) => return Err(seek_err(pos, e)),
            };
            if data >= self.size {
                break;
            }
            let hole = match rustix::fs::seek(&self.file, SeekFrom::Hole(data)) {
                Ok(h) => h.min(self.size),
                Err(Errno::NXIO) => self.size,
                Err(e) => return Err(seek_err(data, e)),
            };
            let blocks = data / BLOCK_BYTES..hole.div_ceil(BLOCK_BYTES);
            match ranges.last_mut() {
                Some(last) if last.end >= blocks.start => last.end = last.end.max(blocks.end),
                _ => ranges.push(blocks),
            }
            pos = hole.max(data + 1);
        }
        Ok(ranges)
    }

    /// Reads block `index` into `buf` (one full block), zero-padding past the end.
    pub fn read_block(&self, index: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        let start = index * BLOCK_BYTES;
        let have = usize::try_from(self.size.saturating_sub(start).min(BLOCK_BYTES)).unwrap_or(0);
        buf[have..].fill(0);
        self.file
            .read_exact_at(&mut buf[..have], start)
            .map_err(|source| ImageError::Read {
                path: self.path.clone(),
                block: index,
                source,
            })
    }
}

/// A destination image, written block by block (from many threads).
#[derive(Debug)]
pub struct ImageWriter {
    file: File,
    path: PathBuf,
    is_device: bool,
}

impl ImageWriter {
    /// Opens a destination for a full restore of `size` bytes: a file is
    /// created or truncated to nothing and extended as one hole; a device must
    /// be at least `size` bytes and is zeroed over that range.
    pub fn fresh(path: &Path, size: u64) -> Result<Self, ImageError> {
        let w = Self::open(path, true)?;
        if w.is_device {
            w.check_device_size(size)?;
            w.zero_range(0, size, 0)?;
        } else {
            w.file.set_len(0).map_err(w.other("truncating"))?;
            w.file.set_len(size).map_err(w.other("setting the size"))?;
        }
        Ok(w)
    }

    /// Opens a destination that already holds an earlier snapshot, for an
    /// incremental restore: a file is resized to `size` (new space is a hole).
    pub fn existing(path: &Path, size: u64) -> Result<Self, ImageError> {
        let w = Self::open(path, false)?;
        if w.is_device {
            w.check_device_size(size)?;
        } else {
            w.file.set_len(size).map_err(w.other("setting the size"))?;
        }
        Ok(w)
    }

    fn open(path: &Path, create: bool) -> Result<Self, ImageError> {
        let file = OpenOptions::new()
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)
            .map_err(open_err(path))?;
        let (_, is_device) = image_size(&file, path)?;
        Ok(Self {
            file,
            path: path.to_owned(),
            is_device,
        })
    }

    fn check_device_size(&self, need: u64) -> Result<(), ImageError> {
        let (size, _) = image_size(&self.file, &self.path)?;
        if size < need {
            return Err(ImageError::TooSmall {
                path: self.path.clone(),
                size,
                need,
            });
        }
        Ok(())
    }

    fn other(&self, what: &'static str) -> impl FnOnce(io::Error) -> ImageError + '_ {
        move |source| ImageError::Other {
            path: self.path.clone(),
            what,
            source,
        }
    }

    /// Writes the first `len` bytes of `data` as block `index`.
    pub fn write_block(&self, index: u64, data: &[u8], len: u64) -> Result<(), ImageError> {
        let len = usize::try_from(len).unwrap_or(BLOCK_SIZE).min(data.len());
        self.file
            .write_all_at(&data[..len], index * BLOCK_BYTES)
            .map_err(|source| ImageError::Write {
                path: self.path.clone(),
                block: index,
                source,
            })
    }

    /// Makes the first `len` bytes of block `index` read as zeros, as a hole
    /// where the filesystem allows it.
    pub fn zero_block(&self, index: u64, len: u64) -> Result<(), ImageError> {
        self.zero_range(index * BLOCK_BYTES, len, index)
    }

    fn zero_range(&self, offset: u64, len: u64, block: u64) -> Result<(), ImageError> {
        if len == 0 {
            return Ok(());
        }
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(&self.file, flags, offset, len) {
            Ok(()) => return Ok(()),
            Err(Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => {}
            Err(e) => {
                return Err(ImageError::Write {
                    path: self.path.clone(),
                    block,
                    source: e.into(),
                });
            }
        }
        let zeros = vec![0u8; ZERO_CHUNK];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZERO_CHUNK as u64);
            let n_usize = usize::try_from(n).unwrap_or(ZERO_CHUNK);
            self.file
                .write_all_at(&zeros[..n_usize], offset + done)
                .map_err(|source| ImageError::Write {
                    path: self.path.clone(),
                    block: (offset + done) / BLOCK_BYTES,
                    source,
                })?;
            done += n;
        }
        Ok(())
    }

    /// Flushes everything to stable storage.
    pub fn finish(self) -> Result<(), ImageError> {
        self.file.sync_all().map_err(self.other("syncing"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_file_reads_only_data_blocks_and_pads_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let f = File::create(&path).unwrap();
        // 10 blocks + 100 bytes; data in block 1 and at the very end.
        let size = 10 * BLOCK_BYTES + 100;
        f.set_len(size).unwrap();
        f.write_all_at(&[1; 10], BLOCK_BYTES + 5).unwrap();
        f.write_all_at(&[2; 100], 10 * BLOCK_BYTES).unwrap();
        drop(f);
        let r = ImageReader::open(&path).unwrap();
        assert_eq!(r.size(), size);
        let ranges = r.data_block_ranges().unwrap();
        // Filesystems allocate in pages or larger; the data blocks must be
        // covered and the middle blocks (well inside a hole) must not.
        let covered = |b: u64| ranges.iter().any(|r| r.contains(&b));
        assert!(covered(1) && covered(10));
        assert!(!covered(5), "{ranges:?}");
        let mut buf = vec![9u8; BLOCK_SIZE];
        r.read_block(10, &mut buf).unwrap();
        assert!(buf[..100].iter().all(|&b| b == 2));
        assert!(buf[100..].iter().all(|&b| b == 0));
    }

    #[test]
    fn writer_keeps_holes_and_punches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let size = 4 * BLOCK_BYTES;
        let w = ImageWriter::fresh(&path, size).unwrap();
        w.write_block(2, &vec![3u8; BLOCK_SIZE], BLOCK_BYTES)
            .unwrap();
        w.finish().unwrap();
        let r = ImageReader::open(&path).unwrap();
        assert_eq!(r.size(), size);
        let ranges = r.data_block_ranges().unwrap();
        assert_eq!(ranges, vec![2..3]);
        let w = ImageWriter::existing(&path, size).unwrap();
        w.zero_block(2, BLOCK_BYTES).unwrap();
        w.finish().unwrap();
        let r = ImageReader::open(&path).unwrap();
        assert!(r.data_block_ranges().unwrap().is_empty());
        let mut buf = vec![1u8; BLOCK_SIZE];
        r.read_block(2, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }
}
