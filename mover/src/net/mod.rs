//! Moving volumes between hosts: the peer protocol and its ends.
//!
//! Map (bottom up):
//! - `frame`: length-prefixed frames with a hard size limit.
//! - `message`: the protocol's messages, strictly decoded.
//! - `compress`: optional zstd per chunk, bounded decompression.
//! - `bwlimit`: one token bucket per process, charged by every socket.
//! - `identity`: the cluster CA and node certificates (rcgen).
//! - `tls`: rustls mutual-TLS configurations.
//! - `conn`: a connection: `Hello` exchange, send/receive messages and chunks.
//!
//! The dialer is the *source* of a volume; the acceptor (the agent) receives
//! and drives each round (receiver-driven, as in `DESIGN.md`).

pub mod bwlimit;
pub mod compress;
pub mod conn;
pub mod frame;
pub mod identity;
pub mod message;
pub mod tls;
