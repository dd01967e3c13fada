//! The catalogue record of a volume in etcd (`volumes/NAME`): what another
//! node needs to make its own copy of the volume with the same profile and
//! options. Versioned, so a newer daemon can read an older record.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CatalogueRecord {
    pub(crate) version: u32,
    /// The docker name it was created with (`db@gold`).
    pub(crate) docker_name: String,
    pub(crate) profile: String,
    #[serde(default)]
    pub(crate) options: BTreeMap<String, String>,
    /// The node whose Create made it.
    pub(crate) created_on: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("catalogue record of {name:?} is not valid JSON: {message}")]
    Malformed { name: String, message: String },
    #[error(
        "catalogue record of {name:?} has format version {found}; this daffe reads up to {VERSION}: upgrade it"
    )]
    TooNew { name: String, found: u32 },
}

impl CatalogueRecord {
    pub(crate) fn new(
        docker_name: &str,
        profile: &str,
        options: &BTreeMap<String, String>,
        node: &str,
    ) -> Self {
        Self {
            version: VERSION,
            docker_name: docker_name.to_owned(),
            profile: profile.to_owned(),
            options: options.clone(),
            created_on: node.to_owned(),
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub(crate) fn decode(name: &str, bytes: &[u8]) -> Result<Self, RecordError> {
        let r: Self = serde_json::from_slice(bytes).map_err(|e| RecordError::Malformed {
            name: name.to_owned(),
            message: e.to_string(),
        })?;
        if r.version > VERSION {
            return Err(RecordError::TooNew {
                name: name.to_owned(),
                found: r.version,
            });
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_ones_say_why() {
        let opts = BTreeMap::from([("size".to_owned(), "1G".to_owned())]);
        let r = CatalogueRecord::new("db@gold", "gold", &opts, "n1");
        assert_eq!(CatalogueRecord::decode("db", &r.encode()).unwrap(), r);
        let cases: [(&[u8], &str); 3] = [
            (b"{", "not valid JSON"),
            (b"{\"version\":1}", "missing field"),
            (
                b"{\"version\":9,\"docker_name\":\"db\",\"profile\":\"gold\",\"created_on\":\"n\"}",
                "version 9",
            ),
        ];
        for (bytes, want) in cases {
            let err = CatalogueRecord::decode("db", bytes)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want) && err.contains("\"db\""), "{err}");
        }
    }
}
