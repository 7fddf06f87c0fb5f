//! The reconcilers of `flows.knative.dev` (`specs/EVENTING.md §4`): a
//! Sequence or Parallel is made of channels and Subscriptions it owns,
//! named as upstream names them (see [`crate::api::flows`]).
//!
//! - **Sequence** ([`sequence_children`]): channel `{name}-kn-sequence-{i}`
//!   in front of every step and Subscription `{name}-kn-sequence-{i}` from
//!   it to the step, replying to channel `i + 1`; the last step replies to
//!   `spec.reply` (no reply: the last step's replies are dropped). The
//!   Sequence's address is channel 0's.
//! - **Parallel** ([`parallel_children`]): ingress channel
//!   `{name}-kn-parallel`; per branch a channel `{name}-kn-parallel-{i}`, a
//!   filter Subscription `{name}-kn-parallel-filter-{i}` on the ingress
//!   channel (subscriber = the branch's filter, reply = the branch channel;
//!   without a filter the subscriber is the branch channel itself) and a
//!   Subscription `{name}-kn-parallel-{i}` on the branch channel
//!   (subscriber = the branch's subscriber, reply = the branch's `reply`,
//!   else `spec.reply`). A filter passes an event by replying with it; an
//!   empty 2xx drops it. The Parallel's address is the ingress channel's.
//!
//! A flow's `status.addresses` are its address channel's (channel 0 for a
//! Sequence, the ingress channel for a Parallel), so a reference with
//! `address` can pick one of them.
//!
//! Channels are of the `channelTemplate` kind (an InMemoryChannel when
//! unset; other kinds are reported, as this crate only creates
//! InMemoryChannels). Every child has a controller owner reference to the
//! flow; children are updated when the spec changes, and children no
//! longer wanted (fewer steps or branches) are deleted. The status lists
//! every child with its `Ready` condition; `ChannelsReady`,
//! `SubscriptionsReady` and `Addressable` follow upstream (a Sequence marks
//! what is not ready yet `Unknown`, a Parallel `False`, with reasons
//! `ChannelsNotReady`, `SubscriptionsNotReady` and `emptyAddress`).
//! `EventPoliciesReady` is `True` with reason `OIDCDisabled`, as upstream
//! without the OIDC feature (not implemented here).

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use knative_core::condition::{Condition, ConditionStatus, READY};
use knative_core::runtime::{Action, Controller, Reconciler};
use knative_core::store::{ApiObject, Objects, StoreError};
use kube::core::Selector;
use tracing::{Instrument, debug, info_span};

use super::messaging::{in_memory_channel_spec, mark_event_policies_ready};
use super::{
    ReconcileError, controller_reference, is_controlled_by, namespace_and_name, write_status,
};
use crate::api::{
    Addressable, ChannelTemplateSpec, Destination, InMemoryChannel, InMemoryChannelSpec,
    KReference, Parallel, ParallelBranchStatus, ParallelChannelStatus, Sequence,
    SequenceChannelStatus, SequenceSubscriptionStatus, Subscription, SubscriptionSpec,
};

/// The channels and Subscriptions of a Sequence, in step order.
#[derive(Clone, Debug, PartialEq)]
pub struct SequenceChildren {
    /// Channel `i` is in front of step `i`.
    pub channels: Vec<InMemoryChannel>,
    /// Subscription `i` delivers channel `i`'s events to step `i`.
    pub subscriptions: Vec<Subscription>,
}

/// The objects of one Parallel branch.
#[derive(Clone, Debug, PartialEq)]
pub struct ParallelBranchChildren {
    /// The branch channel, fed by the filter.
    pub channel: InMemoryChannel,
    /// From the ingress channel to the filter (replying to the branch
    /// channel).
    pub filter_subscription: Subscription,
    /// From the branch channel to the branch's subscriber.
    pub subscriber_subscription: Subscription,
}

/// The channels and Subscriptions of a Parallel.
#[derive(Clone, Debug, PartialEq)]
pub struct ParallelChildren {
    /// The ingress channel: the Parallel's address.
    pub ingress: InMemoryChannel,
    /// One per branch, in order.
    pub branches: Vec<ParallelBranchChildren>,
}

/// What every child of a flow shares: namespace, owner, channel template.
struct ChildFactory {
    namespace: Option<String>,
    owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    template: ChannelTemplateSpec,
    channel_spec: InMemoryChannelSpec,
}

impl ChildFactory {
    fn new<K: ApiObject>(
        owner: &K,
        template: Option<&ChannelTemplateSpec>,
    ) -> Result<ChildFactory, String> {
        let template = template
            .cloned()
            .unwrap_or_else(ChannelTemplateSpec::in_memory_channel);
        let channel_spec = in_memory_channel_spec(&template)?;
        Ok(ChildFactory {
            namespace: owner.meta().namespace.clone(),
            owner: controller_reference(owner),
            template,
            channel_spec,
        })
    }

    fn channel(&self, name: String) -> InMemoryChannel {
        let mut channel = InMemoryChannel::new(&name, self.channel_spec.clone());
        channel.metadata.namespace.clone_from(&self.namespace);
        channel.metadata.owner_references = Some(vec![self.owner.clone()]);
        channel
    }

    /// A reference to a child channel (`with_namespace` for destinations;
    /// a Subscription's `spec.channel` has none).
    fn channel_ref(&self, name: String, with_namespace: bool) -> KReference {
        KReference {
            kind: self.template.kind.clone(),
            namespace: if with_namespace {
                self.namespace.clone()
            } else {
                None
            },
            name,
            api_version: Some(self.template.api_version.clone()),
            ..KReference::default()
        }
    }

    fn channel_destination(&self, name: String) -> Destination {
        Destination {
            reference: Some(self.channel_ref(name, true)),
            ..Destination::default()
        }
    }

    fn subscription(&self, name: String, spec: SubscriptionSpec) -> Subscription {
        let mut sub = Subscription::new(&name, spec);
        sub.metadata.namespace.clone_from(&self.namespace);
        sub.metadata.owner_references = Some(vec![self.owner.clone()]);
        sub
    }
}

/// The children `sequence` wants, or why it cannot have them (a channel
/// template of a kind this crate does not create).
pub fn sequence_children(sequence: &Sequence) -> Result<SequenceChildren, String> {
    let factory = ChildFactory::new(sequence, sequence.spec.channel_template.as_ref())?;
    let steps = &sequence.spec.steps;
    let mut children = SequenceChildren {
        channels: Vec::with_capacity(steps.len()),
        subscriptions: Vec::with_capacity(steps.len()),
    };
    for (i, step) in steps.iter().enumerate() {
        let channel = sequence.channel_name(i);
        children.channels.push(factory.channel(channel.clone()));
        let reply = if i + 1 < steps.len() {
            Some(factory.channel_destination(sequence.channel_name(i + 1)))
        } else {
            sequence.spec.reply.clone()
        };
        children.subscriptions.push(factory.subscription(
            sequence.subscription_name(i),
            SubscriptionSpec {
                channel: factory.channel_ref(channel, false),
                subscriber: step.destination.clone(),
                reply,
                delivery: step.delivery.clone(),
            },
        ));
    }
    Ok(children)
}

/// The children `parallel` wants, or why it cannot have them (a channel
/// template of a kind this crate does not create).
pub fn parallel_children(parallel: &Parallel) -> Result<ParallelChildren, String> {
    let factory = ChildFactory::new(parallel, parallel.spec.channel_template.as_ref())?;
    let ingress = parallel.ingress_channel_name();
    let mut branches = Vec::with_capacity(parallel.spec.branches.len());
    for (i, branch) in parallel.spec.branches.iter().enumerate() {
        let channel = parallel.branch_channel_name(i);
        let (subscriber, reply) = match &branch.filter {
            Some(filter) => (
                filter.clone(),
                Some(factory.channel_destination(channel.clone())),
            ),
            None => (factory.channel_destination(channel.clone()), None),
        };
        let filter_subscription = factory.subscription(
            parallel.filter_subscription_name(i),
            SubscriptionSpec {
                channel: factory.channel_ref(ingress.clone(), false),
                subscriber,
                reply,
                delivery: None,
            },
        );
        let subscriber_subscription = factory.subscription(
            parallel.subscriber_subscription_name(i),
            SubscriptionSpec {
                channel: factory.channel_ref(channel.clone(), false),
                subscriber: branch.subscriber.clone(),
                reply: branch.reply.clone().or_else(|| parallel.spec.reply.clone()),
                delivery: branch.delivery.clone(),
            },
        );
        branches.push(ParallelBranchChildren {
            channel: factory.channel(channel),
            filter_subscription,
            subscriber_subscription,
        });
    }
    Ok(ParallelChildren {
        ingress: factory.channel(ingress),
        branches,
    })
}

/// Creates `desired` or brings the existing child in line with it:
/// `Ok(Err(_))` when an object of that name is not the owner's.
/// `adopt(existing, desired)` returns the updated object when it differs.
async fn ensure_child<K: ApiObject>(
    objects: &dyn Objects<K>,
    desired: &K,
    owner_uid: Option<&str>,
    adopt: impl Fn(&K, &K) -> Option<K>,
) -> Result<Result<K, String>, StoreError> {
    let key = desired.key();
    match objects.get(key.namespace(), &key.name).await {
        Err(e) if e.is_not_found() => {
            let created = objects.create(desired).await?;
            debug!(kind = %K::kind_name(), name = %key.name, "child created");
            Ok(Ok(created))
        }
        Err(e) => Err(e),
        Ok(existing) if !is_controlled_by(existing.meta(), owner_uid) => Ok(Err(format!(
            "{} {key} exists and is not owned by this flow",
            K::kind_name()
        ))),
        Ok(existing) => match adopt(&existing, desired) {
            None => Ok(Ok(existing)),
            Some(updated) => {
                let updated = objects.replace(&updated).await?;
                debug!(kind = %K::kind_name(), name = %key.name, "child updated");
                Ok(Ok(updated))
            }
        },
    }
}

/// A channel child: only the delivery options are the flow's (the
/// subscribers are the Subscriptions').
async fn ensure_channel(
    objects: &dyn Objects<InMemoryChannel>,
    desired: &InMemoryChannel,
    owner_uid: Option<&str>,
) -> Result<Result<InMemoryChannel, String>, StoreError> {
    ensure_child(objects, desired, owner_uid, |existing, desired| {
        let want = &desired.spec.channelable.delivery;
        (existing.spec.channelable.delivery != *want).then(|| {
            let mut updated = existing.clone();
            updated.spec.channelable.delivery.clone_from(want);
            updated
        })
    })
    .await
}

/// A Subscription child: its whole spec is the flow's.
async fn ensure_subscription(
    objects: &dyn Objects<Subscription>,
    desired: &Subscription,
    owner_uid: Option<&str>,
) -> Result<Result<Subscription, String>, StoreError> {
    ensure_child(objects, desired, owner_uid, |existing, desired| {
        (existing.spec != desired.spec).then(|| {
            let mut updated = existing.clone();
            updated.spec = desired.spec.clone();
            updated
        })
    })
    .await
}

/// Deletes the owner's children in `namespace` whose names are not in
/// `keep`.
async fn delete_extras<K: ApiObject>(
    objects: &dyn Objects<K>,
    namespace: &str,
    owner_uid: Option<&str>,
    keep: &HashSet<String>,
) -> Result<(), StoreError> {
    for child in objects.list(Some(namespace), &Selector::default()).await? {
        let name = child.meta().name.clone().unwrap_or_default();
        if is_controlled_by(child.meta(), owner_uid)
            && child.meta().deletion_timestamp.is_none()
            && !keep.contains(&name)
        {
            match objects.delete(Some(namespace), &name).await {
                Ok(_) => debug!(kind = %K::kind_name(), %name, "extra child deleted"),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

fn object_reference<K: ApiObject>(object: &K) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version_name()),
        kind: Some(K::kind_name()),
        name: object.meta().name.clone(),
        namespace: object.meta().namespace.clone(),
        ..ObjectReference::default()
    }
}

/// A child's `Ready` condition, or `Unknown`/`NoReady` when it has none.
fn ready_condition(conditions: Option<&[Condition]>, what: &str) -> Condition {
    conditions
        .and_then(|c| knative_core::condition::find(c, READY))
        .cloned()
        .unwrap_or_else(|| Condition {
            last_transition_time: Some(Time(jiff::Timestamp::now())),
            ..Condition::new(READY, ConditionStatus::Unknown)
                .with_reason("NoReady", format!("{what} does not have Ready condition"))
        })
}

fn channel_ready(channel: &InMemoryChannel) -> Condition {
    ready_condition(
        channel
            .status
            .as_ref()
            .map(|s| s.status.conditions.as_slice()),
        "Channel",
    )
}

fn subscription_ready(sub: &Subscription) -> Condition {
    ready_condition(
        sub.status.as_ref().map(|s| s.status.conditions.as_slice()),
        "Subscription",
    )
}

/// A channel's address, if it has one with a URL.
fn channel_address(channel: &InMemoryChannel) -> Option<Addressable> {
    channel
        .status
        .as_ref()
        .and_then(|s| s.address.clone())
        .filter(|a| a.url.as_deref().is_some_and(|u| !u.is_empty()))
}

/// Ensures every desired channel: each one as it is now, or why the flow
/// cannot have it.
async fn ensure_channels(
    objects: &dyn Objects<InMemoryChannel>,
    desired: &[&InMemoryChannel],
    owner_uid: Option<&str>,
) -> Result<Vec<Result<InMemoryChannel, String>>, StoreError> {
    let mut out = Vec::with_capacity(desired.len());
    for d in desired {
        out.push(ensure_channel(objects, d, owner_uid).await?);
    }
    Ok(out)
}

/// Ensures every desired Subscription: each one as it is now, or why the
/// flow cannot have it.
async fn ensure_subscriptions(
    objects: &dyn Objects<Subscription>,
    desired: &[&Subscription],
    owner_uid: Option<&str>,
) -> Result<Vec<Result<Subscription, String>>, StoreError> {
    let mut out = Vec::with_capacity(desired.len());
    for d in desired {
        out.push(ensure_subscription(objects, d, owner_uid).await?);
    }
    Ok(out)
}

fn names<'a, K: ApiObject + 'a>(objects: impl IntoIterator<Item = &'a K>) -> HashSet<String> {
    objects
        .into_iter()
        .filter_map(|o| o.meta().name.clone())
        .collect()
}

/// The `Ready` of a child the flow could not have.
fn not_owned(problem: &str) -> Condition {
    Condition::new(READY, ConditionStatus::False).with_reason("NotOwned", problem)
}

/// The `Ready` of a channel or Subscription child as got.
fn child_ready<K>(got: Option<&Result<K, String>>, ready: impl Fn(&K) -> Condition) -> Condition {
    match got {
        Some(Ok(child)) => ready(child),
        Some(Err(problem)) => not_owned(problem),
        None => Condition::new(READY, ConditionStatus::Unknown),
    }
}

// ---------------------------------------------------------------------------
// Sequence
// ---------------------------------------------------------------------------

/// Reconciles Sequences into channels and Subscriptions.
pub struct SequenceReconciler {
    sequences: Arc<dyn Objects<Sequence>>,
    channels: Arc<dyn Objects<InMemoryChannel>>,
    subscriptions: Arc<dyn Objects<Subscription>>,
}

impl std::fmt::Debug for SequenceReconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequenceReconciler").finish_non_exhaustive()
    }
}

impl SequenceReconciler {
    /// A reconciler creating its children in `channels` and
    /// `subscriptions`.
    pub fn new(
        sequences: Arc<dyn Objects<Sequence>>,
        channels: Arc<dyn Objects<InMemoryChannel>>,
        subscriptions: Arc<dyn Objects<Subscription>>,
    ) -> Self {
        SequenceReconciler {
            sequences,
            channels,
            subscriptions,
        }
    }

    /// A controller running this reconciler, also reconciling a Sequence
    /// when one of its children changes.
    pub fn into_controller(self) -> Controller<Sequence, Self> {
        let channels = Arc::clone(&self.channels);
        let subscriptions = Arc::clone(&self.subscriptions);
        Controller::new(Arc::clone(&self.sequences), Arc::new(self))
            .owns(channels)
            .owns(subscriptions)
    }

    async fn reconcile_sequence(
        &self,
        sequence: Arc<Sequence>,
        ns: String,
    ) -> Result<Action, ReconcileError> {
        if sequence.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let uid = sequence.metadata.uid.as_deref();
        let mut status = sequence.status.clone().unwrap_or_default();
        let set = Sequence::condition_set();
        let mut m = set.manage(&mut status.status.conditions);
        m.initialize();
        status.status.observed_generation = sequence.metadata.generation;
        mark_event_policies_ready(&mut m);
        match sequence_children(&sequence) {
            Err(e) => {
                m.mark_false(
                    Sequence::CONDITION_CHANNELS_READY,
                    "ChannelsNotReady",
                    &format!("Failed to reconcile channels: {e}"),
                );
            }
            Ok(children) => {
                let channels = ensure_channels(
                    &*self.channels,
                    &children.channels.iter().collect::<Vec<_>>(),
                    uid,
                )
                .await?;
                let subscriptions = ensure_subscriptions(
                    &*self.subscriptions,
                    &children.subscriptions.iter().collect::<Vec<_>>(),
                    uid,
                )
                .await?;
                delete_extras(
                    &*self.subscriptions,
                    &ns,
                    uid,
                    &names(&children.subscriptions),
                )
                .await?;
                delete_extras(&*self.channels, &ns, uid, &names(&children.channels)).await?;

                let mut all_ready = !children.channels.is_empty();
                status.channel_statuses = children
                    .channels
                    .iter()
                    .zip(&channels)
                    .map(|(desired, got)| {
                        let ready = child_ready(Some(got), channel_ready);
                        all_ready &= ready.is_true();
                        SequenceChannelStatus {
                            channel: object_reference(desired),
                            ready,
                        }
                    })
                    .collect();
                if all_ready {
                    m.mark_true(Sequence::CONDITION_CHANNELS_READY);
                } else {
                    m.mark_unknown(
                        Sequence::CONDITION_CHANNELS_READY,
                        "ChannelsNotReady",
                        "Channels are not ready yet, or there are none",
                    );
                }
                let mut all_ready = !children.subscriptions.is_empty();
                status.subscription_statuses = children
                    .subscriptions
                    .iter()
                    .zip(&subscriptions)
                    .map(|(desired, got)| {
                        let ready = child_ready(Some(got), subscription_ready);
                        all_ready &= ready.is_true();
                        SequenceSubscriptionStatus {
                            subscription: object_reference(desired),
                            ready,
                        }
                    })
                    .collect();
                if all_ready {
                    m.mark_true(Sequence::CONDITION_SUBSCRIPTIONS_READY);
                } else {
                    m.mark_unknown(
                        Sequence::CONDITION_SUBSCRIPTIONS_READY,
                        "SubscriptionsNotReady",
                        "Subscriptions are not ready yet, or there are none",
                    );
                }
                let first = channels.first().and_then(|c| c.as_ref().ok());
                match first.and_then(channel_address) {
                    Some(address) => {
                        m.mark_true(Sequence::CONDITION_ADDRESSABLE);
                        status.addresses = first
                            .and_then(|c| c.status.as_ref())
                            .map(|s| s.addresses.clone())
                            .unwrap_or_default();
                        status.address = Some(Addressable {
                            url: address.url,
                            audience: address.audience,
                            ..Addressable::default()
                        });
                    }
                    None => {
                        m.mark_unknown(
                            Sequence::CONDITION_ADDRESSABLE,
                            "emptyAddress",
                            "addressable is nil",
                        );
                        status.address = None;
                        status.addresses.clear();
                    }
                }
            }
        }
        drop(m);
        if sequence.status.as_ref() != Some(&status) {
            let mut updated = (*sequence).clone();
            updated.status = Some(status);
            if let Some(action) = write_status(&*self.sequences, &updated).await? {
                return Ok(action);
            }
        }
        Ok(Action::await_change())
    }
}

#[async_trait]
impl Reconciler<Sequence> for SequenceReconciler {
    type Error = ReconcileError;

    async fn reconcile(&self, sequence: Arc<Sequence>) -> Result<Action, ReconcileError> {
        let (ns, name) = namespace_and_name(&*sequence);
        let span = info_span!("reconcile_sequence", namespace = %ns, name = %name);
        self.reconcile_sequence(sequence, ns).instrument(span).await
    }
}

// ---------------------------------------------------------------------------
// Parallel
// ---------------------------------------------------------------------------

/// Reconciles Parallels into channels and Subscriptions.
pub struct ParallelReconciler {
    parallels: Arc<dyn Objects<Parallel>>,
    channels: Arc<dyn Objects<InMemoryChannel>>,
    subscriptions: Arc<dyn Objects<Subscription>>,
}

impl std::fmt::Debug for ParallelReconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParallelReconciler").finish_non_exhaustive()
    }
}

/// A Parallel channel's status entry: `Ready` when it is addressable (as
/// upstream judges them).
fn parallel_channel_status(
    desired: &InMemoryChannel,
    got: Option<&Result<InMemoryChannel, String>>,
) -> ParallelChannelStatus {
    let ready = child_ready(got, |c| {
        if channel_address(c).is_some() {
            Condition::new(READY, ConditionStatus::True)
        } else {
            Condition::new(READY, ConditionStatus::False)
                .with_reason("NotAddressable", "Channel is not addressable")
        }
    });
    ParallelChannelStatus {
        channel: object_reference(desired),
        ready,
    }
}

impl ParallelReconciler {
    /// A reconciler creating its children in `channels` and
    /// `subscriptions`.
    pub fn new(
        parallels: Arc<dyn Objects<Parallel>>,
        channels: Arc<dyn Objects<InMemoryChannel>>,
        subscriptions: Arc<dyn Objects<Subscription>>,
    ) -> Self {
        ParallelReconciler {
            parallels,
            channels,
            subscriptions,
        }
    }

    /// A controller running this reconciler, also reconciling a Parallel
    /// when one of its children changes.
    pub fn into_controller(self) -> Controller<Parallel, Self> {
        let channels = Arc::clone(&self.channels);
        let subscriptions = Arc::clone(&self.subscriptions);
        Controller::new(Arc::clone(&self.parallels), Arc::new(self))
            .owns(channels)
            .owns(subscriptions)
    }

    async fn reconcile_parallel(
        &self,
        parallel: Arc<Parallel>,
        ns: String,
    ) -> Result<Action, ReconcileError> {
        if parallel.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let uid = parallel.metadata.uid.as_deref();
        let mut status = parallel.status.clone().unwrap_or_default();
        let set = Parallel::condition_set();
        let mut m = set.manage(&mut status.status.conditions);
        m.initialize();
        status.status.observed_generation = parallel.metadata.generation;
        mark_event_policies_ready(&mut m);
        match parallel_children(&parallel) {
            Err(e) => {
                m.mark_false(
                    Parallel::CONDITION_CHANNELS_READY,
                    "ChannelsNotReady",
                    &format!("Failed to reconcile channels: {e}"),
                );
            }
            Ok(children) => {
                let desired_channels: Vec<&InMemoryChannel> = std::iter::once(&children.ingress)
                    .chain(children.branches.iter().map(|b| &b.channel))
                    .collect();
                let desired_subscriptions: Vec<&Subscription> = children
                    .branches
                    .iter()
                    .flat_map(|b| [&b.filter_subscription, &b.subscriber_subscription])
                    .collect();
                let channels = ensure_channels(&*self.channels, &desired_channels, uid).await?;
                let subscriptions =
                    ensure_subscriptions(&*self.subscriptions, &desired_subscriptions, uid).await?;
                delete_extras(
                    &*self.subscriptions,
                    &ns,
                    uid,
                    &names(desired_subscriptions.iter().copied()),
                )
                .await?;
                delete_extras(
                    &*self.channels,
                    &ns,
                    uid,
                    &names(desired_channels.iter().copied()),
                )
                .await?;

                let ingress_got = channels.first();
                let ingress_status = parallel_channel_status(&children.ingress, ingress_got);
                let mut channels_ready = ingress_status.ready.is_true();
                let mut subscriptions_ready = !children.branches.is_empty();
                let sub_status = |i: usize, desired: &Subscription| {
                    let ready = child_ready(subscriptions.get(i), subscription_ready);
                    SequenceSubscriptionStatus {
                        subscription: object_reference(desired),
                        ready,
                    }
                };
                status.branch_statuses = children
                    .branches
                    .iter()
                    .enumerate()
                    .map(|(i, branch)| {
                        let filter_channel_status =
                            parallel_channel_status(&branch.channel, channels.get(i + 1));
                        channels_ready &= filter_channel_status.ready.is_true();
                        let filter_subscription_status =
                            sub_status(2 * i, &branch.filter_subscription);
                        let subscriber_subscription_status =
                            sub_status(2 * i + 1, &branch.subscriber_subscription);
                        subscriptions_ready &= filter_subscription_status.ready.is_true()
                            && subscriber_subscription_status.ready.is_true();
                        ParallelBranchStatus {
                            filter_subscription_status,
                            filter_channel_status,
                            subscriber_subscription_status,
                        }
                    })
                    .collect();
                status.ingress_channel_status = Some(ingress_status);
                if channels_ready {
                    m.mark_true(Parallel::CONDITION_CHANNELS_READY);
                } else {
                    m.mark_false(
                        Parallel::CONDITION_CHANNELS_READY,
                        "ChannelsNotReady",
                        "Channels are not ready yet, or there are none",
                    );
                }
                if subscriptions_ready {
                    m.mark_true(Parallel::CONDITION_SUBSCRIPTIONS_READY);
                } else {
                    m.mark_false(
                        Parallel::CONDITION_SUBSCRIPTIONS_READY,
                        "SubscriptionsNotReady",
                        "Subscriptions are not ready yet, or there are none",
                    );
                }
                let ingress_got = ingress_got.and_then(|c| c.as_ref().ok());
                match ingress_got.and_then(channel_address) {
                    Some(address) => {
                        m.mark_true(Parallel::CONDITION_ADDRESSABLE);
                        status.addresses = ingress_got
                            .and_then(|c| c.status.as_ref())
                            .map(|s| s.addresses.clone())
                            .unwrap_or_default();
                        status.address = Some(address);
                    }
                    None => {
                        m.mark_false(
                            Parallel::CONDITION_ADDRESSABLE,
                            "emptyAddress",
                            "addressable is nil",
                        );
                        status.address = None;
                        status.addresses.clear();
                    }
                }
            }
        }
        drop(m);
        if parallel.status.as_ref() != Some(&status) {
            let mut updated = (*parallel).clone();
            updated.status = Some(status);
            if let Some(action) = write_status(&*self.parallels, &updated).await? {
                return Ok(action);
            }
        }
        Ok(Action::await_change())
    }
}

#[async_trait]
impl Reconciler<Parallel> for ParallelReconciler {
    type Error = ReconcileError;

    async fn reconcile(&self, parallel: Arc<Parallel>) -> Result<Action, ReconcileError> {
        let (ns, name) = namespace_and_name(&*parallel);
        let span = info_span!("reconcile_parallel", namespace = %ns, name = %name);
        self.reconcile_parallel(parallel, ns).instrument(span).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ChannelableStatus;
    use knative_core::condition::find;
    use knative_core::store::InMemoryStore;

    fn sequence(yaml: &str) -> Sequence {
        let mut s: Sequence = serde_yaml::from_str(yaml).expect("sequence");
        s.metadata.uid = Some("seq-uid".into());
        s
    }

    fn parallel(yaml: &str) -> Parallel {
        let mut p: Parallel = serde_yaml::from_str(yaml).expect("parallel");
        p.metadata.uid = Some("par-uid".into());
        p
    }

    fn ref_name(d: Option<&Destination>) -> Option<&str> {
        d.and_then(|d| d.reference.as_ref())
            .map(|r| r.name.as_str())
    }

    #[test]
    fn a_sequence_chains_steps_through_channels_and_ends_at_its_reply() {
        let s = sequence(
            r#"
metadata: {name: seq, namespace: ns}
spec:
  steps:
    - uri: http://a
    - uri: http://b
      delivery: {retry: 2}
    - uri: http://c
  reply: {uri: http://end}
"#,
        );
        let children = sequence_children(&s).expect("children");
        let names: Vec<_> = children
            .channels
            .iter()
            .map(|c| c.metadata.name.as_deref().unwrap_or_default())
            .collect();
        assert_eq!(
            names,
            [
                "seq-kn-sequence-0",
                "seq-kn-sequence-1",
                "seq-kn-sequence-2"
            ]
        );
        for c in &children.channels {
            assert_eq!(c.metadata.namespace.as_deref(), Some("ns"));
            let owners = c.metadata.owner_references.as_deref().unwrap_or_default();
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].kind, "Sequence");
            assert_eq!(owners[0].uid, "seq-uid");
            assert_eq!(owners[0].controller, Some(true));
        }
        let subs = &children.subscriptions;
        assert_eq!(subs.len(), 3);
        assert_eq!(subs[0].metadata.name.as_deref(), Some("seq-kn-sequence-0"));
        assert_eq!(subs[0].spec.channel.name, "seq-kn-sequence-0");
        assert_eq!(subs[0].spec.channel.kind, "InMemoryChannel");
        assert_eq!(subs[0].spec.channel.namespace, None);
        assert_eq!(subs[0].spec.subscriber.uri.as_deref(), Some("http://a"));
        assert_eq!(
            ref_name(subs[0].spec.reply.as_ref()),
            Some("seq-kn-sequence-1")
        );
        assert_eq!(
            subs[0]
                .spec
                .reply
                .as_ref()
                .and_then(|r| r.reference.as_ref())
                .and_then(|r| r.namespace.as_deref()),
            Some("ns")
        );
        assert_eq!(
            subs[1].spec.delivery.as_ref().and_then(|d| d.retry),
            Some(2)
        );
        assert_eq!(
            ref_name(subs[1].spec.reply.as_ref()),
            Some("seq-kn-sequence-2")
        );
        assert_eq!(
            subs[2].spec.reply.as_ref().and_then(|r| r.uri.as_deref()),
            Some("http://end")
        );
    }

    #[test]
    fn a_sequence_without_reply_drops_the_last_reply_and_rejects_unknown_channel_kinds() {
        let s = sequence("metadata: {name: s, namespace: ns}\nspec:\n  steps: [{uri: http://a}]\n");
        let children = sequence_children(&s).expect("children");
        assert_eq!(children.subscriptions[0].spec.reply, None);
        let kafka = sequence(
            "metadata: {name: s, namespace: ns}\nspec:\n  channelTemplate: {apiVersion: messaging.knative.dev/v1beta1, kind: KafkaChannel}\n  steps: [{uri: http://a}]\n",
        );
        let err = sequence_children(&kafka).expect_err("unsupported");
        assert!(err.contains("KafkaChannel"), "{err}");
    }

    #[test]
    fn a_channel_template_spec_goes_to_every_channel() {
        let s = sequence(
            "metadata: {name: s, namespace: ns}\nspec:\n  channelTemplate:\n    apiVersion: messaging.knative.dev/v1\n    kind: InMemoryChannel\n    spec: {delivery: {retry: 4}}\n  steps: [{uri: http://a}, {uri: http://b}]\n",
        );
        let children = sequence_children(&s).expect("children");
        for c in &children.channels {
            assert_eq!(
                c.spec.channelable.delivery.as_ref().and_then(|d| d.retry),
                Some(4)
            );
        }
    }

    #[test]
    fn a_parallel_filters_on_the_ingress_and_delivers_on_branch_channels() {
        let p = parallel(
            r#"
metadata: {name: par, namespace: ns}
spec:
  branches:
    - filter: {uri: http://filter}
      subscriber: {uri: http://one}
    - subscriber: {uri: http://two}
      reply: {uri: http://two-reply}
      delivery: {retry: 1}
  reply: {uri: http://reply}
"#,
        );
        let children = parallel_children(&p).expect("children");
        assert_eq!(
            children.ingress.metadata.name.as_deref(),
            Some("par-kn-parallel")
        );
        let b0 = &children.branches[0];
        assert_eq!(
            b0.channel.metadata.name.as_deref(),
            Some("par-kn-parallel-0")
        );
        assert_eq!(
            b0.filter_subscription.metadata.name.as_deref(),
            Some("par-kn-parallel-filter-0")
        );
        assert_eq!(b0.filter_subscription.spec.channel.name, "par-kn-parallel");
        assert_eq!(
            b0.filter_subscription.spec.subscriber.uri.as_deref(),
            Some("http://filter")
        );
        assert_eq!(
            ref_name(b0.filter_subscription.spec.reply.as_ref()),
            Some("par-kn-parallel-0")
        );
        assert_eq!(
            b0.subscriber_subscription.metadata.name.as_deref(),
            Some("par-kn-parallel-0")
        );
        assert_eq!(
            b0.subscriber_subscription.spec.channel.name,
            "par-kn-parallel-0"
        );
        assert_eq!(
            b0.subscriber_subscription
                .spec
                .reply
                .as_ref()
                .and_then(|r| r.uri.as_deref()),
            Some("http://reply")
        );
        // No filter: the branch channel itself is the subscriber.
        let b1 = &children.branches[1];
        assert_eq!(
            ref_name(Some(&b1.filter_subscription.spec.subscriber)),
            Some("par-kn-parallel-1")
        );
        assert_eq!(b1.filter_subscription.spec.reply, None);
        assert_eq!(
            b1.subscriber_subscription
                .spec
                .reply
                .as_ref()
                .and_then(|r| r.uri.as_deref()),
            Some("http://two-reply")
        );
        assert_eq!(
            b1.subscriber_subscription
                .spec
                .delivery
                .as_ref()
                .and_then(|d| d.retry),
            Some(1)
        );
        for sub in [&b0.filter_subscription, &b1.subscriber_subscription] {
            let owners = sub.metadata.owner_references.as_deref().unwrap_or_default();
            assert_eq!(owners[0].kind, "Parallel");
            assert_eq!(owners[0].uid, "par-uid");
        }
    }

    fn addressable(name: &str, url: &str) -> Addressable {
        Addressable {
            name: Some(name.into()),
            url: Some(url.into()),
            ..Addressable::default()
        }
    }

    #[tokio::test]
    async fn a_sequence_takes_every_address_of_its_first_channel() {
        let store = InMemoryStore::new();
        let sequences: Arc<dyn Objects<Sequence>> = Arc::new(store.objects());
        let channels: Arc<dyn Objects<InMemoryChannel>> = Arc::new(store.objects());
        let subscriptions: Arc<dyn Objects<Subscription>> = Arc::new(store.objects());
        let reconciler = SequenceReconciler::new(
            Arc::clone(&sequences),
            Arc::clone(&channels),
            Arc::clone(&subscriptions),
        );
        let created = sequences
            .create(&sequence(
                "metadata: {name: seq, namespace: ns}\nspec:\n  steps: [{uri: 'http://a'}, {uri: 'http://b'}]\n",
            ))
            .await
            .expect("created");
        reconciler
            .reconcile(Arc::new(created))
            .await
            .expect("reconciled");
        let status = |s: Sequence| s.status.expect("status");
        let seq = sequences.get(Some("ns"), "seq").await.expect("sequence");
        let before = status(seq);
        assert!(before.addresses.is_empty());
        assert_eq!(before.address, None);
        // Upstream marks EventPoliciesReady True while OIDC is off.
        let policies =
            find(&before.status.conditions, "EventPoliciesReady").expect("EventPoliciesReady");
        assert!(policies.is_true());
        assert_eq!(policies.reason, "OIDCDisabled");
        assert_eq!(
            policies.message,
            "Feature \"authentication-oidc\" must be enabled to support Authorization"
        );

        let http = addressable("http", "http://ingress/ns/seq-kn-sequence-0");
        let https = addressable("https", "https://ingress/ns/seq-kn-sequence-0");
        let mut first = channels
            .get(Some("ns"), "seq-kn-sequence-0")
            .await
            .expect("channel 0");
        first.status = Some(ChannelableStatus {
            address: Some(http.clone()),
            addresses: vec![http.clone(), https.clone()],
            ..ChannelableStatus::default()
        });
        channels.replace_status(&first).await.expect("status");
        let mut second = channels
            .get(Some("ns"), "seq-kn-sequence-1")
            .await
            .expect("channel 1");
        second.status = Some(ChannelableStatus {
            address: Some(addressable("http", "http://ingress/ns/seq-kn-sequence-1")),
            ..ChannelableStatus::default()
        });
        channels.replace_status(&second).await.expect("status");

        let seq = sequences.get(Some("ns"), "seq").await.expect("sequence");
        reconciler
            .reconcile(Arc::new(seq))
            .await
            .expect("reconciled");
        let seq = sequences.get(Some("ns"), "seq").await.expect("sequence");
        let after = status(seq);
        assert_eq!(after.addresses, [http, https]);
        assert_eq!(
            after.address,
            Some(Addressable {
                url: Some("http://ingress/ns/seq-kn-sequence-0".into()),
                ..Addressable::default()
            })
        );
        assert!(
            find(&after.status.conditions, "Addressable").is_some_and(Condition::is_true),
            "{:?}",
            after.status.conditions
        );
    }
}
