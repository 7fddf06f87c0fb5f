//! `KubeObjects` against a mock API server (the tower-test pattern of
//! `specs/BUILD.md §3`): every test checks the method, path, query and body
//! the adapter sends and how it reads the answer.

use futures::StreamExt;
use http::Method;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use knative_serving::api::Service;
use serde_json::json;

use super::*;
use crate::test_util::{Expect, api_status, mock, query_pairs, scenario};

const SERVICES: &str = "/apis/serving.knative.dev/v1/namespaces/default/services";

fn service_json(name: &str, resource_version: &str) -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": "default",
            "resourceVersion": resource_version,
            "uid": format!("uid-{name}"),
            "generation": 1,
            "labels": { "app": name },
        },
        "spec": {
            "template": { "spec": { "containers": [ { "name": "user-container", "image": "knative.dev/sample-app" } ] } }
        }
    })
}

fn to_json(service: &Service) -> Value {
    serde_json::to_value(service).expect("JSON")
}

fn service(name: &str, resource_version: &str) -> Service {
    serde_json::from_value(service_json(name, resource_version)).expect("a Service")
}

#[tokio::test]
async fn get_reads_the_named_object() {
    let (client, mut server) = mock();
    let objects = KubeObjects::<Service>::new(client);
    let got = scenario(
        server.handle(
            Expect::new(Method::GET, &format!("{SERVICES}/hello")),
            200,
            service_json("hello", "7"),
        ),
        objects.get(Some("default"), "hello"),
    )
    .await
    .expect("the service");
    assert_eq!(to_json(&got), service_json("hello", "7"));
}

#[tokio::test]
async fn get_of_a_missing_object_is_not_found() {
    let (client, mut server) = mock();
    let objects = KubeObjects::<Service>::new(client);
    let err = scenario(
        server.handle(
            Expect::new(Method::GET, &format!("{SERVICES}/nope")),
            404,
            api_status(
                404,
                "NotFound",
                "services.serving.knative.dev \"nope\" not found",
                json!({ "name": "nope", "group": "serving.knative.dev", "kind": "services" }),
            ),
        ),
        objects.get(Some("default"), "nope"),
    )
    .await
    .expect_err("not found");
    assert!(
        matches!(&err, StoreError::NotFound { kind, key } if kind == "Service" && key == "default/nope"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_kind_the_server_does_not_serve_is_a_backend_error_not_a_missing_object() {
    let (client, mut server) = mock();
    let objects = KubeObjects::<Service>::new(client);
    let err = scenario(
        server.handle(
            Expect::new(Method::GET, &format!("{SERVICES}/hello")),
            404,
            api_status(
                404,
                "NotFound",
                "the server could not find the requested resource",
                json!({}),
            ),
        ),
        objects.get(Some("default"), "hello"),
    )
    .await
    .expect_err("no such kind");
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
}

#[tokio::test]
async fn a_namespaced_kind_needs_a_namespace_to_get_an_object() {
    let (client, mut server) = mock();
    let objects = KubeObjects::<Service>::new(client);
    let err = objects.get(None, "hello").await.expect_err("no namespace");
    assert!(err.is_not_found(), "{err:?}");
    server.expect_no_request().await;
}

#[tokio::test]
async fn cluster_scoped_kinds_ignore_the_namespace() {
    let (client, mut server) = mock();
    let objects = KubeObjects::<Namespace>::new(client);
    let got = scenario(
        server.handle(
            Expect::new(Method::GET, "/api/v1/namespaces/knative-serving"),
            200,
            json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "knative-serving" } }),
        ),
        objects.get(Some("default"), "knative-serving"),
    )
    .await
    .expect("the namespace");
    assert_eq!(got.metadata.name.as_deref(), Some("knative-serving"));
}

#[tokio::test]
async fn list_sends_the_label_selector_and_sorts_by_name() {
    let (client, mut server) = mock();
    let objects = KubeObjects::<Service>::new(client);
    let selector: Selector = kube::core::Expression::Equal("app".into(), "hello".into()).into();
    let list = json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "ServiceList",
        "metadata": { "resourceVersion": "10" },
        "items": [ service_json("b", "2"), service_json("a", "1") ],
    });
    let got = scenario(
        server.handle(
            Expect::new(Method::GET, SERVICES).query(&[("labelSelector", "app=hello")]),
            200,
            list,
        ),
        objects.list(Some("default"), &selector),
    )
    .await
    .expect("the list");
    let names: Vec<_> = got.iter().filter_map(|s| s.metadata.name.clone()).collect();
    assert_eq!(names, ["a", "b"]);
}

#[tokio::test]
async fn list_without_namespace_lists_all_namespaces() {
    let (client, mut server) = mock();
    let objects = KubeObjects::<Service>::new(client);
    let list = json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "ServiceList",
        "metadata": { "resourceVersion": "10" },
        "items": [],
    });
    let got = scenario(
        server.handle(
            Expect::new(Method::GET, "/apis/serving.knative.dev/v1/services"),
            200,
            list,
        ),
        objects.list(None, &Selector::default()),
    )
    .await
    .expect("the list");
    assert!(got.is_empty());
}

#[tokio::test]
async fn create_posts_the_object() {
    let (client, mut server) = mock();
    let objects = KubeObjects::<Service>::new(client);
    let mut new = service("hello", "");
    new.metadata.resource_version = None;
    new.metadata.uid = None;
    let sent = serde_json::to_value(&new).expect("JSON");
    let created = scenario(
        server.handle(
            Expect::new(Method::POST, SERVICES).body(sent),
            201,
            service_json("hello", "1"),
        ),
        objects.create(&new),
    )
    .await
    .expect("created");
    assert_eq!(created.metadata.resource_version.as_deref(), Some("1"));
}

#[tokio::test]
async fn create_of_an_existing_name_is_already_exists() {
    let (client, mut server) = mock();
    let objects = KubeObjects::<Service>::new(client);
    let mut new = service("hello", "");
    new.metadata.resource_version = None;
    let sent = serde_json::to_value(&new).expect("JSON");
    let err = scenario(
        server.handle(
            Expect::new(Method::POST, SERVICES).body(sent),
            409,
            api_status(
                409,
                "AlreadyExists",
                "services.serving.knative.dev \"hello\" already exists",
                json!({ "name": "hello", "group": "serving.knative.dev", "kind": "services" }),
            ),
        ),
        objects.create(&new),
    )
    .await
    .expect_err("exists");
    assert!(err.is_already_exists(), "{err:?}");
}

#[tokio::test]
async fn create_of_a_namespaced_kind_without_namespace_is_invalid() {
    let (client, mut server) = mock();
    let objects = KubeObjects::<Service>::new(client);
    let mut new = service("hello", "");
    new.metadata.namespace = None;
    let err = objects.create(&new).await.expect_err("no namespace");
    let StoreError::Invalid { errors, .. } = err else {
        panic!("{err:?}")
    };
    assert!(
        errors.to_string().contains("metadata.namespace"),
        "{errors}"
    );
    server.expect_no_request().await;
}

#[tokio::test]
async fn replace_puts_the_object() {
    let (client, mut server) = mock();
    let objects = KubeObjects::<Service>::new(client);
    let mut changed = service("hello", "7");
    changed.metadata.labels = Some([("app".to_owned(), "changed".to_owned())].into());
    let sent = serde_json::to_value(&changed).expect("JSON");
    let mut stored = service_json("hello", "8");
    stored["metadata"]["labels"]["app"] = json!("changed");
    let got = scenario(
        server.handle(
            Expect::new(Method::PUT, &format!("{SERVICES}/hello")).body(sent),
            200,
            stored,
        ),
        objects.replace(&changed),
    )
    .await
    .expect("replaced");
    assert_eq!(got.metadata.resource_version.as_deref(), Some("8"));
}

#[tokio::test]
async fn a_stale_replace_is_a_conflict() {
    let (client, mut server) = mock();
    let objects = KubeObjects::<Service>::new(client);
    let stale = service("hello", "7");
    let sent = serde_json::to_value(&stale).expect("JSON");
    // Exactly what kube-apiserver 1.33 answers a PUT with an old resourceVersion.
    let message = "Operation cannot be fulfilled on services.serving.knative.dev \"hello\": \
                   the object has been modified; please apply your changes to the latest \
                   version and try again";
    let err = scenario(
        server.handle(
            Expect::new(Method::PUT, &format!("{SERVICES}/hello")).body(sent),
            409,
            api_status(
                409,
                "Conflict",
                message,
                json!({ "name": "hello", "group": "serving.knative.dev", "kind": "services" }),
            ),
        ),
        objects.replace(&stale),
    )
    .await
    .expect_err("conflict");
    match err {
        StoreError::Conflict { kind, key, reason } => {
            assert_eq!(kind, "Service");
            assert_eq!(key, "default/hello");
            assert_eq!(reason, message);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn replace_without_resource_version_is_refused_before_any_request() {
    let (client, mut server) = mock();
    let objects = KubeObjects::<Service>::new(client);
    let mut unversioned = service("hello", "");
    unversioned.metadata.resource_version = None;
    let err = objects.replace(&unversioned).await.expect_err("no version");
    let StoreError::Invalid { errors, .. } = err else {
        panic!("{err:?}")
    };
    assert!(
        errors.to_string().contains("metadata.resourceVersion"),
        "{errors}"
    );
    let err = objects
        .replace_status(&unversioned)
        .await
        .expect_err("no version");
    assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
    server.expect_no_request().await;
}

#[tokio::test]
async fn replace_status_puts_to_the_status_subresource() {
    let (client, mut server) = mock();
    let objects = KubeObjects::<Service>::new(client);
    let mut with_status = service("hello", "7");
    with_status.status = Some(
        serde_json::from_value(
            json!({ "observedGeneration": 1, "url": "http://hello.default.example.com" }),
        )
        .expect("a status"),
    );
    let sent = serde_json::to_value(&with_status).expect("JSON");
    let mut stored = sent.clone();
    stored["metadata"]["resourceVersion"] = json!("8");
    let got = scenario(
        server.handle(
            Expect::new(Method::PUT, &format!("{SERVICES}/hello/status")).body(sent),
            200,
            stored,
        ),
        objects.replace_status(&with_status),
    )
    .await
    .expect("status replaced");
    assert_eq!(to_json(&got)["status"], to_json(&with_status)["status"]);
}

#[tokio::test]
async fn patch_sends_a_json_merge_patch() {
    let (client, mut server) = mock();
    let objects = KubeObjects::<Service>::new(client);
    let patch = json!({ "metadata": { "labels": { "team": "a" }, "resourceVersion": "7" } });
    let mut stored = service_json("hello", "8");
    stored["metadata"]["labels"]["team"] = json!("a");
    let got = scenario(
        server.handle(
            Expect::new(Method::PATCH, &format!("{SERVICES}/hello"))
                .content_type("application/merge-patch+json")
                .body(patch.clone()),
            200,
            stored,
        ),
        objects.patch(Some("default"), "hello", &patch),
    )
    .await
    .expect("patched");
    assert_eq!(
        got.metadata
            .labels
            .and_then(|l| l.get("team").cloned())
            .as_deref(),
        Some("a")
    );
}

#[tokio::test]
async fn an_invalid_patch_keeps_the_field_paths_of_the_causes() {
    let (client, mut server) = mock();
    let objects = KubeObjects::<Service>::new(client);
    let patch = json!({ "spec": { "traffic": [ { "percent": 150 } ] } });
    let details = json!({
        "name": "hello",
        "group": "serving.knative.dev",
        "kind": "Service",
        "causes": [
            {
                "reason": "FieldValueInvalid",
                "message": "Invalid value: 150: spec.traffic[0].percent in body should be less than or equal to 100",
                "field": "spec.traffic[0].percent"
            },
            {
                "reason": "FieldValueRequired",
                "message": "Required value",
                "field": "spec.template.spec.containers[0].image"
            }
        ]
    });
    let err = scenario(
        server.handle(
            Expect::new(Method::PATCH, &format!("{SERVICES}/hello"))
                .content_type("application/merge-patch+json")
                .body(patch.clone()),
            422,
            api_status(
                422,
                "Invalid",
                "Service.serving.knative.dev \"hello\" is invalid: [...]",
                details,
            ),
        ),
        objects.patch(Some("default"), "hello", &patch),
    )
    .await
    .expect_err("invalid");
    let StoreError::Invalid { kind, key, errors } = err else {
        panic!("{err:?}")
    };
    assert_eq!((kind.as_str(), key.as_str()), ("Service", "default/hello"));
    let paths: Vec<Vec<String>> = errors.diagnostics().into_iter().map(|d| d.paths).collect();
    assert!(
        paths.contains(&vec!["spec.traffic[0].percent".to_owned()]),
        "{paths:?}"
    );
    assert!(
        paths.contains(&vec!["spec.template.spec.containers[0].image".to_owned()]),
        "{paths:?}"
    );
    assert!(
        errors
            .to_string()
            .contains("spec.template.spec.containers[0].image: Required value")
    );
}

#[tokio::test]
async fn patch_status_patches_the_status_subresource() {
    let (client, mut server) = mock();
    let objects = KubeObjects::<Service>::new(client);
    let patch = json!({ "status": { "observedGeneration": 1 } });
    let mut stored = service_json("hello", "8");
    stored["status"] = json!({ "observedGeneration": 1 });
    let got = scenario(
        server.handle(
            Expect::new(Method::PATCH, &format!("{SERVICES}/hello/status"))
                .content_type("application/merge-patch+json")
                .body(patch.clone()),
            200,
            stored,
        ),
        objects.patch_status(Some("default"), "hello", &patch),
    )
    .await
    .expect("patched");
    assert_eq!(to_json(&got)["status"]["observedGeneration"], json!(1));
}

#[tokio::test]
async fn deleting_an_object_with_finalizers_leaves_it_terminating() {
    let (client, mut server) = mock();
    let objects = KubeObjects::<Service>::new(client);
    let mut terminating = service_json("hello", "9");
    terminating["metadata"]["finalizers"] = json!(["serving.knative.dev/services"]);
    terminating["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let deletion = scenario(
        server.handle(
            Expect::new(Method::DELETE, &format!("{SERVICES}/hello"))
                .body(json!({ "propagationPolicy": "Background" })),
            202,
            terminating,
        ),
        objects.delete(Some("default"), "hello"),
    )
    .await
    .expect("deleting");
    assert!(matches!(deletion, Deletion::Terminating(_)), "{deletion:?}");
}

#[tokio::test]
async fn deleting_an_object_without_finalizers_removes_it() {
    let (client, mut server) = mock();
    let objects = KubeObjects::<Service>::new(client);
    let deletion = scenario(
        server.handle(
            Expect::new(Method::DELETE, &format!("{SERVICES}/hello"))
                .body(json!({ "propagationPolicy": "Background" })),
            200,
            service_json("hello", "9"),
        ),
        objects.delete(Some("default"), "hello"),
    )
    .await
    .expect("deleted");
    let Deletion::Removed(last) = deletion else {
        panic!("{deletion:?}")
    };
    assert_eq!(to_json(&last), service_json("hello", "9"));
}

#[tokio::test]
async fn a_delete_answered_with_a_status_is_a_removal() {
    let (client, mut server) = mock();
    let objects = KubeObjects::<ConfigMap>::new(client);
    let success = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": { "name": "config", "kind": "configmaps", "uid": "u-1" }
    });
    let deletion = scenario(
        server.handle(
            Expect::new(
                Method::DELETE,
                "/api/v1/namespaces/default/configmaps/config",
            )
            .body(json!({ "propagationPolicy": "Background" })),
            200,
            success,
        ),
        objects.delete(Some("default"), "config"),
    )
    .await
    .expect("deleted");
    let Deletion::Removed(last) = deletion else {
        panic!("{deletion:?}")
    };
    assert_eq!(last.metadata.name.as_deref(), Some("config"));
    assert_eq!(last.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(last.metadata.uid.as_deref(), Some("u-1"));
}

/// One line of a watch response.
fn watch_line(kind: &str, object: Value) -> String {
    format!("{}\n", json!({ "type": kind, "object": object }))
}

#[tokio::test]
async fn watch_lists_then_maps_watch_events_and_ends_after_an_error() {
    let (client, mut server) = mock();
    let objects = KubeObjects::<Service>::new(client);
    let list = json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "ServiceList",
        "metadata": { "resourceVersion": "10" },
        "items": [ service_json("b", "3"), service_json("a", "2") ],
    });
    let script = async {
        server
            .handle(
                Expect::new(Method::GET, SERVICES).query(&[("limit", "500")]),
                200,
                list,
            )
            .await;
        let (request, send) = server.0.next_request().await.expect("the watch request");
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), SERVICES);
        let query = query_pairs(request.uri().query().unwrap_or(""));
        for pair in [
            ("watch", "true"),
            ("resourceVersion", "10"),
            ("allowWatchBookmarks", "true"),
        ] {
            assert!(
                query.contains(&(pair.0.to_owned(), pair.1.to_owned())),
                "{pair:?} in {}",
                request.uri()
            );
        }
        let gone = api_status(
            410,
            "Expired",
            "too old resource version: 10 (20)",
            json!({}),
        );
        let body = [
            watch_line("ADDED", service_json("c", "11")),
            watch_line("MODIFIED", service_json("a", "12")),
            watch_line("ADDED", service_json("b", "13")),
            watch_line("DELETED", service_json("c", "14")),
            watch_line("ERROR", gone),
        ]
        .concat();
        server.respond(send, 200, body.into_bytes());
    };
    let watch = scenario(script, async {
        let mut watch = objects.watch(Some("default")).await.expect("watching");
        let mut seen = Vec::new();
        while let Some(item) = watch.events.next().await {
            seen.push(item);
        }
        watch.events = futures::stream::empty().boxed();
        (watch, seen)
    })
    .await;
    let (watch, seen) = watch;
    let initial: Vec<_> = watch
        .initial
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    assert_eq!(initial, ["a", "b"]);
    let events: Vec<String> = seen
        .iter()
        .map(|item| match item {
            Ok(WatchEvent::Added(s)) => {
                format!("added {}", s.metadata.name.clone().unwrap_or_default())
            }
            Ok(WatchEvent::Modified(s)) => {
                format!("modified {}", s.metadata.name.clone().unwrap_or_default())
            }
            Ok(WatchEvent::Deleted(s)) => {
                format!("deleted {}", s.metadata.name.clone().unwrap_or_default())
            }
            Err(e) => format!("error {}", matches!(e, StoreError::Backend(_))),
        })
        .collect();
    assert_eq!(
        events,
        [
            "added c",
            "modified a",
            "modified b",
            "deleted c",
            "error true"
        ]
    );
}

#[tokio::test]
async fn a_watch_whose_list_fails_is_an_error() {
    let (client, mut server) = mock();
    let objects = KubeObjects::<Service>::new(client);
    let forbidden = api_status(
        403,
        "Forbidden",
        "services.serving.knative.dev is forbidden: User \"system:serviceaccount:knative:operator\" cannot list resource",
        json!({ "group": "serving.knative.dev", "kind": "services" }),
    );
    let result = scenario(
        server.handle(
            Expect::new(Method::GET, "/apis/serving.knative.dev/v1/services")
                .query(&[("limit", "500")]),
            403,
            forbidden,
        ),
        objects.watch(None),
    )
    .await;
    assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
}

#[tokio::test]
async fn a_view_in_one_namespace_lists_there_and_sees_nothing_elsewhere() {
    let (client, mut server) = mock();
    let objects = KubeObjects::<Service>::new(client).in_namespace("default");
    let list = json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "ServiceList",
        "metadata": { "resourceVersion": "10" },
        "items": [ service_json("a", "1") ],
    });
    let got = scenario(
        server.handle(Expect::new(Method::GET, SERVICES), 200, list),
        objects.list(None, &Selector::default()),
    )
    .await
    .expect("the list");
    assert_eq!(got.len(), 1);

    let elsewhere = objects
        .list(Some("other"), &Selector::default())
        .await
        .expect("an empty list");
    assert!(elsewhere.is_empty());
    let err = objects
        .get(Some("other"), "a")
        .await
        .expect_err("out of scope");
    assert!(err.is_not_found(), "{err:?}");
    let mut foreign = service("a", "1");
    foreign.metadata.namespace = Some("other".into());
    let err = objects.replace(&foreign).await.expect_err("out of scope");
    assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
    server.expect_no_request().await;
}

/// A Broker written without `spec` (upstream's manifests often do: its
/// spec is all optional and the webhook defaults it) reads as an empty
/// spec; an object that cannot be read as the kind is left out of a list
/// rather than failing it.
#[tokio::test]
async fn objects_without_spec_read_and_unreadable_ones_are_skipped() {
    use knative_eventing::api::Broker;
    const BROKERS: &str = "/apis/eventing.knative.dev/v1/namespaces/default/brokers";
    let bare = json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
        "metadata": {"name": "default", "namespace": "default", "resourceVersion": "3"},
    });
    let (client, mut server) = mock();
    let objects = KubeObjects::<Broker>::new(client);
    let got = scenario(
        server.handle(
            Expect::new(Method::GET, &format!("{BROKERS}/default")),
            200,
            bare.clone(),
        ),
        objects.get(Some("default"), "default"),
    )
    .await
    .expect("a Broker without spec reads");
    assert_eq!(got.metadata.name.as_deref(), Some("default"));
    assert_eq!(got.spec, Default::default());

    let (client, mut server) = mock();
    let objects = KubeObjects::<Broker>::new(client);
    let list = json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "BrokerList",
        "metadata": {"resourceVersion": "9"},
        "items": [
            bare,
            {"metadata": {"name": "broken", "namespace": "default"},
             "spec": {"delivery": {"retry": "not a number"}}},
        ],
    });
    let listed = scenario(
        server.handle(Expect::new(Method::GET, BROKERS), 200, list),
        objects.list(Some("default"), &Selector::default()),
    )
    .await
    .expect("the list");
    let names: Vec<_> = listed
        .iter()
        .filter_map(|b| b.metadata.name.as_deref())
        .collect();
    assert_eq!(names, ["default"]);
}

/// With a recorder, creating an object with a controlling owner publishes
/// upstream's `Created` event on the owner (`kubectl describe ksvc hello`
/// shows `Created Configuration "hello"`); a creation that fails publishes
/// `CreationFailed`.
#[tokio::test]
async fn creating_an_owned_object_publishes_an_event_on_its_owner() {
    use knative_serving::api::Configuration;
    const CONFIGURATIONS: &str = "/apis/serving.knative.dev/v1/namespaces/default/configurations";
    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
    let configuration: Configuration = serde_json::from_value(json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Configuration",
        "metadata": {"name": "hello", "namespace": "default", "ownerReferences": [{
            "apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "hello",
            "uid": "uid-svc", "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"template": {"spec": {"containers": [{"image": "example.com/app"}]}}},
    }))
    .expect("a Configuration");
    let (client, mut server) = mock();
    let recorder = Arc::new(kube::runtime::events::Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter {
            controller: "knative-operator".into(),
            instance: Some("test".into()),
        },
    ));
    let objects = KubeObjects::<Configuration>::new(client).with_recorder(recorder);
    let mut stored = serde_json::to_value(&configuration).expect("JSON");
    stored["metadata"]["uid"] = json!("uid-config");
    stored["metadata"]["resourceVersion"] = json!("1");
    let server = async move {
        let (_, send) = server.take(Method::POST, CONFIGURATIONS).await;
        server.answer(send, 201, &stored);
        let (event, send) = server.take(Method::POST, EVENTS).await;
        assert_eq!(event["reason"], "Created");
        assert_eq!(event["type"], "Normal");
        assert_eq!(event["note"], "Created Configuration \"hello\"");
        assert_eq!(event["regarding"]["kind"], "Service");
        assert_eq!(event["regarding"]["name"], "hello");
        assert_eq!(event["regarding"]["uid"], "uid-svc");
        assert_eq!(event["reportingController"], "knative-operator");
        server.answer(send, 201, &event);
        let (_, send) = server.take(Method::POST, CONFIGURATIONS).await;
        server.answer(
            send,
            422,
            &api_status(
                422,
                "Invalid",
                "spec.template: bad",
                json!({"name": "hello"}),
            ),
        );
        let (event, send) = server.take(Method::POST, EVENTS).await;
        assert_eq!(event["reason"], "CreationFailed");
        assert_eq!(event["type"], "Warning");
        server.answer(send, 201, &event);
    };
    scenario(server, async {
        objects.create(&configuration).await.expect("created");
        objects
            .create(&configuration)
            .await
            .expect_err("refused the second time");
    })
    .await;
}
