//! CustomResourceDefinitions for every knative-rs API type (`specs/CRDS.md`,
//! issue 9 §1), and a checker for the rules the kube-apiserver applies to
//! them.
//!
//! [`all`] generates the CRDs from the types' `#[derive(CustomResource)]`
//! (names, short names, categories, printer columns and the status
//! subresource come from the derive attributes in the domain crates), adds
//! the older versions upstream still serves ([`with_served_versions`]:
//! PingSource `v1beta2`, Task and Pipeline `v1beta1`, served but not stored,
//! with the `v1` schema) and post-processes the schemas so that a
//! kube-apiserver ≥ 1.33 accepts them without warnings:
//!
//! - `Option<T>` fields that schemars 1 writes as `anyOf: [T, {enum: [null],
//!   nullable: true}]` (or `oneOf`) become `T` with `nullable: true`, the
//!   form kube-rs' own `OptionalEnum` transform produces;
//! - integer and number formats outside OpenAPI 3.0's set (`uint16`, `uint`,
//!   `int8`, ...) become `int32`/`int64` with the bounds the Rust type has,
//!   and unknown string formats are dropped (apiserver 1.34+ warns about
//!   them);
//! - `additionalProperties: false` next to `properties` is dropped (upstream
//!   Kubernetes forbids the combination and ignores unknown fields anyway);
//! - fields of any JSON value (`serde_json::Value`, schema `{}`) get
//!   `x-kubernetes-preserve-unknown-fields: true`;
//! - `default`s are dropped: upstream's CRDs have none (its webhook
//!   defaults), so objects read back as users wrote them, and serde's
//!   defaults still apply when the reconcilers read them.
//!
//! [`structural_errors`] checks a CRD against the structural-schema rules of
//! `k8s.io/apiextensions-apiserver` (`pkg/apiserver/schema/validation.go`,
//! `completeness.go`) and the CRD OpenAPI validation
//! (`pkg/apis/apiextensions/validation`): every node has a `type` unless it
//! is `x-kubernetes-int-or-string` or `x-kubernetes-preserve-unknown-fields`;
//! `allOf`/`anyOf`/`oneOf`/`not` only hold value validations (no `type`,
//! `description`, `default`, `nullable`, `additionalProperties`,
//! `x-kubernetes-*`) for fields also specified outside them, except the two
//! int-or-string patterns; no `$ref`, `definitions`, `patternProperties`,
//! `uniqueItems: true`, `items` arrays; `metadata` only restricts `name` and
//! `generateName`; `additionalProperties` and `properties` are exclusive and
//! not used at the root.

use std::collections::BTreeSet;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion,
};
use knative_core::apis::FieldError;
use kube::CustomResourceExt;
use serde_json::{Map, Value};

use knative_build::api as build;
use knative_eventing::api as eventing;
use knative_serving::api as serving;

/// Every CRD of knative-rs: Serving (`serving.knative.dev`), Eventing
/// (`eventing`, `messaging`, `flows` and `sources.knative.dev`) and Build
/// (`tekton.dev`), with structural schemas (see the [module docs](self)).
pub fn all() -> Vec<CustomResourceDefinition> {
    [
        serving::Service::crd(),
        serving::Configuration::crd(),
        serving::Revision::crd(),
        serving::Route::crd(),
        eventing::Broker::crd(),
        eventing::Trigger::crd(),
        eventing::Channel::crd(),
        eventing::InMemoryChannel::crd(),
        eventing::Subscription::crd(),
        eventing::Sequence::crd(),
        eventing::Parallel::crd(),
        eventing::PingSource::crd(),
        eventing::ApiServerSource::crd(),
        eventing::ContainerSource::crd(),
        eventing::SinkBinding::crd(),
        build::Task::crd(),
        build::TaskRun::crd(),
        build::Pipeline::crd(),
        build::PipelineRun::crd(),
    ]
    .into_iter()
    .map(make_structural)
    .map(with_served_versions)
    .collect()
}

/// The older versions upstream still serves next to `v1`, by CRD name
/// (`specs/CRDS.md`, "served").
const ALSO_SERVED: &[(&str, &[&str])] = &[
    ("pingsources.sources.knative.dev", &["v1beta2"]),
    ("tasks.tekton.dev", &["v1beta1"]),
    ("pipelines.tekton.dev", &["v1beta1"]),
];

/// The versions besides the storage version that `crd_name` is served at
/// (none for most CRDs).
pub fn also_served(crd_name: &str) -> &'static [&'static str] {
    ALSO_SERVED
        .iter()
        .find(|(name, _)| *name == crd_name)
        .map_or(&[], |(_, versions)| versions)
}

/// Adds the [`also_served`] versions of `crd` after its storage version:
/// served, not stored, with the same schema, printer columns and
/// subresources, and no conversion webhook (`strategy: None`): objects
/// written at either version read back at both. Upstream converts with a
/// webhook; PingSource `v1beta2` has `v1`'s shape, so nothing is lost
/// there, but Tekton `v1beta1` fields that `v1` renamed or dropped
/// (`steps[].resources`, `spec.resources`, `taskRef.bundle`, …) are pruned,
/// so those versions are marked deprecated with a warning that says so.
/// A version already present is left as it is.
pub fn with_served_versions(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let name = crd.metadata.name.clone().unwrap_or_default();
    let Some(storage) = crd.spec.versions.iter().find(|v| v.storage).cloned() else {
        return crd;
    };
    for version in also_served(&name) {
        if crd.spec.versions.iter().any(|v| v.name == *version) {
            continue;
        }
        let tekton = name.ends_with(".tekton.dev");
        crd.spec.versions.push(CustomResourceDefinitionVersion {
            name: (*version).to_owned(),
            served: true,
            storage: false,
            deprecated: tekton.then_some(true),
            deprecation_warning: tekton.then(|| {
                format!(
                    "tekton.dev/{version} is served with the tekton.dev/v1 schema (no conversion \
                     webhook): fields v1 renamed or dropped, such as steps[].resources, are pruned; \
                     write tekton.dev/v1"
                )
            }),
            ..storage.clone()
        });
    }
    crd
}

/// `crds` as one multi-document YAML stream (`---` between documents), as
/// `kubectl apply -f` takes it.
pub fn to_yaml(crds: &[CustomResourceDefinition]) -> String {
    crds.iter()
        .map(|crd| {
            // A CRD is plain data with string keys: serializing it cannot
            // fail, but say so in the output rather than panic if it does.
            serde_yaml::to_string(crd).unwrap_or_else(|e| {
                let name = crd.metadata.name.as_deref().unwrap_or("<unnamed>");
                format!("# CustomResourceDefinition {name} could not be serialized: {e}\n")
            })
        })
        .map(|doc| format!("---\n{doc}"))
        .collect()
}

/// Rewrites the schemas of `crd` into the structural form the apiserver
/// accepts (see the [module docs](self)). Any CRD can go through it; it is
/// idempotent.
pub fn make_structural(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        let Ok(mut value) = serde_json::to_value(&*schema) else {
            continue;
        };
        rewrite(&mut value, true);
        relax_required(&mut value);
        if let Ok(rewritten) = serde_json::from_value(value) {
            *schema = rewritten;
        }
    }
    crd
}

/// Takes out of `required` what upstream's webhooks default, so that
/// upstream's manifests are accepted without them (there is no defaulting
/// webhook here; the reconcilers default in memory):
///
/// - `spec` at the root (a Broker or an InMemoryChannel is often written
///   without one);
/// - a container's `name` (Knative names the serving container
///   `user-container`; ContainerSource names containers too);
/// - a probe handler's `port` (Knative probes the container port).
fn relax_required(root: &mut Value) {
    remove_required(root, "spec");
    relax_below(root, Place::Other);
}

/// Where a schema node sits, for [`relax_required`].
#[derive(Clone, Copy, PartialEq)]
enum Place {
    Other,
    /// The item schema of a `containers` / `initContainers` list.
    Container,
    /// Inside a `*Probe` of a container.
    Probe,
}

fn relax_below(node: &mut Value, place: Place) {
    match place {
        Place::Container => remove_required(node, "name"),
        Place::Probe => remove_required(node, "port"),
        Place::Other => {}
    }
    let Value::Object(map) = node else { return };
    if let Some(Value::Object(props)) = map.get_mut("properties") {
        for (key, child) in props.iter_mut() {
            let inner = match (place, key.as_str()) {
                (_, "containers" | "initContainers") => {
                    if let Some(items) = child.get_mut("items") {
                        relax_below(items, Place::Container);
                    }
                    continue;
                }
                (Place::Container, k) if k.ends_with("Probe") => Place::Probe,
                (Place::Probe, _) => Place::Probe,
                _ => Place::Other,
            };
            relax_below(child, inner);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = map.get_mut(key) {
            relax_below(
                child,
                if place == Place::Probe {
                    place
                } else {
                    Place::Other
                },
            );
        }
    }
}

/// Removes `field` from the node's `required` list (and the list when it
/// ends up empty).
fn remove_required(node: &mut Value, field: &str) {
    let Value::Object(map) = node else { return };
    if let Some(Value::Array(required)) = map.get_mut("required") {
        required.retain(|r| r != field);
        if required.is_empty() {
            map.remove("required");
        }
    }
}

/// The keys of a schema node that hold value validations only.
const JUNCTORS: [&str; 3] = ["allOf", "anyOf", "oneOf"];

/// Rewrites one schema node and everything below it; `structural` is false
/// under a logic junctor (where only value validations may appear).
fn rewrite(node: &mut Value, structural: bool) {
    let Value::Object(map) = node else { return };
    // Children first, so that hoisted nodes are already rewritten.
    for key in ["items", "additionalProperties"] {
        if let Some(child) = map.get_mut(key) {
            rewrite(child, structural);
        }
    }
    if let Some(child) = map.get_mut("not") {
        rewrite(child, false);
    }
    if let Some(Value::Object(props)) = map.get_mut("properties") {
        for child in props.values_mut() {
            rewrite(child, structural);
        }
    }
    for key in JUNCTORS {
        if let Some(Value::Array(branches)) = map.get_mut(key) {
            for child in branches.iter_mut() {
                rewrite(child, false);
            }
        }
    }
    if structural {
        hoist_optional(map);
        // Upstream's CRDs carry no defaults (the webhook defaults); serde's
        // defaults apply when the reconcilers read an object anyway.
        map.remove("default");
        preserve_any(map);
    }
    normalize_format(map);
    if map.contains_key("properties")
        && map.get("additionalProperties") == Some(&Value::Bool(false))
    {
        map.remove("additionalProperties");
    }
}

/// A schema that accepts any value (`serde_json::Value` fields: `{}` with at
/// most a description) becomes `x-kubernetes-preserve-unknown-fields: true`,
/// the structural way to say "any JSON".
fn preserve_any(map: &mut Map<String, Value>) {
    const SHAPE: [&str; 12] = [
        "type",
        "properties",
        "items",
        "additionalProperties",
        "allOf",
        "anyOf",
        "oneOf",
        "not",
        "enum",
        "$ref",
        "x-kubernetes-int-or-string",
        "x-kubernetes-preserve-unknown-fields",
    ];
    if !SHAPE.iter().any(|k| map.contains_key(*k)) {
        map.insert(
            "x-kubernetes-preserve-unknown-fields".into(),
            Value::Bool(true),
        );
    }
}

/// Whether `v` is the "null" branch schemars 1 adds for `Option<T>`.
fn is_null_branch(v: &Value) -> bool {
    let Some(o) = v.as_object() else { return false };
    let null_enum = o.get("enum") == Some(&Value::Array(vec![Value::Null]));
    let null_type = o.get("type") == Some(&Value::String("null".into()));
    (null_enum || null_type)
        && o.keys()
            .all(|k| matches!(k.as_str(), "enum" | "nullable" | "type"))
}

/// `anyOf`/`oneOf: [T, null]` → `T` + `nullable: true`.
fn hoist_optional(map: &mut Map<String, Value>) {
    for key in ["anyOf", "oneOf"] {
        let Some(Value::Array(branches)) = map.get(key) else {
            continue;
        };
        if branches.len() != 2 {
            continue;
        }
        let value = match (is_null_branch(&branches[0]), is_null_branch(&branches[1])) {
            (false, true) => &branches[0],
            (true, false) => &branches[1],
            _ => continue,
        };
        let Some(inner) = value.as_object().cloned() else {
            continue;
        };
        // Only when the outer node adds nothing that would clash.
        if inner
            .keys()
            .any(|k| k != "description" && map.contains_key(k))
        {
            continue;
        }
        map.remove(key);
        for (k, v) in inner {
            // The field's own description wins over the type's.
            map.entry(k).or_insert(v);
        }
        map.insert("nullable".into(), Value::Bool(true));
    }
    if let Some(Value::Array(values)) = map.get_mut("enum")
        && values.contains(&Value::Null)
    {
        values.retain(|v| !v.is_null());
        map.insert("nullable".into(), Value::Bool(true));
    }
}

/// The formats the apiserver recognizes for `type: string`.
const STRING_FORMATS: [&str; 23] = [
    "bsonobjectid",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "isbn",
    "isbn10",
    "isbn13",
    "creditcard",
    "ssn",
    "hexcolor",
    "rgbcolor",
    "byte",
    "password",
    "date",
    "date-time",
];

/// Formats also recognized for strings, spelled differently.
const MORE_STRING_FORMATS: [&str; 2] = ["datetime", "duration"];

/// Recognized formats for `integer` and `number`.
const INTEGER_FORMATS: [&str; 2] = ["int32", "int64"];
const NUMBER_FORMATS: [&str; 2] = ["float", "double"];

fn format_recognized(ty: Option<&str>, format: &str) -> bool {
    match ty {
        Some("integer") => INTEGER_FORMATS.contains(&format),
        Some("number") => NUMBER_FORMATS.contains(&format),
        Some("string") | None => {
            STRING_FORMATS.contains(&format) || MORE_STRING_FORMATS.contains(&format)
        }
        _ => false,
    }
}

/// Maps schemars' Rust-specific formats to OpenAPI's, keeping the bounds.
fn normalize_format(map: &mut Map<String, Value>) {
    let Some(format) = map.get("format").and_then(Value::as_str).map(str::to_owned) else {
        return;
    };
    let ty = map.get("type").and_then(Value::as_str).map(str::to_owned);
    if format_recognized(ty.as_deref(), &format) {
        return;
    }
    let bounds: Option<(&str, i64, Option<i64>)> = match format.as_str() {
        "int8" => Some(("int32", i64::from(i8::MIN), Some(i64::from(i8::MAX)))),
        "int16" => Some(("int32", i64::from(i16::MIN), Some(i64::from(i16::MAX)))),
        "uint8" => Some(("int32", 0, Some(i64::from(u8::MAX)))),
        "uint16" => Some(("int32", 0, Some(i64::from(u16::MAX)))),
        "uint32" => Some(("int64", 0, Some(i64::from(u32::MAX)))),
        "uint64" | "uint" | "uint128" => Some(("int64", 0, None)),
        "int" | "int128" => Some(("int64", i64::MIN, None)),
        _ => None,
    };
    match (ty.as_deref(), bounds) {
        (Some("integer"), Some((openapi, min, max))) => {
            map.insert("format".into(), Value::String(openapi.into()));
            if min != i64::MIN {
                tighten(map, "minimum", min, |old, new| old.max(new));
            }
            if let Some(max) = max {
                tighten(map, "maximum", max, |old, new| old.min(new));
            }
        }
        (Some("number"), _) if format == "float32" => {
            map.insert("format".into(), Value::String("float".into()));
        }
        (Some("number"), _) if format == "float64" => {
            map.insert("format".into(), Value::String("double".into()));
        }
        _ => {
            map.remove("format");
        }
    }
}

/// Sets `key` to `bound`, or to `pick(existing, bound)` when one is set.
fn tighten(map: &mut Map<String, Value>, key: &str, bound: i64, pick: fn(f64, f64) -> f64) {
    let value = match map.get(key).and_then(Value::as_f64) {
        Some(old) => serde_json::Number::from_f64(pick(old, bound as f64)).map(Value::Number),
        None => Some(Value::from(bound)),
    };
    if let Some(value) = value {
        map.insert(key.into(), value);
    }
}

/// Every way `crd` breaks the kube-apiserver's rules for CRD schemas and
/// subresources (see the [module docs](self)), with the path of each
/// problem in the CRD (`spec.versions[0].schema.openAPIV3Schema.properties[spec].type`).
/// Empty when the apiserver would accept it.
pub fn structural_errors(crd: &CustomResourceDefinition) -> FieldError {
    let mut errs = FieldError::none();
    for (i, version) in crd.spec.versions.iter().enumerate() {
        let at = format!("spec.versions[{i}]");
        let schema = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref());
        let Some(schema) = schema else {
            errs.push(FieldError::missing_field(format!(
                "{at}.schema.openAPIV3Schema"
            )));
            continue;
        };
        match serde_json::to_value(schema) {
            Ok(value) => {
                let path = format!("{at}.schema.openAPIV3Schema");
                errs.push(check_node(&value, Level::Root, &path));
            }
            Err(e) => errs.push(FieldError::new(
                format!("schema does not serialize: {e}"),
                at.as_str(),
            )),
        }
    }
    errs
}

/// Where a structural node sits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Root,
    Item,
    Field,
}

/// Keys the apiserver's CRD validation rejects anywhere.
const UNSUPPORTED: [&str; 8] = [
    "$ref",
    "$schema",
    "$defs",
    "id",
    "definitions",
    "dependencies",
    "patternProperties",
    "additionalItems",
];

/// The `type`s a CRD schema may use.
const TYPES: [&str; 6] = ["object", "array", "string", "integer", "number", "boolean"];

/// Extensions not allowed under a logic junctor.
const FORBIDDEN_NESTED: [&str; 11] = [
    "type",
    "additionalProperties",
    "default",
    "title",
    "description",
    "nullable",
    "externalDocs",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string",
    "x-kubernetes-validations",
];

const FORBIDDEN_NESTED_LISTS: [&str; 3] = [
    "x-kubernetes-list-map-keys",
    "x-kubernetes-list-type",
    "x-kubernetes-map-type",
];

fn is_true(map: &Map<String, Value>, key: &str) -> bool {
    map.get(key) == Some(&Value::Bool(true))
}

/// Checks a node outside any junctor (a "structural" node).
fn check_node(node: &Value, level: Level, path: &str) -> FieldError {
    let mut errs = FieldError::none();
    let Some(map) = node.as_object() else {
        return FieldError::new("must be a schema object", path);
    };
    errs.push(check_common(map, path));

    let ty = map.get("type").and_then(Value::as_str);
    let int_or_string = is_true(map, "x-kubernetes-int-or-string");
    let preserve = is_true(map, "x-kubernetes-preserve-unknown-fields");
    let embedded = is_true(map, "x-kubernetes-embedded-resource");
    match map.get("type") {
        None | Some(Value::String(_)) => {}
        Some(_) => errs.push(FieldError::new("must be a string", format!("{path}.type"))),
    }
    if let Some(ty) = ty {
        if !TYPES.contains(&ty) {
            errs.push(FieldError::new(
                format!("must be one of {TYPES:?}, not {ty:?}"),
                format!("{path}.type"),
            ));
        }
        if int_or_string {
            errs.push(FieldError::new(
                "must be empty if x-kubernetes-int-or-string is true",
                format!("{path}.type"),
            ));
        }
    } else if embedded {
        errs.push(FieldError::new(
            "must be object if x-kubernetes-embedded-resource is true",
            format!("{path}.type"),
        ));
    } else if !int_or_string && !preserve {
        let message = match level {
            Level::Root => "must not be empty at the root",
            Level::Item => "must not be empty for specified array items",
            Level::Field => "must not be empty for specified object fields",
        };
        errs.push(FieldError::new(message, format!("{path}.type")));
    }
    if level == Level::Root && ty.is_some_and(|t| t != "object") {
        errs.push(FieldError::new(
            "must be object at the root",
            format!("{path}.type"),
        ));
    }
    if embedded && ty.is_some_and(|t| t != "object") {
        errs.push(FieldError::new(
            "must be object if x-kubernetes-embedded-resource is true",
            format!("{path}.type"),
        ));
    }
    if embedded
        && !preserve
        && map
            .get("properties")
            .is_none_or(|p| p.as_object().is_none_or(Map::is_empty))
    {
        errs.push(FieldError::new(
            "must not be empty if x-kubernetes-embedded-resource is true without x-kubernetes-preserve-unknown-fields",
            format!("{path}.properties"),
        ));
    }
    if int_or_string && (preserve || embedded) {
        errs.push(FieldError::new(
            "x-kubernetes-int-or-string excludes x-kubernetes-preserve-unknown-fields and x-kubernetes-embedded-resource",
            path,
        ));
    }
    if ty == Some("array") && !map.contains_key("items") {
        errs.push(FieldError::missing_field(format!("{path}.items")));
    }
    if let Some(format) = map.get("format").and_then(Value::as_str)
        && !format_recognized(ty, format)
    {
        errs.push(FieldError::new(
            format!("unrecognized format {format:?} for type {ty:?} (the apiserver warns and ignores it)"),
            format!("{path}.format"),
        ));
    }
    if let Some(Value::Array(values)) = map.get("enum") {
        let nullable = is_true(map, "nullable");
        for (i, v) in values.iter().enumerate() {
            if !value_has_type(v, ty, nullable) {
                errs.push(FieldError::new(
                    format!("enum value {v} does not match type {ty:?}"),
                    format!("{path}.enum[{i}]"),
                ));
            }
        }
    }
    if let Some(default) = map.get("default")
        && !value_has_type(default, ty, is_true(map, "nullable"))
        && !int_or_string
    {
        errs.push(FieldError::new(
            format!("default {default} does not match type {ty:?}"),
            format!("{path}.default"),
        ));
    }

    // Children.
    let props = map.get("properties").and_then(Value::as_object);
    if let Some(props) = props {
        for (name, child) in props {
            errs.push(check_node(
                child,
                Level::Field,
                &format!("{path}.properties[{name}]"),
            ));
        }
    }
    match map.get("items") {
        Some(Value::Array(_)) => errs.push(FieldError::new(
            "items must be a schema object and not an array",
            format!("{path}.items"),
        )),
        Some(items) => errs.push(check_node(items, Level::Item, &format!("{path}.items"))),
        None => {}
    }
    if let Some(additional) = map.get("additionalProperties") {
        if level == Level::Root {
            errs.push(FieldError::new(
                "must not be used at the root",
                format!("{path}.additionalProperties"),
            ));
        }
        if embedded {
            errs.push(FieldError::new(
                "must not be used if x-kubernetes-embedded-resource is set",
                format!("{path}.additionalProperties"),
            ));
        }
        if props.is_some_and(|p| !p.is_empty()) && additional != &Value::Bool(true) {
            errs.push(FieldError::new(
                "additionalProperties and properties are mutual exclusive",
                format!("{path}.additionalProperties"),
            ));
        }
        if additional.is_object() {
            errs.push(check_node(
                additional,
                Level::Field,
                &format!("{path}.additionalProperties"),
            ));
        }
    }

    // Metadata: at the root (and in embedded resources) only name and
    // generateName may be restricted.
    let check_metadata = level == Level::Root || embedded;
    if check_metadata {
        for key in ["kind", "apiVersion"] {
            if let Some(child) = props.and_then(|p| p.get(key))
                && child.get("type").and_then(Value::as_str) != Some("string")
            {
                errs.push(FieldError::new(
                    "must be string",
                    format!("{path}.properties[{key}].type"),
                ));
            }
        }
    }
    if let Some(metadata) = props
        .and_then(|p| p.get("metadata"))
        .and_then(Value::as_object)
    {
        let at = format!("{path}.properties[metadata]");
        if check_metadata && metadata.get("type").and_then(Value::as_str) != Some("object") {
            errs.push(FieldError::new("must be object", format!("{at}.type")));
        }
        if level == Level::Root {
            let restricted: BTreeSet<&str> = metadata
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| p.keys().map(String::as_str).collect())
                .unwrap_or_default();
            let only_names = restricted
                .iter()
                .all(|k| *k == "name" || *k == "generateName");
            let other_keys = metadata
                .keys()
                .any(|k| !matches!(k.as_str(), "type" | "properties"));
            if !only_names || other_keys {
                errs.push(FieldError::new(
                    "must not specify anything other than name and generateName, but metadata is implicitly specified",
                    at.as_str(),
                ));
            }
        }
    }

    // Logic junctors: value validations only, on fields specified here.
    let int_or_string_any_of = is_int_or_string_pattern(map.get("anyOf"));
    let int_or_string_all_of = map
        .get("allOf")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .is_some_and(|first| is_int_or_string_pattern(first.get("anyOf")));
    for key in JUNCTORS {
        let Some(branches) = map.get(key) else {
            continue;
        };
        let Some(branches) = branches.as_array() else {
            errs.push(FieldError::new("must be an array", format!("{path}.{key}")));
            continue;
        };
        if key == "anyOf" && int_or_string_any_of {
            continue;
        }
        for (i, branch) in branches.iter().enumerate() {
            let skip_any_of = key == "allOf" && i == 0 && int_or_string_all_of;
            errs.push(check_nested(
                branch,
                node,
                skip_any_of,
                &format!("{path}.{key}[{i}]"),
            ));
        }
    }
    if let Some(not) = map.get("not") {
        errs.push(check_nested(not, node, false, &format!("{path}.not")));
    }
    errs
}

/// Checks a node under a logic junctor against `outer`, the structural
/// node it constrains.
fn check_nested(node: &Value, outer: &Value, skip_any_of: bool, path: &str) -> FieldError {
    let mut errs = FieldError::none();
    let Some(map) = node.as_object() else {
        return FieldError::new("must be a schema object", path);
    };
    errs.push(check_common(map, path));
    for key in FORBIDDEN_NESTED.iter().chain(&FORBIDDEN_NESTED_LISTS) {
        let set = match map.get(*key) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        if set {
            errs.push(FieldError::new(
                "must be empty to be structural",
                format!("{path}.{key}"),
            ));
        }
    }
    if let Some(props) = map.get("properties").and_then(Value::as_object) {
        if props.contains_key("metadata") {
            errs.push(FieldError::new(
                "must not be specified in a nested context",
                format!("{path}.properties[metadata]"),
            ));
        }
        let outer_props = outer.get("properties").and_then(Value::as_object);
        for (name, child) in props {
            let at = format!("{path}.properties[{name}]");
            match outer_props.and_then(|p| p.get(name)) {
                Some(outer_child) => errs.push(check_nested(child, outer_child, false, &at)),
                None => errs.push(FieldError::new(
                    "must be specified outside of allOf, anyOf, oneOf and not as well (the schema is not complete)",
                    at.as_str(),
                )),
            }
        }
    }
    if let Some(items) = map.get("items") {
        let at = format!("{path}.items");
        match outer.get("items") {
            Some(outer_items) => errs.push(check_nested(items, outer_items, false, &at)),
            None => errs.push(FieldError::new(
                "must be specified outside of allOf, anyOf, oneOf and not as well (the schema is not complete)",
                at.as_str(),
            )),
        }
    }
    for key in JUNCTORS {
        if skip_any_of && key == "anyOf" {
            continue;
        }
        if let Some(branches) = map.get(key).and_then(Value::as_array) {
            for (i, branch) in branches.iter().enumerate() {
                errs.push(check_nested(
                    branch,
                    outer,
                    false,
                    &format!("{path}.{key}[{i}]"),
                ));
            }
        }
    }
    if let Some(not) = map.get("not") {
        errs.push(check_nested(not, outer, false, &format!("{path}.not")));
    }
    errs
}

/// Rules of the CRD OpenAPI validation that hold in and out of junctors.
fn check_common(map: &Map<String, Value>, path: &str) -> FieldError {
    let mut errs = FieldError::none();
    for key in UNSUPPORTED {
        if map.contains_key(key) {
            errs.push(FieldError::new(
                format!("{key} is not supported"),
                format!("{path}.{key}"),
            ));
        }
    }
    if is_true(map, "uniqueItems") {
        errs.push(FieldError::new(
            "uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
            format!("{path}.uniqueItems"),
        ));
    }
    if map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(false)) {
        errs.push(FieldError::new(
            "must be true or undefined",
            format!("{path}.x-kubernetes-preserve-unknown-fields"),
        ));
    }
    if map.get("type").and_then(Value::as_str) == Some("null") {
        errs.push(FieldError::new(
            "type cannot be set to null",
            format!("{path}.type"),
        ));
    }
    errs
}

/// `anyOf: [{type: integer}, {type: string}]`, the int-or-string exception.
fn is_int_or_string_pattern(any_of: Option<&Value>) -> bool {
    let Some(Value::Array(branches)) = any_of else {
        return false;
    };
    let only_type = |v: &Value, ty: &str| {
        v.as_object()
            .is_some_and(|o| o.len() == 1 && o.get("type").and_then(Value::as_str) == Some(ty))
    };
    branches.len() == 2 && only_type(&branches[0], "integer") && only_type(&branches[1], "string")
}

/// Whether `v` is a value of JSON schema type `ty`.
fn value_has_type(v: &Value, ty: Option<&str>, nullable: bool) -> bool {
    match (v, ty) {
        (Value::Null, _) => nullable,
        (_, None) => true,
        (Value::Bool(_), Some("boolean")) => true,
        (Value::String(_), Some("string")) => true,
        (Value::Number(n), Some("integer")) => n.is_i64() || n.is_u64(),
        (Value::Number(_), Some("number")) => true,
        (Value::Array(_), Some("array")) => true,
        (Value::Object(_), Some("object")) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests;
