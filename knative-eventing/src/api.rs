//! `eventing.knative.dev/v1` API types: [`Broker`] and [`Trigger`], and the
//! duck types they use ([`duck`]), with upstream field names, defaulting
//! and path-aware validation (`specs/EVENTING.md §1`, `§2`, `§5`).
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
mod trigger;

pub use broker::{Broker, BrokerSpec, BrokerStatus};
pub use duck::{
    Addressable, BackoffPolicy, DeliveryFormat, DeliverySpec, DeliveryStatus, Destination,
    KReference, RetryPolicy,
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
