//! The sample app: a tiny HTTP server to try Knative with (the local-process
//! backend runs it as a revision's container; the `knative-sample-app` binary
//! and `knative sample-app` run [`run`]).
//!
//! It listens on `0.0.0.0:$PORT` (default 8080) and answers:
//!
//! - `GET /`: `Hello {TARGET}!` (`TARGET` defaults to `World`);
//! - `GET /healthz`: `ok`;
//! - `GET /env/<NAME>`: the value of variable `NAME`, 404 if it is unset;
//! - `GET /exit/<code>`: answers, then exits with `code` shortly after;
//! - `GET /sleep/<ms>`: waits `ms` milliseconds, then answers;
//! - `GET /print/<n>`: prints `line 1` … `line n` to stdout;
//! - `GET /bytes/<n>`: `n` bytes of `x`;
//! - `POST /echo` (any method): the request body's length;
//! - `GET /stats`: `in_flight <n> max <m>`, the requests in flight now and
//!   the most ever in flight at once (probes and `/stats` not counted);
//! - a CloudEvent (`POST` with `ce-type`, or a structured
//!   `application/cloudevents+json` body): printed to stdout as
//!   `cloudevent type=<type> source=<source> id=<id>`, answered 202, like
//!   upstream's event-display sample.
//!
//! `STARTUP_DELAY_MS` delays binding the port (to see readiness probes at
//! work). On start it prints `listening on <address> (pid <pid>)` to stdout.
//! SIGTERM shuts it down gracefully: it stops accepting, lets requests in
//! flight finish and exits with code 0.

use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Serves until SIGTERM, configured by the environment (see the module
/// docs); needs a tokio runtime with IO, time and signals enabled.
pub async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let port: u16 = env_parse("PORT").unwrap_or(8080);
    let mut terminate = signal(SignalKind::terminate())?;
    if let Some(ms) = env_parse::<u64>("STARTUP_DELAY_MS") {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(ms)) => {}
            _ = terminate.recv() => return Ok(()),
        }
    }
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).await?;
    let (address, pid) = (listener.local_addr()?, std::process::id());
    println!("listening on {address} (pid {pid})");

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        eprintln!("accept failed: {error}");
                        continue;
                    }
                };
                let mut shutdown = shutdown_rx.clone();
                connections.spawn(async move {
                    let conn = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service_fn(handle));
                    let mut conn = std::pin::pin!(conn);
                    let mut draining = false;
                    loop {
                        tokio::select! {
                            result = conn.as_mut() => {
                                if let Err(error) = result {
                                    eprintln!("connection error: {error}");
                                }
                                break;
                            }
                            _ = shutdown.wait_for(|stop| *stop), if !draining => {
                                draining = true;
                                conn.as_mut().graceful_shutdown();
                            }
                        }
                    }
                });
            }
        }
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    eprintln!("SIGTERM: shutting down");
    let _ = shutdown_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Requests in flight, and the most there ever were.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static MAX_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Counts a request in flight while it lives.
struct Counted;

impl Counted {
    fn new() -> Self {
        let now = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
        MAX_IN_FLIGHT.fetch_max(now, Ordering::SeqCst);
        Counted
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answers one request.
async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    if path == "/stats" {
        let body = format!(
            "in_flight {} max {}\n",
            IN_FLIGHT.load(Ordering::SeqCst),
            MAX_IN_FLIGHT.load(Ordering::SeqCst)
        );
        return Ok(reply(StatusCode::OK, body));
    }
    let _counted = (path != "/healthz").then(Counted::new);
    if let Some(response) = cloud_event(request.headers(), request.method()) {
        return Ok(match response {
            CloudEvent::Binary(line) => {
                println!("{line}");
                reply(StatusCode::ACCEPTED, String::new())
            }
            CloudEvent::Structured => match request.into_body().collect().await {
                Ok(body) => {
                    println!("{}", structured_line(&body.to_bytes()));
                    reply(StatusCode::ACCEPTED, String::new())
                }
                Err(e) => reply(StatusCode::BAD_REQUEST, format!("reading the body: {e}\n")),
            },
        });
    }
    if path == "/echo" {
        return Ok(match request.into_body().collect().await {
            Ok(body) => reply(StatusCode::OK, format!("{}\n", body.to_bytes().len())),
            Err(e) => reply(StatusCode::BAD_REQUEST, format!("reading the body: {e}\n")),
        });
    }
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        return Ok(reply(StatusCode::OK, "x".repeat(n.min(64 << 20))));
    }
    if request.method() != Method::GET {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into()));
    }
    let path = path.as_str();
    let (status, body) = if path == "/" {
        let target = std::env::var("TARGET").unwrap_or_else(|_| "World".into());
        (StatusCode::OK, format!("Hello {target}!\n"))
    } else if path == "/healthz" {
        (StatusCode::OK, "ok".into())
    } else if let Some(name) = path.strip_prefix("/env/") {
        match std::env::var(name) {
            Ok(value) => (StatusCode::OK, value),
            Err(_) => (StatusCode::NOT_FOUND, format!("{name} is not set\n")),
        }
    } else if let Some(code) = path
        .strip_prefix("/exit/")
        .and_then(|c| c.parse::<i32>().ok())
    {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            std::process::exit(code);
        });
        (StatusCode::OK, format!("exiting with code {code}\n"))
    } else if let Some(ms) = path
        .strip_prefix("/sleep/")
        .and_then(|m| m.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        (StatusCode::OK, format!("slept {ms} ms\n"))
    } else if let Some(n) = path
        .strip_prefix("/print/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        for i in 1..=n {
            println!("line {i}");
        }
        (StatusCode::OK, format!("printed {n} lines\n"))
    } else {
        (StatusCode::NOT_FOUND, "not found\n".into())
    };
    Ok(reply(status, body))
}

/// How a request carries a CloudEvent.
enum CloudEvent {
    /// Binary mode: the line to print, from the `ce-` headers.
    Binary(String),
    /// Structured mode: the body holds the event.
    Structured,
}

/// Whether a `POST` carries a CloudEvent, and how.
fn cloud_event(headers: &hyper::HeaderMap, method: &Method) -> Option<CloudEvent> {
    if method != Method::POST {
        return None;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    if headers.contains_key("ce-type") {
        return Some(CloudEvent::Binary(format!(
            "cloudevent type={} source={} id={}",
            header("ce-type"),
            header("ce-source"),
            header("ce-id")
        )));
    }
    header("content-type")
        .to_ascii_lowercase()
        .starts_with("application/cloudevents+json")
        .then_some(CloudEvent::Structured)
}

/// The line printed for a structured event.
fn structured_line(body: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let field = |name: &str| value.get(name).and_then(|v| v.as_str()).unwrap_or("");
    format!(
        "cloudevent type={} source={} id={}",
        field("type"),
        field("source"),
        field("id")
    )
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

fn env_parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
}
