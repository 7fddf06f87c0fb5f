//! Broker throughput and latency, ingress to subscriber, over real HTTP on
//! 127.0.0.1, with the in-memory log; and CESQL evaluations per second.
//!
//! Run: `cargo bench -p knative-eventing --bench broker`
//! (`-- --seconds N` to measure longer than 5 s per row; environment
//! `ROWS=1x1,10x1,1x1@5000` picks rows as triggers×events-per-request,
//! with `@RATE` for producers paced at RATE events/s in all,
//! `MAX_IN_FLIGHT=n` the dispatchers' window, `LOG=disk` the durable
//! `DiskLog` instead of the in-memory log, `LOG=nats` the `NatsLog` on a
//! `nats-server -js` the benchmark starts on a free port (its CPU time is
//! counted as the broker's), `CESQL=off` skips the CESQL row).
//!
//! Producers post binary-mode events (one per request as upstream's
//! ingress takes them, or 100 per batched request) on 32 keep-alive
//! connections in a closed loop; every trigger matches every event and
//! delivers to one subscriber server that counts deliveries and reads the
//! send time the producer put in an extension. Everything shares this
//! machine's cores: producers, ingress, dispatchers and subscriber; the
//! broker (ingress, log, dispatchers and their HTTP client) runs on a
//! runtime of its own, and its CPU time (the process's, less the load
//! runtime's threads) per delivery is the last column: the number to
//! compare with upstream's ≈ 660 µs per event (`specs/EVENTING.md §8`).

/// The allocator a binary embedding the broker would pick: mimalloc
/// (glibc's malloc/free was ≈ 12 % of the CPU samples of the 1 x 1 row).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudevents::{EventBuilder, EventBuilderV10};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use knative_eventing::api::TriggerSpec;
use knative_eventing::binding;
use knative_eventing::broker::{Brokers, DispatchConfig, IngressConfig, TriggerRoute};
use knative_eventing::cesql::Expression;
use knative_eventing::filter::Filter;
use knative_eventing::log::InMemoryLog;
use std::sync::Mutex;

/// Deliveries seen by the subscriber, and their latencies (µs).
struct Seen {
    count: AtomicU64,
    latencies: Mutex<Vec<u32>>,
    epoch: Instant,
}

async fn subscriber(seen: Arc<Seen>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let seen = Arc::clone(&seen);
                        async move {
                            let sent = request
                                .headers()
                                .get("ce-sentmicros")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.parse::<u64>().ok());
                            let _ = request.into_body().collect().await;
                            seen.count.fetch_add(1, Ordering::Relaxed);
                            if let Some(sent) = sent {
                                let now = seen.epoch.elapsed().as_micros() as u64;
                                let latency =
                                    u32::try_from(now.saturating_sub(sent)).unwrap_or(u32::MAX);
                                seen.latencies.lock().expect("lock").push(latency);
                            }
                            let mut response = Response::new(Full::new(Bytes::new()));
                            *response.status_mut() = hyper::StatusCode::ACCEPTED;
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

fn event(n: u64, sent: u64) -> cloudevents::Event {
    EventBuilderV10::new()
        .id(n.to_string())
        .ty("com.example.order.created")
        .source("/orders")
        .extension("sentmicros", sent.to_string())
        .data("application/json", serde_json::json!({"order": n}))
        .build()
        .expect("event")
}

/// Threads of the load runtime (producers and subscriber), as
/// `/proc/self/task/TID` paths, so that the broker's share of the
/// process's CPU time can be told apart.
type Threads = Arc<Mutex<Vec<std::path::PathBuf>>>;

/// CPU time of the whole process so far, in ns (`/proc/self/stat`:
/// utime + stime, in clock ticks of 10 ms).
fn process_cpu_ns() -> u64 {
    cpu_ns_of("/proc/self/stat")
}

/// CPU time of the process whose `stat` file is `path`, in ns.
fn cpu_ns_of(path: &str) -> u64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after ')'.
    (ticks(11) + ticks(12)) * 10_000_000
}

/// CPU time of the given threads so far, in ns (`schedstat`).
fn threads_cpu_ns(threads: &Threads) -> u64 {
    threads
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|t| std::fs::read_to_string(t.join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[path = "../tests/support/nats_server.rs"]
mod nats_server;
use nats_server::NatsServer;

struct Row {
    ingress_events: u64,
    deliveries: u64,
    p50: u32,
    p99: u32,
    /// CPU time of everything but the load runtime, per delivery (µs).
    broker_cpu_us: f64,
    /// CPU time of the producers and the subscriber, per delivery (µs).
    load_cpu_us: f64,
}

/// One row: `triggers` triggers, `batch` events per request, producers
/// in a closed loop (`rate` None) or paced at `rate` events/s.
async fn run(
    broker_rt: tokio::runtime::Handle,
    load_threads: Threads,
    triggers: usize,
    batch: usize,
    rate: Option<u64>,
    seconds: f64,
) -> Row {
    let seen = Arc::new(Seen {
        count: AtomicU64::new(0),
        latencies: Mutex::new(Vec::new()),
        epoch: Instant::now(),
    });
    let sub = subscriber(Arc::clone(&seen)).await;
    // `LOG=disk`: the durable log in a temporary directory.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bench.redb");
    // `LOG=nats`: a server of its own for each row.
    let nats = (std::env::var("LOG").as_deref() == Ok("nats")).then(NatsServer::start_temp);
    let nats_url = nats.as_ref().map(NatsServer::url);
    // The broker (ingress, dispatchers, their HTTP client) runs on its own
    // runtime: everything it spawns stays there.
    let (brokers, ingress, stop_tx) = broker_rt
        .spawn(async move {
            let log: Arc<dyn knative_eventing::log::EventLog> =
                match std::env::var("LOG").as_deref() {
                    Ok("disk") => {
                        Arc::new(knative_eventing::log::disk::DiskLog::open(path).expect("opens"))
                    }
                    Ok("nats") => Arc::new(
                        knative_eventing::log::nats::NatsLog::connect(
                            nats_url.as_deref().expect("a server"),
                            // Bounded like the other logs, so that closed-loop
                            // producers cannot run arbitrarily far ahead.
                            knative_eventing::log::nats::NatsLogConfig {
                                max_events: Some(knative_eventing::log::DEFAULT_CAPACITY as u64),
                                ..knative_eventing::log::nats::NatsLogConfig::default()
                            },
                        )
                        .await
                        .expect("connects to nats-server"),
                    ),
                    _ => Arc::new(InMemoryLog::new()),
                };
            let brokers = Brokers::new(
                log,
                IngressConfig {
                    limits: binding::Limits {
                        allow_batch: batch > 1,
                        ..binding::Limits::default()
                    },
                    ..IngressConfig::default()
                },
                DispatchConfig {
                    max_in_flight: std::env::var("MAX_IN_FLIGHT")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(DispatchConfig::default().max_in_flight),
                    ..DispatchConfig::default()
                },
            );
            brokers
                .upsert_broker("bench", "default", None, None)
                .await
                .expect("broker");
            let spec: TriggerSpec = serde_json::from_value(serde_json::json!({
                "broker": "default", "subscriber": {"uri": format!("http://{sub}/")},
                "filters": [{"prefix": {"type": "com.example."}}]
            }))
            .expect("spec");
            for t in 0..triggers {
                brokers
                    .upsert_trigger(
                        "bench",
                        "default",
                        &format!("t{t}"),
                        TriggerRoute {
                            filter: Filter::for_trigger(&spec).expect("filter"),
                            subscriber: format!("http://{sub}/"),
                            delivery: None,
                            dead_letter_sink: None,
                        },
                    )
                    .await
                    .expect("trigger");
            }
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("binds");
            let ingress = listener.local_addr().expect("address");
            let serving = brokers.clone();
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(async move {
                let _ = serving
                    .serve(listener, async {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
            (brokers, ingress, stop_tx)
        })
        .await
        .expect("broker setup");

    let warmup = Duration::from_secs(1);
    let measure = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let producers = producers(triggers);
    let tasks: Vec<_> = (0..producers)
        .map(|p| {
            let seen = Arc::clone(&seen);
            let sent = Arc::clone(&sent);
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(ingress)
                    .await
                    .expect("connects");
                let _ = stream.set_nodelay(true);
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .expect("handshake");
                tokio::spawn(connection);
                let mut n = p as u64 * 1_000_000_000;
                // Paced producers send one request every `interval`, from a
                // random phase so that they do not all send at once.
                let interval = rate
                    .map(|r| Duration::from_secs_f64(producers as f64 * batch as f64 / r as f64));
                let mut next = Instant::now()
                    + interval.map_or(Duration::ZERO, |i| i.mul_f64(fastrand_f64(p)));
                while start.elapsed() < warmup + measure {
                    if let Some(interval) = interval {
                        tokio::time::sleep_until(next.into()).await;
                        next += interval;
                    }
                    let now = seen.epoch.elapsed().as_micros() as u64;
                    let events: Vec<_> = (0..batch).map(|i| event(n + i as u64, now)).collect();
                    n += batch as u64;
                    let (headers, body) = if batch > 1 {
                        binding::write_batch(&events).expect("encodes")
                    } else {
                        binding::write_binary(&events[0]).expect("encodes")
                    };
                    let mut request = Request::post("/bench/default");
                    for (k, v) in &headers {
                        request = request.header(k, v);
                    }
                    let request = request
                        .header(hyper::header::HOST, "broker-ingress")
                        .body(Full::new(body))
                        .expect("request");
                    let Ok(response) = sender.send_request(request).await else {
                        break;
                    };
                    let ok = response.status() == hyper::StatusCode::ACCEPTED;
                    let _ = response.into_body().collect().await;
                    if ok && start.elapsed() >= warmup {
                        sent.fetch_add(batch as u64, Ordering::Relaxed);
                    }
                    if !ok {
                        // The log is full (500): back off as a producer would.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();
    // Count deliveries, latencies and CPU only inside the measured window.
    tokio::time::sleep_until((start + warmup).into()).await;
    let delivered_before = seen.count.load(Ordering::Relaxed);
    let load_before = threads_cpu_ns(&load_threads);
    let nats_cpu = || {
        nats.as_ref()
            .map_or(0, |n| cpu_ns_of(&format!("/proc/{}/stat", n.pid())))
    };
    let cpu_before = (process_cpu_ns() + nats_cpu()).saturating_sub(load_before);
    seen.latencies.lock().expect("lock").clear();
    tokio::time::sleep_until((start + warmup + measure).into()).await;
    let delivered = seen.count.load(Ordering::Relaxed) - delivered_before;
    let load_after = threads_cpu_ns(&load_threads);
    let broker_cpu = (process_cpu_ns() + nats_cpu())
        .saturating_sub(load_after)
        .saturating_sub(cpu_before);
    let load_cpu = load_after.saturating_sub(load_before);
    let mut latencies = std::mem::take(&mut *seen.latencies.lock().expect("lock"));
    for t in tasks {
        let _ = t.await;
    }
    let _ = stop_tx.send(());
    drop(brokers);
    drop(dir);
    drop(nats);
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Row {
        ingress_events: (sent.load(Ordering::Relaxed) as f64 / measure.as_secs_f64()) as u64,
        deliveries: (delivered as f64 / measure.as_secs_f64()) as u64,
        p50: pct(0.50),
        p99: pct(0.99),
        broker_cpu_us: broker_cpu as f64 / 1000.0 / delivered.max(1) as f64,
        load_cpu_us: load_cpu as f64 / 1000.0 / delivered.max(1) as f64,
    }
}

/// Producers for a row: fewer when each event fans out to many triggers,
/// so that the subscriber side is what is measured, not a growing backlog.
fn producers(triggers: usize) -> usize {
    if triggers >= 100 { 4 } else { 32 }
}

/// A fixed pseudo-random phase in [0, 1) for producer `p`.
fn fastrand_f64(p: usize) -> f64 {
    // The golden-ratio sequence spreads the producers evenly.
    (p as f64 * 0.618_033_988_749_895).fract()
}

fn cesql_rate() -> f64 {
    let expression = Expression::parse(
        "type = 'com.example.order.created' AND source LIKE '/orders/%' AND (priority > 5 OR EXISTS urgent)",
    )
    .expect("parses");
    let event = EventBuilderV10::new()
        .id("1")
        .ty("com.example.order.created")
        .source("/orders/42")
        .extension("priority", 7i64)
        .extension("region", "eu")
        .extension("tenant", "acme")
        .extension("channel", "web")
        .build()
        .expect("event");
    let n = 5_000_000u32;
    let mut best = 0.0f64;
    for _ in 0..3 {
        let start = Instant::now();
        let mut passed = 0u32;
        for _ in 0..n {
            passed +=
                u32::from(std::hint::black_box(&expression).matches(std::hint::black_box(&event)));
        }
        assert_eq!(passed, n);
        best = best.max(f64::from(n) / start.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: f64 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let log = match std::env::var("LOG").as_deref() {
        Ok("disk") => "durable DiskLog (redb, synced group commits)",
        Ok("nats") => "durable NatsLog (a local nats-server -js, file store)",
        _ => "in-memory log",
    };
    println!(
        "broker benchmark: {seconds} s per row after 1 s warm-up, {log}, every trigger matches"
    );
    println!();
    println!(
        "| triggers | events per request | producers | events/s into the ingress | deliveries/s | p50 ms | p99 ms | broker CPU µs per delivery | load CPU µs per delivery |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    // The load (producers, subscriber) and the broker on runtimes of
    // their own, so that the broker's CPU time can be measured apart.
    // `LOAD_THREADS` / `BROKER_THREADS`: worker threads of each (2 each
    // by default, one per core).
    let threads = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(2)
    };
    let load_threads: Threads = Arc::default();
    let recorded = Arc::clone(&load_threads);
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads("LOAD_THREADS"))
        .thread_name("load")
        .on_thread_start(move || {
            if let Ok(path) = std::fs::read_link("/proc/thread-self") {
                recorded
                    .lock()
                    .expect("lock")
                    .push(std::path::Path::new("/proc").join(path));
            }
        })
        .enable_all()
        .build()
        .expect("runtime");
    let broker = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads("BROKER_THREADS"))
        .thread_name("broker")
        .enable_all()
        .build()
        .expect("runtime");
    // Rows: `TRIGGERSxBATCH`, or `TRIGGERSxBATCH@RATE` for producers paced
    // at RATE events/s in all (latency below saturation).
    let rows: Vec<(usize, usize, Option<u64>)> = std::env::var("ROWS")
        .unwrap_or_else(|_| "1x1,1x1@5000,1x1@15000,1x100,10x1,100x1".to_owned())
        .split(',')
        .filter_map(|r| {
            let (shape, rate) = match r.split_once('@') {
                Some((shape, rate)) => (shape, Some(rate.parse().ok()?)),
                None => (r, None),
            };
            let (t, b) = shape.split_once('x')?;
            Some((t.parse().ok()?, b.parse().ok()?, rate))
        })
        .collect();
    for (triggers, batch, rate) in rows {
        let row = load.block_on(run(
            broker.handle().clone(),
            Arc::clone(&load_threads),
            triggers,
            batch,
            rate,
            seconds,
        ));
        let producers = match rate {
            Some(rate) => format!("{} at {rate} ev/s", producers(triggers)),
            None => producers(triggers).to_string(),
        };
        println!(
            "| {triggers} | {batch} | {producers} | {} | {} | {:.2} | {:.2} | {:.1} | {:.1} |",
            row.ingress_events,
            row.deliveries,
            f64::from(row.p50) / 1000.0,
            f64::from(row.p99) / 1000.0,
            row.broker_cpu_us,
            row.load_cpu_us,
        );
    }
    if std::env::var("CESQL").as_deref() == Ok("off") {
        return;
    }
    println!();
    println!(
        "CESQL `type = 'com.example.order.created' AND source LIKE '/orders/%' AND (priority > 5 OR EXISTS urgent)`: {:.1} M evaluations/s on one core",
        cesql_rate() / 1e6
    );
}
