//! # knative-kube-adapter
//!
//! Everything the other knative-rs crates define, reconciled on a real
//! Kubernetes cluster with kube-rs (`specs/BUILD.md §3` and `specs/CRDS.md`):
//!
//! - [`crds`]: CRDs for every API type, generated from the types, with
//!   upstream short names, categories and printer columns, structural
//!   schemas, and a checker of the apiserver's structural-schema rules.
//! - [`objects`]: `KubeObjects<K>`, `knative_core::store::Objects<K>` over
//!   `kube::Api<K>`, with API errors mapped to the in-memory store's.
//! - [`backend`]: revisions as Deployments and Services, routes as
//!   Services, TaskRuns as Pods.
//! - [`leader`]: leader election on a `coordination.k8s.io/v1` Lease.
//! - [`manifests`]: the operator's RBAC and deployment manifests.
//! - `telemetry` (feature `operator`): health probes and reconcile metrics.
//! - The `knative-operator` binary (feature `operator`) composes them; its
//!   docs list what is wired and what is not yet.
//!
//! The main types are also at the crate root: [`KubeObjects`], the
//! backends [`KubeWorkloadBackend`] (Serving's `WorkloadBackend`),
//! [`RouteServices`] and [`PodStepExecutor`] (Build's `StepExecutor`),
//! Eventing's [`KubeBindingTarget`] and [`KubeContainerRunner`], and
//! [`LeaderElector`].
//!
//! ```no_run
//! use knative_kube_adapter::{KubeObjects, KubeWorkloadBackend, KubeWorkloadConfig};
//! use knative_serving::api::Service;
//!
//! # async fn example() -> Result<(), kube::Error> {
//! let client = kube::Client::try_default().await?;
//! // Knative Services in `default`, as the reconcilers' `Objects<Service>`.
//! let services = KubeObjects::<Service>::new(client.clone()).in_namespace("default");
//! // Revisions as Deployments and Services.
//! let workloads = KubeWorkloadBackend::new(client, KubeWorkloadConfig::default());
//! # let _ = (services, workloads);
//! # Ok(())
//! # }
//! ```

pub mod apiserver_source;
pub mod backend;
pub mod crds;
pub mod eventing;
pub mod leader;
pub mod manifests;
pub mod objects;
#[cfg(test)]
mod reconcile_tests;
#[cfg(feature = "operator")]
pub mod telemetry;
#[cfg(test)]
mod test_util;

pub use backend::{
    KubeWorkloadBackend, KubeWorkloadConfig, PodExecutorConfig, PodStepExecutor, QueueProxySidecar,
    RouteServices, RouteServicesConfig,
};
pub use eventing::{KubeBindingTarget, KubeContainerRunner};
pub use leader::{LeaderElector, LeaseConfig};
pub use objects::{KubeObjects, KubeScope};
