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

use mover::net::Endpoint;
use mover::net::NetSource;
use mover::net::identity::{self, NodeFiles};
use mover::net::tls;
use mover::net::{Agent, PeerInfo, RoundHandler};
use mover::net::{RoundPusher, receive_round, summary, wire_error};
use mover::net::{RoundRequest, RoundSummary, TransferMode, WireError};
use mover::net::{bandwidth_limiter, parse_rate};
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

/// This node's endpoint, named as its certificate names it (a peer whose
/// `Hello` says another name is refused).
fn endpoint(files: &NodeFiles) -> Endpoint {
    let mut ep = Endpoint::new(&identity::node_name(files).expect("node certificate"));
    ep.hello.zstd = std::env::var_os("NOZSTD").is_none();
    if let Ok(r) = std::env::var("BWLIMIT") {
        ep.bucket = Some(Arc::new(bandwidth_limiter(
            parse_rate(&r).expect("BWLIMIT"),
        )));
    }
    ep
}

fn main() {
    run(&std::env::args().skip(1).collect::<Vec<_>>());
}

/// The example's body, for `main` and for the test below (`cargo test`
/// runs it: `test = true` in Cargo.toml).
fn run(a: &[String]) {
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
                endpoint(&files),
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
            let p = RoundPusher::new(
                s(1),
                tls::client_config(&files).expect("tls"),
                endpoint(&files),
                source,
                PathBuf::from(s(6)),
                s(5),
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's walk-through: a CA and two nodes, an agent receiving
    /// under a base folder, a pushed tree that arrives whole.
    #[test]
    fn the_example_pushes_a_tree_to_its_agent() {
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n).display().to_string();
        let s = |v: &[&str]| v.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
        run(&s(&["init", &p("a"), "a"]));
        run(&s(&["issue", &p("a"), "b", &p("b")]));
        // A free port: bind, read it, let go.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let receive = s(&["receive", &addr, &p("b"), &p("base")]);
        // The agent serves until the test process ends.
        std::thread::spawn(move || run(&receive));
        std::fs::create_dir_all(d.path().join("src/sub")).unwrap();
        std::fs::write(d.path().join("src/sub/f"), vec![9u8; 200_000]).unwrap();
        let push = s(&[
            "push",
            &addr,
            &p("a"),
            "tree",
            &p("src"),
            "vol",
            &p("cache"),
            "1",
        ]);
        let t = std::time::Instant::now();
        // The agent may not listen yet: the push's first contact is one try.
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(t.elapsed().as_secs() < 10, "the agent never listened");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        run(&push);
        assert_eq!(
            std::fs::read(d.path().join("base/vol/sub/f")).unwrap(),
            vec![9u8; 200_000]
        );
    }
}
