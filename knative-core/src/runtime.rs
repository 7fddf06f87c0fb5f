//! A controller loop for any [`Objects<K>`]: the part of Knative's
//! `knative.dev/pkg/controller` (and of `kube-runtime`) that turns changes
//! into reconciles.
//!
//! A [`Controller`] watches the objects of one kind, keeps the latest copy of
//! each in a cache, and puts the key of every changed object on a
//! [`WorkQueue`]. Workers take keys off the queue and call the
//! [`Reconciler`] with the cached object:
//!
//! - a key is queued once however many changes arrive before it is
//!   processed, and one key is never reconciled twice at the same time;
//! - `Ok(Action::requeue_after(d))` reconciles the key again after `d`;
//! - `Err(_)` requeues it with per-key exponential backoff (5 ms doubling to
//!   1000 s by default) unless [`Reconciler::error_policy`] says otherwise;
//!   a panicking reconcile is treated as an error, not a crash;
//! - [`Controller::owns`] reconciles an owner when one of its children (by
//!   `ownerReferences`) changes, and [`Controller::watches`] maps changes of
//!   any kind to keys;
//! - when the shutdown future completes, no new reconcile starts and
//!   [`Controller::run`] returns once those in flight have finished.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use async_trait::async_trait;
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use knative_core::runtime::{Action, Controller, Reconciler};
//! use knative_core::store::{InMemoryStore, Objects, StoreError};
//!
//! /// Adds a `checked: yes` label to every ConfigMap.
//! struct Labeler { config_maps: Arc<dyn Objects<ConfigMap>> }
//!
//! #[async_trait]
//! impl Reconciler<ConfigMap> for Labeler {
//!     type Error = StoreError;
//!     async fn reconcile(&self, cm: Arc<ConfigMap>) -> Result<Action, StoreError> {
//!         let mut cm = (*cm).clone();
//!         cm.metadata.labels.get_or_insert_with(Default::default).insert("checked".into(), "yes".into());
//!         self.config_maps.replace(&cm).await?;
//!         Ok(Action::await_change())
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store = InMemoryStore::new();
//! let config_maps: Arc<dyn Objects<ConfigMap>> = Arc::new(store.objects::<ConfigMap>());
//! let mut cm = ConfigMap::default();
//! cm.metadata.name = Some("app".into());
//! cm.metadata.namespace = Some("default".into());
//! config_maps.create(&cm).await?;
//!
//! let controller = Controller::new(
//!     Arc::clone(&config_maps),
//!     Arc::new(Labeler { config_maps: Arc::clone(&config_maps) }),
//! );
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let running = tokio::spawn(controller.run(async { stopped.await.ok(); }));
//! let labelled = loop {
//!     let cm = config_maps.get(Some("default"), "app").await?;
//!     if cm.metadata.labels.is_some() { break cm; }
//!     tokio::time::sleep(Duration::from_millis(5)).await;
//! };
//! assert_eq!(labelled.metadata.labels.unwrap()["checked"], "yes");
//! stop.send(()).ok();
//! running.await.unwrap();
//! # Ok::<(), StoreError>(())
//! # }).unwrap();
//! ```

mod queue;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use std::panic::AssertUnwindSafe;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::store::{ApiObject, ObjectKey, Objects, ScopeKind, WatchEvent, scope_of};

pub use queue::{Backoff, WorkQueue};

/// What to do with a key after a successful reconcile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Action {
    requeue_after: Option<Duration>,
}

impl Action {
    /// Reconcile again after `delay`, even if nothing changes.
    pub fn requeue_after(delay: Duration) -> Self {
        Action {
            requeue_after: Some(delay),
        }
    }

    /// Reconcile again only when the object (or a watched one) changes.
    pub fn await_change() -> Self {
        Action::default()
    }

    /// The requested delay, if any.
    pub fn requeue_delay(&self) -> Option<Duration> {
        self.requeue_after
    }
}

/// What to do with a key after a failed reconcile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// Retry with the key's exponential backoff (the default).
    #[default]
    Backoff,
    /// Retry after this delay.
    RequeueAfter(Duration),
    /// Do not retry: the error is permanent until the object changes.
    Forget,
}

/// Brings the world in line with one object's spec.
#[async_trait]
pub trait Reconciler<K: ApiObject>: Send + Sync + 'static {
    /// Why a reconcile failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Reconciles `obj`, the latest version the controller has seen.
    async fn reconcile(&self, obj: Arc<K>) -> Result<Action, Self::Error>;

    /// Decides how to retry after `error`; retries with backoff by default.
    fn error_policy(&self, obj: &K, error: &Self::Error) -> ErrorPolicy {
        let _ = (obj, error);
        ErrorPolicy::Backoff
    }
}

/// How a [`Controller`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// How many keys are reconciled at the same time (Knative's default is 2).
    pub concurrency: usize,
    /// Backoff of keys whose reconcile failed.
    pub backoff: Backoff,
    /// Wait before watching again after a watch broke.
    pub rewatch_delay: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            concurrency: 2,
            backoff: Backoff::default(),
            rewatch_delay: Duration::from_secs(1),
        }
    }
}

/// Enqueues keys of a running (or not yet started) controller from outside,
/// e.g. when something a reconciler depends on changes.
#[derive(Clone, Debug)]
pub struct Handle {
    queue: Arc<WorkQueue<ObjectKey>>,
}

impl Handle {
    /// Reconciles `key` as soon as possible.
    pub fn enqueue(&self, key: ObjectKey) {
        self.queue.add(key);
    }

    /// Reconciles `key` after `delay`.
    pub fn enqueue_after(&self, key: ObjectKey, delay: Duration) {
        self.queue.add_after(key, delay);
    }
}

type Cache<K> = Arc<RwLock<HashMap<ObjectKey, Arc<K>>>>;
type KeySource =
    Box<dyn FnOnce(Arc<WorkQueue<ObjectKey>>, Option<String>) -> BoxFuture<'static, ()> + Send>;

/// Watches one kind and reconciles its objects. See the [module docs](self).
pub struct Controller<K: ApiObject, R> {
    objects: Arc<dyn Objects<K>>,
    reconciler: Arc<R>,
    namespace: Option<String>,
    config: Config,
    queue: Arc<WorkQueue<ObjectKey>>,
    sources: Vec<KeySource>,
}

impl<K: ApiObject, R> std::fmt::Debug for Controller<K, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("kind", &K::kind_name())
            .field("namespace", &self.namespace)
            .field("config", &self.config)
            .field("related_watches", &self.sources.len())
            .finish()
    }
}

impl<K: ApiObject, R: Reconciler<K>> Controller<K, R> {
    /// A controller of the objects in `objects`, with the default [`Config`].
    pub fn new(objects: Arc<dyn Objects<K>>, reconciler: Arc<R>) -> Self {
        Self::with_config(objects, reconciler, Config::default())
    }

    /// A controller with an explicit [`Config`].
    pub fn with_config(objects: Arc<dyn Objects<K>>, reconciler: Arc<R>, config: Config) -> Self {
        Controller {
            objects,
            reconciler,
            namespace: None,
            config,
            queue: Arc::new(WorkQueue::new(config.backoff)),
            sources: Vec::new(),
        }
    }

    /// Only watches (and reconciles) objects in `namespace`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// A handle to enqueue keys from outside.
    pub fn handle(&self) -> Handle {
        Handle {
            queue: Arc::clone(&self.queue),
        }
    }

    /// Reconciles the owner (of this controller's kind, by group and kind)
    /// whenever one of its children in `children` changes or goes away.
    pub fn owns<C: ApiObject>(self, children: Arc<dyn Objects<C>>) -> Self {
        let api_version = K::api_version_name();
        let group = group_of(&api_version).to_owned();
        let kind = K::kind_name();
        let namespaced = !matches!(scope_of::<K>(), ScopeKind::Cluster);
        self.watches(children, move |child: &C| {
            child
                .meta()
                .owner_references
                .iter()
                .flatten()
                .filter(|r| r.kind == kind && group_of(&r.api_version) == group)
                .map(|r| ObjectKey {
                    namespace: if namespaced {
                        child.meta().namespace.clone()
                    } else {
                        None
                    },
                    name: r.name.clone(),
                })
                .collect()
        })
    }

    /// Reconciles the keys `mapper` returns whenever an object in `objects`
    /// changes or goes away.
    pub fn watches<C, F>(mut self, objects: Arc<dyn Objects<C>>, mapper: F) -> Self
    where
        C: ApiObject,
        F: Fn(&C) -> Vec<ObjectKey> + Send + Sync + 'static,
    {
        let rewatch_delay = self.config.rewatch_delay;
        let cluster_scoped = matches!(scope_of::<C>(), ScopeKind::Cluster);
        self.sources.push(Box::new(move |queue, namespace| {
            // The controller's namespace does not apply to cluster-scoped kinds.
            let namespace = if cluster_scoped { None } else { namespace };
            Box::pin(watch_related(
                objects,
                namespace,
                mapper,
                queue,
                rewatch_delay,
            ))
        }));
        self
    }

    /// Runs until `shutdown` completes, then stops starting reconciles and
    /// returns when the ones in flight have finished.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let kind = K::kind_name();
        let cache: Cache<K> = Arc::default();
        let mut watches = JoinSet::new();
        watches.spawn(watch_primary(
            Arc::clone(&self.objects),
            self.namespace.clone(),
            Arc::clone(&cache),
            Arc::clone(&self.queue),
            self.config.rewatch_delay,
        ));
        for source in self.sources {
            watches.spawn(source(Arc::clone(&self.queue), self.namespace.clone()));
        }
        let mut workers = JoinSet::new();
        for _ in 0..self.config.concurrency.max(1) {
            workers.spawn(work(
                Arc::clone(&self.queue),
                Arc::clone(&cache),
                Arc::clone(&self.reconciler),
            ));
        }
        tracing::debug!(%kind, "controller started");
        shutdown.await;
        tracing::debug!(%kind, "controller stopping; waiting for reconciles in flight");
        self.queue.shutdown();
        while workers.join_next().await.is_some() {}
        watches.abort_all();
        tracing::debug!(%kind, "controller stopped");
    }
}

/// The group of an `apiVersion` (`serving.knative.dev/v1` → `serving.knative.dev`, `v1` → ``).
fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

/// Watches `objects` for as long as the queue runs, starting over after
/// `rewatch_delay` when a watch breaks: `on_snapshot` gets each watch's
/// initial objects, `on_event` every change after.
async fn watch_loop<C: ApiObject>(
    objects: Arc<dyn Objects<C>>,
    namespace: Option<String>,
    queue: Arc<WorkQueue<ObjectKey>>,
    rewatch_delay: Duration,
    mut on_snapshot: impl FnMut(Vec<C>) + Send,
    mut on_event: impl FnMut(WatchEvent<C>) + Send,
) {
    loop {
        match objects.watch(namespace.as_deref()).await {
            Ok(watch) => {
                on_snapshot(watch.initial);
                let mut events = watch.events;
                while let Some(item) = events.next().await {
                    match item {
                        Ok(event) => on_event(event),
                        Err(error) => {
                            tracing::warn!(kind = %C::kind_name(), %error, "watch broke; watching again");
                            break;
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(kind = %C::kind_name(), %error, "cannot watch; retrying");
            }
        }
        if queue.is_shutting_down() {
            return;
        }
        tokio::time::sleep(rewatch_delay).await;
    }
}

/// Keeps the cache of the controller's own kind and queues changed keys.
async fn watch_primary<K: ApiObject>(
    objects: Arc<dyn Objects<K>>,
    namespace: Option<String>,
    cache: Cache<K>,
    queue: Arc<WorkQueue<ObjectKey>>,
    rewatch_delay: Duration,
) {
    let (snapshot_queue, event_queue) = (Arc::clone(&queue), Arc::clone(&queue));
    let snapshot_cache = Arc::clone(&cache);
    watch_loop(
        objects,
        namespace,
        queue,
        rewatch_delay,
        move |initial: Vec<K>| {
            let snapshot: HashMap<ObjectKey, Arc<K>> = initial
                .into_iter()
                .map(|o| (o.key(), Arc::new(o)))
                .collect();
            let keys: Vec<ObjectKey> = snapshot.keys().cloned().collect();
            *snapshot_cache
                .write()
                .unwrap_or_else(PoisonError::into_inner) = snapshot;
            for key in keys {
                snapshot_queue.add(key);
            }
        },
        move |event| {
            let deleted = matches!(event, WatchEvent::Deleted(_));
            let obj = event.into_object();
            let key = obj.key();
            let mut cache = cache.write().unwrap_or_else(PoisonError::into_inner);
            if deleted {
                cache.remove(&key);
            } else {
                cache.insert(key.clone(), Arc::new(obj));
                drop(cache);
                event_queue.add(key);
            }
        },
    )
    .await;
}

/// Queues the keys `mapper` returns for every object and change of a related kind.
async fn watch_related<C, F>(
    objects: Arc<dyn Objects<C>>,
    namespace: Option<String>,
    mapper: F,
    queue: Arc<WorkQueue<ObjectKey>>,
    rewatch_delay: Duration,
) where
    C: ApiObject,
    F: Fn(&C) -> Vec<ObjectKey> + Send + Sync + 'static,
{
    let mapper = Arc::new(mapper);
    let snapshot_mapper = Arc::clone(&mapper);
    let (snapshot_queue, event_queue) = (Arc::clone(&queue), Arc::clone(&queue));
    watch_loop(
        objects,
        namespace,
        queue,
        rewatch_delay,
        move |initial: Vec<C>| {
            for key in initial.iter().flat_map(|o| snapshot_mapper(o)) {
                snapshot_queue.add(key);
            }
        },
        move |event| {
            for key in mapper(event.object()) {
                event_queue.add(key);
            }
        },
    )
    .await;
}

async fn work<K: ApiObject, R: Reconciler<K>>(
    queue: Arc<WorkQueue<ObjectKey>>,
    cache: Cache<K>,
    reconciler: Arc<R>,
) {
    while let Some(key) = queue.get().await {
        let obj = cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned();
        match obj {
            Some(obj) => reconcile_one(&queue, &key, obj, &reconciler).await,
            // Deleted since it was queued: nothing to reconcile.
            None => queue.forget(&key),
        }
        queue.done(&key);
    }
}

async fn reconcile_one<K: ApiObject, R: Reconciler<K>>(
    queue: &WorkQueue<ObjectKey>,
    key: &ObjectKey,
    obj: Arc<K>,
    reconciler: &Arc<R>,
) {
    let span = tracing::info_span!(
        "reconcile",
        kind = %K::kind_name(),
        key = %key,
        resource_version = obj.meta().resource_version.as_deref().unwrap_or(""),
    );
    // A panic in the reconciler is contained and treated as a failure.
    let outcome = AssertUnwindSafe(reconciler.reconcile(Arc::clone(&obj)))
        .catch_unwind()
        .instrument(span.clone())
        .await;
    match outcome {
        Ok(Ok(action)) => {
            queue.forget(key);
            if let Some(delay) = action.requeue_delay() {
                queue.add_after(key.clone(), delay);
            }
        }
        Ok(Err(error)) => {
            let policy = std::panic::catch_unwind(AssertUnwindSafe(|| {
                reconciler.error_policy(&obj, &error)
            }))
            .unwrap_or_default();
            tracing::warn!(parent: &span, %error, ?policy, failures = queue.failures(key) + 1, "reconcile failed");
            match policy {
                ErrorPolicy::Backoff => queue.add_rate_limited(key.clone()),
                ErrorPolicy::RequeueAfter(delay) => queue.add_after(key.clone(), delay),
                ErrorPolicy::Forget => queue.forget(key),
            }
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            tracing::error!(parent: &span, %message, "reconcile panicked");
            queue.add_rate_limited(key.clone());
        }
    }
}

#[cfg(test)]
mod tests;
