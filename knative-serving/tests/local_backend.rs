//! The local-process backend running real processes: the sample app
//! (`knative-sample-app`) and a few shell commands.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, ExecAction, HTTPGetAction, ObjectFieldSelector, PodSpec, Probe,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use knative_serving::backend::local::{LocalBackend, LocalCommand, LocalConfig, Stream};
use knative_serving::backend::{
    BackendError, WorkloadBackend, WorkloadKey, WorkloadSpec, WorkloadStatus,
};
use nix::sys::signal::kill;
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

const APP: &str = env!("CARGO_BIN_EXE_knative-sample-app");
/// How long anything may take before a test gives up.
const DEADLINE: Duration = Duration::from_secs(15);

fn app_container(env: &[(&str, &str)]) -> Container {
    Container {
        name: "user-container".into(),
        image: Some("example.com/sample-app:latest".into()),
        command: Some(vec![APP.into()]),
        env: Some(
            env.iter()
                .map(|(name, value)| EnvVar {
                    name: (*name).into(),
                    value: Some((*value).into()),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    }
}

fn spec(revision: &str, container: Container, grace: Duration) -> WorkloadSpec {
    WorkloadSpec {
        key: WorkloadKey::new("default", revision),
        containers: vec![container],
        pod: PodSpec::default(),
        serving_container: 0,
        container_port: 8080,
        labels: BTreeMap::from([
            ("serving.knative.dev/service".into(), "hello".into()),
            (
                "serving.knative.dev/configuration".into(),
                "hello-config".into(),
            ),
            ("serving.knative.dev/revision".into(), revision.into()),
        ]),
        annotations: BTreeMap::new(),
        termination_grace_period: grace,
        container_concurrency: 0,
        response_start_timeout: None,
        idle_timeout: None,
        owner: None,
    }
}

/// Waits until `ready` holds for the status, failing the test at the deadline.
async fn wait_for(
    status: &mut watch::Receiver<WorkloadStatus>,
    what: &str,
    ready: impl FnMut(&WorkloadStatus) -> bool,
) -> WorkloadStatus {
    let result = tokio::time::timeout(DEADLINE, status.wait_for(ready))
        .await
        .map(|result| result.map(|status| status.clone()));
    match result {
        Ok(Ok(status)) => status,
        Ok(Err(_)) => panic!("status channel closed while waiting for {what}"),
        Err(_) => panic!(
            "timed out waiting for {what}; last status: {:?}",
            *status.borrow()
        ),
    }
}

/// A plain HTTP/1.1 GET: status code and body.
async fn get(address: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(address).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(DEADLINE, stream.read_to_string(&mut response)).await??;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The pid the sample app (or a shell) printed as `(pid N)` / `pid N`.
fn pid_in_logs(backend: &LocalBackend, key: &WorkloadKey, replica: &str) -> Option<i32> {
    backend
        .logs(key)
        .iter()
        .filter(|line| line.replica == replica)
        .find_map(|line| {
            let (_, rest) = line.line.split_once("pid ")?;
            rest.trim_end_matches(')').trim().parse().ok()
        })
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_becomes_ready_and_answers_http() -> Result<(), BackendError> {
    let backend = LocalBackend::new(LocalConfig::default());
    let spec = spec(
        "hello-00001",
        app_container(&[("TARGET", "Knative")]),
        Duration::from_secs(30),
    );
    let key = spec.key.clone();
    backend.ensure(&spec).await?;
    let mut status = backend.status(&key)?;
    assert_eq!(*status.borrow(), WorkloadStatus::default());
    backend.scale(&key, 1).await?;
    let ready = wait_for(&mut status, "one ready replica", |s| s.ready.len() == 1).await;
    assert_eq!((ready.desired, ready.actual), (1, 1));
    assert_eq!(ready.failure, None);
    let endpoint = &ready.ready[0];
    assert_eq!(endpoint.replica, "hello-00001-1");

    let (code, body) = get(endpoint.address, "/").await.expect("GET /");
    assert_eq!((code, body.as_str()), (200, "Hello Knative!\n"));
    for (name, value) in [
        ("K_REVISION", "hello-00001".to_owned()),
        ("K_SERVICE", "hello".to_owned()),
        ("K_CONFIGURATION", "hello-config".to_owned()),
        ("PORT", endpoint.address.port().to_string()),
    ] {
        let (code, body) = get(endpoint.address, &format!("/env/{name}"))
            .await
            .expect("GET /env");
        assert_eq!((code, body), (200, value), "{name}");
    }

    // The app stops on SIGTERM, long before the 30 s grace period.
    let pid = pid_in_logs(&backend, &key, "hello-00001-1").expect("the app prints its pid");
    let start = Instant::now();
    backend.remove(&key).await?;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(!alive(pid), "process {pid} still runs after remove");
    assert!(matches!(
        backend.status(&key),
        Err(BackendError::NotFound(_))
    ));
    assert!(backend.logs(&key).is_empty());
    // Removing what does not exist is fine.
    backend.remove(&key).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_to_three_and_back_to_one() -> Result<(), BackendError> {
    let backend = LocalBackend::new(LocalConfig::default());
    let spec = spec("scale-00001", app_container(&[]), Duration::from_secs(10));
    let key = spec.key.clone();
    backend.ensure(&spec).await?;
    let mut status = backend.status(&key)?;
    backend.scale(&key, 1).await?;
    wait_for(&mut status, "one ready replica", |s| s.ready.len() == 1).await;
    backend.scale(&key, 3).await?;
    let three = wait_for(&mut status, "three ready replicas", |s| s.ready.len() == 3).await;
    assert_eq!((three.desired, three.actual), (3, 3));
    let names: Vec<&str> = three.ready.iter().map(|e| e.replica.as_str()).collect();
    assert_eq!(names, ["scale-00001-1", "scale-00001-2", "scale-00001-3"]);
    let addresses: HashSet<SocketAddr> = three.ready.iter().map(|e| e.address).collect();
    assert_eq!(addresses.len(), 3, "{:?}", three.ready);
    for endpoint in &three.ready {
        let (code, body) = get(endpoint.address, "/").await.expect("GET /");
        assert_eq!((code, body.as_str()), (200, "Hello World!\n"));
    }
    let mut stopped = Vec::new();
    for endpoint in &three.ready[1..] {
        let pid = pid_in_logs(&backend, &key, &endpoint.replica).expect("pid in logs");
        assert!(alive(pid));
        stopped.push((pid, endpoint.address));
    }

    backend.scale(&key, 1).await?;
    // Stopping replicas leave `ready` at once.
    let now = status.borrow().clone();
    assert_eq!(now.desired, 1);
    assert_eq!(now.ready, three.ready[..1].to_vec());
    let one = wait_for(&mut status, "one live replica", |s| s.actual == 1).await;
    assert_eq!(one.ready, three.ready[..1].to_vec());
    for (pid, address) in stopped {
        assert!(!alive(pid), "process {pid} still runs");
        assert!(
            TcpStream::connect(address).await.is_err(),
            "{address} still accepts"
        );
    }
    let (code, _) = get(three.ready[0].address, "/").await.expect("GET /");
    assert_eq!(code, 200);

    // Ordinals are not reused.
    backend.scale(&key, 2).await?;
    let two = wait_for(&mut status, "two ready replicas", |s| s.ready.len() == 2).await;
    assert_eq!(two.ready[1].replica, "scale-00001-4");
    backend.remove(&key).await?;
    Ok(())
}

fn http_probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(8080),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_readiness_probe_waits_for_the_app() -> Result<(), BackendError> {
    let backend = LocalBackend::new(LocalConfig::default());
    let mut container = app_container(&[("STARTUP_DELAY_MS", "500")]);
    container.readiness_probe = Some(http_probe("/healthz"));
    let spec = spec("slow-00001", container, Duration::from_secs(5));
    let key = spec.key.clone();
    backend.ensure(&spec).await?;
    let mut status = backend.status(&key)?;
    // The app cannot listen before this plus 500 ms.
    let scaled_at = Instant::now();
    backend.scale(&key, 1).await?;
    let started = wait_for(&mut status, "a live process", |s| s.actual == 1).await;
    if scaled_at.elapsed() < Duration::from_millis(500) {
        assert!(
            started.ready.is_empty(),
            "ready before the app listens: {started:?}"
        );
    }
    let ready = wait_for(&mut status, "one ready replica", |s| s.ready.len() == 1).await;
    let waited = scaled_at.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "ready after {waited:?}, before the app could listen"
    );
    let (code, body) = get(ready.ready[0].address, "/healthz").await.expect("GET");
    assert_eq!((code, body.as_str()), (200, "ok"));
    backend.remove(&key).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_http_probe_keeps_the_replica_unready() -> Result<(), BackendError> {
    let backend = LocalBackend::new(LocalConfig::default());
    let mut container = app_container(&[]);
    container.readiness_probe = Some(http_probe("/no-such-page"));
    let spec = spec("unready-00001", container, Duration::from_secs(5));
    let key = spec.key.clone();
    backend.ensure(&spec).await?;
    let mut status = backend.status(&key)?;
    backend.scale(&key, 1).await?;
    wait_for(&mut status, "a live process", |s| s.actual == 1).await;
    // The app answers (404) well within this time.
    wait_until("the app to listen", || {
        pid_in_logs(&backend, &key, "unready-00001-1").is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now = status.borrow().clone();
    assert!(now.ready.is_empty(), "{now:?}");
    assert_eq!(now.actual, 1);
    backend.remove(&key).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_is_reported_and_the_replica_restarts() -> Result<(), BackendError> {
    let backend = LocalBackend::new(LocalConfig {
        restart_backoff_base: Duration::from_millis(500),
        restart_backoff_max: Duration::from_secs(2),
        ..LocalConfig::default()
    });
    let spec = spec("crash-00001", app_container(&[]), Duration::from_secs(5));
    let key = spec.key.clone();
    backend.ensure(&spec).await?;
    let mut status = backend.status(&key)?;
    backend.scale(&key, 1).await?;
    let first = wait_for(&mut status, "one ready replica", |s| s.ready.len() == 1).await;
    let (code, _) = get(first.ready[0].address, "/exit/3")
        .await
        .expect("GET /exit/3");
    assert_eq!(code, 200);

    let crashed = wait_for(&mut status, "a failure", |s| s.failure.is_some()).await;
    let failure = crashed.failure.clone().expect("failure");
    assert_eq!(failure.reason, "ExitCode3");
    assert!(failure.container);
    assert!(
        failure
            .message
            .starts_with("Container user-container exited with code 3"),
        "{}",
        failure.message
    );
    assert!(
        failure.message.contains("listening on"),
        "{}",
        failure.message
    );
    assert!(crashed.ready.is_empty(), "{crashed:?}");

    let again = wait_for(&mut status, "the replica ready again", |s| {
        s.ready.len() == 1
    })
    .await;
    assert_eq!(again.failure, None, "a ready replica clears the failure");
    assert_eq!(again.ready[0].replica, "crash-00001-1");
    let (code, body) = get(again.ready[0].address, "/").await.expect("GET /");
    assert_eq!((code, body.as_str()), (200, "Hello World!\n"));
    backend.remove(&key).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_ignoring_sigterm_is_killed_after_the_grace_period() -> Result<(), BackendError> {
    let backend = LocalBackend::new(LocalConfig::default());
    let grace = Duration::from_millis(300);
    let container = Container {
        name: "user-container".into(),
        // `$$$$` is `$$` after Kubernetes' `$(VAR)` expansion.
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            "trap '' TERM; echo pid $$$$; while true; do sleep 0.1; done".into(),
        ]),
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec!["true".into()]),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let spec = spec("stubborn-00001", container, grace);
    let key = spec.key.clone();
    backend.ensure(&spec).await?;
    let mut status = backend.status(&key)?;
    backend.scale(&key, 1).await?;
    wait_for(&mut status, "one ready replica", |s| s.ready.len() == 1).await;
    wait_until("the shell's pid", || {
        pid_in_logs(&backend, &key, "stubborn-00001-1").is_some()
    })
    .await;
    let pid = pid_in_logs(&backend, &key, "stubborn-00001-1").expect("pid");
    assert!(alive(pid));

    let start = Instant::now();
    tokio::time::timeout(DEADLINE, backend.remove(&key))
        .await
        .expect("remove did not return")?;
    let took = start.elapsed();
    assert!(
        took >= grace,
        "SIGTERM was not ignored? remove took {took:?}"
    );
    assert!(
        took < grace + Duration::from_secs(2),
        "remove took {took:?}"
    );
    assert!(!alive(pid), "process {pid} survived SIGKILL");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_not_pulled_but_can_be_registered() -> Result<(), BackendError> {
    let image = "example.com/hello:latest";
    let container = Container {
        name: "user-container".into(),
        image: Some(image.into()),
        ..Default::default()
    };
    let spec = spec("image-00001", container, Duration::from_secs(5));
    let key = spec.key.clone();

    let backend = LocalBackend::new(LocalConfig::default());
    match backend.ensure(&spec).await {
        Err(BackendError::Unsupported { key: k, message }) => {
            assert_eq!(k, key);
            assert!(message.contains(image), "{message}");
            assert!(message.contains("not pulled locally"), "{message}");
            assert!(message.contains("command"), "{message}");
            assert!(message.contains("LocalConfig::images"), "{message}");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert!(matches!(
        backend.status(&key),
        Err(BackendError::NotFound(_))
    ));

    let mut config = LocalConfig::default();
    config.images.insert(
        image.into(),
        LocalCommand {
            command: vec![APP.into()],
            env: vec![("TARGET".into(), "Registered".into())],
            working_dir: None,
        },
    );
    let backend = LocalBackend::new(config);
    backend.ensure(&spec).await?;
    let mut status = backend.status(&key)?;
    backend.scale(&key, 1).await?;
    let ready = wait_for(&mut status, "one ready replica", |s| s.ready.len() == 1).await;
    let (code, body) = get(ready.ready[0].address, "/").await.expect("GET /");
    assert_eq!((code, body.as_str()), (200, "Hello Registered!\n"));
    backend.remove(&key).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_value_from_is_unsupported() {
    let mut container = app_container(&[("PLAIN", "yes")]);
    container.env.get_or_insert_default().push(EnvVar {
        name: "POD_NAME".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let spec = spec("env-00001", container, Duration::from_secs(5));
    let backend = LocalBackend::new(LocalConfig::default());
    match backend.ensure(&spec).await {
        Err(BackendError::Unsupported { message, .. }) => {
            assert!(message.contains("\"POD_NAME\""), "{message}");
            assert!(message.contains("valueFrom"), "{message}");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_kept_per_replica_and_bounded() -> Result<(), BackendError> {
    let backend = LocalBackend::new(LocalConfig {
        log_lines: 5,
        ..LocalConfig::default()
    });
    let spec = spec("logs-00001", app_container(&[]), Duration::from_secs(5));
    let key = spec.key.clone();
    backend.ensure(&spec).await?;
    let mut status = backend.status(&key)?;
    backend.scale(&key, 1).await?;
    let ready = wait_for(&mut status, "one ready replica", |s| s.ready.len() == 1).await;
    let logs = backend.logs(&key);
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(logs[0].replica, "logs-00001-1");
    assert_eq!(logs[0].stream, Stream::Stdout);
    assert!(logs[0].line.starts_with("listening on "), "{logs:?}");

    let (code, _) = get(ready.ready[0].address, "/print/20").await.expect("GET");
    assert_eq!(code, 200);
    wait_until("line 20", || {
        backend
            .logs(&key)
            .last()
            .is_some_and(|l| l.line == "line 20")
    })
    .await;
    let lines: Vec<String> = backend.logs(&key).into_iter().map(|l| l.line).collect();
    let expected: Vec<String> = (16..=20).map(|i| format!("line {i}")).collect();
    assert_eq!(lines, expected);

    // A stopped replica's output (here its stderr on SIGTERM) is kept.
    backend.scale(&key, 0).await?;
    wait_for(&mut status, "no live process", |s| s.actual == 0).await;
    let logs = backend.logs(&key);
    assert_eq!(logs.len(), 5, "{logs:?}");
    let last = logs.last().expect("a line");
    assert_eq!(last.stream, Stream::Stderr);
    assert_eq!(last.line, "SIGTERM: shutting down");
    assert_eq!(last.replica, "logs-00001-1");
    backend.remove(&key).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_program_is_a_start_error() -> Result<(), BackendError> {
    let backend = LocalBackend::new(LocalConfig {
        restart_backoff_base: Duration::from_millis(50),
        ..LocalConfig::default()
    });
    let container = Container {
        name: "user-container".into(),
        command: Some(vec!["/nonexistent/knative-test-program".into()]),
        ..Default::default()
    };
    let spec = spec("missing-00001", container, Duration::from_secs(5));
    let key = spec.key.clone();
    backend.ensure(&spec).await?;
    let mut status = backend.status(&key)?;
    backend.scale(&key, 1).await?;
    let failed = wait_for(&mut status, "a failure", |s| s.failure.is_some()).await;
    let failure = failed.failure.clone().expect("failure");
    assert_eq!(failure.reason, "StartError");
    assert!(failure.container);
    assert!(
        failure
            .message
            .contains("/nonexistent/knative-test-program"),
        "{}",
        failure.message
    );
    assert_eq!((failed.desired, failed.actual), (1, 0));
    backend.remove(&key).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_backend_kills_its_processes() -> Result<(), BackendError> {
    let backend = LocalBackend::new(LocalConfig::default());
    let spec = spec("dropped-00001", app_container(&[]), Duration::from_secs(30));
    let key = spec.key.clone();
    backend.ensure(&spec).await?;
    let mut status = backend.status(&key)?;
    backend.scale(&key, 1).await?;
    wait_for(&mut status, "one ready replica", |s| s.ready.len() == 1).await;
    let pid = pid_in_logs(&backend, &key, "dropped-00001-1").expect("pid in logs");
    let clone = backend.clone();
    drop(backend);
    assert!(alive(pid), "a clone still holds the backend");
    drop(clone);
    wait_until("the process to die", || !alive(pid)).await;
    Ok(())
}
