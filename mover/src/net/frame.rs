//! Framing of the peer protocol: every message travels as one frame,
//! `[len: u32 LE][kind: u8][body]`, where `len` counts the kind byte and the body.
//!
//! Pure code over `Read`/`Write`. The length is checked against [`MAX_FRAME`]
//! *before* anything is allocated, so a peer that announces a huge frame gets an
//! error, not our memory.

use std::io::{self, Read, Write};

/// Largest frame body we accept or send: one chunk reply (the mover's largest
/// chunker class max is 4 MiB; 8 MiB leaves room for a bigger class without a
/// protocol change) plus its small header. It also bounds what one connection
/// can make us allocate.
pub const MAX_FRAME: usize = 8 * 1024 * 1024 + 4096;

/// Errors while reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("peer closed the connection")]
    Closed,
    #[error("peer sent an empty frame (no kind byte)")]
    Empty,
    #[error("peer announced a frame of {len} bytes, over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("connection I/O failed: {0}")]
    Io(#[from] io::Error),
}

/// Writes one frame. The header and body go out in one `write_all` of `scratch`
/// so a TLS stream makes one record run instead of a tiny record for the header.
pub fn write_frame<W: Write>(
    w: &mut W,
    kind: u8,
    body: &[&[u8]],
    scratch: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let body_len: usize = body.iter().map(|b| b.len()).sum();
    let len = body_len + 1;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    let wire_len = u32::try_from(len).map_err(|_| FrameError::TooLarge {
        len,
        max: MAX_FRAME,
    })?;
    scratch.clear();
    scratch.extend_from_slice(&wire_len.to_le_bytes());
    scratch.push(kind);
    for part in body {
        scratch.extend_from_slice(part);
    }
    w.write_all(scratch)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame into `buf` (reused between calls) and returns its kind;
/// `buf` then holds the body. A clean EOF before the first header byte is
/// [`FrameError::Closed`]; EOF inside a frame is an I/O error (truncated frame).
pub fn read_frame<R: Read>(r: &mut R, buf: &mut Vec<u8>) -> Result<u8, FrameError> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < header.len() {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes(header) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    let mut kind = [0u8; 1];
    r.read_exact(&mut kind)?;
    buf.clear();
    buf.resize(len - 1, 0);
    r.read_exact(buf)?;
    Ok(kind[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn round_trip_keeps_kind_and_body() {
        let mut wire = Vec::new();
        let mut scratch = Vec::new();
        write_frame(&mut wire, 7, &[b"ab", b"cd"], &mut scratch).unwrap();
        write_frame(&mut wire, 9, &[], &mut scratch).unwrap();
        let mut r = Cursor::new(wire);
        let mut buf = Vec::new();
        assert_eq!(read_frame(&mut r, &mut buf).unwrap(), 7);
        assert_eq!(buf, b"abcd");
        assert_eq!(read_frame(&mut r, &mut buf).unwrap(), 9);
        assert!(buf.is_empty());
        assert!(matches!(
            read_frame(&mut r, &mut buf),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn oversized_announcement_is_refused_before_allocating() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&u32::MAX.to_le_bytes());
        wire.push(1);
        let mut buf = Vec::new();
        let err = read_frame(&mut Cursor::new(wire), &mut buf).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
        assert!(buf.capacity() < 1024, "nothing big was allocated");
    }

    #[test]
    fn truncated_frame_is_an_error_not_a_short_message() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&100u32.to_le_bytes());
        wire.push(1);
        wire.extend_from_slice(&[0u8; 10]);
        let err = read_frame(&mut Cursor::new(wire), &mut Vec::new()).unwrap_err();
        assert!(matches!(err, FrameError::Io(ref e) if e.kind() == io::ErrorKind::UnexpectedEof));
    }

    #[test]
    fn zero_length_frame_is_refused() {
        let wire = 0u32.to_le_bytes().to_vec();
        let err = read_frame(&mut Cursor::new(wire), &mut Vec::new()).unwrap_err();
        assert!(matches!(err, FrameError::Empty));
    }

    #[test]
    fn writer_refuses_frames_over_the_limit() {
        let big = vec![0u8; MAX_FRAME];
        let err = write_frame(&mut Vec::new(), 1, &[&big], &mut Vec::new()).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
    }
}
