//! The acceptor: listens for peers, authenticates them (mutual TLS, in
//! `stream::accept`), and hands their requests to a [`RoundHandler`] (daffe's
//! plugin: preflight, receiving a volume, ownership handover).
//!
//! One thread per connection, a bounded number of them. Rounds into the same
//! target are serialised: a retry that arrives while the connection it
//! replaces is still timing out waits for it, then resumes from what the
//! first one stored durably.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rustls::ServerConfig;

use super::conn::{Conn, ConnError};
use super::frame::FrameError;
use super::message::{ErrorCode, Message, RoundRequest, RoundSummary, WireError};
use super::netsource::NetSource;
use super::stream::{self, BoxStream, Endpoint};

/// Authenticated connections served at once. Migrations are few; the bound
/// keeps a flood of (even authenticated) connections from exhausting threads.
/// A slot is taken only after the TLS handshake and `Hello`: idle or
/// half-open connections from strangers never hold one.
const MAX_CONNECTIONS: usize = 64;
/// Authenticated connections from one peer at once, counted by source
/// address (which, unlike the name in `Hello`, a peer cannot pick freely): a
/// migration uses one per volume it moves in parallel plus a control
/// connection; one peer must not take every slot (hardening finding 13: an
/// authenticated peer could hold all 64).
pub const MAX_SESSIONS_PER_PEER: usize = 8;
/// Connections still in their handshake, from everyone together. Each is a
/// thread for at most the handshake deadline (see `Endpoint`).
const MAX_PREAUTH: usize = 64;
/// Connections still in their handshake from one source address: a peer
/// needs one or two (a dial and a retry); a flood from one address must not
/// take everyone's pre-auth room.
const MAX_PREAUTH_PER_ADDR: usize = 8;
/// How often the accept loop looks at the shutdown flag.
const ACCEPT_POLL: Duration = Duration::from_millis(50);

/// Who is talking to us.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PeerInfo {
    /// The peer's node name, as its verified certificate carries it (its
    /// `Hello` must say the same; see `stream::handshake`): what ownership
    /// records and checks use (issue 12, finding 5).
    pub node: String,
    /// The peer's address.
    pub addr: SocketAddr,
}

/// Why an agent turned a connection away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// Too many connections were in their handshake (from everyone, or from
    /// this address).
    Handshake,
    /// The TLS handshake or `Hello` failed: not a peer of this cluster, or
    /// not a daffe agent.
    Unauthenticated,
    /// Every session slot was taken.
    Busy,
    /// This peer already had [`MAX_SESSIONS_PER_PEER`] sessions.
    PeerBusy,
}

impl Refusal {
    /// A short name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Handshake => "handshake_full",
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::Busy => "busy",
            Refusal::PeerBusy => "peer_busy",
        }
    }
}

/// Told about an agent's connections as they come and go (daffe's plugin
/// counts them in its metrics). Called on the connection's thread: keep it
/// cheap. Every method does nothing unless implemented.
pub trait ConnObserver: Send + Sync {
    /// A peer authenticated and got a session.
    fn accepted(&self, _peer: &PeerInfo) {}
    /// A connection from `addr` was turned away.
    fn refused(&self, _addr: SocketAddr, _why: Refusal) {}
    /// An accepted session ended (however it ended).
    fn closed(&self, _peer: &PeerInfo) {}
}

/// No observer.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;
impl ConnObserver for NoObserver {}

/// Tells the observer a session ended, on drop.
struct Closed<'a>(&'a dyn ConnObserver, &'a PeerInfo);

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        self.0.closed(self.1);
    }
}

/// What the agent does with authenticated requests.
pub trait RoundHandler: Send + Sync {
    /// An application request (opaque bytes), answered with bytes or an error.
    fn control(&self, peer: &PeerInfo, body: &[u8]) -> Result<Vec<u8>, WireError>;
    /// Receive one round into `req.target`, pulling from `source`.
    fn round(
        &self,
        peer: &PeerInfo,
        req: &RoundRequest,
        source: &mut NetSource<'_>,
    ) -> Result<RoundSummary, WireError>;
}

/// Serialises rounds per target.
#[derive(Debug, Default)]
struct TargetLocks {
    held: Mutex<HashSet<String>>,
    cv: Condvar,
}

struct TargetGuard<'a> {
    locks: &'a TargetLocks,
    target: String,
}

impl Drop for TargetGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|p| p.into_inner());
        held.remove(&self.target);
        self.locks.cv.notify_all();
    }
}

impl TargetLocks {
    fn acquire(&self, target: &str, wait: Duration) -> Option<TargetGuard<'_>> {
        let deadline = Instant::now() + wait;
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while held.contains(target) {
            let left = deadline.checked_duration_since(Instant::now())?;
            held = self
                .cv
                .wait_timeout(held, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        held.insert(target.to_string());
        Some(TargetGuard {
            locks: self,
            target: target.to_string(),
        })
    }
}

/// Connections counted by phase: in their handshake (per source address and
/// in all), and authenticated.
#[derive(Debug, Default)]
struct Slots {
    preauth: Mutex<(usize, HashMap<IpAddr, usize>)>,
    active: AtomicUsize,
    per_peer: Mutex<HashMap<IpAddr, usize>>,
}

/// Releases a peer's session place on drop.
struct PeerGuard {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        let mut g = self
            .slots
            .per_peer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = g.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                g.remove(&self.ip);
            }
        }
    }
}

/// Releases a pre-auth place on drop (also when the thread panics).
struct PreauthGuard {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Drop for PreauthGuard {
    fn drop(&mut self) {
        let mut g = self.slots.preauth.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = g.0.saturating_sub(1);
        if let Some(n) = g.1.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                g.1.remove(&self.ip);
            }
        }
    }
}

/// Releases an authenticated slot on drop (also when the handler panics).
struct ActiveGuard(Arc<Slots>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Slots {
    /// A pre-auth place for a connection from `ip`, if there is room.
    fn preauth(self: &Arc<Self>, ip: IpAddr) -> Option<PreauthGuard> {
        let mut g = self.preauth.lock().unwrap_or_else(|p| p.into_inner());
        let from_ip = g.1.get(&ip).copied().unwrap_or(0);
        if g.0 >= MAX_PREAUTH || from_ip >= MAX_PREAUTH_PER_ADDR {
            return None;
        }
        g.0 += 1;
        *g.1.entry(ip).or_default() += 1;
        Some(PreauthGuard {
            slots: Arc::clone(self),
            ip,
        })
    }

    /// A session place for the peer at `ip`, if it has fewer than
    /// [`MAX_SESSIONS_PER_PEER`].
    fn peer(self: &Arc<Self>, ip: IpAddr) -> Option<PeerGuard> {
        let mut g = self.per_peer.lock().unwrap_or_else(|p| p.into_inner());
        let n = g.entry(ip).or_default();
        if *n >= MAX_SESSIONS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerGuard {
            slots: Arc::clone(self),
            ip,
        })
    }

    /// An authenticated slot, if there is room.
    fn active(self: &Arc<Self>) -> Option<ActiveGuard> {
        if self.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            self.active.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(ActiveGuard(Arc::clone(self)))
    }
}

/// The network receiver: accepts peers over mutual TLS and hands their
/// requests to a [`RoundHandler`], which receives each round into a
/// destination of its choosing (usually with [`receive_round`]).
///
/// A receiver, and a [`RoundPusher`] sending it a tree:
///
/// ```
/// use std::net::TcpListener;
/// use std::sync::Arc;
/// use std::sync::atomic::AtomicBool;
/// use mover::net::{
///     Agent, Endpoint, NetSource, PeerInfo, RoundHandler, RoundPusher, RoundRequest,
///     RoundSummary, WireError, identity, receive_round, tls,
/// };
/// use mover::{Destination, ReceiveOptions, Source};
///
/// /// Receives every target as a tree under one folder.
/// struct Under(std::path::PathBuf);
///
/// impl RoundHandler for Under {
///     fn control(&self, _: &PeerInfo, body: &[u8]) -> Result<Vec<u8>, WireError> {
///         Ok(body.to_vec())
///     }
///     fn round(
///         &self,
///         _: &PeerInfo,
///         req: &RoundRequest,
///         source: &mut NetSource<'_>,
///     ) -> Result<RoundSummary, WireError> {
///         let dest = Destination::Tree(self.0.join(&req.target));
///         let state = self.0.join(".state").join(&req.target);
///         receive_round(&dest, &state, source, &ReceiveOptions::default())
///     }
/// }
///
/// let d = tempfile::tempdir()?;
/// // A cluster CA with this node's certificate, then the sender's.
/// let receiver = identity::init(&d.path().join("b"), "b")?;
/// let sender = identity::issue(&d.path().join("b"), "a", &d.path().join("a"))?;
/// let agent = Arc::new(Agent::new(
///     tls::server_config(&receiver)?,
///     Endpoint::new("b"),
///     Arc::new(Under(d.path().join("received"))),
/// ));
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let addr = listener.local_addr()?.to_string();
/// std::thread::spawn(move || agent.serve(listener, &AtomicBool::new(false)));
///
/// std::fs::create_dir_all(d.path().join("src"))?;
/// std::fs::write(d.path().join("src/f"), b"hello")?;
/// let pusher = RoundPusher::new(
///     addr,
///     tls::client_config(&sender)?,
///     Endpoint::new("a"),
///     Source::Tree(d.path().join("src")),
///     d.path().join("cache"),
///     "vol",
/// );
/// let report = pusher.push(1, true, &mut |_| {})?;
/// assert_eq!(report.summary.bytes_fetched, 5);
/// assert_eq!(std::fs::read(d.path().join("received/vol/f"))?, b"hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// [`receive_round`]: crate::net::receive_round
/// [`RoundPusher`]: crate::net::RoundPusher
pub struct Agent {
    tls: Arc<ServerConfig>,
    ep: Endpoint,
    handler: Arc<dyn RoundHandler>,
    locks: TargetLocks,
    slots: Arc<Slots>,
    /// How long a round waits for an earlier round on the same target: a bit
    /// more than the socket timeout, after which the earlier one has failed.
    busy_wait: Duration,
    observer: Arc<dyn ConnObserver>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("ep", &self.ep).finish()
    }
}

impl Agent {
    /// An agent serving with `tls` (from [`crate::net::tls::server_config`]), as `ep`, handing requests to `handler`.
    pub fn new(tls: Arc<ServerConfig>, ep: Endpoint, handler: Arc<dyn RoundHandler>) -> Self {
        let busy_wait = ep.io_timeout + Duration::from_secs(5);
        Agent {
            tls,
            ep,
            handler,
            locks: TargetLocks::default(),
            slots: Arc::default(),
            busy_wait,
            observer: Arc::new(NoObserver),
        }
    }

    /// Tells `observer` about every connection accepted, refused and closed.
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn ConnObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// Accepts connections until `shutdown` is set. Each runs on its own thread.
    pub fn serve(self: &Arc<Self>, listener: TcpListener, shutdown: &AtomicBool) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        while !shutdown.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((tcp, addr)) => {
                    tcp.set_nonblocking(false)?;
                    let Some(preauth) = self.slots.preauth(addr.ip()) else {
                        tracing::warn!(%addr, "too many connections in their handshake; dropping one");
                        self.observer.refused(addr, Refusal::Handshake);
                        continue;
                    };
                    let me = Arc::clone(self);
                    std::thread::Builder::new()
                        .name(format!("agent-{addr}"))
                        .spawn(move || me.connection(tcp, addr, preauth))?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    std::thread::sleep(ACCEPT_POLL);
                }
            }
        }
        Ok(())
    }

    /// Serves one connection. `preauth` holds its place among connections
    /// in their handshake until the peer has authenticated (or failed to).
    fn connection(&self, tcp: std::net::TcpStream, addr: SocketAddr, preauth: PreauthGuard) {
        let accepted = stream::accept(tcp, &self.tls, &self.ep);
        drop(preauth);
        let mut conn = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Unauthenticated or not a daffe peer: it got nothing from us.
                tracing::warn!(%addr, error = %e, "peer refused");
                self.observer.refused(addr, Refusal::Unauthenticated);
                return;
            }
        };
        let Some(_slot) = self.slots.active() else {
            tracing::warn!(%addr, "too many peer connections; refusing one");
            self.observer.refused(addr, Refusal::Busy);
            conn.send_error(
                ErrorCode::Busy,
                "too many peer connections; try again later",
            );
            return;
        };
        let peer = PeerInfo {
            node: conn.peer().node.clone(),
            addr,
        };
        let Some(_peer_slot) = self.slots.peer(addr.ip()) else {
            tracing::warn!(%addr, node = %peer.node, "too many connections from this peer; refusing one");
            self.observer.refused(addr, Refusal::PeerBusy);
            conn.send_error(
                ErrorCode::Busy,
                format!(
                    "too many connections from {} (limit {MAX_SESSIONS_PER_PEER} per peer); \
                     try again later",
                    addr.ip()
                ),
            );
            return;
        };
        tracing::info!(%addr, node = %peer.node, "peer connected");
        self.observer.accepted(&peer);
        // Told on drop: also when the handler panics.
        let _closed = Closed(self.observer.as_ref(), &peer);
        if let Err(e) = self.session(&mut conn, &peer) {
            match e {
                ConnError::Frame(FrameError::Closed) => {}
                e => tracing::warn!(%addr, node = %peer.node, error = %e, "peer session ended"),
            }
        }
    }

    /// Serves requests until the peer says `Bye`, closes, or a round fails.
    fn session(&self, conn: &mut Conn<BoxStream>, peer: &PeerInfo) -> Result<(), ConnError> {
        loop {
            match conn.recv()? {
                Message::Control(body) => match self.handler.control(peer, &body) {
                    Ok(reply) => conn.send(&Message::ControlReply(reply))?,
                    Err(e) => conn.send(&Message::Error(e))?,
                },
                Message::StartRound(req) => {
                    let Some(_guard) = self.locks.acquire(&req.target, self.busy_wait) else {
                        conn.send_error(
                            ErrorCode::Busy,
                            format!("a round into {} is still running", req.target),
                        );
                        return Ok(());
                    };
                    let mut source = NetSource::new(conn).with_precopy(!req.final_round);
                    match self.handler.round(peer, &req, &mut source) {
                        Ok(summary) => conn.send(&Message::RoundDone(summary))?,
                        Err(e) => {
                            // The stream may be mid-batch: report, then close.
                            tracing::warn!(node = %peer.node, target = %req.target,
                                error = %e.message, "round failed");
                            conn.send_error(e.code, e.message);
                            return Ok(());
                        }
                    }
                }
                Message::Bye => return Ok(()),
                other => {
                    conn.send_error(
                        ErrorCode::Invalid,
                        format!("unexpected {} outside a round", other.name()),
                    );
                    return Err(ConnError::Unexpected {
                        expected: "Control, StartRound or Bye",
                        got: other.name(),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_locks_serialise_and_time_out() {
        let locks = TargetLocks::default();
        let g = locks.acquire("v", Duration::ZERO).unwrap();
        assert!(locks.acquire("v", Duration::from_millis(20)).is_none());
        assert!(locks.acquire("w", Duration::ZERO).is_some());
        drop(g);
        assert!(locks.acquire("v", Duration::ZERO).is_some());
    }
}
