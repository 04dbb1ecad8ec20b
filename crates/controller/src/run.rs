//! Wires the watches, the reconcilers and the HTTP server together.

use std::sync::Arc;

use anyhow::Context as _;
use futures::StreamExt;
use futures::channel::mpsc;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use prometheus_client::registry::Registry;
use storagegrant_api::StorageGrant;

use crate::cli::RunArgs;
use crate::leader::{self, Elector, Leadership};
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
    let lease_namespace = args
        .leader_election_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let elector = args.leader_elect.then(|| {
        Arc::new(Elector::new(
            client.clone(),
            &lease_namespace,
            leader::identity(),
        ))
    });
    let leadership = match &elector {
        Some(elector) => {
            let (running, stores, triggers, gauge) = (
                elector.clone(),
                stores.clone(),
                triggers.clone(),
                metrics.leader.clone(),
            );
            tokio::spawn(async move {
                running
                    .run(|leading| {
                        gauge.set(i64::from(leading));
                        // A new leader reconciles every grant, since a standby skipped them.
                        if leading {
                            for grant in stores.grants.iter().flat_map(|store| store.state()) {
                                triggers.send(ObjectRef::from_obj(&*grant));
                            }
                        }
                    })
                    .await
            });
            elector.leadership()
        }
        None => {
            metrics.leader.set(1);
            Leadership::always()
        }
    };
    core_watches.start(stores.clone(), triggers.clone());
    watch::watch_target_kinds(
        client.clone(),
        scope.clone(),
        stores.clone(),
        triggers,
        readiness.clone(),
    );

    tokio::spawn(crate::http::serve(
        listener,
        Arc::new(registry),
        readiness.clone(),
    ));

    let webhook_enabled = start_webhook(
        &args,
        &client,
        &scope,
        &stores,
        &metrics,
        &readiness,
        &leadership,
    )
    .await?;

    let reporter = Reporter {
        controller: "storagegrant-controller".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let mut context = Context::new(client, stores, metrics, recorder);
    context.webhook_enabled = webhook_enabled;
    context.leadership = leadership;
    context.readiness = Some(readiness.clone());
    let context = Arc::new(context);
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
    // In-flight reconciles have finished; a standby may take over at once.
    if let Some(elector) = elector {
        elector.release().await;
    }
    tracing::info!("Stopped");
    Ok(())
}

/// Starts the admission webhook when the controller runs in a cluster or `--webhook-url`
/// names where the API server reaches it; returns whether it started.
async fn start_webhook(
    args: &RunArgs,
    client: &Client,
    scope: &Scope,
    stores: &Arc<Stores>,
    metrics: &Metrics,
    readiness: &Readiness,
    leadership: &Leadership,
) -> anyhow::Result<bool> {
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let namespace = args
        .leader_election_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let hosts = match &args.webhook_url {
        Some(url) => {
            let url: http::Uri = url
                .parse()
                .with_context(|| format!("--webhook-url {url:?} is not a URL"))?;
            let host = url.host().context("--webhook-url has no host")?;
            vec![
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
            ]
        }
        None if in_cluster => {
            let service = crate::webhook::keeper::WEBHOOK_NAME;
            vec![
                format!("{service}.{namespace}.svc"),
                format!("{service}.{namespace}.svc.cluster.local"),
            ]
        }
        None => {
            tracing::info!("Not in a cluster and no --webhook-url: the admission webhook is off");
            return Ok(false);
        }
    };
    let listener = crate::webhook::server::bind(args.webhook_bind_address)
        .await
        .with_context(|| format!("failed to listen on {}", args.webhook_bind_address))?;
    let current = Arc::new(crate::webhook::certs::CurrentCert::default());
    tokio::spawn(crate::webhook::server::serve(
        listener,
        current.clone(),
        stores.clone(),
        metrics.clone(),
    ));

    const CERTIFICATE: &str = "webhook certificate";
    readiness.wait_for(CERTIFICATE);
    let (watched, ready) = (current.clone(), readiness.clone());
    tokio::spawn(async move {
        while !watched.is_loaded() {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        ready.done(CERTIFICATE);
    });
    let keeper = crate::webhook::keeper::Keeper {
        client: client.clone(),
        namespace,
        hosts,
        leaf_lifetime: args.webhook_cert_lifetime,
        current,
        stores: stores.clone(),
        scope: scope.clone(),
        leadership: leadership.clone(),
        external: args.webhook_cert_source == crate::cli::CertSource::External,
        readiness: readiness.clone(),
    };
    // Every 5 s at most, so that a new grant's namespace gets the webhook label promptly; a
    // check only reads unless something must change.
    let interval = (args.webhook_cert_lifetime / 10).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(5),
    );
    tracing::info!(address = %args.webhook_bind_address, "Serving the admission webhook");
    tokio::spawn(keeper.run(interval));
    Ok(true)
}
