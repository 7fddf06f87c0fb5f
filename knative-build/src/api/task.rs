//! `Task`: params, results, workspaces and the ordered steps that run
//! them (`specs/BUILD.md §1.1–§1.6`).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Volume;
use knative_core::apis::names::validate_dns1123_subdomain;
use knative_core::apis::{Context, FieldError, SetDefaults, Validate};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::param::{ParamSpec, validate_param_specs};
use super::result::{TaskResult, validate_task_results};
use super::step::{Sidecar, Step, StepTemplate};
use super::variables::{Field, ParamScope, TaskScope};
use super::workspace::{WorkspaceDeclaration, validate_workspace_declarations};

/// What a Task declares and runs. Also the inline `taskSpec` of TaskRuns
/// and pipeline tasks.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "tekton.dev",
    version = "v1",
    derive = "PartialEq",
    kind = "Task",
    namespaced,
    category = "tekton",
    category = "tekton-pipelines"
)]
#[serde(rename_all = "camelCase")]
pub struct TaskSpec {
    /// A name for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// What the Task does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The params it takes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<ParamSpec>,
    /// The steps, run one after another (at least one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    /// Defaults for every step's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_template: Option<StepTemplate>,
    /// Containers running beside the steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sidecars: Vec<Sidecar>,
    /// Volumes steps and sidecars may mount.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// The workspaces it needs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workspaces: Vec<WorkspaceDeclaration>,
    /// The results it writes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<TaskResult>,
}

/// Names an enclosing run or pipeline hands down to an embedded spec
/// (propagated params and workspaces), which it may use undeclared.
#[derive(Clone, Debug, Default)]
pub(crate) struct Propagated {
    pub(crate) params: BTreeSet<String>,
    pub(crate) workspaces: BTreeSet<String>,
}

impl TaskSpec {
    /// The declared param of that name.
    pub fn param(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }

    /// The declared result of that name.
    pub fn result(&self, name: &str) -> Option<&TaskResult> {
        self.results.iter().find(|r| r.name == name)
    }

    /// The steps with the step template applied ([`Step::with_template`]).
    pub fn effective_steps(&self) -> Vec<Step> {
        match &self.step_template {
            Some(t) => self.steps.iter().map(|s| s.with_template(t)).collect(),
            None => self.steps.clone(),
        }
    }

    /// Checks the spec with names handed down by an enclosing object.
    /// Paths are relative to the spec.
    pub(crate) fn validate_with(&self, outer: &Propagated) -> FieldError {
        let mut errs = FieldError::none();
        if self.steps.is_empty() {
            errs.push(
                FieldError::missing_field("steps").with_details("a Task runs at least one step"),
            );
        }
        let template_has_image = self
            .step_template
            .as_ref()
            .and_then(|t| t.image.as_deref())
            .is_some_and(|i| !i.is_empty());
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, step) in self.steps.iter().enumerate() {
            errs.push(
                step.validate(template_has_image)
                    .via_field_index("steps", i),
            );
            if step.name.is_empty() {
                continue;
            }
            if let Some(first) = names.insert(step.name.as_str(), i) {
                errs.push(
                    FieldError::new(
                        format!(
                            "step name {:?} is already used by steps[{first}]",
                            step.name
                        ),
                        "name",
                    )
                    .via_field_index("steps", i),
                );
            }
        }
        errs.push(validate_param_specs(&self.params, "params"));
        errs.push(validate_task_results(&self.results, "results"));
        errs.push(validate_workspace_declarations(
            &self.workspaces,
            "workspaces",
        ));
        let mut sidecar_names: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, sidecar) in self.sidecars.iter().enumerate() {
            if sidecar.image.as_deref().is_none_or(str::is_empty) {
                errs.push(FieldError::missing_field("image").via_field_index("sidecars", i));
            }
            if sidecar.script.is_some() && !sidecar.command.is_empty() {
                errs.push(
                    FieldError::new(
                        "script and command are mutually exclusive: the script is the sidecar's program",
                        "script",
                    )
                    .via_field_index("sidecars", i),
                );
            }
            if !sidecar.name.is_empty()
                && let Some(first) = sidecar_names.insert(sidecar.name.as_str(), i)
            {
                errs.push(
                    FieldError::new(
                        format!(
                            "sidecar name {:?} is already used by sidecars[{first}]",
                            sidecar.name
                        ),
                        "name",
                    )
                    .via_field_index("sidecars", i),
                );
            }
        }
        errs.push(self.validate_references(outer));
        errs
    }

    /// Checks every `$(...)` reference in steps, the step template and
    /// sidecars against the declarations.
    fn validate_references(&self, outer: &Propagated) -> FieldError {
        let mut workspaces = outer.workspaces.clone();
        workspaces.extend(self.workspaces.iter().map(|w| w.name.clone()));
        let scope = TaskScope {
            params: ParamScope::new(&self.params, outer.params.clone()),
            results: self.results.iter().map(|r| r.name.as_str()).collect(),
            workspaces,
            steps: self
                .steps
                .iter()
                .filter(|s| !s.name.is_empty())
                .map(|s| s.name.as_str())
                .collect(),
        };
        let mut errs = FieldError::none();
        let mut check = |text: &str, field: Field, path: String| {
            errs.push(scope.check(text, field, &path));
        };
        for (i, step) in self.steps.iter().enumerate() {
            let p = format!("steps[{i}]");
            container_texts(
                step.image.as_deref(),
                &step.command,
                &step.args,
                step.script.as_deref(),
                step.working_dir.as_deref(),
                step.env.iter().map(|e| e.value.as_deref()),
                &p,
                &mut check,
            );
            for (j, param) in step.params.iter().enumerate() {
                if let Some(s) = param.value.as_string() {
                    check(s, Field::ParamValue, format!("{p}.params[{j}].value"));
                }
            }
            for (j, when) in step.when.iter().enumerate() {
                check(&when.input, Field::String, format!("{p}.when[{j}].input"));
                for (k, v) in when.values.iter().enumerate() {
                    check(v, Field::ArrayElement, format!("{p}.when[{j}].values[{k}]"));
                }
            }
            for (j, mount) in step.volume_mounts.iter().enumerate() {
                check(
                    &mount.mount_path,
                    Field::String,
                    format!("{p}.volumeMounts[{j}].mountPath"),
                );
            }
        }
        if let Some(t) = &self.step_template {
            container_texts(
                t.image.as_deref(),
                &t.command,
                &t.args,
                None,
                t.working_dir.as_deref(),
                t.env.iter().map(|e| e.value.as_deref()),
                "stepTemplate",
                &mut check,
            );
        }
        for (i, s) in self.sidecars.iter().enumerate() {
            container_texts(
                s.image.as_deref(),
                &s.command,
                &s.args,
                s.script.as_deref(),
                s.working_dir.as_deref(),
                s.env.iter().map(|e| e.value.as_deref()),
                &format!("sidecars[{i}]"),
                &mut check,
            );
        }
        errs
    }
}

/// Feeds the substitutable fields of a container to `check`.
#[allow(clippy::too_many_arguments)]
fn container_texts<'a>(
    image: Option<&str>,
    command: &[String],
    args: &[String],
    script: Option<&str>,
    working_dir: Option<&str>,
    env: impl Iterator<Item = Option<&'a str>>,
    path: &str,
    check: &mut impl FnMut(&str, Field, String),
) {
    if let Some(image) = image {
        check(image, Field::String, format!("{path}.image"));
    }
    for (i, c) in command.iter().enumerate() {
        check(c, Field::ArrayElement, format!("{path}.command[{i}]"));
    }
    for (i, a) in args.iter().enumerate() {
        check(a, Field::ArrayElement, format!("{path}.args[{i}]"));
    }
    if let Some(script) = script {
        check(script, Field::String, format!("{path}.script"));
    }
    if let Some(dir) = working_dir {
        check(dir, Field::String, format!("{path}.workingDir"));
    }
    for (i, value) in env.enumerate() {
        if let Some(value) = value {
            check(value, Field::String, format!("{path}.env[{i}].value"));
        }
    }
}

impl SetDefaults for TaskSpec {
    /// Infers param and result types.
    fn set_defaults(&mut self, _ctx: &Context<'_>) {
        for param in &mut self.params {
            param.set_defaults();
        }
        for result in &mut self.results {
            result.set_defaults();
        }
        for step in &mut self.steps {
            for result in &mut step.results {
                result.set_defaults();
            }
        }
    }
}

impl Validate for TaskSpec {
    /// Paths are relative to the spec (`steps[0].image`).
    fn validate(&self, _ctx: &Context<'_>) -> FieldError {
        self.validate_with(&Propagated::default())
    }
}

impl SetDefaults for Task {
    fn set_defaults(&mut self, ctx: &Context<'_>) {
        self.spec.set_defaults(ctx);
    }
}

impl Validate for Task {
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
    use crate::api::ParamValue;

    fn task(yaml: &str) -> Task {
        serde_yaml::from_str(yaml).expect("valid test input")
    }

    fn errors(yaml: &str) -> String {
        let mut t = task(yaml);
        let ctx = Context::create();
        t.set_defaults(&ctx);
        t.validate(&ctx).to_string()
    }

    const HEAD: &str = "apiVersion: tekton.dev/v1\nkind: Task\nmetadata: {name: t}\n";

    #[test]
    fn a_task_needs_steps() {
        assert_eq!(
            errors(&format!("{HEAD}spec: {{}}")),
            "spec.steps: missing field\na Task runs at least one step"
        );
    }

    #[test]
    fn script_and_command_together_are_reported_on_the_script() {
        let err = errors(&format!(
            "{HEAD}spec:\n  steps:\n    - {{name: a, image: alpine, command: [sh], script: 'echo hi'}}\n"
        ));
        assert_eq!(
            err,
            "spec.steps[0].script: script and command are mutually exclusive: the script is the step's program"
        );
    }

    #[test]
    fn duplicate_step_names_are_reported_on_the_second() {
        let err = errors(&format!(
            "{HEAD}spec:\n  steps:\n    - {{name: a, image: alpine}}\n    - {{name: a, image: alpine}}\n"
        ));
        assert_eq!(
            err,
            "spec.steps[1].name: step name \"a\" is already used by steps[0]"
        );
    }

    #[test]
    fn unknown_param_references_name_the_field() {
        let err = errors(&format!(
            "{HEAD}spec:\n  params: [{{name: who}}]\n  steps:\n    - name: a\n      image: alpine\n      args: [\"$(params.who)\", \"$(params.what)\"]\n"
        ));
        assert_eq!(
            err,
            "spec.steps[0].args[1]: $(params.what) refers to param \"what\", which is not declared"
        );
    }

    #[test]
    fn star_references_are_only_whole_array_elements() {
        let yaml = format!(
            "{HEAD}spec:\n  params: [{{name: flags, type: array}}]\n  steps:\n    - name: a\n      image: alpine\n      args: [\"$(params.flags[*])\", \"x $(params.flags[*])\"]\n      script: echo $(params.flags[0])\n"
        );
        assert_eq!(
            errors(&yaml),
            "spec.steps[0].args[1]: $(params.flags[*]) may only be used as a whole element of an array field"
        );
    }

    #[test]
    fn step_template_image_satisfies_steps() {
        let yaml = format!(
            "{HEAD}spec:\n  stepTemplate: {{image: alpine}}\n  steps:\n    - {{name: a, script: echo}}\n"
        );
        assert_eq!(errors(&yaml), "");
    }

    #[test]
    fn results_and_workspaces_must_be_declared() {
        let yaml = format!(
            "{HEAD}spec:\n  results: [{{name: out}}]\n  steps:\n    - name: a\n      image: alpine\n      script: |\n        echo -n x > $(results.out.path)\n        echo -n y > $(results.other.path)\n        ls $(workspaces.src.path)\n"
        );
        assert_eq!(
            errors(&yaml),
            "spec.steps[0].script: $(results.other.path) refers to result \"other\", which is not declared\n\
             spec.steps[0].script: $(workspaces.src.path) refers to workspace \"src\", which is not declared"
        );
    }

    #[test]
    fn defaults_infer_param_types() {
        let mut t = task(&format!(
            "{HEAD}spec:\n  params: [{{name: a, default: [x]}}, {{name: b}}]\n  steps: [{{name: s, image: alpine}}]\n"
        ));
        t.set_defaults(&Context::create());
        assert_eq!(t.spec.params[0].type_, Some(crate::api::ParamType::Array));
        assert_eq!(t.spec.params[1].type_, Some(crate::api::ParamType::String));
        assert_eq!(
            t.spec.params[0].default,
            Some(ParamValue::Array(vec!["x".into()]))
        );
    }
}
