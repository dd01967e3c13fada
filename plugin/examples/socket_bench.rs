//! Latency of the VolumeDriver socket as dockerd sees it: creates N volumes
//! straight on the socket, then times Get (random names) and List, over one
//! keep-alive connection like dockerd's client, and reports p50/p99/max plus
//! the daemon's RSS. Used by bench/plugin.sh.
//!
//! Usage: socket_bench SOCKET DAEMON_PID [VOLUMES=1000] [GETS=5000] [LISTS=300]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyperlocal::{UnixClientExt, UnixConnector};
use std::path::PathBuf;
use std::time::{Duration, Instant};

type C = Client<UnixConnector, Full<Bytes>>;

async fn post(c: &C, sock: &PathBuf, path: &str, body: String) -> serde_json::Value {
    let req = Request::post(hyperlocal::Uri::new(sock, path))
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let resp = c.request(req).await.expect("request failed");
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&bytes).expect("json")
}

/// The `p` quantile (nearest rank) of `sorted`.
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a rank among at most millions of samples, clamped to the slice"
)]
fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn report(what: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "{what}: n={} p50={:.3}ms p99={:.3}ms max={:.3}ms",
        v.len(),
        pct(&v, 0.50).as_secs_f64() * 1e3,
        pct(&v, 0.99).as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3
    );
}

fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: socket_bench SOCKET DAEMON_PID [VOLUMES] [GETS] [LISTS]");
        std::process::exit(2);
    }
    let sock = PathBuf::from(&args[1]);
    let pid = &args[2];
    let n: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let gets: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(5000);
    let lists: usize = args.get(5).and_then(|a| a.parse().ok()).unwrap_or(300);
    let c: C = Client::unix();
    println!("rss_before_kib={}", rss_kib(pid));
    let t = Instant::now();
    for i in 0..n {
        let r = post(
            &c,
            &sock,
            "/VolumeDriver.Create",
            format!(r#"{{"Name":"bench{i}"}}"#),
        )
        .await;
        assert_eq!(r["Err"], "", "create bench{i}: {r}");
    }
    println!("create: {n} volumes in {:.2}s", t.elapsed().as_secs_f64());
    // A small deterministic generator: the names asked must not follow the
    // store's key order, or the B-tree's cache flatters the figure.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut lat = Vec::with_capacity(gets);
    for _ in 0..gets {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let name = format!("bench{}", x % n as u64);
        let t = Instant::now();
        let r = post(
            &c,
            &sock,
            "/VolumeDriver.Get",
            format!(r#"{{"Name":"{name}"}}"#),
        )
        .await;
        lat.push(t.elapsed());
        assert_eq!(r["Volume"]["Name"], name.as_str(), "{r}");
    }
    report("get", lat);
    let mut lat = Vec::with_capacity(lists);
    for _ in 0..lists {
        let t = Instant::now();
        let r = post(&c, &sock, "/VolumeDriver.List", "{}".into()).await;
        lat.push(t.elapsed());
        assert_eq!(r["Volumes"].as_array().map(Vec::len), Some(n));
    }
    report("list", lat);
    // List right after a write: the cache is cold, the store is scanned.
    let mut lat = Vec::with_capacity(100);
    for i in 0..100 {
        let r = post(
            &c,
            &sock,
            "/VolumeDriver.Mount",
            format!(r#"{{"Name":"bench0","ID":"b{i}"}}"#),
        )
        .await;
        assert_eq!(r["Err"], "", "{r}");
        let t = Instant::now();
        post(&c, &sock, "/VolumeDriver.List", "{}".into()).await;
        lat.push(t.elapsed());
        post(
            &c,
            &sock,
            "/VolumeDriver.Unmount",
            format!(r#"{{"Name":"bench0","ID":"b{i}"}}"#),
        )
        .await;
    }
    report("list after a write", lat);
    println!("rss_after_kib={}", rss_kib(pid));
    for i in 0..n {
        post(
            &c,
            &sock,
            "/VolumeDriver.Remove",
            format!(r#"{{"Name":"bench{i}"}}"#),
        )
        .await;
    }
}
