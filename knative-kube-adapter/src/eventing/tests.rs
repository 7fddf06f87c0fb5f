//! `KubeBindingTarget` and `KubeContainerRunner` against the mock API
//! server (`specs/BUILD.md §3`): the method, path, query and body of every
//! call, and the pure functions beside them.

use http::Method;
use serde_json::json;

use super::*;
use crate::test_util::{Expect, api_status, mock, scenario};

const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";
const PATCH: &[(&str, &str)] = &[("fieldManager", "knative-operator")];
const APPLY: &[(&str, &str)] = &[("fieldManager", "knative-operator"), ("force", "true")];
const SINK: &str = "http://event-display.default.svc.cluster.local";
const OVERRIDES: &str = r#"{"extensions":{"team":"orders"}}"#;

fn env() -> Vec<(String, String)> {
    vec![
        ("K_SINK".to_owned(), SINK.to_owned()),
        ("K_CE_OVERRIDES".to_owned(), OVERRIDES.to_owned()),
    ]
}

fn subject(api_version: &str, kind: &str, name: Option<&str>) -> BindingSubject {
    BindingSubject {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        namespace: None,
        name: name.map(str::to_owned),
        selector: None,
    }
}

fn deployment(name: &str, resource_version: &str, env: Value) -> Value {
    let mut container = json!({"name": "app", "image": "example.com/app:1"});
    if !env.is_null() {
        container["env"] = env;
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": "default",
            "resourceVersion": resource_version,
            "labels": {"app": "web"},
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [container]},
            },
        },
    })
}

fn bound_env() -> Value {
    json!([
        {"name": "LOG", "value": "debug"},
        {"name": "K_SINK", "value": SINK},
        {"name": "K_CE_OVERRIDES", "value": OVERRIDES},
    ])
}

fn env_patch_body(resource_version: &str, env: Value) -> Value {
    let mut container = json!({"name": "app", "image": "example.com/app:1"});
    if !env.is_null() {
        container["env"] = env;
    }
    json!({
        "metadata": {"resourceVersion": resource_version},
        "spec": {"template": {"spec": {"containers": [container]}}},
    })
}

#[test]
fn set_env_replaces_same_names_keeps_others_and_reports_changes() {
    let mut pod = json!({
        "initContainers": [{"name": "init"}],
        "containers": [
            {"name": "a", "env": [
                {"name": "K_SINK", "valueFrom": {"configMapKeyRef": {"name": "x", "key": "y"}}},
                {"name": "KEEP", "value": "1"},
            ]},
            {"name": "b"},
        ],
    });
    let changed = set_env(&mut pod, &[("K_SINK".to_owned(), SINK.to_owned())]);
    assert_eq!(changed, vec!["containers", "initContainers"]);
    assert_eq!(
        pod["containers"][0]["env"],
        json!([{"name": "K_SINK", "value": SINK}, {"name": "KEEP", "value": "1"}])
    );
    assert_eq!(
        pod["containers"][1]["env"],
        json!([{"name": "K_SINK", "value": SINK}])
    );
    assert_eq!(
        pod["initContainers"][0]["env"],
        json!([{"name": "K_SINK", "value": SINK}])
    );
    // Idempotent: a second pass changes nothing.
    assert!(set_env(&mut pod, &[("K_SINK".to_owned(), SINK.to_owned())]).is_empty());

    let changed = remove_env(&mut pod, &["K_SINK", "K_CA_CERTS"]);
    assert_eq!(changed, vec!["containers", "initContainers"]);
    assert_eq!(
        pod["containers"][0]["env"],
        json!([{"name": "KEEP", "value": "1"}])
    );
    assert!(pod["containers"][1].get("env").is_none(), "{pod}");
    assert!(pod["initContainers"][0].get("env").is_none(), "{pod}");
    assert!(remove_env(&mut pod, &["K_SINK"]).is_empty());
}

#[test]
fn the_patch_nests_the_changed_lists_at_the_pod_spec_path() {
    let pod = json!({"containers": [{"name": "c"}], "initContainers": [{"name": "i"}]});
    let path = ["spec", "jobTemplate", "spec", "template", "spec"];
    assert_eq!(
        env_patch(&path, &pod, &["containers"], Some("4")),
        json!({
            "metadata": {"resourceVersion": "4"},
            "spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}}},
        })
    );
}

#[test]
fn subject_kinds_are_matched_by_api_version_and_kind() {
    let cases = [
        ("apps/v1", "Deployment", Some("deployments")),
        ("apps/v1", "StatefulSet", Some("statefulsets")),
        ("apps/v1", "DaemonSet", Some("daemonsets")),
        ("batch/v1", "Job", Some("jobs")),
        ("batch/v1", "CronJob", Some("cronjobs")),
        ("serving.knative.dev/v1", "Service", Some("services")),
        ("v1", "Service", None),
        ("apps/v1beta1", "Deployment", None),
        ("apps/v1", "ReplicaSet", None),
        ("v1", "Pod", None),
    ];
    for (api_version, kind, plural) in cases {
        let got = SubjectKind::of(&subject(api_version, kind, Some("x"))).map(|k| k.plural);
        assert_eq!(got.ok(), plural, "{api_version} {kind}");
    }
}

#[tokio::test]
async fn bind_patches_a_named_deployment_with_the_sink_and_overrides() {
    let (client, mut server) = mock();
    let target = KubeBindingTarget::new(client);
    let web = subject("apps/v1", "Deployment", Some("web"));
    let result = scenario(
        async {
            server
                .handle(
                    Expect::new(Method::GET, &format!("{DEPLOYMENTS}/web")),
                    200,
                    deployment("web", "11", json!([{"name": "LOG", "value": "debug"}])),
                )
                .await;
            server
                .handle(
                    Expect::new(Method::PATCH, &format!("{DEPLOYMENTS}/web"))
                        .query(PATCH)
                        .content_type("application/merge-patch+json")
                        .body(env_patch_body("11", bound_env())),
                    200,
                    deployment("web", "12", bound_env()),
                )
                .await;
        },
        target.bind("default", &web, env()),
    )
    .await;
    assert_eq!(result, Ok(()));
    server.expect_no_request().await;
}

#[tokio::test]
async fn bind_is_a_no_op_when_the_variables_are_already_set() {
    let (client, mut server) = mock();
    let target = KubeBindingTarget::new(client);
    let web = subject("apps/v1", "Deployment", Some("web"));
    let result = scenario(
        server.handle(
            Expect::new(Method::GET, &format!("{DEPLOYMENTS}/web")),
            200,
            deployment("web", "12", bound_env()),
        ),
        target.bind("default", &web, env()),
    )
    .await;
    assert_eq!(result, Ok(()));
    server.expect_no_request().await;
}

#[tokio::test]
async fn bind_reads_again_after_a_conflict() {
    let (client, mut server) = mock();
    let target = KubeBindingTarget::new(client);
    let web = subject("apps/v1", "Deployment", Some("web"));
    let result = scenario(
        async {
            server
                .handle(
                    Expect::new(Method::GET, &format!("{DEPLOYMENTS}/web")),
                    200,
                    deployment("web", "11", json!([{"name": "LOG", "value": "debug"}])),
                )
                .await;
            server
                .handle(
                    Expect::new(Method::PATCH, &format!("{DEPLOYMENTS}/web"))
                        .query(PATCH)
                        .body(env_patch_body("11", bound_env())),
                    409,
                    api_status(409, "Conflict", "the object has been modified", json!({})),
                )
                .await;
            server
                .handle(
                    Expect::new(Method::GET, &format!("{DEPLOYMENTS}/web")),
                    200,
                    deployment("web", "13", json!([{"name": "LOG", "value": "debug"}])),
                )
                .await;
            server
                .handle(
                    Expect::new(Method::PATCH, &format!("{DEPLOYMENTS}/web"))
                        .query(PATCH)
                        .body(env_patch_body("13", bound_env())),
                    200,
                    deployment("web", "14", bound_env()),
                )
                .await;
        },
        target.bind("default", &web, env()),
    )
    .await;
    assert_eq!(result, Ok(()));
}

#[tokio::test]
async fn bind_of_a_missing_subject_fails_and_unbind_of_it_is_fine() {
    let (client, mut server) = mock();
    let target = KubeBindingTarget::new(client);
    let web = subject("apps/v1", "Deployment", Some("web"));
    let missing = || {
        api_status(
            404,
            "NotFound",
            "deployments.apps \"web\" not found",
            json!({"name": "web", "group": "apps", "kind": "deployments"}),
        )
    };
    let result = scenario(
        server.handle(
            Expect::new(Method::GET, &format!("{DEPLOYMENTS}/web")),
            404,
            missing(),
        ),
        target.bind("default", &web, env()),
    )
    .await;
    let err = result.expect_err("a missing subject");
    assert!(err.contains("Deployment default/web not found"), "{err}");

    let result = scenario(
        server.handle(
            Expect::new(Method::GET, &format!("{DEPLOYMENTS}/web")),
            404,
            missing(),
        ),
        target.unbind("default", &web, &["K_SINK", "K_CE_OVERRIDES", "K_CA_CERTS"]),
    )
    .await;
    assert_eq!(result, Ok(()));
}

#[tokio::test]
async fn unbind_removes_the_variables() {
    let (client, mut server) = mock();
    let target = KubeBindingTarget::new(client);
    let web = subject("apps/v1", "Deployment", Some("web"));
    let result = scenario(
        async {
            server
                .handle(
                    Expect::new(Method::GET, &format!("{DEPLOYMENTS}/web")),
                    200,
                    deployment("web", "12", bound_env()),
                )
                .await;
            server
                .handle(
                    Expect::new(Method::PATCH, &format!("{DEPLOYMENTS}/web"))
                        .query(PATCH)
                        .body(env_patch_body(
                            "12",
                            json!([{"name": "LOG", "value": "debug"}]),
                        )),
                    200,
                    deployment("web", "13", json!([{"name": "LOG", "value": "debug"}])),
                )
                .await;
        },
        target.unbind("default", &web, &["K_SINK", "K_CE_OVERRIDES", "K_CA_CERTS"]),
    )
    .await;
    assert_eq!(result, Ok(()));
    server.expect_no_request().await;
}

#[tokio::test]
async fn a_selector_lists_the_subjects_then_patches_each_that_changes() {
    let (client, mut server) = mock();
    let target = KubeBindingTarget::new(client);
    let mut selected = subject("apps/v1", "Deployment", None);
    selected.namespace = Some("apps".to_owned());
    selected.selector = Some(LabelSelector {
        match_labels: Some([("app".to_owned(), "web".to_owned())].into()),
        ..LabelSelector::default()
    });
    let in_apps = |mut d: Value| {
        d["metadata"]["namespace"] = json!("apps");
        d
    };
    let apps = "/apis/apps/v1/namespaces/apps/deployments";
    let result = scenario(
        async {
            server
                .handle(
                    Expect::new(Method::GET, apps).query(&[("labelSelector", "app=web")]),
                    200,
                    json!({
                        "apiVersion": "apps/v1",
                        "kind": "DeploymentList",
                        "metadata": {"resourceVersion": "20"},
                        "items": [
                            in_apps(deployment("web-a", "5", Value::Null)),
                            in_apps(deployment("web-b", "6", bound_env())),
                            in_apps(deployment("web-c", "7", Value::Null)),
                        ],
                    }),
                )
                .await;
            for (name, rv) in [("web-a", "5"), ("web-c", "7")] {
                let body = env_patch_body(
                    rv,
                    json!([
                        {"name": "K_SINK", "value": SINK},
                        {"name": "K_CE_OVERRIDES", "value": OVERRIDES},
                    ]),
                );
                server
                    .handle(
                        Expect::new(Method::PATCH, &format!("{apps}/{name}"))
                            .query(PATCH)
                            .body(body),
                        200,
                        in_apps(deployment(name, "30", bound_env())),
                    )
                    .await;
            }
        },
        target.bind("default", &selected, env()),
    )
    .await;
    assert_eq!(result, Ok(()));
    server.expect_no_request().await;
}

#[tokio::test]
async fn a_selected_subject_deleted_before_its_patch_is_skipped() {
    let (client, mut server) = mock();
    let target = KubeBindingTarget::new(client);
    let mut selected = subject("apps/v1", "Deployment", None);
    selected.selector = Some(LabelSelector::default());
    let result = scenario(
        async {
            server
                .handle(
                    Expect::new(Method::GET, DEPLOYMENTS).query(&[("labelSelector", "")]),
                    200,
                    json!({
                        "apiVersion": "apps/v1",
                        "kind": "DeploymentList",
                        "metadata": {"resourceVersion": "20"},
                        "items": [deployment("gone", "5", Value::Null)],
                    }),
                )
                .await;
            server
                .handle(
                    Expect::new(Method::PATCH, &format!("{DEPLOYMENTS}/gone"))
                        .query(PATCH)
                        .body(env_patch_body(
                            "5",
                            json!([{"name": "K_SINK", "value": SINK}]),
                        )),
                    404,
                    api_status(404, "NotFound", "not found", json!({})),
                )
                .await;
        },
        target.bind(
            "default",
            &selected,
            vec![("K_SINK".to_owned(), SINK.to_owned())],
        ),
    )
    .await;
    assert_eq!(result, Ok(()));
}

#[tokio::test]
async fn an_existing_job_cannot_be_bound_and_the_error_says_why() {
    let (client, mut server) = mock();
    let target = KubeBindingTarget::new(client);
    let job = subject("batch/v1", "Job", Some("once"));
    let path = "/apis/batch/v1/namespaces/default/jobs/once";
    let result = scenario(
        async {
            let mut once = deployment("once", "3", Value::Null);
            once["apiVersion"] = json!("batch/v1");
            once["kind"] = json!("Job");
            server.handle(Expect::new(Method::GET, path), 200, once).await;
            server
                .handle(
                    Expect::new(Method::PATCH, path)
                        .query(PATCH)
                        .body(env_patch_body(
                            "3",
                            json!([{"name": "K_SINK", "value": SINK}]),
                        )),
                    422,
                    api_status(
                        422,
                        "Invalid",
                        "Job.batch \"once\" is invalid: spec.template: Invalid value: field is immutable",
                        json!({}),
                    ),
                )
                .await;
        },
        target.bind("default", &job, vec![("K_SINK".to_owned(), SINK.to_owned())]),
    )
    .await;
    let err = result.expect_err("immutable");
    assert!(err.contains("Job's pod template cannot change"), "{err}");
}

#[tokio::test]
async fn a_knative_service_is_bound_in_its_template() {
    let (client, mut server) = mock();
    let target = KubeBindingTarget::new(client);
    let hello = subject("serving.knative.dev/v1", "Service", Some("hello"));
    let path = "/apis/serving.knative.dev/v1/namespaces/default/services/hello";
    let service = |rv: &str, env: Value| {
        let mut container = json!({"image": "knative.dev/sample-app"});
        if !env.is_null() {
            container["env"] = env;
        }
        json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": {"name": "hello", "namespace": "default", "resourceVersion": rv},
            "spec": {"template": {"spec": {"containers": [container]}}},
            "status": {"url": "http://hello.default.example.com"},
        })
    };
    let sink_only = json!([{"name": "K_SINK", "value": SINK}]);
    let result = scenario(
        async {
            server
                .handle(
                    Expect::new(Method::GET, path),
                    200,
                    service("3", Value::Null),
                )
                .await;
            server
                .handle(
                    Expect::new(Method::PATCH, path).query(PATCH).body(json!({
                        "metadata": {"resourceVersion": "3"},
                        "spec": {"template": {"spec": {"containers": [
                            {"image": "knative.dev/sample-app", "env": sink_only},
                        ]}}},
                    })),
                    200,
                    service("4", sink_only.clone()),
                )
                .await;
        },
        target.bind(
            "default",
            &hello,
            vec![("K_SINK".to_owned(), SINK.to_owned())],
        ),
    )
    .await;
    assert_eq!(result, Ok(()));
}

#[tokio::test]
async fn an_unsupported_subject_is_a_clear_error_and_never_bound() {
    let (client, mut server) = mock();
    let target = KubeBindingTarget::new(client);
    let pod = subject("v1", "Pod", Some("p"));
    let err = target
        .bind("default", &pod, env())
        .await
        .expect_err("pods are not bound");
    assert!(err.contains("v1 \"Pod\" is not supported"), "{err}");
    assert!(err.contains("apps/v1 Deployment"), "{err}");
    assert!(err.contains("serving.knative.dev/v1 Service"), "{err}");
    assert_eq!(target.unbind("default", &pod, &["K_SINK"]).await, Ok(()));
    server.expect_no_request().await;
}

fn template() -> PodTemplateSpec {
    serde_json::from_value(json!({
        "metadata": {"labels": {"team": "orders"}},
        "spec": {"containers": [
            {"image": "example.com/heartbeats", "env": [{"name": "K_SINK", "value": SINK}]},
        ]},
    }))
    .expect("a template")
}

fn container_source(uid: Option<&str>) -> Value {
    let mut metadata = json!({"name": "heartbeat", "namespace": "default", "resourceVersion": "8"});
    if let Some(uid) = uid {
        metadata["uid"] = json!(uid);
    }
    json!({
        "apiVersion": "sources.knative.dev/v1",
        "kind": "ContainerSource",
        "metadata": metadata,
        "spec": {
            "template": {"spec": {"containers": [{"image": "example.com/heartbeats"}]}},
            "sink": {"uri": SINK},
        },
    })
}

fn labels() -> Value {
    json!({
        "sources.knative.dev/source": "container-source-controller",
        "sources.knative.dev/containerSource": "heartbeat",
    })
}

#[tokio::test]
async fn ensure_applies_an_owned_deployment_named_after_the_source() {
    let (client, mut server) = mock();
    let runner = KubeContainerRunner::new(client);
    let applied = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "heartbeat-deployment",
            "namespace": "default",
            "labels": labels(),
            "ownerReferences": [{
                "apiVersion": "sources.knative.dev/v1",
                "kind": "ContainerSource",
                "name": "heartbeat",
                "uid": "source-uid",
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels()},
            "template": {
                "metadata": {"labels": {
                    "team": "orders",
                    "sources.knative.dev/source": "container-source-controller",
                    "sources.knative.dev/containerSource": "heartbeat",
                }},
                "spec": {"containers": [{
                    "name": "heartbeat-0",
                    "image": "example.com/heartbeats",
                    "env": [{"name": "K_SINK", "value": SINK}],
                }]},
            },
        },
    });
    let result = scenario(
        async {
            server
                .handle(
                    Expect::new(
                        Method::GET,
                        "/apis/sources.knative.dev/v1/namespaces/default/containersources/heartbeat",
                    ),
                    200,
                    container_source(Some("source-uid")),
                )
                .await;
            server
                .handle(
                    Expect::new(Method::PATCH, &format!("{DEPLOYMENTS}/heartbeat-deployment"))
                        .query(APPLY)
                        .content_type("application/apply-patch+yaml")
                        .body(applied.clone()),
                    200,
                    applied.clone(),
                )
                .await;
        },
        runner.ensure("default", "heartbeat", template()),
    )
    .await;
    assert_eq!(result, Ok(()));
    server.expect_no_request().await;
}

#[tokio::test]
async fn ensure_needs_the_source_to_own_the_deployment() {
    let (client, mut server) = mock();
    let runner = KubeContainerRunner::new(client);
    let path = "/apis/sources.knative.dev/v1/namespaces/default/containersources/heartbeat";
    let result = scenario(
        server.handle(
            Expect::new(Method::GET, path),
            404,
            api_status(404, "NotFound", "not found", json!({})),
        ),
        runner.ensure("default", "heartbeat", template()),
    )
    .await;
    let err = result.expect_err("no source");
    assert!(
        err.contains("ContainerSource default/heartbeat not found"),
        "{err}"
    );
    server.expect_no_request().await;

    let empty = PodTemplateSpec::default();
    let err = runner
        .ensure("default", "heartbeat", empty)
        .await
        .expect_err("no containers");
    assert!(err.contains("containers"), "{err}");
    server.expect_no_request().await;
}

#[tokio::test]
async fn remove_deletes_the_deployment_and_a_missing_one_is_fine() {
    let (client, mut server) = mock();
    let runner = KubeContainerRunner::new(client);
    let path = format!("{DEPLOYMENTS}/heartbeat-deployment");
    let result = scenario(
        server.handle(
            Expect::new(Method::DELETE, &path).body(json!({"propagationPolicy": "Background"})),
            200,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200}),
        ),
        runner.remove("default", "heartbeat"),
    )
    .await;
    assert_eq!(result, Ok(()));
    let result = scenario(
        server.handle(
            Expect::new(Method::DELETE, &path).body(json!({"propagationPolicy": "Background"})),
            404,
            api_status(404, "NotFound", "not found", json!({})),
        ),
        runner.remove("default", "heartbeat"),
    )
    .await;
    assert_eq!(result, Ok(()));
}

#[test]
fn long_source_names_get_a_hashed_deployment_name() {
    assert_eq!(
        container_source_deployment_name("heartbeat"),
        "heartbeat-deployment"
    );
    let long = "s".repeat(60);
    let name = container_source_deployment_name(&long);
    assert!(name.len() <= 63, "{name}");
    assert_ne!(name, format!("{long}-deployment"));
}

/// A ContainerSource's Deployment is available only with its `Available`
/// condition `True`.
#[test]
fn a_deployment_is_available_with_its_available_condition_true() {
    let with = |status: Option<&str>| -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "d"},
            "status": {"conditions": status.map(|s| vec![
                serde_json::json!({"type": "Progressing", "status": "True"}),
                serde_json::json!({"type": "Available", "status": s}),
            ]).unwrap_or_default()}
        }))
        .expect("deployment")
    };
    assert!(deployment_available(&with(Some("True"))));
    assert!(!deployment_available(&with(Some("False"))));
    assert!(!deployment_available(&with(None)));
    assert!(!deployment_available(&Deployment::default()));
}
