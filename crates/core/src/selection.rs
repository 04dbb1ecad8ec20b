//! Which objects a grant's `spec.targets` select.

use std::collections::BTreeMap;

use serde_json::Value;
use storagegrant_api::{StorageGrant, TargetKind, TargetRef, TargetSelector};

/// Whether `target` selects the object of `kind` with this name, labels and body.
pub fn selects(
    target: &TargetRef,
    kind: TargetKind,
    name: &str,
    labels: &BTreeMap<String, String>,
    object: &Value,
) -> bool {
    if target.kind != kind {
        return false;
    }
    if let Some(wanted) = &target.name {
        return wanted == name;
    }
    if let Some(selector) = &target.selector {
        return matches_selector(selector, labels);
    }
    if let Some(cluster) = &target.cluster {
        let path = kind.cluster_path();
        let found = path.iter().try_fold(object, |node, field| node.get(field));
        return found.and_then(Value::as_str) == Some(cluster.as_str());
    }
    false
}

/// Whether any entry of the grant's targets selects the object.
pub fn grant_selects(
    grant: &StorageGrant,
    kind: TargetKind,
    name: &str,
    labels: &BTreeMap<String, String>,
    object: &Value,
) -> bool {
    grant
        .spec
        .targets
        .iter()
        .any(|target| selects(target, kind, name, labels, object))
}

/// Whether labels match a selector, with the semantics of `metav1.LabelSelector`.
pub fn matches_selector(selector: &TargetSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flat_map(|labels| labels.0.iter())
        .all(|(key, value)| labels.get(key) == Some(value));
    let expressions_match = selector
        .match_expressions
        .iter()
        .flatten()
        .all(|requirement| {
            let value = labels.get(&requirement.key);
            let values = requirement.values.as_deref().unwrap_or_default();
            match requirement.operator.as_str() {
                "In" => value.is_some_and(|value| values.contains(value)),
                "NotIn" => value.is_none_or(|value| !values.contains(value)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        });
    labels_match && expressions_match
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn target(yaml: &str) -> TargetRef {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn name_target_selects_only_that_name_and_kind() {
        let by_name = target("{kind: TiKVGroup, name: tikv}");
        assert!(selects(
            &by_name,
            TargetKind::TiKvGroup,
            "tikv",
            &labels(&[]),
            &json!({})
        ));
        assert!(!selects(
            &by_name,
            TargetKind::TiKvGroup,
            "tikv-2",
            &labels(&[]),
            &json!({})
        ));
        assert!(!selects(
            &by_name,
            TargetKind::TiFlashGroup,
            "tikv",
            &labels(&[]),
            &json!({})
        ));
    }

    #[test]
    fn selector_target_uses_label_semantics() {
        let by_labels = target(
            "{kind: Backup, selector: {matchLabels: {team: db}, matchExpressions: [{key: tier, operator: NotIn, values: [test]}]}}",
        );
        let object = json!({});
        assert!(selects(
            &by_labels,
            TargetKind::Backup,
            "b",
            &labels(&[("team", "db")]),
            &object
        ));
        assert!(!selects(
            &by_labels,
            TargetKind::Backup,
            "b",
            &labels(&[("team", "db"), ("tier", "test")]),
            &object
        ));
        assert!(!selects(
            &by_labels,
            TargetKind::Backup,
            "b",
            &labels(&[]),
            &object
        ));
    }

    #[test]
    fn cluster_target_reads_kind_specific_path() {
        let by_cluster = target("{kind: TiKVGroup, cluster: demo}");
        let group = json!({"spec": {"cluster": {"name": "demo"}}});
        assert!(selects(
            &by_cluster,
            TargetKind::TiKvGroup,
            "x",
            &labels(&[]),
            &group
        ));
        let restore = target("{kind: Restore, cluster: demo}");
        let object = json!({"spec": {"br": {"cluster": "demo"}}});
        assert!(selects(
            &restore,
            TargetKind::Restore,
            "r",
            &labels(&[]),
            &object
        ));
        assert!(!selects(
            &restore,
            TargetKind::Restore,
            "r",
            &labels(&[]),
            &json!({"spec": {}})
        ));
    }
}
