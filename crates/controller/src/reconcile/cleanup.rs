//! Removing the kept objects a grant no longer needs, after a method switch or a renamed
//! ServiceAccount. It runs only once every target holds the grant's new fields, so no target
//! refers to an object that is gone.

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use storagegrant_api::{Method, StorageGrant, TargetKind, names};
use storagegrant_core::kept::controlled_by;

use super::credentials::metadata_json;
use super::{Context, Error, Progress};

/// Deletes the kept Secret and created ServiceAccounts the grant's method no longer uses, and
/// takes the role annotation off ServiceAccounts it no longer adopts.
pub(super) async fn release_unneeded(
    grant: &StorageGrant,
    context: &Context,
    progress: &mut Progress,
) -> Result<(), Error> {
    let namespace = grant.namespace().unwrap_or_default();
    let secret = names::kept_secret(&grant.name_any());
    if !grant.spec.method.uses_secret()
        && let Some(metadata) = context.stores.secret_metadata(&namespace, &secret)
        && metadata_json(&metadata.metadata).is_some_and(|existing| controlled_by(grant, &existing))
    {
        if referenced_by_jobs(context, &namespace, false, |spec| {
            secret_names(spec).contains(&secret.as_str())
        }) {
            tracing::debug!(secret = %secret, "Kept Secret still referred to by a Backup or Restore");
        } else {
            let api: Api<Secret> = Api::namespaced(context.client.clone(), &namespace);
            delete_kept(&api, &secret, metadata.uid(), "Secret", context, progress).await?;
        }
    }

    let current = (grant.spec.method == Method::ServiceAccountRole)
        .then(|| grant.spec.service_account_name.clone())
        .flatten();
    let manager = names::field_manager(&grant.name_any());
    let api: Api<ServiceAccount> = Api::namespaced(context.client.clone(), &namespace);
    for account in context.stores.accounts_in(&namespace) {
        let name = account.name_any();
        if current.as_deref() == Some(name.as_str()) {
            continue;
        }
        let Some(existing) = metadata_json(&account.metadata) else {
            continue;
        };
        if controlled_by(grant, &existing) {
            if referenced_by_jobs(context, &namespace, false, |spec| {
                spec.get("serviceAccount").and_then(Value::as_str) == Some(name.as_str())
            }) {
                continue;
            }
            delete_kept(
                &api,
                &name,
                account.uid(),
                "ServiceAccount",
                context,
                progress,
            )
            .await?;
        } else if account
            .managed_fields()
            .iter()
            .any(|entry| entry.manager.as_deref() == Some(manager.as_str()))
        {
            // An adopted ServiceAccount: an apply with no fields releases the role annotation
            // and nothing else.
            let body = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "uid": account.uid()}});
            api.patch(&name, &PatchParams::apply(&manager), &Patch::Apply(&body))
                .await
                .map_err(|source| Error::WriteKept {
                    kind: "ServiceAccount",
                    name: name.clone(),
                    source,
                })?;
            context.metrics.count_write("ServiceAccount");
            progress.wrote = true;
            tracing::info!(account = %name, "Released role annotation of adopted ServiceAccount");
        }
    }
    Ok(())
}

pub(super) async fn delete_kept<K>(
    api: &Api<K>,
    name: &str,
    uid: Option<String>,
    kind: &'static str,
    context: &Context,
    progress: &mut Progress,
) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => {}
        // Already gone, or replaced by another object of the same name: nothing to remove.
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => return Ok(()),
        Err(source) => {
            return Err(Error::DeleteKept {
                kind,
                name: name.to_owned(),
                source,
            });
        }
    }
    context.metrics.count_write(kind);
    progress.wrote = true;
    tracing::info!(kind, name, "Deleted kept object the grant no longer needs");
    Ok(())
}

/// Tells whether a Backup or Restore in the namespace has a spec for which `refers` is true;
/// with `only_started`, only jobs that have started count. Those may still need the object to
/// clean up, or to stop or truncate a log backup.
pub(super) fn referenced_by_jobs(
    context: &Context,
    namespace: &str,
    only_started: bool,
    refers: impl Fn(&Value) -> bool,
) -> bool {
    [TargetKind::Backup, TargetKind::Restore]
        .into_iter()
        .any(|kind| {
            context
                .stores
                .targets_in(kind, namespace)
                .iter()
                .any(|job| {
                    (!only_started || started(job)) && job.data.get("spec").is_some_and(&refers)
                })
        })
}

/// Tells whether a Backup or Restore has started (it has `status.phase`).
pub(super) fn started(job: &kube::api::DynamicObject) -> bool {
    job.data
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .is_some_and(|phase| !phase.is_empty())
}

pub(super) fn secret_names(spec: &Value) -> Vec<&str> {
    let mut found = Vec::new();
    for block in ["s3", "gcs", "azblob"] {
        for parent in [Some(spec), spec.get("pitrFullBackupStorageProvider")] {
            if let Some(name) = parent
                .and_then(|parent| parent.pointer(&format!("/{block}/secretName")))
                .and_then(Value::as_str)
            {
                found.push(name);
            }
        }
    }
    found
}
