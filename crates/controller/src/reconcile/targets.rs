//! The target side of a grant: select the objects, learn what the checks across components
//! need, plan each one in the core and write the plans.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::LocalSubjectAccessReview;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use storagegrant_api::{Method, StorageGrant, TargetKind, TargetState, TargetStatus, names};
use storagegrant_core::selection::selects;
use storagegrant_core::target::{self, Apply, Facts};

use super::report::truncate;
use super::{Context, Error, Progress};
use crate::metrics::ReasonLabels;
use crate::watch::api_resource;

/// The ServiceAccount TiDB Operator runs BR jobs as when a Backup names none.
const DEFAULT_BR_ACCOUNT: &str = "tidb-backup-manager";

/// How long a permission check of a BR ServiceAccount is reused.
const ACCESS_REVIEW_TTL: Duration = Duration::from_secs(300);

/// What the target step returns for the status.
pub(super) struct Targets {
    pub outcomes: Vec<TargetStatus>,
    pub uninstalled: Vec<TargetKind>,
    /// Whether every target holds the grant's fields, so that kept objects no longer needed
    /// may be removed.
    pub settled: bool,
}

/// What the target step needs from the credential step.
pub(super) struct Inputs {
    pub credentials_valid: bool,
    pub kept_ready: bool,
    pub azure_account: Option<String>,
}

/// Plans and writes every target the grant selects.
pub(super) async fn reconcile(
    grant: &StorageGrant,
    inputs: &Inputs,
    context: &Context,
    progress: &mut Progress,
) -> Result<Targets, Error> {
    let namespace = grant.namespace().unwrap_or_default();
    let (selected, mut outcomes, uninstalled) = select(grant, &namespace, context);
    let mut settled = uninstalled.is_empty();

    for ((kind, name), object) in selected {
        let mut body = serde_json::to_value(&*object).unwrap_or(Value::Null);
        if body.get("apiVersion").is_none() {
            body["apiVersion"] = json!(format!("{}/{}", kind.group(), kind.version()));
        }
        let facts = facts(grant, kind, &body, inputs, context).await?;
        let plan = target::plan(grant, kind, &body, &facts);
        let outcome = match plan.apply {
            None => plan.outcome,
            Some(_) if !inputs.kept_ready => waiting_for_kept_objects(kind, &name),
            Some(apply) => {
                write(grant, kind, &name, apply, plan.outcome, context, progress).await?
            }
        };
        settled &= matches!(
            outcome.state,
            TargetState::InSync | TargetState::Finished | TargetState::Late | TargetState::Invalid
        );
        outcomes.push(outcome);
    }
    Ok(Targets {
        outcomes,
        uninstalled,
        settled,
    })
}

type Selected = BTreeMap<(TargetKind, String), Arc<DynamicObject>>;

/// The objects the grant selects, the outcomes of named targets that do not exist, and the
/// kinds whose CRD is not installed.
fn select(
    grant: &StorageGrant,
    namespace: &str,
    context: &Context,
) -> (Selected, Vec<TargetStatus>, Vec<TargetKind>) {
    let mut selected = Selected::new();
    let mut missing = Vec::new();
    let mut uninstalled = Vec::new();
    for target_ref in &grant.spec.targets {
        let kind = target_ref.kind;
        if !context.stores.is_watched(kind) {
            if !uninstalled.contains(&kind) {
                uninstalled.push(kind);
            }
            continue;
        }
        let mut found = false;
        for object in context.stores.targets_in(kind, namespace) {
            let body = serde_json::to_value(&*object).unwrap_or(Value::Null);
            if selects(target_ref, kind, &object.name_any(), object.labels(), &body) {
                found = true;
                selected.insert((kind, object.name_any()), object);
            }
        }
        if let (Some(name), false) = (&target_ref.name, found) {
            missing.push(target::missing(kind, name));
        }
    }
    (selected, missing, uninstalled)
}

/// Learns what the checks across components need for one target.
async fn facts(
    grant: &StorageGrant,
    kind: TargetKind,
    object: &Value,
    inputs: &Inputs,
    context: &Context,
) -> Result<Facts, Error> {
    let mut facts = Facts {
        credentials_valid: inputs.credentials_valid,
        azure_account: inputs.azure_account.clone(),
        ..Facts::default()
    };
    if kind.is_group() {
        return Ok(facts);
    }
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if let Some(cluster) = object.pointer("/spec/br/cluster").and_then(Value::as_str) {
        facts.cluster_has_identity = cluster_has_identity(grant, kind, namespace, cluster, context);
    }
    // Only a job that has not started can still be helped; a started one is never written.
    let started = object
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .is_some_and(|phase| !phase.is_empty());
    if !started {
        let account = match grant.spec.method {
            Method::ServiceAccountRole => grant.spec.service_account_name.clone(),
            _ => object
                .pointer("/spec/serviceAccount")
                .and_then(Value::as_str)
                .map(str::to_owned),
        }
        .unwrap_or_else(|| DEFAULT_BR_ACCOUNT.to_owned());
        if !may_update(context, namespace, &account, kind).await? {
            facts.br_account_lacking = Some(account);
        }
    }
    Ok(facts)
}

/// Whether the groups BR relies on (TiKV, and TiFlash for a Restore) of the cluster all carry
/// the grant's identity; false when the cluster has no TiKVGroup in the cache.
fn cluster_has_identity(
    grant: &StorageGrant,
    kind: TargetKind,
    namespace: &str,
    cluster: &str,
    context: &Context,
) -> bool {
    let mut kinds = vec![TargetKind::TiKvGroup];
    if kind == TargetKind::Restore {
        kinds.push(TargetKind::TiFlashGroup);
    }
    let mut found_tikv = false;
    for group_kind in kinds {
        for group in context.stores.targets_in(group_kind, namespace) {
            let body = serde_json::to_value(&*group).unwrap_or(Value::Null);
            if body.pointer("/spec/cluster/name").and_then(Value::as_str) != Some(cluster) {
                continue;
            }
            found_tikv |= group_kind == TargetKind::TiKvGroup;
            if !target::group_carries_identity(grant, group_kind, &body) {
                return false;
            }
        }
    }
    found_tikv
}

/// Whether `account` may update Backups (or Restores) in `namespace`, as TiDB Operator's
/// backup manager role allows; asked through a LocalSubjectAccessReview and cached.
async fn may_update(
    context: &Context,
    namespace: &str,
    account: &str,
    kind: TargetKind,
) -> Result<bool, Error> {
    let key = (namespace.to_owned(), account.to_owned(), kind);
    if let Some((allowed, at)) = context
        .access_reviews
        .lock()
        .expect("access review cache lock")
        .get(&key)
        && at.elapsed() < ACCESS_REVIEW_TTL
    {
        return Ok(*allowed);
    }
    let review: LocalSubjectAccessReview = serde_json::from_value(json!({
        "metadata": {"namespace": namespace},
        "spec": {
            "user": format!("system:serviceaccount:{namespace}:{account}"),
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}")],
            "resourceAttributes": {"namespace": namespace, "group": kind.group(), "resource": kind.plural(), "verb": "update"},
        },
    }))
    .expect("a valid LocalSubjectAccessReview");
    let api: Api<LocalSubjectAccessReview> = Api::namespaced(context.client.clone(), namespace);
    let response = api
        .create(&PostParams::default(), &review)
        .await
        .map_err(|source| Error::ReviewAccess {
            account: account.to_owned(),
            source,
        })?;
    let allowed = response.status.is_some_and(|status| status.allowed);
    context
        .access_reviews
        .lock()
        .expect("access review cache lock")
        .insert(key, (allowed, Instant::now()));
    Ok(allowed)
}

fn waiting_for_kept_objects(kind: TargetKind, name: &str) -> TargetStatus {
    TargetStatus {
        kind,
        name: name.to_owned(),
        state: TargetState::Drifted,
        reason: Some("WaitingForKeptObjects".into()),
        message: Some("written once the Secret or ServiceAccount it refers to is observed".into()),
    }
}

async fn write(
    grant: &StorageGrant,
    kind: TargetKind,
    name: &str,
    apply: Apply,
    outcome: TargetStatus,
    context: &Context,
    progress: &mut Progress,
) -> Result<TargetStatus, Error> {
    let namespace = grant.namespace().unwrap_or_default();
    let api: Api<DynamicObject> =
        Api::namespaced_with(context.client.clone(), &namespace, &api_resource(kind));
    let mut params = PatchParams::apply(&names::field_manager(&grant.name_any()));
    params.force = apply.force;
    match api.patch(name, &params, &Patch::Apply(&apply.body)).await {
        Ok(_) => {
            context.metrics.count_write(kind.as_str());
            progress.wrote = true;
            tracing::info!(%kind, target = %name, force = apply.force, "Applied grant to target");
            let note = match apply.drift.first() {
                Some(foreign) => format!(
                    "repaired {} on {kind} {name}, changed by {} ({})",
                    foreign.entry, foreign.manager, foreign.operation
                ),
                None => format!("wrote the grant's fields to {kind} {name}"),
            };
            let reason = if apply.drift.is_empty() {
                "Applied"
            } else {
                "DriftRepaired"
            };
            progress.events.push(Event {
                type_: EventType::Normal,
                reason: reason.into(),
                note: Some(note),
                action: "Apply".into(),
                secondary: None,
            });
            Ok(outcome)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let deleted = status.message.contains("uid") || status.message.contains("UID");
            if deleted {
                tracing::info!(%kind, target = %name, "Target was replaced or deleted before the write");
                return Ok(target::missing(kind, name));
            }
            context
                .metrics
                .conflicts
                .get_or_create(&ReasonLabels {
                    reason: "ApplyConflict".into(),
                })
                .inc();
            Ok(TargetStatus {
                kind,
                name: name.to_owned(),
                state: TargetState::Conflict,
                reason: Some("ApplyConflict".into()),
                message: Some(truncate(&status.message, 1000)),
            })
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(target::missing(kind, name)),
        Err(kube::Error::Api(status)) if status.code == 422 => {
            // The target's schema rejected the fields; writing again would fail the same way.
            tracing::warn!(%kind, target = %name, message = %status.message, "Target rejected the grant's fields");
            Ok(TargetStatus {
                kind,
                name: name.to_owned(),
                state: TargetState::Invalid,
                reason: Some("RejectedByServer".into()),
                message: Some(truncate(&status.message, 1000)),
            })
        }
        Err(source) => Err(Error::WriteTarget {
            kind,
            name: name.to_owned(),
            source,
        }),
    }
}
