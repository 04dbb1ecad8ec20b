//! The objects the controller keeps for a grant: a Secret in the layout TiDB reads, and the
//! ServiceAccount that carries an IRSA role.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use storagegrant_api::{StorageGrant, names};

use crate::credentials::SecretData;
use crate::desired::IRSA_ANNOTATION;

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

/// Whether the grant is the controller owner of an object, from its metadata.
pub fn controlled_by(grant: &StorageGrant, existing: &Value) -> bool {
    existing
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|owner| {
            owner.get("controller") == Some(&Value::Bool(true))
                && owner.get("uid").and_then(Value::as_str) == grant.metadata.uid.as_deref()
        })
}

/// How the grant relates to the ServiceAccount named by `spec.serviceAccountName`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountState {
    /// No such ServiceAccount: create it, owned by the grant.
    Absent,
    /// Created by this grant, or adopted, and annotated with the role.
    InSync { adopted: bool },
    /// Created by this grant, or adopted, but without the role annotation: apply it.
    Differs { adopted: bool },
    /// Someone else's ServiceAccount without the opt-in label: never touched.
    NotAdoptable,
}

/// Compares an existing ServiceAccount's metadata (as JSON, `None` when absent) with what
/// the grant needs on it.
pub fn account_state(
    grant: &StorageGrant,
    existing: Option<&Value>,
    role_arn: &str,
) -> AccountState {
    let Some(existing) = existing else {
        return AccountState::Absent;
    };
    let adopted = if controlled_by(grant, existing) {
        false
    } else if existing
        .pointer("/metadata/labels")
        .and_then(|labels| labels.get(names::ADOPT_LABEL))
        .and_then(Value::as_str)
        == Some("true")
    {
        true
    } else {
        return AccountState::NotAdoptable;
    };
    let annotation = existing
        .pointer("/metadata/annotations")
        .and_then(|annotations| annotations.get(IRSA_ANNOTATION))
        .and_then(Value::as_str);
    if annotation == Some(role_arn) {
        AccountState::InSync { adopted }
    } else {
        AccountState::Differs { adopted }
    }
}

/// The body of the server-side apply of the ServiceAccount. An adopted one gets only the role
/// annotation, so that the grant takes over nothing else on it.
pub fn account_body(grant: &StorageGrant, account: &str, role_arn: &str, adopted: bool) -> Value {
    let grant_name = grant.metadata.name.as_deref().unwrap_or_default();
    let mut metadata = json!({
        "name": account,
        "namespace": grant.metadata.namespace,
        "annotations": {IRSA_ANNOTATION: role_arn},
    });
    if !adopted {
        metadata["labels"] = json!({names::GRANT_LABEL: names::grant_label_value(grant_name)});
        metadata["ownerReferences"] = json!([owner_reference(grant)]);
    }
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata})
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
    // Only the grant's own keys count: a key someone else added is not the grant's to remove,
    // and comparing it would make every reconcile write.
    let existing_data = existing.get("data").and_then(Value::as_object);
    let same_data = desired
        .get("data")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .all(|(key, value)| existing_data.and_then(|data| data.get(key)) == Some(value));
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
    fn account_states_follow_ownership_and_label() {
        let arn = "arn:aws:iam::123456789012:role/br";
        assert_eq!(account_state(&grant(), None, arn), AccountState::Absent);
        let foreign = json!({"metadata": {"name": "br"}});
        assert_eq!(
            account_state(&grant(), Some(&foreign), arn),
            AccountState::NotAdoptable
        );
        let labelled = json!({"metadata": {"name": "br", "labels": {names::ADOPT_LABEL: "true"}}});
        assert_eq!(
            account_state(&grant(), Some(&labelled), arn),
            AccountState::Differs { adopted: true }
        );
        let created = account_body(&grant(), "br", arn, false);
        assert_eq!(
            account_state(&grant(), Some(&created), arn),
            AccountState::InSync { adopted: false }
        );
    }

    #[test]
    fn adopted_account_body_has_only_annotation() {
        let body = account_body(&grant(), "br", "arn:aws:iam::123456789012:role/br", true);
        assert_eq!(
            body["metadata"]["annotations"][IRSA_ANNOTATION],
            "arn:aws:iam::123456789012:role/br"
        );
        assert!(body["metadata"].get("labels").is_none());
        assert!(body["metadata"].get("ownerReferences").is_none());
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
        let mut extra_key = desired.clone();
        extra_key["data"]["added-by-hand"] = json!("eA==");
        assert_eq!(
            kept_state(&grant(), Some(&extra_key), &desired),
            KeptState::InSync
        );
    }
}
