//! The Secret the controller keeps for a grant, in the layout TiDB reads.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use storagegrant_api::{StorageGrant, names};

use crate::credentials::SecretData;

/// The body of the server-side apply that creates or updates the kept Secret. It is written
/// with `data`, never `stringData`, so that it compares equal with what the server returns.
pub fn secret_body(grant: &StorageGrant, data: &SecretData) -> Value {
    let grant_name = grant.metadata.name.as_deref().unwrap_or_default();
    let encoded: BTreeMap<&String, String> = data
        .iter()
        .map(|(key, value)| (key, STANDARD.encode(value)))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": names::kept_secret(grant_name),
            "namespace": grant.metadata.namespace,
            "labels": {names::GRANT_LABEL: names::grant_label_value(grant_name)},
            "ownerReferences": [owner_reference(grant)],
        },
        "type": "Opaque",
        "data": encoded,
    })
}

fn owner_reference(grant: &StorageGrant) -> Value {
    json!({
        "apiVersion": "storagegrant.dev/v1alpha1",
        "kind": "StorageGrant",
        "name": grant.metadata.name,
        "uid": grant.metadata.uid,
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// What the grant may do with an existing object of the kept Secret's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeptState {
    /// No such object: create it.
    Absent,
    /// Controlled by this grant and equal to the desired one.
    InSync,
    /// Controlled by this grant but different: update it.
    Differs,
    /// Someone else's object: never overwritten.
    Taken,
}

/// Compares the existing object (its metadata and data as the server returns them) with the
/// desired Secret.
pub fn kept_state(grant: &StorageGrant, existing: Option<&Value>, desired: &Value) -> KeptState {
    let Some(existing) = existing else {
        return KeptState::Absent;
    };
    let controlled = existing
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|owner| {
            owner.get("controller") == Some(&Value::Bool(true))
                && owner.get("uid").and_then(Value::as_str) == grant.metadata.uid.as_deref()
        });
    if !controlled {
        return KeptState::Taken;
    }
    let same_data =
        existing.get("data").unwrap_or(&Value::Null) == desired.get("data").unwrap_or(&Value::Null);
    let label = desired
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .all(|(key, value)| {
            existing
                .pointer("/metadata/labels")
                .and_then(|labels| labels.get(key))
                == Some(value)
        });
    if same_data && label {
        KeptState::InSync
    } else {
        KeptState::Differs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> StorageGrant {
        serde_yaml::from_str(
            "{apiVersion: storagegrant.dev/v1alpha1, kind: StorageGrant, metadata: {name: g, namespace: tidb, uid: u1}, \
             spec: {provider: AWS, method: AccessKey, secretRef: {name: s}, targets: [{kind: TiKVGroup, name: t}]}}",
        )
        .unwrap()
    }

    fn data() -> SecretData {
        [("access_key".to_owned(), b"AKIAIOSFODNN7EXAMPLE".to_vec())]
            .into_iter()
            .collect()
    }

    #[test]
    fn body_is_owned_labelled_and_base64() {
        let body = secret_body(&grant(), &data());
        assert_eq!(body["metadata"]["name"], "g-storagegrant");
        assert_eq!(body["metadata"]["labels"][names::GRANT_LABEL], "g");
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "u1");
        assert_eq!(
            body["data"]["access_key"],
            STANDARD.encode("AKIAIOSFODNN7EXAMPLE")
        );
        assert!(body.get("stringData").is_none());
    }

    #[test]
    fn foreign_secret_of_same_name_is_taken() {
        let desired = secret_body(&grant(), &data());
        let foreign = json!({"metadata": {"name": "g-storagegrant"}, "data": desired["data"]});
        assert_eq!(
            kept_state(&grant(), Some(&foreign), &desired),
            KeptState::Taken
        );
    }

    #[test]
    fn own_secret_compares_data() {
        let desired = secret_body(&grant(), &data());
        assert_eq!(
            kept_state(&grant(), Some(&desired), &desired),
            KeptState::InSync
        );
        let mut changed = desired.clone();
        changed["data"]["access_key"] = json!("b3RoZXI=");
        assert_eq!(
            kept_state(&grant(), Some(&changed), &desired),
            KeptState::Differs
        );
        assert_eq!(kept_state(&grant(), None, &desired), KeptState::Absent);
    }
}
