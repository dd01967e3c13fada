//! The dialing side, used on the source host by `daffe migrate`: connect to
//! an agent, ask it things (control requests), push rounds.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;

use super::conn::{Conn, ConnError};
use super::message::{Message, RoundRequest, RoundSummary};
use super::serve::{self, ServeError, ServeEvent};
use super::stream::{self, BoxStream, Endpoint, StreamError};
use crate::source::ChunkSource;

/// A TCP connect that takes longer than this means the host is unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An authenticated connection to an agent.
#[derive(Debug)]
pub struct Peer {
    conn: Conn<BoxStream>,
    addr: String,
}

impl Peer {
    /// Dials `addr` (`HOST[:PORT]`) with mutual TLS.
    pub fn connect(
        addr: &str,
        tls: &Arc<ClientConfig>,
        ep: &Endpoint,
    ) -> Result<Peer, StreamError> {
        let conn = stream::dial(addr, tls, ep, CONNECT_TIMEOUT)?;
        Ok(Peer {
            conn,
            addr: addr.to_string(),
        })
    }

    /// Dials `addr` with the whole of it (TCP connect, TLS handshake,
    /// `Hello`) bounded by `timeout`: a first contact, where a host that does
    /// not answer within seconds is the wrong one or down.
    pub fn connect_within(
        addr: &str,
        tls: &Arc<ClientConfig>,
        ep: &Endpoint,
        timeout: Duration,
    ) -> Result<Peer, StreamError> {
        let mut ep = ep.clone();
        ep.handshake_timeout = ep.handshake_timeout.min(timeout);
        let conn = stream::dial(addr, tls, &ep, timeout.min(CONNECT_TIMEOUT))?;
        Ok(Peer {
            conn,
            addr: addr.to_string(),
        })
    }

    /// The agent's address, as dialled.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The agent's node name, as its certificate carries it.
    pub fn node(&self) -> &str {
        &self.conn.peer().node
    }

    /// Whether chunks go zstd-compressed on this connection.
    pub fn compression(&self) -> bool {
        self.conn.compression()
    }

    /// Sends an application request and returns the agent's reply.
    pub fn control(&mut self, body: &[u8]) -> Result<Vec<u8>, ConnError> {
        self.conn.send(&Message::Control(body.to_vec()))?;
        match self.conn.recv()? {
            Message::ControlReply(b) => Ok(b),
            other => Err(ConnError::Unexpected {
                expected: "ControlReply",
                got: other.name(),
            }),
        }
    }

    /// Pushes one round: the agent receives `req.target` from `source`.
    pub fn push_round(
        &mut self,
        req: &RoundRequest,
        source: &mut dyn ChunkSource,
        progress: &mut dyn FnMut(ServeEvent),
    ) -> Result<RoundSummary, ServeError> {
        serve::push_round(&mut self.conn, req, source, progress)
    }

    /// Ends the session politely.
    pub fn bye(mut self) {
        let _ = self.conn.send(&Message::Bye);
    }

    /// Gives access to the raw connection (tests that play a hostile sender).
    pub fn conn_mut(&mut self) -> &mut Conn<BoxStream> {
        &mut self.conn
    }
}
