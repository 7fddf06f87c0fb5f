//! `knative demo`: a scripted tour of the local platform. Every step
//! checks that what it reports really happened (a response body, a replica
//! count, a log line) and the summary says which steps passed.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use knative::local::{Platform, PlatformConfig};
use knative::serving::autoscaling::config::AutoscalerConfig;

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

const SERVICE: &str = r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  namespace: default
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/target: "4"
        autoscaling.knative.dev/max-scale: "5"
    spec:
      containers:
        - image: knative.dev/sample-app
          env: [{name: TARGET, value: "Knative v1"}]
"#;

const SERVICE_V2: &str = r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  namespace: default
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/target: "4"
        autoscaling.knative.dev/max-scale: "5"
    spec:
      containers:
        - image: knative.dev/sample-app
          env: [{name: TARGET, value: "Knative v2"}]
  traffic:
    - revisionName: hello-00001
      percent: PERCENT_V1
    - latestRevision: true
      tag: candidate
      percent: PERCENT_V2
"#;

const EVENTING: &str = r#"
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default, namespace: default}
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: orders-display, namespace: default}
spec:
  template:
    metadata:
      annotations: {autoscaling.knative.dev/min-scale: "1"}
    spec:
      containers: [{image: knative.dev/sample-app}]
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: payments-display, namespace: default}
spec:
  template:
    metadata:
      annotations: {autoscaling.knative.dev/min-scale: "1"}
    spec:
      containers: [{image: knative.dev/sample-app}]
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: dead-letters, namespace: default}
spec:
  template:
    metadata:
      annotations: {autoscaling.knative.dev/min-scale: "1"}
    spec:
      containers: [{image: knative.dev/sample-app}]
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: orders, namespace: default}
spec:
  broker: default
  filters: [{exact: {type: com.example.order.created}}]
  subscriber:
    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: orders-display}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: payments, namespace: default}
spec:
  broker: default
  filters: [{cesql: "type LIKE 'com.example.payment.%'"}]
  subscriber:
    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: payments-display}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: audit, namespace: default}
spec:
  broker: default
  filters: [{exact: {type: com.example.order.created}}]
  subscriber: {uri: "http://127.0.0.1:9/unreachable"}
  delivery:
    retry: 1
    backoffPolicy: linear
    backoffDelay: PT0.1S
    deadLetterSink:
      ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: dead-letters}
"#;

/// The sample pipeline: a Task writes a small app into a workspace, a
/// second builds an OCI image of it with the built-in image step (no
/// Docker) into an OCI layout in that workspace.
const PIPELINE: &str = include_str!("../../examples/manifests/pipeline.yaml");

/// One step's outcome.
struct Step {
    name: &'static str,
    took: Duration,
    result: Result<String, String>,
}

/// Prints a status line, overwriting the previous one on a terminal.
fn progress(line: &str) {
    use std::io::IsTerminal as _;
    if std::io::stdout().is_terminal() {
        print!("\r\x1b[2K  {line}");
        let _ = std::io::stdout().flush();
    }
}

fn end_progress() {
    use std::io::IsTerminal as _;
    if std::io::stdout().is_terminal() {
        print!("\r\x1b[2K");
        let _ = std::io::stdout().flush();
    }
}

/// GET `path` on `host` through the platform's ingress.
async fn get(
    client: &HttpClient,
    platform: &Platform,
    host: &str,
    path: &str,
) -> Result<(u16, String), String> {
    let request = hyper::Request::get(format!("http://{}{path}", platform.ingress()))
        .header(hyper::header::HOST, host)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).trim().to_owned()))
}

/// The config the demo runs with: upstream's autoscaler, but with the
/// shortest windows it accepts, so that 0 → N → 0 fits in a minute.
fn config() -> Result<PlatformConfig, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let autoscaler = AutoscalerConfig {
        stable_window: Duration::from_secs(6),
        scale_to_zero_grace_period: Duration::from_secs(2),
        ..AutoscalerConfig::default()
    };
    Ok(PlatformConfig {
        sample_app: Some(vec![
            me.to_string_lossy().into_owned(),
            "sample-app".to_owned(),
        ]),
        autoscaler: Some(autoscaler),
        ..PlatformConfig::default()
    })
}

/// Runs the tour.
pub async fn run() -> Result<(), String> {
    let started = Instant::now();
    println!("knative demo: Serving, Eventing and Build on this machine, no cluster\n");
    let platform = Platform::start(config()?)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "platform up: ingress 127.0.0.1:{}, broker ingress {}, domain {}\n",
        platform.ingress().port(),
        platform.broker_ingress(),
        platform.domain()
    );
    let client: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut steps = Vec::new();
    let host = format!("hello.default.{}", platform.domain());

    macro_rules! step {
        ($name:expr, $body:expr) => {{
            println!("▶ {}", $name);
            let t = Instant::now();
            let result: Result<String, String> = $body.await;
            end_progress();
            match &result {
                Ok(what) => println!("  ✓ {what} ({:.1} s)\n", t.elapsed().as_secs_f64()),
                Err(why) => println!("  ✗ {why}\n"),
            }
            let failed = result.is_err();
            steps.push(Step {
                name: $name,
                took: t.elapsed(),
                result,
            });
            failed
        }};
    }

    let failed = step!("deploy service hello", async {
        platform.apply(SERVICE).await.map_err(|e| e.to_string())?;
        let svc = platform
            .wait_ready("ksvc", "default", "hello", Duration::from_secs(60))
            .await
            .map_err(|e| e.to_string())?;
        let (status, body) = get(&client, &platform, &host, "/").await?;
        if status != 200 {
            return Err(format!("GET / answered {status}: {body}"));
        }
        Ok(format!(
            "Ready at {}:{} → {body:?}",
            svc["status"]["url"].as_str().unwrap_or(""),
            platform.ingress().port()
        ))
    });
    if failed {
        return finish(platform, steps, started).await;
    }

    step!(
        "drive load from zero: 30 clients for 8 s (watch 0 → N)",
        async {
            // hello has a replica since the request above: let it go idle to
            // zero first (stable window 6 s + grace 2 s), so the load really
            // starts from 0.
            let idle = wait_for_zero(&platform, "hello-00001", Duration::from_secs(60)).await?;
            let stop = Arc::new(AtomicBool::new(false));
            let done = Arc::new(AtomicU64::new(0));
            let errors = Arc::new(AtomicU64::new(0));
            let latencies = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
            let clients: Vec<_> = (0..30)
                .map(|_| {
                    let (client, platform, host) = (client.clone(), platform.clone(), host.clone());
                    let (stop, done, errors, latencies) = (
                        Arc::clone(&stop),
                        Arc::clone(&done),
                        Arc::clone(&errors),
                        Arc::clone(&latencies),
                    );
                    tokio::spawn(async move {
                        while !stop.load(Ordering::Relaxed) {
                            let t = Instant::now();
                            match get(&client, &platform, &host, "/sleep/100").await {
                                Ok((200, _)) => {
                                    done.fetch_add(1, Ordering::Relaxed);
                                    if let Ok(mut l) = latencies.lock() {
                                        l.push(t.elapsed().as_millis() as u32);
                                    }
                                }
                                _ => {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    })
                })
                .collect();
            let t = Instant::now();
            let mut most = 0;
            let mut first = None;
            while t.elapsed() < Duration::from_secs(8) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let replicas = platform.replicas("default", "hello-00001");
                most = most.max(replicas);
                if replicas > 0 && first.is_none() {
                    first = Some(t.elapsed());
                }
                let p50 = {
                    let mut l = latencies.lock().map(|l| l.clone()).unwrap_or_default();
                    l.sort_unstable();
                    l.get(l.len() / 2).copied().unwrap_or(0)
                };
                progress(&format!(
                    "{:>4.1} s  requests {:>6}  errors {}  replicas {replicas}  p50 {p50} ms",
                    t.elapsed().as_secs_f64(),
                    done.load(Ordering::Relaxed),
                    errors.load(Ordering::Relaxed)
                ));
            }
            stop.store(true, Ordering::Relaxed);
            for c in clients {
                let _ = c.await;
            }
            let (done, errors) = (done.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
            if most < 2 {
                return Err(format!(
                    "the load never scaled hello beyond {most} replica(s)"
                ));
            }
            Ok(format!(
                "0 replicas after {:.1} s idle; then {done} requests, {errors} errors, \
             first replica after {:.1} s, scaled 0 → {most} replicas",
                idle.as_secs_f64(),
                first.unwrap_or_default().as_secs_f64()
            ))
        }
    );

    step!("watch N → 0 (scale to zero when idle)", async {
        let idle = wait_for_zero(&platform, "hello-00001", Duration::from_secs(60)).await?;
        let t0 = Instant::now();
        let (status, body) = get(&client, &platform, &host, "/").await?;
        if status != 200 {
            return Err(format!("a request at zero got {status}: {body}"));
        }
        Ok(format!(
            "zero replicas after {:.1} s idle; a request at zero answered {body:?} in {} ms (cold start through the activator)",
            idle.as_secs_f64(),
            t0.elapsed().as_millis()
        ))
    });

    step!(
        "shift traffic with a tag (v2 as `candidate`, then 50/50)",
        async {
            let v2 = SERVICE_V2
                .replace("PERCENT_V1", "100")
                .replace("PERCENT_V2", "0");
            platform.apply(&v2).await.map_err(|e| e.to_string())?;
            platform
                .wait_ready("ksvc", "default", "hello", Duration::from_secs(60))
                .await
                .map_err(|e| e.to_string())?;
            let tagged = format!("candidate-hello.default.{}", platform.domain());
            let (_, candidate) = get(&client, &platform, &tagged, "/").await?;
            let (_, main) = get(&client, &platform, &host, "/").await?;
            if !candidate.contains("v2") || !main.contains("v1") {
                return Err(format!("candidate said {candidate:?}, main said {main:?}"));
            }
            let split = SERVICE_V2
                .replace("PERCENT_V1", "50")
                .replace("PERCENT_V2", "50");
            platform.apply(&split).await.map_err(|e| e.to_string())?;
            platform
                .wait_ready("ksvc", "default", "hello", Duration::from_secs(60))
                .await
                .map_err(|e| e.to_string())?;
            let mut v2 = 0;
            for _ in 0..100 {
                if get(&client, &platform, &host, "/").await?.1.contains("v2") {
                    v2 += 1;
                }
            }
            if !(35..=65).contains(&v2) {
                return Err(format!(
                    "{v2} of 100 requests went to v2 with a 50/50 split"
                ));
            }
            Ok(format!(
                "candidate-hello answers {candidate:?}; with 50/50, {v2} of 100 requests reached v2"
            ))
        }
    );

    step!(
        "events: a broker, two filtered triggers and a dead-letter sink",
        async {
            platform.apply(EVENTING).await.map_err(|e| e.to_string())?;
            for (kind, name) in [
                ("broker", "default"),
                ("ksvc", "orders-display"),
                ("ksvc", "payments-display"),
                ("ksvc", "dead-letters"),
                ("trigger", "orders"),
                ("trigger", "payments"),
                ("trigger", "audit"),
            ] {
                platform
                    .wait_ready(kind, "default", name, Duration::from_secs(60))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            for i in 0..5 {
                for ty in ["com.example.order.created", "com.example.payment.received"] {
                    send_event(&client, &platform, ty, &format!("{ty}-{i}")).await?;
                }
            }
            let count = |lines: Vec<knative::serving::backend::local::LogLine>, ty: &str| {
                lines
                    .iter()
                    .filter(|l| l.line.contains("cloudevent") && l.line.contains(ty))
                    .count()
            };
            let t = Instant::now();
            loop {
                let orders = count(
                    platform
                        .logs("default", "orders-display")
                        .await
                        .unwrap_or_default(),
                    "order.created",
                );
                let payments = count(
                    platform
                        .logs("default", "payments-display")
                        .await
                        .unwrap_or_default(),
                    "payment.received",
                );
                let dead = count(
                    platform
                        .logs("default", "dead-letters")
                        .await
                        .unwrap_or_default(),
                    "order.created",
                );
                let wrong = count(
                    platform
                        .logs("default", "orders-display")
                        .await
                        .unwrap_or_default(),
                    "payment",
                );
                progress(&format!(
                    "orders-display {orders}/5  payments-display {payments}/5  dead-letters {dead}/5"
                ));
                if orders == 5 && payments == 5 && dead == 5 {
                    if wrong > 0 {
                        return Err("orders-display received payment events".to_owned());
                    }
                    return Ok(
                    "10 events: 5 orders → orders-display, 5 payments → payments-display (CESQL), 5 undeliverable orders → dead-letters"
                        .to_owned(),
                );
                }
                if t.elapsed() > Duration::from_secs(30) {
                    return Err(format!(
                        "after 30 s: orders {orders}/5, payments {payments}/5, dead letters {dead}/5"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    );

    step!(
        "build: a pipeline writes an app and builds its OCI image (no Docker)",
        async {
            platform.apply(PIPELINE).await.map_err(|e| e.to_string())?;
            let t = Instant::now();
            let run = loop {
                let run = platform
                    .get("pipelinerun", "default", "build-app-1")
                    .await
                    .map_err(|e| e.to_string())?;
                let tasks = platform
                    .list("taskrun", Some("default"))
                    .await
                    .map_err(|e| e.to_string())?;
                let line = tasks
                    .iter()
                    .map(|tr| {
                        let condition = tr["status"]["conditions"]
                            .as_array()
                            .and_then(|c| c.iter().find(|c| c["type"] == "Succeeded"));
                        format!(
                            "{} {}",
                            tr["metadata"]["name"].as_str().unwrap_or(""),
                            condition
                                .and_then(|c| c["reason"].as_str())
                                .unwrap_or("Pending")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("  ");
                progress(&format!("{:>4.1} s  {line}", t.elapsed().as_secs_f64()));
                let succeeded = run["status"]["conditions"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["type"] == "Succeeded"))
                    .cloned();
                match succeeded.as_ref().and_then(|c| c["status"].as_str()) {
                    Some("True") => break run,
                    Some("False") => {
                        return Err(format!(
                            "the PipelineRun failed: {}",
                            succeeded
                                .as_ref()
                                .and_then(|c| c["message"].as_str())
                                .unwrap_or("")
                        ));
                    }
                    _ if t.elapsed() > Duration::from_secs(60) => {
                        return Err("the PipelineRun did not finish in 60 s".to_owned());
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            };
            let result = |name: &str| {
                run["status"]["results"]
                    .as_array()
                    .and_then(|r| r.iter().find(|r| r["name"] == name))
                    .and_then(|r| r["value"].as_str())
                    .unwrap_or("")
                    .to_owned()
            };
            let digest = result("image-digest");
            // Check the layout on disk independently: an index there names
            // the manifest the pipeline reported, and that blob exists.
            let builds = platform.state_dir().join("builds");
            let layout = find_layout(&builds, &digest).ok_or_else(|| {
                format!(
                    "the pipeline reported digest {digest:?}, which no OCI layout under {} holds",
                    builds.display()
                )
            })?;
            Ok(format!(
                "2 TaskRuns succeeded; image {} ({} files) in the OCI layout {}",
                &digest[..digest.len().min(19)],
                result("files"),
                layout.display()
            ))
        }
    );

    finish(platform, steps, started).await
}

/// Waits, with a progress line, until revision `default/revision` has no
/// replicas; returns how long that took, or an error after `timeout`.
async fn wait_for_zero(
    platform: &Platform,
    revision: &str,
    timeout: Duration,
) -> Result<Duration, String> {
    let t = Instant::now();
    loop {
        let replicas = platform.replicas("default", revision);
        progress(&format!(
            "{:>4.1} s idle  replicas {replicas}  (waiting for zero)",
            t.elapsed().as_secs_f64()
        ));
        if replicas == 0 {
            return Ok(t.elapsed());
        }
        if t.elapsed() > timeout {
            return Err(format!(
                "still {replicas} replicas after {} s idle",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The OCI layout under `dir` whose `index.json` names `digest` and holds
/// its blob.
fn find_layout(dir: &std::path::Path, digest: &str) -> Option<std::path::PathBuf> {
    let hex = digest.strip_prefix("sha256:")?;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let index = std::fs::read_to_string(path.join("index.json")).unwrap_or_default();
        let listed = serde_json::from_str::<serde_json::Value>(&index).is_ok_and(|index| {
            index["manifests"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["digest"] == digest))
        });
        if listed && path.join("blobs/sha256").join(hex).is_file() {
            return Some(path);
        }
        if let Some(found) = find_layout(&path, digest) {
            return Some(found);
        }
    }
    None
}

/// Posts one binary-mode event to the default broker.
async fn send_event(
    client: &HttpClient,
    platform: &Platform,
    ty: &str,
    id: &str,
) -> Result<(), String> {
    let request = hyper::Request::post(format!(
        "http://{}/default/default",
        platform.broker_ingress()
    ))
    .header("ce-specversion", "1.0")
    .header("ce-id", id)
    .header("ce-type", ty)
    .header("ce-source", "/demo")
    .header("content-type", "application/json")
    .body(Full::new(Bytes::from(format!("{{\"id\":\"{id}\"}}"))))
    .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    if response.status() != hyper::StatusCode::ACCEPTED {
        return Err(format!("the broker answered {}", response.status()));
    }
    Ok(())
}

async fn finish(platform: Platform, steps: Vec<Step>, started: Instant) -> Result<(), String> {
    platform.shutdown().await;
    println!("summary ({:.0} s):", started.elapsed().as_secs_f64());
    let mut failed = 0;
    for step in &steps {
        match &step.result {
            Ok(_) => println!("  ✓ {:<68} {:>5.1} s", step.name, step.took.as_secs_f64()),
            Err(why) => {
                failed += 1;
                println!("  ✗ {:<68} {why}", step.name);
            }
        }
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("{failed} of {} steps failed", steps.len()))
    }
}
