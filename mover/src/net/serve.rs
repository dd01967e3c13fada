//! The sending side of a round, on the dialer (the source host): after
//! `StartRound`, answer the receiver's requests from a [`ChunkSource`] (the
//! mover's [`crate::Sender`]) until it says `RoundDone`.

use std::io::{self, Write};

use super::conn::{Conn, ConnError};
use super::message::{ErrorCode, Message, RoundRequest, RoundSummary, WireWant};
use super::stream::BoxStream;
use crate::chunk::ChunkId;
use crate::source::{ChunkSource, SourceError, Want};

/// Errors of sinks crossing this layer (the mover's `SinkError`).
pub type BoxError = crate::source::SinkError;
/// Receives the bytes of want `i` of a fetch, in order.
pub type ChunkSink<'a> = dyn FnMut(usize, &[u8]) -> Result<(), BoxError> + 'a;

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
    ManifestSent { bytes: u64 },
    ChunkSent { bytes: u64 },
}

/// Writes manifest bytes as `ManifestData` frames.
struct ManifestFrames<'a> {
    conn: &'a mut Conn<BoxStream>,
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
        let r = self.conn.send(&Message::ManifestData(data));
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
            Message::GetManifest => {
                let mut w = ManifestFrames {
                    conn: &mut *conn,
                    buf: Vec::with_capacity(MANIFEST_PIECE),
                    sent: 0,
                    failed: None,
                };
                let root = source.manifest(&mut w).and_then(|r| {
                    w.flush().map_err(SourceError::Manifest)?;
                    Ok(r.0)
                });
                let sent = w.sent;
                if let Some(e) = w.failed.take() {
                    return Err(e.into());
                }
                let root = match root {
                    Ok(r) => r,
                    Err(e) => {
                        conn.send_error(ErrorCode::Transient, format!("source manifest: {e}"));
                        return Err(ServeError::Source(e));
                    }
                };
                progress(ServeEvent::ManifestSent { bytes: sent });
                conn.send(&Message::ManifestEnd { root })?;
            }
            Message::Fetch(wire) => {
                let wants: Vec<Want> = wire.into_iter().map(Want::from).collect();
                let mut link: Option<ConnError> = None;
                let r = source.fetch(&wants, &mut |i, data| {
                    // i < wants.len() <= MAX_WANTS_PER_BATCH, fits u32.
                    match conn.send_chunk(i as u32, data) {
                        Ok(()) => {
                            progress(ServeEvent::ChunkSent {
                                bytes: data.len() as u64,
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
            }
            Message::RoundDone(summary) => return Ok(summary),
            other => {
                conn.send_error(ErrorCode::Invalid, format!("unexpected {}", other.name()));
                return Err(ConnError::Unexpected {
                    expected: "GetManifest, Fetch or RoundDone",
                    got: other.name(),
                }
                .into());
            }
        }
    }
}
