//! `knative-sample-app`: a tiny HTTP server to try Knative Serving backends
//! with (the local-process backend runs it as a revision's container).
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
//!   the most ever in flight at once (probes and `/stats` not counted).
//!
//! `STARTUP_DELAY_MS` delays binding the port (to see readiness probes at
//! work). On start it prints `listening on <address> (pid <pid>)` to stdout.
//! SIGTERM shuts it down gracefully: it stops accepting, lets requests in
//! flight finish and exits with code 0.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    knative_serving::sample_app::run().await
}
