//! Workspaces: what Tasks and Pipelines declare, how Pipelines hand theirs
//! to tasks, and what runs bind them to (`specs/BUILD.md §1.6`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    CSIVolumeSource, ConfigMapVolumeSource, EmptyDirVolumeSource, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, ProjectedVolumeSource, SecretVolumeSource,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use knative_core::apis::FieldError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where workspaces are mounted when their declaration names no `mountPath`.
pub const WORKSPACE_ROOT: &str = "/workspace";

/// A workspace a Task declares.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceDeclaration {
    /// The workspace's name.
    pub name: String,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where steps see it; `/workspace/<name>` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
    /// Whether steps may only read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// Whether a run may leave it unbound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

impl WorkspaceDeclaration {
    /// A required workspace at the default path.
    pub fn new(name: impl Into<String>) -> Self {
        WorkspaceDeclaration {
            name: name.into(),
            ..WorkspaceDeclaration::default()
        }
    }

    /// Where steps see the workspace: `mountPath`, else `/workspace/<name>`.
    pub fn effective_mount_path(&self) -> String {
        match self.mount_path.as_deref() {
            Some(p) if !p.is_empty() => p.to_owned(),
            _ => format!("{WORKSPACE_ROOT}/{}", self.name),
        }
    }

    /// Whether a run may leave it unbound.
    pub fn is_optional(&self) -> bool {
        self.optional.unwrap_or(false)
    }
}

/// Checks Task workspace declarations: names present and unique, mount
/// paths unique. Paths are relative to the list's field.
pub fn validate_workspace_declarations(decls: &[WorkspaceDeclaration], field: &str) -> FieldError {
    let mut errs = FieldError::none();
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut paths: BTreeMap<String, usize> = BTreeMap::new();
    for (i, decl) in decls.iter().enumerate() {
        if decl.name.is_empty() {
            errs.push(FieldError::missing_field("name").via_field_index(field, i));
        } else if let Some(first) = names.insert(decl.name.as_str(), i) {
            errs.push(
                FieldError::new(
                    format!(
                        "workspace {:?} is declared twice (see {field}[{first}])",
                        decl.name
                    ),
                    "name",
                )
                .via_field_index(field, i),
            );
        }
        if let Some(first) = paths.insert(decl.effective_mount_path(), i) {
            errs.push(
                FieldError::new(
                    format!(
                        "mount path {:?} is used by {field}[{first}] too",
                        decl.effective_mount_path()
                    ),
                    "mountPath",
                )
                .via_field_index(field, i),
            );
        }
    }
    errs
}

/// A workspace a Pipeline declares; its tasks receive it through
/// [`WorkspacePipelineTaskBinding`]s.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PipelineWorkspaceDeclaration {
    /// The workspace's name.
    pub name: String,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whether a PipelineRun may leave it unbound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// Hands a Pipeline workspace to one of a pipeline task's workspaces.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspacePipelineTaskBinding {
    /// The Task's workspace.
    pub name: String,
    /// The Pipeline's workspace; the same name as the Task's when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// A directory inside the Pipeline's workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
}

impl WorkspacePipelineTaskBinding {
    /// The Pipeline workspace this binding hands over.
    pub fn pipeline_workspace(&self) -> &str {
        self.workspace.as_deref().unwrap_or(&self.name)
    }
}

/// A PersistentVolumeClaim to create for each run (`volumeClaimTemplate`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeClaimTemplate {
    /// Labels, annotations and an optional name of the claims made.
    #[serde(default, skip_serializing_if = "is_empty_meta")]
    pub metadata: ObjectMeta,
    /// The claim's spec.
    #[serde(default)]
    pub spec: PersistentVolumeClaimSpec,
}

fn is_empty_meta(meta: &ObjectMeta) -> bool {
    *meta == ObjectMeta::default()
}

/// What a run binds a workspace to: exactly one volume source.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceBinding {
    /// The declared workspace's name.
    pub name: String,
    /// A directory inside the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
    /// A claim made per run from this template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_claim_template: Option<VolumeClaimTemplate>,
    /// An existing claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PersistentVolumeClaimVolumeSource>,
    /// A scratch directory living as long as the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirVolumeSource>,
    /// A ConfigMap's keys as files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolumeSource>,
    /// A Secret's keys as files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolumeSource>,
    /// Several sources projected into one directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projected: Option<ProjectedVolumeSource>,
    /// A CSI volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csi: Option<CSIVolumeSource>,
}

impl WorkspaceBinding {
    /// A binding to a fresh empty directory.
    pub fn empty_dir(name: impl Into<String>) -> Self {
        WorkspaceBinding {
            name: name.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..WorkspaceBinding::default()
        }
    }

    /// The fields naming a volume source that are set.
    pub fn sources(&self) -> Vec<&'static str> {
        let mut set = Vec::new();
        if self.volume_claim_template.is_some() {
            set.push("volumeClaimTemplate");
        }
        if self.persistent_volume_claim.is_some() {
            set.push("persistentVolumeClaim");
        }
        if self.empty_dir.is_some() {
            set.push("emptyDir");
        }
        if self.config_map.is_some() {
            set.push("configMap");
        }
        if self.secret.is_some() {
            set.push("secret");
        }
        if self.projected.is_some() {
            set.push("projected");
        }
        if self.csi.is_some() {
            set.push("csi");
        }
        set
    }

    /// The claim's name, for `$(workspaces.<name>.claim)`; empty unless
    /// bound to an existing claim.
    pub fn claim_name(&self) -> &str {
        self.persistent_volume_claim
            .as_ref()
            .map_or("", |c| c.claim_name.as_str())
    }
}

const ALL_SOURCES: [&str; 7] = [
    "volumeClaimTemplate",
    "persistentVolumeClaim",
    "emptyDir",
    "configMap",
    "secret",
    "projected",
    "csi",
];

/// Checks run bindings: names present and unique, exactly one volume
/// source each. Paths are relative to the list's field.
pub fn validate_workspace_bindings(bindings: &[WorkspaceBinding], field: &str) -> FieldError {
    let mut errs = FieldError::none();
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, binding) in bindings.iter().enumerate() {
        let mut e = FieldError::none();
        if binding.name.is_empty() {
            e.push(FieldError::missing_field("name"));
        } else if let Some(first) = names.insert(binding.name.as_str(), i) {
            e.push(FieldError::new(
                format!(
                    "workspace {:?} is bound twice (see {field}[{first}])",
                    binding.name
                ),
                "name",
            ));
        }
        let sources = binding.sources();
        match sources.len() {
            0 => e.push(FieldError::missing_one_of(ALL_SOURCES.as_slice())),
            1 => {}
            _ => e.push(FieldError::multiple_one_of(sources.as_slice())),
        }
        if let Some(pvc) = &binding.persistent_volume_claim
            && pvc.claim_name.is_empty()
        {
            e.push(FieldError::missing_field("persistentVolumeClaim.claimName"));
        }
        errs.push(e.via_field_index(field, i));
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_path_defaults_under_workspace() {
        assert_eq!(
            WorkspaceDeclaration::new("source").effective_mount_path(),
            "/workspace/source"
        );
    }

    #[test]
    fn a_binding_needs_exactly_one_source() {
        let none = WorkspaceBinding {
            name: "w".into(),
            ..WorkspaceBinding::default()
        };
        let err = validate_workspace_bindings(&[none], "workspaces").to_string();
        assert!(
            err.starts_with("workspaces[0].configMap, workspaces[0].csi"),
            "{err}"
        );
        let mut both = WorkspaceBinding::empty_dir("w");
        both.secret = Some(SecretVolumeSource::default());
        assert_eq!(
            validate_workspace_bindings(&[both], "workspaces").to_string(),
            "workspaces[0].emptyDir, workspaces[0].secret: expected exactly one, got both"
        );
    }
}
