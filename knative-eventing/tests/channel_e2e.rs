//! The channel data path over real HTTP on 127.0.0.1: the ingress, the
//! log, per-subscription dispatchers, replies and dead letters
//! (`specs/EVENTING.md §4`, `§5`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use knative_eventing::api::DeliverySpec;
use knative_eventing::binding;
use knative_eventing::broker::DispatchConfig;
use knative_eventing::channel::{Channels, SubscriptionRoute};
use knative_eventing::log::InMemoryLog;
use serde_json::json;

mod common;
use common::{Subscriber, event, eventually};

struct Fixture {
    channels: Channels,
    ingress: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Fixture {
    async fn start() -> Fixture {
        let channels = Channels::new(
            Arc::new(InMemoryLog::new()),
            binding::Limits::default(),
            DispatchConfig::default(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let ingress = listener.local_addr().expect("address");
        let serving = channels.clone();
        tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
        Fixture {
            channels,
            ingress,
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }

    fn url(&self, namespace: &str, name: &str) -> String {
        format!("http://{}/{namespace}/{name}", self.ingress)
    }

    async fn channel(&self, name: &str) {
        self.channels
            .upsert_channel("default", name, None, None)
            .await
            .expect("channel");
    }

    async fn subscribe(
        &self,
        channel: &str,
        name: &str,
        subscriber: Option<&str>,
        reply: Option<&str>,
        delivery: Option<serde_json::Value>,
    ) {
        let delivery: Option<DeliverySpec> =
            delivery.map(|d| serde_json::from_value(d).expect("delivery spec"));
        let dead_letter_sink = delivery
            .as_ref()
            .and_then(|d| d.dead_letter_sink.as_ref())
            .and_then(|d| d.uri.clone());
        self.channels
            .upsert_subscription(
                "default",
                channel,
                name,
                SubscriptionRoute {
                    subscriber: subscriber.map(str::to_owned),
                    reply: reply.map(str::to_owned),
                    delivery,
                    dead_letter_sink,
                },
            )
            .await
            .expect("subscription");
    }

    async fn request(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> (StatusCode, String) {
        let mut request = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = self
            .client
            .request(request.body(Full::new(body.into())).expect("request"))
            .await
            .expect("answered");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn send_to(&self, uri: &str, host: Option<&str>, event: &Event) -> StatusCode {
        let (headers, body) = binding::write_binary(event).expect("encodes");
        let mut pairs: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().expect("ascii").to_owned()))
            .collect();
        if let Some(host) = host {
            pairs.push(("host".to_owned(), host.to_owned()));
        }
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.request("POST", uri, &pairs, body).await.0
    }

    async fn send(&self, channel: &str, event: &Event) -> StatusCode {
        self.send_to(&self.url("default", channel), None, event)
            .await
    }
}

/// A subscriber that answers every event with a reply of type `ty`
/// (same id, so the chain can be followed).
fn replying(ty: &'static str) -> common::Behaviour {
    Arc::new(move |_, e: &Event| {
        let reply = EventBuilderV10::new()
            .id(e.id())
            .ty(ty)
            .source("/replier")
            .build()
            .expect("reply");
        (200, Some(reply))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channel_ingress_answers_like_upstreams_receiver() {
    let f = Fixture::start().await;
    f.channel("orders").await;
    let sub = Subscriber::start(Subscriber::accepting()).await;
    f.subscribe("orders", "s", Some(&sub.url), None, None).await;

    let (status, _) = f
        .request("OPTIONS", &f.url("default", "orders"), &[], "")
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = f.request("GET", &f.url("default", "orders"), &[], "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body.contains("GET"), "{body}");
    assert_eq!(
        f.send("missing", &event("e", "t", "/s")).await,
        StatusCode::NOT_FOUND
    );
    let (status, body) = f
        .request(
            "POST",
            &f.url("default", "orders"),
            &[
                ("ce-specversion", "1.0"),
                ("ce-type", "t"),
                ("ce-source", "/s"),
            ],
            "{}",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body.contains("id"),
        "the body names the missing attribute: {body}"
    );
    // By path, and by the cluster-local host upstream gives the channel.
    assert_eq!(
        f.send("orders", &event("a", "t", "/s")).await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        f.send_to(
            &format!("http://{}/", f.ingress),
            Some("orders-kn-channel.default.svc.cluster.local"),
            &event("b", "t", "/s")
        )
        .await,
        StatusCode::ACCEPTED
    );
    eventually("both events", || sub.events().len() == 2).await;
    assert_eq!(sub.ids(), ["a", "b"], "the bad request reached nobody");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscription_gets_every_event_and_replies_go_to_the_reply() {
    let f = Fixture::start().await;
    f.channel("orders").await;
    let replier = Subscriber::start(replying("order.checked")).await;
    let replies = Subscriber::start(Subscriber::accepting()).await;
    let plain = Subscriber::start(replying("ignored")).await;
    f.subscribe(
        "orders",
        "checker",
        Some(&replier.url),
        Some(&replies.url),
        None,
    )
    .await;
    // A second subscription to the same subscriber gets its own copy.
    f.subscribe("orders", "checker-2", Some(&replier.url), None, None)
        .await;
    // No reply destination: the reply is dropped.
    f.subscribe("orders", "plain", Some(&plain.url), None, None)
        .await;
    for i in 0..20 {
        assert_eq!(
            f.send("orders", &event(&format!("o-{i:02}"), "order", "/shop"))
                .await,
            StatusCode::ACCEPTED
        );
    }
    eventually("every delivery", || {
        replier.events().len() == 40 && plain.events().len() == 20 && replies.events().len() == 20
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        replies.events().len(),
        20,
        "only the checker forwards replies"
    );
    assert!(replies.events().iter().all(|e| e.ty() == "order.checked"));
    let mut expected: Vec<String> = (0..20).map(|i| format!("o-{i:02}")).collect();
    expected.sort();
    assert_eq!(plain.ids(), expected);
    assert_eq!(replies.ids(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_reply_retries_the_whole_delivery_then_dead_letters_the_original() {
    let f = Fixture::start().await;
    f.channel("orders").await;
    let replier = Subscriber::start(replying("order.checked")).await;
    let broken_reply = Subscriber::start(Arc::new(|_, _| (503, None))).await;
    let dls = Subscriber::start(Subscriber::accepting()).await;
    f.subscribe(
        "orders",
        "checker",
        Some(&replier.url),
        Some(&broken_reply.url),
        Some(json!({"retry": 2, "deadLetterSink": {"uri": dls.url}})),
    )
    .await;
    assert_eq!(
        f.send("orders", &event("o-1", "order", "/shop")).await,
        StatusCode::ACCEPTED
    );
    eventually("the dead letter", || dls.events().len() == 1).await;
    assert_eq!(
        replier.calls.load(Ordering::SeqCst),
        3,
        "1 + 2 whole deliveries"
    );
    assert_eq!(broken_reply.calls.load(Ordering::SeqCst), 3);
    let dead = &dls.events()[0];
    assert_eq!(dead.ty(), "order", "the original event is dead-lettered");
    let ext = |name: &str| dead.extension(name).map(ToString::to_string);
    assert_eq!(ext("knativeerrordest"), Some(broken_reply.url.clone()));
    assert_eq!(ext("knativeerrorcode"), Some("503".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_subscriber_is_retried_then_dead_lettered() {
    let f = Fixture::start().await;
    f.channel("orders").await;
    let sub = Subscriber::start(Arc::new(
        |n, _| if n < 2 { (500, None) } else { (202, None) },
    ))
    .await;
    let broken = Subscriber::start(Arc::new(|_, _| (400, None))).await;
    let dls = Subscriber::start(Subscriber::accepting()).await;
    f.subscribe(
        "orders",
        "flaky",
        Some(&sub.url),
        None,
        Some(json!({"retry": 3, "backoffPolicy": "linear", "backoffDelay": "PT0.01S"})),
    )
    .await;
    f.subscribe(
        "orders",
        "broken",
        Some(&broken.url),
        None,
        Some(json!({"retry": 3, "deadLetterSink": {"uri": dls.url}})),
    )
    .await;
    assert_eq!(
        f.send("orders", &event("o-1", "order", "/shop")).await,
        StatusCode::ACCEPTED
    );
    eventually("the third attempt and the dead letter", || {
        sub.calls.load(Ordering::SeqCst) == 3 && dls.events().len() == 1
    })
    .await;
    assert_eq!(broken.calls.load(Ordering::SeqCst), 1, "400 is not retried");
    let dead = &dls.events()[0];
    assert_eq!(
        dead.extension("knativeerrordest").map(ToString::to_string),
        Some(broken.url.clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_chained_by_replies_make_a_sequence() {
    // What a Sequence of two steps is made of: channel 0 → step 0, reply to
    // channel 1 → step 1, reply to the sequence's reply.
    let f = Fixture::start().await;
    f.channel("seq-kn-sequence-0").await;
    f.channel("seq-kn-sequence-1").await;
    let step0 = Subscriber::start(replying("step0.done")).await;
    let step1 = Subscriber::start(replying("step1.done")).await;
    let end = Subscriber::start(Subscriber::accepting()).await;
    f.subscribe(
        "seq-kn-sequence-0",
        "seq-kn-sequence-0",
        Some(&step0.url),
        Some(&f.url("default", "seq-kn-sequence-1")),
        None,
    )
    .await;
    f.subscribe(
        "seq-kn-sequence-1",
        "seq-kn-sequence-1",
        Some(&step1.url),
        Some(&end.url),
        None,
    )
    .await;
    assert_eq!(
        f.send("seq-kn-sequence-0", &event("start", "begin", "/s"))
            .await,
        StatusCode::ACCEPTED
    );
    eventually("the end of the sequence", || end.events().len() == 1).await;
    assert_eq!(step0.events()[0].ty(), "begin");
    assert_eq!(step1.events()[0].ty(), "step0.done");
    assert_eq!(end.events()[0].ty(), "step1.done");
    // No subscriber: the event itself goes on to the reply.
    f.channel("passthrough").await;
    f.subscribe("passthrough", "p", None, Some(&end.url), None)
        .await;
    assert_eq!(
        f.send("passthrough", &event("through", "x", "/s")).await,
        StatusCode::ACCEPTED
    );
    eventually("the passed-through event", || end.events().len() == 2).await;
    // A removed subscription stops; a removed channel answers 404.
    f.channels
        .remove_subscription("default", "passthrough", "p")
        .await
        .expect("removed");
    assert!(
        f.channels
            .subscriptions("default", "passthrough")
            .is_empty()
    );
    f.channels
        .remove_channel("default", "passthrough")
        .await
        .expect("removed");
    assert_eq!(
        f.send("passthrough", &event("late", "x", "/s")).await,
        StatusCode::NOT_FOUND
    );
}
