//! `Service`: a Configuration and a Route of the same name, managed
//! together (`specs/SERVING.md §1`).

use knative_core::apis::names::{validate_dns1035_label, validate_labels};
use knative_core::apis::{Context, FieldError, SetDefaults, Validate};
use knative_core::condition::Status;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::configuration::validate_template_of;
use super::route::validate_visibility;
use super::traffic::{TrafficScope, validate_traffic};
use super::{Addressable, RevisionTemplateSpec, TrafficTarget};

/// A Service's spec: a revision template and a traffic table.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serving.knative.dev",
    version = "v1",
    kind = "Service",
    namespaced,
    status = "ServiceStatus",
    shortname = "ksvc",
    shortname = "kservice",
    category = "all",
    category = "knative",
    category = "serving",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url"}"#,
    printcolumn = r#"{"name":"LatestCreated","type":"string","jsonPath":".status.latestCreatedRevisionName"}"#,
    printcolumn = r#"{"name":"LatestReady","type":"string","jsonPath":".status.latestReadyRevisionName"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].reason"}"#
)]
pub struct ServiceSpec {
    /// The revision template (the Service's Configuration).
    pub template: RevisionTemplateSpec,
    /// The traffic table (the Service's Route); defaults to all traffic to
    /// the latest ready revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficTarget>,
}

/// What the Service's controller observed: its Configuration's and Route's status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// Conditions (`Ready`, `ConfigurationsReady`, `RoutesReady`) and observed generation.
    #[serde(flatten)]
    pub status: Status,
    /// The newest revision created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_created_revision_name: Option<String>,
    /// The newest revision that became ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_ready_revision_name: Option<String>,
    /// The public URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The in-cluster address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Addressable>,
    /// The traffic table as served.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficTarget>,
}

impl SetDefaults for ServiceSpec {
    fn set_defaults(&mut self, ctx: &Context<'_>) {
        self.template.set_defaults(ctx);
        if self.traffic.is_empty() {
            self.traffic.push(TrafficTarget {
                percent: Some(100),
                latest_revision: Some(true),
                ..TrafficTarget::default()
            });
        }
        for target in &mut self.traffic {
            target.set_defaults();
        }
    }
}

impl SetDefaults for Service {
    fn set_defaults(&mut self, ctx: &Context<'_>) {
        self.spec.set_defaults(ctx);
    }
}

impl Validate for Service {
    fn validate(&self, ctx: &Context<'_>) -> FieldError {
        let mut errs = FieldError::none();
        if let Some(name) = self.metadata.name.as_deref() {
            errs.push(validate_dns1035_label(name, "metadata.name"));
        }
        if let Some(labels) = &self.metadata.labels {
            errs.push(validate_labels(labels, "metadata.labels"));
        }
        errs.push(validate_visibility(self.metadata.labels.as_ref()));
        let original = ctx.original::<Service>().map(|s| &s.spec.template);
        errs.push(
            validate_template_of(&self.metadata, &self.spec.template, original, ctx)
                .via_field("spec"),
        );
        if !self.spec.traffic.is_empty() {
            errs.push(
                validate_traffic(&self.spec.traffic, TrafficScope::ServiceSpec)
                    .via_field("spec.traffic"),
            );
        }
        errs
    }
}
