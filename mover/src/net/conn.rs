//! A protocol connection: frames + messages over any byte stream (TLS in
//! production, a plain socket pair in tests), the `Hello` exchange, and the
//! chunk codec both sides agreed on.

use std::io::{Read, Write};

use super::compress::{ChunkCodec, CompressError};
use super::frame::{self, FrameError};
use super::message::{
    ChunkHeader, Codec, ErrorCode, Hello, MAGIC, Message, MessageError, PROTOCOL_VERSION,
    WireError, feature,
};

/// Errors on an established (or establishing) connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// Framing failed (closed, timed out, oversized frame).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The peer sent a message that does not decode.
    #[error("peer sent a bad message: {0}")]
    Message(#[from] MessageError),
    /// A compressed chunk did not decompress.
    #[error("chunk payload: {0}")]
    Compress(#[from] CompressError),
    /// The peer's `Hello` is not daffe's.
    #[error("peer is not a daffe agent (bad magic in Hello)")]
    BadMagic,
    /// The two ends share no protocol version.
    #[error(
        "no common protocol version: we speak {ours_min}-{ours_max}, peer {theirs_min}-{theirs_max}"
    )]
    Version {
        /// Oldest version this end speaks.
        ours_min: u16,
        /// Newest version this end speaks.
        ours_max: u16,
        /// Oldest version the peer speaks.
        theirs_min: u16,
        /// Newest version the peer speaks.
        theirs_max: u16,
    },
    /// The peer broke the protocol.
    #[error("protocol violation: expected {expected}, got {got}")]
    Unexpected {
        /// What was expected.
        expected: &'static str,
        /// What came.
        got: &'static str,
    },
    /// The peer reported an error.
    #[error("peer {node} reported: {}", .error.message)]
    Remote {
        /// The peer's node name.
        node: String,
        /// Its error.
        error: WireError,
    },
}

impl ConnError {
    /// Whether a new connection and a retry of the same step may succeed: the
    /// link failed, or the peer said so. A peer breaking the protocol is final.
    pub fn retryable(&self) -> bool {
        match self {
            ConnError::Frame(FrameError::Closed | FrameError::Io(_)) => true,
            ConnError::Remote { error, .. } => error.code.retryable(),
            _ => false,
        }
    }
}

/// Options a side brings to the `Hello` exchange.
#[derive(Debug, Clone)]
pub struct HelloOptions {
    pub node: String,
    pub zstd: bool,
}

/// An established protocol connection.
pub struct Conn<S> {
    stream: S,
    rbuf: Vec<u8>,
    head: Vec<u8>,
    scratch: Vec<u8>,
    peer: Hello,
    codec: ChunkCodec,
}

impl<S> std::fmt::Debug for Conn<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.peer.node)
            .field("codec", &self.codec)
            .finish()
    }
}

impl<S: Read + Write> Conn<S> {
    /// Exchanges `Hello`s (we send first, both sides do: no deadlock since each
    /// `Hello` fits the socket buffers) and agrees on version and features.
    pub fn handshake(mut stream: S, opts: &HelloOptions) -> Result<Self, ConnError> {
        let ours = Hello {
            magic: MAGIC,
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            node: opts.node.clone(),
            features: feature::MANIFEST_DELTA
                | feature::CHUNK_PATCH
                | if opts.zstd { feature::ZSTD } else { 0 },
        };
        let mut head = Vec::new();
        let mut scratch = Vec::new();
        let (k, _) = Message::Hello(ours.clone()).encode(&mut head)?;
        frame::write_frame(&mut stream, k, &[&head], &mut scratch)?;
        let mut rbuf = Vec::new();
        let k = frame::read_frame(&mut stream, &mut rbuf)?;
        let peer = match Message::decode(k, &rbuf)? {
            Message::Hello(h) => h,
            other => {
                return Err(ConnError::Unexpected {
                    expected: "Hello",
                    got: other.name(),
                });
            }
        };
        if peer.magic != MAGIC {
            return Err(ConnError::BadMagic);
        }
        if peer.min_version > PROTOCOL_VERSION || peer.max_version < PROTOCOL_VERSION {
            return Err(ConnError::Version {
                ours_min: PROTOCOL_VERSION,
                ours_max: PROTOCOL_VERSION,
                theirs_min: peer.min_version,
                theirs_max: peer.max_version,
            });
        }
        let zstd = opts.zstd && peer.features & feature::ZSTD != 0;
        Ok(Conn {
            stream,
            rbuf,
            head,
            scratch,
            peer,
            codec: ChunkCodec::new(zstd),
        })
    }

    /// Whether the peer takes `FetchPatched` (chunk patches).
    pub fn chunk_patch(&self) -> bool {
        self.peer.features & feature::CHUNK_PATCH != 0
    }

    /// Whether the peer takes `GetManifestSince` (manifest deltas).
    pub fn manifest_delta(&self) -> bool {
        self.peer.features & feature::MANIFEST_DELTA != 0
    }

    /// The peer's `Hello`. Over TLS (`stream::dial`, `stream::accept`) its
    /// node is the name the peer's verified certificate carries: a `Hello`
    /// naming another node fails the handshake (issue 12, finding 5).
    pub fn peer(&self) -> &Hello {
        &self.peer
    }

    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// The raw stream, for tests that play a peer breaking the framing.
    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    pub fn compression(&self) -> bool {
        self.codec.enabled()
    }

    /// The same connection over `f(stream)` (e.g. boxed, once the handshake
    /// is done on the concrete stream).
    pub fn map_stream<T>(self, f: impl FnOnce(S) -> T) -> Conn<T> {
        Conn {
            stream: f(self.stream),
            rbuf: self.rbuf,
            head: self.head,
            scratch: self.scratch,
            peer: self.peer,
            codec: self.codec,
        }
    }

    pub fn send(&mut self, m: &Message) -> Result<(), ConnError> {
        let (k, payload) = m.encode(&mut self.head)?;
        match payload {
            Some(p) => {
                frame::write_frame(&mut self.stream, k, &[&self.head, p], &mut self.scratch)?
            }
            None => frame::write_frame(&mut self.stream, k, &[&self.head], &mut self.scratch)?,
        }
        Ok(())
    }

    /// Sends an error to the peer, best effort (the link may be what failed).
    pub fn send_error(&mut self, code: ErrorCode, message: impl Into<String>) {
        let _ = self.send(&Message::Error(WireError {
            code,
            message: message.into(),
        }));
    }

    /// Sends one chunk reply, compressed when negotiated and worth it, without
    /// copying the data into a `Message`.
    pub fn send_chunk(&mut self, index: u32, raw: &[u8]) -> Result<(), ConnError> {
        self.send_payload(index, raw, false)
    }

    /// Sends a chunk reply that is a patch (see `patch`), compressed when
    /// negotiated and worth it.
    pub fn send_patch(&mut self, index: u32, patch: &[u8]) -> Result<(), ConnError> {
        self.send_payload(index, patch, true)
    }

    fn send_payload(&mut self, index: u32, raw: &[u8], patch: bool) -> Result<(), ConnError> {
        let (codec, wire) = self.codec.encode(raw)?;
        let codec = match (patch, codec) {
            (true, Codec::Zstd) => Codec::PatchZstd,
            (true, _) => Codec::Patch,
            (false, c) => c,
        };
        self.head.clear();
        let header = ChunkHeader { index, codec };
        let h = postcard::to_stdvec(&header).map_err(|source| MessageError::Encode {
            what: "Chunk",
            source,
        })?;
        frame::write_frame(&mut self.stream, CHUNK_KIND, &[&h, wire], &mut self.scratch)?;
        Ok(())
    }

    /// Decodes a received chunk payload into `out` (at most `expected` bytes).
    pub fn decode_chunk(
        &mut self,
        codec: Codec,
        data: &[u8],
        expected: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), ConnError> {
        Ok(self.codec.decode(codec, data, expected, out)?)
    }

    /// Receives one message. A peer `Error` is returned as [`ConnError::Remote`].
    pub fn recv(&mut self) -> Result<Message, ConnError> {
        let k = frame::read_frame(&mut self.stream, &mut self.rbuf)?;
        match Message::decode(k, &self.rbuf)? {
            Message::Error(error) => Err(ConnError::Remote {
                node: self.peer.node.clone(),
                error,
            }),
            m => Ok(m),
        }
    }
}

/// The chunk kind byte, shared with `message` (kept in one place there).
const CHUNK_KIND: u8 = super::message::CHUNK_KIND;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair(za: bool, zb: bool) -> (Conn<UnixStream>, Conn<UnixStream>) {
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            Conn::handshake(
                b,
                &HelloOptions {
                    node: "b".into(),
                    zstd: zb,
                },
            )
            .unwrap()
        });
        let ca = Conn::handshake(
            a,
            &HelloOptions {
                node: "a".into(),
                zstd: za,
            },
        )
        .unwrap();
        (ca, t.join().unwrap())
    }

    #[test]
    fn handshake_agrees_on_features() {
        let (a, b) = pair(true, true);
        assert!(a.compression() && b.compression());
        assert_eq!(a.peer().node, "b");
        let (a, b) = pair(true, false);
        assert!(!a.compression() && !b.compression());
    }

    #[test]
    fn chunks_travel_compressed_and_decode_exactly() {
        let (mut a, mut b) = pair(true, true);
        let raw = vec![3u8; 100_000];
        a.send_chunk(4, &raw).unwrap();
        match b.recv().unwrap() {
            Message::Chunk { header, data } => {
                assert_eq!(header.index, 4);
                assert_eq!(header.codec, Codec::Zstd);
                let mut out = Vec::new();
                b.decode_chunk(header.codec, &data, 100_000, &mut out)
                    .unwrap();
                assert_eq!(out, raw);
            }
            m => panic!("got {}", m.name()),
        }
    }

    #[test]
    fn remote_errors_surface_with_their_code() {
        let (mut a, mut b) = pair(false, false);
        a.send_error(ErrorCode::Busy, "round running");
        let err = b.recv().unwrap_err();
        assert!(err.retryable(), "{err}");
        assert!(err.to_string().contains("round running"));
    }

    #[test]
    fn wrong_magic_and_non_hello_are_refused() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            Conn::handshake(
                b,
                &HelloOptions {
                    node: "b".into(),
                    zstd: false,
                },
            )
        });
        // Play a peer that opens with something else than Hello.
        let mut head = Vec::new();
        let (k, _) = Message::Bye.encode(&mut head).unwrap();
        frame::write_frame(&mut a, k, &[&head], &mut Vec::new()).unwrap();
        let err = t.join().unwrap().unwrap_err();
        assert!(matches!(err, ConnError::Unexpected { .. }), "{err}");

        let (mut a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            Conn::handshake(
                b,
                &HelloOptions {
                    node: "b".into(),
                    zstd: false,
                },
            )
        });
        let bad = Message::Hello(Hello {
            magic: *b"HTTP/1.1",
            min_version: 1,
            max_version: 1,
            node: "x".into(),
            features: 0,
        });
        let (k, _) = bad.encode(&mut head).unwrap();
        frame::write_frame(&mut a, k, &[&head], &mut Vec::new()).unwrap();
        assert!(matches!(t.join().unwrap(), Err(ConnError::BadMagic)));
    }

    #[test]
    fn version_without_overlap_is_refused() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            Conn::handshake(
                b,
                &HelloOptions {
                    node: "b".into(),
                    zstd: false,
                },
            )
        });
        let mut head = Vec::new();
        let future = Message::Hello(Hello {
            magic: MAGIC,
            min_version: PROTOCOL_VERSION + 1,
            max_version: PROTOCOL_VERSION + 3,
            node: "x".into(),
            features: 0,
        });
        let (k, _) = future.encode(&mut head).unwrap();
        frame::write_frame(&mut a, k, &[&head], &mut Vec::new()).unwrap();
        assert!(matches!(t.join().unwrap(), Err(ConnError::Version { .. })));
    }
}
