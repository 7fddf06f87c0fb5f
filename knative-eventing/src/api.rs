//! Knative Eventing's API types, with upstream field names, defaulting and
//! path-aware validation:
//!
//! | group | kinds | module | spec |
//! |---|---|---|---|
//! | `eventing.knative.dev/v1` | [`Broker`], [`Trigger`] | here | `specs/EVENTING.md §1`, `§2` |
//! | `messaging.knative.dev/v1` | [`Channel`], [`InMemoryChannel`], [`Subscription`] | [`messaging`] | `§4` |
//! | `flows.knative.dev/v1` | [`Sequence`], [`Parallel`] | [`flows`] | `§4` |
//! | `sources.knative.dev/v1` | [`PingSource`], [`ApiServerSource`], [`ContainerSource`], [`SinkBinding`] | [`sources`] | `§6` |
//!
//! The duck types they share ([`Destination`], [`KReference`],
//! [`DeliverySpec`], [`Addressable`]) are in [`duck`] (`§5`, `§6`). Every
//! kind implements [`SetDefaults`](knative_core::apis::SetDefaults) and
//! [`Validate`](knative_core::apis::Validate); call them in that order, with
//! [`Context::update`](knative_core::apis::Context::update) on updates so
//! immutable fields are checked. CRD names, short names, categories and
//! printer columns follow `specs/CRDS.md`.
//!
//! ```
//! use knative_core::apis::{Context, SetDefaults, Validate};
//! use knative_eventing::api::Trigger;
//!
//! let yaml = r#"
//! apiVersion: eventing.knative.dev/v1
//! kind: Trigger
//! metadata: {name: orders, namespace: shop}
//! spec:
//!   broker: default
//!   filters:
//!     - cesql: "type LIKE 'com.example.order.%' AND priority > 5"
//!   subscriber:
//!     ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: fulfilment}
//! "#;
//! let mut trigger: Trigger = serde_yaml::from_str(yaml).unwrap();
//! let ctx = Context::create();
//! trigger.set_defaults(&ctx);
//! assert!(trigger.validate(&ctx).is_empty());
//! ```

mod broker;
pub mod duck;
pub mod flows;
pub mod messaging;
pub mod sources;
mod trigger;

pub use broker::{Broker, BrokerSpec, BrokerStatus};
pub use duck::{
    Addressable, BackoffPolicy, DeliveryFormat, DeliverySpec, DeliveryStatus, Destination,
    KReference, RetryPolicy,
};
pub use flows::{
    Parallel, ParallelBranch, ParallelBranchStatus, ParallelChannelStatus, ParallelSpec,
    ParallelStatus, ParallelSubscriptionStatus, Sequence, SequenceChannelStatus, SequenceSpec,
    SequenceStatus, SequenceStep, SequenceSubscriptionStatus,
};
pub use messaging::{
    Channel, ChannelDefaults, ChannelSpec, ChannelStatus, ChannelTemplateSpec, ChannelableSpec,
    ChannelableStatus, InMemoryChannel, InMemoryChannelSpec, PhysicalSubscription, SubscriberSpec,
    SubscriberStatus, Subscription, SubscriptionSpec, SubscriptionStatus,
};
pub use sources::{
    ApiServerSource, ApiServerSourceSpec, ApiServerSourceStatus, ApiVersionKind,
    ApiVersionKindSelector, BindingSubject, CeOverrides, CloudEventAttributes, ContainerSource,
    ContainerSourceSpec, EventMode, PingSource, PingSourceSpec, SinkBinding, SinkBindingSpec,
    SourceSpec, SourceStatus,
};
pub use trigger::{
    SubscriptionsApiFilter, Trigger, TriggerFilter, TriggerSpec, TriggerStatus,
    is_valid_attribute_name,
};

/// The API group of Broker and Trigger.
pub const GROUP: &str = "eventing.knative.dev";
/// `apiVersion` of Broker and Trigger.
pub const API_VERSION: &str = "eventing.knative.dev/v1";

/// Label, annotation and extension names Knative Eventing uses.
pub mod keys {
    /// Annotation choosing a Broker's implementation.
    pub const BROKER_CLASS: &str = "eventing.knative.dev/broker.class";
    /// The class used when a Broker has none.
    pub const DEFAULT_BROKER_CLASS: &str = "MTChannelBasedBroker";
    /// Label on Triggers: their broker's name.
    pub const BROKER_LABEL: &str = "eventing.knative.dev/broker";
    /// Annotation gating a Trigger's `DependencyReady` on a source.
    pub const DEPENDENCY: &str = "knative.dev/dependency";
}
