//! Every method on every target kind, through the public functions of the core.

use serde_json::{Value, json};
use storagegrant_api::{StorageGrant, TargetKind, TargetState};
use storagegrant_core::credentials::{SecretData, kept_secret_data};
use storagegrant_core::fieldset::{apply_body, display_path};
use storagegrant_core::target::{Facts, plan};
use storagegrant_core::{desired, target};

fn grant(spec: Value) -> StorageGrant {
    serde_json::from_value(json!({
        "apiVersion": "storagegrant.dev/v1alpha1",
        "kind": "StorageGrant",
        "metadata": {"name": "g", "namespace": "tidb", "uid": "grant-uid"},
        "spec": spec,
    }))
    .unwrap()
}

fn aws_keys() -> StorageGrant {
    grant(
        json!({"provider": "AWS", "method": "AccessKey", "secretRef": {"name": "s"}, "targets": [{"kind": "Backup", "cluster": "demo"}]}),
    )
}

fn pod_role() -> StorageGrant {
    grant(
        json!({"provider": "AWS", "method": "PodRole", "roleArn": "arn:aws:iam::123456789012:role/br", "targets": [{"kind": "TiKVGroup", "name": "tikv"}]}),
    )
}

fn irsa() -> StorageGrant {
    grant(
        json!({"provider": "AWS", "method": "ServiceAccountRole", "roleArn": "arn:aws:iam::123456789012:role/br", "serviceAccountName": "br-s3", "targets": [{"kind": "TiKVGroup", "name": "tikv"}]}),
    )
}

fn gcp() -> StorageGrant {
    grant(
        json!({"provider": "GCP", "method": "ServiceAccountKey", "secretRef": {"name": "s"}, "targets": [{"kind": "TiKVGroup", "name": "tikv"}]}),
    )
}

fn azure(method: &str) -> StorageGrant {
    grant(
        json!({"provider": "Azure", "method": method, "secretRef": {"name": "s"}, "targets": [{"kind": "TiKVGroup", "name": "tikv"}]}),
    )
}

fn group(kind: &str, overlay: Value) -> Value {
    json!({
        "apiVersion": "core.pingcap.com/v1alpha1", "kind": kind,
        "metadata": {"name": "group", "namespace": "tidb", "uid": "u"},
        "spec": {"cluster": {"name": "demo"}, "template": {"spec": {"overlay": {"pod": overlay}}}},
    })
}

fn job(kind: &str, spec: Value, phase: Option<&str>) -> Value {
    let mut object = json!({
        "apiVersion": "br.pingcap.com/v1alpha1", "kind": kind,
        "metadata": {"name": "job", "namespace": "tidb", "uid": "u"},
        "spec": spec,
    });
    if let Some(phase) = phase {
        object["status"] = json!({"phase": phase});
    }
    object
}

fn paths(grant: &StorageGrant, kind: TargetKind, object: &Value) -> Vec<String> {
    desired::entries(grant, kind, object)
        .unwrap()
        .iter()
        .map(|entry| display_path(&entry.path))
        .collect()
}

fn valid() -> Facts {
    Facts {
        credentials_valid: true,
        ..Facts::default()
    }
}

const CONTAINER: &str = "spec.template.spec.overlay.pod.spec.containers[name=tikv]";

#[test]
fn pod_role_annotates_group_pods() {
    let object = group("TiKVGroup", json!({}));
    assert_eq!(
        paths(&pod_role(), TargetKind::TiKvGroup, &object),
        ["spec.template.spec.overlay.pod.metadata.annotations.iam.amazonaws.com/role"]
    );
    let body = plan(&pod_role(), TargetKind::TiKvGroup, &object, &valid())
        .apply
        .unwrap()
        .body;
    assert_eq!(
        body["spec"]["template"]["spec"]["overlay"]["pod"]["metadata"]["annotations"]["iam.amazonaws.com/role"],
        "arn:aws:iam::123456789012:role/br"
    );
    assert!(
        body["spec"]["template"]["spec"]["overlay"]["pod"]
            .get("annotations")
            .is_none(),
        "overlay.pod.annotations does not exist in the schema"
    );
}

#[test]
fn pod_role_on_host_network_is_invalid() {
    let object = group("TiKVGroup", json!({"spec": {"hostNetwork": true}}));
    let result = plan(&pod_role(), TargetKind::TiKvGroup, &object, &valid());
    assert_eq!(result.outcome.state, TargetState::Invalid);
    assert_eq!(result.outcome.reason.as_deref(), Some("HostNetwork"));
    assert!(result.apply.is_none());
}

#[test]
fn irsa_sets_service_account_name() {
    let object = group("TiFlashGroup", json!({}));
    let body = plan(&irsa(), TargetKind::TiFlashGroup, &object, &valid())
        .apply
        .unwrap()
        .body;
    assert_eq!(
        body["spec"]["template"]["spec"]["overlay"]["pod"]["spec"]["serviceAccountName"],
        "br-s3"
    );
}

#[test]
fn gcp_key_is_mounted_directory_with_variable() {
    let object = group("TiKVGroup", json!({}));
    assert_eq!(
        paths(&gcp(), TargetKind::TiKvGroup, &object),
        [
            "spec.template.spec.overlay.pod.spec.volumes[name=storagegrant-g]".to_owned(),
            format!("{CONTAINER}.volumeMounts[mountPath=/var/run/secrets/storagegrant/g]"),
            format!("{CONTAINER}.env[name=GOOGLE_APPLICATION_CREDENTIALS]"),
        ]
    );
    let body = apply_body(
        json!({}),
        &desired::entries(&gcp(), TargetKind::TiKvGroup, &object).unwrap(),
    );
    let pod = &body["spec"]["template"]["spec"]["overlay"]["pod"]["spec"];
    assert_eq!(
        pod["volumes"][0],
        json!({"name": "storagegrant-g", "secret": {"secretName": "g-storagegrant"}})
    );
    let container = &pod["containers"][0];
    assert_eq!(
        container["volumeMounts"][0],
        json!({"name": "storagegrant-g", "mountPath": "/var/run/secrets/storagegrant/g", "readOnly": true})
    );
    assert!(
        container["volumeMounts"][0].get("subPath").is_none(),
        "a subPath mount never sees a rotated key"
    );
    assert_eq!(
        container["env"][0]["value"],
        "/var/run/secrets/storagegrant/g/credentials"
    );
}

#[test]
fn azure_methods_read_each_key_from_kept_secret() {
    let object = group("TiKVGroup", json!({}));
    let variables = |grant: &StorageGrant| -> Vec<String> {
        desired::entries(grant, TargetKind::TiKvGroup, &object)
            .unwrap()
            .iter()
            .map(|entry| {
                assert_eq!(
                    entry.value["valueFrom"]["secretKeyRef"]["name"],
                    "g-storagegrant"
                );
                assert_eq!(
                    entry.value["valueFrom"]["secretKeyRef"]["key"],
                    entry.value["name"]
                );
                entry.value["name"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    assert_eq!(
        variables(&azure("AccessKey")),
        ["AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY"]
    );
    assert_eq!(
        variables(&azure("AzureAD")),
        [
            "AZURE_STORAGE_ACCOUNT",
            "AZURE_CLIENT_ID",
            "AZURE_TENANT_ID",
            "AZURE_CLIENT_SECRET"
        ]
    );
}

#[test]
fn tiflash_group_uses_tiflash_container() {
    let object = group("TiFlashGroup", json!({}));
    let found = paths(&azure("AccessKey"), TargetKind::TiFlashGroup, &object);
    assert!(
        found
            .iter()
            .all(|path| path.contains("containers[name=tiflash]")),
        "{found:?}"
    );
}

#[test]
fn backup_gets_secret_name_of_its_provider_block() {
    let object = job(
        "Backup",
        json!({"br": {"cluster": "demo"}, "s3": {"provider": "aws", "bucket": "b"}}),
        None,
    );
    assert_eq!(
        paths(&aws_keys(), TargetKind::Backup, &object),
        ["spec.s3.secretName"]
    );
    let gcs = job(
        "Backup",
        json!({"br": {"cluster": "demo"}, "gcs": {"projectId": "p"}}),
        None,
    );
    assert_eq!(
        paths(&gcp(), TargetKind::Backup, &gcs),
        ["spec.gcs.secretName"]
    );
    let azblob = job(
        "Backup",
        json!({"br": {"cluster": "demo"}, "azblob": {"container": "c"}}),
        None,
    );
    assert_eq!(
        paths(&azure("AzureAD"), TargetKind::Backup, &azblob),
        ["spec.azblob.secretName"]
    );
}

#[test]
fn restore_with_pitr_gets_both_secret_names() {
    let object = job(
        "Restore",
        json!({"br": {"cluster": "demo"}, "s3": {"provider": "aws"}, "pitrFullBackupStorageProvider": {"s3": {"provider": "aws"}}}),
        None,
    );
    assert_eq!(
        paths(&aws_keys(), TargetKind::Restore, &object),
        [
            "spec.s3.secretName",
            "spec.pitrFullBackupStorageProvider.s3.secretName"
        ]
    );
}

#[test]
fn role_methods_on_backup() {
    let object = job(
        "Backup",
        json!({"br": {"cluster": "demo"}, "s3": {"provider": "aws"}}),
        None,
    );
    assert_eq!(
        paths(&pod_role(), TargetKind::Backup, &object),
        ["metadata.annotations.iam.amazonaws.com/role"]
    );
    assert_eq!(
        paths(&irsa(), TargetKind::Backup, &object),
        ["spec.serviceAccount"]
    );
}

#[test]
fn backup_of_other_provider_is_invalid() {
    let object = job(
        "Backup",
        json!({"br": {"cluster": "demo"}, "gcs": {"projectId": "p"}}),
        None,
    );
    let result = plan(&aws_keys(), TargetKind::Backup, &object, &valid());
    assert_eq!(result.outcome.state, TargetState::Invalid);
    assert!(result.outcome.message.unwrap().contains("spec.gcs"));
    assert!(result.apply.is_none());
}

#[test]
fn backup_without_provider_block_is_invalid() {
    let object = job("Backup", json!({"br": {"cluster": "demo"}}), None);
    let result = plan(&gcp(), TargetKind::Backup, &object, &valid());
    assert_eq!(
        result.outcome.reason.as_deref(),
        Some("StorageNotConfigured")
    );
    assert!(
        result
            .outcome
            .message
            .unwrap()
            .contains("spec.gcs.projectId")
    );
}

#[test]
fn started_backup_without_fields_is_late() {
    let object = job(
        "Backup",
        json!({"br": {"cluster": "demo"}, "s3": {"provider": "aws"}}),
        Some("Running"),
    );
    let result = plan(&aws_keys(), TargetKind::Backup, &object, &valid());
    assert_eq!(result.outcome.state, TargetState::Late);
    assert!(result.apply.is_none());
}

#[test]
fn finished_backup_is_finished() {
    let object = job(
        "Backup",
        json!({"br": {"cluster": "demo"}, "s3": {"provider": "aws"}}),
        Some("Complete"),
    );
    let result = plan(&aws_keys(), TargetKind::Backup, &object, &valid());
    assert_eq!(result.outcome.state, TargetState::Finished);
    assert!(result.apply.is_none());
}

#[test]
fn started_backup_with_unowned_fields_is_claimed() {
    let object = job(
        "Backup",
        json!({"br": {"cluster": "demo"}, "s3": {"provider": "aws", "secretName": "g-storagegrant"}}),
        Some("Running"),
    );
    let result = plan(&aws_keys(), TargetKind::Backup, &object, &valid());
    assert_eq!(result.outcome.state, TargetState::InSync);
    let apply = result.apply.expect("a claim");
    assert_eq!(
        apply.body["spec"]["s3"],
        json!({"secretName": "g-storagegrant"})
    );
}

#[test]
fn send_cred_off_only_when_cluster_has_identity() {
    let object = job(
        "Backup",
        json!({"br": {"cluster": "demo"}, "s3": {"provider": "aws"}}),
        None,
    );
    let with = Facts {
        cluster_has_identity: true,
        ..valid()
    };
    let body = plan(&pod_role(), TargetKind::Backup, &object, &with)
        .apply
        .unwrap()
        .body;
    assert_eq!(body["spec"]["br"]["sendCredToTikv"], false);
    let body = plan(&pod_role(), TargetKind::Backup, &object, &valid())
        .apply
        .unwrap()
        .body;
    assert!(
        body["spec"].get("br").is_none(),
        "sendCredToTikv written without the identity on TiKV"
    );
}

#[test]
fn user_send_cred_off_without_identity_is_reported() {
    let object = job(
        "Backup",
        json!({"br": {"cluster": "demo", "sendCredToTikv": false}, "s3": {"provider": "aws"}}),
        None,
    );
    let result = plan(&pod_role(), TargetKind::Backup, &object, &valid());
    assert_eq!(
        result.outcome.reason.as_deref(),
        Some("TiKVLacksCredentials")
    );
    assert!(
        result.apply.is_some(),
        "the grant's own fields are still written"
    );
}

#[test]
fn overriding_backup_fields_are_reported() {
    let env = job(
        "Backup",
        json!({"br": {"cluster": "demo"}, "s3": {"provider": "aws"}, "env": [{"name": "AWS_ACCESS_KEY_ID", "value": "x"}]}),
        None,
    );
    assert_eq!(
        plan(&aws_keys(), TargetKind::Backup, &env, &valid())
            .outcome
            .reason
            .as_deref(),
        Some("OverriddenBySpecEnv")
    );
    let sas = job(
        "Backup",
        json!({"br": {"cluster": "demo"}, "azblob": {"sasToken": "t"}}),
        None,
    );
    assert_eq!(
        plan(&azure("AccessKey"), TargetKind::Backup, &sas, &valid())
            .outcome
            .reason
            .as_deref(),
        Some("OverriddenBySasToken")
    );
    let account = job(
        "Backup",
        json!({"br": {"cluster": "demo"}, "azblob": {"storageAccount": "other"}}),
        None,
    );
    let facts = Facts {
        azure_account: Some("mine".into()),
        ..valid()
    };
    assert_eq!(
        plan(&azure("AccessKey"), TargetKind::Backup, &account, &facts)
            .outcome
            .reason
            .as_deref(),
        Some("StorageAccountMismatch")
    );
    let other_namespace = job(
        "Backup",
        json!({"br": {"cluster": "demo", "clusterNamespace": "elsewhere"}, "s3": {"provider": "aws"}}),
        None,
    );
    let result = plan(&aws_keys(), TargetKind::Backup, &other_namespace, &valid());
    assert_eq!(
        result.outcome.reason.as_deref(),
        Some("ClusterInOtherNamespace")
    );
    assert!(result.apply.is_none());
}

#[test]
fn missing_br_permission_is_reported() {
    let object = job(
        "Backup",
        json!({"br": {"cluster": "demo"}, "s3": {"provider": "aws"}}),
        None,
    );
    let facts = Facts {
        br_account_lacking: Some("tidb-backup-manager".into()),
        ..valid()
    };
    let result = plan(&aws_keys(), TargetKind::Backup, &object, &facts);
    assert_eq!(
        result.outcome.reason.as_deref(),
        Some("BackupManagerPermissionMissing")
    );
}

#[test]
fn group_identity_is_read_from_its_overlay() {
    let bare = group("TiKVGroup", json!({}));
    assert!(!target::group_carries_identity(
        &pod_role(),
        TargetKind::TiKvGroup,
        &bare
    ));
    let annotated = group(
        "TiKVGroup",
        json!({"metadata": {"annotations": {"iam.amazonaws.com/role": "arn:aws:iam::123456789012:role/br"}}}),
    );
    assert!(target::group_carries_identity(
        &pod_role(),
        TargetKind::TiKvGroup,
        &annotated
    ));
}

fn data(pairs: &[(&str, &str)]) -> SecretData {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.as_bytes().to_vec()))
        .collect()
}

#[test]
fn gcp_key_must_be_service_account_json() {
    let key = r#"{"type": "service_account", "client_email": "br@p.iam.gserviceaccount.com",
        "private_key": "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"}"#;
    let kept = kept_secret_data(&gcp().spec, Some(&data(&[("credentials", key)])))
        .unwrap()
        .unwrap();
    assert_eq!(kept.keys().collect::<Vec<_>>(), ["credentials"]);
    for (bad, problem) in [
        ("not json", "not JSON"),
        (r#"{"type": "user"}"#, "type"),
        (
            r#"{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----"}"#,
            "client_email",
        ),
    ] {
        let error =
            kept_secret_data(&gcp().spec, Some(&data(&[("credentials", bad)]))).unwrap_err();
        assert_eq!(error.reason(), "InvalidServiceAccountKey");
        assert!(error.to_string().contains(problem), "{error}");
    }
}

#[test]
fn azure_credentials_are_checked() {
    let good = [
        ("AZURE_STORAGE_ACCOUNT", "tidbbackups"),
        ("AZURE_STORAGE_KEY", "c2VjcmV0LWtleQ=="),
    ];
    assert!(kept_secret_data(&azure("AccessKey").spec, Some(&data(&good))).is_ok());
    let bad_account = [
        ("AZURE_STORAGE_ACCOUNT", "Tidb_Backups"),
        ("AZURE_STORAGE_KEY", "c2VjcmV0LWtleQ=="),
    ];
    assert_eq!(
        kept_secret_data(&azure("AccessKey").spec, Some(&data(&bad_account)))
            .unwrap_err()
            .reason(),
        "InvalidStorageAccount"
    );
    let bad_key = [
        ("AZURE_STORAGE_ACCOUNT", "tidbbackups"),
        ("AZURE_STORAGE_KEY", "not-base64!"),
    ];
    assert_eq!(
        kept_secret_data(&azure("AccessKey").spec, Some(&data(&bad_key)))
            .unwrap_err()
            .reason(),
        "InvalidStorageKey"
    );
    let ad = |client: &str| {
        data(&[
            ("AZURE_STORAGE_ACCOUNT", "tidbbackups"),
            ("AZURE_CLIENT_ID", client),
            ("AZURE_TENANT_ID", "72f988bf-86f1-41af-91ab-2d7cd011db47"),
            ("AZURE_CLIENT_SECRET", "s3cr3t"),
        ])
    };
    assert!(
        kept_secret_data(
            &azure("AzureAD").spec,
            Some(&ad("0e4a1c2d-3b5f-4a6e-8c7d-9f0a1b2c3d4e"))
        )
        .is_ok()
    );
    let error = kept_secret_data(&azure("AzureAD").spec, Some(&ad("my-app"))).unwrap_err();
    assert_eq!(error.reason(), "InvalidGuid");
    assert!(
        error.to_string().contains("AZURE_CLIENT_ID") && error.to_string().contains("client ID"),
        "{error}"
    );
}

#[test]
fn role_methods_keep_no_secret() {
    assert_eq!(kept_secret_data(&pod_role().spec, None), Ok(None));
    assert_eq!(kept_secret_data(&irsa().spec, None), Ok(None));
}
