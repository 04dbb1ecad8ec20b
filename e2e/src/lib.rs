//! Test support for a real kube-apiserver on loopback: starts (or attaches to) the local
//! control plane, installs CRDs, creates a namespace per test, mints identities and runs the
//! controller binary as a ServiceAccount.
#![forbid(unsafe_code)]

pub mod audit;
pub mod cluster;
pub mod controller;
pub mod fixtures;
pub mod identity;
pub mod objects;

pub use cluster::{ControlPlane, control_plane};

/// Polls `check` every 200 ms until it returns `Some`, or fails after `timeout` with the last
/// state `describe` gives, so that a failed wait says what it saw.
pub async fn eventually<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(state) => state,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last state: {last}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
