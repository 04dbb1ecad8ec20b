//! What a grant writes on each kind of target: the table of methods and the entries they set.

use serde_json::json;
use storagegrant_api::{Method, Provider, StorageGrant, TargetKind, names};

use crate::fieldset::{Entry, Path, Step};

/// Why a grant cannot be written to a kind of target.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "the method {method} of provider {provider} on a {kind} is not supported by this controller version"
)]
pub struct Unsupported {
    pub provider: Provider,
    pub method: Method,
    pub kind: TargetKind,
}

/// The entries the grant writes on a target of `kind`.
pub fn entries(grant: &StorageGrant, kind: TargetKind) -> Result<Vec<Entry>, Unsupported> {
    let spec = &grant.spec;
    let grant_name = grant.metadata.name.as_deref().unwrap_or_default();
    let kept = names::kept_secret(grant_name);
    let unsupported = Unsupported {
        provider: spec.provider,
        method: spec.method,
        kind,
    };
    match (spec.provider, spec.method, kind.main_container()) {
        (Provider::Aws, Method::AccessKey, Some(container)) => Ok(vec![
            secret_env(container, "AWS_ACCESS_KEY_ID", &kept, "access_key"),
            secret_env(container, "AWS_SECRET_ACCESS_KEY", &kept, "secret_key"),
        ]),
        _ => Err(unsupported),
    }
}

/// The path of the main container in a group's pod overlay.
fn container_path(container: &str) -> Path {
    [
        "spec",
        "template",
        "spec",
        "overlay",
        "pod",
        "spec",
        "containers",
    ]
    .into_iter()
    .map(Step::field)
    .chain([Step::key("name", container)])
    .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fieldset::{apply_body, display_path};

    fn grant(yaml: &str) -> StorageGrant {
        serde_yaml::from_str(yaml).unwrap()
    }

    const AWS_KEYS: &str = r#"
apiVersion: storagegrant.dev/v1alpha1
kind: StorageGrant
metadata: {name: backup-s3, namespace: tidb}
spec:
  provider: AWS
  method: AccessKey
  secretRef: {name: s3-creds}
  targets: [{kind: TiFlashGroup, name: tiflash}]
"#;

    #[test]
    fn aws_keys_go_to_tiflash_container_of_tiflash_group() {
        let entries = entries(&grant(AWS_KEYS), TargetKind::TiFlashGroup).unwrap();
        let paths: Vec<String> = entries
            .iter()
            .map(|entry| display_path(&entry.path))
            .collect();
        assert_eq!(
            paths,
            [
                "spec.template.spec.overlay.pod.spec.containers[name=tiflash].env[name=AWS_ACCESS_KEY_ID]",
                "spec.template.spec.overlay.pod.spec.containers[name=tiflash].env[name=AWS_SECRET_ACCESS_KEY]",
            ]
        );
    }

    #[test]
    fn aws_keys_reference_kept_secret() {
        let entries = entries(&grant(AWS_KEYS), TargetKind::TiKvGroup).unwrap();
        let body = apply_body(json!({}), &entries);
        let env = &body["spec"]["template"]["spec"]["overlay"]["pod"]["spec"]["containers"][0];
        assert_eq!(env["name"], "tikv");
        assert_eq!(
            env["env"][1],
            json!({"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {
                "name": "backup-s3-storagegrant", "key": "secret_key"}}})
        );
    }
}
