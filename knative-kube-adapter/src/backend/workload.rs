//! [`KubeWorkloadBackend`]: a revision's replicas as a Kubernetes
//! Deployment and Services (`specs/CRDS.md`, "Kubernetes objects a revision
//! and a route own"; `specs/SERVING.md §1`, "Revision conditions").
//!
//! # What it creates
//!
//! Per revision `<rev>` in namespace `<ns>`:
//!
//! - a Deployment `<rev>-deployment` ([`desired_deployment`]; the name is
//!   shortened with a hash past 63 characters, as upstream's
//!   `kmeta.ChildName`), whose pod template runs the revision's containers:
//!   the serving container is named `user-container` when unnamed, gets a
//!   `user-port` container port when it has none, the variables `PORT`,
//!   `K_REVISION`, `K_CONFIGURATION` and `K_SERVICE` (when the labels name
//!   them; variables the container sets itself win), and a readiness probe:
//!   its own, with an unset or zero port pointed at the container port and
//!   a zero `periodSeconds` (Knative's "probe aggressively") made 1 s, or a
//!   TCP probe of the container port when it has none. Unnamed extra
//!   containers are named `sidecar-<i>`. `enableServiceLinks` is off and
//!   `terminationGracePeriodSeconds` is the revision's timeout, as upstream.
//! - a Service `<rev>` ([`desired_service`]): ClusterIP, port 80 named
//!   `http` (`http2` with `appProtocol: kubernetes.io/h2c` when the
//!   container port is named `h2c`) to the container port. Kubernetes keeps
//!   its EndpointSlices, which is where ready replicas are read from.
//! - a private Service `<rev>-private` ([`desired_private_service`], named
//!   with [`private_service_name`]), as upstream's: the same port 80,
//!   labelled `networking.internal.knative.dev/serviceType: Private`, and
//!   with a queue-proxy sidecar also its admin and metrics ports (see
//!   below). The backend does not read its EndpointSlices; it is there
//!   for tools that expect upstream's layout (such as metrics scrapers of
//!   the queue-proxies).
//!
//! All three carry the [`WorkloadSpec::labels`] (the revision's labels
//! without the routing state, plus `serving.knative.dev/revision`,
//! `serving.knative.dev/revisionUID` and `app`, computed by the revision
//! reconciler) and [`WorkloadSpec::owner`] as their controlling owner
//! reference, so deleting the Revision deletes them. All select pods by
//! `serving.knative.dev/revisionUID` (by `serving.knative.dev/revision`
//! when the spec has no uid), as upstream's Deployment selector does.
//!
//! The activator and ingress run in the operator's own process and the
//! activator is always in the request path, so by default there is no
//! queue-proxy sidecar: the data plane sends requests straight to pod IPs
//! ([`Endpoint::address`] is `<pod IP>:<container port>`).
//!
//! # With a queue-proxy sidecar
//!
//! When [`KubeWorkloadConfig::queue_proxy`] is set (the operator's
//! `--queue-proxy-image`), every pod also runs upstream's `queue-proxy`
//! container: the project's `knative queue-proxy`
//! ([`DEFAULT_QUEUE_PROXY_COMMAND`]; the operator's image has it), which
//! counts, limits (`containerConcurrency`) and times out each request
//! before passing it to the serving container over the pod's loopback.
//!
//! - Ports as upstream's: `queue-port` [`QUEUE_SERVING_PORT`] (8012),
//!   `http-queueadm` 8022, `http-autometric` 9090, `http-usermetric` 9091.
//!   The serving container may not use these ports (nor 8013) and no
//!   container may be named `queue-proxy` ([`BackendError::Unsupported`]).
//! - Environment, from the [`WorkloadSpec`]: `SERVING_NAMESPACE`,
//!   `SERVING_SERVICE`, `SERVING_CONFIGURATION`, `SERVING_REVISION`,
//!   `QUEUE_SERVING_PORT`, `QUEUE_ADMIN_PORT`, `QUEUE_METRICS_PORT`,
//!   `QUEUE_DRAIN_SECONDS` (30, at most the grace period),
//!   `CONTAINER_CONCURRENCY`, `REVISION_TIMEOUT_SECONDS` (the grace
//!   period), `REVISION_RESPONSE_START_TIMEOUT_SECONDS` and
//!   `REVISION_IDLE_TIMEOUT_SECONDS` (0 = off), `USER_PORT`,
//!   `SERVING_READINESS_PROBE`, `SERVING_POD` and `SERVING_POD_IP`.
//! - Readiness moves to the sidecar as upstream does: the serving
//!   container's HTTP or TCP readiness probe (the one described above)
//!   becomes `SERVING_READINESS_PROBE` (JSON, on 127.0.0.1, HTTP probes
//!   with `K-Kubelet-Probe: queue`) and leaves the serving container; an
//!   exec, gRPC or HTTPS probe stays with the kubelet on the serving
//!   container and the queue-proxy checks TCP. The sidecar's own
//!   readinessProbe, with the serving container's timing, is
//!   `GET :8012` with `K-Network-Probe: queue`, which the queue-proxy
//!   answers 200 only while the app passes its probe.
//! - The serving container gets upstream's `preStop` hook,
//!   `GET :8022/wait-for-drain`, unless it has its own; the sidecar gets
//!   upstream's locked-down security context (non-root, read-only root
//!   filesystem, no capabilities) and a 25m CPU request.
//! - The Services' port 80 is named `http` and targets 8012, so the
//!   EndpointSlices, and the ready endpoints read from them, are the
//!   queue-proxies' (`<pod IP>:8012`). The queue-proxy speaks HTTP/1, so
//!   an `h2c` port name no longer makes the Services `http2`. The private
//!   Service also exposes `http-queueadm` 8022, `http-autometric` 9090 and
//!   `http-usermetric` 9091, as upstream's does.
//!
//! # Writes
//!
//! [`WorkloadBackend::ensure`] server-side applies the three objects with
//! [`KubeWorkloadConfig::field_manager`] (forced: the operator owns them).
//! The applied Deployment always includes `spec.replicas`, set to the last
//! count [`WorkloadBackend::scale`] asked for (read from the Deployment
//! once after a restart, 0 for a new one), so an apply never resets the
//! scale and a new revision starts no replica before it is scaled.
//! `scale` merge-patches `spec.replicas`; `remove` deletes the three
//! objects (404 is fine).
//!
//! # Status
//!
//! [`KubeWorkloadBackend::watch_status`] is a future the operator runs
//! beside its controllers: three kube watchers (Deployments, Pods and
//! EndpointSlices labelled `serving.knative.dev/revision`, in
//! [`KubeWorkloadConfig::namespace`] or the whole cluster) keep what they
//! see per revision, and each change republishes that revision's
//! [`WorkloadStatus`] ([`workload_status`]) on the channel
//! [`WorkloadBackend::status`] returns:
//!
//! - `desired`: the last count asked for; `actual`: the Deployment's
//!   `status.replicas` (pods that exist, ready or not);
//! - `ready`: the ready endpoints of the public Service's EndpointSlices
//!   (`conditions.ready` not false), by pod name and `IP:port`;
//! - `failure` (only while nothing is ready), in this order: a container
//!   that exited (`lastState`/`state.terminated` with a non-zero code or a
//!   message) → `ExitCode<N>`, "Container failed with: …", a container
//!   problem; a container waiting on its image (`ErrImagePull`,
//!   `ImagePullBackOff`, `InvalidImageName`, `ErrImageNeverPull`) or its
//!   config (`CreateContainerConfigError`, `CreateContainerError`) → that
//!   reason and message, a resources problem; a pod that cannot be
//!   scheduled (`PodScheduled=False`) → its reason; the Deployment's
//!   `Progressing=False` (`ProgressDeadlineExceeded`, after
//!   [`KubeWorkloadConfig::progress_deadline`]) or `ReplicaFailure=True`
//!   (`FailedCreate`, e.g. quota) → that reason and message.
//!
//! Without `watch_status` running, the channels only carry `desired`.
//! RBAC: `apps/deployments` get, patch, delete, list, watch;
//! `services` patch, delete; `pods` list, watch;
//! `discovery.k8s.io/endpointslices` list, watch.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, HTTPHeader,
    Lifecycle, LifecycleHandler, ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecurityContext, Service, ServicePort, ServiceSpec,
    TCPSocketAction,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use knative_core::apis::names::child_name;
use knative_serving::api::DEFAULT_USER_CONTAINER_NAME;
use knative_serving::api::keys;
use knative_serving::backend::{
    BackendError, Endpoint, WorkloadBackend, WorkloadFailure, WorkloadKey, WorkloadSpec,
    WorkloadStatus,
};
use knative_serving::dataplane::headers;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch;
use tracing::Instrument;

/// The field manager the operator applies with.
pub const DEFAULT_FIELD_MANAGER: &str = "knative-operator";
/// How long a Deployment may take to make progress (`config-deployment`
/// `progress-deadline`).
pub const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(600);
/// The label EndpointSlices name their Service with.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The port name upstream gives a serving container's port.
const USER_PORT_NAME: &str = "user-port";
/// The port of a revision's Services.
const SERVICE_PORT: i32 = 80;
/// What a revision's private Service's name adds to the revision's.
const PRIVATE_SERVICE_SUFFIX: &str = "-private";
/// The label upstream marks a revision's Services with (`Public` or
/// `Private`).
const SERVICE_TYPE_LABEL: &str = "networking.internal.knative.dev/serviceType";
/// [`SERVICE_TYPE_LABEL`]'s value on the private Service.
const PRIVATE_SERVICE_TYPE: &str = "Private";
/// Container waiting reasons that mean the image cannot be had.
const IMAGE_WAITING_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// The queue-proxy sidecar's container name (upstream's).
pub const QUEUE_PROXY_CONTAINER_NAME: &str = "queue-proxy";
/// The command that runs the project's queue-proxy: the `queue-proxy`
/// subcommand of the `knative` binary, where the project's image
/// installs it.
pub const DEFAULT_QUEUE_PROXY_COMMAND: [&str; 2] = ["/usr/local/bin/knative", "queue-proxy"];
/// The queue-proxy's serving port (upstream's `BackendHTTPPort`): where
/// the revision's Service sends requests when there is a sidecar.
pub const QUEUE_SERVING_PORT: u16 = 8012;
/// The queue-proxy's admin port (`/drain`, `/wait-for-drain`).
pub const QUEUE_ADMIN_PORT: u16 = 8022;
/// The queue-proxy's autoscaler metrics port.
pub const QUEUE_METRICS_PORT: u16 = 9090;
/// The queue-proxy's user-facing Prometheus metrics port.
pub const QUEUE_USER_METRICS_PORT: u16 = 9091;
/// How long the queue-proxy keeps serving after SIGTERM (upstream's
/// `drainSleepDuration`), at most the pod's termination grace period.
const QUEUE_DRAIN: Duration = Duration::from_secs(30);
/// The sidecar's container ports: upstream's names and numbers.
const QUEUE_PORTS: [(&str, u16); 4] = [
    ("queue-port", QUEUE_SERVING_PORT),
    ("http-queueadm", QUEUE_ADMIN_PORT),
    ("http-autometric", QUEUE_METRICS_PORT),
    ("http-usermetric", QUEUE_USER_METRICS_PORT),
];
/// Ports the serving container may not use next to a queue-proxy
/// (upstream's webhook reserves them; 8013 is its h2c port).
const RESERVED_PORTS: [u16; 5] = [
    QUEUE_SERVING_PORT,
    8013,
    QUEUE_ADMIN_PORT,
    QUEUE_METRICS_PORT,
    QUEUE_USER_METRICS_PORT,
];
/// The header a Knative probe carries (upstream's spelling).
const PROBE_HEADER: &str = "K-Network-Probe";
/// The header the queue-proxy adds to its probes of the app.
const KUBELET_PROBE_HEADER: &str = "K-Kubelet-Probe";
/// Where the queue-proxy reaches the app: the pod's loopback.
const LOCAL_ADDRESS: &str = "127.0.0.1";
/// The sidecar's CPU request (upstream's `queue-sidecar-cpu-request`
/// default in `config-deployment`).
const QUEUE_PROXY_CPU_REQUEST: &str = "25m";

/// A queue-proxy sidecar run next to every revision's serving container
/// (see the [module docs](self), "With a queue-proxy sidecar").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueProxySidecar {
    /// The sidecar's image: one with the `knative` binary, such as the
    /// operator's own image.
    pub image: String,
    /// The sidecar's `command` ([`DEFAULT_QUEUE_PROXY_COMMAND`]); it is
    /// configured through upstream's environment variables.
    pub command: Vec<String>,
}

impl QueueProxySidecar {
    /// The sidecar from `image`, run with [`DEFAULT_QUEUE_PROXY_COMMAND`].
    pub fn new(image: impl Into<String>) -> Self {
        QueueProxySidecar {
            image: image.into(),
            command: DEFAULT_QUEUE_PROXY_COMMAND
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }

    /// The same sidecar run with `command` instead (an empty one keeps
    /// [`DEFAULT_QUEUE_PROXY_COMMAND`]).
    pub fn with_command(mut self, command: Vec<String>) -> Self {
        if !command.is_empty() {
            self.command = command;
        }
        self
    }
}

/// Settings of a [`KubeWorkloadBackend`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeWorkloadConfig {
    /// The server-side apply field manager ([`DEFAULT_FIELD_MANAGER`]).
    pub field_manager: String,
    /// The namespace [`KubeWorkloadBackend::watch_status`] watches; `None`
    /// for every namespace.
    pub namespace: Option<String>,
    /// The Deployments' `progressDeadlineSeconds`
    /// ([`DEFAULT_PROGRESS_DEADLINE`]).
    pub progress_deadline: Duration,
    /// A queue-proxy sidecar in every revision pod, in front of the
    /// serving container; `None` (the default) runs none, and the data
    /// plane reaches the serving container directly.
    pub queue_proxy: Option<QueueProxySidecar>,
}

impl Default for KubeWorkloadConfig {
    fn default() -> Self {
        KubeWorkloadConfig {
            field_manager: DEFAULT_FIELD_MANAGER.to_owned(),
            namespace: None,
            progress_deadline: DEFAULT_PROGRESS_DEADLINE,
            queue_proxy: None,
        }
    }
}

/// The name of a revision's Deployment: `<revision>-deployment`.
pub fn deployment_name(revision: &str) -> String {
    child_name(revision, "-deployment")
}

/// The labels both objects select the revision's pods by.
fn selector(spec: &WorkloadSpec) -> BTreeMap<String, String> {
    let (key, value) = match spec.labels.get(keys::REVISION_UID) {
        Some(uid) => (keys::REVISION_UID, uid.clone()),
        None => (keys::REVISION, spec.key.revision.clone()),
    };
    BTreeMap::from([(key.to_owned(), value)])
}

fn object_meta(spec: &WorkloadSpec, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(spec.key.namespace.clone()),
        labels: Some(spec.labels.clone()),
        owner_references: spec.owner.clone().map(|owner| vec![owner]),
        ..ObjectMeta::default()
    }
}

fn unsupported(spec: &WorkloadSpec, message: impl Into<String>) -> BackendError {
    BackendError::Unsupported {
        key: spec.key.clone(),
        message: message.into(),
    }
}

/// Points an unset or zero probe port at the container port and makes
/// Knative's "probe aggressively" (`periodSeconds: 0`) a 1 s period; a
/// probe without a handler becomes a TCP probe of the container port.
fn kubelet_probe(probe: Option<&Probe>, port: u16) -> Probe {
    let port_value = IntOrString::Int(i32::from(port));
    let unset = |p: &IntOrString| {
        matches!(p, IntOrString::Int(0)) || matches!(p, IntOrString::String(s) if s.is_empty())
    };
    let mut probe = probe.cloned().unwrap_or_default();
    if let Some(http) = probe.http_get.as_mut()
        && unset(&http.port)
    {
        http.port = port_value.clone();
    }
    if let Some(tcp) = probe.tcp_socket.as_mut()
        && unset(&tcp.port)
    {
        tcp.port = port_value.clone();
    }
    if let Some(grpc) = probe.grpc.as_mut()
        && grpc.port == 0
    {
        grpc.port = i32::from(port);
    }
    if probe.http_get.is_none()
        && probe.tcp_socket.is_none()
        && probe.grpc.is_none()
        && probe.exec.is_none()
    {
        probe.tcp_socket = Some(TCPSocketAction {
            port: port_value,
            ..TCPSocketAction::default()
        });
    }
    if probe.period_seconds.is_none_or(|p| p <= 0) {
        probe.period_seconds = Some(1);
    }
    probe
}

/// The serving container as it runs in the pod.
fn serving_container(spec: &WorkloadSpec, container: &Container) -> Container {
    let mut c = container.clone();
    if c.name.is_empty() {
        c.name = DEFAULT_USER_CONTAINER_NAME.to_owned();
    }
    let port = spec.container_port;
    if c.ports.as_ref().is_none_or(Vec::is_empty) {
        c.ports = Some(vec![ContainerPort {
            name: Some(USER_PORT_NAME.to_owned()),
            container_port: i32::from(port),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]);
    }
    let mut env = c.env.take().unwrap_or_default();
    let mut knative = vec![
        ("PORT", Some(port.to_string())),
        ("K_REVISION", Some(spec.key.revision.clone())),
        (
            "K_CONFIGURATION",
            spec.labels.get(keys::CONFIGURATION).cloned(),
        ),
        ("K_SERVICE", spec.labels.get(keys::SERVICE).cloned()),
    ];
    knative.retain(|(name, value)| value.is_some() && !env.iter().any(|e| e.name == *name));
    env.extend(knative.into_iter().map(|(name, value)| EnvVar {
        name: name.to_owned(),
        value,
        ..EnvVar::default()
    }));
    c.env = Some(env);
    c.readiness_probe = Some(kubelet_probe(c.readiness_probe.as_ref(), port));
    if let Some(liveness) = c.liveness_probe.as_ref() {
        let mut fixed = kubelet_probe(Some(liveness), port);
        fixed.period_seconds = liveness.period_seconds.filter(|p| *p > 0);
        c.liveness_probe = Some(fixed);
    }
    c
}

/// Whether the queue-proxy can run `probe` itself: HTTP (not HTTPS) and
/// TCP probes; exec, gRPC and HTTPS probes stay with the kubelet.
fn queue_proxy_runs(probe: &Probe) -> bool {
    match &probe.http_get {
        Some(http) => !http
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("https")),
        None => probe.tcp_socket.is_some() && probe.exec.is_none() && probe.grpc.is_none(),
    }
}

/// The probe the queue-proxy runs against the app (`SERVING_READINESS_PROBE`),
/// from the serving container's kubelet-ready `probe`, as upstream's
/// `applyReadinessProbeDefaultsForExec`: on 127.0.0.1, at the probe's own
/// port or the container port, HTTP probes with `K-Kubelet-Probe: queue`;
/// a probe the queue-proxy cannot run becomes a TCP probe of the container
/// port. `period` is the container's own `periodSeconds` (0 or none: the
/// queue-proxy probes as fast as it likes).
fn app_probe(probe: &Probe, period: Option<i32>, port: u16) -> Probe {
    let port_or = |p: &IntOrString| match p {
        IntOrString::Int(n) if *n != 0 => IntOrString::Int(*n),
        _ => IntOrString::Int(i32::from(port)),
    };
    let mut app = probe.clone();
    app.period_seconds = period;
    app.termination_grace_period_seconds = None;
    if !queue_proxy_runs(probe) {
        app.exec = None;
        app.grpc = None;
        app.http_get = None;
        app.tcp_socket = Some(TCPSocketAction {
            host: Some(LOCAL_ADDRESS.to_owned()),
            port: IntOrString::Int(i32::from(port)),
        });
    } else if let Some(http) = app.http_get.as_mut() {
        http.host = Some(LOCAL_ADDRESS.to_owned());
        http.port = port_or(&http.port);
        http.scheme.get_or_insert_with(|| "HTTP".to_owned());
        http.http_headers
            .get_or_insert_with(Vec::new)
            .push(HTTPHeader {
                name: KUBELET_PROBE_HEADER.to_owned(),
                value: headers::PROBE_QUEUE.to_owned(),
            });
    } else if let Some(tcp) = app.tcp_socket.as_mut() {
        tcp.host = Some(LOCAL_ADDRESS.to_owned());
        tcp.port = port_or(&tcp.port);
    }
    if app.period_seconds.is_some_and(|p| p > 0) && app.timeout_seconds.is_none_or(|t| t < 1) {
        app.timeout_seconds = Some(1);
    }
    app
}

/// The sidecar's own readiness probe: the serving container's timing with
/// a Knative probe of the queue-proxy (`GET :8012` with
/// `K-Network-Probe: queue`), which answers 200 only while the app passes
/// its probe.
fn queue_proxy_probe(probe: &Probe) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            port: IntOrString::Int(i32::from(QUEUE_SERVING_PORT)),
            http_headers: Some(vec![HTTPHeader {
                name: PROBE_HEADER.to_owned(),
                value: headers::PROBE_QUEUE.to_owned(),
            }]),
            ..HTTPGetAction::default()
        }),
        exec: None,
        grpc: None,
        tcp_socket: None,
        termination_grace_period_seconds: None,
        ..probe.clone()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Whole seconds for a queue-proxy variable; `None` is 0 (off).
fn env_seconds(duration: Option<Duration>) -> String {
    duration.map_or(0, |d| d.as_secs().max(1)).to_string()
}

/// The queue-proxy's environment: upstream's variables, filled from the
/// revision (`knative queue-proxy` reads them).
fn queue_proxy_env(spec: &WorkloadSpec, readiness_json: String) -> Vec<EnvVar> {
    let label = |key: &str| spec.labels.get(key).cloned().unwrap_or_default();
    let grace = spec.termination_grace_period;
    vec![
        env("SERVING_NAMESPACE", spec.key.namespace.clone()),
        env("SERVING_SERVICE", label(keys::SERVICE)),
        env("SERVING_CONFIGURATION", label(keys::CONFIGURATION)),
        env("SERVING_REVISION", spec.key.revision.clone()),
        env("QUEUE_SERVING_PORT", QUEUE_SERVING_PORT.to_string()),
        env("QUEUE_ADMIN_PORT", QUEUE_ADMIN_PORT.to_string()),
        env("QUEUE_METRICS_PORT", QUEUE_METRICS_PORT.to_string()),
        env(
            "QUEUE_DRAIN_SECONDS",
            QUEUE_DRAIN.min(grace).as_secs().to_string(),
        ),
        env(
            "CONTAINER_CONCURRENCY",
            spec.container_concurrency.to_string(),
        ),
        env("REVISION_TIMEOUT_SECONDS", grace.as_secs().to_string()),
        env(
            "REVISION_RESPONSE_START_TIMEOUT_SECONDS",
            env_seconds(spec.response_start_timeout),
        ),
        env(
            "REVISION_IDLE_TIMEOUT_SECONDS",
            env_seconds(spec.idle_timeout),
        ),
        env("USER_PORT", spec.container_port.to_string()),
        env("SERVING_READINESS_PROBE", readiness_json),
        field_env("SERVING_POD", "metadata.name"),
        field_env("SERVING_POD_IP", "status.podIP"),
    ]
}

/// Upstream's locked-down security context of the sidecar.
fn queue_proxy_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

/// Puts the queue-proxy in front of the serving container (already in
/// `containers`, built from `serving`): moves the readiness probe it can
/// run into `SERVING_READINESS_PROBE`, gives the serving container a
/// `preStop` hook that waits for the drain (unless it has one), and
/// returns the `queue-proxy` container to add to the pod.
fn add_queue_proxy(
    spec: &WorkloadSpec,
    sidecar: &QueueProxySidecar,
    serving: &Container,
    containers: &mut [Container],
) -> Result<Container, BackendError> {
    let port = spec.container_port;
    if RESERVED_PORTS.contains(&port) {
        return Err(unsupported(
            spec,
            format!(
                "container port {port} is reserved for the queue-proxy sidecar \
                 (8012, 8013, 8022, 9090 and 9091 are)"
            ),
        ));
    }
    if containers
        .iter()
        .any(|c| c.name == QUEUE_PROXY_CONTAINER_NAME)
    {
        return Err(unsupported(
            spec,
            format!(
                "the container name {QUEUE_PROXY_CONTAINER_NAME:?} is reserved for the sidecar"
            ),
        ));
    }
    let Some(user) = containers.get_mut(spec.serving_container) else {
        return Err(unsupported(spec, "no serving container"));
    };
    let probe = user
        .readiness_probe
        .take()
        .unwrap_or_else(|| kubelet_probe(None, port));
    let period = serving
        .readiness_probe
        .as_ref()
        .and_then(|p| p.period_seconds);
    let app = app_probe(&probe, period, port);
    if !queue_proxy_runs(&probe) {
        user.readiness_probe = Some(probe.clone());
    }
    let lifecycle = user.lifecycle.get_or_insert_with(Lifecycle::default);
    lifecycle.pre_stop.get_or_insert_with(|| LifecycleHandler {
        http_get: Some(HTTPGetAction {
            path: Some("/wait-for-drain".to_owned()),
            port: IntOrString::Int(i32::from(QUEUE_ADMIN_PORT)),
            ..HTTPGetAction::default()
        }),
        ..LifecycleHandler::default()
    });
    let readiness_json = serde_json::to_string(&app).map_err(|e| {
        unsupported(
            spec,
            format!("cannot encode the readiness probe as JSON: {e}"),
        )
    })?;
    Ok(Container {
        name: QUEUE_PROXY_CONTAINER_NAME.to_owned(),
        image: Some(sidecar.image.clone()),
        command: Some(sidecar.command.clone()),
        ports: Some(
            QUEUE_PORTS
                .iter()
                .map(|(name, port)| ContainerPort {
                    name: Some((*name).to_owned()),
                    container_port: i32::from(*port),
                    protocol: Some("TCP".to_owned()),
                    ..ContainerPort::default()
                })
                .collect(),
        ),
        env: Some(queue_proxy_env(spec, readiness_json)),
        readiness_probe: Some(queue_proxy_probe(&probe)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([(
                "cpu".to_owned(),
                Quantity(QUEUE_PROXY_CPU_REQUEST.to_owned()),
            )])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(queue_proxy_security_context()),
        ..Container::default()
    })
}

/// The pod annotation naming the container `kubectl logs` and `kubectl
/// exec` pick when none is given: the serving container.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// The Deployment running `spec`'s replicas, with `replicas` replicas.
///
/// Fails with [`BackendError::Unsupported`] when the spec has no
/// container at [`WorkloadSpec::serving_container`].
pub fn desired_deployment(
    spec: &WorkloadSpec,
    replicas: u32,
    config: &KubeWorkloadConfig,
) -> Result<Deployment, BackendError> {
    let Some(serving) = spec.containers.get(spec.serving_container) else {
        return Err(unsupported(
            spec,
            format!(
                "the revision has {} containers, no serving container at index {}",
                spec.containers.len(),
                spec.serving_container
            ),
        ));
    };
    let mut containers: Vec<Container> = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i == spec.serving_container {
                serving_container(spec, serving)
            } else {
                let mut c = c.clone();
                if c.name.is_empty() {
                    c.name = format!("sidecar-{i}");
                }
                c
            }
        })
        .collect();
    if let Some(sidecar) = &config.queue_proxy {
        let queue_proxy = add_queue_proxy(spec, sidecar, serving, &mut containers)?;
        containers.push(queue_proxy);
    }
    let grace = i64::try_from(spec.termination_grace_period.as_secs()).unwrap_or(i64::MAX);
    let deadline = i32::try_from(config.progress_deadline.as_secs()).unwrap_or(i32::MAX);
    let annotations = (!spec.annotations.is_empty()).then(|| spec.annotations.clone());
    // As upstream: the pods also name the serving container as kubectl's
    // default (for `kubectl logs` and `exec`).
    let mut pod_annotations = spec.annotations.clone();
    if let Some(serving) = containers.get(spec.serving_container)
        && !serving.name.is_empty()
    {
        pod_annotations.insert(
            DEFAULT_CONTAINER_ANNOTATION.to_owned(),
            serving.name.clone(),
        );
    }
    Ok(Deployment {
        metadata: ObjectMeta {
            annotations,
            ..object_meta(spec, deployment_name(&spec.key.revision))
        },
        spec: DeploymentSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: Some(selector(spec)),
                ..LabelSelector::default()
            },
            progress_deadline_seconds: Some(deadline),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(spec.labels.clone()),
                    annotations: (!pod_annotations.is_empty()).then_some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                // The revision's own pod fields (volumes, service account,
                // pull secrets, init containers, scheduling, …) as written;
                // Knative sets the grace period to the revision's timeout
                // and turns service links off unless the revision asks.
                spec: Some(PodSpec {
                    containers,
                    enable_service_links: spec.pod.enable_service_links.or(Some(false)),
                    termination_grace_period_seconds: Some(grace),
                    ..spec.pod.clone()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    })
}

/// The port 80 both Services send requests to: the container port, or the
/// queue-proxy's [`QUEUE_SERVING_PORT`] (named `http`: it speaks HTTP/1)
/// when `config` has a sidecar; `http2` with `appProtocol:
/// kubernetes.io/h2c` when there is none and the container port is named
/// `h2c`.
fn serving_port(spec: &WorkloadSpec, config: &KubeWorkloadConfig) -> ServicePort {
    let target = match config.queue_proxy {
        Some(_) => QUEUE_SERVING_PORT,
        None => spec.container_port,
    };
    let h2c = config.queue_proxy.is_none()
        && spec
            .containers
            .get(spec.serving_container)
            .and_then(|c| c.ports.as_ref())
            .and_then(|ports| ports.first())
            .and_then(|p| p.name.as_deref())
            == Some("h2c");
    let (name, app_protocol) = if h2c {
        ("http2", Some("kubernetes.io/h2c".to_owned()))
    } else {
        ("http", None)
    };
    ServicePort {
        name: Some(name.to_owned()),
        port: SERVICE_PORT,
        protocol: Some("TCP".to_owned()),
        target_port: Some(IntOrString::Int(i32::from(target))),
        app_protocol,
        ..ServicePort::default()
    }
}

/// A ClusterIP Service named `name` selecting `spec`'s pods.
fn revision_service(spec: &WorkloadSpec, name: String, ports: Vec<ServicePort>) -> Service {
    Service {
        metadata: object_meta(spec, name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector(spec)),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The Service in front of `spec`'s replicas: `<revision>`, port 80 to the
/// container port, or to the queue-proxy's [`QUEUE_SERVING_PORT`] (named
/// `http`: it speaks HTTP/1) when `config` has a sidecar.
pub fn desired_service(spec: &WorkloadSpec, config: &KubeWorkloadConfig) -> Service {
    revision_service(
        spec,
        spec.key.revision.clone(),
        vec![serving_port(spec, config)],
    )
}

/// The name of a revision's private Service: `<revision>-private`.
pub fn private_service_name(revision: &str) -> String {
    child_name(revision, PRIVATE_SERVICE_SUFFIX)
}

/// The private Service of `spec`'s replicas, `<revision>-private`
/// (upstream's `MakePrivateService`): the same selector, labels and owner
/// as [`desired_service`], labelled
/// `networking.internal.knative.dev/serviceType: Private`, with the same
/// port 80; with a queue-proxy sidecar also its `http-queueadm`
/// ([`QUEUE_ADMIN_PORT`]), `http-autometric` ([`QUEUE_METRICS_PORT`]) and
/// `http-usermetric` ([`QUEUE_USER_METRICS_PORT`]) ports, each to the same
/// port of the pod.
pub fn desired_private_service(spec: &WorkloadSpec, config: &KubeWorkloadConfig) -> Service {
    let mut ports = vec![serving_port(spec, config)];
    if config.queue_proxy.is_some() {
        ports.extend(
            QUEUE_PORTS
                .iter()
                .filter(|(_, port)| *port != QUEUE_SERVING_PORT)
                .map(|(name, port)| ServicePort {
                    name: Some((*name).to_owned()),
                    port: i32::from(*port),
                    protocol: Some("TCP".to_owned()),
                    target_port: Some(IntOrString::Int(i32::from(*port))),
                    ..ServicePort::default()
                }),
        );
    }
    let mut service = revision_service(spec, private_service_name(&spec.key.revision), ports);
    service
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(
            SERVICE_TYPE_LABEL.to_owned(),
            PRIVATE_SERVICE_TYPE.to_owned(),
        );
    service
}

/// What a backend's watchers have seen of one revision.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    /// Its Deployment.
    pub deployment: Option<Deployment>,
    /// Its pods, by name.
    pub pods: BTreeMap<String, Pod>,
    /// Its Service's EndpointSlices, by name.
    pub slices: BTreeMap<String, EndpointSlice>,
}

/// A revision's status from what was observed of it and the replicas
/// asked for (see the [module docs](self), "Status").
pub fn workload_status(desired: u32, observed: &Observation) -> WorkloadStatus {
    let actual = observed
        .deployment
        .as_ref()
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.replicas)
        .and_then(|r| u32::try_from(r).ok())
        .unwrap_or(0);
    let ready = ready_endpoints(observed.slices.values());
    let failure = if ready.is_empty() {
        pod_failure(observed.pods.values())
            .or_else(|| observed.deployment.as_ref().and_then(deployment_failure))
    } else {
        None
    };
    WorkloadStatus {
        desired,
        actual,
        ready,
        failure,
    }
}

/// The ready endpoints of a Service's slices, by pod name.
fn ready_endpoints<'a>(slices: impl Iterator<Item = &'a EndpointSlice>) -> Vec<Endpoint> {
    let mut by_replica: BTreeMap<String, SocketAddr> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let ports = slice.ports.as_deref().unwrap_or_default();
        let port = ports
            .iter()
            .find(|p| matches!(p.name.as_deref(), Some("http" | "http2")))
            .or_else(|| ports.first())
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok());
        let Some(port) = port else { continue };
        for endpoint in slice.endpoints.iter().flatten() {
            let conditions = endpoint.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready) != Some(false)
                && conditions.and_then(|c| c.terminating) != Some(true);
            if !ready {
                continue;
            }
            let Some(ip) = endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let address = SocketAddr::new(ip, port);
            let replica = endpoint
                .target_ref
                .as_ref()
                .and_then(|r| r.name.clone())
                .unwrap_or_else(|| address.to_string());
            by_replica.insert(replica, address);
        }
    }
    by_replica
        .into_iter()
        .map(|(replica, address)| Endpoint { replica, address })
        .collect()
}

/// The first problem the pods' statuses show.
fn pod_failure<'a>(pods: impl Iterator<Item = &'a Pod> + Clone) -> Option<WorkloadFailure> {
    let statuses = || {
        pods.clone()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.status.as_ref())
    };
    for status in statuses() {
        for container in status.container_statuses.iter().flatten() {
            let terminated = container
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .or_else(|| container.state.as_ref().and_then(|s| s.terminated.as_ref()))
                .filter(|t| {
                    t.exit_code != 0 || t.message.as_deref().is_some_and(|m| !m.is_empty())
                });
            if let Some(t) = terminated {
                let message = t
                    .message
                    .as_deref()
                    .filter(|m| !m.is_empty())
                    .unwrap_or("container exited with no error");
                return Some(WorkloadFailure {
                    reason: format!("ExitCode{}", t.exit_code),
                    message: format!("Container failed with: {}", message.trim_end()),
                    container: true,
                });
            }
        }
    }
    for status in statuses() {
        for container in status.container_statuses.iter().flatten() {
            let Some(waiting) = container.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
                continue;
            };
            let reason = waiting.reason.as_deref().unwrap_or_default();
            if IMAGE_WAITING_REASONS.contains(&reason) {
                return Some(WorkloadFailure {
                    reason: reason.to_owned(),
                    message: waiting.message.clone().unwrap_or_else(|| {
                        format!("container {:?} is waiting: {reason}", container.name)
                    }),
                    container: false,
                });
            }
        }
    }
    for status in statuses() {
        let unscheduled = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False");
        if let Some(c) = unscheduled {
            return Some(WorkloadFailure {
                reason: c
                    .reason
                    .clone()
                    .unwrap_or_else(|| "Unschedulable".to_owned()),
                message: c.message.clone().unwrap_or_default(),
                container: false,
            });
        }
    }
    None
}

/// A problem the Deployment's conditions report.
fn deployment_failure(deployment: &Deployment) -> Option<WorkloadFailure> {
    let conditions = deployment.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find(|c| {
            let (type_, status) = (c.type_.as_deref(), c.status.as_deref());
            (type_ == Some("Progressing")
                && status == Some("False")
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
                || (type_ == Some("ReplicaFailure") && status == Some("True"))
        })
        .map(|c| WorkloadFailure {
            reason: c
                .reason
                .clone()
                .or_else(|| c.type_.clone())
                .unwrap_or_default(),
            message: c.message.clone().unwrap_or_default(),
            container: false,
        })
}

/// Which revision an observed object belongs to.
trait Observed:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + Send
    + 'static
{
    fn key(&self) -> Option<WorkloadKey> {
        let revision = self.labels().get(keys::REVISION)?;
        Some(WorkloadKey::new(self.namespace()?, revision.clone()))
    }
    fn put(self, observation: &mut Observation);
    fn take(&self, observation: &mut Observation);
    fn clear(observation: &mut Observation);
}

impl Observed for Deployment {
    fn put(self, observation: &mut Observation) {
        observation.deployment = Some(self);
    }
    fn take(&self, observation: &mut Observation) {
        observation.deployment = None;
    }
    fn clear(observation: &mut Observation) {
        observation.deployment = None;
    }
}

impl Observed for Pod {
    fn put(self, observation: &mut Observation) {
        observation.pods.insert(self.name_any(), self);
    }
    fn take(&self, observation: &mut Observation) {
        observation.pods.remove(&self.name_any());
    }
    fn clear(observation: &mut Observation) {
        observation.pods.clear();
    }
}

impl Observed for EndpointSlice {
    /// The revision of a slice of its public Service `<revision>`; the
    /// private Service's slices (which inherit the revision's labels too)
    /// are not followed.
    fn key(&self) -> Option<WorkloadKey> {
        let labels = self.labels();
        let service = labels
            .get(SERVICE_NAME_LABEL)
            .or_else(|| labels.get(keys::REVISION))?;
        if labels
            .get(keys::REVISION)
            .is_some_and(|revision| revision != service)
        {
            return None;
        }
        Some(WorkloadKey::new(self.namespace()?, service.clone()))
    }
    fn put(self, observation: &mut Observation) {
        observation.slices.insert(self.name_any(), self);
    }
    fn take(&self, observation: &mut Observation) {
        observation.slices.remove(&self.name_any());
    }
    fn clear(observation: &mut Observation) {
        observation.slices.clear();
    }
}

/// One tracked workload.
struct Tracked {
    /// The replicas last asked for (`None` until known).
    desired: Option<u32>,
    status: watch::Sender<WorkloadStatus>,
}

struct Inner {
    client: Client,
    config: KubeWorkloadConfig,
    workloads: Mutex<HashMap<WorkloadKey, Tracked>>,
    observed: Mutex<HashMap<WorkloadKey, Observation>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs revisions as Deployments and Services (public and private). See
/// the [module docs](self).
///
/// Cheap to clone: clones share their workloads.
#[derive(Clone)]
pub struct KubeWorkloadBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KubeWorkloadBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeWorkloadBackend")
            .field("config", &self.inner.config)
            .field("workloads", &lock(&self.inner.workloads).len())
            .finish()
    }
}

impl KubeWorkloadBackend {
    /// A backend writing through `client`. Run [`Self::watch_status`] for
    /// status updates.
    pub fn new(client: Client, config: KubeWorkloadConfig) -> Self {
        KubeWorkloadBackend {
            inner: Arc::new(Inner {
                client,
                config,
                workloads: Mutex::new(HashMap::new()),
                observed: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Its settings.
    pub fn config(&self) -> &KubeWorkloadConfig {
        &self.inner.config
    }

    fn deployments(&self, namespace: &str) -> Api<Deployment> {
        Api::namespaced(self.inner.client.clone(), namespace)
    }

    fn services(&self, namespace: &str) -> Api<Service> {
        Api::namespaced(self.inner.client.clone(), namespace)
    }

    fn apply_params(&self) -> PatchParams {
        PatchParams::apply(&self.inner.config.field_manager).force()
    }

    /// Follows the revisions' Deployments, Pods and EndpointSlices and
    /// publishes each change on the status channels. Runs until the
    /// watches end (never, in practice; errors are retried with back-off).
    pub fn watch_status(&self) -> impl Future<Output = ()> + Send + 'static {
        let backend = self.clone();
        let client = self.inner.client.clone();
        let namespace = self.inner.config.namespace.clone();
        let config = watcher::Config::default().labels(keys::REVISION);
        let deployments = follow::<Deployment>(&client, namespace.as_deref(), &config);
        let pods = follow::<Pod>(&client, namespace.as_deref(), &config);
        let slices = follow::<EndpointSlice>(&client, namespace.as_deref(), &config);
        async move {
            let mut buffers = (Vec::new(), Vec::new(), Vec::new());
            let changes = futures::stream::select(
                deployments.map(Change::Deployment),
                futures::stream::select(pods.map(Change::Pod), slices.map(Change::Slice)),
            );
            futures::pin_mut!(changes);
            while let Some(change) = changes.next().await {
                match change {
                    Change::Deployment(e) => backend.observe(e, &mut buffers.0),
                    Change::Pod(e) => backend.observe(e, &mut buffers.1),
                    Change::Slice(e) => backend.observe(e, &mut buffers.2),
                }
            }
        }
        .instrument(tracing::info_span!("workload_status_watch"))
    }

    /// Records one watch event and republishes the statuses it changes.
    fn observe<K: Observed>(&self, event: Event<K>, buffer: &mut Vec<K>) {
        let touched: Vec<WorkloadKey> = {
            let mut observed = lock(&self.inner.observed);
            match event {
                Event::Init => {
                    buffer.clear();
                    Vec::new()
                }
                Event::InitApply(object) => {
                    buffer.push(object);
                    Vec::new()
                }
                Event::InitDone => {
                    let mut keys: BTreeSet<WorkloadKey> = BTreeSet::new();
                    for (key, observation) in observed.iter_mut() {
                        K::clear(observation);
                        keys.insert(key.clone());
                    }
                    for object in buffer.drain(..) {
                        if let Some(key) = object.key() {
                            object.put(observed.entry(key.clone()).or_default());
                            keys.insert(key);
                        }
                    }
                    keys.into_iter().collect()
                }
                Event::Apply(object) => match object.key() {
                    Some(key) => {
                        object.put(observed.entry(key.clone()).or_default());
                        vec![key]
                    }
                    None => Vec::new(),
                },
                Event::Delete(object) => match object.key() {
                    Some(key) => {
                        if let Some(observation) = observed.get_mut(&key) {
                            object.take(observation);
                        }
                        vec![key]
                    }
                    None => Vec::new(),
                },
            }
        };
        for key in touched {
            self.publish(&key);
        }
    }

    /// Recomputes and sends the status of `key`, if it is tracked.
    fn publish(&self, key: &WorkloadKey) {
        let workloads = lock(&self.inner.workloads);
        let Some(tracked) = workloads.get(key) else {
            return;
        };
        let observed = lock(&self.inner.observed);
        let empty = Observation::default();
        let observation = observed.get(key).unwrap_or(&empty);
        let desired = tracked.desired.unwrap_or_else(|| {
            observation
                .deployment
                .as_ref()
                .and_then(|d| d.spec.replicas)
                .and_then(|r| u32::try_from(r).ok())
                .unwrap_or(0)
        });
        let status = workload_status(desired, observation);
        tracked.status.send_if_modified(|current| {
            if *current == status {
                false
            } else {
                *current = status;
                true
            }
        });
    }

    /// The replicas `key` should run, as far as this process knows.
    async fn known_replicas(&self, key: &WorkloadKey) -> Result<u32, BackendError> {
        if let Some(desired) = lock(&self.inner.workloads).get(key).and_then(|t| t.desired) {
            return Ok(desired);
        }
        let name = deployment_name(&key.revision);
        let existing = self
            .deployments(&key.namespace)
            .get_opt(&name)
            .await
            .map_err(|e| runtime(key, format!("cannot read Deployment {name}"), e))?;
        let replicas = existing
            .and_then(|d| d.spec.replicas)
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(0);
        Ok(replicas)
    }
}

/// A watch event of one of the three kinds.
enum Change {
    Deployment(Event<Deployment>),
    Pod(Event<Pod>),
    Slice(Event<EndpointSlice>),
}

/// A watcher over `K` objects matching `config`, with back-off, that logs
/// and skips errors and drops managed fields.
fn follow<K>(
    client: &Client,
    namespace: Option<&str>,
    config: &watcher::Config,
) -> impl Stream<Item = Event<K>> + Send + use<K>
where
    K: Observed + serde::de::DeserializeOwned + Sync,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    watcher::watcher(api, config.clone())
        .default_backoff()
        .filter_map(|event| async move {
            match event {
                Ok(event) => Some(event.modify(|o| o.managed_fields_mut().clear())),
                Err(error) => {
                    let kind = K::kind(&());
                    tracing::warn!(%kind, %error, "watch failed; retrying");
                    None
                }
            }
        })
}

fn runtime(key: &WorkloadKey, message: String, error: kube::Error) -> BackendError {
    BackendError::Runtime {
        key: key.clone(),
        message: format!("{message}: {error}"),
        source: Some(Box::new(error)),
    }
}

/// Deletes `name` through `api` (in the background); one that is gone
/// already is not an error.
async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_not_found())
}

#[async_trait]
impl WorkloadBackend for KubeWorkloadBackend {
    async fn ensure(&self, spec: &WorkloadSpec) -> Result<(), BackendError> {
        let key = &spec.key;
        async {
            let replicas = self.known_replicas(key).await?;
            let deployment = desired_deployment(spec, replicas, &self.inner.config)?;
            let name = deployment_name(&key.revision);
            self.deployments(&key.namespace)
                .patch(&name, &self.apply_params(), &Patch::Apply(&deployment))
                .await
                .map_err(|e| runtime(key, format!("cannot apply Deployment {name}"), e))?;
            let services = [
                (
                    key.revision.clone(),
                    desired_service(spec, &self.inner.config),
                ),
                (
                    private_service_name(&key.revision),
                    desired_private_service(spec, &self.inner.config),
                ),
            ];
            for (name, service) in &services {
                self.services(&key.namespace)
                    .patch(name, &self.apply_params(), &Patch::Apply(service))
                    .await
                    .map_err(|e| runtime(key, format!("cannot apply Service {name}"), e))?;
            }
            {
                let mut workloads = lock(&self.inner.workloads);
                let tracked = workloads.entry(key.clone()).or_insert_with(|| Tracked {
                    desired: None,
                    status: watch::channel(WorkloadStatus::default()).0,
                });
                tracked.desired.get_or_insert(replicas);
            }
            self.publish(key);
            tracing::debug!(replicas, "workload applied");
            Ok(())
        }
        .instrument(tracing::info_span!("workload_ensure", workload = %key))
        .await
    }

    async fn scale(&self, key: &WorkloadKey, replicas: u32) -> Result<(), BackendError> {
        async {
            if let Some(tracked) = lock(&self.inner.workloads).get_mut(key) {
                tracked.desired = Some(replicas);
            }
            let name = deployment_name(&key.revision);
            let params = PatchParams {
                field_manager: Some(self.inner.config.field_manager.clone()),
                ..PatchParams::default()
            };
            let patch = serde_json::json!({ "spec": { "replicas": replicas } });
            match self
                .deployments(&key.namespace)
                .patch(&name, &params, &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => return Err(BackendError::NotFound(key.clone())),
                Err(e) => {
                    return Err(runtime(key, format!("cannot scale Deployment {name}"), e));
                }
            }
            self.publish(key);
            tracing::debug!(replicas, "workload scaled");
            Ok(())
        }
        .instrument(tracing::info_span!("workload_scale", workload = %key))
        .await
    }

    async fn remove(&self, key: &WorkloadKey) -> Result<(), BackendError> {
        async {
            let name = deployment_name(&key.revision);
            delete_if_present(&self.deployments(&key.namespace), &name)
                .await
                .map_err(|e| runtime(key, format!("cannot delete Deployment {name}"), e))?;
            for service in [key.revision.clone(), private_service_name(&key.revision)] {
                delete_if_present(&self.services(&key.namespace), &service)
                    .await
                    .map_err(|e| runtime(key, format!("cannot delete Service {service}"), e))?;
            }
            lock(&self.inner.workloads).remove(key);
            tracing::debug!("workload removed");
            Ok(())
        }
        .instrument(tracing::info_span!("workload_remove", workload = %key))
        .await
    }

    fn status(&self, key: &WorkloadKey) -> Result<watch::Receiver<WorkloadStatus>, BackendError> {
        lock(&self.inner.workloads)
            .get(key)
            .map(|t| t.status.subscribe())
            .ok_or_else(|| BackendError::NotFound(key.clone()))
    }
}

#[cfg(test)]
mod tests;
