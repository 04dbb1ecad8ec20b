//! A controller restricted with --namespaces runs with the namespaced RBAC of
//! config/namespaced: a ClusterRole for CRDs only, and a Role in the watched namespace. This
//! binary has its own control plane, so the cluster-wide role of config/rbac is never bound.

use serde_json::{Value, json};
use storagegrant_e2e::cluster::workspace_root;
use storagegrant_e2e::controller::{self, CONTROLLER_NAMESPACE};
use storagegrant_e2e::fixtures::{aws_access_key_grant, condition, group, secret, tidb_crd_dir};
use storagegrant_e2e::objects::{apply, create, create_namespace, install_crds, read_documents};
use storagegrant_e2e::{control_plane, eventually};

#[tokio::test]
async fn namespaced_rbac_is_enough() {
    let plane = control_plane();
    let admin = plane.admin().await;
    let mut crds = vec![workspace_root().join("manifests/storagegrant.dev_storagegrants.yaml")];
    crds.extend(
        [
            "core.pingcap.com_tikvgroups.yaml",
            "core.pingcap.com_tiflashgroups.yaml",
            "br.pingcap.com_backups.yaml",
            "br.pingcap.com_restores.yaml",
        ]
        .map(|file| tidb_crd_dir().join(file)),
    );
    let paths: Vec<&std::path::Path> = crds.iter().map(std::path::PathBuf::as_path).collect();
    install_crds(&admin, &paths).await;
    let namespace = create_namespace(&admin, "namespaced").await;
    apply(&admin, None, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CONTROLLER_NAMESPACE}})).await;
    for file in [
        "config/rbac/service_account.yaml",
        "config/namespaced/cluster_role.yaml",
        "config/namespaced/role.yaml",
    ] {
        for mut document in read_documents(&workspace_root().join(file)) {
            if document["metadata"]["namespace"] == "tidb-demo" {
                document["metadata"]["namespace"] = json!(namespace);
            }
            let target = document["metadata"]["namespace"]
                .as_str()
                .map(str::to_owned);
            apply(&admin, target.as_deref(), document).await;
        }
    }
    let ns = Some(namespace.as_str());
    apply(
        &admin,
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
    create(&admin, ns, group("TiKVGroup", "tikv", Value::Null)).await;

    let running = controller::launch(plane, &admin, &[&namespace], &namespace, &[]).await;
    apply(
        &admin,
        ns,
        aws_access_key_grant("g", "creds", json!([{"kind": "TiKVGroup", "name": "tikv"}])),
    )
    .await;

    let grants: kube::Api<storagegrant_api::StorageGrant> =
        kube::Api::namespaced(admin.clone(), &namespace);
    eventually(
        "the grant to be Ready",
        std::time::Duration::from_secs(30),
        || async {
            let status = grants
                .get("g")
                .await
                .map_err(|error| error.to_string())?
                .status
                .ok_or("no status")?;
            match condition(&status, "Ready") {
                Some((found, _, _)) if found == "True" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let log = running.log();
    assert!(
        !log.contains("forbidden"),
        "the controller was denied something: {log}"
    );
}
