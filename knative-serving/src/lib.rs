//! # knative-serving
//!
//! Knative Serving as a library: request-driven workloads that scale from
//! zero and split traffic between immutable revisions.
//!
//! This crate is being built; today it holds only this description of what
//! it will contain (`specs/SERVING.md` is the behaviour it implements):
//!
//! - `api`: `serving.knative.dev/v1` Service, Configuration, Revision and
//!   Route with upstream field names, defaulting and path-aware validation
//!   (§1–§2).
//! - `reconciler`: one reconciler per kind over `knative_core::store::Objects`,
//!   with pure `desired_*` functions (§1–§2).
//! - `autoscaling`: the KPA decider and PodAutoscaler state machines, a
//!   pluggable `ScalingPolicy`, proptest strategies and a load simulator (§3).
//! - `dataplane`: ingress, activator and queue-proxy on hyper (§4).
//! - `backend`: the `WorkloadBackend` trait any runtime implements, and local
//!   processes as its embedded implementation.
