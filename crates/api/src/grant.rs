// The printcolumn attributes repeat `type_ = "string"`, which clippy mistakes for duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::StorageGrantStatus;

/// The intent to give TiDB components access to backup storage, kept true by the controller.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "storagegrant.dev",
    version = "v1alpha1",
    kind = "StorageGrant",
    namespaced,
    status = "StorageGrantStatus",
    doc = "Grants TiDB components access to backup storage and keeps that access correct.",
    shortname = "sg",
    category = "tidb",
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.provider"),
    printcolumn(name = "Method", type_ = "string", json_path = ".spec.method"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(
        "self.provider == 'AWS' ? self.method in ['AccessKey', 'PodRole', 'ServiceAccountRole'] \
         : self.provider == 'GCP' ? self.method == 'ServiceAccountKey' \
         : self.method in ['AccessKey', 'AzureAD']"
    )
    .message(
        "spec.method does not belong to spec.provider: AWS takes AccessKey, PodRole or \
         ServiceAccountRole; GCP takes ServiceAccountKey; Azure takes AccessKey or AzureAD"
    )
    .field_path(".method"),
    validation = Rule::new(
        "has(self.secretRef) == (self.method in ['AccessKey', 'ServiceAccountKey', 'AzureAD'])"
    )
    .message(
        "spec.secretRef is required for the methods AccessKey, ServiceAccountKey and AzureAD, \
         and must be absent for PodRole and ServiceAccountRole"
    )
    .field_path(".secretRef"),
    validation = Rule::new(
        "has(self.roleArn) == (self.method in ['PodRole', 'ServiceAccountRole'])"
    )
    .message(
        "spec.roleArn is required for the methods PodRole and ServiceAccountRole, and must be \
         absent for the others"
    )
    .field_path(".roleArn"),
    validation = Rule::new(
        "has(self.serviceAccountName) == (self.method == 'ServiceAccountRole')"
    )
    .message(
        "spec.serviceAccountName is required for the method ServiceAccountRole, and must be \
         absent for the others"
    )
    .field_path(".serviceAccountName"),
)]
pub struct StorageGrantSpec {
    /// The cloud that hosts the backup storage.
    pub provider: Provider,

    /// How the TiDB components authenticate; each provider has its own methods.
    pub method: Method,

    /// The Secret with the credentials, for AccessKey, ServiceAccountKey and AzureAD.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,

    /// The IAM role, for PodRole (kube2iam) and ServiceAccountRole (EKS IRSA).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(
        validation = Rule::new(
            "self.matches('^arn:aws(-cn|-us-gov)?:iam::[0-9]{12}:role/([\\\\x21-\\\\x7E]+/)*[A-Za-z0-9+=,.@_-]{1,64}$')"
        )
        .message(
            "spec.roleArn must be an IAM role ARN such as \
             arn:aws:iam::123456789012:role/tidb-backup (partitions aws, aws-cn, aws-us-gov)"
        )
    )]
    pub role_arn: Option<String>,

    /// The ServiceAccount that carries the IRSA role, for ServiceAccountRole.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(
        validation = Rule::new(
            "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')"
        )
        .message(
            "spec.serviceAccountName must be a DNS-1123 subdomain: lower-case letters, digits, \
             '-' and '.', starting and ending with a letter or digit"
        )
    )]
    pub service_account_name: Option<String>,

    /// The TiDB objects that receive the grant, all in the grant's namespace.
    #[schemars(length(min = 1, max = 64))]
    pub targets: Vec<TargetRef>,

    /// What to do when a target drifts: Correct (when absent) repairs it, Report only reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift_policy: Option<DriftPolicy>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Provider {
    #[serde(rename = "AWS")]
    Aws,
    #[serde(rename = "GCP")]
    Gcp,
    Azure,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Method {
    /// AWS access keys or an Azure storage account key, from `secretRef`.
    AccessKey,
    /// An AWS role assumed through kube2iam, from the pod annotation.
    PodRole,
    /// An AWS role assumed through EKS IRSA, from the pod's ServiceAccount.
    ServiceAccountRole,
    /// A GCP service-account key file, from `secretRef`.
    ServiceAccountKey,
    /// Azure AD client credentials, from `secretRef`.
    #[serde(rename = "AzureAD")]
    AzureAd,
}

impl Method {
    /// Whether the method reads credentials from `secretRef`.
    pub fn uses_secret(self) -> bool {
        matches!(
            self,
            Self::AccessKey | Self::ServiceAccountKey | Self::AzureAd
        )
    }
}

/// Where the source credentials are.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// The Secret's name, in the grant's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// The key of each credential in that Secret, when it differs from the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<SecretKeys>,
}

/// Keys of the source Secret; each one absent means the name TiDB expects.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeys {
    /// AWS AccessKey; default `access_key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub access_key_id: Option<String>,
    /// AWS AccessKey; default `secret_key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_access_key: Option<String>,
    /// GCP ServiceAccountKey; default `credentials`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub credentials: Option<String>,
    /// Azure AccessKey and AzureAD; default `AZURE_STORAGE_ACCOUNT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_account: Option<String>,
    /// Azure AccessKey; default `AZURE_STORAGE_KEY`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_key: Option<String>,
    /// Azure AzureAD; default `AZURE_CLIENT_ID`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_id: Option<String>,
    /// Azure AzureAD; default `AZURE_TENANT_ID`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub tenant_id: Option<String>,
    /// Azure AzureAD; default `AZURE_CLIENT_SECRET`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_secret: Option<String>,
}

/// One or more TiDB objects of one kind, chosen by name, label selector or cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(
        "(has(self.name) ? 1 : 0) + (has(self.selector) ? 1 : 0) + (has(self.cluster) ? 1 : 0) == 1"
    )
    .message("each entry of spec.targets must set exactly one of name, selector and cluster")
)]
pub struct TargetRef {
    pub kind: TargetKind,

    /// One object by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,

    /// Every object whose labels match, including ones created later.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<TargetSelector>,

    /// Every object of the TiDB cluster of this name (a group's `spec.cluster.name`, a
    /// Backup's or Restore's `spec.br.cluster`), including ones created later.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub cluster: Option<String>,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum TargetKind {
    #[serde(rename = "TiKVGroup")]
    TiKvGroup,
    TiFlashGroup,
    Backup,
    Restore,
}

/// A label selector with bounded sizes, so that admission rules stay within the CEL budget.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(
        "(has(self.matchLabels) && size(self.matchLabels) > 0) || \
         (has(self.matchExpressions) && size(self.matchExpressions) > 0)"
    )
    .message(
        "spec.targets[].selector must not be empty: set matchLabels or matchExpressions \
         (an empty selector would match every object)"
    )
)]
pub struct TargetSelector {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<MatchLabels>,

    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub match_expressions: Option<Vec<SelectorRequirement>>,
}

/// One requirement of a label selector, as in `metav1.LabelSelectorRequirement`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SelectorRequirement {
    #[schemars(length(min = 1, max = 317))]
    pub key: String,

    /// In, NotIn, Exists or DoesNotExist.
    #[schemars(length(max = 16))]
    #[x_kube(
        validation = Rule::new("self in ['In', 'NotIn', 'Exists', 'DoesNotExist']")
            .message("spec.targets[].selector.matchExpressions[].operator must be In, NotIn, Exists or DoesNotExist")
    )]
    pub operator: String,

    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(max = 63)))]
    pub values: Option<Vec<String>>,
}

/// The `matchLabels` of a selector: at most 32 labels, each value at most 63 characters.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(transparent)]
pub struct MatchLabels(pub BTreeMap<String, String>);

impl JsonSchema for MatchLabels {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MatchLabels".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "maxProperties": 32,
            "additionalProperties": { "type": "string", "maxLength": 63 },
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DriftPolicy {
    /// Repair drift on the targets.
    Correct,
    /// Only report drift; write nothing to the targets.
    Report,
}

impl StorageGrantSpec {
    /// The drift policy in force; `Correct` when the field is absent.
    pub fn drift_policy(&self) -> DriftPolicy {
        self.drift_policy.unwrap_or(DriftPolicy::Correct)
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Self::Aws => "AWS",
            Self::Gcp => "GCP",
            Self::Azure => "Azure",
        })
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Self::AccessKey => "AccessKey",
            Self::PodRole => "PodRole",
            Self::ServiceAccountRole => "ServiceAccountRole",
            Self::ServiceAccountKey => "ServiceAccountKey",
            Self::AzureAd => "AzureAD",
        })
    }
}
