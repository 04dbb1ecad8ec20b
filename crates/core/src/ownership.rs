//! Compares a target with the grant's entries: whether to write, with or without force, or
//! not at all because another manager owns a field the grant needs.

use serde::Deserialize;
use serde_json::Value;

use crate::fieldset::{Entry, contains, fields_at, fields_of, leaf_fields, lookup};

/// One element of `metadata.managedFields`.
#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
struct ManagedFields {
    manager: Option<String>,
    operation: Option<String>,
    subresource: Option<String>,
    #[serde(rename = "fieldsV1")]
    fields: Option<Value>,
}

/// An entry the grant must write that another manager holds.
#[derive(Debug, Clone, PartialEq)]
pub struct ForeignField {
    /// The entry, as in [`Entry::label`].
    pub entry: String,
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// The fields of the entry that manager owns, relative to the entry.
    pub fields: Vec<String>,
}

/// The action for one target.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The target carries every entry and the grant owns exactly them: write nothing.
    InSync,
    /// Apply the entries. `force` takes fields back from `Update` managers (hand edits) that
    /// changed what this grant wrote; `drift` lists them. `absent` names the entries that
    /// are missing or differ.
    Write {
        force: bool,
        drift: Vec<ForeignField>,
        absent: Vec<String>,
    },
    /// Another manager owns a field inside an entry this grant needs, and it either applied it
    /// (GitOps, another grant) or set it before this grant did. Nothing is written.
    Conflict(ForeignField),
}

fn managed_fields(object: &Value) -> Vec<ManagedFields> {
    object
        .pointer("/metadata/managedFields")
        .cloned()
        .and_then(|fields| serde_json::from_value(fields).ok())
        .unwrap_or_default()
}

/// Decides how to bring `object` to hold `entries` under the field manager `manager`.
/// `wrote_before` means the grant had the target in sync before: then a field inside an entry
/// that an `Update` manager now owns is drift even when the grant owns nothing of the entry
/// any more, as after a hand edit of a single value such as an annotation.
pub fn verdict(object: &Value, entries: &[Entry], manager: &str, wrote_before: bool) -> Verdict {
    let all = managed_fields(object);
    let (ours, others): (Vec<_>, Vec<_>) = all
        .into_iter()
        .filter(|managed| {
            managed
                .subresource
                .as_deref()
                .unwrap_or_default()
                .is_empty()
        })
        .partition(|managed| managed.manager.as_deref() == Some(manager));
    let our_fields: Vec<&Value> = ours
        .iter()
        .filter(|managed| managed.operation.as_deref() == Some("Apply"))
        .filter_map(|managed| managed.fields.as_ref())
        .collect();

    let mut drift = Vec::new();
    let mut absent = Vec::new();
    for entry in entries {
        let we_own_part = our_fields
            .iter()
            .any(|fields| fields_at(fields, &entry.path).is_some());
        for other in &others {
            let Some(owned) = other
                .fields
                .as_ref()
                .and_then(|fields| fields_at(fields, &entry.path))
            else {
                continue;
            };
            let present =
                lookup(object, &entry.path).is_some_and(|live| contains(live, &entry.value));
            // Owning only the element itself or its key (an env entry's name) is harmless
            // co-ownership of a list-map element.
            let leaves: Vec<String> = leaf_fields(owned)
                .into_iter()
                .filter(|leaf| !is_key_leaf(leaf, entry))
                .collect();
            if leaves.is_empty() {
                continue;
            }
            let manager = other
                .manager
                .clone()
                .unwrap_or_else(|| "(unnamed)".to_owned());
            // Another grant that applied the same value shares the field, as server-side
            // apply allows; only a different value is a conflict between grants.
            if manager.starts_with("storagegrant.dev/") && present {
                continue;
            }
            let foreign = ForeignField {
                entry: entry.label.clone(),
                manager,
                operation: other.operation.clone().unwrap_or_default(),
                fields: leaves.clone(),
            };
            // A field outside the grant's value (a hand-set `value` beside its `valueFrom`)
            // cannot be removed by the grant's apply, so the target is a conflict.
            let within_value = leaves.iter().all(|leaf| covered(leaf, &entry.value));
            if (we_own_part || wrote_before) && foreign.operation == "Update" && within_value {
                drift.push(foreign);
            } else {
                return Verdict::Conflict(foreign);
            }
        }
        let present = lookup(object, &entry.path).is_some_and(|live| contains(live, &entry.value));
        if !present {
            absent.push(entry.label.clone());
        }
    }

    if !absent.is_empty() || !drift.is_empty() || !owns_exactly(&our_fields, entries) {
        let force = !drift.is_empty();
        return Verdict::Write {
            force,
            drift,
            absent,
        };
    }
    Verdict::InSync
}

/// Tells whether a leaf of `fieldsV1`, relative to an entry, is the entry itself or one of
/// its key fields.
fn is_key_leaf(leaf: &str, entry: &Entry) -> bool {
    match entry.path.last() {
        Some(crate::fieldset::Step::Key(key)) => leaf == "." || key.contains_key(leaf),
        // For a field such as an annotation, "." is the field's own value.
        _ => false,
    }
}

/// Tells whether a leaf of `fieldsV1`, relative to an entry, lies within the grant's value of
/// the entry: the same field, a field below it, or an atomic map above it.
fn covered(leaf: &str, value: &Value) -> bool {
    if leaf == "." {
        return true;
    }
    let mut node = value;
    for (index, field) in leaf.split('.').enumerate() {
        match node.get(field) {
            Some(child) => node = child,
            None => return index > 0 && !node.is_object(),
        }
    }
    true
}

/// Whether the grant's applied field set is exactly the set that `entries` need, so that an
/// apply would neither claim nor release anything. Identifying metadata is left out. A field
/// of an atomic map (such as `secretKeyRef`) is recorded as one leaf, so a leaf covers the
/// fields below it.
fn owns_exactly(our_fields: &[&Value], entries: &[Entry]) -> bool {
    let claims_all = entries.iter().all(|entry| {
        our_fields
            .iter()
            .any(|fields| fields_at(fields, &entry.path).is_some())
    });
    let needed: Vec<String> = entries
        .iter()
        .flat_map(|entry| leaf_fields(&fields_of(&entry.path, &entry.value)))
        .collect();
    let related = |owned: &String| {
        needed.iter().any(|leaf| {
            leaf == owned
                || leaf.starts_with(&format!("{owned}."))
                || owned.starts_with(&format!("{leaf}."))
        })
    };
    let no_extra = our_fields
        .iter()
        .flat_map(|fields| leaf_fields(&without_identity(fields)))
        .filter(|leaf| leaf != ".")
        .all(|leaf| related(&leaf));
    claims_all && no_extra
}

/// A copy of a `fieldsV1` set without `metadata` fields other than labels and annotations.
fn without_identity(fields: &Value) -> Value {
    let mut copy = fields.clone();
    if let Some(metadata) = copy.get_mut("f:metadata").and_then(Value::as_object_mut) {
        metadata.retain(|key, _| key == "f:labels" || key == "f:annotations");
        if metadata.is_empty() {
            copy.as_object_mut()
                .expect("a fieldsV1 set is an object")
                .remove("f:metadata");
        }
    }
    copy
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fieldset::Step;

    const MANAGER: &str = "storagegrant.dev/g";

    fn entry() -> Entry {
        Entry {
            path: vec![
                Step::field("spec"),
                Step::field("containers"),
                Step::key("name", "tikv"),
                Step::field("env"),
                Step::key("name", "A"),
            ],
            value: json!({"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}),
            label: "env A of container tikv".into(),
        }
    }

    fn our_fields() -> Value {
        json!({"f:spec": {"f:containers": {"k:{\"name\":\"tikv\"}": {".": {}, "f:name": {}, "f:env": {
            "k:{\"name\":\"A\"}": {".": {}, "f:name": {}, "f:valueFrom": {"f:secretKeyRef": {"f:name": {}, "f:key": {}}}}
        }}}}})
    }

    fn object(env: Value, managed: Value) -> Value {
        json!({
            "metadata": {"managedFields": managed},
            "spec": {"containers": [{"name": "tikv", "env": env}]},
        })
    }

    fn managed(manager: &str, operation: &str, fields: Value) -> Value {
        json!({"manager": manager, "operation": operation, "fieldsV1": fields, "fieldsType": "FieldsV1"})
    }

    #[test]
    fn written_entry_owned_by_grant_is_in_sync() {
        let target = object(
            json!([entry().value]),
            json!([managed(MANAGER, "Apply", our_fields())]),
        );
        assert_eq!(
            verdict(&target, &[entry()], MANAGER, false),
            Verdict::InSync
        );
    }

    #[test]
    fn absent_entry_is_written_without_force() {
        let target = object(json!([]), json!([]));
        assert_eq!(
            verdict(&target, &[entry()], MANAGER, false),
            Verdict::Write {
                force: false,
                drift: vec![],
                absent: vec!["env A of container tikv".to_owned()],
            }
        );
    }

    #[test]
    fn hand_set_value_is_conflict_naming_manager() {
        let theirs = json!({"f:spec": {"f:containers": {"k:{\"name\":\"tikv\"}": {"f:env": {
            "k:{\"name\":\"A\"}": {".": {}, "f:name": {}, "f:value": {}}}}}}});
        let target = object(
            json!([{"name": "A", "value": "x"}]),
            json!([managed("kubectl-edit", "Update", theirs)]),
        );
        let Verdict::Conflict(foreign) = verdict(&target, &[entry()], MANAGER, false) else {
            panic!("expected a conflict");
        };
        assert_eq!(foreign.manager, "kubectl-edit");
        assert_eq!(foreign.fields, ["value"]);
    }

    #[test]
    fn hand_edit_of_written_entry_is_forced_drift() {
        let theirs = json!({"f:spec": {"f:containers": {"k:{\"name\":\"tikv\"}": {"f:env": {
            "k:{\"name\":\"A\"}": {"f:valueFrom": {"f:secretKeyRef": {"f:key": {}}}}}}}}});
        let live =
            json!([{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "other"}}}]);
        let target = object(
            live,
            json!([
                managed(MANAGER, "Apply", our_fields()),
                managed("kubectl-edit", "Update", theirs)
            ]),
        );
        let Verdict::Write { force, drift, .. } = verdict(&target, &[entry()], MANAGER, false)
        else {
            panic!("expected a write");
        };
        assert!(force);
        assert_eq!(drift[0].manager, "kubectl-edit");
    }

    #[test]
    fn hand_edit_of_single_value_written_before_is_drift() {
        let theirs = json!({"f:spec": {"f:containers": {"k:{\"name\":\"tikv\"}": {"f:env": {
            "k:{\"name\":\"A\"}": {".": {}, "f:name": {}, "f:valueFrom": {}}}}}}});
        let target = object(
            json!([{"name": "A", "value": "x"}]),
            json!([managed("kubectl-edit", "Update", theirs)]),
        );
        assert!(matches!(
            verdict(&target, &[entry()], MANAGER, false),
            Verdict::Conflict(_)
        ));
        let Verdict::Write { force, drift, .. } = verdict(&target, &[entry()], MANAGER, true)
        else {
            panic!("expected a forced write");
        };
        assert!(force);
        assert_eq!(drift[0].manager, "kubectl-edit");
    }

    #[test]
    fn hand_added_value_beside_written_value_from_is_conflict() {
        let theirs = json!({"f:spec": {"f:containers": {"k:{\"name\":\"tikv\"}": {"f:env": {
            "k:{\"name\":\"A\"}": {"f:value": {}}}}}}});
        let mut live = entry().value;
        live["value"] = json!("x");
        let target = object(
            json!([live]),
            json!([
                managed(MANAGER, "Apply", our_fields()),
                managed("kubectl-patch", "Update", theirs)
            ]),
        );
        let Verdict::Conflict(foreign) = verdict(&target, &[entry()], MANAGER, true) else {
            panic!("expected a conflict");
        };
        assert_eq!(foreign.fields, ["value"]);
    }

    #[test]
    fn grants_agreeing_on_value_share_it() {
        let other_grant = managed("storagegrant.dev/other", "Apply", our_fields());
        let target = object(
            json!([entry().value]),
            json!([managed(MANAGER, "Apply", our_fields()), other_grant]),
        );
        assert_eq!(
            verdict(&target, &[entry()], MANAGER, false),
            Verdict::InSync
        );
    }

    #[test]
    fn key_only_ownership_is_ignored() {
        let theirs = json!({"f:spec": {"f:containers": {"k:{\"name\":\"tikv\"}": {"f:env": {
            "k:{\"name\":\"A\"}": {".": {}, "f:name": {}}}}}}});
        let target = object(
            json!([entry().value]),
            json!([
                managed(MANAGER, "Apply", our_fields()),
                managed("kubectl-patch", "Update", theirs)
            ]),
        );
        assert_eq!(verdict(&target, &[entry()], MANAGER, true), Verdict::InSync);
    }

    #[test]
    fn apply_manager_on_written_entry_is_conflict() {
        let theirs = json!({"f:spec": {"f:containers": {"k:{\"name\":\"tikv\"}": {"f:env": {
            "k:{\"name\":\"A\"}": {"f:valueFrom": {"f:secretKeyRef": {"f:key": {}}}}}}}}});
        let target = object(
            json!([entry().value]),
            json!([
                managed(MANAGER, "Apply", our_fields()),
                managed("argocd-controller", "Apply", theirs)
            ]),
        );
        assert!(matches!(
            verdict(&target, &[entry()], MANAGER, false),
            Verdict::Conflict(_)
        ));
    }

    #[test]
    fn extra_owned_entry_is_released_by_write() {
        let mut fields = our_fields();
        fields["f:spec"]["f:containers"]["k:{\"name\":\"tikv\"}"]["f:env"]["k:{\"name\":\"OLD\"}"] =
            json!({".": {}, "f:name": {}, "f:value": {}});
        let target = object(
            json!([entry().value, {"name": "OLD", "value": "1"}]),
            json!([managed(MANAGER, "Apply", fields)]),
        );
        assert!(matches!(
            verdict(&target, &[entry()], MANAGER, false),
            Verdict::Write { force: false, .. }
        ));
    }

    #[test]
    fn atomic_map_recorded_as_one_leaf_is_in_sync() {
        let fields = json!({"f:spec": {"f:containers": {"k:{\"name\":\"tikv\"}": {".": {}, "f:name": {}, "f:env": {
            "k:{\"name\":\"A\"}": {".": {}, "f:name": {}, "f:valueFrom": {"f:secretKeyRef": {}}}
        }}}}});
        let target = object(
            json!([entry().value]),
            json!([managed(MANAGER, "Apply", fields)]),
        );
        assert_eq!(
            verdict(&target, &[entry()], MANAGER, false),
            Verdict::InSync
        );
    }

    #[test]
    fn shared_container_entry_is_not_a_conflict() {
        let theirs = json!({"f:spec": {"f:containers": {"k:{\"name\":\"tikv\"}": {".": {}, "f:name": {}, "f:env": {
            "k:{\"name\":\"MINE\"}": {".": {}, "f:name": {}, "f:value": {}}}}}}});
        let target = object(
            json!([{"name": "MINE", "value": "1"}, entry().value]),
            json!([
                managed("kubectl-create", "Update", theirs),
                managed(MANAGER, "Apply", our_fields())
            ]),
        );
        assert_eq!(
            verdict(&target, &[entry()], MANAGER, false),
            Verdict::InSync
        );
    }
}
