//! The plan for one target: its state for the status and the write, if any, that makes the
//! grant true on it.

use serde_json::{Value, json};
use storagegrant_api::{
    DriftPolicy, Method, StorageGrant, TargetKind, TargetState, TargetStatus, names,
};

use crate::desired::{self, Unsuitable};
use crate::fieldset::{Entry, apply_body, contains, lookup};
use crate::ownership::{ForeignField, Verdict, verdict};

/// Phases after which a Backup or Restore runs no more, as TiDB Operator names them.
// NOTE: taken from TiDB Operator's Backup and Restore phase names (Complete, Failed, Clean,
// CleanFailed, Stopped); a phase the operator adds later counts as started, not finished.
const FINISHED_PHASES: [&str; 5] = ["Complete", "Failed", "Clean", "CleanFailed", "Stopped"];

/// Environment variables that carry storage credentials; a Backup's own `spec.env` entry of
/// one of these overrides the grant, since the operator appends that list last.
const CREDENTIAL_VARIABLES: [&str; 9] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_STORAGE_ACCOUNT",
    "AZURE_STORAGE_KEY",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
];

/// A server-side apply to a target.
#[derive(Debug, Clone, PartialEq)]
pub struct Apply {
    pub body: Value,
    pub force: bool,
    /// Fields taken back from hand edits.
    pub drift: Vec<ForeignField>,
    /// Entries that were missing or different, by label.
    pub absent: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetPlan {
    /// The state to report if the write (when there is one) succeeds.
    pub outcome: TargetStatus,
    pub apply: Option<Apply>,
}

/// Facts about a target's surroundings, for the checks across components.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    pub credentials_valid: bool,
    /// For a Backup or Restore: whether every group of its cluster that BR relies on (TiKV,
    /// and TiFlash for a Restore) carries the grant's identity.
    pub cluster_has_identity: bool,
    /// For a Backup or Restore: the BR job's ServiceAccount when it lacks the permissions of
    /// TiDB Operator's backup manager role.
    pub br_account_lacking: Option<String>,
    /// For an Azure grant: the storage account of the source Secret.
    pub azure_account: Option<String>,
    /// Whether the grant's last status had the target in sync, so that the grant wrote its
    /// fields and a hand edit of them is drift.
    pub wrote_before: bool,
}

/// Plans the grant on an existing target `object` of `kind`.
pub fn plan(grant: &StorageGrant, kind: TargetKind, object: &Value, facts: &Facts) -> TargetPlan {
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let outcome = |state, reason: Option<&str>, message: Option<String>| TargetStatus {
        kind,
        name: name.clone(),
        state,
        reason: reason.map(str::to_owned),
        message,
        last_drift_time: None,
        repairs: None,
        rollout: None,
    };
    let stop = |state, reason: &str, message: String| TargetPlan {
        outcome: outcome(state, Some(reason), Some(message)),
        apply: None,
    };

    let mut entries = match desired::entries(grant, kind, object) {
        Ok(entries) => entries,
        Err(Unsuitable { reason, message }) => return stop(TargetState::Invalid, reason, message),
    };
    if !kind.is_group() {
        if let Some(message) = contested(grant, object) {
            return stop(TargetState::Conflict, "ContestedByGrants", message);
        }
        if let Some((reason, message)) = blocking_job_problem(object) {
            return stop(TargetState::Invalid, reason, message);
        }
        if let Some(phase) = started_phase(object) {
            return started_job(grant, kind, object, &entries, phase, &outcome);
        }
        if facts.cluster_has_identity {
            entries.push(desired::send_cred_to_tikv_off());
        }
    }

    let mut plan = plan_write(grant, kind, object, &entries, facts, &outcome);
    // Problems across components do not stop the write, since the fields are still right, but
    // the target reads Invalid until they are fixed.
    if !kind.is_group()
        && plan.outcome.state == TargetState::InSync
        && let Some((reason, message)) = job_problem(grant, kind, object, facts)
    {
        plan.outcome = outcome(TargetState::Invalid, Some(reason), Some(message));
    }
    plan
}

type Outcome<'a> = dyn Fn(TargetState, Option<&str>, Option<String>) -> TargetStatus + 'a;

fn plan_write(
    grant: &StorageGrant,
    kind: TargetKind,
    object: &Value,
    entries: &[Entry],
    facts: &Facts,
    outcome: &Outcome<'_>,
) -> TargetPlan {
    let stop = |state, reason: &str, message: String| TargetPlan {
        outcome: outcome(state, Some(reason), Some(message)),
        apply: None,
    };
    let manager = names::field_manager(grant.metadata.name.as_deref().unwrap_or_default());
    match verdict(object, entries, &manager, facts.wrote_before) {
        Verdict::InSync => TargetPlan {
            outcome: outcome(TargetState::InSync, None, None),
            apply: None,
        },
        Verdict::Conflict(foreign) => {
            let message = format!(
                "{} is owned by field manager {} ({}: {}); remove it from the target or from \
                 that manager's configuration so that the grant can write it",
                foreign.entry,
                foreign.manager,
                foreign.operation,
                foreign.fields.join(", ")
            );
            stop(TargetState::Conflict, "FieldOwnedByOtherManager", message)
        }
        Verdict::Write { .. } if !facts.credentials_valid => stop(
            TargetState::Drifted,
            "WaitingForCredentials",
            "not written while the credentials are invalid (see CredentialsValid)".to_owned(),
        ),
        Verdict::Write { drift, .. } if grant.spec.drift_policy() == DriftPolicy::Report => {
            let message = match drift.first() {
                Some(foreign) => format!("{} was changed by {}; driftPolicy is Report, so it is left as is", foreign.entry, foreign.manager),
                None => "does not carry the grant's fields; driftPolicy is Report, so nothing is written".to_owned(),
            };
            stop(TargetState::Drifted, "DriftReported", message)
        }
        Verdict::Write {
            force,
            drift,
            absent,
        } => {
            let apply = Apply {
                body: apply_body(base(kind, object), entries),
                force,
                drift,
                absent,
            };
            TargetPlan {
                outcome: outcome(TargetState::InSync, None, None),
                apply: Some(apply),
            }
        }
    }
}

/// The identifying part of every apply to `object`. The uid is a precondition: a target
/// deleted since it was observed is not recreated by the apply.
fn base(kind: TargetKind, object: &Value) -> Value {
    json!({
        "apiVersion": object.get("apiVersion").cloned().unwrap_or_else(|| json!(format!("{}/{}", kind.group(), kind.version()))),
        "kind": kind.as_str(),
        "metadata": {
            "name": object.pointer("/metadata/name").cloned().unwrap_or(Value::Null),
            "namespace": object.pointer("/metadata/namespace").cloned().unwrap_or(Value::Null),
            "uid": object.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
        },
    })
}

/// The apply that releases every field the grant owns on `object`: an apply with no fields.
pub fn release(kind: TargetKind, object: &Value) -> Apply {
    Apply {
        body: base(kind, object),
        force: false,
        drift: Vec::new(),
        absent: Vec::new(),
    }
}

fn started_phase(object: &Value) -> Option<&str> {
    object
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .filter(|phase| !phase.is_empty())
}

/// A Backup or Restore that has started is never changed. One that carries the fields (from
/// the admission webhook or an earlier write) is claimed with an apply of the same values, so
/// that drift and release see them as the grant's; one that lacks them is `Late`.
fn started_job(
    grant: &StorageGrant,
    kind: TargetKind,
    object: &Value,
    entries: &[Entry],
    phase: &str,
    outcome: &Outcome<'_>,
) -> TargetPlan {
    if FINISHED_PHASES.contains(&phase) {
        return TargetPlan {
            outcome: outcome(TargetState::Finished, Some(phase), None),
            apply: None,
        };
    }
    let carries = entries
        .iter()
        .all(|entry| lookup(object, &entry.path).is_some_and(|live| contains(live, &entry.value)));
    if !carries {
        let message = format!(
            "the {kind} started (phase {phase}) without the grant's fields; it runs without them and is not changed"
        );
        return TargetPlan {
            outcome: outcome(
                TargetState::Late,
                Some("StartedWithoutGrant"),
                Some(message),
            ),
            apply: None,
        };
    }
    // The claim covers the credential entries and, when present, sendCredToTikv; it never adds
    // a field to a started job.
    let mut claimed = entries.to_vec();
    let send_off = desired::send_cred_to_tikv_off();
    if lookup(object, &send_off.path) == Some(&send_off.value) {
        claimed.push(send_off);
    }
    let manager = names::field_manager(grant.metadata.name.as_deref().unwrap_or_default());
    let apply = match verdict(object, &claimed, &manager, false) {
        Verdict::Write { force: false, .. } => Some(Apply {
            body: apply_body(base(kind, object), &claimed),
            force: false,
            drift: Vec::new(),
            absent: Vec::new(),
        }),
        _ => None,
    };
    TargetPlan {
        outcome: outcome(TargetState::InSync, None, None),
        apply,
    }
}

/// The message for a job on which the admission webhook found this grant disagreeing with
/// another about a field, from the annotation it left; neither grant writes such a job.
pub fn contested(grant: &StorageGrant, object: &Value) -> Option<String> {
    let annotation = object
        .pointer("/metadata/annotations")
        .and_then(|annotations| annotations.get(names::CONTESTED_ANNOTATION))
        .and_then(Value::as_str)?;
    let record: ContestedRecord = serde_json::from_str(annotation).ok()?;
    let grant_name = grant.metadata.name.as_deref().unwrap_or_default();
    record.grants.iter().any(|name| name == grant_name).then(|| {
        format!(
            "grants {} set {} to different values, so the webhook wrote none of them; make the grants agree or narrow their targets",
            record.grants.join(", "),
            record.fields.join(", ")
        )
    })
}

/// The record the admission webhook leaves on a job when grants disagree about its fields.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Default)]
pub struct ContestedRecord {
    pub grants: Vec<String>,
    pub fields: Vec<String>,
}

/// A Backup or Restore of a cluster in another namespace is reported, not guessed at.
pub fn blocking_job_problem(object: &Value) -> Option<(&'static str, String)> {
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let elsewhere = object
        .pointer("/spec/br/clusterNamespace")
        .and_then(Value::as_str)
        .filter(|other| !other.is_empty() && *other != namespace)?;
    Some((
        "ClusterInOtherNamespace",
        format!(
            "spec.br.clusterNamespace is {elsewhere}, outside the grant's namespace; grant that cluster from a StorageGrant in {elsewhere}"
        ),
    ))
}

/// Checks across components that keep a Backup or Restore from using the grant's fields.
fn job_problem(
    grant: &StorageGrant,
    kind: TargetKind,
    object: &Value,
    facts: &Facts,
) -> Option<(&'static str, String)> {
    let invalid = |reason, message| Some((reason, message));
    let overriding: Vec<&str> = object
        .pointer("/spec/env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.get("name").and_then(Value::as_str))
        .filter(|variable| CREDENTIAL_VARIABLES.contains(variable))
        .collect();
    if !overriding.is_empty() {
        return invalid(
            "OverriddenBySpecEnv",
            format!(
                "spec.env sets {}, which the BR job reads instead of the grant's credentials; remove it",
                overriding.join(", ")
            ),
        );
    }
    if grant.spec.provider == storagegrant_api::Provider::Azure {
        if object
            .pointer("/spec/azblob/sasToken")
            .and_then(Value::as_str)
            .is_some_and(|token| !token.is_empty())
        {
            return invalid("OverriddenBySasToken", "spec.azblob.sasToken is set, so the operator ignores spec.azblob.secretName; remove the token".to_owned());
        }
        let account = object
            .pointer("/spec/azblob/storageAccount")
            .and_then(Value::as_str)
            .filter(|account| !account.is_empty());
        if let (Some(account), Some(expected)) = (account, &facts.azure_account)
            && account != expected
        {
            return invalid(
                "StorageAccountMismatch",
                "spec.azblob.storageAccount differs from the storage account in the grant's Secret; make them equal or remove the field".to_owned(),
            );
        }
    }
    let send_off = object.pointer("/spec/br/sendCredToTikv") == Some(&Value::Bool(false));
    if send_off && !facts.cluster_has_identity {
        let groups = if kind == TargetKind::Restore {
            "TiKV and TiFlash groups"
        } else {
            "TiKV groups"
        };
        let method = grant.spec.method;
        let fix = if matches!(method, Method::PodRole | Method::ServiceAccountRole) {
            "add them to this grant's targets"
        } else {
            "remove sendCredToTikv: false or add them to this grant's targets"
        };
        return invalid(
            "TiKVLacksCredentials",
            format!(
                "spec.br.sendCredToTikv is false but the {groups} of the cluster do not carry the grant's identity, so BR would wait for ever; {fix}"
            ),
        );
    }
    if let Some(account) = &facts.br_account_lacking {
        return invalid(
            "BackupManagerPermissionMissing",
            format!(
                "the BR job's ServiceAccount {account} may not update {kind}s, so the job cannot report its progress; bind it to TiDB Operator's backup manager role"
            ),
        );
    }
    None
}

/// Tells whether a group carries the grant's identity: every entry the grant would write to it
/// is there with the grant's value, written by this grant or by any other manager.
pub fn group_carries_identity(grant: &StorageGrant, kind: TargetKind, object: &Value) -> bool {
    match desired::entries(grant, kind, object) {
        Ok(entries) => entries.iter().all(|entry| {
            lookup(object, &entry.path).is_some_and(|live| contains(live, &entry.value))
        }),
        Err(_) => false,
    }
}

/// Builds the status of a target the grant names but that does not exist.
pub fn missing(kind: TargetKind, name: &str) -> TargetStatus {
    TargetStatus {
        kind,
        name: name.to_owned(),
        state: TargetState::Missing,
        reason: Some("NotFound".to_owned()),
        message: Some(format!(
            "{kind} {name} was not found in the grant's namespace"
        )),
        last_drift_time: None,
        repairs: None,
        rollout: None,
    }
}
