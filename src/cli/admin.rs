//! The local admin API of `knative up`, and its client.
//!
//! `knative up` serves it on a free loopback port and writes
//! `{state}/admin.json` (`{"url": …, "token": …}`) with mode 0600; every
//! request must carry `Authorization: Bearer <token>` (else 401). The
//! other commands read that file to find the platform.
//!
//! | request | answer |
//! |---|---|
//! | `POST /v1/apply` (YAML body) | 200 `[{kind, namespace, name, action}]`, 422 with the problems |
//! | `GET /v1/objects/{kind}[?namespace=&name=]` | 200 an object or a list |
//! | `DELETE /v1/objects/{kind}/{namespace}/{name}` | 200 |
//! | `GET /v1/logs/{namespace}/{name}` | 200 `[{replica, stream, line}]` |
//! | `GET /v1/events` | 200 the latest events the brokers accepted |
//! | `GET /v1/info` | 200 `{ingress, broker_ingress, domain, state_dir}` |

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use knative::local::{Platform, PlatformError};
use serde_json::{Value, json};

/// What `admin.json` holds.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Endpoint {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The bearer token.
    pub token: String,
}

/// Where `admin.json` is.
pub fn endpoint_file(state: &Path) -> PathBuf {
    state.join("admin.json")
}

/// Writes `admin.json` readable by its owner only.
pub fn write_endpoint(state: &Path, endpoint: &Endpoint) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = endpoint_file(state);
    let _ = std::fs::remove_file(&path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(serde_json::to_string(endpoint)?.as_bytes())
}

/// A fresh random token.
pub fn token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Serves the admin API until `shutdown`.
pub async fn serve(
    platform: Platform,
    token: String,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let token = Arc::new(format!("Bearer {token}"));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let platform = platform.clone();
                let token = Arc::clone(&token);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let platform = platform.clone();
                        let token = Arc::clone(&token);
                        async move {
                            Ok::<_, std::convert::Infallible>(handle(&platform, &token, request).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

fn answer(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn failure(status: StatusCode, message: impl std::fmt::Display) -> Response<Full<Bytes>> {
    answer(status, json!({"error": message.to_string()}))
}

fn from_platform(e: PlatformError) -> Response<Full<Bytes>> {
    let status = match &e {
        PlatformError::Store(s) if s.is_not_found() => StatusCode::NOT_FOUND,
        PlatformError::UnknownKind(_) => StatusCode::NOT_FOUND,
        PlatformError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        PlatformError::Store(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    failure(status, e)
}

async fn handle(
    platform: &Platform,
    token: &str,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let authorized = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == token);
    if !authorized {
        return failure(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: use the one in admin.json",
        );
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query: Vec<(String, String)> = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (Method::GET, ["v1", "info"]) => answer(
            StatusCode::OK,
            json!({
                "ingress": platform.ingress().to_string(),
                "broker_ingress": platform.broker_ingress().to_string(),
                "domain": platform.domain(),
                "state_dir": platform.state_dir().display().to_string(),
                "kinds": platform.kinds(),
            }),
        ),
        (Method::POST, ["v1", "apply"]) => {
            let body = match Limited::new(request.into_body(), 16 << 20).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return failure(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
            };
            let Ok(yaml) = std::str::from_utf8(&body) else {
                return failure(StatusCode::BAD_REQUEST, "the manifest is not UTF-8");
            };
            match platform.apply(yaml).await {
                Ok(applied) => answer(
                    StatusCode::OK,
                    Value::Array(
                        applied
                            .iter()
                            .map(|a| {
                                json!({"kind": a.kind, "namespace": a.namespace, "name": a.name, "action": a.action})
                            })
                            .collect(),
                    ),
                ),
                Err(e) => from_platform(e),
            }
        }
        (Method::GET, ["v1", "objects", kind]) => {
            let namespace = param("namespace");
            match param("name") {
                Some(name) => match platform
                    .get(kind, namespace.as_deref().unwrap_or("default"), &name)
                    .await
                {
                    Ok(object) => answer(StatusCode::OK, object),
                    Err(e) => from_platform(e),
                },
                None => match platform.list(kind, namespace.as_deref()).await {
                    Ok(objects) => answer(StatusCode::OK, Value::Array(objects)),
                    Err(e) => from_platform(e),
                },
            }
        }
        (Method::DELETE, ["v1", "objects", kind, namespace, name]) => {
            match platform.delete(kind, namespace, name).await {
                Ok(()) => answer(StatusCode::OK, json!({"deleted": format!("{kind}/{name}")})),
                Err(e) => from_platform(e),
            }
        }
        (Method::GET, ["v1", "logs", namespace, name]) => match platform.logs(namespace, name).await {
            Ok(lines) => answer(
                StatusCode::OK,
                Value::Array(
                    lines
                        .iter()
                        .map(|l| {
                            json!({"replica": l.replica, "stream": format!("{:?}", l.stream).to_lowercase(), "line": l.line})
                        })
                        .collect(),
                ),
            ),
            Err(e) => from_platform(e),
        },
        (Method::GET, ["v1", "events"]) => answer(
            StatusCode::OK,
            serde_json::to_value(platform.events()).unwrap_or_default(),
        ),
        _ => failure(StatusCode::NOT_FOUND, format!("no such admin call: {path}")),
    }
}

/// A client of a running platform's admin API.
pub struct Client {
    endpoint: Endpoint,
    http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
}

impl Client {
    /// Reads `admin.json` in `state`.
    pub fn from_state(state: &Path) -> Result<Client, String> {
        let path = endpoint_file(state);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "no running platform found ({}: {e}); start one with `knative up`",
                path.display()
            )
        })?;
        let endpoint: Endpoint =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Client {
            endpoint,
            http: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http(),
        })
    }

    /// Calls the API; returns the JSON answer, or the error it names.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Value, String> {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.endpoint.url))
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.endpoint.token),
            )
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let response = self.http.request(request).await.map_err(|e| {
            format!(
                "cannot reach the platform at {} ({e}); is `knative up` running?",
                self.endpoint.url
            )
        })?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status.is_success() {
            Ok(value)
        } else {
            Err(value["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("the platform answered {status}")))
        }
    }
}
