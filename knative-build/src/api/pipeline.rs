//! `Pipeline`: a graph of tasks, `finally` tasks, params, workspaces and
//! results (`specs/BUILD.md §1.1`, §1.4–§1.7).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use knative_core::apis::names::{validate_dns1123_label, validate_dns1123_subdomain};
use knative_core::apis::{Context, FieldError, SetDefaults, Validate};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::param::{Param, ParamSpec, ParamValue, validate_param_specs, validate_params};
use super::result::{PipelineResult, validate_result_name};
use super::step::OnError;
use super::task::{Propagated, TaskSpec};
use super::task_run::TaskRef;
use super::validate_duration;
use super::variables::{Field, ParamScope, malformed};
use super::when::{WhenExpression, validate_when_expressions};
use super::workspace::{PipelineWorkspaceDeclaration, WorkspacePipelineTaskBinding};
use crate::scheduler::Dag;
use crate::substitution::{Reference, WorkspaceField, scan};

/// What a Pipeline declares and runs.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "tekton.dev",
    version = "v1",
    derive = "PartialEq",
    kind = "Pipeline",
    namespaced,
    category = "tekton",
    category = "tekton-pipelines"
)]
#[serde(rename_all = "camelCase")]
pub struct PipelineSpec {
    /// A name for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// What the Pipeline does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The tasks, run as a graph (at least one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<PipelineTask>,
    /// The params it takes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<ParamSpec>,
    /// The workspaces it needs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workspaces: Vec<PipelineWorkspaceDeclaration>,
    /// The results it publishes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<PipelineResult>,
    /// Tasks run after every task in `tasks` has ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finally: Vec<PipelineTask>,
}

/// Labels and annotations an embedded task's TaskRuns get.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PipelineTaskMetadata {
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A Task spec written inside a pipeline task.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddedTask {
    /// The API version of a custom task kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// A custom task kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Labels and annotations for the TaskRun.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<PipelineTaskMetadata>,
    /// The Task spec itself, inline.
    #[serde(flatten)]
    pub spec: TaskSpec,
}

/// One task of a Pipeline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineTask {
    /// The task's name in the Pipeline, a DNS-1123 label.
    pub name: String,
    /// A name for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// What the task does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The Task to run (or `taskSpec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_ref: Option<TaskRef>,
    /// The Task to run, inline (or `taskRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_spec: Option<EmbeddedTask>,
    /// Guards: the task is skipped unless every expression holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<WhenExpression>,
    /// How many more attempts after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i32>,
    /// Tasks that must end before this one starts (ordering only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run_after: Vec<String>,
    /// Param values for the Task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
    /// Fan-out over param combinations, kept as given. Not supported:
    /// validation rejects it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix: Option<serde_json::Value>,
    /// Pipeline workspaces handed to the Task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workspaces: Vec<WorkspacePipelineTaskBinding>,
    /// How long each attempt may take (a Go duration, `0` for none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// `continue` to let the Pipeline go on when this task fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<String>,
}

impl PipelineTask {
    /// A task running the named Task.
    pub fn referring(name: impl Into<String>, task: impl Into<String>) -> Self {
        PipelineTask {
            name: name.into(),
            task_ref: Some(TaskRef::named(task)),
            ..PipelineTask::default()
        }
    }

    /// The number of retries (0 when unset).
    pub fn retries(&self) -> u32 {
        self.retries
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(0)
    }

    /// The per-attempt timeout; `None` when unset or `0`.
    pub fn timeout_duration(&self) -> Option<Duration> {
        self.timeout
            .as_deref()
            .and_then(|t| knative_core::duration::parse_go(t).ok())
            .filter(|d| !d.is_zero())
    }

    /// Whether a failure of this task lets the Pipeline go on.
    pub fn continues_on_error(&self) -> bool {
        self.on_error.as_deref() == Some(OnError::Continue.as_str())
    }

    fn set_defaults(&mut self, ctx: &Context<'_>) {
        if let Some(task_ref) = &mut self.task_ref {
            task_ref.set_defaults();
        }
        if let Some(embedded) = &mut self.task_spec {
            embedded.spec.set_defaults(ctx);
        }
    }
}

impl PipelineSpec {
    /// The DAG task or finally task of that name.
    pub fn task(&self, name: &str) -> Option<&PipelineTask> {
        self.tasks
            .iter()
            .chain(&self.finally)
            .find(|t| t.name == name)
    }

    /// Whether `name` is a finally task.
    pub fn is_finally(&self, name: &str) -> bool {
        self.finally.iter().any(|t| t.name == name)
    }

    /// Checks the spec with params and workspaces handed down by an
    /// enclosing PipelineRun. Paths are relative to the spec.
    pub(crate) fn validate_with(&self, outer: &Propagated) -> FieldError {
        let mut errs = FieldError::none();
        if self.tasks.is_empty() {
            errs.push(
                FieldError::missing_field("tasks")
                    .with_details("a Pipeline runs at least one task"),
            );
        }
        errs.push(validate_param_specs(&self.params, "params"));
        let mut ws_names: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, ws) in self.workspaces.iter().enumerate() {
            if let Some(first) = ws_names.insert(ws.name.as_str(), i) {
                errs.push(
                    FieldError::new(
                        format!(
                            "workspace {:?} is declared twice (see workspaces[{first}])",
                            ws.name
                        ),
                        "name",
                    )
                    .via_field_index("workspaces", i),
                );
            }
        }

        let dag_names: BTreeSet<&str> = self.tasks.iter().map(|t| t.name.as_str()).collect();
        let finally_names: BTreeSet<&str> = self.finally.iter().map(|t| t.name.as_str()).collect();
        let mut all_names: BTreeMap<&str, String> = BTreeMap::new();
        let mut params = outer.params.clone();
        params.extend(self.params.iter().map(|p| p.name.clone()));
        let mut workspaces = outer.workspaces.clone();
        workspaces.extend(self.workspaces.iter().map(|w| w.name.clone()));
        let scope = PipelineScope {
            spec: self,
            params: ParamScope::new(&self.params, outer.params.clone()),
            dag: &dag_names,
            finally: &finally_names,
            workspaces: &workspaces,
        };
        for (field, list) in [("tasks", &self.tasks), ("finally", &self.finally)] {
            for (i, task) in list.iter().enumerate() {
                let here = format!("{field}[{i}]");
                if let Some(first) = all_names.insert(task.name.as_str(), here.clone()) {
                    errs.push(
                        FieldError::new(
                            format!("task name {:?} is already used by {first}", task.name),
                            "name",
                        )
                        .via_field_index(field, i),
                    );
                }
                let is_finally = field == "finally";
                errs.push(
                    scope
                        .validate_task(task, is_finally, &params, &workspaces)
                        .via_field_index(field, i),
                );
            }
        }
        errs.push(self.validate_results(&dag_names, &finally_names));
        if let Err(cycle) = Dag::build(self) {
            errs.push(FieldError::new(cycle.to_string(), "tasks"));
        }
        errs
    }

    fn validate_results(&self, dag: &BTreeSet<&str>, finally: &BTreeSet<&str>) -> FieldError {
        let mut errs = FieldError::none();
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, result) in self.results.iter().enumerate() {
            let mut e = validate_result_name(&result.name, "name");
            if let Some(first) = seen.insert(result.name.as_str(), i) {
                e.push(FieldError::new(
                    format!(
                        "result {:?} is declared twice (see results[{first}])",
                        result.name
                    ),
                    "name",
                ));
            }
            if let (Some(declared), ParamValue::Array(_) | ParamValue::Object(_)) =
                (result.type_, &result.value)
                && declared != result.value.param_type()
            {
                e.push(FieldError::new(
                    format!(
                        "value has type {} but the result is declared {declared}",
                        result.value.param_type()
                    ),
                    "value",
                ));
            }
            let texts: Vec<&str> = match &result.value {
                ParamValue::String(s) => vec![s.as_str()],
                ParamValue::Array(a) => a.iter().map(String::as_str).collect(),
                ParamValue::Object(o) => o.values().map(String::as_str).collect(),
            };
            if texts.iter().all(|t| scan(t).is_empty()) {
                e.push(
                    FieldError::new("a pipeline result reads at least one task result", "value")
                        .with_details("e.g. $(tasks.build.results.IMAGE_DIGEST)"),
                );
            }
            for text in texts {
                for occurrence in scan(text) {
                    let expr = &occurrence.expression;
                    match &occurrence.reference {
                        Err(reason) => e.push(malformed(expr, reason, "value")),
                        Ok(Reference::TaskResult { task, .. }) if !dag.contains(task.as_str()) => {
                            e.push(FieldError::new(
                                format!(
                                    "$({expr}) refers to task {task:?}, which is not in spec.tasks"
                                ),
                                "value",
                            ));
                        }
                        Ok(Reference::FinallyResult { task, .. })
                            if !finally.contains(task.as_str()) =>
                        {
                            e.push(FieldError::new(
                                format!("$({expr}) refers to task {task:?}, which is not in spec.finally"),
                                "value",
                            ));
                        }
                        Ok(Reference::TaskResult { .. } | Reference::FinallyResult { .. }) => {}
                        Ok(_) => e.push(FieldError::new(
                            format!("$({expr}): pipeline results may only read task results"),
                            "value",
                        )),
                    }
                }
            }
            errs.push(e.via_field_index("results", i));
        }
        errs
    }
}

/// What a pipeline task's params and `when` may refer to.
struct PipelineScope<'a> {
    spec: &'a PipelineSpec,
    params: ParamScope<'a>,
    dag: &'a BTreeSet<&'a str>,
    finally: &'a BTreeSet<&'a str>,
    workspaces: &'a BTreeSet<String>,
}

impl PipelineScope<'_> {
    /// Checks one pipeline task; paths are relative to it.
    fn validate_task(
        &self,
        task: &PipelineTask,
        is_finally: bool,
        params: &BTreeSet<String>,
        workspaces: &BTreeSet<String>,
    ) -> FieldError {
        let mut errs = validate_dns1123_label(&task.name, "name");
        match (&task.task_ref, &task.task_spec) {
            (None, None) => errs.push(FieldError::missing_one_of(["taskRef", "taskSpec"])),
            (Some(_), Some(_)) => errs.push(FieldError::multiple_one_of(["taskRef", "taskSpec"])),
            (Some(r), None) => errs.push(r.validate().via_field("taskRef")),
            (None, Some(embedded)) => {
                let mut outer = Propagated {
                    params: params.clone(),
                    workspaces: workspaces.clone(),
                };
                outer
                    .params
                    .extend(task.params.iter().map(|p| p.name.clone()));
                outer
                    .workspaces
                    .extend(task.workspaces.iter().map(|w| w.name.clone()));
                errs.push(embedded.spec.validate_with(&outer).via_field("taskSpec"));
            }
        }
        errs.push(validate_params(&task.params, "params"));
        if task.matrix.is_some() {
            errs.push(FieldError::new(
                "matrix is not supported: fan-out over param combinations is not implemented",
                "matrix",
            ));
        }
        errs.push(validate_when_expressions(&task.when, "when"));
        if is_finally && !task.run_after.is_empty() {
            errs.push(FieldError::disallowed_fields("runAfter").with_details(
                "finally tasks run after every task in spec.tasks; they take no runAfter",
            ));
        } else {
            for (k, after) in task.run_after.iter().enumerate() {
                let problem = if *after == task.name {
                    Some("a task cannot run after itself".to_owned())
                } else if !self.dag.contains(after.as_str()) {
                    Some(format!(
                        "runAfter names task {after:?}, which is not in spec.tasks"
                    ))
                } else {
                    None
                };
                if let Some(message) = problem {
                    errs.push(FieldError::new(message, format!("runAfter[{k}]")));
                }
            }
        }
        if let Some(retries) = task.retries
            && retries < 0
        {
            errs.push(
                FieldError::invalid_value(retries, "retries").with_details("retries is 0 or more"),
            );
        }
        if let Some(timeout) = &task.timeout {
            errs.push(validate_duration(timeout, "timeout"));
        }
        if let Some(on_error) = &task.on_error
            && OnError::parse(on_error).is_none()
        {
            errs.push(
                FieldError::invalid_value(on_error, "onError")
                    .with_details("onError is `continue` or `stopAndFail`"),
            );
        }
        let mut bound: BTreeMap<&str, usize> = BTreeMap::new();
        for (k, binding) in task.workspaces.iter().enumerate() {
            if let Some(first) = bound.insert(binding.name.as_str(), k) {
                errs.push(FieldError::new(
                    format!(
                        "workspace {:?} is bound twice (see workspaces[{first}])",
                        binding.name
                    ),
                    format!("workspaces[{k}].name"),
                ));
            }
            let target = binding.pipeline_workspace();
            if !self.workspaces.contains(target) {
                let field = if binding.workspace.is_some() {
                    "workspace"
                } else {
                    "name"
                };
                errs.push(FieldError::new(
                    format!("pipeline workspace {target:?} is not declared in spec.workspaces"),
                    format!("workspaces[{k}].{field}"),
                ));
            }
        }
        errs.push(self.validate_references(task, is_finally));
        errs
    }

    /// Checks the references in a task's params and `when`.
    fn validate_references(&self, task: &PipelineTask, is_finally: bool) -> FieldError {
        let mut errs = FieldError::none();
        let mut texts: Vec<(&str, Field, String)> = Vec::new();
        for (i, param) in task.params.iter().enumerate() {
            match &param.value {
                ParamValue::String(s) => {
                    texts.push((s, Field::ParamValue, format!("params[{i}].value")))
                }
                ParamValue::Array(items) => {
                    for (j, s) in items.iter().enumerate() {
                        texts.push((s, Field::ArrayElement, format!("params[{i}].value[{j}]")));
                    }
                }
                ParamValue::Object(map) => {
                    for (k, s) in map {
                        texts.push((s, Field::String, format!("params[{i}].value.{k}")));
                    }
                }
            }
        }
        for (i, when) in task.when.iter().enumerate() {
            texts.push((&when.input, Field::String, format!("when[{i}].input")));
            for (j, v) in when.values.iter().enumerate() {
                texts.push((v, Field::ArrayElement, format!("when[{i}].values[{j}]")));
            }
            if let Some(cel) = &when.cel {
                texts.push((cel, Field::String, format!("when[{i}].cel")));
            }
        }
        for (text, field, path) in texts {
            for occurrence in scan(text) {
                let expr = &occurrence.expression;
                let reference = match &occurrence.reference {
                    Ok(r) => r,
                    Err(reason) => {
                        errs.push(malformed(expr, reason, &path));
                        continue;
                    }
                };
                let problem = match reference {
                    Reference::Param { name, selector } => {
                        errs.push(self.params.check(
                            name,
                            selector,
                            &occurrence,
                            text,
                            field,
                            &path,
                        ));
                        None
                    }
                    Reference::TaskResult {
                        task: t, result, ..
                    } => self.check_task(t, &task.name).or_else(|| {
                        self.spec
                            .task(t)
                            .and_then(|producer| producer.task_spec.as_ref())
                            .filter(|embedded| embedded.spec.result(result).is_none())
                            .map(|_| format!("$({expr}): task {t:?} declares no result {result:?}"))
                    }),
                    Reference::TaskStatus { task: t } | Reference::TaskReason { task: t } => {
                        if is_finally {
                            self.check_task(t, &task.name)
                        } else {
                            Some(format!("$({expr}) can only be used in finally tasks"))
                        }
                    }
                    Reference::TasksStatus if !is_finally => {
                        Some(format!("$({expr}) can only be used in finally tasks"))
                    }
                    Reference::MatrixLength { task: t } => self.check_task(t, &task.name),
                    Reference::FinallyResult { .. } => Some(format!(
                        "$({expr}): finally results can only be read by pipeline results"
                    )),
                    Reference::Workspace {
                        name,
                        field: WorkspaceField::Bound,
                    } if !self.workspaces.contains(name) => Some(format!(
                        "$({expr}) refers to workspace {name:?}, which is not declared"
                    )),
                    _ => None,
                };
                if let Some(message) = problem {
                    errs.push(FieldError::new(message, path.clone()));
                }
            }
        }
        errs
    }

    /// Why `consumer` may not read from task `t`, if it may not.
    fn check_task(&self, t: &str, consumer: &str) -> Option<String> {
        if t == consumer {
            Some(format!("task {t:?} cannot read its own results or status"))
        } else if self.finally.contains(t) {
            Some(format!(
                "task {t:?} is a finally task; only pipeline results can read it"
            ))
        } else if !self.dag.contains(t) {
            Some(format!("task {t:?} is not in spec.tasks"))
        } else {
            None
        }
    }
}

impl SetDefaults for PipelineSpec {
    /// Infers param and result types; `taskRef.kind` defaults to `Task`.
    fn set_defaults(&mut self, ctx: &Context<'_>) {
        for param in &mut self.params {
            param.set_defaults();
        }
        for result in &mut self.results {
            result.set_defaults();
        }
        for task in self.tasks.iter_mut().chain(self.finally.iter_mut()) {
            task.set_defaults(ctx);
        }
    }
}

impl Validate for PipelineSpec {
    /// Paths are relative to the spec (`tasks[1].runAfter[0]`).
    fn validate(&self, _ctx: &Context<'_>) -> FieldError {
        self.validate_with(&Propagated::default())
    }
}

impl SetDefaults for Pipeline {
    fn set_defaults(&mut self, ctx: &Context<'_>) {
        self.spec.set_defaults(ctx);
    }
}

impl Validate for Pipeline {
    fn validate(&self, ctx: &Context<'_>) -> FieldError {
        let mut errs = FieldError::none();
        if let Some(name) = self.metadata.name.as_deref() {
            errs.push(validate_dns1123_subdomain(name, "metadata.name"));
        }
        errs.push(self.spec.validate(ctx).via_field("spec"));
        errs
    }
}
