//! Data-plane cost: requests/s and p50/p99 latency straight to the app and
//! through the ingress + activator + queue-proxy, in one run, as ratios;
//! the proxy's CPU per request; and cold start (first byte from zero)
//! against the app's own start time.
//!
//! Run: `cargo bench -p knative-serving --bench dataplane`
//! (`-- --seconds N` to measure longer than 5 s per row).
//!
//! Set-up, as the published upstream figures were measured
//! (`specs/SERVING.md §5`): the app replicas and the whole platform (one
//! tokio thread: controllers, autoscaler, ingress, activator,
//! queue-proxies) are pinned to CPU 0, the load generator to CPU 1;
//! keep-alive connections, `GET /bytes/100` (100-byte responses), a closed
//! loop per connection after one second of warm-up. The proxy's CPU per
//! request is the platform thread's CPU time over the requests it served.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use knative_core::apis::{Context, SetDefaults};
use knative_core::store::InMemoryStore;
use knative_serving::api::Service;
use knative_serving::autoscaling::config::AutoscalerConfig;
use knative_serving::backend::local::{LocalBackend, LocalCommand, LocalConfig};
use knative_serving::config::ServingConfig;
use knative_serving::dataplane::ingress::DataplaneConfig;
use knative_serving::reconciler::{Serving, ServingObjects};
use tokio::net::TcpStream;

const APP: &str = env!("CARGO_BIN_EXE_knative-sample-app");
const PATH: &str = "/bytes/100";

fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// CPU time (user + system) of process `pid`, from `/proc`.
fn process_cpu(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18080)
}

async fn http_get(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: &str,
) -> Option<()> {
    let request = Request::get(PATH)
        .header(hyper::header::HOST, host)
        .body(Empty::new())
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.into_body().collect().await.ok()?;
    Some(())
}

async fn connect(address: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(address).await.expect("connects");
    stream.set_nodelay(true).expect("nodelay");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    sender
}

/// One measurement: a closed loop on `connections` connections.
struct Load {
    rps: f64,
    p50: Duration,
    p99: Duration,
    requests: u64,
    errors: u64,
}

async fn load(address: SocketAddr, host: &'static str, connections: usize, seconds: f64) -> Load {
    let warmup = Duration::from_secs(1);
    let measure = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            tokio::spawn(async move {
                let mut sender = connect(address).await;
                let mut latencies = Vec::with_capacity(100_000);
                let mut errors = 0u64;
                loop {
                    let t = Instant::now();
                    if t >= start + warmup + measure {
                        break;
                    }
                    let ok = http_get(&mut sender, host).await.is_some();
                    if t >= start + warmup {
                        if ok {
                            latencies.push(t.elapsed());
                        } else {
                            errors += 1;
                        }
                    }
                    if !ok {
                        sender = connect(address).await;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("load task");
        all.extend(l);
        errors += e;
    }
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Load {
        rps: all.len() as f64 / measure.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        requests: all.len() as u64,
        errors,
    }
}

/// Messages to the platform thread.
enum Ask {
    /// The platform thread's CPU time so far.
    Cpu(std::sync::mpsc::Sender<Duration>),
    /// Create a service at zero and time its first response.
    ColdStart(String, std::sync::mpsc::Sender<Duration>),
    /// Stop.
    Stop,
}

struct PlatformHandles {
    ingress: SocketAddr,
    asks: tokio::sync::mpsc::UnboundedSender<Ask>,
    thread: std::thread::JoinHandle<()>,
}

fn service_yaml(name: &str, annotations: &[(&str, &str)]) -> Service {
    let annotations: String = annotations
        .iter()
        .map(|(k, v)| format!("        {k}: \"{v}\"\n"))
        .collect();
    let yaml = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  template:\n    metadata:\n      annotations:\n{annotations}    spec:\n      containers:\n        - image: sample-app\n"
    );
    let mut svc: Service = serde_yaml::from_str(&yaml).expect("manifest");
    svc.set_defaults(&Context::create());
    svc
}

async fn wait_ready(objects: &ServingObjects, name: &str) {
    let start = Instant::now();
    loop {
        if let Ok(s) = objects.services.get(Some("default"), name).await
            && s.is_ready()
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{name} never became ready"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Starts the platform on its own thread pinned to CPU 0.
fn start_platform() -> PlatformHandles {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (asks, mut asked) = tokio::sync::mpsc::unbounded_channel::<Ask>();
    let thread = std::thread::spawn(move || {
        pin_to(0);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let backend = LocalBackend::new(LocalConfig {
                images: [(
                    "sample-app".to_owned(),
                    LocalCommand {
                        command: vec![APP.to_owned()],
                        ..LocalCommand::default()
                    },
                )]
                .into(),
                ..LocalConfig::default()
            });
            let store = InMemoryStore::new();
            let objects = ServingObjects::in_memory(&store);
            let mut config = ServingConfig::default();
            config.network = config.network.with_domain_config_map(&BTreeMap::from([(
                "example.com".to_owned(),
                String::new(),
            )]));
            config.autoscaler = AutoscalerConfig {
                allow_zero_initial_scale: true,
                ..AutoscalerConfig::default()
            };
            let serving = Serving::new(objects.clone(), Arc::new(backend.clone()), config);
            let autoscaler = serving.autoscaler();
            let dataplane = serving.dataplane(DataplaneConfig::default());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("binds");
            let ingress = listener.local_addr().expect("address");
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let stopped = move || {
                let mut rx = stop_rx.clone();
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                }
            };
            let controllers = tokio::spawn(serving.run(stopped()));
            let served = {
                let dataplane = dataplane.clone();
                let stopped = stopped();
                tokio::spawn(async move {
                    let _ = dataplane.serve(listener, stopped).await;
                })
            };
            // `proxied`: one replica, default burst capacity: the
            // activator stays in the path. `serve`: burst capacity 0, so
            // requests go straight to the replica's queue-proxy.
            for (name, tbc) in [("proxied", "211"), ("serve", "0")] {
                let svc = service_yaml(
                    name,
                    &[
                        ("autoscaling.knative.dev/min-scale", "1"),
                        ("autoscaling.knative.dev/target-burst-capacity", tbc),
                    ],
                );
                objects.services.create(&svc).await.expect("created");
                wait_ready(&objects, name).await;
            }
            // The rows are only what they say once the autoscaler has put
            // `serve` in Serve mode and kept `proxied` behind the activator.
            let flag = |name: &str| {
                autoscaler
                    .activator_flag(&knative_serving::backend::WorkloadKey::new(
                        "default",
                        format!("{name}-00001"),
                    ))
                    .load(std::sync::atomic::Ordering::SeqCst)
            };
            let start = Instant::now();
            while flag("serve") && start.elapsed() < Duration::from_secs(30) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(!flag("serve"), "`serve` never left the activator path");
            assert!(flag("proxied"), "`proxied` left the activator path");
            let _ = ready_tx.send(ingress);
            while let Some(ask) = asked.recv().await {
                match ask {
                    Ask::Cpu(reply) => {
                        let _ = reply.send(thread_cpu());
                    }
                    Ask::ColdStart(name, reply) => {
                        let svc =
                            service_yaml(&name, &[("autoscaling.knative.dev/initial-scale", "0")]);
                        objects.services.create(&svc).await.expect("created");
                        wait_ready(&objects, &name).await;
                        let host: &'static str = format!("{name}.default.example.com").leak();
                        let started = Instant::now();
                        let mut sender = connect(ingress).await;
                        http_get(&mut sender, host).await.expect("cold request");
                        let _ = reply.send(started.elapsed());
                    }
                    Ask::Stop => break,
                }
            }
            let _ = stop_tx.send(true);
            let _ = controllers.await;
            let _ = served.await;
            drop(dataplane);
        });
    });
    let ingress = ready_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("platform started");
    PlatformHandles {
        ingress,
        asks,
        thread,
    }
}

fn ask_cpu(asks: &tokio::sync::mpsc::UnboundedSender<Ask>) -> Duration {
    let (tx, rx) = std::sync::mpsc::channel();
    let _ = asks.send(Ask::Cpu(tx));
    rx.recv().unwrap_or_default()
}

/// Starts the app directly (pinned to CPU 0) and returns it with the time
/// from spawn to its first answered request.
fn start_app() -> (std::process::Child, SocketAddr, Duration) {
    let port = free_port();
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    let mut command = std::process::Command::new(APP);
    command
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null());
    // The child inherits this thread's affinity: CPU 0.
    let child = std::thread::scope(|s| {
        s.spawn(|| {
            pin_to(0);
            command.spawn().expect("app starts")
        })
        .join()
        .expect("spawned")
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        loop {
            if let Ok(stream) = TcpStream::connect(address).await {
                let _ = stream.set_nodelay(true);
                if let Ok((mut sender, connection)) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                {
                    tokio::spawn(connection);
                    if http_get(&mut sender, "app").await.is_some() {
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    });
    let elapsed = started.elapsed();
    (child, address, elapsed)
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs.get(xs.len() / 2).copied().unwrap_or_default()
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: f64 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "data plane benchmark: {seconds} s per row after 1 s warm-up, {cpus} CPUs, GET {PATH}"
    );

    // The load generator: its own thread, pinned to CPU 1.
    let (load_tx, load_rx) = std::sync::mpsc::channel::<(
        SocketAddr,
        &'static str,
        usize,
        std::sync::mpsc::Sender<Load>,
    )>();
    let load_thread = std::thread::spawn(move || {
        pin_to(1.min(cpus - 1));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        while let Ok((address, host, connections, reply)) = load_rx.recv() {
            let result = runtime.block_on(load(address, host, connections, seconds));
            let _ = reply.send(result);
        }
    });
    let run_load = |address: SocketAddr, host: &'static str, connections: usize| -> Load {
        let (tx, rx) = std::sync::mpsc::channel();
        load_tx
            .send((address, host, connections, tx))
            .expect("load thread");
        rx.recv().expect("load result")
    };

    // Cold start of the app alone (median of 5).
    let mut app_starts = Vec::new();
    for _ in 0..5 {
        let (mut child, _, elapsed) = start_app();
        app_starts.push(elapsed);
        let _ = child.kill();
        let _ = child.wait();
    }
    let app_start = median(app_starts);

    let (mut app, app_address, _) = start_app();
    let platform = start_platform();

    println!();
    println!(
        "| path | conns | req/s | p50 µs | p99 µs | throughput vs direct | added p50 µs | added p99 µs | CPU µs/request | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for connections in [1usize, 16] {
        let cpu_before = process_cpu(app.id());
        let direct = run_load(app_address, "app", connections);
        let app_cpu = process_cpu(app.id()).saturating_sub(cpu_before);
        let app_cpu_per_request = micros(app_cpu) / direct.requests.max(1) as f64;
        println!(
            "| direct to the app | {connections} | {:.0} | {:.0} | {:.0} | 1.00 | 0 | 0 | app {:.1} | {} |",
            direct.rps,
            micros(direct.p50),
            micros(direct.p99),
            app_cpu_per_request,
            direct.errors
        );
        for (label, host) in [
            (
                "ingress + activator + queue-proxy",
                "proxied.default.example.com",
            ),
            (
                "ingress + queue-proxy (Serve mode)",
                "serve.default.example.com",
            ),
        ] {
            let cpu_before = ask_cpu(&platform.asks);
            let through = run_load(platform.ingress, host, connections);
            let proxy_cpu = ask_cpu(&platform.asks).saturating_sub(cpu_before);
            println!(
                "| {label} | {connections} | {:.0} | {:.0} | {:.0} | {:.2} | {:+.0} | {:+.0} | proxy {:.1} | {} |",
                through.rps,
                micros(through.p50),
                micros(through.p99),
                through.rps / direct.rps.max(1.0),
                micros(through.p50) - micros(direct.p50),
                micros(through.p99) - micros(direct.p99),
                micros(proxy_cpu) / through.requests.max(1) as f64,
                through.errors
            );
        }
    }

    // Cold start through the platform: a new service at zero, first byte.
    let mut colds = Vec::new();
    for i in 0..3 {
        let (tx, rx) = std::sync::mpsc::channel();
        let _ = platform.asks.send(Ask::ColdStart(format!("cold-{i}"), tx));
        if let Ok(d) = rx.recv_timeout(Duration::from_secs(60)) {
            colds.push(d);
        }
    }
    assert!(!colds.is_empty(), "no cold start completed");
    let cold = median(colds);
    println!();
    println!("| cold start | ms |");
    println!("|---|---|");
    println!(
        "| the app alone: spawn to first response (median of 5) | {:.1} |",
        app_start.as_secs_f64() * 1e3
    );
    println!(
        "| through the platform: request at zero to first byte (median of 3) | {:.1} |",
        cold.as_secs_f64() * 1e3
    );
    println!(
        "| added by the platform | {:+.1} |",
        (cold.as_secs_f64() - app_start.as_secs_f64()) * 1e3
    );

    let _ = platform.asks.send(Ask::Stop);
    let _ = platform.thread.join();
    drop(load_tx);
    let _ = load_thread.join();
    let _ = app.kill();
    let _ = app.wait();
}
