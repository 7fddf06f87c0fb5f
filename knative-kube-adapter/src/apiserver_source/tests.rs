//! ApiServerSource: the events it builds (table tests), and the reconciler
//! and its watchers against the mock API server, sending to a real HTTP
//! sink on 127.0.0.1.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use cloudevents::AttributesReader;
use cloudevents::event::{Data, ExtensionValue};
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use kube::client::Body;
use serde_json::json;
use tokio::sync::mpsc;

use super::*;
use crate::objects::KubeObjects;
use crate::test_util::{ApiServer, api_status, mock, query_pairs, scenario_within};

const API_SERVER: &str = "https://10.96.0.1:443";
const SOURCES: &str = "/apis/sources.knative.dev/v1/namespaces/default/apiserversources";
const PODS: &str = "/api/v1/namespaces/default/pods";

fn pod(name: &str, resource_version: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": format!("uid-{name}"),
            "resourceVersion": resource_version,
            "labels": { "app": "demo" },
        },
        "spec": { "containers": [ { "name": "app", "image": "example.com/app" } ] },
    })
}

fn dynamic(value: Value) -> DynamicObject {
    serde_json::from_value(value).expect("a DynamicObject")
}

fn pods_resource() -> ApiResource {
    api_resource(&ApiVersionKindSelector {
        api_version: "v1".into(),
        kind: "Pod".into(),
        selector: None,
    })
}

fn extension(event: &Event, name: &str) -> Option<String> {
    event.extension(name).map(ExtensionValue::to_string)
}

#[test]
fn events_carry_upstream_types_subject_data_and_extensions_per_mode_and_change() {
    let overrides = CeOverrides {
        extensions: [
            ("team".to_owned(), "a".to_owned()),
            // Reserved names are never overridden.
            ("source".to_owned(), "nope".to_owned()),
        ]
        .into(),
    };
    let object = dynamic(pod("web-1", "7"));
    let reference =
        json!({ "kind": "Pod", "namespace": "default", "name": "web-1", "apiVersion": "v1" });
    let cases = [
        (
            EventMode::Reference,
            Change::Add,
            "dev.knative.apiserver.ref.add",
        ),
        (
            EventMode::Reference,
            Change::Update,
            "dev.knative.apiserver.ref.update",
        ),
        (
            EventMode::Reference,
            Change::Delete,
            "dev.knative.apiserver.ref.delete",
        ),
        (
            EventMode::Resource,
            Change::Add,
            "dev.knative.apiserver.resource.add",
        ),
        (
            EventMode::Resource,
            Change::Update,
            "dev.knative.apiserver.resource.update",
        ),
        (
            EventMode::Resource,
            Change::Delete,
            "dev.knative.apiserver.resource.delete",
        ),
    ];
    let mut ids = BTreeSet::new();
    for (mode, change, type_) in cases {
        let event = make_event(
            API_SERVER,
            mode,
            change,
            &object,
            &pods_resource(),
            Some(&overrides),
        )
        .expect("an event");
        let case = format!("{mode:?} {change:?}");
        assert_eq!(event.ty(), type_, "{case}");
        assert_eq!(event_type(mode, change), type_, "{case}");
        assert_eq!(event.source(), API_SERVER, "{case}");
        assert_eq!(
            event.subject(),
            Some("/apis/v1/namespaces/default/pods/web-1"),
            "{case}"
        );
        assert_eq!(event.datacontenttype(), Some("application/json"), "{case}");
        assert!(event.time().is_some(), "{case}");
        assert!(ids.insert(event.id().to_owned()), "{case}: ids are unique");
        let Some(Data::Json(data)) = event.data() else {
            panic!("{case}: JSON data, got {:?}", event.data())
        };
        match mode {
            EventMode::Reference => assert_eq!(data, &reference, "{case}"),
            EventMode::Resource => assert_eq!(data, &pod("web-1", "7"), "{case}"),
        }
        assert_eq!(extension(&event, "kind").as_deref(), Some("Pod"), "{case}");
        assert_eq!(
            extension(&event, "name").as_deref(),
            Some("web-1"),
            "{case}"
        );
        assert_eq!(
            extension(&event, "namespace").as_deref(),
            Some("default"),
            "{case}"
        );
        assert_eq!(extension(&event, "team").as_deref(), Some("a"), "{case}");
        assert_eq!(extension(&event, "source"), None, "{case}");
    }
}

#[test]
fn subjects_follow_upstreams_self_link_guess() {
    let cases = [
        ("v1", "Pod", "/apis/v1/namespaces/ns/pods/x"),
        (
            "apps/v1",
            "Deployment",
            "/apis/apps/v1/namespaces/ns/deployments/x",
        ),
        (
            "networking.k8s.io/v1",
            "NetworkPolicy",
            "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/x",
        ),
        (
            "networking.k8s.io/v1",
            "Ingress",
            "/apis/networking.k8s.io/v1/namespaces/ns/ingresses/x",
        ),
        ("v1", "Endpoints", "/apis/v1/namespaces/ns/endpoints/x"),
        (
            "serving.knative.dev",
            "Service",
            "/apis/serving.knative.dev/versionUnknown/namespaces/ns/services/x",
        ),
    ];
    for (api_version, kind, want) in cases {
        assert_eq!(subject(api_version, kind, "ns", "x"), want);
    }
}

#[test]
fn a_missing_type_in_the_object_comes_from_the_watched_resource() {
    let mut value = pod("web-1", "7");
    if let Value::Object(map) = &mut value {
        map.remove("apiVersion");
        map.remove("kind");
    }
    let event = make_event(
        API_SERVER,
        EventMode::Resource,
        Change::Add,
        &dynamic(value),
        &pods_resource(),
        None,
    )
    .expect("an event");
    let Some(Data::Json(data)) = event.data() else {
        panic!("JSON data")
    };
    assert_eq!(data["apiVersion"], "v1");
    assert_eq!(data["kind"], "Pod");
    assert_eq!(
        event.subject(),
        Some("/apis/v1/namespaces/default/pods/web-1")
    );
}

#[test]
fn the_owner_filter_wants_a_matching_controller() {
    let owned = |controller: bool| {
        let mut value = pod("web-1", "7");
        value["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "u", "controller": controller,
        }]);
        dynamic(value)
    };
    let owner = |api_version: &str, kind: &str| ApiVersionKind {
        api_version: api_version.into(),
        kind: kind.into(),
    };
    assert!(owner_matches(&dynamic(pod("a", "1")), None));
    assert!(!owner_matches(
        &dynamic(pod("a", "1")),
        Some(&owner("apps/v1", "ReplicaSet"))
    ));
    assert!(owner_matches(
        &owned(true),
        Some(&owner("apps/v1", "ReplicaSet"))
    ));
    assert!(owner_matches(&owned(true), Some(&owner("", "ReplicaSet"))));
    assert!(owner_matches(&owned(true), Some(&owner("apps/v1", ""))));
    assert!(!owner_matches(&owned(true), Some(&owner("apps/v1", "Job"))));
    assert!(!owner_matches(
        &owned(false),
        Some(&owner("apps/v1", "ReplicaSet"))
    ));
}

#[test]
fn ce_attributes_list_the_modes_three_types() {
    let types: Vec<_> = ce_attributes(EventMode::Resource, API_SERVER)
        .into_iter()
        .map(|a| (a.type_, a.source))
        .collect();
    assert_eq!(
        types,
        [
            (ADD_EVENT_TYPE.to_owned(), API_SERVER.to_owned()),
            (DELETE_EVENT_TYPE.to_owned(), API_SERVER.to_owned()),
            (UPDATE_EVENT_TYPE.to_owned(), API_SERVER.to_owned()),
        ]
    );
}

#[test]
fn the_operators_cluster_role_may_watch_what_upstreams_examples_watch() {
    let rules = crate::manifests::policy_rules(false);
    for (group, resource) in [
        ("", "events"),
        ("", "pods"),
        ("", "services"),
        ("", "namespaces"),
        ("apps", "deployments"),
    ] {
        for verb in ["get", "list", "watch"] {
            assert!(
                rules.iter().any(|r| {
                    r.api_groups.iter().flatten().any(|g| g == group)
                        && r.resources.iter().flatten().any(|x| x == resource)
                        && r.verbs.iter().any(|v| v == verb)
                }),
                "{verb} {group}/{resource}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The reconciler on the mock API server
// ---------------------------------------------------------------------------

/// Resolves nothing.
struct NoAddresses;

#[async_trait]
impl AddressResolver for NoAddresses {
    async fn resolve_reference(
        &self,
        reference: &knative_eventing::api::KReference,
        namespace: &str,
    ) -> Result<String, String> {
        Err(format!("service {namespace}/{} not found", reference.name))
    }
}

fn source_json(sink: Value, finalized: bool) -> Value {
    json!({
        "apiVersion": "sources.knative.dev/v1",
        "kind": "ApiServerSource",
        "metadata": {
            "name": "pods-src",
            "namespace": "default",
            "uid": "uid-src",
            "resourceVersion": "5",
            "generation": 2,
            "finalizers": if finalized { json!([API_SERVER_SOURCE_FINALIZER]) } else { json!([]) },
        },
        "spec": {
            "mode": "Reference",
            "serviceAccountName": "default",
            "resources": [ { "apiVersion": "v1", "kind": "Pod", "selector": { "matchLabels": { "app": "demo" } } } ],
            "sink": sink,
            "ceOverrides": { "extensions": { "team": "a" } },
        },
    })
}

fn source(value: Value) -> Arc<ApiServerSource> {
    Arc::new(serde_json::from_value(value).expect("an ApiServerSource"))
}

fn reconciler(client: Client) -> ApiServerSourceReconciler {
    ApiServerSourceReconciler::new(
        Arc::new(KubeObjects::<ApiServerSource>::new(client.clone())),
        Arc::new(NoAddresses),
        ApiServerWatchers::new(client, API_SERVER),
    )
    .with_sync_timeout(Duration::from_secs(2))
}

/// The `(status, reason)` of condition `type_` in a status body.
fn condition(body: &Value, type_: &str) -> (String, String) {
    let found = body["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {body}"));
    (
        found["status"].as_str().unwrap_or_default().to_owned(),
        found["reason"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Answers a write with what was written, one resourceVersion later.
fn written(mut body: Value) -> Value {
    body["metadata"]["resourceVersion"] = json!("6");
    body
}

type Pending = tower_test::mock::SendResponse<Response<Body>>;

/// The next request that is not a (re-)watch of pods; those are kept
/// unanswered in `held`.
async fn next_request(server: &mut ApiServer, held: &mut Vec<Pending>) -> (Request<Body>, Pending) {
    loop {
        let (request, send) = server.0.next_request().await.expect("a request");
        let query = query_pairs(request.uri().query().unwrap_or(""));
        if request.uri().path() == PODS && query.contains(&("watch".into(), "true".into())) {
            held.push(send);
            continue;
        }
        return (request, send);
    }
}

async fn json_body(request: Request<Body>) -> Value {
    let bytes = request.into_body().collect_bytes().await.expect("a body");
    serde_json::from_slice(&bytes).expect("a JSON body")
}

#[tokio::test]
async fn a_new_source_gets_the_finalizer_first() {
    let (client, mut server) = mock();
    let reconciler = reconciler(client);
    let obj = source(source_json(json!({ "uri": "http://127.0.0.1:9/" }), false));
    let script = async {
        let (request, send) = server.0.next_request().await.expect("a request");
        assert_eq!(request.method(), Method::PUT);
        assert_eq!(request.uri().path(), format!("{SOURCES}/pods-src"));
        let body = json_body(request).await;
        assert_eq!(
            body["metadata"]["finalizers"],
            json!([API_SERVER_SOURCE_FINALIZER])
        );
        assert_eq!(body["metadata"]["resourceVersion"], "5");
        server.answer(send, 200, &written(body));
    };
    let action = scenario_within(Duration::from_secs(2), script, reconciler.reconcile(obj))
        .await
        .expect("reconciled");
    assert_eq!(action, Action::await_change());
    server.expect_no_request().await;
}

#[tokio::test]
async fn a_sink_that_does_not_resolve_marks_sink_provided_false() {
    let (client, mut server) = mock();
    let reconciler = reconciler(client);
    let obj = source(source_json(
        json!({ "ref": { "apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "missing", "namespace": "default" } }),
        true,
    ));
    let script = async {
        let (request, send) = server.0.next_request().await.expect("a request");
        assert_eq!(request.method(), Method::PUT);
        assert_eq!(request.uri().path(), format!("{SOURCES}/pods-src/status"));
        let body = json_body(request).await;
        assert_eq!(
            condition(&body, "SinkProvided"),
            ("False".to_owned(), "NotFound".to_owned())
        );
        let message = body["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "SinkProvided")
            .and_then(|c| c["message"].as_str())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(
            message,
            "Couldn't get Sink URI: service default/missing not found"
        );
        assert_eq!(condition(&body, "Ready").0, "False");
        assert_eq!(condition(&body, "Deployed").0, "Unknown");
        assert_eq!(condition(&body, "SufficientPermissions").0, "Unknown");
        assert_eq!(body["status"]["observedGeneration"], 2);
        assert!(body["status"].get("sinkUri").is_none(), "{body}");
        assert_eq!(
            body["status"]["ceAttributes"],
            json!([
                { "type": ADD_REF_EVENT_TYPE, "source": API_SERVER },
                { "type": DELETE_REF_EVENT_TYPE, "source": API_SERVER },
                { "type": UPDATE_REF_EVENT_TYPE, "source": API_SERVER },
            ])
        );
        server.answer(send, 200, &written(body));
    };
    let action = scenario_within(Duration::from_secs(2), script, reconciler.reconcile(obj))
        .await
        .expect("reconciled");
    assert_eq!(action, Action::requeue_after(RECHECK));
    assert!(!reconciler.watchers().is_watching("default", "pods-src"));
    server.expect_no_request().await;
}

/// A CloudEvents sink on 127.0.0.1 that answers 202 and hands over every
/// request it gets.
async fn sink() -> (String, mpsc::UnboundedReceiver<(Method, HeaderMap, Bytes)>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let address = listener.local_addr().expect("an address");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let bytes = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let _ = tx.send((parts.method, parts.headers, bytes));
                            let mut response = Response::new(Full::new(Bytes::new()));
                            *response.status_mut() = http::StatusCode::ACCEPTED;
                            Ok::<_, Infallible>(response)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{address}/"), rx)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("header {name} in {headers:?}"))
}

#[tokio::test]
async fn watched_pod_changes_reach_the_sink_and_deleting_the_source_stops_the_watch() {
    let (sink_url, mut received) = sink().await;
    let (client, mut server) = mock();
    let reconciler = reconciler(client);
    let obj = source(source_json(json!({ "uri": sink_url }), true));
    let mut held = Vec::new();

    // The initial list (one pod already there: no event for it), the watch
    // (a new pod added, the old one modified) and the status, the last
    // two in any order.
    let script = async {
        let (request, send) = server.0.next_request().await.expect("the list");
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), PODS);
        let query = query_pairs(request.uri().query().unwrap_or(""));
        assert!(
            query.contains(&("labelSelector".into(), "app=demo".into())),
            "{query:?}"
        );
        assert!(!query.contains(&("watch".into(), "true".into())));
        let list = json!({
            "apiVersion": "v1", "kind": "PodList",
            "metadata": { "resourceVersion": "100" },
            "items": [ pod("old-pod", "90") ],
        });
        server.answer(send, 200, &list);

        let (mut watched, mut status_written) = (false, false);
        while !(watched && status_written) {
            let (request, send) = server.0.next_request().await.expect("a request");
            let query = query_pairs(request.uri().query().unwrap_or(""));
            if request.uri().path() == PODS && query.contains(&("watch".into(), "true".into())) {
                if watched {
                    held.push(send);
                    continue;
                }
                assert!(query.contains(&("labelSelector".into(), "app=demo".into())));
                assert!(query.contains(&("resourceVersion".into(), "100".into())));
                let lines = [
                    json!({ "type": "ADDED", "object": pod("new-pod", "101") }),
                    json!({ "type": "MODIFIED", "object": pod("old-pod", "102") }),
                ]
                .iter()
                .map(|l| format!("{l}\n"))
                .collect::<String>();
                server.respond(send, 200, lines.into_bytes());
                watched = true;
            } else {
                assert_eq!(request.method(), Method::PUT);
                assert_eq!(request.uri().path(), format!("{SOURCES}/pods-src/status"));
                let body = json_body(request).await;
                for type_ in ["SinkProvided", "SufficientPermissions", "Deployed", "Ready"] {
                    assert_eq!(condition(&body, type_).0, "True", "{type_}: {body}");
                }
                assert_eq!(body["status"]["sinkUri"], sink_url.as_str());
                assert_eq!(body["status"]["namespaces"], json!(["default"]));
                server.answer(send, 200, &written(body));
                status_written = true;
            }
        }
    };
    let action = scenario_within(
        Duration::from_secs(5),
        script,
        reconciler.reconcile(Arc::clone(&obj)),
    )
    .await
    .expect("reconciled");
    assert_eq!(action, Action::await_change());
    assert!(reconciler.watchers().is_watching("default", "pods-src"));

    let mut events = Vec::new();
    for _ in 0..2 {
        let got = tokio::time::timeout(Duration::from_secs(5), received.recv())
            .await
            .expect("an event within 5 s")
            .expect("the sink runs");
        events.push(got);
    }
    let (method, headers, body) = &events[0];
    assert_eq!(method, Method::POST);
    assert_eq!(header(headers, "ce-specversion"), "1.0");
    assert_eq!(header(headers, "ce-type"), "dev.knative.apiserver.ref.add");
    assert_eq!(header(headers, "ce-source"), API_SERVER);
    assert_eq!(
        header(headers, "ce-subject"),
        "/apis/v1/namespaces/default/pods/new-pod"
    );
    assert!(!header(headers, "ce-id").is_empty());
    assert!(!header(headers, "ce-time").is_empty());
    assert_eq!(header(headers, "ce-kind"), "Pod");
    assert_eq!(header(headers, "ce-name"), "new-pod");
    assert_eq!(header(headers, "ce-namespace"), "default");
    assert_eq!(header(headers, "ce-team"), "a");
    assert!(header(headers, "content-type").starts_with("application/json"));
    let data: Value = serde_json::from_slice(body).expect("JSON data");
    assert_eq!(
        data,
        json!({ "kind": "Pod", "namespace": "default", "name": "new-pod", "apiVersion": "v1" })
    );
    let (_, headers, _) = &events[1];
    assert_eq!(
        header(headers, "ce-type"),
        "dev.knative.apiserver.ref.update"
    );
    assert_eq!(
        header(headers, "ce-subject"),
        "/apis/v1/namespaces/default/pods/old-pod"
    );
    assert_ne!(
        header(&events[0].1, "ce-id"),
        header(headers, "ce-id"),
        "ids are unique"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), received.recv())
            .await
            .is_err(),
        "no event for the pod of the initial list"
    );

    // Deleting the source stops the watch, then lets the source go.
    let mut deleted = source_json(json!({ "uri": sink_url }), true);
    deleted["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let script = async {
        let (request, send) = next_request(&mut server, &mut held).await;
        assert_eq!(request.method(), Method::PUT);
        assert_eq!(request.uri().path(), format!("{SOURCES}/pods-src"));
        let body = json_body(request).await;
        assert_eq!(body["metadata"]["finalizers"], json!([]));
        assert_eq!(body["metadata"]["resourceVersion"], "5");
        server.answer(send, 200, &written(body));
    };
    scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(source(deleted)),
    )
    .await
    .expect("reconciled");
    assert!(!reconciler.watchers().is_watching("default", "pods-src"));
}

#[tokio::test]
async fn a_forbidden_list_marks_sufficient_permissions_false() {
    let (client, mut server) = mock();
    let reconciler = reconciler(client);
    let obj = source(source_json(json!({ "uri": "http://127.0.0.1:9/" }), true));
    let script = async {
        let (request, send) = server.0.next_request().await.expect("the list");
        assert_eq!(request.uri().path(), PODS);
        let message = "pods is forbidden: User \"system:serviceaccount:knative-serving:knative-operator\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\"";
        server.answer(
            send,
            403,
            &api_status(403, "Forbidden", message, json!({ "kind": "pods" })),
        );
        let (request, send) = server.0.next_request().await.expect("the status");
        assert_eq!(request.uri().path(), format!("{SOURCES}/pods-src/status"));
        let body = json_body(request).await;
        assert_eq!(
            condition(&body, "SufficientPermissions"),
            ("False".to_owned(), "InsufficientPermissions".to_owned())
        );
        assert_eq!(
            condition(&body, "Deployed"),
            ("False".to_owned(), "InsufficientPermissions".to_owned())
        );
        assert_eq!(condition(&body, "SinkProvided").0, "True");
        assert_eq!(condition(&body, "Ready").0, "False");
        let text = body.to_string();
        assert!(text.contains("cannot list resource"), "{text}");
        server.answer(send, 200, &written(body));
    };
    let action = scenario_within(Duration::from_secs(3), script, reconciler.reconcile(obj))
        .await
        .expect("reconciled");
    assert_eq!(action, Action::requeue_after(RECHECK));
}
