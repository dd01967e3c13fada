//! Keeping clients connected: when the service's task leaves this node,
//! this node forwards the service's port to the node it went to, for a
//! grace period (`placement::forward`), so clients that still use the old
//! address keep working (the proxy of DAFFE and the thesis).
//!
//! [`Keeper`] is the pure part: fed where the service is now, it says when
//! to start forwarding, to where, and when to stop (the service came back:
//! the port must be free for it). [`Forwarders`] runs the forwarders on a
//! tokio runtime. The watch runs on every node that may lose the service
//! (`daffe follow --forward-port`), not only where the mover runs: each
//! old node has to listen on its own address.

use super::swarm::Placed;
use placement::forward::{self, ForwardOptions, ForwardReport};
use serde::Serialize;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What the keeper asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeepEvent {
    /// Forward this node's port to this node's address (start, or retarget
    /// a forwarder already running).
    ForwardTo(Placed),
    /// The service is back here: stop forwarding, free the port.
    Stop,
}

/// Remembers whether the service was here last.
#[derive(Debug)]
pub(crate) struct Keeper {
    me: String,
    /// Where the service was last seen placed.
    last: Option<Placed>,
    /// The node forwarded to, while forwarding.
    target: Option<String>,
}

impl Keeper {
    pub(crate) fn new(me: &str) -> Self {
        Self {
            me: me.to_owned(),
            last: None,
            target: None,
        }
    }

    /// Takes where the service is now (None: no task placed, e.g. pending
    /// in the middle of a move, which changes nothing).
    pub(crate) fn saw(&mut self, now: Option<Placed>) -> Option<KeepEvent> {
        let now = now?;
        let was_here = self.last.as_ref().is_some_and(|l| l.node == self.me);
        let event = if now.node == self.me {
            self.target.take().map(|_| KeepEvent::Stop)
        } else if (was_here || self.target.is_some())
            && !now.addr.is_empty()
            && self.target.as_deref() != Some(now.node.as_str())
        {
            self.target = Some(now.node.clone());
            Some(KeepEvent::ForwardTo(now.clone()))
        } else {
            None
        };
        self.last = Some(now);
        event
    }

    /// The forwarder ended on its own (grace over): nothing to retarget.
    pub(crate) fn ended(&mut self) {
        self.target = None;
    }
}

/// One forwarding period's settings.
#[derive(Debug, Clone)]
pub(crate) struct KeepOptions {
    /// Where to listen (this node's side): `0.0.0.0:PORT`.
    pub listen: String,
    /// The service's port on the new node.
    pub port: u16,
    pub grace: Duration,
    pub drain: Duration,
    /// How long a client is held while the new node does not answer yet
    /// (the move's downtime), before its connection is closed.
    pub connect_timeout: Duration,
    /// How long to retry binding while the old task still holds the port.
    pub bind_for: Duration,
}

/// A finished forwarding period.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct KeepReport {
    pub to: String,
    #[serde(flatten)]
    pub report: ForwardReport,
}

struct Running {
    to: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<ForwardReport, String>>,
}

/// The forwarder of this node (at most one), on a runtime.
pub(crate) struct Forwarders {
    rt: Handle,
    opts: KeepOptions,
    running: Option<Running>,
}

async fn bind_retrying(addr: &str, limit: Duration) -> Result<TcpListener, String> {
    let t = Instant::now();
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            // The old task's container may hold the port for its stop grace.
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && t.elapsed() < limit => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(format!("forwarder cannot listen on {addr}: {e}")),
        }
    }
}

impl Forwarders {
    pub(crate) fn new(rt: Handle, opts: KeepOptions) -> Self {
        Self {
            rt,
            opts,
            running: None,
        }
    }

    /// Acts on an event; returns the report of a forwarder it stopped.
    pub(crate) fn apply(&mut self, e: KeepEvent) -> Option<Result<KeepReport, String>> {
        let stopped = self.stop();
        if let KeepEvent::ForwardTo(p) = e {
            let to = format!("{}:{}", p.addr, self.opts.port);
            let o = self.opts.clone();
            let (tx, rx) = oneshot::channel::<()>();
            let target = to.clone();
            let task = self.rt.spawn(async move {
                let listener = bind_retrying(&o.listen, o.bind_for).await?;
                tracing::info!(listen = %o.listen, to = %target, "forwarding the old address");
                let stop = async move {
                    tokio::select! {
                        _ = tokio::time::sleep(o.grace) => {}
                        _ = rx => {}
                    }
                };
                let opts = ForwardOptions {
                    to: target,
                    drain: o.drain,
                    connect_timeout: o.connect_timeout,
                };
                Ok(forward::forward(listener, opts, stop, || {}).await)
            });
            self.running = Some(Running { to, stop: tx, task });
        }
        stopped
    }

    /// The report of a forwarder whose grace ended on its own, if any.
    pub(crate) fn finished(&mut self) -> Option<Result<KeepReport, String>> {
        if self.running.as_ref().is_some_and(|r| r.task.is_finished()) {
            return self.stop();
        }
        None
    }

    /// Stops the forwarder (if any) and waits for its report (drain bound).
    pub(crate) fn stop(&mut self) -> Option<Result<KeepReport, String>> {
        let r = self.running.take()?;
        let _ = r.stop.send(());
        let joined = self.rt.block_on(r.task);
        Some(match joined {
            Ok(Ok(report)) => Ok(KeepReport { to: r.to, report }),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(format!("forwarder to {}: {e}", r.to)),
        })
    }

    pub(crate) fn active(&self) -> bool {
        self.running.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn at(node: &str) -> Option<Placed> {
        Some(Placed {
            service: "counter".into(),
            node: node.into(),
            node_id: format!("id-{node}"),
            addr: "127.0.0.1".into(),
            region: None,
            state: "running".into(),
        })
    }

    #[test]
    fn forwards_when_the_task_leaves_retargets_and_stops_when_it_returns() {
        let mut k = Keeper::new("n1");
        assert_eq!(k.saw(at("n1")), None);
        // Mid-move, no task placed: nothing yet.
        assert_eq!(k.saw(None), None);
        assert!(matches!(k.saw(at("n2")), Some(KeepEvent::ForwardTo(p)) if p.node == "n2"));
        assert_eq!(k.saw(at("n2")), None, "once");
        // Moved on from n2 to n3: the old address now leads to n3.
        assert!(matches!(k.saw(at("n3")), Some(KeepEvent::ForwardTo(p)) if p.node == "n3"));
        // Back here: the port must be free for the service.
        assert_eq!(k.saw(at("n1")), Some(KeepEvent::Stop));
        assert_eq!(k.saw(at("n1")), None);
        // A node that never had the service forwards nothing.
        let mut other = Keeper::new("n9");
        assert_eq!(other.saw(at("n1")), None);
        assert_eq!(other.saw(at("n2")), None);
        // Grace over, then the service moves again from n2: nothing to do here.
        k.saw(at("n2"));
        k.ended();
        assert_eq!(k.saw(at("n3")), None);
    }

    #[test]
    fn the_forwarder_waits_for_the_port_and_holds_clients_until_the_new_node_answers() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // The old task still holds the port for a moment.
        let (held, port) = rt.block_on(async {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let p = l.local_addr().unwrap().port();
            (l, p)
        });
        let new = rt.block_on(async {
            // Reserve a port for the new node, free it: it starts listening late.
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().port()
        });
        let mut f = Forwarders::new(
            rt.handle().clone(),
            KeepOptions {
                listen: format!("127.0.0.1:{port}"),
                port: new,
                grace: Duration::from_secs(60),
                drain: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(10),
                bind_for: Duration::from_secs(10),
            },
        );
        let mut target = at("n2").unwrap();
        target.addr = "127.0.0.1".into();
        assert!(f.apply(KeepEvent::ForwardTo(target)).is_none());
        assert!(f.active());
        rt.block_on(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(held);
            // A client arrives at the old address before the new node listens.
            let client = tokio::spawn(async move {
                let t = Instant::now();
                let mut s = loop {
                    match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                        Ok(s) => break s,
                        Err(_) if t.elapsed() < Duration::from_secs(5) => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("old address: {e}"),
                    }
                };
                s.write_all(b"ping").await.unwrap();
                let mut b = [0u8; 4];
                s.read_exact(&mut b).await.unwrap();
                b
            });
            tokio::time::sleep(Duration::from_millis(500)).await;
            let l = TcpListener::bind(("127.0.0.1", new)).await.unwrap();
            tokio::spawn(async move {
                let (mut s, _) = l.accept().await.unwrap();
                let mut b = [0u8; 4];
                s.read_exact(&mut b).await.unwrap();
                s.write_all(&b).await.unwrap();
            });
            assert_eq!(&client.await.unwrap(), b"ping");
        });
        let r = f.stop().unwrap().unwrap();
        assert_eq!(r.report.accepted, 1);
        assert_eq!(r.report.connect_failed, 0);
        assert!(!f.active());
        // Stopped: the old address refuses (the service may come back).
        rt.block_on(async {
            assert!(
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_err()
            );
        });
    }
}
