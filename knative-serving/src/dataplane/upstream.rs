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
use std::time::Duration;

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
            ForwardError::Failed(e) => {
                write!(f, "{e}")?;
                let mut source = std::error::Error::source(e);
                while let Some(s) = source {
                    write!(f, ": {s}")?;
                    source = s.source();
                }
                Ok(())
            }
        }
    }
}

type Pool = Mutex<HashMap<SocketAddr, Vec<SendRequest<Body>>>>;

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
        headers.remove(name);
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
    /// authority when missing) and hop-by-hop headers are dropped.
    pub async fn send(
        &self,
        address: SocketAddr,
        mut request: Request<Body>,
    ) -> Result<Response<Body>, ForwardError> {
        prepare(&mut request);
        let mut request = request;
        // A pooled connection may have been closed by the app; a fresh
        // connection is tried once after that.
        for fresh in [false, true] {
            let sender = if fresh {
                None
            } else {
                self.checkout(address).await
            };
            let reused = sender.is_some();
            let mut sender = match sender {
                Some(s) => s,
                None => match connect(address).await {
                    Ok(s) => s,
                    Err(error) => {
                        return Err(ForwardError::Unsent {
                            request: Box::new(request),
                            error,
                        });
                    }
                },
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let pool = Arc::clone(&self.idle);
                    return Ok(response.map(|body| {
                        super::boxed(PooledBody {
                            inner: body,
                            sender: Some(sender),
                            address,
                            pool,
                        })
                    }));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => {
                        debug!(%address, error = %e.error(), "pooled connection was closed; retrying on a new one");
                        request = unsent;
                    }
                    Some(unsent) => {
                        return Err(ForwardError::Unsent {
                            request: Box::new(unsent),
                            error: Box::new(e.into_error()),
                        });
                    }
                    None => return Err(ForwardError::Failed(e.into_error())),
                },
            }
        }
        unreachable_unsent()
    }

    /// Drops the idle connections to `address` (its replica went away).
    pub fn forget(&self, address: SocketAddr) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&address);
    }

    /// An idle connection to `address` that is ready for a request.
    async fn checkout(&self, address: SocketAddr) -> Option<SendRequest<Body>> {
        loop {
            let mut sender = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_mut(&address)?
                .pop()?;
            if sender.is_closed() {
                continue;
            }
            // A connection comes back when its last response ended; the
            // connection task may not have marked it idle yet.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }
}

/// The loop in [`Upstream::send`] returns on its second pass; this keeps
/// the compiler satisfied without a panic path.
fn unreachable_unsent() -> Result<Response<Body>, ForwardError> {
    Err(ForwardError::Unsent {
        request: Box::new(Request::new(super::empty())),
        error: "no connection could be used".into(),
    })
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
    fn release(&mut self) {
        if let Some(sender) = self.sender.take() {
            let mut idle = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
            let senders = idle.entry(self.address).or_default();
            if senders.len() < MAX_IDLE_PER_ADDRESS {
                senders.push(sender);
            }
        }
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
