//! [`Coordinator`] over a real etcd (v3 API, tested against Debian's 3.4),
//! with the `etcd-client` crate. Each decision is one transaction, as the
//! trait promises; every call is bounded by the configured timeout, so a
//! cluster without quorum answers `Unavailable` instead of hanging Docker.
//!
//! The client is async (tonic); the daemon's handlers are blocking code on
//! a bounded pool, so this holds its own small runtime and blocks on it,
//! as the AWS code does.

use crate::config::EtcdConfig;
use crate::coordinator::{
    Claim, Coordinator, CoordinatorError, LeaseId, Owner, Removed, VolumeEntry, Writer,
};
use crate::epoch::Epoch;
use crate::keys::Keys;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue,
    PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The etcd client of one node.
///
/// One client per endpoint, tried in turn, rather than one client balancing
/// over all: a member that is dead or cut off (its HTTP/2 connection looks
/// alive until a keep-alive ping fails) would otherwise take its share of
/// requests with it until they time out, and "one member down changes
/// nothing" would not hold. Each call tries the endpoint that answered last
/// first, and moves on after its share of the time limit. Every write daffe
/// makes is a compare-and-swap, so one that timed out but landed is seen by
/// its retry (a create finds the record, a claim finds itself owner).
pub struct EtcdCoordinator {
    keys: Keys,
    endpoints: Vec<String>,
    clients: Mutex<Vec<Option<Client>>>,
    /// The endpoint that answered last.
    current: AtomicUsize,
    opts: ConnectOptions,
    timeout: Duration,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for EtcdCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCoordinator")
            .field("keys", &self.keys)
            .field("endpoints", &self.endpoints)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The least time one endpoint gets before the next is tried.
const MIN_SHARE: Duration = Duration::from_secs(1);
/// Between two rounds over the endpoints.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

impl EtcdCoordinator {
    /// Connects to `etcd` for cluster `cluster`; every later call is bounded
    /// by `timeout`. Fails if no endpoint answers within it.
    pub fn connect(
        cluster: &str,
        etcd: &EtcdConfig,
        timeout: Duration,
    ) -> Result<Self, CoordinatorError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("daffe-etcd")
            .enable_all()
            .build()
            .map_err(|e| CoordinatorError::Failed(format!("etcd runtime: {e}")))?;
        // Pings find a dead connection within about two seconds.
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(MIN_SHARE)
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
            .with_keep_alive_while_idle(true);
        if let Some(tls) = tls_options(etcd)? {
            opts = opts.with_tls(tls);
        }
        let me = Self {
            keys: Keys::new(cluster),
            clients: Mutex::new(vec![None; etcd.endpoints.len()]),
            endpoints: etcd.endpoints.clone(),
            current: AtomicUsize::new(0),
            opts,
            timeout,
            rt,
        };
        // Prove one member answers.
        me.call(
            "status",
            |mut c| async move { c.status().await.map(|_| ()) },
        )?;
        Ok(me)
    }

    /// The client of endpoint `idx`, connected within `limit` if it is not yet.
    fn client(&self, idx: usize, limit: Duration) -> Result<Client, CoordinatorError> {
        if let Some(c) = self.lock_clients()[idx].clone() {
            return Ok(c);
        }
        let endpoint = self.endpoints[idx].clone();
        let opts = self.opts.clone().with_connect_timeout(limit);
        let client = self.rt.block_on(async {
            tokio::time::timeout(limit, Client::connect([endpoint], Some(opts)))
                .await
                .map_err(|_| unavailable("connect", "timed out"))?
                .map_err(|e| from_etcd("connect", e))
        })?;
        self.lock_clients()[idx] = Some(client.clone());
        Ok(client)
    }

    fn lock_clients(&self) -> std::sync::MutexGuard<'_, Vec<Option<Client>>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one request, on the endpoint that answered last, then on the
    /// others in turn, all within the time limit. Only "unavailable" answers
    /// move on; any other answer is etcd's and final.
    fn call<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, CoordinatorError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.endpoints.len();
        let deadline = Instant::now() + self.timeout;
        let mut last = unavailable(what, "no endpoint");
        // Rounds over the endpoints until the limit: an election after the
        // leader died answers "no leader" from every member for a moment.
        loop {
            let first = self.current.load(Ordering::Relaxed);
            for i in 0..n {
                let idx = (first + i) % n;
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(last);
                }
                let tries_left = u32::try_from(n - i).unwrap_or(u32::MAX);
                let share = (left / tries_left).max(MIN_SHARE).min(left);
                let client = match self.client(idx, share) {
                    Ok(c) => c,
                    Err(e) => {
                        last = e;
                        continue;
                    }
                };
                let share = share.min(deadline.saturating_duration_since(Instant::now()));
                match self
                    .rt
                    .block_on(async { tokio::time::timeout(share, f(client)).await })
                {
                    Ok(Ok(v)) => {
                        self.current.store(idx, Ordering::Relaxed);
                        return Ok(v);
                    }
                    Ok(Err(e)) => match from_etcd(what, e) {
                        e @ CoordinatorError::Unavailable(_) => last = e,
                        other => return Err(other),
                    },
                    Err(_) => {
                        last = unavailable(what, &format!("{} timed out", self.endpoints[idx]))
                    }
                }
            }
            std::thread::sleep(RETRY_PAUSE.min(deadline.saturating_duration_since(Instant::now())));
        }
    }

    fn txn(&self, what: &'static str, txn: Txn) -> Result<TxnResponse, CoordinatorError> {
        self.call(what, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
    }

    fn get_one(
        &self,
        what: &'static str,
        key: String,
    ) -> Result<Option<KeyValue>, CoordinatorError> {
        let mut resp = self.call(what, |mut c| {
            let key = key.clone();
            async move { c.get(key, None).await }
        })?;
        Ok(resp.take_kvs().into_iter().next())
    }

    /// Every key-value under `prefix`.
    fn get_prefix(
        &self,
        what: &'static str,
        prefix: String,
    ) -> Result<Vec<KeyValue>, CoordinatorError> {
        let mut resp = self.call(what, |mut c| {
            let prefix = prefix.clone();
            async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
        })?;
        Ok(resp.take_kvs())
    }

    fn entry(name: &str, kv: &KeyValue) -> VolumeEntry {
        VolumeEntry {
            name: name.to_owned(),
            record: kv.value().to_vec(),
            created: u64::try_from(kv.create_revision()).unwrap_or(0),
        }
    }
}

fn owner_of(kv: &KeyValue) -> Owner {
    Owner {
        node: String::from_utf8_lossy(kv.value()).into_owned(),
        epoch: Epoch(u64::try_from(kv.mod_revision()).unwrap_or(0)),
        lease: LeaseId(kv.lease()),
    }
}

/// The key-values of the `get` in a transaction's branch.
fn got(resp: &TxnResponse) -> Option<KeyValue> {
    resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next(),
        _ => None,
    })
}

fn revision(resp: &TxnResponse) -> u64 {
    resp.header()
        .map_or(0, |h| u64::try_from(h.revision()).unwrap_or(0))
}

fn tls_options(etcd: &EtcdConfig) -> Result<Option<TlsOptions>, CoordinatorError> {
    let Some(ca) = &etcd.ca else {
        return Ok(None);
    };
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| CoordinatorError::Failed(format!("{}: {e}", p.display())))
    };
    let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let (Some(cert), Some(key)) = (&etcd.cert, &etcd.key) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(tls))
}

fn unavailable(what: &str, why: &str) -> CoordinatorError {
    CoordinatorError::Unavailable(format!("{what}: {why}"))
}

/// etcd's answers, by what the caller can do about them: wait and retry
/// (no quorum, a timeout, no connection), or not.
fn from_etcd(what: &str, e: etcd_client::Error) -> CoordinatorError {
    use tonic::Code;
    // etcd says "requested lease not found" as a gRPC status (put, revoke)
    // or through the keep-alive stream's own error.
    if e.to_string().contains("lease not found") {
        return CoordinatorError::LeaseGone(LeaseId(0));
    }
    match &e {
        etcd_client::Error::GRpcStatus(s)
            if matches!(
                s.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted
            ) =>
        {
            unavailable(what, s.message())
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
            unavailable(what, &e.to_string())
        }
        // A connection that broke under a request (the member died): tonic
        // reports it as an Unknown status whose message is "transport error".
        etcd_client::Error::GRpcStatus(s)
            if s.code() == Code::Unknown && s.message().contains("transport error") =>
        {
            unavailable(what, s.message())
        }
        _ => CoordinatorError::Failed(format!("{what}: {e}")),
    }
}

/// `LeaseGone` from [`from_etcd`] does not know the lease; put it in.
fn with_lease(r: CoordinatorError, lease: LeaseId) -> CoordinatorError {
    match r {
        CoordinatorError::LeaseGone(_) => CoordinatorError::LeaseGone(lease),
        other => other,
    }
}

impl Coordinator for EtcdCoordinator {
    fn grant(&self, ttl: Duration) -> Result<LeaseId, CoordinatorError> {
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let resp = self.call(
            "grant",
            |mut c| async move { c.lease_grant(secs, None).await },
        )?;
        Ok(LeaseId(resp.id()))
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<(), CoordinatorError> {
        let ttl = self
            .call("keep-alive", |mut c| async move {
                let (mut keeper, mut stream) = c.lease_keep_alive(lease.0).await?;
                keeper.keep_alive().await?;
                Ok(stream.message().await?.map_or(0, |m| m.ttl()))
            })
            .map_err(|e| with_lease(e, lease))?;
        // etcd answers a keep-alive of an unknown lease with TTL 0.
        if ttl <= 0 {
            return Err(CoordinatorError::LeaseGone(lease));
        }
        Ok(())
    }

    fn revoke(&self, lease: LeaseId) -> Result<(), CoordinatorError> {
        self.call("revoke", |mut c| async move {
            c.lease_revoke(lease.0).await.map(|_| ())
        })
        .map_err(|e| with_lease(e, lease))
    }

    fn create_volume(
        &self,
        name: &str,
        record: &[u8],
    ) -> Result<(VolumeEntry, bool), CoordinatorError> {
        let key = self.keys.volume(name)?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), record.to_vec(), None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.txn("create volume", txn)?;
        if resp.succeeded() {
            let rev = revision(&resp);
            return Ok((
                VolumeEntry {
                    name: name.to_owned(),
                    record: record.to_vec(),
                    created: rev,
                },
                true,
            ));
        }
        match got(&resp) {
            Some(kv) => Ok((Self::entry(name, &kv), false)),
            // Created and removed between compare and get cannot happen in
            // one transaction; a missing record here is etcd misbehaving.
            None => Err(CoordinatorError::Failed(format!(
                "create volume {name}: etcd said it exists, then returned nothing"
            ))),
        }
    }

    fn volume(&self, name: &str) -> Result<Option<VolumeEntry>, CoordinatorError> {
        let key = self.keys.volume(name)?;
        Ok(self
            .get_one("get volume", key)?
            .map(|kv| Self::entry(name, &kv)))
    }

    fn volumes(&self) -> Result<Vec<VolumeEntry>, CoordinatorError> {
        Ok(self
            .get_prefix("list volumes", self.keys.volumes_prefix())?
            .iter()
            .filter_map(|kv| {
                let key = kv.key_str().ok()?;
                Some(Self::entry(self.keys.volume_of(key)?, kv))
            })
            .collect())
    }

    fn remove_volume(&self, name: &str) -> Result<Removed, CoordinatorError> {
        let (key, owner_key) = (self.keys.volume(name)?, self.keys.owner(name)?);
        let writer_key = self.keys.writer(name)?;
        let txn = Txn::new()
            .when([Compare::create_revision(
                owner_key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::delete(key, None), TxnOp::delete(writer_key, None)])
            .or_else([TxnOp::get(owner_key, None)]);
        let resp = self.txn("remove volume", txn)?;
        if !resp.succeeded() {
            return Ok(match got(&resp) {
                Some(kv) => Removed::Owned(owner_of(&kv)),
                None => Removed::Absent,
            });
        }
        // The first delete is the catalogue record's.
        let deleted = resp
            .op_responses()
            .into_iter()
            .next()
            .is_some_and(|r| match r {
                TxnOpResponse::Delete(d) => d.deleted() > 0,
                _ => false,
            });
        Ok(if deleted {
            Removed::Removed
        } else {
            Removed::Absent
        })
    }

    fn owner(&self, volume: &str) -> Result<Option<Owner>, CoordinatorError> {
        let key = self.keys.owner(volume)?;
        Ok(self.get_one("get owner", key)?.as_ref().map(owner_of))
    }

    fn claim(
        &self,
        volume: &str,
        node: &str,
        lease: LeaseId,
        handover_from: Option<Epoch>,
    ) -> Result<Claim, CoordinatorError> {
        let (key, writer_key) = (self.keys.owner(volume)?, self.keys.writer(volume)?);
        // etcd compares AND together, so "free, or still the epoch handed
        // over" is two tries: the handover first, then a free claim if the
        // owner key turned out to be gone.
        let mut compares = Vec::new();
        if let Some(from) = handover_from {
            let rev = i64::try_from(from.0).unwrap_or(i64::MAX);
            compares.push(Compare::mod_revision(key.clone(), CompareOp::Equal, rev));
        }
        compares.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0));
        for cmp in compares {
            let txn = Txn::new()
                .when([cmp])
                .and_then([
                    TxnOp::get(writer_key.clone(), None),
                    TxnOp::put(
                        key.clone(),
                        node.as_bytes().to_vec(),
                        Some(PutOptions::new().with_lease(lease.0)),
                    ),
                ])
                .or_else([TxnOp::get(key.clone(), None)]);
            let resp = self.txn("claim", txn).map_err(|e| with_lease(e, lease))?;
            if resp.succeeded() {
                let previous = got(&resp).and_then(|kv| Writer::decode(kv.value()));
                return Ok(Claim::Won(Epoch(revision(&resp)), previous));
            }
            if let Some(kv) = got(&resp) {
                return Ok(Claim::Held(owner_of(&kv)));
            }
        }
        Err(CoordinatorError::Failed(format!(
            "claim {volume}: the owner key was neither free nor held"
        )))
    }

    fn release(&self, volume: &str, epoch: Epoch) -> Result<bool, CoordinatorError> {
        let key = self.keys.owner(volume)?;
        let rev = i64::try_from(epoch.0).unwrap_or(i64::MAX);
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.txn("release", txn)?.succeeded())
    }

    fn writer(&self, volume: &str) -> Result<Option<Writer>, CoordinatorError> {
        let key = self.keys.writer(volume)?;
        Ok(self
            .get_one("get writer", key)?
            .and_then(|kv| Writer::decode(kv.value())))
    }

    fn record_writer(
        &self,
        volume: &str,
        node: &str,
        epoch: Epoch,
    ) -> Result<bool, CoordinatorError> {
        let (key, writer_key) = (self.keys.owner(volume)?, self.keys.writer(volume)?);
        let rev = i64::try_from(epoch.0).unwrap_or(i64::MAX);
        let w = Writer {
            node: node.to_owned(),
            epoch,
        };
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, rev)])
            .and_then([TxnOp::put(writer_key, w.encode(), None)]);
        Ok(self.txn("record writer", txn)?.succeeded())
    }

    fn register_node(
        &self,
        node: &str,
        info: &[u8],
        lease: LeaseId,
    ) -> Result<(), CoordinatorError> {
        let key = self.keys.node(node)?;
        let value = info.to_vec();
        self.call("register node", |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                c.put(key, value, Some(PutOptions::new().with_lease(lease.0)))
                    .await
                    .map(|_| ())
            }
        })
        .map_err(|e| with_lease(e, lease))
    }

    fn nodes(&self) -> Result<Vec<(String, Vec<u8>)>, CoordinatorError> {
        Ok(self
            .get_prefix("list nodes", self.keys.nodes_prefix())?
            .iter()
            .filter_map(|kv| {
                let key = kv.key_str().ok()?;
                Some((self.keys.node_of(key)?.to_owned(), kv.value().to_vec()))
            })
            .collect())
    }
}
