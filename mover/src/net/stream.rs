//! The byte streams connections run over: TCP (with timeouts, the shared
//! bandwidth limit and wire counters) under rustls, boxed so that handlers
//! and tests see one concrete connection type.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::ops::DerefMut;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, ServerConfig, ServerConnection, SideData,
    StreamOwned,
};

use super::bwlimit::{Throttled, WireCounters};
use super::conn::{Conn, ConnError, HelloOptions};
use super::message::ErrorCode;
use super::tls::agent_server_name;
use crate::rate::RateLimiter;

/// Any stream a connection can run over.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A boxed stream: what [`Conn`] runs over outside unit tests.
pub type BoxStream = Box<dyn Stream>;

/// The agents' TCP port when `HOST` comes without one.
pub const DEFAULT_PORT: u16 = 7450;

/// Default for [`Endpoint::handshake_timeout`]: a TLS 1.3 handshake and the
/// `Hello`s are four round trips and a few KiB, well under a second even on
/// a slow inter-region link; 10 s leaves room for a loaded peer.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors opening a connection.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{addr}: cannot resolve: {source}")]
    Resolve { addr: String, source: io::Error },
    #[error("{addr}: connect failed: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("{addr}: TLS handshake failed (is the peer a daffe agent of the same CA?): {source}")]
    Tls { addr: String, source: io::Error },
    #[error("{addr}: {source}")]
    Protocol { addr: String, source: ConnError },
    #[error("{addr}: TLS setup: {source}")]
    Rustls { addr: String, source: rustls::Error },
    /// The peer's certificate names no node, names another node than its
    /// `Hello`, or (dialing) another node than the one expected.
    #[error("{addr}: {message}")]
    Identity { addr: String, message: String },
}

impl StreamError {
    /// Whether trying again later may work (a link or peer that is down).
    pub fn retryable(&self) -> bool {
        match self {
            StreamError::Connect { .. } => true,
            StreamError::Tls { source, .. } => source.kind() != io::ErrorKind::InvalidData,
            StreamError::Protocol { source, .. } => source.retryable(),
            _ => false,
        }
    }
}

/// What one side brings to every connection.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// What this end offers in its `Hello` (its node name, zstd).
    pub hello: HelloOptions,
    /// The process-wide bandwidth limit, if any.
    pub bucket: Option<Arc<RateLimiter>>,
    /// Wire byte counters of this process (or of one migration).
    pub counters: Arc<WireCounters>,
    /// Read and write timeout on the socket: a peer or link silent this long
    /// is dead. Long enough for the receiver's apply/verify between messages.
    pub io_timeout: Duration,
    /// The whole of an incoming connection's TLS handshake and `Hello` must
    /// fit in this: a peer that trickles bytes (slowloris) or stops halfway
    /// is cut off, whatever the per-read timeout.
    pub handshake_timeout: Duration,
    /// Dialing: the node the agent's certificate must name (pinning: an
    /// agent of the same cluster at the wrong address is refused). `None`:
    /// any node of the cluster CA (`daffe migrate --to ADDR`, which knows
    /// only an address). Ignored when accepting.
    pub peer_node: Option<String>,
}

impl Endpoint {
    /// Defaults: no limit, zstd on, a 60 s timeout (a round's longest silent
    /// step, verifying a large final round, stays well under it).
    pub fn new(node: &str) -> Self {
        Endpoint {
            hello: HelloOptions {
                node: node.to_string(),
                zstd: true,
            },
            bucket: None,
            counters: Arc::new(WireCounters::default()),
            io_timeout: Duration::from_secs(60),
            handshake_timeout: HANDSHAKE_TIMEOUT,
            peer_node: None,
        }
    }

    /// The same, dialing only an agent whose certificate names `node`.
    #[must_use]
    pub fn expecting(&self, node: &str) -> Self {
        Endpoint {
            peer_node: Some(node.to_string()),
            ..self.clone()
        }
    }
}

/// `HOST[:PORT]` with the port made explicit (the agent's default when
/// absent), as errors name it: `host:7450`, `[::1]:7450`.
pub fn with_default_port(addr: &str) -> String {
    // Already has a port: `1.2.3.4:5`, `[::1]:5`, `host:5`.
    let has_port = addr.parse::<SocketAddr>().is_ok()
        || addr.starts_with('[')
        || addr.matches(':').count() == 1;
    if has_port {
        addr.to_string()
    } else if addr.contains(':') {
        format!("[{addr}]:{DEFAULT_PORT}")
    } else {
        format!("{addr}:{DEFAULT_PORT}")
    }
}

/// Splits `HOST[:PORT]` (IPv6 as `[::1]:PORT`) and resolves it.
pub fn resolve(addr: &str) -> Result<SocketAddr, StreamError> {
    with_default_port(addr)
        .to_socket_addrs()
        .map_err(|source| StreamError::Resolve {
            addr: addr.to_string(),
            source,
        })?
        .next()
        .ok_or_else(|| StreamError::Resolve {
            addr: addr.to_string(),
            source: io::Error::new(io::ErrorKind::NotFound, "no address"),
        })
}

fn tcp_setup(tcp: &TcpStream, ep: &Endpoint) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(ep.io_timeout))?;
    tcp.set_write_timeout(Some(ep.io_timeout))
}

/// Dials an agent: TCP, mutual TLS, `Hello`.
pub fn dial(
    addr: &str,
    tls: &Arc<ClientConfig>,
    ep: &Endpoint,
    connect_timeout: Duration,
) -> Result<Conn<BoxStream>, StreamError> {
    let sa = resolve(addr)?;
    let connect = |source| StreamError::Connect {
        addr: addr.to_string(),
        source,
    };
    let tcp = TcpStream::connect_timeout(&sa, connect_timeout).map_err(connect)?;
    tcp_setup(&tcp, ep).map_err(connect)?;
    let tls_conn = ClientConnection::new(tls.clone(), agent_server_name()).map_err(|source| {
        StreamError::Rustls {
            addr: addr.to_string(),
            source,
        }
    })?;
    handshake(tcp, tls_conn, ep, addr.to_string(), ep.peer_node.as_deref())
}

/// The TLS handshake, then the `Hello` exchange, all within
/// [`Endpoint::handshake_timeout`]. Their bytes are counted but not charged to
/// the bandwidth limit: an unauthenticated peer must not slow the
/// authenticated ones down (the bucket is set once the `Hello`s are done).
///
/// The peer's identity is the node name its verified certificate carries:
/// its `Hello` must say the same, and a dialer that `expect`s a node gets
/// that node or an error (issue 12, finding 5). The returned connection's
/// [`Conn::peer`] node is therefore the certificate's.
fn handshake<C, S>(
    tcp: TcpStream,
    mut tls_conn: C,
    ep: &Endpoint,
    addr: String,
    expect: Option<&str>,
) -> Result<Conn<BoxStream>, StreamError>
where
    C: DerefMut<Target = ConnectionCommon<S>> + Send + 'static,
    S: SideData + 'static,
{
    let deadline = Instant::now() + ep.handshake_timeout;
    let mut sock = Throttled::new(tcp, None, ep.counters.clone());
    let tls_err = |source| StreamError::Tls {
        addr: addr.clone(),
        source,
    };
    // One read or write at a time, each bounded by the time left (rustls'
    // `complete_io` loops until the handshake ends, so a peer trickling a
    // byte per second would never hit a per-read timeout).
    while tls_conn.is_handshaking() {
        until(sock.get_ref(), ep, deadline).map_err(tls_err)?;
        if tls_conn.wants_write() {
            tls_conn.write_tls(&mut sock).map_err(tls_err)?;
            continue;
        }
        if tls_conn.read_tls(&mut sock).map_err(tls_err)? == 0 {
            return Err(tls_err(io::ErrorKind::UnexpectedEof.into()));
        }
        if let Err(e) = tls_conn.process_new_packets() {
            // Tell the peer why (the alert rustls queued), as complete_io does.
            let _ = tls_conn.write_tls(&mut sock);
            return Err(tls_err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
    }
    while tls_conn.wants_write() {
        until(sock.get_ref(), ep, deadline).map_err(tls_err)?;
        tls_conn.write_tls(&mut sock).map_err(tls_err)?;
    }
    let identity = |message: String| StreamError::Identity {
        addr: addr.clone(),
        message,
    };
    // Verified by rustls against the cluster CA by now (both ways: the
    // acceptor requires a client certificate).
    let certified = tls_conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| identity("the peer presented no certificate".into()))
        .and_then(|der| {
            super::certname::node_name_of(der)
                .map_err(|e| identity(format!("the peer's certificate: {e}")))
        })?;
    if let Some(want) = expect
        && want != certified
    {
        // Said before any Hello: nothing of ours reaches the wrong node.
        return Err(identity(format!(
            "the agent there is node {certified} (its certificate says so), not {want}"
        )));
    }
    until(sock.get_ref(), ep, deadline).map_err(tls_err)?;
    let mut conn =
        Conn::handshake(StreamOwned::new(tls_conn, sock), &ep.hello).map_err(|source| {
            StreamError::Protocol {
                addr: addr.clone(),
                source,
            }
        })?;
    if conn.peer().node != certified {
        let message = format!(
            "the peer's Hello names node {:?} but its certificate names {certified}",
            conn.peer().node
        );
        conn.send_error(
            ErrorCode::Refused,
            format!(
                "refused: your Hello names node {:?} but your certificate names {certified} \
                 (give the certificate's name, or issue a certificate for this name)",
                conn.peer().node
            ),
        );
        linger(conn.stream_mut().sock.get_ref(), deadline);
        return Err(identity(message));
    }
    let sock = &mut conn.stream_mut().sock;
    tcp_setup(sock.get_ref(), ep).map_err(|source| StreamError::Connect { addr, source })?;
    sock.set_bucket(ep.bucket.clone());
    Ok(conn.map_stream(|s| Box::new(s) as BoxStream))
}

/// Closes our side of a refused connection so that the peer reads the
/// error just sent rather than a reset: half-close, then drain what it had
/// sent already until it closes too (or the handshake deadline). Closing
/// with unread bytes would make the kernel reset the connection, and a
/// reset may overtake the error.
fn linger(tcp: &TcpStream, deadline: Instant) {
    let _ = tcp.shutdown(std::net::Shutdown::Write);
    let mut buf = [0u8; 4096];
    let mut rd = tcp;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tcp.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match rd.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Socket timeouts for the next step of a handshake that must end by
/// `deadline`: the time left, or the I/O timeout if that is shorter.
fn until(tcp: &TcpStream, ep: &Endpoint, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("handshake not done within {:?}", ep.handshake_timeout),
        ));
    }
    let t = Some(left.min(ep.io_timeout));
    tcp.set_read_timeout(t)?;
    tcp.set_write_timeout(t)
}

/// Accepts the TLS and `Hello` part of an incoming connection. A peer without
/// a certificate of our CA fails here, before any handler runs; the whole of
/// it must fit in [`Endpoint::handshake_timeout`] (see [`handshake`]).
pub fn accept(
    tcp: TcpStream,
    tls: &Arc<ServerConfig>,
    ep: &Endpoint,
) -> Result<Conn<BoxStream>, StreamError> {
    let addr = tcp
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "unknown peer".into());
    tcp_setup(&tcp, ep).map_err(|source| StreamError::Connect {
        addr: addr.clone(),
        source,
    })?;
    let tls_conn = ServerConnection::new(tls.clone()).map_err(|source| StreamError::Rustls {
        addr: addr.clone(),
        source,
    })?;
    handshake(tcp, tls_conn, ep, addr, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_adds_the_default_port() {
        assert_eq!(resolve("127.0.0.1").unwrap().port(), DEFAULT_PORT);
        assert_eq!(resolve("127.0.0.1:9").unwrap().port(), 9);
        assert_eq!(resolve("::1").unwrap().port(), DEFAULT_PORT);
        assert_eq!(resolve("[::1]:9").unwrap().port(), 9);
        assert!(resolve("no such host.invalid").is_err());
    }
}
