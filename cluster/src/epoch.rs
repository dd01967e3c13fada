//! Ownership epochs: fencing tokens.
//!
//! A lease alone is not mutual exclusion: a paused or partitioned owner can
//! act after its lease is gone (etcd's "Notes on the usage of lock and
//! lease"; Kleppmann, "How to do distributed locking"). So each ownership
//! gets an epoch, the etcd revision that wrote its owner key, and whoever
//! is written to (a standby, the destination of a round, the node's own
//! volume service) keeps the highest epoch it has seen per volume and
//! refuses anything older. Revisions only grow, so a later owner always
//! has a higher epoch.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The etcd revision of a volume's owner key when its owner took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {}", self.0)
    }
}

/// A request that carries an epoch older than one already seen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("volume {volume}: {got} is older than {seen}; a newer owner exists, this one is fenced")]
pub struct StaleEpoch {
    pub volume: String,
    pub got: Epoch,
    pub seen: Epoch,
}

/// How an admitted epoch compares with what was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// The first epoch seen for this volume.
    First,
    /// The epoch already current.
    Same,
    /// A newer owner: whatever the older one sent and did not finish is void.
    Newer { previous: Epoch },
}

/// The highest epoch seen per volume. The daemon persists
/// [`Fence::entries`] with its records, so a restart does not forget.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fence {
    seen: BTreeMap<String, Epoch>,
}

impl Fence {
    pub fn new() -> Self {
        Self::default()
    }

    /// Restores what a previous life persisted.
    pub fn from_entries(entries: impl IntoIterator<Item = (String, Epoch)>) -> Self {
        let mut f = Self::new();
        for (volume, epoch) in entries {
            // Two entries for one volume (a bad merge): the higher stands.
            let e = f.seen.entry(volume).or_insert(epoch);
            *e = (*e).max(epoch);
        }
        f
    }

    pub fn entries(&self) -> impl Iterator<Item = (&str, Epoch)> {
        self.seen.iter().map(|(v, e)| (v.as_str(), *e))
    }

    pub fn highest(&self, volume: &str) -> Option<Epoch> {
        self.seen.get(volume).copied()
    }

    /// Refuses `epoch` if an older one than already seen, without recording.
    pub fn check(&self, volume: &str, epoch: Epoch) -> Result<(), StaleEpoch> {
        match self.highest(volume) {
            Some(seen) if epoch < seen => Err(StaleEpoch {
                volume: volume.to_owned(),
                got: epoch,
                seen,
            }),
            _ => Ok(()),
        }
    }

    /// Admits `epoch` for `volume` and records it as the highest seen, or
    /// refuses it as stale.
    pub fn admit(&mut self, volume: &str, epoch: Epoch) -> Result<Admitted, StaleEpoch> {
        self.check(volume, epoch)?;
        let admitted = match self.seen.insert(volume.to_owned(), epoch) {
            None => Admitted::First,
            Some(prev) if prev == epoch => Admitted::Same,
            Some(previous) => Admitted::Newer { previous },
        };
        Ok(admitted)
    }

    /// Forgets a removed volume (a re-created volume starts a new history
    /// whose epochs are higher anyway).
    pub fn forget(&mut self, volume: &str) {
        self.seen.remove(volume);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn older_epochs_are_refused_newer_ones_void_the_old() {
        let mut f = Fence::new();
        assert_eq!(f.admit("db", Epoch(7)), Ok(Admitted::First));
        assert_eq!(f.admit("db", Epoch(7)), Ok(Admitted::Same));
        let err = f.admit("db", Epoch(5)).unwrap_err();
        assert_eq!((err.got, err.seen), (Epoch(5), Epoch(7)));
        assert!(err.to_string().contains("fenced"), "{err}");
        assert_eq!(
            f.admit("db", Epoch(9)),
            Ok(Admitted::Newer { previous: Epoch(7) })
        );
        assert!(f.check("db", Epoch(7)).is_err());
        // Volumes are independent.
        assert_eq!(f.admit("web", Epoch(1)), Ok(Admitted::First));
    }

    #[test]
    fn a_restart_keeps_the_highest() {
        let f = Fence::from_entries([("db".to_owned(), Epoch(3)), ("db".to_owned(), Epoch(8))]);
        assert_eq!(f.highest("db"), Some(Epoch(8)));
        let again = Fence::from_entries(f.entries().map(|(v, e)| (v.to_owned(), e)));
        assert_eq!(again, f);
    }

    proptest! {
        /// Whatever order requests arrive in, what is admitted for a volume
        /// never goes back, and exactly the requests older than the
        /// running maximum are refused.
        #[test]
        fn admitted_epochs_never_go_back(reqs in proptest::collection::vec((0u8..3, 0u64..20), 0..60)) {
            let mut f = Fence::new();
            let mut max: BTreeMap<u8, u64> = BTreeMap::new();
            for (v, e) in reqs {
                let name = format!("v{v}");
                let r = f.admit(&name, Epoch(e));
                let m = max.entry(v).or_insert(e);
                if e < *m {
                    prop_assert!(r.is_err());
                } else {
                    prop_assert!(r.is_ok());
                    *m = e;
                }
                prop_assert_eq!(f.highest(&name), Some(Epoch(*m)));
            }
        }
    }
}
