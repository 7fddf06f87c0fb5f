use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::EnvVar;

use super::*;
use crate::api::{
    Param, ParamSpec, ParamType, Sidecar, StepTemplate, TaskResult, WorkspaceDeclaration, builtin,
};

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn task_values() -> Replacements {
    let mut r = Replacements::task();
    r.params.insert("who".into(), ParamValue::from("world"));
    r.params.insert("a.b".into(), ParamValue::from("dotted"));
    r.params.insert(
        "flags".into(),
        ParamValue::Array(strings(&["-v", "--color"])),
    );
    r.params.insert(
        "git".into(),
        ParamValue::Object(
            [
                ("url".to_owned(), "https://example.com/r.git".to_owned()),
                ("rev".to_owned(), "main".to_owned()),
            ]
            .into(),
        ),
    );
    r
}

#[test]
fn every_param_form_resolves() {
    let r = task_values();
    let cases = [
        ("$(params.who)", "world"),
        ("$(params[\"who\"])", "world"),
        ("$(params['who'])", "world"),
        ("$(params['a.b'])", "dotted"),
        ("$(params.flags[1])", "--color"),
        (
            "$(params.git.url)#$(params.git.rev)",
            "https://example.com/r.git#main",
        ),
        ("echo $(date) $(params.who)", "echo $(date) world"),
    ];
    for (text, want) in cases {
        assert_eq!(
            r.substitute_string(text, "f").as_deref(),
            Ok(want),
            "{text}"
        );
    }
}

#[test]
fn star_expands_only_as_a_whole_array_element() {
    let r = task_values();
    assert_eq!(
        r.substitute_array(
            &strings(&["ls", "$(params.flags[*])", "$(params.who)"]),
            "args"
        ),
        Ok(strings(&["ls", "-v", "--color", "world"]))
    );
    let err = r
        .substitute_array(&strings(&["x$(params.flags[*])"]), "steps[0].args")
        .expect_err("star inside text");
    assert_eq!(
        err.to_string(),
        "steps[0].args[0]: $(params.flags[*]) is an array; use [<index>] or .<key> to pick a string, or [*] as a whole element of an array field"
    );
    let err = r
        .substitute_string("$(params.flags)", "steps[0].script")
        .expect_err("whole array in a string");
    assert_eq!(err.path(), "steps[0].script");
    assert_eq!(err.reference(), "params.flags");
}

#[test]
fn unknown_and_out_of_range_references_name_reference_and_field() {
    let r = task_values();
    assert_eq!(
        r.substitute_string("$(params.nope)", "steps[1].workingDir"),
        Err(SubstitutionError::Unknown {
            reference: "params.nope".into(),
            path: "steps[1].workingDir".into()
        })
    );
    assert_eq!(
        r.substitute_string("$(params.flags[5])", "p")
            .expect_err("index 5")
            .to_string(),
        "p: $(params.flags[5]): index 5 is out of range for an array of 2"
    );
    assert!(matches!(
        r.substitute_string("$(params.who[0])", "p"),
        Err(SubstitutionError::TypeMismatch {
            found: ParamType::String,
            ..
        })
    ));
    assert!(matches!(
        r.substitute_string("$(params.git.nokey)", "p"),
        Err(SubstitutionError::Unknown { .. })
    ));
    assert!(matches!(
        r.substitute_string("$(context.taskRun.colour)", "p"),
        Err(SubstitutionError::Malformed { .. })
    ));
}

#[test]
fn other_scopes_references_are_left_as_written() {
    let mut r = Replacements::pipeline();
    r.params.insert("x".into(), ParamValue::from("1"));
    assert_eq!(
        r.substitute_string(
            "$(params.x) $(context.taskRun.name) $(workspaces.src.path)",
            "v"
        ),
        Ok("1 $(context.taskRun.name) $(workspaces.src.path)".to_owned())
    );
    let t = Replacements::task();
    assert_eq!(
        t.substitute_string("$(tasks.a.results.b) $(context.pipelineRun.name)", "v"),
        Ok("$(tasks.a.results.b) $(context.pipelineRun.name)".to_owned())
    );
}

#[test]
fn task_results_resolve_with_selectors_and_missing_results_are_told_apart() {
    let mut r = Replacements::pipeline();
    r.tasks.insert("build".into());
    r.tasks.insert("scan".into());
    r.task_results.insert(
        "build".into(),
        [
            ("digest".to_owned(), ParamValue::from("sha256:abc")),
            (
                "tags".to_owned(),
                ParamValue::Array(strings(&["v1", "latest"])),
            ),
            (
                "meta".to_owned(),
                ParamValue::Object([("arch".to_owned(), "amd64".to_owned())].into()),
            ),
        ]
        .into(),
    );
    assert_eq!(
        r.substitute_string("$(tasks.build.results.digest)", "v")
            .as_deref(),
        Ok("sha256:abc")
    );
    assert_eq!(
        r.substitute_string(
            "$(tasks.build.results.tags[1])/$(tasks.build.results.meta.arch)",
            "v"
        )
        .as_deref(),
        Ok("latest/amd64")
    );
    assert_eq!(
        r.substitute_value(&ParamValue::from("$(tasks.build.results.tags[*])"), "v"),
        Ok(ParamValue::Array(strings(&["v1", "latest"])))
    );
    assert_eq!(
        r.substitute_value(&ParamValue::from("$(tasks.build.results.meta[*])"), "v")
            .map(|v| v.param_type()),
        Ok(ParamType::Object)
    );
    assert!(matches!(
        r.substitute_string("$(tasks.scan.results.report)", "v"),
        Err(SubstitutionError::MissingResult { .. })
    ));
    assert!(matches!(
        r.substitute_string("$(tasks.nope.results.report)", "v"),
        Err(SubstitutionError::Unknown { .. })
    ));
}

#[test]
fn finally_scope_reads_statuses() {
    let mut r = Replacements::pipeline();
    r.task_statuses.insert("build".into(), "Failed".into());
    r.task_reasons
        .insert("build".into(), "TaskRunTimeout".into());
    r.tasks_status = Some("Failed".into());
    assert_eq!(
        r.substitute_string(
            "$(tasks.build.status)/$(tasks.build.reason)/$(tasks.status)",
            "v"
        )
        .as_deref(),
        Ok("Failed/TaskRunTimeout/Failed")
    );
}

#[test]
fn when_values_expand_arrays() {
    let r = task_values();
    let when = WhenExpression::is_in("$(params.who)", &["$(params.flags[*])", "world"]);
    let resolved = r.substitute_when(&when, "when[0]").expect("resolves");
    assert_eq!(resolved.input, "world");
    assert_eq!(resolved.values, strings(&["-v", "--color", "world"]));
    assert_eq!(resolved.evaluate(), Some(true));
}

fn sample_spec() -> TaskSpec {
    TaskSpec {
        params: vec![ParamSpec::string("who")],
        results: vec![TaskResult::string("greeting")],
        workspaces: vec![WorkspaceDeclaration::new("src")],
        step_template: Some(StepTemplate {
            env: vec![EnvVar {
                name: "RUN".into(),
                value: Some("$(context.taskRun.name)".into()),
                ..EnvVar::default()
            }],
            ..StepTemplate::default()
        }),
        steps: vec![
            Step {
                name: "greet".into(),
                image: Some("alpine:$(params.who)".into()),
                script: Some(
                    "echo -n \"hi $(params.who)\" > $(results.greeting.path)\n\
                     ls $(workspaces.src.path) # bound=$(workspaces.src.bound)\n"
                        .into(),
                ),
                working_dir: Some("$(workspaces.src.path)/sub".into()),
                env: vec![EnvVar {
                    name: "TRY".into(),
                    value: Some("$(context.task.retry-count)".into()),
                    ..EnvVar::default()
                }],
                ..Step::default()
            },
            Step {
                name: "image".into(),
                image: Some(builtin::IMAGE_BUILDER.into()),
                params: vec![
                    Param::new("source", "$(workspaces.src.path)"),
                    Param::new("image", "registry.local/$(params.who)"),
                ],
                ..Step::default()
            },
            Step {
                name: "check".into(),
                image: Some("alpine".into()),
                args: strings(&["cat", "$(steps.step-greet.exitCode.path)"]),
                ..Step::default()
            },
        ],
        sidecars: vec![Sidecar {
            name: "registry".into(),
            image: Some("registry:2".into()),
            args: strings(&["--name=$(context.taskRun.uid)"]),
            ..Sidecar::default()
        }],
        ..TaskSpec::default()
    }
}

#[test]
fn a_whole_task_spec_resolves() {
    let spec = sample_spec();
    let context = TaskRunContext {
        task_run_name: "hello-run".into(),
        namespace: "ci".into(),
        uid: "u-1".into(),
        task_name: "hello".into(),
        retry_count: 2,
    };
    let params = BTreeMap::from([("who".to_owned(), ParamValue::from("tekton"))]);
    let r = Replacements::for_task(
        &spec,
        params,
        &[crate::api::WorkspaceBinding::empty_dir("src")],
        &context,
    );
    let out = resolve_task_spec(&spec, &r).expect("resolves");
    let greet = &out.steps[0];
    assert_eq!(greet.image.as_deref(), Some("alpine:tekton"));
    assert_eq!(
        greet.script.as_deref(),
        Some(
            "echo -n \"hi tekton\" > /tekton/results/greeting\n\
             ls /workspace/src # bound=true\n"
        )
    );
    assert_eq!(greet.working_dir.as_deref(), Some("/workspace/src/sub"));
    assert_eq!(greet.env[0].value.as_deref(), Some("2"));
    assert_eq!(
        out.steps[1].params[1].value,
        ParamValue::from("registry.local/tekton")
    );
    assert_eq!(
        out.steps[2].args,
        strings(&["cat", "/tekton/steps/step-greet/exitCode"])
    );
    assert_eq!(out.sidecars[0].args, strings(&["--name=u-1"]));
    let template = out.step_template.as_ref().expect("template kept");
    assert_eq!(template.env[0].value.as_deref(), Some("hello-run"));
}

#[test]
fn resolving_a_spec_reports_the_failing_field() {
    let mut spec = sample_spec();
    spec.steps[2].args.push("$(params.missing)".into());
    let r = Replacements::for_task(
        &spec,
        BTreeMap::from([("who".to_owned(), ParamValue::from("x"))]),
        &[],
        &TaskRunContext::default(),
    );
    let err = resolve_task_spec(&spec, &r).expect_err("unknown param");
    assert_eq!(
        err.to_string(),
        "steps[2].args[2]: unknown reference $(params.missing)"
    );
}

#[test]
fn pipeline_task_references_find_result_edges() {
    let task = PipelineTask {
        params: vec![
            Param::new("digest", "$(tasks.build.results.IMAGE_DIGEST)"),
            Param::new(
                "all",
                ParamValue::Array(strings(&["$(tasks.lint.results.report[*])", "$(params.x)"])),
            ),
        ],
        when: vec![WhenExpression::is_in("$(tasks.test.results.ok)", &["true"])],
        matrix: Some(
            serde_json::json!({"params": [{"name": "p", "value": ["$(tasks.gen.results.list[*])"]}]}),
        ),
        ..PipelineTask::referring("deploy", "deploy")
    };
    let deps: Vec<String> = result_dependencies(&task).into_iter().collect();
    assert_eq!(deps, strings(&["build", "gen", "lint", "test"]));
    assert!(pipeline_task_references(&task).contains(&Reference::Param {
        name: "x".into(),
        selector: Selector::Whole
    }));
}
