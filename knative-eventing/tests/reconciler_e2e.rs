//! The channel, subscription, flow and source reconcilers running as
//! controllers on an `InMemoryStore`, with a real `Channels` data plane on
//! 127.0.0.1 and real HTTP subscribers (`specs/EVENTING.md §4`, `§6`).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudevents::{AttributesReader, AttributesWriter, Event};
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use knative_core::condition::{Condition, ConditionStatus, READY, find};
use knative_core::store::InMemoryStore;
use knative_eventing::api::{
    Addressable, Channel, ContainerSource, InMemoryChannel, KReference, Parallel, PingSource,
    Sequence, SinkBinding, Subscription,
};
use knative_eventing::binding;
use knative_eventing::broker::DispatchConfig;
use knative_eventing::channel::Channels;
use knative_eventing::log::InMemoryLog;
use knative_eventing::reconciler::testing::{
    BindingCall, RecordingBindingTarget, RecordingContainerRunner,
};
use knative_eventing::reconciler::{
    AddressResolver, ChannelReconciler, ContainerSourceReconciler, EventingAddresses,
    EventingObjects, InMemoryChannelReconciler, ParallelReconciler, PingScheduler,
    PingSourceReconciler, SequenceReconciler, SinkBindingReconciler, SubscriptionReconciler,
    resolve_destination,
};
use serde_json::json;
use tokio::task::JoinSet;

mod common;
use common::{Behaviour, Subscriber, event};

const DEADLINE: Duration = Duration::from_secs(20);
const NS: &str = "ns";
const EVENT_POLICIES_MESSAGE: &str =
    "Feature \"authentication-oidc\" must be enabled to support Authorization";

/// Every eventing controller on one store, and the channel ingress.
struct Platform {
    objects: EventingObjects,
    data_plane: Channels,
    ingress: String,
    resolver: Arc<dyn AddressResolver>,
    scheduler: PingScheduler,
    target: Arc<RecordingBindingTarget>,
    runner: Arc<RecordingContainerRunner>,
    stop: tokio::sync::watch::Sender<bool>,
    controllers: JoinSet<()>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Platform {
    async fn start() -> Platform {
        let store = InMemoryStore::new();
        let objects = EventingObjects::in_memory(&store);
        let data_plane = Channels::new(
            Arc::new(InMemoryLog::new()),
            binding::Limits::default(),
            DispatchConfig::default(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let ingress = format!("http://{}", listener.local_addr().expect("address"));
        let serving = data_plane.clone();
        tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
        let resolver: Arc<dyn AddressResolver> = Arc::new(EventingAddresses::new(&objects, None));
        let scheduler = PingScheduler::new();
        let target = Arc::new(RecordingBindingTarget::new());
        let runner = Arc::new(RecordingContainerRunner::new());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let until = move || {
            let mut rx = stopped.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let mut controllers = JoinSet::new();
        let o = &objects;
        controllers.spawn(
            InMemoryChannelReconciler::new(
                Arc::clone(&o.in_memory_channels),
                data_plane.clone(),
                Arc::clone(&resolver),
                ingress.clone(),
            )
            .into_controller()
            .run(until()),
        );
        controllers.spawn(
            ChannelReconciler::new(Arc::clone(&o.channels), Arc::clone(&o.in_memory_channels))
                .into_controller()
                .run(until()),
        );
        controllers.spawn(
            SubscriptionReconciler::new(
                Arc::clone(&o.subscriptions),
                Arc::clone(&o.channels),
                Arc::clone(&o.in_memory_channels),
                Arc::clone(&resolver),
            )
            .into_controller()
            .run(until()),
        );
        controllers.spawn(
            SequenceReconciler::new(
                Arc::clone(&o.sequences),
                Arc::clone(&o.in_memory_channels),
                Arc::clone(&o.subscriptions),
            )
            .into_controller()
            .run(until()),
        );
        controllers.spawn(
            ParallelReconciler::new(
                Arc::clone(&o.parallels),
                Arc::clone(&o.in_memory_channels),
                Arc::clone(&o.subscriptions),
            )
            .into_controller()
            .run(until()),
        );
        controllers.spawn(
            PingSourceReconciler::new(
                Arc::clone(&o.ping_sources),
                Arc::clone(&resolver),
                scheduler.clone(),
            )
            .into_controller()
            .run(until()),
        );
        controllers.spawn(
            SinkBindingReconciler::new(
                Arc::clone(&o.sink_bindings),
                Arc::clone(&resolver),
                Arc::clone(&target) as Arc<dyn knative_eventing::reconciler::BindingTarget>,
            )
            .into_controller()
            .run(until()),
        );
        controllers.spawn(
            ContainerSourceReconciler::new(
                Arc::clone(&o.container_sources),
                Arc::clone(&resolver),
                Arc::clone(&runner) as Arc<dyn knative_eventing::reconciler::ContainerRunner>,
            )
            .into_controller()
            .run(until()),
        );
        Platform {
            objects,
            data_plane,
            ingress,
            resolver,
            scheduler,
            target,
            runner,
            stop,
            controllers,
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.controllers.join_next().await.is_some() {}
    }

    /// Posts `event` (binary mode) to `url`.
    async fn post(&self, url: &str, event: &Event) -> StatusCode {
        let (headers, body) = binding::write_binary(event).expect("encodes");
        let mut request = Request::builder().method("POST").uri(url);
        for (k, v) in &headers {
            request = request.header(k, v);
        }
        self.client
            .request(request.body(Full::new(body)).expect("request"))
            .await
            .expect("answered")
            .status()
    }
}

fn parse<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
    serde_yaml::from_str(yaml).expect("manifest parses")
}

async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    wait_for(what, || {
        let ok = check();
        async move { ok.then_some(()) }
    })
    .await;
}

fn is_ready(conditions: &[Condition]) -> bool {
    find(conditions, READY).is_some_and(Condition::is_true)
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
    find(conditions, type_).unwrap_or_else(|| panic!("no {type_} condition in {conditions:?}"))
}

async fn ready_imc(p: &Platform, name: &str) -> InMemoryChannel {
    wait_for(&format!("InMemoryChannel {name} ready"), || async {
        let c = p
            .objects
            .in_memory_channels
            .get(Some(NS), name)
            .await
            .ok()?;
        is_ready(&c.status.as_ref()?.status.conditions).then_some(c)
    })
    .await
}

async fn ready_subscription(p: &Platform, name: &str) -> Subscription {
    wait_for(&format!("Subscription {name} ready"), || async {
        let s = p.objects.subscriptions.get(Some(NS), name).await.ok()?;
        is_ready(&s.status.as_ref()?.status.conditions).then_some(s)
    })
    .await
}

fn address(imc: &InMemoryChannel) -> String {
    imc.status
        .as_ref()
        .and_then(|s| s.address.as_ref())
        .and_then(|a| a.url.clone())
        .expect("address")
}

/// Replies to every event with the same event, its type suffixed with
/// `.{tag}`.
fn transforming(tag: &'static str) -> Behaviour {
    Arc::new(move |_, e: &Event| {
        let mut reply = e.clone();
        reply.set_type(format!("{}.{tag}", e.ty()));
        (200, Some(reply))
    })
}

/// Replies with the event itself (a filter that passes).
fn passing() -> Behaviour {
    Arc::new(|_, e: &Event| (200, Some(e.clone())))
}

/// Answers 200 without a body (a filter that drops).
fn dropping() -> Behaviour {
    Arc::new(|_, _| (200, None))
}

fn subscription(name: &str, channel: &str, channel_kind: &str, spec_rest: &str) -> Subscription {
    parse(&format!(
        r#"
metadata: {{name: {name}, namespace: {NS}}}
spec:
  channel: {{apiVersion: messaging.knative.dev/v1, kind: {channel_kind}, name: {channel}}}
{spec_rest}
"#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_on_an_in_memory_channel_deliver_and_chain_replies() {
    let p = Platform::start().await;
    let imcs = &p.objects.in_memory_channels;
    let subs = &p.objects.subscriptions;
    imcs.create(&parse(&format!(
        "metadata: {{name: orders, namespace: {NS}}}\nspec: {{}}\n"
    )))
    .await
    .expect("orders");
    imcs.create(&parse(&format!(
        "metadata: {{name: checked, namespace: {NS}}}\nspec: {{}}\n"
    )))
    .await
    .expect("checked");
    let plain = Subscriber::start(Subscriber::accepting()).await;
    let checker = Subscriber::start(transforming("checked")).await;
    let audit = Subscriber::start(Subscriber::accepting()).await;
    subs.create(&subscription(
        "plain",
        "orders",
        "InMemoryChannel",
        &format!("  subscriber: {{uri: '{}'}}", plain.url),
    ))
    .await
    .expect("plain");
    subs.create(&subscription(
        "checker",
        "orders",
        "InMemoryChannel",
        &format!(
            "  subscriber: {{uri: '{}'}}\n  reply: {{ref: {{apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel, name: checked}}}}",
            checker.url
        ),
    ))
    .await
    .expect("checker");
    subs.create(&subscription(
        "audit",
        "checked",
        "InMemoryChannel",
        &format!("  subscriber: {{uri: '{}'}}", audit.url),
    ))
    .await
    .expect("audit");

    for name in ["plain", "checker", "audit"] {
        ready_subscription(&p, name).await;
    }
    let orders = ready_imc(&p, "orders").await;
    let checked = ready_imc(&p, "checked").await;
    assert_eq!(address(&orders), format!("{}/{NS}/orders", p.ingress));
    let status = orders.status.as_ref().expect("status");
    assert_eq!(status.subscribers.len(), 2);
    assert!(
        status
            .subscribers
            .iter()
            .all(|s| s.ready == ConditionStatus::True && s.observed_generation == Some(1))
    );
    for c in [
        "ServiceReady",
        "EndpointsReady",
        "ChannelServiceReady",
        "Addressable",
        "DispatcherReady",
    ] {
        assert!(condition(&status.status.conditions, c).is_true(), "{c}");
    }
    assert_eq!(
        condition(&status.status.conditions, "DeadLetterSinkResolved").reason,
        "DeadLetterSinkNotConfigured"
    );
    let checker_sub = subs.get(Some(NS), "checker").await.expect("checker");
    let physical = checker_sub
        .status
        .as_ref()
        .and_then(|s| s.physical_subscription.clone())
        .expect("physical subscription");
    assert_eq!(
        physical.subscriber_uri.as_deref(),
        Some(checker.url.as_str())
    );
    assert_eq!(physical.reply_uri, Some(address(&checked)));
    assert_eq!(
        orders.spec.channelable.subscribers.len(),
        2,
        "{:?}",
        orders.spec
    );

    assert_eq!(
        p.post(&address(&orders), &event("e-1", "order", "/shop"))
            .await,
        StatusCode::ACCEPTED
    );
    wait_until(
        "the event at both subscribers and the reply at audit",
        || plain.events().len() == 1 && checker.events().len() == 1 && audit.events().len() == 1,
    )
    .await;
    let replied = &audit.events()[0];
    assert_eq!(replied.id(), "e-1");
    assert_eq!(replied.ty(), "order.checked");

    // Deleting a Subscription takes it out of the channel and the data plane.
    subs.delete(Some(NS), "plain").await.expect("deleted");
    wait_for("plain gone", || async {
        subs.get(Some(NS), "plain").await.is_err().then_some(())
    })
    .await;
    wait_for("plain out of the channel spec", || async {
        let c = imcs.get(Some(NS), "orders").await.ok()?;
        (c.spec.channelable.subscribers.len() == 1
            && p.data_plane.subscriptions(NS, "orders").len() == 1)
            .then_some(())
    })
    .await;
    assert_eq!(
        p.post(&address(&orders), &event("e-2", "order", "/shop"))
            .await,
        StatusCode::ACCEPTED
    );
    wait_until("the second reply", || audit.events().len() == 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        plain.events().len(),
        1,
        "a deleted subscription gets nothing"
    );
    assert_eq!(checker.ids(), ["e-1", "e-2"]);

    // Deleting a channel removes it from the data plane.
    imcs.delete(Some(NS), "checked").await.expect("deleted");
    wait_until("checked out of the data plane", || {
        !p.data_plane.has_channel(NS, "checked")
    })
    .await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_creates_its_in_memory_channel_and_mirrors_it() {
    let p = Platform::start().await;
    let channels = &p.objects.channels;
    channels
        .create(&parse(&format!(
            "metadata: {{name: events, namespace: {NS}}}\nspec:\n  channelTemplate: {{apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel, spec: {{delivery: {{retry: 2}}}}}}\n"
        )))
        .await
        .expect("channel");
    let channel: Channel = wait_for("channel ready", || async {
        let c = channels.get(Some(NS), "events").await.ok()?;
        is_ready(&c.status.as_ref()?.channelable.status.conditions).then_some(c)
    })
    .await;
    let status = channel.status.as_ref().expect("status");
    let url = status
        .channelable
        .address
        .as_ref()
        .and_then(|a| a.url.clone())
        .expect("address");
    assert_eq!(url, format!("{}/{NS}/events", p.ingress));
    assert_eq!(
        status.channel,
        Some(KReference {
            kind: "InMemoryChannel".into(),
            namespace: Some(NS.into()),
            name: "events".into(),
            api_version: Some("messaging.knative.dev/v1".into()),
            ..KReference::default()
        })
    );
    for c in [
        "BackingChannelReady",
        "Addressable",
        "DeadLetterSinkResolved",
    ] {
        assert!(
            condition(&status.channelable.status.conditions, c).is_true(),
            "{c}"
        );
    }
    let backing = ready_imc(&p, "events").await;
    let owner = &backing.metadata.owner_references.as_deref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("Channel", Some(true))
    );
    assert_eq!(owner.uid, channel.metadata.uid.clone().expect("uid"));
    assert_eq!(
        backing
            .spec
            .channelable
            .delivery
            .as_ref()
            .and_then(|d| d.retry),
        Some(2),
        "the template's spec"
    );
    assert_eq!(
        resolve_destination(
            &*p.resolver,
            &parse("ref: {apiVersion: messaging.knative.dev/v1, kind: Channel, name: events}\n"),
            NS
        )
        .await,
        Ok(url.clone())
    );

    // A Subscription to the Channel lands on the backing channel.
    let sink = Subscriber::start(Subscriber::accepting()).await;
    p.objects
        .subscriptions
        .create(&subscription(
            "to-channel",
            "events",
            "Channel",
            &format!("  subscriber: {{uri: '{}'}}", sink.url),
        ))
        .await
        .expect("subscription");
    ready_subscription(&p, "to-channel").await;
    assert_eq!(
        p.post(&url, &event("c-1", "t", "/s")).await,
        StatusCode::ACCEPTED
    );
    wait_until("the event through the channel", || sink.events().len() == 1).await;

    // A kind this crate cannot create is reported.
    channels
        .create(&parse(&format!(
            "metadata: {{name: kafka, namespace: {NS}}}\nspec:\n  channelTemplate: {{apiVersion: messaging.knative.dev/v1beta1, kind: KafkaChannel}}\n"
        )))
        .await
        .expect("channel");
    let kafka = wait_for("kafka channel failed", || async {
        let c = channels.get(Some(NS), "kafka").await.ok()?;
        let conditions = c.status.as_ref()?.channelable.status.conditions.clone();
        find(&conditions, "BackingChannelReady")
            .is_some_and(Condition::is_false)
            .then_some(conditions)
    })
    .await;
    let failed = condition(&kafka, "BackingChannelReady");
    assert_eq!(failed.reason, "ChannelFailure");
    assert!(
        failed.message.contains("KafkaChannel"),
        "{}",
        failed.message
    );
    assert!(condition(&kafka, READY).is_false());

    // A Subscription to something that is not a channel is not resolved.
    p.objects
        .subscriptions
        .create(&parse(&format!(
            "metadata: {{name: odd, namespace: {NS}}}\nspec:\n  channel: {{apiVersion: v1, kind: ConfigMap, name: x}}\n  subscriber: {{uri: 'http://127.0.0.1:1/'}}\n"
        )))
        .await
        .expect("subscription");
    let odd = wait_for("odd subscription failed", || async {
        let s = p.objects.subscriptions.get(Some(NS), "odd").await.ok()?;
        let conditions = s.status.as_ref()?.status.conditions.clone();
        find(&conditions, "ReferencesResolved")
            .is_some_and(Condition::is_false)
            .then_some(conditions)
    })
    .await;
    assert_eq!(
        condition(&odd, "ReferencesResolved").reason,
        "ChannelReferenceFailed"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_runs_its_steps_in_order_and_replies_at_the_end() {
    let p = Platform::start().await;
    let steps = [
        Subscriber::start(transforming("a")).await,
        Subscriber::start(transforming("b")).await,
        Subscriber::start(transforming("c")).await,
    ];
    let end = Subscriber::start(Subscriber::accepting()).await;
    let manifest = |steps: &[&Subscriber]| -> Sequence {
        let steps: String = steps
            .iter()
            .map(|s| format!("    - uri: '{}'\n", s.url))
            .collect();
        parse(&format!(
            "metadata: {{name: seq, namespace: {NS}}}\nspec:\n  steps:\n{steps}  reply: {{uri: '{}'}}\n",
            end.url
        ))
    };
    let sequences = &p.objects.sequences;
    sequences
        .create(&manifest(&[&steps[0], &steps[1], &steps[2]]))
        .await
        .expect("sequence");
    let seq = wait_for("sequence ready", || async {
        let s = sequences.get(Some(NS), "seq").await.ok()?;
        is_ready(&s.status.as_ref()?.status.conditions).then_some(s)
    })
    .await;
    let status = seq.status.as_ref().expect("status");
    assert_eq!(status.channel_statuses.len(), 3);
    assert_eq!(status.subscription_statuses.len(), 3);
    assert!(status.channel_statuses.iter().all(|c| c.ready.is_true()));
    assert_eq!(
        status.channel_statuses[1].channel.name.as_deref(),
        Some("seq-kn-sequence-1")
    );
    let url = status
        .address
        .as_ref()
        .and_then(|a| a.url.clone())
        .expect("address");
    assert_eq!(url, format!("{}/{NS}/seq-kn-sequence-0", p.ingress));
    assert_eq!(
        resolve_destination(
            &*p.resolver,
            &parse("ref: {apiVersion: flows.knative.dev/v1, kind: Sequence, name: seq}\n"),
            NS
        )
        .await,
        Ok(url.clone())
    );

    assert_eq!(
        p.post(&url, &event("s-1", "order", "/shop")).await,
        StatusCode::ACCEPTED
    );
    wait_until("the end of the sequence", || end.events().len() == 1).await;
    let last = &end.events()[0];
    assert_eq!(last.ty(), "order.a.b.c");
    assert_eq!(last.id(), "s-1");
    assert_eq!(steps[1].events()[0].ty(), "order.a");

    // Two steps: the third channel and subscription go, step 1 now replies
    // to the end.
    let mut fewer = manifest(&[&steps[0], &steps[1]]);
    let current = sequences.get(Some(NS), "seq").await.expect("sequence");
    fewer.metadata.resource_version = current.metadata.resource_version.clone();
    sequences.replace(&fewer).await.expect("updated");
    wait_for("the third step gone", || async {
        let channel = p
            .objects
            .in_memory_channels
            .get(Some(NS), "seq-kn-sequence-2")
            .await;
        let sub = p
            .objects
            .subscriptions
            .get(Some(NS), "seq-kn-sequence-2")
            .await;
        let s = sequences.get(Some(NS), "seq").await.ok()?;
        let status = s.status.as_ref()?;
        (channel.is_err()
            && sub.is_err()
            && status.status.observed_generation == Some(2)
            && status.channel_statuses.len() == 2
            && is_ready(&status.status.conditions))
        .then_some(())
    })
    .await;
    wait_for("step 1 replies to the end", || async {
        let sub = ready_subscription(&p, "seq-kn-sequence-1").await;
        (sub.status
            .as_ref()?
            .physical_subscription
            .as_ref()?
            .reply_uri
            .as_deref()
            == Some(end.url.as_str()))
        .then_some(())
    })
    .await;
    assert_eq!(
        p.post(&url, &event("s-2", "order", "/shop")).await,
        StatusCode::ACCEPTED
    );
    wait_until("the shorter sequence's reply", || end.events().len() == 2).await;
    assert_eq!(end.events()[1].ty(), "order.a.b");
    assert_eq!(steps[2].events().len(), 1);

    // Deleting the Sequence collects its children.
    sequences.delete(Some(NS), "seq").await.expect("deleted");
    wait_until("the channels out of the data plane", || {
        !p.data_plane.has_channel(NS, "seq-kn-sequence-0")
            && !p.data_plane.has_channel(NS, "seq-kn-sequence-1")
    })
    .await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_sends_each_event_to_the_branches_whose_filter_passes() {
    let p = Platform::start().await;
    let drop_filter = Subscriber::start(dropping()).await;
    let pass_filter = Subscriber::start(passing()).await;
    let dropped_branch = Subscriber::start(transforming("dropped")).await;
    let passed_branch = Subscriber::start(transforming("passed")).await;
    let unfiltered_branch = Subscriber::start(transforming("unfiltered")).await;
    let replies = Subscriber::start(Subscriber::accepting()).await;
    let parallels = &p.objects.parallels;
    parallels
        .create(&parse(&format!(
            r#"
metadata: {{name: fan, namespace: {NS}}}
spec:
  branches:
    - filter: {{uri: '{}'}}
      subscriber: {{uri: '{}'}}
    - filter: {{uri: '{}'}}
      subscriber: {{uri: '{}'}}
    - subscriber: {{uri: '{}'}}
  reply: {{uri: '{}'}}
"#,
            drop_filter.url,
            dropped_branch.url,
            pass_filter.url,
            passed_branch.url,
            unfiltered_branch.url,
            replies.url
        )))
        .await
        .expect("parallel");
    let par: Parallel = wait_for("parallel ready", || async {
        let par = parallels.get(Some(NS), "fan").await.ok()?;
        is_ready(&par.status.as_ref()?.status.conditions).then_some(par)
    })
    .await;
    let status = par.status.as_ref().expect("status");
    assert_eq!(status.branch_statuses.len(), 3);
    assert_eq!(
        status
            .ingress_channel_status
            .as_ref()
            .and_then(|s| s.channel.name.as_deref()),
        Some("fan-kn-parallel")
    );
    assert!(status.branch_statuses.iter().all(|b| {
        b.filter_subscription_status.ready.is_true()
            && b.filter_channel_status.ready.is_true()
            && b.subscriber_subscription_status.ready.is_true()
    }));
    let url = status
        .address
        .as_ref()
        .and_then(|a| a.url.clone())
        .expect("address");
    assert_eq!(url, format!("{}/{NS}/fan-kn-parallel", p.ingress));
    assert_eq!(
        resolve_destination(
            &*p.resolver,
            &parse("ref: {apiVersion: flows.knative.dev/v1, kind: Parallel, name: fan}\n"),
            NS
        )
        .await,
        Ok(url.clone())
    );

    assert_eq!(
        p.post(&url, &event("p-1", "order", "/shop")).await,
        StatusCode::ACCEPTED
    );
    wait_until("both replies", || replies.events().len() == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(drop_filter.events().len(), 1, "the filter saw the event");
    assert_eq!(pass_filter.events().len(), 1);
    assert!(dropped_branch.events().is_empty(), "the filter dropped it");
    assert_eq!(passed_branch.ids(), ["p-1"]);
    assert_eq!(unfiltered_branch.ids(), ["p-1"]);
    let mut types: Vec<String> = replies.events().iter().map(|e| e.ty().to_owned()).collect();
    types.sort();
    assert_eq!(types, ["order.passed", "order.unfiltered"]);

    // One branch fewer: its children go.
    let mut fewer = parallels.get(Some(NS), "fan").await.expect("parallel");
    fewer.spec.branches.truncate(2);
    parallels.replace(&fewer).await.expect("updated");
    wait_for("branch 2 gone", || async {
        let gone = p
            .objects
            .in_memory_channels
            .get(Some(NS), "fan-kn-parallel-2")
            .await
            .is_err()
            && p.objects
                .subscriptions
                .get(Some(NS), "fan-kn-parallel-filter-2")
                .await
                .is_err()
            && p.objects
                .subscriptions
                .get(Some(NS), "fan-kn-parallel-2")
                .await
                .is_err();
        let par = parallels.get(Some(NS), "fan").await.ok()?;
        let status = par.status.as_ref()?;
        (gone && status.branch_statuses.len() == 2 && is_ready(&status.status.conditions))
            .then_some(())
    })
    .await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_source_pings_its_sink_every_second_until_deleted() {
    let p = Platform::start().await;
    let sink = Subscriber::start(Subscriber::accepting()).await;
    let sources = &p.objects.ping_sources;
    sources
        .create(&parse(&format!(
            r#"
metadata: {{name: heartbeat, namespace: {NS}}}
spec:
  schedule: "* * * * * *"
  contentType: application/json
  data: '{{"beat": true}}'
  ceOverrides: {{extensions: {{team: platform}}}}
  sink: {{uri: '{}'}}
"#,
            sink.url
        )))
        .await
        .expect("ping source");
    let source: PingSource = wait_for("ping source ready", || async {
        let s = sources.get(Some(NS), "heartbeat").await.ok()?;
        is_ready(&s.status.as_ref()?.status.conditions).then_some(s)
    })
    .await;
    let status = source.status.as_ref().expect("status");
    assert_eq!(status.sink_uri.as_deref(), Some(sink.url.as_str()));
    assert_eq!(status.ce_attributes.len(), 1);
    assert_eq!(status.ce_attributes[0].type_, "dev.knative.sources.ping");
    assert_eq!(
        status.ce_attributes[0].source,
        "/apis/v1/namespaces/ns/pingsources/heartbeat"
    );
    assert!(condition(&status.status.conditions, "SinkProvided").is_true());
    assert!(condition(&status.status.conditions, "Deployed").is_true());

    wait_until("two pings", || sink.events().len() >= 2).await;
    for e in sink.events() {
        assert_eq!(e.ty(), "dev.knative.sources.ping");
        assert_eq!(
            e.source().to_string(),
            "/apis/v1/namespaces/ns/pingsources/heartbeat"
        );
        assert_eq!(
            e.extension("team").map(ToString::to_string).as_deref(),
            Some("platform")
        );
        let data: serde_json::Value = match e.data() {
            Some(cloudevents::Data::Json(v)) => v.clone(),
            Some(cloudevents::Data::Binary(b)) => serde_json::from_slice(b).expect("json"),
            Some(cloudevents::Data::String(s)) => serde_json::from_str(s).expect("json"),
            None => panic!("no data"),
        };
        assert_eq!(data, json!({"beat": true}));
        let time = e.time().expect("time");
        assert_eq!(time.timestamp_subsec_millis(), 0, "fires on the second");
    }
    let events = sink.events();
    let (a, b) = (
        events[0].time().expect("time"),
        events[1].time().expect("time"),
    );
    assert!(
        (*b - *a).num_seconds() >= 1,
        "one ping per firing, on whole seconds"
    );

    sources
        .delete(Some(NS), "heartbeat")
        .await
        .expect("deleted");
    wait_for("ping source gone", || async {
        sources
            .get(Some(NS), "heartbeat")
            .await
            .is_err()
            .then_some(())
    })
    .await;
    assert!(!p.scheduler.is_scheduled(NS, "heartbeat"));
    let seen = sink.events().len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(sink.events().len(), seen, "no ping after deletion");
    p.stop().await;
}

/// Spec §6: a sink `Destination` with `CACerts` gives the subject
/// `K_CA_CERTS` and the status `sinkCACerts`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_with_ca_certs_binds_k_ca_certs() {
    let p = Platform::start().await;
    let bindings = &p.objects.sink_bindings;
    bindings
        .create(&parse(&format!(
            r#"
metadata: {{name: tls, namespace: {NS}}}
spec:
  subject: {{apiVersion: serving.knative.dev/v1, kind: Service, namespace: {NS}, name: app}}
  sink: {{uri: "https://sink.example/", CACerts: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"}}
"#
        )))
        .await
        .expect("binding");
    let binding: SinkBinding = wait_for("binding ready", || async {
        let b = bindings.get(Some(NS), "tls").await.ok()?;
        is_ready(&b.status.as_ref()?.status.conditions).then_some(b)
    })
    .await;
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
    assert_eq!(
        binding
            .status
            .as_ref()
            .and_then(|s| s.sink_ca_certs.as_deref()),
        Some(pem)
    );
    let env = p.target.env(NS, &binding.spec.subject);
    assert_eq!(
        env.get("K_SINK").map(String::as_str),
        Some("https://sink.example/")
    );
    assert_eq!(env.get("K_CA_CERTS").map(String::as_str), Some(pem));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_binding_binds_and_unbinds_its_subject() {
    let p = Platform::start().await;
    p.objects
        .in_memory_channels
        .create(&parse(&format!(
            "metadata: {{name: inbox, namespace: {NS}}}\nspec: {{}}\n"
        )))
        .await
        .expect("channel");
    let inbox = address(&ready_imc(&p, "inbox").await);
    let bindings = &p.objects.sink_bindings;
    bindings
        .create(&parse(&format!(
            r#"
metadata: {{name: bind, namespace: {NS}}}
spec:
  subject: {{apiVersion: serving.knative.dev/v1, kind: Service, namespace: {NS}, name: app}}
  sink: {{ref: {{apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel, name: inbox}}}}
  ceOverrides: {{extensions: {{team: a}}}}
"#
        )))
        .await
        .expect("binding");
    let binding: SinkBinding = wait_for("binding ready", || async {
        let b = bindings.get(Some(NS), "bind").await.ok()?;
        is_ready(&b.status.as_ref()?.status.conditions).then_some(b)
    })
    .await;
    assert_eq!(
        binding.status.as_ref().and_then(|s| s.sink_uri.clone()),
        Some(inbox.clone())
    );
    let subject = binding.spec.subject.clone();
    let env = p.target.env(NS, &subject);
    assert_eq!(env.get("K_SINK"), Some(&inbox));
    assert_eq!(
        env.get("K_CE_OVERRIDES").map(String::as_str),
        Some(r#"{"extensions":{"team":"a"}}"#)
    );

    // The platform failing to bind is reported.
    p.target.fail_with(Some("service app not found".into()));
    let mut changed = bindings.get(Some(NS), "bind").await.expect("binding");
    changed.spec.source.ce_overrides = None;
    bindings.replace(&changed).await.expect("updated");
    let failed = wait_for("binding failed", || async {
        let b = bindings.get(Some(NS), "bind").await.ok()?;
        let conditions = b.status.as_ref()?.status.conditions.clone();
        find(&conditions, READY)
            .is_some_and(Condition::is_false)
            .then_some(conditions)
    })
    .await;
    assert_eq!(condition(&failed, READY).reason, "SubjectUnavailable");
    assert!(condition(&failed, "SinkProvided").is_true());
    p.target.fail_with(None);
    wait_for("binding ready again", || async {
        let b = bindings.get(Some(NS), "bind").await.ok()?;
        is_ready(&b.status.as_ref()?.status.conditions).then_some(())
    })
    .await;
    assert_eq!(
        p.target
            .env(NS, &subject)
            .get("K_CE_OVERRIDES")
            .map(String::as_str),
        Some("")
    );

    bindings.delete(Some(NS), "bind").await.expect("deleted");
    wait_for("binding gone", || async {
        bindings.get(Some(NS), "bind").await.is_err().then_some(())
    })
    .await;
    assert!(p.target.env(NS, &subject).is_empty(), "unbound");
    assert!(p.target.calls().iter().any(|c| matches!(
        c,
        BindingCall::Unbind { names, .. } if names.iter().any(|n| n == "K_SINK")
    )));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_source_runs_its_template_with_the_sink_injected() {
    let p = Platform::start().await;
    let sources = &p.objects.container_sources;
    sources
        .create(&parse(&format!(
            r#"
metadata: {{name: heartbeats, namespace: {NS}}}
spec:
  template:
    spec:
      containers:
        - name: beat
          image: example/heartbeats
          env: [{{name: PERIOD, value: "1"}}, {{name: K_SINK, value: stale}}]
  sink: {{uri: 'http://127.0.0.1:9/events'}}
  ceOverrides: {{extensions: {{origin: test}}}}
"#
        )))
        .await
        .expect("container source");
    let source: ContainerSource = wait_for("container source ready", || async {
        let s = sources.get(Some(NS), "heartbeats").await.ok()?;
        is_ready(&s.status.as_ref()?.status.conditions).then_some(s)
    })
    .await;
    let status = source.status.as_ref().expect("status");
    assert_eq!(
        status.sink_uri.as_deref(),
        Some("http://127.0.0.1:9/events")
    );
    assert!(condition(&status.status.conditions, "SinkBindingReady").is_true());
    assert!(condition(&status.status.conditions, "ReceiveAdapterReady").is_true());
    let template = p.runner.running(NS, "heartbeats").expect("running");
    let env: Vec<(String, String)> = template.spec.as_ref().expect("pod").containers[0]
        .env
        .iter()
        .flatten()
        .map(|v| (v.name.clone(), v.value.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        env,
        [
            ("PERIOD".to_owned(), "1".to_owned()),
            ("K_SINK".to_owned(), "http://127.0.0.1:9/events".to_owned()),
            (
                "K_CE_OVERRIDES".to_owned(),
                r#"{"extensions":{"origin":"test"}}"#.to_owned()
            ),
        ]
    );

    // As upstream: ReceiveAdapterReady follows the workload's
    // availability, and Ready with it.
    p.runner.set_available(false);
    let mut changed = sources.get(Some(NS), "heartbeats").await.expect("source");
    changed
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("touch".to_owned(), "1".to_owned());
    sources.replace(&changed).await.expect("updated");
    let conditions = wait_for("adapter unavailable", || async {
        let s = sources.get(Some(NS), "heartbeats").await.ok()?;
        let conditions = s.status.as_ref()?.status.conditions.clone();
        find(&conditions, "ReceiveAdapterReady")
            .is_some_and(Condition::is_false)
            .then_some(conditions)
    })
    .await;
    let adapter = condition(&conditions, "ReceiveAdapterReady");
    assert_eq!(adapter.reason, "DeploymentUnavailable");
    assert_eq!(
        adapter.message,
        "The Deployment 'heartbeats-deployment' is unavailable."
    );
    assert!(condition(&conditions, READY).is_false());
    p.runner.set_available(true);
    wait_for("adapter available again (rechecked)", || async {
        let s = sources.get(Some(NS), "heartbeats").await.ok()?;
        is_ready(&s.status.as_ref()?.status.conditions).then_some(())
    })
    .await;

    sources
        .delete(Some(NS), "heartbeats")
        .await
        .expect("deleted");
    wait_for("container source gone", || async {
        sources
            .get(Some(NS), "heartbeats")
            .await
            .is_err()
            .then_some(())
    })
    .await;
    assert!(p.runner.running(NS, "heartbeats").is_none());
    assert_eq!(
        p.runner.removed(),
        [(NS.to_owned(), "heartbeats".to_owned())]
    );
    p.stop().await;
}

// Flow and channel status details (`specs/EVENTING.md §4`, `§6`): a
// Sequence's `status.addresses`, the `EventPoliciesReady` and
// `OIDCIdentityCreated` conditions upstream sets while OIDC is off, and a
// PingSource's `data` reaching the sink byte for byte.

/// An HTTP server that answers 202 and keeps every request's headers and
/// body as received.
struct RawSink {
    url: String,
    requests: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
}

impl RawSink {
    async fn start() -> RawSink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let url = format!("http://{}/", listener.local_addr().expect("address"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&requests);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let kept = Arc::clone(&kept);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: Request<hyper::body::Incoming>| {
                            let kept = Arc::clone(&kept);
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                kept.lock().expect("lock").push((parts.headers, body));
                                let mut response = Response::new(Full::new(Bytes::new()));
                                *response.status_mut() = StatusCode::ACCEPTED;
                                Ok::<_, std::convert::Infallible>(response)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        RawSink { url, requests }
    }

    fn requests(&self) -> Vec<(HeaderMap, Bytes)> {
        self.requests.lock().expect("lock").clone()
    }
}

/// Asserts `type_` is `True` with `reason` and `message`.
fn assert_true_with(conditions: &[Condition], type_: &str, reason: &str, message: &str) {
    let c = find(conditions, type_).unwrap_or_else(|| panic!("no {type_} in {conditions:?}"));
    assert!(c.is_true(), "{c:?}");
    assert_eq!((c.reason.as_str(), c.message.as_str()), (reason, message));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_offers_its_first_channels_addresses_and_flows_report_event_policies() {
    let p = Platform::start().await;
    let sink = RawSink::start().await;
    let sequences = &p.objects.sequences;
    sequences
        .create(&parse(&format!(
            "metadata: {{name: seq, namespace: {NS}}}\nspec:\n  steps:\n    - uri: '{}'\n",
            sink.url
        )))
        .await
        .expect("sequence");
    let seq: Sequence = wait_for("sequence ready", || async {
        let s = sequences.get(Some(NS), "seq").await.ok()?;
        is_ready(&s.status.as_ref()?.status.conditions).then_some(s)
    })
    .await;
    let status = seq.status.as_ref().expect("status");
    let url = format!("{}/{NS}/seq-kn-sequence-0", p.ingress);
    assert_eq!(
        status.addresses,
        [Addressable {
            name: Some("http".into()),
            url: Some(url.clone()),
            ..Addressable::default()
        }]
    );
    let json = serde_json::to_value(status).expect("serialises");
    assert_eq!(json["addresses"][0]["url"], url.as_str());
    assert_true_with(
        &status.status.conditions,
        "EventPoliciesReady",
        "OIDCDisabled",
        EVENT_POLICIES_MESSAGE,
    );

    // A reference naming one of the addresses resolves to it.
    for yaml in [
        "ref: {apiVersion: flows.knative.dev/v1, kind: Sequence, name: seq, address: http}\n",
        "ref: {apiVersion: flows.knative.dev/v1, kind: Sequence, name: seq}\n",
    ] {
        assert_eq!(
            resolve_destination(&*p.resolver, &parse(yaml), NS).await,
            Ok(url.clone()),
            "{yaml}"
        );
    }
    let unknown = resolve_destination(
        &*p.resolver,
        &parse(
            "ref: {apiVersion: flows.knative.dev/v1, kind: Sequence, name: seq, address: https}\n",
        ),
        NS,
    )
    .await
    .expect_err("no https address");
    assert!(unknown.contains("https"), "{unknown}");

    // The children: the channel's event policies, the Subscription's OIDC
    // identity.
    let imc = p
        .objects
        .in_memory_channels
        .get(Some(NS), "seq-kn-sequence-0")
        .await
        .expect("channel");
    assert_true_with(
        &imc.status.as_ref().expect("status").status.conditions,
        "EventPoliciesReady",
        "OIDCDisabled",
        EVENT_POLICIES_MESSAGE,
    );
    let sub = p
        .objects
        .subscriptions
        .get(Some(NS), "seq-kn-sequence-0")
        .await
        .expect("subscription");
    let sub_conditions = &sub.status.as_ref().expect("status").status.conditions;
    assert!(is_ready(sub_conditions));
    assert_true_with(
        sub_conditions,
        "OIDCIdentityCreated",
        "authentication-oidc feature disabled",
        "",
    );

    // A Channel and a Parallel.
    p.objects
        .channels
        .create(&parse(&format!(
            "metadata: {{name: events, namespace: {NS}}}\nspec:\n  channelTemplate: {{apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel}}\n"
        )))
        .await
        .expect("channel");
    let channel: Channel = wait_for("channel ready", || async {
        let c = p.objects.channels.get(Some(NS), "events").await.ok()?;
        is_ready(&c.status.as_ref()?.channelable.status.conditions).then_some(c)
    })
    .await;
    assert_true_with(
        &channel
            .status
            .as_ref()
            .expect("status")
            .channelable
            .status
            .conditions,
        "EventPoliciesReady",
        "OIDCDisabled",
        EVENT_POLICIES_MESSAGE,
    );
    p.objects
        .parallels
        .create(&parse(&format!(
            "metadata: {{name: fan, namespace: {NS}}}\nspec:\n  branches:\n    - subscriber: {{uri: '{}'}}\n",
            sink.url
        )))
        .await
        .expect("parallel");
    let parallel: Parallel = wait_for("parallel ready", || async {
        let par = p.objects.parallels.get(Some(NS), "fan").await.ok()?;
        is_ready(&par.status.as_ref()?.status.conditions).then_some(par)
    })
    .await;
    assert_true_with(
        &parallel.status.as_ref().expect("status").status.conditions,
        "EventPoliciesReady",
        "OIDCDisabled",
        EVENT_POLICIES_MESSAGE,
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_source_sends_its_json_data_byte_for_byte() {
    const DATA: &str = r#"{"b":1,  "a":2}"#;
    let p = Platform::start().await;
    let sink = RawSink::start().await;
    let sources = &p.objects.ping_sources;
    let mut source: PingSource = parse(&format!(
        "metadata: {{name: unsorted, namespace: {NS}}}\nspec:\n  schedule: '* * * * * *'\n  contentType: application/json\n  sink: {{uri: '{}'}}\n",
        sink.url
    ));
    source.spec.data = DATA.to_owned();
    sources.create(&source).await.expect("ping source");
    let (headers, body) = wait_for("a ping", || async { sink.requests().into_iter().next() }).await;
    assert_eq!(std::str::from_utf8(&body), Ok(DATA));
    assert_eq!(
        headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    assert_eq!(
        headers.get("ce-type").and_then(|v| v.to_str().ok()),
        Some("dev.knative.sources.ping")
    );
    sources.delete(Some(NS), "unsorted").await.expect("deleted");
    p.stop().await;
}
