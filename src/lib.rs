//! # knative
//!
//! Knative's primitives — Serving, Eventing and Build — as an embeddable
//! Rust SDK. This facade re-exports the workspace's crates behind cargo
//! features, so one dependency gives a platform team the parts it needs:
//!
//! | path | crate | feature | what it is |
//! |---|---|---|---|
//! | [`knative::core`](crate::core) | `knative-core` | always | conditions, field errors, the object store, the controller runtime |
//! | `knative::serving` | `knative-serving` | `serving` (default) | revisions, routes, the KPA autoscaler, activator, queue-proxy |
//! | `knative::eventing` | `knative-eventing` | `eventing` (default) | CloudEvents, brokers, triggers, filters, channels, sources |
//! | `knative::build` | `knative-build` | `build` (default) | Tekton tasks and pipelines, step executors, OCI images |
//! | `knative::kube` | `knative-kube-adapter` | `kube` | the Kubernetes adapter and reference operator |
//!
//! The default features also build the `knative` command-line binary
//! (feature `cli`), which selects the newest Kubernetes API version of
//! `k8s-openapi`. A library that picks its own version depends on this crate
//! with `default-features = false` and the features it needs.
//!
//! ```
//! use knative::core::condition::ConditionSet;
//!
//! let revision = ConditionSet::living(&["ResourcesAvailable", "ContainerHealthy"]);
//! assert_eq!(revision.happy(), "Ready");
//! ```

pub use knative_core as core;

#[cfg(feature = "build")]
pub use knative_build as build;
#[cfg(feature = "eventing")]
pub use knative_eventing as eventing;
#[cfg(feature = "kube")]
pub use knative_kube_adapter as kube;
#[cfg(feature = "serving")]
pub use knative_serving as serving;

#[cfg(all(feature = "serving", feature = "eventing", feature = "build"))]
pub mod local;

/// This release of knative-rs.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The optional parts compiled into this build, by cargo feature name.
pub fn enabled_features() -> Vec<&'static str> {
    let mut features = Vec::new();
    if cfg!(feature = "serving") {
        features.push("serving");
    }
    if cfg!(feature = "eventing") {
        features.push("eventing");
    }
    if cfg!(feature = "build") {
        features.push("build");
    }
    if cfg!(feature = "kube") {
        features.push("kube");
    }
    features
}
