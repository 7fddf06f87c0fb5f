//! `sources.knative.dev/v1`: [`PingSource`], [`ApiServerSource`],
//! [`ContainerSource`] and [`SinkBinding`], with the Source duck they share
//! ([`SourceSpec`], [`SourceStatus`]) (`specs/EVENTING.md §6`).
//!
//! Every source validates its sink (a [`Destination`]) and its
//! `ceOverrides`: extension names are CloudEvents attribute names
//! (lower-case letters and digits, starting with a letter) and not one of
//! the context attributes the spec defines (`id`, `source`, `type`, …).
//! Object references in the sink default to the source's namespace.
//!
//! PingSource schedules are checked with [`crate::ping::Schedule`]: robfig/cron
//! syntax with an optional seconds field and `@hourly`-style descriptors;
//! `@every` is rejected (upstream does too); an unknown `timezone` is an
//! error on `spec.timezone`.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use knative_core::apis::{Context, FieldError, SetDefaults, Validate};
use knative_core::condition::{ConditionSet, Status};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duck::Destination;
use super::messaging::default_destination;
use super::trigger::{SubscriptionsApiFilter, is_valid_attribute_name};
use crate::ping::{Schedule, ScheduleError};

/// The API group of the sources.
pub const GROUP: &str = "sources.knative.dev";
/// `apiVersion` of the sources.
pub const API_VERSION: &str = "sources.knative.dev/v1";

/// The CloudEvents context attributes an override must not name (core
/// attributes of spec v1.0, and `data`).
pub const RESERVED_ATTRIBUTE_NAMES: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
    "data",
];

/// Extensions to set on every event a source emits (`CloudEventOverrides`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CeOverrides {
    /// Extension name → value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extensions: BTreeMap<String, String>,
}

impl CeOverrides {
    /// Checks the extension names. Paths are relative to the overrides.
    pub fn validate(&self) -> FieldError {
        let mut errs = FieldError::none();
        for key in self.extensions.keys() {
            if !is_valid_attribute_name(key) {
                errs.push(
                    FieldError::invalid_key_name(key, "extensions").with_details(
                        "extension names are lower-case letters and digits, starting with a letter",
                    ),
                );
            } else if RESERVED_ATTRIBUTE_NAMES.contains(&key.as_str()) {
                errs.push(
                    FieldError::invalid_key_name(key, "extensions")
                        .with_details("a CloudEvents context attribute cannot be overridden"),
                );
            }
        }
        errs
    }
}

/// The Source duck's spec (`duckv1.SourceSpec`), inline in every source's
/// spec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceSpec {
    /// Where events go.
    #[serde(default)]
    pub sink: Destination,
    /// Extensions added to every event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce_overrides: Option<CeOverrides>,
}

impl SourceSpec {
    /// Checks the sink and the overrides. Paths are relative to the spec.
    pub fn validate(&self) -> FieldError {
        let mut errs = self.sink.validate().via_field("sink");
        if let Some(overrides) = &self.ce_overrides {
            errs.push(overrides.validate().via_field("ceOverrides"));
        }
        errs
    }

    fn set_defaults(&mut self, namespace: Option<&str>) {
        default_destination(&mut self.sink, namespace);
    }
}

/// The type and source of events a source emits (`CloudEventAttributes`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CloudEventAttributes {
    /// The `type` attribute.
    #[serde(default, rename = "type")]
    pub type_: String,
    /// The `source` attribute.
    #[serde(default)]
    pub source: String,
}

/// The Source duck's status (`duckv1.SourceStatus`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// Conditions (see the owning kind's `CONDITION_*` constants).
    #[serde(flatten)]
    pub status: Status,
    /// The resolved sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink_uri: Option<String>,
    /// The sink's CA certificates.
    #[serde(
        default,
        rename = "sinkCACerts",
        skip_serializing_if = "Option::is_none"
    )]
    pub sink_ca_certs: Option<String>,
    /// The sink's OIDC audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink_audience: Option<String>,
    /// The kinds of events the source emits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ce_attributes: Vec<CloudEventAttributes>,
}

/// Shared condition type names.
const SINK_PROVIDED: &str = "SinkProvided";
const DEPLOYED: &str = "Deployed";

// ---------------------------------------------------------------------------
// PingSource
// ---------------------------------------------------------------------------

/// The schedule a PingSource gets when it has none: every minute.
pub const DEFAULT_PING_SCHEDULE: &str = "* * * * *";

/// A PingSource's spec: emit an event on a cron schedule.
#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "sources.knative.dev",
    version = "v1",
    kind = "PingSource",
    namespaced,
    derive = "PartialEq",
    status = "SourceStatus",
    category = "all",
    category = "knative",
    category = "sources",
    printcolumn = r#"{"name":"Sink","type":"string","jsonPath":".status.sinkUri"}"#,
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PingSourceSpec {
    /// Sink and overrides.
    #[serde(flatten)]
    pub source: SourceSpec,
    /// The cron schedule (default `* * * * *`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub schedule: String,
    /// The IANA time zone the schedule is read in (default: UTC).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub timezone: String,
    /// The media type of `data` / `dataBase64`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub content_type: String,
    /// The event body. Exclusive with `dataBase64`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data: String,
    /// The event body, base64-encoded. Exclusive with `data`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data_base64: String,
}

/// Whether `content_type` is `application/json` (parameters and case
/// ignored).
pub fn is_json_content_type(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

impl PingSourceSpec {
    /// The time zone, `None` when unset.
    pub fn timezone(&self) -> Option<&str> {
        Some(self.timezone.as_str()).filter(|tz| !tz.is_empty())
    }

    /// The schedule, parsed (the default schedule when unset).
    pub fn parsed_schedule(&self) -> Result<Schedule, ScheduleError> {
        let schedule = if self.schedule.is_empty() {
            DEFAULT_PING_SCHEDULE
        } else {
            &self.schedule
        };
        Schedule::parse(schedule, self.timezone())
    }
}

impl PingSource {
    /// The sink resolved.
    pub const CONDITION_SINK_PROVIDED: &'static str = SINK_PROVIDED;
    /// The adapter runs the schedule.
    pub const CONDITION_DEPLOYED: &'static str = DEPLOYED;
    /// The `type` of every event a PingSource emits.
    pub const EVENT_TYPE: &'static str = "dev.knative.sources.ping";

    /// `Ready` over `SinkProvided` and `Deployed`.
    pub fn condition_set() -> ConditionSet {
        ConditionSet::living(&[SINK_PROVIDED, DEPLOYED])
    }

    /// The `source` attribute of its events:
    /// `/apis/v1/namespaces/{namespace}/pingsources/{name}`.
    pub fn event_source(&self) -> String {
        format!(
            "/apis/v1/namespaces/{}/pingsources/{}",
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }
}

impl SetDefaults for PingSource {
    /// The default schedule and the sink's namespace.
    fn set_defaults(&mut self, _ctx: &Context<'_>) {
        if self.spec.schedule.is_empty() {
            DEFAULT_PING_SCHEDULE.clone_into(&mut self.spec.schedule);
        }
        let namespace = self.metadata.namespace.clone();
        self.spec.source.set_defaults(namespace.as_deref());
    }
}

/// Checks that `payload` is a JSON object (upstream decodes into a map).
fn json_object_error(payload: &[u8]) -> Option<String> {
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(payload) {
        Ok(_) => None,
        Err(e) => Some(format!(
            "contentType is application/json, so the payload must be a JSON object: {e}"
        )),
    }
}

impl Validate for PingSource {
    fn validate(&self, _ctx: &Context<'_>) -> FieldError {
        let spec = &self.spec;
        let mut errs = FieldError::none();
        if let Err(e) = spec.parsed_schedule() {
            let (value, path) = match &e {
                ScheduleError::BadTimezone { name, .. } => (name.as_str(), "timezone"),
                _ => (spec.schedule.as_str(), "schedule"),
            };
            errs.push(FieldError::invalid_value(value, path).with_details(e.to_string()));
        }
        match (spec.data.is_empty(), spec.data_base64.is_empty()) {
            (false, false) => errs.push(FieldError::multiple_one_of(["data", "dataBase64"])),
            (true, false) => {
                match base64::engine::general_purpose::STANDARD.decode(&spec.data_base64) {
                    Err(e) => errs.push(
                        FieldError::invalid_value(&spec.data_base64, "dataBase64")
                            .with_details(format!("not valid base64: {e}")),
                    ),
                    Ok(decoded) => {
                        if is_json_content_type(&spec.content_type)
                            && let Some(why) = json_object_error(&decoded)
                        {
                            errs.push(
                                FieldError::invalid_value(&spec.data_base64, "dataBase64")
                                    .with_details(why),
                            );
                        }
                    }
                }
            }
            (false, true) => {
                if is_json_content_type(&spec.content_type)
                    && let Some(why) = json_object_error(spec.data.as_bytes())
                {
                    errs.push(FieldError::invalid_value(&spec.data, "data").with_details(why));
                }
            }
            (true, true) => {}
        }
        errs.push(spec.source.validate());
        errs.via_field("spec")
    }
}

// ---------------------------------------------------------------------------
// ContainerSource
// ---------------------------------------------------------------------------

/// A ContainerSource's spec: a pod template run as a Deployment, bound to
/// the sink through a SinkBinding.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "sources.knative.dev",
    version = "v1",
    kind = "ContainerSource",
    namespaced,
    derive = "PartialEq",
    status = "SourceStatus",
    category = "all",
    category = "knative",
    category = "sources",
    printcolumn = r#"{"name":"Sink","type":"string","jsonPath":".status.sinkUri"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSourceSpec {
    /// Sink and overrides.
    #[serde(flatten)]
    pub source: SourceSpec,
    /// The pod to run (as `Deployment.spec.template`).
    #[serde(default)]
    pub template: PodTemplateSpec,
}

impl ContainerSource {
    /// The SinkBinding that injects the sink is Ready.
    pub const CONDITION_SINK_BINDING_READY: &'static str = "SinkBindingReady";
    /// The Deployment is available.
    pub const CONDITION_RECEIVE_ADAPTER_READY: &'static str = "ReceiveAdapterReady";

    /// `Ready` over `SinkBindingReady` and `ReceiveAdapterReady`.
    pub fn condition_set() -> ConditionSet {
        ConditionSet::living(&[
            Self::CONDITION_SINK_BINDING_READY,
            Self::CONDITION_RECEIVE_ADAPTER_READY,
        ])
    }
}

impl SetDefaults for ContainerSource {
    /// Unnamed containers are named `{source}-{index}`; the sink's
    /// namespace.
    fn set_defaults(&mut self, _ctx: &Context<'_>) {
        let name = self.metadata.name.clone().unwrap_or_default();
        if let Some(pod) = &mut self.spec.template.spec {
            for (i, c) in pod.containers.iter_mut().enumerate() {
                if c.name.is_empty() {
                    c.name = format!("{name}-{i}");
                }
            }
        }
        let namespace = self.metadata.namespace.clone();
        self.spec.source.set_defaults(namespace.as_deref());
    }
}

impl Validate for ContainerSource {
    fn validate(&self, _ctx: &Context<'_>) -> FieldError {
        let mut errs = FieldError::none();
        let containers = self
            .spec
            .template
            .spec
            .as_ref()
            .map(|p| p.containers.as_slice())
            .unwrap_or_default();
        if containers.is_empty() {
            errs.push(
                FieldError::missing_field("template.spec.containers")
                    .with_details("a ContainerSource runs at least one container"),
            );
        }
        for (i, c) in containers.iter().enumerate() {
            let mut c_errs = FieldError::none();
            if c.name.is_empty() {
                c_errs.push(FieldError::missing_field("name"));
            }
            if c.image.as_deref().unwrap_or_default().is_empty() {
                c_errs.push(FieldError::missing_field("image"));
            }
            errs.push(
                c_errs
                    .via_field_index("containers", i)
                    .via_field("template.spec"),
            );
        }
        errs.push(self.spec.source.validate());
        errs.via_field("spec")
    }
}

// ---------------------------------------------------------------------------
// SinkBinding
// ---------------------------------------------------------------------------

/// The workloads a SinkBinding injects into (`tracker.Reference`): one
/// object by name, or every object matching a label selector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BindingSubject {
    /// The subject's `apiVersion`, e.g. `apps/v1`.
    #[serde(default)]
    pub api_version: String,
    /// The subject's kind, e.g. `Deployment`.
    #[serde(default)]
    pub kind: String,
    /// The subject's namespace: the binding's own (defaulted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The subject's name. Exclusive with `selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A label selector. Exclusive with `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

impl BindingSubject {
    /// The namespace the subject is in: its own, else `default` (the
    /// binding's).
    pub fn namespace_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(default)
    }
}

/// A SinkBinding's spec: inject the sink (`K_SINK`, `K_CE_OVERRIDES`) into
/// the subject's pods.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "sources.knative.dev",
    version = "v1",
    kind = "SinkBinding",
    namespaced,
    derive = "PartialEq",
    status = "SourceStatus",
    category = "all",
    category = "knative",
    category = "sources",
    category = "bindings",
    printcolumn = r#"{"name":"Sink","type":"string","jsonPath":".status.sinkUri"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SinkBindingSpec {
    /// Sink and overrides.
    #[serde(flatten)]
    pub source: SourceSpec,
    /// The workloads to bind.
    #[serde(default)]
    pub subject: BindingSubject,
}

impl SinkBinding {
    /// The sink resolved.
    pub const CONDITION_SINK_PROVIDED: &'static str = SINK_PROVIDED;

    /// `Ready` over `SinkProvided` (the binding itself marks `Ready` when
    /// the subject is bound).
    pub fn condition_set() -> ConditionSet {
        ConditionSet::living(&[SINK_PROVIDED])
    }
}

impl SetDefaults for SinkBinding {
    /// The subject's and the sink's namespace.
    fn set_defaults(&mut self, _ctx: &Context<'_>) {
        let namespace = self.metadata.namespace.clone();
        if self
            .spec
            .subject
            .namespace
            .as_deref()
            .unwrap_or_default()
            .is_empty()
        {
            self.spec.subject.namespace.clone_from(&namespace);
        }
        self.spec.source.set_defaults(namespace.as_deref());
    }
}

impl Validate for SinkBinding {
    fn validate(&self, _ctx: &Context<'_>) -> FieldError {
        let subject = &self.spec.subject;
        let mut s_errs = FieldError::none();
        if subject.api_version.is_empty() {
            s_errs.push(FieldError::missing_field("apiVersion"));
        }
        if subject.kind.is_empty() {
            s_errs.push(FieldError::missing_field("kind"));
        }
        match subject.namespace.as_deref().unwrap_or_default() {
            "" => s_errs.push(FieldError::missing_field("namespace")),
            ns if Some(ns) != self.metadata.namespace.as_deref() => s_errs.push(
                FieldError::invalid_value(ns, "namespace")
                    .with_details("the subject must be in the SinkBinding's namespace"),
            ),
            _ => {}
        }
        let has_name = subject.name.as_deref().is_some_and(|n| !n.is_empty());
        match (has_name, subject.selector.is_some()) {
            (true, true) => s_errs.push(FieldError::multiple_one_of(["name", "selector"])),
            (false, false) => s_errs.push(FieldError::missing_one_of(["name", "selector"])),
            _ => {}
        }
        let mut errs = s_errs.via_field("subject");
        errs.push(self.spec.source.validate());
        errs.via_field("spec")
    }
}

// ---------------------------------------------------------------------------
// ApiServerSource
// ---------------------------------------------------------------------------

/// A resource type to watch, with an optional label selector
/// (`APIVersionKindSelector`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiVersionKindSelector {
    /// The resource's `apiVersion`, e.g. `v1` or `apps/v1`.
    #[serde(default)]
    pub api_version: String,
    /// The resource's kind.
    #[serde(default)]
    pub kind: String,
    /// Only objects with matching labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// An `apiVersion` and kind (`APIVersionKind`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiVersionKind {
    /// The `apiVersion`.
    #[serde(default)]
    pub api_version: String,
    /// The kind.
    #[serde(default)]
    pub kind: String,
}

/// Type of the event sent when an object is added, in `Resource` mode.
pub const ADD_EVENT_TYPE: &str = "dev.knative.apiserver.resource.add";
/// Type of the event sent when an object is updated, in `Resource` mode.
pub const UPDATE_EVENT_TYPE: &str = "dev.knative.apiserver.resource.update";
/// Type of the event sent when an object is deleted, in `Resource` mode.
pub const DELETE_EVENT_TYPE: &str = "dev.knative.apiserver.resource.delete";
/// Type of the event sent when an object is added, in `Reference` mode.
pub const ADD_REF_EVENT_TYPE: &str = "dev.knative.apiserver.ref.add";
/// Type of the event sent when an object is updated, in `Reference` mode.
pub const UPDATE_REF_EVENT_TYPE: &str = "dev.knative.apiserver.ref.update";
/// Type of the event sent when an object is deleted, in `Reference` mode.
pub const DELETE_REF_EVENT_TYPE: &str = "dev.knative.apiserver.ref.delete";

/// What an ApiServerSource's events carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventMode {
    /// A reference to the object (`dev.knative.apiserver.ref.*`).
    Reference,
    /// The whole object (`dev.knative.apiserver.resource.*`).
    Resource,
}

impl EventMode {
    /// The wire form: `Reference` or `Resource`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventMode::Reference => "Reference",
            EventMode::Resource => "Resource",
        }
    }

    /// The type of the event sent in this mode when an object is added
    /// (`"add"`), updated (`"update"`) or deleted (`"delete"`); `None` for
    /// any other change.
    pub fn event_type(self, change: &str) -> Option<&'static str> {
        Some(match (self, change) {
            (EventMode::Reference, "add") => ADD_REF_EVENT_TYPE,
            (EventMode::Reference, "update") => UPDATE_REF_EVENT_TYPE,
            (EventMode::Reference, "delete") => DELETE_REF_EVENT_TYPE,
            (EventMode::Resource, "add") => ADD_EVENT_TYPE,
            (EventMode::Resource, "update") => UPDATE_EVENT_TYPE,
            (EventMode::Resource, "delete") => DELETE_EVENT_TYPE,
            _ => return None,
        })
    }

    /// Parses the wire form.
    pub fn parse(mode: &str) -> Option<EventMode> {
        match mode {
            "Reference" => Some(EventMode::Reference),
            "Resource" => Some(EventMode::Resource),
            _ => None,
        }
    }
}

/// An ApiServerSource's spec: emit an event for every change to the
/// watched Kubernetes resources.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "sources.knative.dev",
    version = "v1",
    kind = "ApiServerSource",
    namespaced,
    derive = "PartialEq",
    status = "ApiServerSourceStatus",
    category = "all",
    category = "knative",
    category = "sources",
    printcolumn = r#"{"name":"Sink","type":"string","jsonPath":".status.sinkUri"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ApiServerSourceSpec {
    /// Sink and overrides.
    #[serde(flatten)]
    pub source: SourceSpec,
    /// The resource types to watch. At least one.
    #[serde(default)]
    pub resources: Vec<ApiVersionKindSelector>,
    /// Only objects owned by this type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<ApiVersionKind>,
    /// `Reference` (default) or `Resource`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mode: String,
    /// The ServiceAccount the adapter watches as (default `default`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account_name: String,
    /// Watch the namespaces matching this selector (default: the source's
    /// own namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Subscriptions API filters events must pass, ANDed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<SubscriptionsApiFilter>,
}

impl ApiServerSourceSpec {
    /// The event mode (`Reference` when unset; `None` when invalid).
    pub fn event_mode(&self) -> Option<EventMode> {
        if self.mode.is_empty() {
            Some(EventMode::Reference)
        } else {
            EventMode::parse(&self.mode)
        }
    }
}

/// What the ApiServerSource's controller observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiServerSourceStatus {
    /// The Source duck's status.
    #[serde(flatten)]
    pub source: SourceStatus,
    /// The namespaces being watched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

impl ApiServerSource {
    /// The sink resolved.
    pub const CONDITION_SINK_PROVIDED: &'static str = SINK_PROVIDED;
    /// The adapter is deployed.
    pub const CONDITION_DEPLOYED: &'static str = DEPLOYED;
    /// The ServiceAccount may get, list and watch the resources.
    pub const CONDITION_SUFFICIENT_PERMISSIONS: &'static str = "SufficientPermissions";

    /// `Ready` over `SinkProvided`, `Deployed` and `SufficientPermissions`.
    pub fn condition_set() -> ConditionSet {
        ConditionSet::living(&[
            SINK_PROVIDED,
            DEPLOYED,
            Self::CONDITION_SUFFICIENT_PERMISSIONS,
        ])
    }
}

impl SetDefaults for ApiServerSource {
    /// Mode `Reference`, ServiceAccount `default`, and the sink's namespace.
    fn set_defaults(&mut self, _ctx: &Context<'_>) {
        if self.spec.mode.is_empty() {
            self.spec.mode = EventMode::Reference.as_str().to_owned();
        }
        if self.spec.service_account_name.is_empty() {
            "default".clone_into(&mut self.spec.service_account_name);
        }
        let namespace = self.metadata.namespace.clone();
        self.spec.source.set_defaults(namespace.as_deref());
    }
}

/// Checks an `apiVersion` and kind pair (upstream parses the version with
/// `schema.ParseGroupVersion`: at most one `/`). Paths relative to the pair.
fn validate_api_version_kind(api_version: &str, kind: &str) -> FieldError {
    let mut errs = FieldError::none();
    if api_version.is_empty() {
        errs.push(FieldError::missing_field("apiVersion"));
    } else if api_version.matches('/').count() > 1 {
        errs.push(
            FieldError::invalid_value(api_version, "apiVersion")
                .with_details("expected `version` or `group/version`"),
        );
    }
    if kind.trim().is_empty() {
        errs.push(FieldError::missing_field("kind"));
    }
    errs
}

impl Validate for ApiServerSource {
    fn validate(&self, _ctx: &Context<'_>) -> FieldError {
        let spec = &self.spec;
        let mut errs = FieldError::none();
        if spec.event_mode().is_none() {
            errs.push(
                FieldError::invalid_value(&spec.mode, "mode")
                    .with_details("expected Reference or Resource"),
            );
        }
        if spec.resources.is_empty() {
            errs.push(FieldError::missing_field("resources"));
        }
        for (i, r) in spec.resources.iter().enumerate() {
            errs.push(
                validate_api_version_kind(&r.api_version, &r.kind).via_field_index("resources", i),
            );
        }
        if let Some(owner) = &spec.owner {
            errs.push(
                validate_api_version_kind(&owner.api_version, &owner.kind).via_field("owner"),
            );
        }
        for (i, f) in spec.filters.iter().enumerate() {
            errs.push(f.validate().via_field_index("filters", i));
        }
        errs.push(spec.source.validate());
        errs.via_field("spec")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_server_event_types_follow_the_mode_and_change() {
        assert_eq!(
            EventMode::Reference.event_type("add"),
            Some("dev.knative.apiserver.ref.add")
        );
        assert_eq!(
            EventMode::Resource.event_type("delete"),
            Some("dev.knative.apiserver.resource.delete")
        );
        assert_eq!(
            EventMode::Resource.event_type("update"),
            Some(UPDATE_EVENT_TYPE)
        );
        assert_eq!(EventMode::Reference.event_type("patch"), None);
    }

    #[test]
    fn overrides_reject_bad_and_reserved_names() {
        let o = CeOverrides {
            extensions: [
                ("Bad".to_owned(), "x".to_owned()),
                ("source".to_owned(), "x".to_owned()),
                ("team".to_owned(), "x".to_owned()),
            ]
            .into(),
        };
        let text = o.validate().to_string();
        assert!(
            text.contains("extensions: invalid key name \"Bad\""),
            "{text}"
        );
        assert!(
            text.contains("extensions: invalid key name \"source\""),
            "{text}"
        );
        assert!(!text.contains("team"), "{text}");
    }

    #[test]
    fn json_content_types_ignore_parameters() {
        assert!(is_json_content_type("application/json"));
        assert!(is_json_content_type("Application/JSON; charset=utf-8"));
        assert!(!is_json_content_type("text/plain"));
    }
}
