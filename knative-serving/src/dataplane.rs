//! The Serving data plane (`specs/SERVING.md §2` hosts and tags, `§4`
//! activator and queue-proxy), on hyper 1 and tokio.
//!
//! A request goes
//!
//! ```text
//! client ─▶ Ingress ─▶ (Activator, when the revision is in Proxy mode) ─▶ QueueProxy ─▶ app
//!           Host/tag     buffers at zero, pokes the autoscaler,          breaker (cc),
//!           weighted     revision breaker + per-pod trackers             stats, timeouts
//! ```
//!
//! | module | what it holds |
//! |---|---|
//! | [`ingress`] | [`Dataplane`]: Host and tag routing over the [`RoutingTable`](crate::traffic::RoutingTable), the weighted pick, per-revision state |
//! | [`activator`] | the per-revision throttler: revision breaker, pod trackers, buffering at zero |
//! | [`lb`] | the activator's load-balancing policies by `containerConcurrency` |
//! | [`queue_proxy`] | the per-replica proxy: breaker, stats, timeouts, probes, drain; in-process or standalone |
//! | [`breaker`] | the request breaker both use |
//! | [`stats`] | time-weighted concurrency and request counts |
//! | [`timeout`] | `timeoutSeconds`, `responseStartTimeoutSeconds`, `idleTimeoutSeconds` |
//! | [`server`] | serving connections with header, body and slow-client limits, graceful drain |
//! | [`headers`] | the header names and values Knative's data plane uses |
//!
//! In-process composition (the embedded platform): the ingress, the
//! activator and one queue-proxy per ready replica live in one process and
//! call each other as functions; only the hop to the app is HTTP. The
//! standalone queue-proxy ([`queue_proxy::run_from_env`]) is the same code
//! behind its own listener, configured by environment variables as
//! upstream's sidecar is.

pub mod activator;
pub mod breaker;
pub mod headers;
pub mod ingress;
pub mod lb;
pub mod queue_proxy;
pub mod server;
pub mod stats;
pub mod timeout;

mod upstream;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::{Response, StatusCode, header};

pub use ingress::Dataplane;
pub use upstream::Upstream;

use crate::api::Revision;

/// A boxed error, as bodies and services in the data plane carry them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response in the data plane.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// `error` and its sources, joined with `: `.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A plain-text response: `message` plus a newline, with `status`.
pub fn text_response(status: StatusCode, message: impl std::fmt::Display) -> Response<Body> {
    let mut response = Response::new(full(format!("{message}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A response whose body is exactly `body` (probe answers are compared
/// byte for byte by their callers).
pub fn exact_response(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
}

/// The longest timeout honoured (longer settings are cut to this).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// A revision's request timeouts (`specs/SERVING.md §4`, "Timeouts").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// `timeoutSeconds`: the hard deadline for the whole request.
    pub total: Duration,
    /// `responseStartTimeoutSeconds`: how long the first byte may take
    /// (`None` = only `total` applies).
    pub response_start: Option<Duration>,
    /// `idleTimeoutSeconds`: the longest gap between two writes of the
    /// response (`None` = no limit).
    pub idle: Option<Duration>,
}

/// The default `timeoutSeconds` when a revision has none (300 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

impl Default for Timeouts {
    /// 300 s total, first byte within 300 s, no idle limit (the
    /// activator's defaults for a revision without timeouts).
    fn default() -> Self {
        Timeouts {
            total: DEFAULT_TIMEOUT,
            response_start: Some(DEFAULT_TIMEOUT),
            idle: None,
        }
    }
}

impl Timeouts {
    /// The timeouts a revision's spec sets; 0 disables response-start and
    /// idle timeouts, and a missing or non-positive `timeoutSeconds` means
    /// the default.
    pub fn of(revision: &Revision) -> Self {
        let seconds = |v: Option<i64>| {
            v.filter(|s| *s > 0)
                .map(|s| Duration::from_secs(s.unsigned_abs()).min(MAX_TIMEOUT))
        };
        let spec = &revision.spec;
        let total = seconds(spec.timeout_seconds).unwrap_or(DEFAULT_TIMEOUT);
        Timeouts {
            total,
            response_start: match spec.response_start_timeout_seconds {
                None => Some(total),
                v => seconds(v),
            },
            idle: seconds(spec.idle_timeout_seconds),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_default_to_300_seconds_and_zero_disables_the_optional_ones() {
        let mut revision = Revision::new("r", Default::default());
        assert_eq!(Timeouts::of(&revision), Timeouts::default());
        revision.spec.timeout_seconds = Some(10);
        revision.spec.response_start_timeout_seconds = Some(0);
        revision.spec.idle_timeout_seconds = Some(3);
        assert_eq!(
            Timeouts::of(&revision),
            Timeouts {
                total: Duration::from_secs(10),
                response_start: None,
                idle: Some(Duration::from_secs(3)),
            }
        );
    }
}
