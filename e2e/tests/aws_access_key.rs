//! A StorageGrant for AWS access keys on TiKV and TiFlash groups, against a real API server.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use storagegrant_api::TargetState;
use storagegrant_e2e::controller::controller_username;
use storagegrant_e2e::fixtures::{
    TestEnv, aws_access_key_grant, condition, group, has_condition, secret,
};
use storagegrant_e2e::objects::{apply, create};
use storagegrant_e2e::{audit, eventually};

const KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

fn both_groups() -> Value {
    json!([{"kind": "TiKVGroup", "name": "tikv"}, {"kind": "TiFlashGroup", "name": "tiflash"}])
}

/// A pod overlay with what users commonly put there: their own env entry, an extra
/// container, a nodeSelector and annotations.
fn user_overlay(container: &str) -> Value {
    json!({
        "metadata": {"annotations": {"example.com/owner": "db-team"}},
        "spec": {
            "nodeSelector": {"disk": "nvme"},
            "containers": [
                {"name": container, "env": [{"name": "TZ", "value": "UTC"}]},
                {"name": "log-shipper", "image": "busybox:1.36", "env": [{"name": "LEVEL", "value": "info"}]},
            ],
        },
    })
}

fn overlay_of(object: &Value) -> Value {
    object
        .pointer("/spec/template/spec/overlay/pod")
        .cloned()
        .unwrap_or(Value::Null)
}

/// The overlay without the grant's env entries, to compare with the user's own.
fn without_grant_env(mut overlay: Value, container: &str) -> Value {
    if let Some(containers) = overlay
        .pointer_mut("/spec/containers")
        .and_then(Value::as_array_mut)
    {
        for entry in containers
            .iter_mut()
            .filter(|entry| entry["name"] == container)
        {
            if let Some(env) = entry.get_mut("env").and_then(Value::as_array_mut) {
                env.retain(|variable| {
                    !variable["name"]
                        .as_str()
                        .unwrap_or_default()
                        .starts_with("AWS_")
                });
            }
        }
    }
    overlay
}

fn env_entry<'a>(object: &'a Value, container: &str, variable: &str) -> Option<&'a Value> {
    object
        .pointer("/spec/template/spec/overlay/pod/spec/containers")?
        .as_array()?
        .iter()
        .find(|entry| entry["name"] == container)?
        .get("env")?
        .as_array()?
        .iter()
        .find(|entry| entry["name"] == variable)
}

fn managers(object: &Value) -> Vec<String> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["manager"].as_str().map(str::to_owned))
        .collect()
}

async fn get_json(env: &TestEnv, kind: &str, name: &str) -> Value {
    let (api_version, plural) = match kind {
        "TiKVGroup" => ("core.pingcap.com/v1alpha1", "tikvgroups"),
        "TiFlashGroup" => ("core.pingcap.com/v1alpha1", "tiflashgroups"),
        other => panic!("no API for {other}"),
    };
    let object = env.api(api_version, kind, plural).get(name).await.unwrap();
    serde_json::to_value(object).unwrap()
}

async fn kept_secret_data(env: &TestEnv, name: &str) -> Option<Vec<(String, Vec<u8>)>> {
    let secret = Api::<Secret>::namespaced(env.admin.clone(), &env.namespace)
        .get_opt(name)
        .await
        .unwrap()?;
    Some(
        secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| (key, value.0))
            .collect(),
    )
}

#[tokio::test]
async fn grant_puts_keys_on_both_groups() {
    let env = TestEnv::start("aws-keys").await;
    let ns = Some(env.namespace.as_str());
    apply(
        &env.admin,
        ns,
        secret(
            "s3-creds",
            &[("access_key", KEY_ID), ("secret_key", SECRET_KEY)],
        ),
    )
    .await;
    create(
        &env.admin,
        ns,
        group("TiKVGroup", "tikv", user_overlay("tikv")),
    )
    .await;
    create(
        &env.admin,
        ns,
        group("TiFlashGroup", "tiflash", user_overlay("tiflash")),
    )
    .await;
    let before_tikv = get_json(&env, "TiKVGroup", "tikv").await;
    let before_tiflash = get_json(&env, "TiFlashGroup", "tiflash").await;

    apply(
        &env.admin,
        ns,
        aws_access_key_grant("backup-s3", "s3-creds", both_groups()),
    )
    .await;

    let status = env
        .wait_for_status(
            "backup-s3",
            "the grant to be Ready",
            has_condition("Ready", "True", "Ready"),
        )
        .await;
    assert_eq!(
        status.field_manager.as_deref(),
        Some("storagegrant.dev/backup-s3")
    );
    assert_eq!(status.observed_generation, Some(1));
    let states: Vec<TargetState> = status
        .targets
        .iter()
        .flatten()
        .map(|target| target.state)
        .collect();
    assert_eq!(states, [TargetState::InSync, TargetState::InSync]);

    let kept = kept_secret_data(&env, "backup-s3-storagegrant")
        .await
        .expect("the kept Secret exists");
    assert_eq!(
        kept,
        [
            ("access_key".to_owned(), KEY_ID.as_bytes().to_vec()),
            ("secret_key".to_owned(), SECRET_KEY.as_bytes().to_vec())
        ]
    );

    for (kind, name, container, before) in [
        ("TiKVGroup", "tikv", "tikv", &before_tikv),
        ("TiFlashGroup", "tiflash", "tiflash", &before_tiflash),
    ] {
        let after = get_json(&env, kind, name).await;
        for (variable, key) in [
            ("AWS_ACCESS_KEY_ID", "access_key"),
            ("AWS_SECRET_ACCESS_KEY", "secret_key"),
        ] {
            let entry = env_entry(&after, container, variable)
                .unwrap_or_else(|| panic!("{kind} has no {variable}"));
            assert_eq!(
                entry,
                &json!({"name": variable, "valueFrom": {"secretKeyRef": {"name": "backup-s3-storagegrant", "key": key}}}),
                "{kind}"
            );
        }
        assert_eq!(
            without_grant_env(overlay_of(&after), container),
            overlay_of(before),
            "{kind}: the user's overlay changed"
        );
        assert_eq!(after["spec"]["replicas"], before["spec"]["replicas"]);
        assert!(
            managers(&after).contains(&"storagegrant.dev/backup-s3".to_owned()),
            "{kind}: {:?}",
            managers(&after)
        );
    }
    let events =
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(env.admin.clone(), &env.namespace);
    let notes: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|event| event.reason.as_deref() == Some("RollingRestart"))
        .filter_map(|event| event.note)
        .collect();
    for group in ["TiKVGroup tikv", "TiFlashGroup tiflash"] {
        assert!(
            notes.iter().any(|note| note.contains(group)),
            "no RollingRestart Event for {group}: {notes:?}"
        );
    }
}

#[tokio::test]
async fn missing_secret_blocks_until_created() {
    let env = TestEnv::start("aws-late-secret").await;
    let ns = Some(env.namespace.as_str());
    create(&env.admin, ns, group("TiKVGroup", "tikv", Value::Null)).await;
    let before = get_json(&env, "TiKVGroup", "tikv").await;

    apply(
        &env.admin,
        ns,
        aws_access_key_grant(
            "g",
            "not-yet",
            json!([{"kind": "TiKVGroup", "name": "tikv"}]),
        ),
    )
    .await;

    let status = env
        .wait_for_status(
            "g",
            "CredentialsValid=False",
            has_condition("CredentialsValid", "False", "SecretNotFound"),
        )
        .await;
    let (_, _, message) = condition(&status, "CredentialsValid").unwrap();
    assert!(message.contains("not-yet"), "{message}");
    assert_eq!(condition(&status, "Ready").unwrap().0, "False");
    assert_eq!(condition(&status, "Stalled").unwrap().0, "True");
    let untouched = get_json(&env, "TiKVGroup", "tikv").await;
    assert_eq!(
        untouched["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"],
        "the target was written"
    );
    assert!(kept_secret_data(&env, "g-storagegrant").await.is_none());

    apply(
        &env.admin,
        ns,
        secret(
            "not-yet",
            &[("access_key", KEY_ID), ("secret_key", SECRET_KEY)],
        ),
    )
    .await;

    env.wait_for_status(
        "g",
        "Ready once the Secret exists",
        has_condition("Ready", "True", "Ready"),
    )
    .await;
    let written = get_json(&env, "TiKVGroup", "tikv").await;
    assert!(env_entry(&written, "tikv", "AWS_ACCESS_KEY_ID").is_some());
}

#[tokio::test]
async fn bad_keys_are_named_without_values() {
    let env = TestEnv::start("aws-bad-keys").await;
    let ns = Some(env.namespace.as_str());
    create(&env.admin, ns, group("TiKVGroup", "tikv", Value::Null)).await;
    apply(
        &env.admin,
        ns,
        aws_access_key_grant("g", "creds", json!([{"kind": "TiKVGroup", "name": "tikv"}])),
    )
    .await;

    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: [Case; 4] = [
        (&[("access_key", KEY_ID)], "SecretKeyMissing", "secret_key"),
        (
            &[("access_key", ""), ("secret_key", SECRET_KEY)],
            "SecretKeyEmpty",
            "access_key",
        ),
        (
            &[
                ("access_key", "AKIA-NOT-VALID-KEY"),
                ("secret_key", SECRET_KEY),
            ],
            "InvalidAccessKeyId",
            "access_key",
        ),
        (
            &[
                ("access_key", "ASIAIOSFODNN7EXAMPLE"),
                ("secret_key", SECRET_KEY),
            ],
            "TemporaryAccessKey",
            "access_key",
        ),
    ];
    for (pairs, reason, key) in cases {
        apply(&env.admin, ns, secret("creds", pairs)).await;
        let status = env
            .wait_for_status("g", reason, |status| {
                match condition(status, "CredentialsValid") {
                    Some((found, found_reason, _))
                        if found == "False" && found_reason == reason =>
                    {
                        Ok(())
                    }
                    other => Err(format!("CredentialsValid is {other:?}")),
                }
            })
            .await;
        let (_, _, message) = condition(&status, "CredentialsValid").unwrap();
        assert!(message.contains(key), "{reason}: {message}");
        for (_, value) in pairs.iter().filter(|(_, value)| !value.is_empty()) {
            assert!(
                !message.contains(value),
                "{reason}: the message shows a value: {message}"
            );
        }
    }
    let target = get_json(&env, "TiKVGroup", "tikv").await;
    assert!(
        env_entry(&target, "tikv", "AWS_ACCESS_KEY_ID").is_none(),
        "a target was written with bad credentials"
    );
}

#[tokio::test]
async fn missing_target_syncs_once_created() {
    let env = TestEnv::start("aws-missing-target").await;
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
    apply(
        &env.admin,
        ns,
        aws_access_key_grant(
            "g",
            "creds",
            json!([{"kind": "TiFlashGroup", "name": "tiflash"}]),
        ),
    )
    .await;

    let status = env
        .wait_for_status(
            "g",
            "the target to be Missing",
            has_condition("TargetsInSync", "False", "TargetMissing"),
        )
        .await;
    let target = &status.targets.as_ref().unwrap()[0];
    assert_eq!(
        (target.name.as_str(), target.state),
        ("tiflash", TargetState::Missing)
    );
    assert_eq!(condition(&status, "Ready").unwrap().0, "False");

    create(
        &env.admin,
        ns,
        group("TiFlashGroup", "tiflash", Value::Null),
    )
    .await;

    let status = env
        .wait_for_status(
            "g",
            "Ready once the target exists",
            has_condition("Ready", "True", "Ready"),
        )
        .await;
    assert_eq!(
        status.targets.as_ref().unwrap()[0].state,
        TargetState::InSync
    );
    let written = get_json(&env, "TiFlashGroup", "tiflash").await;
    assert!(env_entry(&written, "tiflash", "AWS_SECRET_ACCESS_KEY").is_some());
}

#[tokio::test]
async fn hand_set_key_is_conflict_and_untouched() {
    let env = TestEnv::start("aws-conflict").await;
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
    let overlay = json!({"spec": {"containers": [{"name": "tikv", "env": [{"name": "AWS_ACCESS_KEY_ID", "value": "hand-set"}]}]}});
    create(&env.admin, ns, group("TiKVGroup", "tikv", overlay)).await;
    let before = get_json(&env, "TiKVGroup", "tikv").await;

    apply(
        &env.admin,
        ns,
        aws_access_key_grant("g", "creds", json!([{"kind": "TiKVGroup", "name": "tikv"}])),
    )
    .await;

    let status = env
        .wait_for_status(
            "g",
            "a Conflict",
            has_condition("TargetsInSync", "False", "TargetConflict"),
        )
        .await;
    let target = &status.targets.as_ref().unwrap()[0];
    assert_eq!(target.state, TargetState::Conflict);
    let message = target.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("storagegrant-e2e"),
        "the message does not name the manager: {message}"
    );
    assert!(message.contains("AWS_ACCESS_KEY_ID"), "{message}");
    assert_eq!(condition(&status, "Stalled").unwrap().0, "True");

    // Give the controller time to do anything it would do, then check nothing was written.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = get_json(&env, "TiKVGroup", "tikv").await;
    assert_eq!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
    assert_eq!(after["spec"], before["spec"]);
}

#[tokio::test]
async fn source_change_reaches_kept_secret() {
    let env = TestEnv::start("aws-rotate").await;
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
    create(&env.admin, ns, group("TiKVGroup", "tikv", Value::Null)).await;
    apply(
        &env.admin,
        ns,
        aws_access_key_grant("g", "creds", json!([{"kind": "TiKVGroup", "name": "tikv"}])),
    )
    .await;
    env.wait_for_status("g", "Ready", has_condition("Ready", "True", "Ready"))
        .await;
    let group_version =
        get_json(&env, "TiKVGroup", "tikv").await["metadata"]["resourceVersion"].clone();

    let rotated = "AKIAI44QH8DHBEXAMPLE";
    apply(
        &env.admin,
        ns,
        secret(
            "creds",
            &[("access_key", rotated), ("secret_key", SECRET_KEY)],
        ),
    )
    .await;

    eventually(
        "the kept Secret to hold the new key",
        Duration::from_secs(10),
        || async {
            let data = kept_secret_data(&env, "g-storagegrant")
                .await
                .unwrap_or_default();
            let key = data
                .iter()
                .find(|(key, _)| key == "access_key")
                .map(|(_, value)| value.clone());
            if key.as_deref() == Some(rotated.as_bytes()) {
                Ok(())
            } else {
                Err("old key".to_owned())
            }
        },
    )
    .await;
    let after = get_json(&env, "TiKVGroup", "tikv").await;
    assert_eq!(
        after["metadata"]["resourceVersion"], group_version,
        "a key rotation must not rewrite (and so roll) the group"
    );
}

#[tokio::test]
async fn quiet_minute_has_no_controller_writes() {
    let env = TestEnv::start("aws-quiet").await;
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
    create(&env.admin, ns, group("TiKVGroup", "tikv", Value::Null)).await;
    create(
        &env.admin,
        ns,
        group("TiFlashGroup", "tiflash", Value::Null),
    )
    .await;
    apply(
        &env.admin,
        ns,
        aws_access_key_grant("g", "creds", both_groups()),
    )
    .await;
    env.wait_for_status("g", "Ready and settled", |status| {
        has_condition("Ready", "True", "Ready")(status)?;
        has_condition("Reconciling", "False", "Reconciled")(status)
    })
    .await;
    // Let in-flight writes of the convergence land in the audit log before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes_before = audit::writes_by(env.plane, &controller_username(), &env.namespace).len();
    assert!(
        writes_before > 0,
        "the audit log shows no write by the controller at all"
    );

    tokio::time::sleep(Duration::from_secs(60)).await;

    let writes = audit::writes_by(env.plane, &controller_username(), &env.namespace);
    let quiet: Vec<String> = writes[writes_before..]
        .iter()
        .map(|event| {
            format!(
                "{} {:?}",
                event.verb,
                event.object_ref.as_ref().map(|object| (
                    &object.resource,
                    &object.name,
                    &object.subresource
                ))
            )
        })
        .collect();
    assert!(
        quiet.is_empty(),
        "the controller wrote during a quiet minute: {quiet:?}"
    );
}

#[tokio::test]
async fn credential_values_never_leak() {
    let env = TestEnv::start("aws-canary").await;
    let ns = Some(env.namespace.as_str());
    let suffix = format!("{:08X}", std::process::id() ^ 0x5A5A_5A5A);
    let canary_id = format!("AKIACANARY{suffix}");
    let canary_secret = format!("canarySecretValue/{suffix}/xyz");
    let bad_canary = format!("AKIA-CANARY-{suffix}");
    create(&env.admin, ns, group("TiKVGroup", "tikv", Value::Null)).await;
    apply(
        &env.admin,
        ns,
        aws_access_key_grant("g", "creds", json!([{"kind": "TiKVGroup", "name": "tikv"}])),
    )
    .await;

    // Pass the canaries through every path: a malformed key, a value with a newline, a good
    // pair and a rotation.
    apply(
        &env.admin,
        ns,
        secret(
            "creds",
            &[("access_key", &bad_canary), ("secret_key", &canary_secret)],
        ),
    )
    .await;
    env.wait_for_status(
        "g",
        "InvalidAccessKeyId",
        has_condition("CredentialsValid", "False", "InvalidAccessKeyId"),
    )
    .await;
    apply(
        &env.admin,
        ns,
        secret(
            "creds",
            &[
                ("access_key", &canary_id),
                ("secret_key", &format!("{canary_secret}\n")),
            ],
        ),
    )
    .await;
    env.wait_for_status(
        "g",
        "SecretValueMalformed",
        has_condition("CredentialsValid", "False", "SecretValueMalformed"),
    )
    .await;
    apply(
        &env.admin,
        ns,
        secret(
            "creds",
            &[("access_key", &canary_id), ("secret_key", &canary_secret)],
        ),
    )
    .await;
    env.wait_for_status("g", "Ready", has_condition("Ready", "True", "Ready"))
        .await;

    use base64::Engine;
    let encoded = |value: &str| base64::engine::general_purpose::STANDARD.encode(value);
    let canaries = [
        canary_id.clone(),
        canary_secret.clone(),
        bad_canary.clone(),
        encoded(&canary_id),
        encoded(&canary_secret),
        encoded(&bad_canary),
    ];

    let grant = serde_json::to_string(&env.grants().get("g").await.unwrap()).unwrap();
    let events =
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(env.admin.clone(), &env.namespace);
    let events = serde_json::to_string(&events.list(&Default::default()).await.unwrap()).unwrap();
    let metrics = env.controller.metrics().await;
    let log = env.controller.log();
    assert!(
        log.contains("Wrote kept Secret"),
        "the log is not the controller's: {log}"
    );
    assert!(
        events.contains("InvalidAccessKeyId"),
        "no Event for the bad key: {events}"
    );
    for (place, text) in [
        ("status", &grant),
        ("events", &events),
        ("metrics", &metrics),
        ("log", &log),
    ] {
        for canary in &canaries {
            assert!(
                !text.contains(canary.as_str()),
                "{place} contains a credential value"
            );
        }
    }
}

#[tokio::test]
async fn kept_secret_of_another_owner_is_left_alone() {
    let env = TestEnv::start("aws-name-taken").await;
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
    apply(
        &env.admin,
        ns,
        secret("g-storagegrant", &[("note", "someone else's")]),
    )
    .await;
    create(&env.admin, ns, group("TiKVGroup", "tikv", Value::Null)).await;

    apply(
        &env.admin,
        ns,
        aws_access_key_grant("g", "creds", json!([{"kind": "TiKVGroup", "name": "tikv"}])),
    )
    .await;

    env.wait_for_status(
        "g",
        "SecretNameTaken",
        has_condition("CredentialsValid", "False", "SecretNameTaken"),
    )
    .await;
    let data = kept_secret_data(&env, "g-storagegrant").await.unwrap();
    assert_eq!(data, [("note".to_owned(), b"someone else's".to_vec())]);
    let patch = Patch::Merge(json!({"metadata": {"labels": {"touched": "no"}}}));
    // The Secret is still writable by its owner, proving the controller holds no claim on it.
    Api::<Secret>::namespaced(env.admin.clone(), &env.namespace)
        .patch("g-storagegrant", &PatchParams::default(), &patch)
        .await
        .unwrap();
}
