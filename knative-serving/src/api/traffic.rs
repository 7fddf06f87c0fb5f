//! `TrafficTarget` and the traffic-list rules shared by Route and Service
//! (`specs/SERVING.md §2`, upstream `route_validation.go`).

use std::collections::HashMap;

use knative_core::apis::FieldError;
use knative_core::apis::names::{validate_dns1035_label, validate_qualified_name};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One entry of a traffic table: which revision (or configuration's latest
/// ready revision) gets what share, and under which tag.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficTarget {
    /// A name for this target, exposed as its own URL (`<tag>-<route>...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// A fixed revision to send traffic to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_name: Option<String>,
    /// A configuration whose latest ready revision gets the traffic (spec
    /// only, and not inside a Service, which implies its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration_name: Option<String>,
    /// Whether this target follows the latest ready revision; defaults to
    /// `revisionName` being unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_revision: Option<bool>,
    /// The share of traffic, 0–100; all targets sum to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i64>,
    /// The tag's URL (status only, tagged targets only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Where a traffic list is being validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TrafficScope {
    /// A Route's spec: targets name a revision or a configuration.
    RouteSpec,
    /// A Service's spec: the Service's own configuration is implied.
    ServiceSpec,
    /// A status: targets are resolved to revisions; tags have URLs.
    Status,
}

impl TrafficTarget {
    /// Upstream defaulting: `latestRevision := revisionName == ""` when unset,
    /// `percent := 0` when unset.
    pub(crate) fn set_defaults(&mut self) {
        if self.latest_revision.is_none() {
            self.latest_revision = Some(self.revision_name.as_deref().unwrap_or("").is_empty());
        }
        if self.percent.is_none() {
            self.percent = Some(0);
        }
    }

    fn has_revision(&self) -> bool {
        self.revision_name.as_deref().is_some_and(|n| !n.is_empty())
    }

    fn has_configuration(&self) -> bool {
        self.configuration_name
            .as_deref()
            .is_some_and(|n| !n.is_empty())
    }

    fn tag(&self) -> Option<&str> {
        self.tag.as_deref().filter(|t| !t.is_empty())
    }

    /// Validates one target; paths are relative to the target.
    pub(crate) fn validate(&self, scope: TrafficScope) -> FieldError {
        let mut errs = FieldError::none();
        // A spec-only rule: resolved status targets name their revision.
        if let Some(latest) = self
            .latest_revision
            .filter(|_| scope != TrafficScope::Status)
        {
            let pinned = self.has_revision();
            if pinned == latest {
                errs.push(FieldError::new(
                    format!(
                        "may not set revisionName {:?} when latestRevision is {latest}",
                        self.revision_name.as_deref().unwrap_or("")
                    ),
                    "latestRevision",
                ));
            }
        }
        if scope == TrafficScope::ServiceSpec && self.has_configuration() {
            errs.push(
                FieldError::disallowed_fields("configurationName").with_details(
                    "a Service's traffic always follows the Service's own configuration",
                ),
            );
        } else if self.has_revision() && self.has_configuration() {
            errs.push(FieldError::multiple_one_of([
                "revisionName",
                "configurationName",
            ]));
        } else if let Some(name) = self.revision_name.as_deref().filter(|n| !n.is_empty()) {
            errs.push(validate_qualified_name(name, "revisionName"));
        } else if scope == TrafficScope::Status {
            errs.push(FieldError::missing_field("revisionName"));
        } else if let Some(name) = self.configuration_name.as_deref().filter(|n| !n.is_empty()) {
            errs.push(validate_qualified_name(name, "configurationName"));
        } else if scope == TrafficScope::RouteSpec {
            errs.push(FieldError::missing_one_of([
                "revisionName",
                "configurationName",
            ]));
        }
        if let Some(p) = self.percent
            && !(0..=100).contains(&p)
        {
            errs.push(FieldError::out_of_bounds(p, 0, 100, "percent"));
        }
        match (&self.url, scope) {
            (Some(_), TrafficScope::RouteSpec | TrafficScope::ServiceSpec) => {
                errs.push(
                    FieldError::disallowed_fields("url")
                        .with_details("url is set by the controller in status"),
                );
            }
            (Some(_), TrafficScope::Status) if self.tag().is_none() => {
                errs.push(FieldError::disallowed_fields("url"));
            }
            (None, TrafficScope::Status) if self.tag().is_some() => {
                errs.push(FieldError::missing_field("url"));
            }
            _ => {}
        }
        if let Some(tag) = self.tag() {
            errs.push(validate_dns1035_label(tag, "tag"));
        }
        errs
    }
}

/// Validates a traffic list: every target, unique tags, percents summing to
/// exactly 100. Paths are relative to the list (`[1].percent`).
pub(crate) fn validate_traffic(traffic: &[TrafficTarget], scope: TrafficScope) -> FieldError {
    let mut errs = FieldError::none();
    let mut tags: HashMap<&str, usize> = HashMap::new();
    let mut sum: i64 = 0;
    for (i, target) in traffic.iter().enumerate() {
        errs.push(target.validate(scope).via_index(i));
        sum = sum.saturating_add(target.percent.unwrap_or(0));
        if let Some(tag) = target.tag() {
            if let Some(first) = tags.get(tag) {
                errs.push(FieldError::new(
                    format!("Multiple definitions for {tag:?}"),
                    vec![format!("[{i}].tag"), format!("[{first}].tag")],
                ));
            } else {
                tags.insert(tag, i);
            }
        }
    }
    if sum != 100 {
        errs.push(FieldError::new(
            format!("Traffic targets sum to {sum}, want 100"),
            "",
        ));
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(revision: Option<&str>, configuration: Option<&str>, percent: i64) -> TrafficTarget {
        let mut t = TrafficTarget {
            revision_name: revision.map(str::to_owned),
            configuration_name: configuration.map(str::to_owned),
            percent: Some(percent),
            ..TrafficTarget::default()
        };
        t.set_defaults();
        t
    }

    #[test]
    fn defaults_follow_the_latest_revision_only_without_a_revision_name() {
        assert_eq!(target(None, Some("c"), 100).latest_revision, Some(true));
        assert_eq!(target(Some("r"), None, 100).latest_revision, Some(false));
        let mut empty = TrafficTarget::default();
        empty.set_defaults();
        assert_eq!(empty.percent, Some(0));
    }

    #[test]
    fn percents_must_sum_to_exactly_one_hundred() {
        let list = [target(Some("a"), None, 50), target(Some("b"), None, 40)];
        assert_eq!(
            validate_traffic(&list, TrafficScope::RouteSpec)
                .via_field("traffic")
                .to_string(),
            "traffic: Traffic targets sum to 90, want 100"
        );
    }

    #[test]
    fn duplicate_tags_name_both_entries() {
        let mut a = target(Some("a"), None, 50);
        a.tag = Some("canary".into());
        let mut b = target(Some("b"), None, 50);
        b.tag = Some("canary".into());
        assert_eq!(
            validate_traffic(&[a, b], TrafficScope::RouteSpec)
                .via_field("spec.traffic")
                .to_string(),
            "spec.traffic[0].tag, spec.traffic[1].tag: Multiple definitions for \"canary\""
        );
    }

    #[test]
    fn a_route_target_needs_exactly_one_of_revision_and_configuration() {
        let both = target(Some("r"), Some("c"), 100);
        assert_eq!(
            both.validate(TrafficScope::RouteSpec).to_string(),
            "configurationName, revisionName: expected exactly one, got both"
        );
        let neither = target(None, None, 100);
        assert_eq!(
            neither.validate(TrafficScope::RouteSpec).to_string(),
            "configurationName, revisionName: expected exactly one, got neither"
        );
        assert!(neither.validate(TrafficScope::ServiceSpec).is_empty());
    }

    #[test]
    fn service_traffic_may_not_name_a_configuration() {
        let t = target(None, Some("other"), 100);
        assert!(
            t.validate(TrafficScope::ServiceSpec)
                .to_string()
                .starts_with("configurationName: must not set the field(s)")
        );
    }

    #[test]
    fn tags_are_dns_1035_labels_and_urls_are_status_only() {
        let mut t = target(Some("r"), None, 100);
        t.tag = Some("1canary".into());
        t.url = Some("http://x".into());
        let text = t.validate(TrafficScope::RouteSpec).to_string();
        assert!(text.contains("tag: invalid value: 1canary"), "{text}");
        assert!(text.contains("url: must not set the field(s)"), "{text}");
        let mut status = target(Some("r"), None, 100);
        status.tag = Some("canary".into());
        assert_eq!(
            status.validate(TrafficScope::Status).to_string(),
            "url: missing field"
        );
    }

    #[test]
    fn latest_revision_must_agree_with_revision_name() {
        let mut t = target(Some("r"), None, 100);
        t.latest_revision = Some(true);
        assert_eq!(
            t.validate(TrafficScope::RouteSpec).to_string(),
            "latestRevision: may not set revisionName \"r\" when latestRevision is true"
        );
    }

    #[test]
    fn percent_out_of_range_is_rejected() {
        let t = target(Some("r"), None, 150);
        assert_eq!(
            t.validate(TrafficScope::RouteSpec).to_string(),
            "percent: expected 0 <= 150 <= 100"
        );
    }
}
