//! Runs `storagegrant-controller` for a test as the ServiceAccount of the shipped install,
//! bound only by the shipped RBAC in `config/rbac`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use kube::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ControlPlane;
use crate::cluster::workspace_root;
use crate::identity::{service_account_token, write_token_kubeconfig};
use crate::objects::{apply, read_documents};

pub const CONTROLLER_NAMESPACE: &str = "storagegrant-system";
pub const CONTROLLER_ACCOUNT: &str = "storagegrant-controller";

/// The user name the API server records for the controller's requests.
pub fn controller_username() -> String {
    format!("system:serviceaccount:{CONTROLLER_NAMESPACE}:{CONTROLLER_ACCOUNT}")
}

/// A controller process, stopped when dropped.
pub struct RunningController {
    child: Child,
    pub metrics_address: String,
    /// The controller's log (JSON lines); tests scan it.
    pub log_path: PathBuf,
}

impl Drop for RunningController {
    fn drop(&mut self) {
        self.stop();
    }
}

static BINARY: OnceLock<PathBuf> = OnceLock::new();

/// Builds the controller binary once per test process and returns its path.
pub fn controller_binary() -> &'static Path {
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("STORAGEGRANT_CONTROLLER_BIN") {
            return PathBuf::from(path);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "storagegrant-controller",
                "--bin",
                "storagegrant-controller",
            ])
            .current_dir(workspace_root())
            .status()
            .expect("failed to run cargo build");
        assert!(status.success(), "building storagegrant-controller failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        target.join("debug/storagegrant-controller")
    })
}

/// Applies the shipped RBAC (the controller's, its webhook's and its leader election's) and
/// the ServiceAccount.
pub async fn install_rbac(admin: &Client) {
    let namespace = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CONTROLLER_NAMESPACE}});
    apply(admin, None, namespace).await;
    let files = [
        "rbac/service_account.yaml",
        "rbac/role.yaml",
        "rbac/role_binding.yaml",
        "webhook/role.yaml",
        "webhook/role_binding.yaml",
        "manager/leader_election_role.yaml",
        "manager/leader_election_role_binding.yaml",
    ];
    for file in files {
        for document in read_documents(&workspace_root().join("config").join(file)) {
            apply(admin, Some(CONTROLLER_NAMESPACE), document).await;
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("an address")
        .port()
}

/// Starts a controller restricted to `namespaces` and waits until it reports ready.
pub async fn start(
    control_plane: &ControlPlane,
    admin: &Client,
    namespaces: &[&str],
    name: &str,
) -> RunningController {
    start_with(control_plane, admin, namespaces, name, &[]).await
}

/// Like [`start`], with extra arguments for `storagegrant-controller run`.
pub async fn start_with(
    control_plane: &ControlPlane,
    admin: &Client,
    namespaces: &[&str],
    name: &str,
    extra: &[String],
) -> RunningController {
    install_rbac(admin).await;
    launch(control_plane, admin, namespaces, name, extra).await
}

/// Starts a controller as the shipped ServiceAccount with whatever RBAC is installed.
pub async fn launch(
    control_plane: &ControlPlane,
    admin: &Client,
    namespaces: &[&str],
    name: &str,
    extra: &[String],
) -> RunningController {
    let token = service_account_token(admin, CONTROLLER_NAMESPACE, CONTROLLER_ACCOUNT).await;
    let logs = workspace_root().join("target/e2e-logs");
    std::fs::create_dir_all(&logs).expect("log directory");
    let kubeconfig = logs.join(format!("{name}.kubeconfig"));
    write_token_kubeconfig(control_plane, &token, &kubeconfig);
    let log_path = logs.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).expect("log file");

    let metrics_address = format!("127.0.0.1:{}", free_port());
    let child = Command::new(controller_binary())
        .args(["run", "--log-format=json"])
        .args(
            (!extra.iter().any(|arg| arg.starts_with("--leader-elect=")))
                .then_some("--leader-elect=false"),
        )
        .arg(format!("--namespaces={}", namespaces.join(",")))
        .arg(format!("--metrics-bind-address={metrics_address}"))
        .args(extra)
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info,storagegrant_controller=debug")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file handle"))
        .stderr(log)
        .spawn()
        .expect("failed to start storagegrant-controller");
    let controller = RunningController {
        child,
        metrics_address,
        log_path,
    };
    let mut controller = controller;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(exit)) = controller.child.try_wait() {
            panic!(
                "storagegrant-controller exited with {exit}: {}",
                controller.log()
            );
        }
        let last = match http_get(&controller.metrics_address, "/readyz").await {
            Ok((200, _)) => break,
            Ok((code, body)) => format!("{code} {body}"),
            Err(error) => error.to_string(),
        };
        assert!(
            std::time::Instant::now() < deadline,
            "the controller did not report ready in 60 s: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    controller
}

impl RunningController {
    /// Sends SIGTERM and waits for the process to exit, as the kubelet does to a pod.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    /// Stops the controller process; a stopped one stays stopped.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        http_get(&self.metrics_address, "/metrics")
            .await
            .expect("metrics served")
            .1
    }

    /// The controller's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// A minimal HTTP/1.0 GET on loopback; returns the status code and body.
pub async fn http_get(address: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}
