//! Reading the API server's audit log of write requests.

use serde::Deserialize;

use crate::ControlPlane;

/// One audit event, reduced to what tests check.
#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    pub verb: String,
    pub user: AuditUser,
    pub object_ref: Option<AuditObject>,
    pub stage: String,
    pub request_received_timestamp: String,
    pub response_status: Option<AuditStatus>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct AuditUser {
    pub username: String,
}

#[derive(Deserialize, Debug, Clone)]
pub struct AuditObject {
    pub resource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct AuditStatus {
    pub code: Option<i32>,
}

/// Every completed write request logged so far.
pub fn writes(control_plane: &ControlPlane) -> Vec<AuditEvent> {
    let text = std::fs::read_to_string(&control_plane.audit_log).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<AuditEvent>(line).ok())
        .filter(|event| event.stage == "ResponseComplete")
        .collect()
}

/// Completed writes by `username` into `namespace`.
pub fn writes_by(control_plane: &ControlPlane, username: &str, namespace: &str) -> Vec<AuditEvent> {
    writes(control_plane)
        .into_iter()
        .filter(|event| event.user.username == username)
        .filter(|event| {
            event
                .object_ref
                .as_ref()
                .and_then(|object| object.namespace.as_deref())
                == Some(namespace)
        })
        .collect()
}
