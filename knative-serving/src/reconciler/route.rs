//! Route → resolved traffic, URLs, routing state of revisions, and the
//! Route's table in the [`RoutingTable`] (`specs/SERVING.md §1–§2`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use knative_core::condition::{ConditionSet, ConditionStatus, READY};
use knative_core::runtime::{Action, Reconciler};
use knative_core::store::{ObjectKey, Objects};
use kube::core::Selector;

use super::{ReconcileError, now_rfc3339};
use crate::api::{Addressable, Configuration, Revision, Route, RoutingState, TrafficTarget, keys};
use crate::config::ServingConfig;
use crate::traffic::rollout::{self, Rollout, RolloutTarget, RouteTarget};
use crate::traffic::{self, ConfigurationState, RoutingTable, TagRoute, TrafficTable};

/// Condition: every traffic target resolved to a ready revision.
pub const ALL_TRAFFIC_ASSIGNED: &str = "AllTrafficAssigned";
/// Condition: the data plane serves the Route's traffic table.
pub const INGRESS_READY: &str = "IngressReady";
/// Condition: the Route's certificate (none without TLS).
pub const CERTIFICATE_PROVISIONED: &str = "CertificateProvisioned";
/// The finalizer that withdraws a Route from the routing table.
pub const FINALIZER: &str = "routes.serving.knative.dev";

fn condition_set() -> ConditionSet {
    ConditionSet::living(&[ALL_TRAFFIC_ASSIGNED, INGRESS_READY, CERTIFICATE_PROVISIONED])
}

/// The configuration and revision names one Route references.
type References = (HashSet<String>, HashSet<String>);

/// Which configurations and revisions each Route references, so a change
/// of one re-queues the Routes that depend on it.
#[derive(Clone, Debug, Default)]
pub struct RouteIndex {
    refs: Arc<Mutex<HashMap<ObjectKey, References>>>,
}

impl RouteIndex {
    fn record(
        &self,
        route: ObjectKey,
        configurations: HashSet<String>,
        revisions: HashSet<String>,
    ) {
        self.refs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(route, (configurations, revisions));
    }

    fn forget(&self, route: &ObjectKey) {
        self.refs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(route);
    }

    fn routes_where(
        &self,
        namespace: Option<&str>,
        matches: impl Fn(&HashSet<String>, &HashSet<String>) -> bool,
    ) -> Vec<ObjectKey> {
        self.refs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(key, (configs, revisions))| {
                key.namespace() == namespace && matches(configs, revisions)
            })
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Routes that reference configuration `name`.
    pub fn routes_for_configuration(&self, namespace: Option<&str>, name: &str) -> Vec<ObjectKey> {
        self.routes_where(namespace, |configs, _| configs.contains(name))
    }

    /// Routes that reference revision `name` or its configuration.
    pub fn routes_for_revision(
        &self,
        namespace: Option<&str>,
        name: &str,
        configuration: Option<&str>,
    ) -> Vec<ObjectKey> {
        self.routes_where(namespace, |configs, revisions| {
            revisions.contains(name) || configuration.is_some_and(|c| configs.contains(c))
        })
    }
}

/// Reconciles Routes.
pub struct RouteReconciler {
    routes: Arc<dyn Objects<Route>>,
    configurations: Arc<dyn Objects<Configuration>>,
    revisions: Arc<dyn Objects<Revision>>,
    routing: RoutingTable,
    index: RouteIndex,
    config: Arc<ServingConfig>,
}

impl std::fmt::Debug for RouteReconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteReconciler").finish_non_exhaustive()
    }
}

fn is_cluster_local(route: &Route) -> bool {
    route
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(keys::VISIBILITY))
        .is_some_and(|v| v == keys::VISIBILITY_CLUSTER_LOCAL)
}

/// The route names listed in a revision's `serving.knative.dev/routes` annotation.
fn routes_of(revision: &Revision) -> Vec<String> {
    revision
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(keys::ROUTES))
        .map(|v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `revision` with `route` added to or removed from its routes annotation
/// and its routing state updated (`active` while some route serves it,
/// `reserve` once none does); `None` when nothing changes.
fn relabel(revision: &Revision, route: &str, referenced: bool) -> Option<Revision> {
    let mut routes = routes_of(revision);
    let had = routes.iter().any(|r| r == route);
    if referenced && !had {
        routes.push(route.to_owned());
        routes.sort();
    } else if !referenced && had {
        routes.retain(|r| r != route);
    }
    let state = if routes.is_empty() {
        RoutingState::Reserve
    } else {
        RoutingState::Active
    };
    if had == referenced && revision.routing_state() == Some(state) {
        return None;
    }
    let mut updated = revision.clone();
    let annotations = updated
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new);
    if routes.is_empty() {
        annotations.remove(keys::ROUTES);
    } else {
        annotations.insert(keys::ROUTES.to_owned(), routes.join(","));
    }
    if revision.routing_state() != Some(state) {
        annotations.insert(keys::ROUTING_STATE_MODIFIED.to_owned(), now_rfc3339());
        updated
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(keys::ROUTING_STATE.to_owned(), state.as_str().to_owned());
    }
    Some(updated)
}

/// The annotation changes from `before` to `after` as a merge patch
/// (a removed routes annotation becomes `null`).
fn routing_annotations(before: &Revision, after: &Revision) -> serde_json::Value {
    let empty = BTreeMap::new();
    let old = before.metadata.annotations.as_ref().unwrap_or(&empty);
    let new = after.metadata.annotations.as_ref().unwrap_or(&empty);
    let mut patch = serde_json::Map::new();
    for key in [keys::ROUTES, keys::ROUTING_STATE_MODIFIED] {
        if old.get(key) != new.get(key) {
            patch.insert(
                key.to_owned(),
                new.get(key)
                    .map_or(serde_json::Value::Null, |v| v.clone().into()),
            );
        }
    }
    serde_json::Value::Object(patch)
}

/// The Route's `status.traffic`: one entry per spec target, except that a
/// `latestRevision` target that a gradual rollout is moving becomes one
/// entry per revision with its current share (upstream's
/// `GetRevisionTrafficTargets`); only the newest of those keeps
/// `latestRevision: true`.
fn status_traffic(
    resolved: &[traffic::ResolvedTarget],
    rollout: &Rollout,
    tag_url: &dyn Fn(&str) -> String,
) -> Vec<TrafficTarget> {
    let mut out = Vec::with_capacity(resolved.len());
    for t in resolved {
        let tag = t.tag.clone();
        let url = tag.as_deref().map(tag_url);
        let rolled = t
            .configuration_name
            .as_deref()
            .filter(|_| t.latest_revision)
            .and_then(|c| rollout.revision_percents(c, tag.as_deref().unwrap_or("")))
            .filter(|revisions| revisions.len() > 1);
        match rolled {
            Some(revisions) => {
                for r in revisions {
                    out.push(TrafficTarget {
                        tag: tag.clone(),
                        revision_name: Some(r.revision_name.clone()),
                        configuration_name: None,
                        latest_revision: Some(r.revision_name == t.revision_name),
                        percent: Some(r.percent),
                        url: url.clone(),
                    });
                }
            }
            None => out.push(TrafficTarget {
                tag,
                revision_name: Some(t.revision_name.clone()),
                configuration_name: None,
                latest_revision: Some(t.latest_revision),
                percent: Some(t.percent),
                url,
            }),
        }
    }
    out
}

impl RouteReconciler {
    /// A reconciler over these stores, publishing into `routing`.
    pub fn new(
        routes: Arc<dyn Objects<Route>>,
        configurations: Arc<dyn Objects<Configuration>>,
        revisions: Arc<dyn Objects<Revision>>,
        routing: RoutingTable,
        index: RouteIndex,
        config: Arc<ServingConfig>,
    ) -> Self {
        RouteReconciler {
            routes,
            configurations,
            revisions,
            routing,
            index,
            config,
        }
    }

    /// Marks the revisions the route serves `active` (listing the route),
    /// and the ones it served before but no longer does `reserve` unless
    /// another route still serves them. Revisions no route has served yet
    /// stay `pending`, as upstream leaves them.
    async fn label_revisions(
        &self,
        route: &Route,
        served: &HashSet<String>,
        revisions: &[Revision],
    ) -> Result<(), ReconcileError> {
        let route_name = route.metadata.name.clone().unwrap_or_default();
        for revision in revisions {
            let name = revision.metadata.name.as_deref().unwrap_or_default();
            let referenced = served.contains(name);
            if !referenced && !routes_of(revision).contains(&route_name) {
                continue;
            }
            if let Some(updated) = relabel(revision, &route_name, referenced) {
                // A merge patch of metadata only: no conflict with status writes.
                let patch = serde_json::json!({"metadata": {
                    "labels": updated.metadata.labels,
                    "annotations": routing_annotations(revision, &updated),
                }});
                let ns = revision.metadata.namespace.as_deref();
                match self.revisions.patch(ns, name, &patch).await {
                    Err(e) if !e.is_not_found() => return Err(e.into()),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The gradual rollout state for this reconcile (`specs/SERVING.md §2`):
    /// stepped from the state saved in the Route's status annotations, saved
    /// back there, with the delay until the next step. Without a rollout
    /// duration the state is empty and traffic moves at once.
    fn rollout(
        &self,
        route: &Route,
        resolved: &[traffic::ResolvedTarget],
        owners: &HashMap<&str, &str>,
        annotations: &mut BTreeMap<String, String>,
    ) -> (Rollout, Option<Duration>) {
        let default_secs =
            i64::try_from(self.config.network.rollout_duration.as_secs()).unwrap_or(i64::MAX);
        let duration = rollout::rollout_duration(
            route
                .metadata
                .annotations
                .as_ref()
                .unwrap_or(&BTreeMap::new()),
            default_secs,
        )
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring the rollout duration annotation");
            Duration::from_secs(default_secs.max(0).unsigned_abs())
        });
        if duration.is_zero() {
            annotations.remove(rollout::ROLLOUT_ANNOTATION);
            return (Rollout::default(), None);
        }
        let targets: Vec<RouteTarget> = resolved
            .iter()
            .map(|t| RouteTarget {
                tag: t.tag.clone().unwrap_or_default(),
                configuration_name: t
                    .configuration_name
                    .clone()
                    .or_else(|| {
                        owners
                            .get(t.revision_name.as_str())
                            .map(|c| (*c).to_owned())
                    })
                    .unwrap_or_default(),
                revision_name: t.revision_name.clone(),
                percent: t.percent,
                latest_revision: t.latest_revision,
            })
            .collect();
        let goal = Rollout::from_targets(&RolloutTarget::from_route_targets(&targets));
        let now = i64::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or(i64::MAX);
        let mut previous = annotations
            .get(rollout::ROLLOUT_ANNOTATION)
            .and_then(|a| Rollout::from_annotation(a).ok());
        // Publishing is synchronous, so the "ingress" is ready now; the
        // step parameters are computed once, on the first ready observation.
        if let Some(previous) = previous.as_mut() {
            previous.observe_ready(now, duration.as_secs_f64());
        }
        let (next, next_step) = goal.step(previous.as_ref(), now);
        annotations.insert(rollout::ROLLOUT_ANNOTATION.to_owned(), next.to_annotation());
        let delay = next_step
            .map(|at| Duration::from_nanos(u64::try_from(at.saturating_sub(now)).unwrap_or(0)));
        (next, delay)
    }

    async fn finalize(&self, route: &Route, key: &ObjectKey) -> Result<Action, ReconcileError> {
        self.routing.remove(key);
        self.index.forget(key);
        let ns = route.metadata.namespace.as_deref();
        let all = self.revisions.list(ns, &Selector::default()).await?;
        self.label_revisions(route, &HashSet::new(), &all).await?;
        let mut updated = route.clone();
        if let Some(finalizers) = updated.metadata.finalizers.as_mut() {
            finalizers.retain(|f| f != FINALIZER);
        }
        match self.routes.replace(&updated).await {
            Err(e) if !e.is_not_found() => Err(e.into()),
            _ => Ok(Action::await_change()),
        }
    }
}

#[async_trait]
impl Reconciler<Route> for RouteReconciler {
    type Error = ReconcileError;

    async fn reconcile(&self, route: Arc<Route>) -> Result<Action, ReconcileError> {
        let name = route.metadata.name.clone().unwrap_or_default();
        let namespace = route.metadata.namespace.clone().unwrap_or_default();
        let key = ObjectKey::namespaced(namespace.clone(), name.clone());
        let has_finalizer = route
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == FINALIZER);
        if route.metadata.deletion_timestamp.is_some() {
            return if has_finalizer {
                self.finalize(&route, &key).await
            } else {
                Ok(Action::await_change())
            };
        }
        if !has_finalizer {
            let mut updated = (*route).clone();
            updated
                .metadata
                .finalizers
                .get_or_insert_with(Vec::new)
                .push(FINALIZER.to_owned());
            self.routes.replace(&updated).await?;
            return Ok(Action::await_change());
        }

        let mut spec = route.spec.clone();
        for target in &mut spec.traffic {
            target.set_defaults();
        }
        let referenced_configs: HashSet<String> = spec
            .traffic
            .iter()
            .filter_map(|t| t.configuration_name.clone())
            .collect();
        let referenced_revisions: HashSet<String> = spec
            .traffic
            .iter()
            .filter_map(|t| t.revision_name.clone())
            .collect();
        self.index.record(
            key.clone(),
            referenced_configs.clone(),
            referenced_revisions.clone(),
        );

        let ns = Some(namespace.as_str());
        let everything = Selector::default();
        let configurations: HashMap<String, Configuration> = self
            .configurations
            .list(ns, &everything)
            .await?
            .into_iter()
            .filter(|c| {
                c.metadata
                    .name
                    .as_ref()
                    .is_some_and(|n| referenced_configs.contains(n))
            })
            .map(|c| (c.metadata.name.clone().unwrap_or_default(), c))
            .collect();
        let revisions = self.revisions.list(ns, &everything).await?;
        let config_states: HashMap<String, ConfigurationState> = configurations
            .iter()
            .map(|(n, c)| {
                let status = c.status.clone().unwrap_or_default();
                let ready = status
                    .status
                    .condition(READY)
                    .map_or(ConditionStatus::Unknown, |c| c.status);
                (
                    n.clone(),
                    ConfigurationState {
                        latest_ready: status.latest_ready_revision_name,
                        ready,
                    },
                )
            })
            .collect();
        let revision_states: HashMap<String, ConditionStatus> = revisions
            .iter()
            .map(|r| {
                let ready = r
                    .status
                    .as_ref()
                    .and_then(|s| s.status.condition(READY))
                    .map_or(ConditionStatus::Unknown, |c| c.status);
                (r.metadata.name.clone().unwrap_or_default(), ready)
            })
            .collect();

        let mut status = route.status.clone().unwrap_or_default();
        let mut requeue = None;
        let set = condition_set();
        let mut m = set.manage(&mut status.status.conditions);
        m.initialize();
        status.status.observed_generation = route.metadata.generation;
        let network = &self.config.network;
        let cluster_local = is_cluster_local(&route);
        let host = network.host(&name, &namespace, cluster_local);
        let local_host = network.host(&name, &namespace, true);
        status.url = Some(format!("http://{host}"));
        status.address = Some(Addressable {
            name: None,
            url: Some(format!("http://{local_host}")),
        });
        m.mark_true_with_reason(
            CERTIFICATE_PROVISIONED,
            "TLSNotEnabled",
            "autoTLS is not enabled",
        );

        // Revisions this route keeps warm, whether or not every target
        // resolves yet: pinned revisions that exist, and the latest created
        // and latest ready revisions of the configurations it follows.
        let mut keep: HashSet<String> = referenced_revisions
            .iter()
            .filter(|r| revision_states.contains_key(*r))
            .cloned()
            .collect();
        for config in configurations.values() {
            let status = config.status.clone().unwrap_or_default();
            keep.extend(status.latest_created_revision_name);
            keep.extend(status.latest_ready_revision_name);
        }

        match traffic::resolve(&spec.traffic, &config_states, &revision_states) {
            Err(e) => {
                if e.status == ConditionStatus::False {
                    m.mark_false(ALL_TRAFFIC_ASSIGNED, e.reason, &e.message);
                } else {
                    m.mark_unknown(ALL_TRAFFIC_ASSIGNED, e.reason, &e.message);
                }
                drop(m);
                self.label_revisions(&route, &keep, &revisions).await?;
            }
            Ok(resolved) => {
                m.mark_true(ALL_TRAFFIC_ASSIGNED);
                let owners: HashMap<&str, &str> = revisions
                    .iter()
                    .filter_map(|r| {
                        let config = r.metadata.labels.as_ref()?.get(keys::CONFIGURATION)?;
                        Some((r.metadata.name.as_deref()?, config.as_str()))
                    })
                    .collect();
                let (rollout, next_step) =
                    self.rollout(&route, &resolved, &owners, &mut status.status.annotations);
                requeue = next_step;
                let tag_url = |tag: &str| {
                    format!(
                        "http://{}",
                        network.tag_host(tag, &name, &namespace, cluster_local)
                    )
                };
                status.traffic = status_traffic(&resolved, &rollout, &tag_url);
                let tags: Vec<TagRoute> = resolved
                    .iter()
                    .filter_map(|t| {
                        t.tag.as_ref().map(|tag| TagRoute {
                            tag: tag.clone(),
                            host: if cluster_local {
                                String::new()
                            } else {
                                network.tag_host(tag, &name, &namespace, false)
                            },
                            cluster_local_host: network.tag_host(tag, &name, &namespace, true),
                            targets: TrafficTable::split(&resolved, &rollout, tag),
                        })
                    })
                    .collect();
                let table = TrafficTable {
                    namespace: namespace.clone(),
                    route: name.clone(),
                    host: if cluster_local {
                        String::new()
                    } else {
                        host.clone()
                    },
                    cluster_local_host: local_host.clone(),
                    targets: TrafficTable::split(&resolved, &rollout, ""),
                    tags,
                };
                // Every revision the table sends requests to is served,
                // including older ones mid-rollout.
                keep.extend(table.targets.iter().map(|w| w.revision.clone()));
                keep.extend(
                    table
                        .tags
                        .iter()
                        .flat_map(|t| t.targets.iter().map(|w| w.revision.clone())),
                );
                m.mark_true(INGRESS_READY);
                drop(m);
                // Label before publishing, so nothing is routed to a revision
                // that is still scaled down as `reserve`.
                self.label_revisions(&route, &keep, &revisions).await?;
                self.routing.publish(table);
            }
        }

        if route.status.as_ref() != Some(&status) {
            let mut updated = (*route).clone();
            updated.status = Some(status);
            self.routes.replace_status(&updated).await?;
        }
        Ok(match requeue {
            Some(delay) => Action::requeue_after(delay),
            None => Action::await_change(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(state: Option<&str>, routes: Option<&str>) -> Revision {
        let mut rev = Revision::new("hello-00001", crate::api::RevisionSpec::default());
        if let Some(state) = state {
            rev.metadata.labels = Some([(keys::ROUTING_STATE.to_owned(), state.to_owned())].into());
        }
        if let Some(routes) = routes {
            rev.metadata.annotations = Some([(keys::ROUTES.to_owned(), routes.to_owned())].into());
        }
        rev
    }

    fn state_and_routes(rev: &Revision) -> (Option<RoutingState>, Vec<String>) {
        (rev.routing_state(), routes_of(rev))
    }

    #[test]
    fn a_served_revision_becomes_active_and_lists_the_route() {
        let updated = relabel(&revision(Some("pending"), None), "hello", true).expect("changes");
        assert_eq!(
            state_and_routes(&updated),
            (Some(RoutingState::Active), vec!["hello".to_owned()])
        );
        assert!(
            updated
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(keys::ROUTING_STATE_MODIFIED))
        );
        assert!(
            relabel(&updated, "hello", true).is_none(),
            "no change the second time"
        );
    }

    #[test]
    fn a_revision_no_route_serves_any_more_goes_to_reserve() {
        let active = revision(Some("active"), Some("hello"));
        let updated = relabel(&active, "hello", false).expect("changes");
        assert_eq!(
            state_and_routes(&updated),
            (Some(RoutingState::Reserve), vec![])
        );
        let still_shared =
            relabel(&revision(Some("active"), Some("a,hello")), "hello", false).expect("changes");
        assert_eq!(
            state_and_routes(&still_shared),
            (Some(RoutingState::Active), vec!["a".to_owned()])
        );
    }

    #[test]
    fn the_index_finds_routes_by_configuration_and_revision() {
        let index = RouteIndex::default();
        index.record(
            ObjectKey::namespaced("default", "r"),
            ["hello".to_owned()].into(),
            ["pinned".to_owned()].into(),
        );
        assert_eq!(
            index
                .routes_for_configuration(Some("default"), "hello")
                .len(),
            1
        );
        assert_eq!(
            index.routes_for_configuration(Some("other"), "hello").len(),
            0
        );
        assert_eq!(
            index
                .routes_for_revision(Some("default"), "pinned", None)
                .len(),
            1
        );
        assert_eq!(
            index
                .routes_for_revision(Some("default"), "hello-00002", Some("hello"))
                .len(),
            1
        );
        assert_eq!(
            index
                .routes_for_revision(Some("default"), "x", Some("y"))
                .len(),
            0
        );
    }
}
