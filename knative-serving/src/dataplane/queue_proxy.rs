//! [`QueueProxy`]: the per-replica proxy in front of the app
//! (`specs/SERVING.md §4`, "queue-proxy").
//!
//! Per request: Knative and kubelet probes are answered from the app's
//! readiness (they bypass stats and the breaker); every other request is
//! counted in the time-weighted [`RequestStats`] (a request carrying
//! `K-Proxy-Request: activator` counts as total and as proxied), waits for
//! the [`Breaker`] when `containerConcurrency` ≥ 1 (cc in flight, 10·cc
//! waiting, `503 pending request queue full` beyond), runs under the
//! revision's [`Timeouts`], and is forwarded to the app over pooled HTTP/1
//! connections. Stats and the breaker slot are held until the response body
//! has been written out.
//!
//! The same proxy runs in-process (the embedded platform makes one per
//! ready replica and calls [`QueueProxy::handle`] directly) or standalone
//! ([`run_from_env`], the `knative queue-proxy` sidecar), configured with
//! upstream's environment variables.

use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode, header};
use tokio::net::TcpStream;
use tracing::{Instrument, debug, info, info_span};

use super::breaker::{Breaker, BreakerError, BreakerParams};
use super::headers;
use super::stats::{RequestStats, StatsReport};
use super::upstream::{ForwardError, Upstream};
use super::{Body, BoxError, Timeouts, text_response};

/// How the queue-proxy decides that the app is ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// A TCP connection to the app is accepted (Knative's default probe).
    Tcp,
    /// `GET path` answers 200–399.
    Http {
        /// The path to request.
        path: String,
        /// The port to probe (`None` = the app's port).
        port: Option<u16>,
        /// Extra request headers.
        headers: Vec<(String, String)>,
    },
}

/// How a [`QueueProxy`] runs.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueProxyConfig {
    /// Where the app listens.
    pub app: SocketAddr,
    /// The revision's `containerConcurrency` (0 = unlimited, no breaker).
    pub container_concurrency: usize,
    /// The revision's timeouts.
    pub timeouts: Timeouts,
    /// How to check the app's readiness.
    pub readiness: Readiness,
    /// How long a probe of the app may take.
    pub probe_timeout: Duration,
}

impl QueueProxyConfig {
    /// A proxy to `app` with no concurrency limit, default timeouts and a
    /// TCP readiness check.
    pub fn new(app: SocketAddr) -> Self {
        QueueProxyConfig {
            app,
            container_concurrency: 0,
            timeouts: Timeouts::default(),
            readiness: Readiness::Tcp,
            probe_timeout: Duration::from_secs(1),
        }
    }
}

/// The queue-proxy of one replica.
pub struct QueueProxy {
    config: QueueProxyConfig,
    breaker: Option<Breaker>,
    stats: Arc<RequestStats>,
    upstream: Upstream,
    draining: AtomicBool,
    last_report: Mutex<StatsReport>,
    last_request: Mutex<Instant>,
}

impl std::fmt::Debug for QueueProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueProxy")
            .field("app", &self.config.app)
            .field("container_concurrency", &self.config.container_concurrency)
            .finish_non_exhaustive()
    }
}

impl QueueProxy {
    /// A queue-proxy for `config`, sharing `upstream`'s connections.
    pub fn new(config: QueueProxyConfig, upstream: Upstream) -> Self {
        let cc = config.container_concurrency;
        QueueProxy {
            breaker: (cc > 0).then(|| Breaker::new(BreakerParams::for_container_concurrency(cc))),
            stats: Arc::new(RequestStats::new(Instant::now())),
            upstream,
            draining: AtomicBool::new(false),
            last_report: Mutex::new(StatsReport::default()),
            last_request: Mutex::new(Instant::now()),
            config,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &QueueProxyConfig {
        &self.config
    }

    /// Requests in flight (running or waiting for the breaker).
    pub fn in_flight(&self) -> u64 {
        self.stats.current_concurrency()
    }

    /// Closes the window of stats at `now` and returns it (the autoscaler
    /// collects this every second).
    pub fn report(&self, now: Instant) -> StatsReport {
        let report = self.stats.report(now);
        *self
            .last_report
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = report;
        report
    }

    /// The last report [`QueueProxy::report`] produced.
    pub fn last_report(&self) -> StatsReport {
        *self
            .last_report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts draining: probes fail from now on so no new traffic is sent,
    /// while requests already here complete.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether [`QueueProxy::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Waits until no request is in flight.
    pub async fn wait_idle(&self) {
        while self.in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until no request is in flight and none arrived for `quiet`
    /// (what a pre-stop hook waits for: endpoints have stopped sending).
    pub async fn wait_drained(&self, quiet: Duration) {
        loop {
            let since = self
                .last_request
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .elapsed();
            if self.in_flight() == 0 && since >= quiet {
                return;
            }
            let wait = quiet.saturating_sub(since).max(Duration::from_millis(10));
            tokio::time::sleep(wait.min(Duration::from_millis(100))).await;
        }
    }

    /// Whether the app passes its readiness check (and the proxy is not draining).
    pub async fn is_ready(&self) -> bool {
        if self.is_draining() {
            return false;
        }
        let check = probe_app(&self.config);
        tokio::time::timeout(self.config.probe_timeout, check)
            .await
            .unwrap_or(false)
    }

    /// Serves one request completely: probes, stats, breaker, timeouts
    /// (counted from `started`) and forwarding. Never fails: problems are
    /// answered with 502, 503 or 504 and a body that says what happened.
    pub async fn handle(&self, request: Request<Body>, started: Instant) -> Response<Body> {
        if let Some(response) = self.answer_probe(request.headers()).await {
            return response;
        }
        let timeouts = self.config.timeouts;
        super::timeout::with_timeouts(timeouts, started.into(), async move {
            match self.proxy(request).await {
                Ok(response) => response,
                Err(ProxyError::Unsent(_, error)) => text_response(
                    StatusCode::BAD_GATEWAY,
                    format_args!(
                        "queue-proxy: could not reach the app at {}: {error}",
                        self.config.app
                    ),
                ),
                Err(ProxyError::Response(response)) => response,
            }
        })
        .await
    }

    /// Answers Knative and kubelet probes; `None` for other requests.
    pub async fn answer_probe(&self, h: &hyper::HeaderMap) -> Option<Response<Body>> {
        let knative = headers::is_probe(h, headers::PROBE_QUEUE);
        if !knative && !headers::is_kubelet_probe(h) {
            return None;
        }
        Some(if self.is_ready().await {
            super::exact_response(StatusCode::OK, headers::PROBE_QUEUE)
        } else {
            text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue-proxy: the app is not ready",
            )
        })
    }

    /// Counts, throttles and forwards a request, without timeouts (the
    /// caller applies them). A request that could not be sent comes back
    /// so the caller can try another replica.
    pub(crate) async fn proxy(&self, request: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let proxied = headers::is_proxied(request.headers());
        let in_flight = self.stats.track(proxied);
        *self
            .last_request
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        let permit = match &self.breaker {
            None => None,
            Some(breaker) => match breaker.acquire().await {
                Ok(permit) => Some(permit),
                Err(BreakerError::QueueFull) => {
                    return Err(ProxyError::Response(text_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "pending request queue full",
                    )));
                }
                Err(e) => {
                    return Err(ProxyError::Response(text_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        e,
                    )));
                }
            },
        };
        let span = info_span!("queue_proxy", app = %self.config.app, proxied);
        match self
            .upstream
            .send(self.config.app, request)
            .instrument(span)
            .await
        {
            Ok(response) => Ok(response.map(|body| {
                super::boxed(Holding {
                    body,
                    _held: (permit, in_flight),
                })
            })),
            Err(ForwardError::Unsent { request, error }) => Err(ProxyError::Unsent(request, error)),
            Err(ForwardError::Failed(error)) => Err(ProxyError::Response(
                super::server::forward_error_response(&error, "queue-proxy"),
            )),
        }
    }
}

/// Why [`QueueProxy::proxy`] did not produce the app's response.
pub(crate) enum ProxyError {
    /// The request was not sent: it may go elsewhere.
    Unsent(Box<Request<Body>>, BoxError),
    /// The answer to give instead (queue full, app failed mid-request).
    Response(Response<Body>),
}

/// A body that keeps something (a breaker permit, an in-flight guard)
/// alive until the body is done.
pub(crate) struct Holding<T> {
    pub(crate) body: Body,
    pub(crate) _held: T,
}

impl<T: Unpin> hyper::body::Body for Holding<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Probes the app once.
async fn probe_app(config: &QueueProxyConfig) -> bool {
    match &config.readiness {
        Readiness::Tcp => TcpStream::connect(config.app).await.is_ok(),
        Readiness::Http {
            path,
            port,
            headers: extra,
        } => {
            let address = SocketAddr::new(config.app.ip(), port.unwrap_or(config.app.port()));
            let mut request = Request::get(path.as_str())
                .header(header::HOST, address.to_string())
                .header(header::USER_AGENT, headers::QUEUE_PROXY_PROBE_USER_AGENT);
            for (name, value) in extra {
                request = request.header(name.as_str(), value.as_str());
            }
            let Ok(request) = request.body(super::empty()) else {
                return false;
            };
            // Probes use their own connection, as the kubelet does.
            match Upstream::new().send(address, request).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    (200..400).contains(&status)
                }
                Err(_) => false,
            }
        }
    }
}

/// The standalone queue-proxy's settings, read from the environment
/// variables upstream's sidecar uses.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueProxyEnv {
    /// `QUEUE_SERVING_PORT` (default 8012): where requests come in.
    pub serving_port: u16,
    /// `QUEUE_ADMIN_PORT` (default 8022): `/drain`, `/wait-for-drain`.
    pub admin_port: u16,
    /// `QUEUE_METRICS_PORT` (default 9090): the autoscaler's metrics.
    pub metrics_port: u16,
    /// `QUEUE_DRAIN_SECONDS` (default 30): how long to keep serving after
    /// SIGTERM so that endpoints can be updated.
    pub drain: Duration,
    /// The proxy itself: `USER_PORT` (default 8080) on 127.0.0.1,
    /// `CONTAINER_CONCURRENCY` (0), `REVISION_TIMEOUT_SECONDS` (300),
    /// `REVISION_RESPONSE_START_TIMEOUT_SECONDS` and
    /// `REVISION_IDLE_TIMEOUT_SECONDS` (0 = off), and
    /// `SERVING_READINESS_PROBE` (the container's readiness probe as JSON).
    pub proxy: QueueProxyConfig,
}

/// A bad environment variable.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}={value:?}: {message}")]
pub struct EnvError {
    /// The variable.
    pub name: &'static str,
    /// Its value.
    pub value: String,
    /// What is wrong.
    pub message: String,
}

impl QueueProxyEnv {
    /// Reads the settings through `var` (e.g. `|k| std::env::var(k).ok()`).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        fn number<T: std::str::FromStr>(
            var: &impl Fn(&str) -> Option<String>,
            name: &'static str,
            default: T,
        ) -> Result<T, EnvError>
        where
            T::Err: std::fmt::Display,
        {
            match var(name) {
                None => Ok(default),
                Some(v) if v.trim().is_empty() => Ok(default),
                Some(v) => v.trim().parse().map_err(|e: T::Err| EnvError {
                    name,
                    message: e.to_string(),
                    value: v,
                }),
            }
        }
        let seconds = |name: &'static str, default: u64| -> Result<Option<Duration>, EnvError> {
            let s: u64 = number(&var, name, default)?;
            Ok((s > 0).then(|| Duration::from_secs(s).min(super::MAX_TIMEOUT)))
        };
        let user_port: u16 = number(&var, "USER_PORT", 8080)?;
        let total = seconds("REVISION_TIMEOUT_SECONDS", 300)?.unwrap_or(super::DEFAULT_TIMEOUT);
        let readiness = match var("SERVING_READINESS_PROBE") {
            Some(json) if !json.trim().is_empty() => readiness_from_probe_json(&json, user_port)
                .map_err(|message| EnvError {
                    name: "SERVING_READINESS_PROBE",
                    value: json.clone(),
                    message,
                })?,
            _ => Readiness::Tcp,
        };
        Ok(QueueProxyEnv {
            serving_port: number(&var, "QUEUE_SERVING_PORT", 8012)?,
            admin_port: number(&var, "QUEUE_ADMIN_PORT", 8022)?,
            metrics_port: number(&var, "QUEUE_METRICS_PORT", 9090)?,
            drain: Duration::from_secs(number(&var, "QUEUE_DRAIN_SECONDS", 30)?),
            proxy: QueueProxyConfig {
                app: SocketAddr::from((Ipv4Addr::LOCALHOST, user_port)),
                container_concurrency: number(&var, "CONTAINER_CONCURRENCY", 0)?,
                timeouts: Timeouts {
                    total,
                    response_start: seconds("REVISION_RESPONSE_START_TIMEOUT_SECONDS", 0)?
                        .map(|d| d.min(total)),
                    idle: seconds("REVISION_IDLE_TIMEOUT_SECONDS", 0)?,
                },
                readiness,
                probe_timeout: Duration::from_secs(1),
            },
        })
    }
}

/// A readiness check from a Kubernetes `Probe` in JSON.
fn readiness_from_probe_json(json: &str, user_port: u16) -> Result<Readiness, String> {
    let probe: k8s_openapi::api::core::v1::Probe =
        serde_json::from_str(json).map_err(|e| format!("not a readiness probe: {e}"))?;
    let port_of = |port: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString| match port {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => u16::try_from(*p)
            .ok()
            .filter(|p| *p != 0 && *p != user_port),
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(_) => None,
    };
    if let Some(http) = probe.http_get {
        if http
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"))
        {
            return Err("https readiness probes are not supported".to_owned());
        }
        return Ok(Readiness::Http {
            path: http.path.unwrap_or_else(|| "/".to_owned()),
            port: port_of(&http.port),
            headers: http
                .http_headers
                .unwrap_or_default()
                .into_iter()
                .map(|h| (h.name, h.value))
                .collect(),
        });
    }
    if probe.exec.is_some() || probe.grpc.is_some() {
        return Err("only httpGet and tcpSocket readiness probes are supported".to_owned());
    }
    Ok(Readiness::Tcp)
}

/// Runs the standalone queue-proxy (`knative queue-proxy`) until SIGTERM
/// or SIGINT, then drains: probes fail at once, requests keep being served
/// for [`QueueProxyEnv::drain`], and the process returns once the requests
/// in flight are done.
pub async fn run_from_env() -> Result<(), BoxError> {
    let env = QueueProxyEnv::from_vars(|k| std::env::var(k).ok())?;
    run(env, shutdown_signal()).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// Runs a standalone queue-proxy with `env` until `shutdown`, then drains.
pub async fn run(
    env: QueueProxyEnv,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), BoxError> {
    use super::server::{Server, ServerLimits};

    let proxy = Arc::new(QueueProxy::new(env.proxy.clone(), Upstream::new()));
    let any = Ipv4Addr::UNSPECIFIED;
    let serving = tokio::net::TcpListener::bind((any, env.serving_port)).await?;
    let admin = tokio::net::TcpListener::bind((any, env.admin_port)).await?;
    let metrics = tokio::net::TcpListener::bind((any, env.metrics_port)).await?;
    info!(
        serving = %serving.local_addr()?,
        admin = %admin.local_addr()?,
        metrics = %metrics.local_addr()?,
        app = %env.proxy.app,
        container_concurrency = env.proxy.container_concurrency,
        "queue-proxy listening"
    );

    let reporter = {
        let proxy = Arc::clone(&proxy);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                proxy.report(Instant::now());
            }
        })
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    // Requests in flight at shutdown may run for the revision's whole timeout.
    let serving_limits = ServerLimits {
        drain_timeout: env.proxy.timeouts.total + Duration::from_secs(30),
        // The app decides what bodies it takes (upstream sets no limit).
        max_body_bytes: None,
        ..ServerLimits::default()
    };
    let serve = {
        let proxy = Arc::clone(&proxy);
        Server::new(serving_limits).serve(
            serving,
            move |request, _peer| {
                let proxy = Arc::clone(&proxy);
                async move { proxy.handle(request, Instant::now()).await }
            },
            stopped(),
        )
    };
    let admin_serve = {
        let proxy = Arc::clone(&proxy);
        Server::new(ServerLimits::default()).serve(
            admin,
            move |request, _peer| {
                let proxy = Arc::clone(&proxy);
                let path = request.uri().path().to_owned();
                async move { admin_handler(&proxy, &path, env.drain).await }
            },
            stopped(),
        )
    };
    let metrics_serve = {
        let proxy = Arc::clone(&proxy);
        Server::new(ServerLimits::default()).serve(
            metrics,
            move |_request, _peer| {
                let proxy = Arc::clone(&proxy);
                async move { metrics_response(&proxy.last_report()) }
            },
            stopped(),
        )
    };
    let drain = {
        let proxy = Arc::clone(&proxy);
        async move {
            shutdown.await;
            info!(drain = ?env.drain, "queue-proxy draining");
            proxy.drain();
            tokio::time::sleep(env.drain).await;
            let _ = stop_tx.send(true);
        }
    };
    let (served, _, _, ()) = tokio::join!(serve, admin_serve, metrics_serve, drain);
    reporter.abort();
    proxy.wait_idle().await;
    debug!("queue-proxy stopped");
    served.map_err(Into::into)
}

async fn admin_handler(proxy: &QueueProxy, path: &str, quiet: Duration) -> Response<Body> {
    match path {
        "/drain" => {
            proxy.drain();
            text_response(StatusCode::OK, "draining")
        }
        "/wait-for-drain" => {
            proxy.drain();
            proxy.wait_drained(quiet).await;
            text_response(StatusCode::OK, "drained")
        }
        path => text_response(
            StatusCode::NOT_FOUND,
            format_args!(
                "queue-proxy admin: no handler for {path} (try /drain or /wait-for-drain)"
            ),
        ),
    }
}

/// The autoscaler's metrics in Prometheus text format, under the names
/// upstream's queue-proxy uses.
pub fn metrics_response(report: &StatsReport) -> Response<Body> {
    let body = format!(
        "# TYPE queue_average_concurrent_requests gauge\n\
         queue_average_concurrent_requests {}\n\
         # TYPE queue_average_proxied_concurrent_requests gauge\n\
         queue_average_proxied_concurrent_requests {}\n\
         # TYPE queue_requests_per_second gauge\n\
         queue_requests_per_second {}\n\
         # TYPE queue_proxied_operations_per_second gauge\n\
         queue_proxied_operations_per_second {}\n",
        report.average_concurrency,
        report.average_proxied_concurrency,
        report.request_count,
        report.proxied_request_count,
    );
    let mut response = Response::new(super::full(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}
