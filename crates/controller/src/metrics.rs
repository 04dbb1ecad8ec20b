//! Prometheus metrics. Label values are bounded: kinds, results and reasons, never object names.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// The kind of object written: Secret, TiKVGroup, StorageGrant (status), ...
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// The controller's metrics, registered under the `storagegrant` prefix.
#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub writes: Family<WriteLabels, Counter>,
    pub credential_failures: Family<ReasonLabels, Counter>,
    pub conflicts: Family<ReasonLabels, Counter>,
    pub drift_detected: Family<KindLabels, Counter>,
    pub drift_repaired: Family<KindLabels, Counter>,
    pub repair_loops: Family<KindLabels, Counter>,
    pub admissions: Family<AdmissionLabels, Counter>,
    pub admission_duration: Histogram,
    pub grants: Family<ReadyLabels, Gauge>,
    pub targets: Family<TargetLabels, Gauge>,
    pub leader: Gauge,
    /// The last status of each grant, by (namespace, name), from which the gauges are summed.
    statuses: std::sync::Arc<
        std::sync::Mutex<std::collections::BTreeMap<(String, String), GrantSummary>>,
    >,
}

#[derive(Clone, Debug, Default)]
struct GrantSummary {
    ready: bool,
    targets: Vec<(&'static str, &'static str)>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    pub ready: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub kind: &'static str,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    pub kind: &'static str,
    /// mutated, unchanged, contested or error.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            reconcile_duration: Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            writes: Family::default(),
            credential_failures: Family::default(),
            conflicts: Family::default(),
            drift_detected: Family::default(),
            drift_repaired: Family::default(),
            repair_loops: Family::default(),
            admissions: Family::default(),
            admission_duration: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            grants: Family::default(),
            targets: Family::default(),
            leader: Gauge::default(),
            statuses: Default::default(),
        };
        let registry = registry.sub_registry_with_prefix("storagegrant");
        registry.register(
            "reconciles",
            "Reconciles of grants by result",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time to reconcile one grant",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "writes",
            "Writes to the API server by object kind",
            metrics.writes.clone(),
        );
        registry.register(
            "credential_check_failures",
            "Failed checks of source Secrets by reason",
            metrics.credential_failures.clone(),
        );
        registry.register(
            "target_conflicts",
            "Targets left unwritten because another field manager owns a needed field",
            metrics.conflicts.clone(),
        );
        registry.register(
            "drift_detected",
            "Targets found without the grant's fields they had",
            metrics.drift_detected.clone(),
        );
        registry.register(
            "drift_repaired",
            "Drifted targets written back",
            metrics.drift_repaired.clone(),
        );
        registry.register(
            "repair_loops",
            "Targets whose repairs stopped because they kept drifting",
            metrics.repair_loops.clone(),
        );
        registry.register(
            "webhook_admissions",
            "Admission requests answered by the webhook",
            metrics.admissions.clone(),
        );
        registry.register(
            "webhook_duration_seconds",
            "Time to answer one admission request",
            metrics.admission_duration.clone(),
        );
        registry.register(
            "grants",
            "Grants by readiness, as last reconciled by this replica",
            metrics.grants.clone(),
        );
        registry.register(
            "targets",
            "Targets by kind and state, as last reconciled by this replica",
            metrics.targets.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            metrics.leader.clone(),
        );
        metrics
    }

    /// Records a grant's latest status (or its removal, with `None`) and updates the gauges.
    pub fn record_grant(
        &self,
        namespace: &str,
        name: &str,
        status: Option<&storagegrant_api::StorageGrantStatus>,
    ) {
        let mut statuses = self.statuses.lock().expect("grant summary lock");
        let key = (namespace.to_owned(), name.to_owned());
        match status {
            Some(status) => {
                let ready =
                    storagegrant_core::status::condition(status, storagegrant_core::status::READY)
                        .is_some_and(|condition| {
                            condition.status == storagegrant_api::ConditionStatus::True
                        });
                let targets = status
                    .targets
                    .iter()
                    .flatten()
                    .map(|target| (target.kind.as_str(), state_name(target.state)))
                    .collect();
                statuses.insert(key, GrantSummary { ready, targets });
            }
            None => {
                statuses.remove(&key);
            }
        }
        self.grants.clear();
        self.targets.clear();
        for summary in statuses.values() {
            self.grants
                .get_or_create(&ReadyLabels {
                    ready: if summary.ready { "true" } else { "false" },
                })
                .inc();
            for (kind, state) in &summary.targets {
                self.targets
                    .get_or_create(&TargetLabels { kind, state })
                    .inc();
            }
        }
    }

    pub fn observe_admission(&self, kind: &'static str, result: &'static str, elapsed: Duration) {
        self.admissions
            .get_or_create(&AdmissionLabels { kind, result })
            .inc();
        self.admission_duration.observe(elapsed.as_secs_f64());
    }

    pub fn observe_reconcile(&self, result: &'static str, elapsed: Duration) {
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
        self.reconcile_duration.observe(elapsed.as_secs_f64());
    }

    pub fn count_write(&self, kind: &str) {
        self.writes
            .get_or_create(&WriteLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }
}

fn state_name(state: storagegrant_api::TargetState) -> &'static str {
    use storagegrant_api::TargetState::*;
    match state {
        InSync => "InSync",
        Drifted => "Drifted",
        Missing => "Missing",
        Conflict => "Conflict",
        Invalid => "Invalid",
        Late => "Late",
        Finished => "Finished",
    }
}
