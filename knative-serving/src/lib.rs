//! # knative-serving
//!
//! Knative Serving as a library: request-driven workloads that scale from
//! zero and split traffic between immutable revisions
//! (`specs/SERVING.md` is the behaviour it implements).
//!
//! | module | what it holds |
//! |---|---|
//! | [`autoscaling`] | the KPA: `config-autoscaler`, target resolution and the decider (§3) |
//! | [`api`] | `serving.knative.dev/v1` Service, Configuration, Revision, Route: types, defaults, validation (§1–§2) |
//! | [`dataplane`] | ingress, activator and queue-proxy on hyper: routing, buffering at zero, breakers, timeouts, metrics (§2, §4) |
//! | [`config`] | `config-defaults`, `config-network`, `config-domain` as typed configuration |
//! | [`backend`] | the `WorkloadBackend` trait and local processes as its embedded implementation |
//! | [`reconciler`] | Service, Configuration, Revision and Route reconcilers, and `Serving`, which runs them |
//! | [`traffic`] | traffic resolution, gradual rollout, and the routing table the data plane serves from |
//! | [`sample_app`] | the sample app the local platform runs as `knative.dev/sample-app` (HTTP and CloudEvents) |
//!

pub mod api;
pub mod autoscaling;
pub mod backend;
pub mod config;
pub mod dataplane;
pub mod reconciler;
pub mod sample_app;
pub mod traffic;
