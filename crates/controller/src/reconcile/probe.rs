//! Proof that the admission webhook works for a grant: a dry-run create of a Backup (or
//! Restore) the grant selects must come back with the grant's fields before the grant reads
//! Ready, since a selected job created without them runs without credentials.

use kube::api::{DynamicObject, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Map, Value, json};
use storagegrant_api::{DriftPolicy, Provider, StorageGrant, TargetKind, TargetRef};
use storagegrant_core::desired;
use storagegrant_core::fieldset::{contains, lookup};

use super::Context;
use crate::watch::api_resource;

/// Why the webhook is not proven for the grant, as the reason and message of
/// `TargetsInSync=False`; `None` when it is, or when the grant selects no Backup or Restore.
pub(super) async fn webhook_problem(
    grant: &StorageGrant,
    context: &Context,
) -> Option<(&'static str, String)> {
    if !context.webhook_enabled || grant.spec.drift_policy() == DriftPolicy::Report {
        return None;
    }
    let key = (
        grant.uid().unwrap_or_default(),
        grant.metadata.generation.unwrap_or_default(),
    );
    if context
        .proven
        .lock()
        .expect("probe cache lock")
        .contains(&key)
    {
        return None;
    }
    for kind in [TargetKind::Backup, TargetKind::Restore] {
        let Some(target) = grant.spec.targets.iter().find(|target| target.kind == kind) else {
            continue;
        };
        match probe(grant, kind, target, context).await {
            Ok(Proof::Mutated) => {}
            Ok(Proof::Contested(message)) => return Some(("ContestedByGrants", message)),
            Ok(Proof::Unmutated) => {
                let message = format!(
                    "a dry-run create of a {kind} this grant selects was admitted without the grant's fields; \
                     check that the MutatingWebhookConfiguration storagegrant-controller reaches the controller \
                     and that the namespace has the label storagegrant.dev/webhook=enabled"
                );
                return Some(("WebhookNotReady", message));
            }
            Err(error) => {
                return Some((
                    "WebhookNotReady",
                    format!("a dry-run create of a {kind} failed: {error}"),
                ));
            }
        }
    }
    tracing::info!("Admission webhook proven with a dry-run create");
    context.proven.lock().expect("probe cache lock").insert(key);
    None
}

enum Proof {
    Mutated,
    Unmutated,
    /// The webhook replied, but another grant disagrees about the fields: the message.
    Contested(String),
}

/// Sends a dry-run create of a job the target selects and checks the response for the
/// grant's fields.
async fn probe(
    grant: &StorageGrant,
    kind: TargetKind,
    target: &TargetRef,
    context: &Context,
) -> Result<Proof, kube::Error> {
    let namespace = grant.namespace().unwrap_or_default();
    let object = sample(grant, kind, target, &namespace);
    let Ok(entries) = desired::entries(grant, kind, &object) else {
        return Ok(Proof::Mutated);
    };
    let api: Api<DynamicObject> =
        Api::namespaced_with(context.client.clone(), &namespace, &api_resource(kind));
    let request: DynamicObject = serde_json::from_value(object).expect("a valid sample object");
    let admitted = match api
        .create(
            &PostParams {
                dry_run: true,
                ..PostParams::default()
            },
            &request,
        )
        .await
    {
        Ok(admitted) => admitted,
        // A named target that exists already cannot be created again, not even as a dry run.
        // The webhook matters only for objects still to come, so this proves nothing.
        Err(kube::Error::Api(status)) if status.code == 409 => return Ok(Proof::Mutated),
        Err(error) => return Err(error),
    };
    let admitted = serde_json::to_value(admitted).unwrap_or(Value::Null);
    if let Some(message) = storagegrant_core::target::contested(grant, &admitted) {
        return Ok(Proof::Contested(message));
    }
    let mutated = entries.iter().all(|entry| {
        lookup(&admitted, &entry.path).is_some_and(|live| contains(live, &entry.value))
    });
    Ok(if mutated {
        Proof::Mutated
    } else {
        Proof::Unmutated
    })
}

/// A job of `kind` that `target` selects, with the provider block the grant needs.
fn sample(grant: &StorageGrant, kind: TargetKind, target: &TargetRef, namespace: &str) -> Value {
    let mut labels = Map::new();
    if let Some(selector) = &target.selector {
        for (key, value) in selector
            .match_labels
            .iter()
            .flat_map(|labels| labels.0.iter())
        {
            labels.insert(key.clone(), json!(value));
        }
        for requirement in selector.match_expressions.iter().flatten() {
            match requirement.operator.as_str() {
                "In" => {
                    let value = requirement
                        .values
                        .as_ref()
                        .and_then(|values| values.first())
                        .cloned()
                        .unwrap_or_default();
                    labels.insert(requirement.key.clone(), json!(value));
                }
                "Exists" => {
                    labels.insert(requirement.key.clone(), json!("probe"));
                }
                _ => {}
            }
        }
    }
    let block = match grant.spec.provider {
        Provider::Aws => json!({"s3": {"provider": "aws"}}),
        Provider::Gcp => json!({"gcs": {"projectId": "storagegrant-probe"}}),
        Provider::Azure => json!({"azblob": {"container": "storagegrant-probe"}}),
    };
    let mut spec = block;
    spec["br"] = json!({"cluster": target.cluster.clone().unwrap_or_else(|| "storagegrant-probe".to_owned())});
    let mut metadata = json!({"namespace": namespace, "labels": labels});
    match &target.name {
        Some(name) => metadata["name"] = json!(name),
        None => metadata["generateName"] = json!("storagegrant-probe-"),
    }
    json!({"apiVersion": format!("{}/{}", kind.group(), kind.version()), "kind": kind.as_str(), "metadata": metadata, "spec": spec})
}
