//! Objects and environments shared by the controller's end-to-end tests.

use std::path::PathBuf;
use std::time::Duration;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client};
use serde_json::{Value, json};
use storagegrant_api::{StorageGrant, StorageGrantStatus};

use crate::cluster::workspace_root;
use crate::controller::{self, RunningController};
use crate::objects::{create_namespace, install_crds};
use crate::{ControlPlane, control_plane, eventually};

/// The folder of TiDB Operator CRDs the suite installs: the real ones when
/// `STORAGEGRANT_TIDB_CRDS` names their folder, else the suite's own test definitions.
pub fn tidb_crd_dir() -> PathBuf {
    match std::env::var_os("STORAGEGRANT_TIDB_CRDS") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("e2e/crds"),
    }
}

/// One test's world: an admin client, a fresh namespace and a controller that watches only it.
pub struct TestEnv {
    pub plane: &'static ControlPlane,
    pub admin: Client,
    pub namespace: String,
    pub controller: RunningController,
}

impl TestEnv {
    /// Installs the CRDs, creates a namespace and starts a controller for it.
    pub async fn start(name: &str) -> Self {
        let plane = control_plane();
        let admin = plane.admin().await;
        let mut files =
            vec![workspace_root().join("manifests/storagegrant.dev_storagegrants.yaml")];
        let tidb = tidb_crd_dir();
        let mut tidb_files: Vec<PathBuf> = std::fs::read_dir(&tidb)
            .unwrap_or_else(|error| panic!("failed to read {}: {error}", tidb.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .filter(|path| {
                path.extension()
                    .is_some_and(|extension| extension == "yaml")
            })
            .collect();
        tidb_files.sort();
        files.extend(tidb_files);
        let paths: Vec<&std::path::Path> = files.iter().map(PathBuf::as_path).collect();
        install_crds(&admin, &paths).await;

        let namespace = create_namespace(&admin, name).await;
        let controller = controller::start(plane, &admin, &[&namespace], &namespace).await;
        Self {
            plane,
            admin,
            namespace,
            controller,
        }
    }

    pub fn api(&self, api_version: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let resource =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        Api::namespaced_with(self.admin.clone(), &self.namespace, &resource)
    }

    pub fn grants(&self) -> Api<StorageGrant> {
        Api::namespaced(self.admin.clone(), &self.namespace)
    }

    /// Waits until the grant's status satisfies `check`, which describes what it saw otherwise.
    pub async fn wait_for_status(
        &self,
        grant: &str,
        what: &str,
        check: impl Fn(&StorageGrantStatus) -> Result<(), String>,
    ) -> StorageGrantStatus {
        let grants = self.grants();
        eventually(what, Duration::from_secs(30), || {
            let grants = grants.clone();
            let check = &check;
            async move {
                let current = grants.get(grant).await.map_err(|error| error.to_string())?;
                let status = current.status.ok_or("no status yet")?;
                check(&status).map(|()| status.clone()).map_err(|seen| {
                    format!(
                        "{seen}; status: {}",
                        serde_json::to_string(&status).unwrap_or_default()
                    )
                })
            }
        })
        .await
    }
}

/// The status and reason of a condition, for asserts.
pub fn condition(status: &StorageGrantStatus, kind: &str) -> Option<(String, String, String)> {
    let condition = status
        .conditions
        .as_ref()?
        .iter()
        .find(|condition| condition.r#type == kind)?;
    Some((
        format!("{:?}", condition.status),
        condition.reason.clone(),
        condition.message.clone(),
    ))
}

/// A check that passes when the condition has this status and reason.
pub fn has_condition(
    kind: &'static str,
    status: &'static str,
    reason: &'static str,
) -> impl Fn(&StorageGrantStatus) -> Result<(), String> {
    move |current| match condition(current, kind) {
        Some((found, found_reason, _)) if found == status && found_reason == reason => Ok(()),
        other => Err(format!("{kind} is {other:?}")),
    }
}

/// A TiKVGroup or TiFlashGroup valid under both the real and the test CRDs, with `overlay`
/// as its pod overlay.
pub fn group(kind: &str, name: &str, overlay: Value) -> Value {
    let mut template = json!({
        "version": "v8.5.2",
        "volumes": [{"name": "data", "storage": "10Gi", "mounts": [{"type": "data"}]}],
    });
    if !overlay.is_null() {
        template["overlay"] = json!({"pod": overlay});
    }
    json!({
        "apiVersion": "core.pingcap.com/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {"cluster": {"name": "demo"}, "replicas": 3, "template": {"spec": template}},
    })
}

/// An Opaque Secret with string data, written as `data`.
pub fn secret(name: &str, pairs: &[(&str, &str)]) -> Value {
    use base64::Engine;
    let data: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(key, value)| {
            (
                (*key).to_owned(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(value)),
            )
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque", "data": data})
}

/// A StorageGrant for AWS access keys from `secret` on the given targets.
pub fn aws_access_key_grant(name: &str, secret: &str, targets: Value) -> Value {
    json!({
        "apiVersion": "storagegrant.dev/v1alpha1",
        "kind": "StorageGrant",
        "metadata": {"name": name},
        "spec": {"provider": "AWS", "method": "AccessKey", "secretRef": {"name": secret}, "targets": targets},
    })
}
