//! `daffe placement rtt`: round trips from this node to other nodes,
//! measured, and written as an RTT table file for `--rtt` (issue 15, the
//! latency model's "RTTs that the agents measure between nodes").
//!
//! A sample is one TCP connect to the other node's agent (`daffe agent
//! --listen`): SYN and SYN-ACK are one round trip, answered by its kernel,
//! so its load and TLS do not count, and no agent protocol is needed. Run
//! it on each node (or from each region) with the same `--out`: every run
//! adds or replaces its own pairs and keeps the rest
//! (`placement::rtt_probe`). Nothing is written unless every node answered.

use clap::Args;
use placement::rtt_probe::{self, Measured};
use serde::Serialize;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub(crate) struct RttArgs {
    /// This node's region (the pairs' first end).
    #[arg(long)]
    pub(crate) from: String,
    /// A node to measure, as REGION=HOST:PORT (its agent's address); once
    /// per node.
    #[arg(long = "to", value_name = "REGION=HOST:PORT", required = true)]
    pub(crate) to: Vec<String>,
    /// Round trips per node (p50 and p90 are taken over them).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) samples: u32,
    /// How long one connect may take before the node counts as unreachable.
    #[arg(long, default_value = "2s")]
    pub(crate) timeout: String,
    /// The RTT file to add the pairs to (created if missing; its other
    /// pairs are kept). Without it, the pairs are only printed.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// Print JSON on stdout instead of text (for scripts).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct PairReport {
    to: String,
    addr: String,
    p50_ms: f64,
    p90_ms: f64,
    samples: u32,
}

#[derive(Debug, Serialize)]
pub(crate) struct RttReport {
    from: String,
    pairs: Vec<PairReport>,
    out: Option<PathBuf>,
    /// Whether `--rtt` with the file would load (the built-in table with it
    /// laid over is whole), and if not, why.
    usable: bool,
    note: Option<String>,
}

/// A probe: how long one round trip to `addr` took.
pub(crate) trait Probe {
    fn once(&mut self, addr: SocketAddr, timeout: Duration) -> std::io::Result<Duration>;
}

/// The real probe: a TCP connect, closed at once.
struct TcpConnect;

impl Probe for TcpConnect {
    fn once(&mut self, addr: SocketAddr, timeout: Duration) -> std::io::Result<Duration> {
        let t = Instant::now();
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        let took = t.elapsed();
        drop(s);
        Ok(took)
    }
}

fn target(spec: &str) -> Result<(String, String, SocketAddr), String> {
    let bad = || format!("--to {spec:?}: expected REGION=HOST:PORT");
    let (region, hostport) = spec.split_once('=').ok_or_else(bad)?;
    let (region, hostport) = (region.trim(), hostport.trim());
    if region.is_empty() || hostport.is_empty() {
        return Err(bad());
    }
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("--to {spec:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("--to {spec:?}: {hostport} has no address"))?;
    Ok((region.to_owned(), hostport.to_owned(), addr))
}

/// Measures every node first (a node that does not answer fails the run
/// before anything is written), then merges into `--out`.
pub(crate) fn run_with(a: &RttArgs, probe: &mut dyn Probe) -> Result<RttReport, String> {
    let timeout =
        crate::migrate::duration::parse(&a.timeout).map_err(|e| format!("--timeout: {e}"))?;
    let targets =
        a.to.iter()
            .map(|s| target(s))
            .collect::<Result<Vec<_>, _>>()?;
    if let Some(t) = targets.iter().find(|t| t.0 == a.from) {
        return Err(format!("--to {}: that is --from's own region", t.0));
    }
    let existing = match &a.out {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("{}: {e}", p.display())),
        },
        None => String::new(),
    };
    let mut pairs = Vec::new();
    let mut measured = Vec::new();
    let mut failed = Vec::new();
    for (region, hostport, addr) in &targets {
        let mut samples = Vec::new();
        for i in 0..a.samples {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
            match probe.once(*addr, timeout) {
                Ok(d) => samples.push(d),
                Err(e) => {
                    failed.push(format!("cannot reach {region} ({hostport}): {e}"));
                    break;
                }
            }
        }
        if u32::try_from(samples.len()).ok() != Some(a.samples) {
            continue;
        }
        let rtt = rtt_probe::summarize(&samples).expect("at least one sample");
        pairs.push(PairReport {
            to: region.clone(),
            addr: hostport.clone(),
            p50_ms: rtt.p50_ms,
            p90_ms: rtt.p90_ms,
            samples: a.samples,
        });
        measured.push(Measured {
            a: a.from.clone(),
            b: region.clone(),
            rtt,
        });
    }
    if !failed.is_empty() {
        return Err(format!("{} (nothing written)", failed.join("; ")));
    }
    let merged = rtt_probe::merge(&existing, &measured).map_err(|e| match &a.out {
        Some(p) => format!("{}: {e} (left as it was)", p.display()),
        None => e.to_string(),
    })?;
    if let Some(p) = &a.out {
        placement::state::replace_file(p, merged.text.as_bytes())
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(RttReport {
        from: a.from.clone(),
        pairs,
        out: a.out.clone(),
        usable: merged.usable.is_ok(),
        note: merged
            .usable
            .err()
            .map(|why| format!("--rtt with this file fails until more pairs are measured: {why}")),
    })
}

pub(crate) fn run(a: &RttArgs) -> Result<RttReport, String> {
    run_with(a, &mut TcpConnect)
}

pub(crate) fn render(r: &RttReport) -> String {
    let mut s = String::new();
    for p in &r.pairs {
        s.push_str(&format!(
            "{} -> {} ({}): p50 {:.3} ms, p90 {:.3} ms over {} round trips\n",
            r.from, p.to, p.addr, p.p50_ms, p.p90_ms, p.samples
        ));
    }
    if let Some(out) = &r.out {
        s.push_str(&format!("wrote {} (use it with --rtt)\n", out.display()));
    }
    if let Some(n) = &r.note {
        s.push_str(&format!("note: {n}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe answering from a table of (port, result) in turn.
    struct Script(Vec<(u16, std::io::Result<Duration>)>);

    impl Probe for Script {
        fn once(&mut self, addr: SocketAddr, _: Duration) -> std::io::Result<Duration> {
            let i = self
                .0
                .iter()
                .position(|(p, _)| *p == addr.port())
                .expect("a probe of a node the test did not name");
            self.0.remove(i).1
        }
    }

    fn args(dir: &std::path::Path, to: &[&str], samples: u32) -> RttArgs {
        RttArgs {
            from: "us-east-1".into(),
            to: to.iter().map(|s| s.to_string()).collect(),
            samples,
            timeout: "1s".into(),
            out: Some(dir.join("rtt.toml")),
            json: true,
        }
    }

    fn ok(ms: u64) -> std::io::Result<Duration> {
        Ok(Duration::from_millis(ms))
    }

    #[test]
    fn measured_pairs_go_into_the_file_and_a_second_run_keeps_the_first() {
        let d = tempfile::tempdir().unwrap();
        let a = args(d.path(), &["eu-west-1=127.0.0.1:7001"], 3);
        let r = run_with(
            &a,
            &mut Script(vec![(7001, ok(80)), (7001, ok(70)), (7001, ok(90))]),
        )
        .unwrap();
        assert_eq!((r.pairs[0].p50_ms, r.pairs[0].p90_ms), (80.0, 90.0));
        assert!(r.usable, "{:?}", r.note);
        let mut b = args(d.path(), &["ap-northeast-1=127.0.0.1:7002"], 1);
        b.from = "eu-west-1".into();
        run_with(&b, &mut Script(vec![(7002, ok(200))])).unwrap();
        let mut t = placement::rtt::RttTable::builtin().unwrap();
        t.overlay(&std::fs::read_to_string(d.path().join("rtt.toml")).unwrap())
            .unwrap();
        let i = |n: &str| t.index(n).unwrap();
        assert_eq!(t.get(i("eu-west-1"), i("us-east-1")).p50_ms, 80.0);
        assert_eq!(t.get(i("ap-northeast-1"), i("eu-west-1")).p50_ms, 200.0);
    }

    #[test]
    fn a_node_that_does_not_answer_fails_the_run_and_nothing_is_written() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("rtt.toml"), "source = \"mine\"\n").unwrap();
        let a = args(
            d.path(),
            &["eu-west-1=127.0.0.1:7001", "ap-northeast-1=127.0.0.1:7002"],
            2,
        );
        let refused = || {
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connection refused",
            ))
        };
        let e = run_with(
            &a,
            &mut Script(vec![(7001, ok(5)), (7001, ok(6)), (7002, refused())]),
        )
        .unwrap_err();
        assert!(
            e.contains("cannot reach ap-northeast-1 (127.0.0.1:7002): connection refused")
                && e.contains("nothing written"),
            "{e}"
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("rtt.toml")).unwrap(),
            "source = \"mine\"\n"
        );
    }

    #[test]
    fn bad_flags_and_foreign_files_are_refused_before_anything_is_probed() {
        let d = tempfile::tempdir().unwrap();
        for (to, want) in [
            ("eu-west-1", "expected REGION=HOST:PORT"),
            ("=127.0.0.1:1", "expected REGION=HOST:PORT"),
            ("eu-west-1=127.0.0.1", "invalid socket address"),
            ("us-east-1=127.0.0.1:1", "--from's own region"),
        ] {
            let e = run_with(&args(d.path(), &[to], 1), &mut Script(vec![])).unwrap_err();
            assert!(e.contains(want), "{to}: {e}");
        }
        std::fs::write(d.path().join("rtt.toml"), "colour = \"red\"\n").unwrap();
        let e = run_with(
            &args(d.path(), &["eu-west-1=127.0.0.1:7001"], 1),
            &mut Script(vec![(7001, ok(5))]),
        )
        .unwrap_err();
        assert!(e.contains("left as it was"), "{e}");
        assert_eq!(
            std::fs::read_to_string(d.path().join("rtt.toml")).unwrap(),
            "colour = \"red\"\n"
        );
    }

    /// The real probe against a listener on loopback: a positive, small
    /// round trip; a closed port is refused at once.
    #[test]
    fn the_tcp_probe_measures_a_listener_and_says_a_closed_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let d = TcpConnect.once(addr, Duration::from_secs(1)).unwrap();
        assert!(
            d > Duration::ZERO && d < Duration::from_millis(500),
            "{d:?}"
        );
        drop(l);
        let e = TcpConnect.once(addr, Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}
