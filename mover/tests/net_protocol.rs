//! The peer protocol end to end over real TCP and mutual TLS on 127.0.0.1:
//! a round moves every chunk intact; unauthenticated peers get nothing and
//! reach no handler; a hostile sender's lies are refused before the receiver
//! sees them.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::net::serve_agent;
use mover::internals::net::ChunkSink;
use mover::internals::net::WireCounters;
use mover::internals::net::{
    ChunkHeader, Codec, ErrorCode, Message, RoundRequest, RoundSummary, TransferMode, WireError,
    WireWant,
};
use mover::net::ConnError;
use mover::net::Endpoint;
use mover::net::NetSource;
use mover::net::Peer;
use mover::net::identity::{self, NodeFiles};
use mover::net::tls;
use mover::net::{MAX_SESSIONS_PER_PEER, PeerInfo, RoundHandler};
use mover::{ChunkId, ChunkSource, SourceError, Want};

/// A source of `n` chunks; its "manifest" is the postcard list of wants.
struct FakeSource {
    chunks: Vec<Vec<u8>>,
}

impl FakeSource {
    fn new(n: usize) -> Self {
        let chunks = (0..n)
            .map(|i| {
                let mut c = vec![0u8; 1000 + i * 37];
                if i % 2 == 0 {
                    blake3::Hasher::new_derive_key("test")
                        .update(&i.to_le_bytes())
                        .finalize_xof()
                        .fill(&mut c);
                } else {
                    c.fill(i.to_le_bytes()[0]); // compressible
                }
                c
            })
            .collect();
        FakeSource { chunks }
    }

    fn wants(&self) -> Vec<WireWant> {
        self.chunks
            .iter()
            .enumerate()
            .map(|(i, c)| WireWant {
                entry: u32::try_from(i).unwrap(),
                offset: 0,
                len: u32::try_from(c.len()).unwrap(),
                id: *blake3::hash(c).as_bytes(),
            })
            .collect()
    }
}

impl ChunkSource for FakeSource {
    fn manifest(&mut self, out: &mut dyn Write) -> Result<ChunkId, SourceError> {
        let bytes = postcard::to_stdvec(&self.wants()).unwrap();
        out.write_all(&bytes).map_err(SourceError::Manifest)?;
        Ok(ChunkId(*blake3::hash(&bytes).as_bytes()))
    }
    fn fetch(&mut self, wants: &[Want], sink: &mut ChunkSink<'_>) -> Result<(), SourceError> {
        for (i, w) in wants.iter().enumerate() {
            sink(i, self.chunks[w.entry as usize][..].into()).map_err(SourceError::Sink)?;
        }
        Ok(())
    }
}

/// Receives into memory, verifying ids; records calls and errors.
#[derive(Default)]
struct MemHandler {
    calls: AtomicUsize,
    stored: Mutex<HashMap<String, Vec<Vec<u8>>>>,
    errors: Mutex<Vec<String>>,
}

impl MemHandler {
    fn receive(&self, source: &mut NetSource<'_>) -> Result<(Vec<Vec<u8>>, u64), String> {
        let mut manifest = Vec::new();
        let root = source
            .receive_manifest(&mut manifest)
            .map_err(|e| e.to_string())?;
        if *blake3::hash(&manifest).as_bytes() != root {
            return Err("manifest root mismatch".into());
        }
        let wants: Vec<WireWant> = postcard::from_bytes(&manifest).map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        source
            .fetch_wire(&wants, &mut |i, data| {
                if *blake3::hash(&data).as_bytes() != wants[i].id {
                    return Err(format!("chunk {i} fails its id").into());
                }
                got.push(data.to_vec());
                Ok(())
            })
            .map_err(|e| e.to_string())?;
        Ok((got, source.bytes_fetched))
    }
}

impl RoundHandler for MemHandler {
    fn control(&self, peer: &PeerInfo, body: &[u8]) -> Result<Vec<u8>, WireError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if body == b"refuse" {
            return Err(WireError {
                code: ErrorCode::Refused,
                message: "no room".into(),
            });
        }
        Ok(format!("hello {}", peer.node).into_bytes())
    }
    fn round(
        &self,
        _peer: &PeerInfo,
        req: &RoundRequest,
        source: &mut NetSource<'_>,
    ) -> Result<RoundSummary, WireError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match self.receive(source) {
            Ok((chunks, fetched)) => {
                let n = chunks.len() as u64;
                self.stored
                    .lock()
                    .unwrap()
                    .insert(req.target.clone(), chunks);
                Ok(RoundSummary::default()
                    .with_chunks_new(n)
                    .with_bytes_fetched(fetched))
            }
            Err(message) => {
                self.errors.lock().unwrap().push(message.clone());
                Err(WireError {
                    code: ErrorCode::Transient,
                    message,
                })
            }
        }
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    addr: String,
    a_files: NodeFiles,
    handler: Arc<MemHandler>,
    shutdown: Arc<AtomicBool>,
    foreign_files: NodeFiles,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
    }
}

/// The agent's handshake deadline in these tests: shorter than its 5 s I/O
/// timeout, so a connection cut at 2 s was cut by the deadline.
const HANDSHAKE: Duration = Duration::from_secs(2);

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let a_files = identity::init(&dir.path().join("a"), "hosta").unwrap();
    let b_files = identity::issue(&dir.path().join("a"), "hostb", &dir.path().join("b")).unwrap();
    let foreign_files = identity::init(&dir.path().join("evil"), "mallory").unwrap();
    let handler = Arc::new(MemHandler::default());
    let mut ep = Endpoint::new("hostb");
    ep.io_timeout = Duration::from_secs(5);
    ep.handshake_timeout = HANDSHAKE;
    let (addr, shutdown) = serve_agent(&b_files, ep, handler.clone());
    Setup {
        _dir: dir,
        addr,
        a_files,
        handler,
        shutdown,
        foreign_files,
    }
}

fn endpoint(zstd: bool) -> Endpoint {
    let mut ep = Endpoint::new("hosta");
    ep.hello.zstd = zstd;
    ep.io_timeout = Duration::from_secs(5);
    ep
}

fn request(target: &str) -> RoundRequest {
    RoundRequest {
        target: target.into(),
        mode: TransferMode::Tree,
        round: 1,
        final_round: false,
        token: String::new(),
    }
}

#[test]
fn a_round_moves_every_chunk_intact_and_compresses() {
    let s = setup();
    for zstd in [false, true] {
        let ep = endpoint(zstd);
        let mut peer =
            Peer::connect(&s.addr, &tls::client_config(&s.a_files).unwrap(), &ep).unwrap();
        assert_eq!(peer.node(), "hostb");
        assert_eq!(peer.control(b"hi").unwrap(), b"hello hosta");
        let mut src = FakeSource::new(300);
        let total: u64 = src.chunks.iter().map(|c| c.len() as u64).sum();
        let summary = peer
            .push_round(&request("vol"), &mut src, &mut |_| {})
            .unwrap();
        peer.bye();
        assert_eq!(summary.chunks_new, 300);
        assert_eq!(summary.bytes_fetched, total);
        assert_eq!(s.handler.stored.lock().unwrap()["vol"], src.chunks);
        // Half the chunks are runs of one byte: with zstd far fewer bytes cross.
        let sent = ep.counters.sent();
        if zstd {
            assert!(sent < total * 3 / 4, "zstd: {sent} wire bytes for {total}");
        } else {
            assert!(sent > total, "raw: {sent} wire bytes for {total}");
        }
    }
}

#[test]
fn control_errors_reach_the_caller_and_the_session_goes_on() {
    let s = setup();
    let mut peer = Peer::connect(
        &s.addr,
        &tls::client_config(&s.a_files).unwrap(),
        &endpoint(true),
    )
    .unwrap();
    let err = peer.control(b"refuse").unwrap_err();
    assert!(err.to_string().contains("no room"), "{err}");
    assert!(!err.retryable());
    assert_eq!(peer.control(b"again").unwrap(), b"hello hosta");
}

#[test]
fn a_peer_of_another_ca_gets_nothing() {
    let s = setup();
    let err = Peer::connect(
        &s.addr,
        &tls::client_config(&s.foreign_files).unwrap(),
        &endpoint(true),
    )
    .unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(s.handler.calls.load(Ordering::SeqCst), 0);
}

#[test]
fn a_peer_without_a_certificate_gets_nothing() {
    let s = setup();
    // A client that trusts our CA (so it would accept the server) but has no cert.
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        for c in rustls::pki_types::CertificateDer::pem_file_iter(&s.a_files.ca).unwrap() {
            r.add(c.unwrap()).unwrap();
        }
        r
    };
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let err = Peer::connect(&s.addr, &Arc::new(cfg), &endpoint(true)).unwrap_err();
    assert!(!err.to_string().is_empty());
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(s.handler.calls.load(Ordering::SeqCst), 0);
}

#[test]
fn plain_tcp_garbage_gets_nothing() {
    use std::io::Read;
    let s = setup();
    let mut tcp = std::net::TcpStream::connect(&s.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = tcp.read_to_end(&mut got);
    // At most a TLS alert comes back: no frame, no data.
    assert!(got.len() < 64, "got {} bytes", got.len());
    assert!(!got.windows(8).any(|w| w == b"DAFFENET"));
    assert_eq!(s.handler.calls.load(Ordering::SeqCst), 0);
}

/// Plays a hostile sender: starts a round, answers the manifest request
/// honestly, then answers the fetch with `lie`.
fn hostile_round(s: &Setup, lie: impl FnOnce(&mut Peer, &[WireWant])) -> String {
    let mut peer = Peer::connect(
        &s.addr,
        &tls::client_config(&s.a_files).unwrap(),
        &endpoint(true),
    )
    .unwrap();
    let mut src = FakeSource::new(4);
    let conn = peer.conn_mut();
    conn.send(&Message::StartRound(request("hostile"))).unwrap();
    assert_eq!(conn.recv().unwrap(), Message::GetManifest);
    let mut m = Vec::new();
    let root = src.manifest(&mut m).unwrap().0;
    conn.send(&Message::ManifestData(m)).unwrap();
    conn.send(&Message::ManifestEnd { root }).unwrap();
    let wants = match conn.recv().unwrap() {
        Message::Fetch(w) => w,
        m => panic!("got {}", m.name()),
    };
    lie(&mut peer, &wants);
    // The receiver refuses with an error (or drops the link).
    let reply = peer.conn_mut().recv();
    assert!(
        !matches!(reply, Ok(Message::RoundDone(_))),
        "hostile round must not complete"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(!s.handler.stored.lock().unwrap().contains_key("hostile"));
    s.handler.errors.lock().unwrap().join("; ")
}

#[test]
fn a_chunk_longer_than_asked_is_refused() {
    let s = setup();
    let errs = hostile_round(&s, |p, w| {
        p.conn_mut()
            .send(&Message::Chunk {
                header: ChunkHeader {
                    index: 0,
                    codec: Codec::Raw,
                },
                data: vec![0; w[0].len as usize + 1],
            })
            .unwrap();
    });
    assert!(errs.contains("asked for"), "{errs}");
}

#[test]
fn a_zstd_bomb_is_refused() {
    let s = setup();
    let errs = hostile_round(&s, |p, w| {
        let bomb = zstd::bulk::compress(&vec![0u8; 4 << 20], 1).unwrap();
        assert!(w[0].len < 4 << 20);
        p.conn_mut()
            .send(&Message::Chunk {
                header: ChunkHeader {
                    index: 0,
                    codec: Codec::Zstd,
                },
                data: bomb,
            })
            .unwrap();
    });
    assert!(errs.contains("decompress"), "{errs}");
}

#[test]
fn a_chunk_with_the_wrong_bytes_fails_its_id() {
    let s = setup();
    let errs = hostile_round(&s, |p, w| {
        p.conn_mut()
            .send(&Message::Chunk {
                header: ChunkHeader {
                    index: 0,
                    codec: Codec::Raw,
                },
                data: vec![0xAA; w[0].len as usize],
            })
            .unwrap();
    });
    assert!(errs.contains("fails its id"), "{errs}");
}

#[test]
fn out_of_order_and_short_batches_are_refused() {
    let s = setup();
    let errs = hostile_round(&s, |p, w| {
        p.conn_mut()
            .send(&Message::Chunk {
                header: ChunkHeader {
                    index: 2,
                    codec: Codec::Raw,
                },
                data: vec![0; w[2].len as usize],
            })
            .unwrap();
    });
    assert!(errs.contains("where want 0 was due"), "{errs}");
    let errs = hostile_round(&s, |p, _| {
        p.conn_mut().send(&Message::FetchEnd).unwrap();
    });
    assert!(errs.contains("ended a batch after 0 of 4"), "{errs}");
}

#[test]
fn an_oversized_frame_and_an_unknown_kind_are_refused() {
    let s = setup();
    let errs = hostile_round(&s, |p, _| {
        let s = p.conn_mut().stream_mut();
        s.write_all(&(u32::MAX - 1).to_le_bytes()).unwrap();
        s.write_all(&[10]).unwrap();
        s.flush().unwrap();
    });
    assert!(errs.contains("over the limit"), "{errs}");
    let errs = hostile_round(&s, |p, _| {
        let s = p.conn_mut().stream_mut();
        s.write_all(&1u32.to_le_bytes()).unwrap();
        s.write_all(&[99]).unwrap();
        s.flush().unwrap();
    });
    assert!(errs.contains("unknown message kind 99"), "{errs}");
}

#[test]
fn a_junk_manifest_is_refused() {
    let s = setup();
    let mut peer = Peer::connect(
        &s.addr,
        &tls::client_config(&s.a_files).unwrap(),
        &endpoint(true),
    )
    .unwrap();
    let conn = peer.conn_mut();
    conn.send(&Message::StartRound(request("junk"))).unwrap();
    assert_eq!(conn.recv().unwrap(), Message::GetManifest);
    // 1 MiB of junk: not a list of wants, so the handler refuses it.
    conn.send(&Message::ManifestData(vec![0xff; 1 << 20]))
        .unwrap();
    conn.send(&Message::ManifestEnd { root: [0; 32] }).unwrap();
    let r = conn.recv();
    assert!(matches!(r, Err(ConnError::Remote { .. })), "{r:?}");
    assert!(!s.handler.stored.lock().unwrap().contains_key("junk"));
}

#[test]
fn wire_counters_see_both_directions() {
    let s = setup();
    let ep = endpoint(false);
    let counters: Arc<WireCounters> = ep.counters.clone();
    let mut peer = Peer::connect(&s.addr, &tls::client_config(&s.a_files).unwrap(), &ep).unwrap();
    peer.control(b"x").unwrap();
    assert!(counters.sent() > 0 && counters.received() > 0);
}

/// A TCP connection to `addr` from the loopback address `from`.
fn tcp_from(from: [u8; 4], addr: &str) -> std::net::TcpStream {
    let sock = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
        None,
    )
    .unwrap();
    let src = std::net::SocketAddr::from((from, 0));
    rustix::net::bind(&sock, &src).unwrap();
    let dst: std::net::SocketAddr = addr.parse().unwrap();
    rustix::net::connect(&sock, &dst).unwrap();
    std::net::TcpStream::from(sock)
}

/// How long until the agent closes `tcp` (reads see EOF or an error).
fn time_to_close(mut tcp: std::net::TcpStream, limit: Duration) -> Duration {
    use std::io::Read;
    let t0 = std::time::Instant::now();
    tcp.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => return t0.elapsed(),
            Ok(_) => {}
        }
    }
}

/// Hardening finding 1: connection slots were taken at accept, before TLS,
/// with only a 60 s per-read timeout: 64 idle TCP connections locked every
/// peer out, and a slowloris or a truncated ClientHello was held for minutes.
#[test]
fn finding_01_strangers_in_their_handshake_neither_lock_out_peers_nor_stay() {
    let s = setup();
    // 70 idle connections from another loopback address.
    let idle: Vec<_> = (0..70).map(|_| tcp_from([127, 0, 0, 2], &s.addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let cfg = tls::client_config(&s.a_files).unwrap();
    let t0 = std::time::Instant::now();
    let mut peer = Peer::connect(&s.addr, &cfg, &endpoint(true)).unwrap();
    assert_eq!(peer.control(b"hi").unwrap(), b"hello hosta");
    assert!(
        t0.elapsed() < HANDSHAKE,
        "the peer waited {:?}",
        t0.elapsed()
    );
    peer.bye();
    // Every idle one is cut at the handshake deadline, not the I/O timeout.
    let limit = HANDSHAKE + Duration::from_secs(2);
    for tcp in idle.into_iter().take(3) {
        assert!(time_to_close(tcp, limit) < limit);
    }
    // A slowloris: one byte of a real ClientHello every 300 ms.
    let hello = {
        let mut c = rustls::ClientConnection::new(cfg.clone(), tls::agent_server_name()).unwrap();
        let mut out = Vec::new();
        c.write_tls(&mut out).unwrap();
        out
    };
    let slow = tcp_from([127, 0, 0, 3], &s.addr);
    let mut writer = slow.try_clone().unwrap();
    let drip = std::thread::spawn(move || {
        for b in hello.iter().take(40) {
            if writer.write_all(std::slice::from_ref(b)).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    assert!(time_to_close(slow, limit) < limit, "slowloris still held");
    drip.join().unwrap();
    // A ClientHello cut in half, then silence.
    let mut half = tcp_from([127, 0, 0, 4], &s.addr);
    let hello = {
        let mut c = rustls::ClientConnection::new(cfg, tls::agent_server_name()).unwrap();
        let mut out = Vec::new();
        c.write_tls(&mut out).unwrap();
        out
    };
    half.write_all(&hello[..hello.len() / 2]).unwrap();
    assert!(
        time_to_close(half, limit) < limit,
        "truncated hello still held"
    );
    assert_eq!(s.handler.calls.load(Ordering::SeqCst), 1);
}

/// Hardening finding 13: one authenticated peer could hold all 64 session
/// slots (and a thread each). Now it gets `MAX_SESSIONS_PER_PEER`; the next
/// is told "too many connections" at once, and a closed one frees its place.
#[test]
fn finding_13_one_peer_cannot_hold_every_session() {
    let s = setup();
    let cfg = tls::client_config(&s.a_files).unwrap();
    let connect = || {
        let mut p = Peer::connect(&s.addr, &cfg, &endpoint(true)).unwrap();
        let r = p.control(b"hi");
        (p, r)
    };
    let mut held = Vec::new();
    for _ in 0..MAX_SESSIONS_PER_PEER {
        let (p, r) = connect();
        assert_eq!(r.unwrap(), b"hello hosta");
        held.push(p);
    }
    let (_extra, r) = connect();
    let err = r.expect_err("a session over the per-peer limit was served");
    assert!(err.to_string().contains("too many connections"), "{err}");
    held.pop().unwrap().bye();
    // The agent releases the place when its thread sees the Bye.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (p, r) = connect();
        if r.is_ok() {
            p.bye();
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the place was never released"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        s.handler.calls.load(Ordering::SeqCst),
        MAX_SESSIONS_PER_PEER + 1
    );
}

/// Issue 12, finding 5: the agent took the peer's name from its `Hello`, so
/// any node of the cluster could speak as another (commit its receive, take
/// a handover meant for it). Now the name is the one the peer's certificate
/// carries; a `Hello` naming anyone else is refused before any handler runs.
#[test]
fn finding_05_a_hello_naming_another_node_than_the_certificate_is_refused() {
    let s = setup();
    let cfg = tls::client_config(&s.a_files).unwrap();
    // A valid certificate for hosta, a Hello saying "hostb" (the agent's
    // own name) or a third node's.
    for lie in ["hostb", "owner-node"] {
        let mut ep = endpoint(true);
        ep.hello.node = lie.into();
        let refused = match Peer::connect(&s.addr, &cfg, &ep) {
            Err(e) => e.to_string(),
            Ok(mut p) => p
                .control(b"hi")
                .expect_err("a peer lying in its Hello was served")
                .to_string(),
        };
        assert!(
            refused.contains("certificate names hosta"),
            "{lie}: {refused}"
        );
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(s.handler.calls.load(Ordering::SeqCst), 0, "no handler ran");
    // The truth gets through, and the handler sees the certificate's name.
    let mut p = Peer::connect(&s.addr, &cfg, &endpoint(true)).unwrap();
    assert_eq!(p.control(b"hi").unwrap(), b"hello hosta");
}

/// Finding 5, the dialing side: a dialer that expects node X gets X or an
/// error, even from an agent of the same cluster; and an agent whose own
/// `Hello` lies about its name is refused by the dialer.
#[test]
fn finding_05_a_dialer_pins_the_node_it_dialled() {
    let s = setup();
    let cfg = tls::client_config(&s.a_files).unwrap();
    let err = Peer::connect(&s.addr, &cfg, &endpoint(true).expecting("hostc")).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("node hostb") && text.contains("not hostc"),
        "{text}"
    );
    assert!(!err.retryable(), "a wrong node stays wrong: {text}");
    let mut p = Peer::connect(&s.addr, &cfg, &endpoint(true).expecting("hostb")).unwrap();
    assert_eq!(p.node(), "hostb");
    assert_eq!(p.control(b"hi").unwrap(), b"hello hosta");
    p.bye();

    // An agent holding hostb's certificate that says it is "hostc".
    let dir = tempfile::tempdir().unwrap();
    identity::init(&dir.path().join("ca"), "hostx").unwrap();
    let liar_files =
        identity::issue(&dir.path().join("ca"), "hostb", &dir.path().join("b")).unwrap();
    let me = identity::issue(&dir.path().join("ca"), "hosta", &dir.path().join("a")).unwrap();
    let mut ep = Endpoint::new("hostc");
    ep.io_timeout = Duration::from_secs(5);
    let handler = Arc::new(MemHandler::default());
    let (addr, shutdown) = serve_agent(&liar_files, ep, handler.clone());
    let err = Peer::connect(&addr, &tls::client_config(&me).unwrap(), &endpoint(true))
        .expect_err("an agent lying in its Hello was trusted");
    assert!(err.to_string().contains("certificate names hostb"), "{err}");
    shutdown.store(true, Ordering::SeqCst);
    assert_eq!(handler.calls.load(Ordering::SeqCst), 0);
}
