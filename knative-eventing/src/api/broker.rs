//! `Broker`: an event mesh endpoint; events posted to it are delivered to
//! every matching [`Trigger`](super::Trigger)'s subscriber
//! (`specs/EVENTING.md §1.1`).

use knative_core::apis::{Context, FieldError, SetDefaults, Validate};
use knative_core::condition::Status;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duck::{Addressable, DeliverySpec, DeliveryStatus, KReference};
use super::keys;

/// A Broker's spec.
#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "eventing.knative.dev",
    version = "v1",
    kind = "Broker",
    namespaced,
    status = "BrokerStatus",
    category = "all",
    category = "knative",
    category = "eventing",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.address.url"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Class","type":"string","jsonPath":".metadata.annotations.eventing\\.knative\\.dev/broker\\.class"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BrokerSpec {
    /// Class-specific configuration (e.g. a ConfigMap naming the channel
    /// type). Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<KReference>,
    /// Delivery options for every trigger that has none of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

/// What the Broker's controller observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerStatus {
    /// Conditions: `Ready` over `IngressReady`, `TriggerChannelReady`,
    /// `FilterReady`, `Addressable`, `DeadLetterSinkResolved`,
    /// `EventPoliciesReady`.
    #[serde(flatten)]
    pub status: Status,
    /// Where to post events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Addressable>,
    /// Every address (e.g. http and https).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Addressable>,
    /// The resolved dead-letter sink.
    #[serde(flatten)]
    pub delivery: DeliveryStatus,
}

impl Broker {
    /// The broker's class annotation (the default class when unset).
    pub fn class(&self) -> &str {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(keys::BROKER_CLASS))
            .map_or(keys::DEFAULT_BROKER_CLASS, String::as_str)
    }
}

impl SetDefaults for Broker {
    /// Sets the class annotation to the default class when missing.
    fn set_defaults(&mut self, _ctx: &Context<'_>) {
        let annotations = self
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        annotations
            .entry(keys::BROKER_CLASS.to_owned())
            .or_insert_with(|| keys::DEFAULT_BROKER_CLASS.to_owned());
    }
}

impl Validate for Broker {
    fn validate(&self, ctx: &Context<'_>) -> FieldError {
        let mut errs = FieldError::none();
        if let Some(config) = &self.spec.config {
            errs.push(config.validate().via_field("config").via_field("spec"));
        }
        if let Some(delivery) = &self.spec.delivery {
            errs.push(delivery.validate().via_field("delivery").via_field("spec"));
        }
        if let Some(original) = ctx.original::<Broker>() {
            if original.class() != self.class() {
                errs.push(
                    FieldError::new(
                        "Immutable fields changed (-old +new)",
                        format!("metadata.annotations[{}]", keys::BROKER_CLASS).as_str(),
                    )
                    .with_details(format!(
                        "-{:?} +{:?}",
                        original.class(),
                        self.class()
                    )),
                );
            }
            if original.spec.config != self.spec.config {
                errs.push(
                    FieldError::new("Immutable fields changed (-old +new)", "spec.config")
                        .with_details(
                            "the broker's config cannot change: delete and recreate the broker",
                        ),
                );
            }
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(yaml: &str) -> Broker {
        serde_yaml::from_str(yaml).expect("parses")
    }

    #[test]
    fn the_class_defaults_and_is_immutable() {
        let mut b = broker("metadata: {name: default, namespace: ns}\nspec: {}\n");
        b.set_defaults(&Context::create());
        assert_eq!(b.class(), "MTChannelBasedBroker");
        let mut changed = b.clone();
        changed
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(keys::BROKER_CLASS.into(), "Kafka".into());
        let errs = changed.validate(&Context::update(&b)).to_string();
        assert!(errs.contains("broker.class"), "{errs}");
    }

    #[test]
    fn delivery_errors_name_the_field() {
        let b = broker(
            "metadata: {name: default, namespace: ns}\nspec:\n  delivery:\n    retry: -2\n    deadLetterSink: {uri: /relative}\n",
        );
        let errs = b.validate(&Context::create()).to_string();
        assert!(errs.contains("spec.delivery.retry"), "{errs}");
        assert!(errs.contains("spec.delivery.deadLetterSink.uri"), "{errs}");
    }
}
