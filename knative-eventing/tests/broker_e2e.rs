//! The broker data path over real HTTP on 127.0.0.1: the ingress, the
//! in-memory log, per-trigger dispatchers and subscriber servers
//! (`specs/EVENTING.md §1.3–§1.5`, `§2`, `§5`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use knative_eventing::api::{DeliverySpec, TriggerSpec};
use knative_eventing::binding;
use knative_eventing::broker::{Brokers, DispatchConfig, IngressConfig, TriggerRoute};
use knative_eventing::filter::Filter;
use knative_eventing::log::InMemoryLog;
use serde_json::json;

mod common;
use common::{DEADLINE, GARBAGE, Subscriber, event, eventually};

struct Mesh {
    brokers: Brokers,
    ingress: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Mesh {
    async fn start(ingress: IngressConfig) -> Mesh {
        Mesh::start_with_log(ingress, InMemoryLog::new()).await
    }

    async fn start_with_log(ingress: IngressConfig, log: InMemoryLog) -> Mesh {
        let brokers = Brokers::new(Arc::new(log), ingress, DispatchConfig::default());
        brokers
            .upsert_broker("default", "default", None, None)
            .await
            .expect("broker");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let address = listener.local_addr().expect("address");
        let serving = brokers.clone();
        tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
        Mesh {
            brokers,
            ingress: address,
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }

    async fn trigger(
        &self,
        name: &str,
        filters: serde_json::Value,
        subscriber: &Subscriber,
        delivery: Option<serde_json::Value>,
    ) {
        let spec: TriggerSpec = serde_json::from_value(json!({
            "broker": "default",
            "subscriber": {"uri": subscriber.url},
            "filters": filters,
        }))
        .expect("trigger spec");
        let delivery: Option<DeliverySpec> =
            delivery.map(|d| serde_json::from_value(d).expect("delivery spec"));
        let dead_letter_sink = delivery
            .as_ref()
            .and_then(|d| d.dead_letter_sink.as_ref())
            .and_then(|d| d.uri.clone());
        self.brokers
            .upsert_trigger(
                "default",
                "default",
                name,
                TriggerRoute {
                    filter: Filter::for_trigger(&spec).expect("filter"),
                    subscriber: subscriber.url.clone(),
                    delivery,
                    dead_letter_sink,
                },
            )
            .await
            .expect("trigger");
    }

    async fn post(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> (StatusCode, String) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.ingress));
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

    async fn send(&self, event: &Event) -> StatusCode {
        let (headers, body) = binding::write_binary(event).expect("encodes");
        let pairs: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().expect("ascii").to_owned()))
            .collect();
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.post("POST", "/default/default", &pairs, body).await.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_answers_every_status_code_path() {
    let mesh = Mesh::start(IngressConfig::default()).await;
    let sub = Subscriber::start(Subscriber::accepting()).await;
    mesh.trigger("all", json!([]), &sub, None).await;
    let good = [
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-type", "t"),
        ("ce-source", "/s"),
    ];
    for (method, want) in [
        ("OPTIONS", StatusCode::OK),
        ("GET", StatusCode::METHOD_NOT_ALLOWED),
    ] {
        let response = mesh
            .client
            .request(
                Request::builder()
                    .method(method)
                    .uri(format!("http://{}/default/default", mesh.ingress))
                    .body(Full::new(Bytes::new()))
                    .expect("request"),
            )
            .await
            .expect("answered");
        assert_eq!(response.status(), want, "{method}");
        let h = response.headers();
        assert_eq!(
            h.get("allow").and_then(|v| v.to_str().ok()),
            Some("POST, OPTIONS")
        );
        if method == "OPTIONS" {
            assert_eq!(
                h.get("webhook-allowed-origin")
                    .and_then(|v| v.to_str().ok()),
                Some("*")
            );
            assert_eq!(
                h.get("webhook-allowed-rate").and_then(|v| v.to_str().ok()),
                Some("*")
            );
        }
    }
    let (status, _) = mesh.post("PUT", "/default/default", &good, "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = mesh.post("POST", "/", &good, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for path in ["/default", "/a/b/c"] {
        let (status, body) = mesh.post("POST", path, &good, "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
    }
    let (status, body) = mesh.post("POST", "/default/nobroker", &good, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("default/nobroker"), "{body}");
    let (status, body) = mesh
        .post(
            "POST",
            "/default/default",
            &[("ce-specversion", "1.0"), ("ce-id", "1")],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body.contains("ce-type") || body.contains("ce-source"),
        "{body}"
    );
    // A TTL of 1 becomes 0 at the ingress: dropped.
    let mut ttl = good.to_vec();
    ttl.push(("ce-knativebrokerttl", "1"));
    let (status, body) = mesh.post("POST", "/default/default", &ttl, "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("knativebrokerttl"), "{body}");
    // Too large.
    let big = vec![b'x'; binding::DEFAULT_MAX_BODY_BYTES + 1];
    let mut large = good.to_vec();
    large.push(("content-type", "application/octet-stream"));
    let (status, body) = mesh.post("POST", "/default/default", &large, big).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("larger than"), "{body}");

    // Batches are refused as upstream does.
    let (status, body) = mesh
        .post(
            "POST",
            "/default/default",
            &[("content-type", "application/cloudevents-batch+json")],
            r#"[{"specversion":"1.0","id":"b","type":"t","source":"/s"}]"#,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Finally a good one: 202, and it arrives with the arrival time and
    // without the TTL, with the headers that travel with events.
    let mut traced = good.to_vec();
    traced.extend([
        ("x-request-id", "req-1"),
        ("x-b3-traceid", "abc"),
        ("knative-custom", "yes"),
        ("x-other", "dropped"),
    ]);
    let (status, body) = mesh.post("POST", "/default/default", &traced, "").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    eventually("delivery", || sub.events().len() == 1).await;
    let delivered = &sub.events()[0];
    assert!(delivered.extension("knativearrivaltime").is_some());
    assert!(delivered.extension("knativebrokerttl").is_none());
    let headers = sub.headers.lock().expect("lock")[0].clone();
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(h("x-request-id").as_deref(), Some("req-1"));
    assert_eq!(h("x-b3-traceid").as_deref(), Some("abc"));
    assert_eq!(h("knative-custom").as_deref(), Some("yes"));
    assert_eq!(h("x-other"), None);
    assert_eq!(h("kn-namespace").as_deref(), Some("default"));
    assert_eq!(h("prefer").as_deref(), Some("reply"));
}

/// A body one byte over the ingress's default limit.
static OVERSIZE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| "x".repeat(binding::DEFAULT_MAX_BODY_BYTES + 1));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_get_a_400_naming_the_problem_and_reach_no_subscriber() {
    let mesh = Mesh::start(IngressConfig::default()).await;
    let sub = Subscriber::start(Subscriber::accepting()).await;
    mesh.trigger("all", json!([]), &sub, None).await;
    let structured = ("content-type", "application/cloudevents+json");
    let ce = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
        let mut h = vec![
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-type", "t"),
            ("ce-source", "/s"),
        ];
        for (k, v) in extra {
            h.retain(|(n, _)| n != k);
            h.push((k, v));
        }
        h
    };
    // (what, headers, body, what the error message must name)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        ("bad JSON", vec![structured], "{\"specversion\": ", "JSON"),
        (
            "missing id",
            vec![structured],
            r#"{"specversion":"1.0","type":"t","source":"/s"}"#,
            "id",
        ),
        (
            "empty source",
            vec![structured],
            r#"{"specversion":"1.0","id":"1","type":"t","source":""}"#,
            "source",
        ),
        (
            "bad specversion",
            vec![structured],
            r#"{"specversion":"0.9","id":"1","type":"t","source":"/s"}"#,
            "0.9",
        ),
        (
            "specversion as number",
            vec![structured],
            r#"{"specversion":1.0,"id":"1","type":"t","source":"/s"}"#,
            "specversion",
        ),
        (
            "uppercase extension",
            vec![structured],
            r#"{"specversion":"1.0","id":"1","type":"t","source":"/s","myExt":"x"}"#,
            "myExt",
        ),
        ("dash in extension", ce(&[("ce-my-ext", "x")]), "", "my-ext"),
        (
            "extension object",
            vec![structured],
            r#"{"specversion":"1.0","id":"1","type":"t","source":"/s","ext":{"a":1}}"#,
            "ext",
        ),
        (
            "integer out of range",
            vec![structured],
            r#"{"specversion":"1.0","id":"1","type":"t","source":"/s","big":3000000000}"#,
            "big",
        ),
        (
            "bad time",
            vec![structured],
            r#"{"specversion":"1.0","id":"1","type":"t","source":"/s","time":"yesterday"}"#,
            "time",
        ),
        (
            "data and data_base64",
            vec![structured],
            r#"{"specversion":"1.0","id":"1","type":"t","source":"/s","data":1,"data_base64":"AA=="}"#,
            "data",
        ),
        (
            "bad base64",
            vec![structured],
            r#"{"specversion":"1.0","id":"1","type":"t","source":"/s","data_base64":"!!"}"#,
            "base64",
        ),
        ("not an object", vec![structured], "[1,2]", "object"),
        (
            "wrong content type",
            vec![("content-type", "text/plain")],
            "hello",
            "not a CloudEvent",
        ),
        (
            "no content type, no ce headers",
            vec![],
            "hello",
            "not a CloudEvent",
        ),
        (
            "bad time header",
            ce(&[("ce-time", "yesterday")]),
            "",
            "ce-time",
        ),
        (
            "empty subject",
            vec![structured],
            r#"{"specversion":"1.0","id":"1","type":"t","source":"/s","subject":""}"#,
            "subject",
        ),
        (
            "empty source header",
            ce(&[("ce-source", "")]),
            "",
            "ce-source",
        ),
        ("empty id header", ce(&[("ce-id", "")]), "", "ce-id"),
        (
            "missing specversion header",
            vec![("ce-id", "1"), ("ce-type", "t"), ("ce-source", "/s")],
            "",
            "specversion",
        ),
        (
            "binary specversion 0.3",
            ce(&[("ce-specversion", "0.3")]),
            "",
            "0.3",
        ),
        (
            "datacontenttype header in binary mode",
            ce(&[("ce-datacontenttype", "text/plain")]),
            "",
            "datacontenttype",
        ),
        (
            "JSON content type with a non-JSON body",
            ce(&[("content-type", "application/json")]),
            "{nope",
            "JSON",
        ),
        (
            "relative dataschema",
            vec![structured],
            r##"{"specversion":"1.0","id":"1","type":"t","source":"/s","dataschema":"#"}"##,
            "dataschema",
        ),
        (
            "malformed percent escape",
            ce(&[("ce-subject", "a%zz")]),
            "",
            "ce-subject",
        ),
        (
            "truncated percent escape",
            ce(&[("ce-subject", "a%4")]),
            "",
            "ce-subject",
        ),
        (
            "percent escapes that are not UTF-8",
            ce(&[("ce-subject", "a%C0%A0")]),
            "",
            "ce-subject",
        ),
        (
            "oversize body",
            ce(&[("content-type", "application/octet-stream")]),
            OVERSIZE.as_str(),
            "larger than",
        ),
        (
            "a batch (refused as upstream does)",
            vec![("content-type", "application/cloudevents-batch+json")],
            r#"[{"specversion":"1.0","id":"1","type":"t","source":"/s"}]"#,
            "batch",
        ),
    ];
    for (what, headers, body, names) in &cases {
        let (status, text) = mesh
            .post("POST", "/default/default", headers, body.to_string())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {text}");
        assert!(
            text.contains(names),
            "{what}: the body names {names:?}: {text}"
        );
    }
    // A batch, where batches are allowed, with one bad event: refused whole.
    let batching = Mesh::start(IngressConfig {
        limits: binding::Limits {
            allow_batch: true,
            ..IngressConfig::default().limits
        },
        ..IngressConfig::default()
    })
    .await;
    batching.trigger("all", json!([]), &sub, None).await;
    let (status, text) = batching
        .post(
            "POST",
            "/default/default",
            &[("content-type", "application/cloudevents-batch+json")],
            r#"[{"specversion":"1.0","id":"1","type":"t","source":"/s"},{"specversion":"1.0","type":"t","source":"/s"}]"#,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("batch[1]"), "{text}");
    // A good event after all of them is the first and only one delivered.
    assert_eq!(
        mesh.send(&event("good", "t", "/s")).await,
        StatusCode::ACCEPTED
    );
    eventually("the good event", || !sub.events().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        sub.ids(),
        ["good"],
        "nothing malformed reached the subscriber"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_fails_twice_gets_the_event_on_the_third_attempt() {
    let mesh = Mesh::start(IngressConfig::default()).await;
    let sub = Subscriber::start(Arc::new(|n, _| (if n < 2 { 503 } else { 200 }, None))).await;
    mesh.trigger(
        "flaky",
        json!([]),
        &sub,
        Some(json!({"retry": 3, "backoffPolicy": "linear", "backoffDelay": "PT0.05S"})),
    )
    .await;
    assert_eq!(
        mesh.send(&event("e1", "t", "/s")).await,
        StatusCode::ACCEPTED
    );
    eventually("three attempts", || sub.calls.load(Ordering::SeqCst) == 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sub.calls.load(Ordering::SeqCst),
        3,
        "no attempt after the success"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_cannot_be_delivered_goes_to_the_dead_letter_sink_with_the_error() {
    let mesh = Mesh::start(IngressConfig::default()).await;
    let sub = Subscriber::start(Arc::new(|_, _| (500, None))).await;
    let dls = Subscriber::start(Subscriber::accepting()).await;
    mesh.trigger(
        "broken",
        json!([]),
        &sub,
        Some(json!({"retry": 2, "deadLetterSink": {"uri": dls.url}})),
    )
    .await;
    assert_eq!(
        mesh.send(&event("lost", "t", "/s")).await,
        StatusCode::ACCEPTED
    );
    eventually("the dead letter", || dls.events().len() == 1).await;
    assert_eq!(sub.calls.load(Ordering::SeqCst), 3, "1 attempt + 2 retries");
    let dead = &dls.events()[0];
    assert_eq!(dead.id(), "lost");
    let ext = |name: &str| dead.extension(name).map(ToString::to_string);
    assert_eq!(ext("knativeerrordest"), Some(sub.url.clone()));
    assert_eq!(ext("knativeerrorcode"), Some("500".to_owned()));
    use base64::Engine as _;
    let data = ext("knativeerrordata").expect("error data");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(data)
        .expect("base64");
    assert_eq!(decoded, b"subscriber says no");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_that_cannot_be_stored_fails_the_whole_delivery_which_is_retried() {
    // A log that holds one event: the one being delivered, so the reply
    // cannot be appended while it is in flight.
    let mesh = Mesh::start_with_log(IngressConfig::default(), InMemoryLog::with_capacity(1)).await;
    let sub = Subscriber::start(Arc::new(|n, _: &Event| {
        let reply = EventBuilderV10::new()
            .id(format!("reply-{n}"))
            .ty("reply")
            .source("/replies")
            .build()
            .expect("reply");
        (200, Some(reply))
    }))
    .await;
    let dls = Subscriber::start(Subscriber::accepting()).await;
    // The URL the reconciler gives the broker's status.
    let broker_url = format!("http://{}/default/default", mesh.ingress);
    mesh.brokers
        .set_broker_address("default", "default", &broker_url);
    mesh.trigger(
        "replier",
        json!([{"exact": {"type": "order"}}]),
        &sub,
        Some(json!({"retry": 2, "deadLetterSink": {"uri": dls.url}})),
    )
    .await;
    assert_eq!(
        mesh.send(&event("o-1", "order", "/s")).await,
        StatusCode::ACCEPTED
    );
    eventually("the dead letter", || dls.events().len() == 1).await;
    assert_eq!(
        sub.calls.load(Ordering::SeqCst),
        3,
        "the whole delivery ran 1 + 2 times"
    );
    let dead = &dls.events()[0];
    assert_eq!(dead.id(), "o-1", "the original event is dead-lettered");
    let ext = |name: &str| dead.extension(name).map(ToString::to_string);
    assert_eq!(
        ext("knativeerrordest"),
        Some(broker_url),
        "the failed destination is the broker the reply went to"
    );
    assert_eq!(ext("knativeerrorcode"), Some("500".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_loop_stops_at_the_ttl() {
    let mesh = Mesh::start(IngressConfig {
        max_ttl: 5,
        ..IngressConfig::default()
    })
    .await;
    // The subscriber answers every event with another event of the same type.
    let sub = Subscriber::start(Arc::new(|n, e: &Event| {
        let reply = EventBuilderV10::new()
            .id(format!("reply-{n}"))
            .ty(e.ty())
            .source("/loop")
            .build()
            .expect("reply");
        (200, Some(reply))
    }))
    .await;
    mesh.trigger("loop", json!([]), &sub, None).await;
    assert_eq!(
        mesh.send(&event("start", "loop", "/s")).await,
        StatusCode::ACCEPTED
    );
    eventually("five deliveries", || sub.events().len() == 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sub.events().len(), 5, "the loop stopped at the TTL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_triggers_each_get_exactly_their_events() {
    let mesh = Mesh::start(IngressConfig::default()).await;
    let orders = Subscriber::start(Subscriber::accepting()).await;
    let eu = Subscriber::start(Subscriber::accepting()).await;
    let not_test = Subscriber::start(Subscriber::accepting()).await;
    mesh.trigger(
        "orders",
        json!([{"prefix": {"type": "com.example.order."}}]),
        &orders,
        None,
    )
    .await;
    mesh.trigger("eu", json!([{"cesql": "source LIKE '/eu/%'"}]), &eu, None)
        .await;
    mesh.trigger(
        "not-test",
        json!([{"not": {"suffix": {"type": ".test"}}}]),
        &not_test,
        None,
    )
    .await;
    let events = [
        event("1", "com.example.order.created", "/eu/paris"),
        event("2", "com.example.order.test", "/us/nyc"),
        event("3", "com.example.user.created", "/eu/berlin"),
        event("4", "com.example.user.test", "/asia/tokyo"),
    ];
    for e in &events {
        assert_eq!(mesh.send(e).await, StatusCode::ACCEPTED);
    }
    let expected: BTreeMap<&str, Vec<&str>> = [
        ("orders", vec!["1", "2"]),
        ("eu", vec!["1", "3"]),
        ("not-test", vec!["1", "3"]),
    ]
    .into();
    eventually("every delivery", || {
        orders.events().len() == 2 && eu.events().len() == 2 && not_test.events().len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(orders.ids(), expected["orders"]);
    assert_eq!(eu.ids(), expected["eu"]);
    assert_eq!(not_test.ids(), expected["not-test"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_202_is_never_a_reply_and_a_bad_reply_is_retried_then_dead_lettered_as_502() {
    let mesh = Mesh::start(IngressConfig::default()).await;
    // Answers 202 with an event body: accepted, not a reply.
    let accepting = Subscriber::start(Arc::new(|_, e: &Event| {
        let reply = EventBuilderV10::new()
            .id("r")
            .ty(e.ty())
            .source("/r")
            .build()
            .expect("reply");
        (202, Some(reply))
    }))
    .await;
    mesh.trigger(
        "accepting",
        json!([{"exact": {"type": "accept"}}]),
        &accepting,
        None,
    )
    .await;
    // Answers 200 with a body that is not an event: a bad reply.
    let garbage = Subscriber::start(Arc::new(|_, _| (GARBAGE, None))).await;
    let dls = Subscriber::start(Subscriber::accepting()).await;
    mesh.trigger(
        "garbage",
        json!([{"exact": {"type": "garbage"}}]),
        &garbage,
        Some(json!({"retry": 1, "deadLetterSink": {"uri": dls.url}})),
    )
    .await;
    assert_eq!(
        mesh.send(&event("a", "accept", "/s")).await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        mesh.send(&event("g", "garbage", "/s")).await,
        StatusCode::ACCEPTED
    );
    eventually("the dead letter", || dls.events().len() == 1).await;
    assert_eq!(
        garbage.calls.load(Ordering::SeqCst),
        2,
        "a bad reply is retried"
    );
    let dead = &dls.events()[0];
    assert_eq!(
        dead.extension("knativeerrorcode")
            .map(ToString::to_string)
            .as_deref(),
        Some("502")
    );
    // The 202's event body never came back as a reply.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(accepting.ids(), ["a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_without_delivery_options_uses_the_brokers() {
    let mesh = Mesh::start(IngressConfig::default()).await;
    let dls = Subscriber::start(Subscriber::accepting()).await;
    let delivery: DeliverySpec =
        serde_json::from_value(json!({"retry": 2, "deadLetterSink": {"uri": dls.url}}))
            .expect("delivery");
    mesh.brokers
        .upsert_broker("default", "default", Some(delivery), Some(dls.url.clone()))
        .await
        .expect("broker");
    let sub = Subscriber::start(Arc::new(|_, _| (500, None))).await;
    mesh.trigger("t", json!([]), &sub, None).await;
    assert_eq!(
        mesh.send(&event("x", "t", "/s")).await,
        StatusCode::ACCEPTED
    );
    eventually("the broker's dead-letter sink", || dls.events().len() == 1).await;
    assert_eq!(sub.calls.load(Ordering::SeqCst), 3, "the broker's retry: 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_events_leave_the_log_and_a_removed_trigger_stops() {
    let log = Arc::new(InMemoryLog::new());
    let brokers = Brokers::new(
        log.clone(),
        IngressConfig::default(),
        DispatchConfig::default(),
    );
    brokers
        .upsert_broker("ns", "b", None, None)
        .await
        .expect("broker");
    let sub = Subscriber::start(Subscriber::accepting()).await;
    let spec: TriggerSpec =
        serde_json::from_value(json!({"broker": "b", "subscriber": {"uri": sub.url}}))
            .expect("spec");
    let route = TriggerRoute {
        filter: Filter::for_trigger(&spec).expect("filter"),
        subscriber: sub.url.clone(),
        delivery: None,
        dead_letter_sink: None,
    };
    brokers
        .upsert_trigger("ns", "b", "t", route)
        .await
        .expect("trigger");
    let events: Vec<Event> = (0..500).map(|i| event(&i.to_string(), "t", "/s")).collect();
    brokers.ingest("ns", "b", events).await.expect("ingested");
    eventually("every delivery", || sub.events().len() == 500).await;
    eventually("the log drained", || log.is_empty("ns/b")).await;
    brokers
        .remove_trigger("ns", "b", "t")
        .await
        .expect("removed");
    brokers
        .ingest("ns", "b", vec![event("late", "t", "/s")])
        .await
        .expect("ingested");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sub.events().len(),
        500,
        "a removed trigger delivers nothing"
    );
    assert!(log.is_empty("ns/b"), "with no trigger left nothing is kept");
}

/// With the log on disk, events accepted but not yet delivered when the
/// process stops are delivered after a restart (the cursor only moves past
/// finished deliveries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_in_flight_at_a_restart_are_delivered_from_the_disk_log() {
    use knative_eventing::log::disk::DiskLog;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("events.redb");
    // A subscriber that accepts connections and never answers.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let hang_url = format!("http://{}/", hang.local_addr().expect("address"));
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&held);
    tokio::spawn(async move {
        while let Ok((stream, _)) = hang.accept().await {
            keep.lock().expect("lock").push(stream);
        }
    });
    let route = |url: &str| {
        let spec: TriggerSpec =
            serde_json::from_value(json!({"broker": "b", "subscriber": {"uri": url}}))
                .expect("spec");
        TriggerRoute {
            filter: Filter::for_trigger(&spec).expect("filter"),
            subscriber: url.to_owned(),
            delivery: None,
            dead_letter_sink: None,
        }
    };
    {
        let log = Arc::new(DiskLog::open(&path).expect("opens"));
        let brokers = Brokers::new(log, IngressConfig::default(), DispatchConfig::default());
        brokers
            .upsert_broker("ns", "b", None, None)
            .await
            .expect("broker");
        brokers
            .upsert_trigger("ns", "b", "t", route(&hang_url))
            .await
            .expect("trigger");
        let events: Vec<Event> = (0..5).map(|i| event(&format!("e{i}"), "t", "/s")).collect();
        brokers.ingest("ns", "b", events).await.expect("accepted");
        eventually("the deliveries to hang", || {
            !held.lock().expect("lock").is_empty()
        })
        .await;
        // The process "stops": the data plane goes away mid-delivery.
    }
    // Reopen once the stopped dispatchers have let go of the file.
    let log = {
        let start = Instant::now();
        loop {
            match DiskLog::open(&path) {
                Ok(log) => break Arc::new(log),
                Err(e) => {
                    assert!(start.elapsed() < DEADLINE, "cannot reopen: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    };
    let working = Subscriber::start(Subscriber::accepting()).await;
    let brokers = Brokers::new(log, IngressConfig::default(), DispatchConfig::default());
    brokers
        .upsert_broker("ns", "b", None, None)
        .await
        .expect("broker");
    brokers
        .upsert_trigger("ns", "b", "t", route(&working.url))
        .await
        .expect("trigger");
    eventually("redelivery after the restart", || {
        working.events().len() == 5
    })
    .await;
    assert_eq!(working.ids(), ["e0", "e1", "e2", "e3", "e4"]);
}
