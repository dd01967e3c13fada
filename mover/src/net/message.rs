//! The peer protocol's messages (version 3) and their encoding in frames.
//!
//! Each message is one frame whose kind byte says which message it is. Small
//! messages carry a postcard body; bulk payloads (manifest bytes, chunk data)
//! follow their header raw, so they are not copied byte by byte through serde.
//! Decoding is strict: an unknown kind, a body that does not parse, trailing
//! bytes, or a value over a protocol limit are errors. A peer that lies gets an
//! error here, before any other part of daffe sees its message.

use serde::{Deserialize, Serialize};

/// Written in every `Hello`, so a stray client (HTTP, a port scanner) is told
/// apart from an old daffe.
pub const MAGIC: [u8; 8] = *b"DAFFENET";
/// The protocol version this build speaks. Bump on any change of a message.
/// 3: `RoundRequest::token`, and a peer's `Hello` must name the node its
/// certificate names (issue 12, finding 5). A version-2 peer is refused with
/// "no common protocol version" rather than half understood.
pub const PROTOCOL_VERSION: u16 = 3;
/// Longest chunk we send or accept. The mover's largest chunker class max is
/// 4 MiB; this is the frame budget for one chunk (see `frame::MAX_FRAME`).
pub const MAX_CHUNK_LEN: u32 = 8 * 1024 * 1024;
/// Wants per `Fetch` frame: 16,384 wants of ~50 encoded bytes stay well under
/// one frame, and one batch of small-chunk wants still moves tens of MiB.
pub const MAX_WANTS_PER_BATCH: usize = 16_384;
/// Longest round target (a volume name or label) and node name.
pub const MAX_NAME_LEN: usize = 1024;
/// Longest migration token in a `RoundRequest` (daffe's are 32 hex digits).
pub const MAX_TOKEN_LEN: usize = 256;

/// Feature bits announced in `Hello`; a feature is used only when both sides have it.
pub mod feature {
    /// Chunk payloads may be zstd-compressed.
    pub const ZSTD: u32 = 1;
    /// The manifest may travel as a delta against one the receiver holds
    /// (`GetManifestSince` / `ManifestDelta`).
    pub const MANIFEST_DELTA: u32 = 2;
    /// Wants may carry block sums of the receiver's previous bytes
    /// (`FetchPatched`), answered with chunk patches (see `patch`).
    pub const CHUNK_PATCH: u32 = 4;
}

/// First message each way after TLS is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub magic: [u8; 8],
    pub min_version: u16,
    pub max_version: u16,
    /// The sender's node name: the one its certificate carries (protocol 3
    /// checks it; a `Hello` naming another node is refused).
    pub node: String,
    pub features: u32,
}

/// What a round transfers: a directory tree (`dir` volumes) or a byte image
/// (`block` volumes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferMode {
    /// A directory tree.
    Tree,
    /// A byte image (a block volume's file or device).
    Image,
}

/// Dialer -> acceptor: "receive one round into `target`". The acceptor then
/// drives the round (it asks for the manifest and the chunks it lacks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundRequest {
    /// What the acceptor receives into, in its own terms (daffe: the volume name).
    pub target: String,
    /// Tree or image.
    pub mode: TransferMode,
    /// 1-based round number, for reports.
    pub round: u32,
    /// The source is quiesced: this round makes the destination final.
    pub final_round: bool,
    /// The migration's token (protocol 3): what the acceptor's handler
    /// handed out when the migration was prepared, so a round from any other
    /// run (another node, or a stale process of the same one) is refused.
    /// The mover carries it; the handler checks it. Empty: none.
    pub token: String,
}

/// One positional request: bytes `[offset, offset + len)` of manifest entry
/// `entry`, expected to hash to `id`. The receiver checks the id on arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireWant {
    pub entry: u32,
    pub offset: u64,
    pub len: u32,
    pub id: [u8; 32],
}

/// A want with the sums of the receiver's previous version of its range
/// (empty: it has none; the chunk comes whole).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchWant {
    pub want: WireWant,
    pub sums: Vec<super::patch::BlockSum>,
}

/// How a chunk payload is encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Codec {
    Raw,
    Zstd,
    /// A patch against the receiver's previous bytes (`FetchPatched` only).
    Patch,
    /// A zstd-compressed patch.
    PatchZstd,
}

/// Header of a chunk reply: which want of the current batch it answers. The
/// payload may be *shorter* than the want (the file shrank since the scan: the
/// receiver's id check then marks the entry stale), never longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkHeader {
    /// Index of the want in the batch it answers.
    pub index: u32,
    pub codec: Codec,
}

/// Acceptor -> dialer at the end of a round: what the receiver did.
/// `#[non_exhaustive]`: a [`RoundHandler`](crate::net::RoundHandler) of
/// one's own builds it from `Default` with the `with_*` setters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RoundSummary {
    /// Entries the round's manifest listed.
    pub files: u64,
    /// Chunks the manifest referenced.
    pub chunks_total: u64,
    /// Of those, chunks fetched from the sender.
    pub chunks_new: u64,
    /// Of those, chunks the receiver already held.
    pub chunks_reused: u64,
    /// Chunk payload received (uncompressed): the round's dirty data.
    pub bytes_fetched: u64,
    /// Bytes written to the destination.
    pub bytes_written: u64,
    /// Entries that changed at the source while being sent (their changed
    /// ranges kept at their old version this round; pre-copy rounds only).
    pub stale: u64,
    /// The applied manifest's root hash.
    pub root: [u8; 32],
    /// The round's duration at the receiver, in milliseconds.
    pub duration_ms: u64,
    /// Bytes of those ranges (version 2): they go again next round.
    pub bytes_dirty: u64,
}

crate::builder::setters!(RoundSummary {
    with_files => files: u64,
    with_chunks_total => chunks_total: u64,
    with_chunks_new => chunks_new: u64,
    with_chunks_reused => chunks_reused: u64,
    with_bytes_fetched => bytes_fetched: u64,
    with_bytes_written => bytes_written: u64,
    with_stale => stale: u64,
    with_root => root: [u8; 32],
    with_duration_ms => duration_ms: u64,
    with_bytes_dirty => bytes_dirty: u64,
});

/// Why a request failed. `Busy` and `Transient` are worth a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// Not allowed (fenced, wrong profile, no room...).
    Refused,
    /// Another round on the same target is still running; retry later.
    Busy,
    /// The request was malformed or broke the protocol.
    Invalid,
    /// A failure on the peer that may pass (I/O, a link that dropped mid-round).
    Transient,
    /// The source changed under its scan: what arrived is stored; rescan and
    /// push the round again.
    Stale,
}

impl ErrorCode {
    /// Worth a retry (`Busy`, `Transient`, `Stale`).
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Busy | ErrorCode::Transient | ErrorCode::Stale
        )
    }
}

/// A request's failure, as it crosses the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// What kind of failure (whether a retry can help).
    pub code: ErrorCode,
    /// The peer's words.
    pub message: String,
}

/// Every message of protocol version 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    Error(WireError),
    /// An application request (daffe: preflight, commit), opaque to the mover.
    Control(Vec<u8>),
    ControlReply(Vec<u8>),
    StartRound(RoundRequest),
    /// Receiver -> sender: stream this round's manifest.
    GetManifest,
    ManifestData(Vec<u8>),
    /// Receiver -> sender: stream this round's manifest, as a delta against
    /// the manifest with root `base` if the sender still has it (answered
    /// with `ManifestDelta` frames), else whole (`ManifestData`).
    GetManifestSince {
        base: [u8; 32],
    },
    /// A piece of a manifest delta (see `manifest_delta`).
    ManifestDelta(Vec<u8>),
    /// End of the manifest, with the root the sender computed.
    ManifestEnd {
        root: [u8; 32],
    },
    Fetch(Vec<WireWant>),
    /// `Fetch` with block sums for wants the receiver holds an older version
    /// of: those may be answered with patches.
    FetchPatched(Vec<PatchWant>),
    Chunk {
        header: ChunkHeader,
        data: Vec<u8>,
    },
    FetchEnd,
    RoundDone(RoundSummary),
    Bye,
}

/// Kind byte of chunk replies, which `conn` writes without building a `Message`.
pub(crate) const CHUNK_KIND: u8 = kind::CHUNK;

/// Frame kind bytes. Never reuse a retired number.
mod kind {
    pub const HELLO: u8 = 1;
    pub const ERROR: u8 = 2;
    pub const CONTROL: u8 = 3;
    pub const CONTROL_REPLY: u8 = 4;
    pub const START_ROUND: u8 = 5;
    pub const GET_MANIFEST: u8 = 6;
    pub const MANIFEST_DATA: u8 = 7;
    pub const MANIFEST_END: u8 = 8;
    pub const FETCH: u8 = 9;
    pub const CHUNK: u8 = 10;
    pub const FETCH_END: u8 = 11;
    pub const ROUND_DONE: u8 = 12;
    pub const BYE: u8 = 13;
    pub const GET_MANIFEST_SINCE: u8 = 14;
    pub const MANIFEST_DELTA: u8 = 15;
    pub const FETCH_PATCHED: u8 = 16;
}

/// Errors while decoding or encoding a message.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("malformed {what} message: {source}")]
    Malformed {
        what: &'static str,
        source: postcard::Error,
    },
    #[error("{what} message has {extra} trailing bytes")]
    Trailing { what: &'static str, extra: usize },
    #[error("{what} message has a body but must be empty")]
    NotEmpty { what: &'static str },
    #[error("{what} is over the protocol limit: {value} > {max}")]
    OverLimit {
        what: &'static str,
        value: u64,
        max: u64,
    },
    #[error("could not encode {what}: {source}")]
    Encode {
        what: &'static str,
        source: postcard::Error,
    },
}

impl Message {
    /// A short name for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Error(_) => "Error",
            Message::Control(_) => "Control",
            Message::ControlReply(_) => "ControlReply",
            Message::StartRound(_) => "StartRound",
            Message::GetManifest => "GetManifest",
            Message::ManifestData(_) => "ManifestData",
            Message::GetManifestSince { .. } => "GetManifestSince",
            Message::ManifestDelta(_) => "ManifestDelta",
            Message::ManifestEnd { .. } => "ManifestEnd",
            Message::Fetch(_) => "Fetch",
            Message::FetchPatched(_) => "FetchPatched",
            Message::Chunk { .. } => "Chunk",
            Message::FetchEnd => "FetchEnd",
            Message::RoundDone(_) => "RoundDone",
            Message::Bye => "Bye",
        }
    }

    /// Encodes into (kind, head) plus an optional raw payload slice that goes
    /// after the head, so bulk data is never copied into a postcard buffer.
    pub fn encode(&self, head: &mut Vec<u8>) -> Result<(u8, Option<&[u8]>), MessageError> {
        head.clear();
        let k = match self {
            Message::Hello(h) => put(head, "Hello", h).map(|_| kind::HELLO)?,
            Message::Error(e) => put(head, "Error", e).map(|_| kind::ERROR)?,
            Message::Control(b) => return Ok((kind::CONTROL, Some(b))),
            Message::ControlReply(b) => return Ok((kind::CONTROL_REPLY, Some(b))),
            Message::StartRound(r) => put(head, "StartRound", r).map(|_| kind::START_ROUND)?,
            Message::GetManifest => kind::GET_MANIFEST,
            Message::ManifestData(b) => return Ok((kind::MANIFEST_DATA, Some(b))),
            Message::GetManifestSince { base } => {
                put(head, "GetManifestSince", base).map(|_| kind::GET_MANIFEST_SINCE)?
            }
            Message::ManifestDelta(b) => return Ok((kind::MANIFEST_DELTA, Some(b))),
            Message::ManifestEnd { root } => {
                put(head, "ManifestEnd", root).map(|_| kind::MANIFEST_END)?
            }
            Message::Fetch(w) => {
                check_wants(w)?;
                put(head, "Fetch", w).map(|_| kind::FETCH)?
            }
            Message::FetchPatched(w) => {
                check_patch_wants(w)?;
                put(head, "FetchPatched", w).map(|_| kind::FETCH_PATCHED)?
            }
            Message::Chunk { header, data } => {
                put(head, "Chunk", header)?;
                return Ok((kind::CHUNK, Some(data)));
            }
            Message::FetchEnd => kind::FETCH_END,
            Message::RoundDone(s) => put(head, "RoundDone", s).map(|_| kind::ROUND_DONE)?,
            Message::Bye => kind::BYE,
        };
        Ok((k, None))
    }

    /// Decodes one frame body of kind `k`. Strict: see the module doc.
    pub fn decode(k: u8, body: &[u8]) -> Result<Message, MessageError> {
        Ok(match k {
            kind::HELLO => {
                let h: Hello = take_all(body, "Hello")?;
                check_len("node name", h.node.len(), MAX_NAME_LEN)?;
                Message::Hello(h)
            }
            kind::ERROR => Message::Error(take_all(body, "Error")?),
            kind::CONTROL => Message::Control(body.to_vec()),
            kind::CONTROL_REPLY => Message::ControlReply(body.to_vec()),
            kind::START_ROUND => {
                let r: RoundRequest = take_all(body, "StartRound")?;
                check_len("round target", r.target.len(), MAX_NAME_LEN)?;
                check_len("round token", r.token.len(), MAX_TOKEN_LEN)?;
                Message::StartRound(r)
            }
            kind::GET_MANIFEST => empty(body, "GetManifest", Message::GetManifest)?,
            kind::MANIFEST_DATA => Message::ManifestData(body.to_vec()),
            kind::GET_MANIFEST_SINCE => Message::GetManifestSince {
                base: take_all(body, "GetManifestSince")?,
            },
            kind::MANIFEST_DELTA => Message::ManifestDelta(body.to_vec()),
            kind::MANIFEST_END => Message::ManifestEnd {
                root: take_all(body, "ManifestEnd")?,
            },
            kind::FETCH => {
                let w: Vec<WireWant> = take_all(body, "Fetch")?;
                check_wants(&w)?;
                Message::Fetch(w)
            }
            kind::FETCH_PATCHED => {
                let w: Vec<PatchWant> = take_all(body, "FetchPatched")?;
                check_patch_wants(&w)?;
                Message::FetchPatched(w)
            }
            kind::CHUNK => {
                let (header, rest): (ChunkHeader, &[u8]) = postcard::take_from_bytes(body)
                    .map_err(|source| MessageError::Malformed {
                        what: "Chunk",
                        source,
                    })?;
                check_len("chunk payload", rest.len(), MAX_CHUNK_LEN as usize)?;
                Message::Chunk {
                    header,
                    data: rest.to_vec(),
                }
            }
            kind::FETCH_END => empty(body, "FetchEnd", Message::FetchEnd)?,
            kind::ROUND_DONE => Message::RoundDone(take_all(body, "RoundDone")?),
            kind::BYE => empty(body, "Bye", Message::Bye)?,
            other => return Err(MessageError::UnknownKind(other)),
        })
    }
}

fn put<T: Serialize>(head: &mut Vec<u8>, what: &'static str, v: &T) -> Result<(), MessageError> {
    let bytes = postcard::to_stdvec(v).map_err(|source| MessageError::Encode { what, source })?;
    head.extend_from_slice(&bytes);
    Ok(())
}

fn take_all<'a, T: Deserialize<'a>>(body: &'a [u8], what: &'static str) -> Result<T, MessageError> {
    let (v, rest) = postcard::take_from_bytes(body)
        .map_err(|source| MessageError::Malformed { what, source })?;
    if !rest.is_empty() {
        return Err(MessageError::Trailing {
            what,
            extra: rest.len(),
        });
    }
    Ok(v)
}

fn empty(body: &[u8], what: &'static str, m: Message) -> Result<Message, MessageError> {
    if body.is_empty() {
        Ok(m)
    } else {
        Err(MessageError::NotEmpty { what })
    }
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), MessageError> {
    if len > max {
        return Err(MessageError::OverLimit {
            what,
            value: len as u64,
            max: max as u64,
        });
    }
    Ok(())
}

fn check_wants(w: &[WireWant]) -> Result<(), MessageError> {
    check_len("wants per batch", w.len(), MAX_WANTS_PER_BATCH)?;
    for want in w {
        check_len("want length", want.len as usize, MAX_CHUNK_LEN as usize)?;
    }
    Ok(())
}

fn check_patch_wants(w: &[PatchWant]) -> Result<(), MessageError> {
    check_len("wants per batch", w.len(), MAX_WANTS_PER_BATCH)?;
    for p in w {
        check_len("want length", p.want.len as usize, MAX_CHUNK_LEN as usize)?;
        // One sum per block of the want, at most.
        let blocks = super::patch::blocks(p.want.offset, p.want.len as usize);
        check_len("block sums of a want", p.sums.len(), blocks)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: Message) {
        let mut head = Vec::new();
        let (k, payload) = m.encode(&mut head).unwrap();
        let mut body = head.clone();
        if let Some(p) = payload {
            body.extend_from_slice(p);
        }
        assert_eq!(Message::decode(k, &body).unwrap(), m);
    }

    fn want(len: u32) -> WireWant {
        WireWant {
            entry: 3,
            offset: 1 << 40,
            len,
            id: [7; 32],
        }
    }

    #[test]
    fn every_message_round_trips() {
        let all = vec![
            Message::Hello(Hello {
                magic: MAGIC,
                min_version: 1,
                max_version: 1,
                node: "hosta".into(),
                features: feature::ZSTD,
            }),
            Message::Error(WireError {
                code: ErrorCode::Busy,
                message: "round running".into(),
            }),
            Message::Control(b"{\"a\":1}".to_vec()),
            Message::ControlReply(vec![]),
            Message::StartRound(RoundRequest {
                target: "counter@gold".into(),
                mode: TransferMode::Image,
                round: 2,
                final_round: true,
                token: "0123abcd".into(),
            }),
            Message::GetManifest,
            Message::ManifestData(vec![0, 1, 2]),
            Message::GetManifestSince { base: [9; 32] },
            Message::FetchPatched(vec![PatchWant {
                want: WireWant {
                    entry: 1,
                    offset: 8192,
                    len: 16384,
                    id: [4; 32],
                },
                sums: vec![[1; 8], [2; 8]],
            }]),
            Message::ManifestDelta(vec![3, 4]),
            Message::ManifestEnd { root: [4; 32] },
            Message::Fetch(vec![want(4096), want(1)]),
            Message::Chunk {
                header: ChunkHeader {
                    index: 5,
                    codec: Codec::Zstd,
                },
                data: vec![9; 100],
            },
            Message::FetchEnd,
            Message::RoundDone(RoundSummary {
                bytes_fetched: 12,
                ..Default::default()
            }),
            Message::Bye,
        ];
        for m in all {
            round_trip(m);
        }
    }

    #[test]
    fn unknown_kind_is_refused() {
        assert!(matches!(
            Message::decode(200, &[]),
            Err(MessageError::UnknownKind(200))
        ));
        assert!(matches!(
            Message::decode(0, &[]),
            Err(MessageError::UnknownKind(0))
        ));
    }

    #[test]
    fn trailing_bytes_and_bodies_on_empty_messages_are_refused() {
        let mut head = Vec::new();
        let (k, _) = Message::ManifestEnd { root: [0; 32] }
            .encode(&mut head)
            .unwrap();
        head.push(0);
        assert!(matches!(
            Message::decode(k, &head),
            Err(MessageError::Trailing { .. })
        ));
        assert!(matches!(
            Message::decode(kind::BYE, &[1]),
            Err(MessageError::NotEmpty { .. })
        ));
    }

    #[test]
    fn garbage_body_is_malformed() {
        assert!(matches!(
            Message::decode(kind::START_ROUND, &[0xff; 3]),
            Err(MessageError::Malformed { .. })
        ));
    }

    #[test]
    fn lying_want_length_is_refused_both_ways() {
        let m = Message::Fetch(vec![want(MAX_CHUNK_LEN + 1)]);
        assert!(matches!(
            m.encode(&mut Vec::new()),
            Err(MessageError::OverLimit { .. })
        ));
        let body = postcard::to_stdvec(&vec![want(MAX_CHUNK_LEN + 1)]).unwrap();
        assert!(matches!(
            Message::decode(kind::FETCH, &body),
            Err(MessageError::OverLimit { .. })
        ));
    }

    #[test]
    fn too_many_wants_are_refused() {
        let body = postcard::to_stdvec(&vec![want(1); MAX_WANTS_PER_BATCH + 1]).unwrap();
        assert!(matches!(
            Message::decode(kind::FETCH, &body),
            Err(MessageError::OverLimit { .. })
        ));
    }

    #[test]
    fn overlong_target_is_refused() {
        let r = RoundRequest {
            target: "x".repeat(MAX_NAME_LEN + 1),
            mode: TransferMode::Tree,
            round: 1,
            final_round: false,
            token: String::new(),
        };
        let body = postcard::to_stdvec(&r).unwrap();
        assert!(matches!(
            Message::decode(kind::START_ROUND, &body),
            Err(MessageError::OverLimit { .. })
        ));
        let r = RoundRequest {
            target: "v".into(),
            token: "t".repeat(MAX_TOKEN_LEN + 1),
            ..r
        };
        let body = postcard::to_stdvec(&r).unwrap();
        assert!(matches!(
            Message::decode(kind::START_ROUND, &body),
            Err(MessageError::OverLimit { .. })
        ));
    }
}
