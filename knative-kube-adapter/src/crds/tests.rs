use serde_json::json;

use super::*;

const READY: &str = ".status.conditions[?(@.type==\"Ready\")].status";
const REASON: &str = ".status.conditions[?(@.type==\"Ready\")].reason";
const SUCCEEDED: &str = ".status.conditions[?(@.type==\"Succeeded\")].status";
const SUCCEEDED_REASON: &str = ".status.conditions[?(@.type==\"Succeeded\")].reason";
const AGE: &str = ".metadata.creationTimestamp";
const ADDRESS: &str = ".status.address.url";
const SINK: &str = ".status.sinkUri";

/// One row of the table in `specs/CRDS.md`.
struct Expected {
    name: &'static str,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    columns: &'static [(&'static str, &'static str)],
}

const KNATIVE: &[&str] = &["all", "knative"];

fn expected() -> Vec<Expected> {
    let serving = &["all", "knative", "serving"];
    let eventing = &["all", "knative", "eventing"];
    let messaging = &["all", "knative", "messaging"];
    let channel = &["all", "knative", "messaging", "channel"];
    let flows = &["all", "knative", "flows"];
    let sources = &["all", "knative", "sources"];
    let tekton = &["tekton", "tekton-pipelines"];
    let runs: &[(&str, &str)] = &[
        ("Succeeded", SUCCEEDED),
        ("Reason", SUCCEEDED_REASON),
        ("StartTime", ".status.startTime"),
        ("CompletionTime", ".status.completionTime"),
    ];
    let addressable: &[(&str, &str)] = &[
        ("URL", ADDRESS),
        ("Age", AGE),
        ("Ready", READY),
        ("Reason", REASON),
    ];
    let source: &[(&str, &str)] = &[
        ("Sink", SINK),
        ("Age", AGE),
        ("Ready", READY),
        ("Reason", REASON),
    ];
    vec![
        Expected {
            name: "services.serving.knative.dev",
            short_names: &["ksvc", "kservice"],
            categories: serving,
            columns: &[
                ("URL", ".status.url"),
                ("LatestCreated", ".status.latestCreatedRevisionName"),
                ("LatestReady", ".status.latestReadyRevisionName"),
                ("Ready", READY),
                ("Reason", REASON),
            ],
        },
        Expected {
            name: "configurations.serving.knative.dev",
            short_names: &["config", "cfg"],
            categories: serving,
            columns: &[
                ("LatestCreated", ".status.latestCreatedRevisionName"),
                ("LatestReady", ".status.latestReadyRevisionName"),
                ("Ready", READY),
                ("Reason", REASON),
            ],
        },
        Expected {
            name: "revisions.serving.knative.dev",
            short_names: &["rev"],
            categories: serving,
            columns: &[
                (
                    "Config Name",
                    ".metadata.labels['serving\\.knative\\.dev/configuration']",
                ),
                (
                    "Generation",
                    ".metadata.labels['serving\\.knative\\.dev/configurationGeneration']",
                ),
                ("Ready", READY),
                ("Reason", REASON),
                ("Actual Replicas", ".status.actualReplicas"),
                ("Desired Replicas", ".status.desiredReplicas"),
            ],
        },
        Expected {
            name: "routes.serving.knative.dev",
            short_names: &["rt"],
            categories: serving,
            columns: &[("URL", ".status.url"), ("Ready", READY), ("Reason", REASON)],
        },
        Expected {
            name: "brokers.eventing.knative.dev",
            short_names: &[],
            categories: eventing,
            columns: &[
                ("URL", ADDRESS),
                ("Age", AGE),
                ("Ready", READY),
                ("Reason", REASON),
                (
                    "Class",
                    ".metadata.annotations.eventing\\.knative\\.dev/broker\\.class",
                ),
            ],
        },
        Expected {
            name: "triggers.eventing.knative.dev",
            short_names: &[],
            categories: eventing,
            columns: &[
                ("Broker", ".spec.broker"),
                ("Subscriber_URI", ".status.subscriberUri"),
                ("Age", AGE),
                ("Ready", READY),
                ("Reason", REASON),
            ],
        },
        Expected {
            name: "channels.messaging.knative.dev",
            short_names: &["ch"],
            categories: channel,
            columns: addressable,
        },
        Expected {
            name: "inmemorychannels.messaging.knative.dev",
            short_names: &["imc"],
            categories: channel,
            columns: addressable,
        },
        Expected {
            name: "subscriptions.messaging.knative.dev",
            short_names: &["sub"],
            categories: messaging,
            columns: &[("Age", AGE), ("Ready", READY), ("Reason", REASON)],
        },
        Expected {
            name: "sequences.flows.knative.dev",
            short_names: &[],
            categories: flows,
            columns: addressable,
        },
        Expected {
            name: "parallels.flows.knative.dev",
            short_names: &[],
            categories: flows,
            columns: addressable,
        },
        Expected {
            name: "pingsources.sources.knative.dev",
            short_names: &[],
            categories: sources,
            columns: &[
                ("Sink", SINK),
                ("Schedule", ".spec.schedule"),
                ("Age", AGE),
                ("Ready", READY),
                ("Reason", REASON),
            ],
        },
        Expected {
            name: "apiserversources.sources.knative.dev",
            short_names: &[],
            categories: sources,
            columns: source,
        },
        Expected {
            name: "containersources.sources.knative.dev",
            short_names: &[],
            categories: sources,
            columns: source,
        },
        Expected {
            name: "sinkbindings.sources.knative.dev",
            short_names: &[],
            categories: &["all", "knative", "sources", "bindings"],
            columns: source,
        },
        Expected {
            name: "tasks.tekton.dev",
            short_names: &[],
            categories: tekton,
            columns: &[],
        },
        Expected {
            name: "taskruns.tekton.dev",
            short_names: &["tr", "trs"],
            categories: tekton,
            columns: runs,
        },
        Expected {
            name: "pipelines.tekton.dev",
            short_names: &[],
            categories: tekton,
            columns: &[],
        },
        Expected {
            name: "pipelineruns.tekton.dev",
            short_names: &["pr", "prs"],
            categories: tekton,
            columns: runs,
        },
    ]
}

/// The versions upstream serves besides `v1` (the "served" column of
/// `specs/CRDS.md`).
fn upstream_also_served(name: &str) -> &'static [&'static str] {
    match name {
        "pingsources.sources.knative.dev" => &["v1beta2"],
        "tasks.tekton.dev" | "pipelines.tekton.dev" => &["v1beta1"],
        _ => &[],
    }
}

#[test]
fn older_served_versions_are_added_once_and_only_where_upstream_serves_them() {
    let crds = all();
    let multi: Vec<_> = crds
        .iter()
        .filter(|c| c.spec.versions.len() > 1)
        .filter_map(|c| c.metadata.name.as_deref())
        .collect();
    assert_eq!(
        multi,
        [
            "pingsources.sources.knative.dev",
            "tasks.tekton.dev",
            "pipelines.tekton.dev"
        ]
    );
    for crd in &crds {
        // Exactly one storage version; adding again changes nothing.
        let storage = crd.spec.versions.iter().filter(|v| v.storage).count();
        assert_eq!(storage, 1, "{:?}", crd.metadata.name);
        assert!(crd.spec.versions.iter().all(|v| v.served));
        assert_eq!(&with_served_versions(crd.clone()), crd);
        // Tekton's older versions lose fields without a conversion
        // webhook: deprecated, with a warning that says so; PingSource
        // v1beta2 has v1's shape.
        for version in crd.spec.versions.iter().filter(|v| !v.storage) {
            let tekton = crd
                .metadata
                .name
                .as_deref()
                .is_some_and(|n| n.ends_with(".tekton.dev"));
            assert_eq!(
                version.deprecated,
                tekton.then_some(true),
                "{}",
                version.name
            );
            assert_eq!(
                version
                    .deprecation_warning
                    .as_deref()
                    .is_some_and(|w| w.contains("pruned")),
                tekton
            );
        }
    }
    assert_eq!(also_served("services.serving.knative.dev"), &[] as &[&str]);
    assert_eq!(also_served("tasks.tekton.dev"), ["v1beta1"]);
}

/// kubectl reads `'Ready'` and `"Ready"` alike (upstream Serving writes the
/// first, Eventing and Tekton the second).
fn same_json_path(a: &str, b: &str) -> bool {
    a.replace('\'', "\"") == b.replace('\'', "\"")
}

#[test]
fn every_crd_matches_the_upstream_names_categories_and_printer_columns() {
    let crds = all();
    let table = expected();
    let names: Vec<_> = crds
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    let expected_names: Vec<_> = table.iter().map(|e| e.name.to_owned()).collect();
    assert_eq!(names, expected_names);

    for (crd, want) in crds.iter().zip(&table) {
        let names = &crd.spec.names;
        assert_eq!(
            names.short_names.clone().unwrap_or_default(),
            want.short_names,
            "{}: short names",
            want.name
        );
        assert_eq!(
            names.categories.clone().unwrap_or_default(),
            want.categories,
            "{}: categories",
            want.name
        );
        assert_eq!(crd.spec.scope, "Namespaced", "{}", want.name);
        let versions: Vec<(&str, bool, bool)> = crd
            .spec
            .versions
            .iter()
            .map(|v| (v.name.as_str(), v.served, v.storage))
            .collect();
        let mut want_versions = vec![("v1", true, true)];
        want_versions.extend(
            upstream_also_served(want.name)
                .iter()
                .map(|v| (*v, true, false)),
        );
        assert_eq!(versions, want_versions, "{}: versions", want.name);
        let version = &crd.spec.versions[0];
        for other in &crd.spec.versions[1..] {
            assert_eq!(
                (
                    &other.schema,
                    &other.subresources,
                    &other.additional_printer_columns
                ),
                (
                    &version.schema,
                    &version.subresources,
                    &version.additional_printer_columns
                ),
                "{}: {} is served like v1",
                want.name,
                other.name
            );
        }
        let columns = version
            .additional_printer_columns
            .clone()
            .unwrap_or_default();
        let got: Vec<(&str, &str)> = columns
            .iter()
            .map(|c| (c.name.as_str(), c.json_path.as_str()))
            .collect();
        assert_eq!(
            got.len(),
            want.columns.len(),
            "{}: columns {got:?}",
            want.name
        );
        for ((name, path), (want_name, want_path)) in got.iter().zip(want.columns) {
            assert_eq!(name, want_name, "{}", want.name);
            assert!(
                same_json_path(path, want_path),
                "{}: column {name} reads {path}, upstream {want_path}",
                want.name
            );
        }
        for c in &columns {
            let want_type = match c.name.as_str() {
                "Age" | "StartTime" | "CompletionTime" => "date",
                "Actual Replicas" | "Desired Replicas" => "integer",
                _ => "string",
            };
            assert_eq!(c.type_, want_type, "{}: column {}", want.name, c.name);
        }
    }
    // Every Knative kind is in `all` and `knative`; no Tekton kind is.
    for (crd, want) in crds.iter().zip(&table) {
        let categories = crd.spec.names.categories.clone().unwrap_or_default();
        let knative = KNATIVE.iter().all(|c| categories.iter().any(|x| x == c));
        assert_eq!(knative, !want.name.ends_with("tekton.dev"), "{}", want.name);
    }
}

#[test]
fn every_crd_is_structural_with_a_status_subresource() {
    for crd in all() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let errs = structural_errors(&crd);
        assert!(errs.is_empty(), "{name} is not structural:\n{errs}");
        for version in &crd.spec.versions {
            let status = version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref());
            // Tasks and Pipelines have no status upstream either.
            let want = !matches!(name.as_str(), "tasks.tekton.dev" | "pipelines.tekton.dev");
            assert_eq!(status.is_some(), want, "{name}: status subresource");
            if want {
                let schema = version
                    .schema
                    .as_ref()
                    .and_then(|s| s.open_api_v3_schema.as_ref())
                    .and_then(|s| s.properties.as_ref());
                assert!(
                    schema.is_some_and(|p| p.contains_key("status") && p.contains_key("spec")),
                    "{name}: spec and status in the schema"
                );
            }
        }
    }
}

#[test]
fn generated_schemas_are_rewritten_idempotently() {
    for crd in all() {
        let again = make_structural(crd.clone());
        assert_eq!(again, crd);
    }
}

#[test]
fn json_value_fields_preserve_unknown_fields() {
    let crd = make_structural(knative_build::api::TaskRun::crd());
    let value = serde_json::to_value(&crd).expect("a CRD serializes");
    let spec = &value["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let pod_template = &spec["properties"]["podTemplate"];
    assert_eq!(
        pod_template["x-kubernetes-preserve-unknown-fields"],
        json!(true)
    );
    assert_eq!(
        spec["properties"]["stepSpecs"]["items"]["x-kubernetes-preserve-unknown-fields"],
        json!(true)
    );
}

#[test]
fn yaml_is_one_document_per_crd_and_reads_back() {
    let crds = all();
    let yaml = to_yaml(&crds);
    assert!(yaml.starts_with("---\n"));
    let mut read = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&yaml) {
        let crd = CustomResourceDefinition::deserialize(doc).expect("each document is a CRD");
        read.push(crd);
    }
    assert_eq!(read, crds);
}

use serde::Deserialize as _;

/// A CRD whose v1 schema is `schema`.
fn crd_with(schema: Value) -> CustomResourceDefinition {
    let mut crd = knative_serving::api::Route::crd();
    let root = json!({
        "type": "object",
        "properties": { "spec": schema }
    });
    crd.spec.versions[0].schema =
        Some(serde_json::from_value(json!({ "openAPIV3Schema": root })).expect("a schema"));
    crd
}

fn problems(schema: Value) -> String {
    structural_errors(&crd_with(schema)).to_string()
}

#[test]
fn checker_requires_types_except_int_or_string_and_preserved_fields() {
    let errs = problems(json!({
        "type": "object",
        "properties": {
            "untyped": { "description": "no type" },
            "port": { "x-kubernetes-int-or-string": true },
            "raw": { "x-kubernetes-preserve-unknown-fields": true },
            "list": { "type": "array", "items": { "description": "no type" } },
            "noItems": { "type": "array" }
        }
    }));
    assert!(
        errs.contains("properties[spec].properties[untyped].type")
            && errs.contains("must not be empty for specified object fields"),
        "{errs}"
    );
    assert!(errs.contains("properties[list].items.type"), "{errs}");
    assert!(
        errs.contains("must not be empty for specified array items"),
        "{errs}"
    );
    assert!(
        errs.contains("properties[noItems].items: missing field"),
        "{errs}"
    );
    assert!(!errs.contains("[port]"), "{errs}");
    assert!(!errs.contains("[raw]"), "{errs}");
}

#[test]
fn checker_rejects_types_and_descriptions_inside_junctors() {
    let errs = problems(json!({
        "type": "object",
        "properties": { "a": { "type": "string" } },
        "anyOf": [
            { "type": "object", "properties": { "a": { "nullable": true } } },
            { "description": "d", "required": ["a"] }
        ],
        "oneOf": [ { "properties": { "b": { "minLength": 1 } } } ],
        "not": { "properties": { "metadata": {} } }
    }));
    assert!(errs.contains("anyOf[0].type"), "{errs}");
    assert!(errs.contains("anyOf[0].properties[a].nullable"), "{errs}");
    assert!(errs.contains("anyOf[1].description"), "{errs}");
    assert!(
        errs.contains("oneOf[0].properties[b]: must be specified outside"),
        "{errs}"
    );
    assert!(
        errs.contains("not.properties[metadata]: must not be specified in a nested context"),
        "{errs}"
    );
}

#[test]
fn checker_accepts_the_int_or_string_patterns() {
    let errs = problems(json!({
        "type": "object",
        "properties": {
            "a": {
                "x-kubernetes-int-or-string": true,
                "anyOf": [ { "type": "integer" }, { "type": "string" } ]
            },
            "b": {
                "x-kubernetes-int-or-string": true,
                "allOf": [ { "anyOf": [ { "type": "integer" }, { "type": "string" } ] } ]
            },
            "c": { "x-kubernetes-int-or-string": true, "type": "string" }
        }
    }));
    assert!(!errs.contains("[a]") && !errs.contains("[b]"), "{errs}");
    assert!(
        errs.contains("properties[c].type: must be empty if x-kubernetes-int-or-string"),
        "{errs}"
    );
}

#[test]
fn checker_rejects_refs_unique_items_and_mixed_additional_properties() {
    let errs = problems(json!({
        "type": "object",
        "properties": {
            "r": { "$ref": "#/definitions/Foo" },
            "u": { "type": "array", "items": { "type": "string" }, "uniqueItems": true },
            "m": {
                "type": "object",
                "properties": { "x": { "type": "string" } },
                "additionalProperties": { "type": "string" }
            },
            "t": { "type": "array", "items": [ { "type": "string" } ] },
            "p": { "type": "object", "x-kubernetes-preserve-unknown-fields": false },
            "f": { "type": "integer", "format": "uint16" },
            "n": { "type": "null" }
        }
    }));
    assert!(
        errs.contains("properties[r].$ref: $ref is not supported"),
        "{errs}"
    );
    assert!(errs.contains("properties[u].uniqueItems"), "{errs}");
    assert!(
        errs.contains("additionalProperties and properties are mutual exclusive"),
        "{errs}"
    );
    assert!(
        errs.contains("properties[t].items: items must be a schema object"),
        "{errs}"
    );
    assert!(
        errs.contains("x-kubernetes-preserve-unknown-fields: must be true or undefined"),
        "{errs}"
    );
    assert!(errs.contains("unrecognized format \"uint16\""), "{errs}");
    assert!(errs.contains("type cannot be set to null"), "{errs}");
}

#[test]
fn checker_restricts_metadata_to_name_and_generate_name() {
    let mut crd = crd_with(json!({ "type": "object" }));
    crd.spec.versions[0].schema = Some(
        serde_json::from_value(json!({ "openAPIV3Schema": {
            "type": "object",
            "properties": {
                "metadata": {
                    "type": "object",
                    "properties": {
                        "name": { "type": "string", "maxLength": 63 },
                        "labels": { "type": "object" }
                    }
                }
            },
            "additionalProperties": { "type": "string" }
        }}))
        .expect("a schema"),
    );
    let errs = structural_errors(&crd).to_string();
    assert!(
        errs.contains(
            "properties[metadata]: must not specify anything other than name and generateName"
        ),
        "{errs}"
    );
    assert!(
        errs.contains("openAPIV3Schema.additionalProperties: must not be used at the root"),
        "{errs}"
    );

    let ok = json!({ "openAPIV3Schema": {
        "type": "object",
        "properties": {
            "metadata": {
                "type": "object",
                "properties": { "name": { "type": "string", "maxLength": 63 } }
            }
        }
    }});
    crd.spec.versions[0].schema = Some(serde_json::from_value(ok).expect("a schema"));
    assert!(structural_errors(&crd).is_empty());
}

#[test]
fn rewriting_turns_nullable_any_of_into_nullable_types() {
    let crd = make_structural(crd_with(json!({
        "type": "object",
        "properties": {
            "mode": {
                "description": "the field",
                "anyOf": [
                    { "type": "string", "enum": ["a", "b"], "description": "the type" },
                    { "enum": [null], "nullable": true }
                ]
            },
            "count": { "type": "integer", "format": "uint16", "minimum": 1 },
            "size": { "type": "integer", "format": "uint64" },
            "ratio": { "type": "number", "format": "float64" },
            "any": { "description": "any JSON" },
            "list": { "type": "array", "items": {} },
            "defaulted": { "type": "string", "default": "x" },
            "closed": {
                "type": "object",
                "properties": { "x": { "type": "string" } },
                "additionalProperties": false
            }
        }
    })));
    let value = serde_json::to_value(&crd).expect("a CRD serializes");
    // (The typed schema keeps bounds as floats.)
    let spec = &value["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert_eq!(
        spec["mode"],
        json!({ "description": "the field", "type": "string", "enum": ["a", "b"], "nullable": true })
    );
    assert_eq!(
        spec["count"],
        json!({ "type": "integer", "format": "int32", "minimum": 1.0, "maximum": 65535.0 })
    );
    assert_eq!(
        spec["size"],
        json!({ "type": "integer", "format": "int64", "minimum": 0.0 })
    );
    assert_eq!(
        spec["ratio"],
        json!({ "type": "number", "format": "double" })
    );
    assert_eq!(
        spec["any"],
        json!({ "description": "any JSON", "x-kubernetes-preserve-unknown-fields": true })
    );
    assert_eq!(
        spec["list"]["items"],
        json!({ "x-kubernetes-preserve-unknown-fields": true })
    );
    assert_eq!(spec["defaulted"], json!({ "type": "string" }));
    assert_eq!(spec["closed"]["additionalProperties"], Value::Null);
    let errs = structural_errors(&crd);
    assert!(errs.is_empty(), "{errs}");
}

/// What the API server checks of an object against a structural schema
/// that a missing default would break: each value's `type`, and the
/// `required` fields of each object (int-or-string, preserved and
/// nullable nodes as the API server treats them). Problems as
/// `path: message`.
fn schema_problems(schema: &Value, value: &Value, path: &str, problems: &mut Vec<String>) {
    if value.is_null() && schema["nullable"] == json!(true) {
        return;
    }
    if schema["x-kubernetes-int-or-string"] == json!(true) {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            problems.push(format!("{path}: not an int or a string"));
        }
        return;
    }
    let ty = schema["type"].as_str().unwrap_or("");
    let matches = match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    };
    if !matches {
        problems.push(format!("{path}: expected {ty}, got {value}"));
        return;
    }
    if let Some(items) = value.as_array() {
        for (i, item) in items.iter().enumerate() {
            schema_problems(&schema["items"], item, &format!("{path}[{i}]"), problems);
        }
    }
    let Some(fields) = value.as_object() else {
        return;
    };
    for required in schema["required"].as_array().into_iter().flatten() {
        if let Some(name) = required.as_str()
            && !fields.contains_key(name)
        {
            problems.push(format!("{path}.{name}: Required value"));
        }
    }
    if path.is_empty() {
        // metadata is the API server's own.
        for (name, child) in fields {
            if name != "metadata" && name != "apiVersion" && name != "kind" {
                schema_problems(&schema["properties"][name], child, name, problems);
            }
        }
        return;
    }
    for (name, child) in fields {
        if let Some(property) = schema["properties"].get(name) {
            schema_problems(property, child, &format!("{path}.{name}"), problems);
        } else if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
            schema_problems(extra, child, &format!("{path}.{name}"), problems);
        }
    }
}

/// Every YAML document of the repository's fixtures and sample manifests.
fn manifests() -> Vec<(String, Value)> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let dirs = [
        "knative-serving/tests/fixtures",
        "knative-eventing/tests/fixtures",
        "knative-build/tests/fixtures",
        "examples/manifests",
    ];
    let mut found = Vec::new();
    for dir in dirs {
        let mut files: Vec<_> = std::fs::read_dir(format!("{root}/{dir}"))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
                let value: Value = match serde::Deserialize::deserialize(doc) {
                    Ok(v) => v,
                    Err(e) => panic!("{}: {e}", file.display()),
                };
                if !value.is_null() {
                    found.push((format!("{}#{}", file.display(), i + 1), value));
                }
            }
        }
    }
    found
}

/// Upstream's manifests leave out what upstream's webhooks default (a
/// container's name, a probe's port, an all-optional spec): with no
/// webhook here, the CRDs must accept them as the API server checks them.
#[test]
fn upstream_style_manifests_pass_the_crd_schemas() {
    let crds = all();
    let mut problems = Vec::new();
    let mut checked = 0;
    let extra = [
        // Upstream's hello world, with no container name and a probe
        // without a port.
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service",
               "metadata": {"name": "hello"},
               "spec": {"template": {"spec": {"containers": [{
                   "image": "ghcr.io/knative/helloworld-go:latest",
                   "env": [{"name": "TARGET", "value": "World"}],
                   "readinessProbe": {"httpGet": {"path": "/healthz"}},
                   "livenessProbe": {"tcpSocket": {}}}]}}}}),
        // A Broker and an InMemoryChannel with no spec at all.
        json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
               "metadata": {"name": "default"}}),
        json!({"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel",
               "metadata": {"name": "orders"}}),
    ];
    let manifests = manifests()
        .into_iter()
        .chain(extra.into_iter().map(|v| ("inline".to_owned(), v)));
    for (source, manifest) in manifests {
        let (group, kind) = (
            manifest["apiVersion"]
                .as_str()
                .and_then(|v| v.split_once('/'))
                .map(|(g, _)| g.to_owned())
                .unwrap_or_default(),
            manifest["kind"].as_str().unwrap_or_default().to_owned(),
        );
        let Some(crd) = crds
            .iter()
            .find(|c| c.spec.group == group && c.spec.names.kind == kind)
        else {
            continue;
        };
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .map(|s| serde_json::to_value(s).unwrap_or_default())
            .unwrap_or_default();
        let mut found = Vec::new();
        schema_problems(&schema, &manifest, "", &mut found);
        problems.extend(found.into_iter().map(|p| format!("{source} ({kind}): {p}")));
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} manifests checked");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
