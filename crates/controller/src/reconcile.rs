//! One reconcile of a grant, in four steps: observe the credentials, keep the Secret, bring
//! each target in line, and write the status. The core decides; this module reads caches,
//! writes through the API server and reports.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{Timestamp, Unit};
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};
use storagegrant_api::{
    StorageGrant, StorageGrantStatus, TargetKind, TargetState, TargetStatus, names,
};
use storagegrant_core::credentials::{self, CredentialError, SecretData};
use storagegrant_core::kept::{self, KeptState};
use storagegrant_core::selection::selects;
use storagegrant_core::status::{self, Observed};
use storagegrant_core::target::{self, Apply};

use crate::metrics::{Metrics, ReasonLabels};
use crate::watch::{Stores, api_resource};

/// How often a grant is reconciled with no change observed: a safety net that writes nothing
/// when nothing changed.
const RESYNC: Duration = Duration::from_secs(300);

/// After a write, how soon to look again in case no watch event arrives.
const VERIFY_AFTER_WRITE: Duration = Duration::from_secs(5);

/// The field manager of status writes, shared by all grants.
const STATUS_MANAGER: &str = "storagegrant.dev/status";

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    pub stores: Arc<Stores>,
    pub metrics: Metrics,
    pub recorder: Recorder,
    /// Source Secret data by (namespace, name), with the resourceVersion it was read at, so
    /// that the data is read again only when the Secret changed.
    source_data: Mutex<HashMap<(String, String), (String, SecretData)>>,
}

impl Context {
    pub fn new(client: Client, stores: Arc<Stores>, metrics: Metrics, recorder: Recorder) -> Self {
        Self {
            client,
            stores,
            metrics,
            recorder,
            source_data: Mutex::default(),
        }
    }
}

/// A failure that ends a reconcile early; the grant is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read Secret {name}")]
    ReadSecret {
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to write the kept Secret {name}")]
    WriteKeptSecret {
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to write {kind} {name}")]
    WriteTarget {
        kind: TargetKind,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to write the grant's status")]
    WriteStatus {
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// A bounded label for metrics and the Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ReadSecret { .. } => "ReadSecretFailed",
            Self::WriteKeptSecret { .. } => "WriteKeptSecretFailed",
            Self::WriteTarget { .. } => "WriteTargetFailed",
            Self::WriteStatus { .. } => "WriteStatusFailed",
        }
    }
}

pub async fn reconcile(grant: Arc<StorageGrant>, context: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let span = tracing::info_span!("reconcile", grant = %grant.name_any(), namespace = grant.namespace().unwrap_or_default());
    let result = tracing::Instrument::instrument(reconcile_grant(&grant, &context), span).await;
    let outcome = if result.is_ok() { "success" } else { "error" };
    context
        .metrics
        .observe_reconcile(outcome, started.elapsed());
    result
}

pub fn error_policy(grant: Arc<StorageGrant>, error: &Error, context: Arc<Context>) -> Action {
    let chain = error_chain(error);
    tracing::warn!(grant = %grant.name_any(), namespace = grant.namespace().unwrap_or_default(), reason = error.reason(), error = %chain, "Failed to reconcile");
    let recorder = context.recorder.clone();
    let reference = grant.object_ref(&());
    let event = Event {
        type_: EventType::Warning,
        reason: error.reason().to_owned(),
        note: Some(truncate(&chain, 1000)),
        action: "Reconcile".into(),
        secondary: None,
    };
    tokio::spawn(async move {
        if let Err(error) = recorder.publish(&event, &reference).await {
            tracing::debug!(%error, "Failed to publish an Event");
        }
    });
    Action::requeue(Duration::from_secs(10))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// What the reconcile did on the way, for status and events.
#[derive(Default)]
struct Progress {
    wrote: bool,
    events: Vec<Event>,
}

async fn reconcile_grant(grant: &StorageGrant, context: &Context) -> Result<Action, Error> {
    // NOTE: release of the grant's fields on deletion is not done yet; a deleted grant leaves
    // its env entries on the targets, and its kept Secret goes with the grant (ownerReference).
    if grant.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let mut progress = Progress::default();

    let source = observe_source(grant, context).await?;

    let (credential_problem, kept_ready) =
        keep_secret(grant, source.as_ref(), context, &mut progress).await?;
    if let Some(problem) = &credential_problem {
        context
            .metrics
            .credential_failures
            .get_or_create(&ReasonLabels {
                reason: problem.reason().to_owned(),
            })
            .inc();
    }

    let (targets, uninstalled_kinds) = reconcile_targets(
        grant,
        credential_problem.is_none(),
        kept_ready,
        context,
        &mut progress,
    )
    .await?;

    let observed = Observed {
        generation: grant.metadata.generation,
        field_manager: names::field_manager(&grant.name_any()),
        credential_problem: credential_problem
            .as_ref()
            .map(|problem| (problem.reason(), problem.to_string())),
        credentials_not_required: !credentials::requires_secret(&grant.spec),
        targets,
        uninstalled_kinds,
        wrote: progress.wrote,
    };
    write_status(grant, &observed, context, &mut progress).await?;
    publish_events(grant, context, progress.events).await;

    Ok(Action::requeue(if progress.wrote {
        VERIFY_AFTER_WRITE
    } else {
        RESYNC
    }))
}

/// Reads the source Secret's data, from the cache unless its resourceVersion moved.
async fn observe_source(
    grant: &StorageGrant,
    context: &Context,
) -> Result<Option<SecretData>, Error> {
    let Some(secret_ref) = &grant.spec.secret_ref else {
        return Ok(None);
    };
    let namespace = grant.namespace().unwrap_or_default();
    let Some(metadata) = context.stores.secret_metadata(&namespace, &secret_ref.name) else {
        return Ok(None);
    };
    let version = metadata.resource_version().unwrap_or_default();
    let key = (namespace.clone(), secret_ref.name.clone());
    if let Some((cached_version, data)) = context
        .source_data
        .lock()
        .expect("source cache lock")
        .get(&key)
        && *cached_version == version
    {
        return Ok(Some(data.clone()));
    }

    let api: Api<Secret> = Api::namespaced(context.client.clone(), &namespace);
    let secret = api
        .get_opt(&secret_ref.name)
        .await
        .map_err(|source| Error::ReadSecret {
            name: secret_ref.name.clone(),
            source,
        })?;
    let Some(secret) = secret else {
        return Ok(None);
    };
    let data: SecretData = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(key, value)| (key, value.0))
        .collect();
    let read_version = secret.metadata.resource_version.unwrap_or_default();
    context
        .source_data
        .lock()
        .expect("source cache lock")
        .insert(key, (read_version, data.clone()));
    tracing::debug!(secret = %secret_ref.name, "Read source Secret");
    Ok(Some(data))
}

/// Checks the credentials and writes the kept Secret when it differs. Returns the credential
/// problem, if any, and whether the kept Secret is in the cache as desired, so that targets
/// may point at it.
async fn keep_secret(
    grant: &StorageGrant,
    source: Option<&SecretData>,
    context: &Context,
    progress: &mut Progress,
) -> Result<(Option<CredentialError>, bool), Error> {
    let data = match credentials::kept_secret_data(&grant.spec, source) {
        Ok(Some(data)) => data,
        Ok(None) => return Ok((None, true)),
        Err(problem) => return Ok((Some(problem), false)),
    };
    let namespace = grant.namespace().unwrap_or_default();
    let name = names::kept_secret(&grant.name_any());
    let desired = kept::secret_body(grant, &data);
    let existing = existing_kept_secret(context, &namespace, &name);
    match kept::kept_state(grant, existing.as_ref(), &desired) {
        KeptState::InSync => Ok((None, true)),
        KeptState::Taken => Ok((
            Some(CredentialError::SecretNameTaken { secret: name }),
            false,
        )),
        KeptState::Absent | KeptState::Differs => {
            let api: Api<Secret> = Api::namespaced(context.client.clone(), &namespace);
            // The grant controls this Secret, so it takes back fields anyone else changed.
            let params = PatchParams::apply(&names::field_manager(&grant.name_any())).force();
            api.patch(&name, &params, &Patch::Apply(&desired))
                .await
                .map_err(|source| Error::WriteKeptSecret {
                    name: name.clone(),
                    source,
                })?;
            context.metrics.count_write("Secret");
            progress.wrote = true;
            tracing::info!(secret = %name, "Wrote kept Secret");
            Ok((None, false))
        }
    }
}

/// The kept Secret as JSON: from the labelled cache with its data, or only its metadata when
/// a Secret of that name exists without the label.
fn existing_kept_secret(context: &Context, namespace: &str, name: &str) -> Option<Value> {
    if let Some(secret) = context.stores.kept_secret(namespace, name) {
        return serde_json::to_value(&*secret).ok();
    }
    let metadata = context.stores.secret_metadata(namespace, name)?;
    Some(json!({"metadata": serde_json::to_value(&metadata.metadata).ok()?}))
}

/// Plans and writes every target; returns their outcomes and the target kinds not installed.
async fn reconcile_targets(
    grant: &StorageGrant,
    credentials_valid: bool,
    kept_ready: bool,
    context: &Context,
    progress: &mut Progress,
) -> Result<(Vec<TargetStatus>, Vec<TargetKind>), Error> {
    let namespace = grant.namespace().unwrap_or_default();
    let mut uninstalled = Vec::new();
    let mut selected: BTreeMap<(TargetKind, String), Arc<DynamicObject>> = BTreeMap::new();
    let mut outcomes = Vec::new();

    for target_ref in &grant.spec.targets {
        let kind = target_ref.kind;
        if !context.stores.is_watched(kind) {
            if !uninstalled.contains(&kind) {
                uninstalled.push(kind);
            }
            continue;
        }
        let mut found = false;
        for object in context.stores.targets_in(kind, &namespace) {
            let body = serde_json::to_value(&*object).unwrap_or(Value::Null);
            if selects(target_ref, kind, &object.name_any(), object.labels(), &body) {
                found = true;
                selected.insert((kind, object.name_any()), object);
            }
        }
        if let (Some(name), false) = (&target_ref.name, found) {
            outcomes.push(target::missing(kind, name));
        }
    }

    for ((kind, name), object) in selected {
        let mut body = serde_json::to_value(&*object).unwrap_or(Value::Null);
        if body.get("apiVersion").is_none() {
            body["apiVersion"] = json!(format!("{}/{}", kind.group(), kind.version()));
        }
        let plan = target::plan(grant, kind, &body, credentials_valid);
        let outcome = match plan.apply {
            None => plan.outcome,
            Some(_) if !kept_ready => waiting_for_kept_secret(kind, &name),
            Some(apply) => {
                write_target(grant, kind, &name, apply, plan.outcome, context, progress).await?
            }
        };
        outcomes.push(outcome);
    }
    Ok((outcomes, uninstalled))
}

fn waiting_for_kept_secret(kind: TargetKind, name: &str) -> TargetStatus {
    TargetStatus {
        kind,
        name: name.to_owned(),
        state: TargetState::Drifted,
        reason: Some("WaitingForKeptSecret".into()),
        message: Some("written once the kept Secret it refers to is observed".into()),
    }
}

async fn write_target(
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
        Err(source) => Err(Error::WriteTarget {
            kind,
            name: name.to_owned(),
            source,
        }),
    }
}

async fn write_status(
    grant: &StorageGrant,
    observed: &Observed<'_>,
    context: &Context,
    progress: &mut Progress,
) -> Result<(), Error> {
    let now = Timestamp::now()
        .round(Unit::Second)
        .unwrap_or_else(|_| Timestamp::now());
    let status = status::compute(
        grant.status.as_ref(),
        observed,
        &now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    );
    if grant.status.as_ref() == Some(&status) {
        tracing::debug!("Status unchanged");
        return Ok(());
    }
    progress
        .events
        .extend(transition_events(grant.status.as_ref(), &status));
    let api: Api<StorageGrant> = Api::namespaced(
        context.client.clone(),
        &grant.namespace().unwrap_or_default(),
    );
    let body = json!({"apiVersion": StorageGrant::api_version(&()), "kind": StorageGrant::kind(&()), "status": status});
    api.patch_status(
        &grant.name_any(),
        &PatchParams::apply(STATUS_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| Error::WriteStatus { source })?;
    context.metrics.count_write("StorageGrant/status");
    tracing::info!(ready = ?status::condition(&status, status::READY).map(|condition| condition.status), "Updated status");
    Ok(())
}

/// Warning Events for targets and credentials that turned bad since the previous status.
fn transition_events(
    previous: Option<&StorageGrantStatus>,
    current: &StorageGrantStatus,
) -> Vec<Event> {
    let mut events = Vec::new();
    let before = |kind: TargetKind, name: &str| {
        previous
            .and_then(|status| status.targets.as_ref())
            .into_iter()
            .flatten()
            .find(|target| target.kind == kind && target.name == name)
            .map(|target| target.state)
    };
    for target in current.targets.iter().flatten() {
        let bad = matches!(
            target.state,
            TargetState::Conflict | TargetState::Invalid | TargetState::Missing
        );
        if bad && before(target.kind, &target.name) != Some(target.state) {
            let reason = format!("Target{:?}", target.state);
            let note = format!(
                "{} {}: {}",
                target.kind,
                target.name,
                target.message.as_deref().unwrap_or_default()
            );
            events.push(Event {
                type_: EventType::Warning,
                reason,
                note: Some(truncate(&note, 1000)),
                action: "Reconcile".into(),
                secondary: None,
            });
        }
    }
    let credentials = |status: Option<&StorageGrantStatus>| {
        status
            .and_then(|status| status::condition(status, status::CREDENTIALS_VALID))
            .map(|condition| (condition.status, condition.reason.clone()))
    };
    if let Some(condition) = status::condition(current, status::CREDENTIALS_VALID)
        && condition.status != storagegrant_api::ConditionStatus::True
        && credentials(previous) != credentials(Some(current))
    {
        events.push(Event {
            type_: EventType::Warning,
            reason: condition.reason.clone(),
            note: Some(truncate(&condition.message, 1000)),
            action: "CheckCredentials".into(),
            secondary: None,
        });
    }
    events
}

async fn publish_events(grant: &StorageGrant, context: &Context, events: Vec<Event>) {
    let reference = grant.object_ref(&());
    for event in events {
        if let Err(error) = context.recorder.publish(&event, &reference).await {
            tracing::warn!(%error, reason = %event.reason, "Failed to publish an Event");
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}
