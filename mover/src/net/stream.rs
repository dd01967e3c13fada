//! The byte streams connections run over: TCP (with timeouts, the shared
//! bandwidth limit and wire counters) under rustls, boxed so that handlers
//! and tests see one concrete connection type.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::ops::DerefMut;
use std::sync::Arc;
use std::time::Duration;

use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, ServerConfig, ServerConnection, SideData,
    StreamOwned,
};

use super::bwlimit::{Throttled, WireCounters};
use super::conn::{Conn, ConnError, HelloOptions};
use super::tls::agent_server_name;
use crate::rate::RateLimiter;

/// Any stream a connection can run over.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A boxed stream: what [`Conn`] runs over outside unit tests.
pub type BoxStream = Box<dyn Stream>;

/// The agents' TCP port when `HOST` comes without one.
pub const DEFAULT_PORT: u16 = 7450;

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
    pub hello: HelloOptions,
    /// The process-wide bandwidth limit, if any.
    pub bucket: Option<Arc<RateLimiter>>,
    /// Wire byte counters of this process (or of one migration).
    pub counters: Arc<WireCounters>,
    /// Read and write timeout on the socket: a peer or link silent this long
    /// is dead. Long enough for the receiver's apply/verify between messages.
    pub io_timeout: Duration,
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
        }
    }
}

/// Splits `HOST[:PORT]` (IPv6 as `[::1]:PORT`) and resolves it.
pub fn resolve(addr: &str) -> Result<SocketAddr, StreamError> {
    // Already has a port: `1.2.3.4:5`, `[::1]:5`, `host:5`.
    let has_port = addr.parse::<SocketAddr>().is_ok()
        || addr.starts_with('[')
        || addr.matches(':').count() == 1;
    let with_port = if has_port {
        addr.to_string()
    } else if addr.contains(':') {
        format!("[{addr}]:{DEFAULT_PORT}")
    } else {
        format!("{addr}:{DEFAULT_PORT}")
    };
    with_port
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
    handshake(tcp, tls_conn, ep, addr.to_string())
}

/// The TLS handshake over the throttled socket, then the `Hello` exchange.
fn handshake<C, S>(
    tcp: TcpStream,
    mut tls_conn: C,
    ep: &Endpoint,
    addr: String,
) -> Result<Conn<BoxStream>, StreamError>
where
    C: DerefMut<Target = ConnectionCommon<S>> + Send + 'static,
    S: SideData + 'static,
{
    let mut sock = Throttled::new(tcp, ep.bucket.clone(), ep.counters.clone());
    while tls_conn.is_handshaking() {
        tls_conn
            .complete_io(&mut sock)
            .map_err(|source| StreamError::Tls {
                addr: addr.clone(),
                source,
            })?;
    }
    let stream: BoxStream = Box::new(StreamOwned::new(tls_conn, sock));
    Conn::handshake(stream, &ep.hello).map_err(|source| StreamError::Protocol { addr, source })
}

/// Accepts the TLS and `Hello` part of an incoming connection. A peer without
/// a certificate of our CA fails here, before any handler runs.
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
    handshake(tcp, tls_conn, ep, addr)
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
