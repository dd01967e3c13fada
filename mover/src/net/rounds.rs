//! One round end to end, for embedders (daffe's agent and `migrate`, tests):
//! - [`receive_round`]: the acceptor side, a mover [`Receiver`] fed by a
//!   [`NetSource`], errors mapped to protocol error codes;
//! - [`RoundPusher`]: the dialer side, scan + push with retries: a cut link
//!   or a restarted agent is retried (the receiver resumes from what it stored
//!   durably), a source that changed under its scan is rescanned.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use super::message::{ErrorCode, RoundRequest, RoundSummary, TransferMode, WireError};
use super::netsource::NetSource;
use super::peer::Peer;
use super::serve::{ServeError, ServeEvent};
use super::stream::{Endpoint, StreamError, with_default_port};
use crate::clock::{Clock, SystemClock, millis};
use crate::receive::{Destination, ReceiveError, ReceiveOptions, Receiver, RoundStats};
use crate::retry::{Attempts, ErrorKind, RetryPolicy};
use crate::scan::{ScanError, ScanOptions, ScanStats};
use crate::source::{Sender, Source, SourceError};
use crate::{CpuTimes, ThreadTimes};

/// Receives one round into `dest` (state in `state_dir`) from `source`.
pub fn receive_round(
    dest: &Destination,
    state_dir: &Path,
    source: &mut NetSource<'_>,
    opts: &ReceiveOptions,
) -> Result<RoundSummary, WireError> {
    let t = Instant::now();
    let mut rx = Receiver::open(dest, state_dir).map_err(wire_error)?;
    let stats = rx.run_round(source, opts).map_err(wire_error)?;
    Ok(summary(&stats, t.elapsed()))
}

/// The summary a receiver sends back for a round it ran.
pub fn summary(s: &RoundStats, took: Duration) -> RoundSummary {
    let mut root = [0u8; 32];
    if let Some(bytes) = hex32(&s.root) {
        root = bytes;
    }
    RoundSummary {
        files: s.entries,
        chunks_total: s.chunks_total,
        chunks_new: s.chunks_new,
        chunks_reused: s.chunks_reused,
        bytes_fetched: s.bytes_fetched,
        bytes_written: s.bytes_written,
        stale: s.entries_dirty,
        root,
        duration_ms: millis(took),
        bytes_dirty: s.bytes_dirty,
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// How a receiver failure is reported to the sender, and whether it retries.
pub fn wire_error(e: ReceiveError) -> WireError {
    let code = match &e {
        ReceiveError::Stale { .. } => ErrorCode::Stale,
        ReceiveError::Source(SourceError::Transport(_)) => ErrorCode::Transient,
        ReceiveError::Manifest(_)
        | ReceiveError::SafePath(_)
        | ReceiveError::ModeMismatch { .. } => ErrorCode::Invalid,
        _ => ErrorCode::Refused,
    };
    WireError {
        code,
        message: e.to_string(),
    }
}

/// Default for [`RoundPushRetry::connect_timeout`].
pub const FIRST_CONTACT_TIMEOUT: Duration = Duration::from_secs(5);

/// How the dialer retries a round.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RoundPushRetry {
    /// Reconnecting after a cut link or a restarted agent.
    pub reconnect: RetryPolicy,
    /// Rescans allowed when the source changes under a scan.
    pub stale_rescans: u32,
    /// The first contact with the agent is one try, TCP connect, TLS and
    /// `Hello` within this. An agent never reached is a wrong address, a
    /// firewall or an agent not running, which waiting does not fix: the
    /// operator hears it in seconds, not after `reconnect`'s deadline.
    pub connect_timeout: Duration,
    /// Set once the agent answered (shared by clones): from then on a failed
    /// connect is a cut link or a restarting agent, retried under `reconnect`.
    pub reached: Arc<AtomicBool>,
}

impl Default for RoundPushRetry {
    fn default() -> Self {
        RoundPushRetry {
            reconnect: RetryPolicy::RECONNECT,
            stale_rescans: 3,
            connect_timeout: FIRST_CONTACT_TIMEOUT,
            reached: Arc::new(AtomicBool::new(false)),
        }
    }
}

crate::builder::setters!(RoundPushRetry {
    with_reconnect => reconnect: RetryPolicy,
    with_stale_rescans => stale_rescans: u32,
    with_connect_timeout => connect_timeout: Duration,
});

/// Why a first contact failed in words an operator acts on, or `None` when
/// the agent was reached and said no (a certificate of another CA, another
/// protocol version): that error is reported as it is.
pub fn unreachable_reason(e: &StreamError, timeout: Duration) -> Option<String> {
    let timed_out =
        |k: io::ErrorKind| matches!(k, io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock);
    match e {
        StreamError::Resolve { source, .. } => Some(format!("cannot resolve the host: {source}")),
        StreamError::Connect { source, .. } => Some(match source.kind() {
            io::ErrorKind::ConnectionRefused => "connection refused".into(),
            k if timed_out(k) => format!("timed out: no TCP connection within {timeout:?}"),
            _ => source.to_string(),
        }),
        StreamError::Tls { source, .. } if timed_out(source.kind()) => Some(format!(
            "timed out: the TLS handshake did not complete within {timeout:?} (is a daffe agent listening there?)"
        )),
        StreamError::Tls { source, .. }
            if matches!(
                source.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            ) =>
        {
            Some(format!(
                "connection closed during the TLS handshake: {source} (is it a daffe agent of the same CA?)"
            ))
        }
        StreamError::Protocol { source, .. } if source.retryable() => Some(source.to_string()),
        _ => None,
    }
}

/// Errors pushing a round.
#[derive(Debug, thiserror::Error)]
pub enum RoundPushError {
    /// The source could not be scanned.
    #[error("scanning {path}: {source}")]
    Scan {
        /// The source.
        path: String,
        /// Why.
        source: ScanError,
    },
    /// Connecting to the agent failed (after it had answered once).
    #[error("connecting: {0}")]
    Connect(#[from] StreamError),
    /// The agent was never reached within the connect timeout.
    #[error("cannot reach {addr} ({reason})")]
    Unreachable {
        /// The agent's address.
        addr: String,
        /// Why, in words an operator acts on.
        reason: String,
        // Boxed: the variant would otherwise make every Result of this type
        // large (clippy::result_large_err).
        /// The connect error.
        source: Box<StreamError>,
    },
    /// The round failed (the receiver refused it, or the link broke for good).
    #[error("round {round} into {target}: {source}")]
    Round {
        /// The agent's target.
        target: String,
        /// The round number.
        round: u32,
        /// Why.
        source: ServeError,
    },
    /// The source kept changing under every rescan.
    #[error("round {round} into {target}: the source kept changing under {rescans} rescans")]
    StillStale {
        /// The agent's target.
        target: String,
        /// The round number.
        round: u32,
        /// Rescans made.
        rescans: u32,
    },
}

impl RoundPushError {
    /// The source changed under every scan: fine for a pre-copy round (the
    /// next one or the final round catches up), fatal for a final round.
    pub fn is_stale(&self) -> bool {
        matches!(self, RoundPushError::StillStale { .. })
    }
}

/// What one pushed round did.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RoundPushReport {
    /// The receiver's summary of the round.
    pub summary: RoundSummary,
    /// The source's scan.
    pub scan: ScanStats,
    /// How long the scan took (all scans, after rescans).
    pub scan_time: Duration,
    /// Of `scan_time`, the scans' threads' time on a CPU and standing
    /// runnable without one ([`ScanStats::cpu`], summed over the scans);
    /// `None` where `/proc` could not tell. Like the transfer, a pre-copy
    /// scan beside a busy application waits; the final one does not.
    pub scan_cpu: Option<CpuTimes>,
    /// From the round's first request to the receiver's `RoundDone` (last attempt).
    pub transfer_time: Duration,
    /// Of `transfer_time`, this process's threads' time on a CPU and
    /// standing runnable without one, summed over the threads
    /// ([`ThreadTimes`]; threads that ended before the round's end
    /// are not in it); `None` where `/proc` could not tell. A pre-copy
    /// round in an idle cpu group beside a busy application waits most of
    /// its transfer; the final round does not.
    pub transfer_cpu: Option<CpuTimes>,
    /// Wire bytes sent and received by this push (TLS included, all attempts).
    pub wire_sent: u64,
    /// Wire bytes received (see `wire_sent`).
    pub wire_received: u64,
    /// Connections it took (1: no link was cut).
    pub attempts: u32,
    /// Rescans after the source changed under a scan.
    pub rescans: u32,
    /// Chunk bytes the link carried before compression, all attempts: a
    /// chunk sent as a patch counts the patch, not the chunk
    /// ([`ServeEvent::ChunkSent`]). What the round moved, beside
    /// `summary.bytes_fetched`, the chunks it rebuilt: it also counts what
    /// the receiver dropped (chunks the source changed between scan and
    /// send, `summary.bytes_dirty`; a patch that did not rebuild, sent
    /// again whole).
    pub carried: u64,
}

/// Pushes rounds of one source to one agent target: the network sender.
///
/// Made with [`RoundPusher::new`] and the `with_*` setters; [`push`](Self::push)
/// runs one round (scan, then send what the agent asks for), reconnecting
/// after a cut link and rescanning after a stale scan under [`RoundPushRetry`].
#[non_exhaustive]
pub struct RoundPusher {
    /// The agent's `HOST:PORT`.
    pub addr: String,
    /// This node's client TLS configuration ([`crate::net::tls::client_config`]).
    pub tls: Arc<ClientConfig>,
    /// This end's name, timeouts and bandwidth limit.
    pub ep: Endpoint,
    /// What to send.
    pub source: Source,
    /// The sender's stat cache (kept between rounds: unchanged files are not re-read).
    pub cache_dir: PathBuf,
    /// The name the agent's [`RoundHandler`](crate::net::RoundHandler) resolves
    /// to a destination.
    pub target: String,
    /// Threads that chunk the source (default: available cores).
    pub scan_threads: usize,
    /// Reconnects, rescans and the first-contact timeout.
    pub retry: RoundPushRetry,
    /// The migration's token, sent in every round ([`RoundRequest::token`]):
    /// what the agent's handler handed out when the migration was prepared.
    pub token: String,
    /// Who tracks the writes to an image source between this cache's
    /// scans ([`crate::ImageChanges`]); `None`: a changed image is re-read whole.
    pub changes: Option<Arc<dyn crate::scan::ImageChanges>>,
}

impl RoundPusher {
    /// A pusher of `source` to `target` at the agent `addr`, with the
    /// defaults: as many scan threads as cores, [`RoundPushRetry::default`].
    pub fn new(
        addr: impl Into<String>,
        tls: Arc<ClientConfig>,
        ep: Endpoint,
        source: Source,
        cache_dir: impl Into<PathBuf>,
        target: impl Into<String>,
    ) -> Self {
        RoundPusher {
            addr: addr.into(),
            tls,
            ep,
            source,
            cache_dir: cache_dir.into(),
            target: target.into(),
            scan_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            retry: RoundPushRetry::default(),
            token: String::new(),
            changes: None,
        }
    }
}

crate::builder::setters!(RoundPusher {
    with_scan_threads => scan_threads: usize,
    with_retry => retry: RoundPushRetry,
    with_token => token: String,
    with_changes => changes: Option<Arc<dyn crate::scan::ImageChanges>>,
});

impl std::fmt::Debug for RoundPusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoundPusher")
            .field("addr", &self.addr)
            .field("target", &self.target)
            .field("source", &self.source)
            .finish()
    }
}

impl RoundPusher {
    fn scan(&self) -> Result<(Sender, Duration), RoundPushError> {
        let t = Instant::now();
        let s = Sender::scan(
            &self.source,
            &self.cache_dir,
            ScanOptions {
                threads: self.scan_threads.max(1),
                label: self.target.clone(),
                progress: Arc::new(crate::progress::NoProgress),
                changes: self.changes.clone(),
                copy_into: None,
            },
        )
        .map_err(|source| RoundPushError::Scan {
            path: self.source.path().display().to_string(),
            source,
        })?;
        Ok((s, t.elapsed()))
    }

    /// Connects: the first contact once, within `retry.connect_timeout`;
    /// after the agent answered once, retrying while `retry.reconnect` allows.
    pub fn connect(&self) -> Result<Peer, RoundPushError> {
        if !self.retry.reached.load(Ordering::Relaxed) {
            let t = self.retry.connect_timeout;
            let peer = Peer::connect_within(&self.addr, &self.tls, &self.ep, t).map_err(|e| {
                match unreachable_reason(&e, t) {
                    Some(reason) => RoundPushError::Unreachable {
                        addr: with_default_port(&self.addr),
                        reason,
                        source: Box::new(e),
                    },
                    None => e.into(),
                }
            })?;
            self.retry.reached.store(true, Ordering::Relaxed);
            return Ok(peer);
        }
        let clock = SystemClock;
        let mut attempts = Attempts::new(self.retry.reconnect, &clock, None);
        loop {
            let e = match Peer::connect(&self.addr, &self.tls, &self.ep) {
                Ok(p) => return Ok(p),
                Err(e) => e,
            };
            let Some(pause) = attempts.failed(retry_kind(e.retryable())) else {
                return Err(e.into());
            };
            tracing::info!(addr = %self.addr, error = %e, "agent unreachable; retrying");
            clock.sleep(pause);
        }
    }

    /// Scans and pushes round `round`; on a cut link reconnects and pushes
    /// again (the receiver keeps what it stored), on a stale source rescans.
    pub fn push(
        &self,
        round: u32,
        final_round: bool,
        progress: &mut dyn FnMut(ServeEvent),
    ) -> Result<RoundPushReport, RoundPushError> {
        let mode = match self.source {
            Source::Tree(_) => TransferMode::Tree,
            Source::Image(_) => TransferMode::Image,
        };
        let req = RoundRequest {
            target: self.target.clone(),
            mode,
            round,
            final_round,
            token: self.token.clone(),
        };
        let sent0 = self.ep.counters.sent();
        let recv0 = self.ep.counters.received();
        let clock = SystemClock;
        let mut retries = Attempts::new(self.retry.reconnect, &clock, None);
        let mut report = RoundPushReport::default();
        let (mut sender, scan_time) = self.scan()?;
        report.scan_time = scan_time;
        report.scan = sender.stats().clone();
        report.scan_cpu = report.scan.cpu;
        loop {
            report.attempts += 1;
            let mut peer = self.connect()?;
            let t = Instant::now();
            let threads = ThreadTimes::of_self();
            let carried = &mut report.carried;
            let mut count = |ev: ServeEvent| {
                if let ServeEvent::ChunkSent { carried: c, .. } = ev {
                    *carried += c;
                }
                progress(ev);
            };
            match peer.push_round(&req, &mut sender, &mut count) {
                Ok(summary) => {
                    report.transfer_time = t.elapsed();
                    let now = ThreadTimes::of_self();
                    report.transfer_cpu =
                        (!threads.is_empty() && !now.is_empty()).then(|| now.since(&threads));
                    report.summary = summary;
                    peer.bye();
                    report.wire_sent = self.ep.counters.sent() - sent0;
                    report.wire_received = self.ep.counters.received() - recv0;
                    return Ok(report);
                }
                Err(e) => {
                    drop(peer);
                    let stale = matches!(&e, ServeError::Conn(super::conn::ConnError::Remote { error, .. })
                        if error.code == ErrorCode::Stale);
                    if stale {
                        if report.rescans >= self.retry.stale_rescans {
                            return Err(RoundPushError::StillStale {
                                target: self.target.clone(),
                                round,
                                rescans: report.rescans,
                            });
                        }
                        report.rescans += 1;
                        let (s, t) = self.scan()?;
                        sender = s;
                        report.scan_time += t;
                        report.scan = sender.stats().clone();
                        report.scan_cpu = report.scan_cpu.zip(report.scan.cpu).map(|(a, b)| a + b);
                        continue;
                    }
                    let Some(pause) = retries.failed(retry_kind(e.retryable())) else {
                        return Err(RoundPushError::Round {
                            target: self.target.clone(),
                            round,
                            source: e,
                        });
                    };
                    tracing::info!(target = %self.target, round, error = %e, "round interrupted; retrying");
                    clock.sleep(pause);
                }
            }
        }
    }
}

/// A network error's retry kind: a cut link or an unreachable agent may
/// pass; anything else will not.
fn retry_kind(retryable: bool) -> ErrorKind {
    if retryable {
        ErrorKind::Transient
    } else {
        ErrorKind::Permanent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_roots_parse() {
        let h = "00ff".repeat(16);
        let b = hex32(&h).unwrap();
        assert_eq!(b[0], 0);
        assert_eq!(b[1], 0xff);
        assert!(hex32("xyz").is_none());
        assert!(hex32(&"zz".repeat(32)).is_none());
    }

    #[test]
    fn a_first_contact_failure_names_its_reason() {
        let t = Duration::from_secs(5);
        let connect = |k: io::ErrorKind| StreamError::Connect {
            addr: "h:1".into(),
            source: k.into(),
        };
        let tls = |k: io::ErrorKind| StreamError::Tls {
            addr: "h:1".into(),
            source: k.into(),
        };
        let reason = |e: StreamError| unreachable_reason(&e, t);
        assert_eq!(
            reason(connect(io::ErrorKind::ConnectionRefused)).as_deref(),
            Some("connection refused")
        );
        for k in [io::ErrorKind::TimedOut, io::ErrorKind::WouldBlock] {
            assert!(reason(connect(k)).unwrap().starts_with("timed out"));
            assert!(reason(tls(k)).unwrap().starts_with("timed out"));
        }
        assert!(
            reason(tls(io::ErrorKind::UnexpectedEof))
                .unwrap()
                .contains("TLS")
        );
        // Reached, and refused us: not "unreachable", the error as it is.
        assert!(reason(tls(io::ErrorKind::InvalidData)).is_none());
    }
}
