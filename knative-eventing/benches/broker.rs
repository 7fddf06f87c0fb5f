//! Broker throughput and latency, ingress to subscriber, over real HTTP on
//! 127.0.0.1, with the in-memory log; and CESQL evaluations per second.
//!
//! Run: `cargo bench -p knative-eventing --bench broker`
//! (`-- --seconds N` to measure longer than 5 s per row; environment
//! `ROWS=1x1,10x1` picks rows as triggers×events-per-request,
//! `MAX_IN_FLIGHT=n` the dispatchers' window, and `LOG=disk` the durable
//! `DiskLog` instead of the in-memory log).
//!
//! Producers post binary-mode events (one per request as upstream's
//! ingress takes them, or 100 per batched request) on 32 keep-alive
//! connections in a closed loop; every trigger matches every event and
//! delivers to one subscriber server that counts deliveries and reads the
//! send time the producer put in an extension. Everything shares this
//! machine's cores: producers, ingress, dispatchers and subscriber.

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

struct Row {
    ingress_events: u64,
    deliveries: u64,
    p50: u32,
    p99: u32,
}

async fn run(triggers: usize, batch: usize, seconds: f64) -> Row {
    let seen = Arc::new(Seen {
        count: AtomicU64::new(0),
        latencies: Mutex::new(Vec::new()),
        epoch: Instant::now(),
    });
    let sub = subscriber(Arc::clone(&seen)).await;
    // `LOG=disk`: the durable log in a temporary directory.
    let _dir = tempfile::tempdir().expect("temp dir");
    let log: Arc<dyn knative_eventing::log::EventLog> = match std::env::var("LOG").as_deref() {
        Ok("disk") => Arc::new(
            knative_eventing::log::disk::DiskLog::open(_dir.path().join("bench.redb"))
                .expect("opens"),
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
        DispatchConfig::default(),
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

    let warmup = Duration::from_secs(1);
    let measure = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    // Fewer producers when each event fans out to many triggers, so the
    // subscriber side is what is measured, not a growing backlog.
    let producers = if triggers >= 100 { 4 } else { 32 };
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
                while start.elapsed() < warmup + measure {
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
                }
            })
        })
        .collect();
    // Count deliveries and latencies only inside the measured window.
    tokio::time::sleep_until((start + warmup).into()).await;
    let delivered_before = seen.count.load(Ordering::Relaxed);
    seen.latencies.lock().expect("lock").clear();
    tokio::time::sleep_until((start + warmup + measure).into()).await;
    let delivered = seen.count.load(Ordering::Relaxed) - delivered_before;
    let mut latencies = std::mem::take(&mut *seen.latencies.lock().expect("lock"));
    for t in tasks {
        let _ = t.await;
    }
    let _ = stop_tx.send(());
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
    }
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
    let log = if std::env::var("LOG").as_deref() == Ok("disk") {
        "durable DiskLog (redb, synced group commits)"
    } else {
        "in-memory log"
    };
    println!(
        "broker benchmark: {seconds} s per row after 1 s warm-up, {log}, every trigger matches"
    );
    println!();
    println!(
        "| triggers | events per request | events/s into the ingress | deliveries/s | p50 ms | p99 ms |"
    );
    println!("|---|---|---|---|---|---|");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rows: Vec<(usize, usize)> = match std::env::var("ROWS") {
        Ok(rows) => rows
            .split(',')
            .filter_map(|r| {
                let (t, b) = r.split_once('x')?;
                Some((t.parse().ok()?, b.parse().ok()?))
            })
            .collect(),
        Err(_) => vec![(1, 1), (1, 100), (10, 1), (100, 1)],
    };
    for (triggers, batch) in rows {
        let row = runtime.block_on(run(triggers, batch, seconds));
        println!(
            "| {triggers} | {batch} | {} | {} | {:.2} | {:.2} |",
            row.ingress_events,
            row.deliveries,
            f64::from(row.p50) / 1000.0,
            f64::from(row.p99) / 1000.0
        );
    }
    println!();
    println!(
        "CESQL `type = 'com.example.order.created' AND source LIKE '/orders/%' AND (priority > 5 OR EXISTS urgent)`: {:.1} M evaluations/s on one core",
        cesql_rate() / 1e6
    );
}
