//! The operator's own manifests (issue 9 §4): the RBAC it needs, with the
//! least privileges, and a Namespace + Deployment + Service to run it.
//! `knative-operator rbac` and `knative-operator deploy` print them.
//!
//! The rules follow what the reconcilers and backends do:
//!
//! | API group | resources | verbs |
//! |---|---|---|
//! | every Knative group, `tekton.dev` (from [`crds::all`]) | the kinds, `/status`, `/finalizers` | read, write, delete (Tasks and Pipelines: read only) |
//! | `apps` | deployments | read, write, delete (revisions' and ContainerSources' Deployments; SinkBinding subjects) |
//! | `apps` | statefulsets, daemonsets | get, list, patch (SinkBinding subjects' environment) |
//! | `batch` | jobs, cronjobs | get, list, patch (SinkBinding subjects' environment) |
//! | core | services, pods | read, write, delete (revisions' and Routes' Services; TaskRuns' Pods) |
//! | core | configmaps | read (Serving's `config-*` ConfigMaps, read at start) |
//! | core | pods/log | get (build logs before a pod is deleted) |
//! | core, `events.k8s.io` | events | create, patch |
//! | core | events, namespaces | read (ApiServerSource watches; its namespaceSelector). A source watching other kinds needs get/list/watch on them added |
//! | `discovery.k8s.io` | endpointslices | read (revision readiness) |
//! | `coordination.k8s.io` | leases | get, create, update (leader election) |
//! | `apiextensions.k8s.io` | customresourcedefinitions | only with `--install-crds`: create, and get/patch/update of the CRDs by name |
//!
//! `/finalizers` update is what the API server's
//! `OwnerReferencesPermissionEnforcement` asks for before a child may set
//! `blockOwnerDeletion` on its owner reference.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Namespace, ObjectFieldSelector,
    PodSpec, PodTemplateSpec, Probe, Service, ServiceAccount, ServicePort, ServiceSpec,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::crds;

/// The name of the ClusterRole, ClusterRoleBinding, ServiceAccount and
/// Deployment.
pub const NAME: &str = "knative-operator";

/// The Service in front of the operator's ingress, broker ingress and
/// channel ingress
/// (`knative-ingress.<namespace>.svc.cluster.local`, where Route Services
/// point).
pub const INGRESS_SERVICE: &str = "knative-ingress";

const READ: &[&str] = &["get", "list", "watch"];
/// What binding a SinkBinding subject takes.
const BIND: &[&str] = &["get", "list", "patch"];
const READ_WRITE: &[&str] = &[
    "get", "list", "watch", "create", "update", "patch", "delete",
];

/// What `knative-operator rbac` prints.
#[derive(Clone, Debug)]
pub struct RbacOptions {
    /// The namespace of the operator's ServiceAccount.
    pub namespace: String,
    /// Whether the operator installs the CRDs (`run --install-crds`).
    pub install_crds: bool,
}

fn rule(groups: &[&str], resources: Vec<String>, verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(groups.iter().map(|g| (*g).to_owned()).collect()),
        resources: Some(resources),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..PolicyRule::default()
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn labels() -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name".to_owned(), NAME.to_owned()),
        (
            "app.kubernetes.io/part-of".to_owned(),
            "knative-rs".to_owned(),
        ),
    ]
    .into()
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(labels()),
        ..ObjectMeta::default()
    }
}

/// The rules of the operator's ClusterRole.
pub fn policy_rules(install_crds: bool) -> Vec<PolicyRule> {
    let all = crds::all();
    // group → (read-write plurals, read-only plurals)
    let mut groups: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for crd in &all {
        let entry = groups.entry(crd.spec.group.clone()).or_default();
        let plural = crd.spec.names.plural.clone();
        let has_status = crd
            .spec
            .versions
            .iter()
            .any(|v| v.subresources.as_ref().is_some_and(|s| s.status.is_some()));
        if has_status {
            entry.0.push(plural);
        } else {
            // Tasks and Pipelines are only read (by taskRef / pipelineRef).
            entry.1.push(plural);
        }
    }
    let mut rules = Vec::new();
    for (group, (owned, read_only)) in &groups {
        if !owned.is_empty() {
            let mut resources = owned.clone();
            resources.extend(owned.iter().map(|p| format!("{p}/status")));
            resources.extend(owned.iter().map(|p| format!("{p}/finalizers")));
            rules.push(rule(&[group], resources, READ_WRITE));
        }
        if !read_only.is_empty() {
            rules.push(rule(&[group], read_only.clone(), READ));
        }
    }
    rules.push(rule(&["apps"], strings(&["deployments"]), READ_WRITE));
    // SinkBinding subjects (`eventing::KubeBindingTarget`): read by name or
    // selector, environment patched. Knative Services and Deployments are
    // covered above.
    rules.push(rule(
        &["apps"],
        strings(&["statefulsets", "daemonsets"]),
        BIND,
    ));
    rules.push(rule(&["batch"], strings(&["jobs", "cronjobs"]), BIND));
    rules.push(rule(&[""], strings(&["services", "pods"]), READ_WRITE));
    // Serving's `config-*` ConfigMaps are only read. Core Endpoints are not
    // used: readiness comes from EndpointSlices.
    rules.push(rule(&[""], strings(&["configmaps"]), READ));
    rules.push(rule(&[""], strings(&["pods/log"]), &["get"]));
    rules.push(rule(
        &["", "events.k8s.io"],
        strings(&["events"]),
        &["create", "patch"],
    ));
    // ApiServerSource (`apiserver_source`): the kinds upstream's examples
    // watch; pods, services and deployments are readable above.
    rules.push(rule(&[""], strings(&["events", "namespaces"]), READ));
    rules.push(rule(
        &["discovery.k8s.io"],
        strings(&["endpointslices"]),
        READ,
    ));
    rules.push(rule(
        &["coordination.k8s.io"],
        strings(&["leases"]),
        &["get", "create", "update"],
    ));
    if install_crds {
        // `create` cannot be limited by name; the rest is limited to ours.
        rules.push(rule(
            &["apiextensions.k8s.io"],
            strings(&["customresourcedefinitions"]),
            &["create"],
        ));
        let mut by_name = rule(
            &["apiextensions.k8s.io"],
            strings(&["customresourcedefinitions"]),
            &["get", "patch", "update"],
        );
        by_name.resource_names = Some(all.iter().filter_map(|c| c.metadata.name.clone()).collect());
        rules.push(by_name);
    }
    rules
}

/// The operator's RBAC: a ClusterRole with [`policy_rules`], its
/// ServiceAccount, and the ClusterRoleBinding between them.
pub fn rbac(options: &RbacOptions) -> (ClusterRole, ServiceAccount, ClusterRoleBinding) {
    let role = ClusterRole {
        metadata: meta(NAME, None),
        rules: Some(policy_rules(options.install_crds)),
        ..ClusterRole::default()
    };
    let account = ServiceAccount {
        metadata: meta(NAME, Some(&options.namespace)),
        ..ServiceAccount::default()
    };
    let binding = ClusterRoleBinding {
        metadata: meta(NAME, None),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: NAME.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: NAME.into(),
            namespace: Some(options.namespace.clone()),
            ..Subject::default()
        }]),
    };
    (role, account, binding)
}

/// What `knative-operator deploy` prints.
#[derive(Clone, Debug)]
pub struct DeployOptions {
    /// The namespace the operator runs in.
    pub namespace: String,
    /// The operator's container image.
    pub image: String,
    /// Replicas (more than one implies leader election).
    pub replicas: i32,
    /// Whether the operator installs the CRDs at start.
    pub install_crds: bool,
    /// The operator's `--event-log` (`None`: in memory). With several
    /// replicas, a NATS URL keeps the events across failovers.
    pub event_log: Option<String>,
    /// The operator's `--queue-proxy-image` (`None`: no sidecar in revision
    /// pods).
    pub queue_proxy_image: Option<String>,
    /// The operator's `--queue-proxy-command` (empty: the default command).
    /// Passed comma-separated, so no argument may contain a comma.
    pub queue_proxy_command: Vec<String>,
}

/// The ports the operator listens on.
const PORTS: [(&str, i32); 5] = [
    ("http", 8080),
    ("broker", 8081),
    ("channel", 8082),
    ("health", 8090),
    ("metrics", 9090),
];

fn port(name: &str) -> i32 {
    PORTS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, p)| *p)
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("health".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(5),
        ..Probe::default()
    }
}

/// The operator's Namespace, Deployment (running as the [`rbac`]
/// ServiceAccount, leader-elected, with health probes) and the
/// [`INGRESS_SERVICE`] Service in front of its ingress, broker ingress and
/// channel ingress.
pub fn deploy(options: &DeployOptions) -> (Namespace, Deployment, Service) {
    let ns = options.namespace.as_str();
    let namespace = Namespace {
        metadata: meta(ns, None),
        ..Namespace::default()
    };
    let mut args = strings(&[
        "run",
        "--leader-elect",
        "--identity=$(POD_NAME)",
        "--lease-namespace=$(POD_NAMESPACE)",
    ]);
    args.push(format!("--ingress-addr=0.0.0.0:{}", port("http")));
    args.push(format!("--broker-addr=0.0.0.0:{}", port("broker")));
    args.push(format!("--channel-addr=0.0.0.0:{}", port("channel")));
    args.push(format!("--health-addr=0.0.0.0:{}", port("health")));
    args.push(format!("--metrics-addr=0.0.0.0:{}", port("metrics")));
    args.push(format!(
        "--broker-url=http://{INGRESS_SERVICE}.{ns}.svc.cluster.local:{}",
        port("broker")
    ));
    args.push(format!(
        "--channel-url=http://{INGRESS_SERVICE}.{ns}.svc.cluster.local:{}",
        port("channel")
    ));
    args.push(format!(
        "--ingress-service-host={INGRESS_SERVICE}.{ns}.svc.cluster.local"
    ));
    // Serving's `config-*` ConfigMaps live next to the operator.
    args.push(format!("--config-namespace={ns}"));
    if let Some(log) = &options.event_log {
        args.push(format!("--event-log={log}"));
    }
    if options.install_crds {
        args.push("--install-crds".into());
    }
    if let Some(image) = &options.queue_proxy_image {
        args.push(format!("--queue-proxy-image={image}"));
        if !options.queue_proxy_command.is_empty() {
            args.push(format!(
                "--queue-proxy-command={}",
                options.queue_proxy_command.join(",")
            ));
        }
    }
    let selector: BTreeMap<String, String> =
        [("app.kubernetes.io/name".to_owned(), NAME.to_owned())].into();
    let container = Container {
        name: "operator".into(),
        image: Some(options.image.clone()),
        args: Some(args),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            EnvVar {
                name: "RUST_LOG".into(),
                value: Some("info".into()),
                ..EnvVar::default()
            },
        ]),
        ports: Some(
            PORTS
                .iter()
                .map(|(name, p)| ContainerPort {
                    name: Some((*name).to_owned()),
                    container_port: *p,
                    ..ContainerPort::default()
                })
                .collect(),
        ),
        liveness_probe: Some(probe("/healthz")),
        readiness_probe: Some(probe("/readyz")),
        ..Container::default()
    };
    let deployment = Deployment {
        metadata: meta(NAME, Some(ns)),
        spec: DeploymentSpec {
            replicas: Some(options.replicas),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            // Recreate, not RollingUpdate: only the replica holding the
            // Lease is ready (`/readyz`), so a new pod of a rolling update
            // never becomes ready while an old one leads, and the rollout
            // would stall until its progress deadline.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..DeploymentStrategy::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(NAME.into()),
                    termination_grace_period_seconds: Some(30),
                    containers: vec![container],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    };
    let service = Service {
        metadata: meta(INGRESS_SERVICE, Some(ns)),
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![
                ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(IntOrString::String("http".into())),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some("broker".into()),
                    port: port("broker"),
                    target_port: Some(IntOrString::String("broker".into())),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some("channel".into()),
                    port: port("channel"),
                    target_port: Some(IntOrString::String("channel".into())),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    (namespace, deployment, service)
}

/// Objects as one multi-document YAML stream, each with its `apiVersion`
/// and `kind`.
pub fn to_yaml<T: Serialize>(objects: &[T]) -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(object)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule_for<'a>(
        rules: &'a [PolicyRule],
        group: &str,
        resource: &str,
    ) -> Option<&'a PolicyRule> {
        rules.iter().find(|r| {
            r.api_groups.iter().flatten().any(|g| g == group)
                && r.resources.iter().flatten().any(|x| x == resource)
        })
    }

    #[test]
    fn every_knative_kind_can_be_written_with_its_status_and_finalizers() {
        let rules = policy_rules(false);
        for crd in crds::all() {
            let group = crd.spec.group.as_str();
            let plural = crd.spec.names.plural.as_str();
            let rule = rule_for(&rules, group, plural).expect("a rule for every kind");
            if matches!(plural, "tasks" | "pipelines") {
                assert_eq!(rule.verbs, READ, "{plural} are only read");
                continue;
            }
            assert_eq!(rule.verbs, READ_WRITE, "{plural}");
            for sub in ["status", "finalizers"] {
                assert!(
                    rule_for(&rules, group, &format!("{plural}/{sub}")).is_some(),
                    "{plural}/{sub}"
                );
            }
        }
    }

    #[test]
    fn crds_are_only_writable_when_the_operator_installs_them_and_only_ours() {
        let without = policy_rules(false);
        assert!(
            rule_for(
                &without,
                "apiextensions.k8s.io",
                "customresourcedefinitions"
            )
            .is_none()
        );
        let with = policy_rules(true);
        let named: Vec<_> = with
            .iter()
            .filter(|r| {
                r.api_groups
                    .iter()
                    .flatten()
                    .any(|g| g == "apiextensions.k8s.io")
            })
            .collect();
        assert_eq!(named.len(), 2);
        let by_name = named
            .iter()
            .find(|r| r.resource_names.is_some())
            .expect("a rule limited by name");
        assert_eq!(
            by_name.resource_names.clone().unwrap_or_default().len(),
            crds::all().len()
        );
        assert!(!by_name.verbs.iter().any(|v| v == "delete" || v == "create"));
    }

    #[test]
    fn the_rest_is_the_least_the_backends_need() {
        let rules = policy_rules(false);
        let verbs = |g: &str, r: &str| rule_for(&rules, g, r).map(|x| x.verbs.clone());
        assert_eq!(verbs("apps", "deployments"), Some(strings(READ_WRITE)));
        for (group, resource) in [
            ("apps", "statefulsets"),
            ("apps", "daemonsets"),
            ("batch", "jobs"),
            ("batch", "cronjobs"),
        ] {
            assert_eq!(
                verbs(group, resource),
                Some(strings(&["get", "list", "patch"])),
                "{group} {resource}: SinkBinding subjects are read and patched, no more"
            );
        }
        assert!(rule_for(&rules, "apps", "replicasets").is_none());
        assert!(rule_for(&rules, "batch", "jobs/status").is_none());
        assert_eq!(
            verbs("discovery.k8s.io", "endpointslices"),
            Some(strings(READ))
        );
        assert_eq!(verbs("", "pods/log"), Some(strings(&["get"])));
        assert_eq!(
            verbs("events.k8s.io", "events"),
            Some(strings(&["create", "patch"]))
        );
        assert_eq!(
            verbs("coordination.k8s.io", "leases"),
            Some(strings(&["get", "create", "update"]))
        );
        assert!(rule_for(&rules, "", "secrets").is_none());
        assert_eq!(verbs("", "services"), Some(strings(READ_WRITE)));
        assert_eq!(verbs("", "pods"), Some(strings(READ_WRITE)));
        assert_eq!(
            verbs("", "configmaps"),
            Some(strings(READ)),
            "Serving's ConfigMaps are only read"
        );
        assert!(
            rule_for(&rules, "", "endpoints").is_none(),
            "readiness reads EndpointSlices, not Endpoints"
        );
        assert!(rules.iter().all(|r| !r.verbs.iter().any(|v| v == "*")));
    }

    #[test]
    fn rbac_and_deploy_print_as_yaml_that_reads_back() {
        let (role, account, binding) = rbac(&RbacOptions {
            namespace: "knative-serving".into(),
            install_crds: true,
        });
        let yaml = to_yaml(&[
            serde_json::to_value(&role).expect("JSON"),
            serde_json::to_value(&account).expect("JSON"),
            serde_json::to_value(&binding).expect("JSON"),
        ])
        .expect("YAML");
        let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&yaml)
            .map(|d| serde::Deserialize::deserialize(d).expect("a document"))
            .collect();
        let kinds: Vec<_> = docs
            .iter()
            .map(|d| d["kind"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(
            kinds,
            ["ClusterRole", "ServiceAccount", "ClusterRoleBinding"]
        );
        assert_eq!(docs[2]["subjects"][0]["namespace"], "knative-serving");

        let (ns, deployment, service) = deploy(&DeployOptions {
            namespace: "knative-serving".into(),
            image: "example.com/knative-operator:dev".into(),
            replicas: 2,
            install_crds: false,
            event_log: Some("nats://nats.nats.svc:4222".into()),
            queue_proxy_image: None,
            queue_proxy_command: Vec::new(),
        });
        let spec = deployment.spec.clone();
        let pod = spec.template.spec.expect("a pod spec");
        assert_eq!(pod.service_account_name.as_deref(), Some(NAME));
        let args = pod.containers[0].args.clone().unwrap_or_default();
        assert!(args.contains(&"--leader-elect".to_owned()), "{args:?}");
        assert!(
            args.contains(
                &"--broker-url=http://knative-ingress.knative-serving.svc.cluster.local:8081"
                    .to_owned()
            ),
            "{args:?}"
        );
        for arg in [
            "--channel-addr=0.0.0.0:8082",
            "--channel-url=http://knative-ingress.knative-serving.svc.cluster.local:8082",
            "--event-log=nats://nats.nats.svc:4222",
        ] {
            assert!(args.contains(&arg.to_owned()), "{arg} in {args:?}");
        }
        let service_spec = service.spec.clone().unwrap_or_default();
        let ports: Vec<i32> = service_spec
            .ports
            .iter()
            .flatten()
            .map(|p| p.port)
            .collect();
        assert_eq!(ports, [80, 8081, 8082]);
        assert_eq!(
            service.spec.and_then(|s| s.selector),
            spec.selector.match_labels
        );
        assert!(to_yaml(&[serde_json::to_value(&ns).expect("JSON")]).is_ok());
        assert!(
            !args.iter().any(|a| a.starts_with("--queue-proxy")),
            "no sidecar unless asked: {args:?}"
        );
    }

    #[test]
    fn deploy_points_every_namespaced_flag_at_its_namespace() {
        let (namespace, deployment, service) = deploy(&DeployOptions {
            namespace: "foo".into(),
            image: "example.com/knative-operator:dev".into(),
            replicas: 1,
            install_crds: false,
            event_log: None,
            queue_proxy_image: None,
            queue_proxy_command: Vec::new(),
        });
        assert_eq!(namespace.metadata.name.as_deref(), Some("foo"));
        assert_eq!(deployment.metadata.namespace.as_deref(), Some("foo"));
        assert_eq!(service.metadata.namespace.as_deref(), Some("foo"));
        let pod = deployment.spec.template.spec.expect("a pod spec");
        let args = pod.containers[0].args.clone().unwrap_or_default();
        for arg in [
            "--config-namespace=foo",
            "--lease-namespace=$(POD_NAMESPACE)",
            "--broker-url=http://knative-ingress.foo.svc.cluster.local:8081",
            "--channel-url=http://knative-ingress.foo.svc.cluster.local:8082",
            "--ingress-service-host=knative-ingress.foo.svc.cluster.local",
        ] {
            assert!(args.contains(&arg.to_owned()), "{arg} in {args:?}");
        }
        assert!(
            !args.iter().any(|a| a.contains("knative-serving")),
            "nothing points at the default namespace: {args:?}"
        );
    }

    #[test]
    fn deploy_passes_the_queue_proxy_sidecar_on() {
        let args = |image: Option<&str>, command: &[&str]| {
            let (_, deployment, _) = deploy(&DeployOptions {
                namespace: "knative-serving".into(),
                image: "example.com/knative-operator:dev".into(),
                replicas: 1,
                install_crds: false,
                event_log: None,
                queue_proxy_image: image.map(str::to_owned),
                queue_proxy_command: strings(command),
            });
            let pod = deployment.spec.template.spec.expect("a pod spec");
            pod.containers[0].args.clone().unwrap_or_default()
        };
        let image = "example.com/knative-operator:dev";
        let with_image = args(Some(image), &[]);
        assert!(
            with_image.contains(&format!("--queue-proxy-image={image}")),
            "{with_image:?}"
        );
        assert!(
            !with_image
                .iter()
                .any(|a| a.starts_with("--queue-proxy-command")),
            "the default command is the operator's default: {with_image:?}"
        );
        let with_command = args(Some(image), &["/bin/qp", "serve"]);
        assert!(
            with_command.contains(&"--queue-proxy-command=/bin/qp,serve".to_owned()),
            "{with_command:?}"
        );
    }
}
