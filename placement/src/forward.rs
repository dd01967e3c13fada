//! Keeps clients of the old address connected after a move: accepts on the
//! old node's port and relays each connection to the new node, until told
//! to stop (the grace period's end). Then it closes the listener, so new
//! connections are refused and clients go to the new address, and lets the
//! connections in flight finish, for at most the drain time.
//!
//! This is the proxy of the DAFFE proposal and of the thesis, at TCP level:
//! it knows nothing of the protocol inside.

use serde::Serialize;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// A new node that does not answer (or refuses) for this long will not:
/// the client gets a closed connection (and retries) rather than hang.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a refused connection to the new node is tried again: a
/// service that starts listening is found within this, at 10 tries a
/// second per waiting client.
const RETRY_REFUSED: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct ForwardOptions {
    /// The new node's address (HOST:PORT).
    pub to: String,
    /// How long connections in flight may go on after the grace period.
    pub drain: Duration,
    pub connect_timeout: Duration,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    relayed: AtomicU64,
    connect_failed: AtomicU64,
    bytes_to_new: AtomicU64,
    bytes_to_client: AtomicU64,
}

/// What a forwarding period did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ForwardReport {
    pub accepted: u64,
    /// Connections relayed to their end.
    pub relayed: u64,
    /// Connections whose relay to the new node could not be opened.
    pub connect_failed: u64,
    /// Connections still open when the drain time ran out (closed).
    pub cut_at_drain: u64,
    pub bytes_to_new: u64,
    pub bytes_to_client: u64,
    /// Accept errors (descriptor exhaustion and the like), retried.
    pub accept_errors: u64,
}

/// Connects to the new node, trying again while it refuses: during a
/// move the new node's service starts a few seconds after the old one
/// stopped, and a client held that long (within the caller's timeout)
/// beats a client refused. Other errors (no route) end at once.
async fn connect_retrying(to: &str) -> std::io::Result<TcpStream> {
    loop {
        match TcpStream::connect(to).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tokio::time::sleep(RETRY_REFUSED).await;
            }
            r => return r,
        }
    }
}

async fn relay(mut client: TcpStream, opts: Arc<ForwardOptions>, c: Arc<Counters>) {
    let upstream = tokio::time::timeout(opts.connect_timeout, connect_retrying(&opts.to)).await;
    let mut upstream = match upstream {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(to = %opts.to, error = %e, "forward: cannot reach the new node");
            c.connect_failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Err(_) => {
            tracing::warn!(to = %opts.to, "forward: the new node did not answer in time");
            c.connect_failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => {
            c.bytes_to_new.fetch_add(up, Ordering::Relaxed);
            c.bytes_to_client.fetch_add(down, Ordering::Relaxed);
            c.relayed.fetch_add(1, Ordering::Relaxed);
        }
        // A reset by either side ends the relay; it is the client's to see.
        Err(e) => {
            tracing::debug!(error = %e, "forward: connection ended with an error");
            c.relayed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Forwards connections from `listener` until `stop` completes, then
/// closes the listener, calls `on_closed`, and waits for the connections
/// in flight (at most `opts.drain`).
pub async fn forward(
    listener: TcpListener,
    opts: ForwardOptions,
    stop: impl Future<Output = ()>,
    on_closed: impl FnOnce(),
) -> ForwardReport {
    let opts = Arc::new(opts);
    let c = Arc::new(Counters::default());
    let mut tasks = JoinSet::new();
    let mut accept_errors = 0;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok((sock, _)) => {
                    c.accepted.fetch_add(1, Ordering::Relaxed);
                    tasks.spawn(relay(sock, opts.clone(), c.clone()));
                }
                Err(e) => {
                    accept_errors += 1;
                    tracing::warn!(error = %e, "forward: accept failed");
                    // Out of descriptors: give the relays a moment to end.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished relays as we go.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    on_closed();
    let drained = tokio::time::timeout(opts.drain, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let cut = if drained.is_err() {
        tasks.len() as u64
    } else {
        0
    };
    tasks.abort_all();
    ForwardReport {
        accepted: c.accepted.load(Ordering::Relaxed),
        relayed: c.relayed.load(Ordering::Relaxed),
        connect_failed: c.connect_failed.load(Ordering::Relaxed),
        cut_at_drain: cut,
        bytes_to_new: c.bytes_to_new.load(Ordering::Relaxed),
        bytes_to_client: c.bytes_to_client.load(Ordering::Relaxed),
        accept_errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server on 127.0.0.1 standing in for the service on the new
    /// node; returns its address.
    async fn echo() -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn ping(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
        s.write_all(msg).await.unwrap();
        let mut buf = vec![0; msg.len()];
        s.read_exact(&mut buf).await.unwrap();
        buf
    }

    fn opts(to: String, drain: Duration) -> ForwardOptions {
        ForwardOptions {
            to,
            drain,
            connect_timeout: CONNECT_TIMEOUT,
        }
    }

    #[tokio::test]
    async fn forwards_during_grace_refuses_after_and_lets_inflight_finish() {
        let new = echo().await;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let old = l.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
        let fwd = tokio::spawn(forward(
            l,
            opts(new, Duration::from_secs(30)),
            async {
                let _ = stop_rx.await;
            },
            move || {
                let _ = closed_tx.send(());
            },
        ));
        // During the grace period: requests to the old address answer.
        let mut a = TcpStream::connect(old).await.unwrap();
        assert_eq!(ping(&mut a, b"hello").await, b"hello");
        drop(a);
        let mut inflight = TcpStream::connect(old).await.unwrap();
        assert_eq!(ping(&mut inflight, b"one").await, b"one");
        // Grace over.
        stop_tx.send(()).unwrap();
        closed_rx.await.unwrap();
        let refused = TcpStream::connect(old).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        // The connection in flight still works, and ends when it ends.
        assert_eq!(ping(&mut inflight, b"two").await, b"two");
        drop(inflight);
        let report = fwd.await.unwrap();
        assert_eq!(report.accepted, 2);
        assert_eq!(report.relayed, 2);
        assert_eq!(report.cut_at_drain, 0);
        assert_eq!(report.bytes_to_new, 11);
        assert_eq!(report.bytes_to_client, 11);
    }

    #[tokio::test]
    async fn an_unreachable_new_node_and_a_drain_timeout_are_reported() {
        // A port with nothing listening: bind, note, close.
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().to_string()
        };
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let old = l.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let fwd = tokio::spawn(forward(
            l,
            ForwardOptions {
                connect_timeout: Duration::from_millis(300),
                ..opts(dead, Duration::from_millis(200))
            },
            async {
                let _ = stop_rx.await;
            },
            || {},
        ));
        let mut c = TcpStream::connect(old).await.unwrap();
        // The relay closes the client's connection: EOF.
        let mut buf = [0u8; 1];
        assert_eq!(c.read(&mut buf).await.unwrap_or(0), 0);
        // A live connection that outlasts the drain time is cut.
        let new = echo().await;
        stop_tx.send(()).unwrap();
        let report = fwd.await.unwrap();
        assert_eq!(report.connect_failed, 1);

        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let old = l.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let fwd = tokio::spawn(forward(
            l,
            opts(new, Duration::from_millis(200)),
            async {
                let _ = stop_rx.await;
            },
            || {},
        ));
        let mut held = TcpStream::connect(old).await.unwrap();
        assert_eq!(ping(&mut held, b"x").await, b"x");
        stop_tx.send(()).unwrap();
        let report = fwd.await.unwrap();
        assert_eq!(report.cut_at_drain, 1);
        drop(held);
    }
}
