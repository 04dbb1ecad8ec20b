//! The local control plane is a real one: CRDs, authentication, RBAC, the namespace
//! controller and the audit log all behave as in a cluster.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::json;
use storagegrant_e2e::objects::{apply, create_namespace, install_crds};
use storagegrant_e2e::{audit, cluster, control_plane, eventually, identity};

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"key": "value"}})).unwrap()
}

#[tokio::test]
async fn crd_becomes_established_and_usable() {
    let admin = control_plane().admin().await;
    let crd = cluster::workspace_root().join("e2e/crds/core.pingcap.com_tikvgroups.yaml");
    install_crds(&admin, &[&crd]).await;
    let namespace = create_namespace(&admin, "smoke-crd").await;

    let group = apply(&admin, Some(&namespace), json!({
        "apiVersion": "core.pingcap.com/v1alpha1",
        "kind": "TiKVGroup",
        "metadata": {"name": "tikv"},
        "spec": {"cluster": {"name": "demo"}, "replicas": 1, "template": {"spec": {
            "version": "v8.5.2", "volumes": [{"name": "data", "storage": "1Gi", "mounts": [{"type": "data"}]}]}}},
    }))
    .await;

    assert_eq!(group.metadata.generation, Some(1));
    assert_eq!(group.data["spec"]["cluster"]["name"], "demo");
}

#[tokio::test]
async fn rbac_denies_token_until_bound() {
    let plane = control_plane();
    let admin = plane.admin().await;
    let namespace = create_namespace(&admin, "smoke-rbac").await;
    let reader = identity::service_account_client(plane, &admin, &namespace, "reader").await;
    let maps: Api<ConfigMap> = Api::namespaced(reader.clone(), &namespace);

    let denied = maps
        .list(&ListParams::default())
        .await
        .expect_err("an unbound ServiceAccount is denied");
    let kube::Error::Api(status) = denied else {
        panic!("expected an API error, got {denied:?}")
    };
    assert_eq!(status.code, 403, "{}", status.message);
    assert!(
        status
            .message
            .contains(&format!("system:serviceaccount:{namespace}:reader")),
        "{}",
        status.message
    );

    apply(
        &admin,
        Some(&namespace),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "read-config"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
        }),
    )
    .await;
    apply(&admin, Some(&namespace), json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-config"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
    }))
    .await;

    eventually(
        "the bound ServiceAccount to list ConfigMaps",
        Duration::from_secs(30),
        || async {
            maps.list(&ListParams::default())
                .await
                .map(|_| ())
                .map_err(|error| error.to_string())
        },
    )
    .await;
    let create = maps
        .create(&PostParams::default(), &config_map("not-granted"))
        .await;
    assert!(
        matches!(create, Err(kube::Error::Api(ref status)) if status.code == 403),
        "{create:?}"
    );
}

#[tokio::test]
async fn namespace_deletion_completes() {
    let admin = control_plane().admin().await;
    let name = create_namespace(&admin, "smoke-delete").await;
    Api::<ConfigMap>::namespaced(admin.clone(), &name)
        .create(&PostParams::default(), &config_map("content"))
        .await
        .unwrap();
    let namespaces: Api<Namespace> = Api::all(admin.clone());

    namespaces
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();

    eventually(
        "the namespace to be gone",
        Duration::from_secs(60),
        || async {
            match namespaces.get_opt(&name).await {
                Ok(None) => Ok(()),
                Ok(Some(namespace)) => Err(format!(
                    "phase {:?}",
                    namespace.status.and_then(|status| status.phase)
                )),
                Err(error) => Err(error.to_string()),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn audit_log_records_writer() {
    let plane = control_plane();
    let admin = plane.admin().await;
    let namespace = create_namespace(&admin, "smoke-audit").await;

    Api::<ConfigMap>::namespaced(admin.clone(), &namespace)
        .create(&PostParams::default(), &config_map("audited"))
        .await
        .unwrap();

    let event = eventually(
        "the audit log to record the create",
        Duration::from_secs(30),
        || async {
            audit::writes_by(plane, "admin", &namespace)
                .into_iter()
                .find(|event| {
                    event.verb == "create"
                        && event
                            .object_ref
                            .as_ref()
                            .and_then(|object| object.name.as_deref())
                            == Some("audited")
                })
                .ok_or_else(|| "no matching event yet".to_owned())
        },
    )
    .await;
    assert_eq!(
        event.object_ref.unwrap().resource.as_deref(),
        Some("configmaps")
    );
    assert_eq!(
        event.response_status.and_then(|status| status.code),
        Some(201)
    );
}
