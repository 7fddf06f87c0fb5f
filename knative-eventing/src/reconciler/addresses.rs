//! Address resolution for every addressable eventing kind
//! (`specs/EVENTING.md §6`, Addressable duck): a reference to a Broker,
//! Channel, InMemoryChannel, Sequence or Parallel resolves to the object's
//! `status.address.url` (or, with `ref.address`, to the entry of
//! `status.addresses` of that name); any other kind goes to the next
//! resolver in the chain.

use std::sync::Arc;

use async_trait::async_trait;
use knative_core::store::{ApiObject, InMemoryStore, Objects};

use super::{AddressResolver, BrokerAddresses};
use crate::api::{
    Addressable, ApiServerSource, Broker, Channel, ContainerSource, InMemoryChannel, KReference,
    Parallel, PingSource, Sequence, SinkBinding, Subscription, Trigger, flows, messaging,
};

/// The stores of every eventing kind, as the reconcilers read and write
/// them.
#[derive(Clone)]
pub struct EventingObjects {
    /// Brokers.
    pub brokers: Arc<dyn Objects<Broker>>,
    /// Triggers.
    pub triggers: Arc<dyn Objects<Trigger>>,
    /// Channels (`messaging.knative.dev`, the generic kind).
    pub channels: Arc<dyn Objects<Channel>>,
    /// InMemoryChannels.
    pub in_memory_channels: Arc<dyn Objects<InMemoryChannel>>,
    /// Subscriptions.
    pub subscriptions: Arc<dyn Objects<Subscription>>,
    /// Sequences.
    pub sequences: Arc<dyn Objects<Sequence>>,
    /// Parallels.
    pub parallels: Arc<dyn Objects<Parallel>>,
    /// PingSources.
    pub ping_sources: Arc<dyn Objects<PingSource>>,
    /// SinkBindings.
    pub sink_bindings: Arc<dyn Objects<SinkBinding>>,
    /// ContainerSources.
    pub container_sources: Arc<dyn Objects<ContainerSource>>,
    /// ApiServerSources (typed only: no reconciler here).
    pub api_server_sources: Arc<dyn Objects<ApiServerSource>>,
}

impl std::fmt::Debug for EventingObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventingObjects").finish_non_exhaustive()
    }
}

impl EventingObjects {
    /// Every kind's objects in `store`.
    pub fn in_memory(store: &InMemoryStore) -> Self {
        EventingObjects {
            brokers: Arc::new(store.objects()),
            triggers: Arc::new(store.objects()),
            channels: Arc::new(store.objects()),
            in_memory_channels: Arc::new(store.objects()),
            subscriptions: Arc::new(store.objects()),
            sequences: Arc::new(store.objects()),
            parallels: Arc::new(store.objects()),
            ping_sources: Arc::new(store.objects()),
            sink_bindings: Arc::new(store.objects()),
            container_sources: Arc::new(store.objects()),
            api_server_sources: Arc::new(store.objects()),
        }
    }
}

/// Resolves references to Brokers (`eventing.knative.dev`), Channels and
/// InMemoryChannels (`messaging.knative.dev`), Sequences and Parallels
/// (`flows.knative.dev`) to their address, and delegates every other kind
/// to `next`, if any.
pub struct EventingAddresses {
    brokers: BrokerAddresses,
    channels: Arc<dyn Objects<Channel>>,
    in_memory_channels: Arc<dyn Objects<InMemoryChannel>>,
    sequences: Arc<dyn Objects<Sequence>>,
    parallels: Arc<dyn Objects<Parallel>>,
}

impl std::fmt::Debug for EventingAddresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventingAddresses").finish_non_exhaustive()
    }
}

impl EventingAddresses {
    /// Eventing kinds looked up in `objects`; other kinds go to `next`.
    pub fn new(objects: &EventingObjects, next: Option<Arc<dyn AddressResolver>>) -> Self {
        EventingAddresses {
            brokers: BrokerAddresses::new(Arc::clone(&objects.brokers), next),
            channels: Arc::clone(&objects.channels),
            in_memory_channels: Arc::clone(&objects.in_memory_channels),
            sequences: Arc::clone(&objects.sequences),
            parallels: Arc::clone(&objects.parallels),
        }
    }
}

/// The URL an object's address status offers for `reference`: the entry of
/// `addresses` named `reference.address` when set, else `address`.
fn pick(
    address: Option<&Addressable>,
    addresses: &[Addressable],
    reference: &KReference,
    ns: &str,
) -> Result<String, String> {
    let what = format!("{} {ns}/{}", reference.kind, reference.name);
    if let Some(wanted) = reference.address.as_deref().filter(|a| !a.is_empty()) {
        return addresses
            .iter()
            .chain(address)
            .find(|a| a.name.as_deref() == Some(wanted))
            .and_then(|a| a.url.clone())
            .ok_or_else(|| format!("{what} has no address named {wanted:?}"));
    }
    address
        .and_then(|a| a.url.clone())
        .filter(|u| !u.is_empty())
        .ok_or_else(|| format!("{what} has no address yet"))
}

/// Gets `reference` from `objects`, naming it in the error.
async fn fetch<K: ApiObject>(
    objects: &dyn Objects<K>,
    reference: &KReference,
    ns: &str,
) -> Result<K, String> {
    objects
        .get(Some(ns), &reference.name)
        .await
        .map_err(|e| format!("{} {ns}/{}: {e}", reference.kind, reference.name))
}

#[async_trait]
impl AddressResolver for EventingAddresses {
    async fn resolve_reference(
        &self,
        reference: &KReference,
        namespace: &str,
    ) -> Result<String, String> {
        let ns = reference.namespace_or(namespace);
        match (reference.api_group(), reference.kind.as_str()) {
            (messaging::GROUP, "InMemoryChannel") => {
                let imc = fetch(&*self.in_memory_channels, reference, ns).await?;
                let status = imc.status.unwrap_or_default();
                pick(status.address.as_ref(), &status.addresses, reference, ns)
            }
            (messaging::GROUP, "Channel") => {
                let channel = fetch(&*self.channels, reference, ns).await?;
                let status = channel.status.unwrap_or_default().channelable;
                pick(status.address.as_ref(), &status.addresses, reference, ns)
            }
            (flows::GROUP, "Sequence") => {
                let sequence = fetch(&*self.sequences, reference, ns).await?;
                let status = sequence.status.unwrap_or_default();
                pick(status.address.as_ref(), &status.addresses, reference, ns)
            }
            (flows::GROUP, "Parallel") => {
                let parallel = fetch(&*self.parallels, reference, ns).await?;
                let status = parallel.status.unwrap_or_default();
                pick(status.address.as_ref(), &status.addresses, reference, ns)
            }
            // Brokers, then the rest of the chain.
            _ => self.brokers.resolve_reference(reference, namespace).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ChannelableStatus, SequenceStatus};

    fn reference(yaml: &str) -> KReference {
        serde_yaml::from_str(yaml).expect("reference")
    }

    #[tokio::test]
    async fn channels_resolve_to_their_address_and_other_kinds_go_down_the_chain() {
        struct Services;
        #[async_trait]
        impl AddressResolver for Services {
            async fn resolve_reference(&self, r: &KReference, ns: &str) -> Result<String, String> {
                Ok(format!("http://{}.{ns}.svc.cluster.local", r.name))
            }
        }
        let store = InMemoryStore::new();
        let objects = EventingObjects::in_memory(&store);
        let imc: InMemoryChannel =
            serde_yaml::from_str("metadata: {name: c, namespace: ns}\nspec: {}\n").expect("imc");
        let mut imc = objects
            .in_memory_channels
            .create(&imc)
            .await
            .expect("created");
        let http = Addressable {
            name: Some("http".into()),
            url: Some("http://ingress/ns/c".into()),
            ..Addressable::default()
        };
        let https = Addressable {
            name: Some("https".into()),
            url: Some("https://ingress/ns/c".into()),
            ..Addressable::default()
        };
        imc.status = Some(ChannelableStatus {
            address: Some(http.clone()),
            addresses: vec![http, https],
            ..ChannelableStatus::default()
        });
        objects
            .in_memory_channels
            .replace_status(&imc)
            .await
            .expect("status");
        let resolver = EventingAddresses::new(&objects, Some(Arc::new(Services)));
        let resolve = |yaml: &'static str| {
            let r = reference(yaml);
            let resolver = &resolver;
            async move { resolver.resolve_reference(&r, "ns").await }
        };
        assert_eq!(
            resolve("{apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel, name: c}").await,
            Ok("http://ingress/ns/c".to_owned())
        );
        assert_eq!(
            resolve("{apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel, name: c, address: https}")
                .await,
            Ok("https://ingress/ns/c".to_owned())
        );
        let missing = resolve("{apiVersion: messaging.knative.dev/v1, kind: Channel, name: c}")
            .await
            .expect_err("no such Channel");
        assert!(missing.contains("not found"), "{missing}");
        let no_address = resolve("{apiVersion: flows.knative.dev/v1, kind: Sequence, name: s}")
            .await
            .expect_err("no such Sequence");
        assert!(no_address.contains("Sequence ns/s"), "{no_address}");
        assert_eq!(
            resolve("{apiVersion: serving.knative.dev/v1, kind: Service, name: app}").await,
            Ok("http://app.ns.svc.cluster.local".to_owned())
        );
    }

    #[tokio::test]
    async fn a_sequence_reference_can_pick_one_of_its_addresses() {
        let store = InMemoryStore::new();
        let objects = EventingObjects::in_memory(&store);
        let seq: Sequence =
            serde_yaml::from_str("metadata: {name: s, namespace: ns}\nspec: {steps: []}\n")
                .expect("sequence");
        let mut seq = objects.sequences.create(&seq).await.expect("created");
        let http = Addressable {
            name: Some("http".into()),
            url: Some("http://ingress/ns/s-kn-sequence-0".into()),
            ..Addressable::default()
        };
        let https = Addressable {
            name: Some("https".into()),
            url: Some("https://ingress/ns/s-kn-sequence-0".into()),
            ..Addressable::default()
        };
        seq.status = Some(SequenceStatus {
            address: Some(Addressable {
                name: None,
                ..http.clone()
            }),
            addresses: vec![http, https],
            ..SequenceStatus::default()
        });
        objects
            .sequences
            .replace_status(&seq)
            .await
            .expect("status");
        let resolver = EventingAddresses::new(&objects, None);
        let resolve = |yaml: &'static str| {
            let r = reference(yaml);
            let resolver = &resolver;
            async move { resolver.resolve_reference(&r, "ns").await }
        };
        assert_eq!(
            resolve("{apiVersion: flows.knative.dev/v1, kind: Sequence, name: s}").await,
            Ok("http://ingress/ns/s-kn-sequence-0".to_owned())
        );
        assert_eq!(
            resolve("{apiVersion: flows.knative.dev/v1, kind: Sequence, name: s, address: https}")
                .await,
            Ok("https://ingress/ns/s-kn-sequence-0".to_owned())
        );
        let unknown =
            resolve("{apiVersion: flows.knative.dev/v1, kind: Sequence, name: s, address: grpc}")
                .await
                .expect_err("no such address");
        assert!(unknown.contains("no address named \"grpc\""), "{unknown}");
    }
}
