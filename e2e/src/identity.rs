//! Identities other than the admin: ServiceAccount tokens from the TokenRequest API.

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::AuthInfo;
use kube::{Api, Client, Config};
use serde_json::json;

use crate::ControlPlane;
use crate::objects::HARNESS_MANAGER;

/// Creates the ServiceAccount if needed and returns a token for it, valid for an hour.
pub async fn service_account_token(admin: &Client, namespace: &str, name: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let account = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
    accounts
        .patch(
            name,
            &PatchParams::apply(HARNESS_MANAGER),
            &Patch::Apply(&account),
        )
        .await
        .expect("ServiceAccount applied");
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"expirationSeconds": 3600}}))
            .expect("a TokenRequest");
    let response = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .expect("a token");
    response
        .status
        .and_then(|status| status.token)
        .expect("a token in the TokenRequest status")
}

/// A client configuration that authenticates with `token` against the control plane.
pub async fn token_config(control_plane: &ControlPlane, token: &str) -> Config {
    let mut config = control_plane.admin_config().await;
    config.auth_info = AuthInfo {
        token: Some(token.to_owned().into()),
        ..AuthInfo::default()
    };
    config
}

/// A client that authenticates as the ServiceAccount `namespace/name`.
pub async fn service_account_client(
    control_plane: &ControlPlane,
    admin: &Client,
    namespace: &str,
    name: &str,
) -> Client {
    let token = service_account_token(admin, namespace, name).await;
    Client::try_from(token_config(control_plane, &token).await).expect("a client with a token")
}

/// Writes a kubeconfig that authenticates with `token`, for processes such as the controller.
pub fn write_token_kubeconfig(control_plane: &ControlPlane, token: &str, path: &std::path::Path) {
    let admin = std::fs::read_to_string(&control_plane.kubeconfig).expect("the admin kubeconfig");
    let mut config: serde_yaml::Value =
        serde_yaml::from_str(&admin).expect("the admin kubeconfig parses");
    let user = serde_yaml::to_value(json!({"token": token})).expect("a user entry");
    let users = config["users"].as_sequence_mut().expect("kubeconfig users");
    for entry in users.iter_mut() {
        entry["user"] = user.clone();
    }
    std::fs::write(
        path,
        serde_yaml::to_string(&config).expect("kubeconfig serializes"),
    )
    .expect("kubeconfig written");
}
