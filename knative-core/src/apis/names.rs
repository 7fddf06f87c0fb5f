//! Kubernetes name rules: RFC 1123 labels and subdomains, qualified names
//! (label and annotation keys), label values, and object metadata.
//!
//! Every check returns a [`FieldError`] whose path is the `path` given, so it
//! composes with the caller's own validation.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use md5::Digest;

use super::FieldError;

/// Longest RFC 1123 label (a Service or Route name must fit in one DNS label).
pub const DNS1123_LABEL_MAX_LEN: usize = 63;
/// Longest RFC 1123 subdomain (most object names).
pub const DNS1123_SUBDOMAIN_MAX_LEN: usize = 253;
/// Longest name part of a qualified name, and longest label value.
pub const QUALIFIED_NAME_MAX_LEN: usize = 63;
/// Largest total size of an object's annotations (keys plus values), as the API server enforces.
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn label_shape_ok(s: &str) -> bool {
    let starts_ends_alnum = s.chars().next().is_some_and(is_lower_alnum)
        && s.chars().last().is_some_and(is_lower_alnum);
    starts_ends_alnum && s.chars().all(|c| is_lower_alnum(c) || c == '-')
}

/// Checks an RFC 1123 label: at most 63 lower-case alphanumerics or `-`,
/// starting and ending with an alphanumeric.
pub fn validate_dns1123_label(value: &str, path: &str) -> FieldError {
    if value.len() > DNS1123_LABEL_MAX_LEN {
        return FieldError::invalid_value(value, path).with_details(format!(
            "must be no more than {DNS1123_LABEL_MAX_LEN} characters"
        ));
    }
    if !label_shape_ok(value) {
        return FieldError::invalid_value(value, path).with_details(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
             and must start and end with an alphanumeric character (e.g. 'my-name')",
        );
    }
    FieldError::none()
}

/// Checks an RFC 1035 label: like an RFC 1123 label but starting with a
/// letter (tags, Service and Route names, which become hostnames).
pub fn validate_dns1035_label(value: &str, path: &str) -> FieldError {
    if value.len() > DNS1123_LABEL_MAX_LEN {
        return FieldError::invalid_value(value, path).with_details(format!(
            "must be no more than {DNS1123_LABEL_MAX_LEN} characters"
        ));
    }
    if !label_shape_ok(value) || !value.starts_with(|c: char| c.is_ascii_lowercase()) {
        return FieldError::invalid_value(value, path).with_details(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', \
             start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name')",
        );
    }
    FieldError::none()
}

/// The name of a child object: `parent + suffix`, or, when that is longer
/// than 63 characters, a prefix of `parent`, the 32-hex MD5 of `parent` and
/// `suffix` (upstream's `kmeta.ChildName`).
pub fn child_name(parent: &str, suffix: &str) -> String {
    const LONGEST: usize = DNS1123_LABEL_MAX_LEN;
    const HEAD: usize = LONGEST - 32;
    if parent.len() + suffix.len() <= LONGEST {
        return format!("{parent}{suffix}");
    }
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    if HEAD <= suffix.len() {
        // The suffix alone leaves no room: hash everything.
        let hash = hex(&md5::Md5::digest(format!("{parent}{suffix}").as_bytes()));
        let mut name: String = parent.chars().take(HEAD).collect();
        name.push_str(&hash);
        let room = LONGEST.saturating_sub(name.len());
        name.extend(suffix.chars().take(room));
        return name
            .trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
            .to_owned();
    }
    let keep = HEAD - suffix.len();
    let head: String = parent.chars().take(keep).collect();
    format!(
        "{head}{}{suffix}",
        hex(&md5::Md5::digest(parent.as_bytes()))
    )
}

/// Checks an RFC 1123 subdomain: at most 253 characters, dot-separated RFC 1123 labels.
pub fn validate_dns1123_subdomain(value: &str, path: &str) -> FieldError {
    if value.len() > DNS1123_SUBDOMAIN_MAX_LEN {
        return FieldError::invalid_value(value, path).with_details(format!(
            "must be no more than {DNS1123_SUBDOMAIN_MAX_LEN} characters"
        ));
    }
    if !value.split('.').all(label_shape_ok) {
        return FieldError::invalid_value(value, path).with_details(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com')",
        );
    }
    FieldError::none()
}

fn name_part_ok(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    s.len() <= QUALIFIED_NAME_MAX_LEN
        && s.chars().next().is_some_and(alnum)
        && s.chars().last().is_some_and(alnum)
        && s.chars()
            .all(|c| alnum(c) || c == '-' || c == '_' || c == '.')
}

/// Checks a qualified name (a label or annotation key, a finalizer): an
/// optional DNS subdomain prefix and `/`, then a name of at most 63
/// alphanumerics, `-`, `_` or `.`, starting and ending with an alphanumeric.
pub fn validate_qualified_name(value: &str, path: &str) -> FieldError {
    let (prefix, name) = match value.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, value),
    };
    let mut errs = FieldError::none();
    if let Some(prefix) = prefix
        && (prefix.is_empty() || !validate_dns1123_subdomain(prefix, path).is_empty())
    {
        errs.push(
            FieldError::invalid_key_name(value, path)
                .with_details("the prefix before '/' must be a DNS subdomain"),
        );
    }
    if !name_part_ok(name) {
        errs.push(FieldError::invalid_key_name(value, path).with_details(
            "a qualified name must be at most 63 characters of alphanumerics, '-', '_' or '.', \
             starting and ending with an alphanumeric (e.g. 'MyName', 'example.com/my-name')",
        ));
    }
    errs
}

/// Checks a label value: empty, or at most 63 alphanumerics, `-`, `_` or
/// `.`, starting and ending with an alphanumeric.
pub fn validate_label_value(value: &str, path: &str) -> FieldError {
    if value.is_empty() || name_part_ok(value) {
        FieldError::none()
    } else {
        FieldError::invalid_value(value, path).with_details(
            "a label value must be empty or at most 63 characters of alphanumerics, '-', '_' or '.', \
             starting and ending with an alphanumeric",
        )
    }
}

/// Checks the keys and values of a label map at `path`.
pub fn validate_labels(labels: &BTreeMap<String, String>, path: &str) -> FieldError {
    labels
        .iter()
        .map(|(k, v)| {
            validate_qualified_name(k, "")
                .also(validate_label_value(v, ""))
                .via_key(k)
                .via_field(path)
        })
        .collect()
}

/// Checks the keys and total size of an annotation map at `path`.
pub fn validate_annotations(annotations: &BTreeMap<String, String>, path: &str) -> FieldError {
    let mut errs: FieldError = annotations
        .keys()
        .map(|k| validate_qualified_name(k, "").via_key(k).via_field(path))
        .collect();
    let total: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        errs.push(FieldError::new(
            format!(
                "annotations are {total} bytes, more than the limit of {TOTAL_ANNOTATION_SIZE_LIMIT}"
            ),
            path,
        ));
    }
    errs
}

/// Checks an object's metadata as the API server does on create: a name or
/// generateName, names as DNS subdomains, label and annotation keys and
/// values, finalizer names. Paths are relative to `metadata`.
pub fn validate_object_meta(meta: &ObjectMeta) -> FieldError {
    let mut errs = FieldError::none();
    match (&meta.name, &meta.generate_name) {
        (Some(name), _) if !name.is_empty() => {
            errs.push(validate_dns1123_subdomain(name, "name"));
        }
        (_, Some(prefix)) if !prefix.is_empty() => {
            // The prefix gets five random characters appended; check it as
            // the start of a subdomain.
            let candidate = format!("{prefix}a");
            if !validate_dns1123_subdomain(&candidate, "generateName").is_empty() {
                errs.push(
                    FieldError::invalid_value(prefix, "generateName").with_details(
                        "generateName must be the start of a lowercase RFC 1123 subdomain",
                    ),
                );
            }
        }
        _ => errs.push(FieldError::missing_one_of(["name", "generateName"])),
    }
    if let Some(ns) = meta.namespace.as_deref().filter(|ns| !ns.is_empty()) {
        errs.push(validate_dns1123_label(ns, "namespace"));
    }
    if let Some(labels) = &meta.labels {
        errs.push(validate_labels(labels, "labels"));
    }
    if let Some(annotations) = &meta.annotations {
        errs.push(validate_annotations(annotations, "annotations"));
    }
    for (i, f) in meta.finalizers.iter().flatten().enumerate() {
        errs.push(validate_qualified_name(f, "").via_field_index("finalizers", i));
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_accept_lowercase_and_dashes_only() {
        assert!(validate_dns1123_label("hello-world-1", "name").is_empty());
        for bad in ["", "Hello", "-a", "a-", "a.b", "a_b", &"a".repeat(64)] {
            let err = validate_dns1123_label(bad, "metadata.name");
            assert!(!err.is_empty(), "{bad:?} should be rejected");
            assert!(err.to_string().starts_with("metadata.name: invalid value"));
        }
    }

    #[test]
    fn dns_1035_labels_start_with_a_letter() {
        assert!(validate_dns1035_label("canary", "tag").is_empty());
        assert!(!validate_dns1035_label("1canary", "tag").is_empty());
        assert!(!validate_dns1035_label("Canary", "tag").is_empty());
    }

    #[test]
    fn child_names_fit_in_63_characters() {
        assert_eq!(child_name("hello", "-00001"), "hello-00001");
        let long = "a".repeat(60);
        let name = child_name(&long, "-00001");
        assert_eq!(name.len(), 63);
        assert!(name.starts_with(&"a".repeat(25)));
        assert!(name.ends_with("-00001"));
        // 25 kept characters, then the MD5 of the whole parent.
        assert_eq!(&name[25..57], "cc7ed669cf88f201c3297c6a91e1d18d");
        assert_ne!(
            child_name(&"b".repeat(60), "-00001"),
            name,
            "different parents differ"
        );
        assert!(child_name("p", &"s".repeat(40)).len() <= 63);
    }

    #[test]
    fn dns_subdomains_accept_dotted_labels() {
        assert!(validate_dns1123_subdomain("hello.default.svc", "n").is_empty());
        assert!(!validate_dns1123_subdomain("hello..svc", "n").is_empty());
        assert!(!validate_dns1123_subdomain(&"a".repeat(254), "n").is_empty());
    }

    #[test]
    fn qualified_names_allow_a_subdomain_prefix() {
        assert!(validate_qualified_name("serving.knative.dev/service", "k").is_empty());
        assert!(validate_qualified_name("app.kubernetes.io/Name_1.x", "k").is_empty());
        assert!(!validate_qualified_name("/name", "k").is_empty());
        assert!(!validate_qualified_name("Bad_Prefix/name", "k").is_empty());
        assert!(!validate_qualified_name("name-", "k").is_empty());
    }

    #[test]
    fn metadata_errors_name_the_offending_key() {
        let meta = ObjectMeta {
            name: Some("Hello".into()),
            labels: Some([("ok".to_owned(), "bad value!".to_owned())].into()),
            annotations: Some([("bad key".to_owned(), "v".to_owned())].into()),
            finalizers: Some(vec!["example.com/ok".into(), "not ok".into()]),
            ..ObjectMeta::default()
        };
        let text = validate_object_meta(&meta)
            .via_field("metadata")
            .to_string();
        assert!(
            text.contains("metadata.name: invalid value: Hello"),
            "{text}"
        );
        assert!(
            text.contains("metadata.labels[ok]: invalid value: bad value!"),
            "{text}"
        );
        assert!(
            text.contains("metadata.annotations[bad key]: invalid key name"),
            "{text}"
        );
        assert!(
            text.contains("metadata.finalizers[1]: invalid key name"),
            "{text}"
        );
    }

    #[test]
    fn metadata_needs_a_name_or_generate_name() {
        let err = validate_object_meta(&ObjectMeta::default());
        assert_eq!(
            err.to_string(),
            "generateName, name: expected exactly one, got neither"
        );
        let meta = ObjectMeta {
            generate_name: Some("hello-".into()),
            ..ObjectMeta::default()
        };
        assert!(validate_object_meta(&meta).is_empty());
    }
}
