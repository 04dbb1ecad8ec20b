//! The target side of a grant: select the objects, learn what the checks across components
//! need, plan each one in the core and write the plans.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::LocalSubjectAccessReview;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use storagegrant_api::{Method, StorageGrant, TargetKind, TargetState, TargetStatus, names};
use storagegrant_core::selection::selects;
use storagegrant_core::target::{self, Apply, Facts};

use super::report::truncate;
use super::{Context, Error, Progress, release};
use crate::metrics::{KindLabels, ReasonLabels};
use crate::watch::api_resource;

/// The ServiceAccount TiDB Operator runs BR jobs as when a Backup names none.
const DEFAULT_BR_ACCOUNT: &str = "tidb-backup-manager";

/// How long a permission check of a BR ServiceAccount is reused.
const ACCESS_REVIEW_TTL: Duration = Duration::from_secs(60);

/// The result of the target step, for the status.
pub(super) struct Targets {
    pub outcomes: Vec<TargetStatus>,
    pub uninstalled: Vec<TargetKind>,
    /// Whether every target carries the grant's fields, so that kept objects no longer needed
    /// may be removed.
    pub settled: bool,
}

/// The input of the target step from the credential step.
pub(super) struct Inputs {
    pub credentials_valid: bool,
    pub kept_ready: bool,
    pub azure_account: Option<String>,
}

/// Repairs of one target within [`REPAIR_WINDOW`] after which the controller stops writing
/// it, because each overlay write rolls every pod of the group.
const REPAIR_BUDGET: usize = 3;
const REPAIR_WINDOW: Duration = Duration::from_secs(600);

/// Plans and writes every target the grant selects, and releases the ones it no longer does.
pub(super) async fn reconcile(
    grant: &StorageGrant,
    inputs: &Inputs,
    context: &Context,
    progress: &mut Progress,
) -> Result<Targets, Error> {
    let namespace = grant.namespace().unwrap_or_default();
    let (selected, mut outcomes, uninstalled) = select(grant, &namespace, context);
    let mut settled = uninstalled.is_empty();

    for ((kind, name), object) in &selected {
        let mut body = serde_json::to_value(&**object).unwrap_or(Value::Null);
        if body.get("apiVersion").is_none() {
            body["apiVersion"] = json!(format!("{}/{}", kind.group(), kind.version()));
        }
        let previous = previous_status(grant, *kind, name);
        let mut facts = facts(grant, *kind, &body, inputs, context).await?;
        facts.wrote_before = previous
            .as_ref()
            .is_some_and(|previous| previous.state == TargetState::InSync);
        let plan = target::plan(grant, *kind, &body, &facts);
        let mut outcome = match plan.apply {
            None => plan.outcome,
            Some(_) if !inputs.kept_ready => waiting_for_kept_objects(*kind, name),
            Some(apply) => {
                write_or_repair(
                    grant,
                    *kind,
                    &body,
                    apply,
                    plan.outcome,
                    previous.as_ref(),
                    context,
                    progress,
                )
                .await?
            }
        };
        if let Some(previous) = &previous {
            outcome.last_drift_time = outcome
                .last_drift_time
                .or_else(|| previous.last_drift_time.clone());
            outcome.repairs = outcome.repairs.or(previous.repairs);
        }
        if kind.is_group() {
            outcome.rollout = Some(rollout(&body));
        }
        // An Invalid group may still hold the old method's fields, so it keeps the old kept
        // objects alive; an Invalid job is never written at all.
        settled &= match outcome.state {
            TargetState::InSync | TargetState::Finished | TargetState::Late => true,
            TargetState::Invalid => !kind.is_group(),
            _ => false,
        };
        outcomes.push(outcome);
    }

    let in_scope = |kind: TargetKind, name: &str| selected.contains_key(&(kind, name.to_owned()));
    release::release_targets(grant, in_scope, context, progress).await?;
    Ok(Targets {
        outcomes,
        uninstalled,
        settled,
    })
}

fn previous_status(grant: &StorageGrant, kind: TargetKind, name: &str) -> Option<TargetStatus> {
    let targets = grant.status.as_ref()?.targets.as_ref()?;
    targets
        .iter()
        .find(|target| target.kind == kind && target.name == name)
        .cloned()
}

/// Describes, from the group's own status, whether TiDB Operator has rolled out its current
/// spec.
fn rollout(group: &Value) -> String {
    let number = |pointer: &str| group.pointer(pointer).and_then(Value::as_i64);
    let text = |pointer: &str| group.pointer(pointer).and_then(Value::as_str);
    let generation = number("/metadata/generation").unwrap_or_default();
    match number("/status/observedGeneration") {
        Some(observed) if observed >= generation => {}
        _ => return format!("Pending: TiDB Operator has not observed generation {generation} yet"),
    }
    let replicas = number("/status/replicas")
        .or(number("/spec/replicas"))
        .unwrap_or_default();
    let updated = number("/status/updatedReplicas").unwrap_or_default();
    if text("/status/updateRevision") != text("/status/currentRevision") || updated < replicas {
        return format!("RollingOut: {updated} of {replicas} pods updated");
    }
    "RolledOut".to_owned()
}

/// Writes a plan, counting it as a repair when the target had the grant's fields and lost
/// them, and stopping after the repair budget.
#[allow(clippy::too_many_arguments)]
async fn write_or_repair(
    grant: &StorageGrant,
    kind: TargetKind,
    object: &Value,
    apply: Apply,
    outcome: TargetStatus,
    previous: Option<&TargetStatus>,
    context: &Context,
    progress: &mut Progress,
) -> Result<TargetStatus, Error> {
    let name = outcome.name.clone();
    let same_spec = grant
        .status
        .as_ref()
        .and_then(|status| status.observed_generation)
        == grant.metadata.generation;
    let was_in_sync = previous.is_some_and(|previous| {
        matches!(previous.state, TargetState::InSync)
            || previous.reason.as_deref() == Some("RepairLoop")
    });
    let repair = (same_spec && was_in_sync) || !apply.drift.is_empty();
    if !repair {
        let outcome = write(grant, kind, object, apply, outcome, context, progress).await?;
        if outcome.state == TargetState::InSync {
            let namespace = grant.namespace().unwrap_or_default();
            progress.events.push(Event {
                type_: EventType::Normal,
                reason: "Applied".into(),
                note: Some(format!("wrote the grant's fields to {kind} {name}")),
                action: "Apply".into(),
                secondary: Some(target_reference(kind, &namespace, &name)),
            });
        }
        return Ok(outcome);
    }

    let labels = KindLabels {
        kind: kind.as_str(),
    };
    let key = (
        grant.uid().unwrap_or_default(),
        grant.metadata.generation.unwrap_or_default(),
        kind,
        name.clone(),
    );
    let recent = {
        let mut repairs = context.repairs.lock().expect("repair log lock");
        let times = repairs.entry(key.clone()).or_default();
        times.retain(|at| at.elapsed() < REPAIR_WINDOW);
        times.len()
    };
    let (field, changed_by) = drift_cause(&apply);
    if recent >= REPAIR_BUDGET {
        if previous.and_then(|previous| previous.reason.as_deref()) != Some("RepairLoop") {
            context.metrics.repair_loops.get_or_create(&labels).inc();
            let note = format!(
                "{kind} {name} drifted {recent} times in ten minutes ({field}, {changed_by}); repairs stop until the grant changes or the oldest of these repairs is ten minutes old"
            );
            let target = target_reference(kind, &grant.namespace().unwrap_or_default(), &name);
            progress.events.push(warning("RepairLoop", note, target));
        }
        let message = format!(
            "repaired {recent} times in ten minutes, so not written again, because each write restarts the group's pods; last drift: {field}, {changed_by}"
        );
        let mut looping = TargetStatus::new(
            kind,
            &name,
            TargetState::Drifted,
            Some("RepairLoop"),
            Some(message),
        );
        let already_looping =
            previous.and_then(|previous| previous.reason.as_deref()) == Some("RepairLoop");
        looping.last_drift_time =
            match previous.and_then(|previous| previous.last_drift_time.clone()) {
                Some(time) if already_looping => Some(time),
                _ => Some(now()),
            };
        return Ok(looping);
    }

    context.metrics.drift_detected.get_or_create(&labels).inc();
    let mut outcome = write(grant, kind, object, apply, outcome, context, progress).await?;
    if outcome.state == TargetState::InSync {
        context.metrics.drift_repaired.get_or_create(&labels).inc();
        context
            .repairs
            .lock()
            .expect("repair log lock")
            .entry(key)
            .or_default()
            .push(Instant::now());
        outcome.last_drift_time = Some(now());
        outcome.repairs = Some(
            previous
                .and_then(|previous| previous.repairs)
                .unwrap_or_default()
                + 1,
        );
        let note = format!("repaired {field} on {kind} {name}, {changed_by}");
        progress.events.push(Event {
            type_: EventType::Normal,
            reason: "DriftRepaired".into(),
            note: Some(note),
            action: "Repair".into(),
            secondary: Some(target_reference(
                kind,
                &grant.namespace().unwrap_or_default(),
                &name,
            )),
        });
    }
    Ok(outcome)
}

/// Names the field that drifted and who changed it, for messages.
fn drift_cause(apply: &Apply) -> (String, String) {
    if let Some(foreign) = apply.drift.first() {
        return (
            foreign.entry.clone(),
            format!("changed by {} ({})", foreign.manager, foreign.operation),
        );
    }
    let field = if apply.absent.is_empty() {
        "the grant's fields".to_owned()
    } else {
        apply.absent.join(", ")
    };
    // A removal leaves no trace in managedFields: the remover owns nothing afterwards.
    let changed_by = "removed (Kubernetes records no field manager for a removal)".to_owned();
    (field, changed_by)
}

fn warning(reason: &str, note: String, target: ObjectReference) -> Event {
    Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(truncate(&note, 1000)),
        action: "Reconcile".into(),
        secondary: Some(target),
    }
}

/// Builds the reference to the target an Event is about, for its related object. Events of one reason about different
/// targets then stay separate, where the recorder would otherwise merge them into one series.
pub(super) fn target_reference(kind: TargetKind, namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some(format!("{}/{}", kind.group(), kind.version())),
        kind: Some(kind.as_str().to_owned()),
        namespace: Some(namespace.to_owned()),
        name: Some(name.to_owned()),
        ..ObjectReference::default()
    }
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
        facts.cluster_has_identity = context
            .stores
            .cluster_has_identity(grant, kind, namespace, cluster);
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

/// Tells whether the grant's field manager already owns fields under the group's pod spec.
fn owns_pod_spec(object: &Value, manager: &str) -> bool {
    let path = [
        "f:spec",
        "f:template",
        "f:spec",
        "f:overlay",
        "f:pod",
        "f:spec",
    ];
    object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|entry| {
            entry.get("manager").and_then(Value::as_str) == Some(manager)
                && path
                    .iter()
                    .try_fold(entry.get("fieldsV1"), |node, field| {
                        node.and_then(|node| node.get(*field)).map(Some)
                    })
                    .flatten()
                    .is_some()
        })
}

fn now() -> String {
    super::report::now()
}

fn waiting_for_kept_objects(kind: TargetKind, name: &str) -> TargetStatus {
    TargetStatus {
        kind,
        name: name.to_owned(),
        state: TargetState::Drifted,
        reason: Some("WaitingForKeptObjects".into()),
        message: Some("written once the Secret or ServiceAccount it refers to is observed".into()),
        last_drift_time: None,
        repairs: None,
        rollout: None,
    }
}

async fn write(
    grant: &StorageGrant,
    kind: TargetKind,
    object: &Value,
    apply: Apply,
    outcome: TargetStatus,
    context: &Context,
    progress: &mut Progress,
) -> Result<TargetStatus, Error> {
    let name = outcome.name.clone();
    let name = name.as_str();
    let manager = names::field_manager(&grant.name_any());
    let writes_pod_spec = apply
        .body
        .pointer("/spec/template/spec/overlay/pod/spec")
        .is_some();
    let uid = object
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let version = object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if let Some(message) = context
        .rejected
        .lock()
        .expect("rejected writes lock")
        .get(&(uid.clone(), version.clone()))
    {
        // The server rejected this same write to this same version of the target already.
        return Ok(TargetStatus::new(
            kind,
            name,
            TargetState::Invalid,
            Some("RejectedByServer"),
            Some(message.clone()),
        ));
    }
    let first_spec_write = kind.is_group() && writes_pod_spec && !owns_pod_spec(object, &manager);
    if first_spec_write
        && context
            .warned_restart
            .lock()
            .expect("restart warnings lock")
            .insert(uid.clone())
    {
        let note = format!(
            "writing the grant to {kind} {name} changes its pod spec, so TiDB Operator recreates every pod of the group one by one"
        );
        let target = target_reference(kind, &grant.namespace().unwrap_or_default(), name);
        super::report::publish_events(
            grant,
            context,
            vec![warning("RollingRestart", note, target)],
        )
        .await;
    }
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
                last_drift_time: None,
                repairs: None,
                rollout: None,
            })
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(target::missing(kind, name)),
        Err(kube::Error::Api(status)) if status.code == 422 => {
            // The target's schema rejected the fields; writing again to the same version would
            // fail the same way, so it is not retried until the target changes.
            tracing::warn!(%kind, target = %name, message = %status.message, "Target rejected the grant's fields");
            context
                .rejected
                .lock()
                .expect("rejected writes lock")
                .insert((uid, version), truncate(&status.message, 1000));
            Ok(TargetStatus {
                kind,
                name: name.to_owned(),
                state: TargetState::Invalid,
                reason: Some("RejectedByServer".into()),
                message: Some(truncate(&status.message, 1000)),
                last_drift_time: None,
                repairs: None,
                rollout: None,
            })
        }
        Err(source) => Err(Error::WriteTarget {
            kind,
            name: name.to_owned(),
            source,
        }),
    }
}
