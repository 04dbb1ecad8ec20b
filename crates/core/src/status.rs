//! The grant's status from what one reconcile observed and did.

use storagegrant_api::{
    Condition, ConditionStatus, StorageGrantStatus, TargetKind, TargetState, TargetStatus,
    TargetSummary,
};

/// The outcome of the grant on one target, as it goes into `status.targets`.
pub type TargetOutcome = TargetStatus;

/// Everything the status is computed from.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    pub generation: Option<i64>,
    pub field_manager: String,
    /// `None` when the credentials are valid or not required; otherwise the reason and message.
    pub credential_problem: Option<(&'a str, String)>,
    /// Whether the method needs no credentials (role methods).
    pub credentials_not_required: bool,
    pub targets: Vec<TargetOutcome>,
    /// Target kinds named by the grant whose CRD is not installed.
    pub uninstalled_kinds: Vec<TargetKind>,
    /// Whether this reconcile wrote to the cluster, so that more convergence may follow.
    pub wrote: bool,
    /// A problem that keeps the targets from being in sync beyond their own states, such as an
    /// admission webhook that is not proven yet: the reason and message.
    pub targets_problem: Option<(&'a str, String)>,
}

pub const READY: &str = "Ready";
pub const CREDENTIALS_VALID: &str = "CredentialsValid";
pub const TARGETS_IN_SYNC: &str = "TargetsInSync";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// How many targets a message lists by name before it only counts the rest.
const NAMED_IN_MESSAGE: usize = 3;

/// Computes the new status; conditions whose status did not change keep their transition time.
pub fn compute(
    previous: Option<&StorageGrantStatus>,
    observed: &Observed<'_>,
    now: &str,
) -> StorageGrantStatus {
    let mut targets = observed.targets.clone();
    let summary_of_all = summary(&targets);
    targets.sort_by(|left, right| (left.kind, &left.name).cmp(&(right.kind, &right.name)));

    let credentials = credentials_condition(observed);
    let in_sync = targets_condition(observed, &targets);
    let ready = ready_condition(&credentials, &in_sync);
    let stalled = stalled_condition(observed, &targets);
    let reconciling = reconciling_condition(observed, &targets, &ready, &stalled);

    let previous_conditions = previous
        .and_then(|status| status.conditions.as_deref())
        .unwrap_or_default();
    let conditions = [ready, credentials, in_sync, reconciling, stalled]
        .into_iter()
        .map(|(kind, status, reason, message)| {
            let last_transition_time = previous_conditions
                .iter()
                .find(|old| old.r#type == kind && old.status == status)
                .map(|old| old.last_transition_time.clone())
                .unwrap_or_else(|| now.to_owned());
            Condition {
                r#type: kind.to_owned(),
                status,
                observed_generation: observed.generation,
                last_transition_time,
                reason,
                message,
            }
        })
        .collect();

    StorageGrantStatus {
        observed_generation: observed.generation,
        field_manager: Some(observed.field_manager.clone()),
        conditions: Some(conditions),
        target_summary: Some(summary_of_all),
        targets: Some(bounded(targets)),
    }
}

type Parts = (&'static str, ConditionStatus, String, String);

fn credentials_condition(observed: &Observed<'_>) -> Parts {
    match &observed.credential_problem {
        Some((reason, message)) => (
            CREDENTIALS_VALID,
            ConditionStatus::False,
            (*reason).to_owned(),
            message.clone(),
        ),
        None if observed.credentials_not_required => (
            CREDENTIALS_VALID,
            ConditionStatus::True,
            "NotRequired".to_owned(),
            "the method uses a cloud identity, not a Secret".to_owned(),
        ),
        None => (
            CREDENTIALS_VALID,
            ConditionStatus::True,
            "Valid".to_owned(),
            "the source Secret holds every credential the method needs".to_owned(),
        ),
    }
}

fn targets_condition(observed: &Observed<'_>, targets: &[TargetOutcome]) -> Parts {
    if !observed.uninstalled_kinds.is_empty() {
        let kinds: Vec<String> = observed
            .uninstalled_kinds
            .iter()
            .map(|kind| format!("{kind} ({})", kind.crd_name()))
            .collect();
        let message = format!(
            "the CustomResourceDefinition of {} is not installed; install TiDB Operator's CRDs",
            kinds.join(", ")
        );
        return (
            TARGETS_IN_SYNC,
            ConditionStatus::False,
            "KindNotInstalled".to_owned(),
            message,
        );
    }
    let ordered = [
        (
            TargetState::Conflict,
            "TargetConflict",
            "have fields that another field manager owns",
        ),
        (
            TargetState::Invalid,
            "TargetInvalid",
            "cannot take the grant",
        ),
        (TargetState::Missing, "TargetMissing", "were not found"),
        (
            TargetState::Late,
            "TargetLate",
            "started without the grant's fields",
        ),
        (
            TargetState::Drifted,
            "TargetDrifted",
            "do not carry the grant's fields",
        ),
    ];
    for (state, reason, summary) in ordered {
        let affected: Vec<&TargetOutcome> = targets
            .iter()
            .filter(|target| target.state == state)
            .collect();
        if affected.is_empty() {
            continue;
        }
        let mut named: Vec<String> = affected
            .iter()
            .take(NAMED_IN_MESSAGE)
            .map(|target| match &target.message {
                Some(detail) => format!("{} {}: {detail}", target.kind, target.name),
                None => format!("{} {}", target.kind, target.name),
            })
            .collect();
        if affected.len() > NAMED_IN_MESSAGE {
            named.push(format!("and {} more", affected.len() - NAMED_IN_MESSAGE));
        }
        let message = format!(
            "{} target(s) {summary}: {}",
            affected.len(),
            named.join("; ")
        );
        return (
            TARGETS_IN_SYNC,
            ConditionStatus::False,
            reason.to_owned(),
            message,
        );
    }
    if let Some((reason, message)) = &observed.targets_problem {
        return (
            TARGETS_IN_SYNC,
            ConditionStatus::False,
            (*reason).to_owned(),
            message.clone(),
        );
    }
    let active = targets
        .iter()
        .filter(|target| target.state != TargetState::Finished)
        .count();
    if active == 0 {
        return (
            TARGETS_IN_SYNC,
            ConditionStatus::True,
            "NoMatchingTargets".to_owned(),
            "no object matches spec.targets yet; matching objects will receive the grant"
                .to_owned(),
        );
    }
    (
        TARGETS_IN_SYNC,
        ConditionStatus::True,
        "AllInSync".to_owned(),
        format!("{active} target(s) carry the grant"),
    )
}

fn ready_condition(credentials: &Parts, in_sync: &Parts) -> Parts {
    for (kind, status, reason, message) in [credentials, in_sync] {
        if *status != ConditionStatus::True {
            return (
                READY,
                ConditionStatus::False,
                reason.clone(),
                format!("{kind}: {message}"),
            );
        }
    }
    (
        READY,
        ConditionStatus::True,
        "Ready".to_owned(),
        "credentials are valid and every target carries the grant".to_owned(),
    )
}

fn stalled_condition(observed: &Observed<'_>, targets: &[TargetOutcome]) -> Parts {
    if let Some((reason, message)) = &observed.credential_problem {
        return (
            STALLED,
            ConditionStatus::True,
            (*reason).to_owned(),
            message.clone(),
        );
    }
    for (state, reason) in [
        (TargetState::Conflict, "TargetConflict"),
        (TargetState::Invalid, "TargetInvalid"),
    ] {
        if let Some(target) = targets.iter().find(|target| target.state == state) {
            let message = format!(
                "{} {}: {}; a person must resolve this",
                target.kind,
                target.name,
                target.message.as_deref().unwrap_or_default()
            );
            return (STALLED, ConditionStatus::True, reason.to_owned(), message);
        }
    }
    if !observed.uninstalled_kinds.is_empty() {
        return (
            STALLED,
            ConditionStatus::True,
            "KindNotInstalled".to_owned(),
            "a target kind is not installed".to_owned(),
        );
    }
    (
        STALLED,
        ConditionStatus::False,
        "NotStalled".to_owned(),
        "nothing needs a person's action".to_owned(),
    )
}

fn reconciling_condition(
    observed: &Observed<'_>,
    targets: &[TargetOutcome],
    ready: &Parts,
    stalled: &Parts,
) -> Parts {
    if observed.wrote {
        return (
            RECONCILING,
            ConditionStatus::True,
            "Applying".to_owned(),
            "the controller wrote changes and is verifying them".to_owned(),
        );
    }
    if ready.1 != ConditionStatus::True && stalled.1 != ConditionStatus::True {
        let waiting = targets
            .iter()
            .any(|target| target.state == TargetState::Missing);
        let reason = if waiting {
            "WaitingForTargets"
        } else {
            "Progressing"
        };
        return (
            RECONCILING,
            ConditionStatus::True,
            reason.to_owned(),
            ready.3.clone(),
        );
    }
    (
        RECONCILING,
        ConditionStatus::False,
        "Reconciled".to_owned(),
        "the controller has nothing left to do".to_owned(),
    )
}

/// How many finished Backups and Restores `status.targets` lists; the rest are only counted.
const FINISHED_LISTED: usize = 10;
/// The most entries `status.targets` holds, below the CRD's `maxItems` of 256.
const TARGETS_LISTED: usize = 250;

/// The targets to list: every unfinished one (up to the limit) and the last few finished ones,
/// taken by name in descending order, since TiDB Operator names scheduled jobs by time.
fn bounded(targets: Vec<TargetOutcome>) -> Vec<TargetOutcome> {
    let (finished, mut listed): (Vec<_>, Vec<_>) = targets
        .into_iter()
        .partition(|target| target.state == TargetState::Finished);
    let mut finished = finished;
    finished.sort_by(|left, right| right.name.cmp(&left.name));
    listed.truncate(TARGETS_LISTED - FINISHED_LISTED);
    listed.extend(finished.into_iter().take(FINISHED_LISTED));
    listed.sort_by(|left, right| (left.kind, &left.name).cmp(&(right.kind, &right.name)));
    listed
}

fn summary(targets: &[TargetOutcome]) -> TargetSummary {
    let count = |state| {
        targets
            .iter()
            .filter(|target| target.state == state)
            .count() as i32
    };
    TargetSummary {
        total: targets.len() as i32,
        in_sync: count(TargetState::InSync),
        drifted: count(TargetState::Drifted),
        missing: count(TargetState::Missing),
        conflict: count(TargetState::Conflict),
        invalid: count(TargetState::Invalid),
        late: count(TargetState::Late),
        finished: count(TargetState::Finished),
    }
}

/// The value of a condition type, if present.
pub fn condition<'a>(status: &'a StorageGrantStatus, kind: &str) -> Option<&'a Condition> {
    status
        .conditions
        .as_deref()?
        .iter()
        .find(|condition| condition.r#type == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, state: TargetState) -> TargetOutcome {
        TargetStatus {
            kind: TargetKind::TiKvGroup,
            name: name.into(),
            state,
            reason: None,
            message: None,
            last_drift_time: None,
            repairs: None,
            rollout: None,
        }
    }

    fn observed(targets: Vec<TargetOutcome>) -> Observed<'static> {
        Observed {
            generation: Some(2),
            field_manager: "storagegrant.dev/g".into(),
            credential_problem: None,
            credentials_not_required: false,
            targets,
            uninstalled_kinds: vec![],
            wrote: false,
            targets_problem: None,
        }
    }

    fn status_of(status: &StorageGrantStatus, kind: &str) -> (ConditionStatus, String) {
        let found = condition(status, kind).unwrap();
        (found.status, found.reason.clone())
    }

    #[test]
    fn all_in_sync_is_ready() {
        let status = compute(
            None,
            &observed(vec![target("a", TargetState::InSync)]),
            "t0",
        );
        assert_eq!(
            status_of(&status, READY),
            (ConditionStatus::True, "Ready".into())
        );
        assert_eq!(status_of(&status, RECONCILING).0, ConditionStatus::False);
        assert_eq!(status_of(&status, STALLED).0, ConditionStatus::False);
        assert_eq!(status.observed_generation, Some(2));
    }

    #[test]
    fn missing_target_is_not_ready_but_not_stalled() {
        let status = compute(
            None,
            &observed(vec![target("a", TargetState::Missing)]),
            "t0",
        );
        assert_eq!(
            status_of(&status, READY),
            (ConditionStatus::False, "TargetMissing".into())
        );
        assert_eq!(
            status_of(&status, RECONCILING),
            (ConditionStatus::True, "WaitingForTargets".into())
        );
        assert_eq!(status_of(&status, STALLED).0, ConditionStatus::False);
    }

    #[test]
    fn credential_problem_stalls_and_names_reason() {
        let mut input = observed(vec![target("a", TargetState::Drifted)]);
        input.credential_problem = Some(("SecretNotFound", "Secret s was not found".into()));
        let status = compute(None, &input, "t0");
        assert_eq!(
            status_of(&status, CREDENTIALS_VALID),
            (ConditionStatus::False, "SecretNotFound".into())
        );
        assert_eq!(
            status_of(&status, READY),
            (ConditionStatus::False, "SecretNotFound".into())
        );
        assert_eq!(
            status_of(&status, STALLED),
            (ConditionStatus::True, "SecretNotFound".into())
        );
    }

    #[test]
    fn selector_matching_nothing_is_ready() {
        let status = compute(None, &observed(vec![]), "t0");
        assert_eq!(
            status_of(&status, TARGETS_IN_SYNC),
            (ConditionStatus::True, "NoMatchingTargets".into())
        );
        assert_eq!(status_of(&status, READY).0, ConditionStatus::True);
    }

    #[test]
    fn unchanged_condition_keeps_transition_time() {
        let first = compute(
            None,
            &observed(vec![target("a", TargetState::InSync)]),
            "t0",
        );
        let second = compute(
            Some(&first),
            &observed(vec![target("a", TargetState::InSync)]),
            "t1",
        );
        assert_eq!(first, second);
        let third = compute(
            Some(&second),
            &observed(vec![target("a", TargetState::Conflict)]),
            "t2",
        );
        assert_eq!(condition(&third, READY).unwrap().last_transition_time, "t2");
        assert_eq!(
            condition(&third, CREDENTIALS_VALID)
                .unwrap()
                .last_transition_time,
            "t0"
        );
    }

    #[test]
    fn unproven_webhook_keeps_grant_not_ready() {
        let mut input = observed(vec![]);
        input.targets_problem =
            Some(("WebhookNotReady", "a dry-run create was not mutated".into()));
        let status = compute(None, &input, "t0");
        assert_eq!(
            status_of(&status, TARGETS_IN_SYNC),
            (ConditionStatus::False, "WebhookNotReady".into())
        );
        assert_eq!(status_of(&status, READY).0, ConditionStatus::False);
        assert_eq!(
            status_of(&status, RECONCILING),
            (ConditionStatus::True, "Progressing".into())
        );
    }

    #[test]
    fn finished_targets_beyond_last_few_are_only_counted() {
        let mut targets: Vec<TargetOutcome> = (0..30)
            .map(|index| target(&format!("backup-{index:02}"), TargetState::Finished))
            .collect();
        targets.push(target("running", TargetState::InSync));
        let status = compute(None, &observed(targets), "t0");
        let listed = status.targets.unwrap();
        assert_eq!(listed.len(), FINISHED_LISTED + 1);
        assert!(listed.iter().any(|target| target.name == "backup-29"));
        assert!(!listed.iter().any(|target| target.name == "backup-00"));
        assert_eq!(status.target_summary.unwrap().finished, 30);
    }

    #[test]
    fn conflict_stalls_naming_target() {
        let mut conflicted = target("tikv", TargetState::Conflict);
        conflicted.message = Some("env X is owned by kubectl-edit".into());
        let status = compute(None, &observed(vec![conflicted]), "t0");
        let stalled = condition(&status, STALLED).unwrap();
        assert_eq!(stalled.status, ConditionStatus::True);
        assert!(
            stalled.message.contains("TiKVGroup tikv"),
            "{}",
            stalled.message
        );
        assert!(
            stalled.message.contains("kubectl-edit"),
            "{}",
            stalled.message
        );
    }
}
