//! Watch caches of everything a grant depends on, and the mapping from a change in any of them
//! to the grants that must be reconciled again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::Value;
use storagegrant_api::{StorageGrant, TargetKind, names};
use storagegrant_core::selection::grant_selects;

/// The namespaces the controller watches and writes; `None` stands for all of them.
pub type Scope = Vec<Option<String>>;

/// An `Api` for one entry of the scope.
pub fn api_in<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// The names of watch caches that have not finished their first list; `/readyz` waits for them.
#[derive(Clone, Default)]
pub struct Readiness(Arc<Mutex<BTreeSet<String>>>);

impl Readiness {
    /// Marks `name` pending until `store` has synced.
    pub fn track<K>(&self, name: String, store: Store<K>)
    where
        K: reflector::Lookup + Clone + Send + Sync + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
    {
        self.0.lock().expect("readiness lock").insert(name.clone());
        let pending = self.0.clone();
        tokio::spawn(async move {
            // The store's readiness wakes only its latest waiter, and the controller waits on
            // the grant store too, so poll again each second instead of waiting once.
            loop {
                match tokio::time::timeout(Duration::from_secs(1), store.wait_until_ready()).await {
                    Ok(Ok(())) => break,
                    Ok(Err(_)) => return,
                    Err(_) => continue,
                }
            }
            pending.lock().expect("readiness lock").remove(&name);
            tracing::debug!(cache = %name, "Watch cache synced");
        });
    }

    /// Marks `name` pending until [`Readiness::done`] is called with it.
    pub fn wait_for(&self, name: &str) {
        self.0
            .lock()
            .expect("readiness lock")
            .insert(name.to_owned());
    }

    pub fn done(&self, name: &str) {
        self.0.lock().expect("readiness lock").remove(name);
    }

    /// Lists the pending watch caches, leaving out other readiness items such as the webhook's
    /// certificate.
    pub fn pending_caches(&self) -> Vec<String> {
        self.pending()
            .into_iter()
            .filter(|name| !name.starts_with("webhook"))
            .collect()
    }

    pub fn pending(&self) -> Vec<String> {
        self.0
            .lock()
            .expect("readiness lock")
            .iter()
            .cloned()
            .collect()
    }
}

/// The channel into the controller of one namespace (`None`: all namespaces).
pub type Trigger = (Option<String>, UnboundedSender<ObjectRef<StorageGrant>>);

/// Sends grants to the controller that serves their namespace.
#[derive(Clone, Default)]
pub struct Triggers(Arc<Vec<Trigger>>);

impl Triggers {
    pub fn new(senders: Vec<Trigger>) -> Self {
        Self(Arc::new(senders))
    }

    pub fn send(&self, grant: ObjectRef<StorageGrant>) {
        let sender = self
            .0
            .iter()
            .find(|(namespace, _)| namespace.is_none() || *namespace == grant.namespace);
        if let Some((_, sender)) = sender {
            // A closed channel means the controller is shutting down; nothing to do then.
            let _ = sender.unbounded_send(grant);
        }
    }
}

/// Read handles of every watch cache.
pub struct Stores {
    pub grants: Vec<Store<StorageGrant>>,
    /// Metadata of every Secret in scope: source Secrets and name clashes with kept ones.
    pub secrets: Vec<Store<PartialObjectMeta<Secret>>>,
    /// The Secrets the controller keeps, selected by label, with their data.
    pub kept: Vec<Store<Secret>>,
    /// Metadata of every ServiceAccount in scope: IRSA accounts created or adopted.
    pub accounts: Vec<Store<PartialObjectMeta<ServiceAccount>>>,
    targets: RwLock<HashMap<TargetKind, Vec<Store<DynamicObject>>>>,
}

impl Stores {
    pub fn new(grants: Vec<Store<StorageGrant>>, watches: &CoreWatches) -> Self {
        Self {
            grants,
            secrets: watches.secrets.clone(),
            kept: watches.kept.clone(),
            accounts: watches.accounts.clone(),
            targets: RwLock::default(),
        }
    }

    pub fn grants_in(&self, namespace: &str) -> Vec<Arc<StorageGrant>> {
        self.grants
            .iter()
            .flat_map(|store| store.state())
            .filter(|grant| grant.namespace().as_deref() == Some(namespace))
            .collect()
    }

    /// Tells whether the kind's CRD is established and its objects are being watched.
    pub fn is_watched(&self, kind: TargetKind) -> bool {
        self.targets
            .read()
            .expect("target stores lock")
            .contains_key(&kind)
    }

    pub fn targets_in(&self, kind: TargetKind, namespace: &str) -> Vec<Arc<DynamicObject>> {
        let stores = self.targets.read().expect("target stores lock");
        stores
            .get(&kind)
            .into_iter()
            .flatten()
            .flat_map(|store| store.state())
            .filter(|object| object.namespace().as_deref() == Some(namespace))
            .collect()
    }

    pub fn secret_metadata(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<PartialObjectMeta<Secret>>> {
        let key = ObjectRef::new(name).within(namespace);
        self.secrets.iter().find_map(|store| store.get(&key))
    }

    pub fn kept_secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        let key = ObjectRef::new(name).within(namespace);
        self.kept.iter().find_map(|store| store.get(&key))
    }

    pub fn account_metadata(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<PartialObjectMeta<ServiceAccount>>> {
        let key = ObjectRef::new(name).within(namespace);
        self.accounts.iter().find_map(|store| store.get(&key))
    }

    pub fn accounts_in(&self, namespace: &str) -> Vec<Arc<PartialObjectMeta<ServiceAccount>>> {
        self.accounts
            .iter()
            .flat_map(|store| store.state())
            .filter(|account| account.namespace().as_deref() == Some(namespace))
            .collect()
    }

    /// Whether the groups BR relies on for a job of `kind` (TiKV, and TiFlash for a Restore)
    /// of `cluster` all carry the grant's identity; false when the cluster has no TiKVGroup
    /// in the cache.
    pub fn cluster_has_identity(
        &self,
        grant: &StorageGrant,
        kind: TargetKind,
        namespace: &str,
        cluster: &str,
    ) -> bool {
        let mut kinds = vec![TargetKind::TiKvGroup];
        if kind == TargetKind::Restore {
            kinds.push(TargetKind::TiFlashGroup);
        }
        let mut found_tikv = false;
        for group_kind in kinds {
            for group in self.targets_in(group_kind, namespace) {
                let body = serde_json::to_value(&*group).unwrap_or(Value::Null);
                if body.pointer("/spec/cluster/name").and_then(Value::as_str) != Some(cluster) {
                    continue;
                }
                found_tikv |= group_kind == TargetKind::TiKvGroup;
                if !storagegrant_core::target::group_carries_identity(grant, group_kind, &body) {
                    return false;
                }
            }
        }
        found_tikv
    }

    fn add_targets(&self, kind: TargetKind, stores: Vec<Store<DynamicObject>>) {
        self.targets
            .write()
            .expect("target stores lock")
            .insert(kind, stores);
    }
}

/// The `ApiResource` of a target kind, for dynamic access.
pub fn api_resource(kind: TargetKind) -> ApiResource {
    let gvk = GroupVersionKind::gvk(kind.group(), kind.version(), kind.as_str());
    ApiResource::from_gvk_with_plural(&gvk, kind.plural())
}

/// The grants to reconcile when a target changes: those that select it now, and those whose
/// status lists it (so a target leaving a grant's scope is noticed).
fn grants_for_target(
    stores: &Stores,
    kind: TargetKind,
    object: &DynamicObject,
) -> Vec<ObjectRef<StorageGrant>> {
    let Some(namespace) = object.namespace() else {
        return Vec::new();
    };
    let name = object.name_any();
    let labels: BTreeMap<String, String> = object.labels().clone();
    let body = serde_json::to_value(object).unwrap_or(Value::Null);
    stores
        .grants_in(&namespace)
        .into_iter()
        .filter(|grant| {
            let listed = grant
                .status
                .as_ref()
                .and_then(|status| status.targets.as_ref())
                .is_some_and(|targets| {
                    targets
                        .iter()
                        .any(|target| target.kind == kind && target.name == name)
                });
            listed || grant_selects(grant, kind, &name, &labels, &body)
        })
        .map(|grant| ObjectRef::from_obj(&*grant))
        .collect()
}

/// The grants to reconcile when a ServiceAccount changes: those that name it, and those
/// that manage fields on it.
fn grants_for_account(
    stores: &Stores,
    account: &PartialObjectMeta<ServiceAccount>,
) -> Vec<ObjectRef<StorageGrant>> {
    let namespace = account.namespace().unwrap_or_default();
    let name = account.name_any();
    let managers: Vec<&str> = account
        .managed_fields()
        .iter()
        .filter_map(|entry| entry.manager.as_deref())
        .collect();
    stores
        .grants_in(&namespace)
        .into_iter()
        .filter(|grant| {
            grant.spec.service_account_name.as_deref() == Some(name.as_str())
                || managers.contains(&names::field_manager(&grant.name_any()).as_str())
        })
        .map(|grant| ObjectRef::from_obj(&*grant))
        .collect()
}

/// The grants to reconcile when a Secret changes: those that read it or keep it.
fn grants_for_secret(stores: &Stores, namespace: &str, name: &str) -> Vec<ObjectRef<StorageGrant>> {
    stores
        .grants_in(namespace)
        .into_iter()
        .filter(|grant| {
            let reads = grant
                .spec
                .secret_ref
                .as_ref()
                .is_some_and(|secret_ref| secret_ref.name == name);
            reads || names::kept_secret(&grant.name_any()) == name
        })
        .map(|grant| ObjectRef::from_obj(&*grant))
        .collect()
}

/// Drains a watch stream, logging its errors; watchers retry by themselves with backoff.
async fn drain<S, T>(stream: S, what: &'static str, mut on_object: impl FnMut(T))
where
    S: Stream<Item = Result<T, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(object) => on_object(object),
            Err(error) => tracing::warn!(%error, watch = what, "Watch failed; retrying"),
        }
    }
}

/// A watch built but not started, waiting for the shared stores.
type PendingWatch = Box<dyn FnOnce(Arc<Stores>, Triggers) + Send>;

/// Watch caches of core objects (Secrets, ServiceAccounts) and their writers, created before
/// the stores are shared.
pub struct CoreWatches {
    pending: Vec<PendingWatch>,
    pub secrets: Vec<Store<PartialObjectMeta<Secret>>>,
    pub kept: Vec<Store<Secret>>,
    pub accounts: Vec<Store<PartialObjectMeta<ServiceAccount>>>,
}

impl CoreWatches {
    pub fn new(client: &Client, scope: &Scope, readiness: &Readiness) -> Self {
        let mut watches = Self {
            pending: Vec::new(),
            secrets: Vec::new(),
            kept: Vec::new(),
            accounts: Vec::new(),
        };
        for namespace in scope {
            let where_ = namespace.as_deref().unwrap_or("all namespaces").to_owned();

            let (store, writer) = reflector::store();
            readiness.track(format!("Secret metadata in {where_}"), store.clone());
            watches.secrets.push(store);
            let api: Api<PartialObjectMeta<Secret>> = match namespace {
                Some(namespace) => Api::namespaced(client.clone(), namespace),
                None => Api::all(client.clone()),
            };
            let stream = reflector::reflector(
                writer,
                watcher(api, watcher::Config::default()).default_backoff(),
            )
            .touched_objects();
            watches.pending.push(Box::new(move |stores, triggers| {
                tokio::spawn(drain(
                    stream,
                    "Secret metadata",
                    move |secret: PartialObjectMeta<Secret>| {
                        let namespace = secret.namespace().unwrap_or_default();
                        for grant in grants_for_secret(&stores, &namespace, &secret.name_any()) {
                            triggers.send(grant);
                        }
                    },
                ));
            }));

            let (store, writer) = reflector::store();
            readiness.track(format!("kept Secrets in {where_}"), store.clone());
            watches.kept.push(store);
            let api: Api<Secret> = api_in(client, namespace);
            let config = watcher::Config::default().labels(names::GRANT_LABEL);
            let stream = reflector::reflector(writer, watcher(api, config).default_backoff())
                .touched_objects();
            watches.pending.push(Box::new(move |stores, triggers| {
                tokio::spawn(drain(stream, "kept Secrets", move |secret: Secret| {
                    let namespace = secret.namespace().unwrap_or_default();
                    for grant in grants_for_secret(&stores, &namespace, &secret.name_any()) {
                        triggers.send(grant);
                    }
                }));
            }));

            let (store, writer) = reflector::store();
            readiness.track(
                format!("ServiceAccount metadata in {where_}"),
                store.clone(),
            );
            watches.accounts.push(store);
            let api: Api<PartialObjectMeta<ServiceAccount>> = match namespace {
                Some(namespace) => Api::namespaced(client.clone(), namespace),
                None => Api::all(client.clone()),
            };
            let stream = reflector::reflector(
                writer,
                watcher(api, watcher::Config::default()).default_backoff(),
            )
            .touched_objects();
            watches.pending.push(Box::new(move |stores, triggers| {
                tokio::spawn(drain(
                    stream,
                    "ServiceAccount metadata",
                    move |account: PartialObjectMeta<ServiceAccount>| {
                        for grant in grants_for_account(&stores, &account) {
                            triggers.send(grant);
                        }
                    },
                ));
            }));
        }
        watches
    }

    /// Starts the watches; events reach the grants through `triggers`.
    pub fn start(self, stores: Arc<Stores>, triggers: Triggers) {
        for start in self.pending {
            start(stores.clone(), triggers.clone());
        }
    }
}

/// Watches the CRD of each target kind and starts watching the kind's objects once the CRD
/// is Established.
pub fn watch_target_kinds(
    client: Client,
    scope: Scope,
    stores: Arc<Stores>,
    triggers: Triggers,
    readiness: Readiness,
) {
    for kind in TargetKind::ALL {
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        let config =
            watcher::Config::default().fields(&format!("metadata.name={}", kind.crd_name()));
        // A store only to learn when the first list is complete: until then, a kind that is
        // installed could read as not installed.
        let (store, writer) = reflector::store();
        readiness.track(format!("CRD {}", kind.crd_name()), store);
        let stream =
            reflector::reflector(writer, watcher(api, config).default_backoff()).applied_objects();
        let (client, scope, stores, triggers, readiness) = (
            client.clone(),
            scope.clone(),
            stores.clone(),
            triggers.clone(),
            readiness.clone(),
        );
        tokio::spawn(drain(
            stream,
            "CustomResourceDefinitions",
            move |crd: CustomResourceDefinition| {
                if stores.is_watched(kind) || !is_established(&crd) {
                    return;
                }
                tracing::info!(%kind, crd = %kind.crd_name(), "Target kind installed; watching it");
                start_target_watch(&client, &scope, kind, &stores, &triggers, &readiness);
                // Grants that reported the kind as not installed re-evaluate now.
                for grant in stores.grants.iter().flat_map(|store| store.state()) {
                    if grant.spec.targets.iter().any(|target| target.kind == kind) {
                        triggers.send(ObjectRef::from_obj(&*grant));
                    }
                }
            },
        ));
    }
}

fn is_established(crd: &CustomResourceDefinition) -> bool {
    let conditions = crd
        .status
        .as_ref()
        .and_then(|status| status.conditions.as_ref());
    conditions
        .into_iter()
        .flatten()
        .any(|condition| condition.type_ == "Established" && condition.status == "True")
}

// NOTE: a CRD deleted after it was established keeps its watch running; the watch retries
// with backoff and the grant keeps its last status until the CRD is back.
fn start_target_watch(
    client: &Client,
    scope: &Scope,
    kind: TargetKind,
    stores: &Arc<Stores>,
    triggers: &Triggers,
    readiness: &Readiness,
) {
    let resource = api_resource(kind);
    let mut kind_stores = Vec::new();
    for namespace in scope {
        let api: Api<DynamicObject> = match namespace {
            Some(namespace) => Api::namespaced_with(client.clone(), namespace, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let writer = reflector::store::Writer::new(resource.clone());
        let store = writer.as_reader();
        readiness.track(
            format!(
                "{kind} in {}",
                namespace.as_deref().unwrap_or("all namespaces")
            ),
            store.clone(),
        );
        kind_stores.push(store);
        let stream = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default()).default_backoff(),
        )
        .touched_objects();
        let (stores, triggers) = (stores.clone(), triggers.clone());
        tokio::spawn(drain(
            stream,
            kind.as_str(),
            move |object: DynamicObject| {
                for grant in grants_for_target(&stores, kind, &object) {
                    triggers.send(grant);
                }
            },
        ));
    }
    stores.add_targets(kind, kind_stores);
}
