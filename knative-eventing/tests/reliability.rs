//! Reliability of the broker data path with real processes and real HTTP
//! on 127.0.0.1 (`specs/EVENTING.md §1.3`, `§5`; issue: durable logs):
//!
//! - a broker process on the durable embedded log is killed with SIGKILL
//!   in the middle of a 100 000-event stream while producers retry; after
//!   a restart every acknowledged event reaches the subscriber at least
//!   once (duplicates are counted and printed);
//! - a subscriber that is down for 30 s gets everything once it is back;
//! - events sent before a trigger exists are not delivered to it, those
//!   sent after are (as upstream: a trigger starts at the end of the log).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudevents::{Event, EventBuilder, EventBuilderV10};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use knative_eventing::api::{DeliverySpec, TriggerSpec};
use knative_eventing::binding;
use knative_eventing::broker::{Brokers, DispatchConfig, IngressConfig, TriggerRoute};
use knative_eventing::filter::Filter;
use knative_eventing::log::InMemoryLog;
use knative_eventing::log::disk::DiskLog;
use serde_json::json;

/// A subscriber that counts deliveries per event id, and can be "down"
/// (answering 503) for a while.
#[derive(Clone)]
struct Counting {
    url: String,
    seen: Arc<Mutex<HashMap<String, u32>>>,
    down: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
}

impl Counting {
    async fn start() -> Counting {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let address = listener.local_addr().expect("address");
        let this = Counting {
            url: format!("http://{address}/"),
            seen: Arc::default(),
            down: Arc::default(),
            refused: Arc::default(),
        };
        let server = this.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: Request<hyper::body::Incoming>| {
                            let server = server.clone();
                            async move {
                                let id = request
                                    .headers()
                                    .get("ce-id")
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned);
                                let _ = request.into_body().collect().await;
                                let status = if server.down.load(Ordering::SeqCst) {
                                    server.refused.fetch_add(1, Ordering::SeqCst);
                                    StatusCode::SERVICE_UNAVAILABLE
                                } else {
                                    if let Some(id) = id {
                                        *server
                                            .seen
                                            .lock()
                                            .expect("lock")
                                            .entry(id)
                                            .or_default() += 1;
                                    }
                                    StatusCode::ACCEPTED
                                };
                                let mut response = Response::new(Full::new(Bytes::new()));
                                *response.status_mut() = status;
                                Ok::<_, std::convert::Infallible>(response)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        this
    }

    fn distinct(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }
}

fn event(id: &str) -> Event {
    EventBuilderV10::new()
        .id(id)
        .ty("com.example.reliable")
        .source("/reliability")
        .data("application/json", json!({"id": id}))
        .build()
        .expect("event")
}

/// Posts `event` to the broker at `ingress` until it is accepted (202),
/// reconnecting when the broker is gone; returns how many tries it took.
async fn send_until_accepted(
    connection: &mut Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
    ingress: SocketAddr,
    event: &Event,
) -> u32 {
    let (headers, body) = binding::write_binary(event).expect("encodes");
    let mut tries = 0;
    loop {
        tries += 1;
        if connection.as_ref().is_none_or(|c| c.is_closed()) {
            *connection = match tokio::net::TcpStream::connect(ingress).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                        Ok((sender, conn)) => {
                            tokio::spawn(conn);
                            Some(sender)
                        }
                        Err(_) => None,
                    }
                }
                Err(_) => None,
            };
        }
        if let Some(sender) = connection.as_mut()
            && sender.ready().await.is_ok()
        {
            let mut request = Request::post("/default/default");
            for (k, v) in &headers {
                request = request.header(k, v);
            }
            let request = request
                .header(hyper::header::HOST, "broker-ingress")
                .body(Full::new(body.clone()))
                .expect("request");
            match sender.send_request(request).await {
                Ok(response) => {
                    let accepted = response.status() == StatusCode::ACCEPTED;
                    let _ = response.into_body().collect().await;
                    if accepted {
                        return tries;
                    }
                }
                Err(_) => *connection = None,
            }
        } else {
            *connection = None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A broker process: the test binary run again as `child_broker_process`.
struct BrokerProcess {
    child: Child,
}

impl BrokerProcess {
    fn start(
        db: &std::path::Path,
        port: u16,
        subscriber: &str,
        nats: Option<&str>,
    ) -> BrokerProcess {
        let mut command = Command::new(std::env::current_exe().expect("test binary"));
        if let Some(url) = nats {
            command.env("KN_CHILD_NATS", url);
        }
        let mut child = command
            .args([
                "--exact",
                "child_broker_process",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KN_CHILD_DB", db)
            .env("KN_CHILD_PORT", port.to_string())
            .env("KN_CHILD_SUBSCRIBER", subscriber)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starts the broker process");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let start = Instant::now();
        loop {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the broker process never got ready"
            );
            match lines.next() {
                // The harness prints `test child_broker_process ... ` first.
                Some(Ok(line)) if line.ends_with("BROKER READY") => break,
                Some(Ok(_)) => {}
                _ => panic!("the broker process ended before it was ready"),
            }
        }
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        BrokerProcess { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The broker process of the kill test (not a test by itself): a broker
/// on a `DiskLog`, one trigger to the subscriber, serving on the port it
/// is given, until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the broker process the reliability tests start and kill"]
async fn child_broker_process() {
    let db = std::env::var("KN_CHILD_DB").expect("KN_CHILD_DB");
    let port: u16 = std::env::var("KN_CHILD_PORT")
        .expect("KN_CHILD_PORT")
        .parse()
        .expect("port");
    let subscriber = std::env::var("KN_CHILD_SUBSCRIBER").expect("KN_CHILD_SUBSCRIBER");
    let log: Arc<dyn knative_eventing::log::EventLog> = match std::env::var("KN_CHILD_NATS") {
        Ok(url) => Arc::new(
            knative_eventing::log::nats::NatsLog::connect(&url, Default::default())
                .await
                .expect("connects to nats-server"),
        ),
        Err(_) => Arc::new(
            tokio::task::spawn_blocking(move || DiskLog::open(db))
                .await
                .expect("task")
                .expect("opens the log"),
        ),
    };
    let brokers = Brokers::new(log, IngressConfig::default(), DispatchConfig::default());
    brokers
        .upsert_broker("default", "default", None, None)
        .await
        .expect("broker");
    let spec: TriggerSpec = serde_json::from_value(json!({
        "broker": "default", "subscriber": {"uri": subscriber}
    }))
    .expect("spec");
    brokers
        .upsert_trigger(
            "default",
            "default",
            "all",
            TriggerRoute {
                filter: Filter::for_trigger(&spec).expect("filter"),
                subscriber,
                delivery: Some(
                    serde_json::from_value(json!({
                        "retry": 10, "backoffPolicy": "exponential", "backoffDelay": "PT0.05S"
                    }))
                    .expect("delivery"),
                ),
                dead_letter_sink: None,
            },
        )
        .await
        .expect("trigger");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("binds the port it was given");
    println!("BROKER READY");
    let _ = brokers.serve(listener, std::future::pending()).await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_stream_delivers_every_acknowledged_event_after_a_restart() {
    kill_mid_stream(None).await;
}

#[path = "support/nats_server.rs"]
mod nats_server;
use nats_server::NatsServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_on_nats_killed_mid_stream_delivers_every_acknowledged_event_after_a_restart() {
    let nats = NatsServer::start_temp();
    kill_mid_stream(Some(&nats.url())).await;
}

/// Streams 100 000 events into a broker process (on a `DiskLog`, or on
/// NATS JetStream at `nats`), kills it with SIGKILL a third of the way in,
/// restarts it, and checks every acknowledged event was delivered.
async fn kill_mid_stream(nats: Option<&str>) {
    const EVENTS: usize = 100_000;
    const PRODUCERS: usize = 16;
    let subscriber = Counting::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("broker.redb");
    let port = free_port();
    let ingress: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut broker = BrokerProcess::start(&db, port, &subscriber.url, nats);

    let acked = Arc::new(AtomicUsize::new(0));
    let retried = Arc::new(AtomicUsize::new(0));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (acked, retried) = (Arc::clone(&acked), Arc::clone(&retried));
            tokio::spawn(async move {
                let mut connection = None;
                for i in (p..EVENTS).step_by(PRODUCERS) {
                    let tries =
                        send_until_accepted(&mut connection, ingress, &event(&format!("e-{i}")))
                            .await;
                    retried.fetch_add(tries as usize - 1, Ordering::Relaxed);
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    // Kill the broker a third of the way in, then start it again.
    let start = Instant::now();
    while acked.load(Ordering::Relaxed) < EVENTS / 3 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "producers stalled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    broker.kill();
    let acked_at_kill = acked.load(Ordering::Relaxed);
    let delivered_at_kill = subscriber.distinct();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut broker = BrokerProcess::start(&db, port, &subscriber.url, nats);
    for producer in producers {
        producer.await.expect("producer");
    }
    assert_eq!(acked.load(Ordering::Relaxed), EVENTS);
    // Every acknowledged event must arrive; the bound only stops a stuck
    // run (a quiet machine needs about 150 s in a debug build, a loaded
    // one more than 240 s).
    while subscriber.distinct() < EVENTS {
        assert!(
            start.elapsed() < Duration::from_secs(420),
            "only {} of {EVENTS} acknowledged events were delivered",
            subscriber.distinct()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = subscriber.seen.lock().expect("lock").clone();
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    let missing: Vec<usize> = (0..EVENTS)
        .filter(|i| !seen.contains_key(&format!("e-{i}")))
        .collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    println!(
        "{}: kill -9 at {acked_at_kill} acknowledged / {delivered_at_kill} delivered events; \
         {EVENTS} acknowledged, all delivered, {duplicates} duplicates, \
         {} producer retries, {:.1} s",
        if nats.is_some() { "NATS" } else { "DiskLog" },
        retried.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64()
    );
    broker.kill();
}

/// A broker on the in-memory log, serving on a free port.
async fn broker() -> (Brokers, SocketAddr) {
    let brokers = Brokers::new(
        Arc::new(InMemoryLog::new()),
        IngressConfig::default(),
        DispatchConfig::default(),
    );
    brokers
        .upsert_broker("default", "default", None, None)
        .await
        .expect("broker");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let address = listener.local_addr().expect("address");
    let serving = brokers.clone();
    tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
    (brokers, address)
}

async fn add_trigger(brokers: &Brokers, subscriber: &str, delivery: Option<DeliverySpec>) {
    let spec: TriggerSpec = serde_json::from_value(json!({
        "broker": "default", "subscriber": {"uri": subscriber}
    }))
    .expect("spec");
    brokers
        .upsert_trigger(
            "default",
            "default",
            "t",
            TriggerRoute {
                filter: Filter::for_trigger(&spec).expect("filter"),
                subscriber: subscriber.to_owned(),
                delivery,
                dead_letter_sink: None,
            },
        )
        .await
        .expect("trigger");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_down_for_30_seconds_gets_everything_when_it_is_back() {
    const EVENTS: usize = 2_000;
    let subscriber = Counting::start().await;
    subscriber.down.store(true, Ordering::SeqCst);
    // 0-based exponential backoff of 0.5 s: waits 0.5, 1, 2, … 64 s; the
    // retries span more than two minutes.
    let delivery: DeliverySpec = serde_json::from_value(json!({
        "retry": 8, "backoffPolicy": "exponential", "backoffDelay": "PT0.5S"
    }))
    .expect("delivery");
    let (brokers, ingress) = broker().await;
    add_trigger(&brokers, &subscriber.url, Some(delivery)).await;
    let mut connection = None;
    for i in 0..EVENTS {
        send_until_accepted(&mut connection, ingress, &event(&format!("d-{i}"))).await;
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let refused = subscriber.refused.load(Ordering::SeqCst);
    assert!(refused > 0, "deliveries were tried while it was down");
    assert_eq!(subscriber.distinct(), 0);
    subscriber.down.store(false, Ordering::SeqCst);
    while subscriber.distinct() < EVENTS {
        assert!(
            start.elapsed() < Duration::from_secs(150),
            "only {} of {EVENTS} delivered after the subscriber came back",
            subscriber.distinct()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "subscriber down 30 s: {refused} deliveries refused meanwhile; all {EVENTS} delivered {:.1} s after it came back",
        start.elapsed().as_secs_f64() - 30.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_before_a_trigger_exists_are_not_delivered_to_it_events_after_are() {
    let subscriber = Counting::start().await;
    let (brokers, ingress) = broker().await;
    let mut connection = None;
    for i in 0..50 {
        send_until_accepted(&mut connection, ingress, &event(&format!("before-{i}"))).await;
    }
    add_trigger(&brokers, &subscriber.url, None).await;
    for i in 0..50 {
        send_until_accepted(&mut connection, ingress, &event(&format!("after-{i}"))).await;
    }
    let start = Instant::now();
    while subscriber.distinct() < 50 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "events after the trigger were lost"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = subscriber.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 50);
    assert!(
        seen.keys().all(|id| id.starts_with("after-")),
        "a new trigger starts at the end of the log, as upstream's"
    );
}
