//! The sending side of a round, on the dialer (the source host): after
//! `StartRound`, answer the receiver's requests from a [`ChunkSource`] (the
//! mover's [`crate::Sender`]) until it says `RoundDone`.

use std::io::{self, Write};

use super::conn::{Conn, ConnError};
use super::message::{ErrorCode, Message, RoundRequest, RoundSummary, WireWant};
use super::patch::{self, BlockSum};
use super::stream::BoxStream;
use crate::chunk::ChunkId;
use crate::source::{ChunkSource, SourceError, Want};

/// Errors of sinks crossing this layer (the mover's `SinkError`).
pub type BoxError = crate::source::SinkError;
/// Receives the bytes of want `i` of a fetch, in order (the mover's `Sink`).
pub type ChunkSink<'a> = crate::source::Sink<'a>;

impl From<WireWant> for Want {
    fn from(w: WireWant) -> Want {
        Want {
            entry: w.entry,
            offset: w.offset,
            len: w.len,
            id: ChunkId(w.id),
        }
    }
}

impl From<&Want> for WireWant {
    fn from(w: &Want) -> WireWant {
        WireWant {
            entry: w.entry,
            offset: w.offset,
            len: w.len,
            id: w.id.0,
        }
    }
}

/// Manifest bytes per `ManifestData` frame: big enough that framing costs
/// nothing, small enough to keep the receiver's disk writes streaming.
const MANIFEST_PIECE: usize = 256 * 1024;

/// Errors serving a round.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error("reading the source: {0}")]
    Source(SourceError),
}

impl ServeError {
    pub fn retryable(&self) -> bool {
        match self {
            ServeError::Conn(c) => c.retryable(),
            ServeError::Source(_) => true,
        }
    }
}

/// Events for a progress display on the sending side.
#[derive(Debug, Clone, Copy)]
pub enum ServeEvent {
    /// Manifest bytes sent.
    ManifestSent {
        /// How many.
        bytes: u64,
    },
    /// Chunk payload sent.
    ChunkSent {
        /// How many: the chunk's length.
        bytes: u64,
        /// What the link carried for it before compression: the patch's
        /// length when it went as a patch of the receiver's older bytes
        /// (pages rewritten in place), else the chunk's.
        carried: u64,
    },
}

/// Writes manifest bytes as `ManifestData` frames.
struct ManifestFrames<'a> {
    conn: &'a mut Conn<BoxStream>,
    /// `ManifestDelta` frames, else `ManifestData`.
    delta: bool,
    buf: Vec<u8>,
    sent: u64,
    failed: Option<ConnError>,
}

impl ManifestFrames<'_> {
    fn push(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.buf);
        self.sent += data.len() as u64;
        let m = if self.delta {
            Message::ManifestDelta(data)
        } else {
            Message::ManifestData(data)
        };
        let r = self.conn.send(&m);
        self.buf = Vec::with_capacity(MANIFEST_PIECE);
        r.map_err(|e| {
            let msg = e.to_string();
            self.failed = Some(e);
            io::Error::other(msg)
        })
    }
}

impl Write for ManifestFrames<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(MANIFEST_PIECE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == MANIFEST_PIECE {
            self.push()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.push()
    }
}

/// Streams the manifest: as a delta against `base` when the source still has
/// it, else whole; then `ManifestEnd`.
fn send_manifest(
    conn: &mut Conn<BoxStream>,
    source: &mut dyn ChunkSource,
    base: Option<ChunkId>,
    progress: &mut dyn FnMut(ServeEvent),
) -> Result<(), ServeError> {
    let mut sent = 0;
    let mut root = None;
    for delta in [true, false] {
        if delta && base.is_none() {
            continue;
        }
        let mut w = ManifestFrames {
            conn: &mut *conn,
            delta,
            buf: Vec::with_capacity(MANIFEST_PIECE),
            sent: 0,
            failed: None,
        };
        let r = match base {
            Some(b) if delta => source.manifest_delta(&b, &mut w),
            _ => source.manifest(&mut w).map(Some),
        }
        .and_then(|r| {
            w.flush().map_err(SourceError::Manifest)?;
            Ok(r)
        });
        sent += w.sent;
        if let Some(e) = w.failed.take() {
            return Err(e.into());
        }
        match r {
            Ok(Some(r)) => {
                root = Some(r);
                break;
            }
            // No such base here: nothing was written, send it whole.
            Ok(None) => {}
            Err(e) => {
                conn.send_error(ErrorCode::Transient, format!("source manifest: {e}"));
                return Err(ServeError::Source(e));
            }
        }
    }
    let root = root.expect("the whole manifest is always sent or fails");
    progress(ServeEvent::ManifestSent { bytes: sent });
    conn.send(&Message::ManifestEnd { root: root.0 })?;
    Ok(())
}

/// Answers one fetch: every want's bytes, in order, then `FetchEnd`. A want
/// with block sums of the receiver's older bytes goes as a patch when that
/// saves enough.
fn serve_fetch(
    conn: &mut Conn<BoxStream>,
    source: &mut dyn ChunkSource,
    wants: &[Want],
    sums: &[Vec<BlockSum>],
    progress: &mut dyn FnMut(ServeEvent),
) -> Result<(), ServeError> {
    let mut link: Option<ConnError> = None;
    let mut p = Vec::new();
    let r = source.fetch(wants, &mut |i, a| {
        let data = a.data();
        #[allow(
            clippy::cast_possible_truncation,
            reason = "i < wants.len() <= MAX_WANTS_PER_BATCH"
        )]
        let index = i as u32;
        let s = sums.get(i).map_or(&[][..], |s| &s[..]);
        let patched = !s.is_empty()
            && data.len() == wants[i].len as usize
            && patch::encode(data, wants[i].offset, s, &mut p);
        let sent = if patched {
            conn.send_patch(index, &p)
        } else {
            conn.send_chunk(index, data)
        };
        match sent {
            Ok(()) => {
                progress(ServeEvent::ChunkSent {
                    bytes: data.len() as u64,
                    carried: if patched { p.len() } else { data.len() } as u64,
                });
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                link = Some(e);
                Err(msg.into())
            }
        }
    });
    if let Some(e) = link {
        return Err(e.into());
    }
    if let Err(e) = r {
        conn.send_error(ErrorCode::Transient, format!("source read: {e}"));
        return Err(ServeError::Source(e));
    }
    conn.send(&Message::FetchEnd)?;
    Ok(())
}

/// Asks the acceptor to receive a round, then serves it. Returns the
/// receiver's summary.
pub fn push_round(
    conn: &mut Conn<BoxStream>,
    req: &RoundRequest,
    source: &mut dyn ChunkSource,
    progress: &mut dyn FnMut(ServeEvent),
) -> Result<RoundSummary, ServeError> {
    conn.send(&Message::StartRound(req.clone()))?;
    loop {
        match conn.recv()? {
            Message::GetManifest => send_manifest(conn, source, None, progress)?,
            Message::GetManifestSince { base } => {
                send_manifest(conn, source, Some(ChunkId(base)), progress)?
            }
            Message::Fetch(wire) => {
                let wants: Vec<Want> = wire.into_iter().map(Want::from).collect();
                serve_fetch(conn, source, &wants, &[], progress)?;
            }
            Message::FetchPatched(pw) => {
                let wants: Vec<Want> = pw.iter().map(|p| Want::from(p.want)).collect();
                let sums: Vec<Vec<BlockSum>> = pw.into_iter().map(|p| p.sums).collect();
                serve_fetch(conn, source, &wants, &sums, progress)?;
            }
            Message::RoundDone(summary) => return Ok(summary),
            other => {
                conn.send_error(ErrorCode::Invalid, format!("unexpected {}", other.name()));
                return Err(ConnError::Unexpected {
                    expected: "GetManifest(Since), Fetch(Patched) or RoundDone",
                    got: other.name(),
                }
                .into());
            }
        }
    }
}
