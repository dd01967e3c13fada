//! The one positional read loop: fill a buffer from a file at an offset,
//! stopping early only at end of file. Every reader of chunk data (scan,
//! sender, receiver, the chunk index) goes through it, so EINTR and short
//! reads are handled in one place.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Reads into `buf` from `offset` until it is full or the file ends, at most
/// `piece` bytes per system call; returns the bytes read (less than
/// `buf.len()` only at end of file).
pub(crate) fn read_full_at_in(
    f: &File,
    buf: &mut [u8],
    offset: u64,
    piece: usize,
) -> io::Result<usize> {
    let piece = piece.max(1);
    let mut got = 0usize;
    while got < buf.len() {
        let end = got.saturating_add(piece).min(buf.len());
        match f.read_at(&mut buf[got..end], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// [`read_full_at_in`] with no limit per system call.
pub(crate) fn read_full_at(f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    read_full_at_in(f, buf, offset, usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn fills_in_pieces_and_stops_at_eof() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        f.write_all(&data).unwrap();
        let cases: [(u64, usize, usize, usize); 5] = [
            // (offset, buffer, piece, expected bytes)
            (0, 10_000, usize::MAX, 10_000),
            (0, 10_000, 7, 10_000),
            (9_000, 4_096, 1_000, 1_000),
            (10_000, 16, 4, 0),
            (123, 0, 1, 0),
        ];
        for (offset, len, piece, want) in cases {
            let mut buf = vec![0u8; len];
            let got = read_full_at_in(&f, &mut buf, offset, piece).unwrap();
            assert_eq!(got, want, "offset {offset} len {len} piece {piece}");
            let start = usize::try_from(offset).unwrap();
            assert_eq!(&buf[..got], &data[start..start + got]);
        }
    }
}
