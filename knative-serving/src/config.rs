//! Serving's ConfigMaps as typed configuration: `config-defaults`,
//! `config-network` / `config-domain` (`specs/SERVING.md §1–§2`).
//!
//! Each `from_config_map` takes the ConfigMap's `data`; unknown keys are
//! ignored (upstream does the same), bad values are errors naming the key.
//! Defaulting and validation find the [`ServingConfig`] in their
//! [`Context`](knative_core::apis::Context) (`ctx.with_config(cfg)`); without
//! one they use [`ServingConfig::default`], upstream's defaults.

use std::collections::BTreeMap;
use std::time::Duration;

/// A ConfigMap value that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ConfigMap {config_map} key {key:?}: invalid value {value:?}: {reason}")]
pub struct ConfigError {
    /// The ConfigMap, e.g. `config-defaults`.
    pub config_map: &'static str,
    /// The key.
    pub key: String,
    /// The value found.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

fn parse_int<T: std::str::FromStr>(
    config_map: &'static str,
    data: &BTreeMap<String, String>,
    key: &str,
    into: &mut T,
) -> Result<(), ConfigError> {
    if let Some(value) = data.get(key) {
        *into = value.trim().parse().map_err(|_| ConfigError {
            config_map,
            key: key.to_owned(),
            value: value.clone(),
            reason: "expected an integer".to_owned(),
        })?;
    }
    Ok(())
}

fn parse_bool(
    config_map: &'static str,
    data: &BTreeMap<String, String>,
    key: &str,
    into: &mut bool,
) -> Result<(), ConfigError> {
    if let Some(value) = data.get(key) {
        *into = match value.trim().to_ascii_lowercase().as_str() {
            "true" | "enabled" => true,
            "false" | "disabled" => false,
            _ => {
                return Err(ConfigError {
                    config_map,
                    key: key.to_owned(),
                    value: value.clone(),
                    reason: "expected true or false".to_owned(),
                });
            }
        };
    }
    Ok(())
}

/// `config-defaults`: defaults and bounds for revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Defaults {
    /// `revision-timeout-seconds` (300).
    pub revision_timeout_seconds: i64,
    /// `max-revision-timeout-seconds` (600).
    pub max_revision_timeout_seconds: i64,
    /// `revision-response-start-timeout-seconds`; upstream defaults it to
    /// the revision timeout, which leaves revisions' field unset.
    pub revision_response_start_timeout_seconds: i64,
    /// `revision-idle-timeout-seconds` (0 = off).
    pub revision_idle_timeout_seconds: i64,
    /// `container-concurrency` (0 = unlimited).
    pub container_concurrency: i64,
    /// `container-concurrency-max-limit` (1000).
    pub container_concurrency_max_limit: i64,
    /// `allow-container-concurrency-zero` (true).
    pub allow_container_concurrency_zero: bool,
    /// `enable-service-links` (false): the default of the pod's `enableServiceLinks`.
    pub enable_service_links: bool,
    /// `container-name-template` ("user-container"): the serving container's default name.
    pub user_container_name: String,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            revision_timeout_seconds: 300,
            max_revision_timeout_seconds: 600,
            revision_response_start_timeout_seconds: 300,
            revision_idle_timeout_seconds: 0,
            container_concurrency: 0,
            container_concurrency_max_limit: 1000,
            allow_container_concurrency_zero: true,
            enable_service_links: false,
            user_container_name: crate::api::DEFAULT_USER_CONTAINER_NAME.to_owned(),
        }
    }
}

impl Defaults {
    const NAME: &'static str = "config-defaults";

    /// Reads `config-defaults`.
    pub fn from_config_map(data: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut d = Defaults::default();
        let n = Self::NAME;
        parse_int(
            n,
            data,
            "revision-timeout-seconds",
            &mut d.revision_timeout_seconds,
        )?;
        parse_int(
            n,
            data,
            "max-revision-timeout-seconds",
            &mut d.max_revision_timeout_seconds,
        )?;
        d.revision_response_start_timeout_seconds = d.revision_timeout_seconds;
        parse_int(
            n,
            data,
            "revision-response-start-timeout-seconds",
            &mut d.revision_response_start_timeout_seconds,
        )?;
        parse_int(
            n,
            data,
            "revision-idle-timeout-seconds",
            &mut d.revision_idle_timeout_seconds,
        )?;
        parse_int(
            n,
            data,
            "container-concurrency",
            &mut d.container_concurrency,
        )?;
        parse_int(
            n,
            data,
            "container-concurrency-max-limit",
            &mut d.container_concurrency_max_limit,
        )?;
        parse_bool(
            n,
            data,
            "allow-container-concurrency-zero",
            &mut d.allow_container_concurrency_zero,
        )?;
        parse_bool(n, data, "enable-service-links", &mut d.enable_service_links)?;
        if let Some(name) = data.get("container-name-template") {
            d.user_container_name = name.clone();
        }
        let bad = |key: &str, value: i64, reason: &str| ConfigError {
            config_map: n,
            key: key.to_owned(),
            value: value.to_string(),
            reason: reason.to_owned(),
        };
        if d.revision_timeout_seconds <= 0 {
            return Err(bad(
                "revision-timeout-seconds",
                d.revision_timeout_seconds,
                "must be positive",
            ));
        }
        if d.max_revision_timeout_seconds < d.revision_timeout_seconds {
            return Err(bad(
                "max-revision-timeout-seconds",
                d.max_revision_timeout_seconds,
                "must be at least revision-timeout-seconds",
            ));
        }
        if d.container_concurrency < 0
            || d.container_concurrency > d.container_concurrency_max_limit
        {
            return Err(bad(
                "container-concurrency",
                d.container_concurrency,
                "must be between 0 and container-concurrency-max-limit",
            ));
        }
        Ok(d)
    }
}

/// `config-network` and `config-domain`: how routes get their hostnames, and
/// gradual rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    /// `domain-template` (`{{.Name}}.{{.Namespace}}.{{.Domain}}`).
    pub domain_template: String,
    /// `tag-template` (`{{.Tag}}-{{.Name}}`).
    pub tag_template: String,
    /// The domain of public routes (from `config-domain`; default
    /// `svc.cluster.local` when none is configured).
    pub domain: String,
    /// The domain of cluster-local routes (`svc.cluster.local`).
    pub cluster_local_domain: String,
    /// `rollout-duration`, whole seconds (0 = traffic moves at once).
    pub rollout_duration: Duration,
    /// `tag-header-based-routing` (from `config-features`): route requests
    /// with `Knative-Serving-Tag: <tag>` to that tag.
    pub tag_header_based_routing: bool,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            domain_template: "{{.Name}}.{{.Namespace}}.{{.Domain}}".to_owned(),
            tag_template: "{{.Tag}}-{{.Name}}".to_owned(),
            domain: "svc.cluster.local".to_owned(),
            cluster_local_domain: "svc.cluster.local".to_owned(),
            rollout_duration: Duration::ZERO,
            tag_header_based_routing: false,
        }
    }
}

impl Network {
    const NAME: &'static str = "config-network";

    /// Reads `config-network`.
    pub fn from_config_map(data: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut n = Network::default();
        let error = |key: &str, value: &str, reason: String| ConfigError {
            config_map: Self::NAME,
            key: key.to_owned(),
            value: value.to_owned(),
            reason,
        };
        if let Some(t) = data.get("domain-template") {
            check_template(t, &["Name", "Namespace", "Domain"])
                .map_err(|r| error("domain-template", t, r))?;
            n.domain_template = t.clone();
        }
        if let Some(t) = data.get("tag-template") {
            check_template(t, &["Name", "Tag"]).map_err(|r| error("tag-template", t, r))?;
            n.tag_template = t.clone();
        }
        if let Some(v) = data.get("rollout-duration") {
            n.rollout_duration =
                parse_rollout_duration(v).map_err(|r| error("rollout-duration", v, r))?;
        }
        Ok(n)
    }

    /// Applies `config-domain`: its first key (in sorted order) with an
    /// empty selector becomes the public domain.
    pub fn with_domain_config_map(mut self, data: &BTreeMap<String, String>) -> Self {
        if let Some((domain, _)) = data
            .iter()
            .find(|(k, v)| !k.starts_with('_') && v.trim().is_empty())
        {
            self.domain = domain.clone();
        }
        self
    }

    /// The hostname of route `name` in `namespace` (`cluster_local` routes use
    /// the cluster-local domain).
    pub fn host(&self, name: &str, namespace: &str, cluster_local: bool) -> String {
        let domain = if cluster_local {
            &self.cluster_local_domain
        } else {
            &self.domain
        };
        render(
            &self.domain_template,
            &[("Name", name), ("Namespace", namespace), ("Domain", domain)],
        )
    }

    /// The hostname of tag `tag` of route `name`.
    pub fn tag_host(&self, tag: &str, name: &str, namespace: &str, cluster_local: bool) -> String {
        let tagged = render(&self.tag_template, &[("Tag", tag), ("Name", name)]);
        self.host(&tagged, namespace, cluster_local)
    }
}

/// `config-network`'s `rollout-duration`: whole seconds, as upstream reads it.
fn parse_rollout_duration(value: &str) -> Result<Duration, String> {
    match value.trim().parse::<i64>() {
        Ok(secs) if secs >= 0 => Ok(Duration::from_secs(secs.unsigned_abs())),
        Ok(_) => Err("must not be negative".to_owned()),
        Err(_) => Err("expected a whole number of seconds".to_owned()),
    }
}

/// Checks that a Go-style template only uses `{{.Field}}` placeholders from `fields`.
fn check_template(template: &str, fields: &[&str]) -> Result<(), String> {
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err("unclosed '{{'".to_owned());
        };
        let field = after[..end].trim();
        let known = field.strip_prefix('.').is_some_and(|f| fields.contains(&f));
        if !known {
            return Err(format!(
                "unknown placeholder {{{{{field}}}}} (expected one of {})",
                fields
                    .iter()
                    .map(|f| format!("{{{{.{f}}}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        rest = &after[end + 2..];
    }
    Ok(())
}

/// Substitutes `{{.Field}}` placeholders.
fn render(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_owned();
    for (field, value) in values {
        out = out.replace(&format!("{{{{.{field}}}}}"), value);
    }
    out
}

/// All of Serving's configuration, as defaulting, validation and the
/// reconcilers read it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServingConfig {
    /// `config-defaults`.
    pub defaults: Defaults,
    /// `config-network` and `config-domain`.
    pub network: Network,
    /// `config-gc`.
    pub gc: crate::reconciler::gc::GcConfig,
    /// `config-autoscaler`.
    pub autoscaler: crate::autoscaling::config::AutoscalerConfig,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_match_upstream() {
        let d = Defaults::default();
        assert_eq!(d.revision_timeout_seconds, 300);
        assert_eq!(d.max_revision_timeout_seconds, 600);
        assert_eq!(d.container_concurrency, 0);
        assert_eq!(d.container_concurrency_max_limit, 1000);
        assert_eq!(d.user_container_name, "user-container");
    }

    #[test]
    fn config_defaults_errors_name_the_key() {
        let err = Defaults::from_config_map(&data(&[("revision-timeout-seconds", "five")]))
            .expect_err("not a number");
        assert_eq!(
            err.to_string(),
            "ConfigMap config-defaults key \"revision-timeout-seconds\": invalid value \"five\": expected an integer"
        );
        let d = Defaults::from_config_map(&data(&[("revision-timeout-seconds", "120")]))
            .expect("valid");
        assert_eq!(d.revision_response_start_timeout_seconds, 120);
    }

    #[test]
    fn hosts_follow_the_domain_and_tag_templates() {
        let n = Network::default().with_domain_config_map(&data(&[("example.com", "")]));
        assert_eq!(
            n.host("hello", "default", false),
            "hello.default.example.com"
        );
        assert_eq!(
            n.tag_host("canary", "hello", "default", false),
            "canary-hello.default.example.com"
        );
        assert_eq!(
            n.host("hello", "default", true),
            "hello.default.svc.cluster.local"
        );
        let custom = Network::from_config_map(&data(&[(
            "domain-template",
            "{{.Name}}-{{.Namespace}}.{{.Domain}}",
        )]))
        .expect("valid")
        .with_domain_config_map(&data(&[("example.com", "")]));
        assert_eq!(
            custom.host("hello", "prod", false),
            "hello-prod.example.com"
        );
    }

    #[test]
    fn bad_templates_and_rollout_durations_are_rejected() {
        let err = Network::from_config_map(&data(&[("domain-template", "{{.Nme}}.{{.Domain}}")]))
            .expect_err("typo");
        assert!(
            err.to_string().contains("unknown placeholder {{.Nme}}"),
            "{err}"
        );
        let n = Network::from_config_map(&data(&[("rollout-duration", "120")])).expect("seconds");
        assert_eq!(n.rollout_duration, Duration::from_secs(120));
        assert!(Network::from_config_map(&data(&[("rollout-duration", "2m")])).is_err());
        assert!(Network::from_config_map(&data(&[("rollout-duration", "-3")])).is_err());
    }
}
