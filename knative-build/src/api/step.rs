//! Steps, the step template and sidecars (`specs/BUILD.md §1.2`), and the
//! built-in image-builder step.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EnvFromSource, EnvVar, ResourceRequirements, SecurityContext, VolumeDevice, VolumeMount,
};
use knative_core::apis::FieldError;
use knative_core::apis::names::validate_dns1123_label;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::param::Param;
use super::result::TaskResult;
use super::when::{WhenExpression, validate_when_expressions};

/// What happens after a step fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OnError {
    /// Record the exit code and run the next step; the TaskRun can still succeed.
    Continue,
    /// Fail the TaskRun (the default).
    StopAndFail,
}

impl OnError {
    /// Parses the wire form, `continue` or `stopAndFail`.
    pub fn parse(value: &str) -> Option<OnError> {
        match value {
            "continue" => Some(OnError::Continue),
            "stopAndFail" => Some(OnError::StopAndFail),
            _ => None,
        }
    }

    /// The wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::Continue => "continue",
            OnError::StopAndFail => "stopAndFail",
        }
    }
}

/// Where a step's stdout or stderr is also written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StepOutputConfig {
    /// The file path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A workspace a step uses (only the step's mounts see it when a Task
/// isolates workspaces).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceUsage {
    /// The Task workspace's name.
    pub name: String,
    /// Where the step sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
}

/// One step of a Task: a container run to completion, in order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// The step's name, a DNS-1123 label unique in the Task; unnamed steps
    /// run as `step-unnamed-<index>`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// A name for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The container image (or [`builtin::IMAGE_BUILDER`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The entrypoint; the image's when left out. Not with `script`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments to the entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// The working directory; not defaulted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Environment sources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// CPU and memory requests and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_resources: Option<ResourceRequirements>,
    /// Volume mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    /// Block devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_devices: Vec<VolumeDevice>,
    /// `Always`, `Never` or `IfNotPresent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// The container's security context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
    /// A script run as the step's program (a leading `#!` picks the
    /// interpreter, `sh` otherwise). Not with `command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// How long the step may run (a Go duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Workspaces this step uses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workspaces: Vec<WorkspaceUsage>,
    /// `continue` or `stopAndFail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<String>,
    /// Also write stdout to a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_config: Option<StepOutputConfig>,
    /// Also write stderr to a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_config: Option<StepOutputConfig>,
    /// A StepAction to run instead of an inline container (kept as given).
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub ref_: Option<serde_json::Value>,
    /// Params of a StepAction or of a built-in step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
    /// Results the step writes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<TaskResult>,
    /// Guards: the step is skipped when one does not hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<WhenExpression>,
}

impl Step {
    /// A step running `script` in `image`.
    pub fn script(name: impl Into<String>, image: impl Into<String>, script: &str) -> Self {
        Step {
            name: name.into(),
            image: Some(image.into()),
            script: Some(script.to_owned()),
            ..Step::default()
        }
    }

    /// The parsed `onError`, `stopAndFail` when unset or unknown.
    pub fn on_error(&self) -> OnError {
        self.on_error
            .as_deref()
            .and_then(OnError::parse)
            .unwrap_or(OnError::StopAndFail)
    }

    /// Whether this is the built-in image builder.
    pub fn is_image_builder(&self) -> bool {
        self.image.as_deref() == Some(builtin::IMAGE_BUILDER)
    }

    /// The step's container name: `step-<name>`, or `step-unnamed-<index>`.
    pub fn container_name(&self, index: usize) -> String {
        if self.name.is_empty() {
            format!("step-unnamed-{index}")
        } else {
            format!("step-{}", self.name)
        }
    }

    /// Fills unset fields from the Task's step template: image, command
    /// and args (only when the step has no command, args or script),
    /// working directory, environment (the step's variables win by name),
    /// mounts, resources and the rest.
    pub fn with_template(&self, template: &StepTemplate) -> Step {
        let mut step = self.clone();
        if step.image.is_none() {
            step.image.clone_from(&template.image);
        }
        if step.command.is_empty() && step.args.is_empty() && step.script.is_none() {
            step.command.clone_from(&template.command);
            step.args.clone_from(&template.args);
        }
        if step.working_dir.is_none() {
            step.working_dir.clone_from(&template.working_dir);
        }
        let mut env: Vec<EnvVar> = template
            .env
            .iter()
            .filter(|t| !self.env.iter().any(|e| e.name == t.name))
            .cloned()
            .collect();
        env.extend(self.env.iter().cloned());
        step.env = env;
        let mut env_from = template.env_from.clone();
        env_from.extend(self.env_from.iter().cloned());
        step.env_from = env_from;
        let mut mounts: Vec<VolumeMount> = template
            .volume_mounts
            .iter()
            .filter(|t| {
                !self
                    .volume_mounts
                    .iter()
                    .any(|m| m.mount_path == t.mount_path)
            })
            .cloned()
            .collect();
        mounts.extend(self.volume_mounts.iter().cloned());
        step.volume_mounts = mounts;
        if step.volume_devices.is_empty() {
            step.volume_devices.clone_from(&template.volume_devices);
        }
        if step.compute_resources.is_none() {
            step.compute_resources
                .clone_from(&template.compute_resources);
        }
        if step.image_pull_policy.is_none() {
            step.image_pull_policy
                .clone_from(&template.image_pull_policy);
        }
        if step.security_context.is_none() {
            step.security_context.clone_from(&template.security_context);
        }
        step
    }

    /// Checks one step; paths are relative to it. `template_has_image`
    /// says whether the step template supplies an image.
    pub(crate) fn validate(&self, template_has_image: bool) -> FieldError {
        let mut errs = FieldError::none();
        if !self.name.is_empty() {
            errs.push(validate_dns1123_label(&self.name, "name"));
        }
        if self.ref_.is_some() {
            let mut set = Vec::new();
            if self.image.is_some() {
                set.push("image");
            }
            if !self.command.is_empty() {
                set.push("command");
            }
            if !self.args.is_empty() {
                set.push("args");
            }
            if self.script.is_some() {
                set.push("script");
            }
            if !set.is_empty() {
                errs.push(FieldError::disallowed_fields(set.as_slice()).with_details(
                    "a step that runs a StepAction (`ref`) takes its container from it",
                ));
            }
        } else {
            let image_missing = self.image.as_deref().is_none_or(str::is_empty);
            if image_missing && !template_has_image {
                errs.push(FieldError::missing_field("image"));
            }
            if self.is_image_builder() {
                errs.push(builtin::validate_image_builder(self));
            } else if !self.params.is_empty() {
                errs.push(
                    FieldError::disallowed_fields("params").with_details(format!(
                        "only StepActions (`ref`) and the built-in `{}` step take params",
                        builtin::IMAGE_BUILDER
                    )),
                );
            }
        }
        if self.script.is_some() && !self.command.is_empty() {
            errs.push(FieldError::new(
                "script and command are mutually exclusive: the script is the step's program",
                "script",
            ));
        }
        if let Some(on_error) = &self.on_error
            && OnError::parse(on_error).is_none()
        {
            errs.push(
                FieldError::invalid_value(on_error, "onError")
                    .with_details("onError is `continue` or `stopAndFail`"),
            );
        }
        if let Some(timeout) = &self.timeout {
            errs.push(super::validate_duration(timeout, "timeout"));
        }
        errs.push(validate_when_expressions(&self.when, "when"));
        errs
    }
}

/// Defaults for every step of a Task: the container fields a step leaves unset.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepTemplate {
    /// The image of steps that name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The entrypoint of steps that give no command, args or script.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// The arguments of steps that give no command, args or script.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// The working directory of steps that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Environment sources added to every step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,
    /// Environment variables every step gets unless it sets them itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Requests and limits of steps that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_resources: Option<ResourceRequirements>,
    /// Mounts every step gets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    /// Devices of steps that set none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_devices: Vec<VolumeDevice>,
    /// Pull policy of steps that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// Security context of steps that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
}

/// A container running beside the steps for the whole TaskRun. The fields
/// substitution touches are typed; the rest of the container is kept as given.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sidecar {
    /// The sidecar's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The container image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments to the entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// A script run as the sidecar's program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// The working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Every other container field (ports, probes, mounts, …), as given.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// The built-in image-builder step: a step whose `image` is
/// [`IMAGE_BUILDER`](builtin::IMAGE_BUILDER) is run by the project's OCI image builder instead of
/// a container (`specs/BUILD.md §2`).
///
/// It takes its inputs as step `params` and writes the Task results
/// [`IMAGE_DIGEST`](builtin::RESULT_IMAGE_DIGEST) and
/// [`IMAGE_URL`](builtin::RESULT_IMAGE_URL) when the Task declares them:
///
/// ```yaml
/// - name: build
///   image: knative.dev/build/image
///   params:
///     - {name: source, value: $(workspaces.source.path)/bin}
///     - {name: image, value: $(params.image)}
///     - {name: base, value: gcr.io/distroless/static}
///     - {name: entrypoint, value: /app/server}
/// ```
pub mod builtin {
    use knative_core::apis::FieldError;

    use super::Step;

    /// The image name that selects the built-in image builder.
    pub const IMAGE_BUILDER: &str = "knative.dev/build/image";
    /// Param: the directory whose contents become the image's layer (required).
    pub const PARAM_SOURCE: &str = "source";
    /// Param: the image reference to push to (required).
    pub const PARAM_IMAGE: &str = "image";
    /// Param: the base image to build on (optional; an empty base otherwise).
    pub const PARAM_BASE: &str = "base";
    /// Param: the image's entrypoint (optional).
    pub const PARAM_ENTRYPOINT: &str = "entrypoint";
    /// Result: the pushed manifest's digest, `sha256:<hex>`.
    pub const RESULT_IMAGE_DIGEST: &str = "IMAGE_DIGEST";
    /// Result: the pushed image reference.
    pub const RESULT_IMAGE_URL: &str = "IMAGE_URL";

    const KNOWN: [&str; 4] = [PARAM_SOURCE, PARAM_IMAGE, PARAM_BASE, PARAM_ENTRYPOINT];

    /// Checks a built-in image-builder step; paths are relative to the step.
    pub(crate) fn validate_image_builder(step: &Step) -> FieldError {
        let mut errs = FieldError::none();
        let mut set = Vec::new();
        if !step.command.is_empty() {
            set.push("command");
        }
        if !step.args.is_empty() {
            set.push("args");
        }
        if step.script.is_some() {
            set.push("script");
        }
        if !set.is_empty() {
            errs.push(
                FieldError::disallowed_fields(set.as_slice()).with_details(format!(
                    "the built-in `{IMAGE_BUILDER}` step takes params only"
                )),
            );
        }
        for (i, param) in step.params.iter().enumerate() {
            if !KNOWN.contains(&param.name.as_str()) {
                errs.push(
                    FieldError::invalid_value(&param.name, "name")
                        .with_details(format!(
                            "the built-in `{IMAGE_BUILDER}` step takes the params {}",
                            KNOWN.join(", ")
                        ))
                        .via_field_index("params", i),
                );
            }
            if param.value.as_string().is_none() {
                errs.push(
                    FieldError::new("the built-in step's params are strings", "value")
                        .via_field_index("params", i),
                );
            }
        }
        for required in [PARAM_SOURCE, PARAM_IMAGE] {
            if !step.params.iter().any(|p| p.name == required) {
                errs.push(FieldError::missing_field(format!("params[{required}]")));
            }
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_fills_what_the_step_leaves_unset() {
        let template = StepTemplate {
            image: Some("alpine".into()),
            env: vec![
                EnvVar {
                    name: "A".into(),
                    value: Some("template".into()),
                    ..EnvVar::default()
                },
                EnvVar {
                    name: "B".into(),
                    value: Some("template".into()),
                    ..EnvVar::default()
                },
            ],
            working_dir: Some("/src".into()),
            ..StepTemplate::default()
        };
        let step = Step {
            name: "s".into(),
            env: vec![EnvVar {
                name: "A".into(),
                value: Some("step".into()),
                ..EnvVar::default()
            }],
            ..Step::default()
        };
        let merged = step.with_template(&template);
        assert_eq!(merged.image.as_deref(), Some("alpine"));
        assert_eq!(merged.working_dir.as_deref(), Some("/src"));
        let env: Vec<(&str, &str)> = merged
            .env
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or("")))
            .collect();
        assert_eq!(env, [("B", "template"), ("A", "step")]);
    }

    #[test]
    fn builtin_step_needs_source_and_image() {
        let step = Step {
            name: "build".into(),
            image: Some(builtin::IMAGE_BUILDER.into()),
            params: vec![Param::new("source", "/workspace/src")],
            ..Step::default()
        };
        assert_eq!(
            step.validate(false).to_string(),
            "params[image]: missing field"
        );
    }

    #[test]
    fn container_names_follow_the_step_names() {
        assert_eq!(Step::default().container_name(2), "step-unnamed-2");
        assert_eq!(
            Step::script("compile", "rust", "cargo build").container_name(0),
            "step-compile"
        );
    }
}
