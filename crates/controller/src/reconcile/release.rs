//! Release: taking the grant's fields off targets it no longer covers, and on deletion off
//! every target, then removing or orphaning its kept objects.
//!
//! The fields to release are found from `managedFields` (what the grant's field manager
//! owns), not from the grant's status, so a target the status never listed is released too.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use storagegrant_api::{StorageGrant, TargetKind, names};
use storagegrant_core::kept::controlled_by;
use storagegrant_core::target;

use super::cleanup::{delete_kept, referenced_by_jobs, secret_names, started};
use super::credentials::metadata_json;
use super::{Context, Error, Progress};
use crate::watch::api_resource;

/// Whether the grant's field manager owns any field of the object.
pub(super) fn owns_fields(object: &DynamicObject, manager: &str) -> bool {
    object.managed_fields().iter().any(|entry| {
        entry.manager.as_deref() == Some(manager)
            && entry.operation.as_deref() == Some("Apply")
            && entry.fields_v1.as_ref().is_some_and(|fields| {
                fields
                    .0
                    .as_object()
                    .is_some_and(|fields| !fields.is_empty())
            })
    })
}

/// Releases the grant's fields from every object of the installed target kinds for which
/// `keep` is false. Started Backups and Restores keep their fields.
pub(super) async fn release_targets(
    grant: &StorageGrant,
    keep: impl Fn(TargetKind, &str) -> bool,
    context: &Context,
    progress: &mut Progress,
) -> Result<(), Error> {
    let namespace = grant.namespace().unwrap_or_default();
    let manager = names::field_manager(&grant.name_any());
    for kind in TargetKind::ALL {
        if !context.stores.is_watched(kind) {
            continue;
        }
        for object in context.stores.targets_in(kind, &namespace) {
            let name = object.name_any();
            if keep(kind, &name)
                || !owns_fields(&object, &manager)
                || (!kind.is_group() && started(&object))
            {
                continue;
            }
            release_target(grant, kind, &object, context, progress).await?;
        }
    }
    Ok(())
}

async fn release_target(
    grant: &StorageGrant,
    kind: TargetKind,
    object: &Arc<DynamicObject>,
    context: &Context,
    progress: &mut Progress,
) -> Result<(), Error> {
    let namespace = grant.namespace().unwrap_or_default();
    let name = object.name_any();
    let body = serde_json::to_value(&**object).unwrap_or(Value::Null);
    let apply = target::release(kind, &body);
    let api: Api<DynamicObject> =
        Api::namespaced_with(context.client.clone(), &namespace, &api_resource(kind));
    let params = PatchParams::apply(&names::field_manager(&grant.name_any()));
    match api.patch(&name, &params, &Patch::Apply(&apply.body)).await {
        Ok(_) => {
            context.metrics.count_write(kind.as_str());
            progress.wrote = true;
            tracing::info!(%kind, target = %name, "Released the grant's fields from target");
            Ok(())
        }
        // Deleted, or replaced under the same name: nothing of the grant's is left on it.
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        Err(source) => Err(Error::WriteTarget { kind, name, source }),
    }
}

/// Releases everything the grant holds before the grant is deleted: the fields on targets,
/// then the kept Secret and created ServiceAccount (deleted, or orphaned while Backups or
/// Restores still refer to them) and the annotation on adopted ServiceAccounts.
pub(super) async fn release_all(
    grant: Arc<StorageGrant>,
    context: &Context,
) -> Result<Action, Error> {
    let mut progress = Progress::default();
    release_targets(&grant, |_, _| false, context, &mut progress).await?;

    let namespace = grant.namespace().unwrap_or_default();
    let secret = names::kept_secret(&grant.name_any());
    if let Some(metadata) = context.stores.secret_metadata(&namespace, &secret)
        && metadata_json(&metadata.metadata)
            .is_some_and(|existing| controlled_by(&grant, &existing))
    {
        let api: Api<Secret> = Api::namespaced(context.client.clone(), &namespace);
        if referenced_by_jobs(context, &namespace, true, |spec| {
            secret_names(spec).contains(&secret.as_str())
        }) {
            orphan(&api, "Secret", &secret, &grant, context).await?;
        } else {
            delete_kept(
                &api,
                &secret,
                metadata.uid(),
                "Secret",
                context,
                &mut progress,
            )
            .await?;
        }
    }
    let manager = names::field_manager(&grant.name_any());
    let accounts: Api<ServiceAccount> = Api::namespaced(context.client.clone(), &namespace);
    for account in context.stores.accounts_in(&namespace) {
        let name = account.name_any();
        let Some(existing) = metadata_json(&account.metadata) else {
            continue;
        };
        if controlled_by(&grant, &existing) {
            if referenced_by_jobs(context, &namespace, true, |spec| {
                spec.get("serviceAccount").and_then(Value::as_str) == Some(name.as_str())
            }) {
                orphan(&accounts, "ServiceAccount", &name, &grant, context).await?;
            } else {
                delete_kept(
                    &accounts,
                    &name,
                    account.uid(),
                    "ServiceAccount",
                    context,
                    &mut progress,
                )
                .await?;
            }
        } else if !created_by_grant(&account.metadata, &grant)
            && account
                .managed_fields()
                .iter()
                .any(|entry| entry.manager.as_deref() == Some(manager.as_str()))
        {
            let body = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "uid": account.uid()}});
            match accounts
                .patch(&name, &PatchParams::apply(&manager), &Patch::Apply(&body))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
                Err(source) => {
                    return Err(Error::WriteKept {
                        kind: "ServiceAccount",
                        name,
                        source,
                    });
                }
            }
        }
    }
    context
        .metrics
        .record_grant(&namespace, &grant.name_any(), None);
    tracing::info!("Released the grant; removing its finalizer");
    Ok(Action::await_change())
}

/// Whether the grant created the object (its label names the grant): an orphaned one it keeps
/// for started jobs is not an adopted one whose annotation goes.
fn created_by_grant(
    metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    grant: &StorageGrant,
) -> bool {
    metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(names::GRANT_LABEL))
        == Some(&names::grant_label_value(&grant.name_any()))
}

/// Drops the grant's ownerReference from a kept object that Backups still need, so that the
/// garbage collector does not delete it with the grant. Its label still names the grant.
async fn orphan<K>(
    api: &Api<K>,
    kind: &'static str,
    name: &str,
    grant: &StorageGrant,
    context: &Context,
) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let grant_uid = grant.uid().unwrap_or_default();
    let patch = json!({"metadata": {"ownerReferences": [{"$patch": "delete", "uid": grant_uid}]}});
    let params = PatchParams::default();
    match api.patch(name, &params, &Patch::Strategic(&patch)).await {
        Ok(_) => {
            context.metrics.count_write(kind);
            tracing::info!(
                kind,
                name,
                "Kept object orphaned: Backups or Restores still refer to it"
            );
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(Error::WriteKept {
            kind,
            name: name.to_owned(),
            source,
        }),
    }
}
