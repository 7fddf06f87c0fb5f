//! `Revision`, an immutable snapshot of code and configuration, and the
//! `RevisionSpec` / `RevisionTemplateSpec` that Configurations and Services
//! stamp revisions from (`specs/SERVING.md §1`).

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::{Container, PodSpec, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use knative_core::apis::{Context, FieldError, SetDefaults, Validate};
use knative_core::condition::Status;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::keys;
use crate::config::{Defaults, ServingConfig};

/// The serving container's name when the spec leaves it unnamed.
pub const DEFAULT_USER_CONTAINER_NAME: &str = "user-container";
/// The port the serving container listens on when it declares none.
pub const DEFAULT_CONTAINER_PORT: u16 = 8080;
/// Ports the queue-proxy sidecar uses; containers may not claim them.
const RESERVED_PORTS: [i32; 5] = [8012, 8013, 8022, 9090, 9091];
/// Paths containers may not mount volumes on.
const RESERVED_MOUNT_PATHS: [&str; 6] = ["/", "/dev", "/dev/log", "/tmp", "/var", "/var/log"];

/// What a revision runs: a Kubernetes pod spec (restricted as upstream's
/// webhook restricts it) plus Knative's request handling settings.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serving.knative.dev",
    version = "v1",
    kind = "Revision",
    namespaced,
    status = "RevisionStatus",
    shortname = "rev",
    category = "all",
    category = "knative",
    category = "serving",
    printcolumn = r#"{"name":"Config Name","type":"string","jsonPath":".metadata.labels['serving\\.knative\\.dev/configuration']"}"#,
    printcolumn = r#"{"name":"Generation","type":"string","jsonPath":".metadata.labels['serving\\.knative\\.dev/configurationGeneration']"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].reason"}"#,
    printcolumn = r#"{"name":"Actual Replicas","type":"integer","jsonPath":".status.actualReplicas"}"#,
    printcolumn = r#"{"name":"Desired Replicas","type":"integer","jsonPath":".status.desiredReplicas"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RevisionSpec {
    /// The pod spec, inlined: `containers`, `volumes`, `serviceAccountName`, …
    #[serde(flatten)]
    pub pod_spec: PodSpec,
    /// Most requests one replica handles at once (0 = no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_concurrency: Option<i64>,
    /// Longest time a request may take, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
    /// Longest time until a response starts, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_start_timeout_seconds: Option<i64>,
    /// Longest time a response may go without sending bytes, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<i64>,
}

/// The image digest a container of a revision resolved to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    /// The container's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The resolved image digest.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_digest: String,
}

/// What a revision's controller observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionStatus {
    /// Conditions (`Ready`, `ResourcesAvailable`, `ContainerHealthy`, `Active`) and observed generation.
    #[serde(flatten)]
    pub status: Status,
    /// Where to find the revision's logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_url: Option<String>,
    /// Per container, the image digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_statuses: Vec<ContainerStatus>,
    /// Per init container, the image digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_container_statuses: Vec<ContainerStatus>,
    /// Replicas running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_replicas: Option<i32>,
    /// Replicas wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
}

/// A revision to be: metadata and spec, as a Configuration's `template`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RevisionTemplateSpec {
    /// Labels, annotations and an optional revision name ("bring your own").
    #[serde(default, skip_serializing_if = "is_empty_meta")]
    pub metadata: ObjectMeta,
    /// What the revision runs.
    pub spec: RevisionSpec,
}

fn is_empty_meta(meta: &ObjectMeta) -> bool {
    *meta == ObjectMeta::default()
}

fn serving_config(ctx: &Context<'_>) -> ServingConfig {
    ctx.config::<ServingConfig>().cloned().unwrap_or_default()
}

impl Revision {
    /// The `serving.knative.dev/routingState` label, if set to a known state.
    pub fn routing_state(&self) -> Option<super::RoutingState> {
        self.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(keys::ROUTING_STATE))
            .and_then(|s| super::RoutingState::parse(s))
    }
}

impl RevisionSpec {
    /// Index of the serving container: the one with a port, else the first.
    pub fn serving_container_index(&self) -> usize {
        let containers = &self.pod_spec.containers;
        containers
            .iter()
            .position(|c| c.ports.as_ref().is_some_and(|p| !p.is_empty()))
            .unwrap_or(0)
    }

    /// The serving container, if there is one.
    pub fn serving_container(&self) -> Option<&Container> {
        self.pod_spec.containers.get(self.serving_container_index())
    }

    /// The port the serving container listens on (its `containerPort`, 8080 by default).
    pub fn container_port(&self) -> u16 {
        self.serving_container()
            .and_then(|c| c.ports.as_ref())
            .and_then(|p| p.first())
            .and_then(|p| u16::try_from(p.container_port).ok())
            .unwrap_or(DEFAULT_CONTAINER_PORT)
    }

    fn apply_defaults(&mut self, d: &Defaults) {
        let timeout = *self
            .timeout_seconds
            .get_or_insert(d.revision_timeout_seconds);
        self.container_concurrency
            .get_or_insert(d.container_concurrency);
        if self.response_start_timeout_seconds.is_none()
            && d.revision_response_start_timeout_seconds != 0
            && d.revision_response_start_timeout_seconds < timeout
        {
            self.response_start_timeout_seconds = Some(d.revision_response_start_timeout_seconds);
        }
        if self.idle_timeout_seconds.is_none() && d.revision_idle_timeout_seconds != 0 {
            self.idle_timeout_seconds = Some(d.revision_idle_timeout_seconds);
        }
        self.pod_spec
            .enable_service_links
            .get_or_insert(d.enable_service_links);
        let serving = self.serving_container_index();
        for (i, container) in self.pod_spec.containers.iter_mut().enumerate() {
            if container.name.is_empty() {
                container.name = if i == serving {
                    d.user_container_name.clone()
                } else {
                    format!("sidecar-container-{i}")
                };
            }
            if i == serving {
                default_readiness_probe(container);
            }
        }
    }
}

/// Upstream's readiness default for the serving container: a TCP probe of
/// its port, succeeding once.
fn default_readiness_probe(container: &mut Container) {
    let probe = container.readiness_probe.get_or_insert_with(Probe::default);
    let has_handler = probe.http_get.is_some()
        || probe.tcp_socket.is_some()
        || probe.exec.is_some()
        || probe.grpc.is_some();
    if !has_handler {
        probe.tcp_socket = Some(TCPSocketAction {
            host: None,
            port: IntOrString::Int(0),
        });
    }
    probe.success_threshold.get_or_insert(1);
}

impl SetDefaults for RevisionSpec {
    fn set_defaults(&mut self, ctx: &Context<'_>) {
        self.apply_defaults(&serving_config(ctx).defaults);
    }
}

impl Validate for RevisionSpec {
    fn validate(&self, ctx: &Context<'_>) -> FieldError {
        let d = serving_config(ctx).defaults;
        let mut errs = validate_pod_spec(&self.pod_spec);
        if let Some(cc) = self.container_concurrency {
            let lower = if d.allow_container_concurrency_zero {
                0
            } else {
                1
            };
            if cc < lower || cc > d.container_concurrency_max_limit {
                errs.push(FieldError::out_of_bounds(
                    cc,
                    lower,
                    d.container_concurrency_max_limit,
                    "containerConcurrency",
                ));
            }
        }
        let max = d.max_revision_timeout_seconds;
        if let Some(t) = self.timeout_seconds
            && !(0..=max).contains(&t)
        {
            errs.push(FieldError::out_of_bounds(t, 0, max, "timeoutSeconds"));
        }
        let timeout = self.timeout_seconds.unwrap_or(d.revision_timeout_seconds);
        if let Some(t) = self.response_start_timeout_seconds
            && !(0..=timeout).contains(&t)
        {
            errs.push(FieldError::out_of_bounds(
                t,
                0,
                timeout,
                "responseStartTimeoutSeconds",
            ));
        }
        if let Some(t) = self.idle_timeout_seconds
            && !(0..=max).contains(&t)
        {
            errs.push(FieldError::out_of_bounds(t, 0, max, "idleTimeoutSeconds"));
        }
        errs
    }
}

/// The pod-level fields Knative's webhook rejects (without feature flags).
fn disallowed_pod_fields(pod: &PodSpec) -> Vec<&'static str> {
    let mut fields = Vec::new();
    let mut check = |set: bool, name: &'static str| {
        if set {
            fields.push(name);
        }
    };
    check(pod.node_name.is_some(), "nodeName");
    check(pod.host_network.is_some(), "hostNetwork");
    check(pod.host_pid.is_some(), "hostPID");
    check(pod.host_ipc.is_some(), "hostIPC");
    check(pod.restart_policy.is_some(), "restartPolicy");
    check(
        pod.active_deadline_seconds.is_some(),
        "activeDeadlineSeconds",
    );
    check(pod.ephemeral_containers.is_some(), "ephemeralContainers");
    fields
}

fn validate_pod_spec(pod: &PodSpec) -> FieldError {
    let mut errs = FieldError::none();
    let disallowed = disallowed_pod_fields(pod);
    if !disallowed.is_empty() {
        errs.push(FieldError::disallowed_fields(
            disallowed
                .iter()
                .map(|f| (*f).to_owned())
                .collect::<Vec<_>>(),
        ));
    }
    let containers = &pod.containers;
    if containers.is_empty() {
        errs.push(FieldError::missing_field("containers"));
        return errs;
    }
    if containers.len() > 1 {
        let with_ports = containers
            .iter()
            .filter(|c| c.ports.as_ref().is_some_and(|p| !p.is_empty()))
            .count();
        if with_ports != 1 {
            errs.push(
                FieldError::new(
                    format!("exactly one container must specify a port, found {with_ports}"),
                    "containers",
                )
                .with_details("with several containers, the one with a port receives requests"),
            );
        }
    }
    let mut names = HashSet::new();
    for (i, container) in containers.iter().enumerate() {
        let mut c = validate_container(container);
        if !container.name.is_empty() && !names.insert(container.name.as_str()) {
            c.push(FieldError::new(
                format!("duplicate container name {:?}", container.name),
                "name",
            ));
        }
        errs.push(c.via_field_index("containers", i));
    }
    errs
}

fn validate_container(c: &Container) -> FieldError {
    let mut errs = FieldError::none();
    if c.image.as_deref().is_none_or(str::is_empty) {
        errs.push(FieldError::missing_field("image"));
    }
    let mut disallowed = Vec::new();
    if c.stdin.is_some() {
        disallowed.push("stdin".to_owned());
    }
    if c.stdin_once.is_some() {
        disallowed.push("stdinOnce".to_owned());
    }
    if c.tty.is_some() {
        disallowed.push("tty".to_owned());
    }
    if !disallowed.is_empty() {
        errs.push(FieldError::disallowed_fields(disallowed));
    }
    let ports = c.ports.as_deref().unwrap_or_default();
    if ports.len() > 1 {
        errs.push(
            FieldError::new("more than one container port is set", "ports")
                .with_details("only a single port is allowed across all containers"),
        );
    }
    for (i, port) in ports.iter().enumerate() {
        let mut p = FieldError::none();
        if !(1..=65535).contains(&port.container_port) {
            p.push(FieldError::out_of_bounds(
                port.container_port,
                1,
                65535,
                "containerPort",
            ));
        } else if RESERVED_PORTS.contains(&port.container_port) {
            p.push(
                FieldError::invalid_value(port.container_port, "containerPort").with_details(
                    format!("ports {RESERVED_PORTS:?} are reserved for the queue-proxy"),
                ),
            );
        }
        if let Some(name) = port
            .name
            .as_deref()
            .filter(|n| !matches!(*n, "" | "h2c" | "http1"))
        {
            p.push(
                FieldError::invalid_value(name, "name")
                    .with_details("the port name must be empty, \"http1\" or \"h2c\""),
            );
        }
        if let Some(proto) = port.protocol.as_deref().filter(|p| *p != "TCP") {
            p.push(
                FieldError::invalid_value(proto, "protocol").with_details("only TCP is supported"),
            );
        }
        if port.host_port.is_some() {
            p.push(FieldError::disallowed_fields("hostPort"));
        }
        if port.host_ip.is_some() {
            p.push(FieldError::disallowed_fields("hostIP"));
        }
        errs.push(p.via_field_index("ports", i));
    }
    for (field, probe) in [
        ("readinessProbe", &c.readiness_probe),
        ("livenessProbe", &c.liveness_probe),
    ] {
        if let Some(probe) = probe {
            errs.push(validate_probe(probe).via_field(field));
        }
    }
    for (i, mount) in c.volume_mounts.iter().flatten().enumerate() {
        let mut m = FieldError::none();
        if mount.mount_path.is_empty() {
            m.push(FieldError::missing_field("mountPath"));
        } else if !mount.mount_path.starts_with('/') {
            m.push(
                FieldError::invalid_value(&mount.mount_path, "mountPath")
                    .with_details("must be an absolute path"),
            );
        } else if RESERVED_MOUNT_PATHS.contains(&normalized_mount_path(&mount.mount_path)) {
            m.push(
                FieldError::invalid_value(&mount.mount_path, "mountPath")
                    .with_details(format!("{RESERVED_MOUNT_PATHS:?} are reserved")),
            );
        }
        errs.push(m.via_field_index("volumeMounts", i));
    }
    for (i, env) in c.env.iter().flatten().enumerate() {
        if env.name.is_empty() {
            errs.push(FieldError::missing_field("name").via_field_index("env", i));
        }
    }
    errs
}

/// `/var/log/` → `/var/log`, `/` stays `/`.
fn normalized_mount_path(path: &str) -> &str {
    match path.trim_end_matches('/') {
        "" => "/",
        trimmed => trimmed,
    }
}

fn validate_probe(probe: &Probe) -> FieldError {
    let mut errs = FieldError::none();
    let handlers: Vec<String> = [
        ("httpGet", probe.http_get.is_some()),
        ("tcpSocket", probe.tcp_socket.is_some()),
        ("exec", probe.exec.is_some()),
        ("grpc", probe.grpc.is_some()),
    ]
    .iter()
    .filter(|(_, set)| *set)
    .map(|(name, _)| (*name).to_owned())
    .collect();
    if handlers.len() > 1 {
        errs.push(FieldError::multiple_one_of(handlers));
    }
    for (field, value, min) in [
        ("periodSeconds", probe.period_seconds, 0),
        ("initialDelaySeconds", probe.initial_delay_seconds, 0),
        ("timeoutSeconds", probe.timeout_seconds, 1),
        ("successThreshold", probe.success_threshold, 1),
        ("failureThreshold", probe.failure_threshold, 1),
    ] {
        if let Some(v) = value
            && v < min
        {
            errs.push(
                FieldError::invalid_value(v, field).with_details(format!("must be at least {min}")),
            );
        }
    }
    errs
}

/// Checks the annotations a revision template may carry: the autoscaling
/// ones (`specs/SERVING.md §3.7`, through the autoscaler's own parser, so
/// what validates is exactly what the autoscaler reads) and the progress
/// deadline. Paths are relative to the annotation map.
pub(crate) fn validate_annotations(
    annotations: &BTreeMap<String, String>,
    config: &crate::autoscaling::config::AutoscalerConfig,
) -> FieldError {
    let mut errs = FieldError::none();
    let parsed = crate::autoscaling::config::Annotations::parse(annotations).and_then(|_| {
        crate::autoscaling::config::Annotations::check_cluster_limits(annotations, config)
    });
    if let Err(e) = parsed {
        errs.push(
            FieldError::invalid_value(&e.value, "")
                .with_details(e.reason)
                .via_key(&e.key),
        );
    }
    if let Some(v) = annotations.get(keys::PROGRESS_DEADLINE)
        && knative_core::duration::parse(v).is_err()
    {
        errs.push(
            FieldError::invalid_value(v, "")
                .with_details("must be a duration such as 10m or 600s")
                .via_key(keys::PROGRESS_DEADLINE),
        );
    }
    errs
}

impl SetDefaults for RevisionTemplateSpec {
    fn set_defaults(&mut self, ctx: &Context<'_>) {
        self.spec.set_defaults(ctx);
    }
}

impl Validate for RevisionTemplateSpec {
    fn validate(&self, ctx: &Context<'_>) -> FieldError {
        let mut errs = self.spec.validate(ctx).via_field("spec");
        if let Some(annotations) = &self.metadata.annotations {
            errs.push(
                knative_core::apis::names::validate_annotations(annotations, "")
                    .also(validate_annotations(
                        annotations,
                        &serving_config(ctx).autoscaler,
                    ))
                    .via_field("metadata.annotations"),
            );
        }
        if let Some(labels) = &self.metadata.labels {
            errs.push(knative_core::apis::names::validate_labels(
                labels,
                "metadata.labels",
            ));
        }
        if let Some(name) = self.metadata.name.as_deref().filter(|n| !n.is_empty()) {
            errs.push(knative_core::apis::names::validate_dns1035_label(
                name,
                "metadata.name",
            ));
        }
        errs
    }
}

impl SetDefaults for Revision {
    fn set_defaults(&mut self, ctx: &Context<'_>) {
        self.spec.set_defaults(ctx);
    }
}

impl Validate for Revision {
    fn validate(&self, ctx: &Context<'_>) -> FieldError {
        let mut errs = self.spec.validate(ctx).via_field("spec");
        if let Some(annotations) = &self.metadata.annotations {
            errs.push(
                validate_annotations(annotations, &serving_config(ctx).autoscaler)
                    .via_field("metadata.annotations"),
            );
        }
        if let Some(original) = ctx.original::<Revision>()
            && original.spec != self.spec
        {
            errs.push(
                FieldError::new("Immutable fields changed (-old +new)", "spec")
                    .with_details(json_diff(&original.spec, &self.spec)),
            );
        }
        errs
    }
}

/// A short `-old +new` rendering of the top-level fields that differ.
pub(crate) fn json_diff<T: Serialize>(old: &T, new: &T) -> String {
    let old = serde_json::to_value(old).unwrap_or_default();
    let new = serde_json::to_value(new).unwrap_or_default();
    let empty = serde_json::Map::new();
    let old = old.as_object().unwrap_or(&empty);
    let new = new.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut lines = Vec::new();
    for key in keys {
        let (a, b) = (old.get(key), new.get(key));
        if a != b {
            if let Some(a) = a {
                lines.push(format!("-{key}: {a}"));
            }
            if let Some(b) = b {
                lines.push(format!("+{key}: {b}"));
            }
        }
    }
    lines.join("\n")
}
