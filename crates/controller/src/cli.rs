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

    /// Base URL the API server calls for admission instead of the in-cluster Service; the
    /// serving certificate is issued for its host. Starts the webhook outside a cluster.
    #[arg(long)]
    pub webhook_url: Option<String>,

    /// Lifetime of the webhook's serving certificate (s, m, h or d); it is renewed after two
    /// thirds of it.
    #[arg(long, default_value = "90d", value_parser = parse_cert_lifetime)]
    pub webhook_cert_lifetime: std::time::Duration,

    /// Who keeps the webhook's certificate Secret: the controller (a CA and a serving
    /// certificate it renews, and the caBundle it patches), or an external issuer such as
    /// cert-manager, whose Secret the controller only reads.
    #[arg(long, value_enum, default_value_t = CertSource::Controller)]
    pub webhook_cert_source: CertSource,

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
pub enum CertSource {
    Controller,
    External,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Parses a certificate lifetime: between 3 seconds (for tests of renewal) and 10 years.
fn parse_cert_lifetime(text: &str) -> Result<std::time::Duration, String> {
    let lifetime = parse_duration(text)?;
    let allowed =
        std::time::Duration::from_secs(3)..=std::time::Duration::from_secs(10 * 365 * 86_400);
    if allowed.contains(&lifetime) {
        Ok(lifetime)
    } else {
        Err(format!(
            "invalid certificate lifetime {text:?}: it must be between 3s and 3650d"
        ))
    }
}

/// Parses a duration such as `30s`, `10m`, `12h` or `90d`.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let split = text
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| {
        format!("invalid duration {text:?}: expected a number and a unit, such as 90d")
    })?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "invalid duration {text:?}: the unit must be s, m, h or d"
            ));
        }
    };
    let total = number
        .checked_mul(seconds)
        .ok_or_else(|| format!("invalid duration {text:?}: too long"))?;
    Ok(std::time::Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(
            parse_duration("30s"),
            Ok(std::time::Duration::from_secs(30))
        );
        assert_eq!(
            parse_duration("90d"),
            Ok(std::time::Duration::from_secs(90 * 86_400))
        );
        assert!(parse_duration("90").unwrap_err().contains("unit"));
        assert!(parse_duration("d").unwrap_err().contains("number"));
        assert!(
            parse_duration("999999999999999999d")
                .unwrap_err()
                .contains("too long")
        );
        assert!(parse_cert_lifetime("1s").is_err());
        assert!(parse_cert_lifetime("90d").is_ok());
    }
}
