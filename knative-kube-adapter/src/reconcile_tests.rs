//! The reconcilers of Eventing, Serving and Build, unchanged, over
//! [`KubeObjects`] on the mock API server (issue 9 §5): every API call they
//! make (method, path with query, and the body fields that matter) for
//! creation, update, a conflict and its retry, and deletion with
//! finalizers.
//!
//! A conflict on a write fails the reconcile (the error goes back to the
//! controller, which retries with backoff); the retry reconciles the
//! version the controller's watch delivered since, not a version read
//! with a GET: [`a_status_conflict_is_retried_by_the_controller_with_the_watched_version`]
//! runs the real `knative_core::runtime::Controller` to show it.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use knative_build::api::{Pipeline, PipelineRun, Task, TaskRun};
use knative_build::executor::{
    CancelHandle, Execution, ExecutionPhase, ExecutionStatus, MockStepExecutor, RunKey, RunPaths,
    StepOutcome, StepPhase,
};
use knative_build::reconciler::{PipelineRunReconciler, TaskRunReconciler};
use knative_core::runtime::{Action, Controller, Reconciler};
use knative_core::store::{ObjectKey, Objects, StoreError};
use knative_eventing::api::{
    Broker, Channel, InMemoryChannel, Parallel, PingSource, Sequence, Subscription, Trigger,
};
use knative_eventing::binding::Limits;
use knative_eventing::broker::{Brokers, DispatchConfig, IngressConfig};
use knative_eventing::channel::Channels;
use knative_eventing::log::InMemoryLog;
use knative_eventing::reconciler::{
    BROKER_FINALIZER, BrokerAddresses, BrokerReconciler, IN_MEMORY_CHANNEL_FINALIZER,
    InMemoryChannelReconciler, PING_SOURCE_FINALIZER, ParallelReconciler, PingScheduler,
    PingSourceReconciler, ReconcileError, SUBSCRIPTION_FINALIZER, SequenceReconciler,
    SubscriptionReconciler, TRIGGER_FINALIZER, TriggerReconciler,
};
use knative_serving::api::{Configuration, Revision, Route, Service};
use knative_serving::config::ServingConfig;
use knative_serving::reconciler::{
    ConfigurationReconciler, RouteIndex, RouteReconciler, ServiceReconciler,
};
use knative_serving::traffic::RoutingTable;
use kube::client::Body;
use serde_json::{Value, json};

use crate::objects::KubeObjects;
use crate::test_util::{ApiServer, api_status, mock, query_pairs, scenario_within};

type Pending = tower_test::mock::SendResponse<Response<Body>>;

/// One request as the mock API server got it.
struct Call {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    content_type: Option<String>,
    body: Value,
    send: Pending,
}

impl Call {
    fn has_query(&self, key: &str, value: &str) -> bool {
        self.query.iter().any(|(k, v)| k == key && v == value)
    }
}

async fn take(server: &mut ApiServer) -> Call {
    let (request, send): (Request<Body>, Pending) =
        server.0.next_request().await.expect("a request");
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = query_pairs(request.uri().query().unwrap_or(""))
        .into_iter()
        .collect();
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = request.into_body().collect_bytes().await.expect("the body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("a JSON body")
    };
    Call {
        method,
        path,
        query,
        content_type,
        body,
        send,
    }
}

/// Takes the next request, checking its method, path and (exact) query.
async fn expect(
    server: &mut ApiServer,
    method: Method,
    path: &str,
    query: &[(&str, &str)],
) -> Call {
    let call = take(server).await;
    assert_eq!((&call.method, call.path.as_str()), (&method, path));
    let want: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(call.query, want, "query of {method} {path}");
    call
}

/// Answers a write with what was written, at `resource_version`.
fn stored(mut body: Value, resource_version: &str) -> Value {
    body["metadata"]["resourceVersion"] = json!(resource_version);
    body
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

fn not_found(kind: &str, name: &str) -> Value {
    api_status(
        404,
        "NotFound",
        &format!("{kind} {name:?} not found"),
        json!({ "name": name, "kind": kind }),
    )
}

fn conflict(kind: &str, name: &str) -> Value {
    api_status(
        409,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {kind} {name:?}: the object has been modified; please apply your changes to the latest version and try again"
        ),
        json!({ "name": name, "kind": kind }),
    )
}

// ---------------------------------------------------------------------------
// Eventing: BrokerReconciler
// ---------------------------------------------------------------------------

const BROKERS: &str = "/apis/eventing.knative.dev/v1/namespaces/default/brokers";
const BROKER_INGRESS: &str = "http://knative-ingress.knative-serving.svc.cluster.local:8081";

fn broker_json(resource_version: &str, finalized: bool) -> Value {
    json!({
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": {
            "name": "default",
            "namespace": "default",
            "uid": "uid-broker",
            "generation": 1,
            "resourceVersion": resource_version,
            "finalizers": if finalized { json!([BROKER_FINALIZER]) } else { json!([]) },
        },
        "spec": {},
    })
}

fn broker(value: Value) -> Arc<Broker> {
    Arc::new(serde_json::from_value(value).expect("a Broker"))
}

fn broker_reconciler(client: &kube::Client) -> (Arc<dyn Objects<Broker>>, BrokerReconciler) {
    let brokers: Arc<dyn Objects<Broker>> = Arc::new(KubeObjects::<Broker>::new(client.clone()));
    let data_plane = Brokers::new(
        Arc::new(InMemoryLog::new()),
        IngressConfig::default(),
        DispatchConfig::default(),
    );
    let resolver = Arc::new(BrokerAddresses::new(Arc::clone(&brokers), None));
    let reconciler =
        BrokerReconciler::new(Arc::clone(&brokers), data_plane, resolver, BROKER_INGRESS);
    (brokers, reconciler)
}

/// Checks a Broker status write: Ready, and the address upstream's
/// `{ingress}/{namespace}/{name}` form gives.
fn assert_ready_broker(body: &Value) {
    let status = &body["status"];
    for type_ in [
        "Ready",
        "IngressReady",
        "TriggerChannelReady",
        "FilterReady",
        "Addressable",
        "DeadLetterSinkResolved",
    ] {
        assert_eq!(
            condition(status, type_)["status"],
            "True",
            "{type_}: {status}"
        );
    }
    assert_eq!(
        condition(status, "DeadLetterSinkResolved")["reason"],
        "DeadLetterSinkNotConfigured"
    );
    let url = format!("{BROKER_INGRESS}/default/default");
    assert_eq!(status["address"], json!({ "name": "http", "url": url }));
    assert_eq!(status["addresses"], json!([{ "name": "http", "url": url }]));
    assert_eq!(status["observedGeneration"], 1);
}

#[tokio::test]
async fn a_new_broker_gets_its_finalizer_then_a_ready_status_with_its_address() {
    let (client, mut server) = mock();
    let (_, reconciler) = broker_reconciler(&client);

    // First pass: only the finalizer, by an update of the whole object.
    let script = async {
        let call = expect(&mut server, Method::PUT, &format!("{BROKERS}/default"), &[]).await;
        assert_eq!(
            call.body["metadata"]["finalizers"],
            json!([BROKER_FINALIZER])
        );
        assert_eq!(call.body["metadata"]["resourceVersion"], "1");
        assert!(call.body.get("status").is_none_or(Value::is_null));
        server.answer(call.send, 200, &stored(call.body, "2"));
    };
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(broker(broker_json("1", false))),
    )
    .await
    .expect("the finalizer is added");
    assert_eq!(action, Action::await_change());

    // Second pass (the watch brings the finalized version): the status.
    let script = async {
        let call = expect(
            &mut server,
            Method::PUT,
            &format!("{BROKERS}/default/status"),
            &[],
        )
        .await;
        assert_eq!(call.body["metadata"]["resourceVersion"], "2");
        assert_ready_broker(&call.body);
        server.answer(call.send, 200, &stored(call.body, "3"));
    };
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(broker(broker_json("2", true))),
    )
    .await
    .expect("the status is written");
    assert_eq!(action, Action::await_change());
    server.expect_no_request().await;
}

#[tokio::test]
async fn a_conflict_on_the_broker_status_fails_the_reconcile() {
    let (client, mut server) = mock();
    let (_, reconciler) = broker_reconciler(&client);
    let script = async {
        let call = expect(
            &mut server,
            Method::PUT,
            &format!("{BROKERS}/default/status"),
            &[],
        )
        .await;
        assert_eq!(call.body["metadata"]["resourceVersion"], "2");
        server.answer(
            call.send,
            409,
            &conflict("brokers.eventing.knative.dev", "default"),
        );
    };
    let err = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(broker(broker_json("2", true))),
    )
    .await
    .expect_err("a conflict");
    assert!(
        matches!(&err, ReconcileError::Store(StoreError::Conflict { kind, key, .. }) if kind == "Broker" && key == "default/default"),
        "{err:?}"
    );
    server.expect_no_request().await;
}

#[tokio::test]
async fn a_status_conflict_is_retried_by_the_controller_with_the_watched_version() {
    let (client, mut server) = mock();
    let (brokers, reconciler) = broker_reconciler(&client);
    let controller = Controller::new(brokers, Arc::new(reconciler));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(controller.run(async {
        let _ = stopped.await;
    }));

    // The controller watches all namespaces: a list, then a watch from
    // the list's version.
    let all_brokers = "/apis/eventing.knative.dev/v1/brokers";
    let script = async {
        let list = expect(&mut server, Method::GET, all_brokers, &[("limit", "500")]).await;
        server.answer(
            list.send,
            200,
            &json!({
                "apiVersion": "eventing.knative.dev/v1", "kind": "BrokerList",
                "metadata": { "resourceVersion": "2" },
                "items": [ broker_json("2", true) ],
            }),
        );
        let mut watch = None;
        let mut held = Vec::new();
        let (mut watched, mut conflicts) = (false, 0);
        loop {
            let call = take(&mut server).await;
            if call.path == all_brokers && call.has_query("watch", "true") {
                // The first watch starts at the list's version (later ones,
                // after the stream ended, at the last one seen: held).
                if watched {
                    held.push(call.send);
                } else {
                    assert!(call.has_query("resourceVersion", "2"), "{:?}", call.query);
                    watched = true;
                    watch = Some(call.send);
                }
            } else {
                assert_eq!(
                    (&call.method, call.path.as_str()),
                    (&Method::PUT, format!("{BROKERS}/default/status").as_str())
                );
                let version = call.body["metadata"]["resourceVersion"].clone();
                if version != "2" {
                    assert_eq!(version, "3", "the retry writes the watched version");
                    assert_eq!(call.body["metadata"]["labels"], json!({ "team": "a" }));
                    assert_ready_broker(&call.body);
                    server.answer(call.send, 200, &stored(call.body, "4"));
                    break;
                }
                // Someone else changed the broker meanwhile.
                server.answer(
                    call.send,
                    409,
                    &conflict("brokers.eventing.knative.dev", "default"),
                );
                conflicts += 1;
            }
            // After a conflict, the watch brings the newer version.
            if conflicts > 0
                && let Some(send) = watch.take()
            {
                let mut newer = broker_json("3", true);
                newer["metadata"]["labels"] = json!({ "team": "a" });
                let line = format!("{}\n", json!({ "type": "MODIFIED", "object": newer }));
                server.respond(send, 200, line.into_bytes());
            }
        }
        assert!(conflicts >= 1);
    };
    tokio::time::timeout(Duration::from_secs(5), script)
        .await
        .expect("the retry succeeds within 5 s");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(2), running)
        .await
        .expect("the controller stops")
        .expect("the controller task");
}

#[tokio::test]
async fn deleting_a_broker_removes_exactly_its_finalizer() {
    let (client, mut server) = mock();
    let (_, reconciler) = broker_reconciler(&client);
    let mut deleted = broker_json("7", true);
    deleted["metadata"]["finalizers"] = json!(["someone.else/keep", BROKER_FINALIZER]);
    deleted["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let script = async {
        let call = expect(&mut server, Method::PUT, &format!("{BROKERS}/default"), &[]).await;
        assert_eq!(
            call.body["metadata"]["finalizers"],
            json!(["someone.else/keep"])
        );
        assert_eq!(call.body["metadata"]["resourceVersion"], "7");
        assert_eq!(
            call.body["metadata"]["deletionTimestamp"],
            "2026-01-01T00:00:00Z"
        );
        server.answer(call.send, 200, &stored(call.body, "8"));
    };
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(broker(deleted)),
    )
    .await
    .expect("the finalizer is removed");
    assert_eq!(action, Action::await_change());
    server.expect_no_request().await;
}

// ---------------------------------------------------------------------------
// Serving: ServiceReconciler
// ---------------------------------------------------------------------------

const SERVING: &str = "/apis/serving.knative.dev/v1/namespaces/default";

fn service_json() -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": "hello",
            "namespace": "default",
            "uid": "uid-hello",
            "generation": 1,
            "resourceVersion": "10",
            "labels": { "team": "a" },
        },
        "spec": {
            "template": { "spec": { "containers": [ { "image": "knative.dev/sample-app:v2" } ] } },
        },
    })
}

fn service_reconciler(client: &kube::Client) -> ServiceReconciler {
    ServiceReconciler::new(
        Arc::new(KubeObjects::<Service>::new(client.clone())),
        Arc::new(KubeObjects::<Configuration>::new(client.clone())),
        Arc::new(KubeObjects::<Route>::new(client.clone())),
        Arc::new(KubeObjects::<Revision>::new(client.clone())),
        Arc::new(ServingConfig::default()),
    )
}

fn service() -> Arc<Service> {
    Arc::new(serde_json::from_value(service_json()).expect("a Service"))
}

/// The metadata upstream gives a Service's Configuration and Route: the
/// Service's name and namespace, its labels plus `serving.knative.dev/service`
/// and `serving.knative.dev/serviceUID`, and a controller reference.
fn assert_child_of_hello(meta: &Value) {
    assert_eq!(meta["name"], "hello");
    assert_eq!(meta["namespace"], "default");
    assert_eq!(
        meta["labels"],
        json!({
            "team": "a",
            "serving.knative.dev/service": "hello",
            "serving.knative.dev/serviceUID": "uid-hello",
        })
    );
    assert_eq!(
        meta["ownerReferences"],
        json!([{
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "name": "hello",
            "uid": "uid-hello",
            "controller": true,
            "blockOwnerDeletion": true,
        }])
    );
}

/// A created object as the API server returns it (uid, version, generation).
fn created(mut body: Value, uid: &str) -> Value {
    body["metadata"]["uid"] = json!(uid);
    body["metadata"]["generation"] = json!(1);
    stored(body, "11")
}

#[tokio::test]
async fn a_new_service_creates_its_configuration_and_route_then_writes_its_status() {
    let (client, mut server) = mock();
    let reconciler = service_reconciler(&client);
    let script = async {
        let call = expect(
            &mut server,
            Method::GET,
            &format!("{SERVING}/configurations/hello"),
            &[],
        )
        .await;
        server.answer(
            call.send,
            404,
            &not_found("configurations.serving.knative.dev", "hello"),
        );

        let call = expect(
            &mut server,
            Method::POST,
            &format!("{SERVING}/configurations"),
            &[],
        )
        .await;
        assert_child_of_hello(&call.body["metadata"]);
        assert!(
            call.body["metadata"]
                .get("resourceVersion")
                .is_none_or(Value::is_null)
        );
        let container = &call.body["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["image"], "knative.dev/sample-app:v2");
        server.answer(call.send, 201, &created(call.body, "uid-cfg"));

        let call = expect(
            &mut server,
            Method::GET,
            &format!("{SERVING}/routes/hello"),
            &[],
        )
        .await;
        server.answer(
            call.send,
            404,
            &not_found("routes.serving.knative.dev", "hello"),
        );

        let call = expect(&mut server, Method::POST, &format!("{SERVING}/routes"), &[]).await;
        assert_child_of_hello(&call.body["metadata"]);
        assert_eq!(
            call.body["spec"]["traffic"],
            json!([{ "configurationName": "hello", "latestRevision": true, "percent": 100 }])
        );
        server.answer(call.send, 201, &created(call.body, "uid-route"));

        let call = expect(
            &mut server,
            Method::PUT,
            &format!("{SERVING}/services/hello/status"),
            &[],
        )
        .await;
        assert_eq!(call.body["metadata"]["resourceVersion"], "10");
        let status = &call.body["status"];
        assert_eq!(status["observedGeneration"], 1);
        for type_ in ["ConfigurationsReady", "RoutesReady"] {
            assert_eq!(condition(status, type_)["status"], "Unknown", "{type_}");
            assert_eq!(condition(status, type_)["reason"], "OutOfDate", "{type_}");
        }
        assert_eq!(condition(status, "Ready")["status"], "Unknown");
        server.answer(call.send, 200, &stored(call.body, "12"));
    };
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(service()),
    )
    .await
    .expect("reconciled");
    assert_eq!(action, Action::await_change());
    server.expect_no_request().await;
}

/// An existing child of hello, as the API server has it.
fn existing_child(kind: &str, spec: Value, resource_version: &str) -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": kind,
        "metadata": {
            "name": "hello",
            "namespace": "default",
            "uid": format!("uid-{}", kind.to_lowercase()),
            "generation": 1,
            "resourceVersion": resource_version,
            "labels": {
                "team": "a",
                "serving.knative.dev/service": "hello",
                "serving.knative.dev/serviceUID": "uid-hello",
            },
            "ownerReferences": [{
                "apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "hello",
                "uid": "uid-hello", "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": spec,
    })
}

#[tokio::test]
async fn a_changed_service_updates_its_configuration_and_a_conflict_fails_the_reconcile() {
    let (client, mut server) = mock();
    let reconciler = service_reconciler(&client);
    let old_spec = json!({ "template": { "spec": { "containers": [ { "image": "knative.dev/sample-app:v1" } ] } } });

    // The update: a PUT of the Configuration at the version read.
    let script = async {
        let call = expect(
            &mut server,
            Method::GET,
            &format!("{SERVING}/configurations/hello"),
            &[],
        )
        .await;
        server.answer(
            call.send,
            200,
            &existing_child("Configuration", old_spec.clone(), "4"),
        );

        let call = expect(
            &mut server,
            Method::PUT,
            &format!("{SERVING}/configurations/hello"),
            &[],
        )
        .await;
        assert_child_of_hello(&call.body["metadata"]);
        assert_eq!(call.body["metadata"]["resourceVersion"], "4");
        assert_eq!(call.body["metadata"]["uid"], "uid-configuration");
        assert_eq!(
            call.body["spec"]["template"]["spec"]["containers"][0]["image"],
            "knative.dev/sample-app:v2"
        );
        // A conflict: someone else wrote the Configuration since.
        server.answer(
            call.send,
            409,
            &conflict("configurations.serving.knative.dev", "hello"),
        );
    };
    let err = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(service()),
    )
    .await
    .expect_err("a conflict");
    assert!(
        matches!(&err, knative_serving::reconciler::ReconcileError::Store(StoreError::Conflict { kind, .. }) if kind == "Configuration"),
        "{err:?}"
    );
    server.expect_no_request().await;

    // The retry reads the Configuration again (GET) and updates that version.
    let script = async {
        let call = expect(
            &mut server,
            Method::GET,
            &format!("{SERVING}/configurations/hello"),
            &[],
        )
        .await;
        server.answer(
            call.send,
            200,
            &existing_child("Configuration", old_spec.clone(), "5"),
        );
        let call = expect(
            &mut server,
            Method::PUT,
            &format!("{SERVING}/configurations/hello"),
            &[],
        )
        .await;
        assert_eq!(call.body["metadata"]["resourceVersion"], "5");
        server.answer(call.send, 200, &stored(call.body, "6"));

        let route_spec = json!({ "traffic": [ { "configurationName": "hello", "latestRevision": true, "percent": 100 } ] });
        let call = expect(
            &mut server,
            Method::GET,
            &format!("{SERVING}/routes/hello"),
            &[],
        )
        .await;
        server.answer(call.send, 200, &existing_child("Route", route_spec, "8"));
        // The Route is as wanted: no write.
        let call = expect(
            &mut server,
            Method::PUT,
            &format!("{SERVING}/services/hello/status"),
            &[],
        )
        .await;
        assert_eq!(call.body["metadata"]["resourceVersion"], "10");
        server.answer(call.send, 200, &stored(call.body, "12"));
    };
    scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(service()),
    )
    .await
    .expect("reconciled");
    server.expect_no_request().await;
}

#[tokio::test]
async fn a_deleted_service_makes_no_call_its_children_go_with_their_owner_reference() {
    let (client, mut server) = mock();
    let reconciler = service_reconciler(&client);
    let mut deleted = service_json();
    deleted["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let obj = Arc::new(serde_json::from_value::<Service>(deleted).expect("a Service"));
    let action = reconciler.reconcile(obj).await.expect("reconciled");
    assert_eq!(action, Action::await_change());
    server.expect_no_request().await;
}

// ---------------------------------------------------------------------------
// Build: TaskRunReconciler with a mock StepExecutor
// ---------------------------------------------------------------------------

const TEKTON: &str = "/apis/tekton.dev/v1/namespaces/ci";

fn task_run_json(resource_version: &str, status: Value) -> Value {
    json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "TaskRun",
        "metadata": {
            "name": "build-1",
            "namespace": "ci",
            "uid": "uid-tr",
            "generation": 1,
            "resourceVersion": resource_version,
        },
        "spec": { "taskRef": { "name": "build" } },
        "status": status,
    })
}

fn task_json() -> Value {
    json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "Task",
        "metadata": { "name": "build", "namespace": "ci", "uid": "uid-task", "resourceVersion": "3" },
        "spec": { "steps": [ { "name": "compile", "image": "alpine", "script": "echo ok" } ] },
    })
}

fn attempt(phase: ExecutionPhase) -> ExecutionStatus {
    let done = phase.is_done();
    ExecutionStatus {
        pod_name: "build-1-pod".into(),
        phase,
        steps: vec![StepOutcome {
            name: "compile".into(),
            container: "step-compile".into(),
            phase: if done {
                StepPhase::Terminated
            } else {
                StepPhase::Running
            },
            exit_code: done.then_some(0),
            termination_reason: done.then(|| "Completed".to_owned()),
            ..StepOutcome::default()
        }],
        ..ExecutionStatus::default()
    }
}

#[tokio::test]
async fn a_task_run_reads_its_task_starts_and_reports_success_through_status_writes() {
    let (client, mut server) = mock();
    let (status_tx, status_rx) = tokio::sync::watch::channel(attempt(ExecutionPhase::Running));
    let (cancel, _signal) = CancelHandle::new();
    let execution = Execution {
        status: status_rx,
        cancel,
    };
    let key = RunKey::new("ci", "build-1", 0);
    let mut executor = MockStepExecutor::new();
    let started = Arc::new(std::sync::Mutex::new(None::<Execution>));
    {
        let started = Arc::clone(&started);
        executor
            .expect_execution()
            .returning(move |_| started.lock().ok().and_then(|s| s.clone()));
    }
    executor
        .expect_paths()
        .returning(|_, _, _| Ok(RunPaths::default()));
    {
        let started = Arc::clone(&started);
        let key = key.clone();
        executor
            .expect_start()
            .withf(move |r| r.key == key && r.task_spec.steps.len() == 1)
            .times(1)
            .return_once(move |_| {
                if let Ok(mut s) = started.lock() {
                    *s = Some(execution.clone());
                }
                Ok(execution)
            });
    }
    executor
        .expect_forget()
        .withf(move |k| *k == RunKey::new("ci", "build-1", 0))
        .times(1)
        .return_const(());
    let reconciler = TaskRunReconciler::new(
        Arc::new(KubeObjects::<TaskRun>::new(client.clone())),
        Arc::new(KubeObjects::<Task>::new(client.clone())),
        Arc::new(executor),
    );

    // Start: the Task by name, then the Running status.
    let mut written = Value::Null;
    let script = async {
        let call = expect(
            &mut server,
            Method::GET,
            &format!("{TEKTON}/tasks/build"),
            &[],
        )
        .await;
        server.answer(call.send, 200, &task_json());
        let call = expect(
            &mut server,
            Method::PUT,
            &format!("{TEKTON}/taskruns/build-1/status"),
            &[],
        )
        .await;
        assert_eq!(call.body["metadata"]["resourceVersion"], "1");
        let status = &call.body["status"];
        let succeeded = condition(status, "Succeeded");
        assert_eq!(succeeded["status"], "Unknown");
        assert_eq!(succeeded["reason"], "Running");
        assert_eq!(status["podName"], "build-1-pod");
        assert!(status["startTime"].is_string());
        assert_eq!(status["taskSpec"]["steps"][0]["name"], "compile");
        assert!(status["steps"][0]["running"].is_object(), "{status}");
        written = stored(call.body.clone(), "2");
        server.answer(call.send, 200, &written);
    };
    let tr: TaskRun = serde_json::from_value(task_run_json("1", Value::Null)).expect("a TaskRun");
    scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(Arc::new(tr)),
    )
    .await
    .expect("started");
    server.expect_no_request().await;

    // The attempt succeeds: the Succeeded status.
    status_tx.send_replace(attempt(ExecutionPhase::Succeeded));
    let script = async {
        let call = expect(
            &mut server,
            Method::PUT,
            &format!("{TEKTON}/taskruns/build-1/status"),
            &[],
        )
        .await;
        assert_eq!(call.body["metadata"]["resourceVersion"], "2");
        let status = &call.body["status"];
        let succeeded = condition(status, "Succeeded");
        assert_eq!(succeeded["status"], "True");
        assert_eq!(succeeded["reason"], "Succeeded");
        assert_eq!(succeeded["message"], "All Steps have completed executing");
        assert!(status["completionTime"].is_string());
        assert_eq!(status["steps"][0]["terminated"]["exitCode"], 0);
        assert_eq!(status["steps"][0]["terminated"]["reason"], "Completed");
        server.answer(call.send, 200, &stored(call.body, "3"));
    };
    let tr: TaskRun = serde_json::from_value(written).expect("the written TaskRun");
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(Arc::new(tr)),
    )
    .await
    .expect("finished");
    assert_eq!(action, Action::await_change());
    server.expect_no_request().await;
}

// ---------------------------------------------------------------------------
// Serving: ConfigurationReconciler
// ---------------------------------------------------------------------------

fn configuration_json() -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Configuration",
        "metadata": {
            "name": "hello",
            "namespace": "default",
            "uid": "uid-cfg",
            "generation": 1,
            "resourceVersion": "20",
            "labels": {
                "team": "a",
                "serving.knative.dev/service": "hello",
                "serving.knative.dev/serviceUID": "uid-hello",
            },
        },
        "spec": {
            "template": {
                "metadata": {
                    "labels": { "app": "hello" },
                    "annotations": { "autoscaling.knative.dev/min-scale": "1" },
                },
                "spec": { "containers": [ { "image": "knative.dev/sample-app:v2" } ] },
            },
        },
    })
}

fn configuration() -> Arc<Configuration> {
    Arc::new(serde_json::from_value(configuration_json()).expect("a Configuration"))
}

fn configuration_reconciler(client: &kube::Client) -> ConfigurationReconciler {
    ConfigurationReconciler::new(
        Arc::new(KubeObjects::<Configuration>::new(client.clone())),
        Arc::new(KubeObjects::<Revision>::new(client.clone())),
        Arc::new(ServingConfig::default()),
    )
}

/// A controller reference to `kind` `name` (`uid`), as `kmeta.NewControllerRef` makes.
fn controller_ref(api_version: &str, kind: &str, name: &str, uid: &str) -> Value {
    json!([{
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": true,
        "blockOwnerDeletion": true,
    }])
}

#[tokio::test]
async fn a_new_configuration_creates_its_first_revision_then_writes_its_status() {
    let (client, mut server) = mock();
    let reconciler = configuration_reconciler(&client);
    let script = async {
        // The revision of generation 1, by its upstream name.
        let call = expect(
            &mut server,
            Method::GET,
            &format!("{SERVING}/revisions/hello-00001"),
            &[],
        )
        .await;
        server.answer(
            call.send,
            404,
            &not_found("revisions.serving.knative.dev", "hello-00001"),
        );

        let call = expect(
            &mut server,
            Method::POST,
            &format!("{SERVING}/revisions"),
            &[],
        )
        .await;
        let meta = &call.body["metadata"];
        assert_eq!(call.body["kind"], "Revision");
        assert_eq!(meta["name"], "hello-00001");
        assert_eq!(meta["namespace"], "default");
        assert!(meta.get("resourceVersion").is_none_or(Value::is_null));
        assert_eq!(
            meta["labels"],
            json!({
                "app": "hello",
                "serving.knative.dev/configuration": "hello",
                "serving.knative.dev/configurationGeneration": "1",
                "serving.knative.dev/configurationUID": "uid-cfg",
                "serving.knative.dev/service": "hello",
                "serving.knative.dev/serviceUID": "uid-hello",
                "serving.knative.dev/routingState": "pending",
            })
        );
        assert_eq!(
            meta["annotations"]["autoscaling.knative.dev/min-scale"],
            "1"
        );
        assert!(
            meta["annotations"]["serving.knative.dev/routingStateModified"].is_string(),
            "{meta}"
        );
        assert_eq!(
            meta["ownerReferences"],
            controller_ref(
                "serving.knative.dev/v1",
                "Configuration",
                "hello",
                "uid-cfg"
            )
        );
        assert_eq!(
            call.body["spec"]["containers"][0]["image"],
            "knative.dev/sample-app:v2"
        );
        let revision = created(call.body, "uid-rev");
        server.answer(call.send, 201, &revision);

        // Its revisions, by the configuration label.
        let call = expect(
            &mut server,
            Method::GET,
            &format!("{SERVING}/revisions"),
            &[("labelSelector", "serving.knative.dev/configuration=hello")],
        )
        .await;
        server.answer(
            call.send,
            200,
            &json!({
                "apiVersion": "serving.knative.dev/v1", "kind": "RevisionList",
                "metadata": { "resourceVersion": "11" },
                "items": [ revision ],
            }),
        );

        let call = expect(
            &mut server,
            Method::PUT,
            &format!("{SERVING}/configurations/hello/status"),
            &[],
        )
        .await;
        assert_eq!(call.body["metadata"]["resourceVersion"], "20");
        let status = &call.body["status"];
        assert_eq!(status["observedGeneration"], 1);
        assert_eq!(status["latestCreatedRevisionName"], "hello-00001");
        assert!(
            status
                .get("latestReadyRevisionName")
                .is_none_or(Value::is_null),
            "{status}"
        );
        assert_eq!(condition(status, "Ready")["status"], "Unknown");
        server.answer(call.send, 200, &stored(call.body, "21"));
    };
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(configuration()),
    )
    .await
    .expect("reconciled");
    assert_eq!(action, Action::await_change());
    server.expect_no_request().await;
}

#[tokio::test]
async fn a_revision_name_taken_by_another_configuration_is_read_back_and_fails_the_configuration() {
    let (client, mut server) = mock();
    let reconciler = configuration_reconciler(&client);
    let script = async {
        let call = expect(
            &mut server,
            Method::GET,
            &format!("{SERVING}/revisions/hello-00001"),
            &[],
        )
        .await;
        server.answer(
            call.send,
            404,
            &not_found("revisions.serving.knative.dev", "hello-00001"),
        );
        // Someone created it meanwhile: 409 AlreadyExists ...
        let call = expect(
            &mut server,
            Method::POST,
            &format!("{SERVING}/revisions"),
            &[],
        )
        .await;
        assert_eq!(call.body["metadata"]["name"], "hello-00001");
        server.answer(
            call.send,
            409,
            &api_status(
                409,
                "AlreadyExists",
                "revisions.serving.knative.dev \"hello-00001\" already exists",
                json!({ "name": "hello-00001", "group": "serving.knative.dev", "kind": "revisions" }),
            ),
        );
        // ... so it is read back, and belongs to another Configuration.
        let call = expect(
            &mut server,
            Method::GET,
            &format!("{SERVING}/revisions/hello-00001"),
            &[],
        )
        .await;
        server.answer(
            call.send,
            200,
            &json!({
                "apiVersion": "serving.knative.dev/v1",
                "kind": "Revision",
                "metadata": {
                    "name": "hello-00001", "namespace": "default", "uid": "uid-foreign",
                    "resourceVersion": "9",
                    "labels": { "serving.knative.dev/configurationGeneration": "1" },
                    "ownerReferences": controller_ref("serving.knative.dev/v1", "Configuration", "hello", "uid-other"),
                },
                "spec": { "containers": [ { "image": "knative.dev/other:v1" } ] },
            }),
        );
        let call = expect(
            &mut server,
            Method::PUT,
            &format!("{SERVING}/configurations/hello/status"),
            &[],
        )
        .await;
        let status = &call.body["status"];
        assert!(
            status
                .get("latestCreatedRevisionName")
                .is_none_or(Value::is_null),
            "{status}"
        );
        let ready = condition(status, "Ready");
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "RevisionFailed");
        assert!(
            ready["message"]
                .as_str()
                .is_some_and(|m| m.contains("belongs to another Configuration")),
            "{ready}"
        );
        server.answer(call.send, 200, &stored(call.body, "21"));
    };
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(configuration()),
    )
    .await
    .expect("reconciled");
    assert!(action.requeue_delay().is_some(), "{action:?}");
    server.expect_no_request().await;
}

// ---------------------------------------------------------------------------
// Serving: RouteReconciler
// ---------------------------------------------------------------------------

const ROUTE_FINALIZER: &str = "routes.serving.knative.dev";

fn route_json(resource_version: &str, finalizers: Value) -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Route",
        "metadata": {
            "name": "hello",
            "namespace": "default",
            "uid": "uid-route",
            "generation": 1,
            "resourceVersion": resource_version,
            "finalizers": finalizers,
        },
        "spec": {
            "traffic": [ { "configurationName": "hello", "latestRevision": true, "percent": 100 } ],
        },
    })
}

fn route(value: Value) -> Arc<Route> {
    Arc::new(serde_json::from_value(value).expect("a Route"))
}

fn route_reconciler(client: &kube::Client) -> (RouteReconciler, RoutingTable) {
    let routing = RoutingTable::new();
    let reconciler = RouteReconciler::new(
        Arc::new(KubeObjects::<Route>::new(client.clone())),
        Arc::new(KubeObjects::<Configuration>::new(client.clone())),
        Arc::new(KubeObjects::<Revision>::new(client.clone())),
        routing.clone(),
        RouteIndex::default(),
        Arc::new(ServingConfig::default()),
    );
    (reconciler, routing)
}

/// A ready revision `name` of configuration `configuration`, with these
/// routing state label and routes annotation.
fn ready_revision(name: &str, configuration: &str, state: &str, routes: Option<&str>) -> Value {
    let mut annotations = json!({});
    if let Some(routes) = routes {
        annotations["serving.knative.dev/routes"] = json!(routes);
    }
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Revision",
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": format!("uid-{name}"),
            "resourceVersion": "15",
            "labels": {
                "serving.knative.dev/configuration": configuration,
                "serving.knative.dev/routingState": state,
            },
            "annotations": annotations,
        },
        "spec": { "containers": [ { "image": "knative.dev/sample-app:v2" } ] },
        "status": { "conditions": [ { "type": "Ready", "status": "True" } ] },
    })
}

fn list(kind: &str, items: Value) -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": format!("{kind}List"),
        "metadata": { "resourceVersion": "50" },
        "items": items,
    })
}

#[tokio::test]
async fn a_new_route_gets_its_finalizer_then_activates_its_revision_and_writes_traffic_and_url() {
    let (client, mut server) = mock();
    let (reconciler, routing) = route_reconciler(&client);

    // First pass: the finalizer, by an update of the whole Route.
    let script = async {
        let call = expect(
            &mut server,
            Method::PUT,
            &format!("{SERVING}/routes/hello"),
            &[],
        )
        .await;
        assert_eq!(
            call.body["metadata"]["finalizers"],
            json!([ROUTE_FINALIZER])
        );
        assert_eq!(call.body["metadata"]["resourceVersion"], "30");
        assert!(call.body.get("status").is_none_or(Value::is_null));
        server.answer(call.send, 200, &stored(call.body, "31"));
    };
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(route(route_json("30", json!([])))),
    )
    .await
    .expect("the finalizer is added");
    assert_eq!(action, Action::await_change());
    server.expect_no_request().await;

    // Second pass: configurations and revisions, the served revision made
    // active, then the status.
    let script = async {
        let call = expect(
            &mut server,
            Method::GET,
            &format!("{SERVING}/configurations"),
            &[],
        )
        .await;
        let spec = json!({ "template": { "spec": { "containers": [ { "image": "knative.dev/sample-app:v2" } ] } } });
        let mut hello = existing_child("Configuration", spec, "12");
        hello["status"] = json!({
            "latestCreatedRevisionName": "hello-00001",
            "latestReadyRevisionName": "hello-00001",
            "conditions": [ { "type": "Ready", "status": "True" } ],
        });
        server.answer(call.send, 200, &list("Configuration", json!([hello])));

        let call = expect(
            &mut server,
            Method::GET,
            &format!("{SERVING}/revisions"),
            &[],
        )
        .await;
        server.answer(
            call.send,
            200,
            &list(
                "Revision",
                json!([
                    ready_revision("hello-00001", "hello", "pending", None),
                    ready_revision("other-00001", "other", "active", Some("other")),
                ]),
            ),
        );

        // Only the served revision, by a merge patch of its metadata.
        let call = expect(
            &mut server,
            Method::PATCH,
            &format!("{SERVING}/revisions/hello-00001"),
            &[],
        )
        .await;
        assert_eq!(
            call.content_type.as_deref(),
            Some("application/merge-patch+json")
        );
        let meta = &call.body["metadata"];
        assert_eq!(meta["labels"]["serving.knative.dev/routingState"], "active");
        assert_eq!(meta["annotations"]["serving.knative.dev/routes"], "hello");
        assert!(meta["annotations"]["serving.knative.dev/routingStateModified"].is_string());
        assert!(call.body.get("status").is_none_or(Value::is_null));
        let mut patched = ready_revision("hello-00001", "hello", "active", Some("hello"));
        patched["metadata"]["resourceVersion"] = json!("16");
        server.answer(call.send, 200, &patched);

        let call = expect(
            &mut server,
            Method::PUT,
            &format!("{SERVING}/routes/hello/status"),
            &[],
        )
        .await;
        assert_eq!(call.body["metadata"]["resourceVersion"], "31");
        let status = &call.body["status"];
        assert_eq!(status["observedGeneration"], 1);
        assert_eq!(status["url"], "http://hello.default.svc.cluster.local");
        assert_eq!(
            status["address"]["url"],
            "http://hello.default.svc.cluster.local"
        );
        assert_eq!(
            status["traffic"],
            json!([{ "revisionName": "hello-00001", "latestRevision": true, "percent": 100 }])
        );
        for type_ in [
            "Ready",
            "AllTrafficAssigned",
            "IngressReady",
            "CertificateProvisioned",
        ] {
            assert_eq!(
                condition(status, type_)["status"],
                "True",
                "{type_}: {status}"
            );
        }
        assert_eq!(
            condition(status, "CertificateProvisioned")["reason"],
            "TLSNotEnabled"
        );
        server.answer(call.send, 200, &stored(call.body, "32"));
    };
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(route(route_json("31", json!([ROUTE_FINALIZER])))),
    )
    .await
    .expect("reconciled");
    assert_eq!(action, Action::await_change());
    server.expect_no_request().await;

    // The data plane got the Route's table.
    let tables = routing.snapshot();
    let table = tables
        .get(&ObjectKey::namespaced("default", "hello"))
        .expect("the route's table");
    assert_eq!(table.host, "hello.default.svc.cluster.local");
    let targets: Vec<(&str, i64)> = table
        .targets
        .iter()
        .map(|w| (w.revision.as_str(), w.percent))
        .collect();
    assert_eq!(targets, vec![("hello-00001", 100)]);
}

#[tokio::test]
async fn deleting_a_route_puts_its_revisions_in_reserve_then_removes_exactly_its_finalizer() {
    let (client, mut server) = mock();
    let (reconciler, routing) = route_reconciler(&client);
    let mut deleted = route_json("40", json!(["someone.else/keep", ROUTE_FINALIZER]));
    deleted["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let script = async {
        let call = expect(
            &mut server,
            Method::GET,
            &format!("{SERVING}/revisions"),
            &[],
        )
        .await;
        server.answer(
            call.send,
            200,
            &list(
                "Revision",
                json!([
                    ready_revision("hello-00001", "hello", "active", Some("hello")),
                    ready_revision("other-00001", "other", "active", Some("other")),
                ]),
            ),
        );
        // The revision only this route served goes to reserve.
        let call = expect(
            &mut server,
            Method::PATCH,
            &format!("{SERVING}/revisions/hello-00001"),
            &[],
        )
        .await;
        let meta = &call.body["metadata"];
        assert_eq!(
            meta["labels"]["serving.knative.dev/routingState"],
            "reserve"
        );
        assert_eq!(
            meta["annotations"]["serving.knative.dev/routes"],
            Value::Null
        );
        assert!(
            meta["annotations"]
                .as_object()
                .is_some_and(|a| a.contains_key("serving.knative.dev/routes")),
            "the routes annotation is removed by a null: {meta}"
        );
        assert!(meta["annotations"]["serving.knative.dev/routingStateModified"].is_string());
        server.answer(
            call.send,
            200,
            &ready_revision("hello-00001", "hello", "reserve", None),
        );

        let call = expect(
            &mut server,
            Method::PUT,
            &format!("{SERVING}/routes/hello"),
            &[],
        )
        .await;
        assert_eq!(
            call.body["metadata"]["finalizers"],
            json!(["someone.else/keep"])
        );
        assert_eq!(call.body["metadata"]["resourceVersion"], "40");
        assert_eq!(
            call.body["metadata"]["deletionTimestamp"],
            "2026-01-01T00:00:00Z"
        );
        server.answer(call.send, 200, &stored(call.body, "41"));
    };
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(route(deleted)),
    )
    .await
    .expect("finalized");
    assert_eq!(action, Action::await_change());
    server.expect_no_request().await;
    assert!(routing.snapshot().is_empty());
}

// ---------------------------------------------------------------------------
// Eventing: TriggerReconciler
// ---------------------------------------------------------------------------

const TRIGGERS: &str = "/apis/eventing.knative.dev/v1/namespaces/default/triggers";
const SINK: &str = "http://sink.default.svc.cluster.local/";

fn trigger_json(resource_version: &str, finalizers: Value) -> Value {
    json!({
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {
            "name": "t",
            "namespace": "default",
            "uid": "uid-trigger",
            "generation": 1,
            "resourceVersion": resource_version,
            "finalizers": finalizers,
        },
        "spec": {
            "broker": "default",
            "filter": { "attributes": { "type": "dev.knative.example" } },
            "subscriber": { "uri": SINK },
        },
    })
}

fn trigger(value: Value) -> Arc<Trigger> {
    Arc::new(serde_json::from_value(value).expect("a Trigger"))
}

fn trigger_reconciler(client: &kube::Client) -> TriggerReconciler {
    let brokers: Arc<dyn Objects<Broker>> = Arc::new(KubeObjects::<Broker>::new(client.clone()));
    let data_plane = Brokers::new(
        Arc::new(InMemoryLog::new()),
        IngressConfig::default(),
        DispatchConfig::default(),
    );
    let resolver = Arc::new(BrokerAddresses::new(Arc::clone(&brokers), None));
    TriggerReconciler::new(
        Arc::new(KubeObjects::<Trigger>::new(client.clone())),
        brokers,
        data_plane,
        resolver,
    )
}

#[tokio::test]
async fn a_trigger_without_its_broker_gets_its_finalizer_then_broker_ready_false_and_its_subscriber_uri()
 {
    let (client, mut server) = mock();
    let reconciler = trigger_reconciler(&client);

    let script = async {
        let call = expect(&mut server, Method::PUT, &format!("{TRIGGERS}/t"), &[]).await;
        assert_eq!(
            call.body["metadata"]["finalizers"],
            json!([TRIGGER_FINALIZER])
        );
        assert_eq!(call.body["metadata"]["resourceVersion"], "1");
        assert!(call.body.get("status").is_none_or(Value::is_null));
        server.answer(call.send, 200, &stored(call.body, "2"));
    };
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(trigger(trigger_json("1", json!([])))),
    )
    .await
    .expect("the finalizer is added");
    assert_eq!(action, Action::await_change());
    server.expect_no_request().await;

    let script = async {
        let call = expect(&mut server, Method::GET, &format!("{BROKERS}/default"), &[]).await;
        server.answer(
            call.send,
            404,
            &not_found("brokers.eventing.knative.dev", "default"),
        );
        let call = expect(
            &mut server,
            Method::PUT,
            &format!("{TRIGGERS}/t/status"),
            &[],
        )
        .await;
        assert_eq!(call.body["metadata"]["resourceVersion"], "2");
        assert_eq!(
            call.body["metadata"]["finalizers"],
            json!([TRIGGER_FINALIZER])
        );
        let status = &call.body["status"];
        assert_eq!(status["observedGeneration"], 1);
        assert_eq!(status["subscriberUri"], SINK);
        let broker_ready = condition(status, "BrokerReady");
        assert_eq!(broker_ready["status"], "False");
        assert_eq!(broker_ready["reason"], "BrokerDoesNotExist");
        assert_eq!(broker_ready["message"], "Broker \"default\" does not exist");
        for type_ in ["SubscriberResolved", "DependencyReady"] {
            assert_eq!(condition(status, type_)["status"], "True", "{type_}");
        }
        assert_eq!(
            condition(status, "DeadLetterSinkResolved")["reason"],
            "DeadLetterSinkNotConfigured"
        );
        let subscription = condition(status, "SubscriptionReady");
        assert_eq!(subscription["status"], "Unknown");
        assert_eq!(subscription["reason"], "NotSubscribed");
        assert_eq!(condition(status, "Ready")["status"], "False");
        server.answer(call.send, 200, &stored(call.body, "3"));
    };
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(trigger(trigger_json("2", json!([TRIGGER_FINALIZER])))),
    )
    .await
    .expect("the status is written");
    // The broker may appear: look again soon.
    assert_eq!(action, Action::requeue_after(Duration::from_secs(2)));
    server.expect_no_request().await;
}

#[tokio::test]
async fn deleting_a_trigger_removes_exactly_its_finalizer() {
    let (client, mut server) = mock();
    let reconciler = trigger_reconciler(&client);
    let mut deleted = trigger_json("7", json!(["someone.else/keep", TRIGGER_FINALIZER]));
    deleted["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let script = async {
        let call = expect(&mut server, Method::PUT, &format!("{TRIGGERS}/t"), &[]).await;
        assert_eq!(
            call.body["metadata"]["finalizers"],
            json!(["someone.else/keep"])
        );
        assert_eq!(call.body["metadata"]["resourceVersion"], "7");
        assert_eq!(
            call.body["metadata"]["deletionTimestamp"],
            "2026-01-01T00:00:00Z"
        );
        server.answer(call.send, 200, &stored(call.body, "8"));
    };
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(trigger(deleted)),
    )
    .await
    .expect("the finalizer is removed");
    assert_eq!(action, Action::await_change());
    server.expect_no_request().await;
}

// ---------------------------------------------------------------------------
// Eventing: InMemoryChannelReconciler
// ---------------------------------------------------------------------------

const IMCS: &str = "/apis/messaging.knative.dev/v1/namespaces/default/inmemorychannels";
const CHANNEL_INGRESS: &str = "http://imc-dispatcher.knative-eventing.svc.cluster.local";

fn imc_json(resource_version: &str, finalizers: Value) -> Value {
    json!({
        "apiVersion": "messaging.knative.dev/v1",
        "kind": "InMemoryChannel",
        "metadata": {
            "name": "ch",
            "namespace": "default",
            "uid": "uid-imc",
            "generation": 2,
            "resourceVersion": resource_version,
            "finalizers": finalizers,
        },
        "spec": {
            "subscribers": [ { "uid": "uid-sub", "generation": 1, "subscriberUri": SINK } ],
        },
    })
}

fn imc(value: Value) -> Arc<InMemoryChannel> {
    Arc::new(serde_json::from_value(value).expect("an InMemoryChannel"))
}

fn imc_reconciler(client: &kube::Client) -> InMemoryChannelReconciler {
    let brokers: Arc<dyn Objects<Broker>> = Arc::new(KubeObjects::<Broker>::new(client.clone()));
    let data_plane = Channels::new(
        Arc::new(InMemoryLog::new()),
        Limits::default(),
        DispatchConfig::default(),
    );
    InMemoryChannelReconciler::new(
        Arc::new(KubeObjects::<InMemoryChannel>::new(client.clone())),
        data_plane,
        Arc::new(BrokerAddresses::new(brokers, None)),
        CHANNEL_INGRESS,
    )
}

/// Checks an InMemoryChannel status write: programmed, addressable at
/// `{ingress}/{namespace}/{name}`, its subscriber ready.
fn assert_ready_channel(body: &Value) {
    let status = &body["status"];
    assert_eq!(status["observedGeneration"], 2);
    for type_ in [
        "Ready",
        "ServiceReady",
        "EndpointsReady",
        "ChannelServiceReady",
        "Addressable",
        "DeadLetterSinkResolved",
        "EventPoliciesReady",
        "DispatcherReady",
    ] {
        assert_eq!(
            condition(status, type_)["status"],
            "True",
            "{type_}: {status}"
        );
    }
    assert_eq!(
        condition(status, "EventPoliciesReady")["reason"],
        "OIDCDisabled"
    );
    let url = format!("{CHANNEL_INGRESS}/default/ch");
    assert_eq!(status["address"], json!({ "name": "http", "url": url }));
    assert_eq!(status["addresses"], json!([{ "name": "http", "url": url }]));
    assert_eq!(
        status["subscribers"],
        json!([{ "uid": "uid-sub", "observedGeneration": 1, "ready": "True" }])
    );
}

#[tokio::test]
async fn a_new_in_memory_channel_gets_its_finalizer_then_a_ready_status_with_its_address() {
    let (client, mut server) = mock();
    let reconciler = imc_reconciler(&client);
    let script = async {
        let call = expect(&mut server, Method::PUT, &format!("{IMCS}/ch"), &[]).await;
        assert_eq!(
            call.body["metadata"]["finalizers"],
            json!([IN_MEMORY_CHANNEL_FINALIZER])
        );
        assert_eq!(call.body["metadata"]["resourceVersion"], "1");
        server.answer(call.send, 200, &stored(call.body, "2"));
    };
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(imc(imc_json("1", json!([])))),
    )
    .await
    .expect("the finalizer is added");
    assert_eq!(action, Action::await_change());
    server.expect_no_request().await;

    let script = async {
        let call = expect(&mut server, Method::PUT, &format!("{IMCS}/ch/status"), &[]).await;
        assert_eq!(call.body["metadata"]["resourceVersion"], "2");
        assert_ready_channel(&call.body);
        server.answer(call.send, 200, &stored(call.body, "3"));
    };
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(imc(imc_json("2", json!([IN_MEMORY_CHANNEL_FINALIZER])))),
    )
    .await
    .expect("the status is written");
    assert_eq!(action, Action::await_change());
    server.expect_no_request().await;
}

#[tokio::test]
async fn a_conflict_on_the_in_memory_channel_status_requeues_and_the_retry_writes_the_newer_version()
 {
    let (client, mut server) = mock();
    let reconciler = imc_reconciler(&client);
    let script = async {
        let call = expect(&mut server, Method::PUT, &format!("{IMCS}/ch/status"), &[]).await;
        assert_eq!(call.body["metadata"]["resourceVersion"], "2");
        server.answer(
            call.send,
            409,
            &conflict("inmemorychannels.messaging.knative.dev", "ch"),
        );
    };
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(imc(imc_json("2", json!([IN_MEMORY_CHANNEL_FINALIZER])))),
    )
    .await
    .expect("a conflict is not an error");
    assert_eq!(action, Action::requeue_after(Duration::from_millis(50)));
    server.expect_no_request().await;

    // The retry reconciles the version someone else wrote meanwhile.
    let mut newer = imc_json("3", json!([IN_MEMORY_CHANNEL_FINALIZER]));
    newer["metadata"]["labels"] = json!({ "team": "a" });
    let script = async {
        let call = expect(&mut server, Method::PUT, &format!("{IMCS}/ch/status"), &[]).await;
        assert_eq!(call.body["metadata"]["resourceVersion"], "3");
        assert_eq!(call.body["metadata"]["labels"], json!({ "team": "a" }));
        assert_ready_channel(&call.body);
        server.answer(call.send, 200, &stored(call.body, "4"));
    };
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(imc(newer)),
    )
    .await
    .expect("the retry writes the status");
    assert_eq!(action, Action::await_change());
    server.expect_no_request().await;
}

// ---------------------------------------------------------------------------
// Eventing: SubscriptionReconciler
// ---------------------------------------------------------------------------

const SUBSCRIPTIONS: &str = "/apis/messaging.knative.dev/v1/namespaces/default/subscriptions";

fn subscription_json(resource_version: &str, finalizers: Value) -> Value {
    json!({
        "apiVersion": "messaging.knative.dev/v1",
        "kind": "Subscription",
        "metadata": {
            "name": "sub",
            "namespace": "default",
            "uid": "uid-sub",
            "generation": 1,
            "resourceVersion": resource_version,
            "finalizers": finalizers,
        },
        "spec": {
            "channel": { "apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "name": "ch" },
            "subscriber": { "uri": SINK },
        },
    })
}

fn subscription(value: Value) -> Arc<Subscription> {
    Arc::new(serde_json::from_value(value).expect("a Subscription"))
}

fn subscription_reconciler(client: &kube::Client) -> SubscriptionReconciler {
    let brokers: Arc<dyn Objects<Broker>> = Arc::new(KubeObjects::<Broker>::new(client.clone()));
    SubscriptionReconciler::new(
        Arc::new(KubeObjects::<Subscription>::new(client.clone())),
        Arc::new(KubeObjects::<Channel>::new(client.clone())),
        Arc::new(KubeObjects::<InMemoryChannel>::new(client.clone())),
        Arc::new(BrokerAddresses::new(brokers, None)),
    )
}

/// The channel `ch` as the API server has it, with `subscribers` in its
/// spec and nothing in its status.
fn subscribed_imc(resource_version: &str, subscribers: Value) -> Value {
    let mut channel = imc_json(resource_version, json!([IN_MEMORY_CHANNEL_FINALIZER]));
    channel["spec"]["subscribers"] = subscribers;
    channel
}

#[tokio::test]
async fn a_new_subscription_gets_its_finalizer_then_adds_itself_to_its_channel_and_writes_its_status()
 {
    let (client, mut server) = mock();
    let reconciler = subscription_reconciler(&client);
    let script = async {
        let call = expect(
            &mut server,
            Method::PUT,
            &format!("{SUBSCRIPTIONS}/sub"),
            &[],
        )
        .await;
        assert_eq!(
            call.body["metadata"]["finalizers"],
            json!([SUBSCRIPTION_FINALIZER])
        );
        assert_eq!(call.body["metadata"]["resourceVersion"], "1");
        assert!(call.body.get("status").is_none_or(Value::is_null));
        server.answer(call.send, 200, &stored(call.body, "2"));
    };
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(subscription(subscription_json("1", json!([])))),
    )
    .await
    .expect("the finalizer is added");
    assert_eq!(action, Action::await_change());
    server.expect_no_request().await;

    let script = async {
        let call = expect(&mut server, Method::GET, &format!("{IMCS}/ch"), &[]).await;
        let other = json!({ "name": "other", "uid": "uid-other", "generation": 3, "subscriberUri": "http://other/" });
        server.answer(call.send, 200, &subscribed_imc("5", json!([other])));

        // The subscription is appended to the channel's spec.subscribers,
        // by an update of the whole channel at the version read.
        let call = expect(&mut server, Method::PUT, &format!("{IMCS}/ch"), &[]).await;
        assert_eq!(call.body["metadata"]["resourceVersion"], "5");
        assert_eq!(
            call.body["spec"]["subscribers"],
            json!([
                other,
                { "name": "sub", "uid": "uid-sub", "generation": 1, "subscriberUri": SINK },
            ])
        );
        // The channel then reports the subscriber ready.
        let mut channel = stored(call.body, "6");
        channel["status"] = json!({
            "subscribers": [ { "uid": "uid-sub", "observedGeneration": 1, "ready": "True" } ],
        });
        server.answer(call.send, 200, &channel);

        let call = expect(
            &mut server,
            Method::PUT,
            &format!("{SUBSCRIPTIONS}/sub/status"),
            &[],
        )
        .await;
        assert_eq!(call.body["metadata"]["resourceVersion"], "2");
        let status = &call.body["status"];
        assert_eq!(status["observedGeneration"], 1);
        assert_eq!(
            status["physicalSubscription"],
            json!({ "subscriberUri": SINK })
        );
        for type_ in [
            "Ready",
            "ReferencesResolved",
            "AddedToChannel",
            "ChannelReady",
            "OIDCIdentityCreated",
        ] {
            assert_eq!(
                condition(status, type_)["status"],
                "True",
                "{type_}: {status}"
            );
        }
        server.answer(call.send, 200, &stored(call.body, "3"));
    };
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(subscription(subscription_json(
            "2",
            json!([SUBSCRIPTION_FINALIZER]),
        ))),
    )
    .await
    .expect("the status is written");
    assert_eq!(action, Action::await_change());
    server.expect_no_request().await;
}

#[tokio::test]
async fn deleting_a_subscription_takes_it_out_of_its_channel_then_removes_exactly_its_finalizer() {
    let (client, mut server) = mock();
    let reconciler = subscription_reconciler(&client);
    let mut deleted = subscription_json("7", json!(["someone.else/keep", SUBSCRIPTION_FINALIZER]));
    deleted["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let script = async {
        let call = expect(&mut server, Method::GET, &format!("{IMCS}/ch"), &[]).await;
        let other =
            json!({ "name": "other", "uid": "uid-other", "subscriberUri": "http://other/" });
        let mine =
            json!({ "name": "sub", "uid": "uid-sub", "generation": 1, "subscriberUri": SINK });
        server.answer(call.send, 200, &subscribed_imc("5", json!([mine, other])));

        let call = expect(&mut server, Method::PUT, &format!("{IMCS}/ch"), &[]).await;
        assert_eq!(call.body["metadata"]["resourceVersion"], "5");
        assert_eq!(call.body["spec"]["subscribers"], json!([other]));
        server.answer(call.send, 200, &stored(call.body, "6"));

        let call = expect(
            &mut server,
            Method::PUT,
            &format!("{SUBSCRIPTIONS}/sub"),
            &[],
        )
        .await;
        assert_eq!(
            call.body["metadata"]["finalizers"],
            json!(["someone.else/keep"])
        );
        assert_eq!(call.body["metadata"]["resourceVersion"], "7");
        server.answer(call.send, 200, &stored(call.body, "8"));
    };
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(subscription(deleted)),
    )
    .await
    .expect("the finalizer is removed");
    assert_eq!(action, Action::await_change());
    server.expect_no_request().await;
}

// ---------------------------------------------------------------------------
// Eventing: SequenceReconciler and ParallelReconciler
// ---------------------------------------------------------------------------

const FLOWS: &str = "/apis/flows.knative.dev/v1/namespaces/default";

/// A reference to InMemoryChannel `name` in `default` (a reply or a
/// subscriber in a flow's Subscription).
fn imc_destination(name: &str) -> Value {
    json!({ "ref": {
        "apiVersion": "messaging.knative.dev/v1",
        "kind": "InMemoryChannel",
        "name": name,
        "namespace": "default",
    } })
}

/// A Subscription's `spec.channel` to InMemoryChannel `name`.
fn imc_channel_ref(name: &str) -> Value {
    json!({ "apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "name": name })
}

/// Answers the GET of a flow's child `name` with a 404, then checks the
/// POST that creates it: its name, namespace and owner. Returns the call
/// for the caller to check the spec and answer.
async fn expect_child_created(
    server: &mut ApiServer,
    plural: &str,
    name: &str,
    owner: &Value,
) -> Call {
    let call = expect(server, Method::GET, &format!("{}/{name}", plural), &[]).await;
    let resource = plural.rsplit('/').next().unwrap_or_default();
    server.answer(
        call.send,
        404,
        &not_found(&format!("{resource}.messaging.knative.dev"), name),
    );
    let call = expect(server, Method::POST, plural, &[]).await;
    assert_eq!(call.body["metadata"]["name"], name);
    assert_eq!(call.body["metadata"]["namespace"], "default");
    assert_eq!(call.body["metadata"]["ownerReferences"], *owner);
    call
}

fn messaging_list(kind: &str, items: Value) -> Value {
    json!({
        "apiVersion": "messaging.knative.dev/v1",
        "kind": format!("{kind}List"),
        "metadata": { "resourceVersion": "50" },
        "items": items,
    })
}

fn sequence_json() -> Value {
    json!({
        "apiVersion": "flows.knative.dev/v1",
        "kind": "Sequence",
        "metadata": {
            "name": "seq",
            "namespace": "default",
            "uid": "uid-seq",
            "generation": 1,
            "resourceVersion": "1",
        },
        "spec": {
            "steps": [ { "uri": "http://step-0/" }, { "uri": "http://step-1/" } ],
        },
    })
}

#[tokio::test]
async fn a_new_sequence_creates_its_channels_and_subscriptions_deletes_extras_and_writes_its_status()
 {
    let (client, mut server) = mock();
    let reconciler = SequenceReconciler::new(
        Arc::new(KubeObjects::<Sequence>::new(client.clone())),
        Arc::new(KubeObjects::<InMemoryChannel>::new(client.clone())),
        Arc::new(KubeObjects::<Subscription>::new(client.clone())),
    );
    let owner = controller_ref("flows.knative.dev/v1", "Sequence", "seq", "uid-seq");
    let subscriptions = SUBSCRIPTIONS;
    let script = async {
        // A channel in front of every step.
        for i in 0..2 {
            let name = format!("seq-kn-sequence-{i}");
            let call = expect_child_created(&mut server, IMCS, &name, &owner).await;
            assert_eq!(call.body["kind"], "InMemoryChannel");
            server.answer(call.send, 201, &created(call.body, &format!("uid-ch-{i}")));
        }
        // A Subscription from each channel to its step, replying to the
        // next channel (the last step has no reply).
        let call =
            expect_child_created(&mut server, subscriptions, "seq-kn-sequence-0", &owner).await;
        assert_eq!(
            call.body["spec"],
            json!({
                "channel": imc_channel_ref("seq-kn-sequence-0"),
                "subscriber": { "uri": "http://step-0/" },
                "reply": imc_destination("seq-kn-sequence-1"),
            })
        );
        server.answer(call.send, 201, &created(call.body, "uid-sub-0"));
        let call =
            expect_child_created(&mut server, subscriptions, "seq-kn-sequence-1", &owner).await;
        assert_eq!(
            call.body["spec"],
            json!({
                "channel": imc_channel_ref("seq-kn-sequence-1"),
                "subscriber": { "uri": "http://step-1/" },
            })
        );
        server.answer(call.send, 201, &created(call.body, "uid-sub-1"));

        // Children it owns but no longer wants (a third step removed) go;
        // someone else's stay.
        let call = expect(&mut server, Method::GET, subscriptions, &[]).await;
        let mut extra = subscription_json("9", json!([]));
        extra["metadata"]["name"] = json!("seq-kn-sequence-2");
        extra["metadata"]["ownerReferences"] = owner.clone();
        let foreign = subscription_json("9", json!([]));
        server.answer(
            call.send,
            200,
            &messaging_list("Subscription", json!([extra.clone(), foreign])),
        );
        let call = expect(
            &mut server,
            Method::DELETE,
            &format!("{subscriptions}/seq-kn-sequence-2"),
            &[],
        )
        .await;
        assert_eq!(call.body["propagationPolicy"], "Background");
        server.answer(call.send, 200, &extra);
        let call = expect(&mut server, Method::GET, IMCS, &[]).await;
        server.answer(
            call.send,
            200,
            &messaging_list("InMemoryChannel", json!([])),
        );

        let call = expect(
            &mut server,
            Method::PUT,
            &format!("{FLOWS}/sequences/seq/status"),
            &[],
        )
        .await;
        assert_eq!(call.body["metadata"]["resourceVersion"], "1");
        let status = &call.body["status"];
        assert_eq!(status["observedGeneration"], 1);
        let names = |key: &str, field: &str| -> Vec<Value> {
            status[key]
                .as_array()
                .unwrap_or_else(|| panic!("no {key} in {status}"))
                .iter()
                .map(|s| s[field]["name"].clone())
                .collect()
        };
        assert_eq!(
            names("channelStatuses", "channel"),
            [json!("seq-kn-sequence-0"), json!("seq-kn-sequence-1")]
        );
        assert_eq!(
            names("subscriptionStatuses", "subscription"),
            [json!("seq-kn-sequence-0"), json!("seq-kn-sequence-1")]
        );
        assert_eq!(
            status["channelStatuses"][0]["channel"]["kind"],
            "InMemoryChannel"
        );
        for type_ in [
            "ChannelsReady",
            "SubscriptionsReady",
            "Addressable",
            "Ready",
        ] {
            assert_eq!(condition(status, type_)["status"], "Unknown", "{type_}");
        }
        assert_eq!(condition(status, "Addressable")["reason"], "emptyAddress");
        assert_eq!(condition(status, "EventPoliciesReady")["status"], "True");
        assert!(status.get("address").is_none_or(Value::is_null));
        server.answer(call.send, 200, &stored(call.body, "2"));
    };
    let sequence: Sequence = serde_json::from_value(sequence_json()).expect("a Sequence");
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(Arc::new(sequence)),
    )
    .await
    .expect("reconciled");
    assert_eq!(action, Action::await_change());
    server.expect_no_request().await;
}

fn parallel_json() -> Value {
    json!({
        "apiVersion": "flows.knative.dev/v1",
        "kind": "Parallel",
        "metadata": {
            "name": "par",
            "namespace": "default",
            "uid": "uid-par",
            "generation": 1,
            "resourceVersion": "1",
        },
        "spec": {
            "branches": [ { "filter": { "uri": "http://filter/" }, "subscriber": { "uri": "http://branch/" } } ],
            "reply": { "uri": "http://reply/" },
        },
    })
}

#[tokio::test]
async fn a_parallel_keeps_its_ingress_channel_creates_its_branch_and_takes_the_ingress_address() {
    let (client, mut server) = mock();
    let reconciler = ParallelReconciler::new(
        Arc::new(KubeObjects::<Parallel>::new(client.clone())),
        Arc::new(KubeObjects::<InMemoryChannel>::new(client.clone())),
        Arc::new(KubeObjects::<Subscription>::new(client.clone())),
    );
    let owner = controller_ref("flows.knative.dev/v1", "Parallel", "par", "uid-par");
    let ingress_url = format!("{CHANNEL_INGRESS}/default/par-kn-parallel");
    let script = async {
        // The ingress channel exists, owned and addressable: kept as is.
        let call = expect(
            &mut server,
            Method::GET,
            &format!("{IMCS}/par-kn-parallel"),
            &[],
        )
        .await;
        let mut ingress = imc_json("4", json!([IN_MEMORY_CHANNEL_FINALIZER]));
        ingress["metadata"]["name"] = json!("par-kn-parallel");
        ingress["metadata"]["ownerReferences"] = owner.clone();
        ingress["spec"] = json!({});
        ingress["status"] = json!({
            "address": { "name": "http", "url": ingress_url },
            "addresses": [ { "name": "http", "url": ingress_url } ],
            "conditions": [ { "type": "Ready", "status": "True" } ],
        });
        server.answer(call.send, 200, &ingress);

        let call = expect_child_created(&mut server, IMCS, "par-kn-parallel-0", &owner).await;
        server.answer(call.send, 201, &created(call.body, "uid-ch-0"));

        // The filter Subscription: ingress → filter, replying to the branch
        // channel; the subscriber one: branch channel → subscriber,
        // replying to the Parallel's reply.
        let call = expect_child_created(
            &mut server,
            SUBSCRIPTIONS,
            "par-kn-parallel-filter-0",
            &owner,
        )
        .await;
        assert_eq!(
            call.body["spec"],
            json!({
                "channel": imc_channel_ref("par-kn-parallel"),
                "subscriber": { "uri": "http://filter/" },
                "reply": imc_destination("par-kn-parallel-0"),
            })
        );
        server.answer(call.send, 201, &created(call.body, "uid-filter-0"));
        let call =
            expect_child_created(&mut server, SUBSCRIPTIONS, "par-kn-parallel-0", &owner).await;
        assert_eq!(
            call.body["spec"],
            json!({
                "channel": imc_channel_ref("par-kn-parallel-0"),
                "subscriber": { "uri": "http://branch/" },
                "reply": { "uri": "http://reply/" },
            })
        );
        server.answer(call.send, 201, &created(call.body, "uid-branch-0"));

        let call = expect(&mut server, Method::GET, SUBSCRIPTIONS, &[]).await;
        server.answer(call.send, 200, &messaging_list("Subscription", json!([])));
        let call = expect(&mut server, Method::GET, IMCS, &[]).await;
        server.answer(
            call.send,
            200,
            &messaging_list("InMemoryChannel", json!([ingress])),
        );

        let call = expect(
            &mut server,
            Method::PUT,
            &format!("{FLOWS}/parallels/par/status"),
            &[],
        )
        .await;
        assert_eq!(call.body["metadata"]["resourceVersion"], "1");
        let status = &call.body["status"];
        assert_eq!(status["observedGeneration"], 1);
        assert_eq!(
            status["ingressChannelStatus"]["channel"]["name"],
            "par-kn-parallel"
        );
        assert_eq!(status["ingressChannelStatus"]["ready"]["status"], "True");
        let branch = &status["branchStatuses"][0];
        assert_eq!(
            branch["filterChannelStatus"]["channel"]["name"],
            "par-kn-parallel-0"
        );
        assert_eq!(branch["filterChannelStatus"]["ready"]["status"], "False");
        assert_eq!(
            branch["filterSubscriptionStatus"]["subscription"]["name"],
            "par-kn-parallel-filter-0"
        );
        assert_eq!(
            branch["subscriberSubscriptionStatus"]["subscription"]["name"],
            "par-kn-parallel-0"
        );
        assert_eq!(status["branchStatuses"].as_array().map(Vec::len), Some(1));
        assert_eq!(condition(status, "Addressable")["status"], "True");
        assert_eq!(status["address"]["url"], ingress_url.as_str());
        assert_eq!(
            status["addresses"],
            json!([{ "name": "http", "url": ingress_url }])
        );
        for type_ in ["ChannelsReady", "SubscriptionsReady", "Ready"] {
            assert_eq!(condition(status, type_)["status"], "False", "{type_}");
        }
        assert_eq!(
            condition(status, "ChannelsReady")["reason"],
            "ChannelsNotReady"
        );
        server.answer(call.send, 200, &stored(call.body, "2"));
    };
    let parallel: Parallel = serde_json::from_value(parallel_json()).expect("a Parallel");
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(Arc::new(parallel)),
    )
    .await
    .expect("reconciled");
    assert_eq!(action, Action::await_change());
    server.expect_no_request().await;
}

// ---------------------------------------------------------------------------
// Eventing: PingSourceReconciler
// ---------------------------------------------------------------------------

const PING_SOURCES: &str = "/apis/sources.knative.dev/v1/namespaces/default/pingsources";

fn ping_source_json(resource_version: &str, finalizers: Value) -> Value {
    json!({
        "apiVersion": "sources.knative.dev/v1",
        "kind": "PingSource",
        "metadata": {
            "name": "ping",
            "namespace": "default",
            "uid": "uid-ping",
            "generation": 1,
            "resourceVersion": resource_version,
            "finalizers": finalizers,
        },
        "spec": {
            "schedule": "0 0 1 1 *",
            "data": "{\"hello\":\"world\"}",
            "contentType": "application/json",
            "sink": { "uri": SINK },
        },
    })
}

fn ping_source(value: Value) -> Arc<PingSource> {
    Arc::new(serde_json::from_value(value).expect("a PingSource"))
}

fn ping_source_reconciler(client: &kube::Client) -> (PingSourceReconciler, PingScheduler) {
    let brokers: Arc<dyn Objects<Broker>> = Arc::new(KubeObjects::<Broker>::new(client.clone()));
    let scheduler = PingScheduler::new();
    let reconciler = PingSourceReconciler::new(
        Arc::new(KubeObjects::<PingSource>::new(client.clone())),
        Arc::new(BrokerAddresses::new(brokers, None)),
        scheduler.clone(),
    );
    (reconciler, scheduler)
}

#[tokio::test]
async fn a_new_ping_source_gets_its_finalizer_then_a_ready_status_with_its_sink_uri() {
    let (client, mut server) = mock();
    let (reconciler, scheduler) = ping_source_reconciler(&client);
    let script = async {
        let call = expect(
            &mut server,
            Method::PUT,
            &format!("{PING_SOURCES}/ping"),
            &[],
        )
        .await;
        assert_eq!(
            call.body["metadata"]["finalizers"],
            json!([PING_SOURCE_FINALIZER])
        );
        assert_eq!(call.body["metadata"]["resourceVersion"], "1");
        assert!(call.body.get("status").is_none_or(Value::is_null));
        server.answer(call.send, 200, &stored(call.body, "2"));
    };
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(ping_source(ping_source_json("1", json!([])))),
    )
    .await
    .expect("the finalizer is added");
    assert_eq!(action, Action::await_change());
    assert!(!scheduler.is_scheduled("default", "ping"));
    server.expect_no_request().await;

    let script = async {
        let call = expect(
            &mut server,
            Method::PUT,
            &format!("{PING_SOURCES}/ping/status"),
            &[],
        )
        .await;
        assert_eq!(call.body["metadata"]["resourceVersion"], "2");
        let status = &call.body["status"];
        assert_eq!(status["observedGeneration"], 1);
        assert_eq!(status["sinkUri"], SINK);
        assert_eq!(
            status["ceAttributes"],
            json!([{
                "type": "dev.knative.sources.ping",
                "source": "/apis/v1/namespaces/default/pingsources/ping",
            }])
        );
        for type_ in ["Ready", "SinkProvided", "Deployed"] {
            assert_eq!(
                condition(status, type_)["status"],
                "True",
                "{type_}: {status}"
            );
        }
        server.answer(call.send, 200, &stored(call.body, "3"));
    };
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(ping_source(ping_source_json(
            "2",
            json!([PING_SOURCE_FINALIZER]),
        ))),
    )
    .await
    .expect("the status is written");
    assert_eq!(action, Action::await_change());
    assert!(scheduler.is_scheduled("default", "ping"));
    server.expect_no_request().await;
}

#[tokio::test]
async fn deleting_a_ping_source_stops_its_schedule_and_removes_exactly_its_finalizer() {
    let (client, mut server) = mock();
    let (reconciler, scheduler) = ping_source_reconciler(&client);
    let running = ping_source(ping_source_json("2", json!([PING_SOURCE_FINALIZER])));
    scheduler
        .schedule(&running, SINK)
        .expect("a valid schedule");
    let mut deleted = ping_source_json("7", json!(["someone.else/keep", PING_SOURCE_FINALIZER]));
    deleted["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let script = async {
        let call = expect(
            &mut server,
            Method::PUT,
            &format!("{PING_SOURCES}/ping"),
            &[],
        )
        .await;
        assert_eq!(
            call.body["metadata"]["finalizers"],
            json!(["someone.else/keep"])
        );
        assert_eq!(call.body["metadata"]["resourceVersion"], "7");
        server.answer(call.send, 200, &stored(call.body, "8"));
    };
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(ping_source(deleted)),
    )
    .await
    .expect("the finalizer is removed");
    assert_eq!(action, Action::await_change());
    assert!(!scheduler.is_scheduled("default", "ping"));
    server.expect_no_request().await;
}

// ---------------------------------------------------------------------------
// Build: PipelineRunReconciler
// ---------------------------------------------------------------------------

fn pipeline_json() -> Value {
    json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "Pipeline",
        "metadata": { "name": "build-and-test", "namespace": "ci", "uid": "uid-pipeline", "resourceVersion": "5" },
        "spec": {
            "tasks": [
                { "name": "build", "taskRef": { "name": "build" } },
                { "name": "test", "taskRef": { "name": "unit-tests" }, "runAfter": [ "build" ] },
            ],
        },
    })
}

fn pipeline_run_json() -> Value {
    json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": {
            "name": "pr",
            "namespace": "ci",
            "uid": "uid-pr",
            "generation": 1,
            "resourceVersion": "1",
            "labels": { "team": "a" },
        },
        "spec": { "pipelineRef": { "name": "build-and-test" } },
    })
}

#[tokio::test]
async fn a_pipeline_run_creates_a_task_run_per_ready_task_then_writes_its_status() {
    let (client, mut server) = mock();
    let reconciler = PipelineRunReconciler::new(
        Arc::new(KubeObjects::<PipelineRun>::new(client.clone())),
        Arc::new(KubeObjects::<Pipeline>::new(client.clone())),
        Arc::new(KubeObjects::<TaskRun>::new(client.clone())),
    );
    let script = async {
        let call = expect(
            &mut server,
            Method::GET,
            &format!("{TEKTON}/pipelines/build-and-test"),
            &[],
        )
        .await;
        server.answer(call.send, 200, &pipeline_json());

        // Its TaskRuns, by the pipelineRun label: none yet.
        let call = expect(
            &mut server,
            Method::GET,
            &format!("{TEKTON}/taskruns"),
            &[("labelSelector", "tekton.dev/pipelineRun=pr")],
        )
        .await;
        server.answer(
            call.send,
            200,
            &json!({
                "apiVersion": "tekton.dev/v1", "kind": "TaskRunList",
                "metadata": { "resourceVersion": "2" }, "items": [],
            }),
        );

        // Only `build` is ready to run (`test` runs after it).
        let call = expect(
            &mut server,
            Method::POST,
            &format!("{TEKTON}/taskruns"),
            &[],
        )
        .await;
        let meta = &call.body["metadata"];
        assert_eq!(call.body["kind"], "TaskRun");
        assert_eq!(meta["name"], "pr-build");
        assert_eq!(meta["namespace"], "ci");
        assert_eq!(
            meta["labels"],
            json!({
                "team": "a",
                "tekton.dev/pipelineRun": "pr",
                "tekton.dev/pipelineRunUID": "uid-pr",
                "tekton.dev/pipeline": "build-and-test",
                "tekton.dev/pipelineTask": "build",
                "tekton.dev/memberOf": "tasks",
                "tekton.dev/task": "build",
            })
        );
        assert_eq!(
            meta["ownerReferences"],
            controller_ref("tekton.dev/v1", "PipelineRun", "pr", "uid-pr")
        );
        assert_eq!(call.body["spec"]["taskRef"]["name"], "build");
        let mut task_run = created(call.body, "uid-tr");
        task_run["metadata"]["resourceVersion"] = json!("3");
        server.answer(call.send, 201, &task_run);

        let call = expect(
            &mut server,
            Method::PUT,
            &format!("{TEKTON}/pipelineruns/pr/status"),
            &[],
        )
        .await;
        assert_eq!(call.body["metadata"]["resourceVersion"], "1");
        let status = &call.body["status"];
        let succeeded = condition(status, "Succeeded");
        assert_eq!(succeeded["status"], "Unknown");
        assert_eq!(succeeded["reason"], "Running");
        assert!(status["startTime"].is_string(), "{status}");
        assert!(status.get("completionTime").is_none_or(Value::is_null));
        assert_eq!(
            status["childReferences"],
            json!([{
                "apiVersion": "tekton.dev/v1",
                "kind": "TaskRun",
                "name": "pr-build",
                "pipelineTaskName": "build",
            }])
        );
        assert_eq!(status["pipelineSpec"]["tasks"][1]["name"], "test");
        server.answer(call.send, 200, &stored(call.body, "4"));
    };
    let pr: PipelineRun = serde_json::from_value(pipeline_run_json()).expect("a PipelineRun");
    let action = scenario_within(
        Duration::from_secs(2),
        script,
        reconciler.reconcile(Arc::new(pr)),
    )
    .await
    .expect("reconciled");
    // Woken again at the run's timeout at the latest.
    assert!(
        action
            .requeue_delay()
            .is_some_and(|d| d > Duration::from_secs(60)),
        "{action:?}"
    );
    server.expect_no_request().await;
}
