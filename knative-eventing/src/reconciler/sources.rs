//! The reconcilers of `sources.knative.dev` (`specs/EVENTING.md §6`).
//!
//! - [`PingSourceReconciler`] resolves the sink (`SinkProvided`, reason
//!   `NotFound` when it does not resolve) and has the [`PingScheduler`] run
//!   the schedule (`Deployed`; reason `InvalidSchedule` for a schedule
//!   that does not parse). The scheduler keeps one task per PingSource
//!   that sleeps until [`Schedule::next_after`] and sends
//!   [`ping_event`] to the sink with a [`Sender`], logging failures;
//!   changing the source restarts its task and deleting it stops it. The
//!   status has `sinkUri` and `ceAttributes`
//!   (`dev.knative.sources.ping`, `/apis/v1/namespaces/{ns}/pingsources/{name}`).
//! - [`SinkBindingReconciler`] resolves the sink and has a
//!   [`BindingTarget`] (implemented by the platform) set the adapter
//!   environment of [`ping::sink_env`] (`K_SINK`, `K_CE_OVERRIDES`) on the
//!   subject; `Ready` turns `False` (reason `SubjectUnavailable`) when that
//!   fails. Its finalizer takes the variables out again.
//! - [`ContainerSourceReconciler`] resolves the sink, injects the same
//!   environment into every container of `spec.template`
//!   ([`inject_sink_env`], as upstream's SinkBinding does) and has a
//!   [`ContainerRunner`] (implemented by the platform) run it
//!   (`SinkBindingReady`, `ReceiveAdapterReady`). Its finalizer removes the
//!   workload. Its `ceAttributes` stay empty, as upstream's: the source
//!   does not know what its container emits.
//!
//! ApiServerSource needs a Kubernetes API to watch and is not reconciled
//! here. [`super::testing`] has recording implementations of the two
//! traits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{EnvVar, PodTemplateSpec};
use knative_core::condition::READY;
use knative_core::runtime::{Action, Controller, Reconciler};
use knative_core::store::{ApiObject, ObjectKey, Objects};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{Instrument, debug, info_span, warn};

use super::{
    AddressResolver, RECHECK, ReconcileError, has_finalizer, namespace_and_name,
    resolve_destination, set_finalizer, write_status,
};
use crate::api::{
    BindingSubject, CloudEventAttributes, ContainerSource, PingSource, PingSourceSpec, RetryPolicy,
    SinkBinding,
};
use crate::delivery::{Outcome, Sender, Target};
use crate::ping::{self, ENV_CE_OVERRIDES, ENV_SINK, Schedule, ScheduleError, ping_event};

/// The finalizer of PingSources.
pub const PING_SOURCE_FINALIZER: &str = "pingsources.sources.knative.dev";
/// The finalizer of SinkBindings.
pub const SINK_BINDING_FINALIZER: &str = "sinkbindings.sources.knative.dev";
/// The finalizer of ContainerSources.
pub const CONTAINER_SOURCE_FINALIZER: &str = "containersources.sources.knative.dev";

/// `K_CA_CERTS`: the sink's CA certificates (PEM), set when the sink
/// `Destination` has `CACerts` (spec §6), removed with the others.
pub const ENV_CA_CERTS: &str = "K_CA_CERTS";

/// The sink environment of a source or binding: [`ping::sink_env`], plus
/// `K_CA_CERTS` when the sink `Destination` names CA certificates.
fn sink_env_for(
    sink: &str,
    destination: &crate::api::Destination,
    overrides: Option<&crate::api::sources::CeOverrides>,
) -> Vec<(String, String)> {
    let mut env = ping::sink_env(sink, overrides);
    if let Some(ca) = sink_ca_certs(destination) {
        env.push((ENV_CA_CERTS.to_owned(), ca));
    }
    env
}

/// The CA certificates a sink `Destination` names, if any.
fn sink_ca_certs(destination: &crate::api::Destination) -> Option<String> {
    destination.ca_certs.clone().filter(|c| !c.is_empty())
}
/// The variables a binding owns in its subject's containers.
const BINDING_ENV: [&str; 3] = [ENV_SINK, ENV_CE_OVERRIDES, ENV_CA_CERTS];

// ---------------------------------------------------------------------------
// PingSource
// ---------------------------------------------------------------------------

/// One PingSource's running schedule.
struct Job {
    spec: PingSourceSpec,
    sink: String,
    task: JoinHandle<()>,
}

impl Drop for Job {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct SchedulerInner {
    sender: Sender,
    retry: RetryPolicy,
    jobs: Mutex<HashMap<ObjectKey, Job>>,
}

/// Runs PingSource schedules: one tokio task per source that sends a ping
/// event to the source's sink at every firing. Cheap to clone; the tasks
/// stop when the last clone is dropped. Must be used within a tokio
/// runtime.
#[derive(Clone)]
pub struct PingScheduler {
    inner: Arc<SchedulerInner>,
}

impl std::fmt::Debug for PingScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PingScheduler")
            .field("retry", &self.inner.retry)
            .field("jobs", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl Default for PingScheduler {
    fn default() -> Self {
        PingScheduler::new()
    }
}

impl PingScheduler {
    /// A scheduler making one attempt per ping.
    pub fn new() -> Self {
        PingScheduler::with_retry(RetryPolicy::default())
    }

    /// A scheduler delivering each ping with `retry` (retries, backoff,
    /// per-attempt timeout).
    pub fn with_retry(retry: RetryPolicy) -> Self {
        PingScheduler::with_sender(Sender::new(), retry)
    }

    /// A scheduler delivering with `sender` (e.g. one made by
    /// [`Sender::with_overrides`], to reach cluster-local sinks through a
    /// local ingress) and `retry`.
    pub fn with_sender(sender: Sender, retry: RetryPolicy) -> Self {
        PingScheduler {
            inner: Arc::new(SchedulerInner {
                sender,
                retry,
                jobs: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectKey, Job>> {
        self.inner
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `source`'s schedule, sending to `sink`; a source already
    /// running with the same spec and sink is left alone, one whose spec
    /// or sink changed starts over. Returns whether a task was (re)started.
    pub fn schedule(&self, source: &PingSource, sink: &str) -> Result<bool, ScheduleError> {
        let schedule = source.spec.parsed_schedule()?;
        let key = source.key();
        let mut jobs = self.lock();
        if let Some(job) = jobs.get(&key)
            && job.spec == source.spec
            && job.sink == sink
            && !job.task.is_finished()
        {
            return Ok(false);
        }
        let span = info_span!("ping_source", source = %key, schedule = %schedule.pattern());
        let task = tokio::spawn(
            run_schedule(
                source.clone(),
                schedule,
                Target {
                    url: sink.to_owned(),
                    retry: self.inner.retry,
                    format: None,
                    one_based_backoff: false,
                },
                self.inner.sender.clone(),
            )
            .instrument(span),
        );
        // Replacing a job drops (and so stops) the old one.
        jobs.insert(
            key,
            Job {
                spec: source.spec.clone(),
                sink: sink.to_owned(),
                task,
            },
        );
        Ok(true)
    }

    /// Stops the schedule of PingSource `namespace/name`; whether it ran.
    pub fn unschedule(&self, namespace: &str, name: &str) -> bool {
        let removed = self.lock().remove(&ObjectKey::namespaced(namespace, name));
        removed.is_some()
    }

    /// Whether PingSource `namespace/name` has a schedule running.
    pub fn is_scheduled(&self, namespace: &str, name: &str) -> bool {
        self.lock()
            .get(&ObjectKey::namespaced(namespace, name))
            .is_some_and(|j| !j.task.is_finished())
    }
}

/// Fires `source` at every time of `schedule` until aborted. Deliveries
/// run beside the schedule (a slow sink does not delay the next ping);
/// firings missed while the task could not run are skipped.
async fn run_schedule(source: PingSource, schedule: Schedule, target: Target, sender: Sender) {
    let mut deliveries = JoinSet::new();
    let mut after = Timestamp::now();
    loop {
        let Some(next) = schedule.next_after(after) else {
            debug!("the schedule never fires again");
            break;
        };
        let wait =
            Duration::try_from(next.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO);
        tokio::time::sleep(wait).await;
        while deliveries.try_join_next().is_some() {}
        let event = ping_event(&source, next);
        let (sender, target) = (sender.clone(), target.clone());
        deliveries.spawn(
            async move {
                match sender.deliver(&event, &target).await {
                    Outcome::Delivered { status, .. } => debug!(status, "ping delivered"),
                    Outcome::Failed {
                        status,
                        error,
                        attempts,
                        ..
                    } => warn!(?status, %error, attempts, "ping delivery failed"),
                }
            }
            .in_current_span(),
        );
        after = next.max(Timestamp::now());
    }
    while deliveries.join_next().await.is_some() {}
}

/// Reconciles PingSources into a [`PingScheduler`].
pub struct PingSourceReconciler {
    sources: Arc<dyn Objects<PingSource>>,
    resolver: Arc<dyn AddressResolver>,
    scheduler: PingScheduler,
}

impl std::fmt::Debug for PingSourceReconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PingSourceReconciler")
            .field("scheduler", &self.scheduler)
            .finish_non_exhaustive()
    }
}

impl PingSourceReconciler {
    /// A reconciler running schedules on `scheduler`.
    pub fn new(
        sources: Arc<dyn Objects<PingSource>>,
        resolver: Arc<dyn AddressResolver>,
        scheduler: PingScheduler,
    ) -> Self {
        PingSourceReconciler {
            sources,
            resolver,
            scheduler,
        }
    }

    /// A controller running this reconciler.
    pub fn into_controller(self) -> Controller<PingSource, Self> {
        Controller::new(Arc::clone(&self.sources), Arc::new(self))
    }

    async fn reconcile_source(
        &self,
        source: Arc<PingSource>,
        ns: String,
        name: String,
    ) -> Result<Action, ReconcileError> {
        if source.metadata.deletion_timestamp.is_some() {
            if has_finalizer(&*source, PING_SOURCE_FINALIZER) {
                self.scheduler.unschedule(&ns, &name);
                set_finalizer(&*self.sources, &*source, PING_SOURCE_FINALIZER, false).await?;
                debug!("schedule stopped");
            }
            return Ok(Action::await_change());
        }
        if !has_finalizer(&*source, PING_SOURCE_FINALIZER) {
            set_finalizer(&*self.sources, &*source, PING_SOURCE_FINALIZER, true).await?;
            return Ok(Action::await_change());
        }
        let mut status = source.status.clone().unwrap_or_default();
        let set = PingSource::condition_set();
        let mut m = set.manage(&mut status.status.conditions);
        m.initialize();
        status.status.observed_generation = source.metadata.generation;
        status.ce_attributes = vec![CloudEventAttributes {
            type_: PingSource::EVENT_TYPE.to_owned(),
            source: source.event_source(),
        }];
        let mut requeue = None;
        match resolve_destination(&*self.resolver, &source.spec.source.sink, &ns).await {
            Err(e) => {
                status.sink_uri = None;
                status.sink_ca_certs = None;
                m.mark_false(
                    PingSource::CONDITION_SINK_PROVIDED,
                    "NotFound",
                    &format!("Couldn't get Sink URI: {e}"),
                );
                if self.scheduler.unschedule(&ns, &name) {
                    debug!("schedule stopped: the sink does not resolve");
                }
                m.mark_unknown(
                    PingSource::CONDITION_DEPLOYED,
                    "SinkNotResolved",
                    "The schedule runs once the sink resolves.",
                );
                requeue = Some(RECHECK);
            }
            Ok(sink) => {
                m.mark_true(PingSource::CONDITION_SINK_PROVIDED);
                match self.scheduler.schedule(&source, &sink) {
                    Ok(started) => {
                        if started {
                            debug!(%sink, "schedule started");
                        }
                        m.mark_true(PingSource::CONDITION_DEPLOYED);
                    }
                    Err(e) => {
                        self.scheduler.unschedule(&ns, &name);
                        m.mark_false(
                            PingSource::CONDITION_DEPLOYED,
                            "InvalidSchedule",
                            &e.to_string(),
                        );
                    }
                }
                status.sink_ca_certs = sink_ca_certs(&source.spec.source.sink);
                status.sink_uri = Some(sink);
            }
        }
        drop(m);
        if source.status.as_ref() != Some(&status) {
            let mut updated = (*source).clone();
            updated.status = Some(status);
            if let Some(action) = write_status(&*self.sources, &updated).await? {
                return Ok(action);
            }
        }
        Ok(requeue.map_or_else(Action::await_change, Action::requeue_after))
    }
}

#[async_trait]
impl Reconciler<PingSource> for PingSourceReconciler {
    type Error = ReconcileError;

    async fn reconcile(&self, source: Arc<PingSource>) -> Result<Action, ReconcileError> {
        let (ns, name) = namespace_and_name(&*source);
        let span = info_span!("reconcile_ping_source", namespace = %ns, name = %name);
        self.reconcile_source(source, ns, name)
            .instrument(span)
            .await
    }
}

// ---------------------------------------------------------------------------
// SinkBinding
// ---------------------------------------------------------------------------

/// Sets and removes environment variables on the workloads a SinkBinding
/// names. The embedded platform implements it (by patching a Knative
/// Service's or a workload's environment); [`super::testing`] has a
/// recording one.
#[async_trait]
pub trait BindingTarget: Send + Sync {
    /// Sets `env` (name, value) on every container of `subject` in
    /// `namespace`, replacing variables of the same names. Called on every
    /// reconcile: it must be idempotent.
    async fn bind(
        &self,
        namespace: &str,
        subject: &BindingSubject,
        env: Vec<(String, String)>,
    ) -> Result<(), String>;

    /// Removes the variables `names` from every container of `subject`
    /// (a subject that no longer exists is not an error).
    async fn unbind(
        &self,
        namespace: &str,
        subject: &BindingSubject,
        names: &[&str],
    ) -> Result<(), String>;
}

/// Reconciles SinkBindings through a [`BindingTarget`].
pub struct SinkBindingReconciler {
    bindings: Arc<dyn Objects<SinkBinding>>,
    resolver: Arc<dyn AddressResolver>,
    target: Arc<dyn BindingTarget>,
    /// The subject each binding last bound (to unbind it when it changes).
    bound: Mutex<HashMap<ObjectKey, BindingSubject>>,
}

impl std::fmt::Debug for SinkBindingReconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkBindingReconciler")
            .finish_non_exhaustive()
    }
}

impl SinkBindingReconciler {
    /// A reconciler binding subjects through `target`.
    pub fn new(
        bindings: Arc<dyn Objects<SinkBinding>>,
        resolver: Arc<dyn AddressResolver>,
        target: Arc<dyn BindingTarget>,
    ) -> Self {
        SinkBindingReconciler {
            bindings,
            resolver,
            target,
            bound: Mutex::new(HashMap::new()),
        }
    }

    /// A controller running this reconciler.
    pub fn into_controller(self) -> Controller<SinkBinding, Self> {
        Controller::new(Arc::clone(&self.bindings), Arc::new(self))
    }

    fn bound(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectKey, BindingSubject>> {
        self.bound.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn reconcile_binding(
        &self,
        binding: Arc<SinkBinding>,
        ns: String,
    ) -> Result<Action, ReconcileError> {
        let key = binding.key();
        let subject = &binding.spec.subject;
        if binding.metadata.deletion_timestamp.is_some() {
            if has_finalizer(&*binding, SINK_BINDING_FINALIZER) {
                let previous = self.bound().get(&key).cloned();
                for s in previous.iter().filter(|p| *p != subject).chain([subject]) {
                    self.target
                        .unbind(&ns, s, &BINDING_ENV)
                        .await
                        .map_err(ReconcileError::Workload)?;
                }
                self.bound().remove(&key);
                set_finalizer(&*self.bindings, &*binding, SINK_BINDING_FINALIZER, false).await?;
                debug!("subject unbound");
            }
            return Ok(Action::await_change());
        }
        if !has_finalizer(&*binding, SINK_BINDING_FINALIZER) {
            set_finalizer(&*self.bindings, &*binding, SINK_BINDING_FINALIZER, true).await?;
            return Ok(Action::await_change());
        }
        let mut status = binding.status.clone().unwrap_or_default();
        let set = SinkBinding::condition_set();
        let mut m = set.manage(&mut status.status.conditions);
        m.initialize();
        status.status.observed_generation = binding.metadata.generation;
        let mut requeue = None;
        match resolve_destination(&*self.resolver, &binding.spec.source.sink, &ns).await {
            Err(e) => {
                status.sink_uri = None;
                status.sink_ca_certs = None;
                m.mark_false(
                    SinkBinding::CONDITION_SINK_PROVIDED,
                    "NotFound",
                    &format!("Couldn't get Sink URI: {e}"),
                );
                requeue = Some(RECHECK);
            }
            Ok(sink) => {
                m.mark_true(SinkBinding::CONDITION_SINK_PROVIDED);
                let previous = self.bound().get(&key).cloned();
                if let Some(previous) = previous.filter(|p| p != subject) {
                    if let Err(e) = self.target.unbind(&ns, &previous, &BINDING_ENV).await {
                        warn!(error = %e, "unbinding the previous subject failed");
                    }
                    self.bound().remove(&key);
                }
                let env = sink_env_for(
                    &sink,
                    &binding.spec.source.sink,
                    binding.spec.source.ce_overrides.as_ref(),
                );
                match self.target.bind(&ns, subject, env).await {
                    Ok(()) => {
                        self.bound().insert(key, subject.clone());
                    }
                    Err(e) => {
                        m.mark_false(READY, "SubjectUnavailable", &e);
                        requeue = Some(RECHECK);
                    }
                }
                status.sink_ca_certs = sink_ca_certs(&binding.spec.source.sink);
                status.sink_uri = Some(sink);
            }
        }
        drop(m);
        if binding.status.as_ref() != Some(&status) {
            let mut updated = (*binding).clone();
            updated.status = Some(status);
            if let Some(action) = write_status(&*self.bindings, &updated).await? {
                return Ok(action);
            }
        }
        Ok(requeue.map_or_else(Action::await_change, Action::requeue_after))
    }
}

#[async_trait]
impl Reconciler<SinkBinding> for SinkBindingReconciler {
    type Error = ReconcileError;

    async fn reconcile(&self, binding: Arc<SinkBinding>) -> Result<Action, ReconcileError> {
        let (ns, name) = namespace_and_name(&*binding);
        let span = info_span!("reconcile_sink_binding", namespace = %ns, name = %name);
        self.reconcile_binding(binding, ns).instrument(span).await
    }
}

// ---------------------------------------------------------------------------
// ContainerSource
// ---------------------------------------------------------------------------

/// Runs a ContainerSource's pod template. The embedded platform implements
/// it (as a Deployment upstream, `{name}-deployment`); [`super::testing`]
/// has a recording one.
#[async_trait]
pub trait ContainerRunner: Send + Sync {
    /// Runs `template` as workload `namespace/name`, or brings the running
    /// one in line with it. Called on every reconcile: it must be
    /// idempotent.
    async fn ensure(
        &self,
        namespace: &str,
        name: &str,
        template: PodTemplateSpec,
    ) -> Result<(), String>;

    /// Stops and removes workload `namespace/name` (one that does not
    /// exist is not an error).
    async fn remove(&self, namespace: &str, name: &str) -> Result<(), String>;

    /// Whether workload `namespace/name` is available: a replica runs and
    /// is ready (a Deployment's `Available` condition). The reconciler
    /// reports `ReceiveAdapterReady` from it, as upstream does. Runners
    /// that cannot tell answer `true` (the default).
    async fn available(&self, namespace: &str, name: &str) -> Result<bool, String> {
        let _ = (namespace, name);
        Ok(true)
    }
}

/// Sets `env` on every container and init container of `template`, after
/// taking out the adapter variables (`K_SINK`, `K_CE_OVERRIDES`,
/// `K_CA_CERTS`) it had, as upstream's SinkBinding does.
pub fn inject_sink_env(template: &mut PodTemplateSpec, env: &[(String, String)]) {
    let Some(pod) = template.spec.as_mut() else {
        return;
    };
    let containers = pod
        .containers
        .iter_mut()
        .chain(pod.init_containers.iter_mut().flatten());
    for container in containers {
        let vars = container.env.get_or_insert_with(Vec::new);
        vars.retain(|v| !BINDING_ENV.contains(&v.name.as_str()));
        vars.extend(env.iter().map(|(name, value)| EnvVar {
            name: name.clone(),
            value: Some(value.clone()),
            ..EnvVar::default()
        }));
    }
}

/// Reconciles ContainerSources through a [`ContainerRunner`].
pub struct ContainerSourceReconciler {
    sources: Arc<dyn Objects<ContainerSource>>,
    resolver: Arc<dyn AddressResolver>,
    runner: Arc<dyn ContainerRunner>,
}

impl std::fmt::Debug for ContainerSourceReconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerSourceReconciler")
            .finish_non_exhaustive()
    }
}

impl ContainerSourceReconciler {
    /// A reconciler running containers through `runner`.
    pub fn new(
        sources: Arc<dyn Objects<ContainerSource>>,
        resolver: Arc<dyn AddressResolver>,
        runner: Arc<dyn ContainerRunner>,
    ) -> Self {
        ContainerSourceReconciler {
            sources,
            resolver,
            runner,
        }
    }

    /// A controller running this reconciler.
    pub fn into_controller(self) -> Controller<ContainerSource, Self> {
        Controller::new(Arc::clone(&self.sources), Arc::new(self))
    }

    async fn reconcile_source(
        &self,
        source: Arc<ContainerSource>,
        ns: String,
        name: String,
    ) -> Result<Action, ReconcileError> {
        if source.metadata.deletion_timestamp.is_some() {
            if has_finalizer(&*source, CONTAINER_SOURCE_FINALIZER) {
                self.runner
                    .remove(&ns, &name)
                    .await
                    .map_err(ReconcileError::Workload)?;
                set_finalizer(&*self.sources, &*source, CONTAINER_SOURCE_FINALIZER, false).await?;
                debug!("container removed");
            }
            return Ok(Action::await_change());
        }
        if !has_finalizer(&*source, CONTAINER_SOURCE_FINALIZER) {
            set_finalizer(&*self.sources, &*source, CONTAINER_SOURCE_FINALIZER, true).await?;
            return Ok(Action::await_change());
        }
        let mut status = source.status.clone().unwrap_or_default();
        let set = ContainerSource::condition_set();
        let mut m = set.manage(&mut status.status.conditions);
        m.initialize();
        status.status.observed_generation = source.metadata.generation;
        let mut requeue = None;
        match resolve_destination(&*self.resolver, &source.spec.source.sink, &ns).await {
            Err(e) => {
                status.sink_uri = None;
                status.sink_ca_certs = None;
                m.mark_false(
                    ContainerSource::CONDITION_SINK_BINDING_READY,
                    "NotFound",
                    &format!("Couldn't get Sink URI: {e}"),
                );
                requeue = Some(RECHECK);
            }
            Ok(sink) => {
                m.mark_true(ContainerSource::CONDITION_SINK_BINDING_READY);
                let mut template = source.spec.template.clone();
                let env = sink_env_for(
                    &sink,
                    &source.spec.source.sink,
                    source.spec.source.ce_overrides.as_ref(),
                );
                inject_sink_env(&mut template, &env);
                let ensured = match self.runner.ensure(&ns, &name, template).await {
                    Ok(()) => self.runner.available(&ns, &name).await.map(|up| {
                        up.then_some(()).ok_or_else(|| {
                            format!("The Deployment '{name}-deployment' is unavailable.")
                        })
                    }),
                    Err(e) => Err(e),
                };
                match ensured {
                    Ok(Ok(())) => m.mark_true(ContainerSource::CONDITION_RECEIVE_ADAPTER_READY),
                    Ok(Err(unavailable)) => {
                        m.mark_false(
                            ContainerSource::CONDITION_RECEIVE_ADAPTER_READY,
                            "DeploymentUnavailable",
                            &unavailable,
                        );
                        requeue = Some(RECHECK);
                    }
                    Err(e) => {
                        m.mark_false(
                            ContainerSource::CONDITION_RECEIVE_ADAPTER_READY,
                            "DeploymentFailed",
                            &e,
                        );
                        requeue = Some(RECHECK);
                    }
                }
                status.sink_ca_certs = sink_ca_certs(&source.spec.source.sink);
                status.sink_uri = Some(sink);
            }
        }
        drop(m);
        if source.status.as_ref() != Some(&status) {
            let mut updated = (*source).clone();
            updated.status = Some(status);
            if let Some(action) = write_status(&*self.sources, &updated).await? {
                return Ok(action);
            }
        }
        Ok(requeue.map_or_else(Action::await_change, Action::requeue_after))
    }
}

#[async_trait]
impl Reconciler<ContainerSource> for ContainerSourceReconciler {
    type Error = ReconcileError;

    async fn reconcile(&self, source: Arc<ContainerSource>) -> Result<Action, ReconcileError> {
        let (ns, name) = namespace_and_name(&*source);
        let span = info_span!("reconcile_container_source", namespace = %ns, name = %name);
        self.reconcile_source(source, ns, name)
            .instrument(span)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_env_replaces_the_adapter_variables_in_every_container() {
        let mut template: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "spec": {
                "initContainers": [{"name": "init", "image": "i"}],
                "containers": [
                    {"name": "a", "image": "a", "env": [
                        {"name": "K_SINK", "value": "http://old"},
                        {"name": "KEEP", "value": "yes"}
                    ]},
                    {"name": "b", "image": "b"}
                ]
            }
        }))
        .expect("template");
        let env = ping::sink_env("http://sink", None);
        inject_sink_env(&mut template, &env);
        let pod = template.spec.expect("pod");
        let env_of = |c: &k8s_openapi::api::core::v1::Container| -> Vec<(String, String)> {
            c.env
                .iter()
                .flatten()
                .map(|v| (v.name.clone(), v.value.clone().unwrap_or_default()))
                .collect()
        };
        assert_eq!(
            env_of(&pod.containers[0]),
            [
                ("KEEP".to_owned(), "yes".to_owned()),
                ("K_SINK".to_owned(), "http://sink".to_owned()),
                ("K_CE_OVERRIDES".to_owned(), String::new()),
            ]
        );
        assert_eq!(env_of(&pod.containers[1]).len(), 2);
        let init = pod.init_containers.as_deref().unwrap_or_default();
        assert_eq!(env_of(&init[0]).len(), 2);
    }
}
