//! `tekton.dev/v1` API types: [`Task`], [`TaskRun`], [`Pipeline`] and
//! [`PipelineRun`], with upstream field names, defaulting and path-aware
//! validation as Tekton's webhook does them (`specs/BUILD.md §1`).
//!
//! | module part | spec |
//! |---|---|
//! | Task, steps, step template, sidecars | §1.1, §1.2 |
//! | params and values (`string`, `array`, `object`) | §1.3 |
//! | `$(...)` references checked against declarations | §1.4 |
//! | results | §1.5 |
//! | workspaces: declarations, pipeline bindings, run bindings | §1.6 |
//! | pipeline tasks, `runAfter`, `when`, `finally`, retries, timeouts | §1.7 |
//! | `Succeeded` reasons ([`task_run_reasons`], [`pipeline_run_reasons`]) | §1.8 |
//! | `spec.status` cancellation and pending | §1.9 |
//!
//! Every kind implements [`SetDefaults`](knative_core::apis::SetDefaults)
//! and [`Validate`](knative_core::apis::Validate). Defaults read
//! [`BuildDefaults`] from the [`Context`] when
//! one was added (upstream's `config-defaults`), and use 60 minutes and the
//! `default` ServiceAccount otherwise. Param types are inferred from their
//! default; TaskRuns get `timeout` and `serviceAccountName`; PipelineRuns
//! get `timeouts.pipeline` and `taskRunTemplate.serviceAccountName`;
//! `taskRef.kind` becomes `Task`.
//!
//! ```
//! use knative_core::apis::{Context, SetDefaults, Validate};
//! use knative_build::api::{ParamType, Pipeline};
//!
//! let yaml = r#"
//! apiVersion: tekton.dev/v1
//! kind: Pipeline
//! metadata: {name: demo}
//! spec:
//!   params: [{name: greeting, default: hello}]
//!   tasks:
//!     - name: first
//!       taskRef: {name: echo}
//!       params: [{name: text, value: $(params.greeting)}]
//!     - name: second
//!       taskRef: {name: echo}
//!       runAfter: [first, nope]
//! "#;
//! let mut pipeline: Pipeline = serde_yaml::from_str(yaml).unwrap();
//! let ctx = Context::create();
//! pipeline.set_defaults(&ctx);
//! assert_eq!(pipeline.spec.params[0].type_, Some(ParamType::String));
//! assert_eq!(
//!     pipeline.validate(&ctx).to_string(),
//!     "spec.tasks[1].runAfter[1]: runAfter names task \"nope\", which is not in spec.tasks"
//! );
//! ```

mod param;
mod pipeline;
mod pipeline_run;
mod result;
mod step;
mod task;
mod task_run;
mod variables;
mod when;
mod workspace;

use std::time::Duration;

use knative_core::apis::{Context, FieldError};

pub use param::{
    Param, ParamSpec, ParamType, ParamValue, PropertySpec, effective_params, validate_param_enums,
    validate_param_name,
};
pub use pipeline::{EmbeddedTask, Pipeline, PipelineSpec, PipelineTask, PipelineTaskMetadata};
pub use pipeline_run::{
    ChildStatusReference, PipelineRef, PipelineRun, PipelineRunSpec, PipelineRunSpecStatus,
    PipelineRunStatus, PipelineTaskRunSpec, PipelineTaskRunTemplate, SkippedTask, SkippingReason,
    TimeoutFields, reasons as pipeline_run_reasons,
};
pub use result::{
    PipelineResult, PipelineRunResult, TaskResult, TaskRunResult, validate_result_name,
};
pub use step::{OnError, Sidecar, Step, StepOutputConfig, StepTemplate, WorkspaceUsage, builtin};
pub use task::{Task, TaskSpec};
pub use task_run::{
    StepState, TaskRef, TaskRun, TaskRunSpec, TaskRunSpecStatus, TaskRunStatus,
    reasons as task_run_reasons,
};
pub use when::{Operator, WhenExpression, all_hold};
pub use workspace::{
    PipelineWorkspaceDeclaration, VolumeClaimTemplate, WORKSPACE_ROOT, WorkspaceBinding,
    WorkspaceDeclaration, WorkspacePipelineTaskBinding,
};

/// The API group of every type here.
pub const GROUP: &str = "tekton.dev";
/// `apiVersion` of every type here.
pub const API_VERSION: &str = "tekton.dev/v1";

/// Labels Tekton puts on the TaskRuns a PipelineRun creates.
pub mod labels {
    /// The owning PipelineRun's name.
    pub const PIPELINE_RUN: &str = "tekton.dev/pipelineRun";
    /// The owning PipelineRun's uid.
    pub const PIPELINE_RUN_UID: &str = "tekton.dev/pipelineRunUID";
    /// The Pipeline's name.
    pub const PIPELINE: &str = "tekton.dev/pipeline";
    /// The pipeline task's name.
    pub const PIPELINE_TASK: &str = "tekton.dev/pipelineTask";
    /// `tasks` or `finally`.
    pub const MEMBER_OF: &str = "tekton.dev/memberOf";
    /// The Task's name.
    pub const TASK: &str = "tekton.dev/task";
    /// The TaskRun's name (on pods).
    pub const TASK_RUN: &str = "tekton.dev/taskRun";
    /// [`MEMBER_OF`] for tasks in `spec.tasks`.
    pub const MEMBER_OF_TASKS: &str = "tasks";
    /// [`MEMBER_OF`] for tasks in `spec.finally`.
    pub const MEMBER_OF_FINALLY: &str = "finally";
}

/// Cluster-wide defaults (upstream's `config-defaults` ConfigMap). Add one
/// to the [`Context`] to change them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildDefaults {
    /// `default-timeout-minutes`: TaskRun and PipelineRun timeout (0 = none).
    pub default_timeout_minutes: u64,
    /// `default-service-account`.
    pub default_service_account: String,
}

impl Default for BuildDefaults {
    fn default() -> Self {
        BuildDefaults {
            default_timeout_minutes: 60,
            default_service_account: "default".to_owned(),
        }
    }
}

impl BuildDefaults {
    /// The defaults in `ctx`, or upstream's.
    pub fn from_context(ctx: &Context<'_>) -> Self {
        ctx.config::<BuildDefaults>().cloned().unwrap_or_default()
    }

    /// The default timeout as a duration.
    pub fn default_timeout_duration(&self) -> Duration {
        Duration::from_secs(self.default_timeout_minutes.saturating_mul(60))
    }

    /// The default timeout as Go writes it (`1h0m0s`).
    pub fn default_timeout(&self) -> String {
        knative_core::duration::format_go(self.default_timeout_duration())
    }
}

/// Checks a Go duration (`90s`, `1h30m`, `0` for none).
pub(crate) fn validate_duration(value: &str, path: &str) -> FieldError {
    match knative_core::duration::parse_go(value) {
        Ok(_) => FieldError::none(),
        Err(e) => FieldError::invalid_value(value, path).with_details(e.reason().to_owned()),
    }
}
