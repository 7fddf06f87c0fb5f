//! Delivering an event to a subscriber (`specs/EVENTING.md §5`, `§1.3`,
//! `§1.4`): retries with backoff, per-attempt timeouts, `Retry-After`,
//! reply events, and dead letters.
//!
//! - **Attempts**: 1 + `retry`. Success is a 2xx. A failure is retried when
//!   there was no response (connection error, timeout) or the status is
//!   404, 408, 409, 429 or ≥ 500 (and unknown codes); 1xx, 3xx and other
//!   4xx fail at once ([`is_retryable`]).
//! - **Backoff** before the k-th retry: linear `delay × n`, exponential
//!   `delay × 2ⁿ`, with `n = k − 1` as Knative's retry loop hands the
//!   backoff function its 0-based index (so the first linear wait is 0 s);
//!   [`Backoff::one_based`] switches to `n = k` (the formula as the API
//!   documentation states it). No policy or no delay: no wait. No cap.
//! - **`Retry-After`** (only when `retryAfterMax` is set): for 429 and 503,
//!   the header's delay (seconds or an HTTP date), capped at
//!   `retryAfterMax`, is waited if longer than the backoff.
//! - **Replies**: the request carries `Prefer: reply`; a 2xx response
//!   holding an event (binary or structured) is a reply, except for 202;
//!   a non-event body, or a malformed event, is a bad reply: an attempt
//!   failed with 502 (upstream's filter answers 502 and its channel
//!   dispatcher retries), retried and dead-lettered like any failure.
//! - **Dead letters**: after the last failed attempt the *original* event
//!   goes to the dead-letter sink with the same retry settings, with the
//!   extensions `knativeerrordest` (the failed URL), `knativeerrorcode`
//!   (the last status) and `knativeerrordata` (the response body, base64,
//!   at most 1024 characters).

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use cloudevents::{AttributesReader, Event};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tracing::{Instrument, debug, info_span};

use crate::api::{BackoffPolicy, DeliveryFormat, RetryPolicy};
use crate::binding;

/// Extension naming the destination that failed.
pub const ERROR_DEST: &str = "knativeerrordest";
/// Extension holding the failed attempt's HTTP status.
pub const ERROR_CODE: &str = "knativeerrorcode";
/// Extension holding the failed attempt's response body (base64).
pub const ERROR_DATA: &str = "knativeerrordata";
/// `knativeerrordata` is cut to this many characters.
pub const ERROR_DATA_MAX: usize = 1024;
/// Replies larger than this are bad replies.
const MAX_REPLY_BYTES: usize = 4 * 1024 * 1024;

/// Whether a failed attempt is tried again: no response, 404, 408, 409,
/// 429, any 5xx, and codes outside 100–599.
pub fn is_retryable(status: Option<u16>) -> bool {
    match status {
        None => true,
        Some(404 | 408 | 409 | 429) => true,
        Some(s) if s >= 500 => true,
        Some(s) if s < 100 => true,
        Some(_) => false,
    }
}

/// Whether a status is a success (2xx).
pub fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// The backoff between attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backoff {
    /// The policy and its base delay (`None`: no wait).
    pub policy: Option<(BackoffPolicy, Duration)>,
    /// Use `n = k` for the k-th retry instead of upstream's `n = k − 1`.
    pub one_based: bool,
}

impl Backoff {
    /// How long to wait before retry number `retry` (1 = the first retry).
    pub fn before_retry(&self, retry: u32) -> Duration {
        let Some((policy, delay)) = self.policy else {
            return Duration::ZERO;
        };
        let n = if self.one_based {
            retry
        } else {
            retry.saturating_sub(1)
        };
        match policy {
            BackoffPolicy::Linear => delay.saturating_mul(n),
            BackoffPolicy::Exponential => {
                let factor = 2u32.checked_pow(n).unwrap_or(u32::MAX);
                delay.saturating_mul(factor)
            }
        }
    }
}

/// The delay a `Retry-After` value asks for (delta-seconds or an HTTP
/// date relative to `now`).
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Where and how to deliver.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// The subscriber's URL.
    pub url: String,
    /// Retries, backoff, timeout.
    pub retry: RetryPolicy,
    /// Content mode (`None`: binary).
    pub format: Option<DeliveryFormat>,
    /// Backoff indexing.
    pub one_based_backoff: bool,
}

/// What one attempt or a whole delivery ended with.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The subscriber took the event (2xx), maybe replying with an event.
    Delivered {
        /// The status code.
        status: u16,
        /// The reply event, if any.
        reply: Option<Box<Event>>,
    },
    /// Every attempt failed.
    Failed {
        /// The last status (`None`: no response).
        status: Option<u16>,
        /// The last response body.
        body: Bytes,
        /// What went wrong, for logs.
        error: String,
        /// Attempts made.
        attempts: u32,
    },
}

/// Sends events over HTTP with retries. Cheap to clone (pooled connections).
#[derive(Clone, Debug)]
pub struct Sender {
    client: Client<Connector, Full<Bytes>>,
}

/// Connects like [`HttpConnector`], except that hosts under an overridden
/// domain are reached at a fixed address (the request keeps its URL and
/// `Host` header): how an embedded platform sends events to
/// `http://hello.default.svc.cluster.local` through its own ingress on a
/// loopback port, with no DNS entry for it.
#[derive(Clone, Debug)]
pub struct Connector {
    http: HttpConnector,
    overrides: std::sync::Arc<[(String, std::net::SocketAddr)]>,
}

impl Connector {
    /// Where `uri` is reached: its own host and port, or an override's
    /// address when its host is the override's domain or under it.
    fn destination(&self, uri: &hyper::Uri) -> Option<hyper::Uri> {
        let host = uri.host()?.trim_end_matches('.').to_ascii_lowercase();
        let (_, address) = self.overrides.iter().find(|(domain, _)| {
            host == *domain
                || host
                    .strip_suffix(domain.as_str())
                    .is_some_and(|rest| rest.ends_with('.'))
        })?;
        format!("http://{address}/").parse().ok()
    }
}

impl tower_service::Service<hyper::Uri> for Connector {
    type Response = <HttpConnector as tower_service::Service<hyper::Uri>>::Response;
    type Error = <HttpConnector as tower_service::Service<hyper::Uri>>::Error;
    type Future = <HttpConnector as tower_service::Service<hyper::Uri>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx)
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let uri = self.destination(&uri).unwrap_or(uri);
        self.http.call(uri)
    }
}

impl Default for Sender {
    fn default() -> Self {
        Sender::new()
    }
}

impl Sender {
    /// A sender with its own connection pool.
    pub fn new() -> Self {
        Sender::with_overrides(Vec::new())
    }

    /// A sender that reaches every host under each domain of `overrides`
    /// (e.g. `svc.cluster.local`, `localhost`) at that domain's address
    /// instead of resolving it; the first domain that matches wins.
    pub fn with_overrides(overrides: Vec<(String, std::net::SocketAddr)>) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let overrides = overrides
            .into_iter()
            .map(|(domain, address)| (domain.trim_matches('.').to_ascii_lowercase(), address))
            .collect();
        Sender {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(Connector { http, overrides }),
        }
    }

    /// Delivers `event` to `target` with its retries and backoff.
    pub async fn deliver(&self, event: &Event, target: &Target) -> Outcome {
        self.deliver_with_headers(event, target, &[]).await
    }

    /// Delivers `event` with extra HTTP `headers` (passed-through request
    /// headers, `Kn-Namespace`); names must be lower-case.
    pub async fn deliver_with_headers(
        &self,
        event: &Event,
        target: &Target,
        headers: &[(String, String)],
    ) -> Outcome {
        let span = info_span!("delivery", url = %target.url, id = %event.id());
        self.deliver_inner(event, target, headers)
            .instrument(span)
            .await
    }

    async fn deliver_inner(
        &self,
        event: &Event,
        target: &Target,
        extra: &[(String, String)],
    ) -> Outcome {
        let backoff = Backoff {
            policy: target.retry.backoff,
            one_based: target.one_based_backoff,
        };
        let encoded = match encode(event, target.format) {
            Ok(mut e) => {
                for (name, value) in extra {
                    if let (Ok(n), Ok(v)) = (
                        hyper::header::HeaderName::from_bytes(name.as_bytes()),
                        hyper::header::HeaderValue::from_str(value),
                    ) {
                        e.headers.push((n, v));
                    }
                }
                e
            }
            Err(error) => {
                return Outcome::Failed {
                    status: None,
                    body: Bytes::new(),
                    error: format!("the event cannot be encoded: {error}"),
                    attempts: 0,
                };
            }
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (status, body, error, retry_after) = match self.attempt(&encoded, target).await {
                Ok(outcome @ Outcome::Delivered { .. }) => return outcome,
                Ok(Outcome::Failed {
                    status,
                    body,
                    error,
                    ..
                }) => (status, body, error, None),
                Err(AttemptError {
                    status,
                    body,
                    error,
                    retry_after,
                }) => (status, body, error, retry_after),
            };
            if attempt > target.retry.retry || !is_retryable(status) {
                debug!(attempt, ?status, %error, "delivery failed");
                return Outcome::Failed {
                    status,
                    body,
                    error,
                    attempts: attempt,
                };
            }
            let mut wait = backoff.before_retry(attempt);
            if let (Some(max), Some(asked), Some(429 | 503)) =
                (target.retry.retry_after_max, retry_after, status)
                && !max.is_zero()
            {
                wait = wait.max(asked.min(max));
            }
            debug!(attempt, ?status, ?wait, %error, "delivery failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(&self, encoded: &Encoded, target: &Target) -> Result<Outcome, AttemptError> {
        let mut request = Request::post(target.url.as_str());
        for (name, value) in &encoded.headers {
            request = request.header(name, value);
        }
        let request = request
            .header("prefer", "reply")
            .body(Full::new(encoded.body.clone()))
            .map_err(|e| {
                AttemptError::no_response(format!("invalid request to {}: {e}", target.url))
            })?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| AttemptError::no_response(error_chain(&e)))?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
            let (parts, body) = response.into_parts();
            let body = match Limited::new(body, MAX_REPLY_BYTES).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e)
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some() =>
                {
                    // Too large to be a reply: a bad reply (502).
                    return Err(AttemptError {
                        status: Some(502),
                        body: Bytes::new(),
                        error: format!("the reply is larger than {MAX_REPLY_BYTES} bytes"),
                        retry_after,
                    });
                }
                Err(e) => {
                    // The response broke off: as if there was none.
                    return Err(AttemptError::no_response(format!(
                        "reading the response: {e}"
                    )));
                }
            };
            Ok::<_, AttemptError>((parts, status, body, retry_after))
        };
        let (parts, status, body, retry_after) = match target.retry.timeout {
            Some(timeout) => tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| AttemptError::no_response(format!("timed out after {timeout:?}")))??,
            None => exchange.await?,
        };
        if !is_success(status) {
            let reason = StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("");
            return Err(AttemptError {
                status: Some(status),
                body,
                error: format!("the subscriber answered {status} {reason}"),
                retry_after,
            });
        }
        // 202 means accepted, never a reply.
        if status == 202 {
            return Ok(Outcome::Delivered {
                status,
                reply: None,
            });
        }
        let limits = binding::Limits {
            header_decoding: binding::HeaderDecoding::Lenient,
            ..binding::Limits::default()
        };
        match binding::read_response(&parts.headers, &body, &limits) {
            Ok(reply) => Ok(Outcome::Delivered {
                status,
                reply: reply.map(Box::new),
            }),
            // A bad reply is a failed attempt with 502, retried like one.
            Err(e) => Err(AttemptError {
                status: Some(502),
                body,
                error: format!("bad reply: {e}"),
                retry_after: None,
            }),
        }
    }
}

struct AttemptError {
    status: Option<u16>,
    body: Bytes,
    error: String,
    retry_after: Option<Duration>,
}

impl AttemptError {
    fn no_response(error: String) -> Self {
        AttemptError {
            status: None,
            body: Bytes::new(),
            error,
            retry_after: None,
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// An event encoded once for all attempts.
struct Encoded {
    headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    body: Bytes,
}

fn encode(event: &Event, format: Option<DeliveryFormat>) -> Result<Encoded, binding::BindingError> {
    let (headers, body) = match format {
        Some(DeliveryFormat::Json) => binding::write_structured(event)?,
        _ => binding::write_binary(event)?,
    };
    Ok(Encoded {
        headers: headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        body,
    })
}

/// The original event with the dead-letter extensions describing the
/// failure at `url`.
pub fn dead_letter_event(event: &Event, url: &str, status: Option<u16>, body: &[u8]) -> Event {
    let mut event = event.clone();
    event.set_extension(ERROR_DEST, url.to_owned());
    if let Some(status) = status {
        event.set_extension(ERROR_CODE, i64::from(status));
    }
    if !body.is_empty() {
        let mut data = base64::engine::general_purpose::STANDARD.encode(body);
        data.truncate(ERROR_DATA_MAX);
        event.set_extension(ERROR_DATA, data);
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overridden_domains_are_reached_at_their_address() {
        let ingress: std::net::SocketAddr = ([127, 0, 0, 1], 8080).into();
        let connector = Connector {
            http: HttpConnector::new(),
            overrides: vec![("svc.cluster.local".to_owned(), ingress)].into(),
        };
        let to = |u: &str| {
            connector
                .destination(&u.parse().expect("uri"))
                .map(|d| d.to_string())
        };
        let expected = Some("http://127.0.0.1:8080/".to_owned());
        assert_eq!(to("http://hello.default.svc.cluster.local/x"), expected);
        assert_eq!(to("http://HELLO.default.svc.cluster.local.:81/"), expected);
        assert_eq!(to("http://svc.cluster.local/"), expected);
        assert_eq!(to("http://notsvc.cluster.local/"), None);
        assert_eq!(to("http://example.com/"), None);
    }

    #[test]
    fn retry_predicate_follows_upstream() {
        for s in [404, 408, 409, 429, 500, 502, 503, 504, 599, 600] {
            assert!(is_retryable(Some(s)), "{s}");
        }
        assert!(is_retryable(None));
        for s in [100, 200, 202, 301, 400, 401, 403, 413, 422] {
            assert!(!is_retryable(Some(s)), "{s}");
        }
    }

    #[test]
    fn backoff_uses_upstreams_zero_based_index_unless_told_otherwise() {
        let linear = Backoff {
            policy: Some((BackoffPolicy::Linear, Duration::from_millis(2500))),
            one_based: true,
        };
        let waits: Vec<f64> = (1..=5)
            .map(|k| linear.before_retry(k).as_secs_f64())
            .collect();
        assert_eq!(waits, [2.5, 5.0, 7.5, 10.0, 12.5]);
        let exponential = Backoff {
            policy: Some((BackoffPolicy::Exponential, Duration::from_millis(500))),
            one_based: true,
        };
        let waits: Vec<f64> = (1..=5)
            .map(|k| exponential.before_retry(k).as_secs_f64())
            .collect();
        assert_eq!(waits, [1.0, 2.0, 4.0, 8.0, 16.0]);
        // As Knative runs it: the first retry uses n = 0.
        let upstream = Backoff {
            one_based: false,
            ..linear
        };
        assert_eq!(upstream.before_retry(1), Duration::ZERO);
        assert_eq!(upstream.before_retry(2), Duration::from_millis(2500));
        let upstream = Backoff {
            one_based: false,
            ..exponential
        };
        assert_eq!(upstream.before_retry(1), Duration::from_millis(500));
        assert_eq!(upstream.before_retry(10), Duration::from_millis(500 * 512));
        assert_eq!(Backoff::default().before_retry(3), Duration::ZERO);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn dead_letters_carry_the_failure() {
        use cloudevents::{AttributesReader, EventBuilder, EventBuilderV10};
        let event = EventBuilderV10::new()
            .id("1")
            .ty("t")
            .source("/s")
            .build()
            .expect("event");
        let body = vec![b'x'; 2000];
        let dead = dead_letter_event(&event, "http://sub/", Some(500), &body);
        assert_eq!(dead.id(), "1");
        assert_eq!(
            dead.extension(ERROR_DEST)
                .map(ToString::to_string)
                .as_deref(),
            Some("http://sub/")
        );
        assert_eq!(
            dead.extension(ERROR_CODE)
                .map(ToString::to_string)
                .as_deref(),
            Some("500")
        );
        assert_eq!(
            dead.extension(ERROR_DATA).map(|d| d.to_string().len()),
            Some(ERROR_DATA_MAX)
        );
    }
}
