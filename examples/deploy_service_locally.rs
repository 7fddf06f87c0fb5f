//! Deploy a Knative Service on this machine with `knative-serving` alone:
//! the in-memory store, the four Serving controllers, the local process
//! backend, and the data plane (ingress, activator, queue-proxy) on a
//! loopback port. The "container image" is this very program started with
//! `--app` (images are not pulled locally; the backend maps image names to
//! commands).
//!
//! Run it with `cargo run --example deploy_service_locally`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use knative::core::apis::{Context, SetDefaults, Validate};
use knative::core::store::InMemoryStore;
use knative::serving::api::Service;
use knative::serving::backend::local::{LocalBackend, LocalCommand, LocalConfig};
use knative::serving::backend::{WorkloadBackend, WorkloadKey};
use knative::serving::config::ServingConfig;
use knative::serving::dataplane::ingress::DataplaneConfig;
use knative::serving::reconciler::{Serving, ServingObjects};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MANIFEST: &str = r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  namespace: default
spec:
  template:
    spec:
      containers:
        - image: example.com/hello
          env:
            - name: TARGET
              value: Knative on a laptop
"#;

/// The sample app: answers every HTTP request on $PORT with a greeting.
fn run_app() -> std::io::Result<()> {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".to_owned());
    let target = std::env::var("TARGET").unwrap_or_else(|_| "World".to_owned());
    let listener = std::net::TcpListener::bind(format!("127.0.0.1:{port}"))?;
    let body = format!("Hello {target}!\n");
    for stream in listener.incoming() {
        // A readiness probe connects and hangs up: a failed connection is
        // that client's problem, not the server's.
        let _ = stream.and_then(|mut stream| {
            let mut request = [0u8; 1024];
            if stream.read(&mut request)? == 0 {
                return Ok(());
            }
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        });
    }
    Ok(())
}

async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> Result<T, String> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Some(value) = check().await {
            return Ok(value);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("timed out waiting for {what}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().any(|a| a == "--app") {
        return Ok(run_app()?);
    }

    // This program doubles as the image `example.com/hello`.
    let me = std::env::current_exe()?.to_string_lossy().into_owned();
    let backend = LocalBackend::new(LocalConfig {
        images: [(
            "example.com/hello".to_owned(),
            LocalCommand {
                command: vec![me, "--app".to_owned()],
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
    let serving = Serving::new(objects.clone(), Arc::new(backend.clone()), config);
    let dataplane = serving.dataplane(DataplaneConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let ingress = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controllers = tokio::spawn(serving.run(async {
        let _ = stopped.await;
    }));
    let (stop_ingress, ingress_stopped) = tokio::sync::oneshot::channel::<()>();
    let serving_ingress = tokio::spawn(async move {
        dataplane
            .serve(listener, async {
                let _ = ingress_stopped.await;
            })
            .await
    });

    // `kubectl apply`: default, validate, create.
    let mut service: Service = serde_yaml::from_str(MANIFEST)?;
    let ctx = Context::create();
    service.set_defaults(&ctx);
    service.validate(&ctx).into_result()?;
    let services = Arc::clone(&objects.services);
    services.create(&service).await?;
    println!("applied service/hello");

    let started = Instant::now();
    let ready = wait_for("service/hello to become ready", async || {
        let svc = services.get(Some("default"), "hello").await.ok()?;
        svc.is_ready().then_some(svc)
    })
    .await?;
    let status = ready.status.unwrap_or_default();
    println!("service/hello is Ready after {:?}", started.elapsed());
    println!("  url:          {}", status.url.unwrap_or_default());
    println!(
        "  latest ready: {}",
        status.latest_ready_revision_name.unwrap_or_default()
    );
    for t in &status.traffic {
        println!(
            "  traffic:      {}% -> {}",
            t.percent.unwrap_or(0),
            t.revision_name.as_deref().unwrap_or("")
        );
    }

    // Call the service through the ingress, by its hostname.
    let key = WorkloadKey::new("default", "hello-00001");
    let mut stream = tokio::net::TcpStream::connect(ingress).await?;
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: hello.default.example.com\r\nConnection: close\r\n\r\n",
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    println!(
        "  GET http://hello.default.example.com via the ingress at {ingress} -> {}",
        response.lines().last().unwrap_or("")
    );

    services.delete(Some("default"), "hello").await?;
    wait_for("the replica to stop", async || {
        backend.status(&key).is_err().then_some(())
    })
    .await?;
    println!("deleted service/hello; its revision and replica are gone");
    let _ = stop.send(());
    let _ = stop_ingress.send(());
    controllers.await?;
    serving_ingress.await??;
    Ok(())
}
