//! The build reconcilers, written once against
//! [`Objects`] and a [`StepExecutor`], run by
//! [`knative_core::runtime::Controller`] (`specs/BUILD.md §1.7–§1.10`):
//!
//! - [`TaskRunReconciler`]: TaskRun → resolves its Task (`taskRef` from the
//!   Tasks in the store, or `taskSpec`), defaults, validates and
//!   substitutes it, runs the attempt on the executor and writes the
//!   status: the `Succeeded` condition with upstream's reasons, start and
//!   completion times, steps, results, `podName`; `spec.status:
//!   TaskRunCancelled`; `spec.retries` for TaskRuns made by hand;
//! - [`PipelineRunReconciler`]: PipelineRun → drives
//!   [`scheduler::next`](crate::scheduler::next): creates TaskRuns (owner
//!   reference, Tekton's labels), retries them (archiving the failed
//!   attempt in `retriesStatus`, [`archive_attempt`]), cancels them, and
//!   writes the PipelineRun's status and results; requeues at its next
//!   timeout;
//! - [`Build`]: both controllers over one set of stores and an executor
//!   (the embedded platform's composition).
//!
//! The reconcilers hold no state that matters across restarts except the
//! executor's runs: an attempt the executor no longer knows ends the
//! TaskRun with `TaskRunExecutionFailed` rather than running its steps
//! twice. Deleting a TaskRun (or its PipelineRun) stops its running
//! attempt when the controllers run as [`Build`]; a bare
//! [`TaskRunReconciler`] never sees deleted objects.
//!
//! ```no_run
//! # async fn demo() {
//! use std::sync::Arc;
//! use knative_build::executor::{LocalExecutor, LocalExecutorConfig};
//! use knative_build::reconciler::{Build, BuildObjects};
//! use knative_core::store::InMemoryStore;
//!
//! let store = InMemoryStore::new();
//! let executor = LocalExecutor::new(LocalExecutorConfig::new("/tmp/knative-build"));
//! let build = Build::new(BuildObjects::in_memory(&store), Arc::new(executor));
//! // Create Tasks, Pipelines and PipelineRuns through `store`, then:
//! build.run(std::future::pending()).await;
//! # }
//! ```

mod pipeline_run;
mod task_run;

use std::future::Future;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use knative_core::condition::{Condition, ConditionSet, ConditionStatus, SUCCEEDED, Status};
use knative_core::runtime::Controller;
use knative_core::store::{InMemoryStore, Objects, StoreError};

pub use pipeline_run::{PipelineRunReconciler, claim_name};
pub use task_run::{TaskRunReconciler, step_states, task_run_results};

use crate::api::{
    BuildDefaults, Pipeline, PipelineRun, Task, TaskRun, TaskRunStatus, task_run_reasons,
};
use crate::executor::{ExecutorError, StepExecutor};

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Reading or writing objects failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The executor failed in a way that may pass.
    #[error(transparent)]
    Executor(#[from] ExecutorError),
}

/// Sets the `Succeeded` condition at `now` (its transition time only moves
/// when it changes).
pub(crate) fn set_succeeded(
    status: &mut Status,
    now: Timestamp,
    state: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
) {
    let set = ConditionSet::batch(&[]);
    set.manage_at(&mut status.conditions, Time(now))
        .set(Condition::new(SUCCEEDED, state).with_reason(reason, message));
}

/// A TaskRun status after a failed attempt, ready for the next one
/// (`specs/BUILD.md §1.7`): the attempt's status (without its own
/// `retriesStatus`) is appended to `retriesStatus`; start and completion
/// times, pod name, steps and results are cleared; the condition becomes
/// Unknown / `ToBeRetried`. The spec that ran is kept.
pub fn archive_attempt(status: &TaskRunStatus, now: Timestamp) -> TaskRunStatus {
    let mut archived = status.clone();
    archived.retries_status.clear();
    let mut retries = status.retries_status.clone();
    retries.push(archived);
    let attempt = retries.len();
    let mut next = TaskRunStatus {
        status: Status {
            observed_generation: status.status.observed_generation,
            conditions: status.status.conditions.clone(),
            annotations: status.status.annotations.clone(),
        },
        retries_status: retries,
        task_spec: status.task_spec.clone(),
        ..TaskRunStatus::default()
    };
    set_succeeded(
        &mut next.status,
        now,
        ConditionStatus::Unknown,
        task_run_reasons::TO_BE_RETRIED,
        format!("Attempt {attempt} failed; retrying"),
    );
    next
}

/// The stores the build controllers read and write.
#[derive(Clone)]
pub struct BuildObjects {
    /// Tasks (read by `taskRef`).
    pub tasks: Arc<dyn Objects<Task>>,
    /// TaskRuns.
    pub task_runs: Arc<dyn Objects<TaskRun>>,
    /// Pipelines (read by `pipelineRef`).
    pub pipelines: Arc<dyn Objects<Pipeline>>,
    /// PipelineRuns.
    pub pipeline_runs: Arc<dyn Objects<PipelineRun>>,
}

impl std::fmt::Debug for BuildObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildObjects").finish_non_exhaustive()
    }
}

impl BuildObjects {
    /// The four kinds' views of one in-memory store.
    pub fn in_memory(store: &InMemoryStore) -> Self {
        BuildObjects {
            tasks: Arc::new(store.objects::<Task>()),
            task_runs: Arc::new(store.objects::<TaskRun>()),
            pipelines: Arc::new(store.objects::<Pipeline>()),
            pipeline_runs: Arc::new(store.objects::<PipelineRun>()),
        }
    }
}

/// The TaskRun and PipelineRun controllers over one set of stores and a
/// step executor.
pub struct Build {
    objects: BuildObjects,
    executor: Arc<dyn StepExecutor>,
    defaults: BuildDefaults,
}

impl std::fmt::Debug for Build {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Build")
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

impl Build {
    /// The controllers over `objects`, running steps on `executor`, with
    /// upstream's defaults.
    pub fn new(objects: BuildObjects, executor: Arc<dyn StepExecutor>) -> Self {
        Build {
            objects,
            executor,
            defaults: BuildDefaults::default(),
        }
    }

    /// Uses these cluster defaults (timeouts, ServiceAccount).
    pub fn with_defaults(mut self, defaults: BuildDefaults) -> Self {
        self.defaults = defaults;
        self
    }

    /// Runs both controllers until `shutdown` completes, then stops them
    /// gracefully (running steps are not stopped).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let o = &self.objects;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let until_stopped = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            }
        };
        let task_run_reconciler = Arc::new(
            TaskRunReconciler::new(
                Arc::clone(&o.task_runs),
                Arc::clone(&o.tasks),
                Arc::clone(&self.executor),
            )
            .with_defaults(self.defaults.clone()),
        );
        let task_runs = Controller::new(Arc::clone(&o.task_runs), Arc::clone(&task_run_reconciler));
        task_run_reconciler.attach(task_runs.handle());
        let pipeline_runs = Controller::new(
            Arc::clone(&o.pipeline_runs),
            Arc::new(
                PipelineRunReconciler::new(
                    Arc::clone(&o.pipeline_runs),
                    Arc::clone(&o.pipelines),
                    Arc::clone(&o.task_runs),
                )
                .with_defaults(self.defaults.clone()),
            ),
        )
        .owns(Arc::clone(&o.task_runs));
        let signal = async move {
            shutdown.await;
            let _ = stop.send(true);
        };
        let deletions = stop_deleted(
            Arc::clone(&o.task_runs),
            Arc::clone(&self.executor),
            until_stopped(),
        );
        tokio::join!(
            task_runs.run(until_stopped()),
            pipeline_runs.run(until_stopped()),
            deletions,
            signal
        );
    }
}

/// Stops the running attempt of every TaskRun that is deleted (directly,
/// or with its PipelineRun): controllers do not reconcile objects that are
/// gone, and a TaskRun has no finalizer to wait for its steps.
async fn stop_deleted(
    task_runs: Arc<dyn Objects<TaskRun>>,
    executor: Arc<dyn StepExecutor>,
    shutdown: impl Future<Output = ()> + Send,
) {
    use futures_util::StreamExt;
    use knative_core::store::WatchEvent;
    use kube::ResourceExt;

    let follow = async {
        loop {
            match task_runs.watch(None).await {
                Ok(watch) => {
                    let mut events = watch.events;
                    while let Some(event) = events.next().await {
                        match event {
                            Ok(WatchEvent::Deleted(tr)) => {
                                let attempt =
                                    tr.status.as_ref().map_or(0, |s| s.retries_status.len());
                                let key = crate::executor::RunKey::new(
                                    tr.namespace().unwrap_or_default(),
                                    tr.name_any(),
                                    u32::try_from(attempt).unwrap_or(u32::MAX),
                                );
                                if executor.execution(&key).is_some() {
                                    tracing::info!(%key, "TaskRun deleted; stopping its attempt");
                                    executor.forget(&key);
                                }
                            }
                            Ok(_) => {}
                            Err(error) => {
                                tracing::warn!(%error, "TaskRun watch broke; watching again");
                                break;
                            }
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot watch TaskRuns; retrying"),
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    };
    tokio::select! {
        () = follow => {}
        () = shutdown => {}
    }
}

#[cfg(test)]
mod tests;
