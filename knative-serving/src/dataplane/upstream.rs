//! [`Upstream`]: pooled HTTP/1 connections to the app (or to a remote
//! queue-proxy), with requests handed back when they were never sent.
//!
//! hyper-util's pooled client consumes the request even when its
//! connection fails before a byte is written; the data plane needs it back
//! to try another replica (a replica that is being stopped refuses
//! connections), so this pool sits on hyper's connection API and uses
//! `try_send_request`, which returns unsent requests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body as _, Frame, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{self, HeaderMap, HeaderName};
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use super::{Body, BoxError};

/// Idle connections kept per address.
const MAX_IDLE_PER_ADDRESS: usize = 512;
/// Idle connections older than this are not reused (apps close idle
/// keep-alive connections after a few seconds: Node.js after 5 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a returned connection may take to become ready again.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a request could not be forwarded.
#[derive(Debug)]
pub enum ForwardError {
    /// Nothing was sent (the connection could not be made or was already
    /// closed): the request comes back and may be sent elsewhere.
    Unsent {
        /// The request, unchanged apart from its URI and hop-by-hop headers.
        request: Box<Request<Body>>,
        /// What went wrong.
        error: BoxError,
    },
    /// The request was (at least partly) sent and then failed.
    Failed(hyper::Error),
}

impl std::fmt::Display for ForwardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForwardError::Unsent { error, .. } => write!(f, "could not connect: {error}"),
            ForwardError::Failed(e) => f.write_str(&super::error_chain(e)),
        }
    }
}

type Pool = Mutex<HashMap<SocketAddr, Vec<(SendRequest<Body>, Instant)>>>;

/// A pool of HTTP/1 connections, per upstream address. Cheap to clone.
#[derive(Clone, Default)]
pub struct Upstream {
    idle: Arc<Pool>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").finish_non_exhaustive()
    }
}

/// Headers that belong to one connection, not to the message.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those `Connection` names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        strip_connection_tokens(headers);
    }
    for name in HOP_BY_HOP.iter().skip(1) {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

fn strip_connection_tokens(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in &named {
        // A client cannot make the proxy drop what frames or routes the message.
        if name != header::HOST && name != header::CONTENT_LENGTH {
            headers.remove(name);
        }
    }
    headers.remove(header::CONNECTION);
}

impl Upstream {
    /// An empty pool.
    pub fn new() -> Self {
        Upstream::default()
    }

    /// Sends `request` to `address` and returns the response headers; the
    /// body streams from the app. The request's URI becomes origin-form
    /// (path and query), its `Host` header is kept (set from the URI's
    /// authority when missing) and hop-by-hop headers are dropped, on the
    /// request and on the response.
    ///
    /// A pooled connection is used when one is idle and ready. When the
    /// app had closed it (an idle keep-alive timeout, or a graceful
    /// shutdown) the request is sent again on a new connection if it was
    /// not sent at all, or if it has no body and a safe method (the
    /// connection was closed before any response, so nothing was done).
    pub async fn send(
        &self,
        address: SocketAddr,
        mut request: Request<Body>,
    ) -> Result<Response<Body>, ForwardError> {
        prepare(&mut request);
        if let Some(sender) = self.checkout(address) {
            let replay = replayable(&request);
            match self.try_send(sender, address, request).await {
                Ok(response) => return Ok(response),
                Err(Attempt::Unsent(unsent, error)) => {
                    debug!(%address, %error, "pooled connection was closed; retrying on a new one");
                    request = *unsent;
                }
                Err(Attempt::Failed(error)) => match replay {
                    Some(parts) if closed_before_response(&error) => {
                        debug!(%address, %error, "pooled connection closed under the request; replaying it on a new one");
                        request = parts.rebuild();
                    }
                    _ => return Err(ForwardError::Failed(error)),
                },
            }
        }
        let sender = match connect(address).await {
            Ok(sender) => sender,
            Err(error) => {
                return Err(ForwardError::Unsent {
                    request: Box::new(request),
                    error,
                });
            }
        };
        match self.try_send(sender, address, request).await {
            Ok(response) => Ok(response),
            Err(Attempt::Unsent(request, error)) => Err(ForwardError::Unsent { request, error }),
            Err(Attempt::Failed(error)) => Err(ForwardError::Failed(error)),
        }
    }

    async fn try_send(
        &self,
        mut sender: SendRequest<Body>,
        address: SocketAddr,
        request: Request<Body>,
    ) -> Result<Response<Body>, Attempt> {
        match sender.try_send_request(request).await {
            Ok(mut response) => {
                strip_hop_by_hop(response.headers_mut());
                let pool = Arc::clone(&self.idle);
                Ok(response.map(|body| {
                    super::boxed(PooledBody {
                        inner: body,
                        sender: Some(sender),
                        address,
                        pool,
                    })
                }))
            }
            Err(mut e) => match e.take_message() {
                Some(unsent) => Err(Attempt::Unsent(Box::new(unsent), Box::new(e.into_error()))),
                None => Err(Attempt::Failed(e.into_error())),
            },
        }
    }

    /// Drops the idle connections to `address` (its replica went away).
    pub fn forget(&self, address: SocketAddr) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&address);
    }

    /// An idle connection to `address` that is ready for a request; stale
    /// and busy ones are dropped.
    fn checkout(&self, address: SocketAddr) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let senders = idle.get_mut(&address)?;
        while let Some((sender, since)) = senders.pop() {
            if sender.is_ready() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }
}

/// One attempt's failure.
enum Attempt {
    Unsent(Box<Request<Body>>, BoxError),
    Failed(hyper::Error),
}

/// What is needed to send a request again: only for bodiless requests
/// with a safe method.
struct Replay {
    method: hyper::Method,
    uri: Uri,
    version: hyper::Version,
    headers: HeaderMap,
}

impl Replay {
    fn rebuild(self) -> Request<Body> {
        let mut request = Request::new(super::empty());
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        request
    }
}

fn replayable(request: &Request<Body>) -> Option<Replay> {
    let safe = matches!(
        *request.method(),
        hyper::Method::GET | hyper::Method::HEAD | hyper::Method::OPTIONS | hyper::Method::TRACE
    );
    (safe && request.body().is_end_stream()).then(|| Replay {
        method: request.method().clone(),
        uri: request.uri().clone(),
        version: request.version(),
        headers: request.headers().clone(),
    })
}

/// Whether the connection closed (or was reset) before any response.
fn closed_before_response(error: &hyper::Error) -> bool {
    if error.is_incomplete_message() || error.is_closed() || error.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        source = s.source();
    }
    false
}

fn prepare(request: &mut Request<Body>) {
    if !request.headers().contains_key(header::HOST)
        && let Some(authority) = request.uri().authority()
        && let Ok(value) = header::HeaderValue::from_str(authority.as_str())
    {
        request.headers_mut().insert(header::HOST, value);
    }
    if request.uri().scheme().is_some() || request.uri().authority().is_some() {
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        parts.scheme = None;
        parts.authority = None;
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(hyper::http::uri::PathAndQuery::from_static("/"));
        }
        *request.uri_mut() = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
    }
    strip_hop_by_hop(request.headers_mut());
}

async fn connect(address: SocketAddr) -> Result<SendRequest<Body>, BoxError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| format!("connecting to {address} timed out"))??;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(%address, %error, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// A response body that returns its connection to the pool once it ended.
struct PooledBody {
    inner: Incoming,
    sender: Option<SendRequest<Body>>,
    address: SocketAddr,
    pool: Arc<Pool>,
}

impl PooledBody {
    /// Returns the connection to the pool once it is ready for another
    /// request (the request body may still be on its way).
    fn release(&mut self) {
        let Some(mut sender) = self.sender.take() else {
            return;
        };
        if sender.is_closed() {
            return;
        }
        if sender.is_ready() {
            push(&self.pool, self.address, sender);
            return;
        }
        let (pool, address) = (Arc::clone(&self.pool), self.address);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Ok(Ok(())) = tokio::time::timeout(READY_TIMEOUT, sender.ready()).await {
                    push(&pool, address, sender);
                }
            });
        }
    }
}

fn push(pool: &Pool, address: SocketAddr, sender: SendRequest<Body>) {
    let mut idle = pool.lock().unwrap_or_else(PoisonError::into_inner);
    let senders = idle.entry(address).or_default();
    if senders.len() < MAX_IDLE_PER_ADDRESS {
        senders.push((sender, Instant::now()));
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // hyper does not poll a body that is empty from the start.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.sender = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
