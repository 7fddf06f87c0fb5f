//! TaskRun → one attempt on a [`StepExecutor`] at a time, and the
//! TaskRun's status from what the executor reports (`specs/BUILD.md §1.5`,
//! §1.7–§1.10).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use knative_core::apis::{Context, SetDefaults, Validate};
use knative_core::condition::ConditionStatus;
use knative_core::runtime::{Action, Handle, Reconciler};
use knative_core::store::{ObjectKey, Objects};
use kube::ResourceExt;
use tracing::Instrument;

use super::{ReconcileError, archive_attempt, set_succeeded};
use crate::api::{
    BuildDefaults, Param, ParamValue, StepState, Task, TaskRun, TaskRunResult, TaskRunStatus,
    TaskSpec, effective_params, task_run_reasons as reasons, validate_param_enums,
};
use crate::executor::{
    Execution, ExecutionPhase, ExecutionRequest, ExecutionStatus, RunKey, StepExecutor,
    StepOutcome, StepPhase, termination_reasons,
};
use crate::substitution::{Replacements, TaskRunContext, resolve_task_spec};

/// How often a reconciler without a controller [`Handle`] looks at a
/// running attempt again.
const POLL: Duration = Duration::from_millis(200);

/// The `Running` message upstream writes.
const RUNNING_MESSAGE: &str = "Not all Steps in the Task have finished executing";
/// The `Succeeded` message upstream writes.
const SUCCEEDED_MESSAGE: &str = "All Steps have completed executing";

fn time(t: Option<Timestamp>) -> Option<Time> {
    t.map(Time)
}

/// The `status.steps` of a TaskRun from the executor's step outcomes.
pub fn step_states(steps: &[StepOutcome]) -> Vec<StepState> {
    steps
        .iter()
        .map(|o| {
            let state = match o.phase {
                StepPhase::Waiting => ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("PodInitializing".to_owned()),
                        message: None,
                    }),
                    ..ContainerState::default()
                },
                StepPhase::Running => ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: time(o.started_at),
                    }),
                    ..ContainerState::default()
                },
                StepPhase::Terminated => {
                    let code = o.exit_code.unwrap_or(0);
                    let skipped =
                        o.termination_reason.as_deref() == Some(termination_reasons::SKIPPED);
                    ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: code,
                            reason: Some(
                                if skipped {
                                    termination_reasons::SKIPPED
                                } else if code == 0 {
                                    termination_reasons::COMPLETED
                                } else {
                                    termination_reasons::ERROR
                                }
                                .to_owned(),
                            ),
                            started_at: time(o.started_at),
                            finished_at: time(o.finished_at),
                            ..ContainerStateTerminated::default()
                        }),
                        ..ContainerState::default()
                    }
                }
            };
            StepState {
                state,
                name: o.name.clone(),
                container: Some(o.container.clone()),
                termination_reason: o.termination_reason.clone(),
                ..StepState::default()
            }
        })
        .collect()
}

/// The TaskRun results from the raw texts an executor read, typed as the
/// Task declares them (JSON for `array` and `object` results, §1.5). An
/// error names the result that does not parse.
pub fn task_run_results(
    spec: &TaskSpec,
    raw: &BTreeMap<String, String>,
) -> Result<Vec<TaskRunResult>, String> {
    let mut results = Vec::new();
    for declared in &spec.results {
        let Some(text) = raw.get(&declared.name) else {
            continue;
        };
        let type_ = declared.result_type();
        let value = ParamValue::from_text(text, type_).ok_or_else(|| {
            format!(
                "result {:?} is declared as {type_} but its value is not a JSON {type_}: {text:?}",
                declared.name
            )
        })?;
        results.push(TaskRunResult {
            name: declared.name.clone(),
            type_: Some(type_),
            value,
        });
    }
    Ok(results)
}

/// Reconciles TaskRuns onto a [`StepExecutor`].
pub struct TaskRunReconciler {
    task_runs: Arc<dyn Objects<TaskRun>>,
    tasks: Arc<dyn Objects<Task>>,
    executor: Arc<dyn StepExecutor>,
    defaults: BuildDefaults,
    handle: OnceLock<Handle>,
    watchers: Mutex<HashMap<RunKey, tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for TaskRunReconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskRunReconciler")
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

impl Drop for TaskRunReconciler {
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

/// How a TaskRun ends before (or without) running: a reason and message.
type Refusal = (&'static str, String);

impl TaskRunReconciler {
    /// A reconciler running TaskRuns on `executor`, reading Tasks from `tasks`.
    pub fn new(
        task_runs: Arc<dyn Objects<TaskRun>>,
        tasks: Arc<dyn Objects<Task>>,
        executor: Arc<dyn StepExecutor>,
    ) -> Self {
        TaskRunReconciler {
            task_runs,
            tasks,
            executor,
            defaults: BuildDefaults::default(),
            handle: OnceLock::new(),
            watchers: Mutex::new(HashMap::new()),
        }
    }

    /// Uses these cluster defaults (the timeout of TaskRuns that set none).
    pub fn with_defaults(mut self, defaults: BuildDefaults) -> Self {
        self.defaults = defaults;
        self
    }

    /// Connects the reconciler to its controller, so every status change of
    /// a running attempt re-queues its TaskRun. Without it, running
    /// TaskRuns are looked at every 200 ms. Call once, before the
    /// controller runs.
    pub fn attach(&self, handle: Handle) {
        let _ = self.handle.set(handle);
    }

    fn poll_action(&self) -> Action {
        if self.handle.get().is_some() {
            Action::await_change()
        } else {
            Action::requeue_after(POLL)
        }
    }

    /// Re-queues the TaskRun on every status change of `execution`.
    fn watch(&self, key: &RunKey, execution: &Execution) {
        let Some(handle) = self.handle.get().cloned() else {
            return;
        };
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        watchers.retain(|_, task| !task.is_finished());
        if watchers.contains_key(key) {
            return;
        }
        let mut status = execution.status.clone();
        let object = ObjectKey::namespaced(key.namespace.clone(), key.task_run.clone());
        let task = tokio::spawn(async move {
            while status.changed().await.is_ok() {
                handle.enqueue(object.clone());
            }
        });
        watchers.insert(key.clone(), task);
    }

    fn stop_watching(&self, key: &RunKey) {
        if let Some(task) = self
            .watchers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key)
        {
            task.abort();
        }
    }

    async fn write(&self, task_run: &TaskRun, status: TaskRunStatus) -> Result<(), ReconcileError> {
        if task_run.status.as_ref() != Some(&status) {
            let mut updated = task_run.clone();
            updated.status = Some(status);
            self.task_runs.replace_status(&updated).await?;
        }
        Ok(())
    }

    /// Ends the TaskRun now with False / `reason`.
    async fn finish(
        &self,
        task_run: &TaskRun,
        mut status: TaskRunStatus,
        reason: &str,
        message: String,
        now: Timestamp,
    ) -> Result<Action, ReconcileError> {
        tracing::info!(%reason, %message, "TaskRun failed");
        set_succeeded(
            &mut status.status,
            now,
            ConditionStatus::False,
            reason,
            message,
        );
        status.completion_time.get_or_insert(Time(now));
        self.write(task_run, status).await?;
        Ok(Action::await_change())
    }

    /// The Task to run: `taskSpec`, or the Task `taskRef` names, defaulted.
    async fn resolve(
        &self,
        task_run: &TaskRun,
        ctx: &Context<'_>,
    ) -> Result<Result<TaskSpec, Refusal>, ReconcileError> {
        if let Some(spec) = &task_run.spec.task_spec {
            return Ok(Ok(spec.clone()));
        }
        let Some(task_ref) = &task_run.spec.task_ref else {
            return Ok(Err((
                reasons::VALIDATION_FAILED,
                "the TaskRun names no Task: set taskRef or taskSpec".to_owned(),
            )));
        };
        let Some(name) = task_ref.name.as_deref().filter(|n| !n.is_empty()) else {
            return Ok(Err((
                reasons::COULDNT_GET_TASK,
                "taskRef resolvers are not supported; name a Task".to_owned(),
            )));
        };
        if task_ref.kind.as_deref().is_some_and(|k| k != "Task") {
            return Ok(Err((
                reasons::COULDNT_GET_TASK,
                format!(
                    "taskRef kind {:?} is not supported; name a Task",
                    task_ref.kind.as_deref().unwrap_or_default()
                ),
            )));
        }
        let namespace = task_run.namespace();
        let mut task = match self.tasks.get(namespace.as_deref(), name).await {
            Ok(task) => task,
            Err(e) if e.is_not_found() => {
                return Ok(Err((
                    reasons::COULDNT_GET_TASK,
                    format!(
                        "Error retrieving Task for TaskRun {}/{}: Task {name:?} not found",
                        namespace.unwrap_or_default(),
                        task_run.name_any()
                    ),
                )));
            }
            Err(e) => return Err(e.into()),
        };
        task.set_defaults(ctx);
        let errors = task.validate(ctx);
        if !errors.is_empty() {
            return Ok(Err((
                reasons::VALIDATION_FAILED,
                format!("Task {name:?} is invalid: {errors}"),
            )));
        }
        Ok(Ok(task.spec))
    }

    /// Resolves, substitutes and starts attempt `key`.
    async fn start(
        &self,
        task_run: &TaskRun,
        mut status: TaskRunStatus,
        key: RunKey,
        now: Timestamp,
    ) -> Result<Action, ReconcileError> {
        let ctx = Context::create().with_config(self.defaults.clone());
        let mut defaulted = task_run.clone();
        defaulted.set_defaults(&ctx);
        let errors = defaulted.validate(&ctx);
        if !errors.is_empty() {
            return self
                .finish(
                    task_run,
                    status,
                    reasons::VALIDATION_FAILED,
                    errors.to_string(),
                    now,
                )
                .await;
        }
        let spec = match self.resolve(&defaulted, &ctx).await? {
            Ok(spec) => spec,
            Err((reason, message)) => {
                return self.finish(task_run, status, reason, message, now).await;
            }
        };
        status.task_spec = Some(spec.clone());
        let run_spec = &defaulted.spec;
        let (params, missing) = effective_params(&spec.params, &run_spec.params);
        if !missing.is_empty() {
            let message = format!(
                "TaskRun {:?} gives no value for params without a default: {}",
                key.task_run,
                missing.join(", ")
            );
            return self
                .finish(task_run, status, reasons::VALIDATION_FAILED, message, now)
                .await;
        }
        if let Some(missing) = spec.workspaces.iter().find(|decl| {
            !decl.is_optional() && !run_spec.workspaces.iter().any(|b| b.name == decl.name)
        }) {
            let message = format!(
                "declared workspace {:?} is required but has not been bound",
                missing.name
            );
            return self
                .finish(task_run, status, reasons::VALIDATION_FAILED, message, now)
                .await;
        }
        let effective = TaskSpec {
            steps: spec.effective_steps(),
            step_template: None,
            ..spec.clone()
        };
        let context = TaskRunContext {
            task_run_name: key.task_run.clone(),
            namespace: key.namespace.clone(),
            uid: task_run.metadata.uid.clone().unwrap_or_default(),
            task_name: run_spec
                .task_ref
                .as_ref()
                .and_then(|r| r.name.clone())
                .unwrap_or_default(),
            retry_count: key.attempt,
        };
        // Param values as the steps will see them (workspace paths are the
        // declared mount paths here): for the enum check and sub-paths.
        let mut early_values =
            Replacements::for_task(&effective, params.clone(), &run_spec.workspaces, &context);
        if let Err(e) = early_values.resolve_param_values() {
            return self
                .finish(
                    task_run,
                    status,
                    reasons::INVALID_PARAM_VALUE,
                    e.to_string(),
                    now,
                )
                .await;
        }
        // Workspace sub-paths are resolved at task scope (params, context)
        // before the executor places the workspaces.
        let mut workspaces = run_spec.workspaces.clone();
        for (i, binding) in workspaces.iter_mut().enumerate() {
            let Some(sub_path) = &binding.sub_path else {
                continue;
            };
            match early_values.substitute_string(sub_path, &format!("spec.workspaces[{i}].subPath"))
            {
                Ok(resolved) => binding.sub_path = Some(resolved),
                Err(e) => {
                    return self
                        .finish(
                            task_run,
                            status,
                            reasons::VALIDATION_FAILED,
                            e.to_string(),
                            now,
                        )
                        .await;
                }
            }
        }
        let given: Vec<Param> = run_spec
            .params
            .iter()
            .map(|p| Param {
                name: p.name.clone(),
                value: early_values
                    .params
                    .get(&p.name)
                    .cloned()
                    .unwrap_or_else(|| p.value.clone()),
            })
            .collect();
        let enum_errors = validate_param_enums(&spec.params, &given);
        if !enum_errors.is_empty() {
            let message = format!(
                "TaskRun {:?} parameters have invalid values: {}",
                key.task_run,
                enum_errors.via_field("spec")
            );
            return self
                .finish(task_run, status, reasons::INVALID_PARAM_VALUE, message, now)
                .await;
        }
        let paths = match self.executor.paths(&key, &spec, &workspaces) {
            Ok(paths) => paths,
            Err(e) if e.is_permanent() => {
                let message = e.to_string();
                return self
                    .finish(task_run, status, reasons::EXECUTION_FAILED, message, now)
                    .await;
            }
            Err(e) => return Err(e.into()),
        };
        let mut replacements = Replacements::for_task(&effective, params, &workspaces, &context);
        paths.apply_to(&mut replacements);
        // Param values may carry task-scope references down from a
        // pipeline task (`$(context.taskRun.name)`): resolve them first.
        if let Err(e) = replacements.resolve_param_values() {
            return self
                .finish(
                    task_run,
                    status,
                    reasons::INVALID_PARAM_VALUE,
                    e.to_string(),
                    now,
                )
                .await;
        }
        let resolved = match resolve_task_spec(&effective, &replacements) {
            Ok(resolved) => resolved,
            Err(e) => {
                return self
                    .finish(
                        task_run,
                        status,
                        reasons::INVALID_PARAM_VALUE,
                        format!("taskSpec.{e}"),
                        now,
                    )
                    .await;
            }
        };
        let request = ExecutionRequest {
            key: key.clone(),
            task_spec: resolved,
            workspaces,
            timeout: run_spec.timeout_duration(),
        };
        let execution = match self.executor.start(request).await {
            Ok(execution) => execution,
            Err(e) if e.is_permanent() => {
                let message = e.to_string();
                return self
                    .finish(task_run, status, reasons::EXECUTION_FAILED, message, now)
                    .await;
            }
            Err(e) => return Err(e.into()),
        };
        tracing::info!(pod = %execution.current().pod_name, "started attempt");
        self.watch(&key, &execution);
        let observed = execution.current();
        status.start_time = Some(Time(now));
        status.pod_name = Some(observed.pod_name.clone());
        status.steps = step_states(&observed.steps);
        set_succeeded(
            &mut status.status,
            now,
            ConditionStatus::Unknown,
            reasons::RUNNING,
            RUNNING_MESSAGE,
        );
        self.write(task_run, status).await?;
        // The watcher also sees changes made before it started.
        Ok(self.poll_action())
    }

    /// Writes what the executor reports; ends the TaskRun (or retries it)
    /// when the attempt is over.
    async fn observe(
        &self,
        task_run: &TaskRun,
        mut status: TaskRunStatus,
        key: &RunKey,
        observed: ExecutionStatus,
        now: Timestamp,
    ) -> Result<Action, ReconcileError> {
        status.pod_name = Some(observed.pod_name.clone());
        status.steps = step_states(&observed.steps);
        if status.start_time.is_none() {
            status.start_time = time(observed.started_at).or(Some(Time(now)));
        }
        if !observed.phase.is_done() {
            set_succeeded(
                &mut status.status,
                now,
                ConditionStatus::Unknown,
                reasons::RUNNING,
                RUNNING_MESSAGE,
            );
            self.write(task_run, status).await?;
            return Ok(self.poll_action());
        }
        let spec = status.task_spec.clone().unwrap_or_default();
        let (state, reason, message) = match task_run_results(&spec, &observed.results) {
            Err(message) => (ConditionStatus::False, reasons::FAILED.to_owned(), message),
            Ok(results) => {
                status.results = results;
                match (observed.phase, observed.failure) {
                    (ExecutionPhase::Succeeded, _) => (
                        ConditionStatus::True,
                        reasons::SUCCEEDED.to_owned(),
                        SUCCEEDED_MESSAGE.to_owned(),
                    ),
                    (ExecutionPhase::Cancelled, failure) => {
                        let mut message = failure
                            .map(|f| f.message)
                            .unwrap_or_else(|| format!("TaskRun {:?} was cancelled", key.task_run));
                        if let Some(why) = &task_run.spec.status_message {
                            message = format!("{message}. {why}");
                        }
                        (
                            ConditionStatus::False,
                            reasons::CANCELLED.to_owned(),
                            message,
                        )
                    }
                    (phase, Some(failure)) => {
                        tracing::debug!(?phase, "attempt failed");
                        (ConditionStatus::False, failure.reason, failure.message)
                    }
                    (phase, None) => (
                        ConditionStatus::False,
                        reasons::FAILED.to_owned(),
                        format!("the attempt ended {phase:?}"),
                    ),
                }
            }
        };
        tracing::info!(%reason, %message, "attempt ended");
        set_succeeded(&mut status.status, now, state, &reason, message);
        status.completion_time = time(observed.finished_at).or(Some(Time(now)));
        let retries = task_run
            .spec
            .retries
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(0);
        let retry = state == ConditionStatus::False
            && reason != reasons::CANCELLED
            && !task_run.spec.is_cancelled()
            && key.attempt < retries;
        if retry {
            status = archive_attempt(&status, now);
            tracing::info!(attempt = key.attempt + 1, "retrying");
        }
        self.write(task_run, status).await?;
        self.stop_watching(key);
        self.executor.forget(key);
        Ok(Action::await_change())
    }

    async fn reconcile_task_run(&self, task_run: &TaskRun) -> Result<Action, ReconcileError> {
        let now = Timestamp::now();
        let status = task_run.status.clone().unwrap_or_default();
        let attempt = u32::try_from(status.retries_status.len()).unwrap_or(u32::MAX);
        let key = RunKey::new(
            task_run.namespace().unwrap_or_default(),
            task_run.name_any(),
            attempt,
        );
        let execution = self.executor.execution(&key);
        if task_run.metadata.deletion_timestamp.is_some() {
            if let Some(execution) = execution {
                execution.cancel.cancel();
            }
            return Ok(Action::await_change());
        }
        if task_run.is_done() {
            return Ok(Action::await_change());
        }
        let mut status = status;
        status.status.observed_generation = task_run.metadata.generation;
        let Some(execution) = execution else {
            if task_run.spec.is_cancelled() {
                let mut message = format!("TaskRun {:?} was cancelled", key.task_run);
                if let Some(why) = &task_run.spec.status_message {
                    message = format!("{message}. {why}");
                }
                return self
                    .finish(task_run, status, reasons::CANCELLED, message, now)
                    .await;
            }
            if status.start_time.is_some() {
                let message = format!(
                    "the executor has no record of attempt {} (pod {:?}); it may have restarted",
                    key.attempt,
                    status.pod_name.as_deref().unwrap_or_default()
                );
                return self
                    .finish(task_run, status, reasons::EXECUTION_FAILED, message, now)
                    .await;
            }
            return self.start(task_run, status, key, now).await;
        };
        let observed = execution.current();
        if task_run.spec.is_cancelled() && !observed.phase.is_done() {
            tracing::info!("cancelling attempt");
            execution.cancel.cancel();
            self.watch(&key, &execution);
            return Ok(self.poll_action());
        }
        if !observed.phase.is_done() {
            self.watch(&key, &execution);
        }
        self.observe(task_run, status, &key, observed, now).await
    }
}

#[async_trait]
impl Reconciler<TaskRun> for TaskRunReconciler {
    type Error = ReconcileError;

    async fn reconcile(&self, task_run: Arc<TaskRun>) -> Result<Action, ReconcileError> {
        let span = tracing::info_span!(
            "task_run",
            namespace = task_run.namespace().unwrap_or_default(),
            name = task_run.name_any(),
            attempt = task_run
                .status
                .as_ref()
                .map_or(0, |s| s.retries_status.len()),
        );
        self.reconcile_task_run(&task_run).instrument(span).await
    }
}
