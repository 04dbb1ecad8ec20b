//! The control plane of a test run: started once per test process by
//! `e2e/controlplane/cluster.sh`, or an existing one named by `STORAGEGRANT_E2E_CLUSTER_DIR`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// A running control plane and the files that describe it.
#[derive(Debug)]
pub struct ControlPlane {
    /// The directory with the cluster's state, logs and `cluster.env`.
    pub dir: PathBuf,
    /// The admin kubeconfig (user `admin` in `system:masters`).
    pub kubeconfig: PathBuf,
    /// The audit log of write requests, one JSON event per line.
    pub audit_log: PathBuf,
    pub apiserver_url: String,
}

static CONTROL_PLANE: OnceLock<ControlPlane> = OnceLock::new();

/// The workspace root, where `e2e/` and `config/` are.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

/// The control plane of this test process, started on first use. It stops when the process
/// exits (the script's watchdog watches this process), unless it was attached to.
pub fn control_plane() -> &'static ControlPlane {
    CONTROL_PLANE.get_or_init(|| {
        let dir = match std::env::var_os("STORAGEGRANT_E2E_CLUSTER_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => start(),
        };
        ControlPlane::from_dir(&dir)
    })
}

fn start() -> PathBuf {
    // The time makes the name unique even when a process id is reused.
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let dir =
        std::env::temp_dir().join(format!("storagegrant-e2e-{}-{started}", std::process::id()));
    let script = workspace_root().join("e2e/controlplane/cluster.sh");
    // A start on a busy 2-core machine occasionally fails (seen once: kube-apiserver stopped
    // answering while the controller-manager waited for it), so a failed start is retried once
    // in a fresh state; cluster.sh removes what a failed start left behind.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let status = Command::new("bash")
            .arg(&script)
            .arg("up")
            .arg(&dir)
            .env(
                "STORAGEGRANT_CLUSTER_OWNER_PID",
                std::process::id().to_string(),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .status()
            .expect("failed to run e2e/controlplane/cluster.sh");
        if status.success() {
            break;
        }
        assert!(
            attempts < 2,
            "cluster.sh up {} failed twice, last with {status}",
            dir.display()
        );
        eprintln!(
            "cluster.sh up {} failed with {status}; retrying once",
            dir.display()
        );
    }
    dir
}

impl ControlPlane {
    fn from_dir(dir: &Path) -> Self {
        let env_file = dir.join("cluster.env");
        let text = std::fs::read_to_string(&env_file)
            .unwrap_or_else(|error| panic!("failed to read {}: {error}", env_file.display()));
        let values: HashMap<String, String> = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| {
                (
                    key.trim().to_owned(),
                    value.trim().trim_matches(['"', '\'']).to_owned(),
                )
            })
            .collect();
        let value = |key: &str| {
            values
                .get(key)
                .cloned()
                .unwrap_or_else(|| panic!("{} has no {key}", env_file.display()))
        };
        Self {
            dir: dir.to_path_buf(),
            kubeconfig: PathBuf::from(value("KUBECONFIG")),
            audit_log: PathBuf::from(value("AUDIT_LOG")),
            apiserver_url: value("APISERVER_URL"),
        }
    }

    /// The client configuration of the admin user.
    pub async fn admin_config(&self) -> Config {
        let kubeconfig =
            Kubeconfig::read_from(&self.kubeconfig).expect("the admin kubeconfig parses");
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("the admin kubeconfig is usable")
    }

    /// A client of the admin user.
    pub async fn admin(&self) -> Client {
        Client::try_from(self.admin_config().await).expect("a client from the admin kubeconfig")
    }
}
