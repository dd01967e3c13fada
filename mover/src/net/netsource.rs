//! The receiving side's view of a remote source: [`NetSource`] turns the
//! receiver's "give me the manifest" and "give me these chunks" into protocol
//! messages and checks every answer (order, index, length, limits) before the
//! receiver sees a byte. The receiver then verifies each chunk's id itself.

use std::fs::File;
use std::io::{BufReader, Write};

use super::conn::{Conn, ConnError};
use super::message::{Codec, MAX_CHUNK_LEN, MAX_WANTS_PER_BATCH, Message, PatchWant, WireWant};
use super::patch;
use super::serve::{BoxError, ChunkSink};
use super::stream::BoxStream;
use crate::chunk::ChunkId;
use crate::manifest_delta::DeltaApplier;
use crate::source::{Arrived, ChunkSource, ManifestBase, SourceError, Want};

/// Chunk bytes asked for per `Fetch`: one request-response per 16 MiB keeps
/// the link busy (a 100 Mbit/s link needs 1.3 s for it, against a sub-ms
/// turnaround here and ~4% of idle time at a 50 ms WAN round trip).
const BATCH_BYTES: u64 = 16 * 1024 * 1024;
/// Largest manifest we accept from a peer by default: ~20M entries. A peer
/// cannot fill our disk with an endless manifest.
pub const DEFAULT_MAX_MANIFEST: u64 = 4 * 1024 * 1024 * 1024;

/// Errors of a remote source.
#[derive(Debug, thiserror::Error)]
pub enum NetSourceError {
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error("peer's manifest is over {max} bytes")]
    ManifestTooLarge { max: u64 },
    #[error("writing the received manifest: {0}")]
    ManifestWrite(std::io::Error),
    #[error("peer answered want {got} where want {expected} was due")]
    OutOfOrder { expected: usize, got: usize },
    #[error("peer ended a batch after {answered} of {asked} wants")]
    ShortBatch { answered: usize, asked: usize },
    #[error("want {index} asks for {len} bytes, over the protocol limit")]
    WantTooLong { index: usize, len: u32 },
    #[error("peer sent a patch for want {index}, which has no base")]
    UnaskedPatch { index: usize },
    #[error("receiver stopped the fetch: {0}")]
    Sink(BoxError),
}

impl NetSourceError {
    pub fn retryable(&self) -> bool {
        matches!(self, NetSourceError::Conn(c) if c.retryable())
    }
}

impl From<NetSourceError> for SourceError {
    fn from(e: NetSourceError) -> SourceError {
        match e {
            NetSourceError::Sink(s) => SourceError::Sink(s),
            NetSourceError::ManifestWrite(io) => SourceError::Manifest(io),
            other => SourceError::Transport(other.to_string()),
        }
    }
}

/// The receiver drives a round through this: every answer has been checked
/// by the methods below; the receiver then checks each chunk's id.
impl ChunkSource for NetSource<'_> {
    fn manifest(&mut self, out: &mut dyn Write) -> Result<ChunkId, SourceError> {
        Ok(ChunkId(self.receive_manifest(out)?))
    }

    fn manifest_since(
        &mut self,
        base: &ManifestBase,
        out: &mut dyn Write,
    ) -> Result<Option<ChunkId>, SourceError> {
        if !self.conn.manifest_delta() {
            return Ok(None);
        }
        self.conn
            .send(&Message::GetManifestSince { base: base.root.0 })
            .map_err(NetSourceError::from)?;
        Ok(Some(ChunkId(self.read_manifest(out, Some(base))?)))
    }

    fn fetch(&mut self, wants: &[Want], sink: &mut ChunkSink<'_>) -> Result<(), SourceError> {
        let wire: Vec<WireWant> = wants.iter().map(WireWant::from).collect();
        Ok(self.fetch_wire(&wire, sink)?)
    }

    fn fetch_with_bases(
        &mut self,
        wants: &[Want],
        bases: &[Option<Vec<u8>>],
        sink: &mut ChunkSink<'_>,
    ) -> Result<(), SourceError> {
        let wire: Vec<WireWant> = wants.iter().map(WireWant::from).collect();
        if !self.conn.chunk_patch() || bases.iter().all(Option::is_none) {
            return Ok(self.fetch_wire(&wire, sink)?);
        }
        Ok(self.fetch_patched(&wire, bases, sink)?)
    }
}

/// A patched fetch's state: the receiver's previous bytes per want, and the
/// wants whose patch did not rebuild (to fetch again whole).
type Patching<'a> = (&'a [Option<Vec<u8>>], &'a mut Vec<usize>);

/// Where received manifest frames go.
enum ManifestSink<'o> {
    Whole(&'o mut dyn Write),
    Delta(DeltaApplier<BufReader<File>, &'o mut dyn Write>),
    /// A delta that failed to apply: the rest is drained unread.
    Broken,
}

/// The remote source of one round, on the acceptor (receiving) side.
pub struct NetSource<'c> {
    conn: &'c mut Conn<BoxStream>,
    max_manifest: u64,
    /// A pre-copy round ([`NetSource::with_precopy`]).
    precopy: bool,
    buf: Vec<u8>,
    /// Chunk payload received (after decompression).
    pub bytes_fetched: u64,
}

impl std::fmt::Debug for NetSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetSource")
            .field("peer", &self.conn.peer().node)
            .finish()
    }
}

impl<'c> NetSource<'c> {
    /// The source at the other end of `conn`, which has just received a `StartRound`.
    pub fn new(conn: &'c mut Conn<BoxStream>) -> Self {
        NetSource {
            conn,
            max_manifest: DEFAULT_MAX_MANIFEST,
            precopy: false,
            buf: Vec::new(),
            bytes_fetched: 0,
        }
    }

    /// Caps the manifest the peer may send, in bytes (default: 1 GiB).
    pub fn with_max_manifest(mut self, max: u64) -> Self {
        self.max_manifest = max;
        self
    }

    /// A pre-copy round: a patch that applies but rebuilds other bytes than
    /// its want's id is the source's newer version of the range (it changed
    /// since its scan), handed to the sink as it is, which keeps or drops
    /// it as a changed chunk. Fetching it again whole, as an exact round
    /// does (there a mismatch can only be a stale base or a block-sum
    /// collision), would carry the range twice for the same changed bytes.
    #[must_use]
    pub fn with_precopy(mut self, precopy: bool) -> Self {
        self.precopy = precopy;
        self
    }

    /// The peer's node name (from its `Hello`).
    pub fn peer_node(&self) -> &str {
        &self.conn.peer().node
    }

    /// Receives the manifest into `out`; returns the root the peer claims
    /// (the manifest reader checks it against the bytes).
    pub fn receive_manifest(&mut self, out: &mut dyn Write) -> Result<[u8; 32], NetSourceError> {
        self.conn.send(&Message::GetManifest)?;
        self.read_manifest(out, None)
    }

    /// Reads `ManifestData` (whole) or `ManifestDelta` (against `base`)
    /// frames up to `ManifestEnd`. A delta that does not apply is drained
    /// and left incomplete in `out`: the receiver's validation then fails
    /// and it asks for the manifest whole.
    fn read_manifest(
        &mut self,
        out: &mut dyn Write,
        base: Option<&ManifestBase>,
    ) -> Result<[u8; 32], NetSourceError> {
        let mut sink = ManifestSink::Whole(out);
        let mut total = 0u64;
        loop {
            let (delta, d) = match self.conn.recv()? {
                Message::ManifestData(d) => (false, d),
                Message::ManifestDelta(d) => (true, d),
                Message::ManifestEnd { root } => {
                    if let ManifestSink::Delta(a) = sink
                        && let Err(e) = a.finish()
                    {
                        tracing::warn!("peer's manifest delta does not apply: {e}");
                    }
                    return Ok(root);
                }
                other => {
                    return Err(ConnError::Unexpected {
                        expected: "ManifestData, ManifestDelta or ManifestEnd",
                        got: other.name(),
                    }
                    .into());
                }
            };
            let first = total == 0;
            total += d.len() as u64;
            if total > self.max_manifest {
                return Err(NetSourceError::ManifestTooLarge {
                    max: self.max_manifest,
                });
            }
            if delta
                && first
                && let Some(b) = base
            {
                sink = match sink {
                    ManifestSink::Whole(w) => match File::open(&b.path) {
                        Ok(f) => ManifestSink::Delta(DeltaApplier::new(
                            BufReader::with_capacity(256 * 1024, f),
                            b.root,
                            w,
                            self.max_manifest,
                        )),
                        Err(e) => {
                            tracing::warn!("opening our manifest delta base: {e}");
                            ManifestSink::Broken
                        }
                    },
                    other => other,
                };
            }
            match (&mut sink, delta) {
                (ManifestSink::Whole(w), false) => {
                    w.write_all(&d).map_err(NetSourceError::ManifestWrite)?;
                }
                (ManifestSink::Delta(a), true) => {
                    if let Err(e) = a.write_all(&d) {
                        tracing::warn!("peer's manifest delta does not apply: {e}");
                        sink = ManifestSink::Broken;
                    }
                }
                (ManifestSink::Broken, _) => {}
                (_, delta) => {
                    return Err(ConnError::Unexpected {
                        expected: "one kind of manifest frame",
                        got: if delta {
                            "ManifestDelta"
                        } else {
                            "ManifestData"
                        },
                    }
                    .into());
                }
            }
        }
    }

    /// Fetches `wants` in batches and calls `sink(i, bytes)` for each, in
    /// order. A sink error leaves the connection mid-batch: drop it.
    pub fn fetch_wire(
        &mut self,
        wants: &[WireWant],
        sink: &mut ChunkSink<'_>,
    ) -> Result<(), NetSourceError> {
        self.fetch_batches(wants, None, sink)
    }

    /// [`NetSource::fetch_wire`] with the receiver's previous bytes for some
    /// wants: those may come as patches, rebuilt and checked against their
    /// ids here. One that does not rebuild (a stale base, a hash collision)
    /// is fetched again whole after the others, so `sink` sees it late.
    pub fn fetch_patched(
        &mut self,
        wants: &[WireWant],
        bases: &[Option<Vec<u8>>],
        sink: &mut ChunkSink<'_>,
    ) -> Result<(), NetSourceError> {
        let mut redo = Vec::new();
        self.fetch_batches(wants, Some((bases, &mut redo)), sink)?;
        if redo.is_empty() {
            return Ok(());
        }
        tracing::debug!(
            "{} patched chunks did not rebuild; fetching them whole",
            redo.len()
        );
        let again: Vec<WireWant> = redo.iter().map(|&i| wants[i]).collect();
        self.fetch_batches(&again, None, &mut |k, data| sink(redo[k], data))
    }

    fn fetch_batches(
        &mut self,
        wants: &[WireWant],
        mut bases: Option<Patching<'_>>,
        sink: &mut ChunkSink<'_>,
    ) -> Result<(), NetSourceError> {
        if let Some((index, w)) = wants
            .iter()
            .enumerate()
            .find(|(_, w)| w.len > MAX_CHUNK_LEN)
        {
            return Err(NetSourceError::WantTooLong { index, len: w.len });
        }
        let mut start = 0;
        while start < wants.len() {
            let mut end = start;
            let mut bytes = 0u64;
            while end < wants.len() && end - start < MAX_WANTS_PER_BATCH && bytes < BATCH_BYTES {
                bytes += u64::from(wants[end].len);
                end += 1;
            }
            let patched = bases
                .as_mut()
                .map(|(b, redo)| (&b[start..end], &mut **redo));
            self.batch(start, &wants[start..end], patched, sink)?;
            start = end;
        }
        Ok(())
    }

    fn batch(
        &mut self,
        base: usize,
        batch: &[WireWant],
        mut patched: Option<Patching<'_>>,
        sink: &mut ChunkSink<'_>,
    ) -> Result<(), NetSourceError> {
        match &patched {
            Some((olds, _)) => {
                let pw = batch
                    .iter()
                    .zip(olds.iter())
                    .map(|(w, old)| PatchWant {
                        want: *w,
                        sums: old
                            .as_deref()
                            .map(|o| patch::block_sums(o, w.offset))
                            .unwrap_or_default(),
                    })
                    .collect();
                self.conn.send(&Message::FetchPatched(pw))?;
            }
            None => self.conn.send(&Message::Fetch(batch.to_vec()))?,
        }
        let mut next = 0usize;
        let mut pbuf = Vec::new();
        loop {
            match self.conn.recv()? {
                Message::Chunk { header, data } => {
                    let got = header.index as usize;
                    if got != next || next >= batch.len() {
                        return Err(NetSourceError::OutOfOrder {
                            expected: next,
                            got,
                        });
                    }
                    let want = batch[next];
                    let is_patch = matches!(header.codec, Codec::Patch | Codec::PatchZstd);
                    let old = match (&patched, is_patch) {
                        (Some((olds, _)), true) => match &olds[next] {
                            Some(o) => Some(o),
                            None => return Err(NetSourceError::UnaskedPatch { index: next }),
                        },
                        (None, true) => return Err(NetSourceError::UnaskedPatch { index: next }),
                        _ => None,
                    };
                    let mut buf = std::mem::take(&mut self.buf);
                    let r = match old {
                        Some(old) => {
                            let limit =
                                u32::try_from(patch::max_len(want.offset, want.len as usize))
                                    .unwrap_or(u32::MAX);
                            self.conn
                                .decode_chunk(header.codec, &data, limit, &mut pbuf)
                                .map(|()| {
                                    patch::apply(
                                        old,
                                        &pbuf,
                                        want.offset,
                                        want.len as usize,
                                        &mut buf,
                                    )
                                    .is_ok()
                                        && (self.precopy || ChunkId::of(&buf).0 == want.id)
                                })
                        }
                        None => self
                            .conn
                            .decode_chunk(header.codec, &data, want.len, &mut buf)
                            .map(|()| true),
                    };
                    let rebuilt = match r {
                        Ok(ok) => ok,
                        Err(e) => {
                            self.buf = buf;
                            return Err(e.into());
                        }
                    };
                    let r = if rebuilt {
                        self.bytes_fetched += buf.len() as u64;
                        sink(base + next, Arrived::new(&buf)).map_err(NetSourceError::Sink)
                    } else {
                        if let Some((_, redo)) = patched.as_mut() {
                            redo.push(base + next);
                        }
                        Ok(())
                    };
                    self.buf = buf;
                    r?;
                    next += 1;
                }
                Message::FetchEnd => {
                    if next != batch.len() {
                        return Err(NetSourceError::ShortBatch {
                            answered: next,
                            asked: batch.len(),
                        });
                    }
                    return Ok(());
                }
                other => {
                    return Err(ConnError::Unexpected {
                        expected: "Chunk or FetchEnd",
                        got: other.name(),
                    }
                    .into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::conn::HelloOptions;
    use std::os::unix::net::UnixStream;

    fn pair() -> (Conn<BoxStream>, Conn<BoxStream>) {
        let (a, b) = UnixStream::pair().unwrap();
        let opts = |n: &str| HelloOptions {
            node: n.into(),
            zstd: true,
        };
        let t = std::thread::spawn(move || {
            Conn::handshake(Box::new(b) as BoxStream, &opts("sender")).unwrap()
        });
        let r = Conn::handshake(Box::new(a) as BoxStream, &opts("receiver")).unwrap();
        (r, t.join().unwrap())
    }

    #[test]
    fn an_endless_manifest_is_cut_off_at_the_cap() {
        let (mut rx, mut tx) = pair();
        let t = std::thread::spawn(move || {
            assert_eq!(tx.recv().unwrap(), Message::GetManifest);
            // Keep streaming until the receiver hangs up.
            while tx.send(&Message::ManifestData(vec![1; 64 * 1024])).is_ok() {}
        });
        let mut src = NetSource::new(&mut rx).with_max_manifest(1 << 20);
        let mut sink = Vec::new();
        let err = src.receive_manifest(&mut sink).unwrap_err();
        assert!(
            matches!(err, NetSourceError::ManifestTooLarge { .. }),
            "{err}"
        );
        assert!(sink.len() <= 1 << 20);
        drop(rx);
        t.join().unwrap();
    }

    fn want(data: &[u8]) -> WireWant {
        WireWant {
            entry: 0,
            offset: 0,
            len: u32::try_from(data.len()).unwrap(),
            id: ChunkId::of(data).0,
        }
    }

    #[test]
    fn a_patch_that_does_not_rebuild_is_fetched_again_whole() {
        let (mut rx, mut tx) = pair();
        let old = vec![7u8; 3 * patch::BLOCK];
        let mut new0 = old.clone();
        new0[5000] = 1;
        let new1 = vec![9u8; 1000];
        let wants = [want(&new0), want(&new1)];
        let t = std::thread::spawn(move || {
            let Message::FetchPatched(pw) = tx.recv().unwrap() else {
                panic!("expected FetchPatched")
            };
            assert_eq!(pw[0].sums.len(), 3);
            assert!(pw[1].sums.is_empty());
            // A patch that applies but yields other bytes (a stale base).
            let mut bogus = new0.clone();
            bogus[5001] = 2;
            let mut p = Vec::new();
            assert!(patch::encode(&bogus, 0, &pw[0].sums, &mut p));
            tx.send_patch(0, &p).unwrap();
            tx.send_chunk(1, &new1).unwrap();
            tx.send(&Message::FetchEnd).unwrap();
            let Message::Fetch(again) = tx.recv().unwrap() else {
                panic!("expected Fetch")
            };
            assert_eq!(again.len(), 1);
            assert_eq!(again[0].id, ChunkId::of(&new0).0);
            tx.send_chunk(0, &new0).unwrap();
            tx.send(&Message::FetchEnd).unwrap();
            tx
        });
        let mut src = NetSource::new(&mut rx);
        let mut got = Vec::new();
        src.fetch_patched(&wants, &[Some(old), None], &mut |i, d| {
            got.push((i, d.to_vec()));
            Ok(())
        })
        .unwrap();
        let new0 = ChunkId::of(&got[1].1);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].0, got[1].0), (1, 0));
        assert_eq!(new0.0, wants[0].id);
        drop(t.join().unwrap());
    }

    #[test]
    fn in_a_precopy_round_a_patch_that_rebuilds_other_bytes_is_not_fetched_again() {
        // The source changed the range since its scan: the patch carries its
        // newer version, which goes to the sink (to keep or drop as changed)
        // instead of crossing the link a second time whole.
        let (mut rx, mut tx) = pair();
        let old = vec![7u8; 3 * patch::BLOCK];
        let mut scanned = old.clone();
        scanned[5000] = 1;
        let mut newer = scanned.clone();
        newer[9000] = 2;
        let wants = [want(&scanned)];
        let sent = newer.clone();
        let t = std::thread::spawn(move || {
            let Message::FetchPatched(pw) = tx.recv().unwrap() else {
                panic!("expected FetchPatched")
            };
            let mut p = Vec::new();
            assert!(patch::encode(&sent, 0, &pw[0].sums, &mut p));
            tx.send_patch(0, &p).unwrap();
            tx.send(&Message::FetchEnd).unwrap();
            // A second fetch would be the next message; the receiver
            // hanging up is what must come. Hang up either way.
            tx.recv().map(|m| m.name())
        });
        let mut src = NetSource::new(&mut rx).with_precopy(true);
        let mut got = Vec::new();
        src.fetch_patched(&wants, &[Some(old)], &mut |i, d| {
            got.push((i, d.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(got, vec![(0, newer)], "the rebuilt newer bytes, once");
        // Nothing more was asked: the sender's end sees the receiver hang up.
        drop(rx);
        let next = t.join().unwrap();
        assert!(next.is_err(), "no second fetch: {next:?}");
    }

    #[test]
    fn a_patch_for_a_want_without_base_is_refused() {
        let (mut rx, mut tx) = pair();
        let data = vec![3u8; 100];
        let wants = [want(&data), want(&data)];
        let t = std::thread::spawn(move || {
            let _ = tx.recv().unwrap();
            tx.send_chunk(0, &data).unwrap();
            tx.send_patch(1, &[1, 2, 3]).unwrap();
            tx
        });
        let mut src = NetSource::new(&mut rx);
        let err = src
            .fetch_patched(&wants, &[Some(vec![3u8; 100]), None], &mut |_, _| Ok(()))
            .unwrap_err();
        assert!(
            matches!(err, NetSourceError::UnaskedPatch { index: 1 }),
            "{err}"
        );
        drop(t.join().unwrap());
    }

    #[test]
    fn over_long_wants_are_refused_before_asking() {
        let (mut rx, _tx) = pair();
        let mut src = NetSource::new(&mut rx);
        let w = WireWant {
            entry: 0,
            offset: 0,
            len: MAX_CHUNK_LEN + 1,
            id: [0; 32],
        };
        let err = src.fetch_wire(&[w], &mut |_, _| Ok(())).unwrap_err();
        assert!(matches!(err, NetSourceError::WantTooLong { .. }));
    }
}
