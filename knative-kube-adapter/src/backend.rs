//! Kubernetes backends: the traits the domain crates define, implemented
//! with Kubernetes objects (`specs/BUILD.md §1.10` and §3, `specs/CRDS.md`,
//! `specs/SERVING.md §1–§2`).
//!
//! | backend | implements | Kubernetes objects |
//! |---|---|---|
//! | [`KubeWorkloadBackend`] | [`WorkloadBackend`](knative_serving::backend::WorkloadBackend) | a Deployment `<rev>-deployment` and Services `<rev>` and `<rev>-private` per revision |
//! | [`RouteServices`] | (called for each Route) | an ExternalName Service `<route>` and `<tag>-<route>` per traffic tag, pointing at the operator's ingress |
//! | [`PodStepExecutor`] | [`StepExecutor`](knative_build::executor::StepExecutor) | a Pod `<taskrun>-pod` per TaskRun attempt |
//!
//! Each module starts with pure functions computing the desired objects
//! (`desired_deployment`, `desired_service`, `desired_private_service`,
//! `desired_route_services`, `desired_pod`) and status from observed ones;
//! the types around them do the API calls with kube's `Api`. Tests check
//! both: the pure functions with tables, the API calls (method, path, query
//! and JSON body) against the mock API server in `fixtures`.

pub mod pod_executor;
pub mod route_services;
pub mod workload;

#[cfg(test)]
mod fixtures;

pub use pod_executor::{PodExecutorConfig, PodStepExecutor};
pub use route_services::{RouteServices, RouteServicesConfig};
pub use workload::{KubeWorkloadBackend, KubeWorkloadConfig, QueueProxySidecar};
