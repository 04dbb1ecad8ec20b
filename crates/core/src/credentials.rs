//! Checks of the source Secret named by `spec.secretRef`, and the data of the Secret the
//! controller keeps in the layout TiDB expects.
//!
//! Messages name the Secret and the key, never a value, not even its length.

use std::collections::BTreeMap;

use storagegrant_api::{Method, Provider, StorageGrantSpec};

/// Secret data, key to raw bytes.
pub type SecretData = BTreeMap<String, Vec<u8>>;

/// Why the credentials cannot be used; each variant is the reason of `CredentialsValid=False`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "Secret {secret} named by spec.secretRef.name was not found in the grant's namespace; \
         create it with the keys {expected}"
    )]
    SecretNotFound { secret: String, expected: String },

    #[error(
        "Secret {secret} has no key {key} ({field}); add the key, or set {field} to the key \
         that holds this credential"
    )]
    SecretKeyMissing {
        secret: String,
        key: String,
        field: String,
    },

    #[error("key {key} of Secret {secret} is empty; put the credential in it")]
    SecretKeyEmpty { secret: String, key: String },

    #[error(
        "key {key} of Secret {secret} contains whitespace or a line break; remove it (a trailing \
         newline from `echo` is the usual cause)"
    )]
    SecretValueMalformed { secret: String, key: String },

    #[error(
        "key {key} of Secret {secret} does not hold an AWS access key ID: expected 16 to 128 \
         letters and digits, such as AKIA followed by 16 characters"
    )]
    InvalidAccessKeyId { secret: String, key: String },

    #[error(
        "key {key} of Secret {secret} holds a temporary AWS access key ID (it starts with ASIA), \
         which only works with a session token that TiDB cannot be given; use a long-term key \
         (AKIA...) or the method PodRole or ServiceAccountRole"
    )]
    TemporaryAccessKey { secret: String, key: String },

    #[error(
        "key {key} of Secret {secret} does not hold a GCP service-account key: {problem}; put \
         the JSON key file of a service account there"
    )]
    InvalidServiceAccountKey {
        secret: String,
        key: String,
        problem: &'static str,
    },

    #[error(
        "key {key} of Secret {secret} does not hold an Azure storage account name: expected 3 \
         to 24 lower-case letters and digits"
    )]
    InvalidStorageAccount { secret: String, key: String },

    #[error("key {key} of Secret {secret} does not hold an Azure storage key: expected base64")]
    InvalidStorageKey { secret: String, key: String },

    #[error(
        "key {key} of Secret {secret} does not hold an Azure AD {what}: expected a GUID such as \
         00000000-0000-0000-0000-000000000000"
    )]
    InvalidGuid {
        secret: String,
        key: String,
        what: &'static str,
    },

    #[error(
        "Secret {secret} exists but is not kept by this grant, so it is left alone; delete or \
         rename it, or rename the grant"
    )]
    SecretNameTaken { secret: String },

    #[error("the method {method} does not belong to the provider {provider}")]
    MethodNotSupported { provider: Provider, method: Method },

    #[error(
        "ServiceAccount {account} exists and is not labelled storagegrant.dev/adopt=true, so the \
         grant leaves it alone; label it to let the grant annotate it with the role, or set \
         spec.serviceAccountName to a name that is free"
    )]
    ServiceAccountNotAdoptable { account: String },

    #[error("ServiceAccount {account} could not be annotated with the role: {detail}")]
    ServiceAccountConflict { account: String, detail: String },
}

impl CredentialError {
    /// The condition reason for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::SecretNotFound { .. } => "SecretNotFound",
            Self::SecretKeyMissing { .. } => "SecretKeyMissing",
            Self::SecretKeyEmpty { .. } => "SecretKeyEmpty",
            Self::SecretValueMalformed { .. } => "SecretValueMalformed",
            Self::InvalidAccessKeyId { .. } => "InvalidAccessKeyId",
            Self::TemporaryAccessKey { .. } => "TemporaryAccessKey",
            Self::InvalidServiceAccountKey { .. } => "InvalidServiceAccountKey",
            Self::InvalidStorageAccount { .. } => "InvalidStorageAccount",
            Self::InvalidStorageKey { .. } => "InvalidStorageKey",
            Self::InvalidGuid { .. } => "InvalidGuid",
            Self::SecretNameTaken { .. } => "SecretNameTaken",
            Self::MethodNotSupported { .. } => "MethodNotSupported",
            Self::ServiceAccountNotAdoptable { .. } => "ServiceAccountNotAdoptable",
            Self::ServiceAccountConflict { .. } => "ServiceAccountConflict",
        }
    }
}

/// One credential the method reads from the source Secret.
struct Credential {
    /// The field of `spec.secretRef.keys` that may rename the source key.
    field: &'static str,
    /// The source key when `spec.secretRef.keys` does not name one, and the key in the kept
    /// Secret, where TiDB reads it.
    key: &'static str,
    /// Whether whitespace is part of valid values (a JSON key file has line breaks).
    multi_line: bool,
    check: fn(&str) -> Result<(), ValueProblem>,
}

enum ValueProblem {
    InvalidAccessKeyId,
    TemporaryAccessKey,
    InvalidServiceAccountKey(&'static str),
    InvalidStorageAccount,
    InvalidStorageKey,
    InvalidGuid(&'static str),
}

const fn credential(
    field: &'static str,
    key: &'static str,
    check: fn(&str) -> Result<(), ValueProblem>,
) -> Credential {
    Credential {
        field,
        key,
        multi_line: false,
        check,
    }
}

/// The credentials of a method, or `None` for the methods that need no Secret.
fn credentials_of(provider: Provider, method: Method) -> Option<Vec<Credential>> {
    let credentials = match (provider, method) {
        (Provider::Aws, Method::AccessKey) => vec![
            credential("accessKeyId", "access_key", check_access_key_id),
            credential("secretAccessKey", "secret_key", |_| Ok(())),
        ],
        (Provider::Gcp, Method::ServiceAccountKey) => vec![Credential {
            field: "credentials",
            key: "credentials",
            multi_line: true,
            check: check_service_account_key,
        }],
        (Provider::Azure, Method::AccessKey) => vec![
            credential(
                "storageAccount",
                "AZURE_STORAGE_ACCOUNT",
                check_storage_account,
            ),
            credential("storageKey", "AZURE_STORAGE_KEY", check_storage_key),
        ],
        (Provider::Azure, Method::AzureAd) => vec![
            credential(
                "storageAccount",
                "AZURE_STORAGE_ACCOUNT",
                check_storage_account,
            ),
            credential("clientId", "AZURE_CLIENT_ID", |value| {
                check_guid(value, "client ID")
            }),
            credential("tenantId", "AZURE_TENANT_ID", |value| {
                check_guid(value, "tenant ID")
            }),
            credential("clientSecret", "AZURE_CLIENT_SECRET", |_| Ok(())),
        ],
        _ => return None,
    };
    Some(credentials)
}

fn check_access_key_id(value: &str) -> Result<(), ValueProblem> {
    let plausible =
        (16..=128).contains(&value.len()) && value.bytes().all(|byte| byte.is_ascii_alphanumeric());
    if !plausible {
        Err(ValueProblem::InvalidAccessKeyId)
    } else if value.starts_with("ASIA") {
        Err(ValueProblem::TemporaryAccessKey)
    } else {
        Ok(())
    }
}

fn check_service_account_key(value: &str) -> Result<(), ValueProblem> {
    let Ok(key) = serde_json::from_str::<serde_json::Value>(value) else {
        return Err(ValueProblem::InvalidServiceAccountKey("it is not JSON"));
    };
    let text = |field: &str| {
        key.get(field)
            .and_then(serde_json::Value::as_str)
            .filter(|text| !text.is_empty())
    };
    if text("type") != Some("service_account") {
        return Err(ValueProblem::InvalidServiceAccountKey(
            "its type is not service_account",
        ));
    }
    if text("client_email").is_none() {
        return Err(ValueProblem::InvalidServiceAccountKey(
            "it has no client_email",
        ));
    }
    match text("private_key") {
        Some(private_key) if private_key.contains("PRIVATE KEY") => Ok(()),
        _ => Err(ValueProblem::InvalidServiceAccountKey(
            "it has no PEM private_key",
        )),
    }
}

/// Azure storage account names: 3 to 24 lower-case letters and digits.
fn check_storage_account(value: &str) -> Result<(), ValueProblem> {
    let valid = (3..=24).contains(&value.len())
        && value
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(ValueProblem::InvalidStorageAccount)
    }
}

fn check_storage_key(value: &str) -> Result<(), ValueProblem> {
    use base64::Engine;
    match base64::engine::general_purpose::STANDARD.decode(value) {
        Ok(decoded) if !decoded.is_empty() => Ok(()),
        _ => Err(ValueProblem::InvalidStorageKey),
    }
}

fn check_guid(value: &str, what: &'static str) -> Result<(), ValueProblem> {
    let groups: Vec<&str> = value.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|group| group.len()).collect();
    let valid = lengths == [8, 4, 4, 4, 12]
        && groups
            .iter()
            .all(|group| group.bytes().all(|byte| byte.is_ascii_hexdigit()));
    if valid {
        Ok(())
    } else {
        Err(ValueProblem::InvalidGuid(what))
    }
}

/// Whether the grant's method reads a Secret, so that a missing one is an error.
pub fn requires_secret(spec: &StorageGrantSpec) -> bool {
    spec.method.uses_secret()
}

fn key_override<'a>(spec: &'a StorageGrantSpec, field: &str) -> Option<&'a str> {
    let keys = spec.secret_ref.as_ref()?.keys.as_ref()?;
    let key = match field {
        "accessKeyId" => &keys.access_key_id,
        "secretAccessKey" => &keys.secret_access_key,
        "credentials" => &keys.credentials,
        "storageAccount" => &keys.storage_account,
        "storageKey" => &keys.storage_key,
        "clientId" => &keys.client_id,
        "tenantId" => &keys.tenant_id,
        "clientSecret" => &keys.client_secret,
        _ => &None,
    };
    key.as_deref()
}

fn value_error(problem: ValueProblem, secret: String, key: String) -> CredentialError {
    match problem {
        ValueProblem::InvalidAccessKeyId => CredentialError::InvalidAccessKeyId { secret, key },
        ValueProblem::TemporaryAccessKey => CredentialError::TemporaryAccessKey { secret, key },
        ValueProblem::InvalidServiceAccountKey(problem) => {
            CredentialError::InvalidServiceAccountKey {
                secret,
                key,
                problem,
            }
        }
        ValueProblem::InvalidStorageAccount => {
            CredentialError::InvalidStorageAccount { secret, key }
        }
        ValueProblem::InvalidStorageKey => CredentialError::InvalidStorageKey { secret, key },
        ValueProblem::InvalidGuid(what) => CredentialError::InvalidGuid { secret, key, what },
    }
}

/// Checks the source Secret and returns the data of the kept Secret, or `None` for a method
/// that keeps no Secret.
pub fn kept_secret_data(
    spec: &StorageGrantSpec,
    source: Option<&SecretData>,
) -> Result<Option<SecretData>, CredentialError> {
    if !spec.method.uses_secret() {
        return Ok(None);
    }
    let credentials =
        credentials_of(spec.provider, spec.method).ok_or(CredentialError::MethodNotSupported {
            provider: spec.provider,
            method: spec.method,
        })?;
    let secret = spec
        .secret_ref
        .as_ref()
        .map(|secret_ref| secret_ref.name.clone())
        .unwrap_or_default();
    let Some(source) = source else {
        let expected: Vec<&str> = credentials
            .iter()
            .map(|credential| key_override(spec, credential.field).unwrap_or(credential.key))
            .collect();
        return Err(CredentialError::SecretNotFound {
            secret,
            expected: expected.join(", "),
        });
    };

    let mut kept = SecretData::new();
    for credential in &credentials {
        let key = key_override(spec, credential.field)
            .unwrap_or(credential.key)
            .to_owned();
        let Some(bytes) = source.get(&key) else {
            let field = format!("spec.secretRef.keys.{}", credential.field);
            return Err(CredentialError::SecretKeyMissing { secret, key, field });
        };
        if bytes.is_empty() {
            return Err(CredentialError::SecretKeyEmpty { secret, key });
        }
        let Ok(text) = std::str::from_utf8(bytes) else {
            return Err(CredentialError::SecretValueMalformed { secret, key });
        };
        if !credential.multi_line && text.chars().any(char::is_whitespace) {
            return Err(CredentialError::SecretValueMalformed { secret, key });
        }
        if let Err(problem) = (credential.check)(text) {
            return Err(value_error(problem, secret, key));
        }
        kept.insert(credential.key.to_owned(), bytes.clone());
    }
    Ok(Some(kept))
}

#[cfg(test)]
mod tests {
    use storagegrant_api::{SecretKeys, SecretRef, TargetKind, TargetRef};

    use super::*;

    const KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
    const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn aws_spec(keys: Option<SecretKeys>) -> StorageGrantSpec {
        StorageGrantSpec {
            provider: Provider::Aws,
            method: Method::AccessKey,
            secret_ref: Some(SecretRef {
                name: "s3-creds".into(),
                keys,
            }),
            role_arn: None,
            service_account_name: None,
            targets: vec![TargetRef {
                kind: TargetKind::TiKvGroup,
                name: Some("tikv".into()),
                selector: None,
                cluster: None,
            }],
            drift_policy: None,
        }
    }

    fn data(pairs: &[(&str, &str)]) -> SecretData {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn aws_keys_are_copied_to_tidb_layout() {
        let source = data(&[
            ("access_key", KEY_ID),
            ("secret_key", SECRET_KEY),
            ("other", "x"),
        ]);
        let kept = kept_secret_data(&aws_spec(None), Some(&source))
            .unwrap()
            .unwrap();
        assert_eq!(
            kept,
            data(&[("access_key", KEY_ID), ("secret_key", SECRET_KEY)])
        );
    }

    #[test]
    fn renamed_source_keys_are_read() {
        let keys = SecretKeys {
            access_key_id: Some("AWS_ACCESS_KEY_ID".into()),
            secret_access_key: Some("AWS_SECRET_ACCESS_KEY".into()),
            ..SecretKeys::default()
        };
        let source = data(&[
            ("AWS_ACCESS_KEY_ID", KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ]);
        let kept = kept_secret_data(&aws_spec(Some(keys)), Some(&source))
            .unwrap()
            .unwrap();
        assert_eq!(
            kept,
            data(&[("access_key", KEY_ID), ("secret_key", SECRET_KEY)])
        );
    }

    #[test]
    fn missing_secret_names_expected_keys() {
        let error = kept_secret_data(&aws_spec(None), None).unwrap_err();
        assert_eq!(error.reason(), "SecretNotFound");
        assert!(error.to_string().contains("s3-creds"));
        assert!(error.to_string().contains("access_key, secret_key"));
    }

    #[test]
    fn missing_key_names_key_and_field() {
        let source = data(&[("access_key", KEY_ID)]);
        let error = kept_secret_data(&aws_spec(None), Some(&source)).unwrap_err();
        assert_eq!(error.reason(), "SecretKeyMissing");
        assert!(error.to_string().contains("secret_key"));
        assert!(
            error
                .to_string()
                .contains("spec.secretRef.keys.secretAccessKey")
        );
    }

    #[test]
    fn bad_values_are_rejected_without_showing_them() {
        let cases = [
            ("", SECRET_KEY, "SecretKeyEmpty"),
            ("AKIAIOSFODNN7EXAMPLE\n", SECRET_KEY, "SecretValueMalformed"),
            ("AKIA-NOT-A-KEY", SECRET_KEY, "InvalidAccessKeyId"),
            ("AKIA12", SECRET_KEY, "InvalidAccessKeyId"),
            ("ASIAIOSFODNN7EXAMPLE", SECRET_KEY, "TemporaryAccessKey"),
            (KEY_ID, "with space", "SecretValueMalformed"),
            (KEY_ID, "", "SecretKeyEmpty"),
        ];
        for (key_id, secret_key, reason) in cases {
            let source = data(&[("access_key", key_id), ("secret_key", secret_key)]);
            let error = kept_secret_data(&aws_spec(None), Some(&source)).unwrap_err();
            assert_eq!(error.reason(), reason, "access key {key_id:?}");
            let message = error.to_string();
            if !key_id.is_empty() {
                assert!(!message.contains(key_id.trim()), "{message}");
            }
            if !secret_key.is_empty() {
                assert!(!message.contains(secret_key), "{message}");
            }
        }
    }
}
