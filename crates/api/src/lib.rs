//! The `StorageGrant` custom resource, its status, and the names it derives.
#![forbid(unsafe_code)]

mod grant;
pub mod names;
mod status;
mod target;

pub use grant::{
    DriftPolicy, MatchLabels, Method, Provider, SecretKeys, SecretRef, SelectorRequirement,
    StorageGrant, StorageGrantSpec, TargetKind, TargetRef, TargetSelector,
};
pub use status::{
    Condition, ConditionStatus, StorageGrantStatus, TargetState, TargetStatus, TargetSummary,
};
