//! # knative-core
//!
//! The machinery every Knative kind shares, with no IO and no Kubernetes
//! client: the pieces `knative-serving`, `knative-eventing` and
//! `knative-build` are written against, and that the embedded platform and
//! the Kubernetes adapter both implement.
//!
//! | module | what it holds | upstream |
//! |---|---|---|
//! | [`condition`] | `Condition`, living (`Ready`) and batch (`Succeeded`) condition sets, the duck `Status` | `knative.dev/pkg/apis` |
//! | [`apis`] | path-aware `FieldError`, `Validate` / `SetDefaults`, name rules | `knative.dev/pkg/apis` |
//! | [`store`] | the `Objects<K>` trait and `InMemoryStore` with API-server semantics | the Kubernetes API, `kube::Api` |
//! | [`runtime`] | a controller loop over any `Objects<K>`: watch, work queue, reconcile, requeue | `knative.dev/pkg/controller`, `kube-runtime` |
//! | [`duration`] | Go (`1m30s`) and ISO-8601 (`PT1S`) durations | Go `time`, ISO 8601 |
//!
//! ```
//! use knative_core::apis::FieldError;
//! use knative_core::condition::ConditionSet;
//!
//! let set = ConditionSet::living(&["ResourcesAvailable", "ContainerHealthy"]);
//! let mut conditions = Vec::new();
//! let mut manager = set.manage(&mut conditions);
//! manager.mark_true("ResourcesAvailable");
//! manager.mark_true("ContainerHealthy");
//! assert!(manager.is_happy());
//!
//! let err = FieldError::missing_field("image").via_field_index("containers", 0);
//! assert_eq!(err.to_string(), "containers[0].image: missing field");
//! ```

pub mod apis;
pub mod condition;
pub mod duration;
pub mod runtime;
pub mod store;
