use crate::TargetKind;

impl TargetKind {
    pub const ALL: [TargetKind; 4] = [
        Self::TiKvGroup,
        Self::TiFlashGroup,
        Self::Backup,
        Self::Restore,
    ];

    /// The kind as written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TiKvGroup => "TiKVGroup",
            Self::TiFlashGroup => "TiFlashGroup",
            Self::Backup => "Backup",
            Self::Restore => "Restore",
        }
    }

    pub fn group(self) -> &'static str {
        match self {
            Self::TiKvGroup | Self::TiFlashGroup => "core.pingcap.com",
            Self::Backup | Self::Restore => "br.pingcap.com",
        }
    }

    pub fn version(self) -> &'static str {
        "v1alpha1"
    }

    pub fn plural(self) -> &'static str {
        match self {
            Self::TiKvGroup => "tikvgroups",
            Self::TiFlashGroup => "tiflashgroups",
            Self::Backup => "backups",
            Self::Restore => "restores",
        }
    }

    /// The name of the CustomResourceDefinition that serves the kind.
    pub fn crd_name(self) -> String {
        format!("{}.{}", self.plural(), self.group())
    }

    /// Whether the kind is a long-running group of pods (as opposed to a one-shot job).
    pub fn is_group(self) -> bool {
        matches!(self, Self::TiKvGroup | Self::TiFlashGroup)
    }

    /// The main container of the group's pods, the only one the grant writes to.
    pub fn main_container(self) -> Option<&'static str> {
        match self {
            Self::TiKvGroup => Some("tikv"),
            Self::TiFlashGroup => Some("tiflash"),
            Self::Backup | Self::Restore => None,
        }
    }

    /// The JSON path of the TiDB cluster name that a `cluster` target matches.
    pub fn cluster_path(self) -> [&'static str; 3] {
        match self {
            Self::TiKvGroup | Self::TiFlashGroup => ["spec", "cluster", "name"],
            Self::Backup | Self::Restore => ["spec", "br", "cluster"],
        }
    }

    /// Parses the kind of a manifest.
    pub fn from_kind(kind: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|candidate| candidate.as_str() == kind)
    }
}

impl std::fmt::Display for TargetKind {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}
