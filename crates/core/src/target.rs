//! The plan for one target: its state for the status and the write, if any, that makes the
//! grant true on it.

use serde_json::{Value, json};
use storagegrant_api::{DriftPolicy, StorageGrant, TargetKind, TargetState, TargetStatus, names};

use crate::desired;
use crate::fieldset::apply_body;
use crate::ownership::{ForeignField, Verdict, verdict};

/// A server-side apply to a target.
#[derive(Debug, Clone, PartialEq)]
pub struct Apply {
    pub body: Value,
    pub force: bool,
    /// Fields taken back from hand edits.
    pub drift: Vec<ForeignField>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetPlan {
    /// The state to report if the write (when there is one) succeeds.
    pub outcome: TargetStatus,
    pub apply: Option<Apply>,
}

/// Plans the grant on an existing target `object` of `kind`.
pub fn plan(
    grant: &StorageGrant,
    kind: TargetKind,
    object: &Value,
    credentials_valid: bool,
) -> TargetPlan {
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
    };
    let grant_name = grant.metadata.name.as_deref().unwrap_or_default();
    let manager = names::field_manager(grant_name);

    let entries = match desired::entries(grant, kind) {
        Ok(entries) => entries,
        Err(unsupported) => {
            let state = outcome(
                TargetState::Invalid,
                Some("MethodNotSupported"),
                Some(unsupported.to_string()),
            );
            return TargetPlan {
                outcome: state,
                apply: None,
            };
        }
    };

    match verdict(object, &entries, &manager) {
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
            let state = outcome(
                TargetState::Conflict,
                Some("FieldOwnedByOtherManager"),
                Some(message),
            );
            TargetPlan {
                outcome: state,
                apply: None,
            }
        }
        Verdict::Write { .. } if !credentials_valid => {
            let message =
                "not written while the credentials are invalid (see CredentialsValid)".to_owned();
            let state = outcome(
                TargetState::Drifted,
                Some("WaitingForCredentials"),
                Some(message),
            );
            TargetPlan {
                outcome: state,
                apply: None,
            }
        }
        Verdict::Write { drift, .. } if grant.spec.drift_policy() == DriftPolicy::Report => {
            let message = match drift.first() {
                Some(foreign) => format!("{} was changed by {}; driftPolicy is Report, so it is left as is", foreign.entry, foreign.manager),
                None => "does not carry the grant's fields; driftPolicy is Report, so nothing is written".to_owned(),
            };
            let state = outcome(TargetState::Drifted, Some("DriftReported"), Some(message));
            TargetPlan {
                outcome: state,
                apply: None,
            }
        }
        Verdict::Write { force, drift } => {
            let base = json!({
                "apiVersion": object.get("apiVersion").cloned().unwrap_or(Value::Null),
                "kind": kind.as_str(),
                "metadata": {
                    "name": name,
                    "namespace": object.pointer("/metadata/namespace").cloned().unwrap_or(Value::Null),
                    // A precondition: a target deleted since it was observed is not recreated.
                    "uid": object.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
                },
            });
            let apply = Apply {
                body: apply_body(base, &entries),
                force,
                drift,
            };
            TargetPlan {
                outcome: outcome(TargetState::InSync, None, None),
                apply: Some(apply),
            }
        }
    }
}

/// The status of a target the grant names but that does not exist.
pub fn missing(kind: TargetKind, name: &str) -> TargetStatus {
    TargetStatus {
        kind,
        name: name.to_owned(),
        state: TargetState::Missing,
        reason: Some("NotFound".to_owned()),
        message: Some(format!(
            "{kind} {name} was not found in the grant's namespace"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(policy: &str) -> StorageGrant {
        serde_yaml::from_str(&format!(
            r#"
apiVersion: storagegrant.dev/v1alpha1
kind: StorageGrant
metadata: {{name: g, namespace: tidb, uid: grant-uid}}
spec:
  provider: AWS
  method: AccessKey
  secretRef: {{name: s3}}
  targets: [{{kind: TiKVGroup, name: tikv}}]
  driftPolicy: {policy}
"#
        ))
        .unwrap()
    }

    fn group() -> Value {
        json!({
            "apiVersion": "core.pingcap.com/v1alpha1",
            "kind": "TiKVGroup",
            "metadata": {"name": "tikv", "namespace": "tidb", "uid": "target-uid"},
            "spec": {"template": {"spec": {"overlay": {"pod": {"spec": {"containers": [
                {"name": "tikv", "env": [{"name": "MINE", "value": "1"}]}
            ]}}}}}},
        })
    }

    #[test]
    fn new_group_gets_apply_with_uid_precondition() {
        let plan = plan(&grant("Correct"), TargetKind::TiKvGroup, &group(), true);
        let apply = plan.apply.expect("a write");
        assert_eq!(apply.body["metadata"]["uid"], "target-uid");
        assert_eq!(apply.body["kind"], "TiKVGroup");
        assert!(!apply.force);
        let containers =
            &apply.body["spec"]["template"]["spec"]["overlay"]["pod"]["spec"]["containers"];
        assert_eq!(
            containers[0]["env"].as_array().unwrap().len(),
            2,
            "only the grant's entries"
        );
    }

    #[test]
    fn report_policy_writes_nothing() {
        let plan = plan(&grant("Report"), TargetKind::TiKvGroup, &group(), true);
        assert!(plan.apply.is_none());
        assert_eq!(plan.outcome.state, TargetState::Drifted);
    }

    #[test]
    fn invalid_credentials_write_nothing() {
        let plan = plan(&grant("Correct"), TargetKind::TiKvGroup, &group(), false);
        assert!(plan.apply.is_none());
        assert_eq!(
            plan.outcome.reason.as_deref(),
            Some("WaitingForCredentials")
        );
    }
}
