//! `Configuration`: the desired state of a revision; each change of its
//! template stamps a new Revision (`specs/SERVING.md §1`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use knative_core::apis::names::validate_dns1035_label;
use knative_core::apis::{Context, FieldError, SetDefaults, Validate};
use knative_core::condition::Status;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::RevisionTemplateSpec;

/// A Configuration's spec: the template of its revisions.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serving.knative.dev",
    version = "v1",
    kind = "Configuration",
    namespaced,
    status = "ConfigurationStatus",
    shortname = "config",
    shortname = "cfg",
    category = "all",
    category = "knative",
    category = "serving",
    printcolumn = r#"{"name":"LatestCreated","type":"string","jsonPath":".status.latestCreatedRevisionName"}"#,
    printcolumn = r#"{"name":"LatestReady","type":"string","jsonPath":".status.latestReadyRevisionName"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].reason"}"#
)]
pub struct ConfigurationSpec {
    /// The revision to stamp out.
    pub template: RevisionTemplateSpec,
}

/// What the Configuration's controller observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationStatus {
    /// Conditions (`Ready`) and observed generation.
    #[serde(flatten)]
    pub status: Status,
    /// The newest revision created from this Configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_created_revision_name: Option<String>,
    /// The newest revision that became ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_ready_revision_name: Option<String>,
}

impl SetDefaults for ConfigurationSpec {
    fn set_defaults(&mut self, ctx: &Context<'_>) {
        self.template.set_defaults(ctx);
    }
}

/// Validates a revision template owned by `parent`: the template itself, and
/// the rules for a revision name chosen by the user ("bring your own"):
/// it must start with `<parent>-`, cannot be combined with `generateName`,
/// and must change whenever the template changes.
pub(crate) fn validate_template_of(
    parent: &ObjectMeta,
    template: &RevisionTemplateSpec,
    original_template: Option<&RevisionTemplateSpec>,
    ctx: &Context<'_>,
) -> FieldError {
    let mut errs = template.validate(ctx).via_field("template");
    let Some(name) = template.metadata.name.as_deref().filter(|n| !n.is_empty()) else {
        return errs;
    };
    if parent
        .generate_name
        .as_deref()
        .is_some_and(|g| !g.is_empty())
    {
        errs.push(
            FieldError::disallowed_fields("template.metadata.name")
                .with_details("a revision name cannot be chosen when the parent uses generateName"),
        );
    } else {
        let prefix = format!("{}-", parent.name.as_deref().unwrap_or(""));
        if !name.starts_with(&prefix) {
            errs.push(FieldError::invalid_value(
                format!("{name:?} must have prefix {prefix:?}"),
                "template.metadata.name",
            ));
        }
    }
    if let Some(original) = original_template
        && original.metadata.name.as_deref() == Some(name)
        && original != template
    {
        errs.push(
            FieldError::new(
                "Saw the following changes without a name change (-old +new)",
                "template.metadata.name",
            )
            .with_details(
                "give the template a new revision name when changing it, or remove the name",
            ),
        );
    }
    errs
}

impl SetDefaults for Configuration {
    fn set_defaults(&mut self, ctx: &Context<'_>) {
        self.spec.set_defaults(ctx);
    }
}

impl Validate for Configuration {
    fn validate(&self, ctx: &Context<'_>) -> FieldError {
        let mut errs = FieldError::none();
        if let Some(name) = self.metadata.name.as_deref() {
            errs.push(validate_dns1035_label(name, "metadata.name"));
        }
        let original = ctx.original::<Configuration>().map(|c| &c.spec.template);
        errs.push(
            validate_template_of(&self.metadata, &self.spec.template, original, ctx)
                .via_field("spec"),
        );
        errs
    }
}
