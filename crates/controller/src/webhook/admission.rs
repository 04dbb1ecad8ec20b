//! The mutating admission webhook: a Backup or Restore being created gets the fields of every
//! grant in its namespace that selects it, computed by the same core code as the reconciler.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::api::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::Value;
use storagegrant_api::{ConditionStatus, DriftPolicy, StorageGrant, TargetKind, names};
use storagegrant_core::fieldset::{Entry, apply_body, contains, display_path, lookup};
use storagegrant_core::selection::grant_selects;
use storagegrant_core::target::ContestedRecord;
use storagegrant_core::{desired, status};

use crate::watch::Stores;

/// The outcome of one admission, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Mutated,
    Unchanged,
    Contested,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mutated => "mutated",
            Self::Unchanged => "unchanged",
            Self::Contested => "contested",
            Self::Error => "error",
        }
    }
}

/// Builds the response to one AdmissionReview. The object is always admitted; only the
/// patch varies.
pub fn review(
    stores: &Stores,
    review: AdmissionReview<DynamicObject>,
) -> (AdmissionReview<DynamicObject>, Outcome, Option<TargetKind>) {
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(error) => {
            tracing::warn!(%error, "Received an invalid AdmissionReview");
            return (
                AdmissionResponse::invalid(error.to_string()).into_review(),
                Outcome::Error,
                None,
            );
        }
    };
    let kind = TargetKind::from_kind(&request.kind.kind).filter(|kind| !kind.is_group());
    let response = AdmissionResponse::from(&request);
    let (Some(kind), Operation::Create, Some(object)) = (kind, &request.operation, &request.object)
    else {
        return (response.into_review(), Outcome::Unchanged, kind);
    };
    let namespace = request.namespace.clone().unwrap_or_default();
    let mut body = serde_json::to_value(object).unwrap_or(Value::Null);
    body["metadata"]["namespace"] = Value::String(namespace.clone());

    let (entries, contested) = merged_entries(stores, kind, &namespace, &body);
    let mut patched = apply_body(body.clone(), &entries);
    if !contested.fields.is_empty() {
        tracing::warn!(%kind, %namespace, fields = ?contested.fields, grants = ?contested.grants, "Grants disagree on fields of a new object; none of those is written");
        // Recorded on the object, so that whichever replica reconciles the grants reports
        // both as Conflict.
        let record = serde_json::to_string(&contested).expect("a record serializes");
        patched["metadata"]["annotations"][names::CONTESTED_ANNOTATION] = Value::String(record);
    }
    let patch = json_patch::diff(&body, &patched);
    let outcome = match (patch.0.is_empty(), contested.fields.is_empty()) {
        (_, false) => Outcome::Contested,
        (true, true) => Outcome::Unchanged,
        (false, true) => Outcome::Mutated,
    };
    if patch.0.is_empty() {
        return (response.into_review(), outcome, Some(kind));
    }
    match response.with_patch(patch) {
        Ok(response) => {
            tracing::info!(%kind, %namespace, name = %request.name, fields = entries.len(), "Admitted with the grants' fields");
            (response.into_review(), outcome, Some(kind))
        }
        Err(error) => {
            tracing::warn!(%error, "Failed to serialize an admission patch");
            (
                AdmissionResponse::from(&request).into_review(),
                Outcome::Error,
                Some(kind),
            )
        }
    }
}

/// Collects the entries of every grant that selects the object. Fields that two grants set to
/// different values are left out and returned as contested.
fn merged_entries(
    stores: &Stores,
    kind: TargetKind,
    namespace: &str,
    body: &Value,
) -> (Vec<Entry>, ContestedRecord) {
    let name = body
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let labels: BTreeMap<String, String> = body
        .pointer("/metadata/labels")
        .and_then(|labels| serde_json::from_value(labels.clone()).ok())
        .unwrap_or_default();
    let mut by_path: BTreeMap<String, (Entry, String)> = BTreeMap::new();
    let mut contested = ContestedRecord::default();
    for grant in stores.grants_in(namespace) {
        if !writes_on_admission(&grant) || !grant_selects(&grant, kind, name, &labels, body) {
            continue;
        }
        if storagegrant_core::target::blocking_job_problem(body).is_some() {
            continue;
        }
        let Ok(mut entries) = desired::entries(&grant, kind, body) else {
            continue;
        };
        // A value the creator set is left to the creator; the reconciler reports it.
        entries.retain(|entry| {
            lookup(body, &entry.path).is_none_or(|live| contains(live, &entry.value))
        });
        let cluster = body
            .pointer("/spec/br/cluster")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if stores.cluster_has_identity(&grant, kind, namespace, cluster) {
            entries.push(desired::send_cred_to_tikv_off());
        }
        let grant_name = grant.metadata.name.clone().unwrap_or_default();
        for entry in entries {
            let path = display_path(&entry.path);
            match by_path.get(&path) {
                Some((existing, owner)) if existing.value != entry.value => {
                    for name in [owner.clone(), grant_name.clone()] {
                        if !contested.grants.contains(&name) {
                            contested.grants.push(name);
                        }
                    }
                    if !contested.fields.contains(&path) {
                        contested.fields.push(path);
                    }
                }
                Some(_) => {}
                None => {
                    by_path.insert(path, (entry, grant_name.clone()));
                }
            }
        }
    }
    for path in &contested.fields {
        by_path.remove(path);
    }
    (
        by_path.into_values().map(|(entry, _)| entry).collect(),
        contested,
    )
}

/// Tells whether a grant writes new objects. It must correct drift, and its credentials must
/// have been valid when last reconciled, so that the fields point at a kept Secret that exists.
fn writes_on_admission(grant: &Arc<StorageGrant>) -> bool {
    if grant.spec.drift_policy() == DriftPolicy::Report {
        return false;
    }
    let Some(status) = grant.status.as_ref() else {
        return false;
    };
    // A status of an older generation may describe another method and another kept object.
    status.observed_generation == grant.metadata.generation
        && status::condition(status, status::CREDENTIALS_VALID)
            .is_some_and(|condition| condition.status == ConditionStatus::True)
}
