use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::grant::TargetKind;

/// What the controller observed and did, for people and tools to read.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageGrantStatus {
    /// The `metadata.generation` this status describes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The field manager of every write to a target; GitOps tools should ignore its fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub field_manager: Option<String>,

    /// Ready, CredentialsValid, TargetsInSync, Reconciling and Stalled.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Option<Vec<Condition>>,

    /// One entry per object the grant targets, finished Backups and Restores beyond the last
    /// few left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub targets: Option<Vec<TargetStatus>>,

    /// Counts per state over every target, including those left out of `targets`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_summary: Option<TargetSummary>,
}

/// A condition in the form of `metav1.Condition`, with bounded strings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[schemars(length(max = 316))]
    pub r#type: String,
    pub status: ConditionStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the status last changed, RFC 3339.
    #[schemars(length(max = 64))]
    pub last_transition_time: String,
    #[schemars(length(max = 1024))]
    pub reason: String,
    #[schemars(length(max = 32768))]
    pub message: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// The state of the grant on one target object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    pub kind: TargetKind,
    #[schemars(length(max = 253))]
    pub name: String,
    pub state: TargetState,
    /// A one-word cause, such as `FieldOwnedByOtherManager`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub message: Option<String>,
    /// When the controller last found the grant's fields changed or gone, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub last_drift_time: Option<String>,
    /// How many times the controller repaired drift on this target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repairs: Option<i32>,
    /// For a group: whether TiDB Operator has rolled the last change out to every pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub rollout: Option<String>,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum TargetState {
    /// Carries every field the grant requires.
    InSync,
    /// Lacks or changed a field the grant requires.
    Drifted,
    /// Named by the grant but not found.
    Missing,
    /// Another manager owns a field the grant must write.
    Conflict,
    /// Cannot take the grant as configured.
    Invalid,
    /// A Backup or Restore that started without the grant's fields.
    Late,
    /// A Backup or Restore that completed or failed.
    Finished,
}

/// Number of targets in each state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetSummary {
    pub total: i32,
    pub in_sync: i32,
    pub drifted: i32,
    pub missing: i32,
    pub conflict: i32,
    pub invalid: i32,
    pub late: i32,
    pub finished: i32,
}

impl TargetStatus {
    /// A target's status with no drift history or roll-out yet.
    pub fn new(
        kind: TargetKind,
        name: &str,
        state: TargetState,
        reason: Option<&str>,
        message: Option<String>,
    ) -> Self {
        Self {
            kind,
            name: name.to_owned(),
            state,
            reason: reason.map(str::to_owned),
            message,
            last_drift_time: None,
            repairs: None,
            rollout: None,
        }
    }
}
