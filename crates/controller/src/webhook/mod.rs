//! The admission webhook that writes a grant's fields into Backups and Restores as they are
//! created, and what keeps it reachable: certificates, `caBundle`, namespace labels.

mod admission;
pub mod certs;
pub mod keeper;
pub mod server;
