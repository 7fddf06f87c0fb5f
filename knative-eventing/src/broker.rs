//! The broker data path (`specs/EVENTING.md §1.3–§1.5`): the ingress that
//! takes events for `/{namespace}/{broker}` into the broker's
//! [`EventLog`], and one dispatcher per trigger that reads the log,
//! filters, and delivers.
//!
//! **Ingress** (`POST /{namespace}/{broker}`), in upstream's order:
//! `OPTIONS` → 200 with `WebHook-Allowed-Origin: *` and
//! `WebHook-Allowed-Rate: *`; any other method but `POST` → 405 (every
//! response carries `Allow: POST, OPTIONS`); path `/` → 404; a path that
//! is not `/{namespace}/{broker}` → 400; a body and headers that are not a
//! valid CloudEvent → 400 with a body naming the problem (a body over
//! the size limit and a malformed percent-encoding included; batches are
//! refused as upstream does unless the limits allow them);
//! unknown broker → 404; then `knativearrivaltime` is set and the TTL
//! defaulted (`knativebrokerttl`: absent or not an integer → 255, else
//! minus one); TTL ≤ 0 → 400 (the event is dropped: a reply loop ends
//! here); the append → **202 only once the log has the event**, 500 if it
//! failed.
//!
//! **Dispatch**: each trigger reads the log from its own cursor, keeps up
//! to [`DispatchConfig::max_in_flight`] deliveries going, evaluates its
//! [`Filter`] (a `Fail` is done at once), removes `knativebrokerttl`,
//! delivers with the trigger's delivery options (else the broker's),
//! sends reply events back into the broker with the same TTL (so each
//! pass through a trigger costs one), and dead-letters what could not be
//! delivered. It commits its cursor up to the first event not yet done,
//! so a restart with a durable log re-delivers only unfinished events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use cloudevents::event::ExtensionValue;
use cloudevents::{AttributesReader, Event};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use tokio::sync::watch;
use tracing::{Instrument, debug, info_span, warn};

use crate::api::{DeliverySpec, RetryPolicy};
use crate::binding;
use crate::delivery::{self, Outcome, Sender, Target};
use crate::dispatcher::{self, Consumer, Delivery, Handler};
use crate::filter::Filter;
use crate::log::{Entry, EventLog, LogError, Record};

/// The TTL extension.
pub const TTL: &str = "knativebrokerttl";
/// The arrival-time extension the ingress sets.
pub const ARRIVAL_TIME: &str = "knativearrivaltime";
/// The TTL given to events that arrive without one (upstream's `MAX_TTL`).
pub const DEFAULT_MAX_TTL: i32 = 255;

/// How the ingress behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressConfig {
    /// The TTL of events that arrive without one.
    pub max_ttl: i32,
    /// Body and format limits; `limits.allow_batch` accepts
    /// `application/cloudevents-batch+json` requests (upstream answers
    /// them 400, so it is off by default).
    pub limits: binding::Limits,
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            max_ttl: DEFAULT_MAX_TTL,
            // `ce-` values are percent-decoded strictly (§7): a malformed
            // escape or one that decodes to invalid UTF-8 is a 400. Set
            // `limits.header_decoding` to `Lenient` to take raw `%` from
            // SDKs that do not percent-encode (sdk-go, sdk-java).
            limits: binding::Limits {
                allow_batch: false,
                ..binding::Limits::default()
            },
        }
    }
}

/// How dispatchers behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DispatchConfig {
    /// Deliveries in flight per trigger.
    pub max_in_flight: usize,
    /// Backoff indexing (see [`delivery::Backoff::one_based`]).
    pub one_based_backoff: bool,
    /// The per-attempt timeout when the delivery options set none (a
    /// subscriber that never answers must not hold an event forever).
    pub attempt_timeout: Option<Duration>,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            max_in_flight: 256,
            one_based_backoff: false,
            attempt_timeout: Some(Duration::from_secs(300)),
        }
    }
}

/// What a trigger's dispatcher needs.
#[derive(Clone, Debug)]
pub struct TriggerRoute {
    /// The trigger's compiled filters.
    pub filter: Filter,
    /// The subscriber's resolved URL.
    pub subscriber: String,
    /// The trigger's delivery options (`None`: the broker's).
    pub delivery: Option<DeliverySpec>,
    /// The resolved dead-letter sink URL (the trigger's, else the broker's).
    pub dead_letter_sink: Option<String>,
}

/// Why the ingress refused events.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// No such broker.
    #[error("broker {namespace}/{name} not found")]
    NotFound {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The event's TTL ran out (a loop, or too many hops).
    #[error(
        "event {id}: knativebrokerttl is {ttl}: the event went through too many triggers and is dropped"
    )]
    TtlExpired {
        /// The event's id.
        id: String,
        /// Its TTL after defaulting.
        ttl: i64,
    },
    /// The log refused the events.
    #[error(transparent)]
    Log(#[from] LogError),
}

/// An event a broker accepted, as [`Brokers::tap`] shows it.
#[derive(Clone, Debug)]
pub struct Tapped {
    /// The broker's namespace.
    pub namespace: String,
    /// The broker's name.
    pub broker: String,
    /// The event, as stored (TTL and arrival time set).
    pub event: Arc<Event>,
}

/// The key of a broker: `namespace/name`, also its log's name.
fn broker_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

struct BrokerState {
    delivery: Option<DeliverySpec>,
    dead_letter_sink: Option<String>,
    /// Its `status.address.url`, once the reconciler set it.
    address: Option<String>,
    triggers: HashMap<String, Consumer>,
}

/// One trigger's handling of a record: a [`TriggerRoute`] on its broker.
struct TriggerHandler {
    inner: std::sync::Weak<Inner>,
    log_name: String,
    route: TriggerRoute,
}

impl Handler for TriggerHandler {
    fn handle(self: Arc<Self>, record: Record) -> Delivery {
        Box::pin(async move { process(&self, record).await })
    }
}

struct Inner {
    log: Arc<dyn EventLog>,
    sender: Sender,
    /// Copies of accepted events for [`Brokers::tap`] (sent only while
    /// someone listens).
    tap: tokio::sync::broadcast::Sender<Tapped>,
    ingress: IngressConfig,
    dispatch: DispatchConfig,
    brokers: Mutex<HashMap<String, BrokerState>>,
}

/// The brokers' data plane: ingress and dispatchers. Cheap to clone;
/// when the last clone is dropped every dispatcher stops (deliveries in
/// flight are abandoned; their events stay uncommitted in the log).
#[derive(Clone)]
pub struct Brokers {
    inner: Arc<Inner>,
    _alive: Arc<Alive>,
}

/// Stops the dispatchers when the last [`Brokers`] handle goes (their
/// deliveries hold the shared state, so it would not go by itself).
struct Alive(std::sync::Weak<Inner>);

impl Drop for Alive {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            let brokers =
                std::mem::take(&mut *inner.brokers.lock().unwrap_or_else(PoisonError::into_inner));
            drop(brokers);
        }
    }
}

impl std::fmt::Debug for Brokers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Brokers").finish_non_exhaustive()
    }
}

impl Brokers {
    /// A data plane storing events in `log`, delivering with a [`Sender`]
    /// of its own.
    pub fn new(log: Arc<dyn EventLog>, ingress: IngressConfig, dispatch: DispatchConfig) -> Self {
        Brokers::with_sender(log, ingress, dispatch, Sender::new())
    }

    /// A data plane storing events in `log` and delivering with `sender`
    /// (e.g. one made by [`Sender::with_overrides`]).
    pub fn with_sender(
        log: Arc<dyn EventLog>,
        ingress: IngressConfig,
        dispatch: DispatchConfig,
        sender: Sender,
    ) -> Self {
        let inner = Arc::new(Inner {
            log,
            sender,
            tap: tokio::sync::broadcast::channel(1024).0,
            ingress,
            dispatch,
            brokers: Mutex::new(HashMap::new()),
        });
        Brokers {
            _alive: Arc::new(Alive(Arc::downgrade(&inner))),
            inner,
        }
    }

    /// Creates (or updates) broker `namespace/name` with its delivery
    /// options and resolved dead-letter sink.
    pub async fn upsert_broker(
        &self,
        namespace: &str,
        name: &str,
        delivery: Option<DeliverySpec>,
        dead_letter_sink: Option<String>,
    ) -> Result<(), LogError> {
        let key = broker_key(namespace, name);
        self.inner.log.create(&key).await?;
        let mut brokers = self
            .inner
            .brokers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let broker = brokers.entry(key).or_insert_with(|| BrokerState {
            delivery: None,
            dead_letter_sink: None,
            address: None,
            triggers: HashMap::new(),
        });
        broker.delivery = delivery;
        broker.dead_letter_sink = dead_letter_sink;
        Ok(())
    }

    /// Records the URL broker `namespace/name` is addressed at (its
    /// `status.address.url`): a reply that cannot be forwarded into the
    /// broker is dead-lettered with it as `knativeerrordest` (§5). Until
    /// it is known, `broker:/{namespace}/{name}` stands in. Does nothing
    /// for an unknown broker.
    pub fn set_broker_address(&self, namespace: &str, name: &str, url: &str) {
        let key = broker_key(namespace, name);
        if let Some(broker) = self
            .inner
            .brokers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&key)
        {
            broker.address = Some(url.to_owned());
        }
    }

    /// Removes a broker, its triggers' dispatchers and its log.
    pub async fn remove_broker(&self, namespace: &str, name: &str) -> Result<(), LogError> {
        let key = broker_key(namespace, name);
        let removed = self
            .inner
            .brokers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        drop(removed);
        self.inner.log.delete(&key).await
    }

    /// Follows the events every broker accepts from now on (for tools
    /// such as `knative events`; a receiver that falls more than 1024
    /// events behind skips the oldest). Costs nothing while nobody listens.
    pub fn tap(&self) -> tokio::sync::broadcast::Receiver<Tapped> {
        self.inner.tap.subscribe()
    }

    /// Whether broker `namespace/name` exists.
    pub fn has_broker(&self, namespace: &str, name: &str) -> bool {
        self.inner
            .brokers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&broker_key(namespace, name))
    }

    /// Starts (or re-programs) the dispatcher of trigger `trigger` on
    /// broker `namespace/broker`. A trigger keeps its cursor across
    /// updates.
    pub async fn upsert_trigger(
        &self,
        namespace: &str,
        broker: &str,
        trigger: &str,
        route: TriggerRoute,
    ) -> Result<(), IngressError> {
        let key = broker_key(namespace, broker);
        let consumer = format!("trigger/{trigger}");
        // Register the cursor now: events accepted after this call reach it.
        self.inner.log.committed(&key, &consumer).await?;
        let mut brokers = self
            .inner
            .brokers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(state) = brokers.get_mut(&key) else {
            return Err(IngressError::NotFound {
                namespace: namespace.to_owned(),
                name: broker.to_owned(),
            });
        };
        let route: Arc<dyn Handler> = Arc::new(TriggerHandler {
            inner: Arc::downgrade(&self.inner),
            log_name: key.clone(),
            route,
        });
        let log = Arc::clone(&self.inner.log);
        let max_in_flight = self.inner.dispatch.max_in_flight;
        Consumer::program(&mut state.triggers, trigger, route, |rx| {
            tokio::spawn(
                dispatcher::run(log, key.clone(), consumer, max_in_flight, rx)
                    .instrument(info_span!("dispatcher", broker = %key, trigger)),
            )
        });
        Ok(())
    }

    /// Stops a trigger's dispatcher and forgets its cursor.
    pub async fn remove_trigger(
        &self,
        namespace: &str,
        broker: &str,
        trigger: &str,
    ) -> Result<(), LogError> {
        let key = broker_key(namespace, broker);
        let removed = self
            .inner
            .brokers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&key)
            .and_then(|b| b.triggers.remove(trigger));
        if let Some(state) = removed {
            // Wait for the dispatcher to be gone before forgetting its
            // cursor, so that no last commit brings it back.
            state.stop().await;
        }
        self.inner
            .log
            .remove_consumer(&key, &format!("trigger/{trigger}"))
            .await
    }

    /// Takes events into broker `namespace/name`: arrival time, TTL, then
    /// the append. Returns once the log has them.
    pub async fn ingest(
        &self,
        namespace: &str,
        name: &str,
        events: Vec<Event>,
    ) -> Result<(), IngressError> {
        self.inner
            .ingest(
                namespace,
                name,
                events.into_iter().map(Entry::from).collect(),
            )
            .await
    }

    /// Serves the ingress on `listener` until `shutdown`, then lets the
    /// requests in flight finish.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        let this = self.clone();
        serve_http(listener, shutdown, move |request| {
            let this = this.clone();
            async move { this.handle(request).await }
        })
        .await
    }

    /// Answers one ingress request.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let span = info_span!("ingress", method = %parts.method, path = %parts.uri.path());
        self.handle_parts(parts, body).instrument(span).await
    }

    async fn handle_parts(
        &self,
        parts: hyper::http::request::Parts,
        body: Incoming,
    ) -> Response<Full<Bytes>> {
        if parts.method == Method::OPTIONS {
            let mut response = reply(StatusCode::OK, "");
            let h = response.headers_mut();
            h.insert(
                "webhook-allowed-origin",
                header::HeaderValue::from_static("*"),
            );
            h.insert(
                "webhook-allowed-rate",
                header::HeaderValue::from_static("*"),
            );
            return response;
        }
        if parts.method != Method::POST {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "method {} is not allowed: POST events to /{{namespace}}/{{broker}}",
                    parts.method
                ),
            );
        }
        let path = parts.uri.path();
        if path == "/" {
            return reply(
                StatusCode::NOT_FOUND,
                "POST events to /{namespace}/{broker}",
            );
        }
        let trimmed = path.strip_suffix('/').unwrap_or(path);
        let segments: Vec<&str> = trimmed
            .strip_prefix('/')
            .unwrap_or(trimmed)
            .split('/')
            .collect();
        let [namespace, name] = segments.as_slice() else {
            return reply(
                StatusCode::BAD_REQUEST,
                format!("path {path:?} is not /{{namespace}}/{{broker}}"),
            );
        };
        if namespace.is_empty() || name.is_empty() {
            return reply(
                StatusCode::BAD_REQUEST,
                format!("path {path:?} is not /{{namespace}}/{{broker}}"),
            );
        }
        let events = match read_events(&parts.headers, body, &self.inner.ingress.limits).await {
            Ok(events) => events,
            Err(response) => return response,
        };
        let headers = pass_through_headers(&parts.headers);
        let entries = events
            .into_iter()
            .map(|event| Entry {
                event,
                headers: headers.clone(),
            })
            .collect();
        match self.inner.ingest(namespace, name, entries).await {
            Ok(()) => reply(StatusCode::ACCEPTED, ""),
            Err(e @ IngressError::NotFound { .. }) => reply(StatusCode::NOT_FOUND, e.to_string()),
            Err(e @ IngressError::TtlExpired { .. }) => {
                reply(StatusCode::BAD_REQUEST, e.to_string())
            }
            Err(e @ IngressError::Log(LogError::NotFound(_))) => {
                reply(StatusCode::NOT_FOUND, e.to_string())
            }
            Err(e) => {
                warn!(error = %e, "append failed");
                reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}

/// Serves HTTP/1 on `listener` with `handle` until `shutdown`, then lets
/// the requests in flight finish (30 s at most).
pub(crate) async fn serve_http<H, F>(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
    handle: H,
) -> std::io::Result<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let handle = handle.clone();
                let mut stop = stop_rx.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let response = handle(request);
                        async move { Ok::<_, std::convert::Infallible>(response.await) }
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .header_read_timeout(Duration::from_secs(10))
                        .timer(hyper_util::rt::TokioTimer::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    let mut connection = std::pin::pin!(connection);
                    tokio::select! {
                        _ = connection.as_mut() => {}
                        () = async { let _ = stop.wait_for(|s| *s).await; } => {
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
                        }
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.shutdown().await;
    }
    Ok(())
}

/// Reads a request's body (within the limits) and the events in it; the
/// error is the response to send: 400 naming the problem for anything
/// that is not valid CloudEvents, a body over the limit included (§1.3,
/// §7).
pub(crate) async fn read_events(
    headers: &hyper::HeaderMap,
    body: Incoming,
    limits: &binding::Limits,
) -> Result<Vec<Event>, Response<Full<Bytes>>> {
    let body = match Limited::new(body, limits.max_body_bytes).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let too_large = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return Err(if too_large {
                reply(
                    StatusCode::BAD_REQUEST,
                    format!("body: larger than {} bytes", limits.max_body_bytes),
                )
            } else {
                reply(StatusCode::BAD_REQUEST, format!("body: {e}"))
            });
        }
    };
    match binding::read_request(headers, &body, limits) {
        Ok((_, events)) => Ok(events),
        Err(e) => Err(reply(StatusCode::BAD_REQUEST, e.to_string())),
    }
}

/// A plain-text response with `Allow: POST, OPTIONS`.
pub(crate) fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let body: Bytes = body.into();
    let mut response = Response::new(Full::new(if body.is_empty() {
        body
    } else {
        let mut b = body.to_vec();
        b.push(b'\n');
        Bytes::from(b)
    }));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::ALLOW,
        header::HeaderValue::from_static("POST, OPTIONS"),
    );
    if status != StatusCode::ACCEPTED && status != StatusCode::OK {
        h.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    response
}

/// The request headers that travel with an event to its subscribers:
/// `x-request-id`, `retry-after`, `knative-*` and `x-b3-*`
/// (`specs/EVENTING.md §1.3`).
pub fn pass_through_headers(headers: &hyper::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| {
            let n = name.as_str();
            n == "x-request-id"
                || n == "retry-after"
                || n.starts_with("knative-")
                || n.starts_with("x-b3-")
        })
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect()
}

/// The TTL of an event as the ingress defaults it: absent or not an
/// integer → `max_ttl`, else minus one (floor 0).
pub fn defaulted_ttl(event: &Event, max_ttl: i32) -> i64 {
    let current = match event.extension(TTL) {
        Some(ExtensionValue::Integer(i)) => i32::try_from(*i).ok().map(i64::from),
        Some(ExtensionValue::String(s)) => s.trim().parse::<i32>().ok().map(i64::from),
        _ => None,
    };
    match current {
        None => i64::from(max_ttl),
        Some(ttl) => (ttl - 1).max(0),
    }
}

impl Inner {
    async fn ingest(
        &self,
        namespace: &str,
        name: &str,
        mut events: Vec<Entry>,
    ) -> Result<(), IngressError> {
        let key = broker_key(namespace, name);
        if !self
            .brokers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&key)
        {
            return Err(IngressError::NotFound {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            });
        }
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        for Entry { event, .. } in &mut events {
            let ttl = defaulted_ttl(event, self.ingress.max_ttl);
            if ttl <= 0 {
                return Err(IngressError::TtlExpired {
                    id: event.id().to_owned(),
                    ttl,
                });
            }
            event.set_extension(TTL, ttl);
            event.set_extension(ARRIVAL_TIME, now.clone());
        }
        let tapped: Vec<Arc<Event>> = if self.tap.receiver_count() > 0 {
            events.iter().map(|e| Arc::new(e.event.clone())).collect()
        } else {
            Vec::new()
        };
        self.log.append(&key, events).await?;
        for event in tapped {
            let _ = self.tap.send(Tapped {
                namespace: namespace.to_owned(),
                broker: name.to_owned(),
                event,
            });
        }
        Ok(())
    }

    /// A broker's delivery options, dead-letter sink and address.
    fn broker_delivery(&self, key: &str) -> (Option<DeliverySpec>, Option<String>, Option<String>) {
        self.brokers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .map(|b| {
                (
                    b.delivery.clone(),
                    b.dead_letter_sink.clone(),
                    b.address.clone(),
                )
            })
            .unwrap_or_default()
    }
}

/// One event through one trigger.
async fn process(handler: &TriggerHandler, record: Record) {
    let (log_name, route) = (&handler.log_name, &handler.route);
    let event = &record.event;
    // The subscriber, and the filter, see the event without its TTL (as
    // upstream's filter handler removes it first).
    let ttl = event.extension(TTL).cloned();
    // The copy without the TTL is made once the filter passed, unless the
    // filter reads the TTL itself (then it must see it removed): a trigger
    // that drops the event costs no copy.
    let outgoing = if ttl.is_some() && route.filter.reads_extension(TTL) {
        let mut outgoing = (**event).clone();
        outgoing.remove_extension(TTL);
        if !route.filter.evaluate(&outgoing).delivers() {
            return;
        }
        outgoing
    } else {
        if !route.filter.evaluate(event).delivers() {
            return;
        }
        let mut outgoing = (**event).clone();
        outgoing.remove_extension(TTL);
        outgoing
    };
    let Some(inner) = handler.inner.upgrade() else {
        return;
    };
    let (broker_delivery, broker_dls, broker_address) = inner.broker_delivery(log_name);
    let delivery = route.delivery.clone().or(broker_delivery);
    let policy: RetryPolicy = delivery
        .as_ref()
        .map(DeliverySpec::policy)
        .unwrap_or_default();
    let target = Target {
        url: route.subscriber.clone(),
        retry: RetryPolicy {
            timeout: policy.timeout.or(inner.dispatch.attempt_timeout),
            ..policy
        },
        format: delivery.as_ref().and_then(|d| d.format),
        one_based_backoff: inner.dispatch.one_based_backoff,
    };
    let (namespace, name) = log_name.split_once('/').unwrap_or((log_name, ""));
    let mut headers: Vec<(String, String)> = record.headers.to_vec();
    headers.push(("kn-namespace".to_owned(), namespace.to_owned()));
    let broker_url = || {
        broker_address
            .clone()
            .unwrap_or_else(|| format!("broker:/{namespace}/{name}"))
    };
    // A reply that cannot be stored fails the whole delivery, which is
    // retried (up to the retry count, with the backoff) like any other
    // failure (§1.4); a reply at the end of its TTL is dropped.
    let backoff = delivery::Backoff {
        policy: target.retry.backoff,
        one_based: target.one_based_backoff,
    };
    let mut store_failures = 0u32;
    // (failed destination, status, body)
    let failure = loop {
        let outcome = inner
            .sender
            .deliver_with_headers(&outgoing, &target, &headers)
            .await;
        match outcome {
            Outcome::Delivered {
                reply: Some(mut reply),
                ..
            } => {
                // Same TTL as the event that caused it: the ingress takes one off.
                if let Some(ttl) = &ttl {
                    reply.set_extension(TTL, ttl.clone());
                }
                match inner
                    .ingest(namespace, name, vec![Entry::from(*reply)])
                    .await
                {
                    Ok(()) => break None,
                    Err(e @ IngressError::TtlExpired { .. }) => {
                        debug!(error = %e, "reply dropped at the TTL");
                        break Some((broker_url(), Some(400), Bytes::from(e.to_string())));
                    }
                    Err(e) if store_failures < target.retry.retry => {
                        store_failures += 1;
                        let wait = backoff.before_retry(store_failures);
                        warn!(error = %e, ?wait, "storing the reply failed; the delivery will be retried");
                        tokio::time::sleep(wait).await;
                    }
                    Err(e) => break Some((broker_url(), Some(500), Bytes::from(e.to_string()))),
                }
            }
            Outcome::Delivered { reply: None, .. } => break None,
            Outcome::Failed { status, body, .. } => {
                break Some((route.subscriber.clone(), status, body));
            }
        }
    };
    if let Some((destination, status, body)) = failure {
        let dls = route.dead_letter_sink.clone().or(broker_dls);
        match dls {
            Some(url) => {
                let dead = delivery::dead_letter_event(&outgoing, &destination, status, &body);
                let target = Target { url, ..target };
                if let Outcome::Failed { error, .. } = inner.sender.deliver(&dead, &target).await {
                    warn!(id = %event.id(), %error, "the dead-letter sink failed too; the event is dropped");
                }
            }
            None => {
                warn!(id = %event.id(), ?status, %destination, "delivery failed and there is no dead-letter sink; the event is dropped");
            }
        }
    }
}
