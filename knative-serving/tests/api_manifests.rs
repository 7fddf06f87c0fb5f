//! Upstream-style manifests parse, default, validate and serialize back
//! without losing or renaming a field; invalid manifests each get one clear
//! error naming the field.

use knative_core::apis::{Context, FieldError, SetDefaults, Validate};
use knative_serving::api::{Configuration, Revision, Route, Service};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Every leaf of `original` is in `value` with the same value.
fn assert_superset(original: &Value, value: &Value, path: &str) {
    match (original, value) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let child = format!("{path}.{k}");
                match b.get(k) {
                    Some(w) => assert_superset(v, w, &child),
                    None => panic!("field {child} was lost"),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "array {path} changed length");
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                assert_superset(v, w, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(original, value, "field {path} changed"),
    }
}

/// Fields in `value` that are not in `original` may only be the ones
/// Kubernetes' own types always write (no `omitempty` upstream either): an
/// unnamed container's `name: ""` and a probe's `port: 0`.
fn assert_only_required_empty_additions(original: &Value, value: &Value, path: &str) {
    match (original, value) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, w) in b {
                let child = format!("{path}.{k}");
                match a.get(k) {
                    Some(v) => assert_only_required_empty_additions(v, w, &child),
                    None => assert!(
                        (k == "name" && w == "") || (k == "port" && w == 0),
                        "field {child} = {w} was added"
                    ),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                assert_only_required_empty_additions(v, w, &format!("{path}[{i}]"));
            }
        }
        _ => {}
    }
}

fn round_trip<T>(name: &str)
where
    T: DeserializeOwned + Serialize + SetDefaults + Validate,
{
    let yaml = fixture(name);
    let original: Value = serde_yaml::from_str(&yaml).expect("fixture is YAML");
    let mut obj: T = serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{name}: {e}"));
    let exact = serde_json::to_value(&obj).expect("serializes");
    assert_superset(&original, &exact, "");
    assert_only_required_empty_additions(&original, &exact, "");

    // A cluster that allows `initial-scale: 0` (the autoscaling fixture uses it).
    let ctx = Context::create().with_config(knative_serving::config::ServingConfig {
        autoscaler: knative_serving::autoscaling::config::AutoscalerConfig {
            allow_zero_initial_scale: true,
            ..Default::default()
        },
        ..Default::default()
    });
    obj.set_defaults(&ctx);
    let errors = obj.validate(&ctx);
    assert!(errors.is_empty(), "{name} should be valid:\n{errors}");
    let defaulted = serde_json::to_value(&obj).expect("serializes");
    assert_superset(&original, &defaulted, "");
    // Defaulting twice changes nothing.
    obj.set_defaults(&ctx);
    assert_eq!(
        serde_json::to_value(&obj).expect("serializes"),
        defaulted,
        "{name}: defaults are idempotent"
    );
}

#[test]
fn hello_world_service_round_trips() {
    round_trip::<Service>("hello-world.yaml");
}

#[test]
fn traffic_split_with_tags_round_trips() {
    round_trip::<Service>("traffic-split-tags.yaml");
}

#[test]
fn byo_revision_name_configuration_round_trips() {
    round_trip::<Configuration>("byo-revision-name.yaml");
}

#[test]
fn autoscaling_annotations_service_round_trips() {
    round_trip::<Service>("autoscaling-annotations.yaml");
}

#[test]
fn route_split_round_trips() {
    round_trip::<Route>("route-split.yaml");
}

#[test]
fn revision_with_status_round_trips() {
    round_trip::<Revision>("revision.yaml");
}

#[test]
fn defaults_are_upstreams() {
    let mut svc: Service = serde_yaml::from_str(&fixture("hello-world.yaml")).expect("parses");
    svc.set_defaults(&Context::create());
    let spec = &svc.spec.template.spec;
    assert_eq!(spec.timeout_seconds, Some(300));
    assert_eq!(spec.container_concurrency, Some(0));
    assert_eq!(spec.response_start_timeout_seconds, None);
    assert_eq!(spec.pod_spec.enable_service_links, Some(false));
    let container = &spec.pod_spec.containers[0];
    assert_eq!(container.name, "user-container");
    let probe = container
        .readiness_probe
        .as_ref()
        .expect("a default readiness probe");
    assert!(probe.tcp_socket.is_some());
    assert_eq!(probe.success_threshold, Some(1));
    let traffic = &svc.spec.traffic;
    assert_eq!(traffic.len(), 1);
    assert_eq!(traffic[0].percent, Some(100));
    assert_eq!(traffic[0].latest_revision, Some(true));
}

/// Applies a JSON merge patch to a base manifest, defaults and validates it.
fn errors_of<T>(base: &str, patch: Value) -> FieldError
where
    T: DeserializeOwned + SetDefaults + Validate,
{
    let mut value: Value = serde_yaml::from_str(&fixture(base)).expect("fixture is YAML");
    merge(&mut value, &patch);
    let mut obj: T = serde_json::from_value(value).expect("patched manifest parses");
    let ctx = Context::create();
    obj.set_defaults(&ctx);
    obj.validate(&ctx)
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn container(extra: Value) -> Value {
    let mut c = json!({"image": "ghcr.io/knative/helloworld-go:latest"});
    merge(&mut c, &extra);
    json!({"spec": {"template": {"spec": {"containers": [c]}}}})
}

fn assert_one_error(errors: FieldError, expected: &str) {
    let diagnostics = errors.diagnostics();
    assert_eq!(diagnostics.len(), 1, "expected one error, got:\n{errors}");
    let text = errors.to_string();
    let first_line = text.lines().next().unwrap_or("");
    assert_eq!(first_line, expected, "full error:\n{text}");
}

#[test]
fn invalid_services_each_get_one_error_naming_the_field() {
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "missing image",
            container(json!({"image": null})),
            "spec.template.spec.containers[0].image: missing field",
        ),
        (
            "no containers",
            json!({"spec": {"template": {"spec": {"containers": []}}}}),
            "spec.template.spec.containers: missing field",
        ),
        (
            "two ports",
            container(json!({"ports": [{"containerPort": 8080}, {"containerPort": 9000}]})),
            "spec.template.spec.containers[0].ports: more than one container port is set",
        ),
        (
            "reserved port",
            container(json!({"ports": [{"containerPort": 8012}]})),
            "spec.template.spec.containers[0].ports[0].containerPort: invalid value: 8012",
        ),
        (
            "port name",
            container(json!({"ports": [{"name": "grpc", "containerPort": 8080}]})),
            "spec.template.spec.containers[0].ports[0].name: invalid value: grpc",
        ),
        (
            "timeout too long",
            json!({"spec": {"template": {"spec": {"timeoutSeconds": 601}}}}),
            "spec.template.spec.timeoutSeconds: expected 0 <= 601 <= 600",
        ),
        (
            "response start after timeout",
            json!({"spec": {"template": {"spec": {"timeoutSeconds": 60, "responseStartTimeoutSeconds": 90}}}}),
            "spec.template.spec.responseStartTimeoutSeconds: expected 0 <= 90 <= 60",
        ),
        (
            "concurrency too high",
            json!({"spec": {"template": {"spec": {"containerConcurrency": 1001}}}}),
            "spec.template.spec.containerConcurrency: expected 0 <= 1001 <= 1000",
        ),
        (
            "host network",
            json!({"spec": {"template": {"spec": {"hostNetwork": true}}}}),
            "spec.template.spec.hostNetwork: must not set the field(s)",
        ),
        (
            "reserved mount path",
            container(json!({"volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}]})),
            "spec.template.spec.containers[0].volumeMounts[0].mountPath: invalid value: /tmp",
        ),
        (
            "two probe handlers",
            container(
                json!({"readinessProbe": {"httpGet": {"port": 8080}, "tcpSocket": {"port": 8080}}}),
            ),
            "spec.template.spec.containers[0].readinessProbe.httpGet, spec.template.spec.containers[0].readinessProbe.tcpSocket: expected exactly one, got both",
        ),
        (
            "traffic does not sum to 100",
            json!({"spec": {"traffic": [{"latestRevision": true, "percent": 90}]}}),
            "spec.traffic: Traffic targets sum to 90, want 100",
        ),
        (
            "duplicate tags",
            json!({"spec": {"traffic": [
                {"tag": "x", "latestRevision": true, "percent": 50},
                {"tag": "x", "revisionName": "hello-a", "percent": 50}
            ]}}),
            "spec.traffic[0].tag, spec.traffic[1].tag: Multiple definitions for \"x\"",
        ),
        (
            "tag not a DNS-1035 label",
            json!({"spec": {"traffic": [{"tag": "Canary", "latestRevision": true, "percent": 100}]}}),
            "spec.traffic[0].tag: invalid value: Canary",
        ),
        (
            "configuration name inside a service",
            json!({"spec": {"traffic": [{"configurationName": "other", "percent": 100}]}}),
            "spec.traffic[0].configurationName: must not set the field(s)",
        ),
        (
            "latestRevision contradicts revisionName",
            json!({"spec": {"traffic": [{"revisionName": "hello-a", "latestRevision": true, "percent": 100}]}}),
            "spec.traffic[0].latestRevision: may not set revisionName \"hello-a\" when latestRevision is true",
        ),
        (
            "url in spec",
            json!({"spec": {"traffic": [{"latestRevision": true, "percent": 100, "url": "http://x"}]}}),
            "spec.traffic[0].url: must not set the field(s)",
        ),
        (
            "BYO name without the service prefix",
            json!({"spec": {"template": {"metadata": {"name": "other-v1"}}}}),
            "spec.template.metadata.name: invalid value: \"other-v1\" must have prefix \"hello-\"",
        ),
        (
            "service name not a DNS label",
            json!({"metadata": {"name": "Hello"}}),
            "metadata.name: invalid value: Hello",
        ),
        (
            "min-scale above max-scale",
            json!({"spec": {"template": {"metadata": {"annotations": {
                "autoscaling.knative.dev/min-scale": "5",
                "autoscaling.knative.dev/max-scale": "2"
            }}}}}),
            "spec.template.metadata.annotations[autoscaling.knative.dev/min-scale]: invalid value: 5",
        ),
        (
            "negative min-scale",
            json!({"spec": {"template": {"metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "-1"}}}}}),
            "spec.template.metadata.annotations[autoscaling.knative.dev/min-scale]: invalid value: -1",
        ),
        (
            "stable window too short",
            json!({"spec": {"template": {"metadata": {"annotations": {"autoscaling.knative.dev/window": "5s"}}}}}),
            "spec.template.metadata.annotations[autoscaling.knative.dev/window]: invalid value: 5s",
        ),
        (
            "unknown scaling metric",
            json!({"spec": {"template": {"metadata": {"annotations": {"autoscaling.knative.dev/metric": "cpu"}}}}}),
            "spec.template.metadata.annotations[autoscaling.knative.dev/metric]: invalid value: cpu",
        ),
        (
            "unknown visibility",
            json!({"metadata": {"labels": {"networking.knative.dev/visibility": "public"}}}),
            "metadata.labels[networking.knative.dev/visibility]: invalid value: public",
        ),
    ];
    assert!(cases.len() >= 15);
    for (what, patch, expected) in cases {
        let errors = errors_of::<Service>("hello-world.yaml", patch);
        assert!(!errors.is_empty(), "{what}: expected an error");
        assert_one_error(errors, expected);
    }
}

#[test]
fn a_percent_out_of_range_names_the_target_and_the_sum() {
    let errors = errors_of::<Service>(
        "hello-world.yaml",
        json!({"spec": {"traffic": [{"latestRevision": true, "percent": 150}]}}),
    );
    assert_eq!(
        errors.to_string(),
        "spec.traffic: Traffic targets sum to 150, want 100\nspec.traffic[0].percent: expected 0 <= 150 <= 100"
    );
}

#[test]
fn invalid_routes_each_get_one_error_naming_the_field() {
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "both revision and configuration",
            json!({"spec": {"traffic": [{"revisionName": "search-00003", "configurationName": "search", "latestRevision": false, "percent": 100}]}}),
            "spec.traffic[0].configurationName, spec.traffic[0].revisionName: expected exactly one, got both",
        ),
        (
            "neither revision nor configuration",
            json!({"spec": {"traffic": [{"percent": 100}]}}),
            "spec.traffic[0].configurationName, spec.traffic[0].revisionName: expected exactly one, got neither",
        ),
    ];
    for (what, patch, expected) in cases {
        let errors = errors_of::<Route>("route-split.yaml", patch);
        assert!(!errors.is_empty(), "{what}: expected an error");
        assert_one_error(errors, expected);
    }
}

#[test]
fn a_revision_spec_is_immutable() {
    let original: Revision = serde_yaml::from_str(&fixture("revision.yaml")).expect("parses");
    let mut changed = original.clone();
    changed.spec.pod_spec.containers[0].image = Some("ghcr.io/knative/helloworld-go:v2".into());
    let errors = changed.validate(&Context::update(&original));
    let text = errors.to_string();
    assert!(
        text.starts_with("spec: Immutable fields changed (-old +new)"),
        "{text}"
    );
    assert!(
        text.contains("helloworld-go:v2"),
        "the diff shows the change: {text}"
    );
    assert!(original.validate(&Context::update(&original)).is_empty());
}

#[test]
fn a_byo_named_template_must_change_its_name_to_change() {
    let original: Configuration =
        serde_yaml::from_str(&fixture("byo-revision-name.yaml")).expect("parses");
    let mut changed = original.clone();
    changed.spec.template.spec.pod_spec.containers[0].image =
        Some("registry.example.com/billing:1.4.3".into());
    assert_one_error(
        changed.validate(&Context::update(&original)),
        "spec.template.metadata.name: Saw the following changes without a name change (-old +new)",
    );
    changed.spec.template.metadata.name = Some("billing-2024-05-02".into());
    assert!(changed.validate(&Context::update(&original)).is_empty());
}

#[test]
fn a_byo_name_cannot_be_combined_with_generate_name() {
    let mut cfg: Configuration =
        serde_yaml::from_str(&fixture("byo-revision-name.yaml")).expect("parses");
    cfg.metadata.name = None;
    cfg.metadata.generate_name = Some("billing-".into());
    assert_one_error(
        cfg.validate(&Context::create()),
        "spec.template.metadata.name: must not set the field(s)",
    );
}

#[test]
fn a_wrongly_typed_field_is_a_parse_error_naming_it() {
    let yaml = fixture("hello-world.yaml").replace("containerPort: 8080", "containerPort: eighty");
    let err = serde_yaml::from_str::<Service>(&yaml).expect_err("not a number");
    assert!(err.to_string().contains("invalid type"), "{err}");
}

/// Validates a patched Service under a cluster's `config-autoscaler`.
fn errors_with_config(
    patch: Value,
    autoscaler: knative_serving::autoscaling::config::AutoscalerConfig,
) -> FieldError {
    let mut value: Value = serde_yaml::from_str(&fixture("hello-world.yaml")).expect("YAML");
    merge(&mut value, &patch);
    let mut svc: knative_serving::api::Service =
        serde_json::from_value(value).expect("patched manifest parses");
    let config = knative_serving::config::ServingConfig {
        autoscaler,
        ..Default::default()
    };
    let ctx = Context::create().with_config(config);
    svc.set_defaults(&ctx);
    svc.validate(&ctx)
}

fn annotations(pairs: &[(&str, &str)]) -> Value {
    let map: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
        .collect();
    json!({"spec": {"template": {"metadata": {"annotations": map}}}})
}

#[test]
fn scale_annotations_are_held_to_the_clusters_limits() {
    use knative_serving::autoscaling::config::AutoscalerConfig;
    let limited = AutoscalerConfig {
        max_scale_limit: 10,
        ..AutoscalerConfig::default()
    };
    assert_one_error(
        errors_with_config(
            annotations(&[("autoscaling.knative.dev/max-scale", "11")]),
            limited.clone(),
        ),
        "spec.template.metadata.annotations[autoscaling.knative.dev/max-scale]: invalid value: 11",
    );
    assert_one_error(
        errors_with_config(
            annotations(&[("autoscaling.knative.dev/max-scale", "0")]),
            limited.clone(),
        ),
        "spec.template.metadata.annotations[autoscaling.knative.dev/max-scale]: invalid value: 0",
    );
    assert!(
        errors_with_config(
            annotations(&[("autoscaling.knative.dev/max-scale", "10")]),
            limited
        )
        .is_empty()
    );
    // initial-scale 0 needs allow-zero-initial-scale.
    assert_one_error(
        errors_with_config(
            annotations(&[("autoscaling.knative.dev/initial-scale", "0")]),
            AutoscalerConfig::default(),
        ),
        "spec.template.metadata.annotations[autoscaling.knative.dev/initial-scale]: invalid value: 0",
    );
    assert!(
        errors_with_config(
            annotations(&[("autoscaling.knative.dev/initial-scale", "0")]),
            AutoscalerConfig {
                allow_zero_initial_scale: true,
                ..AutoscalerConfig::default()
            },
        )
        .is_empty()
    );
}
