//! Request timeouts, the same in the queue-proxy and the activator
//! (`specs/SERVING.md §4`, "Timeouts"):
//!
//! - `timeoutSeconds` is the hard deadline of the whole request: 504
//!   `request timeout` when no response has started by then, otherwise the
//!   response is cut (the body ends with an error, so the client sees a
//!   truncated response, never a complete-looking one);
//! - `responseStartTimeoutSeconds` bounds the time to the response's
//!   headers (504 when exceeded);
//! - `idleTimeoutSeconds` bounds the gap between two body writes, reset on
//!   every write (the response is cut when exceeded).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as _, Frame};
use hyper::{Response, StatusCode};
use tokio::time::{Instant, Sleep};

use super::{Body, BoxError, Timeouts, text_response};

/// Why a response was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimeoutError {
    /// `timeoutSeconds` passed while the body was being written.
    #[error("request timeout: the response did not finish within {0:?}")]
    Total(Duration),
    /// `idleTimeoutSeconds` passed without a write.
    #[error("idle timeout: nothing was written for {0:?}")]
    Idle(Duration),
}

/// Runs `respond` (which produces the response headers) under
/// `timeouts`, counted from `started`.
///
/// When the response does not start in time the future is dropped (which
/// cancels whatever it was waiting for) and a 504 is returned; otherwise
/// the response's body is wrapped to enforce the total and idle limits.
pub async fn with_timeouts<F>(timeouts: Timeouts, started: Instant, respond: F) -> Response<Body>
where
    F: Future<Output = Response<Body>>,
{
    let far = |d: Duration| {
        started
            .checked_add(d.min(super::MAX_TIMEOUT))
            .unwrap_or(started)
    };
    let deadline = far(timeouts.total);
    let start_deadline = timeouts
        .response_start
        .map_or(deadline, |d| far(d).min(deadline));
    match tokio::time::timeout_at(start_deadline, respond).await {
        Ok(response) if response.body().is_end_stream() => response,
        Ok(response) => response.map(|body| {
            super::boxed(TimeoutBody {
                inner: body,
                total: timeouts.total,
                deadline,
                timer: None,
                idle: timeouts.idle,
                last_write: Instant::now(),
            })
        }),
        Err(_) if start_deadline < deadline => text_response(
            StatusCode::GATEWAY_TIMEOUT,
            format_args!(
                "request timeout: the response did not start within {:?} (responseStartTimeoutSeconds)",
                start_deadline - started
            ),
        ),
        Err(_) => text_response(
            StatusCode::GATEWAY_TIMEOUT,
            format_args!(
                "request timeout: no response within {:?} (timeoutSeconds)",
                timeouts.total
            ),
        ),
    }
}

/// A response body cut at the deadline or after an idle gap. The timer is
/// only armed when the body has to wait (most bodies never do).
struct TimeoutBody {
    inner: Body,
    total: Duration,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    idle: Option<Duration>,
    last_write: Instant,
}

impl TimeoutBody {
    /// When the body must have made progress: the deadline, or sooner the
    /// end of the idle gap.
    fn next_limit(&self) -> Instant {
        match self.idle {
            Some(idle) => (self.last_write + idle).min(self.deadline),
            None => self.deadline,
        }
    }
}

impl hyper::body::Body for TimeoutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if this.idle.is_some() {
                    this.last_write = Instant::now();
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let limit = this.next_limit();
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(limit)));
                if timer.deadline() != limit {
                    timer.as_mut().reset(limit);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    let error = if limit >= this.deadline {
                        TimeoutError::Total(this.total)
                    } else {
                        TimeoutError::Idle(this.idle.unwrap_or_default())
                    };
                    return Poll::Ready(Some(Err(error.into())));
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

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use http_body_util::{BodyExt, BodyStream, StreamBody};

    use super::*;

    fn timeouts(total: u64, start: Option<u64>, idle: Option<u64>) -> Timeouts {
        Timeouts {
            total: Duration::from_secs(total),
            response_start: start.map(Duration::from_secs),
            idle: idle.map(Duration::from_secs),
        }
    }

    /// A body that sends `chunks` with `gap` between them.
    fn slow_body(chunks: usize, gap: Duration) -> Body {
        let stream = futures::stream::unfold(0, move |i| async move {
            if i == chunks {
                return None;
            }
            tokio::time::sleep(gap).await;
            Some((Ok::<_, BoxError>(Frame::data(Bytes::from("x"))), i + 1))
        });
        super::super::boxed(StreamBody::new(stream))
    }

    async fn collect(body: Body) -> (usize, Option<String>) {
        let mut stream = BodyStream::new(body);
        let mut n = 0;
        while let Some(frame) = stream.next().await {
            match frame {
                Ok(f) => n += f.into_data().map_or(0, |d| d.len()),
                Err(e) => return (n, Some(e.to_string())),
            }
        }
        (n, None)
    }

    #[tokio::test(start_paused = true)]
    async fn no_response_by_the_deadline_is_a_504() {
        let response = with_timeouts(timeouts(10, None, None), Instant::now(), async {
            tokio::time::sleep(Duration::from_secs(11)).await;
            text_response(StatusCode::OK, "late")
        })
        .await;
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("timeoutSeconds"));
    }

    #[tokio::test(start_paused = true)]
    async fn response_start_timeout_is_a_504_before_the_total_deadline() {
        let started = Instant::now();
        let response = with_timeouts(timeouts(10, Some(2), None), started, async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            text_response(StatusCode::OK, "late")
        })
        .await;
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_response_is_cut_at_the_total_deadline() {
        let t = Timeouts {
            total: Duration::from_millis(4500),
            response_start: None,
            idle: None,
        };
        let response = with_timeouts(t, Instant::now(), async {
            Response::new(slow_body(10, Duration::from_secs(1)))
        })
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        let (bytes, error) = collect(response.into_body()).await;
        assert_eq!(bytes, 4, "chunks written before the deadline");
        assert!(error.expect("cut").starts_with("request timeout"));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_is_reset_by_every_write() {
        // Writes every 2 s with a 3 s idle limit: completes.
        let response = with_timeouts(timeouts(60, None, Some(3)), Instant::now(), async {
            Response::new(slow_body(5, Duration::from_secs(2)))
        })
        .await;
        assert_eq!(collect(response.into_body()).await, (5, None));
        // A 4 s gap: cut.
        let response = with_timeouts(timeouts(60, None, Some(3)), Instant::now(), async {
            Response::new(slow_body(5, Duration::from_secs(4)))
        })
        .await;
        let (bytes, error) = collect(response.into_body()).await;
        assert_eq!(bytes, 0);
        assert!(error.expect("cut").starts_with("idle timeout"));
    }
}
