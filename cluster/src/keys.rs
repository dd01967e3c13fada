//! Where cluster mode keeps its records in etcd. One prefix per cluster, so
//! two clusters can share an etcd without seeing each other:
//!
//! - `/daffe/CLUSTER/volumes/VOLUME`: the catalogue record (profile, size,
//!   who created it). No lease: a volume outlives every node.
//! - `/daffe/CLUSTER/owners/VOLUME`: the owning node, attached to that
//!   node's lease. Its mod revision is the volume's epoch.
//! - `/daffe/CLUSTER/writers/VOLUME`: the node that owned the volume last
//!   and the epoch it owned it at, written with every ownership and kept when
//!   the lease goes: a node whose copy was last written at another epoch
//!   holds a stale copy and must not serve it.
//! - `/daffe/CLUSTER/nodes/NODE`: a live node and its agent address,
//!   attached to the node's lease (gone when the node is).

/// The key builder of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    root: String,
}

/// What a key component may not hold: it would reach another record.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error(
    "{what} {name:?} cannot be an etcd key component (empty, or holds '/' or a control character)"
)]
pub struct BadComponent {
    pub what: &'static str,
    pub name: String,
}

impl Keys {
    /// `cluster` is validated by the config (`config::is_name`).
    pub fn new(cluster: &str) -> Self {
        Self {
            root: format!("/daffe/{cluster}/"),
        }
    }

    pub fn volumes_prefix(&self) -> String {
        format!("{}volumes/", self.root)
    }

    pub fn owners_prefix(&self) -> String {
        format!("{}owners/", self.root)
    }

    pub fn writers_prefix(&self) -> String {
        format!("{}writers/", self.root)
    }

    pub fn nodes_prefix(&self) -> String {
        format!("{}nodes/", self.root)
    }

    pub fn volume(&self, volume: &str) -> Result<String, BadComponent> {
        Ok(format!(
            "{}{}",
            self.volumes_prefix(),
            component("volume", volume)?
        ))
    }

    pub fn owner(&self, volume: &str) -> Result<String, BadComponent> {
        Ok(format!(
            "{}{}",
            self.owners_prefix(),
            component("volume", volume)?
        ))
    }

    pub fn writer(&self, volume: &str) -> Result<String, BadComponent> {
        Ok(format!(
            "{}{}",
            self.writers_prefix(),
            component("volume", volume)?
        ))
    }

    /// The node a node key names; `None` for any other key.
    pub fn node_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        let name = key.strip_prefix(self.nodes_prefix().as_str())?;
        component("node", name).ok()
    }

    pub fn node(&self, node: &str) -> Result<String, BadComponent> {
        Ok(format!(
            "{}{}",
            self.nodes_prefix(),
            component("node", node)?
        ))
    }

    /// The volume a catalogue or owner key names; `None` for any other key
    /// (a record of another kind or another cluster).
    pub fn volume_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        let rest = key.strip_prefix(self.root.as_str())?;
        let name = rest
            .strip_prefix("volumes/")
            .or_else(|| rest.strip_prefix("owners/"))?;
        component("volume", name).ok()
    }
}

fn component<'a>(what: &'static str, name: &'a str) -> Result<&'a str, BadComponent> {
    if name.is_empty() || name.contains('/') || name.chars().any(char::is_control) {
        return Err(BadComponent {
            what,
            name: name.to_owned(),
        });
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_stay_in_their_cluster() {
        let k = Keys::new("prod");
        let v = k.volume("db.data_1").unwrap();
        assert_eq!(v, "/daffe/prod/volumes/db.data_1");
        assert_eq!(k.owner("db").unwrap(), "/daffe/prod/owners/db");
        assert_eq!(k.node("swnode1").unwrap(), "/daffe/prod/nodes/swnode1");
        assert_eq!(k.writer("db").unwrap(), "/daffe/prod/writers/db");
        assert_eq!(k.node_of("/daffe/prod/nodes/swnode1"), Some("swnode1"));
        assert_eq!(k.node_of("/daffe/prod/owners/swnode1"), None);
        assert_eq!(k.volume_of("/daffe/prod/writers/db"), None);
        assert_eq!(k.volume_of(&v), Some("db.data_1"));
        assert_eq!(k.volume_of("/daffe/prod/owners/db"), Some("db"));
        // Another cluster's key, a node key, a nested key: not a volume here.
        assert_eq!(k.volume_of("/daffe/prod2/volumes/db"), None);
        assert_eq!(Keys::new("pro").volume_of("/daffe/prod/volumes/db"), None);
        assert_eq!(k.volume_of("/daffe/prod/nodes/db"), None);
        assert_eq!(k.volume_of("/daffe/prod/volumes/a/b"), None);
        assert!(v.starts_with(&k.volumes_prefix()));
    }

    #[test]
    fn a_component_cannot_reach_another_record() {
        let k = Keys::new("prod");
        for bad in ["", "../owners/db", "a/b", "a\nb"] {
            let err = k.volume(bad).unwrap_err();
            assert_eq!(err.name, bad);
            assert!(k.owner(bad).is_err() && k.node(bad).is_err() && k.writer(bad).is_err());
        }
    }
}
