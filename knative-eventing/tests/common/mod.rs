//! Test helpers shared by the eventing end-to-end tests: a subscriber
//! server with a scripted behaviour, events, and waiting.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use knative_eventing::binding;
use serde_json::json;

/// How long `eventually` waits.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A status a behaviour returns to answer 200 with a body that is not an event.
pub const GARBAGE: u16 = 299;

/// What a test subscriber does with request number n (from 0).
pub type Behaviour = Arc<dyn Fn(usize, &Event) -> (u16, Option<Event>) + Send + Sync>;

/// A subscriber that records the events it gets.
pub struct Subscriber {
    pub url: String,
    pub received: Arc<Mutex<Vec<Event>>>,
    pub headers: Arc<Mutex<Vec<hyper::HeaderMap>>>,
    pub calls: Arc<AtomicUsize>,
}

impl Subscriber {
    pub async fn start(behaviour: Behaviour) -> Subscriber {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let address = listener.local_addr().expect("address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let headers = Arc::new(Mutex::new(Vec::new()));
        let calls = Arc::new(AtomicUsize::new(0));
        let (r, c, hs) = (
            Arc::clone(&received),
            Arc::clone(&calls),
            Arc::clone(&headers),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (r, c, behaviour) = (Arc::clone(&r), Arc::clone(&c), Arc::clone(&behaviour));
                let hs = Arc::clone(&hs);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: Request<hyper::body::Incoming>| {
                            let (r, c, behaviour) =
                                (Arc::clone(&r), Arc::clone(&c), Arc::clone(&behaviour));
                            let hs = Arc::clone(&hs);
                            async move {
                                let (parts, body) = request.into_parts();
                                hs.lock().expect("lock").push(parts.headers.clone());
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let n = c.fetch_add(1, Ordering::SeqCst);
                                let response = match binding::read_request(
                                    &parts.headers,
                                    &body,
                                    &binding::Limits::default(),
                                ) {
                                    Ok((_, events)) => {
                                        let event = events.into_iter().next().expect("one event");
                                        let (status, reply) = behaviour(n, &event);
                                        r.lock().expect("lock").push(event);
                                        let mut response = match reply {
                                            Some(reply) => {
                                                let (headers, body) =
                                                    binding::write_binary(&reply).expect("encodes");
                                                let mut response = Response::new(Full::new(body));
                                                *response.headers_mut() = headers;
                                                response
                                            }
                                            // Failures explain themselves; a
                                            // success without a reply has no body.
                                            None if status >= 300 => Response::new(Full::new(
                                                Bytes::from_static(b"subscriber says no"),
                                            )),
                                            None if status == GARBAGE => Response::new(Full::new(
                                                Bytes::from_static(b"this is not an event"),
                                            )),
                                            None => Response::new(Full::new(Bytes::new())),
                                        };
                                        *response.status_mut() =
                                            StatusCode::from_u16(if status == GARBAGE {
                                                200
                                            } else {
                                                status
                                            })
                                            .expect("status");
                                        response
                                    }
                                    Err(e) => {
                                        let mut response =
                                            Response::new(Full::new(Bytes::from(e.to_string())));
                                        *response.status_mut() = StatusCode::BAD_REQUEST;
                                        response
                                    }
                                };
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
        Subscriber {
            url: format!("http://{address}/"),
            received,
            headers,
            calls,
        }
    }

    pub fn accepting() -> Behaviour {
        Arc::new(|_, _| (202, None))
    }

    pub fn events(&self) -> Vec<Event> {
        self.received.lock().expect("lock").clone()
    }

    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.events().iter().map(|e| e.id().to_owned()).collect();
        ids.sort();
        ids
    }
}

pub fn event(id: &str, ty: &str, source: &str) -> Event {
    EventBuilderV10::new()
        .id(id)
        .ty(ty)
        .source(source)
        .data("application/json", json!({"n": id}))
        .build()
        .expect("event")
}

pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
