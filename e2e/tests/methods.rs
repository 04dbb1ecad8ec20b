//! Every method in the form the real TiDB Operator accepts, on groups, Backups and Restores,
//! against a real API server.

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Api;
use serde_json::{Value, json};
use storagegrant_api::TargetState::{Finished, InSync, Invalid, Late};
use storagegrant_e2e::fixtures::{
    TestEnv, backup, condition, group, has_condition, secret, target_state, targets_in_state,
    user_view,
};
use storagegrant_e2e::objects::{apply, create};

const ROLE: &str = "arn:aws:iam::123456789012:role/tidb-backup";
const GCP_KEY: &str = r#"{"type": "service_account", "project_id": "demo", "client_email": "br@demo.iam.gserviceaccount.com", "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"}"#;

fn grant(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "storagegrant.dev/v1alpha1", "kind": "StorageGrant", "metadata": {"name": name}, "spec": spec})
}

/// A group overlay with the user's own annotation, env entry and extra container.
fn user_overlay(container: &str) -> Value {
    json!({
        "metadata": {"annotations": {"example.com/owner": "db-team"}},
        "spec": {"containers": [
            {"name": container, "env": [{"name": "TZ", "value": "UTC"}]},
            {"name": "log-shipper", "image": "busybox:1.36"},
        ]},
    })
}

fn pod(object: &Value) -> &Value {
    object
        .pointer("/spec/template/spec/overlay/pod")
        .unwrap_or(&Value::Null)
}

fn container<'a>(object: &'a Value, name: &str) -> &'a Value {
    pod(object)["spec"]["containers"]
        .as_array()
        .and_then(|containers| containers.iter().find(|entry| entry["name"] == name))
        .unwrap_or(&Value::Null)
}

fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|entry| entry["name"] == name)
}

/// Asserts that the user's own overlay fields are still there, unchanged.
fn assert_user_overlay_kept(object: &Value, main: &str) {
    assert_eq!(
        pod(object)["metadata"]["annotations"]["example.com/owner"],
        "db-team"
    );
    assert_eq!(
        named(&container(object, main)["env"], "TZ"),
        Some(&json!({"name": "TZ", "value": "UTC"}))
    );
    assert_eq!(
        container(object, "log-shipper"),
        &json!({"name": "log-shipper", "image": "busybox:1.36"})
    );
}

#[tokio::test]
async fn pod_role_annotates_groups_and_backups() {
    let env = TestEnv::start("pod-role").await;
    let ns = Some(env.namespace.as_str());
    env.bind_backup_manager("tidb-backup-manager").await;
    create(
        &env.admin,
        ns,
        group("TiKVGroup", "tikv", user_overlay("tikv")),
    )
    .await;
    create(
        &env.admin,
        ns,
        group("TiFlashGroup", "tiflash", user_overlay("tiflash")),
    )
    .await;
    let labels = json!({"schedule": "nightly", "team": "db"});
    create(
        &env.admin,
        ns,
        backup(
            "Backup",
            "nightly-1",
            labels,
            json!({"s3": {"provider": "aws", "bucket": "b"}}),
        ),
    )
    .await;
    let before = env.get("Backup", "nightly-1").await;

    apply(&env.admin, ns, grant("kube2iam", json!({
        "provider": "AWS", "method": "PodRole", "roleArn": ROLE,
        "targets": [{"kind": "TiKVGroup", "name": "tikv"}, {"kind": "TiFlashGroup", "cluster": "demo"}, {"kind": "Backup", "selector": {"matchLabels": {"schedule": "nightly"}}}],
    })))
    .await;

    let status = env
        .wait_for_status("kube2iam", "Ready", has_condition("Ready", "True", "Ready"))
        .await;
    assert_eq!(
        condition(&status, "CredentialsValid").map(|found| found.1),
        Some("NotRequired".to_owned())
    );
    for (kind, name, main) in [
        ("TiKVGroup", "tikv", "tikv"),
        ("TiFlashGroup", "tiflash", "tiflash"),
    ] {
        let object = env.get(kind, name).await;
        assert_eq!(
            pod(&object)["metadata"]["annotations"]["iam.amazonaws.com/role"],
            ROLE,
            "{kind}"
        );
        assert!(
            pod(&object).get("annotations").is_none(),
            "{kind}: overlay.pod.annotations is not in the schema"
        );
        assert_user_overlay_kept(&object, main);
    }
    let after = env
        .eventually_get("Backup", "nightly-1", |object| {
            object.pointer("/spec/br/sendCredToTikv") == Some(&json!(false))
        })
        .await;
    assert_eq!(
        after["metadata"]["annotations"]["iam.amazonaws.com/role"],
        ROLE
    );
    assert_eq!(after["metadata"]["labels"], before["metadata"]["labels"]);
    assert_eq!(
        after["spec"]["s3"], before["spec"]["s3"],
        "the Backup's own s3 block changed"
    );
}

#[tokio::test]
async fn pod_role_skips_host_network_group() {
    let env = TestEnv::start("pod-role-hostnet").await;
    let ns = Some(env.namespace.as_str());
    create(
        &env.admin,
        ns,
        group("TiKVGroup", "tikv", json!({"spec": {"hostNetwork": true}})),
    )
    .await;
    let before = env.get("TiKVGroup", "tikv").await;

    apply(&env.admin, ns, grant("kube2iam", json!({"provider": "AWS", "method": "PodRole", "roleArn": ROLE, "targets": [{"kind": "TiKVGroup", "name": "tikv"}]}))).await;

    let status = env
        .wait_for_status(
            "kube2iam",
            "Invalid target",
            has_condition("TargetsInSync", "False", "TargetInvalid"),
        )
        .await;
    let (state, reason, _) = target_state(&status, "TiKVGroup", "tikv").unwrap();
    assert_eq!((state, reason.as_deref()), (Invalid, Some("HostNetwork")));
    assert_eq!(
        env.get("TiKVGroup", "tikv").await["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
}

#[tokio::test]
async fn irsa_creates_account_and_names_it() {
    let env = TestEnv::start("irsa").await;
    let ns = Some(env.namespace.as_str());
    env.bind_backup_manager("br-s3").await;
    create(
        &env.admin,
        ns,
        group("TiKVGroup", "tikv", user_overlay("tikv")),
    )
    .await;
    // Not a target: TiFlash lacks the identity, which matters to Restores but not to Backups.
    create(
        &env.admin,
        ns,
        group("TiFlashGroup", "tiflash", Value::Null),
    )
    .await;
    create(
        &env.admin,
        ns,
        backup(
            "Backup",
            "once",
            json!({}),
            json!({"s3": {"provider": "aws"}}),
        ),
    )
    .await;
    create(
        &env.admin,
        ns,
        backup(
            "Restore",
            "restore",
            json!({}),
            json!({"s3": {"provider": "aws"}}),
        ),
    )
    .await;

    apply(&env.admin, ns, grant("irsa", json!({
        "provider": "AWS", "method": "ServiceAccountRole", "roleArn": ROLE, "serviceAccountName": "br-s3",
        "targets": [{"kind": "TiKVGroup", "name": "tikv"}, {"kind": "Backup", "name": "once"}, {"kind": "Restore", "name": "restore"}],
    })))
    .await;

    let status = env
        .wait_for_status(
            "irsa",
            "Backup and TiKV in sync",
            targets_in_state(&[("TiKVGroup", "tikv", InSync), ("Backup", "once", InSync)]),
        )
        .await;
    // The Restore also relies on TiFlash, which lacks the identity, so sendCredToTikv stays.
    assert_eq!(
        target_state(&status, "Restore", "restore").map(|found| found.0),
        Some(InSync)
    );
    let account = Api::<ServiceAccount>::namespaced(env.admin.clone(), &env.namespace)
        .get("br-s3")
        .await
        .unwrap();
    assert_eq!(
        account
            .metadata
            .annotations
            .unwrap_or_default()
            .get("eks.amazonaws.com/role-arn")
            .map(String::as_str),
        Some(ROLE)
    );
    let owner = &account.metadata.owner_references.unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("StorageGrant", "irsa", Some(true))
    );
    let tikv = env.get("TiKVGroup", "tikv").await;
    assert_eq!(pod(&tikv)["spec"]["serviceAccountName"], "br-s3");
    assert_user_overlay_kept(&tikv, "tikv");
    let job = env
        .eventually_get("Backup", "once", |object| {
            object.pointer("/spec/br/sendCredToTikv").is_some()
        })
        .await;
    assert_eq!(job["spec"]["serviceAccount"], "br-s3");
    assert_eq!(job["spec"]["br"]["sendCredToTikv"], false);
    assert_eq!(
        env.get("Restore", "restore").await["spec"]["serviceAccount"],
        "br-s3"
    );
    assert!(
        env.get("Restore", "restore")
            .await
            .pointer("/spec/br/sendCredToTikv")
            .is_none()
    );
}

#[tokio::test]
async fn irsa_adopts_only_labelled_account() {
    let env = TestEnv::start("irsa-adopt").await;
    let ns = Some(env.namespace.as_str());
    create(&env.admin, ns, group("TiKVGroup", "tikv", Value::Null)).await;
    create(&env.admin, ns, json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "shared", "labels": {"storagegrant.dev/adopt": "true", "team": "db"}, "annotations": {"example.com/note": "mine"}},
        "imagePullSecrets": [{"name": "registry"}],
    }))
    .await;
    create(
        &env.admin,
        ns,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "private"}}),
    )
    .await;
    let accounts = Api::<ServiceAccount>::namespaced(env.admin.clone(), &env.namespace);
    let private_before = accounts.get("private").await.unwrap();

    let spec = |account: &str| json!({"provider": "AWS", "method": "ServiceAccountRole", "roleArn": ROLE, "serviceAccountName": account, "targets": [{"kind": "TiKVGroup", "name": "tikv"}]});
    apply(&env.admin, ns, grant("adopting", spec("shared"))).await;
    apply(&env.admin, ns, grant("refused", spec("private"))).await;

    env.wait_for_status("adopting", "Ready", has_condition("Ready", "True", "Ready"))
        .await;
    let shared = accounts.get("shared").await.unwrap();
    let labels = shared.metadata.labels.clone().unwrap_or_default();
    let annotations = shared.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(labels.get("team").map(String::as_str), Some("db"));
    assert_eq!(
        annotations.get("example.com/note").map(String::as_str),
        Some("mine")
    );
    assert_eq!(
        annotations
            .get("eks.amazonaws.com/role-arn")
            .map(String::as_str),
        Some(ROLE)
    );
    assert_eq!(
        shared.image_pull_secrets.unwrap_or_default()[0].name,
        "registry"
    );
    assert!(
        shared.metadata.owner_references.is_none(),
        "an adopted ServiceAccount is not owned by the grant"
    );

    let status = env
        .wait_for_status(
            "refused",
            "ServiceAccountNotAdoptable",
            has_condition("CredentialsValid", "False", "ServiceAccountNotAdoptable"),
        )
        .await;
    assert!(
        condition(&status, "CredentialsValid")
            .unwrap()
            .2
            .contains("private")
    );
    let private_after = accounts.get("private").await.unwrap();
    assert_eq!(
        private_after.metadata.resource_version, private_before.metadata.resource_version,
        "the unlabelled ServiceAccount was written"
    );
}

#[tokio::test]
async fn gcp_key_mounts_directory_and_names_secret() {
    let env = TestEnv::start("gcp").await;
    let ns = Some(env.namespace.as_str());
    env.bind_backup_manager("tidb-backup-manager").await;
    apply(&env.admin, ns, secret("gcs-key", &[("key.json", GCP_KEY)])).await;
    create(
        &env.admin,
        ns,
        group("TiKVGroup", "tikv", user_overlay("tikv")),
    )
    .await;
    create(
        &env.admin,
        ns,
        backup(
            "Backup",
            "gcs",
            json!({}),
            json!({"gcs": {"projectId": "demo", "bucket": "b"}}),
        ),
    )
    .await;
    create(
        &env.admin,
        ns,
        backup("Backup", "no-gcs", json!({}), json!({})),
    )
    .await;

    apply(&env.admin, ns, grant("gcs", json!({
        "provider": "GCP", "method": "ServiceAccountKey", "secretRef": {"name": "gcs-key", "keys": {"credentials": "key.json"}},
        "targets": [{"kind": "TiKVGroup", "name": "tikv"}, {"kind": "Backup", "name": "gcs"}, {"kind": "Backup", "name": "no-gcs"}],
    })))
    .await;

    let status = env
        .wait_for_status(
            "gcs",
            "targets written",
            targets_in_state(&[
                ("TiKVGroup", "tikv", InSync),
                ("Backup", "gcs", InSync),
                ("Backup", "no-gcs", Invalid),
            ]),
        )
        .await;
    let (_, reason, message) = target_state(&status, "Backup", "no-gcs").unwrap();
    assert_eq!(reason.as_deref(), Some("StorageNotConfigured"));
    assert!(message.unwrap_or_default().contains("spec.gcs.projectId"));

    let kept = Api::<Secret>::namespaced(env.admin.clone(), &env.namespace)
        .get("gcs-storagegrant")
        .await
        .unwrap();
    let data = kept.data.unwrap_or_default();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["credentials"]);
    assert_eq!(data["credentials"].0, GCP_KEY.as_bytes());

    let tikv = env.get("TiKVGroup", "tikv").await;
    assert_eq!(
        named(&pod(&tikv)["spec"]["volumes"], "storagegrant-gcs"),
        Some(&json!({"name": "storagegrant-gcs", "secret": {"secretName": "gcs-storagegrant"}}))
    );
    let mounts = container(&tikv, "tikv")["volumeMounts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        mounts,
        [
            json!({"name": "storagegrant-gcs", "mountPath": "/var/run/secrets/storagegrant/gcs", "readOnly": true})
        ]
    );
    assert_eq!(
        named(
            &container(&tikv, "tikv")["env"],
            "GOOGLE_APPLICATION_CREDENTIALS"
        )
        .unwrap()["value"],
        "/var/run/secrets/storagegrant/gcs/credentials"
    );
    assert_user_overlay_kept(&tikv, "tikv");
    let job = env.get("Backup", "gcs").await;
    assert_eq!(
        job["spec"]["gcs"],
        json!({"projectId": "demo", "bucket": "b", "secretName": "gcs-storagegrant"})
    );
}

#[tokio::test]
async fn azure_keys_and_azure_ad_reach_env() {
    let env = TestEnv::start("azure").await;
    let ns = Some(env.namespace.as_str());
    env.bind_backup_manager("tidb-backup-manager").await;
    apply(
        &env.admin,
        ns,
        secret(
            "azure-key",
            &[
                ("AZURE_STORAGE_ACCOUNT", "tidbbackups"),
                ("AZURE_STORAGE_KEY", "c2VjcmV0LWtleQ=="),
            ],
        ),
    )
    .await;
    apply(
        &env.admin,
        ns,
        secret(
            "azure-ad",
            &[
                ("AZURE_STORAGE_ACCOUNT", "tidbbackups"),
                ("AZURE_CLIENT_ID", "0e4a1c2d-3b5f-4a6e-8c7d-9f0a1b2c3d4e"),
                ("AZURE_TENANT_ID", "72f988bf-86f1-41af-91ab-2d7cd011db47"),
                ("AZURE_CLIENT_SECRET", "not-a-real-secret"),
            ],
        ),
    )
    .await;
    create(
        &env.admin,
        ns,
        group("TiKVGroup", "tikv", user_overlay("tikv")),
    )
    .await;
    create(
        &env.admin,
        ns,
        group("TiFlashGroup", "tiflash", user_overlay("tiflash")),
    )
    .await;
    create(&env.admin, ns, backup("Restore", "pitr", json!({}), json!({"azblob": {"container": "c"}, "pitrFullBackupStorageProvider": {"azblob": {"container": "full"}}}))).await;
    create(
        &env.admin,
        ns,
        backup(
            "Backup",
            "sas",
            json!({}),
            json!({"azblob": {"container": "c", "sasToken": "sv=2024"}}),
        ),
    )
    .await;

    apply(&env.admin, ns, grant("azure-key", json!({"provider": "Azure", "method": "AccessKey", "secretRef": {"name": "azure-key"}, "targets": [{"kind": "TiKVGroup", "name": "tikv"}, {"kind": "Restore", "name": "pitr"}, {"kind": "Backup", "name": "sas"}]}))).await;
    apply(&env.admin, ns, grant("azure-ad", json!({"provider": "Azure", "method": "AzureAD", "secretRef": {"name": "azure-ad"}, "targets": [{"kind": "TiFlashGroup", "name": "tiflash"}]}))).await;

    env.wait_for_status("azure-ad", "Ready", has_condition("Ready", "True", "Ready"))
        .await;
    let status = env
        .wait_for_status(
            "azure-key",
            "targets written",
            targets_in_state(&[
                ("TiKVGroup", "tikv", InSync),
                ("Restore", "pitr", InSync),
                ("Backup", "sas", Invalid),
            ]),
        )
        .await;
    assert_eq!(
        target_state(&status, "Backup", "sas").unwrap().1.as_deref(),
        Some("OverriddenBySasToken")
    );

    let tikv = env.get("TiKVGroup", "tikv").await;
    for variable in ["AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY"] {
        let entry = named(&container(&tikv, "tikv")["env"], variable)
            .unwrap_or_else(|| panic!("no {variable}"));
        assert_eq!(
            entry["valueFrom"]["secretKeyRef"],
            json!({"name": "azure-key-storagegrant", "key": variable})
        );
    }
    assert_user_overlay_kept(&tikv, "tikv");
    let tiflash = env.get("TiFlashGroup", "tiflash").await;
    for variable in [
        "AZURE_STORAGE_ACCOUNT",
        "AZURE_CLIENT_ID",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_SECRET",
    ] {
        let entry = named(&container(&tiflash, "tiflash")["env"], variable)
            .unwrap_or_else(|| panic!("no {variable}"));
        assert_eq!(
            entry["valueFrom"]["secretKeyRef"],
            json!({"name": "azure-ad-storagegrant", "key": variable})
        );
    }
    let restore = env.get("Restore", "pitr").await;
    assert_eq!(
        restore["spec"]["azblob"]["secretName"],
        "azure-key-storagegrant"
    );
    assert_eq!(
        restore["spec"]["pitrFullBackupStorageProvider"]["azblob"]["secretName"],
        "azure-key-storagegrant"
    );
}

#[tokio::test]
async fn started_and_finished_jobs_are_left_alone() {
    let env = TestEnv::start("job-phases").await;
    let ns = Some(env.namespace.as_str());
    env.bind_backup_manager("tidb-backup-manager").await;
    apply(
        &env.admin,
        ns,
        secret(
            "creds",
            &[
                ("access_key", "AKIAIOSFODNN7EXAMPLE"),
                ("secret_key", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
            ],
        ),
    )
    .await;
    let labels = json!({"schedule": "nightly"});
    for name in ["running", "done", "other-provider"] {
        let spec = if name == "other-provider" {
            json!({"gcs": {"projectId": "p"}})
        } else {
            json!({"s3": {"provider": "aws"}})
        };
        create(&env.admin, ns, backup("Backup", name, labels.clone(), spec)).await;
    }
    env.set_phase("Backup", "running", "Running").await;
    env.set_phase("Backup", "done", "Complete").await;
    let running_before = env.get("Backup", "running").await;
    let done_before = env.get("Backup", "done").await;

    apply(&env.admin, ns, grant("s3", json!({"provider": "AWS", "method": "AccessKey", "secretRef": {"name": "creds"}, "targets": [{"kind": "Backup", "selector": {"matchLabels": {"schedule": "nightly"}}}]}))).await;

    let status = env
        .wait_for_status(
            "s3",
            "job states",
            targets_in_state(&[
                ("Backup", "running", Late),
                ("Backup", "done", Finished),
                ("Backup", "other-provider", Invalid),
            ]),
        )
        .await;
    assert_eq!(
        condition(&status, "TargetsInSync").unwrap().1,
        "TargetInvalid"
    );
    assert_eq!(
        user_view(&env.get("Backup", "running").await),
        user_view(&running_before),
        "a started Backup was changed"
    );
    assert_eq!(
        user_view(&env.get("Backup", "done").await),
        user_view(&done_before),
        "a finished Backup was changed"
    );
}

#[tokio::test]
async fn method_switch_moves_fields_and_kept_objects() {
    let env = TestEnv::start("switch").await;
    let ns = Some(env.namespace.as_str());
    apply(
        &env.admin,
        ns,
        secret(
            "creds",
            &[
                ("access_key", "AKIAIOSFODNN7EXAMPLE"),
                ("secret_key", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
            ],
        ),
    )
    .await;
    create(
        &env.admin,
        ns,
        group("TiKVGroup", "tikv", user_overlay("tikv")),
    )
    .await;
    let original = env.get("TiKVGroup", "tikv").await;
    let targets = json!([{"kind": "TiKVGroup", "name": "tikv"}]);
    apply(&env.admin, ns, grant("switch", json!({"provider": "AWS", "method": "AccessKey", "secretRef": {"name": "creds"}, "targets": targets}))).await;
    env.wait_for_status(
        "switch",
        "Ready with keys",
        has_condition("Ready", "True", "Ready"),
    )
    .await;
    let with_keys = env.get("TiKVGroup", "tikv").await;
    assert!(named(&container(&with_keys, "tikv")["env"], "AWS_ACCESS_KEY_ID").is_some());
    let secrets = Api::<Secret>::namespaced(env.admin.clone(), &env.namespace);
    assert!(
        secrets
            .get_opt("switch-storagegrant")
            .await
            .unwrap()
            .is_some()
    );

    apply(
        &env.admin,
        ns,
        grant(
            "switch",
            json!({"provider": "AWS", "method": "PodRole", "roleArn": ROLE, "targets": targets}),
        ),
    )
    .await;

    env.wait_for_status("switch", "Ready with the role", |status| {
        has_condition("Ready", "True", "Ready")(status)?;
        if status.observed_generation == Some(2) {
            Ok(())
        } else {
            Err("generation 2 not observed".into())
        }
    })
    .await;
    let with_role = env
        .eventually_get("TiKVGroup", "tikv", |object| {
            named(&container(object, "tikv")["env"], "AWS_ACCESS_KEY_ID").is_none()
        })
        .await;
    assert_eq!(
        pod(&with_role)["metadata"]["annotations"]["iam.amazonaws.com/role"],
        ROLE
    );
    assert!(
        named(
            &container(&with_role, "tikv")["env"],
            "AWS_SECRET_ACCESS_KEY"
        )
        .is_none()
    );
    assert_user_overlay_kept(&with_role, "tikv");

    // Field by field: the group equals the original plus the role annotation.
    let mut expected = user_view(&original);
    expected["spec"]["template"]["spec"]["overlay"]["pod"]["metadata"]["annotations"]["iam.amazonaws.com/role"] =
        json!(ROLE);
    assert_eq!(user_view(&with_role), expected);
    env.eventually("the kept Secret to be deleted", || async {
        secrets
            .get_opt("switch-storagegrant")
            .await
            .unwrap()
            .is_none()
    })
    .await;
}
