//! The admission webhook, called by the real API server on loopback: new Backups carry the
//! grant's fields from the moment they exist. The tests share one MutatingWebhookConfiguration
//! name, so they run one at a time.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};
use storagegrant_api::TargetState;
use storagegrant_e2e::controller::{self, RunningController, free_port};
use storagegrant_e2e::eventually;
use storagegrant_e2e::fixtures::{
    TestEnv, aws_access_key_grant, backup, has_condition, secret, target_state,
};
use storagegrant_e2e::objects::{apply, create};
use tokio::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

const KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

/// Creates the webhook configuration a local run uses, pointing at `port` on loopback.
async fn configure_webhook(env: &TestEnv, port: u16) {
    apply(&env.admin, None, json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "storagegrant-controller"},
        "webhooks": [{
            "name": "mutate.storagegrant.dev",
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate")},
            "rules": [{"operations": ["CREATE"], "apiGroups": ["br.pingcap.com"], "apiVersions": ["v1alpha1"], "resources": ["backups", "restores"]}],
            "namespaceSelector": {"matchLabels": {"storagegrant.dev/webhook": "enabled"}},
            "failurePolicy": "Ignore",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
        }],
    }))
    .await;
}

async fn start_webhook_controller(
    env: &TestEnv,
    port: u16,
    name: &str,
    lifetime: &str,
) -> RunningController {
    let args = [
        format!("--webhook-url=https://127.0.0.1:{port}"),
        format!("--webhook-bind-address=127.0.0.1:{port}"),
        format!("--webhook-cert-lifetime={lifetime}"),
        // Where the shipped install keeps the certificate Secret, as its RBAC expects.
        "--leader-election-namespace=storagegrant-system".to_owned(),
    ];
    controller::start_with(env.plane, &env.admin, &[&env.namespace], name, &args).await
}

/// A namespace whose grant selects nightly Backups, with the webhook configured, serving and
/// enabled for the namespace; the test's own controller is stopped and replaced by one with
/// the webhook.
async fn webhook_env(name: &str, lifetime: &str) -> (TestEnv, RunningController, u16) {
    let mut env = TestEnv::start(name).await;
    let ns = Some(env.namespace.as_str());
    env.bind_backup_manager("tidb-backup-manager").await;
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
            json!([{"kind": "Backup", "selector": {"matchLabels": {"schedule": "nightly"}}}]),
        ),
    )
    .await;
    env.wait_for_status("g", "Ready", has_condition("Ready", "True", "Ready"))
        .await;
    let port = free_port();
    configure_webhook(&env, port).await;
    env.controller.stop();
    let webhook =
        start_webhook_controller(&env, port, &format!("{}-webhook", env.namespace), lifetime).await;
    wait_until_webhook_enabled(&env).await;
    (env, webhook, port)
}

async fn wait_until_webhook_enabled(env: &TestEnv) {
    let namespaces: Api<Namespace> = Api::all(env.admin.clone());
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(env.admin.clone());
    env.eventually("the namespace label and the caBundle", || async {
        let labelled = namespaces
            .get(&env.namespace)
            .await
            .unwrap()
            .metadata
            .labels
            .unwrap_or_default()
            .get("storagegrant.dev/webhook")
            .map(String::as_str)
            == Some("enabled");
        let configuration = configurations.get("storagegrant-controller").await.unwrap();
        let bundle = configuration
            .webhooks
            .unwrap_or_default()
            .iter()
            .all(|webhook| webhook.client_config.ca_bundle.is_some());
        labelled && bundle
    })
    .await;
}

fn nightly(name: &str) -> Value {
    backup(
        "Backup",
        name,
        json!({"schedule": "nightly"}),
        json!({"s3": {"provider": "aws", "bucket": "b"}}),
    )
}

fn managers_of_secret_name(object: &Value) -> Vec<String> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| {
            entry
                .pointer("/fieldsV1/f:spec/f:s3/f:secretName")
                .is_some()
        })
        .filter_map(|entry| entry["manager"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn new_backup_carries_fields_from_creation() {
    let _guard = ONE_AT_A_TIME.lock().await;
    let (env, _webhook, _) = webhook_env("webhook-create", "90d").await;
    let ns = Some(env.namespace.as_str());

    let created = create(&env.admin, ns, nightly("nightly-1")).await;
    let unselected = create(
        &env.admin,
        ns,
        backup(
            "Backup",
            "adhoc",
            json!({}),
            json!({"s3": {"provider": "aws"}}),
        ),
    )
    .await;

    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(
        created.data["spec"]["s3"]["secretName"], "g-storagegrant",
        "the create response lacks the grant's field"
    );
    assert_eq!(created.data["spec"]["s3"]["bucket"], "b");
    assert!(
        unselected.data["spec"]["s3"].get("secretName").is_none(),
        "an unselected Backup was mutated"
    );
    let claimed = env
        .eventually_get("Backup", "nightly-1", |object| {
            managers_of_secret_name(object).contains(&"storagegrant.dev/g".to_owned())
        })
        .await;
    assert_eq!(
        claimed["metadata"]["generation"], 1,
        "the claim changed the Backup"
    );
    let status = env
        .wait_for_status("g", "the Backup in sync", |status| {
            match target_state(status, "Backup", "nightly-1") {
                Some((TargetState::InSync, _, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    assert!(target_state(&status, "Backup", "adhoc").is_none());
}

#[tokio::test]
async fn backup_admitted_while_webhook_down_is_reported() {
    let _guard = ONE_AT_A_TIME.lock().await;
    let (env, mut webhook, port) = webhook_env("webhook-down", "90d").await;
    let ns = Some(env.namespace.as_str());
    webhook.stop();

    let created = create(&env.admin, ns, nightly("missed")).await;
    assert!(
        created.data["spec"]["s3"].get("secretName").is_none(),
        "a stopped webhook mutated the Backup"
    );
    env.set_phase("Backup", "missed", "Running").await;
    let _restarted =
        start_webhook_controller(&env, port, &format!("{}-restarted", env.namespace), "90d").await;

    env.wait_for_status(
        "g",
        "the Backup reported Late",
        |status| match target_state(status, "Backup", "missed") {
            Some((TargetState::Late, _, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    let events: Api<Event> = Api::namespaced(env.admin.clone(), &env.namespace);
    eventually(
        "a Warning Event for the late Backup",
        Duration::from_secs(20),
        || async {
            let list = events
                .list(&ListParams::default())
                .await
                .map_err(|error| error.to_string())?;
            let found = list.items.iter().any(|event| {
                event.reason.as_deref() == Some("TargetLate")
                    && event
                        .note
                        .as_deref()
                        .is_some_and(|note| note.contains("missed"))
            });
            if found {
                Ok(())
            } else {
                Err(format!("{} events", list.items.len()))
            }
        },
    )
    .await;
    assert!(
        env.get("Backup", "missed").await["spec"]["s3"]
            .get("secretName")
            .is_none(),
        "a started Backup was changed"
    );
}

#[tokio::test]
async fn leaf_rotation_loses_no_backup() {
    let _guard = ONE_AT_A_TIME.lock().await;
    // Renewed every 4 s (two thirds of 6 s) while Backups are created for about 15 s.
    let (env, mut webhook, _) = webhook_env("webhook-rotation", "6s").await;
    let ns = Some(env.namespace.as_str());
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), "storagegrant-system");
    let certificate = || async {
        secrets
            .get("storagegrant-webhook-tls")
            .await
            .unwrap()
            .data
            .unwrap_or_default()
            .get("tls.crt")
            .cloned()
    };
    let mut seen = vec![certificate().await];

    for index in 0..30 {
        let created = create(&env.admin, ns, nightly(&format!("rotation-{index}"))).await;
        assert_eq!(
            created.data["spec"]["s3"]["secretName"], "g-storagegrant",
            "Backup rotation-{index} was admitted without the field"
        );
        let current = certificate().await;
        if seen.last() != Some(&current) {
            seen.push(current);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Later tests run controllers with the default lifetime; they start from a fresh Secret.
    webhook.stop();
    secrets
        .delete("storagegrant-webhook-tls", &Default::default())
        .await
        .unwrap();
    assert!(
        seen.len() >= 3,
        "the serving certificate was renewed {} times, expected at least twice",
        seen.len() - 1
    );
}

#[tokio::test]
async fn grant_waits_for_webhook_proof() {
    let _guard = ONE_AT_A_TIME.lock().await;
    let mut env = TestEnv::start("webhook-proof").await;
    let ns = Some(env.namespace.as_str());
    env.bind_backup_manager("tidb-backup-manager").await;
    apply(
        &env.admin,
        ns,
        secret(
            "creds",
            &[("access_key", KEY_ID), ("secret_key", SECRET_KEY)],
        ),
    )
    .await;
    // The configuration points at port 1, where nothing listens, so admission skips the
    // webhook (failurePolicy Ignore) and the dry-run comes back unmutated.
    configure_webhook(&env, 1).await;
    env.controller.stop();
    let port = free_port();
    let _webhook =
        start_webhook_controller(&env, port, &format!("{}-webhook", env.namespace), "90d").await;

    apply(
        &env.admin,
        ns,
        aws_access_key_grant("g", "creds", json!([{"kind": "Backup", "cluster": "demo"}])),
    )
    .await;

    let status = env
        .wait_for_status(
            "g",
            "WebhookNotReady",
            has_condition("TargetsInSync", "False", "WebhookNotReady"),
        )
        .await;
    assert_eq!(
        storagegrant_e2e::fixtures::condition(&status, "Ready")
            .unwrap()
            .0,
        "False"
    );

    configure_webhook(&env, port).await;

    env.wait_for_status(
        "g",
        "Ready once the webhook answers",
        has_condition("Ready", "True", "Ready"),
    )
    .await;
}

#[tokio::test]
async fn disagreeing_grants_write_neither_field() {
    let _guard = ONE_AT_A_TIME.lock().await;
    let (env, _webhook, _) = webhook_env("webhook-contested", "90d").await;
    let ns = Some(env.namespace.as_str());
    apply(
        &env.admin,
        ns,
        secret(
            "other-creds",
            &[
                ("access_key", "AKIAI44QH8DHBEXAMPLE"),
                ("secret_key", SECRET_KEY),
            ],
        ),
    )
    .await;
    apply(
        &env.admin,
        ns,
        aws_access_key_grant(
            "rival",
            "other-creds",
            json!([{"kind": "Backup", "selector": {"matchLabels": {"schedule": "nightly"}}}]),
        ),
    )
    .await;
    let status = env
        .wait_for_status(
            "rival",
            "ContestedByGrants",
            has_condition("TargetsInSync", "False", "ContestedByGrants"),
        )
        .await;
    assert!(
        storagegrant_e2e::fixtures::condition(&status, "TargetsInSync")
            .unwrap()
            .2
            .contains("spec.s3.secretName")
    );

    let created = create(&env.admin, ns, nightly("contested")).await;

    assert!(
        created.data["spec"]["s3"].get("secretName").is_none(),
        "a contested field was written"
    );
    for grant in ["g", "rival"] {
        env.wait_for_status(
            grant,
            "Conflict on the contested Backup",
            |status| match target_state(status, "Backup", "contested") {
                Some((TargetState::Conflict, _, Some(message)))
                    if message.contains("spec.s3.secretName") =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        env.get("Backup", "contested").await["spec"]["s3"]
            .get("secretName")
            .is_none(),
        "a grant wrote the contested field later"
    );
}

/// Issues a CA and a serving certificate for 127.0.0.1 with openssl, as an external issuer
/// would; returns (ca.crt, tls.crt, tls.key).
fn issue_with_openssl() -> (String, String, String) {
    let dir = std::env::temp_dir().join(format!("storagegrant-issuer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "openssl {args:?} failed");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=external-issuer",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("san.cnf"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "tls.crt",
        "-days",
        "1",
        "-extfile",
        "san.cnf",
    ]);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let issued = (read("ca.crt"), read("tls.crt"), read("tls.key"));
    std::fs::remove_dir_all(&dir).unwrap();
    issued
}

#[tokio::test]
async fn externally_issued_certificate_is_served() {
    let _guard = ONE_AT_A_TIME.lock().await;
    let mut env = TestEnv::start("webhook-external").await;
    let ns = Some(env.namespace.as_str());
    env.bind_backup_manager("tidb-backup-manager").await;
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
            json!([{"kind": "Backup", "selector": {"matchLabels": {"schedule": "nightly"}}}]),
        ),
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), "storagegrant-system");
    let _ = secrets
        .delete("storagegrant-webhook-tls", &Default::default())
        .await;
    let (ca, cert, key) = issue_with_openssl();
    let mut issued = secret(
        "storagegrant-webhook-tls",
        &[("ca.crt", &ca), ("tls.crt", &cert), ("tls.key", &key)],
    );
    issued["type"] = json!("kubernetes.io/tls");
    apply(&env.admin, Some("storagegrant-system"), issued).await;
    let port = free_port();
    configure_webhook(&env, port).await;
    // What cert-manager's CA injector does for the shipped configuration.
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(env.admin.clone());
    let bundle = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &ca);
    let inject = json_patch::Patch(
        serde_json::from_value(
            json!([{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": bundle}]),
        )
        .unwrap(),
    );
    configurations
        .patch(
            "storagegrant-controller",
            &Default::default(),
            &kube::api::Patch::<()>::Json(inject),
        )
        .await
        .unwrap();
    env.controller.stop();

    let args = [
        format!("--webhook-url=https://127.0.0.1:{port}"),
        format!("--webhook-bind-address=127.0.0.1:{port}"),
        "--webhook-cert-source=external".to_owned(),
        "--leader-election-namespace=storagegrant-system".to_owned(),
    ];
    let _webhook = controller::start_with(
        env.plane,
        &env.admin,
        &[&env.namespace],
        &format!("{}-webhook", env.namespace),
        &args,
    )
    .await;
    wait_until_webhook_enabled(&env).await;
    env.wait_for_status(
        "g",
        "Ready with the webhook proven",
        has_condition("Ready", "True", "Ready"),
    )
    .await;

    let created = create(&env.admin, ns, nightly("external-1")).await;

    assert_eq!(created.data["spec"]["s3"]["secretName"], "g-storagegrant");
    let kept = secrets
        .get("storagegrant-webhook-tls")
        .await
        .unwrap()
        .data
        .unwrap_or_default();
    assert!(
        !kept.contains_key("ca.key"),
        "the controller rewrote an externally issued Secret"
    );
    assert_eq!(
        kept.get("tls.crt").map(|value| value.0.clone()),
        Some(cert.into_bytes())
    );
    secrets
        .delete("storagegrant-webhook-tls", &Default::default())
        .await
        .unwrap();
}
