//! [`LocalBackend`]: runs a revision's replicas as child processes of this
//! process, on this machine.
//!
//! # What runs
//!
//! Each replica is one process started from the revision's serving
//! container, with Kubernetes' rules for the command line:
//!
//! - the container's `command`, when set, replaces the image's entrypoint,
//!   and its `args`, when set, replace the image's default arguments;
//! - **images are not pulled locally.** A container without a `command`
//!   runs whatever its image is registered as in [`LocalConfig::images`]
//!   (a [`LocalCommand`]: program, default arguments, environment, working
//!   directory); the container's `args`, when set, replace the registered
//!   default arguments. A container with neither makes
//!   [`WorkloadBackend::ensure`] fail with [`BackendError::Unsupported`].
//!
//! `$(VAR)` references in the container's `command`, `args` and `env` values
//! are expanded as Kubernetes does (`$$` escapes a `$`; unknown references
//! stay as written); the registered image command is used verbatim.
//!
//! The process inherits this process's environment (so `PATH`, `HOME` and
//! the like work), then gets the registered image's `env`, the container's
//! `env` (entries with `valueFrom`, and `envFrom`, are
//! [`BackendError::Unsupported`]), and what Knative sets: `PORT` (a free
//! port on [`LocalConfig::bind_host`], picked each time the replica's
//! process starts), `K_REVISION`, and `K_CONFIGURATION` / `K_SERVICE` from
//! the labels `serving.knative.dev/configuration` /
//! `serving.knative.dev/service` when the spec has them. The container's
//! `workingDir` (else the registered one) is its working directory. It runs
//! in its own process group with stdin from `/dev/null`; stdout and stderr
//! are kept line by line in a bounded ring per replica
//! ([`LocalConfig::log_lines`], read with [`LocalBackend::logs`]). Only the
//! serving container runs: other containers (sidecars) are ignored with a
//! warning. Resources, volumes, security contexts, liveness and startup
//! probes are ignored too.
//!
//! # Readiness
//!
//! A replica is in [`WorkloadStatus::ready`] only while its serving
//! container's `readinessProbe` passes: `httpGet` (HTTP only, status 200 to
//! 399, `User-Agent: kube-probe/1.33`, plus the probe's `httpHeaders`),
//! `tcpSocket` (a connection is accepted) or `exec` (the command, run with
//! the replica's environment and working directory, exits 0). A probe port
//! that is unset, 0 or the container port means the replica's `PORT`; any
//! other port is probed as is on [`LocalConfig::bind_host`]; the probe's
//! `host` is ignored. `initialDelaySeconds`, `periodSeconds` (0 or unset,
//! Knative's "probe aggressively", means [`LocalConfig::probe_period`], and
//! every 5 ms until the replica is first ready, so a cold start is not
//! delayed by the probe period),
//! `timeoutSeconds` (default 1), `successThreshold` (default 1) and
//! `failureThreshold` (default 3: a ready replica leaves `ready` after that
//! many failures in a row) apply. Without a probe (or with one that names
//! no handler, as Knative defaults it) the probe is a TCP connection to
//! `PORT`. `grpc` probes and `https` are unsupported.
//!
//! # Scaling, stopping and crashes
//!
//! [`WorkloadBackend::scale`] starts replicas named `<revision>-<ordinal>`
//! (ordinals increase from 1 and are never reused within a workload) and
//! stops the newest extra ones. It does not wait for them to stop: a
//! stopping replica leaves `ready` at once, gets SIGTERM on its process
//! group, SIGKILL after [`WorkloadSpec::termination_grace_period`], and
//! counts in [`WorkloadStatus::actual`] (replicas with a live process) until
//! its process has exited. [`WorkloadBackend::remove`] stops every replica
//! the same way and returns once they all have exited.
//!
//! A process that exits while its replica should run is a crash:
//! [`WorkloadStatus::failure`] says `ExitCode<N>` (or `Signal<N>`) with the
//! replica's last log lines, and the replica's process is started again
//! after a back-off that starts at [`LocalConfig::restart_backoff_base`] and
//! doubles with each crash in a row up to
//! [`LocalConfig::restart_backoff_max`] (the count starts over once a
//! process stayed ready for 10 s). A process that cannot be started (say
//! the program does not exist) is reported as `StartError` and retried the
//! same way. The failure is cleared when a replica becomes ready. When a
//! process exits, what is left of its process group is killed.
//!
//! [`WorkloadBackend::ensure`] on an existing workload with a changed spec
//! only changes what replicas started later run: running replicas, and
//! restarts of their crashed processes, keep the spec they were started
//! with (as a Kubernetes pod keeps its spec).
//!
//! # Dropping
//!
//! When the last clone of a [`LocalBackend`] is dropped, every replica's
//! process group gets SIGKILL right away (no grace period: use `remove` for
//! a graceful stop). A replica's supervisor task that is dropped without
//! that (its runtime shuts down) kills its process group too. Processes
//! that leave their process group (e.g. with `setsid`) are not tracked.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::{ACCEPT, HOST, HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span, warn};

use super::{
    BackendError, Endpoint, WorkloadBackend, WorkloadFailure, WorkloadKey, WorkloadSpec,
    WorkloadStatus,
};

/// How long a process must stay ready for the crash count (and so the
/// restart back-off) to start over.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);
/// How often a starting replica is probed while its probe is Knative's
/// aggressive one (no `periodSeconds`): a replica serves within a few
/// milliseconds of listening, which is what a cold start waits for.
const STARTUP_PROBE_PERIOD: Duration = Duration::from_millis(5);
/// How many log lines of a crashed process go into the failure message.
const FAILURE_LOG_LINES: usize = 5;
/// How many stopped replicas' log rings are kept per workload.
const RETAINED_STOPPED_LOGS: usize = 16;
/// Longer output lines are split.
const MAX_LINE_BYTES: usize = 16 * 1024;
/// How long to wait for a dead process's output to be read to its end.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_millis(500);
/// The container name Knative gives an unnamed serving container.
const DEFAULT_CONTAINER_NAME: &str = "user-container";
/// The label Knative puts the configuration's name in.
const CONFIGURATION_LABEL: &str = "serving.knative.dev/configuration";
/// The label Knative puts the service's name in.
const SERVICE_LABEL: &str = "serving.knative.dev/service";

/// How [`LocalBackend`] runs things.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalConfig {
    /// How to run an image locally, by image name exactly as written in the
    /// container (images are not pulled locally). Used for containers
    /// without a `command`.
    pub images: HashMap<String, LocalCommand>,
    /// How many output lines are kept per replica (default 1000).
    pub log_lines: usize,
    /// The first restart back-off after a crash (default 1 s).
    pub restart_backoff_base: Duration,
    /// The longest restart back-off (default 30 s).
    pub restart_backoff_max: Duration,
    /// The probe period when a probe has no `periodSeconds` (or 0, which
    /// Knative uses for "probe aggressively"), and for the default TCP
    /// probe (default 100 ms).
    pub probe_period: Duration,
    /// The address replicas are reached at, probed at and get free ports on
    /// (default 127.0.0.1).
    pub bind_host: IpAddr,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            images: HashMap::new(),
            log_lines: 1000,
            restart_backoff_base: Duration::from_secs(1),
            restart_backoff_max: Duration::from_secs(30),
            probe_period: Duration::from_millis(100),
            bind_host: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }
}

/// How to run an image as a local process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalCommand {
    /// The program and its default arguments (the image's entrypoint and
    /// command). A container's `args` replace everything after the program.
    pub command: Vec<String>,
    /// Variables the image sets (its `ENV`); the container's `env` wins.
    pub env: Vec<(String, String)>,
    /// The image's working directory; the container's `workingDir` wins.
    pub working_dir: Option<PathBuf>,
}

/// Which output stream a log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line a replica's process wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// The replica's name.
    pub replica: String,
    /// Where it was written.
    pub stream: Stream,
    /// The line, without its line end (invalid UTF-8 replaced).
    pub line: String,
}

/// Runs replicas as local child processes; see the [module docs](self).
///
/// Cheap to clone: clones share the workloads.
#[derive(Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

impl fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let workloads: Vec<WorkloadKey> = lock(&self.inner.workloads).keys().cloned().collect();
        f.debug_struct("LocalBackend")
            .field("config", &self.inner.config)
            .field("workloads", &workloads)
            .finish()
    }
}

impl LocalBackend {
    /// A backend with no workloads.
    pub fn new(config: LocalConfig) -> LocalBackend {
        LocalBackend {
            inner: Arc::new(Inner {
                config: Arc::new(config),
                workloads: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The configuration this backend runs with.
    pub fn config(&self) -> &LocalConfig {
        &self.inner.config
    }

    /// The kept output lines of the workload's replicas (running ones and a
    /// few stopped ones), oldest first in the order they arrived. Empty for
    /// an unknown workload.
    pub fn logs(&self, key: &WorkloadKey) -> Vec<LogLine> {
        match self.workload(key) {
            Ok(workload) => lock(&workload.logs).all(),
            Err(_) => Vec::new(),
        }
    }

    fn workload(&self, key: &WorkloadKey) -> Result<Arc<Workload>, BackendError> {
        lock(&self.inner.workloads)
            .get(key)
            .cloned()
            .ok_or_else(|| BackendError::NotFound(key.clone()))
    }
}

#[async_trait]
impl WorkloadBackend for LocalBackend {
    async fn ensure(&self, spec: &WorkloadSpec) -> Result<(), BackendError> {
        let launch = Arc::new(Launch::prepare(spec, &self.inner.config)?);
        let mut workloads = lock(&self.inner.workloads);
        if let Some(workload) = workloads.get(&spec.key) {
            let mut state = lock(&workload.state);
            if state.spec != *spec {
                info!(key = %spec.key, "spec changed: replicas started from now on use it");
                state.spec = spec.clone();
                state.launch = launch;
            }
            return Ok(());
        }
        let (status, _) = watch::channel(WorkloadStatus::default());
        workloads.insert(
            spec.key.clone(),
            Arc::new(Workload {
                key: spec.key.clone(),
                config: Arc::clone(&self.inner.config),
                state: Mutex::new(State {
                    spec: spec.clone(),
                    launch,
                    desired: 0,
                    next_ordinal: 0,
                    replicas: BTreeMap::new(),
                    failure: None,
                    closed: false,
                }),
                status,
                logs: Mutex::new(LogStore::new(self.inner.config.log_lines)),
            }),
        );
        debug!(key = %spec.key, "workload created");
        Ok(())
    }

    async fn scale(&self, key: &WorkloadKey, replicas: u32) -> Result<(), BackendError> {
        self.workload(key)?.scale(replicas)
    }

    async fn remove(&self, key: &WorkloadKey) -> Result<(), BackendError> {
        let Some(workload) = lock(&self.inner.workloads).remove(key) else {
            return Ok(());
        };
        let tasks = workload.shutdown(false);
        for task in tasks {
            if let Err(error) = task.await {
                warn!(key = %key, %error, "replica supervisor failed");
            }
        }
        debug!(key = %key, "workload removed");
        Ok(())
    }

    fn status(&self, key: &WorkloadKey) -> Result<watch::Receiver<WorkloadStatus>, BackendError> {
        Ok(self.workload(key)?.status.subscribe())
    }
}

struct Inner {
    config: Arc<LocalConfig>,
    workloads: Mutex<HashMap<WorkloadKey, Arc<Workload>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let workloads = std::mem::take(&mut *lock(&self.workloads));
        for workload in workloads.values() {
            // The supervisors see the stop and return; their JoinHandles are
            // detached.
            drop(workload.shutdown(true));
        }
    }
}

/// Locks `mutex`, going on with the data if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One revision's replicas.
struct Workload {
    key: WorkloadKey,
    config: Arc<LocalConfig>,
    state: Mutex<State>,
    status: watch::Sender<WorkloadStatus>,
    logs: Mutex<LogStore>,
}

struct State {
    /// The spec last ensured.
    spec: WorkloadSpec,
    /// What new replicas run.
    launch: Arc<Launch>,
    desired: u32,
    next_ordinal: u64,
    replicas: BTreeMap<u64, Replica>,
    failure: Option<WorkloadFailure>,
    /// Removed (or the backend dropped): start nothing more.
    closed: bool,
}

struct Replica {
    name: String,
    stop: watch::Sender<bool>,
    stopping: bool,
    process: Option<Process>,
    task: Option<JoinHandle<()>>,
}

/// A replica's live process.
struct Process {
    pid: u32,
    address: SocketAddr,
    ready_since: Option<Instant>,
}

impl Workload {
    fn scale(self: &Arc<Self>, replicas: u32) -> Result<(), BackendError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|error| BackendError::Runtime {
                key: self.key.clone(),
                message: "the local backend needs a tokio runtime".into(),
                source: Some(Box::new(error)),
            })?;
        let mut state = lock(&self.state);
        if state.closed {
            return Err(BackendError::NotFound(self.key.clone()));
        }
        state.desired = replicas;
        let wanted = usize::try_from(replicas).unwrap_or(usize::MAX);
        let active: Vec<u64> = state
            .replicas
            .iter()
            .filter(|(_, replica)| !replica.stopping)
            .map(|(ordinal, _)| *ordinal)
            .collect();
        if active.len() < wanted {
            for _ in active.len()..wanted {
                state.next_ordinal += 1;
                let ordinal = state.next_ordinal;
                let name = format!("{}-{ordinal}", self.key.revision);
                let (stop, stop_rx) = watch::channel(false);
                let span = info_span!("replica", key = %self.key, replica = %name);
                let supervisor = supervise(
                    Arc::clone(self),
                    ordinal,
                    name.clone(),
                    Arc::clone(&state.launch),
                    stop_rx,
                );
                let task = runtime.spawn(supervisor.instrument(span));
                info!(key = %self.key, replica = %name, "starting replica");
                state.replicas.insert(
                    ordinal,
                    Replica {
                        name,
                        stop,
                        stopping: false,
                        process: None,
                        task: Some(task),
                    },
                );
            }
        } else {
            for ordinal in active.iter().rev().take(active.len() - wanted) {
                if let Some(replica) = state.replicas.get_mut(ordinal) {
                    info!(key = %self.key, replica = %replica.name, "stopping replica");
                    replica.stopping = true;
                    replica.stop.send_replace(true);
                }
            }
        }
        self.publish(&state);
        Ok(())
    }

    /// Stops every replica (with SIGKILL right away if `kill`) and returns
    /// their supervisors.
    fn shutdown(&self, kill: bool) -> Vec<JoinHandle<()>> {
        let mut state = lock(&self.state);
        state.closed = true;
        state.desired = 0;
        let mut tasks = Vec::new();
        for replica in state.replicas.values_mut() {
            replica.stopping = true;
            replica.stop.send_replace(true);
            if kill && let Some(process) = &replica.process {
                signal_group(process.pid, Signal::SIGKILL);
            }
            tasks.extend(replica.task.take());
        }
        self.publish(&state);
        tasks
    }

    /// Publishes the status `state` describes, if it changed.
    fn publish(&self, state: &State) {
        let mut ready = Vec::new();
        let mut actual = 0;
        for replica in state.replicas.values() {
            if let Some(process) = &replica.process {
                actual += 1;
                if process.ready_since.is_some() && !replica.stopping {
                    ready.push(Endpoint {
                        replica: replica.name.clone(),
                        address: process.address,
                    });
                }
            }
        }
        let status = WorkloadStatus {
            desired: state.desired,
            actual,
            ready,
            failure: state.failure.clone(),
        };
        self.status.send_if_modified(|current| {
            if *current == status {
                false
            } else {
                *current = status;
                true
            }
        });
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        let mut state = lock(&self.state);
        change(&mut state);
        self.publish(&state);
    }

    fn process_started(&self, ordinal: u64, pid: u32, address: SocketAddr) {
        self.update(|state| {
            if let Some(replica) = state.replicas.get_mut(&ordinal) {
                replica.process = Some(Process {
                    pid,
                    address,
                    ready_since: None,
                });
            }
        });
    }

    /// Forgets the replica's process; returns how long it had been ready.
    fn process_exited(&self, ordinal: u64) -> Option<Duration> {
        let mut ready_for = None;
        self.update(|state| {
            if let Some(replica) = state.replicas.get_mut(&ordinal) {
                ready_for = replica
                    .process
                    .take()
                    .and_then(|process| process.ready_since)
                    .map(|since| since.elapsed());
            }
        });
        ready_for
    }

    fn set_ready(&self, ordinal: u64, ready: bool) {
        self.update(|state| {
            let Some(process) = state
                .replicas
                .get_mut(&ordinal)
                .and_then(|replica| replica.process.as_mut())
            else {
                return;
            };
            if ready {
                process.ready_since.get_or_insert_with(Instant::now);
                state.failure = None;
            } else {
                process.ready_since = None;
            }
        });
    }

    fn set_failure(&self, failure: WorkloadFailure) {
        self.update(|state| state.failure = Some(failure));
    }

    fn replica_finished(&self, ordinal: u64) {
        self.update(|state| {
            state.replicas.remove(&ordinal);
        });
        lock(&self.logs).retire(ordinal);
    }
}

/// How a replica's process runs, checked once by `ensure`.
#[derive(Debug)]
struct Launch {
    container_name: String,
    /// The program and arguments; `true` when the argument came from the
    /// container spec, so `$(VAR)` references in it are expanded.
    argv: Vec<(String, bool)>,
    image_env: Vec<(String, String)>,
    /// The container's `env`, already expanded.
    container_env: Vec<(String, String)>,
    /// `K_REVISION` and friends.
    knative_env: Vec<(String, String)>,
    working_dir: Option<PathBuf>,
    probe: ProbePlan,
    grace: Duration,
}

impl Launch {
    fn prepare(spec: &WorkloadSpec, config: &LocalConfig) -> Result<Launch, BackendError> {
        let unsupported = |message: String| BackendError::Unsupported {
            key: spec.key.clone(),
            message,
        };
        let container = spec.containers.get(spec.serving_container).ok_or_else(|| {
            unsupported(format!(
                "serving container index {} is out of range: the revision has {} container(s)",
                spec.serving_container,
                spec.containers.len()
            ))
        })?;
        for (index, other) in spec.containers.iter().enumerate() {
            if index != spec.serving_container {
                warn!(key = %spec.key, container = %other.name, "only the serving container runs locally: ignoring this one");
            }
        }
        let container_name = if container.name.is_empty() {
            DEFAULT_CONTAINER_NAME.to_owned()
        } else {
            container.name.clone()
        };

        let command = container.command.as_deref().filter(|c| !c.is_empty());
        let registered = container
            .image
            .as_deref()
            .and_then(|image| config.images.get(image))
            .filter(|local| !local.command.is_empty());
        let (argv, image_env, image_dir) = match (command, registered) {
            (Some(command), _) => {
                let mut argv: Vec<(String, bool)> =
                    command.iter().map(|a| (a.clone(), true)).collect();
                argv.extend(container.args.iter().flatten().map(|a| (a.clone(), true)));
                (argv, Vec::new(), None)
            }
            (None, Some(local)) => {
                let mut argv: Vec<(String, bool)> =
                    local.command.iter().map(|a| (a.clone(), false)).collect();
                if let Some(args) = &container.args {
                    argv.truncate(1);
                    argv.extend(args.iter().map(|a| (a.clone(), true)));
                }
                (argv, local.env.clone(), local.working_dir.clone())
            }
            (None, None) => {
                let image = container.image.as_deref().unwrap_or("");
                return Err(unsupported(format!(
                    "container {container_name:?} has image {image:?} and no command, and images \
                     are not pulled locally: give the container a `command` or register the \
                     image in `LocalConfig::images`"
                )));
            }
        };

        if container.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
            return Err(unsupported(format!(
                "container {container_name:?} uses envFrom, which the local backend cannot \
                 resolve: list the variables in `env` with literal values"
            )));
        }
        let mut container_env: Vec<(String, String)> = Vec::new();
        for var in container.env.iter().flatten() {
            if var.value_from.is_some() {
                return Err(unsupported(format!(
                    "environment variable {:?} of container {container_name:?} uses valueFrom, \
                     which the local backend cannot resolve: give it a literal `value`",
                    var.name
                )));
            }
            let value = expand(var.value.as_deref().unwrap_or(""), |name| {
                lookup(&container_env, name)
            });
            container_env.push((var.name.clone(), value));
        }

        let mut knative_env = vec![("K_REVISION".to_owned(), spec.key.revision.clone())];
        if let Some(configuration) = spec.labels.get(CONFIGURATION_LABEL) {
            knative_env.push(("K_CONFIGURATION".to_owned(), configuration.clone()));
        }
        if let Some(service) = spec.labels.get(SERVICE_LABEL) {
            knative_env.push(("K_SERVICE".to_owned(), service.clone()));
        }

        let probe = ProbePlan::prepare(
            container.readiness_probe.as_ref(),
            container,
            spec.container_port,
            config,
        )
        .map_err(|message| unsupported(format!("container {container_name:?}: {message}")))?;

        Ok(Launch {
            container_name,
            argv,
            image_env,
            container_env,
            knative_env,
            working_dir: container
                .working_dir
                .as_ref()
                .map(PathBuf::from)
                .or(image_dir),
            probe,
            grace: spec.termination_grace_period,
        })
    }

    /// The variables a process started with `port` gets on top of this
    /// process's environment, in order (later ones win).
    fn env(&self, port: u16) -> Vec<(String, String)> {
        let mut env = self.image_env.clone();
        env.extend(self.container_env.iter().cloned());
        env.push(("PORT".to_owned(), port.to_string()));
        env.extend(self.knative_env.iter().cloned());
        env
    }

    /// The program and its arguments for a process started with `port`.
    fn argv(&self, port: u16) -> Vec<String> {
        let mut vars = self.container_env.clone();
        vars.push(("PORT".to_owned(), port.to_string()));
        vars.extend(self.knative_env.iter().cloned());
        self.argv
            .iter()
            .map(|(arg, from_spec)| {
                if *from_spec {
                    expand(arg, |name| lookup(&vars, name))
                } else {
                    arg.clone()
                }
            })
            .collect()
    }
}

/// The value of the last `name` in `vars`.
fn lookup<'a>(vars: &'a [(String, String)], name: &str) -> Option<&'a str> {
    vars.iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Expands `$(NAME)` references as Kubernetes does: `$$` is a literal `$`,
/// references to unknown names stay as written.
fn expand<'a>(input: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('(') {
            match tail.find(')') {
                Some(end) => {
                    let name = &tail[..end];
                    match lookup(name) {
                        Some(value) => out.push_str(value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &tail[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = tail;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A readiness probe, checked.
#[derive(Debug)]
struct ProbePlan {
    action: ProbeAction,
    initial_delay: Duration,
    period: Duration,
    /// The period until the replica is first ready: [`STARTUP_PROBE_PERIOD`]
    /// for Knative's aggressive probes (no `periodSeconds`), else `period`.
    startup_period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
}

#[derive(Debug)]
enum ProbeAction {
    Http {
        port: ProbePort,
        uri: Uri,
        headers: HeaderMap,
    },
    Tcp {
        port: ProbePort,
    },
    Exec {
        command: Vec<String>,
    },
}

#[derive(Clone, Copy, Debug)]
enum ProbePort {
    /// The replica's `PORT`.
    Replica,
    Fixed(u16),
}

impl ProbePlan {
    fn prepare(
        probe: Option<&Probe>,
        container: &Container,
        container_port: u16,
        config: &LocalConfig,
    ) -> Result<ProbePlan, String> {
        let seconds = |value: Option<i32>| {
            Duration::from_secs(u64::try_from(value.unwrap_or(0)).unwrap_or(0))
        };
        let threshold = |value: Option<i32>, default: u32| {
            value
                .and_then(|v| u32::try_from(v).ok())
                .filter(|v| *v > 0)
                .unwrap_or(default)
        };
        let Some(probe) = probe else {
            return Ok(ProbePlan {
                action: ProbeAction::Tcp {
                    port: ProbePort::Replica,
                },
                initial_delay: Duration::ZERO,
                period: config.probe_period,
                startup_period: config.probe_period.min(STARTUP_PROBE_PERIOD),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3,
            });
        };
        let port = |port: &IntOrString| -> Result<ProbePort, String> {
            let number = match port {
                IntOrString::Int(number) => *number,
                IntOrString::String(name) => container
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .map(|p| p.container_port)
                    .ok_or_else(|| {
                        format!(
                            "readinessProbe names port {name:?}, which the container does not have"
                        )
                    })?,
            };
            if number == 0 || number == i32::from(container_port) {
                return Ok(ProbePort::Replica);
            }
            u16::try_from(number)
                .map(ProbePort::Fixed)
                .map_err(|_| format!("readinessProbe port {number} is out of range"))
        };
        if probe.grpc.is_some() {
            return Err("grpc readiness probes are not supported locally".into());
        }
        let handlers = usize::from(probe.http_get.is_some())
            + usize::from(probe.tcp_socket.is_some())
            + usize::from(probe.exec.is_some());
        if handlers > 1 {
            return Err("readinessProbe must have exactly one handler".into());
        }
        let action = if let Some(http) = &probe.http_get {
            if let Some(scheme) = &http.scheme
                && !scheme.eq_ignore_ascii_case("HTTP")
            {
                return Err(format!(
                    "readinessProbe.httpGet.scheme {scheme} is not supported locally (only HTTP)"
                ));
            }
            let path = http.path.as_deref().unwrap_or("/");
            let path = if path.starts_with('/') {
                path.to_owned()
            } else {
                format!("/{path}")
            };
            let uri: Uri = path
                .parse()
                .map_err(|error| format!("readinessProbe.httpGet.path {path:?}: {error}"))?;
            let mut headers = HeaderMap::new();
            headers.insert(USER_AGENT, HeaderValue::from_static("kube-probe/1.33"));
            headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
            let mut seen = Vec::new();
            for header in http.http_headers.iter().flatten() {
                let name = HeaderName::from_bytes(header.name.as_bytes()).map_err(|error| {
                    format!("readinessProbe header name {:?}: {error}", header.name)
                })?;
                let value = HeaderValue::from_str(&header.value).map_err(|error| {
                    format!("readinessProbe header {:?} value: {error}", header.name)
                })?;
                if seen.contains(&name) {
                    headers.append(name, value);
                } else {
                    headers.insert(name.clone(), value);
                    seen.push(name);
                }
            }
            ProbeAction::Http {
                port: port(&http.port)?,
                uri,
                headers,
            }
        } else if let Some(tcp) = &probe.tcp_socket {
            ProbeAction::Tcp {
                port: port(&tcp.port)?,
            }
        } else if let Some(exec) = &probe.exec {
            let command = exec.command.clone().unwrap_or_default();
            if command.is_empty() {
                return Err("readinessProbe.exec.command is empty".into());
            }
            ProbeAction::Exec { command }
        } else {
            ProbeAction::Tcp {
                port: ProbePort::Replica,
            }
        };
        let period = seconds(probe.period_seconds);
        Ok(ProbePlan {
            action,
            initial_delay: seconds(probe.initial_delay_seconds),
            period: if period.is_zero() {
                config.probe_period
            } else {
                period
            },
            startup_period: if period.is_zero() {
                config.probe_period.min(STARTUP_PROBE_PERIOD)
            } else {
                period
            },
            timeout: match seconds(probe.timeout_seconds) {
                timeout if timeout.is_zero() => Duration::from_secs(1),
                timeout => timeout,
            },
            success_threshold: threshold(probe.success_threshold, 1),
            failure_threshold: threshold(probe.failure_threshold, 3),
        })
    }
}

/// The restart back-off after `crashes` crashes in a row.
fn backoff(base: Duration, max: Duration, crashes: u32) -> Duration {
    let shift = crashes.saturating_sub(1).min(31);
    base.saturating_mul(1u32 << shift).min(max)
}

/// How one process run ended.
enum RunEnd {
    /// Asked to stop.
    Stopped,
    /// Crashed or did not start.
    Failed(WorkloadFailure, Option<Duration>),
}

/// Keeps one replica's process running until it is asked to stop.
async fn supervise(
    workload: Arc<Workload>,
    ordinal: u64,
    name: String,
    launch: Arc<Launch>,
    mut stop: watch::Receiver<bool>,
) {
    let config = Arc::clone(&workload.config);
    let mut crashes: u32 = 0;
    while !*stop.borrow() {
        match run_process(&workload, ordinal, &name, &launch, &mut stop).await {
            RunEnd::Stopped => break,
            RunEnd::Failed(failure, ready_for) => {
                if ready_for.is_some_and(|ready_for| ready_for >= BACKOFF_RESET_AFTER) {
                    crashes = 0;
                }
                crashes = crashes.saturating_add(1);
                let delay = backoff(
                    config.restart_backoff_base,
                    config.restart_backoff_max,
                    crashes,
                );
                warn!(reason = %failure.reason, message = %failure.message, ?delay, "replica failed, restarting after back-off");
                workload.set_failure(failure);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = stop.wait_for(|stop| *stop) => break,
                }
            }
        }
    }
    workload.replica_finished(ordinal);
    info!("replica stopped");
}

/// Starts the replica's process and follows it until it exits or the
/// replica is asked to stop.
async fn run_process(
    workload: &Arc<Workload>,
    ordinal: u64,
    name: &str,
    launch: &Launch,
    stop: &mut watch::Receiver<bool>,
) -> RunEnd {
    let config = &workload.config;
    let port = match free_port(config.bind_host) {
        Ok(port) => port,
        Err(error) => {
            let failure = WorkloadFailure {
                reason: "PortUnavailable".into(),
                message: format!("no free port on {}: {error}", config.bind_host),
                container: false,
            };
            return RunEnd::Failed(failure, None);
        }
    };
    let address = SocketAddr::new(config.bind_host, port);
    let env = launch.env(port);
    let argv = launch.argv(port);
    let Some((program, args)) = argv.split_first() else {
        // `Launch::prepare` never builds an empty command line.
        return RunEnd::Failed(start_error(launch, "", "empty command line"), None);
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &launch.working_dir {
        command.current_dir(dir);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            return RunEnd::Failed(start_error(launch, program, &error.to_string()), None);
        }
    };
    let Some(pid) = child.id() else {
        return RunEnd::Failed(start_error(launch, program, "the process vanished"), None);
    };
    let mut group = GroupGuard(Some(pid));
    info!(pid, %address, "process started");
    workload.process_started(ordinal, pid, address);

    let mut readers = Vec::new();
    let replica: Arc<str> = Arc::from(name);
    if let Some(stdout) = child.stdout.take() {
        readers.push(tokio::spawn(
            read_output(
                stdout,
                Arc::clone(workload),
                ordinal,
                Arc::clone(&replica),
                Stream::Stdout,
            )
            .in_current_span(),
        ));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.push(tokio::spawn(
            read_output(
                stderr,
                Arc::clone(workload),
                ordinal,
                Arc::clone(&replica),
                Stream::Stderr,
            )
            .in_current_span(),
        ));
    }

    let mut probe = Box::pin(probe_loop(workload, ordinal, launch, address, env));
    let exited = tokio::select! {
        status = child.wait() => Some(status),
        _ = stop.wait_for(|stop| *stop) => None,
        never = &mut probe => match never {},
    };
    drop(probe);

    let exited = match exited {
        Some(status) if !*stop.borrow() => status,
        stopped => {
            let status = match stopped {
                Some(status) => status,
                None => terminate(&mut child, pid, launch.grace).await,
            };
            signal_group(pid, Signal::SIGKILL);
            group.disarm();
            drain(readers).await;
            workload.process_exited(ordinal);
            info!(status = %describe(&status), "process stopped");
            return RunEnd::Stopped;
        }
    };
    // The process is gone: so is whatever it left in its group.
    signal_group(pid, Signal::SIGKILL);
    group.disarm();
    drain(readers).await;
    let ready_for = workload.process_exited(ordinal);
    let last_lines = lock(&workload.logs).last_lines(ordinal, FAILURE_LOG_LINES);
    let (reason, mut message) = match &exited {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => (
                format!("ExitCode{code}"),
                format!(
                    "Container {} exited with code {code}",
                    launch.container_name
                ),
            ),
            (None, Some(signal)) => (
                format!("Signal{signal}"),
                format!(
                    "Container {} was terminated by signal {signal}",
                    launch.container_name
                ),
            ),
            (None, None) => (
                "Error".to_owned(),
                format!("Container {} exited: {status}", launch.container_name),
            ),
        },
        Err(error) => (
            "Error".to_owned(),
            format!(
                "Container {}: waiting for the process failed: {error}",
                launch.container_name
            ),
        ),
    };
    if !last_lines.is_empty() {
        message.push_str("; last log lines:\n");
        message.push_str(&last_lines.join("\n"));
    }
    let failure = WorkloadFailure {
        reason,
        message,
        container: true,
    };
    RunEnd::Failed(failure, ready_for)
}

fn start_error(launch: &Launch, program: &str, error: &str) -> WorkloadFailure {
    WorkloadFailure {
        reason: "StartError".into(),
        message: format!(
            "Container {} could not start: running {program:?}: {error}",
            launch.container_name
        ),
        container: true,
    }
}

fn describe(status: &std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(error) => error.to_string(),
    }
}

/// SIGTERM to the process group, SIGKILL after `grace`; waits for the
/// process to exit.
async fn terminate(
    child: &mut tokio::process::Child,
    pid: u32,
    grace: Duration,
) -> std::io::Result<ExitStatus> {
    signal_group(pid, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            info!(?grace, "grace period over: SIGKILL");
            signal_group(pid, Signal::SIGKILL);
            child.wait().await
        }
    }
}

/// Waits a little for the output readers to reach the end of the output,
/// then gives up on them (a process outside the group may hold the pipe).
async fn drain(readers: Vec<JoinHandle<()>>) {
    let deadline = tokio::time::Instant::now() + OUTPUT_DRAIN_TIMEOUT;
    for mut reader in readers {
        if tokio::time::timeout_at(deadline, &mut reader)
            .await
            .is_err()
        {
            reader.abort();
        }
    }
}

/// Sends `signal` to process group `pgid`; errors (the group is gone) are
/// ignored.
fn signal_group(pgid: u32, signal: Signal) {
    match i32::try_from(pgid) {
        // Never 0 or 1: that would be our own group or init's.
        Ok(pgid) if pgid > 1 => {
            let _ = killpg(Pid::from_raw(pgid), signal);
        }
        _ => {}
    }
}

/// Kills a process group when dropped while armed (the supervising future
/// was dropped).
struct GroupGuard(Option<u32>);

impl GroupGuard {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            signal_group(pgid, Signal::SIGKILL);
        }
    }
}

/// A free TCP port on `host`.
fn free_port(host: IpAddr) -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind((host, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Probes the process forever, telling the workload when it becomes ready
/// or not ready.
async fn probe_loop(
    workload: &Workload,
    ordinal: u64,
    launch: &Launch,
    address: SocketAddr,
    env: Vec<(String, String)>,
) -> Infallible {
    let plan = &launch.probe;
    tokio::time::sleep(plan.initial_delay).await;
    let (mut successes, mut failures, mut ready) = (0u32, 0u32, false);
    let mut ever_ready = false;
    loop {
        let result = match tokio::time::timeout(
            plan.timeout,
            probe_once(&plan.action, address, launch, &env),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(format!("probe timed out after {:?}", plan.timeout)),
        };
        match result {
            Ok(()) => {
                failures = 0;
                successes = successes.saturating_add(1);
                if !ready && successes >= plan.success_threshold {
                    ready = true;
                    info!("ready");
                    workload.set_ready(ordinal, true);
                }
            }
            Err(error) => {
                successes = 0;
                failures = failures.saturating_add(1);
                debug!(%error, "readiness probe failed");
                if ready && failures >= plan.failure_threshold {
                    ready = false;
                    warn!(%error, "not ready");
                    workload.set_ready(ordinal, false);
                }
            }
        }
        let wait = if ready || ever_ready {
            plan.period
        } else {
            plan.startup_period
        };
        ever_ready |= ready;
        tokio::time::sleep(wait).await;
    }
}

async fn probe_once(
    action: &ProbeAction,
    address: SocketAddr,
    launch: &Launch,
    env: &[(String, String)],
) -> Result<(), String> {
    let target = |port: &ProbePort| match port {
        ProbePort::Replica => address,
        ProbePort::Fixed(port) => SocketAddr::new(address.ip(), *port),
    };
    match action {
        ProbeAction::Tcp { port } => {
            let target = target(port);
            TcpStream::connect(target)
                .await
                .map(drop)
                .map_err(|error| format!("connecting to {target}: {error}"))
        }
        ProbeAction::Http { port, uri, headers } => {
            http_get(target(port), uri.clone(), headers.clone()).await
        }
        ProbeAction::Exec { command } => {
            let Some((program, args)) = command.split_first() else {
                return Err("empty command".into());
            };
            let mut process = tokio::process::Command::new(program);
            process
                .args(args)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .kill_on_drop(true);
            if let Some(dir) = &launch.working_dir {
                process.current_dir(dir);
            }
            let mut child = process
                .spawn()
                .map_err(|error| format!("running {program:?}: {error}"))?;
            let _group = GroupGuard(child.id());
            let status = child
                .wait()
                .await
                .map_err(|error| format!("waiting for {program:?}: {error}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("{program:?} {status}"))
            }
        }
    }
}

async fn http_get(address: SocketAddr, uri: Uri, mut headers: HeaderMap) -> Result<(), String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|error| format!("connecting to {address}: {error}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|error| error.to_string())?;
    if !headers.contains_key(HOST) {
        let host = HeaderValue::from_str(&address.to_string()).map_err(|e| e.to_string())?;
        headers.insert(HOST, host);
    }
    let mut request = Request::get(uri)
        .body(Empty::new())
        .map_err(|error| error.to_string())?;
    *request.headers_mut() = headers;
    let mut connection = std::pin::pin!(connection);
    let response = tokio::select! {
        response = sender.send_request(request) => response.map_err(|error| error.to_string())?,
        result = &mut connection => {
            return Err(match result {
                Ok(()) => "connection closed".into(),
                Err(error) => error.to_string(),
            });
        }
    };
    let status = response.status().as_u16();
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with status code {status}"))
    }
}

/// Reads a process's output line by line into the workload's log store.
async fn read_output(
    output: impl AsyncRead + Unpin,
    workload: Arc<Workload>,
    ordinal: u64,
    replica: Arc<str>,
    stream: Stream,
) {
    let mut reader = BufReader::new(output);
    let mut line = Vec::new();
    let emit = |line: &mut Vec<u8>| {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let text = String::from_utf8_lossy(line).into_owned();
        line.clear();
        tracing::trace!(?stream, "{text}");
        lock(&workload.logs).push(ordinal, &replica, stream, text);
    };
    loop {
        let buffer = match reader.fill_buf().await {
            Ok(buffer) => buffer,
            Err(error) => {
                debug!(?stream, %error, "reading output failed");
                break;
            }
        };
        if buffer.is_empty() {
            break;
        }
        match buffer.iter().position(|byte| *byte == b'\n') {
            Some(end) => {
                line.extend_from_slice(&buffer[..end]);
                reader.consume(end + 1);
                emit(&mut line);
            }
            None => {
                let read = buffer.len();
                line.extend_from_slice(buffer);
                reader.consume(read);
                if line.len() >= MAX_LINE_BYTES {
                    emit(&mut line);
                }
            }
        }
    }
    if !line.is_empty() {
        emit(&mut line);
    }
}

/// The kept output of a workload's replicas.
struct LogStore {
    capacity: usize,
    next_seq: u64,
    rings: BTreeMap<u64, Ring>,
    /// Stopped replicas whose rings are kept, oldest first.
    retired: VecDeque<u64>,
}

struct Ring {
    replica: Arc<str>,
    lines: VecDeque<(u64, Stream, String)>,
}

impl LogStore {
    fn new(capacity: usize) -> LogStore {
        LogStore {
            capacity,
            next_seq: 0,
            rings: BTreeMap::new(),
            retired: VecDeque::new(),
        }
    }

    fn push(&mut self, ordinal: u64, replica: &Arc<str>, stream: Stream, line: String) {
        if self.capacity == 0 {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let ring = self.rings.entry(ordinal).or_insert_with(|| Ring {
            replica: Arc::clone(replica),
            lines: VecDeque::new(),
        });
        while ring.lines.len() >= self.capacity {
            ring.lines.pop_front();
        }
        ring.lines.push_back((seq, stream, line));
    }

    fn last_lines(&self, ordinal: u64, count: usize) -> Vec<String> {
        let Some(ring) = self.rings.get(&ordinal) else {
            return Vec::new();
        };
        let skip = ring.lines.len().saturating_sub(count);
        ring.lines
            .iter()
            .skip(skip)
            .map(|(_, _, line)| line.clone())
            .collect()
    }

    fn retire(&mut self, ordinal: u64) {
        if !self.rings.contains_key(&ordinal) {
            return;
        }
        self.retired.push_back(ordinal);
        while self.retired.len() > RETAINED_STOPPED_LOGS {
            if let Some(oldest) = self.retired.pop_front() {
                self.rings.remove(&oldest);
            }
        }
    }

    fn all(&self) -> Vec<LogLine> {
        let mut lines: Vec<(u64, LogLine)> = self
            .rings
            .values()
            .flat_map(|ring| {
                ring.lines.iter().map(|(seq, stream, line)| {
                    (
                        *seq,
                        LogLine {
                            replica: ring.replica.to_string(),
                            stream: *stream,
                            line: line.clone(),
                        },
                    )
                })
            })
            .collect();
        lines.sort_by_key(|(seq, _)| *seq);
        lines.into_iter().map(|(_, line)| line).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, HTTPGetAction, PodSpec};

    fn spec(container: Container) -> WorkloadSpec {
        WorkloadSpec {
            key: WorkloadKey::new("default", "hello-00001"),
            containers: vec![container],
            pod: PodSpec::default(),
            serving_container: 0,
            container_port: 8080,
            labels: BTreeMap::from([(SERVICE_LABEL.to_owned(), "hello".to_owned())]),
            annotations: BTreeMap::new(),
            termination_grace_period: Duration::from_secs(1),
            container_concurrency: 0,
            response_start_timeout: None,
            idle_timeout: None,
            owner: None,
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let vars = vec![("A".to_owned(), "1".to_owned())];
        let expand = |s: &str| expand(s, |name| lookup(&vars, name));
        assert_eq!(expand("x$(A)y"), "x1y");
        assert_eq!(expand("$$(A)"), "$(A)");
        assert_eq!(expand("$(B)"), "$(B)");
        assert_eq!(expand("$(A"), "$(A");
        assert_eq!(expand("a$b$"), "a$b$");
        assert_eq!(expand("$$$(A)"), "$1");
    }

    #[test]
    fn command_replaces_entrypoint_and_args_replace_defaults() {
        let mut config = LocalConfig::default();
        config.images.insert(
            "img".into(),
            LocalCommand {
                command: strings(&["prog", "--default"]),
                env: vec![("FROM_IMAGE".into(), "1".into())],
                working_dir: Some("/tmp".into()),
            },
        );
        let container = |command: Option<&[&str]>, args: Option<&[&str]>| Container {
            name: "user-container".into(),
            image: Some("img".into()),
            command: command.map(strings),
            args: args.map(strings),
            ..Default::default()
        };
        let argv = |c: Container| {
            Launch::prepare(&spec(c), &config)
                .map(|launch| launch.argv(1234))
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            argv(container(None, None)),
            Ok(strings(&["prog", "--default"]))
        );
        assert_eq!(
            argv(container(None, Some(&["--port=$(PORT)"]))),
            Ok(strings(&["prog", "--port=1234"]))
        );
        assert_eq!(
            argv(container(Some(&["other", "$(K_SERVICE)"]), None)),
            Ok(strings(&["other", "hello"]))
        );
        assert_eq!(
            argv(container(Some(&["other"]), Some(&["a"]))),
            Ok(strings(&["other", "a"]))
        );
    }

    #[test]
    fn env_has_knative_variables_after_the_containers() -> Result<(), BackendError> {
        let container = Container {
            name: "c".into(),
            command: Some(strings(&["prog"])),
            env: Some(vec![
                EnvVar {
                    name: "A".into(),
                    value: Some("a".into()),
                    ..Default::default()
                },
                EnvVar {
                    name: "B".into(),
                    value: Some("$(A)-$(PORT)".into()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let launch = Launch::prepare(&spec(container), &LocalConfig::default())?;
        let env = launch.env(9);
        let get = |name: &str| lookup(&env, name).map(str::to_owned);
        assert_eq!(get("B").as_deref(), Some("a-$(PORT)"));
        assert_eq!(get("PORT").as_deref(), Some("9"));
        assert_eq!(get("K_REVISION").as_deref(), Some("hello-00001"));
        assert_eq!(get("K_SERVICE").as_deref(), Some("hello"));
        assert_eq!(get("K_CONFIGURATION"), None);
        Ok(())
    }

    #[test]
    fn unsupported_specs_say_why() {
        let config = LocalConfig::default();
        let message = |c: Container| match Launch::prepare(&spec(c), &config) {
            Err(BackendError::Unsupported { message, .. }) => message,
            other => format!("unexpected: {other:?}"),
        };
        let no_command = message(Container {
            name: "c".into(),
            image: Some("gcr.io/x/y".into()),
            ..Default::default()
        });
        assert!(no_command.contains("\"gcr.io/x/y\""), "{no_command}");
        assert!(no_command.contains("not pulled locally"), "{no_command}");
        let value_from = message(Container {
            name: "c".into(),
            command: Some(strings(&["prog"])),
            env: Some(vec![EnvVar {
                name: "SECRET".into(),
                value_from: Some(EnvVarSource::default()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert!(value_from.contains("\"SECRET\""), "{value_from}");
        let https = message(Container {
            name: "c".into(),
            command: Some(strings(&["prog"])),
            readiness_probe: Some(Probe {
                http_get: Some(HTTPGetAction {
                    scheme: Some("HTTPS".into()),
                    port: IntOrString::Int(8080),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(https.contains("HTTPS"), "{https}");
    }

    #[test]
    fn probe_defaults_and_ports() -> Result<(), String> {
        let config = LocalConfig::default();
        let container = Container::default();
        let probe = Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::Int(8080),
                path: Some("healthz".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let plan = ProbePlan::prepare(Some(&probe), &container, 8080, &config)?;
        assert_eq!(plan.period, config.probe_period);
        assert_eq!(plan.timeout, Duration::from_secs(1));
        assert_eq!((plan.success_threshold, plan.failure_threshold), (1, 3));
        match plan.action {
            ProbeAction::Http { port, uri, .. } => {
                assert!(matches!(port, ProbePort::Replica));
                assert_eq!(uri.path(), "/healthz");
            }
            other => return Err(format!("unexpected {other:?}")),
        }
        let probe = Probe {
            tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
                port: IntOrString::Int(9090),
                ..Default::default()
            }),
            period_seconds: Some(2),
            ..Default::default()
        };
        let plan = ProbePlan::prepare(Some(&probe), &container, 8080, &config)?;
        assert_eq!(plan.period, Duration::from_secs(2));
        assert!(matches!(
            plan.action,
            ProbeAction::Tcp {
                port: ProbePort::Fixed(9090)
            }
        ));
        Ok(())
    }

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let base = Duration::from_millis(100);
        let max = Duration::from_millis(1000);
        let delays: Vec<u128> = (1..=6).map(|n| backoff(base, max, n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff(base, max, u32::MAX), max);
    }

    #[test]
    fn log_store_is_bounded_per_replica_and_ordered() {
        let mut store = LogStore::new(2);
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("r-1"), Arc::from("r-2"));
        store.push(1, &a, Stream::Stdout, "a1".into());
        store.push(2, &b, Stream::Stderr, "b1".into());
        store.push(1, &a, Stream::Stdout, "a2".into());
        store.push(1, &a, Stream::Stdout, "a3".into());
        let lines: Vec<String> = store
            .all()
            .into_iter()
            .map(|l| format!("{}:{}", l.replica, l.line))
            .collect();
        assert_eq!(lines, ["r-2:b1", "r-1:a2", "r-1:a3"]);
        assert_eq!(store.last_lines(1, 5), ["a2", "a3"]);
        for ordinal in 3..(3 + RETAINED_STOPPED_LOGS as u64 + 1) {
            store.push(ordinal, &a, Stream::Stdout, "x".into());
            store.retire(ordinal);
        }
        assert!(!store.rings.contains_key(&3));
        assert!(store.rings.contains_key(&4));
    }
}
