//! Service → Configuration + Route (`specs/SERVING.md §1`, "Service status").

use std::sync::Arc;

use async_trait::async_trait;
use knative_core::apis::{Context, SetDefaults};
use knative_core::condition::{Condition, ConditionManager, ConditionSet, READY};
use knative_core::runtime::{Action, Reconciler};
use knative_core::store::{ApiObject, Objects, StoreError};

use super::{
    RECHECK, ReconcileError, controller_reference, is_controlled_by, propagated_annotations,
};
use crate::api::{
    Configuration, ConfigurationSpec, Revision, Route, RouteSpec, Service, ServiceStatus,
    TrafficTarget, keys,
};
use crate::config::ServingConfig;

/// Condition: the Service's Configuration is ready.
pub const CONFIGURATIONS_READY: &str = "ConfigurationsReady";
/// Condition: the Service's Route is ready and serves the latest revision.
pub const ROUTES_READY: &str = "RoutesReady";

fn condition_set() -> ConditionSet {
    ConditionSet::living(&[CONFIGURATIONS_READY, ROUTES_READY])
}

/// Labels a Service passes to its Configuration and Route.
fn child_labels(service: &Service) -> std::collections::BTreeMap<String, String> {
    let mut labels = service.metadata.labels.clone().unwrap_or_default();
    labels.insert(
        keys::SERVICE.to_owned(),
        service.metadata.name.clone().unwrap_or_default(),
    );
    if let Some(uid) = &service.metadata.uid {
        labels.insert(keys::SERVICE_UID.to_owned(), uid.clone());
    }
    labels
}

fn child_meta(service: &Service) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        name: service.metadata.name.clone(),
        namespace: service.metadata.namespace.clone(),
        labels: Some(child_labels(service)),
        annotations: propagated_annotations(&service.metadata),
        owner_references: Some(vec![controller_reference(service)]),
        ..Default::default()
    }
}

/// The Configuration a Service wants: same name, the Service's template.
pub fn desired_configuration(service: &Service) -> Configuration {
    Configuration {
        metadata: child_meta(service),
        spec: ConfigurationSpec {
            template: service.spec.template.clone(),
        },
        status: None,
    }
}

/// The Route a Service wants: same name, the Service's traffic with
/// configuration-following targets pointed at the Service's Configuration.
pub fn desired_route(service: &Service) -> Route {
    let name = service.metadata.name.clone().unwrap_or_default();
    let traffic = service
        .spec
        .traffic
        .iter()
        .map(|t| {
            let mut t = t.clone();
            if t.revision_name.as_deref().is_none_or(str::is_empty) {
                t.configuration_name = Some(name.clone());
            }
            t
        })
        .collect();
    Route {
        metadata: child_meta(service),
        spec: RouteSpec { traffic },
        status: None,
    }
}

/// Reconciles Services.
pub struct ServiceReconciler {
    services: Arc<dyn Objects<Service>>,
    configurations: Arc<dyn Objects<Configuration>>,
    routes: Arc<dyn Objects<Route>>,
    revisions: Arc<dyn Objects<Revision>>,
    config: Arc<ServingConfig>,
}

impl std::fmt::Debug for ServiceReconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceReconciler").finish_non_exhaustive()
    }
}

impl ServiceReconciler {
    /// A reconciler over these stores.
    pub fn new(
        services: Arc<dyn Objects<Service>>,
        configurations: Arc<dyn Objects<Configuration>>,
        routes: Arc<dyn Objects<Route>>,
        revisions: Arc<dyn Objects<Revision>>,
        config: Arc<ServingConfig>,
    ) -> Self {
        ServiceReconciler {
            services,
            configurations,
            routes,
            revisions,
            config,
        }
    }

    /// Creates the child, or brings an owned one in line; `Ok(None)` when a
    /// same-named child exists that this Service does not own.
    async fn sync_child<K, F>(
        store: &dyn Objects<K>,
        service: &Service,
        desired: K,
        differs: F,
    ) -> Result<Option<K>, StoreError>
    where
        K: ApiObject,
        F: Fn(&K, &K) -> bool,
    {
        let ns = service.metadata.namespace.as_deref();
        let name = service.metadata.name.as_deref().unwrap_or_default();
        match store.get(ns, name).await {
            Err(e) if e.is_not_found() => Ok(Some(store.create(&desired).await?)),
            Err(e) => Err(e),
            Ok(existing) if !is_controlled_by(existing.meta(), service.metadata.uid.as_deref()) => {
                Ok(None)
            }
            Ok(existing) => {
                let labels_differ = existing.meta().labels != desired.meta().labels
                    || existing.meta().annotations != desired.meta().annotations;
                if !labels_differ && !differs(&existing, &desired) {
                    return Ok(Some(existing));
                }
                let mut updated = desired;
                let meta = updated.meta_mut();
                meta.resource_version = existing.meta().resource_version.clone();
                meta.uid = existing.meta().uid.clone();
                meta.finalizers = existing.meta().finalizers.clone();
                Ok(Some(store.replace(&updated).await?))
            }
        }
    }
}

/// Whether `revision` was stamped by `configuration` at its current generation.
fn is_ours(revision: &Revision, configuration: &Configuration) -> bool {
    let generation = revision
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(keys::CONFIGURATION_GENERATION))
        .and_then(|g| g.parse::<i64>().ok());
    is_controlled_by(&revision.metadata, configuration.metadata.uid.as_deref())
        && generation == configuration.metadata.generation
}

fn mirror(m: &mut ConditionManager<'_>, type_: &str, source: Option<&Condition>) {
    match source {
        Some(c) if c.is_true() => m.mark_true(type_),
        Some(c) if c.is_false() => m.mark_false(type_, &c.reason, &c.message),
        Some(c) => m.mark_unknown(type_, &c.reason, &c.message),
        None => m.mark_unknown(type_, "", ""),
    }
}

/// Whether the Route serves what its spec asks, with configuration targets
/// resolved to `latest_ready` (upstream's `checkRoutesNotReady`; percents
/// are ignored because a gradual rollout may still be moving them).
fn traffic_migrated(route: &Route, configuration: &str, latest_ready: Option<&str>) -> bool {
    let status_traffic = route
        .status
        .as_ref()
        .map(|s| s.traffic.as_slice())
        .unwrap_or_default();
    if route.spec.traffic.len() != status_traffic.len() {
        return false;
    }
    let key = |t: &TrafficTarget| {
        (
            t.tag.clone(),
            t.revision_name.clone(),
            t.configuration_name.clone(),
        )
    };
    route
        .spec
        .traffic
        .iter()
        .zip(status_traffic)
        .all(|(want, got)| {
            let mut want = want.clone();
            if want.configuration_name.as_deref() == Some(configuration) {
                want.revision_name = latest_ready.map(str::to_owned);
                want.configuration_name = None;
            }
            key(&want) == key(got)
        })
}

#[async_trait]
impl Reconciler<Service> for ServiceReconciler {
    type Error = ReconcileError;

    async fn reconcile(&self, service: Arc<Service>) -> Result<Action, ReconcileError> {
        if service.metadata.deletion_timestamp.is_some() {
            // Children go with their owner reference.
            return Ok(Action::await_change());
        }
        let mut service = (*service).clone();
        let ctx = Context::create().with_config((*self.config).clone());
        service.spec.set_defaults(&ctx);
        let name = service.metadata.name.clone().unwrap_or_default();
        let ns = service.metadata.namespace.clone();

        let mut status = service.status.clone().unwrap_or_default();
        status.status.observed_generation = service.metadata.generation;
        let set = condition_set();
        let mut m = set.manage(&mut status.status.conditions);
        m.initialize();
        let mut action = Action::await_change();

        let configuration = Self::sync_child(
            self.configurations.as_ref(),
            &service,
            desired_configuration(&service),
            |a, b| a.spec != b.spec,
        )
        .await?;
        let Some(cfg) = configuration else {
            m.mark_false(
                CONFIGURATIONS_READY,
                "NotOwned",
                &format!("There is an existing Configuration {name:?} that we do not own."),
            );
            drop(m);
            self.write_status(&service, status).await?;
            // Nothing re-queues us when the other owner's object goes away.
            return Ok(Action::requeue_after(RECHECK));
        };
        let cfg_status = cfg.status.clone().unwrap_or_default();
        let cfg_observed = cfg_status.status.observed_generation == cfg.metadata.generation;
        if cfg_observed {
            mirror(
                &mut m,
                CONFIGURATIONS_READY,
                cfg_status.status.condition(READY),
            );
            status.latest_created_revision_name = cfg_status.latest_created_revision_name.clone();
            status.latest_ready_revision_name = cfg_status.latest_ready_revision_name.clone();
        } else {
            m.mark_unknown(
                CONFIGURATIONS_READY,
                "OutOfDate",
                "The Configuration is still working to reflect the latest desired specification.",
            );
        }

        // With a revision name of the user's choosing, traffic may only move
        // once the Configuration stamped that very revision.
        if let Some(byo) = service
            .spec
            .template
            .metadata
            .name
            .as_deref()
            .filter(|n| !n.is_empty())
        {
            if !cfg_observed {
                drop(m);
                self.write_status(&service, status).await?;
                return Ok(Action::await_change());
            }
            match self.revisions.get(ns.as_deref(), byo).await {
                Ok(rev) if !is_ours(&rev, &cfg) => {
                    m.mark_false(
                        ROUTES_READY,
                        "RevisionNameTaken",
                        &format!(
                            "The revision name {byo:?} is taken by a conflicting Revision, so traffic will not be migrated"
                        ),
                    );
                    drop(m);
                    self.write_status(&service, status).await?;
                    return Ok(Action::requeue_after(RECHECK));
                }
                Err(e) if !e.is_not_found() => return Err(e.into()),
                _ => {}
            }
        }

        let route = Self::sync_child(
            self.routes.as_ref(),
            &service,
            desired_route(&service),
            |a, b| a.spec != b.spec,
        )
        .await?;
        match &route {
            None => {
                m.mark_false(
                    ROUTES_READY,
                    "NotOwned",
                    &format!("There is an existing Route {name:?} that we do not own."),
                );
                action = Action::requeue_after(RECHECK);
            }
            Some(route) => {
                let route_status = route.status.clone().unwrap_or_default();
                if route_status.status.observed_generation != route.metadata.generation {
                    m.mark_unknown(
                        ROUTES_READY,
                        "OutOfDate",
                        "The Route is still working to reflect the latest desired specification.",
                    );
                } else {
                    let ready = route_status.status.condition(READY);
                    let latest_ready = status.latest_ready_revision_name.as_deref();
                    if ready.is_some_and(Condition::is_true)
                        && !traffic_migrated(route, &name, latest_ready)
                    {
                        m.mark_unknown(
                            ROUTES_READY,
                            "TrafficNotMigrated",
                            "Traffic is not yet migrated to the latest revision.",
                        );
                    } else {
                        mirror(&mut m, ROUTES_READY, ready);
                    }
                    status.url = route_status.url.clone();
                    status.address = route_status.address.clone();
                    status.traffic = route_status.traffic.clone();
                }
            }
        }
        drop(m);
        self.write_status(&service, status).await?;
        Ok(action)
    }
}

impl ServiceReconciler {
    async fn write_status(
        &self,
        service: &Service,
        status: ServiceStatus,
    ) -> Result<(), StoreError> {
        if service.status.as_ref() != Some(&status) {
            let mut updated = service.clone();
            updated.status = Some(status);
            self.services.replace_status(&updated).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RouteStatus;
    use knative_core::condition::ConditionStatus;

    fn service() -> Service {
        let mut svc: Service = serde_yaml::from_str(
            r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  namespace: default
  uid: svc-uid
  labels: {team: a}
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: "{}"
    note: kept
spec:
  template:
    spec:
      containers: [{image: hello}]
  traffic:
    - latestRevision: true
      percent: 80
    - revisionName: hello-00001
      percent: 20
      tag: old
"#,
        )
        .expect("parses");
        svc.spec.set_defaults(&Context::create());
        svc
    }

    #[test]
    fn desired_children_share_the_name_labels_and_owner() {
        let svc = service();
        let cfg = desired_configuration(&svc);
        assert_eq!(cfg.metadata.name.as_deref(), Some("hello"));
        let labels = cfg.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get(keys::SERVICE).map(String::as_str), Some("hello"));
        assert_eq!(
            labels.get(keys::SERVICE_UID).map(String::as_str),
            Some("svc-uid")
        );
        assert_eq!(labels.get("team").map(String::as_str), Some("a"));
        let annotations = cfg.metadata.annotations.clone().unwrap_or_default();
        assert!(!annotations.contains_key(keys::KUBECTL_LAST_APPLIED));
        assert_eq!(annotations.get("note").map(String::as_str), Some("kept"));
        let owner = &cfg.metadata.owner_references.clone().unwrap_or_default()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Service", "svc-uid", Some(true))
        );
        assert_eq!(cfg.spec.template, svc.spec.template);
    }

    #[test]
    fn desired_route_points_latest_targets_at_the_services_configuration() {
        let route = desired_route(&service());
        assert_eq!(
            route.spec.traffic[0].configuration_name.as_deref(),
            Some("hello")
        );
        assert_eq!(route.spec.traffic[1].configuration_name, None);
        assert_eq!(
            route.spec.traffic[1].revision_name.as_deref(),
            Some("hello-00001")
        );
    }

    #[test]
    fn traffic_is_migrated_only_when_status_matches_the_spec() {
        let mut route = desired_route(&service());
        let resolved = |latest: &str| {
            vec![
                TrafficTarget {
                    revision_name: Some(latest.into()),
                    latest_revision: Some(true),
                    percent: Some(80),
                    ..TrafficTarget::default()
                },
                TrafficTarget {
                    tag: Some("old".into()),
                    revision_name: Some("hello-00001".into()),
                    latest_revision: Some(false),
                    percent: Some(20),
                    url: Some("http://old-hello.default.example.com".into()),
                    ..TrafficTarget::default()
                },
            ]
        };
        route.status = Some(RouteStatus {
            traffic: resolved("hello-00001"),
            ..RouteStatus::default()
        });
        assert!(!traffic_migrated(&route, "hello", Some("hello-00002")));
        route.status = Some(RouteStatus {
            traffic: resolved("hello-00002"),
            ..RouteStatus::default()
        });
        assert!(traffic_migrated(&route, "hello", Some("hello-00002")));
        route.status = Some(RouteStatus::default());
        assert!(!traffic_migrated(&route, "hello", Some("hello-00002")));
    }

    #[test]
    fn mirroring_copies_status_reason_and_message() {
        let set = condition_set();
        let mut conditions = Vec::new();
        let mut m = set.manage(&mut conditions);
        let failed =
            Condition::new(READY, ConditionStatus::False).with_reason("RevisionFailed", "boom");
        mirror(&mut m, CONFIGURATIONS_READY, Some(&failed));
        let c = m.get(CONFIGURATIONS_READY).cloned().expect("set");
        assert_eq!(
            (c.status, c.reason.as_str(), c.message.as_str()),
            (ConditionStatus::False, "RevisionFailed", "boom")
        );
        assert_eq!(
            m.happy_condition().map(|c| c.status),
            Some(ConditionStatus::False)
        );
    }
}
