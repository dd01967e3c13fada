//! Swarm placement constraints, as `follow` writes and checks them: the
//! region constraint that replaces any earlier one on the same label, and
//! whether a node meets a constraint (to refuse a move no node can take,
//! before the service is left unschedulable, and for the test double).

use super::engine::NodeInfo;

/// `node.labels.LABEL==REGION`.
pub(crate) fn region_constraint(label: &str, region: &str) -> String {
    format!("node.labels.{label}=={region}")
}

/// The constraint's key, operator and value (`==` or `!=`), spaces trimmed.
fn split(c: &str) -> Option<(&str, bool, &str)> {
    if let Some((k, v)) = c.split_once("==") {
        return Some((k.trim(), true, v.trim()));
    }
    c.split_once("!=").map(|(k, v)| (k.trim(), false, v.trim()))
}

/// `cs` with every constraint on `node.labels.LABEL` (either operator)
/// replaced by `node.labels.LABEL==REGION`; the others are kept in order.
pub(crate) fn with_region(cs: &[String], label: &str, region: &str) -> Vec<String> {
    let key = format!("node.labels.{label}");
    let mut out: Vec<String> = cs
        .iter()
        .filter(|c| split(c).is_none_or(|(k, _, _)| k != key))
        .cloned()
        .collect();
    out.push(region_constraint(label, region));
    out
}

/// Whether `node` meets `c`. Keys this code does not know (engine labels,
/// platform) are left to the engine: they count as met.
pub(crate) fn meets(node: &NodeInfo, c: &str) -> bool {
    let Some((key, eq, want)) = split(c) else {
        return true;
    };
    let have = if let Some(l) = key.strip_prefix("node.labels.") {
        node.labels.get(l).map(String::as_str)
    } else {
        match key {
            "node.hostname" => Some(node.hostname.as_str()),
            "node.id" => Some(node.id.as_str()),
            "node.role" => Some(node.role.as_str()),
            _ => return true,
        }
    };
    // Swarm: `!=` holds for a node without the label.
    (have == Some(want)) == eq
}

pub(crate) fn meets_all(node: &NodeInfo, cs: &[String]) -> bool {
    cs.iter().all(|c| meets(node, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, region: Option<&str>) -> NodeInfo {
        NodeInfo {
            id: format!("id-{host}"),
            hostname: host.into(),
            addr: "10.0.0.1".into(),
            labels: region
                .map(|r| [("region".to_owned(), r.to_owned())].into())
                .unwrap_or_default(),
            role: "manager".into(),
            schedulable: true,
        }
    }

    #[test]
    fn the_region_constraint_replaces_earlier_ones_on_its_label_only() {
        let cs = vec![
            "node.labels.region==us-east-1".to_owned(),
            "node.role == manager".into(),
            "node.labels.region != ap-northeast-1".into(),
            "node.labels.regional==x".into(),
        ];
        assert_eq!(
            with_region(&cs, "region", "eu-west-1"),
            vec![
                "node.role == manager",
                "node.labels.regional==x",
                "node.labels.region==eu-west-1"
            ]
        );
        assert_eq!(
            with_region(&[], "region", "eu-west-1"),
            vec!["node.labels.region==eu-west-1"]
        );
    }

    #[test]
    fn nodes_meet_constraints_as_swarm_reads_them() {
        let eu = node("a", Some("eu-west-1"));
        let bare = node("b", None);
        assert!(meets(&eu, "node.labels.region==eu-west-1"));
        assert!(!meets(&eu, "node.labels.region==us-east-1"));
        assert!(!meets(&bare, "node.labels.region==eu-west-1"));
        assert!(meets(&bare, "node.labels.region!=eu-west-1"));
        assert!(!meets(&eu, "node.labels.region != eu-west-1"));
        assert!(meets(&eu, "node.hostname==a"));
        assert!(!meets(&eu, "node.hostname!=a"));
        assert!(meets(&eu, "node.role==manager"));
        assert!(meets(&eu, "engine.labels.disk==ssd"), "left to the engine");
        assert!(meets_all(
            &eu,
            &[
                "node.role==manager".into(),
                "node.labels.region==eu-west-1".into()
            ]
        ));
    }
}
