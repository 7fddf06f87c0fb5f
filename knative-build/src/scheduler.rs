//! The PipelineRun scheduler as a pure state machine
//! (`specs/BUILD.md §1.7–§1.9`).
//!
//! [`next`] takes everything that decides a PipelineRun's next move — the
//! run, its (resolved) Pipeline spec, the TaskRuns it already has and the
//! current time — and returns a [`Decision`]: TaskRuns to create (with
//! resolved params), retries, cancellations, skipped tasks with upstream's
//! reasons, the `Succeeded` condition and, once the run ends, its results.
//! It reads no clock and performs no IO; the reconciler applies the
//! decision and calls it again when a child changes or `requeue_after`
//! passes.
//!
//! The rules, in the order they apply:
//!
//! 1. A run that has ended stays ended (nothing to do).
//! 2. `spec.status: PipelineRunPending` before the start: Unknown /
//!    `PipelineRunPending`, nothing runs (§1.9).
//! 3. `timeouts.pipeline` passed (measured from `status.startTime`; a
//!    limit is reached when the elapsed time equals it): every running
//!    TaskRun is cancelled, tasks not started are skipped
//!    (`PipelineRun timeout has been reached`), finally does not run;
//!    False / `PipelineRunTimeout` (§1.7).
//! 4. `spec.status: Cancelled`: running TaskRuns are cancelled and nothing
//!    else runs; Unknown / `Cancelled` until they have stopped, then False
//!    / `Cancelled` (§1.9).
//! 5. Tasks in `spec.tasks` run in DAG order ([`Dag`]): a task starts once
//!    every parent has ended. Not-started tasks are skipped, checked in
//!    this order, when the run is stopping (a task failed or was
//!    cancelled), gracefully cancelled, gracefully stopped, a parent was
//!    skipped for another reason than its own `when`, a result it reads
//!    was not produced by a skipped task, its `when` does not hold, or
//!    `timeouts.tasks` passed. A task whose parent was skipped by its own
//!    `when` still runs if it only uses `runAfter` (§1.7).
//! 6. A failed TaskRun with retries left is retried (same name; the
//!    caller archives the attempt in `retriesStatus`), except when it was
//!    cancelled, the run is being cancelled, or its time budget is spent.
//! 7. `finally` tasks all start once every task in `spec.tasks` has ended
//!    (including after `CancelledRunFinally`, `StoppedRunFinally` or a
//!    `timeouts.tasks` expiry); `timeouts.finally` runs from then.
//! 8. The condition is upstream's (§1.8): Unknown / `Running` (or
//!    `PipelineRunStopping`, `CancelledRunningFinally`,
//!    `StoppedRunningFinally`) with
//!    `Tasks Completed: N (Failed: F, Cancelled C), Incomplete: I, Skipped: S`;
//!    at the end True / `Succeeded` or `Completed` (some skipped), or False
//!    / `Failed` (a failure, a TaskRun stopped by a timeout, or a task
//!    skipped by one) or `Cancelled`, with
//!    `Tasks Completed: N (Failed: F, Cancelled C), Skipped: S`, where F
//!    includes failures of `onError: continue` tasks and then reads
//!    `F (Ignored: I)` (such failures do not fail the run).
//!
//! A result a succeeded task did not write fails the run
//! (`InvalidTaskResultReference`) when a `spec.tasks` task reads it, and
//! skips a finally task that reads it (§1.4). Matrix fan-out is not
//! supported: validation rejects a task with a `matrix`.
//!
//! Before anything runs, the run fails when a param has no value
//! (`ParameterMissing`), a value is not in its param's `enum`
//! (`InvalidParamValue`), or a required Pipeline workspace is not bound
//! (`InvalidWorkspaceBindings`). A TaskRun to create gets its pipeline
//! task's params and workspace `subPath`s resolved at pipeline scope, and
//! an embedded `taskSpec` gets the Pipeline's params (those the task does
//! not pass itself) and context propagated into it.
//!
//! ```
//! use jiff::Timestamp;
//! use knative_build::api::{PipelineRun, PipelineRunSpec, PipelineSpec, PipelineTask};
//! use knative_build::scheduler::{PipelineRunState, next};
//!
//! let pipeline = PipelineSpec {
//!     tasks: vec![
//!         PipelineTask::referring("clone", "git-clone"),
//!         PipelineTask { run_after: vec!["clone".into()], ..PipelineTask::referring("build", "build") },
//!     ],
//!     ..PipelineSpec::default()
//! };
//! let run = PipelineRun::new("release-1", PipelineRunSpec::default());
//! let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
//! let decision = next(&PipelineRunState::new(&run, &pipeline, &[], now));
//! assert_eq!(decision.create.len(), 1);
//! assert_eq!(decision.create[0].name, "release-1-clone");
//! assert_eq!(decision.condition.reason, "Running");
//! assert_eq!(
//!     decision.condition.message,
//!     "Tasks Completed: 0 (Failed: 0, Cancelled 0), Incomplete: 2, Skipped: 0"
//! );
//! ```

mod dag;

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use knative_core::apis::names::child_name;
use knative_core::condition::{Condition, ConditionSet, ConditionStatus, SUCCEEDED};
use knative_core::duration::format_go;
use kube::ResourceExt;

pub use dag::{Dag, DagError};

use crate::api::{
    API_VERSION, BuildDefaults, ChildStatusReference, Param, ParamValue, PipelineRun,
    PipelineRunResult, PipelineRunSpecStatus, PipelineRunStatus, PipelineSpec, PipelineTask,
    SkippedTask, SkippingReason, TaskRun, TaskRunResult, TaskRunSpec, TaskRunSpecStatus, TaskSpec,
    WhenExpression, WorkspaceBinding, WorkspacePipelineTaskBinding, all_hold, effective_params,
    labels, pipeline_run_reasons as reasons, task_run_reasons, validate_param_enums,
};
use crate::substitution::{
    ContextVar, Reference, Replacements, Scope, SubstitutionError, WorkspaceValues,
    resolve_task_spec,
};

/// `spec.statusMessage` of a TaskRun cancelled because its PipelineRun was
/// cancelled (upstream's `TaskRunCancelledByPipelineMsg`).
pub const CANCELLED_BY_PIPELINE_RUN: &str =
    "TaskRun cancelled as the PipelineRun it belongs to has been cancelled.";
/// `spec.statusMessage` of a TaskRun cancelled because a PipelineRun
/// timeout passed (upstream's `TaskRunCancelledByPipelineTimeoutMsg`).
pub const CANCELLED_BY_TIMEOUT: &str =
    "TaskRun cancelled as the PipelineRun it belongs to has timed out.";

/// One TaskRun of the PipelineRun, as observed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChildRun {
    /// The TaskRun's name.
    pub name: String,
    /// The pipeline task it runs.
    pub pipeline_task: String,
    /// Its `Succeeded` condition (None before its controller saw it).
    pub succeeded: Option<Condition>,
    /// The results it wrote.
    pub results: Vec<TaskRunResult>,
    /// How many failed attempts were archived in `retriesStatus`.
    pub retries_done: u32,
    /// Whether `spec.status: TaskRunCancelled` was set.
    pub cancel_requested: bool,
    /// Its `spec.statusMessage` (why it was cancelled).
    pub status_message: Option<String>,
}

impl ChildRun {
    /// A child just created: no condition yet.
    pub fn started(name: impl Into<String>, pipeline_task: impl Into<String>) -> Self {
        ChildRun {
            name: name.into(),
            pipeline_task: pipeline_task.into(),
            ..ChildRun::default()
        }
    }

    /// Reads a TaskRun the PipelineRun created; `None` without the
    /// `tekton.dev/pipelineTask` label.
    pub fn from_task_run(task_run: &TaskRun) -> Option<ChildRun> {
        let pipeline_task = task_run.labels().get(labels::PIPELINE_TASK)?.clone();
        let status = task_run.status.as_ref();
        Some(ChildRun {
            name: task_run.name_any(),
            pipeline_task,
            succeeded: task_run.succeeded().cloned(),
            results: status.map(|s| s.results.clone()).unwrap_or_default(),
            retries_done: status
                .map(|s| u32::try_from(s.retries_status.len()).unwrap_or(u32::MAX))
                .unwrap_or(0),
            cancel_requested: task_run.spec.is_cancelled(),
            status_message: task_run.spec.status_message.clone(),
        })
    }

    fn result(&self, name: &str) -> Option<&ParamValue> {
        self.results
            .iter()
            .find(|r| r.name == name)
            .map(|r| &r.value)
    }
}

/// Everything [`next`] decides from.
#[derive(Clone, Debug)]
pub struct PipelineRunState<'a> {
    /// The PipelineRun: metadata, spec and current status.
    pub pipeline_run: &'a PipelineRun,
    /// The Pipeline it runs (from `pipelineRef` or `pipelineSpec`), defaulted.
    pub pipeline: &'a PipelineSpec,
    /// The TaskRuns it already has.
    pub children: &'a [ChildRun],
    /// The current time.
    pub now: Timestamp,
    /// Cluster defaults (the pipeline timeout when unset).
    pub defaults: BuildDefaults,
}

impl<'a> PipelineRunState<'a> {
    /// A state with upstream's defaults.
    pub fn new(
        pipeline_run: &'a PipelineRun,
        pipeline: &'a PipelineSpec,
        children: &'a [ChildRun],
        now: Timestamp,
    ) -> Self {
        PipelineRunState {
            pipeline_run,
            pipeline,
            children,
            now,
            defaults: BuildDefaults::default(),
        }
    }
}

/// Whether a pipeline task is in `spec.tasks` or `spec.finally`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberOf {
    /// `spec.tasks`.
    Tasks,
    /// `spec.finally`.
    Finally,
}

impl MemberOf {
    /// The `tekton.dev/memberOf` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberOf::Tasks => labels::MEMBER_OF_TASKS,
            MemberOf::Finally => labels::MEMBER_OF_FINALLY,
        }
    }
}

/// A TaskRun to create.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTaskRun {
    /// Its name: `<pipelinerun>-<pipelinetask>`, shortened with a hash past 63 characters.
    pub name: String,
    /// The pipeline task.
    pub pipeline_task: String,
    /// `tasks` or `finally`.
    pub member_of: MemberOf,
    /// Params with every pipeline-scope reference resolved.
    pub params: Vec<Param>,
    /// The pipeline task's embedded `taskSpec` with the Pipeline's params
    /// and context propagated into it (pipeline params the task does not
    /// pass itself, `$(context.pipelineRun.*)`, `$(context.pipeline.name)`);
    /// `None` for a `taskRef`.
    pub task_spec: Option<TaskSpec>,
    /// The pipeline task's workspace bindings, `subPath`s resolved at
    /// pipeline scope.
    pub workspaces: Vec<WorkspacePipelineTaskBinding>,
    /// The task's `when` expressions, resolved.
    pub when: Vec<WhenExpression>,
    /// The TaskRun's timeout; `None` for no limit.
    pub timeout: Option<Duration>,
}

/// A failed TaskRun to run again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryTaskRun {
    /// The TaskRun.
    pub name: String,
    /// The pipeline task.
    pub pipeline_task: String,
    /// Which retry this is (1 for the first).
    pub attempt: u32,
}

/// A running TaskRun to cancel (`spec.status: TaskRunCancelled`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CancelTaskRun {
    /// The TaskRun.
    pub name: String,
    /// The pipeline task.
    pub pipeline_task: String,
    /// The `spec.statusMessage` to set: [`CANCELLED_BY_PIPELINE_RUN`] or
    /// [`CANCELLED_BY_TIMEOUT`].
    pub message: &'static str,
}

/// What to do next and what the PipelineRun's status becomes.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// `status.startTime` to set (the run starts now).
    pub start_time: Option<Timestamp>,
    /// `status.finallyStartTime` to set (finally tasks start now).
    pub finally_start_time: Option<Timestamp>,
    /// TaskRuns to create.
    pub create: Vec<NewTaskRun>,
    /// TaskRuns to retry.
    pub retry: Vec<RetryTaskRun>,
    /// TaskRuns to cancel.
    pub cancel: Vec<CancelTaskRun>,
    /// `status.skippedTasks`.
    pub skipped: Vec<SkippedTask>,
    /// The `Succeeded` condition.
    pub condition: Condition,
    /// `status.completionTime` to set (the run ends now).
    pub completion_time: Option<Timestamp>,
    /// `status.results`, once the run has ended.
    pub results: Vec<PipelineRunResult>,
    /// `status.childReferences`.
    pub child_references: Vec<ChildStatusReference>,
    /// When to look again even if no child changes (the next timeout).
    pub requeue_after: Option<Duration>,
}

impl Decision {
    fn with_condition(condition: Condition) -> Self {
        Decision {
            start_time: None,
            finally_start_time: None,
            create: Vec::new(),
            retry: Vec::new(),
            cancel: Vec::new(),
            skipped: Vec::new(),
            condition,
            completion_time: None,
            results: Vec::new(),
            child_references: Vec::new(),
            requeue_after: None,
        }
    }

    /// Whether the run has ended.
    pub fn is_done(&self) -> bool {
        !self.condition.is_unknown()
    }

    /// Writes the decision into a PipelineRun's status at `now`.
    pub fn apply_to(&self, status: &mut PipelineRunStatus, now: Timestamp) {
        if let Some(t) = self.start_time {
            status.start_time = Some(Time(t));
        }
        if let Some(t) = self.finally_start_time {
            status.finally_start_time = Some(Time(t));
        }
        if let Some(t) = self.completion_time {
            status.completion_time = Some(Time(t));
        }
        let set = ConditionSet::batch(&[]);
        set.manage_at(&mut status.status.conditions, Time(now))
            .set(self.condition.clone());
        status.skipped_tasks.clone_from(&self.skipped);
        if self.is_done() {
            status.results.clone_from(&self.results);
        }
        status.child_references.clone_from(&self.child_references);
    }
}

/// Where one pipeline task stands.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    /// Not started, waiting for parents.
    Waiting,
    /// Created now or still running (including a retry).
    Running,
    Succeeded,
    Failed {
        cancelled: bool,
        by_timeout: bool,
        ignored: bool,
    },
    Skipped(SkippingReason, Vec<WhenExpression>),
}

impl Outcome {
    fn is_ended(&self) -> bool {
        matches!(
            self,
            Outcome::Succeeded | Outcome::Failed { .. } | Outcome::Skipped(..)
        )
    }

    /// A failure that stops the run (an `onError: continue` one does not).
    fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failed { ignored: false, .. })
    }

    fn status_text(&self) -> &'static str {
        match self {
            Outcome::Succeeded => "Succeeded",
            Outcome::Failed { .. } => "Failed",
            _ => "None",
        }
    }
}

/// Counts of the tasks, as the condition's message reports them.
#[derive(Default)]
struct Counts {
    succeeded: usize,
    /// Failures that fail the run (including TaskRuns stopped by a timeout).
    failed: usize,
    /// Failures of `onError: continue` tasks.
    ignored: usize,
    cancelled: usize,
    skipped: usize,
    skipped_by_timeout: usize,
    incomplete: usize,
}

impl Counts {
    fn of<'o>(outcomes: impl Iterator<Item = &'o Outcome>) -> Counts {
        let mut c = Counts::default();
        for o in outcomes {
            // Upstream's order: a TaskRun cancelled by a timeout is a
            // failure, any other cancelled one is cancelled, and only then
            // does `onError: continue` make a failure an ignored one.
            match o {
                Outcome::Succeeded => c.succeeded += 1,
                Outcome::Failed {
                    by_timeout: true, ..
                } => c.failed += 1,
                Outcome::Failed {
                    cancelled: true, ..
                } => c.cancelled += 1,
                Outcome::Failed { ignored: true, .. } => c.ignored += 1,
                Outcome::Failed { .. } => c.failed += 1,
                Outcome::Skipped(reason, _) => {
                    c.skipped += 1;
                    if reason.is_timeout() {
                        c.skipped_by_timeout += 1;
                    }
                }
                Outcome::Waiting | Outcome::Running => c.incomplete += 1,
            }
        }
        c
    }

    /// Succeeded, failed (ignored or not) and cancelled tasks.
    fn completed(&self) -> usize {
        self.succeeded + self.failed + self.ignored + self.cancelled
    }

    /// The final message: `Tasks Completed: N (Failed: F, Cancelled C),
    /// Skipped: S`, where F counts ignored failures too and, when there
    /// are some, reads `F (Ignored: I)`.
    fn final_message(&self) -> String {
        let failed = self.failed + self.ignored;
        let failed = if self.ignored > 0 {
            format!("{failed} (Ignored: {})", self.ignored)
        } else {
            failed.to_string()
        };
        format!(
            "Tasks Completed: {} (Failed: {failed}, Cancelled {}), Skipped: {}",
            self.completed(),
            self.cancelled,
            self.skipped
        )
    }
}

/// Timing facts of the run at `now`.
struct Clock {
    now: Timestamp,
    pipeline_deadline: Option<Timestamp>,
    tasks_deadline: Option<Timestamp>,
    finally_deadline: Option<Timestamp>,
    pipeline_timeout: Option<Duration>,
    tasks_timeout: Option<Duration>,
    finally_timeout: Option<Duration>,
    start: Timestamp,
    finally_start: Option<Timestamp>,
}

fn add(t: Timestamp, d: Duration) -> Option<Timestamp> {
    let d = jiff::SignedDuration::try_from(d).ok()?;
    t.checked_add(d).ok()
}

fn since(later: Timestamp, earlier: Timestamp) -> Duration {
    let nanos = later
        .as_nanosecond()
        .saturating_sub(earlier.as_nanosecond());
    Duration::from_nanos(u64::try_from(nanos.max(0)).unwrap_or(u64::MAX))
}

impl Clock {
    fn passed(&self, deadline: Option<Timestamp>) -> bool {
        deadline.is_some_and(|d| self.now >= d)
    }

    fn pipeline_timed_out(&self) -> bool {
        self.passed(self.pipeline_deadline)
    }

    fn tasks_timed_out(&self) -> bool {
        self.passed(self.tasks_deadline)
    }

    fn finally_timed_out(&self) -> bool {
        self.passed(self.finally_deadline)
    }

    /// The timeout of a TaskRun created now: what is left of its budget
    /// (`tasks`/`finally`, else `pipeline`), capped by the task's own.
    fn task_run_timeout(&self, task: &PipelineTask, member_of: MemberOf) -> Option<Duration> {
        let (budget, from) = match member_of {
            MemberOf::Tasks => match self.tasks_timeout {
                Some(t) => (Some(t), self.start),
                None => (self.pipeline_timeout, self.start),
            },
            MemberOf::Finally => match self.finally_timeout {
                Some(t) => (Some(t), self.finally_start.unwrap_or(self.now)),
                None => (self.pipeline_timeout, self.start),
            },
        };
        let own = task.timeout_duration();
        match budget {
            None => own,
            Some(budget) => {
                let left = budget
                    .saturating_sub(since(self.now, from))
                    .max(Duration::from_secs(1));
                Some(own.map_or(left, |o| o.min(left)))
            }
        }
    }

    fn requeue_after(&self) -> Option<Duration> {
        [
            self.pipeline_deadline,
            self.tasks_deadline,
            self.finally_deadline,
        ]
        .into_iter()
        .flatten()
        .filter(|d| *d > self.now)
        .map(|d| since(d, self.now))
        .min()
    }
}

fn condition(status: ConditionStatus, reason: &str, message: String) -> Condition {
    Condition::new(SUCCEEDED, status).with_reason(reason, message)
}

/// Decides the PipelineRun's next move. See the module docs for the rules.
pub fn next(state: &PipelineRunState<'_>) -> Decision {
    Scheduler::new(state).decide()
}

struct Scheduler<'s, 'a> {
    state: &'s PipelineRunState<'a>,
    name: String,
    children: BTreeMap<&'s str, &'s ChildRun>,
}

impl<'s, 'a> Scheduler<'s, 'a> {
    fn new(state: &'s PipelineRunState<'a>) -> Self {
        let name = state.pipeline_run.name_any();
        let mut children: BTreeMap<&str, &ChildRun> = BTreeMap::new();
        for child in state.children {
            let expected = child_name(&name, &format!("-{}", child.pipeline_task));
            let keep = children
                .get(child.pipeline_task.as_str())
                .is_none_or(|old| old.name != expected);
            if keep {
                children.insert(child.pipeline_task.as_str(), child);
            }
        }
        Scheduler {
            state,
            name,
            children,
        }
    }

    fn run_status(&self) -> Option<&PipelineRunStatus> {
        self.state.pipeline_run.status.as_ref()
    }

    fn decide(&self) -> Decision {
        let pr = self.state.pipeline_run;
        if let Some(c) = pr.succeeded()
            && !c.is_unknown()
        {
            let mut d = Decision::with_condition(c.clone());
            if let Some(status) = self.run_status() {
                d.skipped.clone_from(&status.skipped_tasks);
                d.results.clone_from(&status.results);
                d.child_references.clone_from(&status.child_references);
            }
            return d;
        }
        let start = self
            .run_status()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0);
        let spec_status = pr.spec.status;
        if spec_status == Some(PipelineRunSpecStatus::PipelineRunPending) && start.is_none() {
            return Decision::with_condition(condition(
                ConditionStatus::Unknown,
                reasons::PENDING,
                format!("PipelineRun \"{}\" is pending", self.name),
            ));
        }
        let mut decision = self.evaluate(start);
        if start.is_none() {
            decision.start_time = Some(self.state.now);
        }
        if decision.is_done() {
            decision.completion_time = Some(self.state.now);
            decision.requeue_after = None;
        }
        decision
    }

    fn clock(&self, start: Timestamp) -> Clock {
        let spec = &self.state.pipeline_run.spec;
        let pipeline_timeout = spec.pipeline_timeout(&self.state.defaults);
        let tasks_timeout = spec.tasks_timeout();
        let finally_timeout = spec.finally_timeout();
        let finally_start = self
            .run_status()
            .and_then(|s| s.finally_start_time.as_ref())
            .map(|t| t.0);
        Clock {
            now: self.state.now,
            pipeline_deadline: pipeline_timeout.and_then(|t| add(start, t)),
            tasks_deadline: tasks_timeout.and_then(|t| add(start, t)),
            finally_deadline: finally_start.and_then(|f| finally_timeout.and_then(|t| add(f, t))),
            pipeline_timeout,
            tasks_timeout,
            finally_timeout,
            start,
            finally_start,
        }
    }

    /// Cancels every child that has not ended and was not already asked to stop.
    fn cancel_running<'t>(
        &self,
        tasks: impl Iterator<Item = &'t PipelineTask>,
        message: &'static str,
    ) -> Vec<CancelTaskRun> {
        tasks
            .filter_map(|t| self.children.get(t.name.as_str()))
            .filter(|c| {
                !c.cancel_requested && c.succeeded.as_ref().is_none_or(Condition::is_unknown)
            })
            .map(|c| CancelTaskRun {
                name: c.name.clone(),
                pipeline_task: c.pipeline_task.clone(),
                message,
            })
            .collect()
    }

    fn all_tasks(&self) -> impl Iterator<Item = &PipelineTask> {
        self.state
            .pipeline
            .tasks
            .iter()
            .chain(&self.state.pipeline.finally)
    }

    /// A terminal failure of the whole run: running children are cancelled.
    fn fail(&self, reason: &str, message: String) -> Decision {
        let mut d = Decision::with_condition(condition(ConditionStatus::False, reason, message));
        d.cancel = self.cancel_running(self.all_tasks(), CANCELLED_BY_PIPELINE_RUN);
        d.child_references = self.child_references(&[]);
        d
    }

    fn evaluate(&self, start: Option<Timestamp>) -> Decision {
        let now = self.state.now;
        let clock = self.clock(start.unwrap_or(now));
        let pipeline = self.state.pipeline;
        let spec = &self.state.pipeline_run.spec;

        if clock.pipeline_timed_out() {
            let mut d = Decision::with_condition(condition(
                ConditionStatus::False,
                reasons::TIMED_OUT,
                format!(
                    "PipelineRun \"{}\" failed to finish within \"{}\"",
                    self.name,
                    format_go(clock.pipeline_timeout.unwrap_or_default())
                ),
            ));
            d.cancel = self.cancel_running(self.all_tasks(), CANCELLED_BY_TIMEOUT);
            d.skipped = self
                .all_tasks()
                .filter(|t| !self.children.contains_key(t.name.as_str()))
                .map(|t| SkippedTask {
                    name: t.name.clone(),
                    reason: SkippingReason::PipelineTimedOut,
                    when_expressions: Vec::new(),
                })
                .collect();
            d.child_references = self.child_references(&[]);
            d.results = self.pipeline_results(&self.replacements(&BTreeMap::new(), None));
            return d;
        }

        if spec.status == Some(PipelineRunSpecStatus::Cancelled) {
            let stopping = self
                .children
                .values()
                .any(|c| c.succeeded.as_ref().is_none_or(Condition::is_unknown));
            let status = if stopping {
                ConditionStatus::Unknown
            } else {
                ConditionStatus::False
            };
            let mut d = Decision::with_condition(condition(
                status,
                reasons::CANCELLED,
                format!("PipelineRun \"{}\" was cancelled", self.name),
            ));
            d.cancel = self.cancel_running(self.all_tasks(), CANCELLED_BY_PIPELINE_RUN);
            d.child_references = self.child_references(&[]);
            return d;
        }

        let dag = match Dag::build(pipeline) {
            Ok(dag) => dag,
            Err(e) => return self.fail(reasons::INVALID_GRAPH, e.to_string()),
        };
        let (params, missing) = effective_params(&pipeline.params, &spec.params);
        if !missing.is_empty() {
            return self.fail(
                reasons::PARAMETER_MISSING,
                format!(
                    "PipelineRun \"{}\" gives no value for params without a default: {}",
                    self.name,
                    missing.join(", ")
                ),
            );
        }
        let enum_errors = validate_param_enums(&pipeline.params, &spec.params);
        if !enum_errors.is_empty() {
            return self.fail(
                reasons::INVALID_PARAM_VALUE,
                format!(
                    "PipelineRun \"{}\" parameters have invalid values: {}",
                    self.name,
                    enum_errors.via_field("spec")
                ),
            );
        }
        if let Some(missing) = pipeline
            .workspaces
            .iter()
            .filter(|w| !w.optional.unwrap_or(false))
            .find(|w| !spec.workspaces.iter().any(|b| b.name == w.name))
        {
            return self.fail(
                reasons::INVALID_WORKSPACE_BINDINGS,
                format!(
                    "PipelineRun \"{}\" doesn't bind Pipeline \"{}\"'s Workspaces correctly: \
                     pipeline requires workspace with name \"{}\" be provided by pipelinerun",
                    self.name,
                    self.pipeline_name(),
                    missing.name
                ),
            );
        }
        match self.schedule(&dag, params, &clock) {
            Ok(d) => d,
            Err((reason, message)) => self.fail(reason, message),
        }
    }

    /// The outcome of a task that has a child, and a retry if one is due.
    fn child_outcome(
        &self,
        task: &PipelineTask,
        child: &ChildRun,
        retry_allowed: bool,
    ) -> (Outcome, Option<RetryTaskRun>) {
        let Some(c) = child.succeeded.as_ref().filter(|c| !c.is_unknown()) else {
            return (Outcome::Running, None);
        };
        if c.is_true() {
            return (Outcome::Succeeded, None);
        }
        let cancelled = child.cancel_requested || c.reason == task_run_reasons::CANCELLED;
        if !cancelled && retry_allowed && child.retries_done < task.retries() {
            let retry = RetryTaskRun {
                name: child.name.clone(),
                pipeline_task: child.pipeline_task.clone(),
                attempt: child.retries_done + 1,
            };
            return (Outcome::Running, Some(retry));
        }
        (
            Outcome::Failed {
                cancelled,
                by_timeout: child.status_message.as_deref() == Some(CANCELLED_BY_TIMEOUT),
                ignored: task.continues_on_error(),
            },
            None,
        )
    }

    /// Pipeline-scope values given the outcomes so far.
    fn replacements(
        &self,
        outcomes: &BTreeMap<String, Outcome>,
        params: Option<&BTreeMap<String, ParamValue>>,
    ) -> Replacements {
        let pipeline = self.state.pipeline;
        let pr = self.state.pipeline_run;
        let mut r = Replacements::pipeline();
        if let Some(params) = params {
            r.params.clone_from(params);
        } else {
            r.params = effective_params(&pipeline.params, &pr.spec.params).0;
        }
        for task in &pipeline.tasks {
            r.tasks.insert(task.name.clone());
            let outcome = outcomes.get(&task.name).unwrap_or(&Outcome::Waiting);
            r.task_statuses
                .insert(task.name.clone(), outcome.status_text().to_owned());
            if let Some(child) = self.children.get(task.name.as_str()) {
                let results = child
                    .results
                    .iter()
                    .map(|res| (res.name.clone(), res.value.clone()))
                    .collect();
                r.task_results.insert(task.name.clone(), results);
                let reason = child
                    .succeeded
                    .as_ref()
                    .map(|c| c.reason.clone())
                    .unwrap_or_default();
                r.task_reasons.insert(task.name.clone(), reason);
            } else {
                r.task_reasons.insert(task.name.clone(), String::new());
            }
        }
        for task in &pipeline.finally {
            r.tasks.insert(task.name.clone());
            if let Some(child) = self.children.get(task.name.as_str()) {
                let results = child
                    .results
                    .iter()
                    .map(|res| (res.name.clone(), res.value.clone()))
                    .collect();
                r.finally_results.insert(task.name.clone(), results);
            }
        }
        let dag_outcomes: Vec<&Outcome> = pipeline
            .tasks
            .iter()
            .map(|t| outcomes.get(&t.name).unwrap_or(&Outcome::Waiting))
            .collect();
        let aggregate = if !dag_outcomes.iter().all(|o| o.is_ended()) {
            "None"
        } else if dag_outcomes
            .iter()
            .any(|o| matches!(o, Outcome::Failed { .. }))
        {
            "Failed"
        } else if dag_outcomes
            .iter()
            .any(|o| matches!(o, Outcome::Skipped(..)))
        {
            "Completed"
        } else {
            "Succeeded"
        };
        r.tasks_status = Some(aggregate.to_owned());
        for ws in &pipeline.workspaces {
            let bound = pr.spec.workspaces.iter().any(|b| b.name == ws.name);
            r.workspaces.insert(
                ws.name.clone(),
                WorkspaceValues {
                    bound,
                    ..WorkspaceValues::default()
                },
            );
        }
        for binding in &pr.spec.workspaces {
            r.workspaces
                .entry(binding.name.clone())
                .or_insert(WorkspaceValues {
                    bound: true,
                    ..WorkspaceValues::default()
                });
        }
        let c = &mut r.context;
        c.insert(ContextVar::PipelineRunName, self.name.clone());
        c.insert(
            ContextVar::PipelineRunNamespace,
            pr.namespace().unwrap_or_default(),
        );
        c.insert(
            ContextVar::PipelineRunUid,
            pr.metadata.uid.clone().unwrap_or_default(),
        );
        c.insert(ContextVar::PipelineName, self.pipeline_name());
        r
    }

    fn pipeline_name(&self) -> String {
        let pr = self.state.pipeline_run;
        pr.spec
            .pipeline_ref
            .as_ref()
            .and_then(|r| r.name.clone())
            .unwrap_or_else(|| self.name.clone())
    }

    /// Whether a task reads a result that its producer cannot give: the
    /// producer was skipped or failed, or ended without writing it.
    /// `Err` when a succeeded producer did not write it.
    fn missing_results(
        &self,
        task: &PipelineTask,
        outcomes: &BTreeMap<String, Outcome>,
    ) -> Result<bool, String> {
        for reference in crate::substitution::pipeline_task_references(task) {
            let Reference::TaskResult {
                task: producer,
                result,
                ..
            } = &reference
            else {
                continue;
            };
            let written = self
                .children
                .get(producer.as_str())
                .is_some_and(|c| c.result(result).is_some());
            if written {
                continue;
            }
            match outcomes.get(producer) {
                Some(Outcome::Succeeded) => {
                    return Err(format!(
                        "task {:?} reads $({reference}), but task {producer:?} succeeded without writing result {result:?}",
                        task.name
                    ));
                }
                Some(_) | None => return Ok(true),
            }
        }
        Ok(false)
    }

    /// Resolves a task's `when`; `Ok(None)` when it holds.
    fn when_skip(
        &self,
        task: &PipelineTask,
        r: &Replacements,
        field: &str,
    ) -> Result<Option<Vec<WhenExpression>>, (&'static str, String)> {
        if task.when.is_empty() {
            return Ok(None);
        }
        let resolved = task
            .when
            .iter()
            .enumerate()
            .map(|(i, w)| r.substitute_when(w, &format!("{field}.when[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(substitution_failure)?;
        match all_hold(&resolved) {
            Some(true) => Ok(None),
            Some(false) => Ok(Some(resolved)),
            None => Err((
                reasons::CEL_EVALUATION_FAILED,
                format!(
                    "task {:?}: a `cel` when expression can only be `true` or `false` here",
                    task.name
                ),
            )),
        }
    }

    fn new_task_run(
        &self,
        task: &PipelineTask,
        member_of: MemberOf,
        field: &str,
        r: &Replacements,
        when: Vec<WhenExpression>,
        clock: &Clock,
    ) -> Result<NewTaskRun, (&'static str, String)> {
        let mut r = r.clone();
        r.context
            .insert(ContextVar::PipelineTaskRetries, task.retries().to_string());
        let params = task
            .params
            .iter()
            .enumerate()
            .map(|(j, p)| {
                r.substitute_value(&p.value, &format!("{field}.params[{j}].value"))
                    .map(|value| Param {
                        name: p.name.clone(),
                        value,
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(substitution_failure)?;
        let workspaces = task
            .workspaces
            .iter()
            .enumerate()
            .map(|(j, b)| {
                let sub_path = b
                    .sub_path
                    .as_deref()
                    .map(|p| r.substitute_string(p, &format!("{field}.workspaces[{j}].subPath")))
                    .transpose()?;
                Ok(WorkspacePipelineTaskBinding {
                    sub_path,
                    ..b.clone()
                })
            })
            .collect::<Result<Vec<_>, SubstitutionError>>()
            .map_err(substitution_failure)?;
        let task_spec = task
            .task_spec
            .as_ref()
            .map(|embedded| {
                resolve_task_spec(&embedded.spec, &propagated(task, &r)).map_err(|e| {
                    let (reason, message) = substitution_failure(e);
                    (reason, format!("{field}.taskSpec.{message}"))
                })
            })
            .transpose()?;
        Ok(NewTaskRun {
            name: child_name(&self.name, &format!("-{}", task.name)),
            pipeline_task: task.name.clone(),
            member_of,
            params,
            task_spec,
            workspaces,
            when,
            timeout: clock.task_run_timeout(task, member_of),
        })
    }

    fn schedule(
        &self,
        dag: &Dag,
        params: BTreeMap<String, ParamValue>,
        clock: &Clock,
    ) -> Result<Decision, (&'static str, String)> {
        let pipeline = self.state.pipeline;
        let spec_status = self.state.pipeline_run.spec.status;
        let graceful_cancel = spec_status == Some(PipelineRunSpecStatus::CancelledRunFinally);
        let graceful_stop = spec_status == Some(PipelineRunSpecStatus::StoppedRunFinally);
        let tasks_timed_out = clock.tasks_timed_out();

        let mut decision =
            Decision::with_condition(Condition::new(SUCCEEDED, ConditionStatus::Unknown));
        let mut outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
        let by_name: BTreeMap<&str, (usize, &PipelineTask)> = pipeline
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), (i, t)))
            .collect();

        // Tasks that have a TaskRun.
        for task in &pipeline.tasks {
            if let Some(child) = self.children.get(task.name.as_str()) {
                let retry_allowed = !graceful_cancel && !tasks_timed_out;
                let (outcome, retry) = self.child_outcome(task, child, retry_allowed);
                decision.retry.extend(retry);
                outcomes.insert(task.name.clone(), outcome);
            }
        }
        if graceful_cancel {
            decision
                .cancel
                .extend(self.cancel_running(pipeline.tasks.iter(), CANCELLED_BY_PIPELINE_RUN));
        }
        if tasks_timed_out {
            decision
                .cancel
                .extend(self.cancel_running(pipeline.tasks.iter(), CANCELLED_BY_TIMEOUT));
        }
        let stopping = outcomes.values().any(Outcome::is_failure);

        // Tasks without one, parents first.
        let mut creates: Vec<(usize, NewTaskRun)> = Vec::new();
        for name in dag.order() {
            if outcomes.contains_key(name) {
                continue;
            }
            let Some(&(index, task)) = by_name.get(name.as_str()) else {
                continue;
            };
            let field = format!("tasks[{index}]");
            let parents: Vec<&Outcome> = dag
                .parents(name)
                .map(|p| outcomes.get(p).unwrap_or(&Outcome::Waiting))
                .collect();
            let skip = |reason| Outcome::Skipped(reason, Vec::new());
            let outcome = if stopping {
                skip(SkippingReason::Stopping)
            } else if graceful_cancel {
                skip(SkippingReason::GracefullyCancelled)
            } else if graceful_stop {
                skip(SkippingReason::GracefullyStopped)
            } else if parents.iter().any(|p| {
                matches!(p, Outcome::Skipped(reason, _) if *reason != SkippingReason::WhenExpressions)
            }) {
                skip(SkippingReason::ParentTasks)
            } else if !parents.iter().all(|p| p.is_ended()) {
                Outcome::Waiting
            } else if self
                .missing_results(task, &outcomes)
                .map_err(|m| (reasons::INVALID_TASK_RESULT_REFERENCE, m))?
            {
                skip(SkippingReason::MissingResults)
            } else {
                let r = self.replacements(&outcomes, Some(&params));
                match self.when_skip(task, &r, &field)? {
                    Some(resolved) => Outcome::Skipped(SkippingReason::WhenExpressions, resolved),
                    None if tasks_timed_out => skip(SkippingReason::TasksTimedOut),
                    None => {
                        let when = task
                            .when
                            .iter()
                            .map(|w| r.substitute_when(w, &field))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(substitution_failure)?;
                        creates.push((
                            index,
                            self.new_task_run(task, MemberOf::Tasks, &field, &r, when, clock)?,
                        ));
                        Outcome::Running
                    }
                }
            };
            outcomes.insert(name.clone(), outcome);
        }
        creates.sort_by_key(|(i, _)| *i);
        decision.create.extend(creates.into_iter().map(|(_, c)| c));

        // Finally tasks, once every DAG task has ended.
        let dag_done = pipeline
            .tasks
            .iter()
            .all(|t| outcomes.get(&t.name).is_some_and(Outcome::is_ended));
        let mut finally_outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
        if dag_done && !pipeline.finally.is_empty() {
            let finally_timed_out = clock.finally_timed_out();
            if clock.finally_start.is_none() {
                decision.finally_start_time = Some(clock.now);
            }
            if finally_timed_out {
                decision
                    .cancel
                    .extend(self.cancel_running(pipeline.finally.iter(), CANCELLED_BY_TIMEOUT));
            }
            let r = self.replacements(&outcomes, Some(&params));
            for (index, task) in pipeline.finally.iter().enumerate() {
                let field = format!("finally[{index}]");
                let outcome = if let Some(child) = self.children.get(task.name.as_str()) {
                    let (outcome, retry) = self.child_outcome(task, child, !finally_timed_out);
                    decision.retry.extend(retry);
                    outcome
                } else if finally_timed_out {
                    Outcome::Skipped(SkippingReason::FinallyTimedOut, Vec::new())
                } else if self.missing_results(task, &outcomes).unwrap_or(true) {
                    Outcome::Skipped(SkippingReason::MissingResults, Vec::new())
                } else {
                    match self.when_skip(task, &r, &field)? {
                        Some(resolved) => {
                            Outcome::Skipped(SkippingReason::WhenExpressions, resolved)
                        }
                        None => {
                            let when = task
                                .when
                                .iter()
                                .map(|w| r.substitute_when(w, &field))
                                .collect::<Result<Vec<_>, _>>()
                                .map_err(substitution_failure)?;
                            decision.create.push(self.new_task_run(
                                task,
                                MemberOf::Finally,
                                &field,
                                &r,
                                when,
                                clock,
                            )?);
                            Outcome::Running
                        }
                    }
                };
                finally_outcomes.insert(task.name.clone(), outcome);
            }
        }

        // Skipped tasks, in spec order.
        for task in pipeline.tasks.iter().chain(&pipeline.finally) {
            let outcome = outcomes
                .get(&task.name)
                .or(finally_outcomes.get(&task.name));
            if let Some(Outcome::Skipped(reason, when)) = outcome {
                decision.skipped.push(SkippedTask {
                    name: task.name.clone(),
                    reason: *reason,
                    when_expressions: when.clone(),
                });
            }
        }

        let all: Vec<&Outcome> = pipeline
            .tasks
            .iter()
            .map(|t| outcomes.get(&t.name).unwrap_or(&Outcome::Waiting))
            .chain(
                pipeline
                    .finally
                    .iter()
                    .map(|t| finally_outcomes.get(&t.name).unwrap_or(&Outcome::Waiting)),
            )
            .collect();
        let counts = Counts::of(all.into_iter());
        let finally_done = pipeline
            .finally
            .iter()
            .all(|t| finally_outcomes.get(&t.name).is_some_and(Outcome::is_ended));
        decision.condition = self.condition(&counts, graceful_cancel, graceful_stop, finally_done);
        decision.child_references = self.child_references(&decision.create);
        if decision.is_done() {
            let mut all_outcomes = outcomes;
            all_outcomes.extend(finally_outcomes);
            decision.results =
                self.pipeline_results(&self.replacements(&all_outcomes, Some(&params)));
        } else {
            decision.requeue_after = clock.requeue_after();
        }
        Ok(decision)
    }

    fn condition(
        &self,
        s: &Counts,
        graceful_cancel: bool,
        graceful_stop: bool,
        finally_done: bool,
    ) -> Condition {
        if s.incomplete == 0 {
            let mut status = ConditionStatus::True;
            let mut reason = if s.skipped > 0 {
                reasons::COMPLETED
            } else {
                reasons::SUCCEEDED
            };
            let mut message = s.final_message();
            if s.failed > 0 || s.skipped_by_timeout > 0 {
                status = ConditionStatus::False;
                reason = reasons::FAILED;
            } else if graceful_cancel || graceful_stop {
                status = ConditionStatus::False;
                reason = reasons::CANCELLED;
                message = format!("PipelineRun \"{}\" was cancelled", self.name);
            } else if s.cancelled > 0 {
                status = ConditionStatus::False;
                reason = reasons::CANCELLED;
            }
            return condition(status, reason, message);
        }
        let reason = if graceful_cancel {
            reasons::CANCELLED_RUNNING_FINALLY
        } else if graceful_stop {
            reasons::STOPPED_RUNNING_FINALLY
        } else if s.cancelled > 0 || (s.failed > 0 && finally_done) {
            reasons::STOPPING
        } else {
            reasons::RUNNING
        };
        condition(
            ConditionStatus::Unknown,
            reason,
            format!(
                "Tasks Completed: {} (Failed: {}, Cancelled {}), Incomplete: {}, Skipped: {}",
                s.completed(),
                s.failed,
                s.cancelled,
                s.incomplete,
                s.skipped
            ),
        )
    }

    /// Pipeline results that resolve; results reading a missing task
    /// result are left out.
    fn pipeline_results(&self, r: &Replacements) -> Vec<PipelineRunResult> {
        self.state
            .pipeline
            .results
            .iter()
            .enumerate()
            .filter_map(|(i, result)| {
                r.substitute_value(&result.value, &format!("results[{i}].value"))
                    .ok()
                    .map(|value| PipelineRunResult {
                        name: result.name.clone(),
                        value,
                    })
            })
            .collect()
    }

    /// `status.childReferences`: the existing children (keeping the `when`
    /// recorded when they were made) and the ones created now.
    fn child_references(&self, created: &[NewTaskRun]) -> Vec<ChildStatusReference> {
        let recorded: Vec<ChildStatusReference> = self
            .run_status()
            .map(|s| s.child_references.clone())
            .unwrap_or_default();
        let mut refs: Vec<ChildStatusReference> = Vec::new();
        let reference = |name: &str, task: &str, when: Vec<WhenExpression>| ChildStatusReference {
            api_version: Some(API_VERSION.to_owned()),
            kind: Some("TaskRun".to_owned()),
            name: name.to_owned(),
            display_name: self
                .state
                .pipeline
                .task(task)
                .and_then(|t| t.display_name.clone()),
            pipeline_task_name: task.to_owned(),
            when_expressions: when,
        };
        for child in self.state.children {
            match recorded.iter().find(|r| r.name == child.name) {
                Some(r) => refs.push(r.clone()),
                None => refs.push(reference(&child.name, &child.pipeline_task, Vec::new())),
            }
        }
        for new in created {
            refs.push(reference(&new.name, &new.pipeline_task, new.when.clone()));
        }
        refs
    }
}

fn substitution_failure(e: SubstitutionError) -> (&'static str, String) {
    let reason = match e {
        SubstitutionError::MissingResult { .. } => reasons::INVALID_TASK_RESULT_REFERENCE,
        _ => reasons::INVALID_PARAM_VALUE,
    };
    (reason, e.to_string())
}

/// The values a Pipeline hands into a pipeline task's embedded `taskSpec`
/// (upstream's propagated params): the run's params, except those the
/// pipeline task passes itself (its own params take precedence and are the
/// Task's to substitute), and the pipeline-level context. Every other
/// reference is left for the TaskRun.
fn propagated(task: &PipelineTask, r: &Replacements) -> Replacements {
    let mut params = r.params.clone();
    for given in &task.params {
        params.remove(&given.name);
    }
    Replacements {
        scope: Scope::Partial,
        params,
        context: r.context.clone(),
        ..Replacements::default()
    }
}

/// Joins two sub-paths with `/`, skipping empty ones.
fn join_sub_path(outer: Option<&str>, inner: Option<&str>) -> Option<String> {
    let parts: Vec<&str> = [outer, inner]
        .into_iter()
        .flatten()
        .map(|p| p.trim_matches('/'))
        .filter(|p| !p.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

impl NewTaskRun {
    /// The TaskRun to create: labels linking it to the run, an owner
    /// reference, the pipeline task's Task (its embedded spec with the
    /// Pipeline's params propagated), resolved params, the run's
    /// workspaces mapped to the Task's names (an unbound optional Pipeline
    /// workspace is left out), ServiceAccount, pod template and timeout
    /// (`0s` for none).
    pub fn to_task_run(&self, pipeline_run: &PipelineRun, pipeline: &PipelineSpec) -> TaskRun {
        let task = pipeline.task(&self.pipeline_task);
        let mut labels_map = pipeline_run.labels().clone();
        labels_map.insert(labels::PIPELINE_RUN.to_owned(), pipeline_run.name_any());
        if let Some(uid) = &pipeline_run.metadata.uid {
            labels_map.insert(labels::PIPELINE_RUN_UID.to_owned(), uid.clone());
        }
        let pipeline_name = pipeline_run
            .spec
            .pipeline_ref
            .as_ref()
            .and_then(|r| r.name.clone())
            .unwrap_or_else(|| pipeline_run.name_any());
        labels_map.insert(labels::PIPELINE.to_owned(), pipeline_name);
        labels_map.insert(labels::PIPELINE_TASK.to_owned(), self.pipeline_task.clone());
        labels_map.insert(
            labels::MEMBER_OF.to_owned(),
            self.member_of.as_str().to_owned(),
        );
        if let Some(name) = task
            .and_then(|t| t.task_ref.as_ref())
            .and_then(|r| r.name.clone())
        {
            labels_map.insert(labels::TASK.to_owned(), name);
        }
        let mut annotations = pipeline_run.annotations().clone();
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        if let Some(meta) = task
            .and_then(|t| t.task_spec.as_ref())
            .and_then(|e| e.metadata.as_ref())
        {
            labels_map.extend(meta.labels.clone());
            annotations.extend(meta.annotations.clone());
        }
        let owner = pipeline_run
            .metadata
            .uid
            .as_ref()
            .map(|uid| OwnerReference {
                api_version: API_VERSION.to_owned(),
                kind: "PipelineRun".to_owned(),
                name: pipeline_run.name_any(),
                uid: uid.clone(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            });
        let workspaces = self
            .workspaces
            .iter()
            .filter_map(|b| {
                let bound = pipeline_run
                    .spec
                    .workspaces
                    .iter()
                    .find(|w| w.name == b.pipeline_workspace())?;
                Some(WorkspaceBinding {
                    name: b.name.clone(),
                    sub_path: join_sub_path(bound.sub_path.as_deref(), b.sub_path.as_deref()),
                    ..bound.clone()
                })
            })
            .collect();
        let run_spec = pipeline_run
            .spec
            .task_run_specs
            .iter()
            .find(|s| s.pipeline_task_name == self.pipeline_task);
        let spec = TaskRunSpec {
            params: self.params.clone(),
            service_account_name: pipeline_run
                .spec
                .service_account_for(&self.pipeline_task)
                .map(str::to_owned),
            task_ref: task.and_then(|t| t.task_ref.clone()),
            task_spec: self.task_spec.clone(),
            timeout: Some(format_go(self.timeout.unwrap_or_default())),
            pod_template: run_spec
                .and_then(|s| s.pod_template.clone())
                .or_else(|| pipeline_run.spec.task_run_template.pod_template.clone()),
            compute_resources: run_spec.and_then(|s| s.compute_resources.clone()),
            workspaces,
            ..TaskRunSpec::default()
        };
        TaskRun {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: pipeline_run.namespace(),
                labels: Some(labels_map),
                annotations: (!annotations.is_empty()).then_some(annotations),
                owner_references: owner.map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            spec,
            status: None,
        }
    }
}

impl CancelTaskRun {
    /// Marks a TaskRun spec as cancelled with this message.
    pub fn apply_to(&self, spec: &mut TaskRunSpec) {
        spec.status = Some(TaskRunSpecStatus::TaskRunCancelled);
        spec.status_message = Some(self.message.to_owned());
    }
}

#[cfg(test)]
mod tests;
