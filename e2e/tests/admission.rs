//! The API server rejects malformed grants with a message that names the field, through the
//! CEL rules and bounds of the generated CRD.

use kube::api::{DynamicObject, PostParams};
use kube::core::ApiResource;
use kube::{Api, Client};
use serde_json::{Value, json};
use storagegrant_e2e::cluster::workspace_root;
use storagegrant_e2e::control_plane;
use storagegrant_e2e::objects::{create_namespace, install_crds};

const ROLE: &str = "arn:aws:iam::123456789012:role/tidb-backup";

async fn setup() -> (Client, Api<DynamicObject>) {
    let admin = control_plane().admin().await;
    let crd = workspace_root().join("manifests/storagegrant.dev_storagegrants.yaml");
    install_crds(&admin, &[&crd]).await;
    let namespace = create_namespace(&admin, "admission").await;
    let resource = ApiResource {
        group: "storagegrant.dev".into(),
        version: "v1alpha1".into(),
        api_version: "storagegrant.dev/v1alpha1".into(),
        kind: "StorageGrant".into(),
        plural: "storagegrants".into(),
    };
    let api = Api::namespaced_with(admin.clone(), &namespace, &resource);
    (admin, api)
}

fn grant(spec: Value) -> DynamicObject {
    serde_json::from_value(json!({"apiVersion": "storagegrant.dev/v1alpha1", "kind": "StorageGrant", "metadata": {"name": "g"}, "spec": spec})).unwrap()
}

fn tikv() -> Value {
    json!([{"kind": "TiKVGroup", "name": "tikv"}])
}

async fn dry_run(api: &Api<DynamicObject>, spec: Value) -> Result<(), (u16, String)> {
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    match api.create(&params, &grant(spec)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => Err((status.code, status.message)),
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[tokio::test]
async fn malformed_grants_are_rejected_naming_field() {
    let (_, api) = setup().await;
    let many_targets: Vec<Value> = (0..65)
        .map(|index| json!({"kind": "Backup", "name": format!("b{index}")}))
        .collect();
    let cases = [
        (
            "method of another provider",
            json!({"provider": "AWS", "method": "ServiceAccountKey", "secretRef": {"name": "s"}, "targets": tikv()}),
            "spec.method",
        ),
        (
            "GCP with AccessKey",
            json!({"provider": "GCP", "method": "AccessKey", "secretRef": {"name": "s"}, "targets": tikv()}),
            "spec.method",
        ),
        (
            "key method without secretRef",
            json!({"provider": "AWS", "method": "AccessKey", "targets": tikv()}),
            "spec.secretRef",
        ),
        (
            "role method with secretRef",
            json!({"provider": "AWS", "method": "PodRole", "roleArn": ROLE, "secretRef": {"name": "s"}, "targets": tikv()}),
            "spec.secretRef",
        ),
        (
            "role method without roleArn",
            json!({"provider": "AWS", "method": "PodRole", "targets": tikv()}),
            "spec.roleArn",
        ),
        (
            "key method with roleArn",
            json!({"provider": "AWS", "method": "AccessKey", "secretRef": {"name": "s"}, "roleArn": ROLE, "targets": tikv()}),
            "spec.roleArn",
        ),
        (
            "user ARN instead of role",
            json!({"provider": "AWS", "method": "PodRole", "roleArn": "arn:aws:iam::123456789012:user/backup", "targets": tikv()}),
            "spec.roleArn must be an IAM role ARN",
        ),
        (
            "account ID too short",
            json!({"provider": "AWS", "method": "PodRole", "roleArn": "arn:aws:iam::1234:role/backup", "targets": tikv()}),
            "spec.roleArn must be an IAM role ARN",
        ),
        (
            "IRSA without serviceAccountName",
            json!({"provider": "AWS", "method": "ServiceAccountRole", "roleArn": ROLE, "targets": tikv()}),
            "spec.serviceAccountName",
        ),
        (
            "serviceAccountName for PodRole",
            json!({"provider": "AWS", "method": "PodRole", "roleArn": ROLE, "serviceAccountName": "br", "targets": tikv()}),
            "spec.serviceAccountName",
        ),
        (
            "serviceAccountName not DNS-1123",
            json!({"provider": "AWS", "method": "ServiceAccountRole", "roleArn": ROLE, "serviceAccountName": "Bad_Name", "targets": tikv()}),
            "DNS-1123",
        ),
        (
            "target with name and selector",
            json!({"provider": "AWS", "method": "PodRole", "roleArn": ROLE, "targets": [{"kind": "Backup", "name": "b", "selector": {"matchLabels": {"a": "b"}}}]}),
            "exactly one of name, selector and cluster",
        ),
        (
            "target with no choice",
            json!({"provider": "AWS", "method": "PodRole", "roleArn": ROLE, "targets": [{"kind": "Backup"}]}),
            "exactly one of name, selector and cluster",
        ),
        (
            "empty selector",
            json!({"provider": "AWS", "method": "PodRole", "roleArn": ROLE, "targets": [{"kind": "Backup", "selector": {}}]}),
            "selector must not be empty",
        ),
        (
            "unknown target kind",
            json!({"provider": "AWS", "method": "PodRole", "roleArn": ROLE, "targets": [{"kind": "TiDBGroup", "name": "tidb"}]}),
            "spec.targets[0].kind",
        ),
        (
            "no targets",
            json!({"provider": "AWS", "method": "PodRole", "roleArn": ROLE, "targets": []}),
            "spec.targets",
        ),
        (
            "too many targets",
            json!({"provider": "AWS", "method": "PodRole", "roleArn": ROLE, "targets": many_targets}),
            "spec.targets",
        ),
        (
            "unknown drift policy",
            json!({"provider": "AWS", "method": "PodRole", "roleArn": ROLE, "targets": tikv(), "driftPolicy": "Fix"}),
            "spec.driftPolicy",
        ),
        (
            "lower-case provider",
            json!({"provider": "aws", "method": "PodRole", "roleArn": ROLE, "targets": tikv()}),
            "spec.provider",
        ),
    ];
    let mut accepted = Vec::new();
    for (case, spec, field) in cases {
        match dry_run(&api, spec).await {
            Ok(()) => accepted.push(case),
            Err((code, message)) => {
                assert_eq!(code, 422, "{case}: {message}");
                assert!(
                    message.contains(field),
                    "{case}: the message does not name {field}: {message}"
                );
            }
        }
    }
    assert!(
        accepted.is_empty(),
        "accepted malformed grants: {accepted:?}"
    );
}

#[tokio::test]
async fn every_method_in_its_form_is_accepted() {
    let (_, api) = setup().await;
    let valid = [
        json!({"provider": "AWS", "method": "AccessKey", "secretRef": {"name": "s", "keys": {"accessKeyId": "id"}}, "targets": tikv()}),
        json!({"provider": "AWS", "method": "PodRole", "roleArn": "arn:aws-cn:iam::123456789012:role/path/to/br", "targets": tikv()}),
        json!({"provider": "AWS", "method": "ServiceAccountRole", "roleArn": "arn:aws-us-gov:iam::123456789012:role/br", "serviceAccountName": "br-s3", "targets": tikv()}),
        json!({"provider": "GCP", "method": "ServiceAccountKey", "secretRef": {"name": "s"}, "targets": [{"kind": "Backup", "selector": {"matchExpressions": [{"key": "a", "operator": "Exists"}]}}]}),
        json!({"provider": "Azure", "method": "AccessKey", "secretRef": {"name": "s"}, "targets": [{"kind": "Restore", "cluster": "demo"}], "driftPolicy": "Report"}),
        json!({"provider": "Azure", "method": "AzureAD", "secretRef": {"name": "s"}, "targets": [{"kind": "TiFlashGroup", "name": "tiflash"}]}),
    ];
    for spec in valid {
        let result = dry_run(&api, spec.clone()).await;
        assert!(result.is_ok(), "{spec} was rejected: {result:?}");
    }
}
