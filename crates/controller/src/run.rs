//! Wires the watches, the reconcilers and the HTTP server together.

use std::sync::Arc;

use anyhow::Context as _;
use futures::StreamExt;
use futures::channel::mpsc;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use prometheus_client::registry::Registry;
use storagegrant_api::StorageGrant;

use crate::cli::RunArgs;
use crate::metrics::Metrics;
use crate::reconcile::{self, Context};
use crate::watch::{self, CoreWatches, Readiness, Scope, Stores, Triggers};

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("failed to load a kubeconfig or the in-cluster configuration")?;
    let scope: Scope = if args.namespaces.is_empty() {
        vec![None]
    } else {
        args.namespaces.iter().cloned().map(Some).collect()
    };
    // NOTE: leader election and the admission webhook are not implemented yet, so
    // --leader-elect, --leader-election-namespace and the webhook flags have no effect; run a
    // single replica.
    if args.leader_elect {
        tracing::warn!("Leader election is not implemented in this version; run a single replica");
    }
    tracing::info!(namespaces = ?args.namespaces, metrics = %args.metrics_bind_address, "Starting storagegrant-controller");

    // Bind first, so that a taken port fails the start before any watch begins.
    let listener = crate::http::bind(args.metrics_bind_address)
        .await
        .with_context(|| format!("failed to listen on {}", args.metrics_bind_address))?;
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let readiness = Readiness::default();

    let mut controllers = Vec::new();
    let mut grant_stores = Vec::new();
    let mut senders = Vec::new();
    for namespace in &scope {
        let api: Api<StorageGrant> = watch::api_in(&client, namespace);
        let (sender, receiver) = mpsc::unbounded();
        let controller = Controller::new(api, watcher::Config::default())
            .reconcile_on(receiver)
            .shutdown_on_signal();
        let where_ = namespace.as_deref().unwrap_or("all namespaces");
        readiness.track(format!("StorageGrants in {where_}"), controller.store());
        grant_stores.push(controller.store());
        senders.push((namespace.clone(), sender));
        controllers.push(controller);
    }

    let core_watches = CoreWatches::new(&client, &scope, &readiness);
    let stores = Arc::new(Stores::new(grant_stores, &core_watches));
    let triggers = Triggers::new(senders);
    core_watches.start(stores.clone(), triggers.clone());
    watch::watch_target_kinds(
        client.clone(),
        scope.clone(),
        stores.clone(),
        triggers,
        readiness.clone(),
    );

    tokio::spawn(crate::http::serve(listener, Arc::new(registry), readiness));

    let reporter = Reporter {
        controller: "storagegrant-controller".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let context = Arc::new(Context::new(client, stores, metrics, recorder));
    let runs = controllers.into_iter().map(|controller| {
        controller
            .run(
                reconcile::reconcile,
                reconcile::error_policy,
                context.clone(),
            )
            .for_each(|result| async move {
                if let Err(error) = result {
                    tracing::debug!(%error, "Reconcile ended with an error");
                }
            })
    });
    futures::future::join_all(runs).await;
    tracing::info!("Stopped");
    Ok(())
}
