//! The Serving reconcilers, written once against
//! [`Objects`] and run by
//! [`knative_core::runtime::Controller`] (`specs/SERVING.md §1–§2`):
//!
//! - [`ServiceReconciler`]: Service → Configuration + Route of the same
//!   name, and the Service's status from theirs;
//! - [`ConfigurationReconciler`]: Configuration → a Revision per template
//!   generation, `latestCreatedRevisionName` / `latestReadyRevisionName`,
//!   revision garbage collection;
//! - [`RevisionReconciler`]: Revision → replicas on a
//!   [`WorkloadBackend`], and its
//!   conditions from what the backend reports;
//! - [`RouteReconciler`]: Route → resolved traffic, URLs, routing state of
//!   revisions, and its [`TrafficTable`](crate::traffic::TrafficTable) in the
//!   [`RoutingTable`].
//!
//! Desired state is computed by pure `desired_*` functions next to each
//! reconciler; the reconcilers only read, compare and write.

mod configuration;
pub mod gc;
mod revision;
mod route;
mod service;

use std::future::Future;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use knative_core::runtime::Controller;
use knative_core::store::{ApiObject, InMemoryStore, Objects, StoreError};
use tokio::sync::watch;

pub use configuration::{ConfigurationReconciler, desired_revision, revision_name};
pub use revision::{RevisionReconciler, desired_replicas, workload_spec};
pub use route::{RouteIndex, RouteReconciler};
pub use service::{ServiceReconciler, desired_configuration, desired_route};

use crate::api::{Configuration, Revision, Route, Service, keys};
use crate::autoscaling::autoscaler::{Autoscaler, PolicyFactory};
use crate::backend::{BackendError, WorkloadBackend};
use crate::config::ServingConfig;
use crate::dataplane::Dataplane;
use crate::dataplane::ingress::DataplaneConfig;
use crate::traffic::RoutingTable;

/// How soon to look again at a conflict only a user can resolve (a name
/// taken by another owner): nothing else re-queues the object.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Reading or writing objects failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The workload backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// An owner reference to `owner` that marks it as the controller.
pub fn controller_reference<K: ApiObject>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version_name(),
        kind: K::kind_name(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether `meta` is controlled by the object with uid `owner_uid`.
pub fn is_controlled_by(meta: &ObjectMeta, owner_uid: Option<&str>) -> bool {
    let Some(uid) = owner_uid else { return false };
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// Annotations a parent passes to its children: all but kubectl's record of
/// the last applied manifest.
fn propagated_annotations(meta: &ObjectMeta) -> Option<std::collections::BTreeMap<String, String>> {
    let annotations: std::collections::BTreeMap<String, String> = meta
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != keys::KUBECTL_LAST_APPLIED)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (!annotations.is_empty()).then_some(annotations)
}

/// The current time as Kubernetes writes it in annotations (RFC 3339, seconds).
fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map_or_else(|_| jiff::Timestamp::now().to_string(), |t| t.to_string())
}

/// The stores the Serving controllers read and write.
#[derive(Clone)]
pub struct ServingObjects {
    /// Services.
    pub services: Arc<dyn Objects<Service>>,
    /// Configurations.
    pub configurations: Arc<dyn Objects<Configuration>>,
    /// Revisions.
    pub revisions: Arc<dyn Objects<Revision>>,
    /// Routes.
    pub routes: Arc<dyn Objects<Route>>,
}

impl std::fmt::Debug for ServingObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingObjects").finish_non_exhaustive()
    }
}

impl ServingObjects {
    /// The four kinds' views of one in-memory store.
    pub fn in_memory(store: &InMemoryStore) -> Self {
        ServingObjects {
            services: Arc::new(store.objects::<Service>()),
            configurations: Arc::new(store.objects::<Configuration>()),
            revisions: Arc::new(store.objects::<Revision>()),
            routes: Arc::new(store.objects::<Route>()),
        }
    }
}

/// The four Serving controllers, wired together over one set of stores and
/// a workload backend, with the autoscaler that scales revisions and the
/// data plane that serves their routes.
pub struct Serving {
    objects: ServingObjects,
    backend: Arc<dyn WorkloadBackend>,
    config: Arc<ServingConfig>,
    routing: RoutingTable,
    autoscaler: Autoscaler,
    dataplane: std::sync::OnceLock<Dataplane>,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving").finish_non_exhaustive()
    }
}

impl Serving {
    /// Serving over `objects`, running revisions on `backend`.
    pub fn new(
        objects: ServingObjects,
        backend: Arc<dyn WorkloadBackend>,
        config: ServingConfig,
    ) -> Self {
        Serving {
            autoscaler: Autoscaler::new(Arc::clone(&backend)),
            objects,
            backend,
            config: Arc::new(config),
            routing: RoutingTable::new(),
            dataplane: std::sync::OnceLock::new(),
        }
    }

    /// Scales revisions with the policies `factory` makes instead of the KPA.
    pub fn with_policy(self, factory: PolicyFactory) -> Self {
        self.autoscaler.set_policy(factory);
        self
    }

    /// Replaces the autoscaler (e.g. one with a faster tick for tests).
    /// Call it before [`Serving::dataplane`]: the data plane reports to
    /// the autoscaler it was made with.
    pub fn with_autoscaler(mut self, autoscaler: Autoscaler) -> Self {
        self.autoscaler = autoscaler;
        self.dataplane = std::sync::OnceLock::new();
        self
    }

    /// The autoscaler that scales the revisions.
    pub fn autoscaler(&self) -> Autoscaler {
        self.autoscaler.clone()
    }

    /// The data plane serving this Serving's routes: the ingress, the
    /// activator and the queue-proxies, reporting to its autoscaler. Made
    /// on the first call with `config` (later calls return the same data
    /// plane: two would report every request twice). Must be called inside
    /// a tokio runtime; serve it with
    /// [`Dataplane::serve`](crate::dataplane::Dataplane::serve), on as many
    /// listeners as you like.
    pub fn dataplane(&self, config: DataplaneConfig) -> Dataplane {
        self.dataplane
            .get_or_init(|| {
                Dataplane::new(
                    config,
                    &self.routing,
                    Arc::clone(&self.backend),
                    Arc::clone(&self.objects.revisions),
                    Some(self.autoscaler.clone()),
                )
            })
            .clone()
    }

    /// The routing table the Route controller publishes into.
    pub fn routing(&self) -> RoutingTable {
        self.routing.clone()
    }

    /// Runs every controller until `shutdown` completes, then stops them
    /// gracefully.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let o = &self.objects;
        let (stop, stopped) = watch::channel(false);
        let until_stopped = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            }
        };

        let services = Controller::new(
            Arc::clone(&o.services),
            Arc::new(ServiceReconciler::new(
                Arc::clone(&o.services),
                Arc::clone(&o.configurations),
                Arc::clone(&o.routes),
                Arc::clone(&o.revisions),
                Arc::clone(&self.config),
            )),
        )
        .owns(Arc::clone(&o.configurations))
        .owns(Arc::clone(&o.routes));

        let configurations = Controller::new(
            Arc::clone(&o.configurations),
            Arc::new(ConfigurationReconciler::new(
                Arc::clone(&o.configurations),
                Arc::clone(&o.revisions),
                Arc::clone(&self.config),
            )),
        )
        .owns(Arc::clone(&o.revisions));

        let revision_reconciler = Arc::new(
            RevisionReconciler::new(
                Arc::clone(&o.revisions),
                Arc::clone(&self.backend),
                Arc::clone(&self.config),
            )
            .with_autoscaler(self.autoscaler.clone()),
        );
        let revisions = Controller::new(Arc::clone(&o.revisions), Arc::clone(&revision_reconciler));
        revision_reconciler.attach(revisions.handle());

        let index = RouteIndex::default();
        let (by_config, by_revision) = (index.clone(), index.clone());
        let routes = Controller::new(
            Arc::clone(&o.routes),
            Arc::new(RouteReconciler::new(
                Arc::clone(&o.routes),
                Arc::clone(&o.configurations),
                Arc::clone(&o.revisions),
                self.routing.clone(),
                index,
                Arc::clone(&self.config),
            )),
        )
        .watches(Arc::clone(&o.configurations), move |c: &Configuration| {
            by_config.routes_for_configuration(
                c.metadata.namespace.as_deref(),
                c.metadata.name.as_deref().unwrap_or_default(),
            )
        })
        .watches(Arc::clone(&o.revisions), move |r: &Revision| {
            let config = r
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(keys::CONFIGURATION));
            by_revision.routes_for_revision(
                r.metadata.namespace.as_deref(),
                r.metadata.name.as_deref().unwrap_or_default(),
                config.map(String::as_str),
            )
        });

        let running = futures::future::join4(
            services.run(until_stopped()),
            configurations.run(until_stopped()),
            revisions.run(until_stopped()),
            routes.run(until_stopped()),
        );
        let signal = async move {
            shutdown.await;
            let _ = stop.send(true);
        };
        futures::future::join(running, signal).await;
    }
}
