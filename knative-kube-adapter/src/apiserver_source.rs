//! ApiServerSource on Kubernetes (issue 9 §3, `specs/EVENTING.md §6`):
//! watchers on the listed resources that turn every change into a
//! CloudEvent sent to the source's sink.
//!
//! Upstream runs a receive adapter Deployment per source; here the
//! operator process runs the watchers itself (one `kube::runtime::watcher`
//! over `Api<DynamicObject>` per listed resource and namespace), with the
//! operator's own credentials: **its ClusterRole must allow `get`, `list`
//! and `watch` on every resource a source lists** (the generated
//! [`policy_rules`](crate::manifests::policy_rules) allow core `events`,
//! `pods`, `services`, `namespaces` and `apps` `deployments`, the kinds
//! upstream's examples watch; add rules for anything else).
//! `spec.serviceAccountName` is not impersonated.
//!
//! # The events (upstream `pkg/adapter/apiserver/events/events.go`)
//!
//! | | `Reference` mode (default) | `Resource` mode |
//! |---|---|---|
//! | `type` | `dev.knative.apiserver.ref.{add,update,delete}` | `dev.knative.apiserver.resource.{add,update,delete}` |
//! | `data` (`application/json`) | `{"apiVersion","kind","name","namespace"}` (a `corev1.ObjectReference`) | the object |
//!
//! For both: `source` is the API server's URL (upstream: the adapter's
//! `rest.Config.Host`); `subject` is upstream's self-link guess
//! `/apis/<apiVersion>/namespaces/<namespace>/<plural>/<name>`, *also for
//! core kinds* (`/apis/v1/namespaces/default/pods/p`, not `/api/v1/…`),
//! with the plural guessed from the kind as `meta.UnsafeGuessKindToResource`
//! does ([`guess_plural`]); `id` is a fresh UUID and `time` the send time
//! (the adapter's CloudEvents client sets both); the extensions `kind`,
//! `name` and `namespace` repeat the object's (so Triggers can filter on
//! them), then `spec.ceOverrides.extensions` are applied.
//! `status.ceAttributes` lists the mode's three types (add, delete,
//! update) with that source.
//!
//! # What is watched, and when events are sent
//!
//! - Each `spec.resources[]` entry (`apiVersion`, `kind`, label
//!   `selector`) is watched in the source's namespace, or in the namespaces
//!   matching `spec.namespaceSelector` (`status.namespaces`, sorted; an
//!   empty selector watches all namespaces with one cluster-wide watch per
//!   resource, as upstream does).
//! - No event is sent for the objects of the initial list, nor of a
//!   re-list after the watch expired: upstream's reflector store ignores
//!   `Replace` (the list) and only sends on `Add`, `Update` and `Delete`.
//!   `kube::runtime::watcher` merges ADDED and MODIFIED into `Apply`, so an
//!   `Apply` of an object not seen before (by namespace and name) is an
//!   add, of a known one an update.
//! - With `spec.owner`, only objects whose controller owner reference
//!   matches its `apiVersion` and `kind` (each when set) are sent
//!   (upstream's `controllerFilter`).
//! - Events of one watch are sent in order, one at a time.
//!
//! # Status
//!
//! [`ApiServerSourceReconciler`] marks, as upstream's reconciler does,
//! `SinkProvided` (reason `NotFound` when the sink does not resolve),
//! `SufficientPermissions` (from each watch's initial list: a 403 marks it
//! `False` with reason `InsufficientPermissions`; upstream asks a
//! SubjectAccessReview for the ServiceAccount instead) and `Deployed`
//! (`True` once every watch has listed; reason `WatchFailed` for another
//! error, `Unknown`/`Starting` while a list is slow), over `Ready`. Like
//! the PingSource reconciler it keeps a finalizer
//! ([`API_SERVER_SOURCE_FINALIZER`]) so that deleting a source stops its
//! watchers; a changed spec, sink or namespace set restarts them.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use cloudevents::{AttributesWriter, Event};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use knative_core::runtime::{Action, Controller, Reconciler};
use knative_core::store::{ApiObject, ObjectKey, Objects, StoreError};
use knative_eventing::api::sources::RESERVED_ATTRIBUTE_NAMES;
use knative_eventing::api::{
    ApiServerSource, ApiServerSourceSpec, ApiServerSourceStatus, ApiVersionKind,
    ApiVersionKindSelector, CeOverrides, CloudEventAttributes, EventMode, RetryPolicy,
};
use knative_eventing::delivery::{Outcome, Sender, Target};
use knative_eventing::reconciler::{
    AddressResolver, has_finalizer, resolve_destination, set_finalizer,
};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::core::Selector;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info_span, warn};

/// The finalizer of ApiServerSources: removed once their watchers stopped.
pub const API_SERVER_SOURCE_FINALIZER: &str = "apiserversources.sources.knative.dev";

/// The event types, by mode and change (`dev.knative.apiserver.{ref,resource}.{add,update,delete}`).
pub use knative_eventing::api::sources::{
    ADD_EVENT_TYPE, ADD_REF_EVENT_TYPE, DELETE_EVENT_TYPE, DELETE_REF_EVENT_TYPE,
    UPDATE_EVENT_TYPE, UPDATE_REF_EVENT_TYPE,
};

/// The source URL used when the operator cannot tell its API server's URL.
pub const DEFAULT_API_SERVER_URL: &str = "https://kubernetes.default.svc";

/// How soon a source that is not fully running is looked at again.
const RECHECK: Duration = Duration::from_secs(10);
/// How long a reconcile waits for new watches to list.
const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(5);
/// The wait before a failed watch lists again.
const REWATCH_DELAY: Duration = Duration::from_secs(2);

/// What happened to a watched object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Change {
    /// It was created (or started to match the selector).
    Add,
    /// It was modified.
    Update,
    /// It was deleted (or stopped matching the selector).
    Delete,
}

/// The CloudEvent type for `change` in `mode` (see the [module docs](self)).
pub fn event_type(mode: EventMode, change: Change) -> &'static str {
    match (mode, change) {
        (EventMode::Resource, Change::Add) => ADD_EVENT_TYPE,
        (EventMode::Resource, Change::Update) => UPDATE_EVENT_TYPE,
        (EventMode::Resource, Change::Delete) => DELETE_EVENT_TYPE,
        (EventMode::Reference, Change::Add) => ADD_REF_EVENT_TYPE,
        (EventMode::Reference, Change::Update) => UPDATE_REF_EVENT_TYPE,
        (EventMode::Reference, Change::Delete) => DELETE_REF_EVENT_TYPE,
    }
}

/// The `status.ceAttributes` of a source in `mode` whose events come from
/// `source` (upstream's order: add, delete, update).
pub fn ce_attributes(mode: EventMode, source: &str) -> Vec<CloudEventAttributes> {
    [Change::Add, Change::Delete, Change::Update]
        .into_iter()
        .map(|change| CloudEventAttributes {
            type_: event_type(mode, change).to_owned(),
            source: source.to_owned(),
        })
        .collect()
}

/// The resource name of `kind` as upstream guesses it
/// (`meta.UnsafeGuessKindToResource`): lower case, `endpoints` kept,
/// `…s` → `…ses`, `…y` → `…ies`, else `…s`.
pub fn guess_plural(kind: &str) -> String {
    let singular = kind.to_lowercase();
    if singular.is_empty() || singular.ends_with("endpoints") {
        return singular;
    }
    if singular.ends_with('s') {
        format!("{singular}es")
    } else if let Some(stem) = singular.strip_suffix('y') {
        format!("{stem}ies")
    } else {
        format!("{singular}s")
    }
}

/// The event `subject`: upstream's self-link guess
/// `/apis/<apiVersion>/namespaces/<namespace>/<plural>/<name>` (a bare
/// group without a version gets `/versionUnknown`, as upstream's does).
pub fn subject(api_version: &str, kind: &str, namespace: &str, name: &str) -> String {
    let version = if api_version.contains('.') && !api_version.contains('/') {
        format!("{api_version}/versionUnknown")
    } else {
        api_version.to_owned()
    };
    format!(
        "/apis/{version}/namespaces/{namespace}/{}/{name}",
        guess_plural(kind)
    )
}

/// The `apiVersion` and kind of a watched object: its own, else those of
/// the resource it was watched as.
fn type_of<'a>(object: &'a DynamicObject, resource: &'a ApiResource) -> (&'a str, &'a str) {
    match &object.types {
        Some(t) if !t.api_version.is_empty() && !t.kind.is_empty() => {
            (t.api_version.as_str(), t.kind.as_str())
        }
        _ => (resource.api_version.as_str(), resource.kind.as_str()),
    }
}

/// The CloudEvent for `change` of `object` (watched as `resource`), sent
/// by a source in `mode` whose events come from `source` (the API server's
/// URL), with `overrides` applied. See the [module docs](self).
pub fn make_event(
    source: &str,
    mode: EventMode,
    change: Change,
    object: &DynamicObject,
    resource: &ApiResource,
    overrides: Option<&CeOverrides>,
) -> Result<Event, serde_json::Error> {
    let (api_version, kind) = type_of(object, resource);
    let name = object.metadata.name.clone().unwrap_or_default();
    let namespace = object.metadata.namespace.clone().unwrap_or_default();
    let data = match mode {
        EventMode::Resource => {
            let mut data = serde_json::to_value(object)?;
            if let Value::Object(map) = &mut data {
                map.entry("apiVersion")
                    .or_insert_with(|| Value::from(api_version));
                map.entry("kind").or_insert_with(|| Value::from(kind));
            }
            data
        }
        EventMode::Reference => {
            // corev1.ObjectReference: empty fields are left out.
            let mut reference = serde_json::Map::new();
            for (key, value) in [
                ("kind", kind),
                ("namespace", namespace.as_str()),
                ("name", name.as_str()),
                ("apiVersion", api_version),
            ] {
                if !value.is_empty() {
                    reference.insert(key.to_owned(), Value::from(value));
                }
            }
            Value::Object(reference)
        }
    };
    let mut event = Event::default();
    event.set_id(uuid::Uuid::new_v4().to_string());
    event.set_type(event_type(mode, change));
    event.set_source(source);
    event.set_subject(Some(subject(api_version, kind, &namespace, &name)));
    event.set_time(Some(chrono::Utc::now()));
    event.set_data("application/json", data);
    event.set_extension("kind", kind.to_owned());
    event.set_extension("name", name);
    event.set_extension("namespace", namespace);
    for (key, value) in overrides.iter().flat_map(|o| o.extensions.iter()) {
        if !RESERVED_ATTRIBUTE_NAMES.contains(&key.as_str()) {
            event.set_extension(key, value.clone());
        }
    }
    Ok(event)
}

/// Whether `object` passes the source's `owner` filter: it has a
/// controller owner reference whose `apiVersion` and `kind` match the
/// filter's (each when set).
pub fn owner_matches(object: &DynamicObject, owner: Option<&ApiVersionKind>) -> bool {
    let Some(owner) = owner else {
        return true;
    };
    object
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .is_some_and(|c| {
            (owner.api_version.is_empty() || owner.api_version == c.api_version)
                && (owner.kind.is_empty() || owner.kind == c.kind)
        })
}

/// The `ApiResource` of a `spec.resources[]` entry, its plural as kube
/// guesses it.
pub fn api_resource(selector: &ApiVersionKindSelector) -> ApiResource {
    let (group, version) = selector
        .api_version
        .rsplit_once('/')
        .unwrap_or(("", selector.api_version.as_str()));
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &selector.kind))
}

/// A label selector as a query string (`None`: everything).
fn selector_string(selector: Option<&LabelSelector>) -> Result<Option<String>, String> {
    let Some(selector) = selector else {
        return Ok(None);
    };
    let parsed = Selector::try_from(selector.clone()).map_err(|e| e.to_string())?;
    Ok((!parsed.selects_all()).then(|| parsed.to_string()))
}

// ---------------------------------------------------------------------------
// Watchers
// ---------------------------------------------------------------------------

/// Where one watch stands, as a reconcile sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchState {
    /// The initial list has not answered yet.
    Starting,
    /// The initial list succeeded; changes are being sent.
    Listed,
    /// The initial list was refused (403): the operator may not list it.
    Forbidden(String),
    /// The initial list failed otherwise (an unknown resource type, …).
    Failed(String),
}

/// Which namespaces a source watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Namespaces {
    /// These namespaces (sorted).
    Some(Vec<String>),
    /// Every namespace (an empty `namespaceSelector`).
    All,
}

/// What a running source was started with (a change restarts it).
#[derive(Clone, Debug, PartialEq)]
struct Started {
    spec: ApiServerSourceSpec,
    sink: String,
    namespaces: Namespaces,
}

/// One source's running watches.
struct Job {
    started: Started,
    tasks: Vec<JoinHandle<()>>,
    states: Vec<watch::Receiver<WatchState>>,
}

impl Drop for Job {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct WatchersInner {
    client: Client,
    source: String,
    sender: Sender,
    retry: RetryPolicy,
    jobs: Mutex<HashMap<ObjectKey, Job>>,
}

/// Runs the watches of every ApiServerSource: one task per listed
/// resource and namespace, sending its changes to the source's sink.
/// Cheap to clone; the watches stop when the last clone is dropped. Must
/// be used within a tokio runtime.
#[derive(Clone)]
pub struct ApiServerWatchers {
    inner: Arc<WatchersInner>,
}

impl std::fmt::Debug for ApiServerWatchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServerWatchers")
            .field("source", &self.inner.source)
            .field("jobs", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl ApiServerWatchers {
    /// Watchers reading through `client`, whose events carry `api_server_url`
    /// (the client's cluster URL) as their `source`, delivered once each.
    pub fn new(client: Client, api_server_url: impl Into<String>) -> Self {
        ApiServerWatchers::with_sender(
            client,
            api_server_url,
            Sender::new(),
            RetryPolicy::default(),
        )
    }

    /// [`new`](Self::new) delivering with `sender` and `retry`.
    pub fn with_sender(
        client: Client,
        api_server_url: impl Into<String>,
        sender: Sender,
        retry: RetryPolicy,
    ) -> Self {
        ApiServerWatchers {
            inner: Arc::new(WatchersInner {
                client,
                source: api_server_url.into(),
                sender,
                retry,
                jobs: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The `source` of the events.
    pub fn api_server_url(&self) -> &str {
        &self.inner.source
    }

    /// The client the watches read through.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectKey, Job>> {
        self.inner
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `source`'s watches over `namespaces`, sending to `sink`; a
    /// source already running with the same spec, sink and namespaces is
    /// left alone, any other starts over. Returns the state of each watch.
    ///
    /// A resource whose `selector` does not parse is reported as
    /// [`WatchState::Failed`] without a watch.
    pub fn ensure(
        &self,
        source: &ApiServerSource,
        mode: EventMode,
        sink: &str,
        namespaces: &Namespaces,
    ) -> Vec<watch::Receiver<WatchState>> {
        let key = source.key();
        let started = Started {
            spec: source.spec.clone(),
            sink: sink.to_owned(),
            namespaces: namespaces.clone(),
        };
        let mut jobs = self.lock();
        if let Some(job) = jobs.get(&key)
            && job.started == started
            && !job.tasks.iter().any(JoinHandle::is_finished)
        {
            return job.states.clone();
        }
        let target = Target {
            url: sink.to_owned(),
            retry: self.inner.retry,
            format: None,
            one_based_backoff: false,
        };
        let watch_namespaces: Vec<Option<String>> = match namespaces {
            Namespaces::All => vec![None],
            Namespaces::Some(list) => list.iter().cloned().map(Some).collect(),
        };
        let mut tasks = Vec::new();
        let mut states = Vec::new();
        for selector in &source.spec.resources {
            let resource = api_resource(selector);
            let labels = selector_string(selector.selector.as_ref());
            for namespace in &watch_namespaces {
                let (tx, rx) = watch::channel(WatchState::Starting);
                states.push(rx);
                let labels = match &labels {
                    Ok(labels) => labels.clone(),
                    Err(e) => {
                        tx.send_replace(WatchState::Failed(format!(
                            "the selector of {} {} does not parse: {e}",
                            selector.api_version, selector.kind
                        )));
                        continue;
                    }
                };
                let span = info_span!(
                    "api_server_source_watch",
                    source = %key,
                    resource = %resource.plural,
                    group = %resource.group,
                    namespace = namespace.as_deref().unwrap_or("*"),
                );
                let run = WatchRun {
                    client: self.inner.client.clone(),
                    resource: resource.clone(),
                    namespace: namespace.clone(),
                    labels,
                    mode,
                    owner: source.spec.owner.clone(),
                    overrides: source.spec.source.ce_overrides.clone(),
                    source: self.inner.source.clone(),
                    sender: self.inner.sender.clone(),
                    target: target.clone(),
                };
                tasks.push(tokio::spawn(run.run(tx).instrument(span)));
            }
        }
        // Replacing a job drops (and so stops) the old one.
        jobs.insert(
            key,
            Job {
                started,
                tasks,
                states: states.clone(),
            },
        );
        states
    }

    /// Stops the watches of ApiServerSource `namespace/name`; whether it
    /// had any.
    pub fn stop(&self, namespace: &str, name: &str) -> bool {
        let removed = self.lock().remove(&ObjectKey::namespaced(namespace, name));
        removed.is_some()
    }

    /// Whether ApiServerSource `namespace/name` has watches running.
    pub fn is_watching(&self, namespace: &str, name: &str) -> bool {
        self.lock()
            .get(&ObjectKey::namespaced(namespace, name))
            .is_some_and(|j| j.tasks.iter().any(|t| !t.is_finished()))
    }
}

/// One watch: a resource in a namespace (or all), and where its events go.
struct WatchRun {
    client: Client,
    resource: ApiResource,
    namespace: Option<String>,
    labels: Option<String>,
    mode: EventMode,
    owner: Option<ApiVersionKind>,
    overrides: Option<CeOverrides>,
    source: String,
    sender: Sender,
    target: Target,
}

impl WatchRun {
    /// Watches until aborted, reporting the first list's outcome on `state`.
    async fn run(self, state: watch::Sender<WatchState>) {
        let api: Api<DynamicObject> = match &self.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &self.resource),
            None => Api::all_with(self.client.clone(), &self.resource),
        };
        let mut config = watcher::Config::default();
        if let Some(labels) = &self.labels {
            config = config.labels(labels);
        }
        let mut stream = watcher(api, config)
            .backoff(ConstantBackoff(REWATCH_DELAY))
            .boxed();
        let mut known: BTreeSet<(String, String)> = BTreeSet::new();
        let mut listing: BTreeSet<(String, String)> = BTreeSet::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(watcher::Event::Init) => listing.clear(),
                Ok(watcher::Event::InitApply(obj)) => {
                    listing.insert(key_of(&obj));
                }
                Ok(watcher::Event::InitDone) => {
                    known = std::mem::take(&mut listing);
                    state.send_if_modified(|s| {
                        let changed = *s != WatchState::Listed;
                        *s = WatchState::Listed;
                        changed
                    });
                    debug!(objects = known.len(), "listed; watching");
                }
                Ok(watcher::Event::Apply(obj)) => {
                    let change = if known.insert(key_of(&obj)) {
                        Change::Add
                    } else {
                        Change::Update
                    };
                    self.send(change, &obj).await;
                }
                Ok(watcher::Event::Delete(obj)) => {
                    known.remove(&key_of(&obj));
                    self.send(Change::Delete, &obj).await;
                }
                Err(e) => {
                    warn!(error = %e, "watch failed; watching again");
                    if *state.borrow() == WatchState::Starting {
                        state.send_replace(first_failure(&e));
                    }
                }
            }
        }
    }

    async fn send(&self, change: Change, object: &DynamicObject) {
        if !owner_matches(object, self.owner.as_ref()) {
            return;
        }
        let event = match make_event(
            &self.source,
            self.mode,
            change,
            object,
            &self.resource,
            self.overrides.as_ref(),
        ) {
            Ok(event) => event,
            Err(e) => {
                warn!(error = %e, "cannot make the event");
                return;
            }
        };
        let (ns, name) = key_of(object);
        match self.sender.deliver(&event, &self.target).await {
            Outcome::Delivered { status, .. } => {
                debug!(status, ?change, object = %format!("{ns}/{name}"), "event delivered");
            }
            Outcome::Failed {
                status,
                error,
                attempts,
                ..
            } => {
                warn!(?status, %error, attempts, ?change, object = %format!("{ns}/{name}"), "event delivery failed");
            }
        }
    }
}

/// Waits the same delay before every retry of a failed watch.
#[derive(Clone, Copy, Debug)]
struct ConstantBackoff(Duration);

impl Iterator for ConstantBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.0)
    }
}

impl kube::runtime::utils::Backoff for ConstantBackoff {
    fn reset(&mut self) {}
}

fn key_of(object: &DynamicObject) -> (String, String) {
    (
        object.metadata.namespace.clone().unwrap_or_default(),
        object.metadata.name.clone().unwrap_or_default(),
    )
}

/// What a watch error before the first list means for the status.
fn first_failure(error: &watcher::Error) -> WatchState {
    let api_status = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s),
        _ => None,
    };
    match api_status {
        Some(status) if status.code == 403 => WatchState::Forbidden(status.message.clone()),
        _ => WatchState::Failed(error.to_string()),
    }
}

// ---------------------------------------------------------------------------
// Reconciler
// ---------------------------------------------------------------------------

/// Why an ApiServerSource reconcile failed (retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum ApiServerSourceError {
    /// Reading or writing the source failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Listing the namespaces of `namespaceSelector` failed.
    #[error("listing the namespaces of the namespaceSelector: {0}")]
    Namespaces(#[source] kube::Error),
}

/// Reconciles ApiServerSources into [`ApiServerWatchers`].
pub struct ApiServerSourceReconciler {
    sources: Arc<dyn Objects<ApiServerSource>>,
    resolver: Arc<dyn AddressResolver>,
    watchers: ApiServerWatchers,
    sync_timeout: Duration,
}

impl std::fmt::Debug for ApiServerSourceReconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServerSourceReconciler")
            .field("watchers", &self.watchers)
            .field("sync_timeout", &self.sync_timeout)
            .finish_non_exhaustive()
    }
}

impl ApiServerSourceReconciler {
    /// A reconciler resolving sinks with `resolver` and running watches on
    /// `watchers`.
    pub fn new(
        sources: Arc<dyn Objects<ApiServerSource>>,
        resolver: Arc<dyn AddressResolver>,
        watchers: ApiServerWatchers,
    ) -> Self {
        ApiServerSourceReconciler {
            sources,
            resolver,
            watchers,
            sync_timeout: DEFAULT_SYNC_TIMEOUT,
        }
    }

    /// How long a reconcile waits for new watches' initial lists before
    /// reporting `Deployed` `Unknown` (default 5 s).
    pub fn with_sync_timeout(mut self, timeout: Duration) -> Self {
        self.sync_timeout = timeout;
        self
    }

    /// The watchers this reconciler runs.
    pub fn watchers(&self) -> &ApiServerWatchers {
        &self.watchers
    }

    /// A controller running this reconciler.
    pub fn into_controller(self) -> Controller<ApiServerSource, Self> {
        Controller::new(Arc::clone(&self.sources), Arc::new(self))
    }

    /// The namespaces `source` watches (upstream's `namespacesFromSelector`).
    async fn namespaces(
        &self,
        source: &ApiServerSource,
        own: &str,
    ) -> Result<(Namespaces, Vec<String>), ApiServerSourceError> {
        let Some(selector) = &source.spec.namespace_selector else {
            return Ok((Namespaces::Some(vec![own.to_owned()]), vec![own.to_owned()]));
        };
        let all = selector.match_labels.as_ref().is_none_or(|l| l.is_empty())
            && selector
                .match_expressions
                .as_ref()
                .is_none_or(|e| e.is_empty());
        let mut params = ListParams::default();
        if let Ok(Some(labels)) = selector_string(Some(selector)) {
            params = params.labels(&labels);
        }
        let api: Api<Namespace> = Api::all(self.watchers.client().clone());
        let list = api
            .list(&params)
            .await
            .map_err(ApiServerSourceError::Namespaces)?;
        let mut names: Vec<String> = list
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        names.sort();
        if all {
            Ok((Namespaces::All, names))
        } else {
            Ok((Namespaces::Some(names.clone()), names))
        }
    }

    async fn reconcile_source(
        &self,
        source: Arc<ApiServerSource>,
        ns: String,
        name: String,
    ) -> Result<Action, ApiServerSourceError> {
        if source.metadata.deletion_timestamp.is_some() {
            if has_finalizer(&*source, API_SERVER_SOURCE_FINALIZER) {
                self.watchers.stop(&ns, &name);
                set_finalizer(&*self.sources, &*source, API_SERVER_SOURCE_FINALIZER, false).await?;
                debug!("watches stopped");
            }
            return Ok(Action::await_change());
        }
        if !has_finalizer(&*source, API_SERVER_SOURCE_FINALIZER) {
            set_finalizer(&*self.sources, &*source, API_SERVER_SOURCE_FINALIZER, true).await?;
            return Ok(Action::await_change());
        }
        let mut status: ApiServerSourceStatus = source.status.clone().unwrap_or_default();
        status.source.status.observed_generation = source.metadata.generation;
        let mode = source.spec.event_mode();
        status.source.ce_attributes = mode
            .map(|m| ce_attributes(m, self.watchers.api_server_url()))
            .unwrap_or_default();
        let set = ApiServerSource::condition_set();
        let mut conditions = std::mem::take(&mut status.source.status.conditions);
        let mut m = set.manage(&mut conditions);
        m.initialize();
        let mut requeue = None;
        match resolve_destination(&*self.resolver, &source.spec.source.sink, &ns).await {
            Err(e) => {
                status.source.sink_uri = None;
                m.mark_false(
                    ApiServerSource::CONDITION_SINK_PROVIDED,
                    "NotFound",
                    &format!("Couldn't get Sink URI: {e}"),
                );
                if self.watchers.stop(&ns, &name) {
                    debug!("watches stopped: the sink does not resolve");
                }
                m.mark_unknown(
                    ApiServerSource::CONDITION_DEPLOYED,
                    "SinkNotResolved",
                    "The watches run once the sink resolves.",
                );
                requeue = Some(RECHECK);
            }
            Ok(sink) => {
                m.mark_true(ApiServerSource::CONDITION_SINK_PROVIDED);
                status.source.sink_uri = Some(sink.clone());
                match mode {
                    None => {
                        self.watchers.stop(&ns, &name);
                        m.mark_false(
                            ApiServerSource::CONDITION_DEPLOYED,
                            "InvalidMode",
                            &format!(
                                "mode {:?} is neither Reference nor Resource",
                                source.spec.mode
                            ),
                        );
                    }
                    Some(mode) => {
                        let (namespaces, listed) = match self.namespaces(&source, &ns).await {
                            Ok(found) => found,
                            Err(e) => {
                                drop(m);
                                return Err(e);
                            }
                        };
                        status.namespaces = listed;
                        let states = self.watchers.ensure(&source, mode, &sink, &namespaces);
                        let states = wait_listed(states, self.sync_timeout).await;
                        requeue = mark_watches(&mut m, &states);
                    }
                }
            }
        }
        drop(m);
        status.source.status.conditions = conditions;
        if source.status.as_ref() != Some(&status) {
            let mut updated = (*source).clone();
            updated.status = Some(status);
            match self.sources.replace_status(&updated).await {
                Ok(_) => {}
                // A newer version exists; its watch event reconciles again.
                Err(e) if e.is_conflict() => {
                    return Ok(Action::requeue_after(Duration::from_millis(50)));
                }
                Err(e) if e.is_not_found() => return Ok(Action::await_change()),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(requeue.map_or_else(Action::await_change, Action::requeue_after))
    }
}

/// Waits up to `timeout` for every watch to leave [`WatchState::Starting`];
/// returns the states then.
async fn wait_listed(
    mut states: Vec<watch::Receiver<WatchState>>,
    timeout: Duration,
) -> Vec<WatchState> {
    let waits = states.iter_mut().map(|rx| async move {
        let _ = rx.wait_for(|s| *s != WatchState::Starting).await;
    });
    let _ = tokio::time::timeout(timeout, futures::future::join_all(waits)).await;
    states.iter().map(|rx| rx.borrow().clone()).collect()
}

/// Marks `SufficientPermissions` and `Deployed` from the watches' states;
/// a requeue delay when they are not all listed.
fn mark_watches(
    m: &mut knative_core::condition::ConditionManager<'_>,
    states: &[WatchState],
) -> Option<Duration> {
    let forbidden: Vec<&str> = states
        .iter()
        .filter_map(|s| match s {
            WatchState::Forbidden(message) => Some(message.as_str()),
            _ => None,
        })
        .collect();
    let failed: Vec<&str> = states
        .iter()
        .filter_map(|s| match s {
            WatchState::Failed(message) => Some(message.as_str()),
            _ => None,
        })
        .collect();
    let starting = states.contains(&WatchState::Starting);
    if forbidden.is_empty() {
        if starting {
            m.mark_unknown(
                ApiServerSource::CONDITION_SUFFICIENT_PERMISSIONS,
                "Starting",
                "Waiting for the first list of the watched resources.",
            );
        } else {
            m.mark_true(ApiServerSource::CONDITION_SUFFICIENT_PERMISSIONS);
        }
    } else {
        m.mark_false(
            ApiServerSource::CONDITION_SUFFICIENT_PERMISSIONS,
            "InsufficientPermissions",
            &format!(
                "The operator cannot get, list and watch the resources (its ClusterRole must allow them): {}",
                forbidden.join("; ")
            ),
        );
    }
    if !failed.is_empty() {
        m.mark_false(
            ApiServerSource::CONDITION_DEPLOYED,
            "WatchFailed",
            &failed.join("; "),
        );
        Some(RECHECK)
    } else if !forbidden.is_empty() {
        m.mark_false(
            ApiServerSource::CONDITION_DEPLOYED,
            "InsufficientPermissions",
            "The watches retry until the operator may list the resources.",
        );
        Some(RECHECK)
    } else if starting {
        m.mark_unknown(
            ApiServerSource::CONDITION_DEPLOYED,
            "Starting",
            "Waiting for the first list of the watched resources.",
        );
        Some(RECHECK)
    } else {
        m.mark_true(ApiServerSource::CONDITION_DEPLOYED);
        None
    }
}

#[async_trait]
impl Reconciler<ApiServerSource> for ApiServerSourceReconciler {
    type Error = ApiServerSourceError;

    async fn reconcile(
        &self,
        source: Arc<ApiServerSource>,
    ) -> Result<Action, ApiServerSourceError> {
        let ns = source.metadata.namespace.clone().unwrap_or_default();
        let name = source.metadata.name.clone().unwrap_or_default();
        let span = info_span!("reconcile_api_server_source", namespace = %ns, name = %name);
        self.reconcile_source(source, ns, name)
            .instrument(span)
            .await
    }
}

/// The ApiServerSource controller the operator runs: watches through
/// `client`, events with `source` `api_server_url` (the client's cluster
/// URL; [`DEFAULT_API_SERVER_URL`] when empty), sinks resolved by
/// `resolver`.
pub fn controller(
    client: Client,
    sources: Arc<dyn Objects<ApiServerSource>>,
    resolver: Arc<dyn AddressResolver>,
    api_server_url: &str,
) -> Controller<ApiServerSource, ApiServerSourceReconciler> {
    let url = if api_server_url.is_empty() {
        DEFAULT_API_SERVER_URL
    } else {
        api_server_url.trim_end_matches('/')
    };
    ApiServerSourceReconciler::new(sources, resolver, ApiServerWatchers::new(client, url))
        .into_controller()
}

#[cfg(test)]
mod tests;
