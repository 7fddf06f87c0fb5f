//! The embedded local platform: Knative Serving and Eventing in one
//! process, on this machine, with no cluster.
//!
//! [`Platform::builder`] (or [`Platform::start`] with a [`PlatformConfig`])
//! wires the in-memory object store, the Serving
//! controllers with local processes as replicas (the KPA autoscaler, the
//! ingress, activator and in-process queue-proxies on a loopback port), and
//! the Eventing controllers with the broker data plane (ingress on a
//! loopback port, the durable embedded event log, per-trigger dispatchers).
//! The library API is what `kubectl` does against a cluster:
//! [`apply`](Platform::apply) manifests (multi-document YAML, all validated
//! before any is written), [`get`](Platform::get) and
//! [`list`](Platform::list) objects as JSON, [`delete`](Platform::delete)
//! them and [`wait_ready`](Platform::wait_ready).
//!
//! Images are not pulled: a container's image names a local command
//! ([`PlatformConfig::images`]); `knative.dev/sample-app` is the project's
//! sample app (HTTP, and an event display for CloudEvents). Services get
//! URLs under [`PlatformConfig::domain`] (`localhost` by default, so
//! `http://hello.default.localhost:PORT` works in curl and browsers), and
//! events for `*.svc.cluster.local` and `*.localhost` hosts (a trigger's
//! subscriber that is a Knative Service) go through the local ingress.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use knative::local::Platform;
//!
//! let platform = Platform::builder().start().await?;
//! platform
//!     .apply(
//!         r#"
//! apiVersion: serving.knative.dev/v1
//! kind: Service
//! metadata: {name: hello, namespace: default}
//! spec:
//!   template:
//!     spec:
//!       containers: [{image: knative.dev/sample-app}]
//! "#,
//!     )
//!     .await?;
//! let service = platform
//!     .wait_ready("ksvc", "default", "hello", std::time::Duration::from_secs(30))
//!     .await?;
//! println!("{}", service["status"]["url"]);
//! platform.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use knative_build::executor::{LocalExecutor, LocalExecutorConfig, StepExecutor};
use knative_build::reconciler::{Build, BuildObjects};
use knative_core::apis::{Context, SetDefaults, Validate};
use knative_core::store::{ApiObject, InMemoryStore, Objects, StoreError};
use knative_eventing::broker::{Brokers, DispatchConfig, IngressConfig};
use knative_eventing::channel::Channels;
use knative_eventing::delivery::Sender;
use knative_eventing::log::EventLog;
use knative_eventing::reconciler::{
    AddressResolver, Eventing, EventingAddresses, EventingObjects, KindAddresses, PingScheduler,
};
use knative_serving::api::{Route, Service};
use knative_serving::backend::WorkloadKey;
use knative_serving::backend::local::{LocalBackend, LocalCommand, LocalConfig, LogLine};
use knative_serving::config::ServingConfig;
use knative_serving::dataplane::ingress::DataplaneConfig;
use knative_serving::reconciler::{Serving, ServingObjects};
use kube::core::Selector;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The image name of the project's sample app.
pub const SAMPLE_APP_IMAGE: &str = "knative.dev/sample-app";

/// How a [`Platform`] is set up.
#[derive(Clone, Debug)]
pub struct PlatformConfig {
    /// Where durable state goes (the event log); `None`: a temporary
    /// directory removed at shutdown.
    pub state_dir: Option<PathBuf>,
    /// The Serving ingress's port on 127.0.0.1 (0: any free port).
    pub ingress_port: u16,
    /// The broker ingress's port on 127.0.0.1 (0: any free port).
    pub broker_port: u16,
    /// The channel ingress's port on 127.0.0.1 (0: any free port):
    /// InMemoryChannels (and so Sequences and Parallels) take events at
    /// `/{namespace}/{channel}` there.
    pub channel_port: u16,
    /// The domain of services' URLs (`{name}.{namespace}.{domain}`).
    pub domain: String,
    /// Commands that stand for images, by image name (added to the sample
    /// app's).
    pub images: HashMap<String, LocalCommand>,
    /// The command that runs the sample app; `None`: the `knative` binary
    /// next to this program (`knative sample-app`), if there is one.
    pub sample_app: Option<Vec<String>>,
    /// Keep broker events in the durable embedded log (`events.redb` in
    /// the state directory) rather than in memory.
    pub durable_events: bool,
    /// The autoscaler's settings (`config-autoscaler`); `None`: upstream's
    /// defaults.
    pub autoscaler: Option<knative_serving::autoscaling::config::AutoscalerConfig>,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            state_dir: None,
            ingress_port: 0,
            broker_port: 0,
            channel_port: 0,
            domain: "localhost".to_owned(),
            images: HashMap::new(),
            sample_app: None,
            durable_events: true,
            autoscaler: None,
        }
    }
}

/// Sets up and starts a [`Platform`]: one setter per [`PlatformConfig`]
/// field, each named like the field; whatever is not set keeps
/// [`PlatformConfig::default`]'s value.
///
/// ```no_run
/// # async fn demo() -> Result<(), knative::local::PlatformError> {
/// use knative::local::Platform;
///
/// let platform = Platform::builder()
///     .ingress_port(8080)
///     .domain("127.0.0.1.sslip.io")
///     .durable_events(false)
///     .start()
///     .await?;
/// platform
///     .apply("{apiVersion: eventing.knative.dev/v1, kind: Broker, metadata: {name: default, namespace: default}}")
///     .await?;
/// platform.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default)]
#[must_use = "a builder does nothing until `start` is awaited"]
pub struct PlatformBuilder {
    config: PlatformConfig,
}

impl PlatformBuilder {
    /// A builder with [`PlatformConfig::default`]'s settings.
    pub fn new() -> PlatformBuilder {
        PlatformBuilder::default()
    }

    /// Where durable state goes ([`PlatformConfig::state_dir`]); left
    /// unset, a temporary directory removed at shutdown.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> PlatformBuilder {
        self.config.state_dir = Some(dir.into());
        self
    }

    /// The Serving ingress's port on 127.0.0.1
    /// ([`PlatformConfig::ingress_port`]; 0: any free port).
    pub fn ingress_port(mut self, port: u16) -> PlatformBuilder {
        self.config.ingress_port = port;
        self
    }

    /// The broker ingress's port on 127.0.0.1
    /// ([`PlatformConfig::broker_port`]; 0: any free port).
    pub fn broker_port(mut self, port: u16) -> PlatformBuilder {
        self.config.broker_port = port;
        self
    }

    /// The channel ingress's port on 127.0.0.1
    /// ([`PlatformConfig::channel_port`]; 0: any free port).
    pub fn channel_port(mut self, port: u16) -> PlatformBuilder {
        self.config.channel_port = port;
        self
    }

    /// The domain of services' URLs ([`PlatformConfig::domain`]).
    pub fn domain(mut self, domain: impl Into<String>) -> PlatformBuilder {
        self.config.domain = domain.into();
        self
    }

    /// Commands that stand for images, by image name
    /// ([`PlatformConfig::images`]); replaces any set before.
    pub fn images(mut self, images: HashMap<String, LocalCommand>) -> PlatformBuilder {
        self.config.images = images;
        self
    }

    /// The command that runs the sample app
    /// ([`PlatformConfig::sample_app`]): the program, then its arguments.
    pub fn sample_app<I, S>(mut self, command: I) -> PlatformBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.sample_app = Some(command.into_iter().map(Into::into).collect());
        self
    }

    /// Whether broker events go to the durable embedded log
    /// ([`PlatformConfig::durable_events`]).
    pub fn durable_events(mut self, durable: bool) -> PlatformBuilder {
        self.config.durable_events = durable;
        self
    }

    /// The autoscaler's settings ([`PlatformConfig::autoscaler`]).
    pub fn autoscaler(
        mut self,
        autoscaler: knative_serving::autoscaling::config::AutoscalerConfig,
    ) -> PlatformBuilder {
        self.config.autoscaler = Some(autoscaler);
        self
    }

    /// The settings so far.
    pub fn config(&self) -> &PlatformConfig {
        &self.config
    }

    /// Starts the platform, as [`Platform::start`] does with these
    /// settings.
    pub async fn start(self) -> Result<Platform, PlatformError> {
        Platform::start(self.config).await
    }
}

impl From<PlatformConfig> for PlatformBuilder {
    fn from(config: PlatformConfig) -> PlatformBuilder {
        PlatformBuilder { config }
    }
}

/// Why the platform could not do something.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// Starting failed (ports, state directory, event log).
    #[error("cannot start the platform: {0}")]
    Start(String),
    /// A manifest could not be read or is invalid; nothing was applied.
    #[error("{0}")]
    Invalid(String),
    /// No such kind.
    #[error(
        "unknown kind {0:?}: try one of service (ksvc), configuration, revision, route, \
         broker, trigger, inmemorychannel (imc), channel, subscription, sequence, parallel, \
         pingsource, sinkbinding, containersource, task, taskrun (tr), pipeline, pipelinerun (pr)"
    )]
    UnknownKind(String),
    /// The object store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Waiting timed out.
    #[error("{0}")]
    Timeout(String),
}

/// One object `apply` wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Its kind, lower case (`service`).
    pub kind: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// `created`, `configured` or `unchanged`, as kubectl says.
    pub action: &'static str,
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} {} (namespace {})",
            self.kind, self.name, self.action, self.namespace
        )
    }
}

/// An event a broker accepted, for `knative events`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SeenEvent {
    /// When it was accepted (RFC 3339).
    pub time: String,
    /// `namespace/broker`.
    pub broker: String,
    /// Its type.
    pub r#type: String,
    /// Its source.
    pub source: String,
    /// Its id.
    pub id: String,
}

/// The platform: controllers, data planes and the object store.
#[derive(Clone)]
pub struct Platform {
    inner: Arc<Inner>,
}

struct Inner {
    kinds: Vec<Arc<dyn Kind>>,
    backend: LocalBackend,
    serving: ServingObjects,
    ingress: SocketAddr,
    broker_ingress: SocketAddr,
    channel_ingress: SocketAddr,
    executor: Arc<LocalExecutor>,
    build: BuildObjects,
    container_sources: Arc<dyn Objects<knative_eventing::api::ContainerSource>>,
    domain: String,
    events: Arc<Mutex<VecDeque<SeenEvent>>>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    _state: Option<tempfile::TempDir>,
    state_dir: PathBuf,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("ingress", &self.inner.ingress)
            .field("broker_ingress", &self.inner.broker_ingress)
            .finish_non_exhaustive()
    }
}

/// Resolves references to Knative Services and Routes: their cluster-local
/// address (`status.address.url`), else their URL; other kinds go to
/// `next`.
pub(crate) fn serving_addresses(
    services: Arc<dyn Objects<Service>>,
    routes: Arc<dyn Objects<Route>>,
    next: Option<Arc<dyn AddressResolver>>,
) -> Arc<dyn AddressResolver> {
    let routes = KindAddresses::new(
        "serving.knative.dev",
        "Route",
        routes,
        Route::address_url,
        next,
    );
    Arc::new(KindAddresses::new(
        "serving.knative.dev",
        "Service",
        services,
        Service::address_url,
        Some(Arc::new(routes)),
    ))
}

/// SinkBinding subjects on the local platform: Knative Services (by name
/// or label selector). Binding sets the variables on the Service's
/// template, so its next Revision has them, as upstream's SinkBinding does
/// for a `serving.knative.dev/v1` Service (`specs/EVENTING.md §6`).
struct ServiceBindingTarget {
    services: Arc<dyn Objects<Service>>,
}

impl ServiceBindingTarget {
    /// The Services `subject` names in `namespace`.
    async fn subjects(
        &self,
        namespace: &str,
        subject: &knative_eventing::api::BindingSubject,
    ) -> Result<Vec<Service>, String> {
        let serving = subject.api_version.starts_with("serving.knative.dev/");
        if !serving || subject.kind != "Service" {
            return Err(format!(
                "the local platform binds Knative Services (serving.knative.dev/v1 Service), \
                 not {} {}",
                subject.api_version, subject.kind
            ));
        }
        let ns = subject.namespace_or(namespace);
        if let Some(name) = subject.name.as_deref() {
            return match self.services.get(Some(ns), name).await {
                Ok(service) => Ok(vec![service]),
                Err(e) if e.is_not_found() => Ok(Vec::new()),
                Err(e) => Err(e.to_string()),
            };
        }
        let selector = match &subject.selector {
            Some(selector) => Selector::try_from(selector.clone())
                .map_err(|e| format!("subject.selector: {e}"))?,
            None => Selector::default(),
        };
        self.services
            .list(Some(ns), &selector)
            .await
            .map_err(|e| e.to_string())
    }

    /// Rewrites the environment of every container of each subject with
    /// `edit`, writing only Services that change (retrying conflicts).
    async fn edit(
        &self,
        namespace: &str,
        subject: &knative_eventing::api::BindingSubject,
        edit: &(dyn Fn(&mut Vec<k8s_openapi::api::core::v1::EnvVar>) + Send + Sync),
    ) -> Result<(), String> {
        for attempt in 0..5 {
            let mut conflict = false;
            for mut service in self.subjects(namespace, subject).await? {
                let before = service.spec.clone();
                for container in &mut service.spec.template.spec.pod_spec.containers {
                    let mut env = container.env.take().unwrap_or_default();
                    edit(&mut env);
                    container.env = (!env.is_empty()).then_some(env);
                }
                if service.spec == before {
                    continue;
                }
                match self.services.replace(&service).await {
                    Ok(_) => {}
                    Err(e) if e.is_conflict() && attempt < 4 => conflict = true,
                    Err(e) => return Err(e.to_string()),
                }
            }
            if !conflict {
                return Ok(());
            }
        }
        Err("the subject kept changing under the binding (5 conflicts in a row)".to_owned())
    }
}

#[async_trait]
impl knative_eventing::reconciler::BindingTarget for ServiceBindingTarget {
    async fn bind(
        &self,
        namespace: &str,
        subject: &knative_eventing::api::BindingSubject,
        env: Vec<(String, String)>,
    ) -> Result<(), String> {
        let edit = move |vars: &mut Vec<k8s_openapi::api::core::v1::EnvVar>| {
            for (name, value) in &env {
                match vars.iter_mut().find(|v| &v.name == name) {
                    Some(var) if var.value.as_deref() == Some(value) => {}
                    Some(var) => {
                        var.value = Some(value.clone());
                        var.value_from = None;
                    }
                    None => vars.push(k8s_openapi::api::core::v1::EnvVar {
                        name: name.clone(),
                        value: Some(value.clone()),
                        ..Default::default()
                    }),
                }
            }
        };
        self.edit(namespace, subject, &edit).await
    }

    async fn unbind(
        &self,
        namespace: &str,
        subject: &knative_eventing::api::BindingSubject,
        names: &[&str],
    ) -> Result<(), String> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let edit = move |vars: &mut Vec<k8s_openapi::api::core::v1::EnvVar>| {
            vars.retain(|v| !names.contains(&v.name));
        };
        match self.edit(namespace, subject, &edit).await {
            // A subject of another kind was never bound.
            Err(e) if e.starts_with("the local platform binds") => Ok(()),
            other => other,
        }
    }
}

/// The workload running ContainerSource `name`, named as upstream names its
/// Deployment.
fn container_source_workload(name: &str) -> String {
    format!("{name}-deployment")
}

/// ContainerSources through any [`WorkloadBackend`](knative_serving::backend::WorkloadBackend):
/// the [`ContainerRunner`](knative_eventing::reconciler::ContainerRunner) a
/// platform team gives the ContainerSource reconciler to run sources on its
/// own runtime. The source's pod template (its `K_SINK` and
/// `K_CE_OVERRIDES` already injected by the reconciler) becomes one
/// workload `{name}-deployment` (the Deployment name upstream uses) at one
/// replica, its first container serving; a container without a readiness
/// probe gets `exec: true`, since a source sends events and need not
/// listen. The local platform runs its ContainerSources through this with
/// the same `LocalBackend` that runs revisions (their output is read with
/// [`Platform::logs`]).
pub struct WorkloadContainerRunner<B> {
    backend: B,
}

impl<B> WorkloadContainerRunner<B> {
    /// A runner that runs sources on `backend`.
    pub fn new(backend: B) -> Self {
        WorkloadContainerRunner { backend }
    }
}

impl<B> std::fmt::Debug for WorkloadContainerRunner<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadContainerRunner")
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<B> knative_eventing::reconciler::ContainerRunner for WorkloadContainerRunner<B>
where
    B: knative_serving::backend::WorkloadBackend + 'static,
{
    async fn ensure(
        &self,
        namespace: &str,
        name: &str,
        template: k8s_openapi::api::core::v1::PodTemplateSpec,
    ) -> Result<(), String> {
        use knative_serving::backend::WorkloadSpec;
        let mut pod = template.spec.unwrap_or_default();
        let mut containers = std::mem::take(&mut pod.containers);
        if containers.is_empty() {
            return Err("template.spec.containers: missing field".to_owned());
        }
        for container in &mut containers {
            // A source sends events and need not listen: it is ready once
            // it runs.
            if container.readiness_probe.is_none() {
                container.readiness_probe = Some(k8s_openapi::api::core::v1::Probe {
                    exec: Some(k8s_openapi::api::core::v1::ExecAction {
                        command: Some(vec!["true".to_owned()]),
                    }),
                    ..Default::default()
                });
            }
        }
        let metadata = template.metadata.unwrap_or_default();
        let workload = container_source_workload(name);
        // As every WorkloadSpec: the pods carry the workload's
        // `serving.knative.dev/revision` label (backends select by it).
        let mut labels: BTreeMap<String, String> =
            metadata.labels.unwrap_or_default().into_iter().collect();
        labels.insert(
            knative_serving::api::keys::REVISION.to_owned(),
            workload.clone(),
        );
        let annotations = metadata
            .annotations
            .unwrap_or_default()
            .into_iter()
            .collect();
        let key = WorkloadKey::new(namespace, workload);
        let grace = pod
            .termination_grace_period_seconds
            .map_or(Duration::from_secs(10), |s| {
                Duration::from_secs(s.max(0).unsigned_abs())
            });
        let spec = WorkloadSpec {
            key: key.clone(),
            containers,
            pod,
            serving_container: 0,
            container_port: 8080,
            labels,
            annotations,
            termination_grace_period: grace,
            container_concurrency: 0,
            response_start_timeout: None,
            idle_timeout: None,
            owner: None,
        };
        self.backend
            .ensure(&spec)
            .await
            .map_err(|e| e.to_string())?;
        self.backend.scale(&key, 1).await.map_err(|e| e.to_string())
    }

    /// Available once a replica is ready.
    async fn available(&self, namespace: &str, name: &str) -> Result<bool, String> {
        let key = WorkloadKey::new(namespace, container_source_workload(name));
        let status = self.backend.status(&key).map_err(|e| e.to_string())?;
        let ready = !status.borrow().ready.is_empty();
        Ok(ready)
    }

    async fn remove(&self, namespace: &str, name: &str) -> Result<(), String> {
        self.backend
            .remove(&WorkloadKey::new(
                namespace,
                container_source_workload(name),
            ))
            .await
            .map_err(|e| e.to_string())
    }
}

impl Platform {
    /// A builder for a platform: set what differs from
    /// [`PlatformConfig::default`], then [`start`](PlatformBuilder::start).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), knative::local::PlatformError> {
    /// let platform = knative::local::Platform::builder()
    ///     .state_dir("/tmp/knative-state")
    ///     .ingress_port(0)
    ///     .start()
    ///     .await?;
    /// println!("ingress on {}", platform.ingress());
    /// platform.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder() -> PlatformBuilder {
        PlatformBuilder::new()
    }

    /// Starts every controller and data plane; returns once they listen.
    pub async fn start(config: PlatformConfig) -> Result<Platform, PlatformError> {
        let start = |e: &dyn std::fmt::Display| PlatformError::Start(e.to_string());
        let (temp, state_dir) = match &config.state_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| start(&format!("state directory {}: {e}", dir.display())))?;
                (None, dir.clone())
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("knative-local-")
                    .tempdir()
                    .map_err(|e| start(&format!("temporary directory: {e}")))?;
                let path = temp.path().to_path_buf();
                (Some(temp), path)
            }
        };
        let store = InMemoryStore::new();

        // Serving: local processes, the controllers, the data plane.
        let mut images = config.images.clone();
        if let Some(command) = config.sample_app.clone().or_else(find_sample_app) {
            images
                .entry(SAMPLE_APP_IMAGE.to_owned())
                .or_insert(LocalCommand {
                    command,
                    ..LocalCommand::default()
                });
        }
        let backend = LocalBackend::new(LocalConfig {
            images,
            ..LocalConfig::default()
        });
        let objects = ServingObjects::in_memory(&store);
        let mut serving_config = ServingConfig::default();
        serving_config.network = serving_config.network.with_domain_config_map(
            &[(config.domain.clone(), String::new())]
                .into_iter()
                .collect(),
        );
        if let Some(autoscaler) = config.autoscaler.clone() {
            serving_config.autoscaler = autoscaler;
        }
        let serving = Serving::new(objects.clone(), Arc::new(backend.clone()), serving_config);
        let dataplane = serving.dataplane(DataplaneConfig::default());
        let ingress_listener = tokio::net::TcpListener::bind(("127.0.0.1", config.ingress_port))
            .await
            .map_err(|e| start(&format!("ingress port {}: {e}", config.ingress_port)))?;
        let ingress = ingress_listener.local_addr().map_err(|e| start(&e))?;

        // Eventing: the log, the broker data plane, the controllers.
        let log: Arc<dyn EventLog> = if config.durable_events {
            let path = state_dir.join("events.redb");
            let opened = tokio::task::spawn_blocking(move || {
                knative_eventing::log::disk::DiskLog::open(path)
            })
            .await
            .map_err(|e| start(&e))?
            .map_err(|e| start(&e))?;
            Arc::new(opened)
        } else {
            Arc::new(knative_eventing::log::InMemoryLog::new())
        };
        let sender = Sender::with_overrides(vec![
            ("svc.cluster.local".to_owned(), ingress),
            (config.domain.clone(), ingress),
        ]);
        let brokers = Brokers::with_sender(
            Arc::clone(&log),
            IngressConfig::default(),
            DispatchConfig::default(),
            sender.clone(),
        );
        let broker_listener = tokio::net::TcpListener::bind(("127.0.0.1", config.broker_port))
            .await
            .map_err(|e| start(&format!("broker port {}: {e}", config.broker_port)))?;
        let broker_ingress = broker_listener.local_addr().map_err(|e| start(&e))?;
        let eventing = EventingObjects::in_memory(&store);
        let resolver: Arc<dyn AddressResolver> = Arc::new(EventingAddresses::new(
            &eventing,
            Some(serving_addresses(
                Arc::clone(&objects.services),
                Arc::clone(&objects.routes),
                None,
            )),
        ));
        // Channels (and the Sequences and Parallels built of them) on the
        // same log, with their own ingress.
        let channels = Channels::with_sender(
            Arc::clone(&log),
            knative_eventing::binding::Limits::default(),
            DispatchConfig::default(),
            sender.clone(),
        );
        let channel_listener = tokio::net::TcpListener::bind(("127.0.0.1", config.channel_port))
            .await
            .map_err(|e| start(&format!("channel port {}: {e}", config.channel_port)))?;
        let channel_ingress = channel_listener.local_addr().map_err(|e| start(&e))?;
        let pings = PingScheduler::with_sender(sender.clone(), Default::default());
        let eventing_controllers = Eventing {
            objects: eventing.clone(),
            resolver,
            brokers: brokers.clone(),
            broker_url: format!("http://{broker_ingress}"),
            channels: channels.clone(),
            channel_url: format!("http://{channel_ingress}"),
            pings: pings.clone(),
            binding_target: Arc::new(ServiceBindingTarget {
                services: Arc::clone(&objects.services),
            }),
            container_runner: Arc::new(WorkloadContainerRunner {
                backend: backend.clone(),
            }),
        };

        // Build: TaskRuns' steps as local processes.
        let build_objects = BuildObjects::in_memory(&store);
        let executor = Arc::new(LocalExecutor::new(LocalExecutorConfig::new(
            state_dir.join("builds"),
        )));
        let build = Build::new(
            build_objects.clone(),
            Arc::clone(&executor) as Arc<dyn StepExecutor>,
        );

        let (stop, stopped) = watch::channel(false);
        let until = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let events: Arc<Mutex<VecDeque<SeenEvent>>> = Arc::default();
        let stopped_eventing = stopped.clone();
        let mut tasks = vec![
            tokio::spawn(serving.run(until(stopped.clone()))),
            tokio::spawn(async move {
                eventing_controllers
                    .run(None, until(stopped_eventing))
                    .await;
            }),
            tokio::spawn(build.run(until(stopped.clone()))),
        ];
        let shutdown = until(stopped.clone());
        let serving_channels = channels.clone();
        tasks.push(tokio::spawn(async move {
            let _ = serving_channels.serve(channel_listener, shutdown).await;
        }));
        let shutdown = until(stopped.clone());
        tasks.push(tokio::spawn(async move {
            let _ = dataplane.serve(ingress_listener, shutdown).await;
        }));
        let shutdown = until(stopped.clone());
        let serving_brokers = brokers.clone();
        tasks.push(tokio::spawn(async move {
            let _ = serving_brokers.serve(broker_listener, shutdown).await;
        }));
        let mut tap = brokers.tap();
        let seen = Arc::clone(&events);
        let mut tap_stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tap_stopped.wait_for(|s| *s) => break,
                    received = tap.recv() => match received {
                        Ok(t) => {
                            use cloudevents::AttributesReader as _;
                            let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
                            if seen.len() == 1000 {
                                seen.pop_front();
                            }
                            seen.push_back(SeenEvent {
                                time: jiff::Timestamp::now().to_string(),
                                broker: format!("{}/{}", t.namespace, t.broker),
                                r#type: t.event.ty().to_owned(),
                                source: t.event.source().to_owned(),
                                id: t.event.id().to_owned(),
                            });
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
        }));

        let kinds: Vec<Arc<dyn Kind>> = vec![
            Arc::new(TypedKind::new(
                "service",
                &["ksvc", "kservice", "services"],
                Arc::clone(&objects.services),
            )),
            Arc::new(TypedKind::new(
                "configuration",
                &["config", "cfg", "configurations"],
                Arc::clone(&objects.configurations),
            )),
            Arc::new(TypedKind::new(
                "revision",
                &["rev", "revisions"],
                Arc::clone(&objects.revisions),
            )),
            Arc::new(TypedKind::new(
                "route",
                &["rt", "routes"],
                Arc::clone(&objects.routes),
            )),
            Arc::new(TypedKind::new(
                "broker",
                &["brokers"],
                Arc::clone(&eventing.brokers),
            )),
            Arc::new(TypedKind::new(
                "trigger",
                &["triggers"],
                Arc::clone(&eventing.triggers),
            )),
            Arc::new(TypedKind::new(
                "inmemorychannel",
                &["imc", "inmemorychannels"],
                Arc::clone(&eventing.in_memory_channels),
            )),
            Arc::new(TypedKind::new(
                "channel",
                &["ch", "channels"],
                Arc::clone(&eventing.channels),
            )),
            Arc::new(TypedKind::new(
                "subscription",
                &["sub", "subscriptions"],
                Arc::clone(&eventing.subscriptions),
            )),
            Arc::new(TypedKind::new(
                "sequence",
                &["sequences"],
                Arc::clone(&eventing.sequences),
            )),
            Arc::new(TypedKind::new(
                "parallel",
                &["parallels"],
                Arc::clone(&eventing.parallels),
            )),
            Arc::new(TypedKind::new(
                "pingsource",
                &["pingsources"],
                Arc::clone(&eventing.ping_sources),
            )),
            Arc::new(TypedKind::new(
                "sinkbinding",
                &["sinkbindings"],
                Arc::clone(&eventing.sink_bindings),
            )),
            Arc::new(TypedKind::new(
                "containersource",
                &["containersources"],
                Arc::clone(&eventing.container_sources),
            )),
            Arc::new(TypedKind::new(
                "task",
                &["tasks"],
                Arc::clone(&build_objects.tasks),
            )),
            Arc::new(TypedKind::new(
                "taskrun",
                &["tr", "trs", "taskruns"],
                Arc::clone(&build_objects.task_runs),
            )),
            Arc::new(TypedKind::new(
                "pipeline",
                &["pipelines"],
                Arc::clone(&build_objects.pipelines),
            )),
            Arc::new(TypedKind::new(
                "pipelinerun",
                &["pr", "prs", "pipelineruns"],
                Arc::clone(&build_objects.pipeline_runs),
            )),
        ];
        // Keep the data planes (and their dispatchers and ping jobs) alive
        // as long as the tasks.
        let keep = (brokers.clone(), channels.clone(), pings);
        tasks.push(tokio::spawn(async move {
            until(stopped).await;
            drop(keep);
        }));
        Ok(Platform {
            inner: Arc::new(Inner {
                kinds,
                backend,
                serving: objects,
                ingress,
                broker_ingress,
                channel_ingress,
                executor,
                build: build_objects,
                container_sources: Arc::clone(&eventing.container_sources),
                domain: config.domain,
                events,
                stop,
                tasks: Mutex::new(tasks),
                _state: temp,
                state_dir,
            }),
        })
    }

    /// The Serving ingress: requests for `{service}.{namespace}.{domain}`.
    pub fn ingress(&self) -> SocketAddr {
        self.inner.ingress
    }

    /// The broker ingress: events are posted to `/{namespace}/{broker}`.
    pub fn broker_ingress(&self) -> SocketAddr {
        self.inner.broker_ingress
    }

    /// The channel ingress: events for InMemoryChannels are posted to
    /// `/{namespace}/{channel}`.
    pub fn channel_ingress(&self) -> SocketAddr {
        self.inner.channel_ingress
    }

    /// The domain of services' URLs.
    pub fn domain(&self) -> &str {
        &self.inner.domain
    }

    /// Where durable state is kept.
    pub fn state_dir(&self) -> &Path {
        &self.inner.state_dir
    }

    /// The kinds this platform serves, by canonical name, with aliases.
    pub fn kinds(&self) -> Vec<(String, Vec<String>)> {
        self.inner
            .kinds
            .iter()
            .map(|k| {
                (
                    k.name().to_owned(),
                    k.aliases().iter().map(|a| (*a).to_owned()).collect(),
                )
            })
            .collect()
    }

    fn kind(&self, name: &str) -> Result<&Arc<dyn Kind>, PlatformError> {
        let lower = name.to_ascii_lowercase();
        self.inner
            .kinds
            .iter()
            .find(|k| k.name() == lower || k.aliases().contains(&lower.as_str()))
            .ok_or(PlatformError::UnknownKind(name.to_owned()))
    }

    fn kind_of(&self, api_version: &str, kind: &str) -> Option<&Arc<dyn Kind>> {
        self.inner
            .kinds
            .iter()
            .find(|k| k.api_version() == api_version && k.kind() == kind)
    }

    /// Applies every object in `yaml` (one or more YAML documents), as
    /// `kubectl apply` does: each is defaulted and validated first, and if
    /// any is invalid, nothing is written and the error names the document
    /// and the field paths; then each is created, or its spec, labels and
    /// annotations are updated.
    pub async fn apply(&self, yaml: &str) -> Result<Vec<Applied>, PlatformError> {
        let mut parsed = Vec::new();
        let mut problems = Vec::new();
        for (index, document) in documents(yaml).into_iter().enumerate() {
            let value = match document {
                Ok(Value::Null) => continue,
                Ok(value) => value,
                Err(e) => {
                    problems.push(format!("document {}: not YAML: {e}", index + 1));
                    continue;
                }
            };
            let api_version = value["apiVersion"].as_str().unwrap_or_default().to_owned();
            let kind = value["kind"].as_str().unwrap_or_default().to_owned();
            let name = value["metadata"]["name"].as_str().unwrap_or("").to_owned();
            let what = format!("document {} ({kind} {name:?})", index + 1);
            let Some(handler) = self.kind_of(&api_version, &kind) else {
                problems.push(format!(
                    "{what}: apiVersion {api_version:?} kind {kind:?} is not served here"
                ));
                continue;
            };
            match handler.prepare(value).await {
                Ok(prepared) => parsed.push((Arc::clone(handler), prepared)),
                Err(e) => problems.push(format!("{what}: {e}")),
            }
        }
        if !problems.is_empty() {
            return Err(PlatformError::Invalid(format!(
                "nothing was applied:\n  {}",
                problems.join("\n  ")
            )));
        }
        let mut applied = Vec::new();
        for (handler, prepared) in parsed {
            applied.push(handler.write(prepared).await?);
        }
        Ok(applied)
    }

    /// The object `kind` (a name or alias, e.g. `ksvc`) `namespace/name`.
    pub async fn get(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Value, PlatformError> {
        self.kind(kind)?.get(namespace, name).await
    }

    /// The objects of `kind` in `namespace` (every namespace when `None`).
    pub async fn list(
        &self,
        kind: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<Value>, PlatformError> {
        self.kind(kind)?.list(namespace).await
    }

    /// Deletes `kind` `namespace/name`.
    pub async fn delete(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<(), PlatformError> {
        self.kind(kind)?.delete(namespace, name).await
    }

    /// Waits until `kind` `namespace/name` is Ready (or, for kinds that
    /// run to completion, Succeeded; for Tasks and Pipelines, which have
    /// no status, until it exists) and returns it; a run that failed
    /// (`Succeeded` False) ends the wait, and a timeout names the latest
    /// reason and message.
    pub async fn wait_ready(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Value, PlatformError> {
        let start = Instant::now();
        let mut last = String::from("it does not exist yet");
        // Tasks and Pipelines have no status: they are ready once stored.
        let stateless = matches!(self.kind(kind)?.name(), "task" | "pipeline");
        while start.elapsed() < timeout {
            match self.get(kind, namespace, name).await {
                Ok(object) if stateless => return Ok(object),
                Ok(object) => match readiness(&object) {
                    Readiness::Ready => return Ok(object),
                    Readiness::Failed(why) => {
                        return Err(PlatformError::Invalid(format!(
                            "{kind} {namespace}/{name} failed: {why}"
                        )));
                    }
                    Readiness::Waiting(why) => last = why,
                },
                Err(PlatformError::Store(e)) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(PlatformError::Timeout(format!(
            "{kind} {namespace}/{name} was not ready after {timeout:?}: {last}"
        )))
    }

    /// The output lines of a service's (or revision's) replicas, newest
    /// last: every revision of service `name`, else revision `name`.
    pub async fn logs(&self, namespace: &str, name: &str) -> Result<Vec<LogLine>, PlatformError> {
        let revisions = self
            .inner
            .serving
            .revisions
            .list(Some(namespace), &Selector::default())
            .await?;
        let mut lines = Vec::new();
        let mut found = false;
        for revision in revisions {
            let revision_name = revision.metadata.name.clone().unwrap_or_default();
            let of_service = revision
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(knative_serving::api::keys::SERVICE))
                .is_some_and(|s| s == name);
            if of_service || revision_name == name {
                found = true;
                lines.extend(
                    self.inner
                        .backend
                        .logs(&WorkloadKey::new(namespace, &revision_name)),
                );
            }
        }
        if found {
            return Ok(lines);
        }
        // A ContainerSource's process.
        let source = WorkloadKey::new(namespace, container_source_workload(name));
        if knative_serving::backend::WorkloadBackend::status(&self.inner.backend, &source).is_ok() {
            return Ok(self.inner.backend.logs(&source));
        }
        // A TaskRun's steps, in order, each line under the step's container
        // name (`step-<name>`).
        match self.inner.build.task_runs.get(Some(namespace), name).await {
            Ok(task_run) => {
                let status = task_run.status.unwrap_or_default();
                let attempt = u32::try_from(status.retries_status.len()).unwrap_or(u32::MAX);
                let key = knative_build::executor::RunKey::new(namespace, name, attempt);
                for step in &status.steps {
                    let container = step
                        .container
                        .clone()
                        .unwrap_or_else(|| format!("step-{}", step.name));
                    let Ok(output) = self.inner.executor.logs(&key, &container).await else {
                        continue;
                    };
                    lines.extend(
                        String::from_utf8_lossy(&output)
                            .lines()
                            .map(|line| LogLine {
                                replica: container.clone(),
                                stream: knative_serving::backend::local::Stream::Stdout,
                                line: line.to_owned(),
                            }),
                    );
                }
                Ok(lines)
            }
            Err(e) if e.is_not_found() => Err(PlatformError::Store(StoreError::NotFound {
                kind: "Service, Revision, ContainerSource or TaskRun".to_owned(),
                key: format!("{namespace}/{name}"),
            })),
            Err(e) => Err(e.into()),
        }
    }

    /// The latest events the brokers accepted (at most 1000), oldest first.
    pub fn events(&self) -> Vec<SeenEvent> {
        self.inner
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Replicas running now for revision `namespace/revision`.
    pub fn replicas(&self, namespace: &str, revision: &str) -> usize {
        use knative_serving::backend::WorkloadBackend as _;
        self.inner
            .backend
            .status(&WorkloadKey::new(namespace, revision))
            .map(|s| s.borrow().ready.len())
            .unwrap_or(0)
    }

    /// Stops the controllers and data planes, then every replica and
    /// ContainerSource process.
    pub async fn shutdown(self) {
        let _ = self.inner.stop.send(true);
        let tasks = std::mem::take(
            &mut *self
                .inner
                .tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for task in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        use knative_serving::backend::WorkloadBackend as _;
        let revisions = self
            .inner
            .serving
            .revisions
            .list(None, &Selector::default())
            .await
            .unwrap_or_default();
        for revision in revisions {
            let key = WorkloadKey::new(
                revision.metadata.namespace.as_deref().unwrap_or_default(),
                revision.metadata.name.as_deref().unwrap_or_default(),
            );
            let _ = self.inner.backend.remove(&key).await;
        }
        let sources = self
            .inner
            .container_sources
            .list(None, &Selector::default())
            .await
            .unwrap_or_default();
        for source in sources {
            let key = WorkloadKey::new(
                source.metadata.namespace.as_deref().unwrap_or_default(),
                container_source_workload(source.metadata.name.as_deref().unwrap_or_default()),
            );
            let _ = self.inner.backend.remove(&key).await;
        }
    }
}

/// The `knative` binary (or the sample app's own) beside this program or
/// one directory up (`target/debug/deps` → `target/debug`).
fn find_sample_app() -> Option<Vec<String>> {
    let me = std::env::current_exe().ok()?;
    let dir = me.parent()?;
    for candidate in [dir.to_path_buf(), dir.parent()?.to_path_buf()] {
        let knative = candidate.join("knative");
        if knative.is_file() {
            return Some(vec![
                knative.to_string_lossy().into_owned(),
                "sample-app".to_owned(),
            ]);
        }
        let sample = candidate.join("knative-sample-app");
        if sample.is_file() {
            return Some(vec![sample.to_string_lossy().into_owned()]);
        }
    }
    None
}

/// The documents of a YAML stream, each as JSON or its parse error
/// (read before any `await`: the YAML parser is not `Send`).
fn documents(yaml: &str) -> Vec<Result<Value, String>> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|document| {
            serde::Deserialize::deserialize(document).map_err(|e: serde_yaml::Error| e.to_string())
        })
        .collect()
}

/// Where an object stands.
enum Readiness {
    Ready,
    Failed(String),
    Waiting(String),
}

/// Readiness from the `Ready` (or `Succeeded`) condition of any kind.
fn readiness(object: &Value) -> Readiness {
    let conditions = object["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let condition = conditions
        .iter()
        .find(|c| c["type"] == "Ready")
        .or_else(|| conditions.iter().find(|c| c["type"] == "Succeeded"));
    let Some(condition) = condition else {
        return Readiness::Waiting("it has no Ready condition yet".to_owned());
    };
    let why = || {
        format!(
            "{}: {}",
            condition["reason"].as_str().unwrap_or(""),
            condition["message"].as_str().unwrap_or("")
        )
    };
    let current = object["status"]["observedGeneration"].as_i64()
        >= object["metadata"]["generation"].as_i64();
    // A run that failed is done; an object that is not Ready yet may
    // still become Ready (its subscriber may come up later).
    let terminal = condition["type"] == "Succeeded";
    match condition["status"].as_str() {
        Some("True") if current => Readiness::Ready,
        Some("False") if current && terminal => Readiness::Failed(why()),
        _ => Readiness::Waiting(why()),
    }
}

/// A kind the platform serves, type-erased.
#[async_trait]
trait Kind: Send + Sync {
    /// Canonical lower-case name (`service`).
    fn name(&self) -> &str;
    /// Aliases (`ksvc`).
    fn aliases(&self) -> &[&'static str];
    fn api_version(&self) -> String;
    fn kind(&self) -> String;
    /// Parses, defaults and validates a manifest (against the stored
    /// object when it exists).
    async fn prepare(&self, value: Value) -> Result<Prepared, String>;
    /// Creates or updates.
    async fn write(&self, prepared: Prepared) -> Result<Applied, PlatformError>;
    async fn get(&self, namespace: &str, name: &str) -> Result<Value, PlatformError>;
    async fn list(&self, namespace: Option<&str>) -> Result<Vec<Value>, PlatformError>;
    async fn delete(&self, namespace: &str, name: &str) -> Result<(), PlatformError>;
}

/// A manifest ready to write: the object, and the stored one it updates.
struct Prepared(Box<dyn std::any::Any + Send>);

struct TypedKind<K> {
    name: &'static str,
    aliases: &'static [&'static str],
    objects: Arc<dyn Objects<K>>,
}

impl<K> TypedKind<K> {
    fn new(
        name: &'static str,
        aliases: &'static [&'static str],
        objects: Arc<dyn Objects<K>>,
    ) -> Self {
        TypedKind {
            name,
            aliases,
            objects,
        }
    }
}

#[async_trait]
impl<K> Kind for TypedKind<K>
where
    K: ApiObject + SetDefaults + Validate,
{
    fn name(&self) -> &str {
        self.name
    }

    fn aliases(&self) -> &[&'static str] {
        self.aliases
    }

    fn api_version(&self) -> String {
        K::api_version_name()
    }

    fn kind(&self) -> String {
        K::kind_name()
    }

    async fn prepare(&self, mut value: Value) -> Result<Prepared, String> {
        // Kinds whose whole spec is optional (a Broker) may leave it out.
        if let Some(map) = value.as_object_mut() {
            map.entry("spec")
                .or_insert_with(|| Value::Object(Default::default()));
        }
        let mut object: K = serde_json::from_value(value).map_err(|e| e.to_string())?;
        let meta = object.meta_mut();
        // `generateName` alone (as PipelineRuns are usually written) makes
        // a new object each time, named by the store.
        let generated = meta.name.as_deref().is_none_or(str::is_empty)
            && meta.generate_name.as_deref().is_some_and(|g| !g.is_empty());
        if meta.name.as_deref().is_none_or(str::is_empty) && !generated {
            return Err("metadata.name: missing field (or set metadata.generateName)".to_owned());
        }
        if meta.namespace.as_deref().is_none_or(str::is_empty) {
            meta.namespace = Some("default".to_owned());
        }
        let key = object.key();
        let existing = if generated {
            None
        } else {
            match self.objects.get(key.namespace.as_deref(), &key.name).await {
                Ok(existing) => Some(existing),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e.to_string()),
            }
        };
        let errors = match &existing {
            Some(old) => {
                let ctx = Context::update(old);
                object.set_defaults(&ctx);
                object.validate(&ctx)
            }
            None => {
                let ctx = Context::create();
                object.set_defaults(&ctx);
                object.validate(&ctx)
            }
        };
        if let Err(e) = errors.into_result() {
            return Err(e.to_string());
        }
        Ok(Prepared(Box::new((object, existing))))
    }

    async fn write(&self, prepared: Prepared) -> Result<Applied, PlatformError> {
        let (object, existing) = *prepared.0.downcast::<(K, Option<K>)>().map_err(|_| {
            PlatformError::Invalid("internal: prepared for another kind".to_owned())
        })?;
        let key = object.key();
        let applied = |action| Applied {
            kind: self.name.to_owned(),
            namespace: key.namespace.clone().unwrap_or_default(),
            name: key.name.clone(),
            action,
        };
        let Some(existing) = existing else {
            let created = self.objects.create(&object).await?;
            return Ok(Applied {
                name: created.key().name,
                ..applied("created")
            });
        };
        // Keep what the store and controllers own: identity, version,
        // finalizers, owners, status; take the manifest's spec, labels
        // and annotations.
        let mut value =
            serde_json::to_value(&existing).map_err(|e| PlatformError::Invalid(e.to_string()))?;
        let new =
            serde_json::to_value(&object).map_err(|e| PlatformError::Invalid(e.to_string()))?;
        for (field, from) in [("labels", &new), ("annotations", &new)] {
            match from["metadata"].get(field) {
                Some(v) => value["metadata"][field] = v.clone(),
                None => {
                    if let Some(m) = value["metadata"].as_object_mut() {
                        m.remove(field);
                    }
                }
            }
        }
        if let (Some(target), Some(source)) = (value.as_object_mut(), new.as_object()) {
            for (k, v) in source {
                if k != "metadata" && k != "status" && k != "apiVersion" && k != "kind" {
                    target.insert(k.clone(), v.clone());
                }
            }
        }
        let before =
            serde_json::to_value(&existing).map_err(|e| PlatformError::Invalid(e.to_string()))?;
        if value == before {
            return Ok(applied("unchanged"));
        }
        let updated: K =
            serde_json::from_value(value).map_err(|e| PlatformError::Invalid(e.to_string()))?;
        self.objects.replace(&updated).await?;
        Ok(applied("configured"))
    }

    async fn get(&self, namespace: &str, name: &str) -> Result<Value, PlatformError> {
        let object = self.objects.get(Some(namespace), name).await?;
        with_type::<K>(&object)
    }

    async fn list(&self, namespace: Option<&str>) -> Result<Vec<Value>, PlatformError> {
        let objects = self.objects.list(namespace, &Selector::default()).await?;
        objects.iter().map(with_type::<K>).collect()
    }

    async fn delete(&self, namespace: &str, name: &str) -> Result<(), PlatformError> {
        self.objects.delete(Some(namespace), name).await?;
        Ok(())
    }
}

/// The object as JSON, with `apiVersion` and `kind` set.
fn with_type<K: ApiObject>(object: &K) -> Result<Value, PlatformError> {
    let mut value =
        serde_json::to_value(object).map_err(|e| PlatformError::Invalid(e.to_string()))?;
    if let Some(map) = value.as_object_mut() {
        map.insert(
            "apiVersion".to_owned(),
            Value::String(K::api_version_name()),
        );
        map.insert("kind".to_owned(), Value::String(K::kind_name()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ContainerSource's template becomes one workload
    /// `{name}-deployment` at one replica on whatever backend the runner
    /// has, its pod fields kept and a readiness probe added; removing the
    /// source removes the workload.
    #[tokio::test]
    async fn a_container_source_runs_as_one_workload_on_any_backend() {
        use knative_eventing::reconciler::ContainerRunner as _;
        use knative_serving::backend::MockWorkloadBackend;
        let key = WorkloadKey::new("ns", "heartbeats-deployment");
        let mut backend = MockWorkloadBackend::new();
        let expected = key.clone();
        backend
            .expect_ensure()
            .withf(move |spec| {
                spec.key == expected
                    && spec.containers.len() == 1
                    && spec.containers[0].readiness_probe.is_some()
                    && spec.pod.containers.is_empty()
                    && spec.pod.service_account_name.as_deref() == Some("sa")
                    && spec.labels.get("app").map(String::as_str) == Some("hb")
                    && spec
                        .labels
                        .get("serving.knative.dev/revision")
                        .map(String::as_str)
                        == Some("heartbeats-deployment")
                    && spec.termination_grace_period == Duration::from_secs(3)
            })
            .times(1)
            .returning(|_| Ok(()));
        let expected = key.clone();
        backend
            .expect_scale()
            .withf(move |k, replicas| *k == expected && *replicas == 1)
            .times(1)
            .returning(|_, _| Ok(()));
        let expected = key.clone();
        backend
            .expect_remove()
            .withf(move |k| *k == expected)
            .times(1)
            .returning(|_| Ok(()));
        let runner = WorkloadContainerRunner::new(backend);
        let template: k8s_openapi::api::core::v1::PodTemplateSpec =
            serde_json::from_value(serde_json::json!({
                "metadata": {"labels": {"app": "hb"}},
                "spec": {
                    "serviceAccountName": "sa",
                    "terminationGracePeriodSeconds": 3,
                    "containers": [{"image": "heartbeats", "env": [{"name": "K_SINK", "value": "http://sink"}]}]
                }
            }))
            .expect("template");
        runner
            .ensure("ns", "heartbeats", template)
            .await
            .expect("ensured");
        runner.remove("ns", "heartbeats").await.expect("removed");
        let empty = k8s_openapi::api::core::v1::PodTemplateSpec::default();
        let err = runner
            .ensure("ns", "heartbeats", empty)
            .await
            .expect_err("no containers");
        assert!(err.contains("template.spec.containers"), "{err}");
    }

    #[test]
    fn the_builder_sets_each_field_and_keeps_the_defaults_of_the_rest() {
        let builder = Platform::builder()
            .state_dir("/tmp/state")
            .ingress_port(1)
            .broker_port(2)
            .channel_port(3)
            .domain("example.com")
            .images(HashMap::new())
            .sample_app(["app", "serve"])
            .durable_events(false);
        let config = builder.config();
        assert_eq!(config.state_dir, Some(PathBuf::from("/tmp/state")));
        assert_eq!(
            (config.ingress_port, config.broker_port, config.channel_port),
            (1, 2, 3)
        );
        assert_eq!(config.domain, "example.com");
        assert_eq!(
            config.sample_app,
            Some(vec!["app".to_owned(), "serve".to_owned()])
        );
        assert!(!config.durable_events);
        assert!(config.autoscaler.is_none());
        let defaults = Platform::builder();
        assert_eq!(defaults.config().domain, "localhost");
        assert!(defaults.config().durable_events);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_platform_started_by_the_builder_applies_a_broker() {
        let platform = Platform::builder()
            .durable_events(false)
            .start()
            .await
            .expect("the platform starts");
        let applied = platform
            .apply("{apiVersion: eventing.knative.dev/v1, kind: Broker, metadata: {name: default, namespace: default}}")
            .await
            .expect("applies");
        assert_eq!(applied.len(), 1, "{applied:?}");
        let broker = platform
            .wait_ready("broker", "default", "default", Duration::from_secs(30))
            .await
            .expect("the broker is Ready");
        let url = broker["status"]["address"]["url"].as_str().unwrap_or("");
        assert!(
            url.contains(&platform.broker_ingress().port().to_string()),
            "{broker:#}"
        );
        platform.shutdown().await;
    }
}
