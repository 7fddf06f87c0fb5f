//! [`Server`]: serves HTTP/1 connections for the ingress and the
//! queue-proxy, with limits that keep one bad client from hurting others:
//!
//! - request heads larger than [`ServerLimits::max_header_bytes`] get
//!   `431 Request Header Fields Too Large` (hyper's parser);
//! - a client that starts a request and does not finish its head within
//!   [`ServerLimits::header_read_timeout`] (slow-loris) gets
//!   `408 Request Timeout` and the connection is closed;
//! - a declared `Content-Length` above [`ServerLimits::max_body_bytes`] gets
//!   `413 Content Too Large` before anything is forwarded; a streamed body
//!   that grows past it, or that stalls for longer than
//!   [`ServerLimits::body_read_timeout`] between chunks, fails the
//!   forwarding and is answered 413 or 408 (see [`forward_error_response`]);
//! - idle keep-alive connections are closed after
//!   [`ServerLimits::keep_alive_timeout`].
//!
//! Each connection runs on its own task, so a slow client only ever holds
//! its own connection. On shutdown the listener closes, connections finish
//! the request they are serving (bounded by
//! [`ServerLimits::drain_timeout`]) and close.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tracing::{debug, warn};

use super::{Body, BoxError, text_response};

/// Limits on what clients may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// The largest request head (request line and headers), in bytes; at
    /// least 8 KiB. Default 64 KiB.
    pub max_header_bytes: usize,
    /// The largest request body, in bytes (`None` = unlimited). Default 64 MiB.
    pub max_body_bytes: Option<u64>,
    /// How long a client may take to send a request head once it started
    /// sending it. Default 10 s.
    pub header_read_timeout: Duration,
    /// The longest pause between two chunks of a request body. Default 30 s.
    pub body_read_timeout: Duration,
    /// How long an idle keep-alive connection stays open. Default 60 s.
    pub keep_alive_timeout: Duration,
    /// How long requests in flight may take to finish at shutdown. Default 30 s.
    pub drain_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_header_bytes: 64 * 1024,
            max_body_bytes: Some(64 * 1024 * 1024),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// The client side of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The client's address.
    pub remote: SocketAddr,
}

/// Serves connections with [`ServerLimits`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Server {
    limits: ServerLimits,
}

/// Why a request body was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The body grew past the limit.
    #[error("request body too large: the limit is {0} bytes")]
    TooLarge(u64),
    /// The client paused for too long.
    #[error("request body timeout: the client sent nothing for {0:?}")]
    Timeout(Duration),
}

/// The answer to a request whose forwarding failed after it was (partly)
/// sent: 413 or 408 when the client's body broke a [`ServerLimits`] limit,
/// 502 naming `who` and the cause otherwise.
pub fn forward_error_response(error: &hyper::Error, who: &str) -> Response<Body> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(body) = e.downcast_ref::<BodyError>() {
            let status = match body {
                BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                BodyError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            };
            return text_response(status, body);
        }
        source = e.source();
    }
    text_response(
        StatusCode::BAD_GATEWAY,
        format_args!("{who}: the app failed: {}", super::error_chain(error)),
    )
}

// The connection's state, shared between the service and the IO wrapper:
// `(request sequence << 2) | phase`. Only requests change it; the IO
// wrapper keeps its own view of the head being read.
const IDLE: u64 = 0;
const READING_HEAD: u64 = 1;
const IN_REQUEST: u64 = 2;
const DONE: u64 = 3;
const PHASE: u64 = 3;

const TIMEOUT_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 56\r\nconnection: close\r\n\r\nrequest timeout: the request head was not sent in time\r\n";

impl Server {
    /// A server with `limits`.
    pub fn new(limits: ServerLimits) -> Self {
        Server { limits }
    }

    /// Its limits.
    pub fn limits(&self) -> &ServerLimits {
        &self.limits
    }

    /// Accepts connections on `listener` and answers their requests with
    /// `handler` until `shutdown` completes; then lets requests in flight
    /// finish (up to the drain timeout) and returns.
    pub async fn serve<H, F>(
        self,
        listener: TcpListener,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()>
    where
        H: Fn(Request<Body>, Peer) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let limits = self.limits;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut connections = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (stream, remote) = match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            // Out of file descriptors and the like: back off briefly.
                            warn!(%error, "accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let handler = handler.clone();
                    let stop = stop_rx.clone();
                    connections.spawn(serve_connection(stream, Peer { remote }, limits, handler, stop));
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(limits.drain_timeout, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                remaining = connections.len(),
                "connections still busy after the drain timeout; closing them"
            );
            connections.shutdown().await;
        }
        Ok(())
    }
}

async fn serve_connection<H, F>(
    stream: TcpStream,
    peer: Peer,
    limits: ServerLimits,
    handler: H,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    H: Fn(Request<Body>, Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let _ = stream.set_nodelay(true);
    let state = Arc::new(AtomicU64::new(IDLE));
    let sequence = Arc::new(AtomicU64::new(0));
    let io = GuardedIo {
        inner: stream,
        state: Arc::clone(&state),
        limits,
        deadline: Box::pin(tokio::time::sleep(limits.keep_alive_timeout)),
        phase: IDLE,
        timed_out: false,
    };
    let service = service_fn(move |request: Request<Incoming>| {
        let seq = sequence.fetch_add(1, Ordering::Relaxed) + 1;
        state.store((seq << 2) | IN_REQUEST, Ordering::Release);
        // Done when both the request body and the response are dropped.
        let done = Arc::new(RequestDone {
            state: Arc::clone(&state),
            seq,
        });
        let body_done = Arc::clone(&done);
        let handler = handler.clone();
        async move {
            let response = match limit_body(request, &limits, body_done) {
                Ok(request) => handler(request, peer).await,
                Err(response) => response,
            };
            Ok::<_, std::convert::Infallible>(
                response
                    .map(|body| super::boxed(super::queue_proxy::Holding { body, _held: done })),
            )
        }
    });
    let connection = http1::Builder::new()
        .max_buf_size(limits.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let mut stopping = *stop.borrow();
    if stopping {
        connection.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    debug!(remote = %peer.remote, %error, "connection ended with an error");
                }
                return;
            }
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_ok() {
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Marks request `seq` done when its request body and response are both
/// gone (a later request's state is left alone).
struct RequestDone {
    state: Arc<AtomicU64>,
    seq: u64,
}

impl Drop for RequestDone {
    fn drop(&mut self) {
        let _ = self.state.compare_exchange(
            (self.seq << 2) | IN_REQUEST,
            (self.seq << 2) | DONE,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}

/// Applies the body limits to a request.
#[allow(clippy::result_large_err)]
fn limit_body(
    request: Request<Incoming>,
    limits: &ServerLimits,
    done: Arc<RequestDone>,
) -> Result<Request<Body>, Response<Body>> {
    if let Some(limit) = limits.max_body_bytes {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(length) = declared
            && length > limit
        {
            return Err(text_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                format_args!(
                    "request body too large: {length} bytes declared, the limit is {limit} bytes"
                ),
            ));
        }
    }
    Ok(request.map(|body| {
        super::boxed(LimitedBody {
            inner: body,
            limit: limits.max_body_bytes,
            read: 0,
            timeout: limits.body_read_timeout,
            idle: None,
            _done: done,
        })
    }))
}

/// A request body with a size limit and a limit on pauses.
struct LimitedBody {
    inner: Incoming,
    limit: Option<u64>,
    read: u64,
    timeout: Duration,
    idle: Option<Pin<Box<Sleep>>>,
    _done: Arc<RequestDone>,
}

impl hyper::body::Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.read += data.len() as u64;
                    if let Some(limit) = this.limit
                        && this.read > limit
                    {
                        return Poll::Ready(Some(Err(BodyError::TooLarge(limit).into())));
                    }
                }
                this.idle = None;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let timeout = this.timeout;
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if idle.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(BodyError::Timeout(timeout).into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The client connection, with the head-read and keep-alive deadlines.
struct GuardedIo {
    inner: TcpStream,
    state: Arc<AtomicU64>,
    limits: ServerLimits,
    deadline: Pin<Box<Sleep>>,
    /// The phase the deadline was set for.
    phase: u64,
    timed_out: bool,
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.timed_out {
            return Poll::Ready(Ok(()));
        }
        let word = this.state.load(Ordering::Acquire);
        if word & PHASE == IN_REQUEST {
            this.phase = IN_REQUEST;
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if word & PHASE == DONE {
            // A request finished since the last look: idle from now on,
            // whatever this wrapper saw of its head.
            let _ = this.state.compare_exchange(
                word,
                word & !PHASE,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            this.phase = IN_REQUEST;
        }
        if this.phase == IN_REQUEST {
            this.phase = IDLE;
            let at = Instant::now() + this.limits.keep_alive_timeout;
            this.deadline.as_mut().reset(at);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && this.phase == IDLE {
                    this.phase = READING_HEAD;
                    let at = Instant::now() + this.limits.header_read_timeout;
                    this.deadline.as_mut().reset(at);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    this.timed_out = true;
                    if this.phase == READING_HEAD {
                        // Best effort: the socket buffer takes a short response.
                        let _ = this.inner.try_write(TIMEOUT_408);
                        debug!("request head not sent in time: 408");
                    }
                    // End of input: hyper closes the connection.
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
