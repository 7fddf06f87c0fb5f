//! Traffic: resolving a Route's targets to revisions, and the routing
//! table the data plane serves from (`specs/SERVING.md §2`).
//!
//! [`resolve`] turns a Route's spec into the resolved targets of its status
//! (every `configurationName` replaced by that configuration's latest ready
//! revision) or says which target cannot be served yet. The route
//! reconciler publishes each ready Route as a [`TrafficTable`] in the shared
//! [`RoutingTable`]; an ingress subscribes to it.

pub mod rollout;

use rollout::Rollout;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use knative_core::condition::ConditionStatus;
use knative_core::store::ObjectKey;
use tokio::sync::watch;

use crate::api::TrafficTarget;

/// What the route resolver needs to know about a Configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigurationState {
    /// `status.latestReadyRevisionName`.
    pub latest_ready: Option<String>,
    /// The Configuration's `Ready` status.
    pub ready: ConditionStatus,
}

/// A target that can be served: a revision and its share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedTarget {
    /// The tag, if any.
    pub tag: Option<String>,
    /// The revision that receives the traffic.
    pub revision_name: String,
    /// The configuration followed, for `latestRevision` targets.
    pub configuration_name: Option<String>,
    /// Whether the target follows its configuration's latest ready revision.
    pub latest_revision: bool,
    /// Share of traffic, 0–100.
    pub percent: i64,
}

/// Why a Route's traffic cannot be assigned (its `AllTrafficAssigned` condition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficError {
    /// `False` when something failed, `Unknown` while waiting.
    pub status: ConditionStatus,
    /// Upstream's reason: `ConfigurationMissing` or `RevisionMissing`.
    pub reason: &'static str,
    /// What to look at.
    pub message: String,
}

/// Resolves a Route's spec traffic. `configurations` and `revisions` hold
/// what exists (by name, in the Route's namespace); revisions map to their
/// `Ready` status.
pub fn resolve(
    traffic: &[TrafficTarget],
    configurations: &HashMap<String, ConfigurationState>,
    revisions: &HashMap<String, ConditionStatus>,
) -> Result<Vec<ResolvedTarget>, TrafficError> {
    let mut resolved = Vec::with_capacity(traffic.len());
    // Report failures before "still waiting", as upstream does.
    let mut waiting: Option<TrafficError> = None;
    for target in traffic {
        let percent = target.percent.unwrap_or(0);
        let tag = target.tag.clone().filter(|t| !t.is_empty());
        if let Some(config) = target
            .configuration_name
            .as_deref()
            .filter(|c| !c.is_empty())
        {
            let Some(state) = configurations.get(config) else {
                return Err(TrafficError {
                    status: ConditionStatus::False,
                    reason: "ConfigurationMissing",
                    message: format!("Configuration {config:?} referenced in traffic not found."),
                });
            };
            match (&state.latest_ready, state.ready) {
                (Some(revision), _) => resolved.push(ResolvedTarget {
                    tag,
                    revision_name: revision.clone(),
                    configuration_name: Some(config.to_owned()),
                    latest_revision: true,
                    percent,
                }),
                (None, ConditionStatus::False) => {
                    return Err(TrafficError {
                        status: ConditionStatus::False,
                        reason: "RevisionMissing",
                        message: format!(
                            "Configuration {config:?} does not have any ready Revision."
                        ),
                    });
                }
                (None, _) => {
                    waiting.get_or_insert(TrafficError {
                        status: ConditionStatus::Unknown,
                        reason: "RevisionMissing",
                        message: format!(
                            "Configuration {config:?} is waiting for a Revision to become ready."
                        ),
                    });
                }
            }
        } else if let Some(revision) = target.revision_name.as_deref().filter(|r| !r.is_empty()) {
            match revisions.get(revision) {
                None => {
                    return Err(TrafficError {
                        status: ConditionStatus::False,
                        reason: "RevisionMissing",
                        message: format!("Revision {revision:?} referenced in traffic not found."),
                    });
                }
                Some(ConditionStatus::False) => {
                    return Err(TrafficError {
                        status: ConditionStatus::False,
                        reason: "RevisionMissing",
                        message: format!("Revision {revision:?} failed to become ready."),
                    });
                }
                Some(ConditionStatus::Unknown) => {
                    waiting.get_or_insert(TrafficError {
                        status: ConditionStatus::Unknown,
                        reason: "RevisionMissing",
                        message: format!("Revision {revision:?} is not yet ready."),
                    });
                }
                Some(ConditionStatus::True) => resolved.push(ResolvedTarget {
                    tag,
                    revision_name: revision.to_owned(),
                    configuration_name: None,
                    latest_revision: false,
                    percent,
                }),
            }
        }
    }
    match waiting {
        Some(err) => Err(err),
        None => Ok(resolved),
    }
}

/// One revision and its share of a host's traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightedRevision {
    /// The revision.
    pub revision: String,
    /// Percent of requests, 0–100.
    pub percent: i64,
}

/// A tag's own hostname and the revision behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagRoute {
    /// The tag.
    pub tag: String,
    /// Its public hostname (`<tag>-<route>.<ns>.<domain>`).
    pub host: String,
    /// Its cluster-local hostname.
    pub cluster_local_host: String,
    /// The revision(s) behind it: one at 100%, or a split while a gradual
    /// rollout moves a tagged `latestRevision` target.
    pub targets: Vec<WeightedRevision>,
}

/// How one Route's requests are served: what the ingress needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficTable {
    /// The Route's namespace.
    pub namespace: String,
    /// The Route's name.
    pub route: String,
    /// The public hostname (empty for cluster-local routes).
    pub host: String,
    /// The cluster-local hostname (`<route>.<ns>.svc.cluster.local`).
    pub cluster_local_host: String,
    /// The split of the main hostname's traffic, one entry per revision,
    /// in first-appearance order; percents sum to 100 (during a gradual
    /// rollout, a configuration's share is split between its revisions).
    pub targets: Vec<WeightedRevision>,
    /// Tagged hostnames.
    pub tags: Vec<TagRoute>,
}

impl TrafficTable {
    /// The split of the hostname serving `tag` (`""` = the main hostname):
    /// the main hostname serves every target, a tag's hostname only its
    /// own. A `latestRevision` target's share is split as `rollout` says
    /// for its configuration and tag, if it says anything. Entries of the
    /// same revision are added up; zero-percent entries are dropped.
    pub fn split(
        resolved: &[ResolvedTarget],
        rollout: &Rollout,
        tag: &str,
    ) -> Vec<WeightedRevision> {
        let mut split: Vec<WeightedRevision> = Vec::new();
        let mut add = |revision: &str, percent: i64| {
            if percent <= 0 {
                return;
            }
            match split.iter_mut().find(|w| w.revision == revision) {
                Some(w) => w.percent += percent,
                None => split.push(WeightedRevision {
                    revision: revision.to_owned(),
                    percent,
                }),
            }
        };
        let mut rolled: Vec<&str> = Vec::new();
        for target in resolved {
            let percent = if tag.is_empty() {
                target.percent
            } else if target.tag.as_deref() == Some(tag) {
                // A tag's hostname sends all of its requests to its target.
                100
            } else {
                continue;
            };
            let config = target
                .configuration_name
                .as_deref()
                .filter(|_| target.latest_revision);
            match config.and_then(|c| rollout.revision_percents(c, tag).map(|r| (c, r))) {
                Some((config, revisions)) => {
                    if !rolled.contains(&config) {
                        rolled.push(config);
                        for r in revisions {
                            add(&r.revision_name, r.percent);
                        }
                    }
                }
                None => add(&target.revision_name, percent),
            }
        }
        split
    }
}

/// Every Route's published [`TrafficTable`], shared between the route
/// reconciler (which publishes) and the data plane (which subscribes).
#[derive(Clone, Debug)]
pub struct RoutingTable {
    tables: Arc<watch::Sender<Arc<BTreeMap<ObjectKey, TrafficTable>>>>,
}

impl Default for RoutingTable {
    fn default() -> Self {
        RoutingTable {
            tables: Arc::new(watch::Sender::new(Arc::default())),
        }
    }
}

impl RoutingTable {
    /// An empty routing table.
    pub fn new() -> Self {
        RoutingTable::default()
    }

    /// Publishes (or replaces) a Route's table.
    pub fn publish(&self, table: TrafficTable) {
        let key = ObjectKey::namespaced(table.namespace.clone(), table.route.clone());
        self.tables.send_if_modified(|tables| {
            if tables.get(&key) == Some(&table) {
                return false;
            }
            Arc::make_mut(tables).insert(key, table);
            true
        });
    }

    /// Withdraws a Route's table.
    pub fn remove(&self, key: &ObjectKey) {
        self.tables.send_if_modified(|tables| {
            if !tables.contains_key(key) {
                return false;
            }
            Arc::make_mut(tables).remove(key);
            true
        });
    }

    /// The tables now.
    pub fn snapshot(&self) -> Arc<BTreeMap<ObjectKey, TrafficTable>> {
        self.tables.borrow().clone()
    }

    /// Follows every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<BTreeMap<ObjectKey, TrafficTable>>> {
        self.tables.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(
        revision: Option<&str>,
        config: Option<&str>,
        percent: i64,
        tag: Option<&str>,
    ) -> TrafficTarget {
        TrafficTarget {
            tag: tag.map(str::to_owned),
            revision_name: revision.map(str::to_owned),
            configuration_name: config.map(str::to_owned),
            latest_revision: Some(revision.is_none()),
            percent: Some(percent),
            url: None,
        }
    }

    fn configs(
        latest: Option<&str>,
        ready: ConditionStatus,
    ) -> HashMap<String, ConfigurationState> {
        [(
            "hello".to_owned(),
            ConfigurationState {
                latest_ready: latest.map(str::to_owned),
                ready,
            },
        )]
        .into()
    }

    #[test]
    fn configuration_targets_follow_the_latest_ready_revision() {
        let traffic = [
            target(None, Some("hello"), 50, None),
            target(Some("hello-00001"), None, 50, Some("old")),
        ];
        let revisions = [("hello-00001".to_owned(), ConditionStatus::True)].into();
        let resolved = resolve(
            &traffic,
            &configs(Some("hello-00002"), ConditionStatus::True),
            &revisions,
        )
        .expect("resolves");
        assert_eq!(resolved[0].revision_name, "hello-00002");
        assert!(resolved[0].latest_revision);
        assert_eq!(resolved[1].revision_name, "hello-00001");
        assert_eq!(resolved[1].tag.as_deref(), Some("old"));
    }

    #[test]
    fn missing_and_unready_targets_say_why() {
        let none: HashMap<String, ConfigurationState> = HashMap::new();
        let no_revisions: HashMap<String, ConditionStatus> = HashMap::new();
        let err = resolve(
            &[target(None, Some("hello"), 100, None)],
            &none,
            &no_revisions,
        )
        .expect_err("missing");
        assert_eq!(err.reason, "ConfigurationMissing");
        assert_eq!(err.status, ConditionStatus::False);

        let err = resolve(
            &[target(None, Some("hello"), 100, None)],
            &configs(None, ConditionStatus::Unknown),
            &no_revisions,
        )
        .expect_err("waiting");
        assert_eq!(err.status, ConditionStatus::Unknown);
        assert_eq!(
            err.message,
            "Configuration \"hello\" is waiting for a Revision to become ready."
        );

        let err = resolve(
            &[target(None, Some("hello"), 100, None)],
            &configs(None, ConditionStatus::False),
            &no_revisions,
        )
        .expect_err("failed");
        assert_eq!(
            err.message,
            "Configuration \"hello\" does not have any ready Revision."
        );

        let err = resolve(
            &[target(Some("hello-9"), None, 100, None)],
            &none,
            &no_revisions,
        )
        .expect_err("missing");
        assert_eq!(
            err.message,
            "Revision \"hello-9\" referenced in traffic not found."
        );
    }

    #[test]
    fn a_failure_is_reported_before_a_wait() {
        let revisions = [
            ("a".to_owned(), ConditionStatus::Unknown),
            ("b".to_owned(), ConditionStatus::False),
        ]
        .into();
        let err = resolve(
            &[
                target(Some("a"), None, 50, None),
                target(Some("b"), None, 50, None),
            ],
            &HashMap::new(),
            &revisions,
        )
        .expect_err("failed");
        assert_eq!(err.status, ConditionStatus::False);
        assert_eq!(err.message, "Revision \"b\" failed to become ready.");
    }

    fn resolved(
        rev: &str,
        config: Option<&str>,
        percent: i64,
        tag: Option<&str>,
    ) -> ResolvedTarget {
        ResolvedTarget {
            tag: tag.map(str::to_owned),
            revision_name: rev.to_owned(),
            configuration_name: config.map(str::to_owned),
            latest_revision: config.is_some(),
            percent,
        }
    }

    fn weights(pairs: &[(&str, i64)]) -> Vec<WeightedRevision> {
        pairs
            .iter()
            .map(|(r, p)| WeightedRevision {
                revision: (*r).to_owned(),
                percent: *p,
            })
            .collect()
    }

    #[test]
    fn the_split_adds_up_entries_of_one_revision_and_drops_zeroes() {
        let targets = [
            resolved("a", None, 30, None),
            resolved("b", None, 0, Some("zero")),
            resolved("a", None, 20, None),
            resolved("c", None, 50, None),
        ];
        let none = Rollout::default();
        assert_eq!(
            TrafficTable::split(&targets, &none, ""),
            weights(&[("a", 50), ("c", 50)])
        );
        assert_eq!(
            TrafficTable::split(&targets, &none, "zero"),
            weights(&[("b", 100)])
        );
    }

    #[test]
    fn a_rollout_splits_the_configurations_share_between_its_revisions() {
        let targets = [
            resolved("hello-2", Some("hello"), 80, None),
            resolved("pinned", None, 20, Some("old")),
        ];
        let rollout = Rollout::from_annotation(
            r#"{"configurations":[{"configurationName":"hello","percent":80,"revisions":[{"revisionName":"hello-1","percent":79},{"revisionName":"hello-2","percent":1}],"stepParams":{}}]}"#,
        )
        .expect("valid state");
        assert_eq!(
            TrafficTable::split(&targets, &rollout, ""),
            weights(&[("hello-1", 79), ("hello-2", 1), ("pinned", 20)])
        );
        assert_eq!(
            TrafficTable::split(&targets, &rollout, "old"),
            weights(&[("pinned", 100)])
        );
    }

    #[tokio::test]
    async fn subscribers_see_published_tables() {
        let routing = RoutingTable::new();
        let mut rx = routing.subscribe();
        let table = TrafficTable {
            namespace: "default".into(),
            route: "hello".into(),
            host: "hello.default.example.com".into(),
            cluster_local_host: "hello.default.svc.cluster.local".into(),
            targets: vec![WeightedRevision {
                revision: "hello-00001".into(),
                percent: 100,
            }],
            tags: Vec::new(),
        };
        routing.publish(table.clone());
        rx.changed().await.expect("changed");
        assert_eq!(rx.borrow().len(), 1);
        routing.publish(table);
        assert!(
            !rx.has_changed().expect("open"),
            "republishing the same table is not a change"
        );
        routing.remove(&ObjectKey::namespaced("default", "hello"));
        rx.changed().await.expect("changed");
        assert!(rx.borrow().is_empty());
    }
}
