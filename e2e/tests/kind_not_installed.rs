//! A grant on a target kind whose CRD is not installed: reported, picked up once the CRD is
//! Established, and deletable either way. This binary has its own control plane, so the
//! TiDB Operator CRDs are absent until the test installs one.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::DeleteParams;
use serde_json::json;
use storagegrant_api::StorageGrant;
use storagegrant_e2e::cluster::workspace_root;
use storagegrant_e2e::controller;
use storagegrant_e2e::fixtures::{aws_access_key_grant, condition, group, secret, tidb_crd_dir};
use storagegrant_e2e::objects::{apply, create, create_namespace, install_crds};
use storagegrant_e2e::{control_plane, eventually};

#[tokio::test]
async fn missing_kind_is_reported_then_watched() {
    let plane = control_plane();
    let admin = plane.admin().await;
    install_crds(
        &admin,
        &[&workspace_root().join("manifests/storagegrant.dev_storagegrants.yaml")],
    )
    .await;
    let namespace = create_namespace(&admin, "not-installed").await;
    let ns = Some(namespace.as_str());
    let _controller = controller::start(plane, &admin, &[&namespace], &namespace).await;
    let grants: Api<StorageGrant> = Api::namespaced(admin.clone(), &namespace);
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
    apply(
        &admin,
        ns,
        aws_access_key_grant(
            "early",
            "creds",
            json!([{"kind": "TiKVGroup", "name": "tikv"}]),
        ),
    )
    .await;
    apply(
        &admin,
        ns,
        aws_access_key_grant(
            "deleted",
            "creds",
            json!([{"kind": "TiKVGroup", "name": "tikv"}]),
        ),
    )
    .await;

    for name in ["early", "deleted"] {
        let status = eventually(
            "KindNotInstalled",
            std::time::Duration::from_secs(30),
            || async {
                let grant = grants.get(name).await.map_err(|error| error.to_string())?;
                let status = grant.status.ok_or("no status")?;
                match condition(&status, "TargetsInSync") {
                    Some((found, reason, _))
                        if found == "False" && reason == "KindNotInstalled" =>
                    {
                        Ok(status)
                    }
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
        assert!(
            condition(&status, "TargetsInSync")
                .unwrap()
                .2
                .contains("tikvgroups.core.pingcap.com")
        );
    }

    grants
        .delete("deleted", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the grant to be deleted",
        std::time::Duration::from_secs(30),
        || async {
            match grants.get_opt("deleted").await {
                Ok(None) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    install_crds(
        &admin,
        &[&tidb_crd_dir().join("core.pingcap.com_tikvgroups.yaml")],
    )
    .await;
    create(
        &admin,
        ns,
        group("TiKVGroup", "tikv", serde_json::Value::Null),
    )
    .await;

    eventually(
        "the grant to be Ready once the kind exists",
        std::time::Duration::from_secs(30),
        || async {
            let status = grants
                .get("early")
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
    let kept = Api::<Secret>::namespaced(admin.clone(), &namespace)
        .get_opt("deleted-storagegrant")
        .await
        .unwrap();
    assert!(
        kept.is_none(),
        "the deleted grant's kept Secret is still there"
    );
}
