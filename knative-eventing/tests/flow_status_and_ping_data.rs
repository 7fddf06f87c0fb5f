//! Flow and channel status details with the reconcilers running as
//! controllers on an `InMemoryStore` (`specs/EVENTING.md §4`, `§6`):
//! a Sequence's `status.addresses` (so a `ref` with `address` resolves),
//! the `EventPoliciesReady` and `OIDCIdentityCreated` conditions upstream
//! sets while OIDC is off, and a PingSource's `data` reaching the sink
//! byte for byte.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use knative_core::condition::{Condition, READY, find};
use knative_core::store::InMemoryStore;
use knative_eventing::api::{Addressable, Channel, Parallel, PingSource, Sequence};
use knative_eventing::binding;
use knative_eventing::broker::DispatchConfig;
use knative_eventing::channel::Channels;
use knative_eventing::log::InMemoryLog;
use knative_eventing::reconciler::{
    AddressResolver, ChannelReconciler, EventingAddresses, EventingObjects,
    InMemoryChannelReconciler, ParallelReconciler, PingScheduler, PingSourceReconciler,
    SequenceReconciler, SubscriptionReconciler, resolve_destination,
};
use tokio::task::JoinSet;

const DEADLINE: Duration = Duration::from_secs(20);
const NS: &str = "ns";
const EVENT_POLICIES_MESSAGE: &str =
    "Feature \"authentication-oidc\" must be enabled to support Authorization";

/// The channel, subscription, flow and PingSource controllers on one store.
struct Platform {
    objects: EventingObjects,
    ingress: String,
    resolver: Arc<dyn AddressResolver>,
    stop: tokio::sync::watch::Sender<bool>,
    controllers: JoinSet<()>,
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
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let until = move || {
            let mut rx = stopped.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let o = &objects;
        let mut controllers = JoinSet::new();
        controllers.spawn(
            InMemoryChannelReconciler::new(
                Arc::clone(&o.in_memory_channels),
                data_plane,
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
                PingScheduler::new(),
            )
            .into_controller()
            .run(until()),
        );
        Platform {
            objects,
            ingress,
            resolver,
            stop,
            controllers,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.controllers.join_next().await.is_some() {}
    }
}

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

fn is_ready(conditions: &[Condition]) -> bool {
    find(conditions, READY).is_some_and(Condition::is_true)
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
