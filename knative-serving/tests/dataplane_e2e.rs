//! The data plane end to end with real processes: the Serving controllers,
//! the KPA autoscaler, the local-process backend running
//! `knative-sample-app` replicas, and the ingress + activator +
//! queue-proxies on 127.0.0.1 (`specs/SERVING.md §2`, `§4`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use knative_core::apis::{Context, SetDefaults, Validate};
use knative_core::store::InMemoryStore;
use knative_serving::api::Service;
use knative_serving::autoscaling::config::AutoscalerConfig;
use knative_serving::backend::local::{LocalBackend, LocalCommand, LocalConfig};
use knative_serving::backend::{WorkloadBackend, WorkloadKey};
use knative_serving::config::ServingConfig;
use knative_serving::dataplane::Dataplane;
use knative_serving::dataplane::ingress::DataplaneConfig;
use knative_serving::dataplane::server::ServerLimits;
use knative_serving::reconciler::{Serving, ServingObjects};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(60);

/// The tests start processes and measure timing: one at a time, so that
/// they do not starve each other on a 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const HOST: &str = "hello.default.example.com";

struct Platform {
    config: ServingConfig,
    backend: LocalBackend,
    objects: ServingObjects,
    ingress: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    _dataplane: Dataplane,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Platform {
    async fn start(autoscaler: AutoscalerConfig, limits: ServerLimits) -> Platform {
        let backend = LocalBackend::new(LocalConfig {
            images: [(
                "sample-app".to_owned(),
                LocalCommand {
                    command: vec![env!("CARGO_BIN_EXE_knative-sample-app").to_owned()],
                    ..LocalCommand::default()
                },
            )]
            .into(),
            ..LocalConfig::default()
        });
        let store = InMemoryStore::new();
        let objects = ServingObjects::in_memory(&store);
        let mut config = ServingConfig::default();
        config.network = config
            .network
            .with_domain_config_map(&BTreeMap::from([("example.com".to_owned(), String::new())]));
        config.autoscaler = autoscaler;
        let serving = Serving::new(objects.clone(), Arc::new(backend.clone()), config.clone());
        let dataplane = serving.dataplane(DataplaneConfig {
            limits,
            ..DataplaneConfig::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let ingress = listener.local_addr().expect("address");
        let (stop_controllers, stopped) = tokio::sync::oneshot::channel::<()>();
        let controllers = tokio::spawn(serving.run(async {
            let _ = stopped.await;
        }));
        let (stop_ingress, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving_dataplane = dataplane.clone();
        let ingress_task = tokio::spawn(async move {
            serving_dataplane
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
                .expect("ingress serves");
        });
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Platform {
            config,
            backend,
            objects,
            ingress,
            client: Client::builder(TokioExecutor::new()).build(connector),
            _dataplane: dataplane,
            stop: vec![stop_controllers, stop_ingress],
            tasks: vec![controllers, ingress_task],
        }
    }

    async fn stop(self) {
        for stop in self.stop {
            let _ = stop.send(());
        }
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(40), task).await;
        }
        let _ = self
            .backend
            .remove(&WorkloadKey::new("default", "hello-00001"))
            .await;
        let _ = self
            .backend
            .remove(&WorkloadKey::new("default", "hello-00002"))
            .await;
    }

    async fn apply(&self, yaml: &str) {
        let services = &self.objects.services;
        let mut svc: Service = serde_yaml::from_str(yaml).expect("manifest parses");
        let ctx = Context::create().with_config(self.config.clone());
        svc.set_defaults(&ctx);
        let errors = svc.validate(&ctx);
        assert!(errors.is_empty(), "manifest is valid: {errors}");
        match services.get(Some("default"), "hello").await {
            Ok(existing) => {
                svc.metadata.resource_version = existing.metadata.resource_version.clone();
                services.replace(&svc).await.expect("updated");
            }
            Err(_) => {
                services.create(&svc).await.expect("created");
            }
        }
    }

    async fn ready(&self, generation: i64) {
        let services = Arc::clone(&self.objects.services);
        eventually(&format!("service generation {generation} ready"), || {
            let services = Arc::clone(&services);
            async move {
                let svc = services.get(Some("default"), "hello").await.ok()?;
                let observed = svc.status.as_ref()?.status.observed_generation;
                (observed == Some(generation) && svc.is_ready()).then_some(())
            }
        })
        .await;
    }

    /// `(replicas asked for, replicas running, ready)` of a revision.
    fn replicas(&self, revision: &str) -> (u32, u32, usize) {
        self.backend
            .status(&WorkloadKey::new("default", revision))
            .map(|s| {
                let s = s.borrow();
                (s.desired, s.actual, s.ready.len())
            })
            .unwrap_or_default()
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, String), String> {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.ingress))
            .header(hyper::header::HOST, HOST)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    async fn get(&self, path: &str) -> Result<(StatusCode, String), String> {
        self.request("GET", path, Bytes::new()).await
    }
}

fn service(annotations: &[(&str, &str)], spec_extra: &str, target: &str, traffic: &str) -> String {
    let annotations: String = annotations
        .iter()
        .map(|(k, v)| format!("        {k}: \"{v}\"\n"))
        .collect();
    let annotations = if annotations.is_empty() {
        String::new()
    } else {
        format!("      annotations:\n{annotations}")
    };
    format!(
        r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  namespace: default
spec:
  template:
    metadata:
{annotations}      labels:
        app: hello
    spec:
{spec_extra}      containers:
        - image: sample-app
          env:
            - name: TARGET
              value: {target}
          readinessProbe:
            httpGet:
              path: /healthz
{traffic}
"#
    )
}

async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fast_autoscaler() -> AutoscalerConfig {
    AutoscalerConfig {
        stable_window: Duration::from_secs(6),
        scale_to_zero_grace_period: Duration::from_secs(2),
        allow_zero_initial_scale: true,
        ..AutoscalerConfig::default()
    }
}

/// (a) A revision at zero gets 200 requests at once: the activator buffers
/// them, pokes the autoscaler, and every one succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_at_zero_serves_200_concurrent_requests_without_a_failure() {
    let _serial = SERIAL.lock().await;
    let p = Arc::new(Platform::start(fast_autoscaler(), ServerLimits::default()).await);
    p.apply(&service(
        &[("autoscaling.knative.dev/initial-scale", "0")],
        "",
        "zero",
        "",
    ))
    .await;
    p.ready(1).await;
    assert_eq!(p.replicas("hello-00001").1, 0, "no replica runs at first");

    let started = Instant::now();
    let requests: Vec<_> = (0..200)
        .map(|_| {
            let p = Arc::clone(&p);
            tokio::spawn(async move { p.get("/").await })
        })
        .collect();
    let mut ok = 0;
    for r in requests {
        match r.await.expect("joined") {
            Ok((StatusCode::OK, body)) => {
                assert_eq!(body, "Hello zero!\n");
                ok += 1;
            }
            other => panic!("a request failed: {other:?}"),
        }
    }
    assert_eq!(ok, 200);
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    assert!(p.replicas("hello-00001").2 >= 1);
    if let Ok(p) = Arc::try_unwrap(p) {
        p.stop().await;
    }
}

/// (b) Load scales the revision up; a trickle keeps it serving while it
/// scales down; idle, it goes to zero after the grace period. No request
/// fails at any point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_ramps_replicas_up_then_down_to_zero_with_no_failed_request() {
    let _serial = SERIAL.lock().await;
    let p = Arc::new(Platform::start(fast_autoscaler(), ServerLimits::default()).await);
    p.apply(&service(
        &[
            ("autoscaling.knative.dev/target", "1"),
            ("autoscaling.knative.dev/max-scale", "4"),
        ],
        "",
        "ramp",
        "",
    ))
    .await;
    p.ready(1).await;

    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let run = Arc::new(AtomicBool::new(true));
    let client = |p: Arc<Platform>, run: Arc<AtomicBool>, pause: Duration| {
        let failures = Arc::clone(&failures);
        let served = Arc::clone(&served);
        tokio::spawn(async move {
            while run.load(Ordering::SeqCst) {
                match p.get("/sleep/50").await {
                    Ok((StatusCode::OK, _)) => {
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    other => {
                        eprintln!("failed request: {other:?}");
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(pause).await;
            }
        })
    };
    // Heavy load: six clients in a loop.
    let heavy = Arc::new(AtomicBool::new(true));
    let heavy_clients: Vec<_> = (0..6)
        .map(|_| client(Arc::clone(&p), Arc::clone(&heavy), Duration::ZERO))
        .collect();
    // About 0.25 requests in flight: one replica's worth at target 1.
    let trickle = client(Arc::clone(&p), Arc::clone(&run), Duration::from_millis(150));
    let mut max_ready = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        max_ready = max_ready.max(p.replicas("hello-00001").2);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        max_ready >= 3,
        "scaled up under load: {max_ready} ready at most"
    );
    heavy.store(false, Ordering::SeqCst);
    for c in heavy_clients {
        c.await.expect("joined");
    }
    // The trickle keeps going while replicas are removed.
    eventually("scale down to one replica under a trickle", || {
        let p = Arc::clone(&p);
        async move { (p.replicas("hello-00001").0 <= 1).then_some(()) }
    })
    .await;
    run.store(false, Ordering::SeqCst);
    trickle.await.expect("joined");
    eventually("scale to zero when idle", || {
        let p = Arc::clone(&p);
        async move { (p.replicas("hello-00001") == (0, 0, 0)).then_some(()) }
    })
    .await;
    assert_eq!(failures.load(Ordering::SeqCst), 0, "no request failed");
    assert!(served.load(Ordering::SeqCst) > 100);
    // And back from zero.
    assert_eq!(p.get("/").await.map(|r| r.0), Ok(StatusCode::OK));
    if let Ok(p) = Arc::try_unwrap(p) {
        p.stop().await;
    }
}

/// (c) With `containerConcurrency: 1` no replica ever sees two requests at
/// once, however many clients push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_concurrency_one_is_never_exceeded_inside_the_app() {
    let _serial = SERIAL.lock().await;
    let p = Arc::new(Platform::start(fast_autoscaler(), ServerLimits::default()).await);
    p.apply(&service(
        &[
            ("autoscaling.knative.dev/min-scale", "3"),
            ("autoscaling.knative.dev/max-scale", "3"),
        ],
        "      containerConcurrency: 1\n",
        "cc",
        "",
    ))
    .await;
    p.ready(1).await;
    let clients: Vec<_> = (0..12)
        .map(|_| {
            let p = Arc::clone(&p);
            tokio::spawn(async move {
                for _ in 0..15 {
                    let r = p.get("/sleep/20").await;
                    assert_eq!(r.as_ref().map(|r| r.0), Ok(StatusCode::OK), "{r:?}");
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("every request succeeds");
    }
    let ready = p
        .backend
        .status(&WorkloadKey::new("default", "hello-00001"))
        .expect("status")
        .borrow()
        .ready
        .clone();
    assert_eq!(
        ready.len(),
        3,
        "min-scale = max-scale = 3: no replica came or went"
    );
    let mut busiest = 0;
    for endpoint in ready {
        let mut stream = TcpStream::connect(endpoint.address)
            .await
            .expect("connects");
        stream
            .write_all(b"GET /stats HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
            .await
            .expect("writes");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("reads");
        let max: usize = response
            .rsplit("max ")
            .next()
            .and_then(|m| m.trim().parse().ok())
            .unwrap_or_else(|| panic!("stats: {response}"));
        assert!(max <= 1, "{} saw {max} requests at once", endpoint.replica);
        busiest = busiest.max(max);
    }
    assert_eq!(busiest, 1);
    if let Ok(p) = Arc::try_unwrap(p) {
        p.stop().await;
    }
}

/// (d) A 90/10 split measured over 2 000 requests lands within ±3%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_90_10_split_lands_within_3_percent_over_2000_requests() {
    let _serial = SERIAL.lock().await;
    let p = Arc::new(Platform::start(AutoscalerConfig::default(), ServerLimits::default()).await);
    p.apply(&service(&[], "", "one", "")).await;
    p.ready(1).await;
    let traffic = "  traffic:\n    - revisionName: hello-00001\n      percent: 90\n    - latestRevision: true\n      percent: 10\n";
    p.apply(&service(&[], "", "two", traffic)).await;
    p.ready(2).await;
    let counts = Arc::new(std::sync::Mutex::new(BTreeMap::<String, usize>::new()));
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let p = Arc::clone(&p);
            let counts = Arc::clone(&counts);
            tokio::spawn(async move {
                for _ in 0..100 {
                    let (status, body) = p.get("/").await.expect("request");
                    assert_eq!(status, StatusCode::OK);
                    *counts.lock().expect("lock").entry(body).or_default() += 1;
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("joined");
    }
    let counts = counts.lock().expect("lock").clone();
    let two = counts.get("Hello two!\n").copied().unwrap_or(0);
    let one = counts.get("Hello one!\n").copied().unwrap_or(0);
    assert_eq!(one + two, 2000, "{counts:?}");
    let share = two as f64 / 2000.0;
    assert!((share - 0.10).abs() <= 0.03, "the 10% revision got {share}");
    if let Ok(p) = Arc::try_unwrap(p) {
        p.stop().await;
    }
}

/// (e) A request slower than `timeoutSeconds` gets a 504 at the timeout;
/// other requests are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_app_gets_504_at_the_revision_timeout() {
    let _serial = SERIAL.lock().await;
    let p = Arc::new(Platform::start(AutoscalerConfig::default(), ServerLimits::default()).await);
    p.apply(&service(&[], "      timeoutSeconds: 1\n", "slow", ""))
        .await;
    p.ready(1).await;
    let started = Instant::now();
    let slow = {
        let p = Arc::clone(&p);
        tokio::spawn(async move { p.get("/sleep/5000").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(p.get("/").await.map(|r| r.0), Ok(StatusCode::OK));
    let (status, body) = slow.await.expect("joined").expect("answered");
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(body.contains("timeout"), "{body}");
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(5),
        "answered after {elapsed:?}"
    );
    if let Ok(p) = Arc::try_unwrap(p) {
        p.stop().await;
    }
}

async fn raw_exchange(address: SocketAddr, bytes: &[u8], wait: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(address).await.expect("connects");
    stream.write_all(bytes).await.expect("writes");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut response)).await;
    (
        String::from_utf8_lossy(&response).into_owned(),
        started.elapsed(),
    )
}

/// (f) Oversized heads and bodies, and clients that send slowly, get a
/// clear status and are cut off without stalling anyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_slow_clients_are_cut_off_without_stalling_others() {
    let _serial = SERIAL.lock().await;
    let limits = ServerLimits {
        max_header_bytes: 16 * 1024,
        max_body_bytes: Some(1024 * 1024),
        header_read_timeout: Duration::from_secs(1),
        body_read_timeout: Duration::from_secs(1),
        ..ServerLimits::default()
    };
    let p = Arc::new(Platform::start(AutoscalerConfig::default(), limits).await);
    p.apply(&service(&[], "", "limits", "")).await;
    p.ready(1).await;
    let ingress = p.ingress;

    // Slow-loris clients hold connections while normal traffic flows.
    let loris: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(raw_exchange(
                ingress,
                format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ")
                    .as_bytes()
                    .to_vec()
                    .leak(),
                Duration::from_secs(5),
            ))
        })
        .collect();
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(p.get("/").await.map(|r| r.0), Ok(StatusCode::OK));
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "not stalled"
        );
    }
    for l in loris {
        let (response, elapsed) = l.await.expect("joined");
        assert!(response.starts_with("HTTP/1.1 408"), "{response}");
        assert!(
            elapsed < Duration::from_secs(3),
            "cut off after {elapsed:?}"
        );
    }

    // A head over 16 KiB.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(32 * 1024)
    );
    let (response, _) = raw_exchange(ingress, big.as_bytes(), Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");

    // A declared body over 1 MiB: refused before it is sent on.
    let declared = format!(
        "POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\n\r\n",
        2 * 1024 * 1024
    );
    let (response, _) = raw_exchange(ingress, declared.as_bytes(), Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("limit is 1048576 bytes"), "{response}");

    // A streamed (chunked) body that grows past 1 MiB.
    let mut chunked =
        format!("POST /echo HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n")
            .into_bytes();
    for _ in 0..40 {
        chunked.extend_from_slice(format!("{:x}\r\n", 64 * 1024).as_bytes());
        chunked.extend(std::iter::repeat_n(b'x', 64 * 1024));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (response, _) = raw_exchange(ingress, &chunked, Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");

    // A body that stalls.
    let stalled =
        format!("POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100\r\n\r\n0123456789");
    let (response, elapsed) =
        raw_exchange(ingress, stalled.as_bytes(), Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");

    // A body within the limit goes through.
    let (status, body) = p
        .request("POST", "/echo", Bytes::from(vec![b'y'; 512 * 1024]))
        .await
        .expect("answered");
    assert_eq!((status, body.as_str()), (StatusCode::OK, "524288\n"));

    // Probes and unknown hosts.
    let (response, _) = raw_exchange(
        ingress,
        b"GET / HTTP/1.1\r\nHost: x\r\nK-Network-Probe: activator\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        response.starts_with("HTTP/1.1 200") && response.ends_with("\r\n\r\nactivator"),
        "{response}"
    );
    // Clients cannot pick a revision by header.
    let (response, _) = raw_exchange(
        ingress,
        b"GET / HTTP/1.1\r\nHost: nobody.example.com\r\nKnative-Serving-Revision: hello-00001\r\nKnative-Serving-Namespace: default\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    let (response, _) = raw_exchange(
        ingress,
        b"GET / HTTP/1.1\r\nHost: nobody.example.com\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    assert!(
        response.contains("no Route serves host \"nobody.example.com\""),
        "{response}"
    );
    if let Ok(p) = Arc::try_unwrap(p) {
        p.stop().await;
    }
}

/// A revision that no route sends traffic to any more (its routing state
/// becomes `reserve`) scales to zero after the stable window and grace
/// period, like any idle revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_that_loses_its_traffic_scales_to_zero() {
    let _serial = SERIAL.lock().await;
    let p = Arc::new(Platform::start(fast_autoscaler(), ServerLimits::default()).await);
    p.apply(&service(&[], "", "one", "")).await;
    p.ready(1).await;
    assert_eq!(p.get("/").await.map(|r| r.1), Ok("Hello one!\n".to_owned()));
    p.apply(&service(&[], "", "two", "")).await;
    p.ready(2).await;
    assert_eq!(p.get("/").await.map(|r| r.1), Ok("Hello two!\n".to_owned()));
    eventually("the old revision at zero", || {
        let p = Arc::clone(&p);
        async move { (p.replicas("hello-00001") == (0, 0, 0)).then_some(()) }
    })
    .await;
    if let Ok(p) = Arc::try_unwrap(p) {
        p.stop().await;
    }
}
