//! Keeps the webhook working: the certificate Secret (created, renewed), the certificate each
//! replica serves (reloaded when the Secret changes), the `caBundle` of the webhook
//! configuration, and the namespace label its `namespaceSelector` matches.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use storagegrant_api::TargetKind;
use time::OffsetDateTime;

use super::certs::{CurrentCert, Material};
use crate::watch::Stores;

/// Name of the MutatingWebhookConfiguration, of the Service in the cluster, and the field
/// manager of the controller's writes to both.
pub const WEBHOOK_NAME: &str = "storagegrant-controller";
pub const CERT_SECRET: &str = "storagegrant-webhook-tls";
/// Label on namespaces that have a grant selecting Backups or Restores; the webhook's
/// `namespaceSelector` matches it, so the API server calls the webhook only there.
pub const NAMESPACE_LABEL: &str = "storagegrant.dev/webhook";
const MANAGER: &str = "storagegrant.dev/webhook";

pub struct Keeper {
    pub client: Client,
    /// Namespace of the certificate Secret.
    pub namespace: String,
    /// Names and addresses the serving certificate is valid for.
    pub hosts: Vec<String>,
    pub leaf_lifetime: Duration,
    pub current: Arc<CurrentCert>,
    pub stores: Arc<Stores>,
    /// The namespaces the controller watches; `None`: all.
    pub scope: Vec<Option<String>>,
    /// Whether an external issuer (cert-manager) keeps the Secret and the caBundle, so that
    /// the controller only reads the serving certificate.
    pub external: bool,
    /// Only the leader creates or renews the certificate, patches the configuration and
    /// labels namespaces; every replica loads the certificate.
    pub leadership: crate::leader::Leadership,
    /// Namespaces are labelled only from complete caches: an empty grant cache would remove
    /// every label.
    pub readiness: crate::watch::Readiness,
}

impl Keeper {
    /// Checks everything once, then again every `interval`; never returns.
    pub async fn run(self, interval: Duration) {
        if self.external {
            return self.run_external(interval).await;
        }
        let mut loaded: Option<Material> = None;
        loop {
            match self.ensure_certificate().await {
                Ok(material) => {
                    if loaded.as_ref() != Some(&material) {
                        match material.certified_key() {
                            Ok(key) => {
                                self.current.set(key);
                                tracing::info!(
                                    renew_after = material.renew_after,
                                    "Loaded webhook serving certificate"
                                );
                                loaded = Some(material.clone());
                            }
                            Err(error) => {
                                tracing::warn!(%error, "Failed to load the webhook certificate")
                            }
                        }
                    }
                    if self.leadership.is_leader()
                        && let Err(error) = self.patch_ca_bundle(&material.ca_cert).await
                    {
                        tracing::warn!(%error, "Failed to patch the webhook configuration's caBundle");
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "Failed to keep the webhook certificate")
                }
            }
            if self.leadership.is_leader()
                && let Err(error) = self.label_namespaces().await
            {
                tracing::warn!(%error, "Failed to label namespaces for the webhook");
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Loads the Secret an external issuer keeps (`tls.crt`, `tls.key`) whenever it changes,
    /// and keeps the namespace labels; the issuer renews it and injects the caBundle.
    async fn run_external(self, interval: Duration) {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut loaded: Option<(String, String)> = None;
        loop {
            match api.get_opt(CERT_SECRET).await {
                Ok(Some(secret)) => {
                    let data = secret.data.unwrap_or_default();
                    let text = |key: &str| {
                        data.get(key)
                            .and_then(|value| String::from_utf8(value.0.clone()).ok())
                    };
                    match (text(super::certs::TLS_CERT), text(super::certs::TLS_KEY)) {
                        (Some(cert), Some(key))
                            if loaded.as_ref() != Some(&(cert.clone(), key.clone())) =>
                        {
                            match super::certs::certified_key(&cert, &key) {
                                Ok(certified) => {
                                    self.current.set(certified);
                                    tracing::info!(
                                        "Loaded the externally issued webhook certificate"
                                    );
                                    loaded = Some((cert, key));
                                }
                                Err(error) => {
                                    tracing::warn!(%error, "Failed to load the externally issued webhook certificate")
                                }
                            }
                        }
                        (Some(_), Some(_)) => {}
                        _ => tracing::warn!(
                            "Secret {CERT_SECRET} lacks tls.crt or tls.key; waiting for the issuer"
                        ),
                    }
                }
                Ok(None) => tracing::warn!(
                    "Secret {CERT_SECRET} does not exist yet; waiting for the issuer"
                ),
                Err(error) => tracing::warn!(%error, "Failed to read Secret {CERT_SECRET}"),
            }
            if self.leadership.is_leader()
                && let Err(error) = self.label_namespaces().await
            {
                tracing::warn!(%error, "Failed to label namespaces for the webhook");
            }
            tokio::time::sleep(interval).await;
        }
    }

    fn renewal_period(&self) -> i64 {
        (self.leaf_lifetime * 2 / 3).as_secs() as i64
    }

    /// Returns the Secret's certificates, creating or renewing them as needed. Two replicas
    /// racing here are serialized by the Secret's resourceVersion: the loser rereads.
    async fn ensure_certificate(&self) -> Result<Material, KeeperError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let existing = api.get_opt(CERT_SECRET).await?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let current = existing.as_ref().and_then(Material::from_secret);
        if !self.leadership.is_leader() {
            // A standby serves whatever the leader keeps, even a certificate due for renewal.
            return current.ok_or(KeeperError::NotCreatedYet);
        }
        match current {
            // A certificate due later than one issued now would be (the lifetime was shortened)
            // is renewed too.
            Some(material)
                if material.renew_after > now
                    && material.renew_after <= now + self.renewal_period() =>
            {
                Ok(material)
            }
            Some(material) => {
                let renewed = Material::renew(
                    material.ca_cert,
                    material.ca_key,
                    &self.hosts,
                    self.leaf_lifetime,
                )?;
                let mut secret = existing.expect("material came from the Secret");
                secret.data = Some(renewed.to_data());
                // replace carries the resourceVersion read above, so a concurrent renewal wins
                // and this one fails with a conflict and rereads next time.
                api.replace(
                    CERT_SECRET,
                    &PostParams {
                        field_manager: Some(MANAGER.into()),
                        ..Default::default()
                    },
                    &secret,
                )
                .await?;
                tracing::info!("Renewed the webhook serving certificate");
                Ok(renewed)
            }
            None if existing.is_some() => Err(KeeperError::Unusable),
            None => {
                let material = Material::generate(&self.hosts, self.leaf_lifetime)?;
                let secret: Secret = serde_json::from_value(json!({
                    "metadata": {"name": CERT_SECRET, "namespace": self.namespace},
                    "type": "Opaque",
                }))
                .expect("a valid Secret");
                let secret = Secret {
                    data: Some(material.to_data()),
                    ..secret
                };
                api.create(
                    &PostParams {
                        field_manager: Some(MANAGER.into()),
                        ..Default::default()
                    },
                    &secret,
                )
                .await?;
                tracing::info!(hosts = ?self.hosts, "Created the webhook CA and serving certificate");
                Ok(material)
            }
        }
    }

    async fn patch_ca_bundle(&self, ca_cert: &str) -> Result<(), kube::Error> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let Some(configuration) = api.get_opt(WEBHOOK_NAME).await? else {
            tracing::debug!("No MutatingWebhookConfiguration {WEBHOOK_NAME} yet");
            return Ok(());
        };
        let bundle = ca_cert.as_bytes();
        let webhooks = configuration.webhooks.unwrap_or_default();
        if webhooks.iter().all(|webhook| {
            webhook
                .client_config
                .ca_bundle
                .as_ref()
                .map(|bundle| bundle.0.as_slice())
                == Some(bundle)
        }) {
            return Ok(());
        }
        // A JSON patch by index, so that nothing else of the configuration is claimed.
        let operations: Vec<serde_json::Value> = (0..webhooks.len())
            .map(|index| json!({"op": "add", "path": format!("/webhooks/{index}/clientConfig/caBundle"), "value": k8s_openapi::ByteString(bundle.to_vec())}))
            .collect();
        let patch: json_patch::Patch =
            serde_json::from_value(json!(operations)).expect("a valid JSON patch");
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        api.patch(WEBHOOK_NAME, &params, &Patch::<()>::Json(patch))
            .await?;
        tracing::info!("Patched the caBundle of the webhook configuration");
        Ok(())
    }

    /// Adds the label to namespaces with a grant that selects Backups or Restores, and removes
    /// it from the others. Only namespaces in the controller's scope are touched.
    async fn label_namespaces(&self) -> Result<(), kube::Error> {
        if !self.readiness.pending_caches().is_empty() {
            return Ok(());
        }
        let wanted: BTreeSet<String> =
            self.stores
                .grants
                .iter()
                .flat_map(|store| store.state())
                .filter(|grant| {
                    grant.spec.targets.iter().any(|target| {
                        matches!(target.kind, TargetKind::Backup | TargetKind::Restore)
                    })
                })
                .filter_map(|grant| grant.metadata.namespace.clone())
                .collect();
        let api: Api<Namespace> = Api::all(self.client.clone());
        let in_scope = |namespace: &str| {
            self.scope
                .iter()
                .any(|entry| entry.as_deref().is_none_or(|scoped| scoped == namespace))
        };
        let labelled: BTreeSet<String> = api
            .list_metadata(&ListParams::default().labels(&format!("{NAMESPACE_LABEL}=enabled")))
            .await?
            .items
            .into_iter()
            .filter_map(|namespace| namespace.metadata.name)
            .filter(|name| in_scope(name))
            .collect();
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        for namespace in wanted.difference(&labelled) {
            let patch = Patch::Merge(json!({"metadata": {"labels": {NAMESPACE_LABEL: "enabled"}}}));
            match api.patch(namespace, &params, &patch).await {
                Ok(_) => tracing::info!(%namespace, "Enabled the webhook for namespace"),
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error),
            }
        }
        for namespace in labelled.difference(&wanted) {
            let patch = Patch::Merge(json!({"metadata": {"labels": {NAMESPACE_LABEL: null}}}));
            match api.patch(namespace, &params, &patch).await {
                Ok(_) => tracing::info!(%namespace, "Disabled the webhook for namespace"),
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error("failed to read or write Secret {CERT_SECRET}")]
    Api(#[from] kube::Error),
    #[error(transparent)]
    Certificate(#[from] super::certs::CertError),
    #[error("Secret {CERT_SECRET} exists but does not hold the webhook's certificates; delete it")]
    Unusable,
    #[error("the leader has not created Secret {CERT_SECRET} yet")]
    NotCreatedYet,
}

impl From<rcgen::Error> for KeeperError {
    fn from(error: rcgen::Error) -> Self {
        Self::Certificate(super::certs::CertError::Generate(error))
    }
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
