//! The grant's status and Events.

use k8s_openapi::jiff::{Timestamp, Unit};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use storagegrant_api::{
    ConditionStatus, StorageGrant, StorageGrantStatus, TargetKind, TargetState,
};
use storagegrant_core::status::{self, Observed};

use super::{Context, Error, Progress};

/// The current time in the RFC 3339 form of Kubernetes timestamps, to the second.
pub(super) fn now() -> String {
    let now = Timestamp::now()
        .round(Unit::Second)
        .unwrap_or_else(|_| Timestamp::now());
    now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The field manager of status writes, shared by all grants.
const STATUS_MANAGER: &str = "storagegrant.dev/status";

pub(super) async fn write_status(
    grant: &StorageGrant,
    observed: &Observed<'_>,
    context: &Context,
    progress: &mut Progress,
) -> Result<(), Error> {
    let status = status::compute(grant.status.as_ref(), observed, &now());
    context.metrics.record_grant(
        &grant.namespace().unwrap_or_default(),
        &grant.name_any(),
        Some(&status),
    );
    if grant.status.as_ref() == Some(&status) {
        tracing::debug!("Status unchanged");
        return Ok(());
    }
    progress.events.extend(transition_events(
        &grant.namespace().unwrap_or_default(),
        grant.status.as_ref(),
        &status,
    ));
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
    let ready = status::condition(&status, status::READY)
        .map(|condition| format!("{:?}", condition.status))
        .unwrap_or_default();
    tracing::info!(%ready, "Updated status");
    Ok(())
}

/// Warning Events for targets and credentials that turned bad since the previous status.
fn transition_events(
    namespace: &str,
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
            TargetState::Conflict | TargetState::Invalid | TargetState::Missing | TargetState::Late
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
                secondary: Some(super::targets::target_reference(
                    target.kind,
                    namespace,
                    &target.name,
                )),
            });
        }
    }
    let credentials = |status: Option<&StorageGrantStatus>| {
        status
            .and_then(|status| status::condition(status, status::CREDENTIALS_VALID))
            .map(|condition| (condition.status, condition.reason.clone()))
    };
    if let Some(condition) = status::condition(current, status::CREDENTIALS_VALID)
        && condition.status != ConditionStatus::True
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

pub(super) async fn publish_events(grant: &StorageGrant, context: &Context, events: Vec<Event>) {
    let reference = grant.object_ref(&());
    for event in events {
        if let Err(error) = context.recorder.publish(&event, &reference).await {
            tracing::warn!(%error, reason = %event.reason, "Failed to publish an Event");
        }
    }
}

pub(super) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}
