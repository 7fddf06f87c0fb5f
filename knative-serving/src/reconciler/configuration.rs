//! Configuration → Revisions (`specs/SERVING.md §1`: revision naming,
//! labels stamped on revisions, configuration status rules, revision GC).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use knative_core::apis::names::child_name;
use knative_core::condition::{Condition, ConditionSet, ConditionStatus, READY};
use knative_core::runtime::{Action, Reconciler};
use knative_core::store::{Objects, StoreError};
use kube::core::Selector;

use super::{RECHECK, ReconcileError, controller_reference, gc, is_controlled_by, now_rfc3339};
use crate::api::{Configuration, Revision, RoutingState, keys};
use crate::config::ServingConfig;

/// How often to re-run revision GC while unserved revisions remain.
const GC_RECHECK: std::time::Duration = std::time::Duration::from_secs(3600);

fn condition_set() -> ConditionSet {
    ConditionSet::living(&[])
}

/// The name of the revision a Configuration's current template stamps:
/// the template's own name, else `<configuration>-<generation as %05d>`
/// kept to 63 characters (upstream's `kmeta.ChildName`).
pub fn revision_name(configuration: &Configuration) -> String {
    if let Some(name) = configuration
        .spec
        .template
        .metadata
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
    {
        return name.to_owned();
    }
    let parent = configuration.metadata.name.as_deref().unwrap_or_default();
    let generation = configuration.metadata.generation.unwrap_or(0);
    child_name(parent, &format!("-{generation:05}"))
}

/// The Revision a Configuration's current template stamps: the template's
/// labels and annotations plus the configuration (and service) labels, a
/// `pending` routing state, and a controller reference to the Configuration.
pub fn desired_revision(configuration: &Configuration) -> Revision {
    let template = &configuration.spec.template;
    let config_meta = &configuration.metadata;
    let mut labels: BTreeMap<String, String> = template.metadata.labels.clone().unwrap_or_default();
    labels.insert(
        keys::CONFIGURATION.to_owned(),
        config_meta.name.clone().unwrap_or_default(),
    );
    labels.insert(
        keys::CONFIGURATION_GENERATION.to_owned(),
        config_meta.generation.unwrap_or(0).to_string(),
    );
    if let Some(uid) = &config_meta.uid {
        labels.insert(keys::CONFIGURATION_UID.to_owned(), uid.clone());
    }
    let config_labels = config_meta.labels.clone().unwrap_or_default();
    for key in [keys::SERVICE, keys::SERVICE_UID] {
        if let Some(v) = config_labels.get(key) {
            labels.insert(key.to_owned(), v.clone());
        }
    }
    labels.insert(
        keys::ROUTING_STATE.to_owned(),
        RoutingState::Pending.as_str().to_owned(),
    );
    Revision {
        metadata: ObjectMeta {
            name: Some(revision_name(configuration)),
            namespace: config_meta.namespace.clone(),
            labels: Some(labels),
            annotations: template.metadata.annotations.clone(),
            owner_references: Some(vec![controller_reference(configuration)]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// The configuration generation a revision was stamped from (its label).
fn generation_of(revision: &Revision) -> i64 {
    revision
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(keys::CONFIGURATION_GENERATION))
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

fn ready_condition(revision: &Revision) -> Option<&Condition> {
    revision
        .status
        .as_ref()
        .and_then(|s| s.status.condition(READY))
}

/// Reconciles Configurations.
pub struct ConfigurationReconciler {
    configurations: Arc<dyn Objects<Configuration>>,
    revisions: Arc<dyn Objects<Revision>>,
    config: Arc<ServingConfig>,
}

impl std::fmt::Debug for ConfigurationReconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigurationReconciler")
            .finish_non_exhaustive()
    }
}

impl ConfigurationReconciler {
    /// A reconciler over these stores.
    pub fn new(
        configurations: Arc<dyn Objects<Configuration>>,
        revisions: Arc<dyn Objects<Revision>>,
        config: Arc<ServingConfig>,
    ) -> Self {
        ConfigurationReconciler {
            configurations,
            revisions,
            config,
        }
    }

    /// The revision of the current generation: found, created, or `Err`
    /// with a message when its name is taken by a revision we do not own.
    async fn latest_created(
        &self,
        configuration: &Configuration,
    ) -> Result<Result<Revision, String>, StoreError> {
        let ns = configuration.metadata.namespace.as_deref();
        let name = revision_name(configuration);
        let existing = match self.revisions.get(ns, &name).await {
            Ok(rev) => Some(rev),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        let rev = match existing {
            Some(rev) => rev,
            None => {
                let mut desired = desired_revision(configuration);
                desired
                    .metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(keys::ROUTING_STATE_MODIFIED.to_owned(), now_rfc3339());
                match self.revisions.create(&desired).await {
                    Ok(rev) => {
                        tracing::info!(revision = %name, "created revision");
                        rev
                    }
                    Err(e) if e.is_already_exists() => self.revisions.get(ns, &name).await?,
                    Err(e) => return Err(e),
                }
            }
        };
        if !is_controlled_by(&rev.metadata, configuration.metadata.uid.as_deref()) {
            return Ok(Err(format!(
                "Revision creation failed with message: revision {name:?} already exists and belongs to another Configuration."
            )));
        }
        if generation_of(&rev) != configuration.metadata.generation.unwrap_or(0) {
            return Ok(Err(format!(
                "Revision creation failed with message: revision {name:?} was stamped from generation {} of this Configuration; \
                 a changed template needs a new revision name.",
                generation_of(&rev)
            )));
        }
        Ok(Ok(rev))
    }
}

#[async_trait]
impl Reconciler<Configuration> for ConfigurationReconciler {
    type Error = ReconcileError;

    async fn reconcile(&self, configuration: Arc<Configuration>) -> Result<Action, ReconcileError> {
        if configuration.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let ns = configuration.metadata.namespace.clone();
        let name = configuration.metadata.name.clone().unwrap_or_default();
        let mut status = configuration.status.clone().unwrap_or_default();
        status.status.observed_generation = configuration.metadata.generation;
        let mut action = Action::await_change();

        // The Ready condition this pass decides, set once at the end so its
        // lastTransitionTime only moves on a real change.
        let ready: (ConditionStatus, String, String) =
            match self.latest_created(&configuration).await? {
                Err(message) => {
                    // Only the user can free the name; look again later.
                    action = Action::requeue_after(RECHECK);
                    (ConditionStatus::False, "RevisionFailed".to_owned(), message)
                }
                Ok(latest) => {
                    let latest_name = latest.metadata.name.clone().unwrap_or_default();
                    status.latest_created_revision_name = Some(latest_name.clone());
                    let selector: Selector = [(keys::CONFIGURATION.to_owned(), name.clone())]
                        .into_iter()
                        .collect();
                    let mut owned: Vec<Revision> = self
                        .revisions
                        .list(ns.as_deref(), &selector)
                        .await?
                        .into_iter()
                        .filter(|r| {
                            is_controlled_by(&r.metadata, configuration.metadata.uid.as_deref())
                        })
                        .collect();
                    owned.sort_by_key(|r| std::cmp::Reverse(generation_of(r)));

                    // latestReadyRevisionName only moves forward: to the newest
                    // ready revision stamped after the current one.
                    let current_ready = status.latest_ready_revision_name.clone();
                    let current_generation = current_ready
                        .as_deref()
                        .and_then(|n| owned.iter().find(|r| r.metadata.name.as_deref() == Some(n)))
                        .map(generation_of);
                    let deleted = current_ready
                        .clone()
                        .filter(|_| current_generation.is_none());
                    if deleted.is_some() {
                        status.latest_ready_revision_name = None;
                    }
                    let floor = current_generation.unwrap_or(0);
                    if let Some(newer) = owned
                        .iter()
                        .filter(|r| generation_of(r) >= floor)
                        .find(|r| ready_condition(r).is_some_and(Condition::is_true))
                    {
                        status.latest_ready_revision_name = newer.metadata.name.clone();
                    }

                    let decided = match ready_condition(&latest) {
                        Some(c) if c.is_false() => (
                            ConditionStatus::False,
                            "RevisionFailed".to_owned(),
                            format!(
                                "Revision {latest_name:?} failed with message: {}.",
                                c.message
                            ),
                        ),
                        _ if status.latest_ready_revision_name.as_deref()
                            == Some(latest_name.as_str()) =>
                        {
                            (ConditionStatus::True, String::new(), String::new())
                        }
                        _ => match deleted {
                            Some(gone) => (
                                ConditionStatus::False,
                                "RevisionDeleted".to_owned(),
                                format!("Revision {gone:?} was deleted."),
                            ),
                            None => (ConditionStatus::Unknown, String::new(), String::new()),
                        },
                    };
                    if self
                        .collect_garbage(&configuration, &status.latest_ready_revision_name, &owned)
                        .await?
                    {
                        action = Action::requeue_after(GC_RECHECK);
                    }
                    decided
                }
            };
        let set = condition_set();
        let mut m = set.manage(&mut status.status.conditions);
        m.initialize();
        match ready.0 {
            ConditionStatus::True => m.mark_true(READY),
            ConditionStatus::False => m.mark_false(READY, &ready.1, &ready.2),
            ConditionStatus::Unknown => m.mark_unknown(READY, &ready.1, &ready.2),
        }
        drop(m);

        if configuration.status.as_ref() != Some(&status) {
            let mut updated = (*configuration).clone();
            updated.status = Some(status);
            self.configurations.replace_status(&updated).await?;
        }
        Ok(action)
    }
}

impl ConfigurationReconciler {
    /// Deletes the revisions `config-gc` says are no longer needed
    /// (`specs/SERVING.md §1`, "Revision GC").
    async fn collect_garbage(
        &self,
        configuration: &Configuration,
        latest_ready: &Option<String>,
        owned: &[Revision],
    ) -> Result<bool, StoreError> {
        let candidates: Vec<gc::GcCandidate> = owned.iter().map(gc_candidate).collect();
        let now = jiff::Timestamp::now().as_second();
        let doomed =
            gc::revisions_to_delete(&self.config.gc, latest_ready.as_deref(), &candidates, now);
        let ns = configuration.metadata.namespace.as_deref();
        for name in &doomed {
            tracing::info!(revision = %name, "garbage-collecting revision");
            match self.revisions.delete(ns, name).await {
                Err(e) if !e.is_not_found() => return Err(e),
                _ => {}
            }
        }
        // GC is time-based: while unserved revisions remain, look again later.
        let waiting = candidates
            .iter()
            .any(|c| c.routing_state == Some(RoutingState::Reserve) && !doomed.contains(&c.name));
        Ok(waiting)
    }
}

/// What revision GC needs to know about a revision.
fn gc_candidate(revision: &Revision) -> gc::GcCandidate {
    let meta = &revision.metadata;
    let annotation = |key: &str| {
        meta.annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    };
    gc::GcCandidate {
        name: meta.name.clone().unwrap_or_default(),
        created: meta
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
        last_active: annotation(keys::ROUTING_STATE_MODIFIED)
            .and_then(|v| v.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_second()),
        routing_state: revision.routing_state(),
        no_gc: gc::no_gc_annotation_set(annotation(keys::NO_GC)),
    }
}
