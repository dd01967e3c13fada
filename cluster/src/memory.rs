//! A faithful in-memory etcd for [`Coordinator`]'s users' tests: one
//! revision counter for the whole store (every put and delete bumps it,
//! lease expiry included), keys with create and mod revisions, leases that
//! expire on a manual clock and take their keys with them, and an
//! "unavailable" switch for lost quorum. Clones share one store, as
//! several nodes share one etcd cluster.

use crate::coordinator::{
    Claim, Coordinator, CoordinatorError, LeaseId, Owner, Removed, VolumeEntry, Writer,
};
use crate::epoch::Epoch;
use crate::keys::Keys;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Debug, Clone)]
struct Kv {
    value: Vec<u8>,
    create_rev: u64,
    mod_rev: u64,
    lease: Option<i64>,
}

#[derive(Debug, Default)]
struct Store {
    revision: u64,
    now_ms: u64,
    next_lease: i64,
    kv: BTreeMap<String, Kv>,
    /// lease -> (ttl ms, expires at ms)
    leases: BTreeMap<i64, (u64, u64)>,
    unavailable: bool,
}

impl Store {
    fn put(&mut self, key: String, value: Vec<u8>, lease: Option<i64>) -> u64 {
        self.revision += 1;
        let rev = self.revision;
        let create_rev = self.kv.get(&key).map_or(rev, |k| k.create_rev);
        self.kv.insert(
            key,
            Kv {
                value,
                create_rev,
                mod_rev: rev,
                lease,
            },
        );
        rev
    }

    fn delete(&mut self, key: &str) -> bool {
        if self.kv.remove(key).is_some() {
            self.revision += 1;
            true
        } else {
            false
        }
    }

    fn drop_lease(&mut self, id: i64) {
        self.leases.remove(&id);
        let keys: Vec<String> = self
            .kv
            .iter()
            .filter(|(_, v)| v.lease == Some(id))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.delete(&k);
        }
    }

    fn expire(&mut self) {
        let due: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, (_, at))| *at <= self.now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.drop_lease(id);
        }
    }

    fn live_lease(&self, lease: LeaseId) -> Result<(), CoordinatorError> {
        if self.leases.contains_key(&lease.0) {
            Ok(())
        } else {
            Err(CoordinatorError::LeaseGone(lease))
        }
    }
}

/// The double. `MemoryCoordinator::new("prod")`, then one clone per node.
#[derive(Debug, Clone)]
pub struct MemoryCoordinator {
    keys: Keys,
    store: Arc<Mutex<Store>>,
}

impl MemoryCoordinator {
    pub fn new(cluster: &str) -> Self {
        Self {
            keys: Keys::new(cluster),
            store: Arc::default(),
        }
    }

    /// Moves the store's clock on; leases that run out expire (their keys
    /// are deleted, each delete a new revision, as in etcd).
    pub fn advance(&self, by: Duration) {
        let mut s = self.store.lock().unwrap_or_else(|e| e.into_inner());
        s.now_ms += u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        s.expire();
    }

    pub fn now_ms(&self) -> u64 {
        self.store.lock().unwrap_or_else(|e| e.into_inner()).now_ms
    }

    /// Loses (or regains) quorum: every call fails with `Unavailable` and
    /// decides nothing.
    pub fn set_unavailable(&self, down: bool) {
        self.store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unavailable = down;
    }

    fn lock(&self) -> Result<MutexGuard<'_, Store>, CoordinatorError> {
        let s = self.store.lock().unwrap_or_else(|e| e.into_inner());
        if s.unavailable {
            return Err(CoordinatorError::Unavailable(
                "no quorum (test double)".into(),
            ));
        }
        Ok(s)
    }

    fn entry(&self, name: &str, kv: &Kv) -> VolumeEntry {
        VolumeEntry {
            name: name.to_owned(),
            record: kv.value.clone(),
            created: kv.create_rev,
        }
    }

    fn writer_of(s: &Store, key: &str) -> Option<Writer> {
        Writer::decode(&s.kv.get(key)?.value)
    }

    fn owner_of(s: &Store, key: &str) -> Option<Owner> {
        let kv = s.kv.get(key)?;
        Some(Owner {
            node: String::from_utf8_lossy(&kv.value).into_owned(),
            epoch: Epoch(kv.mod_rev),
            lease: LeaseId(kv.lease.unwrap_or_default()),
        })
    }
}

impl Coordinator for MemoryCoordinator {
    fn grant(&self, ttl: Duration) -> Result<LeaseId, CoordinatorError> {
        let mut s = self.lock()?;
        s.next_lease += 1;
        let id = s.next_lease;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let at = s.now_ms.saturating_add(ttl_ms);
        s.leases.insert(id, (ttl_ms, at));
        Ok(LeaseId(id))
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<(), CoordinatorError> {
        let mut s = self.lock()?;
        let now = s.now_ms;
        let (ttl, at) = s
            .leases
            .get_mut(&lease.0)
            .ok_or(CoordinatorError::LeaseGone(lease))?;
        *at = now.saturating_add(*ttl);
        Ok(())
    }

    fn revoke(&self, lease: LeaseId) -> Result<(), CoordinatorError> {
        let mut s = self.lock()?;
        s.live_lease(lease)?;
        s.drop_lease(lease.0);
        Ok(())
    }

    fn create_volume(
        &self,
        name: &str,
        record: &[u8],
    ) -> Result<(VolumeEntry, bool), CoordinatorError> {
        let key = self.keys.volume(name)?;
        let mut s = self.lock()?;
        if let Some(kv) = s.kv.get(&key) {
            return Ok((self.entry(name, kv), false));
        }
        s.put(key.clone(), record.to_vec(), None);
        Ok((self.entry(name, &s.kv[&key]), true))
    }

    fn volume(&self, name: &str) -> Result<Option<VolumeEntry>, CoordinatorError> {
        let key = self.keys.volume(name)?;
        let s = self.lock()?;
        Ok(s.kv.get(&key).map(|kv| self.entry(name, kv)))
    }

    fn volumes(&self) -> Result<Vec<VolumeEntry>, CoordinatorError> {
        let prefix = self.keys.volumes_prefix();
        let s = self.lock()?;
        Ok(s.kv
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, kv)| Some(self.entry(self.keys.volume_of(k)?, kv)))
            .collect())
    }

    fn remove_volume(&self, name: &str) -> Result<Removed, CoordinatorError> {
        let (key, owner_key) = (self.keys.volume(name)?, self.keys.owner(name)?);
        let writer_key = self.keys.writer(name)?;
        let mut s = self.lock()?;
        if let Some(owner) = Self::owner_of(&s, &owner_key) {
            return Ok(Removed::Owned(owner));
        }
        s.kv.remove(&writer_key);
        Ok(if s.delete(&key) {
            Removed::Removed
        } else {
            Removed::Absent
        })
    }

    fn owner(&self, volume: &str) -> Result<Option<Owner>, CoordinatorError> {
        let key = self.keys.owner(volume)?;
        let s = self.lock()?;
        Ok(Self::owner_of(&s, &key))
    }

    fn claim(
        &self,
        volume: &str,
        node: &str,
        lease: LeaseId,
        handover_from: Option<Epoch>,
    ) -> Result<Claim, CoordinatorError> {
        let (key, writer_key) = (self.keys.owner(volume)?, self.keys.writer(volume)?);
        let mut s = self.lock()?;
        match (Self::owner_of(&s, &key), handover_from) {
            (None, _) => {}
            (Some(cur), Some(from)) if cur.epoch == from => {}
            (Some(cur), _) => return Ok(Claim::Held(cur)),
        }
        // As etcd: the lease is checked only by the put it is attached to.
        s.live_lease(lease)?;
        let previous = Self::writer_of(&s, &writer_key);
        let rev = s.put(key, node.as_bytes().to_vec(), Some(lease.0));
        Ok(Claim::Won(Epoch(rev), previous))
    }

    fn record_writer(
        &self,
        volume: &str,
        node: &str,
        epoch: Epoch,
    ) -> Result<bool, CoordinatorError> {
        let (key, writer_key) = (self.keys.owner(volume)?, self.keys.writer(volume)?);
        let mut s = self.lock()?;
        match Self::owner_of(&s, &key) {
            Some(cur) if cur.epoch == epoch => {
                let w = Writer {
                    node: node.to_owned(),
                    epoch,
                };
                s.put(writer_key, w.encode(), None);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn writer(&self, volume: &str) -> Result<Option<Writer>, CoordinatorError> {
        let key = self.keys.writer(volume)?;
        let s = self.lock()?;
        Ok(Self::writer_of(&s, &key))
    }

    fn register_node(
        &self,
        node: &str,
        info: &[u8],
        lease: LeaseId,
    ) -> Result<(), CoordinatorError> {
        let key = self.keys.node(node)?;
        let mut s = self.lock()?;
        s.live_lease(lease)?;
        s.put(key, info.to_vec(), Some(lease.0));
        Ok(())
    }

    fn nodes(&self) -> Result<Vec<(String, Vec<u8>)>, CoordinatorError> {
        let prefix = self.keys.nodes_prefix();
        let s = self.lock()?;
        Ok(s.kv
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, kv)| Some((self.keys.node_of(k)?.to_owned(), kv.value.clone())))
            .collect())
    }

    fn release(&self, volume: &str, epoch: Epoch) -> Result<bool, CoordinatorError> {
        let key = self.keys.owner(volume)?;
        let mut s = self.lock()?;
        match Self::owner_of(&s, &key) {
            Some(cur) if cur.epoch == epoch => Ok(s.delete(&key)),
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{LeaseRule, Standing};
    use proptest::prelude::*;

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn behaves_as_etcd() {
        use crate::conformance as c;
        let etcd = MemoryCoordinator::new("prod");
        c::create_is_once_and_remove_waits_for_the_owner(&etcd, "t1-");
        c::one_claim_wins_and_handover_needs_the_current_epoch(&etcd, "t2-");
        c::an_expired_lease_frees_the_volume(&etcd, "t3-", &|d| etcd.advance(d));
        c::the_last_writer_outlives_the_owner_and_nodes_live_with_their_lease(&etcd, "t4-");
    }

    #[test]
    fn without_quorum_nothing_is_decided() {
        let etcd = MemoryCoordinator::new("prod");
        let lease = etcd.grant(TTL).unwrap();
        etcd.set_unavailable(true);
        assert!(matches!(
            etcd.create_volume("db", b""),
            Err(CoordinatorError::Unavailable(_))
        ));
        assert!(matches!(
            etcd.claim("db", "a", lease, None),
            Err(CoordinatorError::Unavailable(_))
        ));
        etcd.set_unavailable(false);
        assert!(etcd.volumes().unwrap().is_empty());
    }

    #[test]
    fn clusters_sharing_an_etcd_do_not_see_each_other() {
        let prod = MemoryCoordinator::new("prod");
        let test = MemoryCoordinator {
            keys: Keys::new("test"),
            store: prod.store.clone(),
        };
        prod.create_volume("db", b"x").unwrap();
        assert!(test.volumes().unwrap().is_empty());
        assert_eq!(prod.volumes().unwrap().len(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The safety property of the lease rule against etcd's expiry: an
        /// owner whose keep-alives are delayed by any amount on the way to
        /// etcd, or lost, has stopped writing (by [`LeaseRule`], counting
        /// from each acknowledged keep-alive's send time) before another
        /// node can win the volume. Time moves in 10 ms ticks.
        #[test]
        fn the_old_owner_stops_writing_before_a_new_owner_can_win(
            // (ticks until the next keep-alive is sent, ticks to reach etcd,
            // ticks for the reply to come back, lost)
            sends in proptest::collection::vec((1u64..600, 0u64..400, 0u64..400, any::<bool>()), 1..12),
        ) {
            const TICK: Duration = Duration::from_millis(10);
            let etcd = MemoryCoordinator::new("prod");
            let rule = LeaseRule::new(TTL, Duration::from_secs(2));
            let la = etcd.grant(TTL).unwrap();
            let mut acked_sent = etcd.now_ms();
            let Claim::Won(_, _) = etcd.claim("db", "a", la, None).unwrap() else { panic!() };
            let lb = etcd.grant(Duration::from_secs(3_600)).unwrap();
            // (arrives at etcd, reply back at the owner, sent), in ms, of
            // every keep-alive not lost.
            let mut in_flight = Vec::new();
            let mut t = 0;
            for (gap, there, back, lost) in sends {
                t += gap * 10;
                if !lost {
                    in_flight.push((t + there * 10, t + (there + back) * 10, t));
                }
            }
            // Send times of keep-alives etcd took, by when the owner learns it.
            let mut acks: Vec<(u64, u64)> = Vec::new();
            let mut fenced_at = None;
            loop {
                etcd.advance(TICK);
                let now = etcd.now_ms();
                for &(arrives, replied, sent) in &in_flight {
                    if arrives == now && etcd.keep_alive(la).is_ok() {
                        acks.push((replied, sent));
                    }
                }
                for &(replied, sent) in &acks {
                    // A renewal learnt after fencing does not unfence.
                    if replied == now && fenced_at.is_none() {
                        acked_sent = acked_sent.max(sent);
                    }
                }
                if fenced_at.is_none()
                    && let Standing::MustFence { .. } = rule.standing(acked_sent, now)
                {
                    fenced_at = Some(now);
                }
                if let Claim::Won(_, _) = etcd.claim("db", "b", lb, None).unwrap() {
                    prop_assert!(
                        fenced_at.is_some_and(|f| f < now),
                        "b won at {now} ms while a could still write (fenced at {fenced_at:?})"
                    );
                    break;
                }
            }
        }
    }
}
