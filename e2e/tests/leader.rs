//! Two replicas on one Lease: one leads and writes, the standby writes nothing, and a
//! terminated leader hands over within the lease duration. This binary has its own control
//! plane, so no other test's controller competes for the Lease.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::{Value, json};
use storagegrant_e2e::controller::{self, RunningController};
use storagegrant_e2e::eventually;
use storagegrant_e2e::fixtures::{TestEnv, aws_access_key_grant, group, has_condition, secret};
use storagegrant_e2e::objects::{apply, create};

async fn replica(env: &TestEnv, name: &str) -> RunningController {
    let args = [
        "--leader-elect=true".to_owned(),
        "--leader-election-namespace=storagegrant-system".to_owned(),
    ];
    controller::start_with(env.plane, &env.admin, &[&env.namespace], name, &args).await
}

/// The value of a metric line such as `storagegrant_leader 1`, summed over its label sets.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.split([' ', '{']).next() == Some(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn holder(env: &TestEnv) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(env.admin.clone(), "storagegrant-system");
    leases
        .get_opt("storagegrant-controller")
        .await
        .ok()??
        .spec?
        .holder_identity
}

#[tokio::test]
async fn standby_takes_over_from_terminated_leader() {
    let mut env = TestEnv::start("leader").await;
    env.controller.stop();
    let ns = Some(env.namespace.as_str());
    apply(
        &env.admin,
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
    create(&env.admin, ns, group("TiKVGroup", "tikv", Value::Null)).await;
    let mut replicas = vec![
        replica(&env, "leader-a").await,
        replica(&env, "leader-b").await,
    ];

    let leader_index = eventually("one replica to lead", Duration::from_secs(30), || async {
        let mut leading = Vec::new();
        for (index, replica) in replicas.iter().enumerate() {
            if metric(&replica.metrics().await, "storagegrant_leader") == 1.0 {
                leading.push(index);
            }
        }
        if leading.len() == 1 {
            Ok(leading[0])
        } else {
            Err(format!("leaders: {leading:?}"))
        }
    })
    .await;
    assert!(holder(&env).await.is_some());
    apply(
        &env.admin,
        ns,
        aws_access_key_grant(
            "g",
            "creds",
            json!([{"kind": "TiKVGroup", "cluster": "demo"}]),
        ),
    )
    .await;
    env.wait_for_status("g", "Ready", has_condition("Ready", "True", "Ready"))
        .await;

    let standby = 1 - leader_index;
    let standby_metrics = replicas[standby].metrics().await;
    assert_eq!(
        metric(&standby_metrics, "storagegrant_writes_total"),
        0.0,
        "the standby wrote: {standby_metrics}"
    );
    assert_eq!(metric(&standby_metrics, "storagegrant_leader"), 0.0);
    let leader_metrics = replicas[leader_index].metrics().await;
    assert!(metric(&leader_metrics, "storagegrant_writes_total") > 0.0);
    assert!(
        leader_metrics.contains(r#"storagegrant_targets{kind="TiKVGroup",state="InSync"} 1"#),
        "{leader_metrics}"
    );
    assert!(
        leader_metrics.contains(r#"storagegrant_grants{ready="true"} 1"#),
        "{leader_metrics}"
    );
    assert!(metric(&leader_metrics, "storagegrant_reconciles_total") > 0.0);

    let stopped_at = std::time::Instant::now();
    replicas[leader_index].terminate();
    eventually("the standby to lead", Duration::from_secs(15), || async {
        let text = replicas[standby].metrics().await;
        if metric(&text, "storagegrant_leader") == 1.0 {
            Ok(())
        } else {
            Err("still standby".to_owned())
        }
    })
    .await;
    assert!(
        stopped_at.elapsed() < Duration::from_secs(15),
        "handover took {:?}",
        stopped_at.elapsed()
    );

    create(&env.admin, ns, group("TiKVGroup", "tikv-2", Value::Null)).await;
    env.wait_for_status("g", "the survivor to write the new group", |status| {
        let targets = status.targets.as_deref().unwrap_or_default();
        let synced = targets
            .iter()
            .filter(|target| target.state == storagegrant_api::TargetState::InSync)
            .count();
        if synced == 2 {
            Ok(())
        } else {
            Err(format!("{synced} in sync"))
        }
    })
    .await;
    let survivor = replicas.remove(standby);
    assert!(metric(&survivor.metrics().await, "storagegrant_writes_total") > 0.0);
}
