//! [`Eventing`]: every Eventing controller over one set of stores, the
//! composition the embedded platform and the Kubernetes operator share
//! (`DESIGN.md`, "Two compositions of the same parts"). Only the trait
//! implementations differ between them: where objects live, how a
//! SinkBinding reaches its subject, how a ContainerSource runs.

use std::future::Future;
use std::sync::Arc;

use knative_core::runtime::Controller;

use super::{
    AddressResolver, BindingTarget, BrokerReconciler, ChannelReconciler, ContainerRunner,
    ContainerSourceReconciler, EventingObjects, InMemoryChannelReconciler, ParallelReconciler,
    PingScheduler, PingSourceReconciler, SequenceReconciler, SinkBindingReconciler,
    SubscriptionReconciler, TriggerReconciler,
};
use crate::broker::Brokers;
use crate::channel::Channels;

/// The Broker, Trigger, InMemoryChannel, Channel, Subscription, Sequence,
/// Parallel, PingSource, SinkBinding and ContainerSource controllers
/// (ApiServerSource needs API server watches: the Kubernetes adapter runs
/// it beside these).
pub struct Eventing {
    /// The stores every controller reads and writes.
    pub objects: EventingObjects,
    /// Resolves sinks, subscribers and replies.
    pub resolver: Arc<dyn AddressResolver>,
    /// The brokers' data plane.
    pub brokers: Brokers,
    /// The URL the broker ingress is reached at (Brokers publish
    /// `{broker_url}/{namespace}/{name}`).
    pub broker_url: String,
    /// The channels' data plane.
    pub channels: Channels,
    /// The URL the channel ingress is reached at.
    pub channel_url: String,
    /// Fires PingSources.
    pub pings: PingScheduler,
    /// Where SinkBindings inject their sink.
    pub binding_target: Arc<dyn BindingTarget>,
    /// Runs ContainerSources.
    pub container_runner: Arc<dyn ContainerRunner>,
}

impl std::fmt::Debug for Eventing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eventing")
            .field("broker_url", &self.broker_url)
            .field("channel_url", &self.channel_url)
            .finish_non_exhaustive()
    }
}

impl Eventing {
    /// Runs every controller, watching `namespace` (all when `None`), until
    /// `shutdown` completes; then stops them gracefully.
    pub async fn run(self, namespace: Option<&str>, shutdown: impl Future<Output = ()> + Send) {
        let o = &self.objects;
        let resolver = &self.resolver;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let until = || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            }
        };
        let brokers = scoped(
            Controller::new(
                Arc::clone(&o.brokers),
                Arc::new(BrokerReconciler::new(
                    Arc::clone(&o.brokers),
                    self.brokers.clone(),
                    Arc::clone(resolver),
                    self.broker_url.clone(),
                )),
            ),
            namespace,
        )
        .run(until());
        let triggers = scoped(
            Controller::new(
                Arc::clone(&o.triggers),
                Arc::new(TriggerReconciler::new(
                    Arc::clone(&o.triggers),
                    Arc::clone(&o.brokers),
                    self.brokers.clone(),
                    Arc::clone(resolver),
                )),
            ),
            namespace,
        )
        .run(until());
        let in_memory_channels = scoped(
            InMemoryChannelReconciler::new(
                Arc::clone(&o.in_memory_channels),
                self.channels.clone(),
                Arc::clone(resolver),
                self.channel_url.clone(),
            )
            .into_controller(),
            namespace,
        )
        .run(until());
        let channels = scoped(
            ChannelReconciler::new(Arc::clone(&o.channels), Arc::clone(&o.in_memory_channels))
                .into_controller(),
            namespace,
        )
        .run(until());
        let subscriptions = scoped(
            SubscriptionReconciler::new(
                Arc::clone(&o.subscriptions),
                Arc::clone(&o.channels),
                Arc::clone(&o.in_memory_channels),
                Arc::clone(resolver),
            )
            .into_controller(),
            namespace,
        )
        .run(until());
        let sequences = scoped(
            SequenceReconciler::new(
                Arc::clone(&o.sequences),
                Arc::clone(&o.in_memory_channels),
                Arc::clone(&o.subscriptions),
            )
            .into_controller(),
            namespace,
        )
        .run(until());
        let parallels = scoped(
            ParallelReconciler::new(
                Arc::clone(&o.parallels),
                Arc::clone(&o.in_memory_channels),
                Arc::clone(&o.subscriptions),
            )
            .into_controller(),
            namespace,
        )
        .run(until());
        let ping_sources = scoped(
            PingSourceReconciler::new(
                Arc::clone(&o.ping_sources),
                Arc::clone(resolver),
                self.pings.clone(),
            )
            .into_controller(),
            namespace,
        )
        .run(until());
        let sink_bindings = scoped(
            SinkBindingReconciler::new(
                Arc::clone(&o.sink_bindings),
                Arc::clone(resolver),
                Arc::clone(&self.binding_target),
            )
            .into_controller(),
            namespace,
        )
        .run(until());
        let container_sources = scoped(
            ContainerSourceReconciler::new(
                Arc::clone(&o.container_sources),
                Arc::clone(resolver),
                Arc::clone(&self.container_runner),
            )
            .into_controller(),
            namespace,
        )
        .run(until());
        let signal = async move {
            shutdown.await;
            let _ = stop.send(true);
        };
        tokio::join!(
            brokers,
            triggers,
            in_memory_channels,
            channels,
            subscriptions,
            sequences,
            parallels,
            ping_sources,
            sink_bindings,
            container_sources,
            signal
        );
    }
}

/// `controller`, watching only `namespace` when one is given.
fn scoped<K, R>(controller: Controller<K, R>, namespace: Option<&str>) -> Controller<K, R>
where
    K: knative_core::store::ApiObject,
    R: knative_core::runtime::Reconciler<K>,
{
    match namespace {
        Some(ns) => controller.namespace(ns),
        None => controller,
    }
}
