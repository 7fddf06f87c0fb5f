//! `$(...)` variable substitution (`specs/BUILD.md §1.4`).
//!
//! Substitution is plain text replacement with no escaping. A reference is
//! parsed ([`Reference`]) and looked up in [`Replacements`], which holds the
//! values of one scope:
//!
//! - **Task scope** ([`Scope::Task`], built by [`Replacements::for_task`]):
//!   `$(params.*)`, `$(results.<r>.path)`, `$(steps.step-<s>.exitCode.path)`,
//!   `$(workspaces.<w>.path|bound|claim|volume)`, `$(context.taskRun.*)`,
//!   `$(context.task.*)`, `$(credentials.path)`.
//! - **Pipeline scope** ([`Scope::Pipeline`]): `$(params.*)`,
//!   `$(tasks.<t>.results.<r>)`, `$(tasks.<t>.status|reason)`,
//!   `$(tasks.status)`, `$(tasks.<t>.matrix.length)`, `$(finally.<t>.results.<r>)`,
//!   `$(workspaces.<w>.bound)`, `$(context.pipelineRun.*)`,
//!   `$(context.pipeline.name)`, `$(context.pipelineTask.retries)`.
//!
//! References that belong to the other scope are left as written (a
//! pipeline task's params may carry `$(context.taskRun.name)` down to its
//! Task, where [`Replacements::resolve_param_values`] resolves it before
//! the params are substituted); text that is not a Tekton reference at
//! all (`$(date)`) is never touched. A [`Scope::Partial`] pass resolves
//! only the references it has values for and leaves the rest (a
//! Pipeline's params propagated into an embedded `taskSpec`). A reference of the scope that cannot be resolved is a
//! [`SubstitutionError`] naming the reference and the field path.
//!
//! Arrays: `$(params.a[*])` expands in place only when it is a whole
//! element of an array field (`command`, `args`, a `when`'s `values`, an
//! array param value) or the whole of a param value; `$(params.a[1])`
//! picks one element and `$(params.o.key)` one object key anywhere.
//!
//! ```
//! use knative_build::api::{ParamValue, Step, TaskSpec};
//! use knative_build::substitution::{Replacements, resolve_task_spec};
//!
//! let spec = TaskSpec {
//!     steps: vec![Step {
//!         name: "greet".into(),
//!         image: Some("alpine".into()),
//!         command: vec!["echo".into(), "$(params.flags[*])".into(), "hello $(params.who)".into()],
//!         ..Step::default()
//!     }],
//!     ..TaskSpec::default()
//! };
//! let mut values = Replacements::task();
//! values.params.insert("who".into(), ParamValue::from("world"));
//! values.params.insert("flags".into(), ParamValue::Array(vec!["-n".into(), "-e".into()]));
//! let resolved = resolve_task_spec(&spec, &values).unwrap();
//! assert_eq!(resolved.steps[0].command, ["echo", "-n", "-e", "hello world"]);
//!
//! let err = values.substitute_string("$(params.nope)", "steps[0].script").unwrap_err();
//! assert_eq!(err.to_string(), "steps[0].script: unknown reference $(params.nope)");
//! ```

mod reference;

use std::collections::{BTreeMap, BTreeSet};

pub use reference::{
    ContextVar, Occurrence, Reference, Selector, WorkspaceField, references, scan,
};

use crate::api::{
    ParamType, ParamValue, PipelineTask, Step, TaskSpec, WhenExpression, WorkspaceBinding,
};

/// Why a reference could not be substituted. Every variant names the
/// reference (as written, without `$(` `)`) and the field it was found in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubstitutionError {
    /// Nothing of that name exists in the scope.
    #[error("{path}: unknown reference $({reference})")]
    Unknown {
        /// The reference.
        reference: String,
        /// The field.
        path: String,
    },
    /// The text starts like a reference but is not a valid one.
    #[error("{path}: malformed reference $({reference}): {reason}")]
    Malformed {
        /// The text between `$(` and `)`.
        reference: String,
        /// The field.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An array or object was used where only a string fits.
    #[error(
        "{path}: $({reference}) is an {found}; use [<index>] or .<key> to pick a string, or [*] as a whole element of an array field"
    )]
    NotAString {
        /// The reference.
        reference: String,
        /// The field.
        path: String,
        /// The value's type.
        found: ParamType,
    },
    /// The selector does not fit the value's type (`[0]` of a string, …).
    #[error("{path}: $({reference}) selects from a {found} value that has no such part")]
    TypeMismatch {
        /// The reference.
        reference: String,
        /// The field.
        path: String,
        /// The value's type.
        found: ParamType,
    },
    /// An index past the end of an array.
    #[error("{path}: $({reference}): index {index} is out of range for an array of {len}")]
    IndexOutOfRange {
        /// The reference.
        reference: String,
        /// The field.
        path: String,
        /// The index asked for.
        index: usize,
        /// The array's length.
        len: usize,
    },
    /// A task exists but has not produced the result.
    #[error("{path}: $({reference}) was not produced by its task")]
    MissingResult {
        /// The reference.
        reference: String,
        /// The field.
        path: String,
    },
}

impl SubstitutionError {
    /// The reference, as written between `$(` and `)`.
    pub fn reference(&self) -> &str {
        match self {
            SubstitutionError::Unknown { reference, .. }
            | SubstitutionError::Malformed { reference, .. }
            | SubstitutionError::NotAString { reference, .. }
            | SubstitutionError::TypeMismatch { reference, .. }
            | SubstitutionError::IndexOutOfRange { reference, .. }
            | SubstitutionError::MissingResult { reference, .. } => reference,
        }
    }

    /// The field path the reference was found in.
    pub fn path(&self) -> &str {
        match self {
            SubstitutionError::Unknown { path, .. }
            | SubstitutionError::Malformed { path, .. }
            | SubstitutionError::NotAString { path, .. }
            | SubstitutionError::TypeMismatch { path, .. }
            | SubstitutionError::IndexOutOfRange { path, .. }
            | SubstitutionError::MissingResult { path, .. } => path,
        }
    }
}

/// Which scope's references [`Replacements`] resolves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scope {
    /// A Task's steps and sidecars.
    #[default]
    Task,
    /// A Pipeline's tasks (params, `when`) and results.
    Pipeline,
    /// A partial pass: only references that have a value here are
    /// resolved and every other one is left as written for a later pass.
    /// Used to hand a Pipeline's params and context into an embedded
    /// `taskSpec` (propagated params), and to resolve task-scope
    /// references (`$(context.taskRun.name)`, `$(workspaces.w.path)`, …)
    /// inside param values before they are substituted.
    Partial,
}

/// The values a workspace's references resolve to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkspaceValues {
    /// `$(workspaces.<w>.path)`.
    pub path: String,
    /// `$(workspaces.<w>.bound)`.
    pub bound: bool,
    /// `$(workspaces.<w>.claim)`.
    pub claim: String,
    /// `$(workspaces.<w>.volume)`.
    pub volume: String,
}

/// What the references of one scope resolve to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replacements {
    /// Which references these values are for; the other scope's are left as written.
    pub scope: Scope,
    /// Param values (defaults already applied).
    pub params: BTreeMap<String, ParamValue>,
    /// Pipeline scope: every pipeline task (DAG and finally) by name, so
    /// that a result a task did not produce is told apart from a task that
    /// does not exist.
    pub tasks: BTreeSet<String>,
    /// Pipeline scope: results of DAG tasks, by task then result name.
    pub task_results: BTreeMap<String, BTreeMap<String, ParamValue>>,
    /// Pipeline scope: results of finally tasks, by task then result name.
    pub finally_results: BTreeMap<String, BTreeMap<String, ParamValue>>,
    /// Pipeline scope: `$(tasks.<t>.status)` by task.
    pub task_statuses: BTreeMap<String, String>,
    /// Pipeline scope: `$(tasks.<t>.reason)` by task.
    pub task_reasons: BTreeMap<String, String>,
    /// Pipeline scope: `$(tasks.status)`.
    pub tasks_status: Option<String>,
    /// Pipeline scope: `$(tasks.<t>.matrix.length)` by task.
    pub matrix_lengths: BTreeMap<String, usize>,
    /// Task scope: `$(results.<r>.path)` by result.
    pub result_paths: BTreeMap<String, String>,
    /// Task scope: `$(steps.step-<s>.exitCode.path)` by step name.
    pub step_exit_code_paths: BTreeMap<String, String>,
    /// Workspaces by name (pipeline scope reads only `bound`).
    pub workspaces: BTreeMap<String, WorkspaceValues>,
    /// `$(context.*)` values.
    pub context: BTreeMap<ContextVar, String>,
    /// Task scope: `$(credentials.path)`.
    pub credentials_path: Option<String>,
}

/// Where step results are written: `/tekton/results`.
pub const RESULTS_DIR: &str = "/tekton/results";
/// Where step exit codes are written: `/tekton/steps`.
pub const STEPS_DIR: &str = "/tekton/steps";
/// Where credentials are initialized: `/tekton/creds`.
pub const CREDENTIALS_DIR: &str = "/tekton/creds";

/// Who is running a Task, for [`Replacements::for_task`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskRunContext {
    /// The TaskRun's name.
    pub task_run_name: String,
    /// The TaskRun's namespace.
    pub namespace: String,
    /// The TaskRun's uid.
    pub uid: String,
    /// The Task's name (`taskRef.name`), empty for an embedded spec.
    pub task_name: String,
    /// How many times the TaskRun has been retried so far.
    pub retry_count: u32,
}

impl Replacements {
    /// Empty task-scope values.
    pub fn task() -> Self {
        Replacements {
            scope: Scope::Task,
            ..Replacements::default()
        }
    }

    /// Empty pipeline-scope values.
    pub fn pipeline() -> Self {
        Replacements {
            scope: Scope::Pipeline,
            ..Replacements::default()
        }
    }

    /// The task-scope values for running `spec`: `params` (defaults
    /// applied by the caller, see [`crate::api::effective_params`]), result
    /// and exit-code paths, workspace values from `bindings` and the run's
    /// context.
    pub fn for_task(
        spec: &TaskSpec,
        params: BTreeMap<String, ParamValue>,
        bindings: &[WorkspaceBinding],
        context: &TaskRunContext,
    ) -> Self {
        let mut r = Replacements::task();
        r.params = params;
        for result in &spec.results {
            r.result_paths.insert(
                result.name.clone(),
                format!("{RESULTS_DIR}/{}", result.name),
            );
        }
        for step in &spec.steps {
            if !step.name.is_empty() {
                r.step_exit_code_paths.insert(
                    step.name.clone(),
                    format!("{STEPS_DIR}/step-{}/exitCode", step.name),
                );
            }
        }
        for decl in &spec.workspaces {
            let binding = bindings.iter().find(|b| b.name == decl.name);
            r.workspaces.insert(
                decl.name.clone(),
                WorkspaceValues {
                    path: decl.effective_mount_path(),
                    bound: binding.is_some(),
                    claim: binding
                        .map(|b| b.claim_name().to_owned())
                        .unwrap_or_default(),
                    volume: binding
                        .map(|b| format!("ws-{}", b.name))
                        .unwrap_or_default(),
                },
            );
        }
        let c = &mut r.context;
        c.insert(ContextVar::TaskRunName, context.task_run_name.clone());
        c.insert(ContextVar::TaskRunNamespace, context.namespace.clone());
        c.insert(ContextVar::TaskRunUid, context.uid.clone());
        c.insert(ContextVar::TaskName, context.task_name.clone());
        c.insert(ContextVar::TaskRetryCount, context.retry_count.to_string());
        r.credentials_path = Some(CREDENTIALS_DIR.to_owned());
        r
    }

    /// Whether this scope resolves `reference` (others are left as written).
    pub fn owns(&self, reference: &Reference) -> bool {
        match self.scope {
            Scope::Task => reference.is_task_scope(),
            Scope::Pipeline => reference.is_pipeline_scope(),
            Scope::Partial => self.has_value(reference),
        }
    }

    /// Whether these values hold something for `reference` (the selector
    /// is not checked: a wrong one is still an error).
    fn has_value(&self, reference: &Reference) -> bool {
        let result_of =
            |results: &BTreeMap<String, BTreeMap<String, ParamValue>>, task: &str, result: &str| {
                results.get(task).is_some_and(|r| r.contains_key(result))
            };
        match reference {
            Reference::Param { name, .. } => self.params.contains_key(name),
            Reference::TaskResult { task, result, .. } => {
                result_of(&self.task_results, task, result)
            }
            Reference::FinallyResult { task, result, .. } => {
                result_of(&self.finally_results, task, result)
            }
            Reference::TaskStatus { task } => self.task_statuses.contains_key(task),
            Reference::TaskReason { task } => self.task_reasons.contains_key(task),
            Reference::TasksStatus => self.tasks_status.is_some(),
            Reference::MatrixLength { task } => self.matrix_lengths.contains_key(task),
            Reference::ResultPath { result } => self.result_paths.contains_key(result),
            Reference::StepExitCodePath { step } => self.step_exit_code_paths.contains_key(step),
            Reference::Workspace { name, .. } => self.workspaces.contains_key(name),
            Reference::Context(var) => self.context.contains_key(var),
            Reference::CredentialsPath => self.credentials_path.is_some(),
        }
    }

    /// The same values as a [`Scope::Partial`] pass without params: it
    /// resolves every other reference these values know and leaves
    /// `$(params.*)` as written. Used on param values, which may carry
    /// task-scope references (`$(context.taskRun.name)`) down to a Task.
    pub fn without_params(&self) -> Self {
        Replacements {
            scope: Scope::Partial,
            params: BTreeMap::new(),
            ..self.clone()
        }
    }

    /// Resolves the task-scope references inside these (task-scope)
    /// param values — `$(context.*)`, `$(workspaces.*)`, result and
    /// exit-code paths, `$(credentials.path)` — so that a step reading the
    /// param gets the resolved text (upstream substitutes params first and
    /// the other references after, with the same effect). `$(params.*)`
    /// inside a value is left as written. Errors name `params.<name>`.
    pub fn resolve_param_values(&mut self) -> Result<(), SubstitutionError> {
        let pass = self.without_params();
        for (name, value) in &mut self.params {
            *value = pass.substitute_value(value, &format!("params.{name}"))?;
        }
        Ok(())
    }

    /// The value of an owned reference.
    fn lookup(
        &self,
        reference: &Reference,
        expr: &str,
        path: &str,
    ) -> Result<ParamValue, SubstitutionError> {
        let unknown = || SubstitutionError::Unknown {
            reference: expr.to_owned(),
            path: path.to_owned(),
        };
        let text = |v: Option<&String>| v.cloned().map(ParamValue::String).ok_or_else(unknown);
        match reference {
            Reference::Param { name, selector } => {
                let value = self.params.get(name).ok_or_else(unknown)?;
                select(value, selector, expr, path)
            }
            Reference::TaskResult {
                task,
                result,
                selector,
            } => self.result(&self.task_results, task, result, selector, expr, path),
            Reference::FinallyResult {
                task,
                result,
                selector,
            } => self.result(&self.finally_results, task, result, selector, expr, path),
            Reference::TaskStatus { task } => text(self.task_statuses.get(task)),
            Reference::TaskReason { task } => text(self.task_reasons.get(task)),
            Reference::TasksStatus => text(self.tasks_status.as_ref()),
            Reference::MatrixLength { task } => self
                .matrix_lengths
                .get(task)
                .map(|n| ParamValue::String(n.to_string()))
                .ok_or_else(unknown),
            Reference::ResultPath { result } => text(self.result_paths.get(result)),
            Reference::StepExitCodePath { step } => text(self.step_exit_code_paths.get(step)),
            Reference::Workspace { name, field } => {
                let ws = self.workspaces.get(name).ok_or_else(unknown)?;
                Ok(ParamValue::String(match field {
                    WorkspaceField::Path => ws.path.clone(),
                    WorkspaceField::Bound => ws.bound.to_string(),
                    WorkspaceField::Claim => ws.claim.clone(),
                    WorkspaceField::Volume => ws.volume.clone(),
                }))
            }
            Reference::Context(var) => text(self.context.get(var)),
            Reference::CredentialsPath => text(self.credentials_path.as_ref()),
        }
    }

    fn result(
        &self,
        results: &BTreeMap<String, BTreeMap<String, ParamValue>>,
        task: &str,
        result: &str,
        selector: &Selector,
        expr: &str,
        path: &str,
    ) -> Result<ParamValue, SubstitutionError> {
        match results.get(task).and_then(|r| r.get(result)) {
            Some(value) => select(value, selector, expr, path),
            None if self.tasks.contains(task) || results.contains_key(task) => {
                Err(SubstitutionError::MissingResult {
                    reference: expr.to_owned(),
                    path: path.to_owned(),
                })
            }
            None => Err(SubstitutionError::Unknown {
                reference: expr.to_owned(),
                path: path.to_owned(),
            }),
        }
    }

    /// Substitutes every owned reference in a string field. Each must
    /// resolve to a string (`[*]` is only allowed in array fields).
    pub fn substitute_string(&self, text: &str, path: &str) -> Result<String, SubstitutionError> {
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for occurrence in scan(text) {
            let reference = match &occurrence.reference {
                Ok(r) => r,
                Err(reason) => {
                    return Err(SubstitutionError::Malformed {
                        reference: occurrence.expression,
                        path: path.to_owned(),
                        reason: reason.clone(),
                    });
                }
            };
            if !self.owns(reference) {
                continue;
            }
            let value = self.lookup(reference, &occurrence.expression, path)?;
            let ParamValue::String(s) = value else {
                return Err(SubstitutionError::NotAString {
                    reference: occurrence.expression,
                    path: path.to_owned(),
                    found: value.param_type(),
                });
            };
            out.push_str(&text[last..occurrence.start]);
            out.push_str(&s);
            last = occurrence.end;
        }
        out.push_str(&text[last..]);
        Ok(out)
    }

    /// Substitutes an array field: an element that is exactly one `[*]`
    /// reference to an array expands in place; other elements are strings.
    /// Paths are `path[i]`.
    pub fn substitute_array(
        &self,
        items: &[String],
        path: &str,
    ) -> Result<Vec<String>, SubstitutionError> {
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            match self.whole_star_reference(item, &item_path)? {
                Some(ParamValue::Array(values)) => out.extend(values),
                Some(other) => {
                    return Err(SubstitutionError::NotAString {
                        reference: star_expression(item),
                        path: item_path,
                        found: other.param_type(),
                    });
                }
                None => out.push(self.substitute_string(item, &item_path)?),
            }
        }
        Ok(out)
    }

    /// Substitutes a param value. A string value that is exactly one `[*]`
    /// reference becomes the referenced array or object.
    pub fn substitute_value(
        &self,
        value: &ParamValue,
        path: &str,
    ) -> Result<ParamValue, SubstitutionError> {
        match value {
            ParamValue::String(s) => match self.whole_star_reference(s, path)? {
                Some(v) => Ok(v),
                None => self.substitute_string(s, path).map(ParamValue::String),
            },
            ParamValue::Array(items) => self.substitute_array(items, path).map(ParamValue::Array),
            ParamValue::Object(map) => map
                .iter()
                .map(|(k, v)| {
                    Ok((
                        k.clone(),
                        self.substitute_string(v, &format!("{path}.{k}"))?,
                    ))
                })
                .collect::<Result<BTreeMap<_, _>, _>>()
                .map(ParamValue::Object),
        }
    }

    /// The value of `text` when it is exactly one owned `[*]` reference.
    fn whole_star_reference(
        &self,
        text: &str,
        path: &str,
    ) -> Result<Option<ParamValue>, SubstitutionError> {
        let found = scan(text);
        let [occurrence] = found.as_slice() else {
            return Ok(None);
        };
        match &occurrence.reference {
            Ok(reference)
                if occurrence.is_whole(text)
                    && reference.selector() == Some(&Selector::All)
                    && self.owns(reference) =>
            {
                self.lookup(reference, &occurrence.expression, path)
                    .map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Substitutes a `when` expression's input, values and CEL text.
    pub fn substitute_when(
        &self,
        when: &WhenExpression,
        path: &str,
    ) -> Result<WhenExpression, SubstitutionError> {
        Ok(WhenExpression {
            input: self.substitute_string(&when.input, &format!("{path}.input"))?,
            operator: when.operator.clone(),
            values: self.substitute_array(&when.values, &format!("{path}.values"))?,
            cel: when
                .cel
                .as_deref()
                .map(|c| self.substitute_string(c, &format!("{path}.cel")))
                .transpose()?,
        })
    }
}

fn star_expression(text: &str) -> String {
    scan(text)
        .into_iter()
        .next()
        .map(|o| o.expression)
        .unwrap_or_else(|| text.to_owned())
}

/// Applies a selector to a value.
fn select(
    value: &ParamValue,
    selector: &Selector,
    expr: &str,
    path: &str,
) -> Result<ParamValue, SubstitutionError> {
    let mismatch = || SubstitutionError::TypeMismatch {
        reference: expr.to_owned(),
        path: path.to_owned(),
        found: value.param_type(),
    };
    match (selector, value) {
        (Selector::Whole, v) => Ok(v.clone()),
        (Selector::All, ParamValue::Array(_) | ParamValue::Object(_)) => Ok(value.clone()),
        (Selector::Index(i), ParamValue::Array(items)) => {
            items.get(*i).cloned().map(ParamValue::String).ok_or(
                SubstitutionError::IndexOutOfRange {
                    reference: expr.to_owned(),
                    path: path.to_owned(),
                    index: *i,
                    len: items.len(),
                },
            )
        }
        (Selector::Key(k), ParamValue::Object(map)) => map
            .get(k)
            .cloned()
            .map(ParamValue::String)
            .ok_or_else(|| SubstitutionError::Unknown {
                reference: expr.to_owned(),
                path: path.to_owned(),
            }),
        _ => Err(mismatch()),
    }
}

fn substitute_opt(
    r: &Replacements,
    value: &Option<String>,
    path: &str,
) -> Result<Option<String>, SubstitutionError> {
    value
        .as_deref()
        .map(|v| r.substitute_string(v, path))
        .transpose()
}

fn substitute_step(r: &Replacements, step: &Step, path: &str) -> Result<Step, SubstitutionError> {
    let mut out = step.clone();
    out.image = substitute_opt(r, &step.image, &format!("{path}.image"))?;
    out.command = r.substitute_array(&step.command, &format!("{path}.command"))?;
    out.args = r.substitute_array(&step.args, &format!("{path}.args"))?;
    out.script = substitute_opt(r, &step.script, &format!("{path}.script"))?;
    out.working_dir = substitute_opt(r, &step.working_dir, &format!("{path}.workingDir"))?;
    for (i, env) in out.env.iter_mut().enumerate() {
        env.value = substitute_opt(r, &env.value, &format!("{path}.env[{i}].value"))?;
    }
    for (i, mount) in out.volume_mounts.iter_mut().enumerate() {
        let p = format!("{path}.volumeMounts[{i}]");
        mount.name = r.substitute_string(&mount.name, &format!("{p}.name"))?;
        mount.mount_path = r.substitute_string(&mount.mount_path, &format!("{p}.mountPath"))?;
        mount.sub_path = substitute_opt(r, &mount.sub_path, &format!("{p}.subPath"))?;
    }
    for (i, param) in out.params.iter_mut().enumerate() {
        param.value = r.substitute_value(&param.value, &format!("{path}.params[{i}].value"))?;
    }
    for (i, when) in step.when.iter().enumerate() {
        out.when[i] = r.substitute_when(when, &format!("{path}.when[{i}]"))?;
    }
    for (field, config) in [
        ("stdoutConfig", &mut out.stdout_config),
        ("stderrConfig", &mut out.stderr_config),
    ] {
        if let Some(config) = config {
            config.path = substitute_opt(r, &config.path, &format!("{path}.{field}.path"))?;
        }
    }
    Ok(out)
}

/// Resolves every substitutable field of a Task spec: each step's (and the
/// step template's) image, command, args, script, working directory, env
/// values, volume mounts, params, `when` and output paths, and each
/// sidecar's image, command, args, script, working directory and env
/// values. Paths in errors are relative to the spec (`steps[0].args[1]`).
pub fn resolve_task_spec(spec: &TaskSpec, r: &Replacements) -> Result<TaskSpec, SubstitutionError> {
    let mut out = spec.clone();
    for (i, step) in spec.steps.iter().enumerate() {
        out.steps[i] = substitute_step(r, step, &format!("steps[{i}]"))?;
    }
    if let Some(template) = &mut out.step_template {
        template.image = substitute_opt(r, &template.image, "stepTemplate.image")?;
        template.command = r.substitute_array(&template.command, "stepTemplate.command")?;
        template.args = r.substitute_array(&template.args, "stepTemplate.args")?;
        template.working_dir = substitute_opt(r, &template.working_dir, "stepTemplate.workingDir")?;
        for (i, env) in template.env.iter_mut().enumerate() {
            env.value = substitute_opt(r, &env.value, &format!("stepTemplate.env[{i}].value"))?;
        }
    }
    for (i, sidecar) in out.sidecars.iter_mut().enumerate() {
        let p = format!("sidecars[{i}]");
        sidecar.image = substitute_opt(r, &sidecar.image, &format!("{p}.image"))?;
        sidecar.command = r.substitute_array(&sidecar.command, &format!("{p}.command"))?;
        sidecar.args = r.substitute_array(&sidecar.args, &format!("{p}.args"))?;
        sidecar.script = substitute_opt(r, &sidecar.script, &format!("{p}.script"))?;
        sidecar.working_dir = substitute_opt(r, &sidecar.working_dir, &format!("{p}.workingDir"))?;
        for (j, env) in sidecar.env.iter_mut().enumerate() {
            env.value = substitute_opt(r, &env.value, &format!("{p}.env[{j}].value"))?;
        }
    }
    Ok(out)
}

/// Every reference in a pipeline task's substitutable fields: its params,
/// `when` inputs, values and CEL text, matrix params, display name and
/// workspace `subPath`s.
pub fn pipeline_task_references(task: &PipelineTask) -> Vec<Reference> {
    let mut texts: Vec<&str> = Vec::new();
    for param in &task.params {
        collect_value_texts(&param.value, &mut texts);
    }
    for when in &task.when {
        texts.push(&when.input);
        texts.extend(when.values.iter().map(String::as_str));
        if let Some(cel) = &when.cel {
            texts.push(cel);
        }
    }
    if let Some(name) = &task.display_name {
        texts.push(name);
    }
    texts.extend(task.workspaces.iter().filter_map(|w| w.sub_path.as_deref()));
    let mut refs: Vec<Reference> = texts.into_iter().flat_map(references).collect();
    if let Some(matrix) = &task.matrix {
        let mut strings = Vec::new();
        json_strings(matrix, &mut strings);
        refs.extend(strings.iter().flat_map(|s| references(s)));
    }
    refs
}

fn collect_value_texts<'a>(value: &'a ParamValue, texts: &mut Vec<&'a str>) {
    match value {
        ParamValue::String(s) => texts.push(s),
        ParamValue::Array(items) => texts.extend(items.iter().map(String::as_str)),
        ParamValue::Object(map) => texts.extend(map.values().map(String::as_str)),
    }
}

fn json_strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| json_strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| json_strings(v, out)),
        _ => {}
    }
}

/// The pipeline tasks whose results `task` reads (in params, `when` or
/// matrix): the DAG edges results imply (`specs/BUILD.md §1.7`).
pub fn result_dependencies(task: &PipelineTask) -> BTreeSet<String> {
    pipeline_task_references(task)
        .into_iter()
        .filter_map(|r| match r {
            Reference::TaskResult { task, .. } => Some(task),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests;
