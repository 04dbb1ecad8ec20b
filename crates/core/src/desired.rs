//! What a grant writes on each kind of target: the table of methods and the entries they set.

use serde_json::{Value, json};
use storagegrant_api::{Method, Provider, StorageGrant, TargetKind, names};

use crate::fieldset::{Entry, Path, Step};

/// The pod annotation kube2iam reads.
pub const KUBE2IAM_ANNOTATION: &str = "iam.amazonaws.com/role";

/// The ServiceAccount annotation EKS reads for IRSA.
pub const IRSA_ANNOTATION: &str = "eks.amazonaws.com/role-arn";

/// Why a target cannot take the grant; its state becomes `Invalid` with this reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Unsuitable {
    pub reason: &'static str,
    pub message: String,
}

fn unsuitable(reason: &'static str, message: String) -> Unsuitable {
    Unsuitable { reason, message }
}

/// The provider block of a Backup or Restore for each provider.
fn storage_block(provider: Provider) -> &'static str {
    match provider {
        Provider::Aws => "s3",
        Provider::Gcp => "gcs",
        Provider::Azure => "azblob",
    }
}

/// Lists the entries the grant writes on `object`, a target of `kind`.
pub fn entries(
    grant: &StorageGrant,
    kind: TargetKind,
    object: &Value,
) -> Result<Vec<Entry>, Unsuitable> {
    match kind.main_container() {
        Some(container) => group_entries(grant, kind, container, object),
        None => job_entries(grant, kind, object),
    }
}

fn group_entries(
    grant: &StorageGrant,
    kind: TargetKind,
    container: &str,
    object: &Value,
) -> Result<Vec<Entry>, Unsuitable> {
    let spec = &grant.spec;
    let grant_name = grant.metadata.name.as_deref().unwrap_or_default();
    let kept = names::kept_secret(grant_name);
    let role = spec.role_arn.clone().unwrap_or_default();
    let entries = match (spec.provider, spec.method) {
        (Provider::Aws, Method::AccessKey) => vec![
            secret_env(container, "AWS_ACCESS_KEY_ID", &kept, "access_key"),
            secret_env(container, "AWS_SECRET_ACCESS_KEY", &kept, "secret_key"),
        ],
        (Provider::Aws, Method::PodRole) => {
            if object.pointer("/spec/template/spec/overlay/pod/spec/hostNetwork")
                == Some(&Value::Bool(true))
            {
                return Err(unsuitable(
                    "HostNetwork",
                    format!(
                        "the {kind}'s pods use hostNetwork, and kube2iam ignores the role annotation of such pods; \
                         use the method ServiceAccountRole, or drop hostNetwork from the overlay"
                    ),
                ));
            }
            vec![overlay_annotation(KUBE2IAM_ANNOTATION, &role)]
        }
        (Provider::Aws, Method::ServiceAccountRole) => {
            let account = spec.service_account_name.clone().unwrap_or_default();
            vec![Entry {
                path: overlay_pod_path(&["spec", "serviceAccountName"]),
                value: json!(account),
                label: "the pod's serviceAccountName".to_owned(),
            }]
        }
        (Provider::Gcp, Method::ServiceAccountKey) => gcp_key_entries(grant_name, container, &kept),
        (Provider::Azure, Method::AccessKey) => vec![
            secret_env(
                container,
                "AZURE_STORAGE_ACCOUNT",
                &kept,
                "AZURE_STORAGE_ACCOUNT",
            ),
            secret_env(container, "AZURE_STORAGE_KEY", &kept, "AZURE_STORAGE_KEY"),
        ],
        (Provider::Azure, Method::AzureAd) => [
            "AZURE_STORAGE_ACCOUNT",
            "AZURE_CLIENT_ID",
            "AZURE_TENANT_ID",
            "AZURE_CLIENT_SECRET",
        ]
        .into_iter()
        .map(|variable| secret_env(container, variable, &kept, variable))
        .collect(),
        (provider, method) => return Err(method_mismatch(provider, method)),
    };
    Ok(entries)
}

fn method_mismatch(provider: Provider, method: Method) -> Unsuitable {
    unsuitable(
        "MethodNotSupported",
        format!("the method {method} does not belong to the provider {provider}"),
    )
}

/// The GCP key as a read-only directory mount (no subPath, so that a rotated key reaches the
/// pod) and the variable that points at the file in it.
fn gcp_key_entries(grant_name: &str, container: &str, kept: &str) -> Vec<Entry> {
    let volume = names::gcp_volume(grant_name);
    let directory = names::gcp_mount_dir(grant_name);
    let mut volume_path = overlay_pod_path(&["spec", "volumes"]);
    volume_path.push(Step::key("name", &volume));
    let mut mount_path = container_path(container);
    mount_path.extend([
        Step::field("volumeMounts"),
        Step::key("mountPath", &directory),
    ]);
    let mut env_path = container_path(container);
    env_path.extend([
        Step::field("env"),
        Step::key("name", "GOOGLE_APPLICATION_CREDENTIALS"),
    ]);
    vec![
        Entry {
            path: volume_path,
            value: json!({"name": volume, "secret": {"secretName": kept}}),
            label: format!("volume {volume}"),
        },
        Entry {
            path: mount_path,
            value: json!({"name": volume, "mountPath": directory, "readOnly": true}),
            label: format!("volumeMount {directory} of container {container}"),
        },
        Entry {
            path: env_path,
            value: json!({"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": format!("{directory}/credentials")}),
            label: format!("env GOOGLE_APPLICATION_CREDENTIALS of container {container}"),
        },
    ]
}

fn job_entries(
    grant: &StorageGrant,
    kind: TargetKind,
    object: &Value,
) -> Result<Vec<Entry>, Unsuitable> {
    let spec = &grant.spec;
    let grant_name = grant.metadata.name.as_deref().unwrap_or_default();
    let block = storage_block(spec.provider);
    let configured: Vec<&str> = ["s3", "gcs", "azblob"]
        .into_iter()
        .filter(|name| object.pointer(&format!("/spec/{name}")).is_some())
        .collect();
    if !configured.contains(&block) {
        let message = match configured.first() {
            Some(other) => format!(
                "the {kind} is configured for spec.{other}, not spec.{block} of provider {}",
                spec.provider
            ),
            None => format!(
                "the {kind} has no spec.{block}; add it with its required fields{}, since the grant does not invent them",
                match block {
                    "s3" => " (spec.s3.provider)",
                    "gcs" => " (spec.gcs.projectId)",
                    _ => "",
                }
            ),
        };
        return Err(unsuitable("StorageNotConfigured", message));
    }

    let mut entries = Vec::new();
    match spec.method {
        Method::AccessKey | Method::ServiceAccountKey | Method::AzureAd => {
            let kept = names::kept_secret(grant_name);
            entries.push(scalar(&["spec", block, "secretName"], json!(kept)));
            let pitr = format!("/spec/pitrFullBackupStorageProvider/{block}");
            if kind == TargetKind::Restore && object.pointer(&pitr).is_some() {
                entries.push(scalar(
                    &["spec", "pitrFullBackupStorageProvider", block, "secretName"],
                    json!(kept),
                ));
            }
        }
        Method::PodRole => {
            let role = spec.role_arn.clone().unwrap_or_default();
            entries.push(Entry {
                path: vec![
                    Step::field("metadata"),
                    Step::field("annotations"),
                    Step::field(KUBE2IAM_ANNOTATION),
                ],
                value: json!(role),
                label: format!("annotation {KUBE2IAM_ANNOTATION}"),
            });
        }
        Method::ServiceAccountRole => {
            let account = spec.service_account_name.clone().unwrap_or_default();
            entries.push(scalar(&["spec", "serviceAccount"], json!(account)));
        }
    }
    Ok(entries)
}

/// Builds the entry that sets `spec.br.sendCredToTikv: false`, for when TiKV carries the
/// identity itself.
pub fn send_cred_to_tikv_off() -> Entry {
    scalar(&["spec", "br", "sendCredToTikv"], json!(false))
}

fn scalar(fields: &[&str], value: Value) -> Entry {
    Entry {
        path: fields.iter().map(|field| Step::field(field)).collect(),
        value,
        label: fields.join("."),
    }
}

/// A path under the group's `spec.template.spec.overlay.pod`.
fn overlay_pod_path(rest: &[&str]) -> Path {
    ["spec", "template", "spec", "overlay", "pod"]
        .iter()
        .chain(rest)
        .map(|field| Step::field(field))
        .collect()
}

/// The path of the main container in a group's pod overlay.
fn container_path(container: &str) -> Path {
    let mut path = overlay_pod_path(&["spec", "containers"]);
    path.push(Step::key("name", container));
    path
}

fn overlay_annotation(key: &str, value: &str) -> Entry {
    let mut path = overlay_pod_path(&["metadata", "annotations"]);
    path.push(Step::field(key));
    Entry {
        path,
        value: json!(value),
        label: format!("pod annotation {key}"),
    }
}

/// An env entry of the container that reads `key` of the kept Secret.
fn secret_env(container: &str, variable: &str, secret: &str, key: &str) -> Entry {
    let mut path = container_path(container);
    path.extend([Step::field("env"), Step::key("name", variable)]);
    Entry {
        path,
        value: json!({
            "name": variable,
            "valueFrom": {"secretKeyRef": {"name": secret, "key": key}},
        }),
        label: format!("env {variable} of container {container}"),
    }
}
