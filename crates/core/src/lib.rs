//! Decides what a StorageGrant writes and what its status says, from observed objects only.
//!
//! Nothing here talks to the API server: the controller observes, calls into this crate, and
//! performs the writes it returns. That keeps the rules testable in memory.
#![forbid(unsafe_code)]

pub mod credentials;
pub mod desired;
pub mod fieldset;
pub mod kept;
pub mod ownership;
pub mod selection;
pub mod status;
pub mod target;
