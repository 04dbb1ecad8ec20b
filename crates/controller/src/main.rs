//! `storagegrant-controller`: prints the CRD, or runs the controller.
#![forbid(unsafe_code)]

mod cli;
mod http;
mod leader;
mod metrics;
mod reconcile;
mod run;
mod telemetry;
mod watch;
mod webhook;

use clap::Parser;
use kube::CustomResourceExt;
use storagegrant_api::StorageGrant;

use crate::cli::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", serde_yaml::to_string(&StorageGrant::crd())?);
            Ok(())
        }
        Command::Run(args) => {
            telemetry::init(args.log_format);
            run::run(args).await
        }
    }
}
