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
use knative_build::api::{Task, TaskRun};
use knative_build::executor::{
    CancelHandle, Execution, ExecutionPhase, ExecutionStatus, MockStepExecutor, RunKey, RunPaths,
    StepOutcome, StepPhase,
};
use knative_build::reconciler::TaskRunReconciler;
use knative_core::runtime::{Action, Controller, Reconciler};
use knative_core::store::{Objects, StoreError};
use knative_eventing::api::Broker;
use knative_eventing::broker::{Brokers, DispatchConfig, IngressConfig};
use knative_eventing::log::InMemoryLog;
use knative_eventing::reconciler::{
    BROKER_FINALIZER, BrokerAddresses, BrokerReconciler, ReconcileError,
};
use knative_serving::api::{Configuration, Revision, Route, Service};
use knative_serving::config::ServingConfig;
use knative_serving::reconciler::ServiceReconciler;
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
