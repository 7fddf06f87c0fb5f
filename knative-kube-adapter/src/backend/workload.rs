//! [`KubeWorkloadBackend`]: a revision's replicas as a Kubernetes
//! Deployment and Service (`specs/CRDS.md`, "Kubernetes objects a revision
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
//!
//! Both carry the [`WorkloadSpec::labels`] (the revision's labels without
//! the routing state, plus `serving.knative.dev/revision`,
//! `serving.knative.dev/revisionUID` and `app`, computed by the revision
//! reconciler) and [`WorkloadSpec::owner`] as their controlling owner
//! reference, so deleting the Revision deletes them. Both select pods by
//! `serving.knative.dev/revisionUID` (by `serving.knative.dev/revision`
//! when the spec has no uid), as upstream's Deployment selector does.
//!
//! The activator and ingress run in the operator's own process, so there
//! is no queue-proxy sidecar and no private Service: the data plane sends
//! requests straight to pod IPs ([`Endpoint::address`] is
//! `<pod IP>:<container port>`).
//!
//! # Writes
//!
//! [`WorkloadBackend::ensure`] server-side applies both objects with
//! [`KubeWorkloadConfig::field_manager`] (forced: the operator owns them).
//! The applied Deployment always includes `spec.replicas`, set to the last
//! count [`WorkloadBackend::scale`] asked for (read from the Deployment
//! once after a restart, 0 for a new one), so an apply never resets the
//! scale and a new revision starts no replica before it is scaled.
//! `scale` merge-patches `spec.replicas`; `remove` deletes both objects
//! (404 is fine).
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
//! - `ready`: the ready endpoints of the Service's EndpointSlices
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
    Container, ContainerPort, EnvVar, PodSpec, PodTemplateSpec, Probe, Service, ServicePort,
    ServiceSpec, TCPSocketAction,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use knative_core::apis::names::child_name;
use knative_serving::api::DEFAULT_USER_CONTAINER_NAME;
use knative_serving::api::keys;
use knative_serving::backend::{
    BackendError, Endpoint, WorkloadBackend, WorkloadFailure, WorkloadKey, WorkloadSpec,
    WorkloadStatus,
};
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
/// The port of a revision's Service.
const SERVICE_PORT: i32 = 80;
/// Container waiting reasons that mean the image cannot be had.
const IMAGE_WAITING_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
];

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
}

impl Default for KubeWorkloadConfig {
    fn default() -> Self {
        KubeWorkloadConfig {
            field_manager: DEFAULT_FIELD_MANAGER.to_owned(),
            namespace: None,
            progress_deadline: DEFAULT_PROGRESS_DEADLINE,
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
    let containers = spec
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
    let grace = i64::try_from(spec.termination_grace_period.as_secs()).unwrap_or(i64::MAX);
    let deadline = i32::try_from(config.progress_deadline.as_secs()).unwrap_or(i32::MAX);
    Ok(Deployment {
        metadata: object_meta(spec, deployment_name(&spec.key.revision)),
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
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers,
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(grace),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    })
}

/// The Service in front of `spec`'s replicas: `<revision>`, port 80 to the
/// container port.
pub fn desired_service(spec: &WorkloadSpec) -> Service {
    let h2c = spec
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
    Service {
        metadata: object_meta(spec, spec.key.revision.clone()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector(spec)),
            ports: Some(vec![ServicePort {
                name: Some(name.to_owned()),
                port: SERVICE_PORT,
                protocol: Some("TCP".to_owned()),
                target_port: Some(IntOrString::Int(i32::from(spec.container_port))),
                app_protocol,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
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
    fn key(&self) -> Option<WorkloadKey> {
        let labels = self.labels();
        let service = labels
            .get(SERVICE_NAME_LABEL)
            .or_else(|| labels.get(keys::REVISION))?;
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

/// Runs revisions as Deployments and Services. See the [module docs](self).
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
            let service = desired_service(spec);
            let name = deployment_name(&key.revision);
            self.deployments(&key.namespace)
                .patch(&name, &self.apply_params(), &Patch::Apply(&deployment))
                .await
                .map_err(|e| runtime(key, format!("cannot apply Deployment {name}"), e))?;
            self.services(&key.namespace)
                .patch(&key.revision, &self.apply_params(), &Patch::Apply(&service))
                .await
                .map_err(|e| runtime(key, format!("cannot apply Service {}", key.revision), e))?;
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
            let params = DeleteParams::background();
            match self
                .deployments(&key.namespace)
                .delete(&name, &params)
                .await
            {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    return Err(runtime(key, format!("cannot delete Deployment {name}"), e));
                }
            }
            match self
                .services(&key.namespace)
                .delete(&key.revision, &params)
                .await
            {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    return Err(runtime(
                        key,
                        format!("cannot delete Service {}", key.revision),
                        e,
                    ));
                }
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
