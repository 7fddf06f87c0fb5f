//! Revision → replicas on a [`WorkloadBackend`] (`specs/SERVING.md §1`,
//! "Revision conditions").
//!
//! The reconciler ensures the workload, scales it to [`desired_replicas`],
//! and derives `ResourcesAvailable`, `ContainerHealthy` and `Active` from
//! what the backend reports, with the progress deadline
//! (`serving.knative.dev/progress-deadline`, default 600 s). A finalizer
//! makes sure the workload is removed before the Revision goes away. Every
//! change the backend reports re-queues the Revision.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::PodSpec;
use knative_core::condition::{ConditionSet, ConditionStatus};
use knative_core::runtime::{Action, Handle, Reconciler};
use knative_core::store::{ObjectKey, Objects};

use super::{ReconcileError, controller_reference};
use crate::api::{ContainerStatus, Revision, RevisionStatus, RoutingState, keys};
use crate::autoscaling::autoscaler::{Autoscaler, ScaleStatus, ScalingTarget};
use crate::backend::{BackendError, WorkloadBackend, WorkloadKey, WorkloadSpec};
use crate::config::ServingConfig;

/// Condition: the revision's replicas could be created and became ready.
pub const RESOURCES_AVAILABLE: &str = "ResourcesAvailable";
/// Condition: the revision's containers run without crashing.
pub const CONTAINER_HEALTHY: &str = "ContainerHealthy";
/// Condition (informational): the revision has replicas serving.
pub const ACTIVE: &str = "Active";
/// The finalizer that removes a revision's workload.
pub const FINALIZER: &str = "revisions.serving.knative.dev";
/// How long a revision may take to become ready (`config-deployment`).
pub const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(600);

fn condition_set() -> ConditionSet {
    ConditionSet::living(&[RESOURCES_AVAILABLE, CONTAINER_HEALTHY])
}

fn annotation<'a>(revision: &'a Revision, key: &str) -> Option<&'a str> {
    revision
        .metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn scale_annotation(revision: &Revision, key: &str) -> Option<u32> {
    annotation(revision, key).and_then(|v| v.trim().parse().ok())
}

/// How many replicas a revision runs until the autoscaler decides: none
/// when no route references it (`routingState: reserve`), otherwise
/// `max(initial-scale, min-scale)` but at least one, at most `max-scale`
/// (0 = unlimited).
pub fn desired_replicas(revision: &Revision) -> u32 {
    if revision.routing_state() == Some(RoutingState::Reserve) {
        return 0;
    }
    let min = scale_annotation(revision, keys::MIN_SCALE).unwrap_or(0);
    let initial = scale_annotation(revision, keys::INITIAL_SCALE).unwrap_or(1);
    let wanted = initial.max(min).max(1);
    match scale_annotation(revision, keys::MAX_SCALE) {
        Some(max) if max > 0 => wanted.min(max),
        _ => wanted,
    }
}

/// What the backend must run for a revision.
pub fn workload_spec(revision: &Revision, config: &ServingConfig) -> WorkloadSpec {
    let spec = &revision.spec;
    let mut labels: BTreeMap<String, String> = revision
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| !matches!(k.as_str(), keys::ROUTING_STATE | keys::ROUTE))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let annotations = revision
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                keys::LAST_PINNED | keys::NO_GC | keys::ROUTING_STATE_MODIFIED | keys::ROUTES
            ) && !k.starts_with(keys::AUTOSCALING_PREFIX)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let name = revision.metadata.name.clone().unwrap_or_default();
    labels.insert(keys::REVISION.to_owned(), name.clone());
    if let Some(uid) = &revision.metadata.uid {
        labels.insert(keys::REVISION_UID.to_owned(), uid.clone());
    }
    labels
        .entry("app".to_owned())
        .or_insert_with(|| name.clone());
    let defaults = &config.defaults;
    let timeout = spec
        .timeout_seconds
        .unwrap_or(defaults.revision_timeout_seconds);
    // Unset fields take config-defaults' values as the defaulting webhook
    // does (`RevisionSpec::apply_defaults`); 0 means no limit.
    let seconds = |s: i64| (s > 0).then(|| Duration::from_secs(s.unsigned_abs()));
    let response_start = spec.response_start_timeout_seconds.unwrap_or_else(|| {
        let default = defaults.revision_response_start_timeout_seconds;
        if default < timeout { default } else { 0 }
    });
    let idle = spec
        .idle_timeout_seconds
        .unwrap_or(defaults.revision_idle_timeout_seconds);
    let container_concurrency = spec
        .container_concurrency
        .unwrap_or(defaults.container_concurrency)
        .clamp(0, i64::from(u32::MAX));
    WorkloadSpec {
        key: WorkloadKey::new(
            revision.metadata.namespace.clone().unwrap_or_default(),
            name,
        ),
        containers: spec.pod_spec.containers.clone(),
        pod: PodSpec {
            containers: Vec::new(),
            ..spec.pod_spec.clone()
        },
        serving_container: spec.serving_container_index(),
        container_port: spec.container_port(),
        labels,
        annotations,
        termination_grace_period: Duration::from_secs(timeout.max(0).unsigned_abs()),
        container_concurrency: u32::try_from(container_concurrency).unwrap_or(u32::MAX),
        response_start_timeout: seconds(response_start),
        idle_timeout: seconds(idle),
        owner: revision
            .metadata
            .uid
            .is_some()
            .then(|| controller_reference(revision)),
    }
}

/// The progress deadline of a revision: its annotation, else the default.
fn progress_deadline(revision: &Revision) -> Duration {
    annotation(revision, keys::PROGRESS_DEADLINE)
        .and_then(|v| knative_core::duration::parse(v).ok())
        .unwrap_or(DEFAULT_PROGRESS_DEADLINE)
}

/// Reconciles Revisions onto a [`WorkloadBackend`].
pub struct RevisionReconciler {
    revisions: Arc<dyn Objects<Revision>>,
    backend: Arc<dyn WorkloadBackend>,
    config: Arc<ServingConfig>,
    autoscaler: Option<Autoscaler>,
    handle: OnceLock<Handle>,
    watchers: Mutex<HashMap<WorkloadKey, tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for RevisionReconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevisionReconciler").finish_non_exhaustive()
    }
}

impl Drop for RevisionReconciler {
    fn drop(&mut self) {
        for (_, task) in self
            .watchers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
        {
            task.abort();
        }
    }
}

impl RevisionReconciler {
    /// A reconciler running revisions on `backend`.
    pub fn new(
        revisions: Arc<dyn Objects<Revision>>,
        backend: Arc<dyn WorkloadBackend>,
        config: Arc<ServingConfig>,
    ) -> Self {
        RevisionReconciler {
            revisions,
            backend,
            config,
            autoscaler: None,
            handle: OnceLock::new(),
            watchers: Mutex::new(HashMap::new()),
        }
    }

    /// Hands scaling to `autoscaler`: the reconciler registers each
    /// revision's [`ScalingTarget`] with it instead of scaling to
    /// [`desired_replicas`], and takes the `Active` condition from it.
    pub fn with_autoscaler(mut self, autoscaler: Autoscaler) -> Self {
        self.autoscaler = Some(autoscaler);
        self
    }

    /// Connects the reconciler to its controller, so backend status changes
    /// re-queue the revision. Call once, before the controller runs.
    pub fn attach(&self, handle: Handle) {
        let _ = self.handle.set(handle);
    }

    /// Starts following the backend's status of `key` (once per workload).
    fn watch_workload(&self, key: &WorkloadKey) -> Result<(), BackendError> {
        let Some(handle) = self.handle.get().cloned() else {
            return Ok(());
        };
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        if watchers.get(key).is_some_and(|t| !t.is_finished()) {
            return Ok(());
        }
        let mut status = self.backend.status(key)?;
        let mut scaling = self.autoscaler.as_ref().and_then(|a| a.status(key));
        let object = ObjectKey::namespaced(key.namespace.clone(), key.revision.clone());
        let task = tokio::spawn(async move {
            loop {
                let scaled = async {
                    match scaling.as_mut() {
                        Some(s) => s.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                };
                let changed = tokio::select! {
                    r = status.changed() => r.is_ok(),
                    r = scaled => { if !r { scaling = None; } true }
                };
                if !changed {
                    return;
                }
                handle.enqueue(object.clone());
            }
        });
        watchers.insert(key.clone(), task);
        Ok(())
    }

    fn stop_watching(&self, key: &WorkloadKey) {
        if let Some(task) = self
            .watchers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key)
        {
            task.abort();
        }
    }

    async fn write_status(
        &self,
        revision: &Revision,
        status: RevisionStatus,
    ) -> Result<(), ReconcileError> {
        if revision.status.as_ref() != Some(&status) {
            let mut updated = revision.clone();
            updated.status = Some(status);
            self.revisions.replace_status(&updated).await?;
        }
        Ok(())
    }

    async fn finalize(
        &self,
        revision: &Revision,
        key: &WorkloadKey,
    ) -> Result<Action, ReconcileError> {
        self.stop_watching(key);
        if let Some(autoscaler) = &self.autoscaler {
            autoscaler.remove(key);
        }
        self.backend.remove(key).await?;
        let mut updated = revision.clone();
        if let Some(finalizers) = updated.metadata.finalizers.as_mut() {
            finalizers.retain(|f| f != FINALIZER);
        }
        match self.revisions.replace(&updated).await {
            Err(e) if !e.is_not_found() => Err(e.into()),
            _ => Ok(Action::await_change()),
        }
    }
}

#[async_trait]
impl Reconciler<Revision> for RevisionReconciler {
    type Error = ReconcileError;

    async fn reconcile(&self, revision: Arc<Revision>) -> Result<Action, ReconcileError> {
        let spec = workload_spec(&revision, &self.config);
        let key = spec.key.clone();
        let has_finalizer = revision
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == FINALIZER);
        if revision.metadata.deletion_timestamp.is_some() {
            return if has_finalizer {
                self.finalize(&revision, &key).await
            } else {
                Ok(Action::await_change())
            };
        }
        if !has_finalizer {
            let mut updated = (*revision).clone();
            updated
                .metadata
                .finalizers
                .get_or_insert_with(Vec::new)
                .push(FINALIZER.to_owned());
            self.revisions.replace(&updated).await?;
            // The write re-queues the revision.
            return Ok(Action::await_change());
        }

        let mut status = revision.status.clone().unwrap_or_default();
        let set = condition_set();
        let mut m = set.manage(&mut status.status.conditions);
        m.initialize();
        status.status.observed_generation = revision.metadata.generation;
        status.container_statuses = revision
            .spec
            .pod_spec
            .containers
            .iter()
            .map(|c| ContainerStatus {
                name: c.name.clone(),
                image_digest: c
                    .image
                    .clone()
                    .filter(|i| i.contains("@sha256:"))
                    .unwrap_or_default(),
            })
            .collect();

        let mut desired = desired_replicas(&revision);
        let mut requeue = None;
        match self.backend.ensure(&spec).await {
            Err(BackendError::Unsupported { message, .. }) => {
                m.mark_false(CONTAINER_HEALTHY, "ContainerMissing", &message);
                m.mark_unknown(
                    ACTIVE,
                    "ContainerMissing",
                    "The revision's container cannot run.",
                );
                status.desired_replicas = Some(0);
                status.actual_replicas = Some(0);
            }
            Err(e) => {
                m.mark_unknown(RESOURCES_AVAILABLE, "BackendError", &e.to_string());
                drop(m);
                self.write_status(&revision, status).await?;
                return Err(e.into());
            }
            Ok(()) => {
                let scaled = match &self.autoscaler {
                    Some(autoscaler) => {
                        let target = ScalingTarget::of(&revision, &self.config.autoscaler)
                            .unwrap_or_else(|error| {
                                // Validation keeps bad annotations out; an
                                // object written around it scales on the
                                // config's defaults.
                                tracing::warn!(revision = %key, %error, "ignoring invalid autoscaling annotations");
                                let mut plain = (*revision).clone();
                                plain.metadata.annotations = None;
                                ScalingTarget::of(&plain, &self.config.autoscaler)
                                    .unwrap_or_else(|_| ScalingTarget {
                                        bounds: crate::autoscaling::pa::ScalingBounds::from_config(&self.config.autoscaler),
                                        decider: crate::autoscaling::kpa::DeciderSpec::default(),
                                        algorithm: crate::autoscaling::metrics::Algorithm::default(),
                                    })
                            });
                        autoscaler.upsert(&key, target);
                        Ok(autoscaler.status(&key))
                    }
                    None => self.backend.scale(&key, desired).await.map(|()| None),
                };
                let scaling: Option<ScaleStatus> = match scaled {
                    Ok(s) => s.map(|rx| rx.borrow().clone()),
                    Err(e) => {
                        m.mark_unknown(RESOURCES_AVAILABLE, "BackendError", &e.to_string());
                        drop(m);
                        self.write_status(&revision, status).await?;
                        return Err(e.into());
                    }
                };
                if let Some(s) = &scaling {
                    desired = u32::try_from(s.replicas).unwrap_or(0);
                }
                self.watch_workload(&key)?;
                let workload = self.backend.status(&key)?.borrow().clone();
                status.desired_replicas = Some(i32::try_from(desired).unwrap_or(i32::MAX));
                status.actual_replicas = Some(i32::try_from(workload.actual).unwrap_or(i32::MAX));
                if let Some(s) = &scaling {
                    // The PodAutoscaler's view: activating, active, inactive.
                    match s.active.status {
                        ConditionStatus::True => m.mark_true(ACTIVE),
                        ConditionStatus::False => {
                            m.mark_false(ACTIVE, s.active.reason, s.active.message);
                        }
                        ConditionStatus::Unknown => {
                            m.mark_unknown(ACTIVE, s.active.reason, s.active.message);
                        }
                    }
                }
                if !workload.ready.is_empty() {
                    m.mark_true(RESOURCES_AVAILABLE);
                    m.mark_true(CONTAINER_HEALTHY);
                    if scaling.is_none() {
                        m.mark_true(ACTIVE);
                    }
                } else {
                    if let Some(failure) = &workload.failure {
                        let type_ = if failure.container {
                            CONTAINER_HEALTHY
                        } else {
                            RESOURCES_AVAILABLE
                        };
                        m.mark_false(type_, &failure.reason, &failure.message);
                    }
                    if scaling.is_some() {
                        // Active came from the autoscaler above. At zero
                        // with nothing failing (e.g. `initial-scale: 0`),
                        // the scale target counts as initialized, as
                        // upstream's PodAutoscaler reports it.
                        if desired == 0 && workload.failure.is_none() {
                            m.mark_true(RESOURCES_AVAILABLE);
                            m.mark_true(CONTAINER_HEALTHY);
                        }
                    } else if desired == 0 {
                        m.mark_false(ACTIVE, "NoTraffic", "The target is not receiving traffic.");
                    } else {
                        m.mark_unknown(ACTIVE, "Deploying", "");
                    }
                    let never_ready = !m.get(RESOURCES_AVAILABLE).is_some_and(|c| c.is_true());
                    if never_ready && desired > 0 {
                        let deadline = progress_deadline(&revision);
                        let age = revision
                            .metadata
                            .creation_timestamp
                            .as_ref()
                            .and_then(|t| {
                                jiff::Timestamp::now().duration_since(t.0).try_into().ok()
                            })
                            .unwrap_or(Duration::ZERO);
                        if age >= deadline {
                            m.mark_false(
                                RESOURCES_AVAILABLE,
                                "ProgressDeadlineExceeded",
                                &format!(
                                    "Initial scale was never achieved within the progress deadline of {}.",
                                    knative_core::duration::format_go(deadline)
                                ),
                            );
                        } else {
                            if workload.failure.is_none() {
                                m.mark_unknown(RESOURCES_AVAILABLE, "Deploying", "");
                            }
                            requeue = Some(deadline - age);
                        }
                    }
                }
            }
        }
        let ready = m.is_happy();
        drop(m);
        tracing::debug!(revision = %key, desired, ready, "revision reconciled");

        self.write_status(&revision, status).await?;
        Ok(match requeue {
            Some(delay) => Action::requeue_after(delay),
            None => Action::await_change(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Revision {
        let mut rev: Revision = serde_yaml::from_str(
            r#"
metadata: {name: hello-00001, namespace: default, uid: rev-uid}
spec:
  timeoutSeconds: 30
  containers:
    - image: hello
      ports: [{containerPort: 9000}]
"#,
        )
        .expect("parses");
        rev.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        );
        rev.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        );
        rev
    }

    #[test]
    fn replicas_follow_routing_state_and_scale_annotations() {
        type Pairs<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Pairs, Pairs, u32)] = &[
            (&[], &[], 1),
            (&[(keys::ROUTING_STATE, "pending")], &[], 1),
            (
                &[(keys::ROUTING_STATE, "active")],
                &[(keys::MIN_SCALE, "3")],
                3,
            ),
            (
                &[(keys::ROUTING_STATE, "active")],
                &[(keys::INITIAL_SCALE, "5"), (keys::MAX_SCALE, "2")],
                2,
            ),
            (
                &[(keys::ROUTING_STATE, "active")],
                &[(keys::INITIAL_SCALE, "0")],
                1,
            ),
            (
                &[(keys::ROUTING_STATE, "reserve")],
                &[(keys::MIN_SCALE, "3")],
                0,
            ),
        ];
        for (labels, annotations, want) in cases {
            assert_eq!(
                desired_replicas(&revision(labels, annotations)),
                *want,
                "{labels:?} {annotations:?}"
            );
        }
    }

    #[test]
    fn workload_spec_carries_concurrency_and_timeouts_for_a_queue_proxy() {
        let mut rev = revision(&[], &[]);
        rev.spec.container_concurrency = Some(10);
        rev.spec.response_start_timeout_seconds = Some(5);
        rev.spec.idle_timeout_seconds = Some(7);
        let spec = workload_spec(&rev, &ServingConfig::default());
        assert_eq!(spec.container_concurrency, 10);
        assert_eq!(spec.response_start_timeout, Some(Duration::from_secs(5)));
        assert_eq!(spec.idle_timeout, Some(Duration::from_secs(7)));

        // Unset: config-defaults' values, as the defaulting webhook sets them;
        // 0 turns a limit off.
        let mut config = ServingConfig::default();
        config.defaults.container_concurrency = 4;
        config.defaults.revision_response_start_timeout_seconds = 20;
        config.defaults.revision_idle_timeout_seconds = 60;
        let spec = workload_spec(&revision(&[], &[]), &config);
        assert_eq!(spec.container_concurrency, 4);
        assert_eq!(spec.response_start_timeout, Some(Duration::from_secs(20)));
        assert_eq!(spec.idle_timeout, Some(Duration::from_secs(60)));
        config.defaults.revision_response_start_timeout_seconds = 30;
        assert_eq!(
            workload_spec(&revision(&[], &[]), &config).response_start_timeout,
            None,
            "a default not below timeoutSeconds leaves the field unset"
        );
        rev.spec.idle_timeout_seconds = Some(0);
        rev.spec.container_concurrency = Some(-1);
        let spec = workload_spec(&rev, &config);
        assert_eq!((spec.idle_timeout, spec.container_concurrency), (None, 0));
    }

    #[test]
    fn workload_spec_carries_port_grace_period_and_revision_labels() {
        let rev = revision(
            &[
                (keys::CONFIGURATION, "hello"),
                (keys::ROUTING_STATE, "active"),
            ],
            &[],
        );
        let spec = workload_spec(&rev, &ServingConfig::default());
        assert_eq!(spec.key, WorkloadKey::new("default", "hello-00001"));
        assert_eq!(spec.container_port, 9000);
        assert_eq!(spec.termination_grace_period, Duration::from_secs(30));
        assert_eq!(
            spec.labels.get(keys::REVISION).map(String::as_str),
            Some("hello-00001")
        );
        assert_eq!(
            spec.labels.get(keys::REVISION_UID).map(String::as_str),
            Some("rev-uid")
        );
        assert_eq!(
            spec.labels.get("app").map(String::as_str),
            Some("hello-00001")
        );
        assert!(!spec.labels.contains_key(keys::ROUTING_STATE));
        assert_eq!(spec.container_concurrency, 0, "config-defaults: unlimited");
        assert_eq!(spec.response_start_timeout, None);
        assert_eq!(spec.idle_timeout, None);
        let owner = spec.owner.expect("a revision with a uid owns its workload");
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Revision", "hello-00001", "rev-uid")
        );
        assert_eq!(
            (owner.controller, owner.block_owner_deletion),
            (Some(true), Some(true))
        );
    }
}
