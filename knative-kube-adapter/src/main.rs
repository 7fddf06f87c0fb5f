//! `knative-operator`: the reference operator that runs knative-rs on a
//! Kubernetes cluster (issue 9 §4; `DESIGN.md`, "Two compositions").
//!
//! ```text
//! knative-operator crds      # every CRD as YAML (kubectl apply -f -)
//! knative-operator rbac      # ClusterRole + ServiceAccount + ClusterRoleBinding
//! knative-operator deploy    # Namespace + Deployment + Service for the operator
//! knative-operator [run]     # reconcile (the default)
//! ```
//!
//! `run` connects with `kube::Config::infer` (in-cluster or kubeconfig),
//! optionally installs the CRDs (server-side apply), optionally competes for
//! a Lease, and once it leads runs, over [`KubeObjects`]:
//!
//! - the Serving controllers (`knative_serving::reconciler::Serving`) with
//!   revisions as Deployments + Services `<rev>` and `<rev>-private`
//!   ([`KubeWorkloadBackend`]), and the
//!   ingress + activator data plane on `--ingress-addr` (activator always in
//!   the path: replicas are reached directly, so no sidecar image is
//!   needed). `--queue-proxy-image` adds upstream's `queue-proxy` sidecar
//!   (`knative queue-proxy`, the operator's image has it; the command is
//!   `--queue-proxy-command`) to every revision pod: the revision's Service
//!   and ready endpoints then point at its port 8012, where it enforces
//!   `containerConcurrency` and the timeouts per pod and runs the app's
//!   readiness probe;
//! - a controller giving every Route its Kubernetes Services
//!   ([`RouteServices`]: `<route>` and `<tag>-<route>`, ExternalName
//!   Services pointing at `--ingress-service-host`), so that
//!   `<route>.<ns>.svc.cluster.local` reaches the ingress;
//! - Eventing, as the local platform runs it: the Broker and Trigger
//!   controllers with the broker ingress on `--broker-addr` (advertised as
//!   `--broker-url`); the InMemoryChannel, Channel, Subscription, Sequence
//!   and Parallel controllers with the channel ingress on `--channel-addr`
//!   (advertised as `--channel-url`); PingSources scheduled in the operator;
//!   SinkBindings that set `K_SINK` / `K_CE_OVERRIDES` on Deployments,
//!   StatefulSets, DaemonSets, Jobs, CronJobs and Knative Services
//!   ([`KubeBindingTarget`]); ContainerSources as Deployments
//!   `<source>-deployment` ([`KubeContainerRunner`]). Brokers, channels and
//!   pings deliver with one shared sender;
//! - the TaskRun and PipelineRun controllers with a Pod per TaskRun
//!   ([`PodStepExecutor`]), unless `--no-builds`.
//!
//! Brokers and Channels keep their events in one log, `--event-log`:
//! `memory` (the default) keeps them in the leader's memory, so a new
//! leader (after a failover or a restart) starts with an empty log and
//! the events accepted but not yet delivered are lost; a NATS URL
//! (`nats://nats.nats.svc:4222`) keeps them in NATS JetStream
//! (`knative_eventing::log::nats::NatsLog`), so they survive the operator's
//! restarts and failovers between replicas: the new leader's dispatchers
//! carry on from the cursors stored in NATS (delivery is at least once).
//! Only the leader runs ingresses and dispatchers, so with several
//! replicas use `--leader-elect` (two dispatchers of one trigger would
//! both deliver).
//!
//! ApiServerSources run their watchers in the operator process
//! (`knative_kube_adapter::apiserver_source`): its ClusterRole must allow
//! get, list and watch on every kind a source watches.
//!
//! `/healthz` answers while the process runs, `/readyz` only while it leads
//! and its controllers run (so the `knative-ingress` Service sends traffic
//! to the leader only), `/metrics` counts reconciles per kind. SIGTERM or
//! Ctrl-C stops the controllers and data planes gracefully and releases the
//! Lease.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use async_trait::async_trait;
use clap::{Args, Parser, Subcommand};
use futures::future::BoxFuture;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use knative_build::executor::StepExecutor;
use knative_build::reconciler::{Build, BuildObjects};
use knative_core::runtime::{Action, Controller, Reconciler};
use knative_core::store::{ApiObject, Objects};
use knative_eventing::api::KReference;
use knative_eventing::broker::{Brokers, DispatchConfig, IngressConfig};
use knative_eventing::channel::Channels;
use knative_eventing::delivery::Sender;
use knative_eventing::log::nats::{NatsLog, NatsLogConfig};
use knative_eventing::log::{EventLog, InMemoryLog};
use knative_eventing::reconciler::{
    AddressResolver, Eventing, EventingAddresses, EventingObjects, KindAddresses, PingScheduler,
};
use knative_kube_adapter::backend::route_services::RouteServicesError;
use knative_kube_adapter::backend::{
    KubeWorkloadBackend, KubeWorkloadConfig, PodExecutorConfig, PodStepExecutor, QueueProxySidecar,
    RouteServices, RouteServicesConfig,
};
use knative_kube_adapter::crds;
use knative_kube_adapter::eventing::{KubeBindingTarget, KubeContainerRunner};
use knative_kube_adapter::leader::{LeaderElector, LeaseConfig, Outcome};
use knative_kube_adapter::manifests::{self, DeployOptions, RbacOptions};
use knative_kube_adapter::objects::KubeObjects;
use knative_kube_adapter::telemetry::{self, Health, Metrics, ReconcileMetrics};
use knative_serving::api::{Route, Service};
use knative_serving::backend::WorkloadBackend;
use knative_serving::config::ServingConfig;
use knative_serving::dataplane::ingress::{DataplaneConfig, ReplicaMode};
use knative_serving::reconciler::{Serving, ServingObjects};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::watch;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// mimalloc rather than glibc's allocator: the data planes allocate per
/// request and per event (measured in the README's broker section).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The field manager of the operator's server-side applies.
const FIELD_MANAGER: &str = "knative-operator";

/// knative-operator: Knative Serving, Eventing and Build (Tekton) on Kubernetes.
///
/// Without a subcommand it runs the operator (`run`): Serving; Eventing
/// (Brokers, Triggers, Channels, InMemoryChannels, Subscriptions,
/// Sequences, Parallels, PingSources, SinkBindings, ContainerSources);
/// TaskRuns and PipelineRuns. Events live in the leader's memory unless
/// `--event-log` names a NATS server, which keeps them across restarts and
/// failovers. ApiServerSources watch with the operator's own permissions.
/// Requests reach revisions through the operator's ingress and activator;
/// `--queue-proxy-image` adds a queue-proxy sidecar to every revision pod.
#[derive(Debug, Parser)]
#[command(
    name = "knative-operator",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print every CustomResourceDefinition as multi-document YAML.
    Crds,
    /// Print the ClusterRole, ServiceAccount and ClusterRoleBinding the
    /// operator needs (least privilege).
    Rbac(RbacArgs),
    /// Print a Namespace, Deployment and Service that run the operator
    /// (apply `rbac` with the same namespace too).
    Deploy(DeployArgs),
    /// Run the operator (the default).
    Run(Box<RunArgs>),
}

#[derive(Debug, Args)]
struct RbacArgs {
    /// The namespace of the operator's ServiceAccount.
    #[arg(long, default_value = "knative-serving")]
    namespace: String,
    /// Also grant what `run --install-crds` needs (create, and get/patch/update of
    /// knative-rs' CRDs by name).
    #[arg(long)]
    install_crds: bool,
}

#[derive(Debug, Args)]
struct DeployArgs {
    /// The namespace to run the operator in; its Lease, its ingress Service
    /// and Serving's ConfigMaps (--config-namespace) are there too.
    #[arg(long, default_value = "knative-serving")]
    namespace: String,
    /// The operator's container image (none is published yet: build and push
    /// your own).
    #[arg(long, default_value = "knative-operator:dev")]
    image: String,
    /// Replicas; they elect a leader through a Lease.
    #[arg(long, default_value_t = 1)]
    replicas: i32,
    /// Make the operator install the CRDs at start.
    #[arg(long)]
    install_crds: bool,
    /// The operator's --event-log: a NATS URL keeps events across
    /// failovers between replicas (default: in the leader's memory).
    #[arg(long, value_parser = parse_event_log)]
    event_log: Option<EventLogChoice>,
    /// The operator's --queue-proxy-image: a queue-proxy sidecar from this
    /// image in every revision pod (the operator's image works: it has the
    /// `knative` binary).
    #[arg(long, value_name = "IMAGE")]
    queue_proxy_image: Option<String>,
    /// The operator's --queue-proxy-command, comma-separated or repeated
    /// (default: /usr/local/bin/knative,queue-proxy).
    #[arg(
        long,
        value_name = "ARG",
        value_delimiter = ',',
        requires = "queue_proxy_image"
    )]
    queue_proxy_command: Vec<String>,
}

#[derive(Clone, Debug, Args)]
struct RunArgs {
    /// Install (server-side apply) every CRD before starting.
    #[arg(long)]
    install_crds: bool,
    /// Only reconcile objects in this namespace (default: all namespaces).
    #[arg(long)]
    namespace: Option<String>,
    /// Compete for a coordination.k8s.io/v1 Lease and reconcile only while
    /// holding it (run several replicas safely).
    #[arg(long)]
    leader_elect: bool,
    /// The Lease's name.
    #[arg(long, default_value = "knative-operator")]
    lease_name: String,
    /// The Lease's namespace.
    #[arg(long, default_value = "knative-serving")]
    lease_namespace: String,
    /// This replica's identity in the Lease (default: $HOSTNAME, the pod name).
    #[arg(long)]
    identity: Option<String>,
    /// Where to serve /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8090")]
    health_addr: SocketAddr,
    /// Where to serve /metrics (Prometheus text format).
    #[arg(long, default_value = "0.0.0.0:9090")]
    metrics_addr: SocketAddr,
    /// Where the ingress and activator listen (requests for Knative Services).
    #[arg(long, default_value = "0.0.0.0:8080")]
    ingress_addr: SocketAddr,
    /// Where the broker ingress listens (CloudEvents for Brokers).
    #[arg(long, default_value = "0.0.0.0:8081")]
    broker_addr: SocketAddr,
    /// The URL Brokers publish as their address (the Service in front of
    /// --broker-addr).
    #[arg(
        long,
        default_value = "http://knative-ingress.knative-serving.svc.cluster.local:8081"
    )]
    broker_url: String,
    /// Where the channel ingress listens (CloudEvents for InMemoryChannels,
    /// Channels, Sequences and Parallels).
    #[arg(long, default_value = "0.0.0.0:8082")]
    channel_addr: SocketAddr,
    /// The URL under which channels publish their addresses
    /// (`<url>/<namespace>/<channel>`): the Service in front of
    /// --channel-addr.
    #[arg(
        long,
        default_value = "http://knative-ingress.knative-serving.svc.cluster.local:8082"
    )]
    channel_url: String,
    /// Where Brokers and Channels keep events: `memory` (lost when the
    /// leader changes or restarts) or a NATS JetStream URL such as
    /// `nats://nats.nats.svc:4222` (a comma-separated list for a cluster),
    /// which keeps them across restarts and failovers between replicas.
    #[arg(long, default_value = "memory", value_parser = parse_event_log)]
    event_log: EventLogChoice,
    /// The DNS name Route Services point at: the Service in front of
    /// --ingress-addr.
    #[arg(
        long,
        default_value = "knative-ingress.knative-serving.svc.cluster.local"
    )]
    ingress_service_host: String,
    /// The namespace of Serving's ConfigMaps (config-domain, config-network,
    /// config-defaults, config-gc, config-autoscaler), read at start.
    #[arg(long, default_value = "knative-serving")]
    config_namespace: String,
    /// Do not run the TaskRun and PipelineRun controllers.
    #[arg(long)]
    no_builds: bool,
    /// Add a queue-proxy sidecar from this image to every revision pod
    /// (container `queue-proxy`, port 8012, running `knative queue-proxy`
    /// with upstream's environment variables); the revisions' Services and
    /// ready endpoints then point at it. The operator's own image has the
    /// `knative` binary. The activator stays in the request path either
    /// way; without this flag no sidecar runs.
    #[arg(long, value_name = "IMAGE")]
    queue_proxy_image: Option<String>,
    /// The queue-proxy sidecar's command, comma-separated or repeated
    /// (default: /usr/local/bin/knative,queue-proxy).
    #[arg(
        long,
        value_name = "ARG",
        value_delimiter = ',',
        requires = "queue_proxy_image"
    )]
    queue_proxy_command: Vec<String>,
}

/// Where Brokers and Channels keep events (`--event-log`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum EventLogChoice {
    /// In the leader's memory.
    Memory,
    /// On the NATS JetStream server(s) at this URL.
    Nats(String),
}

impl std::fmt::Display for EventLogChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventLogChoice::Memory => f.write_str("memory"),
            EventLogChoice::Nats(url) => f.write_str(url),
        }
    }
}

/// Parses `--event-log`: `memory`, or NATS URLs (`nats://` or `tls://`,
/// comma-separated).
fn parse_event_log(value: &str) -> Result<EventLogChoice, String> {
    if value == "memory" {
        return Ok(EventLogChoice::Memory);
    }
    let urls: Vec<&str> = value.split(',').map(str::trim).collect();
    let valid = |url: &&str| {
        ["nats://", "tls://"].iter().any(|scheme| {
            url.strip_prefix(scheme)
                .is_some_and(|host| !host.is_empty())
        })
    };
    if urls.iter().all(valid) {
        Ok(EventLogChoice::Nats(value.to_owned()))
    } else {
        Err(format!(
            "expected `memory` or a NATS URL such as nats://nats.nats.svc:4222, not {value:?}"
        ))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let metrics = Metrics::new();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .with(ReconcileMetrics::new(metrics.clone()))
        .init();

    let (command, default_run) = (cli.command, cli.run);
    let args = match command {
        Some(Command::Run(args)) => *args,
        None => default_run,
        Some(printing) => return print_manifests(printing),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("knative-operator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, metrics)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "knative-operator stopped");
            ExitCode::FAILURE
        }
    }
}

/// Prints what `crds`, `rbac` or `deploy` print.
fn print_manifests(command: Command) -> ExitCode {
    let printed = match command {
        Command::Crds => Ok(crds::to_yaml(&crds::all())),
        Command::Rbac(args) => {
            let (role, account, binding) = manifests::rbac(&RbacOptions {
                namespace: args.namespace,
                install_crds: args.install_crds,
            });
            to_values([
                serde_json::to_value(role),
                serde_json::to_value(account),
                serde_json::to_value(binding),
            ])
        }
        Command::Deploy(args) => {
            let (namespace, deployment, service) = manifests::deploy(&DeployOptions {
                namespace: args.namespace,
                image: args.image,
                replicas: args.replicas,
                install_crds: args.install_crds,
                event_log: args
                    .event_log
                    .filter(|log| *log != EventLogChoice::Memory)
                    .map(|log| log.to_string()),
                queue_proxy_image: args.queue_proxy_image,
                queue_proxy_command: args.queue_proxy_command,
            });
            to_values([
                serde_json::to_value(namespace),
                serde_json::to_value(deployment),
                serde_json::to_value(service),
            ])
        }
        Command::Run(_) => return ExitCode::FAILURE,
    };
    match printed {
        Ok(yaml) => {
            use std::io::Write as _;
            match std::io::stdout().lock().write_all(yaml.as_bytes()) {
                // `| head` closing the pipe early is not a failure.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("knative-operator: {e}");
                    ExitCode::FAILURE
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            eprintln!("knative-operator: {e}");
            ExitCode::FAILURE
        }
    }
}

fn to_values(
    values: [Result<serde_json::Value, serde_json::Error>; 3],
) -> Result<String, Box<dyn std::error::Error>> {
    let values = values.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(manifests::to_yaml(&values)?)
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A future that completes once `stop` is set.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Sets the returned flag on SIGTERM or Ctrl-C.
fn shutdown_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        #[cfg(unix)]
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
            () = terminate => tracing::info!("SIGTERM; shutting down"),
        }
        tx.send_replace(true);
    });
    rx
}

#[tracing::instrument(skip_all)]
async fn run(args: RunArgs, metrics: Metrics) -> Result<(), Error> {
    let shutdown = shutdown_on_signal();
    let health = Health::new();
    let health_listener = tokio::net::TcpListener::bind(args.health_addr)
        .await
        .map_err(|e| format!("--health-addr {}: {e}", args.health_addr))?;
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|e| format!("--metrics-addr {}: {e}", args.metrics_addr))?;
    tokio::spawn(telemetry::serve(
        health_listener,
        health.clone(),
        None,
        stopped(shutdown.clone()),
    ));
    tokio::spawn(telemetry::serve(
        metrics_listener,
        health.clone(),
        Some(metrics.clone()),
        stopped(shutdown.clone()),
    ));

    let client = Client::try_default()
        .await
        .map_err(|e| format!("cannot connect to Kubernetes (kubeconfig or in-cluster): {e}"))?;
    if args.install_crds {
        install_crds(&client).await?;
    }
    if !args.leader_elect {
        metrics.set_leading(true);
        return operate(client, args, health, stopped(shutdown)).await;
    }

    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| format!("knative-operator-{}", uuid::Uuid::new_v4()));
    let elector = LeaderElector::new(
        client.clone(),
        LeaseConfig::new(&args.lease_namespace, &args.lease_name, identity),
    );
    let mut leading = elector.leading();
    let leading_metrics = metrics.clone();
    tokio::spawn(async move {
        while leading.changed().await.is_ok() {
            leading_metrics.set_leading(*leading.borrow());
        }
    });
    let mut failure: Option<Error> = None;
    let outcome = elector
        .run(stopped(shutdown), |term| async {
            if let Err(e) = operate(client, args, health.clone(), term.ended()).await {
                failure = Some(e);
            }
        })
        .await;
    health.set_ready(false);
    if let Some(e) = failure {
        return Err(e);
    }
    match outcome {
        Outcome::Shutdown | Outcome::Finished => Ok(()),
        // Exit so that Kubernetes restarts the pod as a follower.
        Outcome::Lost(reason) => Err(format!("lost leadership: {reason}").into()),
    }
}

/// Server-side applies every CRD (force: this operator owns them).
#[tracing::instrument(skip_all)]
async fn install_crds(client: &Client) -> Result<(), Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for crd in crds::all() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .map_err(|e| format!("installing CRD {name}: {e}"))?;
        tracing::info!(crd = %name, "CRD applied");
    }
    Ok(())
}

/// The Kubernetes backends: **the integration point with
/// `knative_kube_adapter::backend`** (written separately). Revisions run as
/// Deployments + Services; TaskRun steps in a Pod per TaskRun.
struct KubernetesBackends {
    workload: Arc<dyn WorkloadBackend>,
    /// Follows Deployments, Pods and EndpointSlices for the workload backend.
    workload_status: BoxFuture<'static, ()>,
    steps: Arc<dyn StepExecutor>,
}

fn kubernetes_backends(
    client: &Client,
    namespace: Option<&str>,
    queue_proxy: Option<QueueProxySidecar>,
) -> KubernetesBackends {
    let workload = KubeWorkloadBackend::new(
        client.clone(),
        KubeWorkloadConfig {
            namespace: namespace.map(str::to_owned),
            queue_proxy,
            ..KubeWorkloadConfig::default()
        },
    );
    let workload_status = Box::pin(workload.watch_status());
    KubernetesBackends {
        workload: Arc::new(workload),
        workload_status,
        steps: Arc::new(PodStepExecutor::new(
            client.clone(),
            PodExecutorConfig::default(),
        )),
    }
}

/// The queue-proxy sidecar `--queue-proxy-image` and `--queue-proxy-command`
/// ask for, if any.
fn queue_proxy_sidecar(args: &RunArgs) -> Option<QueueProxySidecar> {
    let image = args.queue_proxy_image.clone()?;
    Some(QueueProxySidecar::new(image).with_command(args.queue_proxy_command.clone()))
}

/// Serving's settings from upstream's ConfigMaps in `namespace`
/// (`config-defaults`, `config-network`, `config-domain`, `config-gc`,
/// `config-autoscaler`), read once at start; a missing ConfigMap keeps
/// upstream's defaults, a bad value stops the operator with the
/// ConfigMap and key named.
async fn serving_config(client: &Client, namespace: &str) -> Result<ServingConfig, Error> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let read = |name: &'static str| {
        let api = api.clone();
        async move {
            match api.get_opt(name).await {
                Ok(found) => Ok(found.and_then(|cm| cm.data)),
                Err(e) => Err(format!("reading ConfigMap {namespace}/{name}: {e}")),
            }
        }
    };
    let mut config = ServingConfig::default();
    if let Some(data) = read("config-defaults").await? {
        config.defaults = knative_serving::config::Defaults::from_config_map(&data)
            .map_err(|e| format!("namespace {namespace}: {e}"))?;
    }
    if let Some(data) = read("config-network").await? {
        config.network = knative_serving::config::Network::from_config_map(&data)
            .map_err(|e| format!("namespace {namespace}: {e}"))?;
    }
    if let Some(data) = read("config-domain").await? {
        config.network = config.network.with_domain_config_map(&data);
    }
    if let Some(data) = read("config-gc").await? {
        config.gc = knative_serving::reconciler::gc::GcConfig::from_config_map(&data)
            .map_err(|e| format!("{namespace}/config-gc: {e}"))?;
    }
    if let Some(data) = read("config-autoscaler").await? {
        config.autoscaler =
            knative_serving::autoscaling::config::AutoscalerConfig::from_config_map(&data)
                .map_err(|e| format!("{namespace}/config-autoscaler: {e}"))?;
    }
    tracing::info!(
        domain = %config.network.domain,
        "serving configuration read from {namespace}"
    );
    Ok(config)
}

/// `KubeObjects` of one kind, in the operator's namespace scope, publishing
/// `Created` events on the owners of what it creates.
fn objects<K>(
    client: &Client,
    namespace: Option<&str>,
    recorder: &Arc<Recorder>,
) -> Arc<KubeObjects<K>> {
    let objects = KubeObjects::new(client.clone()).with_recorder(Arc::clone(recorder));
    Arc::new(match namespace {
        Some(ns) => objects.in_namespace(ns),
        None => objects,
    })
}

/// Resolves references to core `v1` Services to their cluster DNS name
/// (the last resolver of the chain: Knative Services and Routes are
/// resolved before it by their address).
struct CoreServiceAddresses;

#[async_trait]
impl AddressResolver for CoreServiceAddresses {
    async fn resolve_reference(
        &self,
        reference: &KReference,
        namespace: &str,
    ) -> Result<String, String> {
        let ns = reference.namespace_or(namespace);
        let name = &reference.name;
        match (reference.api_group(), reference.kind.as_str()) {
            // `specs/EVENTING.md §6`: a core Service resolves to its
            // cluster-local name with a trailing `/`.
            ("", "Service") => Ok(format!("http://{name}.{ns}.svc.cluster.local/")),
            (group, kind) => Err(format!("cannot resolve {kind} ({group}) {ns}/{name}")),
        }
    }
}

/// Knative Services and Routes by their address, then core Services.
fn kube_addresses(
    services: Arc<dyn Objects<Service>>,
    routes: Arc<dyn Objects<Route>>,
) -> Arc<dyn AddressResolver> {
    let routes = KindAddresses::new(
        "serving.knative.dev",
        "Route",
        routes,
        Route::address_url,
        Some(Arc::new(CoreServiceAddresses)),
    );
    Arc::new(KindAddresses::new(
        "serving.knative.dev",
        "Service",
        services,
        Service::address_url,
        Some(Arc::new(routes)),
    ))
}

/// Gives every Route its Kubernetes Services ([`RouteServices`]); owner
/// references let the garbage collector delete them with the Route.
struct RouteServicesReconciler {
    services: RouteServices,
}

#[async_trait]
impl Reconciler<Route> for RouteServicesReconciler {
    type Error = RouteServicesError;

    #[tracing::instrument(level = "debug", skip_all)]
    async fn reconcile(&self, route: Arc<Route>) -> Result<Action, Self::Error> {
        if route.metadata.deletion_timestamp.is_none() {
            self.services.apply(&route).await?;
        }
        Ok(Action::await_change())
    }
}

/// `controller`, watching only `namespace` when given (`--namespace`).
fn scoped<K: ApiObject, R: Reconciler<K>>(
    controller: Controller<K, R>,
    namespace: Option<&str>,
) -> Controller<K, R> {
    match namespace {
        Some(ns) => controller.namespace(ns),
        None => controller,
    }
}

/// Spawns a data plane's `serve`, logging the error it stopped with.
fn spawn_logged(
    what: &'static str,
    served: impl Future<Output = std::io::Result<()>> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = served.await {
            tracing::error!(error = %e, "{what} stopped");
        }
    })
}

/// Runs every wired controller and data plane until `stop` completes.
#[tracing::instrument(skip_all, fields(namespace = ?args.namespace))]
async fn operate(
    client: Client,
    args: RunArgs,
    health: Health,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let ns = args.namespace.as_deref();
    let (halt, halted) = watch::channel(false);
    let until = || stopped(halted.clone());

    let queue_proxy = queue_proxy_sidecar(&args);
    if let Some(sidecar) = &queue_proxy {
        tracing::info!(
            image = %sidecar.image,
            command = ?sidecar.command,
            "revision pods get a queue-proxy sidecar"
        );
    }
    let backends = kubernetes_backends(&client, ns, queue_proxy);
    let recorder = Arc::new(Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: args
                .identity
                .clone()
                .or_else(|| std::env::var("HOSTNAME").ok()),
        },
    ));

    // Serving.
    let serving_objects = ServingObjects {
        services: objects::<Service>(&client, ns, &recorder),
        configurations: objects(&client, ns, &recorder),
        revisions: objects(&client, ns, &recorder),
        routes: objects::<Route>(&client, ns, &recorder),
    };
    let serving = Serving::new(
        serving_objects.clone(),
        Arc::clone(&backends.workload),
        serving_config(&client, &args.config_namespace).await?,
    );
    let dataplane = serving.dataplane(DataplaneConfig {
        replicas: ReplicaMode::Direct,
        ..DataplaneConfig::default()
    });
    let ingress = tokio::net::TcpListener::bind(args.ingress_addr)
        .await
        .map_err(|e| format!("--ingress-addr {}: {e}", args.ingress_addr))?;

    // Eventing: brokers and triggers.
    let eventing = EventingObjects {
        brokers: objects(&client, ns, &recorder),
        triggers: objects(&client, ns, &recorder),
        channels: objects(&client, ns, &recorder),
        in_memory_channels: objects(&client, ns, &recorder),
        subscriptions: objects(&client, ns, &recorder),
        sequences: objects(&client, ns, &recorder),
        parallels: objects(&client, ns, &recorder),
        ping_sources: objects(&client, ns, &recorder),
        sink_bindings: objects(&client, ns, &recorder),
        container_sources: objects(&client, ns, &recorder),
        api_server_sources: objects(&client, ns, &recorder),
    };
    let resolver: Arc<dyn AddressResolver> = Arc::new(EventingAddresses::new(
        &eventing,
        Some(kube_addresses(
            Arc::clone(&serving_objects.services),
            Arc::clone(&serving_objects.routes),
        )),
    ));
    // One log for brokers and channels, one sender for brokers, channels
    // and pings.
    let log: Arc<dyn EventLog> = match &args.event_log {
        EventLogChoice::Memory => Arc::new(InMemoryLog::new()),
        EventLogChoice::Nats(url) => Arc::new(
            NatsLog::connect(url, NatsLogConfig::default())
                .await
                .map_err(|e| format!("--event-log {url}: {e}"))?,
        ),
    };
    let sender = Sender::new();
    let brokers = Brokers::with_sender(
        Arc::clone(&log),
        IngressConfig::default(),
        DispatchConfig::default(),
        sender.clone(),
    );
    let channels = Channels::with_sender(
        Arc::clone(&log),
        knative_eventing::binding::Limits::default(),
        DispatchConfig::default(),
        sender.clone(),
    );
    let pings = PingScheduler::with_sender(sender, Default::default());
    let channel_listener = tokio::net::TcpListener::bind(args.channel_addr)
        .await
        .map_err(|e| format!("--channel-addr {}: {e}", args.channel_addr))?;
    let broker_listener = tokio::net::TcpListener::bind(args.broker_addr)
        .await
        .map_err(|e| format!("--broker-addr {}: {e}", args.broker_addr))?;
    let route_services_controller = Controller::new(
        Arc::clone(&serving_objects.routes),
        Arc::new(RouteServicesReconciler {
            services: RouteServices::new(
                client.clone(),
                RouteServicesConfig {
                    ingress_host: args.ingress_service_host.clone(),
                    field_manager: FIELD_MANAGER.to_owned(),
                },
            ),
        }),
    );
    let eventing_controllers = Eventing {
        objects: eventing.clone(),
        resolver: Arc::clone(&resolver),
        brokers: brokers.clone(),
        broker_url: args.broker_url.clone(),
        channels: channels.clone(),
        channel_url: args.channel_url.clone(),
        pings: pings.clone(),
        binding_target: Arc::new(KubeBindingTarget::with_field_manager(
            client.clone(),
            FIELD_MANAGER,
        )),
        container_runner: Arc::new(KubeContainerRunner::with_field_manager(
            client.clone(),
            FIELD_MANAGER,
        )),
    };

    let mut tasks = vec![
        tokio::spawn(serving.run(until())),
        tokio::spawn({
            let (shutdown, ns) = (until(), ns.map(str::to_owned));
            async move { eventing_controllers.run(ns.as_deref(), shutdown).await }
        }),
        tokio::spawn(scoped(route_services_controller, ns).run(until())),
        // ApiServerSource: see apiserver_source.rs
        tokio::spawn({
            let (client, sources) = (client.clone(), Arc::clone(&eventing.api_server_sources));
            let (resolver, shutdown) = (Arc::clone(&resolver), until());
            let ns = ns.map(str::to_owned);
            async move {
                // Events carry the API server's URL as their source.
                let url = kube::Config::infer()
                    .await
                    .map(|c| c.cluster_url.to_string())
                    .unwrap_or_default();
                let controller = knative_kube_adapter::apiserver_source::controller(
                    client, sources, resolver, &url,
                );
                scoped(controller, ns.as_deref()).run(shutdown).await;
            }
        }),
        spawn_logged("ingress", {
            let shutdown = until();
            async move { dataplane.serve(ingress, shutdown).await }
        }),
        spawn_logged("broker ingress", {
            let (shutdown, brokers) = (until(), brokers.clone());
            async move { brokers.serve(broker_listener, shutdown).await }
        }),
        spawn_logged("channel ingress", {
            let (shutdown, channels) = (until(), channels.clone());
            async move { channels.serve(channel_listener, shutdown).await }
        }),
        tokio::spawn({
            let shutdown = until();
            let status = backends.workload_status;
            async move {
                tokio::select! {
                    () = status => {}
                    () = shutdown => {}
                }
            }
        }),
    ];
    if !args.no_builds {
        let build = Build::new(
            BuildObjects {
                tasks: objects(&client, ns, &recorder),
                task_runs: objects(&client, ns, &recorder),
                pipelines: objects(&client, ns, &recorder),
                pipeline_runs: objects(&client, ns, &recorder),
            },
            Arc::clone(&backends.steps),
        );
        tasks.push(tokio::spawn(build.run(until())));
    }
    health.set_ready(true);
    tracing::info!(
        ingress = %args.ingress_addr,
        broker = %args.broker_addr,
        channel = %args.channel_addr,
        event_log = %args.event_log,
        builds = !args.no_builds,
        "controllers and data planes running"
    );

    // The data planes' dispatchers and ping schedules live as long as
    // these handles: until this term ends.
    let data_planes = (brokers, channels, pings);
    stop.await;
    health.set_ready(false);
    tracing::info!("stopping controllers and data planes");
    halt.send_replace(true);
    for task in tasks {
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "a task ended abnormally");
        }
    }
    drop(data_planes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// `specs/EVENTING.md §6`: a core Service resolves without status to
    /// its cluster-local URL with a trailing `/`; other kinds are errors.
    #[tokio::test]
    async fn core_services_resolve_to_their_cluster_local_url() {
        let reference = |api_version: &str, kind: &str| KReference {
            api_version: Some(api_version.to_owned()),
            kind: kind.to_owned(),
            name: "display".to_owned(),
            ..KReference::default()
        };
        assert_eq!(
            CoreServiceAddresses
                .resolve_reference(&reference("v1", "Service"), "ns")
                .await,
            Ok("http://display.ns.svc.cluster.local/".to_owned())
        );
        let err = CoreServiceAddresses
            .resolve_reference(&reference("apps/v1", "Deployment"), "ns")
            .await
            .expect_err("not a core Service");
        assert!(err.contains("Deployment"), "{err}");
    }

    #[test]
    fn every_flag_of_every_subcommand_is_documented() {
        let command = Cli::command();
        command.clone().debug_assert();
        let mut commands = vec![command.clone()];
        commands.extend(command.get_subcommands().cloned());
        for command in commands {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                assert!(
                    arg.get_help().is_some_and(|h| !h.to_string().is_empty()),
                    "{} --{id} has no help",
                    command.get_name()
                );
            }
        }
        // The queue-proxy flags, on `run` (and at the top level) and on
        // `deploy`, which passes them on.
        let deploy = command
            .find_subcommand("deploy")
            .expect("a deploy subcommand");
        for (name, command) in [("run", &command), ("deploy", deploy)] {
            let help = command.clone().render_long_help().to_string();
            for flag in ["--queue-proxy-image <IMAGE>", "--queue-proxy-command <ARG>"] {
                assert!(help.contains(flag), "{name}: {flag} in --help");
            }
            assert!(
                help.contains("/usr/local/bin/knative,queue-proxy"),
                "{name}: the default command in --help"
            );
        }
        let top = command.clone().render_long_help().to_string();
        assert!(top.contains("queue-proxy sidecar"), "{top}");
        assert!(top.contains("port 8012"), "{top}");
    }

    #[test]
    fn the_queue_proxy_flags_make_the_sidecar() {
        let sidecar = |argv: &[&str]| {
            let cli = Cli::try_parse_from(argv).expect("valid flags");
            queue_proxy_sidecar(&cli.run)
        };
        assert_eq!(
            sidecar(&["knative-operator"]),
            None,
            "no sidecar by default"
        );
        assert_eq!(
            sidecar(&["knative-operator", "--queue-proxy-image", "op:dev"]),
            Some(QueueProxySidecar::new("op:dev"))
        );
        assert_eq!(
            sidecar(&["knative-operator", "--queue-proxy-image", "op:dev"]).map(|s| s.command),
            Some(vec![
                "/usr/local/bin/knative".to_owned(),
                "queue-proxy".to_owned()
            ])
        );
        let want = Some(QueueProxySidecar {
            image: "qp:1".into(),
            command: vec!["/qp".into(), "serve".into()],
        });
        assert_eq!(
            sidecar(&[
                "knative-operator",
                "--queue-proxy-image=qp:1",
                "--queue-proxy-command=/qp,serve"
            ]),
            want
        );
        assert_eq!(
            sidecar(&[
                "knative-operator",
                "--queue-proxy-image=qp:1",
                "--queue-proxy-command",
                "/qp",
                "--queue-proxy-command",
                "serve"
            ]),
            want
        );
        assert!(
            Cli::try_parse_from(["knative-operator", "--queue-proxy-command", "/qp"]).is_err(),
            "a command needs an image"
        );
        let cli = Cli::try_parse_from([
            "knative-operator",
            "deploy",
            "--queue-proxy-image",
            "op:dev",
            "--queue-proxy-command",
            "/qp,serve",
        ])
        .expect("deploy with a sidecar");
        let Some(Command::Deploy(args)) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(args.queue_proxy_image.as_deref(), Some("op:dev"));
        assert_eq!(args.queue_proxy_command, ["/qp", "serve"]);
    }

    /// What `deploy --namespace foo` prints runs an operator whose flags
    /// all point at `foo`.
    #[test]
    fn the_deploy_manifest_runs_the_operator_in_its_namespace() {
        let cli = Cli::try_parse_from(["knative-operator", "deploy", "--namespace", "foo"])
            .expect("deploy with a namespace");
        let Some(Command::Deploy(args)) = cli.command else {
            panic!("{:?}", cli.command)
        };
        let (_, deployment, _) = manifests::deploy(&DeployOptions {
            namespace: args.namespace,
            image: args.image,
            replicas: args.replicas,
            install_crds: args.install_crds,
            event_log: None,
            queue_proxy_image: None,
            queue_proxy_command: Vec::new(),
        });
        let pod = deployment.spec.template.spec.expect("a pod spec");
        let container_args = pod.containers[0].args.clone().unwrap_or_default();
        let argv = std::iter::once("knative-operator".to_owned()).chain(container_args);
        let cli = Cli::try_parse_from(argv).expect("the container's args parse");
        let Some(Command::Run(run)) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(run.config_namespace, "foo");
        assert_eq!(
            run.ingress_service_host,
            "knative-ingress.foo.svc.cluster.local"
        );
        assert_eq!(
            run.broker_url,
            "http://knative-ingress.foo.svc.cluster.local:8081"
        );
    }

    #[test]
    fn the_eventing_flags_are_documented_with_their_defaults() {
        let command = Cli::command();
        for (flag, default, words) in [
            ("channel_addr", "0.0.0.0:8082", "channel ingress"),
            (
                "channel_url",
                "http://knative-ingress.knative-serving.svc.cluster.local:8082",
                "channels publish",
            ),
            ("event_log", "memory", "nats://"),
        ] {
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == flag)
                .unwrap_or_else(|| panic!("--{flag} exists"));
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            assert!(help.contains(words), "--{flag}: {help}");
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            assert_eq!(defaults, [default], "--{flag}");
        }
        let long_help = command.clone().render_long_help().to_string();
        for flag in ["--channel-addr", "--channel-url", "--event-log"] {
            assert!(long_help.contains(flag), "{flag} in --help");
        }
        assert!(
            !long_help.contains("Channel/Subscription/Sequence/Parallel and source controllers"),
            "--help no longer says the eventing controllers are missing"
        );
        assert!(long_help.contains("ApiServerSource"), "{long_help}");

        let cli = Cli::try_parse_from(["knative-operator"]).expect("defaults");
        assert_eq!(cli.run.event_log, EventLogChoice::Memory);
        assert_eq!(cli.run.channel_addr.port(), 8082);
        let cli = Cli::try_parse_from([
            "knative-operator",
            "--event-log",
            "nats://nats.nats.svc:4222",
            "--channel-addr",
            "127.0.0.1:9082",
        ])
        .expect("a NATS log");
        assert_eq!(
            cli.run.event_log,
            EventLogChoice::Nats("nats://nats.nats.svc:4222".into())
        );
        assert_eq!(cli.run.channel_addr.port(), 9082);
    }

    #[test]
    fn the_event_log_is_memory_or_nats_urls() {
        assert_eq!(parse_event_log("memory"), Ok(EventLogChoice::Memory));
        for urls in [
            "nats://127.0.0.1:4222",
            "nats://a:4222,nats://b:4222",
            "tls://nats.example.com:4222",
        ] {
            assert_eq!(
                parse_event_log(urls),
                Ok(EventLogChoice::Nats(urls.to_owned()))
            );
        }
        for bad in [
            "",
            "disk",
            "nats://",
            "http://nats:4222",
            "nats://a,redis://b",
        ] {
            assert!(parse_event_log(bad).is_err(), "{bad:?}");
        }
        assert!(Cli::try_parse_from(["knative-operator", "--event-log", "disk"]).is_err());
    }

    #[test]
    fn run_is_the_default_and_takes_its_flags_at_the_top_level() {
        let cli = Cli::try_parse_from(["knative-operator", "--install-crds", "--leader-elect"])
            .expect("flags without a subcommand mean run");
        assert!(cli.command.is_none());
        assert!(cli.run.install_crds && cli.run.leader_elect);
        assert_eq!(cli.run.namespace, None);

        let cli = Cli::try_parse_from(["knative-operator", "run", "--namespace", "apps"])
            .expect("run with a namespace");
        let Some(Command::Run(args)) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(args.namespace.as_deref(), Some("apps"));

        let cli =
            Cli::try_parse_from(["knative-operator", "rbac", "--install-crds"]).expect("rbac");
        assert!(matches!(
            cli.command,
            Some(Command::Rbac(RbacArgs {
                install_crds: true,
                ..
            }))
        ));
        assert!(Cli::try_parse_from(["knative-operator", "--install-crds", "crds"]).is_err());
    }
}
