//! The credential side of a grant: the source Secret, the kept Secret and the IRSA
//! ServiceAccount, checked and written before any target.

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use storagegrant_api::{Method, StorageGrant, names};
use storagegrant_core::credentials::{self, CredentialError, SecretData};
use storagegrant_core::kept::{self, AccountState, KeptState};

use super::{Context, Error, Progress};

/// Reads the source Secret's data, from the cache unless its resourceVersion moved.
pub(super) async fn observe_source(
    grant: &StorageGrant,
    context: &Context,
) -> Result<Option<SecretData>, Error> {
    let Some(secret_ref) = &grant.spec.secret_ref else {
        return Ok(None);
    };
    let namespace = grant.namespace().unwrap_or_default();
    let Some(metadata) = context.stores.secret_metadata(&namespace, &secret_ref.name) else {
        return Ok(None);
    };
    let version = metadata.resource_version().unwrap_or_default();
    let key = (namespace.clone(), secret_ref.name.clone());
    if let Some((cached_version, data)) = context
        .source_data
        .lock()
        .expect("source cache lock")
        .get(&key)
        && *cached_version == version
    {
        return Ok(Some(data.clone()));
    }

    let api: Api<Secret> = Api::namespaced(context.client.clone(), &namespace);
    let secret = api
        .get_opt(&secret_ref.name)
        .await
        .map_err(|source| Error::ReadSecret {
            name: secret_ref.name.clone(),
            source,
        })?;
    let Some(secret) = secret else {
        return Ok(None);
    };
    let data: SecretData = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(key, value)| (key, value.0))
        .collect();
    let read_version = secret.metadata.resource_version.unwrap_or_default();
    context
        .source_data
        .lock()
        .expect("source cache lock")
        .insert(key, (read_version, data.clone()));
    tracing::debug!(secret = %secret_ref.name, "Read source Secret");
    Ok(Some(data))
}

/// The outcome of the credential step.
pub(super) struct Credentials {
    pub problem: Option<CredentialError>,
    /// Whether the kept objects are in the watch cache as desired, so that targets may refer
    /// to them.
    pub kept_ready: bool,
}

/// Checks the credentials and writes the kept Secret or ServiceAccount when it differs.
pub(super) async fn keep(
    grant: &StorageGrant,
    source: Option<&SecretData>,
    context: &Context,
    progress: &mut Progress,
) -> Result<Credentials, Error> {
    let mut credentials = keep_secret(grant, source, context, progress).await?;
    if credentials.problem.is_none() && grant.spec.method == Method::ServiceAccountRole {
        credentials = keep_service_account(grant, context, progress).await?;
    }
    Ok(credentials)
}

async fn keep_secret(
    grant: &StorageGrant,
    source: Option<&SecretData>,
    context: &Context,
    progress: &mut Progress,
) -> Result<Credentials, Error> {
    let data = match credentials::kept_secret_data(&grant.spec, source) {
        Ok(Some(data)) => data,
        Ok(None) => {
            return Ok(Credentials {
                problem: None,
                kept_ready: true,
            });
        }
        Err(problem) => {
            return Ok(Credentials {
                problem: Some(problem),
                kept_ready: false,
            });
        }
    };
    let namespace = grant.namespace().unwrap_or_default();
    let name = names::kept_secret(&grant.name_any());
    let desired = kept::secret_body(grant, &data);
    let existing = existing_kept_secret(context, &namespace, &name);
    match kept::kept_state(grant, existing.as_ref(), &desired) {
        KeptState::InSync => Ok(Credentials {
            problem: None,
            kept_ready: true,
        }),
        KeptState::Taken => Ok(Credentials {
            problem: Some(CredentialError::SecretNameTaken { secret: name }),
            kept_ready: false,
        }),
        KeptState::Absent | KeptState::Differs => {
            let api: Api<Secret> = Api::namespaced(context.client.clone(), &namespace);
            // The grant controls this Secret, so it takes back fields anyone else changed.
            let params = PatchParams::apply(&names::field_manager(&grant.name_any())).force();
            api.patch(&name, &params, &Patch::Apply(&desired))
                .await
                .map_err(|source| Error::WriteKept {
                    kind: "Secret",
                    name: name.clone(),
                    source,
                })?;
            context.metrics.count_write("Secret");
            progress.wrote = true;
            tracing::info!(secret = %name, "Wrote kept Secret");
            Ok(Credentials {
                problem: None,
                kept_ready: false,
            })
        }
    }
}

/// The kept Secret as JSON: from the labelled cache with its data, or only its metadata when
/// a Secret of that name exists without the label.
fn existing_kept_secret(context: &Context, namespace: &str, name: &str) -> Option<Value> {
    if let Some(secret) = context.stores.kept_secret(namespace, name) {
        return serde_json::to_value(&*secret).ok();
    }
    let metadata = context.stores.secret_metadata(namespace, name)?;
    Some(json!({"metadata": serde_json::to_value(&metadata.metadata).ok()?}))
}

/// Creates the IRSA ServiceAccount, or annotates an adopted one, with the grant's role.
async fn keep_service_account(
    grant: &StorageGrant,
    context: &Context,
    progress: &mut Progress,
) -> Result<Credentials, Error> {
    let namespace = grant.namespace().unwrap_or_default();
    let account = grant.spec.service_account_name.clone().unwrap_or_default();
    let role_arn = grant.spec.role_arn.clone().unwrap_or_default();
    let existing = context
        .stores
        .account_metadata(&namespace, &account)
        .and_then(|account| metadata_json(&account.metadata));
    let adopted = match kept::account_state(grant, existing.as_ref(), &role_arn) {
        AccountState::InSync { .. } => {
            return Ok(Credentials {
                problem: None,
                kept_ready: true,
            });
        }
        AccountState::NotAdoptable => {
            let problem = CredentialError::ServiceAccountNotAdoptable { account };
            return Ok(Credentials {
                problem: Some(problem),
                kept_ready: false,
            });
        }
        AccountState::Absent => false,
        AccountState::Differs { adopted } => adopted,
    };

    let api: Api<ServiceAccount> = Api::namespaced(context.client.clone(), &namespace);
    let mut body = kept::account_body(grant, &account, &role_arn, adopted);
    if let Some(uid) = existing
        .as_ref()
        .and_then(|existing| existing.pointer("/metadata/uid"))
    {
        // A precondition, so that an adopted ServiceAccount deleted meanwhile is not recreated.
        body["metadata"]["uid"] = uid.clone();
    }
    // A created ServiceAccount is the grant's to correct; an adopted one is shared, so a role
    // annotation set by someone else is reported rather than taken.
    let mut params = PatchParams::apply(&names::field_manager(&grant.name_any()));
    params.force = !adopted;
    match api.patch(&account, &params, &Patch::Apply(&body)).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let problem = CredentialError::ServiceAccountConflict {
                account,
                detail: status.message,
            };
            return Ok(Credentials {
                problem: Some(problem),
                kept_ready: false,
            });
        }
        Err(source) => {
            return Err(Error::WriteKept {
                kind: "ServiceAccount",
                name: account,
                source,
            });
        }
    }
    context.metrics.count_write("ServiceAccount");
    progress.wrote = true;
    tracing::info!(account = %account, adopted, "Wrote ServiceAccount role annotation");
    Ok(Credentials {
        problem: None,
        kept_ready: false,
    })
}

pub(super) fn metadata_json(
    metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<Value> {
    Some(json!({"metadata": serde_json::to_value(metadata).ok()?}))
}

/// The storage account of the source Secret of an Azure grant, to compare with Backups.
pub(super) fn azure_account(grant: &StorageGrant, source: Option<&SecretData>) -> Option<String> {
    if grant.spec.provider != storagegrant_api::Provider::Azure {
        return None;
    }
    let key = grant
        .spec
        .secret_ref
        .as_ref()?
        .keys
        .as_ref()
        .and_then(|keys| keys.storage_account.clone())
        .unwrap_or_else(|| "AZURE_STORAGE_ACCOUNT".to_owned());
    let value = source?.get(&key)?;
    String::from_utf8(value.clone()).ok()
}
