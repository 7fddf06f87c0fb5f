//! Tekton v1 manifests parse, serialize back exactly, default, validate
//! and round-trip; invalid manifests each get an error naming the field.

use knative_build::api::{Pipeline, PipelineRun, Task, TaskRun};
use knative_core::apis::{Context, SetDefaults, Validate};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

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

fn round_trip<T>(name: &str) -> T
where
    T: DeserializeOwned + Serialize + SetDefaults + Validate + PartialEq + std::fmt::Debug,
{
    let yaml = fixture(name);
    let original: Value = serde_yaml::from_str(&yaml).expect("fixture is YAML");
    let mut obj: T = serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{name}: {e}"));

    // Exactly the manifest, before defaults: nothing lost, renamed or added.
    let exact = serde_json::to_value(&obj).expect("serializes");
    assert_eq!(exact, original, "{name}: serializing changed the manifest");

    // Serialize → parse → equal.
    let text = serde_yaml::to_string(&obj).expect("serializes to YAML");
    let reparsed: T = serde_yaml::from_str(&text).expect("parses back");
    assert_eq!(reparsed, obj, "{name}: YAML round trip");

    let ctx = Context::create();
    obj.set_defaults(&ctx);
    let errs = obj.validate(&ctx);
    assert!(
        errs.is_empty(),
        "{name}: unexpected validation errors:\n{errs}"
    );

    // Defaults only add.
    let defaulted = serde_json::to_value(&obj).expect("serializes");
    assert_superset(&original, &defaulted, "");
    let reparsed: T = serde_json::from_value(defaulted).expect("parses back");
    assert_eq!(reparsed, obj, "{name}: JSON round trip after defaults");

    // Defaulting twice changes nothing.
    let mut again: T = serde_json::from_value(serde_json::to_value(&obj).expect("serializes"))
        .expect("parses back");
    again.set_defaults(&ctx);
    assert_eq!(again, obj, "{name}: defaults are idempotent");
    obj
}

#[test]
fn hello_world_task() {
    let task: Task = round_trip("task-hello-world.yaml");
    assert_eq!(task.spec.steps[0].name, "echo");
}

#[test]
fn task_run_with_params() {
    let run: TaskRun = round_trip("taskrun-with-params.yaml");
    assert_eq!(run.spec.timeout.as_deref(), Some("30m"));
    assert_eq!(run.spec.service_account_name.as_deref(), Some("ci-bot"));
}

#[test]
fn task_with_results_and_workspaces() {
    let task: Task = round_trip("task-results-workspaces.yaml");
    let types: Vec<String> = task
        .spec
        .results
        .iter()
        .map(|r| r.result_type().to_string())
        .collect();
    assert_eq!(types, ["string", "array", "object"]);
    assert_eq!(
        task.spec.workspaces[1].effective_mount_path(),
        "/cargo",
        "explicit mountPath"
    );
    let steps = task.spec.effective_steps();
    assert_eq!(steps[0].image.as_deref(), Some("rust:1.89-slim"));
    assert_eq!(steps[1].image.as_deref(), Some("alpine:3.20"));
}

#[test]
fn clone_build_push_pipeline_with_the_builtin_image_step() {
    let pipeline: Pipeline = round_trip("pipeline-clone-build-push.yaml");
    let push = pipeline.spec.task("push").expect("push task");
    let step = &push.task_spec.as_ref().expect("embedded").spec.steps[0];
    assert!(step.is_image_builder());
    let dag = knative_build::scheduler::Dag::build(&pipeline.spec).expect("acyclic");
    assert_eq!(dag.order(), ["fetch-source", "build", "push"]);
    assert_eq!(
        dag.result_parents("build").collect::<Vec<_>>(),
        ["fetch-source"]
    );
}

#[test]
fn pipeline_with_when_finally_retries_and_timeouts() {
    let pipeline: Pipeline = round_trip("pipeline-when-finally.yaml");
    let release = pipeline.spec.task("release").expect("release task");
    assert_eq!(release.retries(), 1);
    assert_eq!(
        release.timeout_duration(),
        Some(std::time::Duration::from_secs(600))
    );
    assert!(pipeline.spec.is_finally("notify"));
}

#[test]
fn pipeline_run_with_embedded_spec_and_array_object_params() {
    let run: PipelineRun = round_trip("pipelinerun-embedded.yaml");
    assert_eq!(
        run.spec.tasks_timeout(),
        Some(std::time::Duration::from_secs(3600))
    );
    assert_eq!(run.spec.service_account_for("show"), Some("reporter"));
}

#[test]
fn finished_task_run_status() {
    let run: TaskRun = round_trip("taskrun-finished.yaml");
    assert!(run.is_done());
    let status = run.status.as_ref().expect("status");
    assert_eq!(
        status.result("greeting").map(|r| r.value.clone()),
        Some("Hello, World!".into())
    );
    assert_eq!(
        status.steps[0]
            .state
            .terminated
            .as_ref()
            .map(|t| t.exit_code),
        Some(0)
    );
}

#[test]
fn defaults_fill_what_upstream_fills() {
    let mut run: PipelineRun =
        serde_yaml::from_str(&fixture("pipelinerun-embedded.yaml")).expect("parses");
    run.spec.timeouts = None;
    run.spec.task_run_template.service_account_name = None;
    run.set_defaults(&Context::create());
    let json = serde_json::to_value(&run).expect("serializes");
    assert_eq!(json["spec"]["timeouts"]["pipeline"], "1h0m0s");
    assert_eq!(
        json["spec"]["taskRunTemplate"]["serviceAccountName"],
        "default"
    );
    assert_eq!(json["spec"]["pipelineSpec"]["params"][2]["type"], "string");
    assert_eq!(
        json["spec"]["pipelineSpec"]["tasks"][0]["taskSpec"]["params"][1]["type"],
        "string"
    );

    let mut pipeline: Pipeline =
        serde_yaml::from_str(&fixture("pipeline-clone-build-push.yaml")).expect("parses");
    pipeline.set_defaults(&Context::create());
    let json = serde_json::to_value(&pipeline).expect("serializes");
    assert_eq!(json["spec"]["tasks"][0]["taskRef"]["kind"], "Task");
    assert_eq!(json["spec"]["params"][3]["type"], "string");
    assert_eq!(json["spec"]["results"][0]["type"], "string");
}

#[test]
fn crds_generate_with_upstream_names() {
    use kube::CustomResourceExt;
    let tr = TaskRun::crd();
    assert_eq!(tr.metadata.name.as_deref(), Some("taskruns.tekton.dev"));
    assert_eq!(
        tr.spec.names.short_names,
        Some(vec!["tr".to_owned(), "trs".to_owned()])
    );
    assert_eq!(PipelineRun::crd().spec.names.kind, "PipelineRun");
    assert_eq!(Task::crd().spec.group, "tekton.dev");
    assert_eq!(
        Pipeline::crd().spec.names.categories,
        Some(vec!["tekton".to_owned(), "tekton-pipelines".to_owned()])
    );
}

// ---------------------------------------------------------------------------
// Invalid manifests: each error names the field to fix.
// ---------------------------------------------------------------------------

fn errors_of<T>(yaml: &str) -> String
where
    T: DeserializeOwned + SetDefaults + Validate,
{
    let mut obj: T = serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let ctx = Context::create();
    obj.set_defaults(&ctx);
    obj.validate(&ctx).to_string()
}

fn task_errors(spec: &str) -> String {
    errors_of::<Task>(&format!(
        "apiVersion: tekton.dev/v1\nkind: Task\nmetadata: {{name: t}}\nspec:\n{spec}"
    ))
}

fn pipeline_errors(spec: &str) -> String {
    errors_of::<Pipeline>(&format!(
        "apiVersion: tekton.dev/v1\nkind: Pipeline\nmetadata: {{name: p}}\nspec:\n{spec}"
    ))
}

/// Asserts one line of the errors starts with `path: ` and contains `text`.
fn assert_error(errors: &str, path: &str, text: &str) {
    let found = errors
        .lines()
        .any(|l| l.starts_with(&format!("{path}: ")) && l.contains(text));
    assert!(found, "expected `{path}: …{text}…` in:\n{errors}");
}

#[test]
fn task_errors_name_their_fields() {
    let e = task_errors("  steps:\n    - {name: a, image: alpine, command: [sh], script: echo}\n");
    assert_error(&e, "spec.steps[0].script", "mutually exclusive");

    let e =
        task_errors("  steps:\n    - {name: a, image: alpine}\n    - {name: a, image: alpine}\n");
    assert_error(&e, "spec.steps[1].name", "already used by steps[0]");

    let e = task_errors("  steps:\n    - {name: a}\n");
    assert_error(&e, "spec.steps[0].image", "missing field");

    let e = task_errors("  steps:\n    - {name: Bad_Name, image: alpine}\n");
    assert_error(&e, "spec.steps[0].name", "invalid value: Bad_Name");

    let e = task_errors("  steps:\n    - {name: a, image: alpine, onError: ignore}\n");
    assert_error(&e, "spec.steps[0].onError", "invalid value: ignore");

    let e = task_errors("  steps:\n    - {name: a, image: alpine, timeout: soon}\n");
    assert_error(&e, "spec.steps[0].timeout", "invalid value: soon");

    let e = task_errors(
        "  params: [{name: a}]\n  steps:\n    - {name: s, image: alpine, args: [\"$(params.b)\"]}\n",
    );
    assert_error(
        &e,
        "spec.steps[0].args[0]",
        "param \"b\", which is not declared",
    );

    let e = task_errors(
        "  params: [{name: list, type: array}]\n  steps:\n    - {name: s, image: alpine, script: \"echo $(params.list)\"}\n",
    );
    assert_error(&e, "spec.steps[0].script", "is an array param");

    let e = task_errors(
        "  params: [{name: list, type: array, default: one}]\n  steps: [{name: s, image: alpine}]\n",
    );
    assert_error(
        &e,
        "spec.params[0].default",
        "default has type string but the param is declared array",
    );

    let e =
        task_errors("  params: [{name: cfg, type: object}]\n  steps: [{name: s, image: alpine}]\n");
    assert_error(&e, "spec.params[0].properties", "missing field");

    let e = task_errors("  params: [{name: 9lives}]\n  steps: [{name: s, image: alpine}]\n");
    assert_error(&e, "spec.params[0].name", "invalid key name \"9lives\"");

    let e =
        task_errors("  params: [{name: Url}, {name: url}]\n  steps: [{name: s, image: alpine}]\n");
    assert_error(&e, "spec.params[1].name", "declared twice");

    let e = task_errors("  results: [{name: -bad}]\n  steps: [{name: s, image: alpine}]\n");
    assert_error(&e, "spec.results[0].name", "invalid key name \"-bad\"");

    let e =
        task_errors("  results: [{name: out}, {name: out}]\n  steps: [{name: s, image: alpine}]\n");
    assert_error(&e, "spec.results[1].name", "declared twice");

    let e = task_errors(
        "  steps:\n    - {name: s, image: alpine, script: \"ls $(workspaces.src.path) > $(results.out.path)\"}\n",
    );
    assert_error(
        &e,
        "spec.steps[0].script",
        "workspace \"src\", which is not declared",
    );
    assert_error(
        &e,
        "spec.steps[0].script",
        "result \"out\", which is not declared",
    );

    let e =
        task_errors("  workspaces: [{name: w}, {name: w}]\n  steps: [{name: s, image: alpine}]\n");
    assert_error(&e, "spec.workspaces[1].name", "declared twice");

    let e = task_errors(
        "  steps:\n    - name: img\n      image: knative.dev/build/image\n      params: [{name: source, value: /src}, {name: tag, value: x}]\n",
    );
    assert_error(&e, "spec.steps[0].params[1].name", "invalid value: tag");
    assert_error(&e, "spec.steps[0].params[image]", "missing field");
}

#[test]
fn pipeline_errors_name_their_fields() {
    let e = pipeline_errors(
        "  tasks:\n    - {name: a, taskRef: {name: t}}\n    - {name: b, taskRef: {name: t}, runAfter: [zzz]}\n",
    );
    assert_error(
        &e,
        "spec.tasks[1].runAfter[0]",
        "\"zzz\", which is not in spec.tasks",
    );

    let e = pipeline_errors(
        "  tasks:\n    - {name: a, taskRef: {name: t}}\n    - {name: a, taskRef: {name: t}}\n",
    );
    assert_error(&e, "spec.tasks[1].name", "already used by tasks[0]");

    let e = pipeline_errors(
        "  tasks:\n    - {name: a, taskRef: {name: t}}\n  finally:\n    - {name: a, taskRef: {name: t}}\n",
    );
    assert_error(&e, "spec.finally[0].name", "already used by tasks[0]");

    let e = pipeline_errors(
        "  tasks:\n    - name: a\n      taskRef: {name: t}\n      when: [{input: x, operator: equals, values: [x]}]\n",
    );
    assert_error(
        &e,
        "spec.tasks[0].when[0].operator",
        "invalid value: equals",
    );

    let e = pipeline_errors(
        "  tasks:\n    - name: a\n      taskRef: {name: t}\n      when: [{input: x, operator: in}]\n",
    );
    assert_error(&e, "spec.tasks[0].when[0].values", "missing field");

    let e = pipeline_errors(
        "  tasks:\n    - {name: a, taskRef: {name: t}, params: [{name: p, value: $(params.nope)}]}\n",
    );
    assert_error(
        &e,
        "spec.tasks[0].params[0].value",
        "param \"nope\", which is not declared",
    );

    let e = pipeline_errors(
        "  tasks:\n    - {name: a, taskRef: {name: t}, params: [{name: p, value: $(tasks.ghost.results.r)}]}\n",
    );
    assert_error(
        &e,
        "spec.tasks[0].params[0].value",
        "task \"ghost\" is not in spec.tasks",
    );

    let e = pipeline_errors(
        "  tasks:\n    - {name: a, taskRef: {name: t}, params: [{name: p, value: $(tasks.status)}]}\n",
    );
    assert_error(
        &e,
        "spec.tasks[0].params[0].value",
        "only be used in finally tasks",
    );

    let e = pipeline_errors(
        "  tasks:\n    - {name: a, taskRef: {name: t}}\n  finally:\n    - {name: f, taskRef: {name: t}, runAfter: [a]}\n",
    );
    assert_error(&e, "spec.finally[0].runAfter", "must not set the field(s)");

    let e = pipeline_errors(
        "  tasks:\n    - {name: a, taskRef: {name: t}, taskSpec: {steps: [{name: s, image: alpine}]}}\n",
    );
    assert_error(
        &e,
        "spec.tasks[0].taskRef, spec.tasks[0].taskSpec",
        "expected exactly one, got both",
    );

    let e = pipeline_errors(
        "  tasks:\n    - {name: a, taskRef: {name: t}, workspaces: [{name: src, workspace: shared}]}\n",
    );
    assert_error(
        &e,
        "spec.tasks[0].workspaces[0].workspace",
        "\"shared\" is not declared",
    );

    let e = pipeline_errors(
        "  tasks:\n    - {name: a, taskRef: {name: t}, retries: -1, timeout: 1x}\n",
    );
    assert_error(&e, "spec.tasks[0].retries", "invalid value: -1");
    assert_error(&e, "spec.tasks[0].timeout", "invalid value: 1x");

    let e = pipeline_errors(
        "  tasks:\n    - {name: a, taskRef: {name: t}, runAfter: [c]}\n    - {name: b, taskRef: {name: t}, runAfter: [a]}\n    - {name: c, taskRef: {name: t}, params: [{name: x, value: $(tasks.b.results.r)}]}\n",
    );
    assert_error(&e, "spec.tasks", "the tasks form a cycle: a -> b -> c -> a");

    let e = pipeline_errors(
        "  tasks:\n    - {name: a, taskRef: {name: t}}\n  results:\n    - {name: r, value: $(tasks.b.results.x)}\n    - {name: s, value: $(params.p)}\n",
    );
    assert_error(
        &e,
        "spec.results[0].value",
        "task \"b\", which is not in spec.tasks",
    );
    assert_error(
        &e,
        "spec.results[1].value",
        "pipeline results may only read task results",
    );

    let e = pipeline_errors(
        "  tasks:\n    - name: a\n      taskSpec:\n        results: [{name: out}]\n        steps: [{name: s, image: alpine}]\n    - {name: b, taskRef: {name: t}, params: [{name: x, value: $(tasks.a.results.other)}]}\n",
    );
    assert_error(
        &e,
        "spec.tasks[1].params[0].value",
        "declares no result \"other\"",
    );

    let e = pipeline_errors("  params: [{name: p}]\n");
    assert_error(&e, "spec.tasks", "missing field");

    let e = pipeline_errors(
        "  tasks:\n    - name: a\n      taskRef: {name: t}\n      when: [{cel: \"'a' == 'a'\"}]\n",
    );
    assert_error(
        &e,
        "spec.tasks[0].when[0].cel",
        "CEL in when expressions is not enabled",
    );

    let e = pipeline_errors(
        "  tasks:\n    - name: a\n      taskRef: {name: t}\n      matrix: {params: [{name: os, value: [linux, mac]}]}\n",
    );
    assert_error(&e, "spec.tasks[0].matrix", "matrix is not supported");
}

#[test]
fn run_errors_name_their_fields() {
    let e = errors_of::<TaskRun>(
        "apiVersion: tekton.dev/v1\nkind: TaskRun\nmetadata: {name: r}\nspec:\n  params: [{name: a, value: x}, {name: a, value: y}]\n  taskRef: {name: t}\n  workspaces: [{name: w}]\n",
    );
    assert_error(&e, "spec.params[1].name", "given twice");
    assert!(e.contains("spec.workspaces[0].emptyDir"), "{e}");

    let e = errors_of::<TaskRun>(
        "apiVersion: tekton.dev/v1\nkind: TaskRun\nmetadata: {name: r}\nspec:\n  taskSpec:\n    steps: [{name: s, image: alpine, script: \"$(params.x) $(params.y)\"}]\n  params: [{name: x, value: propagated}]\n",
    );
    assert_error(
        &e,
        "spec.taskSpec.steps[0].script",
        "param \"y\", which is not declared",
    );
    assert!(!e.contains("\"x\""), "propagated params are allowed: {e}");

    let e = errors_of::<PipelineRun>(
        "apiVersion: tekton.dev/v1\nkind: PipelineRun\nmetadata: {name: r}\nspec:\n  pipelineRef: {name: p}\n  timeouts: {pipeline: 1h, tasks: 2h}\n",
    );
    assert_error(&e, "spec.timeouts.tasks", "at most the pipeline timeout");

    let e = errors_of::<PipelineRun>(
        "apiVersion: tekton.dev/v1\nkind: PipelineRun\nmetadata: {name: r}\nspec:\n  pipelineSpec:\n    tasks: [{name: a, taskRef: {name: t}, runAfter: [b]}]\n  taskRunSpecs: [{pipelineTaskName: zz}]\n",
    );
    assert_error(&e, "spec.pipelineSpec.tasks[0].runAfter[0]", "\"b\"");
    assert_error(
        &e,
        "spec.taskRunSpecs[0].pipelineTaskName",
        "\"zz\" is not in the pipeline",
    );

    let e = errors_of::<PipelineRun>(
        "apiVersion: tekton.dev/v1\nkind: PipelineRun\nmetadata: {name: r}\nspec: {}\n",
    );
    assert_error(
        &e,
        "spec.pipelineRef, spec.pipelineSpec",
        "expected exactly one, got neither",
    );
}
