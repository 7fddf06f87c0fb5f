//! A mock Kubernetes API server for the backends' tests: the tower-test
//! pattern of kube-rs's controller-rs (`specs/BUILD.md §3`, "Testing
//! without a cluster").
//!
//! A test makes a [`kube::Client`] with [`ApiServer::new`], starts the call
//! under test on a task, and answers each request the call makes with
//! [`ApiServer::expect`], which checks the method, the path and the query
//! parameters and hands the request's JSON body back for assertions. A
//! request the test does not expect fails the test at the next `expect`;
//! one it expects but the code never sends fails with a timeout.

use std::collections::BTreeSet;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock;

/// How long a test waits for a request it expects.
const WAIT: Duration = Duration::from_secs(5);

/// A request not answered yet.
pub(crate) struct Pending {
    /// Its query parameters.
    pub(crate) query: BTreeSet<(String, String)>,
    /// Its body, parsed as JSON (`Null` when empty or not JSON).
    pub(crate) body: Value,
    send: mock::SendResponse<Response<Body>>,
}

impl Pending {
    /// Whether the query has `key=value`.
    pub(crate) fn has(&self, key: &str, value: &str) -> bool {
        self.query.contains(&(key.to_owned(), value.to_owned()))
    }

    /// Answers with `status` and `response` (a JSON string is sent as
    /// plain text, anything else as JSON).
    pub(crate) fn respond(self, status: u16, response: Value) {
        let status = StatusCode::from_u16(status).expect("a valid status code");
        let text = match response {
            Value::String(text) => text,
            other => other.to_string(),
        };
        self.send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(text.into_bytes()))
                .expect("a valid response"),
        );
    }
}

/// The server side of a mocked [`Client`].
pub(crate) struct ApiServer {
    handle: mock::Handle<Request<Body>, Response<Body>>,
}

/// One request as the server saw it.
#[derive(Debug)]
pub(crate) struct Seen {
    /// The request body, parsed as JSON (`Null` when empty or not JSON).
    pub(crate) body: Value,
}

impl ApiServer {
    /// A client talking to a new mock server, in namespace `default`.
    pub(crate) fn new() -> (Client, ApiServer) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(service, "default"), ApiServer { handle })
    }

    /// Waits for the next request, checks its method and path, and hands
    /// it back unanswered (answer with [`Pending::respond`], or keep it to
    /// leave the caller waiting, as a watch does).
    pub(crate) async fn next(&mut self, method: Method, path: &str) -> Pending {
        let next = tokio::time::timeout(WAIT, self.handle.next_request()).await;
        let Ok(Some((request, send))) = next else {
            panic!("expected {method} {path}, but no request came");
        };
        assert_eq!(request.method(), method, "method of {}", request.uri());
        assert_eq!(request.uri().path(), path, "path of {}", request.uri());
        let query = form_pairs(request.uri().query().unwrap_or_default());
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .expect("the request body can be read");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Pending { query, body, send }
    }

    /// Waits for the next request, checks its method, path and query
    /// parameters (`key=value` pairs, order and empty pairs ignored), and
    /// answers with `status` and the JSON `response` (a JSON string is sent
    /// as plain text).
    pub(crate) async fn expect(
        &mut self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        status: u16,
        response: Value,
    ) -> Seen {
        let pending = self.next(method, path).await;
        let want_query: BTreeSet<(String, String)> = query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(pending.query, want_query, "query of {path}");
        let body = pending.body.clone();
        pending.respond(status, response);
        Seen { body }
    }

    /// Checks that no further request comes within a short while.
    pub(crate) async fn expect_no_request(&mut self) {
        let next = tokio::time::timeout(Duration::from_millis(100), self.handle.next_request());
        if let Ok(Some((request, _))) = next.await {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}

fn form_pairs(query: &str) -> BTreeSet<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Decodes `application/x-www-form-urlencoded` text (enough for tests).
fn decode(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                if let Ok(b) = u8::from_str_radix(hex, 16) {
                    out.push(b);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A `Status` answer, as the API server sends for errors.
pub(crate) fn status(code: u16, reason: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": if code < 400 { "Success" } else { "Failure" },
        "message": reason,
        "reason": reason,
        "code": code,
    })
}

/// `404 NotFound`.
pub(crate) fn not_found() -> Value {
    status(404, "NotFound")
}
