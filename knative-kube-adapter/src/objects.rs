//! [`KubeObjects<K>`]: [`knative_core::store::Objects<K>`] over a real
//! Kubernetes API server, so the Serving, Eventing and Build reconcilers run
//! unchanged on a cluster (issue 9 §2, `specs/BUILD.md §3`).
//!
//! Every method is one API call through `kube::Api<K>`:
//!
//! | method | request |
//! |---|---|
//! | `get` | `GET …/<plural>/<name>` |
//! | `list` | `GET …/<plural>?labelSelector=…` |
//! | `create` | `POST …/<plural>` |
//! | `replace` | `PUT …/<plural>/<name>` |
//! | `replace_status` | `PUT …/<plural>/<name>/status` |
//! | `patch` | `PATCH …/<plural>/<name>` (`application/merge-patch+json`) |
//! | `patch_status` | `PATCH …/<plural>/<name>/status` (merge patch) |
//! | `delete` | `DELETE …/<plural>/<name>` (background propagation) |
//! | `watch` | `kube::runtime::watcher`: a paged list, then `?watch=true` |
//!
//! The API server implements the semantics the trait documents
//! (resourceVersion conflicts, generation bumps, the status subresource,
//! finalizers, garbage collection); this adapter maps its answers onto the
//! same [`StoreError`]s the in-memory store returns:
//!
//! | API status | `StoreError` |
//! |---|---|
//! | 404 about a named object | `NotFound` (a 404 without a name, e.g. a CRD not installed, is `Backend`) |
//! | 409, reason `AlreadyExists` | `AlreadyExists` |
//! | 409, any other reason | `Conflict` |
//! | 422 `Invalid` | `Invalid`, one field error per `details.causes[]` entry, paths kept |
//! | anything else, transport errors | `Backend` |
//!
//! [`KubeObjects::in_namespace`] restricts a view to one namespace (the
//! operator's `--namespace`).
//!
//! Reads (`get`, `list`, `watch`) decode objects themselves: a missing
//! `spec` reads as `{}` (there is no defaulting webhook, and upstream's
//! manifests leave out all-optional specs), and an object that still does
//! not read as `K` is skipped with a warning by `list` and `watch` rather
//! than stopping the kind's controller.
//!
//! Like the in-memory store, `replace` and `replace_status` refuse an object
//! without `metadata.resourceVersion` (so no update is ever unconditional),
//! and a namespaced kind needs a namespace for anything but `list` and
//! `watch`.

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use knative_core::apis::FieldError;
use knative_core::store::{ApiObject, Deletion, ObjectKey, Objects, StoreError, Watch, WatchEvent};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::core::{Selector, Status};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde_json::{Value, json};

/// How a kind's scope (`K::Scope`) turns into a `kube::Api<K>`: namespaced
/// kinds get a namespaced or all-namespaces API, cluster-scoped kinds the
/// cluster one. Implemented for k8s-openapi's two static scopes.
pub trait KubeScope: 'static {
    /// Whether objects of this scope live in a namespace.
    const NAMESPACED: bool;

    /// The API of `K` in `namespace`, or across all namespaces (and for
    /// cluster-scoped kinds) when `None`.
    fn api<K>(client: Client, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = Self, DynamicType: Default>;
}

impl KubeScope for NamespaceResourceScope {
    const NAMESPACED: bool = true;

    fn api<K>(client: Client, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = Self, DynamicType: Default>,
    {
        match namespace {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::all(client),
        }
    }
}

impl KubeScope for ClusterResourceScope {
    const NAMESPACED: bool = false;

    fn api<K>(client: Client, _namespace: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = Self, DynamicType: Default>,
    {
        Api::all(client)
    }
}

/// The objects of kind `K` on a Kubernetes API server; implements
/// [`Objects<K>`] (see the [module docs](self) for the calls it makes).
///
/// Cheap to clone (a [`kube::Client`] is a handle).
pub struct KubeObjects<K> {
    client: Client,
    scope: Option<String>,
    recorder: Option<Arc<Recorder>>,
    _kind: PhantomData<fn() -> K>,
}

impl<K> Clone for KubeObjects<K> {
    fn clone(&self) -> Self {
        KubeObjects {
            client: self.client.clone(),
            scope: self.scope.clone(),
            recorder: self.recorder.clone(),
            _kind: PhantomData,
        }
    }
}

impl<K> fmt::Debug for KubeObjects<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeObjects")
            .field("kind", &std::any::type_name::<K>())
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl<K> KubeObjects<K> {
    /// The objects of kind `K` reached through `client`.
    pub fn new(client: Client) -> Self {
        KubeObjects {
            client,
            scope: None,
            recorder: None,
            _kind: PhantomData,
        }
    }

    /// Publishes Kubernetes Events about the objects this view creates, as
    /// upstream's reconcilers do: `Normal Created` (`Created Configuration
    /// "hello"`) or `Warning CreationFailed` on the new object's controlling
    /// owner (so `kubectl describe ksvc hello` lists its children).
    pub fn with_recorder(mut self, recorder: Arc<Recorder>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Restricts a namespaced kind to `namespace` (the operator's
    /// `--namespace`): "all namespaces" in `list` and `watch` means this
    /// one, objects elsewhere are not found, and writes elsewhere are
    /// invalid. Cluster-scoped kinds are not affected.
    pub fn in_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.scope = Some(namespace.into()).filter(|n| !n.is_empty());
        self
    }

    /// The namespace this view is restricted to, if any.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The client requests go through.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl<K> KubeObjects<K>
where
    K: ApiObject + fmt::Debug,
    K::Scope: KubeScope,
{
    /// The namespace a call means: none for cluster-scoped kinds (and for
    /// an empty string).
    fn scoped(namespace: Option<&str>) -> Option<&str> {
        if <K::Scope as KubeScope>::NAMESPACED {
            namespace.filter(|n| !n.is_empty())
        } else {
            None
        }
    }

    fn api(&self, namespace: Option<&str>) -> Api<K> {
        <K::Scope as KubeScope>::api(self.client.clone(), Self::scoped(namespace))
    }

    /// The same API, read as untyped objects: reads go through [`decode`]
    /// so that objects written without a `spec` (a Broker, an
    /// InMemoryChannel) still read, and one object that does not convert
    /// does not break a list or a watch.
    fn raw_api(&self, namespace: Option<&str>) -> Api<DynamicObject> {
        let resource = ApiResource::erase::<K>(&K::DynamicType::default());
        match Self::scoped(namespace) {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        }
    }

    /// The namespace a `list` or `watch` covers, or `Err(())` when it lies
    /// outside this view's scope.
    fn listed_namespace<'a>(&'a self, namespace: Option<&'a str>) -> Result<Option<&'a str>, ()> {
        let namespace = Self::scoped(namespace);
        if !<K::Scope as KubeScope>::NAMESPACED {
            return Ok(None);
        }
        match (self.scope.as_deref(), namespace) {
            (None, ns) => Ok(ns),
            (Some(scope), None) => Ok(Some(scope)),
            (Some(scope), Some(ns)) if ns == scope => Ok(Some(ns)),
            (Some(_), Some(_)) => Err(()),
        }
    }

    /// Whether an object in `namespace` is outside this view's scope.
    fn outside(&self, namespace: Option<&str>) -> bool {
        <K::Scope as KubeScope>::NAMESPACED
            && self
                .scope
                .as_deref()
                .is_some_and(|scope| Self::scoped(namespace) != Some(scope))
    }

    /// The API for one named object: a namespaced kind without a namespace
    /// has no such object (as in the in-memory store).
    fn api_for(&self, namespace: Option<&str>, name: &str) -> Result<Api<K>, StoreError> {
        let key = key_of(Self::scoped(namespace), name);
        if <K::Scope as KubeScope>::NAMESPACED && key.namespace.is_none() {
            return Err(StoreError::NotFound {
                kind: K::kind_name(),
                key: key.to_string(),
            });
        }
        if self.outside(key.namespace()) {
            return Err(StoreError::NotFound {
                kind: K::kind_name(),
                key: key.to_string(),
            });
        }
        if name.is_empty() {
            return Err(invalid::<K>(
                &key,
                FieldError::missing_field("metadata.name"),
            ));
        }
        Ok(self.api(key.namespace()))
    }

    /// The key of an object to write, checked against the kind's scope.
    fn key_for_write(&self, obj: &K) -> Result<ObjectKey, StoreError> {
        let key = key_of(
            Self::scoped(obj.meta().namespace.as_deref()),
            &obj.key().name,
        );
        if <K::Scope as KubeScope>::NAMESPACED && key.namespace.is_none() {
            return Err(invalid::<K>(
                &key,
                FieldError::missing_field("metadata.namespace")
                    .with_details(format!("{} is a namespaced kind", K::kind_name())),
            ));
        }
        if self.outside(key.namespace()) {
            return Err(invalid::<K>(
                &key,
                FieldError::new(
                    format!(
                        "outside the namespace this operator manages ({})",
                        self.scope.as_deref().unwrap_or_default()
                    ),
                    "metadata.namespace",
                ),
            ));
        }
        Ok(key)
    }

    /// The key of an existing object to update: it needs a name and the
    /// resourceVersion the update is based on.
    fn key_for_update(&self, obj: &K, what: &str) -> Result<ObjectKey, StoreError> {
        let key = self.key_for_write(obj)?;
        let mut errs = FieldError::none();
        if key.name.is_empty() {
            errs.push(FieldError::missing_field("metadata.name"));
        }
        if obj
            .meta()
            .resource_version
            .as_deref()
            .is_none_or(str::is_empty)
        {
            errs.push(
                FieldError::missing_field("metadata.resourceVersion").with_details(format!(
                    "{what} must say which version of the object it changes"
                )),
            );
        }
        if errs.is_empty() {
            Ok(key)
        } else {
            Err(invalid::<K>(&key, errs))
        }
    }
}

fn key_of(namespace: Option<&str>, name: &str) -> ObjectKey {
    ObjectKey {
        namespace: namespace.map(str::to_owned),
        name: name.to_owned(),
    }
}

fn invalid<K: ApiObject>(key: &ObjectKey, errors: FieldError) -> StoreError {
    StoreError::Invalid {
        kind: K::kind_name(),
        key: key.to_string(),
        errors,
    }
}

/// Maps a kube client error about the object at `key` to a [`StoreError`]
/// (see the [module docs](self) for the table).
pub fn store_error<K: ApiObject>(key: &ObjectKey, error: kube::Error) -> StoreError {
    match error {
        kube::Error::Api(status) => status_error::<K>(key, *status),
        kube::Error::SerdeError(source) => StoreError::Serialization {
            kind: K::kind_name(),
            key: key.to_string(),
            source,
        },
        other => StoreError::Backend(Box::new(other)),
    }
}

/// Maps a failed API `Status` about the object at `key` to a [`StoreError`].
pub fn status_error<K: ApiObject>(key: &ObjectKey, status: Status) -> StoreError {
    let kind = K::kind_name();
    let named = status.details.as_ref().is_some_and(|d| !d.name.is_empty());
    match (status.code, status.reason.as_str()) {
        (404, _) if named => StoreError::NotFound {
            kind,
            key: key.to_string(),
        },
        (409, "AlreadyExists") => StoreError::AlreadyExists {
            kind,
            key: key.to_string(),
        },
        (409, _) => StoreError::Conflict {
            kind,
            key: key.to_string(),
            reason: status.message,
        },
        (422, _) => {
            let mut errors = FieldError::none();
            for cause in status.details.iter().flat_map(|d| &d.causes) {
                let message = if cause.message.is_empty() {
                    cause.reason.clone()
                } else {
                    cause.message.clone()
                };
                errors.push(FieldError::new(message, cause.field.as_str()));
            }
            if errors.is_empty() {
                errors = FieldError::new(status.message, "");
            }
            StoreError::Invalid {
                kind,
                key: key.to_string(),
                errors,
            }
        }
        _ => StoreError::Backend(Box::new(kube::Error::Api(Box::new(status)))),
    }
}

/// An object read from the API server as `K`. A missing `spec` reads as
/// `{}`: upstream's webhooks default it, and manifests of kinds whose spec
/// is all optional (a Broker, an InMemoryChannel) leave it out.
fn decode<K: ApiObject>(object: DynamicObject) -> Result<K, serde_json::Error> {
    let mut value = serde_json::to_value(object)?;
    if let Some(map) = value.as_object_mut() {
        map.entry("spec").or_insert_with(|| json!({}));
    }
    serde_json::from_value(value)
}

/// [`decode`], or `None` with a warning naming the object: a list or a
/// watch goes on without an object this version cannot read.
fn decode_or_skip<K: ApiObject>(object: DynamicObject) -> Option<K> {
    let name = object.metadata.name.clone().unwrap_or_default();
    let namespace = object.metadata.namespace.clone().unwrap_or_default();
    match decode(object) {
        Ok(decoded) => Some(decoded),
        Err(error) => {
            tracing::warn!(
                kind = %K::kind_name(),
                %namespace,
                %name,
                %error,
                "skipping an object that does not read as this kind"
            );
            None
        }
    }
}

/// The event upstream's reconcilers publish about creating `obj` (with the
/// API server's answer `created`), on its controlling owner; nothing for
/// objects without one, or when creating raced with another writer
/// (already exists, conflict). Publishing is bounded to 2 s and its
/// failure only logged: events are informational.
async fn record_creation<K: ApiObject>(
    recorder: &Recorder,
    obj: &K,
    key: &ObjectKey,
    created: &Result<K, StoreError>,
) {
    let Some(owner) = obj
        .meta()
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
    else {
        return;
    };
    let kind = K::kind_name();
    let (type_, reason, note) = match created {
        Ok(_) => (
            EventType::Normal,
            "Created",
            format!("Created {kind} {:?}", key.name),
        ),
        Err(e) if e.is_already_exists() || e.is_conflict() => return,
        Err(e) => (
            EventType::Warning,
            "CreationFailed",
            format!("Failed to create {kind} {:?}: {e}", key.name),
        ),
    };
    let regarding = ObjectReference {
        api_version: Some(owner.api_version.clone()),
        kind: Some(owner.kind.clone()),
        name: Some(owner.name.clone()),
        uid: Some(owner.uid.clone()),
        namespace: key.namespace.clone(),
        ..ObjectReference::default()
    };
    let event = Event {
        type_,
        reason: reason.to_owned(),
        // The API server caps an event's note at 1 KiB.
        note: Some(note.chars().take(1000).collect()),
        action: "Create".to_owned(),
        secondary: None,
    };
    let published = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        recorder.publish(&event, &regarding),
    )
    .await;
    match published {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "could not publish an event"),
        Err(_) => tracing::debug!("publishing an event timed out"),
    }
}

/// Orders objects as [`Objects::list`] promises: by namespace, then name.
fn sort_by_key<K: ApiObject>(objects: &mut [K]) {
    objects.sort_by_cached_key(ApiObject::key);
}

/// The last state of an object the API server deleted and answered for with
/// a `Status` instead of the object (most built-in kinds do): the name,
/// namespace and uid it reports. Kinds that cannot be built from metadata
/// alone give a `Backend` error saying the object is gone.
fn deleted_object<K: ApiObject>(key: &ObjectKey, status: &Status) -> Result<K, StoreError> {
    let uid = status
        .details
        .as_ref()
        .map(|d| d.uid.clone())
        .filter(|u| !u.is_empty());
    let value = json!({
        "apiVersion": K::api_version_name(),
        "kind": K::kind_name(),
        "metadata": { "name": key.name, "namespace": key.namespace, "uid": uid },
        "spec": {},
    });
    serde_json::from_value(value).map_err(|e| {
        StoreError::Backend(
            format!(
                "{} {key} was deleted, but the API server answered with a Status and the \
                 object cannot be rebuilt from its name: {e}",
                K::kind_name()
            )
            .into(),
        )
    })
}

/// What the API server's answer to a DELETE means: an object with a
/// `deletionTimestamp` is still there (finalizers or a grace period).
fn deletion_of<K: ApiObject>(obj: K) -> Deletion<K> {
    if obj.meta().deletion_timestamp.is_some() {
        Deletion::Terminating(obj)
    } else {
        Deletion::Removed(obj)
    }
}

#[async_trait]
impl<K> Objects<K> for KubeObjects<K>
where
    K: ApiObject + fmt::Debug,
    K::Scope: KubeScope,
{
    #[tracing::instrument(level = "trace", skip(self), fields(kind = %K::kind_name()))]
    async fn get(&self, namespace: Option<&str>, name: &str) -> Result<K, StoreError> {
        let key = key_of(Self::scoped(namespace), name);
        self.api_for(namespace, name)?;
        let object = self
            .raw_api(key.namespace())
            .get(name)
            .await
            .map_err(|e| store_error::<K>(&key, e))?;
        decode(object).map_err(|source| StoreError::Serialization {
            kind: K::kind_name(),
            key: key.to_string(),
            source,
        })
    }

    #[tracing::instrument(level = "trace", skip(self), fields(kind = %K::kind_name(), selector = %selector))]
    async fn list(
        &self,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Result<Vec<K>, StoreError> {
        let Ok(namespace) = self.listed_namespace(namespace) else {
            return Ok(Vec::new());
        };
        let key = key_of(namespace, "");
        let mut params = ListParams::default();
        if !selector.selects_all() {
            params = params.labels_from(selector);
        }
        let list = self
            .raw_api(namespace)
            .list(&params)
            .await
            .map_err(|e| store_error::<K>(&key, e))?;
        let mut items: Vec<K> = list.items.into_iter().filter_map(decode_or_skip).collect();
        sort_by_key(&mut items);
        Ok(items)
    }

    #[tracing::instrument(level = "debug", skip(self, obj), fields(kind = %K::kind_name(), key = %obj.key()))]
    async fn create(&self, obj: &K) -> Result<K, StoreError> {
        let key = self.key_for_write(obj)?;
        let created = self
            .api(key.namespace())
            .create(&PostParams::default(), obj)
            .await
            .map_err(|e| store_error::<K>(&key, e));
        if let Some(recorder) = &self.recorder {
            record_creation(recorder, obj, &key, &created).await;
        }
        created
    }

    #[tracing::instrument(level = "debug", skip(self, obj), fields(kind = %K::kind_name(), key = %obj.key()))]
    async fn replace(&self, obj: &K) -> Result<K, StoreError> {
        let key = self.key_for_update(obj, "an update")?;
        self.api(key.namespace())
            .replace(&key.name, &PostParams::default(), obj)
            .await
            .map_err(|e| store_error::<K>(&key, e))
    }

    #[tracing::instrument(level = "debug", skip(self, obj), fields(kind = %K::kind_name(), key = %obj.key()))]
    async fn replace_status(&self, obj: &K) -> Result<K, StoreError> {
        let key = self.key_for_update(obj, "a status update")?;
        self.api(key.namespace())
            .replace_status(&key.name, &PostParams::default(), obj)
            .await
            .map_err(|e| store_error::<K>(&key, e))
    }

    #[tracing::instrument(level = "debug", skip(self, patch), fields(kind = %K::kind_name()))]
    async fn patch(
        &self,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<K, StoreError> {
        let key = key_of(Self::scoped(namespace), name);
        let api = self.api_for(namespace, name)?;
        api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(|e| store_error::<K>(&key, e))
    }

    #[tracing::instrument(level = "debug", skip(self, patch), fields(kind = %K::kind_name()))]
    async fn patch_status(
        &self,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<K, StoreError> {
        let key = key_of(Self::scoped(namespace), name);
        let api = self.api_for(namespace, name)?;
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(|e| store_error::<K>(&key, e))
    }

    #[tracing::instrument(level = "debug", skip(self), fields(kind = %K::kind_name()))]
    async fn delete(&self, namespace: Option<&str>, name: &str) -> Result<Deletion<K>, StoreError> {
        let key = key_of(Self::scoped(namespace), name);
        let api = self.api_for(namespace, name)?;
        match api.delete(name, &DeleteParams::background()).await {
            Ok(either::Either::Left(obj)) => Ok(deletion_of(obj)),
            Ok(either::Either::Right(status)) => {
                deleted_object(&key, &status).map(Deletion::Removed)
            }
            Err(e) => Err(store_error::<K>(&key, e)),
        }
    }

    #[tracing::instrument(level = "debug", skip(self), fields(kind = %K::kind_name()))]
    async fn watch(&self, namespace: Option<&str>) -> Result<Watch<K>, StoreError> {
        let Ok(namespace) = self.listed_namespace(namespace) else {
            // Nothing outside the scope is ever seen.
            return Ok(Watch {
                initial: Vec::new(),
                events: futures::stream::pending().boxed(),
            });
        };
        let mut stream = watcher(self.raw_api(namespace), watcher::Config::default())
            .filter_map(|event| async move {
                Some(match event {
                    Ok(watcher::Event::Apply(o)) => Ok(watcher::Event::Apply(decode_or_skip(o)?)),
                    Ok(watcher::Event::Delete(o)) => Ok(watcher::Event::Delete(decode_or_skip(o)?)),
                    Ok(watcher::Event::InitApply(o)) => {
                        Ok(watcher::Event::InitApply(decode_or_skip(o)?))
                    }
                    Ok(watcher::Event::Init) => Ok(watcher::Event::Init),
                    Ok(watcher::Event::InitDone) => Ok(watcher::Event::InitDone),
                    Err(e) => Err(e),
                })
            })
            .boxed();
        let mut initial = Vec::new();
        loop {
            match stream.next().await {
                Some(Ok(watcher::Event::Init)) => initial.clear(),
                Some(Ok(watcher::Event::InitApply(obj))) => initial.push(obj),
                Some(Ok(watcher::Event::InitDone)) => break,
                // Not sent before the list is done.
                Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_))) => {}
                Some(Err(e)) => return Err(watch_error(e)),
                None => {
                    return Err(StoreError::Backend(
                        "the watch ended before the initial list was complete".into(),
                    ));
                }
            }
        }
        sort_by_key(&mut initial);
        let known: HashSet<ObjectKey> = initial.iter().map(ApiObject::key).collect();
        let events =
            futures::stream::unfold(Some(Tracker { stream, known }), |tracker| async move {
                let mut tracker = tracker?;
                let item = tracker.next_event().await?;
                // After an error the watch is over: the caller watches again.
                let next = item.is_ok().then_some(tracker);
                Some((item, next))
            })
            .boxed();
        Ok(Watch { initial, events })
    }
}

/// The watch after its initial list: maps `kube::runtime::watcher` events to
/// [`WatchEvent`]s, telling additions from modifications by the keys seen.
struct Tracker<K> {
    stream: BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>,
    known: HashSet<ObjectKey>,
}

impl<K: ApiObject> Tracker<K> {
    async fn next_event(&mut self) -> Option<Result<WatchEvent<K>, StoreError>> {
        loop {
            let event = match self.stream.next().await? {
                Ok(event) => event,
                Err(e) => return Some(Err(watch_error(e))),
            };
            return Some(Ok(match event {
                watcher::Event::Apply(obj) => {
                    if self.known.insert(obj.key()) {
                        WatchEvent::Added(obj)
                    } else {
                        WatchEvent::Modified(obj)
                    }
                }
                watcher::Event::Delete(obj) => {
                    self.known.remove(&obj.key());
                    WatchEvent::Deleted(obj)
                }
                // The watcher lists again (its resourceVersion expired):
                // what changed meanwhile is unknown, so this watch is over.
                watcher::Event::Init => {
                    return Some(Err(StoreError::Backend(
                        "the watch expired and must list again".into(),
                    )));
                }
                watcher::Event::InitApply(_) | watcher::Event::InitDone => continue,
            }));
        }
    }
}

fn watch_error(error: watcher::Error) -> StoreError {
    StoreError::Backend(Box::new(error))
}

#[cfg(test)]
mod tests;
