//! One reconcile of a grant, in four steps: check the credentials and keep their objects,
//! bring each target in line, remove kept objects no longer needed, and write the status.
//! The core decides; this module reads caches, writes through the API server and reports.

mod cleanup;
mod credentials;
mod probe;
mod release;
mod report;
mod targets;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Client;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{self, Event as FinalizerEvent, finalizer};
use kube::{Api, Resource, ResourceExt};
use storagegrant_api::{StorageGrant, TargetKind, names};
use storagegrant_core::credentials::{SecretData, requires_secret};
use storagegrant_core::status::Observed;

use crate::metrics::{Metrics, ReasonLabels};
use crate::watch::Stores;

/// How often a grant is reconciled with no change observed: a safety net that writes nothing
/// when nothing changed.
const RESYNC: Duration = Duration::from_secs(300);

/// After a write, how soon to look again in case no watch event arrives.
const VERIFY_AFTER_WRITE: Duration = Duration::from_secs(5);

/// A permission check of a BR ServiceAccount: (namespace, account, kind of job).
type AccessKey = (String, String, TargetKind);

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    pub stores: Arc<Stores>,
    pub metrics: Metrics,
    pub recorder: Recorder,
    /// Source Secret data by (namespace, name), with the resourceVersion it was read at, so
    /// that the data is read again only when the Secret changed.
    source_data: Mutex<HashMap<(String, String), (String, SecretData)>>,
    /// Results of BR ServiceAccount permission checks by (namespace, account, kind).
    access_reviews: Mutex<HashMap<AccessKey, (bool, Instant)>>,
    /// When each target was repaired, by (grant uid, grant generation, kind, name), for the
    /// repair budget. It lives in memory: a restarted controller starts a fresh budget.
    repairs: Mutex<HashMap<RepairKey, Vec<Instant>>>,
    /// Whether this replica holds the leader Lease; only the leader reconciles.
    pub leadership: crate::leader::Leadership,
    /// Whether this controller serves the admission webhook, so that grants selecting
    /// Backups or Restores must prove it before they read Ready.
    pub webhook_enabled: bool,
    /// Writes the server rejected (HTTP 422), by target (uid, resourceVersion), with the message.
    rejected: Mutex<HashMap<(String, String), String>>,
    /// Targets (by uid) that got the Warning before their first pod spec write.
    warned_restart: Mutex<std::collections::HashSet<String>>,
    /// Watch caches still syncing; nothing is decided on a cache that is not complete yet.
    pub readiness: Option<crate::watch::Readiness>,
    /// Grants (uid, generation) whose webhook dry-run came back mutated.
    proven: Mutex<std::collections::HashSet<(String, i64)>>,
}

type RepairKey = (String, i64, TargetKind, String);

impl Context {
    pub fn new(client: Client, stores: Arc<Stores>, metrics: Metrics, recorder: Recorder) -> Self {
        Self {
            client,
            stores,
            metrics,
            recorder,
            source_data: Mutex::default(),
            access_reviews: Mutex::default(),
            repairs: Mutex::default(),
            leadership: crate::leader::Leadership::always(),
            webhook_enabled: false,
            proven: Mutex::default(),
            rejected: Mutex::default(),
            warned_restart: Mutex::default(),
            readiness: None,
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

    #[error("failed to write the kept {kind} {name}")]
    WriteKept {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to delete the kept {kind} {name}")]
    DeleteKept {
        kind: &'static str,
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

    #[error("failed to check the permissions of ServiceAccount {account}")]
    ReviewAccess {
        account: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to add or remove the grant's finalizer")]
    Finalizer {
        #[source]
        source: Box<kube::runtime::finalizer::Error<Error>>,
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
            Self::WriteKept { .. } => "WriteKeptObjectFailed",
            Self::DeleteKept { .. } => "DeleteKeptObjectFailed",
            Self::WriteTarget { .. } => "WriteTargetFailed",
            Self::ReviewAccess { .. } => "AccessReviewFailed",
            Self::Finalizer { .. } => "FinalizerFailed",
            Self::WriteStatus { .. } => "WriteStatusFailed",
        }
    }
}

pub async fn reconcile(grant: Arc<StorageGrant>, context: Arc<Context>) -> Result<Action, Error> {
    if !context.leadership.is_leader() {
        // A standby keeps its caches warm and writes nothing; it reconciles every grant once
        // it becomes the leader.
        return Ok(Action::await_change());
    }
    // A cache that has not finished its first list would read as objects that do not exist:
    // a release would miss targets and a kept object would look free to take.
    if context
        .readiness
        .as_ref()
        .is_some_and(|readiness| !readiness.pending_caches().is_empty())
    {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let started = Instant::now();
    let span = tracing::info_span!("reconcile", grant = %grant.name_any(), namespace = grant.namespace().unwrap_or_default());
    let result =
        tracing::Instrument::instrument(reconcile_with_finalizer(grant, &context), span).await;
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
    let note = report::truncate(&chain, 1000);
    let event = Event {
        type_: EventType::Warning,
        reason: error.reason().to_owned(),
        note: Some(note),
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

/// Keeps the finalizer on the grant, so that deleting it first releases what it holds.
async fn reconcile_with_finalizer(
    grant: Arc<StorageGrant>,
    context: &Context,
) -> Result<Action, Error> {
    let api: Api<StorageGrant> = Api::namespaced(
        context.client.clone(),
        &grant.namespace().unwrap_or_default(),
    );
    let result = finalizer(&api, names::FINALIZER, grant, |event| async move {
        match event {
            FinalizerEvent::Apply(grant) => reconcile_grant(&grant, context).await,
            FinalizerEvent::Cleanup(grant) => release::release_all(grant, context).await,
        }
    })
    .await;
    match result {
        Ok(action) => Ok(action),
        Err(finalizer::Error::ApplyFailed(error) | finalizer::Error::CleanupFailed(error)) => {
            Err(error)
        }
        // The finalizer patch tests the list it read from the cache. A reconcile that ran on a
        // cached copy older than the previous reconcile's patch fails that test harmlessly, and
        // so does the removal from a grant that is already gone.
        Err(
            finalizer::Error::AddFinalizer(kube::Error::Api(status))
            | finalizer::Error::RemoveFinalizer(kube::Error::Api(status)),
        ) if status.code == 404 || status.code == 409 || status.code == 422 => {
            tracing::debug!(message = %status.message, "Finalizer patch raced a newer version; retrying");
            Ok(Action::requeue(Duration::from_millis(500)))
        }
        Err(other) => Err(Error::Finalizer {
            source: Box::new(other),
        }),
    }
}

async fn reconcile_grant(grant: &StorageGrant, context: &Context) -> Result<Action, Error> {
    let mut progress = Progress::default();

    let source = credentials::observe_source(grant, context).await?;
    let kept = credentials::keep(grant, source.as_ref(), context, &mut progress).await?;
    if let Some(problem) = &kept.problem {
        context
            .metrics
            .credential_failures
            .get_or_create(&ReasonLabels {
                reason: problem.reason().to_owned(),
            })
            .inc();
    }

    let inputs = targets::Inputs {
        credentials_valid: kept.problem.is_none(),
        kept_ready: kept.kept_ready,
        azure_account: credentials::azure_account(grant, source.as_ref()),
    };
    let targets = targets::reconcile(grant, &inputs, context, &mut progress).await?;

    if targets.settled && kept.problem.is_none() && !progress.wrote {
        cleanup::release_unneeded(grant, context, &mut progress).await?;
    }

    let webhook_problem = if kept.problem.is_none() {
        probe::webhook_problem(grant, context).await
    } else {
        None
    };
    let observed = Observed {
        generation: grant.metadata.generation,
        field_manager: names::field_manager(&grant.name_any()),
        credential_problem: kept
            .problem
            .as_ref()
            .map(|problem| (problem.reason(), problem.to_string())),
        credentials_not_required: !requires_secret(&grant.spec),
        targets: targets.outcomes,
        uninstalled_kinds: targets.uninstalled,
        wrote: progress.wrote,
        targets_problem: webhook_problem,
    };
    report::write_status(grant, &observed, context, &mut progress).await?;
    report::publish_events(grant, context, progress.events).await;

    // A write, or a webhook not proven yet, is looked at again soon even without an event.
    let waiting = progress.wrote || observed.targets_problem.is_some();
    Ok(Action::requeue(if waiting {
        VERIFY_AFTER_WRITE
    } else {
        RESYNC
    }))
}
