use std::collections::BTreeMap;
use std::time::Duration;

use http::Method;
use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    HTTPGetAction, PodCondition, PodStatus,
};
use k8s_openapi::api::core::v1::{ExecAction, GRPCAction};
use k8s_openapi::api::discovery::v1::{
    Endpoint as SliceEndpoint, EndpointConditions, EndpointPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use knative_serving::dataplane::queue_proxy::{QueueProxyEnv, Readiness};
use serde_json::json;

use super::*;
use crate::backend::fixtures::{ApiServer, not_found, status};

const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";
const SERVICES: &str = "/api/v1/namespaces/default/services";
const APPLY: &[(&str, &str)] = &[("fieldManager", "knative-operator"), ("force", "true")];

fn owner() -> OwnerReference {
    OwnerReference {
        api_version: "serving.knative.dev/v1".into(),
        kind: "Revision".into(),
        name: "hello-00001".into(),
        uid: "rev-uid".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn spec(container: Container) -> WorkloadSpec {
    WorkloadSpec {
        key: WorkloadKey::new("default", "hello-00001"),
        containers: vec![container],
        pod: PodSpec::default(),
        serving_container: 0,
        container_port: 8080,
        labels: BTreeMap::from([
            (keys::SERVICE.to_owned(), "hello".to_owned()),
            (keys::CONFIGURATION.to_owned(), "hello".to_owned()),
            (keys::REVISION.to_owned(), "hello-00001".to_owned()),
            (keys::REVISION_UID.to_owned(), "rev-uid".to_owned()),
            ("app".to_owned(), "hello-00001".to_owned()),
        ]),
        annotations: BTreeMap::new(),
        termination_grace_period: Duration::from_secs(300),
        container_concurrency: 0,
        response_start_timeout: None,
        idle_timeout: None,
        owner: Some(owner()),
    }
}

fn image(image: &str) -> Container {
    Container {
        image: Some(image.to_owned()),
        ..Container::default()
    }
}

fn pod_spec(deployment: &Deployment) -> &PodSpec {
    deployment.spec.template.spec.as_ref().expect("a pod spec")
}

fn env(container: &Container) -> BTreeMap<String, String> {
    container
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

#[test]
fn deployment_carries_upstream_names_labels_owner_and_selector() -> Result<(), BackendError> {
    let d = desired_deployment(&spec(image("hello")), 0, &KubeWorkloadConfig::default())?;
    assert_eq!(d.metadata.name.as_deref(), Some("hello-00001-deployment"));
    assert_eq!(d.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(d.metadata.owner_references, Some(vec![owner()]));
    let labels = d.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(keys::REVISION_UID).map(String::as_str),
        Some("rev-uid")
    );
    assert_eq!(labels.get("app").map(String::as_str), Some("hello-00001"));
    assert_eq!(d.spec.replicas, Some(0));
    assert_eq!(d.spec.progress_deadline_seconds, Some(600));
    assert_eq!(
        d.spec.selector.match_labels,
        Some(BTreeMap::from([(
            keys::REVISION_UID.to_owned(),
            "rev-uid".to_owned()
        )]))
    );
    let template_labels = d
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone());
    assert_eq!(template_labels, Some(labels));
    let pod = pod_spec(&d);
    assert_eq!(pod.enable_service_links, Some(false));
    assert_eq!(pod.termination_grace_period_seconds, Some(300));
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["user-container"], "no sidecar by default");
    assert_eq!(pod.containers[0].lifecycle, None);
    Ok(())
}

/// A revision's own pod fields reach the Deployment's pod template as
/// written, so existing manifests with volumes, a service account, pull
/// secrets or init containers run; the grace period stays the revision's
/// timeout.
#[test]
fn revision_pod_fields_reach_the_pod_template() -> Result<(), Box<dyn std::error::Error>> {
    let revision: knative_serving::api::Revision = serde_json::from_value(json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Revision",
        "metadata": {
            "name": "hello-00001",
            "namespace": "default",
            "uid": "rev-uid",
            "labels": {
                "serving.knative.dev/route": "hello",
                "serving.knative.dev/routingState": "active",
                "team": "web"
            },
            "annotations": {
                "serving.knative.dev/routes": "hello",
                "serving.knative.dev/routingStateModified": "2026-12-06T00:00:00Z",
                "serving.knative.dev/lastPinned": "1700000000",
                "serving.knative.dev/no-gc": "true",
                "autoscaling.knative.dev/min-scale": "1",
                "sidecar.istio.io/inject": "false"
            }
        },
        "spec": {
            "timeoutSeconds": 120,
            "serviceAccountName": "builder",
            "imagePullSecrets": [{"name": "regcred"}],
            "nodeSelector": {"disktype": "ssd"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "securityContext": {"runAsNonRoot": true},
            "terminationGracePeriodSeconds": 5,
            "volumes": [{"name": "config", "configMap": {"name": "app-config"}}],
            "initContainers": [{"name": "migrate", "image": "migrate:1"}],
            "containers": [{
                "image": "hello:1",
                "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}]
            }]
        }
    }))?;
    let spec = knative_serving::reconciler::workload_spec(
        &revision,
        &knative_serving::config::ServingConfig::default(),
    );
    assert!(
        spec.pod.containers.is_empty(),
        "containers are not repeated"
    );
    let d = desired_deployment(&spec, 1, &KubeWorkloadConfig::default())?;
    let pod = pod_spec(&d);
    assert_eq!(pod.service_account_name.as_deref(), Some("builder"));
    assert_eq!(
        pod.image_pull_secrets.as_ref().map(|s| s[0].name.clone()),
        Some("regcred".to_owned())
    );
    assert_eq!(
        pod.node_selector
            .as_ref()
            .and_then(|n| n.get("disktype"))
            .cloned(),
        Some("ssd".to_owned())
    );
    assert_eq!(pod.tolerations.as_ref().map(Vec::len), Some(1));
    assert_eq!(
        pod.security_context
            .as_ref()
            .and_then(|c| c.run_as_non_root),
        Some(true)
    );
    let volumes = pod.volumes.clone().unwrap_or_default();
    assert_eq!(volumes.len(), 1);
    assert_eq!(volumes[0].name, "config");
    assert_eq!(
        volumes[0].config_map.as_ref().map(|c| c.name.clone()),
        Some("app-config".to_owned())
    );
    let init: Vec<&str> = pod
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init, ["migrate"]);
    assert_eq!(pod.containers.len(), 1);
    assert_eq!(
        pod.containers[0]
            .volume_mounts
            .as_ref()
            .map(|m| m[0].mount_path.clone()),
        Some("/etc/app".to_owned())
    );
    assert_eq!(pod.termination_grace_period_seconds, Some(120));
    assert_eq!(pod.enable_service_links, Some(false));
    // Labels and annotations as upstream filters them: routing state,
    // route, Knative's own revision annotations and autoscaling settings
    // stay on the Revision.
    let template = d.spec.template.metadata.clone().unwrap_or_default();
    let labels = template.labels.unwrap_or_default();
    assert_eq!(labels.get("team").map(String::as_str), Some("web"));
    assert!(!labels.contains_key("serving.knative.dev/route"));
    assert!(!labels.contains_key("serving.knative.dev/routingState"));
    let expected = BTreeMap::from([("sidecar.istio.io/inject".to_owned(), "false".to_owned())]);
    assert_eq!(d.metadata.annotations.clone(), Some(expected.clone()));
    let mut pod_expected = expected;
    pod_expected.insert(
        DEFAULT_CONTAINER_ANNOTATION.to_owned(),
        pod.containers[0].name.clone(),
    );
    assert_eq!(pod.containers[0].name, "user-container");
    assert_eq!(template.annotations, Some(pod_expected));
    Ok(())
}

#[test]
fn long_revision_names_are_shortened_like_kmeta_child_name() {
    let name = deployment_name(&"a".repeat(60));
    assert!(name.len() <= 63, "{name}");
    assert!(name.ends_with("-deployment"), "{name}");
}

#[test]
fn serving_container_gets_name_port_env_and_probe() -> Result<(), BackendError> {
    struct Case {
        name: &'static str,
        container: Container,
        want_name: &'static str,
        want_port_name: Option<&'static str>,
        want_env: &'static [(&'static str, &'static str)],
        want_probe: Probe,
    }
    let tcp = |port| Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(port),
            ..TCPSocketAction::default()
        }),
        period_seconds: Some(1),
        ..Probe::default()
    };
    let cases = [
        Case {
            name: "unnamed, no port, no probe",
            container: image("hello"),
            want_name: "user-container",
            want_port_name: Some("user-port"),
            want_env: &[
                ("PORT", "8080"),
                ("K_REVISION", "hello-00001"),
                ("K_CONFIGURATION", "hello"),
                ("K_SERVICE", "hello"),
            ],
            want_probe: tcp(8080),
        },
        Case {
            name: "named, own port, own env, Knative's empty probe",
            container: Container {
                name: "app".into(),
                ports: Some(vec![ContainerPort {
                    name: Some("h2c".into()),
                    container_port: 8080,
                    ..ContainerPort::default()
                }]),
                env: Some(vec![EnvVar {
                    name: "K_SERVICE".into(),
                    value: Some("mine".into()),
                    ..EnvVar::default()
                }]),
                readiness_probe: Some(Probe {
                    success_threshold: Some(1),
                    tcp_socket: Some(TCPSocketAction {
                        port: IntOrString::Int(0),
                        ..TCPSocketAction::default()
                    }),
                    ..Probe::default()
                }),
                ..image("hello")
            },
            want_name: "app",
            want_port_name: Some("h2c"),
            want_env: &[
                ("K_SERVICE", "mine"),
                ("PORT", "8080"),
                ("K_REVISION", "hello-00001"),
                ("K_CONFIGURATION", "hello"),
            ],
            want_probe: Probe {
                success_threshold: Some(1),
                ..tcp(8080)
            },
        },
        Case {
            name: "httpGet probe without port, with a period",
            container: Container {
                readiness_probe: Some(Probe {
                    http_get: Some(HTTPGetAction {
                        path: Some("/healthz".into()),
                        port: IntOrString::Int(0),
                        ..HTTPGetAction::default()
                    }),
                    period_seconds: Some(5),
                    ..Probe::default()
                }),
                ..image("hello")
            },
            want_name: "user-container",
            want_port_name: Some("user-port"),
            want_env: &[
                ("PORT", "8080"),
                ("K_REVISION", "hello-00001"),
                ("K_CONFIGURATION", "hello"),
                ("K_SERVICE", "hello"),
            ],
            want_probe: Probe {
                http_get: Some(HTTPGetAction {
                    path: Some("/healthz".into()),
                    port: IntOrString::Int(8080),
                    ..HTTPGetAction::default()
                }),
                period_seconds: Some(5),
                ..Probe::default()
            },
        },
    ];
    for case in cases {
        let d = desired_deployment(&spec(case.container), 1, &KubeWorkloadConfig::default())?;
        let c = &pod_spec(&d).containers[0];
        assert_eq!(c.name, case.want_name, "{}", case.name);
        let port = c.ports.iter().flatten().next();
        assert_eq!(port.map(|p| p.container_port), Some(8080), "{}", case.name);
        assert_eq!(
            port.and_then(|p| p.name.as_deref()),
            case.want_port_name,
            "{}",
            case.name
        );
        let want_env: BTreeMap<String, String> = case
            .want_env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(env(c), want_env, "{}", case.name);
        assert_eq!(
            c.readiness_probe.as_ref(),
            Some(&case.want_probe),
            "{}",
            case.name
        );
    }
    Ok(())
}

#[test]
fn a_missing_serving_container_is_unsupported() {
    let mut s = spec(image("hello"));
    s.serving_container = 3;
    let result = desired_deployment(&s, 1, &KubeWorkloadConfig::default());
    assert!(
        matches!(result, Err(BackendError::Unsupported { .. })),
        "{result:?}"
    );
}

#[test]
fn service_is_named_like_the_revision_and_targets_the_container_port() {
    let cases = [
        (None, "http", None),
        (Some("h2c"), "http2", Some("kubernetes.io/h2c")),
    ];
    for (port_name, want_name, want_protocol) in cases {
        let container = Container {
            ports: Some(vec![ContainerPort {
                name: port_name.map(str::to_owned),
                container_port: 9000,
                ..ContainerPort::default()
            }]),
            ..image("hello")
        };
        let mut s = spec(container);
        s.container_port = 9000;
        let svc = desired_service(&s, &KubeWorkloadConfig::default());
        assert_eq!(svc.metadata.name.as_deref(), Some("hello-00001"));
        assert_eq!(svc.metadata.owner_references, Some(vec![owner()]));
        let svc_spec = svc.spec.expect("a spec");
        assert_eq!(
            svc_spec.selector,
            Some(BTreeMap::from([(
                keys::REVISION_UID.to_owned(),
                "rev-uid".to_owned()
            )]))
        );
        let port = &svc_spec.ports.expect("ports")[0];
        assert_eq!(port.port, 80);
        assert_eq!(port.name.as_deref(), Some(want_name));
        assert_eq!(port.app_protocol.as_deref(), want_protocol);
        assert_eq!(port.target_port, Some(IntOrString::Int(9000)));
    }
}

fn slice(endpoints: &[(&str, &str, Option<bool>, Option<bool>)]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some("hello-00001-abcde".into()),
            namespace: Some("default".into()),
            labels: Some(BTreeMap::from([
                (SERVICE_NAME_LABEL.to_owned(), "hello-00001".to_owned()),
                (keys::REVISION.to_owned(), "hello-00001".to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            ..EndpointPort::default()
        }]),
        endpoints: Some(
            endpoints
                .iter()
                .map(|(pod, ip, ready, terminating)| SliceEndpoint {
                    addresses: vec![(*ip).to_owned()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        terminating: *terminating,
                        ..EndpointConditions::default()
                    }),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        name: Some((*pod).to_owned()),
                        ..ObjectReference::default()
                    }),
                    ..SliceEndpoint::default()
                })
                .collect(),
        ),
    }
}

fn pod(name: &str, status: PodStatus) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            labels: Some(BTreeMap::from([(
                keys::REVISION.to_owned(),
                "hello-00001".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(status),
    }
}

fn container_status(state: ContainerState, last: Option<ContainerState>) -> PodStatus {
    PodStatus {
        container_statuses: Some(vec![ContainerStatus {
            name: "user-container".into(),
            state: Some(state),
            last_state: last,
            ..ContainerStatus::default()
        }]),
        ..PodStatus::default()
    }
}

fn waiting(reason: &str, message: &str) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message: Some(message.into()),
        }),
        ..ContainerState::default()
    }
}

fn deployment_with(replicas: i32, conditions: Vec<DeploymentCondition>) -> Deployment {
    Deployment {
        status: Some(DeploymentStatus {
            replicas: Some(replicas),
            conditions: Some(conditions),
            ..DeploymentStatus::default()
        }),
        ..Deployment::default()
    }
}

fn failure(reason: &str, message: &str, container: bool) -> Option<WorkloadFailure> {
    Some(WorkloadFailure {
        reason: reason.into(),
        message: message.into(),
        container,
    })
}

#[test]
fn status_follows_slices_pods_and_deployment_conditions() {
    let crashed = ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: 1,
            message: Some("panic: boom\n".into()),
            ..ContainerStateTerminated::default()
        }),
        ..ContainerState::default()
    };
    let deadline = DeploymentCondition {
        type_: Some("Progressing".into()),
        status: Some("False".into()),
        reason: Some("ProgressDeadlineExceeded".into()),
        message: Some("ReplicaSet has timed out progressing.".into()),
        ..DeploymentCondition::default()
    };
    let unschedulable = PodStatus {
        conditions: Some(vec![PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some("0/1 nodes are available: 1 Insufficient cpu.".into()),
            ..PodCondition::default()
        }]),
        ..PodStatus::default()
    };
    struct Case {
        name: &'static str,
        observed: Observation,
        want_actual: u32,
        want_ready: Vec<(&'static str, &'static str)>,
        want_failure: Option<WorkloadFailure>,
    }
    let observation =
        |deployment: Option<Deployment>, pods: Vec<Pod>, slices: Vec<EndpointSlice>| Observation {
            deployment,
            pods: pods.into_iter().map(|p| (p.name_any(), p)).collect(),
            slices: slices.into_iter().map(|s| (s.name_any(), s)).collect(),
        };
    let cases = vec![
        Case {
            name: "nothing observed",
            observed: Observation::default(),
            want_actual: 0,
            want_ready: vec![],
            want_failure: None,
        },
        Case {
            name: "ready, unready and terminating endpoints",
            observed: observation(
                Some(deployment_with(3, vec![])),
                vec![],
                vec![slice(&[
                    ("pod-b", "10.0.0.2", Some(true), None),
                    ("pod-a", "10.0.0.1", None, None),
                    ("pod-c", "10.0.0.3", Some(false), None),
                    ("pod-d", "10.0.0.4", Some(true), Some(true)),
                ])],
            ),
            want_actual: 3,
            want_ready: vec![("pod-a", "10.0.0.1:8080"), ("pod-b", "10.0.0.2:8080")],
            want_failure: None,
        },
        Case {
            name: "crash loop reports the exit code",
            observed: observation(
                Some(deployment_with(1, vec![deadline.clone()])),
                vec![pod(
                    "pod-a",
                    container_status(waiting("CrashLoopBackOff", "back-off"), Some(crashed)),
                )],
                vec![],
            ),
            want_actual: 1,
            want_ready: vec![],
            want_failure: failure("ExitCode1", "Container failed with: panic: boom", true),
        },
        Case {
            name: "image pull failure is a resources problem",
            observed: observation(
                None,
                vec![pod(
                    "pod-a",
                    container_status(
                        waiting("ImagePullBackOff", "Back-off pulling image \"nope\""),
                        None,
                    ),
                )],
                vec![],
            ),
            want_actual: 0,
            want_ready: vec![],
            want_failure: failure("ImagePullBackOff", "Back-off pulling image \"nope\"", false),
        },
        Case {
            name: "unschedulable pod",
            observed: observation(None, vec![pod("pod-a", unschedulable)], vec![]),
            want_actual: 0,
            want_ready: vec![],
            want_failure: failure(
                "Unschedulable",
                "0/1 nodes are available: 1 Insufficient cpu.",
                false,
            ),
        },
        Case {
            name: "progress deadline from the Deployment",
            observed: observation(
                Some(deployment_with(1, vec![deadline.clone()])),
                vec![],
                vec![],
            ),
            want_actual: 1,
            want_ready: vec![],
            want_failure: failure(
                "ProgressDeadlineExceeded",
                "ReplicaSet has timed out progressing.",
                false,
            ),
        },
        Case {
            name: "a ready replica clears failures",
            observed: observation(
                Some(deployment_with(2, vec![deadline])),
                vec![],
                vec![slice(&[("pod-a", "10.0.0.1", Some(true), None)])],
            ),
            want_actual: 2,
            want_ready: vec![("pod-a", "10.0.0.1:8080")],
            want_failure: None,
        },
    ];
    for case in cases {
        let status = workload_status(2, &case.observed);
        assert_eq!(status.desired, 2, "{}", case.name);
        assert_eq!(status.actual, case.want_actual, "{}", case.name);
        let ready: Vec<(String, String)> = status
            .ready
            .iter()
            .map(|e| (e.replica.clone(), e.address.to_string()))
            .collect();
        let want: Vec<(String, String)> = case
            .want_ready
            .iter()
            .map(|(r, a)| ((*r).to_owned(), (*a).to_owned()))
            .collect();
        assert_eq!(ready, want, "{}", case.name);
        assert_eq!(status.failure, case.want_failure, "{}", case.name);
    }
}

/// ensure → scale → status → remove, each call checked against the API.
#[tokio::test]
async fn ensure_scale_and_remove_call_the_api_server() -> Result<(), BackendError> {
    let (client, mut server) = ApiServer::new();
    let backend = KubeWorkloadBackend::new(client, KubeWorkloadConfig::default());
    let key = WorkloadKey::new("default", "hello-00001");

    let call = {
        let backend = backend.clone();
        tokio::spawn(async move { backend.ensure(&spec(image("hello"))).await })
    };
    let deployment_path = format!("{DEPLOYMENTS}/hello-00001-deployment");
    server
        .expect(Method::GET, &deployment_path, &[], 404, not_found())
        .await;
    let applied = server
        .expect(Method::PATCH, &deployment_path, APPLY, 200, json!({}))
        .await
        .body;
    assert_eq!(applied["apiVersion"], "apps/v1");
    assert_eq!(applied["kind"], "Deployment");
    assert_eq!(applied["metadata"]["name"], "hello-00001-deployment");
    assert_eq!(
        applied["metadata"]["labels"]["serving.knative.dev/revision"],
        "hello-00001"
    );
    assert_eq!(
        applied["metadata"]["labels"]["serving.knative.dev/revisionUID"],
        "rev-uid"
    );
    assert_eq!(applied["metadata"]["labels"]["app"], "hello-00001");
    assert_eq!(
        applied["metadata"]["ownerReferences"],
        json!([{
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Revision",
            "name": "hello-00001",
            "uid": "rev-uid",
            "controller": true,
            "blockOwnerDeletion": true,
        }])
    );
    assert_eq!(
        applied["spec"]["replicas"], 0,
        "a new revision starts at zero"
    );
    assert_eq!(
        applied["spec"]["template"]["spec"]["containers"][0]["name"],
        "user-container"
    );
    let service_path = format!("{SERVICES}/hello-00001");
    let service = server
        .expect(Method::PATCH, &service_path, APPLY, 200, json!({}))
        .await
        .body;
    assert_eq!(service["apiVersion"], "v1");
    assert_eq!(service["kind"], "Service");
    assert_eq!(service["metadata"]["name"], "hello-00001");
    assert_eq!(service["metadata"]["ownerReferences"][0]["uid"], "rev-uid");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], 8080);
    let private_path = format!("{SERVICES}/hello-00001-private");
    let private = server
        .expect(Method::PATCH, &private_path, APPLY, 200, json!({}))
        .await
        .body;
    assert_eq!(private["kind"], "Service");
    assert_eq!(private["metadata"]["name"], "hello-00001-private");
    assert_eq!(
        private["metadata"]["labels"]["networking.internal.knative.dev/serviceType"],
        "Private"
    );
    assert_eq!(
        private["metadata"]["labels"]["serving.knative.dev/revision"],
        "hello-00001"
    );
    assert_eq!(private["metadata"]["ownerReferences"][0]["uid"], "rev-uid");
    assert_eq!(private["spec"]["selector"], service["spec"]["selector"]);
    assert_eq!(
        private["spec"]["ports"],
        json!([{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}])
    );
    call.await.expect("ensure runs")?;

    let call = {
        let backend = backend.clone();
        let key = key.clone();
        tokio::spawn(async move { backend.scale(&key, 3).await })
    };
    let patch = server
        .expect(
            Method::PATCH,
            &deployment_path,
            &[("fieldManager", "knative-operator")],
            200,
            json!({}),
        )
        .await
        .body;
    assert_eq!(patch, json!({"spec": {"replicas": 3}}));
    call.await.expect("scale runs")?;
    assert_eq!(backend.status(&key)?.borrow().desired, 3);

    // A second ensure applies the scale it knows, without reading it back.
    let call = {
        let backend = backend.clone();
        tokio::spawn(async move { backend.ensure(&spec(image("hello"))).await })
    };
    let applied = server
        .expect(Method::PATCH, &deployment_path, APPLY, 200, json!({}))
        .await
        .body;
    assert_eq!(applied["spec"]["replicas"], 3);
    server
        .expect(Method::PATCH, &service_path, APPLY, 200, json!({}))
        .await;
    server
        .expect(Method::PATCH, &private_path, APPLY, 200, json!({}))
        .await;
    call.await.expect("ensure runs")?;

    let call = {
        let backend = backend.clone();
        let key = key.clone();
        tokio::spawn(async move { backend.remove(&key).await })
    };
    let deleted = server
        .expect(
            Method::DELETE,
            &deployment_path,
            &[],
            200,
            status(200, "Success"),
        )
        .await
        .body;
    assert_eq!(deleted["propagationPolicy"], "Background");
    server
        .expect(Method::DELETE, &service_path, &[], 404, not_found())
        .await;
    let deleted = server
        .expect(
            Method::DELETE,
            &private_path,
            &[],
            200,
            status(200, "Success"),
        )
        .await
        .body;
    assert_eq!(deleted["propagationPolicy"], "Background");
    call.await.expect("remove runs")?;
    server.expect_no_request().await;
    assert!(matches!(
        backend.status(&key),
        Err(BackendError::NotFound(_))
    ));
    Ok(())
}

#[tokio::test]
async fn scaling_a_missing_deployment_is_not_found() {
    let (client, mut server) = ApiServer::new();
    let backend = KubeWorkloadBackend::new(client, KubeWorkloadConfig::default());
    let call = tokio::spawn(async move {
        backend
            .scale(&WorkloadKey::new("default", "gone-00001"), 1)
            .await
    });
    server
        .expect(
            Method::PATCH,
            &format!("{DEPLOYMENTS}/gone-00001-deployment"),
            &[("fieldManager", "knative-operator")],
            404,
            not_found(),
        )
        .await;
    let result = call.await.expect("scale runs");
    assert!(
        matches!(result, Err(BackendError::NotFound(_))),
        "{result:?}"
    );
}

/// Watch events (an initial list, then changes) reach the status channel.
#[tokio::test]
async fn watch_events_update_the_status_channel() -> Result<(), BackendError> {
    let (client, mut server) = ApiServer::new();
    let backend = KubeWorkloadBackend::new(client, KubeWorkloadConfig::default());
    let key = WorkloadKey::new("default", "hello-00001");
    let call = {
        let backend = backend.clone();
        tokio::spawn(async move { backend.ensure(&spec(image("hello"))).await })
    };
    let deployment_path = format!("{DEPLOYMENTS}/hello-00001-deployment");
    server
        .expect(Method::GET, &deployment_path, &[], 404, not_found())
        .await;
    server
        .expect(Method::PATCH, &deployment_path, APPLY, 200, json!({}))
        .await;
    for name in ["hello-00001", "hello-00001-private"] {
        server
            .expect(
                Method::PATCH,
                &format!("{SERVICES}/{name}"),
                APPLY,
                200,
                json!({}),
            )
            .await;
    }
    call.await.expect("ensure runs")?;
    let mut status = backend.status(&key)?;

    let mut slices = Vec::new();
    backend.observe(Event::Init, &mut slices);
    backend.observe(
        Event::InitApply(slice(&[("pod-a", "10.0.0.1", Some(true), None)])),
        &mut slices,
    );
    assert!(
        status.borrow().ready.is_empty(),
        "nothing before the list is complete"
    );
    backend.observe(Event::InitDone, &mut slices);
    assert!(status.has_changed().unwrap_or(false));
    assert_eq!(status.borrow_and_update().ready.len(), 1);

    backend.observe(
        Event::Apply(slice(&[("pod-a", "10.0.0.1", Some(false), None)])),
        &mut slices,
    );
    assert!(status.borrow_and_update().ready.is_empty());

    // The private Service's slices (with the revision's labels too) do
    // not count.
    let mut private = slice(&[("pod-a", "10.0.0.1", Some(true), None)]);
    private.metadata.name = Some("hello-00001-private-fghij".into());
    private.labels_mut().insert(
        SERVICE_NAME_LABEL.to_owned(),
        "hello-00001-private".to_owned(),
    );
    assert_eq!(private.key(), None);
    backend.observe(Event::Apply(private), &mut slices);
    assert!(!status.has_changed().unwrap_or(true));
    assert!(status.borrow().ready.is_empty());

    let mut pods = Vec::new();
    backend.observe(
        Event::Apply(pod(
            "pod-a",
            container_status(waiting("ErrImagePull", "not found"), None),
        )),
        &mut pods,
    );
    assert_eq!(
        status.borrow_and_update().failure,
        failure("ErrImagePull", "not found", false)
    );
    backend.observe(Event::Delete(pod("pod-a", PodStatus::default())), &mut pods);
    assert_eq!(status.borrow_and_update().failure, None);
    Ok(())
}

fn with_sidecar() -> KubeWorkloadConfig {
    KubeWorkloadConfig {
        queue_proxy: Some(QueueProxySidecar::new("example.com/knative-operator:dev")),
        ..KubeWorkloadConfig::default()
    }
}

/// The pod's containers by name.
fn containers(deployment: &Deployment) -> BTreeMap<String, Container> {
    pod_spec(deployment)
        .containers
        .iter()
        .map(|c| (c.name.clone(), c.clone()))
        .collect()
}

fn http_probe(path: &str, port: i32, period: Option<i32>) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            ..HTTPGetAction::default()
        }),
        period_seconds: period,
        ..Probe::default()
    }
}

/// What the queue-proxy's own readiness probe is: a Knative probe of 8012.
fn knative_probe(period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            port: IntOrString::Int(8012),
            http_headers: Some(vec![HTTPHeader {
                name: "K-Network-Probe".into(),
                value: "queue".into(),
            }]),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        ..Probe::default()
    }
}

#[test]
fn queue_proxy_sidecar_fronts_the_serving_container() -> Result<(), BackendError> {
    struct Case {
        name: &'static str,
        probe: Option<Probe>,
        /// The probe the kubelet still runs on the user container.
        want_user_probe: Option<Probe>,
        /// `SERVING_READINESS_PROBE`, as JSON.
        want_app_probe: serde_json::Value,
        /// What `knative queue-proxy` makes of it.
        want_readiness: Readiness,
        want_sidecar_probe: Probe,
    }
    let tcp_json = json!({"tcpSocket": {"host": "127.0.0.1", "port": 8080}});
    let exec = Probe {
        exec: Some(ExecAction {
            command: Some(vec!["ready".into()]),
        }),
        period_seconds: Some(3),
        ..Probe::default()
    };
    let grpc = Probe {
        grpc: Some(GRPCAction {
            port: 0,
            ..GRPCAction::default()
        }),
        ..Probe::default()
    };
    let cases = [
        Case {
            name: "no probe: TCP on the container port",
            probe: None,
            want_user_probe: None,
            want_app_probe: json!({"tcpSocket": {"host": "127.0.0.1", "port": 8080}, "periodSeconds": null}),
            want_readiness: Readiness::Tcp,
            want_sidecar_probe: knative_probe(1),
        },
        Case {
            name: "Knative's default TCP probe (port 0, success threshold 1)",
            probe: Some(Probe {
                tcp_socket: Some(TCPSocketAction {
                    port: IntOrString::Int(0),
                    ..TCPSocketAction::default()
                }),
                success_threshold: Some(1),
                ..Probe::default()
            }),
            want_user_probe: None,
            want_app_probe: json!({
                "tcpSocket": {"host": "127.0.0.1", "port": 8080},
                "successThreshold": 1,
            }),
            want_readiness: Readiness::Tcp,
            want_sidecar_probe: Probe {
                success_threshold: Some(1),
                ..knative_probe(1)
            },
        },
        Case {
            name: "httpGet without a port, every 5 s",
            probe: Some(http_probe("/healthz", 0, Some(5))),
            want_user_probe: None,
            want_app_probe: json!({
                "httpGet": {
                    "host": "127.0.0.1",
                    "path": "/healthz",
                    "port": 8080,
                    "scheme": "HTTP",
                    "httpHeaders": [{"name": "K-Kubelet-Probe", "value": "queue"}],
                },
                "periodSeconds": 5,
                "timeoutSeconds": 1,
            }),
            want_readiness: Readiness::Http {
                path: "/healthz".into(),
                port: None,
                headers: vec![("K-Kubelet-Probe".into(), "queue".into())],
            },
            want_sidecar_probe: knative_probe(5),
        },
        Case {
            name: "httpGet on its own port",
            probe: Some(http_probe("/ready", 9100, None)),
            want_user_probe: None,
            want_app_probe: json!({
                "httpGet": {
                    "host": "127.0.0.1",
                    "path": "/ready",
                    "port": 9100,
                    "scheme": "HTTP",
                    "httpHeaders": [{"name": "K-Kubelet-Probe", "value": "queue"}],
                },
            }),
            want_readiness: Readiness::Http {
                path: "/ready".into(),
                port: Some(9100),
                headers: vec![("K-Kubelet-Probe".into(), "queue".into())],
            },
            want_sidecar_probe: knative_probe(1),
        },
        Case {
            name: "exec stays with the kubelet, the queue-proxy checks TCP",
            probe: Some(exec.clone()),
            want_user_probe: Some(exec.clone()),
            want_app_probe: json!({
                "tcpSocket": {"host": "127.0.0.1", "port": 8080},
                "periodSeconds": 3,
                "timeoutSeconds": 1,
            }),
            want_readiness: Readiness::Tcp,
            want_sidecar_probe: knative_probe(3),
        },
        Case {
            name: "gRPC stays with the kubelet (port filled in)",
            probe: Some(grpc),
            want_user_probe: Some(Probe {
                grpc: Some(GRPCAction {
                    port: 8080,
                    ..GRPCAction::default()
                }),
                period_seconds: Some(1),
                ..Probe::default()
            }),
            want_app_probe: tcp_json.clone(),
            want_readiness: Readiness::Tcp,
            want_sidecar_probe: knative_probe(1),
        },
    ];
    for case in cases {
        let mut s = spec(Container {
            readiness_probe: case.probe.clone(),
            ..image("hello")
        });
        s.container_concurrency = 10;
        s.response_start_timeout = Some(Duration::from_secs(5));
        s.idle_timeout = Some(Duration::from_secs(7));
        let d = desired_deployment(&s, 1, &with_sidecar())?;
        let names: Vec<&str> = pod_spec(&d)
            .containers
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["user-container", "queue-proxy"], "{}", case.name);
        let by_name = containers(&d);
        let user = &by_name["user-container"];
        let qp = &by_name["queue-proxy"];
        assert_eq!(
            user.readiness_probe, case.want_user_probe,
            "{}: the user container's probe",
            case.name
        );
        assert_eq!(
            qp.readiness_probe.as_ref(),
            Some(&case.want_sidecar_probe),
            "{}: the sidecar's probe",
            case.name
        );
        let env = env(qp);
        let app_probe: serde_json::Value = serde_json::from_str(&env["SERVING_READINESS_PROBE"])
            .expect("SERVING_READINESS_PROBE is JSON");
        let mut want_app_probe = case.want_app_probe.clone();
        if let Some(o) = want_app_probe.as_object_mut() {
            o.retain(|_, v| !v.is_null());
        }
        assert_eq!(app_probe, want_app_probe, "{}", case.name);

        // The sidecar's environment is what `knative queue-proxy` reads.
        let parsed = QueueProxyEnv::from_vars(|k| env.get(k).cloned()).map_err(|e| {
            BackendError::Unsupported {
                key: s.key.clone(),
                message: format!("{}: {e}", case.name),
            }
        })?;
        assert_eq!(parsed.serving_port, 8012, "{}", case.name);
        assert_eq!(parsed.admin_port, 8022, "{}", case.name);
        assert_eq!(parsed.metrics_port, 9090, "{}", case.name);
        assert_eq!(parsed.drain, Duration::from_secs(30), "{}", case.name);
        assert_eq!(
            parsed.proxy.app.to_string(),
            "127.0.0.1:8080",
            "{}",
            case.name
        );
        assert_eq!(parsed.proxy.container_concurrency, 10, "{}", case.name);
        assert_eq!(
            (
                parsed.proxy.timeouts.total,
                parsed.proxy.timeouts.response_start,
                parsed.proxy.timeouts.idle
            ),
            (
                Duration::from_secs(300),
                Some(Duration::from_secs(5)),
                Some(Duration::from_secs(7))
            ),
            "{}",
            case.name
        );
        assert_eq!(parsed.proxy.readiness, case.want_readiness, "{}", case.name);
    }
    Ok(())
}

#[test]
fn queue_proxy_sidecar_has_upstream_ports_env_and_hooks() -> Result<(), BackendError> {
    let config = KubeWorkloadConfig {
        queue_proxy: Some(
            QueueProxySidecar::new("qp:1").with_command(vec!["/qp".into(), "serve".into()]),
        ),
        ..KubeWorkloadConfig::default()
    };
    let mut s = spec(image("hello"));
    s.termination_grace_period = Duration::from_secs(10);
    let d = desired_deployment(&s, 1, &config)?;
    let by_name = containers(&d);
    let qp = &by_name["queue-proxy"];
    assert_eq!(qp.image.as_deref(), Some("qp:1"));
    assert_eq!(qp.command, Some(vec!["/qp".to_owned(), "serve".to_owned()]));
    let ports: Vec<(&str, i32)> = qp
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.as_deref().unwrap_or_default(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [
            ("queue-port", 8012),
            ("http-queueadm", 8022),
            ("http-autometric", 9090),
            ("http-usermetric", 9091),
        ]
    );
    let want_env: BTreeMap<String, String> = [
        ("SERVING_NAMESPACE", "default"),
        ("SERVING_SERVICE", "hello"),
        ("SERVING_CONFIGURATION", "hello"),
        ("SERVING_REVISION", "hello-00001"),
        ("QUEUE_SERVING_PORT", "8012"),
        ("QUEUE_ADMIN_PORT", "8022"),
        ("QUEUE_METRICS_PORT", "9090"),
        ("QUEUE_DRAIN_SECONDS", "10"),
        ("CONTAINER_CONCURRENCY", "0"),
        ("REVISION_TIMEOUT_SECONDS", "10"),
        ("REVISION_RESPONSE_START_TIMEOUT_SECONDS", "0"),
        ("REVISION_IDLE_TIMEOUT_SECONDS", "0"),
        ("USER_PORT", "8080"),
        ("SERVING_POD", ""),
        ("SERVING_POD_IP", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let mut got = env(qp);
    assert!(got.remove("SERVING_READINESS_PROBE").is_some());
    assert_eq!(got, want_env);
    let pod_fields: Vec<(&str, Option<&str>)> = qp
        .env
        .iter()
        .flatten()
        .filter_map(|e| {
            let field = e.value_from.as_ref()?.field_ref.as_ref()?;
            Some((e.name.as_str(), Some(field.field_path.as_str())))
        })
        .collect();
    assert_eq!(
        pod_fields,
        [
            ("SERVING_POD", Some("metadata.name")),
            ("SERVING_POD_IP", Some("status.podIP"))
        ]
    );
    let security = qp.security_context.clone().unwrap_or_default();
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let cpu = qp
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("cpu"))
        .map(|q| q.0.clone());
    assert_eq!(cpu.as_deref(), Some("25m"));

    // The user container waits for the drain before it is stopped.
    let pre_stop = by_name["user-container"]
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.http_get.clone());
    assert_eq!(
        pre_stop,
        Some(HTTPGetAction {
            path: Some("/wait-for-drain".into()),
            port: IntOrString::Int(8022),
            ..HTTPGetAction::default()
        })
    );
    // Its own preStop hook is kept.
    let own = Lifecycle {
        pre_stop: Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec!["sleep".into(), "5".into()]),
            }),
            ..LifecycleHandler::default()
        }),
        ..Lifecycle::default()
    };
    let d = desired_deployment(
        &spec(Container {
            lifecycle: Some(own.clone()),
            ..image("hello")
        }),
        1,
        &config,
    )?;
    assert_eq!(containers(&d)["user-container"].lifecycle, Some(own));
    Ok(())
}

#[test]
fn queue_proxy_ports_and_name_are_reserved() {
    for (name, container) in [
        (
            "port 8012",
            Container {
                ports: Some(vec![ContainerPort {
                    container_port: 8012,
                    ..ContainerPort::default()
                }]),
                ..image("hello")
            },
        ),
        (
            "container named queue-proxy",
            Container {
                name: "queue-proxy".into(),
                ..image("hello")
            },
        ),
    ] {
        let mut s = spec(container.clone());
        if let Some(port) = container.ports.iter().flatten().next() {
            s.container_port = u16::try_from(port.container_port).unwrap_or_default();
        }
        let result = desired_deployment(&s, 1, &with_sidecar());
        assert!(
            matches!(result, Err(BackendError::Unsupported { .. })),
            "{name}: {result:?}"
        );
        assert!(
            desired_deployment(&s, 1, &KubeWorkloadConfig::default()).is_ok(),
            "{name}: fine without a sidecar"
        );
    }
}

#[test]
fn service_targets_the_queue_proxy_when_there_is_one() {
    let cases = [
        (None, KubeWorkloadConfig::default(), "http", None, 9000),
        (
            Some("h2c"),
            KubeWorkloadConfig::default(),
            "http2",
            Some("kubernetes.io/h2c"),
            9000,
        ),
        (None, with_sidecar(), "http", None, 8012),
        // The queue-proxy speaks HTTP/1.
        (Some("h2c"), with_sidecar(), "http", None, 8012),
    ];
    for (port_name, config, want_name, want_protocol, want_target) in cases {
        let mut s = spec(Container {
            ports: Some(vec![ContainerPort {
                name: port_name.map(str::to_owned),
                container_port: 9000,
                ..ContainerPort::default()
            }]),
            ..image("hello")
        });
        s.container_port = 9000;
        let svc = desired_service(&s, &config);
        let ports = svc.spec.and_then(|s| s.ports).unwrap_or_default();
        assert_eq!(ports.len(), 1);
        let port = &ports[0];
        let sidecar = config.queue_proxy.is_some();
        assert_eq!(port.port, 80, "{port_name:?} sidecar={sidecar}");
        assert_eq!(
            port.name.as_deref(),
            Some(want_name),
            "{port_name:?} sidecar={sidecar}"
        );
        assert_eq!(
            port.app_protocol.as_deref(),
            want_protocol,
            "{port_name:?} sidecar={sidecar}"
        );
        assert_eq!(
            port.target_port,
            Some(IntOrString::Int(want_target)),
            "{port_name:?} sidecar={sidecar}"
        );
    }
}

/// With a sidecar, ensure applies a Deployment that runs it and a Service
/// that targets it; the ready endpoints are then the queue-proxies'.
#[tokio::test]
async fn ensure_applies_the_queue_proxy_sidecar() -> Result<(), BackendError> {
    let (client, mut server) = ApiServer::new();
    let backend = KubeWorkloadBackend::new(client, with_sidecar());
    let call = {
        let backend = backend.clone();
        let mut s = spec(Container {
            readiness_probe: Some(http_probe("/healthz", 0, None)),
            ..image("hello")
        });
        s.container_concurrency = 1;
        tokio::spawn(async move { backend.ensure(&s).await })
    };
    let deployment_path = format!("{DEPLOYMENTS}/hello-00001-deployment");
    server
        .expect(Method::GET, &deployment_path, &[], 404, not_found())
        .await;
    let applied = server
        .expect(Method::PATCH, &deployment_path, APPLY, 200, json!({}))
        .await
        .body;
    let containers = &applied["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers[0]["name"], "user-container");
    assert_eq!(
        containers[0]["readinessProbe"],
        serde_json::Value::Null,
        "the queue-proxy runs the app's probe"
    );
    assert_eq!(
        containers[0]["lifecycle"]["preStop"]["httpGet"],
        json!({"path": "/wait-for-drain", "port": 8022})
    );
    let qp = &containers[1];
    assert_eq!(qp["name"], "queue-proxy");
    assert_eq!(qp["image"], "example.com/knative-operator:dev");
    assert_eq!(
        qp["command"],
        json!(["/usr/local/bin/knative", "queue-proxy"])
    );
    assert_eq!(
        qp["ports"][0],
        json!({"name": "queue-port", "containerPort": 8012, "protocol": "TCP"})
    );
    assert_eq!(
        qp["readinessProbe"]["httpGet"],
        json!({"port": 8012, "httpHeaders": [{"name": "K-Network-Probe", "value": "queue"}]})
    );
    let env: BTreeMap<String, serde_json::Value> = qp["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?.to_owned(), e["value"].clone())))
        .collect();
    assert_eq!(env["CONTAINER_CONCURRENCY"], "1");
    assert_eq!(env["USER_PORT"], "8080");
    assert_eq!(env["REVISION_TIMEOUT_SECONDS"], "300");
    let probe: serde_json::Value = env["SERVING_READINESS_PROBE"]
        .as_str()
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default();
    assert_eq!(probe["httpGet"]["path"], "/healthz");
    assert_eq!(probe["httpGet"]["port"], 8080);

    let service = server
        .expect(
            Method::PATCH,
            &format!("{SERVICES}/hello-00001"),
            APPLY,
            200,
            json!({}),
        )
        .await
        .body;
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8012}])
    );
    let private = server
        .expect(
            Method::PATCH,
            &format!("{SERVICES}/hello-00001-private"),
            APPLY,
            200,
            json!({}),
        )
        .await
        .body;
    assert_eq!(
        private["spec"]["ports"],
        json!([
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8012},
            {"name": "http-queueadm", "port": 8022, "protocol": "TCP", "targetPort": 8022},
            {"name": "http-autometric", "port": 9090, "protocol": "TCP", "targetPort": 9090},
            {"name": "http-usermetric", "port": 9091, "protocol": "TCP", "targetPort": 9091},
        ])
    );
    call.await.expect("ensure runs")?;
    server.expect_no_request().await;
    Ok(())
}

#[test]
fn private_service_selects_the_revision_pods_with_queue_proxy_ports_only_with_a_sidecar() {
    let cases = [
        (
            None,
            KubeWorkloadConfig::default(),
            vec![("http2", 80, 9000)],
        ),
        (
            None,
            with_sidecar(),
            vec![
                ("http", 80, 8012),
                ("http-queueadm", 8022, 8022),
                ("http-autometric", 9090, 9090),
                ("http-usermetric", 9091, 9091),
            ],
        ),
        (
            Some("rev-uid"),
            KubeWorkloadConfig::default(),
            vec![("http2", 80, 9000)],
        ),
    ];
    for (uid, config, want_ports) in cases {
        let mut s = spec(Container {
            ports: Some(vec![ContainerPort {
                name: Some("h2c".into()),
                container_port: 9000,
                ..ContainerPort::default()
            }]),
            ..image("hello")
        });
        s.container_port = 9000;
        if uid.is_none() {
            s.labels.remove(keys::REVISION_UID);
        }
        let public = desired_service(&s, &config);
        let private = desired_private_service(&s, &config);
        let deployment = desired_deployment(&s, 1, &config).expect("a deployment");
        assert_eq!(
            private.metadata.name.as_deref(),
            Some("hello-00001-private")
        );
        assert_eq!(private.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(private.metadata.owner_references, Some(vec![owner()]));
        let mut want_labels = s.labels.clone();
        want_labels.insert(
            "networking.internal.knative.dev/serviceType".into(),
            "Private".into(),
        );
        assert_eq!(private.metadata.labels, Some(want_labels));
        let spec = private.spec.expect("a spec");
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.selector, deployment.spec.selector.match_labels);
        assert_eq!(spec.selector, public.spec.and_then(|p| p.selector));
        let ports: Vec<(&str, i32, IntOrString)> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| {
                (
                    p.name.as_deref().unwrap_or_default(),
                    p.port,
                    p.target_port.clone().unwrap_or(IntOrString::Int(0)),
                )
            })
            .collect();
        let want: Vec<(&str, i32, IntOrString)> = want_ports
            .iter()
            .map(|(name, port, target)| (*name, *port, IntOrString::Int(*target)))
            .collect();
        assert_eq!(ports, want, "uid={uid:?}");
    }
    assert_eq!(
        private_service_name(&"r".repeat(70)).len(),
        63,
        "shortened like kmeta.ChildName"
    );
}
