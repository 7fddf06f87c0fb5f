//! Eventing's platform traits on Kubernetes (`specs/EVENTING.md §6`):
//! where a SinkBinding sets its sink and where a ContainerSource runs.
//!
//! | type | implements | Kubernetes objects |
//! |---|---|---|
//! | [`KubeBindingTarget`] | [`BindingTarget`] | the subject's pod template: `env` of every container and init container |
//! | [`KubeContainerRunner`] | [`ContainerRunner`] | a Deployment `<source>-deployment` per ContainerSource |
//!
//! # SinkBinding subjects
//!
//! Upstream's SinkBinding injects `K_SINK`, `K_CE_OVERRIDES` (and
//! `K_CA_CERTS`) through a mutating webhook on the subject's pod template
//! (the PodSpecable duck). The operator has no webhook: it edits the
//! subject's pod template through the API server instead, which the
//! subject's own controller then rolls out. Supported subjects:
//!
//! | apiVersion | kinds | pod spec at |
//! |---|---|---|
//! | `apps/v1` | Deployment, StatefulSet, DaemonSet | `spec.template.spec` |
//! | `batch/v1` | Job | `spec.template.spec` |
//! | `batch/v1` | CronJob | `spec.jobTemplate.spec.template.spec` |
//! | `serving.knative.dev/v1` | Service | `spec.template.spec` (a new Revision follows) |
//!
//! The subject is named (`subject.name`) or selected by labels
//! (`subject.selector`, every match is bound) in `subject.namespace`, else
//! the binding's namespace. Binding reads each subject, sets the variables
//! in every container and init container (a variable of the same name is
//! replaced, others are left alone) and writes **only when the environment
//! changes**, with a JSON merge patch of the changed container lists
//! carrying the `resourceVersion` it read: a concurrent change makes the
//! API server answer 409 and the read and patch start over (a few times),
//! so nothing written in between is lost. Merge patches work on built-in
//! kinds and custom resources alike; server-side apply would need the
//! containers list to be a map keyed by name, which a Knative Service's
//! CRD schema does not declare. Unbinding removes the variables the same
//! way.
//!
//! A named subject that does not exist makes `bind` fail (upstream marks
//! the binding `SubjectMissing`; the reconciler retries), and is fine for
//! `unbind`. An unsupported kind is an error naming the supported ones
//! (`unbind` ignores it: it was never bound). A Job's pod template is
//! immutable once created, so the API server refuses to bind an existing
//! Job (upstream's webhook binds Jobs at creation, which needs a webhook).
//!
//! # ContainerSource Deployments
//!
//! As upstream's ContainerSource controller: a Deployment named
//! `<source>-deployment` (shortened with a hash past 63 characters, as
//! `kmeta.ChildName`), labelled — and selecting its pods by —
//! `sources.knative.dev/source=container-source-controller` and
//! `sources.knative.dev/containerSource=<source>`, with the template's own
//! labels kept on the pods, one replica, and the ContainerSource as
//! controlling owner so that the garbage collector deletes the Deployment
//! with the source. The [`ContainerRunner`] is only given the source's
//! namespace and name, so [`KubeContainerRunner`] reads the ContainerSource
//! to get its uid for the owner reference. The Deployment is server-side
//! applied (forced, field manager [`DEFAULT_FIELD_MANAGER`]); `remove`
//! deletes it (one already gone is fine). Unnamed containers are named
//! `<source>-<index>`, as upstream's defaulting does (a Deployment's
//! containers need names).
//!
//! RBAC (in [`crate::manifests::policy_rules`]): `get`, `list`, `patch` on
//! the subject kinds; Deployments and ContainerSources are already read and
//! written for revisions and sources.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use knative_core::apis::names::child_name;
use knative_eventing::api::{BindingSubject, ContainerSource};
use knative_eventing::reconciler::{BindingTarget, ContainerRunner, controller_reference};
use kube::Client;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::Selector;
use serde_json::{Map, Value, json};
use tracing::Instrument;

pub use crate::backend::workload::DEFAULT_FIELD_MANAGER;

/// The label upstream puts on a ContainerSource's Deployment and pods with
/// the source's name.
pub const CONTAINER_SOURCE_LABEL: &str = "sources.knative.dev/containerSource";
/// The label naming the controller that made a source's workload.
pub const SOURCE_LABEL: &str = "sources.knative.dev/source";
/// [`SOURCE_LABEL`]'s value on ContainerSource Deployments.
pub const CONTAINER_SOURCE_CONTROLLER: &str = "container-source-controller";

/// How many times a binding reads and patches again after a conflict.
const ATTEMPTS: usize = 5;
/// The pause before reading again after a conflict.
const CONFLICT_PAUSE: Duration = Duration::from_millis(50);

/// A kind of SinkBinding subject and where its pod spec is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SubjectKind {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    /// The path of the pod spec in the object.
    pod_spec: &'static [&'static str],
}

const TEMPLATE_SPEC: &[&str] = &["spec", "template", "spec"];

/// The subjects [`KubeBindingTarget`] binds.
const SUBJECT_KINDS: [SubjectKind; 6] = [
    SubjectKind {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        pod_spec: TEMPLATE_SPEC,
    },
    SubjectKind {
        group: "apps",
        version: "v1",
        kind: "StatefulSet",
        plural: "statefulsets",
        pod_spec: TEMPLATE_SPEC,
    },
    SubjectKind {
        group: "apps",
        version: "v1",
        kind: "DaemonSet",
        plural: "daemonsets",
        pod_spec: TEMPLATE_SPEC,
    },
    SubjectKind {
        group: "batch",
        version: "v1",
        kind: "Job",
        plural: "jobs",
        pod_spec: TEMPLATE_SPEC,
    },
    SubjectKind {
        group: "batch",
        version: "v1",
        kind: "CronJob",
        plural: "cronjobs",
        pod_spec: &["spec", "jobTemplate", "spec", "template", "spec"],
    },
    SubjectKind {
        group: "serving.knative.dev",
        version: "v1",
        kind: "Service",
        plural: "services",
        pod_spec: TEMPLATE_SPEC,
    },
];

impl SubjectKind {
    fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }

    fn resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.to_owned(),
            version: self.version.to_owned(),
            api_version: self.api_version(),
            kind: self.kind.to_owned(),
            plural: self.plural.to_owned(),
        }
    }

    /// The kind of `subject`, or why it cannot be bound.
    fn of(subject: &BindingSubject) -> Result<SubjectKind, String> {
        SUBJECT_KINDS
            .iter()
            .find(|k| k.api_version() == subject.api_version && k.kind == subject.kind)
            .copied()
            .ok_or_else(|| {
                let supported: Vec<String> = SUBJECT_KINDS
                    .iter()
                    .map(|k| format!("{} {}", k.api_version(), k.kind))
                    .collect();
                format!(
                    "SinkBinding subject {} {:?} is not supported on Kubernetes; supported: {}",
                    subject.api_version,
                    subject.kind,
                    supported.join(", ")
                )
            })
    }
}

/// The container lists of a pod spec that carry environment variables.
const CONTAINER_LISTS: [&str; 2] = ["containers", "initContainers"];

/// Applies `edit` to the `env` list of every container and init container
/// of `pod` (a pod spec as JSON; an absent `env` is an empty list, an
/// emptied one is removed). Returns the container lists that changed.
fn edit_env(pod: &mut Value, edit: &dyn Fn(&mut Vec<Value>)) -> Vec<&'static str> {
    let mut changed = Vec::new();
    for list in CONTAINER_LISTS {
        let Some(Value::Array(containers)) = pod.get_mut(list) else {
            continue;
        };
        let mut list_changed = false;
        for container in containers.iter_mut() {
            let Some(container) = container.as_object_mut() else {
                continue;
            };
            let before = container.get("env").filter(|v| !v.is_null()).cloned();
            let mut env = match container.remove("env") {
                Some(Value::Array(env)) => env,
                _ => Vec::new(),
            };
            edit(&mut env);
            if !env.is_empty() {
                container.insert("env".to_owned(), Value::Array(env));
            }
            if container.get("env") != before.as_ref() {
                list_changed = true;
            }
        }
        if list_changed {
            changed.push(list);
        }
    }
    changed
}

/// The name of an `env` entry.
fn var_name(var: &Value) -> Option<&str> {
    var.get("name").and_then(Value::as_str)
}

/// Sets `env` (name, value) in every container and init container of the
/// pod spec `pod` (JSON), replacing variables of the same names (a
/// `valueFrom` included) and keeping the others in place. Returns the
/// container lists that changed (none when every variable was already
/// set).
pub fn set_env(pod: &mut Value, env: &[(String, String)]) -> Vec<&'static str> {
    edit_env(pod, &|vars: &mut Vec<Value>| {
        for (name, value) in env {
            let wanted = json!({"name": name, "value": value});
            match vars.iter_mut().find(|v| var_name(v) == Some(name)) {
                Some(var) => {
                    if *var != wanted {
                        *var = wanted;
                    }
                }
                None => vars.push(wanted),
            }
        }
    })
}

/// Removes the variables `names` from every container and init container
/// of the pod spec `pod` (JSON). Returns the container lists that changed.
pub fn remove_env(pod: &mut Value, names: &[&str]) -> Vec<&'static str> {
    edit_env(pod, &|vars: &mut Vec<Value>| {
        vars.retain(|v| !var_name(v).is_some_and(|n| names.contains(&n)));
    })
}

/// The JSON merge patch writing the container lists `changed` of the pod
/// spec `pod` at `path`, conditional on `resource_version`.
fn env_patch(
    path: &[&str],
    pod: &Value,
    changed: &[&str],
    resource_version: Option<&str>,
) -> Value {
    let mut lists = Map::new();
    for list in changed {
        if let Some(containers) = pod.get(*list) {
            lists.insert((*list).to_owned(), containers.clone());
        }
    }
    let mut patch = Value::Object(lists);
    for key in path.iter().rev() {
        patch = json!({ *key: patch });
    }
    if let (Some(rv), Some(object)) = (resource_version, patch.as_object_mut()) {
        object.insert("metadata".to_owned(), json!({"resourceVersion": rv}));
    }
    patch
}

/// The label selector of `selector` as a query string.
fn selector_query(selector: &LabelSelector) -> Result<Selector, String> {
    Selector::try_from(selector.clone()).map_err(|e| format!("subject.selector: {e}"))
}

/// Whether `error` is an API status with `code`.
fn has_code(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == code)
}

/// Sets and removes a SinkBinding's variables on Kubernetes workloads and
/// Knative Services (see the [module docs](self)).
#[derive(Clone)]
pub struct KubeBindingTarget {
    client: Client,
    field_manager: String,
}

impl std::fmt::Debug for KubeBindingTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeBindingTarget")
            .field("field_manager", &self.field_manager)
            .finish_non_exhaustive()
    }
}

/// Whether a subject must exist (binding) or may be missing (unbinding).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Missing {
    Error,
    Fine,
}

impl KubeBindingTarget {
    /// Patches through `client`, as [`DEFAULT_FIELD_MANAGER`].
    pub fn new(client: Client) -> Self {
        KubeBindingTarget::with_field_manager(client, DEFAULT_FIELD_MANAGER)
    }

    /// Patches through `client` as `field_manager` (the name the API
    /// server records as the writer of the variables).
    pub fn with_field_manager(client: Client, field_manager: impl Into<String>) -> Self {
        KubeBindingTarget {
            client,
            field_manager: field_manager.into(),
        }
    }

    /// The subjects `subject` names.
    async fn subjects(
        &self,
        api: &Api<DynamicObject>,
        namespace: &str,
        kind: &SubjectKind,
        subject: &BindingSubject,
        missing: Missing,
    ) -> Result<Vec<DynamicObject>, String> {
        if let Some(name) = subject.name.as_deref().filter(|n| !n.is_empty()) {
            return match api.get_opt(name).await {
                Ok(Some(object)) => Ok(vec![object]),
                Ok(None) if missing == Missing::Fine => Ok(Vec::new()),
                Ok(None) => Err(format!(
                    "subject {} {namespace}/{name} not found",
                    kind.kind
                )),
                Err(e) => Err(format!(
                    "cannot read subject {} {namespace}/{name}: {e}",
                    kind.kind
                )),
            };
        }
        let Some(selector) = &subject.selector else {
            return Err("subject has neither a name nor a selector".to_owned());
        };
        let params = ListParams::default().labels_from(&selector_query(selector)?);
        api.list(&params)
            .await
            .map(|list| list.items)
            .map_err(|e| format!("cannot list {} in {namespace}: {e}", kind.plural))
    }

    /// Edits the pod spec of every subject with `edit` (see
    /// [`set_env`]), patching those that change; starts over on a
    /// conflict.
    async fn edit(
        &self,
        namespace: &str,
        kind: SubjectKind,
        subject: &BindingSubject,
        missing: Missing,
        edit: &(dyn Fn(&mut Value) -> Vec<&'static str> + Send + Sync),
    ) -> Result<(), String> {
        let ns = subject.namespace_or(namespace);
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), ns, &kind.resource());
        let params = PatchParams {
            field_manager: Some(self.field_manager.clone()),
            ..PatchParams::default()
        };
        let pointer = format!("/{}", kind.pod_spec.join("/"));
        // A selected subject deleted between the list and the patch is
        // skipped; a named one must exist to be bound.
        let gone_is_fine =
            missing == Missing::Fine || subject.name.as_deref().is_none_or(str::is_empty);
        for attempt in 1..=ATTEMPTS {
            let mut conflict = false;
            for object in self.subjects(&api, ns, &kind, subject, missing).await? {
                let name = object.metadata.name.clone().unwrap_or_default();
                let Some(mut pod) = object.data.pointer(&pointer).cloned() else {
                    tracing::warn!(subject = %name, "the subject has no pod spec at {pointer}; skipped");
                    continue;
                };
                let changed = edit(&mut pod);
                if changed.is_empty() {
                    continue;
                }
                let patch = env_patch(
                    kind.pod_spec,
                    &pod,
                    &changed,
                    object.metadata.resource_version.as_deref(),
                );
                match api.patch(&name, &params, &Patch::Merge(&patch)).await {
                    Ok(_) => tracing::debug!(subject = %name, "subject environment patched"),
                    Err(e) if has_code(&e, 409) => conflict = true,
                    Err(e) if has_code(&e, 404) && gone_is_fine => {}
                    Err(e) => {
                        let hint = if kind.kind == "Job" && has_code(&e, 422) {
                            " (a Job's pod template cannot change once created: \
                             bind a CronJob or a Deployment instead)"
                        } else {
                            ""
                        };
                        return Err(format!(
                            "cannot patch subject {} {ns}/{name}: {e}{hint}",
                            kind.kind
                        ));
                    }
                }
            }
            if !conflict {
                return Ok(());
            }
            tracing::debug!(attempt, "a subject changed meanwhile; reading again");
            tokio::time::sleep(CONFLICT_PAUSE).await;
        }
        Err(format!(
            "subject {} kept changing: gave up after {ATTEMPTS} conflicts",
            kind.kind
        ))
    }
}

#[async_trait]
impl BindingTarget for KubeBindingTarget {
    async fn bind(
        &self,
        namespace: &str,
        subject: &BindingSubject,
        env: Vec<(String, String)>,
    ) -> Result<(), String> {
        let span = tracing::info_span!(
            "bind_subject",
            namespace,
            kind = %subject.kind,
            name = subject.name.as_deref().unwrap_or("")
        );
        async {
            let kind = SubjectKind::of(subject)?;
            let edit = move |pod: &mut Value| set_env(pod, &env);
            self.edit(namespace, kind, subject, Missing::Error, &edit)
                .await
        }
        .instrument(span)
        .await
    }

    async fn unbind(
        &self,
        namespace: &str,
        subject: &BindingSubject,
        names: &[&str],
    ) -> Result<(), String> {
        let span = tracing::info_span!(
            "unbind_subject",
            namespace,
            kind = %subject.kind,
            name = subject.name.as_deref().unwrap_or("")
        );
        async {
            // A subject of another kind was never bound.
            let Ok(kind) = SubjectKind::of(subject) else {
                return Ok(());
            };
            let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            let edit = move |pod: &mut Value| {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                remove_env(pod, &names)
            };
            self.edit(namespace, kind, subject, Missing::Fine, &edit)
                .await
        }
        .instrument(span)
        .await
    }
}

/// The name of ContainerSource `source`'s Deployment (upstream's
/// `kmeta.ChildName(source, "-deployment")`).
pub fn container_source_deployment_name(source: &str) -> String {
    child_name(source, "-deployment")
}

/// Whether a Deployment's `Available` condition is `True`.
pub fn deployment_available(deployment: &Deployment) -> bool {
    deployment
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions.iter().any(|c| {
                c.type_.as_deref() == Some("Available") && c.status.as_deref() == Some("True")
            })
        })
}

/// The labels of ContainerSource `source`'s Deployment and its selector.
pub fn container_source_labels(source: &str) -> BTreeMap<String, String> {
    [
        (
            SOURCE_LABEL.to_owned(),
            CONTAINER_SOURCE_CONTROLLER.to_owned(),
        ),
        (CONTAINER_SOURCE_LABEL.to_owned(), source.to_owned()),
    ]
    .into()
}

/// The Deployment running ContainerSource `namespace/source` with
/// `template` (see the [module docs](self)), controlled by `owner` when
/// given.
pub fn desired_container_source_deployment(
    namespace: &str,
    source: &str,
    mut template: PodTemplateSpec,
    owner: Option<OwnerReference>,
) -> Deployment {
    let labels = container_source_labels(source);
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .extend(labels.clone());
    if let Some(pod) = template.spec.as_mut() {
        for (i, container) in pod.containers.iter_mut().enumerate() {
            if container.name.is_empty() {
                container.name = format!("{source}-{i}");
            }
        }
    }
    Deployment {
        metadata: ObjectMeta {
            name: Some(container_source_deployment_name(source)),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels.clone()),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(labels),
                ..LabelSelector::default()
            },
            template,
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// Runs ContainerSources as Deployments (see the [module docs](self)).
#[derive(Clone)]
pub struct KubeContainerRunner {
    client: Client,
    field_manager: String,
}

impl std::fmt::Debug for KubeContainerRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeContainerRunner")
            .field("field_manager", &self.field_manager)
            .finish_non_exhaustive()
    }
}

impl KubeContainerRunner {
    /// Applies through `client`, as [`DEFAULT_FIELD_MANAGER`].
    pub fn new(client: Client) -> Self {
        KubeContainerRunner::with_field_manager(client, DEFAULT_FIELD_MANAGER)
    }

    /// Applies through `client` as `field_manager`.
    pub fn with_field_manager(client: Client, field_manager: impl Into<String>) -> Self {
        KubeContainerRunner {
            client,
            field_manager: field_manager.into(),
        }
    }

    /// The controller reference to ContainerSource `namespace/name`.
    async fn owner(&self, namespace: &str, name: &str) -> Result<OwnerReference, String> {
        let sources: Api<ContainerSource> = Api::namespaced(self.client.clone(), namespace);
        match sources.get_opt(name).await {
            Ok(Some(source))
                if source
                    .metadata
                    .uid
                    .as_deref()
                    .is_some_and(|u| !u.is_empty()) =>
            {
                Ok(controller_reference(&source))
            }
            Ok(Some(_)) => Err(format!(
                "ContainerSource {namespace}/{name} has no uid, so it cannot own its Deployment"
            )),
            Ok(None) => Err(format!("ContainerSource {namespace}/{name} not found")),
            Err(e) => Err(format!(
                "cannot read ContainerSource {namespace}/{name}: {e}"
            )),
        }
    }
}

#[async_trait]
impl ContainerRunner for KubeContainerRunner {
    async fn ensure(
        &self,
        namespace: &str,
        name: &str,
        template: PodTemplateSpec,
    ) -> Result<(), String> {
        let span = tracing::info_span!("ensure_container_source", namespace, name);
        async {
            if template
                .spec
                .as_ref()
                .is_none_or(|p| p.containers.is_empty())
            {
                return Err("template.spec.containers: missing field".to_owned());
            }
            let owner = self.owner(namespace, name).await?;
            let deployment =
                desired_container_source_deployment(namespace, name, template, Some(owner));
            let deployment_name = container_source_deployment_name(name);
            let api: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
            let params = PatchParams::apply(&self.field_manager).force();
            api.patch(&deployment_name, &params, &Patch::Apply(&deployment))
                .await
                .map_err(|e| {
                    format!("cannot apply Deployment {namespace}/{deployment_name}: {e}")
                })?;
            tracing::debug!(deployment = %deployment_name, "container source applied");
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Available when the Deployment's `Available` condition is `True`
    /// (a missing Deployment is not available).
    async fn available(&self, namespace: &str, name: &str) -> Result<bool, String> {
        let deployment_name = container_source_deployment_name(name);
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
        let deployment = api
            .get_opt(&deployment_name)
            .await
            .map_err(|e| format!("cannot read Deployment {namespace}/{deployment_name}: {e}"))?;
        Ok(deployment.as_ref().is_some_and(deployment_available))
    }

    async fn remove(&self, namespace: &str, name: &str) -> Result<(), String> {
        let span = tracing::info_span!("remove_container_source", namespace, name);
        async {
            let deployment_name = container_source_deployment_name(name);
            let api: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
            match api
                .delete(&deployment_name, &DeleteParams::background())
                .await
            {
                Ok(_) => {
                    tracing::debug!(deployment = %deployment_name, "container source deleted");
                    Ok(())
                }
                Err(e) if has_code(&e, 404) => Ok(()),
                Err(e) => Err(format!(
                    "cannot delete Deployment {namespace}/{deployment_name}: {e}"
                )),
            }
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests;
