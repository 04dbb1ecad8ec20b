//! Creating what tests need: CRDs, namespaces and objects from YAML.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::discovery::{Discovery, Scope};
use kube::{Api, Client, ResourceExt};
use rand::Rng;
use serde::Deserialize;

use crate::eventually;

/// Field manager of everything the test harness writes.
pub const HARNESS_MANAGER: &str = "storagegrant-e2e";

/// Reads every YAML document of a file.
pub fn read_documents(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("failed to read {}: {error}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| serde_json::Value::deserialize(document).expect("valid YAML"))
        .filter(|value| !value.is_null())
        .collect()
}

/// Applies CRDs by server-side apply, then waits until each is Established and served.
pub async fn install_crds(client: &Client, files: &[&Path]) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(HARNESS_MANAGER).force();
    let mut crds = Vec::new();
    for file in files {
        for document in read_documents(file) {
            let crd: CustomResourceDefinition =
                serde_json::from_value(document).expect("a CustomResourceDefinition");
            api.patch(&crd.name_any(), &params, &Patch::Apply(&crd))
                .await
                .expect("CRD applied");
            crds.push(crd);
        }
    }
    for crd in crds {
        wait_until_served(client, &crd).await;
    }
}

async fn wait_until_served(client: &Client, crd: &CustomResourceDefinition) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.name_any();
    eventually(
        &format!("CRD {name} to be Established"),
        Duration::from_secs(60),
        || async {
            let current = api.get(&name).await.map_err(|error| error.to_string())?;
            let conditions = current
                .status
                .and_then(|status| status.conditions)
                .unwrap_or_default();
            let established = conditions
                .iter()
                .any(|condition| condition.type_ == "Established" && condition.status == "True");
            if established {
                Ok(())
            } else {
                Err(format!("conditions {conditions:?}"))
            }
        },
    )
    .await;
    let version = &crd
        .spec
        .versions
        .iter()
        .find(|version| version.storage)
        .expect("a storage version")
        .name;
    let gvk = GroupVersionKind::gvk(&crd.spec.group, version, &crd.spec.names.kind);
    let resource = ApiResource::from_gvk_with_plural(&gvk, &crd.spec.names.plural);
    let objects: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    eventually(
        &format!("{name} to be served"),
        Duration::from_secs(60),
        || async {
            objects
                .list(&ListParams::default().limit(1))
                .await
                .map(|_| ())
                .map_err(|error| error.to_string())
        },
    )
    .await;
}

/// Creates a namespace with a random suffix, such as `grant-7f3a9c`.
pub async fn create_namespace(client: &Client, prefix: &str) -> String {
    let suffix: u32 = rand::rng().random_range(0..0xff_ffff);
    let name = format!("{prefix}-{suffix:06x}");
    let namespace: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
            .expect("a namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("namespace created");
    name
}

/// Applies an object given as JSON, in `namespace` when it is namespaced, resolving its kind
/// through discovery. Returns the object as stored.
pub async fn apply(
    client: &Client,
    namespace: Option<&str>,
    object: serde_json::Value,
) -> DynamicObject {
    apply_as(client, namespace, object, HARNESS_MANAGER).await
}

/// Like [`apply`], under the field manager `manager`.
pub async fn apply_as(
    client: &Client,
    namespace: Option<&str>,
    object: serde_json::Value,
    manager: &str,
) -> DynamicObject {
    let (api, name) = dynamic_api(client, namespace, &object).await;
    api.patch(
        &name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&object),
    )
    .await
    .unwrap_or_else(|error| panic!("failed to apply {name}: {error}"))
}

/// Creates an object given as JSON (an `Update` by the harness, like `kubectl create`).
pub async fn create(
    client: &Client,
    namespace: Option<&str>,
    object: serde_json::Value,
) -> DynamicObject {
    let (api, name) = dynamic_api(client, namespace, &object).await;
    let object: DynamicObject = serde_json::from_value(object).expect("an object");
    api.create(
        &PostParams {
            field_manager: Some(HARNESS_MANAGER.into()),
            ..Default::default()
        },
        &object,
    )
    .await
    .unwrap_or_else(|error| panic!("failed to create {name}: {error}"))
}

/// The `Api` serving an object's kind, and the object's name.
pub async fn dynamic_api(
    client: &Client,
    namespace: Option<&str>,
    object: &serde_json::Value,
) -> (Api<DynamicObject>, String) {
    let api_version = object["apiVersion"].as_str().expect("apiVersion");
    let kind = object["kind"].as_str().expect("kind");
    let name = object["metadata"]["name"]
        .as_str()
        .expect("metadata.name")
        .to_owned();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let discovery = Discovery::new(client.clone())
        .filter(&[group])
        .run()
        .await
        .expect("discovery");
    let (resource, capabilities) = discovery
        .resolve_gvk(&gvk)
        .unwrap_or_else(|| panic!("{api_version} {kind} is not served"));
    let api = match (capabilities.scope, namespace) {
        (Scope::Namespaced, Some(namespace)) => {
            Api::namespaced_with(client.clone(), namespace, &resource)
        }
        _ => Api::all_with(client.clone(), &resource),
    };
    (api, name)
}
