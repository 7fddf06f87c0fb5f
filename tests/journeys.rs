//! Cross-crate journeys through the local platform, as a user takes them:
//! the bundled manifests reach Ready, a request wakes a service at zero,
//! an event reaches its subscriber through a broker, and a bad manifest is
//! refused whole. Real processes (the sample app) and real HTTP on
//! 127.0.0.1.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use knative::local::Platform;
use knative::serving::autoscaling::config::AutoscalerConfig;

const READY: Duration = Duration::from_secs(60);

async fn platform() -> Platform {
    Platform::builder()
        .sample_app([env!("CARGO_BIN_EXE_knative"), "sample-app"])
        .autoscaler(AutoscalerConfig {
            stable_window: Duration::from_secs(6),
            scale_to_zero_grace_period: Duration::from_secs(1),
            ..AutoscalerConfig::default()
        })
        .start()
        .await
        .expect("the platform starts")
}

fn samples() -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/manifests");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("examples/manifests")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("readable"))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

async fn http(
    method: &str,
    address: std::net::SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{address}{path}"))
        .header(hyper::header::HOST, host);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = client
        .request(
            request
                .body(Full::new(Bytes::from_static(b"{}")))
                .expect("request"),
        )
        .await
        .expect("answered");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_samples_reach_ready_and_an_event_reaches_its_subscriber() {
    let platform = platform().await;
    let applied = platform.apply(&samples()).await.expect("the samples apply");
    assert!(applied.len() >= 4, "{applied:?}");
    for a in &applied {
        platform
            .wait_ready(&a.kind, &a.namespace, &a.name, READY)
            .await
            .unwrap_or_else(|e| panic!("{} {}: {e}", a.kind, a.name));
    }
    let host = format!("hello.default.{}", platform.domain());
    let (status, body) = http("GET", platform.ingress(), &host, "/", &[]).await;
    assert_eq!((status, body.trim()), (200, "Hello Knative on a laptop!"));

    // An event through the broker reaches the display service.
    send_and_see(
        &platform,
        platform.broker_ingress(),
        "/default/default",
        "com.example.order.created",
        "order-1",
    )
    .await;
    assert!(
        platform
            .events()
            .iter()
            .any(|e| e.id == "order-1" && e.broker == "default/default"),
        "the platform saw the event"
    );

    // An event through the channel reaches the display through its
    // subscription.
    send_and_see(
        &platform,
        platform.channel_ingress(),
        "/default/orders-channel",
        "com.example.order.shipped",
        "via-channel-1",
    )
    .await;

    // The sample pipeline succeeded: it reports the digest of an image
    // that is in the OCI layout its second task wrote, and the first
    // task's log is readable.
    let run = platform
        .get("pr", "default", "build-app-1")
        .await
        .expect("the PipelineRun");
    let result = |name: &str| {
        run["status"]["results"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == name))
            .and_then(|r| r["value"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let digest = result("image-digest");
    assert!(digest.starts_with("sha256:"), "{run:#}");
    assert_eq!(result("files"), "2", "{run:#}");
    let task_runs = platform.list("tr", Some("default")).await.expect("list");
    assert_eq!(task_runs.len(), 2, "{task_runs:#?}");
    let source_run = task_runs
        .iter()
        .filter_map(|tr| tr["metadata"]["name"].as_str())
        .find(|n| n.ends_with("-source"))
        .expect("the source TaskRun")
        .to_owned();
    let logs = platform
        .logs("default", &source_run)
        .await
        .expect("TaskRun logs");
    assert!(
        logs.iter()
            .any(|l| l.line.trim() == "2" && l.replica == "step-write"),
        "{logs:?}"
    );
    let layout = platform
        .state_dir()
        .join("builds")
        .to_string_lossy()
        .into_owned();
    let found = find_file(std::path::Path::new(&layout), "index.json")
        .into_iter()
        .any(|index| {
            std::fs::read_to_string(index).is_ok_and(|text| text.contains(digest.as_str()))
        });
    assert!(found, "no OCI layout under {layout} lists {digest}");
    platform.shutdown().await;
}

/// Posts a binary-mode event of type `ty` with id `id` to `path` at
/// `address`, then waits until the event display printed it.
async fn send_and_see(
    platform: &Platform,
    address: std::net::SocketAddr,
    path: &str,
    ty: &str,
    id: &str,
) {
    let (status, body) = http(
        "POST",
        address,
        "ingress",
        path,
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", id),
            ("ce-type", ty),
            ("ce-source", "/journeys"),
            ("content-type", "application/json"),
        ],
    )
    .await;
    assert_eq!(status, 202, "{path}: {body}");
    let start = Instant::now();
    loop {
        let logs = platform
            .logs("default", "event-display")
            .await
            .expect("logs");
        let line = format!("cloudevent type={ty} source=/journeys id={id}");
        if logs.iter().any(|l| l.line.contains(&line)) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{id} never arrived through {path}: {logs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every file named `name` under `dir`.
fn find_file(dir: &std::path::Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(find_file(&path, name));
        } else if path.file_name().is_some_and(|n| n == name) {
            found.push(path);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_a_service_scaled_to_zero_succeeds() {
    let platform = platform().await;
    platform
        .apply(
            r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: sleepy, namespace: default}
spec:
  template:
    spec:
      containers: [{image: knative.dev/sample-app, env: [{name: TARGET, value: sleepy}]}]
"#,
        )
        .await
        .expect("applies");
    platform
        .wait_ready("ksvc", "default", "sleepy", READY)
        .await
        .expect("ready");
    let start = Instant::now();
    while platform.replicas("default", "sleepy-00001") > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never scaled to zero"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let host = format!("sleepy.default.{}", platform.domain());
    let (status, body) = http("GET", platform.ingress(), &host, "/", &[]).await;
    assert_eq!((status, body.trim()), (200, "Hello sleepy!"));
    assert!(platform.replicas("default", "sleepy-00001") >= 1);
    platform.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_manifest_is_refused_with_its_field_path_and_nothing_is_applied() {
    let platform = platform().await;
    let batch = r#"
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: fine, namespace: default}
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: broken, namespace: default}
spec:
  template:
    spec:
      containers: [{image: knative.dev/sample-app}]
  traffic:
    - latestRevision: true
      percent: 120
"#;
    let error = platform
        .apply(batch)
        .await
        .expect_err("refused")
        .to_string();
    assert!(error.contains("nothing was applied"), "{error}");
    assert!(error.contains("document 2"), "{error}");
    assert!(
        error.contains("spec.traffic"),
        "the error names the field: {error}"
    );
    assert!(
        platform
            .list("broker", None)
            .await
            .expect("list")
            .is_empty(),
        "the valid broker in the same batch was not applied"
    );
    let unknown = platform
        .apply("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n")
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        unknown.contains("Widget") && unknown.contains("not served"),
        "{unknown}"
    );
    platform.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_binding_and_a_container_source_get_their_sink() {
    let platform = platform().await;
    platform
        .apply(
            r#"
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default, namespace: default}
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: producer, namespace: default}
spec:
  template:
    spec:
      containers: [{image: knative.dev/sample-app}]
---
apiVersion: sources.knative.dev/v1
kind: SinkBinding
metadata: {name: bind-producer, namespace: default}
spec:
  subject: {apiVersion: serving.knative.dev/v1, kind: Service, name: producer}
  sink:
    ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}
---
apiVersion: sources.knative.dev/v1
kind: ContainerSource
metadata: {name: heartbeats, namespace: default}
spec:
  template:
    spec:
      containers:
        - name: beat
          image: example.com/heartbeats
          command: ["/bin/sh", "-c", "echo sink=$K_SINK; sleep 60"]
  sink:
    ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}
"#,
        )
        .await
        .expect("applies");
    for (kind, name) in [
        ("broker", "default"),
        ("sinkbinding", "bind-producer"),
        ("containersource", "heartbeats"),
    ] {
        platform
            .wait_ready(kind, "default", name, READY)
            .await
            .unwrap_or_else(|e| panic!("{kind} {name}: {e}"));
    }
    let sink = format!("http://{}/default/default", platform.broker_ingress());
    // The binding put K_SINK on the Service's template (its next revision
    // runs with it).
    let start = Instant::now();
    loop {
        let svc = platform
            .get("ksvc", "default", "producer")
            .await
            .expect("service");
        let env = &svc["spec"]["template"]["spec"]["containers"][0]["env"];
        if env.as_array().is_some_and(|e| {
            e.iter()
                .any(|v| v["name"] == "K_SINK" && v["value"] == sink.as_str())
        }) {
            break;
        }
        assert!(start.elapsed() < READY, "no K_SINK on the service: {svc:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The source's process runs with K_SINK set.
    let start = Instant::now();
    loop {
        let logs = platform
            .logs("default", "heartbeats")
            .await
            .unwrap_or_default();
        if logs.iter().any(|l| l.line == format!("sink={sink}")) {
            break;
        }
        assert!(
            start.elapsed() < READY,
            "the source never printed its sink: {logs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    platform.shutdown().await;
}
