//! Knative's duck types used by eventing resources: [`KReference`],
//! [`Destination`], [`Addressable`], [`DeliverySpec`] and
//! [`DeliveryStatus`] (`specs/EVENTING.md §5`, `§6`).

use std::time::Duration;

use knative_core::apis::FieldError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A reference to a Kubernetes object (`duckv1.KReference`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KReference {
    /// The object's kind, e.g. `Service`.
    pub kind: String,
    /// The object's namespace (defaults to the referrer's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The object's name.
    pub name: String,
    /// The object's API version, e.g. `serving.knative.dev/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// The object's API group (instead of `apiVersion`, when the
    /// `kreference-group` feature is on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The name of one of the object's addresses, when it has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// The group of an `apiVersion` (`messaging.knative.dev/v1` →
/// `messaging.knative.dev`; the core `v1` → ``).
pub(crate) fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

impl KReference {
    /// The API group it names: from its `apiVersion`
    /// (`serving.knative.dev/v1` → `serving.knative.dev`, the core `v1` →
    /// ``), else its `group`.
    pub fn api_group(&self) -> &str {
        match self.api_version.as_deref().filter(|v| !v.is_empty()) {
            Some(v) => group_of(v),
            None => self.group.as_deref().unwrap_or_default(),
        }
    }

    /// Its namespace, or `default` when it names none (references default
    /// to the referring object's namespace).
    pub fn namespace_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(default)
    }

    /// Checks the required fields.
    pub fn validate(&self) -> FieldError {
        let mut errs = FieldError::none();
        if self.kind.is_empty() {
            errs.push(FieldError::missing_field("kind"));
        }
        if self.name.is_empty() {
            errs.push(FieldError::missing_field("name"));
        }
        if self.api_version.as_deref().unwrap_or("").is_empty()
            && self.group.as_deref().unwrap_or("").is_empty()
        {
            errs.push(FieldError::missing_field("apiVersion"));
        }
        errs
    }
}

/// Where events go (`duckv1.Destination`): an addressable object, a URI,
/// or a URI relative to the object's address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// The addressable object.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<KReference>,
    /// An absolute URI, or a path relative to `ref`'s address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// PEM certificates to trust for `https` destinations.
    #[serde(default, rename = "CACerts", skip_serializing_if = "Option::is_none")]
    pub ca_certs: Option<String>,
    /// The OIDC audience of the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

impl Destination {
    /// A destination at `uri`.
    pub fn uri(uri: impl Into<String>) -> Self {
        Destination {
            uri: Some(uri.into()),
            ..Destination::default()
        }
    }

    /// Checks that it names an object or an absolute URI (or both, with a
    /// relative URI).
    pub fn validate(&self) -> FieldError {
        let uri = self.uri.as_deref().filter(|u| !u.is_empty());
        match (&self.reference, uri) {
            (None, None) => FieldError::missing_one_of(["ref", "uri"].as_slice()),
            (Some(r), None) => r.validate().via_field("ref"),
            (None, Some(u)) => {
                if is_absolute_uri(u) {
                    FieldError::none()
                } else {
                    FieldError::invalid_value(u, "uri").with_details(
                        "must be an absolute URI (with a scheme and host) when ref is not set",
                    )
                }
            }
            (Some(r), Some(u)) => {
                let mut errs = r.validate().via_field("ref");
                if is_absolute_uri(u) {
                    errs.push(
                        FieldError::invalid_value(u, "uri")
                            .with_details("must be relative (a path) when ref is set"),
                    );
                }
                errs
            }
        }
    }
}

/// Whether `uri` has a scheme and a host.
pub fn is_absolute_uri(uri: &str) -> bool {
    match uri.split_once("://") {
        Some((scheme, rest)) => {
            !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && !rest.is_empty()
                && !rest.starts_with('/')
        }
        None => false,
    }
}

/// An address an object can be reached at (`duckv1.Addressable`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Addressable {
    /// A name for the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// PEM certificates to trust for `https`.
    #[serde(default, rename = "CACerts", skip_serializing_if = "Option::is_none")]
    pub ca_certs: Option<String>,
    /// The OIDC audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

/// How long to wait between retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackoffPolicy {
    /// `delay × n`.
    Linear,
    /// `delay × 2ⁿ`.
    Exponential,
}

/// The content mode for deliveries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryFormat {
    /// Structured mode (`application/cloudevents+json`).
    Json,
    /// Binary mode (`ce-` headers).
    Binary,
}

/// How events are delivered (`duckv1.DeliverySpec`, `specs/EVENTING.md §5`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySpec {
    /// Where events that could not be delivered go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_sink: Option<Destination>,
    /// Retries after the first attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<i32>,
    /// `linear` or `exponential`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_policy: Option<BackoffPolicy>,
    /// The backoff's base delay, an ISO-8601 duration such as `PT0.5S`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_delay: Option<String>,
    /// The timeout of each attempt, an ISO-8601 duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// The longest `Retry-After` honoured, an ISO-8601 duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_max: Option<String>,
    /// The content mode of deliveries (default: binary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DeliveryFormat>,
}

impl DeliverySpec {
    /// Checks every field as upstream's webhook does.
    pub fn validate(&self) -> FieldError {
        let mut errs = FieldError::none();
        if let Some(dls) = &self.dead_letter_sink {
            errs.push(dls.validate().via_field("deadLetterSink"));
        }
        if let Some(retry) = self.retry
            && retry < 0
        {
            errs.push(
                FieldError::invalid_value(retry, "retry").with_details("must not be negative"),
            );
        }
        if let Some(delay) = &self.backoff_delay
            && let Err(e) = knative_core::duration::parse_iso8601(delay)
        {
            errs.push(FieldError::invalid_value(delay, "backoffDelay").with_details(e.reason()));
        }
        if let Some(timeout) = &self.timeout {
            match knative_core::duration::parse_iso8601(timeout) {
                Err(e) => errs
                    .push(FieldError::invalid_value(timeout, "timeout").with_details(e.reason())),
                Ok(d) if d.is_zero() => errs.push(
                    FieldError::invalid_value(timeout, "timeout").with_details("must be positive"),
                ),
                Ok(_) => {}
            }
        }
        if let Some(max) = &self.retry_after_max
            && let Err(e) = knative_core::duration::parse_iso8601(max)
        {
            errs.push(FieldError::invalid_value(max, "retryAfterMax").with_details(e.reason()));
        }
        errs
    }

    /// The parsed settings (invalid durations read as unset: validation
    /// keeps them out).
    pub fn policy(&self) -> RetryPolicy {
        let parse = |v: &Option<String>| {
            v.as_deref()
                .and_then(|s| knative_core::duration::parse_iso8601(s).ok())
        };
        RetryPolicy {
            retry: u32::try_from(self.retry.unwrap_or(0)).unwrap_or(0),
            backoff: match (self.backoff_policy, parse(&self.backoff_delay)) {
                (Some(policy), Some(delay)) => Some((policy, delay)),
                _ => None,
            },
            timeout: parse(&self.timeout).filter(|d| !d.is_zero()),
            retry_after_max: parse(&self.retry_after_max),
        }
    }
}

/// A [`DeliverySpec`]'s retry settings, parsed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retry: u32,
    /// The backoff policy and base delay, when both are set.
    pub backoff: Option<(BackoffPolicy, Duration)>,
    /// The per-attempt timeout.
    pub timeout: Option<Duration>,
    /// The cap on `Retry-After` (`None`: the header is ignored).
    pub retry_after_max: Option<Duration>,
}

/// Resolved delivery settings in a status (`duckv1.DeliveryStatus`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryStatus {
    /// The dead-letter sink's resolved URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_sink_uri: Option<String>,
    /// Its CA certificates.
    #[serde(
        default,
        rename = "deadLetterSinkCACerts",
        skip_serializing_if = "Option::is_none"
    )]
    pub dead_letter_sink_ca_certs: Option<String>,
    /// Its OIDC audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_sink_audience: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_needs_a_ref_or_an_absolute_uri() {
        let neither = Destination::default().validate().to_string();
        assert!(
            neither.contains("expected exactly one, got neither"),
            "{neither}"
        );
        assert!(
            neither.contains("ref") && neither.contains("uri"),
            "{neither}"
        );
        assert!(
            Destination::uri("http://sink.default.svc")
                .validate()
                .is_empty()
        );
        let relative = Destination::uri("/path").validate().to_string();
        assert!(
            relative.starts_with("uri: invalid value: /path"),
            "{relative}"
        );
        let with_ref = Destination {
            reference: Some(KReference {
                kind: "Service".into(),
                name: "sink".into(),
                api_version: Some("serving.knative.dev/v1".into()),
                ..KReference::default()
            }),
            uri: Some("/extra/path".into()),
            ..Destination::default()
        };
        assert!(with_ref.validate().is_empty());
    }

    #[test]
    fn delivery_durations_are_iso_8601_and_the_timeout_positive() {
        let spec: DeliverySpec = serde_json::from_value(serde_json::json!({
            "retry": -1, "backoffDelay": "5s", "timeout": "PT0S", "backoffPolicy": "linear"
        }))
        .expect("parses");
        let text = spec.validate().to_string();
        assert!(text.contains("retry"), "{text}");
        assert!(text.contains("backoffDelay"), "{text}");
        assert!(text.contains("timeout"), "{text}");
        let ok: DeliverySpec = serde_json::from_value(serde_json::json!({
            "retry": 3, "backoffDelay": "PT0.5S", "backoffPolicy": "exponential", "timeout": "PT2S"
        }))
        .expect("parses");
        assert!(ok.validate().is_empty());
        let p = ok.policy();
        assert_eq!(p.retry, 3);
        assert_eq!(
            p.backoff,
            Some((BackoffPolicy::Exponential, Duration::from_millis(500)))
        );
        assert_eq!(p.timeout, Some(Duration::from_secs(2)));
    }
}
