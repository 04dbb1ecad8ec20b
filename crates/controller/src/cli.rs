//! Command-line interface.

use std::net::SocketAddr;

use clap::{ArgAction, Parser, Subcommand, ValueEnum};

/// Grants TiDB clusters access to backup storage and keeps that access correct.
#[derive(Parser, Debug)]
#[command(name = "storagegrant-controller", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the StorageGrant CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller against the cluster of the current kubeconfig or service account.
    Run(RunArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_bind_address: SocketAddr,

    /// Address of the admission webhook server.
    #[arg(long, default_value = "0.0.0.0:9443")]
    pub webhook_bind_address: SocketAddr,

    /// Base URL the API server calls for admission instead of the in-cluster Service.
    #[arg(long)]
    pub webhook_url: Option<String>,

    /// Watch and write only these namespaces (comma-separated); all namespaces when absent.
    #[arg(long, value_delimiter = ',')]
    pub namespaces: Vec<String>,

    /// Take the Lease `storagegrant-controller` before writing.
    #[arg(long, action = ArgAction::Set, default_value_t = true)]
    pub leader_elect: bool,

    /// Namespace of the leader election Lease; defaults to the pod's namespace in a cluster,
    /// else the kubeconfig's namespace, else `default`.
    #[arg(long)]
    pub leader_election_namespace: Option<String>,

    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}
