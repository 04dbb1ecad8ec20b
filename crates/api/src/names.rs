//! Names, labels and annotations that a grant derives from its own name.
//!
//! Kubernetes bounds each kind of name differently (field managers 128 bytes, label values
//! 63, volume names 63, object names 253), so a long grant name is shortened to a prefix plus
//! a hash of the whole name: two grants never share a derived name.

use sha2::{Digest, Sha256};

/// The API group; also the prefix of the field manager and of labels.
pub const GROUP: &str = "storagegrant.dev";

/// Label on every object the controller keeps, whose value is the grant's name (shortened).
pub const GRANT_LABEL: &str = "storagegrant.dev/grant";

/// Label by which a user lets a grant adopt an existing ServiceAccount.
pub const ADOPT_LABEL: &str = "storagegrant.dev/adopt";

/// Finalizer that lets the grant release its fields before it is deleted.
pub const FINALIZER: &str = "storagegrant.dev/release";

/// Annotation the admission webhook leaves on a Backup or Restore when grants disagree about
/// its fields: JSON with the grants and the fields.
pub const CONTESTED_ANNOTATION: &str = "storagegrant.dev/contested";

/// Directory under which GCP key files are mounted, one sub-directory per grant.
pub const GCP_MOUNT_ROOT: &str = "/var/run/secrets/storagegrant";

const FIELD_MANAGER_MAX: usize = 128;
const LABEL_VALUE_MAX: usize = 63;
const OBJECT_NAME_MAX: usize = 253;
const HASH_LEN: usize = 10;

/// The field manager of every write this grant makes.
pub fn field_manager(grant: &str) -> String {
    let prefix = format!("{GROUP}/");
    format!(
        "{prefix}{}",
        bounded(grant, FIELD_MANAGER_MAX - prefix.len())
    )
}

/// The name of the Secret the controller keeps for this grant.
pub fn kept_secret(grant: &str) -> String {
    const SUFFIX: &str = "-storagegrant";
    format!("{}{SUFFIX}", bounded(grant, OBJECT_NAME_MAX - SUFFIX.len()))
}

/// The value of [`GRANT_LABEL`] for this grant.
pub fn grant_label_value(grant: &str) -> String {
    bounded(grant, LABEL_VALUE_MAX)
}

/// The pod volume name of the GCP key: a DNS-1123 label, so a dot of the grant's name becomes
/// a dash (the hash of a shortened name keeps two grants apart). It never starts with `ti-`,
/// the operator's prefix.
pub fn gcp_volume(grant: &str) -> String {
    const PREFIX: &str = "storagegrant-";
    let name = bounded(grant, LABEL_VALUE_MAX - PREFIX.len()).replace('.', "-");
    format!("{PREFIX}{name}")
}

/// The directory where the GCP key of this grant is mounted.
pub fn gcp_mount_dir(grant: &str) -> String {
    format!("{GCP_MOUNT_ROOT}/{grant}")
}

/// Returns `name` when it fits in `max` bytes, otherwise a prefix of it, a dash and a hash.
fn bounded(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_owned();
    }
    let digest = Sha256::digest(name.as_bytes());
    let hash: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    let keep = max - HASH_LEN - 1;
    // Object names are ASCII, so cutting at a byte index is a character boundary; a trailing
    // '-' or '.' of the prefix is dropped so the result stays a valid DNS-1123 name.
    let prefix = name[..keep].trim_end_matches(['-', '.']);
    format!("{prefix}-{}", &hash[..HASH_LEN])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_kept() {
        assert_eq!(field_manager("backup-s3"), "storagegrant.dev/backup-s3");
        assert_eq!(kept_secret("backup-s3"), "backup-s3-storagegrant");
        assert_eq!(gcp_volume("gcs"), "storagegrant-gcs");
    }

    #[test]
    fn long_names_fit_their_limits() {
        let grant = "a".repeat(253);
        assert!(field_manager(&grant).len() <= FIELD_MANAGER_MAX);
        assert!(kept_secret(&grant).len() <= OBJECT_NAME_MAX);
        assert!(grant_label_value(&grant).len() <= LABEL_VALUE_MAX);
        assert!(gcp_volume(&grant).len() <= LABEL_VALUE_MAX);
    }

    #[test]
    fn long_names_stay_distinct() {
        let first = format!("{}-one", "a".repeat(200));
        let second = format!("{}-two", "a".repeat(200));
        assert_ne!(grant_label_value(&first), grant_label_value(&second));
        assert_ne!(field_manager(&first), field_manager(&second));
    }

    #[test]
    fn shortened_names_drop_trailing_separator() {
        // The cut falls right after the dot, which must not stay before the hash's dash.
        let grant = format!("{}.{}", "a".repeat(51), "b".repeat(40));
        let value = grant_label_value(&grant);
        assert!(!value.contains(".-"), "{value}");
        assert!(value.starts_with(&"a".repeat(51)), "{value}");
    }

    #[test]
    fn gcp_volume_is_dns_label() {
        assert_eq!(gcp_volume("gcs.prod"), "storagegrant-gcs-prod");
    }
}
