//! The reconcilers of Knative Eventing: they program the data planes
//! ([`Brokers`], [`Channels`](crate::channel::Channels), the
//! [`PingScheduler`]) from the objects, create the children flows are made
//! of, and write every object's status.
//!
//! | reconciler | kind | spec |
//! |---|---|---|
//! | [`BrokerReconciler`] | Broker | `specs/EVENTING.md §1.1` |
//! | [`TriggerReconciler`] | Trigger | `§1.2` |
//! | [`InMemoryChannelReconciler`] | InMemoryChannel | `§4` |
//! | [`ChannelReconciler`] | Channel | `§4` |
//! | [`SubscriptionReconciler`] | Subscription | `§4` |
//! | [`SequenceReconciler`], [`ParallelReconciler`] | Sequence, Parallel | `§4` |
//! | [`PingSourceReconciler`] | PingSource | `§6` |
//! | [`SinkBindingReconciler`] | SinkBinding | `§6` |
//! | [`ContainerSourceReconciler`] | ContainerSource | `§6` |
//!
//! - [`BrokerReconciler`]: resolves the dead-letter sink, creates the
//!   broker's log and ingress route, and reports `status.address.url`
//!   (`{ingress}/{namespace}/{name}`) with `Ready` over `IngressReady`,
//!   `TriggerChannelReady`, `FilterReady`, `Addressable`,
//!   `DeadLetterSinkResolved` and `EventPoliciesReady`.
//! - [`TriggerReconciler`]: checks its broker (`BrokerReady`), resolves
//!   the subscriber (`SubscriberResolved`, `status.subscriberUri`) and the
//!   dead-letter sink (the trigger's, else the broker's; `True` with
//!   reason `DeadLetterSinkNotConfigured` when there is none), compiles
//!   the filters and starts the trigger's dispatcher (`SubscriptionReady`);
//!   `DependencyReady` is `True`.
//!
//! Objects whose deletion must stop a data path carry a finalizer.
//! Destinations are resolved by an [`AddressResolver`]: absolute URIs as
//! they are, references through the resolver ([`EventingAddresses`] knows
//! every addressable eventing kind; the embedded platform chains Knative
//! Services and the like after it). Every reconcile runs in a tracing span
//! naming the object.
//!
//! Each reconciler of the channel, flow and source kinds has an
//! `into_controller` that returns a
//! [`Controller`](knative_core::runtime::Controller) already watching what
//! the reconciler depends on (owned children, the channels a Subscription
//! is listed in).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use knative_core::condition::ConditionSet;
use knative_core::runtime::{Action, Reconciler};
use knative_core::store::{ApiObject, Objects, StoreError};
use tracing::debug;

use crate::api::duck::is_absolute_uri;
use crate::api::{Addressable, Broker, Destination, KReference, Trigger};
use crate::broker::{Brokers, IngressError, TriggerRoute};
use crate::channel::ChannelError;
use crate::filter::Filter;
use crate::log::LogError;

mod addresses;
mod composition;
mod flows;
mod messaging;
mod sources;
pub mod testing;

pub use addresses::{EventingAddresses, EventingObjects};
pub use composition::Eventing;
pub use flows::{
    ParallelBranchChildren, ParallelChildren, ParallelReconciler, SequenceChildren,
    SequenceReconciler, parallel_children, sequence_children,
};
pub use messaging::{
    ChannelReconciler, IN_MEMORY_CHANNEL_FINALIZER, InMemoryChannelReconciler,
    SUBSCRIPTION_FINALIZER, SubscriptionReconciler,
};
pub use sources::{
    BindingTarget, CONTAINER_SOURCE_FINALIZER, ContainerRunner, ContainerSourceReconciler,
    PING_SOURCE_FINALIZER, PingScheduler, PingSourceReconciler, SINK_BINDING_FINALIZER,
    SinkBindingReconciler, inject_sink_env,
};

/// The finalizer of Brokers.
pub const BROKER_FINALIZER: &str = "brokers.eventing.knative.dev";
/// The finalizer of Triggers.
pub const TRIGGER_FINALIZER: &str = "triggers.eventing.knative.dev";
/// How soon a trigger whose broker is not ready looks again.
const RECHECK: Duration = Duration::from_secs(2);

/// Why a reconcile failed (retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Reading or writing objects failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The event log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The data plane refused.
    #[error(transparent)]
    Ingress(#[from] IngressError),
    /// The channel data plane refused.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The platform could not bind a workload or run a container
    /// ([`BindingTarget`], [`ContainerRunner`]).
    #[error("{0}")]
    Workload(String),
}

/// An owner reference to `owner` that marks it as the controller (as
/// `kmeta.NewControllerRef` makes them: `controller` and
/// `blockOwnerDeletion` set).
pub fn controller_reference<K: ApiObject>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version_name(),
        kind: K::kind_name(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether `meta` is controlled by the object with uid `owner_uid`.
pub fn is_controlled_by(meta: &ObjectMeta, owner_uid: Option<&str>) -> bool {
    let Some(uid) = owner_uid.filter(|u| !u.is_empty()) else {
        return false;
    };
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// The namespace and name of an object (empty strings when unset).
pub(crate) fn namespace_and_name<K: ApiObject>(object: &K) -> (String, String) {
    (
        object.meta().namespace.clone().unwrap_or_default(),
        object.meta().name.clone().unwrap_or_default(),
    )
}

/// Writes `updated`'s status. A conflict means a newer version exists,
/// whose watch event reconciles again: it asks for a quick requeue instead
/// of failing.
pub(crate) async fn write_status<K: ApiObject>(
    objects: &dyn Objects<K>,
    updated: &K,
) -> Result<Option<Action>, StoreError> {
    match objects.replace_status(updated).await {
        Ok(_) => Ok(None),
        Err(e) if e.is_conflict() => Ok(Some(Action::requeue_after(Duration::from_millis(50)))),
        Err(e) if e.is_not_found() => Ok(Some(Action::await_change())),
        Err(e) => Err(e),
    }
}

/// Turns references into URLs.
#[async_trait]
pub trait AddressResolver: Send + Sync {
    /// The URL of the object `reference` names (its namespace defaulting
    /// to `namespace`), or why it has none.
    async fn resolve_reference(
        &self,
        reference: &KReference,
        namespace: &str,
    ) -> Result<String, String>;
}

/// Resolves a [`Destination`]: an absolute URI as it is; a reference
/// through `resolver`, with a relative `uri` resolved against its address
/// (RFC 3986, `specs/EVENTING.md §6`).
pub async fn resolve_destination(
    resolver: &dyn AddressResolver,
    destination: &Destination,
    namespace: &str,
) -> Result<String, String> {
    let uri = destination.uri.as_deref().filter(|u| !u.is_empty());
    match (&destination.reference, uri) {
        (None, Some(uri)) if is_absolute_uri(uri) => Ok(uri.to_owned()),
        (None, Some(uri)) => Err(format!("uri {uri:?} is not absolute and there is no ref")),
        (None, None) => Err("the destination has neither ref nor uri".to_owned()),
        (Some(reference), relative) => {
            let base = resolver.resolve_reference(reference, namespace).await?;
            match relative {
                None => Ok(base),
                // RFC 3986 reference resolution against the address, as
                // upstream's resolver does (`http://h/a` + `b` → `http://h/b`,
                // `http://h/a/` + `b` → `http://h/a/b`, `/x` replaces the path).
                Some(uri) => url::Url::parse(&base)
                    .and_then(|base| base.join(uri))
                    .map(String::from)
                    .map_err(|e| format!("cannot resolve uri {uri:?} against {base}: {e}")),
            }
        }
    }
}

/// Resolves references to one kind `K` of any API group (a Knative
/// Service, a Route: kinds this crate does not know) through a function
/// that reads the address off the stored object, and delegates every
/// other kind to `next`, if any. Chain several for several kinds.
pub struct KindAddresses<K> {
    group: &'static str,
    kind: &'static str,
    objects: Arc<dyn Objects<K>>,
    address: fn(&K) -> Option<String>,
    next: Option<Arc<dyn AddressResolver>>,
}

impl<K> std::fmt::Debug for KindAddresses<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KindAddresses")
            .field("group", &self.group)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl<K> KindAddresses<K> {
    /// References to `kind` in API group `group` (e.g.
    /// `serving.knative.dev`, `Service`) are looked up in `objects` and
    /// resolved with `address`; others go to `next`.
    pub fn new(
        group: &'static str,
        kind: &'static str,
        objects: Arc<dyn Objects<K>>,
        address: fn(&K) -> Option<String>,
        next: Option<Arc<dyn AddressResolver>>,
    ) -> Self {
        KindAddresses {
            group,
            kind,
            objects,
            address,
            next,
        }
    }
}

#[async_trait]
impl<K: ApiObject> AddressResolver for KindAddresses<K> {
    async fn resolve_reference(
        &self,
        reference: &KReference,
        namespace: &str,
    ) -> Result<String, String> {
        let ns = reference.namespace_or(namespace);
        if reference.kind == self.kind && reference.api_group() == self.group {
            let what = format!("{} {ns}/{}", self.kind, reference.name);
            let object = self
                .objects
                .get(Some(ns), &reference.name)
                .await
                .map_err(|e| format!("{what}: {e}"))?;
            return (self.address)(&object)
                .filter(|u| !u.is_empty())
                .ok_or_else(|| format!("{what} has no address yet"));
        }
        match &self.next {
            Some(next) => next.resolve_reference(reference, namespace).await,
            None => Err(format!(
                "cannot resolve {} {ns}/{}: no resolver for this kind",
                reference.kind, reference.name
            )),
        }
    }
}

/// Resolves references to Brokers (their ingress address) and delegates
/// every other kind to `next`, if any.
pub struct BrokerAddresses(KindAddresses<Broker>);

impl std::fmt::Debug for BrokerAddresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerAddresses").finish_non_exhaustive()
    }
}

impl BrokerAddresses {
    /// Broker references looked up in `brokers`; other kinds go to `next`.
    pub fn new(brokers: Arc<dyn Objects<Broker>>, next: Option<Arc<dyn AddressResolver>>) -> Self {
        BrokerAddresses(KindAddresses::new(
            crate::api::GROUP,
            "Broker",
            brokers,
            |broker: &Broker| broker.status.as_ref()?.address.as_ref()?.url.clone(),
            next,
        ))
    }
}

#[async_trait]
impl AddressResolver for BrokerAddresses {
    async fn resolve_reference(
        &self,
        reference: &KReference,
        namespace: &str,
    ) -> Result<String, String> {
        self.0.resolve_reference(reference, namespace).await
    }
}

fn broker_conditions() -> ConditionSet {
    ConditionSet::living(&[
        "IngressReady",
        "TriggerChannelReady",
        "FilterReady",
        "Addressable",
        "DeadLetterSinkResolved",
        "EventPoliciesReady",
    ])
}

fn trigger_conditions() -> ConditionSet {
    ConditionSet::living(&[
        "BrokerReady",
        "SubscriptionReady",
        "DependencyReady",
        "SubscriberResolved",
        "DeadLetterSinkResolved",
    ])
}

/// Whether `object` carries `finalizer`.
pub fn has_finalizer<K: ApiObject>(object: &K, finalizer: &str) -> bool {
    object
        .meta()
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == finalizer)
}

/// Adds or removes `finalizer` and writes the object (removing it from an
/// object that is already gone is not an error).
pub async fn set_finalizer<K: ApiObject + Clone>(
    objects: &dyn Objects<K>,
    object: &K,
    finalizer: &str,
    present: bool,
) -> Result<(), StoreError> {
    let mut updated = object.clone();
    let list = updated.meta_mut().finalizers.get_or_insert_with(Vec::new);
    if present {
        list.push(finalizer.to_owned());
    } else {
        list.retain(|f| f != finalizer);
    }
    match objects.replace(&updated).await {
        Err(e) if !present && e.is_not_found() => Ok(()),
        other => other.map(|_| ()),
    }
}

/// Reconciles Brokers into the data plane.
pub struct BrokerReconciler {
    brokers: Arc<dyn Objects<Broker>>,
    data_plane: Brokers,
    resolver: Arc<dyn AddressResolver>,
    ingress_url: String,
}

impl std::fmt::Debug for BrokerReconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerReconciler")
            .field("ingress_url", &self.ingress_url)
            .finish_non_exhaustive()
    }
}

impl BrokerReconciler {
    /// A reconciler programming `data_plane`, whose ingress listens at
    /// `ingress_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(
        brokers: Arc<dyn Objects<Broker>>,
        data_plane: Brokers,
        resolver: Arc<dyn AddressResolver>,
        ingress_url: impl Into<String>,
    ) -> Self {
        BrokerReconciler {
            brokers,
            data_plane,
            resolver,
            ingress_url: ingress_url.into(),
        }
    }
}

#[async_trait]
impl Reconciler<Broker> for BrokerReconciler {
    type Error = ReconcileError;

    async fn reconcile(&self, broker: Arc<Broker>) -> Result<Action, ReconcileError> {
        let ns = broker.metadata.namespace.clone().unwrap_or_default();
        let name = broker.metadata.name.clone().unwrap_or_default();
        if broker.metadata.deletion_timestamp.is_some() {
            if has_finalizer(&*broker, BROKER_FINALIZER) {
                self.data_plane.remove_broker(&ns, &name).await?;
                set_finalizer(&*self.brokers, &*broker, BROKER_FINALIZER, false).await?;
            }
            return Ok(Action::await_change());
        }
        if !has_finalizer(&*broker, BROKER_FINALIZER) {
            set_finalizer(&*self.brokers, &*broker, BROKER_FINALIZER, true).await?;
            return Ok(Action::await_change());
        }
        let mut status = broker.status.clone().unwrap_or_default();
        let set = broker_conditions();
        let mut m = set.manage(&mut status.status.conditions);
        m.initialize();
        status.status.observed_generation = broker.metadata.generation;
        let delivery = broker.spec.delivery.clone();
        let mut dls = None;
        let mut requeue = None;
        match delivery.as_ref().and_then(|d| d.dead_letter_sink.as_ref()) {
            None => m.mark_true_with_reason(
                "DeadLetterSinkResolved",
                "DeadLetterSinkNotConfigured",
                "No dead letter sink is configured.",
            ),
            Some(d) => match resolve_destination(&*self.resolver, d, &ns).await {
                Ok(url) => {
                    m.mark_true("DeadLetterSinkResolved");
                    dls = Some(url);
                }
                Err(e) => {
                    m.mark_false(
                        "DeadLetterSinkResolved",
                        "Unable to get the dead letter sink's URI",
                        &e,
                    );
                    requeue = Some(RECHECK);
                }
            },
        }
        status.delivery.dead_letter_sink_uri = dls.clone();
        self.data_plane
            .upsert_broker(&ns, &name, delivery, dls)
            .await?;
        for c in [
            "IngressReady",
            "TriggerChannelReady",
            "FilterReady",
            "EventPoliciesReady",
        ] {
            m.mark_true(c);
        }
        let url = format!("{}/{ns}/{name}", self.ingress_url.trim_end_matches('/'));
        // Dead letters of failed reply deliveries name this URL as the
        // failed destination.
        self.data_plane.set_broker_address(&ns, &name, &url);
        m.mark_true("Addressable");
        drop(m);
        status.address = Some(Addressable {
            name: Some("http".to_owned()),
            url: Some(url.clone()),
            ..Addressable::default()
        });
        status.addresses = vec![Addressable {
            name: Some("http".to_owned()),
            url: Some(url),
            ..Addressable::default()
        }];
        if broker.status.as_ref() != Some(&status) {
            let mut updated = (*broker).clone();
            updated.status = Some(status);
            self.brokers.replace_status(&updated).await?;
        }
        debug!(broker = %format!("{ns}/{name}"), "broker reconciled");
        Ok(requeue.map_or_else(Action::await_change, Action::requeue_after))
    }
}

/// Reconciles Triggers into the data plane.
pub struct TriggerReconciler {
    triggers: Arc<dyn Objects<Trigger>>,
    brokers: Arc<dyn Objects<Broker>>,
    data_plane: Brokers,
    resolver: Arc<dyn AddressResolver>,
}

impl std::fmt::Debug for TriggerReconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TriggerReconciler").finish_non_exhaustive()
    }
}

impl TriggerReconciler {
    /// A reconciler programming `data_plane`.
    pub fn new(
        triggers: Arc<dyn Objects<Trigger>>,
        brokers: Arc<dyn Objects<Broker>>,
        data_plane: Brokers,
        resolver: Arc<dyn AddressResolver>,
    ) -> Self {
        TriggerReconciler {
            triggers,
            brokers,
            data_plane,
            resolver,
        }
    }
}

#[async_trait]
impl Reconciler<Trigger> for TriggerReconciler {
    type Error = ReconcileError;

    async fn reconcile(&self, trigger: Arc<Trigger>) -> Result<Action, ReconcileError> {
        let ns = trigger.metadata.namespace.clone().unwrap_or_default();
        let name = trigger.metadata.name.clone().unwrap_or_default();
        let broker_name = trigger.spec.broker.clone();
        if trigger.metadata.deletion_timestamp.is_some() {
            if has_finalizer(&*trigger, TRIGGER_FINALIZER) {
                match self
                    .data_plane
                    .remove_trigger(&ns, &broker_name, &name)
                    .await
                {
                    Ok(()) | Err(LogError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                set_finalizer(&*self.triggers, &*trigger, TRIGGER_FINALIZER, false).await?;
            }
            return Ok(Action::await_change());
        }
        if !has_finalizer(&*trigger, TRIGGER_FINALIZER) {
            set_finalizer(&*self.triggers, &*trigger, TRIGGER_FINALIZER, true).await?;
            return Ok(Action::await_change());
        }
        let mut status = trigger.status.clone().unwrap_or_default();
        let set = trigger_conditions();
        let mut m = set.manage(&mut status.status.conditions);
        m.initialize();
        status.status.observed_generation = trigger.metadata.generation;
        m.mark_true("DependencyReady");
        let mut requeue = None;

        let broker = match self.brokers.get(Some(&ns), &broker_name).await {
            Ok(b) => Some(b),
            Err(e) if e.is_not_found() => {
                m.mark_false(
                    "BrokerReady",
                    "BrokerDoesNotExist",
                    &format!("Broker {broker_name:?} does not exist"),
                );
                None
            }
            Err(e) => return Err(e.into()),
        };
        let broker_ready = broker.as_ref().is_some_and(|b| {
            b.status
                .as_ref()
                .is_some_and(|s| broker_conditions().is_happy(&s.status.conditions))
        });
        if broker.is_some() && !broker_ready {
            m.mark_unknown(
                "BrokerReady",
                "BrokerNotReady",
                "The broker is not ready yet.",
            );
        } else if broker_ready {
            m.mark_true("BrokerReady");
        }
        let subscriber =
            match resolve_destination(&*self.resolver, &trigger.spec.subscriber, &ns).await {
                Ok(url) => {
                    m.mark_true("SubscriberResolved");
                    Some(url)
                }
                Err(e) => {
                    m.mark_false(
                        "SubscriberResolved",
                        "Unable to get the Subscriber's URI",
                        &e,
                    );
                    // The subscriber may get an address soon (a service
                    // still starting): look again.
                    requeue = Some(RECHECK);
                    None
                }
            };
        status.subscriber_uri = subscriber.clone();
        let dls = match trigger
            .spec
            .delivery
            .as_ref()
            .and_then(|d| d.dead_letter_sink.as_ref())
        {
            Some(d) => match resolve_destination(&*self.resolver, d, &ns).await {
                Ok(url) => {
                    m.mark_true("DeadLetterSinkResolved");
                    Some(url)
                }
                Err(e) => {
                    m.mark_false(
                        "DeadLetterSinkResolved",
                        "Unable to get the dead letter sink's URI",
                        &e,
                    );
                    requeue = Some(RECHECK);
                    None
                }
            },
            None => {
                let from_broker = broker
                    .as_ref()
                    .and_then(|b| b.status.as_ref())
                    .and_then(|s| s.delivery.dead_letter_sink_uri.clone());
                match &from_broker {
                    Some(_) => m.mark_true("DeadLetterSinkResolved"),
                    None => m.mark_true_with_reason(
                        "DeadLetterSinkResolved",
                        "DeadLetterSinkNotConfigured",
                        "No dead letter sink is configured.",
                    ),
                }
                from_broker
            }
        };
        status.delivery.dead_letter_sink_uri = dls.clone();

        match (broker_ready, subscriber) {
            (true, Some(url)) => match Filter::for_trigger(&trigger.spec) {
                Ok(filter) => {
                    self.data_plane
                        .upsert_trigger(
                            &ns,
                            &broker_name,
                            &name,
                            TriggerRoute {
                                filter,
                                subscriber: url,
                                delivery: trigger.spec.delivery.clone(),
                                dead_letter_sink: dls,
                            },
                        )
                        .await?;
                    m.mark_true("SubscriptionReady");
                }
                Err(e) => m.mark_false("SubscriptionReady", "InvalidFilter", &e.to_string()),
            },
            _ => {
                m.mark_unknown(
                    "SubscriptionReady",
                    "NotSubscribed",
                    "Waiting for the broker and the subscriber.",
                );
                requeue = Some(RECHECK);
            }
        }
        drop(m);
        if trigger.status.as_ref() != Some(&status) {
            let mut updated = (*trigger).clone();
            updated.status = Some(status);
            self.triggers.replace_status(&updated).await?;
        }
        Ok(requeue.map_or_else(Action::await_change, Action::requeue_after))
    }
}

#[cfg(test)]
mod tests {
    use knative_core::runtime::Controller;
    use knative_core::store::InMemoryStore;

    use super::*;
    use crate::broker::{DispatchConfig, IngressConfig};
    use crate::log::InMemoryLog;

    fn broker() -> Broker {
        serde_yaml::from_str("metadata: {name: default, namespace: ns}\nspec: {}\n")
            .expect("broker")
    }

    fn trigger(subscriber: &str) -> Trigger {
        serde_yaml::from_str(&format!(
            "metadata: {{name: t, namespace: ns}}\nspec:\n  broker: default\n  subscriber: {subscriber}\n"
        ))
        .expect("trigger")
    }

    async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
        for _ in 0..400 {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn brokers_and_triggers_become_ready_and_programme_the_data_plane() {
        let store = InMemoryStore::new();
        let brokers: Arc<dyn Objects<Broker>> = Arc::new(store.objects::<Broker>());
        let triggers: Arc<dyn Objects<Trigger>> = Arc::new(store.objects::<Trigger>());
        let data_plane = Brokers::new(
            Arc::new(InMemoryLog::new()),
            IngressConfig::default(),
            DispatchConfig::default(),
        );
        let resolver: Arc<dyn AddressResolver> =
            Arc::new(BrokerAddresses::new(Arc::clone(&brokers), None));
        let broker_controller = Controller::new(
            Arc::clone(&brokers),
            Arc::new(BrokerReconciler::new(
                Arc::clone(&brokers),
                data_plane.clone(),
                Arc::clone(&resolver),
                "http://127.0.0.1:9999",
            )),
        );
        let trigger_controller = Controller::new(
            Arc::clone(&triggers),
            Arc::new(TriggerReconciler::new(
                Arc::clone(&triggers),
                Arc::clone(&brokers),
                data_plane.clone(),
                Arc::clone(&resolver),
            )),
        );
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let running = tokio::spawn(futures::future::join(
            broker_controller.run(until(stopped.clone())),
            trigger_controller.run(until(stopped.clone())),
        ));

        // A trigger before its broker: not ready, waiting.
        triggers
            .create(&trigger("{uri: http://sink.ns.svc/}"))
            .await
            .expect("trigger");
        let t = eventually("trigger status", async || {
            triggers
                .get(Some("ns"), "t")
                .await
                .ok()
                .filter(|t| t.status.is_some())
        })
        .await;
        let conditions = &t.status.as_ref().expect("status").status.conditions;
        let broker_ready =
            knative_core::condition::find(conditions, "BrokerReady").expect("BrokerReady");
        assert_eq!(broker_ready.reason, "BrokerDoesNotExist");

        brokers.create(&broker()).await.expect("broker");
        let b = eventually("broker ready", async || {
            let b = brokers.get(Some("ns"), "default").await.ok()?;
            broker_conditions()
                .is_happy(&b.status.as_ref()?.status.conditions)
                .then_some(b)
        })
        .await;
        assert_eq!(
            b.status
                .as_ref()
                .and_then(|s| s.address.as_ref())
                .and_then(|a| a.url.as_deref()),
            Some("http://127.0.0.1:9999/ns/default")
        );
        assert!(data_plane.has_broker("ns", "default"));
        let t = eventually("trigger ready", async || {
            let t = triggers.get(Some("ns"), "t").await.ok()?;
            trigger_conditions()
                .is_happy(&t.status.as_ref()?.status.conditions)
                .then_some(t)
        })
        .await;
        assert_eq!(
            t.status.as_ref().and_then(|s| s.subscriber_uri.as_deref()),
            Some("http://sink.ns.svc/")
        );

        // Deleting the broker removes it from the data plane.
        brokers
            .delete(Some("ns"), "default")
            .await
            .expect("deleted");
        eventually("broker gone", async || {
            (!data_plane.has_broker("ns", "default")).then_some(())
        })
        .await;
        let _ = stop.send(true);
        let _ = running.await;
    }

    #[tokio::test]
    async fn a_subscriber_ref_resolves_through_the_resolver_with_a_relative_path() {
        struct Fixed;
        #[async_trait]
        impl AddressResolver for Fixed {
            async fn resolve_reference(&self, r: &KReference, ns: &str) -> Result<String, String> {
                Ok(format!("http://{}.{ns}.svc.cluster.local", r.name))
            }
        }
        let d: Destination = serde_json::from_value(serde_json::json!({
            "ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "app"},
            "uri": "/events"
        }))
        .expect("destination");
        assert_eq!(
            resolve_destination(&Fixed, &d, "ns").await.as_deref(),
            Ok("http://app.ns.svc.cluster.local/events")
        );
        let store = InMemoryStore::new();
        let brokers: Arc<dyn Objects<Broker>> = Arc::new(store.objects::<Broker>());
        let only_brokers = BrokerAddresses::new(brokers, None);
        let err = resolve_destination(&only_brokers, &d, "ns")
            .await
            .expect_err("no resolver");
        assert!(err.contains("no resolver for this kind"), "{err}");
    }

    /// A relative `uri` is resolved against the reference's address as
    /// RFC 3986 says (Go's `URL.ResolveReference`, which upstream uses).
    #[tokio::test]
    async fn a_relative_uri_is_resolved_against_the_address_as_rfc_3986_says() {
        struct At(&'static str);
        #[async_trait]
        impl AddressResolver for At {
            async fn resolve_reference(&self, _: &KReference, _: &str) -> Result<String, String> {
                Ok(self.0.to_owned())
            }
        }
        let destination = |uri: &str| -> Destination {
            serde_json::from_value(serde_json::json!({
                "ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "b"},
                "uri": uri
            }))
            .expect("destination")
        };
        for (base, uri, want) in [
            ("http://h/a", "b", "http://h/b"),
            ("http://h/a/", "b", "http://h/a/b"),
            ("http://h/ns/broker", "/x/y", "http://h/x/y"),
            ("http://h/a/b", "../c", "http://h/c"),
            ("http://h/a", "?q=1", "http://h/a?q=1"),
            ("http://h", "events", "http://h/events"),
        ] {
            assert_eq!(
                resolve_destination(&At(base), &destination(uri), "ns")
                    .await
                    .as_deref(),
                Ok(want),
                "{base} + {uri}"
            );
        }
        let err = resolve_destination(&At("not a url"), &destination("x"), "ns")
            .await
            .expect_err("a base that is no URL");
        assert!(err.contains("cannot resolve uri"), "{err}");
    }

    /// A kind this crate does not know (here played by Brokers under
    /// another group and kind) resolves through the function given;
    /// other kinds go on down the chain.
    #[tokio::test]
    async fn kind_addresses_resolve_their_kind_and_pass_on_the_rest() {
        let store = InMemoryStore::new();
        let objects: Arc<dyn Objects<Broker>> = Arc::new(store.objects::<Broker>());
        let mut with_address = broker();
        with_address.metadata.name = Some("ready".to_owned());
        with_address.status = serde_json::from_value(serde_json::json!({
            "address": {"url": "http://ready.ns.example"}
        }))
        .expect("status");
        let created = objects.create(&with_address).await.expect("created");
        let mut stored = created.clone();
        stored.status = with_address.status.clone();
        objects.replace_status(&stored).await.expect("status");
        objects.create(&broker()).await.expect("created");
        let resolver = KindAddresses::new(
            "example.com",
            "Thing",
            Arc::clone(&objects),
            |b: &Broker| b.status.as_ref()?.address.as_ref()?.url.clone(),
            None,
        );
        let reference = |kind: &str, api_version: &str, name: &str| KReference {
            kind: kind.to_owned(),
            api_version: Some(api_version.to_owned()),
            name: name.to_owned(),
            ..KReference::default()
        };
        assert_eq!(
            resolver
                .resolve_reference(&reference("Thing", "example.com/v1", "ready"), "ns")
                .await,
            Ok("http://ready.ns.example".to_owned())
        );
        let pending = resolver
            .resolve_reference(&reference("Thing", "example.com/v1", "default"), "ns")
            .await
            .expect_err("no address yet");
        assert_eq!(pending, "Thing ns/default has no address yet");
        let missing = resolver
            .resolve_reference(&reference("Thing", "example.com/v1", "nope"), "ns")
            .await
            .expect_err("missing");
        assert!(missing.contains("not found"), "{missing}");
        let other = resolver
            .resolve_reference(&reference("Thing", "other.example.com/v1", "ready"), "ns")
            .await
            .expect_err("another group");
        assert!(other.contains("no resolver for this kind"), "{other}");
    }
}
