//! `serving.knative.dev/v1` API types: [`Service`], [`Configuration`],
//! [`Revision`] and [`Route`], with upstream field names, defaulting and
//! path-aware validation as Knative's webhook does them
//! (`specs/SERVING.md §1–§2`).
//!
//! Every type implements [`SetDefaults`](knative_core::apis::SetDefaults)
//! and [`Validate`](knative_core::apis::Validate); both read the
//! [`ServingConfig`](crate::config::ServingConfig) from the
//! [`Context`](knative_core::apis::Context) when one was added, and use
//! upstream's defaults otherwise.
//!
//! ```
//! use knative_core::apis::{Context, SetDefaults, Validate};
//! use knative_serving::api::Service;
//!
//! let yaml = r#"
//! apiVersion: serving.knative.dev/v1
//! kind: Service
//! metadata: {name: hello, namespace: default}
//! spec:
//!   template:
//!     spec:
//!       containers:
//!         - image: ghcr.io/knative/helloworld-go:latest
//!           env: [{name: TARGET, value: World}]
//! "#;
//! let mut svc: Service = serde_yaml::from_str(yaml).unwrap();
//! let ctx = Context::create();
//! svc.set_defaults(&ctx);
//! assert!(svc.validate(&ctx).is_empty());
//! assert_eq!(svc.spec.template.spec.timeout_seconds, Some(300));
//! assert_eq!(svc.spec.traffic[0].percent, Some(100));
//! ```

mod configuration;
mod revision;
mod route;
mod service;
mod traffic;

pub use configuration::{Configuration, ConfigurationSpec, ConfigurationStatus};
pub use revision::{
    ContainerStatus, DEFAULT_CONTAINER_PORT, DEFAULT_USER_CONTAINER_NAME, Revision, RevisionSpec,
    RevisionStatus, RevisionTemplateSpec,
};
pub use route::{Addressable, Route, RouteSpec, RouteStatus};
pub use service::{Service, ServiceSpec, ServiceStatus};
pub use traffic::TrafficTarget;

/// The API group of every type here.
pub const GROUP: &str = "serving.knative.dev";
/// `apiVersion` of every type here.
pub const API_VERSION: &str = "serving.knative.dev/v1";

/// Label and annotation keys Knative Serving reads and writes.
pub mod keys {
    /// Label on Configurations, Routes and Revisions: the owning Service.
    pub const SERVICE: &str = "serving.knative.dev/service";
    /// Label on Revisions: the owning Service's uid.
    pub const SERVICE_UID: &str = "serving.knative.dev/serviceUID";
    /// Label on Revisions: the owning Configuration.
    pub const CONFIGURATION: &str = "serving.knative.dev/configuration";
    /// Label on Revisions: the Configuration's uid.
    pub const CONFIGURATION_UID: &str = "serving.knative.dev/configurationUID";
    /// Label on Revisions: the Configuration generation that created it.
    pub const CONFIGURATION_GENERATION: &str = "serving.knative.dev/configurationGeneration";
    /// Label on Revisions and workloads: the revision's name.
    pub const REVISION: &str = "serving.knative.dev/revision";
    /// Label on workloads: the revision's uid.
    pub const REVISION_UID: &str = "serving.knative.dev/revisionUID";
    /// Label on Revisions: `pending`, `active` or `reserve`.
    pub const ROUTING_STATE: &str = "serving.knative.dev/routingState";
    /// Annotation on Revisions: when the routing state last changed (RFC 3339).
    pub const ROUTING_STATE_MODIFIED: &str = "serving.knative.dev/routingStateModified";
    /// Annotation on Revisions: the Routes that send traffic to it (comma list).
    pub const ROUTES: &str = "serving.knative.dev/routes";
    /// Label on Configurations: the Route that follows its latest revision.
    pub const ROUTE: &str = "serving.knative.dev/route";
    /// Annotation on Revisions: when a Route last pointed at it (the
    /// labeler of older releases).
    pub const LAST_PINNED: &str = "serving.knative.dev/lastPinned";
    /// Annotation on Revisions: never garbage-collect it.
    pub const NO_GC: &str = "serving.knative.dev/no-gc";
    /// Annotation: who created the object.
    pub const CREATOR: &str = "serving.knative.dev/creator";
    /// Annotation: who last changed the object's spec.
    pub const LAST_MODIFIER: &str = "serving.knative.dev/lastModifier";
    /// Annotation: how long a revision may take to become ready (a duration).
    pub const PROGRESS_DEADLINE: &str = "serving.knative.dev/progress-deadline";
    /// Annotation: gradual rollout duration, whole seconds or a duration.
    pub const ROLLOUT_DURATION: &str = "serving.knative.dev/rollout-duration";
    /// Label: `cluster-local` keeps a Route off the public domain.
    pub const VISIBILITY: &str = "networking.knative.dev/visibility";
    /// The value of [`VISIBILITY`] for cluster-local routes.
    pub const VISIBILITY_CLUSTER_LOCAL: &str = "cluster-local";
    /// Annotation prefix of autoscaling settings.
    pub const AUTOSCALING_PREFIX: &str = "autoscaling.knative.dev/";
    /// Annotation: the lowest replica count.
    pub const MIN_SCALE: &str = "autoscaling.knative.dev/min-scale";
    /// Annotation: the highest replica count (0 = unlimited).
    pub const MAX_SCALE: &str = "autoscaling.knative.dev/max-scale";
    /// Annotation: the replica count a new revision starts with.
    pub const INITIAL_SCALE: &str = "autoscaling.knative.dev/initial-scale";
    /// Annotation: the per-replica target of the scaling metric.
    pub const TARGET: &str = "autoscaling.knative.dev/target";
    /// kubectl's record of the last applied manifest; never copied to children.
    pub const KUBECTL_LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
}

macro_rules! impl_is_ready {
    ($($kind:ty),*) => {$(
        impl $kind {
            /// Whether a client may treat it as ready: its controller observed
            /// the current generation and its `Ready` condition is `True`.
            pub fn is_ready(&self) -> bool {
                self.status.as_ref().is_some_and(|s| {
                    s.status.is_ready(self.metadata.generation, knative_core::condition::READY)
                })
            }
        }
    )*};
}

impl_is_ready!(Service, Configuration, Revision, Route);

macro_rules! impl_address_url {
    ($($kind:ty),*) => {$(
        impl $kind {
            /// Where to send requests (and events) to it, as the Addressable
            /// duck type reads it: its cluster-local `status.address.url`,
            /// else its `status.url`; `None` before it has either.
            pub fn address_url(&self) -> Option<String> {
                let status = self.status.as_ref()?;
                status
                    .address
                    .as_ref()
                    .and_then(|a| a.url.clone())
                    .or_else(|| status.url.clone())
                    .filter(|u| !u.is_empty())
            }
        }
    )*};
}

impl_address_url!(Service, Route);

/// The value of a Revision's `serving.knative.dev/routingState` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RoutingState {
    /// Just created, not yet seen by a Route.
    Pending,
    /// Some Route sends it traffic (or names it with a tag).
    Active,
    /// No Route references it.
    Reserve,
}

impl RoutingState {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingState::Pending => "pending",
            RoutingState::Active => "active",
            RoutingState::Reserve => "reserve",
        }
    }

    /// Parses a label value.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "pending" => Some(RoutingState::Pending),
            "active" => Some(RoutingState::Active),
            "reserve" => Some(RoutingState::Reserve),
            _ => None,
        }
    }
}
