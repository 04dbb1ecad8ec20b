//! The webhook's certificates: a long-lived CA and a short-lived serving certificate, kept in
//! one Secret, renewed before expiry, and reloaded by every replica without a restart.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

/// Keys of the Secret that holds the certificates.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
/// When the serving certificate is due for renewal, in Unix seconds.
pub const RENEW_AFTER: &str = "renew-after";

/// How long the CA is valid. Rotating it would need every replica and the API server to
/// trust two CAs for a while, so it is long-lived.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The certificates as stored in the Secret.
#[derive(Clone, Debug, PartialEq)]
pub struct Material {
    pub ca_cert: String,
    pub ca_key: String,
    pub tls_cert: String,
    pub tls_key: String,
    pub renew_after: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("failed to generate a certificate")]
    Generate(#[from] rcgen::Error),
    #[error("the serving certificate or key in the Secret is not valid PEM")]
    Pem,
    #[error("the serving key is not usable by rustls")]
    Key(#[source] rustls::Error),
}

impl Material {
    pub fn from_secret(secret: &Secret) -> Option<Self> {
        let data = secret.data.as_ref()?;
        let text = |key: &str| {
            data.get(key)
                .and_then(|value| String::from_utf8(value.0.clone()).ok())
        };
        Some(Self {
            ca_cert: text(CA_CERT)?,
            ca_key: text(CA_KEY)?,
            tls_cert: text(TLS_CERT)?,
            tls_key: text(TLS_KEY)?,
            renew_after: text(RENEW_AFTER)?.parse().ok()?,
        })
    }

    pub fn to_data(&self) -> std::collections::BTreeMap<String, ByteString> {
        [
            (CA_CERT, self.ca_cert.clone()),
            (CA_KEY, self.ca_key.clone()),
            (TLS_CERT, self.tls_cert.clone()),
            (TLS_KEY, self.tls_key.clone()),
            (RENEW_AFTER, self.renew_after.to_string()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), ByteString(value.into_bytes())))
        .collect()
    }

    /// A new CA and a serving certificate for `hosts`.
    pub fn generate(hosts: &[String], leaf_lifetime: Duration) -> Result<Self, CertError> {
        let ca_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "storagegrant webhook CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = OffsetDateTime::now_utc() - Duration::from_secs(300);
        params.not_after = OffsetDateTime::now_utc() + CA_LIFETIME;
        let ca_cert = params.self_signed(&ca_key)?.pem();
        Self::renew(ca_cert, ca_key.serialize_pem(), hosts, leaf_lifetime)
    }

    /// A new serving certificate signed by the existing CA.
    pub fn renew(
        ca_cert: String,
        ca_key: String,
        hosts: &[String],
        leaf_lifetime: Duration,
    ) -> Result<Self, CertError> {
        let signing_key = KeyPair::from_pem(&ca_key)?;
        let issuer = Issuer::from_ca_cert_pem(&ca_cert, signing_key)?;
        let leaf_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(
            DnType::CommonName,
            hosts.first().cloned().unwrap_or_default(),
        );
        params.subject_alt_names = hosts
            .iter()
            .map(|host| match host.parse::<std::net::IpAddr>() {
                Ok(address) => Ok(SanType::IpAddress(address)),
                Err(_) => host.clone().try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(60);
        params.not_after = now + leaf_lifetime;
        let tls_cert = params.signed_by(&leaf_key, &issuer)?.pem();
        // Renewed after two thirds of its lifetime, so that a missed check or two still
        // leaves time before it expires.
        let renew_after = (now + leaf_lifetime * 2 / 3).unix_timestamp();
        Ok(Self {
            ca_cert,
            ca_key,
            tls_cert,
            tls_key: leaf_key.serialize_pem(),
            renew_after,
        })
    }

    pub fn certified_key(&self) -> Result<CertifiedKey, CertError> {
        certified_key(&self.tls_cert, &self.tls_key)
    }
}

/// The serving certificate and key of PEM text, as rustls serves them.
pub fn certified_key(tls_cert: &str, tls_key: &str) -> Result<CertifiedKey, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(tls_cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| CertError::Pem)?;
    let key = PrivateKeyDer::from_pem_slice(tls_key.as_bytes()).map_err(|_| CertError::Pem)?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(CertError::Key)
}

/// Serves the current certificate to every TLS handshake; replaced in place on renewal.
#[derive(Debug, Default)]
pub struct CurrentCert(RwLock<Option<Arc<CertifiedKey>>>);

impl CurrentCert {
    pub fn set(&self, key: CertifiedKey) {
        *self.0.write().expect("certificate lock") = Some(Arc::new(key));
    }

    pub fn is_loaded(&self) -> bool {
        self.0.read().expect("certificate lock").is_some()
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().expect("certificate lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_material_loads_and_renews_with_same_ca() {
        let hosts = vec![
            "127.0.0.1".to_owned(),
            "storagegrant-controller.storagegrant-system.svc".to_owned(),
        ];
        let first = Material::generate(&hosts, Duration::from_secs(60)).unwrap();
        assert!(first.certified_key().is_ok());
        let renewed = Material::renew(
            first.ca_cert.clone(),
            first.ca_key.clone(),
            &hosts,
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(renewed.ca_cert, first.ca_cert);
        assert_ne!(renewed.tls_cert, first.tls_cert);
        assert!(renewed.renew_after > OffsetDateTime::now_utc().unix_timestamp());
    }

    #[test]
    fn material_survives_secret_round_trip() {
        let material =
            Material::generate(&["localhost".to_owned()], Duration::from_secs(60)).unwrap();
        let secret = Secret {
            data: Some(material.to_data()),
            ..Secret::default()
        };
        assert_eq!(Material::from_secret(&secret), Some(material));
    }
}
