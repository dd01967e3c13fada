//! An HTTP/1.1 proxy in front of a test server (moto) that records every
//! request and answers a chosen share of them itself with 429 / 500 / any
//! error, for throttling and flaky-endpoint tests. Each connection carries one
//! request (`Connection: close`), which keeps the proxy small and the client's
//! connection pool honest.
//!
//! Only for 127.0.0.1 test servers; every loop is bounded by socket timeouts
//! and the proxy stops when dropped.

use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// No test request takes this long; a stuck peer is dropped after it.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// 0-based arrival order.
    pub seq: u64,
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    /// base64 SHA-256 of the body.
    pub body_sha256: String,
    /// Status the proxy answered itself, if it did.
    pub injected: Option<u16>,
    /// The `Action=` of a query-protocol body (EC2: `CreateVolume`, ...).
    pub action: Option<String>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A reply the proxy makes instead of forwarding.
#[derive(Debug, Clone)]
pub struct Injected {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Injected {
    /// AWS-style throttling: 429 with ThrottlingException.
    pub fn throttle() -> Self {
        Self::aws_error(429, "ThrottlingException", "Rate exceeded")
    }
    /// A flaky server: 500 with an HTML page (as moto and load balancers do).
    pub fn server_error() -> Self {
        Self {
            status: 500,
            headers: vec![("content-type".into(), "text/html".into())],
            body: b"<html><body>Internal Server Error</body></html>".to_vec(),
        }
    }
    /// A REST-JSON AWS error.
    pub fn aws_error(status: u16, code: &str, message: &str) -> Self {
        Self {
            status,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("x-amzn-errortype".into(), code.into()),
            ],
            body: format!(r#"{{"message":"{message}"}}"#).into_bytes(),
        }
    }
}

type Decide = dyn Fn(&Seen) -> Option<Injected> + Send + Sync;

/// The running proxy.
pub struct FaultProxy {
    pub port: u16,
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Proxies to 127.0.0.1:`upstream`; `decide` sees each request (body
    /// read) and may answer it.
    pub fn start(
        upstream: u16,
        decide: impl Fn(&Seen) -> Option<Injected> + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let decide: Arc<Decide> = Arc::new(decide);
        let seq = Arc::new(AtomicU64::new(0));
        let accept = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (seen, decide, seq) = (seen.clone(), decide.clone(), seq.clone());
                    std::thread::spawn(move || {
                        let _ = serve(conn, upstream, &seen, decide.as_ref(), &seq);
                    });
                }
            })
        };
        Self {
            port,
            url: format!("http://127.0.0.1:{port}"),
            seen,
            stop,
            accept: Some(accept),
        }
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        let mut v = self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        v.sort_by_key(|s| s.seq);
        v
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

struct Request {
    method: String,
    path: String,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn read_head(r: &mut impl BufRead) -> io::Result<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed in head",
            ));
        }
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        if line.is_empty() {
            return Ok(lines);
        }
        lines.push(line);
    }
}

fn read_request(r: &mut BufReader<TcpStream>, w: &mut TcpStream) -> io::Result<Request> {
    let lines = read_head(r)?;
    let mut parts = lines.first().map(|l| l.split(' ')).into_iter().flatten();
    let (method, path, version) = (
        parts.next().unwrap_or_default().to_owned(),
        parts.next().unwrap_or_default().to_owned(),
        parts.next().unwrap_or("HTTP/1.1").to_owned(),
    );
    let headers: Vec<(String, String)> = lines
        .iter()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    if get("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    }
    Ok(Request {
        method,
        path,
        version,
        headers,
        body,
    })
}

fn serve(
    client: TcpStream,
    upstream: u16,
    seen: &Mutex<Vec<Seen>>,
    decide: &Decide,
    seq: &AtomicU64,
) -> io::Result<()> {
    client.set_read_timeout(Some(IO_TIMEOUT))?;
    client.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut w = client.try_clone()?;
    let mut r = BufReader::new(client);
    let req = read_request(&mut r, &mut w)?;
    let mut record = Seen {
        seq: seq.fetch_add(1, Ordering::SeqCst),
        method: req.method.clone(),
        path: req.path.clone(),
        headers: req.headers.clone(),
        body_len: req.body.len(),
        body_sha256: base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&req.body)),
        injected: None,
        action: query_action(&req.body),
    };
    let injected = decide(&record);
    record.injected = injected.as_ref().map(|i| i.status);
    seen.lock().unwrap_or_else(|p| p.into_inner()).push(record);

    let reply = match injected {
        Some(inj) => {
            let mut out = format!("HTTP/1.1 {} Injected\r\n", inj.status).into_bytes();
            for (k, v) in &inj.headers {
                out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
            }
            out.extend_from_slice(
                format!(
                    "content-length: {}\r\nconnection: close\r\n\r\n",
                    inj.body.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(&inj.body);
            out
        }
        None => forward(&req, upstream)?,
    };
    w.write_all(&reply)?;
    w.flush()?;
    let _ = w.shutdown(Shutdown::Both);
    Ok(())
}

/// Sends the request upstream with `Connection: close` and returns the whole
/// reply with its Connection header set to close.
fn forward(req: &Request, upstream: u16) -> io::Result<Vec<u8>> {
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.set_read_timeout(Some(IO_TIMEOUT))?;
    up.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = format!("{} {} {}\r\n", req.method, req.path, req.version);
    for (k, v) in &req.headers {
        if matches!(
            k.as_str(),
            "connection" | "expect" | "transfer-encoding" | "content-length"
        ) {
            continue;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        req.body.len()
    ));
    up.write_all(head.as_bytes())?;
    up.write_all(&req.body)?;
    up.flush()?;
    let mut reply = Vec::new();
    up.read_to_end(&mut reply)?;
    // Rewrite the head so the client does not reuse this connection.
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no reply head"))?;
    let head = String::from_utf8_lossy(&reply[..split]).into_owned();
    let mut out = String::new();
    for (n, line) in head.split("\r\n").enumerate() {
        if n > 0 && line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("connection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&reply[split + 4..]);
    Ok(bytes)
}

/// `Action=X` of a form-encoded query-protocol body.
fn query_action(body: &[u8]) -> Option<String> {
    std::str::from_utf8(body)
        .ok()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .map(str::to_owned)
}
