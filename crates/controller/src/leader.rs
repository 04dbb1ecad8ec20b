//! Leader election on a coordination.k8s.io Lease: only the holder writes, while every
//! replica keeps warm caches and serves the webhook.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;

/// The Lease's name.
pub const LEASE_NAME: &str = "storagegrant-controller";
/// How long a holder keeps the Lease without renewing it; a standby takes over after that.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews, and a standby retries.
const RENEW_INTERVAL: Duration = Duration::from_secs(5);
const RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// Whether this process leads; shared by the reconcilers and the webhook keeper.
#[derive(Clone)]
pub struct Leadership(Arc<AtomicBool>);

impl Leadership {
    /// Leadership that is always held, for `--leader-elect=false`.
    pub fn always() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }

    pub fn is_leader(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

pub struct Elector {
    api: Api<Lease>,
    identity: String,
    leadership: Leadership,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, identity: String) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            identity,
            leadership: Leadership(Arc::new(AtomicBool::new(false))),
        }
    }

    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// Tries to take or renew the Lease forever; calls `on_change` with the new state each
    /// time this process becomes or stops being the leader.
    pub async fn run(&self, on_change: impl Fn(bool)) {
        let mut last_renewal: Option<Instant> = None;
        loop {
            // Bounded, so that a hanging request cannot keep a leader past its Lease.
            let attempt = tokio::time::timeout(RENEW_INTERVAL, self.try_acquire()).await;
            let held = match attempt {
                Ok(Ok(true)) => {
                    last_renewal = Some(Instant::now());
                    true
                }
                Ok(Ok(false)) => false,
                failed => {
                    match failed {
                        Ok(Err(error)) => {
                            tracing::warn!(%error, "Failed to take or renew the leader Lease")
                        }
                        _ => tracing::warn!("Timed out taking or renewing the leader Lease"),
                    }
                    // A leader keeps leading only while its last renewal is recent enough that
                    // no standby can have taken the Lease yet.
                    last_renewal.is_some_and(|at| at.elapsed() < LEASE_DURATION - RENEW_INTERVAL)
                }
            };
            let was = self.leadership.0.swap(held, Ordering::SeqCst);
            match (was, held) {
                (false, true) => {
                    tracing::info!(identity = %self.identity, "Became the leader");
                    on_change(true);
                }
                (true, false) => {
                    tracing::warn!(identity = %self.identity, "Lost the leader Lease; writes stop");
                    on_change(false);
                }
                _ => {}
            }
            tokio::time::sleep(if held { RENEW_INTERVAL } else { RETRY_INTERVAL }).await;
        }
    }

    /// Takes the Lease when it is free or expired, renews it when held. The Lease's
    /// resourceVersion makes concurrent attempts fail with a conflict, so only one wins.
    async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.api.get_opt(LEASE_NAME).await? else {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": LEASE_NAME},
                "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": LEASE_DURATION.as_secs(), "leaseTransitions": 0},
            }))
            .expect("a valid Lease");
            let lease = Lease {
                spec: lease
                    .spec
                    .map(|spec| k8s_openapi::api::coordination::v1::LeaseSpec {
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now.clone()),
                        ..spec
                    }),
                ..lease
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(error) => Err(error),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let duration = spec
            .lease_duration_seconds
            .map(|seconds| Duration::from_secs(seconds.max(0) as u64))
            .unwrap_or(LEASE_DURATION);
        let expired = spec.renew_time.as_ref().is_none_or(|renewed| {
            let age = Timestamp::now().duration_since(renewed.0);
            age.as_secs() >= duration.as_secs() as i64
        });
        if holder != self.identity && !holder.is_empty() && !expired {
            return Ok(false);
        }
        if holder != self.identity {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or_default() + 1);
            spec.holder_identity = Some(self.identity.clone());
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Gives the Lease up, so that a standby takes over at once instead of after it expires.
    pub async fn release(&self) {
        if !self.leadership.0.swap(false, Ordering::SeqCst) {
            return;
        }
        let Ok(Some(mut lease)) = self.api.get_opt(LEASE_NAME).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!("Released the leader Lease"),
            Err(error) => tracing::warn!(%error, "Failed to release the leader Lease"),
        }
    }
}

/// A process identity unique per process: the pod name in a cluster, else the host name, with
/// a random suffix either way so that a restarted pod is a new candidate.
pub fn identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|name| name.trim().to_owned())
        })
        .unwrap_or_else(|| "storagegrant-controller".to_owned());
    let suffix: u32 = std::process::id() ^ (Timestamp::now().as_nanosecond() as u32);
    format!("{base}-{suffix:08x}")
}
