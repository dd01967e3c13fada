//! One receiving agent on 127.0.0.1 with mutual TLS, for the tests that move
//! data over the network path: a real `Agent` whose handler receives every
//! target under `b/dst` (`NAME` as a tree, `NAME.img`-style names as images,
//! as the request says), and a `RoundPusher` dialing it as host A.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mover::net::Endpoint;
use mover::net::NetSource;
use mover::net::Peer;
use mover::net::identity::{self, NodeFiles};
use mover::net::tls;
use mover::net::{Agent, PeerInfo, RoundHandler};
use mover::net::{RoundPushRetry, RoundPusher, receive_round};
use mover::net::{RoundRequest, RoundSummary, TransferMode, WireError};
use mover::retry::RetryPolicy;
use mover::{Destination, ReceiveOptions, Source};

/// Receives every target under `base/dst`, its state under `base/state`.
pub struct DirHandler {
    pub base: PathBuf,
    pub checkpoint_bytes: u64,
    /// Rounds not marked final are received as pre-copy rounds (partial
    /// rounds keep what they moved), as the plugin's agent does.
    pub precopy_rounds: bool,
    pub errors: Mutex<Vec<String>>,
}

impl DirHandler {
    fn dest(&self, req: &RoundRequest) -> Destination {
        let p = self.base.join("dst").join(&req.target);
        match req.mode {
            TransferMode::Tree => Destination::Tree(p),
            TransferMode::Image => Destination::Image(p),
        }
    }
}

impl RoundHandler for DirHandler {
    fn control(&self, _peer: &PeerInfo, body: &[u8]) -> Result<Vec<u8>, WireError> {
        Ok(body.to_vec())
    }
    fn round(
        &self,
        _peer: &PeerInfo,
        req: &RoundRequest,
        source: &mut NetSource<'_>,
    ) -> Result<RoundSummary, WireError> {
        let opts = ReceiveOptions::default()
            .with_checkpoint_bytes(self.checkpoint_bytes)
            .with_precopy(self.precopy_rounds && !req.final_round);
        let state = self.base.join("state").join(&req.target);
        receive_round(&self.dest(req), &state, source, &opts).inspect_err(|e| {
            self.errors.lock().unwrap().push(e.message.clone());
        })
    }
}

/// Starts an agent with `files`' identity on a free port of 127.0.0.1;
/// returns its address and the flag that stops it.
pub fn serve_agent(
    files: &NodeFiles,
    ep: Endpoint,
    handler: Arc<dyn RoundHandler>,
) -> (String, Arc<AtomicBool>) {
    let agent = Arc::new(Agent::new(tls::server_config(files).unwrap(), ep, handler));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = Arc::new(AtomicBool::new(false));
    let sd = shutdown.clone();
    std::thread::spawn(move || agent.serve(listener, &sd).unwrap());
    (addr, shutdown)
}

/// Host A's certificate and host B's agent, stopped on drop.
pub struct Net {
    pub dir: tempfile::TempDir,
    pub addr: String,
    pub a: NodeFiles,
    pub handler: Arc<DirHandler>,
    shutdown: Arc<AtomicBool>,
}

impl Drop for Net {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
    }
}

impl Net {
    /// Exact rounds, a checkpoint every MiB.
    pub fn start() -> Net {
        Net::with(1 << 20, false)
    }

    pub fn with(checkpoint_bytes: u64, precopy_rounds: bool) -> Net {
        let dir = tempfile::tempdir().unwrap();
        let a = identity::init(&dir.path().join("tls-a"), "hosta").unwrap();
        let b = identity::issue(
            &dir.path().join("tls-a"),
            "hostb",
            &dir.path().join("tls-b"),
        )
        .unwrap();
        let handler = Arc::new(DirHandler {
            base: dir.path().join("b"),
            checkpoint_bytes,
            precopy_rounds,
            errors: Mutex::new(Vec::new()),
        });
        std::fs::create_dir_all(dir.path().join("b/dst")).unwrap();
        let mut ep = Endpoint::new("hostb");
        ep.io_timeout = Duration::from_secs(10);
        let (addr, shutdown) = serve_agent(&b, ep, handler.clone());
        Net {
            dir,
            addr,
            a,
            handler,
            shutdown,
        }
    }

    pub fn dst(&self, target: &str) -> PathBuf {
        self.dir.path().join("b/dst").join(target)
    }

    /// A pusher for `target` that retries a cut connection for 20 s.
    pub fn pusher(&self, source: Source, target: &str) -> RoundPusher {
        let mut ep = Endpoint::new("hosta");
        ep.io_timeout = Duration::from_secs(10);
        RoundPusher::new(
            self.addr.clone(),
            tls::client_config(&self.a).unwrap(),
            ep,
            source,
            self.dir.path().join("a-cache").join(target),
            target,
        )
        .with_scan_threads(2)
        .with_retry(
            RoundPushRetry::default().with_reconnect(
                RetryPolicy::RECONNECT.with_deadline(Some(Duration::from_secs(20))),
            ),
        )
    }

    pub fn peer(&self) -> Peer {
        Peer::connect(
            &self.addr,
            &tls::client_config(&self.a).unwrap(),
            &Endpoint::new("hosta"),
        )
        .unwrap()
    }

    pub fn errors(&self) -> String {
        self.handler.errors.lock().unwrap().join("; ")
    }
}
