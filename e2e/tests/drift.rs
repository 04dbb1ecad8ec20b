//! Drift on a real API server: noticed from the watches, attributed to the manager that
//! changed it, repaired or reported, bounded by the repair budget; and release on deletion.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use storagegrant_api::TargetState;
use storagegrant_e2e::eventually;
use storagegrant_e2e::fixtures::{
    TestEnv, aws_access_key_grant, group, has_condition, secret, target_state,
};
use storagegrant_e2e::objects::{apply, apply_as, create};

const KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const TIKV_ENV: &str = "/spec/template/spec/overlay/pod/spec/containers";

fn tikv_only() -> Value {
    json!([{"kind": "TiKVGroup", "name": "tikv"}])
}

/// A namespace with the source Secret, a TiKVGroup with the user's own env entry, and a
/// grant that is Ready.
async fn granted(name: &str) -> TestEnv {
    let env = TestEnv::start(name).await;
    let ns = Some(env.namespace.as_str());
    apply(
        &env.admin,
        ns,
        secret(
            "creds",
            &[("access_key", KEY_ID), ("secret_key", SECRET_KEY)],
        ),
    )
    .await;
    let overlay = json!({"spec": {"containers": [{"name": "tikv", "env": [{"name": "TZ", "value": "UTC"}]}]}});
    create(&env.admin, ns, group("TiKVGroup", "tikv", overlay)).await;
    apply(
        &env.admin,
        ns,
        aws_access_key_grant("g", "creds", tikv_only()),
    )
    .await;
    env.wait_for_status("g", "Ready", has_condition("Ready", "True", "Ready"))
        .await;
    env
}

fn tikv_env(object: &Value) -> Vec<Value> {
    object
        .pointer(TIKV_ENV)
        .and_then(Value::as_array)
        .and_then(|containers| containers.iter().find(|entry| entry["name"] == "tikv"))
        .and_then(|entry| entry["env"].as_array())
        .cloned()
        .unwrap_or_default()
}

fn env_index(object: &Value, variable: &str) -> (usize, usize) {
    let containers = object
        .pointer(TIKV_ENV)
        .and_then(Value::as_array)
        .expect("containers");
    let container = containers
        .iter()
        .position(|entry| entry["name"] == "tikv")
        .expect("the tikv container");
    let env = containers[container]["env"].as_array().expect("env");
    (
        container,
        env.iter()
            .position(|entry| entry["name"] == variable)
            .unwrap_or_else(|| panic!("no {variable}")),
    )
}

/// Removes an env entry with a JSON patch under `manager`, as `kubectl edit` would.
async fn remove_env(env: &TestEnv, variable: &str, manager: &str) {
    let object = env.get("TiKVGroup", "tikv").await;
    let (container, index) = env_index(&object, variable);
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": format!("{TIKV_ENV}/{container}/env/{index}/name"), "value": variable},
        {"op": "remove", "path": format!("{TIKV_ENV}/{container}/env/{index}")},
    ]))
    .unwrap();
    let params = PatchParams {
        field_manager: Some(manager.to_owned()),
        ..PatchParams::default()
    };
    env.api("core.pingcap.com/v1alpha1", "TiKVGroup", "tikvgroups")
        .patch("tikv", &params, &Patch::<()>::Json(patch))
        .await
        .unwrap();
}

async fn events(env: &TestEnv, reason: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(env.admin.clone(), &env.namespace);
    let list = api.list(&ListParams::default()).await.unwrap();
    list.items
        .into_iter()
        .filter(|event| event.reason.as_deref() == Some(reason))
        .filter_map(|event| event.note)
        .collect()
}

async fn wait_for_event(env: &TestEnv, reason: &str, needles: &[&str]) -> String {
    eventually(
        &format!("a {reason} Event naming {needles:?}"),
        Duration::from_secs(20),
        || async {
            let notes = events(env, reason).await;
            notes
                .iter()
                .find(|note| needles.iter().all(|needle| note.contains(needle)))
                .cloned()
                .ok_or(format!("{notes:?}"))
        },
    )
    .await
}

fn has_variable(object: &Value, variable: &str) -> bool {
    tikv_env(object)
        .iter()
        .any(|entry| entry["name"] == variable)
}

#[tokio::test]
async fn removed_entry_is_restored_with_event() {
    let env = granted("drift-remove").await;

    remove_env(&env, "AWS_ACCESS_KEY_ID", "kubectl-edit").await;

    env.eventually_get("TiKVGroup", "tikv", |object| {
        has_variable(object, "AWS_ACCESS_KEY_ID")
    })
    .await;
    // Kubernetes records no manager for a removed field, so the Event names the field only.
    let note = wait_for_event(&env, "DriftRepaired", &["AWS_ACCESS_KEY_ID", "removed"]).await;
    assert!(note.contains("TiKVGroup tikv"), "{note}");
    let status = env
        .wait_for_status("g", "one repair counted", |status| {
            match target_state(status, "TiKVGroup", "tikv") {
                Some((TargetState::InSync, _, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    let target = &status.targets.as_ref().unwrap()[0];
    assert_eq!(target.repairs, Some(1));
    assert!(target.last_drift_time.is_some());
    let metrics = env.controller.metrics().await;
    for series in [
        r#"storagegrant_drift_detected_total{kind="TiKVGroup"} 1"#,
        r#"storagegrant_drift_repaired_total{kind="TiKVGroup"} 1"#,
        r#"storagegrant_targets{kind="TiKVGroup",state="InSync"} 1"#,
        r#"storagegrant_reconciles_total{result="success"}"#,
    ] {
        assert!(metrics.contains(series), "no {series} in {metrics}");
    }
}

#[tokio::test]
async fn changed_value_is_restored_with_event() {
    let env = granted("drift-change").await;
    let object = env.get("TiKVGroup", "tikv").await;
    let (container, index) = env_index(&object, "AWS_ACCESS_KEY_ID");
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "replace", "path": format!("{TIKV_ENV}/{container}/env/{index}/valueFrom/secretKeyRef/key"), "value": "other"},
    ]))
    .unwrap();
    let params = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..PatchParams::default()
    };

    env.api("core.pingcap.com/v1alpha1", "TiKVGroup", "tikvgroups")
        .patch("tikv", &params, &Patch::<()>::Json(patch))
        .await
        .unwrap();

    env.eventually_get("TiKVGroup", "tikv", |object| {
        tikv_env(object).iter().any(|entry| {
            entry["name"] == "AWS_ACCESS_KEY_ID"
                && entry["valueFrom"]["secretKeyRef"]["key"] == "access_key"
        })
    })
    .await;
    wait_for_event(
        &env,
        "DriftRepaired",
        &["AWS_ACCESS_KEY_ID", "changed by kubectl-edit"],
    )
    .await;
}

#[tokio::test]
async fn report_policy_leaves_drift_in_place() {
    let env = granted("drift-report").await;
    let mut grant = aws_access_key_grant("g", "creds", tikv_only());
    grant["spec"]["driftPolicy"] = json!("Report");
    apply(&env.admin, Some(env.namespace.as_str()), grant).await;
    env.wait_for_status("g", "Report observed", |status| {
        if status.observed_generation == Some(2) {
            Ok(())
        } else {
            Err("generation 2 not observed".into())
        }
    })
    .await;

    remove_env(&env, "AWS_SECRET_ACCESS_KEY", "kubectl-edit").await;

    let status = env
        .wait_for_status("g", "Drifted", |status| {
            match target_state(status, "TiKVGroup", "tikv") {
                Some((TargetState::Drifted, Some(reason), _)) if reason == "DriftReported" => {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    assert_eq!(
        storagegrant_e2e::fixtures::condition(&status, "Ready")
            .unwrap()
            .0,
        "False"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !has_variable(&env.get("TiKVGroup", "tikv").await, "AWS_SECRET_ACCESS_KEY"),
        "Report repaired the drift"
    );
}

#[tokio::test]
async fn apply_manager_is_conflict_not_forced() {
    let env = granted("drift-apply").await;
    let ns = Some(env.namespace.as_str());
    let gitops = json!({
        "apiVersion": "core.pingcap.com/v1alpha1", "kind": "TiKVGroup", "metadata": {"name": "tikv"},
        "spec": {"template": {"spec": {"overlay": {"pod": {"spec": {"containers": [{"name": "tikv", "env": [
            {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "gitops-creds", "key": "id"}}}
        ]}]}}}}}},
    });

    apply_as(&env.admin, ns, gitops, "argocd-controller").await;

    let status = env
        .wait_for_status("g", "Conflict", |status| {
            match target_state(status, "TiKVGroup", "tikv") {
                Some((TargetState::Conflict, _, Some(message)))
                    if message.contains("argocd-controller") =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    assert_eq!(
        storagegrant_e2e::fixtures::condition(&status, "Stalled")
            .unwrap()
            .0,
        "True"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let object = env.get("TiKVGroup", "tikv").await;
    let entry = tikv_env(&object)
        .into_iter()
        .find(|entry| entry["name"] == "AWS_ACCESS_KEY_ID")
        .unwrap();
    assert_eq!(
        entry["valueFrom"]["secretKeyRef"]["name"], "gitops-creds",
        "the grant forced an Apply manager's field"
    );
}

#[tokio::test]
async fn second_grant_on_same_field_conflicts() {
    let env = granted("drift-two-grants").await;
    let ns = Some(env.namespace.as_str());
    let before = env.get("TiKVGroup", "tikv").await;

    apply(
        &env.admin,
        ns,
        aws_access_key_grant("second", "creds", tikv_only()),
    )
    .await;

    let status = env
        .wait_for_status(
            "second",
            "Conflict",
            has_condition("TargetsInSync", "False", "TargetConflict"),
        )
        .await;
    let (_, _, message) = target_state(&status, "TiKVGroup", "tikv").unwrap();
    assert!(message.unwrap_or_default().contains("storagegrant.dev/g"));
    env.wait_for_status(
        "g",
        "the first grant still Ready",
        has_condition("Ready", "True", "Ready"),
    )
    .await;
    let after = env.get("TiKVGroup", "tikv").await;
    assert_eq!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
}

#[tokio::test]
async fn tampered_or_deleted_kept_secret_is_restored() {
    let env = granted("drift-kept").await;
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), &env.namespace);
    let expected = secrets.get("g-storagegrant").await.unwrap().data;
    let tamper = Patch::Merge(json!({"data": {"access_key": "dGFtcGVyZWQ="}}));

    secrets
        .patch("g-storagegrant", &PatchParams::default(), &tamper)
        .await
        .unwrap();

    env.eventually("the kept Secret to be restored", || async {
        secrets.get("g-storagegrant").await.unwrap().data == expected
    })
    .await;

    secrets
        .delete("g-storagegrant", &DeleteParams::default())
        .await
        .unwrap();

    env.eventually("the kept Secret to be recreated", || async {
        secrets
            .get_opt("g-storagegrant")
            .await
            .unwrap()
            .is_some_and(|secret| secret.data == expected)
    })
    .await;
}

#[tokio::test]
async fn reverted_target_stops_at_repair_budget() {
    let env = granted("drift-loop").await;

    for round in 1..=3 {
        remove_env(&env, "AWS_ACCESS_KEY_ID", "kubectl-edit").await;
        env.eventually_get("TiKVGroup", "tikv", |object| {
            has_variable(object, "AWS_ACCESS_KEY_ID")
        })
        .await;
        env.wait_for_status("g", &format!("repair {round} counted"), |status| {
            let repairs = status
                .targets
                .as_ref()
                .and_then(|targets| targets[0].repairs);
            if repairs == Some(round) {
                Ok(())
            } else {
                Err(format!("repairs {repairs:?}"))
            }
        })
        .await;
    }
    remove_env(&env, "AWS_ACCESS_KEY_ID", "kubectl-edit").await;

    let status = env
        .wait_for_status("g", "RepairLoop", |status| {
            match target_state(status, "TiKVGroup", "tikv") {
                Some((TargetState::Drifted, Some(reason), _)) if reason == "RepairLoop" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    assert_eq!(status.targets.as_ref().unwrap()[0].repairs, Some(3));
    wait_for_event(&env, "RepairLoop", &["TiKVGroup tikv"]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !has_variable(&env.get("TiKVGroup", "tikv").await, "AWS_ACCESS_KEY_ID"),
        "repaired past the budget"
    );
}

/// Drops empty maps, empty lists and nulls, so that an object with an emptied overlay
/// compares equal to one that never had it.
fn pruned(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, child)| (key.clone(), pruned(child)))
                .filter(|(_, child)| !is_empty(child))
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(pruned)
                .filter(|child| !is_empty(child))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

fn user_part(object: &Value) -> Value {
    pruned(
        &json!({"spec": object["spec"], "labels": object["metadata"]["labels"], "annotations": object["metadata"]["annotations"]}),
    )
}

#[tokio::test]
async fn deleted_grant_restores_targets() {
    let env = TestEnv::start("release").await;
    let ns = Some(env.namespace.as_str());
    apply(
        &env.admin,
        ns,
        secret(
            "creds",
            &[("access_key", KEY_ID), ("secret_key", SECRET_KEY)],
        ),
    )
    .await;
    let overlay = json!({"metadata": {"annotations": {"a": "b"}}, "spec": {"containers": [{"name": "tikv", "env": [{"name": "TZ", "value": "UTC"}]}]}});
    create(&env.admin, ns, group("TiKVGroup", "tikv", overlay)).await;
    create(
        &env.admin,
        ns,
        group("TiFlashGroup", "tiflash", Value::Null),
    )
    .await;
    let before_tikv = env.get("TiKVGroup", "tikv").await;
    let before_tiflash = env.get("TiFlashGroup", "tiflash").await;
    apply(&env.admin, ns, aws_access_key_grant("g", "creds", json!([{"kind": "TiKVGroup", "name": "tikv"}, {"kind": "TiFlashGroup", "name": "tiflash"}]))).await;
    env.wait_for_status("g", "Ready", has_condition("Ready", "True", "Ready"))
        .await;
    let grant = env.grants().get("g").await.unwrap();
    assert_eq!(
        grant.metadata.finalizers.as_deref(),
        Some(&["storagegrant.dev/release".to_owned()][..])
    );

    env.grants()
        .delete("g", &DeleteParams::default())
        .await
        .unwrap();

    env.eventually("the grant to be gone", || async {
        env.grants().get_opt("g").await.unwrap().is_none()
    })
    .await;
    assert_eq!(
        user_part(&env.get("TiKVGroup", "tikv").await),
        user_part(&before_tikv)
    );
    assert_eq!(
        user_part(&env.get("TiFlashGroup", "tiflash").await),
        user_part(&before_tiflash)
    );
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), &env.namespace);
    env.eventually("the kept Secret to be deleted", || async {
        secrets.get_opt("g-storagegrant").await.unwrap().is_none()
    })
    .await;
}

#[tokio::test]
async fn target_leaving_selector_is_released() {
    let env = TestEnv::start("release-scope").await;
    let ns = Some(env.namespace.as_str());
    apply(
        &env.admin,
        ns,
        secret(
            "creds",
            &[("access_key", KEY_ID), ("secret_key", SECRET_KEY)],
        ),
    )
    .await;
    let mut labelled = group("TiKVGroup", "tikv", Value::Null);
    labelled["metadata"]["labels"] = json!({"backup": "s3"});
    create(&env.admin, ns, labelled).await;
    apply(
        &env.admin,
        ns,
        aws_access_key_grant(
            "g",
            "creds",
            json!([{"kind": "TiKVGroup", "selector": {"matchLabels": {"backup": "s3"}}}]),
        ),
    )
    .await;
    env.wait_for_status(
        "g",
        "Ready",
        has_condition("TargetsInSync", "True", "AllInSync"),
    )
    .await;
    assert!(has_variable(
        &env.get("TiKVGroup", "tikv").await,
        "AWS_ACCESS_KEY_ID"
    ));

    let unlabel = Patch::Merge(json!({"metadata": {"labels": {"backup": null}}}));
    env.api("core.pingcap.com/v1alpha1", "TiKVGroup", "tikvgroups")
        .patch("tikv", &PatchParams::default(), &unlabel)
        .await
        .unwrap();

    env.eventually_get("TiKVGroup", "tikv", |object| tikv_env(object).is_empty())
        .await;
    env.wait_for_status(
        "g",
        "no targets",
        has_condition("TargetsInSync", "True", "NoMatchingTargets"),
    )
    .await;
}

#[tokio::test]
async fn namespace_deletion_is_not_wedged() {
    let env = granted("release-namespace").await;
    let namespaces: Api<Namespace> = Api::all(env.admin.clone());

    namespaces
        .delete(&env.namespace, &DeleteParams::default())
        .await
        .unwrap();

    eventually(
        "the namespace to be gone",
        Duration::from_secs(90),
        || async {
            match namespaces.get_opt(&env.namespace).await {
                Ok(None) => Ok(()),
                Ok(Some(namespace)) => Err(format!("{:?}", namespace.status)),
                Err(error) => Err(error.to_string()),
            }
        },
    )
    .await;
}
