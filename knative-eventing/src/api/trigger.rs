//! `Trigger`: subscribes a destination to the events of a
//! [`Broker`](super::Broker) that pass its filters
//! (`specs/EVENTING.md §1.2`, filters `§2`).

use std::collections::BTreeMap;

use knative_core::apis::{Context, FieldError, SetDefaults, Validate};
use knative_core::condition::Status;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duck::{DeliverySpec, DeliveryStatus, Destination, KReference};
use super::keys;

/// A Trigger's spec.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "eventing.knative.dev",
    version = "v1",
    kind = "Trigger",
    namespaced,
    status = "TriggerStatus",
    category = "all",
    category = "knative",
    category = "eventing",
    printcolumn = r#"{"name":"Broker","type":"string","jsonPath":".spec.broker"}"#,
    printcolumn = r#"{"name":"Subscriber_URI","type":"string","jsonPath":".status.subscriberUri"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TriggerSpec {
    /// The broker's name, in the trigger's namespace. Immutable.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub broker: String,
    /// A reference to the broker (cross-namespace event links).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_ref: Option<KReference>,
    /// The legacy attribute filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<TriggerFilter>,
    /// Subscriptions API filters, ANDed; when non-empty they replace `filter`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<SubscriptionsApiFilter>,
    /// Where matching events go.
    #[serde(default)]
    pub subscriber: Destination,
    /// Delivery options (replace the broker's when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

/// The legacy filter: every attribute must equal its value (`""`: must be
/// present and non-empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TriggerFilter {
    /// Attribute name → required value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<BTreeMap<String, String>>,
}

/// One Subscriptions API filter: exactly one dialect is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SubscriptionsApiFilter {
    /// Attributes equal to these values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<BTreeMap<String, String>>,
    /// Attributes starting with these values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<BTreeMap<String, String>>,
    /// Attributes ending with these values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<BTreeMap<String, String>>,
    /// Every nested filter passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "nested_filters_schema")]
    pub all: Option<Vec<SubscriptionsApiFilter>>,
    /// Some nested filter passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "nested_filters_schema")]
    pub any: Option<Vec<SubscriptionsApiFilter>>,
    /// The nested filter does not pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "nested_filter_schema")]
    pub not: Option<Box<SubscriptionsApiFilter>>,
    /// A CESQL v1 expression that must be true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cesql: Option<String>,
}

/// Nested filters in the CRD schema: objects kept as written (a CRD
/// schema cannot refer to itself), as upstream's CRD does.
fn nested_filters_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

fn nested_filter_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

/// What the Trigger's controller observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerStatus {
    /// Conditions: `Ready` over `BrokerReady`, `SubscriptionReady`,
    /// `DependencyReady`, `SubscriberResolved`, `DeadLetterSinkResolved`.
    #[serde(flatten)]
    pub status: Status,
    /// The subscriber's resolved URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriber_uri: Option<String>,
    /// The subscriber's CA certificates.
    #[serde(
        default,
        rename = "subscriberCACerts",
        skip_serializing_if = "Option::is_none"
    )]
    pub subscriber_ca_certs: Option<String>,
    /// The subscriber's OIDC audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriber_audience: Option<String>,
    /// The resolved dead-letter sink.
    #[serde(flatten)]
    pub delivery: DeliveryStatus,
}

impl TriggerSpec {
    /// The filters in force: `filters` when non-empty, else the legacy
    /// attribute map (`specs/EVENTING.md §2.2`: `filters` wins).
    pub fn uses_new_filters(&self) -> bool {
        !self.filters.is_empty()
    }
}

impl SetDefaults for Trigger {
    /// An empty filter when none is set, the subscriber's namespace, and
    /// the `eventing.knative.dev/broker` label.
    fn set_defaults(&mut self, _ctx: &Context<'_>) {
        if self.spec.filter.is_none() {
            self.spec.filter = Some(TriggerFilter::default());
        }
        if let Some(reference) = &mut self.spec.subscriber.reference
            && reference.namespace.as_deref().unwrap_or("").is_empty()
        {
            reference.namespace = self.metadata.namespace.clone();
        }
        if !self.spec.broker.is_empty() {
            self.metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert(keys::BROKER_LABEL.to_owned(), self.spec.broker.clone());
        }
    }
}

/// Whether `name` is a valid attribute name in a filter (`^[a-z][a-z0-9]*$`).
pub fn is_valid_attribute_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

fn validate_attribute_map(map: &BTreeMap<String, String>, allow_empty_values: bool) -> FieldError {
    let mut errs = FieldError::none();
    for (key, value) in map {
        if !is_valid_attribute_name(key) {
            errs.push(FieldError::invalid_key_name(key, "").with_details(
                "attribute names are lower-case letters and digits, starting with a letter",
            ));
        } else if value.is_empty() && !allow_empty_values {
            errs.push(
                FieldError::invalid_value("\"\"", "")
                    .via_key(key)
                    .with_details("must not be empty"),
            );
        }
    }
    errs
}

impl SubscriptionsApiFilter {
    /// The dialects this filter sets, in upstream's order (`exact`,
    /// `prefix`, `suffix`, `all`, `any`, `not`, `cesql`). As upstream, an
    /// empty map, an empty list or an empty expression sets nothing.
    pub fn dialects_set(&self) -> Vec<&'static str> {
        let non_empty_map =
            |m: &Option<BTreeMap<String, String>>| m.as_ref().is_some_and(|m| !m.is_empty());
        let non_empty_list =
            |l: &Option<Vec<SubscriptionsApiFilter>>| l.as_ref().is_some_and(|l| !l.is_empty());
        [
            ("exact", non_empty_map(&self.exact)),
            ("prefix", non_empty_map(&self.prefix)),
            ("suffix", non_empty_map(&self.suffix)),
            ("all", non_empty_list(&self.all)),
            ("any", non_empty_list(&self.any)),
            ("not", self.not.is_some()),
            ("cesql", self.cesql.as_ref().is_some_and(|c| !c.is_empty())),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect()
    }

    /// Checks one filter: exactly one dialect, valid attribute maps, and
    /// CESQL that parses. Paths are relative to the filter.
    pub fn validate(&self) -> FieldError {
        let set = self.dialects_set();
        if set.len() > 1 {
            return FieldError::multiple_one_of(set.as_slice())
                .with_details("multiple dialects found, a filter can have only one dialect set");
        }
        let mut errs = FieldError::none();
        for (name, map) in [
            ("exact", &self.exact),
            ("prefix", &self.prefix),
            ("suffix", &self.suffix),
        ] {
            // As upstream's webhook: an empty map is no dialect at all, and
            // a dialect object holds one attribute.
            if let Some(map) = map.as_ref().filter(|m| m.len() > 1) {
                errs.push(
                    FieldError::new("Multiple items found, can have only one key-value", name)
                        .with_details(format!(
                            "found {}: {}",
                            map.len(),
                            map.keys().cloned().collect::<Vec<_>>().join(", ")
                        )),
                );
            }
            if let Some(map) = map {
                errs.push(validate_attribute_map(map, false).via_field(name));
            }
        }
        for (name, list) in [("all", &self.all), ("any", &self.any)] {
            for (i, f) in list.iter().flatten().enumerate() {
                errs.push(f.validate().via_field_index(name, i));
            }
        }
        if let Some(not) = &self.not {
            errs.push(not.validate().via_field("not"));
        }
        if let Some(expression) = self.cesql.as_ref().filter(|c| !c.is_empty())
            && let Err(e) = crate::cesql::Expression::parse(expression)
        {
            errs.push(
                FieldError::invalid_value(expression, "cesql")
                    .with_details(format!("the CESQL expression does not parse: {e}")),
            );
        }
        errs
    }
}

impl Validate for Trigger {
    fn validate(&self, ctx: &Context<'_>) -> FieldError {
        let mut errs = FieldError::none();
        let spec = &self.spec;
        match (spec.broker.is_empty(), &spec.broker_ref) {
            (true, None) => errs.push(FieldError::missing_field("spec.broker")),
            (false, Some(_)) => errs.push(FieldError::multiple_one_of(
                ["spec.broker", "spec.brokerRef"].as_slice(),
            )),
            (true, Some(r)) => {
                errs.push(r.validate().via_field("brokerRef").via_field("spec"));
                if r.namespace.as_deref().is_some_and(|ns| {
                    Some(ns) != self.metadata.namespace.as_deref() && !ns.is_empty()
                }) {
                    errs.push(
                        FieldError::disallowed_fields("spec.brokerRef.namespace").with_details(
                            "cross-namespace event links (feature cross-namespace-event-links) are not enabled",
                        ),
                    );
                }
            }
            (false, None) => {}
        }
        if let Some(attributes) = spec.filter.as_ref().and_then(|f| f.attributes.as_ref()) {
            errs.push(
                validate_attribute_map(attributes, true)
                    .via_field("attributes")
                    .via_field("filter")
                    .via_field("spec"),
            );
        }
        for (i, f) in spec.filters.iter().enumerate() {
            errs.push(f.validate().via_field_index("filters", i).via_field("spec"));
        }
        errs.push(
            spec.subscriber
                .validate()
                .via_field("subscriber")
                .via_field("spec"),
        );
        if let Some(delivery) = &spec.delivery {
            errs.push(delivery.validate().via_field("delivery").via_field("spec"));
        }
        if let Some(original) = ctx.original::<Trigger>()
            && original.spec.broker != spec.broker
        {
            errs.push(
                FieldError::new("Immutable fields changed (-old +new)", "spec.broker")
                    .with_details(format!("-{:?} +{:?}", original.spec.broker, spec.broker)),
            );
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger(spec: &str) -> Trigger {
        let yaml = format!("metadata: {{name: t, namespace: ns}}\nspec:\n{spec}");
        let mut t: Trigger = serde_yaml::from_str(&yaml).expect("parses");
        t.set_defaults(&Context::create());
        t
    }

    fn errors(spec: &str) -> String {
        trigger(spec).validate(&Context::create()).to_string()
    }

    const SUBSCRIBER: &str = "  subscriber: {uri: http://sink.ns.svc}\n";

    #[test]
    fn a_valid_trigger_gets_its_defaults() {
        let t = trigger(
            "  broker: default\n  subscriber:\n    ref: {apiVersion: v1, kind: Service, name: sink}\n",
        );
        assert!(t.validate(&Context::create()).is_empty());
        assert_eq!(t.spec.filter, Some(TriggerFilter::default()));
        assert_eq!(
            t.spec
                .subscriber
                .reference
                .as_ref()
                .and_then(|r| r.namespace.as_deref()),
            Some("ns")
        );
        assert_eq!(
            t.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(keys::BROKER_LABEL))
                .map(String::as_str),
            Some("default")
        );
    }

    #[test]
    fn broker_and_broker_ref_are_exclusive_and_one_is_required() {
        assert!(errors(SUBSCRIBER).contains("spec.broker: missing field"));
        let both = errors(&format!(
            "  broker: default\n  brokerRef: {{kind: Broker, apiVersion: eventing.knative.dev/v1, name: b}}\n{SUBSCRIBER}"
        ));
        assert!(both.contains("expected exactly one, got both"), "{both}");
        let other_ns = errors(&format!(
            "  brokerRef: {{kind: Broker, apiVersion: eventing.knative.dev/v1, name: b, namespace: other}}\n{SUBSCRIBER}"
        ));
        assert!(other_ns.contains("spec.brokerRef.namespace"), "{other_ns}");
    }

    #[test]
    fn filters_name_the_broken_dialect() {
        let two = errors(&format!(
            "  broker: b\n{SUBSCRIBER}  filters:\n    - exact: {{type: a}}\n      prefix: {{type: b}}\n"
        ));
        assert!(
            two.contains("spec.filters[0].exact, spec.filters[0].prefix"),
            "{two}"
        );
        assert!(two.contains("multiple dialects"), "{two}");
        let bad_key = errors(&format!(
            "  broker: b\n{SUBSCRIBER}  filters:\n    - all:\n        - exact: {{Type: a}}\n"
        ));
        assert!(
            bad_key.contains("spec.filters[0].all[0].exact"),
            "{bad_key}"
        );
        let empty_value = errors(&format!(
            "  broker: b\n{SUBSCRIBER}  filters:\n    - not: {{suffix: {{type: \"\"}}}}\n"
        ));
        assert!(
            empty_value.contains("spec.filters[0].not.suffix[type]"),
            "{empty_value}"
        );
        let cesql = errors(&format!(
            "  broker: b\n{SUBSCRIBER}  filters:\n    - cesql: \"type = \"\n"
        ));
        assert!(cesql.contains("spec.filters[0].cesql"), "{cesql}");
        assert!(cesql.contains("does not parse"), "{cesql}");
    }

    /// As upstream's webhook: one attribute per `exact`/`prefix`/`suffix`
    /// object, an empty object sets no dialect, and dialects are counted
    /// only when non-empty.
    #[test]
    fn a_dialect_object_holds_one_attribute_and_empty_ones_set_nothing() {
        let two_keys = errors(&format!(
            "  broker: b\n{SUBSCRIBER}  filters:\n    - exact: {{type: a, source: b}}\n"
        ));
        assert!(
            two_keys.contains(
                "spec.filters[0].exact: Multiple items found, can have only one key-value"
            ),
            "{two_keys}"
        );
        let suffix = errors(&format!(
            "  broker: b\n{SUBSCRIBER}  filters:\n    - any:\n        - suffix: {{type: a, id: b}}\n"
        ));
        assert!(suffix.contains("spec.filters[0].any[0].suffix"), "{suffix}");
        for ok in [
            "    - exact: {}\n",
            "    - exact: {}\n      prefix: {type: b}\n",
            "    - all: []\n      cesql: \"type = 'a'\"\n",
            "    - cesql: \"\"\n",
        ] {
            let errs = errors(&format!("  broker: b\n{SUBSCRIBER}  filters:\n{ok}"));
            assert_eq!(errs, "", "{ok}");
        }
    }

    #[test]
    fn legacy_attribute_names_are_checked_and_empty_values_allowed() {
        let ok = errors(&format!(
            "  broker: b\n{SUBSCRIBER}  filter:\n    attributes: {{type: \"\", source: x}}\n"
        ));
        assert_eq!(ok, "");
        let bad = errors(&format!(
            "  broker: b\n{SUBSCRIBER}  filter:\n    attributes: {{my-attr: x}}\n"
        ));
        assert!(bad.contains("spec.filter.attributes"), "{bad}");
    }

    #[test]
    fn the_broker_is_immutable() {
        let old = trigger(&format!("  broker: one\n{SUBSCRIBER}"));
        let new = trigger(&format!("  broker: two\n{SUBSCRIBER}"));
        let errs = new.validate(&Context::update(&old)).to_string();
        assert!(
            errs.contains("spec.broker: Immutable fields changed"),
            "{errs}"
        );
    }
}
