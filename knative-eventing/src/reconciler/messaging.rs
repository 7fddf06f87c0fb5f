//! The reconcilers of `messaging.knative.dev` (`specs/EVENTING.md §4`,
//! delivery `§5`, destinations `§6`).
//!
//! - [`InMemoryChannelReconciler`] programs the [`Channels`] data plane:
//!   the channel with its delivery options and resolved dead-letter sink,
//!   and one dispatcher per `spec.subscribers[]` entry (keyed by the
//!   Subscription's uid; entries no longer listed are stopped). Its status
//!   has the address `{ingress}/{namespace}/{name}`, `subscribers[]`
//!   (`ready: True` once programmed) and upstream's conditions
//!   (`ServiceReady`, `EndpointsReady`, `ChannelServiceReady`,
//!   `Addressable`, `DeadLetterSinkResolved`, `EventPoliciesReady`; the
//!   informational `DispatcherReady`), all `True` when programmed.
//! - [`ChannelReconciler`] creates the backing channel from
//!   `spec.channelTemplate` (an InMemoryChannel of the same name, owned by
//!   the Channel, with the Channel's subscribers and delivery; other kinds
//!   are reported with `BackingChannelReady: False`, reason
//!   `ChannelFailure`) and mirrors its Ready condition
//!   (`BackingChannelReady`), address (`Addressable`, reason
//!   `EmptyHostname` when it has none), subscribers and dead-letter sink
//!   into the Channel's status, with `status.channel` naming it.
//!   `EventPoliciesReady` is `True`.
//! - [`SubscriptionReconciler`] resolves the channel (a Channel or an
//!   InMemoryChannel), the subscriber, the reply and the dead-letter sink
//!   (`ReferencesResolved`, reasons `ChannelReferenceFailed`,
//!   `SubscriberResolveFailed`, `ReplyResolveFailed`,
//!   `DeadLetterSinkResolveFailed` as upstream), writes
//!   `status.physicalSubscription`, adds itself to the channel's
//!   `spec.subscribers` by uid (`AddedToChannel`; reason
//!   `PhysicalChannelSyncFailed` when the write fails) and waits for the
//!   channel to list it ready in `status.subscribers` at its generation
//!   (`ChannelReady`; reason `SubscriptionNotMarkedReadyByChannel`
//!   otherwise). `OIDCIdentityCreated` is `True` with reason
//!   `authentication-oidc feature disabled`. Its finalizer takes it out of
//!   the channel again.
//!
//! OIDC and authorization are not implemented, so as upstream with the
//! `authentication-oidc` feature off, `EventPoliciesReady` is `True` with
//! reason `OIDCDisabled` (message `Feature "authentication-oidc" must be
//! enabled to support Authorization`) on channels and flows.
//!
//! The conditions mean what upstream's mean (`AddedToChannel`: the entry
//! is in the channel's spec; `ChannelReady`: the channel reports the
//! subscriber ready), so `Ready` is `True` exactly when events flow.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use knative_core::condition::{ConditionManager, ConditionStatus, READY};
use knative_core::runtime::{Action, Controller, Reconciler};
use knative_core::store::{ObjectKey, Objects, StoreError};
use tracing::{Instrument, debug, info_span};

use super::{
    AddressResolver, RECHECK, ReconcileError, controller_reference, has_finalizer,
    is_controlled_by, namespace_and_name, resolve_destination, set_finalizer, write_status,
};
use crate::api::messaging::{GROUP, IN_MEMORY_CHANNEL_KIND};
use crate::api::{
    Addressable, Channel, ChannelTemplateSpec, ChannelableSpec, ChannelableStatus, DeliverySpec,
    DeliveryStatus, Destination, InMemoryChannel, InMemoryChannelSpec, KReference,
    PhysicalSubscription, SubscriberSpec, SubscriberStatus, Subscription,
};
use crate::channel::{Channels, SubscriptionRoute};
use crate::log::LogError;

/// The finalizer of InMemoryChannels.
pub const IN_MEMORY_CHANNEL_FINALIZER: &str = "inmemorychannels.messaging.knative.dev";
/// The finalizer of Subscriptions.
pub const SUBSCRIPTION_FINALIZER: &str = "subscriptions.messaging.knative.dev";

/// The reason of `EventPoliciesReady: True` on channels and flows:
/// EventPolicies need the OIDC feature, which this crate does not
/// implement (upstream's reason when `authentication-oidc` is disabled).
pub(crate) const EVENT_POLICIES_OIDC_DISABLED_REASON: &str = "OIDCDisabled";
/// The message that goes with [`EVENT_POLICIES_OIDC_DISABLED_REASON`].
pub(crate) const EVENT_POLICIES_OIDC_DISABLED_MESSAGE: &str =
    "Feature \"authentication-oidc\" must be enabled to support Authorization";
/// The reason of a Subscription's `OIDCIdentityCreated: True`: no identity
/// is needed without the OIDC feature (upstream's reason when
/// `authentication-oidc` is disabled; the message is empty).
pub(crate) const OIDC_IDENTITY_FEATURE_DISABLED_REASON: &str =
    "authentication-oidc feature disabled";

/// Marks `EventPoliciesReady` `True` as upstream does while authorization
/// is off: no EventPolicy can apply without OIDC.
pub(crate) fn mark_event_policies_ready(m: &mut ConditionManager<'_>) {
    m.mark_true_with_reason(
        crate::api::messaging::CONDITION_EVENT_POLICIES_READY,
        EVENT_POLICIES_OIDC_DISABLED_REASON,
        EVENT_POLICIES_OIDC_DISABLED_MESSAGE,
    );
}

/// `Some(s)` for a non-empty string.
fn non_empty(s: Option<&String>) -> Option<String> {
    s.filter(|s| !s.is_empty()).cloned()
}

/// The data-plane key of subscriber entry `index`: its uid, else its name,
/// else its position.
fn subscriber_key(entry: &SubscriberSpec, index: usize) -> String {
    non_empty(entry.uid.as_ref())
        .or_else(|| non_empty(entry.name.as_ref()))
        .unwrap_or_else(|| format!("subscriber-{index}"))
}

/// Whether a template names an InMemoryChannel (`messaging.knative.dev`,
/// any version).
fn is_in_memory_channel_template(template: &ChannelTemplateSpec) -> bool {
    template.kind == IN_MEMORY_CHANNEL_KIND
        && crate::api::duck::group_of(&template.api_version) == GROUP
}

/// The spec an InMemoryChannel gets from `template`: its `spec` read as an
/// InMemoryChannel spec, or why that is impossible.
pub(crate) fn in_memory_channel_spec(
    template: &ChannelTemplateSpec,
) -> Result<InMemoryChannelSpec, String> {
    if !is_in_memory_channel_template(template) {
        return Err(format!(
            "channel template kind {:?} (apiVersion {:?}) is not supported: only {GROUP} {IN_MEMORY_CHANNEL_KIND} channels can be created",
            template.kind, template.api_version
        ));
    }
    match &template.spec {
        None => Ok(InMemoryChannelSpec::default()),
        Some(spec) => serde_json::from_value(spec.clone()).map_err(|e| {
            format!("the channel template's spec is not an InMemoryChannel spec: {e}")
        }),
    }
}

/// Resolves the dead-letter sink of `delivery`: `Ok(None)` when none is
/// configured.
async fn resolve_dead_letter_sink(
    resolver: &dyn AddressResolver,
    delivery: Option<&DeliverySpec>,
    namespace: &str,
) -> Result<Option<String>, String> {
    match delivery.and_then(|d| d.dead_letter_sink.as_ref()) {
        None => Ok(None),
        Some(d) => resolve_destination(resolver, d, namespace).await.map(Some),
    }
}

// ---------------------------------------------------------------------------
// InMemoryChannel
// ---------------------------------------------------------------------------

/// Reconciles InMemoryChannels into the [`Channels`] data plane.
pub struct InMemoryChannelReconciler {
    channels: Arc<dyn Objects<InMemoryChannel>>,
    data_plane: Channels,
    resolver: Arc<dyn AddressResolver>,
    ingress_url: String,
}

impl std::fmt::Debug for InMemoryChannelReconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryChannelReconciler")
            .field("ingress_url", &self.ingress_url)
            .finish_non_exhaustive()
    }
}

impl InMemoryChannelReconciler {
    /// A reconciler programming `data_plane`, whose ingress listens at
    /// `ingress_url` (e.g. `http://127.0.0.1:8081`).
    pub fn new(
        channels: Arc<dyn Objects<InMemoryChannel>>,
        data_plane: Channels,
        resolver: Arc<dyn AddressResolver>,
        ingress_url: impl Into<String>,
    ) -> Self {
        InMemoryChannelReconciler {
            channels,
            data_plane,
            resolver,
            ingress_url: ingress_url.into(),
        }
    }

    /// A controller running this reconciler.
    pub fn into_controller(self) -> Controller<InMemoryChannel, Self> {
        Controller::new(Arc::clone(&self.channels), Arc::new(self))
    }

    async fn reconcile_channel(
        &self,
        imc: Arc<InMemoryChannel>,
        ns: String,
        name: String,
    ) -> Result<Action, ReconcileError> {
        if imc.metadata.deletion_timestamp.is_some() {
            if has_finalizer(&*imc, IN_MEMORY_CHANNEL_FINALIZER) {
                match self.data_plane.remove_channel(&ns, &name).await {
                    Ok(()) | Err(LogError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                set_finalizer(&*self.channels, &*imc, IN_MEMORY_CHANNEL_FINALIZER, false).await?;
                debug!("removed from the data plane");
            }
            return Ok(Action::await_change());
        }
        if !has_finalizer(&*imc, IN_MEMORY_CHANNEL_FINALIZER) {
            set_finalizer(&*self.channels, &*imc, IN_MEMORY_CHANNEL_FINALIZER, true).await?;
            return Ok(Action::await_change());
        }
        let spec = &imc.spec.channelable;
        let mut status = imc.status.clone().unwrap_or_default();
        let set = InMemoryChannel::condition_set();
        let mut m = set.manage(&mut status.status.conditions);
        m.initialize();
        status.status.observed_generation = imc.metadata.generation;
        let mut requeue = None;

        let dls = match resolve_dead_letter_sink(&*self.resolver, spec.delivery.as_ref(), &ns).await
        {
            Ok(None) => {
                m.mark_true_with_reason(
                    InMemoryChannel::CONDITION_DEAD_LETTER_SINK_RESOLVED,
                    "DeadLetterSinkNotConfigured",
                    "No dead letter sink is configured.",
                );
                None
            }
            Ok(Some(url)) => {
                m.mark_true(InMemoryChannel::CONDITION_DEAD_LETTER_SINK_RESOLVED);
                Some(url)
            }
            Err(e) => {
                m.mark_false(
                    InMemoryChannel::CONDITION_DEAD_LETTER_SINK_RESOLVED,
                    "Unable to get the DeadLetterSink's URI",
                    &e,
                );
                requeue = Some(RECHECK);
                None
            }
        };
        status.delivery = DeliveryStatus {
            dead_letter_sink_uri: dls.clone(),
            ..DeliveryStatus::default()
        };
        self.data_plane
            .upsert_channel(&ns, &name, spec.delivery.clone(), dls)
            .await?;

        let mut subscribers = Vec::with_capacity(spec.subscribers.len());
        let mut wanted = HashSet::new();
        for (i, entry) in spec.subscribers.iter().enumerate() {
            let key = subscriber_key(entry, i);
            wanted.insert(key.clone());
            let (ready, message) =
                match resolve_dead_letter_sink(&*self.resolver, entry.delivery.as_ref(), &ns).await
                {
                    Ok(dead_letter_sink) => {
                        let route = SubscriptionRoute {
                            subscriber: non_empty(entry.subscriber_uri.as_ref()),
                            reply: non_empty(entry.reply_uri.as_ref()),
                            delivery: entry.delivery.clone(),
                            dead_letter_sink,
                        };
                        self.data_plane
                            .upsert_subscription(&ns, &name, &key, route)
                            .await?;
                        (ConditionStatus::True, None)
                    }
                    Err(e) => {
                        requeue = Some(RECHECK);
                        (
                            ConditionStatus::False,
                            Some(format!("unable to resolve the dead letter sink: {e}")),
                        )
                    }
                };
            subscribers.push(SubscriberStatus {
                uid: entry.uid.clone(),
                observed_generation: entry.generation,
                ready,
                message,
            });
        }
        for existing in self.data_plane.subscriptions(&ns, &name) {
            if !wanted.contains(&existing) {
                self.data_plane
                    .remove_subscription(&ns, &name, &existing)
                    .await?;
                debug!(subscription = %existing, "subscription removed");
            }
        }
        status.subscribers = subscribers;

        for c in [
            InMemoryChannel::CONDITION_DISPATCHER_READY,
            InMemoryChannel::CONDITION_SERVICE_READY,
            InMemoryChannel::CONDITION_ENDPOINTS_READY,
            InMemoryChannel::CONDITION_CHANNEL_SERVICE_READY,
        ] {
            m.mark_true(c);
        }
        mark_event_policies_ready(&mut m);
        let url = format!("{}/{ns}/{name}", self.ingress_url.trim_end_matches('/'));
        m.mark_true(InMemoryChannel::CONDITION_ADDRESSABLE);
        drop(m);
        let address = Addressable {
            name: Some("http".to_owned()),
            url: Some(url),
            ..Addressable::default()
        };
        status.addresses = vec![address.clone()];
        status.address = Some(address);

        if imc.status.as_ref() != Some(&status) {
            let mut updated = (*imc).clone();
            updated.status = Some(status);
            if let Some(action) = write_status(&*self.channels, &updated).await? {
                return Ok(action);
            }
        }
        debug!("in-memory channel reconciled");
        Ok(requeue.map_or_else(Action::await_change, Action::requeue_after))
    }
}

#[async_trait]
impl Reconciler<InMemoryChannel> for InMemoryChannelReconciler {
    type Error = ReconcileError;

    async fn reconcile(&self, imc: Arc<InMemoryChannel>) -> Result<Action, ReconcileError> {
        let (ns, name) = namespace_and_name(&*imc);
        let span = info_span!("reconcile_in_memory_channel", namespace = %ns, name = %name);
        self.reconcile_channel(imc, ns, name).instrument(span).await
    }
}

// ---------------------------------------------------------------------------
// Channel
// ---------------------------------------------------------------------------

/// Reconciles Channels: creates their backing InMemoryChannel and mirrors
/// its status.
pub struct ChannelReconciler {
    channels: Arc<dyn Objects<Channel>>,
    in_memory_channels: Arc<dyn Objects<InMemoryChannel>>,
}

impl std::fmt::Debug for ChannelReconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelReconciler").finish_non_exhaustive()
    }
}

/// The backing InMemoryChannel `channel` wants, or why it cannot have one.
fn desired_backing_channel(channel: &Channel) -> Result<InMemoryChannel, String> {
    let template = channel
        .spec
        .channel_template
        .clone()
        .unwrap_or_else(ChannelTemplateSpec::in_memory_channel);
    let mut spec = in_memory_channel_spec(&template)?;
    spec.channelable.subscribers = channel.spec.channelable.subscribers.clone();
    if channel.spec.channelable.delivery.is_some() {
        spec.channelable
            .delivery
            .clone_from(&channel.spec.channelable.delivery);
    }
    let mut imc = InMemoryChannel::new(channel.metadata.name.as_deref().unwrap_or_default(), spec);
    imc.metadata
        .namespace
        .clone_from(&channel.metadata.namespace);
    imc.metadata.labels.clone_from(&channel.metadata.labels);
    imc.metadata.owner_references = Some(vec![controller_reference(channel)]);
    Ok(imc)
}

impl ChannelReconciler {
    /// A reconciler creating InMemoryChannels in `in_memory_channels`.
    pub fn new(
        channels: Arc<dyn Objects<Channel>>,
        in_memory_channels: Arc<dyn Objects<InMemoryChannel>>,
    ) -> Self {
        ChannelReconciler {
            channels,
            in_memory_channels,
        }
    }

    /// A controller running this reconciler, also reconciling a Channel
    /// when its backing channel changes.
    pub fn into_controller(self) -> Controller<Channel, Self> {
        let backing = Arc::clone(&self.in_memory_channels);
        Controller::new(Arc::clone(&self.channels), Arc::new(self)).owns(backing)
    }

    /// Creates or updates the backing channel; `Err` explains a channel
    /// the Channel cannot have.
    async fn ensure_backing(
        &self,
        channel: &Channel,
        ns: &str,
        name: &str,
    ) -> Result<Result<InMemoryChannel, String>, StoreError> {
        let desired = match desired_backing_channel(channel) {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        match self.in_memory_channels.get(Some(ns), name).await {
            Err(e) if e.is_not_found() => {
                let created = self.in_memory_channels.create(&desired).await?;
                debug!("backing channel created");
                Ok(Ok(created))
            }
            Err(e) => Err(e),
            Ok(existing) => {
                if !is_controlled_by(&existing.metadata, channel.metadata.uid.as_deref()) {
                    return Ok(Err(format!(
                        "InMemoryChannel {ns}/{name} exists and is not controlled by this Channel"
                    )));
                }
                if existing.spec == desired.spec {
                    return Ok(Ok(existing));
                }
                let mut updated = existing;
                updated.spec = desired.spec;
                Ok(Ok(self.in_memory_channels.replace(&updated).await?))
            }
        }
    }

    async fn reconcile_channel(
        &self,
        channel: Arc<Channel>,
        ns: String,
        name: String,
    ) -> Result<Action, ReconcileError> {
        if channel.metadata.deletion_timestamp.is_some() {
            // The backing channel is owned: garbage collection removes it.
            return Ok(Action::await_change());
        }
        let mut status = channel.status.clone().unwrap_or_default();
        let set = Channel::condition_set();
        let mut m = set.manage(&mut status.channelable.status.conditions);
        m.initialize();
        status.channelable.status.observed_generation = channel.metadata.generation;
        mark_event_policies_ready(&mut m);
        let template = channel
            .spec
            .channel_template
            .clone()
            .unwrap_or_else(ChannelTemplateSpec::in_memory_channel);
        status.channel = Some(KReference {
            kind: template.kind.clone(),
            namespace: Some(ns.clone()),
            name: name.clone(),
            api_version: Some(template.api_version.clone()),
            ..KReference::default()
        });
        let mut requeue = None;
        match self.ensure_backing(&channel, &ns, &name).await {
            Err(e) => return Err(e.into()),
            Ok(Err(why)) => {
                m.mark_false(
                    Channel::CONDITION_BACKING_CHANNEL_READY,
                    "ChannelFailure",
                    &why,
                );
                m.mark_false(
                    Channel::CONDITION_ADDRESSABLE,
                    "EmptyHostname",
                    "hostname is the empty string",
                );
                status.channelable.address = None;
                status.channelable.addresses.clear();
                status.channelable.subscribers.clear();
                requeue = Some(RECHECK);
            }
            Ok(Ok(backing)) => {
                let backing: ChannelableStatus = backing.status.unwrap_or_default();
                match backing.status.condition(READY) {
                    None => m.mark_unknown(
                        Channel::CONDITION_BACKING_CHANNEL_READY,
                        "BackingChannelNotConfigured",
                        "BackingChannel has not yet been reconciled.",
                    ),
                    Some(c) if c.is_true() => m.mark_true(Channel::CONDITION_BACKING_CHANNEL_READY),
                    Some(c) if c.is_false() => m.mark_false(
                        Channel::CONDITION_BACKING_CHANNEL_READY,
                        &c.reason,
                        &c.message,
                    ),
                    Some(c) => m.mark_unknown(
                        Channel::CONDITION_BACKING_CHANNEL_READY,
                        &c.reason,
                        &c.message,
                    ),
                }
                let has_url = backing
                    .address
                    .as_ref()
                    .and_then(|a| a.url.as_deref())
                    .is_some_and(|u| !u.is_empty());
                if has_url {
                    m.mark_true(Channel::CONDITION_ADDRESSABLE);
                } else {
                    m.mark_false(
                        Channel::CONDITION_ADDRESSABLE,
                        "EmptyHostname",
                        "hostname is the empty string",
                    );
                }
                if backing.delivery.dead_letter_sink_uri.is_some() {
                    m.mark_true(Channel::CONDITION_DEAD_LETTER_SINK_RESOLVED);
                } else {
                    m.mark_true_with_reason(
                        Channel::CONDITION_DEAD_LETTER_SINK_RESOLVED,
                        "DeadLetterSinkNotConfigured",
                        "No dead letter sink is configured.",
                    );
                }
                status.channelable.address = backing.address;
                status.channelable.addresses = backing.addresses;
                status.channelable.subscribers = backing.subscribers;
                status.channelable.delivery = backing.delivery;
            }
        }
        drop(m);
        if channel.status.as_ref() != Some(&status) {
            let mut updated = (*channel).clone();
            updated.status = Some(status);
            if let Some(action) = write_status(&*self.channels, &updated).await? {
                return Ok(action);
            }
        }
        Ok(requeue.map_or_else(Action::await_change, Action::requeue_after))
    }
}

#[async_trait]
impl Reconciler<Channel> for ChannelReconciler {
    type Error = ReconcileError;

    async fn reconcile(&self, channel: Arc<Channel>) -> Result<Action, ReconcileError> {
        let (ns, name) = namespace_and_name(&*channel);
        let span = info_span!("reconcile_channel", namespace = %ns, name = %name);
        self.reconcile_channel(channel, ns, name)
            .instrument(span)
            .await
    }
}

// ---------------------------------------------------------------------------
// Subscription
// ---------------------------------------------------------------------------

/// The channel kinds a Subscription can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChannelKind {
    Channel,
    InMemory,
}

impl ChannelKind {
    fn of(reference: &KReference) -> Option<ChannelKind> {
        if reference.api_group() != GROUP {
            return None;
        }
        match reference.kind.as_str() {
            "Channel" => Some(ChannelKind::Channel),
            IN_MEMORY_CHANNEL_KIND => Some(ChannelKind::InMemory),
            _ => None,
        }
    }
}

/// A channel of either kind, as a Channelable.
enum ChannelObject {
    Channel(Box<Channel>),
    InMemory(Box<InMemoryChannel>),
}

impl ChannelObject {
    fn spec_mut(&mut self) -> &mut ChannelableSpec {
        match self {
            ChannelObject::Channel(c) => &mut c.spec.channelable,
            ChannelObject::InMemory(c) => &mut c.spec.channelable,
        }
    }

    fn subscriber_statuses(&self) -> &[SubscriberStatus] {
        match self {
            ChannelObject::Channel(c) => c
                .status
                .as_ref()
                .map(|s| s.channelable.subscribers.as_slice()),
            ChannelObject::InMemory(c) => c.status.as_ref().map(|s| s.subscribers.as_slice()),
        }
        .unwrap_or_default()
    }

    fn name(&self) -> &str {
        match self {
            ChannelObject::Channel(c) => c.metadata.name.as_deref(),
            ChannelObject::InMemory(c) => c.metadata.name.as_deref(),
        }
        .unwrap_or_default()
    }
}

/// Puts `entry` in `spec.subscribers` (replacing the one with its uid);
/// whether anything changed.
fn upsert_subscriber(spec: &mut ChannelableSpec, entry: SubscriberSpec) -> bool {
    match spec.subscribers.iter_mut().find(|s| s.uid == entry.uid) {
        Some(existing) if *existing == entry => false,
        Some(existing) => {
            *existing = entry;
            true
        }
        None => {
            spec.subscribers.push(entry);
            true
        }
    }
}

/// Takes the entry with `uid` out of `spec.subscribers`; whether it was
/// there.
fn remove_subscriber(spec: &mut ChannelableSpec, uid: &str) -> bool {
    let before = spec.subscribers.len();
    spec.subscribers.retain(|s| s.uid.as_deref() != Some(uid));
    spec.subscribers.len() != before
}

/// The delivery options a channel gets for a subscriber: the
/// Subscription's, with the resolved dead-letter sink as an absolute URI.
fn subscriber_delivery(
    delivery: Option<&DeliverySpec>,
    dead_letter_sink: Option<&str>,
) -> Option<DeliverySpec> {
    if delivery.is_none() && dead_letter_sink.is_none() {
        return None;
    }
    let mut delivery = delivery.cloned().unwrap_or_default();
    delivery.dead_letter_sink = dead_letter_sink.map(Destination::uri);
    Some(delivery)
}

/// The Subscriptions a channel lists in `spec.subscribers` (by name).
fn listed_subscriptions(namespace: Option<&String>, spec: &ChannelableSpec) -> Vec<ObjectKey> {
    let Some(ns) = namespace else {
        return Vec::new();
    };
    spec.subscribers
        .iter()
        .filter_map(|s| non_empty(s.name.as_ref()))
        .map(|name| ObjectKey::namespaced(ns.clone(), name))
        .collect()
}

/// Reconciles Subscriptions into their channel's `spec.subscribers`.
pub struct SubscriptionReconciler {
    subscriptions: Arc<dyn Objects<Subscription>>,
    channels: Arc<dyn Objects<Channel>>,
    in_memory_channels: Arc<dyn Objects<InMemoryChannel>>,
    resolver: Arc<dyn AddressResolver>,
}

impl std::fmt::Debug for SubscriptionReconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionReconciler")
            .finish_non_exhaustive()
    }
}

impl SubscriptionReconciler {
    /// A reconciler writing the subscriptions into `channels` and
    /// `in_memory_channels`.
    pub fn new(
        subscriptions: Arc<dyn Objects<Subscription>>,
        channels: Arc<dyn Objects<Channel>>,
        in_memory_channels: Arc<dyn Objects<InMemoryChannel>>,
        resolver: Arc<dyn AddressResolver>,
    ) -> Self {
        SubscriptionReconciler {
            subscriptions,
            channels,
            in_memory_channels,
            resolver,
        }
    }

    /// A controller running this reconciler, also reconciling the
    /// Subscriptions a channel lists whenever the channel changes.
    pub fn into_controller(self) -> Controller<Subscription, Self> {
        let channels = Arc::clone(&self.channels);
        let imcs = Arc::clone(&self.in_memory_channels);
        Controller::new(Arc::clone(&self.subscriptions), Arc::new(self))
            .watches(channels, |c: &Channel| {
                listed_subscriptions(c.metadata.namespace.as_ref(), &c.spec.channelable)
            })
            .watches(imcs, |c: &InMemoryChannel| {
                listed_subscriptions(c.metadata.namespace.as_ref(), &c.spec.channelable)
            })
    }

    async fn get_channel(
        &self,
        kind: ChannelKind,
        ns: &str,
        name: &str,
    ) -> Result<Option<ChannelObject>, StoreError> {
        let found = match kind {
            ChannelKind::Channel => self
                .channels
                .get(Some(ns), name)
                .await
                .map(|c| ChannelObject::Channel(Box::new(c))),
            ChannelKind::InMemory => self
                .in_memory_channels
                .get(Some(ns), name)
                .await
                .map(|c| ChannelObject::InMemory(Box::new(c))),
        };
        match found {
            Ok(c) => Ok(Some(c)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn replace_channel(&self, channel: &ChannelObject) -> Result<ChannelObject, StoreError> {
        Ok(match channel {
            ChannelObject::Channel(c) => {
                ChannelObject::Channel(Box::new(self.channels.replace(c).await?))
            }
            ChannelObject::InMemory(c) => {
                ChannelObject::InMemory(Box::new(self.in_memory_channels.replace(c).await?))
            }
        })
    }

    /// Resolves the subscriber, reply and dead-letter sink; `Err` has the
    /// reason and message of `ReferencesResolved: False`.
    async fn resolve(
        &self,
        sub: &Subscription,
        ns: &str,
    ) -> Result<PhysicalSubscription, (&'static str, String)> {
        let spec = &sub.spec;
        let subscriber_uri = if spec.subscriber == Destination::default() {
            None
        } else {
            Some(
                resolve_destination(&*self.resolver, &spec.subscriber, ns)
                    .await
                    .map_err(|e| {
                        (
                            "SubscriberResolveFailed",
                            format!("Failed to resolve spec.subscriber: {e}"),
                        )
                    })?,
            )
        };
        let reply_uri = match spec
            .reply
            .as_ref()
            .filter(|r| **r != Destination::default())
        {
            None => None,
            Some(reply) => Some(
                resolve_destination(&*self.resolver, reply, ns)
                    .await
                    .map_err(|e| {
                        (
                            "ReplyResolveFailed",
                            format!("Failed to resolve spec.reply: {e}"),
                        )
                    })?,
            ),
        };
        let dead_letter_sink_uri =
            resolve_dead_letter_sink(&*self.resolver, spec.delivery.as_ref(), ns)
                .await
                .map_err(|e| {
                    (
                        "DeadLetterSinkResolveFailed",
                        format!("Failed to resolve spec.delivery.deadLetterSink: {e}"),
                    )
                })?;
        Ok(PhysicalSubscription {
            subscriber_uri,
            reply_uri,
            delivery: DeliveryStatus {
                dead_letter_sink_uri,
                ..DeliveryStatus::default()
            },
            ..PhysicalSubscription::default()
        })
    }

    async fn reconcile_subscription(
        &self,
        sub: Arc<Subscription>,
        ns: String,
        name: String,
    ) -> Result<Action, ReconcileError> {
        let uid = sub.metadata.uid.clone().unwrap_or_default();
        let channel_ref = &sub.spec.channel;
        let kind = ChannelKind::of(channel_ref);
        if sub.metadata.deletion_timestamp.is_some() {
            if has_finalizer(&*sub, SUBSCRIPTION_FINALIZER) {
                if let Some(kind) = kind
                    && let Some(mut channel) =
                        self.get_channel(kind, &ns, &channel_ref.name).await?
                    && remove_subscriber(channel.spec_mut(), &uid)
                {
                    match self.replace_channel(&channel).await {
                        Ok(_) => debug!(channel = %channel_ref.name, "removed from the channel"),
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                set_finalizer(&*self.subscriptions, &*sub, SUBSCRIPTION_FINALIZER, false).await?;
            }
            return Ok(Action::await_change());
        }
        if !has_finalizer(&*sub, SUBSCRIPTION_FINALIZER) {
            set_finalizer(&*self.subscriptions, &*sub, SUBSCRIPTION_FINALIZER, true).await?;
            return Ok(Action::await_change());
        }
        let mut status = sub.status.clone().unwrap_or_default();
        let set = Subscription::condition_set();
        let mut m = set.manage(&mut status.status.conditions);
        m.initialize();
        status.status.observed_generation = sub.metadata.generation;
        m.mark_true_with_reason(
            Subscription::CONDITION_OIDC_IDENTITY_CREATED,
            OIDC_IDENTITY_FEATURE_DISABLED_REASON,
            "",
        );
        let mut requeue = None;

        let channel = match kind {
            None => {
                m.mark_false(
                    Subscription::CONDITION_REFERENCES_RESOLVED,
                    "ChannelReferenceFailed",
                    &format!(
                        "Failed to get Spec.Channel or backing channel: {} (apiVersion {:?}) is not a channel kind: expected Channel or InMemoryChannel of {GROUP}",
                        channel_ref.kind,
                        channel_ref.api_version.as_deref().unwrap_or_default()
                    ),
                );
                None
            }
            Some(kind) => match self.get_channel(kind, &ns, &channel_ref.name).await? {
                None => {
                    m.mark_unknown(
                        Subscription::CONDITION_REFERENCES_RESOLVED,
                        "ChannelReferenceFailed",
                        &format!(
                            "Failed to get Spec.Channel or backing channel: {} {ns}/{} not found",
                            channel_ref.kind, channel_ref.name
                        ),
                    );
                    requeue = Some(RECHECK);
                    None
                }
                Some(channel) => Some(channel),
            },
        };

        if let Some(channel) = channel {
            match self.resolve(&sub, &ns).await {
                Err((reason, message)) => {
                    m.mark_false(
                        Subscription::CONDITION_REFERENCES_RESOLVED,
                        reason,
                        &message,
                    );
                    requeue = Some(RECHECK);
                }
                Ok(physical) => {
                    m.mark_true(Subscription::CONDITION_REFERENCES_RESOLVED);
                    let entry = SubscriberSpec {
                        name: Some(name.clone()),
                        uid: Some(uid.clone()),
                        generation: sub.metadata.generation,
                        subscriber_uri: physical.subscriber_uri.clone(),
                        reply_uri: physical.reply_uri.clone(),
                        delivery: subscriber_delivery(
                            sub.spec.delivery.as_ref(),
                            physical.delivery.dead_letter_sink_uri.as_deref(),
                        ),
                        ..SubscriberSpec::default()
                    };
                    status.physical_subscription = Some(physical);
                    let mut updated = channel;
                    let synced = if upsert_subscriber(updated.spec_mut(), entry) {
                        self.replace_channel(&updated).await
                    } else {
                        Ok(updated)
                    };
                    match synced {
                        // Another writer got there first: read again.
                        Err(e) if e.is_conflict() => return Err(e.into()),
                        Err(e) => {
                            m.mark_false(
                                Subscription::CONDITION_ADDED_TO_CHANNEL,
                                "PhysicalChannelSyncFailed",
                                &format!("Failed to sync physical Channel: {e}"),
                            );
                            requeue = Some(RECHECK);
                        }
                        Ok(channel) => {
                            m.mark_true(Subscription::CONDITION_ADDED_TO_CHANNEL);
                            let listed = channel
                                .subscriber_statuses()
                                .iter()
                                .find(|s| {
                                    s.uid.as_deref() == Some(uid.as_str())
                                        && s.observed_generation == sub.metadata.generation
                                })
                                .map(|s| s.ready);
                            let reason = "SubscriptionNotMarkedReadyByChannel";
                            match listed {
                                Some(ConditionStatus::True) => {
                                    m.mark_true(Subscription::CONDITION_CHANNEL_READY);
                                }
                                Some(ConditionStatus::False) => m.mark_false(
                                    Subscription::CONDITION_CHANNEL_READY,
                                    reason,
                                    "Subscription marked by Channel as False",
                                ),
                                Some(ConditionStatus::Unknown) => m.mark_unknown(
                                    Subscription::CONDITION_CHANNEL_READY,
                                    reason,
                                    "Subscription marked by Channel as Unknown",
                                ),
                                None => m.mark_unknown(
                                    Subscription::CONDITION_CHANNEL_READY,
                                    reason,
                                    &format!(
                                        "Failed to get subscription status: subscription {name:?} not present in channel {:?} subscriber's list",
                                        channel.name()
                                    ),
                                ),
                            }
                        }
                    }
                }
            }
        }
        drop(m);
        if sub.status.as_ref() != Some(&status) {
            let mut updated = (*sub).clone();
            updated.status = Some(status);
            if let Some(action) = write_status(&*self.subscriptions, &updated).await? {
                return Ok(action);
            }
        }
        Ok(requeue.map_or_else(Action::await_change, Action::requeue_after))
    }
}

#[async_trait]
impl Reconciler<Subscription> for SubscriptionReconciler {
    type Error = ReconcileError;

    async fn reconcile(&self, sub: Arc<Subscription>) -> Result<Action, ReconcileError> {
        let (ns, name) = namespace_and_name(&*sub);
        let span = info_span!("reconcile_subscription", namespace = %ns, name = %name);
        self.reconcile_subscription(sub, ns, name)
            .instrument(span)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriber_entries_are_upserted_by_uid() {
        let mut spec = ChannelableSpec::default();
        let entry = |uid: &str, uri: &str| SubscriberSpec {
            uid: Some(uid.to_owned()),
            subscriber_uri: Some(uri.to_owned()),
            ..SubscriberSpec::default()
        };
        assert!(upsert_subscriber(&mut spec, entry("a", "http://a")));
        assert!(upsert_subscriber(&mut spec, entry("b", "http://b")));
        assert!(!upsert_subscriber(&mut spec, entry("a", "http://a")));
        assert!(upsert_subscriber(&mut spec, entry("a", "http://a2")));
        assert_eq!(spec.subscribers.len(), 2);
        assert_eq!(
            spec.subscribers[0].subscriber_uri.as_deref(),
            Some("http://a2")
        );
        assert!(remove_subscriber(&mut spec, "a"));
        assert!(!remove_subscriber(&mut spec, "a"));
        assert_eq!(spec.subscribers.len(), 1);
    }

    #[test]
    fn a_subscriber_gets_the_resolved_dead_letter_sink_as_a_uri() {
        assert_eq!(subscriber_delivery(None, None), None);
        let d = subscriber_delivery(None, Some("http://dls")).expect("delivery");
        assert_eq!(d.dead_letter_sink, Some(Destination::uri("http://dls")));
        let with_retry = DeliverySpec {
            retry: Some(3),
            ..DeliverySpec::default()
        };
        let d = subscriber_delivery(Some(&with_retry), None).expect("delivery");
        assert_eq!(d.retry, Some(3));
        assert_eq!(d.dead_letter_sink, None);
    }

    #[test]
    fn only_in_memory_channel_templates_are_supported() {
        assert!(in_memory_channel_spec(&ChannelTemplateSpec::in_memory_channel()).is_ok());
        let kafka = ChannelTemplateSpec {
            api_version: "messaging.knative.dev/v1beta1".into(),
            kind: "KafkaChannel".into(),
            spec: None,
        };
        let err = in_memory_channel_spec(&kafka).expect_err("unsupported");
        assert!(err.contains("KafkaChannel"), "{err}");
        let with_delivery = ChannelTemplateSpec {
            spec: Some(serde_json::json!({"delivery": {"retry": 2}})),
            ..ChannelTemplateSpec::in_memory_channel()
        };
        let spec = in_memory_channel_spec(&with_delivery).expect("spec");
        assert_eq!(spec.channelable.delivery.and_then(|d| d.retry), Some(2));
    }
}
