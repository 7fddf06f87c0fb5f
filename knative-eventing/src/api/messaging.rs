//! `messaging.knative.dev/v1`: [`Channel`], [`InMemoryChannel`] and
//! [`Subscription`], with the Channelable duck they share
//! ([`ChannelableSpec`], [`ChannelableStatus`]) (`specs/EVENTING.md §4`,
//! delivery `§5`, destinations `§6`).
//!
//! Defaulting and validation follow upstream's webhook:
//!
//! - a Channel without `spec.channelTemplate` gets the cluster's default
//!   channel type ([`ChannelDefaults`], the `default-ch-webhook` ConfigMap
//!   upstream; an [`InMemoryChannel`] when no defaults are configured) and
//!   the `messaging.knative.dev/subscribable: v1` annotation;
//!   `channelTemplate` cannot change afterwards;
//! - a Subscription needs `spec.channel` (no namespace: it is always the
//!   Subscription's own) and `spec.subscriber` (the webhook's
//!   strict-subscriber behaviour); only `subscriber`, `reply` and `delivery`
//!   may change after creation. Object references in destinations default
//!   to the Subscription's namespace;
//! - every InMemoryChannel subscriber needs a `subscriberUri` or a
//!   `replyUri`.

use std::collections::BTreeMap;

use knative_core::apis::{Context, FieldError, SetDefaults, Validate};
use knative_core::condition::{ConditionSet, ConditionStatus, Status};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duck::{Addressable, DeliverySpec, DeliveryStatus, Destination, KReference};

/// The API group of Channel, InMemoryChannel and Subscription.
pub const GROUP: &str = "messaging.knative.dev";
/// `apiVersion` of Channel, InMemoryChannel and Subscription.
pub const API_VERSION: &str = "messaging.knative.dev/v1";
/// The kind of the in-memory channel implementation.
pub const IN_MEMORY_CHANNEL_KIND: &str = "InMemoryChannel";
/// The condition type, on channels and flows, saying whether the
/// EventPolicies that apply to the object are ready (upstream's
/// `EventPoliciesReady`). Always `True` here: authorization needs the OIDC
/// feature, which this crate does not implement.
pub const CONDITION_EVENT_POLICIES_READY: &str = "EventPoliciesReady";
/// Annotation naming the version of the Subscribable duck a channel speaks;
/// defaulting sets it to `v1` on Channels.
pub const SUBSCRIBABLE_DUCK_VERSION_ANNOTATION: &str = "messaging.knative.dev/subscribable";

/// The message of every "this field cannot change" error.
pub(crate) const IMMUTABLE: &str = "Immutable fields changed (-old +new)";

/// Which channel implementation to create, and its spec
/// (`messaging.knative.dev/v1.ChannelTemplateSpec`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelTemplateSpec {
    /// The channel CRD's `apiVersion`, e.g. `messaging.knative.dev/v1`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    /// The channel CRD's kind, e.g. `InMemoryChannel`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// The spec given verbatim to every channel created from the template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "opaque_object_schema")]
    pub spec: Option<serde_json::Value>,
}

/// An object kept as written (`x-kubernetes-preserve-unknown-fields`).
pub(crate) fn opaque_object_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

impl ChannelTemplateSpec {
    /// The template of an [`InMemoryChannel`], upstream's default channel.
    pub fn in_memory_channel() -> Self {
        ChannelTemplateSpec {
            api_version: API_VERSION.to_owned(),
            kind: IN_MEMORY_CHANNEL_KIND.to_owned(),
            spec: None,
        }
    }

    /// Checks that `apiVersion` and `kind` are set. Paths are relative to
    /// the template.
    pub fn validate(&self) -> FieldError {
        let mut errs = FieldError::none();
        if self.api_version.is_empty() {
            errs.push(FieldError::missing_field("apiVersion"));
        }
        if self.kind.is_empty() {
            errs.push(FieldError::missing_field("kind"));
        }
        errs
    }
}

/// The default channel type, cluster-wide and per namespace (upstream's
/// `default-ch-webhook` ConfigMap). Add it to a [`Context`] with
/// [`Context::with_config`]; without it the default is an
/// [`InMemoryChannel`].
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelDefaults {
    /// The template for namespaces without their own.
    pub cluster_default: ChannelTemplateSpec,
    /// Namespace → template.
    pub namespace_defaults: BTreeMap<String, ChannelTemplateSpec>,
}

impl Default for ChannelDefaults {
    fn default() -> Self {
        ChannelDefaults {
            cluster_default: ChannelTemplateSpec::in_memory_channel(),
            namespace_defaults: BTreeMap::new(),
        }
    }
}

impl ChannelDefaults {
    /// The template for `namespace`.
    pub fn for_namespace(&self, namespace: Option<&str>) -> ChannelTemplateSpec {
        namespace
            .and_then(|ns| self.namespace_defaults.get(ns))
            .unwrap_or(&self.cluster_default)
            .clone()
    }

    /// The template for `namespace` from the context's defaults, else an
    /// [`InMemoryChannel`].
    pub fn from_context(ctx: &Context<'_>, namespace: Option<&str>) -> ChannelTemplateSpec {
        ctx.config::<ChannelDefaults>()
            .map_or_else(ChannelTemplateSpec::in_memory_channel, |d| {
                d.for_namespace(namespace)
            })
    }
}

/// One subscriber of a channel, as the Subscription controller writes it
/// (`duckv1.SubscriberSpec`, merge key `uid`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriberSpec {
    /// The Subscription's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The Subscription's UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The Subscription's `metadata.generation` this entry reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Where events are delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriber_uri: Option<String>,
    /// CA certificates of the subscriber.
    #[serde(
        default,
        rename = "subscriberCACerts",
        skip_serializing_if = "Option::is_none"
    )]
    pub subscriber_ca_certs: Option<String>,
    /// OIDC audience of the subscriber.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriber_audience: Option<String>,
    /// Where the subscriber's replies go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_uri: Option<String>,
    /// CA certificates of the reply destination.
    #[serde(
        default,
        rename = "replyCACerts",
        skip_serializing_if = "Option::is_none"
    )]
    pub reply_ca_certs: Option<String>,
    /// OIDC audience of the reply destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_audience: Option<String>,
    /// Delivery options for this subscriber.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

/// The Channelable duck's spec: the subscribers and the channel's delivery
/// options (`duckv1.ChannelableSpec`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelableSpec {
    /// The subscribers, written by the Subscription controller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribers: Vec<SubscriberSpec>,
    /// Delivery options for subscribers without their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

impl ChannelableSpec {
    /// Checks the delivery options, the subscribers' delivery options and,
    /// when `need_uris`, that every subscriber has a subscriber or reply
    /// URI. Paths are relative to the spec.
    fn validate(&self, need_uris: bool) -> FieldError {
        let mut errs = FieldError::none();
        for (i, s) in self.subscribers.iter().enumerate() {
            let blank = |u: &Option<String>| u.as_deref().is_none_or(str::is_empty);
            if need_uris && blank(&s.subscriber_uri) && blank(&s.reply_uri) {
                errs.push(
                    FieldError::missing_one_of(["replyUri", "subscriberUri"])
                        .with_details("a subscriber needs a subscriberUri, a replyUri or both")
                        .via_field_index("subscribers", i),
                );
            }
            if let Some(delivery) = &s.delivery {
                errs.push(
                    delivery
                        .validate()
                        .via_field("delivery")
                        .via_field_index("subscribers", i),
                );
            }
        }
        if let Some(delivery) = &self.delivery {
            errs.push(delivery.validate().via_field("delivery"));
        }
        errs
    }
}

/// What a channel knows about one subscriber (`duckv1.SubscriberStatus`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriberStatus {
    /// The Subscription's UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The Subscription generation the channel has acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Whether the channel delivers to this subscriber.
    #[serde(default)]
    pub ready: ConditionStatus,
    /// Why it is not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The Channelable duck's status (`duckv1.ChannelableStatus`); also the
/// status of an [`InMemoryChannel`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelableStatus {
    /// Conditions (see the owning kind's `CONDITION_*` constants).
    #[serde(flatten)]
    pub status: Status,
    /// Where to post events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Addressable>,
    /// Every address (e.g. http and https).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Addressable>,
    /// The subscribers' readiness.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribers: Vec<SubscriberStatus>,
    /// The resolved dead-letter sink.
    #[serde(flatten)]
    pub delivery: DeliveryStatus,
}

/// A Channel's spec: which implementation backs it, plus the Channelable
/// spec.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "messaging.knative.dev",
    version = "v1",
    kind = "Channel",
    namespaced,
    derive = "PartialEq",
    status = "ChannelStatus",
    shortname = "ch",
    category = "all",
    category = "knative",
    category = "messaging",
    category = "channel",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.address.url"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ChannelSpec {
    /// The backing channel's kind and spec. Defaulted; immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_template: Option<ChannelTemplateSpec>,
    /// Subscribers and delivery options.
    #[serde(flatten)]
    pub channelable: ChannelableSpec,
}

/// What the Channel's controller observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelStatus {
    /// The backing channel's status, mirrored.
    #[serde(flatten)]
    pub channelable: ChannelableStatus,
    /// The backing channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<KReference>,
}

impl Channel {
    /// The backing channel is Ready.
    pub const CONDITION_BACKING_CHANNEL_READY: &'static str = "BackingChannelReady";
    /// The channel has an address.
    pub const CONDITION_ADDRESSABLE: &'static str = "Addressable";
    /// The dead-letter sink resolved (or none is configured).
    pub const CONDITION_DEAD_LETTER_SINK_RESOLVED: &'static str = "DeadLetterSinkResolved";
    /// The EventPolicies that apply to the channel are ready (see
    /// [`CONDITION_EVENT_POLICIES_READY`]).
    pub const CONDITION_EVENT_POLICIES_READY: &'static str = CONDITION_EVENT_POLICIES_READY;

    /// `Ready` over `BackingChannelReady`, `Addressable`,
    /// `DeadLetterSinkResolved` and `EventPoliciesReady`, as upstream.
    pub fn condition_set() -> ConditionSet {
        ConditionSet::living(&[
            Self::CONDITION_BACKING_CHANNEL_READY,
            Self::CONDITION_ADDRESSABLE,
            Self::CONDITION_DEAD_LETTER_SINK_RESOLVED,
            Self::CONDITION_EVENT_POLICIES_READY,
        ])
    }
}

/// Sets a destination's object reference namespace to `namespace` when
/// unset (upstream's `Destination.SetDefaults` within a parent).
pub(crate) fn default_destination(destination: &mut Destination, namespace: Option<&str>) {
    if let Some(reference) = &mut destination.reference
        && reference.namespace.as_deref().unwrap_or("").is_empty()
        && let Some(ns) = namespace
    {
        reference.namespace = Some(ns.to_owned());
    }
}

/// Defaults the dead-letter sink's namespace.
pub(crate) fn default_delivery(delivery: &mut Option<DeliverySpec>, namespace: Option<&str>) {
    if let Some(dls) = delivery.as_mut().and_then(|d| d.dead_letter_sink.as_mut()) {
        default_destination(dls, namespace);
    }
}

impl SetDefaults for Channel {
    /// The default channel template and the subscribable duck annotation.
    fn set_defaults(&mut self, ctx: &Context<'_>) {
        let namespace = self.metadata.namespace.clone();
        self.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .entry(SUBSCRIBABLE_DUCK_VERSION_ANNOTATION.to_owned())
            .or_insert_with(|| "v1".to_owned());
        if self.spec.channel_template.is_none() {
            self.spec.channel_template =
                Some(ChannelDefaults::from_context(ctx, namespace.as_deref()));
        }
        default_delivery(&mut self.spec.channelable.delivery, namespace.as_deref());
    }
}

impl Validate for Channel {
    fn validate(&self, ctx: &Context<'_>) -> FieldError {
        let mut errs = FieldError::none();
        match &self.spec.channel_template {
            None => errs.push(
                FieldError::missing_field("spec.channelTemplate")
                    .with_details("defaulting sets it; set it or apply the defaults first"),
            ),
            Some(t) => errs.push(t.validate().via_field("channelTemplate").via_field("spec")),
        }
        errs.push(self.spec.channelable.validate(false).via_field("spec"));
        if let Some(original) = ctx.original::<Channel>()
            && original.spec.channel_template != self.spec.channel_template
        {
            errs.push(
                FieldError::new(IMMUTABLE, "spec.channelTemplate").with_details(
                    "a channel's implementation cannot change: delete and recreate the channel",
                ),
            );
        }
        errs
    }
}

/// An InMemoryChannel's spec: the Channelable spec only.
#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "messaging.knative.dev",
    version = "v1",
    kind = "InMemoryChannel",
    namespaced,
    derive = "PartialEq",
    status = "ChannelableStatus",
    shortname = "imc",
    category = "all",
    category = "knative",
    category = "messaging",
    category = "channel",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.address.url"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct InMemoryChannelSpec {
    /// Subscribers and delivery options.
    #[serde(flatten)]
    pub channelable: ChannelableSpec,
}

impl InMemoryChannel {
    /// The dispatcher Deployment is available (informational upstream: not
    /// part of [`condition_set`](Self::condition_set)).
    pub const CONDITION_DISPATCHER_READY: &'static str = "DispatcherReady";
    /// The dispatcher's Kubernetes Service exists.
    pub const CONDITION_SERVICE_READY: &'static str = "ServiceReady";
    /// The dispatcher Service has endpoints.
    pub const CONDITION_ENDPOINTS_READY: &'static str = "EndpointsReady";
    /// The channel has an address.
    pub const CONDITION_ADDRESSABLE: &'static str = "Addressable";
    /// The channel's own (ExternalName) Service exists.
    pub const CONDITION_CHANNEL_SERVICE_READY: &'static str = "ChannelServiceReady";
    /// The dead-letter sink resolved (or none is configured).
    pub const CONDITION_DEAD_LETTER_SINK_RESOLVED: &'static str = "DeadLetterSinkResolved";
    /// The EventPolicies that apply to the channel are ready (see
    /// [`CONDITION_EVENT_POLICIES_READY`]).
    pub const CONDITION_EVENT_POLICIES_READY: &'static str = CONDITION_EVENT_POLICIES_READY;

    /// `Ready` over `ServiceReady`, `EndpointsReady`, `Addressable`,
    /// `ChannelServiceReady`, `DeadLetterSinkResolved` and
    /// `EventPoliciesReady`, as upstream (`DispatcherReady` is set but does
    /// not gate `Ready`).
    pub fn condition_set() -> ConditionSet {
        ConditionSet::living(&[
            Self::CONDITION_SERVICE_READY,
            Self::CONDITION_ENDPOINTS_READY,
            Self::CONDITION_ADDRESSABLE,
            Self::CONDITION_CHANNEL_SERVICE_READY,
            Self::CONDITION_DEAD_LETTER_SINK_RESOLVED,
            Self::CONDITION_EVENT_POLICIES_READY,
        ])
    }
}

impl SetDefaults for InMemoryChannel {
    /// The dead-letter sink's namespace.
    fn set_defaults(&mut self, _ctx: &Context<'_>) {
        let namespace = self.metadata.namespace.clone();
        default_delivery(&mut self.spec.channelable.delivery, namespace.as_deref());
    }
}

impl Validate for InMemoryChannel {
    fn validate(&self, _ctx: &Context<'_>) -> FieldError {
        self.spec.channelable.validate(true).via_field("spec")
    }
}

/// A Subscription's spec: deliver the events of `channel` to `subscriber`,
/// and its replies to `reply`.
#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "messaging.knative.dev",
    version = "v1",
    kind = "Subscription",
    namespaced,
    derive = "PartialEq",
    status = "SubscriptionStatus",
    shortname = "sub",
    category = "all",
    category = "knative",
    category = "messaging",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionSpec {
    /// The channel, in the Subscription's namespace (`apiVersion`, `kind`,
    /// `name` only). Required; immutable.
    #[serde(default)]
    pub channel: KReference,
    /// Where the channel's events go. Required.
    #[serde(default)]
    pub subscriber: Destination,
    /// Where the subscriber's replies go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Destination>,
    /// Delivery options for this subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

/// The resolved destinations of a Subscription
/// (`SubscriptionStatusPhysicalSubscription`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhysicalSubscription {
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
    /// The reply destination's resolved URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_uri: Option<String>,
    /// The reply destination's CA certificates.
    #[serde(
        default,
        rename = "replyCACerts",
        skip_serializing_if = "Option::is_none"
    )]
    pub reply_ca_certs: Option<String>,
    /// The reply destination's OIDC audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_audience: Option<String>,
    /// The resolved dead-letter sink (`deadLetterSinkUri`,
    /// `deadLetterSinkCACerts`, `deadLetterSinkAudience`).
    #[serde(flatten)]
    pub delivery: DeliveryStatus,
}

/// What the Subscription's controller observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionStatus {
    /// Conditions: `Ready` over `ReferencesResolved`, `AddedToChannel`,
    /// `ChannelReady`, `OIDCIdentityCreated`.
    #[serde(flatten)]
    pub status: Status,
    /// The resolved destinations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical_subscription: Option<PhysicalSubscription>,
}

impl Subscription {
    /// The channel, subscriber, reply and dead-letter sink resolved.
    pub const CONDITION_REFERENCES_RESOLVED: &'static str = "ReferencesResolved";
    /// The subscription is in the channel's `spec.subscribers`.
    pub const CONDITION_ADDED_TO_CHANNEL: &'static str = "AddedToChannel";
    /// The channel reports the subscriber ready.
    pub const CONDITION_CHANNEL_READY: &'static str = "ChannelReady";
    /// The Subscription's OIDC identity (its service account) exists.
    /// Always `True` here, with a reason saying the feature is disabled: the
    /// OIDC feature (`authentication-oidc`) is not implemented by this
    /// crate.
    pub const CONDITION_OIDC_IDENTITY_CREATED: &'static str = "OIDCIdentityCreated";

    /// `Ready` over `ReferencesResolved`, `AddedToChannel`, `ChannelReady`
    /// and `OIDCIdentityCreated`, as upstream.
    pub fn condition_set() -> ConditionSet {
        ConditionSet::living(&[
            Self::CONDITION_REFERENCES_RESOLVED,
            Self::CONDITION_ADDED_TO_CHANNEL,
            Self::CONDITION_CHANNEL_READY,
            Self::CONDITION_OIDC_IDENTITY_CREATED,
        ])
    }
}

impl SetDefaults for Subscription {
    /// Object references in the subscriber, reply and dead-letter sink
    /// default to the Subscription's namespace.
    fn set_defaults(&mut self, _ctx: &Context<'_>) {
        let namespace = self.metadata.namespace.clone();
        let ns = namespace.as_deref();
        default_destination(&mut self.spec.subscriber, ns);
        if let Some(reply) = &mut self.spec.reply {
            default_destination(reply, ns);
        }
        default_delivery(&mut self.spec.delivery, ns);
    }
}

impl Validate for Subscription {
    fn validate(&self, ctx: &Context<'_>) -> FieldError {
        let mut errs = FieldError::none();
        let spec = &self.spec;
        if spec.channel == KReference::default() {
            return FieldError::missing_field("spec.channel")
                .with_details("the Subscription must reference a channel");
        }
        errs.push(
            spec.channel
                .validate()
                .via_field("channel")
                .via_field("spec"),
        );
        if spec
            .channel
            .namespace
            .as_deref()
            .is_some_and(|ns| !ns.is_empty())
        {
            errs.push(
                FieldError::disallowed_fields("spec.channel.namespace")
                    .with_details("only name, apiVersion and kind are supported fields"),
            );
        }
        if spec.subscriber == Destination::default() {
            errs.push(
                FieldError::missing_field("spec.subscriber")
                    .with_details("the Subscription must reference a subscriber"),
            );
        } else {
            errs.push(
                spec.subscriber
                    .validate()
                    .via_field("subscriber")
                    .via_field("spec"),
            );
        }
        if let Some(reply) = &spec.reply
            && *reply != Destination::default()
        {
            errs.push(reply.validate().via_field("reply").via_field("spec"));
        }
        if let Some(delivery) = &spec.delivery {
            errs.push(delivery.validate().via_field("delivery").via_field("spec"));
        }
        if let Some(original) = ctx.original::<Subscription>()
            && original.spec.channel != spec.channel
        {
            errs.push(
                FieldError::new(IMMUTABLE, "spec.channel").with_details(format!(
                    "only subscriber, reply and delivery can change: -{:?} +{:?}",
                    original.spec.channel.name, spec.channel.name
                )),
            );
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
        serde_yaml::from_str(yaml).expect("parses")
    }

    #[test]
    fn a_channel_defaults_to_an_in_memory_channel_unless_configured() {
        let mut ch: Channel = parse("metadata: {name: c, namespace: ns}\nspec: {}\n");
        ch.set_defaults(&Context::create());
        assert_eq!(
            ch.spec.channel_template,
            Some(ChannelTemplateSpec::in_memory_channel())
        );
        assert!(ch.validate(&Context::create()).is_empty());

        let kafka = ChannelTemplateSpec {
            api_version: "messaging.knative.dev/v1beta1".into(),
            kind: "KafkaChannel".into(),
            spec: Some(serde_json::json!({"numPartitions": 3})),
        };
        let defaults = ChannelDefaults {
            namespace_defaults: [("ns".to_owned(), kafka.clone())].into(),
            ..ChannelDefaults::default()
        };
        let mut ch: Channel = parse("metadata: {name: c, namespace: ns}\nspec: {}\n");
        ch.set_defaults(&Context::create().with_config(defaults));
        assert_eq!(ch.spec.channel_template, Some(kafka));
    }

    #[test]
    fn the_channel_template_is_immutable() {
        let mut old: Channel = parse("metadata: {name: c, namespace: ns}\nspec: {}\n");
        old.set_defaults(&Context::create());
        let mut new = old.clone();
        if let Some(t) = &mut new.spec.channel_template {
            t.kind = "KafkaChannel".into();
        }
        let errs = new.validate(&Context::update(&old)).to_string();
        assert!(
            errs.starts_with("spec.channelTemplate: Immutable fields changed"),
            "{errs}"
        );
        let mut subscribed = old.clone();
        subscribed
            .spec
            .channelable
            .subscribers
            .push(SubscriberSpec {
                subscriber_uri: Some("http://s".into()),
                ..SubscriberSpec::default()
            });
        assert!(subscribed.validate(&Context::update(&old)).is_empty());
    }

    #[test]
    fn subscription_conditions_form_a_living_set() {
        let set = Subscription::condition_set();
        assert_eq!(set.happy(), "Ready");
        assert_eq!(
            set.dependents(),
            [
                "ReferencesResolved",
                "AddedToChannel",
                "ChannelReady",
                "OIDCIdentityCreated"
            ]
        );
        assert!(!InMemoryChannel::condition_set().is_terminal("DispatcherReady"));
    }

    #[test]
    fn channels_are_gated_on_their_event_policies() {
        assert_eq!(
            InMemoryChannel::condition_set().dependents(),
            [
                "ServiceReady",
                "EndpointsReady",
                "Addressable",
                "ChannelServiceReady",
                "DeadLetterSinkResolved",
                "EventPoliciesReady"
            ]
        );
        assert_eq!(
            Channel::condition_set().dependents(),
            [
                "BackingChannelReady",
                "Addressable",
                "DeadLetterSinkResolved",
                "EventPoliciesReady"
            ]
        );
    }
}
