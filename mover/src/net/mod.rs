//! Moving volumes between hosts: the peer protocol and its ends.
//!
//! Map (bottom up):
//! - `frame`: length-prefixed frames with a hard size limit.
//! - `message`: the protocol's messages, strictly decoded.
//! - `compress`: optional zstd per chunk, bounded decompression.
//! - `patch`: a chunk sent as the 4 KiB blocks that differ from the receiver's
//!   previous version of the same range.
//! - `bwlimit`: one rate limiter per process (`crate::rate`), charged in
//!   bytes by every socket; `--bwlimit` parsing.
//! - `identity`: the cluster CA and node certificates (rcgen).
//! - `certname`: the node name a certificate carries (its subject's CN).
//! - `tls`: rustls mutual-TLS configurations.
//! - `conn`: a connection: `Hello` exchange, send/receive messages and chunks.
//! - `stream`: TCP + bandwidth limit + TLS, dial and accept.
//! - `serve`: the sending side of a round (answers from a `ChunkSource`).
//! - `netsource`: the receiving side's view of the remote source.
//! - `peer`: the dialer (`daffe migrate`); `agent`: the acceptor (`daffe agent`).
//! - `rounds`: one round end to end: receive into a destination; scan and
//!   push with retries (resume after a cut link, on `crate::retry`'s
//!   reconnect policy; rescan after a stale scan).
//! - `precopy`: the pre-copy loop of a live migration: rounds until
//!   `crate::converge` says stop, a hook before the last one, the report.
//!
//! Behind the mover feature `net` (rustls, rcgen, zstd).
//!
//! The dialer is the *source* of a volume; the acceptor (the agent) receives
//! and drives each round (receiver-driven, as in `DESIGN.md`).

// The API: the receiving agent and the sending dialer, their round
// summaries and errors, the node identity and TLS configurations, the
// pre-copy loop. Re-exported here from the modules that implement them.
pub mod identity;
pub mod precopy;
pub mod tls;

pub(crate) mod agent;
pub(crate) mod certname;
pub(crate) mod compress;
pub(crate) mod conn;
pub(crate) mod frame;
pub(crate) mod netsource;
pub(crate) mod patch;
pub(crate) mod peer;
pub(crate) mod rounds;
pub(crate) mod stream;
// Internals (this crate's protocol tests see them through
// `crate::internals::net`, feature `testing`).
#[cfg_attr(feature = "testing", allow(missing_docs))]
pub(crate) mod bwlimit;
#[cfg_attr(feature = "testing", allow(missing_docs))]
pub(crate) mod message;
#[cfg_attr(feature = "testing", allow(missing_docs))]
pub(crate) mod serve;

pub use agent::{
    Agent, ConnObserver, MAX_SESSIONS_PER_PEER, NoObserver, PeerInfo, Refusal, RoundHandler,
};
pub use bwlimit::{bandwidth_limiter, parse_rate};
pub use certname::{CertNameError, node_name_of};
pub use conn::ConnError;
pub use identity::NodeFiles;
pub use message::{ErrorCode, RoundRequest, RoundSummary, TransferMode, WireError};
pub use netsource::NetSource;
pub use peer::Peer;
pub use rounds::{
    RoundPushError, RoundPushReport, RoundPushRetry, RoundPusher, receive_round, summary,
    unreachable_reason, wire_error,
};
pub use serve::ServeEvent;
pub use stream::{DEFAULT_PORT, Endpoint, with_default_port};
