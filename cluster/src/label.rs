//! Node labels: what a node says of itself in `[cluster] labels` (e.g. its
//! zone), and the `KEY=VALUE` a profile's `standby_label` asks of the nodes
//! that may hold its standbys (issue 14: "which nodes may hold one (a node
//! label such as a zone)"). One grammar for both, so a label a profile asks
//! for is one a node can carry.

use std::collections::BTreeMap;

/// One `KEY=VALUE` a node must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLabel {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LabelError {
    #[error(
        "label {0:?}: expected KEY=VALUE (KEY: 1-63 of a-z, 0-9, '.', '_', '-'; VALUE: 1-63 of those and A-Z)"
    )]
    Shape(String),
}

/// Keys: lowercase, as Swarm's and Kubernetes' labels mostly are.
pub fn is_key(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// Values: case kept (zones and racks are often named in capitals).
pub fn is_value(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks one label of a node's `[cluster] labels`.
pub fn check(key: &str, value: &str) -> Result<(), LabelError> {
    if is_key(key) && is_value(value) {
        Ok(())
    } else {
        Err(LabelError::Shape(format!("{key}={value}")))
    }
}

impl std::str::FromStr for NodeLabel {
    type Err = LabelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| LabelError::Shape(s.to_owned()))?;
        check(key, value).map_err(|_| LabelError::Shape(s.to_owned()))?;
        Ok(NodeLabel {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }
}

impl std::fmt::Display for NodeLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

impl NodeLabel {
    /// Whether a node with `labels` carries this one.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.get(&self.key) == Some(&self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_by_the_one_grammar() {
        for (s, ok) in [
            ("zone=b", true),
            ("topology.zone=EU-West-1b", true),
            ("rack_2=R-07", true),
            ("zone", false),
            ("=b", false),
            ("zone=", false),
            ("Zone=b", false),
            ("zone=b=c", false),
            ("zone=b c", false),
            ("zone= b", false),
            (&format!("{}=b", "k".repeat(64)), false),
        ] {
            assert_eq!(s.parse::<NodeLabel>().is_ok(), ok, "{s}");
        }
        let l: NodeLabel = "zone=b".parse().unwrap();
        assert_eq!(l.to_string(), "zone=b");
    }

    #[test]
    fn a_node_matches_only_with_the_same_value() {
        let l: NodeLabel = "zone=b".parse().unwrap();
        let node = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        assert!(l.matches(&node("zone", "b")));
        assert!(!l.matches(&node("zone", "a")));
        assert!(!l.matches(&node("rack", "b")));
        assert!(!l.matches(&BTreeMap::new()));
    }
}
