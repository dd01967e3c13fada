//! The network layer by hand, for benchmarks and manual tries:
//!
//! ```text
//! netpeer init DIR NAME                       # CA + node cert in DIR
//! netpeer issue CA_DIR NAME OUT_DIR           # another node's cert
//! netpeer receive LISTEN TLS_DIR BASE         # agent: targets under BASE
//! netpeer push ADDR TLS_DIR tree|image PATH TARGET CACHE_DIR ROUND
//! ```
//! `receive` puts target `T` at `BASE/T` (state in `BASE/.state/T`); `push`
//! prints the round's report as JSON (bytes fetched, wire bytes, times).
//! Environment: `BWLIMIT` (e.g. `100mbit`), `NOZSTD=1`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use mover::net::agent::{Agent, PeerInfo, RoundHandler};
use mover::net::bwlimit::{bandwidth_limiter, parse_rate};
use mover::net::identity::{self, NodeFiles};
use mover::net::message::{RoundRequest, RoundSummary, TransferMode, WireError};
use mover::net::netsource::NetSource;
use mover::net::rounds::{RoundPushRetry, RoundPusher, receive_round, summary, wire_error};
use mover::net::stream::Endpoint;
use mover::net::tls;
use mover::{Destination, ReceiveOptions, Receiver, Source};

struct Base(PathBuf);

impl RoundHandler for Base {
    fn control(&self, _p: &PeerInfo, body: &[u8]) -> Result<Vec<u8>, WireError> {
        Ok(body.to_vec())
    }
    fn round(
        &self,
        _p: &PeerInfo,
        req: &RoundRequest,
        src: &mut NetSource<'_>,
    ) -> Result<RoundSummary, WireError> {
        let p = self.0.join(&req.target);
        let dest = match req.mode {
            TransferMode::Tree => Destination::Tree(p),
            TransferMode::Image => Destination::Image(p),
        };
        let state = self.0.join(".state").join(&req.target);
        if std::env::var_os("ROUND_STATS").is_none() {
            return receive_round(&dest, &state, src, &ReceiveOptions::default());
        }
        // The receiver's phase times, for benchmarks (one JSON line per round).
        let t = std::time::Instant::now();
        let mut rx = Receiver::open(&dest, &state).map_err(wire_error)?;
        let st = rx
            .run_round(src, &ReceiveOptions::default())
            .map_err(wire_error)?;
        eprintln!("{}", serde_json::to_string(&st).unwrap_or_default());
        Ok(summary(&st, t.elapsed()))
    }
}

fn endpoint(name: &str) -> Endpoint {
    let mut ep = Endpoint::new(name);
    ep.hello.zstd = std::env::var_os("NOZSTD").is_none();
    if let Ok(r) = std::env::var("BWLIMIT") {
        ep.bucket = Some(Arc::new(bandwidth_limiter(
            parse_rate(&r).expect("BWLIMIT"),
        )));
    }
    ep
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let s = |i: usize| a.get(i).cloned().unwrap_or_else(|| usage());
    match s(0).as_str() {
        "init" => {
            identity::init(&PathBuf::from(s(1)), &s(2)).expect("init");
        }
        "issue" => {
            identity::issue(&PathBuf::from(s(1)), &s(2), &PathBuf::from(s(3))).expect("issue");
        }
        "receive" => {
            let files = NodeFiles::in_dir(&PathBuf::from(s(2)));
            let agent = Arc::new(Agent::new(
                tls::server_config(&files).expect("tls"),
                endpoint("receiver"),
                Arc::new(Base(PathBuf::from(s(3)))),
            ));
            let l = TcpListener::bind(s(1)).expect("listen");
            agent.serve(l, &AtomicBool::new(false)).expect("serve");
        }
        "push" => {
            let files = NodeFiles::in_dir(&PathBuf::from(s(2)));
            let path = PathBuf::from(s(4));
            let source = match s(3).as_str() {
                "tree" => Source::Tree(path),
                "image" => Source::Image(path),
                _ => usage(),
            };
            let p = RoundPusher {
                addr: s(1),
                tls: tls::client_config(&files).expect("tls"),
                ep: endpoint("sender"),
                source,
                target: s(5),
                cache_dir: PathBuf::from(s(6)),
                scan_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
                retry: RoundPushRetry::default(),
            };
            let round: u32 = s(7).parse().unwrap_or_else(|_| usage());
            let r = p.push(round, false, &mut |_| {}).expect("push");
            println!(
                "{{\"bytes_fetched\":{},\"chunks_new\":{},\"wire_sent\":{},\"wire_received\":{},\
                 \"scan_ms\":{},\"transfer_ms\":{},\"bytes_hashed\":{},\"attempts\":{}}}",
                r.summary.bytes_fetched,
                r.summary.chunks_new,
                r.wire_sent,
                r.wire_received,
                r.scan_time.as_millis(),
                r.transfer_time.as_millis(),
                r.scan.bytes_hashed,
                r.attempts
            );
        }
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: netpeer init DIR NAME | issue CA_DIR NAME OUT | receive LISTEN TLS BASE | \
         push ADDR TLS tree|image PATH TARGET CACHE ROUND"
    );
    std::process::exit(2)
}
