//! The channel data path (`specs/EVENTING.md §4`): the ingress that takes
//! events for a channel into the channel's [`EventLog`], and one
//! dispatcher per subscription that delivers every event to the
//! subscriber, forwards its reply to the subscription's reply
//! destination, and dead-letters what could not be delivered. Channels
//! share the log and the dispatch loop with brokers; Sequence and
//! Parallel (`flows.knative.dev`) are built from channels and
//! subscriptions by their reconcilers.
//!
//! **Ingress**, as upstream's InMemoryChannel receiver answers: `OPTIONS`
//! → 200; any other method but `POST` → 405; a channel addressed by path
//! `/{namespace}/{channel}` or by host
//! `{channel}-kn-channel.{namespace}.svc.cluster.local` (any port, `/`
//! path) that does not exist → 404; a request that is not valid
//! CloudEvents → 400 naming the problem (a body over the limit too); the append
//! failed → 500; else **202, once the log has the event**.
//!
//! Unlike upstream's InMemoryChannel, which answers only after every
//! subscriber got the event (or keeps nothing when asked to answer at
//! once), the channel acknowledges once the event is in the log, as the
//! channel spec asks ("durably enqueue before acknowledging"): with a
//! durable log nothing acknowledged is lost, and a slow subscriber does
//! not hold up the sender.
//!
//! **Dispatch**, per subscription: deliver to `subscriber` with the
//! subscription's delivery options (else the channel's); a reply event
//! goes to `reply` (no reply destination: the reply is dropped, as
//! upstream); a subscription without a subscriber sends the event itself
//! to `reply`. A reply that cannot be delivered fails the whole delivery,
//! which is retried up to the retry count (§1.4); then the original event
//! goes to the dead-letter sink with `knativeerrordest` naming the
//! destination that failed. Every subscription, even two to the same
//! destination, gets every event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use cloudevents::{AttributesReader, Event};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use tracing::{Instrument, debug, info_span, warn};

use crate::api::{DeliverySpec, RetryPolicy};
use crate::binding;
use crate::broker::{DispatchConfig, pass_through_headers, read_events, reply, serve_http};
use crate::delivery::{self, Outcome, Sender, Target};
use crate::dispatcher::{self, Consumer, Delivery, Handler};
use crate::log::{Entry, EventLog, LogError, Record};

/// The host suffix of a channel's cluster-local address.
pub const HOST_SUFFIX: &str = "svc.cluster.local";

/// The name of channel `namespace/name`'s log (`channels/{namespace}/{name}`;
/// broker logs are `{namespace}/{name}`, so the two never meet in a log
/// store they share).
pub fn log_name(namespace: &str, name: &str) -> String {
    format!("channels/{namespace}/{name}")
}

/// The cluster-local host of channel `namespace/name`, as upstream names
/// it: `{name}-kn-channel.{namespace}.svc.cluster.local`.
pub fn channel_host(namespace: &str, name: &str) -> String {
    format!("{name}-kn-channel.{namespace}.{HOST_SUFFIX}")
}

/// What a subscription's dispatcher needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SubscriptionRoute {
    /// The subscriber's resolved URL (`None`: the event goes straight to
    /// `reply`).
    pub subscriber: Option<String>,
    /// Where reply events go (`None`: replies are dropped).
    pub reply: Option<String>,
    /// The subscription's delivery options (`None`: the channel's).
    pub delivery: Option<DeliverySpec>,
    /// The resolved dead-letter sink URL (the subscription's, else the
    /// channel's).
    pub dead_letter_sink: Option<String>,
}

/// Why a channel operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// No such channel.
    #[error("channel {namespace}/{name} not found")]
    NotFound {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
}

struct ChannelState {
    delivery: Option<DeliverySpec>,
    dead_letter_sink: Option<String>,
    subscriptions: HashMap<String, Consumer>,
}

struct Inner {
    log: Arc<dyn EventLog>,
    sender: Sender,
    limits: binding::Limits,
    dispatch: DispatchConfig,
    channels: Mutex<HashMap<String, ChannelState>>,
}

impl Inner {
    fn channels(&self) -> std::sync::MutexGuard<'_, HashMap<String, ChannelState>> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn channel_delivery(&self, key: &str) -> (Option<DeliverySpec>, Option<String>) {
        self.channels()
            .get(key)
            .map(|c| (c.delivery.clone(), c.dead_letter_sink.clone()))
            .unwrap_or_default()
    }
}

/// The channels' data plane: ingress and per-subscription dispatchers.
/// Cheap to clone; when the last clone is dropped every dispatcher stops.
#[derive(Clone)]
pub struct Channels {
    inner: Arc<Inner>,
    _alive: Arc<Alive>,
}

/// Stops the dispatchers when the last [`Channels`] handle goes.
struct Alive(std::sync::Weak<Inner>);

impl Drop for Alive {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            let channels = std::mem::take(&mut *inner.channels());
            drop(channels);
        }
    }
}

impl std::fmt::Debug for Channels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channels").finish_non_exhaustive()
    }
}

impl Channels {
    /// A data plane storing events in `log`; requests are read within
    /// `limits` (batches are taken when `limits.allow_batch`).
    pub fn new(log: Arc<dyn EventLog>, limits: binding::Limits, dispatch: DispatchConfig) -> Self {
        Channels::with_sender(log, limits, dispatch, Sender::new())
    }

    /// Like [`Channels::new`], delivering with `sender` (e.g. one made by
    /// [`Sender::with_overrides`]).
    pub fn with_sender(
        log: Arc<dyn EventLog>,
        limits: binding::Limits,
        dispatch: DispatchConfig,
        sender: Sender,
    ) -> Self {
        let inner = Arc::new(Inner {
            log,
            sender,
            limits,
            dispatch,
            channels: Mutex::new(HashMap::new()),
        });
        Channels {
            _alive: Arc::new(Alive(Arc::downgrade(&inner))),
            inner,
        }
    }

    /// Creates (or updates) channel `namespace/name` with its delivery
    /// options (for subscriptions that have none) and resolved
    /// dead-letter sink.
    pub async fn upsert_channel(
        &self,
        namespace: &str,
        name: &str,
        delivery: Option<DeliverySpec>,
        dead_letter_sink: Option<String>,
    ) -> Result<(), LogError> {
        let key = log_name(namespace, name);
        self.inner.log.create(&key).await?;
        let mut channels = self.inner.channels();
        let channel = channels.entry(key).or_insert_with(|| ChannelState {
            delivery: None,
            dead_letter_sink: None,
            subscriptions: HashMap::new(),
        });
        channel.delivery = delivery;
        channel.dead_letter_sink = dead_letter_sink;
        Ok(())
    }

    /// Removes a channel, its subscriptions' dispatchers and its log.
    pub async fn remove_channel(&self, namespace: &str, name: &str) -> Result<(), LogError> {
        let key = log_name(namespace, name);
        let removed = self.inner.channels().remove(&key);
        drop(removed);
        self.inner.log.delete(&key).await
    }

    /// Whether channel `namespace/name` exists.
    pub fn has_channel(&self, namespace: &str, name: &str) -> bool {
        self.inner
            .channels()
            .contains_key(&log_name(namespace, name))
    }

    /// Names of the subscriptions of channel `namespace/name`.
    pub fn subscriptions(&self, namespace: &str, name: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .inner
            .channels()
            .get(&log_name(namespace, name))
            .map(|c| c.subscriptions.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Starts (or re-programs) the dispatcher of subscription
    /// `subscription` on channel `namespace/channel`. It gets the events
    /// accepted after this call; it keeps its cursor across updates.
    pub async fn upsert_subscription(
        &self,
        namespace: &str,
        channel: &str,
        subscription: &str,
        route: SubscriptionRoute,
    ) -> Result<(), ChannelError> {
        let key = log_name(namespace, channel);
        let consumer = format!("subscription/{subscription}");
        if !self.has_channel(namespace, channel) {
            return Err(ChannelError::NotFound {
                namespace: namespace.to_owned(),
                name: channel.to_owned(),
            });
        }
        self.inner.log.committed(&key, &consumer).await?;
        let mut channels = self.inner.channels();
        let Some(state) = channels.get_mut(&key) else {
            return Err(ChannelError::NotFound {
                namespace: namespace.to_owned(),
                name: channel.to_owned(),
            });
        };
        let handler: Arc<dyn Handler> = Arc::new(SubscriptionHandler {
            inner: Arc::downgrade(&self.inner),
            log_name: key.clone(),
            route,
        });
        let log = Arc::clone(&self.inner.log);
        let max_in_flight = self.inner.dispatch.max_in_flight;
        Consumer::program(&mut state.subscriptions, subscription, handler, |rx| {
            tokio::spawn(
                dispatcher::run(log, key.clone(), consumer, max_in_flight, rx)
                    .instrument(info_span!("dispatcher", channel = %key, subscription)),
            )
        });
        Ok(())
    }

    /// Stops a subscription's dispatcher and forgets its cursor.
    pub async fn remove_subscription(
        &self,
        namespace: &str,
        channel: &str,
        subscription: &str,
    ) -> Result<(), LogError> {
        let key = log_name(namespace, channel);
        let removed = self
            .inner
            .channels()
            .get_mut(&key)
            .and_then(|c| c.subscriptions.remove(subscription));
        if let Some(state) = removed {
            state.stop().await;
        }
        match self
            .inner
            .log
            .remove_consumer(&key, &format!("subscription/{subscription}"))
            .await
        {
            Err(LogError::NotFound(_)) => Ok(()),
            other => other,
        }
    }

    /// Takes events into channel `namespace/name`; returns once the log
    /// has them.
    pub async fn ingest(
        &self,
        namespace: &str,
        name: &str,
        events: Vec<Entry>,
    ) -> Result<(), ChannelError> {
        let key = log_name(namespace, name);
        if !self.inner.channels().contains_key(&key) {
            return Err(ChannelError::NotFound {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            });
        }
        self.inner.log.append(&key, events).await?;
        Ok(())
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
        let span = info_span!("channel_ingress", method = %parts.method, path = %parts.uri.path());
        async move {
            if parts.method == Method::OPTIONS {
                return reply(StatusCode::OK, "");
            }
            if parts.method != Method::POST {
                return reply(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!(
                        "method {} is not allowed: POST events to /{{namespace}}/{{channel}}",
                        parts.method
                    ),
                );
            }
            let host = parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| parts.uri.host());
            let Some((namespace, name)) = address(parts.uri.path(), host) else {
                return reply(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no channel at {:?}: POST events to /{{namespace}}/{{channel}} or to {{channel}}-kn-channel.{{namespace}}.{HOST_SUFFIX}",
                        parts.uri.path()
                    ),
                );
            };
            if !self.has_channel(&namespace, &name) {
                return reply(
                    StatusCode::NOT_FOUND,
                    format!("channel {namespace}/{name} not found"),
                );
            }
            let events = match read_events(&parts.headers, body, &self.inner.limits).await {
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
            match self.ingest(&namespace, &name, entries).await {
                Ok(()) => reply(StatusCode::ACCEPTED, ""),
                Err(e @ ChannelError::NotFound { .. })
                | Err(e @ ChannelError::Log(LogError::NotFound(_))) => {
                    reply(StatusCode::NOT_FOUND, e.to_string())
                }
                Err(e) => {
                    warn!(error = %e, "append failed");
                    reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// The channel a request is for: by path `/{namespace}/{name}`, else by
/// host `{name}-kn-channel.{namespace}.svc.cluster.local[:port]`.
fn address(path: &str, host: Option<&str>) -> Option<(String, String)> {
    let trimmed = path.trim_matches('/');
    if !trimmed.is_empty() {
        let (namespace, name) = trimmed.split_once('/')?;
        if namespace.is_empty() || name.is_empty() || name.contains('/') {
            return None;
        }
        return Some((namespace.to_owned(), name.to_owned()));
    }
    let host = host?;
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let rest = host.strip_suffix(HOST_SUFFIX)?.strip_suffix('.')?;
    let (service, namespace) = rest.rsplit_once('.')?;
    let name = service.strip_suffix("-kn-channel")?;
    if name.is_empty() || namespace.is_empty() {
        return None;
    }
    Some((namespace.to_owned(), name.to_owned()))
}

/// One subscription's handling of a record.
struct SubscriptionHandler {
    inner: std::sync::Weak<Inner>,
    log_name: String,
    route: SubscriptionRoute,
}

impl Handler for SubscriptionHandler {
    fn handle(self: Arc<Self>, record: Record) -> Delivery {
        Box::pin(async move { process(&self, record).await })
    }
}

/// One event through one subscription.
async fn process(handler: &SubscriptionHandler, record: Record) {
    let Some(inner) = handler.inner.upgrade() else {
        return;
    };
    let route = &handler.route;
    let event: &Event = &record.event;
    let (channel_delivery, channel_dls) = inner.channel_delivery(&handler.log_name);
    let delivery = route.delivery.clone().or(channel_delivery);
    let policy: RetryPolicy = delivery
        .as_ref()
        .map(DeliverySpec::policy)
        .unwrap_or_default();
    let retry = RetryPolicy {
        timeout: policy.timeout.or(inner.dispatch.attempt_timeout),
        ..policy
    };
    let target = |url: &str, retry: RetryPolicy| Target {
        url: url.to_owned(),
        retry,
        format: delivery.as_ref().and_then(|d| d.format),
        one_based_backoff: inner.dispatch.one_based_backoff,
    };
    let backoff = delivery::Backoff {
        policy: retry.backoff,
        one_based: inner.dispatch.one_based_backoff,
    };
    let headers: Vec<(String, String)> = record.headers.to_vec();
    let mut whole_retries = 0u32;
    // (failed destination, status, body)
    let failure: Option<(String, Option<u16>, Bytes)> = loop {
        let to_reply: Option<Event> = match &route.subscriber {
            Some(url) => match inner
                .sender
                .deliver_with_headers(event, &target(url, retry), &headers)
                .await
            {
                Outcome::Delivered { reply, .. } => reply.map(|r| *r),
                Outcome::Failed { status, body, .. } => break Some((url.clone(), status, body)),
            },
            None => Some(event.clone()),
        };
        let Some(to_reply) = to_reply else {
            break None;
        };
        let Some(reply_url) = &route.reply else {
            debug!(id = %to_reply.id(), "the subscription has no reply destination; the reply is dropped");
            break None;
        };
        // The reply gets one attempt per pass; a failure retries the
        // whole delivery (subscriber included).
        let once = RetryPolicy { retry: 0, ..retry };
        match inner
            .sender
            .deliver_with_headers(&to_reply, &target(reply_url, once), &headers)
            .await
        {
            Outcome::Delivered { .. } => break None,
            Outcome::Failed {
                status,
                body,
                error,
                ..
            } => {
                if whole_retries < retry.retry && delivery::is_retryable(status) {
                    whole_retries += 1;
                    let wait = backoff.before_retry(whole_retries);
                    debug!(%error, ?wait, "forwarding the reply failed; retrying the delivery");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                break Some((reply_url.clone(), status, body));
            }
        }
    };
    let Some((destination, status, body)) = failure else {
        return;
    };
    match route.dead_letter_sink.clone().or(channel_dls) {
        Some(url) => {
            let dead = delivery::dead_letter_event(event, &destination, status, &body);
            if let Outcome::Failed { error, .. } =
                inner.sender.deliver(&dead, &target(&url, retry)).await
            {
                warn!(id = %event.id(), %error, "the dead-letter sink failed too; the event is dropped");
            }
        }
        None => {
            warn!(id = %event.id(), ?status, %destination, "delivery failed and there is no dead-letter sink; the event is dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_addressed_by_path_or_by_cluster_local_host() {
        let ok = |ns: &str, n: &str| Some((ns.to_owned(), n.to_owned()));
        assert_eq!(address("/shop/orders", None), ok("shop", "orders"));
        assert_eq!(address("/shop/orders/", None), ok("shop", "orders"));
        assert_eq!(address("/shop", None), None);
        assert_eq!(address("/a/b/c", None), None);
        assert_eq!(
            address("/", Some("orders-kn-channel.shop.svc.cluster.local")),
            ok("shop", "orders")
        );
        assert_eq!(
            address("", Some("orders-kn-channel.shop.svc.cluster.local:8080")),
            ok("shop", "orders")
        );
        assert_eq!(address("/", Some("orders.shop.svc.cluster.local")), None);
        assert_eq!(address("/", Some("example.com")), None);
        assert_eq!(address("/", None), None);
        assert_eq!(
            channel_host("shop", "orders"),
            "orders-kn-channel.shop.svc.cluster.local"
        );
    }
}
