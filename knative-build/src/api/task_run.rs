//! `TaskRun`: one execution of a Task with concrete params and workspaces,
//! and its status (`specs/BUILD.md §1.1`, §1.7–§1.9).

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerState, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use knative_core::apis::names::validate_dns1123_subdomain;
use knative_core::apis::{Context, FieldError, SetDefaults, Validate};
use knative_core::condition::{Condition, SUCCEEDED, Status};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::param::{Param, validate_params};
use super::result::TaskRunResult;
use super::task::{Propagated, TaskSpec};
use super::workspace::{WorkspaceBinding, validate_workspace_bindings};
use super::{BuildDefaults, validate_duration};

/// Reasons of a TaskRun's `Succeeded` condition (`specs/BUILD.md §1.8`).
pub mod reasons {
    /// Unknown: the TaskRun was just picked up.
    pub const STARTED: &str = "Started";
    /// Unknown: its pod is waiting to be scheduled or pulled.
    pub const PENDING: &str = "Pending";
    /// Unknown: its steps are running.
    pub const RUNNING: &str = "Running";
    /// Unknown: an attempt failed and another will be made.
    pub const TO_BE_RETRIED: &str = "ToBeRetried";
    /// True: every step succeeded.
    pub const SUCCEEDED: &str = "Succeeded";
    /// False: a step failed.
    pub const FAILED: &str = "Failed";
    /// False: the TaskRun ran past its timeout.
    pub const TIMED_OUT: &str = "TaskRunTimeout";
    /// Unknown while stopping, then False: the TaskRun was cancelled.
    pub const CANCELLED: &str = "TaskRunCancelled";
    /// False: a step's image could not be pulled.
    pub const IMAGE_PULL_FAILED: &str = "TaskRunImagePullFailed";
    /// False, but its pipeline task has `onError: continue`.
    pub const FAILURE_IGNORED: &str = "FailureIgnored";
    /// False: a step ran out of memory.
    pub const STEP_OOM: &str = "StepOOM";
    /// False: a step exited non-zero.
    pub const STEP_FAILED: &str = "StepFailed";
    /// False: the pod was evicted.
    pub const POD_EVICTED: &str = "PodEvicted";
    /// False: a result was larger than the executor accepts.
    pub const RESULT_LARGER_THAN_ALLOWED: &str = "TaskRunResultLargerThanAllowedLimit";
    /// False: the TaskRun (or the Task it runs) is not valid.
    pub const VALIDATION_FAILED: &str = "TaskRunValidationFailed";
    /// False: the Task named by `taskRef` could not be read.
    pub const COULDNT_GET_TASK: &str = "CouldntGetTask";
    /// False: a param value could not be substituted.
    pub const INVALID_PARAM_VALUE: &str = "InvalidParamValue";
    /// False: the executor cannot run the Task, or lost a started attempt.
    pub const EXECUTION_FAILED: &str = "TaskRunExecutionFailed";
}

/// A reference to a Task (or another kind that runs like one).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskRef {
    /// The Task's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Task` (the default) or a custom kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The API version of a custom kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// A remote resolver (`git`, `bundles`, `hub`, `cluster`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<String>,
    /// The resolver's params.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
}

impl TaskRef {
    /// A reference to a namespaced Task.
    pub fn named(name: impl Into<String>) -> Self {
        TaskRef {
            name: Some(name.into()),
            ..TaskRef::default()
        }
    }

    /// Defaults `kind` to `Task` when no resolver is used.
    pub fn set_defaults(&mut self) {
        if self.kind.is_none() && self.resolver.is_none() {
            self.kind = Some("Task".to_owned());
        }
    }

    /// Checks that a name or a resolver says what to run; paths are relative.
    pub(crate) fn validate(&self) -> FieldError {
        if self.name.as_deref().is_none_or(str::is_empty) && self.resolver.is_none() {
            return FieldError::missing_field("name")
                .with_details("a taskRef names a Task or a resolver");
        }
        FieldError::none()
    }
}

/// The only value of a TaskRun's `spec.status`: stop it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum TaskRunSpecStatus {
    /// Cancel the TaskRun: its pod is deleted and it ends with reason `TaskRunCancelled`.
    TaskRunCancelled,
}

/// A TaskRun's spec.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "tekton.dev",
    version = "v1",
    derive = "PartialEq",
    kind = "TaskRun",
    namespaced,
    status = "TaskRunStatus",
    shortname = "tr",
    shortname = "trs",
    category = "tekton",
    category = "tekton-pipelines",
    printcolumn = r#"{"name":"Succeeded","type":"string","jsonPath":".status.conditions[?(@.type==\"Succeeded\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Succeeded\")].reason"}"#,
    printcolumn = r#"{"name":"StartTime","type":"date","jsonPath":".status.startTime"}"#,
    printcolumn = r#"{"name":"CompletionTime","type":"date","jsonPath":".status.completionTime"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TaskRunSpec {
    /// Debugging options (breakpoints), kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug: Option<serde_json::Value>,
    /// Param values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
    /// The ServiceAccount the pod runs as; `default` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// The Task to run (or `taskSpec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_ref: Option<TaskRef>,
    /// The Task to run, inline (or `taskRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_spec: Option<TaskSpec>,
    /// `TaskRunCancelled` to cancel it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskRunSpecStatus>,
    /// Why it was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    /// How many more attempts after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i32>,
    /// How long one attempt may take (a Go duration, `0` for none); 60
    /// minutes by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Pod settings (node selector, tolerations, …), kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<serde_json::Value>,
    /// Workspace bindings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workspaces: Vec<WorkspaceBinding>,
    /// Per-step overrides, kept as given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_specs: Vec<serde_json::Value>,
    /// Per-sidecar overrides, kept as given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sidecar_specs: Vec<serde_json::Value>,
    /// Requests and limits for the whole Task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_resources: Option<ResourceRequirements>,
    /// The controller that owns the run; Tekton's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
}

impl TaskRunSpec {
    /// The timeout of one attempt; `None` when unset or `0` (no limit).
    pub fn timeout_duration(&self) -> Option<Duration> {
        self.timeout
            .as_deref()
            .and_then(|t| knative_core::duration::parse_go(t).ok())
            .filter(|d| !d.is_zero())
    }

    /// Whether cancellation was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.status == Some(TaskRunSpecStatus::TaskRunCancelled)
    }
}

/// The state of one step's container.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepState {
    /// `waiting`, `running` or `terminated`, as Kubernetes reports them.
    #[serde(flatten)]
    pub state: ContainerState,
    /// The step's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The step's container name (`step-<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The image digest the step ran.
    #[serde(default, rename = "imageID", skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// Results the step wrote.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<TaskRunResult>,
    /// Why the step ended (`Completed`, `Error`, `Skipped`, `TimeoutExceeded`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_reason: Option<String>,
}

fn opaque_array(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

/// What a TaskRun's controller observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskRunStatus {
    /// The `Succeeded` condition and observed generation.
    #[serde(flatten)]
    pub status: Status,
    /// The current attempt's pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// When the current attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the TaskRun ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Per step, its container's state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepState>,
    /// The status of each failed earlier attempt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "opaque_array")]
    pub retries_status: Vec<TaskRunStatus>,
    /// Results the Task wrote.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<TaskRunResult>,
    /// Sidecar container states, kept as given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sidecars: Vec<serde_json::Value>,
    /// The exact spec that ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_spec: Option<TaskSpec>,
    /// Build provenance, kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<serde_json::Value>,
}

impl TaskRunStatus {
    /// The `Succeeded` condition, if set.
    pub fn succeeded(&self) -> Option<&Condition> {
        self.status.condition(SUCCEEDED)
    }

    /// The result of that name, if written.
    pub fn result(&self, name: &str) -> Option<&TaskRunResult> {
        self.results.iter().find(|r| r.name == name)
    }
}

impl TaskRun {
    /// The `Succeeded` condition, if set.
    pub fn succeeded(&self) -> Option<&Condition> {
        self.status.as_ref().and_then(TaskRunStatus::succeeded)
    }

    /// Whether the run has ended (`Succeeded` is True or False).
    pub fn is_done(&self) -> bool {
        self.succeeded().is_some_and(|c| !c.is_unknown())
    }
}

impl SetDefaults for TaskRunSpec {
    fn set_defaults(&mut self, ctx: &Context<'_>) {
        let defaults = BuildDefaults::from_context(ctx);
        if self.timeout.is_none() {
            self.timeout = Some(defaults.default_timeout());
        }
        if self
            .service_account_name
            .as_deref()
            .is_none_or(str::is_empty)
        {
            self.service_account_name = Some(defaults.default_service_account.clone());
        }
        if let Some(task_ref) = &mut self.task_ref {
            task_ref.set_defaults();
        }
        if let Some(spec) = &mut self.task_spec {
            spec.set_defaults(ctx);
        }
    }
}

impl Validate for TaskRunSpec {
    /// Paths are relative to the spec.
    fn validate(&self, _ctx: &Context<'_>) -> FieldError {
        let mut errs = FieldError::none();
        match (&self.task_ref, &self.task_spec) {
            (None, None) => errs.push(FieldError::missing_one_of(["taskRef", "taskSpec"])),
            (Some(_), Some(_)) => errs.push(FieldError::multiple_one_of(["taskRef", "taskSpec"])),
            (Some(r), None) => errs.push(r.validate().via_field("taskRef")),
            (None, Some(spec)) => {
                let outer = Propagated {
                    params: self.params.iter().map(|p| p.name.clone()).collect(),
                    workspaces: self
                        .workspaces
                        .iter()
                        .map(|w| w.name.clone())
                        .collect::<BTreeSet<_>>(),
                };
                errs.push(spec.validate_with(&outer).via_field("taskSpec"));
            }
        }
        errs.push(validate_params(&self.params, "params"));
        errs.push(validate_workspace_bindings(&self.workspaces, "workspaces"));
        if let Some(timeout) = &self.timeout {
            errs.push(validate_duration(timeout, "timeout"));
        }
        if let Some(retries) = self.retries
            && retries < 0
        {
            errs.push(
                FieldError::invalid_value(retries, "retries").with_details("retries is 0 or more"),
            );
        }
        if self.status_message.is_some() && self.status.is_none() {
            errs.push(
                FieldError::disallowed_fields("statusMessage")
                    .with_details("statusMessage explains a `status: TaskRunCancelled`"),
            );
        }
        errs
    }
}

impl SetDefaults for TaskRun {
    fn set_defaults(&mut self, ctx: &Context<'_>) {
        self.spec.set_defaults(ctx);
    }
}

impl Validate for TaskRun {
    fn validate(&self, ctx: &Context<'_>) -> FieldError {
        let mut errs = FieldError::none();
        if let Some(name) = self.metadata.name.as_deref() {
            errs.push(validate_dns1123_subdomain(name, "metadata.name"));
        }
        errs.push(self.spec.validate(ctx).via_field("spec"));
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_timeout_service_account_and_kind() {
        let mut tr: TaskRun = serde_yaml::from_str(
            "apiVersion: tekton.dev/v1\nkind: TaskRun\nmetadata: {name: r}\nspec:\n  taskRef: {name: hello}\n",
        )
        .expect("valid test input");
        tr.set_defaults(&Context::create());
        assert_eq!(tr.spec.timeout.as_deref(), Some("1h0m0s"));
        assert_eq!(tr.spec.service_account_name.as_deref(), Some("default"));
        assert_eq!(
            tr.spec.task_ref.as_ref().and_then(|r| r.kind.as_deref()),
            Some("Task")
        );
        assert_eq!(tr.spec.timeout_duration(), Some(Duration::from_secs(3600)));
    }

    #[test]
    fn configured_defaults_are_used() {
        let ctx = Context::create().with_config(BuildDefaults {
            default_timeout_minutes: 5,
            default_service_account: "builder".into(),
        });
        let mut spec = TaskRunSpec::default();
        spec.set_defaults(&ctx);
        assert_eq!(spec.timeout.as_deref(), Some("5m0s"));
        assert_eq!(spec.service_account_name.as_deref(), Some("builder"));
    }

    #[test]
    fn a_run_names_exactly_one_task() {
        let spec = TaskRunSpec::default();
        assert_eq!(
            spec.validate(&Context::create()).to_string(),
            "taskRef, taskSpec: expected exactly one, got neither"
        );
    }

    #[test]
    fn bad_timeouts_and_retries_are_reported() {
        let spec = TaskRunSpec {
            task_ref: Some(TaskRef::named("t")),
            timeout: Some("ten minutes".into()),
            retries: Some(-1),
            ..TaskRunSpec::default()
        };
        let err = spec.validate(&Context::create()).to_string();
        assert!(err.contains("retries: invalid value: -1"), "{err}");
        assert!(err.contains("timeout: invalid value: ten minutes"), "{err}");
    }
}
