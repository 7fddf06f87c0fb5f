//! Test fixtures: a mock Kubernetes API server on tower-test
//! (`specs/BUILD.md §3`, controller-rs' `fixtures.rs`): a [`kube::Client`]
//! whose requests a test script takes one by one, checks (method, path,
//! query, body) and answers.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

pub(crate) type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A client whose requests the returned [`ApiServer`] answers.
pub(crate) fn mock() -> (Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServer(handle))
}

/// The test's side of the mock: expects one request at a time.
pub(crate) struct ApiServer(pub(crate) Handle);

/// One expected request.
pub(crate) struct Expect<'a> {
    method: Method,
    path: &'a str,
    query: &'a [(&'a str, &'a str)],
    body: Option<Value>,
    content_type: Option<&'a str>,
}

impl<'a> Expect<'a> {
    pub(crate) fn new(method: Method, path: &'a str) -> Self {
        Expect {
            method,
            path,
            query: &[],
            body: None,
            content_type: None,
        }
    }

    pub(crate) fn query(mut self, query: &'a [(&'a str, &'a str)]) -> Self {
        self.query = query;
        self
    }

    pub(crate) fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    pub(crate) fn content_type(mut self, content_type: &'a str) -> Self {
        self.content_type = Some(content_type);
        self
    }
}

/// The decoded `key=value` pairs of a query string.
pub(crate) fn query_pairs(query: &str) -> BTreeSet<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ascii");
                out.push(u8::from_str_radix(hex, 16).expect("a %-escape"));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("utf-8")
}

impl ApiServer {
    /// Takes the next request, checks it against `expect` and answers
    /// `status` with `response`.
    pub(crate) async fn handle(&mut self, expect: Expect<'_>, status: u16, response: Value) {
        let (request, send) = self
            .0
            .next_request()
            .await
            .expect("the client sends a request");
        assert_eq!(request.method(), expect.method, "{}", request.uri());
        assert_eq!(request.uri().path(), expect.path);
        let got = query_pairs(request.uri().query().unwrap_or(""));
        let want: BTreeSet<(String, String)> = expect
            .query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(got, want, "query of {}", request.uri());
        if let Some(content_type) = expect.content_type {
            assert_eq!(
                request
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok()),
                Some(content_type)
            );
        }
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .expect("the request body");
        match expect.body {
            Some(want) => {
                let got: Value = serde_json::from_slice(&bytes).expect("a JSON body");
                assert_eq!(got, want);
            }
            None => assert!(bytes.is_empty(), "unexpected body {bytes:?}"),
        }
        self.respond(send, status, serde_json::to_vec(&response).expect("JSON"));
    }

    pub(crate) fn respond(
        &self,
        send: tower_test::mock::SendResponse<Response<Body>>,
        status: u16,
        body: Vec<u8>,
    ) {
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(body))
                .expect("a response"),
        );
    }

    /// Takes the next request, checks its method and path, and returns its
    /// JSON body (`null` when empty) with the means to answer it.
    pub(crate) async fn take(
        &mut self,
        method: Method,
        path: &str,
    ) -> (Value, tower_test::mock::SendResponse<Response<Body>>) {
        let (request, send) = self
            .0
            .next_request()
            .await
            .expect("the client sends a request");
        assert_eq!(request.method(), method, "{}", request.uri());
        assert_eq!(request.uri().path(), path);
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .expect("the request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON body")
        };
        (body, send)
    }

    /// Answers a request taken with [`take`](Self::take).
    pub(crate) fn answer(
        &self,
        send: tower_test::mock::SendResponse<Response<Body>>,
        status: u16,
        body: &Value,
    ) {
        self.respond(send, status, serde_json::to_vec(body).expect("JSON"));
    }

    /// Asserts the client sent nothing more.
    pub(crate) async fn expect_no_request(&mut self) {
        let next = tokio::time::timeout(Duration::from_millis(50), self.0.next_request()).await;
        assert!(next.is_err(), "unexpected request");
    }
}

/// Runs the client call and the API server's script together, failing if
/// either takes more than a second (a missing request).
pub(crate) async fn scenario<T>(
    server: impl Future<Output = ()>,
    call: impl Future<Output = T>,
) -> T {
    scenario_within(Duration::from_secs(1), server, call).await
}

/// [`scenario`] with another time limit (tests on paused time wait for
/// timers that the limit must outlast).
pub(crate) async fn scenario_within<T>(
    limit: Duration,
    server: impl Future<Output = ()>,
    call: impl Future<Output = T>,
) -> T {
    let (_, result) = tokio::time::timeout(limit, futures::future::join(server, call))
        .await
        .expect("the scenario finishes within a second");
    result
}

/// The body a real kube-apiserver sends for a failed request.
pub(crate) fn api_status(code: u16, reason: &str, message: &str, details: Value) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    })
}
