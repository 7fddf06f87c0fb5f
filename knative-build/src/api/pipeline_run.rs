//! `PipelineRun`: one execution of a Pipeline, with timeouts,
//! cancellation and its status (`specs/BUILD.md §1.1`, §1.7–§1.9).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use knative_core::apis::names::validate_dns1123_subdomain;
use knative_core::apis::{Context, FieldError, SetDefaults, Validate};
use knative_core::condition::{Condition, SUCCEEDED, Status};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::param::{Param, validate_params};
use super::pipeline::PipelineSpec;
use super::result::PipelineRunResult;
use super::task::Propagated;
use super::when::WhenExpression;
use super::workspace::{WorkspaceBinding, validate_workspace_bindings};
use super::{BuildDefaults, validate_duration};

/// Reasons of a PipelineRun's `Succeeded` condition (`specs/BUILD.md §1.8`).
pub mod reasons {
    /// Unknown: the run was just picked up.
    pub const STARTED: &str = "Started";
    /// Unknown: tasks are running or left to run.
    pub const RUNNING: &str = "Running";
    /// Unknown: `spec.status: PipelineRunPending`; nothing runs yet.
    pub const PENDING: &str = "PipelineRunPending";
    /// Unknown: a task failed or was cancelled; nothing new is scheduled
    /// and the run ends when the running tasks do.
    pub const STOPPING: &str = "PipelineRunStopping";
    /// Unknown: `CancelledRunFinally` asked for; finally tasks are running.
    pub const CANCELLED_RUNNING_FINALLY: &str = "CancelledRunningFinally";
    /// Unknown: `StoppedRunFinally` asked for; finally tasks are running.
    pub const STOPPED_RUNNING_FINALLY: &str = "StoppedRunningFinally";
    /// True: every task succeeded.
    pub const SUCCEEDED: &str = "Succeeded";
    /// True: every task that ran succeeded and some were skipped.
    pub const COMPLETED: &str = "Completed";
    /// False: a task failed (or was stopped by a tasks/finally timeout).
    pub const FAILED: &str = "Failed";
    /// False: the whole run went past `timeouts.pipeline`.
    pub const TIMED_OUT: &str = "PipelineRunTimeout";
    /// Unknown while children stop, then False: the run was cancelled.
    pub const CANCELLED: &str = "Cancelled";
    /// False: a TaskRun could not be created.
    pub const CREATE_RUN_FAILED: &str = "CreateRunFailed";
    /// False: a task read a result its producer never wrote.
    pub const INVALID_TASK_RESULT_REFERENCE: &str = "InvalidTaskResultReference";
    /// False: a param value could not be resolved.
    pub const INVALID_PARAM_VALUE: &str = "InvalidParamValue";
    /// False: a declared param has no value and no default.
    pub const PARAMETER_MISSING: &str = "ParameterMissing";
    /// False: a `cel` when expression could not be evaluated.
    pub const CEL_EVALUATION_FAILED: &str = "CELEvaluationFailed";
    /// False: the pipeline's tasks form a cycle.
    pub const INVALID_GRAPH: &str = "PipelineInvalidGraph";
    /// False: a workspace the Pipeline requires is not bound by the run.
    pub const INVALID_WORKSPACE_BINDINGS: &str = "InvalidWorkspaceBindings";
}

/// A reference to a Pipeline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineRef {
    /// The Pipeline's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The API version of a custom kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// A remote resolver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<String>,
    /// The resolver's params.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
}

/// What a user asks of a running PipelineRun through `spec.status`
/// (`specs/BUILD.md §1.9`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum PipelineRunSpecStatus {
    /// Cancel every running task; finally tasks do not run.
    Cancelled,
    /// Cancel every running task, then run the finally tasks.
    CancelledRunFinally,
    /// Start nothing new, let running tasks (and their retries) end, then
    /// run the finally tasks.
    StoppedRunFinally,
    /// Do not start yet (only before the run started).
    PipelineRunPending,
}

impl PipelineRunSpecStatus {
    /// The wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            PipelineRunSpecStatus::Cancelled => "Cancelled",
            PipelineRunSpecStatus::CancelledRunFinally => "CancelledRunFinally",
            PipelineRunSpecStatus::StoppedRunFinally => "StoppedRunFinally",
            PipelineRunSpecStatus::PipelineRunPending => "PipelineRunPending",
        }
    }
}

/// The three timeouts of a run; each a Go duration, `0` for none. The
/// pipeline timeout must cover tasks and finally together.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TimeoutFields {
    /// The whole run, from its start; 60 minutes by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// All of `spec.tasks`, from the run's start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<String>,
    /// All of `spec.finally`, from when the first finally task starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finally: Option<String>,
}

fn parse_timeout(value: Option<&str>) -> Option<Duration> {
    value.and_then(|v| knative_core::duration::parse_go(v).ok())
}

/// Settings for every TaskRun of a PipelineRun.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineTaskRunTemplate {
    /// Pod settings, kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<serde_json::Value>,
    /// The ServiceAccount TaskRuns run as; `default` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

fn is_default_template(t: &PipelineTaskRunTemplate) -> bool {
    *t == PipelineTaskRunTemplate::default()
}

/// Settings for the TaskRuns of one pipeline task.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineTaskRunSpec {
    /// The pipeline task.
    pub pipeline_task_name: String,
    /// Its ServiceAccount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Its pod settings, kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<serde_json::Value>,
    /// Its requests and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_resources: Option<ResourceRequirements>,
    /// Labels and annotations, kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

/// A PipelineRun's spec.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "tekton.dev",
    version = "v1",
    derive = "PartialEq",
    kind = "PipelineRun",
    namespaced,
    status = "PipelineRunStatus",
    shortname = "pr",
    shortname = "prs",
    category = "tekton",
    category = "tekton-pipelines",
    printcolumn = r#"{"name":"Succeeded","type":"string","jsonPath":".status.conditions[?(@.type==\"Succeeded\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Succeeded\")].reason"}"#,
    printcolumn = r#"{"name":"StartTime","type":"date","jsonPath":".status.startTime"}"#,
    printcolumn = r#"{"name":"CompletionTime","type":"date","jsonPath":".status.completionTime"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PipelineRunSpec {
    /// The Pipeline to run (or `pipelineSpec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_ref: Option<PipelineRef>,
    /// The Pipeline to run, inline (or `pipelineRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_spec: Option<PipelineSpec>,
    /// Param values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
    /// Cancel, stop or hold the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PipelineRunSpecStatus>,
    /// Timeouts of the run, its tasks and its finally tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutFields>,
    /// Settings for every TaskRun.
    #[serde(default, skip_serializing_if = "is_default_template")]
    pub task_run_template: PipelineTaskRunTemplate,
    /// Workspace bindings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workspaces: Vec<WorkspaceBinding>,
    /// Per-task settings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_run_specs: Vec<PipelineTaskRunSpec>,
    /// The controller that owns the run; Tekton's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
}

impl PipelineRunSpec {
    /// The pipeline timeout; `None` when `0` (no limit). Unset means the
    /// default (60 minutes, or the configured one).
    pub fn pipeline_timeout(&self, defaults: &BuildDefaults) -> Option<Duration> {
        let t = self.timeouts.as_ref().and_then(|t| t.pipeline.as_deref());
        match t {
            Some(t) => parse_timeout(Some(t)).filter(|d| !d.is_zero()),
            None => Some(defaults.default_timeout_duration()).filter(|d| !d.is_zero()),
        }
    }

    /// The budget of `spec.tasks`: `timeouts.tasks`, else pipeline minus
    /// finally when both are set; `None` for no separate limit.
    pub fn tasks_timeout(&self) -> Option<Duration> {
        self.split_timeout(|t| t.tasks.as_deref(), |t| t.finally.as_deref())
    }

    /// The budget of `spec.finally`: `timeouts.finally`, else pipeline minus
    /// tasks when both are set; `None` for no separate limit.
    pub fn finally_timeout(&self) -> Option<Duration> {
        self.split_timeout(|t| t.finally.as_deref(), |t| t.tasks.as_deref())
    }

    fn split_timeout(
        &self,
        own: impl Fn(&TimeoutFields) -> Option<&str>,
        other: impl Fn(&TimeoutFields) -> Option<&str>,
    ) -> Option<Duration> {
        let t = self.timeouts.as_ref()?;
        if let Some(own) = own(t) {
            return parse_timeout(Some(own)).filter(|d| !d.is_zero());
        }
        let pipeline = parse_timeout(t.pipeline.as_deref())?;
        let other = parse_timeout(other(t))?;
        if pipeline.is_zero() || other.is_zero() {
            return None;
        }
        Some(pipeline.saturating_sub(other))
    }

    /// The ServiceAccount for a pipeline task's TaskRuns.
    pub fn service_account_for(&self, pipeline_task: &str) -> Option<&str> {
        self.task_run_specs
            .iter()
            .find(|s| s.pipeline_task_name == pipeline_task)
            .and_then(|s| s.service_account_name.as_deref())
            .or(self.task_run_template.service_account_name.as_deref())
    }
}

/// Why a pipeline task was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum SkippingReason {
    /// A `when` expression did not hold.
    #[serde(rename = "When Expressions evaluated to false")]
    WhenExpressions,
    /// A task it depends on was skipped (for a reason other than its own `when`).
    #[serde(rename = "Parent Tasks were skipped")]
    ParentTasks,
    /// The run stopped scheduling after a failure.
    #[serde(rename = "PipelineRun was stopping")]
    Stopping,
    /// `CancelledRunFinally` was asked for.
    #[serde(rename = "PipelineRun was gracefully cancelled")]
    GracefullyCancelled,
    /// `StoppedRunFinally` was asked for.
    #[serde(rename = "PipelineRun was gracefully stopped")]
    GracefullyStopped,
    /// A result it reads was not produced.
    #[serde(rename = "Results were missing")]
    MissingResults,
    /// The pipeline timeout passed before it started.
    #[serde(rename = "PipelineRun timeout has been reached")]
    PipelineTimedOut,
    /// The tasks timeout passed before it started.
    #[serde(rename = "PipelineRun Tasks timeout has been reached")]
    TasksTimedOut,
    /// The finally timeout passed before it started.
    #[serde(rename = "PipelineRun Finally timeout has been reached")]
    FinallyTimedOut,
    /// A matrix param was an empty array.
    #[serde(rename = "Matrix Parameters have an empty array")]
    EmptyArrayInMatrixParams,
    /// Not skipped.
    #[serde(rename = "None")]
    None,
}

impl SkippingReason {
    /// The wire form, as upstream writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            SkippingReason::WhenExpressions => "When Expressions evaluated to false",
            SkippingReason::ParentTasks => "Parent Tasks were skipped",
            SkippingReason::Stopping => "PipelineRun was stopping",
            SkippingReason::GracefullyCancelled => "PipelineRun was gracefully cancelled",
            SkippingReason::GracefullyStopped => "PipelineRun was gracefully stopped",
            SkippingReason::MissingResults => "Results were missing",
            SkippingReason::PipelineTimedOut => "PipelineRun timeout has been reached",
            SkippingReason::TasksTimedOut => "PipelineRun Tasks timeout has been reached",
            SkippingReason::FinallyTimedOut => "PipelineRun Finally timeout has been reached",
            SkippingReason::EmptyArrayInMatrixParams => "Matrix Parameters have an empty array",
            SkippingReason::None => "None",
        }
    }

    /// Whether a timeout caused the skip (such skips fail the run).
    pub fn is_timeout(self) -> bool {
        matches!(
            self,
            SkippingReason::PipelineTimedOut
                | SkippingReason::TasksTimedOut
                | SkippingReason::FinallyTimedOut
        )
    }
}

impl fmt::Display for SkippingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pipeline task that did not run, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkippedTask {
    /// The pipeline task.
    pub name: String,
    /// Why it was skipped.
    pub reason: SkippingReason,
    /// Its `when` expressions, resolved, when they caused the skip.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when_expressions: Vec<WhenExpression>,
}

/// A child run of a PipelineRun.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChildStatusReference {
    /// `tekton.dev/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// `TaskRun`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The child's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The pipeline task's display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The pipeline task.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pipeline_task_name: String,
    /// Its `when` expressions, resolved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when_expressions: Vec<WhenExpression>,
}

/// What a PipelineRun's controller observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineRunStatus {
    /// The `Succeeded` condition and observed generation.
    #[serde(flatten)]
    pub status: Status,
    /// When the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The Pipeline's results.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<PipelineRunResult>,
    /// The exact Pipeline spec that ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_spec: Option<PipelineSpec>,
    /// Tasks that did not run, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_tasks: Vec<SkippedTask>,
    /// The TaskRuns made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub child_references: Vec<ChildStatusReference>,
    /// When the first finally task started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finally_start_time: Option<Time>,
    /// Build provenance, kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<serde_json::Value>,
    /// Tracing context.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub span_context: BTreeMap<String, String>,
}

impl PipelineRunStatus {
    /// The `Succeeded` condition, if set.
    pub fn succeeded(&self) -> Option<&Condition> {
        self.status.condition(SUCCEEDED)
    }
}

impl PipelineRun {
    /// The `Succeeded` condition, if set.
    pub fn succeeded(&self) -> Option<&Condition> {
        self.status.as_ref().and_then(PipelineRunStatus::succeeded)
    }

    /// Whether the run has ended.
    pub fn is_done(&self) -> bool {
        self.succeeded().is_some_and(|c| !c.is_unknown())
    }
}

impl SetDefaults for PipelineRunSpec {
    /// `timeouts.pipeline` and `taskRunTemplate.serviceAccountName` get the
    /// configured defaults; an inline spec is defaulted.
    fn set_defaults(&mut self, ctx: &Context<'_>) {
        let defaults = BuildDefaults::from_context(ctx);
        let timeouts = self.timeouts.get_or_insert_with(TimeoutFields::default);
        if timeouts.pipeline.is_none() {
            timeouts.pipeline = Some(defaults.default_timeout());
        }
        let sa = &mut self.task_run_template.service_account_name;
        if sa.as_deref().is_none_or(str::is_empty) {
            *sa = Some(defaults.default_service_account.clone());
        }
        if let Some(spec) = &mut self.pipeline_spec {
            spec.set_defaults(ctx);
        }
    }
}

impl Validate for PipelineRunSpec {
    /// Paths are relative to the spec.
    fn validate(&self, _ctx: &Context<'_>) -> FieldError {
        let mut errs = FieldError::none();
        match (&self.pipeline_ref, &self.pipeline_spec) {
            (None, None) => errs.push(FieldError::missing_one_of(["pipelineRef", "pipelineSpec"])),
            (Some(_), Some(_)) => {
                errs.push(FieldError::multiple_one_of(["pipelineRef", "pipelineSpec"]));
            }
            (Some(r), None) => {
                if r.name.as_deref().is_none_or(str::is_empty) && r.resolver.is_none() {
                    errs.push(FieldError::missing_field("pipelineRef.name"));
                }
            }
            (None, Some(spec)) => {
                let outer = Propagated {
                    params: self.params.iter().map(|p| p.name.clone()).collect(),
                    workspaces: self.workspaces.iter().map(|w| w.name.clone()).collect(),
                };
                errs.push(spec.validate_with(&outer).via_field("pipelineSpec"));
                let tasks: BTreeSet<&str> = spec
                    .tasks
                    .iter()
                    .chain(&spec.finally)
                    .map(|t| t.name.as_str())
                    .collect();
                for (i, s) in self.task_run_specs.iter().enumerate() {
                    if !tasks.contains(s.pipeline_task_name.as_str()) {
                        errs.push(FieldError::new(
                            format!(
                                "pipeline task {:?} is not in the pipeline",
                                s.pipeline_task_name
                            ),
                            format!("taskRunSpecs[{i}].pipelineTaskName"),
                        ));
                    }
                }
            }
        }
        errs.push(validate_params(&self.params, "params"));
        errs.push(validate_workspace_bindings(&self.workspaces, "workspaces"));
        if let Some(t) = &self.timeouts {
            errs.push(validate_timeouts(t).via_field("timeouts"));
        }
        errs
    }
}

/// Each timeout parses and `pipeline` covers `tasks` + `finally`.
fn validate_timeouts(t: &TimeoutFields) -> FieldError {
    let mut errs = FieldError::none();
    for (field, value) in [
        ("pipeline", &t.pipeline),
        ("tasks", &t.tasks),
        ("finally", &t.finally),
    ] {
        if let Some(v) = value {
            errs.push(validate_duration(v, field));
        }
    }
    if !errs.is_empty() {
        return errs;
    }
    let Some(pipeline) = parse_timeout(t.pipeline.as_deref()).filter(|d| !d.is_zero()) else {
        return errs;
    };
    let tasks = parse_timeout(t.tasks.as_deref());
    let finally = parse_timeout(t.finally.as_deref());
    let over = |d: Option<Duration>| d.is_some_and(|d| d.is_zero() || d > pipeline);
    let limit = t.pipeline.as_deref().unwrap_or_default();
    if over(tasks) {
        errs.push(FieldError::new(
            format!("must be at most the pipeline timeout {limit:?}"),
            "tasks",
        ));
    }
    if over(finally) {
        errs.push(FieldError::new(
            format!("must be at most the pipeline timeout {limit:?}"),
            "finally",
        ));
    }
    if let (Some(a), Some(b)) = (tasks, finally)
        && errs.is_empty()
        && a + b > pipeline
    {
        errs.push(FieldError::new(
            format!("tasks and finally together must be at most the pipeline timeout {limit:?}"),
            ["tasks", "finally"],
        ));
    }
    errs
}

impl SetDefaults for PipelineRun {
    fn set_defaults(&mut self, ctx: &Context<'_>) {
        self.spec.set_defaults(ctx);
    }
}

impl Validate for PipelineRun {
    fn validate(&self, ctx: &Context<'_>) -> FieldError {
        let mut errs = FieldError::none();
        if let Some(name) = self.metadata.name.as_deref() {
            errs.push(validate_dns1123_subdomain(name, "metadata.name"));
        }
        errs.push(self.spec.validate(ctx).via_field("spec"));
        if self.spec.status == Some(PipelineRunSpecStatus::PipelineRunPending)
            && self.status.as_ref().is_some_and(|s| s.start_time.is_some())
        {
            errs.push(FieldError::new(
                "a PipelineRun that has started cannot be made pending",
                "spec.status",
            ));
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(timeouts: TimeoutFields) -> PipelineRunSpec {
        PipelineRunSpec {
            pipeline_ref: Some(PipelineRef {
                name: Some("p".into()),
                ..PipelineRef::default()
            }),
            timeouts: Some(timeouts),
            ..PipelineRunSpec::default()
        }
    }

    #[test]
    fn defaults_fill_the_pipeline_timeout_and_service_account() {
        let mut spec = spec_with(TimeoutFields::default());
        spec.timeouts = None;
        spec.set_defaults(&Context::create());
        assert_eq!(
            spec.timeouts.as_ref().and_then(|t| t.pipeline.as_deref()),
            Some("1h0m0s")
        );
        assert_eq!(
            spec.task_run_template.service_account_name.as_deref(),
            Some("default")
        );
    }

    #[test]
    fn tasks_and_finally_budgets_derive_from_each_other() {
        let spec = spec_with(TimeoutFields {
            pipeline: Some("1h".into()),
            tasks: Some("45m".into()),
            finally: None,
        });
        assert_eq!(spec.tasks_timeout(), Some(Duration::from_secs(45 * 60)));
        assert_eq!(spec.finally_timeout(), Some(Duration::from_secs(15 * 60)));
    }

    #[test]
    fn tasks_plus_finally_may_not_exceed_the_pipeline() {
        let spec = spec_with(TimeoutFields {
            pipeline: Some("1h".into()),
            tasks: Some("50m".into()),
            finally: Some("20m".into()),
        });
        assert_eq!(
            spec.validate(&Context::create()).to_string(),
            "timeouts.finally, timeouts.tasks: tasks and finally together must be at most the pipeline timeout \"1h\""
        );
    }

    #[test]
    fn skipping_reasons_use_upstream_text() {
        let json = serde_json::to_value(SkippingReason::WhenExpressions).expect("valid test input");
        assert_eq!(json, "When Expressions evaluated to false");
        assert_eq!(
            SkippingReason::TasksTimedOut.as_str(),
            "PipelineRun Tasks timeout has been reached"
        );
    }
}
