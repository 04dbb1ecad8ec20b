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

/// A Backup valid under both the real and the test CRDs, with `spec` merged over
/// `br.cluster: demo`.
pub fn backup(kind: &str, name: &str, labels: Value, spec: Value) -> Value {
    let mut full = json!({"br": {"cluster": "demo"}});
    if let (Some(full), Some(extra)) = (full.as_object_mut(), spec.as_object()) {
        for (key, value) in extra {
            full.insert(key.clone(), value.clone());
        }
    }
    json!({
        "apiVersion": "br.pingcap.com/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "labels": labels},
        "spec": full,
    })
}

impl TestEnv {
    /// Gives `account` the permissions of TiDB Operator's backup manager role on Backups and
    /// Restores, which the grant checks before it reports a job as ready.
    pub async fn bind_backup_manager(&self, account: &str) {
        let ns = Some(self.namespace.as_str());
        crate::objects::apply(&self.admin, ns, json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "tidb-backup-manager"},
            "rules": [{"apiGroups": ["br.pingcap.com"], "resources": ["backups", "restores"], "verbs": ["get", "list", "watch", "update", "patch"]}],
        }))
        .await;
        crate::objects::apply(&self.admin, ns, json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": format!("backup-manager-{account}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tidb-backup-manager"},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": self.namespace}],
        }))
        .await;
    }

    /// The object of `kind` as JSON.
    pub async fn get(&self, kind: &str, name: &str) -> Value {
        let (api_version, plural) = match kind {
            "TiKVGroup" => ("core.pingcap.com/v1alpha1", "tikvgroups"),
            "TiFlashGroup" => ("core.pingcap.com/v1alpha1", "tiflashgroups"),
            "Backup" => ("br.pingcap.com/v1alpha1", "backups"),
            "Restore" => ("br.pingcap.com/v1alpha1", "restores"),
            other => panic!("no API for {other}"),
        };
        let object = self
            .api(api_version, kind, plural)
            .get(name)
            .await
            .unwrap_or_else(|error| panic!("failed to get {kind} {name}: {error}"));
        serde_json::to_value(object).expect("an object serializes")
    }

    /// Sets `status.phase` of a Backup or Restore, as TiDB Operator does when it starts one.
    pub async fn set_phase(&self, kind: &str, name: &str, phase: &str) {
        let plural = if kind == "Backup" {
            "backups"
        } else {
            "restores"
        };
        let api = self.api("br.pingcap.com/v1alpha1", kind, plural);
        let patch = kube::api::Patch::Merge(json!({"status": {"phase": phase}}));
        api.patch_status(name, &kube::api::PatchParams::default(), &patch)
            .await
            .unwrap_or_else(|error| panic!("failed to set the phase of {kind} {name}: {error}"));
    }
}

/// The target entry of a status, by kind and name.
pub fn target_state(
    status: &StorageGrantStatus,
    kind: &str,
    name: &str,
) -> Option<(
    storagegrant_api::TargetState,
    Option<String>,
    Option<String>,
)> {
    status
        .targets
        .as_ref()?
        .iter()
        .find(|target| target.kind.as_str() == kind && target.name == name)
        .map(|target| (target.state, target.reason.clone(), target.message.clone()))
}

/// A check that passes when every listed target has the state.
pub fn targets_in_state(
    expected: &'static [(&'static str, &'static str, storagegrant_api::TargetState)],
) -> impl Fn(&StorageGrantStatus) -> Result<(), String> {
    move |status| {
        for (kind, name, state) in expected {
            match target_state(status, kind, name) {
                Some((found, _, _)) if found == *state => {}
                other => return Err(format!("{kind} {name} is {other:?}")),
            }
        }
        Ok(())
    }
}

/// Removes from `object` the metadata the server maintains, so that two versions of it can be
/// compared by what a user wrote.
pub fn user_view(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(metadata) = copy.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in [
            "managedFields",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "uid",
        ] {
            metadata.remove(field);
        }
    }
    copy
}

impl TestEnv {
    /// Waits until the object satisfies `check`, and returns it.
    pub async fn eventually_get(
        &self,
        kind: &str,
        name: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let check = &check;
        eventually(
            &format!("{kind} {name} to change"),
            Duration::from_secs(30),
            || async move {
                let object = self.get(kind, name).await;
                if check(&object) {
                    Ok(object)
                } else {
                    Err(serde_json::to_string(&object).unwrap_or_default())
                }
            },
        )
        .await
    }

    /// Waits until `check` returns true.
    pub async fn eventually<F, Fut>(&self, what: &str, check: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let check = &check;
        eventually(what, Duration::from_secs(30), || async move {
            if check().await {
                Ok(())
            } else {
                Err("not yet".to_owned())
            }
        })
        .await;
    }
}
