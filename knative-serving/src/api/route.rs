//! `Route`: names a traffic table; its URL sends requests to revisions by
//! percent and tag (`specs/SERVING.md §2`).

use knative_core::apis::names::{validate_dns1035_label, validate_labels};
use knative_core::apis::{Context, FieldError, SetDefaults, Validate};
use knative_core::condition::Status;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::TrafficTarget;
use super::keys;
use super::traffic::{TrafficScope, validate_traffic};

/// A Route's spec: its traffic table.
#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "serving.knative.dev",
    version = "v1",
    kind = "Route",
    namespaced,
    status = "RouteStatus",
    shortname = "rt",
    category = "all",
    category = "knative",
    category = "serving",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].reason"}"#
)]
pub struct RouteSpec {
    /// Which revisions get which share of requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficTarget>,
}

/// An address a resource can be reached at (`duckv1.Addressable`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Addressable {
    /// A name for the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// What the Route's controller observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// Conditions (`Ready`, `AllTrafficAssigned`, `IngressReady`, `CertificateProvisioned`).
    #[serde(flatten)]
    pub status: Status,
    /// The Route's public URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The Route's in-cluster address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Addressable>,
    /// The traffic table as served: every target resolved to a revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficTarget>,
}

impl SetDefaults for RouteSpec {
    fn set_defaults(&mut self, _ctx: &Context<'_>) {
        for target in &mut self.traffic {
            target.set_defaults();
        }
    }
}

impl SetDefaults for Route {
    fn set_defaults(&mut self, ctx: &Context<'_>) {
        self.spec.set_defaults(ctx);
    }
}

/// Checks the visibility label of a Route or Service.
pub(crate) fn validate_visibility(
    labels: Option<&std::collections::BTreeMap<String, String>>,
) -> FieldError {
    match labels.and_then(|l| l.get(keys::VISIBILITY)) {
        Some(v) if v != keys::VISIBILITY_CLUSTER_LOCAL => FieldError::invalid_value(v, "")
            .with_details("the only visibility is \"cluster-local\"")
            .via_key(keys::VISIBILITY)
            .via_field("metadata.labels"),
        _ => FieldError::none(),
    }
}

impl Validate for Route {
    fn validate(&self, _ctx: &Context<'_>) -> FieldError {
        let mut errs = FieldError::none();
        if let Some(name) = self.metadata.name.as_deref() {
            errs.push(validate_dns1035_label(name, "metadata.name"));
        }
        if let Some(labels) = &self.metadata.labels {
            errs.push(validate_labels(labels, "metadata.labels"));
        }
        errs.push(validate_visibility(self.metadata.labels.as_ref()));
        errs.push(
            validate_traffic(&self.spec.traffic, TrafficScope::RouteSpec).via_field("spec.traffic"),
        );
        errs
    }
}

impl RouteStatus {
    /// Checks a status traffic table (resolved targets; tags have URLs).
    pub fn validate_traffic(&self) -> FieldError {
        if self.traffic.is_empty() {
            return FieldError::none();
        }
        validate_traffic(&self.traffic, TrafficScope::Status).via_field("status.traffic")
    }
}
