//! `flows.knative.dev/v1`: [`Sequence`] and [`Parallel`], and the names of
//! the channels and subscriptions their reconcilers create
//! (`specs/EVENTING.md §4`, destinations `§6`, delivery `§5`).
//!
//! # Generated object names
//!
//! Upstream builds them with plain `fmt.Sprintf` (no `kmeta.ChildName`
//! shortening) in `pkg/reconciler/sequence/resources` and
//! `pkg/reconciler/parallel/resources`; the helpers here do the same:
//!
//! | object | name |
//! |---|---|
//! | Sequence step `i` channel | `{sequence}-kn-sequence-{i}` |
//! | Sequence step `i` subscription | `{sequence}-kn-sequence-{i}` (same name as the channel) |
//! | Parallel ingress channel | `{parallel}-kn-parallel` |
//! | Parallel branch `i` channel | `{parallel}-kn-parallel-{i}` |
//! | Parallel branch `i` filter subscription (on the ingress channel) | `{parallel}-kn-parallel-filter-{i}` |
//! | Parallel branch `i` subscriber subscription (on the branch channel) | `{parallel}-kn-parallel-{i}` (same name as the branch channel) |
//!
//! # Defaulting and validation
//!
//! An unset `channelTemplate` gets the default channel type (see
//! [`ChannelDefaults`]); object references default to the flow's
//! namespace. A flow needs at least one step / branch, each destination
//! must be valid (errors name the field, e.g. `spec.steps[1].uri`), and a
//! `channelTemplate` needs `apiVersion` and `kind`.

use k8s_openapi::api::core::v1::ObjectReference;
use knative_core::apis::{Context, FieldError, SetDefaults, Validate};
use knative_core::condition::{Condition, ConditionSet, Status};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duck::{Addressable, DeliverySpec, Destination};
use super::messaging::{
    ChannelDefaults, ChannelTemplateSpec, default_delivery, default_destination,
};

/// The API group of Sequence and Parallel.
pub const GROUP: &str = "flows.knative.dev";
/// `apiVersion` of Sequence and Parallel.
pub const API_VERSION: &str = "flows.knative.dev/v1";

/// The channel of step `step` of the Sequence named `sequence`.
pub fn sequence_channel_name(sequence: &str, step: usize) -> String {
    format!("{sequence}-kn-sequence-{step}")
}

/// The subscription of step `step` of the Sequence named `sequence` (the
/// channel's name: upstream's `SequenceSubscriptionName`).
pub fn sequence_subscription_name(sequence: &str, step: usize) -> String {
    format!("{sequence}-kn-sequence-{step}")
}

/// The ingress channel of the Parallel named `parallel`.
pub fn parallel_ingress_channel_name(parallel: &str) -> String {
    format!("{parallel}-kn-parallel")
}

/// The channel of branch `branch` of the Parallel named `parallel`.
pub fn parallel_branch_channel_name(parallel: &str, branch: usize) -> String {
    format!("{parallel}-kn-parallel-{branch}")
}

/// The subscription from the ingress channel to branch `branch`'s filter
/// (upstream's `ParallelFilterSubscriptionName`).
pub fn parallel_filter_subscription_name(parallel: &str, branch: usize) -> String {
    format!("{parallel}-kn-parallel-filter-{branch}")
}

/// The subscription from branch `branch`'s channel to its subscriber (the
/// branch channel's name: upstream's `ParallelSubscriptionName`).
pub fn parallel_subscriber_subscription_name(parallel: &str, branch: usize) -> String {
    format!("{parallel}-kn-parallel-{branch}")
}

/// One step of a Sequence: a destination (its fields inline) and its own
/// delivery options.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SequenceStep {
    /// The step's subscriber.
    #[serde(flatten)]
    pub destination: Destination,
    /// Delivery options for this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

/// A Sequence's spec: steps called in order, each step's reply feeding the
/// next.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "flows.knative.dev",
    version = "v1",
    kind = "Sequence",
    namespaced,
    derive = "PartialEq",
    status = "SequenceStatus",
    category = "all",
    category = "knative",
    category = "flows",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.address.url"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SequenceSpec {
    /// The steps, in order. At least one.
    #[serde(default)]
    pub steps: Vec<SequenceStep>,
    /// The channel type to create between steps (defaulted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_template: Option<ChannelTemplateSpec>,
    /// Where the last step's replies go (dropped when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Destination>,
}

/// A generated channel and its readiness (`SequenceChannelStatus`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SequenceChannelStatus {
    /// The channel.
    #[serde(default)]
    pub channel: ObjectReference,
    /// Its `Ready` condition.
    #[serde(default)]
    pub ready: Condition,
}

/// A generated subscription and its readiness
/// (`SequenceSubscriptionStatus`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SequenceSubscriptionStatus {
    /// The subscription.
    #[serde(default)]
    pub subscription: ObjectReference,
    /// Its `Ready` condition.
    #[serde(default)]
    pub ready: Condition,
}

/// A Parallel's generated channel and its readiness (same shape as
/// [`SequenceChannelStatus`]).
pub type ParallelChannelStatus = SequenceChannelStatus;
/// A Parallel's generated subscription and its readiness (same shape as
/// [`SequenceSubscriptionStatus`]).
pub type ParallelSubscriptionStatus = SequenceSubscriptionStatus;

/// What the Sequence's controller observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SequenceStatus {
    /// Conditions: `Ready` over `ChannelsReady`, `SubscriptionsReady`,
    /// `Addressable`, `EventPoliciesReady`.
    #[serde(flatten)]
    pub status: Status,
    /// One per step, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscription_statuses: Vec<SequenceSubscriptionStatus>,
    /// One per step, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channel_statuses: Vec<SequenceChannelStatus>,
    /// Where to post events: the first step's channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Addressable>,
    /// Every address of the first step's channel (e.g. http and https), so
    /// that a reference with `address` can pick one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Addressable>,
}

/// Condition types shared by Sequence and Parallel.
const CHANNELS_READY: &str = "ChannelsReady";
const SUBSCRIPTIONS_READY: &str = "SubscriptionsReady";
const ADDRESSABLE: &str = "Addressable";
const EVENT_POLICIES_READY: &str = super::messaging::CONDITION_EVENT_POLICIES_READY;

impl Sequence {
    /// Every generated channel is Ready.
    pub const CONDITION_CHANNELS_READY: &'static str = CHANNELS_READY;
    /// Every generated subscription is Ready.
    pub const CONDITION_SUBSCRIPTIONS_READY: &'static str = SUBSCRIPTIONS_READY;
    /// The Sequence has an address.
    pub const CONDITION_ADDRESSABLE: &'static str = ADDRESSABLE;
    /// The EventPolicies that apply to the Sequence are ready (always `True`
    /// here: authorization needs the OIDC feature, which this crate does
    /// not implement).
    pub const CONDITION_EVENT_POLICIES_READY: &'static str = EVENT_POLICIES_READY;

    /// `Ready` over `ChannelsReady`, `SubscriptionsReady`, `Addressable`
    /// and `EventPoliciesReady`, as upstream.
    pub fn condition_set() -> ConditionSet {
        ConditionSet::living(&[
            CHANNELS_READY,
            SUBSCRIPTIONS_READY,
            ADDRESSABLE,
            EVENT_POLICIES_READY,
        ])
    }

    /// The channel in front of step `step`: `{name}-kn-sequence-{step}`.
    pub fn channel_name(&self, step: usize) -> String {
        sequence_channel_name(self.name_or_empty(), step)
    }

    /// The subscription of step `step`: `{name}-kn-sequence-{step}`.
    pub fn subscription_name(&self, step: usize) -> String {
        sequence_subscription_name(self.name_or_empty(), step)
    }

    fn name_or_empty(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }
}

impl SetDefaults for Sequence {
    /// The default channel template; object references default to the
    /// Sequence's namespace.
    fn set_defaults(&mut self, ctx: &Context<'_>) {
        let namespace = self.metadata.namespace.clone();
        let ns = namespace.as_deref();
        if self.spec.channel_template.is_none() {
            self.spec.channel_template = Some(ChannelDefaults::from_context(ctx, ns));
        }
        for step in &mut self.spec.steps {
            default_destination(&mut step.destination, ns);
            default_delivery(&mut step.delivery, ns);
        }
        if let Some(reply) = &mut self.spec.reply {
            default_destination(reply, ns);
        }
    }
}

/// Checks an optional channel template and reply (shared by both flows).
fn validate_template_and_reply(
    template: Option<&ChannelTemplateSpec>,
    reply: Option<&Destination>,
) -> FieldError {
    let mut errs = FieldError::none();
    if let Some(t) = template {
        errs.push(t.validate().via_field("channelTemplate"));
    }
    if let Some(reply) = reply {
        errs.push(reply.validate().via_field("reply"));
    }
    errs
}

impl Validate for Sequence {
    fn validate(&self, _ctx: &Context<'_>) -> FieldError {
        let spec = &self.spec;
        let mut errs = FieldError::none();
        if spec.steps.is_empty() {
            errs.push(
                FieldError::missing_field("steps")
                    .with_details("a Sequence needs at least one step"),
            );
        }
        for (i, step) in spec.steps.iter().enumerate() {
            let mut step_errs = step.destination.validate();
            if let Some(delivery) = &step.delivery {
                step_errs.push(delivery.validate().via_field("delivery"));
            }
            errs.push(step_errs.via_field_index("steps", i));
        }
        errs.push(validate_template_and_reply(
            spec.channel_template.as_ref(),
            spec.reply.as_ref(),
        ));
        errs.via_field("spec")
    }
}

/// One branch of a Parallel: events the filter passes go to the subscriber.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParallelBranch {
    /// The filter: passes an event by replying with it (no filter: every
    /// event passes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Destination>,
    /// Where passing events go.
    #[serde(default)]
    pub subscriber: Destination,
    /// Where the subscriber's replies go (default: the Parallel's `reply`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Destination>,
    /// Delivery options for the subscriber.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

/// A Parallel's spec: every event is offered to every branch.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "flows.knative.dev",
    version = "v1",
    kind = "Parallel",
    namespaced,
    derive = "PartialEq",
    status = "ParallelStatus",
    category = "all",
    category = "knative",
    category = "flows",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.address.url"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ParallelSpec {
    /// The branches. At least one.
    #[serde(default)]
    pub branches: Vec<ParallelBranch>,
    /// The channel type to create (defaulted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_template: Option<ChannelTemplateSpec>,
    /// Where replies of branches without their own `reply` go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Destination>,
}

/// The generated objects of one branch and their readiness.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParallelBranchStatus {
    /// The subscription from the ingress channel to the filter.
    #[serde(default)]
    pub filter_subscription_status: ParallelSubscriptionStatus,
    /// The branch channel.
    #[serde(default)]
    pub filter_channel_status: ParallelChannelStatus,
    /// The subscription from the branch channel to the subscriber.
    #[serde(default)]
    pub subscriber_subscription_status: ParallelSubscriptionStatus,
}

/// What the Parallel's controller observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParallelStatus {
    /// Conditions: `Ready` over `ChannelsReady`, `SubscriptionsReady`,
    /// `Addressable`, `EventPoliciesReady`.
    #[serde(flatten)]
    pub status: Status,
    /// The ingress channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_channel_status: Option<ParallelChannelStatus>,
    /// One per branch, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branch_statuses: Vec<ParallelBranchStatus>,
    /// Where to post events: the ingress channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Addressable>,
    /// Every address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Addressable>,
}

impl Parallel {
    /// Every generated channel is Ready.
    pub const CONDITION_CHANNELS_READY: &'static str = CHANNELS_READY;
    /// Every generated subscription is Ready.
    pub const CONDITION_SUBSCRIPTIONS_READY: &'static str = SUBSCRIPTIONS_READY;
    /// The Parallel has an address.
    pub const CONDITION_ADDRESSABLE: &'static str = ADDRESSABLE;
    /// The EventPolicies that apply to the Parallel are ready (always `True`
    /// here: authorization needs the OIDC feature, which this crate does
    /// not implement).
    pub const CONDITION_EVENT_POLICIES_READY: &'static str = EVENT_POLICIES_READY;

    /// `Ready` over `ChannelsReady`, `SubscriptionsReady`, `Addressable`
    /// and `EventPoliciesReady`, as upstream.
    pub fn condition_set() -> ConditionSet {
        ConditionSet::living(&[
            CHANNELS_READY,
            SUBSCRIPTIONS_READY,
            ADDRESSABLE,
            EVENT_POLICIES_READY,
        ])
    }

    /// The ingress channel: `{name}-kn-parallel`.
    pub fn ingress_channel_name(&self) -> String {
        parallel_ingress_channel_name(self.name_or_empty())
    }

    /// Branch `branch`'s channel: `{name}-kn-parallel-{branch}`.
    pub fn branch_channel_name(&self, branch: usize) -> String {
        parallel_branch_channel_name(self.name_or_empty(), branch)
    }

    /// Branch `branch`'s filter subscription:
    /// `{name}-kn-parallel-filter-{branch}`.
    pub fn filter_subscription_name(&self, branch: usize) -> String {
        parallel_filter_subscription_name(self.name_or_empty(), branch)
    }

    /// Branch `branch`'s subscriber subscription:
    /// `{name}-kn-parallel-{branch}`.
    pub fn subscriber_subscription_name(&self, branch: usize) -> String {
        parallel_subscriber_subscription_name(self.name_or_empty(), branch)
    }

    fn name_or_empty(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }
}

impl SetDefaults for Parallel {
    /// The default channel template; object references default to the
    /// Parallel's namespace.
    fn set_defaults(&mut self, ctx: &Context<'_>) {
        let namespace = self.metadata.namespace.clone();
        let ns = namespace.as_deref();
        if self.spec.channel_template.is_none() {
            self.spec.channel_template = Some(ChannelDefaults::from_context(ctx, ns));
        }
        for branch in &mut self.spec.branches {
            if let Some(filter) = &mut branch.filter {
                default_destination(filter, ns);
            }
            default_destination(&mut branch.subscriber, ns);
            if let Some(reply) = &mut branch.reply {
                default_destination(reply, ns);
            }
            default_delivery(&mut branch.delivery, ns);
        }
        if let Some(reply) = &mut self.spec.reply {
            default_destination(reply, ns);
        }
    }
}

impl Validate for Parallel {
    fn validate(&self, _ctx: &Context<'_>) -> FieldError {
        let spec = &self.spec;
        let mut errs = FieldError::none();
        if spec.branches.is_empty() {
            errs.push(
                FieldError::missing_field("branches")
                    .with_details("a Parallel needs at least one branch"),
            );
        }
        for (i, branch) in spec.branches.iter().enumerate() {
            let mut branch_errs = FieldError::none();
            if let Some(filter) = &branch.filter {
                branch_errs.push(filter.validate().via_field("filter"));
            }
            branch_errs.push(branch.subscriber.validate().via_field("subscriber"));
            if let Some(reply) = &branch.reply {
                branch_errs.push(reply.validate().via_field("reply"));
            }
            if let Some(delivery) = &branch.delivery {
                branch_errs.push(delivery.validate().via_field("delivery"));
            }
            errs.push(branch_errs.via_field_index("branches", i));
        }
        errs.push(validate_template_and_reply(
            spec.channel_template.as_ref(),
            spec.reply.as_ref(),
        ));
        errs.via_field("spec")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_follow_upstream() {
        let seq: Sequence =
            serde_yaml::from_str("metadata: {name: orders}\nspec: {steps: []}\n").expect("parses");
        assert_eq!(seq.channel_name(0), "orders-kn-sequence-0");
        assert_eq!(seq.subscription_name(2), "orders-kn-sequence-2");
        let par: Parallel =
            serde_yaml::from_str("metadata: {name: fan}\nspec: {branches: []}\n").expect("parses");
        assert_eq!(par.ingress_channel_name(), "fan-kn-parallel");
        assert_eq!(par.branch_channel_name(1), "fan-kn-parallel-1");
        assert_eq!(par.filter_subscription_name(1), "fan-kn-parallel-filter-1");
        assert_eq!(par.subscriber_subscription_name(1), "fan-kn-parallel-1");
    }

    #[test]
    fn a_step_is_a_destination_with_inline_fields() {
        let step: SequenceStep = serde_yaml::from_str(
            "ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: a}\ndelivery: {retry: 2}\n",
        )
        .expect("parses");
        assert_eq!(
            step.destination.reference.as_ref().map(|r| r.name.as_str()),
            Some("a")
        );
        assert_eq!(step.delivery.and_then(|d| d.retry), Some(2));
    }

    #[test]
    fn flows_are_gated_on_their_event_policies() {
        let want = [
            "ChannelsReady",
            "SubscriptionsReady",
            "Addressable",
            "EventPoliciesReady",
        ];
        assert_eq!(Sequence::condition_set().dependents(), want);
        assert_eq!(Parallel::condition_set().dependents(), want);
    }

    #[test]
    fn a_sequence_status_lists_its_addresses() {
        let status: SequenceStatus = serde_yaml::from_str(
            "address: {url: 'http://c/ns/s-kn-sequence-0'}\naddresses:\n  - {name: http, url: 'http://c/ns/s-kn-sequence-0'}\n  - {name: https, url: 'https://c/ns/s-kn-sequence-0'}\n",
        )
        .expect("parses");
        let names: Vec<_> = status
            .addresses
            .iter()
            .map(|a| a.name.as_deref().unwrap_or_default())
            .collect();
        assert_eq!(names, ["http", "https"]);
        let json = serde_json::to_value(&status).expect("serialises");
        assert_eq!(json["addresses"][1]["url"], "https://c/ns/s-kn-sequence-0");
        let empty = serde_json::to_value(SequenceStatus::default()).expect("serialises");
        assert!(empty.get("addresses").is_none(), "{empty}");
    }
}
