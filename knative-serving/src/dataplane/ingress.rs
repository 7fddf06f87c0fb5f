//! [`Dataplane`]: the ingress, with the activator and per-replica
//! queue-proxies behind it (`specs/SERVING.md §2` hosts and tags, `§4`).
//!
//! **Routing.** A request's `Host` (without port, case-insensitive) is
//! looked up among the hostnames of every Route in the
//! [`RoutingTable`]: the public host, the cluster-local host and its short
//! forms (`<route>.<ns>.svc`, `<route>.<ns>`), and each tag's hosts. With
//! [`DataplaneConfig::tag_header_routing`] on (`config-features`
//! `tag-header-based-routing`), a request to a route's host carrying
//! `Knative-Serving-Tag: <tag>` is served by that tag's target (an unknown
//! tag falls back to the route's split). A request naming a revision with
//! `Knative-Serving-Revision` and `Knative-Serving-Namespace` goes to that
//! revision, as the activator does. Unknown hosts get a 404 that names the
//! host.
//!
//! **The weighted pick** walks a golden-ratio (Weyl) sequence over the
//! percentages: deterministic, lock-free, and within two requests of the
//! configured split from the first request on (a 90/10 split is exact to
//! ±1.5 requests at any count up to 20 000).
//!
//! **Per revision**, requests go straight to a ready replica's
//! queue-proxy while the autoscaler keeps the revision in Serve mode, and
//! through the activator's [`Throttler`] otherwise (at zero, or when the
//! burst capacity is short): the request is counted in the activator's
//! stats (time spent waiting included), the autoscaler is poked when no
//! replica is ready, and the request waits for capacity and a replica
//! slot. Either way the revision's [`Timeouts`] apply (504), and a request
//! that could not even be sent (the replica is being stopped) is tried on
//! another replica.
//!
//! **Metrics.** Every second the data plane reports each revision's
//! figures to the [`Autoscaler`]: for each replica, what its queue-proxy
//! saw minus what the activator proxied to it, plus the activator's own
//! counts — the revision-wide totals §3.1 describes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use knative_core::store::Objects;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info_span, warn};

use super::activator::{DEFAULT_QUEUE_DEPTH, Destination, Replica, Throttler};
use super::queue_proxy::{Holding, ProxyError, QueueProxy, QueueProxyConfig, Readiness};
use super::server::{Peer, Server, ServerLimits, forward_error_response};
use super::stats::RequestStats;
use super::upstream::{ForwardError, Upstream};
use super::{Body, Timeouts, headers, text_response};
use crate::api::Revision;
use crate::autoscaling::autoscaler::Autoscaler;
use crate::backend::{Endpoint, WorkloadBackend, WorkloadKey};
use crate::traffic::{RoutingTable, TrafficTable, WeightedRevision};

/// How often the data plane reports metrics to the autoscaler.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// The fractional part of the golden ratio, for the weighted pick.
const GOLDEN: f64 = 0.618_033_988_749_894_9;
/// Pokes for one revision are at least this far apart.
const POKE_INTERVAL: Duration = Duration::from_millis(100);

/// How the data plane reaches a revision's replicas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplicaMode {
    /// One in-process queue-proxy per ready replica, which forwards to the
    /// replica's address (the embedded platform).
    #[default]
    InProcessQueueProxy,
    /// Replica addresses are reached over HTTP as they are (a queue-proxy
    /// sidecar, or the app itself with the activator enforcing
    /// `containerConcurrency`).
    Direct,
}

/// How a [`Dataplane`] runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Limits on clients of the ingress.
    pub limits: ServerLimits,
    /// `tag-header-based-routing` (off by default, as upstream).
    pub tag_header_routing: bool,
    /// How many requests may wait in the activator per revision.
    pub activator_queue_depth: usize,
    /// How replicas are reached.
    pub replicas: ReplicaMode,
    /// Whether clients may pick a revision with `Knative-Serving-Revision`
    /// and `Knative-Serving-Namespace` (only for an ingress in front of
    /// this one, such as a cluster's gateway; off by default, and the
    /// headers are then removed).
    pub trust_routing_headers: bool,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            limits: ServerLimits::default(),
            tag_header_routing: false,
            activator_queue_depth: DEFAULT_QUEUE_DEPTH,
            replicas: ReplicaMode::default(),
            trust_routing_headers: false,
        }
    }
}

/// The ingress, activator and queue-proxies of a set of routes. Cheap to
/// clone; background tasks stop when the last clone is dropped.
#[derive(Clone)]
pub struct Dataplane {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane").finish_non_exhaustive()
    }
}

struct Inner {
    config: DataplaneConfig,
    hosts: RwLock<Arc<HostIndex>>,
    revisions: RwLock<HashMap<WorkloadKey, Arc<RevisionPath>>>,
    backend: Arc<dyn WorkloadBackend>,
    revision_store: Arc<dyn Objects<Revision>>,
    autoscaler: Option<Autoscaler>,
    upstream: Upstream,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }
}

/// A split of traffic between revisions.
#[derive(Debug)]
struct Split {
    /// Revisions with cumulative percentages.
    targets: Vec<(WorkloadKey, f64)>,
    total: f64,
    counter: AtomicU64,
}

impl Split {
    fn new(namespace: &str, targets: &[WeightedRevision]) -> Arc<Split> {
        let mut total = 0.0;
        let targets = targets
            .iter()
            .filter(|t| t.percent > 0)
            .map(|t| {
                total += t.percent as f64;
                (WorkloadKey::new(namespace, t.revision.clone()), total)
            })
            .collect();
        Arc::new(Split {
            targets,
            total,
            counter: AtomicU64::new(0),
        })
    }

    fn pick(&self) -> Option<&WorkloadKey> {
        if self.targets.len() == 1 {
            return self.targets.first().map(|(k, _)| k);
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let x = (n as f64 * GOLDEN).fract() * self.total;
        self.targets
            .iter()
            .find(|(_, cumulative)| x < *cumulative)
            .or(self.targets.last())
            .map(|(k, _)| k)
    }
}

/// What one hostname serves.
#[derive(Debug)]
struct HostRoute {
    split: Arc<Split>,
    /// The route's tags, for tag-header routing.
    tags: Arc<HashMap<String, Arc<Split>>>,
}

#[derive(Debug, Default)]
struct HostIndex {
    hosts: HashMap<String, Arc<HostRoute>>,
}

impl HostIndex {
    /// Every revision some host sends traffic to (main splits and tags).
    fn revisions(&self) -> std::collections::HashSet<WorkloadKey> {
        self.hosts
            .values()
            .flat_map(|r| {
                r.split
                    .targets
                    .iter()
                    .chain(r.tags.values().flat_map(|s| s.targets.iter()))
                    .map(|(k, _)| k.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn build(
        tables: &std::collections::BTreeMap<knative_core::store::ObjectKey, TrafficTable>,
    ) -> Self {
        let mut hosts = HashMap::new();
        for table in tables.values() {
            let ns = table.namespace.as_str();
            let tags: Arc<HashMap<String, Arc<Split>>> = Arc::new(
                table
                    .tags
                    .iter()
                    .map(|t| (t.tag.clone(), Split::new(ns, &t.targets)))
                    .collect(),
            );
            let main = Arc::new(HostRoute {
                split: Split::new(ns, &table.targets),
                tags: Arc::clone(&tags),
            });
            for host in host_forms(&table.host, &table.cluster_local_host) {
                hosts.insert(host, Arc::clone(&main));
            }
            for tag in &table.tags {
                let route = Arc::new(HostRoute {
                    split: tags
                        .get(&tag.tag)
                        .cloned()
                        .unwrap_or_else(|| Split::new(ns, &tag.targets)),
                    tags: Arc::clone(&tags),
                });
                for host in host_forms(&tag.host, &tag.cluster_local_host) {
                    hosts.insert(host, Arc::clone(&route));
                }
            }
        }
        HostIndex { hosts }
    }
}

/// A route's hostnames: public, cluster-local and the short forms.
fn host_forms(public: &str, cluster_local: &str) -> Vec<String> {
    let mut forms = Vec::new();
    if !public.is_empty() {
        forms.push(public.to_ascii_lowercase());
    }
    if !cluster_local.is_empty() {
        let local = cluster_local.to_ascii_lowercase();
        if let Some(idx) = local.find(".svc.") {
            forms.push(local[..idx + 4].to_owned());
            forms.push(local[..idx].to_owned());
        }
        forms.push(local);
    }
    forms
}

/// The host a request is for, lower case and without the port.
fn request_host(request: &Request<Body>) -> Option<String> {
    let raw = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().host())?;
    let host = if raw.starts_with('[') {
        // An IPv6 literal: keep the brackets, drop the port.
        raw.find(']').map_or(raw, |end| &raw[..=end])
    } else {
        raw.split(':').next().unwrap_or(raw)
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

/// A revision's part of the data plane.
struct RevisionPath {
    key: WorkloadKey,
    cc: usize,
    timeouts: Timeouts,
    throttler: Throttler,
    /// The activator's stats for this revision.
    stats: Arc<RequestStats>,
    replicas: RwLock<Arc<Vec<Replica>>>,
    proxies: Mutex<HashMap<(String, SocketAddr), Arc<QueueProxy>>>,
    rr: AtomicUsize,
    activator_in_path: Arc<AtomicBool>,
    /// Whether the flag follows the autoscaler (else: only at zero).
    scaled: bool,
    last_poke: Mutex<Option<Instant>>,
    last_report: Mutex<Instant>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for RevisionPath {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

impl Dataplane {
    /// A data plane serving the routes `routing` publishes, reaching
    /// replicas through `backend`'s ready endpoints, reading revisions'
    /// `containerConcurrency` and timeouts from `revisions`, and reporting
    /// to (and taking modes from) `autoscaler`. Must run inside a tokio
    /// runtime.
    pub fn new(
        config: DataplaneConfig,
        routing: &RoutingTable,
        backend: Arc<dyn WorkloadBackend>,
        revisions: Arc<dyn Objects<Revision>>,
        autoscaler: Option<Autoscaler>,
    ) -> Self {
        let inner = Arc::new(Inner {
            config,
            hosts: RwLock::new(Arc::new(HostIndex::build(&routing.snapshot()))),
            revisions: RwLock::new(HashMap::new()),
            backend,
            revision_store: revisions,
            autoscaler,
            upstream: Upstream::new(),
            tasks: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&inner);
        let mut routes = routing.subscribe();
        let watcher = tokio::spawn(async move {
            loop {
                let tables = routes.borrow_and_update().clone();
                let Some(inner) = weak.upgrade() else { return };
                let index = HostIndex::build(&tables);
                let wanted = index.revisions();
                *inner.hosts.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(index);
                inner.retain_paths(&wanted);
                for key in wanted {
                    Inner::path(&inner, &key).await;
                }
                drop(inner);
                if routes.changed().await.is_err() {
                    return;
                }
            }
        });
        let weak = Arc::downgrade(&inner);
        let reporter = tokio::spawn(async move {
            let mut interval = tokio::time::interval(REPORT_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                inner.report();
                let routed = inner.routed();
                inner.retain_paths(&routed);
            }
        });
        inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend([watcher, reporter]);
        Dataplane { inner }
    }

    /// Serves the ingress on `listener` until `shutdown`, then drains.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        let this = self.clone();
        Server::new(self.inner.config.limits)
            .serve(
                listener,
                move |request, peer| {
                    let this = this.clone();
                    async move { this.handle(request, peer).await }
                },
                shutdown,
            )
            .await
    }

    /// Answers one request as the ingress does.
    pub async fn handle(&self, mut request: Request<Body>, peer: Peer) -> Response<Body> {
        let started = Instant::now();
        // Only the data plane says a request was proxied by the activator.
        request.headers_mut().remove(headers::PROXY_REQUEST);
        if !self.inner.config.trust_routing_headers {
            request.headers_mut().remove(headers::REVISION);
            request.headers_mut().remove(headers::NAMESPACE);
        }
        let h = request.headers();
        if headers::is_probe(h, headers::PROBE_ACTIVATOR) {
            return super::exact_response(StatusCode::OK, headers::PROBE_ACTIVATOR);
        }
        if headers::is_probe(h, "probe") {
            let mut response = super::exact_response(StatusCode::OK, "probe");
            if let Some(hash) = h.get(headers::HASH) {
                response.headers_mut().insert(headers::HASH, hash.clone());
            }
            return response;
        }
        let key = match self.inner.route(&request) {
            Ok(key) => key,
            Err(response) => return response,
        };
        request.headers_mut().remove(headers::REVISION);
        request.headers_mut().remove(headers::NAMESPACE);
        let span = info_span!("request", revision = %key, method = %request.method(), path = %request.uri().path(), remote = %peer.remote);
        let Some(path) = Inner::path(&self.inner, &key).await else {
            return text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format_args!("revision {key} is not known to the data plane"),
            );
        };
        path.serve(&self.inner, request, started)
            .instrument(span)
            .await
    }

    /// How many requests wait in the activator for `key`.
    pub fn waiting(&self, key: &WorkloadKey) -> usize {
        self.inner
            .revisions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .map_or(0, |p| p.throttler.waiting())
    }
}

impl Inner {
    /// The revision a request is for, or the response to give.
    #[allow(clippy::result_large_err)]
    fn route(&self, request: &Request<Body>) -> Result<WorkloadKey, Response<Body>> {
        let h = request.headers();
        if let (Some(revision), Some(namespace)) = (
            headers::get(h, headers::REVISION),
            headers::get(h, headers::NAMESPACE),
        ) {
            return Ok(WorkloadKey::new(namespace, revision));
        }
        let Some(host) = request_host(request) else {
            return Err(text_response(
                StatusCode::BAD_REQUEST,
                "the request has no Host header",
            ));
        };
        let index = Arc::clone(&self.hosts.read().unwrap_or_else(PoisonError::into_inner));
        let Some(route) = index.hosts.get(&host) else {
            return Err(text_response(
                StatusCode::NOT_FOUND,
                format_args!("no Route serves host {host:?}"),
            ));
        };
        let mut split = &route.split;
        if self.config.tag_header_routing
            && let Some(tag) = headers::get(h, headers::TAG)
            && let Some(tagged) = route.tags.get(tag)
        {
            split = tagged;
        }
        split.pick().cloned().ok_or_else(|| {
            text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format_args!("host {host:?} has no revision with traffic"),
            )
        })
    }

    /// The path of `key`, created on first use (reads the revision's
    /// `containerConcurrency` and timeouts, follows its ready replicas).
    async fn path(self: &Arc<Self>, key: &WorkloadKey) -> Option<Arc<RevisionPath>> {
        if let Some(path) = self
            .revisions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return Some(Arc::clone(path));
        }
        let revision = match self
            .revision_store
            .get(Some(&key.namespace), &key.revision)
            .await
        {
            Ok(r) => r,
            Err(error) => {
                debug!(revision = %key, %error, "revision not found");
                return None;
            }
        };
        let cc = usize::try_from(revision.spec.container_concurrency.unwrap_or(0)).unwrap_or(0);
        let (activator_in_path, scaled) = match &self.autoscaler {
            Some(a) => (a.activator_flag(key), true),
            None => (Arc::new(AtomicBool::new(true)), false),
        };
        let path = Arc::new(RevisionPath {
            key: key.clone(),
            cc,
            timeouts: Timeouts::of(&revision),
            throttler: Throttler::new(cc, self.config.activator_queue_depth),
            stats: Arc::new(RequestStats::new(Instant::now())),
            replicas: RwLock::new(Arc::new(Vec::new())),
            proxies: Mutex::new(HashMap::new()),
            rr: AtomicUsize::new(0),
            activator_in_path,
            scaled,
            last_poke: Mutex::new(None),
            last_report: Mutex::new(Instant::now()),
            task: Mutex::new(None),
        });
        let mut revisions = self
            .revisions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = revisions.get(key) {
            return Some(Arc::clone(existing));
        }
        let task = tokio::spawn(follow_endpoints(
            Arc::downgrade(self),
            Arc::downgrade(&path),
        ));
        *path.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        revisions.insert(key.clone(), Arc::clone(&path));
        Some(path)
    }

    /// Reports every revision's last second to the autoscaler.
    fn report(&self) {
        let Some(autoscaler) = &self.autoscaler else {
            return;
        };
        let now = Instant::now();
        let paths: Vec<Arc<RevisionPath>> = self
            .revisions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for path in paths {
            let elapsed = {
                let mut last = path
                    .last_report
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let e = now.saturating_duration_since(*last).as_secs_f64();
                *last = now;
                e
            };
            let activator = path.stats.report(now);
            let mut concurrency = activator.average_concurrency;
            let mut requests = activator.request_count;
            let proxies: Vec<Arc<QueueProxy>> = path
                .proxies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .cloned()
                .collect();
            for proxy in proxies {
                let r = proxy.report(now);
                concurrency += (r.average_concurrency - r.average_proxied_concurrency).max(0.0);
                requests += (r.request_count - r.proxied_request_count).max(0.0);
            }
            // A path created moments ago has not seen a whole second.
            let rps = requests / elapsed.max(REPORT_INTERVAL.as_secs_f64());
            autoscaler.record(&path.key, concurrency, rps);
        }
        // Revisions being scaled that no route sends to: nothing reaches
        // them, which the autoscaler must see as zeros to scale them down.
        let served: std::collections::HashSet<WorkloadKey> = self
            .revisions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        for key in autoscaler.revisions() {
            if !served.contains(&key) {
                autoscaler.record(&key, 0.0, 0.0);
            }
        }
    }

    /// Keeps the paths of revisions that are routed (`routed`) or still
    /// being scaled (their replicas keep their queue-proxies, breakers
    /// and stats while traffic moves away and back); drops the others.
    fn retain_paths(&self, routed: &std::collections::HashSet<WorkloadKey>) {
        let scaled: std::collections::HashSet<WorkloadKey> = self
            .autoscaler
            .as_ref()
            .map(|a| a.revisions().into_iter().collect())
            .unwrap_or_default();
        self.revisions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|k, _| routed.contains(k) || scaled.contains(k));
    }

    /// Revisions the routes send traffic to.
    fn routed(&self) -> std::collections::HashSet<WorkloadKey> {
        self.hosts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .revisions()
    }

    fn destinations(&self, path: &RevisionPath, ready: &[Endpoint]) -> Vec<Replica> {
        match self.config.replicas {
            ReplicaMode::Direct => ready
                .iter()
                .map(|e| Replica {
                    name: e.replica.clone(),
                    destination: Destination::Http(e.address),
                })
                .collect(),
            ReplicaMode::InProcessQueueProxy => {
                let mut proxies = path.proxies.lock().unwrap_or_else(PoisonError::into_inner);
                let keep: std::collections::HashSet<(String, SocketAddr)> = ready
                    .iter()
                    .map(|e| (e.replica.clone(), e.address))
                    .collect();
                proxies.retain(|(name, address), proxy| {
                    let stays = keep.contains(&(name.clone(), *address));
                    if !stays {
                        proxy.drain();
                        self.upstream.forget(*address);
                    }
                    stays
                });
                ready
                    .iter()
                    .map(|e| {
                        let proxy = proxies
                            .entry((e.replica.clone(), e.address))
                            .or_insert_with(|| {
                                Arc::new(QueueProxy::new(
                                    QueueProxyConfig {
                                        app: e.address,
                                        container_concurrency: path.cc,
                                        timeouts: path.timeouts,
                                        readiness: Readiness::Tcp,
                                        probe_timeout: Duration::from_secs(1),
                                    },
                                    self.upstream.clone(),
                                ))
                            });
                        Replica {
                            name: e.replica.clone(),
                            destination: Destination::QueueProxy(Arc::clone(proxy)),
                        }
                    })
                    .collect()
            }
        }
    }
}

/// Keeps a revision's replicas in step with the backend's ready endpoints.
async fn follow_endpoints(inner: Weak<Inner>, path: Weak<RevisionPath>) {
    let mut backoff = Duration::from_millis(20);
    loop {
        let (Some(i), Some(p)) = (inner.upgrade(), path.upgrade()) else {
            return;
        };
        let status = i.backend.status(&p.key);
        drop((i, p));
        let mut status = match status {
            Ok(s) => s,
            Err(_) => {
                // Not ensured yet (or cannot run at all): look again later.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(20);
        loop {
            let ready = status.borrow_and_update().ready.clone();
            let (Some(i), Some(p)) = (inner.upgrade(), path.upgrade()) else {
                return;
            };
            let replicas = i.destinations(&p, &ready);
            debug!(revision = %p.key, ready = replicas.len(), "ready replicas changed");
            if !p.scaled {
                p.activator_in_path
                    .store(replicas.is_empty(), Ordering::SeqCst);
            }
            *p.replicas.write().unwrap_or_else(PoisonError::into_inner) =
                Arc::new(replicas.clone());
            p.throttler.update(replicas);
            drop((i, p));
            if status.changed().await.is_err() {
                break;
            }
        }
    }
}

impl RevisionPath {
    async fn serve(
        self: Arc<Self>,
        inner: &Arc<Inner>,
        request: Request<Body>,
        started: Instant,
    ) -> Response<Body> {
        let timeouts = self.timeouts;
        let inner = Arc::clone(inner);
        super::timeout::with_timeouts(timeouts, started.into(), async move {
            let mut request = request;
            // Direct replicas are only counted by the activator: it stays in the path.
            let direct = inner.config.replicas == ReplicaMode::Direct;
            if !direct && !self.activator_in_path.load(Ordering::Relaxed) {
                let replicas =
                    Arc::clone(&self.replicas.read().unwrap_or_else(PoisonError::into_inner));
                for _ in 0..replicas.len() {
                    let i = self.rr.fetch_add(1, Ordering::Relaxed) % replicas.len();
                    match send(&inner.upstream, &replicas[i].destination, request).await {
                        Ok(response) => return response,
                        Err(Sent::Unsent(back)) => {
                            request = *back;
                            self.evict(&replicas[i].name);
                        }
                        Err(Sent::Response(response)) => return response,
                    }
                }
            }
            self.via_activator(&inner, request).await
        })
        .await
    }

    /// The activator's path: count, poke when at zero, wait for capacity,
    /// send.
    async fn via_activator(&self, inner: &Inner, mut request: Request<Body>) -> Response<Body> {
        let in_flight = self.stats.track(false);
        if self.throttler.replicas() == 0 {
            self.poke(inner);
        }
        request.headers_mut().insert(
            headers::PROXY_REQUEST,
            HeaderValue::from_static(headers::PROXY_ACTIVATOR),
        );
        let mut backoff = Duration::from_millis(5);
        loop {
            let slot = match self.throttler.acquire().await {
                Ok(slot) => slot,
                Err(e) => return text_response(StatusCode::SERVICE_UNAVAILABLE, e),
            };
            let destination = slot.replica().destination.clone();
            let name = slot.replica().name.clone();
            match send(&inner.upstream, &destination, request).await {
                Ok(response) => {
                    return response.map(|body| {
                        super::boxed(Holding {
                            body,
                            _held: (slot, in_flight),
                        })
                    });
                }
                Err(Sent::Unsent(back)) => {
                    request = *back;
                    drop(slot);
                    // The replica is going away: stop picking it until the
                    // backend reports again, and retry (bounded by the
                    // revision's timeout) on another one.
                    self.evict(&name);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                    if self.throttler.replicas() == 0 {
                        self.poke(inner);
                    }
                }
                Err(Sent::Response(response)) => return response,
            }
        }
    }

    /// Stops sending to a replica that refused a connection until the
    /// backend reports its replicas again.
    fn evict(&self, name: &str) {
        self.throttler.remove_replica(name);
        let mut replicas = self
            .replicas
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if replicas.iter().any(|r| r.name == name) {
            *replicas = Arc::new(
                replicas
                    .iter()
                    .filter(|r| r.name != name)
                    .cloned()
                    .collect(),
            );
        }
    }

    fn poke(&self, inner: &Inner) {
        let Some(autoscaler) = &inner.autoscaler else {
            return;
        };
        let now = Instant::now();
        let mut last = self
            .last_poke
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|t| now.duration_since(t) < POKE_INTERVAL) {
            return;
        }
        *last = Some(now);
        drop(last);
        debug!(revision = %self.key, "no ready replica: poking the autoscaler");
        autoscaler.poke(&self.key);
    }
}

/// Why [`send`] did not return the app's response.
enum Sent {
    Unsent(Box<Request<Body>>),
    Response(Response<Body>),
}

async fn send(
    upstream: &Upstream,
    destination: &Destination,
    request: Request<Body>,
) -> Result<Response<Body>, Sent> {
    match destination {
        Destination::QueueProxy(proxy) => match proxy.proxy(request).await {
            Ok(response) => Ok(response),
            Err(ProxyError::Unsent(request, error)) => {
                debug!(app = %proxy.config().app, %error, "replica refused the request");
                Err(Sent::Unsent(request))
            }
            Err(ProxyError::Response(response)) => Err(Sent::Response(response)),
        },
        Destination::Http(address) => match upstream.send(*address, request).await {
            Ok(response) => Ok(response),
            Err(ForwardError::Unsent { request, error }) => {
                debug!(%address, %error, "replica refused the request");
                Err(Sent::Unsent(request))
            }
            Err(ForwardError::Failed(error)) => {
                warn!(%address, %error, "request failed");
                Err(Sent::Response(forward_error_response(&error, "activator")))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::TagRoute;

    fn table(targets: &[(&str, i64)]) -> TrafficTable {
        TrafficTable {
            namespace: "default".into(),
            route: "hello".into(),
            host: "hello.default.example.com".into(),
            cluster_local_host: "hello.default.svc.cluster.local".into(),
            targets: targets
                .iter()
                .map(|(r, p)| WeightedRevision {
                    revision: (*r).into(),
                    percent: *p,
                })
                .collect(),
            tags: vec![TagRoute {
                tag: "canary".into(),
                host: "canary-hello.default.example.com".into(),
                cluster_local_host: "canary-hello.default.svc.cluster.local".into(),
                targets: vec![WeightedRevision {
                    revision: "hello-2".into(),
                    percent: 100,
                }],
            }],
        }
    }

    #[test]
    fn the_weighted_pick_converges_to_the_split() {
        for n in [10u64, 100, 1000, 2000, 12345] {
            let split = Split::new(
                "default",
                &table(&[("hello-1", 90), ("hello-2", 10)]).targets,
            );
            let mut counts = HashMap::new();
            for _ in 0..n {
                *counts
                    .entry(split.pick().expect("pick").revision.clone())
                    .or_insert(0u64) += 1;
            }
            let tenth = counts.get("hello-2").copied().unwrap_or(0);
            let expected = n as f64 * 0.1;
            assert!(
                (tenth as f64 - expected).abs() <= 2.0,
                "{n} requests: {tenth} to the 10% revision"
            );
        }
    }

    #[test]
    fn hosts_include_the_short_cluster_local_forms_and_tags() {
        let mut tables = std::collections::BTreeMap::new();
        tables.insert(
            knative_core::store::ObjectKey::namespaced("default", "hello"),
            table(&[("hello-1", 100)]),
        );
        let index = HostIndex::build(&tables);
        for host in [
            "hello.default.example.com",
            "hello.default.svc.cluster.local",
            "hello.default.svc",
            "hello.default",
            "canary-hello.default.example.com",
            "canary-hello.default",
        ] {
            assert!(index.hosts.contains_key(host), "{host}");
        }
        let canary = &index.hosts["canary-hello.default.example.com"];
        assert_eq!(
            canary.split.pick().map(|k| k.revision.as_str()),
            Some("hello-2")
        );
    }

    #[test]
    fn the_request_host_drops_the_port_and_case() {
        let request = Request::get("/")
            .header(header::HOST, "Hello.Default.Example.com:8080")
            .body(super::super::empty())
            .expect("request");
        assert_eq!(
            request_host(&request).as_deref(),
            Some("hello.default.example.com")
        );
    }
}
