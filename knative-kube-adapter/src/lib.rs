//! # knative-kube-adapter
//!
//! Everything the other knative-rs crates define, reconciled on a real
//! Kubernetes cluster with kube-rs.
//!
//! This crate is being built; today it holds only this description of what
//! it will contain (`specs/BUILD.md §3` and `specs/CRDS.md`):
//!
//! - CRDs for every API type, generated from the types, with upstream short
//!   names and printer columns.
//! - `KubeObjects<K>`: `knative_core::store::Objects<K>` over `kube::Api<K>`.
//! - Kubernetes backends: revisions as Deployments and Services, routes as
//!   Services, TaskRuns as Pods, ApiServerSource watchers.
//! - The `knative-operator` binary: leader election, CRD installation, and
//!   the ingress and activator data plane.
