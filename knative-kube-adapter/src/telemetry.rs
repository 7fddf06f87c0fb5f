//! The operator's health and Prometheus endpoints (issue 9 §4).
//!
//! - [`ReconcileMetrics`] is a `tracing` layer counting the `reconcile`
//!   spans `knative_core::runtime::Controller` opens for every reconcile,
//!   per kind, and the `reconcile failed` / `reconcile panicked` events in
//!   them; so every controller is counted, including the ones
//!   `Serving::run` and `Build::run` build themselves.
//! - [`serve`] answers `GET /healthz` (the process is up), `GET /readyz`
//!   (the [`Health`] says ready: the operator leads and its controllers
//!   run) and `GET /metrics` (Prometheus text format 0.0.4).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Reconcile counts per kind, filled by the [`ReconcileMetrics`] layer.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Counts>>,
    leading: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct Counts {
    reconciles: BTreeMap<String, u64>,
    failures: BTreeMap<String, u64>,
}

impl Metrics {
    /// No counts yet.
    pub fn new() -> Self {
        Metrics::default()
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one reconcile of `kind`.
    pub fn reconciled(&self, kind: &str) {
        *self.counts().reconciles.entry(kind.to_owned()).or_default() += 1;
    }

    /// Counts one failed reconcile of `kind`.
    pub fn failed(&self, kind: &str) {
        *self.counts().failures.entry(kind.to_owned()).or_default() += 1;
    }

    /// Records whether this replica leads.
    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::Relaxed);
    }

    /// How many reconciles of `kind` were counted.
    pub fn reconciles(&self, kind: &str) -> u64 {
        self.counts().reconciles.get(kind).copied().unwrap_or(0)
    }

    /// How many failed reconciles of `kind` were counted.
    pub fn failures(&self, kind: &str) -> u64 {
        self.counts().failures.get(kind).copied().unwrap_or(0)
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let counts = self.counts();
        let mut out = String::new();
        out.push_str("# HELP knative_operator_reconciles_total Reconciles started, by kind.\n");
        out.push_str("# TYPE knative_operator_reconciles_total counter\n");
        for (kind, n) in &counts.reconciles {
            out.push_str(&format!(
                "knative_operator_reconciles_total{{kind=\"{}\"}} {n}\n",
                escape(kind)
            ));
        }
        out.push_str(
            "# HELP knative_operator_reconcile_errors_total Reconciles that failed or panicked, by kind.\n",
        );
        out.push_str("# TYPE knative_operator_reconcile_errors_total counter\n");
        for (kind, n) in &counts.failures {
            out.push_str(&format!(
                "knative_operator_reconcile_errors_total{{kind=\"{}\"}} {n}\n",
                escape(kind)
            ));
        }
        out.push_str("# HELP knative_operator_leader Whether this replica leads (1) or not (0).\n");
        out.push_str("# TYPE knative_operator_leader gauge\n");
        out.push_str(&format!(
            "knative_operator_leader {}\n",
            u8::from(self.leading.load(Ordering::Relaxed))
        ));
        out
    }
}

/// A Prometheus label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A `tracing` layer that counts reconciles into [`Metrics`] (see the
/// [module docs](self)). Install it unfiltered: it looks only at the
/// `reconcile` spans.
#[derive(Clone, Debug)]
pub struct ReconcileMetrics {
    metrics: Metrics,
}

impl ReconcileMetrics {
    /// A layer counting into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        ReconcileMetrics { metrics }
    }
}

/// The `kind` of a reconcile span, kept in its extensions.
struct ReconcileKind(String);

#[derive(Default)]
struct KindVisitor(Option<String>);

impl Visit for KindVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "kind" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "kind" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

#[derive(Default)]
struct MessageVisitor(Option<String>);

impl Visit for MessageVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for ReconcileMetrics
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "reconcile" {
            return;
        }
        let mut visitor = KindVisitor::default();
        attrs.record(&mut visitor);
        let kind = visitor.0.unwrap_or_default();
        self.metrics.reconciled(&kind);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(ReconcileKind(kind));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.event_span(event) else {
            return;
        };
        let kind = match span.extensions().get::<ReconcileKind>() {
            Some(kind) => kind.0.clone(),
            None => return,
        };
        let mut visitor = MessageVisitor::default();
        event.record(&mut visitor);
        if matches!(
            visitor.0.as_deref(),
            Some("reconcile failed" | "reconcile panicked")
        ) {
            self.metrics.failed(&kind);
        }
    }
}

/// Whether the operator is ready to serve (it leads, or leader election
/// is off, and its controllers and data plane run).
#[derive(Clone, Debug, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    /// Not ready.
    pub fn new() -> Self {
        Health::default()
    }

    /// Sets readiness.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

/// The answer to one probe or scrape.
pub fn respond(path: &str, health: &Health, metrics: Option<&Metrics>) -> Response<Full<Bytes>> {
    match (path, metrics) {
        ("/healthz" | "/livez", _) => text(StatusCode::OK, "ok\n".into()),
        ("/readyz", _) if health.is_ready() => text(StatusCode::OK, "ok\n".into()),
        ("/readyz", _) => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
        ("/metrics", Some(metrics)) => {
            let mut response = text(StatusCode::OK, metrics.render());
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// Serves [`respond`] on `listener` until `shutdown` completes; `/metrics`
/// only when `metrics` is given.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Health,
    metrics: Option<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, _) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "health listener: accept failed");
                continue;
            }
        };
        let (health, metrics) = (health.clone(), metrics.clone());
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let response = respond(request.uri().path(), &health, metrics.as_ref());
                    async move { Ok::<_, Infallible>(response) }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(error = %e, "health connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn counts_reconcile_spans_and_their_failures_per_kind() {
        let metrics = Metrics::new();
        let subscriber =
            tracing_subscriber::registry().with(ReconcileMetrics::new(metrics.clone()));
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..2 {
                let span = tracing::info_span!("reconcile", kind = %"Service", key = "default/a");
                let _entered = span.enter();
            }
            let span = tracing::info_span!("reconcile", kind = %"Route", key = "default/a");
            tracing::warn!(parent: &span, error = "boom", "reconcile failed");
            tracing::warn!(parent: &span, "something else");
            let other = tracing::info_span!("not_a_reconcile", kind = %"Route");
            tracing::warn!(parent: &other, "reconcile failed");
        });
        assert_eq!(metrics.reconciles("Service"), 2);
        assert_eq!(metrics.reconciles("Route"), 1);
        assert_eq!(metrics.failures("Route"), 1);
        assert_eq!(metrics.failures("Service"), 0);
        metrics.set_leading(true);
        let text = metrics.render();
        assert!(
            text.contains("knative_operator_reconciles_total{kind=\"Service\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("knative_operator_reconcile_errors_total{kind=\"Route\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("knative_operator_leader 1\n"), "{text}");
    }

    #[test]
    fn readyz_follows_health_and_metrics_are_served_only_when_asked() {
        let health = Health::new();
        assert_eq!(respond("/healthz", &health, None).status(), StatusCode::OK);
        assert_eq!(
            respond("/readyz", &health, None).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.set_ready(true);
        assert_eq!(respond("/readyz", &health, None).status(), StatusCode::OK);
        assert_eq!(
            respond("/metrics", &health, None).status(),
            StatusCode::NOT_FOUND
        );
        let metrics = Metrics::new();
        let response = respond("/metrics", &health, Some(&metrics));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("text/plain; version=0.0.4")
        );
    }
}
